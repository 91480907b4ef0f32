//! Credentials written into URLs, and secrets a server echoes back, never leave the process: the real
//! binary runs `doctor` (text and JSON), the `recover` plan (text and JSON) and a recovery whose etcd step
//! fails (journaled), and `watch` delivers to a webhook receiver that answers 500 with an echo of the
//! request. Every output, the log at debug level and every byte of the store and its journal are searched
//! for each secret, while the services still get the real credentials. Also the hardening that came with
//! it: no journal at a mistyped `--store`, output into a closed pipe, an OS error printed once.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use common::{bin, env, free_port, lager, run, wait_until, KillOnDrop};
use safeguard::s3::{ObjectStore, S3Url};
use safeguard::timeutil::{now_ms, rfc3339};
use serde_json::Value;

const ETCD_PASS: &str = "etcdPassZ81k";
const ETCD_TOKEN: &str = "etcdTokQ55w";
const CC_PASS: &str = "ccPassM3x7";
const CC_TOKEN: &str = "ccTokR2d9";
const CC_SECRET: &str = "ccSecretV6b1";
const HOOK_PASS: &str = "hookPassN4c2";
const HOOK_PATH: &str = "hookPathT0B0X9";
const HOOK_TOKEN: &str = "hookTokJ7u3";
const HOOK_BEARER: &str = "hookBearerY1e8";
const HOOK_APIKEY: &str = "hookApiKeyW5q4";
const S3_SECRET: &str = "s3SecretK2p6";
const S3_PASS: &str = "s3PassL9r3";

/// Every secret any test here plants.
const SECRETS: &[&str] = &[ETCD_PASS, ETCD_TOKEN, CC_PASS, CC_TOKEN, CC_SECRET, HOOK_PASS, HOOK_PATH, HOOK_TOKEN, HOOK_BEARER, HOOK_APIKEY, S3_SECRET, S3_PASS];

/// Fails naming the secret and where it was found.
fn assert_clean(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{s} leaked into {what}:\n{text}");
    }
    // The base64 of `user:password` (HTTP Basic) of each URL's credentials.
    for (u, p) in [("root", ETCD_PASS), ("cc", CC_PASS), ("hook", HOOK_PASS)] {
        let b = common::base64(format!("{u}:{p}").as_bytes());
        assert!(!text.contains(&b), "the Basic credentials of {u} leaked into {what}:\n{text}");
    }
}

/// Every file under `dir`, byte for byte (the store's `db`, `snapshot`, `conf`, blobs, the journal).
fn assert_files_clean(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            n += assert_files_clean(&p);
        } else if p.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            assert_clean(&p.display().to_string(), &String::from_utf8_lossy(&bytes));
            n += 1;
        }
    }
    n
}

/// Runs the binary with a debug log; returns (code, stdout, stderr).
fn run_debug(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).env("RUST_LOG", "debug").env_remove("SAFEGUARD_RECOVER_CRASH").stdin(Stdio::null()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `http://127.0.0.1:<port>` of a service from `.services/env`, with `user:pass@` written into it.
fn with_userinfo(url: &str, user: &str, pass: &str) -> String {
    url.replacen("://", &format!("://{user}:{pass}@"), 1)
}

fn closed_port() -> u16 {
    free_port()
}

// ------------------------------------------------------------------------------------------- doctor

#[test]
fn doctor_text_and_json_show_no_credential_of_any_url_while_using_them() {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = with_userinfo(&env("SAFEGUARD_TEST_ETCD"), "root", ETCD_PASS);
    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[s3]
endpoint = "http://s3user:{S3_PASS}@127.0.0.1:{s3port}"
access_key_id = "testing-key"
secret_access_key = "{S3_SECRET}"
path_style = true
timeout = "2s"
max_attempts = 1

[doctor]
s3_prefix = "s3://doctor-redaction/backups/"

[etcd]
url = "{etcd}"
timeout = "5s"

[cloud_controller]
api_url = "http://cc:{CC_PASS}@127.0.0.1:{ccport}/?access_token={CC_TOKEN}"
client_id = "safeguard"
client_secret = "{CC_SECRET}"
timeout = "2s"

[alerts.webhook]
url = "http://hook:{HOOK_PASS}@127.0.0.1:{hookport}/services/{HOOK_PATH}?token={HOOK_TOKEN}"
headers = {{ Authorization = "Bearer {HOOK_BEARER}" }}
timeout = "2s"
"#,
            s3port = closed_port(),
            ccport = closed_port(),
            hookport = closed_port(),
        ),
    )
    .unwrap();
    let store = tmp.path().join("store");
    let base = ["--config", cfg.to_str().unwrap(), "--store", store.to_str().unwrap(), "doctor", "--timeout", "10s"];

    let (code, out, err) = run_debug(&base);
    assert_eq!(code, 1, "the closed ports fail their checks:\n{out}\n{err}");
    assert_clean("doctor's output", &out);
    assert_clean("doctor's log", &err);
    // The URLs are still shown, with their credentials masked; the password was used: etcd answered.
    assert!(out.contains("root:***@127.0.0.1"), "{out}");
    assert!(out.contains("cc:***@127.0.0.1") && out.contains("access_token=***"), "{out}");
    assert!(out.contains("hook:***@127.0.0.1"), "{out}");

    let (code, out, err) = run_debug(&[&base[..], &["--json"]].concat());
    assert_eq!(code, 1, "{out}\n{err}");
    assert_clean("doctor --json", &out);
    assert_clean("doctor --json's log", &err);
    let v: Value = serde_json::from_str(&out).unwrap();
    let check = |name: &str| v["checks"].as_array().unwrap().iter().find(|c| c["check"] == name).cloned().unwrap_or_else(|| panic!("no {name} check: {out}"));
    assert_eq!(check("etcd")["status"], "pass", "etcd is reached through the URL with its credentials: {out}");
    for failing in ["cloud_controller", "webhook", "s3"] {
        assert_eq!(check(failing)["status"], "fail", "{out}");
    }
}

// ------------------------------------------------------------------------------------------- recover

fn seg(n: u32) -> String {
    format!("00000001000000000000{n:04X}")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A deleted source instance with a complete base backup and WAL, a fresh target on a known cell.
struct World {
    tmp: tempfile::TempDir,
    store: PathBuf,
    bucket: String,
    source: String,
    target: String,
    target_node: String,
}

fn uuid(rng: &mut safeguard::gen::Rng) -> String {
    rng.uuid()
}

impl World {
    fn new() -> World {
        let mut rng = safeguard::gen::Rng::new(now_ms() as u64 ^ u64::from(std::process::id()));
        let bucket = format!("sg-redact-{}", &uuid(&mut rng)[..8]);
        let tmp = tempfile::tempdir().unwrap();
        let w = World { store: tmp.path().join("store"), bucket, source: uuid(&mut rng), target: uuid(&mut rng), target_node: uuid(&mut rng), tmp };
        let source_node = uuid(&mut rng);
        let s3 = ObjectStore::connect(&common::s3_config(env("SAFEGUARD_TEST_S3"), S3_SECRET)).unwrap();
        let src = w.prefix(&w.source);
        let dst = w.prefix(&w.target);
        let dir = format!("basebackups_005/base_{}_00000028", seg(2));
        let mut objects: Vec<(S3Url, Vec<u8>)> = vec![
            (src.join("sysids/sysid"), b"6352426361234567890".to_vec()),
            (src.join(&format!("{dir}/extended_version.txt")), b"PostgreSQL 14.23".to_vec()),
            (src.join(&format!("{dir}/tar_partitions/part_00000000.tar.lzo")), b"\x89LZO partition".to_vec()),
            (dst.join("sysids/sysid"), b"6352426361234567891".to_vec()),
        ];
        for n in 1..=4 {
            objects.push((src.join(&format!("wal_005/{}.lzo", seg(n))), format!("segment {n}").into_bytes()));
        }
        let sentinel = format!(r#"{{"wal_segment_backup_stop": "{}", "wal_segment_offset_backup_stop": "00000138"}}"#, seg(2));
        objects.push((src.join(&format!("basebackups_005/base_{}_00000028_backup_stop_sentinel.json", seg(2))), sentinel.into_bytes()));
        rt().block_on(async {
            let c = s3.client().await;
            c.create_bucket().bucket(&w.bucket).send().await.expect("create bucket");
            for (url, body) in objects {
                c.put_object().bucket(&url.bucket).key(&url.key).body(ByteStream::from(body)).send().await.expect("put object");
            }
        });
        let t = now_ms() - 3_600_000;
        let mut lines = w.instance_lines(t, &w.source, &source_node, "cell-a", "orders-db", true);
        lines.extend(w.instance_lines(t + 10_000, &w.target, &w.target_node, "cell-b", "orders-db-restored", false));
        let log = w.tmp.path().join("seed.log");
        std::fs::write(&log, lines.join("\n") + "\n").unwrap();
        let store = safeguard::store::Store::open(&w.store, 16 << 20).unwrap();
        let s = safeguard::ingest::ingest(&store, safeguard::pipeline::EngineConfig::default(), &[log]).unwrap();
        assert_eq!(s.counters.lines_rejected, 0, "{:?}", s.counters.rejected_by_reason);
        w
    }

    fn prefix(&self, id: &str) -> S3Url {
        S3Url::instance_prefix(&self.bucket, id).unwrap()
    }

    fn instance_lines(&self, t: i64, id: &str, node: &str, cell: &str, name: &str, deleted: bool) -> Vec<String> {
        let line = |t: i64, host: &str, app: &str, msg: &str| format!("<134>1 {} {host} {app} - - - {msg}", rfc3339(t));
        let key = self.prefix(id).join(&format!("wal_005/{}.lzo", seg(1)));
        let mut v = vec![
            lager(t, "provision.start", &format!(r#""instance-id":"{id}","organization_guid":"org-1","space_guid":"space-2","name":"{name}""#)),
            lager(t + 1000, "add-node.perform", &format!(r#""instance-id":"{id}","node-uuid":"{node}""#)),
            line(
                t + 3000,
                cell,
                &format!("cf-{node}"),
                &format!(
                    "patroni>         STRUCTURED: time={} pid=221 action=push-wal key={key} prefix={} seg={} state=complete",
                    rfc3339(t + 3000).replace('Z', "-00"),
                    self.prefix(id).key,
                    seg(1)
                ),
            ),
        ];
        if deleted {
            v.push(lager(t + 4000, "remove-node.perform", &format!(r#""instance-id":"{id}","node-uuid":"{node}","backend":"10.0.0.9""#)));
        }
        v
    }

    /// Real S3; etcd behind a closed port (step 5 fails, after the copy), with credentials in its URL;
    /// a Cloud Controller URL with credentials (the plan's bind step shows it); commands that log.
    fn config(&self) -> PathBuf {
        let ops = self.tmp.path().join("ops.log");
        let text = format!(
            r#"
[s3]
endpoint = "{s3}"
region = "us-east-1"
path_style = true
access_key_id = "testing-key"
secret_access_key = "{S3_SECRET}"
timeout = "10s"
max_attempts = 2

[etcd]
url = "http://root:{ETCD_PASS}@127.0.0.1:{etcd_port}/?token={ETCD_TOKEN}"
timeout = "3s"

[recover]
target_wait = "3s"
confirm_timeout = "3s"
poll_interval = "200ms"

[platform]
type = "commands"

[platform.commands]
stop = "echo stop {{container}} >> '{ops}'"
flush = "echo flush {{container}} >> '{ops}'"
start = "echo start {{container}} >> '{ops}'"

[cloud_controller]
api_url = "http://cc:{CC_PASS}@127.0.0.1:9/?access_token={CC_TOKEN}"
client_id = "safeguard"
client_secret = "{CC_SECRET}"
"#,
            s3 = env("SAFEGUARD_TEST_S3"),
            etcd_port = closed_port(),
            ops = ops.display(),
        );
        let p = self.tmp.path().join("safeguard.toml");
        std::fs::write(&p, text).unwrap();
        p
    }
}

#[test]
fn the_recover_plan_its_journal_and_a_failed_etcd_step_show_no_credential() {
    let w = World::new();
    let cfg = w.config();
    let (cfg_s, store_s) = (cfg.to_str().unwrap(), w.store.to_str().unwrap());
    let base = ["--config", cfg_s, "--store", store_s, "recover", &w.source, "--into", &w.target, "--bind-app", "orders"];

    let (code, out, err) = run_debug(&base);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_clean("the plan", &out);
    assert_clean("the plan's log", &err);
    // The plan still says where etcd and the Cloud Controller are.
    assert!(out.contains("etcd http://root:***@127.0.0.1:"), "{out}");
    assert!(out.contains("http://cc:***@127.0.0.1:9/?access_token=***"), "{out}");

    let (code, out, err) = run_debug(&[&base[..], &["--json"]].concat());
    assert_eq!(code, 0, "{err}");
    assert_clean("the JSON plan", &out);
    assert_clean("the JSON plan's log", &err);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["plan"]["etcd_url"].as_str().is_some_and(|u| u.starts_with("http://root:***@127.0.0.1:")), "{out}");

    // Executed: the copy runs, then the etcd step fails on the closed port; its error is journaled.
    let (code, out, err) = run_debug(&[&base[..], &["--execute", "--yes", "--json"]].concat());
    assert_eq!(code, 2, "step 5 fails:\n{out}\n{err}");
    assert_clean("the executed recovery's output", &out);
    assert_clean("the executed recovery's log", &err);
    let v: Value = serde_json::from_str(&out).unwrap();
    let etcd_step = v["recovery"]["steps"].as_array().unwrap().iter().find(|s| s["step"] == "etcd").unwrap().clone();
    assert_eq!(etcd_step["status"], "failed", "{out}");
    let e = etcd_step["error"].as_str().unwrap();
    assert!(e.contains("could not reach etcd at http://root:***@127.0.0.1:") && e.contains("token=***"), "{e}");
    let id = v["recovery"]["id"].as_str().unwrap().to_string();

    for args in [vec!["recoveries"], vec!["recoveries", "--json"], vec!["recoveries", &id], vec!["recoveries", &id, "--json"]] {
        let (code, out, err) = run_debug(&[&["--config", cfg_s, "--store", store_s][..], &args].concat());
        assert_eq!(code, 0, "{args:?}: {err}");
        assert_clean(&format!("`{}`", args.join(" ")), &out);
        assert_clean(&format!("the log of `{}`", args.join(" ")), &err);
        if args.len() == 2 && args[1] == id {
            assert!(out.contains("root:***@127.0.0.1"), "the journal keeps the redacted error: {out}");
        }
    }
    let files = assert_files_clean(&w.store);
    assert!(files >= 4 && w.store.join("recoveries").is_dir(), "the store and its journal were searched ({files} files)");
}

// ------------------------------------------------------------------------------------------- webhook

/// What the receiver saw of each request: its request line and headers, as sent.
struct Seen {
    head: String,
}

/// A receiver that answers every request with HTTP 500 and an echo of it (request line, headers, body),
/// as some debugging endpoints and misconfigured proxies do.
fn echoing_receiver() -> (u16, mpsc::Receiver<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let mut r = BufReader::new(conn);
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let echo = format!("you sent:\r\n{head}\r\n{}", String::from_utf8_lossy(&body));
            let mut conn = r.into_inner();
            let _ = write!(
                conn,
                "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{echo}",
                echo.len()
            );
            let _ = tx.send(Seen { head });
        }
    });
    (port, rx)
}

#[test]
fn a_webhook_echoing_the_request_leaves_no_secret_in_the_alert_the_store_or_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (hook_port, seen) = echoing_receiver();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[watch]
deletion_grace = "1s"
commit_interval = "200ms"

[alerts]
max_retry_interval = "1s"

[alerts.webhook]
url = "http://hook:{HOOK_PASS}@127.0.0.1:{hook_port}/services/{HOOK_PATH}?token={HOOK_TOKEN}"
headers = {{ Authorization = "Bearer {HOOK_BEARER}", X-Api-Key = "{HOOK_APIKEY}" }}
timeout = "3s"
"#
        ),
    )
    .unwrap();
    let store = tmp.path().join("store");
    let port = free_port();
    let child = Command::new(bin())
        .args(["watch", "--config", cfg.to_str().unwrap(), "--store", store.to_str().unwrap(), "--syslog", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut watcher = KillOnDrop(child);
    wait_until("the watcher to listen", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).is_ok());
    let mut rng = safeguard::gen::Rng::new(now_ms() as u64 ^ 0xec40);
    let (id, node) = (rng.uuid(), rng.uuid());
    let t = now_ms() - 30_000;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    for l in [
        lager(t, "provision.start", &format!(r#""instance-id":"{id}""#)),
        lager(t + 1, "add-node.perform", &format!(r#""instance-id":"{id}","node-uuid":"{node}""#)),
        lager(t + 6, "remove-node.perform", &format!(r#""instance-id":"{id}","node-uuid":"{node}","backend":"10.0.0.1""#)),
    ] {
        writeln!(s, "{l}").unwrap();
    }
    drop(s);

    // The receiver got the real credentials: the URL's user and password, path and query, the headers.
    let got = seen.recv_timeout(Duration::from_secs(60)).expect("a webhook request");
    let head = got.head.to_ascii_lowercase();
    assert!(got.head.contains(&format!("/services/{HOOK_PATH}?token={HOOK_TOKEN}")), "{}", got.head);
    assert!(head.contains(&format!("authorization: bearer {}", HOOK_BEARER.to_ascii_lowercase())), "{}", got.head);
    assert!(got.head.contains(&common::base64(format!("hook:{HOOK_PASS}").as_bytes())), "{}", got.head);
    assert!(got.head.contains(HOOK_APIKEY), "{}", got.head);

    // The failure is recorded, redacted, and still says what happened.
    let store_s = store.to_str().unwrap().to_string();
    let alert = || -> Value {
        let (_, out, _) = run(&["alerts", "--json", "--store", &store_s]);
        serde_json::from_str::<Value>(&out).ok().and_then(|v| v.as_array().and_then(|a| a.first().cloned())).unwrap_or(Value::Null)
    };
    wait_until("the alert's last_error", Duration::from_secs(30), || alert()["last_error"].is_string());
    let a = alert();
    let last_error = a["last_error"].as_str().unwrap();
    assert_clean("the alert's last_error", last_error);
    assert!(last_error.contains("HTTP 500") && last_error.contains("authorization: Bearer ***"), "{last_error}");
    let (code, out, err) = run_debug(&["alerts", "--json", "--store", &store_s]);
    assert_eq!(code, 0, "{err}");
    assert_clean("alerts --json", &out);
    let (_, out, _) = run_debug(&["alerts", "--store", &store_s]);
    assert_clean("alerts", &out);
    // A few more attempts, so that the log has them too, then a clean stop (which writes the snapshot).
    let _ = seen.recv_timeout(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill").args(["-TERM", &watcher.0.id().to_string()]).status();
    let status = watcher.0.wait().unwrap();
    let mut log = String::new();
    watcher.0.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("alert delivery failed"), "the debug log was read: {log}");
    assert_clean("the watcher's debug log", &log);
    assert!(store.join("snapshot").exists() || store.join("db").exists(), "{store_s}");
    let files = assert_files_clean(&store);
    assert!(files >= 2, "{files} store files searched");

    // An alert stored unredacted (by a release before redaction existed) still prints redacted: the
    // CLI's output passes the redaction once more.
    {
        let st = safeguard::store::Store::open(&store, 16 << 20).unwrap();
        let mut a = st.alerts().next().expect("the alert").unwrap();
        a.last_error = Some(format!("HTTP 500: you sent:\r\nauthorization: Bearer {HOOK_BEARER}\r\nto http://hook:{HOOK_PASS}@127.0.0.1/"));
        st.put_alert(&a).unwrap();
    }
    for args in [vec!["alerts", "--json"], vec!["alerts"]] {
        let (code, out, err) = run(&[&args[..], &["--store", &store_s]].concat());
        assert_eq!(code, 0, "{err}");
        assert_clean(&format!("`{}` of an old alert", args.join(" ")), &out);
        assert!(out.contains("Bearer ***") || !out.contains("Bearer"), "{out}");
    }
}

// ------------------------------------------------------------------------------------------- hardening

#[test]
fn the_journal_commands_refuse_a_store_that_does_not_exist_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("mistyped-store");
    let m = missing.to_str().unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, format!("[s3]\nendpoint = \"{}\"\naccess_key_id = \"k\"\nsecret_access_key = \"{S3_SECRET}\"\n", env("SAFEGUARD_TEST_S3"))).unwrap();
    for args in [
        vec!["recoveries", "--store", m],
        vec!["recoveries", "--json", "--store", m],
        vec!["recoveries", "r-1", "--store", m],
        vec!["recover", "--abandon", "r-1", "--store", m],
        vec!["recover", "--resume", "r-1", "--yes", "--store", m, "--config", cfg.to_str().unwrap()],
    ] {
        let (code, out, err) = run(&args);
        assert_ne!(code, 0, "{args:?} succeeded:\n{out}\n{err}");
        assert!(err.contains(&format!("no store at {m}")), "{args:?}: the message names the path: {err}");
        assert!(!missing.exists(), "{args:?} created {m}");
    }
    // An existing store still gets its (empty) journal.
    std::fs::create_dir(&missing).unwrap();
    let (code, out, err) = run(&["recoveries", "--store", m]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no recoveries"), "{out}");
}

/// Runs the binary with its standard output a pipe whose reader is already gone.
fn into_closed_pipe(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(bin()).args(args).env("RUST_BACKTRACE", "0").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let s = store.to_str().unwrap();
    let (code, _, err) = run(&["ingest", "-q", common::fixture("scenarios/seed.log").to_str().unwrap(), "--store", s]);
    assert_eq!(code, 0, "{err}");
    for args in [
        vec!["instances", "--store", s],
        vec!["instances", "--json", "--store", s],
        vec!["status", "--store", s],
        vec!["alerts", "--store", s],
        vec!["recoveries", "--store", s],
        vec!["doctor", "--store", s],
        vec!["man"],
        vec!["completions", "bash"],
    ] {
        let (code, err) = into_closed_pipe(&args);
        assert_eq!(code, 0, "`{}` into a closed pipe: {err}", args.join(" "));
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "`{}`: {err}", args.join(" "));
    }
    // The store was closed cleanly after all: it reads as before.
    let (code, out, err) = run(&["instances", "--json", "--store", s]);
    assert_eq!(code, 0, "{err}");
    assert!(serde_json::from_str::<Value>(&out).unwrap().as_array().is_some_and(|a| !a.is_empty()), "{out}");
}

#[test]
fn an_os_error_is_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    for args in [
        vec!["--config", "/no/such.toml", "instances"],
        vec!["ingest", "/no/such/file", "--store", store.to_str().unwrap()],
        vec!["instances", "--store", "/no/such/store"],
    ] {
        let (code, _, err) = run(&args);
        assert_ne!(code, 0, "{args:?}");
        let once = |needle: &str| err.matches(needle).count() <= 1;
        assert!(err.contains("error"), "{args:?}: {err}");
        assert!(once("No such file or directory") && once("os error 2"), "{args:?} repeats the OS error:\n{err}");
    }
}
