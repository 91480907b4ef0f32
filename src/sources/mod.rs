//! Where lines come from. Every source turns its input into [`Msg`]s for the engine thread, which owns
//! the store; sources never touch state. A source that can be replayed (file, stdin, Kafka partition)
//! registers a stable [`SourceId`] so the engine can skip what it already applied.
//!
//! Each source owns its config section: [`syslog::SyslogConfig`], [`FileConfig`] (files and stdin are
//! read by `file.rs`), [`kafka::KafkaConfig`]; [`SourceConfig`] is one `[[sources]]` entry.

pub mod archive;
pub mod decode;
pub mod file;
pub mod kafka;
pub mod protocol;
pub mod syslog;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::watch;

pub use protocol::{Durable, EngineGone, Msg, Resume, Sink, SourceHandle, SourceId, StreamTail};

pub use safeguard_core::fnv1a;

/// One `[[sources]]` entry, by its `type`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Local syslog listener; either address may be left out to disable that protocol.
    Syslog(syslog::SyslogConfig),
    /// A log file, followed across rotation when `follow` (the default).
    File(FileConfig),
    Stdin,
    /// Kafka topics carrying the platform's syslog, one syslog message per record (see docs/kafka.md).
    Kafka(kafka::KafkaConfig),
}

impl SourceConfig {
    /// Checks what serde cannot; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            SourceConfig::Kafka(k) => k.validate().map_err(|e| e.to_string()),
            SourceConfig::Syslog(s) => s.validate(),
            SourceConfig::File(_) | SourceConfig::Stdin => Ok(()),
        }
    }

    /// Its `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Syslog(_) => "syslog",
            SourceConfig::File(_) => "file",
            SourceConfig::Stdin => "stdin",
            SourceConfig::Kafka(_) => "kafka",
        }
    }

    /// A source that ends by itself (stdin, a file read once) rather than running until shutdown.
    pub fn is_finite(&self) -> bool {
        matches!(self, SourceConfig::Stdin | SourceConfig::File(FileConfig { follow: false, .. }))
    }

    /// How `/readyz` and logs name the source.
    pub fn label(&self) -> String {
        match self {
            SourceConfig::Syslog(s) => {
                let a: Vec<String> = [s.udp.map(|a| format!("udp {a}")), s.tcp.map(|a| format!("tcp {a}"))].into_iter().flatten().collect();
                format!("syslog {}", a.join(", "))
            }
            SourceConfig::File(f) => format!("file {}", f.path.display()),
            SourceConfig::Stdin => "stdin".into(),
            SourceConfig::Kafka(k) => format!("kafka {}", k.topics.join(",")),
        }
    }
}

/// `type = "file"`: a log file, read from where the store stopped.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub path: PathBuf,
    /// Follow the file like `tail -F` (across rotation and truncation); false reads it once to its end.
    #[serde(default = "yes")]
    pub follow: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the sources: {0}")]
    Engine(#[from] EngineGone),
    #[error(transparent)]
    Listen(#[from] syslog::ListenError),
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaSourceError),
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
) -> Result<Running, StartError> {
    let mut tasks = Vec::new();
    let mut finishing = Vec::new();
    for src in sources {
        match src {
            SourceConfig::Syslog(s) => tasks.extend(syslog::start(s, sink).await?),
            SourceConfig::File(FileConfig { path, follow }) => {
                let (sink, stop, path, follow) = (sink.clone(), stop.clone(), path.clone(), *follow);
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
            SourceConfig::Kafka(k) => finishing.push(kafka::start(k, opts.stats_interval, sink.clone(), durable.clone(), stop.clone())?),
        }
    }
    Ok(Running { tasks, finishing, stop })
}
