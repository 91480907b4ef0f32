//! What a source says to the engine and hears back. Sources depend on this module only (never on the
//! engine's types); the engine implements its side of it. `safeguard ingest` drives the engine through
//! the same types on the calling thread.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::parse::YearClock;

/// A source's stable name in the store: its stored position (with its year clock and tail hash) is kept
/// under `to_string()` of this, so the string forms below are part of the store's layout and must never
/// change:
///
/// | variant | stored form |
/// |---|---|
/// | `Syslog` | `syslog` (never stored: a listener is not replayable) |
/// | `Lines` | `lines:<16 hex digits>`: a file or stdin stream, named by its first line |
/// | `Kafka` | `kafka:<topic>:<partition>` |
///
/// Files and stdin share `lines:` on purpose: the same archive ingested from a path and through stdin
/// is one stream, and resumes where either stopped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceId {
    Syslog,
    Lines { first_line: u64 },
    Kafka { topic: String, partition: i32 },
}

impl SourceId {
    /// A line stream's id: the hash of its first line (at most 4 KiB of it), so the same archived log
    /// ingested twice (or from another path, or through stdin) resumes where it stopped, and a rotated
    /// file is a new stream. Two streams that share a first line are told apart by the bytes before the
    /// stored position ([`Resume::tail`]).
    pub fn stream(first_line: &[u8]) -> SourceId {
        SourceId::Lines { first_line: safeguard_core::fnv1a(&first_line[..first_line.len().min(4096)]) }
    }

    pub fn kafka(topic: &str, partition: i32) -> SourceId {
        SourceId::Kafka { topic: topic.to_string(), partition }
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceId::Syslog => f.write_str("syslog"),
            SourceId::Lines { first_line } => write!(f, "lines:{first_line:016x}"),
            SourceId::Kafka { topic, partition } => write!(f, "kafka:{topic}:{partition}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a source id this safeguard knows (syslog, lines:<16 hex digits>, kafka:<topic>:<partition>); the store may come from a newer release")]
pub struct UnknownSourceId(pub String);

impl FromStr for SourceId {
    type Err = UnknownSourceId;

    /// The inverse of `Display`: only the exact stored forms parse, so `parse(s).to_string() == s`.
    fn from_str(s: &str) -> Result<SourceId, UnknownSourceId> {
        let bad = || UnknownSourceId(s.to_string());
        if s == "syslog" {
            return Ok(SourceId::Syslog);
        }
        if let Some(hex) = s.strip_prefix("lines:") {
            if hex.len() != 16 || !hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(bad());
            }
            return u64::from_str_radix(hex, 16).map(|first_line| SourceId::Lines { first_line }).map_err(|_| bad());
        }
        if let Some(rest) = s.strip_prefix("kafka:") {
            let (topic, partition) = rest.rsplit_once(':').ok_or_else(bad)?;
            let p: i32 = partition.parse().map_err(|_| bad())?;
            if topic.is_empty() || p.to_string() != partition {
                return Err(bad());
            }
            return Ok(SourceId::Kafka { topic: topic.to_string(), partition: p });
        }
        Err(bad())
    }
}

/// A registered source's cursor in the engine; handed back by [`Msg::Register`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceHandle(usize);

impl SourceHandle {
    /// Made by the engine only: the index of the cursor it registered.
    pub fn new(index: usize) -> SourceHandle {
        SourceHandle(index)
    }

    pub fn index(self) -> usize {
        self.0
    }
}

/// The hash of the bytes just before a stored position, which tells whether a stream is the one
/// stored there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTail {
    pub len: u32,
    pub hash: u64,
}

/// Where a replayable source stands in the store: it resumes after `offset` if the bytes before it are
/// still `tail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub offset: u64,
    pub tail: Option<StreamTail>,
}

/// Source positions the store has durably committed, by source; published after every commit.
pub type Durable = Arc<HashMap<SourceId, u64>>;

pub enum Msg {
    /// `clock`: how the source's RFC 3164 years start when the store has no clock of an earlier run.
    Register { id: SourceId, name: String, replayable: bool, clock: YearClock, reply: oneshot::Sender<(SourceHandle, Option<Resume>)> },
    /// The source is another stream than the one its stored position belongs to: read it from the start.
    Restart { h: SourceHandle },
    /// One message (a datagram, a framed TCP message), ending at `end` in its source.
    Line { h: SourceHandle, end: u64, bytes: Vec<u8> },
    /// Whole lines read from a file or stdin, starting at byte `base`.
    Chunk { h: SourceHandle, base: u64, bytes: Vec<u8> },
    /// A source stopped for good (stdin closed, a non-followed file read to its end).
    Finished { name: String },
    /// Time passed: commit what is pending and advance deletion graces to the wall clock.
    Tick,
    /// Commit everything received so far and stop.
    Shutdown,
}

/// The sending side every source holds.
#[derive(Clone)]
pub struct Sink {
    tx: mpsc::Sender<Msg>,
}

#[derive(Debug, thiserror::Error)]
#[error("the engine stopped")]
pub struct EngineGone;

impl Sink {
    pub fn new(tx: mpsc::Sender<Msg>) -> Self {
        Sink { tx }
    }

    pub async fn register(&self, id: SourceId, name: &str, replayable: bool) -> Result<(SourceHandle, Option<Resume>), EngineGone> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Register { id, name: name.to_string(), replayable, clock: YearClock::live(), reply }).await.map_err(|_| EngineGone)?;
        rx.await.map_err(|_| EngineGone)
    }

    pub fn register_blocking(&self, id: SourceId, name: &str, replayable: bool, clock: YearClock) -> Result<(SourceHandle, Option<Resume>), EngineGone> {
        let (reply, rx) = oneshot::channel();
        self.tx.blocking_send(Msg::Register { id, name: name.to_string(), replayable, clock, reply }).map_err(|_| EngineGone)?;
        rx.blocking_recv().map_err(|_| EngineGone)
    }

    pub async fn send(&self, m: Msg) -> Result<(), EngineGone> {
        self.tx.send(m).await.map_err(|_| EngineGone)
    }

    pub fn send_blocking(&self, m: Msg) -> Result<(), EngineGone> {
        self.tx.blocking_send(m).map_err(|_| EngineGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stored_form_parses_back_to_the_same_id() {
        let ids = [
            SourceId::Syslog,
            SourceId::stream(b"Mar 16 10:00:00 host prog: first line"),
            SourceId::Lines { first_line: 0 },
            SourceId::Lines { first_line: u64::MAX },
            SourceId::kafka("platform-syslog", 0),
            SourceId::kafka("a.b_c-d", 11),
            SourceId::kafka("t", i32::MAX),
        ];
        for id in ids {
            let s = id.to_string();
            assert_eq!(s.parse::<SourceId>().unwrap(), id, "{s}");
            assert_eq!(s.parse::<SourceId>().unwrap().to_string(), s);
        }
        // Strings as the releases before the enum built them (stream_id, kafka::source_id).
        for s in ["syslog", "lines:00ab12cd34ef5678", "kafka:platform-syslog:3"] {
            assert_eq!(s.parse::<SourceId>().unwrap().to_string(), s);
        }
        assert_eq!(SourceId::stream(b"x").to_string(), format!("lines:{:016x}", safeguard_core::fnv1a(b"x")));
    }

    #[test]
    fn only_exact_stored_forms_parse() {
        for s in [
            "",
            "lines:",
            "lines:ab",
            "lines:00AB12CD34EF5678",
            "lines:00ab12cd34ef56789",
            "kafka:t",
            "kafka::1",
            "kafka:t:01",
            "kafka:t:x",
            "file:x",
            "Syslog",
        ] {
            let e = s.parse::<SourceId>().unwrap_err();
            assert_eq!(e.0, s);
        }
    }
}
