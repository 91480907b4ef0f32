//! Cloud Controller v2 (reqwest) for creating the new service instance and binding apps, with a UAA
//! token from client credentials (`client_credentials` grant) or user credentials (`password` grant
//! through the `cf` client).
//!
//! - token: `GET /v2/info` -> `token_endpoint` (unless `uaa_url` is set), `POST <uaa>/oauth/token`.
//! - create: `GET /v2/service_plans?q=unique_id:<solo plan id>` -> plan guid, then
//!   `POST /v2/service_instances?accepts_incomplete=true {name, space_guid, service_plan_guid}`, then poll
//!   `GET /v2/service_instances/<guid>` until `last_operation.state` is `succeeded` (bounded).
//! - bind: `GET /v2/apps?q=name:<app>&q=space_guid:<space>`, `POST /v2/service_bindings` (an app already
//!   bound, CF-ServiceBindingAppServiceTaken, counts as done).

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{tail, urlencode, ApiFailure, CreateRequest, Created, Op, OpContext, PlatformError};
use crate::redact::SecretUrl;

/// The broker's `solo` plan id (service catalogue).
pub const SOLO_PLAN_ID: &str = "b96d0936-e423-11e5-accb-93d374e93368";

/// `[cloud_controller]`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudControllerConfig {
    /// `https://api.system.example.com`. Credentials in it are used, and shown only redacted.
    #[serde(serialize_with = "crate::redact::serialize_url")]
    pub api_url: String,
    /// UAA base URL; unset asks `/v2/info` for its `token_endpoint`.
    #[serde(serialize_with = "crate::redact::serialize_opt_url")]
    pub uaa_url: Option<String>,
    /// Client credentials (preferred): a UAA client with `cloud_controller.admin` or space developer rights.
    pub client_id: Option<String>,
    #[serde(skip_serializing)]
    pub client_secret: Option<String>,
    /// User credentials, used through the `cf` client when no client secret is set.
    pub username: Option<String>,
    #[serde(skip_serializing)]
    pub password: Option<String>,
    /// The broker plan id recovery creates instances on (the runbook requires `solo`).
    pub plan_unique_id: String,
    /// Per request (humantime).
    #[serde(deserialize_with = "crate::settings::duration", serialize_with = "crate::settings::serialize_duration")]
    pub timeout: Duration,
    /// How long to wait for the broker to finish creating the instance.
    #[serde(deserialize_with = "crate::settings::duration", serialize_with = "crate::settings::serialize_duration")]
    pub create_timeout: Duration,
    #[serde(deserialize_with = "crate::settings::duration", serialize_with = "crate::settings::serialize_duration")]
    pub poll_interval: Duration,
    /// Accept any TLS certificate (test foundations with self-signed certificates only).
    pub skip_tls_verify: bool,
}

impl CloudControllerConfig {
    /// Checks what serde cannot; errors name the key and its value.
    pub fn validate(&self) -> Result<(), String> {
        use crate::settings::check_nonzero;
        check_nonzero("cloud_controller.timeout", self.timeout, "every Cloud Controller request would time out at once")?;
        check_nonzero("cloud_controller.create_timeout", self.create_timeout, "no instance could be created in time")?;
        check_nonzero("cloud_controller.poll_interval", self.poll_interval, "the wait for a new instance would poll without pause")
    }
}

impl Default for CloudControllerConfig {
    fn default() -> Self {
        CloudControllerConfig {
            api_url: String::new(),
            uaa_url: None,
            client_id: None,
            client_secret: None,
            username: None,
            password: None,
            plan_unique_id: SOLO_PLAN_ID.into(),
            timeout: Duration::from_secs(30),
            create_timeout: Duration::from_secs(600),
            poll_interval: Duration::from_secs(5),
            skip_tls_verify: false,
        }
    }
}

impl fmt::Debug for CloudControllerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudControllerConfig")
            .field("api_url", &crate::redact::url(&self.api_url))
            .field("uaa_url", &self.uaa_url.as_deref().map(crate::redact::url))
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "<redacted>"))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("plan_unique_id", &self.plan_unique_id)
            .finish_non_exhaustive()
    }
}

pub struct CloudController {
    cfg: CloudControllerConfig,
    http: reqwest::Client,
    /// Shown redacted (plans, errors); exposed only to send requests.
    api: SecretUrl,
    create_timeout: Duration,
    poll: Duration,
    token: tokio::sync::Mutex<Option<String>>,
}

const CC: &str = "the Cloud Controller";
const UAA: &str = "UAA";

impl CloudController {
    pub fn new(cfg: &CloudControllerConfig) -> Result<CloudController, PlatformError> {
        let api = cfg.api_url.trim().trim_end_matches('/').to_string();
        if !(api.starts_with("http://") || api.starts_with("https://")) {
            return Err(PlatformError::Config(format!(
                "cloud_controller.api_url {:?} must be a URL like https://api.system.example.com",
                crate::redact::url(&cfg.api_url)
            )));
        }
        let has_client = cfg.client_id.is_some() && cfg.client_secret.is_some();
        let has_user = cfg.username.is_some() && cfg.password.is_some();
        if !has_client && !has_user {
            return Err(PlatformError::Config(
                "cloud_controller needs client_id + client_secret, or username + password (secrets may come from the config file only; they are never printed)"
                    .into(),
            ));
        }
        cfg.validate().map_err(PlatformError::Config)?;
        let timeout = cfg.timeout;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .danger_accept_invalid_certs(cfg.skip_tls_verify)
            .build()
            .map_err(|e| PlatformError::Config(format!("cannot build the Cloud Controller HTTP client: {e}")))?;
        Ok(CloudController {
            cfg: cfg.clone(),
            http,
            api: SecretUrl::new(api),
            create_timeout: cfg.create_timeout,
            poll: cfg.poll_interval,
            token: tokio::sync::Mutex::new(None),
        })
    }

    pub fn describe(&self, op: Op, ctx: &OpContext<'_>) -> String {
        match op {
            Op::Create => format!(
                "Cloud Controller {}: POST /v2/service_instances?accepts_incomplete=true {{name: {:?}, space_guid: {}, plan: solo ({})}}, then wait up to {} for it to succeed",
                self.api,
                ctx.name.unwrap_or("?"),
                ctx.space_guid.unwrap_or("?"),
                self.cfg.plan_unique_id,
                humantime::format_duration(self.cfg.create_timeout)
            ),
            Op::Bind => format!(
                "Cloud Controller {}: POST /v2/service_bindings {{service_instance_guid: {}, app_guid: <guid of app {:?} in space {}>}}",
                self.api,
                ctx.instance_id.unwrap_or("<new instance>"),
                ctx.app.unwrap_or("?"),
                ctx.space_guid.unwrap_or("?")
            ),
            _ => format!("{}: not a Cloud Controller operation", op.as_str()),
        }
    }

    /// A server's or the client's text with the configured secrets and whatever [`crate::redact::text`]
    /// recognises masked.
    fn scrub(&self, s: &str) -> String {
        crate::redact::with_secrets(s, [self.cfg.client_secret.as_deref(), self.cfg.password.as_deref()].into_iter().flatten())
    }

    fn unreachable(&self, op: &'static str, what: &str, service: &'static str, url: &SecretUrl, e: reqwest::Error) -> PlatformError {
        PlatformError::Unreachable { op, what: what.to_string(), service, url: url.to_string(), detail: self.scrub(&crate::error_chain(&e)) }
    }

    async fn token(&self, op: &'static str, what: &str) -> Result<String, PlatformError> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref() {
            return Ok(t.clone());
        }
        let uaa = match &self.cfg.uaa_url {
            Some(u) => SecretUrl::new(u.trim_end_matches('/')),
            None => {
                let url = self.api.join("/v2/info");
                let r = self.http.get(url.expose()).send().await.map_err(|e| self.unreachable(op, what, CC, &url, e))?;
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                match v["token_endpoint"].as_str() {
                    Some(t) if status == 200 => SecretUrl::new(t.trim_end_matches('/')),
                    _ => {
                        return Err(ApiFailure {
                            op,
                            what: what.to_string(),
                            service: CC,
                            method: "GET",
                            url: url.to_string(),
                            status,
                            code: String::new(),
                            detail: "no token_endpoint in the answer".into(),
                            hint: "Check cloud_controller.api_url (the API, not the apps domain), or set cloud_controller.uaa_url".into(),
                        }
                        .into())
                    }
                }
            }
        };
        let url = uaa.join("/oauth/token");
        let rb = match (&self.cfg.client_id, &self.cfg.client_secret) {
            (Some(id), Some(secret)) => self.http.post(url.expose()).basic_auth(id, Some(secret)).form(&[("grant_type", "client_credentials")]),
            _ => self.http.post(url.expose()).basic_auth(self.cfg.client_id.as_deref().unwrap_or("cf"), Some("")).form(&[
                ("grant_type", "password"),
                ("username", self.cfg.username.as_deref().unwrap_or("")),
                ("password", self.cfg.password.as_deref().unwrap_or("")),
            ]),
        };
        let r = rb.header("Accept", "application/json").send().await.map_err(|e| self.unreachable(op, what, UAA, &url, e))?;
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        match v["access_token"].as_str() {
            Some(t) if status == 200 => {
                *guard = Some(t.to_string());
                Ok(t.to_string())
            }
            _ => Err(ApiFailure {
                op,
                what: what.to_string(),
                service: UAA,
                method: "POST",
                url: url.to_string(),
                status,
                code: v["error"].as_str().map(|c| format!(" ({c})")).unwrap_or_default(),
                detail: self.scrub(v["error_description"].as_str().unwrap_or("no access_token in the answer")),
                hint: "Check the cloud_controller client or user credentials".into(),
            }
            .into()),
        }
    }

    async fn call(&self, op: &'static str, what: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<(u16, Value), PlatformError> {
        let token = self.token(op, what).await?;
        let url = self.api.join(path);
        let mut rb = self.http.request(method, url.expose()).bearer_auth(token).header("Accept", "application/json");
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.map_err(|e| self.unreachable(op, what, CC, &url, e))?;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        // The answer ends up in errors (and the journal): an echo of the request or a token in it is masked.
        Ok((status, serde_json::from_str(&text).unwrap_or_else(|_| Value::String(self.scrub(&text)))))
    }

    fn api_err(&self, op: &'static str, what: &str, method: &'static str, path: &str, status: u16, v: &Value) -> PlatformError {
        let code = v["error_code"].as_str().map(|c| format!(" ({c})")).unwrap_or_default();
        let detail = v["description"].as_str().map(|d| self.scrub(d)).unwrap_or_else(|| tail(&self.scrub(&v.to_string()), 300));
        let hint = match status {
            401 | 403 => "Check that the UAA client or user may do this in the space (space developer or cloud_controller.admin)".to_string(),
            404 => "Check the GUIDs (space, instance) and cloud_controller.api_url".to_string(),
            _ => "See the Cloud Controller's answer above; fix it and run `safeguard recover --resume`".to_string(),
        };
        ApiFailure { op, what: what.to_string(), service: CC, method, url: self.api.join(path).to_string(), status, code, detail, hint }.into()
    }

    async fn plan_guid(&self, what: &str) -> Result<String, PlatformError> {
        let path = format!("/v2/service_plans?q={}", urlencode(&format!("unique_id:{}", self.cfg.plan_unique_id)));
        let (s, v) = self.call("create", what, reqwest::Method::GET, &path, None).await?;
        if s != 200 {
            return Err(self.api_err("create", what, "GET", &path, s, &v));
        }
        v["resources"][0]["metadata"]["guid"].as_str().map(str::to_string).ok_or_else(|| PlatformError::Failed {
            op: "create",
            what: what.to_string(),
            detail: format!(
                "the Cloud Controller knows no service plan with unique id {}; check cloud_controller.plan_unique_id and that the broker is registered",
                self.cfg.plan_unique_id
            ),
        })
    }

    pub async fn create(&self, req: &CreateRequest) -> Result<Created, PlatformError> {
        let what = format!("instance {:?} in space {}", req.name, req.space_guid);
        let plan = self.plan_guid(&what).await?;
        let path = "/v2/service_instances?accepts_incomplete=true";
        let body = json!({"name": req.name, "space_guid": req.space_guid, "service_plan_guid": plan});
        let (s, v) = self.call("create", &what, reqwest::Method::POST, path, Some(body)).await?;
        if !matches!(s, 201 | 202) {
            if v["error_code"].as_str() == Some("CF-ServiceInstanceNameTaken") {
                return Err(PlatformError::NameTaken { name: req.name.clone(), space_guid: req.space_guid.clone() });
            }
            return Err(self.api_err("create", &what, "POST", path, s, &v));
        }
        let guid = v["metadata"]["guid"].as_str().map(str::to_string).ok_or_else(|| PlatformError::Failed {
            op: "create",
            what: what.clone(),
            detail: "the answer has no metadata.guid".into(),
        })?;
        let state = self.wait_created(&guid, &what, &v).await?;
        Ok(Created { instance_id: guid.clone(), detail: format!("created {guid} on plan {plan}: last operation {state}") })
    }

    async fn wait_created(&self, guid: &str, what: &str, first: &Value) -> Result<String, PlatformError> {
        let deadline = Instant::now() + self.create_timeout;
        let mut v = first.clone();
        loop {
            let state = v["entity"]["last_operation"]["state"].as_str().unwrap_or("succeeded").to_string();
            match state.as_str() {
                "succeeded" => return Ok(state),
                "failed" => {
                    return Err(PlatformError::Failed {
                        op: "create",
                        what: what.to_string(),
                        detail: format!(
                            "the broker failed to create {guid}: {}; check the broker's log (`safeguard show {guid}`)",
                            self.scrub(v["entity"]["last_operation"]["description"].as_str().unwrap_or("no description"))
                        ),
                    })
                }
                _ if Instant::now() >= deadline => {
                    return Err(PlatformError::Failed {
                        op: "create",
                        what: what.to_string(),
                        detail: format!(
                            "{guid} is still {state:?} after {}; resume later with `safeguard recover --resume`",
                            humantime::format_duration(self.cfg.create_timeout)
                        ),
                    })
                }
                _ => tokio::time::sleep(self.poll).await,
            }
            let path = format!("/v2/service_instances/{}", urlencode(guid));
            let (s, nv) = self.call("create", what, reqwest::Method::GET, &path, None).await?;
            if s != 200 {
                return Err(self.api_err("create", what, "GET", &path, s, &nv));
            }
            v = nv;
        }
    }

    pub async fn find_instance(&self, name: &str, space_guid: &str) -> Result<Option<String>, PlatformError> {
        let what = format!("instance {name:?} in space {space_guid}");
        let path = format!("/v2/service_instances?q={}&q={}", urlencode(&format!("name:{name}")), urlencode(&format!("space_guid:{space_guid}")));
        let (s, v) = self.call("create", &what, reqwest::Method::GET, &path, None).await?;
        if s != 200 {
            return Err(self.api_err("create", &what, "GET", &path, s, &v));
        }
        Ok(v["resources"][0]["metadata"]["guid"].as_str().map(str::to_string))
    }

    pub async fn bind(&self, instance_id: &str, space_guid: Option<&str>, app: &str) -> Result<String, PlatformError> {
        let what = format!("app {app:?} to {instance_id}");
        let space = space_guid.ok_or_else(|| PlatformError::Failed {
            op: "bind",
            what: what.clone(),
            detail: "the space of the instance is not known; pass --space-guid".into(),
        })?;
        let path = format!("/v2/apps?q={}&q={}", urlencode(&format!("name:{app}")), urlencode(&format!("space_guid:{space}")));
        let (s, v) = self.call("bind", &what, reqwest::Method::GET, &path, None).await?;
        if s != 200 {
            return Err(self.api_err("bind", &what, "GET", &path, s, &v));
        }
        let app_guid = v["resources"][0]["metadata"]["guid"].as_str().map(str::to_string).ok_or_else(|| PlatformError::Failed {
            op: "bind",
            what: what.clone(),
            detail: format!("no app named {app:?} in space {space}; check the name with `cf apps`"),
        })?;
        let path = "/v2/service_bindings";
        let (s, v) = self.call("bind", &what, reqwest::Method::POST, path, Some(json!({"service_instance_guid": instance_id, "app_guid": app_guid}))).await?;
        match s {
            201 | 202 => Ok(format!("bound app {app} ({app_guid}) as binding {}", v["metadata"]["guid"].as_str().unwrap_or("?"))),
            _ if v["error_code"].as_str() == Some("CF-ServiceBindingAppServiceTaken") => Ok(format!("app {app} ({app_guid}) was already bound")),
            _ => Err(self.api_err("bind", &what, "POST", path, s, &v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_and_json() {
        let c = CloudControllerConfig {
            api_url: "https://api.x".into(),
            client_id: Some("safeguard".into()),
            client_secret: Some("uaa-secret-991".into()),
            password: Some("user-pass-123".into()),
            ..CloudControllerConfig::default()
        };
        let d = format!("{c:?}");
        let j = serde_json::to_string(&c).unwrap();
        for s in ["uaa-secret-991", "user-pass-123"] {
            assert!(!d.contains(s) && !j.contains(s));
        }
        assert!(CloudController::new(&CloudControllerConfig { api_url: "https://api.x".into(), ..CloudControllerConfig::default() }).is_err());
    }

    #[test]
    fn credentials_in_the_api_url_stay_out_of_plans_debug_and_json() {
        let c = CloudControllerConfig {
            api_url: "https://admin:api-pass-31@api.x/?access_token=tok-32".into(),
            uaa_url: Some("https://u:uaa-pass-33@uaa.x".into()),
            client_id: Some("safeguard".into()),
            client_secret: Some("uaa-secret-991".into()),
            ..CloudControllerConfig::default()
        };
        let cc = CloudController::new(&c).unwrap();
        let plan = cc.describe(Op::Create, &OpContext::default()) + &cc.describe(Op::Bind, &OpContext::default());
        assert!(plan.contains("https://admin:***@api.x/"), "{plan}");
        for shown in [plan, format!("{c:?}"), serde_json::to_string(&c).unwrap()] {
            for s in ["api-pass-31", "tok-32", "uaa-pass-33", "uaa-secret-991"] {
                assert!(!shown.contains(s), "{s} in {shown}");
            }
        }
    }
}
