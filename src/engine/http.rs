//! `[http]`: the watcher's health and metrics endpoint. Off unless the config has an `[http]` section.
//!
//! - `/healthz`: 200 while the process is alive and its engine commits (every source feeds the engine and
//!   runs until it stops, so a stopped or stalled engine is what "sources not running" looks like); 503
//!   when the engine has stopped or not committed for `max(60s, 30 x watch.commit_interval)`.
//! - `/readyz`: 200 when, in addition, the store answers, every source has started, and every Kafka
//!   source's brokers answered a watermark request in the last 30 s; 503 with the reasons otherwise.
//! - `/metrics`: Prometheus text format (0.0.4). Counters are read from what the store has committed
//!   (`Store::counters`, the alert outbox, source positions) at scrape time, so they are exact across
//!   restarts and never counted twice; live gauges (engine's last commit, Kafka high watermarks) come
//!   from the watcher.
//!
//! Metrics go through the `metrics` facade: any module may record a gauge or counter with one macro
//! call and no dependency on this module (it is a no-op when no `[http]` is configured), and
//! `metrics-exporter-prometheus` renders them. Bodies never carry secrets; labels are rule, state,
//! status, reason, topic and partition names.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::sources::kafka::probe::WatermarkProbe;
use crate::sources::{Durable, SourceConfig, SourceId};
use crate::state::risk::RiskRules;
use crate::store::Store;
use crate::timeutil::{now_ms, rfc3339};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9187";

/// `[http]` in the config.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address for `/healthz`, `/readyz` and `/metrics`, e.g. `127.0.0.1:9187` (`0.0.0.0:9187` in a pod).
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: DEFAULT_LISTEN.parse().expect("static address") }
    }
}

/// How often Kafka high watermarks are fetched, and how old the last answer may be for `/readyz`.
const KAFKA_PROBE_EVERY: Duration = Duration::from_secs(10);
const KAFKA_READY_WITHIN: Duration = Duration::from_secs(30);
/// Instance gauges (a scan of every record) are recomputed at most this often.
const INSTANCE_STATS_TTL: Duration = Duration::from_secs(10);
const RECOVERIES_EVERY: Duration = Duration::from_secs(30);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------------------- exporter

struct Exporter {
    handle: PrometheusHandle,
    /// Set when another global recorder was installed first: ours is then used locally for the
    /// scrape-time values (and other modules' macros go to the other recorder).
    local: Option<PrometheusRecorder>,
}

impl Exporter {
    fn record<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.local {
            Some(r) => metrics::with_local_recorder(r, f),
            None => f(),
        }
    }
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

fn exporter() -> &'static Exporter {
    EXPORTER.get_or_init(|| {
        // Commit latency as a Prometheus histogram (not the exporter's default summary), so it can be
        // aggregated and its quantiles taken over any window: from a 1 ms flush to a 10 s stall.
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(crate::store::telemetry::COMMIT_DURATION.to_string()),
                &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            )
            .expect("static, non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        let ex = match metrics::set_global_recorder(recorder) {
            Ok(()) => Exporter { handle, local: None },
            Err(e) => {
                tracing::warn!("another metrics recorder is installed; /metrics shows safeguard's own figures only");
                Exporter { handle, local: Some(e.into_inner()) }
            }
        };
        ex.record(describe);
        ex
    })
}

fn describe() {
    describe_counter!("safeguard_lines_read_total", "Lines read from every source (committed to the store).");
    describe_counter!("safeguard_lines_relevant_total", "Lines that parsed into a platform event.");
    describe_counter!("safeguard_lines_attributed_total", "Relevant lines attributed to an instance.");
    describe_counter!("safeguard_lines_unattributed_total", "Relevant lines that named no known instance.");
    describe_counter!("safeguard_lines_rejected_total", "Candidate lines rejected (all reasons).");
    describe_gauge!("safeguard_lines_parked", "Relevant lines waiting now for the line that names their instance (or its year).");
    describe_counter!(
        "safeguard_lines_expired_unattributed_total",
        "Parked lines given up (older than parked_ttl, or past parked_max); also in lines_unattributed."
    );
    describe_counter!("safeguard_source_lines_read_total", "Lines read, by source kind (syslog, file, stdin, kafka:<topic>).");
    describe_counter!("safeguard_source_lines_relevant_total", "Relevant lines, by source kind.");
    describe_counter!("safeguard_source_lines_rejected_total", "Rejected lines, by source kind.");
    describe_counter!("safeguard_lines_rejected_by_reason_total", "Candidate lines rejected, by reason.");
    describe_counter!(
        "safeguard_syslog_udp_dropped_total",
        "Datagrams the kernel dropped on a syslog UDP socket (receive buffer full: the listener fell behind), by address."
    );
    describe_counter!("safeguard_syslog_connections_refused_total", "Syslog TCP connections closed at once: max_connections were open.");
    describe_counter!("safeguard_syslog_connections_idle_closed_total", "Syslog TCP connections closed after idle_timeout without data.");
    describe_counter!("safeguard_syslog_messages_cut_total", "Syslog TCP messages longer than max_message_bytes: cut, their rest dropped.");
    describe_counter!("safeguard_syslog_frames_truncated_total", "Syslog TCP frames the sender closed the connection inside: dropped.");
    describe_counter!("safeguard_query_connections_refused_total", "Query socket connections closed at once: 64 were open.");
    describe_counter!("safeguard_query_accept_errors_total", "Failed accepts on the query socket (out of file descriptors); it keeps serving.");
    describe_counter!("safeguard_http_connections_refused_total", "HTTP connections closed at once: 64 were open.");
    describe_gauge!("safeguard_heartbeat_last_ping_timestamp_seconds", "When the heartbeat URL last answered (the watcher was ready or reported why not).");
    describe_counter!("safeguard_heartbeat_failures_total", "Heartbeat pings that failed (the dead-man's switch did not answer).");
    describe_counter!("safeguard_lines_replayed_skipped_total", "Lines skipped because the store had already applied them (replays).");
    describe_counter!("safeguard_events_applied_total", "Events applied to instance records.");
    describe_counter!("safeguard_effects_total", "Effects (deletions pending/final/cancelled, restores) committed.");
    describe_gauge!("safeguard_instances", "Instances in the store, by status (live, deleted).");
    describe_gauge!("safeguard_alert_oldest_pending_age_seconds", "Age of the oldest alert not yet delivered (0: none pending).");
    describe_gauge!("safeguard_instances_at_risk", "Live instances with at least one at-risk reason.");
    describe_gauge!("safeguard_instances_at_risk_by_reason", "Live instances at risk, by reason (an instance may have several).");
    describe_gauge!("safeguard_alerts", "Alerts in the outbox, by rule (undecided until delivery decides a deletion's rule) and delivery state.");
    describe_gauge!(
        "safeguard_alert_last_delivery_error_timestamp_seconds",
        Unit::Seconds,
        "When the most recent failed delivery attempt of an alert that is still pending or failed was made (0: none)."
    );
    describe_gauge!("safeguard_store_size_bytes", Unit::Bytes, "Bytes of all files under the store directory (sled, blobs, read snapshot).");
    describe_gauge!(
        "safeguard_store_fs_free_bytes",
        Unit::Bytes,
        "Bytes the watcher may still write on the filesystem holding the store (statvfs f_bavail x f_frsize)."
    );
    describe_gauge!("safeguard_store_fs_size_bytes", Unit::Bytes, "Size of the filesystem holding the store (statvfs f_blocks x f_frsize).");
    describe_counter!(
        "safeguard_store_errors_total",
        "Store writes that failed, by op: snapshot (removing the stale read snapshot), commit (the batch), flush, alert_update (the sender's delivery state)."
    );
    describe_histogram!(
        "safeguard_engine_commit_duration_seconds",
        Unit::Seconds,
        "How long each store commit took (building the batch, applying it, flushing it to disk)."
    );
    describe_gauge!(
        "safeguard_backup_last_success_timestamp_seconds",
        Unit::Seconds,
        "When the store's last backup ([backup]) was uploaded with its manifest (absent: none since the watcher started)."
    );
    describe_gauge!("safeguard_backup_last_bytes", Unit::Bytes, "Compressed size of the store's last backup.");
    describe_counter!("safeguard_backup_failures_total", "Backups of the store that were due and did not reach the object store (the log says why).");
    describe_gauge!("safeguard_recoveries", "Recoveries in the journal, by outcome (running, failed, succeeded, abandoned).");
    describe_gauge!(
        "safeguard_kafka_consumer_lag",
        "Kafka messages not yet durably applied to the store, by topic and partition (high watermark minus the store's position)."
    );
    describe_gauge!("safeguard_kafka_brokers_up", "1 when the Kafka source's brokers answered the last watermark request, by source (its topics).");
    describe_gauge!(
        "safeguard_engine_last_commit_timestamp_seconds",
        Unit::Seconds,
        "When the engine last committed (it commits at least every watch.commit_interval)."
    );
    describe_gauge!("safeguard_build_info", "1, labelled with the running version.");
    describe_gauge!("safeguard_leader", "With [leader]: 1 while this watcher is the leader (holds the coordination partition and its lease), 0 on a standby.");
    describe_counter!("safeguard_leader_takeovers_total", "With [leader]: times this watcher became the leader since it started.");
    describe_gauge!(
        "safeguard_leader_deliveries_lag",
        "With [leader]: records of the deliveries topic this watcher has not read yet (absent until measured or while the topic is missing)."
    );
}

// ------------------------------------------------------------------------------------------- state

#[derive(Default, Clone)]
struct InstanceStats {
    live: u64,
    deleted: u64,
    at_risk: u64,
    by_reason: BTreeMap<&'static str, u64>,
}

/// When the scan ran, the (events applied, effects) it saw, and what it found.
type CachedStats = (Instant, (u64, u64), InstanceStats);

struct Shared {
    leader: Option<crate::sources::kafka::leader::Leader>,
    store: Store,
    risk: RiskRules,
    started_ms: i64,
    stall_after_ms: i64,
    /// Wall time of the engine's last commit (0: none yet).
    last_commit_ms: AtomicI64,
    engine_gone: AtomicBool,
    sources_started: AtomicBool,
    stopping: AtomicBool,
    source_labels: Vec<String>,
    /// The syslog listeners' UDP addresses, for the kernel's drop counts.
    udp: Vec<SocketAddr>,
    kafka: Vec<Arc<WatermarkProbe>>,
    /// The last instance scan: when, and the (events applied, effects) it saw.
    instances: Mutex<Option<CachedStats>>,
    recoveries: Mutex<Option<BTreeMap<&'static str, u64>>>,
}

/// Counts the recovery journal's entries by outcome (running, failed, succeeded, abandoned), for
/// `safeguard_recoveries`; called off the scrape path. The watcher hands it in: this module does not
/// read the journal itself.
pub type RecoveryCounts = Arc<dyn Fn() -> Result<Vec<&'static str>, String> + Send + Sync>;

/// What the endpoint reports on, from the rest of the watcher's setup.
pub struct Watched {
    /// The running sources (labels for `/readyz`; Kafka ones are probed for watermarks).
    pub sources: Vec<SourceConfig>,
    /// The engine commits at least this often; far longer without a commit is a stall.
    pub commit_interval: Duration,
    /// What "at risk" means in the instance gauges.
    pub risk: RiskRules,
    /// The recovery journal's outcomes; None leaves `safeguard_recoveries` out.
    pub recoveries: Option<RecoveryCounts>,
    /// With `[leader]`: this replica's role (`safeguard_leader`, `safeguard_leader_takeovers_total`).
    pub leader: Option<crate::sources::kafka::leader::Leader>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen for HTTP on {addr}: {source}; is another process using the port? change [http] listen in the config")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// The watcher's health (engine commits, sources, Kafka brokers) and, with `[http]`, its endpoint;
/// [`Server::stop`] ends it. The heartbeat asks it too ([`Server::health`]).
pub struct Server {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The bound address (useful when `listen` has port 0); `None` without `[http]`.
    pub local_addr: Option<SocketAddr>,
}

/// Bounds of the HTTP endpoint: a scraper or a probe sends a few hundred bytes of headers and reads
/// one answer; nobody holds it open.
pub const HTTP_MAX_CONNECTIONS: usize = 64;
pub const HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const HTTP_CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// Serves the endpoint with bounds axum's `serve` cannot set: connections at once, the time to send
/// the request headers, a connection's lifetime; and an `accept` error (EMFILE) is waited out.
async fn serve(listener: tokio::net::TcpListener, app: Router) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(HTTP_MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an HTTP connection failed (out of file descriptors?); retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            counter!("safeguard_http_connections_refused_total").increment(1);
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new()).header_read_timeout(HTTP_HEADER_TIMEOUT);
            let conn = b.serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(HTTP_CONNECTION_LIFETIME, conn).await;
        });
    }
}

impl Server {
    /// Binds `[http] listen` (failing at start-up, with the address, when it cannot) and serves until
    /// [`Server::stop`]. `durable` is the engine's commit notification.
    pub async fn start(http: Option<&HttpConfig>, watched: Watched, store: Store, durable: watch::Receiver<Durable>) -> Result<Server, HttpError> {
        let listener = match http {
            Some(http) => {
                let bind = |source| HttpError::Bind { addr: http.listen, source };
                let l = tokio::net::TcpListener::bind(http.listen).await.map_err(bind)?;
                let a = l.local_addr().map_err(bind)?;
                Some((l, a))
            }
            None => None,
        };
        let ex = exporter();
        ex.record(|| gauge!("safeguard_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0));

        let mut kafka = Vec::new();
        let mut source_labels = Vec::new();
        let mut udp = Vec::new();
        for s in &watched.sources {
            if let SourceConfig::Syslog(sys) = s {
                udp.extend(sys.udp);
            }
            match s {
                SourceConfig::Kafka(k) => kafka.push(WatermarkProbe::spawn(k, KAFKA_PROBE_EVERY)),
                other => source_labels.push(other.label()),
            }
        }
        let commit_every = crate::settings::millis(watched.commit_interval);
        let shared = Arc::new(Shared {
            store,
            risk: watched.risk,
            started_ms: now_ms(),
            stall_after_ms: commit_every.saturating_mul(30).max(60_000),
            last_commit_ms: AtomicI64::new(0),
            engine_gone: AtomicBool::new(false),
            sources_started: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            source_labels,
            udp,
            kafka,
            instances: Mutex::new(None),
            recoveries: Mutex::new(None),
            leader: watched.leader.clone(),
        });

        let mut tasks = Vec::new();
        // The engine publishes its durable positions after every commit (at least every commit_interval).
        let sh = shared.clone();
        let mut rx = durable;
        tasks.push(tokio::spawn(async move {
            loop {
                if rx.changed().await.is_err() {
                    sh.engine_gone.store(true, Ordering::Relaxed);
                    break;
                }
                sh.last_commit_ms.store(now_ms(), Ordering::Relaxed);
            }
        }));
        // The recovery journal is opened briefly by each reader; read it off the scrape path.
        if let Some(count) = watched.recoveries {
            let sh = shared.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let count = count.clone();
                    match tokio::task::spawn_blocking(move || count()).await {
                        Ok(Ok(list)) => {
                            let mut by: BTreeMap<&'static str, u64> = ["running", "failed", "succeeded", "abandoned"].into_iter().map(|s| (s, 0)).collect();
                            for status in list {
                                *by.entry(status).or_default() += 1;
                            }
                            *sh.recoveries.lock().unwrap_or_else(|p| p.into_inner()) = Some(by);
                        }
                        Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the recovery journal for /metrics"),
                        Err(_) => {}
                    }
                    tokio::time::sleep(RECOVERIES_EVERY).await;
                }
            }));
        }
        let mut local_addr = None;
        if let Some((listener, addr)) = listener {
            let app =
                Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics_endpoint)).with_state(shared.clone());
            tasks.push(tokio::spawn(serve(listener, app)));
            tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
            local_addr = Some(addr);
        }
        Ok(Server { shared, tasks, local_addr })
    }

    /// A cheap handle on the watcher's readiness, for the heartbeat task.
    pub fn health(&self) -> Health {
        Health(self.shared.clone())
    }

    /// Every configured source has started (listeners bound, consumers created).
    pub fn sources_started(&self) {
        self.shared.sources_started.store(true, Ordering::Relaxed);
    }

    pub fn stop(self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        for k in &self.shared.kafka {
            k.stop();
        }
        for t in self.tasks {
            t.abort();
        }
    }
}

// ------------------------------------------------------------------------------------------- health

fn json_response(ok: bool, body: serde_json::Value) -> Response {
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    // Probe errors quote broker and store messages: the one redaction, like everything shown.
    (status, [(header::CONTENT_TYPE, "application/json")], crate::redact::json(&body.to_string())).into_response()
}

/// (engine healthy, its JSON description).
fn engine_health(sh: &Shared) -> (bool, serde_json::Value) {
    let now = now_ms();
    let last = sh.last_commit_ms.load(Ordering::Relaxed);
    let since = now - if last == 0 { sh.started_ms } else { last };
    let (ok, state) = if sh.engine_gone.load(Ordering::Relaxed) {
        (false, "stopped")
    } else if since > sh.stall_after_ms {
        (false, "stalled")
    } else {
        (true, "running")
    };
    let v = json!({
        "state": state,
        "last_commit": (last > 0).then(|| rfc3339(last)),
        "seconds_since_last_commit": (last > 0).then_some(since as f64 / 1000.0),
        "stalled_after_seconds": sh.stall_after_ms / 1000,
    });
    (ok, v)
}

async fn healthz(State(sh): State<Arc<Shared>>) -> Response {
    let (ok, engine) = engine_health(&sh);
    json_response(ok, json!({ "status": if ok { "ok" } else { "failing" }, "engine": engine, "sources_started": sh.sources_started.load(Ordering::Relaxed) }))
}

/// (topic, partition, messages behind) for each Kafka partition.
pub type PartitionLags = Vec<(String, i32, i64)>;

/// Shares the watcher's readiness with a task (the heartbeat).
#[derive(Clone)]
pub struct Health(Arc<Shared>);

impl Health {
    /// What `/readyz` says: `Err` with the reasons when the engine is not committing, the store does
    /// not answer, sources are not up, or a Kafka source's brokers do not answer.
    pub fn readiness(&self) -> Result<(), String> {
        let (reasons, _) = ready(&self.0);
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }

    /// Each Kafka partition's lag (topic, partition, messages) as `/metrics` reports it: the brokers'
    /// high watermark minus the store's durable position. `Err` says why it is not known (a source's
    /// brokers gave no answer lately); `None` without Kafka sources.
    pub fn kafka_lag(&self) -> Option<Result<PartitionLags, String>> {
        let sh = &self.0;
        if sh.kafka.is_empty() {
            return None;
        }
        let positions: BTreeMap<SourceId, u64> = match sh.store.positions() {
            Ok(p) => p.into_iter().filter_map(|(id, p)| Some((id.parse().ok()?, p.offset))).collect(),
            Err(e) => return Some(Err(format!("the store's positions cannot be read: {e}"))),
        };
        let mut out = Vec::new();
        for k in &sh.kafka {
            let st = k.status();
            if !st.fresh(KAFKA_READY_WITHIN) {
                let why = st.error.clone().unwrap_or_else(|| "no answer from the brokers yet".into());
                return Some(Err(crate::redact::text(&format!("kafka {}: {why}", k.label))));
            }
            out.extend(st.lags(&positions));
        }
        Some(Ok(out))
    }
}

async fn readyz(State(sh): State<Arc<Shared>>) -> Response {
    let (reasons, body) = ready(&sh);
    json_response(reasons.is_empty(), body)
}

/// The reasons the watcher is not ready (none: ready) and `/readyz`'s body.
fn ready(sh: &Shared) -> (Vec<String>, serde_json::Value) {
    let mut reasons = Vec::new();
    let (engine_ok, engine) = engine_health(sh);
    if !engine_ok {
        reasons.push(format!("the engine is {}", engine["state"].as_str().unwrap_or("?")));
    }
    if sh.stopping.load(Ordering::Relaxed) {
        reasons.push("shutting down".to_string());
    }
    let store_ok = match sh.store.schema_version() {
        Ok(_) => true,
        Err(e) => {
            reasons.push(format!("the store does not answer: {e}"));
            false
        }
    };
    let started = sh.sources_started.load(Ordering::Relaxed);
    if !started {
        reasons.push("sources are starting".to_string());
    }
    let mut sources: Vec<serde_json::Value> = sh.source_labels.iter().map(|l| json!({ "source": l, "connected": started })).collect();
    for k in &sh.kafka {
        let st = k.status();
        let fresh = st.fresh(KAFKA_READY_WITHIN);
        if !fresh {
            let why = st.error.clone().unwrap_or_else(|| "no answer from the brokers yet".into());
            reasons.push(format!("kafka {}: {why}", k.label));
        }
        sources.push(json!({
            "source": format!("kafka {}", k.label),
            "connected": fresh,
            "partitions": st.marks.len(),
            "error": st.error,
        }));
    }
    let ok = reasons.is_empty();
    let body = json!({ "status": if ok { "ready" } else { "not ready" }, "reasons": reasons, "store": if store_ok { "open" } else { "failing" }, "engine": engine, "sources": sources });
    (reasons, body)
}

// ------------------------------------------------------------------------------------------- metrics

async fn metrics_endpoint(State(sh): State<Arc<Shared>>) -> Response {
    let s = sh.clone();
    let res = tokio::time::timeout(SCRAPE_TIMEOUT, tokio::task::spawn_blocking(move || exporter().record(|| collect(&s)))).await;
    let ex = exporter();
    match res {
        Ok(Ok(Ok(()))) => {
            ex.handle.run_upkeep();
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], ex.handle.render()).into_response()
        }
        Ok(Ok(Err(e))) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the store for metrics: {e}\n")).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("collecting metrics failed: {e}\n")).into_response(),
        Err(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("reading the store for metrics took over {}s; is the disk overloaded?\n", SCRAPE_TIMEOUT.as_secs()))
                .into_response()
        }
    }
}

/// Reads what the store has committed and sets every metric (blocking: sled reads).
fn collect(sh: &Shared) -> Result<(), crate::store::StoreError> {
    let store = &sh.store;
    let c = store.counters()?;
    counter!("safeguard_lines_read_total").absolute(c.lines_read);
    counter!("safeguard_lines_relevant_total").absolute(c.lines_relevant);
    counter!("safeguard_lines_attributed_total").absolute(c.lines_attributed);
    counter!("safeguard_lines_unattributed_total").absolute(c.lines_unattributed);
    counter!("safeguard_lines_rejected_total").absolute(c.lines_rejected);
    gauge!("safeguard_lines_parked").set(c.lines_parked as f64);
    if let Some(l) = &sh.leader {
        let r = l.role();
        gauge!("safeguard_leader", "member" => r.member.clone()).set(if r.role == "leader" { 1.0 } else { 0.0 });
        counter!("safeguard_leader_takeovers_total", "member" => r.member.clone()).absolute(r.takeovers);
        if let Some(lag) = r.deliveries_lag {
            gauge!("safeguard_leader_deliveries_lag", "member" => r.member).set(lag as f64);
        }
    }
    counter!("safeguard_lines_expired_unattributed_total").absolute(c.lines_expired_unattributed);
    for a in &sh.udp {
        if let Some(n) = crate::sources::syslog::udp_drops(*a) {
            counter!("safeguard_syslog_udp_dropped_total", "addr" => a.to_string()).absolute(n);
        }
    }
    for (source, s) in &c.by_source {
        counter!("safeguard_source_lines_read_total", "source" => source.clone()).absolute(s.lines_read);
        counter!("safeguard_source_lines_relevant_total", "source" => source.clone()).absolute(s.lines_relevant);
        counter!("safeguard_source_lines_rejected_total", "source" => source.clone()).absolute(s.lines_rejected);
    }
    for (reason, n) in &c.rejected_by_reason {
        counter!("safeguard_lines_rejected_by_reason_total", "reason" => reason.clone()).absolute(*n);
    }
    counter!("safeguard_lines_replayed_skipped_total").absolute(c.lines_replayed_skipped);
    counter!("safeguard_events_applied_total").absolute(c.events_applied);
    counter!("safeguard_effects_total").absolute(c.effects);
    gauge!("safeguard_store_size_bytes").set(store.size_on_disk() as f64);
    match crate::store::telemetry::fs_space(store.path()) {
        Ok(fs) => {
            gauge!("safeguard_store_fs_free_bytes").set(fs.free_bytes as f64);
            gauge!("safeguard_store_fs_size_bytes").set(fs.size_bytes as f64);
        }
        Err(e) => tracing::warn!(store = %store.path().display(), error = %e, "cannot read the free space of the store's filesystem for /metrics"),
    }
    // Every op from zero, so a rule on its increase has a series before the first failure.
    for op in crate::store::telemetry::ERROR_OPS {
        counter!("safeguard_store_errors_total", "op" => op).increment(0);
    }

    let stats = instance_stats(sh, (c.events_applied, c.effects))?;
    gauge!("safeguard_instances", "status" => "live").set(stats.live as f64);
    gauge!("safeguard_instances", "status" => "deleted").set(stats.deleted as f64);
    gauge!("safeguard_instances_at_risk").set(stats.at_risk as f64);
    for (reason, n) in &stats.by_reason {
        gauge!("safeguard_instances_at_risk_by_reason", "reason" => *reason).set(*n as f64);
    }

    alert_metrics(sh)?;

    // Lag: what the brokers hold beyond the store's durable position for each partition.
    // A position under an id this release does not know (a newer release's store) is not a Kafka one here.
    let positions: BTreeMap<SourceId, u64> = store.positions()?.into_iter().filter_map(|(id, p)| Some((id.parse().ok()?, p.offset))).collect();
    for k in &sh.kafka {
        let st = k.status();
        gauge!("safeguard_kafka_brokers_up", "source" => k.label.clone()).set(if st.up() { 1.0 } else { 0.0 });
        for (topic, partition, lag) in st.lags(&positions) {
            gauge!("safeguard_kafka_consumer_lag", "topic" => topic, "partition" => partition.to_string()).set(lag as f64);
        }
    }

    if let Some(by) = sh.recoveries.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        for (outcome, n) in by {
            gauge!("safeguard_recoveries", "outcome" => *outcome).set(*n as f64);
        }
    }
    let last = sh.last_commit_ms.load(Ordering::Relaxed);
    if last > 0 {
        gauge!("safeguard_engine_last_commit_timestamp_seconds").set(last as f64 / 1000.0);
    }
    Ok(())
}

/// Records change only when events are applied or effects (deletions) committed; at-risk reasons also
/// change with time. So the scan is reused while neither counter moved, for at most the TTL.
fn instance_stats(sh: &Shared, generation: (u64, u64)) -> Result<InstanceStats, crate::store::StoreError> {
    // The kept counts: a few keys, whatever the store holds.
    if let Some(t) = sh.store.tally()? {
        return Ok(InstanceStats { live: t.live(), deleted: t.deleted, at_risk: t.at_risk, by_reason: t.by_reason().into_iter().collect() });
    }
    // A store no engine of this release has indexed yet (the watcher indexes it as it starts).
    let mut cache = sh.instances.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((at, seen, s)) = cache.as_ref() {
        if *seen == generation && at.elapsed() < INSTANCE_STATS_TTL {
            return Ok(s.clone());
        }
    }
    let rules = sh.risk;
    let now = now_ms();
    let mut s = InstanceStats::default();
    for r in [
        crate::state::risk::Risk::NoBaseBackup,
        crate::state::risk::Risk::StaleBaseBackup,
        crate::state::risk::Risk::WalPushFailing,
        crate::state::risk::Risk::WalSilent,
    ] {
        s.by_reason.insert(r.as_str(), 0);
    }
    for r in sh.store.records() {
        let r = r?;
        if r.status == crate::state::Status::Deleted {
            s.deleted += 1;
            continue;
        }
        s.live += 1;
        let risks = crate::state::risk::assess(&r, now, &rules);
        if !risks.is_empty() {
            s.at_risk += 1;
        }
        for k in risks {
            *s.by_reason.entry(k.as_str()).or_default() += 1;
        }
    }
    *cache = Some((Instant::now(), generation, s.clone()));
    Ok(s)
}

fn alert_metrics(sh: &Shared) -> Result<(), crate::store::StoreError> {
    // Every rule and state is exported, zero when none, so a rule's first alert is a change, not a new series.
    let mut by: BTreeMap<(String, String), u64> = BTreeMap::new();
    for rule in
        ["instance_deleted", "deleted_without_base_backup", "deletion_resolved", "no_recent_base_backup", "wal_archiving_failing", "digest", "undecided"]
    {
        for state in ["pending", "sent", "failed", "suppressed"] {
            by.insert((rule.to_string(), state.to_string()), 0);
        }
    }
    let tally = match sh.store.alert_tally()? {
        Some(t) => t,
        // A store no engine of this release has indexed yet: counted from the outbox.
        None => {
            let mut t = crate::store::tally::AlertTally::default();
            for a in sh.store.alerts() {
                t.add(&a?);
            }
            t
        }
    };
    for (k, n) in &tally.by {
        if let Some((rule, state)) = k.split_once('/') {
            by.insert((rule.to_string(), state.to_string()), *n);
        }
    }
    for ((rule, state), n) in by {
        gauge!("safeguard_alerts", "rule" => rule, "state" => state).set(n as f64);
    }
    let oldest = sh.store.oldest_pending_alert()?;
    gauge!("safeguard_alert_oldest_pending_age_seconds").set(oldest.map_or(0.0, |t| (now_ms() - t).max(0) as f64 / 1000.0));
    gauge!("safeguard_alert_last_delivery_error_timestamp_seconds").set(tally.last_error_at as f64 / 1000.0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_section_parses_and_rejects_unknown_keys() {
        let c: HttpConfig = toml::from_str("listen = \"0.0.0.0:9187\"\n").unwrap();
        assert_eq!(c.listen, "0.0.0.0:9187".parse().unwrap());
        let c: HttpConfig = toml::from_str("").unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        let e = toml::from_str::<HttpConfig>("listen = \"0.0.0.0:9187\"\nport = 1\n").unwrap_err().to_string();
        assert!(e.contains("port"), "{e}");
    }
}
