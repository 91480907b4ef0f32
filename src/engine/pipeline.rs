//! The ingest engine: lines from any source -> prefilter -> parse -> attribute -> apply -> one atomic,
//! flushed store commit per batch (records, indexes, the alerts their effects raise, parked lines, source
//! positions and counters together).
//!
//! Sources register a cursor and feed lines with the position *after* each line. A replayable source
//! (a file, stdin, a Kafka partition) skips lines at or before its committed position; since applying a
//! fact again changes nothing (see [`crate::state`]), that skip saves work, it is not what keeps records
//! right. A line whose instance is not known yet (a container's line before the broker's add-node, in
//! another file or partition) is parked durably and applied when the line that names its instance
//! arrives, so attribution does not depend on arrival order either.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use crate::alerts::{self, Alert, AlertsConfig};
use crate::parse::{parse_line, place_year, Event, EventKind, Prefilter, Reject, YearClock};
pub use crate::sources::protocol::{Resume, SourceHandle, SourceId, StreamTail};
use crate::state::risk::RiskRules;
use crate::state::{self, Effect, InstanceRecord, Rules};
use crate::store::{Counters, Parked, Position, SourceCounters, Store, StoreError, Tail, WriteSet};
use crate::timeutil::now_ms;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub rules: Rules,
    /// Longer candidate lines are rejected unread (a broker state dump, or garbage).
    pub max_line_bytes: usize,
    /// With `[alerts]` configured, deletions and absence scans raise outbox entries.
    pub alerts: Option<AlertsConfig>,
    /// Most lines parked at once waiting for their instance; the oldest is given up past it.
    pub parked_max: usize,
    /// Wall-clock age at which a parked line is given up.
    pub parked_ttl_ms: i64,
    /// What counts as at risk (`[risk]`): the kept counts and their deadlines follow it.
    pub risk: RiskRules,
    /// The watcher with `[alerts]` raises the absence rules' alerts; an ingest leaves them to it.
    pub raise_absence: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            rules: Rules::default(),
            max_line_bytes: 64 * 1024,
            alerts: None,
            parked_max: 100_000,
            parked_ttl_ms: 7 * 86_400_000,
            risk: RiskRules::default(),
            raise_absence: false,
        }
    }
}

/// Most changed records held between commits (see [`Engine::should_commit`]).
pub const DIRTY_MAX: usize = 20_000;

/// Most instances visited per commit for a passed deadline or the absence rules: a backlog (after an
/// ingest, or changed thresholds) is worked off over several commits, never in one long stall.
pub const VISIT_MAX: usize = 10_000;

/// Bytes before a position whose hash identifies the stream there ([`Tail`]).
pub const TAIL_BYTES: usize = 4096;

struct Cursor {
    id: SourceId,
    name: String,
    /// Low-cardinality label for per-source counters.
    label: String,
    /// Counts since the last commit, folded into `Counters::by_source` there.
    delta: SourceCounters,
    /// Counts since the source was registered (`ingest`'s per-input summary).
    run: SourceRun,
    replayable: bool,
    committed: Option<u64>,
    pending: Option<u64>,
    clock: YearClock,
    /// The clock a restart from the beginning starts with.
    initial_clock: YearClock,
    /// The last bytes fed (chunked sources only), for the position's tail hash.
    tail: Vec<u8>,
}

/// What one source contributed since it was registered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SourceRun {
    pub lines_read: u64,
    pub lines_relevant: u64,
    pub lines_rejected: u64,
    /// Lines at or before the source's stored position: applied by an earlier run.
    pub lines_skipped_replay: u64,
}

/// What a commit made durable.
#[derive(Debug, Default)]
pub struct Committed {
    pub records: usize,
    pub effects: Vec<Effect>,
}

/// Lines waiting for their instance, indexed by what will resolve them. All in memory (bounded by
/// `parked_max`) and mirrored in the store.
#[derive(Default)]
struct ParkedSet {
    entries: BTreeMap<u64, Parked>,
    by_node: HashMap<String, Vec<u64>>,
    by_short: HashMap<String, Vec<u64>>,
    by_instance: HashMap<String, Vec<u64>>,
    next_seq: u64,
    /// Parked since the last commit / resolved or expired since the last commit.
    added: Vec<u64>,
    removed: Vec<u64>,
}

impl ParkedSet {
    fn insert(&mut self, p: Parked) {
        let seq = p.seq;
        self.next_seq = self.next_seq.max(seq + 1);
        match &p.instance {
            Some(i) => self.by_instance.entry(i.clone()).or_default().push(seq),
            None => {
                if let Some(n) = &p.event.node_uuid {
                    self.by_node.entry(n.to_string()).or_default().push(seq);
                }
                if let Some(s) = &p.event.short_id {
                    self.by_short.entry(s.to_ascii_lowercase()).or_default().push(seq);
                }
            }
        }
        self.entries.insert(seq, p);
    }

    /// Removes and returns the entries listed under `key` in `index` (entries already gone are skipped).
    fn take(&mut self, which: Index, key: &str) -> Vec<Parked> {
        let index = match which {
            Index::Node => &mut self.by_node,
            Index::Short => &mut self.by_short,
            Index::Instance => &mut self.by_instance,
        };
        let Some(seqs) = index.remove(key) else { return Vec::new() };
        seqs.into_iter().filter_map(|s| self.remove(s)).collect()
    }

    fn remove(&mut self, seq: u64) -> Option<Parked> {
        let p = self.entries.remove(&seq)?;
        self.removed.push(seq);
        Some(p)
    }

    fn oldest(&self) -> Option<&Parked> {
        self.entries.values().next()
    }

    /// Drops index entries of lines already gone (resolved through another index, or given up), once
    /// they outnumber the lines still parked: a long-running watcher's memory stays bounded by them.
    fn compact(&mut self) {
        let listed: usize = [&self.by_node, &self.by_short, &self.by_instance].iter().map(|m| m.values().map(Vec::len).sum::<usize>()).sum();
        if listed <= 2 * self.entries.len() + 1024 {
            return;
        }
        let entries = &self.entries;
        for m in [&mut self.by_node, &mut self.by_short, &mut self.by_instance] {
            m.retain(|_, seqs| {
                seqs.retain(|s| entries.contains_key(s));
                !seqs.is_empty()
            });
        }
    }
}

#[derive(Clone, Copy)]
enum Index {
    Node,
    Short,
    Instance,
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
    parked: ParkedSet,
    /// Newest event time seen: the clock for deletion grace during a backfill.
    watermark: i64,
    now: i64,
    uncommitted_lines: u64,
    /// Candidate line spans of the chunk being fed (reused).
    spans: Vec<(usize, usize)>,
    /// An absence scan asked for and not finished: instances changed since the rules last looked are
    /// visited, [`VISIT_MAX`] per commit.
    absence_scan: bool,
}

const NODE_CACHE_MAX: usize = 1_000_000;

impl Engine {
    pub fn new(store: Store, cfg: EngineConfig) -> Result<Engine, StoreError> {
        let absence = cfg.alerts.as_ref().map(|a| a.params());
        store.ensure_index(crate::store::tally::IndexParams::new(&cfg.risk, absence.as_ref()), now_ms())?;
        let mut counters = store.counters()?;
        let mut parked = ParkedSet::default();
        for p in store.parked()? {
            parked.insert(p);
        }
        counters.lines_parked = parked.entries.len() as u64;
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
            parked,
            watermark: 0,
            now: now_ms(),
            uncommitted_lines: 0,
            spans: Vec::new(),
            absence_scan: false,
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

    /// Whether what waits for the next commit has grown to [`DIRTY_MAX`] records: a backfill that touches
    /// a million instances must not hold them all in memory (and in one batch) until its next commit.
    pub fn should_commit(&self) -> bool {
        self.dirty.len() >= DIRTY_MAX
    }

    /// Registers a live source (its clock is the wall clock). `id` must be stable across restarts for a
    /// replayable source.
    pub fn add_source(&mut self, id: SourceId, name: &str, replayable: bool) -> Result<SourceHandle, StoreError> {
        Ok(self.add_source_with(id, name, replayable, YearClock::live())?.0)
    }

    /// Registers a source whose RFC 3164 years start from `clock` unless the store holds the clock of an
    /// earlier run at its position. Returns where a replayable source stands.
    pub fn add_source_with(&mut self, id: SourceId, name: &str, replayable: bool, clock: YearClock) -> Result<(SourceHandle, Option<Resume>), StoreError> {
        let pos = if replayable { self.store.position(&id.to_string())? } else { None };
        let resume = pos.as_ref().map(|p| Resume { offset: p.offset, tail: p.tail.map(|t| StreamTail { len: t.len, hash: t.hash }) });
        let resumed_clock = pos.as_ref().and_then(|p| p.clock.clone());
        let label = source_label(&id, name);
        self.cursors.push(Cursor {
            id,
            name: name.to_string(),
            label,
            delta: SourceCounters::default(),
            run: SourceRun::default(),
            replayable,
            committed: pos.map(|p| p.offset),
            pending: None,
            clock: resumed_clock.unwrap_or_else(|| clock.clone()),
            initial_clock: clock,
            // Refilled by what the source feeds; a position is only written after it fed something.
            tail: Vec::new(),
        });
        Ok((SourceHandle::new(self.cursors.len() - 1), resume))
    }

    /// The source turned out to be another stream than the one at its stored position (its bytes
    /// differ): read it from the start. Nothing is lost: applying a fact again changes nothing.
    pub fn restart(&mut self, h: SourceHandle) {
        let c = &mut self.cursors[h.index()];
        c.committed = None;
        c.clock = c.initial_clock.clone();
        c.tail.clear();
    }

    /// A reader skipped `lines` it found at or before the source's stored position (without feeding
    /// them): counted as replayed.
    pub fn note_skipped(&mut self, h: SourceHandle, lines: u64) {
        self.counters.lines_replayed_skipped += lines;
        self.cursors[h.index()].run.lines_skipped_replay += lines;
    }

    /// What a source contributed since it was registered.
    pub fn source_run(&self, h: SourceHandle) -> SourceRun {
        self.cursors[h.index()].run
    }

    /// Every replayable source's durable position, by source id: what a Kafka source may commit.
    pub fn committed_positions(&self) -> std::collections::HashMap<SourceId, u64> {
        self.cursors.iter().filter(|c| c.replayable).filter_map(|c| Some((c.id.clone(), c.committed?))).collect()
    }

    /// Feeds one line (a syslog message) that ends at `end_offset` in its source.
    pub fn feed_line(&mut self, h: SourceHandle, end_offset: u64, line: &[u8]) {
        self.counters.lines_read += 1;
        self.uncommitted_lines += 1;
        let cur = &mut self.cursors[h.index()];
        cur.delta.lines_read += 1;
        cur.run.lines_read += 1;
        if cur.replayable && cur.committed.is_some_and(|c| end_offset <= c) {
            self.counters.lines_replayed_skipped += 1;
            cur.run.lines_skipped_replay += 1;
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
        let from = self.account(h, base, chunk, count_lines(chunk));
        let mut spans = std::mem::take(&mut self.spans);
        spans.clear();
        self.prefilter.candidate_lines(chunk, from, &mut spans);
        for &(start, end) in &spans {
            self.candidate(h, &chunk[start..end]);
        }
        self.spans = spans;
    }

    /// [`Engine::feed_chunk`] for a run whose line count and candidate lines the caller already knows
    /// (the archive merge scans each input's chunk once and hands it out in runs): `candidates` are
    /// (start, end) spans into the buffer the run starts at `shift` of.
    pub fn feed_run(&mut self, h: SourceHandle, base: u64, run: &[u8], lines: u64, candidates: &[(usize, usize)], shift: usize) {
        let from = self.account(h, base, run, lines);
        for &(start, end) in candidates {
            if start >= shift + from {
                self.candidate(h, &run[start - shift..end - shift]);
            }
        }
    }

    /// Counts a chunk's lines and moves its source's position and tail; returns where the lines not
    /// applied before start (after the stored position of a replayed source).
    fn account(&mut self, h: SourceHandle, base: u64, chunk: &[u8], lines: u64) -> usize {
        let cur = &mut self.cursors[h.index()];
        let mut from = 0usize;
        if cur.replayable {
            if let Some(c) = cur.committed {
                if c > base {
                    from = ((c - base) as usize).min(chunk.len());
                    let skipped = count_lines(&chunk[..from]);
                    self.counters.lines_replayed_skipped += skipped;
                    cur.run.lines_skipped_replay += skipped;
                }
            }
            keep_tail(&mut cur.tail, chunk);
        }
        self.counters.lines_read += lines;
        self.uncommitted_lines += lines;
        cur.delta.lines_read += lines;
        cur.run.lines_read += lines;
        if from < chunk.len() {
            cur.pending = Some(base + chunk.len() as u64);
        }
        from
    }

    fn reject(&mut self, h: SourceHandle, r: Reject) {
        self.cursors[h.index()].delta.lines_rejected += 1;
        self.cursors[h.index()].run.lines_rejected += 1;
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
        let parsed = parse_line(text, &mut self.cursors[h.index()].clock, now);
        match parsed {
            Err(r) => self.reject(h, r),
            Ok(None) => {}
            Ok(Some(ev)) => {
                self.counters.lines_relevant += 1;
                self.cursors[h.index()].delta.lines_relevant += 1;
                self.cursors[h.index()].run.lines_relevant += 1;
                // A line dated ahead of the wall clock must not make every pending deletion final at once.
                if let (Some(t), false) = (ev.time, ev.weak_year) {
                    if t <= self.now.saturating_add(crate::parse::FUTURE_SKEW_MS) {
                        self.watermark = self.watermark.max(t);
                    }
                }
                self.handle(ev);
            }
        }
    }

    /// Attributes an event and applies it, or parks it until its instance is known.
    fn handle(&mut self, ev: Event<'_>) {
        match self.attribute(&ev) {
            Ok(Some(id)) => {
                let id = id.into_owned();
                self.apply_attributed(&id, ev);
            }
            Ok(None) if ev.node_uuid.is_some() || ev.short_id.is_some() => self.park(ev.into_owned(), None),
            Ok(None) => {
                self.counters.lines_unattributed += 1;
                tracing::debug!(event = ev.kind.name(), host = %ev.host, "event names no instance and no container");
            }
            Err(e) => {
                // A store read failing is not the line's fault; count it unattributed and say so.
                self.counters.lines_unattributed += 1;
                tracing::warn!(error = %e, "store lookup failed while attributing an event");
            }
        }
    }

    fn park(&mut self, event: Event<'static>, instance: Option<String>) {
        if self.cfg.parked_max == 0 {
            self.give_up(1);
            return;
        }
        while self.parked.entries.len() >= self.cfg.parked_max {
            let Some(seq) = self.parked.oldest().map(|p| p.seq) else { break };
            self.parked.remove(seq);
            self.give_up(1);
        }
        tracing::debug!(event = event.kind.name(), node = ?event.node_uuid, short = ?event.short_id, "parked a line until its instance is known");
        let seq = self.parked.next_seq;
        self.parked.added.push(seq);
        self.parked.insert(Parked { seq, parked_at: self.now, event, instance });
    }

    fn give_up(&mut self, n: u64) {
        self.counters.lines_unattributed += n;
        self.counters.lines_expired_unattributed += n;
    }

    /// Applies a parked line whose instance became known.
    fn unpark(&mut self, items: Vec<Parked>) {
        for p in items {
            match p.instance {
                Some(id) => self.apply_attributed(&id, p.event),
                None => self.handle(p.event),
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

    /// Remembers a node's instance; true when that is news (lines parked for the node can go now).
    fn remember_node(&mut self, node: &str, id: &str) -> bool {
        // Nearly every line names a node already known; skip the two copies and the insert then.
        if self.nodes.get(node).is_some_and(|known| known == id) {
            return false;
        }
        if self.nodes.len() >= NODE_CACHE_MAX {
            self.nodes.clear();
        }
        self.nodes.insert(node.to_string(), id.to_string());
        true
    }

    fn load(&mut self, id: &str, t: i64) -> Result<(&mut InstanceRecord, bool), StoreError> {
        let mut created = false;
        if !self.dirty.contains_key(id) {
            let rec = match self.store.record(id)? {
                Some(r) => r,
                None => {
                    created = true;
                    InstanceRecord::new(id, t)
                }
            };
            self.dirty.insert(id.to_string(), rec);
        }
        Ok((self.dirty.get_mut(id).expect("inserted above"), created))
    }

    fn apply_attributed(&mut self, id: &str, mut ev: Event<'_>) {
        let t = ev.time.unwrap_or(self.watermark.max(1));
        let rules = self.cfg.rules;
        // One hash lookup for the record nearly every event finds already loaded.
        let (rec, created) = match self.dirty.get_mut(id) {
            Some(r) => (r, false),
            None => match self.load(id, t) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(instance = id, error = %e, "cannot load the instance record; event not applied");
                    return;
                }
            },
        };
        if ev.weak_year {
            // Its year was a guess: place it next to what the instance's anchored lines say, or wait for them.
            match (rec.facts.anchored_min, rec.facts.anchored_max, ev.time) {
                (Some(lo), Some(hi), Some(t)) => ev.time = Some(place_year(t, lo, hi)),
                (_, _, Some(_)) => {
                    if created {
                        // Nothing of it is stored yet; an empty record is not kept for a line that waits.
                        self.dirty.remove(id);
                    }
                    self.park(ev.into_owned(), Some(id.to_string()));
                    return;
                }
                _ => {}
            }
        }
        let was_anchored = rec.facts.anchored_min.is_some();
        let effects = state::apply(rec, &ev, &rules);
        let now_anchored = !was_anchored && rec.facts.anchored_min.is_some();
        self.counters.lines_attributed += 1;
        self.counters.events_applied += 1;
        self.effects.extend(effects);

        let learned = match (&ev.node_uuid, &ev.kind) {
            (Some(n), _) => Some(&**n),
            (None, EventKind::AddNode { node_uuid: Some(n), .. } | EventKind::RemoveNode { node_uuid: Some(n), .. }) => Some(n.as_str()),
            _ => None,
        };
        let mut waiting = Vec::new();
        if let Some(n) = learned {
            if self.remember_node(n, id) && !self.parked.entries.is_empty() {
                waiting.extend(self.parked.take(Index::Node, n));
            }
        }
        if created && !self.parked.entries.is_empty() {
            if let Some(short) = id.get(..6) {
                waiting.extend(self.parked.take(Index::Short, &short.to_ascii_lowercase()));
            }
        }
        if now_anchored && !self.parked.entries.is_empty() {
            waiting.extend(self.parked.take(Index::Instance, id));
        }
        if !waiting.is_empty() {
            waiting.sort_by_key(|p| p.seq);
            self.unpark(waiting);
        }
    }

    /// Makes deletions final whose grace has passed by `now` (event time in a backfill, wall clock while
    /// watching).
    fn tick(&mut self, now: i64) -> Result<(), StoreError> {
        let rules = self.cfg.rules;
        let mut ids: Vec<String> = self.dirty.values().filter(|r| r.needs_tick()).map(|r| r.instance_id.clone()).collect();
        let loaded: std::collections::HashSet<String> = ids.iter().cloned().collect();
        // A stored deletion is loaded (and rewritten) only once its grace can have passed, not at every
        // commit of the grace: a burst of deletions costs one rewrite each.
        for (id, first) in self.store.pending_deletions()? {
            let due = first.is_none_or(|e| now - e >= rules.deletion_grace_ms);
            if due && !loaded.contains(&id) {
                ids.push(id);
            }
        }
        for id in ids {
            let (rec, _) = self.load(&id, now)?;
            let effects = state::tick(rec, now, &rules);
            self.effects.extend(effects);
        }
        Ok(())
    }

    /// Gives up parked lines older than the configured age.
    fn expire_parked(&mut self) {
        let cutoff = self.now.saturating_sub(self.cfg.parked_ttl_ms);
        let old: Vec<u64> = self.parked.entries.values().take_while(|p| p.parked_at < cutoff).map(|p| p.seq).collect();
        for seq in &old {
            self.parked.remove(*seq);
        }
        self.parked.compact();
        if !old.is_empty() {
            tracing::info!(lines = old.len(), "gave up parked lines whose instance never became known");
            self.give_up(old.len() as u64);
        }
    }

    /// Commits everything fed so far, after advancing deletions to `tick_at` (defaults to the newest
    /// event time seen). Returns what became durable.
    pub fn commit(&mut self, tick_at: Option<i64>) -> Result<Committed, StoreError> {
        self.commit_at(tick_at, now_ms())
    }

    /// [`Engine::commit`] at wall-clock time `now` (tests move the clock).
    pub fn commit_at(&mut self, tick_at: Option<i64>, now: i64) -> Result<Committed, StoreError> {
        self.now = now;
        let tick_now = tick_at.unwrap_or(self.watermark);
        if tick_now > 0 {
            self.tick(tick_now)?;
        }
        self.expire_parked();
        // A gauge, read off the set itself rather than kept beside it.
        self.counters.lines_parked = self.parked.entries.len() as u64;
        let now = self.now;
        let mut positions = Vec::new();
        for c in &self.cursors {
            if let (true, Some(p)) = (c.replayable, c.pending) {
                if Some(p) != c.committed {
                    let last = &c.tail[c.tail.len().saturating_sub(TAIL_BYTES)..];
                    let tail = (!last.is_empty()).then(|| Tail { len: last.len() as u32, hash: safeguard_core::fnv1a(last) });
                    let pos = Position { offset: p, name: c.name.clone(), updated_at: now, clock: Some(c.clock.clone()), tail };
                    positions.push((c.id.to_string(), pos));
                }
            }
        }
        let parked_changed = !self.parked.added.is_empty() || !self.parked.removed.is_empty();
        let (revisited, missing) = self.visit(now)?;
        if self.dirty.is_empty()
            && positions.is_empty()
            && self.effects.is_empty()
            && self.alerts.is_empty()
            && self.uncommitted_lines == 0
            && !parked_changed
            && revisited.is_empty()
            && missing.is_empty()
        {
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
        if let Some(cfg) = self.cfg.alerts.as_ref().map(|a| a.params()) {
            let cfg = &cfg;
            for e in &effects {
                let raised = match e {
                    Effect::InstanceDeleted { instance_id, at, .. } => self.dirty.get(instance_id).and_then(|r| alerts::on_deletion(r, *at, now, cfg)),
                    // Only a deletion that was announced needs its all-clear.
                    Effect::DeletionReversed { instance_id, at, evidence } => match self.dirty.get(instance_id) {
                        Some(r)
                            if self.store.alert_exists(&alerts::deletion_id(instance_id, *at))?
                                || new_alerts.iter().any(|a| a.id == alerts::deletion_id(instance_id, *at)) =>
                        {
                            alerts::on_reversal(r, *at, evidence, now, cfg)
                        }
                        _ => None,
                    },
                    _ => None,
                };
                new_alerts.extend(raised);
            }
        }
        // The alert id is its idempotency key: never recreate (and so resend) one that exists.
        let mut fresh = Vec::new();
        for a in new_alerts {
            if !self.store.alert_exists(&a.id)? && !fresh.iter().any(|f: &Alert| f.id == a.id) {
                fresh.push(a);
            }
        }
        let added: Vec<u64> = std::mem::take(&mut self.parked.added);
        let removed: Vec<u64> = std::mem::take(&mut self.parked.removed);
        let ws = WriteSet {
            records: self.dirty.values().collect(),
            positions,
            counters: Some(&self.counters),
            alerts: fresh,
            parked: added.iter().filter_map(|s| self.parked.entries.get(s)).collect(),
            unparked: removed.into_iter().filter(|s| !self.parked.entries.contains_key(s)).collect(),
            now,
            revisited: revisited.iter().map(|r| (r, self.cfg.raise_absence)).collect(),
            missing,
        };
        let records = ws.records.len();
        if let Err(e) = self.store.commit(ws) {
            // Nothing was written: keep what must still be written next time.
            self.parked.added = added;
            return Err(e);
        }
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
    /// Queues an alert raised beside the stream (the daily digest): it is committed with the next
    /// commit, unless an alert with its id was ever raised.
    pub fn raise(&mut self, a: Alert) {
        self.alerts.push(a);
    }

    /// Whether instances wait for the absence rules to look at them (an absence scan still running).
    pub fn absence_scan_running(&self) -> bool {
        self.absence_scan
    }

    /// Asks for the absence rules (no recent base backup, WAL failing or silent) to look at every instance
    /// changed since they last did; commits from now on visit them ([`VISIT_MAX`] each) and commit what
    /// they raise. Instances nothing happened to are visited only when their deadline passes.
    pub fn scan_absence(&mut self) {
        if self.cfg.raise_absence {
            self.absence_scan = true;
        }
    }

    /// Unchanged records due a visit at `now`: their deadline passed, or (during an absence scan) they
    /// changed since the rules last looked. Raises what the absence rules find in them. Returns them, and
    /// the ids that name no record.
    fn visit(&mut self, now: i64) -> Result<(Vec<InstanceRecord>, Vec<String>), StoreError> {
        let mut ids = self.store.due_instances(now, VISIT_MAX)?;
        if self.absence_scan {
            let more = self.store.unevaluated_instances(VISIT_MAX)?;
            self.absence_scan = more.len() == VISIT_MAX;
            ids.extend(more);
        }
        ids.sort_unstable();
        ids.dedup();
        let params = self.cfg.alerts.as_ref().filter(|_| self.cfg.raise_absence).map(|a| a.params());
        let (mut revisited, mut missing) = (Vec::new(), Vec::new());
        for id in ids {
            // A changed record is indexed with its change, and looked at by the next scan.
            if self.dirty.contains_key(&id) {
                continue;
            }
            match self.store.record(&id)? {
                Some(r) => {
                    if let Some(p) = &params {
                        self.alerts.extend(alerts::absence(&r, now, p));
                    }
                    revisited.push(r);
                }
                None => missing.push(id),
            }
        }
        Ok((revisited, missing))
    }
}

/// Keeps (at least) the last [`TAIL_BYTES`] of a stream in `tail`. It grows to a few times that before
/// the front is dropped, so merged inputs fed a line at a time do not move 4 KiB per line.
fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    if chunk.len() >= TAIL_BYTES {
        tail.clear();
        tail.extend_from_slice(&chunk[chunk.len() - TAIL_BYTES..]);
    } else {
        if tail.len() + chunk.len() > 8 * TAIL_BYTES {
            tail.drain(..tail.len() - TAIL_BYTES);
        }
        tail.extend_from_slice(chunk);
    }
}

/// The per-source counter label: the kind of source, not the rotating stream, so metrics stay few.
fn source_label(id: &SourceId, name: &str) -> String {
    match id {
        SourceId::Kafka { topic, .. } => format!("kafka:{topic}"),
        SourceId::Lines { .. } if name == "stdin" => "stdin".into(),
        SourceId::Lines { .. } => "file".into(),
        SourceId::Syslog => "syslog".into(),
    }
}

/// Lines in a buffer: newlines, plus a final unterminated line.
pub fn count_lines(b: &[u8]) -> u64 {
    let n = memchr::memchr_iter(b'\n', b).count() as u64;
    n + u64::from(!b.is_empty() && b[b.len() - 1] != b'\n')
}
