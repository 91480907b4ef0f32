//! `[heartbeat]` against a local HTTP receiver standing in for a dead-man's switch (healthchecks.io's
//! ping protocol: the URL while healthy, `URL/fail` when not): a healthy watcher pings every interval,
//! an unhealthy one pings `/fail` with the reasons, a stopped one falls silent.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{bin, free_port, wait_until, KillOnDrop};

/// Every request the receiver got: (request line, body).
type Seen = Arc<Mutex<Vec<(String, String)>>>;

fn receiver() -> (String, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ping/0f1e2d3c", l.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut len = 0;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            s.lock().unwrap().push((line.trim().to_string(), String::from_utf8_lossy(&body).into_owned()));
            let mut c = c;
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nOK");
        }
    });
    (url, seen)
}

fn watcher(dir: &std::path::Path, config: &str) -> KillOnDrop {
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, config).unwrap();
    let child = Command::new(bin())
        .args(["--config", cfg.to_str().unwrap(), "watch", "--store", dir.join("store").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

fn count(seen: &Seen, path_end: &str) -> usize {
    seen.lock().unwrap().iter().filter(|(l, _)| l.split_whitespace().nth(1).is_some_and(|p| p.ends_with(path_end))).count()
}

#[test]
fn a_ready_watcher_pings_and_a_stopped_one_falls_silent() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, seen) = receiver();
    let syslog = format!("127.0.0.1:{}", free_port());
    let w = watcher(
        tmp.path(),
        &format!("[heartbeat]\nurl = \"{url}\"\ninterval = \"1s\"\nmethod = \"POST\"\n\n[watch]\ncommit_interval = \"200ms\"\n\n[[sources]]\ntype = \"syslog\"\ntcp = \"{syslog}\"\n"),
    );
    wait_until("two pings", Duration::from_secs(20), || count(&seen, "/0f1e2d3c") >= 2);
    {
        let s = seen.lock().unwrap();
        let (line, body) = s.iter().find(|(l, _)| l.contains("/0f1e2d3c ")).unwrap();
        assert!(line.starts_with("POST /ping/0f1e2d3c "), "{line}");
        assert!(body.contains("ready"), "{body}");
    }
    assert_eq!(count(&seen, "/fail"), 0, "a ready watcher reported a failure: {:?}", seen.lock().unwrap());
    // A stopped (hung) watcher sends nothing: the switch notices by the silence.
    let pid = w.0.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    let before = seen.lock().unwrap().len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(seen.lock().unwrap().len(), before, "a stopped watcher pinged");
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    wait_until("pings again", Duration::from_secs(20), || seen.lock().unwrap().len() > before);
}

#[test]
fn a_watcher_whose_kafka_brokers_do_not_answer_pings_fail_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, seen) = receiver();
    let dead = format!("127.0.0.1:{}", free_port());
    let _w = watcher(
        tmp.path(),
        &format!(
            "[heartbeat]\nurl = \"{url}\"\ninterval = \"1s\"\nmethod = \"POST\"\n\n[[sources]]\ntype = \"kafka\"\nbrokers = [\"{dead}\"]\ntopics = [\"syslog\"]\ngroup_id = \"hb\"\n"
        ),
    );
    wait_until("a failure ping", Duration::from_secs(30), || count(&seen, "/0f1e2d3c/fail") >= 1);
    let body = seen.lock().unwrap().iter().find(|(l, _)| l.contains("/fail")).map(|(_, b)| b.clone()).unwrap();
    assert!(body.contains("kafka"), "the failure names its reason: {body}");
    assert_eq!(count(&seen, "/0f1e2d3c"), 0, "an unready watcher reported itself healthy");
}
