//! The ingest engine: lines from any source -> prefilter -> parse -> attribute -> apply -> one atomic,
//! flushed store commit per batch (records, indexes, the alerts their effects raise, source positions and counters together).
//!
//! Sources register a cursor and feed lines with the position *after* each line. A replayable source
//! (a file, stdin, a Kafka partition) never has a line applied twice: lines at or before the committed
//! position are skipped and counted.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::alerts::{self, Alert, AlertsConfig};
use crate::parse::{parse_line, Event, EventKind, Prefilter, Reject, YearClock};
use crate::state::{self, Effect, InstanceRecord, Rules};
use crate::store::{Counters, Position, SourceCounters, Store, StoreError, WriteSet};
use crate::timeutil::now_ms;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub rules: Rules,
    /// Longer candidate lines are rejected unread (a broker state dump, or garbage).
    pub max_line_bytes: usize,
    /// With `[alerts]` configured, deletions and absence scans raise outbox entries.
    pub alerts: Option<AlertsConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { rules: Rules::default(), max_line_bytes: 64 * 1024, alerts: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceHandle(usize);

struct Cursor {
    id: String,
    name: String,
    /// Low-cardinality label for per-source counters.
    label: String,
    /// Counts since the last commit, folded into `Counters::by_source` there.
    delta: SourceCounters,
    replayable: bool,
    committed: Option<u64>,
    pending: Option<u64>,
    clock: YearClock,
}

/// What a commit made durable.
#[derive(Debug, Default)]
pub struct Committed {
    pub records: usize,
    pub effects: Vec<Effect>,
}

pub struct Engine {
    store: Store,
    cfg: EngineConfig,
    prefilter: Prefilter,
    cursors: Vec<Cursor>,
    dirty: HashMap<String, InstanceRecord>,
    /// node uuid -> instance, learned from the store and from this process's records.
    nodes: HashMap<String, String>,
    effects: Vec<Effect>,
    /// Alerts raised since the last commit (absence scans).
    alerts: Vec<Alert>,
    counters: Counters,
    /// Newest event time seen: the clock for deletion grace during a backfill.
    watermark: i64,
    now: i64,
    uncommitted_lines: u64,
}

const NODE_CACHE_MAX: usize = 1_000_000;

impl Engine {
    pub fn new(store: Store, cfg: EngineConfig) -> Result<Engine, StoreError> {
        let counters = store.counters()?;
        Ok(Engine {
            store,
            cfg,
            prefilter: Prefilter::new(),
            cursors: Vec::new(),
            dirty: HashMap::new(),
            nodes: HashMap::new(),
            effects: Vec::new(),
            alerts: Vec::new(),
            counters,
            watermark: 0,
            now: now_ms(),
            uncommitted_lines: 0,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Lines fed since the last commit.
    pub fn uncommitted_lines(&self) -> u64 {
        self.uncommitted_lines
    }

    /// Registers a source. `id` must be stable across restarts for a replayable source.
    pub fn add_source(&mut self, id: &str, name: &str, replayable: bool) -> Result<SourceHandle, StoreError> {
        let committed = if replayable { self.store.position(id)?.map(|p| p.offset) } else { None };
        self.cursors.push(Cursor {
            id: id.to_string(),
            name: name.to_string(),
            label: source_label(id, name),
            delta: SourceCounters::default(),
            replayable,
            committed,
            pending: None,
            clock: YearClock::default(),
        });
        Ok(SourceHandle(self.cursors.len() - 1))
    }

    /// The committed position of a source (where a file source resumes reading).
    pub fn committed(&self, h: SourceHandle) -> Option<u64> {
        self.cursors[h.0].committed
    }

    /// Every replayable source's durable position, by source id: what a Kafka source may commit.
    pub fn committed_positions(&self) -> std::collections::HashMap<String, u64> {
        self.cursors.iter().filter(|c| c.replayable).filter_map(|c| Some((c.id.clone(), c.committed?))).collect()
    }

    /// Feeds one line (a syslog message) that ends at `end_offset` in its source.
    pub fn feed_line(&mut self, h: SourceHandle, end_offset: u64, line: &[u8]) {
        self.counters.lines_read += 1;
        self.uncommitted_lines += 1;
        let cur = &mut self.cursors[h.0];
        cur.delta.lines_read += 1;
        if cur.replayable && cur.committed.is_some_and(|c| end_offset <= c) {
            self.counters.lines_replayed_skipped += 1;
            return;
        }
        cur.pending = Some(end_offset);
        if self.prefilter.is_match(line) {
            self.candidate(h, line);
        }
    }

    /// Feeds a buffer of whole lines starting at byte `base` of the source; a final line without a
    /// newline counts as a line. Unrelated lines cost one prefilter scan and a newline count.
    pub fn feed_chunk(&mut self, h: SourceHandle, base: u64, chunk: &[u8]) {
        let lines = count_lines(chunk);
        let cur = &mut self.cursors[h.0];
        let mut from = 0usize;
        if cur.replayable {
            if let Some(c) = cur.committed {
                if c > base {
                    from = ((c - base) as usize).min(chunk.len());
                    let skipped = count_lines(&chunk[..from]);
                    self.counters.lines_replayed_skipped += skipped;
                }
            }
        }
        self.counters.lines_read += lines;
        self.uncommitted_lines += lines;
        cur.delta.lines_read += lines;
        if from < chunk.len() {
            cur.pending = Some(base + chunk.len() as u64);
        }
        let mut pos = from;
        while let Some(at) = self.prefilter.find(chunk, pos) {
            let start = memchr::memrchr(b'\n', &chunk[pos..at]).map_or(pos, |i| pos + i + 1);
            let end = memchr::memchr(b'\n', &chunk[at..]).map_or(chunk.len(), |i| at + i);
            self.candidate(h, &chunk[start..end]);
            pos = end + 1;
            if pos >= chunk.len() {
                break;
            }
        }
    }

    fn reject(&mut self, h: SourceHandle, r: Reject) {
        self.cursors[h.0].delta.lines_rejected += 1;
        self.counters.lines_rejected += 1;
        *self.counters.rejected_by_reason.entry(r.as_str().to_string()).or_default() += 1;
        tracing::debug!(reason = r.as_str(), "rejected a line");
    }

    fn candidate(&mut self, h: SourceHandle, line: &[u8]) {
        if line.len() > self.cfg.max_line_bytes {
            return self.reject(h, Reject::TooLong);
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return self.reject(h, Reject::Utf8);
        };
        let now = self.now;
        let parsed = parse_line(text, &mut self.cursors[h.0].clock, now);
        match parsed {
            Err(r) => self.reject(h, r),
            Ok(None) => {}
            Ok(Some(ev)) => {
                self.counters.lines_relevant += 1;
                self.cursors[h.0].delta.lines_relevant += 1;
                if let Some(t) = ev.time {
                    self.watermark = self.watermark.max(t);
                }
                match self.attribute(&ev) {
                    Ok(Some(id)) => {
                        self.counters.lines_attributed += 1;
                        self.apply(&id, &ev);
                    }
                    Ok(None) => {
                        self.counters.lines_unattributed += 1;
                        tracing::debug!(event = ev.kind.name(), host = %ev.host, "event names no known instance");
                    }
                    Err(e) => {
                        // A store read failing is not the line's fault; count it unattributed and say so.
                        self.counters.lines_unattributed += 1;
                        tracing::warn!(error = %e, "store lookup failed while attributing an event");
                    }
                }
            }
        }
    }

    fn attribute<'e>(&mut self, ev: &'e Event<'_>) -> Result<Option<Cow<'e, str>>, StoreError> {
        if let Some(id) = &ev.instance {
            return Ok(Some(Cow::Borrowed(id)));
        }
        if let Some(n) = ev.node_uuid.as_deref() {
            if let Some(id) = self.nodes.get(n) {
                return Ok(Some(Cow::Owned(id.clone())));
            }
            if let Some(id) = self.store.instance_of_node(n)? {
                self.remember_node(n, &id);
                return Ok(Some(Cow::Owned(id)));
            }
        }
        if let Some(short) = ev.short_id.as_deref() {
            let short = short.to_ascii_lowercase();
            let mut found: Vec<String> = self.dirty.keys().filter(|k| k.starts_with(&short)).cloned().collect();
            for id in self.store.instances_with_short(&short, 3)? {
                if !found.contains(&id) {
                    found.push(id);
                }
            }
            // Two instances sharing 6 characters: attributing to either could be wrong, so neither.
            if found.len() == 1 {
                return Ok(found.pop().map(Cow::Owned));
            }
        }
        Ok(None)
    }

    fn remember_node(&mut self, node: &str, id: &str) {
        // Nearly every line names a node already known; skip the two copies and the insert then.
        if self.nodes.len() < NODE_CACHE_MAX && self.nodes.get(node).is_some_and(|known| known == id) {
            return;
        }
        if self.nodes.len() >= NODE_CACHE_MAX {
            self.nodes.clear();
        }
        self.nodes.insert(node.to_string(), id.to_string());
    }

    fn load(&mut self, id: &str, t: i64) -> Result<&mut InstanceRecord, StoreError> {
        if !self.dirty.contains_key(id) {
            let rec = self.store.record(id)?.unwrap_or_else(|| InstanceRecord::new(id, t));
            self.dirty.insert(id.to_string(), rec);
        }
        Ok(self.dirty.get_mut(id).expect("inserted above"))
    }

    fn apply(&mut self, id: &str, ev: &Event<'_>) {
        let t = ev.time.unwrap_or(self.watermark.max(1));
        let rules = self.cfg.rules;
        // One hash lookup for the record nearly every event finds already loaded.
        let rec = match self.dirty.get_mut(id) {
            Some(r) => r,
            None => match self.load(id, t) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(instance = id, error = %e, "cannot load the instance record; event not applied");
                    return;
                }
            },
        };
        let effects = state::apply(rec, ev, &rules);
        let learned = match (&ev.node_uuid, &ev.kind) {
            (Some(n), _) => Some(&**n),
            (None, EventKind::AddNode { node_uuid: Some(n), .. } | EventKind::RemoveNode { node_uuid: Some(n), .. }) => Some(n.as_str()),
            _ => None,
        };
        if let Some(n) = learned {
            self.remember_node(n, id);
        }
        self.counters.events_applied += 1;
        self.effects.extend(effects);
    }

    /// Makes pending deletions final whose grace has passed by `now` (event time in a backfill, wall
    /// clock while watching).
    fn tick(&mut self, now: i64) -> Result<(), StoreError> {
        let mut ids: Vec<String> = self.dirty.values().filter(|r| r.deletion_pending).map(|r| r.instance_id.clone()).collect();
        for id in self.store.pending_deletions()? {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let rules = self.cfg.rules;
        for id in ids {
            let rec = self.load(&id, now)?;
            let effects = state::tick(rec, now, &rules);
            self.effects.extend(effects);
        }
        Ok(())
    }

    /// Commits everything fed so far, after advancing deletions to `tick_at` (defaults to the newest
    /// event time seen). Returns what became durable.
    pub fn commit(&mut self, tick_at: Option<i64>) -> Result<Committed, StoreError> {
        self.now = now_ms();
        let tick_now = tick_at.unwrap_or(self.watermark);
        if tick_now > 0 {
            self.tick(tick_now)?;
        }
        let now = self.now;
        let mut positions = Vec::new();
        for c in &self.cursors {
            if let (true, Some(p)) = (c.replayable, c.pending) {
                if Some(p) != c.committed {
                    positions.push((c.id.clone(), Position { offset: p, name: c.name.clone(), updated_at: now }));
                }
            }
        }
        if self.dirty.is_empty() && positions.is_empty() && self.effects.is_empty() && self.alerts.is_empty() && self.uncommitted_lines == 0 {
            return Ok(Committed::default());
        }
        let effects = std::mem::take(&mut self.effects);
        self.counters.effects += effects.len() as u64;
        for c in &mut self.cursors {
            let d = std::mem::take(&mut c.delta);
            if d != SourceCounters::default() {
                self.counters.by_source.entry(c.label.clone()).or_default().add(&d);
            }
        }
        let mut new_alerts = std::mem::take(&mut self.alerts);
        if let Some(cfg) = &self.cfg.alerts {
            for e in &effects {
                if let Effect::InstanceDeleted { instance_id, at, .. } = e {
                    if let Some(a) = self.dirty.get(instance_id).and_then(|r| alerts::on_deletion(r, *at, now, cfg)) {
                        new_alerts.push(a);
                    }
                }
            }
        }
        // The alert id is its idempotency key: never recreate (and so resend) one that exists.
        let mut fresh = Vec::new();
        for a in new_alerts {
            if !self.store.alert_exists(&a.id)? && !fresh.iter().any(|f: &Alert| f.id == a.id) {
                fresh.push(a);
            }
        }
        let ws = WriteSet {
            records: self.dirty.values().collect(),
            positions,
            counters: Some(&self.counters),
            alerts: fresh,
        };
        let records = ws.records.len();
        self.store.commit(ws)?;
        for c in &mut self.cursors {
            if c.pending.is_some() {
                c.committed = c.pending;
            }
        }
        self.dirty.clear();
        self.uncommitted_lines = 0;
        Ok(Committed { records, effects })
    }
}

impl Engine {
    /// Checks every live instance for the absence rules (no recent base backup, WAL failing or silent)
    /// at `now`; what it raises is committed with the next commit.
    pub fn scan_absence(&mut self, now: i64) -> Result<usize, StoreError> {
        let Some(cfg) = self.cfg.alerts.clone() else { return Ok(0) };
        let mut raised = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for r in self.store.records() {
            let r = r?;
            let r = self.dirty.get(&r.instance_id).unwrap_or(&r);
            raised.extend(alerts::absence(r, now, &cfg));
            seen.insert(r.instance_id.clone());
        }
        // Records new since the last commit are not in the store yet.
        for r in self.dirty.values().filter(|r| !seen.contains(&r.instance_id)) {
            raised.extend(alerts::absence(r, now, &cfg));
        }
        let n = raised.len();
        self.alerts.extend(raised);
        Ok(n)
    }
}

/// The per-source counter label: the kind of source, not the rotating stream, so metrics stay few.
fn source_label(id: &str, name: &str) -> String {
    if let Some(rest) = id.strip_prefix("kafka:") {
        return format!("kafka:{}", rest.rsplit_once(':').map_or(rest, |(topic, _)| topic));
    }
    if id.starts_with("lines:") {
        return if name == "stdin" { "stdin".into() } else { "file".into() };
    }
    id.split(':').next().unwrap_or(id).to_string()
}

/// Lines in a buffer: newlines, plus a final unterminated line.
pub fn count_lines(b: &[u8]) -> u64 {
    let n = memchr::memchr_iter(b'\n', b).count() as u64;
    n + u64::from(!b.is_empty() && b[b.len() - 1] != b'\n')
}
