//! The record is a function of the set of facts seen: however the same log arrives (any split, any order,
//! any line repeated, across restarts and resumed ingests), `show --json` says the same. Each example the
//! issue found by trying the product is a regression test against the real binary; the general property is
//! a property test over generated corpora, and a deletion that a late line reverses sends an all-clear
//! through a real SMTP server.

use crate::common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, env, fixture, free_port, lager, mails, run, wait_until, KillOnDrop};
use proptest::prelude::*;
use safeguard::gen::{GenConfig, Generator, Rng};
use safeguard::pipeline::EngineConfig;
use safeguard::report::record_json;
use safeguard::state::risk::RiskRules;
use safeguard::store::Store;
use safeguard::timeutil::{now_ms, rfc3339};
use serde_json::Value;

const A: &str = "6e101b27-ee1b-4f4d-a032-4401a3709ec3";
const SEED_IDS: [&str; 3] = [A, "7f202c38-ff2c-4a5e-b143-5512b4810fd4", "8a303d49-aa3d-4b6f-a254-6623c5921fe5"];

fn seed_lines() -> Vec<String> {
    std::fs::read_to_string(fixture("scenarios/seed.log")).unwrap().lines().map(str::to_string).collect()
}

fn write(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

/// `safeguard ingest FILE` as its own process; returns its `--json` summary.
fn ingest(store: &Path, file: &Path) -> Value {
    let (code, out, err) = run(&["ingest", file.to_str().unwrap(), "--json", "--store", store.to_str().unwrap()]);
    assert_eq!(code, 0, "ingest {}: {err}", file.display());
    serde_json::from_str(&out).unwrap()
}

fn show(store: &Path, id: &str) -> Value {
    let (code, out, err) = run(&["show", id, "--json", "--store", store.to_str().unwrap()]);
    assert_eq!(code, 0, "show {id}: {err}");
    let mut v: Value = serde_json::from_str(&out).unwrap();
    // Risks are judged against the wall clock at the moment of asking; everything else must be equal.
    v.as_object_mut().unwrap().remove("at_risk");
    v
}

fn show_all(store: &Path, ids: &[&str]) -> BTreeMap<String, Value> {
    ids.iter().map(|id| (id.to_string(), show(store, id))).collect()
}

/// What one in-order ingest of the whole seed log says.
fn reference(dir: &Path) -> BTreeMap<String, Value> {
    let store = dir.join("reference-store");
    ingest(&store, &write(dir, "reference.log", &seed_lines()));
    show_all(&store, &SEED_IDS)
}

fn assert_same(want: &BTreeMap<String, Value>, got: &BTreeMap<String, Value>, how: &str) {
    for (id, w) in want {
        assert_eq!(&got[id], w, "{id} differs when the log arrives {how}\nwant {w:#}\ngot {:#}", got[id]);
    }
}

#[test]
fn old_lines_arriving_again_do_not_resurrect_a_deleted_instance() {
    let tmp = tempfile::tempdir().unwrap();
    let want = reference(tmp.path());
    let store = tmp.path().join("store");
    let lines = seed_lines();
    ingest(&store, &write(tmp.path(), "seed.log", &lines));
    assert_eq!(show(&store, A)["status"], "deleted");
    // The first two lines (provision and add-node, a day before the deletion) re-sent by a relay, in a
    // file of its own.
    let mut resent = vec!["Mar 17 07:00:00 relay-b rsyslogd: [origin software=\"rsyslogd\"] start".to_string()];
    resent.extend(lines[..2].iter().cloned());
    ingest(&store, &write(tmp.path(), "resent.log", &resent));
    assert_same(&want, &show_all(&store, &SEED_IDS), "with its first lines re-sent after it");
    let (_, out, _) = run(&["instances", "--deleted", "--json", "--store", store.to_str().unwrap()]);
    assert!(out.contains(A), "still listed as deleted: {out}");
}

#[test]
fn files_ingested_newest_first_give_the_in_order_records() {
    let tmp = tempfile::tempdir().unwrap();
    let want = reference(tmp.path());
    let lines = seed_lines();
    let half = lines.len() / 2;
    let store = tmp.path().join("store");
    // `syslog syslog.1` as a shell glob hands them: the newer half first.
    ingest(&store, &write(tmp.path(), "syslog", &lines[half..]));
    ingest(&store, &write(tmp.path(), "syslog.1", &lines[..half]));
    let got = show_all(&store, &SEED_IDS);
    assert_same(&want, &got, "newest file first");
    assert_eq!(got[A]["base_backups"][0]["time"], "2016-03-16T19:30:05.000Z");
}

#[test]
fn a_resumed_ingest_keeps_the_years_of_a_clean_run() {
    let tmp = tempfile::tempdir().unwrap();
    let want = reference(tmp.path());
    let lines = seed_lines();
    let store = tmp.path().join("store");
    // The archive was ingested while it was being written, and again once complete: the second run
    // resumes mid-file, past every line that carries a year.
    let cut = lines.iter().rposition(|l| l.contains("STRUCTURED")).unwrap() + 1;
    let log = write(tmp.path(), "syslog", &lines[..cut]);
    ingest(&store, &log);
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let s = ingest(&store, &log);
    assert_eq!(s["lines_read"], (lines.len() - cut) as u64, "resumed from the committed offset");
    let got = show_all(&store, &SEED_IDS);
    assert_same(&want, &got, "through a resumed ingest");
    assert!(got[A]["last_seen"].as_str().unwrap().starts_with("2016-"), "{:#}", got[A]);
}

#[test]
fn per_host_files_one_by_one_in_any_order() {
    let tmp = tempfile::tempdir().unwrap();
    let want = reference(tmp.path());
    // rsyslog's /var/log/remote/<host>.log
    let mut by_host: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in seed_lines() {
        let host = l.split_whitespace().nth(3).unwrap().to_string();
        by_host.entry(host).or_default().push(l);
    }
    let files: Vec<PathBuf> = by_host.iter().map(|(h, ls)| write(tmp.path(), &format!("{h}.log"), ls)).collect();
    assert!(files.len() >= 4);
    let mut orders: Vec<Vec<usize>> = vec![(0..files.len()).collect(), (0..files.len()).rev().collect()];
    let mut rng = Rng::new(7);
    for _ in 0..6 {
        let mut o: Vec<usize> = (0..files.len()).collect();
        for i in (1..o.len()).rev() {
            o.swap(i, rng.below(i as u64 + 1) as usize);
        }
        orders.push(o);
    }
    for (k, order) in orders.iter().enumerate() {
        let store = tmp.path().join(format!("store-{k}"));
        for &i in order {
            ingest(&store, &files[i]);
        }
        let names: Vec<_> = order.iter().map(|&i| files[i].file_name().unwrap().to_string_lossy().into_owned()).collect();
        let got = show_all(&store, &SEED_IDS);
        assert_same(&want, &got, &format!("as per-host files in the order {names:?}"));
        let (_, st, _) = run(&["status", "--json", "--store", store.to_str().unwrap()]);
        let st: Value = serde_json::from_str(&st).unwrap();
        assert_eq!(st["counters"]["lines_parked"], 0, "every line found its instance: {st:#}");
    }
}

#[test]
fn an_overlapping_archive_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let want = reference(tmp.path());
    let lines = seed_lines();
    let store = tmp.path().join("store");
    ingest(&store, &write(tmp.path(), "seed.log", &lines));
    // An archive that overlaps what was applied: one earlier line, then all of it again.
    let mut overlap = vec![lines[0].replace("19:00:01", "18:59:59").replace("1458154801.100000000", "1458154799.000000000")];
    overlap.extend(lines.iter().cloned());
    ingest(&store, &write(tmp.path(), "overlap.log", &overlap));
    let got = show_all(&store, &SEED_IDS);
    let b = &got[A]["base_backups"][1];
    assert_eq!((b["name"].as_str(), b["complete"].as_bool()), (Some("base_000000010000000000000004_00000028"), Some(false)), "{b:#}");
    assert_eq!(got[A]["wal"]["segments_pushed"], 3);
    assert_eq!(got[SEED_IDS[2]]["base_backups"][0]["partitions_done"], 1);
    let mut want = want;
    want.get_mut(A).unwrap()["first_seen"] = "2016-03-16T18:59:59.000Z".into();
    assert_same(&want, &got, "with an overlapping archive");
}

#[test]
fn the_same_lines_through_two_relays_count_once() {
    let tmp = tempfile::tempdir().unwrap();
    let want = reference(tmp.path());
    let lines = seed_lines();
    // Interleaved in one stream, and as two files from two relays whose first lines differ.
    let twice: Vec<String> = lines.iter().flat_map(|l| [l.clone(), l.clone()]).collect();
    let store = tmp.path().join("store-interleaved");
    ingest(&store, &write(tmp.path(), "twice.log", &twice));
    assert_same(&want, &show_all(&store, &SEED_IDS), "twice over, interleaved");
    let store = tmp.path().join("store-relays");
    let mut relay_b = vec!["Mar 16 18:00:00 relay-b rsyslogd: [origin software=\"rsyslogd\"] start".to_string()];
    relay_b.extend(lines.iter().cloned());
    ingest(&store, &write(tmp.path(), "relay-a.log", &lines));
    ingest(&store, &write(tmp.path(), "relay-b.log", &relay_b));
    let got = show_all(&store, &SEED_IDS);
    assert_same(&want, &got, "through two relays");
    assert_eq!(got[A]["wal"]["segments_pushed"], 3);
}

#[test]
fn two_files_that_share_a_first_line_are_not_confused() {
    let tmp = tempfile::tempdir().unwrap();
    let want = reference(tmp.path());
    let banner = "Mar 16 18:00:00 relay rsyslogd: [origin software=\"rsyslogd\"] start".to_string();
    let lines = seed_lines();
    let mut other = vec![banner.clone()];
    other.extend(lines.iter().filter(|l| l.contains("7f202c38")).cloned());
    other.extend((0..40).map(|i| format!("Mar 16 18:{i:02}:00 relay sshd[1]: Accepted publickey for vcap")));
    let mut full = vec![banner];
    full.extend(lines.iter().cloned());
    let store = tmp.path().join("store");
    ingest(&store, &write(tmp.path(), "other.log", &other));
    let s = ingest(&store, &write(tmp.path(), "full.log", &full));
    assert_eq!(s["lines_read"], full.len() as u64, "every line of the second file read: {s:#}");
    assert_eq!(s["lines_replayed_skipped"], 0);
    assert_same(&want, &show_all(&store, &SEED_IDS), "after another file with the same first line");
}

#[test]
fn a_watcher_killed_mid_file_keeps_the_years_of_a_clean_run() {
    let tmp = tempfile::tempdir().unwrap();
    // A 2016 archive followed by the watcher: RFC 3164 lines carry no year.
    let start = safeguard::timeutil::parse_rfc3339("2016-03-01T00:00:00Z").unwrap();
    let cfg = GenConfig { seed: 23, lines: 40_000, concurrent_instances: 30, noise: 0.5, start_ms: start, ..GenConfig::default() };
    let mut all = Vec::new();
    let truth = Generator::new(cfg).write_all(&mut all).unwrap();
    let lines: Vec<String> = String::from_utf8(all).unwrap().lines().map(str::to_string).collect();
    let clean = tmp.path().join("clean");
    ingest(&clean, &write(tmp.path(), "whole.log", &lines));

    let log = tmp.path().join("syslog");
    let cut = lines.len() * 3 / 5;
    write(tmp.path(), "syslog", &lines[..cut]);
    let store = tmp.path().join("store");
    let config = tmp.path().join("follow.toml");
    std::fs::write(&config, format!("[watch]\ncommit_interval = \"50ms\"\n\n[[sources]]\ntype = \"file\"\npath = \"{}\"\n", log.display())).unwrap();
    let read = |store: &Path| -> Option<u64> {
        let (code, out, _) = run(&["status", "--json", "--store", store.to_str().unwrap()]);
        (code == 0).then(|| serde_json::from_str::<Value>(&out).ok()?["counters"]["lines_read"].as_u64()).flatten()
    };
    let spawn = || {
        let child = Command::new(bin())
            .args(["watch", "--config"])
            .arg(&config)
            .arg("--store")
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        KillOnDrop(child)
    };
    let mut w = spawn();
    wait_until("the first part committed", Duration::from_secs(60), || read(&store) == Some(cut as u64));
    w.0.kill().unwrap();
    let _ = w.0.wait();
    // The rest arrives while it is down; the restarted watcher resumes mid-file.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all((lines[cut..].join("\n") + "\n").as_bytes()).unwrap();
    drop(f);
    let w = spawn();
    wait_until("the rest of the file", Duration::from_secs(120), || read(&store) == Some(truth.lines));
    drop(w);
    let ids: Vec<&str> = truth.instances.keys().map(String::as_str).collect();
    let (want, got) = (show_all(&clean, &ids), show_all(&store, &ids));
    for id in &ids {
        assert_eq!(got[*id], want[*id], "{id}: a watcher killed mid-file and restarted differs from a clean ingest");
        assert!(got[*id]["last_seen"].as_str().unwrap().starts_with("2016-"), "{:#}", got[*id]);
    }
}

// ---------------------------------------------------------------- the general property

/// Every record of a store, as `show --json` renders it (at a fixed time, so risks compare too).
fn records(store: &Store) -> BTreeMap<String, Value> {
    store.records().map(|r| r.unwrap()).map(|r| (r.instance_id.clone(), record_json(&r, 0, &RiskRules::default()))).collect()
}

fn corpus(seed: u64) -> Vec<String> {
    let cfg = GenConfig { seed, lines: 6_000, concurrent_instances: 12, noise: 0.3, delete_fraction: 0.4, ..GenConfig::default() };
    let mut out = Vec::new();
    Generator::new(cfg).write_all(&mut out).unwrap();
    String::from_utf8(out).unwrap().lines().map(str::to_string).collect()
}

/// The sending host of a line in any of the generator's envelopes.
fn host_of(l: &str) -> String {
    if l.starts_with('{') {
        let v: Value = serde_json::from_str(l).unwrap();
        return v["host"].as_str().unwrap_or("").to_string();
    }
    let f: Vec<&str> = l.split_whitespace().collect();
    match f.first() {
        Some(p) if p.starts_with("<134>1") => f.get(2),
        Some(p) if p.starts_with('<') => f.get(3),
        _ => f.get(3),
    }
    .unwrap_or(&"")
    .to_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, .. ProptestConfig::default() })]
    /// Any split of a corpus into streams (by host, then at random cut points), fed in any order, with any
    /// lines duplicated, each stream through its own ingest run on a reopened store, gives the records of
    /// one in-order ingest.
    #[test]
    fn any_split_order_and_duplication_gives_the_in_order_records(seed in 1u64..1000, cuts in 0usize..6, dup_per_mille in 0u64..200, shuffle in any::<u64>()) {
        let tmp = tempfile::tempdir().unwrap();
        let lines = corpus(seed);
        let whole = write(tmp.path(), "whole.log", &lines);
        let want = {
            let store = Store::open(&tmp.path().join("want"), 16 << 20).unwrap();
            safeguard::ingest::ingest(&store, EngineConfig::default(), &[whole]).unwrap();
            records(&store)
        };
        let mut rng = Rng::new(shuffle);
        let mut streams: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for l in &lines {
            let s = streams.entry(host_of(l)).or_default();
            s.push(l.clone());
            if rng.below(1000) < dup_per_mille {
                // The same line again, from another relay: into any stream.
                let key = format!("relay-{}", rng.below(3));
                streams.entry(key).or_default().push(l.clone());
            }
        }
        let mut pieces: Vec<Vec<String>> = streams.into_values().collect();
        for _ in 0..cuts {
            let i = rng.below(pieces.len() as u64) as usize;
            if pieces[i].len() > 1 {
                let at = 1 + rng.below(pieces[i].len() as u64 - 1) as usize;
                let tail = pieces[i].split_off(at);
                pieces.push(tail);
            }
        }
        for i in (1..pieces.len()).rev() {
            pieces.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let dir = tmp.path().join("split");
        for (k, p) in pieces.iter().enumerate() {
            let f = write(tmp.path(), &format!("piece-{k}.log"), p);
            // A separate run each: sled lets go of its lock a moment after the last handle drops.
            let store = Store::open_waiting(&dir, 16 << 20, Duration::from_secs(10)).unwrap();
            safeguard::ingest::ingest(&store, EngineConfig::default(), &[f]).unwrap();
        }
        let store = Store::open_waiting(&dir, 16 << 20, Duration::from_secs(10)).unwrap();
        let got = records(&store);
        prop_assert_eq!(got.len(), want.len());
        for (id, w) in &want {
            prop_assert_eq!(&got[id], w, "{} differs after {} pieces", id, pieces.len());
        }
        prop_assert_eq!(store.counters().unwrap().lines_parked, 0);
    }
}

// ---------------------------------------------------------------- a late line reverses a deletion

#[test]
fn a_late_add_within_the_grace_sends_an_all_clear_for_the_announced_deletion() {
    let maildir = PathBuf::from(env("SAFEGUARD_TEST_MAILDIR"));
    let smtp = env("SAFEGUARD_TEST_SMTP");
    let (host, port) = smtp.split_once(':').unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("safeguard.toml");
    std::fs::write(
        &config,
        format!(
            "[watch]\ndeletion_grace = \"20s\"\ncommit_interval = \"200ms\"\n\n[alerts]\nmax_retry_interval = \"1s\"\n\n[alerts.email]\nhost = \"{host}\"\nport = {port}\nsecurity = \"none\"\nfrom = \"safeguard@platform.example\"\nto = [\"dba-oncall@platform.example\"]\ntimeout = \"3s\"\n"
        ),
    )
    .unwrap();
    let store = tmp.path().join("store");
    let syslog = free_port();
    let child = Command::new(bin())
        .args(["watch", "--config"])
        .arg(&config)
        .arg("--store")
        .arg(&store)
        .args(["--syslog", &format!("127.0.0.1:{syslog}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _w = KillOnDrop(child);
    wait_until("the watcher to listen", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", syslog)).is_ok());
    let mut rng = Rng::new(now_ms() as u64);
    let (id, node, node2) = (rng.uuid(), rng.uuid(), rng.uuid());
    let send = |lines: &[String]| {
        let mut s = TcpStream::connect(("127.0.0.1", syslog)).unwrap();
        for l in lines {
            writeln!(s, "{l}").unwrap();
        }
    };
    // Its last node was removed 30 s ago, past the 20 s grace: the deletion is final and announced.
    let t = now_ms() - 60_000;
    send(&[
        lager(t, "provision.start", &format!(r#""instance-id":"{id}""#)),
        lager(t + 1_000, "add-node.perform", &format!(r#""instance-id":"{id}","node-uuid":"{node}""#)),
        lager(t + 30_000, "remove-node.perform", &format!(r#""instance-id":"{id}","node-uuid":"{node}","backend":"10.0.0.1""#)),
    ]);
    // Judged from the logs alone (no [s3] here): a deletion without a complete base backup.
    wait_until("the deletion email", Duration::from_secs(30), || mails(&maildir, &id).iter().any(|m| m.subject.contains("deleted instance")));
    // A relay that was down delivers the line it held: a node added 5 s after the removal, within the grace.
    send(&[lager(t + 35_000, "add-node.perform", &format!(r#""instance-id":"{id}","node-uuid":"{node2}""#))]);
    wait_until("the all-clear email", Duration::from_secs(30), || mails(&maildir, &id).iter().any(|m| m.subject.contains("RESOLVED")));
    let got = mails(&maildir, &id);
    let resolved: Vec<_> = got.iter().filter(|m| m.subject.contains("RESOLVED")).collect();
    assert_eq!(resolved.len(), 1, "one all-clear: {:?}", got.iter().map(|m| &m.subject).collect::<Vec<_>>());
    assert!(resolved[0].subject.contains("is live again"), "{}", resolved[0].subject);
    assert!(resolved[0].text.contains(&rfc3339(t + 30_000)), "names the deletion it clears:\n{}", resolved[0].text);
    let (_, out, _) = run(&["show", &id, "--json", "--store", store.to_str().unwrap()]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "live", "{v:#}");
    // The same late line again changes nothing and sends nothing more.
    send(&[lager(t + 35_000, "add-node.perform", &format!(r#""instance-id":"{id}","node-uuid":"{node2}""#))]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(mails(&maildir, &id).len(), got.len(), "no more mail for a replayed line");
}

// ---------------------------------------------------------------- parked lines: durable and bounded

fn creating(node: &str) -> String {
    format!("<134>1 {} 0.cell-z1-0 cf-containers-broker.stdout.log - - - Creating Docker container `cf-{node}'...", rfc3339(now_ms()))
}

#[test]
fn parked_lines_survive_a_restart_and_are_bounded_by_count_and_age() {
    use safeguard::pipeline::{Engine, SourceId};
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(99);
    let nodes: Vec<String> = (0..5).map(|_| rng.uuid()).collect();
    let id = rng.uuid();
    {
        let store = Store::open(tmp.path(), 16 << 20).unwrap();
        let mut e = Engine::new(store, EngineConfig { parked_max: 3, ..EngineConfig::default() }).unwrap();
        let h = e.add_source(SourceId::Syslog, "syslog", false).unwrap();
        for (i, n) in nodes.iter().enumerate() {
            e.feed_line(h, i as u64 + 1, creating(n).as_bytes());
        }
        e.commit(None).unwrap();
        let c = e.counters();
        assert_eq!((c.lines_parked, c.lines_expired_unattributed, c.lines_unattributed), (3, 2, 2), "the two oldest given up past parked_max");
    }
    {
        // A restart keeps them; the add-node that names the newest one's instance applies it.
        let store = Store::open_waiting(tmp.path(), 16 << 20, Duration::from_secs(10)).unwrap();
        let mut e = Engine::new(store.clone(), EngineConfig::default()).unwrap();
        assert_eq!(e.counters().lines_parked, 3);
        let h = e.add_source(SourceId::Syslog, "syslog", false).unwrap();
        let add = lager(now_ms(), "add-node.perform", &format!(r#""instance-id":"{id}","node-uuid":"{}""#, nodes[4]));
        e.feed_line(h, 1, add.as_bytes());
        e.commit(None).unwrap();
        assert_eq!(e.counters().lines_parked, 2);
        let r = store.record(&id).unwrap().unwrap();
        assert!(r.nodes[0].added_at.is_some() && r.nodes[0].node_uuid == nodes[4], "{r:?}");
        assert_eq!(store.parked().unwrap().len(), 2, "the applied line left the store");
    }
    {
        // Past parked_ttl, the rest is given up, and counted.
        let store = Store::open_waiting(tmp.path(), 16 << 20, Duration::from_secs(10)).unwrap();
        let mut e = Engine::new(store.clone(), EngineConfig { parked_ttl_ms: 1, ..EngineConfig::default() }).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        e.commit(None).unwrap();
        let c = e.counters();
        assert_eq!((c.lines_parked, c.lines_expired_unattributed), (0, 4));
        assert!(store.parked().unwrap().is_empty());
    }
}

// ---------------------------------------------------------------- a store from the previous release

#[test]
fn a_schema_1_store_is_migrated_and_keeps_its_verdicts_under_replays() {
    let tmp = tempfile::tempdir().unwrap();
    let want = reference(tmp.path());
    let store = tmp.path().join("store");
    {
        // What the previous release (schema 1) wrote for the seed log: its records, as it showed them, and
        // its node index; no facts.
        let db = sled::open(&store).unwrap();
        db.insert("m/schema", "1").unwrap();
        for id in SEED_IDS {
            let text = std::fs::read_to_string(fixture(&format!("schema1/{id}.json"))).unwrap();
            let v: Value = serde_json::from_str(&text).unwrap();
            for n in v["nodes"].as_array().unwrap() {
                db.insert(format!("n/{}", n["node_uuid"].as_str().unwrap()), id).unwrap();
            }
            db.insert(format!("i/{id}"), text.as_bytes()).unwrap();
        }
        db.flush().unwrap();
    }
    // Read before any writer ran: the query migrates a private copy and leaves the store as it was.
    let db_before = std::fs::read(store.join("db")).unwrap();
    let (code, out, err) = run(&["show", A, "--json", "--store", store.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["instance_id"], A);
    assert!(std::fs::read(store.join("db")).unwrap() == db_before, "a read-only query wrote the schema 1 store");
    assert!(!store.join("snapshot").exists(), "a migrated copy's snapshot was written into the schema 1 store");
    let lines = seed_lines();
    // A relay re-sends the first lines, and the whole archive is ingested again under another first line.
    let mut resent = vec!["Mar 17 07:00:00 relay-b rsyslogd: [origin software=\"rsyslogd\"] start".to_string()];
    resent.extend(lines[..2].iter().cloned());
    ingest(&store, &write(tmp.path(), "resent.log", &resent));
    let mut again = vec!["Mar 17 07:00:01 relay-c rsyslogd: [origin software=\"rsyslogd\"] start".to_string()];
    again.extend(lines.iter().cloned());
    ingest(&store, &write(tmp.path(), "again.log", &again));
    let (_, st, _) = run(&["status", "--json", "--store", store.to_str().unwrap()]);
    let st: Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["schema_version"], safeguard::store::SCHEMA_VERSION.to_string(), "{st:#}");
    let got = show_all(&store, &SEED_IDS);
    for id in SEED_IDS {
        for f in ["status", "deleted_at", "deleted_by", "deletion_pending", "base_backups", "wal", "nodes", "backup_prefix", "sysid_uploaded"] {
            assert_eq!(got[id][f], want[id][f], "{id}: `{f}` after migrating a schema 1 store and replaying its archive");
        }
    }
}

#[test]
fn year_less_archives_wait_for_an_anchor_or_take_the_year_they_are_given() {
    let tmp = tempfile::tempdir().unwrap();
    let id = SEED_IDS[2];
    // Only the cell's lines of 8a303d49: RFC 3164, and no line carries a year.
    let cell: Vec<String> = seed_lines().into_iter().filter(|l| l.contains("15eee33f-819e")).collect();
    assert!(cell.iter().all(|l| !l.contains("STRUCTURED") && !l.contains("\"timestamp\"")));
    let log = write(tmp.path(), "cell.log", &cell);

    // Without --year: the lines wait (their year is a guess and the instance has no dated line yet).
    let store = tmp.path().join("guess");
    let s = ingest(&store, &log);
    assert_eq!(s["lines_parked"], cell.len() as u64, "{s:#}");
    let (code, _, _) = run(&["show", id, "--store", store.to_str().unwrap()]);
    assert_eq!(code, 1, "nothing applied with a guessed year");

    // With --year the operator dates them.
    let store = tmp.path().join("dated");
    let (code, out, err) = run(&["ingest", log.to_str().unwrap(), "--year", "2016", "--json", "--store", store.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["lines_parked"], 0, "{s:#}");
    let v = show(&store, id);
    assert_eq!(v["wal"]["last_pushed_at"], "2016-03-16T21:06:00.000Z", "{v:#}");
    assert_eq!(v["wal"]["last_failure_at"], "2016-03-17T06:00:00.000Z", "{v:#}");
    let (code, _, err) = run(&["ingest", log.to_str().unwrap(), "--year", "20x6", "--store", store.to_str().unwrap()]);
    assert_eq!(code, 2, "a bad --year is refused by the argument parser: {err}");
}

#[test]
fn a_deprovisioned_instance_reads_back_and_takes_later_lines() {
    // `deprovision.start` is a lifecycle fact with `done: false`, a value the store writes as nothing.
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let id = "5b0a7c1e-2f3d-4e5f-8a9b-0c1d2e3f4a5b";
    let t = safeguard::timeutil::parse_rfc3339("2016-03-16T19:00:00Z").unwrap();
    let first = vec![
        lager(t, "provision.start", &format!(r#""instance-id":"{id}""#)).replace(".cluster.", "."),
        lager(t + 1_000, "deprovision.start", &format!(r#""instance-id":"{id}""#)).replace(".cluster.", "."),
        // A container line of a node not known yet, stamped before year 0: it would be parked with a time
        // the store cannot read back, and every later start would fail. It is rejected by reason instead.
        "<134>1 0000-01-01T00:00:00+01:00 cell-1 cf-9d8c7b6a-1e2f-4a3b-8c5d-6e7f8a9b0c1d - - - restore_leader_if_missing> new cluster, no existing backup to restore".to_string(),
    ];
    let s = ingest(&store, &write(tmp.path(), "first.log", &first));
    assert_eq!(s["rejected_by_reason"]["time"], 1, "{s:#}");
    let later = vec![lager(t + 600_000, "deprovision.done", &format!(r#""instance-id":"{id}""#)).replace(".cluster.", ".")];
    let s = ingest(&store, &write(tmp.path(), "later.log", &later));
    assert_eq!(s["lines_attributed"], 1, "{s:#}");
    let v = show(&store, id);
    assert_eq!(v["status"], "deleted", "{v:#}");
    assert_eq!(v["deleted_by"], "broker deprovision.start", "{v:#}");
    assert_eq!(v["last_seen"], rfc3339(t + 600_000), "{v:#}");
}
