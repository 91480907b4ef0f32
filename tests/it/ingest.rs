//! Ingest end to end on the library and the real binary: fixture scenarios, a generated multi-instance
//! stream checked against the truth it implies, and replay idempotency.

use crate::common;

use std::path::Path;

use common::{fixture, run, subset};
use safeguard::gen::{GenConfig, Generator};
use safeguard::pipeline::EngineConfig;
use safeguard::report::record_json;
use safeguard::state::risk::RiskRules;
use safeguard::state::Status;
use safeguard::store::Store;
use safeguard::timeutil::now_ms;
use serde_json::Value;

fn open(dir: &Path) -> Store {
    Store::open(dir, 16 << 20).unwrap()
}

#[test]
fn scenario_fixtures_yield_the_expected_records() {
    let dir = fixture("scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let log = entry.unwrap().path();
        if log.extension().and_then(|e| e.to_str()) != Some("log") {
            continue;
        }
        n += 1;
        let expect: Value = serde_json::from_str(&std::fs::read_to_string(log.with_extension("expect.json")).unwrap()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path());
        let s = safeguard::ingest::ingest(&store, EngineConfig::default(), std::slice::from_ref(&log)).unwrap();
        assert_eq!(s.counters.lines_rejected, 0, "{}: {:?}", log.display(), s.counters.rejected_by_reason);
        let now = now_ms();
        for (id, want) in expect["instances"].as_object().unwrap() {
            let rec = store.record(id).unwrap().unwrap_or_else(|| panic!("{}: no record for {id}", log.display()));
            let got = record_json(&rec, now, &RiskRules::default());
            if let Err(e) = subset(want, &got, id) {
                panic!("{}: {e}\nrecord: {}", log.display(), serde_json::to_string_pretty(&got).unwrap());
            }
        }
    }
    assert!(n >= 1);
}

#[test]
fn generated_interleaved_stream_matches_its_truth() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("gen.log");
    let cfg = GenConfig { seed: 11, lines: 60_000, concurrent_instances: 40, noise: 0.8, ..GenConfig::default() };
    let truth = Generator::new(cfg).write_all(&mut std::io::BufWriter::new(std::fs::File::create(&log).unwrap())).unwrap();
    let store = open(&tmp.path().join("store"));
    let s = safeguard::ingest::ingest(&store, EngineConfig::default(), &[log]).unwrap();
    assert_eq!(s.counters.lines_read, truth.lines);
    assert_eq!(s.counters.lines_rejected, 0, "{:?}", s.counters.rejected_by_reason);
    assert!(truth.instances.len() > 40 && truth.instances.values().any(|t| t.deleted));
    for (id, t) in &truth.instances {
        let r = store.record(id).unwrap().unwrap_or_else(|| panic!("no record for {id}"));
        assert_eq!(r.status == Status::Deleted, t.deleted, "{id} status");
        assert_eq!(r.wal.segments_pushed, t.segments_pushed, "{id} segments");
        assert_eq!(r.wal.last_segment, t.last_segment, "{id} last segment");
        if t.segments_pushed > 0 || !t.complete_backups.is_empty() || !t.incomplete_backups.is_empty() {
            assert_eq!(r.backup_prefix.as_deref(), Some(t.prefix.as_str()), "{id} prefix");
        }
        let complete: Vec<&str> = r.base_backups.iter().filter(|b| b.complete).map(|b| b.name.as_str()).collect();
        let incomplete: Vec<&str> = r.base_backups.iter().filter(|b| !b.complete).map(|b| b.name.as_str()).collect();
        assert_eq!(complete, t.complete_backups.iter().map(String::as_str).collect::<Vec<_>>(), "{id} complete backups");
        assert_eq!(incomplete, t.incomplete_backups.iter().map(String::as_str).collect::<Vec<_>>(), "{id} incomplete backups");
    }
    let deleted = store.records().filter(|r| r.as_ref().unwrap().status == Status::Deleted).count();
    assert_eq!(deleted, truth.instances.values().filter(|t| t.deleted).count());
}

#[test]
fn replaying_the_same_input_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("gen.log");
    let cfg = GenConfig { seed: 5, lines: 20_000, concurrent_instances: 10, noise: 0.5, ..GenConfig::default() };
    Generator::new(cfg).write_all(&mut std::io::BufWriter::new(std::fs::File::create(&log).unwrap())).unwrap();
    let store_dir = tmp.path().join("store");
    let snapshot = |store: &Store| -> Vec<String> { store.records().map(|r| serde_json::to_string(&r.unwrap()).unwrap()).collect() };

    let store = open(&store_dir);
    let first = safeguard::ingest::ingest(&store, EngineConfig::default(), std::slice::from_ref(&log)).unwrap();
    let before = snapshot(&store);
    let applied = store.counters().unwrap().events_applied;
    assert!(applied > 1000);

    // Same file again, and the same bytes under another name: nothing is applied twice.
    let copy = tmp.path().join("archived-copy.log");
    std::fs::copy(&log, &copy).unwrap();
    let again = safeguard::ingest::ingest(&store, EngineConfig::default(), &[log.clone(), copy]).unwrap();
    assert_eq!(again.counters.events_applied, 0);
    assert_eq!(snapshot(&store), before);
    assert_eq!(store.counters().unwrap().events_applied, applied);
    drop(store);

    // Through the real binary's stdin, after a restart.
    let out = std::process::Command::new(common::bin())
        .args(["ingest", "-", "--json", "--store"])
        .arg(&store_dir)
        .stdin(std::fs::File::open(&log).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["events_applied"], 0);
    assert_eq!(v["lines_replayed_skipped"], first.counters.lines_read);
    assert_eq!(snapshot(&open(&store_dir)), before);
}

#[test]
fn an_appended_file_applies_only_the_new_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("syslog");
    let seed = std::fs::read_to_string(fixture("scenarios/seed.log")).unwrap();
    let lines: Vec<&str> = seed.lines().collect();
    let half = lines.len() / 2;
    std::fs::write(&log, lines[..half].join("\n") + "\n").unwrap();
    let store = open(&tmp.path().join("store"));
    let a = safeguard::ingest::ingest(&store, EngineConfig::default(), std::slice::from_ref(&log)).unwrap();
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let b = safeguard::ingest::ingest(&store, EngineConfig::default(), &[log]).unwrap();
    assert_eq!(a.counters.lines_read, half as u64);
    assert_eq!(b.counters.lines_read, (lines.len() - half) as u64, "resumed from the committed offset");
    let r = store.record("6e101b27-ee1b-4f4d-a032-4401a3709ec3").unwrap().unwrap();
    assert_eq!(r.status, Status::Deleted);
    assert_eq!(r.wal.segments_pushed, 3);
}

#[test]
fn cli_ingest_show_and_instances() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    let log = fixture("scenarios/seed.log");
    let (code, out, err) = run(&["ingest", log.to_str().unwrap(), "--store", store]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("lines read") && out.contains("0 rejected"), "{out}");

    let (code, out, _) = run(&["show", "6e101b27-ee1b-4f4d-a032-4401a3709ec3", "--json", "--store", store]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    for field in
        ["instance_id", "status", "backup_prefix", "first_seen", "last_seen", "deleted_at", "nodes", "base_backups", "wal", "sysid_uploaded", "at_risk"]
    {
        assert!(v.get(field).is_some(), "show --json lacks {field}");
    }
    assert_eq!(v["status"], "deleted");
    assert_eq!(v["backup_prefix"], "s3://our-dingo-postgresql-backups/backups/6e101b27-ee1b-4f4d-a032-4401a3709ec3/wal/");

    let (code, out, _) = run(&["show", "6e101b27-ee1b-4f4d-a032-4401a3709ec3", "--store", store]);
    assert_eq!(code, 0);
    assert!(out.contains("DELETED at 2016-03-17T06:10:17.896Z"), "{out}");
    assert!(out.contains("safeguard recover 6e101b27-ee1b-4f4d-a032-4401a3709ec3"), "{out}");

    let (code, _, err) = run(&["show", "00000000-0000-0000-0000-000000000000", "--store", store]);
    assert_eq!(code, 1);
    assert!(err.contains("no instance 00000000-0000-0000-0000-000000000000"), "{err}");

    let (code, out, _) = run(&["instances", "--deleted", "--json", "--store", store]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = v.as_array().unwrap().iter().map(|r| r["instance_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["6e101b27-ee1b-4f4d-a032-4401a3709ec3", "8a303d49-aa3d-4b6f-a254-6623c5921fe5"]);

    let (_, out, _) = run(&["instances", "--at-risk", "--store", store]);
    assert!(out.contains("8a303d49-aa3d-4b6f-a254-6623c5921fe5") && out.contains("no_base_backup"), "{out}");

    // A mistyped store path is reported, not silently created empty.
    let missing = tmp.path().join("no-such-store");
    let (code, _, err) = run(&["instances", "--store", missing.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("there is no store at"), "{err}");
    assert!(!missing.exists());

    let (code, _, err) = run(&["--config", "/nonexistent/safeguard.toml", "instances", "--store", store]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/safeguard.toml"), "{err}");
}

/// Without a watcher, queries read `<store>/snapshot` (no sled open), which must never be stale: a
/// writer removes it before its first write and rewrites it on a clean close; after a crash the next
/// query opens the store itself and leaves a fresh snapshot.
#[test]
fn queries_without_a_watcher_read_a_snapshot_that_is_never_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let store_s = store.to_str().unwrap();
    let snap = store.join(safeguard::store::snapshot::FILE_NAME);
    let seed = std::fs::read_to_string(fixture("scenarios/seed.log")).unwrap();
    let lines: Vec<&str> = seed.lines().collect();
    let (a, b) = (lines.len() / 3, 2 * lines.len() / 3);
    let part = |name: &str, range: &[&str]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, range.join("\n") + "\n").unwrap();
        p
    };
    let lines_read = || -> Value {
        let (code, out, err) = run(&["status", "--json", "--store", store_s]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()["counters"]["lines_read"].clone()
    };
    let id = "6e101b27-ee1b-4f4d-a032-4401a3709ec3";

    let first = part("first.log", &lines[..a]);
    let (code, _, err) = run(&["ingest", first.to_str().unwrap(), "--store", store_s]);
    assert_eq!(code, 0, "{err}");
    assert!(snap.exists(), "ingest closed cleanly but left no snapshot");

    // Another process holds sled's lock without writing: queries still answer, so they did not open it.
    {
        let held = open(&store);
        let expect = record_json(&held.record(id).unwrap().unwrap(), now_ms(), &RiskRules::default());
        let (code, out, err) = run(&["show", id, "--json", "--store", store_s]);
        assert_eq!(code, 0, "{err}");
        let mut got: Value = serde_json::from_str(&out).unwrap();
        let mut expect = expect;
        got["at_risk"] = Value::Null; // time-dependent
        expect["at_risk"] = Value::Null;
        assert_eq!(got, expect);
        assert_eq!(lines_read(), a as u64);
        // One size for the store whichever path answers: every file under it, the snapshot included.
        let (_, out, _) = run(&["status", "--json", "--store", store_s]);
        let size = serde_json::from_str::<Value>(&out).unwrap()["size_bytes"].as_u64().unwrap();
        let walked: u64 = walk_files(&store).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
        assert!(walked > std::fs::metadata(&snap).unwrap().len());
        assert_eq!(size, walked, "status without a watcher");
        assert_eq!(held.size_on_disk(), walked, "the open store");
        let (code, out, _) = run(&["instances", "--json", "--store", store_s]);
        assert_eq!(code, 0);
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().len(), held.records().count());
        let (code, _, err) = run(&["show", "00000000-0000-0000-0000-000000000000", "--store", store_s]);
        assert_eq!(code, 1, "{err}");
    }
    assert!(snap.exists(), "a handle that wrote nothing removed the snapshot");

    // A write removes the snapshot at once, before the store closes.
    {
        let s = open(&store);
        let second = part("second.log", &lines[a..b]);
        safeguard::ingest::ingest(&s, EngineConfig::default(), &[second]).unwrap();
        assert!(!snap.exists(), "the snapshot outlived a write");
    }
    assert!(snap.exists());
    assert_eq!(lines_read(), b as u64);

    // A writer killed after committing leaves no snapshot: the next query opens the store, sees every
    // committed line, and leaves a fresh snapshot behind.
    let third = part("third.log", &lines[b..]);
    let mut w = common::KillOnDrop(
        std::process::Command::new(common::bin())
            .args(["watch", "--file", third.to_str().unwrap(), "--store", store_s])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    common::wait_until("the watcher's commit", std::time::Duration::from_secs(20), || lines_read() == lines.len() as u64);
    w.0.kill().unwrap();
    w.0.wait().unwrap();
    assert!(!snap.exists(), "a crashed writer's snapshot survived");
    // Its socket file is left behind too; nobody answers on it.
    assert!(store.join(safeguard::query::SOCKET_NAME).exists());
    assert_eq!(lines_read(), lines.len() as u64);
    assert!(snap.exists(), "the query that opened the store left no snapshot");
    let (code, out, _) = run(&["show", id, "--json", "--store", store_s]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["status"], "deleted");
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn show_takes_a_unique_id_prefix_and_names_the_candidates_of_an_ambiguous_one() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let store_s = store.to_str().unwrap();
    let (code, _, err) = run(&["ingest", fixture("scenarios/seed.log").to_str().unwrap(), "--store", store_s]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["show", "6e101b27", "--json", "--store", store_s]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["instance_id"], "6e101b27-ee1b-4f4d-a032-4401a3709ec3");
    // A second instance that shares the first 8 characters.
    let other = tmp.path().join("other.log");
    std::fs::write(&other, "Mar 18 10:00:00 0.router broker.stdout.log:  {\"timestamp\":\"1458295200.0\",\"source\":\"patroni-broker\",\"message\":\"patroni-broker.cluster.provision.start\",\"log_level\":1,\"data\":{\"instance-id\":\"6e101b27-0000-4000-8000-000000000001\"}}\n").unwrap();
    let (code, _, err) = run(&["ingest", other.to_str().unwrap(), "--store", store_s]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&["show", "6e101b27", "--store", store_s]);
    assert_ne!(code, 0);
    assert!(
        err.contains("6e101b27-ee1b-4f4d-a032-4401a3709ec3") && err.contains("6e101b27-0000-4000-8000-000000000001") && err.contains("give more of the id"),
        "{err}"
    );
    let (code, out, _) = run(&["show", "6e101b27-e", "--store", store_s]);
    assert_eq!(code, 0);
    assert!(out.contains("DELETED"), "{out}");
    let (code, _, _) = run(&["show", "6e1", "--store", store_s]);
    assert_eq!(code, 1, "a prefix shorter than 4 characters is not resolved");
}
