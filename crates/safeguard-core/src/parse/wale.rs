//! WAL-E 1.x output and the PostgreSQL archiver lines around it. Each of MSG / DETAIL / HINT / STRUCTURED
//! arrives as its own syslog line, so every line is read on its own; DETAIL and STRUCTURED of the same
//! push both produce an event, and the state layer counts a segment once.

use std::sync::LazyLock;

use memchr::memmem::Finder;

use super::{locate, EventKind, Location, PushState, Reject};
use crate::layout;

pub struct WalEParsed<'a> {
    pub kind: EventKind,
    pub time: Option<i64>,
    pub location: Option<Location<'a>>,
}

fn out(kind: EventKind, location: Option<Location<'_>>) -> Result<Option<WalEParsed<'_>>, Reject> {
    Ok(Some(WalEParsed { kind, time: None, location }))
}

/// First `s3://...` URL in a line, without surrounding quotes or a sentence's final period.
fn url_in(s: &str) -> Option<&str> {
    static S3: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("s3://"));
    let start = S3.find(s.as_bytes())?;
    let rest = &s[start..];
    Some(rest[..url_end(rest)].trim_end_matches('.'))
}

/// Index of the first quote or whitespace (as `char::is_whitespace`).
fn url_end(s: &str) -> usize {
    let b = s.as_bytes();
    let end = memchr::memchr3(b'"', b'\'', b' ', b).unwrap_or(b.len());
    // Other whitespace is ASCII 9..=13 or non-ASCII; a branch-free scan rules both out (nearly always).
    if !b[..end].iter().fold(false, |any, &c| any | super::is_ascii_space(c) | (c >= 0x80)) {
        return end;
    }
    s.char_indices().find(|&(_, c)| c == '"' || c == '\'' || c.is_whitespace()).map_or(s.len(), |(i, _)| i)
}

pub fn is_segment(s: &str) -> bool {
    s.len() == 24 && all_hex(s.as_bytes())
}

/// Branch-free, so it vectorizes: segment names are checked several times per WAL-E line.
fn all_hex(b: &[u8]) -> bool {
    b.iter().fold(true, |all, c| all & c.is_ascii_hexdigit())
}

/// A WAL file name as pushed: a segment, `<seg>.<off>.backup` or `<tli>.history`.
fn is_wal_file(s: &str) -> bool {
    let head = s.split_once('.').map_or(s, |(h, _)| h);
    (is_segment(head) || (head.len() == 8 && all_hex(head.as_bytes()))) && s.bytes().fold(true, |all, c| all & (c.is_ascii_alphanumeric() || c == b'.'))
}

fn wal_from_rest(rest: &str) -> Option<String> {
    let f = rest.strip_prefix(layout::WAL)?;
    let f = f.strip_suffix(".lzo").unwrap_or(f);
    is_wal_file(f).then(|| normalize_wal(f))
}

/// Upper-case hex, with the `.backup` / `.history` suffixes as PostgreSQL names them.
fn normalize_wal(f: &str) -> String {
    let up = f.to_ascii_uppercase();
    // Only a name with a dot can carry a suffix; a plain segment (nearly every line) is done.
    if up.contains('.') {
        up.replace(".BACKUP", ".backup").replace(".HISTORY", ".history")
    } else {
        up
    }
}

/// `basebackups_005/base_<SEG>_<OFF>/...` or `basebackups_005/base_<SEG>_<OFF>_backup_stop_sentinel.json`.
fn backup_from_rest(rest: &str) -> Option<(String, &str)> {
    let r = rest.strip_prefix(layout::BASEBACKUPS)?;
    let (name, tail) = r.split_once('/').unwrap_or((r, ""));
    let name = name.strip_suffix(layout::SENTINEL_SUFFIX).unwrap_or(name);
    is_backup_name(name).then(|| (name.to_string(), tail))
}

pub fn is_backup_name(n: &str) -> bool {
    let Some(r) = n.strip_prefix("base_") else { return false };
    let Some((seg, off)) = r.split_once('_') else { return false };
    is_segment(seg) && off.len() == 8 && all_hex(off.as_bytes())
}

/// The markers a WAL-E or archiver line is recognised by, in the order `parse` tests them.
const MARKERS: [&str; 8] = [
    "STRUCTURED:",
    "DETAIL:",
    "pg_stop_backup complete",
    // PostgreSQL 10+ says this where 9.x said "pg_stop_backup complete, all required ...".
    "all required WAL segments have been archived",
    "archive command failed",
    "CRITICAL",
    "retrying after encountering exception",
    "could no longer locate object while performing wal restore",
];
const STRUCTURED: usize = 0;
const DETAIL: usize = 1;
const STOP_BACKUP: usize = 2;
const STOP_BACKUP_10: usize = 3;
const ARCHIVE_FAILED: usize = 4;
const CRITICAL: usize = 5;
const RETRYING: usize = 6;
const NO_LONGER_LOCATE: usize = 7;

/// First position of marker `m` in `b`, with one precompiled SIMD searcher per marker. Searched lazily,
/// in priority order: most lines are STRUCTURED or DETAIL and need one or two searches, not eight.
fn marker(m: usize, b: &[u8]) -> Option<usize> {
    static FINDERS: LazyLock<Vec<Finder<'static>>> = LazyLock::new(|| MARKERS.iter().map(Finder::new).collect());
    FINDERS[m].find(b)
}

/// The `key=value` fields of a STRUCTURED line that matter here, read in one pass.
#[derive(Default)]
struct Structured<'a> {
    action: Option<&'a str>,
    key: Option<&'a str>,
    seg: Option<&'a str>,
    state: Option<&'a str>,
    time: Option<&'a str>,
}

impl<'a> Structured<'a> {
    fn read(s: &'a str) -> Self {
        let mut f = Structured::default();
        for t in s.split_ascii_whitespace() {
            let Some((k, v)) = t.split_once('=') else { continue };
            let slot = match k {
                "action" => &mut f.action,
                "key" => &mut f.key,
                "seg" => &mut f.seg,
                "state" => &mut f.state,
                "time" => &mut f.time,
                _ => continue,
            };
            slot.get_or_insert(v);
        }
        f
    }
}

pub fn parse(body: &str) -> Result<Option<WalEParsed<'_>>, Reject> {
    let b = body.as_bytes();
    // Structured lines carry the event time and an unambiguous action.
    if let Some(i) = marker(STRUCTURED, b) {
        let s = &body[i + "STRUCTURED:".len()..];
        let f = Structured::read(s);
        let action = f.action;
        if !matches!(action, Some("push-wal") | Some("wal-fetch")) {
            return Ok(None);
        }
        let key = f.key.ok_or(Reject::WalE)?;
        let loc = locate(key).ok_or(Reject::WalE)?;
        let seg = f.seg.filter(|x| is_wal_file(x)).map(normalize_wal).or_else(|| wal_from_rest(loc.rest));
        let segment = seg.ok_or(Reject::WalE)?;
        let state = match f.state {
            Some("begin") => PushState::Begin,
            Some("complete") => PushState::Complete,
            Some("skip") => PushState::Skip,
            _ => return Err(Reject::WalE),
        };
        let time = f.time.and_then(crate::timeutil::parse_rfc3339);
        let kind = if action == Some("push-wal") { EventKind::WalPush { segment, state } } else { EventKind::WalFetch { segment, state } };
        return Ok(Some(WalEParsed { kind, time, location: Some(loc) }));
    }
    if let Some(i) = marker(DETAIL, b) {
        let d = super::trim(&body[i + "DETAIL:".len()..]);
        if let Some(r) = d.strip_prefix("Uploading ") {
            let url = url_in(r).ok_or(Reject::WalE)?;
            let loc = locate(url).ok_or(Reject::WalE)?;
            if let Some(seg) = wal_from_rest(loc.rest) {
                // `Uploading "pg_wal/X" to "s3://..."`: the begin of a wal-push.
                return out(EventKind::WalPush { segment: seg, state: PushState::Begin }, Some(loc));
            }
            let done = r.contains(" complete at ");
            let (backup, tail) = backup_from_rest(loc.rest).ok_or(Reject::WalE)?;
            let kind = if let Some(part) = tail.strip_prefix(layout::PARTITIONS) {
                let part = part.strip_suffix(".tar.lzo").unwrap_or(part).to_string();
                EventKind::BasePartition { backup, part, done }
            } else {
                EventKind::BaseBackupStarted { backup }
            };
            return out(kind, Some(loc));
        }
        if let Some(r) = d.strip_prefix("Archiving to ") {
            let url = url_in(r).ok_or(Reject::WalE)?;
            let loc = locate(url).ok_or(Reject::WalE)?;
            let seg = wal_from_rest(loc.rest).ok_or(Reject::WalE)?;
            return out(EventKind::WalPush { segment: seg, state: PushState::Complete }, Some(loc));
        }
        if let Some(r) = d.strip_prefix("The key being deleted is ") {
            let url = url_in(r).ok_or(Reject::WalE)?;
            let loc = locate(url).ok_or(Reject::WalE)?;
            if loc.rest.ends_with(layout::SENTINEL_SUFFIX) {
                let (backup, _) = backup_from_rest(loc.rest).ok_or(Reject::WalE)?;
                return out(EventKind::BackupPruned { backup }, Some(loc));
            }
            return Ok(None);
        }
        if let Some(r) = d.strip_prefix("The partition being downloaded is ") {
            let part = r.trim_end_matches('.');
            let part = part.strip_suffix(".tar.lzo").unwrap_or(part);
            return out(EventKind::PartitionDownload { part: part.to_string() }, None);
        }
        return Ok(None);
    }
    if marker(STOP_BACKUP, b).is_some() || marker(STOP_BACKUP_10, b).is_some() {
        return out(EventKind::BaseBackupStopped, None);
    }
    if let Some(i) = marker(ARCHIVE_FAILED, b) {
        return out(EventKind::WalPushFailed { detail: body[i..].chars().take(200).collect() }, None);
    }
    if marker(CRITICAL, b).is_some() && body.contains("MSG:") {
        let msg = body.split("MSG:").nth(1).unwrap_or("").trim();
        return out(EventKind::WalPushFailed { detail: format!("WAL-E CRITICAL: {}", msg.chars().take(200).collect::<String>()) }, None);
    }
    if marker(RETRYING, b).is_some() {
        return out(EventKind::WalERetry, None);
    }
    if marker(NO_LONGER_LOCATE, b).is_some() {
        return out(EventKind::WalRestoreEnd, None);
    }
    if let Some(r) = body.strip_prefix("upload: ") {
        if r.contains(layout::SYSID) {
            let url = url_in(r).ok_or(Reject::WalE)?;
            let loc = locate(url).ok_or(Reject::WalE)?;
            return out(EventKind::SysidUploaded, Some(loc));
        }
        return Ok(None);
    }
    if body.starts_with("base_") {
        return list_line(body);
    }
    Ok(None)
}

/// `base_<SEG>_<OFF>\t<last_modified>\t<wal_segment_backup_start>\t<offset>` from `wal-e backup-list`,
/// tabs possibly escaped as `#011` by rsyslog or turned into spaces by a shipper.
fn list_line(body: &str) -> Result<Option<WalEParsed<'_>>, Reject> {
    let norm = body.replace("#011", "\t");
    let mut fields = norm.split(['\t', ' ']).filter(|f| !f.is_empty());
    let name = fields.next().unwrap_or("");
    if !is_backup_name(name) {
        return Ok(None);
    }
    let time = fields.next().and_then(crate::timeutil::parse_rfc3339);
    out(EventKind::BaseBackupListed { backup: name.to_string(), time }, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "6e101b27-ee1b-4f4d-a032-4401a3709ec3";

    fn kind(body: &str) -> EventKind {
        parse(body).unwrap().unwrap().kind
    }

    #[test]
    fn wal_push_detail_and_structured() {
        let seg = "000000010000000000000001";
        let b = format!(r#"DETAIL: Uploading "pg_wal/{seg}" to "s3://bkt/backups/{ID}/wal/wal_005/{seg}.lzo"."#);
        assert_eq!(kind(&b), EventKind::WalPush { segment: seg.into(), state: PushState::Begin });
        let b = format!(r#"DETAIL: Archiving to "s3://bkt/backups/{ID}/wal/wal_005/{seg}.lzo" complete at 62337.1KiB/s."#);
        assert_eq!(kind(&b), EventKind::WalPush { segment: seg.into(), state: PushState::Complete });
        let b = format!("STRUCTURED: time=2026-11-23T19:56:42.191171-00 pid=1 action=push-wal key=s3://bkt/backups/{ID}/wal/wal_005/{seg}.lzo prefix=backups/{ID}/wal/ rate=1 seg={seg} state=complete");
        let p = parse(&b).unwrap().unwrap();
        assert_eq!(p.time, crate::timeutil::parse_rfc3339("2026-11-23T19:56:42.191Z"));
        assert_eq!(p.location.unwrap().instance, ID);
        let b = format!(
            "STRUCTURED: time=x action=push-wal key=s3://bkt/backups/{ID}/wal/wal_005/{seg}.00000028.backup.lzo seg={seg}.00000028.backup state=complete"
        );
        assert_eq!(kind(&b), EventKind::WalPush { segment: format!("{seg}.00000028.backup"), state: PushState::Complete });
    }

    #[test]
    fn base_backup_lines() {
        let base = format!("s3://bkt/backups/{ID}/wal/basebackups_005/base_000000010000000000000003_00000040");
        assert_eq!(
            kind(&format!("DETAIL: Uploading to {base}/extended_version.txt.")),
            EventKind::BaseBackupStarted { backup: "base_000000010000000000000003_00000040".into() }
        );
        assert_eq!(
            kind(&format!(r#"DETAIL: Uploading to "{base}/tar_partitions/part_00000000.tar.lzo" complete at 20493KiB/s."#)),
            EventKind::BasePartition { backup: "base_000000010000000000000003_00000040".into(), part: "part_00000000".into(), done: true }
        );
        assert_eq!(kind("NOTICE:  pg_stop_backup complete, all required WAL segments have been archived"), EventKind::BaseBackupStopped);
        assert_eq!(
            kind("base_000000010000000000000002_00000040#0112016-10-06T00:04:24.000Z#011000000010000000000000002#01100000040"),
            EventKind::BaseBackupListed {
                backup: "base_000000010000000000000002_00000040".into(),
                time: crate::timeutil::parse_rfc3339("2016-10-06T00:04:24Z")
            }
        );
        assert_eq!(
            kind(&format!("DETAIL: The key being deleted is {base}_backup_stop_sentinel.json.")),
            EventKind::BackupPruned { backup: "base_000000010000000000000003_00000040".into() }
        );
    }

    #[test]
    fn urls_end_at_quotes_and_any_whitespace() {
        assert_eq!(url_in(r#"to "s3://b/x/y.lzo"."#), Some("s3://b/x/y.lzo"));
        assert_eq!(url_in("to s3://b/x\u{a0}y"), Some("s3://b/x"));
        assert_eq!(url_in("to s3://b/é\x0Bx"), Some("s3://b/é"));
        assert_eq!(url_in("to s3://b/x."), Some("s3://b/x"));
        assert_eq!(url_in("no url"), None);
    }

    #[test]
    fn almost_matches_are_rejected() {
        assert_eq!(parse(r#"DETAIL: Uploading "pg_wal/0001" to "s3://bkt/nowhere"."#).err(), Some(Reject::WalE));
        assert_eq!(parse("STRUCTURED: action=push-wal key=s3://b/backups/abcd/wal/wal_005/x state=begin").err(), Some(Reject::WalE));
        assert!(parse("MSG: begin archiving a file").unwrap().is_none());
    }
}
