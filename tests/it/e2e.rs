//! End-to-end acceptance (issue 6): a real database is deleted, an email arrives, and one command
//! brings every row back. Everything runs for real except the platform's orchestration, which the
//! harness plays (tests/harness, scripts/e2e/container.sh; docs/e2e.md):
//! tansu (Kafka protocol), moto (S3), etcd v2, aiosmtpd (SMTP), PostgreSQL 14 servers as the
//! `postgres` user, WAL-E 1.1.1 wal-push / backup-push / backup-fetch / wal-fetch, and the real
//! `safeguard` binary (watch, show, verify, recover, recoveries, ingest).

use crate::harness;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use harness::*;
use serde_json::Value;

/// Deletion grace of the watcher under test (production default: 2 minutes).
const GRACE: &str = "3s";

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

/// WAL segment names (24 hex digits) under `wal_005/` among keys relative to a prefix.
fn wal_segments(keys: &BTreeSet<String>) -> Vec<String> {
    let mut v: Vec<String> = keys
        .iter()
        .filter_map(|k| k.strip_prefix("wal_005/")?.strip_suffix(".lzo"))
        .filter(|s| s.len() == 24 && s.bytes().all(|c| c.is_ascii_hexdigit()))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Base backups with a sentinel, among keys relative to a prefix.
fn complete_backups(keys: &BTreeSet<String>) -> Vec<String> {
    keys.iter().filter_map(|k| k.strip_prefix("basebackups_005/")?.strip_suffix("_backup_stop_sentinel.json")).map(str::to_string).collect()
}

fn relative(prefix: &str, snap_keys: impl Iterator<Item = String>) -> BTreeSet<String> {
    let key_prefix = safeguard::s3::S3Url::parse(prefix).unwrap().key;
    snap_keys.map(|k| k.strip_prefix(&key_prefix).unwrap_or(&k).to_string()).collect()
}

fn dur_between(from: SystemTime, to: SystemTime) -> Duration {
    to.duration_since(from).unwrap_or_default()
}

fn save_timeline(name: &str, text: &str) {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("e2e-{name}-timeline.txt"));
    let _ = std::fs::write(&p, text);
    eprintln!("(timeline also written to {})", p.display());
}

#[test]
fn a_deleted_database_is_announced_by_email_and_recovered_with_every_row() {
    let started = Instant::now();
    let p = Platform::new("recover");
    let tl = &p.timeline;
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let cfg = p.config(work.path(), &format!("safeguard-e2e-{}", p.uuid()), GRACE);
    let watcher = Watcher::start(&cfg, &store, &work.path().join("watcher.log"));
    tl.mark("safeguard watch running: Kafka source, S3 verification, SMTP alerts");
    let (cell1, cell2) = (p.uuid(), p.uuid());

    // ---- Instance A: rows, a base backup, then rows that exist only in WAL.
    let mut a = p.provision(&cell1);
    let a_node = a.leader().clone();
    tl.mark(format!("A {} provisioned on cell {cell1} (new cluster, sysid uploaded)", a.id));
    p.write_rows(&a_node, 1, 2000);
    p.switch_wal(&a_node);
    p.backup(&a_node);
    tl.mark("A: 2000 rows written, base backup pushed (wal-e backup-push)");
    p.write_rows(&a_node, 2001, 2600);
    p.psql(&a_node, "update orders set amount = amount + 0.01 where id % 10 = 0");
    p.psql(&a_node, "delete from orders where id % 100 = 7");
    let a_last_seg = p.switch_wal(&a_node);
    let a_sum = p.checksum(&a_node);
    tl.mark(format!("A: 600 more rows, updates and deletes after the backup, only in WAL (through segment {a_last_seg}); {} rows, md5 {}", a_sum.0, a_sum.1));

    // ---- Instance B: archives WAL, never a base backup.
    let mut b = p.provision(&cell2);
    let b_node = b.leader().clone();
    p.write_rows(&b_node, 1, 300);
    let b_last_seg = p.switch_wal(&b_node);
    tl.mark(format!("B {} provisioned on cell {cell2}: 300 rows, WAL archived through {b_last_seg}, no base backup", b.id));

    // The watcher has seen both instances' backups before anything is deleted.
    p.sync();
    wait_until("the watcher to record A's complete base backup", Duration::from_secs(60), || {
        show(&cfg, &store, &a.id).is_some_and(|v| v["base_backups"].as_array().is_some_and(|b| b.iter().any(|b| b["complete"] == true)))
    });
    wait_until("the watcher to record B's WAL", Duration::from_secs(60), || {
        show(&cfg, &store, &b.id).is_some_and(|v| v["wal"]["last_segment"].as_str() == Some(b_last_seg.as_str()))
    });

    // ---- Both deleted: remove-node of their last node, containers stopped, data wiped.
    let del_a = SystemTime::now();
    tl.mark("cf delete-service A: remove-node of its last node; container stopped, data wiped");
    p.delete(&mut a);
    let del_b = SystemTime::now();
    tl.mark("cf delete-service B: the same");
    p.delete(&mut b);
    p.sync();
    assert!(!a_node.dir.join("data/PG_VERSION").exists(), "A's data directory is gone");

    // What A left in S3. Its shutdown archived one last segment (PostgreSQL switches WAL at a
    // shutdown when archiving), so this is taken after the deletion: nothing writes there any more.
    let a_prefix = p.prefix(&a.id);
    let a_before = p.s3_snapshot(&a_prefix);
    let a_keys = relative(&a_prefix, a_before.keys().cloned());
    let a_backups = complete_backups(&a_keys);
    assert_eq!(a_backups.len(), 1, "A's prefix holds one complete base backup: {a_keys:?}");
    let a_backup = a_backups[0].clone();
    let a_newest = wal_segments(&a_keys).last().cloned().expect("A's WAL in S3");
    assert!(a_newest >= a_last_seg, "{a_keys:?}");

    // ---- Exactly one warning email for A, one critical for B.
    let maildir = p.svc.maildir.clone();
    wait_until("the deletion emails for A and B", Duration::from_secs(120), || !mails(&maildir, &a.id).is_empty() && !mails(&maildir, &b.id).is_empty());
    let (ma, mb) = (mails(&maildir, &a.id), mails(&maildir, &b.id));
    let to_mail_a = dur_between(del_a, ma[0].received);
    let to_mail_b = dur_between(del_b, mb[0].received);
    tl.mark(format!("email: {}", ma[0].subject));
    tl.mark(format!("email: {}", mb[0].subject));
    std::thread::sleep(Duration::from_secs(4));
    let (ma, mb) = (mails(&maildir, &a.id), mails(&maildir, &b.id));
    assert_eq!(ma.len(), 1, "exactly one email names A: {:?}", ma.iter().map(|m| &m.subject).collect::<Vec<_>>());
    assert_eq!(mb.len(), 1, "exactly one email names B: {:?}", mb.iter().map(|m| &m.subject).collect::<Vec<_>>());
    let (sa, ta) = (&ma[0].subject, &ma[0].text);
    assert!(sa.contains("WARNING") && sa.contains(&a.id), "A's subject: {sa}");
    assert!(ta.contains(&a_prefix), "A's email names its prefix:\n{ta}");
    assert!(ta.contains(&a_backup), "A's email names its verified base backup {a_backup}:\n{ta}");
    assert!(ta.contains(&format!("safeguard recover {}", a.id)), "A's email gives the recover command:\n{ta}");
    assert!(!ta.contains("e2e-secret-key"), "a secret reached an email");
    let (sb, tb) = (&mb[0].subject, &mb[0].text);
    assert!(sb.contains("CRITICAL") && sb.contains(&b.id), "B's subject: {sb}");
    assert!(tb.contains(&p.prefix(&b.id)), "B's email names its prefix:\n{tb}");
    assert!(tb.contains("platform-lead@platform.example"), "critical mail goes to the critical list:\n{tb}");

    // ---- show and verify agree with S3.
    wait_until("the watcher to record A's last segment", Duration::from_secs(30), || {
        show(&cfg, &store, &a.id).is_some_and(|v| v["wal"]["last_segment"].as_str() == Some(a_newest.as_str()))
    });
    let sa_json = show(&cfg, &store, &a.id).expect("show A");
    assert_eq!(sa_json["status"], "deleted", "{sa_json:#}");
    assert_eq!(sa_json["backup_prefix"], a_prefix.as_str(), "{sa_json:#}");
    let complete_in_store: Vec<&str> =
        sa_json["base_backups"].as_array().unwrap().iter().filter(|b| b["complete"] == true).filter_map(|b| b["name"].as_str()).collect();
    assert_eq!(complete_in_store, vec![a_backup.as_str()], "show's complete base backups = S3's sentinels: {sa_json:#}");
    assert_eq!(sa_json["wal"]["last_segment"], a_newest.as_str(), "show's last WAL segment = S3's newest: {sa_json:#}");
    assert!(sa_json["nodes"].as_array().unwrap().iter().any(|n| n["host"] == cell1.as_str() && n["container"] == a_node.name.as_str()), "{sa_json:#}");
    let (code, out, err) = safeguard(&cfg, &store, &["verify", &a.id, "--json"]);
    assert_eq!(code, 0, "verify A exits 0 (restorable):\n{out}\n{err}");
    let va = json(&out);
    assert_eq!(va["verdict"], "recoverable", "{va:#}");
    assert_eq!(va["latest_complete_backup"], a_backup.as_str(), "{va:#}");
    assert_eq!(va["wal"]["newest_segment"], a_newest.as_str(), "{va:#}");
    assert_eq!(va["objects"].as_u64(), Some(a_before.len() as u64), "{va:#}");
    assert_eq!(va["sysid_present"], true, "{va:#}");
    assert_eq!(sa_json["sysid_uploaded"], true, "{sa_json:#}");
    tl.mark(format!("show A and verify A agree with S3: {a_backup} complete, WAL through {a_newest}, {} objects", a_before.len()));

    // ---- Instance C, fresh, on the cell A used to run on.
    let c = p.provision(&cell1);
    let c_node = c.leader().clone();
    p.write_rows(&c_node, 1, 5);
    p.switch_wal(&c_node);
    p.sync();
    let c_prefix = p.prefix(&c.id);
    let c_fresh = p.s3_keys(&c_prefix);
    assert!(c_fresh.iter().any(|k| k == "sysids/sysid") && c_fresh.iter().any(|k| k.starts_with("wal_005/")), "C's own WAL-E objects: {c_fresh:?}");
    wait_until("the watcher to know C's container and cell", Duration::from_secs(60), || {
        show(&cfg, &store, &c.id).is_some_and(|v| v["nodes"].as_array().is_some_and(|n| n.iter().any(|n| n["host"] == cell1.as_str())))
    });
    tl.mark(format!("C {} provisioned fresh on cell {cell1}: its own {} objects under its prefix", c.id, c_fresh.len()));

    // ---- One command.
    let rec_start = tl.mark(format!("safeguard recover {} --into {} --execute --yes", a.id, c.id));
    let (code, out, err) = safeguard(&cfg, &store, &["recover", &a.id, "--into", &c.id, "--execute", "--yes"]);
    let rec_took = rec_start.elapsed();
    eprintln!("--- recover stdout\n{out}\n--- recover stderr\n{err}");
    assert_eq!(code, 0, "recover A --into C failed:\n{out}\n{err}\n{}", p.diagnostics(&c_node));
    tl.mark("recover finished: every step done, the restore confirmed from C's lines in the stream");
    p.wait_running(&c_node, Duration::from_secs(180));
    let c_sum = p.checksum(&c_node);
    let rows_back = rec_start.elapsed();
    tl.mark(format!("C's PostgreSQL holds {} rows, md5 {}", c_sum.0, c_sum.1));
    assert_eq!(c_sum, a_sum, "C holds exactly A's rows, including those written after the base backup");

    // The journal: every step done, the confirmation from the stream.
    let (code, out, _) = safeguard(&cfg, &store, &["recoveries", "--json"]);
    assert_eq!(code, 0);
    let list = json(&out);
    let rec = list["recoveries"].as_array().unwrap().iter().find(|r| r["source_id"] == a.id.as_str()).expect("A's recovery in the journal").clone();
    assert_eq!(rec["status"], "succeeded", "{rec:#}");
    let steps: Vec<(String, String)> = rec["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap_or("").to_string(), s["status"].as_str().unwrap_or("").to_string()))
        .collect();
    for want in ["source", "target", "stop", "clear_target", "copy", "verify_copy", "etcd", "flush", "start", "confirm"] {
        assert!(steps.iter().any(|(s, st)| s == want && st == "done"), "step {want} not done: {steps:?}");
    }
    let sc = show(&cfg, &store, &c.id).expect("show C");
    assert!(sc["restore"]["preparing_at"].is_string() && sc["restore"]["wal_fetched"].as_u64() > Some(0), "C's restore in the store: {sc:#}");
    assert!(sc["restore"]["partitions_downloaded"].as_u64() >= Some(1), "C's backup-fetch in the store: {sc:#}");
    // Step 5 made C's container re-initialize etcd with A's original system identifier (from the
    // copied sysids/sysid); with C's own /initialize left in place it would have refused to start.
    let a_sysid = String::from_utf8_lossy(&a_before[&format!("{}sysids/sysid", safeguard::s3::S3Url::parse(&a_prefix).unwrap().key)].3).trim().to_string();
    assert_eq!(p.etcd_get(&format!("service/{}/initialize", c.id)).as_deref(), Some(a_sysid.as_str()), "C's /initialize holds A's system identifier");

    // A's prefix is byte-for-byte unchanged: keys, sizes, ETags, LastModified and contents.
    let a_after = p.s3_snapshot(&a_prefix);
    assert_eq!(a_after.keys().collect::<Vec<_>>(), a_before.keys().collect::<Vec<_>>(), "A's keys changed");
    for (k, before) in &a_before {
        assert!(a_after[k] == *before, "A's object {k} changed (size/etag/last-modified/bytes)");
    }
    // C archives into its own prefix from now on (the restored cluster's new timeline).
    wait_until("C's new timeline history in C's prefix", Duration::from_secs(60), || {
        p.s3_keys(&c_prefix).iter().any(|k| k.starts_with("wal_005/00000002.history"))
    });
    tl.mark(format!("A's prefix byte-for-byte unchanged ({} objects); C archives its new timeline into its own prefix", a_after.len()));

    // ---- B cannot be recovered: the command says why and changes nothing.
    let b_clone = format!("s3://{}/restores/{}/wal/", p.bucket, b.id);
    let (code, out, err) = safeguard(&cfg, &store, &["recover", &b.id, "--to-prefix", &b_clone, "--execute", "--yes"]);
    let said = format!("{out}\n{err}");
    assert_eq!(code, 1, "recover B must refuse:\n{said}");
    assert!(said.contains("no complete base backup") && said.contains(&p.prefix(&b.id)), "B's refusal names the reason and the prefix:\n{said}");
    assert!(said.contains("nothing changed"), "{said}");
    assert!(p.s3_keys(&b_clone).is_empty(), "a refused recovery wrote nothing");
    tl.mark("safeguard recover B refused: no complete base backup; nothing changed");

    watcher.stop();
    let text = tl.render(
        "End-to-end: delete, alert, recover",
        &[
            ("deletion of A -> warning email".into(), to_mail_a),
            ("deletion of B -> critical email".into(), to_mail_b),
            ("recover start -> recover done (all 10 steps)".into(), rec_took),
            ("recover start -> every row back in C".into(), rows_back),
            ("whole scenario".into(), started.elapsed()),
        ],
    );
    println!("\n{text}");
    save_timeline("recover", &text);
}

#[test]
fn a_node_removed_from_a_cluster_is_not_a_deletion_and_a_restarted_watcher_misses_nothing() {
    let started = Instant::now();
    let p = Platform::new("cluster");
    let tl = &p.timeline;
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let cfg = p.config(work.path(), &format!("safeguard-e2e-{}", p.uuid()), GRACE);
    let log = work.path().join("watcher.log");
    let watcher = Watcher::start(&cfg, &store, &log);
    tl.mark("safeguard watch running: Kafka source, S3 verification, SMTP alerts");
    let (cell1, cell2) = (p.uuid(), p.uuid());
    let maildir = p.svc.maildir.clone();

    // ---- D: a two-node cluster; the second node is a streaming replica of the first.
    let mut d = p.provision(&cell1);
    let d_leader = d.leader().clone();
    p.write_rows(&d_leader, 1, 500);
    let replica = p.add_node(&mut d, &cell2);
    p.backup(&d_leader);
    p.switch_wal(&d_leader);
    wait_until("the replica to catch up", Duration::from_secs(60), || p.checksum(&replica) == p.checksum(&d_leader));
    tl.mark(format!("D {} runs on two nodes (leader on {cell1}, replica on {cell2}), base backup pushed", d.id));

    // ---- A plan change removes one node of two: not a deletion.
    p.remove_node(&mut d, &replica.node);
    p.sync();
    tl.mark("remove-node of D's replica (one node of two)");
    let grace = humantime::parse_duration(GRACE).unwrap();
    std::thread::sleep(grace * 3);
    let sd = show(&cfg, &store, &d.id).expect("show D");
    assert_eq!(sd["status"], "live", "{sd:#}");
    assert!(sd["deletion_pending"] != true, "{sd:#}");
    let nodes = sd["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{sd:#}");
    assert!(nodes.iter().any(|n| n["node_uuid"] == replica.node.as_str() && n["removed_at"].is_string()), "the replica is recorded as removed: {sd:#}");
    assert!(nodes.iter().any(|n| n["node_uuid"] == d_leader.node.as_str() && n["removed_at"].is_null()), "the leader stays: {sd:#}");
    assert!(mails(&maildir, &d.id).is_empty(), "no email for a node removed from a live cluster");
    tl.mark("after 3x the grace: D live, one active node, no email");

    // ---- The watcher stops; the platform goes on: E is born, backed up and deleted meanwhile.
    watcher.stop();
    let lines_before = p.lines_shipped();
    tl.mark(format!("watcher stopped (SIGTERM) after {lines_before} lines"));
    let mut e = p.provision(&cell2);
    let e_node = e.leader().clone();
    p.write_rows(&e_node, 1, 400);
    p.switch_wal(&e_node);
    p.backup(&e_node);
    p.write_rows(&e_node, 401, 450);
    let e_last_seg = p.switch_wal(&e_node);
    p.write_rows(&d_leader, 501, 700);
    let d_last_seg = p.switch_wal(&d_leader);
    let del_e = SystemTime::now();
    p.delete(&mut e);
    p.sync();
    let lines_total = p.lines_shipped();
    tl.mark(format!("while it was down: E {} provisioned, backed up, deleted; D archived through {d_last_seg} ({} lines)", e.id, lines_total - lines_before));

    // ---- Restarted: it resumes where it stopped and misses nothing.
    let watcher = Watcher::start(&cfg, &store, &log);
    let restarted = SystemTime::now();
    tl.mark("watcher restarted");
    wait_until("E's deletion email", Duration::from_secs(120), || !mails(&maildir, &e.id).is_empty());
    let me = mails(&maildir, &e.id);
    tl.mark(format!("email: {}", me[0].subject));
    wait_until("the watcher to read every line shipped", Duration::from_secs(60), || {
        let (_, out, _) = safeguard(&cfg, &store, &["status", "--json"]);
        serde_json::from_str::<Value>(&out).ok().and_then(|v| v["counters"]["lines_read"].as_u64()).is_some_and(|n| n >= lines_total)
    });
    std::thread::sleep(Duration::from_secs(3));
    let me = mails(&maildir, &e.id);
    assert_eq!(me.len(), 1, "exactly one email for E: {:?}", me.iter().map(|m| &m.subject).collect::<Vec<_>>());
    assert!(me[0].subject.contains("WARNING"), "{}", me[0].subject);
    assert!(mails(&maildir, &d.id).is_empty(), "still no email for D");
    let se = show(&cfg, &store, &e.id).expect("show E");
    assert_eq!(se["status"], "deleted", "{se:#}");
    assert_eq!(se["wal"]["last_segment"], e_last_seg.as_str(), "{se:#}");
    assert!(se["base_backups"].as_array().unwrap().iter().any(|b| b["complete"] == true), "{se:#}");
    let sd = show(&cfg, &store, &d.id).expect("show D");
    assert_eq!(sd["wal"]["last_segment"], d_last_seg.as_str(), "{sd:#}");
    let (_, st, _) = safeguard(&cfg, &store, &["status", "--json"]);
    let st = json(&st);
    assert_eq!(st["counters"]["lines_read"].as_u64(), Some(lines_total), "every line read exactly once: {st:#}");
    watcher.stop();

    // The same lines from the platform's log archive, ingested into a fresh store, give the same records.
    let icfg = work.path().join("ingest.toml");
    std::fs::write(&icfg, format!("[watch]\ndeletion_grace = \"{GRACE}\"\n")).unwrap();
    let istore = work.path().join("ingest-store");
    let (code, out, err) = safeguard(&icfg, &istore, &["ingest", p.archive.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    for id in [&d.id, &e.id] {
        let from_kafka = show(&cfg, &store, id).unwrap();
        let from_file = show(&icfg, &istore, id).unwrap();
        for f in
            ["status", "deleted_at", "deleted_by", "backup_prefix", "first_seen", "nodes", "base_backups", "wal", "sysid_uploaded", "restore", "events_applied"]
        {
            assert_eq!(from_kafka[f], from_file[f], "{id}: `{f}` differs between the restarted watcher's store and a file ingest of the same lines");
        }
    }
    tl.mark("the store equals a file ingest of the same lines (D and E: nodes, backups, WAL, events applied)");

    let text = tl.render(
        "End-to-end: a node removed from a cluster; the watcher restarted mid-scenario",
        &[
            ("watcher restart -> email for E deleted while it was down".into(), dur_between(restarted, me[0].received)),
            ("E deleted -> email".into(), dur_between(del_e, me[0].received)),
            ("whole scenario".into(), started.elapsed()),
        ],
    );
    println!("\n{text}");
    save_timeline("cluster", &text);
}
