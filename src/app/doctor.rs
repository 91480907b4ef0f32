//! `safeguard doctor`: checks every configured connection with the same kind of call the real work
//! makes, and says plainly what is wrong and what to do about it.
//!
//! | check | call |
//! |---|---|
//! | store | open it (or ask the running watcher over its socket): schema version, size, counters |
//! | kafka (per source) | metadata for the configured topics, then the group's committed offsets (needs the group coordinator) |
//! | s3 | ListObjectsV2 of `[doctor] s3_prefix` (one key) |
//! | etcd | a read of `[doctor] etcd_key` (default `/service`, where Patroni keeps its keys) |
//! | smtp | connect, EHLO, STARTTLS and AUTH as configured ([`Mailer::check`]); no mail is sent |
//! | webhook | a HEAD to the URL: any HTTP answer counts ([`Webhook::check`]) |
//! | cloud_controller | a UAA token with the configured credentials |
//! | http | the running watcher's `/readyz`, or that `[http] listen` can be bound |
//!
//! Every check runs under one bounded timeout; unconfigured ones are listed as skipped; the exit code is
//! non-zero when a configured check fails. Output never carries a secret: the modules scrub their error
//! texts, and every check's target, detail and hint pass [`crate::redact::text`] once more where they are
//! made into a [`Check`] (`timed`), so a check added later is covered too.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::adapters::etcd::EtcdConfig;
use crate::adapters::platform::cloud_controller::CloudControllerConfig;
use crate::adapters::s3::S3Config;
use crate::engine::http::HttpConfig;
use crate::redact::SecretUrl;
use crate::sinks::email::EmailConfig;
use crate::sinks::webhook::WebhookConfig;
use crate::sources::kafka::KafkaConfig;

/// What the checks reach: each configured connection, as its component defines it (the composed config
/// builds this; an absent one is skipped).
#[derive(Debug, Clone, Default)]
pub struct Targets {
    pub kafka: Vec<KafkaConfig>,
    pub s3: Option<S3Config>,
    pub etcd: Option<EtcdConfig>,
    pub email: Option<EmailConfig>,
    pub webhook: Option<WebhookConfig>,
    pub cloud_controller: Option<CloudControllerConfig>,
    pub http: Option<HttpConfig>,
    pub leader: Option<crate::sources::kafka::leader::LeaderConfig>,
    pub doctor: DoctorConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("cannot start the doctor's runtime: {0}; the host is out of threads or memory")]
    Runtime(std::io::Error),
}

/// `[doctor]`: what the checks need that the rest of the config does not say.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DoctorConfig {
    /// The prefix the S3 check lists (one key), e.g. `s3://<bucket>/backups/`: the bucket of the
    /// platform's `WALE_S3_PREFIX`. Without it, a configured `[s3]` cannot be checked and fails.
    pub s3_prefix: Option<String>,
    /// The key the etcd check reads.
    pub etcd_key: String,
}

impl Default for DoctorConfig {
    fn default() -> Self {
        DoctorConfig { s3_prefix: None, etcd_key: "/service".into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: String,
    pub status: Status,
    /// What was checked (an address, a path; never credentials).
    pub target: String,
    /// What was found, or why it failed.
    pub detail: String,
    /// What to do next (on failure, or a note worth acting on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    pub elapsed_ms: u64,
}

impl Check {
    fn skip(check: &str, why: &str) -> Check {
        Check { check: check.into(), status: Status::Skip, target: String::new(), detail: why.into(), hint: None, elapsed_ms: 0 }
    }
}

/// What a check function returns before it is timed and named.
struct Outcome {
    ok: bool,
    detail: String,
    hint: Option<String>,
}

fn pass(detail: impl Into<String>) -> Outcome {
    Outcome { ok: true, detail: detail.into(), hint: None }
}

fn fail(detail: impl Into<String>, hint: impl Into<String>) -> Outcome {
    Outcome { ok: false, detail: detail.into(), hint: Some(hint.into()) }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub config: String,
    pub store: PathBuf,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn render_text(&self) -> String {
        let mut s = format!("safeguard doctor: config {}, store {}\n\n", self.config, self.store.display());
        for c in &self.checks {
            let target = if c.target.is_empty() { String::new() } else { format!("  {}", c.target) };
            let line = format!("{}  {:<16}{target}", c.status.label(), c.check);
            s.push_str(line.trim_end());
            s.push('\n');
            s.push_str(&format!("      {}\n", c.detail));
            if let Some(h) = &c.hint {
                s.push_str(&format!("      hint: {h}\n"));
            }
        }
        let configured = self.passed + self.failed;
        if self.failed == 0 {
            s.push_str(&format!("\nall {configured} configured check(s) passed; {} skipped (not configured)\n", self.skipped));
        } else {
            s.push_str(&format!("\n{} of {configured} configured check(s) FAILED; {} skipped (not configured)\n", self.failed, self.skipped));
        }
        s
    }
}

pub struct Options {
    /// How the config was found, for the report header.
    pub config_label: String,
    pub store_path: PathBuf,
    pub cache_bytes: u64,
    /// Bound on each check.
    pub timeout: Duration,
}

/// Runs every check on its own runtime and returns the report. Blocking calls still running when
/// their check timed out are abandoned, not waited for.
pub fn run_blocking(cfg: &Targets, opts: &Options) -> Result<Report, DoctorError> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(DoctorError::Runtime)?;
    let report = rt.block_on(run(cfg, opts));
    rt.shutdown_background();
    Ok(report)
}

async fn timed<F>(name: &str, target: String, timeout: Duration, f: F) -> Check
where
    F: std::future::Future<Output = Outcome>,
{
    let start = Instant::now();
    let o = match tokio::time::timeout(timeout, f).await {
        Ok(o) => o,
        Err(_) => fail(
            format!("no answer within {} (the doctor's per-check timeout)", humantime::format_duration(timeout)),
            "the service is slow or a firewall drops packets silently; check the address, or raise --timeout",
        ),
    };
    // The one place a check becomes output (text and JSON): redacted here, whatever the check wrote.
    Check {
        check: name.into(),
        status: if o.ok { Status::Pass } else { Status::Fail },
        target: crate::redact::text(&target),
        detail: crate::redact::text(&o.detail),
        hint: o.hint.as_deref().map(crate::redact::text),
        elapsed_ms: start.elapsed().as_millis() as u64,
    }
}

/// Runs a blocking check on the blocking pool so that the timeout can abandon it.
async fn blocking<F>(f: F) -> Outcome
where
    F: FnOnce() -> Outcome + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| fail(format!("the check panicked: {e}"), "this is a bug in safeguard; please report it"))
}

pub async fn run(cfg: &Targets, opts: &Options) -> Report {
    let t = opts.timeout;
    // The store first: the http check depends on whether a watcher runs.
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store_check = {
        let (path, cache, r) = (opts.store_path.clone(), opts.cache_bytes, running.clone());
        timed("store", opts.store_path.display().to_string(), t, blocking(move || check_store(path, cache, &r))).await
    };
    let watcher_running = running.load(std::sync::atomic::Ordering::Relaxed);

    let mut futs: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Check> + Send>>> = Vec::new();
    let mut skipped = Vec::new();

    if cfg.kafka.is_empty() {
        skipped.push(Check::skip("kafka", "no Kafka source in [[sources]]"));
    }
    for k in cfg.kafka.clone() {
        futs.push(Box::pin(timed("kafka", k.target(), t, blocking(move || check_kafka(&k, t)))));
    }

    match cfg.leader.clone() {
        None => skipped.push(Check::skip("leader", "no [leader] section (one watcher: no standby)")),
        Some(l) => {
            let target = format!("{} topics {} + {}", l.brokers.join(","), l.topic, l.deliveries_topic);
            futs.push(Box::pin(timed(
                "leader",
                target,
                t,
                blocking(move || match crate::sources::kafka::leader::check(&l, t) {
                    Ok(found) => pass(found),
                    Err((detail, hint)) => fail(detail, hint),
                }),
            )));
        }
    }

    match &cfg.s3 {
        None => skipped.push(Check::skip("s3", "no [s3] section")),
        Some(s3) => {
            let (s3, prefix) = (s3.clone(), cfg.doctor.s3_prefix.clone());
            let target = format!("{} {}", s3.endpoint_label(), prefix.as_deref().unwrap_or("(no [doctor] s3_prefix)"));
            futs.push(Box::pin(timed("s3", target, t, async move { check_s3(&s3, prefix.as_deref()).await })));
        }
    }

    match &cfg.etcd {
        None => skipped.push(Check::skip("etcd", "no [etcd] section")),
        Some(e) => {
            let (e, key) = (e.clone(), cfg.doctor.etcd_key.clone());
            let target = format!("{} key {key}", crate::redact::url(&e.url));
            futs.push(Box::pin(timed("etcd", target, t, async move { check_etcd(&e, &key).await })));
        }
    }

    match cfg.email.clone() {
        None => skipped.push(Check::skip("smtp", "no [alerts.email] section")),
        Some(e) => {
            let target = format!("{}:{} ({:?})", e.host, e.port.map_or("default port".into(), |p| p.to_string()), e.security).to_lowercase();
            futs.push(Box::pin(timed("smtp", target, t, async move { check_smtp(&e).await })));
        }
    }
    match cfg.webhook.clone() {
        None => skipped.push(Check::skip("webhook", "no [alerts.webhook] section")),
        Some(w) => {
            let target = crate::sinks::webhook::redact_url(&w.url);
            futs.push(Box::pin(timed("webhook", target, t, async move { check_webhook(&w).await })));
        }
    }

    match &cfg.cloud_controller {
        None => skipped.push(Check::skip("cloud_controller", "no [cloud_controller] section")),
        Some(cc) => {
            let cc = cc.clone();
            let target = crate::redact::url(&cc.api_url);
            futs.push(Box::pin(timed("cloud_controller", target, t, async move { check_cloud_controller(&cc).await })));
        }
    }

    match &cfg.http {
        None => skipped.push(Check::skip("http", "no [http] section (health and metrics endpoint off)")),
        Some(h) => {
            let addr = h.listen;
            futs.push(Box::pin(timed("http", format!("http://{addr}"), t, async move { check_http(addr, watcher_running).await })));
        }
    }

    let mut checks = vec![store_check];
    checks.extend(futures_util::future::join_all(futs).await);
    checks.extend(skipped);
    let passed = checks.iter().filter(|c| c.status == Status::Pass).count();
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let skipped = checks.iter().filter(|c| c.status == Status::Skip).count();
    Report { ok: failed == 0, config: opts.config_label.clone(), store: opts.store_path.clone(), passed, failed, skipped, checks }
}

// ------------------------------------------------------------------------------------------- store

fn check_store(path: PathBuf, cache: u64, watcher: &std::sync::atomic::AtomicBool) -> Outcome {
    use crate::store::query::Access;
    if !path.exists() {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        return match writable_dir(parent) {
            Ok(()) => Outcome {
                ok: true,
                detail: format!("not created yet; `safeguard watch` creates it (its parent {} is writable)", parent.display()),
                hint: Some("if a store should already exist here, check --store / SAFEGUARD_STORE / store.path".into()),
            },
            Err(e) => fail(
                format!("the store does not exist and its parent directory {} is not usable: {e}", parent.display()),
                "create the directory for the user safeguard runs as, or point --store / store.path elsewhere",
            ),
        };
    }
    let access = match Access::open(&path, cache) {
        Ok(a) => a,
        Err(e) => return fail(e.to_string(), "see the message; the store must be a directory safeguard's user can write"),
    };
    let via = match access {
        Access::Direct(_) => "opened directly (no watcher running)",
        Access::Snapshot { .. } => "read from the snapshot its last clean close wrote (no watcher running)",
        Access::Watcher { .. } => {
            watcher.store(true, std::sync::atomic::Ordering::Relaxed);
            "a running watcher holds it and answered over its socket"
        }
    };
    match access.status() {
        Ok(st) => pass(format!(
            "schema {}, {}, {} instance(s) ({} deleted), {} lines read, {} rejected; {via}",
            st.schema_version.as_deref().unwrap_or("?"),
            crate::recover::human_bytes(st.size_bytes),
            st.instances,
            st.deleted,
            st.counters.lines_read,
            st.counters.lines_rejected
        )),
        Err(e) => fail(e.to_string(), "if a watcher runs, check its log; otherwise check the store directory"),
    }
}

fn writable_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".safeguard-doctor-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

// ------------------------------------------------------------------------------------------- kafka

fn check_kafka(s: &KafkaConfig, timeout: Duration) -> Outcome {
    match crate::sources::kafka::probe::check(s, timeout) {
        Ok(found) => pass(found),
        Err(f) => fail(f.detail, f.hint),
    }
}

// ------------------------------------------------------------------------------------------- s3

async fn check_s3(s3: &crate::adapters::s3::S3Config, prefix: Option<&str>) -> Outcome {
    use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
    let Some(prefix) = prefix else {
        return fail(
            "no prefix to list: [s3] is configured but [doctor] s3_prefix is not set",
            "set [doctor] s3_prefix = \"s3://<bucket>/backups/\" (the bucket in the platform's WALE_S3_PREFIX)",
        );
    };
    let url = match crate::adapters::s3::S3Url::parse(prefix) {
        Ok(u) => u,
        Err(e) => return fail(e.to_string(), "fix [doctor] s3_prefix"),
    };
    let store = match crate::adapters::s3::ObjectStore::connect(s3) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string(), "fix the [s3] section"),
    };
    let client = store.client().await;
    let mut req = client.list_objects_v2().bucket(&url.bucket).max_keys(1);
    if !url.key.is_empty() {
        req = req.prefix(&url.key);
    }
    let scrub = |t: String| s3.scrub(&t);
    let endpoint = s3.endpoint_label();
    match req.send().await {
        Ok(page) => match page.contents().first().and_then(|o| o.key()) {
            Some(k) => pass(format!("listed {url}: objects present (first: {k})")),
            None => Outcome {
                ok: true,
                detail: format!("listed {url}: the bucket answered, the prefix is empty"),
                hint: Some("no backups under this prefix: check it is the prefix WAL-E writes to (WALE_S3_PREFIX)".into()),
            },
        },
        Err(SdkError::ServiceError(se)) => {
            let code = se.err().code().unwrap_or("").to_string();
            let status = se.raw().status().as_u16();
            let msg = scrub(se.err().message().unwrap_or("").to_string());
            match code.as_str() {
                "NoSuchBucket" => fail(
                    format!("bucket {:?} does not exist at {endpoint}", url.bucket),
                    "check the bucket in [doctor] s3_prefix against the platform's WALE_S3_PREFIX, and [s3] endpoint/region",
                ),
                _ if status == 403 || matches!(code.as_str(), "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken") => fail(
                    format!("{endpoint} refused to list {url}: {code} (HTTP {status}) {msg}"),
                    "check the credentials ([s3] keys or the AWS_* environment / instance role), this host's clock, and that the policy allows s3:ListBucket",
                ),
                _ => fail(
                    format!("{endpoint} answered the listing of {url} with {code} (HTTP {status}) {msg}"),
                    "check [s3] endpoint is an S3 API and the service's logs",
                ),
            }
        }
        Err(e) => {
            let detail = scrub(crate::error_chain(&e));
            if detail.to_ascii_lowercase().contains("credentials") {
                fail(
                    format!("no S3 credentials could be loaded: {detail}"),
                    "set [s3] access_key_id/secret_access_key, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or a profile or instance role)",
                )
            } else {
                fail(
                    format!("could not list {url} at {endpoint}: {detail}"),
                    "check [s3] endpoint is right and reachable from this host (DNS, firewall, proxy, TLS), and that the service is up",
                )
            }
        }
    }
}

// ------------------------------------------------------------------------------------------- etcd

async fn check_etcd(cfg: &crate::adapters::etcd::EtcdConfig, key: &str) -> Outcome {
    let etcd = match crate::adapters::etcd::Etcd::new(cfg) {
        Ok(e) => e,
        Err(e) => return fail(e.to_string(), "fix the [etcd] section"),
    };
    match etcd.get(key).await {
        Ok(Some(_)) => pass(format!("read {key}: it holds a value")),
        Ok(None) => pass(format!("read {key}: answered (a directory, or absent)")),
        Err(e) => {
            let hint = match &e {
                crate::adapters::etcd::EtcdError::Denied { .. } => "check etcd.username / etcd.password and the cluster's v2 auth roles",
                crate::adapters::etcd::EtcdError::Unexpected { .. } => "etcd.url must be the v2 client URL: GET <url>/v2/keys answers JSON",
                _ => "check etcd.url and that this host can reach it (etcd runs with --enable-v2)",
            };
            fail(e.to_string(), hint)
        }
    }
}

// ------------------------------------------------------------------------------------------- smtp, webhook

async fn check_smtp(cfg: &crate::sinks::email::EmailConfig) -> Outcome {
    let m = match crate::sinks::email::Mailer::new(cfg) {
        Ok(m) => m,
        Err(e) => return fail(e.to_string(), "fix [alerts.email] (SAFEGUARD_SMTP_PASSWORD holds the password)"),
    };
    match m.check().await {
        Ok(()) => pass(format!(
            "connected, EHLO{}{} accepted; no mail sent",
            if cfg.security == crate::sinks::email::Security::Starttls { ", STARTTLS" } else { "" },
            if cfg.username.is_some() { ", AUTH" } else { "" }
        )),
        Err(e) => fail(e.to_string(), "check host/port/security in [alerts.email] (587 starttls, 465 tls, 25 none) and the credentials"),
    }
}

async fn check_webhook(cfg: &crate::sinks::webhook::WebhookConfig) -> Outcome {
    let w = match crate::sinks::webhook::Webhook::new(cfg) {
        Ok(w) => w,
        Err(e) => return fail(e.to_string(), "fix [alerts.webhook] url"),
    };
    match w.check().await {
        Ok(()) => pass("the receiver answered an HTTP request (reachability only; nothing was posted)"),
        // The error shows the URL as `redact_url` does (a webhook URL's path is often its secret).
        Err(e) => fail(e.to_string(), "check the URL's host and port are reachable from this host (proxy, firewall, TLS)"),
    }
}

// ------------------------------------------------------------------------------------------- cloud controller

/// Gets a UAA token the way recovery does (client credentials, or the `cf` client's password grant),
/// without keeping or showing it.
async fn check_cloud_controller(cfg: &crate::adapters::platform::cloud_controller::CloudControllerConfig) -> Outcome {
    use serde_json::Value;
    if let Err(e) = crate::adapters::platform::cloud_controller::CloudController::new(cfg) {
        return fail(e.to_string(), "fix the [cloud_controller] section");
    }
    let scrub = |t: &str| crate::redact::with_secrets(t, [cfg.client_secret.as_deref(), cfg.password.as_deref()].into_iter().flatten());
    let timeout = cfg.timeout;
    let http = match reqwest::Client::builder().timeout(timeout).danger_accept_invalid_certs(cfg.skip_tls_verify).build() {
        Ok(h) => h,
        Err(e) => return fail(format!("cannot build an HTTP client: {e}"), "this is a bug in safeguard; please report it"),
    };
    // Shown redacted in every message below; exposed only to send the requests.
    let api = SecretUrl::new(cfg.api_url.trim().trim_end_matches('/'));
    let uaa = match &cfg.uaa_url {
        Some(u) => SecretUrl::new(u.trim_end_matches('/')),
        None => {
            let url = api.join("/v2/info");
            let r = match http.get(url.expose()).send().await {
                Ok(r) => r,
                Err(e) => {
                    return fail(
                        format!("the Cloud Controller at {url} could not be reached: {}", scrub(&crate::error_chain(&e))),
                        "check cloud_controller.api_url and that this host can reach it",
                    )
                }
            };
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            match v["token_endpoint"].as_str() {
                Some(t) if status == 200 => SecretUrl::new(t.trim_end_matches('/')),
                _ => {
                    return fail(
                        format!("GET {url} answered HTTP {status} without a token_endpoint"),
                        "cloud_controller.api_url must be the API (https://api.<system domain>), or set cloud_controller.uaa_url",
                    )
                }
            }
        }
    };
    let url = uaa.join("/oauth/token");
    let (rb, grant) = match (&cfg.client_id, &cfg.client_secret) {
        (Some(id), Some(secret)) => (http.post(url.expose()).basic_auth(id, Some(secret)).form(&[("grant_type", "client_credentials")]), "client credentials"),
        _ => (
            http.post(url.expose()).basic_auth(cfg.client_id.as_deref().unwrap_or("cf"), Some("")).form(&[
                ("grant_type", "password"),
                ("username", cfg.username.as_deref().unwrap_or("")),
                ("password", cfg.password.as_deref().unwrap_or("")),
            ]),
            "user password",
        ),
    };
    let r = match rb.header("Accept", "application/json").send().await {
        Ok(r) => r,
        Err(e) => {
            return fail(
                format!("UAA at {url} could not be reached: {}", scrub(&crate::error_chain(&e))),
                "check the token endpoint (or cloud_controller.uaa_url) is reachable from this host",
            )
        }
    };
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    match v["access_token"].as_str() {
        Some(_) if status == 200 => pass(format!("UAA at {uaa} issued a token ({grant} grant)")),
        _ => fail(
            format!(
                "UAA at {url} refused the {grant} grant: HTTP {status} {} {}",
                v["error"].as_str().unwrap_or(""),
                scrub(v["error_description"].as_str().unwrap_or("(no access_token in the answer)"))
            ),
            "check cloud_controller client_id/client_secret (or username/password)",
        ),
    }
}

// ------------------------------------------------------------------------------------------- http

async fn check_http(addr: std::net::SocketAddr, watcher_running: bool) -> Outcome {
    if !watcher_running {
        return match tokio::net::TcpListener::bind(addr).await {
            Ok(_) => pass(format!("no watcher running; {addr} is free for `safeguard watch` to listen on")),
            Err(e) => fail(
                format!("no watcher runs on this store, but {addr} cannot be bound: {e}"),
                "another process uses the port, or the address is not local: change [http] listen",
            ),
        };
    }
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(if addr.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let url = format!("http://{target}/readyz");
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(5)).build() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot build an HTTP client: {e}"), "this is a bug in safeguard; please report it"),
    };
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => pass(format!("the running watcher answered {url}: ready")),
        Ok(r) => {
            let status = r.status().as_u16();
            let body: String = r.text().await.unwrap_or_default().chars().take(300).collect();
            fail(format!("the running watcher answered {url} with HTTP {status}: {}", body.trim()), "the body says what is not ready; check the watcher's log")
        }
        Err(e) => fail(
            format!("a watcher holds the store but {url} did not answer: {}", crate::error_chain(&e)),
            "check the watcher was started with this config's [http] section",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doctor_section_parses_and_rejects_unknown_keys() {
        let c: DoctorConfig = toml::from_str("s3_prefix = \"s3://b/backups/\"\n").unwrap();
        assert_eq!(c.s3_prefix.as_deref(), Some("s3://b/backups/"));
        assert_eq!(c.etcd_key, "/service");
        let e = toml::from_str::<DoctorConfig>("s3_prefx = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("s3_prefx"), "{e}");
    }
}
