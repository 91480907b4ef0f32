//! The daily digest on the engine thread (`[alerts.digest]`): at the first tick at or after the
//! configured local time, the watcher reads the store once, has the core tally it
//! (`safeguard_core::digest`), and raises the result through [`Engine::raise`] as an outbox entry
//! `digest:<local date>`. It commits like any alert and the sender delivers it by email and webhook
//! with retries; since an alert id is never created twice, a restart on the same day sends nothing
//! more, and a watcher started after `at` sends that day's digest once (never missed earlier days').

use std::sync::Arc;

use safeguard_core::digest::{self, Builder, KafkaLag, LineMark, PartitionLag};

use crate::alerts::digest::Schedule;
use crate::engine::pipeline::Engine;
use crate::state::risk::RiskRules;
use crate::store::{Counters, StoreError};

/// Each Kafka partition's lag (topic, partition, messages), measured as `/metrics` does, or why it is
/// not known (brokers not answering).
pub type LagProbe = Arc<dyn Fn() -> Result<crate::engine::http::PartitionLags, String> + Send + Sync>;

/// A Kafka source's lag is unknown until its probe's first round; a digest due in the watcher's first
/// seconds waits this long for it, then goes out saying why it is unknown.
const LAG_WAIT_MS: i64 = 30_000;
/// After a failed attempt (a store read failed), the next one waits this long.
const RETRY_MS: i64 = 60_000;

/// What the engine loop keeps to raise the digest once a day.
pub struct DigestRun {
    schedule: Schedule,
    /// What "at risk" means: the same rules as `/metrics` and `instances --at-risk`.
    risk: RiskRules,
    give_up_after_ms: i64,
    started_at: i64,
    /// The counters when the watcher started: the base when there is no earlier digest.
    start: LineMark,
    /// None: no Kafka source.
    lag: Option<LagProbe>,
    /// The local date whose digest exists (raised here or found in the outbox).
    done: Option<String>,
    not_before: i64,
}

fn mark(at: i64, c: &Counters) -> LineMark {
    LineMark { at, lines_read: c.lines_read, lines_relevant: c.lines_relevant, lines_rejected: c.lines_rejected }
}

impl DigestRun {
    pub fn new(schedule: Schedule, risk: RiskRules, give_up_after_ms: i64, started_at: i64, counters: &Counters, lag: Option<LagProbe>) -> DigestRun {
        DigestRun { schedule, risk, give_up_after_ms, started_at, start: mark(started_at, counters), lag, done: None, not_before: 0 }
    }

    /// Raises today's digest if it is due and not raised yet; the caller commits. Returns its date
    /// when it raised one. Call it right after a commit, so the store holds every record.
    pub fn tick(&mut self, engine: &mut Engine, now: i64) -> Result<Option<String>, StoreError> {
        if now < self.not_before {
            return Ok(None);
        }
        let Some(date) = self.schedule.due(now) else { return Ok(None) };
        if self.done.as_ref() == Some(&date) {
            return Ok(None);
        }
        match self.raise(engine, &date, now) {
            Ok(raised) => Ok(raised.then_some(date)),
            Err(e) => {
                self.not_before = now + RETRY_MS;
                Err(e)
            }
        }
    }

    fn raise(&mut self, engine: &mut Engine, date: &str, now: i64) -> Result<bool, StoreError> {
        let store = engine.store();
        if store.alert_exists(&digest::id(date))? {
            self.done = Some(date.to_string());
            return Ok(false);
        }
        let kafka = match &self.lag {
            None => KafkaLag::NoKafka,
            Some(probe) => match probe() {
                Ok(parts) => {
                    KafkaLag::Measured { partitions: parts.into_iter().map(|(topic, partition, lag)| PartitionLag { topic, partition, lag }).collect() }
                }
                Err(_) if now - self.started_at < LAG_WAIT_MS => return Ok(false),
                Err(reason) => KafkaLag::Unknown { reason },
            },
        };
        let mut b = Builder::new(date, &self.schedule.zone, now, self.started_at, self.risk);
        // Once a day, so every record and every outbox entry is read (as the absence scan does).
        for r in store.records() {
            match r {
                Ok(r) => {
                    let deletion_alert = match b.deletion_alert_id(&r) {
                        Some(id) => store.alert(&id)?,
                        None => None,
                    };
                    b.record(&r, deletion_alert.as_ref());
                }
                Err(e) => tracing::warn!(error = %e, "an unreadable instance record is left out of the daily digest"),
            }
        }
        for a in store.alerts() {
            match a {
                Ok(a) => b.alert(&a),
                Err(e) => tracing::warn!(error = %e, "an unreadable alert is left out of the daily digest"),
            }
        }
        b.lines(mark(now, engine.counters()), self.start);
        b.kafka(kafka);
        let d = b.finish();
        tracing::info!(
            date,
            instances_live = d.instances_live,
            instances_deleted = d.instances_deleted,
            deleted_24h = d.deleted_count,
            at_risk = d.at_risk,
            "raised the daily digest"
        );
        engine.raise(digest::alert(d, now, self.give_up_after_ms));
        self.done = Some(date.to_string());
        Ok(true)
    }
}
