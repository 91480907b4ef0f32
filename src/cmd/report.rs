//! `safeguard report deleted`: what deleted instances' backups still hold and cost.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use safeguard::app::cost;
use safeguard::store::query::{Access, Filter};

use super::{print_json, Ctx};

pub fn deleted(ctx: Ctx, older_than: Option<Duration>, json: bool, csv: bool) -> Result<ExitCode> {
    let s3 = ctx.cfg.s3.clone().context("report deleted lists the object store: it needs an [s3] section in the config")?;
    let access = Access::open(&ctx.store_path, ctx.cache)?;
    let records = access.records(&Filter { deleted: true, at_risk: false }, ctx.now, &ctx.rules)?;
    drop(access);
    let records = cost::deleted_before(records, ctx.now, older_than);
    let n = records.len();
    let bar = (std::io::stderr().is_terminal() && n > 1).then(|| {
        let b = indicatif::ProgressBar::new(n as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template("[{bar:20}] {pos}/{len} prefixes listed, ETA {eta}") {
            b.set_style(style.progress_chars("=> "));
        }
        b
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let report = rt.block_on(async {
        let store = safeguard::adapters::s3::ObjectStore::connect(&s3)?;
        let done = |k: usize| {
            if let Some(b) = &bar {
                b.set_position(k as u64);
            }
        };
        anyhow::Ok(cost::deleted(&store, records, &ctx.cfg.report, &done).await)
    })?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if json {
        print_json(&report)?;
    } else if csv {
        print!("{}", cost::csv(&report));
    } else {
        print!("{}", cost::text(&report));
    }
    let failed = report.rows.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        eprintln!("error: {failed} prefix(es) could not be listed; their rows say why (the totals leave them out)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
