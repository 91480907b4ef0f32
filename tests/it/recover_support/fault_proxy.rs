//! An HTTP proxy in front of the real S3 server (moto) that answers chosen requests with the errors a
//! real S3 gives under load or misconfiguration (503 SlowDown, 500 InternalError, 403 AccessDenied) and
//! forwards everything else untouched. moto itself never answers those, so without this the copy's
//! retry path would only be tested in-process.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// What to break. Keys are matched as substrings of the request path.
#[derive(Debug, Default)]
pub struct Faults {
    /// CopyObject requests whose path contains this: the first `copy_failures` attempts of each key get 503 SlowDown.
    pub slow_copy: Option<String>,
    pub copy_failures: u32,
    /// CopyObject requests whose path contains this always get 403 AccessDenied.
    pub deny_copy: Option<String>,
    /// The next this-many ListObjectsV2 requests get 500 InternalError.
    pub list_errors: u32,
    /// Attempts seen per copied path.
    pub seen: HashMap<String, u32>,
    pub served_503: u32,
    pub served_500: u32,
    pub served_403: u32,
    pub forwarded: u32,
}

pub struct FaultProxy {
    pub endpoint: String,
    pub faults: Arc<Mutex<Faults>>,
}

impl FaultProxy {
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let faults = Arc::new(Mutex::new(Faults::default()));
        let f = faults.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (f, up) = (f.clone(), upstream.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &up, &f);
                });
            }
        });
        FaultProxy { endpoint, faults }
    }

    pub fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap()
    }
}

fn error(status: &str, code: &str, message: &str, path: &str) -> Vec<u8> {
    let body = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message><Resource>{path}</Resource><RequestId>fault-proxy</RequestId></Error>"#
    );
    format!("HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).into_bytes()
}

/// One request per connection: every answer carries `Connection: close`, so the client never reuses a
/// connection the proxy is about to drop.
fn serve(conn: TcpStream, upstream: &str, faults: &Mutex<Faults>) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    let mut first = String::new();
    if r.read_line(&mut first)? == 0 {
        return Ok(());
    }
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut head = first.clone();
    let (mut len, mut is_copy) = (0usize, false);
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 || l == "\r\n" {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("x-amz-copy-source:") {
            is_copy = true;
        }
        if lower.starts_with("connection:") || lower.starts_with("expect:") {
            continue;
        }
        head.push_str(&l);
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;

    let fault = {
        let mut f = faults.lock().unwrap();
        let copy_attempt = if is_copy && method == "PUT" {
            let n = f.seen.entry(path.clone()).or_insert(0);
            *n += 1;
            Some(*n)
        } else {
            None
        };
        let matches = |k: &Option<String>| k.as_deref().is_some_and(|k| path.contains(k));
        match copy_attempt {
            Some(_) if matches(&f.deny_copy) => {
                f.served_403 += 1;
                Some(error("403 Forbidden", "AccessDenied", "Access Denied", &path))
            }
            Some(n) if matches(&f.slow_copy) && n <= f.copy_failures => {
                f.served_503 += 1;
                Some(error("503 Slow Down", "SlowDown", "Please reduce your request rate.", &path))
            }
            None if method == "GET" && path.contains("list-type=2") && f.list_errors > 0 => {
                f.list_errors -= 1;
                f.served_500 += 1;
                Some(error("500 Internal Server Error", "InternalError", "We encountered an internal error. Please try again.", &path))
            }
            _ => None,
        }
    };
    if let Some(resp) = fault {
        return out.write_all(&resp);
    }

    let mut up = TcpStream::connect(upstream)?;
    up.write_all(head.as_bytes())?;
    up.write_all(&body)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    faults.lock().unwrap().forwarded += 1;
    // Replace the upstream's Connection header with ours.
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").map_or(resp.len(), |p| p + 2);
    let (h, rest) = resp.split_at(split);
    let h = String::from_utf8_lossy(h);
    let mut fixed = String::new();
    for line in h.split_inclusive("\r\n") {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            fixed.push_str(line);
        }
    }
    fixed.push_str("Connection: close\r\n");
    out.write_all(fixed.as_bytes())?;
    out.write_all(rest)
}
