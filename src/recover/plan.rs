//! Building a recovery plan: what will be copied (the [`Selection`]), to where, by which steps, and
//! which guards refuse it. [`plan`] is pure: it reads only its [`PlanInputs`] (the stored records, the
//! S3 listings and the settings that [`super::gather`] collected, and the time), does no I/O and reads
//! no clock, so the same inputs always give the same plan.
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
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::StepId;
use crate::adapters::etcd::recovery_keys;
use crate::adapters::platform::{Op, OpContext, Platform};
use crate::adapters::s3::{CopyItem, ObjectInfo, S3Url, S3UrlError, SourcePrefix, TargetPrefix};
use crate::layout::{self, BackupObject, Key, Segment, WalFile};
use crate::state::{InstanceRecord, Status};
use crate::timeutil::{rfc3339, serde_ms, serde_opt_ms};
use crate::verify::{analyze, human_bytes, BaseBackup, VerifyReport};

/// What a recovery does, from how its target was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Into an instance (`--into`, or one made with `--create`): every step, 1 to 9.
    Recover,
    /// `--to-prefix`: only the copy to a prefix (steps 1, 4a, 4b, 4c), for restoring elsewhere.
    Clone,
}

impl Mode {
    pub fn of(target: &TargetSpec) -> Mode {
        match target {
            TargetSpec::Prefix { .. } => Mode::Clone,
            TargetSpec::Into { .. } | TargetSpec::Create { .. } => Mode::Recover,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Recover => "recover",
            Mode::Clone => "clone",
        }
    }

    /// Whether the steps that act on an instance (target, stop, etcd, flush, start, confirm, bind) run.
    pub fn acts_on_instance(self) -> bool {
        self == Mode::Recover
    }
}

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

/// [`TargetSpec`]'s kind, as the plan shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    Into,
    Create,
    Prefix,
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
    pub kind: TargetKind,
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

impl TargetSide {
    fn new(kind: TargetKind) -> TargetSide {
        TargetSide {
            kind,
            instance_id: None,
            prefix: None,
            container: None,
            host: None,
            name: None,
            space_guid: None,
            objects: None,
            complete_backups: Vec::new(),
        }
    }
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
    pub mode: Mode,
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

/// What the operator asked for.
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

/// What the plan needs of the platform: its kind and what each operation will do, for the step
/// details. Both are pure; the plan never runs an operation.
pub trait DescribeOps {
    fn kind(&self) -> &'static str;
    fn describe(&self, op: Op, ctx: &OpContext<'_>) -> String;
}

/// The configured platform, seen only through its descriptions.
pub struct PlatformOps<'a>(pub &'a dyn Platform);

impl DescribeOps for PlatformOps<'_> {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    fn describe(&self, op: Op, ctx: &OpContext<'_>) -> String {
        self.0.describe(op, ctx)
    }
}

/// The deleted (source) instance as gathered: its record, where its backups are and what is there.
#[derive(Debug, Clone)]
pub struct SourceFacts {
    /// Lower case.
    pub id: String,
    pub record: InstanceRecord,
    /// The recorded backup prefix.
    pub prefix: S3Url,
    pub listing: Vec<ObjectInfo>,
}

/// The settings the plan shows (from `[recover]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSettings {
    pub target_wait: Duration,
    pub confirm_timeout: Duration,
    pub multipart_threshold_mb: u64,
}

/// Everything [`plan`] reads. [`super::gather`] fills it from the store, S3 and the config.
pub struct PlanInputs<'a> {
    pub request: PlanRequest,
    /// When the plan is made; the source's verification is judged at it.
    pub now: i64,
    pub source: SourceFacts,
    /// With `--into`: the target instance's record, when the store knows it.
    pub target_record: Option<InstanceRecord>,
    /// The listing of [`target_prefix`] when it is a valid target (None when it is not, or there is none).
    pub target_listing: Option<Vec<ObjectInfo>>,
    /// The configured etcd (`[etcd] url`), if any; the plan shows it redacted.
    pub etcd_url: Option<String>,
    /// A watcher runs on the store, so step 8 can see the restore in the stream.
    pub watcher_running: bool,
    pub settings: PlanSettings,
    pub platform: Box<dyn DescribeOps + 'a>,
}

/// Shown where the new instance's id goes until it exists.
const NEW_INSTANCE: &str = "<new-instance-id>";

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

/// Where the target's backups are: for `--into` the target's recorded prefix (else the source's
/// sibling), for `--to-prefix` the given one. None for `--create`, whose id is not known yet. The
/// gather step lists this prefix; the plan reads that listing.
pub fn target_prefix(spec: &TargetSpec, source: &SourceFacts, target_record: Option<&InstanceRecord>) -> Option<Result<S3Url, S3UrlError>> {
    match spec {
        TargetSpec::Into { instance_id } => {
            let tid = instance_id.to_ascii_lowercase();
            let sibling = || sibling_prefix(&source.prefix, &source.id, &tid);
            let recorded = target_record.and_then(|t| t.backup_prefix.as_deref());
            Some(Ok(recorded.map_or_else(sibling, |p| S3Url::parse(p).unwrap_or_else(|_| sibling()))))
        }
        TargetSpec::Prefix { url } => Some(S3Url::parse(url)),
        TargetSpec::Create { .. } => None,
    }
}

fn q(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("?")
}

/// For people: `10m`, `1h 30m`.
fn wait(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

/// What the guards found: warnings let the plan run, refusals stop it.
#[derive(Debug, Default)]
struct Findings {
    warnings: Vec<String>,
    refusals: Vec<String>,
}

impl Findings {
    fn warn(&mut self, w: impl Into<String>) {
        self.warnings.push(w.into());
    }
    fn refuse(&mut self, r: impl Into<String>) {
        self.refusals.push(r.into());
    }
}

/// The source as the plan sees it: the verification of its prefix, what will be copied, and its side
/// of the plan.
struct SourceView {
    report: VerifyReport,
    selection: Selection,
    side: SourceSide,
}

fn source_view(inputs: &PlanInputs<'_>) -> SourceView {
    let src = &inputs.source;
    let rec = &src.record;
    let report = analyze(&src.prefix, &src.listing, inputs.now);
    let selection = select(&src.prefix, &src.listing, inputs.request.before, &report);
    let restorable = |b: &&BaseBackup| b.complete && b.partitions > 0;
    let side = SourceSide {
        instance_id: src.id.clone(),
        prefix: src.prefix.to_string(),
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
        complete_backups: report
            .base_backups
            .iter()
            .filter(restorable)
            .map(|b| format!("{} completed {}", b.name, b.completed_at.map(rfc3339).unwrap_or_default()))
            .collect(),
        incomplete_backups: report
            .base_backups
            .iter()
            .filter(|b| !restorable(b))
            .map(|b| format!("{} ({} partitions, no sentinel)", b.name, b.partitions))
            .collect(),
        wal_segments: report.wal.segments,
        store_backups: store_backups(rec),
    };
    SourceView { report, selection, side }
}

/// Guards on the source: a live source, no complete base backup (before `--before`), WAL gaps.
fn source_guards(inputs: &PlanInputs<'_>, src: &SourceView, f: &mut Findings) {
    let req = &inputs.request;
    let (report, side) = (&src.report, &src.side);
    if inputs.source.record.status == Status::Live {
        f.warn(format!("the source {} is not recorded as deleted; recovering from a live instance's backups clones it", side.instance_id));
    }
    match (&src.selection.base_backup, req.before) {
        (None, before) if !req.force => f.refuse(no_base_backup(side, report, before)),
        (None, _) => f.warn("--force: the source has no complete base backup; the copy cannot be restored by itself"),
        (Some(_), None) if !report.verdict.is_restorable() => f.warn(format!("the source verification says {}", report.headline())),
        _ => {}
    }
    if let Some(c) = report.continuity.as_ref().filter(|c| !c.gaps.is_empty()) {
        f.warn(format!(
            "the source WAL has {} missing segment(s); replay stops at {}",
            c.missing_segments,
            c.replayable_until_segment.as_deref().unwrap_or("?")
        ));
    }
}

/// The refusal when there is no complete base backup to restore: what S3 and the store hold.
fn no_base_backup(side: &SourceSide, report: &VerifyReport, before: Option<i64>) -> String {
    let (complete, incomplete) = (&side.complete_backups, &side.incomplete_backups);
    let what_s3 = format!(
        "{} objects, {} complete base backup(s){}, {} incomplete{}, {} WAL segment(s)",
        report.objects,
        complete.len(),
        if complete.is_empty() { String::new() } else { format!(" ({})", complete.join("; ")) },
        incomplete.len(),
        if incomplete.is_empty() { String::new() } else { format!(" ({})", incomplete.join("; ")) },
        report.wal.segments
    );
    let what_store = if side.store_backups.is_empty() { "no base backup seen in the stream".to_string() } else { side.store_backups.join("; ") };
    let when = match before {
        Some(t) => format!(" completed before {}", rfc3339(t)),
        None => String::new(),
    };
    format!(
        "the source {} has no complete base backup{when} (verdict {}): S3 holds {what_s3}; the safeguard store recorded {what_store}. A restore from it cannot produce a database. Pass --force to copy it anyway{}",
        side.prefix,
        report.verdict.as_str(),
        if before.is_some() { ", or choose a later --before" } else { "" }
    )
}

/// The target's side of the plan and the guards on it.
fn target_side(inputs: &PlanInputs<'_>, f: &mut Findings) -> TargetSide {
    let src = &inputs.source;
    let mut target = match &inputs.request.target {
        TargetSpec::Into { instance_id } => into_target(inputs, &instance_id.to_ascii_lowercase(), f),
        TargetSpec::Create { name, space_guid } => {
            let mut t = TargetSide::new(TargetKind::Create);
            t.name = name.clone().or_else(|| src.record.name.clone());
            t.space_guid = space_guid.clone().or_else(|| src.record.space_guid.clone());
            if t.name.is_none() {
                f.refuse(format!("no name is recorded for {}; pass --name for the new instance", src.id));
            }
            if t.space_guid.is_none() {
                f.refuse(format!("no space is recorded for {}; pass --space-guid for the new instance", src.id));
            }
            t.prefix = Some(sibling_prefix(&src.prefix, &src.id, NEW_INSTANCE).to_string());
            t
        }
        TargetSpec::Prefix { .. } => TargetSide::new(TargetKind::Prefix),
    };
    match target_prefix(&inputs.request.target, src, inputs.target_record.as_ref()) {
        Some(Ok(u)) => target_prefix_guards(inputs, &u, &mut target, f),
        Some(Err(e)) => f.refuse(format!("--to-prefix: {e}")),
        None => {}
    }
    target
}

/// `--into <tid>`: the target as the store knows it (or not yet).
fn into_target(inputs: &PlanInputs<'_>, tid: &str, f: &mut Findings) -> TargetSide {
    let src = &inputs.source;
    let mut target = TargetSide::new(TargetKind::Into);
    target.instance_id = Some(tid.to_string());
    if tid == src.id {
        f.refuse(format!("the target {tid} is the source itself; create a new instance (or pass --create) and recover into that"));
    }
    let target_wait = wait(inputs.settings.target_wait);
    match &inputs.target_record {
        Some(t) => {
            if t.status == Status::Deleted {
                f.refuse(format!("the target {tid} is recorded as deleted ({}); create a new instance and pass its id", t.deleted_by.as_deref().unwrap_or("")));
            }
            (target.container, target.host) = container_of(t);
            target.name = t.name.clone();
            target.space_guid = t.space_guid.clone().or_else(|| src.record.space_guid.clone());
            if target.container.is_none() || target.host.is_none() {
                f.warn(format!("the container or cell of {tid} is not known yet; step 2 waits up to {target_wait} for the watcher to see them"));
            }
        }
        None => {
            f.warn(format!("{tid} is not in the store yet; step 2 waits up to {target_wait} for the watcher to see its container and cell"));
            target.space_guid = src.record.space_guid.clone();
        }
    }
    target
}

/// The target prefix must not overlap the source, and must look like a fresh instance's: no complete
/// base backup, at most `max_target_objects` objects.
fn target_prefix_guards(inputs: &PlanInputs<'_>, u: &S3Url, target: &mut TargetSide, f: &mut Findings) {
    target.prefix = Some(u.to_string());
    if let Err(e) = TargetPrefix::new(u.clone(), &SourcePrefix::new(inputs.source.prefix.clone())) {
        f.refuse(e.to_string());
        return;
    }
    let Some(objs) = &inputs.target_listing else {
        f.refuse(format!("the target {u} was not listed, so its guards could not run; plan again"));
        return;
    };
    let trep = analyze(u, objs, inputs.now);
    target.objects = Some(objs.len() as u64);
    target.complete_backups = trep.base_backups.iter().filter(|b| b.complete).map(|b| b.name.clone()).collect();
    if !target.complete_backups.is_empty() {
        f.refuse(format!(
            "the target {u} holds {} complete base backup(s) ({}): it is not a fresh instance's prefix, and replacing it would destroy that backup. Check the target id; if that backup really must go, move it away yourself first",
            target.complete_backups.len(),
            target.complete_backups.join(", ")
        ));
    }
    let max = inputs.request.max_target_objects;
    if objs.len() as u64 > max {
        f.refuse(format!(
            "the target {u} holds {} objects, more than the bound of {max} (a fresh instance holds about 6): check the target; raise recover.max_target_objects or --max-target-objects only if you are sure",
            objs.len(),
        ));
    }
}

/// What a recovery into an instance needs around it: etcd for step 5, a watcher for step 8.
fn environment_guards(inputs: &PlanInputs<'_>, mode: Mode, f: &mut Findings) {
    if !mode.acts_on_instance() {
        return;
    }
    if inputs.etcd_url.is_none() {
        f.refuse(
            "no [etcd] section in the config: step 5 must delete the target's /initialize and /optime/leader keys; add [etcd] url = \"http://<etcd>:4001\"",
        );
    }
    if !inputs.watcher_running {
        f.warn("no watcher is running on this store, so step 8 cannot see the restore in the stream; start `safeguard watch` (with the platform's syslog) before executing");
    }
}

/// Builds the step list in running order.
struct Steps<'p> {
    inputs: &'p PlanInputs<'p>,
    selection: &'p Selection,
    target: &'p TargetSide,
    /// The target's id, or a placeholder until it is created.
    tid: String,
    /// The target prefix, or `?`.
    tprefix: String,
    out: Vec<PlannedStep>,
}

impl<'p> Steps<'p> {
    /// Every step's text passes here: redacted ([`crate::redact::text`]), since the plan is printed,
    /// serialized and journaled, and its texts quote configured URLs and platform commands.
    fn add(&mut self, step: StepId, title: String, details: Vec<String>) {
        let (title, details) = (crate::redact::text(&title), details.iter().map(|d| crate::redact::text(d)).collect());
        self.out.push(PlannedStep { step, number: step.number().into(), title, details, destructive: step.destructive() });
    }

    fn ctx(&self) -> OpContext<'_> {
        OpContext {
            instance_id: Some(&self.tid),
            container: self.target.container.as_deref(),
            host: self.target.host.as_deref(),
            name: self.target.name.as_deref(),
            space_guid: self.target.space_guid.as_deref(),
            app: None,
        }
    }

    fn describe(&self, op: Op) -> String {
        self.inputs.platform.describe(op, &self.ctx())
    }

    /// 1: the source again.
    fn source(&mut self) {
        let title = format!("verify the source {} again", self.inputs.source.prefix);
        let details = vec![format!("refuse unless the {} planned objects are still there with the same sizes", self.selection.objects)];
        self.add(StepId::Source, title, details);
    }

    /// 2 and 3: the target instance and stopping its container.
    fn target_and_stop(&mut self) {
        let (tid, t, target_wait) = (&self.tid, self.target, wait(self.inputs.settings.target_wait));
        let details = match &self.inputs.request.target {
            TargetSpec::Create { .. } => {
                vec![self.describe(Op::Create), format!("then wait up to {target_wait} for the new instance's container and cell to appear in the store")]
            }
            _ => vec![format!("use {tid}: container {} on cell {} (waits up to {target_wait} when not yet known)", q(&t.container), q(&t.host))],
        };
        self.add(StepId::Target, format!("target instance {tid}"), details);
        let stop = vec![self.describe(Op::Stop)];
        self.add(StepId::Stop, format!("stop container {} on cell {}", q(&t.container), q(&t.host)), stop);
    }

    /// 4a, 4b, 4c: clear the target prefix, copy, verify the copy.
    fn copy(&mut self) {
        let (sel, tprefix, req) = (self.selection, self.tprefix.clone(), &self.inputs.request);
        let clear = vec![
            format!(
                "{} object(s) there now; refused if it holds a complete base backup or more than {} objects, or overlaps the source",
                self.target.objects.map_or("?".into(), |n| n.to_string()),
                req.max_target_objects
            ),
            "DeleteObjects in batches of 1000; the source is never touched".into(),
        ];
        self.add(StepId::ClearTarget, format!("delete the target's own objects under {tprefix}"), clear);
        let mut copy = vec![
            format!("{} objects, {} from {}", sel.objects, human_bytes(sel.bytes), self.inputs.source.prefix),
            format!(
                "to {tprefix}, server-side CopyObject ({} at a time, multipart above {} MiB), retries with backoff",
                req.concurrency,
                self.inputs.settings.multipart_threshold_mb.min(5120)
            ),
        ];
        if let Some(b) = &sel.base_backup {
            copy.push(format!(
                "base backup {b} (completed {}), WAL {} .. {} ({} segment(s))",
                sel.base_backup_completed_at.map(rfc3339).unwrap_or_default(),
                q(&sel.wal_from),
                q(&sel.wal_to),
                sel.wal_segments
            ));
        }
        if let Some(t) = sel.before {
            copy.push(format!(
                "--before {}: segment in use then {} (segment-granular: replay runs to its end); {} newer object(s) not copied",
                rfc3339(t),
                sel.cutoff_segment.as_deref().unwrap_or("(none archived after it: all WAL)"),
                sel.excluded_objects
            ));
        }
        if sel.sentinels.len() > 1 {
            copy.push(format!(
                "{} backup sentinels copied last, {} last of all so it is the target's newest",
                sel.sentinels.len(),
                sel.sentinels.last().map(String::as_str).unwrap_or("")
            ));
        }
        self.add(StepId::Copy, "copy the backups".into(), copy);
        let verify = vec!["same keys relative to the prefixes and same sizes, and the chosen base backup is the target's latest".into()];
        self.add(StepId::VerifyCopy, format!("verify {tprefix} equals the copied set"), verify);
    }

    /// 5 to 9: etcd keys, flush, start, confirm, bind.
    fn restore(&mut self) {
        let tid = self.tid.clone();
        let t = self.target;
        let e = self.inputs.etcd_url.clone().unwrap_or_else(|| "<no [etcd] configured>".to_string());
        let keys = recovery_keys(&tid).iter().map(|k| format!("DELETE {e}/v2/keys{k} (absent is fine)")).collect();
        self.add(StepId::Etcd, format!("delete the target's Patroni keys in etcd {e}"), keys);
        let flush = vec![self.describe(Op::Flush)];
        self.add(StepId::Flush, format!("empty the data directory of {}", q(&t.container)), flush);
        let start = vec![self.describe(Op::Start)];
        self.add(StepId::Start, format!("start container {}", q(&t.container)), start);
        self.add(
            StepId::Confirm,
            format!("wait up to {} for the restore in the stream", wait(self.inputs.settings.confirm_timeout)),
            vec![format!("`restore_leader_if_missing> preparing patroni to restore this container from wal-e backups` and a completed wal-fetch from {tid}")],
        );
        let apps = &self.inputs.request.bind_apps;
        if !apps.is_empty() {
            let details = apps.iter().map(|a| self.inputs.platform.describe(Op::Bind, &OpContext { app: Some(a), ..self.ctx() })).collect();
            self.add(StepId::Bind, format!("bind {} again", apps.join(", ")), details);
        }
    }
}

fn steps(inputs: &PlanInputs<'_>, mode: Mode, selection: &Selection, target: &TargetSide) -> Vec<PlannedStep> {
    let mut s = Steps {
        inputs,
        selection,
        target,
        tid: target.instance_id.clone().unwrap_or_else(|| NEW_INSTANCE.into()),
        tprefix: target.prefix.clone().unwrap_or_else(|| "?".into()),
        out: Vec::new(),
    };
    s.source();
    if mode.acts_on_instance() {
        s.target_and_stop();
    }
    s.copy();
    if mode.acts_on_instance() {
        s.restore();
    }
    s.out
}

/// The plan for `inputs`: what is copied, the target, the steps, and the guards' warnings and
/// refusals. Pure: no I/O, no clock (the time is `inputs.now`).
pub fn plan(inputs: &PlanInputs<'_>) -> Plan {
    let req = &inputs.request;
    let mode = Mode::of(&req.target);
    let mut findings = Findings::default();
    let source = source_view(inputs);
    source_guards(inputs, &source, &mut findings);
    let target = target_side(inputs, &mut findings);
    environment_guards(inputs, mode, &mut findings);
    let steps = steps(inputs, mode, &source.selection, &target);
    Plan {
        mode,
        planned_at: inputs.now,
        source: source.side,
        target_spec: req.target.clone(),
        target,
        selection: source.selection,
        steps,
        bind_apps: req.bind_apps.clone(),
        options: PlanOptions { force: req.force, max_target_objects: req.max_target_objects, concurrency: req.concurrency },
        etcd_url: inputs.etcd_url.as_deref().map(crate::redact::url),
        platform: inputs.platform.kind().to_string(),
        warnings: findings.warnings.iter().map(|w| crate::redact::text(w)).collect(),
        refusals: findings.refusals.iter().map(|r| crate::redact::text(r)).collect(),
    }
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
        match t.kind {
            TargetKind::Prefix => {
                let _ = writeln!(s, "Target  prefix {}", q(&t.prefix));
            }
            TargetKind::Create => {
                let _ = writeln!(s, "Target  a NEW instance {:?} (solo plan) in space {}", q(&t.name), q(&t.space_guid));
                let _ = writeln!(s, "        backups at {}", q(&t.prefix));
            }
            TargetKind::Into => {
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
    use crate::state::Node;

    const T0: i64 = 1_700_000_000_000;
    const SRC: &str = "a1111111-1111-4111-8111-111111111111";
    const DST: &str = "b2222222-2222-4222-8222-222222222222";

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

    /// One complete backup (segment 2) and segments 2 to 4.
    fn healthy(p: &S3Url) -> Vec<ObjectInfo> {
        let mut v = vec![at(p, layout::SYSID, 5, T0)];
        v.extend(backup(p, 2, T0 + 1000, Some(T0 + 2000)));
        v.extend((2..=4).map(|n| at(p, &layout::wal_segment(&seg(n)), 16, T0 + 1000 * n as i64)));
        v
    }

    fn record(id: &str, status: Status) -> InstanceRecord {
        InstanceRecord {
            instance_id: id.into(),
            status,
            name: Some("orders-db".into()),
            space_guid: Some("space-1".into()),
            backup_prefix: Some(S3Url::instance_prefix("bkt", id).unwrap().to_string()),
            ..InstanceRecord::default()
        }
    }

    fn running(id: &str) -> InstanceRecord {
        let node = Node { node_uuid: "n1".into(), container: "cf-n1".into(), host: Some("cell-1".into()), ..Node::default() };
        InstanceRecord { nodes: vec![node], ..record(id, Status::Live) }
    }

    struct Ops;
    impl DescribeOps for Ops {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn describe(&self, op: Op, ctx: &OpContext<'_>) -> String {
            format!("{} {} {}", op.as_str(), ctx.container.unwrap_or("?"), ctx.app.unwrap_or("-"))
        }
    }

    /// A recovery of a deleted source with a good backup into a fresh, running instance.
    fn inputs(target: TargetSpec) -> PlanInputs<'static> {
        let fresh_target = matches!(target, TargetSpec::Into { .. } | TargetSpec::Prefix { .. });
        let dst = S3Url::instance_prefix("bkt", DST).unwrap();
        PlanInputs {
            request: PlanRequest { source_id: SRC.into(), target, before: None, bind_apps: Vec::new(), force: false, max_target_objects: 50, concurrency: 8 },
            now: T0 + 10_000,
            source: SourceFacts { id: SRC.into(), record: record(SRC, Status::Deleted), prefix: src_prefix(), listing: healthy(&src_prefix()) },
            target_record: Some(running(DST)),
            target_listing: fresh_target.then(|| vec![at(&dst, layout::SYSID, 5, T0)]),
            etcd_url: Some("http://etcd:4001".into()),
            watcher_running: true,
            settings: PlanSettings { target_wait: Duration::from_secs(600), confirm_timeout: Duration::from_secs(900), multipart_threshold_mb: 5120 },
            platform: Box::new(Ops),
        }
    }

    fn into() -> TargetSpec {
        TargetSpec::Into { instance_id: DST.into() }
    }

    fn step_ids(p: &Plan) -> Vec<StepId> {
        p.steps.iter().map(|s| s.step).collect()
    }

    fn refused(p: &Plan, why: &str) -> bool {
        p.refusals.iter().any(|r| r.contains(why))
    }

    #[test]
    fn the_mode_follows_the_target_and_chooses_the_steps() {
        use StepId::*;
        let p = plan(&inputs(into()));
        assert_eq!(p.mode, Mode::Recover);
        assert_eq!(p.refusals, Vec::<String>::new());
        assert_eq!(step_ids(&p), [Source, Target, Stop, ClearTarget, Copy, VerifyCopy, Etcd, Flush, Start, Confirm]);
        assert_eq!(p.target.kind, TargetKind::Into);
        assert_eq!(p.target.container.as_deref(), Some("cf-n1"));
        assert_eq!(p.target.prefix.as_deref(), Some(S3Url::instance_prefix("bkt", DST).unwrap().to_string().as_str()));
        assert_eq!(p.steps[2].details, ["stop cf-n1 -"]);

        let mut i = inputs(into());
        i.request.bind_apps = vec!["billing".into()];
        let p = plan(&i);
        assert_eq!(step_ids(&p).last(), Some(&Bind));
        assert_eq!(p.steps.last().unwrap().details, ["bind cf-n1 billing"]);

        let p = plan(&inputs(TargetSpec::Prefix { url: "s3://other/restore/".into() }));
        assert_eq!(p.mode, Mode::Clone);
        assert_eq!(p.refusals, Vec::<String>::new());
        assert_eq!(step_ids(&p), [Source, ClearTarget, Copy, VerifyCopy]);
        assert_eq!(serde_json::to_value(&p).unwrap()["mode"], "clone");

        let mut i = inputs(TargetSpec::Create { name: None, space_guid: None });
        i.target_record = None;
        let p = plan(&i);
        assert_eq!(p.mode, Mode::Recover);
        assert_eq!(p.refusals, Vec::<String>::new());
        assert_eq!(p.steps[1].details[0], "create ? -");
        assert_eq!(p.target.name.as_deref(), Some("orders-db"));
        assert!(p.target.prefix.as_deref().unwrap().contains(NEW_INSTANCE), "{:?}", p.target.prefix);
    }

    #[test]
    fn recovering_into_the_source_or_a_deleted_instance_is_refused() {
        let mut i = inputs(TargetSpec::Into { instance_id: SRC.to_uppercase() });
        i.target_record = Some(record(SRC, Status::Deleted));
        i.target_listing = Some(i.source.listing.clone());
        let p = plan(&i);
        assert!(refused(&p, "is the source itself"), "{:?}", p.refusals);
        assert!(refused(&p, "is recorded as deleted"), "{:?}", p.refusals);
        // Its prefix is the source's: the overlap guard refuses it too.
        assert!(refused(&p, "is the source"), "{:?}", p.refusals);
    }

    #[test]
    fn no_complete_base_backup_is_refused_unless_forced() {
        let mut i = inputs(into());
        i.source.listing = backup(&src_prefix(), 2, T0, None);
        let p = plan(&i);
        assert!(refused(&p, "has no complete base backup (verdict no_complete_base_backup)"), "{:?}", p.refusals);
        assert!(refused(&p, "1 incomplete"), "{:?}", p.refusals);
        i.request.force = true;
        let p = plan(&i);
        assert!(p.refusals.is_empty(), "{:?}", p.refusals);
        assert!(p.warnings.iter().any(|w| w.starts_with("--force")), "{:?}", p.warnings);

        // With --before earlier than every sentinel there is nothing to restore either.
        let mut i = inputs(into());
        i.request.before = Some(T0 + 1500);
        assert!(refused(&plan(&i), "completed before"));
    }

    #[test]
    fn a_target_that_is_not_fresh_is_refused() {
        let dst = S3Url::instance_prefix("bkt", DST).unwrap();
        let mut i = inputs(into());
        i.target_listing = Some(backup(&dst, 9, T0, Some(T0 + 1)));
        let p = plan(&i);
        assert!(refused(&p, "holds 1 complete base backup(s) (base_000000010000000000000009_00000028)"), "{:?}", p.refusals);

        let mut i = inputs(into());
        i.target_listing = Some((0..51).map(|n| at(&dst, &format!("x/{n}"), 1, T0)).collect());
        assert!(refused(&plan(&i), "holds 51 objects, more than the bound of 50"));
        i.request.max_target_objects = 51;
        assert!(plan(&i).refusals.is_empty());

        // Not listed: the guards could not run, so the plan cannot either.
        let mut i = inputs(into());
        i.target_listing = None;
        assert!(refused(&plan(&i), "was not listed"));
    }

    #[test]
    fn a_prefix_target_must_parse_and_stay_clear_of_the_source() {
        let p = plan(&inputs(TargetSpec::Prefix { url: "https://bkt/x/".into() }));
        assert!(refused(&p, "--to-prefix: "), "{:?}", p.refusals);
        assert_eq!(p.target.prefix, None);
        let inside = src_prefix().join_prefix("restore").to_string();
        let p = plan(&inputs(TargetSpec::Prefix { url: inside }));
        assert!(refused(&p, "is inside the source"), "{:?}", p.refusals);
    }

    #[test]
    fn create_needs_a_name_and_a_space() {
        let mut i = inputs(TargetSpec::Create { name: None, space_guid: None });
        i.source.record.name = None;
        i.source.record.space_guid = None;
        let p = plan(&i);
        assert!(refused(&p, "pass --name") && refused(&p, "pass --space-guid"), "{:?}", p.refusals);
        i.request.target = TargetSpec::Create { name: Some("n".into()), space_guid: Some("s".into()) };
        assert!(plan(&i).refusals.is_empty());
    }

    #[test]
    fn an_instance_recovery_needs_etcd_and_wants_a_watcher() {
        let mut i = inputs(into());
        i.etcd_url = None;
        i.watcher_running = false;
        let p = plan(&i);
        assert!(refused(&p, "no [etcd] section"), "{:?}", p.refusals);
        assert!(p.warnings.iter().any(|w| w.contains("no watcher is running")), "{:?}", p.warnings);
        // A clone to a prefix touches no instance: neither matters.
        i.request.target = TargetSpec::Prefix { url: "s3://other/restore/".into() };
        let p = plan(&i);
        assert!(p.refusals.is_empty() && p.warnings.is_empty(), "{:?} {:?}", p.refusals, p.warnings);
    }

    #[test]
    fn an_unknown_target_waits_as_configured() {
        let mut i = inputs(into());
        i.target_record = None;
        i.settings.target_wait = Duration::from_secs(90);
        let p = plan(&i);
        assert!(p.refusals.is_empty(), "{:?}", p.refusals);
        assert!(p.warnings.iter().any(|w| w.contains("is not in the store yet; step 2 waits up to 1m 30s")), "{:?}", p.warnings);
        let text = p.render_text("Plan");
        assert!(text.contains("(waits up to 1m 30s when not yet known)"), "{text}");
        assert!(text.contains("wait up to 15m for the restore in the stream"), "{text}");
    }

    #[test]
    fn the_plan_is_a_function_of_its_inputs() {
        let i = inputs(into());
        assert_eq!(plan(&i), plan(&i));
        assert_eq!(plan(&i).planned_at, i.now);
        let mut later = inputs(into());
        later.now += 3_600_000;
        assert_eq!(Plan { planned_at: i.now, ..plan(&later) }, plan(&i));
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
