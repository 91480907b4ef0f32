//! The allocator's share of a long-running watcher's memory.
//!
//! glibc's malloc gives each thread that allocates concurrently an arena of its own (up to 8 per core)
//! and returns little of a freed arena to the system. The watcher's bursts (a commit of 20,000 records,
//! a listing streamed through the socket, sled paging leaves in and out) then leave RSS at the sum of
//! every arena's high-water mark: measured at 100,000 instances, 318 MiB after 10,000 records changed,
//! against 158 MiB with one arena. So the watcher caps the arenas and hands freed pages back after a
//! burst (`scripts/bench-scale.sh` measures both).

use std::time::{Duration, Instant};

/// Arenas: two keep the engine thread and the runtime's threads from contending on one lock.
pub const ARENAS: i32 = 2;
/// How often the engine looks at its RSS.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);
/// RSS growth since the last trim that makes the next look trim. A trim walks every free chunk with the
/// arena locked (tens of ms on a large heap, stalling other threads' allocations), so an idle watcher,
/// with nothing to give back, does not trim.
pub const TRIM_AFTER_GROWTH: u64 = 16 << 20;

/// Caps malloc's arenas; call first thing, before other threads start.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable; M_ARENA_MAX takes any positive count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// This process's resident set, bytes (None where /proc is not there).
pub fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Trims freed memory after RSS grew by [`TRIM_AFTER_GROWTH`] since the last trim (or low point).
#[derive(Default)]
pub struct Trimmer {
    low: Option<u64>,
}

impl Trimmer {
    /// Looks at RSS and trims when it grew; returns the bytes handed back, when it trimmed.
    pub fn tick(&mut self) -> Option<u64> {
        let now = rss()?;
        let low = *self.low.get_or_insert(now);
        if now < low {
            self.low = Some(now);
            return None;
        }
        if now - low < TRIM_AFTER_GROWTH {
            return None;
        }
        let t = Instant::now();
        trim();
        let after = rss().unwrap_or(now);
        self.low = Some(after);
        let freed = now.saturating_sub(after);
        tracing::debug!(rss_mib = now >> 20, freed_mib = freed >> 20, took_ms = t.elapsed().as_millis() as u64, "returned freed memory to the system");
        Some(freed)
    }
}

/// Returns freed heap pages to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only releases memory malloc holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of allocations freed again: the next look trims and RSS comes back down; a look without
    /// growth does nothing.
    #[test]
    fn a_burst_freed_is_handed_back_and_an_idle_look_does_not_trim() {
        let mut t = Trimmer::default();
        t.tick();
        assert_eq!(t.tick(), None, "no growth, no trim");
        // Many small blocks (not one mmapped block, which free() returns by itself), one in 17 kept:
        // the freed runs lie between live blocks, so only a trim can hand their pages back.
        let blocks: Vec<Vec<u8>> = (0..64 << 10).map(|i| vec![i as u8; 1024]).collect();
        let grown = rss().unwrap();
        let kept: Vec<Vec<u8>> = blocks.into_iter().step_by(17).collect();
        let freed = t.tick().expect("RSS grew by 64 MiB: a trim");
        assert!(freed >= 32 << 20, "freed {} MiB of 64 (RSS was {} MiB)", freed >> 20, grown >> 20);
        assert_eq!(t.tick(), None);
        drop(kept);
    }
}
