//! The end-to-end harness: plays the Dingo PostgreSQL platform around the real services that
//! `scripts/services.sh` starts (tansu, moto, etcd, aiosmtpd) with real PostgreSQL 14 servers and
//! real WAL-E 1.1.1. See docs/e2e.md.
//!
//! - A **cell** (a uuid, the syslog host of its containers) runs **containers**: each is a PostgreSQL
//!   14 server run as the `postgres` user by `scripts/e2e/container.sh`, archiving with real
//!   `wal-e wal-push` into `s3://<bucket>/backups/<instance-id>/wal/`, backed up with real
//!   `wal-e backup-push`, restoring on start from its prefix like the image's restore_leader_if_missing.
//! - The **relay** ships every line a container prints (console.log: the image's scripts with their
//!   prefixes; pg.log: PostgreSQL and the WAL-E it runs, with `patroni> `) as the platform's syslog
//!   relays it: `Mon DD HH:MM:SS <cell-id> docker/cf-<node-uuid>:  <prefix><text>`, to a Kafka topic
//!   keyed by syslog host, one record per batch (the tansu trap), through one producer thread so that
//!   the topic holds the lines in the order the platform wrote them.
//! - The **broker** (which cannot run here) is the harness writing its lifecycle lines in lager JSON.
//! - Every line shipped is also appended to `syslog.archive`, the platform's log archive, so a test can
//!   ingest exactly what the topic holds into a second store and compare.

#![allow(dead_code)]

use crate::common::{create_topic, env};
pub use crate::common::{free_port, mails, wait_until};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use safeguard::gen::Rng;
use safeguard::s3::{ObjectStore, S3Config};
use safeguard::timeutil::{civil_from_days, now_ms, rfc3339};
use serde_json::{json, Value};

pub const SOLO_PLAN: &str = "b96d0936-e423-11e5-accb-93d374e93368";
pub const SERVICE_ID: &str = "beb5973c-e1b2-11e5-a736-c7c0b526363d";
const S3_KEY: &str = "e2e-access-key";
const S3_SECRET: &str = "e2e-secret-key-not-in-logs";

// ------------------------------------------------------------------ services

/// The real services, from `.services/env` (exported by scripts/test.sh).
#[derive(Clone, Debug)]
pub struct Services {
    pub kafka: String,
    pub tansu: String,
    pub s3: String,
    pub etcd: String,
    pub smtp: String,
    pub maildir: PathBuf,
    pub pg_bin: String,
    pub wale: String,
    pub aws: String,
    pub python: String,
}

impl Services {
    pub fn from_env() -> Services {
        let aws = env("SAFEGUARD_TEST_AWS");
        // Older env files lack SAFEGUARD_TEST_PYTHON: the tools venv's python sits next to its aws.
        let python = std::env::var("SAFEGUARD_TEST_PYTHON")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| Path::new(&aws).with_file_name("python").to_string_lossy().into_owned());
        let s = Services {
            kafka: env("SAFEGUARD_TEST_KAFKA"),
            tansu: env("SAFEGUARD_TEST_TANSU"),
            s3: env("SAFEGUARD_TEST_S3"),
            etcd: env("SAFEGUARD_TEST_ETCD"),
            smtp: env("SAFEGUARD_TEST_SMTP"),
            maildir: PathBuf::from(env("SAFEGUARD_TEST_MAILDIR")),
            pg_bin: env("SAFEGUARD_TEST_PG_BIN"),
            wale: env("SAFEGUARD_TEST_WALE"),
            aws,
            python,
        };
        for (what, p) in
            [("SAFEGUARD_TEST_PG_BIN", format!("{}/postgres", s.pg_bin)), ("SAFEGUARD_TEST_WALE", s.wale.clone()), ("SAFEGUARD_TEST_AWS", s.aws.clone())]
        {
            assert!(Path::new(&p).exists(), "{p} (from {what}) does not exist: run scripts/test.sh, which installs it");
        }
        s
    }

    pub fn s3_config(&self) -> S3Config {
        S3Config {
            endpoint: Some(self.s3.clone()),
            path_style: true,
            access_key_id: Some(S3_KEY.into()),
            secret_access_key: Some(S3_SECRET.into()),
            timeout: Duration::from_secs(10),
            max_attempts: 3,
            ..S3Config::default()
        }
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn container_script() -> PathBuf {
    repo().join("scripts/e2e/container.sh")
}

// ------------------------------------------------------------------ timeline

/// What happened when, for the printed timeline.
pub struct Timeline {
    t0: Instant,
    wall0: i64,
    marks: Mutex<Vec<(Duration, String)>>,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline { t0: Instant::now(), wall0: now_ms(), marks: Mutex::new(Vec::new()) }
    }
}

impl Timeline {
    pub fn mark(&self, what: impl Into<String>) -> Instant {
        let now = Instant::now();
        let what = what.into();
        eprintln!("[e2e {:>7.1}s] {what}", (now - self.t0).as_secs_f64());
        self.marks.lock().unwrap().push((now - self.t0, what));
        now
    }

    pub fn render(&self, title: &str, durations: &[(String, Duration)]) -> String {
        let mut s = format!("{title} (started {})\n", rfc3339(self.wall0));
        for (d, what) in self.marks.lock().unwrap().iter() {
            s.push_str(&format!("  t+{:>6.1}s  {what}\n", d.as_secs_f64()));
        }
        if !durations.is_empty() {
            s.push_str("  durations:\n");
            for (what, d) in durations {
                s.push_str(&format!("    {what:<44} {:>6.1}s\n", d.as_secs_f64()));
            }
        }
        s
    }
}

// ------------------------------------------------------------------ syslog framing

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// RFC 3164 time as the platform's relay writes it (UTC, no year): `Nov 24 09:05:07`, `Mar  6 ...`.
pub fn rfc3164(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let (_, m, d) = civil_from_days(days);
    let secs = ms.div_euclid(1000) - days * 86_400;
    format!("{} {:>2} {:02}:{:02}:{:02}", MONTHS[m as usize - 1], d, secs / 3600, secs / 60 % 60, secs % 60)
}

/// Control characters escaped the way rsyslog does on receipt (`#011` for a tab); CR dropped.
pub fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\r' => {}
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("#{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A container line as relayed: `Mon DD HH:MM:SS <cell> docker/cf-<node>:  <prefix><text>`.
pub fn container_line(ms: i64, cell: &str, container: &str, prefix: &str, text: &str) -> String {
    format!("{} {cell} docker/{container}:  {prefix}{}", rfc3164(ms), escape_controls(text))
}

// ------------------------------------------------------------------ shipping to Kafka

enum Ship {
    Line { key: String, line: String },
    Ack(mpsc::Sender<()>),
}

/// One producer thread: the topic gets lines in the order they were handed over.
struct Shipper {
    tx: Mutex<mpsc::Sender<Ship>>,
    handle: Option<std::thread::JoinHandle<()>>,
    errors: Arc<Mutex<Vec<String>>>,
    shipped: Arc<std::sync::atomic::AtomicU64>,
}

impl Shipper {
    fn start(brokers: &str, topic: &str, archive: PathBuf) -> Shipper {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            // tansu 0.6.0 reports wrong watermarks for multi-record batches: one record per batch.
            .set("linger.ms", "0")
            .set("batch.num.messages", "1")
            .set("message.timeout.ms", "60000")
            .create()
            .expect("create the harness's Kafka producer");
        let (tx, rx) = mpsc::channel::<Ship>();
        let errors = Arc::new(Mutex::new(Vec::new()));
        let shipped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (errs, count, topic) = (errors.clone(), shipped.clone(), topic.to_string());
        let handle = std::thread::Builder::new()
            .name("e2e-shipper".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let mut archive = std::fs::OpenOptions::new().create(true).append(true).open(&archive).unwrap();
                let mut last_ts = 0i64;
                for msg in rx {
                    match msg {
                        Ship::Ack(done) => {
                            let _ = done.send(());
                        }
                        Ship::Line { key, line } => {
                            // Record timestamps never go backwards: the watcher merges partitions by them.
                            let ts = now_ms().max(last_ts);
                            last_ts = ts;
                            let rec = FutureRecord::to(&topic).key(&key).payload(&line).timestamp(ts);
                            match rt.block_on(producer.send(rec, Timeout::After(Duration::from_secs(60)))) {
                                Ok(_) => {
                                    writeln!(archive, "{line}").unwrap();
                                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                                Err((e, _)) => errs.lock().unwrap().push(format!("produce failed: {e}: {line}")),
                            }
                        }
                    }
                }
                archive.flush().unwrap();
            })
            .unwrap();
        Shipper { tx: Mutex::new(tx), handle: Some(handle), errors, shipped }
    }

    fn send(&self, key: &str, line: String) {
        self.tx.lock().unwrap().send(Ship::Line { key: key.to_string(), line }).expect("the shipper thread is gone");
    }

    /// Returns once everything handed over before is in the topic.
    fn sync(&self) {
        let (tx, rx) = mpsc::channel();
        self.tx.lock().unwrap().send(Ship::Ack(tx)).expect("the shipper thread is gone");
        rx.recv_timeout(Duration::from_secs(120)).expect("the shipper did not catch up within 120s");
        let errs = self.errors.lock().unwrap();
        assert!(errs.is_empty(), "lines could not be produced to Kafka: {errs:?}");
    }
}

/// A file a container writes and the relay follows.
struct Followed {
    path: PathBuf,
    cell: String,
    container: String,
    prefix: &'static str,
    offset: u64,
    partial: Vec<u8>,
}

enum RelayCtl {
    Follow(Followed),
    Sync(mpsc::Sender<()>),
}

/// Follows every container's console.log and pg.log and hands complete lines to the shipper.
struct Relay {
    tx: Mutex<mpsc::Sender<RelayCtl>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(shipper: Arc<Shipper>) -> Relay {
        let (tx, rx) = mpsc::channel::<RelayCtl>();
        let handle = std::thread::Builder::new()
            .name("e2e-relay".into())
            .spawn(move || {
                let mut files: Vec<Followed> = Vec::new();
                loop {
                    let ctl = rx.recv_timeout(Duration::from_millis(100));
                    match ctl {
                        Ok(RelayCtl::Follow(f)) => files.push(f),
                        Ok(RelayCtl::Sync(done)) => {
                            pass(&mut files, &shipper);
                            let (tx, rx) = mpsc::channel();
                            shipper.tx.lock().unwrap().send(Ship::Ack(tx)).unwrap();
                            let _ = rx.recv();
                            let _ = done.send(());
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            pass(&mut files, &shipper);
                            return;
                        }
                    }
                    pass(&mut files, &shipper);
                }
            })
            .unwrap();
        Relay { tx: Mutex::new(tx), handle: Some(handle) }
    }

    fn follow(&self, f: Followed) {
        self.tx.lock().unwrap().send(RelayCtl::Follow(f)).unwrap();
    }

    /// Returns once every line written so far is in the topic.
    fn sync(&self) {
        let (tx, rx) = mpsc::channel();
        self.tx.lock().unwrap().send(RelayCtl::Sync(tx)).unwrap();
        rx.recv_timeout(Duration::from_secs(120)).expect("the relay did not catch up within 120s");
    }
}

fn pass(files: &mut [Followed], shipper: &Shipper) {
    for f in files.iter_mut() {
        let Ok(mut file) = std::fs::File::open(&f.path) else { continue };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < f.offset {
            // Truncated: start over.
            f.offset = 0;
            f.partial.clear();
        }
        if len == f.offset {
            continue;
        }
        file.seek(SeekFrom::Start(f.offset)).unwrap();
        let mut buf = Vec::new();
        file.take(len - f.offset).read_to_end(&mut buf).unwrap();
        f.offset += buf.len() as u64;
        f.partial.extend_from_slice(&buf);
        while let Some(nl) = f.partial.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = f.partial.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&raw[..raw.len() - 1]).into_owned();
            if text.trim().is_empty() {
                continue;
            }
            shipper.send(&f.cell, container_line(now_ms(), &f.cell, &f.container, f.prefix, &text));
        }
    }
}

// ------------------------------------------------------------------ the platform

/// One container: `cf-<node>` on a cell, serving one instance.
#[derive(Clone, Debug)]
pub struct Container {
    pub cell: String,
    pub node: String,
    pub name: String,
    pub instance: String,
    pub port: u16,
    pub dir: PathBuf,
}

/// A service instance and its live nodes (the first is the leader).
#[derive(Clone, Debug)]
pub struct Instance {
    pub id: String,
    pub nodes: Vec<Container>,
}

impl Instance {
    pub fn leader(&self) -> &Container {
        &self.nodes[0]
    }
}

pub struct Platform {
    pub svc: Services,
    pub root: PathBuf,
    tmp: Option<tempfile::TempDir>,
    pub bucket: String,
    pub topic: String,
    /// The broker's syslog host.
    pub router: String,
    pub org: String,
    pub space: String,
    pub archive: PathBuf,
    pub timeline: Timeline,
    shipper: Arc<Shipper>,
    relay: Relay,
    rng: Mutex<Rng>,
    session: std::sync::atomic::AtomicU64,
    containers: Mutex<Vec<Container>>,
    rt: tokio::runtime::Runtime,
}

/// Runs a command; panics with its output unless it exits 0. Returns stdout.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Platform {
    /// A fresh platform: its own bucket, topic (2 partitions, keyed by syslog host) and directory.
    pub fn new(name: &str) -> Platform {
        let svc = Services::from_env();
        let name_hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let seed = now_ms() as u64 ^ ((std::process::id() as u64) << 32) ^ name_hash;
        let mut rng = Rng::new(seed);
        let tag = &rng.uuid()[..8];
        let tmp = tempfile::Builder::new().prefix(&format!("sg-e2e-{name}-")).tempdir_in("/tmp").unwrap();
        let root = tmp.path().to_path_buf();
        // The postgres user runs the servers and WAL-E under here.
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let bucket = format!("e2e-{name}-{tag}");
        let topic = format!("e2e-{name}-{tag}");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async {
            let store = ObjectStore::connect(&svc.s3_config()).unwrap();
            store.client().await.create_bucket().bucket(&bucket).send().await.expect("create the bucket");
        });
        create_topic(&svc.tansu, &svc.kafka, &topic, 2);
        std::fs::write(
            root.join("env"),
            format!(
                "E2E_PG_BIN='{}'\nE2E_WALE='{}'\nE2E_WALE_ENDPOINT='http+path://{}'\nE2E_S3='{}'\nE2E_BUCKET='{bucket}'\nE2E_ETCD='{}'\nE2E_AWS='{}'\nE2E_AWS_KEY='{S3_KEY}'\nE2E_AWS_SECRET='{S3_SECRET}'\nE2E_PYTHON3=/usr/bin/python3\n",
                svc.pg_bin,
                svc.wale,
                svc.s3.trim_start_matches("http://"),
                svc.s3,
                svc.etcd,
                svc.aws
            ),
        )
        .unwrap();
        let archive = root.join("syslog.archive");
        let shipper = Arc::new(Shipper::start(&svc.kafka, &topic, archive.clone()));
        let relay = Relay::start(shipper.clone());
        let router = format!("0.router-partition-{}.dingo-postgresql-{}", &rng.uuid().replace('-', "")[..20], &rng.uuid().replace('-', "")[..20]);
        let org = rng.uuid();
        let space = rng.uuid();
        Platform {
            svc,
            root,
            tmp: Some(tmp),
            bucket,
            topic,
            router,
            org,
            space,
            archive,
            timeline: Timeline::default(),
            shipper,
            relay,
            rng: Mutex::new(rng),
            session: std::sync::atomic::AtomicU64::new(70),
            containers: Mutex::new(Vec::new()),
            rt,
        }
    }

    pub fn uuid(&self) -> String {
        self.rng.lock().unwrap().uuid()
    }

    pub fn prefix(&self, instance: &str) -> String {
        format!("s3://{}/backups/{instance}/wal/", self.bucket)
    }

    /// Everything written so far by containers and the broker is in the topic.
    pub fn sync(&self) {
        self.relay.sync();
        self.shipper.sync();
    }

    pub fn lines_shipped(&self) -> u64 {
        self.shipper.shipped.load(std::sync::atomic::Ordering::Relaxed)
    }

    // -------------------------------------------------------------- the broker's lines

    /// A broker line in its lager JSON (era 1: source `patroni-broker`, `cluster.*` names).
    pub fn broker(&self, name: &str, mut data: Value) {
        let t = now_ms();
        let session = self.session.load(std::sync::atomic::Ordering::Relaxed);
        data["session"] = json!(session.to_string());
        let lager = json!({
            "timestamp": format!("{}.{:03}{:06}", t / 1000, t % 1000, 0),
            "source": "patroni-broker",
            "message": format!("patroni-broker.cluster.{name}"),
            "log_level": 1,
            "data": data,
        });
        let line = format!("{} {} broker.stdout.log:  {}", rfc3164(t), self.router, lager);
        self.shipper.send(&self.router, line);
    }

    fn next_session(&self) {
        self.session.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The cf-containers-broker on the cell (`Creating` / `Destroying Docker container`).
    fn containers_broker(&self, cell: &str, text: &str) {
        let line = format!("{} {cell} cf-containers-broker.stdout.log:  {text}", rfc3164(now_ms()));
        self.shipper.send(cell, line);
    }

    // -------------------------------------------------------------- lifecycle

    /// `cf create-service`: the broker provisions a one-node cluster on `cell`; returns once the
    /// container's PostgreSQL runs (a new cluster: initdb, sysid uploaded, etcd keys written).
    pub fn provision(&self, cell: &str) -> Instance {
        let id = self.uuid();
        self.next_session();
        self.broker(
            "provision.start",
            json!({"instance-id": id, "details": {"organization_guid": self.org, "space_guid": self.space, "plan_id": SOLO_PLAN, "service_id": SERVICE_ID}}),
        );
        let mut inst = Instance { id, nodes: Vec::new() };
        self.add_node(&mut inst, cell);
        self.broker("provision.running.success", json!({"instance-id": inst.id}));
        inst
    }

    /// The broker adds a node on `cell`: the container is created and started; a second node joins
    /// the leader as a replica. Returns once it runs.
    pub fn add_node(&self, inst: &mut Instance, cell: &str) -> Container {
        let node = self.uuid();
        self.broker("add-node.perform", json!({"instance-id": inst.id, "node-uuid": node}));
        self.broker("add-node.perform.backends.selected", json!({"uri": format!("http://{cell}"), "guid": cell, "az": "z1"}));
        let c = self.create_container(cell, &node, &inst.id);
        self.containers_broker(cell, &format!("Creating Docker container `{}'...", c.name));
        self.start(&c);
        self.wait_running(&c, Duration::from_secs(180));
        inst.nodes.push(c.clone());
        c
    }

    /// The broker removes a node (a plan change, or the last node at `cf delete-service`): the
    /// remove-node line, then the container is stopped and destroyed with its data.
    pub fn remove_node(&self, inst: &mut Instance, node: &str) {
        let i = inst.nodes.iter().position(|c| c.node == node).expect("a node of this instance");
        let c = inst.nodes.remove(i);
        self.broker("remove-node.perform", json!({"instance-id": inst.id, "node-uuid": c.node, "backend": c.cell}));
        self.stop(&c);
        self.containers_broker(&c.cell, &format!("Destroying Docker container `{}'...", c.name));
        self.flush(&c);
    }

    /// `cf delete-service` (deprovision): every node removed (replicas first, the leader last), then
    /// the broker deletes the cluster's keys from etcd and says so (`cluster.etcd-delete.done`). The
    /// backups stay in S3.
    pub fn delete(&self, inst: &mut Instance) {
        self.next_session();
        while let Some(c) = inst.nodes.last().cloned() {
            self.remove_node(inst, &c.node);
        }
        self.etcd_delete_dir(&format!("service/{}", inst.id));
        self.broker("etcd-delete.done", json!({"instance-id": inst.id}));
    }

    fn create_container(&self, cell: &str, node: &str, instance: &str) -> Container {
        let name = format!("cf-{node}");
        let port = free_port();
        let dir = self.root.join("cells").join(cell).join(&name);
        sh(Command::new("bash").arg(container_script()).args(["create"]).arg(&self.root).args([cell, &name, instance, &port.to_string()]));
        let c = Container { cell: cell.into(), node: node.into(), name: name.clone(), instance: instance.into(), port, dir: dir.clone() };
        for (file, prefix) in [("console.log", ""), ("pg.log", "patroni> ")] {
            self.relay.follow(Followed { path: dir.join(file), cell: cell.into(), container: name.clone(), prefix, offset: 0, partial: Vec::new() });
        }
        self.containers.lock().unwrap().push(c.clone());
        c
    }

    fn container_cmd(&self, op: &str, c: &Container) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(container_script()).arg(op).arg(&self.root).args([&c.cell, &c.name]);
        cmd
    }

    pub fn start(&self, c: &Container) {
        sh(&mut self.container_cmd("start", c));
    }

    pub fn stop(&self, c: &Container) {
        sh(&mut self.container_cmd("stop", c));
    }

    pub fn flush(&self, c: &Container) {
        sh(&mut self.container_cmd("flush", c));
    }

    pub fn state(&self, c: &Container) -> String {
        std::fs::read_to_string(c.dir.join("state")).unwrap_or_default().trim().to_string()
    }

    pub fn wait_running(&self, c: &Container, timeout: Duration) {
        let start = Instant::now();
        loop {
            match self.state(c).as_str() {
                "running" => return,
                "failed" => panic!("container {} on cell {} failed to start:\n{}", c.name, c.cell, self.diagnostics(c)),
                _ => {}
            }
            assert!(start.elapsed() < timeout, "container {} did not run within {timeout:?}:\n{}", c.name, self.diagnostics(c));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The tail of a container's console, server log and entrypoint log.
    pub fn diagnostics(&self, c: &Container) -> String {
        let tail = |f: &str| {
            let t = std::fs::read_to_string(c.dir.join(f)).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!("--- console.log\n{}\n--- pg.log\n{}\n--- entrypoint.log\n{}", tail("console.log"), tail("pg.log"), tail("entrypoint.log"))
    }

    /// The image's backup job: `wal-e backup-push` of the data directory, then `backup-list`.
    pub fn backup(&self, c: &Container) {
        sh(&mut self.container_cmd("backup", c));
    }

    // -------------------------------------------------------------- SQL

    pub fn psql(&self, c: &Container, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &c.port.to_string(), "-U", "postgres", "-d", "postgres", "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql on {} ({sql}): {}\n{}", c.name, String::from_utf8_lossy(&out.stderr), self.diagnostics(c));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Rows `from..=to` of the test table (created on first use).
    pub fn write_rows(&self, c: &Container, from: u32, to: u32) {
        self.psql(
            c,
            "create table if not exists orders (id int primary key, customer text not null, amount numeric(12,2) not null, placed_at timestamptz not null)",
        );
        self.psql(
            c,
            &format!(
                "insert into orders select g, 'customer-' || (g % 97), round((g * 7.31)::numeric % 1000, 2), timestamptz '2016-03-16 19:00:00+00' + g * interval '1 minute' from generate_series({from}, {to}) g"
            ),
        );
    }

    /// (row count, md5 over the whole table in key order).
    pub fn checksum(&self, c: &Container) -> (u64, String) {
        let out = self.psql(c, "select count(*) || ' ' || coalesce(md5(string_agg(o::text, E'\\n' order by id)), '-') from orders o");
        let (n, md5) = out.split_once(' ').unwrap();
        (n.parse().unwrap(), md5.to_string())
    }

    /// Switches to a new WAL segment and waits until WAL-E archived the one just closed.
    pub fn switch_wal(&self, c: &Container) -> String {
        let seg = self.psql(c, "select pg_walfile_name(pg_switch_wal())");
        let start = Instant::now();
        loop {
            let archived = self.psql(c, "select coalesce(last_archived_wal, '') from pg_stat_archiver");
            if archived.len() >= 24 && archived[..24] >= seg[..] {
                return seg;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "segment {seg} of {} not archived within 120s:\n{}", c.name, self.diagnostics(c));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // -------------------------------------------------------------- etcd

    pub fn etcd_get(&self, key: &str) -> Option<String> {
        let out = Command::new("curl").args(["-sS", &format!("{}/v2/keys/{key}", self.svc.etcd)]).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["node"]["value"].as_str().map(str::to_string)
    }

    pub fn etcd_delete_dir(&self, key: &str) {
        let _ = Command::new("curl").args(["-sS", "-o", "/dev/null", "-X", "DELETE", &format!("{}/v2/keys/{key}?recursive=true", self.svc.etcd)]).status();
    }

    // -------------------------------------------------------------- S3

    /// Every object under `prefix` (an s3:// URL): key -> (size, ETag, LastModified, bytes).
    pub fn s3_snapshot(&self, prefix: &str) -> BTreeMap<String, (i64, String, String, Vec<u8>)> {
        let url = safeguard::s3::S3Url::parse(prefix).unwrap();
        self.rt.block_on(async {
            let store = ObjectStore::connect(&self.svc.s3_config()).unwrap();
            let c = store.client().await;
            let mut out = BTreeMap::new();
            let mut token = None;
            loop {
                let page = c.list_objects_v2().bucket(&url.bucket).prefix(&url.key).set_continuation_token(token.clone()).send().await.expect("list objects");
                for o in page.contents() {
                    let key = o.key().unwrap().to_string();
                    let body =
                        c.get_object().bucket(&url.bucket).key(&key).send().await.expect("get object").body.collect().await.unwrap().into_bytes().to_vec();
                    out.insert(
                        key,
                        (o.size().unwrap_or(-1), o.e_tag().unwrap_or("").to_string(), o.last_modified().map(|t| t.to_string()).unwrap_or_default(), body),
                    );
                }
                match page.next_continuation_token() {
                    Some(t) => token = Some(t.to_string()),
                    None => break,
                }
            }
            out
        })
    }

    /// Keys under `prefix`, relative to it.
    pub fn s3_keys(&self, prefix: &str) -> Vec<String> {
        let url = safeguard::s3::S3Url::parse(prefix).unwrap();
        self.rt.block_on(async {
            let store = ObjectStore::connect(&self.svc.s3_config()).unwrap();
            store.list(&url).await.expect("list").into_iter().map(|o| o.key.trim_start_matches(url.key.as_str()).to_string()).collect()
        })
    }

    // -------------------------------------------------------------- safeguard's configuration

    /// The watcher's and recover's configuration: the Kafka source on this platform's topic, S3,
    /// SMTP alerts, etcd and the command-template platform driving the harness's containers.
    pub fn config(&self, dir: &Path, group: &str, grace: &str) -> PathBuf {
        let (host, port) = self.svc.smtp.split_once(':').unwrap();
        let script = container_script();
        let op = |name: &str| format!("bash '{}' {name} '{}' {{host}} {{container}}", script.display(), self.root.display());
        let text = format!(
            r#"[store]
cache_mb = 16

[watch]
deletion_grace = "{grace}"
commit_interval = "200ms"
stats_interval = "10s"

[[sources]]
type = "kafka"
brokers = ["{kafka}"]
topics = ["{topic}"]
group_id = "{group}"
start = "earliest"
session_timeout = "6s"

[s3]
endpoint = "{s3}"
region = "us-east-1"
path_style = true
access_key_id = "{S3_KEY}"
secret_access_key = "{S3_SECRET}"
timeout = "10s"

[alerts]
max_retry_interval = "2s"

[alerts.email]
host = "{host}"
port = {port}
security = "none"
from = "safeguard@platform.example"
to = ["dba-oncall@platform.example"]
to_critical = ["dba-oncall@platform.example", "platform-lead@platform.example"]
timeout = "5s"

[etcd]
url = "{etcd}"
timeout = "5s"

[recover]
target_wait = "60s"
confirm_timeout = "180s"
poll_interval = "300ms"
progress_interval = "2s"

[platform]
type = "commands"
deployment = "dingo-postgresql-e2e"

[platform.commands]
stop = "{stop}"
flush = "{flush}"
start = "{start}"
timeout = "3m"
"#,
            kafka = self.svc.kafka,
            topic = self.topic,
            s3 = self.svc.s3,
            etcd = self.svc.etcd,
            stop = op("stop").replace('\\', "\\\\").replace('"', "\\\""),
            flush = op("flush").replace('\\', "\\\\").replace('"', "\\\""),
            start = op("start").replace('\\', "\\\\").replace('"', "\\\""),
        );
        let p = dir.join("safeguard.toml");
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        for c in self.containers.lock().unwrap().iter() {
            // A container still in its entrypoint would start its server after a stop: let it settle.
            let settle = Instant::now();
            while self.state(c) == "starting" && settle.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = Command::new("bash").arg(container_script()).arg("stop").arg(&self.root).args([&c.cell, &c.name]).output();
        }
        if std::thread::panicking() {
            if let Some(t) = self.tmp.take() {
                let kept = t.keep();
                eprintln!("e2e: kept the platform's directory for inspection: {}", kept.display());
            }
        }
    }
}

// ------------------------------------------------------------------ safeguard itself

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_safeguard")
}

/// Runs the real binary with `--config` and `--store`; returns (exit code, stdout, stderr).
pub fn safeguard(config: &Path, store: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).arg("--config").arg(config).arg("--store").arg(store).args(args).output().expect("run safeguard");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `show <id> --json` through the running watcher, or None when unknown.
pub fn show(config: &Path, store: &Path, id: &str) -> Option<Value> {
    let (code, out, _) = safeguard(config, store, &["show", id, "--json"]);
    if code != 0 {
        return None;
    }
    serde_json::from_str(&out).ok()
}

/// The real watcher, its stderr in a log file.
pub struct Watcher {
    child: Option<Child>,
    pub log: PathBuf,
    pub store: PathBuf,
}

impl Watcher {
    /// Starts `safeguard watch` and waits for its query socket (until then a query would open the
    /// store itself and could keep the watcher from taking it).
    pub fn start(config: &Path, store: &Path, log: &Path) -> Watcher {
        let socket = store.join(safeguard::query::SOCKET_NAME);
        let _ = std::fs::remove_file(&socket);
        let err = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new(bin())
            .arg("--config")
            .arg(config)
            .arg("--store")
            .arg(store)
            .arg("watch")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let mut w = Watcher { child: Some(child), log: log.to_path_buf(), store: store.to_path_buf() };
        let start = Instant::now();
        while !socket.exists() {
            if let Some(st) = w.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the watcher exited with {st} at start-up:\n{}", w.log_text());
            }
            assert!(start.elapsed() < Duration::from_secs(60), "the watcher did not open its socket within 60s:\n{}", w.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        w
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; the watcher flushes its store, leaves the Kafka group and exits 0.
    pub fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("the watcher did not stop within 60s of SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "the watcher exited with {status}:\n{}", self.log_text());
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!("--- watcher log ({}):\n{}", self.log.display(), std::fs::read_to_string(&self.log).unwrap_or_default());
            }
        }
    }
}

// ------------------------------------------------------------------ mail

/// Helper for maps of JSON values in assertions.
pub fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[k],
    })
}

pub fn counts<T: std::hash::Hash + Eq + Clone>(items: &[T]) -> HashMap<T, usize> {
    let mut m = HashMap::new();
    for i in items {
        *m.entry(i.clone()).or_insert(0) += 1;
    }
    m
}
