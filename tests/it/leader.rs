//! `[leader]` (issue 17 part 2) against the real broker (tansu) and SMTP server (aiosmtpd): two
//! watchers, each with its own store and its own group on the syslog topic, elect one leader through a
//! coordination group; only the leader mails, and the standby marks what was mailed through the
//! deliveries topic. Kill one leader at a time: tansu 0.6.0 can leave a group assigned to dead members
//! when two die seconds apart (see the shared reference).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{create_topic, env, lager, mails, run, wait_until};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use safeguard::gen::Rng;
use safeguard::timeutil::now_ms;
use serde_json::Value;

fn unique(name: &str) -> String {
    // Tests run in parallel in one process: the counter keeps two started in the same millisecond apart.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!("{name}-{}-{}-{}", std::process::id(), now_ms(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// A replica: the Kafka tests' watcher, with where its store and config are.
struct Watcher {
    w: crate::kafka::Watcher,
    store: PathBuf,
    config: PathBuf,
}

impl Watcher {
    fn start(config: &Path, store: &Path, log: &Path) -> Watcher {
        Watcher { w: crate::kafka::Watcher::start(config, store, log), store: store.to_path_buf(), config: config.to_path_buf() }
    }

    /// GET on this watcher's `[http]` endpoint: (status, body).
    fn get(&self, path: &str) -> (u16, String) {
        let cfg = std::fs::read_to_string(&self.config).unwrap();
        let addr = cfg.lines().find_map(|l| l.strip_prefix("listen = ")).unwrap().trim_matches('"').to_string();
        let r = crate::common::http_get(&addr, path);
        (r.status, r.body)
    }

    fn log_text(&self) -> String {
        self.w.log_text()
    }

    fn leads(&self) -> bool {
        let l = self.log_text();
        l.rfind("now the LEADER").is_some_and(|i| l.rfind("leadership lost").is_none_or(|j| j < i))
    }

    /// The alerts in this watcher's outbox (through its socket).
    fn alerts(&self) -> Vec<Value> {
        let (_, out, _) = run(&["alerts", "--json", "--store", self.store.to_str().unwrap()]);
        serde_json::from_str::<Value>(&out).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
    }

    /// `status --json`'s `leadership` (through the socket).
    fn role(&self) -> Value {
        let (_, out, _) = run(&["status", "--json", "--store", self.store.to_str().unwrap()]);
        serde_json::from_str::<Value>(&out).map(|v| v["leadership"].clone()).unwrap_or(Value::Null)
    }

    fn sent(&self, instance: &str) -> bool {
        self.alerts().iter().any(|a| a["id"].as_str().is_some_and(|id| id.starts_with(instance)) && a["state"] == "sent")
    }
}

#[allow(clippy::too_many_arguments)]
fn config(dir: &Path, broker: &str, topic: &str, member: &str, leader_group: &str, coordination: &str, deliveries: &str, extra: &Extra) -> PathBuf {
    let smtp = extra.smtp.clone().unwrap_or_else(|| env("SAFEGUARD_TEST_SMTP"));
    let (host, port) = smtp.split_once(':').map(|(h, p)| (h.to_string(), p.to_string())).unwrap();
    let (alerts, extra) = (&extra.alerts, &extra.tail);
    let p = dir.join(format!("{member}.toml"));
    let http = common::free_port();
    std::fs::write(
        &p,
        format!(
            r#"[store]
cache_mb = 16
[watch]
deletion_grace = "1s"
commit_interval = "200ms"
stats_interval = "2s"
[[sources]]
type = "kafka"
brokers = ["{broker}"]
topics = ["{topic}"]
group_id = "{}"
session_timeout = "6s"
[http]
listen = "127.0.0.1:{http}"
[leader]
topic = "{coordination}"
group_id = "{leader_group}"
member = "{member}"
deliveries_topic = "{deliveries}"
session_timeout = "6s"
lease = "3s"
[alerts]
max_retry_interval = "1s"
{alerts}
[alerts.email]
host = "{host}"
port = {port}
security = "none"
from = "safeguard@platform.example"
to = ["dba-oncall@platform.example"]
timeout = "3s"
{extra}
"#,
            unique(&format!("syslog-{member}"))
        ),
    )
    .unwrap();
    p
}

/// Two replicas (A and B) sharing one `[leader]` group, each with its own store and syslog consumer group,
/// on fresh topics.
struct Replicas {
    _tmp: tempfile::TempDir,
    broker: String,
    topic: String,
    maildir: PathBuf,
    a: Watcher,
    b: Watcher,
}

/// What a test changes in the replicas' config.
#[derive(Default)]
struct Extra {
    /// host:port of the SMTP server (default: the test's aiosmtpd).
    smtp: Option<String>,
    /// Lines in `[alerts]`.
    alerts: String,
    /// Lines after `[alerts.email]`.
    tail: String,
}

impl Replicas {
    fn start() -> Replicas {
        Replicas::start_with(1, &Extra::default())
    }

    /// `partitions` for the syslog topic.
    fn start_with(partitions: i32, extra: &Extra) -> Replicas {
        let broker = env("SAFEGUARD_TEST_KAFKA");
        let tansu = env("SAFEGUARD_TEST_TANSU");
        let maildir = PathBuf::from(env("SAFEGUARD_TEST_MAILDIR"));
        let (topic, coordination, deliveries) = (unique("syslog"), unique("leader"), unique("deliveries"));
        create_topic(&tansu, &broker, &topic, partitions as u32);
        for t in [&coordination, &deliveries] {
            create_topic(&tansu, &broker, t, 1);
        }
        let group = unique("lead");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let a = Watcher::start(&config(dir, &broker, &topic, "a", &group, &coordination, &deliveries, extra), &dir.join("a"), &dir.join("a.log"));
        let b = Watcher::start(&config(dir, &broker, &topic, "b", &group, &coordination, &deliveries, extra), &dir.join("b"), &dir.join("b.log"));
        Replicas { _tmp: tmp, broker, topic, maildir, a, b }
    }
}

/// A provisioned instance whose only node is removed: a deletion alert once the grace has passed.
fn deleted_instance(rng: &mut Rng) -> (String, Vec<String>) {
    let (id, node) = (rng.uuid(), rng.uuid());
    let t = now_ms() - 30_000;
    let lines = vec![
        lager(t, "provision.start", &format!(r#""instance-id":"{id}""#)),
        lager(t + 1, "add-node.perform", &format!(r#""instance-id":"{id}","node-uuid":"{node}""#)),
        lager(t + 6, "remove-node.perform", &format!(r#""instance-id":"{id}","node-uuid":"{node}","backend":"10.0.0.1""#)),
    ];
    (id, lines)
}

/// Lines spread round-robin over `partitions`, so each replica reads one instance's lines in its own
/// interleaving of the partitions.
fn produce_spread(broker: &str, topic: &str, partitions: i32, lines: &[String]) {
    let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", broker).set("linger.ms", "5").create().unwrap();
    for (i, l) in lines.iter().enumerate() {
        let mut r = BaseRecord::to(topic).key("router").payload(l.as_str()).partition(i as i32 % partitions);
        loop {
            match p.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    p.poll(Duration::from_millis(50));
                    r = back;
                }
            }
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

fn produce(broker: &str, topic: &str, lines: &[String]) {
    let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", broker).set("linger.ms", "0").set("batch.num.messages", "1").create().unwrap();
    for l in lines {
        p.send(BaseRecord::to(topic).key("router").payload(l.as_str())).unwrap();
        p.flush(Duration::from_secs(30)).unwrap();
    }
}

#[test]
fn leader_config_is_validated_with_the_key_named() {
    use safeguard::app::config::Config;
    let base = "[[sources]]\ntype = \"kafka\"\nbrokers = \"k:1\"\ntopics = [\"t\"]\ngroup_id = \"g\"\n";
    let ok = Config::parse(&format!("{base}[leader]\ngroup_id = \"lead\"\n")).unwrap();
    let l = ok.leader().unwrap();
    assert_eq!((l.brokers, l.lease, l.topic.as_str()), (vec!["k:1".to_string()], Duration::from_secs(5), "safeguard-leader"));
    for (text, key) in [
        (format!("{base}[leader]\ngroup_id = \"lead\"\nlease = \"9s\"\n"), "`lease`"),
        (format!("{base}[leader]\ngroup_id = \"\"\n"), "`group_id`"),
        (format!("{base}[leader]\ngroup_id = \"l\"\ndeliveries_topic = \"safeguard-leader\"\n"), "`deliveries_topic`"),
        ("[leader]\ngroup_id = \"l\"\n".to_string(), "`brokers`"),
        (format!("{base}[leader]\ngroup_id = \"l\"\nleese = \"1s\"\n"), "leese"),
    ] {
        let e = Config::parse(&text).unwrap_err();
        assert!(e.contains(key), "{key}: {e}");
    }
}

/// One leader among two; one mail per deletion; the standby's outbox marks it sent from the deliveries
/// topic; SIGKILL the leader and the standby takes over within the session timeout and mails only what
/// was not delivered.
#[test]
fn one_leader_mails_once_and_a_standby_takes_over_after_sigkill() {
    let Replicas { _tmp, broker, topic, maildir, a, b } = Replicas::start();
    wait_until("one of the two to lead", Duration::from_secs(60), || a.leads() || b.leads());
    // B's joining rebalances the group: wait until it settles on one leader.
    std::thread::sleep(Duration::from_secs(2));
    let settled = wait_until("exactly one leader", Duration::from_secs(60), || a.leads() != b.leads());
    eprintln!("election settled after {:.1}s more", settled.as_secs_f64());
    std::thread::sleep(Duration::from_secs(2));
    assert!(a.leads() != b.leads(), "exactly one leader:\nA:\n{}\nB:\n{}", a.log_text(), b.log_text());

    let mut rng = Rng::new(now_ms() as u64 ^ 0x1ead);
    let (x, lines) = deleted_instance(&mut rng);
    produce(&broker, &topic, &lines);
    wait_until("the deletion mail", Duration::from_secs(60), || !mails(&maildir, &x).is_empty());
    wait_until("both outboxes to mark it sent", Duration::from_secs(30), || a.sent(&x) && b.sent(&x));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(mails(&maildir, &x).len(), 1, "one mail for {x}");

    let (lr, sr) = if a.leads() { (a.role(), b.role()) } else { (b.role(), a.role()) };
    // The standby's joining revokes partition 0 for a moment (eager rebalancing): 1 or 2 takeovers.
    assert!(lr["role"] == "leader" && lr["takeovers"].as_u64().is_some_and(|n| (1..=2).contains(&n)), "{lr}");
    assert_eq!((sr["role"].as_str(), sr["leader"].clone()), (Some("standby"), lr["member"].clone()), "{sr}");
    // Both read the deliveries topic to its end (the lag is measured every 5 s).
    for w in [&a, &b] {
        wait_until("the deliveries topic's lag measured at 0", Duration::from_secs(30), || w.role()["deliveries_lag"] == 0);
    }
    // /metrics says the same; a standby is ready (it watches, it only does not send).
    for w in [&a, &b] {
        let r = w.role();
        let want = if r["role"] == "leader" { 1 } else { 0 };
        let (code, body) = w.get("/metrics");
        assert_eq!(code, 200, "{body}");
        let line = format!("safeguard_leader{{member=\"{}\"}} {want}", r["member"].as_str().unwrap());
        assert!(body.lines().any(|l| l == line), "no `{line}` in:\n{body}");
        let lag = format!("safeguard_leader_deliveries_lag{{member=\"{}\"}} 0", r["member"].as_str().unwrap());
        assert!(body.lines().any(|l| l == lag), "no `{lag}` in:\n{body}");
        assert_eq!(w.get("/readyz").0, 200);
    }

    // SIGKILL the leader: the standby takes over once the session times out, and sends only what is new.
    let (mut leader, standby) = if a.leads() { (a, b) } else { (b, a) };
    let killed = Instant::now();
    leader.w.child.kill().unwrap();
    leader.w.child.wait().unwrap();
    let (y, lines) = deleted_instance(&mut rng);
    produce(&broker, &topic, &lines);
    while !standby.leads() {
        assert!(killed.elapsed() < Duration::from_secs(60), "no takeover within 60s of SIGKILL; standby's log:\n{}", standby.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let takeover = killed.elapsed();
    eprintln!("takeover after SIGKILL: {:.1}s (coordination session_timeout 6s)", takeover.as_secs_f64());
    assert!(takeover < Duration::from_secs(30), "takeover took {takeover:?}");
    wait_until("the new leader's mail", Duration::from_secs(60), || !mails(&maildir, &y).is_empty());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(mails(&maildir, &y).len(), 1, "one mail for {y}");
    assert_eq!(mails(&maildir, &x).len(), 1, "{x} was delivered before the kill and not sent again");
    assert!(standby.sent(&y));
    let r = standby.role();
    assert_eq!((r["role"].as_str(), r["takeovers"].as_u64()), (Some("leader"), Some(1)), "{r}");
    for l in standby.log_text().lines().filter(|l| l.contains("leader")) {
        eprintln!("standby: {l}");
    }
}

/// Issue 17 proof (b): a leader SIGSTOPped past its session is replaced; once resumed it sends nothing
/// the new leader sent (its lease ran out while it was stopped, and a lease unrenewed for longer than a
/// session is never renewed: it joins again).
#[test]
fn a_leader_stopped_past_its_session_sends_nothing_twice_after_it_resumes() {
    let Replicas { _tmp, broker, topic, maildir, a, b } = Replicas::start();
    std::thread::sleep(Duration::from_secs(2));
    wait_until("exactly one leader", Duration::from_secs(60), || a.leads() != b.leads());
    std::thread::sleep(Duration::from_secs(2));
    let (old, new) = if a.leads() { (a, b) } else { (b, a) };
    let pid = old.w.child.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let stopped = Instant::now();
    while !new.leads() {
        assert!(stopped.elapsed() < Duration::from_secs(60), "no takeover within 60s of SIGSTOP; log:\n{}", new.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("takeover after SIGSTOP: {:.1}s", stopped.elapsed().as_secs_f64());
    let mut rng = Rng::new(now_ms() as u64 ^ 0x5709);
    let (y, lines) = deleted_instance(&mut rng);
    produce(&broker, &topic, &lines);
    wait_until("the new leader's mail", Duration::from_secs(60), || !mails(&maildir, &y).is_empty());
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    // The resumed watcher applies y from its own syslog group, and must not mail it again.
    let (z, lines) = deleted_instance(&mut rng);
    produce(&broker, &topic, &lines);
    wait_until("a mail for the deletion after the resume", Duration::from_secs(60), || !mails(&maildir, &z).is_empty());
    wait_until("the resumed watcher to mark both sent", Duration::from_secs(30), || old.sent(&y) && old.sent(&z));
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(mails(&maildir, &y).len(), 1, "one mail for {y}; resumed watcher's log:\n{}", old.log_text());
    assert_eq!(mails(&maildir, &z).len(), 1, "one mail for {z}");
    for l in old.log_text().lines().filter(|l| l.contains("leader") || l.contains("lease")) {
        eprintln!("resumed: {l}");
    }
}

/// Issue 17 proof (a): 50 deletions arriving over ~10s, the leader SIGKILLed when half are mailed:
/// every deletion is mailed at least once, and duplicates are bounded by what was in flight at the kill
/// (the sender sends one alert at a time and records it before the next: at most one).
#[test]
fn a_burst_with_the_leader_killed_midway_mails_every_deletion_with_at_most_one_duplicate() {
    let Replicas { _tmp, broker, topic, maildir, a, b } = Replicas::start();
    std::thread::sleep(Duration::from_secs(2));
    wait_until("exactly one leader", Duration::from_secs(60), || a.leads() != b.leads());
    std::thread::sleep(Duration::from_secs(2));
    let (mut leader, standby) = if a.leads() { (a, b) } else { (b, a) };

    let mut rng = Rng::new(now_ms() as u64 ^ 0xb0257);
    let burst: Vec<(String, Vec<String>)> = (0..50).map(|_| deleted_instance(&mut rng)).collect();
    let ids: Vec<String> = burst.iter().map(|(id, _)| id.clone()).collect();
    let producer = {
        let (broker, topic) = (broker.clone(), topic.clone());
        std::thread::spawn(move || {
            for (_, lines) in &burst {
                produce(&broker, &topic, lines);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let mailed = |ids: &[String]| ids.iter().filter(|id| !mails(&maildir, id).is_empty()).count();
    wait_until("half the burst mailed", Duration::from_secs(60), || mailed(&ids) >= 25);
    let killed = Instant::now();
    leader.w.child.kill().unwrap();
    leader.w.child.wait().unwrap();
    producer.join().unwrap();
    while !standby.leads() {
        assert!(killed.elapsed() < Duration::from_secs(60), "no takeover within 60s; log:\n{}", standby.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let takeover = killed.elapsed();
    wait_until("every deletion mailed", Duration::from_secs(120), || mailed(&ids) == ids.len());
    std::thread::sleep(Duration::from_secs(3));
    let counts: Vec<usize> = ids.iter().map(|id| mails(&maildir, id).len()).collect();
    let duplicates: usize = counts.iter().map(|n| n - 1).sum();
    eprintln!("burst of 50: takeover {:.1}s, duplicates {duplicates}", takeover.as_secs_f64());
    assert!(duplicates <= 1, "{duplicates} duplicates: {counts:?}");
}

/// `instances --json` and every instance's `show --json`, through the watcher's socket.
fn records(w: &Watcher) -> (Value, Vec<Value>) {
    let store = w.store.to_str().unwrap();
    let list = || -> Option<Value> {
        let (code, out, _) = run(&["instances", "--json", "--store", store]);
        (code == 0).then(|| serde_json::from_str(&out).ok()).flatten()
    };
    let Some(list) = list() else { return (Value::Null, Vec::new()) };
    let shows = list
        .as_array()
        .map(|l| {
            l.iter()
                .map(|r| {
                    let (_, out, _) = run(&["show", r["instance_id"].as_str().unwrap_or(""), "--json", "--store", store]);
                    serde_json::from_str(&out).unwrap_or(Value::Null)
                })
                .collect()
        })
        .unwrap_or_default();
    (list, shows)
}

/// Each alert's delivery as the leader decided it, by id: (state, rule, severity, verdict, and the
/// rest of its delivery fields). Not what each replica captured on its own when it raised the alert
/// (raised_at, the record's snapshot) nor the object store's report, which only the leader holds.
fn outcomes(w: &Watcher) -> std::collections::BTreeMap<String, (Value, Value, Value, Value, Value)> {
    w.alerts()
        .into_iter()
        .map(|a| {
            let rest: Value = ["attempts", "last_error", "last_error_at", "sent_at", "email_sent_at", "webhook_sent_at", "give_up_at", "outcome_at"]
                .iter()
                .map(|k| (k.to_string(), a[*k].clone()))
                .collect::<serde_json::Map<_, _>>()
                .into();
            (a["id"].as_str().unwrap_or("").to_string(), (a["state"].clone(), a["rule"].clone(), a["severity"].clone(), a["verdict"].clone(), rest))
        })
        .collect()
}

/// Issue 17 proof (c): two replicas, each reading the syslog topic in its own consumer group, end with
/// equal stores: the same instances with the same records, whatever interleaving of the three partitions
/// each read, and although the standby was SIGKILLed mid-stream and replayed from its committed offsets.
/// Their outboxes agree too: alerts the leader suppressed (a rule switched off) or sent are suppressed or
/// sent on the standby, with the leader's rule, from the deliveries topic's outcome records.
#[test]
fn both_replicas_end_with_equal_stores_and_outboxes_after_a_shuffled_stream_and_a_replay() {
    use safeguard::gen::{GenConfig, Generator};
    const PARTITIONS: i32 = 3;
    // Deletions with a complete base backup are suppressed (rule off); those without one are mailed.
    let Replicas { _tmp, broker, topic, maildir, a, b } =
        Replicas::start_with(PARTITIONS, &Extra { tail: "[alerts.rules]\ninstance_deleted = false\n".into(), ..Extra::default() });
    std::thread::sleep(Duration::from_secs(2));
    wait_until("exactly one leader", Duration::from_secs(60), || a.leads() != b.leads());
    let (leader, mut standby) = if a.leads() { (a, b) } else { (b, a) };

    // A random corpus with at least two deletions of each kind (backed up or not), so both outcomes occur.
    let mut seed = now_ms() as u64;
    let (out, truth) = loop {
        let cfg = GenConfig {
            seed,
            lines: 3_000,
            concurrent_instances: 10,
            noise: 0.3,
            delete_fraction: 0.6,
            no_backup_fraction: 0.4,
            // Recent enough for deletions to be news (alerts.backfill_window).
            start_ms: now_ms() - 2 * 3_600_000,
            ..GenConfig::default()
        };
        let mut out = Vec::new();
        let truth = Generator::new(cfg).write_all(&mut out).unwrap();
        let kinds = |backed_up: bool| truth.instances.values().filter(|i| i.deleted && i.complete_backups.is_empty() != backed_up).count();
        if kinds(true) >= 2 && kinds(false) >= 2 {
            break (out, truth);
        }
        seed += 1;
    };
    let lines: Vec<String> = String::from_utf8(out).unwrap().lines().map(str::to_string).collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    produce_spread(&broker, &topic, PARTITIONS, first);
    // The standby dies mid-stream and starts again on its store: it re-reads from its committed offsets.
    wait_until("the standby to read some of the stream", Duration::from_secs(60), || records(&standby).0.as_array().is_some_and(|l| !l.is_empty()));
    standby.w.child.kill().unwrap();
    standby.w.child.wait().unwrap();
    produce_spread(&broker, &topic, PARTITIONS, second);
    let log = standby.w.log.clone();
    standby = Watcher::start(&standby.config, &standby.store, &log);

    let settled = || {
        let (ra, rb) = (records(&leader), records(&standby));
        let (oa, ob) = (outcomes(&leader), outcomes(&standby));
        let done = |o: &std::collections::BTreeMap<String, (Value, Value, Value, Value, Value)>| !o.is_empty() && o.values().all(|v| v.0 != "pending");
        ra.0.as_array().is_some_and(|l| l.len() == truth.instances.len()) && ra == rb && done(&oa) && oa == ob
    };
    let waited = Instant::now();
    while !settled() {
        if waited.elapsed() > Duration::from_secs(120) {
            let (ra, rb) = (records(&leader), records(&standby));
            let diff: Vec<_> = ra.1.iter().zip(&rb.1).filter(|(x, y)| x != y).take(2).collect();
            let listed: Vec<&str> = ra.0.as_array().map(|l| l.iter().filter_map(|r| r["instance_id"].as_str()).collect()).unwrap_or_default();
            for id in truth.instances.keys().filter(|id| !listed.contains(&id.as_str())) {
                eprintln!("missing {id}: {:?}", truth.instances[id]);
                for l in lines.iter().filter(|l| l.contains(id.as_str()) || l.contains(&id[..6])) {
                    eprintln!("  {l}");
                }
            }
            panic!(
                "the replicas did not converge: {} vs {} instances (truth {}), first differing records {diff:#?}\nleader outbox {:#?}\nstandby outbox {:#?}",
                ra.0.as_array().map_or(0, Vec::len),
                rb.0.as_array().map_or(0, Vec::len),
                truth.instances.len(),
                outcomes(&leader),
                outcomes(&standby)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("replicas converged {:.1}s after the stream ended", waited.elapsed().as_secs_f64());
    // The comparison has teeth: each deleted instance's alert was suppressed (backed up: rule off) or
    // mailed once (by its Message-ID) as having no base backup, as the truth of the corpus says.
    let o = outcomes(&leader);
    for (id, t) in truth.instances.iter().filter(|(_, t)| t.deleted) {
        let alerts: Vec<_> = o.iter().filter(|(a, _)| a.starts_with(&format!("{id}:deletion:"))).collect();
        assert_eq!(alerts.len(), 1, "one deletion alert for {id}: {o:#?}");
        let (aid, v) = alerts[0];
        let want = if t.complete_backups.is_empty() { ("sent", "deleted_without_base_backup") } else { ("suppressed", "instance_deleted") };
        assert_eq!((v.0.as_str(), v.1.as_str()), (Some(want.0), Some(want.1)), "{aid}");
        if v.0 == "sent" {
            let id = aid;
            let message_id = format!("<{}@safeguard>", id.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '.', "."));
            assert_eq!(mails(&maildir, &message_id).len(), 1, "{id}");
        }
    }
}

/// `doctor` checks the `[leader]` topics against the real broker: present with one coordination
/// partition passes; several partitions, or no deliveries topic, fail with what to do.
#[test]
fn doctor_checks_the_coordination_and_deliveries_topics() {
    let (broker, tansu) = (env("SAFEGUARD_TEST_KAFKA"), env("SAFEGUARD_TEST_TANSU"));
    let (one, three, deliveries) = (unique("coord"), unique("coord3"), unique("deliv"));
    create_topic(&tansu, &broker, &one, 1);
    create_topic(&tansu, &broker, &three, 3);
    create_topic(&tansu, &broker, &deliveries, 1);
    let tmp = tempfile::tempdir().unwrap();
    let doctor = |topic: &str, deliveries: &str| -> Value {
        let cfg = tmp.path().join("doctor.toml");
        std::fs::write(&cfg, format!("[leader]\nbrokers = [\"{broker}\"]\ngroup_id = \"g\"\ntopic = \"{topic}\"\ndeliveries_topic = \"{deliveries}\"\n"))
            .unwrap();
        let store = tmp.path().join("store");
        let (_, out, err) = run(&["--config", cfg.to_str().unwrap(), "--store", store.to_str().unwrap(), "doctor", "--json"]);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        v["checks"].as_array().unwrap().iter().find(|c| c["check"] == "leader").cloned().unwrap()
    };
    let ok = doctor(&one, &deliveries);
    assert_eq!(ok["status"], "pass", "{ok}");
    assert!(ok["detail"].as_str().unwrap().contains(&format!("coordination topic {one} (1 partition")), "{ok}");
    let many = doctor(&three, &deliveries);
    assert_eq!(many["status"], "fail", "{many}");
    assert!(many["detail"].as_str().unwrap().contains("3 partitions") && many["hint"].as_str().unwrap().contains("one partition"), "{many}");
    let missing = unique("nowhere");
    let gone = doctor(&one, &missing);
    assert_eq!(gone["status"], "fail", "{gone}");
    assert!(
        gone["detail"].as_str().unwrap().contains(&format!("topic {missing} does not exist")) && gone["hint"].as_str().unwrap().contains("create it"),
        "{gone}"
    );
}

/// `alerts retry` with a leader: refused on the standby (it names the leader); on the leader, a failed
/// alert is pending again on both replicas (the standby takes the leader's requeue from the deliveries
/// topic, so whoever leads next sends it).
#[test]
fn alerts_retry_is_for_the_leader_and_the_standby_follows_it() {
    // Mail goes to a port nobody listens on, and is given up after 3 s.
    let closed = format!("127.0.0.1:{}", common::free_port());
    let extra = Extra { smtp: Some(closed), alerts: "give_up_after = \"3s\"\n".into(), ..Extra::default() };
    let Replicas { _tmp, broker, topic, maildir: _, a, b } = Replicas::start_with(1, &extra);
    std::thread::sleep(Duration::from_secs(2));
    wait_until("exactly one leader", Duration::from_secs(60), || a.leads() != b.leads());
    let (leader, standby) = if a.leads() { (a, b) } else { (b, a) };
    let mut rng = Rng::new(now_ms() as u64 ^ 0x4e7);
    let (x, lines) = deleted_instance(&mut rng);
    produce(&broker, &topic, &lines);
    let state = |w: &Watcher| w.alerts().into_iter().find(|a| a["id"].as_str().is_some_and(|id| id.starts_with(&x))).unwrap_or(Value::Null);
    wait_until("the alert failed on both", Duration::from_secs(60), || state(&leader)["state"] == "failed" && state(&standby)["state"] == "failed");
    let id = state(&leader)["id"].as_str().unwrap().to_string();
    assert_eq!(state(&standby)["last_error"], state(&leader)["last_error"]);

    let (code, _, err) = run(&["alerts", "retry", &id, "--store", standby.store.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    let leader_name = leader.role()["member"].as_str().unwrap().to_string();
    assert!(err.contains("standby") && err.contains(&format!("on the leader ({leader_name})")), "{err}");
    assert_eq!(state(&standby)["state"], "failed", "refused: nothing changed");

    let (code, out, err) = run(&["alerts", "retry", &id, "--store", leader.store.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    wait_until("the standby's copy requeued like the leader's", Duration::from_secs(30), || {
        let (l, s) = (state(&leader), state(&standby));
        s["state"] == "pending" && s["outcome_at"] == l["outcome_at"] && s["give_up_at"] == l["give_up_at"]
    });
}
