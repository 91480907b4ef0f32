//! Read access for the CLI. sled allows one process per store, so while `safeguard watch` runs it owns
//! the store and answers queries on a unix socket in the store directory. Otherwise the CLI reads the
//! snapshot the last clean close left (`store::snapshot`: no sled open, milliseconds on any size), or,
//! when there is none, opens the store itself. All paths return the same types, so output does not
//! depend on which was used.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::risk::{assess, RiskRules};
use crate::state::{InstanceRecord, Status};
use crate::store::snapshot::{Snapshot, SnapshotError};
use crate::store::tally::{AlertTally, Tally};
use crate::store::{keys, Counters, Position, Store, StoreError, SCHEMA_VERSION};

pub const SOCKET_NAME: &str = "safeguard.sock";

/// `[risk]`: when a live instance counts as at risk in listings (`instances --at-risk`), reports and
/// `/metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskConfig {
    #[serde(deserialize_with = "crate::settings::duration")]
    pub max_base_backup_age: Duration,
    #[serde(deserialize_with = "crate::settings::duration")]
    pub wal_silence: Duration,
}

impl Default for RiskConfig {
    fn default() -> Self {
        RiskConfig { max_base_backup_age: Duration::from_secs(26 * 3600), wal_silence: Duration::from_secs(6 * 3600) }
    }
}

impl RiskConfig {
    pub fn rules(&self) -> RiskRules {
        RiskRules { max_base_backup_age_ms: crate::settings::millis(self.max_base_backup_age), wal_silence_ms: crate::settings::millis(self.wal_silence) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store at {path} is held by a running watcher, but its query socket {socket} did not answer: {source}; is the watcher hung? check its log")]
    Socket { path: PathBuf, socket: PathBuf, source: std::io::Error },
    #[error("the store at {path} is in use by another safeguard process that answers no queries (a `safeguard ingest` or a recovery being planned, or a watcher still starting); try again when it has finished")]
    Busy { path: PathBuf },
    #[error("the running watcher answered: {0}")]
    Remote(String),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("{0}")]
    Ambiguous(String),
}

/// Shortest id prefix `show` and friends resolve (the script prefix is 6).
pub const MIN_PREFIX: usize = 4;

/// An instance by its full id, or by a prefix that names exactly one (`show 6e101b27`).
fn by_prefix<E>(
    id: &str,
    exact: impl Fn(&str) -> Result<Option<InstanceRecord>, E>,
    prefixed: impl Fn(&str) -> Result<Vec<String>, E>,
) -> Result<Option<InstanceRecord>, QueryError>
where
    QueryError: From<E>,
{
    let id = id.to_ascii_lowercase();
    if let Some(r) = exact(&id)? {
        return Ok(Some(r));
    }
    if id.len() < MIN_PREFIX {
        return Ok(None);
    }
    let ids = prefixed(&id)?;
    match ids.as_slice() {
        [] => Ok(None),
        [one] => Ok(exact(one)?),
        many => Err(QueryError::Ambiguous(format!(
            "{id} is the start of {} instance ids ({}{}); give more of the id",
            if many.len() > 10 { "more than 10".to_string() } else { many.len().to_string() },
            many.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
            if many.len() > 10 { ", ..." } else { "" }
        ))),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Filter {
    pub deleted: bool,
    pub at_risk: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreStatus {
    pub path: PathBuf,
    pub schema_version: Option<String>,
    pub size_bytes: u64,
    pub instances: u64,
    pub deleted: u64,
    /// Live instances at risk, and by reason, from the kept counts ([`crate::store::tally`]); absent
    /// when the store has none yet (no engine of this release has opened it).
    #[serde(default)]
    pub at_risk: Option<u64>,
    #[serde(default)]
    pub at_risk_by_reason: BTreeMap<String, u64>,
    /// The risk counts are exact up to this time: a deadline the watcher has not visited yet (absent:
    /// exact now).
    #[serde(default, with = "crate::timeutil::serde_opt_ms")]
    pub risk_counts_until: Option<i64>,
    /// Alerts past `alerts.retention`, kept as ids only.
    #[serde(default)]
    pub alerts_retired: u64,
    pub counters: Counters,
    pub positions: Vec<(String, Position)>,
    /// Whether the answer came from a running watcher.
    pub watcher_running: bool,
    /// With `[leader]`, the running watcher's role (leader or standby), the leader and takeovers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leadership: Option<crate::sources::kafka::leader::Role>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Show {
        id: String,
    },
    Instances {
        filter: Filter,
        now: i64,
        rules: (i64, i64),
    },
    Status,
    Alerts,
    RetryAlert {
        id: String,
    },
    /// `store backup` while the watcher runs: its engine takes one at its next tick.
    Backup,
    BackupOutcome {
        seq: u64,
        watcher: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Response {
    Record(Option<Box<InstanceRecord>>),
    Records(Vec<InstanceRecord>),
    Status(Box<StoreStatus>),
    Alerts(Vec<safeguard_core::alerts::Alert>),
    Retried(Option<Box<safeguard_core::alerts::Alert>>),
    /// The request's number, and which watcher process took it.
    BackupAsked {
        seq: u64,
        watcher: u64,
    },
    BackupOutcome(Option<Result<Box<super::backup::Made>, String>>),
    Error(String),
}

pub enum Access {
    Direct(Store),
    Snapshot { path: PathBuf, snap: Snapshot, cache_bytes: u64 },
    Watcher { path: PathBuf, socket: PathBuf },
}

impl Access {
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Access, QueryError> {
        // A watcher answering on its socket owns the store (it may not have committed yet, so its
        // snapshot can still be there).
        let socket = path.join(SOCKET_NAME);
        if socket.exists() && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Ok(Access::Watcher { path: path.to_path_buf(), socket });
        }
        // A snapshot exists only while nothing has written since the last clean close (a writer
        // removes it before its first write), so it is exactly the store's state.
        if path.join("db").exists() {
            match Snapshot::open(path) {
                Ok(Some(snap)) if snap.schema() == SCHEMA_VERSION => return Ok(Access::Snapshot { path: path.to_path_buf(), snap, cache_bytes }),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "not using the read snapshot"),
            }
        }
        Access::open_store(path, cache_bytes)
    }

    fn open_store(path: &Path, cache_bytes: u64) -> Result<Access, QueryError> {
        match Store::open_read_only(path, cache_bytes) {
            Ok(s) => Ok(Access::Direct(s)),
            // A watcher makes its socket as it starts; a locked store without one is held by another
            // writer (an ingest, a recovery planning), or by a watcher still starting.
            // (A socket file nobody listens on is what a killed watcher left.)
            Err(StoreError::Locked { .. }) if std::os::unix::net::UnixStream::connect(path.join(SOCKET_NAME)).is_err() => {
                Err(QueryError::Busy { path: path.to_path_buf() })
            }
            Err(StoreError::Locked { .. }) => Ok(Access::Watcher { path: path.to_path_buf(), socket: path.join(SOCKET_NAME) }),
            Err(e) => Err(e.into()),
        }
    }

    fn ask(&self, req: &Request) -> Result<Response, QueryError> {
        let Access::Watcher { path, socket } = self else { return Err(QueryError::Remote("no watcher to ask".into())) };
        let err = |source| QueryError::Socket { path: path.clone(), socket: socket.clone(), source };
        let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(err)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(30))).map_err(err)?;
        let mut line = serde_json::to_vec(req).map_err(|e| QueryError::Remote(format!("cannot encode the request: {e}")))?;
        line.push(b'\n');
        s.write_all(&line).map_err(err)?;
        let mut resp = String::new();
        BufReader::new(s).read_line(&mut resp).map_err(err)?;
        match serde_json::from_str(&resp) {
            Ok(Response::Error(e)) => Err(QueryError::Remote(e)),
            Ok(r) => Ok(r),
            Err(e) => Err(QueryError::Remote(format!("unreadable answer: {e}"))),
        }
    }

    /// Asks the running watcher for a backup now (its `[backup]` destination) and waits up to `wait` for
    /// it, calling `waiting` about every second.
    pub fn backup_through_watcher(&self, wait: std::time::Duration, mut waiting: impl FnMut()) -> Result<super::backup::Made, QueryError> {
        let (seq, watcher) = match self.ask(&Request::Backup)? {
            Response::BackupAsked { seq, watcher } => (seq, watcher),
            other => return Err(QueryError::Remote(format!("unexpected answer: {other:?}"))),
        };
        let started = std::time::Instant::now();
        loop {
            match self.ask(&Request::BackupOutcome { seq, watcher })? {
                Response::BackupOutcome(Some(Ok(m))) => return Ok(*m),
                Response::BackupOutcome(Some(Err(e))) => return Err(QueryError::Remote(format!("the watcher's backup failed: {e}"))),
                Response::BackupOutcome(None) if started.elapsed() < wait => {
                    waiting();
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
                Response::BackupOutcome(None) => {
                    return Err(QueryError::Remote(format!(
                        "the watcher has not finished the backup after {}; it goes on: `safeguard store backups` lists it once complete",
                        humantime::format_duration(wait)
                    )))
                }
                other => return Err(QueryError::Remote(format!("unexpected answer: {other:?}"))),
            }
        }
    }

    /// An instance by its id, or by a prefix of it that names exactly one.
    pub fn record(&self, id: &str) -> Result<Option<InstanceRecord>, QueryError> {
        match self {
            Access::Direct(s) => by_prefix(id, |i| s.record(i), |p| s.instances_with_short(p, 11)),
            Access::Snapshot { snap, .. } => by_prefix(
                id,
                |i| get(snap, &keys::instance(i)),
                |p| {
                    Ok::<_, QueryError>(
                        snap.scan_prefix(&keys::instance(p))?
                            .into_iter()
                            .take(11)
                            .map(|kv| String::from_utf8_lossy(&kv.0[keys::INSTANCE.len()..]).into_owned())
                            .collect(),
                    )
                },
            ),
            Access::Watcher { .. } => match self.ask(&Request::Show { id: id.to_string() })? {
                Response::Record(r) => Ok(r.map(|b| *b)),
                _ => Err(QueryError::Remote("unexpected answer".into())),
            },
        }
    }

    pub fn records(&self, filter: &Filter, now: i64, rules: &RiskRules) -> Result<Vec<InstanceRecord>, QueryError> {
        match self {
            Access::Direct(s) => Ok(select_in(s, filter, now, rules)?),
            Access::Snapshot { snap, .. } => {
                // The deleted index is there when the counts are (kept together).
                if filter.deleted && snap.get(keys::TALLY)?.is_some() {
                    let mut recs = Vec::new();
                    for (k, _) in snap.scan_prefix(keys::DELETED.as_bytes())? {
                        let id = String::from_utf8_lossy(&k[keys::DELETED.len()..]).into_owned();
                        if let Some(r) = get::<InstanceRecord>(snap, &keys::instance(&id))? {
                            recs.push(Ok(r));
                        }
                    }
                    return Ok(select(recs.into_iter(), filter, now, rules)?);
                }
                Ok(select(scan(snap, keys::INSTANCE)?, filter, now, rules)?)
            }
            Access::Watcher { .. } => {
                let req = Request::Instances { filter: filter.clone(), now, rules: (rules.max_base_backup_age_ms, rules.wal_silence_ms) };
                match self.ask(&req)? {
                    Response::Records(r) => Ok(r),
                    _ => Err(QueryError::Remote("unexpected answer".into())),
                }
            }
        }
    }

    pub fn alerts(&self) -> Result<Vec<safeguard_core::alerts::Alert>, QueryError> {
        match self {
            Access::Direct(s) => Ok(s.alerts().collect::<Result<Vec<_>, _>>()?),
            Access::Snapshot { snap, .. } => Ok(scan(snap, keys::ALERT)?.collect::<Result<Vec<_>, _>>()?),
            Access::Watcher { .. } => match self.ask(&Request::Alerts)? {
                Response::Alerts(a) => Ok(a),
                _ => Err(QueryError::Remote("unexpected answer".into())),
            },
        }
    }

    pub fn retry_alert(&self, id: &str) -> Result<Option<safeguard_core::alerts::Alert>, QueryError> {
        match self {
            // A write: through the store itself, opened for writing (a read open is a private copy).
            Access::Direct(s) => Ok(retry(&Store::open_existing(s.path(), 16 << 20)?, id, false)?),
            Access::Snapshot { path, cache_bytes, .. } => match Store::open_existing(path, *cache_bytes) {
                Ok(s) => Ok(retry(&s, id, false)?),
                // The watcher that appeared since answers.
                Err(StoreError::Locked { .. }) => Access::Watcher { path: path.clone(), socket: path.join(SOCKET_NAME) }.retry_alert(id),
                Err(e) => Err(e.into()),
            },
            Access::Watcher { .. } => match self.ask(&Request::RetryAlert { id: id.to_string() })? {
                Response::Retried(a) => Ok(a.map(|b| *b)),
                _ => Err(QueryError::Remote("unexpected answer".into())),
            },
        }
    }

    pub fn status(&self) -> Result<StoreStatus, QueryError> {
        match self {
            Access::Direct(s) => Ok(status(s, false)?),
            Access::Snapshot { path, snap, .. } => Ok(snapshot_status(path, snap)?),
            Access::Watcher { .. } => match self.ask(&Request::Status)? {
                Response::Status(s) => Ok(*s),
                _ => Err(QueryError::Remote("unexpected answer".into())),
            },
        }
    }
}

/// Requeues a failed (or any) alert: due now, with a fresh give-up time. With a leader, the requeue is
/// an outcome the standbys take too (`outcome_at` is the time it is recorded under).
fn retry(store: &Store, id: &str, leading: bool) -> Result<Option<safeguard_core::alerts::Alert>, StoreError> {
    let now = crate::timeutil::now_ms();
    store.update_alert(id, |a| {
        a.give_up_at = now + (a.give_up_at - a.raised_at).max(3_600_000);
        a.state = safeguard_core::alerts::Delivery::Pending;
        a.next_attempt_at = now;
        a.attempts = 0;
        if leading {
            a.outcome_at = Some(crate::sources::kafka::leader::outcome_time(a, now));
        }
    })
}

/// The decoded value at `key` in the snapshot.
fn get<T: for<'de> Deserialize<'de>>(snap: &Snapshot, key: &[u8]) -> Result<Option<T>, QueryError> {
    Ok(snap.get(key)?.map(|v| Store::decode(key, &v)).transpose()?)
}

/// Decoded values under a key prefix of the snapshot.
fn scan<T: for<'de> Deserialize<'de>>(snap: &Snapshot, prefix: &str) -> Result<impl Iterator<Item = Result<T, StoreError>>, SnapshotError> {
    Ok(snap.scan_prefix(prefix.as_bytes())?.into_iter().map(|(k, v)| Store::decode(&k, &v)))
}

fn snapshot_status(path: &Path, snap: &Snapshot) -> Result<StoreStatus, QueryError> {
    let tally: Option<Tally> = get(snap, keys::TALLY)?;
    let (instances, deleted) = match &tally {
        Some(t) => (t.instances, t.deleted),
        None => count(scan(snap, keys::INSTANCE)?)?,
    };
    let earliest = snap.first_with_prefix(keys::DEADLINE.as_bytes())?.and_then(|(k, _)| keys::time_in(keys::DEADLINE, &k));
    let retired = get::<AlertTally>(snap, keys::ALERT_TALLY)?.map_or(0, |t| t.retired);
    let counters = get(snap, keys::COUNTERS)?.unwrap_or_default();
    let positions =
        snap.scan_prefix(keys::POSITION.as_bytes())?.into_iter().map(|(k, v)| Store::position_entry(&k, &v)).collect::<Result<Vec<_>, StoreError>>()?;
    Ok(StoreStatus {
        path: path.to_path_buf(),
        schema_version: snap.get(keys::SCHEMA)?.map(|v| String::from_utf8_lossy(&v).into_owned()),
        size_bytes: crate::store::dir_size(path),
        instances,
        deleted,
        at_risk: tally.as_ref().map(|t| t.at_risk),
        at_risk_by_reason: tally.as_ref().map(reasons).unwrap_or_default(),
        risk_counts_until: earliest.filter(|t| *t <= crate::timeutil::now_ms()),
        alerts_retired: retired,
        counters,
        positions,
        watcher_running: false,
        leadership: None,
    })
}

fn reasons(t: &Tally) -> BTreeMap<String, u64> {
    t.by_reason().into_iter().map(|(r, n)| (r.to_string(), n)).collect()
}

/// `instances`' selection on an open store: deleted ones from the deleted index when it is kept, so the
/// cost follows what is listed.
fn select_in(s: &Store, filter: &Filter, now: i64, rules: &RiskRules) -> Result<Vec<InstanceRecord>, StoreError> {
    let mut out = Vec::new();
    each_in(s, filter, now, rules, |r| {
        out.push(r);
        true
    })?;
    Ok(out)
}

/// Hands each selected record to `f` (which returns whether to go on), without collecting them.
fn each_in(s: &Store, filter: &Filter, now: i64, rules: &RiskRules, f: impl FnMut(InstanceRecord) -> bool) -> Result<(), StoreError> {
    if filter.deleted {
        if let Some(ids) = s.deleted_ids()? {
            let recs = ids.into_iter().filter_map(|id| s.record(&id).transpose());
            return each(recs, filter, now, rules, f);
        }
    }
    each(s.records(), filter, now, rules, f)
}

fn select(
    records: impl Iterator<Item = Result<InstanceRecord, StoreError>>,
    filter: &Filter,
    now: i64,
    rules: &RiskRules,
) -> Result<Vec<InstanceRecord>, StoreError> {
    let mut out = Vec::new();
    each(records, filter, now, rules, |r| {
        out.push(r);
        true
    })?;
    Ok(out)
}

fn each(
    records: impl Iterator<Item = Result<InstanceRecord, StoreError>>,
    filter: &Filter,
    now: i64,
    rules: &RiskRules,
    mut f: impl FnMut(InstanceRecord) -> bool,
) -> Result<(), StoreError> {
    for r in records {
        let r = r?;
        if filter.deleted && r.status != Status::Deleted {
            continue;
        }
        if filter.at_risk && assess(&r, now, rules).is_empty() {
            continue;
        }
        if !f(r) {
            break;
        }
    }
    Ok(())
}

/// Bytes of a streamed answer handed to the connection at a time.
const STREAM_CHUNK: usize = 64 << 10;

/// Answers one request into `tx`, in chunks. A listing is written record by record as it is read, in
/// the same JSON as [`Response::Records`], so the watcher holds a chunk, not the whole answer (100,000
/// deleted instances are hundreds of megabytes of JSON). Returns whether the answer was whole: after a
/// store error part way, the connection is closed, and the client reports an unreadable answer.
fn respond(store: &Store, line: &str, tx: &tokio::sync::mpsc::Sender<Vec<u8>>) -> bool {
    let one = |resp: Response| {
        let mut out = serde_json::to_vec(&resp)
            .unwrap_or_else(|e| serde_json::to_vec(&Response::Error(format!("cannot encode the answer: {e}"))).unwrap_or_else(|_| b"{}".to_vec()));
        out.push(b'\n');
        tx.blocking_send(out).is_ok()
    };
    let Ok(Request::Instances { filter, now, rules }) = serde_json::from_str::<Request>(line) else {
        return one(answer(store, line));
    };
    let rules = RiskRules { max_base_backup_age_ms: rules.0, wal_silence_ms: rules.1 };
    let mut buf = br#"{"records":["#.to_vec();
    let (mut sent, mut first, mut open) = (false, true, true);
    let res = each_in(store, &filter, now, &rules, |r| {
        if !first {
            buf.push(b',');
        }
        first = false;
        if serde_json::to_writer(&mut buf, &r).is_err() {
            open = false;
            return false;
        }
        if buf.len() >= STREAM_CHUNK {
            sent = true;
            open = tx.blocking_send(std::mem::take(&mut buf)).is_ok();
        }
        open
    });
    match res {
        Ok(()) if open => {
            buf.extend_from_slice(b"]}\n");
            tx.blocking_send(buf).is_ok()
        }
        Err(e) if !sent => one(Response::Error(e.to_string())),
        Err(e) => {
            tracing::warn!(error = %e, "a listing failed part way; the connection is closed so the client sees an unfinished answer");
            false
        }
        Ok(()) => false,
    }
}

/// (instances, deleted).
fn count(records: impl Iterator<Item = Result<InstanceRecord, StoreError>>) -> Result<(u64, u64), StoreError> {
    let (mut instances, mut deleted) = (0, 0);
    for r in records {
        instances += 1;
        deleted += u64::from(r?.status == Status::Deleted);
    }
    Ok((instances, deleted))
}

fn status(s: &Store, watcher_running: bool) -> Result<StoreStatus, StoreError> {
    let tally = s.tally()?;
    let (instances, deleted) = match &tally {
        Some(t) => (t.instances, t.deleted),
        None => count(s.records())?,
    };
    Ok(StoreStatus {
        path: s.path().to_path_buf(),
        schema_version: s.schema_version()?,
        size_bytes: s.size_on_disk(),
        instances,
        deleted,
        at_risk: tally.as_ref().map(|t| t.at_risk),
        at_risk_by_reason: tally.as_ref().map(reasons).unwrap_or_default(),
        risk_counts_until: s.earliest_deadline()?.filter(|t| *t <= crate::timeutil::now_ms()),
        alerts_retired: s.alert_tally()?.map_or(0, |t| t.retired),
        counters: s.counters()?,
        positions: s.positions()?,
        watcher_running,
        leadership: if watcher_running { crate::sources::kafka::leader::current_role() } else { None },
    })
}

fn answer(store: &Store, line: &str) -> Response {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return Response::Error(format!("bad request: {e}")),
    };
    let res = match req {
        Request::Show { id } => {
            return match by_prefix(&id, |i| store.record(i), |p| store.instances_with_short(p, 11)) {
                Ok(r) => Response::Record(r.map(Box::new)),
                Err(e) => Response::Error(e.to_string()),
            }
        }
        Request::Instances { filter, now, rules } => {
            let rules = RiskRules { max_base_backup_age_ms: rules.0, wal_silence_ms: rules.1 };
            select_in(store, &filter, now, &rules).map(Response::Records)
        }
        Request::Status => status(store, true).map(|s| Response::Status(Box::new(s))),
        Request::Alerts => store.alerts().collect::<Result<Vec<_>, _>>().map(Response::Alerts),
        Request::RetryAlert { id } => {
            let leader = crate::sources::kafka::leader::current();
            if let Some(r) = leader.as_ref().map(|l| l.role()).filter(|r| r.role != "leader") {
                return Response::Error(format!(
                    "this watcher ({}) is a standby; run `safeguard alerts retry` on the leader ({}): it sends the alert again and every standby learns the outcome",
                    r.member,
                    r.leader.as_deref().unwrap_or("none elected right now; try again once one is")
                ));
            }
            retry(store, &id, leader.is_some()).map(|a| {
                // Every replica's copy becomes pending again: whoever leads next sends it.
                if let (Some(l), Some(a)) = (&leader, &a) {
                    l.record_outcome_soon(a);
                }
                Response::Retried(a.map(Box::new))
            })
        }
        Request::Backup => {
            return match super::backup::ask() {
                Some(seq) => Response::BackupAsked { seq, watcher: super::backup::process_nonce() },
                None => Response::Error(
                    "this watcher has no [backup] section: add one (to, interval, keep) and restart it, or stop it and run `store backup` by hand".into(),
                ),
            }
        }
        Request::BackupOutcome { seq, watcher } => {
            if watcher != super::backup::process_nonce() {
                return Response::Error(
                    "the watcher restarted since the backup was asked (the request went with it): run `safeguard store backup` again".into(),
                );
            }
            return Response::BackupOutcome(super::backup::outcome(seq).map(|r| r.map(Box::new)));
        }
    };
    res.unwrap_or_else(|e| Response::Error(e.to_string()))
}

/// Bounds of the query socket: a request is one JSON line of a few hundred bytes, the CLI asks one
/// question and hangs up.
pub const MAX_REQUEST_BYTES: usize = 64 << 10;
pub const MAX_QUERY_CONNECTIONS: usize = 64;
pub const QUERY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves queries for the CLI while the watcher owns the store. Reads see what has been committed.
/// The socket is the owner's only (0600, in the store's 0700 directory); connections, request size and
/// idle time are bounded, and a failed `accept` (EMFILE when file descriptors run out) is waited out, not
/// fatal: the socket must outlive a burst of connections elsewhere in the process.
/// The query socket's bounds (`[watch] query_*`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_request_bytes: usize,
    pub idle_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_connections: MAX_QUERY_CONNECTIONS, max_request_bytes: MAX_REQUEST_BYTES, idle_timeout: QUERY_IDLE_TIMEOUT }
    }
}

pub async fn serve(store: Store, limits: Limits) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = store.path().join(SOCKET_NAME);
    // We hold the store's lock, so a socket file left here is from a process that is gone.
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                metrics::counter!("safeguard_query_accept_errors_total").increment(1);
                tracing::warn!(error = %e, socket = %path.display(), "accepting a query connection failed (out of file descriptors?); retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::counter!("safeguard_query_connections_refused_total").increment(1);
            tracing::debug!(max = limits.max_connections, "query connection refused: too many open");
            continue;
        };
        let store = store.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_conn(conn, store, limits).await;
        });
    }
}

/// Answers one connection's requests, one JSON line each.
async fn serve_conn(conn: tokio::net::UnixStream, store: Store, limits: Limits) {
    use tokio::io::AsyncWriteExt;
    let (r, mut w) = conn.into_split();
    let mut r = tokio::io::BufReader::new(r);
    loop {
        let line = match tokio::time::timeout(limits.idle_timeout, read_request(&mut r, limits.max_request_bytes)).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(too_long)) => {
                let mut out = serde_json::to_vec(&Response::Error(too_long)).unwrap_or_else(|_| b"{}".to_vec());
                out.push(b'\n');
                let _ = w.write_all(&out).await;
                return;
            }
        };
        let s = store.clone();
        // The answer comes in chunks, a few at a time: a long listing never sits whole in the watcher.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let job = tokio::task::spawn_blocking(move || respond(&s, &line, &tx));
        let (mut ok, mut wrote) = (true, false);
        while let Some(chunk) = rx.recv().await {
            wrote = true;
            // A client that stops reading is given up after the idle timeout, like one that stops asking.
            if !matches!(tokio::time::timeout(limits.idle_timeout, w.write_all(&chunk)).await, Ok(Ok(()))) {
                ok = false;
                break;
            }
        }
        // Dropping the receiver ends a listing whose reader left.
        drop(rx);
        let whole = match job.await {
            Ok(whole) => whole,
            Err(e) => {
                if !wrote {
                    let mut out = serde_json::to_vec(&Response::Error(format!("query failed: {e}"))).unwrap_or_else(|_| b"{}".to_vec());
                    out.push(b'\n');
                    let _ = w.write_all(&out).await;
                }
                return;
            }
        };
        if !ok || !whole {
            return;
        }
    }
}

/// One request line, at most [`MAX_REQUEST_BYTES`]; `Ok(None)` at the end of the connection (or on a
/// read error), `Err` with the answer to send when the line is too long.
async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, max: usize) -> Result<Option<String>, String> {
    use tokio::io::AsyncBufReadExt;
    let mut line = Vec::new();
    loop {
        let buf = match r.fill_buf().await {
            Ok(b) => b,
            Err(_) => return Ok(None),
        };
        if buf.is_empty() {
            return Ok(None);
        }
        let (take, done) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max {
            return Err(format!("request longer than {max} bytes"));
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            line.pop();
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lines_of(chunks: Vec<Vec<u8>>) -> Vec<Result<Option<String>, String>> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut b = tokio_test_reader(chunks);
            let mut out = Vec::new();
            loop {
                let r = read_request(&mut b, MAX_REQUEST_BYTES).await;
                let end = !matches!(r, Ok(Some(_)));
                out.push(r);
                if end {
                    return out;
                }
            }
        })
    }

    /// A reader that hands out the bytes in the given pieces (as a socket would).
    fn tokio_test_reader(chunks: Vec<Vec<u8>>) -> tokio::io::BufReader<std::io::Cursor<Vec<u8>>> {
        // BufReader over the concatenation with a tiny buffer: reads come in small, arbitrary pieces.
        let cap = chunks.first().map_or(1, |c| c.len().max(1));
        tokio::io::BufReader::with_capacity(cap, std::io::Cursor::new(chunks.concat()))
    }

    proptest! {
        /// Any bytes in any pieces: the request reader never panics, never returns a line longer than
        /// the bound, and every request line it returns gets an answer that encodes (garbage included).
        #[test]
        fn the_query_protocol_is_bounded_and_answers_anything(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("s"), 1 << 20).unwrap();
            for r in lines_of(chunks) {
                match r {
                    Ok(Some(line)) => {
                        prop_assert!(line.len() <= MAX_REQUEST_BYTES);
                        let resp = answer(&store, &line);
                        prop_assert!(serde_json::to_vec(&resp).is_ok());
                    }
                    Ok(None) => {}
                    Err(e) => prop_assert!(e.contains("longer than")),
                }
            }
        }
    }

    #[test]
    fn a_request_past_the_bound_is_refused_not_buffered() {
        let big = vec![b'x'; MAX_REQUEST_BYTES + 10];
        let got = lines_of(vec![big]);
        assert!(matches!(&got[0], Err(e) if e.contains("longer than")), "{got:?}");
        let ok = lines_of(vec![b"{\"op\":\"status\"}\n".to_vec()]);
        assert_eq!(ok[0], Ok(Some("{\"op\":\"status\"}".to_string())));
    }
}
