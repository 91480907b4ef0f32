//! `safeguard recover` end to end on the real binary, against a real S3 API (moto) and a real etcd (v2):
//! the plan, the copy and its verification, every guard, `--before`, crash injection and `--resume`,
//! command templates running real local commands, and the watcher seeing the restore (step 8).
//! scripts/test.sh starts the services and exports SAFEGUARD_TEST_S3 and SAFEGUARD_TEST_ETCD.

use crate::common;
use crate::recover_support::fake_http;
use crate::recover_support::fault_proxy;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use common::env;
use safeguard::etcd::{Etcd, EtcdConfig};
use safeguard::s3::{ObjectInfo, ObjectStore, S3Config, S3Url};
use safeguard::timeutil::{now_ms, rfc3339};
use serde_json::Value;

const SECRET: &str = "test-secret-Zq8vKx31";
const CC_SECRET: &str = "uaa-client-secret-Pw7";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

static N: AtomicU32 = AtomicU32::new(0);

/// A fresh lowercase v4-shaped UUID.
fn uuid() -> String {
    let n = N.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let a = nanos ^ ((std::process::id() as u64) << 32) ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", (a >> 32) as u32, (a >> 16) & 0xffff, a & 0xfff, n & 0xfff, a.wrapping_mul(31) & 0xffff_ffff_ffff)
}

fn seg(n: u32) -> String {
    format!("00000001000000000000{n:04X}")
}

/// A base backup as WAL-E uploads it; the sentinel separately (it goes last).
fn backup(start: u32, partitions: u32) -> Vec<(String, Vec<u8>)> {
    let dir = format!("basebackups_005/base_{}_00000028", seg(start));
    let mut v = vec![(format!("{dir}/extended_version.txt"), b"PostgreSQL 14.23".to_vec())];
    for p in 0..partitions {
        v.push((format!("{dir}/tar_partitions/part_{p:08}.tar.lzo"), vec![0x89, b'L', b'Z', b'O', p as u8, start as u8, 7, 7, 7]));
    }
    v
}

fn sentinel(start: u32) -> (String, Vec<u8>) {
    (
        format!("basebackups_005/base_{}_00000028_backup_stop_sentinel.json", seg(start)),
        format!(r#"{{"wal_segment_backup_stop": "{}", "wal_segment_offset_backup_stop": "00000138", "expanded_size_bytes": 23456789}}"#, seg(start))
            .into_bytes(),
    )
}

fn wal(range: std::ops::RangeInclusive<u32>) -> Vec<(String, Vec<u8>)> {
    range.map(|n| (format!("wal_005/{}.lzo", seg(n)), format!("lzo segment {n} ").repeat(8).into_bytes())).collect()
}

fn sysid() -> (String, Vec<u8>) {
    ("sysids/sysid".into(), b"6352426361234567890".to_vec())
}

/// One test's world: a bucket, a store, a temp dir, ids.
struct World {
    tmp: tempfile::TempDir,
    store: PathBuf,
    bucket: String,
    s3: ObjectStore,
    source: String,
    target: String,
    source_node: String,
    target_node: String,
    watcher: Option<Child>,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut w) = self.watcher.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

fn s3_config() -> S3Config {
    common::s3_config(env("SAFEGUARD_TEST_S3"), SECRET)
}

impl World {
    fn new(tag: &str) -> World {
        let etcd = env("SAFEGUARD_TEST_ETCD");
        let _ = etcd;
        let s3 = ObjectStore::connect(&s3_config()).unwrap();
        let bucket = format!("sg-rec-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        rt().block_on(async {
            s3.client().await.create_bucket().bucket(&bucket).send().await.unwrap_or_else(|e| panic!("create bucket {bucket}: {}", DisplayErrorContext(&e)));
        });
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        World { store, bucket, s3, source: uuid(), target: uuid(), source_node: uuid(), target_node: uuid(), watcher: None, tmp }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn prefix(&self, id: &str) -> S3Url {
        S3Url::instance_prefix(&self.bucket, id).unwrap()
    }

    fn upload(&self, prefix: &S3Url, objects: Vec<(String, Vec<u8>)>) {
        rt().block_on(async {
            let client = self.s3.client().await.clone();
            for chunk in objects.chunks(32) {
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
                            .map_err(|e| format!("put {url}: {}", DisplayErrorContext(&e)))
                    });
                }
                while let Some(r) = set.join_next().await {
                    r.unwrap().unwrap_or_else(|e| panic!("{e}"));
                }
            }
        })
    }

    fn list(&self, prefix: &S3Url) -> Vec<ObjectInfo> {
        rt().block_on(self.s3.list(prefix)).unwrap()
    }

    /// Relative key -> size.
    fn rel_sizes(&self, prefix: &S3Url) -> std::collections::BTreeMap<String, u64> {
        self.list(prefix).into_iter().map(|o| (prefix.relative(&o.key).unwrap().to_string(), o.size)).collect()
    }

    /// Two complete backups (seg 2 and seg 5), WAL 1..8, a backup label, sysid.
    fn standard_source(&self) {
        self.standard_source_for(&self.source)
    }

    fn standard_source_for(&self, id: &str) {
        let p = self.prefix(id);
        let mut objs = vec![sysid()];
        objs.extend(wal(1..=8));
        objs.extend(backup(2, 2));
        objs.extend(backup(5, 3));
        objs.push((format!("wal_005/{}.00000028.backup.lzo", seg(2)), b"label".to_vec()));
        self.upload(&p, objs);
        self.upload(&p, vec![sentinel(2)]);
        std::thread::sleep(Duration::from_millis(1100));
        self.upload(&p, vec![sentinel(5)]);
    }

    /// What a freshly created instance holds: sysid, a few segments, a backup in progress (6 objects).
    fn fresh_target(&self, id: &str) {
        let mut objs = vec![sysid()];
        objs.extend(wal(1..=3));
        objs.extend(backup(2, 1));
        self.upload(&self.prefix(id), objs);
    }

    fn line(&self, t: i64, host: &str, app: &str, msg: &str) -> String {
        format!("<134>1 {} {host} {app} - - - {msg}", rfc3339(t))
    }

    fn broker(&self, t: i64, message: &str, data: &str) -> String {
        let msg = format!(
            r#"{{"timestamp":"{}.{:09}","source":"patroni-broker","message":"patroni-broker.cluster.{message}","log_level":1,"data":{data}}}"#,
            t / 1000,
            (t % 1000) * 1_000_000
        );
        self.line(t, "0.router-partition-test", "broker.stdout.log", &msg)
    }

    /// Lines of an instance coming up on `cell`, pushing WAL (which names its prefix).
    fn instance_lines(&self, t: i64, id: &str, node: &str, cell: &str, name: &str, deleted: bool) -> Vec<String> {
        let key = self.prefix(id).join(&format!("wal_005/{}.lzo", seg(1)));
        let mut v = vec![
            self.broker(
                t,
                "provision.start",
                &format!(r#"{{"instance-id":"{id}","organization_guid":"org-1111","space_guid":"space-2222","name":"{name}","session":"1"}}"#),
            ),
            self.broker(t + 1000, "add-node.perform", &format!(r#"{{"instance-id":"{id}","node-uuid":"{node}","session":"1"}}"#)),
            self.line(t + 2000, cell, &format!("cf-{node}"), "public address 10.58.111.150:32785"),
            self.line(
                t + 3000,
                cell,
                &format!("cf-{node}"),
                &format!(
                    "patroni>         STRUCTURED: time={} pid=221 action=push-wal key={key} prefix={} seg={} state=complete",
                    rfc3339(t + 3000).replace('Z', "-00"),
                    self.prefix(id).key,
                    seg(1)
                ),
            ),
        ];
        if deleted {
            v.push(self.broker(
                t + 4000,
                "remove-node.perform",
                &format!(r#"{{"instance-id":"{id}","node-uuid":"{node}","backend":"10.58.111.150","session":"2"}}"#),
            ));
        }
        v
    }

    fn target_cell(&self) -> String {
        format!("cell-{}", &self.target_node[..8])
    }

    /// Source deleted on cell A, target fresh on cell B.
    fn log_lines(&self) -> Vec<String> {
        let t = now_ms() - 3_600_000;
        let mut v = self.instance_lines(t, &self.source, &self.source_node, "cell-a-0001", "orders-db", true);
        v.extend(self.instance_lines(t + 10_000, &self.target, &self.target_node, &self.target_cell(), "orders-db-restored", false));
        v
    }

    /// The restore the target container prints when started after a recovery.
    fn restore_lines(&self) -> String {
        self.restore_lines_for(&self.target, &self.target_node, &self.target_cell())
    }

    fn restore_lines_for(&self, id: &str, node: &str, cell: &str) -> String {
        let t = now_ms();
        let c = format!("cf-{node}");
        let cell = cell.to_string();
        let mut s = String::new();
        s.push_str(&self.line(t, &cell, &c, "restore_leader_if_missing> preparing patroni to restore this container from wal-e backups"));
        s.push('\n');
        for n in 2..=4 {
            let key = self.prefix(id).join(&format!("wal_005/{}.lzo", seg(n)));
            s.push_str(&self.line(
                t + n as i64 * 100,
                &cell,
                &c,
                &format!(
                    "patroni>         STRUCTURED: time={} pid=77 action=wal-fetch key={key} prefix={} seg={} state=complete",
                    rfc3339(t + n as i64 * 100).replace('Z', "-00"),
                    self.prefix(id).key,
                    seg(n)
                ),
            ));
            s.push('\n');
        }
        s
    }

    fn ingest(&self, lines: &[String]) {
        let log = self.dir().join("seed.log");
        std::fs::write(&log, lines.join("\n") + "\n").unwrap();
        let store = safeguard::store::Store::open(&self.store, 16 << 20).unwrap();
        let s = safeguard::ingest::ingest(&store, safeguard::pipeline::EngineConfig::default(), &[log]).unwrap();
        assert_eq!(s.counters.lines_rejected, 0, "{:?}", s.counters.rejected_by_reason);
    }

    /// Starts `safeguard watch` following a log file holding `lines`; waits until it knows the target's cell.
    fn start_watcher(&mut self, lines: &[String]) -> PathBuf {
        let log = self.dir().join("platform.log");
        std::fs::write(&log, lines.join("\n") + "\n").unwrap();
        let child = Command::new(common::bin())
            .args(["watch", "--file", log.to_str().unwrap(), "--store", self.store.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.watcher = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Query only once the watcher holds the store (its socket exists): a `show` that opened the store
        // first would keep the watcher from starting.
        while !self.store.join("safeguard.sock").exists() {
            assert!(Instant::now() < deadline, "the watcher did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        loop {
            let (code, out, _) = common::run(&["show", &self.target, "--json", "--store", self.store.to_str().unwrap()]);
            if code == 0 && out.contains(&self.target_cell()) {
                break;
            }
            assert!(Instant::now() < deadline, "the watcher did not pick up the target's cell");
            std::thread::sleep(Duration::from_millis(200));
        }
        log
    }

    /// A config with the real services, fast timeouts and command templates that run real commands:
    /// they log each operation to ops.log, empty a data directory, and (start) append the restore
    /// lines to `restore_into` (the watched log).
    fn config(&self, restore_into: Option<&Path>, extra: &str) -> PathBuf {
        self.config_via(&env("SAFEGUARD_TEST_S3"), restore_into, extra)
    }

    fn config_via(&self, s3: &str, restore_into: Option<&Path>, extra: &str) -> PathBuf {
        let ops = self.dir().join("ops.log");
        let data = self.dir().join("data");
        std::fs::create_dir_all(data.join(format!("cf-{}", self.target_node))).unwrap();
        std::fs::write(data.join(format!("cf-{}", self.target_node)).join("PG_VERSION"), "14").unwrap();
        let restore = self.dir().join("restore.lines");
        std::fs::write(&restore, self.restore_lines()).unwrap();
        let start_extra = match restore_into {
            Some(log) => format!(" && cat '{}' >> '{}'", restore.display(), log.display()),
            None => String::new(),
        };
        let text = format!(
            r#"
[s3]
endpoint = "{s3}"
region = "us-east-1"
path_style = true
access_key_id = "testing-key"
secret_access_key = "{SECRET}"
timeout = "10s"
max_attempts = 2

[etcd]
url = "{etcd}"
timeout = "5s"

[recover]
target_wait = "3s"
confirm_timeout = "20s"
poll_interval = "200ms"
progress_interval = "1s"

[platform]
type = "commands"
deployment = "dingo-test"

[platform.commands]
stop = "echo stop {{container}} {{host}} {{deployment}} {{instance_id}} >> '{ops}'"
flush = "echo flush {{container}} >> '{ops}' && rm -rf '{data}'/{{container}}/*"
start = "echo start {{container}} >> '{ops}'{start_extra}"
timeout = "20s"

[cloud_controller]
api_url = "http://127.0.0.1:9"
client_id = "safeguard"
client_secret = "{CC_SECRET}"
{extra}
"#,
            etcd = env("SAFEGUARD_TEST_ETCD"),
            ops = ops.display(),
            data = data.display(),
        );
        let p = self.dir().join(format!("safeguard-{}.toml", N.fetch_add(1, Ordering::SeqCst)));
        std::fs::write(&p, text).unwrap();
        p
    }

    fn ops(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir().join("ops.log")).unwrap_or_default().lines().map(str::to_string).collect()
    }

    fn run(&self, cfg: &Path, args: &[&str]) -> (i32, String, String) {
        self.run_env(cfg, args, &[], None)
    }

    fn run_env(&self, cfg: &Path, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> (i32, String, String) {
        let mut cmd = Command::new(common::bin());
        cmd.args(args).arg("--config").arg(cfg).arg("--store").arg(&self.store).env("RUST_LOG", "warn").env_remove("SAFEGUARD_RECOVER_CRASH");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    fn recoveries(&self, cfg: &Path) -> Value {
        let (code, out, err) = self.run(cfg, &["recoveries", "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    }

    fn recovery(&self, cfg: &Path, id: &str) -> Value {
        let (code, out, err) = self.run(cfg, &["recoveries", id, "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    }
}

fn etcd() -> Etcd {
    Etcd::new(&EtcdConfig { url: env("SAFEGUARD_TEST_ETCD"), ..EtcdConfig::default() }).unwrap()
}

fn set_patroni_keys(id: &str) {
    rt().block_on(async {
        let e = etcd();
        e.put(&format!("/service/{id}/initialize"), "6352426361234567890").await.unwrap();
        e.put(&format!("/service/{id}/optime/leader"), "50331968").await.unwrap();
        e.put(&format!("/service/{id}/members/node0"), "{}").await.unwrap();
    })
}

fn etcd_get(key: &str) -> Option<String> {
    rt().block_on(etcd().get(key)).unwrap()
}

fn step<'a>(rec: &'a Value, name: &str) -> &'a Value {
    rec["steps"].as_array().unwrap().iter().find(|s| s["step"] == name).unwrap_or_else(|| panic!("no step {name} in {rec}"))
}

fn recovery_id(stderr: &str) -> String {
    let i = stderr.find("recovery r").unwrap_or_else(|| panic!("no recovery id in: {stderr}"));
    stderr[i + 9..].split_whitespace().next().unwrap().to_string()
}

#[test]
fn plan_shows_every_step_with_exact_uris_ids_hosts_and_changes_nothing() {
    let w = World::new("plan");
    w.standard_source();
    w.fresh_target(&w.target);
    w.ingest(&w.log_lines());
    set_patroni_keys(&w.target);
    let cfg = w.config(None, "");
    let before = w.list(&w.prefix(&w.target));

    let (code, out, err) = w.run(&cfg, &["recover", &w.source, "--into", &w.target, "--bind-app", "orders"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let src = w.prefix(&w.source).to_string();
    let dst = w.prefix(&w.target).to_string();
    let container = format!("cf-{}", w.target_node);
    for want in [
        "dry run",
        src.as_str(),
        dst.as_str(),
        w.source.as_str(),
        w.target.as_str(),
        container.as_str(),
        w.target_cell().as_str(),
        "RECOVERABLE",
        "name \"orders-db\"",
        "space-2222",
        &format!("stop '{container}' '{}' 'dingo-test' '{}'", w.target_cell(), w.target),
        &format!("/v2/keys/service/{}/initialize", w.target),
        &format!("/v2/keys/service/{}/optime/leader", w.target),
        "base backup base_000000010000000000000005_00000028",
        "WAL 000000010000000000000005 .. 000000010000000000000008",
        "6 object(s) there now",
        "POST /v2/service_bindings",
        "preparing patroni to restore",
    ] {
        assert!(out.contains(want), "plan lacks {want:?}:\n{out}");
    }
    for n in ["1 ", "2 ", "3 ", "4a", "4b", "4c", "5 ", "6 ", "7 ", "8 ", "9 "] {
        assert!(out.contains(&format!("  {n}")), "plan lacks step {n}:\n{out}");
    }
    // The watcher is not running: the plan says step 8 could not see anything.
    assert!(out.contains("no watcher is running"), "{out}");

    let (code, out, err) = w.run(&cfg, &["recover", &w.source, "--into", &w.target, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["dry_run"], true);
    let plan = &v["plan"];
    assert_eq!(plan["source"]["prefix"], src);
    assert_eq!(plan["target"]["prefix"], dst);
    assert_eq!(plan["target"]["container"], container);
    assert_eq!(plan["target"]["host"], w.target_cell());
    assert_eq!(plan["selection"]["objects"], 1 + 8 + 3 + 4 + 2 + 1);
    assert_eq!(plan["selection"]["base_backup"], "base_000000010000000000000005_00000028");
    assert_eq!(plan["steps"].as_array().unwrap().len(), 10);
    // Secrets never in the output.
    for s in [SECRET, CC_SECRET] {
        assert!(!out.contains(s) && !err.contains(s));
    }
    // Ids typed as unique prefixes (as `show` takes them) plan with the full ids: the same plan.
    let (code, short, err) = w.run(&cfg, &["recover", &w.source[..8], "--into", &w.target[..8], "--json"]);
    assert_eq!(code, 0, "{err}");
    let short: Value = serde_json::from_str(&short).unwrap();
    for field in ["source", "target", "selection", "steps"] {
        assert_eq!(short["plan"][field], plan[field], "{field} differs when the ids are typed short");
    }
    // Nothing changed: the target's objects, the etcd keys, no journal entry, no command ran.
    assert_eq!(w.list(&w.prefix(&w.target)), before);
    assert!(etcd_get(&format!("/service/{}/initialize", w.target)).is_some());
    assert!(w.ops().is_empty());
    assert_eq!(w.recoveries(&cfg)["recoveries"].as_array().unwrap().len(), 0);
}

#[test]
fn full_recovery_crashes_between_steps_and_resume_finishes_without_repeating() {
    let mut w = World::new("full");
    w.standard_source();
    w.fresh_target(&w.target);
    set_patroni_keys(&w.target);
    let log = w.start_watcher(&w.log_lines());
    let cfg = w.config(Some(&log), "");
    let src = w.prefix(&w.source);
    let dst = w.prefix(&w.target);
    let source_before = w.list(&src);

    // Crash right after the copy (test-only injection): steps 1..4b done, 4c not started.
    let (code, _out, err) =
        w.run_env(&cfg, &["recover", &w.source, "--into", &w.target, "--execute", "--yes"], &[("SAFEGUARD_RECOVER_CRASH", "after:copy")], None);
    assert_eq!(code, 86, "{err}");
    let id = recovery_id(&err);
    let rec = &w.recovery(&cfg, &id)["recovery"];
    for s in ["source", "target", "stop", "clear_target", "copy"] {
        assert_eq!(step(rec, s)["status"], "done", "{s}: {rec}");
        assert_eq!(step(rec, s)["attempts"], 1);
    }
    for s in ["verify_copy", "etcd", "flush", "start", "confirm"] {
        assert_eq!(step(rec, s)["status"], "pending", "{s}");
    }
    assert_eq!(rec["status"], "running");
    // The target holds exactly the source's objects; etcd untouched so far.
    assert_eq!(w.rel_sizes(&dst), w.rel_sizes(&src));
    let copied = w.list(&dst);
    assert!(etcd_get(&format!("/service/{}/initialize", w.target)).is_some());
    assert_eq!(w.ops(), vec![format!("stop cf-{} {} dingo-test {}", w.target_node, w.target_cell(), w.target)]);
    // The lock holds while it is unfinished.
    let locks = w.recoveries(&cfg)["locks"].clone();
    assert_eq!(locks.as_array().unwrap().len(), 2, "{locks}");

    // Resume: continues at verify_copy, never repeats the stop, the deletion or the copy.
    std::thread::sleep(Duration::from_millis(1100));
    let (code, out, err) = w.run(&cfg, &["recover", "--resume", &id, "--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let rec = &w.recovery(&cfg, &id)["recovery"];
    assert_eq!(rec["status"], "succeeded", "{rec}");
    for s in ["source", "target", "stop", "clear_target", "copy", "verify_copy", "etcd", "flush", "start", "confirm"] {
        assert_eq!(step(rec, s)["status"], "done", "{s}");
        assert_eq!(step(rec, s)["attempts"], 1, "{s} ran twice");
    }
    assert_eq!(w.list(&dst), copied, "objects were copied again (LastModified changed)");
    assert_eq!(w.list(&src), source_before, "the source changed");
    let ops = w.ops();
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert!(ops[1].starts_with("flush ") && ops[2].starts_with("start "), "{ops:?}");
    assert!(!w.dir().join(format!("data/cf-{}/PG_VERSION", w.target_node)).exists(), "flush did not empty the data directory");
    assert_eq!(etcd_get(&format!("/service/{}/initialize", w.target)), None);
    assert_eq!(etcd_get(&format!("/service/{}/optime/leader", w.target)), None);
    assert!(etcd_get(&format!("/service/{}/members/node0", w.target)).is_some(), "only the two keys go");
    assert!(step(rec, "confirm")["summary"].as_str().unwrap().contains("3 WAL segment(s) fetched"), "{rec}");
    assert!(step(rec, "verify_copy")["output"]["latest_complete_backup"] == "base_000000010000000000000005_00000028");
    let etcd_out = &step(rec, "etcd")["output"]["keys"];
    assert_eq!(etcd_out[0]["outcome"], "deleted");
    assert_eq!(etcd_out[0]["previous"], "6352426361234567890");
    assert!(w.recoveries(&cfg)["locks"].as_array().unwrap().is_empty());
    let events = w.recovery(&cfg, &id)["events"].clone();
    let whats: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["what"].as_str().unwrap()).collect();
    assert!(whats.contains(&"resumed") && whats.last() == Some(&"succeeded"), "{whats:?}");
    // Started/done pairs are journaled for every step.
    let per_step = |what: &str| events.as_array().unwrap().iter().filter(|e| e["what"] == what && !e["step"].is_null()).count();
    assert_eq!(per_step("started"), 10);
    assert_eq!(per_step("done"), 10);
    // The human listing.
    let (_, out, _) = w.run(&cfg, &["recoveries"]);
    assert!(out.contains(&id) && out.contains("succeeded"), "{out}");
    // Resuming a finished recovery is refused.
    let (code, _, err) = w.run(&cfg, &["recover", "--resume", &id, "--yes"]);
    assert_eq!(code, 2);
    assert!(err.contains("already succeeded"), "{err}");
}

#[test]
fn copy_crash_midway_resumes_copying_only_the_rest() {
    let w = World::new("midcopy");
    let src = w.prefix(&w.source);
    let mut objs = vec![sysid()];
    objs.extend(wal(1..=400));
    objs.extend(backup(2, 4));
    w.upload(&src, objs);
    w.upload(&src, vec![sentinel(2)]);
    w.ingest(&w.log_lines());
    let cfg = w.config(None, "");
    let to = format!("s3://{}/clones/{}/wal/", w.bucket, w.source);
    let dst = S3Url::parse(&to).unwrap();

    let (code, _, err) = w.run_env(
        &cfg,
        &["recover", &w.source, "--to-prefix", &to, "--execute", "--yes", "--concurrency", "4"],
        &[("SAFEGUARD_RECOVER_CRASH", "copy:60")],
        None,
    );
    assert_eq!(code, 86, "{err}");
    let id = recovery_id(&err);
    let partial = w.list(&dst).len();
    assert!((60..406).contains(&partial), "{partial} objects after the crash");

    let (code, out, err) = w.run(&cfg, &["recover", "--resume", &id, "--yes", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("copy: ") && err.contains(" objects/s"), "no progress line on a non-terminal stderr: {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let rec = &v["recovery"];
    assert_eq!(step(rec, "copy")["attempts"], 2);
    assert_eq!(step(rec, "clear_target")["attempts"], 1);
    let skipped = step(rec, "copy")["output"]["skipped_present"].as_u64().unwrap();
    assert!(skipped as usize >= partial - 8, "resume copied everything again: skipped {skipped}, {partial} were there");
    assert_eq!(w.rel_sizes(&dst), w.rel_sizes(&src));
    assert_eq!(step(rec, "verify_copy")["status"], "done");
}

#[test]
fn before_chooses_the_backup_and_the_wal_up_to_the_segment_in_use() {
    let w = World::new("before");
    let src = w.prefix(&w.source);
    // Before T: backup A at segment 2, WAL 1..3. After T: WAL 4, 5, backup B at 5, WAL 6.
    let mut early = vec![sysid()];
    early.extend(wal(1..=3));
    early.extend(backup(2, 2));
    w.upload(&src, early);
    w.upload(&src, vec![sentinel(2)]);
    std::thread::sleep(Duration::from_millis(1300));
    let t = now_ms() / 1000 * 1000;
    std::thread::sleep(Duration::from_millis(1300));
    let mut late = wal(4..=5);
    late.extend(backup(5, 2));
    w.upload(&src, late);
    w.upload(&src, vec![sentinel(5)]);
    w.upload(&src, wal(6..=6));
    w.ingest(&w.log_lines());
    let cfg = w.config(None, "");
    let to = format!("s3://{}/pitr/{}/wal/", w.bucket, w.source);
    let before = rfc3339(t);

    let (code, out, err) = w.run(&cfg, &["recover", &w.source, "--to-prefix", &to, "--before", &before]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("base backup base_000000010000000000000002_00000028"), "{out}");
    assert!(out.contains("segment in use then 000000010000000000000004"), "{out}");
    assert!(out.contains("segment-granular"), "{out}");

    let (code, out, err) = w.run(&cfg, &["recover", &w.source, "--to-prefix", &to, "--before", &before, "--execute", "--yes", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let sel = &v["plan"]["selection"];
    assert_eq!(sel["base_backup"], "base_000000010000000000000002_00000028");
    assert_eq!(sel["cutoff_segment"], seg(4));
    assert_eq!(sel["wal_from"], seg(2));
    assert_eq!(sel["wal_to"], seg(4));
    let got: Vec<String> = w.rel_sizes(&S3Url::parse(&to).unwrap()).into_keys().collect();
    let mut want: Vec<String> = vec!["sysids/sysid".to_string()];
    want.extend((1..=4).map(|n| format!("wal_005/{}.lzo", seg(n))));
    want.extend(backup(2, 2).into_iter().map(|(k, _)| k));
    want.push(sentinel(2).0);
    want.sort();
    assert_eq!(got, want);

    // Before any backup completed: refused, saying so.
    let (code, out, _) = w.run(&cfg, &["recover", &w.source, "--to-prefix", &format!("s3://{}/pitr2/", w.bucket), "--before", "2001-01-01T00:00:00Z"]);
    assert_eq!(code, 1);
    assert!(out.contains("no complete base backup completed before 2001-01-01T00:00:00.000Z"), "{out}");
}

#[test]
fn guards_refuse_and_say_why() {
    let w = World::new("guards");
    w.standard_source();
    w.ingest(&w.log_lines());
    let cfg = w.config(None, "");
    let src = w.prefix(&w.source).to_string();

    // The target equals, contains or lies inside the source.
    for (to, why) in
        [(src.clone(), "is the source"), (format!("s3://{}/backups/", w.bucket), "contains the source"), (format!("{src}x/"), "is inside the source")]
    {
        let (code, out, _) = w.run(&cfg, &["recover", &w.source, "--to-prefix", &to, "--execute", "--yes"]);
        assert_eq!(code, 1, "{to}: {out}");
        assert!(out.contains("REFUSED") && out.contains(why), "{to}: {out}");
    }
    // Into itself.
    let (code, out, _) = w.run(&cfg, &["recover", &w.source, "--into", &w.source]);
    assert_eq!(code, 1);
    assert!(out.contains("is the source itself"), "{out}");

    // A target holding a complete base backup.
    let full = format!("s3://{}/other/", w.bucket);
    let fp = S3Url::parse(&full).unwrap();
    let mut objs = backup(9, 1);
    objs.push(sentinel(9));
    w.upload(&fp, objs);
    let (code, out, _) = w.run(&cfg, &["recover", &w.source, "--to-prefix", &full, "--execute", "--yes"]);
    assert_eq!(code, 1);
    assert!(out.contains("holds 1 complete base backup(s) (base_000000010000000000000009_00000028)"), "{out}");
    assert_eq!(w.list(&fp).len(), 3, "a refused plan deleted something");

    // A target holding more objects than the bound.
    let busy = format!("s3://{}/busy/", w.bucket);
    w.upload(&S3Url::parse(&busy).unwrap(), wal(1..=60));
    let (code, out, _) = w.run(&cfg, &["recover", &w.source, "--to-prefix", &busy]);
    assert_eq!(code, 1);
    assert!(out.contains("holds 60 objects, more than the bound of 50"), "{out}");
    let (code, out, _) = w.run(&cfg, &["recover", &w.source, "--to-prefix", &busy, "--max-target-objects", "100"]);
    assert_eq!(code, 0, "{out}");

    // No [etcd] section: an instance recovery cannot clear the keys.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let no_etcd = w.dir().join("no-etcd.toml");
    let etcd_section = format!("[etcd]\nurl = \"{}\"\ntimeout = \"5s\"\n", env("SAFEGUARD_TEST_ETCD"));
    assert!(text.contains(&etcd_section));
    std::fs::write(&no_etcd, text.replace(&etcd_section, "")).unwrap();
    let (code, out, err) = w.run(&no_etcd, &["recover", &w.source, "--into", &w.target]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("no [etcd] section"), "{out}");

    // The operator types the wrong id: nothing happens.
    let to = format!("s3://{}/typed/", w.bucket);
    let (code, _, err) = w.run_env(&cfg, &["recover", &w.source, "--to-prefix", &to, "--execute"], &[], Some("s3://nope/\n"));
    assert_eq!(code, 1);
    assert!(err.contains("not confirmed; nothing changed"), "{err}");
    assert!(w.list(&S3Url::parse(&to).unwrap()).is_empty());
    // ...and the right one: it runs.
    let (code, _, err) = w.run_env(&cfg, &["recover", &w.source, "--to-prefix", &to, "--execute"], &[], Some(&format!("{to}\n")));
    assert_eq!(code, 0, "{err}");

    // Unknown source: says where to look.
    let (code, _, err) = w.run(&cfg, &["recover", "00000000-0000-4000-8000-000000000000", "--into", &w.target]);
    assert_eq!(code, 2);
    assert!(err.contains("safeguard instances --deleted"), "{err}");
}

#[test]
fn no_complete_base_backup_is_refused_unless_forced() {
    let w = World::new("nobackup");
    let src = w.prefix(&w.source);
    let mut objs = vec![sysid()];
    objs.extend(wal(1..=3));
    objs.extend(backup(2, 2)); // interrupted: no sentinel
    w.upload(&src, objs);
    w.ingest(&w.log_lines());
    let cfg = w.config(None, "");
    let to = format!("s3://{}/forced/", w.bucket);
    let (code, out, err) = w.run(&cfg, &["recover", &w.source, "--to-prefix", &to, "--execute", "--yes"]);
    assert_eq!(code, 1, "{err}");
    assert!(out.contains("has no complete base backup"), "{out}");
    assert!(out.contains("S3 holds 7 objects, 0 complete base backup(s), 1 incomplete (base_000000010000000000000002_00000028 (2 partitions, no sentinel)), 3 WAL segment(s)"), "{out}");
    assert!(out.contains("the safeguard store recorded"), "{out}");
    assert!(out.contains("--force"), "{out}");
    assert!(w.list(&S3Url::parse(&to).unwrap()).is_empty());

    let (code, out, err) = w.run(&cfg, &["recover", &w.source, "--to-prefix", &to, "--execute", "--yes", "--force"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("WARNING: --force"), "{out}");
    assert_eq!(w.rel_sizes(&S3Url::parse(&to).unwrap()), w.rel_sizes(&src));
}

#[test]
fn a_second_recovery_of_the_same_instance_is_locked_out_until_abandoned() {
    let w = World::new("lock");
    w.standard_source();
    w.fresh_target(&w.target);
    w.ingest(&w.log_lines());
    let cfg = w.config(None, "");
    let (code, _, err) =
        w.run_env(&cfg, &["recover", &w.source, "--into", &w.target, "--execute", "--yes"], &[("SAFEGUARD_RECOVER_CRASH", "after:source")], None);
    assert_eq!(code, 86, "{err}");
    let first = recovery_id(&err);

    // Same source, another target (and another source onto the same target): both refused.
    let to = format!("s3://{}/elsewhere/", w.bucket);
    let (code, _, err) = w.run(&cfg, &["recover", &w.source, "--to-prefix", &to, "--execute", "--yes"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("instance:{} is locked by recovery {first}", w.source)), "{err}");
    assert!(err.contains(&format!("--abandon {first}")), "{err}");
    assert!(w.list(&S3Url::parse(&to).unwrap()).is_empty());

    let (code, out, err) = w.run(&cfg, &["recover", "--abandon", &first]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("abandoned"), "{out}");
    let rec = &w.recovery(&cfg, &first)["recovery"];
    assert_eq!(rec["status"], "abandoned");
    // The target was never touched (the crash came after step 1).
    assert_eq!(w.list(&w.prefix(&w.target)).len(), 6);

    let (code, _, err) = w.run(&cfg, &["recover", &w.source, "--to-prefix", &to, "--execute", "--yes"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = w.run(&cfg, &["recover", "--resume", &first, "--yes"]);
    assert_eq!(code, 2);
    assert!(err.contains("already abandoned"), "{err}");
}

#[test]
fn clones_into_nested_prefixes_or_into_a_source_being_read_are_locked_out() {
    let w = World::new("nested");
    let other = uuid();
    w.standard_source();
    w.standard_source_for(&other);
    let mut lines = w.log_lines();
    lines.extend(w.instance_lines(now_ms() - 1_800_000, &other, &uuid(), "cell-c-0003", "billing-db", true));
    w.ingest(&lines);
    let cfg = w.config(None, "");
    let outer = format!("s3://{}/clones/orders/", w.bucket);
    let (code, _, err) =
        w.run_env(&cfg, &["recover", &w.source, "--to-prefix", &outer, "--execute", "--yes"], &[("SAFEGUARD_RECOVER_CRASH", "after:source")], None);
    assert_eq!(code, 86, "{err}");
    let first = recovery_id(&err);

    // Another instance cloned inside the first clone's target, or around it: refused, nothing written.
    let inner = format!("s3://{}/clones/orders/billing/", w.bucket);
    let around = format!("s3://{}/clones/", w.bucket);
    for to in [&inner, &around] {
        let (code, _, err) = w.run(&cfg, &["recover", &other, "--to-prefix", to, "--execute", "--yes"]);
        assert_eq!(code, 2, "{to}: {err}");
        assert!(err.contains(&format!("{to} overlaps {outer}, which recovery {first} (running) writes")), "{err}");
        assert!(err.contains(&format!("--abandon {first}")), "{err}");
    }
    // Into the prefix the first recovery is reading from: refused too.
    let into_source = w.prefix(&w.source).join("restored/").to_string();
    let (code, _, err) = w.run(&cfg, &["recover", &other, "--to-prefix", &into_source, "--execute", "--yes"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("which recovery {first} (running) reads")), "{err}");
    assert!(w.list(&S3Url::parse(&outer).unwrap()).is_empty());
    assert!(w.list(&S3Url::parse(&into_source).unwrap()).is_empty());

    let (code, _, err) = w.run(&cfg, &["recover", "--abandon", &first]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = w.run(&cfg, &["recover", &other, "--to-prefix", &around, "--execute", "--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(w.rel_sizes(&S3Url::parse(&around).unwrap()), w.rel_sizes(&w.prefix(&other)));
}

#[test]
fn s3_throttling_is_retried_and_access_denied_stops_the_copy_until_resumed() {
    let w = World::new("faults");
    w.standard_source();
    w.ingest(&w.log_lines());
    let proxy = fault_proxy::FaultProxy::start(&env("SAFEGUARD_TEST_S3"));
    let cfg = w.config_via(&proxy.endpoint, None, "");
    let src = w.prefix(&w.source);
    let wal_keys = w.list(&src).iter().filter(|o| o.key.contains("/wal_005/")).count() as u64;
    assert!(wal_keys >= 8);
    {
        // Each WAL copy fails twice: the SDK's own retry (max_attempts = 2) gives up, the copy's retries
        // with backoff take over. One listing fails once too.
        let mut f = proxy.faults();
        f.slow_copy = Some("/wal_005/".into());
        f.copy_failures = 2;
        f.list_errors = 1;
    }
    let to = format!("s3://{}/retried/", w.bucket);
    let (code, out, err) = w.run(&cfg, &["recover", &w.source, "--to-prefix", &to, "--execute", "--yes", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(step(&v["recovery"], "copy")["output"]["retries"], wal_keys, "{out}");
    {
        let f = proxy.faults();
        assert_eq!(f.served_503 as u64, 2 * wal_keys);
        assert_eq!(f.served_500, 1);
        assert!(f.forwarded > 0);
    }
    assert_eq!(w.rel_sizes(&S3Url::parse(&to).unwrap()), w.rel_sizes(&src));

    // A permission error is not retried: the copy step fails at once, says what and on which key.
    let denied = format!("/wal_005/{}.lzo", seg(5));
    {
        let mut f = proxy.faults();
        f.slow_copy = None;
        f.deny_copy = Some(denied.clone());
    }
    let to = format!("s3://{}/denied/", w.bucket);
    let (code, out, err) = w.run(&cfg, &["recover", &w.source, "--to-prefix", &to, "--execute", "--yes"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("step 4b (copy)") && err.contains("AccessDenied") && err.contains(&denied), "{err}");
    assert!(!err.contains(SECRET), "{err}");
    assert_eq!(proxy.faults().served_403, 1, "AccessDenied was retried");
    let id = recovery_id(&err);
    let rec = &w.recovery(&cfg, &id)["recovery"];
    assert_eq!(rec["status"], "failed");
    assert_eq!(step(rec, "copy")["status"], "failed");

    proxy.faults().deny_copy = None;
    let (code, out, err) = w.run(&cfg, &["recover", "--resume", &id, "--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let rec = &w.recovery(&cfg, &id)["recovery"];
    assert_eq!(rec["status"], "succeeded");
    assert_eq!(step(rec, "copy")["attempts"], 2);
    assert_eq!(w.rel_sizes(&S3Url::parse(&to).unwrap()), w.rel_sizes(&src));
}

#[test]
fn a_failing_command_template_stops_the_recovery_and_resume_continues_after_the_fix() {
    let mut w = World::new("cmdfail");
    w.standard_source();
    w.fresh_target(&w.target);
    set_patroni_keys(&w.target);
    let log = w.start_watcher(&w.log_lines());
    let good = w.config(Some(&log), "");
    let text = std::fs::read_to_string(&good).unwrap();
    let bad = w.dir().join("bad.toml");
    let marker = w.dir().join("bad-ran");
    std::fs::write(
        &bad,
        text.replacen("stop = \"echo stop", &format!("stop = \"touch '{}' && echo cannot reach the director >&2 && exit 3 && echo stop", marker.display()), 1),
    )
    .unwrap();

    let (code, out, err) = w.run(&bad, &["recover", &w.source, "--into", &w.target, "--execute", "--yes"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(marker.exists(), "the template did not run");
    assert!(err.contains("step 3 (stop)") && err.contains("exited with status 3") && err.contains("cannot reach the director"), "{err}");
    assert!(err.contains("--resume"), "{err}");
    let id = recovery_id(&err);
    let rec = &w.recovery(&bad, &id)["recovery"];
    assert_eq!(rec["status"], "failed");
    assert_eq!(step(rec, "stop")["status"], "failed");
    assert_eq!(step(rec, "clear_target")["status"], "pending");
    assert_eq!(w.list(&w.prefix(&w.target)).len(), 6, "the target was touched after a failed stop");

    let (code, out, err) = w.run(&good, &["recover", "--resume", &id, "--yes"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let rec = &w.recovery(&good, &id)["recovery"];
    assert_eq!(rec["status"], "succeeded");
    assert_eq!(step(rec, "stop")["attempts"], 2);
    assert_eq!(step(rec, "copy")["attempts"], 1);
}

#[test]
fn confirm_reports_what_was_not_seen() {
    let mut w = World::new("noconfirm");
    w.standard_source();
    w.fresh_target(&w.target);
    let _log = w.start_watcher(&w.log_lines());
    // The start command does not produce any restore lines this time.
    let cfg = w.config(None, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("confirm_timeout = \"20s\"", "confirm_timeout = \"2s\"");
    std::fs::write(&cfg, text).unwrap();
    let (code, _, err) = w.run(&cfg, &["recover", &w.source, "--into", &w.target, "--execute", "--yes"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("step 8 (confirm)"), "{err}");
    assert!(err.contains("NOT seen; completed wal-fetch: 0"), "{err}");
    assert!(err.contains(&format!("docker logs cf-{}", w.target_node)), "{err}");
    // etcd: absent keys are fine and reported.
    let id = recovery_id(&err);
    let rec = &w.recovery(&cfg, &id)["recovery"];
    assert!(step(rec, "etcd")["summary"].as_str().unwrap().contains("was absent"), "{rec}");
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn create_through_the_cloud_controller_and_docker_api_then_bind() {
    use std::sync::{Arc, Mutex};
    let mut w = World::new("create");
    w.standard_source();
    let new_id = uuid();
    let new_node = uuid();
    let new_cell = format!("cell-new-{}", &new_node[..6]);
    w.fresh_target(&new_id);
    set_patroni_keys(&new_id);
    let log = w.start_watcher(&w.log_lines());

    // The Cloud Controller creates the instance; its container then shows up in the platform's syslog.
    let cc_state = Arc::new(Mutex::new(fake_http::CcState::new("space-2222")));
    let appear = w.instance_lines(now_ms() - 60_000, &new_id, &new_node, &new_cell, "orders-db", false).join("\n") + "\n";
    {
        let mut st = cc_state.lock().unwrap();
        st.next_guid = new_id.clone();
        st.apps.insert("orders".into(), "app-guid-orders".into());
        let log = log.clone();
        st.on_create = Some(Box::new(move |_, _| append(&log, &appear)));
    }
    let cc = fake_http::cloud_controller(cc_state.clone());
    // Docker runs the container; started after the recovery, it prints the restore.
    let container = format!("cf-{new_node}");
    let d_state = Arc::new(Mutex::new(fake_http::DockerState::new(&[container.as_str()])));
    let restore = w.restore_lines_for(&new_id, &new_node, &new_cell);
    {
        let log = log.clone();
        d_state.lock().unwrap().on_start = Some(Box::new(move |_| append(&log, &restore)));
    }
    let docker = fake_http::Server::tcp(fake_http::docker_handler(d_state.clone()));

    let cfg =
        w.config(None, &format!("poll_interval = \"50ms\"\n\n[platform.docker]\nurl = \"{}\"\ntimeout = \"5s\"\n", docker.url.replace("http://", "tcp://")));
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("type = \"commands\"", "type = \"api\"")
        .replace("http://127.0.0.1:9", &cc.url)
        .replace("target_wait = \"3s\"", "target_wait = \"20s\"");
    std::fs::write(&cfg, text).unwrap();

    let (code, out, err) = w.run(&cfg, &["recover", &w.source, "--create"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("a NEW instance \"orders-db\" (solo plan) in space space-2222"), "{out}");
    assert!(out.contains(&format!("Cloud Controller {}: POST /v2/service_instances?accepts_incomplete=true", cc.url)), "{out}");

    let (code, out, err) = w.run(&cfg, &["recover", &w.source, "--create", "--bind-app", "orders", "--execute", "--yes", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    for s in [SECRET, CC_SECRET] {
        assert!(!out.contains(s) && !err.contains(s), "a secret leaked");
    }
    let v: Value = serde_json::from_str(&out).unwrap();
    let rec = &v["recovery"];
    assert_eq!(rec["status"], "succeeded", "{rec}");
    assert_eq!(rec["target_id"], new_id);
    assert_eq!(rec["target_container"], container);
    assert_eq!(rec["target_host"], new_cell);
    assert_eq!(step(rec, "bind")["status"], "done");
    let create = cc.requests().into_iter().find(|r| r.method == "POST" && r.path.starts_with("/v2/service_instances")).unwrap();
    assert_eq!(create.json()["name"], "orders-db");
    assert_eq!(create.json()["space_guid"], "space-2222");
    assert_eq!(cc_state.lock().unwrap().bindings, vec![(new_id.clone(), "app-guid-orders".to_string())]);
    let dpaths = docker.paths();
    for want in [
        format!("POST /containers/{container}/stop?t=30"),
        format!("POST /containers/create?name=safeguard-flush-{container}"),
        format!("POST /containers/{container}/start"),
    ] {
        assert!(dpaths.contains(&want), "{want} not in {dpaths:?}");
    }
    assert_eq!(d_state.lock().unwrap().flushed, vec![container.clone()]);
    assert_eq!(w.rel_sizes(&w.prefix(&new_id)), w.rel_sizes(&w.prefix(&w.source)));
    assert_eq!(etcd_get(&format!("/service/{new_id}/initialize")), None);
}

#[test]
fn create_by_command_template_then_the_execution_guard_refuses_a_target_with_a_complete_backup() {
    let mut w = World::new("createcmd");
    w.standard_source();
    let new_id = uuid();
    let new_node = uuid();
    let new_cell = format!("cell-new-{}", &new_node[..6]);
    // The "new" instance's prefix already holds a complete base backup: the plan could not see it
    // (the id was unknown), so step 4a must refuse before deleting anything.
    let p = w.prefix(&new_id);
    let mut objs = backup(3, 1);
    objs.push(sentinel(3));
    w.upload(&p, objs);
    let log = w.start_watcher(&w.log_lines());
    let appear = w.dir().join("appear.lines");
    std::fs::write(&appear, w.instance_lines(now_ms() - 60_000, &new_id, &new_node, &new_cell, "orders-db", false).join("\n") + "\n").unwrap();
    let cfg = w.config(None, "");
    let create = format!(
        "create = \"cat '{}' >> '{}' && echo created {{name}} in {{space_guid}} && echo {}\"\n",
        appear.display(),
        log.display(),
        new_id.to_uppercase()
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("timeout = \"20s\"\n\n[cloud_controller]", &format!("timeout = \"20s\"\n{create}\n[cloud_controller]"))
        .replace("target_wait = \"3s\"", "target_wait = \"20s\"");
    std::fs::write(&cfg, text).unwrap();

    let (code, out, err) = w.run(&cfg, &["recover", &w.source, "--create", "--name", "orders-db-2", "--execute", "--yes"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        err.contains("step 4a (clear_target)")
            && err.contains("refused: the target")
            && err.contains("holds complete base backup(s) base_000000010000000000000003_00000028"),
        "{err}"
    );
    assert_eq!(w.list(&p).len(), 3, "objects were deleted");
    let id = recovery_id(&err);
    let rec = &w.recovery(&cfg, &id)["recovery"];
    assert_eq!(rec["target_id"], new_id);
    assert_eq!(step(rec, "target")["status"], "done");
    assert!(step(rec, "target")["output"]["created"]["detail"].as_str().unwrap().contains("created orders-db-2 in space-2222"), "{rec}");
    assert_eq!(step(rec, "copy")["status"], "pending");
    // The new instance is locked too.
    let locks = w.recoveries(&cfg)["locks"].to_string();
    assert!(locks.contains(&format!("instance:{new_id}")), "{locks}");
}

#[test]
fn s3_copy_uses_multipart_above_the_threshold_deletes_in_batches_and_heads() {
    use safeguard::s3::{CopyItem, CopyOptions, SourcePrefix, TargetPrefix, TransferProgress};
    let w = World::new("s3ops");
    let src = S3Url::parse(&format!("s3://{}/backups/{}/wal/", w.bucket, w.source)).unwrap();
    let big: Vec<u8> = (0..12u32 << 20).map(|i| (i % 251) as u8).collect();
    let rel = "basebackups_005/base_000000010000000000000002_00000028/tar_partitions/part_00000000.tar.lzo";
    w.upload(&src, vec![(rel.to_string(), big.clone()), sysid()]);
    let source = SourcePrefix::new(src.clone());
    let dst = S3Url::parse(&format!("s3://{}/copies/{}/", w.bucket, w.source)).unwrap();
    let target = TargetPrefix::new(dst.clone(), &source).unwrap();
    // 12 MiB with a 6 MiB threshold and 5 MiB parts: three UploadPartCopy ranges.
    let opts = CopyOptions { concurrency: 4, attempts: 3, multipart_threshold: 6 << 20, part_size: 5 << 20 };
    let items = vec![CopyItem { rel: rel.into(), size: big.len() as u64 }, CopyItem { rel: "sysids/sysid".into(), size: 19 }];
    let progress = TransferProgress::default();
    rt().block_on(async {
        w.s3.copy_objects(&source, &items, &target, &opts, &progress).await.unwrap();
        let got = w.s3.client().await.get_object().bucket(&w.bucket).key(dst.join(rel).key).send().await.unwrap().body.collect().await.unwrap().into_bytes();
        assert_eq!(got.len(), big.len());
        assert!(got.as_ref() == big.as_slice(), "the multipart copy differs from the source");
        let h = w.s3.head(&dst.join("sysids/sysid")).await.unwrap().expect("copied");
        assert_eq!(h.size, 19);
        assert!(w.s3.head(&dst.join("nothing/here")).await.unwrap().is_none());
    });
    assert_eq!(progress.objects.load(Ordering::Relaxed), 2);
    assert_eq!(progress.bytes.load(Ordering::Relaxed), big.len() as u64 + 19);

    // 1,200 objects need two DeleteObjects batches; keys already gone count as deleted.
    let many: Vec<(String, Vec<u8>)> = (0..1200).map(|i| (format!("junk/{i:05}"), vec![1])).collect();
    w.upload(&dst, many.clone());
    let mut rels: Vec<String> = many.into_iter().map(|(k, _)| k).collect();
    rels.push("junk/never-existed".into());
    let n = rt().block_on(w.s3.delete_objects(&target, &rels, 3, None)).unwrap();
    assert_eq!(n, 1201);
    assert_eq!(w.list(&dst).len(), 2);
    // The source is untouched, and a key escaping the target is refused before any request.
    assert_eq!(w.list(&src).len(), 2);
    let e = rt().block_on(w.s3.delete_objects(&target, &["../../backups/x".to_string()], 1, None)).unwrap_err();
    assert!(e.to_string().contains("not inside the target"), "{e}");
}
