//! Building a recovery plan: what will be copied (the [`Selection`]), to where, by which steps, and
//! which guards refuse it. Planning reads only: the store, an S3 listing of source and target.
//!
//! `--before T` (segment-granular): the base backup is the newest complete one whose sentinel
//! LastModified is before T. The WAL copied stops at "the segment in use at T": the segment with the
//! lowest position among those archived (LastModified) at or after T; it and every earlier segment are
//! copied, later ones are not. A restore therefore replays everything up to the end of that segment,
//! which can include writes made after T but before the segment was archived (at most one segment,
//! 16 MiB of WAL, or `archive_timeout`). History files, backup labels and partial segments are copied
//! when archived before T. Other base backups are not copied, so the restore cannot pick a newer one.
//! Without `--before` everything under the source prefix is copied.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{RecoverConfig, StepId};
use crate::adapters::etcd::{recovery_keys, Etcd};
use crate::adapters::platform::{Op, OpContext, Platform};
use crate::adapters::s3::{CopyItem, ObjectInfo, ObjectStore, S3Url, SourcePrefix, TargetPrefix};
use crate::layout::{self, BackupObject, Key, Segment, WalFile};
use crate::query::Access;
use crate::state::{InstanceRecord, Status};
use crate::timeutil::{rfc3339, serde_ms, serde_opt_ms};
use crate::verify::{analyze, human_bytes, BaseBackup, VerifyReport};

/// What will be copied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    #[serde(with = "serde_opt_ms", default)]
    pub before: Option<i64>,
    /// The base backup a restore will use (the newest complete one copied).
    pub base_backup: Option<String>,
    #[serde(with = "serde_opt_ms", default)]
    pub base_backup_completed_at: Option<i64>,
    /// First and last WAL segment copied from the backup's start on.
    pub wal_from: Option<String>,
    pub wal_to: Option<String>,
    pub wal_segments: u64,
    /// With `--before`: the segment in use at that time (the last one copied).
    pub cutoff_segment: Option<String>,
    pub objects: u64,
    pub bytes: u64,
    /// Source objects not copied (other backups, WAL after the cutoff).
    pub excluded_objects: u64,
    /// Every object to copy, relative to the prefixes, sentinels included.
    pub items: Vec<CopyItem>,
    /// The sentinels among `items`, in copy order: by source LastModified, the chosen backup's last, so
    /// it is the newest in the target too (WAL-E's LATEST is the newest sentinel).
    pub sentinels: Vec<String>,
}

/// How the target was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TargetSpec {
    Into { instance_id: String },
    Create { name: Option<String>, space_guid: Option<String> },
    Prefix { url: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSide {
    pub instance_id: String,
    pub prefix: String,
    pub status: String,
    pub name: Option<String>,
    pub org_guid: Option<String>,
    pub space_guid: Option<String>,
    #[serde(with = "serde_opt_ms", default)]
    pub deleted_at: Option<i64>,
    pub deleted_by: Option<String>,
    /// The S3 verification of the source prefix.
    pub verdict: String,
    pub headline: String,
    pub objects: u64,
    pub bytes: u64,
    pub complete_backups: Vec<String>,
    pub incomplete_backups: Vec<String>,
    pub wal_segments: u64,
    /// What the safeguard store recorded about the instance's backups (from the stream).
    pub store_backups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSide {
    pub kind: String,
    pub instance_id: Option<String>,
    pub prefix: Option<String>,
    pub container: Option<String>,
    pub host: Option<String>,
    pub name: Option<String>,
    pub space_guid: Option<String>,
    /// Objects under the target prefix when planned.
    pub objects: Option<u64>,
    pub complete_backups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub step: StepId,
    pub number: String,
    pub title: String,
    pub details: Vec<String>,
    pub destructive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanOptions {
    pub force: bool,
    pub max_target_objects: u64,
    pub concurrency: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// `recover` or `clone`.
    pub mode: String,
    #[serde(with = "serde_ms")]
    pub planned_at: i64,
    pub source: SourceSide,
    pub target_spec: TargetSpec,
    pub target: TargetSide,
    pub selection: Selection,
    pub steps: Vec<PlannedStep>,
    pub bind_apps: Vec<String>,
    pub options: PlanOptions,
    pub etcd_url: Option<String>,
    pub platform: String,
    pub warnings: Vec<String>,
    /// Guards that refuse this plan; nothing runs while any is present.
    pub refusals: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub source_id: String,
    pub target: TargetSpec,
    pub before: Option<i64>,
    pub bind_apps: Vec<String>,
    pub force: bool,
    pub max_target_objects: u64,
    pub concurrency: usize,
}

pub struct PlanEnv<'a> {
    pub access: &'a Access,
    pub s3: &'a ObjectStore,
    pub platform: &'a dyn Platform,
    pub etcd: Option<&'a Etcd>,
    pub cfg: &'a RecoverConfig,
    pub now: i64,
}

/// What a key is to the selection.
enum Part {
    /// An object of a base backup (its sentinel or a file in its folder).
    Backup {
        name: String,
        sentinel: bool,
    },
    Segment(Segment),
    /// Another file in the WAL folder: history, backup label, partial segment, unknown.
    OtherWal,
    Other,
}

fn part(rel: &str) -> Part {
    match layout::classify(rel) {
        Key::Backup { backup, object } => Part::Backup { name: backup.name, sentinel: object == BackupObject::Sentinel },
        Key::Wal(WalFile::Segment(s)) => Part::Segment(s),
        Key::Wal(_) => Part::OtherWal,
        Key::Sysid | Key::Other => Part::Other,
    }
}

/// The base backup to restore: the newest complete one before `before`, else the source's latest.
fn chosen_backup(report: &VerifyReport, before: Option<i64>) -> Option<&BaseBackup> {
    match before {
        Some(t) => report
            .base_backups
            .iter()
            .filter(|b| b.complete && b.partitions > 0 && b.completed_at.is_some_and(|c| c < t))
            .max_by_key(|b| (b.completed_at, b.name.clone())),
        None => report.latest_complete_backup.as_ref().and_then(|n| report.base_backups.iter().find(|b| &b.name == n)),
    }
}

/// The segment in use at `t`: the lowest among those archived at or after it.
fn cutoff_segment(rel: &[(&str, &ObjectInfo)], t: i64) -> Option<Segment> {
    rel.iter()
        .filter_map(|(r, o)| match part(r) {
            Part::Segment(s) if o.last_modified_ms >= t => Some(s),
            _ => None,
        })
        .min_by_key(|s| (s.index(), s.tli))
}

/// Whether an object is copied with `--before t`.
fn kept_before(part: &Part, last_modified_ms: i64, t: i64, chosen: Option<&str>, cutoff: Option<Segment>) -> bool {
    match part {
        Part::Other => true,
        Part::Backup { name, .. } => match chosen {
            Some(c) => name == c,
            None => last_modified_ms < t,
        },
        Part::Segment(s) => match cutoff {
            Some(c) => s.index() <= c.index() && s.tli <= c.tli,
            None => true,
        },
        Part::OtherWal => last_modified_ms < t,
    }
}

/// Chooses the base backup and the objects to copy from a listing of `prefix` (pure).
pub fn select(prefix: &S3Url, objects: &[ObjectInfo], before: Option<i64>, report: &VerifyReport) -> Selection {
    let chosen = chosen_backup(report, before);
    let chosen_name = chosen.map(|b| b.name.as_str());
    let rel: Vec<(&str, &ObjectInfo)> = objects.iter().filter_map(|o| prefix.relative(&o.key).filter(|r| !r.is_empty()).map(|r| (r, o))).collect();
    let cutoff = before.and_then(|t| cutoff_segment(&rel, t));

    let mut items = Vec::new();
    // (LastModified, key, backup)
    let mut sentinels: Vec<(i64, String, String)> = Vec::new();
    let mut excluded = 0u64;
    let mut segs: Vec<Segment> = Vec::new();
    for (r, o) in &rel {
        let p = part(r);
        if before.is_some_and(|t| !kept_before(&p, o.last_modified_ms, t, chosen_name, cutoff)) {
            excluded += 1;
            continue;
        }
        match p {
            Part::Backup { name, sentinel: true } => sentinels.push((o.last_modified_ms, r.to_string(), name)),
            Part::Segment(s) => segs.push(s),
            _ => {}
        }
        items.push(CopyItem { rel: r.to_string(), size: o.size });
    }
    sentinels.sort();
    // The chosen backup's sentinel last, so it is the newest in the target.
    if let Some(i) = chosen_name.and_then(|c| sentinels.iter().position(|s| s.2 == c)) {
        let s = sentinels.remove(i);
        sentinels.push(s);
    }
    let start = chosen.and_then(|b| Segment::parse(&b.start_segment));
    let lineage: Vec<&Segment> = segs.iter().filter(|s| start.is_none_or(|st| s.index() >= st.index() && s.tli >= st.tli)).collect();
    let wal_to = cutoff.or_else(|| lineage.iter().max_by_key(|s| (s.index(), s.tli)).map(|s| **s));
    Selection {
        before,
        base_backup: chosen.map(|b| b.name.clone()),
        base_backup_completed_at: chosen.and_then(|b| b.completed_at),
        wal_from: chosen.map(|b| b.start_segment.clone()),
        wal_to: wal_to.map(|s| s.name()),
        wal_segments: lineage.len() as u64,
        cutoff_segment: cutoff.map(|s| s.name()),
        objects: items.len() as u64,
        bytes: items.iter().map(|i| i.size).sum(),
        excluded_objects: excluded,
        items,
        sentinels: sentinels.into_iter().map(|(_, r, _)| r).collect(),
    }
}

fn store_backups(rec: &InstanceRecord) -> Vec<String> {
    rec.base_backups
        .iter()
        .map(|b| {
            format!(
                "{} {} {} ({} of {} partitions uploaded)",
                b.name,
                if b.pruned {
                    "pruned"
                } else if b.complete {
                    "complete"
                } else {
                    "INCOMPLETE"
                },
                b.time.map(rfc3339).unwrap_or_default(),
                b.partitions_done,
                b.partitions_started
            )
        })
        .collect()
}

/// The target instance's container and cell, from its newest active node.
pub fn container_of(rec: &InstanceRecord) -> (Option<String>, Option<String>) {
    match rec.active_nodes().last() {
        Some(n) => (Some(n.container.clone()), n.host.clone()),
        None => (None, None),
    }
}

/// The WAL-E prefix of instance `id` in the same bucket and layout as `source`.
pub fn sibling_prefix(source: &S3Url, source_id: &str, id: &str) -> S3Url {
    let key = source.key.replacen(source_id, id, 1);
    if key != source.key {
        S3Url { bucket: source.bucket.clone(), key }
    } else {
        S3Url::instance_prefix(&source.bucket, id).unwrap_or_else(|_| S3Url { bucket: source.bucket.clone(), key: format!("backups/{id}/wal/") })
    }
}

fn q(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("?")
}

/// Builds the plan. Errors only when planning itself is impossible (store or S3 unreadable, unknown
/// source); guard failures become `refusals`.
pub async fn build(req: &PlanRequest, env: &PlanEnv<'_>) -> anyhow::Result<Plan> {
    use anyhow::Context;
    let mut warnings = Vec::new();
    let mut refusals = Vec::new();
    let source_id = req.source_id.to_ascii_lowercase();
    let rec = env.access.record(&source_id)?.with_context(|| {
        format!("no instance {source_id} in the store; list known ids with `safeguard instances --deleted`, or ingest older logs with `safeguard ingest`")
    })?;
    let prefix_s = rec.backup_prefix.clone().with_context(|| {
        format!("no backup prefix is recorded for {source_id} (no WAL-E line of it was seen), so its backups cannot be located; check `safeguard verify {source_id} --prefix s3://<bucket>/backups/{source_id}/wal/` and recover with --to-prefix from a known prefix")
    })?;
    let source_url = S3Url::parse(&prefix_s).with_context(|| format!("the recorded backup prefix {prefix_s:?} of {source_id} is not an S3 URL"))?;
    let source = SourcePrefix::new(source_url.clone());
    let listing = env.s3.list_source(&source).await.with_context(|| format!("listing the source backups {source_url}"))?;
    let report = analyze(&source_url, &listing, env.now);
    let selection = select(&source_url, &listing, req.before, &report);

    let complete: Vec<String> = report
        .base_backups
        .iter()
        .filter(|b| b.complete && b.partitions > 0)
        .map(|b| format!("{} completed {}", b.name, b.completed_at.map(rfc3339).unwrap_or_default()))
        .collect();
    let incomplete: Vec<String> = report
        .base_backups
        .iter()
        .filter(|b| !(b.complete && b.partitions > 0))
        .map(|b| format!("{} ({} partitions, no sentinel)", b.name, b.partitions))
        .collect();
    let source_side = SourceSide {
        instance_id: source_id.clone(),
        prefix: source_url.to_string(),
        status: match (rec.status, rec.deletion_pending) {
            (Status::Live, _) => "live".into(),
            (Status::Deleted, true) => "deleted (pending grace)".into(),
            (Status::Deleted, false) => "deleted".into(),
        },
        name: rec.name.clone(),
        org_guid: rec.org_guid.clone(),
        space_guid: rec.space_guid.clone(),
        deleted_at: rec.deleted_at,
        deleted_by: rec.deleted_by.clone(),
        verdict: report.verdict.as_str().to_string(),
        headline: report.headline(),
        objects: report.objects,
        bytes: report.bytes,
        complete_backups: complete.clone(),
        incomplete_backups: incomplete.clone(),
        wal_segments: report.wal.segments,
        store_backups: store_backups(&rec),
    };
    if rec.status == Status::Live {
        warnings.push(format!("the source {source_id} is not recorded as deleted; recovering from a live instance's backups clones it"));
    }
    match (&selection.base_backup, req.before) {
        (None, before) if !req.force => {
            let what_s3 = format!(
                "{} objects, {} complete base backup(s){}, {} incomplete{}, {} WAL segment(s)",
                report.objects,
                complete.len(),
                if complete.is_empty() { String::new() } else { format!(" ({})", complete.join("; ")) },
                incomplete.len(),
                if incomplete.is_empty() { String::new() } else { format!(" ({})", incomplete.join("; ")) },
                report.wal.segments
            );
            let what_store =
                if source_side.store_backups.is_empty() { "no base backup seen in the stream".to_string() } else { source_side.store_backups.join("; ") };
            let when = match before {
                Some(t) => format!(" completed before {}", rfc3339(t)),
                None => String::new(),
            };
            refusals.push(format!(
                "the source {source_url} has no complete base backup{when} (verdict {}): S3 holds {what_s3}; the safeguard store recorded {what_store}. A restore from it cannot produce a database. Pass --force to copy it anyway{}",
                report.verdict.as_str(),
                if before.is_some() { ", or choose a later --before" } else { "" }
            ));
        }
        (None, _) => warnings.push("--force: the source has no complete base backup; the copy cannot be restored by itself".into()),
        (Some(_), _) if !report.verdict.is_restorable() && req.before.is_none() => warnings.push(format!("the source verification says {}", report.headline())),
        _ => {}
    }
    if let Some(c) = report.continuity.as_ref().filter(|c| !c.gaps.is_empty()) {
        warnings.push(format!(
            "the source WAL has {} missing segment(s); replay stops at {}",
            c.missing_segments,
            c.replayable_until_segment.as_deref().unwrap_or("?")
        ));
    }

    // The target.
    let mode = if matches!(req.target, TargetSpec::Prefix { .. }) { "clone" } else { "recover" };
    let mut target = TargetSide {
        kind: String::new(),
        instance_id: None,
        prefix: None,
        container: None,
        host: None,
        name: None,
        space_guid: None,
        objects: None,
        complete_backups: Vec::new(),
    };
    let mut target_url: Option<S3Url> = None;
    match &req.target {
        TargetSpec::Into { instance_id } => {
            let tid = instance_id.to_ascii_lowercase();
            target.kind = "into".into();
            target.instance_id = Some(tid.clone());
            if tid == source_id {
                refusals.push(format!("the target {tid} is the source itself; create a new instance (or pass --create) and recover into that"));
            }
            match env.access.record(&tid)? {
                Some(t) => {
                    if t.status == Status::Deleted {
                        refusals.push(format!(
                            "the target {tid} is recorded as deleted ({}); create a new instance and pass its id",
                            t.deleted_by.as_deref().unwrap_or("")
                        ));
                    }
                    let (c, h) = container_of(&t);
                    target.container = c;
                    target.host = h;
                    target.name = t.name.clone();
                    target.space_guid = t.space_guid.clone().or_else(|| rec.space_guid.clone());
                    target_url = Some(match &t.backup_prefix {
                        Some(p) => S3Url::parse(p).unwrap_or_else(|_| sibling_prefix(&source_url, &source_id, &tid)),
                        None => sibling_prefix(&source_url, &source_id, &tid),
                    });
                    if target.container.is_none() || target.host.is_none() {
                        warnings.push(format!(
                            "the container or cell of {tid} is not known yet; step 2 waits up to {} for the watcher to see them",
                            humantime::format_duration(env.cfg.target_wait)
                        ));
                    }
                }
                None => {
                    warnings.push(format!(
                        "{tid} is not in the store yet; step 2 waits up to {} for the watcher to see its container and cell",
                        humantime::format_duration(env.cfg.target_wait)
                    ));
                    target.space_guid = rec.space_guid.clone();
                    target_url = Some(sibling_prefix(&source_url, &source_id, &tid));
                }
            }
        }
        TargetSpec::Create { name, space_guid } => {
            target.kind = "create".into();
            target.name = name.clone().or_else(|| rec.name.clone());
            target.space_guid = space_guid.clone().or_else(|| rec.space_guid.clone());
            if target.name.is_none() {
                refusals.push(format!("no name is recorded for {source_id}; pass --name for the new instance"));
            }
            if target.space_guid.is_none() {
                refusals.push(format!("no space is recorded for {source_id}; pass --space-guid for the new instance"));
            }
            target.prefix = Some(sibling_prefix(&source_url, &source_id, "<new-instance-id>").to_string());
        }
        TargetSpec::Prefix { url } => {
            target.kind = "prefix".into();
            match S3Url::parse(url) {
                Ok(u) => target_url = Some(u),
                Err(e) => refusals.push(format!("--to-prefix: {e}")),
            }
        }
    }
    if let Some(u) = &target_url {
        target.prefix = Some(u.to_string());
        match TargetPrefix::new(u.clone(), &source) {
            Err(e) => refusals.push(e.to_string()),
            Ok(tp) => {
                let objs = env.s3.list_target(&tp).await.with_context(|| format!("listing the target prefix {u}"))?;
                let trep = analyze(u, &objs, env.now);
                target.objects = Some(objs.len() as u64);
                target.complete_backups = trep.base_backups.iter().filter(|b| b.complete).map(|b| b.name.clone()).collect();
                if !target.complete_backups.is_empty() {
                    refusals.push(format!(
                        "the target {u} holds {} complete base backup(s) ({}): it is not a fresh instance's prefix, and replacing it would destroy that backup. Check the target id; if that backup really must go, move it away yourself first",
                        target.complete_backups.len(),
                        target.complete_backups.join(", ")
                    ));
                }
                if objs.len() as u64 > req.max_target_objects {
                    refusals.push(format!(
                        "the target {u} holds {} objects, more than the bound of {} (a fresh instance holds about 6): check the target; raise recover.max_target_objects or --max-target-objects only if you are sure",
                        objs.len(),
                        req.max_target_objects
                    ));
                }
            }
        }
    }
    if mode == "recover" && env.etcd.is_none() {
        refusals.push(
            "no [etcd] section in the config: step 5 must delete the target's /initialize and /optime/leader keys; add [etcd] url = \"http://<etcd>:4001\""
                .into(),
        );
    }
    if mode == "recover" && !matches!(env.access, Access::Watcher { .. }) {
        warnings.push("no watcher is running on this store, so step 8 cannot see the restore in the stream; start `safeguard watch` (with the platform's syslog) before executing".into());
    }

    // Steps.
    let tid_s = target.instance_id.clone().unwrap_or_else(|| "<new-instance-id>".into());
    let ctx = OpContext {
        instance_id: Some(&tid_s),
        container: target.container.as_deref(),
        host: target.host.as_deref(),
        name: target.name.as_deref(),
        space_guid: target.space_guid.as_deref(),
        app: None,
    };
    let tprefix = target.prefix.clone().unwrap_or_else(|| "?".into());
    let mut steps = Vec::new();
    let mut add = |step: StepId, title: String, details: Vec<String>| {
        steps.push(PlannedStep { step, number: step.number().into(), title, details, destructive: step.destructive() });
    };
    add(
        StepId::Source,
        format!("verify the source {source_url} again"),
        vec![format!("refuse unless the {} planned objects are still there with the same sizes", selection.objects)],
    );
    if mode == "recover" {
        let t = match &req.target {
            TargetSpec::Create { .. } => vec![
                env.platform.describe(Op::Create, &ctx),
                format!("then wait up to {} for the new instance's container and cell to appear in the store", humantime::format_duration(env.cfg.target_wait)),
            ],
            _ => vec![format!(
                "use {tid_s}: container {} on cell {} (waits up to {} when not yet known)",
                q(&target.container),
                q(&target.host),
                humantime::format_duration(env.cfg.target_wait)
            )],
        };
        add(StepId::Target, format!("target instance {tid_s}"), t);
        add(StepId::Stop, format!("stop container {} on cell {}", q(&target.container), q(&target.host)), vec![env.platform.describe(Op::Stop, &ctx)]);
    }
    add(
        StepId::ClearTarget,
        format!("delete the target's own objects under {tprefix}"),
        vec![
            format!(
                "{} object(s) there now; refused if it holds a complete base backup or more than {} objects, or overlaps the source",
                target.objects.map_or("?".into(), |n| n.to_string()),
                req.max_target_objects
            ),
            "DeleteObjects in batches of 1000; the source is never touched".into(),
        ],
    );
    let mut copy_details = vec![
        format!("{} objects, {} from {source_url}", selection.objects, human_bytes(selection.bytes)),
        format!(
            "to {tprefix}, server-side CopyObject ({} at a time, multipart above {} MiB), retries with backoff",
            req.concurrency,
            env.cfg.multipart_threshold_mb.min(5120)
        ),
    ];
    if let Some(b) = &selection.base_backup {
        copy_details.push(format!(
            "base backup {b} (completed {}), WAL {} .. {} ({} segment(s))",
            selection.base_backup_completed_at.map(rfc3339).unwrap_or_default(),
            q(&selection.wal_from),
            q(&selection.wal_to),
            selection.wal_segments
        ));
    }
    if let Some(t) = selection.before {
        copy_details.push(format!(
            "--before {}: segment in use then {} (segment-granular: replay runs to its end); {} newer object(s) not copied",
            rfc3339(t),
            selection.cutoff_segment.as_deref().unwrap_or("(none archived after it: all WAL)"),
            selection.excluded_objects
        ));
    }
    if selection.sentinels.len() > 1 {
        copy_details.push(format!(
            "{} backup sentinels copied last, {} last of all so it is the target's newest",
            selection.sentinels.len(),
            selection.sentinels.last().map(String::as_str).unwrap_or("")
        ));
    }
    add(StepId::Copy, "copy the backups".into(), copy_details);
    add(
        StepId::VerifyCopy,
        format!("verify {tprefix} equals the copied set"),
        vec!["same keys relative to the prefixes and same sizes, and the chosen base backup is the target's latest".into()],
    );
    if mode == "recover" {
        let e = env.etcd.map_or_else(|| "<no [etcd] configured>".to_string(), |e| e.url().to_string());
        add(
            StepId::Etcd,
            format!("delete the target's Patroni keys in etcd {e}"),
            recovery_keys(&tid_s).iter().map(|k| format!("DELETE {e}/v2/keys{k} (absent is fine)")).collect(),
        );
        add(StepId::Flush, format!("empty the data directory of {}", q(&target.container)), vec![env.platform.describe(Op::Flush, &ctx)]);
        add(StepId::Start, format!("start container {}", q(&target.container)), vec![env.platform.describe(Op::Start, &ctx)]);
        add(
            StepId::Confirm,
            format!("wait up to {} for the restore in the stream", humantime::format_duration(env.cfg.confirm_timeout)),
            vec![format!("`restore_leader_if_missing> preparing patroni to restore this container from wal-e backups` and a completed wal-fetch from {tid_s}")],
        );
        if !req.bind_apps.is_empty() {
            let details = req.bind_apps.iter().map(|a| env.platform.describe(Op::Bind, &OpContext { app: Some(a), ..ctx.clone() })).collect();
            add(StepId::Bind, format!("bind {} again", req.bind_apps.join(", ")), details);
        }
    }

    Ok(Plan {
        mode: mode.into(),
        planned_at: env.now,
        source: source_side,
        target_spec: req.target.clone(),
        target,
        selection,
        steps,
        bind_apps: req.bind_apps.clone(),
        options: PlanOptions { force: req.force, max_target_objects: req.max_target_objects, concurrency: req.concurrency },
        etcd_url: env.etcd.map(|e| e.url().to_string()),
        platform: env.platform.kind().to_string(),
        warnings,
        refusals,
    })
}

impl Plan {
    pub fn render_text(&self, header: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{header}");
        let src = &self.source;
        let _ = writeln!(
            s,
            "Source  {}  {}{}",
            src.instance_id,
            src.status.to_uppercase(),
            src.deleted_at.map(|d| format!(" at {}", rfc3339(d))).unwrap_or_default()
        );
        if let Some(n) = &src.name {
            let _ = writeln!(s, "        name {n:?}  org {}  space {}", q(&src.org_guid), q(&src.space_guid));
        }
        let _ = writeln!(s, "        {}", src.headline);
        let _ = writeln!(
            s,
            "        {} objects, {}, {} WAL segment(s), complete base backups: {}",
            src.objects,
            human_bytes(src.bytes),
            src.wal_segments,
            if src.complete_backups.is_empty() { "none".into() } else { src.complete_backups.join("; ") }
        );
        let t = &self.target;
        match t.kind.as_str() {
            "prefix" => {
                let _ = writeln!(s, "Target  prefix {}", q(&t.prefix));
            }
            "create" => {
                let _ = writeln!(s, "Target  a NEW instance {:?} (solo plan) in space {}", q(&t.name), q(&t.space_guid));
                let _ = writeln!(s, "        backups at {}", q(&t.prefix));
            }
            _ => {
                let _ = writeln!(s, "Target  {}  container {} on cell {}", q(&t.instance_id), q(&t.container), q(&t.host));
                let _ = writeln!(s, "        backups at {}", q(&t.prefix));
            }
        }
        if let Some(n) = t.objects {
            let _ = writeln!(
                s,
                "        {n} object(s) there now{}",
                if t.complete_backups.is_empty() { String::new() } else { format!(", complete base backups: {}", t.complete_backups.join(", ")) }
            );
        }
        let _ = writeln!(s, "Steps");
        for st in &self.steps {
            let _ = writeln!(s, "  {:<3} {:<12} {}{}", st.number, st.step.as_str(), st.title, if st.destructive { "" } else { "  (read only)" });
            for d in &st.details {
                let _ = writeln!(s, "                   {d}");
            }
        }
        for w in &self.warnings {
            let _ = writeln!(s, "WARNING: {w}");
        }
        for r in &self.refusals {
            let _ = writeln!(s, "REFUSED: {r}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "a1111111-1111-4111-8111-111111111111";

    fn seg(n: u32) -> Segment {
        Segment { tli: 1, log: 0, seg: n }
    }

    fn at(prefix: &S3Url, rel: &str, size: u64, lm: i64) -> ObjectInfo {
        ObjectInfo { key: prefix.join(rel).key, size, last_modified_ms: lm }
    }

    /// A base backup starting in segment `start`, its sentinel written at `done`.
    fn backup(p: &S3Url, start: u32, started: i64, done: Option<i64>) -> Vec<ObjectInfo> {
        let name = layout::backup_name(&seg(start), "00000028");
        let mut v = vec![at(p, &layout::extended_version(&name), 5, started), at(p, &layout::partition(&name, 0), 50, started)];
        v.extend(done.map(|t| at(p, &layout::sentinel(&name), 5, t)));
        v
    }

    fn src_prefix() -> S3Url {
        S3Url::instance_prefix("bkt", SRC).unwrap()
    }

    #[test]
    fn before_picks_backup_and_cuts_wal() {
        let p = S3Url::parse("s3://b/backups/a/wal/").unwrap();
        let s = |n: u32| layout::wal_segment(&seg(n));
        let name = |n: u32| layout::backup_name(&seg(n), "00000028");
        let mut objs = vec![at(&p, layout::SYSID, 5, 0)];
        objs.extend(backup(&p, 2, 1000, Some(2000)));
        objs.extend([(1, 900), (2, 1900), (3, 3000), (4, 5000), (5, 6000), (6, 9000)].map(|(n, lm)| at(&p, &s(n), 16, lm)));
        objs.extend(backup(&p, 5, 6000, Some(7000)));
        let rep = analyze(&p, &objs, 10_000);
        let all = select(&p, &objs, None, &rep);
        assert_eq!(all.objects, objs.len() as u64);
        assert_eq!(all.base_backup, Some(name(5)));
        assert_eq!(all.sentinels, [layout::sentinel(&name(2)), layout::sentinel(&name(5))]);

        // At 4000: backup 2 (completed 2000) and WAL up to segment 4 (the first archived after 4000).
        let sel = select(&p, &objs, Some(4000), &rep);
        assert_eq!(sel.base_backup, Some(name(2)));
        assert_eq!(sel.cutoff_segment, Some(seg(4).name()));
        let rels: Vec<&str> = sel.items.iter().map(|i| i.rel.as_str()).collect();
        assert!(rels.contains(&s(4).as_str()) && !rels.contains(&s(5).as_str()) && !rels.contains(&s(6).as_str()));
        assert!(rels.iter().all(|r| !r.contains(&name(5))));
        assert_eq!(sel.sentinels, [layout::sentinel(&name(2))]);
        assert_eq!(sel.wal_from, Some(seg(2).name()));
        assert_eq!(sel.wal_to, Some(seg(4).name()));
        assert_eq!(sel.wal_segments, 3);
        assert_eq!(sel.excluded_objects, 5);

        // Before any backup completed: nothing to choose.
        assert!(select(&p, &objs, Some(1500), &rep).base_backup.is_none());
    }

    #[test]
    fn the_chosen_sentinel_is_copied_last_even_when_older() {
        let p = src_prefix();
        // Backup 5 has the newest sentinel but no partitions, so it cannot be fetched: backup 2 is chosen,
        // and its sentinel must still end up the newest in the target.
        let mut objs = backup(&p, 2, 1000, Some(2000));
        let b5 = layout::backup_name(&seg(5), "00000028");
        objs.extend([at(&p, &layout::extended_version(&b5), 5, 2500), at(&p, &layout::sentinel(&b5), 5, 3000)]);
        objs.extend((2..=6).map(|n| at(&p, &layout::wal_segment(&seg(n)), 16, 100 * n as i64)));
        let rep = analyze(&p, &objs, 10_000);
        let b2 = layout::backup_name(&seg(2), "00000028");
        let sel = select(&p, &objs, None, &rep);
        assert_eq!(sel.base_backup.as_deref(), Some(b2.as_str()));
        assert_eq!(sel.sentinels, [layout::sentinel(&b5), layout::sentinel(&b2)]);
    }

    #[test]
    fn sibling_prefixes() {
        let p = S3Url::parse("s3://b/backups/a1/wal/").unwrap();
        assert_eq!(sibling_prefix(&p, "a1", "c2").to_string(), "s3://b/backups/c2/wal/");
    }
}
