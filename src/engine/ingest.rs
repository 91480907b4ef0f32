//! `safeguard ingest`: backfill from archived syslog (files, directories, stdin; plain or compressed)
//! straight into the engine, on the calling thread, in large chunks. The inputs are merged into one
//! time-ordered stream by [`crate::sources::archive::Merger`]. This is the path the throughput benchmark
//! measures.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::pipeline::{Engine, EngineConfig, SourceHandle, SourceRun};
use crate::sources::archive::{self, InputReport, MergeOptions, Merger, Step};
use crate::sources::decode::Format;
use crate::sources::file::StreamOptions;
use crate::state::Effect;
use crate::store::{Counters, Store, StoreError};
use crate::timeutil::now_ms;

/// Commit at least this often (bytes read) so a long backfill that is interrupted resumes near where it
/// stopped rather than from the start.
const COMMIT_BYTES: u64 = 256 << 20;
/// How often the progress callback is called at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading the inputs failed: {0}")]
    Read(#[from] io::Error),
}

/// One input's outcome: what the reader saw and what the engine made of it.
#[derive(Debug, Clone, Serialize)]
pub struct InputSummary {
    pub input: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    pub lines_read: u64,
    pub lines_relevant: u64,
    pub lines_rejected: u64,
    pub lines_skipped_replay: u64,
    /// Lines earlier than a line before them by more than the bound (`--max-backwards`).
    pub lines_backwards: u64,
    pub max_backwards_seconds: u64,
    /// Why the input (or its rest, past some point) could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct IngestSummary {
    pub inputs: Vec<InputSummary>,
    #[serde(flatten)]
    pub counters: Counters,
    pub seconds: f64,
    pub lines_per_second: f64,
    /// What the lines caused (deletions, reversals); `effects` is their count.
    #[serde(rename = "effects_raised")]
    pub effects: Vec<Effect>,
    pub warnings: Vec<String>,
}

impl IngestSummary {
    /// Inputs that could not be read (entirely or in part).
    pub fn failed(&self) -> impl Iterator<Item = &InputSummary> {
        self.inputs.iter().filter(|i| i.error.is_some())
    }
}

/// Where a long backfill stands, for a progress display.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    /// Raw (compressed) input bytes read, and in all when every input's size is known.
    pub bytes: u64,
    pub total: Option<u64>,
    pub lines: u64,
    /// The input the latest lines came from.
    pub current: &'a str,
}

/// How `ingest` reads its inputs.
pub struct IngestOptions<'a> {
    pub stream: StreamOptions,
    pub max_backwards: Duration,
    pub progress: Option<&'a mut dyn FnMut(&Progress<'_>)>,
}

impl Default for IngestOptions<'_> {
    fn default() -> Self {
        IngestOptions {
            stream: StreamOptions::default(),
            max_backwards: Duration::from_millis(MergeOptions::default().max_backwards_ms as u64),
            progress: None,
        }
    }
}

/// Ingests every path (files, directories, `-` for stdin) and commits. Deletions whose grace has passed
/// by the wall clock become final at the end. An input that cannot be read is reported in the summary,
/// not fatal; a store error is.
pub fn ingest(store: &Store, cfg: EngineConfig, paths: &[PathBuf]) -> Result<IngestSummary, IngestError> {
    ingest_with(store, cfg, paths, IngestOptions::default())
}

/// [`ingest`] with options (`--year`, `--max-backwards`, progress).
pub fn ingest_with(store: &Store, cfg: EngineConfig, paths: &[PathBuf], mut opts: IngestOptions<'_>) -> Result<IngestSummary, IngestError> {
    let started = Instant::now();
    let mut engine = Engine::new(store.clone(), cfg)?;
    let before = engine.counters().clone();
    let (inputs, failed) = archive::expand(paths);
    let merge =
        MergeOptions { stream: opts.stream, max_backwards_ms: i64::try_from(opts.max_backwards.as_millis()).unwrap_or(i64::MAX), ..MergeOptions::default() };
    let mut merger = Merger::new(inputs, merge);
    let mut handles: Vec<Option<SourceHandle>> = vec![None; merger.len()];
    let (mut since_commit, mut effects) = (0u64, Vec::new());
    let mut last_progress = Instant::now();
    let mut current = None;
    loop {
        let mut register = |i: usize, id, name: &str, clock| -> io::Result<_> {
            let (h, resume) = engine.add_source_with(id, name, true, clock).map_err(io::Error::other)?;
            handles[i] = Some(h);
            Ok(resume)
        };
        let Some(step) = merger.next(&mut register)? else { break };
        match step {
            Step::Lines { input, base, bytes, lines, candidates, shift } => {
                let h = handles[input].expect("registered before its lines");
                since_commit += bytes.len() as u64;
                engine.feed_run(h, base, bytes, lines, candidates, shift);
                current = Some(input);
            }
            Step::Restart { input } => engine.restart(handles[input].expect("registered")),
            Step::Skipped { input, lines } => engine.note_skipped(handles[input].expect("registered"), lines),
        }
        if since_commit >= COMMIT_BYTES || engine.should_commit() {
            effects.extend(engine.commit(None)?.effects);
            since_commit = 0;
        }
        if let (Some(cb), Some(cur)) = (opts.progress.as_deref_mut(), current) {
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                let (bytes, total) = merger.progress();
                cb(&Progress { bytes, total, lines: engine.counters().lines_read - before.lines_read, current: merger.name(cur) });
            }
        }
    }
    if let Some(cb) = opts.progress.as_deref_mut() {
        let (bytes, total) = merger.progress();
        cb(&Progress { bytes, total, lines: engine.counters().lines_read - before.lines_read, current: "" });
    }
    effects.extend(engine.commit(Some(now_ms()))?.effects);
    let mut warnings = Vec::new();
    if merger.overflowed {
        warnings.push(format!(
            "more than {} inputs overlap in time, more than may be open at once: some lines were read out of time order (the records do not depend on it; years of RFC 3164 lines and all-clear alerts may)",
            MergeOptions::default().max_open
        ));
    }
    let runs: Vec<SourceRun> = handles.iter().map(|h| h.map(|h| engine.source_run(h)).unwrap_or_default()).collect();
    let mut inputs: Vec<InputSummary> = merger.into_reports().into_iter().zip(runs).map(|(r, run)| summary(r, run)).collect();
    inputs.extend(failed.into_iter().map(|r| summary(r, SourceRun::default())));
    let counters = engine.counters().since(&before);
    let seconds = started.elapsed().as_secs_f64();
    Ok(IngestSummary { inputs, lines_per_second: counters.lines_read as f64 / seconds.max(1e-9), counters, seconds, effects, warnings })
}

fn summary(r: InputReport, run: SourceRun) -> InputSummary {
    InputSummary {
        input: r.input,
        format: r.format,
        lines_read: run.lines_read,
        lines_relevant: run.lines_relevant,
        lines_rejected: run.lines_rejected,
        lines_skipped_replay: run.lines_skipped_replay,
        lines_backwards: r.lines_backwards,
        max_backwards_seconds: r.max_backwards_seconds,
        error: r.error,
    }
}
