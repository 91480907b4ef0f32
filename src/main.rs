//! The `safeguard` command line. Thin: parses arguments, loads config, calls the library, prints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use safeguard::config::{Config, SourceConfig};
use safeguard::query::{Access, Filter};
use safeguard::report;
use safeguard::store::Store;
use safeguard::timeutil::now_ms;

#[derive(Parser)]
#[command(name = "safeguard", version, about = "Makes a deleted Dingo PostgreSQL service instance recoverable in one command")]
struct Cli {
    /// Config file (TOML); see config/safeguard.toml. Without one, built-in defaults apply.
    #[arg(long, global = true, env = "SAFEGUARD_CONFIG")]
    config: Option<PathBuf>,
    /// Store directory (default: the config's store.path, else ./var/safeguard).
    #[arg(long, global = true, env = "SAFEGUARD_STORE")]
    store: Option<PathBuf>,
    /// Log format on stderr; the level comes from RUST_LOG (default info for watch, warn otherwise).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the configured sources until stopped (SIGINT/SIGTERM flush the store and exit).
    Watch {
        /// Listen for syslog on this address (UDP and TCP) instead of the configured sources.
        #[arg(long)]
        syslog: Vec<SocketAddr>,
        /// Follow this file (across rotation) instead of the configured sources.
        #[arg(long)]
        file: Vec<PathBuf>,
        /// Read standard input instead of the configured sources; exits when it closes.
        #[arg(long)]
        stdin: bool,
    },
    /// Backfill from archived syslog files (`-` for stdin); already applied lines are skipped.
    Ingest {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// One row per instance.
    Instances {
        /// Only deleted instances.
        #[arg(long)]
        deleted: bool,
        /// Only instances with an at-risk reason (no base backup, stale backup, WAL failing or silent).
        #[arg(long)]
        at_risk: bool,
        #[arg(long)]
        json: bool,
    },
    /// Everything recorded for one instance.
    Show {
        instance_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Check what the object store really holds for an instance (needs [s3] in the config).
    Verify {
        instance_id: String,
        /// Verify this prefix instead of the one recorded for the instance.
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The store's counters, sources and size.
    Status {
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, if matches!(cli.cmd, Cmd::Watch { .. }) { "info" } else { "warn" });
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let mut cfg = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let store_path = cli.store.clone().or_else(|| cfg.store.path.clone()).unwrap_or_else(|| PathBuf::from("./var/safeguard"));
    let cache = cfg.store.cache_mb * 1024 * 1024;
    let rules = cfg.risk_rules();
    let now = now_ms();

    match cli.cmd {
        Cmd::Watch { syslog, file, stdin } => {
            if !syslog.is_empty() || !file.is_empty() || stdin {
                cfg.sources = syslog.into_iter().map(|a| SourceConfig::Syslog { udp: Some(a), tcp: Some(a) }).collect();
                cfg.sources.extend(file.into_iter().map(|path| SourceConfig::File { path, follow: true }));
                if stdin {
                    cfg.sources.push(SourceConfig::Stdin);
                }
            }
            let store = Store::open(&store_path, cache)?;
            tracing::info!(store = %store_path.display(), "safeguard watch starting");
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let counters = rt.block_on(safeguard::watch::run(cfg, store, shutdown_signal()))?;
            tracing::info!("stopped; {}", report::counters_text(&counters));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ingest { files, json } => {
            let store = Store::open(&store_path, cache).context("ingest writes to the store directly")?;
            let s = safeguard::ingest::ingest(&store, cfg.engine(), &files)?;
            if json {
                print_json(&s)?;
            } else {
                println!("{}", report::counters_text(&s.counters));
                println!("{:.0} lines/s over {:.2}s", s.lines_per_second, s.seconds);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Instances { deleted, at_risk, json } => {
            let access = Access::open(&store_path, cache)?;
            let recs = access.records(&Filter { deleted, at_risk }, now, &rules)?;
            if json {
                let v: Vec<_> = recs.iter().map(|r| report::record_json(r, now, &rules)).collect();
                print_json(&v)?;
            } else {
                print!("{}", report::instances_table(&recs, now, &rules));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Show { instance_id, json } => {
            let access = Access::open(&store_path, cache)?;
            match access.record(&instance_id)? {
                Some(r) if json => print_json(&report::record_json(&r, now, &rules))?,
                Some(r) => print!("{}", report::record_text(&r, now, &rules)),
                None => {
                    eprintln!(
                        "error: no instance {instance_id} in the store at {}; list known ids with `safeguard instances`, or ingest older logs with `safeguard ingest`",
                        store_path.display()
                    );
                    return Ok(ExitCode::from(1));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify { instance_id, prefix, json } => {
            let s3 = cfg.s3.clone().context("verify needs an [s3] section in the config (endpoint, region, credentials)")?;
            let prefix = match prefix {
                Some(p) => p,
                None => {
                    let access = Access::open(&store_path, cache)?;
                    let rec = access.record(&instance_id)?.with_context(|| format!("no instance {instance_id} in the store; pass --prefix s3://bucket/backups/{instance_id}/wal/"))?;
                    rec.backup_prefix.with_context(|| format!("no backup prefix recorded for {instance_id} (no WAL-E line seen); pass --prefix"))?
                }
            };
            let url = safeguard::s3::S3Url::parse(&prefix)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let report = rt.block_on(async {
                let store = safeguard::s3::ObjectStore::connect(&s3)?;
                anyhow::Ok(safeguard::verify::verify(&store, &url).await)
            })?;
            if json {
                print_json(&report)?;
            } else {
                print!("{}", report.render_text());
            }
            Ok(if report.verdict.is_restorable() { ExitCode::SUCCESS } else { ExitCode::from(3) })
        }
        Cmd::Status { json } => {
            let access = Access::open(&store_path, cache)?;
            let st = access.status()?;
            if json {
                print_json(&st)?;
            } else {
                println!("store        {} (schema {}, {} bytes)", st.path.display(), st.schema_version.as_deref().unwrap_or("?"), st.size_bytes);
                println!("watcher      {}", if st.watcher_running { "running" } else { "not running" });
                println!("instances    {} ({} deleted)", st.instances, st.deleted);
                println!("lines        {}", report::counters_text(&st.counters));
                println!("events       {} applied, {} effects", st.counters.events_applied, st.counters.effects);
                for (id, p) in &st.positions {
                    println!("source       {id} {} at byte/offset {} ({})", p.name, p.offset, safeguard::timeutil::rfc3339(p.updated_at));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
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
