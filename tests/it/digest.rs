//! The daily digest against real services: the real binary watches, a real SMTP server (aiosmtpd)
//! receives the mail, a real S3 API (moto) holds the layouts the deletion alerts are judged by, and a
//! local HTTP server receives the webhook. The digest goes out once its local time has passed, says
//! what the watcher saw, and is never sent twice for a day, across restarts.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{bin, env, free_port, lager, mails, run, s3_layout, send_lines as send, wait_until, watch_syslog as watch, Proc};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use safeguard::gen::Rng;
use safeguard::timeutil::{now_ms, rfc3339};
use serde_json::Value;

/// A minimal HTTP server: answers 200 and hands every POSTed JSON body to the test.
fn webhook_server() -> (String, mpsc::Receiver<Value>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/digest", l.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let mut r = BufReader::new(conn);
            let (mut len, mut line, mut is_post) = (0usize, String::new(), false);
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                is_post |= line.starts_with("POST ");
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let _ = r.into_inner().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
            if is_post {
                if let Ok(v) = serde_json::from_slice(&body) {
                    let _ = tx.send(v);
                }
            }
        }
    });
    (url, rx)
}

/// The local date and time of day now in a zone.
fn local_now(zone: &str) -> jiff::ZonedDateTime {
    Timestamp::now().to_zoned_datetime(TimeZone::get(zone).unwrap())
}

struct Inst {
    id: String,
    node: String,
}

fn container(t: i64, i: &Inst, msg: &str) -> String {
    format!("<134>1 {} cell-3 cf-{} - - - {}-backup> {msg}", rfc3339(t), i.node, &i.id[..6])
}

/// Provisioned, a WAL segment archived, a base backup uploaded (completed in the logs or not), and
/// (unless `live`) its last node removed.
fn lines_of(i: &Inst, bucket: &str, t: i64, complete: bool, live: bool) -> Vec<String> {
    let pre = format!("s3://{bucket}/backups/{}/wal", i.id);
    let base = format!("{pre}/basebackups_005/base_000000010000000000000002_00000028");
    let mut l = vec![
        lager(t, "provision.start", &format!(r#""instance-id":"{}""#, i.id)),
        lager(t + 1, "add-node.perform", &format!(r#""instance-id":"{}","node-uuid":"{}""#, i.id, i.node)),
        container(t + 2, i, &format!(r#"        DETAIL: Archiving to "{pre}/wal_005/000000010000000000000001.lzo" complete at 1KiB/s."#)),
    ];
    if !live {
        l.push(container(t + 3, i, &format!(r#"        DETAIL: Uploading to "{base}/tar_partitions/part_00000000.tar.lzo"."#)));
        l.push(container(t + 4, i, &format!(r#"        DETAIL: Uploading to "{base}/tar_partitions/part_00000000.tar.lzo" complete at 1KiB/s."#)));
        if complete {
            l.push(container(t + 5, i, "NOTICE:  pg_stop_backup complete, all required WAL segments have been archived"));
        }
        l.push(lager(t + 6, "remove-node.perform", &format!(r#""instance-id":"{}","node-uuid":"{}","backend":"10.0.0.1""#, i.id, i.node)));
    }
    l
}

/// What WAL-E left: segments and a base backup's partition, without its sentinel (never completed).
fn objects_without_sentinel(i: &Inst) -> Vec<(String, &'static str)> {
    let pre = format!("backups/{}/wal", i.id);
    let base = format!("{pre}/basebackups_005/base_000000010000000000000002_00000028");
    vec![
        (format!("{pre}/wal_005/000000010000000000000001.lzo"), "wal"),
        (format!("{base}/extended_version.txt"), "PostgreSQL 14"),
        (format!("{base}/tar_partitions/part_00000000.tar.lzo"), "tar"),
    ]
}

fn config(dir: &Path, smtp: Option<&str>, webhook: &str, digest: &str, extra: &str) -> PathBuf {
    let mut c = format!(
        r#"[watch]
deletion_grace = "1s"
commit_interval = "200ms"

[s3]
endpoint = "{}"
path_style = true
access_key_id = "test"
secret_access_key = "test-secret-key"
timeout = "5s"

[alerts]
max_retry_interval = "1s"
{extra}
[alerts.webhook]
url = "{webhook}"

[alerts.digest]
{digest}
"#,
        env("SAFEGUARD_TEST_S3")
    );
    if let Some(smtp) = smtp {
        let (host, port) = smtp.split_once(':').unwrap();
        c.push_str(&format!(
            r#"
[alerts.email]
host = "{host}"
port = {port}
security = "none"
from = "safeguard@platform.example"
to = ["dba-oncall@platform.example"]
to_critical = ["pager@platform.example"]
timeout = "3s"
"#
        ));
    }
    let p = dir.join("safeguard.toml");
    std::fs::write(&p, c).unwrap();
    p
}

fn alerts_json(store: &str) -> Vec<Value> {
    let (code, out, err) = run(&["alerts", "--json", "--store", store]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().clone()
}

#[test]
fn the_digest_goes_out_once_at_its_local_time_with_what_the_watcher_saw_and_never_again_that_day() {
    let maildir = PathBuf::from(env("SAFEGUARD_TEST_MAILDIR"));
    let smtp = env("SAFEGUARD_TEST_SMTP");
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(now_ms() as u64 ^ 0xd16e57);
    let bucket = format!("digest-{}", &rng.uuid()[..8]);
    // A: the logs show a complete base backup, but the object store holds no sentinel for it.
    // B: the backup never completed, in the logs or in the object store. L: live, never backed up.
    let (a, b, l) = (Inst { id: rng.uuid(), node: rng.uuid() }, Inst { id: rng.uuid(), node: rng.uuid() }, Inst { id: rng.uuid(), node: rng.uuid() });
    let mut objs = objects_without_sentinel(&a);
    objs.extend(objects_without_sentinel(&b));
    s3_layout(&bucket, &objs);
    let (hook_url, hooks) = webhook_server();

    // The next local minute at least 30 s away, in a zone with daylight saving.
    let zone = "Europe/Berlin";
    let due = local_now(zone).timestamp().as_millisecond() + 30_000;
    let due = due - due.rem_euclid(60_000) + 60_000;
    let due_local = Timestamp::from_millisecond(due).unwrap().to_zoned_datetime(TimeZone::get(zone).unwrap());
    let (date, at) = (due_local.date().to_string(), format!("{:02}:{:02}", due_local.hour(), due_local.minute()));
    let cfg = config(tmp.path(), Some(&smtp), &hook_url, &format!("at = \"{at}\"\ntimezone = \"{zone}\""), "");
    let store = tmp.path().join("store");
    let store_s = store.to_str().unwrap().to_string();
    let port = free_port();

    let w = watch(&cfg, &store, port);
    let t = now_ms() - 60_000;
    let mut lines = lines_of(&a, &bucket, t, true, false);
    lines.extend(lines_of(&b, &bucket, t + 10, false, false));
    lines.extend(lines_of(&l, &bucket, t + 20, false, true));
    lines.push("<134>1 2026-01-01T00:00:00Z cell-3 some-app - - - an unrelated line".into());
    send(port, &lines);
    // Both deletion alerts are decided by the object store and delivered well before the digest.
    wait_until("both deletion alerts to be sent", Duration::from_secs(25), || {
        alerts_json(&store_s).iter().filter(|x| x["state"] == "sent" && x["id"].as_str().is_some_and(|i| i.contains(":deletion:"))).count() == 2
    });
    let digest_mails = || mails(&maildir, &b.id).into_iter().filter(|m| m.subject.contains("daily digest")).collect::<Vec<_>>();
    while now_ms() < due - 1_500 {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(digest_mails().is_empty(), "a digest before {at} {zone}");
    assert!(!alerts_json(&store_s).iter().any(|x| x["rule"] == "digest"), "a digest raised before {at} {zone}");

    wait_until("the digest mail", Duration::from_secs(30), || !digest_mails().is_empty());
    let arrived = now_ms();
    assert!(arrived >= due, "the digest arrived {} ms before {at}", due - arrived);
    let m = digest_mails().remove(0);
    assert_eq!(m.subject, format!("[safeguard] daily digest {date}: 3 instances watched, 2 deleted in 24 h, 1 at risk"));
    let body = &m.text;
    for needle in [
        "To: dba-oncall@platform.example".to_string(),
        "The watcher is alive".into(),
        format!("This digest is for {date} ({zone})"),
        "Instances watched: 3 (1 live, 2 deleted)".into(),
        "2 of them without a complete base backup".into(),
        format!("{} deleted", a.id),
        "logs show complete base backup base_000000010000000000000002_00000028; object store: no_complete_base_backup".into(),
        format!("safeguard recover {}", b.id),
        "logs show no complete base backup; object store: no_complete_base_backup".into(),
        "At risk now: 1 live instance (by reason: no_base_backup 1)".into(),
        format!("{}: no_base_backup", l.id),
        "2 raised, 2 sent, 0 failed, 0 suppressed; 0 pending now".into(),
        "Lines read since start (no earlier digest; the watcher started ".into(),
        format!(": {} (", lines.len()),
        "Kafka consumer lag: no Kafka source".into(),
        format!("Alert digest:{date} (digest)"),
    ] {
        assert!(body.contains(&needle), "{needle:?} not in the digest:\n{body}");
    }
    assert!(!body.contains("pager@platform.example"), "the digest is not a page: {body}");
    // The webhook got it too, with its figures.
    let hook = loop {
        let v = hooks.recv_timeout(Duration::from_secs(30)).expect("the digest's webhook");
        if v["alert"]["rule"] == "digest" {
            break v;
        }
    };
    assert!(hook["text"].as_str().unwrap().starts_with(&format!("[safeguard] daily digest {date}")), "{hook}");
    let d = &hook["alert"]["digest"];
    assert_eq!((d["instances_live"].as_u64(), d["instances_deleted"].as_u64(), d["at_risk"].as_u64()), (Some(1), Some(2), Some(1)), "{hook}");
    assert_eq!(d["deleted_without_base_backup"], 2);
    assert_eq!(d["lines"]["lines_read"], lines.len());
    assert_eq!(d["at_risk_listed"][0]["instance_id"], l.id.as_str());

    // Nothing more that day, after a while or across a restart.
    std::thread::sleep(Duration::from_secs(2));
    w.stop();
    let w = watch(&cfg, &store, port);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(digest_mails().len(), 1, "a second digest for {date}");
    while let Ok(v) = hooks.try_recv() {
        assert_ne!(v["alert"]["rule"], "digest", "a second digest webhook: {v}");
    }
    let all = alerts_json(&store_s);
    let digests: Vec<&Value> = all.iter().filter(|x| x["rule"] == "digest").collect();
    assert_eq!(digests.len(), 1, "{all:?}");
    assert_eq!(digests[0]["id"], format!("digest:{date}"));
    assert_eq!(digests[0]["state"], "sent");
    assert_eq!(digests[0]["severity"], "info");
    // The listing shows it by its rule and id.
    let (code, out, _) = run(&["alerts", "--store", &store_s]);
    assert_eq!(code, 0);
    let row = out.lines().find(|r| r.contains(&format!("digest:{date}"))).unwrap_or_else(|| panic!("{out}"));
    assert!(row.starts_with("sent") && row.contains(" info ") && row.contains(" digest "), "{row}");
    w.stop();
}

#[test]
fn a_watcher_started_after_the_time_sends_that_days_digest_at_once_with_the_deletion_rules_off() {
    let tmp = tempfile::tempdir().unwrap();
    let (hook_url, hooks) = webhook_server();
    // 00:00 has always passed today; with both deletion rules off the digest is still sent.
    let zone = "America/New_York";
    let before = local_now(zone).date().to_string();
    let cfg = config(
        tmp.path(),
        None,
        &hook_url,
        &format!("at = \"00:00\"\ntimezone = \"{zone}\""),
        "[alerts.rules]\ninstance_deleted = false\ndeleted_without_base_backup = false\n",
    );
    let store = tmp.path().join("store");
    let store_s = store.to_str().unwrap().to_string();
    let port = free_port();
    let started = Instant::now();
    let w = watch(&cfg, &store, port);
    let v = hooks.recv_timeout(Duration::from_secs(20)).expect("the digest's webhook");
    let after = local_now(zone).date().to_string();
    eprintln!("the digest came {:.1} s after the start", started.elapsed().as_secs_f64());
    let id = v["alert"]["id"].as_str().unwrap().to_string();
    assert!(id == format!("digest:{before}") || id == format!("digest:{after}"), "{id}: today in {zone} is {before}");
    assert_eq!(v["alert"]["rule"], "digest");
    assert_eq!(v["alert"]["digest"]["instances_live"], 0);
    assert_eq!(v["alert"]["digest"]["timezone"], zone);
    assert!(v["text"].as_str().unwrap().contains("0 instances watched, 0 deleted in 24 h, 0 at risk"), "{v}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(hooks.try_recv().is_err(), "a second webhook");
    let all = alerts_json(&store_s);
    assert_eq!(all.len(), 1, "only today's digest, no earlier day's: {all:?}");
    assert_eq!(all[0]["state"], "sent");
    w.stop();
}

#[test]
fn a_bad_digest_time_or_zone_stops_the_watcher_at_start_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    for (digest, key, value) in [
        ("at = \"25:00\"", "alerts.digest.at", "25:00"),
        ("at = \"8 am\"", "alerts.digest.at", "8 am"),
        ("at = \"08:00\"\ntimezone = \"Europe/Berln\"", "alerts.digest.timezone", "Europe/Berln"),
    ] {
        let cfg = tmp.path().join("bad.toml");
        std::fs::write(&cfg, format!("[alerts.digest]\n{digest}\n")).unwrap();
        let port = free_port();
        let (code, _, err) =
            run(&["watch", "--config", cfg.to_str().unwrap(), "--store", tmp.path().join("store").to_str().unwrap(), "--syslog", &format!("127.0.0.1:{port}")]);
        assert_ne!(code, 0, "{digest}: the watcher started");
        assert!(err.contains(key) && err.contains(value), "{digest}: {err}");
    }
}

#[test]
fn with_a_kafka_source_the_digest_carries_each_partitions_lag_as_metrics_computes_it() {
    // No [http] section: the digest starts the probes /metrics would use on its own.
    let broker = env("SAFEGUARD_TEST_KAFKA");
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000;
    let topic = format!("digest-{}-{n}", std::process::id());
    common::create_topic(&env("SAFEGUARD_TEST_TANSU"), &broker, &topic, 2);
    let tmp = tempfile::tempdir().unwrap();
    let (hook_url, hooks) = webhook_server();
    let cfg = tmp.path().join("safeguard.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[watch]
commit_interval = "200ms"

[[sources]]
type = "kafka"
brokers = ["{broker}"]
topics = ["{topic}"]
group_id = "{topic}-group"

[alerts.webhook]
url = "{hook_url}"

[alerts.digest]
at = "00:00"
timezone = "+14:00"
"#
        ),
    )
    .unwrap();
    let child = Command::new(bin())
        .args(["watch", "--config", cfg.to_str().unwrap(), "--store", tmp.path().join("store").to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let w = Proc(child);
    let v = hooks.recv_timeout(Duration::from_secs(60)).expect("the digest's webhook");
    let lag = &v["alert"]["digest"]["kafka"];
    assert_eq!(lag["state"], "measured", "the lag is measured, not unknown: {v}");
    let mut parts: Vec<(String, i64, i64)> = lag["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["topic"].as_str().unwrap().to_string(), p["partition"].as_i64().unwrap(), p["lag"].as_i64().unwrap()))
        .collect();
    parts.sort();
    assert_eq!(parts, [(topic.clone(), 0, 0), (topic.clone(), 1, 0)], "{v}");
    w.stop();
}
