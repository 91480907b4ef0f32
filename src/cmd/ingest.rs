//! `safeguard ingest`: backfill from archived syslog files, directories or stdin.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use safeguard::engine::ingest::{IngestOptions, IngestSummary, Progress};
use safeguard::sources::file::StreamOptions;
use safeguard::store::Store;

use super::{print_json, Ctx};

/// Past this many inputs the text summary lists only those with something to say.
const LIST_ALL_MAX: usize = 20;

pub struct Args {
    pub files: Vec<PathBuf>,
    pub json: bool,
    pub year: Option<i64>,
    pub max_backwards: Duration,
    pub quiet: bool,
}

pub fn run(ctx: Ctx, a: Args) -> Result<ExitCode> {
    let store = Store::open_waiting(&ctx.store_path, ctx.cache, Duration::from_secs(5)).context("ingest writes to the store directly")?;
    let bar = (!a.quiet && std::io::stderr().is_terminal()).then(progress_bar);
    let started = Instant::now();
    let mut lines = 0;
    let mut show = |p: &Progress<'_>| {
        let Some(bar) = &bar else { return };
        if let Some(t) = p.total {
            bar.set_length(t.max(p.bytes));
        }
        bar.set_position(p.bytes);
        lines = p.lines;
        let rate = p.lines as f64 / started.elapsed().as_secs_f64().max(1e-3);
        // The file name only: the path is in the summary.
        let file = std::path::Path::new(p.current).file_name().map_or(p.current.into(), |f| f.to_string_lossy());
        bar.set_message(format!("{} lines, {:.0} lines/s {}", p.lines, rate, file));
    };
    let opts = IngestOptions { stream: StreamOptions { year: a.year }, max_backwards: a.max_backwards, progress: Some(&mut show) };
    let s = safeguard::engine::ingest::ingest_with(&store, ctx.cfg.engine(), &a.files, opts)?;
    if let Some(bar) = &bar {
        let secs = started.elapsed().as_secs_f64();
        bar.finish_with_message(format!("{lines} lines in {secs:.1}s ({:.0} lines/s)", lines as f64 / secs.max(1e-3)));
        // indicatif leaves the cursor on the finished bar's line; the summary starts below it.
        eprintln!();
    }
    if a.json {
        print_json(&s)?;
    } else {
        print!("{}", text(&s, a.max_backwards));
    }
    for i in s.failed() {
        let read = if i.lines_read > 0 {
            format!("; the {} whole lines before it were ingested (ingest the complete file later: what was applied is skipped)", i.lines_read)
        } else {
            String::new()
        };
        eprintln!("error: {}: {}{read}", i.input, i.error.as_deref().unwrap_or_default());
    }
    Ok(if s.failed().next().is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10));
    // `wide_msg` is cut to the terminal's width, so the bar never wraps.
    let style = ProgressStyle::with_template("[{bar:16}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar
}

fn text(s: &IngestSummary, max_backwards: Duration) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{}", s.counters.text());
    let _ = writeln!(out, "{} inputs, {:.0} lines/s over {:.2}s", s.inputs.len(), s.lines_per_second, s.seconds);
    let notable = |i: &&safeguard::engine::ingest::InputSummary| i.error.is_some() || i.lines_backwards > 0;
    let listed: Vec<_> = if s.inputs.len() <= LIST_ALL_MAX { s.inputs.iter().collect() } else { s.inputs.iter().filter(notable).collect() };
    if !listed.is_empty() {
        let w = listed.iter().map(|i| i.input.len()).max().unwrap_or(5).max(5);
        let _ = writeln!(out, "  {:w$}  {:6}  {:>10}  {:>8}  {:>8}  {:>10}", "input", "format", "read", "relevant", "rejected", "replayed");
        for i in &listed {
            let format = i.format.map_or("-", |f| f.as_str());
            let _ = write!(
                out,
                "  {:w$}  {:6}  {:>10}  {:>8}  {:>8}  {:>10}",
                i.input, format, i.lines_read, i.lines_relevant, i.lines_rejected, i.lines_skipped_replay
            );
            if i.error.is_some() {
                out.push_str("  FAILED (see below)");
            }
            out.push('\n');
        }
    }
    if listed.len() < s.inputs.len() {
        let _ = writeln!(out, "  ({} more inputs read cleanly; --json lists each)", s.inputs.len() - listed.len());
    }
    for i in s.inputs.iter().filter(|i| i.lines_backwards > 0) {
        let _ = writeln!(
            out,
            "warning: {}: {} lines go back in time by more than {} (up to {}); they were applied where they stand in the file",
            i.input,
            i.lines_backwards,
            humantime::format_duration(max_backwards),
            humantime::format_duration(Duration::from_secs(i.max_backwards_seconds))
        );
    }
    for w in &s.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}
