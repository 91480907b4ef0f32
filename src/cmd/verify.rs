//! `safeguard verify`: what the object store holds for an instance, and whether it can be restored.

use std::process::ExitCode;

use anyhow::{Context, Result};
use safeguard::store::query::Access;

use super::{print_json, Ctx};

pub fn run(ctx: Ctx, instance_id: String, prefix: Option<String>, json: bool) -> Result<ExitCode> {
    let s3 = ctx.cfg.s3.clone().context("verify needs an [s3] section in the config (endpoint, region, credentials)")?;
    let prefix = match prefix {
        Some(p) => p,
        None => {
            let access = Access::open(&ctx.store_path, ctx.cache)?;
            let rec = access
                .record(&instance_id)?
                .with_context(|| format!("no instance {instance_id} in the store; pass --prefix s3://bucket/backups/{instance_id}/wal/"))?;
            rec.backup_prefix.with_context(|| format!("no backup prefix recorded for {instance_id} (no WAL-E line seen); pass --prefix"))?
        }
    };
    let url = safeguard::adapters::s3::S3Url::parse(&prefix)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = rt.block_on(async {
        let store = safeguard::adapters::s3::ObjectStore::connect(&s3)?;
        anyhow::Ok(safeguard::verify::verify(&store, &url).await)
    })?;
    if json {
        print_json(&report)?;
    } else {
        print!("{}", report.render_text());
    }
    Ok(if report.verdict.is_restorable() { ExitCode::SUCCESS } else { ExitCode::from(3) })
}
