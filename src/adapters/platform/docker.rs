//! The Docker Engine API (reqwest, over TCP or a unix socket) for stop, flush and start.
//!
//! - stop: `POST /containers/<c>/stop?t=<s>` (204 stopped, 304 already stopped).
//! - start: `POST /containers/<c>/start` (204 started, 304 already running).
//! - flush: refuses a running container (`GET /containers/<c>/json`), then runs a short-lived helper
//!   container from the same image with the data volume mounted (`VolumesFrom`) that empties
//!   `data_dir`: `POST /containers/create?name=safeguard-flush-<c>`, `.../start`, `.../wait`,
//!   `DELETE /containers/<id>?force=1`. A helper left by an interrupted run is removed first.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{tail, urlencode, ApiFailure, ContainerRef, Op, OpContext, PlatformError};

/// `[platform.docker]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DockerConfig {
    /// `unix:///var/vcap/sys/run/docker/docker.sock`, or `tcp://{host}:4243` / `http://{host}:4243`
    /// where `{host}` is replaced by the container's cell. Shown redacted (`crate::redact`).
    #[serde(serialize_with = "crate::redact::serialize_url")]
    pub url: String,
    /// API version path prefix such as "1.24"; unset uses the daemon's own.
    pub api_version: Option<String>,
    /// The data volume's mount point inside the container, emptied by flush.
    pub data_dir: String,
    /// Image for the flush helper; unset uses the container's own image.
    pub flush_image: Option<String>,
    /// Seconds Docker waits for the container to stop before killing it.
    pub stop_timeout_secs: u64,
    /// Per request (humantime); flush waits up to four times this for the helper.
    #[serde(deserialize_with = "crate::settings::duration", serialize_with = "crate::settings::serialize_duration")]
    pub timeout: Duration,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            url: "unix:///var/vcap/sys/run/docker/docker.sock".into(),
            api_version: None,
            data_dir: "/data".into(),
            flush_image: None,
            stop_timeout_secs: 30,
            timeout: Duration::from_secs(60),
        }
    }
}

pub struct Docker {
    cfg: DockerConfig,
    timeout: Duration,
}

struct Conn {
    http: reqwest::Client,
    base: String,
    /// The daemon's address for messages, redacted.
    label: String,
}

impl Docker {
    pub fn new(cfg: &DockerConfig) -> Result<Docker, PlatformError> {
        crate::settings::check_nonzero("platform.docker.timeout", cfg.timeout, "every Docker API call would time out at once")
            .map_err(PlatformError::Config)?;
        let timeout = cfg.timeout;
        let u = cfg.url.trim();
        if !(u.starts_with("unix://") || u.starts_with("tcp://") || u.starts_with("http://") || u.starts_with("https://")) {
            return Err(PlatformError::Config(format!("platform.docker.url {u:?} must start with unix://, tcp://, http:// or https://")));
        }
        if !cfg.data_dir.starts_with('/') || cfg.data_dir.trim_end_matches('/').is_empty() || cfg.data_dir.contains(['\'', '"', '$', '`', '\\']) {
            return Err(PlatformError::Config(format!("platform.docker.data_dir {:?} must be an absolute path other than /", cfg.data_dir)));
        }
        Ok(Docker { cfg: cfg.clone(), timeout })
    }

    fn conn(&self, c: &ContainerRef, op: &'static str) -> Result<Conn, PlatformError> {
        let url = self.cfg.url.trim();
        let ver = self.cfg.api_version.as_ref().map(|v| format!("/v{}", v.trim_start_matches('v'))).unwrap_or_default();
        let mut b = reqwest::Client::builder().timeout(self.timeout * 4).connect_timeout(self.timeout);
        let (base, label) = if let Some(path) = url.strip_prefix("unix://") {
            b = b.unix_socket(std::path::Path::new(path));
            (format!("http://docker{ver}"), crate::redact::url(url))
        } else {
            let host_url = if url.contains("{host}") {
                let h = c.host.as_deref().filter(|h| super::safe_value(h)).ok_or_else(|| PlatformError::Failed {
                    op,
                    what: format!("container {}", c.container),
                    detail: "the cell of the container is not known, and platform.docker.url needs {host}".into(),
                })?;
                url.replace("{host}", h)
            } else {
                url.to_string()
            };
            let http = host_url.replacen("tcp://", "http://", 1);
            (format!("{}{ver}", http.trim_end_matches('/')), crate::redact::url(&http))
        };
        let http = b.build().map_err(|e| PlatformError::Config(format!("cannot build the Docker HTTP client: {e}")))?;
        Ok(Conn { http, base, label })
    }

    pub fn describe(&self, op: Op, ctx: &OpContext<'_>) -> String {
        let c = ctx.container.unwrap_or("<container>");
        let at = crate::redact::url(&self.cfg.url.replace("{host}", ctx.host.unwrap_or("<cell>")));
        match op {
            Op::Stop => format!("Docker API {at}: POST /containers/{c}/stop?t={}", self.cfg.stop_timeout_secs),
            Op::Start => format!("Docker API {at}: POST /containers/{c}/start"),
            Op::Flush => format!(
                "Docker API {at}: run helper container safeguard-flush-{c} ({}, volumes from {c}) emptying {}",
                self.cfg.flush_image.as_deref().unwrap_or("the container's image"),
                self.cfg.data_dir
            ),
            Op::Create | Op::Bind => format!("{}: not a Docker operation", op.as_str()),
        }
    }

    async fn call(
        &self,
        conn: &Conn,
        op: &'static str,
        c: &ContainerRef,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), PlatformError> {
        let url = format!("{}{path}", conn.base);
        let m: &'static str = match method.as_str() {
            "GET" => "GET",
            "POST" => "POST",
            "DELETE" => "DELETE",
            _ => "?",
        };
        let mut rb = conn.http.request(method, &url);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.map_err(|e| PlatformError::Unreachable {
            op,
            what: format!("container {}", c.container),
            service: "the Docker Engine API",
            url: format!("{} ({m} {path})", conn.label),
            detail: crate::error_chain(&e),
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(crate::redact::text(&text)));
        Ok((status, v))
    }

    #[allow(clippy::too_many_arguments)]
    fn api_err(&self, conn: &Conn, op: &'static str, c: &ContainerRef, method: &'static str, path: &str, status: u16, v: &Value) -> PlatformError {
        let detail = v["message"].as_str().map(crate::redact::text).unwrap_or_else(|| tail(&crate::redact::text(&v.to_string()), 300));
        let hint = match status {
            404 => format!("Check that container {} exists on this Docker host (was the instance deleted, or is it on another cell?)", c.container),
            409 => "Docker reports a conflict; check the container's state with `docker ps -a`".to_string(),
            _ => "Check the Docker daemon's log on the cell".to_string(),
        };
        ApiFailure {
            op,
            what: format!("container {}", c.container),
            service: "the Docker Engine API",
            method,
            url: format!("{}{path}", conn.label),
            status,
            code: String::new(),
            detail,
            hint,
        }
        .into()
    }

    pub async fn stop(&self, c: &ContainerRef) -> Result<String, PlatformError> {
        let conn = self.conn(c, "stop")?;
        let path = format!("/containers/{}/stop?t={}", urlencode(&c.container), self.cfg.stop_timeout_secs);
        match self.call(&conn, "stop", c, reqwest::Method::POST, &path, None).await? {
            (204, _) => Ok(format!("stopped {} via {}", c.container, conn.label)),
            (304, _) => Ok(format!("{} was already stopped", c.container)),
            (s, v) => Err(self.api_err(&conn, "stop", c, "POST", &path, s, &v)),
        }
    }

    pub async fn start(&self, c: &ContainerRef) -> Result<String, PlatformError> {
        let conn = self.conn(c, "start")?;
        let path = format!("/containers/{}/start", urlencode(&c.container));
        match self.call(&conn, "start", c, reqwest::Method::POST, &path, None).await? {
            (204, _) => Ok(format!("started {} via {}", c.container, conn.label)),
            (304, _) => Ok(format!("{} was already running", c.container)),
            (s, v) => Err(self.api_err(&conn, "start", c, "POST", &path, s, &v)),
        }
    }

    pub async fn flush(&self, c: &ContainerRef) -> Result<String, PlatformError> {
        let op = "flush";
        let conn = self.conn(c, op)?;
        let name = urlencode(&c.container);
        let path = format!("/containers/{name}/json");
        let (s, info) = self.call(&conn, op, c, reqwest::Method::GET, &path, None).await?;
        if s != 200 {
            return Err(self.api_err(&conn, op, c, "GET", &path, s, &info));
        }
        if info["State"]["Running"].as_bool() == Some(true) {
            return Err(PlatformError::Failed {
                op,
                what: format!("container {}", c.container),
                detail: "the container is running; refusing to empty the data directory of a running database. Stop it first (the stop step) and resume".into(),
            });
        }
        let image = match &self.cfg.flush_image {
            Some(i) => i.clone(),
            None => info["Config"]["Image"].as_str().map(str::to_string).ok_or_else(|| PlatformError::Failed {
                op,
                what: format!("container {}", c.container),
                detail: "Docker did not report the container's image; set platform.docker.flush_image".into(),
            })?,
        };
        let helper = format!("safeguard-flush-{}", c.container);
        let hpath = format!("/containers/{}?force=1", urlencode(&helper));
        // A helper left by an interrupted run: remove it (404 when there is none).
        let (s, v) = self.call(&conn, op, c, reqwest::Method::DELETE, &hpath, None).await?;
        if !matches!(s, 204 | 404) {
            return Err(self.api_err(&conn, op, c, "DELETE", &hpath, s, &v));
        }
        let body = json!({
            "Image": image,
            "User": "root",
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": [format!("find '{}' -mindepth 1 -delete", self.cfg.data_dir)],
            "Labels": {"safeguard": "flush", "safeguard.container": c.container},
            "HostConfig": {"VolumesFrom": [c.container]},
        });
        let cpath = format!("/containers/create?name={}", urlencode(&helper));
        let (s, v) = self.call(&conn, op, c, reqwest::Method::POST, &cpath, Some(body)).await?;
        if s != 201 {
            return Err(self.api_err(&conn, op, c, "POST", &cpath, s, &v));
        }
        let id = v["Id"].as_str().unwrap_or(&helper).to_string();
        let spath = format!("/containers/{}/start", urlencode(&id));
        let (s, v) = self.call(&conn, op, c, reqwest::Method::POST, &spath, None).await?;
        if !matches!(s, 204 | 304) {
            let _ = self.call(&conn, op, c, reqwest::Method::DELETE, &hpath, None).await;
            return Err(self.api_err(&conn, op, c, "POST", &spath, s, &v));
        }
        let wpath = format!("/containers/{}/wait", urlencode(&id));
        let (s, v) = self.call(&conn, op, c, reqwest::Method::POST, &wpath, None).await?;
        let _ = self.call(&conn, op, c, reqwest::Method::DELETE, &hpath, None).await;
        if s != 200 {
            return Err(self.api_err(&conn, op, c, "POST", &wpath, s, &v));
        }
        match v["StatusCode"].as_i64() {
            Some(0) => Ok(format!("emptied {} of {} with helper {helper} ({image})", self.cfg.data_dir, c.container)),
            code => Err(PlatformError::Failed {
                op,
                what: format!("container {}", c.container),
                detail: format!(
                    "the helper container {helper} exited with status {code:?} while emptying {}; check `docker logs` on the cell",
                    self.cfg.data_dir
                ),
            }),
        }
    }
}
