//! `[leader]`: one watcher of several delivers alerts, elected through Kafka itself.
//!
//! Every replica has its own store and its own consumer group on the syslog topics (so each builds the
//! whole state), and all of them join one more group, `leader.group_id`, subscribed to a one-partition
//! coordination topic (`leader.topic`). Kafka's group coordinator gives that partition to exactly one
//! member: the **leader**. The others are standbys.
//!
//! **Lease.** Holding partition 0 is not enough to send: a leader that is paused or cut off still
//! believes it holds it until librdkafka notices. So the leader renews a lease by committing an offset
//! of partition 0 synchronously in the coordination group every `lease / 3`: a commit the coordinator
//! accepts proves this member is still in the group's current generation (real Kafka refuses a commit
//! from an expired member with `ILLEGAL_GENERATION`/`UNKNOWN_MEMBER_ID`). The lease runs from when the
//! commit was *sent*. [`Leader::is_leader`] = partition 0 is assigned AND the lease has not run out.
//!
//! **Bound.** The coordinator expires a member `session_timeout` after its last heartbeat, and a member
//! whose commit was accepted at `t` had heartbeated at or after `t - heartbeat` (heartbeats go every
//! `heartbeat = min(session_timeout / 3, 3s)`). So no other member is assigned partition 0 before
//! `t_sent + session_timeout - heartbeat`, while the old leader stops sending at `t_sent + lease`.
//! [`LeaderConfig::validate`] requires `lease + heartbeat < session_timeout`. An alert whose send had
//! already started when the lease ran out may still complete: the only overlap, and the same alert id
//! gives the same Message-ID / Idempotency-Key.
//!
//! **Deliveries topic.** After each successful send the leader produces `{alert_id, channel, at}` keyed
//! `<alert_id>/<channel>` to `leader.deliveries_topic` (compacted: the newest record per key is kept).
//! Every replica reads it from the beginning at start-up and then follows it ([`Leader::take_fresh`],
//! [`Leader::delivered`]); the sender marks those channels sent in its own outbox, so a standby that
//! takes over sends only what is undelivered. The leader also writes `leader` = `{member, at}` when it
//! takes over, which is how standbys know who leads.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::config::KafkaClientSettings;
use safeguard_core::alerts::{Alert, Delivery, Rule, Severity};

/// How many deliveries are remembered for alerts this replica's outbox does not hold (yet); past it
/// the oldest are forgotten (their alerts, if raised later, are sent again by a new leader).
const REMEMBER_MAX: usize = 200_000;
/// How often the deliveries topic's lag is measured (two requests per partition).
const LAG_EVERY: Duration = Duration::from_secs(5);

/// `[leader]`: see the module's documentation.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LeaderConfig {
    /// Bootstrap brokers; empty (the default) takes the first kafka source's.
    #[serde(default, deserialize_with = "crate::settings::string_list")]
    pub brokers: Vec<String>,
    /// The coordination topic: exactly one partition; nothing is written to it.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// The coordination group, the same for every replica (unlike the sources' groups).
    pub group_id: String,
    /// This replica's name in logs, metrics and the deliveries topic (default: the host name).
    #[serde(default)]
    pub member: Option<String>,
    /// The compacted topic where the leader records each delivery.
    #[serde(default = "default_deliveries_topic")]
    pub deliveries_topic: String,
    /// How long a renewal of the leadership is good for (see the bound in the module's documentation).
    #[serde(default = "default_lease", deserialize_with = "crate::settings::duration")]
    pub lease: Duration,
    /// The coordination group's session timeout: a leader that dies holds partition 0 this long.
    #[serde(default = "default_session_timeout", deserialize_with = "crate::settings::duration")]
    pub session_timeout: Duration,
    /// librdkafka settings passed through (TLS, SASL), as for a kafka source.
    #[serde(default)]
    pub client: KafkaClientSettings,
}

fn default_topic() -> String {
    "safeguard-leader".into()
}
fn default_deliveries_topic() -> String {
    "safeguard-deliveries".into()
}
fn default_lease() -> Duration {
    Duration::from_secs(5)
}
fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}

/// librdkafka's heartbeat interval for a session timeout, as [`LeaderConfig`] sets it.
fn heartbeat(session: Duration) -> Duration {
    (session / 3).clamp(Duration::from_millis(1), Duration::from_secs(3))
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("[leader]: `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
    #[error("[leader]: librdkafka rejected the settings: {0}; check `leader.client`")]
    Client(String),
    #[error("[leader]: cannot subscribe to the coordination topic {topic}: {reason}")]
    Subscribe { topic: String, reason: String },
    #[error("[leader]: cannot start its thread: {0}; the host is out of threads or memory")]
    Thread(std::io::Error),
}

const RESERVED: [&str; 6] = ["bootstrap.servers", "metadata.broker.list", "group.id", "client.id", "enable.auto.commit", "session.timeout.ms"];

impl LeaderConfig {
    /// Checks what serde cannot; errors name the key. `brokers` may still be empty here (the
    /// composed config fills it from a kafka source, and refuses it when there is none).
    pub fn validate(&self) -> Result<(), LeaderError> {
        let invalid = |key, problem: String| Err(LeaderError::Invalid { key, problem });
        if self.topic.trim().is_empty() {
            return invalid("topic", "is empty; name the one-partition coordination topic every replica subscribes to".into());
        }
        if self.group_id.trim().is_empty() {
            return invalid("group_id", "is empty; give every replica the same coordination group".into());
        }
        if self.deliveries_topic.trim().is_empty() || self.deliveries_topic == self.topic {
            return invalid("deliveries_topic", "must be a compacted topic of its own, not empty and not the coordination topic".into());
        }
        if self.member.as_deref().is_some_and(|m| m.trim().is_empty()) {
            return invalid("member", "is empty; leave it out to use the host name".into());
        }
        let session = self.session_timeout;
        if session.is_zero() || session > Duration::from_secs(3600) {
            return invalid("session_timeout", format!("= \"{}\" is out of range: 1ms to 1h (default 10s)", humantime::format_duration(session)));
        }
        let hb = heartbeat(session);
        if self.lease.is_zero() || self.lease + hb >= session {
            return invalid(
                "lease",
                format!(
                    "= \"{}\" must be above zero and shorter than session_timeout ({}) minus the heartbeat interval ({}): a leader cut off must stop sending before the group can give its partition to another member",
                    humantime::format_duration(self.lease),
                    humantime::format_duration(session),
                    humantime::format_duration(hb)
                ),
            );
        }
        if let Some(k) = self.client.0.keys().find(|k| RESERVED.contains(&k.as_str())) {
            return invalid("client", format!("sets \"{k}\", which safeguard manages; remove it"));
        }
        Ok(())
    }

    /// This replica's member name: `member`, else the host name.
    pub fn member_name(&self) -> String {
        self.member.as_deref().map_or_else(crate::settings::hostname, crate::settings::expand_hostname)
    }

    fn base_client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(",")).set("client.id", self.member_name());
        for (k, v) in &self.client.0 {
            c.set(k, v);
        }
        c.set_log_level(RDKafkaLogLevel::Warning);
        c
    }
}

/// `doctor`'s `[leader]` check: the brokers answer, the coordination topic has one partition (the member
/// holding partition 0 leads), and the deliveries topic exists and is compacted (else it grows for ever,
/// and deletes would lose deliveries). Err is (what failed, what to do).
pub fn check(cfg: &LeaderConfig, timeout: Duration) -> Result<String, (String, &'static str)> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let redact = |e: &dyn std::fmt::Display| cfg.client.redact(&e.to_string());
    let c: BaseConsumer = cfg.base_client().create().map_err(|e| (redact(&e), "fix the [leader] settings (brokers, client)"))?;
    let partitions = |topic: &str| -> Result<usize, (String, &'static str)> {
        let md = c
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| (format!("fetching metadata for {topic}: {}", redact(&e)), "check `brokers` (reachable from this host) and the TLS/SASL settings"))?;
        let t = md.topics().iter().find(|t| t.name() == topic);
        match t {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len()),
            _ => Err((format!("topic {topic} does not exist"), "create it: see docs/kafka.md (\"A standby watcher\") for both [leader] topics")),
        }
    };
    let n = partitions(&cfg.topic)?;
    if n != 1 {
        return Err((
            format!("coordination topic {} has {n} partitions; the election needs exactly one", cfg.topic),
            "recreate it with one partition (or point `topic` at one that has), then restart the watchers",
        ));
    }
    let d = partitions(&cfg.deliveries_topic)?;
    let admin: AdminClient<DefaultClientContext> = cfg.base_client().create().map_err(|e| (redact(&e), "fix the [leader] settings (brokers, client)"))?;
    let spec = ResourceSpecifier::Topic(&cfg.deliveries_topic);
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let described =
        tokio::runtime::Builder::new_current_thread().enable_all().build().ok().and_then(|rt| rt.block_on(admin.describe_configs([&spec], &opts)).ok());
    let policy = described.and_then(|r| r.into_iter().next()).and_then(|r| r.ok()).and_then(|r| r.get("cleanup.policy").and_then(|e| e.value.clone()));
    let compacted = match policy.as_deref() {
        Some(p) if p.split(',').any(|x| x.trim() == "compact") => "compacted",
        Some(p) => {
            return Err((
                format!("deliveries topic {} has cleanup.policy={p}", cfg.deliveries_topic),
                "set cleanup.policy=compact on it (kafka-configs --alter --add-config cleanup.policy=compact): a deleting topic loses the record of what was delivered",
            ))
        }
        None => "its cleanup.policy could not be read (make sure it is compact)",
    };
    Ok(format!(
        "coordination topic {} (1 partition, group {}); deliveries topic {} ({d} partition(s), {compacted})",
        cfg.topic, cfg.group_id, cfg.deliveries_topic
    ))
}

/// One record of the deliveries topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeliveryRecord {
    /// `channel` ("email", "webhook") of `alert_id` was delivered at `at` (ms) by `member`.
    Delivery { alert_id: String, channel: String, at: i64, member: String },
    /// The leader finished with `alert_id` (sent, failed for good, or suppressed), keyed
    /// `<alert_id>/outcome`: a standby's copy takes the same state, rule and verdict, so it neither stays
    /// pending for ever nor disagrees with the leader on what was decided.
    Outcome {
        alert_id: String,
        #[serde(flatten)]
        outcome: Outcome,
        member: String,
    },
    /// `member` became the leader at `at`.
    Leader { member: String, at: i64 },
}

/// How the leader finished with an alert. Fields a record of an earlier release lacks read as absent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    pub state: Delivery,
    pub rule: Option<Rule>,
    pub severity: Option<Severity>,
    pub verdict: Option<String>,
    /// The last delivery error (already redacted), for a failed alert.
    pub error: Option<String>,
    pub error_at: Option<i64>,
    #[serde(default)]
    pub attempts: u32,
    pub give_up_at: Option<i64>,
    pub next_attempt_at: Option<i64>,
    pub sent_at: Option<i64>,
    pub email_sent_at: Option<i64>,
    pub webhook_sent_at: Option<i64>,
    /// When the leader recorded it: of two outcomes for one alert, the later one holds.
    pub at: i64,
}

impl Outcome {
    /// The leader's alert as it stands now, as an outcome recorded at `at`.
    pub fn of(a: &Alert, at: i64) -> Outcome {
        Outcome {
            state: a.state,
            rule: a.rule,
            severity: a.severity,
            verdict: a.verdict.clone(),
            error: a.last_error.clone(),
            error_at: a.last_error_at,
            attempts: a.attempts,
            give_up_at: Some(a.give_up_at),
            next_attempt_at: Some(a.next_attempt_at),
            sent_at: a.sent_at,
            email_sent_at: a.email_sent_at,
            webhook_sent_at: a.webhook_sent_at,
            at,
        }
    }
}

/// What the deliveries topic says was sent for one alert: channel -> when.
pub type Marks = HashMap<String, i64>;

/// Everything the deliveries topic says about one alert.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    pub channels: Marks,
    pub outcome: Option<Outcome>,
}

#[derive(Default)]
struct Known {
    /// Per alert id: the entry's generation (an id forgotten and learned again is a new generation, so
    /// its old place in `order` does not remove it) and what was seen.
    marks: HashMap<String, (u64, Seen)>,
    /// Order of first sight with the entry's generation, to forget the oldest past [`REMEMBER_MAX`].
    order: std::collections::VecDeque<(String, u64)>,
    next_generation: u64,
    /// Alert ids with marks not yet handed to the sender.
    fresh: HashSet<String>,
    leader: Option<String>,
    /// When a leader's announcement was last read.
    leader_heard: Option<Instant>,
}

struct Inner {
    member: String,
    lease: Duration,
    session: Duration,
    holds: AtomicBool,
    lease_until: Mutex<Option<Instant>>,
    takeovers: AtomicU64,
    known: Mutex<Known>,
    producer: FutureProducer,
    deliveries_topic: String,
    coordination_topic: String,
    /// The deliveries topic was read to its end once since start-up.
    caught_up: AtomicBool,
    /// Records of the deliveries topic behind its end; -1 until measured.
    lag: AtomicI64,
    /// Where the leader's announcement is produced from (the watcher's runtime).
    rt: tokio::runtime::Handle,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static CURRENT: std::sync::OnceLock<Leader> = std::sync::OnceLock::new();

/// This process's role, when it runs an election (what `status` shows).
pub fn current_role() -> Option<Role> {
    CURRENT.get().map(Leader::role)
}

/// The time of a new outcome for `a`: now, but always after the outcome its copy holds, so that a leader
/// whose clock is behind the previous one's still records the newer outcome.
pub fn outcome_time(a: &Alert, now: i64) -> i64 {
    now.max(a.outcome_at.map_or(i64::MIN, |t| t.saturating_add(1)))
}

/// This process's election, when it runs one.
pub fn current() -> Option<Leader> {
    CURRENT.get().cloned()
}

/// The running election and the deliveries it has seen; cheap to clone.
#[derive(Clone)]
pub struct Leader(Arc<Inner>);

/// The role as `status` and `/metrics` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Role {
    pub member: String,
    /// "leader" or "standby".
    pub role: String,
    pub leader: Option<String>,
    pub takeovers: u64,
    /// Records of the deliveries topic not read yet (None until first measured, or when the topic is
    /// missing): a standby that lags marks deliveries late, and would resend them if it took over now.
    #[serde(default)]
    pub deliveries_lag: Option<u64>,
}

impl Leader {
    /// Starts the election and the deliveries reader on their own threads; both stop when `stop` is set
    /// (the coordination consumer leaves its group then, so a standby takes over at once).
    pub fn start(cfg: &LeaderConfig, stop: Arc<AtomicBool>, rt: tokio::runtime::Handle) -> Result<Leader, LeaderError> {
        cfg.validate()?;
        if cfg.brokers.is_empty() {
            return Err(LeaderError::Invalid { key: "brokers", problem: "is empty and no kafka source gives any".into() });
        }
        let member = cfg.member_name();
        let redact = |e: rdkafka::error::KafkaError| LeaderError::Client(cfg.client.redact(&e.to_string()));
        let producer: FutureProducer = cfg
            .base_client()
            .set("acks", "all")
            // Deliveries are few; each goes out at once.
            .set("linger.ms", "0")
            .set("message.timeout.ms", "10000")
            .create()
            .map_err(redact)?;
        let inner = Arc::new(Inner {
            member: member.clone(),
            lease: cfg.lease,
            session: cfg.session_timeout,
            holds: AtomicBool::new(false),
            lease_until: Mutex::new(None),
            takeovers: AtomicU64::new(0),
            known: Mutex::new(Known::default()),
            producer,
            deliveries_topic: cfg.deliveries_topic.clone(),
            coordination_topic: cfg.topic.clone(),
            caught_up: AtomicBool::new(false),
            lag: AtomicI64::new(-1),
            rt,
        });
        let session_ms = cfg.session_timeout.as_millis().max(1) as u64;
        let elect: BaseConsumer<Elect> = cfg
            .base_client()
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("session.timeout.ms", session_ms.to_string())
            .set("heartbeat.interval.ms", heartbeat(cfg.session_timeout).as_millis().to_string())
            // Eager: a member joining revokes partition 0 for a moment (the leader pauses, counted as a new
            // takeover when it gets it back). cooperative-sticky would keep it, but with tansu 0.6 a dead
            // leader's partition was then never reassigned (tried: no takeover in 60s).
            .set("partition.assignment.strategy", "range")
            .create_with_context(Elect(inner.clone()))
            .map_err(redact)?;
        elect.subscribe(&[&cfg.topic]).map_err(|e| LeaderError::Subscribe { topic: cfg.topic.clone(), reason: cfg.client.redact(&e.to_string()) })?;
        let reader: BaseConsumer<Quiet> = cfg
            .base_client()
            // Never commits: every start reads the compacted topic from its beginning.
            .set("group.id", format!("{}.deliveries.{member}", cfg.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create_with_context(Quiet)
            .map_err(redact)?;
        tracing::info!(%member, group = %cfg.group_id, topic = %cfg.topic, deliveries = %cfg.deliveries_topic, lease = %humantime::format_duration(cfg.lease), "joining the leader election");
        let l = Leader(inner);
        // `status` asks the query socket, which asks this (one election per watcher process).
        let _ = CURRENT.set(l.clone());
        {
            let (l, stop) = (l.clone(), stop.clone());
            std::thread::Builder::new().name("leader".into()).spawn(move || l.elect(elect, &stop)).map_err(LeaderError::Thread)?;
        }
        {
            let l = l.clone();
            std::thread::Builder::new().name("deliveries".into()).spawn(move || l.read(reader, &stop)).map_err(LeaderError::Thread)?;
        }
        Ok(l)
    }

    /// Whether this replica may send now: it holds partition 0 and its lease has not run out.
    pub fn is_leader(&self) -> bool {
        self.0.holds.load(Ordering::Acquire) && lock(&self.0.lease_until).is_some_and(|u| Instant::now() < u)
    }

    pub fn role(&self) -> Role {
        let leading = self.is_leader();
        let leader = if leading { Some(self.0.member.clone()) } else { lock(&self.0.known).leader.clone() };
        Role {
            member: self.0.member.clone(),
            role: if leading { "leader" } else { "standby" }.into(),
            leader,
            takeovers: self.0.takeovers.load(Ordering::Relaxed),
            deliveries_lag: u64::try_from(self.0.lag.load(Ordering::Relaxed)).ok(),
        }
    }

    /// Whether the deliveries topic has been read to its end since start-up (before that, a new leader
    /// could resend what the old one delivered).
    pub fn caught_up(&self) -> bool {
        self.0.caught_up.load(Ordering::Acquire)
    }

    /// Records a delivery on the deliveries topic (waits for the broker's acknowledgement, bounded).
    pub async fn record_delivery(&self, alert_id: &str, channel: &str, at: i64) {
        let rec = DeliveryRecord::Delivery { alert_id: alert_id.into(), channel: channel.into(), at, member: self.0.member.clone() };
        self.produce(&format!("{alert_id}/{channel}"), &rec).await;
    }

    /// Records that this leader finished with `a` (before its outbox says so: a leader dying between the
    /// two reads its own record when it restarts).
    /// `a.outcome_at` is the record's time (see [`outcome_time`]), so this replica, reading its own
    /// record back, finds nothing newer in it.
    pub async fn record_outcome(&self, a: &Alert) {
        let at = a.outcome_at.unwrap_or_else(crate::timeutil::now_ms);
        let rec = DeliveryRecord::Outcome { alert_id: a.id.clone(), outcome: Outcome::of(a, at), member: self.0.member.clone() };
        self.produce(&format!("{}/outcome", a.id), &rec).await;
    }

    /// [`Leader::record_outcome`] from a thread outside the runtime (`alerts retry` on the query socket):
    /// every replica's copy becomes pending again, so whoever leads next sends it.
    pub fn record_outcome_soon(&self, a: &Alert) {
        let (l, a) = (self.clone(), a.clone());
        self.0.rt.spawn(async move { l.record_outcome(&a).await });
    }

    /// Deletes what the deliveries topic holds for alerts retired from the outbox (compaction then drops
    /// their keys), so the topic, and what every replica reads at start-up, stays within retention.
    pub async fn forget_retired(&self, ids: &[String]) {
        for id in ids {
            for what in ["email", "webhook", "outcome"] {
                let key = format!("{id}/{what}");
                let r: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.0.deliveries_topic).key(&key);
                if let Err((e, _)) = self.0.producer.send(r, Duration::from_secs(10)).await {
                    tracing::warn!(key, error = %e, "could not delete a retired alert's record from the deliveries topic; it stays until the next retirement");
                    return;
                }
            }
        }
    }

    async fn produce(&self, key: &str, rec: &DeliveryRecord) {
        let Ok(body) = serde_json::to_vec(rec) else { return };
        let r = FutureRecord::to(&self.0.deliveries_topic).key(key).payload(&body);
        if let Err((e, _)) = self.0.producer.send(r, Duration::from_secs(10)).await {
            tracing::warn!(key, error = %e, topic = %self.0.deliveries_topic, "could not record a delivery on the deliveries topic; a standby taking over would send it again");
        }
    }

    /// What the deliveries topic says about `alert_id`.
    pub fn delivered(&self, alert_id: &str) -> Option<Seen> {
        lock(&self.0.known).marks.get(alert_id).map(|(_, s)| s.clone())
    }

    /// Alert ids with deliveries or outcomes not handed out before, with what is known of them.
    pub fn take_fresh(&self) -> Vec<(String, Seen)> {
        let mut k = lock(&self.0.known);
        let fresh: Vec<String> = k.fresh.drain().collect();
        fresh.into_iter().filter_map(|id| Some((id.clone(), k.marks.get(&id)?.1.clone()))).collect()
    }

    /// Forgets what was applied to an alert that is finished in the outbox (memory stays bounded).
    pub fn forget(&self, alert_id: &str) {
        lock(&self.0.known).forget(alert_id);
    }

    fn set_holds(&self, holds: bool) {
        let was = self.0.holds.swap(holds, Ordering::AcqRel);
        if !holds {
            *lock(&self.0.lease_until) = None;
        }
        if was && !holds {
            tracing::warn!(member = %self.0.member, "leadership lost: this watcher stops delivering alerts (a standby takes over)");
        }
    }

    /// The election thread: polls the coordination group and renews the lease while partition 0 is held.
    fn elect(&self, c: BaseConsumer<Elect>, stop: &AtomicBool) {
        let renew_every = self.0.lease / 3;
        let mut last_renew: Option<Instant> = None;
        // When the lease was last renewed (a commit accepted), while partition 0 is held.
        let mut last_ok: Option<Instant> = None;
        let mut last_announce: Option<Instant> = None;
        let mut last_join = Instant::now();
        let mut leading = false;
        while !stop.load(Ordering::Relaxed) {
            // Nothing is produced to the coordination topic; polling serves the group's callbacks.
            if let Some(Err(e)) = c.poll(Duration::from_millis(100)) {
                tracing::debug!(error = %e, "leader election consumer");
            }
            let holds = c.assignment().map(|a| a.find_partition(&self.0.coordination_topic, 0).is_some()).unwrap_or(false);
            if !holds {
                self.set_holds(false);
                leading = false;
                last_ok = None;
                // The leader announces itself every lease. Silent longer than a session, it is dead or
                // cut off, and the coordinator should have moved partition 0; joining again makes it
                // rebalance now (tansu 0.6 expires a dead member only when another one joins; on Kafka
                // this merely hurries a rebalance that is due anyway).
                let heard = lock(&self.0.known).leader_heard;
                let silent = heard.map_or(last_join.elapsed(), |h| h.elapsed().min(last_join.elapsed()));
                if silent > self.0.session + self.0.lease {
                    tracing::warn!(member = %self.0.member, silent_for = %format!("{}s", silent.as_secs()), "no leader heard from; joining the coordination group again so that its partition is reassigned");
                    c.unsubscribe();
                    if let Err(e) = c.subscribe(&[&self.0.coordination_topic]) {
                        tracing::warn!(error = %e, "joining the coordination group again failed; retrying");
                    }
                    last_join = Instant::now();
                }
                continue;
            }
            if last_ok.is_some_and(|t| t.elapsed() > self.0.session) {
                // Not renewed for longer than a session (the process was stopped, or the coordinator
                // unreachable): the group has surely given partition 0 away, whatever librdkafka still
                // says. Whatever a broker would answer to a late commit, do not lead on: join again.
                tracing::warn!(member = %self.0.member, unrenewed_for = %format!("{}s", last_ok.map_or(0, |t| t.elapsed().as_secs())), "leadership lease lapsed for longer than the session; rejoining the coordination group");
                self.set_holds(false);
                leading = false;
                (last_renew, last_ok) = (None, None);
                c.unsubscribe();
                if let Err(e) = c.subscribe(&[&self.0.coordination_topic]) {
                    tracing::warn!(error = %e, "joining the coordination group again failed; retrying");
                }
                last_join = Instant::now();
                continue;
            }
            self.0.holds.store(true, Ordering::Release);
            if last_renew.is_some_and(|t| t.elapsed() < renew_every) {
                continue;
            }
            let sent = Instant::now();
            last_renew = Some(sent);
            let mut tpl = TopicPartitionList::new();
            let _ = tpl.add_partition_offset(&self.0.coordination_topic, 0, Offset::Offset(0));
            match c.commit(&tpl, CommitMode::Sync) {
                Ok(()) => {
                    last_ok = Some(sent);
                    *lock(&self.0.lease_until) = Some(sent + self.0.lease);
                    if leading && last_announce.is_some_and(|t| t.elapsed() >= self.0.lease) {
                        last_announce = Some(Instant::now());
                        let rec = DeliveryRecord::Leader { member: self.0.member.clone(), at: crate::timeutil::now_ms() };
                        let l = self.clone();
                        self.0.rt.spawn(async move { l.produce("leader", &rec).await });
                    }
                    if !leading {
                        leading = true;
                        last_announce = Some(Instant::now());
                        self.0.takeovers.fetch_add(1, Ordering::Relaxed);
                        lock(&self.0.known).leader = Some(self.0.member.clone());
                        tracing::warn!(member = %self.0.member, "this watcher is now the LEADER: it delivers alerts");
                        let rec = DeliveryRecord::Leader { member: self.0.member.clone(), at: crate::timeutil::now_ms() };
                        let l = self.clone();
                        self.0.rt.spawn(async move { l.produce("leader", &rec).await });
                    }
                }
                Err(e) => {
                    // Not renewed: the lease runs out on its own and the sender stops.
                    tracing::warn!(error = %e, "renewing the leadership lease failed (coordinator unreachable or this member expired)");
                }
            }
        }
        self.set_holds(false);
        tracing::info!(member = %self.0.member, "leaving the leader election");
        // Dropping the consumer leaves the group: a standby gets partition 0 at once.
        drop(c);
    }

    /// The deliveries reader: assigns every partition of the topic from its beginning and follows it.
    fn read(&self, c: BaseConsumer<Quiet>, stop: &AtomicBool) {
        let topic = self.0.deliveries_topic.clone();
        let mut assigned = 0usize;
        let mut at_end: HashSet<i32> = HashSet::new();
        let mut last_warn: Option<Instant> = None;
        let mut last_lag: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            if assigned > 0 && last_lag.is_none_or(|t| t.elapsed() >= LAG_EVERY) {
                last_lag = Some(Instant::now());
                // Unmeasurable (brokers unreachable) is shown as unknown, not as the last figure.
                self.0.lag.store(self.measure_lag(&c, &topic).unwrap_or(-1), Ordering::Relaxed);
            }
            if assigned == 0 {
                if let Ok(md) = c.fetch_metadata(Some(&topic), Duration::from_secs(5)) {
                    let parts: Vec<i32> =
                        md.topics().iter().filter(|t| t.name() == topic && t.error().is_none()).flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
                    let mut tpl = TopicPartitionList::new();
                    for p in &parts {
                        let _ = tpl.add_partition_offset(&topic, *p, Offset::Beginning);
                    }
                    if !parts.is_empty() && c.assign(&tpl).is_ok() {
                        assigned = parts.len();
                        tracing::info!(%topic, partitions = assigned, "reading the deliveries topic");
                        continue;
                    }
                }
                if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                    last_warn = Some(Instant::now());
                    tracing::warn!(%topic, "the deliveries topic is not there (yet); create it compacted (cleanup.policy=compact). Until it is read, a takeover may resend what was delivered");
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let Some(rec) = m.payload().and_then(|p| serde_json::from_slice::<DeliveryRecord>(p).ok()) else { continue };
                    self.learn(rec);
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                    if at_end.len() >= assigned && !self.0.caught_up.swap(true, Ordering::AcqRel) {
                        tracing::info!(%topic, "read the deliveries topic to its end");
                    }
                }
                Some(Err(e)) => tracing::debug!(error = %e, "deliveries topic consumer"),
                None => {}
            }
        }
    }

    /// Records between this reader's position and each partition's end, summed.
    fn measure_lag(&self, c: &BaseConsumer<Quiet>, topic: &str) -> Option<i64> {
        let pos = c.position().ok()?;
        let mut lag = 0i64;
        for e in pos.elements_for_topic(topic) {
            let (low, high) = c.fetch_watermarks(topic, e.partition(), Duration::from_secs(2)).ok()?;
            let at = match e.offset() {
                Offset::Offset(n) => n,
                // Nothing read yet from this partition.
                _ => low,
            };
            lag += (high - at).max(0);
        }
        Some(lag)
    }

    fn learn(&self, rec: DeliveryRecord) {
        let mut k = lock(&self.0.known);
        match rec {
            DeliveryRecord::Leader { member, .. } => {
                k.leader = Some(member);
                k.leader_heard = Some(Instant::now());
            }
            DeliveryRecord::Delivery { alert_id, channel, at, .. } => {
                k.seen(&alert_id).channels.insert(channel, at);
                k.fresh.insert(alert_id);
            }
            DeliveryRecord::Outcome { alert_id, outcome, .. } => {
                k.seen(&alert_id).outcome = Some(outcome);
                k.fresh.insert(alert_id);
            }
        }
    }
}

impl Known {
    /// The entry for `alert_id`, made if new (forgetting the oldest past [`REMEMBER_MAX`]).
    fn seen(&mut self, alert_id: &str) -> &mut Seen {
        if !self.marks.contains_key(alert_id) {
            self.next_generation += 1;
            self.order.push_back((alert_id.to_string(), self.next_generation));
            while self.order.len() > REMEMBER_MAX {
                if let Some((old, generation)) = self.order.pop_front() {
                    if self.marks.get(&old).is_some_and(|(g, _)| *g == generation) {
                        self.forget(&old);
                    }
                }
            }
        }
        let generation = self.next_generation;
        &mut self.marks.entry(alert_id.to_string()).or_insert_with(|| (generation, Seen::default())).1
    }

    fn forget(&mut self, alert_id: &str) {
        self.marks.remove(alert_id);
        self.fresh.remove(alert_id);
    }
}

/// The deliveries reader's context: partition ends are how it knows it caught up, not errors.
struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::warn!(facility = fac, "deliveries topic: librdkafka: {msg}")
            }
            _ => tracing::debug!(facility = fac, "deliveries topic: librdkafka: {msg}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if matches!(error, rdkafka::error::KafkaError::PartitionEOF(_)) || reason.contains("reached end of partition") {
            return;
        }
        tracing::warn!(%error, "deliveries topic: {reason}");
    }
}

impl ConsumerContext for Quiet {}

/// The election consumer's context: a revoke drops the leadership before librdkafka gives partition 0 up.
struct Elect(Arc<Inner>);

impl ClientContext for Elect {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::warn!(facility = fac, "leader election: librdkafka: {msg}")
            }
            _ => tracing::debug!(facility = fac, "leader election: librdkafka: {msg}"),
        }
    }
}

impl ConsumerContext for Elect {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Revoke(_) | Rebalance::Error(_)) {
            Leader(self.0.clone()).set_holds(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LeaderConfig {
        toml::from_str("group_id = \"g\"").unwrap()
    }

    #[test]
    fn defaults_validate_and_lease_must_fit_in_the_session() {
        let c = cfg();
        assert_eq!(
            (c.topic.as_str(), c.deliveries_topic.as_str(), c.lease, c.session_timeout),
            ("safeguard-leader", "safeguard-deliveries", Duration::from_secs(5), Duration::from_secs(10))
        );
        c.validate().unwrap();
        let e = LeaderConfig { lease: Duration::from_secs(8), ..cfg() }.validate().unwrap_err().to_string();
        assert!(e.contains("`lease`") && e.contains("8s") && e.contains("10s"), "{e}");
        let e = LeaderConfig { deliveries_topic: "safeguard-leader".into(), ..cfg() }.validate().unwrap_err().to_string();
        assert!(e.contains("`deliveries_topic`"), "{e}");
        let e = LeaderConfig { group_id: " ".into(), ..cfg() }.validate().unwrap_err().to_string();
        assert!(e.contains("`group_id`"), "{e}");
    }

    #[test]
    fn records_round_trip() {
        let r = DeliveryRecord::Delivery { alert_id: "a:deletion:1".into(), channel: "email".into(), at: 5, member: "m".into() };
        let t = serde_json::to_string(&r).unwrap();
        assert!(t.contains(r#""kind":"delivery""#), "{t}");
        assert_eq!(serde_json::from_str::<DeliveryRecord>(&t).unwrap(), r);
        let outcome = Outcome {
            state: Delivery::Suppressed,
            rule: Some(Rule::InstanceDeleted),
            severity: Some(Severity::Warning),
            verdict: None,
            error: None,
            error_at: None,
            attempts: 0,
            give_up_at: None,
            next_attempt_at: None,
            sent_at: None,
            email_sent_at: None,
            webhook_sent_at: None,
            at: 7,
        };
        // An outcome written by the previous release (fewer fields) still reads.
        let old = r#"{"kind":"outcome","alert_id":"a","state":"sent","at":3,"member":"m"}"#;
        assert!(matches!(
            serde_json::from_str::<DeliveryRecord>(old).unwrap(),
            DeliveryRecord::Outcome { outcome: Outcome { state: Delivery::Sent, at: 3, .. }, .. }
        ));
        let r = DeliveryRecord::Outcome { alert_id: "a:deletion:1".into(), outcome, member: "m".into() };
        let t = serde_json::to_string(&r).unwrap();
        assert!(t.contains(r#""kind":"outcome""#) && t.contains(r#""state":"suppressed""#), "{t}");
        assert_eq!(serde_json::from_str::<DeliveryRecord>(&t).unwrap(), r);
    }
}
