//! `safeguard ingest`: backfill from archived syslog files or stdin.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use safeguard::app::report;
use safeguard::store::Store;

use super::{print_json, Ctx};

pub fn run(ctx: Ctx, files: Vec<PathBuf>, json: bool, year: Option<i64>) -> Result<ExitCode> {
    let store = Store::open_waiting(&ctx.store_path, ctx.cache, std::time::Duration::from_secs(5)).context("ingest writes to the store directly")?;
    let opts = safeguard::sources::file::StreamOptions { year };
    let s = safeguard::engine::ingest::ingest_with(&store, ctx.cfg.engine(), &files, opts)?;
    if json {
        print_json(&s)?;
    } else {
        println!("{}", report::counters_text(&s.counters));
        println!("{:.0} lines/s over {:.2}s", s.lines_per_second, s.seconds);
    }
    Ok(ExitCode::SUCCESS)
}
