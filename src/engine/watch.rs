//! `safeguard watch`: runs the configured sources into one engine thread that owns the store.
//! Sources are tokio tasks or blocking threads; they only send [`Msg`]s. The engine commits at least
//! every `commit_interval` and every `commit_lines` lines, and once more on shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::config::{Config, SourceConfig};
use crate::engine::pipeline::{Committed, Engine};
use crate::sources::{Durable, Msg, Sink};
use crate::state::Effect;
use crate::store::{Counters, Store};
use crate::timeutil::{now_ms, rfc3339};

/// Logs what a commit made durable; these lines are what an operator greps for before alerts exist.
fn log_effects(c: &Committed) {
    for e in &c.effects {
        match e {
            Effect::DeletionPending { instance_id, at, evidence } => {
                tracing::warn!(instance = %instance_id, at = %rfc3339(*at), %evidence, "instance looks deleted; final after the deletion grace unless a node is added again")
            }
            Effect::DeletionCancelled { instance_id, .. } => tracing::info!(instance = %instance_id, "deletion cancelled: a node was added again"),
            Effect::InstanceDeleted { instance_id, at, evidence, has_complete_base_backup } => {
                if *has_complete_base_backup {
                    tracing::warn!(instance = %instance_id, at = %rfc3339(*at), %evidence, next = %format!("safeguard recover {instance_id}"), "instance DELETED")
                } else {
                    tracing::error!(instance = %instance_id, at = %rfc3339(*at), %evidence, "instance DELETED and the logs show NO complete base backup")
                }
            }
            Effect::DeletionReversed { instance_id, at, evidence } => {
                tracing::warn!(instance = %instance_id, deleted_at = %rfc3339(*at), %evidence, "a deletion already made final did not happen: the instance is live again")
            }
            Effect::RestoreSeen { instance_id, .. } => tracing::info!(instance = %instance_id, "restore from backups started"),
        }
    }
}

fn engine_loop(
    mut engine: Engine,
    mut rx: mpsc::Receiver<Msg>,
    cfg: Config,
    sources_total: usize,
    durable: tokio::sync::watch::Sender<Durable>,
) -> anyhow::Result<Counters> {
    let mut finished = 0usize;
    let mut last_stats = Instant::now();
    let scan_every = cfg.alerts.as_ref().map(|a| a.absence_scan_interval);
    let mut last_scan = Instant::now();
    let mut stats_base = engine.counters().clone();
    let commit = |engine: &mut Engine, tick: bool| -> anyhow::Result<()> {
        let c = engine.commit(tick.then(now_ms))?;
        log_effects(&c);
        // Only now may sources acknowledge upstream (Kafka offsets) what these positions cover.
        durable.send_replace(Arc::new(engine.committed_positions()));
        Ok(())
    };
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Register { id, name, replayable, clock, reply } => {
                let r = engine.add_source_with(&id, &name, replayable, clock)?;
                let _ = reply.send(r);
            }
            Msg::Restart { h } => engine.restart(h),
            Msg::Line { h, end, bytes } => engine.feed_line(h, end, &bytes),
            Msg::Chunk { h, base, bytes } => engine.feed_chunk(h, base, &bytes),
            Msg::Finished { name } => {
                tracing::info!(source = %name, "source finished");
                finished += 1;
                if finished >= sources_total {
                    break;
                }
            }
            Msg::Shutdown => break,
            Msg::Tick => {
                if scan_every.is_some_and(|every| last_scan.elapsed() >= every) {
                    last_scan = Instant::now();
                    match engine.scan_absence(now_ms()) {
                        Ok(n) if n > 0 => tracing::info!(raised = n, "absence scan found instances at risk"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "absence scan failed"),
                    }
                }
                commit(&mut engine, true)?;
                if last_stats.elapsed() >= cfg.watch.stats_interval {
                    let d = crate::report::delta(&stats_base, engine.counters());
                    let secs = last_stats.elapsed().as_secs_f64();
                    tracing::info!(rate = format!("{:.0} lines/s", d.lines_read as f64 / secs), "{}", crate::report::counters_text(&d));
                    stats_base = engine.counters().clone();
                    last_stats = Instant::now();
                }
            }
        }
        if engine.uncommitted_lines() >= cfg.watch.commit_lines {
            commit(&mut engine, false)?;
        }
    }
    commit(&mut engine, true)?;
    Ok(engine.counters().clone())
}

/// Runs until `shutdown` resolves or every source has finished (stdin or a non-followed file).
pub async fn run(cfg: Config, store: Store, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<Counters> {
    let engine = Engine::new(store.clone(), cfg.engine())?;
    let (tx, rx) = mpsc::channel::<Msg>(1024);
    let sink = Sink::new(tx.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let sources = cfg.sources();
    let finite = sources.iter().filter(|s| matches!(s, SourceConfig::Stdin | SourceConfig::File { follow: false, .. })).count();
    let all_finite = finite == sources.len();

    let ecfg = cfg.clone();
    let (durable_tx, durable_rx) = tokio::sync::watch::channel(Arc::new(HashMap::new()));
    let engine_thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || engine_loop(engine, rx, ecfg, if all_finite { finite } else { usize::MAX }, durable_tx))?;

    // [http]: health and metrics, up before the sources so /readyz can say they are starting.
    let mut http = match &cfg.http {
        Some(h) => Some(crate::adapters::http::Server::start(&cfg, h, store.clone(), durable_rx.clone()).await?),
        None => None,
    };
    let opts = crate::sources::SourceOptions { stats_interval: cfg.watch.stats_interval };
    let running = crate::sources::start(&sources, &sink, durable_rx, stop.clone(), &opts).await?;
    if let Some(h) = &http {
        h.sources_started();
    }

    let control = tokio::spawn(crate::query::serve(store.clone()));
    let sender = match &cfg.alerts {
        Some(a) => {
            let s3 = cfg.s3.as_ref().map(crate::adapters::s3::ObjectStore::connect).transpose()?;
            let sender = crate::sinks::sender::Sender::new(store.clone(), a.clone(), s3)?;
            Some(tokio::spawn(sender.run(std::time::Duration::from_secs(1))))
        }
        None => None,
    };
    let ticker = {
        let tx = tx.clone();
        let every = cfg.watch.commit_interval;
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(every);
            loop {
                iv.tick().await;
                if tx.send(Msg::Tick).await.is_err() {
                    break;
                }
            }
        })
    };
    let shutdown_tx = tx;
    drop(sink);

    let engine_done = tokio::task::spawn_blocking(move || engine_thread.join());
    tokio::pin!(engine_done);
    tokio::select! {
        _ = shutdown => {
            tracing::info!("shutting down: stopping sources and flushing the store");
        }
        res = &mut engine_done => {
            ticker.abort();
            control.abort();
            if let Some(h) = http.take() {
                h.stop();
            }
            return res?.map_err(|_| anyhow::anyhow!("the engine thread panicked"))?;
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = http.take() {
        h.stop();
    }
    let _ = shutdown_tx.send(Msg::Shutdown).await;
    running.abort();
    if let Some(s) = sender {
        s.abort();
    }
    ticker.abort();
    control.abort();
    // The engine applies everything queued before Shutdown, commits and returns.
    let res = tokio::time::timeout(std::time::Duration::from_secs(30), engine_done).await;
    let _ = std::fs::remove_file(store.path().join(crate::query::SOCKET_NAME));
    match res {
        Ok(r) => r?.map_err(|_| anyhow::anyhow!("the engine thread panicked"))?,
        Err(_) => anyhow::bail!("the engine did not finish within 30s of shutdown"),
    }
}
