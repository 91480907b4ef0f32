//! Issue 16: counts kept, not recounted. Whatever sequence of lines, repeats, restarts, clock moves,
//! absence scans, deliveries, retries and retirements a store goes through, the counts it keeps equal a
//! full recount, its indexes list exactly what they index, and a retired alert is never raised again.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use safeguard::alerts::{Alert, AlertsConfig, Delivery};
use safeguard::gen::{GenConfig, Generator};
use safeguard::pipeline::{Engine, EngineConfig, SourceId};
use safeguard::state::risk::{assess, RiskRules};
use safeguard::state::{Rules, Status};
use safeguard::store::Store;
use safeguard::timeutil::now_ms;

const H: i64 = 3_600_000;

fn config() -> EngineConfig {
    let alerts = AlertsConfig { retention: std::time::Duration::from_secs(3600), ..AlertsConfig::default() };
    EngineConfig {
        rules: Rules { deletion_grace_ms: 60_000, ..Rules::default() },
        alerts: Some(alerts),
        raise_absence: true,
        // Short thresholds, so moving the clock by hours crosses deadlines.
        risk: RiskRules { max_base_backup_age_ms: 3 * H, wal_silence_ms: H },
        ..EngineConfig::default()
    }
}

/// Counts from every record and alert, the slow way, at `now`.
fn recount(store: &Store, now: i64, rules: &RiskRules) -> (u64, u64, u64, BTreeMap<String, u64>, BTreeSet<String>) {
    let (mut instances, mut deleted, mut at_risk) = (0, 0, 0);
    let mut by = BTreeMap::new();
    let mut deleted_ids = BTreeSet::new();
    for r in store.records() {
        let r = r.unwrap();
        instances += 1;
        if r.status == Status::Deleted {
            deleted += 1;
            deleted_ids.insert(r.instance_id.clone());
            continue;
        }
        let risks = assess(&r, now, rules);
        at_risk += u64::from(!risks.is_empty());
        for k in risks {
            *by.entry(k.as_str().to_string()).or_insert(0u64) += 1;
        }
    }
    (instances, deleted, at_risk, by, deleted_ids)
}

fn check(store: &Store, now: i64) {
    let rules = config().risk;
    let t = store.tally().unwrap().expect("an engine keeps the counts");
    let (instances, deleted, at_risk, by, deleted_ids) = recount(store, now, &rules);
    assert_eq!((t.instances, t.deleted, t.at_risk), (instances, deleted, at_risk), "instance counts at {now}");
    let kept: BTreeMap<String, u64> = t.by_reason().into_iter().filter(|(_, n)| *n > 0).map(|(r, n)| (r.to_string(), n)).collect();
    assert_eq!(kept, by, "at-risk reasons at {now}");
    let listed: BTreeSet<String> = store.deleted_ids().unwrap().unwrap().into_iter().collect();
    assert_eq!(listed, deleted_ids, "the deleted index");

    // Alerts: by rule and state over the outbox, retired ones by their tombstones; the due index lists the pending ones.
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    let mut pending = BTreeSet::new();
    let mut oldest: Option<i64> = None;
    for a in store.alerts() {
        let a = a.unwrap();
        *by.entry(format!("{}/{}", a.rule.map_or("undecided", |r| r.as_str()), a.state.as_str())).or_default() += 1;
        if a.state == Delivery::Pending {
            pending.insert(a.id.clone());
            oldest = Some(oldest.map_or(a.raised_at.max(0), |o| o.min(a.raised_at.max(0))));
        }
    }
    assert_eq!(store.oldest_pending_alert().unwrap(), oldest, "the oldest pending alert");
    let retired = store.tombstones().count() as u64;
    let at = store.alert_tally().unwrap().expect("an engine keeps the alert counts");
    assert_eq!(at.by, by, "alerts by rule and state");
    assert_eq!(at.retired, retired);
    let due: BTreeSet<String> = store.due_alerts(i64::MAX, usize::MAX).unwrap().into_iter().map(|a| a.id).collect();
    assert_eq!(due, pending, "the due index lists exactly the pending alerts");
}

#[derive(Debug, Clone)]
enum Op {
    /// Feed the next chunk of the corpus.
    Feed,
    /// Feed an earlier chunk again, as another stream (a relay's duplicate, an overlapping archive).
    Replay(usize),
    Restart,
    /// Move the clock by this many minutes and commit.
    Advance(u32),
    Scan,
    /// The sender's outcomes for the alert at this index among the pending: delivered, or failed for good.
    Deliver(usize, bool),
    /// `alerts retry` on the alert at this index among all.
    Retry(usize),
    /// Retention at the current clock.
    Retire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Feed),
        1 => (0usize..64).prop_map(Op::Replay),
        1 => Just(Op::Restart),
        2 => (0u32..600).prop_map(Op::Advance),
        1 => Just(Op::Scan),
        2 => (0usize..64, any::<bool>()).prop_map(|(i, ok)| Op::Deliver(i, ok)),
        1 => (0usize..64).prop_map(Op::Retry),
        1 => Just(Op::Retire),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    #[test]
    fn kept_counts_equal_a_recount_after_any_sequence(seed in 0u64..1_000_000, chunks in 4usize..24, ops in proptest::collection::vec(op(), 10..60)) {
        // The corpus ends near the clock, so moving it by hours crosses deadlines of unchanged records.
        let start = now_ms() - 20 * 60_000;
        let cfg = GenConfig { seed, lines: 2_500, concurrent_instances: 12, noise: 0.3, delete_fraction: 0.4, no_backup_fraction: 0.3, start_ms: start, ..GenConfig::default() };
        let mut buf = Vec::new();
        Generator::new(cfg).write_all(&mut buf).unwrap();
        let lines: Vec<&[u8]> = buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        let per = lines.len().div_ceil(chunks);
        let parts: Vec<Vec<&[u8]>> = lines.chunks(per).map(|c| c.to_vec()).collect();

        let tmp = tempfile::tempdir().unwrap();
        let mut clock = now_ms();
        let mut e = Engine::new(Store::open(tmp.path(), 8 << 20).unwrap(), config()).unwrap();
        let mut fed = 0usize;
        let mut stream = 0u64;
        let feed = |e: &mut Engine, part: &[&[u8]], stream: &mut u64| {
            *stream += 1;
            let h = e.add_source(SourceId::stream(format!("stream {stream}").as_bytes()), "t", true).unwrap();
            let mut off = 0;
            for l in part {
                off += l.len() as u64 + 1;
                e.feed_line(h, off, l);
            }
        };
        for op in ops {
            match op {
                Op::Feed if fed < parts.len() => {
                    feed(&mut e, &parts[fed], &mut stream);
                    fed += 1;
                }
                Op::Feed => {}
                Op::Replay(i) if fed > 0 => feed(&mut e, &parts[i % fed], &mut stream),
                Op::Replay(_) => {}
                Op::Restart => {
                    e.commit_at(None, clock).unwrap();
                    drop(e);
                    // sled's flusher thread may hold the lock for a moment after the last handle drops.
                    let store = Store::open_waiting(tmp.path(), 8 << 20, std::time::Duration::from_secs(10)).unwrap();
                    e = Engine::new(store, config()).unwrap();
                }
                Op::Advance(m) => clock += i64::from(m) * 60_000,
                Op::Scan => e.scan_absence(),
                Op::Deliver(i, ok) => {
                    let pending: Vec<Alert> = e.store().due_alerts(i64::MAX, usize::MAX).unwrap();
                    if !pending.is_empty() {
                        let mut a = pending[i % pending.len()].clone();
                        a.rule.get_or_insert(safeguard::alerts::Rule::InstanceDeleted);
                        if ok {
                            a.state = Delivery::Sent;
                            a.sent_at = Some(clock);
                        } else {
                            a.state = Delivery::Failed;
                            a.last_error_at = Some(clock);
                        }
                        e.store().put_alert(&a).unwrap();
                    }
                }
                Op::Retry(i) => {
                    let all: Vec<Alert> = e.store().alerts().map(Result::unwrap).collect();
                    if !all.is_empty() {
                        let mut a = all[i % all.len()].clone();
                        a.state = Delivery::Pending;
                        a.next_attempt_at = clock;
                        e.store().put_alert(&a).unwrap();
                    }
                }
                Op::Retire => {
                    let ids: BTreeSet<String> = e.store().alerts().map(|a| a.unwrap().id).collect();
                    e.store().retire_alerts(clock - H, usize::MAX).unwrap();
                    let tombs: BTreeSet<String> = e.store().tombstones().map(|t| t.unwrap().0).collect();
                    // A retired alert's id still counts as raised: the engine never creates it again.
                    for id in tombs.intersection(&ids) {
                        prop_assert!(e.store().alert_exists(id).unwrap());
                        prop_assert!(e.store().alert(id).unwrap().is_none());
                    }
                }
            }
            e.commit_at(Some(clock), clock).unwrap();
            check(e.store(), clock);
        }
        // Everything again, as one more stream, after the last retirement: no retired id comes back.
        let tombs: BTreeSet<String> = e.store().tombstones().map(|t| t.unwrap().0).collect();
        for p in &parts {
            feed(&mut e, p, &mut stream);
        }
        e.scan_absence();
        e.commit_at(Some(clock), clock).unwrap();
        check(e.store(), clock);
        for id in &tombs {
            prop_assert!(e.store().alert(id).unwrap().is_none(), "retired alert {id} was raised again by a replay");
        }
    }
}

/// A listing through the running watcher is streamed record by record (the watcher never holds the
/// whole answer); it must be the same listing the snapshot gives without a watcher, across many chunks.
#[test]
fn a_long_listing_through_the_watcher_equals_the_one_without_it() {
    use crate::common::{bin, free_port, run, wait_until, KillOnDrop};
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("syslog");
    let cfg = GenConfig { seed: 5, lines: 40_000, concurrent_instances: 150, noise: 0.2, delete_fraction: 0.5, ..GenConfig::default() };
    Generator::new(cfg).write_all(&mut std::io::BufWriter::new(std::fs::File::create(&log).unwrap())).unwrap();
    let store = tmp.path().join("store");
    let s = store.to_str().unwrap();
    let (code, _, err) = run(&["ingest", log.to_str().unwrap(), "--quiet", "--store", s]);
    assert_eq!(code, 0, "{err}");
    let list = |args: &[&str]| {
        let mut a = vec!["instances", "--json", "--store", s];
        a.extend_from_slice(args);
        let (code, out, err) = run(&a);
        assert_eq!(code, 0, "{err}");
        out
    };
    let (all, deleted) = (list(&[]), list(&["--deleted"]));
    assert!(all.len() > 256 << 10, "the listing must span several chunks: {} bytes", all.len());
    let n: Vec<serde_json::Value> = serde_json::from_str(&deleted).unwrap();
    assert!(n.len() > 50, "{} deleted", n.len());

    let port = free_port();
    let _w = KillOnDrop(
        std::process::Command::new(bin())
            .args(["watch", "--store", s, "--syslog", &format!("127.0.0.1:{port}")])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the watcher's socket", std::time::Duration::from_secs(20), || store.join("safeguard.sock").exists());
    let (_, st, _) = run(&["status", "--json", "--store", s]);
    assert!(st.contains("\"watcher_running\": true"), "{st}");
    assert_eq!(list(&[]), all, "the watcher's streamed listing differs from the snapshot's");
    assert_eq!(list(&["--deleted"]), deleted);
}

/// Changed records wait in memory for the next commit; past DIRTY_MAX the engine asks for one (ingest and
/// the watcher then commit), so a backfill touching a million instances holds a bounded number.
#[test]
fn changed_records_held_between_commits_are_bounded() {
    use safeguard::pipeline::DIRTY_MAX;
    let tmp = tempfile::tempdir().unwrap();
    let mut e = Engine::new(Store::open(tmp.path(), 8 << 20).unwrap(), EngineConfig::default()).unwrap();
    let h = e.add_source(SourceId::stream(b"bound"), "t", true).unwrap();
    let mut off = 0;
    for i in 0..DIRTY_MAX {
        let l = crate::common::lager(
            1_772_323_200_000 + i as i64,
            "add-node.perform",
            &format!(r#""instance-id":"{i:08x}-0000-4000-8000-000000000000","node-uuid":"{i:08x}-1111-4000-8000-000000000000""#),
        );
        off += l.len() as u64 + 1;
        assert!(!e.should_commit(), "asked for a commit at {i} records");
        e.feed_line(h, off, l.as_bytes());
    }
    assert!(e.should_commit(), "{DIRTY_MAX} changed records and no commit asked for");
    e.commit(None).unwrap();
    assert!(!e.should_commit());
    assert_eq!(e.store().tally().unwrap().unwrap().instances, DIRTY_MAX as u64);
}

/// A client that asks for a long listing and stops reading is given up after `query_idle_timeout`: its
/// connection slot comes back, so with one slot the next query is answered.
#[test]
fn a_client_that_stops_reading_a_listing_does_not_hold_the_socket() {
    use crate::common::{bin, free_port, run, wait_until, KillOnDrop};
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("syslog");
    let cfg = GenConfig { seed: 6, lines: 40_000, concurrent_instances: 150, noise: 0.2, ..GenConfig::default() };
    Generator::new(cfg).write_all(&mut std::io::BufWriter::new(std::fs::File::create(&log).unwrap())).unwrap();
    let store = tmp.path().join("store");
    let s = store.to_str().unwrap();
    let (code, _, err) = run(&["ingest", log.to_str().unwrap(), "--quiet", "--store", s]);
    assert_eq!(code, 0, "{err}");
    let conf = tmp.path().join("c.toml");
    std::fs::write(&conf, "[watch]\nquery_max_connections = 1\nquery_idle_timeout = \"1s\"\n").unwrap();
    let port = free_port();
    let _w = KillOnDrop(
        std::process::Command::new(bin())
            .args(["watch", "--config", conf.to_str().unwrap(), "--store", s, "--syslog", &format!("127.0.0.1:{port}")])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the watcher's socket", std::time::Duration::from_secs(20), || store.join("safeguard.sock").exists());
    let mut stalled = std::os::unix::net::UnixStream::connect(store.join("safeguard.sock")).unwrap();
    stalled.write_all(b"{\"op\":\"instances\",\"filter\":{\"deleted\":false,\"at_risk\":false},\"now\":0,\"rules\":[0,0]}\n").unwrap();
    // Never read: the answer (hundreds of KiB) fills the socket's buffers and the watcher's writes block.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let took = wait_until("a query answered while the stalled client holds its connection", std::time::Duration::from_secs(15), || {
        let (_, out, _) = run(&["status", "--json", "--store", s]);
        out.contains("\"watcher_running\": true")
    });
    assert!(took < std::time::Duration::from_secs(10), "the slot came back after {took:?}");
    drop(stalled);
}

/// Deletions waiting out their grace are not loaded and rewritten at every commit of the grace: a burst
/// of them costs one write when they happen and one when they become final.
#[test]
fn deletions_in_their_grace_are_not_rewritten_at_every_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = EngineConfig { rules: Rules { deletion_grace_ms: 60_000, ..Rules::default() }, ..EngineConfig::default() };
    let mut e = Engine::new(Store::open(tmp.path(), 8 << 20).unwrap(), cfg).unwrap();
    let h = e.add_source(SourceId::stream(b"burst"), "t", true).unwrap();
    let t0 = now_ms() - 10_000;
    let mut off = 0;
    for i in 0..200 {
        let data = format!(r#""instance-id":"{i:08x}-0000-4000-8000-000000000000","node-uuid":"{i:08x}-1111-4000-8000-000000000000""#);
        for l in [crate::common::lager(t0, "add-node.perform", &data), crate::common::lager(t0 + 1_000, "remove-node.perform", &data)] {
            off += l.len() as u64 + 1;
            e.feed_line(h, off, l.as_bytes());
        }
    }
    let c = e.commit_at(Some(t0 + 2_000), t0 + 2_000).unwrap();
    assert_eq!(c.records, 200);
    // Within the grace: nothing to write.
    for s in 1..5 {
        let c = e.commit_at(Some(t0 + 2_000 + s * 10_000), t0 + 2_000 + s * 10_000).unwrap();
        assert_eq!((c.records, c.effects.len()), (0, 0), "commit {s} inside the grace rewrote pending deletions");
    }
    // Past it: each becomes final once.
    let c = e.commit_at(Some(t0 + 62_000), t0 + 62_000).unwrap();
    assert_eq!(c.records, 200);
    assert_eq!(c.effects.iter().filter(|x| matches!(x, safeguard::state::Effect::InstanceDeleted { .. })).count(), 200);
    assert_eq!(e.commit_at(Some(t0 + 63_000), t0 + 63_000).unwrap().records, 0);
}
