//! `[[sources]] type = "kafka"`: the section, its checks, and the librdkafka client settings built from
//! it, the one place the config's fields become a client's (for the consumer and the probes alike).

use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use serde::Deserialize;

/// Offsets are committed to Kafka only after the store has flushed what they cover; the store's own
/// per-partition position decides where a restarted watcher resumes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`: a list, or one comma-separated string.
    #[serde(deserialize_with = "crate::settings::string_list")]
    pub brokers: Vec<String>,
    pub topics: Vec<String>,
    /// The consumer group. Give every store its own group: watchers sharing a group split the
    /// partitions between them, and each store would see only part of the platform.
    pub group_id: String,
    /// Where a partition starts when neither the store nor the group has a position for it:
    /// `earliest` (backfill what the topic retains, the default) or `latest` (a fresh deployment).
    #[serde(default)]
    pub start: KafkaStart,
    /// librdkafka settings passed through as they are (TLS, SASL, fetch sizes), e.g.
    /// `"security.protocol" = "SASL_SSL"`. Values of secret keys never appear in logs.
    #[serde(default)]
    pub client: KafkaClientSettings,
    /// A watcher that stops without leaving the group (a crash) holds its partitions this long.
    #[serde(default = "default_session_timeout", deserialize_with = "session_timeout")]
    pub session_timeout: Duration,
}

fn session_timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    crate::settings::duration_named(d, "session_timeout")
}

fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}

/// librdkafka's bound on `session.timeout.ms`.
const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KafkaStart {
    #[default]
    Earliest,
    Latest,
}

/// librdkafka passthrough settings. Its `Debug` hides the values of secret keys, so a config printed
/// into a log or an error never carries a password.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct KafkaClientSettings(pub std::collections::BTreeMap<String, String>);

impl KafkaClientSettings {
    /// Whether a librdkafka setting holds a secret (passwords, SASL JAAS config, private keys).
    pub fn is_secret(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        ["password", "secret", "sasl.jaas", "key.pem", "oauthbearer.config"].iter().any(|s| k.contains(s))
    }

    /// `text` with every secret value replaced, for error messages that may quote a value.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (k, v) in &self.0 {
            if Self::is_secret(k) && !v.is_empty() {
                out = out.replace(v.as_str(), "***");
            }
        }
        out
    }
}

impl std::fmt::Debug for KafkaClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(k, v)| (k, if Self::is_secret(k) { "***" } else { v.as_str() }))).finish()
    }
}

/// Settings managed by safeguard; setting them under `client` would break its guarantees.
const RESERVED: [(&str, &str); 8] = [
    ("bootstrap.servers", "use `brokers`"),
    ("metadata.broker.list", "use `brokers`"),
    ("group.id", "use `group_id`"),
    ("enable.auto.commit", "offsets are committed only after the store has flushed"),
    ("enable.auto.offset.store", "offsets are committed only after the store has flushed"),
    ("auto.offset.reset", "use `start`"),
    ("session.timeout.ms", "use `session_timeout`"),
    ("enable.partition.eof", "safeguard tracks partition ends itself"),
];

/// What can go wrong setting up a Kafka client; every message says which setting or call, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("kafka source: `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
    #[error("kafka source: client setting \"{key}\" is managed by safeguard ({why}); remove it from the source's `client` table")]
    Reserved { key: String, why: &'static str },
    #[error("kafka source: librdkafka rejected the settings: {reason}; check the source's `client` table")]
    Client { reason: String },
    #[error("kafka source: cannot subscribe to {topics}: {reason}; check `topics` and that the credentials may read them")]
    Subscribe { topics: String, reason: String },
    #[error("kafka source: cannot start the consumer thread: {0}; the host is out of threads or memory")]
    Thread(std::io::Error),
}

impl KafkaConfig {
    /// Checks what serde cannot (at load, and again before a client is made).
    pub fn validate(&self) -> Result<(), KafkaSourceError> {
        let invalid = |key, problem: &str| Err(KafkaSourceError::Invalid { key, problem: problem.to_string() });
        if self.brokers.is_empty() {
            return invalid("brokers", "is empty; list at least one host:port");
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return invalid("topics", "is empty; name the topic(s) the platform's syslog is shipped to");
        }
        if self.group_id.trim().is_empty() {
            return invalid("group_id", "is empty; give this watcher's store its own consumer group");
        }
        let shown = humantime::format_duration(self.session_timeout);
        if self.session_timeout.as_millis() == 0 || self.session_timeout > MAX_SESSION_TIMEOUT {
            return Err(KafkaSourceError::Invalid {
                key: "session_timeout",
                problem: format!("= \"{shown}\" is out of range: librdkafka takes 1ms to 1h (a few seconds is usual, default 10s)"),
            });
        }
        if let Some((k, why)) = self.client.0.keys().find_map(|k| RESERVED.iter().find(|(r, _)| r == k).map(|(_, why)| (k, *why))) {
            return Err(KafkaSourceError::Reserved { key: k.clone(), why });
        }
        Ok(())
    }

    /// The librdkafka configuration of a consumer of this source (`client.id` "safeguard").
    pub fn client_config(&self) -> Result<ClientConfig, KafkaSourceError> {
        self.validate()?;
        let session_ms = self.session_timeout.as_millis().max(1) as u64;
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","))
            .set("group.id", &self.group_id)
            .set("client.id", "safeguard")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // Only reached when a position is out of range (retention deleted it, or the log restarted):
            // read what is left rather than skip to the end. `start` is applied at assignment instead.
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", session_ms.to_string())
            .set("heartbeat.interval.ms", (session_ms / 3).clamp(1, 3000).to_string())
            // A topic created (or recreated) while the watcher runs is picked up within this.
            .set("topic.metadata.refresh.interval.ms", "10000");
        for (k, v) in &self.client.0 {
            c.set(k, v);
        }
        c.set_log_level(RDKafkaLogLevel::Warning);
        Ok(c)
    }

    /// `brokers ..., topics ..., group ...`: what a check or a log line names (never credentials).
    pub fn target(&self) -> String {
        format!("brokers {}, topics {}, group {}", self.brokers.join(","), self.topics.join(","), self.group_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> KafkaConfig {
        KafkaConfig {
            brokers: vec!["127.0.0.1:9".into()],
            topics: vec!["t".into()],
            group_id: "g".into(),
            start: KafkaStart::Earliest,
            client: KafkaClientSettings::default(),
            session_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn reserved_settings_are_refused_with_the_key() {
        let mut s = cfg();
        s.client.0.insert("enable.auto.commit".into(), "true".into());
        let e = s.client_config().unwrap_err().to_string();
        assert!(e.contains("enable.auto.commit") && e.contains("store has flushed"), "{e}");
    }

    #[test]
    fn empty_and_out_of_range_settings_name_their_key() {
        let e = KafkaConfig { brokers: vec![], ..cfg() }.validate().unwrap_err().to_string();
        assert!(e.contains("`brokers`"), "{e}");
        let e = KafkaConfig { group_id: " ".into(), ..cfg() }.validate().unwrap_err().to_string();
        assert!(e.contains("`group_id`"), "{e}");
        for d in [Duration::ZERO, Duration::from_secs(7200)] {
            let e = KafkaConfig { session_timeout: d, ..cfg() }.validate().unwrap_err().to_string();
            assert!(e.contains("`session_timeout`") && e.contains(&humantime::format_duration(d).to_string()), "{e}");
        }
        cfg().validate().unwrap();
    }
}
