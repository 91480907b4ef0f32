//! `safeguard report deleted` against a real S3 API (moto): what deleted instances' backups still hold
//! and cost, read only, with `--older-than`, `--json` and `--csv`.

use std::path::Path;

use crate::common::{env, lager, run};
use safeguard::gen::Rng;
use safeguard::s3::ObjectStore;
use safeguard::timeutil::{now_ms, rfc3339};
use serde_json::Value;

struct Inst {
    id: String,
    node: String,
}

/// Lines for an instance that archived a segment, uploaded a base backup (completed or not) and, when
/// `deleted_at` is given, lost its last node then.
fn lines(i: &Inst, bucket: &str, t: i64, complete: bool, deleted_at: Option<i64>) -> Vec<String> {
    let pre = format!("s3://{bucket}/backups/{}/wal", i.id);
    let base = format!("{pre}/basebackups_005/base_000000010000000000000002_00000028");
    let c = |t: i64, msg: &str| format!("<134>1 {} cell-7 cf-{} - - - {}-backup> {msg}", rfc3339(t), i.node, &i.id[..6]);
    let mut l = vec![
        lager(t, "provision.start", &format!(r#""instance-id":"{}""#, i.id)),
        lager(t + 1, "add-node.perform", &format!(r#""instance-id":"{}","node-uuid":"{}""#, i.id, i.node)),
        c(t + 2, &format!(r#"        DETAIL: Archiving to "{pre}/wal_005/000000010000000000000001.lzo" complete at 1KiB/s."#)),
        c(t + 3, &format!(r#"        DETAIL: Uploading to "{base}/tar_partitions/part_00000000.tar.lzo"."#)),
    ];
    if complete {
        l.push(c(t + 5, "NOTICE:  pg_stop_backup complete, all required WAL segments have been archived"));
    }
    if let Some(d) = deleted_at {
        l.push(lager(d, "remove-node.perform", &format!(r#""instance-id":"{}","node-uuid":"{}","backend":"10.0.0.1""#, i.id, i.node)));
    }
    l
}

/// WAL-E's objects for one instance, with a partition of `part` bytes; the sentinel only when complete.
fn objects(i: &Inst, complete: bool, part: usize) -> Vec<(String, Vec<u8>)> {
    let pre = format!("backups/{}/wal", i.id);
    let base = format!("{pre}/basebackups_005/base_000000010000000000000002_00000028");
    let mut o = vec![
        (format!("{pre}/wal_005/000000010000000000000001.lzo"), vec![1u8; 1000]),
        (format!("{pre}/wal_005/000000010000000000000002.lzo"), vec![2u8; 1000]),
        (format!("{base}/extended_version.txt"), b"PostgreSQL 14".to_vec()),
        (format!("{base}/tar_partitions/part_00000000.tar.lzo"), vec![3u8; part]),
    ];
    if complete {
        o.push((format!("{base}_backup_stop_sentinel.json"), br#"{"wal_segment_backup_stop":"000000010000000000000002"}"#.to_vec()));
    }
    o
}

fn put(bucket: &str, objects: &[(String, Vec<u8>)]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = ObjectStore::connect(&crate::common::s3_config(env("SAFEGUARD_TEST_S3"), "test-secret-key")).unwrap();
        let c = store.client().await;
        c.create_bucket().bucket(bucket).send().await.expect("create bucket");
        for (k, v) in objects {
            c.put_object().bucket(bucket).key(k).body(v.clone().into()).send().await.expect("put object");
        }
    });
}

fn config(dir: &Path, endpoint: &str) -> String {
    let p = dir.join(format!("c-{}.toml", endpoint.len()));
    std::fs::write(
        &p,
        format!(
            "[s3]\nendpoint = \"{endpoint}\"\npath_style = true\naccess_key_id = \"test\"\nsecret_access_key = \"test-secret-key\"\ntimeout = \"3s\"\nmax_attempts = 1\n\n[report]\nprice_per_gib_month = 1024.0\ncurrency = \"EUR\"\n"
        ),
    )
    .unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn what_deleted_instances_still_hold_and_cost() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(now_ms() as u64);
    let bucket = format!("report-{}", &rng.uuid()[..8]);
    let day = 86_400_000;
    let now = now_ms();
    let (old_a, old_b, recent, live) = (
        Inst { id: rng.uuid(), node: rng.uuid() },
        Inst { id: rng.uuid(), node: rng.uuid() },
        Inst { id: rng.uuid(), node: rng.uuid() },
        Inst { id: rng.uuid(), node: rng.uuid() },
    );
    let mut log = Vec::new();
    log.extend(lines(&old_a, &bucket, now - 50 * day, true, Some(now - 40 * day)));
    log.extend(lines(&old_b, &bucket, now - 45 * day, false, Some(now - 35 * day)));
    log.extend(lines(&recent, &bucket, now - 3 * day, true, Some(now - day)));
    log.extend(lines(&live, &bucket, now - 3 * day, true, None));
    let f = tmp.path().join("syslog");
    std::fs::write(&f, log.join("\n") + "\n").unwrap();
    let store = tmp.path().join("store");
    let s = store.to_str().unwrap();
    assert_eq!(run(&["ingest", f.to_str().unwrap(), "--store", s]).0, 0);
    let mut all = objects(&old_a, true, 5_000);
    all.extend(objects(&old_b, false, 7_000));
    all.extend(objects(&recent, true, 11_000));
    all.extend(objects(&live, true, 13_000));
    put(&bucket, &all);
    let cfg = config(tmp.path(), &env("SAFEGUARD_TEST_S3"));
    let size = |i: &Inst| all.iter().filter(|(k, _)| k.contains(&i.id)).map(|(_, v)| v.len() as u64).sum::<u64>();

    let (code, out, err) = run(&["--config", &cfg, "report", "deleted", "--json", "--store", s]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = v["rows"].as_array().unwrap().iter().map(|r| r["instance_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [old_a.id.as_str(), old_b.id.as_str(), recent.id.as_str()], "deleted ones, oldest deletion first");
    let row = &v["rows"][0];
    assert_eq!(row["objects"], 5);
    assert_eq!(row["bytes"], size(&old_a));
    assert_eq!(row["latest_complete_backup"], "base_000000010000000000000002_00000028");
    assert!(v["rows"][1]["latest_complete_backup"].is_null(), "an interrupted backup is no complete one");
    let total = size(&old_a) + size(&old_b) + size(&recent);
    assert_eq!(v["bytes"], total);
    assert_eq!(v["objects"], 5 + 4 + 5);
    let cost = v["monthly_cost"].as_f64().unwrap();
    let want = total as f64 / (1u64 << 30) as f64 * 1024.0;
    assert!((cost - want).abs() < 1e-9, "{cost} != {want}");
    assert_eq!(v["currency"], "EUR");

    // --older-than keeps what was deleted that long ago; --csv has a header and a row each.
    let (code, out, err) = run(&["--config", &cfg, "report", "deleted", "--older-than", "30d", "--csv", "--store", s]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert!(rows[0].starts_with("instance_id,name,deleted_at,backup_prefix,objects,bytes"), "{out}");
    assert_eq!(rows.len(), 3, "{out}");
    assert!(rows[1].starts_with(&old_a.id) && rows[2].starts_with(&old_b.id), "{out}");
    // Text: a row each and the totals.
    let (code, out, _) = run(&["--config", &cfg, "report", "deleted", "--store", s]);
    assert_eq!(code, 0);
    assert!(out.contains("3 deleted instance(s) hold 14 object(s)") && out.contains("EUR a month"), "{out}");

    // An object store that does not answer: every row says so, the exit code too.
    let dead = config(tmp.path(), &format!("http://127.0.0.1:{}", crate::common::free_port()));
    let (code, out, err) = run(&["--config", &dead, "report", "deleted", "--json", "--store", s]);
    assert_eq!(code, 1, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["rows"].as_array().unwrap().iter().all(|r| r["error"].is_string()), "{v:#}");
    assert!(err.contains("could not be listed"), "{err}");
}
