//! Kafka source: one consumer-group member on its own thread, feeding one engine cursor per partition
//! (`SourceId::Kafka`, stored as `kafka:<topic>:<partition>`).
//!
//! Nothing lost, nothing applied twice:
//! - The store is the truth. On assignment a partition resumes at the store's position for it (the
//!   engine skips anything at or before it anyway); the group's committed offset is only the fallback
//!   for a store that has none, and `start` applies when neither exists.
//! - Offsets are committed to Kafka only from the positions the engine reports durable, never ahead.
//! - What is buffered is fed oldest record first across partitions, and never held back: records are a
//!   function of the set of facts (see [`crate::state`]) and a line whose instance is not known yet waits
//!   in the engine, so a partition read ahead of another changes nothing. (Until records were
//!   order-independent, the merge waited for lagging partitions and held fresh records `order_hold`
//!   long; dropping that took about a second off every live line.)
//! - A partition whose log restarts below the applied position (topic deleted and recreated, a broker
//!   that lost its data) starts a new epoch (see [`super::position`]), so the new log's low offsets are
//!   not mistaken for replays.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::config::{KafkaClientSettings, KafkaConfig, KafkaSourceError, KafkaStart};
use super::position::{decode_position, encode_position};
use crate::sources::{Durable, Msg, Sink, SourceHandle, SourceId};

/// How often durable positions are committed to Kafka.
const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// Repeated warnings of one kind are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(30);
/// How long a revoke or a shutdown waits for the store to make what was fed durable.
const FLUSH_WAIT: Duration = Duration::from_secs(10);
const RESTARTED: &str =
    "Kafka partition restarted below the offset already applied (topic recreated, or the broker lost its log); reading the new log as new lines";

/// Handed back by [`start`]: resolves when the consumer has committed what is durable and left its group.
pub struct Finished(pub std::sync::mpsc::Receiver<()>);

/// Creates the consumer (settings errors fail here, at start-up), subscribes, and runs it on a thread;
/// it logs lag and messages/s every `stats_every`. A broker that is down at start-up is not an error:
/// the watcher waits for it.
pub fn start(
    cfg: &KafkaConfig,
    stats_every: Duration,
    sink: Sink,
    durable: watch::Receiver<Durable>,
    stop: Arc<AtomicBool>,
) -> Result<Finished, KafkaSourceError> {
    let client = cfg.client_config()?;
    let ctx = Ctx::new(cfg, sink, durable);
    let consumer: BaseConsumer<Ctx> = client.create_with_context(ctx).map_err(|e| KafkaSourceError::Client { reason: cfg.client.redact(&e.to_string()) })?;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(|e| KafkaSourceError::Subscribe { topics: cfg.topics.join(", "), reason: cfg.client.redact(&e.to_string()) })?;
    tracing::info!(brokers = %cfg.brokers.join(","), topics = %cfg.topics.join(","), group = %cfg.group_id, start = ?cfg.start, "consuming from Kafka");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("kafka".into())
        .spawn(move || {
            run(&consumer, &stop, stats_every);
            // Dropping the consumer leaves the group, so a restarted watcher gets its partitions at once.
            drop(consumer);
            let _ = done_tx.send(());
        })
        .map_err(KafkaSourceError::Thread)?;
    Ok(Finished(done_rx))
}

struct Buffered {
    ts: i64,
    offset: i64,
    end: u64,
    bytes: Vec<u8>,
}

struct Part {
    topic: String,
    /// `topic` for librdkafka's C API, made once.
    ctopic: CString,
    partition: i32,
    id: SourceId,
    h: SourceHandle,
    epoch: u64,
    /// Offset after the last message fed to the engine (or the store's position before any).
    next: Option<i64>,
    /// Offset after the last message taken from librdkafka (fed or buffered).
    received: Option<i64>,
    /// Offset last committed to Kafka by this process.
    committed: i64,
    /// Engine position of the last message fed: what a revoke waits to see durable.
    fed_end: Option<u64>,
    assigned: bool,
    buf: VecDeque<Buffered>,
    fed: u64,
}

impl Part {
    /// Reads this partition's log again from `lo` as new lines, in a new epoch; returns the epoch.
    fn restart_at(&mut self, lo: i64) -> u64 {
        self.epoch += 1;
        self.next = Some(lo);
        self.received = Some(lo);
        self.epoch
    }
}

#[derive(Default)]
struct Outage {
    down_since: Option<Instant>,
    last_warn: Option<Instant>,
    reason: String,
}

struct State {
    parts: Vec<Part>,
    index: HashMap<String, HashMap<i32, usize>>,
    durable: watch::Receiver<Durable>,
    buffered_bytes: usize,
    buffered_msgs: usize,
    engine_gone: bool,
    commit_failed: bool,
    warned: HashMap<String, (Instant, u64)>,
}

struct Ctx {
    state: Mutex<State>,
    outage: Mutex<Outage>,
    down: AtomicBool,
    sink: Sink,
    group: String,
    start: KafkaStart,
    client: KafkaClientSettings,
    stopping: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere on this thread cannot leave these maps half-updated in a way that matters more
    // than stopping the source would.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ctx {
    fn new(s: &KafkaConfig, sink: Sink, durable: watch::Receiver<Durable>) -> Ctx {
        Ctx {
            state: Mutex::new(State {
                parts: Vec::new(),
                index: HashMap::new(),
                durable,
                buffered_bytes: 0,
                buffered_msgs: 0,
                engine_gone: false,
                commit_failed: false,
                warned: HashMap::new(),
            }),
            outage: Mutex::new(Outage::default()),
            down: AtomicBool::new(false),
            sink,
            group: s.group_id.clone(),
            start: s.start,
            client: s.client.clone(),
            stopping: AtomicBool::new(false),
        }
    }

    /// Logs a warning of kind `key` at most every [`WARN_EVERY`], counting what was held back.
    fn warn_limited(&self, st: &mut State, key: &str, msg: &str) {
        let now = Instant::now();
        let msg = self.client.redact(msg);
        match st.warned.get_mut(key) {
            Some((last, held)) if now.duration_since(*last) < WARN_EVERY => *held += 1,
            Some((last, held)) => {
                tracing::warn!(repeated = *held, "{msg}");
                *last = now;
                *held = 0;
            }
            None => {
                tracing::warn!("{msg}");
                st.warned.insert(key.to_string(), (now, 0));
            }
        }
    }

    fn broker_down(&self, reason: &str) {
        let mut o = lock(&self.outage);
        let now = Instant::now();
        let since = *o.down_since.get_or_insert(now);
        self.down.store(true, Ordering::Relaxed);
        o.reason = self.client.redact(reason);
        if o.last_warn.is_none_or(|w| now.duration_since(w) >= WARN_EVERY) {
            o.last_warn = Some(now);
            tracing::warn!(
                group = %self.group,
                down_for = %format!("{}s", since.elapsed().as_secs()),
                reason = %o.reason,
                "Kafka brokers unreachable; the watcher keeps running and resumes where the store left off when they return (check the brokers and `brokers` in the config)"
            );
        }
    }

    fn broker_up(&self) {
        if !self.down.swap(false, Ordering::Relaxed) {
            return;
        }
        let mut o = lock(&self.outage);
        if let Some(since) = o.down_since.take() {
            o.last_warn = None;
            tracing::info!(group = %self.group, after = %format!("{}s", since.elapsed().as_secs()), "Kafka reachable again; resuming");
        }
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    fn report_error(&self, e: &KafkaError, reason: &str) {
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::Resolve) => {
                self.broker_down(&format!("{e}: {reason}"))
            }
            code => {
                let key = format!("{code:?}");
                let mut st = lock(&self.state);
                let what = match code {
                    Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                        "a subscribed Kafka topic does not exist (yet); consuming starts when it appears"
                    }
                    _ => "Kafka client error",
                };
                self.warn_limited(&mut st, &key, &format!("{what}: {e}: {reason}"));
            }
        }
    }

    /// Registers a partition with the engine on its first assignment in this process.
    fn part(&self, st: &mut State, topic: &str, partition: i32) -> Option<usize> {
        if let Some(&i) = st.index.get(topic).and_then(|m| m.get(&partition)) {
            return Some(i);
        }
        {
            let id = SourceId::kafka(topic, partition);
            let name = format!("kafka topic {topic} partition {partition} (group {})", self.group);
            // Kafka lines are current when shipped live; the clock persisted at the position carries a
            // backfill's years across restarts.
            let (h, pos) = match self.sink.register_blocking(id.clone(), &name, true, crate::parse::YearClock::live()) {
                Ok(r) => r,
                Err(_) => {
                    st.engine_gone = true;
                    return None;
                }
            };
            let (epoch, next) = match pos.map(|r| decode_position(r.offset)) {
                Some((e, n)) => (e, Some(n)),
                None => (0, None),
            };
            let p = Part {
                topic: topic.to_string(),
                ctopic: CString::new(topic).unwrap_or_default(),
                partition,
                id,
                h,
                epoch,
                next,
                received: None,
                committed: -1,
                fed_end: None,
                assigned: false,
                buf: VecDeque::new(),
                fed: 0,
            };
            st.parts.push(p);
            st.index.entry(topic.to_string()).or_default().insert(partition, st.parts.len() - 1);
        }
        Some(st.parts.len() - 1)
    }

    /// Sets where each newly assigned partition starts: the position this process or the store has,
    /// else the group's committed offset, else `start`.
    fn plan_assignment(&self, c: &BaseConsumer<Ctx>, tpl: &mut TopicPartitionList) {
        let mut ask_group = TopicPartitionList::new();
        let mut resume: Vec<(usize, String, i32, i64)> = Vec::new();
        {
            let mut st = lock(&self.state);
            for el in tpl.elements() {
                let (topic, partition) = (el.topic().to_string(), el.partition());
                let Some(i) = self.part(&mut st, &topic, partition) else { return };
                let st = &mut *st;
                let p = &mut st.parts[i];
                st.buffered_bytes = st.buffered_bytes.saturating_sub(p.buf.iter().map(|b| b.bytes.len()).sum());
                st.buffered_msgs = st.buffered_msgs.saturating_sub(p.buf.len());
                p.buf.clear();
                p.assigned = true;
                p.received = p.next;
                match p.next {
                    Some(n) => resume.push((i, topic, partition, n)),
                    None => {
                        let _ = ask_group.add_partition(&topic, partition);
                    }
                }
            }
        }
        // Broker round trips without the state lock: librdkafka's threads take it to log.
        // The log's real extent, asked before resuming: librdkafka's cached watermarks date from before
        // an outage, and a restart noticed only after other partitions had fed lines would apply those
        // lines ahead of this partition's earlier ones.
        let marks: Vec<_> = resume.iter().map(|(_, t, p, _)| c.fetch_watermarks(t, *p, Duration::from_secs(10)).ok()).collect();
        let committed = (ask_group.count() > 0).then(|| c.committed_offsets(ask_group.clone(), Duration::from_secs(10)));

        let mut st = lock(&self.state);
        let mut plan: Vec<(String, i32, Offset, &'static str)> = Vec::new();
        for ((i, topic, partition, n), mark) in resume.into_iter().zip(marks) {
            match mark {
                Some((lo, hi)) if hi < n => {
                    let epoch = st.parts[i].restart_at(lo);
                    tracing::warn!(%topic, partition, applied_up_to = n, high_watermark = hi, epoch, "{RESTARTED}");
                    plan.push((topic, partition, Offset::Offset(lo), "the start of a restarted log"));
                }
                // Watermarks unreadable: `check_resets` still catches a restarted log once fetching.
                _ => plan.push((topic, partition, Offset::Offset(n), "the position already applied (store)")),
            }
        }
        if let Some(committed) = committed {
            if let Err(e) = &committed {
                self.warn_limited(
                    &mut st,
                    "committed",
                    &format!("cannot read the group's committed offsets ({e}); partitions without a store position start from the earliest retained offset"),
                );
            }
            for el in ask_group.elements() {
                let found = committed.as_ref().ok().and_then(|t| t.find_partition(el.topic(), el.partition())).map(|e| e.offset());
                let (off, why) = match (found, &committed) {
                    (Some(Offset::Offset(o)), _) => (Offset::Offset(o), "the group's committed offset (no store position)"),
                    (_, Err(_)) => (Offset::Beginning, "the earliest retained offset (group offsets unreadable)"),
                    _ => match self.start {
                        KafkaStart::Earliest => (Offset::Beginning, "start = earliest (no store or group position)"),
                        KafkaStart::Latest => (Offset::End, "start = latest (no store or group position)"),
                    },
                };
                if let (Offset::Offset(o), Some(&i)) = (off, st.index.get(el.topic()).and_then(|m| m.get(&el.partition()))) {
                    st.parts[i].received = Some(o);
                }
                plan.push((el.topic().to_string(), el.partition(), off, why));
            }
        }
        drop(st);
        for (topic, partition, off, why) in plan {
            if let Err(e) = tpl.set_partition_offset(&topic, partition, off) {
                tracing::warn!(%topic, partition, error = %e, "cannot set the start offset of an assigned partition");
            }
            tracing::info!(%topic, partition, offset = ?off, from = why, "Kafka partition assigned");
        }
    }

    /// Before partitions go: make what was fed durable and commit it; drop what was only buffered.
    fn before_revoke(&self, c: &BaseConsumer<Ctx>, tpl: &TopicPartitionList) {
        let lost = c.assignment_lost();
        {
            let mut st = lock(&self.state);
            let st = &mut *st;
            for el in tpl.elements() {
                if let Some(&i) = st.index.get(el.topic()).and_then(|m| m.get(&el.partition())) {
                    let p = &mut st.parts[i];
                    p.assigned = false;
                    st.buffered_bytes = st.buffered_bytes.saturating_sub(p.buf.iter().map(|b| b.bytes.len()).sum());
                    st.buffered_msgs = st.buffered_msgs.saturating_sub(p.buf.len());
                    p.buf.clear();
                    p.received = p.next;
                }
            }
        }
        tracing::info!(partitions = tpl.count(), lost, "Kafka partitions revoked");
        if !lost && !self.stopping.load(Ordering::Relaxed) && !self.is_down() {
            self.flush_and_commit(c, Some(tpl));
        }
    }

    /// Asks the engine to commit now, waits (bounded) until the store covers everything fed from the
    /// given partitions (all when None), and commits those positions synchronously.
    fn flush_and_commit(&self, c: &BaseConsumer<Ctx>, only: Option<&TopicPartitionList>) {
        let want: Vec<(SourceId, u64)> = {
            let st = lock(&self.state);
            let sel = |p: &&Part| only.is_none_or(|t| t.find_partition(&p.topic, p.partition).is_some());
            st.parts.iter().filter(sel).filter_map(|p| p.fed_end.map(|e| (p.id.clone(), e))).collect()
        };
        if !self.stopping.load(Ordering::Relaxed) && self.sink.send_blocking(Msg::Tick).is_err() {
            lock(&self.state).engine_gone = true;
        }
        let deadline = Instant::now() + FLUSH_WAIT;
        loop {
            let covered = {
                let st = lock(&self.state);
                let d = st.durable.borrow();
                want.iter().all(|(id, pos)| d.get(id).is_some_and(|have| have >= pos))
            };
            let closed = lock(&self.state).durable.has_changed().is_err();
            if covered || Instant::now() >= deadline {
                break;
            }
            if closed {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.commit_durable(c, CommitMode::Sync, only);
    }

    /// Commits to Kafka the positions the store has made durable (never more).
    fn commit_durable(&self, c: &BaseConsumer<Ctx>, mode: CommitMode, only: Option<&TopicPartitionList>) {
        let mut st = lock(&self.state);
        let d: Durable = st.durable.borrow_and_update().clone();
        let retry = std::mem::take(&mut st.commit_failed);
        let mut tpl = TopicPartitionList::new();
        for p in st.parts.iter_mut() {
            if !p.assigned && only.is_none() {
                continue;
            }
            if only.is_some_and(|t| t.find_partition(&p.topic, p.partition).is_none()) {
                continue;
            }
            let Some(&pos) = d.get(&p.id) else { continue };
            let (epoch, next) = decode_position(pos);
            if epoch == p.epoch && (next > p.committed || retry) && tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(next)).is_ok() {
                p.committed = next;
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = c.commit(&tpl, mode) {
            st.commit_failed = true;
            let msg = format!("committing durable offsets to Kafka failed ({e}); the store keeps the position, so nothing is lost; retrying");
            self.warn_limited(&mut st, "commit", &msg);
        }
    }

    /// Takes one message from librdkafka into its partition's buffer.
    fn receive(&self, topic: &str, partition: i32, offset: i64, ts: Option<i64>, payload: &[u8]) {
        let mut st = lock(&self.state);
        let st = &mut *st;
        let Some(&i) = st.index.get(topic).and_then(|m| m.get(&partition)) else { return };
        let p = &mut st.parts[i];
        if !p.assigned {
            return;
        }
        let mut reset = None;
        if let Some(r) = p.received {
            if offset < r {
                // Kafka never hands out an offset twice for one log: this partition's log restarted.
                p.epoch += 1;
                p.next = Some(offset);
                reset = Some((r, p.epoch));
            }
        }
        p.received = Some(offset + 1);
        let mut bytes = payload;
        while let [rest @ .., b'\n' | b'\r'] = bytes {
            bytes = rest;
        }
        let b = Buffered { ts: ts.unwrap_or(i64::MIN), offset, end: encode_position(p.epoch, offset + 1), bytes: bytes.to_vec() };
        st.buffered_bytes += b.bytes.len();
        st.buffered_msgs += 1;
        p.buf.push_back(b);
        if let Some((was, epoch)) = reset {
            tracing::warn!(
                %topic, partition, offset, applied_up_to = was, epoch,
                "{RESTARTED}"
            );
        }
    }

    /// Feeds every buffered message to the engine, oldest record first across partitions. Returns false
    /// when the engine is gone.
    fn emit(&self) -> bool {
        let mut st = lock(&self.state);
        loop {
            let best = st.parts.iter().enumerate().filter(|(_, p)| p.assigned).filter_map(|(i, p)| Some((p.buf.front()?.ts, i))).min();
            let Some((_, i)) = best else { return true };
            let p = &mut st.parts[i];
            let Some(b) = p.buf.pop_front() else { return true };
            p.next = Some(b.offset + 1);
            p.fed_end = Some(b.end);
            p.fed += 1;
            let h = p.h;
            st.buffered_bytes = st.buffered_bytes.saturating_sub(b.bytes.len());
            st.buffered_msgs -= 1;
            if self.sink.send_blocking(Msg::Line { h, end: b.end, bytes: b.bytes }).is_err() {
                st.engine_gone = true;
                return false;
            }
        }
    }

    /// A partition whose high watermark is below what was already read has a new, shorter log (a
    /// broker that answers such fetches with nothing instead of "out of range"): start a new epoch
    /// at its beginning.
    fn check_resets(&self, c: &BaseConsumer<Ctx>) {
        let rk = c.client().native_ptr();
        let found: Vec<(usize, String, i32, i64, i64, i64)> = {
            let st = lock(&self.state);
            st.parts
                .iter()
                .enumerate()
                .filter(|(_, p)| p.assigned && p.buf.is_empty())
                .filter_map(|(i, p)| match (watermarks(rk, p), p.received) {
                    (Some((lo, hi)), Some(r)) if hi < r => Some((i, p.topic.clone(), p.partition, r, lo, hi)),
                    _ => None,
                })
                .collect()
        };
        for (i, topic, partition, was, lo, hi) in found {
            if let Err(e) = c.seek(&topic, partition, Offset::Offset(lo), Duration::from_secs(10)) {
                let mut st = lock(&self.state);
                self.warn_limited(&mut st, "seek", &format!("cannot seek to the start of the restarted log of {topic}/{partition}: {e}; retrying"));
                continue;
            }
            let epoch = lock(&self.state).parts[i].restart_at(lo);
            tracing::warn!(
                %topic, partition, applied_up_to = was, high_watermark = hi, epoch,
                "{RESTARTED}"
            );
        }
    }

    fn buffered(&self) -> bool {
        lock(&self.state).buffered_msgs > 0
    }

    fn log_stats(&self, c: &BaseConsumer<Ctx>, secs: f64) {
        let rk = c.client().native_ptr();
        let mut st = lock(&self.state);
        let d: Durable = st.durable.borrow().clone();
        let mut total = 0;
        let mut lags = Vec::new();
        let mut parts: Vec<&mut Part> = st.parts.iter_mut().filter(|p| p.assigned).collect();
        parts.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        for p in parts {
            total += std::mem::take(&mut p.fed);
            let durable = d.get(&p.id).map(|&pos| decode_position(pos)).filter(|(e, _)| *e == p.epoch).map(|(_, n)| n);
            let lag = match (watermarks(rk, p).map(|w| w.1), durable) {
                (Some(hi), Some(n)) => format!("{}", (hi - n).max(0)),
                (Some(hi), None) => format!("{hi}+"),
                _ => "?".into(),
            };
            lags.push(format!("{}/{}={lag}", p.topic, p.partition));
        }
        let down = self.is_down();
        if lags.is_empty() {
            tracing::warn!(
                group = %self.group,
                "no Kafka partitions are assigned to this watcher: the group is rebalancing, the brokers are unreachable, or another consumer holds them (give every store its own group_id)"
            );
        }
        tracing::info!(
            group = %self.group,
            messages = total,
            rate = %format!("{:.0} messages/s", total as f64 / secs.max(1e-9)),
            lag = %if lags.is_empty() { "no partitions assigned".to_string() } else { lags.join(" ") },
            buffered_bytes = st.buffered_bytes,
            brokers = if down { "unreachable" } else { "ok" },
            "kafka"
        );
    }
}

/// librdkafka's cached (low, high) watermarks from the last fetch: no network round trip.
fn watermarks(rk: *mut rdkafka::bindings::rd_kafka_t, p: &Part) -> Option<(i64, i64)> {
    let (mut lo, mut hi) = (-1i64, -1i64);
    // SAFETY: `rk` is the live consumer's handle; the call only reads librdkafka's partition state.
    let err = unsafe { rdkafka::bindings::rd_kafka_get_watermark_offsets(rk, p.ctopic.as_ptr(), p.partition, &mut lo, &mut hi) };
    (err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && hi >= 0).then_some((lo, hi))
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning
                if !self.is_down() =>
            {
                let mut st = lock(&self.state);
                self.warn_limited(&mut st, &format!("log:{fac}"), &format!("librdkafka {fac}: {msg}"));
            }
            _ => tracing::debug!(facility = fac, "librdkafka: {}", self.client.redact(msg)),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.report_error(&error, reason);
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(&self, c: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(c.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let res = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // An assignment means the group coordinator answered.
                self.broker_up();
                self.plan_assignment(c, tpl);
                if cooperative {
                    c.incremental_assign(tpl)
                } else {
                    c.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.before_revoke(c, tpl);
                if cooperative {
                    c.incremental_unassign(tpl)
                } else {
                    c.unassign()
                }
            }
            other => {
                tracing::warn!(error = ?other, "Kafka rebalance failed; dropping the assignment and rejoining the group");
                self.before_revoke(c, tpl);
                c.unassign()
            }
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "applying a Kafka rebalance failed; the group will rebalance again");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) => self.broker_up(),
            Err(e) => {
                let mut st = lock(&self.state);
                st.commit_failed = true;
                let msg = format!("committing durable offsets to Kafka failed ({e}); the store keeps the position, so nothing is lost; retrying");
                self.warn_limited(&mut st, "commit", &msg);
            }
        }
    }
}

fn run(c: &BaseConsumer<Ctx>, stop: &AtomicBool, stats_every: Duration) {
    let ctx = c.context().clone();
    let mut last_commit = Instant::now();
    let started = Instant::now();
    let mut last_stats = Instant::now();
    let mut last_reset_check = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) || lock(&ctx.state).engine_gone {
            break;
        }
        // Drain what librdkafka has ready, then feed the engine.
        let mut timeout = if ctx.buffered() { Duration::from_millis(5) } else { Duration::from_millis(100) };
        for _ in 0..10_000 {
            match c.poll(timeout) {
                Some(Ok(m)) => {
                    ctx.broker_up();
                    ctx.receive(m.topic(), m.partition(), m.offset(), m.timestamp().to_millis(), m.payload().unwrap_or_default());
                }
                // Already reported through the client's error callback.
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure))) => {}
                Some(Err(e)) => ctx.report_error(&e, "while consuming"),
                None => break,
            }
            timeout = Duration::ZERO;
        }
        if !ctx.emit() {
            break;
        }
        if last_commit.elapsed() >= COMMIT_EVERY {
            last_commit = Instant::now();
            let changed = lock(&ctx.state).durable.has_changed().unwrap_or(false);
            let retry = lock(&ctx.state).commit_failed;
            if changed || retry {
                ctx.commit_durable(c, CommitMode::Async, None);
            }
        }
        if last_reset_check.elapsed() >= Duration::from_secs(1) {
            last_reset_check = Instant::now();
            ctx.check_resets(c);
        }
        if last_stats.elapsed() >= stats_every {
            ctx.log_stats(c, last_stats.elapsed().as_secs_f64());
            last_stats = Instant::now();
        }
    }
    // Shutdown: the engine is committing what it has; commit that to Kafka before leaving the group.
    let stopping = stop.load(Ordering::Relaxed);
    ctx.stopping.store(true, Ordering::Relaxed);
    if stopping && !ctx.is_down() {
        ctx.flush_and_commit(c, None);
    }
    tracing::info!(group = %ctx.group, ran_for = %format!("{}s", started.elapsed().as_secs()), "Kafka consumer stopping");
}
