//! The platform's etcd, spoken to over its v2 HTTP API (`/v2/keys/...`), for the one thing recovery
//! needs: deleting the new instance's Patroni `initialize` and `optime/leader` keys so that its container
//! restores from the copied WAL-E backups instead of starting a new cluster.
//!
//! Absent keys are not an error: the answer says which keys were deleted and which were already gone.
//! The password never appears in `Debug`, serialized config or error text, and neither does one written
//! into `url` (`http://root:pw@...`): the client holds the URL as a [`SecretUrl`], shown redacted.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::redact::SecretUrl;

/// `[etcd]` in the configuration file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// The etcd client URL the platform's routers and containers use, e.g. `http://10.58.111.149:4001`.
    /// Credentials in it are used, and shown only redacted.
    #[serde(serialize_with = "crate::redact::serialize_url")]
    pub url: String,
    /// Basic-auth user, when the cluster has authentication enabled.
    pub username: Option<String>,
    /// Never serialized, never printed.
    #[serde(skip_serializing)]
    pub password: Option<String>,
    /// Each request's bound, e.g. "10s".
    #[serde(deserialize_with = "crate::settings::duration", serialize_with = "crate::settings::serialize_duration")]
    pub timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig { url: "http://127.0.0.1:4001".into(), username: None, password: None, timeout: Duration::from_secs(10) }
    }
}

impl EtcdConfig {
    /// Checks what serde cannot; errors name the key and its value.
    pub fn validate(&self) -> Result<(), String> {
        crate::settings::check_nonzero("etcd.timeout", self.timeout, "every etcd request would time out at once")
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("url", &crate::redact::url(&self.url))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("invalid etcd configuration: {0}")]
    Config(String),
    #[error("could not reach etcd at {url} to {op} {key}: {detail}. Check etcd.url, that this host can reach it, and that etcd runs with --enable-v2")]
    Unreachable { url: String, op: &'static str, key: String, detail: String },
    #[error("etcd at {url} refused to {op} {key}: HTTP {status}: {detail}. Check etcd.username/etcd.password and the cluster's v2 auth roles")]
    Denied { url: String, op: &'static str, key: String, status: u16, detail: String },
    #[error("etcd at {url} answered {op} {key} with HTTP {status}: {detail}. Check that etcd.url is the v2 client URL (GET {url}/v2/keys should answer JSON)")]
    Unexpected { url: String, op: &'static str, key: String, status: u16, detail: String },
}

/// What a delete found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteOutcome {
    Deleted,
    /// The key did not exist (etcd error code 100): nothing to do.
    Absent,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyResult {
    pub key: String,
    pub outcome: DeleteOutcome,
    /// The value the key held before it was deleted (a system identifier or an optime; no secrets).
    pub previous: Option<String>,
}

pub struct Etcd {
    http: reqwest::Client,
    base: SecretUrl,
    config: EtcdConfig,
}

/// The keys recovery deletes for instance `id`.
pub fn recovery_keys(id: &str) -> [String; 2] {
    [format!("/service/{id}/initialize"), format!("/service/{id}/optime/leader")]
}

impl Etcd {
    pub fn new(config: &EtcdConfig) -> Result<Etcd, EtcdError> {
        config.validate().map_err(EtcdError::Config)?;
        let timeout = config.timeout;
        let base = config.url.trim().trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.len() < 10 {
            return Err(EtcdError::Config(format!("etcd.url {:?} must be a URL like http://10.0.0.5:4001", crate::redact::url(&config.url))));
        }
        if config.password.is_some() && config.username.is_none() {
            return Err(EtcdError::Config("etcd.password is set without etcd.username".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| EtcdError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Etcd { http, base: SecretUrl::new(base), config: config.clone() })
    }

    /// The client URL; it shows (and serializes) redacted.
    pub fn url(&self) -> &SecretUrl {
        &self.base
    }

    fn key_url(&self, key: &str) -> SecretUrl {
        self.base.join(&format!("/v2/keys{key}"))
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.config.username {
            Some(u) => rb.basic_auth(u, self.config.password.as_deref()),
            None => rb,
        }
    }

    /// A server's or the client's text with every secret masked: the configured password and the
    /// URL's own credentials wherever they appear, and whatever [`crate::redact::text`] recognises.
    fn scrub(&self, s: &str) -> String {
        crate::redact::with_secrets(s, self.config.password.as_deref())
    }

    async fn call(&self, method: reqwest::Method, op: &'static str, key: &str, body: Option<String>) -> Result<(u16, serde_json::Value), EtcdError> {
        let mut rb = self.auth(self.http.request(method, self.key_url(key).expose()));
        if let Some(v) = body {
            rb = rb.form(&[("value", v)]);
        }
        let resp = rb.send().await.map_err(|e| EtcdError::Unreachable {
            url: self.base.to_string(),
            op,
            key: key.to_string(),
            detail: self.scrub(&crate::error_chain(&e)),
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        if status == 401 || status == 403 {
            return Err(EtcdError::Denied { url: self.base.to_string(), op, key: key.to_string(), status, detail: short(&self.scrub(&text)).to_string() });
        }
        if json.is_null() {
            return Err(EtcdError::Unexpected { url: self.base.to_string(), op, key: key.to_string(), status, detail: short(&self.scrub(&text)).to_string() });
        }
        Ok((status, json))
    }

    /// The value of a key, None when absent.
    pub async fn get(&self, key: &str) -> Result<Option<String>, EtcdError> {
        let (status, json) = self.call(reqwest::Method::GET, "read", key, None).await?;
        match status {
            200 => Ok(json["node"]["value"].as_str().map(str::to_string)),
            404 if json["errorCode"].as_u64() == Some(100) => Ok(None),
            _ => Err(self.unexpected("read", key, status, &json)),
        }
    }

    /// Sets a key (used by tests and by nothing in recovery itself).
    pub async fn put(&self, key: &str, value: &str) -> Result<(), EtcdError> {
        let (status, json) = self.call(reqwest::Method::PUT, "write", key, Some(value.to_string())).await?;
        match status {
            200 | 201 => Ok(()),
            _ => Err(self.unexpected("write", key, status, &json)),
        }
    }

    /// Deletes one key; an absent key is reported as [`DeleteOutcome::Absent`], not an error.
    pub async fn delete(&self, key: &str) -> Result<KeyResult, EtcdError> {
        let (status, json) = self.call(reqwest::Method::DELETE, "delete", key, None).await?;
        match status {
            200 => Ok(KeyResult { key: key.to_string(), outcome: DeleteOutcome::Deleted, previous: json["prevNode"]["value"].as_str().map(str::to_string) }),
            404 if json["errorCode"].as_u64() == Some(100) => Ok(KeyResult { key: key.to_string(), outcome: DeleteOutcome::Absent, previous: None }),
            _ => Err(self.unexpected("delete", key, status, &json)),
        }
    }

    fn unexpected(&self, op: &'static str, key: &str, status: u16, json: &serde_json::Value) -> EtcdError {
        let detail = json["message"].as_str().map(|m| format!("{m} ({})", json["cause"].as_str().unwrap_or(""))).unwrap_or_else(|| json.to_string());
        EtcdError::Unexpected { url: self.base.to_string(), op, key: key.to_string(), status, detail: short(&self.scrub(&detail)).to_string() }
    }
}

fn short(s: &str) -> &str {
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_stays_out_of_debug_and_json() {
        let c = EtcdConfig { username: Some("root".into()), password: Some("etcd-pass-77".into()), ..EtcdConfig::default() };
        assert!(!format!("{c:?}").contains("etcd-pass-77"));
        assert!(!serde_json::to_string(&c).unwrap().contains("etcd-pass-77"));
    }

    #[test]
    fn a_password_in_the_url_is_used_but_never_shown() {
        let c = EtcdConfig { url: "http://root:url-pass-55@10.0.0.1:4001".into(), ..EtcdConfig::default() };
        let e = Etcd::new(&c).unwrap();
        assert_eq!(e.key_url("/a").expose(), "http://root:url-pass-55@10.0.0.1:4001/v2/keys/a");
        for shown in [e.url().to_string(), format!("{c:?}"), serde_json::to_string(&c).unwrap(), serde_json::to_string(e.url()).unwrap()] {
            assert!(!shown.contains("url-pass-55") && shown.contains("root:***@10.0.0.1:4001"), "{shown}");
        }
    }

    #[test]
    fn validates() {
        assert!(Etcd::new(&EtcdConfig { url: "10.0.0.1:4001".into(), ..EtcdConfig::default() }).is_err());
        assert!(Etcd::new(&EtcdConfig { timeout: Duration::ZERO, ..EtcdConfig::default() }).is_err());
        assert_eq!(recovery_keys("a")[1], "/service/a/optime/leader");
    }
}
