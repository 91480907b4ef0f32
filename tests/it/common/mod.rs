//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Every field of `expected` equals the same field of `actual`; arrays match element by element and
/// must have the same length. Returns the first difference.
pub fn subset(expected: &Value, actual: &Value, path: &str) -> Result<(), String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                if k.starts_with('_') {
                    continue;
                }
                subset(v, a.get(k).unwrap_or(&Value::Null), &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            e.iter().zip(a).enumerate().try_for_each(|(i, (e, a))| subset(e, a, &format!("{path}[{i}]")))
        }
        (e, a) if e == a => Ok(()),
        (e, a) => Err(format!("{path}: expected {e}, got {a}")),
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_safeguard")
}

/// Runs the real binary; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin()).args(args).output().expect("run safeguard");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

pub fn fixture(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

/// An HTTP reply as the tests read it.
pub struct Http {
    /// 0 when nothing answered (no connection, no status line).
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// GET over plain HTTP/1.1 on `addr` (`host:port`); a chunked body is decoded. Never panics: what does
/// not answer reads as status 0, for tests that poll.
pub fn http_get(addr: &str, path: &str) -> Http {
    use std::io::{Read, Write};
    let none = || Http { status: 0, content_type: String::new(), body: String::new() };
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return none() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    if write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_err() {
        return none();
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let header = |name: &str| head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix(name).map(|v| v.trim().to_string())).unwrap_or_default();
    let body = if header("transfer-encoding:") == "chunked" { dechunk(body) } else { body.to_string() };
    Http { status: head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), content_type: header("content-type:"), body }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// Decodes a quoted-printable body (soft line breaks and `=XX` escapes).
pub fn unquote(body: &str) -> String {
    let joined = body.replace("=\r\n", "").replace("=\n", "");
    let b = joined.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            if let Some(v) = joined.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A mail in the SMTP server's Maildir.
#[derive(Clone, Debug)]
pub struct Mail {
    pub subject: String,
    /// Unfolded headers, a blank line, the decoded body.
    pub text: String,
    pub received: std::time::SystemTime,
}

/// Mails in the Maildir that mention `needle`.
pub fn mails(maildir: &Path, needle: &str) -> Vec<Mail> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        let Ok(rd) = std::fs::read_dir(maildir.join(sub)) else { continue };
        for e in rd.flatten() {
            let raw = std::fs::read_to_string(e.path()).unwrap_or_default().replace("\r\n", "\n");
            let (head, body) = raw.split_once("\n\n").unwrap_or((&raw, ""));
            let head = head.replace("\n ", " ").replace("\n\t", " ");
            let body = if head.to_ascii_lowercase().contains("content-transfer-encoding: quoted-printable") { unquote(body) } else { body.to_string() };
            let text = format!("{head}\n\n{body}");
            if text.contains(needle) {
                let subject = head.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or("").to_string();
                let received = e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                out.push(Mail { subject, text, received });
            }
        }
    }
    out.sort_by_key(|m| m.received);
    out
}

/// A required test-environment variable (set by `scripts/test.sh` from `.services/env`). A missing one
/// fails the test: a real-service test never skips.
pub fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: these tests need the real services; run scripts/test.sh (or `bash scripts/services.sh start && set -a && . .services/env`)"
        ),
    }
}

/// Creates a topic with tansu's CLI, retrying while the broker is still coming up.
pub fn create_topic(tansu: &str, broker: &str, topic: &str, partitions: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::process::Command::new(tansu)
            .args(["topic", "create", topic, "--partitions", &partitions.to_string(), "--broker", &format!("tcp://{broker}")])
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "tansu topic create {topic} failed: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A child process killed (and reaped) when the test lets go of it, pass or fail.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test S3 server's client settings: path-style, a known secret (tests check it never leaks),
/// short timeouts and one SDK retry.
pub fn s3_config(endpoint: String, secret: &str) -> safeguard::s3::S3Config {
    safeguard::s3::S3Config {
        endpoint: Some(endpoint),
        path_style: true,
        access_key_id: Some("testing-key".into()),
        secret_access_key: Some(secret.into()),
        timeout: Duration::from_secs(10),
        max_attempts: 2,
        ..safeguard::s3::S3Config::default()
    }
}

/// Standard base64 with padding, for HTTP Basic credentials.
pub fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A broker lager line (RFC 5424 envelope) at `t` for `dingo-postgresql-broker.cluster.<name>`.
pub fn lager(t: i64, name: &str, data: &str) -> String {
    format!(
        r#"<134>1 {} 0.router broker.stdout.log - - - {{"timestamp":"{}.{:03}","source":"dingo-postgresql-broker","message":"dingo-postgresql-broker.cluster.{name}","log_level":1,"data":{{{data}}}}}"#,
        safeguard::timeutil::rfc3339(t),
        t / 1000,
        t % 1000
    )
}

/// A watcher (or other child) the test stops with SIGTERM to read its log, or that is killed when the
/// test lets go of it.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Stops it with SIGTERM, asserts a clean exit, and returns what it wrote on stderr.
    pub fn stop(mut self) -> String {
        use std::io::Read;
        let _ = std::process::Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let status = self.0.wait().unwrap();
        let mut err = String::new();
        if let Some(e) = self.0.stderr.as_mut() {
            let _ = e.read_to_string(&mut err);
        }
        assert!(status.success(), "watcher exited with {status}:\n{err}");
        err
    }
}

/// The real watcher on `config` and `store`, with a syslog TCP listener on `port` (info logs on its
/// stderr, for `Proc::stop`); returns once it listens.
pub fn watch_syslog(config: &Path, store: &Path, port: u16) -> Proc {
    let child = std::process::Command::new(bin())
        .args(["watch", "--config"])
        .arg(config)
        .arg("--store")
        .arg(store)
        .args(["--syslog", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let p = Proc(child);
    wait_until("the watcher to listen", Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    p
}

/// Sends `lines` over one syslog TCP connection to `port`, a newline after each.
pub fn send_lines(port: u16, lines: &[String]) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    for l in lines {
        writeln!(s, "{l}").unwrap();
    }
}

/// Creates a bucket in the test S3 server and uploads `objects` (key, body) into it.
pub fn s3_layout(bucket: &str, objects: &[(String, &str)]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = safeguard::s3::ObjectStore::connect(&s3_config(env("SAFEGUARD_TEST_S3"), "test-secret-key")).unwrap();
        let c = store.client().await;
        c.create_bucket().bucket(bucket).send().await.expect("create bucket");
        for (key, body) in objects {
            c.put_object().bucket(bucket).key(key).body(body.as_bytes().to_vec().into()).send().await.expect("put object");
        }
    });
}
