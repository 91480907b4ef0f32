//! A seeded generator of realistic platform syslog, for benchmarks and tests: many instances living,
//! archiving WAL, taking base backups (some interrupted), some deleted, interleaved with each other and
//! with unrelated programs' lines. It also returns the truth the stream implies, to check ingest against.
//! Line shapes follow shared/reference/log-lines.md across all three broker eras and prefix styles.

use std::collections::BTreeMap;
use std::io::{self, Write};

use crate::timeutil::{civil_from_days, rfc3339};

/// splitmix64: tiny, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    pub fn uuid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", a >> 32, (a >> 16) & 0xffff, a & 0xfff, b >> 52, b & 0xffff_ffff_ffff)
    }
}

#[derive(Debug, Clone)]
pub struct GenConfig {
    pub seed: u64,
    /// Total lines to write (approximately: an instance's last lines may run over).
    pub lines: u64,
    /// Instances alive at the same time.
    pub concurrent_instances: usize,
    /// Fraction of lines from unrelated programs.
    pub noise: f64,
    /// Fraction of the unrelated lines that are the broker's own lager lines about no instance (it logs
    /// every catalog request): they pass the prefilter and are parsed as JSON before being dropped.
    pub broker_noise: f64,
    /// Fraction of instances that are deleted before the stream ends.
    pub delete_fraction: f64,
    /// Fraction of instances that never take a base backup.
    pub no_backup_fraction: f64,
    pub start_ms: i64,
    pub bucket: String,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 1,
            lines: 100_000,
            concurrent_instances: 50,
            noise: 0.95,
            broker_noise: 0.0,
            delete_fraction: 0.3,
            no_backup_fraction: 0.1,
            start_ms: crate::timeutil::parse_rfc3339("2026-03-01T00:00:00Z").unwrap_or(0),
            bucket: "our-dingo-postgresql-backups".into(),
        }
    }
}

/// What the generated stream says about one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TruthInstance {
    pub deleted: bool,
    pub complete_backups: Vec<String>,
    pub incomplete_backups: Vec<String>,
    pub segments_pushed: u64,
    pub last_segment: Option<String>,
    pub nodes: Vec<String>,
    pub prefix: String,
}

#[derive(Debug, Default)]
pub struct Truth {
    pub instances: BTreeMap<String, TruthInstance>,
    pub lines: u64,
    pub noise_lines: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Era {
    One,
    Two,
    Three,
}

struct Inst {
    id: String,
    era: Era,
    nodes: Vec<(String, String)>, // (node uuid, cell)
    queue: std::collections::VecDeque<(i64, String)>,
    seg: u64,
    actions_left: u32,
    delete: bool,
    backups: bool,
    provisioned: bool,
}

pub struct Generator {
    cfg: GenConfig,
    rng: Rng,
    now: i64,
    active: Vec<Inst>,
    pub truth: Truth,
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

fn bsd_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (_, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!("{} {:>2} {:02}:{:02}:{:02}", MONTHS[(m - 1) as usize], d, sod / 3600, (sod / 60) % 60, sod % 60)
}

impl Generator {
    pub fn new(cfg: GenConfig) -> Self {
        let rng = Rng::new(cfg.seed);
        let now = cfg.start_ms;
        Generator { cfg, rng, now, active: Vec::new(), truth: Truth::default() }
    }

    fn spawn(&mut self) {
        // Instance ids never share their first 6 characters in one corpus: lines that name an instance only
        // by that prefix (`6e101b-backup>`) would be ambiguous, which the engine rightly leaves unattributed.
        let mut id = self.rng.uuid();
        while self.truth.instances.keys().any(|k| k[..6] == id[..6]) {
            id = self.rng.uuid();
        }
        let era = match self.rng.below(3) {
            0 => Era::One,
            1 => Era::Two,
            _ => Era::Three,
        };
        let n_nodes = if self.rng.chance(0.3) { 2 } else { 1 };
        let nodes = (0..n_nodes).map(|_| (self.rng.uuid(), format!("cell-{}", self.rng.uuid()))).collect();
        let inst = Inst {
            id: id.clone(),
            era,
            nodes,
            queue: Default::default(),
            seg: 1,
            actions_left: 5 + self.rng.below(40) as u32,
            delete: self.rng.chance(self.cfg.delete_fraction),
            backups: !self.rng.chance(self.cfg.no_backup_fraction),
            provisioned: false,
        };
        self.truth.instances.insert(id.clone(), TruthInstance { prefix: format!("s3://{}/backups/{id}/wal/", self.cfg.bucket), ..Default::default() });
        self.active.push(inst);
    }

    fn broker_line(&mut self, era: Era, t: i64, name: &str, data: &str) -> String {
        let (source, full) = match era {
            Era::One => ("patroni-broker", format!("patroni-broker.cluster.{name}")),
            Era::Two => ("dingo-postgresql-broker", format!("dingo-postgresql-broker.cluster.{name}")),
            Era::Three => ("dingo-postgresql-broker", format!("dingo-postgresql-broker.{name}")),
        };
        let ts = format!("{}.{:03}000000", t.div_euclid(1000), t.rem_euclid(1000));
        let payload = format!(r#"{{"timestamp":"{ts}","source":"{source}","message":"{full}","log_level":1,"data":{{{data}}}}}"#);
        self.envelope(t, "0.router-partition-cac94a070a81fd8f3931", "broker.stdout.log", &payload)
    }

    fn envelope(&mut self, t: i64, host: &str, program: &str, msg: &str) -> String {
        match self.rng.below(20) {
            0 => format!("<134>{} {host} {program}:  {msg}", bsd_time(t)),
            1 => format!("<134>1 {} {host} {program} - - - {msg}", rfc3339(t)),
            2 => serde_json::json!({"message": msg, "host": host, "appname": program, "timestamp": rfc3339(t)}).to_string(),
            _ => format!("{} {host} {program}:  {msg}", bsd_time(t)),
        }
    }

    fn container_line(&mut self, inst_idx: usize, node: usize, t: i64, script: &str, msg: &str) -> String {
        let inst = &self.active[inst_idx];
        let (uuid, cell) = inst.nodes[node].clone();
        let (program, prefix) = match inst.era {
            Era::One => (format!("docker/cf-{uuid}"), format!("{script}>")),
            _ => (format!("cf-{uuid}"), format!("{}-{script}>", &inst.id[..6])),
        };
        self.envelope(t, &cell, &program, &format!("{prefix} {msg}"))
    }

    fn seg_name(n: u64) -> String {
        format!("00000001{:08X}{:08X}", n >> 8, n & 0xff)
    }

    /// Queues the next action of instance `i`.
    fn plan(&mut self, i: usize) {
        let t0 = self.now;
        let mut lines: Vec<(i64, String)> = Vec::new();
        let bucket = self.cfg.bucket.clone();
        let (id, era) = (self.active[i].id.clone(), self.active[i].era);
        if !self.active[i].provisioned {
            self.active[i].provisioned = true;
            let idkey = if era == Era::Three && self.rng.chance(0.5) { "instanceID" } else { "instance-id" };
            let l = self.broker_line(
                era,
                t0,
                "provision.start",
                &format!(r#""{idkey}":"{id}","organization_guid":"org-{}","space_guid":"space-{}""#, &id[..4], &id[..4]),
            );
            lines.push((t0, l));
            let nodes = self.active[i].nodes.clone();
            for (n, (uuid, _cell)) in nodes.iter().enumerate() {
                let data = if era == Era::Three { format!(r#""instance-id":"{id}""#) } else { format!(r#""instance-id":"{id}","node-uuid":"{uuid}""#) };
                let l = self.broker_line(era, t0 + 10, "add-node.perform", &data);
                lines.push((t0 + 10, l));
                let l = self.envelope(t0 + 20, "cell-containers", "cf-containers-broker.stdout.log", &format!("Creating Docker container `cf-{uuid}'..."));
                lines.push((t0 + 20, l));
                let l = self.container_line(
                    i,
                    n,
                    t0 + 30,
                    "startup",
                    &format!("looking up public host:port from etcd -> 10.0.0.1:4001/v2/keys/postgresql-patroni/10.0.0.9:cf-{uuid}:5432 (0)"),
                );
                lines.push((t0 + 30, l));
                let l = self.container_line(i, n, t0 + 40, "restore_leader_if_missing", "new cluster, no existing backup to restore");
                lines.push((t0 + 40, l));
            }
            let l = self.container_line(i, 0, t0 + 50, "patroni", &format!("upload: tmp/sysids/sysid to s3://{bucket}/backups/{id}/wal/sysids/sysid"));
            lines.push((t0 + 50, l));
            let l = self.broker_line(
                era,
                t0 + 60,
                if era == Era::Three { "provision.done" } else { "provision.running.success" },
                &format!(r#""instance-id":"{id}""#),
            );
            lines.push((t0 + 60, l));
        } else if self.active[i].actions_left == 0 {
            if self.active[i].delete {
                // The later broker logs the deprovision around the node removals (and `done: false` is
                // the one value the store writes as nothing).
                let deprovision = era == Era::Three && self.rng.chance(0.5);
                if deprovision {
                    let l = self.broker_line(era, t0, "deprovision.start", &format!(r#""instance-id":"{id}""#));
                    lines.push((t0, l));
                }
                let nodes = self.active[i].nodes.clone();
                for (uuid, _) in nodes {
                    let l =
                        self.broker_line(era, t0, "remove-node.perform", &format!(r#""instance-id":"{id}","node-uuid":"{uuid}","backend":"10.58.111.150""#));
                    lines.push((t0, l));
                    let l = self.envelope(t0 + 5, "cell-containers", "cf-containers-broker.stdout.log", &format!("Destroying Docker container `cf-{uuid}'..."));
                    lines.push((t0 + 5, l));
                }
                if deprovision {
                    let l = self.broker_line(era, t0 + 8, "deprovision.done", &format!(r#""instance-id":"{id}""#));
                    lines.push((t0 + 8, l));
                }
                if let Some(t) = self.truth.instances.get_mut(&id) {
                    t.deleted = true;
                }
            }
        } else {
            self.active[i].actions_left -= 1;
            let do_backup = self.active[i].backups && self.rng.chance(0.12);
            if do_backup {
                let seg = Self::seg_name(self.active[i].seg);
                // A backup starts on its own segment, so two backups never share a name.
                self.active[i].seg += 1;
                let name = format!("base_{seg}_00000028");
                let base = format!("s3://{bucket}/backups/{id}/wal/basebackups_005/{name}");
                let complete = self.rng.chance(0.8);
                let s = [
                    "wal_e.worker.upload INFO     MSG: start upload postgres version metadata".to_string(),
                    format!("        DETAIL: Uploading to {base}/extended_version.txt."),
                    "wal_e.worker.upload INFO     MSG: begin uploading a base backup volume".to_string(),
                    format!(r#"        DETAIL: Uploading to "{base}/tar_partitions/part_00000000.tar.lzo"."#),
                ];
                for (k, m) in s.iter().enumerate() {
                    let l = self.container_line(i, 0, t0 + k as i64, "backup", m);
                    lines.push((t0 + k as i64, l));
                }
                if complete {
                    let m = format!(r#"        DETAIL: Uploading to "{base}/tar_partitions/part_00000000.tar.lzo" complete at 20493KiB/s."#);
                    let l = self.container_line(i, 0, t0 + 5, "backup", &m);
                    lines.push((t0 + 5, l));
                    let l = self.container_line(i, 0, t0 + 6, "backup", "NOTICE:  pg_stop_backup complete, all required WAL segments have been archived");
                    lines.push((t0 + 6, l));
                }
                if let Some(t) = self.truth.instances.get_mut(&id) {
                    if complete {
                        t.complete_backups.push(name)
                    } else {
                        t.incomplete_backups.push(name)
                    }
                }
            } else {
                let seg = Self::seg_name(self.active[i].seg);
                self.active[i].seg += 1;
                let dir = if era == Era::One { "pg_xlog" } else { "pg_wal" };
                let url = format!("s3://{bucket}/backups/{id}/wal/wal_005/{seg}.lzo");
                let st = |t: i64, state: &str| {
                    format!(
                        "        STRUCTURED: time={} pid=4242 action=push-wal key={url} prefix=backups/{id}/wal/ seg={seg} state={state}",
                        rfc3339(t).trim_end_matches('Z')
                    )
                };
                let ms = [
                    "wal_e.worker.upload INFO     MSG: begin archiving a file".to_string(),
                    format!(r#"        DETAIL: Uploading "{dir}/{seg}" to "{url}"."#),
                    st(t0, "begin"),
                    "wal_e.worker.upload INFO     MSG: completed archiving to a file".to_string(),
                    format!(r#"        DETAIL: Archiving to "{url}" complete at 62337.1KiB/s."#),
                    st(t0 + 1, "complete"),
                ];
                for (k, m) in ms.iter().enumerate() {
                    let l = self.container_line(i, 0, t0 + (k as i64 / 3), "patroni", m);
                    lines.push((t0, l));
                }
                if let Some(t) = self.truth.instances.get_mut(&id) {
                    t.segments_pushed += 1;
                    t.last_segment = Some(seg);
                }
            }
        }
        self.active[i].queue.extend(lines);
    }

    /// A broker lager line about no instance (catalog and health requests), as the broker prints them.
    fn broker_noise(&mut self) -> String {
        let t = self.now;
        let n = self.rng.below(1000);
        let (msg, data) = match self.rng.below(3) {
            0 => ("dingo-postgresql-broker.catalog", format!(r#""session":"{n}""#)),
            1 => ("dingo-postgresql-broker.api.request", format!(r#""method":"GET","path":"/v2/catalog","session":"{n}""#)),
            _ => ("dingo-postgresql-broker.routing.refresh", format!(r#""routes":{},"session":"{n}""#, n % 40)),
        };
        let ts = format!("{}.{:03}000000", t.div_euclid(1000), t.rem_euclid(1000));
        let payload = format!(r#"{{"timestamp":"{ts}","source":"dingo-postgresql-broker","message":"{msg}","log_level":1,"data":{{{data}}}}}"#);
        format!("{} 0.router-partition-cac94a070a81fd8f3931 broker.stdout.log:  {payload}", bsd_time(t))
    }

    fn noise(&mut self) -> String {
        let t = self.now;
        if self.cfg.broker_noise > 0.0 && self.rng.chance(self.cfg.broker_noise) {
            return self.broker_noise();
        }
        let host = ["cell-1", "cell-2", "router-0", "api-0", "uaa-0"][self.rng.below(5) as usize].to_string();
        let n = self.rng.below(1000);
        let msg = match self.rng.below(10) {
            0 => format!("sshd[{n}]: Accepted publickey for vcap from 10.0.{}.{} port 52{n:03} ssh2", n % 250, n % 200),
            1 => format!("kernel: [{n}.{n:06}] IPv4: martian source 10.0.0.{} from 10.0.0.1, on dev eth0", n % 250),
            2 => format!("CRON[{n}]: (root) CMD (/var/vcap/bosh/bin/logrotate-cron)"),
            3 => format!(
                r#"gorouter.stdout.log:  app-{n}.example.com - [{}] "GET /api/v1/items/{n} HTTP/1.1" 200 0 1532 "-" "curl/7.58" 10.0.1.{}:4{n:03} x_forwarded_for:"-" response_time:0.00{n}"#,
                rfc3339(t),
                n % 250
            ),
            4 => format!(
                r#"cloud_controller_ng.stdout.log:  {{"timestamp":{}.{n},"message":"Started GET \"/v2/apps/{n}\" for user: admin","log_level":"info","source":"cc.api","data":{{"request_guid":"{n}"}}}}"#,
                t / 1000
            ),
            5 => format!("monit[{n}]: 'consul_agent' process is running"),
            6 => format!(
                "uaa.stdout.log:  [2026-03-01 00:00:00.{n:03}] uaa - 1 [http-nio-8080-exec-{}] ....  INFO --- TokenEndpoint: token issued for client {n}",
                n % 10
            ),
            7 => format!(
                "haproxy[{n}]: 10.0.0.{}:5{n:03} [01/Mar/2026:00:00:00.{n:03}] postgres postgres/node{} 1/0/{n} 2{n:03} -- 1/1/0/0/0 0/0",
                n % 250,
                n % 3
            ),
            8 => format!("confd[4095]: INFO Target config /var/vcap/sys/run/router/haproxy.cfg has been updated (md5 {n:08x})"),
            _ => format!("etcd.stderr.log:  2026-03-01 00:00:00.{n:06} I | etcdserver: start to snapshot (applied: {n}, lastsnap: {})", n / 2),
        };
        // Most noise already carries its program inside `msg`.
        match msg.split_once(": ") {
            Some((prog, rest)) => format!("{} {host} {prog}: {rest}", bsd_time(t)),
            None => format!("{} {host} {msg}", bsd_time(t)),
        }
    }

    /// The next line of the stream.
    pub fn next_line(&mut self) -> String {
        self.truth.lines += 1;
        self.now += 1 + self.rng.below(20) as i64;
        if self.rng.chance(self.cfg.noise) {
            self.truth.noise_lines += 1;
            return self.noise();
        }
        while self.active.len() < self.cfg.concurrent_instances {
            self.spawn();
        }
        loop {
            let i = self.rng.below(self.active.len() as u64) as usize;
            if let Some((_, l)) = self.active[i].queue.pop_front() {
                return l;
            }
            let finished = self.active[i].provisioned && self.active[i].actions_left == 0;
            self.plan(i);
            if finished {
                let inst = &self.active[i];
                if inst.queue.is_empty() {
                    self.active.swap_remove(i);
                    self.spawn();
                    continue;
                }
                // Lines queued by the final action go out, then the instance leaves the stream.
                let l = self.active[i].queue.pop_front().map(|x| x.1).unwrap_or_default();
                let rest: Vec<_> = self.active[i].queue.drain(..).collect();
                let mut done = self.active.swap_remove(i);
                done.queue.extend(rest);
                self.spawn();
                // Keep its remaining lines on a retired instance that only drains.
                done.actions_left = 0;
                done.delete = false;
                if !done.queue.is_empty() {
                    self.active.push(done);
                }
                return l;
            }
        }
    }

    /// Writes `cfg.lines` lines and returns the truth of what they say.
    pub fn write_all(mut self, out: &mut impl Write) -> io::Result<Truth> {
        for _ in 0..self.cfg.lines {
            let l = self.next_line();
            out.write_all(l.as_bytes())?;
            out.write_all(b"\n")?;
        }
        // Let every instance finish what it started, so the truth is exact.
        let mut guard = 0;
        while self.active.iter().any(|i| !i.queue.is_empty()) && guard < 10_000_000 {
            guard += 1;
            let idx = self.active.iter().position(|i| !i.queue.is_empty()).unwrap_or(0);
            if let Some((_, l)) = self.active[idx].queue.pop_front() {
                self.truth.lines += 1;
                out.write_all(l.as_bytes())?;
                out.write_all(b"\n")?;
            }
        }
        // An instance spawned after the last line it could have been given never appeared in the stream.
        for i in self.active.iter().filter(|i| !i.provisioned) {
            self.truth.instances.remove(&i.id);
        }
        Ok(self.truth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The truth lists exactly the instances the stream shows: none spawned too late to appear.
    #[test]
    fn every_instance_in_the_truth_appears_in_the_stream() {
        for seed in 0..200 {
            let cfg = GenConfig { seed, lines: 3_000, concurrent_instances: 10, noise: 0.3, delete_fraction: 0.6, ..GenConfig::default() };
            let mut out = Vec::new();
            let truth = Generator::new(cfg).write_all(&mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            for id in truth.instances.keys() {
                assert!(text.contains(id.as_str()), "seed {seed}: {id} is in the truth but not in the stream");
            }
        }
    }
}
