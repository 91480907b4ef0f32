//! Backup verification: what an instance prefix in the object store really holds.
//!
//! [`analyze`] is pure: it classifies a listing of `s3://<bucket>/backups/<id>/wal/` (WAL-E 005 layout,
//! read with [`crate::layout`], which spells every folder name, suffix and segment-name rule) and
//! decides whether the instance can be restored. [`verify`] lists the store and never fails: a listing
//! error becomes the [`Verdict::Unreachable`] verdict, so an alert can say so.
//!
//! A base backup is complete iff its sentinel exists; the sentinel's LastModified is the backup's time
//! and the backup's name carries its start segment. Only segments count for WAL continuity (backup
//! labels, timeline histories and partial segments are counted, not checked).
//!
//! Which base backup: the latest complete one (newest sentinel LastModified, as WAL-E's `LATEST`) that
//! also has at least one tar partition (a sentinel without partitions cannot be fetched).
//!
//! Timeline switches (the choice made here, from the listing alone, without reading any object):
//! starting on the backup's timeline, recovery follows every higher timeline that has a history file
//! and at least one segment, in ascending order. A followed timeline takes over at its lowest segment
//! number (the segment holding the switch point: PostgreSQL writes that segment on the new timeline,
//! and the old timeline's copy is at most a partial one). So segment n is expected on the highest
//! followed timeline whose first segment is <= n; segments of older timelines at or past a switch are
//! ignored, and the switch itself is never a gap. A history timeline whose first segment lies before
//! the backup start or before the previous switch is not in the backup's lineage: it is ignored with a
//! note. Segments on a higher timeline without a history file are not followed (PostgreSQL cannot
//! follow them either) and are noted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::adapters::s3::{ObjectInfo, ObjectStore, S3Url};
use crate::layout::{self, BackupObject, Key, WalFile};
use crate::timeutil::{rfc3339, serde_ms, serde_opt_ms};

pub use crate::layout::Segment;

/// How many unrecognised keys a report quotes.
const OTHER_EXAMPLES: usize = 5;

/// The overall answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// A complete base backup and every WAL segment from its start to the newest one.
    Recoverable,
    /// A complete base backup and its start segment, but segments are missing later on:
    /// a restore can replay only up to the first gap.
    RecoverableWithGaps,
    /// A complete base backup exists but its own start WAL segment is missing, so it cannot be
    /// restored to a consistent state.
    BaseBackupWalMissing,
    /// Objects exist but no base backup has a sentinel and partitions (e.g. an interrupted backup-push).
    NoCompleteBaseBackup,
    /// Nothing at all under the prefix.
    Empty,
    /// The store could not be listed; `error` says why and what to check.
    Unreachable { error: String },
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Recoverable => "recoverable",
            Verdict::RecoverableWithGaps => "recoverable_with_gaps",
            Verdict::BaseBackupWalMissing => "base_backup_wal_missing",
            Verdict::NoCompleteBaseBackup => "no_complete_base_backup",
            Verdict::Empty => "empty",
            Verdict::Unreachable { .. } => "unreachable",
        }
    }

    /// True when a restore from this prefix can produce a consistent database.
    pub fn is_restorable(&self) -> bool {
        matches!(self, Verdict::Recoverable | Verdict::RecoverableWithGaps)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `base_<SEG24>_<OFF8>` backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BaseBackup {
    /// `base_000000010000000000000003_00000040`
    pub name: String,
    pub start_segment: String,
    pub start_offset: String,
    /// The sentinel exists.
    pub complete: bool,
    /// Sentinel LastModified: the backup's time.
    #[serde(with = "serde_opt_ms")]
    pub completed_at: Option<i64>,
    pub partitions: u64,
    pub has_extended_version: bool,
    /// All objects of this backup, sentinel included.
    pub bytes: u64,
    /// Newest LastModified among its objects (for an incomplete backup: when it last made progress).
    #[serde(with = "serde_opt_ms")]
    pub last_upload: Option<i64>,
}

/// An inclusive range of missing segments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub first: String,
    pub last: String,
    pub missing: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WalSummary {
    pub segments: u64,
    pub bytes: u64,
    /// Lowest and highest segment names present (any timeline).
    pub oldest_segment: Option<String>,
    pub newest_segment: Option<String>,
    /// Timelines with at least one segment, ascending (8 hex digits).
    pub timelines: Vec<String>,
    /// Timelines with a history file.
    pub history_timelines: Vec<String>,
    /// Backup labels.
    pub backup_labels: u64,
    pub history_files: u64,
    pub partial_files: u64,
}

/// WAL continuity from the chosen base backup's start segment to the newest segment of its lineage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Continuity {
    pub base_backup: String,
    /// Timelines followed, in order (see the module docs).
    pub timelines: Vec<String>,
    pub from_segment: String,
    pub to_segment: String,
    pub expected_segments: u64,
    pub missing_segments: u64,
    pub gaps: Vec<Gap>,
    /// The last segment before the first gap, when replay can get that far.
    pub replayable_until_segment: Option<String>,
    #[serde(with = "serde_opt_ms")]
    pub replayable_until: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub prefix: S3Url,
    #[serde(with = "serde_ms")]
    pub checked_at: i64,
    /// Serialized flat: `"verdict": "unreachable", "error": "..."`.
    #[serde(flatten)]
    pub verdict: Verdict,
    pub objects: u64,
    pub bytes: u64,
    pub sysid_present: bool,
    /// Ordered by start segment, oldest first.
    pub base_backups: Vec<BaseBackup>,
    pub latest_complete_backup: Option<String>,
    pub wal: WalSummary,
    pub continuity: Option<Continuity>,
    /// LastModified of the newest WAL segment of the backup's lineage, or of the backup's sentinel if later.
    #[serde(with = "serde_opt_ms")]
    pub recovery_point: Option<i64>,
    pub other_objects: u64,
    /// A few of the unrecognised keys, relative to the prefix.
    pub other_examples: Vec<String>,
    /// Things an operator should know that do not change the verdict by themselves.
    pub notes: Vec<String>,
}

/// One base backup's objects, as the listing is walked.
#[derive(Default)]
struct BackupAcc {
    start: Option<Segment>,
    start_offset: String,
    sentinel: Option<i64>,
    partitions: u64,
    extended_version: bool,
    bytes: u64,
    last_upload: Option<i64>,
}

/// Per timeline: segment index -> LastModified.
type Segments = BTreeMap<u32, BTreeMap<u64, i64>>;

/// What a walk over the listing found, before any judgement.
#[derive(Default)]
struct Tally<'a> {
    /// Distinct keys (a listing never repeats a key; a merged or retried one might).
    keys: BTreeSet<&'a str>,
    bytes: u64,
    sysid_present: bool,
    backups: BTreeMap<String, BackupAcc>,
    segs: Segments,
    histories: BTreeSet<u32>,
    wal: WalSummary,
    other_objects: u64,
    other_examples: Vec<String>,
    /// WAL names of 24 hex digits whose segment part is above FF.
    odd_segments: u64,
}

fn max_opt(a: Option<i64>, b: i64) -> Option<i64> {
    Some(a.map_or(b, |a| a.max(b)))
}

impl<'a> Tally<'a> {
    /// Walks the listing once, sorting every object into what the layout says it is.
    fn of(prefix: &S3Url, objects: &'a [ObjectInfo]) -> Tally<'a> {
        let mut t = Tally::default();
        for o in objects {
            if !t.keys.insert(o.key.as_str()) {
                continue;
            }
            t.bytes = t.bytes.saturating_add(o.size);
            match prefix.relative(&o.key) {
                Some(rel) => t.add(rel, o),
                None => t.other(&o.key),
            }
        }
        t
    }

    fn other(&mut self, rel: &str) {
        self.other_objects += 1;
        if self.other_examples.len() < OTHER_EXAMPLES {
            self.other_examples.push(rel.to_string());
        }
    }

    fn add(&mut self, rel: &str, o: &ObjectInfo) {
        match layout::classify(rel) {
            Key::Sysid => self.sysid_present = true,
            Key::Backup { object: BackupObject::Unknown, .. } | Key::Other => self.other(rel),
            Key::Backup { backup, object } => {
                let acc = self.backups.entry(backup.name).or_default();
                acc.start = Some(backup.start);
                acc.start_offset = backup.offset;
                acc.bytes = acc.bytes.saturating_add(o.size);
                acc.last_upload = max_opt(acc.last_upload, o.last_modified_ms);
                match object {
                    BackupObject::Sentinel => acc.sentinel = max_opt(acc.sentinel, o.last_modified_ms),
                    BackupObject::ExtendedVersion => acc.extended_version = true,
                    _ => acc.partitions += 1,
                }
            }
            Key::Wal(WalFile::Segment(s)) => {
                self.wal.segments += 1;
                self.wal.bytes = self.wal.bytes.saturating_add(o.size);
                self.segs.entry(s.tli).or_default().insert(s.index(), o.last_modified_ms);
            }
            Key::Wal(WalFile::BackupLabel) => self.wal.backup_labels += 1,
            Key::Wal(WalFile::History(t)) => {
                self.wal.history_files += 1;
                self.histories.insert(t);
            }
            Key::Wal(WalFile::Partial) => self.wal.partial_files += 1,
            Key::Wal(WalFile::OddSegment) => {
                self.odd_segments += 1;
                self.other(rel);
            }
            Key::Wal(WalFile::Unknown) => self.other(rel),
        }
    }
}

/// The backups found, ordered by start segment, oldest first.
fn base_backups(backups: &BTreeMap<String, BackupAcc>) -> Vec<BaseBackup> {
    let mut out: Vec<BaseBackup> = backups
        .iter()
        .filter_map(|(name, a)| {
            let start = a.start?;
            Some(BaseBackup {
                name: name.clone(),
                start_segment: start.name(),
                start_offset: a.start_offset.clone(),
                complete: a.sentinel.is_some(),
                completed_at: a.sentinel,
                partitions: a.partitions,
                has_extended_version: a.extended_version,
                bytes: a.bytes,
                last_upload: a.last_upload,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.start_segment, &a.start_offset).cmp(&(&b.start_segment, &b.start_offset)));
    out
}

/// Fills the summary's names: timelines and the oldest and newest segment on any timeline.
fn name_wal(wal: &mut WalSummary, segs: &Segments, histories: &BTreeSet<u32>) {
    let idx_name = |tli: u32, i: u64| Segment::from_index(tli, i).map_or_else(String::new, |s| s.name());
    wal.timelines = segs.keys().map(|t| format!("{t:08X}")).collect();
    wal.history_timelines = histories.iter().map(|t| format!("{t:08X}")).collect();
    let all_sorted = segs.iter().flat_map(|(t, m)| m.keys().map(move |i| (*t, *i)));
    wal.oldest_segment = all_sorted.clone().next().map(|(t, i)| idx_name(t, i));
    wal.newest_segment = all_sorted.last().map(|(t, i)| idx_name(t, i));
}

/// WAL-E's LATEST among the backups that can be fetched: newest sentinel; ties broken by position.
fn latest_complete(base_backups: &[BaseBackup]) -> Option<&BaseBackup> {
    base_backups.iter().filter(|b| b.complete && b.partitions > 0).max_by_key(|b| (b.completed_at, b.start_segment.clone(), b.start_offset.clone()))
}

/// The verdict on the chosen backup (if any), with its continuity and recovery point.
struct Judgement {
    verdict: Verdict,
    continuity: Option<Continuity>,
    recovery_point: Option<i64>,
}

fn judge(chosen: Option<&BaseBackup>, base_backups: &[BaseBackup], segs: &Segments, histories: &BTreeSet<u32>, notes: &mut Vec<String>) -> Judgement {
    let Some(base) = chosen else {
        if base_backups.iter().any(|b| !b.complete) {
            notes.push("base backup(s) without a backup_stop_sentinel: backup-push did not finish".into());
        }
        return Judgement { verdict: Verdict::NoCompleteBaseBackup, continuity: None, recovery_point: None };
    };
    let (c, newest_ms) = continuity_from(&base.name, &base.start_segment, segs, histories, notes);
    let verdict = if c.gaps.first().is_some_and(|g| g.first == c.from_segment) {
        Verdict::BaseBackupWalMissing
    } else if c.gaps.is_empty() {
        Verdict::Recoverable
    } else {
        Verdict::RecoverableWithGaps
    };
    // A backup that cannot reach consistency has no recovery point.
    let recovery_point = match (verdict != Verdict::BaseBackupWalMissing, newest_ms, base.completed_at) {
        (false, _, _) => None,
        (true, Some(w), Some(s)) => Some(w.max(s)),
        (true, w, s) => w.or(s),
    };
    Judgement { verdict, continuity: Some(c), recovery_point }
}

/// Classifies a listing of `prefix` and decides whether it can be restored. Never panics.
pub fn analyze(prefix: &S3Url, objects: &[ObjectInfo], checked_at_ms: i64) -> VerifyReport {
    let mut t = Tally::of(prefix, objects);
    let mut notes = Vec::new();
    if t.odd_segments > 0 {
        notes.push(format!(
            "{} WAL name(s) have a segment part above 000000FF: this cluster may not use 16 MB segments, and they were not checked",
            t.odd_segments
        ));
    }
    name_wal(&mut t.wal, &t.segs, &t.histories);
    let base_backups = base_backups(&t.backups);
    for b in base_backups.iter().filter(|b| b.complete && b.partitions == 0) {
        notes.push(format!("{} has a sentinel but no tar partitions: it cannot be fetched", b.name));
    }
    let chosen = latest_complete(&base_backups);
    let judgement = if objects.is_empty() {
        Judgement { verdict: Verdict::Empty, continuity: None, recovery_point: None }
    } else {
        judge(chosen, &base_backups, &t.segs, &t.histories, &mut notes)
    };
    VerifyReport {
        prefix: prefix.clone(),
        checked_at: checked_at_ms,
        verdict: judgement.verdict,
        objects: t.keys.len() as u64,
        bytes: t.bytes,
        sysid_present: t.sysid_present,
        latest_complete_backup: chosen.map(|b| b.name.clone()),
        base_backups,
        wal: t.wal,
        continuity: judgement.continuity,
        recovery_point: judgement.recovery_point,
        other_objects: t.other_objects,
        other_examples: t.other_examples,
        notes,
    }
}

/// A timeline of the lineage and the segment index where it takes over.
type Link = (u32, u64);

/// The timelines recovery follows from `start` (see the module docs), noting those it does not.
fn lineage(base_name: &str, start: Segment, segs: &Segments, histories: &BTreeSet<u32>, notes: &mut Vec<String>) -> Vec<Link> {
    let start_idx = start.index();
    let mut chain: Vec<Link> = vec![(start.tli, start_idx)];
    for &t in histories.range(start.tli.saturating_add(1)..) {
        let first = segs.get(&t).and_then(|m| m.keys().next().copied());
        let prev_from = chain.last().map_or(start_idx, |c| c.1);
        match first {
            None => notes.push(format!("timeline {t:08X} has a history file but no WAL segments yet")),
            Some(f) if f < prev_from || f < start_idx => notes.push(format!(
                "timeline {t:08X} branches off before {}: not in the lineage of {base_name}, ignored",
                Segment::from_index(chain.last().map_or(start.tli, |c| c.0), prev_from).map_or_else(String::new, |s| s.name())
            )),
            Some(f) => chain.push((t, f)),
        }
    }
    for (&t, m) in segs.range(start.tli.saturating_add(1)..) {
        if !histories.contains(&t) && !m.is_empty() {
            notes.push(format!("{} segment(s) on timeline {t:08X} without a {t:08X}.history file: not followed", m.len()));
        }
    }
    chain
}

/// The segment range each timeline of the lineage owns: (timeline, from, to inclusive or open).
type Range = (u32, u64, Option<u64>);

fn owned_ranges(chain: &[Link]) -> Vec<Range> {
    chain.iter().enumerate().map(|(i, &(t, from))| (t, from, chain.get(i + 1).map(|n| n.1.saturating_sub(1)))).collect()
}

/// The newest segment present in its own timeline's range, and its LastModified.
fn lineage_end(start: Segment, ranges: &[Range], segs: &Segments) -> ((u32, u64), Option<i64>) {
    let mut end = (start.tli, start.index());
    let mut newest_ms = None;
    for &(t, from, to) in ranges {
        let Some(m) = segs.get(&t) else { continue };
        if let Some((&i, &ms)) = m.range(from..=to.unwrap_or(u64::MAX)).next_back() {
            if i >= end.1 {
                end = (t, i);
                newest_ms = Some(ms);
            }
        }
    }
    (end, newest_ms)
}

/// What walking the lineage up to its end found missing.
#[derive(Default)]
struct Walk {
    gaps: Vec<Gap>,
    expected: u64,
    missing: u64,
    /// The last present segment before the first gap: (timeline, index, LastModified).
    replayable: Option<(u32, u64, i64)>,
}

impl Walk {
    fn gap(&mut self, t: u32, first: u64, last: u64) {
        self.gaps.push(Gap { first: name_at(t, first), last: name_at(t, last), missing: last - first + 1 });
        self.missing += last - first + 1;
    }
}

fn walk_gaps(ranges: &[Range], end_idx: u64, segs: &Segments) -> Walk {
    let empty = BTreeMap::new();
    let mut w = Walk::default();
    for &(t, from, to) in ranges {
        if from > end_idx {
            break;
        }
        let hi = to.map_or(end_idx, |x| x.min(end_idx));
        if hi < from {
            continue;
        }
        w.expected += hi - from + 1;
        let mut cursor = from;
        for (&i, &ms) in segs.get(&t).unwrap_or(&empty).range(from..=hi) {
            if i > cursor {
                w.gap(t, cursor, i - 1);
            }
            if w.gaps.is_empty() {
                w.replayable = Some((t, i, ms));
            }
            cursor = i + 1;
        }
        if cursor <= hi {
            w.gap(t, cursor, hi);
        }
    }
    w
}

/// Continuity from `start_name` along its timeline lineage; also returns the newest segment's LastModified.
fn continuity_from(base_name: &str, start_name: &str, segs: &Segments, histories: &BTreeSet<u32>, notes: &mut Vec<String>) -> (Continuity, Option<i64>) {
    // start_name came from Segment::name, so it parses.
    let start = Segment::parse(start_name).unwrap_or(Segment { tli: 1, log: 0, seg: 0 });
    let chain = lineage(base_name, start, segs, histories, notes);
    let ranges = owned_ranges(&chain);
    let (end, newest_ms) = lineage_end(start, &ranges, segs);
    let walk = walk_gaps(&ranges, end.1, segs);
    let c = Continuity {
        base_backup: base_name.to_string(),
        timelines: chain.iter().filter(|c| c.1 <= end.1).map(|c| format!("{:08X}", c.0)).collect(),
        from_segment: start.name(),
        to_segment: name_at(end.0, end.1),
        expected_segments: walk.expected,
        missing_segments: walk.missing,
        replayable_until_segment: walk.replayable.map(|r| name_at(r.0, r.1)),
        replayable_until: walk.replayable.map(|r| r.2),
        gaps: walk.gaps,
    };
    (c, newest_ms)
}

fn name_at(tli: u32, index: u64) -> String {
    Segment::from_index(tli, index).map_or_else(|| format!("{tli:08X}?{index:X}"), |s| s.name())
}

/// Lists `prefix` and analyses it; a listing failure becomes [`Verdict::Unreachable`].
pub async fn verify(store: &ObjectStore, prefix: &S3Url) -> VerifyReport {
    match store.list(prefix).await {
        Ok(objects) => analyze(prefix, &objects, crate::timeutil::now_ms()),
        Err(e) => VerifyReport::unreachable(prefix, e.to_string(), crate::timeutil::now_ms()),
    }
}

impl VerifyReport {
    /// A report for a store that could not be listed.
    pub fn unreachable(prefix: &S3Url, error: String, checked_at_ms: i64) -> VerifyReport {
        VerifyReport {
            prefix: prefix.clone(),
            checked_at: checked_at_ms,
            verdict: Verdict::Unreachable { error },
            objects: 0,
            bytes: 0,
            sysid_present: false,
            base_backups: Vec::new(),
            latest_complete_backup: None,
            wal: WalSummary::default(),
            continuity: None,
            recovery_point: None,
            other_objects: 0,
            other_examples: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// One line for an alert subject or a log message.
    pub fn headline(&self) -> String {
        let what = match &self.verdict {
            Verdict::Recoverable => "RECOVERABLE".to_string(),
            Verdict::RecoverableWithGaps => {
                let c = self.continuity.as_ref();
                format!(
                    "RECOVERABLE WITH GAPS ({} missing WAL segment(s); replay stops at {})",
                    c.map_or(0, |c| c.missing_segments),
                    c.and_then(|c| c.replayable_until_segment.as_deref()).unwrap_or("?")
                )
            }
            Verdict::BaseBackupWalMissing => "NOT RECOVERABLE: the latest complete base backup's WAL is missing".to_string(),
            Verdict::NoCompleteBaseBackup => "NOT RECOVERABLE: no complete base backup".to_string(),
            Verdict::Empty => "NOT RECOVERABLE: nothing stored under this prefix".to_string(),
            Verdict::Unreachable { .. } => "UNKNOWN: the object store could not be reached or listed".to_string(),
        };
        format!("{what} - {}", self.prefix)
    }

    /// A short report for a person: verdict first, then backups, WAL, gaps, recovery point.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.headline());
        if let Verdict::Unreachable { error } = &self.verdict {
            let _ = writeln!(s, "  error: {error}");
            let _ = writeln!(s, "  checked at {}", rfc3339(self.checked_at));
            return s;
        }
        if let Some(rp) = self.recovery_point {
            let gaps = self.continuity.as_ref().is_some_and(|c| !c.gaps.is_empty());
            if gaps {
                let _ = writeln!(s, "Recovery point: {} only if the gaps below are filled", rfc3339(rp));
            } else {
                let _ = writeln!(s, "Recovery point: {}", rfc3339(rp));
            }
        }
        let _ = writeln!(
            s,
            "Checked {}: {} object(s), {}; sysid {}",
            rfc3339(self.checked_at),
            self.objects,
            human_bytes(self.bytes),
            if self.sysid_present { "present" } else { "MISSING" }
        );

        let complete = self.base_backups.iter().filter(|b| b.complete).count();
        let _ = writeln!(s, "Base backups: {} ({} complete)", self.base_backups.len(), complete);
        for b in self.base_backups.iter().rev().take(10) {
            let latest = if self.latest_complete_backup.as_deref() == Some(b.name.as_str()) { "  <- latest" } else { "" };
            match b.completed_at {
                Some(t) => {
                    let _ = writeln!(s, "  complete    {}  {}  {} partition(s), {}{latest}", b.name, rfc3339(t), b.partitions, human_bytes(b.bytes));
                }
                None => {
                    let _ = writeln!(
                        s,
                        "  INCOMPLETE  {}  last upload {}  {} partition(s), no sentinel",
                        b.name,
                        b.last_upload.map_or_else(|| "?".into(), rfc3339),
                        b.partitions
                    );
                }
            }
        }
        if self.base_backups.len() > 10 {
            let _ = writeln!(s, "  ... {} older", self.base_backups.len() - 10);
        }

        let w = &self.wal;
        match (&w.oldest_segment, &w.newest_segment) {
            (Some(a), Some(b)) => {
                let _ = writeln!(s, "WAL: {} segment(s) {a} .. {b}, {}; timelines {}", w.segments, human_bytes(w.bytes), w.timelines.join(", "));
            }
            _ => {
                let _ = writeln!(s, "WAL: no segments");
            }
        }
        if w.history_files + w.backup_labels + w.partial_files > 0 {
            let _ = writeln!(s, "     {} history, {} backup label(s), {} partial", w.history_files, w.backup_labels, w.partial_files);
        }

        if let Some(c) = &self.continuity {
            let _ = writeln!(
                s,
                "Continuity from {}: {} .. {} on timeline(s) {}: {} of {} segment(s) missing",
                c.base_backup,
                c.from_segment,
                c.to_segment,
                c.timelines.join(" -> "),
                c.missing_segments,
                c.expected_segments
            );
            for g in c.gaps.iter().take(10) {
                if g.first == g.last {
                    let _ = writeln!(s, "  gap {}", g.first);
                } else {
                    let _ = writeln!(s, "  gap {} .. {} ({} segments)", g.first, g.last, g.missing);
                }
            }
            if c.gaps.len() > 10 {
                let _ = writeln!(s, "  ... {} more gap(s)", c.gaps.len() - 10);
            }
            if !c.gaps.is_empty() {
                match (&c.replayable_until_segment, c.replayable_until) {
                    (Some(seg), Some(t)) => {
                        let _ = writeln!(s, "  replay can reach {seg} ({}) before the first gap", rfc3339(t));
                    }
                    _ => {
                        let _ = writeln!(s, "  replay cannot start: the backup's first segment is missing");
                    }
                }
            }
        }
        if self.other_objects > 0 {
            let _ = writeln!(s, "Other objects: {} (e.g. {})", self.other_objects, self.other_examples.join(", "));
        }
        for n in &self.notes {
            let _ = writeln!(s, "Note: {n}");
        }
        s
    }
}

/// Bytes for people: `1.5 GiB`. The one formatter of sizes in reports, plans and progress lines.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_000_000_000;

    fn prefix() -> S3Url {
        S3Url::instance_prefix("bkt", "6e101b27-ee1b-4f4d-a032-4401a3709ec3").unwrap()
    }

    fn obj(rel: &str, ms: i64) -> ObjectInfo {
        ObjectInfo { key: prefix().join(rel).key, size: 100, last_modified_ms: ms }
    }

    fn seg(tli: u32, log: u32, s: u32) -> String {
        Segment { tli, log, seg: s }.name()
    }

    fn backup(start: &str, ms: i64, sentinel: bool) -> Vec<ObjectInfo> {
        let name = layout::backup_name(&Segment::parse(start).unwrap(), "00000028");
        let mut v = vec![obj(&layout::extended_version(&name), ms - 2), obj(&layout::partition(&name, 0), ms - 1)];
        if sentinel {
            v.push(obj(&layout::sentinel(&name), ms));
        }
        v
    }

    fn wal(names: &[String], ms: i64) -> Vec<ObjectInfo> {
        names.iter().enumerate().map(|(i, n)| obj(&layout::wal_segment(&Segment::parse(n).unwrap()), ms + i as i64)).collect()
    }

    #[test]
    fn continuous_across_log_boundary_is_recoverable() {
        let mut o = backup(&seg(1, 0, 0xFE), T0, true);
        o.extend(wal(&[seg(1, 0, 0xFE), seg(1, 0, 0xFF), seg(1, 1, 0), seg(1, 1, 1)], T0 + 10));
        o.push(obj(layout::SYSID, T0 - 100));
        let r = analyze(&prefix(), &o, T0 + 1000);
        assert_eq!(r.verdict, Verdict::Recoverable);
        let c = r.continuity.as_ref().unwrap();
        assert_eq!(c.expected_segments, 4);
        assert!(c.gaps.is_empty());
        assert_eq!(c.to_segment, seg(1, 1, 1));
        assert_eq!(r.recovery_point, Some(T0 + 13));
        assert!(r.sysid_present);
        assert_eq!(r.other_objects, 0);
        assert_eq!(r.objects, 8);
    }

    #[test]
    fn gaps_are_listed_as_inclusive_ranges() {
        let mut o = backup(&seg(1, 0, 0xFD), T0, true);
        // Missing: FE..01/00 (3 segments across the boundary), 01/03.
        o.extend(wal(&[seg(1, 0, 0xFD), seg(1, 1, 1), seg(1, 1, 2), seg(1, 1, 4)], T0 + 10));
        let r = analyze(&prefix(), &o, T0);
        assert_eq!(r.verdict, Verdict::RecoverableWithGaps);
        let c = r.continuity.unwrap();
        assert_eq!(c.gaps, vec![Gap { first: seg(1, 0, 0xFE), last: seg(1, 1, 0), missing: 3 }, Gap { first: seg(1, 1, 3), last: seg(1, 1, 3), missing: 1 },]);
        assert_eq!(c.missing_segments, 4);
        assert_eq!(c.expected_segments, 8);
        assert_eq!(c.replayable_until_segment, Some(seg(1, 0, 0xFD)));
        assert_eq!(c.replayable_until, Some(T0 + 10));
    }

    #[test]
    fn missing_start_segment_is_not_recoverable() {
        let mut o = backup(&seg(1, 0, 3), T0, true);
        o.extend(wal(&[seg(1, 0, 4)], T0 + 10));
        let r = analyze(&prefix(), &o, T0);
        assert_eq!(r.verdict, Verdict::BaseBackupWalMissing);
        assert_eq!(r.continuity.unwrap().gaps[0].first, seg(1, 0, 3));
        // No WAL at all after the backup: the start segment is the gap.
        let r = analyze(&prefix(), &backup(&seg(1, 0, 3), T0, true), T0);
        assert_eq!(r.verdict, Verdict::BaseBackupWalMissing);
        assert_eq!(r.recovery_point, None);
    }

    #[test]
    fn backup_without_sentinel_is_incomplete() {
        let mut o = backup(&seg(1, 0, 3), T0, false);
        o.extend(wal(&[seg(1, 0, 3), seg(1, 0, 4)], T0));
        let r = analyze(&prefix(), &o, T0);
        assert_eq!(r.verdict, Verdict::NoCompleteBaseBackup);
        assert_eq!(r.base_backups.len(), 1);
        assert!(!r.base_backups[0].complete);
        assert_eq!(r.base_backups[0].partitions, 1);
        assert!(r.continuity.is_none());
        assert_eq!(r.recovery_point, None);
        assert!(r.render_text().contains("INCOMPLETE"));
    }

    #[test]
    fn latest_complete_backup_is_used_and_older_wal_ignored() {
        let mut o = backup(&seg(1, 0, 2), T0, true);
        o.extend(backup(&seg(1, 0, 6), T0 + 50, true));
        o.extend(backup(&seg(1, 0, 9), T0 + 90, false)); // in progress
        o.extend(wal(&[seg(1, 0, 2), seg(1, 0, 6), seg(1, 0, 7), seg(1, 0, 8), seg(1, 0, 9)], T0 + 100));
        let r = analyze(&prefix(), &o, T0);
        assert_eq!(r.latest_complete_backup.as_deref(), Some(layout::backup_name(&Segment { tli: 1, log: 0, seg: 6 }, "00000028").as_str()));
        assert_eq!(r.verdict, Verdict::Recoverable);
        assert_eq!(r.base_backups.len(), 3);
    }

    #[test]
    fn timeline_switch_is_not_a_gap() {
        // Backup on TLI 1 at 03; TLI 2 starts at 06 (switch point inside 06), history present.
        let mut o = backup(&seg(1, 0, 3), T0, true);
        o.extend(wal(&[seg(1, 0, 3), seg(1, 0, 4), seg(1, 0, 5)], T0 + 10));
        o.push(obj(&layout::partial(&Segment { tli: 1, log: 0, seg: 6 }), T0 + 20));
        o.push(obj(&layout::history(2), T0 + 21));
        o.extend(wal(&[seg(2, 0, 6), seg(2, 0, 7)], T0 + 30));
        let r = analyze(&prefix(), &o, T0);
        assert_eq!(r.verdict, Verdict::Recoverable, "{}", r.render_text());
        let c = r.continuity.as_ref().unwrap();
        assert_eq!(c.timelines, vec!["00000001", "00000002"]);
        assert_eq!(c.to_segment, seg(2, 0, 7));
        assert_eq!(c.expected_segments, 5);
        assert_eq!(r.recovery_point, Some(T0 + 31));
        assert_eq!(r.wal.partial_files, 1);
        assert_eq!(r.wal.history_files, 1);
        assert_eq!(r.wal.segments, 5);

        // A hole on the old timeline before the switch is still a gap, named on that timeline.
        let mut o = backup(&seg(1, 0, 3), T0, true);
        o.extend(wal(&[seg(1, 0, 3)], T0 + 10));
        o.push(obj(&layout::history(2), T0 + 21));
        o.extend(wal(&[seg(2, 0, 6), seg(2, 0, 7)], T0 + 30));
        let c = analyze(&prefix(), &o, T0).continuity.unwrap();
        assert_eq!(c.gaps, vec![Gap { first: seg(1, 0, 4), last: seg(1, 0, 5), missing: 2 }]);
    }

    #[test]
    fn timelines_without_history_or_outside_lineage_are_not_followed() {
        let mut o = backup(&seg(1, 0, 3), T0, true);
        o.extend(wal(&[seg(1, 0, 3), seg(1, 0, 4)], T0 + 10));
        o.extend(wal(&[seg(3, 0, 5)], T0 + 20)); // no 00000003.history
        o.push(obj(&layout::history(2), T0 + 21));
        o.extend(wal(&[seg(2, 0, 1)], T0 + 30)); // branched before the backup
        let r = analyze(&prefix(), &o, T0);
        assert_eq!(r.verdict, Verdict::Recoverable);
        let c = r.continuity.as_ref().unwrap();
        assert_eq!(c.timelines, vec!["00000001"]);
        assert_eq!(c.to_segment, seg(1, 0, 4));
        assert_eq!(r.notes.len(), 2, "{:?}", r.notes);
    }

    #[test]
    fn garbage_keys_never_panic_and_are_counted() {
        let p = prefix();
        // Keys near the layout's, each broken in one way (layout's own tests name them literally).
        let (w, b) = (layout::WAL, layout::BASEBACKUPS);
        let seg3 = Segment::parse("000000010000000000000003").unwrap();
        let name = layout::backup_name(&seg3, "00000028");
        let sentinel = layout::sentinel(&name);
        let segment_named = |n: &str| layout::wal_segment(&seg3).replace(&seg3.name(), n);
        let not_a_number = |k: &str| k.rfind("00000000").map(|i| format!("{}x{}", &k[..i], &k[i + 8..])).unwrap();
        let keys: Vec<String> = vec![
            String::new(),
            w.to_string(),
            segment_named(""),
            segment_named(&"z".repeat(24)),
            segment_named("000000010000000000000100"), // segment part above FF
            segment_named(&format!("{}ÄÄ", &seg3.name()[..22])),
            layout::history(1).rsplit_once('.').unwrap().0.to_string(),       // not compressed
            layout::backup_label(&seg3, "00000028").replace(".00000028", ""), // no offset
            b.to_string(),
            format!("{b}{}", &name[..5]),
            format!("{b}{}{}", &name[..5], "Ä".repeat(35)),
            sentinel[..b.len() + name.len() - 1].to_string(), // name cut short
            not_a_number(&layout::partition(&name, 0)),       // partition number not digits
            sentinel[..sentinel.len() - 1].to_string(),       // suffix cut short
            format!("{}/", layout::SYSID.rsplit_once('/').unwrap().0),
            "random.txt".into(),
        ];
        let mut o: Vec<ObjectInfo> = keys.iter().map(|k| obj(k, T0)).collect();
        o.push(ObjectInfo { key: "elsewhere/x".into(), size: 1, last_modified_ms: 0 });
        o.push(obj("random.txt", T0)); // duplicate
        let r = analyze(&p, &o, T0);
        assert_eq!(r.verdict, Verdict::NoCompleteBaseBackup);
        assert_eq!(r.objects, 17);
        assert_eq!(r.other_objects, 17);
        assert_eq!(r.other_examples.len(), OTHER_EXAMPLES);
        assert!(r.base_backups.is_empty());
        assert_eq!(r.wal.segments, 0);
        assert!(r.notes.iter().any(|n| n.contains("000000FF")));
        let _ = r.render_text();
        let _ = serde_json::to_string(&r).unwrap();
    }

    #[test]
    fn empty_and_unreachable() {
        let r = analyze(&prefix(), &[], T0);
        assert_eq!(r.verdict, Verdict::Empty);
        assert!(r.render_text().starts_with("NOT RECOVERABLE: nothing stored"));
        let u = VerifyReport::unreachable(&prefix(), "could not reach".into(), T0);
        let j = serde_json::to_value(&u).unwrap();
        assert_eq!(j["verdict"], "unreachable");
        assert_eq!(j["error"], "could not reach");
        assert!(u.render_text().contains("could not reach"));
    }

    #[test]
    fn json_shape_is_stable() {
        let mut o = backup(&seg(1, 0, 3), T0, true);
        o.extend(wal(&[seg(1, 0, 3)], T0 + 10));
        let j = serde_json::to_value(analyze(&prefix(), &o, T0)).unwrap();
        assert_eq!(j["verdict"], "recoverable");
        assert!(j.get("error").is_none());
        assert_eq!(j["prefix"], "s3://bkt/backups/6e101b27-ee1b-4f4d-a032-4401a3709ec3/wal/");
        assert_eq!(j["checked_at"], rfc3339(T0));
        assert_eq!(j["recovery_point"], rfc3339(T0 + 10));
        assert_eq!(j["base_backups"][0]["completed_at"], rfc3339(T0));
        assert_eq!(j["continuity"]["gaps"], serde_json::json!([]));
    }
}
