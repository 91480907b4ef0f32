//! `[backup]`: the store backs itself up to the object store, and is rebuilt from such a backup.
//!
//! A backup is the read snapshot's format ([`super::snapshot`]: every key and value in key order, under
//! a header with the schema version) written from the store under its write lock, so it is one moment
//! between commits: records, indexes, counts, the alert outbox and every source's position together.
//! It is compressed with zstd and uploaded as `<prefix><UTC time>-<6 hex>.sgsnap.zst`, then its
//! manifest `<same name>.json` ([`Manifest`]: format, schema, time, entries, compressed size, SHA-256 of
//! the object, source positions, instances). The manifest is written last: a backup without one is
//! incomplete, listed as such and never restored. After each upload the backups beyond `keep` are
//! deleted, oldest first; only objects named like a backup directly under the prefix are ever touched.
//!
//! A restore downloads the newest complete (or a named) backup, checks its size and checksum against
//! the manifest before writing anything, decompresses it and loads its entries into a new sled store in
//! batches, then moves that store into place. The result is a normal store: a watcher or an ingest
//! started on it resumes each source from the positions it holds, and lines applied before are skipped
//! or change nothing (the record is a function of the facts).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::snapshot::{Snapshot, SnapshotError};
use super::{CopyStats, Store, StoreError, SCHEMA_VERSION};
use crate::adapters::s3::{ObjectStore, S3Config, S3Error, S3Url};

/// The manifest format this release writes and reads.
pub const FORMAT: u32 = 1;
pub const OBJECT_SUFFIX: &str = ".sgsnap.zst";
pub const MANIFEST_SUFFIX: &str = ".json";
/// Entries loaded per sled batch while restoring.
const RESTORE_BATCH: usize = 20_000;
/// A manifest larger than this is not one of ours.
const MANIFEST_MAX: usize = 16 << 20;

/// `[backup]` in the config. Uses `[s3]` for the endpoint and credentials.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// `s3://bucket/prefix/`: where backups go. Required when the section exists.
    pub to: Option<String>,
    #[serde(default = "default_interval", deserialize_with = "crate::settings::duration")]
    pub interval: Duration,
    /// Backups kept; older ones are deleted after each successful upload.
    #[serde(default = "default_keep")]
    pub keep: u32,
}

fn default_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_keep() -> u32 {
    48
}

impl BackupConfig {
    /// Checks what serde cannot; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        self.dest()?;
        crate::settings::check_nonzero("backup.interval", self.interval, "the watcher would back up in a busy loop")?;
        if self.keep == 0 {
            return Err("`backup.keep` = 0 must be at least 1 (how many backups to keep; 48 is the default)".into());
        }
        Ok(())
    }

    /// The prefix backups go to, parsed.
    pub fn dest(&self) -> Result<S3Url, String> {
        let to = self.to.as_deref().ok_or("`backup.to` is required in [backup]: the prefix backups go to, e.g. to = \"s3://bucket/safeguard/\"")?;
        parse_dest(to).map_err(|e| format!("`backup.to` = {to:?}: {e}"))
    }
}

/// A backup prefix: `s3://bucket/prefix/`, never a whole bucket (old backups are deleted under it).
pub fn parse_dest(url: &str) -> Result<S3Url, String> {
    let u = S3Url::parse(url).map_err(|e| e.to_string())?;
    if u.key.is_empty() {
        return Err("name a prefix inside the bucket, e.g. s3://bucket/safeguard/ (old backups are deleted under it, so never a whole bucket)".into());
    }
    Ok(u)
}

/// `<name>.json`, written after the object it describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The store's schema version when it was copied.
    pub schema: u32,
    pub created_at: String,
    /// Keys in the copy.
    pub entries: u64,
    /// Size of the compressed object.
    pub bytes: u64,
    /// SHA-256 of the compressed object, hex.
    pub sha256: String,
    /// Each source's position (its stored id) -> offset, as of the copy.
    pub positions: BTreeMap<String, u64>,
    pub instances: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    S3(Box<S3Error>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("{what} {path} failed: {source}; check the disk holding it (space, permissions)")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the backup object {url} does not match its manifest: {what} is {got}, the manifest says {expected}; the object is corrupt or was changed after upload. Nothing was written. Restore another backup with --name (see `safeguard store backups`)")]
    Checksum { url: String, what: &'static str, expected: String, got: String },
    #[error("no complete backup under {prefix}; `safeguard store backups {prefix}` lists what is there (a backup without its manifest is incomplete)")]
    NoBackups { prefix: String },
    #[error("no backup named {name:?} under {prefix}; `safeguard store backups {prefix}` lists them")]
    NotFound { name: String, prefix: String },
    #[error("the backup {name} under {prefix} is incomplete ({why}); pick a complete one from `safeguard store backups {prefix}`")]
    Incomplete { name: String, prefix: String, why: String },
    #[error("the manifest {url} is unusable: {detail}")]
    Manifest { url: String, detail: String },
    #[error("the backup {url} holds a store of schema {found}; this safeguard understands up to {SCHEMA_VERSION}: restore it with a matching release")]
    Schema { url: String, found: u32 },
    #[error(
        "the store directory {path} is not empty; restore into a new directory, or pass --force to replace it (the current store is moved aside, not deleted)"
    )]
    NotEmpty { path: PathBuf },
    #[error("the store at {path} is in use by another safeguard process (a running `safeguard watch`?); stop it before replacing its store")]
    InUse { path: PathBuf },
    #[error("the restored store has {got} entries, its backup {url} says {expected}; nothing was put in place (report it)")]
    Count { url: String, expected: u64, got: u64 },
}

impl From<S3Error> for BackupError {
    fn from(e: S3Error) -> Self {
        BackupError::S3(Box::new(e))
    }
}

/// The object and manifest names of a new backup: `<YYYYMMDDTHHMMSSZ>-<6 hex>`.
pub fn new_name(now_ms: i64) -> String {
    let t = crate::timeutil::rfc3339(now_ms);
    // 2024-05-01T10:20:30.123Z -> 20240501T102030Z
    let compact: String = t[..19].chars().filter(|c| c.is_ascii_digit() || *c == 'T').collect();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let salt = format!("{nanos}:{}:{:?}", std::process::id(), std::thread::current().id());
    format!("{compact}Z-{:06x}", safeguard_core::fnv1a(salt.as_bytes()) & 0xff_ffff)
}

/// The backup name of a key directly under the prefix, and whether it is the manifest; None for
/// anything not named like a backup (never listed, restored or deleted).
fn parse_key(rel: &str) -> Option<(&str, bool)> {
    let (base, manifest) = match rel.strip_suffix(OBJECT_SUFFIX) {
        Some(b) => (b, false),
        None => (rel.strip_suffix(MANIFEST_SUFFIX)?, true),
    };
    valid_name(base).then_some((base, manifest))
}

fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    b.len() == 23
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && &b[15..17] == b"Z-"
        && b[17..].iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// `20240501T102030Z-...` -> `2024-05-01T10:20:30Z`.
fn name_time(n: &str) -> String {
    format!("{}-{}-{}T{}:{}:{}Z", &n[..4], &n[4..6], &n[6..8], &n[9..11], &n[11..13], &n[13..15])
}

fn object_url(dest: &S3Url, name: &str) -> S3Url {
    dest.join(&format!("{name}{OBJECT_SUFFIX}"))
}

fn manifest_url(dest: &S3Url, name: &str) -> S3Url {
    dest.join(&format!("{name}{MANIFEST_SUFFIX}"))
}

/// One backup as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    pub name: String,
    /// The object's URL.
    pub url: String,
    /// The manifest's time, else the time in the name.
    pub created_at: String,
    /// The compressed object's size (0 when it is missing).
    pub bytes: u64,
    pub instances: Option<u64>,
    pub entries: Option<u64>,
    /// Object and manifest present, manifest readable and agreeing on the size.
    pub complete: bool,
    /// Why it is not complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    #[serde(skip)]
    manifest: Option<Manifest>,
}

/// What is under the prefix, by name: (object size, has manifest).
async fn names(os: &ObjectStore, dest: &S3Url) -> Result<BTreeMap<String, (Option<u64>, bool)>, BackupError> {
    let mut out: BTreeMap<String, (Option<u64>, bool)> = BTreeMap::new();
    for o in os.list(dest).await? {
        let Some(rel) = dest.relative(&o.key) else { continue };
        if rel.contains('/') {
            continue;
        }
        if let Some((base, manifest)) = parse_key(rel) {
            let e = out.entry(base.to_string()).or_default();
            if manifest {
                e.1 = true;
            } else {
                e.0 = Some(o.size);
            }
        }
    }
    Ok(out)
}

/// Every backup under `dest`, newest first, each with its manifest read.
pub async fn list(os: &ObjectStore, dest: &S3Url) -> Result<Vec<Listed>, BackupError> {
    let mut out = Vec::new();
    for (name, (size, has_manifest)) in names(os, dest).await?.into_iter().rev() {
        let mut l = Listed {
            url: object_url(dest, &name).to_string(),
            created_at: name_time(&name),
            bytes: size.unwrap_or(0),
            instances: None,
            entries: None,
            complete: false,
            problem: None,
            manifest: None,
            name,
        };
        if has_manifest {
            match read_manifest(os, &manifest_url(dest, &l.name)).await {
                Ok(m) => {
                    l.created_at.clone_from(&m.created_at);
                    l.instances = Some(m.instances);
                    l.entries = Some(m.entries);
                    l.problem = match size {
                        None => Some("the object is missing".into()),
                        Some(s) if s != m.bytes => Some(format!("the object has {s} bytes, the manifest says {}", m.bytes)),
                        Some(_) => None,
                    };
                    l.manifest = Some(m);
                }
                Err(e) => l.problem = Some(e.to_string()),
            }
        } else {
            l.problem = Some("no manifest (an upload in progress, or one that failed)".into());
        }
        l.complete = l.problem.is_none();
        out.push(l);
    }
    Ok(out)
}

async fn read_manifest(os: &ObjectStore, url: &S3Url) -> Result<Manifest, BackupError> {
    let bytes = os.get_bytes(url, MANIFEST_MAX).await?;
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| BackupError::Manifest { url: url.to_string(), detail: e.to_string() })?;
    if m.format != FORMAT {
        return Err(BackupError::Manifest {
            url: url.to_string(),
            detail: format!("format {} (this safeguard reads {FORMAT}); use a matching release", m.format),
        });
    }
    Ok(m)
}

/// Deletes every backup (complete or not) older than the `keep`-th newest complete one. Returns the
/// names deleted. A newer incomplete one (an upload in progress) is left alone.
pub async fn prune(os: &ObjectStore, dest: &S3Url, keep: u32) -> Result<Vec<String>, BackupError> {
    let all = names(os, dest).await?;
    let complete: Vec<&String> = all.iter().rev().filter(|(_, (size, m))| size.is_some() && *m).map(|(n, _)| n).collect();
    let Some(cutoff) = complete.get(keep.max(1) as usize - 1) else { return Ok(Vec::new()) };
    let old: Vec<String> = all.keys().filter(|n| n < cutoff).cloned().collect();
    if old.is_empty() {
        return Ok(old);
    }
    let mut keys = Vec::new();
    for n in &old {
        let (size, m) = all[n];
        if size.is_some() {
            keys.push(object_url(dest, n).key);
        }
        if m {
            keys.push(manifest_url(dest, n).key);
        }
    }
    // Manifests first would be safer for a reader between the two deletes; one request holds both.
    os.delete_under(dest, &keys).await?;
    Ok(old)
}

/// An unfinished multipart upload of a backup older than this was cut short (a watcher stopped or
/// killed mid-upload, an abort that failed): a backup of a million instances uploads in seconds.
pub const ABANDONED_AFTER_MS: i64 = 3_600_000;
/// Uploads looked at per backup: what a year of hourly abandoned uploads would leave.
const ABANDONED_MAX: usize = 10_000;

/// Aborts the unfinished multipart uploads of backups under `dest` begun before `before_ms`, so their
/// parts stop being billed; anything not named like a backup is left alone. Failures are logged and
/// left for the next backup: they never fail this one. Returns the keys aborted.
pub async fn abort_abandoned(os: &ObjectStore, dest: &S3Url, before_ms: i64) -> Vec<String> {
    let ours = |key: &str| dest.relative(key).is_some_and(|rel| !rel.contains('/') && parse_key(rel).is_some_and(|(_, manifest)| !manifest));
    let uploads = match os.unfinished_uploads(dest, ABANDONED_MAX, ours).await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "could not list unfinished uploads under the backup prefix; trying again after the next backup");
            return Vec::new();
        }
    };
    let mut aborted = Vec::new();
    for (key, id, initiated) in uploads {
        if initiated <= 0 || initiated >= before_ms {
            continue;
        }
        let url = S3Url { bucket: dest.bucket.clone(), key: key.clone() };
        match os.abort_upload(&url, &id).await {
            Ok(()) => {
                tracing::info!(upload = %url, "aborted an unfinished upload of an earlier backup (a watcher stopped mid-upload)");
                aborted.push(key);
            }
            Err(e) => {
                tracing::warn!(upload = %url, error = %e, "could not abort an unfinished upload of an earlier backup; trying again after the next backup")
            }
        }
    }
    aborted
}

/// A copy taken from the store, waiting in a local file to be uploaded.
pub struct Copy {
    pub name: String,
    pub path: PathBuf,
    pub stats: CopyStats,
    pub created_ms: i64,
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn tmp_path(store_dir: &Path, name: &str, ext: &str) -> PathBuf {
    store_dir.join(format!("backup-{name}.{ext}.tmp"))
}

/// Removes what an interrupted backup left in the store directory.
pub fn remove_leftovers(store_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(store_dir) else { return };
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with("backup-") && n.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Copies the store to a local file under its write lock (see [`Store::write_backup_snapshot`]).
pub fn copy(store: &Store, now_ms: i64) -> Result<Copy, BackupError> {
    let name = new_name(now_ms);
    let path = tmp_path(store.path(), &name, "sgsnap");
    let stats = store.write_backup_snapshot(&path)?;
    Ok(Copy { name, path, stats, created_ms: now_ms })
}

/// What one backup made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Made {
    pub name: String,
    pub url: String,
    pub manifest: Manifest,
    /// How long the store's writers waited for the local copy, ms.
    pub held_ms: u64,
    /// Compress, upload and manifest, ms.
    pub upload_ms: u64,
    /// Backups deleted beyond `keep`.
    pub pruned: Vec<String>,
    /// Unfinished uploads of earlier backups aborted (their keys).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aborted: Vec<String>,
}

/// Hashes and counts what passes through to `inner`.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    n: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.hash.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compresses `src` into `dst` (created 0600), returning (size, sha256 hex) of the compressed file.
fn compress(src: &Path, dst: &Path) -> Result<(u64, String), BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BackupError + 'a {
        move |source| BackupError::Io { what, path: path.to_path_buf(), source }
    }
    let mut input = std::fs::File::open(src).map_err(io("reading the store's copy", src))?;
    let out = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(dst).map_err(io("writing the compressed copy", dst))?;
    let mut h = Hashing { inner: std::io::BufWriter::new(out), hash: Sha256::new(), n: 0 };
    zstd::stream::copy_encode(&mut input, &mut h, 3).map_err(io("compressing the store's copy to", dst))?;
    h.flush().map_err(io("writing the compressed copy", dst))?;
    let Hashing { inner, hash, n } = h;
    inner.into_inner().map_err(|e| e.into_error()).and_then(|f| f.sync_all()).map_err(io("writing the compressed copy", dst))?;
    Ok((n, hex(&hash.finalize())))
}

/// Compresses a copy, uploads it and its manifest, then deletes the backups beyond `keep`.
pub async fn upload(os: &ObjectStore, dest: &S3Url, copy: Copy, keep: u32) -> Result<Made, BackupError> {
    let started = Instant::now();
    let zst = tmp_path(copy.path.parent().unwrap_or(Path::new(".")), &copy.name, "zst");
    let (src, dst) = (copy.path.clone(), zst.clone());
    let compressed = tokio::task::spawn_blocking(move || compress(&src, &dst)).await;
    let res = async {
        let (bytes, sha256) = compressed.map_err(|e| BackupError::Io { what: "compressing", path: zst.clone(), source: std::io::Error::other(e) })??;
        // Before this upload, so that backups that keep failing (a large upload cut short each time)
        // still clean up after one another.
        let aborted = abort_abandoned(os, dest, copy.created_ms - ABANDONED_AFTER_MS).await;
        let url = object_url(dest, &copy.name);
        os.put_file(&url, &zst).await?;
        let manifest = Manifest {
            format: FORMAT,
            schema: copy.stats.schema,
            created_at: crate::timeutil::rfc3339(copy.created_ms),
            entries: copy.stats.entries,
            bytes,
            sha256,
            positions: copy.stats.positions.clone(),
            instances: copy.stats.instances,
        };
        let body = serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Manifest { url: url.to_string(), detail: e.to_string() })?;
        os.put_bytes(&manifest_url(dest, &copy.name), body, "application/json").await?;
        let upload_ms = started.elapsed().as_millis() as u64;
        let pruned = prune(os, dest, keep).await?;
        Ok(Made { name: copy.name.clone(), url: url.to_string(), manifest, held_ms: copy.stats.held.as_millis() as u64, upload_ms, pruned, aborted })
    }
    .await;
    let _ = std::fs::remove_file(&zst);
    res
}

/// `store backup` asked of a running watcher (through its socket): requests are numbered; the engine
/// takes a backup at its next tick for every request made so far, and each request's outcome is kept
/// (the newest [`OUTCOMES_KEPT`]) for the CLI to poll.
struct Board {
    /// A watcher with `[backup]` runs in this process.
    configured: AtomicBool,
    /// The newest request's number (0: none yet).
    asked: AtomicU64,
    /// (requests up to this number, outcome), oldest first.
    outcomes: std::sync::Mutex<std::collections::VecDeque<(u64, Result<Made, String>)>>,
}

static BOARD: Board =
    Board { configured: AtomicBool::new(false), asked: AtomicU64::new(0), outcomes: std::sync::Mutex::new(std::collections::VecDeque::new()) };
const OUTCOMES_KEPT: usize = 16;

/// This process, as the CLI polling for a backup knows it: a watcher that restarted meanwhile numbers
/// its requests afresh, so an answer about another process's request must not be taken for its own.
pub fn process_nonce() -> u64 {
    static NONCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NONCE.get_or_init(|| ((crate::timeutil::now_ms() as u64) << 20) ^ u64::from(std::process::id()))
}

/// Asks the running watcher for a backup now; `None` when it has no `[backup]`.
pub fn ask() -> Option<u64> {
    BOARD.configured.load(Ordering::Acquire).then(|| BOARD.asked.fetch_add(1, Ordering::AcqRel) + 1)
}

/// The outcome of request `seq`, once its backup is made or has failed.
pub fn outcome(seq: u64) -> Option<Result<Made, String>> {
    let o = BOARD.outcomes.lock().unwrap_or_else(|e| e.into_inner());
    o.iter().find(|(upto, _)| *upto >= seq).map(|(_, r)| r.clone())
}

fn settle(upto: u64, r: Result<Made, String>) {
    if upto == 0 {
        return;
    }
    let mut o = BOARD.outcomes.lock().unwrap_or_else(|e| e.into_inner());
    o.push_back((upto, r));
    while o.len() > OUTCOMES_KEPT {
        o.pop_front();
    }
}

/// The watcher's backups: due every `interval`, the copy taken on the engine thread between commits,
/// the rest on the runtime. One at a time: a tick while one uploads waits for the next.
pub struct BackupRun {
    cfg: BackupConfig,
    dest: S3Url,
    os: Arc<ObjectStore>,
    rt: tokio::runtime::Handle,
    next: Instant,
    busy: Arc<AtomicBool>,
    /// Requests through the socket served (a backup taken for them) up to this number.
    served: u64,
}

impl BackupRun {
    /// The first backup is due at once (a store is backed up soon after every start), then every
    /// `interval`.
    pub fn new(cfg: BackupConfig, s3: Option<&S3Config>, rt: tokio::runtime::Handle, store_dir: &Path) -> Result<BackupRun, BackupError> {
        let dest = cfg.dest().map_err(BackupError::Config)?;
        let os = ObjectStore::connect(&s3.cloned().unwrap_or_default())?;
        remove_leftovers(store_dir);
        BOARD.configured.store(true, Ordering::Release);
        let served = BOARD.asked.load(Ordering::Acquire);
        Ok(BackupRun { cfg, dest, os: Arc::new(os), rt, next: Instant::now(), busy: Arc::default(), served })
    }

    /// Called on the engine thread right after a commit: takes the copy when one is due.
    pub fn tick(&mut self, store: &Store, now_ms: i64) {
        let asked = BOARD.asked.load(Ordering::Acquire);
        if (Instant::now() < self.next && asked <= self.served) || self.busy.load(Ordering::Acquire) {
            return;
        }
        // Requests up to here are served by this backup (or told why there is none).
        let upto = if asked > self.served { asked } else { 0 };
        self.served = asked;
        self.next = Instant::now() + self.cfg.interval;
        // An empty store (a new host whose store was not restored yet) is not backed up: its backups
        // would push the real ones out of `keep`.
        if !store.has_instances() {
            tracing::info!(to = %self.dest, "no instance recorded yet: backup skipped (restore a store with `safeguard store restore` before starting a new watcher)");
            settle(upto, Err("the store holds no instance yet: nothing to back up".into()));
            return;
        }
        let copy = match copy(store, now_ms) {
            Ok(c) => c,
            Err(e) => {
                crate::store::telemetry::backup_failed();
                tracing::warn!(error = %e, "the store's backup copy failed; trying again at the next interval");
                settle(upto, Err(e.to_string()));
                return;
            }
        };
        tracing::debug!(entries = copy.stats.entries, held_ms = copy.stats.held.as_millis() as u64, "backup copy taken");
        self.busy.store(true, Ordering::Release);
        let (os, dest, keep, busy) = (self.os.clone(), self.dest.clone(), self.cfg.keep, self.busy.clone());
        self.rt.spawn(async move {
            match upload(&os, &dest, copy, keep).await {
                Ok(m) => {
                    crate::store::telemetry::backup_made(m.manifest.bytes);
                    tracing::info!(
                        backup = %m.url,
                        instances = m.manifest.instances,
                        bytes = m.manifest.bytes,
                        held_ms = m.held_ms,
                        upload_ms = m.upload_ms,
                        pruned = m.pruned.len(),
                        aborted = m.aborted.len(),
                        "store backed up"
                    );
                    settle(upto, Ok(m));
                }
                Err(e) => {
                    crate::store::telemetry::backup_failed();
                    tracing::warn!(error = %e, "the store's backup failed; trying again at the next interval");
                    settle(upto, Err(e.to_string()));
                }
            }
            busy.store(false, Ordering::Release);
        });
    }
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub name: String,
    pub url: String,
    pub store: PathBuf,
    pub created_at: String,
    pub entries: u64,
    pub instances: u64,
    pub positions: BTreeMap<String, u64>,
    /// Where the store that was replaced (`--force`) went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_aside: Option<PathBuf>,
}

/// Removes a path (file or directory) when dropped, unless disarmed.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn non_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

fn in_use(dir: &Path) -> bool {
    std::fs::File::open(dir.join("db")).is_ok_and(|f| f.try_lock().is_err())
}

/// Rebuilds a store at `target` from the newest complete backup under `dest`, or the one `name`d.
/// `progress` hears of each phase and of the download (bytes so far, total).
pub async fn restore(
    os: &ObjectStore,
    dest: &S3Url,
    name: Option<&str>,
    target: &Path,
    force: bool,
    cache_bytes: u64,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Restored, BackupError> {
    let listed = list(os, dest).await?;
    let pick = match name {
        Some(n) => {
            let n = n.trim_end_matches(OBJECT_SUFFIX).trim_end_matches(MANIFEST_SUFFIX);
            listed.into_iter().find(|l| l.name == n).ok_or_else(|| BackupError::NotFound { name: n.to_string(), prefix: dest.to_string() })?
        }
        None => listed.into_iter().find(|l| l.complete).ok_or_else(|| BackupError::NoBackups { prefix: dest.to_string() })?,
    };
    let manifest = match (&pick.manifest, &pick.problem) {
        (Some(m), None) => m.clone(),
        (_, why) => return Err(BackupError::Incomplete { name: pick.name, prefix: dest.to_string(), why: why.clone().unwrap_or_default() }),
    };
    if non_empty(target) {
        if !force {
            return Err(BackupError::NotEmpty { path: target.to_path_buf() });
        }
        if in_use(target) {
            return Err(BackupError::InUse { path: target.to_path_buf() });
        }
    }
    let url = object_url(dest, &pick.name);
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = target.file_name().map_or_else(|| "store".to_string(), |n| n.to_string_lossy().into_owned());
    let tag = format!(".{base}.restore-{}", std::process::id());
    let (zst, raw, building) = (parent.join(format!("{tag}.zst")), parent.join(format!("{tag}.sgsnap")), parent.join(&tag));
    let _cleanup = Cleanup(vec![zst.clone(), raw.clone(), building.clone()]);

    // Download and check, before anything else is written.
    progress(Progress::Downloading { url: url.to_string(), bytes: manifest.bytes });
    let (got, sha) = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(&parent).map_err(|source| BackupError::Io { what: "creating", path: parent.clone(), source })?;
        let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&zst).map_err(|source| BackupError::Io {
            what: "writing the download to",
            path: zst.clone(),
            source,
        })?;
        let mut h = Hashing { inner: std::io::BufWriter::with_capacity(1 << 20, f), hash: Sha256::new(), n: 0 };
        let mut last = 0u64;
        os.get_chunks(&url, &zst, |c| {
            h.write_all(c)?;
            if h.n - last >= 8 << 20 {
                last = h.n;
                progress(Progress::Downloaded { bytes: h.n, total: manifest.bytes });
            }
            Ok(())
        })
        .await?;
        h.flush().map_err(|source| BackupError::Io { what: "writing the download to", path: zst.clone(), source })?;
        (h.n, hex(&h.hash.finalize()))
    };
    if got != manifest.bytes {
        return Err(BackupError::Checksum { url: url.to_string(), what: "its size", expected: manifest.bytes.to_string(), got: got.to_string() });
    }
    if sha != manifest.sha256 {
        return Err(BackupError::Checksum { url: url.to_string(), what: "its SHA-256", expected: manifest.sha256.clone(), got: sha });
    }
    progress(Progress::Verified);

    let (url_s, target_b, manifest_b) = (url.to_string(), target.to_path_buf(), manifest.clone());
    let built = tokio::task::spawn_blocking(move || build(&zst, &raw, &building, &url_s, &manifest_b, cache_bytes)).await.map_err(|e| BackupError::Io {
        what: "rebuilding the store in",
        path: target_b.clone(),
        source: std::io::Error::other(e),
    })??;
    progress(Progress::Built { entries: built });

    // Into place: a replaced store is moved aside, never deleted.
    let mut moved_aside = None;
    if target.exists() {
        if non_empty(target) {
            if in_use(target) {
                return Err(BackupError::InUse { path: target.to_path_buf() });
            }
            let aside = parent.join(format!("{base}.replaced-{}", new_name(crate::timeutil::now_ms())));
            std::fs::rename(target, &aside).map_err(|source| BackupError::Io { what: "moving the current store aside to", path: aside.clone(), source })?;
            moved_aside = Some(aside);
        } else {
            std::fs::remove_dir(target).map_err(|source| BackupError::Io { what: "removing the empty directory", path: target.to_path_buf(), source })?;
        }
    }
    let building = parent.join(&tag);
    std::fs::rename(&building, target).map_err(|source| BackupError::Io { what: "moving the restored store into", path: target.to_path_buf(), source })?;
    if let Ok(d) = std::fs::File::open(&parent) {
        let _ = d.sync_all();
    }
    Ok(Restored {
        name: pick.name,
        url: url.to_string(),
        store: target.to_path_buf(),
        created_at: manifest.created_at,
        entries: manifest.entries,
        instances: manifest.instances,
        positions: manifest.positions,
        moved_aside,
    })
}

/// Decompresses the download and loads it into a new store at `building`; returns the entries loaded.
fn build(zst: &Path, raw: &Path, building: &Path, url: &str, manifest: &Manifest, cache_bytes: u64) -> Result<u64, BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let input = std::fs::File::open(zst).map_err(|source| BackupError::Io { what: "reading the download", path: zst.to_path_buf(), source })?;
    let out = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(raw).map_err(|source| BackupError::Io {
        what: "decompressing to",
        path: raw.to_path_buf(),
        source,
    })?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
    zstd::stream::copy_decode(input, &mut w).map_err(|source| BackupError::Io { what: "decompressing to", path: raw.to_path_buf(), source })?;
    w.flush().map_err(|source| BackupError::Io { what: "decompressing to", path: raw.to_path_buf(), source })?;
    drop(w);
    let _ = std::fs::remove_file(zst);
    let snap = Snapshot::open_file(raw)?.ok_or_else(|| BackupError::Io {
        what: "opening the decompressed copy",
        path: raw.to_path_buf(),
        source: std::io::ErrorKind::NotFound.into(),
    })?;
    if snap.schema() > SCHEMA_VERSION {
        return Err(BackupError::Schema { url: url.to_string(), found: snap.schema() });
    }
    if snap.len() != manifest.entries {
        return Err(BackupError::Count { url: url.to_string(), expected: manifest.entries, got: snap.len() });
    }
    if building.exists() {
        std::fs::remove_dir_all(building).map_err(|source| BackupError::Io { what: "clearing", path: building.to_path_buf(), source })?;
    }
    let store = Store::open(building, cache_bytes)?;
    let mut store_err = None;
    let res = snap.for_each_batch(RESTORE_BATCH, |batch| {
        store.load_entries(batch).map_err(|e| {
            let msg = e.to_string();
            store_err = Some(e);
            SnapshotError::Invalid { path: raw.to_path_buf(), detail: msg }
        })
    });
    if let Some(e) = store_err {
        return Err(e.into());
    }
    res?;
    store.flush()?;
    let got = store.entry_count() as u64;
    // Dropping the last handle writes the new store's read snapshot.
    drop(store);
    if got != manifest.entries {
        return Err(BackupError::Count { url: url.to_string(), expected: manifest.entries, got });
    }
    let _ = std::fs::remove_file(raw);
    Ok(got)
}

/// What a restore is doing, for a progress display.
#[derive(Debug, Clone)]
pub enum Progress {
    Downloading { url: String, bytes: u64 },
    Downloaded { bytes: u64, total: u64 },
    Verified,
    Built { entries: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BackupConfig, String> {
        let c: BackupConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn config_is_validated_naming_the_key() {
        let c = parse("to = \"s3://b/safeguard\"\n").unwrap();
        assert_eq!((c.interval, c.keep), (Duration::from_secs(3600), 48));
        assert_eq!(c.dest().unwrap().to_string(), "s3://b/safeguard/");
        for (text, key) in [
            ("interval = \"1h\"\n", "`backup.to` is required"),
            ("to = \"s3://b/x/\"\nkeep = 0\n", "`backup.keep`"),
            ("to = \"s3://b/x/\"\ninterval = \"0s\"\n", "`backup.interval`"),
            ("to = \"http://b/x/\"\n", "`backup.to`"),
            ("to = \"s3://b\"\n", "`backup.to`"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn names_sort_by_time_and_only_ours_are_recognised() {
        let a = new_name(1_714_558_830_123);
        assert!(a.starts_with("20240501T102030Z-"), "{a}");
        assert!(valid_name(&a));
        assert_eq!(name_time(&a), "2024-05-01T10:20:30Z");
        assert!(new_name(1_714_558_831_000) > a);
        assert_eq!(parse_key(&format!("{a}.sgsnap.zst")), Some((a.as_str(), false)));
        assert_eq!(parse_key(&format!("{a}.json")), Some((a.as_str(), true)));
        for other in ["notes.json", "x.sgsnap.zst", &format!("{a}.sgsnap"), &format!("{a}x.json"), "20240501T102030Z-zzzzzz.json"] {
            assert_eq!(parse_key(other), None, "{other}");
        }
    }

    #[test]
    fn compress_hashes_what_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&src, vec![7u8; 100_000]).unwrap();
        let (n, sha) = compress(&src, &dst).unwrap();
        let bytes = std::fs::read(&dst).unwrap();
        assert_eq!(n, bytes.len() as u64);
        assert_eq!(sha, hex(&Sha256::digest(&bytes)));
        assert_eq!(zstd::decode_all(&bytes[..]).unwrap(), vec![7u8; 100_000]);
    }
}
