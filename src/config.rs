//! Configuration: a TOML file (`--config` / `SAFEGUARD_CONFIG`), every key optional, unknown keys rejected.
//! With no file at all, `safeguard watch` listens for syslog on 127.0.0.1:5514 and stores in ./var/safeguard.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::pipeline::EngineConfig;
use crate::state::risk::RiskRules;
use crate::state::Rules;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the config file {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration like \"2m\" or \"26h\": {e}")))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub store: StoreConfig,
    pub watch: WatchConfig,
    pub risk: RiskConfig,
    /// Where lines come from; empty means the embedded default syslog listener.
    pub sources: Vec<SourceConfig>,
    pub s3: Option<crate::s3::S3Config>,
}

impl Default for Config {
    fn default() -> Self {
        Config { store: StoreConfig::default(), watch: WatchConfig::default(), risk: RiskConfig::default(), sources: Vec::new(), s3: None }
    }
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
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            deletion_grace: Duration::from_secs(120),
            commit_interval: Duration::from_secs(1),
            commit_lines: 50_000,
            max_line_bytes: 64 * 1024,
            stats_interval: Duration::from_secs(60),
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
    Syslog { udp: Option<SocketAddr>, tcp: Option<SocketAddr> },
    /// A log file, followed across rotation when `follow` (the default).
    File { path: PathBuf, #[serde(default = "yes")] follow: bool },
    Stdin,
}

fn yes() -> bool {
    true
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
        }
    }

    pub fn risk_rules(&self) -> RiskRules {
        RiskRules {
            max_base_backup_age_ms: self.risk.max_base_backup_age.as_millis() as i64,
            wal_silence_ms: self.risk.wal_silence.as_millis() as i64,
        }
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
    fn unknown_keys_are_rejected_with_their_name() {
        let e = Config::parse("[watch]\ndeletion_grase = \"2m\"\n").unwrap_err();
        assert!(e.contains("deletion_grase"), "{e}");
        let e = Config::parse("[[sources]]\ntype = \"syslog\"\nudpp = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(e.contains("udpp"), "{e}");
        let e = Config::parse("[watch]\ndeletion_grace = \"soon\"\n").unwrap_err();
        assert!(e.contains("soon"), "{e}");
    }
}
