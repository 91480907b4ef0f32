//! `safeguard ingest`: backfill from archived syslog files (or stdin) straight into the engine, on the
//! calling thread, in large chunks. This is the path the throughput benchmark measures.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::engine::pipeline::{Engine, EngineConfig, Resume, SourceHandle, SourceId};
use crate::parse::YearClock;
use crate::sources::file::{read_file, read_stream, LineSink, StreamOptions};
use crate::state::Effect;
use crate::store::{Counters, Store, StoreError};
use crate::timeutil::now_ms;

/// Commit at least this often (bytes read) so a long backfill that is interrupted resumes near where it
/// stopped rather than from the start.
const COMMIT_BYTES: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

#[derive(Debug, Serialize)]
pub struct IngestSummary {
    pub inputs: usize,
    #[serde(flatten)]
    pub counters: Counters,
    pub seconds: f64,
    pub lines_per_second: f64,
    pub effects: Vec<Effect>,
}

struct Direct<'a> {
    engine: &'a mut Engine,
    since_commit: u64,
    effects: Vec<Effect>,
}

impl LineSink for Direct<'_> {
    fn register(&mut self, id: SourceId, name: &str, clock: YearClock) -> io::Result<(SourceHandle, Option<Resume>)> {
        self.engine.add_source_with(id, name, true, clock).map_err(io::Error::other)
    }

    fn restart(&mut self, h: SourceHandle) -> io::Result<()> {
        self.engine.restart(h);
        Ok(())
    }

    fn lines(&mut self, h: SourceHandle, base: u64, bytes: &[u8]) -> io::Result<()> {
        self.since_commit += bytes.len() as u64;
        self.engine.feed_chunk(h, base, bytes);
        if self.since_commit >= COMMIT_BYTES {
            let c = self.engine.commit(None).map_err(io::Error::other)?;
            self.effects.extend(c.effects);
            self.since_commit = 0;
        }
        Ok(())
    }
}

/// Ingests each path (`-` is stdin) and commits. Deletions whose grace has passed by the wall clock
/// become final at the end.
pub fn ingest(store: &Store, cfg: EngineConfig, paths: &[PathBuf]) -> Result<IngestSummary, IngestError> {
    ingest_with(store, cfg, paths, StreamOptions::default())
}

/// [`ingest`] with options for how the archives' years are read (`--year`).
pub fn ingest_with(store: &Store, cfg: EngineConfig, paths: &[PathBuf], opts: StreamOptions) -> Result<IngestSummary, IngestError> {
    let started = Instant::now();
    let mut engine = Engine::new(store.clone(), cfg)?;
    let before = engine.counters().clone();
    let mut sink = Direct { engine: &mut engine, since_commit: 0, effects: Vec::new() };
    for p in paths {
        let res = if p == Path::new("-") { read_stream(io::stdin().lock(), "stdin", &mut sink, opts) } else { read_file(p, &mut sink, opts) };
        res.map_err(|source| IngestError::Read { path: p.clone(), source })?;
    }
    let mut effects = std::mem::take(&mut sink.effects);
    effects.extend(engine.commit(Some(now_ms()))?.effects);
    let counters = crate::report::delta(&before, engine.counters());
    let seconds = started.elapsed().as_secs_f64();
    Ok(IngestSummary { inputs: paths.len(), lines_per_second: counters.lines_read as f64 / seconds.max(1e-9), counters, seconds, effects })
}
