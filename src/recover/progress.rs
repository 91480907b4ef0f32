//! Progress of a copy or delete on stderr: a bar redrawn in place when stderr is a terminal, else a
//! plain line every `interval` (and at the end), so logs of unattended runs stay readable.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::adapters::s3::TransferProgress;
use crate::verify::human_bytes;

pub struct ProgressDisplay {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn line(label: &str, p: &TransferProgress, objects: u64, bytes: u64, started: Instant, bar: bool) -> String {
    let o = p.objects.load(Ordering::Relaxed);
    let b = p.bytes.load(Ordering::Relaxed);
    let r = p.retries.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let frac = if objects == 0 { 1.0 } else { o as f64 / objects as f64 };
    let mut s = String::new();
    if bar {
        let width = 30usize;
        let filled = ((frac * width as f64) as usize).min(width);
        s.push_str(&format!("{label} [{}{}] ", "#".repeat(filled), "-".repeat(width - filled)));
    } else {
        s.push_str(&format!("{label}: "));
    }
    s.push_str(&format!("{o}/{objects} objects",));
    if bytes > 0 {
        s.push_str(&format!(", {}/{}", human_bytes(b), human_bytes(bytes)));
    }
    s.push_str(&format!(", {:.0} objects/s", o as f64 / secs));
    if r > 0 {
        s.push_str(&format!(", {r} retries"));
    }
    s
}

impl ProgressDisplay {
    /// Starts showing `p` against the totals. `crash_after`: test-only crash injection (exit 86 once
    /// that many objects are done).
    pub fn start(
        label: &'static str,
        p: Arc<TransferProgress>,
        objects: u64,
        bytes: u64,
        interval: Duration,
        quiet: bool,
        crash_after: Option<u64>,
    ) -> ProgressDisplay {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let tty = std::io::stderr().is_terminal();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut last_line = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Some(n) = crash_after {
                    if p.objects.load(Ordering::Relaxed) >= n {
                        eprintln!("\nSAFEGUARD_RECOVER_CRASH: exiting after {n} objects (test crash injection)");
                        std::process::exit(86);
                    }
                }
                let done = s2.load(Ordering::Relaxed);
                if !quiet {
                    if tty {
                        eprint!("\r{}\x1b[K", line(label, &p, objects, bytes, started, true));
                        if done {
                            eprintln!();
                        }
                        let _ = std::io::stderr().flush();
                    } else if done || last_line.elapsed() >= interval {
                        eprintln!("{}", line(label, &p, objects, bytes, started, false));
                        last_line = Instant::now();
                    }
                }
                if done {
                    break;
                }
            }
        });
        ProgressDisplay { stop, task: Some(task) }
    }

    /// Draws the final state and stops.
    pub async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for ProgressDisplay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
