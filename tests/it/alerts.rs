//! Deletion alerts end to end against real services: the real binary watches, a real S3 API (moto)
//! holds the WAL-E layouts it verifies, a real SMTP server (aiosmtpd) receives the mail, and a local
//! HTTP server in the test receives the webhook.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{env, free_port, lager, mails, run, s3_layout, send_lines as send, wait_until, watch_syslog as watch, Proc};
use safeguard::gen::Rng;
use safeguard::timeutil::{now_ms, rfc3339};
use serde_json::Value;

struct Inst {
    id: String,
    node: String,
}

fn inst(rng: &mut Rng) -> Inst {
    Inst { id: rng.uuid(), node: rng.uuid() }
}

fn container(t: i64, i: &Inst, msg: &str) -> String {
    format!("<134>1 {} cell-7 cf-{} - - - {}-backup> {msg}", rfc3339(t), i.node, &i.id[..6])
}

/// Provision, archive a segment, upload a base backup (completed or not), lose the last node.
fn lifecycle(i: &Inst, bucket: &str, complete: bool) -> Vec<String> {
    let t = now_ms() - 30_000;
    let pre = format!("s3://{bucket}/backups/{}/wal", i.id);
    let base = format!("{pre}/basebackups_005/base_000000010000000000000002_00000028");
    let mut l = vec![
        lager(t, "provision.start", &format!(r#""instance-id":"{}""#, i.id)),
        lager(t + 1, "add-node.perform", &format!(r#""instance-id":"{}","node-uuid":"{}""#, i.id, i.node)),
        container(t + 2, i, &format!(r#"        DETAIL: Archiving to "{pre}/wal_005/000000010000000000000001.lzo" complete at 1KiB/s."#)),
        container(t + 3, i, &format!(r#"        DETAIL: Uploading to "{base}/tar_partitions/part_00000000.tar.lzo"."#)),
        container(t + 4, i, &format!(r#"        DETAIL: Uploading to "{base}/tar_partitions/part_00000000.tar.lzo" complete at 1KiB/s."#)),
    ];
    if complete {
        l.push(container(t + 5, i, "NOTICE:  pg_stop_backup complete, all required WAL segments have been archived"));
    }
    l.push(lager(t + 6, "remove-node.perform", &format!(r#""instance-id":"{}","node-uuid":"{}","backend":"10.0.0.1""#, i.id, i.node)));
    l
}

/// The objects WAL-E leaves for that lifecycle; without the sentinel when the backup never completed.
fn objects(i: &Inst, complete: bool) -> Vec<(String, &'static str)> {
    let pre = format!("backups/{}/wal", i.id);
    let base = format!("{pre}/basebackups_005/base_000000010000000000000002_00000028");
    let mut o = vec![
        (format!("{pre}/wal_005/000000010000000000000001.lzo"), "wal"),
        (format!("{pre}/wal_005/000000010000000000000002.lzo"), "wal"),
        (format!("{base}/extended_version.txt"), "PostgreSQL 14"),
        (format!("{base}/tar_partitions/part_00000000.tar.lzo"), "tar"),
    ];
    if complete {
        o.push((format!("{base}_backup_stop_sentinel.json"), r#"{"wal_segment_backup_stop":"000000010000000000000002"}"#));
    }
    o
}

/// A minimal HTTP server: answers 200 and hands every request body to the test.
fn webhook_server() -> (String, mpsc::Receiver<Value>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/safeguard", l.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let mut r = BufReader::new(conn);
            let mut len = 0usize;
            let mut line = String::new();
            let mut is_post = false;
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if line.starts_with("POST ") {
                    is_post = true;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let mut conn = r.into_inner();
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
            if is_post {
                if let Ok(v) = serde_json::from_slice(&body) {
                    let _ = tx.send(v);
                }
            }
        }
    });
    (url, rx)
}

fn write_config(dir: &Path, smtp: &str, webhook: Option<&str>) -> PathBuf {
    let (host, port) = smtp.split_once(':').unwrap();
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

[alerts.email]
host = "{host}"
port = {port}
security = "none"
from = "safeguard@platform.example"
to = ["dba-oncall@platform.example"]
to_critical = ["dba-oncall@platform.example", "platform-lead@platform.example"]
timeout = "3s"
"#,
        env("SAFEGUARD_TEST_S3")
    );
    if let Some(url) = webhook {
        c.push_str(&format!("\n[alerts.webhook]\nurl = \"{url}\"\nheaders = {{ Authorization = \"Bearer not-in-logs\" }}\n"));
    }
    let p = dir.join("safeguard.toml");
    std::fs::write(&p, c).unwrap();
    p
}

#[test]
fn one_email_and_webhook_per_deleted_instance_decided_by_the_object_store() {
    let maildir = PathBuf::from(env("SAFEGUARD_TEST_MAILDIR"));
    let smtp = env("SAFEGUARD_TEST_SMTP");
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(now_ms() as u64);
    let bucket = format!("alerts-{}", &rng.uuid()[..8]);
    let a = inst(&mut rng);
    let b = inst(&mut rng);
    // A: complete backup in the logs and in S3. B: partitions uploaded, the backup never completed,
    // and no sentinel in S3 (the logs alone could not tell the partitions were useless).
    let mut objs = objects(&a, true);
    objs.extend(objects(&b, false));
    s3_layout(&bucket, &objs);
    let (hook_url, hooks) = webhook_server();
    let cfg = write_config(tmp.path(), &smtp, Some(&hook_url));
    let store = tmp.path().join("store");
    let port = free_port();

    let w = watch(&cfg, &store, port);
    let mut lines = lifecycle(&a, &bucket, true);
    lines.extend(lifecycle(&b, &bucket, false));
    send(port, &lines);

    wait_until("both emails", Duration::from_secs(60), || mails(&maildir, &a.id).len() + mails(&maildir, &b.id).len() >= 2);
    let ma = mails(&maildir, &a.id);
    let mb = mails(&maildir, &b.id);
    assert_eq!(ma.len(), 1, "A: {ma:?}");
    assert_eq!(mb.len(), 1, "B: {mb:?}");
    let (sa, body_a) = (&ma[0].subject, &ma[0].text);
    assert!(sa.contains("WARNING") && sa.contains(&a.id) && sa.contains("was deleted"), "{sa}");
    assert!(body_a.contains(&format!("s3://{bucket}/backups/{}/wal/", a.id)), "{body_a}");
    assert!(body_a.contains(&format!("safeguard recover {}", a.id)), "{body_a}");
    assert!(body_a.contains("RECOVERABLE") || body_a.contains("Recoverable") || body_a.contains("recoverable"), "{body_a}");
    assert!(body_a.contains("To: dba-oncall@platform.example"), "{body_a}");
    let (sb, body_b) = (&mb[0].subject, &mb[0].text);
    assert!(sb.contains("CRITICAL") && sb.contains(&b.id) && sb.contains("NO complete base backup"), "{sb}");
    assert!(body_b.contains("platform-lead@platform.example"), "critical mail goes to the critical list: {body_b}");
    assert!(!body_b.contains("test-secret-key") && !body_a.contains("not-in-logs"));

    // The webhook got the documented body for both.
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(hooks.recv_timeout(Duration::from_secs(30)).expect("webhook call"));
    }
    for h in &got {
        assert!(h["text"].as_str().is_some_and(|t| t.starts_with("[safeguard]")), "{h}");
        let al = &h["alert"];
        for f in ["id", "rule", "severity", "instance_id", "backup_prefix", "verdict", "recover_command", "nodes"] {
            assert!(!al[f].is_null(), "webhook alert lacks {f}: {h}");
        }
    }
    let hb = got.iter().find(|h| h["alert"]["instance_id"] == b.id.as_str()).expect("B's webhook");
    assert_eq!(hb["alert"]["rule"], "deleted_without_base_backup");
    assert_eq!(hb["alert"]["severity"], "critical");
    assert_eq!(hb["alert"]["verdict"], "no_complete_base_backup");

    // Nothing more arrives, even across a restart of the watcher on the same store.
    std::thread::sleep(Duration::from_secs(3));
    let log = w.stop();
    assert!(!log.contains("not-in-logs") && !log.contains("test-secret-key"), "a secret reached the log");
    let w = watch(&cfg, &store, port);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(mails(&maildir, &a.id).len(), 1);
    assert_eq!(mails(&maildir, &b.id).len(), 1);
    assert!(hooks.try_recv().is_err(), "a webhook was sent twice");
    let (code, out, err) = run(&["alerts", "--json", "--store", store.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let alerts = v.as_array().unwrap();
    assert_eq!(alerts.len(), 2, "{out}");
    assert!(alerts.iter().all(|a| a["state"] == "sent"), "{out}");
    w.stop();
}

#[test]
fn alerts_past_retention_are_never_sent_again_by_a_replay_a_rescan_or_a_restart() {
    let maildir = PathBuf::from(env("SAFEGUARD_TEST_MAILDIR"));
    let smtp = env("SAFEGUARD_TEST_SMTP");
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(now_ms() as u64 ^ 0x7e7e);
    let bucket = format!("alerts-{}", &rng.uuid()[..8]);
    // C is deleted; D stays live and never completes a base backup (the absence rule's alert).
    let (c, d) = (inst(&mut rng), inst(&mut rng));
    let mut objs = objects(&c, true);
    objs.extend(objects(&d, false));
    s3_layout(&bucket, &objs);
    let cfg = write_config(tmp.path(), &smtp, None);
    // Alerts leave the outbox a second after delivery; the absence rules look every second.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("max_retry_interval = \"1s\"", "max_retry_interval = \"1s\"\nretention = \"1s\"\nabsence_scan_interval = \"1s\"")
        + "\n[alerts.rules]\nfirst_base_backup_within = \"1s\"\n";
    std::fs::write(&cfg, text).unwrap();
    let store = tmp.path().join("store");
    let store_s = store.to_str().unwrap().to_string();
    let port = free_port();
    let retired = || {
        let (_, out, _) = run(&["status", "--json", "--store", &store_s]);
        serde_json::from_str::<Value>(&out).ok().and_then(|v| v["alerts_retired"].as_u64()).unwrap_or(0)
    };
    let listed = || {
        let (code, out, err) = run(&["alerts", "--all", "--json", "--store", &store_s]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().len()
    };

    let w = watch(&cfg, &store, port);
    let mut lines = lifecycle(&c, &bucket, true);
    let mut live = lifecycle(&d, &bucket, false);
    live.pop();
    lines.extend(live);
    send(port, &lines);
    wait_until("both emails", Duration::from_secs(60), || !mails(&maildir, &c.id).is_empty() && !mails(&maildir, &d.id).is_empty());
    wait_until("the delivered alerts to be retired", Duration::from_secs(30), || retired() == 2);
    assert_eq!(listed(), 0, "retired alerts left the outbox");

    // The same lines again (a relay's replay), a change to D that the absence rules look at again, and a
    // restart: both ids are still known, so nothing is raised or sent again.
    let wal = |seg: u32| {
        container(now_ms(), &d, &format!(r#"        DETAIL: Archiving to "s3://{bucket}/backups/{}/wal/wal_005/{seg:024X}.lzo" complete at 1KiB/s."#, d.id))
    };
    send(port, &lines);
    send(port, &[wal(7)]);
    std::thread::sleep(Duration::from_secs(4));
    w.stop();
    let w = watch(&cfg, &store, port);
    send(port, &lines);
    send(port, &[wal(8)]);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(mails(&maildir, &c.id).len(), 1, "a retired deletion alert went out again");
    assert_eq!(mails(&maildir, &d.id).len(), 1, "a retired absence alert went out again");
    assert_eq!((retired(), listed()), (2, 0));
    w.stop();
}

#[test]
fn an_alert_waits_for_a_down_smtp_server_across_a_restart_and_is_sent_once() {
    let python = env("SAFEGUARD_TEST_PYTHON");
    let _ = env("SAFEGUARD_TEST_S3");
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(now_ms() as u64 ^ 0x5a5a);
    let bucket = format!("alerts-{}", &rng.uuid()[..8]);
    let c = inst(&mut rng);
    s3_layout(&bucket, &objects(&c, true));
    let smtp_port = free_port();
    let cfg = write_config(tmp.path(), &format!("127.0.0.1:{smtp_port}"), None);
    let store = tmp.path().join("store");
    let store_s = store.to_str().unwrap().to_string();
    let port = free_port();

    // The SMTP server is down when the instance is deleted: the alert stays pending and says why.
    let w = watch(&cfg, &store, port);
    send(port, &lifecycle(&c, &bucket, true));
    wait_until("a failed delivery attempt", Duration::from_secs(60), || {
        let (_, out, _) = run(&["alerts", "--pending", "--json", "--store", &store_s]);
        serde_json::from_str::<Value>(&out)
            .map(|v| v.as_array().is_some_and(|a| a.len() == 1 && a[0]["attempts"].as_u64() >= Some(1) && a[0]["last_error"].is_string()))
            .unwrap_or(false)
    });
    let (_, out, _) = run(&["alerts", "--pending", "--json", "--store", &store_s]);
    let pending: Value = serde_json::from_str(&out).unwrap();
    assert!(pending[0]["last_error"].as_str().unwrap().contains(&format!("127.0.0.1:{smtp_port}")), "{out}");
    w.stop();

    // Still pending after the restart, delivered once the server is back.
    let maildir = tmp.path().join("maildir");
    let smtpd = Proc(
        Command::new(&python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{smtp_port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the SMTP server", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", smtp_port)).is_ok());
    let w = watch(&cfg, &store, port);
    wait_until("the delayed email", Duration::from_secs(60), || !mails(&maildir, &c.id).is_empty());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(mails(&maildir, &c.id).len(), 1);
    let (_, out, _) = run(&["alerts", "--json", "--store", &store_s]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["state"], "sent", "{out}");
    w.stop();
    drop(smtpd);
}

#[test]
fn an_undeliverable_alert_fails_after_give_up_and_retry_requeues_it() {
    let _ = env("SAFEGUARD_TEST_S3");
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(now_ms() as u64 ^ 0xfa11);
    let bucket = format!("alerts-{}", &rng.uuid()[..8]);
    let d = inst(&mut rng);
    s3_layout(&bucket, &objects(&d, false));
    // Nothing listens on this port: every attempt fails, and the alert gives up after 2 s.
    let cfg = write_config(tmp.path(), &format!("127.0.0.1:{}", free_port()), None);
    let text = std::fs::read_to_string(&cfg).unwrap().replace("[alerts]\n", "[alerts]\ngive_up_after = \"2s\"\n");
    std::fs::write(&cfg, text).unwrap();
    let store = tmp.path().join("store");
    let store_s = store.to_str().unwrap().to_string();
    let port = free_port();
    let w = watch(&cfg, &store, port);
    send(port, &lifecycle(&d, &bucket, false));
    let failed = || -> Value {
        let (_, out, _) = run(&["alerts", "--failed", "--json", "--store", &store_s]);
        serde_json::from_str(&out).unwrap_or(Value::Null)
    };
    wait_until("the alert to be marked failed", Duration::from_secs(60), || failed().as_array().is_some_and(|a| a.len() == 1));
    let f = failed();
    assert_eq!(f[0]["rule"], "deleted_without_base_backup");
    assert!(f[0]["attempts"].as_u64().unwrap() >= 1);
    let id = f[0]["id"].as_str().unwrap().to_string();
    let log = w.stop();
    assert!(log.contains("alert delivery FAILED for good"), "{log}");

    // `alerts retry` requeues it with a fresh give-up time (through the store, no watcher running).
    let (code, out, err) = run(&["alerts", "retry", &id, "--store", &store_s]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("requeued"), "{out}");
    let (_, out, _) = run(&["alerts", "--pending", "--json", "--store", &store_s]);
    let p: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p.as_array().unwrap().len(), 1, "{out}");
    assert_eq!(p[0]["id"], id.as_str());
    assert_eq!(p[0]["attempts"], 0);
    let (code, _, err) = run(&["alerts", "retry", "no-such-alert", "--store", &store_s]);
    assert_eq!(code, 1);
    assert!(err.contains("no alert no-such-alert"), "{err}");
}
