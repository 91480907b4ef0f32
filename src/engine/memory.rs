//! The allocator's share of a long-running watcher's memory.
//!
//! glibc's malloc gives each thread that allocates concurrently an arena of its own (up to 8 per core)
//! and returns little of a freed arena to the system. The watcher's bursts (a commit of 20,000 records,
//! a listing streamed through the socket, sled paging leaves in and out) then leave RSS at the sum of
//! every arena's high-water mark: measured at 100,000 instances, 318 MiB after 10,000 records changed,
//! against 158 MiB with one arena. So the watcher caps the arenas and hands freed pages back between
//! commits (`scripts/bench-scale.sh` measures both).

/// Arenas: two keep the engine thread and the runtime's threads from contending on one lock.
pub const ARENAS: i32 = 2;
/// How often the engine hands freed memory back (a trim walks the heap: a few ms at most).
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Caps malloc's arenas; call first thing, before other threads start.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable; M_ARENA_MAX takes any positive count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
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
