//! The recovery journal (key layout in [`super::keys`]). Each call opens the sled database, does its
//! reads or one atomic write, flushes and closes it again, so no process holds it for longer than that.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::keys;
use super::plan::{Mode, Plan};
use super::StepId;
use crate::timeutil::{now_ms, serde_ms, serde_opt_ms};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("there is no store at {store}, so there is no recovery journal in it (nothing was created); check --store / SAFEGUARD_STORE / store.path")]
    NoStore { store: PathBuf },
    #[error("the recovery journal at {path} stayed busy for {secs}s (another safeguard process is writing it); try again")]
    Busy { path: PathBuf, secs: u64 },
    #[error("cannot open the recovery journal at {path}: {detail}; check the store directory is writable (--store)")]
    Open { path: PathBuf, detail: String },
    #[error("recovery journal I/O failed at {path}: {detail}")]
    Io { path: PathBuf, detail: String },
    #[error("the recovery journal at {path} has schema {found}, this safeguard understands {expected}; use a matching release")]
    Schema { path: PathBuf, found: String, expected: &'static str },
    #[error("a journal entry under {key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("cannot encode {what} for the recovery journal: {source}; nothing was written (a bug: report it)")]
    Encode { what: &'static str, source: serde_json::Error },
    #[error("{resource} is locked by recovery {holder} ({status}); finish it with `safeguard recover --resume {holder}`, or give it up with `safeguard recover --abandon {holder}`")]
    Locked { resource: String, holder: String, status: String },
    #[error("{mine} overlaps {theirs}, which recovery {holder} ({status}) {verb}; two recoveries never write into each other's prefixes. Finish it with `safeguard recover --resume {holder}`, or give it up with `safeguard recover --abandon {holder}`")]
    PrefixBusy { mine: String, theirs: String, verb: &'static str, holder: String, status: String },
}

fn encode<T: Serialize + ?Sized>(what: &'static str, v: &T) -> Result<Vec<u8>, JournalError> {
    serde_json::to_vec(v).map_err(|source| JournalError::Encode { what, source })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryStatus {
    /// Steps are running (or the process running them died: see `owner_pid`).
    Running,
    /// A step failed; `--resume` continues from it.
    Failed,
    Succeeded,
    Abandoned,
}

impl RecoveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryStatus::Running => "running",
            RecoveryStatus::Failed => "failed",
            RecoveryStatus::Succeeded => "succeeded",
            RecoveryStatus::Abandoned => "abandoned",
        }
    }
    pub fn finished(self) -> bool {
        matches!(self, RecoveryStatus::Succeeded | RecoveryStatus::Abandoned)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Done,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: StepId,
    pub status: StepStatus,
    /// How many times the step was started (a resumed step that had started counts twice).
    pub attempts: u32,
    #[serde(with = "serde_opt_ms", default)]
    pub started_at: Option<i64>,
    #[serde(with = "serde_opt_ms", default)]
    pub finished_at: Option<i64>,
    /// One line for people.
    pub summary: Option<String>,
    /// What the step did, for scripts and for later steps (never secrets).
    #[serde(default)]
    pub output: Value,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    pub id: String,
    pub status: RecoveryStatus,
    #[serde(with = "serde_ms")]
    pub created_at: i64,
    #[serde(with = "serde_ms")]
    pub updated_at: i64,
    /// `recover` (into an instance) or `clone` (`--to-prefix`).
    pub mode: Mode,
    pub source_id: String,
    pub source_prefix: String,
    pub target_id: Option<String>,
    pub target_prefix: Option<String>,
    pub target_container: Option<String>,
    pub target_host: Option<String>,
    /// The process running the steps now (or last).
    pub owner_pid: u32,
    pub locks: Vec<String>,
    pub steps: Vec<StepRecord>,
    pub last_error: Option<String>,
}

impl Recovery {
    pub fn step(&self, id: StepId) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.step == id)
    }
    pub fn step_mut(&mut self, id: StepId) -> Option<&mut StepRecord> {
        self.steps.iter_mut().find(|s| s.step == id)
    }
    /// The first step not done.
    pub fn next_step(&self) -> Option<StepId> {
        self.steps.iter().find(|s| s.status != StepStatus::Done).map(|s| s.step)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(with = "serde_ms")]
    pub at: i64,
    pub step: Option<StepId>,
    /// `created`, `started`, `done`, `failed`, `resumed`, `abandoned`, `succeeded`, `note`.
    pub what: String,
    pub detail: String,
}

pub struct Journal {
    path: PathBuf,
}

/// How long to wait for another process to finish its moment in the journal.
const BUSY_WAIT: Duration = Duration::from_secs(30);

fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock"))
}

fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

impl Journal {
    /// The journal of the store at `store_dir`.
    pub fn for_store(store_dir: &Path) -> Journal {
        Journal { path: store_dir.join("recoveries") }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, e: impl std::fmt::Display) -> JournalError {
        JournalError::Io { path: self.path.clone(), detail: e.to_string() }
    }

    fn with<T>(&self, f: impl FnOnce(&sled::Db) -> Result<T, JournalError>) -> Result<T, JournalError> {
        // The journal lives in a store; a mistyped --store must not become a new directory tree.
        let store = self.path.parent().unwrap_or(Path::new("."));
        if !store.is_dir() {
            return Err(JournalError::NoStore { store: store.to_path_buf() });
        }
        match std::fs::create_dir(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(JournalError::Open { path: self.path.clone(), detail: e.to_string() }),
            _ => {}
        }
        let deadline = Instant::now() + BUSY_WAIT;
        let db = loop {
            match sled::Config::new().path(&self.path).cache_capacity(4 << 20).open() {
                Ok(db) => break db,
                Err(e) if is_locked(&e) && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(e) if is_locked(&e) => return Err(JournalError::Busy { path: self.path.clone(), secs: BUSY_WAIT.as_secs() }),
                Err(e) => return Err(JournalError::Open { path: self.path.clone(), detail: e.to_string() }),
            }
        };
        match db.get(keys::SCHEMA).map_err(|e| self.io(e))? {
            None => {
                db.insert(keys::SCHEMA, keys::SCHEMA_VERSION.as_bytes()).map_err(|e| self.io(e))?;
            }
            Some(v) if v.as_ref() == keys::SCHEMA_VERSION.as_bytes() => {}
            Some(v) => {
                return Err(JournalError::Schema { path: self.path.clone(), found: String::from_utf8_lossy(&v).into_owned(), expected: keys::SCHEMA_VERSION })
            }
        }
        let out = f(&db)?;
        db.flush().map_err(|e| self.io(e))?;
        Ok(out)
    }

    fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], v: &[u8]) -> Result<T, JournalError> {
        serde_json::from_slice(v).map_err(|e| JournalError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), detail: e.to_string() })
    }

    /// Who holds `resource`, when the holder is a recovery that has not finished.
    fn holder(db: &sled::Db, resource: &str) -> Result<Option<(String, String)>, JournalError> {
        let Some(h) = db.get(keys::lock(resource)).map_err(|e| JournalError::Io { path: PathBuf::new(), detail: e.to_string() })? else { return Ok(None) };
        let holder = String::from_utf8_lossy(&h).into_owned();
        let rk = keys::recovery(&holder);
        match db.get(&rk).map_err(|e| JournalError::Io { path: PathBuf::new(), detail: e.to_string() })? {
            Some(v) => {
                let r: Recovery = Self::decode(&rk, &v)?;
                Ok((!r.status.finished()).then(|| (holder, r.status.as_str().to_string())))
            }
            None => Ok(None),
        }
    }

    /// Records a new recovery, its plan and its locks in one atomic write; refuses when any resource is
    /// held by an unfinished recovery.
    pub fn create(&self, rec: &Recovery, plan: &Plan) -> Result<(), JournalError> {
        self.with(|db| {
            for r in &rec.locks {
                if let Some((holder, status)) = Self::holder(db, r)? {
                    return Err(JournalError::Locked { resource: r.clone(), holder, status });
                }
            }
            self.check_prefixes(db, rec)?;
            let mut b = sled::Batch::default();
            for r in &rec.locks {
                b.insert(keys::lock(r), rec.id.as_bytes());
            }
            b.insert(keys::recovery(&rec.id), encode("the recovery record", rec)?);
            b.insert(keys::plan(&rec.id), encode("the recovery plan", plan)?);
            let ev = Event {
                at: now_ms(),
                step: None,
                what: "created".into(),
                detail: format!(
                    "{} {} -> {}",
                    rec.mode.as_str(),
                    rec.source_id,
                    rec.target_id.as_deref().or(rec.target_prefix.as_deref()).unwrap_or("(target to be created)")
                ),
            };
            b.insert(keys::event(&rec.id, 0), encode("a journal event", &ev)?);
            db.apply_batch(b).map_err(|e| self.io(e))
        })
    }

    /// Exact locks cannot see nesting (`s3://b/x/` and `s3://b/x/y/`), so every unfinished recovery's
    /// prefixes are compared: nobody writes where another recovery reads or writes, nor reads where another
    /// writes.
    fn check_prefixes(&self, db: &sled::Db, rec: &Recovery) -> Result<(), JournalError> {
        let parse = |p: &str| crate::adapters::s3::S3Url::parse(p).ok();
        let (Some(my_src), my_dst) = (parse(&rec.source_prefix), rec.target_prefix.as_deref().and_then(parse)) else { return Ok(()) };
        for kv in db.scan_prefix(keys::RECOVERY) {
            let (k, v) = kv.map_err(|e| self.io(e))?;
            let other: Recovery = Self::decode(&k, &v)?;
            if other.id == rec.id || other.status.finished() {
                continue;
            }
            let (o_src, o_dst) = (parse(&other.source_prefix), other.target_prefix.as_deref().and_then(parse));
            let pairs = [(my_dst.as_ref(), o_dst.as_ref(), "writes"), (my_dst.as_ref(), o_src.as_ref(), "reads"), (Some(&my_src), o_dst.as_ref(), "writes")];
            for (mine, theirs, verb) in pairs {
                if let (Some(m), Some(t)) = (mine, theirs) {
                    if crate::adapters::s3::prefixes_overlap(m, t) {
                        return Err(JournalError::PrefixBusy {
                            mine: m.to_string(),
                            theirs: t.to_string(),
                            verb,
                            holder: other.id.clone(),
                            status: other.status.as_str().to_string(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds a lock to a recovery (the target of `--create`, known only once created).
    pub fn add_lock(&self, rec: &mut Recovery, resource: &str) -> Result<(), JournalError> {
        if rec.locks.iter().any(|l| l == resource) {
            return Ok(());
        }
        let id = rec.id.clone();
        rec.locks.push(resource.to_string());
        rec.updated_at = now_ms();
        let v = encode("the recovery record", &*rec)?;
        self.with(|db| {
            if let Some((holder, status)) = Self::holder(db, resource)? {
                if holder != id {
                    return Err(JournalError::Locked { resource: resource.to_string(), holder, status });
                }
            }
            let mut b = sled::Batch::default();
            b.insert(keys::lock(resource), id.as_bytes());
            b.insert(keys::recovery(&id), v);
            db.apply_batch(b).map_err(|e| self.io(e))
        })
    }

    /// Rewrites the recovery record and appends an event, atomically. Releases its locks when finished.
    pub fn save(&self, rec: &mut Recovery, ev: Option<Event>) -> Result<(), JournalError> {
        rec.updated_at = now_ms();
        let v = encode("the recovery record", &*rec)?;
        let id = rec.id.clone();
        let release = rec.status.finished();
        let locks = rec.locks.clone();
        self.with(|db| {
            let mut b = sled::Batch::default();
            b.insert(keys::recovery(&id), v);
            if let Some(ev) = ev {
                let seq = db
                    .scan_prefix(keys::event_prefix(&id))
                    .keys()
                    .next_back()
                    .and_then(|k| k.ok())
                    .and_then(|k| k[k.len() - 8..].try_into().ok())
                    .map(u64::from_be_bytes)
                    .map_or(0, |s| s + 1);
                b.insert(keys::event(&id, seq), encode("a journal event", &ev)?);
            }
            if release {
                for l in &locks {
                    if db.get(keys::lock(l)).map_err(|e| self.io(e))?.is_some_and(|h| h.as_ref() == id.as_bytes()) {
                        b.remove(keys::lock(l));
                    }
                }
            }
            db.apply_batch(b).map_err(|e| self.io(e))
        })
    }

    pub fn load(&self, id: &str) -> Result<Option<(Recovery, Plan)>, JournalError> {
        self.with(|db| {
            let rk = keys::recovery(id);
            let Some(r) = db.get(&rk).map_err(|e| self.io(e))? else { return Ok(None) };
            let pk = keys::plan(id);
            let p = db
                .get(&pk)
                .map_err(|e| self.io(e))?
                .ok_or_else(|| JournalError::Corrupt { key: String::from_utf8_lossy(&pk).into_owned(), detail: "missing".into() })?;
            Ok(Some((Self::decode(&rk, &r)?, Self::decode(&pk, &p)?)))
        })
    }

    pub fn list(&self) -> Result<Vec<Recovery>, JournalError> {
        if !self.path.exists() {
            return Ok(Vec::new());
        }
        self.with(|db| {
            let mut out: Vec<Recovery> = Vec::new();
            for kv in db.scan_prefix(keys::RECOVERY) {
                let (k, v) = kv.map_err(|e| self.io(e))?;
                out.push(Self::decode(&k, &v)?);
            }
            out.sort_by_key(|r| std::cmp::Reverse(r.created_at));
            Ok(out)
        })
    }

    pub fn events(&self, id: &str) -> Result<Vec<Event>, JournalError> {
        self.with(|db| {
            db.scan_prefix(keys::event_prefix(id))
                .map(|kv| {
                    let (k, v) = kv.map_err(|e| self.io(e))?;
                    Self::decode(&k, &v)
                })
                .collect()
        })
    }

    /// Resources held by unfinished recoveries: (resource, recovery id).
    pub fn locks(&self) -> Result<Vec<(String, String)>, JournalError> {
        self.with(|db| {
            let mut out = Vec::new();
            for kv in db.scan_prefix(keys::LOCK) {
                let (k, v) = kv.map_err(|e| self.io(e))?;
                let res = String::from_utf8_lossy(&k[keys::LOCK.len()..]).into_owned();
                if Self::holder(db, &res)?.is_some() {
                    out.push((res, String::from_utf8_lossy(&v).into_owned()));
                }
            }
            Ok(out)
        })
    }
}

/// Whether another live process is running this recovery's steps.
pub fn running_elsewhere(rec: &Recovery) -> bool {
    rec.status == RecoveryStatus::Running && rec.owner_pid != std::process::id() && pid_alive(rec.owner_pid)
}
