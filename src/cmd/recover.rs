//! `safeguard recover` and `safeguard recoveries`: arguments, the operator's confirmation, and the
//! output; the library's `recover` module plans (gather, then the pure plan) and executes.
//!
//! Exit status: 0 done (or the plan printed in a dry run), 1 refused by a guard or not confirmed
//! (nothing changed), 2 an error or a failed step (resumable), 86 an injected test crash.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use safeguard::adapters::etcd::Etcd;
use safeguard::adapters::platform::Platform;
use safeguard::adapters::s3::ObjectStore;
use safeguard::query::Access;
use safeguard::recover::exec::{crash_from_env, new_recovery, Runner};
use safeguard::recover::gather::{build, PlanEnv};
use safeguard::recover::journal::{running_elsewhere, Event, Journal, Recovery, RecoveryStatus, StepStatus};
use safeguard::recover::plan::{Plan, PlanRequest, TargetSpec};
use safeguard::timeutil::{now_ms, parse_rfc3339, rfc3339};
use serde_json::json;

use super::{print_json, Ctx};

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

/// What a recovery acts through: built once the command knows it will plan or run steps.
struct Connections {
    s3: ObjectStore,
    platform: Box<dyn Platform>,
    etcd: Option<Etcd>,
    rt: tokio::runtime::Runtime,
}

impl Connections {
    fn open(ctx: &Ctx) -> Result<Connections> {
        let s3cfg = ctx.cfg.s3.clone().context("recover needs an [s3] section in the config (endpoint, region, credentials) to read and copy backups")?;
        Ok(Connections {
            s3: ObjectStore::connect(&s3cfg)?,
            platform: safeguard::adapters::platform::from_config(&ctx.cfg.platform, ctx.cfg.cloud_controller.as_ref())?,
            etcd: ctx.cfg.etcd.as_ref().map(Etcd::new).transpose()?,
            rt: tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?,
        })
    }
}

/// After the plan or the resume prompt: run these steps, or stop here with this status.
enum Next {
    Run(Box<(Recovery, Plan)>),
    Exit(ExitCode),
}

pub fn run(ctx: Ctx, args: RecoverArgs) -> Result<ExitCode> {
    let journal = Journal::for_store(&ctx.store_path);
    if let Some(id) = &args.abandon {
        return abandon(&journal, id, args.json);
    }
    let conn = Connections::open(&ctx)?;
    let next = match &args.resume {
        Some(id) => resume(&journal, id, &args)?,
        None => start(&ctx, &journal, &conn, &args)?,
    };
    match next {
        Next::Run(started) => {
            let (rec, plan) = *started;
            execute(&ctx, &journal, &conn, rec, &plan, args.json)
        }
        Next::Exit(code) => Ok(code),
    }
}

/// `--abandon <id>`: gives up an unfinished recovery and releases its locks; undoes nothing.
fn abandon(journal: &Journal, id: &str, json: bool) -> Result<ExitCode> {
    let (mut rec, _) = load(journal, id)?;
    if rec.status.finished() {
        bail!("recovery {id} already {}; nothing to abandon", rec.status.as_str());
    }
    if running_elsewhere(&rec) {
        bail!("recovery {id} is running right now (pid {}); stop that process first", rec.owner_pid);
    }
    rec.status = RecoveryStatus::Abandoned;
    journal
        .save(&mut rec, Some(Event { at: now_ms(), step: None, what: "abandoned".into(), detail: "by the operator; locks released; nothing undone".into() }))?;
    if json {
        print_json(&rec)?;
    } else {
        println!("abandoned {id}; its locks are released. Nothing was undone: the steps done stay done:\n{}", steps_text(&rec));
    }
    Ok(ExitCode::SUCCESS)
}

fn load(journal: &Journal, id: &str) -> Result<(Recovery, Plan)> {
    journal.load(id)?.with_context(|| format!("no recovery {id} in {}; list them with `safeguard recoveries`", journal.path().display()))
}

/// `--resume <id>`: the recovery and its approved plan, once the operator confirms the target again.
fn resume(journal: &Journal, id: &str, args: &RecoverArgs) -> Result<Next> {
    let (rec, plan) = load(journal, id)?;
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
        return Ok(Next::Exit(ExitCode::from(1)));
    }
    Ok(Next::Run(Box::new((rec, plan))))
}

/// A new recovery: plan, show, stop on a refusal or a dry run, else confirm and journal it.
fn start(ctx: &Ctx, journal: &Journal, conn: &Connections, args: &RecoverArgs) -> Result<Next> {
    let req = request(ctx, args)?;
    let plan = make_plan(ctx, conn, &req)?;
    show_plan(&plan, args)?;
    if !plan.refusals.is_empty() {
        eprintln!("refused: {} guard(s) failed (see REFUSED above); nothing changed", plan.refusals.len());
        return Ok(Next::Exit(ExitCode::from(1)));
    }
    if !args.execute {
        return Ok(Next::Exit(ExitCode::SUCCESS));
    }
    if !args.yes && !approve(&plan) {
        eprintln!("not confirmed; nothing changed");
        return Ok(Next::Exit(ExitCode::from(1)));
    }
    let rec = new_recovery(&plan);
    journal.create(&rec, &plan)?;
    eprintln!("recovery {} started; journal {}", rec.id, journal.path().display());
    Ok(Next::Run(Box::new((rec, plan))))
}

/// What the operator asked for, from the arguments and the config's defaults.
fn request(ctx: &Ctx, args: &RecoverArgs) -> Result<PlanRequest> {
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
    let cfg = &ctx.cfg.recover;
    Ok(PlanRequest {
        source_id,
        target,
        before,
        bind_apps: args.bind_app.clone(),
        force: args.force,
        max_target_objects: args.max_target_objects.unwrap_or(cfg.max_target_objects),
        concurrency: args.concurrency.unwrap_or(cfg.concurrency).max(1),
    })
}

/// Gathers (store, S3) and plans. The main store is held while planning only (when no watcher runs).
fn make_plan(ctx: &Ctx, conn: &Connections, req: &PlanRequest) -> Result<Plan> {
    let access = Access::open(&ctx.store_path, ctx.cache)?;
    let env = PlanEnv { access: &access, s3: &conn.s3, platform: conn.platform.as_ref(), etcd: conn.etcd.as_ref(), cfg: &ctx.cfg.recover, now: now_ms() };
    Ok(conn.rt.block_on(build(req, &env))?)
}

fn show_plan(plan: &Plan, args: &RecoverArgs) -> Result<()> {
    let refused = !plan.refusals.is_empty();
    if args.json && (!args.execute || refused) {
        print_json(&json!({"dry_run": !args.execute, "refused": refused, "plan": plan}))?;
    } else if !args.json {
        let header = if args.execute { "Recovery plan" } else { "Recovery plan (dry run: nothing changes; add --execute to run it)" };
        print!("{}", plan.render_text(header));
    }
    Ok(())
}

/// The operator types the target to approve a plan.
fn approve(plan: &Plan) -> bool {
    let (what, expect) = match &plan.target_spec {
        TargetSpec::Into { instance_id } => (format!("instance {instance_id} (its backups, etcd keys and data are replaced)"), instance_id.clone()),
        TargetSpec::Create { .. } => ("the platform (a new instance is created and filled)".to_string(), plan.source.instance_id.clone()),
        TargetSpec::Prefix { .. } => ("the target prefix (its objects are replaced)".to_string(), plan.target.prefix.clone().unwrap_or_default()),
    };
    if !std::io::stdin().is_terminal() {
        eprintln!("(stdin is not a terminal: reading the confirmation from it; pass --yes in scripts)");
    }
    confirm(&what, &expect)
}

/// Runs the steps and reports the recovery; a failed step is status 2 (resumable).
fn execute(ctx: &Ctx, journal: &Journal, conn: &Connections, mut rec: Recovery, plan: &Plan, json: bool) -> Result<ExitCode> {
    let runner = Runner {
        journal,
        store_path: ctx.store_path.clone(),
        cache_bytes: ctx.cache,
        s3: &conn.s3,
        platform: conn.platform.as_ref(),
        etcd: conn.etcd.as_ref(),
        cfg: &ctx.cfg.recover,
        quiet: false,
        crash: crash_from_env(),
    };
    let res = conn.rt.block_on(runner.run(&mut rec, plan));
    if json {
        print_json(&json!({"recovery": rec, "plan": plan}))?;
    } else {
        println!("Recovery {} {}\n{}", rec.id, rec.status.as_str(), steps_text(&rec));
    }
    match res {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {}", safeguard::error_chain(&e));
            Ok(ExitCode::from(2))
        }
    }
}

/// `safeguard recoveries [<id>]`.
pub fn recoveries(ctx: Ctx, args: RecoveriesArgs) -> Result<ExitCode> {
    let journal = Journal::for_store(&ctx.store_path);
    match &args.recovery_id {
        Some(id) => show_recovery(&journal, id, args.json)?,
        None => list_recoveries(&journal, args.json)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn show_recovery(journal: &Journal, id: &str, json: bool) -> Result<()> {
    let (rec, plan) = journal.load(id)?.with_context(|| format!("no recovery {id} in {}", journal.path().display()))?;
    let events = journal.events(id)?;
    if json {
        return print_json(&json!({"recovery": rec, "plan": plan, "events": events}));
    }
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
    Ok(())
}

fn list_recoveries(journal: &Journal, json: bool) -> Result<()> {
    let list = journal.list()?;
    let locks = journal.locks()?;
    if json {
        return print_json(&json!({"recoveries": list, "locks": locks.iter().map(|(r, h)| json!({"resource": r, "recovery": h})).collect::<Vec<_>>()}));
    }
    if list.is_empty() {
        println!("no recoveries in {}", journal.path().display());
        return Ok(());
    }
    for r in &list {
        println!("{}", recovery_line(r));
    }
    for (r, h) in &locks {
        println!("lock {r} held by {h}");
    }
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
