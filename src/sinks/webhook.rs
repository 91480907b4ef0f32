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

/// Slack-style webhook URLs carry their secret in the path: show only scheme and host, with the
/// userinfo's password masked as everywhere ([`crate::redact::url`]).
pub fn redact_url(url: &str) -> String {
    let shown = crate::redact::url(url);
    match shown.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}/...", rest.split(['/', '?', '#']).next().unwrap_or("")),
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
    /// What must never be shown although a receiver may echo it: the header values, and the URL's
    /// password, path (a Slack-style hook's secret) and query.
    secrets: Vec<String>,
}

impl Webhook {
    pub fn new(cfg: &WebhookConfig) -> Result<Webhook, WebhookError> {
        let url = reqwest::Url::parse(&cfg.url).map_err(|e| WebhookError::Config(format!("url: {e}")))?;
        let client = reqwest::Client::builder().timeout(cfg.timeout).build().map_err(|e| WebhookError::Config(e.to_string()))?;
        let mut secrets: Vec<String> = cfg.headers.values().cloned().collect();
        secrets.extend(url.password().map(str::to_string));
        secrets.extend([url.path().to_string(), url.query().unwrap_or("").to_string()].into_iter().filter(|p| p.len() > 3));
        // Longest first, so that a value containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Ok(Webhook { client, cfg: cfg.clone(), secrets })
    }

    /// Text from the receiver or the client, with every secret masked ([`crate::redact::with_secrets`]).
    fn scrub(&self, text: &str) -> String {
        crate::redact::with_secrets(text, self.secrets.iter().map(String::as_str))
    }

    pub async fn send(&self, a: &Alert) -> Result<(), WebhookError> {
        let url = redact_url(&self.cfg.url);
        let mut req = self.client.post(&self.cfg.url).json(&crate::alerts::webhook_body(a)).header("Idempotency-Key", &a.id);
        for (k, v) in &self.cfg.headers {
            req = req.header(k, v);
        }
        // reqwest's error text carries the full URL, whose path is the secret of a Slack-style hook.
        let resp = req.send().await.map_err(|e| WebhookError::Post { url: url.clone(), detail: self.scrub(&crate::error_chain(&e.without_url())) })?;
        let status = resp.status();
        if !status.is_success() {
            // A receiver may echo the request (our Authorization header, the URL): masked before the
            // text is cut, so the cut cannot leave part of a secret.
            let body: String = self.scrub(resp.text().await.unwrap_or_default().trim()).chars().take(200).collect();
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
            .map_err(|e| WebhookError::Post { url: redact_url(&self.cfg.url), detail: self.scrub(&crate::error_chain(&e.without_url())) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_shows_only_its_host_and_echoes_lose_every_secret() {
        assert_eq!(redact_url("https://hooks.slack.com/services/T0/B0/XyZsecret"), "https://hooks.slack.com/...");
        assert_eq!(redact_url("http://hook:hook-pass-1@127.0.0.1:9/x?sig=s1"), "http://hook:***@127.0.0.1:9/...");
        assert_eq!(redact_url("http://127.0.0.1:9?token=t1"), "http://127.0.0.1:9/...");
        let cfg = WebhookConfig {
            url: "http://hook:hook-pass-1@127.0.0.1:9/services/T0/B0/XyZsecret?sig=s1gnature".into(),
            headers: [("X-Custom".to_string(), "custom-value-42".to_string())].into(),
            timeout: Duration::from_secs(1),
        };
        let w = Webhook::new(&cfg).unwrap();
        let echo = "POST /services/T0/B0/XyZsecret?sig=s1gnature HTTP/1.1\r\nx-custom: custom-value-42\r\nauthorization: Basic aG9vazpob29rLXBhc3MtMQ==";
        let shown = w.scrub(echo);
        for s in ["XyZsecret", "s1gnature", "custom-value-42", "aG9vazpob29rLXBhc3MtMQ==", "hook-pass-1"] {
            assert!(!shown.contains(s), "{s} in {shown}");
        }
        assert!(!format!("{cfg:?}").contains("hook-pass-1"));
    }
}
