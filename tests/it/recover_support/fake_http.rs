//! Minimal HTTP/1.1 servers standing in for the Cloud Controller (+ UAA) and the Docker Engine API.
//! Neither platform can run on this machine (no Cloud Foundry, no Docker engine), so these implement
//! exactly the endpoints safeguard uses, with the answers (and error answers) the real ones give.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::common::base64;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    /// Path with the query string.
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Req {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, h: &str) -> &str {
        self.headers.get(&h.to_ascii_lowercase()).map(String::as_str).unwrap_or("")
    }
}

pub type Handler = Arc<dyn Fn(&Req) -> (u16, Value) + Send + Sync>;
pub type OnCreate = Box<dyn Fn(&str, &str) + Send>;
pub type OnStart = Box<dyn Fn(&str) + Send>;

async fn serve_conn<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: S, handler: Handler, log: Arc<Mutex<Vec<Req>>>) {
    let mut r = BufReader::new(stream);
    let mut first = String::new();
    if r.read_line(&mut first).await.unwrap_or(0) == 0 {
        return;
    }
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).await.unwrap_or(0) == 0 {
            break;
        }
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    if len > 0 && r.read_exact(&mut body).await.is_err() {
        return;
    }
    let req = Req { method, path, headers, body: String::from_utf8_lossy(&body).into_owned() };
    let (status, v) = handler(&req);
    log.lock().unwrap().push(req);
    let body = if status == 204 || status == 304 { String::new() } else { v.to_string() };
    let head = format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let mut s = r.into_inner();
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(body.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// A server on a loopback TCP port, in its own thread and runtime; stops when dropped with the test.
pub struct Server {
    pub url: String,
    pub log: Arc<Mutex<Vec<Req>>>,
}

impl Server {
    pub fn tcp(handler: Handler) -> Server {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l2 = log.clone();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((s, _)) = listener.accept().await else { break };
                    tokio::spawn(serve_conn(s, handler.clone(), l2.clone()));
                }
            });
        });
        Server { url: format!("http://127.0.0.1:{port}"), log }
    }

    pub fn unix(path: &std::path::Path, handler: Handler) -> Server {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l2 = log.clone();
        let std_listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((s, _)) = listener.accept().await else { break };
                    tokio::spawn(serve_conn(s, handler.clone(), l2.clone()));
                }
            });
        });
        Server { url: format!("unix://{}", path.display()), log }
    }

    pub fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }

    pub fn paths(&self) -> Vec<String> {
        self.requests().iter().map(|r| format!("{} {}", r.method, r.path)).collect()
    }
}

/// Cloud Controller v2 + UAA state.
pub struct CcState {
    pub client_id: String,
    pub client_secret: String,
    pub username: String,
    pub password: String,
    pub plan_unique_id: String,
    pub space_guid: String,
    /// name -> guid of service instances.
    pub instances: BTreeMap<String, String>,
    /// guid -> GETs left before the last operation succeeds.
    pub pending: BTreeMap<String, u32>,
    /// app name -> guid (in `space_guid`).
    pub apps: BTreeMap<String, String>,
    pub bindings: Vec<(String, String)>,
    /// The guid the next create returns.
    pub next_guid: String,
    /// Answer creates with HTTP 500.
    pub fail_create: bool,
    /// Called with (name, guid) on each successful create: the test makes the new instance "appear".
    pub on_create: Option<OnCreate>,
}

impl CcState {
    pub fn new(space_guid: &str) -> CcState {
        CcState {
            client_id: "safeguard".into(),
            client_secret: "uaa-client-secret-Pw7".into(),
            username: "admin".into(),
            password: "user-pass-Qq1".into(),
            plan_unique_id: "b96d0936-e423-11e5-accb-93d374e93368".into(),
            space_guid: space_guid.into(),
            instances: BTreeMap::new(),
            pending: BTreeMap::new(),
            apps: BTreeMap::new(),
            bindings: Vec::new(),
            next_guid: "5d1e0c4a-7e1b-4c53-9a1f-0b7c6a2d9e01".into(),
            fail_create: false,
            on_create: None,
        }
    }
}

fn cc_error(status: u16, code: u32, error_code: &str, description: &str) -> (u16, Value) {
    (status, json!({"code": code, "description": description, "error_code": error_code}))
}

fn query(path: &str) -> Vec<String> {
    let q = path.split_once('?').map_or("", |(_, q)| q);
    q.split('&').filter_map(|kv| kv.strip_prefix("q=")).map(|v| v.replace("%3A", ":").replace("%20", " ")).collect()
}

pub fn cloud_controller(state: Arc<Mutex<CcState>>) -> Server {
    let url_cell: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let u2 = url_cell.clone();
    let handler: Handler = Arc::new(move |r: &Req| {
        let mut st = state.lock().unwrap();
        let base = u2.lock().unwrap().clone();
        let p = r.path.split('?').next().unwrap_or("");
        match (r.method.as_str(), p) {
            ("GET", "/v2/info") => {
                (200, json!({"api_version": "2.150.0", "token_endpoint": format!("{base}/uaa"), "authorization_endpoint": format!("{base}/login")}))
            }
            ("POST", "/uaa/oauth/token") => {
                let client = format!("Basic {}", base64(format!("{}:{}", st.client_id, st.client_secret).as_bytes()));
                let cf = format!("Basic {}", base64(b"cf:"));
                let ok = if r.body.contains("grant_type=client_credentials") {
                    r.header("authorization") == client
                } else {
                    r.header("authorization") == cf
                        && r.body.contains(&format!("username={}", st.username))
                        && r.body.contains(&format!("password={}", st.password))
                };
                if ok {
                    (200, json!({"access_token": "tok-123", "token_type": "bearer", "expires_in": 599}))
                } else {
                    (401, json!({"error": "unauthorized", "error_description": "Bad credentials"}))
                }
            }
            _ if r.header("authorization") != "bearer tok-123" && r.header("authorization") != "Bearer tok-123" => {
                cc_error(401, 1000, "CF-InvalidAuthToken", "Invalid Auth Token")
            }
            ("GET", "/v2/service_plans") => {
                if query(&r.path).first().map(String::as_str) == Some(&format!("unique_id:{}", st.plan_unique_id)) {
                    (200, json!({"total_results": 1, "resources": [{"metadata": {"guid": "cc-plan-guid-solo"}, "entity": {"name": "solo"}}]}))
                } else {
                    (200, json!({"total_results": 0, "resources": []}))
                }
            }
            ("POST", "/v2/service_instances") => {
                let b = r.json();
                if st.fail_create {
                    return cc_error(500, 10001, "UnknownError", "An unknown error occurred.");
                }
                if b["service_plan_guid"] != "cc-plan-guid-solo" || b["space_guid"] != st.space_guid.as_str() {
                    return cc_error(400, 1001, "CF-MessageParseError", "bad plan or space");
                }
                let name = b["name"].as_str().unwrap_or("").to_string();
                if st.instances.contains_key(&name) {
                    return cc_error(400, 60002, "CF-ServiceInstanceNameTaken", &format!("The service instance name is taken: {name}"));
                }
                let guid = st.next_guid.clone();
                st.instances.insert(name.clone(), guid.clone());
                st.pending.insert(guid.clone(), 2);
                if let Some(f) = &st.on_create {
                    f(&name, &guid);
                }
                (202, json!({"metadata": {"guid": guid}, "entity": {"name": name, "last_operation": {"type": "create", "state": "in progress"}}}))
            }
            ("GET", "/v2/service_instances") => {
                let q = query(&r.path);
                let name = q.iter().find_map(|v| v.strip_prefix("name:")).unwrap_or("");
                match st.instances.get(name) {
                    Some(g) => (200, json!({"total_results": 1, "resources": [{"metadata": {"guid": g}}]})),
                    None => (200, json!({"total_results": 0, "resources": []})),
                }
            }
            ("GET", p) if p.starts_with("/v2/service_instances/") => {
                let guid = p.trim_start_matches("/v2/service_instances/").to_string();
                match st.pending.get_mut(&guid) {
                    Some(n) => {
                        let state = if *n == 0 { "succeeded" } else { "in progress" };
                        *n = n.saturating_sub(1);
                        (200, json!({"metadata": {"guid": guid}, "entity": {"last_operation": {"state": state}}}))
                    }
                    None => cc_error(404, 60004, "CF-ServiceInstanceNotFound", &format!("The service instance could not be found: {guid}")),
                }
            }
            ("GET", "/v2/apps") => {
                let q = query(&r.path);
                let name = q.iter().find_map(|v| v.strip_prefix("name:")).unwrap_or("");
                let space_ok = q.iter().any(|v| v.strip_prefix("space_guid:") == Some(st.space_guid.as_str()));
                match st.apps.get(name) {
                    Some(g) if space_ok => (200, json!({"total_results": 1, "resources": [{"metadata": {"guid": g}}]})),
                    _ => (200, json!({"total_results": 0, "resources": []})),
                }
            }
            ("POST", "/v2/service_bindings") => {
                let b = r.json();
                let pair = (b["service_instance_guid"].as_str().unwrap_or("").to_string(), b["app_guid"].as_str().unwrap_or("").to_string());
                if st.bindings.contains(&pair) {
                    return cc_error(400, 90003, "CF-ServiceBindingAppServiceTaken", "The app is already bound to the service.");
                }
                st.bindings.push(pair);
                (201, json!({"metadata": {"guid": format!("binding-{}", st.bindings.len())}}))
            }
            _ => cc_error(404, 10000, "CF-NotFound", "Unknown request"),
        }
    });
    let s = Server::tcp(handler);
    *url_cell.lock().unwrap() = s.url.clone();
    s
}

/// Docker Engine state: containers by name.
pub struct DockerState {
    pub running: BTreeMap<String, bool>,
    pub image: String,
    /// Exit status of the flush helper.
    pub helper_exit: i64,
    pub helpers: BTreeMap<String, String>,
    /// Called when a container is started (the test makes its restore "appear" in the stream).
    pub on_start: Option<OnStart>,
    /// Set when a flush helper ran for a container.
    pub flushed: Vec<String>,
}

impl DockerState {
    pub fn new(containers: &[&str]) -> DockerState {
        DockerState {
            running: containers.iter().map(|c| (c.to_string(), true)).collect(),
            image: "dingotiles/dingo-postgresql:0.9".into(),
            helper_exit: 0,
            helpers: BTreeMap::new(),
            on_start: None,
            flushed: Vec::new(),
        }
    }
}

fn no_such(c: &str) -> (u16, Value) {
    (404, json!({"message": format!("No such container: {c}")}))
}

pub fn docker_handler(state: Arc<Mutex<DockerState>>) -> Handler {
    Arc::new(move |r: &Req| {
        let mut st = state.lock().unwrap();
        let path = r.path.split('?').next().unwrap_or("");
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (r.method.as_str(), parts.as_slice()) {
            ("POST", ["containers", "create"]) => {
                let name = r.path.split("name=").nth(1).unwrap_or("").to_string();
                if st.helpers.contains_key(&name) {
                    return (409, json!({"message": format!("Conflict. The container name \"/{name}\" is already in use")}));
                }
                let b = r.json();
                let target = b["HostConfig"]["VolumesFrom"][0].as_str().unwrap_or("").to_string();
                if !st.running.contains_key(&target) || b["Image"] != st.image.as_str() {
                    return (400, json!({"message": "bad helper"}));
                }
                st.helpers.insert(name.clone(), target);
                (201, json!({"Id": format!("helper-{name}"), "Warnings": []}))
            }
            ("DELETE", [_, c]) => {
                if st.helpers.remove(*c).is_some() {
                    (204, Value::Null)
                } else {
                    no_such(c)
                }
            }
            ("GET", [_, c, "json"]) => match st.running.get(*c) {
                Some(run) => (200, json!({"Id": "abc", "Name": format!("/{c}"), "State": {"Running": run}, "Config": {"Image": st.image}})),
                None => no_such(c),
            },
            ("POST", [_, c, "stop"]) => match st.running.get(*c).copied() {
                Some(true) => {
                    st.running.insert(c.to_string(), false);
                    (204, Value::Null)
                }
                Some(false) => (304, Value::Null),
                None => no_such(c),
            },
            ("POST", [_, c, "start"]) if c.starts_with("helper-") => (204, Value::Null),
            ("POST", [_, c, "start"]) => match st.running.get(*c).copied() {
                Some(false) => {
                    st.running.insert(c.to_string(), true);
                    if let Some(f) = &st.on_start {
                        f(c);
                    }
                    (204, Value::Null)
                }
                Some(true) => (304, Value::Null),
                None => no_such(c),
            },
            ("POST", [_, c, "wait"]) if c.starts_with("helper-") => {
                let name = c.trim_start_matches("helper-");
                if let Some(t) = st.helpers.get(name).cloned() {
                    if st.helper_exit == 0 {
                        st.flushed.push(t);
                    }
                }
                (200, json!({"StatusCode": st.helper_exit}))
            }
            _ => (404, json!({"message": format!("page not found: {} {}", r.method, r.path)})),
        }
    })
}
