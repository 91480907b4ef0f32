//! What the store tells `/metrics` about itself: how long commits take, which writes failed, and how
//! much room its filesystem has left. Recorded through the `metrics` facade (a no-op until the watcher's
//! `/metrics` installs its recorder, so `ingest` and the CLI pay nothing).

use std::path::Path;

/// `safeguard_engine_commit_duration_seconds`: one [`super::Store::commit`], from building its batch
/// to the end of its flush.
pub const COMMIT_DURATION: &str = "safeguard_engine_commit_duration_seconds";
/// `safeguard_store_errors_total{op}`.
pub const ERRORS: &str = "safeguard_store_errors_total";

/// The writes `safeguard_store_errors_total` counts, by `op`: removing the stale read snapshot before
/// the first write, a commit's batch, its flush, and the sender's update of an alert's delivery state.
pub const ERROR_OPS: [&str; 4] = ["snapshot", "commit", "flush", "alert_update"];

/// Counts a failed store write.
pub fn failed(op: &'static str) {
    debug_assert!(ERROR_OPS.contains(&op));
    metrics::counter!(ERRORS, "op" => op).increment(1);
}

/// `safeguard_backup_last_success_timestamp_seconds` and `safeguard_backup_last_bytes`: a backup
/// uploaded with its manifest ([`super::backup`]).
pub fn backup_made(bytes: u64) {
    metrics::gauge!("safeguard_backup_last_success_timestamp_seconds").set(crate::timeutil::now_ms() as f64 / 1000.0);
    metrics::gauge!("safeguard_backup_last_bytes").set(bytes as f64);
    // Exported from zero once backups run, so a rule on its increase has a series to watch.
    metrics::counter!("safeguard_backup_failures_total").increment(0);
}

/// `safeguard_backup_failures_total`: a backup that was due and did not reach the object store.
pub fn backup_failed() {
    metrics::counter!("safeguard_backup_failures_total").increment(1);
}

pub fn commit_took(d: std::time::Duration) {
    metrics::histogram!(COMMIT_DURATION).record(d.as_secs_f64());
}

/// The filesystem holding a path: bytes available to this (unprivileged) process, and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    pub free_bytes: u64,
    pub size_bytes: u64,
}

/// `statvfs(2)` of the filesystem holding `path`.
// The fields' integer types vary by platform (u64 here, u32 on 32-bit ones).
#[allow(clippy::unnecessary_cast)]
pub fn fs_space(path: &Path) -> std::io::Result<FsSpace> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` points to writable memory of the struct's size;
    // statvfs fills it completely when it returns 0, and it is read only then.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialized `st`.
    let st = unsafe { st.assume_init() };
    let frsize = if st.f_frsize > 0 { st.f_frsize as u64 } else { st.f_bsize as u64 };
    Ok(FsSpace { free_bytes: (st.f_bavail as u64).saturating_mul(frsize), size_bytes: (st.f_blocks as u64).saturating_mul(frsize) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statvfs_of_a_directory_and_of_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = fs_space(dir.path()).unwrap();
        assert!(s.size_bytes > 0 && s.free_bytes <= s.size_bytes, "{s:?}");
        // Its parent is on the same filesystem.
        let p = fs_space(dir.path().parent().unwrap()).unwrap();
        assert_eq!(s.size_bytes, p.size_bytes);
        let e = fs_space(&dir.path().join("missing")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
