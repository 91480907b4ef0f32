//! WAL-E's object layout under one instance's prefix (`s3://<bucket>/backups/<instance-id>/wal/`), in one
//! place: the log parser, `verify` and the recovery plan all read keys relative to the prefix with these.
//! The folder names, the sentinel suffix, the file name patterns and the segment-name rules are spelled
//! here and nowhere else.
//!
//! ```text
//! basebackups_005/base_<SEG24>_<OFF8>/extended_version.txt
//! basebackups_005/base_<SEG24>_<OFF8>/tar_partitions/part_00000000.tar.lzo
//! basebackups_005/base_<SEG24>_<OFF8>_backup_stop_sentinel.json
//! wal_005/<SEG24>.lzo   wal_005/<SEG24>.<OFF8>.backup.lzo   wal_005/<TLI8>.history.lzo
//! wal_005/<SEG24>.partial.lzo
//! sysids/sysid          (written by the platform, not WAL-E)
//! ```
//!
//! Segment names are TLI(8 hex) + log(8 hex) + seg(8 hex); with 16 MB segments (PostgreSQL >= 9.3)
//! seg runs 00000000..000000FF and the segment after seg FF is log+1, seg 0.

/// Base backups, each a folder and a sentinel beside it.
pub const BASEBACKUPS: &str = "basebackups_005/";
/// WAL segments, backup labels and timeline histories.
pub const WAL: &str = "wal_005/";
/// Follows a backup's name for the object whose presence makes the backup complete.
pub const SENTINEL_SUFFIX: &str = "_backup_stop_sentinel.json";
/// Inside a backup's folder: the PostgreSQL version metadata.
pub const EXTENDED_VERSION: &str = "extended_version.txt";
/// Inside a backup's folder: the folder of its tar partitions.
pub const PARTITIONS: &str = "tar_partitions/";
/// The cluster's system identifier, uploaded by the platform.
pub const SYSID: &str = "sysids/sysid";

/// Starts every base backup's name.
const BACKUP_NAME_PREFIX: &str = "base_";
/// WAL-E compresses every file it uploads with lzop.
const COMPRESSED: &str = ".lzo";
const PARTITION_PREFIX: &str = "part_";
const PARTITION_SUFFIX: &str = ".tar.lzo";
const HISTORY_SUFFIX: &str = ".history";
const PARTIAL_SUFFIX: &str = ".partial";
const BACKUP_LABEL_SUFFIX: &str = ".backup";

/// The key of a backup's sentinel, relative to the prefix.
pub fn sentinel(backup: &str) -> String {
    format!("{BASEBACKUPS}{backup}{SENTINEL_SUFFIX}")
}

/// The key of a backup's version metadata, relative to the prefix.
pub fn extended_version(backup: &str) -> String {
    format!("{BASEBACKUPS}{backup}/{EXTENDED_VERSION}")
}

/// The key of a backup's `n`th tar partition, relative to the prefix.
pub fn partition(backup: &str, n: u32) -> String {
    format!("{BASEBACKUPS}{backup}/{PARTITIONS}{PARTITION_PREFIX}{n:08}{PARTITION_SUFFIX}")
}

/// The name of a base backup that starts at `start`, offset `offset` (8 hex digits).
pub fn backup_name(start: &Segment, offset: &str) -> String {
    format!("{BACKUP_NAME_PREFIX}{}_{offset}", start.name())
}

/// The key of an archived WAL segment, relative to the prefix.
pub fn wal_segment(seg: &Segment) -> String {
    format!("{WAL}{}{COMPRESSED}", seg.name())
}

/// The key of a timeline's history file, relative to the prefix.
pub fn history(tli: u32) -> String {
    format!("{WAL}{tli:08X}{HISTORY_SUFFIX}{COMPRESSED}")
}

/// The key of a partial segment (the old timeline's copy of a switch segment), relative to the prefix.
pub fn partial(seg: &Segment) -> String {
    format!("{WAL}{}{PARTIAL_SUFFIX}{COMPRESSED}", seg.name())
}

/// The key of a backup label, relative to the prefix.
pub fn backup_label(seg: &Segment, offset: &str) -> String {
    format!("{WAL}{}.{offset}{BACKUP_LABEL_SUFFIX}{COMPRESSED}", seg.name())
}

/// A WAL segment name, TLI + log + seg.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub tli: u32,
    pub log: u32,
    pub seg: u32,
}

/// 8 hex digits (either case).
pub fn hex8(s: &str) -> Option<u32> {
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

    /// 24 upper-case hex digits.
    pub fn name(&self) -> String {
        format!("{:08X}{:08X}{:08X}", self.tli, self.log, self.seg)
    }
}

impl std::fmt::Display for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// A key relative to the prefix, as WAL-E's layout reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// `sysids/sysid`.
    Sysid,
    /// An object of a base backup: its sentinel, or a file in its folder.
    Backup { backup: BackupId, object: BackupObject },
    /// A file in the WAL folder.
    Wal(WalFile),
    /// Anything else (including a backup-like name that does not parse).
    Other,
}

/// A base backup's identity, from its name `base_<SEG24>_<OFF8>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupId {
    /// The name normalised to upper-case hex, so names that differ only in case are one backup.
    pub name: String,
    /// The segment the backup starts in.
    pub start: Segment,
    /// The start offset, 8 upper-case hex digits.
    pub offset: String,
}

/// Which object of a base backup a key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupObject {
    /// `<name>_backup_stop_sentinel.json`: the backup is complete iff it exists; its LastModified is
    /// the backup's time.
    Sentinel,
    /// `<name>/extended_version.txt`.
    ExtendedVersion,
    /// `<name>/tar_partitions/part_<N>.tar.lzo`.
    Partition,
    /// Some other key inside the backup's folder.
    Unknown,
}

/// A file in the WAL folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalFile {
    /// `<SEG24>.lzo`.
    Segment(Segment),
    /// `<SEG24>.<OFF8>.backup.lzo`.
    BackupLabel,
    /// `<TLI8>.history.lzo`.
    History(u32),
    /// `<SEG24>.partial.lzo`.
    Partial,
    /// `<24 hex>.lzo` whose seg part is above FF: the cluster does not use 16 MB segments.
    OddSegment,
    /// Anything else in the WAL folder.
    Unknown,
}

/// `base_<SEG24>_<OFF8>` followed by `rest`.
fn split_backup_name(s: &str) -> Option<(BackupId, &str)> {
    let body = s.strip_prefix(BACKUP_NAME_PREFIX)?;
    if body.len() < 33 || !body.is_char_boundary(24) || !body.is_char_boundary(33) {
        return None;
    }
    let start = Segment::parse(&body[..24])?;
    if body.as_bytes()[24] != b'_' {
        return None;
    }
    let off = &body[25..33];
    hex8(off)?;
    let offset = off.to_ascii_uppercase();
    Some((BackupId { name: backup_name(&start, &offset), start, offset }, &body[33..]))
}

fn is_partition(name: &str) -> bool {
    name.strip_prefix(PARTITION_PREFIX).and_then(|r| r.strip_suffix(PARTITION_SUFFIX)).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// What a file name in the WAL folder is.
pub fn wal_file(name: &str) -> WalFile {
    let Some(stem) = name.strip_suffix(COMPRESSED) else { return WalFile::Unknown };
    if let Some(s) = Segment::parse(stem) {
        return WalFile::Segment(s);
    }
    if let Some(t) = stem.strip_suffix(HISTORY_SUFFIX) {
        return hex8(t).map_or(WalFile::Unknown, WalFile::History);
    }
    if let Some(p) = stem.strip_suffix(PARTIAL_SUFFIX) {
        return Segment::parse(p).map_or(WalFile::Unknown, |_| WalFile::Partial);
    }
    if let Some(b) = stem.strip_suffix(BACKUP_LABEL_SUFFIX) {
        let label = b.split_once('.').is_some_and(|(seg, off)| Segment::parse(seg).is_some() && hex8(off).is_some());
        return if label { WalFile::BackupLabel } else { WalFile::Unknown };
    }
    if stem.len() == 24 && stem.bytes().all(|b| b.is_ascii_hexdigit()) {
        return WalFile::OddSegment;
    }
    WalFile::Unknown
}

/// What a key relative to the prefix is. Never panics.
pub fn classify(rel: &str) -> Key {
    if rel == SYSID {
        return Key::Sysid;
    }
    if let Some(b) = rel.strip_prefix(BASEBACKUPS) {
        let Some((backup, rest)) = split_backup_name(b) else { return Key::Other };
        let object = if rest == SENTINEL_SUFFIX {
            BackupObject::Sentinel
        } else if let Some(inside) = rest.strip_prefix('/') {
            if inside == EXTENDED_VERSION {
                BackupObject::ExtendedVersion
            } else if inside.strip_prefix(PARTITIONS).is_some_and(is_partition) {
                BackupObject::Partition
            } else {
                BackupObject::Unknown
            }
        } else {
            return Key::Other;
        };
        return Key::Backup { backup, object };
    }
    match rel.strip_prefix(WAL) {
        Some(w) => Key::Wal(wal_file(w)),
        None => Key::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKUP: &str = "base_000000010000000000000002_00000040";

    fn seg(s: &str) -> Segment {
        Segment::parse(s).unwrap()
    }

    #[test]
    fn keys_are_the_ones_wal_e_writes() {
        assert_eq!(sentinel(BACKUP), "basebackups_005/base_000000010000000000000002_00000040_backup_stop_sentinel.json");
        assert_eq!(extended_version(BACKUP), "basebackups_005/base_000000010000000000000002_00000040/extended_version.txt");
        assert_eq!(partition(BACKUP, 3), "basebackups_005/base_000000010000000000000002_00000040/tar_partitions/part_00000003.tar.lzo");
        assert_eq!(backup_name(&seg("000000010000000000000002"), "00000040"), BACKUP);
        assert_eq!(wal_segment(&seg("00000001000000000000000A")), "wal_005/00000001000000000000000A.lzo");
        assert_eq!(history(2), "wal_005/00000002.history.lzo");
        assert_eq!(partial(&seg("000000010000000000000006")), "wal_005/000000010000000000000006.partial.lzo");
        assert_eq!(backup_label(&seg("000000010000000000000002"), "00000028"), "wal_005/000000010000000000000002.00000028.backup.lzo");
    }

    #[test]
    fn every_built_key_classifies_as_what_it_is() {
        let id = BackupId { name: BACKUP.into(), start: seg("000000010000000000000002"), offset: "00000040".into() };
        let b = |object| Key::Backup { backup: id.clone(), object };
        assert_eq!(classify(&sentinel(BACKUP)), b(BackupObject::Sentinel));
        assert_eq!(classify(&extended_version(BACKUP)), b(BackupObject::ExtendedVersion));
        assert_eq!(classify(&partition(BACKUP, 0)), b(BackupObject::Partition));
        assert_eq!(classify(&format!("{BASEBACKUPS}{BACKUP}/other")), b(BackupObject::Unknown));
        let s = seg("000000010000000000000003");
        assert_eq!(classify(&wal_segment(&s)), Key::Wal(WalFile::Segment(s)));
        assert_eq!(classify(&history(2)), Key::Wal(WalFile::History(2)));
        assert_eq!(classify(&partial(&s)), Key::Wal(WalFile::Partial));
        assert_eq!(classify(&backup_label(&s, "00000028")), Key::Wal(WalFile::BackupLabel));
        assert_eq!(classify(SYSID), Key::Sysid);
    }

    #[test]
    fn names_differing_in_case_are_one_backup() {
        let Key::Backup { backup, object } = classify("basebackups_005/base_00000001000000000000000a_0000002a_backup_stop_sentinel.json") else {
            panic!("not a backup")
        };
        assert_eq!(object, BackupObject::Sentinel);
        assert_eq!(backup.name, "base_00000001000000000000000A_0000002A");
        assert_eq!(backup.start.index(), 10);
        assert_eq!(backup.offset, "0000002A");
    }

    #[test]
    fn odd_and_garbage_keys_are_not_backups_or_segments() {
        for k in [
            "",
            "basebackups_005/",
            "basebackups_005/base_",
            "basebackups_005/base_ÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄ",
            "basebackups_005/base_000000010000000000000003_0000002",
            "basebackups_005/base_000000010000000000000003_00000028",
            "basebackups_005/base_000000010000000000000003_00000028_backup_stop_sentinel.jso",
            "sysids/",
            "random.txt",
        ] {
            assert_eq!(classify(k), Key::Other, "{k:?}");
        }
        assert_eq!(
            classify("basebackups_005/base_000000010000000000000003_00000028/tar_partitions/part_x.tar.lzo"),
            Key::Backup {
                backup: BackupId { name: "base_000000010000000000000003_00000028".into(), start: seg("000000010000000000000003"), offset: "00000028".into() },
                object: BackupObject::Unknown
            }
        );
        for k in ["", ".lzo", "zzzzzzzzzzzzzzzzzzzzzzzz.lzo", "0000000100000000000000ÄÄ.lzo", "00000001.history", "000000010000000000000003.backup.lzo"] {
            assert_eq!(wal_file(k), WalFile::Unknown, "{k:?}");
        }
        assert_eq!(wal_file("000000010000000000000100.lzo"), WalFile::OddSegment);
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
}
