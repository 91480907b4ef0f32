//! Pure instance state: [`apply`] folds one attributed event into an [`InstanceRecord`] and returns the
//! [`Effect`]s it causes; [`tick`] advances time (a deletion becomes final after the grace). No I/O.

pub mod risk;

use serde::{Deserialize, Serialize};

use crate::parse::{wale::is_segment, Event, EventKind, Phase, PushState, RestoreMsg};
use crate::timeutil::{serde_ms, serde_opt_ms};

/// How many base backups a record keeps (newest first kept); daily backups for months would otherwise grow
/// the record without bound. Pruned backups are dropped first.
pub const MAX_BASE_BACKUPS: usize = 64;
/// Nodes removed long ago are dropped past this many.
pub const MAX_NODES: usize = 32;

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
    pub segments_pushed: u64,
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
    /// WAL-E reported it could not find the object it was fetching: its next "complete" is not a fetch.
    #[serde(default)]
    pub fetch_missing: bool,
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
    /// How many events have been applied to this record.
    pub events_applied: u64,
}

/// What applying an event caused; the store commits effects in the same batch as the state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// The instance looks deleted; final after the grace unless a node is added again.
    DeletionPending { instance_id: String, #[serde(with = "serde_ms")] at: i64, evidence: String },
    DeletionCancelled { instance_id: String, #[serde(with = "serde_ms")] at: i64 },
    /// Final: the instance was deleted at `at` (its episode key).
    InstanceDeleted { instance_id: String, #[serde(with = "serde_ms")] at: i64, evidence: String, has_complete_base_backup: bool },
    /// Restore of this instance from backups seen in the stream.
    RestoreSeen { instance_id: String, #[serde(with = "serde_ms")] at: i64 },
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

impl InstanceRecord {
    pub fn new(instance_id: &str, t: i64) -> Self {
        InstanceRecord { instance_id: instance_id.to_string(), first_seen: t, last_seen: t, ..Default::default() }
    }

    pub fn node_mut(&mut self, uuid: &str) -> &mut Node {
        let i = match self.nodes.iter().position(|n| n.node_uuid == uuid) {
            Some(i) => i,
            None => {
                self.nodes.push(Node::new(uuid));
                if self.nodes.len() > MAX_NODES {
                    if let Some(old) = self.nodes.iter().position(|n| !n.active()) {
                        self.nodes.remove(old);
                    }
                }
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i]
    }

    fn backup_mut(&mut self, name: &str, t: i64) -> &mut BaseBackup {
        let i = match self.base_backups.iter().position(|b| b.name == name) {
            Some(i) => i,
            None => {
                self.base_backups.push(BaseBackup { name: name.to_string(), time: Some(t), ..Default::default() });
                // Backup names sort by start segment, so the list stays chronological.
                self.base_backups.sort_by(|a, b| a.name.cmp(&b.name));
                while self.base_backups.len() > MAX_BASE_BACKUPS {
                    let drop = self.base_backups.iter().position(|b| b.pruned).unwrap_or(0);
                    self.base_backups.remove(drop);
                }
                return self.base_backups.iter_mut().find(|b| b.name == name).expect("just inserted");
            }
        };
        &mut self.base_backups[i]
    }

    pub fn latest_complete_backup(&self) -> Option<&BaseBackup> {
        self.base_backups.iter().rev().find(|b| b.complete && !b.pruned)
    }

    pub fn active_nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.active())
    }

    fn mark_deleted(&mut self, t: i64, evidence: String, effects: &mut Vec<Effect>) {
        if self.status == Status::Deleted {
            return;
        }
        self.status = Status::Deleted;
        self.deleted_at = Some(t);
        self.deleted_by = Some(evidence.clone());
        self.deletion_pending = true;
        effects.push(Effect::DeletionPending { instance_id: self.instance_id.clone(), at: t, evidence });
    }

    fn revive(&mut self, t: i64, rules: &Rules, effects: &mut Vec<Effect>) {
        if self.status != Status::Deleted {
            return;
        }
        let within_grace = self.deleted_at.is_some_and(|d| t - d <= rules.deletion_grace_ms);
        if self.deletion_pending && within_grace {
            effects.push(Effect::DeletionCancelled { instance_id: self.instance_id.clone(), at: t });
        }
        // A node added after a final deletion means the id is in use again; the deletion alert stands.
        self.status = Status::Live;
        self.deleted_at = None;
        self.deleted_by = None;
        self.deletion_pending = false;
    }
}

/// Applies one event (already attributed to `rec`) and returns its effects. Idempotent in the sense the
/// store relies on: applying the same event twice in a row changes nothing further except counters that
/// the store guards by source position.
pub fn apply(rec: &mut InstanceRecord, ev: &Event<'_>, rules: &Rules) -> Vec<Effect> {
    let mut effects = Vec::new();
    let t = ev.time.unwrap_or(rec.last_seen);
    rec.events_applied += 1;
    if rec.first_seen == 0 || t < rec.first_seen {
        rec.first_seen = t;
    }
    rec.last_seen = rec.last_seen.max(t);
    if let Some(p) = &ev.backup_prefix {
        if rec.backup_prefix.as_deref() != Some(&**p) {
            rec.backup_prefix = Some(p.to_string());
        }
    }
    // A line printed inside a container tells us the node and its cell.
    if let Some(n) = &ev.node_uuid {
        let host_is_cell = !matches!(ev.kind, EventKind::ContainerCreating | EventKind::ContainerDestroying);
        let node = rec.node_mut(n);
        if host_is_cell && !ev.host.is_empty() && node.host.as_deref() != Some(&*ev.host) {
            node.host = Some(ev.host.to_string());
        }
    }

    match &ev.kind {
        EventKind::Provision { org_guid, space_guid, plan_id, name, .. } => {
            set_if(&mut rec.org_guid, org_guid);
            set_if(&mut rec.space_guid, space_guid);
            set_if(&mut rec.plan_id, plan_id);
            set_if(&mut rec.name, name);
        }
        EventKind::Deprovision { phase } => {
            let what = if *phase == Phase::Start { "deprovision.start" } else { "deprovision.done" };
            rec.mark_deleted(t, format!("broker {what}"), &mut effects);
        }
        EventKind::EtcdDeleted => rec.mark_deleted(t, "broker etcd-delete.done".into(), &mut effects),
        EventKind::Update { phase: Phase::Start } => rec.update_started_at = Some(t),
        EventKind::Update { phase: Phase::Done } => rec.update_started_at = None,
        EventKind::AddNode { node_uuid, backend } => {
            if let Some(n) = node_uuid {
                let node = rec.node_mut(n);
                node.added_at = Some(t);
                node.removed_at = None;
                set_if(&mut node.backend, backend);
            }
            rec.revive(t, rules, &mut effects);
        }
        EventKind::RemoveNode { node_uuid, backend } => {
            let evidence = match node_uuid {
                Some(n) => {
                    let node = rec.node_mut(n);
                    node.removed_at = Some(t);
                    set_if(&mut node.backend, backend);
                    format!("remove-node.perform of its last node {n}")
                }
                None => "remove-node.perform of its last node".to_string(),
            };
            let updating = rec.update_started_at.is_some_and(|u| t - u <= rules.update_window_ms);
            if rec.active_nodes().next().is_none() && !updating {
                rec.mark_deleted(t, evidence, &mut effects);
            }
        }
        EventKind::CopyBackup { from_instance, .. } => rec.cloned_from = Some(from_instance.clone()),
        EventKind::ContainerCreating => {
            if let Some(n) = &ev.node_uuid {
                rec.node_mut(n).added_at.get_or_insert(t);
            }
        }
        EventKind::ContainerRegistered { .. } | EventKind::PublicAddress { .. } => {
            if let (Some(n), EventKind::PublicAddress { address }) = (&ev.node_uuid, &ev.kind) {
                rec.node_mut(n).public_address = Some(address.clone());
            }
        }
        EventKind::WalPush { segment, state: PushState::Complete } if is_segment(segment) => {
            // DETAIL and STRUCTURED lines report the same push: count a segment once.
            if rec.wal.last_segment.as_deref() != Some(segment) {
                rec.wal.segments_pushed += 1;
            }
            match &mut rec.wal.last_segment {
                // Reuses the buffer: this runs for every segment pushed.
                Some(l) if segment.as_str() > l.as_str() => l.clone_from(segment),
                Some(_) => {}
                None => rec.wal.last_segment = Some(segment.clone()),
            }
            rec.wal.last_pushed_at = Some(rec.wal.last_pushed_at.map_or(t, |p| p.max(t)));
        }
        EventKind::WalPushFailed { detail } => {
            // PostgreSQL's failure line and WAL-E's CRITICAL for one attempt arrive together.
            if rec.wal.last_failure_at != Some(t) {
                rec.wal.push_failures += 1;
            }
            rec.wal.last_failure_at = Some(t);
            rec.wal.last_failure = Some(detail.clone());
        }
        EventKind::WalERetry => rec.wal.retries += 1,
        EventKind::BaseBackupStarted { backup } => {
            rec.backup_mut(backup, t);
        }
        EventKind::BasePartition { backup, done, .. } => {
            let b = rec.backup_mut(backup, t);
            if *done {
                b.partitions_done += 1;
            } else {
                b.partitions_started += 1;
            }
        }
        EventKind::BaseBackupStopped => {
            // Completes the newest backup whose upload was seen and not yet completed.
            if let Some(b) = rec.base_backups.iter_mut().rev().find(|b| !b.complete && !b.pruned) {
                b.complete = true;
                b.time = Some(t);
            }
        }
        EventKind::BaseBackupListed { backup, time } => {
            let b = rec.backup_mut(backup, t);
            if !b.complete {
                b.complete = true;
                b.time = time.or(Some(t));
            }
        }
        EventKind::BackupPruned { backup } => {
            if let Some(b) = rec.base_backups.iter_mut().find(|b| &b.name == backup) {
                b.pruned = true;
            }
        }
        EventKind::SysidUploaded => rec.sysid_uploaded = true,
        EventKind::Restore { msg } => {
            rec.restore.last_message = Some(*msg);
            if *msg == RestoreMsg::PreparingRestore {
                rec.restore.preparing_at = Some(t);
                effects.push(Effect::RestoreSeen { instance_id: rec.instance_id.clone(), at: t });
            }
        }
        EventKind::PartitionDownload { .. } => rec.restore.partitions_downloaded += 1,
        // WAL-E logs `state=complete` also for a file it did not find (the `.history` probe at the start
        // of every recovery, the segment after the last one at its end): count real segments only.
        EventKind::WalRestoreEnd => rec.restore.fetch_missing = true,
        EventKind::WalFetch { segment, state: PushState::Complete } => {
            if std::mem::take(&mut rec.restore.fetch_missing) || !is_segment(segment) {
                return effects;
            }
            rec.restore.wal_fetched += 1;
            rec.restore.last_wal_fetch_at = Some(t);
        }
        _ => {}
    }
    effects
}

/// Makes pending deletions final once the grace has passed.
pub fn tick(rec: &mut InstanceRecord, now: i64, rules: &Rules) -> Vec<Effect> {
    match (rec.status, rec.deletion_pending, rec.deleted_at) {
        (Status::Deleted, true, Some(at)) if now - at >= rules.deletion_grace_ms => {
            rec.deletion_pending = false;
            vec![Effect::InstanceDeleted {
                instance_id: rec.instance_id.clone(),
                at,
                evidence: rec.deleted_by.clone().unwrap_or_default(),
                has_complete_base_backup: rec.latest_complete_backup().is_some(),
            }]
        }
        _ => Vec::new(),
    }
}

fn set_if(slot: &mut Option<String>, v: &Option<String>) {
    if let Some(v) = v {
        *slot = Some(v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, t: i64) -> Event<'static> {
        Event { time: Some(t), host: "cell".into(), node_uuid: None, short_id: None, instance: Some("i-1".into()), backup_prefix: None, kind }
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
        apply(&mut r, &ev(fetch("000000010000000000000005"), 4), &rules);
        assert_eq!(r.restore.wal_fetched, 2);
        assert_eq!(r.restore.last_wal_fetch_at, Some(4));
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
}
