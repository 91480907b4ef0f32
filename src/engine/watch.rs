//! `safeguard watch`: runs the configured sources into one engine thread that owns the store.
//! Sources are tokio tasks or blocking threads; they only send [`Msg`]s. The engine commits at least
//! every `commit_interval` and every `commit_lines` lines, and once more on shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::adapters::s3::{S3Config, S3Error};
use crate::alerts::AlertsConfig;
use crate::engine::digest::{DigestRun, LagProbe};
use crate::engine::http::{HttpConfig, HttpError};
use crate::engine::pipeline::{Committed, Engine, EngineConfig};
use crate::settings::{check_nonzero, millis};
use crate::sources::{Durable, Msg, Sink, SourceConfig, StartError};
use crate::state::risk::RiskRules;
use crate::state::{Effect, Rules};
use crate::store::backup::BackupRun;
use crate::store::{Counters, Store, StoreError};
use crate::timeutil::{now_ms, rfc3339};

/// `[watch]`: how the engine judges and commits, and how often the watcher reports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// A node added again within this long cancels a deletion (recreate, plan change).
    #[serde(deserialize_with = "crate::settings::duration")]
    pub deletion_grace: Duration,
    /// Longest time between store commits while lines arrive.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub commit_interval: Duration,
    /// Most lines between store commits.
    pub commit_lines: u64,
    pub max_line_bytes: usize,
    /// How often the watcher logs its counters.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub stats_interval: Duration,
    /// Most lines kept waiting for their instance (a container's line before the line that names its
    /// instance); past it the oldest is given up and counted unattributed.
    pub parked_max: usize,
    /// How long (wall clock) a parked line waits for its instance before it is given up.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub parked_ttl: Duration,
    /// The query socket (`<store>/safeguard.sock`): connections served at once, the longest request
    /// line, and how long an idle connection is kept.
    pub query_max_connections: usize,
    pub query_max_request_bytes: usize,
    #[serde(deserialize_with = "crate::settings::duration")]
    pub query_idle_timeout: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            deletion_grace: Duration::from_secs(120),
            commit_interval: Duration::from_secs(1),
            commit_lines: 50_000,
            max_line_bytes: 64 * 1024,
            stats_interval: Duration::from_secs(60),
            parked_max: 100_000,
            parked_ttl: Duration::from_secs(7 * 86_400),
            query_max_connections: crate::store::query::MAX_QUERY_CONNECTIONS,
            query_max_request_bytes: crate::store::query::MAX_REQUEST_BYTES,
            query_idle_timeout: crate::store::query::QUERY_IDLE_TIMEOUT,
        }
    }
}

impl WatchConfig {
    /// Checks what serde cannot; errors name the key and its value.
    pub fn validate(&self) -> Result<(), String> {
        check_nonzero("watch.commit_interval", self.commit_interval, "the commit timer cannot tick every 0s")?;
        check_nonzero("watch.query_idle_timeout", self.query_idle_timeout, "every query connection would be closed at once")?;
        if !(1..=4096).contains(&self.query_max_connections) {
            return Err(format!("`watch.query_max_connections` = {} must be between 1 and 4096", self.query_max_connections));
        }
        if !(1024..=(16 << 20)).contains(&self.query_max_request_bytes) {
            return Err(format!("`watch.query_max_request_bytes` = {} must be between 1024 and {}", self.query_max_request_bytes, 16 << 20));
        }
        check_nonzero("watch.stats_interval", self.stats_interval, "the counters would be logged continuously")
    }

    /// The query socket's bounds.
    pub fn query_limits(&self) -> crate::store::query::Limits {
        crate::store::query::Limits {
            max_connections: self.query_max_connections,
            max_request_bytes: self.query_max_request_bytes,
            idle_timeout: self.query_idle_timeout,
        }
    }

    /// The engine's settings; with `alerts`, deletions and absence scans raise outbox entries.
    pub fn engine(&self, alerts: Option<AlertsConfig>) -> EngineConfig {
        EngineConfig {
            rules: Rules { deletion_grace_ms: millis(self.deletion_grace), ..Rules::default() },
            max_line_bytes: self.max_line_bytes,
            alerts,
            parked_max: self.parked_max,
            parked_ttl_ms: millis(self.parked_ttl),
            ..EngineConfig::default()
        }
    }
}

/// Everything the watcher starts, each part as its component defines it.
pub struct Setup {
    pub watch: WatchConfig,
    pub engine: EngineConfig,
    /// Where lines come from (never empty: the composed config supplies the default listener).
    pub sources: Vec<SourceConfig>,
    pub http: Option<HttpConfig>,
    pub alerts: Option<AlertsConfig>,
    /// For the sender's check that a deleted instance's backups are there.
    pub s3: Option<S3Config>,
    pub risk: RiskRules,
    /// Counts the recovery journal's entries for `/metrics` (the journal is recovery's: the composition
    /// root supplies the reader, so the engine does not reach up to it).
    pub recoveries: Option<crate::engine::http::RecoveryCounts>,
    /// Pings a dead-man's switch while the watcher is ready.
    pub heartbeat: Option<crate::engine::heartbeat::HeartbeatConfig>,
    /// Backs the store up to the object store (`s3` gives the endpoint and credentials).
    pub backup: Option<crate::store::backup::BackupConfig>,
    /// Leader election through Kafka: only the leader delivers alerts.
    pub leader: Option<crate::sources::kafka::leader::LeaderConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the engine thread: {0}; the host is out of threads or memory")]
    Thread(std::io::Error),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Sources(#[from] StartError),
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error(transparent)]
    Alerts(#[from] crate::sinks::sender::SenderError),
    #[error(transparent)]
    Backup(#[from] crate::store::backup::BackupError),
    #[error(transparent)]
    Leader(#[from] crate::sources::kafka::leader::LeaderError),
    #[error("[alerts.digest]: {0}")]
    Digest(String),
    #[error("the engine thread panicked; the store keeps what it last committed and a restart resumes from there; please report the panic in the log above")]
    EnginePanicked,
    #[error("the engine did not finish within 30s of shutdown; the store keeps what it last committed and a restart resumes from there")]
    ShutdownTimeout,
}

/// Logs what a commit made durable; these lines are what an operator greps for before alerts exist.
fn log_effects(c: &Committed) {
    for e in &c.effects {
        match e {
            Effect::DeletionPending { instance_id, at, evidence } => {
                tracing::warn!(instance = %instance_id, at = %rfc3339(*at), %evidence, "instance looks deleted; final after the deletion grace unless a node is added again")
            }
            Effect::DeletionCancelled { instance_id, .. } => tracing::info!(instance = %instance_id, "deletion cancelled: a node was added again"),
            Effect::InstanceDeleted { instance_id, at, evidence, has_complete_base_backup } => {
                if *has_complete_base_backup {
                    tracing::warn!(instance = %instance_id, at = %rfc3339(*at), %evidence, next = %format!("safeguard recover {instance_id}"), "instance DELETED")
                } else {
                    tracing::error!(instance = %instance_id, at = %rfc3339(*at), %evidence, "instance DELETED and the logs show NO complete base backup")
                }
            }
            Effect::DeletionReversed { instance_id, at, evidence } => {
                tracing::warn!(instance = %instance_id, deleted_at = %rfc3339(*at), %evidence, "a deletion already made final did not happen: the instance is live again")
            }
            Effect::RestoreSeen { instance_id, .. } => tracing::info!(instance = %instance_id, "restore from backups started"),
        }
    }
}

fn engine_loop(
    mut engine: Engine,
    mut rx: mpsc::Receiver<Msg>,
    cfg: WatchConfig,
    scan_every: Option<Duration>,
    (mut digest, mut backup): (Option<DigestRun>, Option<BackupRun>),
    sources_total: usize,
    durable: tokio::sync::watch::Sender<Durable>,
) -> Result<Counters, StoreError> {
    let mut finished = 0usize;
    let mut last_stats = Instant::now();
    let mut last_scan = Instant::now();
    let mut last_trim = Instant::now();
    let mut trimmer = super::memory::Trimmer::default();
    let mut stats_base = engine.counters().clone();
    let commit = |engine: &mut Engine, tick: bool| -> Result<(), StoreError> {
        let c = engine.commit(tick.then(now_ms))?;
        log_effects(&c);
        // Only now may sources acknowledge upstream (Kafka offsets) what these positions cover.
        durable.send_replace(Arc::new(engine.committed_positions()));
        Ok(())
    };
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Register { id, name, replayable, clock, reply } => {
                let r = engine.add_source_with(id, &name, replayable, clock)?;
                let _ = reply.send(r);
            }
            Msg::Restart { h } => engine.restart(h),
            Msg::Line { h, end, bytes } => engine.feed_line(h, end, &bytes),
            Msg::Chunk { h, base, bytes } => engine.feed_chunk(h, base, &bytes),
            Msg::Finished { name } => {
                tracing::info!(source = %name, "source finished");
                finished += 1;
                if finished >= sources_total {
                    break;
                }
            }
            Msg::Shutdown => break,
            Msg::Tick => {
                if scan_every.is_some_and(|every| last_scan.elapsed() >= every) {
                    last_scan = Instant::now();
                    engine.scan_absence();
                }
                commit(&mut engine, true)?;
                // Between commits, on the one thread that commits: the copy is one moment of the store.
                if let Some(b) = backup.as_mut() {
                    b.tick(engine.store(), now_ms());
                }
                // After the commit, so the store holds every record the digest reads; its own commit
                // follows at once.
                if let Some(d) = digest.as_mut() {
                    match d.tick(&mut engine, now_ms()) {
                        Ok(Some(_)) => commit(&mut engine, false)?,
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "the daily digest could not be gathered; trying again in a minute"),
                    }
                }
                if last_trim.elapsed() >= super::memory::TRIM_EVERY {
                    trimmer.tick();
                    last_trim = Instant::now();
                }
                if last_stats.elapsed() >= cfg.stats_interval {
                    let d = engine.counters().since(&stats_base);
                    let secs = last_stats.elapsed().as_secs_f64();
                    tracing::info!(rate = format!("{:.0} lines/s", d.lines_read as f64 / secs), "{}", d.text());
                    stats_base = engine.counters().clone();
                    last_stats = Instant::now();
                }
            }
        }
        if engine.uncommitted_lines() >= cfg.commit_lines || engine.should_commit() {
            commit(&mut engine, false)?;
        }
    }
    commit(&mut engine, true)?;
    Ok(engine.counters().clone())
}

/// Runs until `shutdown` resolves or every source has finished (stdin or a non-followed file).
pub async fn run(setup: Setup, store: Store, shutdown: impl std::future::Future<Output = ()>) -> Result<Counters, WatchError> {
    let Setup { watch, mut engine, sources, http, alerts, s3, risk, recoveries, heartbeat, backup, leader } = setup;
    let backup = backup.map(|b| BackupRun::new(b, s3.as_ref(), tokio::runtime::Handle::current(), store.path())).transpose()?;
    engine.raise_absence = alerts.is_some();
    let engine = Engine::new(store.clone(), engine)?;
    // [alerts.digest]: the Kafka lag it reports is the one /metrics computes, from the health server's
    // probes (started below, so handed over once they exist).
    let health: Arc<OnceLock<crate::engine::http::Health>> = Arc::new(OnceLock::new());
    let has_kafka = sources.iter().any(|s| matches!(s, SourceConfig::Kafka(_)));
    let digest = match alerts.as_ref().and_then(|a| Some((a, a.digest.as_ref()?))) {
        Some((a, d)) => {
            let lag: Option<LagProbe> = has_kafka.then(|| {
                let health = health.clone();
                Arc::new(move || match health.get().and_then(|h| h.kafka_lag()) {
                    Some(r) => r,
                    None => Err("the Kafka probes have not started".to_string()),
                }) as LagProbe
            });
            Some(DigestRun::new(d.schedule().map_err(WatchError::Digest)?, risk, millis(a.give_up_after), now_ms(), engine.counters(), lag))
        }
        None => None,
    };
    let with_digest = digest.is_some();
    let (tx, rx) = mpsc::channel::<Msg>(1024);
    let sink = Sink::new(tx.clone());
    let stop = Arc::new(AtomicBool::new(false));
    // Joins the election before anything can send; a standby delivers nothing until it leads.
    let leader = leader.map(|l| crate::sources::kafka::leader::Leader::start(&l, stop.clone(), tokio::runtime::Handle::current())).transpose()?;
    let finite = sources.iter().filter(|s| s.is_finite()).count();
    let all_finite = finite == sources.len();

    let (durable_tx, durable_rx) = tokio::sync::watch::channel(Arc::new(HashMap::new()));
    let (wcfg, scan_every) = (watch.clone(), alerts.as_ref().map(|a| a.absence_scan_interval));
    let engine_thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || engine_loop(engine, rx, wcfg, scan_every, (digest, backup), if all_finite { finite } else { usize::MAX }, durable_tx))
        .map_err(WatchError::Thread)?;

    // [http]: health and metrics, up before the sources so /readyz can say they are starting.
    // The heartbeat asks the same health as /readyz, so it is kept without [http] too; so does the
    // digest, for the Kafka lag.
    let mut http = if http.is_some() || heartbeat.is_some() || (with_digest && has_kafka) {
        let watched =
            crate::engine::http::Watched { sources: sources.clone(), commit_interval: watch.commit_interval, risk, recoveries, leader: leader.clone() };
        Some(crate::engine::http::Server::start(http.as_ref(), watched, store.clone(), durable_rx.clone()).await?)
    } else {
        None
    };
    if let Some(server) = &http {
        let _ = health.set(server.health());
    }
    let heartbeat = match (heartbeat, &http) {
        (Some(cfg), Some(server)) => {
            let health = server.health();
            Some(tokio::spawn(crate::engine::heartbeat::run(cfg, move || health.readiness())))
        }
        _ => None,
    };
    let opts = crate::sources::SourceOptions { stats_interval: watch.stats_interval };
    let running = crate::sources::start(&sources, &sink, durable_rx, stop.clone(), &opts).await?;
    if let Some(h) = &http {
        h.sources_started();
    }

    let control = tokio::spawn(crate::store::query::serve(store.clone(), watch.query_limits()));
    let sender = match alerts {
        Some(a) => {
            let s3 = s3.as_ref().map(crate::adapters::s3::ObjectStore::connect).transpose()?;
            let mut sender = crate::sinks::sender::Sender::new(store.clone(), a, s3)?;
            if let Some(l) = &leader {
                sender = sender.with_leader(l.clone());
            }
            Some(tokio::spawn(sender.run(Duration::from_secs(1))))
        }
        None => None,
    };
    let ticker = {
        let tx = tx.clone();
        // Never zero: `WatchConfig::validate` refuses it, and tokio's interval would panic.
        let every = watch.commit_interval.max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(every);
            loop {
                iv.tick().await;
                if tx.send(Msg::Tick).await.is_err() {
                    break;
                }
            }
        })
    };
    let shutdown_tx = tx;
    drop(sink);

    let engine_done = tokio::task::spawn_blocking(move || engine_thread.join());
    tokio::pin!(engine_done);
    tokio::select! {
        _ = shutdown => {
            tracing::info!("shutting down: stopping sources and flushing the store");
        }
        res = &mut engine_done => {
            ticker.abort();
            control.abort();
            // The engine stopped on its own (a failed commit: a full disk): no one answers on the socket.
            let _ = std::fs::remove_file(store.path().join(crate::store::query::SOCKET_NAME));
            if let Some(h) = http.take() {
                h.stop();
            }
            return Ok(res.map_err(|_| WatchError::EnginePanicked)?.map_err(|_| WatchError::EnginePanicked)??);
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = heartbeat {
        h.abort();
    }
    if let Some(h) = http.take() {
        h.stop();
    }
    let _ = shutdown_tx.send(Msg::Shutdown).await;
    running.abort();
    if let Some(s) = sender {
        s.abort();
    }
    ticker.abort();
    control.abort();
    // The engine applies everything queued before Shutdown, commits and returns.
    let res = tokio::time::timeout(Duration::from_secs(30), engine_done).await;
    let _ = std::fs::remove_file(store.path().join(crate::store::query::SOCKET_NAME));
    match res {
        Ok(r) => Ok(r.map_err(|_| WatchError::EnginePanicked)?.map_err(|_| WatchError::EnginePanicked)??),
        Err(_) => Err(WatchError::ShutdownTimeout),
    }
}
