//! Configuration: a TOML file (`--config` / `SAFEGUARD_CONFIG`), every key optional, unknown keys rejected.
//! With no file at all, `safeguard watch` listens for syslog on 127.0.0.1:5514 and stores in ./var/safeguard.
//!
//! Each section belongs to the component it configures and is defined, defaulted and validated there
//! (`[watch]` in `engine::watch`, `[[sources]]` in `sources` with each kind of source in its own
//! module, `[http]` in `engine::http`, ...). This module only composes them, checks them all at
//! load, and hands each part to whatever starts it; no component imports it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::adapters::etcd::EtcdConfig;
use crate::adapters::platform::cloud_controller::CloudControllerConfig;
use crate::adapters::platform::PlatformConfig;
use crate::adapters::s3::S3Config;
use crate::alerts::AlertsConfig;
use crate::app::doctor::{DoctorConfig, Targets};
use crate::engine::http::HttpConfig;
use crate::engine::pipeline::EngineConfig;
use crate::engine::watch::Setup;
use crate::recover::RecoverConfig;
use crate::state::risk::RiskRules;

pub use crate::engine::watch::WatchConfig;
pub use crate::settings::duration;
pub use crate::sources::kafka::{KafkaClientSettings, KafkaConfig, KafkaStart};
pub use crate::sources::syslog::{SyslogConfig, DEFAULT_SYSLOG};
pub use crate::sources::{FileConfig, SourceConfig};
pub use crate::store::query::RiskConfig;
pub use crate::store::StoreConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the config file {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub store: StoreConfig,
    pub watch: WatchConfig,
    pub risk: RiskConfig,
    /// Where lines come from; empty means the embedded default syslog listener.
    pub sources: Vec<SourceConfig>,
    pub s3: Option<S3Config>,
    /// Deletion and at-risk alerts (email, webhook); none without this section.
    pub alerts: Option<AlertsConfig>,
    pub recover: RecoverConfig,
    pub platform: PlatformConfig,
    pub etcd: Option<EtcdConfig>,
    pub cloud_controller: Option<CloudControllerConfig>,
    /// The health and metrics endpoint; off without this section.
    pub http: Option<HttpConfig>,
    /// `report deleted`'s price and listing concurrency.
    pub report: crate::app::cost::ReportConfig,
    /// A dead-man's switch pinged while the watcher is ready; off without this section.
    pub heartbeat: Option<crate::engine::heartbeat::HeartbeatConfig>,
    /// The watcher backs its store up to the object store (`[s3]` gives the endpoint); off without it.
    pub backup: Option<crate::store::backup::BackupConfig>,
    /// A standby that takes over: leader election through Kafka, leader-only delivery; off without it.
    pub leader: Option<crate::sources::kafka::leader::LeaderConfig>,
    /// What `safeguard doctor` needs beyond the rest (the S3 prefix to list, the etcd key to read).
    pub doctor: DoctorConfig,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid { path: path.to_path_buf(), message })
    }

    /// Parses and validates every section: a config that loads is one the watcher can start with.
    pub fn parse(text: &str) -> Result<Config, String> {
        let mut c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        for s in &mut c.sources {
            if let SourceConfig::Kafka(k) = s {
                k.group_id = crate::settings::expand_hostname(&k.group_id);
            }
        }
        if let Some(to) = c.backup.as_mut().and_then(|b| b.to.as_mut()) {
            *to = crate::settings::expand_hostname(to);
        }
        c.validate()?;
        Ok(c)
    }

    /// Each section's own checks, then what spans sections. Errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        self.store.validate()?;
        self.watch.validate()?;
        for (i, s) in self.sources.iter().enumerate() {
            s.validate().map_err(|e| format!("sources[{i}] (type = \"{}\"): {e}", s.kind()))?;
        }
        if let Some(a) = &self.alerts {
            a.validate()?;
        }
        if let Some(s3) = &self.s3 {
            s3.timeout_duration().map_err(|e| e.to_string())?;
        }
        if let Some(e) = &self.etcd {
            e.validate()?;
        }
        if let Some(h) = &self.heartbeat {
            h.validate()?;
        }
        if let Some(b) = &self.backup {
            b.validate()?;
        }
        if let Some(l) = &self.leader {
            l.validate().map_err(|e| e.to_string())?;
            if l.brokers.is_empty() && !self.sources.iter().any(|s| matches!(s, SourceConfig::Kafka(_))) {
                return Err("[leader]: `brokers` is empty and there is no kafka source to take them from; list the brokers".into());
            }
        }
        self.report.validate()?;
        if let Some(cc) = &self.cloud_controller {
            cc.validate()?;
        }
        self.platform.validate()
    }

    pub fn sources(&self) -> Vec<SourceConfig> {
        if self.sources.is_empty() {
            vec![SourceConfig::Syslog(SyslogConfig::default_listener())]
        } else {
            self.sources.clone()
        }
    }

    pub fn engine(&self) -> EngineConfig {
        EngineConfig { risk: self.risk_rules(), ..self.watch.engine(self.alerts.clone()) }
    }

    pub fn risk_rules(&self) -> RiskRules {
        self.risk.rules()
    }

    /// What `safeguard watch` starts.
    pub fn watch_setup(&self) -> Setup {
        Setup {
            watch: self.watch.clone(),
            engine: self.engine(),
            sources: self.sources(),
            http: self.http.clone(),
            alerts: self.alerts.clone(),
            s3: self.s3.clone(),
            risk: self.risk_rules(),
            recoveries: None,
            heartbeat: self.heartbeat.clone(),
            backup: self.backup.clone(),
            leader: self.leader(),
        }
    }

    /// `[leader]` with its defaults filled in: without `brokers`, the first kafka source's brokers and
    /// client settings.
    pub fn leader(&self) -> Option<crate::sources::kafka::leader::LeaderConfig> {
        let mut l = self.leader.clone()?;
        if l.brokers.is_empty() {
            if let Some(k) = self.sources.iter().find_map(|s| if let SourceConfig::Kafka(k) = s { Some(k) } else { None }) {
                l.brokers = k.brokers.clone();
                if l.client.0.is_empty() {
                    l.client = k.client.clone();
                }
            }
        }
        Some(l)
    }

    /// What `safeguard doctor` checks.
    pub fn doctor_targets(&self) -> Targets {
        Targets {
            kafka: self.sources.iter().filter_map(|s| if let SourceConfig::Kafka(k) = s { Some(k.clone()) } else { None }).collect(),
            s3: self.s3.clone(),
            etcd: self.etcd.clone(),
            email: self.alerts.as_ref().and_then(|a| a.email.clone()),
            webhook: self.alerts.as_ref().and_then(|a| a.webhook.clone()),
            cloud_controller: self.cloud_controller.clone(),
            http: self.http.clone(),
            leader: self.leader(),
            doctor: self.doctor.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn hostname_in_a_group_id_becomes_the_host_name() {
        let c = Config::parse("[[sources]]\ntype = \"kafka\"\nbrokers = \"k:1\"\ntopics = [\"t\"]\ngroup_id = \"sg-{hostname}\"\n").unwrap();
        let SourceConfig::Kafka(k) = &c.sources[0] else { panic!() };
        assert_eq!(k.group_id, format!("sg-{}", crate::settings::hostname()));
        assert!(!k.group_id.contains('{'));
    }

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
        let d = a.digest.unwrap();
        assert_eq!((d.at.as_str(), d.timezone.as_str()), ("08:00", "Europe/Berlin"));
    }

    #[test]
    fn the_digest_time_and_zone_are_checked_at_load_naming_the_key() {
        for (text, key) in [
            ("[alerts.digest]\nat = \"24:00\"\n", "`alerts.digest.at` = \"24:00\""),
            ("[alerts.digest]\nat = \"8h\"\n", "`alerts.digest.at` = \"8h\""),
            ("[alerts.digest]\nat = \"08:00\"\ntimezone = \"Europe/Paris2\"\n", "`alerts.digest.timezone` = \"Europe/Paris2\""),
            ("[alerts.digest]\nat = \"08:00\"\ntimezone = \"+15:00\"\n", "`alerts.digest.timezone` = \"+15:00\""),
        ] {
            let e = Config::parse(text).unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
        }
        let e = Config::parse("[alerts.digest]\ntimezone = \"UTC\"\n").unwrap_err();
        assert!(e.contains("at"), "{e}");
        let c = Config::parse("[alerts.digest]\nat = \"7:30\"\n").unwrap();
        assert_eq!(c.alerts.unwrap().digest.unwrap().timezone, "UTC");
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
        assert!(matches!(&c.sources[0], SourceConfig::Kafka(k) if k.client.0.contains_key("sasl.password")));
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
        let SourceConfig::Kafka(KafkaConfig { brokers, start, session_timeout, client, .. }) = &c.sources[0] else { panic!("{:?}", c.sources) };
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

    #[test]
    fn optional_sections_are_off_by_default() {
        let c = Config::parse("").unwrap();
        assert!(c.http.is_none() && c.alerts.is_none() && c.s3.is_none() && c.etcd.is_none());
        assert_eq!(c.sources(), vec![SourceConfig::Syslog(SyslogConfig::default_listener())]);
        assert_eq!(Config::parse("[http]\n").unwrap().http.unwrap().listen, crate::engine::http::DEFAULT_LISTEN.parse().unwrap());
    }

    #[test]
    fn zero_durations_that_would_stop_work_are_rejected_with_the_key() {
        for (text, key) in [
            ("[watch]\ncommit_interval = \"0s\"\n", "watch.commit_interval"),
            ("[watch]\nstats_interval = \"0ms\"\n", "watch.stats_interval"),
            ("[alerts]\nabsence_scan_interval = \"0s\"\n", "alerts.absence_scan_interval"),
            ("[alerts]\nretention = \"0s\"\n", "alerts.retention"),
            ("[alerts.webhook]\nurl = \"http://127.0.0.1:1/\"\ntimeout = \"0s\"\n", "alerts.webhook.timeout"),
            ("[s3]\ntimeout = \"0s\"\n", "s3.timeout"),
            ("[etcd]\ntimeout = \"0s\"\n", "etcd.timeout"),
            ("[cloud_controller]\napi_url = \"https://api.x\"\npoll_interval = \"0s\"\n", "cloud_controller.poll_interval"),
            ("[platform.commands]\ntimeout = \"0s\"\n", "platform.commands.timeout"),
            ("[platform.docker]\ntimeout = \"0s\"\n", "platform.docker.timeout"),
            ("[[sources]]\ntype = \"kafka\"\nbrokers = \"k:1\"\ntopics = [\"t\"]\ngroup_id = \"g\"\nsession_timeout = \"0s\"\n", "session_timeout"),
        ] {
            let e = Config::parse(text).unwrap_err();
            assert!(e.contains(key) && e.contains("\"0s\""), "{key}: {e}");
        }
        // Zero where it means something: no grace, give parked lines up at once.
        let c = Config::parse("[watch]\ndeletion_grace = \"0s\"\nparked_ttl = \"0s\"\n").unwrap();
        assert_eq!(c.engine().rules.deletion_grace_ms, 0);
    }

    #[test]
    fn overflowing_and_unparseable_durations_are_rejected_with_the_key_and_value() {
        for (text, key, value) in [
            ("[watch]\ndeletion_grace = \"600000000000y\"\n", "deletion_grace", "600000000000y"),
            ("[watch]\nparked_ttl = \"200y\"\n", "parked_ttl", "200y"),
            ("[risk]\nwal_silence = \"18446744073709551615s\"\n", "wal_silence", "18446744073709551615s"),
            ("[alerts]\ngive_up_after = \"soon\"\n", "give_up_after", "soon"),
            ("[[sources]]\ntype = \"kafka\"\nbrokers = \"k:1\"\ntopics = [\"t\"]\ngroup_id = \"g\"\nsession_timeout = \"2h\"\n", "session_timeout", "2h"),
            ("[[sources]]\ntype = \"kafka\"\nbrokers = \"k:1\"\ntopics = [\"t\"]\ngroup_id = \"g\"\nsession_timeout = \"soon\"\n", "session_timeout", "soon"),
        ] {
            let e = Config::parse(text).unwrap_err();
            assert!(e.contains(key) && e.contains(value), "{key}: {e}");
        }
    }

    #[test]
    fn kafka_settings_that_cannot_work_fail_at_load_naming_the_source_and_key() {
        let e =
            Config::parse("[[sources]]\ntype = \"syslog\"\n\n[[sources]]\ntype = \"kafka\"\nbrokers = []\ntopics = [\"t\"]\ngroup_id = \"g\"\n").unwrap_err();
        assert!(e.contains("sources[1]") && e.contains("`brokers`"), "{e}");
        let e = Config::parse("[[sources]]\ntype = \"kafka\"\nbrokers = \"k:1\"\ntopics = [\"t\"]\ngroup_id = \"g\"\n[sources.client]\n\"group.id\" = \"x\"\n")
            .unwrap_err();
        assert!(e.contains("group.id") && e.contains("group_id"), "{e}");
    }

    /// A config file written for the release before each component owned its section: every key and
    /// value as it was, loading to the same settings.
    #[test]
    fn a_config_file_of_the_previous_layout_loads_unchanged() {
        let text = r#"
[store]
path = "/var/lib/safeguard"
cache_mb = 128

[watch]
deletion_grace = "5m"
commit_interval = "500ms"
commit_lines = 10000
max_line_bytes = 32768
stats_interval = "2m"
parked_max = 5000
parked_ttl = "3d"

[risk]
max_base_backup_age = "30h"
wal_silence = "8h"

[[sources]]
type = "syslog"
udp = "0.0.0.0:5514"
tcp = "0.0.0.0:5514"

[[sources]]
type = "file"
path = "/var/log/platform.log"

[[sources]]
type = "file"
path = "/var/log/old.log"
follow = false

[[sources]]
type = "stdin"

[[sources]]
type = "kafka"
brokers = ["k1:9092", "k2:9092"]
topics = ["platform-syslog"]
group_id = "safeguard-prod"
start = "earliest"
session_timeout = "6s"
[sources.client]
"fetch.max.bytes" = "1048576"

[s3]
endpoint = "http://127.0.0.1:9000"
region = "us-east-1"
timeout = "20s"

[alerts]
backfill_window = "7d"
give_up_after = "1d"
max_retry_interval = "5m"
absence_scan_interval = "5m"
[alerts.rules]
max_base_backup_age = "26h"
[alerts.webhook]
url = "http://127.0.0.1:1/hook"
timeout = "10s"

[etcd]
url = "http://127.0.0.1:4001"
timeout = "10s"

[http]
listen = "127.0.0.1:9187"

[doctor]
s3_prefix = "s3://backups/"
etcd_key = "/service"
"#;
        let c = Config::parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.store.cache_mb, 128);
        assert_eq!(c.watch.deletion_grace, std::time::Duration::from_secs(300));
        assert_eq!(c.watch.commit_interval, std::time::Duration::from_millis(500));
        assert_eq!(c.watch.parked_ttl, std::time::Duration::from_secs(3 * 86_400));
        assert_eq!(c.risk_rules().max_base_backup_age_ms, 30 * 3_600_000);
        let kinds: Vec<&str> = c.sources.iter().map(SourceConfig::kind).collect();
        assert_eq!(kinds, ["syslog", "file", "file", "stdin", "kafka"]);
        assert!(matches!(&c.sources[1], SourceConfig::File(FileConfig { follow: true, .. })));
        assert!(matches!(&c.sources[2], SourceConfig::File(FileConfig { follow: false, .. })));
        let SourceConfig::Kafka(k) = &c.sources[4] else { panic!() };
        assert_eq!((k.session_timeout, k.start, k.brokers.len()), (std::time::Duration::from_secs(6), KafkaStart::Earliest, 2));
        assert_eq!(c.doctor_targets().kafka, vec![k.clone()]);
        assert_eq!(c.alerts.unwrap().webhook.unwrap().timeout, std::time::Duration::from_secs(10));
        assert_eq!(c.s3.unwrap().timeout, std::time::Duration::from_secs(20));
        assert_eq!(c.etcd.unwrap().timeout, std::time::Duration::from_secs(10));
    }
}
