//! Running a plan's steps, each recorded in the journal before and after it runs. Every step is
//! idempotent, so `--resume` simply runs the first step that is not done:
//!
//! - source: re-lists the source and checks the planned objects are still there (read only).
//! - target: `--create` records the new id as soon as the platform returns it; a rerun after a crash
//!   in between adopts the instance of that name. Then waits for the container and cell in the store.
//! - stop / flush / start: the platform's operations are idempotent (stopped stays stopped...).
//! - clear_target: the guards run on the first attempt, which journals the exact keys it will delete
//!   before deleting; a rerun deletes only keys from that list and refuses if others appeared.
//! - copy: skips objects already in the target with the source's size, so a rerun copies only the rest;
//!   objects in the target outside the copy set stop it. Sentinels go last, in source order.
//! - verify_copy: read only. etcd: deleting an absent key is reported, not an error.
//! - start journals the restore counters it saw before starting, so confirm (read only) waits for a
//!   newer restore even when resumed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use humantime::format_duration;
use serde_json::{json, Value};

use super::journal::{Event, Journal, JournalError, Recovery, RecoveryStatus, StepRecord, StepStatus};
use super::plan::{container_of, sibling_prefix, Plan, Selection, TargetSpec};
use super::progress::ProgressDisplay;
use super::{keys, RecoverConfig, StepId};
use crate::adapters::etcd::{recovery_keys, DeleteOutcome, Etcd, EtcdError};
use crate::adapters::platform::{ContainerRef, CreateRequest, Platform, PlatformError};
use crate::adapters::s3::{CopyItem, CopyOptions, ObjectStore, S3Error, S3Url, S3UrlError, SourcePrefix, TargetPrefix, TransferProgress};
use crate::query::{Access, QueryError};
use crate::timeutil::{now_ms, rfc3339};
use crate::verify::{analyze, human_bytes};

/// Why a step, or the run of a recovery, failed. Each message says what failed on what; a failed step
/// is wrapped in [`ExecError::Step`], which adds how to resume or give up.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Store(#[from] QueryError),
    #[error(transparent)]
    S3(Box<S3Error>),
    #[error(transparent)]
    Url(#[from] S3UrlError),
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("step {number} ({step}) of recovery {id} failed: {cause}\nNothing after it ran. Fix the cause, then `safeguard recover --resume {id}` continues from this step (or `safeguard recover --abandon {id}` gives it up)")]
    Step { number: &'static str, step: &'static str, id: String, cause: String },
    #[error("no target {what} recorded (step 2 did not finish?)")]
    TargetUnknown { what: &'static str },
    #[error("a --to-prefix recovery has no target instance")]
    NoTargetInstance,
    #[error("no {what} for the new instance in the plan; abandon this recovery and plan again with --{flag}")]
    CreateIncomplete { what: &'static str, flag: &'static str },
    #[error("the name {name:?} is taken in space {space} but no instance of that name was found; check the space in the Cloud Controller, then resume")]
    NameTakenNotFound { name: String, space: String },
    #[error("the container and cell of {tid} were not seen within {wait}: {seen}. Check that the watcher receives the broker's and the cells' syslog (`safeguard status`, `safeguard show {tid}`), then resume")]
    TargetNotSeen { tid: String, wait: String, seen: String },
    #[error("the source {url} changed since the plan was made: {count} planned object(s) are gone or changed size (e.g. {examples}); WAL-E retention may have deleted them. Abandon this recovery and plan again")]
    SourceChanged { url: S3Url, count: usize, examples: String },
    #[error("the source has no complete base backup and --force was not given; abandon this recovery and plan again (with --force to copy it anyway)")]
    NoCompleteBackup,
    #[error("new objects appeared in {url} since this step first listed it ({count} e.g. {examples}): something writes there. Check the target container is stopped and the target id is right")]
    TargetWritten { url: S3Url, count: usize, examples: String },
    #[error("refused: the target {url} holds complete base backup(s) {backups}; it is not a fresh instance. Nothing was deleted; check the target id")]
    TargetHasBackups { url: S3Url, backups: String },
    #[error("refused: the target {url} holds {count} objects, more than the bound of {bound}; nothing was deleted. Check the target id (raise --max-target-objects only if you are sure)")]
    TargetTooFull { url: S3Url, count: usize, bound: u64 },
    #[error("the target {url} holds {count} object(s) that are not part of this copy (e.g. {examples}): something else writes there. Check the target container is stopped; nothing was copied")]
    ForeignObjects { url: S3Url, count: usize, examples: String },
    #[error(transparent)]
    CopyMismatch(Box<CopyMismatch>),
    #[error(
        "the target's latest complete base backup is {found:?}, not the chosen {chosen}: a restore would use the wrong one; resume to copy the sentinels again"
    )]
    WrongLatest { found: Option<String>, chosen: String },
    #[error("no [etcd] section in the config; add [etcd] url = \"http://<etcd>:4001\", then resume")]
    NoEtcd,
    #[error(transparent)]
    RestoreNotSeen(Box<RestoreNotSeen>),
    #[error(
        "the journal's record of step {step} holds an unreadable {key}: {cause}; abandon this recovery with `safeguard recover --abandon {id}` and plan again"
    )]
    CorruptOutput { step: &'static str, key: &'static str, id: String, cause: String },
}

impl From<S3Error> for ExecError {
    fn from(e: S3Error) -> Self {
        ExecError::S3(Box::new(e))
    }
}

/// Step 4c: the target is not the copied set.
#[derive(Debug, thiserror::Error)]
#[error("the target {url} does not match the copy: {missing} missing (e.g. {missing_example}), {extra} unexpected (e.g. {extra_example}), {resized} with another size (e.g. {resized_example}); resume to copy again")]
pub struct CopyMismatch {
    pub url: S3Url,
    pub missing: usize,
    pub missing_example: String,
    pub extra: usize,
    pub extra_example: String,
    pub resized: usize,
    pub resized_example: String,
}

/// Step 8: the restore did not show in the stream in time.
#[derive(Debug, thiserror::Error)]
#[error("within {wait} the stream showed for {tid}: `preparing patroni to restore this container from wal-e backups`: {preparing}; completed wal-fetch: {fetched}. {hint}Check the container's log on cell {host} (`docker logs {container}`) and its etcd keys; then `safeguard recover --resume {id}` waits again")]
pub struct RestoreNotSeen {
    pub wait: String,
    pub tid: String,
    pub preparing: &'static str,
    pub fetched: u64,
    pub hint: &'static str,
    pub host: String,
    pub container: String,
    pub id: String,
}

/// Up to three examples, for a message.
fn examples<'a>(it: impl IntoIterator<Item = &'a str>) -> String {
    it.into_iter().take(3).collect::<Vec<_>>().join(", ")
}

/// Exit status of an injected crash.
pub const CRASH_EXIT: i32 = 86;

/// Test-only crash injection from `SAFEGUARD_RECOVER_CRASH` (see the module docs of `recover`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    After(StepId),
    CopyObjects(u64),
}

pub fn crash_from_env() -> Option<Crash> {
    let v = std::env::var("SAFEGUARD_RECOVER_CRASH").ok()?;
    let (k, a) = v.split_once(':')?;
    match k {
        "after" => StepId::parse(a).map(Crash::After),
        "copy" => a.parse().ok().map(Crash::CopyObjects),
        _ => None,
    }
}

/// A new recovery record for an approved plan: every planned step pending, locks on both sides.
pub fn new_recovery(plan: &Plan) -> Recovery {
    let now = now_ms();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let stamp: String = rfc3339(now).chars().filter(|c| c.is_ascii_digit()).take(14).collect();
    let short: String = plan.source.instance_id.chars().take(8).collect();
    let id = format!("r{stamp}-{short}-{:04x}", (nanos ^ std::process::id()) & 0xffff);
    let mut locks = vec![keys::instance_resource(&plan.source.instance_id)];
    let mut target_prefix = None;
    match &plan.target_spec {
        TargetSpec::Into { instance_id } => {
            locks.push(keys::instance_resource(instance_id));
            target_prefix = plan.target.prefix.clone();
        }
        TargetSpec::Prefix { .. } => {
            if let Some(p) = plan.target.prefix.as_deref().and_then(|p| S3Url::parse(p).ok()) {
                locks.push(keys::prefix_resource(&p));
                target_prefix = Some(p.to_string());
            }
        }
        TargetSpec::Create { .. } => {}
    }
    Recovery {
        id,
        status: RecoveryStatus::Running,
        created_at: now,
        updated_at: now,
        mode: plan.mode,
        source_id: plan.source.instance_id.clone(),
        source_prefix: plan.source.prefix.clone(),
        target_id: plan.target.instance_id.clone(),
        target_prefix,
        target_container: plan.target.container.clone(),
        target_host: plan.target.host.clone(),
        owner_pid: std::process::id(),
        locks,
        steps: plan
            .steps
            .iter()
            .map(|s| StepRecord {
                step: s.step,
                status: StepStatus::Pending,
                attempts: 0,
                started_at: None,
                finished_at: None,
                summary: None,
                output: Value::Null,
                error: None,
            })
            .collect(),
        last_error: None,
    }
}

pub struct Runner<'a> {
    pub journal: &'a Journal,
    pub store_path: PathBuf,
    pub cache_bytes: u64,
    pub s3: &'a ObjectStore,
    pub platform: &'a dyn Platform,
    pub etcd: Option<&'a Etcd>,
    pub cfg: &'a RecoverConfig,
    /// No progress display (still logs step lines on stderr).
    pub quiet: bool,
    pub crash: Option<Crash>,
}

type StepResult = Result<(String, Value), ExecError>;

fn ev(step: StepId, what: &str, detail: String) -> Option<Event> {
    Some(Event { at: now_ms(), step: Some(step), what: what.into(), detail })
}

impl Runner<'_> {
    fn access(&self) -> Result<Access, ExecError> {
        Ok(Access::open(&self.store_path, self.cache_bytes)?)
    }

    /// Saves part of a step's output while it runs (what it is about to do), so a rerun knows.
    fn save_output(&self, rec: &mut Recovery, step: StepId, key: &str, v: Value) -> Result<(), ExecError> {
        if let Some(s) = rec.step_mut(step) {
            if !s.output.is_object() {
                s.output = json!({});
            }
            s.output[key] = v;
        }
        self.journal.save(rec, ev(step, "note", format!("recorded {key} before acting")))?;
        Ok(())
    }

    /// Runs every step not yet done, in order. On failure the recovery is left `failed` and resumable.
    pub async fn run(&self, rec: &mut Recovery, plan: &Plan) -> Result<(), ExecError> {
        let resumed = rec.steps.iter().any(|s| s.attempts > 0);
        rec.status = RecoveryStatus::Running;
        rec.owner_pid = std::process::id();
        rec.last_error = None;
        let what = if resumed { "resumed" } else { "started" };
        let detail = format!("{what} by pid {} at step {}", rec.owner_pid, rec.next_step().map_or("-", |s| s.as_str()));
        self.journal.save(rec, Some(Event { at: now_ms(), step: None, what: what.into(), detail }))?;
        while let Some(step) = rec.next_step() {
            {
                let s = rec.step_mut(step).expect("planned step");
                s.status = StepStatus::Running;
                s.attempts += 1;
                s.started_at = Some(now_ms());
                s.finished_at = None;
                s.error = None;
            }
            let attempt = rec.step(step).map_or(1, |s| s.attempts);
            self.journal.save(rec, ev(step, "started", format!("attempt {attempt}")))?;
            eprintln!("[{} {}] {}", step.number(), step.as_str(), plan.steps.iter().find(|s| s.step == step).map_or("", |s| s.title.as_str()));
            let res = self.run_step(step, rec, plan).await;
            match res {
                Ok((summary, output)) => {
                    let summary = crate::redact::text(&summary);
                    let s = rec.step_mut(step).expect("planned step");
                    s.status = StepStatus::Done;
                    s.finished_at = Some(now_ms());
                    s.summary = Some(summary.clone());
                    s.output = output;
                    self.journal.save(rec, ev(step, "done", summary.clone()))?;
                    eprintln!("[{} {}] done: {summary}", step.number(), step.as_str());
                    if self.crash == Some(super::exec::Crash::After(step)) {
                        eprintln!("SAFEGUARD_RECOVER_CRASH: exiting after step {} (test crash injection)", step.as_str());
                        std::process::exit(CRASH_EXIT);
                    }
                }
                Err(e) => {
                    // Journaled, printed and shown by `recoveries`: redacted like every error text.
                    let msg = crate::redact::text(&e.to_string());
                    let s = rec.step_mut(step).expect("planned step");
                    s.status = StepStatus::Failed;
                    s.finished_at = Some(now_ms());
                    s.error = Some(msg.clone());
                    rec.status = RecoveryStatus::Failed;
                    rec.last_error = Some(format!("step {} {}: {msg}", step.number(), step.as_str()));
                    self.journal.save(rec, ev(step, "failed", msg.clone()))?;
                    return Err(ExecError::Step { number: step.number(), step: step.as_str(), id: rec.id.clone(), cause: msg });
                }
            }
        }
        rec.status = RecoveryStatus::Succeeded;
        self.journal.save(rec, Some(Event { at: now_ms(), step: None, what: "succeeded".into(), detail: "every step done; locks released".into() }))?;
        Ok(())
    }

    async fn run_step(&self, step: StepId, rec: &mut Recovery, plan: &Plan) -> StepResult {
        match step {
            StepId::Source => self.source(plan).await,
            StepId::Target => self.target(rec, plan).await,
            StepId::Stop => {
                let c = container(rec)?;
                let out = self.platform.stop(&c).await?;
                Ok((format!("{} stopped", c.container), json!({"container": c.container, "host": c.host, "detail": out})))
            }
            StepId::ClearTarget => self.clear_target(rec, plan).await,
            StepId::Copy => self.copy(rec, plan).await,
            StepId::VerifyCopy => self.verify_copy(rec, plan).await,
            StepId::Etcd => self.etcd(rec).await,
            StepId::Flush => {
                let c = container(rec)?;
                let out = self.platform.flush(&c).await?;
                Ok((format!("data directory of {} emptied", c.container), json!({"container": c.container, "detail": out})))
            }
            StepId::Start => self.start(rec).await,
            StepId::Confirm => self.confirm(rec).await,
            StepId::Bind => {
                let tid = target_id(rec)?;
                let mut done = Vec::new();
                for app in &plan.bind_apps {
                    done.push(self.platform.bind(&tid, plan.target.space_guid.as_deref(), app).await?);
                }
                Ok((format!("bound {}", plan.bind_apps.join(", ")), json!({"apps": plan.bind_apps, "results": done})))
            }
        }
    }

    fn prefixes(&self, rec: &Recovery) -> Result<(SourcePrefix, TargetPrefix), ExecError> {
        let source = SourcePrefix::new(S3Url::parse(&rec.source_prefix)?);
        let t = rec.target_prefix.as_deref().ok_or(ExecError::TargetUnknown { what: "prefix" })?;
        let target = TargetPrefix::new(S3Url::parse(t)?, &source)?;
        Ok((source, target))
    }

    async fn source(&self, plan: &Plan) -> StepResult {
        let source = SourcePrefix::new(S3Url::parse(&plan.source.prefix)?);
        let listing = self.s3.list_source(&source).await?;
        let have: BTreeMap<&str, u64> = listing.iter().filter_map(|o| source.url().relative(&o.key).map(|r| (r, o.size))).collect();
        let missing: Vec<&CopyItem> = plan.selection.items.iter().filter(|i| have.get(i.rel.as_str()) != Some(&i.size)).collect();
        if !missing.is_empty() {
            return Err(ExecError::SourceChanged {
                url: source.url().clone(),
                count: missing.len(),
                examples: examples(missing.iter().map(|i| i.rel.as_str())),
            });
        }
        if plan.selection.base_backup.is_none() && !plan.options.force {
            return Err(ExecError::NoCompleteBackup);
        }
        let report = analyze(source.url(), &listing, now_ms());
        Ok((
            format!("{}: the {} planned objects are present", report.verdict.as_str(), plan.selection.objects),
            json!({"verdict": report.verdict.as_str(), "objects": listing.len(), "planned": plan.selection.objects, "base_backup": plan.selection.base_backup}),
        ))
    }

    async fn target(&self, rec: &mut Recovery, plan: &Plan) -> StepResult {
        let mut created = Value::Null;
        let tid = match (&plan.target_spec, rec.target_id.clone()) {
            (_, Some(t)) => t,
            (TargetSpec::Create { .. }, None) => {
                let name = plan.target.name.clone().ok_or(ExecError::CreateIncomplete { what: "name", flag: "name" })?;
                let space = plan.target.space_guid.clone().ok_or(ExecError::CreateIncomplete { what: "space", flag: "space-guid" })?;
                let req = CreateRequest { name: name.clone(), space_guid: space.clone() };
                let attempts = rec.step(StepId::Target).map_or(1, |s| s.attempts);
                let id = match self.platform.create(&req).await {
                    Ok(c) => {
                        created = json!({"detail": c.detail});
                        c.instance_id
                    }
                    // An earlier attempt created it and died before journaling the id: adopt it.
                    Err(PlatformError::NameTaken { .. }) if attempts > 1 => match self.platform.find_instance(&name, &space).await? {
                        Some(id) => {
                            created = json!({"detail": format!("adopted {id}, created by an earlier attempt of this step")});
                            id
                        }
                        None => return Err(ExecError::NameTakenNotFound { name, space }),
                    },
                    Err(e) => return Err(e.into()),
                };
                rec.target_id = Some(id.clone());
                self.journal.add_lock(rec, &keys::instance_resource(&id))?;
                self.journal.save(rec, ev(StepId::Target, "note", format!("created instance {id}")))?;
                id
            }
            (TargetSpec::Into { instance_id }, None) => instance_id.clone(),
            (TargetSpec::Prefix { .. }, None) => return Err(ExecError::NoTargetInstance),
        };
        if rec.target_prefix.is_none() {
            let src = S3Url::parse(&rec.source_prefix)?;
            rec.target_prefix = Some(sibling_prefix(&src, &rec.source_id, &tid).to_string());
        }
        // The container and cell: from the store (the watcher sees the new instance come up).
        let deadline = Instant::now() + self.cfg.target_wait;
        let (container, host) = loop {
            let found = self.access()?.record(&tid)?.map(|r| container_of(&r));
            if let Some((Some(c), Some(h))) = &found {
                break (c.clone(), h.clone());
            }
            if Instant::now() >= deadline {
                let seen = match found {
                    None => "the store has no record of it".to_string(),
                    Some((c, h)) => format!("the store knows container {} on cell {}", c.as_deref().unwrap_or("?"), h.as_deref().unwrap_or("?")),
                };
                return Err(ExecError::TargetNotSeen { tid, wait: format_duration(self.cfg.target_wait).to_string(), seen });
            }
            tokio::time::sleep(self.cfg.poll_interval).await;
        };
        rec.target_container = Some(container.clone());
        rec.target_host = Some(host.clone());
        Ok((
            format!("target {tid}: container {container} on cell {host}, backups at {}", rec.target_prefix.as_deref().unwrap_or("?")),
            json!({"instance_id": tid, "container": container, "host": host, "prefix": rec.target_prefix, "created": created}),
        ))
    }

    async fn clear_target(&self, rec: &mut Recovery, plan: &Plan) -> StepResult {
        let (_, target) = self.prefixes(rec)?;
        let listing = self.s3.list_target(&target).await?;
        let current: Vec<String> = listing.iter().filter_map(|o| target.url().relative(&o.key).map(str::to_string)).collect();
        let to_delete = match saved_list(rec, StepId::ClearTarget, "to_delete")? {
            Some(list) => {
                let extra: Vec<&String> = current.iter().filter(|k| !list.contains(k)).collect();
                if !extra.is_empty() {
                    return Err(ExecError::TargetWritten {
                        url: target.url().clone(),
                        count: extra.len(),
                        examples: examples(extra.iter().map(|s| s.as_str())),
                    });
                }
                current
            }
            None => {
                let rep = analyze(target.url(), &listing, now_ms());
                let complete: Vec<&str> = rep.base_backups.iter().filter(|b| b.complete).map(|b| b.name.as_str()).collect();
                if !complete.is_empty() {
                    return Err(ExecError::TargetHasBackups { url: target.url().clone(), backups: complete.join(", ") });
                }
                if listing.len() as u64 > plan.options.max_target_objects {
                    return Err(ExecError::TargetTooFull { url: target.url().clone(), count: listing.len(), bound: plan.options.max_target_objects });
                }
                self.save_output(rec, StepId::ClearTarget, "to_delete", json!(current))?;
                current
            }
        };
        let n = self.s3.delete_objects(&target, &to_delete, self.cfg.copy_attempts, None).await?;
        Ok((format!("deleted {n} object(s) under {}", target.url()), json!({"to_delete": to_delete, "deleted": n})))
    }

    async fn copy(&self, rec: &mut Recovery, plan: &Plan) -> StepResult {
        let (source, target) = self.prefixes(rec)?;
        let sel = &plan.selection;
        let opts = self.cfg.copy_options(Some(plan.options.concurrency));
        let started = Instant::now();
        let listing = self.s3.list_target(&target).await?;
        let have: BTreeMap<String, (u64, i64)> =
            listing.iter().filter_map(|o| target.url().relative(&o.key).map(|r| (r.to_string(), (o.size, o.last_modified_ms)))).collect();
        let planned: BTreeMap<&str, u64> = sel.items.iter().map(|i| (i.rel.as_str(), i.size)).collect();
        let foreign: Vec<&String> = have.keys().filter(|k| !planned.contains_key(k.as_str())).collect();
        if !foreign.is_empty() {
            return Err(ExecError::ForeignObjects { url: target.url().clone(), count: foreign.len(), examples: examples(foreign.iter().map(|s| s.as_str())) });
        }
        let is_sentinel = |r: &str| sel.sentinels.iter().any(|s| s == r);
        let todo: Vec<CopyItem> = sel.items.iter().filter(|i| !is_sentinel(&i.rel) && have.get(&i.rel).map(|h| h.0) != Some(i.size)).cloned().collect();
        let skipped = sel.items.iter().filter(|i| !is_sentinel(&i.rel)).count() - todo.len();
        let progress = Arc::new(TransferProgress::default());
        let crash = match self.crash {
            Some(Crash::CopyObjects(n)) => Some(n),
            _ => None,
        };
        let display = ProgressDisplay::start(
            "copy",
            progress.clone(),
            todo.len() as u64,
            todo.iter().map(|i| i.size).sum(),
            self.cfg.progress_interval,
            self.quiet,
            crash,
        );
        let res = self.s3.copy_objects(&source, &todo, &target, &opts, &progress).await;
        display.finish().await;
        res?;

        let sentinels_copied = self.copy_sentinels(&source, &target, sel, &have, &opts).await?;
        let secs = started.elapsed().as_secs_f64();
        let copied = progress.objects.load(std::sync::atomic::Ordering::Relaxed) + sentinels_copied;
        let bytes = progress.bytes.load(std::sync::atomic::Ordering::Relaxed);
        let retries = progress.retries.load(std::sync::atomic::Ordering::Relaxed);
        Ok((
            format!(
                "copied {copied} object(s) ({}) in {secs:.1}s{}",
                human_bytes(bytes),
                if skipped > 0 { format!(", {skipped} already there") } else { String::new() }
            ),
            json!({"copied": copied, "skipped_present": skipped, "bytes": bytes, "seconds": secs, "retries": retries, "sentinels_copied": sentinels_copied, "objects_per_second": copied as f64 / secs.max(0.001)}),
        ))
    }

    /// Copies the sentinels last, in source order, the chosen backup's strictly newest, unless the target
    /// already holds them so; returns how many it copied.
    async fn copy_sentinels(
        &self,
        source: &SourcePrefix,
        target: &TargetPrefix,
        sel: &Selection,
        have: &BTreeMap<String, (u64, i64)>,
        opts: &CopyOptions,
    ) -> Result<u64, ExecError> {
        let sentinel_items: Vec<&CopyItem> = sel.sentinels.iter().filter_map(|s| sel.items.iter().find(|i| &i.rel == s)).collect();
        let missing = sentinel_items.iter().any(|i| have.get(&i.rel).map(|h| h.0) != Some(i.size));
        let ordered = {
            let lms: Vec<i64> = sentinel_items.iter().filter_map(|i| have.get(&i.rel).map(|h| h.1)).collect();
            lms.len() == sentinel_items.len() && lms.last().is_none_or(|last| lms[..lms.len() - 1].iter().all(|x| x < last))
        };
        if !missing && ordered {
            return Ok(0);
        }
        let mut copied = 0;
        let mut newest_other: Option<i64> = None;
        for (n, item) in sentinel_items.iter().enumerate() {
            let last = n + 1 == sentinel_items.len();
            let mut lm = self.s3.copy_object(source, item, target, opts, None).await?;
            if last && sentinel_items.len() > 1 {
                let mut tries = 0;
                // LastModified has one-second resolution: copy again until it is strictly newer.
                while lm.zip(newest_other).is_none_or(|(a, b)| a <= b) && tries < 3 {
                    tokio::time::sleep(Duration::from_millis(1100)).await;
                    lm = self.s3.copy_object(source, item, target, opts, None).await?;
                    tries += 1;
                }
            } else {
                newest_other = newest_other.max(lm);
            }
            copied += 1;
        }
        Ok(copied)
    }

    async fn verify_copy(&self, rec: &Recovery, plan: &Plan) -> StepResult {
        let (_, target) = self.prefixes(rec)?;
        let listing = self.s3.list_target(&target).await?;
        let got: BTreeMap<&str, u64> = listing.iter().filter_map(|o| target.url().relative(&o.key).map(|r| (r, o.size))).collect();
        let want: BTreeMap<&str, u64> = plan.selection.items.iter().map(|i| (i.rel.as_str(), i.size)).collect();
        let missing: Vec<&str> = want.keys().filter(|k| !got.contains_key(*k)).copied().collect();
        let extra: Vec<&str> = got.keys().filter(|k| !want.contains_key(*k)).copied().collect();
        let size: Vec<&str> = want.iter().filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v)).map(|(k, _)| *k).collect();
        if !(missing.is_empty() && extra.is_empty() && size.is_empty()) {
            let first = |v: &[&str]| v.first().unwrap_or(&"-").to_string();
            return Err(ExecError::CopyMismatch(Box::new(CopyMismatch {
                url: target.url().clone(),
                missing: missing.len(),
                missing_example: first(&missing),
                extra: extra.len(),
                extra_example: first(&extra),
                resized: size.len(),
                resized_example: first(&size),
            })));
        }
        let rep = analyze(target.url(), &listing, now_ms());
        if let Some(b) = &plan.selection.base_backup {
            if rep.latest_complete_backup.as_ref() != Some(b) {
                return Err(ExecError::WrongLatest { found: rep.latest_complete_backup, chosen: b.clone() });
            }
        }
        Ok((
            format!("{} objects ({}) match the source, keys and sizes; {}", got.len(), human_bytes(got.values().sum()), rep.verdict.as_str()),
            json!({"objects": got.len(), "bytes": got.values().sum::<u64>(), "verdict": rep.verdict.as_str(), "latest_complete_backup": rep.latest_complete_backup}),
        ))
    }

    async fn etcd(&self, rec: &Recovery) -> StepResult {
        let etcd = self.etcd.ok_or(ExecError::NoEtcd)?;
        let tid = target_id(rec)?;
        let mut results = Vec::new();
        for k in recovery_keys(&tid) {
            results.push(etcd.delete(&k).await?);
        }
        let summary = results
            .iter()
            .map(|r| format!("{} {}", r.key, if r.outcome == DeleteOutcome::Deleted { "deleted" } else { "was absent" }))
            .collect::<Vec<_>>()
            .join(", ");
        Ok((summary, json!({"etcd": etcd.url(), "keys": results})))
    }

    async fn start(&self, rec: &mut Recovery) -> StepResult {
        let c = container(rec)?;
        let saved = rec.step(StepId::Start).and_then(|s| s.output.get("baseline")).cloned().filter(|v| !v.is_null());
        let baseline = match saved {
            Some(b) => b,
            None => {
                let r = self.access()?.record(&c.instance_id)?;
                let b = json!({
                    "preparing_at": r.as_ref().and_then(|r| r.restore.preparing_at),
                    "wal_fetched": r.as_ref().map_or(0, |r| r.restore.wal_fetched),
                    "at": now_ms(),
                });
                self.save_output(rec, StepId::Start, "baseline", b.clone())?;
                b
            }
        };
        let out = self.platform.start(&c).await?;
        Ok((format!("{} started", c.container), json!({"container": c.container, "detail": out, "baseline": baseline})))
    }

    async fn confirm(&self, rec: &Recovery) -> StepResult {
        let tid = target_id(rec)?;
        let base = rec.step(StepId::Start).map(|s| s.output["baseline"].clone()).unwrap_or(Value::Null);
        let base_prep = base["preparing_at"].as_i64();
        let base_fetched = base["wal_fetched"].as_u64().unwrap_or(0);
        let deadline = Instant::now() + self.cfg.confirm_timeout;
        let mut watcher_seen = false;
        loop {
            let access = self.access()?;
            watcher_seen |= matches!(access, Access::Watcher { .. });
            let r = access.record(&tid)?;
            drop(access);
            let prep = r.as_ref().and_then(|r| r.restore.preparing_at).filter(|p| base_prep.is_none_or(|b| *p > b));
            let fetched = r.as_ref().map_or(0, |r| r.restore.wal_fetched).saturating_sub(base_fetched);
            if let (Some(p), true) = (prep, fetched > 0) {
                return Ok((
                    format!("the restore was seen: preparing at {}, {fetched} WAL segment(s) fetched", rfc3339(p)),
                    json!({"preparing_at": rfc3339(p), "wal_fetched": fetched, "last_wal_fetch_at": r.and_then(|r| r.restore.last_wal_fetch_at).map(rfc3339)}),
                ));
            }
            if Instant::now() >= deadline {
                return Err(ExecError::RestoreNotSeen(Box::new(RestoreNotSeen {
                    wait: format_duration(self.cfg.confirm_timeout).to_string(),
                    tid,
                    preparing: if prep.is_some() { "seen" } else { "NOT seen" },
                    fetched,
                    hint: if watcher_seen { "" } else { "No watcher was running on this store, so nothing new could be seen: start `safeguard watch`. " },
                    host: rec.target_host.clone().unwrap_or_else(|| "?".into()),
                    container: rec.target_container.clone().unwrap_or_else(|| "?".into()),
                    id: rec.id.clone(),
                })));
            }
            tokio::time::sleep(self.cfg.poll_interval).await;
        }
    }
}

fn target_id(rec: &Recovery) -> Result<String, ExecError> {
    rec.target_id.clone().ok_or(ExecError::TargetUnknown { what: "instance" })
}

fn container(rec: &Recovery) -> Result<ContainerRef, ExecError> {
    Ok(ContainerRef {
        instance_id: target_id(rec)?,
        container: rec.target_container.clone().ok_or(ExecError::TargetUnknown { what: "container" })?,
        host: rec.target_host.clone(),
    })
}

/// A list a step saved in its output before acting (None when it saved none yet).
fn saved_list(rec: &Recovery, step: StepId, key: &'static str) -> Result<Option<Vec<String>>, ExecError> {
    let Some(v) = rec.step(step).and_then(|s| s.output.get(key)).filter(|v| !v.is_null()) else { return Ok(None) };
    serde_json::from_value(v.clone()).map(Some).map_err(|e| ExecError::CorruptOutput { step: step.as_str(), key, id: rec.id.clone(), cause: e.to_string() })
}
