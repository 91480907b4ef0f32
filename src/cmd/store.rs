//! `safeguard store backup | backups | restore`: the store's own backups in the object store
//! (`[backup]`, `[s3]`; see `safeguard::store::backup`).

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use safeguard::adapters::s3::{ObjectStore, S3Url};
use safeguard::store::backup::{self, Progress};
use safeguard::store::{Store, StoreError};
use safeguard::verify::human_bytes;

use super::{print_json, Ctx};

#[derive(Subcommand)]
pub enum StoreCmd {
    /// Back the store up to the object store now: a consistent copy, compressed, with a manifest. While
    /// a watcher runs on the store, it is asked to take the backup itself (between two of its commits,
    /// to its [backup] destination) and this waits for it.
    Backup {
        /// Where to (default: [backup] to), e.g. s3://bucket/safeguard/. Not with a running watcher,
        /// which backs up to its own [backup] to.
        #[arg(long)]
        to: Option<String>,
        /// With a running watcher: how long to wait for its backup.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
        #[arg(long)]
        json: bool,
    },
    /// List the backups under a prefix, newest first, complete or not (default: [backup] to).
    Backups {
        /// s3://bucket/prefix/ (default: [backup] to).
        url: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the store (--store) from the newest complete backup, or the one --name names. The
    /// object's checksum is verified before anything is written; a non-empty store directory is
    /// refused unless --force (then it is moved aside, never deleted).
    Restore {
        /// s3://bucket/prefix/ (default: [backup] to).
        url: Option<String>,
        /// A backup's name as `store backups` shows it (default: the newest complete one).
        #[arg(long)]
        name: Option<String>,
        /// Replace a non-empty store directory (moved aside to <dir>.replaced-<time>).
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(ctx: Ctx, cmd: StoreCmd) -> Result<ExitCode> {
    match cmd {
        StoreCmd::Backup { to, wait, json } => backup_now(ctx, to, wait, json),
        StoreCmd::Backups { url, json } => list(ctx, url, json),
        StoreCmd::Restore { url, name, force, json } => restore(ctx, url, name, force, json),
    }
}

/// The prefix given, else `[backup] to`.
fn dest(ctx: &Ctx, given: Option<String>) -> Result<S3Url> {
    let url = match given.or_else(|| ctx.cfg.backup.as_ref().and_then(|b| b.to.clone())) {
        Some(u) => u,
        None => bail!("no backup prefix: pass one (s3://bucket/prefix/) or set `to` in the config's [backup] section"),
    };
    backup::parse_dest(&url).map_err(|e| anyhow::anyhow!("{url:?}: {e}"))
}

fn object_store(ctx: &Ctx) -> Result<ObjectStore> {
    // Without [s3], the AWS defaults: region us-east-1 and the credentials chain.
    Ok(ObjectStore::connect(&ctx.cfg.s3.clone().unwrap_or_default())?)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn backup_now(ctx: Ctx, to: Option<String>, wait: std::time::Duration, json: bool) -> Result<ExitCode> {
    let socket = ctx.store_path.join(safeguard::query::SOCKET_NAME);
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        if to.is_some() {
            bail!(
                "a watcher is running on the store at {}: leave out --to, and it backs up to its own [backup] to (stop it to back up anywhere else)",
                ctx.store_path.display()
            );
        }
        eprintln!("asking the running watcher for a backup to its [backup] destination ...");
        let watcher = safeguard::query::Access::Watcher { path: ctx.store_path.clone(), socket };
        let started = std::time::Instant::now();
        let mut last = started;
        let made = watcher.backup_through_watcher(wait, || {
            if last.elapsed() >= std::time::Duration::from_secs(10) {
                last = std::time::Instant::now();
                eprintln!("  still uploading ({} s)", started.elapsed().as_secs());
            }
        })?;
        print_made(&made, None, json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let dest = dest(&ctx, to)?;
    let os = object_store(&ctx)?;
    let store = match Store::open_existing(&ctx.store_path, ctx.cache) {
        Err(StoreError::Locked { path }) => bail!(
            "the store at {} is held by another process (an ingest or a recovery, or a watcher still starting); try again when it is done",
            path.display()
        ),
        other => other?,
    };
    let copy = backup::copy(&store, safeguard::timeutil::now_ms())?;
    // The copy is taken: the store need not stay locked while it uploads.
    drop(store);
    // The configured `keep` applies when backing up to the configured prefix; elsewhere nothing is pruned.
    let keep = ctx.cfg.backup.as_ref().filter(|b| b.dest().ok().as_ref() == Some(&dest)).map_or(u32::MAX, |b| b.keep);
    eprintln!("uploading {} ({} entries) to {dest} ...", copy.name, copy.stats.entries);
    let made = runtime()?.block_on(backup::upload(&os, &dest, copy, keep))?;
    print_made(&made, Some(keep), json)?;
    Ok(ExitCode::SUCCESS)
}

fn print_made(made: &backup::Made, keep: Option<u32>, json: bool) -> Result<()> {
    if json {
        return print_json(made);
    }
    println!(
        "backed up {} instances ({} entries, {} compressed) to {} (the store was held {} ms; upload {} ms)",
        made.manifest.instances,
        made.manifest.entries,
        human_bytes(made.manifest.bytes),
        made.url,
        made.held_ms,
        made.upload_ms
    );
    if !made.pruned.is_empty() {
        let keep = keep.map_or("[backup] keep".to_string(), |k| format!("keep = {k}"));
        println!("deleted {} older backup(s) beyond {keep}: {}", made.pruned.len(), made.pruned.join(", "));
    }
    if !made.aborted.is_empty() {
        println!("aborted {} unfinished upload(s) of earlier backups: {}", made.aborted.len(), made.aborted.join(", "));
    }
    Ok(())
}

fn list(ctx: Ctx, url: Option<String>, json: bool) -> Result<ExitCode> {
    let dest = dest(&ctx, url)?;
    let os = object_store(&ctx)?;
    let listed = runtime()?.block_on(backup::list(&os, &dest))?;
    if json {
        print_json(&listed)?;
        return Ok(ExitCode::SUCCESS);
    }
    if listed.is_empty() {
        println!("no backups under {dest}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<24} {:<25} {:>10} {:>9}  STATE", "NAME", "CREATED", "SIZE", "INSTANCES");
    for l in &listed {
        let state = match &l.problem {
            None => "complete".to_string(),
            Some(p) => format!("incomplete: {p}"),
        };
        let instances = l.instances.map_or_else(|| "-".to_string(), |n| n.to_string());
        println!("{:<24} {:<25} {:>10} {:>9}  {state}", l.name, l.created_at, human_bytes(l.bytes), instances);
    }
    Ok(ExitCode::SUCCESS)
}

fn restore(ctx: Ctx, url: Option<String>, name: Option<String>, force: bool, json: bool) -> Result<ExitCode> {
    let dest = dest(&ctx, url)?;
    let os = object_store(&ctx)?;
    let progress = |p: Progress| match p {
        Progress::Downloading { url, bytes } => eprintln!("downloading {url} ({}) ...", human_bytes(bytes)),
        Progress::Downloaded { bytes, total } => eprintln!("  {} of {}", human_bytes(bytes), human_bytes(total)),
        Progress::Verified => eprintln!("checksum verified; rebuilding the store ..."),
        Progress::Built { entries } => eprintln!("loaded {entries} entries"),
    };
    let done = runtime()?
        .block_on(backup::restore(&os, &dest, name.as_deref(), &ctx.store_path, force, ctx.cache, &progress))
        .with_context(|| format!("restoring the store at {} from {dest}", ctx.store_path.display()))?;
    if json {
        print_json(&done)?;
    } else {
        println!("restored {} (created {}, {} instances, {} entries) into {}", done.name, done.created_at, done.instances, done.entries, done.store.display());
        for (src, off) in &done.positions {
            println!("  source {src} resumes at offset {off}");
        }
        if let Some(a) = &done.moved_aside {
            println!("the store that was there is kept at {}; delete it once the restored one is confirmed", a.display());
        }
        println!("start the watcher on it; lines after the backup are applied again (Kafka re-delivers them; archives can be ingested again), and what was applied already changes nothing");
    }
    Ok(ExitCode::SUCCESS)
}
