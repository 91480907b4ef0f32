//! Object-store verification against a real S3 API (moto), as WAL-E lays out an instance prefix.
//! scripts/test.sh starts moto and exports SAFEGUARD_TEST_S3=http://127.0.0.1:PORT.

use crate::common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use safeguard::s3::{ObjectStore, S3Config, S3Url};
use safeguard::verify::{verify, Gap, Segment, Verdict, VerifyReport};

const SECRET: &str = "test-secret-Zq8vKx31";

fn config(endpoint: String) -> S3Config {
    common::s3_config(endpoint, SECRET)
}

/// A store and a fresh, uniquely named bucket on the test S3 server.
async fn fresh(tag: &str) -> (ObjectStore, String) {
    static N: AtomicU32 = AtomicU32::new(0);
    let store = ObjectStore::connect(&config(common::env("SAFEGUARD_TEST_S3"))).expect("valid test config");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let bucket = format!("sg-{tag}-{}-{}-{nanos}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    store.client().await.create_bucket().bucket(&bucket).send().await.unwrap_or_else(|e| panic!("create bucket {bucket}: {}", DisplayErrorContext(&e)));
    (store, bucket)
}

/// Uploads (relative key, body) pairs under `prefix`, a few at a time.
async fn upload(store: &ObjectStore, prefix: &S3Url, objects: Vec<(String, Vec<u8>)>) {
    let client = store.client().await.clone();
    for chunk in objects.chunks(24) {
        let mut set = tokio::task::JoinSet::new();
        for (rel, body) in chunk.iter().cloned() {
            let client = client.clone();
            let url = prefix.join(&rel);
            set.spawn(async move {
                client
                    .put_object()
                    .bucket(&url.bucket)
                    .key(&url.key)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("put {url}: {}", DisplayErrorContext(&e)))
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("upload task").unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

fn seg(tli: u32, log: u32, s: u32) -> String {
    Segment { tli, log, seg: s }.name()
}

fn wal(names: &[String]) -> Vec<(String, Vec<u8>)> {
    names.iter().map(|n| (format!("wal_005/{n}.lzo"), format!("lzo {n}").into_bytes())).collect()
}

/// A base backup as WAL-E 1.1.1 uploads it: version, partitions, then (if finished) the sentinel.
fn base_backup(start: &str, offset: &str, partitions: u32, sentinel: bool) -> Vec<(String, Vec<u8>)> {
    let dir = format!("basebackups_005/base_{start}_{offset}");
    let mut v = vec![(format!("{dir}/extended_version.txt"), b"PostgreSQL 14.23 on x86_64-pc-linux-gnu".to_vec())];
    for p in 0..partitions {
        v.push((format!("{dir}/tar_partitions/part_{p:08}.tar.lzo"), vec![0x89, b'L', b'Z', b'O', 0, p as u8]));
    }
    if sentinel {
        let json = format!(
            r#"{{"wal_segment_backup_stop": "{start}", "wal_segment_offset_backup_stop": "00000138", "expanded_size_bytes": 23456789, "spec": {{"base_prefix": "pg_data", "tablespaces": []}}}}"#
        );
        v.push((format!("{dir}_backup_stop_sentinel.json"), json.into_bytes()));
    }
    v
}

fn sysid() -> (String, Vec<u8>) {
    ("sysids/sysid".into(), b"6352426361234567890".to_vec())
}

fn instance_prefix(bucket: &str, id: &str) -> S3Url {
    S3Url::instance_prefix(bucket, id).expect("valid prefix")
}

const ID: &str = "6e101b27-ee1b-4f4d-a032-4401a3709ec3";

#[tokio::test]
async fn complete_backup_with_continuous_wal_is_recoverable() {
    let (store, bucket) = fresh("ok").await;
    let prefix = instance_prefix(&bucket, ID);
    // WAL before the backup, the backup at 00/FE, and WAL across the 00/FF -> 01/00 boundary.
    let mut objs = vec![sysid()];
    objs.extend(wal(&[seg(1, 0, 0xFC), seg(1, 0, 0xFD)]));
    objs.push((format!("wal_005/{}.00000028.backup.lzo", seg(1, 0, 0xFE)), b"label".to_vec()));
    objs.extend(wal(&[seg(1, 0, 0xFE), seg(1, 0, 0xFF), seg(1, 1, 0), seg(1, 1, 1)]));
    upload(&store, &prefix, objs).await;
    // The sentinel goes last, as in backup-push.
    upload(&store, &prefix, base_backup(&seg(1, 0, 0xFE), "00000028", 2, true)).await;

    let r = verify(&store, &prefix).await;
    let text = r.render_text();
    assert_eq!(r.verdict, Verdict::Recoverable, "{text}");
    assert!(text.starts_with("RECOVERABLE - s3://"), "{text}");
    let name = format!("base_{}_00000028", seg(1, 0, 0xFE));
    assert_eq!(r.latest_complete_backup.as_deref(), Some(name.as_str()));
    assert_eq!(r.base_backups.len(), 1);
    let b = &r.base_backups[0];
    assert!(b.complete && b.has_extended_version);
    assert_eq!(b.partitions, 2);
    let c = r.continuity.as_ref().expect("continuity");
    assert_eq!(c.from_segment, seg(1, 0, 0xFE));
    assert_eq!(c.to_segment, seg(1, 1, 1));
    assert_eq!(c.expected_segments, 4);
    assert!(c.gaps.is_empty());
    assert_eq!(r.wal.segments, 6);
    assert_eq!(r.wal.backup_labels, 1);
    assert!(r.sysid_present);
    assert_eq!(r.objects, 1 + 6 + 1 + 4);
    assert_eq!(r.other_objects, 0);
    let rp = r.recovery_point.expect("recovery point");
    assert!(rp >= b.completed_at.expect("sentinel time"));

    let j = serde_json::to_value(&r).expect("json");
    assert_eq!(j["verdict"], "recoverable");
    assert_eq!(j["prefix"], prefix.to_string());
    assert!(j["recovery_point"].as_str().is_some_and(|s| s.ends_with('Z')));
}

#[tokio::test]
async fn partitions_without_sentinel_is_no_complete_base_backup() {
    let (store, bucket) = fresh("nosentinel").await;
    let prefix = instance_prefix(&bucket, ID);
    let mut objs = vec![sysid()];
    objs.extend(wal(&[seg(1, 0, 2), seg(1, 0, 3)]));
    objs.extend(base_backup(&seg(1, 0, 3), "00000060", 2, false));
    upload(&store, &prefix, objs).await;

    let r = verify(&store, &prefix).await;
    assert_eq!(r.verdict, Verdict::NoCompleteBaseBackup, "{}", r.render_text());
    assert_eq!(r.base_backups.len(), 1);
    assert!(!r.base_backups[0].complete);
    assert_eq!(r.base_backups[0].partitions, 2);
    assert!(r.base_backups[0].last_upload.is_some());
    assert_eq!(r.latest_complete_backup, None);
    assert_eq!(r.recovery_point, None);
    assert!(r.render_text().contains("INCOMPLETE"));
}

#[tokio::test]
async fn wal_gap_names_the_missing_segments() {
    let (store, bucket) = fresh("gap").await;
    let prefix = instance_prefix(&bucket, ID);
    let mut objs = vec![sysid()];
    objs.extend(base_backup(&seg(1, 0, 3), "00000028", 1, true));
    // Missing: 05, and 08..09.
    objs.extend(wal(&[seg(1, 0, 3), seg(1, 0, 4), seg(1, 0, 6), seg(1, 0, 7), seg(1, 0, 0xA)]));
    upload(&store, &prefix, objs).await;

    let r = verify(&store, &prefix).await;
    assert_eq!(r.verdict, Verdict::RecoverableWithGaps, "{}", r.render_text());
    let c = r.continuity.as_ref().expect("continuity");
    assert_eq!(
        c.gaps,
        vec![
            Gap { first: "000000010000000000000005".into(), last: "000000010000000000000005".into(), missing: 1 },
            Gap { first: "000000010000000000000008".into(), last: "000000010000000000000009".into(), missing: 2 },
        ]
    );
    assert_eq!(c.missing_segments, 3);
    assert_eq!(c.replayable_until_segment.as_deref(), Some("000000010000000000000004"));
    let text = r.render_text();
    assert!(text.contains("000000010000000000000008 .. 000000010000000000000009"), "{text}");
}

#[tokio::test]
async fn empty_prefix_is_empty_even_next_to_other_instances() {
    let (store, bucket) = fresh("empty").await;
    // Another instance whose id starts with ours must not leak into our prefix.
    let other = instance_prefix(&bucket, &format!("{ID}x"));
    upload(&store, &other, vec![sysid()]).await;

    let r = verify(&store, &instance_prefix(&bucket, ID)).await;
    assert_eq!(r.verdict, Verdict::Empty, "{}", r.render_text());
    assert_eq!(r.objects, 0);
}

#[tokio::test]
async fn listing_paginates_past_1000_objects() {
    let (store, bucket) = fresh("many").await;
    let prefix = instance_prefix(&bucket, ID);
    let start = Segment { tli: 1, log: 0, seg: 0x10 };
    let n: u64 = 1_150;
    let names: Vec<String> = (0..n).map(|i| Segment::from_index(1, start.index() + i).expect("in range").name()).collect();
    let mut objs = vec![sysid()];
    objs.extend(base_backup(&start.name(), "00000028", 1, true));
    objs.extend(wal(&names));
    let total = objs.len();
    upload(&store, &prefix, objs).await;

    let listed = store.list(&prefix).await.expect("listing");
    assert_eq!(listed.len(), total);
    let mut keys: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    keys.dedup();
    assert_eq!(keys.len(), total, "pages must not repeat keys");

    let r = verify(&store, &prefix).await;
    assert_eq!(r.verdict, Verdict::Recoverable, "{}", r.render_text());
    assert_eq!(r.objects as usize, total);
    assert_eq!(r.wal.segments, n);
    let c = r.continuity.as_ref().expect("continuity");
    assert_eq!(c.expected_segments, n);
    assert_eq!(c.to_segment, names[names.len() - 1]);
    assert_eq!(c.to_segment, "00000001000000040000008D");
}

#[tokio::test]
async fn missing_bucket_is_reported_as_unreachable_with_advice() {
    let store = ObjectStore::connect(&config(common::env("SAFEGUARD_TEST_S3"))).expect("valid test config");
    let prefix = instance_prefix("sg-no-such-bucket-here", ID);
    let r = verify(&store, &prefix).await;
    match &r.verdict {
        Verdict::Unreachable { error } => {
            assert!(error.contains("does not exist"), "{error}");
            assert!(error.contains("sg-no-such-bucket-here"), "{error}");
            assert!(!error.contains(SECRET), "{error}");
        }
        v => panic!("expected unreachable, got {v:?}"),
    }
}

fn assert_unreachable_within(r: &VerifyReport, elapsed: Duration, bound: Duration, endpoint: &str, wording: &str) {
    match &r.verdict {
        Verdict::Unreachable { error } => {
            assert!(error.contains(endpoint), "error should name the endpoint: {error}");
            assert!(error.contains(wording), "{error}");
            assert!(!error.contains(SECRET), "error must not carry the secret: {error}");
        }
        v => panic!("expected unreachable, got {v:?}"),
    }
    assert!(elapsed < bound, "took {elapsed:?}, bound {bound:?}");
    let j = serde_json::to_value(r).expect("json");
    assert_eq!(j["verdict"], "unreachable");
    assert!(j["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(r.render_text().contains("could not be reached"));
}

#[tokio::test]
async fn closed_port_is_unreachable_quickly() {
    // A port that was just free: nothing listens, connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("ephemeral port").port();
    let ep = format!("http://127.0.0.1:{port}");
    let cfg = S3Config { timeout: Duration::from_secs(2), max_attempts: 2, ..config(ep.clone()) };
    let store = ObjectStore::connect(&cfg).expect("valid config");
    let t = Instant::now();
    let r = verify(&store, &instance_prefix("bkt", ID)).await;
    // timeout * attempts plus scheduling slack on a busy machine.
    assert_unreachable_within(&r, t.elapsed(), Duration::from_secs(8), &ep, "could not reach");
}

#[tokio::test]
async fn silent_endpoint_times_out_within_bound() {
    // Accepts TCP (kernel backlog) but never answers: only the timeouts end the call.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let ep = format!("http://127.0.0.1:{}", listener.local_addr().expect("addr").port());
    let cfg = S3Config { timeout: Duration::from_secs(1), max_attempts: 2, ..config(ep.clone()) };
    let store = ObjectStore::connect(&cfg).expect("valid config");
    let t = Instant::now();
    let r = verify(&store, &instance_prefix("bkt", ID)).await;
    let elapsed = t.elapsed();
    assert_unreachable_within(&r, elapsed, Duration::from_secs(6), &ep, "did not answer in time");
    assert!(elapsed >= Duration::from_millis(900), "gave up too early: {elapsed:?}");
    drop(listener);
}

#[test]
fn config_debug_and_json_never_show_the_secret() {
    let cfg = config("http://127.0.0.1:1".into());
    let dbg = format!("{:?}", cfg);
    assert!(!dbg.contains(SECRET), "{dbg}");
    assert!(dbg.contains("redacted"), "{dbg}");
    let store = ObjectStore::connect(&cfg).expect("valid config");
    assert!(!format!("{store:?}").contains(SECRET));
    let json = serde_json::to_string(&cfg).expect("json");
    assert!(!json.contains(SECRET), "{json}");
    let toml_text = toml::to_string(&cfg).expect("toml");
    assert!(!toml_text.contains(SECRET), "{toml_text}");
    // The secret can still be read from a config file.
    let back: S3Config = toml::from_str(&format!("{toml_text}\nsecret_access_key = \"{SECRET}\"\n")).expect("parse");
    assert_eq!(back, cfg);
}
