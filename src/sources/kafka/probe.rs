//! Kafka probes: a client with the source's own settings (TLS, SASL) that never joins the group, for
//! metadata, watermarks and committed offsets only. `safeguard doctor` runs [`check`] once;
//! the watcher's `/metrics` and `/readyz` read a [`WatermarkProbe`] that asks every few seconds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::config::{KafkaConfig, KafkaSourceError};
use super::position::lag;
use crate::sources::SourceId;

/// A librdkafka client context that keeps the last warning or error instead of logging it, so a check
/// can say why a broker did not answer ("Connection refused") rather than only that it timed out.
#[derive(Default)]
pub struct ProbeContext {
    last: Mutex<Option<String>>,
}

impl ProbeContext {
    pub fn last_problem(&self) -> Option<String> {
        self.last.lock().ok().and_then(|g| g.clone())
    }
}

impl ClientContext for ProbeContext {
    fn log(&self, level: RDKafkaLogLevel, _fac: &str, msg: &str) {
        use RDKafkaLogLevel::*;
        if matches!(level, Emerg | Alert | Critical | Error | Warning) {
            if let Ok(mut g) = self.last.lock() {
                *g = Some(msg.to_string());
            }
        }
    }
    fn error(&self, error: KafkaError, reason: &str) {
        if let Ok(mut g) = self.last.lock() {
            *g = Some(format!("{error}: {reason}"));
        }
    }
}

impl ConsumerContext for ProbeContext {}

/// A probe client of the source: its settings, `client.id` "safeguard-probe", never subscribed.
pub fn client(cfg: &KafkaConfig) -> Result<BaseConsumer<ProbeContext>, KafkaSourceError> {
    let mut c = cfg.client_config()?;
    c.set("client.id", "safeguard-probe");
    c.create_with_context(ProbeContext::default()).map_err(|e| KafkaSourceError::Client { reason: cfg.client.redact(&e.to_string()) })
}

/// One partition's watermarks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marks {
    pub topic: String,
    pub partition: i32,
    pub low: i64,
    pub high: i64,
}

/// The watermarks of every partition of `topics`, from one metadata request per topic and one
/// watermark request per partition. The error says which request failed and the broker's last word.
pub fn watermarks(c: &BaseConsumer<ProbeContext>, topics: &[String], timeout: Duration) -> Result<Vec<Marks>, String> {
    let mut out = Vec::new();
    for (topic, parts) in partitions(c, topics, timeout)? {
        for p in parts {
            let (low, high) = c.fetch_watermarks(&topic, p, timeout).map_err(|e| reason(c, &format!("watermarks of {topic}/{p}"), &e))?;
            out.push(Marks { topic: topic.clone(), partition: p, low, high });
        }
    }
    Ok(out)
}

/// The partitions of each of `topics`, from the brokers' metadata.
pub fn partitions(c: &BaseConsumer<ProbeContext>, topics: &[String], timeout: Duration) -> Result<Vec<(String, Vec<i32>)>, String> {
    let mut out = Vec::new();
    for topic in topics {
        let md = c.fetch_metadata(Some(topic), timeout).map_err(|e| reason(c, &format!("metadata for topic {topic}"), &e))?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            return Err(format!("the brokers' metadata does not mention topic {topic}"));
        };
        if let Some(err) = t.error() {
            let code = rdkafka::error::RDKafkaErrorCode::from(err);
            return Err(format!("topic {topic}: {code}"));
        }
        if t.partitions().is_empty() {
            return Err(format!("topic {topic} has no partitions"));
        }
        out.push((topic.clone(), t.partitions().iter().map(|p| p.id()).collect()));
    }
    Ok(out)
}

fn reason(c: &BaseConsumer<ProbeContext>, what: &str, e: &KafkaError) -> String {
    // Delivers queued error events to the context (no messages: the client never subscribes).
    let _ = c.poll(Duration::ZERO);
    match c.context().last_problem() {
        Some(last) => format!("{what} failed: {e} (last broker message: {last})"),
        None => format!("{what} failed: {e}"),
    }
}

/// Why [`check`] failed, and what the operator should do.
#[derive(Debug, Clone)]
pub struct CheckFailure {
    pub detail: String,
    pub hint: &'static str,
}

/// `safeguard doctor`'s Kafka check: metadata for the source's topics, then the group's committed
/// offsets (which needs the group coordinator), within about `timeout`. Ok is what was found.
pub fn check(cfg: &KafkaConfig, timeout: Duration) -> Result<String, CheckFailure> {
    let c = client(cfg).map_err(|e| CheckFailure { detail: e.to_string(), hint: "fix the Kafka source's settings in [[sources]]" })?;
    // Leave time for the coordinator step within the doctor's own bound.
    let step = (timeout / 3).max(Duration::from_secs(1));
    let parts = partitions(&c, &cfg.topics, step).map_err(|e| {
        let r = cfg.client.redact(&e);
        let hint = if r.contains("Unknown topic") || r.contains("does not mention") || r.contains("no partitions") {
            "create the topic, or fix `topics` to name the one the platform's syslog is shipped to"
        } else if r.contains("SASL") || r.contains("uthentication") || r.contains("SSL") {
            "check the source's `client` TLS/SASL settings (and SAFEGUARD_* secrets)"
        } else {
            "check `brokers` (host:port reachable from this host), the brokers' advertised listeners, and TLS/SASL settings"
        };
        CheckFailure { detail: r, hint }
    })?;
    let mut tpl = TopicPartitionList::new();
    let mut n = 0;
    for (topic, ps) in &parts {
        for p in ps {
            tpl.add_partition(topic, *p);
            n += 1;
        }
    }
    match c.committed_offsets(tpl, step) {
        Ok(committed) => {
            let with = committed.elements().iter().filter(|e| matches!(e.offset(), Offset::Offset(_))).count();
            let topics: Vec<String> = parts.iter().map(|(t, ps)| format!("{t} ({} partition(s))", ps.len())).collect();
            Ok(format!("metadata for {}; group {} coordinator answered: offsets committed for {with} of {n} partition(s)", topics.join(", "), cfg.group_id))
        }
        Err(e) => Err(CheckFailure {
            detail: cfg.client.redact(&reason(&c, &format!("fetching group {}'s committed offsets", cfg.group_id), &e)),
            hint:
                "the group coordinator did not answer: check the brokers' __consumer_offsets topic and that the credentials may use the group (ACL Group:READ)",
        }),
    }
}

/// What the last round of a [`WatermarkProbe`] found.
#[derive(Debug, Clone, Default)]
pub struct ProbeStatus {
    /// When the brokers last answered every watermark request.
    pub ok_at: Option<Instant>,
    /// Why the last round failed (secrets redacted); None after a round that succeeded.
    pub error: Option<String>,
    /// The watermarks from the last round that succeeded.
    pub marks: Vec<Marks>,
}

impl ProbeStatus {
    /// The brokers answered within `within`.
    pub fn fresh(&self, within: Duration) -> bool {
        self.ok_at.is_some_and(|t| t.elapsed() <= within)
    }

    /// Answered the last time, with no error since.
    pub fn up(&self) -> bool {
        self.error.is_none() && self.ok_at.is_some()
    }

    /// (topic, partition, lag) for every partition: the high watermark minus the position the store
    /// holds (`positions`, the store's committed positions by source).
    pub fn lags(&self, positions: &std::collections::BTreeMap<SourceId, u64>) -> Vec<(String, i32, i64)> {
        self.marks
            .iter()
            .map(|m| {
                let applied = positions.get(&SourceId::kafka(&m.topic, m.partition)).copied();
                (m.topic.clone(), m.partition, lag(m.low, m.high, applied))
            })
            .collect()
    }
}

/// A thread that asks a source's brokers for its topics' watermarks every `every`, with a probe client
/// of its own, until [`WatermarkProbe::stop`].
pub struct WatermarkProbe {
    /// The source, for labels and messages: its topics.
    pub label: String,
    status: Mutex<ProbeStatus>,
    stop: AtomicBool,
}

impl WatermarkProbe {
    pub fn spawn(cfg: &KafkaConfig, every: Duration) -> Arc<WatermarkProbe> {
        let probe = Arc::new(WatermarkProbe { label: cfg.topics.join(","), status: Mutex::new(ProbeStatus::default()), stop: AtomicBool::new(false) });
        let (p, cfg) = (probe.clone(), cfg.clone());
        let spawned = std::thread::Builder::new().name("kafka-probe".into()).spawn(move || p.run(&cfg, every));
        if let Err(e) = spawned {
            probe.set_error(format!("cannot start the Kafka probe thread: {e}"));
        }
        probe
    }

    fn set_error(&self, e: String) {
        self.status.lock().unwrap_or_else(|x| x.into_inner()).error = Some(e);
    }

    fn run(&self, cfg: &KafkaConfig, every: Duration) {
        let client = match client(cfg) {
            Ok(c) => c,
            Err(e) => return self.set_error(e.to_string()),
        };
        while !self.stop.load(Ordering::Relaxed) {
            // Drains librdkafka's event queue (errors, logs) so it does not grow while brokers are down.
            let _ = client.poll(Duration::ZERO);
            let res = watermarks(&client, &cfg.topics, Duration::from_secs(5));
            {
                let mut st = self.status.lock().unwrap_or_else(|x| x.into_inner());
                match res {
                    Ok(marks) => {
                        st.ok_at = Some(Instant::now());
                        st.error = None;
                        st.marks = marks;
                    }
                    Err(e) => st.error = Some(cfg.client.redact(&e)),
                }
            }
            let until = Instant::now() + every;
            while Instant::now() < until && !self.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    pub fn status(&self) -> ProbeStatus {
        self.status.lock().unwrap_or_else(|x| x.into_inner()).clone()
    }

    /// Ends the thread within its next pause.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
