//! The embedded sled store: instance records, attribution indexes, source positions, counters and effects.
//! Every write goes through [`Store::commit`], one atomic batch followed by a flush.

pub mod backup;
pub mod keys;
pub mod query;
pub mod snapshot;
pub mod tally;
pub mod telemetry;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::state::InstanceRecord;

/// 2: records carry the facts behind their fields (`state::Facts`); schema 1 stores are migrated on open.
/// 3: counts and indexes kept in the commit ([`tally`]); a release that does not keep them must not write
/// the store (its counts would go stale), so 3 is refused by it. 2 -> 3 is the version only: an engine
/// builds the indexes when it opens the store ([`Store::ensure_index`]).
pub const SCHEMA_VERSION: u32 = 3;

/// `[store]`: where the store lives (`--store` / `SAFEGUARD_STORE` win) and how much it caches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub path: Option<PathBuf>,
    /// sled's page cache; bounds the watcher's memory.
    pub cache_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { path: None, cache_mb: 64 }
    }
}

/// The largest page cache accepted (1 TiB): more is a typo, and its size in bytes must not overflow.
pub const MAX_CACHE_MB: u64 = 1 << 20;

impl StoreConfig {
    /// sled panics on a zero cache and a byte count past u64 cannot be given; refused here, by key.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_CACHE_MB).contains(&self.cache_mb) {
            return Err(format!("`store.cache_mb` = {} must be between 1 and {MAX_CACHE_MB} (MiB of page cache; 64 is the default)", self.cache_mb));
        }
        Ok(())
    }

    pub fn cache_bytes(&self) -> u64 {
        self.cache_mb.min(MAX_CACHE_MB) << 20
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("there is no store at {path}; check --store / SAFEGUARD_STORE (a store is created by `safeguard watch` or `safeguard ingest`)")]
    Missing { path: PathBuf },
    #[error("the store at {path} is in use by another safeguard process (a running `safeguard watch`?); stop it, or query it through that process")]
    Locked { path: PathBuf },
    #[error("cannot open the store at {path}: {}", open_hint(source))]
    Open { path: PathBuf, source: sled::Error },
    #[error("the store at {path} has schema version {found}, this safeguard understands {expected}; use a matching safeguard release")]
    Schema { path: PathBuf, found: String, expected: u32 },
    #[error("cannot read the store at {path} without writing it: copying its files to {copy} failed: {source}; free space in the temporary directory (TMPDIR), or start the watcher and ask it")]
    ReadCopy { path: PathBuf, copy: PathBuf, source: std::io::Error },
    #[error("store I/O failed: {}", io_hint(.0))]
    Io(#[from] sled::Error),
    #[error("a stored record under {key} is corrupt: {source}")]
    Corrupt { key: String, source: serde_json::Error },
    #[error("cannot encode {key} for the store: {source}; nothing was written (a bug: report it)")]
    Encode { key: String, source: serde_json::Error },
    #[error("cannot remove the read snapshot {path} before writing: {source}; remove it by hand (it is rebuilt when the store next closes)")]
    StaleSnapshot { path: PathBuf, source: std::io::Error },
    #[error("writing a copy of the store to {path} failed: {source}; free space on the disk holding it (the store itself is unchanged)")]
    Copy { path: PathBuf, source: std::io::Error },
}

/// What a consistent copy of the store holds, counted while it was written ([`Store::write_backup_snapshot`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyStats {
    pub schema: u32,
    pub entries: u64,
    pub instances: u64,
    /// Each source's position (its stored key, without `p/`) -> offset.
    pub positions: BTreeMap<String, u64>,
    /// How long the writers were held off.
    pub held: std::time::Duration,
}

fn disk_full(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28) || io.to_string().contains("No space left"),
        _ => false,
    }
}

/// How often sled's background thread wakes (sled's default is 500 ms) to flush, clean segments and
/// fsync. Every write here is followed by an explicit flush, so nothing depends on that thread for
/// durability: it keeps the same share of time for cleaning (up to half of each period) but wakes a
/// quarter as often, so an idle watcher stays idle (issue 16: about 0.3% of a core at 500 ms).
pub const SLED_BACKGROUND_EVERY_MS: u64 = 2_000;

fn sled_config(path: &Path, cache_bytes: u64) -> sled::Config {
    sled::Config::new().path(path).cache_capacity(cache_bytes).flush_every_ms(Some(SLED_BACKGROUND_EVERY_MS))
}

const FULL_HINT: &str = "the disk holding the store is full: free space on it (or copy the store directory to a larger disk and point --store there) and run again; what was committed before is intact, and an ingest resumes where it stopped";

fn open_hint(e: &sled::Error) -> String {
    if disk_full(e) {
        format!("{e}; {FULL_HINT}")
    } else {
        format!("{e}; check the directory exists and is writable (--store / SAFEGUARD_STORE)")
    }
}

fn io_hint(e: &sled::Error) -> String {
    if disk_full(e) {
        format!("{e}; {FULL_HINT}")
    } else {
        e.to_string()
    }
}

/// Line and event counts the store keeps, committed with the state they describe (so they survive
/// restarts and are exact across replays).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub lines_read: u64,
    pub lines_relevant: u64,
    pub lines_attributed: u64,
    pub lines_unattributed: u64,
    pub lines_rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub lines_replayed_skipped: u64,
    /// Lines waiting now for the line that names their instance (a gauge, not a total).
    #[serde(default)]
    pub lines_parked: u64,
    /// Parked lines given up (too old, or too many parked); also counted in `lines_unattributed`.
    #[serde(default)]
    pub lines_expired_unattributed: u64,
    pub events_applied: u64,
    pub effects: u64,
    /// The same line counts by source kind (`syslog`, `file`, `stdin`, `kafka:<topic>`).
    #[serde(default)]
    pub by_source: BTreeMap<String, SourceCounters>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCounters {
    pub lines_read: u64,
    pub lines_relevant: u64,
    pub lines_rejected: u64,
}

impl SourceCounters {
    pub fn add(&mut self, o: &SourceCounters) {
        self.lines_read += o.lines_read;
        self.lines_relevant += o.lines_relevant;
        self.lines_rejected += o.lines_rejected;
    }
}

impl Counters {
    /// What changed since `before` (gauges keep their current value).
    pub fn since(&self, before: &Counters) -> Counters {
        let after = self;
        let mut d = Counters {
            lines_read: after.lines_read - before.lines_read,
            lines_relevant: after.lines_relevant - before.lines_relevant,
            lines_attributed: after.lines_attributed - before.lines_attributed,
            lines_unattributed: after.lines_unattributed - before.lines_unattributed,
            lines_rejected: after.lines_rejected - before.lines_rejected,
            lines_replayed_skipped: after.lines_replayed_skipped - before.lines_replayed_skipped,
            events_applied: after.events_applied - before.events_applied,
            effects: after.effects - before.effects,
            // A gauge: what waits now, not a difference.
            lines_parked: after.lines_parked,
            lines_expired_unattributed: after.lines_expired_unattributed - before.lines_expired_unattributed,
            ..Default::default()
        };
        for (k, v) in &after.rejected_by_reason {
            let b = before.rejected_by_reason.get(k).copied().unwrap_or(0);
            if *v > b {
                d.rejected_by_reason.insert(k.clone(), v - b);
            }
        }
        d
    }

    /// One line for people: lines read, relevant, attributed, unattributed, rejected (by reason), replayed, waiting.
    pub fn text(&self) -> String {
        let c = self;
        let mut s = format!(
            "{} lines read, {} relevant, {} attributed, {} unattributed, {} rejected",
            c.lines_read, c.lines_relevant, c.lines_attributed, c.lines_unattributed, c.lines_rejected
        );
        if !c.rejected_by_reason.is_empty() {
            let reasons: Vec<String> = c.rejected_by_reason.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let _ = write!(s, " ({})", reasons.join(", "));
        }
        if c.lines_replayed_skipped > 0 {
            let _ = write!(s, ", {} already applied (skipped)", c.lines_replayed_skipped);
        }
        if c.lines_parked > 0 {
            let _ = write!(s, ", {} waiting for the line that names their instance or dates their year (see `ingest --year`)", c.lines_parked);
        }
        if c.lines_expired_unattributed > 0 {
            let _ = write!(s, ", {} given up unattributed", c.lines_expired_unattributed);
        }
        s
    }
}

/// How far a source has been applied. For files, the byte offset after the last applied line; for Kafka,
/// the next offset to read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub offset: u64,
    /// A human hint for where the source is (a file path).
    #[serde(default)]
    pub name: String,
    #[serde(with = "crate::timeutil::serde_ms")]
    pub updated_at: i64,
    /// The source's year clock at `offset`, so a restart resolves RFC 3164 years as a clean run would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<crate::parse::YearClock>,
    /// FNV-1a of the (up to) 4 KiB before `offset`: a resumed file must show the same bytes there, or it
    /// is another stream that happens to share a first line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<Tail>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tail {
    pub len: u32,
    pub hash: u64,
}

/// A line whose instance is not known yet, kept until the line that names it arrives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parked {
    pub seq: u64,
    /// Wall-clock time it was parked (its age bound).
    #[serde(with = "crate::timeutil::serde_ms")]
    pub parked_at: i64,
    pub event: crate::parse::Event<'static>,
    /// Attributed already, but its year was guessed and the instance has no anchored time yet.
    #[serde(default)]
    pub instance: Option<String>,
}

/// Everything one commit writes.
#[derive(Default)]
pub struct WriteSet<'a> {
    /// Changed records; their index entries (nodes, pending deletion) are derived from them.
    pub records: Vec<&'a InstanceRecord>,
    pub positions: Vec<(String, Position)>,
    pub counters: Option<&'a Counters>,
    /// New outbox entries, committed with the state change that raised them.
    pub alerts: Vec<safeguard_core::alerts::Alert>,
    pub parked: Vec<&'a Parked>,
    pub unparked: Vec<u64>,
    /// When this commit happens: what standings are assessed at.
    pub now: i64,
    /// Unchanged records visited for their deadline or the absence rules (`true`: the rules looked).
    pub revisited: Vec<(&'a InstanceRecord, bool)>,
    /// Ids in the deadline or unevaluated index with no record behind them.
    pub missing: Vec<String>,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    snap: Arc<SnapshotKeeper>,
    /// Serializes the writers (the engine's commit, the sender's alert updates, retention) so the counts
    /// they read, change and write back stay exact.
    write: Arc<std::sync::Mutex<tally::Indexer>>,
    /// A read-only open's private copy of sled's files (removed when the last handle drops).
    _copy: Option<Arc<ReadCopy>>,
}

/// A temporary directory holding a copy of a store's sled files, so a query can open sled (which
/// writes while it opens) without writing the store itself.
struct ReadCopy(PathBuf);

impl Drop for ReadCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Keeps `<store>/snapshot` true (see [`snapshot`]): removed before this open's first write, written
/// again when the last handle closes.
struct SnapshotKeeper {
    db: sled::Db,
    dir: PathBuf,
    removed: AtomicBool,
    /// A read copy's store: its snapshot is written only while nobody holds this store's `db` lock
    /// (so no writer can be between its first write and our copy).
    guard: Option<PathBuf>,
}

impl SnapshotKeeper {
    fn before_write(&self) -> Result<(), StoreError> {
        if self.guard.is_some() {
            // A read copy's own writes (a migration) are not the store's: leave its snapshot alone, and
            // write none from the changed copy.
            self.removed.store(true, Ordering::Release);
            return Ok(());
        }
        if !self.removed.load(Ordering::Acquire) {
            snapshot::remove(&self.dir).map_err(|source| StoreError::StaleSnapshot { path: snapshot::path_in(&self.dir), source })?;
            self.removed.store(true, Ordering::Release);
        }
        Ok(())
    }
}

impl Drop for SnapshotKeeper {
    fn drop(&mut self) {
        // Still holding sled's lock here, so no writer can slip in between the last write and the copy.
        if !self.removed.load(Ordering::Acquire) && snapshot::path_in(&self.dir).exists() {
            return;
        }
        if self.guard.is_some() && self.removed.load(Ordering::Acquire) {
            return;
        }
        // A read copy writes the store's snapshot only while no process has the store open.
        let _held = match &self.guard {
            Some(store) => match std::fs::File::open(store.join("db")) {
                Ok(f) if f.try_lock().is_ok() => Some(f),
                _ => return,
            },
            None => None,
        };
        // A store of another schema (refused at open) is not this release's to copy.
        if !matches!(self.db.get(keys::SCHEMA), Ok(Some(v)) if v.as_ref() == SCHEMA_VERSION.to_string().as_bytes()) {
            return;
        }
        let started = std::time::Instant::now();
        match self.db.flush().map_err(std::io::Error::other).and_then(|_| snapshot::write(&self.dir, SCHEMA_VERSION, &self.db)) {
            Ok(n) => tracing::debug!(entries = n, ms = started.elapsed().as_millis() as u64, "wrote the read snapshot"),
            Err(e) => {
                tracing::warn!(store = %self.dir.display(), error = %e, "could not write the read snapshot; queries without a watcher will open the store instead (slower)")
            }
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store. `cache_bytes` bounds sled's page cache.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        owner_only_dir(path).map_err(|e| StoreError::Open { path: path.to_path_buf(), source: e.into() })?;
        remove_unfinished_snapshots(path);
        let db = sled_config(path, cache_bytes).open().map_err(|e| match &e {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") => {
                StoreError::Locked { path: path.to_path_buf() }
            }
            _ => {
                // An open that failed (a full disk) must not leave what breaks the next one.
                remove_unfinished_snapshots(path);
                StoreError::Open { path: path.to_path_buf(), source: e }
            }
        })?;
        // sled creates its files with the caller's umask; the directory's mode already shuts others
        // out, and the files follow so that a copy of the directory does not open up again.
        owner_only_files(path, 3);
        let snap = Arc::new(SnapshotKeeper { db: db.clone(), dir: path.to_path_buf(), removed: AtomicBool::new(false), guard: None });
        Self::settle_schema(&db, &snap, path)?;
        Ok(Store { db, path: path.to_path_buf(), snap, write: Arc::default(), _copy: None })
    }

    /// Brings a just-opened database to this release's schema: a new one gets it, a schema 1 one is
    /// migrated, another is refused.
    fn settle_schema(db: &sled::Db, snap: &SnapshotKeeper, path: &Path) -> Result<(), StoreError> {
        match db.get(keys::SCHEMA)? {
            None => {
                snap.before_write()?;
                db.insert(keys::SCHEMA, SCHEMA_VERSION.to_string().as_bytes())?;
                db.flush()?;
            }
            Some(v) if v.as_ref() == SCHEMA_VERSION.to_string().as_bytes() => {}
            Some(v) if v.as_ref() == b"1" => {
                snap.before_write()?;
                let n = migrate_v1(db)?;
                tracing::info!(store = %path.display(), records = n, "migrated the store from schema 1 to 3 (records now keep the facts behind them)");
            }
            Some(v) if v.as_ref() == b"2" => {
                snap.before_write()?;
                db.insert(keys::SCHEMA, SCHEMA_VERSION.to_string().as_bytes())?;
                db.flush()?;
                tracing::info!(store = %path.display(), "store schema 2 -> 3 (counts and indexes are built when the engine opens it)");
            }
            Some(v) => return Err(StoreError::Schema { path: path.to_path_buf(), found: String::from_utf8_lossy(&v).into_owned(), expected: SCHEMA_VERSION }),
        }
        Ok(())
    }

    /// Opens an existing store for reading without writing it: sled writes while it opens (and on a
    /// full disk left files that broke the next open), so it opens a private copy of the store's files,
    /// taken while no process holds the store. The read snapshot it leaves behind is written into the
    /// store only if still nobody holds it then. `Locked` when a process has the store open.
    pub fn open_read_only(path: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        if no_store_at(path) {
            return Err(StoreError::Missing { path: path.to_path_buf() });
        }
        let open_err = |e: std::io::Error| StoreError::Open { path: path.to_path_buf(), source: e.into() };
        let lock = std::fs::File::open(path.join("db")).map_err(open_err)?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked { path: path.to_path_buf() });
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let copy = ReadCopy(std::env::temp_dir().join(format!("safeguard-read-{}-{nanos}", std::process::id())));
        owner_only_dir(&copy.0).map_err(open_err)?;
        copy_sled_files(path, &copy.0).map_err(|e| StoreError::ReadCopy { path: path.to_path_buf(), copy: copy.0.clone(), source: e })?;
        drop(lock);
        let db = sled_config(&copy.0, cache_bytes).open().map_err(|e| StoreError::Open { path: path.to_path_buf(), source: e })?;
        let snap = Arc::new(SnapshotKeeper { db: db.clone(), dir: path.to_path_buf(), removed: AtomicBool::new(false), guard: Some(path.to_path_buf()) });
        // A schema 1 store is migrated in the copy only: the query reads it as this release does.
        Self::settle_schema(&db, &snap, path)?;
        Ok(Store { db, path: path.to_path_buf(), snap, write: Arc::default(), _copy: Some(Arc::new(copy)) })
    }

    /// Opens the store for writing, waiting up to `wait` while another process holds it: a CLI query
    /// that opened the store directly holds it for milliseconds, and a watcher starting at that moment
    /// must not die of it. A running watcher still refuses after the wait, with the Locked error.
    pub fn open_waiting(path: &Path, cache_bytes: u64, wait: std::time::Duration) -> Result<Store, StoreError> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match Store::open(path, cache_bytes) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// Opens an existing store only: queries must not create an empty store at a mistyped path (nor
    /// take the lock of a store a watcher is about to open).
    pub fn open_existing(path: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        if no_store_at(path) {
            return Err(StoreError::Missing { path: path.to_path_buf() });
        }
        Store::open(path, cache_bytes)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema_version(&self) -> Result<Option<String>, StoreError> {
        Ok(self.db.get(keys::SCHEMA)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Bytes under the store directory (sled's files, blobs, the read snapshot).
    pub fn size_on_disk(&self) -> u64 {
        dir_size(&self.path)
    }

    pub(crate) fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], v: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(v).map_err(|source| StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), source })
    }

    pub fn record(&self, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        let k = keys::instance(id);
        self.db.get(&k)?.map(|v| Self::decode(&k, &v)).transpose()
    }

    /// All records, in id order. Yields errors for corrupt entries instead of stopping.
    pub fn records(&self) -> impl Iterator<Item = Result<InstanceRecord, StoreError>> + '_ {
        self.db.scan_prefix(keys::INSTANCE).map(|r| {
            let (k, v) = r?;
            Self::decode(&k, &v)
        })
    }

    pub fn instance_of_node(&self, node_uuid: &str) -> Result<Option<String>, StoreError> {
        Ok(self.db.get(keys::node(node_uuid))?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Instances whose id starts with `short` (at most `limit`): the script prefix `6e101b-backup>`.
    /// Instance keys sort by id, so this is a prefix scan, with no index to keep.
    pub fn instances_with_short(&self, short: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let p = keys::instance(short);
        let mut out = Vec::new();
        for r in self.db.scan_prefix(&p).take(limit) {
            let (k, _) = r?;
            out.push(String::from_utf8_lossy(&k[keys::INSTANCE.len()..]).into_owned());
        }
        Ok(out)
    }

    /// Instances with a deletion episode not yet final, with the earliest such episode's time (`None`
    /// for an entry written before it was kept).
    pub fn pending_deletions(&self) -> Result<Vec<(String, Option<i64>)>, StoreError> {
        let p = keys::PENDING.as_bytes();
        self.db
            .scan_prefix(p)
            .map(|r| {
                let (k, v) = r?;
                let at = <[u8; 8]>::try_from(v.as_ref()).ok().map(i64::from_be_bytes);
                Ok((String::from_utf8_lossy(&k[p.len()..]).into_owned(), at))
            })
            .collect()
    }

    /// Every parked line, oldest first.
    pub fn parked(&self) -> Result<Vec<Parked>, StoreError> {
        self.db
            .scan_prefix(keys::PARKED)
            .map(|r| {
                let (k, v) = r?;
                Self::decode(&k, &v)
            })
            .collect()
    }

    pub fn position(&self, source: &str) -> Result<Option<Position>, StoreError> {
        let k = keys::position(source);
        self.db.get(&k)?.map(|v| Self::decode(&k, &v)).transpose()
    }

    pub fn positions(&self) -> Result<Vec<(String, Position)>, StoreError> {
        self.db
            .scan_prefix(keys::POSITION)
            .map(|r| {
                let (k, v) = r?;
                Self::position_entry(&k, &v)
            })
            .collect()
    }

    /// A `p/<source>` entry as (source, position).
    pub(crate) fn position_entry(k: &[u8], v: &[u8]) -> Result<(String, Position), StoreError> {
        Ok((String::from_utf8_lossy(&k[keys::POSITION.len()..]).into_owned(), Self::decode(k, v)?))
    }

    pub fn counters(&self) -> Result<Counters, StoreError> {
        Ok(self.db.get(keys::COUNTERS)?.map(|v| Self::decode(keys::COUNTERS, &v)).transpose()?.unwrap_or_default())
    }

    pub fn alert(&self, id: &str) -> Result<Option<safeguard_core::alerts::Alert>, StoreError> {
        let k = keys::alert(id);
        self.db.get(&k)?.map(|v| Self::decode(&k, &v)).transpose()
    }

    /// In the outbox, or retired past retention (its id is kept so it is never raised again).
    pub fn alert_exists(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.db.contains_key(keys::alert(id))? || self.db.contains_key(keys::tombstone(id))?)
    }

    pub fn alerts(&self) -> impl Iterator<Item = Result<safeguard_core::alerts::Alert, StoreError>> + '_ {
        self.db.scan_prefix(keys::ALERT).map(|r| {
            let (k, v) = r?;
            Self::decode(&k, &v)
        })
    }

    /// Updates an alert's delivery state. The engine only ever creates alerts (in [`Store::commit`]);
    /// the sender and `alerts retry` only update existing ones, so the two never race on a key.
    pub fn put_alert(&self, a: &safeguard_core::alerts::Alert) -> Result<(), StoreError> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.alert(&a.id)?;
        if old.is_none() && self.db.contains_key(keys::tombstone(&a.id))? {
            // Retired while the sender held its copy: it stays retired.
            tracing::debug!(alert = %a.id, "not writing back an alert retired meanwhile");
            return Ok(());
        }
        self.write_alerts([(old.as_ref(), a)])
    }

    /// Changes an alert in the outbox under the write lock (`alerts retry`): nothing can retire or
    /// update it between the read and the write. `None` when it is not in the outbox.
    pub fn update_alert(&self, id: &str, f: impl FnOnce(&mut safeguard_core::alerts::Alert)) -> Result<Option<safeguard_core::alerts::Alert>, StoreError> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let Some(old) = self.alert(id)? else { return Ok(None) };
        let mut a = old.clone();
        f(&mut a);
        // Most updates from the deliveries topic change nothing: no write, no flush.
        if a != old {
            self.write_alerts([(Some(&old), &a)])?;
        }
        Ok(Some(a))
    }

    /// Updates several alerts in one batch and one flush (a standby deferring what it may not send);
    /// ids not in the outbox and alerts `f` leaves unchanged are skipped.
    pub fn update_alerts(&self, ids: &[String], mut f: impl FnMut(&mut safeguard_core::alerts::Alert)) -> Result<usize, StoreError> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = Vec::new();
        for id in ids {
            let Some(old) = self.alert(id)? else { continue };
            let mut a = old.clone();
            f(&mut a);
            if a != old {
                changed.push((old, a));
            }
        }
        if !changed.is_empty() {
            self.write_alerts(changed.iter().map(|(old, a)| (Some(old), a)))?;
        }
        Ok(changed.len())
    }

    /// Writes alerts in one batch and one flush, moving their index entries and the counts; the caller
    /// holds the write lock.
    fn write_alerts<'a>(
        &self,
        changes: impl IntoIterator<Item = (Option<&'a safeguard_core::alerts::Alert>, &'a safeguard_core::alerts::Alert)>,
    ) -> Result<(), StoreError> {
        self.snap.before_write().inspect_err(|_| telemetry::failed("snapshot"))?;
        let kept = self.alert_tally()?;
        let mut t = kept.clone().unwrap_or_default();
        let mut b = sled::Batch::default();
        for (old, a) in changes {
            b.insert(keys::alert(&a.id), encode(&a.id, a)?);
            tally::index_changed_alert(&mut b, &mut t, old, a);
        }
        if kept.is_some() {
            b.insert(keys::ALERT_TALLY, encode("the alert counts", &t)?);
        }
        self.db.apply_batch(b).inspect_err(|_| telemetry::failed("alert_update"))?;
        self.db.flush().inspect_err(|_| telemetry::failed("alert_update"))?;
        Ok(())
    }

    /// Writes everything in one atomic batch, then flushes to disk: when this returns Ok, the state, the
    /// effects it caused and the source positions it covers are all durable, or none of them are.
    pub fn commit(&self, ws: WriteSet<'_>) -> Result<(), StoreError> {
        let w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let started = std::time::Instant::now();
        self.snap.before_write().inspect_err(|_| telemetry::failed("snapshot"))?;
        let mut b = sled::Batch::default();
        // Counts are kept only with the parameters an engine settled; a write without them drops the
        // counts (readers recount, the next engine indexes again) rather than let them go stale.
        let mut counts = match w.params {
            Some(p) => self.tally()?.map(|t| (p, t)),
            None => None,
        };
        if counts.is_none() && (!ws.records.is_empty() || !ws.revisited.is_empty()) {
            b.remove(keys::TALLY);
        }
        for r in &ws.records {
            put_record(&mut b, r)?;
            if let Some((p, t)) = counts.as_mut() {
                tally::index_record(&self.db, &mut b, t, r, ws.now, p, false)?;
            }
        }
        for (r, evaluated) in &ws.revisited {
            if let Some((p, t)) = counts.as_mut() {
                tally::index_record(&self.db, &mut b, t, r, ws.now, p, *evaluated)?;
            }
        }
        for id in &ws.missing {
            tally::forget(&self.db, &mut b, counts.as_mut().map(|(_, t)| t), id)?;
        }
        if let Some((_, t)) = &counts {
            b.insert(keys::TALLY, encode("the instance counts", t)?);
        }
        if !ws.alerts.is_empty() {
            let kept = self.alert_tally()?;
            let mut t = kept.clone().unwrap_or_default();
            for a in &ws.alerts {
                tally::index_new_alert(&mut b, &mut t, a);
            }
            if kept.is_some() {
                b.insert(keys::ALERT_TALLY, encode("the alert counts", &t)?);
            }
        }
        for (src, pos) in &ws.positions {
            b.insert(keys::position(src), encode(src, pos)?);
        }
        for a in &ws.alerts {
            b.insert(keys::alert(&a.id), encode(&a.id, a)?);
        }
        for p in &ws.parked {
            let v = encode(&format!("parked line {}", p.seq), p)?;
            b.insert(keys::parked(p.seq), v);
        }
        for seq in &ws.unparked {
            b.remove(keys::parked(*seq));
        }
        if let Some(c) = ws.counters {
            b.insert(keys::COUNTERS, encode("the counters", c)?);
        }
        self.db.apply_batch(b).inspect_err(|_| telemetry::failed("commit"))?;
        self.db.flush().inspect_err(|_| telemetry::failed("flush"))?;
        telemetry::commit_took(started.elapsed());
        Ok(())
    }
}

impl Store {
    /// Writes a consistent point-in-time copy of everything the store holds to `path`, in the read
    /// snapshot's format ([`snapshot::write_file`]), while holding the write lock: no commit, alert
    /// update or retirement runs meanwhile, so the records, indexes, counts, outbox and source positions
    /// in it are those of one moment between commits. The writers wait only for this local, sequential
    /// copy; compressing and uploading it is the caller's, after this returns.
    pub fn write_backup_snapshot(&self, path: &Path) -> Result<CopyStats, StoreError> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let started = std::time::Instant::now();
        let schema = self.schema_version()?.and_then(|v| v.parse().ok()).unwrap_or(SCHEMA_VERSION);
        let mut stats = CopyStats { schema, ..CopyStats::default() };
        let res = snapshot::write_file(path, schema, &self.db, |k, v| {
            if k.starts_with(keys::INSTANCE.as_bytes()) {
                stats.instances += 1;
            } else if k.starts_with(keys::POSITION.as_bytes()) {
                if let Ok((src, pos)) = Self::position_entry(k, v) {
                    stats.positions.insert(src, pos.offset);
                }
            }
        });
        match res {
            Ok(n) => {
                stats.entries = n;
                stats.held = started.elapsed();
                Ok(stats)
            }
            Err(source) => {
                let _ = std::fs::remove_file(path);
                Err(StoreError::Copy { path: path.to_path_buf(), source })
            }
        }
    }

    /// Writes entries as they are (a restore rebuilding a store from a backup's copy) in one atomic
    /// batch, under the write lock. Only for a store being rebuilt: nothing else may run on it, and the
    /// entries must be a whole store's (their counts and indexes come with them).
    pub fn load_entries(&self, entries: Vec<snapshot::KeyValue>) -> Result<(), StoreError> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        self.snap.before_write()?;
        let mut b = sled::Batch::default();
        for (k, v) in entries {
            b.insert(k, v);
        }
        self.db.apply_batch(b)?;
        Ok(())
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// True when at least one instance is recorded.
    pub fn has_instances(&self) -> bool {
        self.db.scan_prefix(keys::INSTANCE).next().is_some()
    }

    /// Entries in the store (a fresh one holds only its schema version).
    pub fn entry_count(&self) -> usize {
        self.db.len()
    }
}

/// A record and the index entries derived from it: its nodes, and whether a deletion of it awaits `tick`.
fn put_record(b: &mut sled::Batch, r: &InstanceRecord) -> Result<(), StoreError> {
    let v = compact_json(r).map_err(|source| StoreError::Encode { key: r.instance_id.clone(), source })?;
    b.insert(keys::instance(&r.instance_id), v);
    for n in &r.nodes {
        b.insert(keys::node(&n.node_uuid), r.instance_id.as_bytes());
    }
    if r.needs_tick() {
        // The earliest episode not yet final: `tick` loads the record only once its grace can have passed.
        let first = r.facts.episodes.iter().filter(|e| !r.facts.finalized.contains(e)).min().copied().unwrap_or(0);
        b.insert(keys::pending(&r.instance_id), &first.to_be_bytes()[..]);
    } else {
        b.remove(keys::pending(&r.instance_id));
    }
    Ok(())
}

/// Schema 1 -> 2 in one atomic batch: every record gets the facts its fields imply, the pending index is
/// rebuilt for the new meaning (an episode not yet final), and the schema key moves to 2.
fn migrate_v1(db: &sled::Db) -> Result<usize, StoreError> {
    let rules = crate::state::Rules::default();
    let mut b = sled::Batch::default();
    let mut n = 0;
    for r in db.scan_prefix(keys::INSTANCE) {
        let (k, v) = r?;
        let mut rec: InstanceRecord = Store::decode(&k, &v)?;
        crate::state::migrate_v1(&mut rec, &rules);
        put_record(&mut b, &rec)?;
        n += 1;
    }
    b.insert(keys::SCHEMA, SCHEMA_VERSION.to_string().as_bytes());
    db.apply_batch(b)?;
    db.flush()?;
    Ok(n)
}

pub(crate) fn encode<T: Serialize + ?Sized>(key: &str, v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|source| StoreError::Encode { key: key.to_string(), source })
}

/// JSON without the fields that hold their default (null, false, 0, empty): records decode with
/// `#[serde(default)]`, and a smaller store opens faster (sled's recovery scales with its size).
pub fn compact_json<T: Serialize>(v: &T) -> Result<Vec<u8>, serde_json::Error> {
    fn strip(v: &mut serde_json::Value) -> bool {
        use serde_json::Value;
        match v {
            Value::Null | Value::Bool(false) => true,
            Value::Number(n) => n.as_u64() == Some(0),
            Value::String(s) => s.is_empty(),
            Value::Array(a) => {
                for x in a.iter_mut() {
                    strip(x);
                }
                a.is_empty()
            }
            Value::Object(m) => {
                m.retain(|_, x| !strip(x));
                m.is_empty()
            }
            Value::Bool(true) => false,
        }
    }
    let mut value = serde_json::to_value(v)?;
    strip(&mut value);
    serde_json::to_vec(&value)
}

/// Bytes of the files under `dir`, recursively: one figure for the store whether sled is open (the
/// watcher answers) or not (the snapshot answers). Unreadable entries count as 0.
/// True when `path` holds no store (nothing there, or a directory without sled's files).
fn no_store_at(path: &Path) -> bool {
    !path.exists() || (path.is_dir() && !path.join("conf").exists() && !path.join("db").exists())
}

/// Copies sled's files of the store at `from` into `to` (its log, config, blobs and finished snapshots).
fn copy_sled_files(from: &Path, to: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(from)?.flatten() {
        let name = e.file_name();
        let n = name.to_string_lossy();
        let keep = n == "db" || n == "conf" || n == "blobs" || (n.starts_with("snap.") && !n.ends_with(".generating"));
        if !keep {
            continue;
        }
        if e.file_type()?.is_dir() {
            owner_only_dir(&to.join(&name))?;
            for b in std::fs::read_dir(e.path())?.flatten() {
                std::fs::copy(b.path(), to.join(&name).join(b.file_name()))?;
            }
        } else {
            std::fs::copy(e.path(), to.join(&name))?;
        }
    }
    Ok(())
}

/// Removes sled's unfinished snapshot files (`snap.*.generating`) when no process holds the store. sled
/// writes one while it opens; on a full disk it is left empty, and every later open of the store then
/// fails ("Read corrupted data"), even on a larger disk. A finished snapshot is renamed from it, so an
/// unfinished one is never needed.
fn remove_unfinished_snapshots(dir: &Path) {
    let Ok(db) = std::fs::File::open(dir.join("db")) else { return };
    // sled holds an exclusive lock on `db` while open: only a store nobody has open is touched.
    if db.try_lock().is_err() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(e.path()) {
                Ok(()) => tracing::info!(file = %e.path().display(), "removed an unfinished sled snapshot (a full disk or a crash while opening left it)"),
                Err(err) => {
                    tracing::warn!(file = %e.path().display(), error = %err, "could not remove an unfinished sled snapshot; the store may not open until it is removed")
                }
            }
        }
    }
    let _ = db.unlock();
}

/// Creates the store directory (and its parents) if needed and makes it the owner's only (0700),
/// whatever the umask: it holds every instance's history, the alert outbox and the query socket. The
/// one place store permissions are decided.
pub fn owner_only_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let m = std::fs::metadata(dir)?;
    if m.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Takes group and other permissions off everything under `dir` (files 0600, directories 0700), `depth`
/// levels down. Best effort: a file that vanished or is not ours is left alone.
pub fn owner_only_files(dir: &Path, depth: u32) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        let mode = m.permissions().mode();
        if m.is_dir() {
            if mode & 0o077 != 0 {
                let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o700));
            }
            if depth > 1 {
                owner_only_files(&e.path(), depth - 1);
            }
        } else if m.is_file() && mode & 0o077 != 0 {
            let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode & 0o700));
        }
    }
}

pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}
