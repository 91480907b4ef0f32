//! Fills a store with N instances (each provisioned, archiving WAL, one complete base backup, every
//! tenth deleted) for the `show` latency and memory benchmarks:
//! `cargo run --release --example populate -- STORE_DIR N`

use std::io::Write;

use safeguard::gen::Rng;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let store_dir = args.first().expect("usage: populate STORE_DIR N");
    let n: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(100_000);
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
    let s = safeguard::ingest::ingest(&store, Default::default(), std::slice::from_ref(&tmp))?;
    std::fs::remove_file(&tmp)?;
    println!("{first}");
    eprintln!("{} instances, {} events applied in {:.1}s", n, s.counters.events_applied, s.seconds);
    Ok(())
}
