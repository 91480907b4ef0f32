//! Where lines come from. Every source turns its input into [`Msg`]s for the engine thread, which owns
//! the store; sources never touch state. A source that can be replayed (file, stdin, Kafka partition)
//! registers a stable id so the engine can skip what it already applied.

pub mod file;
pub mod syslog;

use tokio::sync::{mpsc, oneshot};

use crate::pipeline::SourceHandle;

pub enum Msg {
    Register { id: String, name: String, replayable: bool, reply: oneshot::Sender<(SourceHandle, Option<u64>)> },
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

    pub async fn register(&self, id: &str, name: &str, replayable: bool) -> Result<(SourceHandle, Option<u64>), EngineGone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Register { id: id.to_string(), name: name.to_string(), replayable, reply })
            .await
            .map_err(|_| EngineGone)?;
        rx.await.map_err(|_| EngineGone)
    }

    pub fn register_blocking(&self, id: &str, name: &str, replayable: bool) -> Result<(SourceHandle, Option<u64>), EngineGone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(Msg::Register { id: id.to_string(), name: name.to_string(), replayable, reply })
            .map_err(|_| EngineGone)?;
        rx.blocking_recv().map_err(|_| EngineGone)
    }

    pub async fn send(&self, m: Msg) -> Result<(), EngineGone> {
        self.tx.send(m).await.map_err(|_| EngineGone)
    }

    pub fn send_blocking(&self, m: Msg) -> Result<(), EngineGone> {
        self.tx.blocking_send(m).map_err(|_| EngineGone)
    }
}

/// FNV-1a: a stable fingerprint across builds and platforms (std's hasher promises neither).
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A line stream's identity: its first line, so the same archived log ingested twice (or from another
/// path, or through stdin) is recognised and not applied again, and a rotated file is a new stream.
pub fn stream_id(kind: &str, first_line: &[u8]) -> String {
    format!("{kind}:{:016x}", fnv1a(&first_line[..first_line.len().min(4096)]))
}
