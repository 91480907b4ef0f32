//! The `recover` and `recoveries` subcommands (main.rs only dispatches here).
//!
//! Exit status: 0 done (or the plan printed in a dry run), 1 refused by a guard or not confirmed
//! (nothing changed), 2 an error or a failed step (resumable), 86 an injected test crash.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::exec::{crash_from_env, new_recovery, Runner};
use super::gather::{build, PlanEnv};
use super::journal::{running_elsewhere, Event, Journal, Recovery, RecoveryStatus, StepStatus};
use super::plan::{Plan, PlanRequest, TargetSpec};
use crate::adapters::etcd::Etcd;
use crate::adapters::s3::ObjectStore;
use crate::config::Config;
use crate::query::Access;
use crate::timeutil::{now_ms, parse_rfc3339, rfc3339};

#[derive(clap::Args, Debug, Clone)]
pub struct RecoverArgs {
    /// The deleted (source) instance whose backups are restored.
    #[arg(required_unless_present_any = ["resume", "abandon"])]
    pub instance_id: Option<String>,
    /// Recover into this instance, already created by the operator (solo plan).
    #[arg(long, conflicts_with_all = ["create", "to_prefix"])]
    pub into: Option<String>,
    /// Create the new instance through the platform, with the recorded name, org/space, solo plan.
    #[arg(long, conflicts_with = "to_prefix")]
    pub create: bool,
    /// Only clone the backups to this prefix (s3://bucket/path/), for restoring elsewhere.
    #[arg(long)]
    pub to_prefix: Option<String>,
    /// With --create: the space for the new instance (default: the recorded one).
    #[arg(long)]
    pub space_guid: Option<String>,
    /// With --create: the new instance's name (default: the recorded one).
    #[arg(long)]
    pub name: Option<String>,
    /// Recover to before this time (RFC 3339): the newest base backup completed before it, and WAL up
    /// to the segment in use then (segment-granular).
    #[arg(long)]
    pub before: Option<String>,
    /// Bind this app to the recovered instance afterwards (repeatable).
    #[arg(long = "bind-app")]
    pub bind_app: Vec<String>,
    /// Run the plan (otherwise it is only printed).
    #[arg(long)]
    pub execute: bool,
    /// Do not ask the operator to type the target id.
    #[arg(long)]
    pub yes: bool,
    /// Copy even when the source has no complete base backup.
    #[arg(long)]
    pub force: bool,
    /// Refuse a target prefix holding more objects than this (default: recover.max_target_objects).
    #[arg(long)]
    pub max_target_objects: Option<u64>,
    /// Objects copied at the same time (default: recover.concurrency).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Continue this recovery from its first unfinished step.
    #[arg(long, conflicts_with_all = ["instance_id", "abandon"])]
    pub resume: Option<String>,
    /// Give up this unfinished recovery and release its locks (changes nothing else).
    #[arg(long, conflicts_with = "instance_id")]
    pub abandon: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RecoveriesArgs {
    /// Show this recovery's steps and journal events.
    pub recovery_id: Option<String>,
    #[arg(long)]
    pub json: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Asks the operator to type `expect`. Reads one line from stdin.
fn confirm(what: &str, expect: &str) -> bool {
    eprint!("This changes {what}. Type {expect} to proceed: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(n) if n > 0 => line.trim() == expect,
        _ => false,
    }
}

fn steps_text(rec: &Recovery) -> String {
    let mut s = String::new();
    for st in &rec.steps {
        let status = match st.status {
            StepStatus::Pending => "pending",
            StepStatus::Running => "RUNNING (interrupted?)",
            StepStatus::Done => "done",
            StepStatus::Failed => "FAILED",
        };
        s.push_str(&format!("  {:<3} {:<12} {:<8} attempts {}", st.step.number(), st.step.as_str(), status, st.attempts));
        if let Some(sum) = &st.summary {
            s.push_str(&format!("  {sum}"));
        }
        if let Some(e) = &st.error {
            s.push_str(&format!("\n                   error: {e}"));
        }
        s.push('\n');
    }
    s
}

fn recovery_line(r: &Recovery) -> String {
    format!(
        "{}  {:<9} {:<7} {} -> {}  next {}  updated {}",
        r.id,
        r.status.as_str(),
        r.mode.as_str(),
        r.source_id,
        r.target_id.as_deref().or(r.target_prefix.as_deref()).unwrap_or("(to be created)"),
        r.next_step().map_or("-", |s| s.as_str()),
        rfc3339(r.updated_at)
    )
}

pub fn run_recover(cfg: &Config, store_path: &Path, cache_bytes: u64, args: RecoverArgs) -> Result<ExitCode> {
    let journal = Journal::for_store(store_path);
    if let Some(id) = &args.abandon {
        let (mut rec, _) =
            journal.load(id)?.with_context(|| format!("no recovery {id} in {}; list them with `safeguard recoveries`", journal.path().display()))?;
        if rec.status.finished() {
            bail!("recovery {id} already {}; nothing to abandon", rec.status.as_str());
        }
        if running_elsewhere(&rec) {
            bail!("recovery {id} is running right now (pid {}); stop that process first", rec.owner_pid);
        }
        rec.status = RecoveryStatus::Abandoned;
        journal.save(
            &mut rec,
            Some(Event { at: now_ms(), step: None, what: "abandoned".into(), detail: "by the operator; locks released; nothing undone".into() }),
        )?;
        if args.json {
            print_json(&rec)?;
        } else {
            println!("abandoned {id}; its locks are released. Nothing was undone: the steps done stay done:\n{}", steps_text(&rec));
        }
        return Ok(ExitCode::SUCCESS);
    }

    let s3cfg = cfg.s3.clone().context("recover needs an [s3] section in the config (endpoint, region, credentials) to read and copy backups")?;
    let s3 = ObjectStore::connect(&s3cfg)?;
    let platform = crate::adapters::platform::from_config(&cfg.platform, cfg.cloud_controller.as_ref())?;
    let etcd = cfg.etcd.as_ref().map(Etcd::new).transpose()?;
    let rt = runtime()?;
    let runner = Runner {
        journal: &journal,
        store_path: store_path.to_path_buf(),
        cache_bytes,
        s3: &s3,
        platform: platform.as_ref(),
        etcd: etcd.as_ref(),
        cfg: &cfg.recover,
        quiet: false,
        crash: crash_from_env(),
    };

    let (mut rec, plan) = if let Some(id) = &args.resume {
        let (rec, plan) =
            journal.load(id)?.with_context(|| format!("no recovery {id} in {}; list them with `safeguard recoveries`", journal.path().display()))?;
        if rec.status.finished() {
            bail!("recovery {id} already {}; nothing to resume", rec.status.as_str());
        }
        if running_elsewhere(&rec) {
            bail!("recovery {id} is running right now in pid {}; wait for it, or stop it and resume", rec.owner_pid);
        }
        if !args.json {
            println!("Resuming {}\n{}", recovery_line(&rec), steps_text(&rec));
        }
        let expect = rec.target_id.clone().or(rec.target_prefix.clone()).unwrap_or_else(|| rec.source_id.clone());
        if !args.yes && !confirm("the target again", &expect) {
            eprintln!("not confirmed; nothing changed");
            return Ok(ExitCode::from(1));
        }
        (rec, plan)
    } else {
        let source_id = args.instance_id.clone().context("the source instance id is required")?;
        let target = match (&args.into, args.create, &args.to_prefix) {
            (Some(t), _, _) => TargetSpec::Into { instance_id: t.clone() },
            (None, true, _) => TargetSpec::Create { name: args.name.clone(), space_guid: args.space_guid.clone() },
            (None, false, Some(p)) => TargetSpec::Prefix { url: p.clone() },
            (None, false, None) => bail!("say where to recover to: --into <new-instance-id> (created by you, solo plan), --create, or --to-prefix s3://..."),
        };
        let before = match &args.before {
            Some(b) => {
                let t = parse_rfc3339(b).with_context(|| format!("--before {b:?} is not an RFC 3339 time like 2016-03-17T06:00:00Z"))?;
                if t > now_ms() {
                    bail!("--before {b} is in the future");
                }
                Some(t)
            }
            None => None,
        };
        let req = PlanRequest {
            source_id,
            target,
            before,
            bind_apps: args.bind_app.clone(),
            force: args.force,
            max_target_objects: args.max_target_objects.unwrap_or(cfg.recover.max_target_objects),
            concurrency: args.concurrency.unwrap_or(cfg.recover.concurrency).max(1),
        };
        let plan: Plan = {
            // Access holds the main store while planning only (when no watcher runs).
            let access = Access::open(store_path, cache_bytes)?;
            let env = PlanEnv { access: &access, s3: &s3, platform: platform.as_ref(), etcd: etcd.as_ref(), cfg: &cfg.recover, now: now_ms() };
            rt.block_on(build(&req, &env))?
        };
        let header = if args.execute { "Recovery plan" } else { "Recovery plan (dry run: nothing changes; add --execute to run it)" };
        if args.json && (!args.execute || !plan.refusals.is_empty()) {
            print_json(&json!({"dry_run": !args.execute, "refused": !plan.refusals.is_empty(), "plan": plan}))?;
        } else if !args.json {
            print!("{}", plan.render_text(header));
        }
        if !plan.refusals.is_empty() {
            eprintln!("refused: {} guard(s) failed (see REFUSED above); nothing changed", plan.refusals.len());
            return Ok(ExitCode::from(1));
        }
        if !args.execute {
            return Ok(ExitCode::SUCCESS);
        }
        let (what, expect) = match &plan.target_spec {
            TargetSpec::Into { instance_id } => (format!("instance {instance_id} (its backups, etcd keys and data are replaced)"), instance_id.clone()),
            TargetSpec::Create { .. } => ("the platform (a new instance is created and filled)".to_string(), plan.source.instance_id.clone()),
            TargetSpec::Prefix { .. } => ("the target prefix (its objects are replaced)".to_string(), plan.target.prefix.clone().unwrap_or_default()),
        };
        if !args.yes {
            if !std::io::stdin().is_terminal() {
                eprintln!("(stdin is not a terminal: reading the confirmation from it; pass --yes in scripts)");
            }
            if !confirm(&what, &expect) {
                eprintln!("not confirmed; nothing changed");
                return Ok(ExitCode::from(1));
            }
        }
        let rec = new_recovery(&plan);
        journal.create(&rec, &plan)?;
        eprintln!("recovery {} started; journal {}", rec.id, journal.path().display());
        (rec, plan)
    };

    let res = rt.block_on(runner.run(&mut rec, &plan));
    if args.json {
        print_json(&json!({"recovery": rec, "plan": plan}))?;
    } else {
        println!("Recovery {} {}\n{}", rec.id, rec.status.as_str(), steps_text(&rec));
    }
    match res {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(2))
        }
    }
}

pub fn run_recoveries(store_path: &Path, args: RecoveriesArgs) -> Result<ExitCode> {
    let journal = Journal::for_store(store_path);
    match &args.recovery_id {
        Some(id) => {
            let (rec, plan) = journal.load(id)?.with_context(|| format!("no recovery {id} in {}", journal.path().display()))?;
            let events = journal.events(id)?;
            if args.json {
                print_json(&json!({"recovery": rec, "plan": plan, "events": events}))?;
            } else {
                println!("{}", recovery_line(&rec));
                println!("  source {}  target {}", rec.source_prefix, rec.target_prefix.as_deref().unwrap_or("?"));
                if let (Some(c), Some(h)) = (&rec.target_container, &rec.target_host) {
                    println!("  target container {c} on cell {h}");
                }
                print!("{}", steps_text(&rec));
                println!("Journal");
                for e in &events {
                    println!("  {} {:<12} {:<9} {}", rfc3339(e.at), e.step.map_or("-", |s| s.as_str()), e.what, e.detail);
                }
            }
        }
        None => {
            let list = journal.list()?;
            let locks = journal.locks()?;
            if args.json {
                print_json(&json!({"recoveries": list, "locks": locks.iter().map(|(r, h)| json!({"resource": r, "recovery": h})).collect::<Vec<_>>()}))?;
            } else if list.is_empty() {
                println!("no recoveries in {}", journal.path().display());
            } else {
                for r in &list {
                    println!("{}", recovery_line(r));
                }
                for (r, h) in &locks {
                    println!("lock {r} held by {h}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
