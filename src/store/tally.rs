//! Counts kept, not recounted. `status`, `/metrics` and the sender must cost what changed, not what the
//! store holds after years of instances and alerts, so the commit that changes a record or an alert also
//! changes what is counted of it:
//!
//! - each instance's **standing** as counted (`k/`: deleted, its risk reasons, when to look again) and the
//!   totals over all standings (`m/tally`). A commit reads the old standing, writes the new one and moves
//!   the totals by the difference, so they equal a recount whatever the order, repetition or restarts;
//! - a **deadline index** (`t/`): at-risk reasons and absence alerts change by time alone (a backup
//!   growing stale, WAL falling silent), so each standing carries the next time it can change
//!   (`risk::next_change`, `alerts::absence_next_change`, both pure and property-tested) and a tick
//!   visits only the instances whose deadline passed;
//! - `e/`: instances changed since the absence rules last looked at them (an alerting watcher looks at
//!   them at its scan interval; an ingest leaves them for it);
//! - `x/`: deleted instances, for `instances --deleted`;
//! - the outbox's **due index** (`w/`, pending alerts by next attempt; `v/` the same by age), its **finished index** (`f/`,
//!   delivered/failed/suppressed alerts by when, for retention), **tombstones** (`z/`, the ids of alerts
//!   past `alerts.retention`, so a replay never raises one again), and alerts by rule and state
//!   (`m/alerts`).
//!
//! The totals carry the thresholds they were made with; other thresholds, or a store that predates the
//! indexes, are indexed once when an engine opens the store ([`Store::ensure_index`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{encode, keys, Store, StoreError};
use crate::state::risk::{self, Risk, RiskRules};
use crate::state::{InstanceRecord, Status};
use safeguard_core::alerts::{self as rules, Alert, Delivery, RuleParams};

/// The absence rules' switches and thresholds, as deadlines are computed from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbsenceThresholds {
    pub no_recent_base_backup: bool,
    pub wal_archiving_failing: bool,
    pub backfill_window_ms: i64,
    pub max_base_backup_age_ms: i64,
    pub first_base_backup_within_ms: i64,
    pub wal_silence_ms: i64,
}

impl AbsenceThresholds {
    pub fn of(p: &RuleParams) -> AbsenceThresholds {
        AbsenceThresholds {
            no_recent_base_backup: p.no_recent_base_backup,
            wal_archiving_failing: p.wal_archiving_failing,
            backfill_window_ms: p.backfill_window_ms,
            max_base_backup_age_ms: p.max_base_backup_age_ms,
            first_base_backup_within_ms: p.first_base_backup_within_ms,
            wal_silence_ms: p.wal_silence_ms,
        }
    }

    fn params(&self) -> RuleParams {
        RuleParams {
            no_recent_base_backup: self.no_recent_base_backup,
            wal_archiving_failing: self.wal_archiving_failing,
            backfill_window_ms: self.backfill_window_ms,
            max_base_backup_age_ms: self.max_base_backup_age_ms,
            first_base_backup_within_ms: self.first_base_backup_within_ms,
            wal_silence_ms: self.wal_silence_ms,
            ..RuleParams::default()
        }
    }
}

/// What standings and deadlines are computed with: `[risk]`, and the absence thresholds of `[alerts]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexParams {
    pub max_base_backup_age_ms: i64,
    pub wal_silence_ms: i64,
    pub absence: Option<AbsenceThresholds>,
}

impl IndexParams {
    pub fn new(risk: &RiskRules, absence: Option<&RuleParams>) -> IndexParams {
        IndexParams { max_base_backup_age_ms: risk.max_base_backup_age_ms, wal_silence_ms: risk.wal_silence_ms, absence: absence.map(AbsenceThresholds::of) }
    }

    pub fn risk(&self) -> RiskRules {
        RiskRules { max_base_backup_age_ms: self.max_base_backup_age_ms, wal_silence_ms: self.wal_silence_ms }
    }
}

/// An instance as counted: deleted or live, its risk reasons (live instances only, as `/metrics`
/// counts them), and the next time either can change by time alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Standing {
    pub deleted: bool,
    pub risks: u8,
    pub deadline: Option<i64>,
}

impl Standing {
    pub fn of(r: &InstanceRecord, now: i64, p: &IndexParams) -> Standing {
        let deleted = r.status == Status::Deleted;
        let rr = p.risk();
        let risks = if deleted { 0 } else { risk::bits(&risk::assess(r, now, &rr)) };
        let mut deadline = risk::next_change(r, now, &rr);
        if let Some(t) = p.absence.and_then(|a| rules::absence_next_change(r, now, &a.params())) {
            deadline = Some(deadline.map_or(t, |d| d.min(t)));
        }
        Standing { deleted, risks, deadline }
    }

    /// Flags (0x80 deleted, 0x40 has a deadline, low bits the risks), then the deadline, big endian.
    fn encode(&self) -> [u8; 9] {
        let mut v = [0u8; 9];
        v[0] = self.risks | if self.deleted { 0x80 } else { 0 } | if self.deadline.is_some() { 0x40 } else { 0 };
        v[1..].copy_from_slice(&self.deadline.unwrap_or(0).to_be_bytes());
        v
    }

    fn decode(v: &[u8]) -> Option<Standing> {
        let (flags, t) = (v.first()?, i64::from_be_bytes(v.get(1..9)?.try_into().ok()?));
        Some(Standing { deleted: flags & 0x80 != 0, risks: flags & 0x0f, deadline: (flags & 0x40 != 0).then_some(t) })
    }
}

/// Instance counts over every standing (`m/tally`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub instances: u64,
    pub deleted: u64,
    /// Live instances with at least one reason.
    pub at_risk: u64,
    pub at_risk_by_reason: BTreeMap<String, u64>,
    /// What the risk counts and deadlines were made with.
    pub params: Option<IndexParams>,
}

impl Tally {
    pub fn live(&self) -> u64 {
        self.instances.saturating_sub(self.deleted)
    }

    /// Every reason, zero when none is at risk for it.
    pub fn by_reason(&self) -> Vec<(&'static str, u64)> {
        Risk::ALL.iter().map(|r| (r.as_str(), self.at_risk_by_reason.get(r.as_str()).copied().unwrap_or(0))).collect()
    }

    fn count(&mut self, s: &Standing, add: bool) {
        fn step(n: &mut u64, add: bool) {
            *n = if add { n.saturating_add(1) } else { n.saturating_sub(1) };
        }
        step(&mut self.instances, add);
        if s.deleted {
            step(&mut self.deleted, add);
        }
        if s.risks != 0 {
            step(&mut self.at_risk, add);
        }
        for r in Risk::from_bits(s.risks) {
            let n = self.at_risk_by_reason.entry(r.as_str().to_string()).or_default();
            step(n, add);
            if *n == 0 {
                self.at_risk_by_reason.remove(r.as_str());
            }
        }
    }
}

/// Alerts in the outbox by rule and delivery state (`m/alerts`), and how many were retired.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertTally {
    /// `<rule>/<state>` -> alerts; the rule is `undecided` until the sender checked the object store.
    pub by: BTreeMap<String, u64>,
    /// Newest delivery error, ms (0: none).
    pub last_error_at: i64,
    /// Alerts past `alerts.retention`, kept as ids only.
    pub retired: u64,
}

impl AlertTally {
    fn key(a: &Alert) -> String {
        format!("{}/{}", a.rule.map_or("undecided", |r| r.as_str()), a.state.as_str())
    }

    fn count(&mut self, a: &Alert, add: bool) {
        let n = self.by.entry(Self::key(a)).or_default();
        *n = if add { n.saturating_add(1) } else { n.saturating_sub(1) };
        if *n == 0 {
            self.by.remove(&Self::key(a));
        }
        if add {
            self.last_error_at = self.last_error_at.max(a.last_error_at.unwrap_or(0));
        }
    }

    /// Counts one more alert (a count made from the outbox itself, for a store that keeps none).
    pub fn add(&mut self, a: &Alert) {
        self.count(a, true);
    }
}

/// What is left of an alert past retention: enough to say it was raised and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub state: Delivery,
    #[serde(default)]
    pub rule: Option<safeguard_core::alerts::Rule>,
    #[serde(with = "crate::timeutil::serde_ms")]
    pub raised_at: i64,
    #[serde(with = "crate::timeutil::serde_ms")]
    pub finished_at: i64,
}

/// When an alert left the pending state: what orders the finished index. Derived from the alert, so the
/// entry of a stored alert can always be found again.
fn finished_at(a: &Alert) -> i64 {
    match a.state {
        Delivery::Sent => a.sent_at.unwrap_or(a.raised_at),
        Delivery::Failed => a.last_error_at.unwrap_or(a.raised_at),
        _ => a.raised_at,
    }
}

/// An alert's index entry: due (pending) or finished.
fn alert_index_key(a: &Alert) -> Vec<u8> {
    match a.state {
        Delivery::Pending => keys::due(a.next_attempt_at, &a.id),
        _ => keys::finished(finished_at(a), &a.id),
    }
}

fn alert_index_value(a: &Alert) -> Vec<u8> {
    match a.state {
        Delivery::Pending => a.raised_at.to_be_bytes().to_vec(),
        _ => Vec::new(),
    }
}

/// What the commit path knows between calls: the parameters the indexes are made with (none until an
/// engine called [`Store::ensure_index`]; a commit then drops the counts, to be rebuilt).
#[derive(Default)]
pub(super) struct Indexer {
    pub(super) params: Option<IndexParams>,
}

/// A record's part of a commit: its standing, deadline, deleted and unevaluated entries, and the totals.
pub(super) fn index_record(
    db: &sled::Db,
    b: &mut sled::Batch,
    tally: &mut Tally,
    r: &InstanceRecord,
    now: i64,
    p: &IndexParams,
    evaluated: bool,
) -> Result<(), StoreError> {
    let id = &r.instance_id;
    let k = keys::standing(id);
    let old = db.get(&k)?.and_then(|v| Standing::decode(&v));
    let new = Standing::of(r, now, p);
    if let Some(o) = &old {
        tally.count(o, false);
    }
    tally.count(&new, true);
    if old != Some(new) {
        b.insert(k, &new.encode()[..]);
        let old_deadline = old.and_then(|o| o.deadline);
        if old_deadline != new.deadline {
            if let Some(t) = old_deadline {
                b.remove(keys::deadline(t, id));
            }
            if let Some(t) = new.deadline {
                b.insert(keys::deadline(t, id), &[][..]);
            }
        }
        if old.map(|o| o.deleted) != Some(new.deleted) {
            if new.deleted {
                b.insert(keys::deleted(id), &[][..]);
            } else {
                b.remove(keys::deleted(id));
            }
        }
    }
    if evaluated || r.status != Status::Live || r.deletion_pending {
        b.remove(keys::unevaluated(id));
    } else {
        b.insert(keys::unevaluated(id), &[][..]);
    }
    Ok(())
}

/// Index entries of an id with no record behind them (never written by this release; a damaged store):
/// removed, and counted out.
pub(super) fn forget(db: &sled::Db, b: &mut sled::Batch, tally: Option<&mut Tally>, id: &str) -> Result<(), StoreError> {
    let k = keys::standing(id);
    if let Some(old) = db.get(&k)?.and_then(|v| Standing::decode(&v)) {
        if let Some(t) = tally {
            t.count(&old, false);
        }
        if let Some(t) = old.deadline {
            b.remove(keys::deadline(t, id));
        }
    }
    b.remove(k);
    b.remove(keys::deleted(id));
    b.remove(keys::unevaluated(id));
    Ok(())
}

/// A new alert's part of a commit: its index entry and the totals.
pub(super) fn index_new_alert(b: &mut sled::Batch, tally: &mut AlertTally, a: &Alert) {
    b.insert(alert_index_key(a), alert_index_value(a));
    if a.state == Delivery::Pending {
        b.insert(keys::pending_by_age(a.raised_at, &a.id), &[][..]);
    }
    tally.count(a, true);
}

/// An updated alert's part of a write: its index entries moved, the totals by the difference.
pub(super) fn index_changed_alert(b: &mut sled::Batch, tally: &mut AlertTally, old: Option<&Alert>, new: &Alert) {
    if let Some(o) = old {
        b.remove(alert_index_key(o));
        b.remove(keys::pending_by_age(o.raised_at, &o.id));
        tally.count(o, false);
    }
    index_new_alert(b, tally, new);
}

const CHUNK: usize = 10_000;

impl Store {
    /// The instance counts, if the store keeps them (a store an engine of this release has opened).
    pub fn tally(&self) -> Result<Option<Tally>, StoreError> {
        self.db.get(keys::TALLY)?.map(|v| Self::decode(keys::TALLY, &v)).transpose()
    }

    pub fn alert_tally(&self) -> Result<Option<AlertTally>, StoreError> {
        self.db.get(keys::ALERT_TALLY)?.map(|v| Self::decode(keys::ALERT_TALLY, &v)).transpose()
    }

    /// Ids of deleted instances, in id order, from the deleted index when it is kept (else `None`).
    pub fn deleted_ids(&self) -> Result<Option<Vec<String>>, StoreError> {
        if self.db.get(keys::TALLY)?.is_none() {
            return Ok(None);
        }
        let p = keys::DELETED.as_bytes();
        let ids = self.db.scan_prefix(p).map(|r| r.map(|(k, _)| String::from_utf8_lossy(&k[p.len()..]).into_owned())).collect::<Result<_, _>>()?;
        Ok(Some(ids))
    }

    /// The earliest deadline not yet visited: the risk counts are exact up to it (and now, when it is
    /// later or there is none).
    pub fn earliest_deadline(&self) -> Result<Option<i64>, StoreError> {
        let Some(k) = self.db.scan_prefix(keys::DEADLINE).keys().next().transpose()? else { return Ok(None) };
        Ok(keys::time_in(keys::DEADLINE, &k))
    }

    /// Instances whose deadline is at or before `now`, earliest first (at most `limit`).
    pub fn due_instances(&self, now: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for r in self.db.range(keys::DEADLINE.as_bytes().to_vec()..keys::deadline_end(now)).take(limit) {
            let (k, _) = r?;
            out.push(String::from_utf8_lossy(keys::id_after_time(keys::DEADLINE, &k)).into_owned());
        }
        Ok(out)
    }

    /// Instances the absence rules have not looked at since they changed (at most `limit`).
    pub fn unevaluated_instances(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let p = keys::UNEVALUATED.as_bytes();
        self.db.scan_prefix(p).take(limit).map(|r| r.map(|(k, _)| String::from_utf8_lossy(&k[p.len()..]).into_owned()).map_err(Into::into)).collect()
    }

    /// Pending alerts due at or before `now`, by next attempt (at most `limit`): the sender's pass reads
    /// these and nothing else.
    pub fn due_alerts(&self, now: i64, limit: usize) -> Result<Vec<Alert>, StoreError> {
        let mut out = Vec::new();
        for r in self.db.range(keys::DUE.as_bytes().to_vec()..keys::due_end(now)).take(limit) {
            let (k, _) = r?;
            let id = String::from_utf8_lossy(keys::id_after_time(keys::DUE, &k)).into_owned();
            if let Some(a) = self.alert(&id)? {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// When the oldest pending alert was raised, ms: the first key of the pending-by-age index.
    pub fn oldest_pending_alert(&self) -> Result<Option<i64>, StoreError> {
        let Some(k) = self.db.scan_prefix(keys::PENDING_BY_AGE).keys().next().transpose()? else { return Ok(None) };
        Ok(keys::time_in(keys::PENDING_BY_AGE, &k))
    }

    /// Every tombstone, as (alert id, what is left of it).
    pub fn tombstones(&self) -> impl Iterator<Item = Result<(String, Tombstone), StoreError>> + '_ {
        self.db.scan_prefix(keys::TOMBSTONE).map(|r| {
            let (k, v) = r?;
            Ok((String::from_utf8_lossy(&k[keys::TOMBSTONE.len()..]).into_owned(), Self::decode(&k, &v)?))
        })
    }

    pub fn tombstone(&self, id: &str) -> Result<Option<Tombstone>, StoreError> {
        let k = keys::tombstone(id);
        self.db.get(&k)?.map(|v| Self::decode(&k, &v)).transpose()
    }

    /// Moves alerts that finished before `before` out of the outbox, keeping their ids as tombstones
    /// (at most `limit` per call). Returns how many moved.
    pub fn retire_alerts(&self, before: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut b = sled::Batch::default();
        let kept = self.alert_tally()?;
        let mut tally = kept.clone().unwrap_or_default();
        let (mut retired, mut entries) = (Vec::new(), 0);
        for r in self.db.range(keys::FINISHED.as_bytes().to_vec()..keys::finished_end(before.saturating_sub(1))).take(limit) {
            let (k, _) = r?;
            b.remove(k.clone());
            entries += 1;
            let id = String::from_utf8_lossy(keys::id_after_time(keys::FINISHED, &k)).into_owned();
            // An entry whose alert is gone (a damaged store) is removed all the same.
            let Some(a) = self.alert(&id)? else { continue };
            let t = Tombstone { state: a.state, rule: a.rule, raised_at: a.raised_at, finished_at: finished_at(&a) };
            b.insert(keys::tombstone(&id), encode(&id, &t)?);
            b.remove(keys::alert(&id));
            tally.count(&a, false);
            tally.retired += 1;
            retired.push(id);
        }
        if entries == 0 {
            return Ok(retired);
        }
        // Counts are written only where they are kept: an absent tally is rebuilt by the next engine.
        if kept.is_some() {
            b.insert(keys::ALERT_TALLY, encode("the alert counts", &tally)?);
        }
        self.snap.before_write()?;
        self.db.apply_batch(b)?;
        self.db.flush()?;
        Ok(retired)
    }

    /// Makes the counts and indexes those of `wanted` (indexing every record and alert once when the
    /// store predates them or the thresholds changed) and returns the parameters commits now use. An
    /// engine without absence rules keeps the stored absence thresholds, so an ingest without `[alerts]`
    /// does not re-index a watcher's store.
    pub fn ensure_index(&self, wanted: IndexParams, now: i64) -> Result<IndexParams, StoreError> {
        let mut w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let stored = self.tally()?;
        let mut params = wanted;
        if let Some(sp) = stored.as_ref().and_then(|t| t.params) {
            if wanted.absence.is_none() && sp.max_base_backup_age_ms == wanted.max_base_backup_age_ms && sp.wal_silence_ms == wanted.wal_silence_ms {
                params.absence = sp.absence;
            }
        }
        if stored.as_ref().and_then(|t| t.params) != Some(params) {
            let n = self.rebuild_instances(&params, now)?;
            tracing::info!(
                instances = n,
                "indexed every instance for counts and deadlines (once: the store predates them, or [risk]/[alerts] thresholds changed)"
            );
        }
        if self.alert_tally()?.is_none() {
            let n = self.rebuild_alerts()?;
            tracing::info!(alerts = n, "indexed the alert outbox");
        }
        w.params = Some(params);
        Ok(params)
    }

    fn clear_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        loop {
            let mut b = sled::Batch::default();
            let mut n = 0;
            for r in self.db.scan_prefix(prefix).keys().take(CHUNK) {
                b.remove(r?);
                n += 1;
            }
            if n == 0 {
                return Ok(());
            }
            self.db.apply_batch(b)?;
        }
    }

    fn rebuild_instances(&self, p: &IndexParams, now: i64) -> Result<u64, StoreError> {
        self.snap.before_write()?;
        // Without the totals, readers recount and the next engine indexes again: a crash here is safe.
        self.db.remove(keys::TALLY)?;
        self.db.flush()?;
        for prefix in [keys::STANDING, keys::DEADLINE, keys::UNEVALUATED, keys::DELETED] {
            self.clear_prefix(prefix)?;
        }
        let mut tally = Tally { params: Some(*p), ..Tally::default() };
        let mut b = sled::Batch::default();
        let mut in_batch = 0;
        for r in self.records() {
            let r = r?;
            // Nothing is indexed yet, so every record reads no old standing.
            index_record(&self.db, &mut b, &mut tally, &r, now, p, false)?;
            in_batch += 1;
            if in_batch == CHUNK {
                self.db.apply_batch(std::mem::take(&mut b))?;
                in_batch = 0;
            }
        }
        b.insert(keys::TALLY, encode("the instance counts", &tally)?);
        self.db.apply_batch(b)?;
        self.db.flush()?;
        Ok(tally.instances)
    }

    fn rebuild_alerts(&self) -> Result<u64, StoreError> {
        self.snap.before_write()?;
        for prefix in [keys::DUE, keys::PENDING_BY_AGE, keys::FINISHED] {
            self.clear_prefix(prefix)?;
        }
        let mut tally = AlertTally { retired: self.db.scan_prefix(keys::TOMBSTONE).count() as u64, ..AlertTally::default() };
        let mut b = sled::Batch::default();
        let mut n = 0u64;
        for a in self.alerts() {
            index_new_alert(&mut b, &mut tally, &a?);
            n += 1;
        }
        b.insert(keys::ALERT_TALLY, encode("the alert counts", &tally)?);
        self.db.apply_batch(b)?;
        self.db.flush()?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standings_round_trip() {
        for s in [
            Standing { deleted: false, risks: 0, deadline: None },
            Standing { deleted: true, risks: 0, deadline: Some(1) },
            Standing { deleted: false, risks: 0x0f, deadline: Some(i64::MAX) },
            Standing { deleted: false, risks: 0, deadline: Some(0) },
        ] {
            assert_eq!(Standing::decode(&s.encode()), Some(s));
        }
        assert_eq!(Standing::decode(b"short"), None);
    }

    #[test]
    fn counting_in_and_out_leaves_nothing() {
        let mut t = Tally::default();
        let s = Standing { deleted: false, risks: 0b1010, deadline: None };
        t.count(&s, true);
        assert_eq!((t.instances, t.at_risk, t.at_risk_by_reason.len()), (1, 1, 2));
        t.count(&s, false);
        assert_eq!(t, Tally::default());
    }
}
