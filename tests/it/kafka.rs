//! The Kafka source against a real Kafka-protocol broker (tansu, started by scripts/services.sh) and the
//! real `safeguard watch` binary: a keyed multi-partition stream ends in exactly the store a file ingest
//! of the same lines gives, through SIGKILLs mid-stream and through a broker outage.
//!
//! The test producer sends one record per batch (`linger.ms=0`, `batch.num.messages=1`): tansu 0.6
//! reports wrong high watermarks for multi-record batches (see shared/reference/real-services.md).
//! Records are keyed by the syslog host, like the platform's shippers, so one host's lines stay in
//! order, and carry the shipper's receive order as their timestamp, which the source merges on.

use crate::common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, create_topic, env, free_port, run};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use safeguard::gen::{GenConfig, Generator, Rng};
use safeguard::pipeline::EngineConfig;
use safeguard::report::record_json;
use safeguard::state::risk::RiskRules;
use safeguard::store::{Counters, Store};
use serde_json::Value;

const T0: i64 = 1_770_000_000_000;

fn broker() -> String {
    env("SAFEGUARD_TEST_KAFKA")
}

fn unique(name: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000;
    format!("sg-{name}-{}-{n}", std::process::id())
}

/// A generated platform stream: lines, each with its syslog host.
fn stream(seed: u64, lines: u64) -> Vec<(String, String)> {
    let cfg = GenConfig { seed, lines, concurrent_instances: 30, noise: 0.8, ..GenConfig::default() };
    let mut buf = Vec::new();
    Generator::new(cfg).write_all(&mut buf).unwrap();
    String::from_utf8(buf)
        .unwrap()
        .lines()
        .map(|l| {
            let host = safeguard::parse::envelope::parse(l).map(|e| e.host.into_owned()).unwrap_or_default();
            (host, l.to_string())
        })
        .collect()
}

fn producer(broker: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("create the test producer")
}

/// Produces lines `range` of the stream, keyed by host, timestamped in stream order; returns the
/// records sent to each partition.
fn produce(p: &BaseProducer, topic: &str, lines: &[(String, String)], range: std::ops::Range<usize>, pace: Option<Duration>) {
    for (i, (host, line)) in lines.iter().enumerate().take(range.end).skip(range.start) {
        let mut rec = BaseRecord::to(topic).key(host.as_str()).payload(line.as_str()).timestamp(T0 + i as i64);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((e, r)) => {
                    // Queue full: let deliveries complete.
                    assert!(matches!(e.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::QueueFull)), "produce failed: {e}");
                    rec = r;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        if i % 200 == 199 {
            p.flush(Duration::from_secs(60)).expect("flush to the broker");
            if let Some(d) = pace {
                std::thread::sleep(d);
            }
        }
    }
    p.flush(Duration::from_secs(60)).expect("flush to the broker");
}

/// The records and counters a file ingest of the same lines gives.
fn file_truth(dir: &Path, lines: &[(String, String)]) -> (BTreeMap<String, String>, Counters) {
    let log = dir.join("same-lines.log");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&log).unwrap());
    for (_, l) in lines {
        writeln!(f, "{l}").unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let store = Store::open(&dir.join("file-store"), 16 << 20).unwrap();
    safeguard::ingest::ingest(&store, EngineConfig::default(), &[log]).unwrap();
    (snapshot(&store), store.counters().unwrap())
}

/// Every record as `show --json` renders it, at a fixed "now".
fn snapshot(store: &Store) -> BTreeMap<String, String> {
    store
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r.instance_id.clone(), serde_json::to_string_pretty(&record_json(&r, T0, &RiskRules::default())).unwrap())
        })
        .collect()
}

fn assert_same_store(kafka_store: &Path, truth: &(BTreeMap<String, String>, Counters)) {
    let store = Store::open(kafka_store, 16 << 20).unwrap();
    let got = snapshot(&store);
    let (want, want_c) = truth;
    assert!(want.len() > 30, "the stream names {} instances", want.len());
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "instances missing from the Kafka store: {missing:?}; extra: {extra:?}");
    for (id, w) in want {
        assert_eq!(&got[id], w, "record {id} differs between Kafka and file ingest");
    }
    let c = store.counters().unwrap();
    assert_eq!(c.lines_read, want_c.lines_read, "lines read");
    assert_eq!(c.events_applied, want_c.events_applied, "events applied (an event applied twice or lost)");
    assert_eq!(c.lines_relevant, want_c.lines_relevant, "relevant lines");
    assert_eq!(c.lines_attributed, want_c.lines_attributed, "attributed lines");
    assert_eq!(c.lines_unattributed, want_c.lines_unattributed, "unattributed lines");
    assert_eq!(c.lines_rejected, want_c.lines_rejected, "rejected lines");
    assert_eq!(c.effects, want_c.effects, "effects");
    assert_eq!(c.lines_replayed_skipped, 0, "the source resumed at the store's position, so nothing was replayed into the engine");
}

/// A new topic (unique name from `name`) with `partitions` partitions.
fn new_topic(broker: &str, name: &str, partitions: u32) -> String {
    let topic = unique(name);
    create_topic(&env("SAFEGUARD_TEST_TANSU"), broker, &topic, partitions);
    topic
}

/// `safeguard watch` on a new store under `dir`, consuming `topic` in a group of its own.
fn watch_topic(dir: &Path, broker: &str, topic: &str) -> (PathBuf, Watcher) {
    let store = dir.join("kafka-store");
    let cfg = write_config(dir, broker, topic, &unique("g"));
    let w = Watcher::start(&cfg, &store, &dir.join("watch.log"));
    (store, w)
}

fn write_config(dir: &Path, broker: &str, topic: &str, group: &str) -> PathBuf {
    let p = dir.join("safeguard.toml");
    std::fs::write(
        &p,
        format!(
            r#"[store]
cache_mb = 16
[watch]
commit_interval = "200ms"
stats_interval = "2s"
[[sources]]
type = "kafka"
brokers = ["{broker}"]
topics = ["{topic}"]
group_id = "{group}"
start = "earliest"
session_timeout = "6s"
"#
        ),
    )
    .unwrap();
    p
}

/// A `safeguard watch` child logging to a file (also `leader.rs`'s replicas).
pub(crate) struct Watcher {
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Watcher {
    /// Starts the watcher and waits for its query socket: until then a `status` would open the store
    /// directly and could take the store's lock from under the starting watcher.
    pub(crate) fn start(config: &Path, store: &Path, log: &Path) -> Watcher {
        let socket = store.join(safeguard::query::SOCKET_NAME);
        // A SIGKILLed watcher leaves its socket file behind.
        let _ = std::fs::remove_file(&socket);
        let err = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new(bin())
            .args(["--config", config.to_str().unwrap(), "watch", "--store", store.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let mut w = Watcher { child, log: log.to_path_buf() };
        let start = Instant::now();
        while !socket.exists() {
            assert!(w.alive(), "the watcher exited at start-up; log:\n{}", w.log_text());
            assert!(start.elapsed() < Duration::from_secs(30), "the watcher opened no query socket; log:\n{}", w.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn sigterm(mut self) {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "watch exited with {status}; log:\n{}", self.log_text());
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines the store has durably read (through the watcher's socket while it runs).
fn lines_read(store: &Path) -> Option<u64> {
    let (code, out, _) = run(&["status", "--json", "--store", store.to_str().unwrap()]);
    if code != 0 {
        return None;
    }
    serde_json::from_str::<Value>(&out).ok()?["counters"]["lines_read"].as_u64()
}

fn wait_for_lines(w: &mut Watcher, store: &Path, n: u64, timeout: Duration) {
    let start = Instant::now();
    loop {
        let got = lines_read(store);
        if got == Some(n) {
            return;
        }
        assert!(w.alive(), "the watcher exited; log:\n{}", w.log_text());
        assert!(start.elapsed() < timeout, "timed out waiting for {n} lines (store has {got:?}); log:\n{}", w.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn keyed_multi_partition_stream_equals_file_ingest() {
    let broker = broker();
    let tmp = tempfile::tempdir().unwrap();
    let topic = new_topic(&broker, "equal", 4);
    let lines = stream(21, 30_000);
    let truth = file_truth(tmp.path(), &lines);

    let p = producer(&broker);
    let t = Instant::now();
    produce(&p, &topic, &lines, 0..lines.len(), None);
    eprintln!("produced {} records in {:.1}s", lines.len(), t.elapsed().as_secs_f64());

    let (store, mut w) = watch_topic(tmp.path(), &broker, &topic);
    wait_for_lines(&mut w, &store, lines.len() as u64, Duration::from_secs(120));
    w.sigterm();
    assert_same_store(&store, &truth);
}

/// Live, two hosts' lines produced a moment apart can reach the broker in the other order. The
/// container-create line (attributed only through the container's own startup line) arrives first here,
/// its older dependency 300 ms later on another partition: the create line waits (parked) until the
/// startup line names its instance, then is applied, so it is attributed and dates the node.
#[test]
fn a_line_reaching_the_broker_late_is_still_applied_in_time_order() {
    let broker = broker();
    let tmp = tempfile::tempdir().unwrap();
    let topic = new_topic(&broker, "late", 2);
    let (id, node) = ("5b0a7c1e-2f3d-4e5f-8a9b-0c1d2e3f4a5b", "9d8c7b6a-1e2f-4a3b-8c5d-6e7f8a9b0c1d");
    let provision = format!(
        r#"Mar  1 00:00:01 0.router-partition-1 broker.stdout.log:  {{"timestamp":"1772323201.500000000","source":"dingo-postgresql-broker","message":"dingo-postgresql-broker.provision.start","log_level":1,"data":{{"instance-id":"{id}","organization_guid":"org-1","space_guid":"space-1"}}}}"#
    );
    let startup = format!("Mar  1 00:00:02 cell-a cf-{node}:  5b0a7c-startup> looking up public host:port from etcd -> 10.0.0.1:4001/v2/keys/postgresql-patroni/10.0.0.9:cf-{node}:5432 (0)");
    let create = format!("Mar  1 00:00:03 cell-containers cf-containers-broker.stdout.log:  Creating Docker container `cf-{node}'...");
    let p = producer(&broker);
    let send = |partition: i32, ts: i64, line: &str| {
        p.send(BaseRecord::<(), str>::to(&topic).partition(partition).payload(line).timestamp(ts)).map_err(|(e, _)| e).unwrap();
        p.flush(Duration::from_secs(30)).unwrap();
    };

    let (store, mut w) = watch_topic(tmp.path(), &broker, &topic);
    send(0, T0, &provision);
    wait_for_lines(&mut w, &store, 1, Duration::from_secs(60));
    send(1, T0 + 2, &create);
    std::thread::sleep(Duration::from_millis(300));
    send(0, T0 + 1, &startup);
    wait_for_lines(&mut w, &store, 3, Duration::from_secs(60));
    w.sigterm();

    let (code, out, err) = run(&["show", id, "--json", "--store", store.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let rec: Value = serde_json::from_str(&out).unwrap();
    let nodes = rec["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{rec:#}");
    assert_eq!(nodes[0]["node_uuid"], node, "{rec:#}");
    assert_eq!(nodes[0]["added_at"], "2026-03-01T00:00:03.000Z", "the create line was applied before the startup line it depends on: {rec:#}");
}

/// Partitions skewed as far as they go: every cell's and router's line reaches the watcher first, and the
/// broker's lines (the only ones that name most instances) only after the rest was applied, some of them
/// twice. The records equal a file ingest of the same lines in their own order: state is a function of
/// the facts, and lines whose instance is unknown wait until it is.
#[test]
fn skewed_partitions_and_repeated_records_give_the_file_ingest_records() {
    let broker = broker();
    let tmp = tempfile::tempdir().unwrap();
    let topic = new_topic(&broker, "skew", 2);
    let lines = stream(44, 12_000);
    let truth = file_truth(tmp.path(), &lines);
    let p = producer(&broker);
    let send = |partition: i32, i: usize, line: &str| {
        let mut rec = BaseRecord::<(), str>::to(&topic).partition(partition).payload(line).timestamp(T0 + i as i64);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    };
    let is_broker = |l: &str| l.contains("broker.stdout.log");
    let (store, mut w) = watch_topic(tmp.path(), &broker, &topic);
    let mut first = 0u64;
    for (i, (_, l)) in lines.iter().enumerate().filter(|(_, (_, l))| !is_broker(l)) {
        send(1, i, l);
        first += 1;
    }
    p.flush(Duration::from_secs(60)).unwrap();
    wait_for_lines(&mut w, &store, first, Duration::from_secs(120));
    let mut total = first;
    for (i, (_, l)) in lines.iter().enumerate().filter(|(_, (_, l))| is_broker(l)) {
        send(0, i, l);
        total += 1;
        if i % 7 == 0 {
            // A relay's duplicate.
            send(0, i, l);
            total += 1;
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
    wait_for_lines(&mut w, &store, total, Duration::from_secs(120));
    w.sigterm();
    let got = snapshot(&Store::open(&store, 16 << 20).unwrap());
    let (want, _) = &truth;
    assert_eq!(got.len(), want.len(), "instances");
    for (id, w) in want {
        assert_eq!(&got[id], w, "record {id} differs between skewed Kafka partitions and a file ingest");
    }
}

#[test]
fn sigkill_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let broker = broker();
    let tmp = tempfile::tempdir().unwrap();
    let topic = new_topic(&broker, "crash", 3);
    let lines = stream(33, 24_000);
    let truth = file_truth(tmp.path(), &lines);
    let total = lines.len() as u64;

    // The producer keeps shipping while the watcher is killed and restarted.
    let producing = {
        let (broker, topic, lines) = (broker.clone(), topic.clone(), lines.clone());
        std::thread::spawn(move || produce(&producer(&broker), &topic, &lines, 0..lines.len(), Some(Duration::from_millis(40))))
    };
    let store = tmp.path().join("kafka-store");
    let cfg = write_config(tmp.path(), &broker, &topic, &unique("g"));
    let log = tmp.path().join("watch.log");
    let mut rng = Rng::new(7);
    let mut seen = 0;
    for kill in 0..4 {
        let mut w = Watcher::start(&cfg, &store, &log);
        // Kill only after this run has applied something, at a random moment after that.
        let start = Instant::now();
        loop {
            let n = lines_read(&store).unwrap_or(0);
            if n > seen {
                seen = n;
                break;
            }
            assert!(w.alive(), "the watcher exited; log:\n{}", w.log_text());
            assert!(start.elapsed() < Duration::from_secs(90), "run {kill} applied nothing; log:\n{}", w.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        assert!(seen < total, "the stream was consumed before kill {kill}; slow the producer down");
        w.sigkill();
        eprintln!("SIGKILL {kill} after {seen}+ lines");
    }
    producing.join().unwrap();
    let mut w = Watcher::start(&cfg, &store, &log);
    wait_for_lines(&mut w, &store, total, Duration::from_secs(120));
    w.sigterm();
    assert_same_store(&store, &truth);
}

struct Tansu {
    child: Child,
}

impl Tansu {
    fn start(port: u16, log: &Path) -> Tansu {
        let url = format!("tcp://127.0.0.1:{port}");
        let err = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new(env("SAFEGUARD_TEST_TANSU"))
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"])
            .stdout(err.try_clone().unwrap())
            .stderr(err)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Tansu { child }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn broker_outage_the_watcher_survives_and_catches_up() {
    let _ = env("SAFEGUARD_TEST_KAFKA");
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = format!("127.0.0.1:{port}");
    let tansu_log = tmp.path().join("tansu.log");
    let tansu = Tansu::start(port, &tansu_log);
    let topic = new_topic(&broker, "outage", 3);
    let lines = stream(45, 16_000);
    let truth = file_truth(tmp.path(), &lines);
    // Most lines before the outage: the memory broker comes back empty, and the topic is recreated with
    // fewer records per partition than were applied, so the restarted logs are recognised as new.
    let split = lines.len() * 3 / 4;
    produce(&producer(&broker), &topic, &lines, 0..split, None);

    let (store, mut w) = watch_topic(tmp.path(), &broker, &topic);
    wait_for_lines(&mut w, &store, split as u64, Duration::from_secs(120));

    tansu.stop();
    std::thread::sleep(Duration::from_secs(8));
    assert!(w.alive(), "the watcher died with the broker; log:\n{}", w.log_text());
    assert_eq!(lines_read(&store), Some(split as u64), "the store answers during the outage");
    assert!(w.log_text().contains("Kafka brokers unreachable"), "no clear outage warning; log:\n{}", w.log_text());

    let _tansu = Tansu::start(port, &tansu_log);
    create_topic(&env("SAFEGUARD_TEST_TANSU"), &broker, &topic, 3);
    produce(&producer(&broker), &topic, &lines, split..lines.len(), None);
    wait_for_lines(&mut w, &store, lines.len() as u64, Duration::from_secs(120));
    let log = w.log_text();
    // Shown with --nocapture: what the operator saw during the outage.
    log.lines().filter(|l| l.contains("sources::kafka")).for_each(|l| eprintln!("{l}"));
    assert!(log.contains("Kafka reachable again"), "{log}");
    assert!(log.contains("restarted below the offset already applied"), "{log}");
    w.sigterm();
    assert_same_store(&store, &truth);
}

#[test]
fn bad_client_settings_fail_at_start_up_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[[sources]]\ntype = \"kafka\"\nbrokers = [\"127.0.0.1:9\"]\ntopics = [\"t\"]\ngroup_id = \"g\"\n[sources.client]\n\"sasl.password\" = \"hunter2\"\n\"no.such.setting\" = \"1\"\n",
    )
    .unwrap();
    let store = tmp.path().join("store");
    let (code, _, err) = run(&["--config", cfg.to_str().unwrap(), "watch", "--store", store.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no.such.setting") && !err.contains("hunter2"), "{err}");
}

const PARTITIONS: u32 = 8;

fn produce_parallel(broker: &str, topic: &str, lines: &[(String, String)]) {
    let mut shards: Vec<Vec<(String, String)>> = vec![Vec::new(); 4];
    for l in lines {
        shards[(safeguard::sources::fnv1a(l.0.as_bytes()) % 4) as usize].push(l.clone());
    }
    std::thread::scope(|s| {
        for shard in &shards {
            s.spawn(move || produce(&producer(broker), topic, shard, 0..shard.len(), None));
        }
    });
}

fn raw_consume_rate(broker: &str, topic: &str, total: u64) -> f64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", unique("raw"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut n = 0u64;
    let mut start = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while n < total && Instant::now() < deadline {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            start.get_or_insert_with(Instant::now);
            n += 1;
        }
    }
    n as f64 / start.map_or(1.0, |s| s.elapsed().as_secs_f64())
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Driven by scripts/bench-kafka.sh (release build, a dedicated broker, a store of 100,000 instances):
/// file-ingest rate of a generated stream, then the same lines through Kafka into the real watcher.
#[test]
#[ignore = "benchmark: run scripts/bench-kafka.sh"]
fn bench_kafka_end_to_end() {
    let broker = broker();
    let n: u64 = std::env::var("SAFEGUARD_BENCH_LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(500_000);
    let seed_store = std::env::var("SAFEGUARD_BENCH_STORE").ok().map(PathBuf::from);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = GenConfig { seed: 42, lines: n, concurrent_instances: 200, noise: 0.95, ..GenConfig::default() };
    let mut buf = Vec::new();
    Generator::new(cfg).write_all(&mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let lines: Vec<(String, String)> =
        text.lines().map(|l| (safeguard::parse::envelope::parse(l).map(|e| e.host.into_owned()).unwrap_or_default(), l.to_string())).collect();
    let total = lines.len() as u64;
    let log = tmp.path().join("bench.log");
    std::fs::write(&log, &text).unwrap();

    // 1. File ingest of the same lines (the real binary, fresh store).
    let t = Instant::now();
    let (code, _, err) = run(&["ingest", log.to_str().unwrap(), "--store", tmp.path().join("file-store").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let file_rate = total as f64 / t.elapsed().as_secs_f64();

    // 2. Produce the backlog, one record per batch (the tansu batch trap), from 4 producers in
    //    parallel (each host's lines through one of them, so a host's order holds).
    let topic = new_topic(&broker, "bench", PARTITIONS);
    let t = Instant::now();
    produce_parallel(&broker, &topic, &lines);
    let produce_secs = t.elapsed().as_secs_f64();

    // Baseline: a bare rdkafka consumer reading the same backlog (what this broker can serve).
    let raw_rate = raw_consume_rate(&broker, &topic, total);

    // 3. The watcher drains it into a store that already holds the 100,000-instance population.
    let store = tmp.path().join("kafka-store");
    if let Some(seed) = &seed_store {
        let ok = Command::new("cp").arg("-r").arg(seed).arg(&store).status().unwrap().success();
        assert!(ok, "copy {}", seed.display());
    }
    let base = Store::open(&store, 16 << 20).map(|s| s.counters().unwrap().lines_read).unwrap();
    let instances = Store::open(&store, 16 << 20).map(|s| s.records().count()).unwrap();
    // Default commit settings; a long session timeout because tansu answers heartbeats slowly while it
    // serves a large backlog; stats every second for the steady-state rate.
    let bench_cfg = |topic: &str| {
        format!("[watch]\nstats_interval = \"1s\"\n[[sources]]\ntype = \"kafka\"\nbrokers = [\"{broker}\"]\ntopics = [\"{topic}\"]\ngroup_id = \"{}\"\nsession_timeout = \"45s\"\n", unique("g"))
    };
    let cfg = tmp.path().join("bench.toml");
    std::fs::write(&cfg, bench_cfg(&topic)).unwrap();
    let started = Instant::now();
    let mut w = Watcher::start(&cfg, &store, &tmp.path().join("watch.log"));
    let pid = w.child.id();
    let (mut first, mut max_rss) = (None, 0);
    loop {
        let got = lines_read(&store).unwrap_or(base) - base;
        max_rss = max_rss.max(rss_kib(pid, "VmRSS:"));
        if got > 0 && first.is_none() {
            first = Some((Instant::now(), got));
        }
        if got >= total {
            break;
        }
        assert!(w.alive(), "{}", w.log_text());
        assert!(started.elapsed() < Duration::from_secs(1800), "bench timed out at {got}/{total}");
        // `status` scans every record of a 100,000-instance store: poll gently.
        std::thread::sleep(Duration::from_millis(500));
    }
    let drained = started.elapsed().as_secs_f64();
    let (t_first, n_first) = first.unwrap();
    let steady = (total - n_first) as f64 / t_first.elapsed().as_secs_f64().max(1e-9);
    // The watcher's own per-second line counters while it drained (lines fed to the engine per second).
    let mut per_sec: Vec<f64> = w
        .log_text()
        .lines()
        .filter(|l| l.contains("safeguard::watch:") && l.contains("rate=\""))
        .filter_map(|l| l.split("rate=\"").nth(1)?.split(' ').next()?.parse().ok())
        .filter(|r: &f64| *r > 0.0)
        .collect();
    per_sec.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let peak_sec = per_sec.first().copied().unwrap_or(0.0);
    let median_sec = per_sec.get(per_sec.len() / 2).copied().unwrap_or(0.0);
    let (_, out, _) = run(&["status", "--json", "--store", store.to_str().unwrap()]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["counters"]["lines_read"].as_u64(), Some(base + total), "exactly every line once");
    let hwm = rss_kib(pid, "VmHWM:");
    let final_instances = {
        let (_, out, _) = run(&["status", "--json", "--store", store.to_str().unwrap()]);
        serde_json::from_str::<Value>(&out).unwrap()["instances"].as_u64().unwrap_or(0)
    };
    w.sigterm();

    // 4. Live: produce while the watcher runs; produce start to flushed store.
    let topic2 = new_topic(&broker, "bench-live", 4);
    let live_store = tmp.path().join("live-store");
    let cfg2 = tmp.path().join("live.toml");
    std::fs::write(&cfg2, bench_cfg(&topic2)).unwrap();
    let mut w = Watcher::start(&cfg2, &live_store, &tmp.path().join("live.log"));
    let t = Instant::now();
    produce_parallel(&broker, &topic2, &lines);
    let live_produce = t.elapsed().as_secs_f64();
    wait_for_lines(&mut w, &live_store, total, Duration::from_secs(1800));
    let live_total = t.elapsed().as_secs_f64();
    w.sigterm();

    println!("BENCH lines={total} instances_before={instances} instances_after={final_instances}");
    println!("BENCH file_ingest_lines_per_s={file_rate:.0}");
    println!("BENCH produce_one_record_batches_per_s={:.0} ({PARTITIONS} partitions, 4 producers)", total as f64 / produce_secs);
    println!("BENCH raw_rdkafka_consumer_lines_per_s={raw_rate:.0} (bare consumer, same backlog: the broker's ceiling)");
    println!("BENCH kafka_backlog_drain_s={drained:.2} (watcher start to last line durable, group join included)");
    println!(
        "BENCH kafka_backlog_lines_per_s={:.0} (start to flushed store) steady={steady:.0} (first durable line to last, 0.5 s polling)",
        total as f64 / drained
    );
    println!("BENCH watcher_log_lines_per_s peak={peak_sec:.0} median={median_sec:.0} (1 s intervals with lines)");
    println!(
        "BENCH kafka_live_lines_per_s={:.0} (first produce to flushed store; producer alone {:.0}/s)",
        total as f64 / live_total,
        total as f64 / live_produce
    );
    println!("BENCH watcher_rss_max_kib={max_rss} watcher_vmhwm_kib={hwm}");
}
