//! WAL-E's object layout under one instance's prefix (`s3://<bucket>/backups/<instance-id>/wal/`), in one
//! place: the log parser, `verify` and the recovery plan all read keys relative to the prefix with these.
//!
//! ```text
//! basebackups_005/base_<SEG24>_<OFF8>/extended_version.txt
//! basebackups_005/base_<SEG24>_<OFF8>/tar_partitions/part_00000000.tar.lzo
//! basebackups_005/base_<SEG24>_<OFF8>_backup_stop_sentinel.json
//! wal_005/<SEG24>.lzo   wal_005/<SEG24>.<OFF8>.backup.lzo   wal_005/<TLI8>.history.lzo
//! sysids/sysid          (written by the platform, not WAL-E)
//! ```

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

/// The key of a backup's sentinel, relative to the prefix.
pub fn sentinel(backup: &str) -> String {
    format!("{BASEBACKUPS}{backup}{SENTINEL_SUFFIX}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_the_ones_wal_e_writes() {
        assert_eq!(
            super::sentinel("base_000000010000000000000002_00000040"),
            "basebackups_005/base_000000010000000000000002_00000040_backup_stop_sentinel.json"
        );
    }
}
