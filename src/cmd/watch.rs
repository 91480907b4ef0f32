//! `safeguard watch`: the configured sources (or those given on the command line) until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use safeguard::app::config::{FileConfig, SourceConfig, SyslogConfig};
use safeguard::store::Store;

use super::Ctx;

pub fn run(mut ctx: Ctx, syslog: Vec<SocketAddr>, file: Vec<PathBuf>, stdin: bool) -> Result<ExitCode> {
    if !syslog.is_empty() || !file.is_empty() || stdin {
        ctx.cfg.sources = syslog.into_iter().map(|a| SourceConfig::Syslog(SyslogConfig::on(a))).collect();
        ctx.cfg.sources.extend(file.into_iter().map(|path| SourceConfig::File(FileConfig { path, follow: true })));
        if stdin {
            ctx.cfg.sources.push(SourceConfig::Stdin);
        }
    }
    let store = Store::open_waiting(&ctx.store_path, ctx.cache, std::time::Duration::from_secs(5))?;
    tracing::info!(store = %ctx.store_path.display(), "safeguard watch starting");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut setup = ctx.cfg.watch_setup();
    let journal = ctx.store_path.clone();
    setup.recoveries = Some(std::sync::Arc::new(move || {
        let list = safeguard::recover::journal::Journal::for_store(&journal).list().map_err(|e| e.to_string())?;
        Ok(list.into_iter().map(|r| r.status.as_str()).collect())
    }));
    let counters = rt.block_on(safeguard::engine::watch::run(setup, store, shutdown_signal()))?;
    tracing::info!("stopped; {}", counters.text());
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
}
