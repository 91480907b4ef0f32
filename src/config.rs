//! Configuration: a TOML file (`--config` / `SAFEGUARD_CONFIG`), every key optional, unknown keys rejected.
//! With no file at all, `safeguard watch` listens for syslog on 127.0.0.1:5514 and stores in ./var/safeguard.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::engine::pipeline::EngineConfig;
use crate::state::risk::RiskRules;
use crate::state::Rules;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the config file {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Deserializes a humantime duration (`"2m"`, `"26h"`); shared by every config section.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration like \"2m\" or \"26h\": {e}")))
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub store: StoreConfig,
    pub watch: WatchConfig,
    pub risk: RiskConfig,
    /// Where lines come from; empty means the embedded default syslog listener.
    pub sources: Vec<SourceConfig>,
    pub s3: Option<crate::adapters::s3::S3Config>,
    /// Deletion and at-risk alerts (email, webhook); none without this section.
    pub alerts: Option<crate::alerts::AlertsConfig>,
    pub recover: crate::recover::RecoverConfig,
    pub platform: crate::adapters::platform::PlatformConfig,
    pub etcd: Option<crate::adapters::etcd::EtcdConfig>,
    pub cloud_controller: Option<crate::adapters::platform::cloud_controller::CloudControllerConfig>,
    /// The health and metrics endpoint; off without this section.
    pub http: Option<crate::adapters::http::HttpConfig>,
    /// What `safeguard doctor` needs beyond the rest (the S3 prefix to list, the etcd key to read).
    pub doctor: crate::doctor::DoctorConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub path: Option<PathBuf>,
    /// sled's page cache; bounds the watcher's memory.
    pub cache_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { path: None, cache_mb: 64 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// A node added again within this long cancels a deletion (recreate, plan change).
    #[serde(deserialize_with = "duration")]
    pub deletion_grace: Duration,
    /// Longest time between store commits while lines arrive.
    #[serde(deserialize_with = "duration")]
    pub commit_interval: Duration,
    /// Most lines between store commits.
    pub commit_lines: u64,
    pub max_line_bytes: usize,
    /// How often the watcher logs its counters.
    #[serde(deserialize_with = "duration")]
    pub stats_interval: Duration,
    /// Most lines kept waiting for their instance (a container's line before the line that names its
    /// instance); past it the oldest is given up and counted unattributed.
    pub parked_max: usize,
    /// How long (wall clock) a parked line waits for its instance before it is given up.
    #[serde(deserialize_with = "duration")]
    pub parked_ttl: Duration,
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
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskConfig {
    #[serde(deserialize_with = "duration")]
    pub max_base_backup_age: Duration,
    #[serde(deserialize_with = "duration")]
    pub wal_silence: Duration,
}

impl Default for RiskConfig {
    fn default() -> Self {
        RiskConfig { max_base_backup_age: Duration::from_secs(26 * 3600), wal_silence: Duration::from_secs(6 * 3600) }
    }
}

pub const DEFAULT_SYSLOG: &str = "127.0.0.1:5514";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Local syslog listener; either address may be left out to disable that protocol.
    Syslog {
        udp: Option<SocketAddr>,
        tcp: Option<SocketAddr>,
    },
    /// A log file, followed across rotation when `follow` (the default).
    File {
        path: PathBuf,
        #[serde(default = "yes")]
        follow: bool,
    },
    Stdin,
    /// Kafka topics carrying the platform's syslog, one syslog message per record (see docs/kafka.md).
    /// Offsets are committed to Kafka only after the store has flushed what they cover; the store's
    /// own per-partition position decides where a restarted watcher resumes.
    Kafka {
        /// Bootstrap brokers, `host:port`: a list, or one comma-separated string.
        #[serde(deserialize_with = "string_list")]
        brokers: Vec<String>,
        topics: Vec<String>,
        /// The consumer group. Give every store its own group: watchers sharing a group split the
        /// partitions between them, and each store would see only part of the platform.
        group_id: String,
        /// Where a partition starts when neither the store nor the group has a position for it:
        /// `earliest` (backfill what the topic retains, the default) or `latest` (a fresh deployment).
        #[serde(default)]
        start: KafkaStart,
        /// librdkafka settings passed through as they are (TLS, SASL, fetch sizes), e.g.
        /// `"security.protocol" = "SASL_SSL"`. Values of secret keys never appear in logs.
        #[serde(default)]
        client: KafkaClientSettings,
        /// A watcher that stops without leaving the group (a crash) holds its partitions this long.
        #[serde(default = "kafka_session_timeout", deserialize_with = "duration")]
        session_timeout: Duration,
    },
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KafkaStart {
    #[default]
    Earliest,
    Latest,
}

fn kafka_session_timeout() -> Duration {
    Duration::from_secs(10)
}

fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let v = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect(),
        OneOrMany::Many(v) => v,
    };
    Ok(v)
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

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid { path: path.to_path_buf(), message })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub fn sources(&self) -> Vec<SourceConfig> {
        if self.sources.is_empty() {
            let a: SocketAddr = DEFAULT_SYSLOG.parse().expect("static address");
            vec![SourceConfig::Syslog { udp: Some(a), tcp: Some(a) }]
        } else {
            self.sources.clone()
        }
    }

    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            rules: Rules { deletion_grace_ms: self.watch.deletion_grace.as_millis() as i64, ..Rules::default() },
            max_line_bytes: self.watch.max_line_bytes,
            alerts: self.alerts.clone(),
            parked_max: self.watch.parked_max,
            parked_ttl_ms: i64::try_from(self.watch.parked_ttl.as_millis()).unwrap_or(i64::MAX),
        }
    }

    pub fn risk_rules(&self) -> RiskRules {
        RiskRules { max_base_backup_age_ms: self.risk.max_base_backup_age.as_millis() as i64, wal_silence_ms: self.risk.wal_silence.as_millis() as i64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/safeguard.toml")).unwrap();
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.watch.deletion_grace, Duration::from_secs(120));
        assert!(!c.sources().is_empty());
    }

    #[test]
    fn the_commented_alerts_example_parses_when_uncommented() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/safeguard.toml")).unwrap();
        let start = text.find("# [alerts]\n").unwrap();
        let block: String =
            text[start..].lines().take_while(|l| l.starts_with('#')).map(|l| l.trim_start_matches('#').trim_start_matches(' ').to_string() + "\n").collect();
        let c = Config::parse(&block).unwrap_or_else(|e| panic!("{e}\n{block}"));
        let a = c.alerts.unwrap();
        assert_eq!(a.backfill_window, Duration::from_secs(7 * 86_400));
        assert_eq!(a.email.unwrap().to_critical.len(), 2);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = Config::parse("[watch]\ndeletion_grase = \"2m\"\n").unwrap_err();
        assert!(e.contains("deletion_grase"), "{e}");
        let e = Config::parse("[[sources]]\ntype = \"syslog\"\nudpp = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(e.contains("udpp"), "{e}");
        let e = Config::parse("[watch]\ndeletion_grace = \"soon\"\n").unwrap_err();
        assert!(e.contains("soon"), "{e}");
    }

    #[test]
    fn commented_kafka_example_parses_when_uncommented() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/safeguard.toml")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let at = lines.iter().position(|l| l.trim() == "# type = \"kafka\"").expect("a kafka example in config/safeguard.toml");
        let block: Vec<&str> = lines[at - 1..].iter().take_while(|l| !l.trim().is_empty()).map(|l| l.strip_prefix("# ").unwrap_or(l)).collect();
        let c = Config::parse(&block.join("\n")).unwrap_or_else(|e| panic!("{e}\n{}", block.join("\n")));
        assert!(matches!(&c.sources[0], SourceConfig::Kafka { client, .. } if client.0.contains_key("sasl.password")));
    }

    #[test]
    fn kafka_source_parses_and_hides_secrets() {
        let text = r#"
[[sources]]
type = "kafka"
brokers = "k1:9092, k2:9092"
topics = ["platform-syslog"]
group_id = "safeguard-prod"
start = "latest"
session_timeout = "15s"
[sources.client]
"security.protocol" = "SASL_SSL"
"sasl.mechanisms" = "SCRAM-SHA-512"
"sasl.username" = "safeguard"
"sasl.password" = "hunter2"
"#;
        let c = Config::parse(text).unwrap();
        let SourceConfig::Kafka { brokers, start, session_timeout, client, .. } = &c.sources[0] else { panic!("{:?}", c.sources) };
        assert_eq!(brokers, &["k1:9092", "k2:9092"]);
        assert_eq!(*start, KafkaStart::Latest);
        assert_eq!(*session_timeout, Duration::from_secs(15));
        let shown = format!("{:?}", c.sources);
        assert!(!shown.contains("hunter2") && shown.contains("sasl.username") && shown.contains("SCRAM-SHA-512"), "{shown}");
        assert_eq!(client.redact("bad value hunter2 for sasl.password"), "bad value *** for sasl.password");
        let e = Config::parse("[[sources]]\ntype = \"kafka\"\nbrokers = [\"k:1\"]\ntopics = [\"t\"]\ngroup_id = \"g\"\ngroupid = \"x\"\n").unwrap_err();
        assert!(e.contains("groupid"), "{e}");
        let e = Config::parse("[[sources]]\ntype = \"kafka\"\nbrokers = [\"k:1\"]\ntopics = [\"t\"]\ngroup_id = \"g\"\nstart = \"beginning\"\n").unwrap_err();
        assert!(e.contains("beginning"), "{e}");
    }
}
