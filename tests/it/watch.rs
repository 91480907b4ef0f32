//! The real binary's embedded default: a syslog listener on UDP and TCP (octet-counted and newline
//! framing), queried while it runs (through its socket) and after a SIGTERM flush.

use crate::common;

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, fixture, free_port, run, wait_until, KillOnDrop};
use serde_json::Value;

#[test]
fn syslog_listener_over_udp_and_tcp() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let store_s = store.to_str().unwrap().to_string();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(bin())
        .args(["watch", "--syslog", &addr, "--store", &store_s])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut w = KillOnDrop(child);
    wait_until("the TCP listener", Duration::from_secs(20), || TcpStream::connect(&addr).is_ok());

    let seed = std::fs::read_to_string(fixture("scenarios/seed.log")).unwrap();
    let lines: Vec<&str> = seed.lines().collect();
    let third = lines.len() / 3;
    // UDP: one datagram per message.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for l in &lines[..third] {
        udp.send_to(l.as_bytes(), &addr).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    wait_until("the UDP lines", Duration::from_secs(20), || {
        let (_, out, _) = run(&["status", "--json", "--store", &store_s]);
        serde_json::from_str::<Value>(&out).map(|v| v["counters"]["lines_read"] == third as u64).unwrap_or(false)
    });
    // TCP: octet counting, then newline framing, in one connection.
    let mut tcp = TcpStream::connect(&addr).unwrap();
    for l in &lines[third..2 * third] {
        write!(tcp, "{} {}", l.len(), l).unwrap();
    }
    for l in &lines[2 * third..] {
        writeln!(tcp, "{l}").unwrap();
    }
    tcp.flush().unwrap();
    drop(tcp);

    // While the watcher runs it owns the store; `show` answers through its socket.
    let id = "6e101b27-ee1b-4f4d-a032-4401a3709ec3";
    let start = std::time::Instant::now();
    loop {
        let (code, out, err) = run(&["show", id, "--json", "--store", &store_s]);
        let done = code == 0 && serde_json::from_str::<Value>(&out).map(|v| v["status"] == "deleted" && v["wal"]["segments_pushed"] == 3).unwrap_or(false);
        if done {
            break;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let (_, st, _) = run(&["status", "--json", "--store", &store_s]);
            panic!("timed out waiting for the deletion to be recorded: show exit {code}: {out} {err}\nstatus: {st}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, out, _) = run(&["status", "--json", "--store", &store_s]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["watcher_running"], true);
    assert_eq!(v["counters"]["lines_read"], lines.len() as u64);
    assert_eq!(v["counters"]["lines_rejected"], 0);

    // SIGTERM flushes and exits cleanly; the store then opens directly with everything in it.
    unsafe_kill_term(w.0.id());
    let status = w.0.wait().unwrap();
    assert!(status.success(), "watch exited with {status}");
    let mut err = String::new();
    std::io::Read::read_to_string(w.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("instance looks deleted"), "{err}");
    let (code, out, _) = run(&["show", id, "--json", "--store", &store_s]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "deleted");
    let (_, out, _) = run(&["status", "--json", "--store", &store_s]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["watcher_running"], false);
}

fn unsafe_kill_term(pid: u32) {
    let ok = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success();
    assert!(ok);
}

#[test]
fn followed_file_survives_rotation_and_resumes_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let store_s = store.to_str().unwrap().to_string();
    let log = tmp.path().join("syslog");
    let seed = std::fs::read_to_string(fixture("scenarios/seed.log")).unwrap();
    let lines: Vec<&str> = seed.lines().collect();
    let (a, b) = (lines.len() / 3, 2 * lines.len() / 3);
    let status = || -> Value {
        let (_, out, _) = run(&["status", "--json", "--store", &store_s]);
        serde_json::from_str(&out).unwrap_or(Value::Null)
    };
    let spawn = || {
        KillOnDrop(
            Command::new(bin())
                .args(["watch", "--file", log.to_str().unwrap(), "--store", &store_s])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    std::fs::write(&log, lines[..a].join("\n") + "\n").unwrap();
    let mut w = spawn();
    wait_until("the first third", Duration::from_secs(20), || status()["counters"]["lines_read"] == a as u64);

    // logrotate: the file moves away and a new one starts at the same path.
    std::fs::rename(&log, tmp.path().join("syslog.1")).unwrap();
    std::fs::write(&log, lines[a..b].join("\n") + "\n").unwrap();
    wait_until("the rotated file", Duration::from_secs(20), || status()["counters"]["lines_read"] == b as u64);
    unsafe_kill_term(w.0.id());
    assert!(w.0.wait().unwrap().success());

    // Lines appended while the watcher was down are read once it is back, and nothing twice.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all((lines[b..].join("\n") + "\n").as_bytes()).unwrap();
    drop(f);
    let _w = spawn();
    let mut last = Value::Null;
    let start = std::time::Instant::now();
    while last["counters"]["lines_read"] != lines.len() as u64 {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for the appended lines; last status: {last}");
        std::thread::sleep(Duration::from_millis(100));
        last = status();
    }
    let s = status();
    assert_eq!(s["counters"]["lines_replayed_skipped"], 0, "{s}");
    let (_, out, _) = run(&["show", "6e101b27-ee1b-4f4d-a032-4401a3709ec3", "--json", "--store", &store_s]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "deleted");
    assert_eq!(v["wal"]["segments_pushed"], 3);
}
