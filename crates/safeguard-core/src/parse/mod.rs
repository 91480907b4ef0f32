//! Pure parsing: one syslog line in, at most one typed [`Event`] out. No I/O, no panics on any input.
//!
//! Flow: [`Prefilter`] rejects most lines with one multi-pattern scan; [`envelope::parse`] splits the
//! syslog framing; [`container`] reads the program and script prefix; [`broker`] and [`wale`] read the
//! payload. Attribution of events that name no instance happens later, against the store's index.

pub mod broker;
pub mod container;
pub mod envelope;
pub mod prefilter;
pub mod wale;

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::{Deserialize, Serialize};

pub use envelope::{EnvTime, Envelope};
pub use prefilter::Prefilter;

/// Why a line that looked relevant could not be read. Counted per reason; never fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Reject {
    #[error("line longer than the configured maximum")]
    TooLong,
    #[error("line is not valid UTF-8")]
    Utf8,
    #[error("no syslog envelope")]
    Envelope,
    #[error("malformed JSON")]
    Json,
    #[error("broker line without the fields its event needs")]
    Broker,
    #[error("WAL-E line that does not parse")]
    WalE,
    #[error("time outside 1970..=9999")]
    Time,
}

/// The latest time a line may carry: 9999-12-31T23:59:59.999Z. Later (or before 1970) is a garbled
/// stamp, and would not survive the store's RFC 3339 form.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

fn plausible(t: i64) -> bool {
    (0..=MAX_TIME_MS).contains(&t)
}

impl Reject {
    pub const ALL: [Reject; 7] = [Reject::TooLong, Reject::Utf8, Reject::Envelope, Reject::Json, Reject::Broker, Reject::WalE, Reject::Time];
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::TooLong => "too_long",
            Reject::Utf8 => "utf8",
            Reject::Envelope => "envelope",
            Reject::Json => "json",
            Reject::Broker => "broker",
            Reject::WalE => "wal_e",
            Reject::Time => "time",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Start,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushState {
    Begin,
    Complete,
    Skip,
}

/// The image's restore_leader_if_missing script, one variant per message it prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreMsg {
    LeaderExists,
    LocalDatabaseExists,
    NewClusterNoBackup,
    FetchingSysid,
    ReinitializingSystemId,
    PreparingRestore,
}

/// Which script inside the container printed the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Script {
    Patroni,
    Backup,
    Startup,
    RestoreLeaderIfMissing,
    Reinitialize,
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    // Broker lifecycle.
    Provision {
        phase: Phase,
        org_guid: Option<String>,
        space_guid: Option<String>,
        plan_id: Option<String>,
        name: Option<String>,
    },
    Deprovision {
        phase: Phase,
    },
    EtcdDeleted,
    Update {
        phase: Phase,
    },
    Recreate {
        phase: Phase,
    },
    Bind {
        phase: Phase,
        app_guid: Option<String>,
    },
    Unbind {
        phase: Phase,
    },
    AddNode {
        node_uuid: Option<String>,
        backend: Option<String>,
    },
    AddNodeSuccess {
        member: Option<String>,
    },
    RemoveNode {
        node_uuid: Option<String>,
        backend: Option<String>,
    },
    AssignPort {
        port: Option<u64>,
    },
    RemoveClusterAssignment,
    /// A clone: the instance this event is attributed to (the target) gets the source's backups.
    CopyBackup {
        from_instance: String,
        from_uri: String,
        to_uri: String,
    },
    // Containers.
    ContainerCreating,
    ContainerDestroying,
    ContainerRegistered {
        public_host: String,
    },
    PublicAddress {
        address: String,
    },
    WalEEnabled {
        bucket: String,
    },
    Restore {
        msg: RestoreMsg,
    },
    // WAL-E and PostgreSQL archiving.
    WalPush {
        segment: String,
        state: PushState,
    },
    WalPushFailed {
        detail: String,
    },
    WalERetry,
    BaseBackupStarted {
        backup: String,
    },
    BasePartition {
        backup: String,
        part: String,
        done: bool,
    },
    BaseBackupStopped,
    BaseBackupListed {
        backup: String,
        #[serde(with = "crate::timeutil::serde_opt_ms", default)]
        time: Option<i64>,
    },
    BackupPruned {
        backup: String,
    },
    PartitionDownload {
        part: String,
    },
    WalFetch {
        segment: String,
        state: PushState,
    },
    WalRestoreEnd,
    SysidUploaded,
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        use EventKind::*;
        match self {
            Provision { .. } => "provision",
            Deprovision { .. } => "deprovision",
            EtcdDeleted => "etcd_deleted",
            Update { .. } => "update",
            Recreate { .. } => "recreate",
            Bind { .. } => "bind",
            Unbind { .. } => "unbind",
            AddNode { .. } => "add_node",
            AddNodeSuccess { .. } => "add_node_success",
            RemoveNode { .. } => "remove_node",
            AssignPort { .. } => "assign_port",
            RemoveClusterAssignment => "remove_cluster_assignment",
            CopyBackup { .. } => "copy_backup",
            ContainerCreating => "container_creating",
            ContainerDestroying => "container_destroying",
            ContainerRegistered { .. } => "container_registered",
            PublicAddress { .. } => "public_address",
            WalEEnabled { .. } => "wal_e_enabled",
            Restore { .. } => "restore",
            WalPush { .. } => "wal_push",
            WalPushFailed { .. } => "wal_push_failed",
            WalERetry => "wal_e_retry",
            BaseBackupStarted { .. } => "base_backup_started",
            BasePartition { .. } => "base_partition",
            BaseBackupStopped => "base_backup_stopped",
            BaseBackupListed { .. } => "base_backup_listed",
            BackupPruned { .. } => "backup_pruned",
            PartitionDownload { .. } => "partition_download",
            WalFetch { .. } => "wal_fetch",
            WalRestoreEnd => "wal_restore_end",
            SysidUploaded => "sysid_uploaded",
        }
    }
}

/// One parsed line. `instance` is set when the payload names the instance; otherwise `node_uuid` (the
/// container) or `short_id` (the 6-character script prefix) let the store attribute it.
/// The names borrow from the line where they can: most lines become an event that is applied and
/// dropped at once, and copying five names per line cost more than parsing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event<'a> {
    #[serde(with = "crate::timeutil::serde_opt_ms", default)]
    pub time: Option<i64>,
    pub host: Cow<'a, str>,
    pub node_uuid: Option<Cow<'a, str>>,
    pub short_id: Option<Cow<'a, str>>,
    pub instance: Option<Cow<'a, str>>,
    /// `s3://bucket/.../<id>/wal/` when the line shows it.
    pub backup_prefix: Option<Cow<'a, str>>,
    pub kind: EventKind,
    /// The time's year was guessed (an RFC 3164 line in a stream that had shown no anchor yet): the
    /// engine places it against the instance's anchored times before applying it.
    #[serde(default)]
    pub weak_year: bool,
}

/// Resolves RFC 3164's missing year for one stream. Times the line carries (payload epochs, WAL-E
/// `STRUCTURED: time=`, RFC 5424 and JSON envelopes) are anchors; a year-less time is placed within half a
/// year of the last time seen (a December-to-January rollover advances the year), never later than the
/// stream's `bound` plus a day (an archive's mtime, or the wall clock). Its state is persisted with the
/// source position, so a restart or a resumed ingest continues with the same year.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct YearClock {
    /// The last time resolved or observed.
    #[serde(default)]
    last: Option<i64>,
    /// True once the year rests on an anchor (a time with a year, a forced year, a live stream's clock).
    #[serde(default)]
    anchored: bool,
    /// Latest plausible time for this stream (an archive's mtime); `None`: the wall clock.
    #[serde(default)]
    bound: Option<i64>,
    /// `ingest --year`: the year of the first year-less line.
    #[serde(default)]
    year: Option<i64>,
}

const DAY_MS: i64 = 86_400_000;
/// How far past its bound a stream's time may run (clock skew between hosts, a file written after its
/// last line was stamped).
pub const FUTURE_SKEW_MS: i64 = DAY_MS;

impl YearClock {
    /// A live stream: its lines are current, so the wall clock anchors the year.
    pub fn live() -> Self {
        YearClock { anchored: true, ..Default::default() }
    }

    /// An archive: years come from its anchors; before any, from `bound` (its mtime), marked weak.
    pub fn archive(bound: Option<i64>, year: Option<i64>) -> Self {
        YearClock { last: None, anchored: year.is_some(), bound, year }
    }

    /// Starts the clock at an anchor found ahead in the stream (the lines before it are placed near it).
    pub fn seed(&mut self, anchor: i64) {
        if self.last.is_none() {
            self.last = Some(anchor);
            self.anchored = true;
        }
    }

    pub fn is_anchored(&self) -> bool {
        self.anchored
    }

    pub fn observe(&mut self, t: i64) {
        self.last = Some(t);
        self.anchored = true;
    }

    /// The time, and whether its year was only guessed.
    pub fn resolve(&mut self, tm: EnvTime, now: i64) -> Option<(i64, bool)> {
        let t = match tm {
            EnvTime::None => return None,
            EnvTime::Full(t) => {
                self.observe(t);
                return Some((t, false));
            }
            EnvTime::NoYear { month, day, h, m, s } => {
                let ceiling = self.bound.unwrap_or(now).saturating_add(FUTURE_SKEW_MS);
                let at = |y: i64| crate::timeutil::from_civil(y, month, day, h, m, s, 0);
                // Feb 29 in a year without one: the nearest year that has it.
                let near = |y: i64| at(y).or_else(|| at(y + 1)).or_else(|| at(y - 1));
                match (self.last, self.year.take()) {
                    (None, Some(y)) => near(y)?,
                    (last, _) => {
                        let reference = last.unwrap_or(ceiling - FUTURE_SKEW_MS);
                        let (ry, _, _) = crate::timeutil::civil_from_days(reference.div_euclid(DAY_MS));
                        let mut t = near(ry)?;
                        if last.is_none() {
                            // No history: the most recent such date not after the bound.
                            if t > ceiling {
                                t = near(ry - 1).unwrap_or(t);
                            }
                        } else if t < reference - 180 * DAY_MS {
                            t = near(ry + 1).unwrap_or(t);
                        } else if t > reference + 180 * DAY_MS {
                            t = near(ry - 1).unwrap_or(t);
                        }
                        if t > ceiling && self.bound.is_some() {
                            // Never in the archive's future: a year back is the only reading left.
                            let (y, _, _) = crate::timeutil::civil_from_days(t.div_euclid(DAY_MS));
                            t = near(y - 1).unwrap_or(t);
                        }
                        t
                    }
                }
            }
        };
        self.last = Some(t);
        Some((t, !self.anchored))
    }
}

/// Moves a time whose year was guessed to the year that puts it nearest the anchored span `[lo, hi]` of
/// the instance it belongs to (ties: the earlier year). Month, day and time of day are kept.
pub fn place_year(t: i64, lo: i64, hi: i64) -> i64 {
    let days = t.div_euclid(DAY_MS);
    let (_, mo, d) = crate::timeutil::civil_from_days(days);
    let ms_of_day = t.rem_euclid(DAY_MS);
    let year_of = |x: i64| crate::timeutil::civil_from_days(x.div_euclid(DAY_MS)).0;
    let (ylo, yhi) = (year_of(lo), year_of(hi));
    let dist = |c: i64| if c < lo { lo - c } else { c.saturating_sub(hi).max(0) };
    (ylo - 1..=yhi + 1).filter_map(|y| crate::timeutil::from_civil(y, mo, d, 0, 0, 0, 0).map(|c| c + ms_of_day)).min_by_key(|&c| (dist(c), c)).unwrap_or(t)
}

/// The time a line carries with its year (an anchor for [`YearClock`]), if it carries one: a full
/// envelope time or a payload time. Irrelevant and unparsable lines give none.
pub fn line_anchor(line: &str) -> Option<i64> {
    let env = envelope::parse(line).ok()?;
    if let EnvTime::Full(t) = env.time {
        return plausible(t).then_some(t);
    }
    // Only a relevant line has a payload time, and every relevant line holds a prefilter pattern: the
    // rest (most of a head probed for its year) are not parsed.
    static PREFILTER: std::sync::OnceLock<prefilter::Prefilter> = std::sync::OnceLock::new();
    if !PREFILTER.get_or_init(prefilter::Prefilter::new).is_match(line.as_bytes()) {
        return None;
    }
    parse_envelope(&env).ok().flatten().and_then(|ev| ev.time).filter(|&t| plausible(t))
}

/// Parses one line. `Ok(None)` means irrelevant (a known-harmless or unrelated line).
pub fn parse_line<'a>(line: &'a str, clock: &mut YearClock, now: i64) -> Result<Option<Event<'a>>, Reject> {
    let env = envelope::parse(line)?;
    let env_time = env.time;
    let Some(mut ev) = parse_envelope(&env)? else {
        return Ok(None);
    };
    // Checked before the clock sees it: one garbled stamp must not move a stream's year.
    if matches!(env_time, EnvTime::Full(t) if !plausible(t)) || ev.time.is_some_and(|t| !plausible(t)) {
        return Err(Reject::Time);
    }
    match ev.time {
        Some(t) => {
            // Payload time is authoritative; still feed the clock so the year stays right for lines without one.
            clock.observe(t);
        }
        None => {
            if let Some((t, weak)) = clock.resolve(env_time, now) {
                ev.time = Some(t);
                ev.weak_year = weak;
            }
        }
    }
    Ok(Some(ev))
}

/// Event from an already split envelope (used by sources that deliver structured messages).
pub fn parse_envelope<'a>(env: &Envelope<'a>) -> Result<Option<Event<'a>>, Reject> {
    match (&env.program, &env.message) {
        (Cow::Borrowed(program), Cow::Borrowed(message)) => event_from(env.host.clone(), program, message),
        // A JSON envelope that unescaped its strings: the event cannot borrow from them.
        (program, message) => Ok(event_from(env.host.clone(), program, message)?.map(Event::into_owned)),
    }
}

fn event_from<'a>(host: Cow<'a, str>, program: &'a str, msg: &'a str) -> Result<Option<Event<'a>>, Reject> {
    let node_uuid = container::node_from_program(program);
    let (script, short_id, body) = container::strip_script_prefix(trim_start(msg));
    let body = trim(body);

    if node_uuid.is_none() && script.is_none() {
        match broker::parse(body, &host)? {
            broker::Lager::Event(ev) => return Ok(Some(*ev)),
            broker::Lager::Ignored => return Ok(None),
            broker::Lager::NotBroker => {}
        }
    }
    let base = |kind: EventKind| Event {
        time: None,
        host,
        node_uuid: node_uuid.map(Cow::Borrowed),
        short_id: short_id.map(Cow::Borrowed),
        instance: None,
        backup_prefix: None,
        kind,
        weak_year: false,
    };
    if let Some(parsed) = wale::parse(body)? {
        let mut ev = base(parsed.kind);
        ev.time = parsed.time;
        if let Some(loc) = parsed.location {
            ev.instance = Some(loc.instance);
            ev.backup_prefix = Some(Cow::Borrowed(loc.prefix));
        }
        return Ok(Some(ev));
    }
    if let Some(c) = container::parse_message(body, script) {
        let mut ev = base(c.kind);
        if let Some(n) = c.node_uuid {
            ev.node_uuid = Some(Cow::Owned(n));
        }
        return Ok(Some(ev));
    }
    Ok(None)
}

impl Event<'_> {
    /// The same event, owning its names.
    pub fn into_owned(self) -> Event<'static> {
        let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        Event {
            time: self.time,
            host: own(self.host),
            node_uuid: self.node_uuid.map(own),
            short_id: self.short_id.map(own),
            instance: self.instance.map(own),
            backup_prefix: self.backup_prefix.map(own),
            kind: self.kind,
            weak_year: self.weak_year,
        }
    }
}

/// The location a WAL-E URL points into: `s3://bucket/<path>/<instance>/wal/...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location<'a> {
    /// Lower case; borrowed unless the URL had upper case in it.
    pub instance: Cow<'a, str>,
    /// Up to and including `wal/`.
    pub prefix: &'a str,
    /// What follows the prefix.
    pub rest: &'a str,
}

/// Finds the instance and backup prefix in any S3 URL WAL-E prints. The instance is the path component
/// before `wal`, so buckets laid out as `backups/<id>/wal/` and other depths both work.
pub fn locate(url: &str) -> Option<Location<'_>> {
    static WAL: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("/wal/"));
    let rest = url.strip_prefix("s3://")?;
    let b = rest.as_bytes();
    let mut from = 0;
    // Each `/wal/` closes a `wal` component; the one before it (never the bucket) may be the instance.
    while let Some(p) = WAL.find(&b[from..]).map(|i| from + i) {
        if let Some(s) = memchr::memrchr(b'/', &b[..p]) {
            let id = &rest[s + 1..p];
            if is_instance_id(id) {
                // `rest[end]` is the `/` after `wal`: the prefix runs through it.
                let end = p + "/wal".len();
                let upper = id.bytes().fold(false, |any, c| any | c.is_ascii_uppercase());
                let instance = if upper { Cow::Owned(id.to_ascii_lowercase()) } else { Cow::Borrowed(id) };
                return Some(Location { instance, prefix: &url[.."s3://".len() + end + 1], rest: &rest[end + 1..] });
            }
        }
        from = p + 1;
    }
    None
}

/// The ASCII bytes `char::is_whitespace` accepts: `\t`..=`\r` and space (`u8::is_ascii_whitespace`
/// leaves out `\x0B`, std's trim does not). Branch-free, so scans with it vectorize.
#[inline]
pub(crate) fn is_ascii_space(c: u8) -> bool {
    (c.wrapping_sub(b'\t') < 5) | (c == b' ')
}

/// `str::trim_start`, skipping ASCII whitespace bytewise (std decodes every char); same result.
fn trim_start(s: &str) -> &str {
    let i = s.bytes().position(|c| !is_ascii_space(c)).unwrap_or(s.len());
    // A non-ASCII char may be Unicode whitespace: std decides from there (`i` is a char boundary).
    if s.as_bytes().get(i).is_some_and(|&c| c >= 0x80) {
        return s[i..].trim_start();
    }
    &s[i..]
}

/// `str::trim`, with the fast path of [`trim_start`] at both ends.
fn trim(s: &str) -> &str {
    let s = trim_start(s);
    let j = s.bytes().rposition(|c| !is_ascii_space(c)).map_or(0, |j| j + 1);
    if j > 0 && s.as_bytes()[j - 1] >= 0x80 {
        return s[..j].trim_end();
    }
    &s[..j]
}

/// Instance ids are Cloud Foundry GUIDs; accept any id-like token so test ids and other platforms work.
pub fn is_instance_id(s: &str) -> bool {
    // Branch-free, so it vectorizes: this runs on every container line's program name.
    (4..=64).contains(&s.len()) && s.bytes().fold(true, |ok, c| ok & (c.is_ascii_alphanumeric() | (c == b'-') | (c == b'_')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_instances_in_urls() {
        let l = locate("s3://b/backups/6e101b27-ee1b-4f4d-a032-4401a3709ec3/wal/wal_005/000000010000000000000001.lzo").unwrap();
        assert_eq!(l.instance, "6e101b27-ee1b-4f4d-a032-4401a3709ec3");
        assert_eq!(l.prefix, "s3://b/backups/6e101b27-ee1b-4f4d-a032-4401a3709ec3/wal/");
        assert_eq!(l.rest, "wal_005/000000010000000000000001.lzo");
        assert_eq!(locate("s3://b/x/wal/"), None);
        assert_eq!(locate("s3://b/wal/x"), None);
        assert_eq!(locate("http://b/backups/abcd/wal/x"), None);
        // The first `wal` after an id-like component; never the bucket; ids lower-cased.
        let l = locate("s3://b/x/wal/y/ABCD/wal/z").unwrap();
        assert_eq!((&*l.instance, l.prefix, l.rest), ("abcd", "s3://b/x/wal/y/ABCD/wal/", "z"));
        assert_eq!(locate("s3://abcd/wal/x"), None);
        assert_eq!(locate("s3://b/abcd/wal/wal/x").map(|l| l.rest), Some("wal/x"));
    }

    #[test]
    fn trims_like_std() {
        for s in ["", " ", "  a b  ", "\t\x0Bx\r\n", "\u{a0} x \u{3000}", "x\u{2028}", "\u{85}", "é ", " \u{1680}é\u{a0}", "\x1Cx\x1F"] {
            assert_eq!(trim_start(s), s.trim_start(), "{s:?}");
            assert_eq!(trim(s), s.trim(), "{s:?}");
        }
    }

    #[test]
    fn year_clock_rolls_over_and_prefers_history() {
        let now = crate::timeutil::parse_rfc3339("2026-11-24T00:00:00Z").unwrap();
        let mut c = YearClock::default();
        let nov = c.resolve(EnvTime::NoYear { month: 11, day: 20, h: 0, m: 0, s: 0 }, now).unwrap().0;
        assert_eq!(crate::timeutil::rfc3339(nov), "2026-11-20T00:00:00.000Z");
        let mut c = YearClock::default();
        let dec = c.resolve(EnvTime::NoYear { month: 12, day: 31, h: 23, m: 0, s: 0 }, now).unwrap().0;
        assert_eq!(crate::timeutil::rfc3339(dec), "2025-12-31T23:00:00.000Z");
        let jan = c.resolve(EnvTime::NoYear { month: 1, day: 1, h: 0, m: 1, s: 0 }, now).unwrap().0;
        assert_eq!(crate::timeutil::rfc3339(jan), "2026-01-01T00:01:00.000Z");
        let mut c = YearClock::default();
        c.observe(crate::timeutil::parse_rfc3339("2016-03-16T23:00:00Z").unwrap());
        let (t, weak) = c.resolve(EnvTime::NoYear { month: 3, day: 17, h: 1, m: 0, s: 0 }, now).unwrap();
        assert_eq!(crate::timeutil::rfc3339(t), "2016-03-17T01:00:00.000Z");
        assert!(!weak);
    }

    #[test]
    fn garbled_times_are_rejected_and_leave_the_clock_alone() {
        let now = crate::timeutil::parse_rfc3339("2026-11-24T00:00:00Z").unwrap();
        let mut c = YearClock::archive(None, None);
        let line = |ts: &str| {
            format!("<134>1 {ts} cell-1 cf-9d8c7b6a-1e2f-4a3b-8c5d-6e7f8a9b0c1d - - - restore_leader_if_missing> new cluster, no existing backup to restore")
        };
        // Both parse as RFC 3339, and land outside the years the store can write back.
        for ts in ["0000-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00"] {
            assert_eq!(parse_line(&line(ts), &mut c, now), Err(Reject::Time), "{ts}");
            assert_eq!(line_anchor(&line(ts)), None);
        }
        assert_eq!(c, YearClock::archive(None, None), "the clock never saw them");
        let ok = line("2016-03-16T19:00:01Z");
        assert_eq!(parse_line(&ok, &mut c, now).unwrap().unwrap().time, Some(1_458_154_801_000));
    }

    #[test]
    fn guessed_years_move_next_to_the_anchored_span() {
        let p = |s: &str| crate::timeutil::parse_rfc3339(s).unwrap();
        let (lo, hi) = (p("2016-03-16T19:00:01Z"), p("2016-03-17T06:10:17Z"));
        assert_eq!(place_year(p("2026-03-17T06:10:20Z"), lo, hi), p("2016-03-17T06:10:20Z"));
        assert_eq!(place_year(p("2025-12-31T23:00:00Z"), p("2016-01-01T00:00:00Z"), p("2016-01-02T00:00:00Z")), p("2015-12-31T23:00:00Z"));
        assert_eq!(place_year(p("2026-03-16T20:00:00Z"), lo, hi), p("2016-03-16T20:00:00Z"));
    }

    #[test]
    fn archive_years_are_weak_until_anchored_and_never_after_the_bound() {
        let p = |s: &str| crate::timeutil::parse_rfc3339(s).unwrap();
        let now = p("2026-11-24T00:00:00Z");
        let mut c = YearClock::archive(Some(p("2016-06-01T00:00:00Z")), None);
        let (t, weak) = c.resolve(EnvTime::NoYear { month: 7, day: 1, h: 0, m: 0, s: 0 }, now).unwrap();
        assert_eq!(crate::timeutil::rfc3339(t), "2015-07-01T00:00:00.000Z", "July is after the June mtime");
        assert!(weak);
        c.observe(p("2016-03-16T00:00:00Z"));
        let (t, weak) = c.resolve(EnvTime::NoYear { month: 3, day: 17, h: 0, m: 0, s: 0 }, now).unwrap();
        assert_eq!(crate::timeutil::rfc3339(t), "2016-03-17T00:00:00.000Z");
        assert!(!weak);
        let mut forced = YearClock::archive(None, Some(2012));
        let (t, weak) = forced.resolve(EnvTime::NoYear { month: 12, day: 31, h: 0, m: 0, s: 0 }, now).unwrap();
        assert_eq!(crate::timeutil::rfc3339(t), "2012-12-31T00:00:00.000Z");
        assert!(!weak);
        let (t, _) = forced.resolve(EnvTime::NoYear { month: 1, day: 1, h: 0, m: 0, s: 0 }, now).unwrap();
        assert_eq!(crate::timeutil::rfc3339(t), "2013-01-01T00:00:00.000Z");
    }
}
