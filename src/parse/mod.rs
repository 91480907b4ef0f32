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
}

impl Reject {
    pub const ALL: [Reject; 6] = [Reject::TooLong, Reject::Utf8, Reject::Envelope, Reject::Json, Reject::Broker, Reject::WalE];
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::TooLong => "too_long",
            Reject::Utf8 => "utf8",
            Reject::Envelope => "envelope",
            Reject::Json => "json",
            Reject::Broker => "broker",
            Reject::WalE => "wal_e",
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
    Provision { phase: Phase, org_guid: Option<String>, space_guid: Option<String>, plan_id: Option<String>, name: Option<String> },
    Deprovision { phase: Phase },
    EtcdDeleted,
    Update { phase: Phase },
    Recreate { phase: Phase },
    Bind { phase: Phase, app_guid: Option<String> },
    Unbind { phase: Phase },
    AddNode { node_uuid: Option<String>, backend: Option<String> },
    AddNodeSuccess { member: Option<String> },
    RemoveNode { node_uuid: Option<String>, backend: Option<String> },
    AssignPort { port: Option<u64> },
    RemoveClusterAssignment,
    /// A clone: the instance this event is attributed to (the target) gets the source's backups.
    CopyBackup { from_instance: String, from_uri: String, to_uri: String },
    // Containers.
    ContainerCreating,
    ContainerDestroying,
    ContainerRegistered { public_host: String },
    PublicAddress { address: String },
    WalEEnabled { bucket: String },
    Restore { msg: RestoreMsg },
    // WAL-E and PostgreSQL archiving.
    WalPush { segment: String, state: PushState },
    WalPushFailed { detail: String },
    WalERetry,
    BaseBackupStarted { backup: String },
    BasePartition { backup: String, part: String, done: bool },
    BaseBackupStopped,
    BaseBackupListed {
        backup: String,
        #[serde(with = "crate::timeutil::serde_opt_ms", default)]
        time: Option<i64>,
    },
    BackupPruned { backup: String },
    PartitionDownload { part: String },
    WalFetch { segment: String, state: PushState },
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
}

/// Resolves RFC 3164's missing year for one source: prefers times carried by the payload, never lets time
/// run backwards by months (a December-to-January rollover advances the year).
#[derive(Debug, Clone, Default)]
pub struct YearClock {
    last: Option<i64>,
}

const DAY_MS: i64 = 86_400_000;

impl YearClock {
    pub fn observe(&mut self, t: i64) {
        self.last = Some(t);
    }

    pub fn resolve(&mut self, tm: EnvTime, now: i64) -> Option<i64> {
        let t = match tm {
            EnvTime::None => return None,
            EnvTime::Full(t) => t,
            EnvTime::NoYear { month, day, h, m, s } => {
                let reference = self.last.unwrap_or(now);
                let (ry, _, _) = crate::timeutil::civil_from_days(reference.div_euclid(DAY_MS));
                let at = |y: i64| crate::timeutil::from_civil(y, month, day, h, m, s, 0);
                // Feb 29 in a year without one: nothing sensible to pick, keep the reference year's Mar 1.
                let mut t = at(ry).or_else(|| at(ry + 1)).or_else(|| at(ry - 1))?;
                if self.last.is_none() {
                    // No history: the most recent such date not in the future.
                    if t > now + DAY_MS {
                        t = at(ry - 1).unwrap_or(t);
                    }
                } else if t < reference - 180 * DAY_MS {
                    t = at(ry + 1).unwrap_or(t);
                } else if t > reference + 180 * DAY_MS {
                    t = at(ry - 1).unwrap_or(t);
                }
                t
            }
        };
        self.last = Some(t);
        Some(t)
    }
}

/// Parses one line. `Ok(None)` means irrelevant (a known-harmless or unrelated line).
pub fn parse_line<'a>(line: &'a str, clock: &mut YearClock, now: i64) -> Result<Option<Event<'a>>, Reject> {
    let env = envelope::parse(line)?;
    let env_time = env.time;
    let Some(mut ev) = parse_envelope(&env)? else {
        return Ok(None);
    };
    match ev.time {
        Some(t) => {
            // Payload time is authoritative; still feed the clock so the year stays right for lines without one.
            clock.observe(t);
        }
        None => ev.time = clock.resolve(env_time, now),
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
        if let Some(ev) = broker::parse(body, &host)? {
            return Ok(Some(ev));
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
        let nov = c.resolve(EnvTime::NoYear { month: 11, day: 20, h: 0, m: 0, s: 0 }, now).unwrap();
        assert_eq!(crate::timeutil::rfc3339(nov), "2026-11-20T00:00:00.000Z");
        let mut c = YearClock::default();
        let dec = c.resolve(EnvTime::NoYear { month: 12, day: 31, h: 23, m: 0, s: 0 }, now).unwrap();
        assert_eq!(crate::timeutil::rfc3339(dec), "2025-12-31T23:00:00.000Z");
        let jan = c.resolve(EnvTime::NoYear { month: 1, day: 1, h: 0, m: 1, s: 0 }, now).unwrap();
        assert_eq!(crate::timeutil::rfc3339(jan), "2026-01-01T00:01:00.000Z");
        let mut c = YearClock::default();
        c.observe(crate::timeutil::parse_rfc3339("2016-03-16T23:00:00Z").unwrap());
        let t = c.resolve(EnvTime::NoYear { month: 3, day: 17, h: 1, m: 0, s: 0 }, now).unwrap();
        assert_eq!(crate::timeutil::rfc3339(t), "2016-03-17T01:00:00.000Z");
    }
}
