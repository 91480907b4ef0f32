//! Backup verification: what an instance prefix in the object store really holds.
//!
//! [`analyze`] is pure: it classifies a listing of `s3://<bucket>/backups/<id>/wal/` (WAL-E 005 layout)
//! and decides whether the instance can be restored. [`verify`] lists the store and never fails:
//! a listing error becomes the [`Verdict::Unreachable`] verdict, so an alert can say so.
//!
//! Layout under the prefix:
//! - `basebackups_005/base_<SEG24>_<OFF8>/extended_version.txt` and `.../tar_partitions/part_<N>.tar.lzo`
//! - `basebackups_005/base_<SEG24>_<OFF8>_backup_stop_sentinel.json`: the backup is complete iff this
//!   exists; its LastModified is the backup's time; SEG24 is the backup's start segment.
//! - `wal_005/<SEG24>.lzo` segments, `<SEG24>.<OFF8>.backup.lzo` backup labels, `<TLI8>.history.lzo`
//!   timeline histories, `<SEG24>.partial.lzo` partial segments (only segments count for continuity).
//! - `sysids/sysid` (written by the platform).
//!
//! Segment names are TLI(8 hex) + log(8 hex) + seg(8 hex); with 16 MB segments (PostgreSQL >= 9.3)
//! seg runs 00000000..000000FF and the segment after seg FF is log+1, seg 0.
//!
//! Which base backup: the latest complete one (newest sentinel LastModified, as WAL-E's `LATEST`) that
//! also has at least one tar partition (a sentinel without partitions cannot be fetched).
//!
//! Timeline switches (the choice made here, from the listing alone, without reading any object):
//! starting on the backup's timeline, recovery follows every higher timeline that has a
//! `<TLI>.history.lzo` file and at least one segment, in ascending order. A followed timeline takes over
//! at its lowest segment number (the segment holding the switch point: PostgreSQL writes that segment
//! on the new timeline, and the old timeline's copy is at most a `.partial`). So segment n is expected
//! on the highest followed timeline whose first segment is <= n; segments of older timelines at or past
//! a switch are ignored, and the switch itself is never a gap. A history timeline whose first segment
//! lies before the backup start or before the previous switch is not in the backup's lineage: it is
//! ignored with a note. Segments on a higher timeline without a history file are not followed (PostgreSQL
//! cannot follow them either) and are noted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::adapters::s3::{ObjectInfo, ObjectStore, S3Url};
use crate::layout;
use crate::timeutil::{rfc3339, serde_ms, serde_opt_ms};

/// How many unrecognised keys a report quotes.
const OTHER_EXAMPLES: usize = 5;

/// A WAL segment name, TLI + log + seg.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub tli: u32,
    pub log: u32,
    pub seg: u32,
}

fn hex8(s: &str) -> Option<u32> {
    if s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        u32::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

impl Segment {
    /// Parses 24 hex digits (either case). Rejects seg > 0xFF, which 16 MB segments never have.
    pub fn parse(name: &str) -> Option<Segment> {
        if name.len() != 24 || !name.is_ascii() {
            return None;
        }
        let s = Segment { tli: hex8(&name[0..8])?, log: hex8(&name[8..16])?, seg: hex8(&name[16..24])? };
        (s.seg <= 0xFF).then_some(s)
    }

    /// Position on its timeline: log * 256 + seg.
    pub fn index(&self) -> u64 {
        ((self.log as u64) << 8) | self.seg as u64
    }

    pub fn from_index(tli: u32, index: u64) -> Option<Segment> {
        let log = u32::try_from(index >> 8).ok()?;
        Some(Segment { tli, log, seg: (index & 0xFF) as u32 })
    }

    /// The following segment on the same timeline (seg FF wraps to the next log).
    pub fn next(&self) -> Option<Segment> {
        Segment::from_index(self.tli, self.index().checked_add(1)?)
    }

    pub fn name(&self) -> String {
        format!("{:08X}{:08X}{:08X}", self.tli, self.log, self.seg)
    }
}

impl std::fmt::Display for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

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
    /// Timelines with a `.history` file.
    pub history_timelines: Vec<String>,
    /// `.backup.lzo` labels.
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

/// `base_<SEG24>_<OFF8>` followed by `rest`; returns (normalised name, start, offset, rest).
fn split_base(s: &str) -> Option<(String, Segment, String, &str)> {
    let body = s.strip_prefix("base_")?;
    if body.len() < 33 || !body.is_char_boundary(24) || !body.is_char_boundary(33) {
        return None;
    }
    let seg = Segment::parse(&body[..24])?;
    if body.as_bytes()[24] != b'_' {
        return None;
    }
    let off = &body[25..33];
    hex8(off)?;
    let off = off.to_ascii_uppercase();
    Some((format!("base_{}_{}", seg.name(), off), seg, off, &body[33..]))
}

fn is_partition(name: &str) -> bool {
    name.strip_prefix("part_").and_then(|r| r.strip_suffix(".tar.lzo")).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

enum WalFile {
    Segment(Segment),
    BackupLabel,
    History(u32),
    Partial,
}

fn classify_wal(name: &str) -> Option<WalFile> {
    let stem = name.strip_suffix(".lzo")?;
    if let Some(s) = Segment::parse(stem) {
        return Some(WalFile::Segment(s));
    }
    if let Some(t) = stem.strip_suffix(".history") {
        return hex8(t).map(WalFile::History);
    }
    if let Some(p) = stem.strip_suffix(".partial") {
        return Segment::parse(p).map(|_| WalFile::Partial);
    }
    if let Some(b) = stem.strip_suffix(".backup") {
        let (seg, off) = b.split_once('.')?;
        return (Segment::parse(seg).is_some() && hex8(off).is_some()).then_some(WalFile::BackupLabel);
    }
    None
}

fn max_opt(a: Option<i64>, b: i64) -> Option<i64> {
    Some(a.map_or(b, |a| a.max(b)))
}

/// Classifies a listing of `prefix` and decides whether it can be restored. Never panics.
pub fn analyze(prefix: &S3Url, objects: &[ObjectInfo], checked_at_ms: i64) -> VerifyReport {
    let mut backups: BTreeMap<String, BackupAcc> = BTreeMap::new();
    // Per timeline: segment index -> LastModified.
    let mut segs: BTreeMap<u32, BTreeMap<u64, i64>> = BTreeMap::new();
    let mut histories: BTreeSet<u32> = BTreeSet::new();
    let mut wal = WalSummary::default();
    let mut sysid_present = false;
    let mut other_objects = 0u64;
    let mut other_examples = Vec::new();
    let mut bytes = 0u64;
    let mut seen_keys: BTreeSet<&str> = BTreeSet::new();
    let mut notes = Vec::new();
    let mut odd_segments = 0u64;

    for o in objects {
        // A listing never repeats a key; a merged or retried one might.
        if !seen_keys.insert(o.key.as_str()) {
            continue;
        }
        bytes = bytes.saturating_add(o.size);
        let mut other = || {
            other_objects += 1;
            if other_examples.len() < OTHER_EXAMPLES {
                other_examples.push(prefix.relative(&o.key).unwrap_or(&o.key).to_string());
            }
        };
        let Some(rel) = prefix.relative(&o.key) else {
            other();
            continue;
        };
        if rel == layout::SYSID {
            sysid_present = true;
        } else if let Some(b) = rel.strip_prefix(layout::BASEBACKUPS) {
            let Some((name, start, off, rest)) = split_base(b) else {
                other();
                continue;
            };
            let inside = rest.strip_prefix('/');
            let kind = if rest == layout::SENTINEL_SUFFIX {
                0
            } else if inside == Some(layout::EXTENDED_VERSION) {
                1
            } else if inside.and_then(|r| r.strip_prefix(layout::PARTITIONS)).is_some_and(is_partition) {
                2
            } else {
                other();
                continue;
            };
            let acc = backups.entry(name).or_default();
            acc.start = Some(start);
            acc.start_offset = off;
            acc.bytes = acc.bytes.saturating_add(o.size);
            acc.last_upload = max_opt(acc.last_upload, o.last_modified_ms);
            match kind {
                0 => acc.sentinel = max_opt(acc.sentinel, o.last_modified_ms),
                1 => acc.extended_version = true,
                _ => acc.partitions += 1,
            }
        } else if let Some(w) = rel.strip_prefix(layout::WAL) {
            match classify_wal(w) {
                Some(WalFile::Segment(s)) => {
                    wal.segments += 1;
                    wal.bytes = wal.bytes.saturating_add(o.size);
                    segs.entry(s.tli).or_default().insert(s.index(), o.last_modified_ms);
                }
                Some(WalFile::BackupLabel) => wal.backup_labels += 1,
                Some(WalFile::History(t)) => {
                    wal.history_files += 1;
                    histories.insert(t);
                }
                Some(WalFile::Partial) => wal.partial_files += 1,
                None => {
                    // 24 hex digits with seg > FF: not a 16 MB segment.
                    if w.strip_suffix(".lzo").is_some_and(|s| s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit())) {
                        odd_segments += 1;
                    }
                    other();
                }
            }
        } else {
            other();
        }
    }
    if odd_segments > 0 {
        notes
            .push(format!("{odd_segments} WAL name(s) have a segment part above 000000FF: this cluster may not use 16 MB segments, and they were not checked"));
    }

    let idx_name = |tli: u32, i: u64| Segment::from_index(tli, i).map_or_else(String::new, |s| s.name());
    wal.timelines = segs.keys().map(|t| format!("{t:08X}")).collect();
    wal.history_timelines = histories.iter().map(|t| format!("{t:08X}")).collect();
    let all_sorted = segs.iter().flat_map(|(t, m)| m.keys().map(move |i| (*t, *i)));
    wal.oldest_segment = all_sorted.clone().next().map(|(t, i)| idx_name(t, i));
    wal.newest_segment = all_sorted.last().map(|(t, i)| idx_name(t, i));

    let mut base_backups: Vec<BaseBackup> = backups
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
    base_backups.sort_by(|a, b| (&a.start_segment, &a.start_offset).cmp(&(&b.start_segment, &b.start_offset)));
    for b in &base_backups {
        if b.complete && b.partitions == 0 {
            notes.push(format!("{} has a sentinel but no tar partitions: it cannot be fetched", b.name));
        }
    }

    // WAL-E's LATEST: newest sentinel; ties broken by position.
    let chosen = base_backups
        .iter()
        .filter(|b| b.complete && b.partitions > 0)
        .max_by_key(|b| (b.completed_at, b.start_segment.clone(), b.start_offset.clone()))
        .cloned();

    let mut continuity = None;
    let mut recovery_point = None;
    let verdict = if objects.is_empty() {
        Verdict::Empty
    } else if let Some(base) = &chosen {
        let (c, newest_ms) = continuity_from(&base.name, base.start_segment.as_str(), &segs, &histories, &mut notes);
        let v = if c.gaps.first().is_some_and(|g| g.first == c.from_segment) {
            Verdict::BaseBackupWalMissing
        } else if c.gaps.is_empty() {
            Verdict::Recoverable
        } else {
            Verdict::RecoverableWithGaps
        };
        // A backup that cannot reach consistency has no recovery point.
        if v != Verdict::BaseBackupWalMissing {
            recovery_point = match (newest_ms, base.completed_at) {
                (Some(w), Some(s)) => Some(w.max(s)),
                (w, s) => w.or(s),
            };
        }
        continuity = Some(c);
        v
    } else {
        if base_backups.iter().any(|b| !b.complete) {
            notes.push("base backup(s) without a backup_stop_sentinel: backup-push did not finish".into());
        }
        Verdict::NoCompleteBaseBackup
    };

    VerifyReport {
        prefix: prefix.clone(),
        checked_at: checked_at_ms,
        verdict,
        objects: seen_keys.len() as u64,
        bytes,
        sysid_present,
        latest_complete_backup: chosen.map(|b| b.name),
        base_backups,
        wal,
        continuity,
        recovery_point,
        other_objects,
        other_examples,
        notes,
    }
}

/// Continuity from `start_name` along its timeline lineage; also returns the newest segment's LastModified.
fn continuity_from(
    base_name: &str,
    start_name: &str,
    segs: &BTreeMap<u32, BTreeMap<u64, i64>>,
    histories: &BTreeSet<u32>,
    notes: &mut Vec<String>,
) -> (Continuity, Option<i64>) {
    let empty = BTreeMap::new();
    // start_name came from Segment::name, so it parses.
    let start = Segment::parse(start_name).unwrap_or(Segment { tli: 1, log: 0, seg: 0 });
    let start_idx = start.index();

    // (timeline, index where it takes over)
    let mut chain: Vec<(u32, u64)> = vec![(start.tli, start_idx)];
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

    // Each chain element owns [from, next_from - 1]; find the newest segment present in its own range.
    let ranges: Vec<(u32, u64, Option<u64>)> =
        chain.iter().enumerate().map(|(i, &(t, from))| (t, from, chain.get(i + 1).map(|n| n.1.saturating_sub(1)))).collect();
    let mut end: (u32, u64) = (start.tli, start_idx);
    let mut newest_ms = None;
    for &(t, from, to) in &ranges {
        let m = segs.get(&t).unwrap_or(&empty);
        if let Some((&i, &ms)) = m.range(from..=to.unwrap_or(u64::MAX)).next_back() {
            if i >= end.1 {
                end = (t, i);
                newest_ms = Some(ms);
            }
        }
    }
    let end_idx = end.1;

    let mut gaps = Vec::new();
    let mut expected = 0u64;
    let mut missing = 0u64;
    // Last present segment before the first gap.
    let mut replayable: Option<(u32, u64, i64)> = None;
    let mut gap_seen = false;
    for &(t, from, to) in &ranges {
        if from > end_idx {
            break;
        }
        let hi = to.map_or(end_idx, |x| x.min(end_idx));
        if hi < from {
            continue;
        }
        expected += hi - from + 1;
        let m = segs.get(&t).unwrap_or(&empty);
        let mut cursor = from;
        for (&i, &ms) in m.range(from..=hi) {
            if i > cursor {
                gaps.push(Gap { first: name_at(t, cursor), last: name_at(t, i - 1), missing: i - cursor });
                missing += i - cursor;
                gap_seen = true;
            }
            if !gap_seen {
                replayable = Some((t, i, ms));
            }
            cursor = i + 1;
        }
        if cursor <= hi {
            gaps.push(Gap { first: name_at(t, cursor), last: name_at(t, hi), missing: hi - cursor + 1 });
            missing += hi - cursor + 1;
            gap_seen = true;
        }
    }

    let c = Continuity {
        base_backup: base_name.to_string(),
        timelines: chain.iter().filter(|c| c.1 <= end_idx).map(|c| format!("{:08X}", c.0)).collect(),
        from_segment: start.name(),
        to_segment: name_at(end.0, end_idx),
        expected_segments: expected,
        missing_segments: missing,
        replayable_until_segment: replayable.map(|r| name_at(r.0, r.1)),
        replayable_until: replayable.map(|r| r.2),
        gaps,
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

fn human_bytes(b: u64) -> String {
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
        let base = format!("basebackups_005/base_{start}_00000028");
        let mut v = vec![obj(&format!("{base}/extended_version.txt"), ms - 2), obj(&format!("{base}/tar_partitions/part_00000000.tar.lzo"), ms - 1)];
        if sentinel {
            v.push(obj(&format!("{base}_backup_stop_sentinel.json"), ms));
        }
        v
    }

    fn wal(names: &[String], ms: i64) -> Vec<ObjectInfo> {
        names.iter().enumerate().map(|(i, n)| obj(&format!("wal_005/{n}.lzo"), ms + i as i64)).collect()
    }

    #[test]
    fn segment_arithmetic_crosses_ff() {
        let s = Segment::parse("0000000100000000000000FF").unwrap();
        assert_eq!(s.next().unwrap().name(), "000000010000000100000000");
        assert_eq!(Segment::parse("00000001000000010000000a").unwrap().name(), "00000001000000010000000A");
        assert_eq!(Segment::parse("000000010000000000000100"), None);
        assert_eq!(Segment::parse("00000001000000000000000G"), None);
        assert_eq!(Segment::parse("ÄÄÄÄÄÄÄÄÄÄÄÄ"), None);
        assert_eq!(Segment::parse("00000001FFFFFFFF000000FF").unwrap().next(), None);
    }

    #[test]
    fn continuous_across_log_boundary_is_recoverable() {
        let mut o = backup(&seg(1, 0, 0xFE), T0, true);
        o.extend(wal(&[seg(1, 0, 0xFE), seg(1, 0, 0xFF), seg(1, 1, 0), seg(1, 1, 1)], T0 + 10));
        o.push(obj("sysids/sysid", T0 - 100));
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
        assert_eq!(r.latest_complete_backup.as_deref(), Some(format!("base_{}_00000028", seg(1, 0, 6)).as_str()));
        assert_eq!(r.verdict, Verdict::Recoverable);
        assert_eq!(r.base_backups.len(), 3);
    }

    #[test]
    fn timeline_switch_is_not_a_gap() {
        // Backup on TLI 1 at 03; TLI 2 starts at 06 (switch point inside 06), history present.
        let mut o = backup(&seg(1, 0, 3), T0, true);
        o.extend(wal(&[seg(1, 0, 3), seg(1, 0, 4), seg(1, 0, 5)], T0 + 10));
        o.push(obj(&format!("wal_005/{}.partial.lzo", seg(1, 0, 6)), T0 + 20));
        o.push(obj("wal_005/00000002.history.lzo", T0 + 21));
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
        o.push(obj("wal_005/00000002.history.lzo", T0 + 21));
        o.extend(wal(&[seg(2, 0, 6), seg(2, 0, 7)], T0 + 30));
        let c = analyze(&prefix(), &o, T0).continuity.unwrap();
        assert_eq!(c.gaps, vec![Gap { first: seg(1, 0, 4), last: seg(1, 0, 5), missing: 2 }]);
    }

    #[test]
    fn timelines_without_history_or_outside_lineage_are_not_followed() {
        let mut o = backup(&seg(1, 0, 3), T0, true);
        o.extend(wal(&[seg(1, 0, 3), seg(1, 0, 4)], T0 + 10));
        o.extend(wal(&[seg(3, 0, 5)], T0 + 20)); // no 00000003.history
        o.push(obj("wal_005/00000002.history.lzo", T0 + 21));
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
        let mut o: Vec<ObjectInfo> = [
            "",
            "wal_005/",
            "wal_005/.lzo",
            "wal_005/zzzzzzzzzzzzzzzzzzzzzzzz.lzo",
            "wal_005/000000010000000000000100.lzo",
            "wal_005/0000000100000000000000ÄÄ.lzo",
            "wal_005/00000001.history",
            "wal_005/000000010000000000000003.backup.lzo",
            "basebackups_005/",
            "basebackups_005/base_",
            "basebackups_005/base_ÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄ",
            "basebackups_005/base_000000010000000000000003_0000002",
            "basebackups_005/base_000000010000000000000003_00000028/tar_partitions/part_x.tar.lzo",
            "basebackups_005/base_000000010000000000000003_00000028_backup_stop_sentinel.jso",
            "sysids/",
            "random.txt",
        ]
        .iter()
        .map(|k| obj(k, T0))
        .collect();
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
