//! `[heartbeat]`: pings a dead-man's-switch URL (healthchecks.io and the like) while the watcher is
//! healthy, so a watcher that crashed, hung or stopped committing is noticed by its silence. Each
//! `interval` the watcher asks itself what `/readyz` asks (the engine commits, the store answers, the
//! sources are up, Kafka brokers answer): ready, it requests `url`; not ready, `url` + `/fail` with the
//! reasons as the body, so the switch alerts at once instead of after its grace.

use std::time::Duration;

use serde::Deserialize;

/// `[heartbeat]` in the config.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// The check's ping URL, e.g. `https://hc-ping.com/<uuid>`.
    pub url: String,
    #[serde(default = "default_interval", deserialize_with = "crate::settings::duration")]
    pub interval: Duration,
    /// `GET` (the default) or `POST` (the body carries a one-line status).
    #[serde(default)]
    pub method: PingMethod,
    #[serde(default = "default_timeout", deserialize_with = "crate::settings::duration")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum PingMethod {
    #[default]
    Get,
    Post,
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl HeartbeatConfig {
    /// Checks what serde cannot; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        let u = self.url.trim();
        if !(u.starts_with("http://") || u.starts_with("https://")) || reqwest::Url::parse(u).is_err() {
            return Err("`heartbeat.url` must be an http:// or https:// URL (the dead-man's switch's ping URL)".into());
        }
        crate::settings::check_nonzero("heartbeat.interval", self.interval, "the heartbeat would ping in a busy loop")?;
        crate::settings::check_nonzero("heartbeat.timeout", self.timeout, "every ping would time out at once")
    }

    fn fail_url(&self) -> String {
        format!("{}/fail", self.url.trim().trim_end_matches('/'))
    }
}

/// Pings every `interval` as `ready` says, until the task is aborted.
pub async fn run(cfg: HeartbeatConfig, ready: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
    let client = match reqwest::Client::builder().timeout(cfg.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the heartbeat's HTTP client; no heartbeat will be sent");
            return;
        }
    };
    let mut iv = tokio::time::interval(cfg.interval);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        iv.tick().await;
        let (url, body) = match ready() {
            Ok(()) => (cfg.url.trim().to_string(), "safeguard watcher: ready".to_string()),
            Err(why) => {
                tracing::warn!(reasons = %why, "not ready: the heartbeat reports a failure");
                (cfg.fail_url(), crate::redact::text(&format!("safeguard watcher: not ready: {why}")))
            }
        };
        let req = match cfg.method {
            PingMethod::Get => client.get(&url),
            PingMethod::Post => client.post(&url).body(body),
        };
        match req.send().await.and_then(|r| r.error_for_status()) {
            Ok(_) => {
                metrics::gauge!("safeguard_heartbeat_last_ping_timestamp_seconds").set(crate::timeutil::now_ms() as f64 / 1000.0);
            }
            Err(e) => {
                metrics::counter!("safeguard_heartbeat_failures_total").increment(1);
                // The URL may carry the check's secret: the error names the host only.
                let host = e.url().and_then(|u| u.host_str()).unwrap_or("?").to_string();
                tracing::warn!(%host, error = %e.without_url(), "heartbeat ping failed; retrying at the next interval");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_checked_by_key() {
        let ok: HeartbeatConfig = toml::from_str("url = \"https://hc-ping.com/abc\"").unwrap();
        assert_eq!((ok.interval, ok.method, ok.timeout), (Duration::from_secs(60), PingMethod::Get, Duration::from_secs(10)));
        assert!(ok.validate().is_ok());
        assert_eq!(ok.fail_url(), "https://hc-ping.com/abc/fail");
        let bad: HeartbeatConfig = toml::from_str("url = \"hc-ping.com/abc\"").unwrap();
        assert!(bad.validate().unwrap_err().contains("heartbeat.url"));
        let zero: HeartbeatConfig = toml::from_str("url = \"http://x/\"\ninterval = \"0s\"").unwrap();
        assert!(zero.validate().unwrap_err().contains("heartbeat.interval"));
        assert!(toml::from_str::<HeartbeatConfig>("url = \"http://x/\"\nmethod = \"PUT\"").is_err());
    }
}
