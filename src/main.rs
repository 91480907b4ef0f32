//! The `safeguard` command line. Thin: parses arguments, loads config, calls the library, prints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

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
        /// The year of each file's first RFC 3164 line (they carry none); later lines roll over from it.
        /// Without it, years come from times the lines carry, else from the file's modification time.
        #[arg(long, value_parser = clap::value_parser!(i64).range(1970..=9999))]
        year: Option<i64>,
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
    /// Alerts and their delivery state; `alerts retry <id>` requeues one.
    Alerts {
        #[command(subcommand)]
        action: Option<AlertsAction>,
        /// Only alerts still to be delivered.
        #[arg(long)]
        pending: bool,
        /// Only alerts whose delivery failed for good.
        #[arg(long)]
        failed: bool,
        #[arg(long)]
        json: bool,
    },
    /// The store's counters, sources and size.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Recover a deleted instance from its backups (plan only unless --execute); see docs/recover.md.
    Recover(Box<safeguard::recover::cli::RecoverArgs>),
    /// List recoveries from the journal, or show one with its steps and events.
    Recoveries(safeguard::recover::cli::RecoveriesArgs),
    /// Check every configured connection (store, Kafka, S3, etcd, SMTP, webhook, Cloud Controller,
    /// HTTP endpoint) with the same kind of call the real work makes; exit 1 if any fails.
    Doctor {
        /// Bound on each check.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script, e.g. `safeguard completions bash > /etc/bash_completion.d/safeguard`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `safeguard man > /usr/local/share/man/man1/safeguard.1`.
    Man,
}

#[derive(Subcommand)]
enum AlertsAction {
    /// Requeue an alert (typically a failed one) for delivery now.
    Retry { id: String },
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_writer(std::io::stderr);
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
            let store = Store::open_waiting(&store_path, cache, std::time::Duration::from_secs(5))?;
            tracing::info!(store = %store_path.display(), "safeguard watch starting");
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let counters = rt.block_on(safeguard::engine::watch::run(cfg, store, shutdown_signal()))?;
            tracing::info!("stopped; {}", report::counters_text(&counters));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ingest { files, json, year } => {
            let store = Store::open_waiting(&store_path, cache, std::time::Duration::from_secs(5)).context("ingest writes to the store directly")?;
            let opts = safeguard::sources::file::StreamOptions { year };
            let s = safeguard::engine::ingest::ingest_with(&store, cfg.engine(), &files, opts)?;
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
        Cmd::Alerts { action, pending, failed, json } => {
            let access = Access::open(&store_path, cache)?;
            if let Some(AlertsAction::Retry { id }) = action {
                return match access.retry_alert(&id)? {
                    Some(a) => {
                        if json {
                            print_json(&a)?;
                        } else {
                            println!("requeued {}; a running watcher delivers it within seconds", a.id);
                        }
                        Ok(ExitCode::SUCCESS)
                    }
                    None => {
                        eprintln!("error: no alert {id}; list them with `safeguard alerts`");
                        Ok(ExitCode::from(1))
                    }
                };
            }
            let alerts: Vec<_> = access
                .alerts()?
                .into_iter()
                .filter(|a| !pending || a.state == safeguard::alerts::Delivery::Pending)
                .filter(|a| !failed || a.state == safeguard::alerts::Delivery::Failed)
                .collect();
            if json {
                print_json(&alerts)?;
            } else {
                print!("{}", report::alerts_table(&alerts));
            }
            Ok(ExitCode::SUCCESS)
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
                println!(
                    "waiting      {} line(s) wait for the line that names their instance; {} given up so far ([watch] parked_max, parked_ttl)",
                    st.counters.lines_parked, st.counters.lines_expired_unattributed
                );
                for (id, p) in &st.positions {
                    println!("source       {id} {} at byte/offset {} ({})", p.name, p.offset, safeguard::timeutil::rfc3339(p.updated_at));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Recover(args) => safeguard::recover::cli::run_recover(&cfg, &store_path, cache, *args),
        Cmd::Recoveries(args) => safeguard::recover::cli::run_recoveries(&store_path, args),
        Cmd::Doctor { timeout, json } => {
            let config_label = match &cli.config {
                Some(p) => p.display().to_string(),
                None => "none (built-in defaults)".into(),
            };
            let opts = safeguard::doctor::Options { config_label, store_path: store_path.clone(), cache_bytes: cache, timeout };
            let report = safeguard::doctor::run_blocking(&cfg, &opts)?;
            if json {
                print_json(&report)?;
            } else {
                print!("{}", report.render_text());
            }
            Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Cmd::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "safeguard", &mut out);
            write_stdout(&out)
        }
        Cmd::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            write_stdout(&out)
        }
    }
}

/// Writes generated text; a closed pipe (`safeguard man | head`) is not an error.
fn write_stdout(bytes: &[u8]) -> Result<ExitCode> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
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
