//! The store backs itself up (issue 17, part 1) against a real S3 API (moto): `store backup`,
//! `store backups`, `store restore` on the real binary; a watcher with `[backup]` that is SIGKILLed, its
//! store deleted, restored and resumed, ending with the records of a watcher that never died; a corrupt
//! object refused by its checksum with nothing written; `[backup]` validated naming the key.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{bin, env, free_port, run, wait_until, KillOnDrop};
use safeguard::gen::{GenConfig, Generator};
use safeguard::s3::ObjectStore;
use serde_json::Value;

const SECRET: &str = "backup-test-secret";

fn object_store() -> ObjectStore {
    ObjectStore::connect(&crate::common::s3_config(env("SAFEGUARD_TEST_S3"), SECRET)).unwrap()
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// A new bucket for this run (moto outlives the tests), named from `base`.
pub(crate) fn make_bucket(base: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let bucket = format!("{base}-{}-{nanos}", std::process::id());
    block_on(async {
        let s = object_store();
        s.client().await.create_bucket().bucket(&bucket).send().await.expect("create bucket");
    });
    bucket
}

/// Every key in the bucket.
fn keys(bucket: &str) -> Vec<String> {
    block_on(async {
        let s = object_store();
        s.list(&safeguard::s3::S3Url::parse(&format!("s3://{bucket}")).unwrap()).await.unwrap().into_iter().map(|o| o.key).collect()
    })
}

fn config(dir: &Path, extra: &str) -> String {
    let p = dir.join("safeguard.toml");
    std::fs::write(
        &p,
        format!(
            "[s3]\nendpoint = \"{}\"\npath_style = true\naccess_key_id = \"test\"\nsecret_access_key = \"{SECRET}\"\ntimeout = \"5s\"\nmax_attempts = 2\n{extra}",
            env("SAFEGUARD_TEST_S3")
        ),
    )
    .unwrap();
    p.to_str().unwrap().to_string()
}

fn json(args: &[&str]) -> Value {
    let (code, out, err) = run(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn corpus(dir: &Path, seed: u64, lines: u64) -> std::path::PathBuf {
    let log = dir.join("gen.log");
    let cfg = GenConfig { seed, lines, concurrent_instances: 12, noise: 0.5, ..GenConfig::default() };
    Generator::new(cfg).write_all(&mut std::io::BufWriter::new(std::fs::File::create(&log).unwrap())).unwrap();
    log
}

/// `instances --json` and every instance's `show --json`.
fn records(store: &str) -> (Value, Vec<Value>) {
    let list = json(&["instances", "--json", "--store", store]);
    let shows = list.as_array().unwrap().iter().map(|r| json(&["show", r["instance_id"].as_str().unwrap(), "--json", "--store", store])).collect();
    (list, shows)
}

#[test]
fn backup_then_restore_gives_the_same_store_and_a_replay_applies_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = &make_bucket("sg-backup-roundtrip");
    let cfg = config(tmp.path(), "");
    let log = corpus(tmp.path(), 21, 15_000);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (a_s, b_s, log_s) = (a.to_str().unwrap(), b.to_str().unwrap(), log.to_str().unwrap());
    let first = json(&["ingest", log_s, "--json", "-q", "--store", a_s]);
    assert!(first["events_applied"].as_u64().unwrap() > 100, "{first}");
    let before = records(a_s);
    assert!(before.0.as_array().unwrap().len() > 10);

    let (code, out, err) = run(&["--config", &cfg, "store", "backup", "--to", &format!("s3://{bucket}/x/"), "--store", a_s]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("backed up"), "{out}");
    let listed = json(&["--config", &cfg, "store", "backups", &format!("s3://{bucket}/x"), "--json"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["complete"], true);
    assert_eq!(listed[0]["instances"], before.0.as_array().unwrap().len());
    let name = listed[0]["name"].as_str().unwrap();
    let mut ks = keys(bucket);
    ks.sort();
    assert_eq!(ks, [format!("x/{name}.json"), format!("x/{name}.sgsnap.zst")]);

    std::fs::remove_dir_all(&a).unwrap();
    let (code, out, err) = run(&["--config", &cfg, "store", "restore", &format!("s3://{bucket}/x/"), "--store", b_s]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(name) && out.contains("resumes at offset"), "{out}");
    assert_eq!(records(b_s), before, "the restored store answers as the original did");
    // No secret in any output.
    assert!(!out.contains(SECRET) && !err.contains(SECRET));

    // Its positions came with it: the same archive again is skipped, and changes nothing.
    let again = json(&["ingest", log_s, "--json", "-q", "--store", b_s]);
    assert_eq!(again["events_applied"], 0, "{again}");
    assert_eq!(again["lines_read"], 0, "{again}");
    assert!(again["lines_replayed_skipped"].as_u64().unwrap() > 0, "{again}");
    assert_eq!(records(b_s), before);

    // A second restore into the now non-empty store is refused without --force, and keeps the old one
    // aside with it.
    let (code, _, err) = run(&["--config", &cfg, "store", "restore", &format!("s3://{bucket}/x/"), "--store", b_s]);
    assert_eq!(code, 2);
    assert!(err.contains("not empty") && err.contains("--force"), "{err}");
    let (code, out, err) = run(&["--config", &cfg, "store", "restore", &format!("s3://{bucket}/x/"), "--name", name, "--force", "--store", b_s]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replaced-"), "{out}");
    assert_eq!(records(b_s), before);
}

fn watcher(cfg: &str, store: &str, addr: &str, log: &Path) -> KillOnDrop {
    let child = Command::new(bin())
        .args(["--config", cfg, "watch", "--syslog", addr, "--store", store])
        .env("RUST_LOG", "info,safeguard=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let w = KillOnDrop(child);
    wait_until("the TCP listener", Duration::from_secs(20), || TcpStream::connect(addr).is_ok());
    w
}

fn send(addr: &str, lines: &[&str]) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    for l in lines {
        writeln!(tcp, "{l}").unwrap();
    }
    tcp.flush().unwrap();
}

fn lines_read(store: &str) -> u64 {
    let (_, out, _) = run(&["status", "--json", "--store", store]);
    serde_json::from_str::<Value>(&out).ok().and_then(|v| v["counters"]["lines_read"].as_u64()).unwrap_or(0)
}

fn stop(mut w: KillOnDrop) {
    let ok = Command::new("kill").args(["-TERM", &w.0.id().to_string()]).status().unwrap().success();
    assert!(ok);
    assert!(w.0.wait().unwrap().success());
}

#[test]
fn a_watcher_killed_restored_and_resumed_ends_with_the_records_of_one_that_never_died() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = &make_bucket("sg-backup-watcher");
    let prefix = format!("s3://{bucket}/safeguard/");
    // What is not a backup under the prefix is never touched.
    block_on(async {
        let c = object_store();
        for k in ["safeguard/notes.json", "safeguard/keep/20240101T000000Z-abcdef.json"] {
            c.client().await.put_object().bucket(bucket).key(k).body(b"{}".to_vec().into()).send().await.unwrap();
        }
    });
    let cfg = config(tmp.path(), &format!("[backup]\nto = \"{prefix}\"\ninterval = \"2s\"\nkeep = 2\n"));
    let log = corpus(tmp.path(), 33, 4_000);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let half = lines.len() / 2;

    // The reference: one watcher that sees every line.
    let r = tmp.path().join("r");
    let r_s = r.to_str().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let w = watcher("/dev/null", r_s, &addr, &tmp.path().join("r.log"));
    send(&addr, &lines);
    wait_until("every line in the reference", Duration::from_secs(60), || lines_read(r_s) == lines.len() as u64);
    stop(w);
    let want = records(r_s);

    // The watcher that dies: backs up every 2 s, keeps 2.
    let s = tmp.path().join("s");
    let s_s = s.to_str().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let w = watcher(&cfg, s_s, &addr, &tmp.path().join("s.log"));
    send(&addr, &lines[..half]);
    wait_until("the first half", Duration::from_secs(60), || lines_read(s_s) == half as u64);
    let half_read = safeguard::timeutil::rfc3339(safeguard::timeutil::now_ms());
    let backups = || json(&["--config", &cfg, "store", "backups", "--json"]).as_array().unwrap().clone();
    // At least 3 made, one of them copied after the first half was read (so it holds all of it).
    let mut seen = std::collections::BTreeSet::new();
    let mut covering = false;
    wait_until("3 backups", Duration::from_secs(60), || {
        for b in backups().into_iter().filter(|b| b["complete"] == true) {
            covering |= b["created_at"].as_str().unwrap() > half_read.as_str();
            seen.insert(b["name"].as_str().unwrap().to_string());
        }
        seen.len() >= 3 && covering
    });
    let complete: Vec<Value> = backups().into_iter().filter(|b| b["complete"] == true).collect();
    assert_eq!(complete.len(), 2, "keep = 2: {complete:?}");
    let ks = keys(bucket);
    assert!(ks.contains(&"safeguard/notes.json".to_string()) && ks.contains(&"safeguard/keep/20240101T000000Z-abcdef.json".to_string()), "{ks:?}");
    assert!(ks.len() <= 2 + 2 * 3, "only backups within keep (and one being uploaded) remain: {ks:?}");

    // kill -9, the store lost.
    let mut w = w;
    w.0.kill().unwrap();
    w.0.wait().unwrap();
    std::fs::remove_dir_all(&s).unwrap();
    let (code, out, err) = run(&["--config", &cfg, "store", "restore", "--store", s_s]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restored"), "{out}");
    assert_eq!(json(&["status", "--json", "--store", s_s])["counters"]["lines_read"], half as u64, "the newest backup covers the first half");

    // Resumed on the restored store: the rest of the lines, and the records of the watcher that never died.
    let w = watcher(&cfg, s_s, &addr, &tmp.path().join("s2.log"));
    send(&addr, &lines[half..]);
    wait_until("every line after the restore", Duration::from_secs(60), || lines_read(s_s) == lines.len() as u64);
    stop(w);
    assert_eq!(records(s_s), want, "the record is a function of the facts");
    let logged = std::fs::read_to_string(tmp.path().join("s.log")).unwrap();
    assert!(logged.contains("store backed up"), "{logged}");
    assert!(!logged.contains(SECRET));
}

#[test]
fn a_corrupt_backup_is_refused_by_its_checksum_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = &make_bucket("sg-backup-corrupt");
    let cfg = config(tmp.path(), &format!("[backup]\nto = \"s3://{bucket}/c/\"\n"));
    let log = corpus(tmp.path(), 5, 3_000);
    let a = tmp.path().join("a");
    let a_s = a.to_str().unwrap();
    json(&["ingest", log.to_str().unwrap(), "--json", "-q", "--store", a_s]);
    let (code, _, err) = run(&["--config", &cfg, "store", "backup", "--store", a_s]);
    assert_eq!(code, 0, "{err}");
    let key = keys(bucket).into_iter().find(|k| k.ends_with(".sgsnap.zst")).unwrap();
    block_on(async {
        let s = object_store();
        let c = s.client().await;
        let body = c.get_object().bucket(bucket).key(&key).send().await.unwrap().body.collect().await.unwrap().into_bytes();
        let mut bytes = body.to_vec();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        c.put_object().bucket(bucket).key(&key).body(bytes.into()).send().await.unwrap();
    });
    let parent = tmp.path().join("restore-here");
    std::fs::create_dir(&parent).unwrap();
    let target = parent.join("b");
    let (code, out, err) = run(&["--config", &cfg, "store", "restore", "--store", target.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("SHA-256") && err.contains(&key) && err.contains("Nothing was written"), "{err}");
    assert!(!target.exists());
    assert_eq!(std::fs::read_dir(&parent).unwrap().count(), 0, "no temporary file is left behind");
    // A backup that is missing its manifest is incomplete: listed as such, never restored.
    let manifest = key.replace(".sgsnap.zst", ".json");
    block_on(async { object_store().client().await.delete_object().bucket(bucket).key(&manifest).send().await.unwrap() });
    let listed = json(&["--config", &cfg, "store", "backups", "--json"]);
    assert_eq!(listed[0]["complete"], false, "{listed}");
    let (code, _, err) = run(&["--config", &cfg, "store", "restore", "--store", target.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("no complete backup"), "{err}");
}

#[test]
fn the_backup_section_is_validated_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    for (section, key) in [
        ("[backup]\ninterval = \"1h\"\n", "backup.to"),
        ("[backup]\nto = \"s3://b/x/\"\nkeep = 0\n", "backup.keep"),
        ("[backup]\nto = \"s3://b/x/\"\ninterval = \"0s\"\n", "backup.interval"),
        ("[backup]\nto = \"s3://b\"\n", "backup.to"),
    ] {
        let cfg = config(tmp.path(), section);
        let (code, _, err) = run(&["--config", &cfg, "store", "backups"]);
        assert_eq!(code, 2, "{section}");
        assert!(err.contains(key), "{section}: {err}");
    }
    // And a watcher refuses to start with it.
    let cfg = config(tmp.path(), "[backup]\nto = \"s3://b/x/\"\nkeep = 0\n");
    let (code, _, err) = run(&["--config", &cfg, "watch", "--store", tmp.path().join("s").to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("backup.keep"), "{err}");
}

/// Past one PutObject's size a backup goes up in parts (moto, with parts at the 5 MiB minimum): the
/// object reads back byte for byte and no unfinished upload is left; a missing bucket fails naming it.
#[test]
fn a_large_file_goes_up_in_parts_and_reads_back_whole() {
    use sha2::Digest;
    let tmp = tempfile::tempdir().unwrap();
    let bucket = make_bucket("sg-multipart");
    let path = tmp.path().join("big.bin");
    let mut rng = safeguard::gen::Rng::new(7);
    let data: Vec<u8> = (0..(11 << 20) + 12_345).map(|_| rng.next_u64() as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let url = safeguard::s3::S3Url { bucket: bucket.clone(), key: "x/big.bin".into() };
    block_on(async {
        let s = object_store();
        s.put_file_in_parts(&url, &path, safeguard::s3::objects::PART_MIN).await.unwrap();
        let mut h = sha2::Sha256::new();
        let n = s
            .get_chunks(&url, &path, |c| {
                h.update(c);
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(h.finalize()[..], sha2::Sha256::digest(&data)[..], "the object is the file");
        let pending = s.client().await.list_multipart_uploads().bucket(&bucket).send().await.unwrap();
        assert!(pending.uploads().is_empty(), "{:?}", pending.uploads());
        let head = s.client().await.head_object().bucket(&bucket).key("x/big.bin").send().await.unwrap();
        // A multipart object's ETag ends with its part count: 3 parts of 5 MiB, 5 MiB and the rest.
        assert!(head.e_tag().unwrap_or("").trim_matches('"').ends_with("-3"), "{:?}", head.e_tag());
        let missing = safeguard::s3::S3Url { bucket: format!("{bucket}-nowhere"), key: "x/big.bin".into() };
        let e = s.put_file_in_parts(&missing, &path, safeguard::s3::objects::PART_MIN).await.unwrap_err().to_string();
        assert!(e.contains("CreateMultipartUpload") && e.contains(&format!("{bucket}-nowhere")), "{e}");
    });
}

/// A later backup aborts the unfinished uploads an earlier one left (a watcher killed mid-upload), so
/// their parts stop being billed; an upload not named like a backup, under another prefix or in a
/// sub-folder, or begun after the cut-off is left alone.
#[test]
fn unfinished_uploads_of_earlier_backups_are_aborted_and_nothing_else() {
    use safeguard::store::backup::abort_abandoned;
    let bucket = make_bucket("sg-abandoned");
    let name = "20240501T102030Z-abcdef";
    let ours = format!("b/{name}.sgsnap.zst");
    let others = [
        "b/notes.bin".to_string(),
        format!("b/{name}.json"),
        format!("other/{name}.sgsnap.zst"),
        format!("b/sub/{name}.sgsnap.zst"),
        format!("b/{name}x.sgsnap.zst"),
    ];
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    block_on(async {
        let s = object_store();
        let c = s.client().await;
        for k in std::iter::once(&ours).chain(&others) {
            c.create_multipart_upload().bucket(&bucket).key(k).send().await.unwrap();
        }
        let dest = safeguard::s3::S3Url { bucket: bucket.clone(), key: "b/".into() };
        let unfinished = || async {
            let mut k: Vec<String> =
                c.list_multipart_uploads().bucket(&bucket).send().await.unwrap().uploads().iter().filter_map(|u| u.key().map(str::to_string)).collect();
            k.sort();
            k
        };
        assert_eq!(unfinished().await.len(), 6);
        // moto reports every upload as initiated on 2010-11-10: a cut-off before that leaves them all.
        assert!(abort_abandoned(&s, &dest, 1_262_304_000_000).await.is_empty(), "begun after the cut-off (2010-01-01): left");
        assert_eq!(unfinished().await.len(), 6);
        assert_eq!(abort_abandoned(&s, &dest, now() + 60_000).await, vec![ours.clone()]);
        let mut want = others.to_vec();
        want.sort();
        assert_eq!(unfinished().await, want, "only the backup's own upload is aborted");
        // A bucket that is not there: nothing aborted, and no error for the backup that asked.
        let missing = safeguard::s3::S3Url { bucket: format!("{bucket}-nowhere"), key: "b/".into() };
        assert!(abort_abandoned(&s, &missing, now()).await.is_empty());
        // The backup's own path: `store backup` aborts one left under its prefix (begun, for moto, years
        // before this backup) and says so.
        c.create_multipart_upload().bucket(&bucket).key(format!("c/{name}.sgsnap.zst")).send().await.unwrap();
    });
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("s");
    let log = corpus(tmp.path(), 5, 2_000);
    json(&["ingest", log.to_str().unwrap(), "--json", "-q", "--store", store.to_str().unwrap()]);
    let made =
        json(&["--config", &config(tmp.path(), ""), "store", "backup", "--to", &format!("s3://{bucket}/c/"), "--json", "--store", store.to_str().unwrap()]);
    assert_eq!(made["aborted"], serde_json::json!([format!("c/{name}.sgsnap.zst")]), "{made}");
    block_on(async {
        let s = object_store();
        let c = s.client().await;
        let left = c.list_multipart_uploads().bucket(&bucket).prefix("c/").send().await.unwrap();
        assert!(left.uploads().is_empty(), "{:?}", left.uploads());
    });
}

/// `store backup` on the store of a running watcher asks the watcher, which takes the backup between two
/// of its commits and answers with what it made; `--to` is refused then, and so is a watcher without
/// `[backup]`, each saying what to do.
#[test]
fn store_backup_asks_a_running_watcher_and_waits_for_its_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = &make_bucket("sg-backup-ask");
    let prefix = format!("s3://{bucket}/asked/");
    // Hourly: only the backup at start-up comes on its own.
    let cfg = config(tmp.path(), &format!("[backup]\nto = \"{prefix}\"\ninterval = \"1h\"\n"));
    let log = corpus(tmp.path(), 44, 3_000);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (s, addr) = (tmp.path().join("s"), format!("127.0.0.1:{}", free_port()));
    let s_s = s.to_str().unwrap();
    let w = watcher(&cfg, s_s, &addr, &tmp.path().join("s.log"));
    send(&addr, &lines);
    wait_until("every line", Duration::from_secs(60), || lines_read(s_s) == lines.len() as u64);
    let instances = json(&["instances", "--json", "--store", s_s]).as_array().unwrap().len() as u64;
    assert!(instances > 5);

    let made = json(&["--config", &cfg, "store", "backup", "--json", "--store", s_s]);
    assert_eq!(made["manifest"]["instances"], instances, "{made}");
    assert!(made["url"].as_str().unwrap().starts_with(&prefix), "{made}");
    let listed = json(&["--config", &cfg, "store", "backups", "--json"]);
    let newest = &listed.as_array().unwrap()[0];
    assert_eq!(
        (newest["name"].clone(), newest["complete"].clone(), newest["instances"].clone()),
        (made["name"].clone(), Value::Bool(true), made["manifest"]["instances"].clone())
    );
    // Asked twice more at once: both answered (by one backup or two), the watcher still running.
    let (a, b) = std::thread::scope(|sc| {
        let one = sc.spawn(|| json(&["--config", &cfg, "store", "backup", "--json", "--store", s_s]));
        let two = sc.spawn(|| json(&["--config", &cfg, "store", "backup", "--json", "--store", s_s]));
        (one.join().unwrap(), two.join().unwrap())
    });
    assert!(a["name"].is_string() && b["name"].is_string() && a["name"] != made["name"], "{a} {b}");

    let (code, _, err) = run(&["--config", &cfg, "store", "backup", "--to", &format!("s3://{bucket}/elsewhere/"), "--store", s_s]);
    assert_eq!(code, 2);
    assert!(err.contains("leave out --to"), "{err}");
    stop(w);

    // A watcher without [backup] says how to get one.
    std::fs::create_dir_all(tmp.path().join("plain")).unwrap();
    let plain = config(&tmp.path().join("plain"), "");
    let addr = format!("127.0.0.1:{}", free_port());
    let w = watcher(&plain, s_s, &addr, &tmp.path().join("p.log"));
    wait_until("the socket", Duration::from_secs(20), || s.join(safeguard::query::SOCKET_NAME).exists());
    let (code, _, err) = run(&["--config", &cfg, "store", "backup", "--store", s_s]);
    assert_eq!(code, 2);
    assert!(err.contains("no [backup] section") && err.contains("restart"), "{err}");
    stop(w);
}
