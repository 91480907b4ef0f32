//! `safeguard doctor` against the real services started by scripts/test.sh (Kafka protocol, S3, etcd,
//! SMTP), plus a webhook receiver and a Cloud Controller/UAA stand-in served by the test. All pass; then
//! each connection is misconfigured in turn (a closed port, a wrong bucket, a missing topic, a wrong
//! secret...) and exactly that check fails, with its reason, while the others still pass. The shared
//! services are never stopped.

use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, create_topic, env, fixture, free_port, run, KillOnDrop};
use serde_json::Value;

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    free_port()
}

fn unique(name: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000;
    format!("doctor-{name}-{}-{n}", std::process::id())
}

const S3_SECRET: &str = "doctor-s3-secret-key-4711";
const CC_SECRET: &str = "doctor-cc-secret-0815";

fn create_bucket_with_backup(bucket: &str) {
    let cfg = safeguard::s3::S3Config {
        endpoint: Some(env("SAFEGUARD_TEST_S3")),
        path_style: true,
        access_key_id: Some("test".into()),
        secret_access_key: Some(S3_SECRET.into()),
        timeout: Duration::from_secs(5),
        max_attempts: 2,
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = safeguard::s3::ObjectStore::connect(&cfg).unwrap();
        let c = store.client().await;
        c.create_bucket().bucket(bucket).send().await.expect("create bucket");
        c.put_object()
            .bucket(bucket)
            .key("backups/6e101b27-ee1b-4f4d-a032-4401a3709ec3/wal/wal_005/000000010000000000000001.lzo")
            .body(b"wal".to_vec().into())
            .send()
            .await
            .expect("put object");
    });
}

/// A tiny HTTP server on its own thread: `handler(method, path, authorization)` -> (status, JSON body).
fn http_server(handler: fn(&str, &str, Option<&str>, u16) -> (u16, String)) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                if r.read_line(&mut first).is_err() {
                    return;
                }
                let mut auth = None;
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    let lower = h.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if lower.starts_with("authorization:") {
                        auth = Some(h["authorization:".len()..].trim().to_string());
                    }
                }
                let mut body = vec![0u8; len];
                let _ = r.read_exact(&mut body);
                let mut parts = first.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let (status, body) = handler(method, path, auth.as_deref(), port);
                let mut w = conn;
                let _ = write!(w, "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            });
        }
    });
    port
}

/// Answers anything with 200: a webhook receiver.
fn webhook_receiver() -> u16 {
    http_server(|_, _, _, _| (200, "{}".into()))
}

/// `/v2/info` names this server as UAA; `/oauth/token` grants a token to safeguard:CC_SECRET only.
fn cloud_controller() -> u16 {
    http_server(|method, path, auth, port| match (method, path) {
        ("GET", "/v2/info") => (200, format!(r#"{{"token_endpoint":"http://127.0.0.1:{port}"}}"#)),
        ("POST", "/oauth/token") => {
            // Basic base64("safeguard:" + CC_SECRET)
            let expected = format!("Basic {}", common::base64(format!("safeguard:{CC_SECRET}").as_bytes()));
            if auth == Some(expected.as_str()) {
                (200, r#"{"access_token":"tok","token_type":"bearer"}"#.into())
            } else {
                (401, r#"{"error":"unauthorized","error_description":"Bad credentials"}"#.into())
            }
        }
        _ => (404, "{}".into()),
    })
}

/// The config as sections, so each case can replace one.
struct Setup {
    sections: BTreeMap<&'static str, String>,
}

impl Setup {
    fn real(topic: &str, bucket: &str, webhook: u16, cc: u16, http: u16) -> Setup {
        let smtp = env("SAFEGUARD_TEST_SMTP");
        let (host, port) = smtp.split_once(':').unwrap();
        let mut s = BTreeMap::new();
        s.insert(
            "kafka",
            format!("[[sources]]\ntype = \"kafka\"\nbrokers = [\"{}\"]\ntopics = [\"{topic}\"]\ngroup_id = \"{topic}-group\"\n", env("SAFEGUARD_TEST_KAFKA")),
        );
        s.insert(
            "s3",
            format!(
                "[s3]\nendpoint = \"{}\"\npath_style = true\naccess_key_id = \"test\"\nsecret_access_key = \"{S3_SECRET}\"\ntimeout = \"3s\"\nmax_attempts = 1\n",
                env("SAFEGUARD_TEST_S3")
            ),
        );
        s.insert("doctor", format!("[doctor]\ns3_prefix = \"s3://{bucket}/backups/\"\n"));
        s.insert("etcd", format!("[etcd]\nurl = \"{}\"\ntimeout = \"5s\"\n", env("SAFEGUARD_TEST_ETCD")));
        s.insert(
            "email",
            format!("[alerts.email]\nhost = \"{host}\"\nport = {port}\nsecurity = \"none\"\nfrom = \"safeguard@example.com\"\nto = [\"ops@example.com\"]\ntimeout = \"5s\"\n"),
        );
        s.insert("webhook", format!("[alerts.webhook]\nurl = \"http://127.0.0.1:{webhook}/hooks/T000/B000/secretpath\"\ntimeout = \"5s\"\n"));
        s.insert(
            "cc",
            format!("[cloud_controller]\napi_url = \"http://127.0.0.1:{cc}\"\nclient_id = \"safeguard\"\nclient_secret = \"{CC_SECRET}\"\ntimeout = \"5s\"\n"),
        );
        s.insert("http", format!("[http]\nlisten = \"127.0.0.1:{http}\"\n"));
        // Its own brokers: a case that breaks the kafka source leaves the election's check alone.
        s.insert(
            "leader",
            format!(
                "[leader]\nbrokers = [\"{}\"]\ngroup_id = \"{topic}-lead\"\ntopic = \"{topic}-leader\"\ndeliveries_topic = \"{topic}-deliveries\"\n",
                env("SAFEGUARD_TEST_KAFKA")
            ),
        );
        Setup { sections: s }
    }

    fn with(&self, key: &'static str, text: String) -> Setup {
        let mut sections = self.sections.clone();
        sections.insert(key, text);
        Setup { sections }
    }

    /// Sections in an order TOML accepts ([alerts.*] tables together, [[sources]] anywhere).
    fn text(&self) -> String {
        ["kafka", "s3", "doctor", "etcd", "cc", "http", "leader", "email", "webhook"].iter().map(|k| self.sections[k].clone()).collect::<Vec<_>>().join("\n")
    }
}

fn doctor(dir: &Path, setup: &Setup, store: &Path, timeout: &str) -> (i32, Value, String) {
    let cfg = dir.join(format!("c-{}.toml", free_port()));
    std::fs::write(&cfg, setup.text()).unwrap();
    let (c, s) = (cfg.to_str().unwrap(), store.to_str().unwrap());
    let (code, out, err) = run(&["--config", c, "--store", s, "doctor", "--json", "--timeout", timeout]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}):\n{out}\n{err}"));
    let (_, text, _) = run(&["--config", c, "--store", s, "doctor", "--timeout", timeout]);
    (code, v, text)
}

fn statuses(v: &Value) -> BTreeMap<String, (String, String)> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_string(),
                (c["status"].as_str().unwrap().to_string(), format!("{} | hint: {}", c["detail"].as_str().unwrap_or(""), c["hint"].as_str().unwrap_or(""))),
            )
        })
        .collect()
}

const ALL: [&str; 9] = ["store", "kafka", "s3", "etcd", "smtp", "webhook", "cloud_controller", "http", "leader"];

fn assert_no_secrets(text: &str) {
    for s in [S3_SECRET, CC_SECRET, "secretpath"] {
        assert!(!text.contains(s), "doctor output leaks {s}:\n{text}");
    }
}

struct Env {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    store: std::path::PathBuf,
    setup: Setup,
    topic: String,
}

fn setup() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let topic = unique("t");
    create_topic(&env("SAFEGUARD_TEST_TANSU"), &env("SAFEGUARD_TEST_KAFKA"), &topic, 2);
    for t in [format!("{topic}-leader"), format!("{topic}-deliveries")] {
        create_topic(&env("SAFEGUARD_TEST_TANSU"), &env("SAFEGUARD_TEST_KAFKA"), &t, 1);
    }
    let bucket = unique("b");
    create_bucket_with_backup(&bucket);
    let store = dir.join("store");
    let (code, _, err) = run(&["ingest", fixture("scenarios/seed.log").to_str().unwrap(), "--store", store.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let setup = Setup::real(&topic, &bucket, webhook_receiver(), cloud_controller(), free_port());
    Env { _tmp: tmp, dir, store, setup, topic }
}

#[test]
fn every_configured_check_passes_against_the_real_services() {
    let e = setup();
    let (code, v, text) = doctor(&e.dir, &e.setup, &e.store, "15s");
    let st = statuses(&v);
    for name in ALL {
        assert_eq!(st.get(name).map(|s| s.0.as_str()), Some("pass"), "{name}: {:?}\n{text}", st.get(name));
    }
    assert_eq!(code, 0, "{text}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["failed"], 0);
    assert_eq!(v["skipped"], 0);
    let detail = |n: &str| st[n].1.clone();
    assert!(
        detail("store").contains(&format!("schema {}", safeguard::store::SCHEMA_VERSION)) && detail("store").contains("3 instance(s)"),
        "{}",
        detail("store")
    );
    assert!(detail("kafka").contains(&format!("{} (2 partition(s))", e.topic)) && detail("kafka").contains("coordinator answered"), "{}", detail("kafka"));
    assert!(detail("s3").contains("objects present"), "{}", detail("s3"));
    assert!(detail("cloud_controller").contains("issued a token"), "{}", detail("cloud_controller"));
    assert!(text.contains("PASS  kafka") && text.contains("all 9 configured check(s) passed"), "{text}");
    assert_no_secrets(&text);
    assert_no_secrets(&v.to_string());
}

#[test]
fn each_misconfigured_connection_fails_alone_with_its_reason() {
    let e = setup();
    let broker = env("SAFEGUARD_TEST_KAFKA");
    let smtp = env("SAFEGUARD_TEST_SMTP");
    let (host, port) = smtp.split_once(':').unwrap();
    let s3 = |endpoint: String, bucket: &str| {
        (
            format!("[s3]\nendpoint = \"{endpoint}\"\npath_style = true\naccess_key_id = \"test\"\nsecret_access_key = \"{S3_SECRET}\"\ntimeout = \"3s\"\nmax_attempts = 1\n"),
            format!("[doctor]\ns3_prefix = \"s3://{bucket}/backups/\"\n"),
        )
    };
    let email = |port: &str, security: &str| {
        format!("[alerts.email]\nhost = \"{host}\"\nport = {port}\nsecurity = \"{security}\"\nfrom = \"safeguard@example.com\"\nto = [\"ops@example.com\"]\ntimeout = \"5s\"\n")
    };
    let store_file = e.dir.join("not-a-directory");
    std::fs::write(&store_file, "x").unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();

    // (check, config with one section replaced, store, expected text in its detail)
    let closed = closed_port();
    let mut cases: Vec<(&str, Setup, std::path::PathBuf, String)> = vec![
        (
            "kafka",
            e.setup.with("kafka", format!("[[sources]]\ntype = \"kafka\"\nbrokers = [\"127.0.0.1:{closed}\"]\ntopics = [\"{}\"]\ngroup_id = \"g\"\n", e.topic)),
            e.store.clone(),
            format!("metadata for topic {} failed", e.topic),
        ),
        (
            "kafka",
            e.setup.with("kafka", format!("[[sources]]\ntype = \"kafka\"\nbrokers = [\"{broker}\"]\ntopics = [\"{}\"]\ngroup_id = \"g\"\n", unique("missing"))),
            e.store.clone(),
            "Unknown topic or partition".into(),
        ),
        ("smtp", e.setup.with("email", email(&closed.to_string(), "none")), e.store.clone(), format!("127.0.0.1:{closed} failed")),
        ("smtp", e.setup.with("email", email(port, "starttls")), e.store.clone(), "STARTTLS".into()),
        (
            "etcd",
            e.setup.with("etcd", format!("[etcd]\nurl = \"http://127.0.0.1:{closed}\"\ntimeout = \"5s\"\n")),
            e.store.clone(),
            "could not reach etcd".into(),
        ),
        // Something that is not etcd's v2 API (the S3 server) at the etcd URL.
        ("etcd", e.setup.with("etcd", format!("[etcd]\nurl = \"{}\"\ntimeout = \"5s\"\n", env("SAFEGUARD_TEST_S3"))), e.store.clone(), "v2 client URL".into()),
        (
            "webhook",
            e.setup.with("webhook", format!("[alerts.webhook]\nurl = \"http://127.0.0.1:{closed}/hooks/secretpath\"\n")),
            e.store.clone(),
            "failed".into(),
        ),
        (
            "cloud_controller",
            e.setup.with(
                "cc",
                format!(
                    "[cloud_controller]\napi_url = \"http://127.0.0.1:{}\"\nclient_id = \"safeguard\"\nclient_secret = \"wrong-{CC_SECRET}\"\n",
                    cloud_controller()
                ),
            ),
            e.store.clone(),
            "HTTP 401 unauthorized Bad credentials".into(),
        ),
        (
            "cloud_controller",
            e.setup.with(
                "cc",
                format!("[cloud_controller]\napi_url = \"http://127.0.0.1:{closed}\"\nclient_id = \"safeguard\"\nclient_secret = \"{CC_SECRET}\"\n"),
            ),
            e.store.clone(),
            "could not be reached".into(),
        ),
        ("http", e.setup.with("http", format!("[http]\nlisten = \"127.0.0.1:{busy_port}\"\n")), e.store.clone(), "cannot be bound".into()),
        // The config unchanged; the store path is a regular file.
        ("store", e.setup.with("http", e.setup.sections["http"].clone()), store_file.clone(), "cannot open the store".into()),
    ];
    {
        let (s3s, d) = s3(env("SAFEGUARD_TEST_S3"), &unique("nobucket"));
        cases.push(("s3", e.setup.with("s3", s3s).with("doctor", d), e.store.clone(), "does not exist".into()));
        let (s3s, d) = s3(format!("http://127.0.0.1:{closed}"), "any");
        cases.push(("s3", e.setup.with("s3", s3s).with("doctor", d), e.store.clone(), "could not list".into()));
        cases.push(("s3", e.setup.with("doctor", "[doctor]\n".into()), e.store.clone(), "[doctor] s3_prefix is not set".into()));
    }

    for (check, setup, store, expected) in cases {
        let (code, v, text) = doctor(&e.dir, &setup, &store, "10s");
        let st = statuses(&v);
        assert_eq!(code, 1, "{check} misconfigured: doctor must exit 1\n{text}");
        let (status, detail) = &st[check];
        assert_eq!(status, "fail", "{check} should fail:\n{text}");
        assert!(detail.contains(&expected), "{check}: expected {expected:?} in {detail:?}\n{text}");
        assert!(detail.contains("hint: ") && !detail.ends_with("hint: "), "{check}: a failure carries a hint: {detail}");
        for other in ALL.iter().filter(|o| **o != check) {
            assert_eq!(st[*other].0, "pass", "with only {check} misconfigured, {other} must still pass: {}\n{text}", st[*other].1);
        }
        assert_eq!(v["failed"], 1, "{text}");
        assert!(text.contains(&format!("FAIL  {check}")) && text.contains("1 of 9 configured check(s) FAILED"), "{text}");
        assert_no_secrets(&text);
        assert_no_secrets(&v.to_string());
    }
    drop(busy);
}

#[test]
fn a_silent_service_fails_at_the_timeout_and_the_others_still_answer() {
    let e = setup();
    // Accepts connections (the kernel completes them) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let s = e.setup.with("etcd", format!("[etcd]\nurl = \"http://127.0.0.1:{port}\"\ntimeout = \"60s\"\n"));
    let start = Instant::now();
    let (code, v, text) = doctor(&e.dir, &s, &e.store, "3s");
    assert!(start.elapsed() < Duration::from_secs(30), "two doctor runs with a 3s bound took {:?}", start.elapsed());
    let st = statuses(&v);
    assert_eq!(code, 1);
    assert_eq!(st["etcd"].0, "fail");
    assert!(st["etcd"].1.contains("no answer within 3s"), "{}", st["etcd"].1);
    for other in ALL.iter().filter(|o| **o != "etcd") {
        assert_eq!(st[*other].0, "pass", "{other}: {}\n{text}", st[*other].1);
    }
    drop(silent);
}

#[test]
fn unconfigured_checks_are_skipped_and_do_not_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let (code, out, err) = run(&["--store", store.to_str().unwrap(), "doctor", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let st = statuses(&v);
    assert_eq!(st["store"].0, "pass");
    assert!(st["store"].1.contains("not created yet"), "{:?}", st["store"]);
    for name in ["kafka", "s3", "etcd", "smtp", "webhook", "cloud_controller", "http"] {
        assert_eq!(st[name].0, "skip", "{name}");
    }
    assert!(!store.exists(), "doctor must not create the store");
}

#[test]
fn with_a_watcher_running_the_store_and_http_checks_go_through_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let (code, _, err) = run(&["ingest", fixture("scenarios/seed.log").to_str().unwrap(), "--store", store.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (syslog, http) = (free_port(), free_port());
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, format!("[[sources]]\ntype = \"syslog\"\ntcp = \"127.0.0.1:{syslog}\"\n\n[http]\nlisten = \"127.0.0.1:{http}\"\n")).unwrap();
    let (c, s) = (cfg.to_str().unwrap(), store.to_str().unwrap());
    let child = Command::new(bin()).args(["--config", c, "--store", s, "watch"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let _w = KillOnDrop(child);
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", http)).is_err() || TcpStream::connect(("127.0.0.1", syslog)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "the watcher did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Ready once the engine has committed.
    let mut last = (0, Value::Null);
    while start.elapsed() < Duration::from_secs(20) {
        let (code, out, _) = run(&["--config", c, "--store", s, "doctor", "--json"]);
        last = (code, serde_json::from_str(&out).unwrap());
        if code == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let (code, v) = last;
    let st = statuses(&v);
    assert_eq!(code, 0, "{v:#}");
    assert!(st["store"].1.contains("a running watcher holds it") && st["store"].1.contains("3 instance(s)"), "{:?}", st["store"]);
    assert!(st["http"].1.contains("/readyz: ready"), "{:?}", st["http"]);
}
