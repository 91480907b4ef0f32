//! The `safeguard` command line. Thin: parses arguments, loads the config, and hands each command to its
//! module in `cmd/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use safeguard::app::config::Config;
use safeguard::timeutil::now_ms;

/// Standard output, for every module declared below: these shadow std's `print!` and `println!` (a
/// `macro_rules!` in scope wins over the prelude), so each print in `cmd/`, including ones written later,
/// goes through [`cmd::out`], which ends output quietly when the reader has gone
/// (`safeguard instances | head -1`) instead of panicking as std's do.
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::cmd::out(format_args!($($arg)*))
    };
}

/// See [`print!`].
macro_rules! println {
    () => {
        $crate::cmd::out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cmd::out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod cmd;
use cmd::Ctx;

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
        /// Files, directories (read recursively; hidden entries skipped) or `-` for stdin. gzip, zstd, xz
        /// and bzip2 are recognised by their content. All inputs are merged into one time-ordered stream.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
        /// No progress bar (it is drawn only when stderr is a terminal).
        #[arg(long, short)]
        quiet: bool,
        /// Report a file whose lines go back in time by more than this.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        max_backwards: std::time::Duration,
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
        /// Every alert the outbox retains (`alerts.retention`), not only those pending, failed or raised
        /// in the last 7 days.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// The store's counters, sources and size.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Recover a deleted instance from its backups (plan only unless --execute); see docs/recover.md.
    Recover(Box<cmd::recover::RecoverArgs>),
    /// List recoveries from the journal, or show one with its steps and events.
    Recoveries(cmd::recover::RecoveriesArgs),
    /// Reports over the store and the object store.
    Report {
        #[command(subcommand)]
        what: ReportWhat,
    },
    /// The store's own backups in the object store: `store backup`, `store backups`, `store restore`.
    Store {
        #[command(subcommand)]
        action: cmd::store::StoreCmd,
    },
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
enum ReportWhat {
    /// Every deleted instance with what its backups still hold in the object store (listed) and what
    /// that costs a month ([report] price_per_gib_month); totals last. Read only. Needs [s3].
    Deleted {
        /// Only instances deleted at least this long ago (e.g. 30d).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Subcommand)]
enum AlertsAction {
    /// Requeue an alert (typically a failed one) for delivery now.
    Retry { id: String },
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Every event passes the redaction on its way to stderr: a URL or an error text logged by any
    // module, or by a library, shows no credentials.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(|| safeguard::redact::Writer(std::io::stderr()));
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> ExitCode {
    safeguard::memory::limit_arenas();
    let cli = Cli::parse();
    init_logging(cli.log_format, if matches!(cli.cmd, Cmd::Watch { .. }) { "info" } else { "warn" });
    match run(cli) {
        Ok(code) => match cmd::finish_stdout() {
            Ok(()) => code,
            Err(e) => {
                eprintln!("error: cannot write to standard output: {e}");
                ExitCode::from(2)
            }
        },
        Err(e) => {
            // `error_chain`, not anyhow's `{:#}`: a source the message already quotes (the io::Error in
            // "cannot read the config file x: No such file ...") is not printed twice, and it is redacted.
            let e: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("error: {}", safeguard::error_chain(e));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let cfg = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let ctx = Ctx {
        config_label: cli.config.as_ref().map_or_else(|| "none (built-in defaults)".into(), |p| p.display().to_string()),
        store_path: cli.store.clone().or_else(|| cfg.store.path.clone()).unwrap_or_else(|| PathBuf::from("./var/safeguard")),
        cache: cfg.store.cache_bytes(),
        rules: cfg.risk_rules(),
        now: now_ms(),
        cfg,
    };
    match cli.cmd {
        Cmd::Watch { syslog, file, stdin } => cmd::watch::run(ctx, syslog, file, stdin),
        Cmd::Ingest { files, json, quiet, max_backwards, year } => cmd::ingest::run(ctx, cmd::ingest::Args { files, json, year, max_backwards, quiet }),
        Cmd::Instances { deleted, at_risk, json } => cmd::query::instances(ctx, deleted, at_risk, json),
        Cmd::Show { instance_id, json } => cmd::query::show(ctx, instance_id, json),
        Cmd::Verify { instance_id, prefix, json } => cmd::verify::run(ctx, instance_id, prefix, json),
        Cmd::Alerts { action: Some(AlertsAction::Retry { id }), json, .. } => cmd::query::retry_alert(ctx, id, json),
        Cmd::Alerts { action: None, pending, failed, all, json } => cmd::query::alerts(ctx, pending, failed, all, json),
        Cmd::Status { json } => cmd::query::status(ctx, json),
        Cmd::Recover(args) => cmd::recover::run(ctx, *args),
        Cmd::Recoveries(args) => cmd::recover::recoveries(ctx, args),
        Cmd::Store { action } => cmd::store::run(ctx, action),
        Cmd::Doctor { timeout, json } => cmd::doctor::run(ctx, timeout, json),
        Cmd::Report { what: ReportWhat::Deleted { older_than, json, csv } } => cmd::report::deleted(ctx, older_than, json, csv),
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

/// Writes generated text through [`cmd::write_raw`]; a closed pipe (`safeguard man | head`) is not an error.
fn write_stdout(bytes: &[u8]) -> Result<ExitCode> {
    cmd::write_raw(bytes);
    Ok(ExitCode::SUCCESS)
}
