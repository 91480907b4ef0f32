//! Pure instance state: [`apply`] folds one attributed event into an [`InstanceRecord`] and returns the
//! [`Effect`]s it causes; [`tick`] advances time (a deletion becomes final after the grace). No I/O.
//!
//! **A record is a function of the set of facts seen**, never of their arrival order, multiplicity or a
//! restart. Each field is kept one of two ways:
//! - a lattice that absorbs facts commutatively and idempotently: min/max times, sets (distinct WAL
//!   segments, partitions, failure times), and "latest by event time" for attributes (ties broken by value);
//! - the lifecycle (node add/remove, deprovision, etcd-delete, update start/done): a small sorted,
//!   deduplicated fact log ([`Facts::life`]) that is folded in event-time order every time it changes, so a
//!   removal at T is never undone by an add at T' < T that arrives later.
//!
//! Base backups are derived the same way: a `pg_stop_backup` NOTICE completes the backup that was the
//! newest to start before it, whatever order the lines came in.

pub mod risk;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::parse::{wale::is_segment, Event, EventKind, Phase, PushState, RestoreMsg};
use crate::timeutil::{serde_ms, serde_opt_ms};

/// How many base backups a record keeps (newest names kept, pruned ones dropped first); daily backups
/// for months would otherwise grow the record without bound.
pub const MAX_BASE_BACKUPS: usize = 64;
/// Nodes removed long ago are dropped past this many.
pub const MAX_NODES: usize = 32;
/// Lifecycle facts kept per record (oldest dropped past it). A cluster sees a handful per plan change.
pub const MAX_LIFE_FACTS: usize = 512;
/// Distinct failure / retry / stop / fetch times kept per record (newest kept).
pub const MAX_TIMES: usize = 1024;
/// WAL segment ranges kept per record; consecutive segments share one range.
pub const MAX_SEGMENT_RANGES: usize = 4096;
/// Partition names kept per base backup.
pub const MAX_PARTS: usize = 4096;
/// A WAL-E "could no longer locate object" and the fetch it voids are this close in time.
const RESTORE_END_WINDOW_MS: i64 = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Live,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Node {
    pub node_uuid: String,
    pub container: String,
    /// The cell (Docker host VM) whose syslog carried the container's lines.
    pub host: Option<String>,
    /// The broker's backend address for the node.
    pub backend: Option<String>,
    pub public_address: Option<String>,
    #[serde(with = "serde_opt_ms", default)]
    pub added_at: Option<i64>,
    #[serde(with = "serde_opt_ms", default)]
    pub removed_at: Option<i64>,
}

impl Node {
    fn new(uuid: &str) -> Self {
        Node { node_uuid: uuid.to_string(), container: format!("cf-{uuid}"), ..Default::default() }
    }
    pub fn active(&self) -> bool {
        self.removed_at.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct BaseBackup {
    pub name: String,
    /// Complete per the evidence in the stream: `pg_stop_backup complete` on the instance's container after
    /// the upload, or the backup listed by `wal-e backup-list` (which lists only backups with a sentinel).
    /// The object store is the authority; `safeguard verify` checks it there.
    pub complete: bool,
    /// Completion time when complete, else when the upload started.
    #[serde(with = "serde_opt_ms", default)]
    pub time: Option<i64>,
    pub partitions_started: u32,
    pub partitions_done: u32,
    #[serde(default)]
    pub pruned: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Wal {
    pub last_segment: Option<String>,
    #[serde(with = "serde_opt_ms", default)]
    pub last_pushed_at: Option<i64>,
    /// Distinct segments pushed.
    pub segments_pushed: u64,
    /// Distinct failure times (PostgreSQL's line and WAL-E's for one attempt share a second).
    pub push_failures: u64,
    #[serde(with = "serde_opt_ms", default)]
    pub last_failure_at: Option<i64>,
    pub last_failure: Option<String>,
    #[serde(default)]
    pub retries: u64,
}

/// What the stream showed of a restore into this instance (the recover command's confirmation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct RestoreSeen {
    #[serde(with = "serde_opt_ms", default)]
    pub preparing_at: Option<i64>,
    pub partitions_downloaded: u32,
    pub wal_fetched: u64,
    #[serde(with = "serde_opt_ms", default)]
    pub last_wal_fetch_at: Option<i64>,
    pub last_message: Option<RestoreMsg>,
}

/// One lifecycle fact. Its identity is the whole value: the same line through two relays is one fact.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
/// Every field has a default: records are stored without default-valued fields (`store::compact_json`),
/// so `done: false` or `t: 0` are written as nothing and must read back as themselves.
pub enum LifeKind {
    Creating {
        #[serde(default)]
        node: String,
    },
    Add {
        #[serde(default)]
        node: Option<String>,
        #[serde(default)]
        backend: Option<String>,
    },
    UpdateStart,
    UpdateDone,
    Remove {
        #[serde(default)]
        node: Option<String>,
        #[serde(default)]
        backend: Option<String>,
    },
    Deprovision {
        #[serde(default)]
        done: bool,
    },
    EtcdDelete,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LifeFact {
    #[serde(default)]
    pub t: i64,
    #[serde(flatten)]
    pub kind: LifeKind,
}

/// What one base backup's lines said; [`BaseBackup`] is derived from it and the stop NOTICEs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupFacts {
    /// Earliest time any line of this backup's upload was seen.
    #[serde(with = "serde_opt_ms")]
    pub started: Option<i64>,
    pub parts_started: BTreeSet<String>,
    pub parts_done: BTreeSet<String>,
    /// Listed by `wal-e backup-list` (only backups with a sentinel are listed), with the listed time.
    #[serde(with = "serde_opt_ms")]
    pub listed: Option<i64>,
    pub pruned: bool,
}

/// The facts behind the derived fields, kept in the record so any later fact can be absorbed exactly.
/// Never shown (`show --json` strips it); every collection is bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Facts {
    /// Event time of each "latest by time" attribute's current value, by attribute name.
    pub lww: BTreeMap<String, i64>,
    /// The same for each node's cell and public address, by node.
    pub node_times: BTreeMap<String, [i64; 2]>,
    /// Lifecycle facts, sorted and deduplicated.
    pub life: Vec<LifeFact>,
    /// Earliest time each node was named by any line.
    pub node_seen: BTreeMap<String, i64>,
    /// Deletion episodes (deletion times) the lifecycle fold yields, newest last.
    pub episodes: Vec<i64>,
    /// Episodes already made final (their deletion alert raised); one no longer derived is reversed.
    pub finalized: Vec<i64>,
    /// Base backups by name.
    pub backups: BTreeMap<String, BackupFacts>,
    /// `pg_stop_backup` NOTICE times.
    pub stops: BTreeSet<i64>,
    /// Distinct WAL segments pushed, as inclusive ranges of (timeline, log << 32 | seg).
    pub segs: Vec<(u32, u64, u64)>,
    pub failures: BTreeSet<i64>,
    pub retries: BTreeSet<i64>,
    /// WAL fetched during a restore: (time, segment).
    pub fetched: BTreeSet<(i64, String)>,
    /// WAL-E's "could no longer locate object" during a restore: the fetch next to it found nothing.
    pub restore_ends: BTreeSet<i64>,
    pub downloaded: BTreeSet<String>,
    /// Earliest and latest time of lines whose year was anchored (payload times, years carried through the
    /// stream): what a line whose year had to be guessed is placed against.
    #[serde(with = "serde_opt_ms")]
    pub anchored_min: Option<i64>,
    #[serde(with = "serde_opt_ms")]
    pub anchored_max: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct InstanceRecord {
    pub instance_id: String,
    pub status: Status,
    pub backup_prefix: Option<String>,
    #[serde(with = "serde_ms")]
    pub first_seen: i64,
    #[serde(with = "serde_ms")]
    pub last_seen: i64,
    #[serde(with = "serde_opt_ms", default)]
    pub deleted_at: Option<i64>,
    /// The evidence for the deletion, e.g. `remove-node.perform of its last node c8ce128e-...`.
    pub deleted_by: Option<String>,
    /// Deleted, but still inside the grace in which a node added again cancels the deletion.
    #[serde(default)]
    pub deletion_pending: bool,
    pub org_guid: Option<String>,
    pub space_guid: Option<String>,
    pub plan_id: Option<String>,
    pub name: Option<String>,
    pub cloned_from: Option<String>,
    pub nodes: Vec<Node>,
    pub base_backups: Vec<BaseBackup>,
    pub wal: Wal,
    pub sysid_uploaded: bool,
    pub restore: RestoreSeen,
    #[serde(with = "serde_opt_ms", default)]
    pub update_started_at: Option<i64>,
    pub facts: Facts,
}

/// What applying an event caused; the store commits effects in the same batch as the state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// The instance looks deleted; final after the grace unless a node is added again.
    DeletionPending {
        instance_id: String,
        #[serde(with = "serde_ms")]
        at: i64,
        evidence: String,
    },
    DeletionCancelled {
        instance_id: String,
        #[serde(with = "serde_ms")]
        at: i64,
    },
    /// Final: the instance was deleted at `at` (its episode key).
    InstanceDeleted {
        instance_id: String,
        #[serde(with = "serde_ms")]
        at: i64,
        evidence: String,
        has_complete_base_backup: bool,
    },
    /// A deletion already made final is no longer what the facts say (a late fact showed a node added
    /// within the grace): the instance is live again. `at` is the reversed episode.
    DeletionReversed {
        instance_id: String,
        #[serde(with = "serde_ms")]
        at: i64,
        evidence: String,
    },
    /// Restore of this instance from backups seen in the stream.
    RestoreSeen {
        instance_id: String,
        #[serde(with = "serde_ms")]
        at: i64,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// A node added again within this long after a deletion cancels it (a recreate or a plan change).
    pub deletion_grace_ms: i64,
    /// An `update.start` without `update.done` for this long stops guarding node removals.
    pub update_window_ms: i64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { deletion_grace_ms: 120_000, update_window_ms: 30 * 60_000 }
    }
}

#[derive(Clone, Copy)]
enum NodeAttr {
    Host = 0,
    PublicAddress = 1,
}

/// Takes `v`, seen at `t`, into a "latest by event time" slot whose value was seen at `cur_t`, when
/// (t, v) beats (cur_t, current value); true when it did, and the caller records `t`.
fn take_if_newer(slot: &mut Option<String>, cur_t: Option<i64>, t: i64, v: &str) -> bool {
    let newer = match (cur_t, slot.as_deref()) {
        (Some(ct), Some(cv)) => (t, v) > (ct, cv),
        _ => true,
    };
    if newer && slot.as_deref() != Some(v) {
        *slot = Some(v.to_string());
    }
    newer
}

impl InstanceRecord {
    pub fn new(instance_id: &str, t: i64) -> Self {
        InstanceRecord { instance_id: instance_id.to_string(), first_seen: t, last_seen: t, ..Default::default() }
    }

    pub fn latest_complete_backup(&self) -> Option<&BaseBackup> {
        self.base_backups.iter().rev().find(|b| b.complete && !b.pruned)
    }

    pub fn active_nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.active())
    }

    fn node_mut(&mut self, uuid: &str) -> &mut Node {
        let i = match self.nodes.iter().position(|n| n.node_uuid == uuid) {
            Some(i) => i,
            None => {
                self.nodes.push(Node::new(uuid));
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i]
    }

    /// Sets a "latest by event time" attribute: the value with the greatest (time, value) wins, so the
    /// result does not depend on which line came first.
    fn lww(&mut self, key: &str, t: i64, v: &str, slot: fn(&mut InstanceRecord) -> &mut Option<String>) {
        let cur_t = self.facts.lww.get(key).copied();
        if take_if_newer(slot(self), cur_t, t, v) {
            // Runs for nearly every line (the backup prefix): no new key once it exists.
            match self.facts.lww.get_mut(key) {
                Some(x) => *x = t,
                None => {
                    self.facts.lww.insert(key.to_string(), t);
                }
            }
        }
    }

    /// The same for a node's cell or public address.
    fn node_lww(&mut self, uuid: &str, attr: NodeAttr, t: i64, v: &str) {
        let cur_t = self.facts.node_times.get(uuid).map(|x| x[attr as usize]);
        let node = self.node_mut(uuid);
        let slot = match attr {
            NodeAttr::Host => &mut node.host,
            NodeAttr::PublicAddress => &mut node.public_address,
        };
        if take_if_newer(slot, cur_t, t, v) {
            match self.facts.node_times.get_mut(uuid) {
                Some(x) => x[attr as usize] = t,
                None => {
                    let mut x = [i64::MIN; 2];
                    x[attr as usize] = t;
                    self.facts.node_times.insert(uuid.to_string(), x);
                }
            }
        }
    }

    /// Marks a time as anchored evidence for this record (see [`Facts::anchored_min`]).
    pub fn anchor(&mut self, t: i64) {
        self.facts.anchored_min = Some(self.facts.anchored_min.map_or(t, |m| m.min(t)));
        self.facts.anchored_max = Some(self.facts.anchored_max.map_or(t, |m| m.max(t)));
    }

    /// The deletion episodes made final whose alerts were raised.
    pub fn finalized(&self) -> &[i64] {
        &self.facts.finalized
    }

    /// True when the engine must look at this record again as time passes: an episode not yet final.
    pub fn needs_tick(&self) -> bool {
        self.facts.episodes.iter().any(|e| !self.facts.finalized.contains(e))
    }
}

/// Applies one event (already attributed to `rec`) and returns its effects. Applying the same event
/// again, or events in any order, gives the same record (see the module doc).
pub fn apply(rec: &mut InstanceRecord, ev: &Event<'_>, rules: &Rules) -> Vec<Effect> {
    let mut effects = Vec::new();
    let t = observe_time(rec, ev);
    // Each kind of event is one step's business; the others ignore it.
    let mut life_changed = observe_node(rec, ev, t);
    life_changed |= lifecycle_fact(rec, ev, t);
    attribute_fact(rec, ev, t);
    wal_fact(rec, &ev.kind, t);
    backup_fact(rec, &ev.kind, t);
    restore_fact(rec, &ev.kind, t, &mut effects);
    if life_changed {
        derive_life(rec, rules, &mut effects);
    }
    effects
}

/// Widens the record's seen span by the event's time (an event without any time, a NILVALUE RFC 5424
/// stamp, still counts, at the record's newest time) and returns that time.
fn observe_time(rec: &mut InstanceRecord, ev: &Event<'_>) -> i64 {
    let t = ev.time.unwrap_or(rec.last_seen);
    if rec.first_seen == 0 || t < rec.first_seen {
        rec.first_seen = t;
    }
    rec.last_seen = rec.last_seen.max(t);
    if ev.time.is_some() && !ev.weak_year {
        rec.anchor(t);
    }
    if let Some(p) = &ev.backup_prefix {
        rec.lww("backup_prefix", t, p, |r| &mut r.backup_prefix);
    }
    t
}

/// A line printed inside a container tells us the node and its cell. True when the node's first
/// sighting changed (the lifecycle fold must run again).
fn observe_node(rec: &mut InstanceRecord, ev: &Event<'_>, t: i64) -> bool {
    let Some(n) = &ev.node_uuid else { return false };
    let changed = see_node(rec, n, t);
    let host_is_cell = !matches!(ev.kind, EventKind::ContainerCreating | EventKind::ContainerDestroying);
    if host_is_cell && !ev.host.is_empty() {
        rec.node_lww(n, NodeAttr::Host, t, &ev.host);
    }
    changed
}

/// Node add/remove, deprovision, etcd-delete, update start/done, a container being created: the fact
/// log the lifecycle is folded from. True when the log changed.
fn lifecycle_fact(rec: &mut InstanceRecord, ev: &Event<'_>, t: i64) -> bool {
    let mut life_changed = false;
    let life = |kind: LifeKind| LifeFact { t, kind };
    match &ev.kind {
        EventKind::Deprovision { phase } => life_changed |= add_life(rec, life(LifeKind::Deprovision { done: *phase == Phase::Done })),
        EventKind::EtcdDeleted => life_changed |= add_life(rec, life(LifeKind::EtcdDelete)),
        EventKind::Update { phase: Phase::Start } => life_changed |= add_life(rec, life(LifeKind::UpdateStart)),
        EventKind::Update { phase: Phase::Done } => life_changed |= add_life(rec, life(LifeKind::UpdateDone)),
        EventKind::AddNode { node_uuid, backend } => {
            if let Some(n) = node_uuid {
                life_changed |= see_node(rec, n, t);
            }
            life_changed |= add_life(rec, life(LifeKind::Add { node: node_uuid.clone(), backend: backend.clone() }));
        }
        EventKind::RemoveNode { node_uuid, backend } => {
            if let Some(n) = node_uuid {
                life_changed |= see_node(rec, n, t);
            }
            life_changed |= add_life(rec, life(LifeKind::Remove { node: node_uuid.clone(), backend: backend.clone() }));
        }
        EventKind::ContainerCreating => {
            if let Some(n) = &ev.node_uuid {
                life_changed |= add_life(rec, life(LifeKind::Creating { node: n.to_string() }));
            }
        }
        _ => {}
    }
    life_changed
}

/// Attributes kept by latest time: the provisioning details, a clone's source, a node's public address,
/// the uploaded sysid.
fn attribute_fact(rec: &mut InstanceRecord, ev: &Event<'_>, t: i64) {
    match &ev.kind {
        EventKind::Provision { org_guid, space_guid, plan_id, name, .. } => {
            for (key, v, slot) in [
                ("org_guid", org_guid, (|r| &mut r.org_guid) as fn(&mut InstanceRecord) -> &mut Option<String>),
                ("space_guid", space_guid, |r| &mut r.space_guid),
                ("plan_id", plan_id, |r| &mut r.plan_id),
                ("name", name, |r| &mut r.name),
            ] {
                if let Some(v) = v {
                    rec.lww(key, t, v, slot);
                }
            }
        }
        EventKind::CopyBackup { from_instance, .. } => rec.lww("cloned_from", t, from_instance, |r| &mut r.cloned_from),
        EventKind::PublicAddress { address } => {
            if let Some(n) = &ev.node_uuid {
                rec.node_lww(n, NodeAttr::PublicAddress, t, address);
            }
        }
        EventKind::SysidUploaded => rec.sysid_uploaded = true,
        _ => {}
    }
}

/// WAL pushed (distinct segments), push failures and retries (sets of times).
fn wal_fact(rec: &mut InstanceRecord, kind: &EventKind, t: i64) {
    match kind {
        EventKind::WalPush { segment, state: PushState::Complete } if is_segment(segment) => {
            if insert_segment(&mut rec.facts.segs, segment) {
                rec.wal.segments_pushed += 1;
            }
            if rec.wal.last_segment.as_deref().is_none_or(|l| segment.as_str() > l) {
                rec.wal.last_segment = Some(segment.clone());
            }
            rec.wal.last_pushed_at = Some(rec.wal.last_pushed_at.map_or(t, |p| p.max(t)));
        }
        EventKind::WalPushFailed { detail } => {
            if insert_time(&mut rec.facts.failures, t) {
                rec.wal.push_failures += 1;
            }
            if take_if_newer(&mut rec.wal.last_failure, rec.wal.last_failure_at, t, detail) {
                rec.wal.last_failure_at = Some(t);
            }
        }
        EventKind::WalERetry if insert_time(&mut rec.facts.retries, t) => rec.wal.retries += 1,
        _ => {}
    }
}

/// Base backups: started, partitions, stopped, listed, pruned; the backups are derived from all of them.
fn backup_fact(rec: &mut InstanceRecord, kind: &EventKind, t: i64) {
    match kind {
        EventKind::BaseBackupStarted { backup } => {
            backup_facts(rec, backup, t);
            derive_backups(rec);
        }
        EventKind::BasePartition { backup, part, done } => {
            let b = backup_facts(rec, backup, t);
            let set = if *done { &mut b.parts_done } else { &mut b.parts_started };
            if set.len() < MAX_PARTS {
                set.insert(part.clone());
            }
            derive_backups(rec);
        }
        EventKind::BaseBackupStopped => {
            insert_time(&mut rec.facts.stops, t);
            derive_backups(rec);
        }
        EventKind::BaseBackupListed { backup, time } => {
            let at = time.unwrap_or(t);
            let b = backup_facts(rec, backup, at);
            b.listed = Some(b.listed.map_or(at, |l| l.min(at)));
            derive_backups(rec);
        }
        EventKind::BackupPruned { backup } => {
            // A prune seen before the backup's own lines still marks it: the fact does not depend on order.
            let b = rec.facts.backups.entry(backup.clone()).or_default();
            b.pruned = true;
            derive_backups(rec);
        }
        _ => {}
    }
}

/// A restore in progress: its messages, downloaded partitions, fetched segments.
fn restore_fact(rec: &mut InstanceRecord, kind: &EventKind, t: i64, effects: &mut Vec<Effect>) {
    match kind {
        EventKind::Restore { msg } => {
            let newer = match (rec.facts.lww.get("restore_msg"), rec.restore.last_message) {
                (Some(&mt), Some(m)) => (t, *msg as u8) > (mt, m as u8),
                _ => true,
            };
            if newer {
                rec.restore.last_message = Some(*msg);
                rec.facts.lww.insert("restore_msg".into(), t);
            }
            if *msg == RestoreMsg::PreparingRestore {
                if rec.restore.preparing_at.is_none_or(|p| t > p) {
                    rec.restore.preparing_at = Some(t);
                }
                effects.push(Effect::RestoreSeen { instance_id: rec.instance_id.clone(), at: t });
            }
        }
        EventKind::PartitionDownload { part } => {
            if rec.facts.downloaded.len() < MAX_PARTS {
                rec.facts.downloaded.insert(part.clone());
            }
            rec.restore.partitions_downloaded = rec.facts.downloaded.len() as u32;
        }
        // WAL-E logs `state=complete` also for a file it did not find (the `.history` probe at the start
        // of every recovery, the segment after the last one at its end): count real segments only.
        EventKind::WalRestoreEnd => {
            insert_time(&mut rec.facts.restore_ends, t);
            derive_restore(rec);
        }
        EventKind::WalFetch { segment, state: PushState::Complete } if is_segment(segment) => {
            rec.facts.fetched.insert((t, segment.clone()));
            while rec.facts.fetched.len() > MAX_TIMES {
                rec.facts.fetched.pop_first();
            }
            derive_restore(rec);
        }
        _ => {}
    }
}

/// Records that a line named `node` at `t`; true when that changes the node's first sighting.
fn see_node(rec: &mut InstanceRecord, node: &str, t: i64) -> bool {
    match rec.facts.node_seen.get_mut(node) {
        Some(s) if *s <= t => false,
        Some(s) => {
            *s = t;
            true
        }
        None => {
            rec.facts.node_seen.insert(node.to_string(), t);
            true
        }
    }
}

fn add_life(rec: &mut InstanceRecord, f: LifeFact) -> bool {
    match rec.facts.life.binary_search(&f) {
        Ok(_) => false,
        Err(i) => {
            rec.facts.life.insert(i, f);
            if rec.facts.life.len() > MAX_LIFE_FACTS {
                rec.facts.life.remove(0);
            }
            true
        }
    }
}

/// Inserts into a bounded set of times; true when it was new. Past the bound the oldest goes, and a
/// time older than everything kept is not taken (so a replayed old line is not counted again).
fn insert_time(set: &mut BTreeSet<i64>, t: i64) -> bool {
    if set.len() >= MAX_TIMES && set.first().is_some_and(|&f| t < f) {
        return false;
    }
    let new = set.insert(t);
    while set.len() > MAX_TIMES {
        set.pop_first();
    }
    new
}

/// (timeline, log << 32 | seg) of a 24-hex-digit segment name.
fn segment_key(s: &str) -> Option<(u32, u64)> {
    let tli = u32::from_str_radix(s.get(0..8)?, 16).ok()?;
    let log = u64::from_str_radix(s.get(8..16)?, 16).ok()?;
    let seg = u64::from_str_radix(s.get(16..24)?, 16).ok()?;
    Some((tli, (log << 32) | seg))
}

/// Adds a segment to the range set; true when it was not there. Ranges stay sorted and merged.
fn insert_segment(ranges: &mut Vec<(u32, u64, u64)>, seg: &str) -> bool {
    segment_key(seg).is_some_and(|(tli, k)| insert_segment_key(ranges, tli, k))
}

fn insert_segment_key(ranges: &mut Vec<(u32, u64, u64)>, tli: u32, k: u64) -> bool {
    // The first range that ends at or after k - 1 (could hold k or touch it).
    let i = ranges.partition_point(|&(rt, _, e)| (rt, e.saturating_add(1)) < (tli, k));
    if let Some(&(rt, s, e)) = ranges.get(i) {
        if rt == tli && s <= k && k <= e {
            return false;
        }
    }
    let touches_prev = ranges.get(i).is_some_and(|&(rt, _, e)| rt == tli && e.saturating_add(1) == k);
    let touches_next = |j: usize, ranges: &Vec<(u32, u64, u64)>| ranges.get(j).is_some_and(|&(rt, s, _)| rt == tli && k.saturating_add(1) == s);
    if touches_prev {
        ranges[i].2 = k;
        if touches_next(i + 1, ranges) {
            ranges[i].2 = ranges[i + 1].2;
            ranges.remove(i + 1);
        }
    } else if touches_next(i, ranges) {
        ranges[i].1 = k;
    } else {
        ranges.insert(i, (tli, k, k));
        if ranges.len() > MAX_SEGMENT_RANGES {
            ranges.remove(0);
        }
    }
    true
}

fn backup_facts<'r>(rec: &'r mut InstanceRecord, name: &str, t: i64) -> &'r mut BackupFacts {
    let b = rec.facts.backups.entry(name.to_string()).or_default();
    b.started = Some(b.started.map_or(t, |s| s.min(t)));
    b
}

/// Keeps the newest [`MAX_BASE_BACKUPS`] names (names sort by start segment): the same set whatever
/// order their lines came in. A line of a dropped, older backup adds it and drops it again.
fn bound_backups(rec: &mut InstanceRecord) {
    while rec.facts.backups.len() > MAX_BASE_BACKUPS {
        rec.facts.backups.pop_first();
    }
}

/// Base backups from their facts: a stop NOTICE completes the backup that was the newest to start at or
/// before it; a listed backup is complete at its listed time.
fn derive_backups(rec: &mut InstanceRecord) {
    bound_backups(rec);
    let f = &rec.facts;
    let mut stopped: BTreeMap<&str, i64> = BTreeMap::new();
    for &s in &f.stops {
        let owner = f
            .backups
            .iter()
            // Pruned backups too: a NOTICE completed the backup of its time, whatever was pruned since.
            .filter(|(_, b)| b.started.is_some_and(|st| st <= s))
            .max_by_key(|(name, b)| (b.started, name.as_str()))
            .map(|(name, _)| name.as_str());
        if let Some(o) = owner {
            stopped.entry(o).or_insert(s);
        }
    }
    rec.base_backups = f
        .backups
        .iter()
        .map(|(name, b)| {
            let done = [stopped.get(name.as_str()).copied(), b.listed].into_iter().flatten().min();
            BaseBackup {
                name: name.clone(),
                complete: done.is_some(),
                time: done.or(b.started),
                partitions_started: b.parts_started.len() as u32,
                partitions_done: b.parts_done.len() as u32,
                pruned: b.pruned,
            }
        })
        .collect();
}

/// Restore progress from its facts: each "could no longer locate" voids the highest segment fetched
/// near it (the one past the end of the archive).
fn derive_restore(rec: &mut InstanceRecord) {
    let f = &rec.facts;
    let mut void: BTreeSet<&(i64, String)> = BTreeSet::new();
    for &r in &f.restore_ends {
        let near = f.fetched.range((r - RESTORE_END_WINDOW_MS, String::new())..).take_while(|(t, _)| *t <= r + RESTORE_END_WINDOW_MS);
        if let Some(v) = near.max_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0))) {
            void.insert(v);
        }
    }
    let real = f.fetched.iter().filter(|x| !void.contains(x));
    rec.restore.wal_fetched = real.clone().count() as u64;
    rec.restore.last_wal_fetch_at = real.map(|(t, _)| *t).max();
}

/// Folds the lifecycle facts in event-time order into status, deletion, node and update fields, and
/// reports what changed as effects.
fn derive_life(rec: &mut InstanceRecord, rules: &Rules, effects: &mut Vec<Effect>) {
    let before = (rec.status, rec.deleted_at);
    // Node sightings take part in the fold as facts of their own: a node known at T is active from T.
    let mut seen: Vec<(i64, &str)> = rec.facts.node_seen.iter().map(|(n, &t)| (t, n.as_str())).collect();
    seen.sort();
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut status = Status::Live;
    let mut deleted: Option<(i64, String)> = None;
    let mut update: Option<i64> = None;
    let mut episodes = Vec::new();
    let mut si = 0;
    for f in &rec.facts.life {
        while si < seen.len() && seen[si].0 <= f.t {
            nodes.entry(seen[si].1.to_string()).or_insert_with(|| Node::new(seen[si].1));
            si += 1;
        }
        let t = f.t;
        match &f.kind {
            LifeKind::Creating { node } => {
                nodes.entry(node.clone()).or_insert_with(|| Node::new(node)).added_at.get_or_insert(t);
            }
            LifeKind::Add { node, backend } => {
                if let Some(n) = node {
                    let nd = nodes.entry(n.clone()).or_insert_with(|| Node::new(n));
                    nd.added_at = Some(t);
                    nd.removed_at = None;
                    if backend.is_some() {
                        nd.backend.clone_from(backend);
                    }
                }
                if let Some((d, _)) = deleted.take() {
                    // Added again within the grace: a recreate or plan change, not a deletion. Later, the
                    // deletion stands as history and the id is in use again.
                    if t - d > rules.deletion_grace_ms {
                        episodes.push(d);
                    }
                    status = Status::Live;
                }
            }
            LifeKind::UpdateStart => update = Some(t),
            LifeKind::UpdateDone => update = None,
            LifeKind::Remove { node, backend } => {
                let evidence = match node {
                    Some(n) => {
                        let nd = nodes.entry(n.clone()).or_insert_with(|| Node::new(n));
                        nd.removed_at = Some(t);
                        if backend.is_some() {
                            nd.backend.clone_from(backend);
                        }
                        format!("remove-node.perform of its last node {n}")
                    }
                    None => "remove-node.perform of its last node".to_string(),
                };
                let updating = update.is_some_and(|u| t - u <= rules.update_window_ms);
                if status == Status::Live && !updating && nodes.values().all(|n| !n.active()) {
                    status = Status::Deleted;
                    deleted = Some((t, evidence));
                }
            }
            LifeKind::Deprovision { done } => {
                if status == Status::Live {
                    let what = if *done { "deprovision.done" } else { "deprovision.start" };
                    status = Status::Deleted;
                    deleted = Some((t, format!("broker {what}")));
                }
            }
            LifeKind::EtcdDelete => {
                if status == Status::Live {
                    status = Status::Deleted;
                    deleted = Some((t, "broker etcd-delete.done".into()));
                }
            }
        }
    }
    for &(_, n) in &seen[si..] {
        nodes.entry(n.to_string()).or_insert_with(|| Node::new(n));
    }
    if let Some((d, _)) = &deleted {
        episodes.push(*d);
    }
    // Keep the attributes learned outside the fold (cell, public address).
    for n in nodes.values_mut() {
        if let Some(old) = rec.nodes.iter().find(|o| o.node_uuid == n.node_uuid) {
            n.host.clone_from(&old.host);
            n.public_address.clone_from(&old.public_address);
        }
    }
    let mut list: Vec<Node> = nodes.into_values().collect();
    let first = |n: &Node| rec.facts.node_seen.get(&n.node_uuid).copied().unwrap_or(i64::MAX);
    list.sort_by(|a, b| (first(a), &a.node_uuid).cmp(&(first(b), &b.node_uuid)));
    // Show at most MAX_NODES, dropping the longest-known removed ones; the facts keep them all, so the
    // same facts always show the same nodes.
    while list.len() > MAX_NODES {
        match list.iter().position(|n| !n.active()) {
            Some(i) => {
                list.remove(i);
            }
            None => break,
        }
    }
    rec.nodes = list;
    rec.status = status;
    rec.update_started_at = update;
    match deleted {
        Some((d, by)) => {
            rec.deleted_at = Some(d);
            rec.deleted_by = Some(by);
        }
        None => {
            rec.deleted_at = None;
            rec.deleted_by = None;
        }
    }
    rec.facts.episodes = episodes;
    rec.deletion_pending = rec.deleted_at.is_some_and(|d| !rec.facts.finalized.contains(&d));

    let id = rec.instance_id.clone();
    match (before, (rec.status, rec.deleted_at)) {
        (b, a) if b == a => {}
        ((Status::Deleted, Some(old)), (Status::Live, _)) if !rec.facts.finalized.contains(&old) => {
            effects.push(Effect::DeletionCancelled { instance_id: id.clone(), at: old });
        }
        (_, (Status::Deleted, Some(d))) if !rec.facts.finalized.contains(&d) => {
            effects.push(Effect::DeletionPending { instance_id: id.clone(), at: d, evidence: rec.deleted_by.clone().unwrap_or_default() });
        }
        _ => {}
    }
    // A deletion already made final that the facts no longer support: the instance was never deleted then.
    // Episodes older than the oldest lifecycle fact kept (past MAX_LIFE_FACTS) are history the fold can
    // no longer see: never reversed for that.
    let horizon = rec.facts.life.first().map_or(i64::MIN, |l| l.t);
    let reversed: Vec<i64> = rec.facts.finalized.iter().copied().filter(|f| *f >= horizon && !rec.facts.episodes.contains(f)).collect();
    for at in reversed {
        rec.facts.finalized.retain(|f| *f != at);
        let evidence = match rec.status {
            Status::Live => "a node was added within the deletion grace (a line that arrived late)".to_string(),
            Status::Deleted => format!("the deletion is now dated {}", rec.deleted_at.map(crate::timeutil::rfc3339).unwrap_or_default()),
        };
        effects.push(Effect::DeletionReversed { instance_id: id.clone(), at, evidence });
    }
}

/// Gives a record written by store schema 1 (which kept no facts) the facts its fields imply, so later
/// facts fold onto its history instead of replacing it. Counts it cannot itemise (distinct segments,
/// failures) are kept as they are; a segment replayed after the upgrade may be counted once more.
pub fn migrate_v1(rec: &mut InstanceRecord, rules: &Rules) {
    if rec.facts != Facts::default() {
        return;
    }
    let (first, last) = (rec.first_seen, rec.last_seen);
    let f = &mut rec.facts;
    let mut life = Vec::new();
    for n in &rec.nodes {
        let id = n.node_uuid.clone();
        f.node_seen.insert(id.clone(), n.added_at.unwrap_or(first).min(n.removed_at.unwrap_or(i64::MAX)));
        f.node_times.insert(id.clone(), [first; 2]);
        if let Some(a) = n.added_at {
            life.push(LifeFact { t: a, kind: LifeKind::Add { node: Some(id.clone()), backend: n.backend.clone() } });
        }
        if let Some(r) = n.removed_at {
            life.push(LifeFact { t: r, kind: LifeKind::Remove { node: Some(id), backend: n.backend.clone() } });
        }
    }
    if let Some(u) = rec.update_started_at {
        life.push(LifeFact { t: u, kind: LifeKind::UpdateStart });
    }
    if let (Status::Deleted, Some(d)) = (rec.status, rec.deleted_at) {
        let by = rec.deleted_by.as_deref().unwrap_or("");
        let kind = if by.starts_with("broker deprovision") {
            Some(LifeKind::Deprovision { done: by.contains("done") })
        } else if by.starts_with("broker etcd") {
            Some(LifeKind::EtcdDelete)
        } else if !life.iter().any(|l| l.t == d && matches!(l.kind, LifeKind::Remove { .. })) {
            Some(LifeKind::Remove { node: None, backend: None })
        } else {
            None
        };
        life.extend(kind.map(|kind| LifeFact { t: d, kind }));
        if !rec.deletion_pending {
            f.finalized.push(d);
        }
    }
    life.sort();
    life.dedup();
    f.life = life;
    for (key, v) in [
        ("backup_prefix", &rec.backup_prefix),
        ("org_guid", &rec.org_guid),
        ("space_guid", &rec.space_guid),
        ("plan_id", &rec.plan_id),
        ("name", &rec.name),
        ("cloned_from", &rec.cloned_from),
    ] {
        if v.is_some() {
            f.lww.insert(key.to_string(), first);
        }
    }
    let part = |i: u32| format!("part_{i:08}");
    for b in &rec.base_backups {
        let done = b.complete.then_some(b.time).flatten();
        f.backups.insert(
            b.name.clone(),
            BackupFacts {
                started: if b.complete { None } else { b.time },
                parts_started: (0..b.partitions_started.min(MAX_PARTS as u32)).map(part).collect(),
                parts_done: (0..b.partitions_done.min(MAX_PARTS as u32)).map(part).collect(),
                listed: done.or(if b.complete { Some(first) } else { None }),
                pruned: b.pruned,
            },
        );
    }
    // Schema 1 kept a count and the last segment: the run of segments ending there (exact when the
    // archive had no gaps), so an archive replayed after the upgrade does not count them again.
    if let Some((tli, mut k)) = rec.wal.last_segment.as_deref().and_then(segment_key) {
        for _ in 0..rec.wal.segments_pushed.min(1_000_000) {
            insert_segment_key(&mut f.segs, tli, k);
            let (log, seg) = (k >> 32, k & 0xFFFF_FFFF);
            k = match (log, seg) {
                (0, 0) => break,
                (_, 0) => ((log - 1) << 32) | 0xFF,
                _ => k - 1,
            };
        }
    }
    f.failures.extend(rec.wal.last_failure_at);
    if rec.restore.last_message.is_some() {
        f.lww.insert("restore_msg".into(), first);
    }
    let fetched_at = rec.restore.last_wal_fetch_at.unwrap_or(first);
    f.fetched = (0..rec.restore.wal_fetched.min(MAX_TIMES as u64)).map(|i| (fetched_at, format!("v1-{i:06}"))).collect();
    f.downloaded = (0..rec.restore.partitions_downloaded.min(MAX_PARTS as u32)).map(part).collect();
    f.anchored_min = Some(first);
    f.anchored_max = Some(last);
    derive_life(rec, rules, &mut Vec::new());
    // Schema 1 already announced (or chose not to announce) every deletion before the current one.
    let current = rec.deleted_at.filter(|_| rec.deletion_pending);
    rec.facts.finalized = rec.facts.episodes.iter().copied().filter(|e| Some(*e) != current).collect();
    rec.deletion_pending = current.is_some();
    if !rec.base_backups.is_empty() {
        derive_backups(rec);
    }
}

/// Makes deletion episodes final once their grace has passed by `now`.
pub fn tick(rec: &mut InstanceRecord, now: i64, rules: &Rules) -> Vec<Effect> {
    let mut out = Vec::new();
    let due: Vec<i64> = rec.facts.episodes.iter().copied().filter(|e| !rec.facts.finalized.contains(e) && now - e >= rules.deletion_grace_ms).collect();
    for at in due {
        rec.facts.finalized.push(at);
        rec.facts.finalized.sort_unstable();
        let evidence = if rec.deleted_at == Some(at) {
            rec.deleted_by.clone().unwrap_or_default()
        } else {
            "deleted, then the id was in use again after the grace".to_string()
        };
        out.push(Effect::InstanceDeleted {
            instance_id: rec.instance_id.clone(),
            at,
            evidence,
            has_complete_base_backup: rec.latest_complete_backup().is_some(),
        });
    }
    rec.deletion_pending = rec.deleted_at.is_some_and(|d| !rec.facts.finalized.contains(&d));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, t: i64) -> Event<'static> {
        Event { time: Some(t), host: "cell".into(), node_uuid: None, short_id: None, instance: Some("i-1".into()), backup_prefix: None, kind, weak_year: false }
    }

    #[test]
    fn only_segments_actually_fetched_count_as_restored_wal() {
        let rules = Rules::default();
        let mut r = InstanceRecord::new("i-1", 0);
        let fetch = |s: &str| EventKind::WalFetch { segment: s.into(), state: PushState::Complete };
        apply(&mut r, &ev(fetch("00000002.history"), 1), &rules);
        apply(&mut r, &ev(fetch("000000010000000000000003"), 2), &rules);
        apply(&mut r, &ev(EventKind::WalRestoreEnd, 3), &rules);
        apply(&mut r, &ev(fetch("000000010000000000000004"), 3), &rules);
        assert_eq!(r.restore.wal_fetched, 1);
        assert_eq!(r.restore.last_wal_fetch_at, Some(2));
        apply(&mut r, &ev(fetch("000000010000000000000005"), 60_000), &rules);
        assert_eq!(r.restore.wal_fetched, 2);
        assert_eq!(r.restore.last_wal_fetch_at, Some(60_000));
    }

    #[test]
    fn removing_one_of_two_nodes_is_not_a_deletion_and_a_quick_re_add_cancels_one() {
        let rules = Rules::default();
        let mut r = InstanceRecord::new("i-1", 0);
        let add = |n: &str| EventKind::AddNode { node_uuid: Some(n.into()), backend: None };
        let remove = |n: &str| EventKind::RemoveNode { node_uuid: Some(n.into()), backend: None };
        apply(&mut r, &ev(add("a"), 1), &rules);
        apply(&mut r, &ev(add("b"), 2), &rules);
        assert!(apply(&mut r, &ev(remove("a"), 3), &rules).is_empty());
        assert_eq!(r.status, Status::Live);
        let e = apply(&mut r, &ev(remove("b"), 4), &rules);
        assert!(matches!(e[..], [Effect::DeletionPending { .. }]));
        let e = apply(&mut r, &ev(add("c"), 4 + rules.deletion_grace_ms - 1), &rules);
        assert!(matches!(e[..], [Effect::DeletionCancelled { .. }]));
        assert_eq!(r.status, Status::Live);
        apply(&mut r, &ev(remove("c"), 1_000_000), &rules);
        assert!(tick(&mut r, 1_000_000 + rules.deletion_grace_ms - 1, &rules).is_empty());
        let e = tick(&mut r, 1_000_000 + rules.deletion_grace_ms, &rules);
        assert!(matches!(e[..], [Effect::InstanceDeleted { at: 1_000_000, .. }]));
        assert!(tick(&mut r, 2_000_000, &rules).is_empty(), "final once");
    }

    #[test]
    fn an_old_add_arriving_after_the_removal_does_not_resurrect() {
        let rules = Rules::default();
        let add = EventKind::AddNode { node_uuid: Some("a".into()), backend: None };
        let remove = EventKind::RemoveNode { node_uuid: Some("a".into()), backend: None };
        let mut r = InstanceRecord::new("i-1", 0);
        apply(&mut r, &ev(add.clone(), 1_000), &rules);
        apply(&mut r, &ev(remove.clone(), 86_400_000), &rules);
        let want = r.clone();
        // The same add again (a relay), and the removal again: nothing changes.
        apply(&mut r, &ev(add.clone(), 1_000), &rules);
        apply(&mut r, &ev(remove, 86_400_000), &rules);
        assert_eq!(r, want);
        assert_eq!(r.status, Status::Deleted);
    }

    #[test]
    fn a_late_add_within_the_grace_reverses_a_final_deletion() {
        let rules = Rules::default();
        let mut r = InstanceRecord::new("i-1", 0);
        apply(&mut r, &ev(EventKind::AddNode { node_uuid: Some("a".into()), backend: None }, 1), &rules);
        apply(&mut r, &ev(EventKind::RemoveNode { node_uuid: Some("a".into()), backend: None }, 10_000), &rules);
        let e = tick(&mut r, 10_000_000, &rules);
        assert!(matches!(e[..], [Effect::InstanceDeleted { at: 10_000, .. }]));
        let e = apply(&mut r, &ev(EventKind::AddNode { node_uuid: Some("b".into()), backend: None }, 20_000), &rules);
        assert!(matches!(e[..], [Effect::DeletionReversed { at: 10_000, .. }]), "{e:?}");
        assert_eq!(r.status, Status::Live);
        assert!(r.finalized().is_empty());
    }

    #[test]
    fn a_stop_notice_completes_the_backup_that_started_before_it() {
        let rules = Rules::default();
        let part = |b: &str, done| EventKind::BasePartition { backup: b.into(), part: "part_00000000.tar.lzo".into(), done };
        let a = "base_000000010000000000000002_00000040";
        let b = "base_000000010000000000000004_00000028";
        let lines = [ev(part(a, false), 100), ev(part(a, true), 104), ev(EventKind::BaseBackupStopped, 105), ev(part(b, false), 3_700)];
        let mut in_order = InstanceRecord::new("i-1", 0);
        for l in &lines {
            apply(&mut in_order, l, &rules);
        }
        let mut reversed = InstanceRecord::new("i-1", 0);
        for l in lines.iter().rev().chain(lines.iter()) {
            apply(&mut reversed, l, &rules);
        }
        assert_eq!(in_order.base_backups, reversed.base_backups);
        assert!(in_order.base_backups[0].complete && !in_order.base_backups[1].complete, "{:?}", in_order.base_backups);
        assert_eq!(in_order.base_backups[0].time, Some(105));
        assert_eq!(in_order.base_backups[0].partitions_done, 1);
    }

    #[test]
    fn a_schema_1_record_keeps_its_history_when_new_facts_arrive() {
        let rules = Rules::default();
        let add = |n: &str| EventKind::AddNode { node_uuid: Some(n.into()), backend: Some("10.0.0.1".into()) };
        let remove = |n: &str| EventKind::RemoveNode { node_uuid: Some(n.into()), backend: Some("10.0.0.1".into()) };
        let part = |done| EventKind::BasePartition { backup: "base_000000010000000000000002_00000040".into(), part: "part_00000000".into(), done };
        let mut now = InstanceRecord::new("i-1", 1);
        for (k, t) in [(add("a"), 1), (part(false), 5), (part(true), 6), (EventKind::BaseBackupStopped, 7), (remove("a"), 10_000)] {
            apply(&mut now, &ev(k, t), &rules);
        }
        tick(&mut now, 1_000_000, &rules);
        // What schema 1 stored: the same fields, no facts.
        let mut old = now.clone();
        old.facts = Facts::default();
        migrate_v1(&mut old, &rules);
        for r in [&mut now, &mut old] {
            // An old add (a relay) and a duplicate partition line: neither resurrects nor recounts.
            apply(r, &ev(add("a"), 1), &rules);
            apply(r, &ev(part(true), 6), &rules);
        }
        assert_eq!(old.status, Status::Deleted);
        assert_eq!((old.deleted_at, old.deletion_pending), (Some(10_000), false));
        assert_eq!(old.base_backups, now.base_backups);
        assert_eq!(old.nodes, now.nodes);
        assert!(tick(&mut old, 2_000_000, &rules).is_empty(), "the migrated deletion stays final, announced once");
    }

    #[test]
    fn past_the_backup_bound_the_same_backups_are_kept_whatever_the_order() {
        let rules = Rules::default();
        let names: Vec<String> = (0..(MAX_BASE_BACKUPS as u64 + 5)).map(|n| format!("base_00000001{:08X}{:08X}_00000028", n >> 8, n & 0xff)).collect();
        let started = |n: &str, t: i64| ev(EventKind::BaseBackupStarted { backup: n.to_string() }, t);
        let mut fwd = InstanceRecord::new("i-1", 0);
        let mut rev = InstanceRecord::new("i-1", 0);
        for (i, n) in names.iter().enumerate() {
            apply(&mut fwd, &started(n, i as i64 * 1000), &rules);
        }
        for (i, n) in names.iter().enumerate().rev() {
            apply(&mut rev, &started(n, i as i64 * 1000), &rules);
            // A line of the oldest again, after it was dropped.
            apply(&mut rev, &started(&names[0], 0), &rules);
        }
        assert_eq!(fwd.base_backups, rev.base_backups);
        assert_eq!(fwd.base_backups.len(), MAX_BASE_BACKUPS);
        assert_eq!(fwd.base_backups[0].name, names[5], "the oldest names go");
    }

    #[test]
    fn segments_are_counted_once_whatever_the_order() {
        let mut ranges = Vec::new();
        let seg = |n: u64| format!("00000001{:08X}{:08X}", n >> 8, n & 0xff);
        let mut n = 0;
        for i in [5u64, 3, 4, 255, 256, 3, 1, 2, 257, 5] {
            n += u64::from(insert_segment(&mut ranges, &seg(i)));
        }
        assert_eq!(n, 8);
        assert_eq!(ranges, vec![(1, 1, 5), (1, 255, 255), (1, 1 << 32, (1 << 32) + 1)]);
    }
}
