//! Where lines come from. Every source turns its input into [`Msg`]s for the engine thread, which owns
//! the store; sources never touch state. A source that can be replayed (file, stdin, Kafka partition)
//! registers a stable id so the engine can skip what it already applied.

pub mod archive;
pub mod decode;
pub mod file;
pub mod kafka;
pub mod syslog;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::SourceConfig;
use crate::engine::pipeline::{Resume, SourceHandle};
use crate::parse::YearClock;

/// Source positions the store has durably committed, by source id; published after every commit.
pub type Durable = Arc<HashMap<String, u64>>;

pub enum Msg {
    /// `clock`: how the source's RFC 3164 years start when the store has no clock of an earlier run.
    Register { id: String, name: String, replayable: bool, clock: YearClock, reply: oneshot::Sender<(SourceHandle, Option<Resume>)> },
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

    pub async fn register(&self, id: &str, name: &str, replayable: bool) -> Result<(SourceHandle, Option<Resume>), EngineGone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Register { id: id.to_string(), name: name.to_string(), replayable, clock: YearClock::live(), reply })
            .await
            .map_err(|_| EngineGone)?;
        rx.await.map_err(|_| EngineGone)
    }

    pub fn register_blocking(&self, id: &str, name: &str, replayable: bool, clock: YearClock) -> Result<(SourceHandle, Option<Resume>), EngineGone> {
        let (reply, rx) = oneshot::channel();
        self.tx.blocking_send(Msg::Register { id: id.to_string(), name: name.to_string(), replayable, clock, reply }).map_err(|_| EngineGone)?;
        rx.blocking_recv().map_err(|_| EngineGone)
    }

    pub async fn send(&self, m: Msg) -> Result<(), EngineGone> {
        self.tx.send(m).await.map_err(|_| EngineGone)
    }

    pub fn send_blocking(&self, m: Msg) -> Result<(), EngineGone> {
        self.tx.blocking_send(m).map_err(|_| EngineGone)
    }
}

pub use safeguard_core::fnv1a;

/// A line stream's name in the store: its first line, so the same archived log ingested twice (or from
/// another path, or through stdin) resumes where it stopped, and a rotated file is a new stream. Two
/// streams that share a first line are told apart by the bytes before the stored position ([`Resume`]).
pub fn stream_id(kind: &str, first_line: &[u8]) -> String {
    format!("{kind}:{:016x}", fnv1a(&first_line[..first_line.len().min(4096)]))
}

/// What [`start`] started; dropped or aborted on shutdown.
pub struct Running {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Sources that finish their own shutdown (a Kafka consumer committing durable offsets and
    /// leaving its group); `abort` waits for them, bounded.
    finishing: Vec<kafka::Finished>,
    stop: Arc<AtomicBool>,
}

/// How long `abort` waits for sources to finish their shutdown.
const FINISH_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

impl Running {
    pub fn abort(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.abort();
        }
        let deadline = std::time::Instant::now() + FINISH_WAIT;
        for f in self.finishing {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if f.0.recv_timeout(left).is_err() {
                tracing::warn!("a Kafka consumer did not finish its shutdown in time; its group offsets may lag the store (the store's positions still decide where it resumes)");
            }
        }
    }
}

/// Settings for sources that come from outside their own config section.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// How often sources log their own statistics (Kafka consumer lag and messages/s).
    pub stats_interval: std::time::Duration,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions { stats_interval: std::time::Duration::from_secs(60) }
    }
}

/// Starts every configured source. Binding errors (a port in use) fail here, at start-up, not later.
pub async fn start(
    sources: &[SourceConfig],
    sink: &Sink,
    durable: watch::Receiver<Durable>,
    stop: Arc<AtomicBool>,
    opts: &SourceOptions,
) -> anyhow::Result<Running> {
    let mut tasks = Vec::new();
    let mut finishing = Vec::new();
    for src in sources {
        match src.clone() {
            SourceConfig::Syslog { udp, tcp } => {
                let (h, _) = sink.register("syslog", "syslog listener", false).await?;
                if let Some(a) = udp {
                    let sock = syslog::bind_udp(a).await?;
                    tracing::info!(addr = %sock.local_addr()?, "listening for syslog on UDP");
                    tasks.push(tokio::spawn(syslog::run_udp(sock, h, sink.clone())));
                }
                if let Some(a) = tcp {
                    let l = syslog::bind_tcp(a).await?;
                    tracing::info!(addr = %l.local_addr()?, "listening for syslog on TCP");
                    tasks.push(tokio::spawn(syslog::run_tcp(l, h, sink.clone())));
                }
            }
            SourceConfig::File { path, follow } => {
                let (sink, stop) = (sink.clone(), stop.clone());
                std::thread::spawn(move || {
                    let res = if follow {
                        file::follow_file(path.clone(), sink.clone(), std::time::Duration::from_millis(250), stop)
                    } else {
                        file::read_file(&path, &mut sink.clone(), file::StreamOptions::default()).map(|_| ())
                    };
                    if let Err(e) = res {
                        tracing::error!(path = %path.display(), error = %e, "file source failed");
                    }
                    let _ = sink.send_blocking(Msg::Finished { name: path.display().to_string() });
                });
            }
            SourceConfig::Stdin => {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    if let Err(e) = file::read_stream(std::io::stdin().lock(), "stdin", &mut sink.clone(), file::StreamOptions::default()) {
                        tracing::error!(error = %e, "reading stdin failed");
                    }
                    let _ = sink.send_blocking(Msg::Finished { name: "stdin".into() });
                });
            }
            SourceConfig::Kafka { .. } => {
                if let Some(settings) = kafka::KafkaSettings::from_source(src, opts.stats_interval) {
                    finishing.push(kafka::start(settings, sink.clone(), durable.clone(), stop.clone())?);
                }
            }
        }
    }
    Ok(Running { tasks, finishing, stop })
}
