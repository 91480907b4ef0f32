//! One module per command: each takes the context every command shares and its own arguments, calls
//! the library and prints. `main.rs` only parses and dispatches. These modules belong to the binary,
//! not to the library: this is the only place `anyhow` is the error type.

pub mod doctor;
pub mod ingest;
pub mod query;
pub mod recover;
pub mod report;
pub mod store;
pub mod verify;
pub mod watch;

use std::path::PathBuf;

use anyhow::Result;
use safeguard::app::config::Config;
use safeguard::state::risk::RiskRules;

/// What every command starts from: the loaded config and the store it works on.
pub struct Ctx {
    pub cfg: Config,
    /// How the config was given, for messages (`doctor`).
    pub config_label: String,
    pub store_path: PathBuf,
    /// sled's page cache, bytes.
    pub cache: u64,
    pub rules: RiskRules,
    /// The wall clock when the command started (risk is judged at it).
    pub now: i64,
}

/// Prints a value as pretty JSON, its strings redacted ([`safeguard::redact::json`]): the net under
/// every JSON output (an alert's `last_error` stored before redaction existed, a field added later).
pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut doc = safeguard::redact::json(&serde_json::to_string_pretty(v)?);
    doc.push('\n');
    write_raw(doc.as_bytes());
    Ok(())
}

/// Set once standard output failed; nothing more is written to it after that.
static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Why it failed, when that was not the reader going away.
static STDOUT_ERROR: std::sync::Mutex<Option<std::io::Error>> = std::sync::Mutex::new(None);

/// Writes to standard output, redacted ([`safeguard::redact::text`]: the net under every printed text);
/// `print!` and `println!` in this binary end here (see main.rs).
///
/// std's `println!` panics when the write fails, so `safeguard instances | head -1` died with a panic
/// and status 101 once `head` had exited. Here a closed pipe (EPIPE) ends the output quietly: later
/// writes are skipped and the command finishes its work and exits as it would have (its store
/// closed cleanly). Any other failure (a full disk under `> file`) is kept for [`finish_stdout`],
/// which makes the exit status say so. SIGPIPE is left ignored (Rust's default) on purpose: with
/// it back at its default, a write to a socket whose peer left (the watcher's query socket, the Docker
/// API's unix socket during a recovery, a query client hanging up on `watch`) would kill the process
/// without a word.
pub fn out(args: std::fmt::Arguments<'_>) {
    if STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let text = match args.as_str() {
        Some(s) => safeguard::redact::text(s),
        None => safeguard::redact::text(&args.to_string()),
    };
    write_raw(text.as_bytes());
}

/// [`out`] for bytes written as they are (generated man pages and completions, redacted JSON).
pub fn write_raw(bytes: &[u8]) {
    use std::io::Write;
    if STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let res = std::io::stdout().lock().write_all(bytes);
    if let Err(e) = res {
        stdout_failed(e);
    }
}

fn stdout_failed(e: std::io::Error) {
    STDOUT_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        let mut slot = STDOUT_ERROR.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(e);
    }
}

/// Flushes standard output at the end of a command: `Err` when writing it failed for another reason
/// than a reader that went away.
pub fn finish_stdout() -> std::io::Result<()> {
    use std::io::Write;
    if !STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed) {
        if let Err(e) = std::io::stdout().lock().flush() {
            stdout_failed(e);
        }
    }
    match STDOUT_ERROR.lock().unwrap_or_else(|p| p.into_inner()).take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
