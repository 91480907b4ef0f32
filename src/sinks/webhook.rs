//! JSON webhook delivery (reqwest): a Slack-compatible `text` field plus the structured alert.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::alerts::Alert;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Extra headers (e.g. Authorization); their values are never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_timeout", deserialize_with = "crate::settings::duration")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<&String> = self.headers.keys().collect();
        f.debug_struct("WebhookConfig").field("url", &redact_url(&self.url)).field("headers", &headers).finish()
    }
}

/// Slack-style webhook URLs carry their secret in the path: show only scheme and host.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}/...", rest.split('/').next().unwrap_or("")),
        None => "<invalid url>".into(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("the webhook is misconfigured: {0}; fix [alerts.webhook] in the config")]
    Config(String),
    #[error("posting the alert to the webhook at {url} failed: {detail}; check the receiver is up and the URL and headers are right")]
    Post { url: String, detail: String },
}

pub struct Webhook {
    client: reqwest::Client,
    cfg: WebhookConfig,
}

impl Webhook {
    pub fn new(cfg: &WebhookConfig) -> Result<Webhook, WebhookError> {
        reqwest::Url::parse(&cfg.url).map_err(|e| WebhookError::Config(format!("url: {e}")))?;
        let client = reqwest::Client::builder().timeout(cfg.timeout).build().map_err(|e| WebhookError::Config(e.to_string()))?;
        Ok(Webhook { client, cfg: cfg.clone() })
    }

    pub async fn send(&self, a: &Alert) -> Result<(), WebhookError> {
        let url = redact_url(&self.cfg.url);
        let mut req = self.client.post(&self.cfg.url).json(&crate::alerts::webhook_body(a)).header("Idempotency-Key", &a.id);
        for (k, v) in &self.cfg.headers {
            req = req.header(k, v);
        }
        // reqwest's error text carries the full URL, whose path is the secret of a Slack-style hook.
        let resp = req.send().await.map_err(|e| WebhookError::Post { url: url.clone(), detail: e.without_url().to_string() })?;
        let status = resp.status();
        if !status.is_success() {
            let body: String = resp.text().await.unwrap_or_default().chars().take(200).collect();
            return Err(WebhookError::Post { url, detail: format!("HTTP {status}: {body}") });
        }
        Ok(())
    }

    /// Reachability only: any HTTP answer to a HEAD counts.
    pub async fn check(&self) -> Result<(), WebhookError> {
        self.client
            .head(&self.cfg.url)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| WebhookError::Post { url: redact_url(&self.cfg.url), detail: e.without_url().to_string() })
    }
}
