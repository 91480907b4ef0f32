//! `safeguard doctor`: one bounded check per configured connection.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use super::{print_json, Ctx};

pub fn run(ctx: Ctx, timeout: Duration, json: bool) -> Result<ExitCode> {
    let opts = safeguard::app::doctor::Options { config_label: ctx.config_label, store_path: ctx.store_path.clone(), cache_bytes: ctx.cache, timeout };
    let report = safeguard::app::doctor::run_blocking(&ctx.cfg.doctor_targets(), &opts)?;
    if json {
        print_json(&report)?;
    } else {
        print!("{}", report.render_text());
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
