//! Hostile local conditions against the real binary (issue 13): a caller's loose umask, a query client
//! that never sends a newline, more connections than the socket serves, and a watcher that runs out of
//! file descriptors. Each is bounded in count and time.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, fixture, free_port, run, wait_until, KillOnDrop};
use serde_json::Value;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// `safeguard ARGS` under `umask`, through sh.
fn under_umask(umask: &str, args: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", &format!("umask {umask}; exec {} {args}", bin())]);
    c
}

fn watcher(store: &Path, extra_sh: &str) -> (KillOnDrop, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new("sh")
        .args(["-c", &format!("{extra_sh} exec {} watch --syslog {addr} --store {}", bin(), store.display())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let w = KillOnDrop(child);
    wait_until("the watcher's socket", Duration::from_secs(20), || UnixStream::connect(store.join("safeguard.sock")).is_ok());
    (w, addr)
}

fn status(store: &Path) -> Value {
    let (code, out, err) = run(&["status", "--json", "--store", store.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn the_store_and_its_socket_are_the_owners_only_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let seed = fixture("scenarios/seed.log");
    let out = under_umask("000", &format!("ingest {} --store {}", seed.display(), store.display())).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A query writes the read snapshot under the same rule.
    let out = under_umask("000", &format!("status --store {}", store.display())).output().unwrap();
    assert!(out.status.success());
    assert_eq!(mode(&store), 0o700);
    let mut files = 0;
    for e in std::fs::read_dir(&store).unwrap().flatten() {
        let m = mode(&e.path());
        assert_eq!(m & 0o077, 0, "{} is {m:o}", e.path().display());
        files += 1;
    }
    assert!(files >= 3 && store.join("snapshot").exists(), "db, conf and the snapshot should be there");
    // A store made earlier with open modes is closed up when it is next opened.
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(store.join("db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (w, _) = watcher(&store, "umask 000;");
    assert_eq!(mode(&store), 0o700);
    assert_eq!(mode(&store.join("db")), 0o600);
    assert_eq!(mode(&store.join("safeguard.sock")), 0o600);
    drop(w);
}

#[test]
fn the_query_socket_bounds_requests_and_connections_and_keeps_answering() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "[watch]\nquery_max_connections = 8\n").unwrap();
    let (_w, _) = watcher(&store, &format!("SAFEGUARD_CONFIG={}", cfg.display()));
    let sock = store.join("safeguard.sock");
    // A request without a newline: cut at 64 KiB with an error answer, not buffered without end.
    let mut c = UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let junk = vec![b'x'; 1 << 20];
    let _ = c.write_all(&junk);
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    assert!(answer.contains("request longer than"), "{answer:?}");
    // More connections than it serves: the extra ones are closed at once; the held ones do not stop
    // queries for longer than the idle timeout... and a freed slot serves again right away.
    let held: Vec<UnixStream> = (0..8).map(|_| UnixStream::connect(&sock).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = UnixStream::connect(&sock).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    let t = Instant::now();
    assert_eq!(extra.read(&mut buf).unwrap_or(0), 0, "a connection past query_max_connections is closed");
    assert!(t.elapsed() < Duration::from_secs(4));
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&store)["watcher_running"], true);
}

#[test]
fn the_query_socket_survives_running_out_of_file_descriptors() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    // Few descriptors: syslog connections use them all up, and accepting a query fails meanwhile.
    let (w, addr) = watcher(&store, "ulimit -n 64;");
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", w.0.id())).map_or(0, |d| d.count());
    let mut conns = Vec::new();
    for _ in 0..100 {
        match TcpStream::connect(&addr) {
            Ok(c) => conns.push(c),
            Err(_) => break,
        }
    }
    wait_until("the watcher to run out of descriptors", Duration::from_secs(10), || fds() >= 62);
    // These reach the watcher only while it has no descriptor left: its accept fails.
    let mut pending = Vec::new();
    for _ in 0..5 {
        pending.extend(UnixStream::connect(store.join("safeguard.sock")).ok());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    drop(conns);
    drop(pending);
    // Once descriptors are free again, queries are answered by the watcher (not refused for good).
    wait_until("a query answered by the watcher", Duration::from_secs(20), || {
        let (code, out, _) = run(&["status", "--json", "--store", store.to_str().unwrap()]);
        code == 0 && serde_json::from_str::<Value>(&out).is_ok_and(|v| v["watcher_running"] == true)
    });
}

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap()
}

fn provision_line(id: &str) -> String {
    common::lager(1_458_195_017_000, "provision.start", &format!(r#""instance-id":"{id}""#))
}

#[test]
fn an_over_long_tcp_line_is_cut_and_its_tail_never_becomes_a_line() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let (_w, addr) = watcher(&store, "");
    let id = "0badbeef-0000-4000-8000-000000000001";
    let mut c = TcpStream::connect(&addr).unwrap();
    // 1 MiB of padding and then, with no newline between, a line that would create an instance.
    c.write_all(&vec![b'x'; 1 << 20]).unwrap();
    c.write_all(format!("{}\n", provision_line(id)).as_bytes()).unwrap();
    // Then a good line on the same connection: the stream goes on after the cut.
    let good = "0badbeef-0000-4000-8000-000000000002";
    c.write_all(format!("{}\n", provision_line(good)).as_bytes()).unwrap();
    drop(c);
    wait_until("the good line", Duration::from_secs(20), || run(&["show", good, "--store", store.to_str().unwrap()]).0 == 0);
    let (code, out, _) = run(&["show", id, "--store", store.to_str().unwrap()]);
    assert_ne!(code, 0, "the tail of a cut line created an instance: {out}");
}

#[test]
fn many_tcp_clients_with_unfinished_frames_neither_grow_memory_nor_deliver_the_fragments() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let (w, addr) = watcher(&store, "ulimit -n 4096;");
    let pid = w.0.id();
    let before = rss_kb(pid);
    let id = "0badbeef-0000-4000-8000-000000000003";
    // Each client declares a frame of 900 KB, sends most of it (ending in a line that names an
    // instance) and waits; more clients than the listener serves.
    let line = provision_line(id);
    let mut clients = Vec::new();
    for _ in 0..300 {
        let Ok(mut c) = TcpStream::connect(&addr) else { break };
        let body_len = 900_000;
        let mut frame = format!("{body_len} ").into_bytes();
        frame.extend(std::iter::repeat_n(b' ', 800_000 - line.len()));
        frame.extend(line.as_bytes());
        let _ = c.write_all(&frame);
        clients.push(c);
    }
    std::thread::sleep(Duration::from_secs(2));
    let during = rss_kb(pid);
    drop(clients);
    std::thread::sleep(Duration::from_secs(1));
    // 300 x 800 KB were sent; a bounded listener holds at most 256 x ~64 KB.
    assert!(during < before + 64 * 1024, "RSS grew from {before} kB to {during} kB");
    let v = status(&store);
    // Each served connection's frame is longer than the bound: its first 64 KiB go on as one (cut) message,
    // the rest is dropped; the 44 connections past the bound are closed unread.
    assert_eq!(v["counters"]["lines_read"], 256, "{v}");
    let (code, out, _) = run(&["show", id, "--store", store.to_str().unwrap()]);
    assert_ne!(code, 0, "a truncated frame was delivered: {out}");
}

#[test]
fn an_empty_udp_datagram_is_no_line() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let (_w, addr) = watcher(&store, "");
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..5 {
        u.send_to(b"", &addr).unwrap();
        u.send_to(b"\n", &addr).unwrap();
    }
    u.send_to(provision_line("0badbeef-0000-4000-8000-000000000004").as_bytes(), &addr).unwrap();
    wait_until("the real line", Duration::from_secs(20), || status(&store)["counters"]["lines_read"].as_u64().unwrap_or(0) >= 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status(&store)["counters"]["lines_read"], 1);
}

#[test]
fn config_values_that_would_crash_or_disable_work_are_refused_by_key_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("[store]\ncache_mb = 0\n", "store.cache_mb"),
        ("[store]\ncache_mb = 99999999999999999\n", "store.cache_mb"),
        ("[watch]\ncommit_interval = \"0s\"\n", "commit_interval"),
        ("[risk]\nwal_silence = \"10000000000000000s\"\n", "10000000000000000s"),
        ("[[sources]]\ntype = \"syslog\"\ntcp = \"127.0.0.1:1\"\nmax_connections = 0\n", "max_connections"),
        ("[[sources]]\ntype = \"syslog\"\ntcp = \"127.0.0.1:1\"\nidle_timeout = \"0s\"\n", "idle_timeout"),
        ("[watch]\nquery_max_connections = 0\n", "watch.query_max_connections"),
        ("[watch]\nquery_idle_timeout = \"0s\"\n", "watch.query_idle_timeout"),
    ];
    for (i, (toml, key)) in cases.iter().enumerate() {
        let cfg = tmp.path().join(format!("c{i}.toml"));
        std::fs::write(&cfg, toml).unwrap();
        let store = tmp.path().join(format!("store{i}"));
        let out =
            Command::new(bin()).args(["--config", cfg.to_str().unwrap(), "watch", "--store", store.to_str().unwrap()]).stdin(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {err}");
        assert!(err.contains(key), "{toml}: the message does not name {key}: {err}");
        assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{toml}: {err}");
        assert!(!store.exists(), "{toml}: a store was created");
    }
}

#[test]
fn a_query_while_an_ingest_holds_the_store_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let seed = fixture("scenarios/seed.log");
    assert_eq!(run(&["ingest", seed.to_str().unwrap(), "--store", store.to_str().unwrap()]).0, 0);
    // No read snapshot (as after a crash, or once an ingest has written), a socket file a killed watcher
    // left behind, and an ingest from a pipe that stays open.
    std::fs::remove_file(store.join("snapshot")).unwrap();
    let stale = std::os::unix::net::UnixListener::bind(store.join("safeguard.sock")).unwrap();
    drop(stale);
    let mut ingest = Command::new(bin()).args(["ingest", "-", "--store", store.to_str().unwrap()]).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let mut feed = ingest.stdin.take().unwrap();
    feed.write_all(b"Mar 16 19:11:48 h p: a line\n").unwrap();
    let ingest = KillOnDrop(ingest);
    // sled holds an exclusive lock on `db` while the store is open.
    wait_until("the ingest to hold the store", Duration::from_secs(20), || std::fs::File::open(store.join("db")).unwrap().try_lock().is_err());
    let (code, _, err) = run(&["status", "--store", store.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("in use by another safeguard process that answers no queries"), "{err}");
    assert!(!err.contains("hung"), "{err}");
    drop(feed);
    drop(ingest);
}

/// A small tmpfs, unmounted on drop (mounting needs root, which the test command runs as).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", at.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "mounting a tmpfs (needs root: run scripts/test.sh as root): {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_leaves_a_store_the_next_process_opens_and_says_what_to_free() {
    let tmp = tempfile::tempdir().unwrap();
    let small = Tmpfs::mount(&tmp.path().join("small"), "3m");
    let log = tmp.path().join("big.log");
    let cfg = safeguard::gen::GenConfig { seed: 9, lines: 150_000, concurrent_instances: 200, noise: 0.5, ..Default::default() };
    safeguard::gen::Generator::new(cfg).write_all(&mut std::io::BufWriter::new(std::fs::File::create(&log).unwrap())).unwrap();
    let store = small.0.join("store");
    let s = store.to_str().unwrap();
    let (code, _, err) = run(&["ingest", log.to_str().unwrap(), "--quiet", "--store", s]);
    assert_ne!(code, 0, "the disk should fill");
    assert!(err.contains("disk holding the store is full"), "{err}");
    // A query on the full disk reads a private copy: it answers, and writes nothing there.
    let (code, out, err) = run(&["status", "--store", s]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("instances"), "{out}");
    let leftovers: Vec<_> =
        std::fs::read_dir(&store).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".generating")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Copied to a larger disk, the store opens and the ingest resumes there.
    let big = tmp.path().join("moved");
    assert!(Command::new("cp").args(["-a", s, big.to_str().unwrap()]).status().unwrap().success());
    drop(small);
    let (code, _, err) = run(&["status", "--store", big.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["ingest", log.to_str().unwrap(), "--quiet", "--store", big.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("lines read"), "{out}");
}

#[test]
fn the_http_endpoint_closes_a_client_that_never_finishes_its_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let http = format!("127.0.0.1:{}", free_port());
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, format!("[http]\nlisten = \"{http}\"\n")).unwrap();
    let (_w, _) = watcher(&store, &format!("SAFEGUARD_CONFIG={}", cfg.display()));
    wait_until("the HTTP endpoint", Duration::from_secs(20), || TcpStream::connect(&http).is_ok());
    let mut slow = TcpStream::connect(&http).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // Meanwhile others are served.
    let mut ok = TcpStream::connect(&http).unwrap();
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    ok.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(t.elapsed() < Duration::from_secs(20), "the half-sent request was held for {:?}", t.elapsed());
}

#[test]
fn udp_datagrams_the_kernel_drops_are_counted_in_status() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let udp = format!("127.0.0.1:{}", free_port());
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, format!("[[sources]]\ntype = \"syslog\"\nudp = \"{udp}\"\n")).unwrap();
    let child = Command::new(bin())
        .args(["--config", cfg.to_str().unwrap(), "watch", "--store", store.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let w = KillOnDrop(child);
    wait_until("the watcher's socket", Duration::from_secs(20), || UnixStream::connect(store.join("safeguard.sock")).is_ok());
    let status = || {
        let (code, out, err) = run(&["--config", cfg.to_str().unwrap(), "status", "--json", "--store", store.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    assert_eq!(status()["udp_drops"][&udp], 0, "a listener that keeps up drops nothing");
    // The listener stops reading (the process is stopped): the socket's buffer fills and the kernel drops.
    let pid = w.0.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let line = provision_line("0badbeef-0000-4000-8000-000000000005");
    for _ in 0..20_000 {
        let _ = s.send_to(line.as_bytes(), &udp);
    }
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    wait_until("the drops to show", Duration::from_secs(20), || status()["udp_drops"][&udp].as_u64().unwrap_or(0) > 0);
}

/// Every file of a store directory with its bytes.
fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            for (k, v) in files(&e.path()) {
                out.insert(format!("{}/{k}", e.file_name().to_string_lossy()), v);
            }
        } else {
            out.insert(e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap());
        }
    }
    out
}

#[test]
fn read_only_commands_never_write_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let s = store.to_str().unwrap();
    assert_eq!(run(&["ingest", fixture("scenarios/seed.log").to_str().unwrap(), "--store", s]).0, 0);
    // No read snapshot (as after a crash): a query has to read sled itself.
    std::fs::remove_file(store.join("snapshot")).unwrap();
    let before = files(&store);
    for args in [vec!["status"], vec!["instances", "--json"], vec!["show", "6e101b27"], vec!["alerts"]] {
        let mut a = args.clone();
        a.extend(["--store", s]);
        let (code, _, err) = run(&a);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    let mut after = files(&store);
    // The one file a query may add: the read snapshot, written while nobody holds the store.
    assert!(after.remove("snapshot").is_some(), "the query left no read snapshot");
    assert_eq!(after.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>());
    for (k, v) in &before {
        assert!(after[k] == *v, "{k} changed");
    }
}
