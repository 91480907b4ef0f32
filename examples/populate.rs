//! Fills a store with N instances (each provisioned, archiving WAL, one complete base backup, every
//! tenth deleted) for the `show` latency and memory benchmarks:
//! `cargo run --release --example populate -- STORE_DIR N [DELIVERED PENDING]`
//! With DELIVERED and PENDING, the outbox also gets that many delivered alerts and pending ones (due in a
//! year), and the store is left as a watcher with the default `[alerts]` leaves it: indexed with those
//! thresholds, every changed instance looked at by the absence rules (the scale benchmark's idle watcher).

use std::io::Write;

use safeguard::gen::Rng;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let store_dir = args.first().expect("usage: populate STORE_DIR N");
    let n: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(100_000);
    let outbox: Option<(usize, usize)> = match (args.get(2), args.get(3)) {
        (Some(d), Some(p)) => Some((d.parse()?, p.parse()?)),
        _ => None,
    };
    let tmp = std::env::temp_dir().join(format!("safeguard-populate-{}.log", std::process::id()));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let mut rng = Rng::new(99);
    let mut first = String::new();
    for i in 0..n {
        let id = rng.uuid();
        let node = rng.uuid();
        if i == 0 {
            first = id.clone();
        }
        let t = 1_772_323_200 + i as i64;
        let b = "s3://our-dingo-postgresql-backups/backups";
        writeln!(
            w,
            r#"Mar  1 00:00:00 0.router broker.stdout.log:  {{"timestamp":"{t}.0","source":"dingo-postgresql-broker","message":"dingo-postgresql-broker.cluster.add-node.perform","log_level":1,"data":{{"instance-id":"{id}","node-uuid":"{node}"}}}}"#
        )?;
        for s in 1..=3 {
            writeln!(
                w,
                r#"Mar  1 00:00:01 cell-1 cf-{node}:  {}-patroni>         DETAIL: Archiving to "{b}/{id}/wal/wal_005/0000000100000000000000{s:02X}.lzo" complete at 1KiB/s."#,
                &id[..6]
            )?;
        }
        writeln!(
            w,
            r#"Mar  1 00:00:02 cell-1 cf-{node}:  {}-backup>         DETAIL: Uploading to "{b}/{id}/wal/basebackups_005/base_000000010000000000000002_00000028/tar_partitions/part_00000000.tar.lzo" complete at 1KiB/s."#,
            &id[..6]
        )?;
        writeln!(w, "Mar  1 00:00:03 cell-1 cf-{node}:  {}-backup> NOTICE:  pg_stop_backup complete, all required WAL segments have been archived", &id[..6])?;
        if i % 10 == 0 {
            writeln!(
                w,
                r#"Mar  1 00:00:04 0.router broker.stdout.log:  {{"timestamp":"{}.0","source":"dingo-postgresql-broker","message":"dingo-postgresql-broker.cluster.remove-node.perform","log_level":1,"data":{{"instance-id":"{id}","node-uuid":"{node}"}}}}"#,
                t + 4
            )?;
        }
    }
    w.flush()?;
    drop(w);
    let store = safeguard::store::Store::open(std::path::Path::new(store_dir), 64 << 20)?;
    let mut cfg = safeguard::pipeline::EngineConfig::default();
    if outbox.is_some() {
        cfg.alerts = Some(safeguard::alerts::AlertsConfig::default());
    }
    let s = safeguard::ingest::ingest(&store, cfg.clone(), std::slice::from_ref(&tmp))?;
    std::fs::remove_file(&tmp)?;
    if let Some((delivered, pending)) = outbox {
        fill_outbox(&store, cfg, delivered, pending)?;
    }
    println!("{first}");
    eprintln!("{} instances, {} events applied in {:.1}s", n, s.counters.events_applied, s.seconds);
    Ok(())
}

/// Alerts as a long-running watcher accumulates them: deletions and absence alerts, most delivered.
fn fill_outbox(store: &safeguard::store::Store, mut cfg: safeguard::pipeline::EngineConfig, delivered: usize, pending: usize) -> anyhow::Result<()> {
    use safeguard::alerts::{absence, on_deletion, Delivery, RuleParams};
    cfg.raise_absence = true;
    let mut e = safeguard::pipeline::Engine::new(store.clone(), cfg)?;
    // The watcher's first absence scan over what the ingest changed (the records are older than the
    // backfill window, so it raises nothing).
    e.scan_absence();
    while e.absence_scan_running() {
        e.commit(None)?;
    }
    let p = RuleParams::default();
    let now = safeguard::timeutil::now_ms();
    let far = now + 365 * 86_400_000;
    let mut made = 0;
    'records: for r in store.records() {
        let r = r?;
        let mut alerts = Vec::new();
        if let Some(at) = r.deleted_at {
            alerts.extend(on_deletion(&r, at, at + 1, &p));
        } else {
            alerts.extend(absence(&r, r.last_seen + 400 * 86_400_000, &RuleParams { backfill_window_ms: i64::MAX / 4, ..p }));
        }
        for mut a in alerts {
            if made == delivered + pending {
                break 'records;
            }
            if made < delivered {
                // Delivered in the last month: inside the default retention, so they stay in the outbox.
                a.raised_at = now - (1 + made as i64 % 30) * 86_400_000;
                a.state = Delivery::Sent;
                a.sent_at = Some(a.raised_at + 1_000);
            } else {
                a.next_attempt_at = far;
            }
            e.raise(a);
            made += 1;
            if made % 10_000 == 0 {
                e.commit(None)?;
            }
        }
    }
    e.commit(None)?;
    if made < delivered + pending {
        anyhow::bail!("only {made} alerts could be made from {} records; populate more instances", store.tally()?.map_or(0, |t| t.instances));
    }
    Ok(())
}
