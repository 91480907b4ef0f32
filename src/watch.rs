//! `safeguard watch`: runs the configured sources into one engine thread that owns the store.
//! Sources are tokio tasks or blocking threads; they only send [`Msg`]s. The engine commits at least
//! every `commit_interval` and every `commit_lines` lines, and once more on shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::config::{Config, SourceConfig};
use crate::pipeline::{Committed, Engine};
use crate::sources::{file, syslog, Msg, Sink};
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
            Effect::RestoreSeen { instance_id, .. } => tracing::info!(instance = %instance_id, "restore from backups started"),
        }
    }
}

fn engine_loop(mut engine: Engine, mut rx: mpsc::Receiver<Msg>, cfg: Config, sources_total: usize) -> anyhow::Result<Counters> {
    let mut finished = 0usize;
    let mut last_stats = Instant::now();
    let mut stats_base = engine.counters().clone();
    let commit = |engine: &mut Engine, tick: bool| -> anyhow::Result<()> {
        let c = engine.commit(tick.then(now_ms))?;
        log_effects(&c);
        Ok(())
    };
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Register { id, name, replayable, reply } => {
                let h = engine.add_source(&id, &name, replayable)?;
                let _ = reply.send((h, engine.committed(h)));
            }
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
    let engine_thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || engine_loop(engine, rx, ecfg, if all_finite { finite } else { usize::MAX }))?;

    let mut tasks = Vec::new();
    let mut threads = Vec::new();
    for src in sources {
        match src {
            SourceConfig::Syslog { udp, tcp } => {
                let (h, _) = sink.register("syslog", "syslog listener", false).await?;
                if let Some(a) = udp {
                    let sock = syslog::bind_udp(a).await?;
                    tracing::info!(addr = %sock.local_addr()?, "listening for syslog on UDP");
                    tasks.push(tokio::spawn(syslog::run_udp(sock, h, sink.clone())));
                }
                if let Some(a) = tcp {
                    let l = syslog::bind_tcp(a).await?;
                    tracing::info!(addr = %l.local_addr()?, "listening for syslog on TCP");
                    tasks.push(tokio::spawn(syslog::run_tcp(l, h, sink.clone())));
                }
            }
            SourceConfig::File { path, follow } => {
                let (sink, stop) = (sink.clone(), stop.clone());
                threads.push(std::thread::spawn(move || {
                    let res = if follow {
                        file::follow_file(path.clone(), sink.clone(), std::time::Duration::from_millis(250), stop)
                    } else {
                        file::read_file(&path, &mut sink.clone()).map(|_| ())
                    };
                    if let Err(e) = res {
                        tracing::error!(path = %path.display(), error = %e, "file source failed");
                    }
                    let _ = sink.send_blocking(Msg::Finished { name: path.display().to_string() });
                }));
            }
            SourceConfig::Stdin => {
                let sink = sink.clone();
                threads.push(std::thread::spawn(move || {
                    if let Err(e) = file::read_stream(std::io::stdin().lock(), "stdin", &mut sink.clone()) {
                        tracing::error!(error = %e, "reading stdin failed");
                    }
                    let _ = sink.send_blocking(Msg::Finished { name: "stdin".into() });
                }));
            }
        }
    }

    let control = tokio::spawn(crate::query::serve(store.clone()));
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
            return res?.map_err(|_| anyhow::anyhow!("the engine thread panicked"))?;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = shutdown_tx.send(Msg::Shutdown).await;
    for t in tasks {
        t.abort();
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
