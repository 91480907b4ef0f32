//! The real `safeguard watch` with `[http]`: `/metrics` scraped while a stream is ingested (the counters
//! move, and equal what `status` reports from the store), the exposition checked line by line and
//! parsed with a Prometheus text parser; `/healthz` and `/readyz`; alert and Kafka lag metrics against
//! the real services; and the structured (JSON) log format.

use crate::common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, create_topic, env, fixture, free_port, run, wait_until, KillOnDrop};
use serde_json::Value;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn watch(config: &Path, store: &Path, http: u16) -> KillOnDrop {
    let child = Command::new(bin())
        .args(["--config", config.to_str().unwrap(), "--store", store.to_str().unwrap(), "watch"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let w = KillOnDrop(child);
    wait_until("the HTTP endpoint", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", http)).is_ok());
    w
}

/// GET over plain HTTP/1.1: (status, content type, body).
fn get(port: u16, path: &str) -> (u16, String, String) {
    let r = crate::common::http_get(&format!("127.0.0.1:{port}"), path);
    // A watcher that does not answer must not pass the checks on what a body does not contain.
    assert_ne!(r.status, 0, "nothing answered GET {path} on 127.0.0.1:{port}");
    (r.status, r.content_type, r.body)
}

/// Checks every line of a Prometheus text exposition (0.0.4): HELP/TYPE comments, and samples
/// `name{label="value",...} value` with valid names, quoted label values and a float value; every
/// sample's family has a TYPE (a histogram's `_bucket`, `_sum` and `_count` samples, a summary's
/// `_sum` and `_count`, belong to the family named without the suffix).
fn check_exposition(body: &str) {
    let name_ok =
        |n: &str| !n.is_empty() && n.chars().enumerate().all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()));
    let mut typed = std::collections::HashMap::new();
    for line in body.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut p = rest.splitn(3, ' ');
            let (kind, name, text) = (p.next().unwrap(), p.next().unwrap_or(""), p.next().unwrap_or(""));
            assert!(matches!(kind, "HELP" | "TYPE"), "unknown comment: {line}");
            assert!(name_ok(name), "bad metric name in: {line}");
            if kind == "TYPE" {
                assert!(matches!(text, "counter" | "gauge" | "histogram" | "summary" | "untyped"), "bad type: {line}");
                typed.insert(name.to_string(), text.to_string());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value.parse::<f64>().is_ok() || matches!(value, "NaN" | "+Inf" | "-Inf"), "bad value: {line}");
        let name = match series.split_once('{') {
            Some((n, labels)) => {
                let labels = labels.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                for pair in split_labels(labels) {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label {pair:?}: {line}"));
                    assert!(name_ok(k) && v.starts_with('"') && v.ends_with('"') && v.len() >= 2, "bad label {pair:?}: {line}");
                }
                n
            }
            None => series,
        };
        assert!(name_ok(name), "bad metric name: {line}");
        let family = |suffix: &str, kinds: &[&str]| name.strip_suffix(suffix).and_then(|f| typed.get(f)).is_some_and(|k| kinds.contains(&k.as_str()));
        assert!(
            typed.contains_key(name)
                || family("_bucket", &["histogram"])
                || family("_sum", &["histogram", "summary"])
                || family("_count", &["histogram", "summary"]),
            "sample without a TYPE line: {line}"
        );
    }
}

fn split_labels(s: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut esc) = (Vec::new(), 0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if esc => esc = false,
            '\\' => esc = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    fn get(port: u16) -> Scrape {
        let (status, ctype, body) = get(port, "/metrics");
        assert_eq!(status, 200, "{body}");
        assert!(ctype.starts_with("text/plain") && ctype.contains("version=0.0.4"), "content type {ctype}");
        check_exposition(&body);
        Scrape(prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("the exposition parses"))
    }

    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.samples.iter().find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
    }

    fn counter(&self, metric: &str) -> f64 {
        let s = self.0.samples.iter().find(|s| s.metric == metric).unwrap_or_else(|| panic!("no {metric}"));
        match s.value {
            prometheus_parse::Value::Counter(v) => v,
            ref other => panic!("{metric} is not a counter: {other:?}"),
        }
    }
}

fn status_counters(store: &Path) -> Value {
    let (code, out, err) = run(&["status", "--json", "--store", store.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Value>(&out).unwrap()["counters"].clone()
}

#[test]
fn metrics_move_while_a_stream_is_ingested_and_health_endpoints_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let (syslog, http) = (free_port(), free_port());
    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[watch]
commit_interval = "200ms"

[[sources]]
type = "syslog"
tcp = "127.0.0.1:{syslog}"

[http]
listen = "127.0.0.1:{http}"

# Only here to prove its secret never reaches an endpoint.
[s3]
endpoint = "http://127.0.0.1:9"
access_key_id = "AKIAMETRICSTEST"
secret_access_key = "metrics-secret-never-shown"
"#
        ),
    )
    .unwrap();
    let _w = watch(&cfg, &store, http);

    // Health first: alive, and ready once the listener runs and the engine has committed.
    let (code, ctype, body) = get(http, "/healthz");
    assert_eq!(code, 200, "{body}");
    assert_eq!(ctype, "application/json");
    let mut ready = Value::Null;
    wait_until("/readyz", Duration::from_secs(10), || {
        let (code, _, body) = get(http, "/readyz");
        ready = serde_json::from_str(&body).unwrap();
        code == 200
    });
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["store"], "open");
    assert_eq!(ready["sources"][0]["source"], format!("syslog tcp 127.0.0.1:{syslog}"));
    assert_eq!(ready["engine"]["state"], "running");

    let first = Scrape::get(http);
    assert_eq!(first.counter("safeguard_lines_read_total"), 0.0);
    assert_eq!(first.value("safeguard_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));

    let mut stream = Vec::new();
    safeguard::gen::Generator::new(safeguard::gen::GenConfig { seed: 7, lines: 30_000, noise: 0.9, ..Default::default() }).write_all(&mut stream).unwrap();
    let lines: Vec<&[u8]> = stream.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    let mut tcp = TcpStream::connect(("127.0.0.1", syslog)).unwrap();
    let mut sent = 0usize;
    let mut seen = Vec::new();
    for batch in lines.chunks(lines.len() / 3 + 1) {
        for l in batch {
            tcp.write_all(l).unwrap();
            tcp.write_all(b"\n").unwrap();
        }
        tcp.flush().unwrap();
        sent += batch.len();
        let mut read = 0.0;
        wait_until("the batch in /metrics", Duration::from_secs(30), || {
            read = Scrape::get(http).counter("safeguard_lines_read_total");
            read >= sent as f64
        });
        assert_eq!(read, sent as f64, "lines_read counts each line once");
        seen.push(Scrape::get(http));
    }
    drop(tcp);
    assert_eq!(seen.len(), 3);
    for pair in seen.windows(2) {
        for m in ["safeguard_lines_read_total", "safeguard_lines_relevant_total", "safeguard_events_applied_total"] {
            assert!(pair[1].counter(m) > pair[0].counter(m), "{m} did not move between scrapes");
        }
    }
    let last = seen.last().unwrap();
    // The same numbers `status` reads from the store: nothing is counted twice.
    let c = status_counters(&store);
    for (metric, field) in [
        ("safeguard_lines_read_total", "lines_read"),
        ("safeguard_lines_relevant_total", "lines_relevant"),
        ("safeguard_lines_attributed_total", "lines_attributed"),
        ("safeguard_lines_rejected_total", "lines_rejected"),
        ("safeguard_events_applied_total", "events_applied"),
    ] {
        let now = Scrape::get(http).counter(metric);
        assert_eq!(now, c[field].as_f64().unwrap(), "{metric} vs status {field}");
    }
    // By source: everything here came through the syslog listener.
    let by_source = Scrape::get(http);
    assert_eq!(by_source.value("safeguard_source_lines_read_total", &[("source", "syslog")]), Some(c["lines_read"].as_f64().unwrap()), "per-source lines read");
    assert_eq!(by_source.value("safeguard_source_lines_relevant_total", &[("source", "syslog")]), Some(c["lines_relevant"].as_f64().unwrap()));
    let live = last.value("safeguard_instances", &[("status", "live")]).unwrap();
    let deleted = last.value("safeguard_instances", &[("status", "deleted")]).unwrap();
    assert!(live + deleted > 0.0, "instances gauges: live {live} deleted {deleted}");
    assert!(last.value("safeguard_store_size_bytes", &[]).unwrap() > 0.0);
    // The store's filesystem, its failed writes (none, each op from zero) and its commits, each timed.
    let (free, size) = (last.value("safeguard_store_fs_free_bytes", &[]).unwrap(), last.value("safeguard_store_fs_size_bytes", &[]).unwrap());
    assert!(free > 0.0 && free <= size, "store filesystem: {free} free of {size}");
    for op in ["snapshot", "commit", "flush", "alert_update"] {
        assert_eq!(last.value("safeguard_store_errors_total", &[("op", op)]), Some(0.0), "store errors, op {op}");
    }
    let (_, _, body) = get(http, "/metrics");
    let sample = |prefix: &str| body.lines().find_map(|l| l.strip_prefix(prefix)).and_then(|v| v.trim().parse::<f64>().ok());
    let commits = sample("safeguard_engine_commit_duration_seconds_count ").expect("the commit duration histogram");
    assert!(commits >= 1.0, "{commits} commits timed");
    assert_eq!(sample("safeguard_engine_commit_duration_seconds_bucket{le=\"+Inf\"} "), Some(commits));
    assert!(sample("safeguard_engine_commit_duration_seconds_sum ").is_some_and(|s| s > 0.0 && s < 60.0 * commits));
    let at_risk = last.value("safeguard_instances_at_risk", &[]).unwrap();
    assert!(at_risk <= live);
    for reason in ["no_base_backup", "stale_base_backup", "wal_push_failing", "wal_silent"] {
        assert!(last.value("safeguard_instances_at_risk_by_reason", &[("reason", reason)]).is_some(), "{reason}");
    }
    for outcome in ["running", "failed", "succeeded", "abandoned"] {
        assert_eq!(last.value("safeguard_recoveries", &[("outcome", outcome)]), Some(0.0), "{outcome}");
    }
    assert_eq!(last.value("safeguard_alerts", &[("rule", "instance_deleted"), ("state", "pending")]), Some(0.0));
    let commit = last.value("safeguard_engine_last_commit_timestamp_seconds", &[]).unwrap();
    assert!((now_ms() as f64 / 1000.0 - commit).abs() < 60.0, "last commit {commit}");

    for path in ["/metrics", "/healthz", "/readyz"] {
        let (_, _, body) = get(http, path);
        assert!(!body.contains("metrics-secret-never-shown") && !body.contains("AKIAMETRICSTEST"), "{path} leaks a secret");
    }
    let (code, _, _) = get(http, "/nope");
    assert_eq!(code, 404);
}

fn lager(t: i64, name: &str, data: &str) -> String {
    format!(
        r#"<134>1 {} 0.router broker.stdout.log - - - {{"timestamp":"{}.{:03}","source":"dingo-postgresql-broker","message":"dingo-postgresql-broker.cluster.{name}","log_level":1,"data":{{{data}}}}}"#,
        safeguard::timeutil::rfc3339(t),
        t / 1000,
        t % 1000
    )
}

fn container(t: i64, id: &str, node: &str, msg: &str) -> String {
    format!("<134>1 {} cell-7 cf-{node} - - - {}-backup> {msg}", safeguard::timeutil::rfc3339(t), &id[..6])
}

#[test]
fn alerts_pending_and_the_last_delivery_error_time_are_exported() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let (syslog, http, closed) = (free_port(), free_port(), free_port());
    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[watch]
commit_interval = "200ms"

[[sources]]
type = "syslog"
tcp = "127.0.0.1:{syslog}"

[http]
listen = "127.0.0.1:{http}"

[alerts]
absence_scan_interval = "1s"
max_retry_interval = "1s"

[alerts.rules]
first_base_backup_within = "1s"

[alerts.webhook]
url = "http://127.0.0.1:{closed}/hooks/never-shown"
timeout = "2s"
"#
        ),
    )
    .unwrap();
    let _w = watch(&cfg, &store, http);
    let mut rng = safeguard::gen::Rng::new(now_ms() as u64);
    let (id, node) = (rng.uuid(), rng.uuid());
    // A live instance archiving WAL, never a base backup, first seen 30 s ago.
    let t = now_ms() - 30_000;
    let pre = format!("s3://metrics-bucket/backups/{id}/wal");
    let lines = [
        lager(t, "provision.start", &format!(r#""instance-id":"{id}""#)),
        lager(t + 1, "add-node.perform", &format!(r#""instance-id":"{id}","node-uuid":"{node}""#)),
        container(t + 2, &id, &node, &format!(r#"        DETAIL: Archiving to "{pre}/wal_005/000000010000000000000001.lzo" complete at 1KiB/s."#)),
    ];
    let before = now_ms() as f64 / 1000.0 - 1.0;
    // The endpoint is up before the sources (so /readyz can say they are starting).
    wait_until("the syslog listener", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", syslog)).is_ok());
    let mut tcp = TcpStream::connect(("127.0.0.1", syslog)).unwrap();
    for l in &lines {
        writeln!(tcp, "{l}").unwrap();
    }
    drop(tcp);
    let mut s = Scrape::get(http);
    wait_until("a pending alert with a delivery error", Duration::from_secs(30), || {
        s = Scrape::get(http);
        s.value("safeguard_alerts", &[("rule", "no_recent_base_backup"), ("state", "pending")]).unwrap_or(0.0) >= 1.0
            && s.value("safeguard_alert_last_delivery_error_timestamp_seconds", &[]).unwrap_or(0.0) > 0.0
    });
    let at = s.value("safeguard_alert_last_delivery_error_timestamp_seconds", &[]).unwrap();
    let after = now_ms() as f64 / 1000.0 + 1.0;
    assert!(at >= before && at <= after, "last delivery error at {at}, expected between {before} and {after}");
    assert_eq!(s.value("safeguard_alerts", &[("rule", "no_recent_base_backup"), ("state", "sent")]), Some(0.0));
    assert_eq!(s.value("safeguard_instances_at_risk_by_reason", &[("reason", "no_base_backup")]), Some(1.0));
    let (_, _, body) = get(http, "/metrics");
    assert!(!body.contains("never-shown"));
}

#[test]
fn kafka_lag_per_partition_drains_to_zero_and_an_unreachable_broker_is_not_ready() {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let broker = env("SAFEGUARD_TEST_KAFKA");
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000;
    let topic = format!("metrics-lag-{}-{n}", std::process::id());
    create_topic(&env("SAFEGUARD_TEST_TANSU"), &env("SAFEGUARD_TEST_KAFKA"), &topic, 2);
    // One record per batch: tansu 0.6 reports wrong high watermarks for multi-record batches.
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    let seed = std::fs::read_to_string(fixture("scenarios/seed.log")).unwrap();
    let lines: Vec<&str> = seed.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let key = if i % 2 == 0 { "host-a" } else { "host-b" };
        p.send(BaseRecord::to(&topic).key(key).payload(*l).timestamp(1_770_000_000_000 + i as i64)).unwrap();
        p.flush(Duration::from_secs(30)).unwrap();
    }

    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let (http, closed) = (free_port(), free_port());
    let cfg = tmp.path().join("c.toml");
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

[[sources]]
type = "kafka"
brokers = ["127.0.0.1:{closed}"]
topics = ["unreachable-topic"]
group_id = "unreachable-group"

[http]
listen = "127.0.0.1:{http}"
"#
        ),
    )
    .unwrap();
    let _w = watch(&cfg, &store, http);
    let mut s = Scrape::get(http);
    wait_until("every line applied and the lag at 0", Duration::from_secs(60), || {
        s = Scrape::get(http);
        s.counter("safeguard_lines_read_total") == lines.len() as f64
            && (0..2).all(|p| s.value("safeguard_kafka_consumer_lag", &[("topic", &topic), ("partition", &p.to_string())]) == Some(0.0))
    });
    assert_eq!(s.value("safeguard_kafka_brokers_up", &[("source", &topic)]), Some(1.0));
    assert_eq!(s.value("safeguard_kafka_brokers_up", &[("source", "unreachable-topic")]), Some(0.0));

    // Alive, but not ready: one Kafka source's brokers do not answer.
    let (code, _, body) = get(http, "/healthz");
    assert_eq!(code, 200, "{body}");
    let (code, _, body) = get(http, "/readyz");
    assert_eq!(code, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let reasons = v["reasons"].to_string();
    assert!(reasons.contains("kafka unreachable-topic") && !reasons.contains(&format!("kafka {topic}")), "{v:#}");
    let by: HashMap<String, bool> =
        v["sources"].as_array().unwrap().iter().map(|s| (s["source"].as_str().unwrap().to_string(), s["connected"].as_bool().unwrap())).collect();
    assert_eq!(by.get(&format!("kafka {topic}")), Some(&true), "{v:#}");
    assert_eq!(by.get("kafka unreachable-topic"), Some(&false), "{v:#}");
}

#[test]
fn log_format_json_writes_one_json_object_per_line_and_text_is_the_default() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = std::fs::read(fixture("scenarios/seed.log")).unwrap();
    let run_watch = |format: Option<&str>, store: &str| -> String {
        let mut args = vec![];
        if let Some(f) = format {
            args.extend(["--log-format", f]);
        }
        args.extend(["watch", "--stdin", "--store", store]);
        let mut child =
            Command::new(bin()).args(&args).env("RUST_LOG", "info").stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(&seed).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stderr).unwrap()
    };
    let json = run_watch(Some("json"), tmp.path().join("a").to_str().unwrap());
    let mut events = Vec::new();
    for line in json.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string() && v["target"].is_string() && v["fields"]["message"].is_string(), "{line}");
        events.push(v);
    }
    assert!(events.iter().any(|v| v["fields"]["message"] == "safeguard watch starting"), "{json}");
    let deleted = events.iter().find(|v| v["fields"]["message"] == "instance DELETED").unwrap_or_else(|| panic!("{json}"));
    assert_eq!(deleted["level"], "WARN");
    assert_eq!(deleted["fields"]["instance"], "6e101b27-ee1b-4f4d-a032-4401a3709ec3");

    let text = run_watch(None, tmp.path().join("b").to_str().unwrap());
    assert!(!text.is_empty() && text.lines().all(|l| serde_json::from_str::<Value>(l).is_err()), "{text}");
    assert!(text.contains(" INFO ") && text.contains("safeguard watch starting"), "{text}");
}
