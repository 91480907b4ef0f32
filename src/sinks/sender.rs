//! Delivers pending alerts from the outbox: checks the object store for deletions (once, bounded),
//! decides the rule, sends by email and webhook, retries with exponential backoff until the alert's
//! give-up time, then marks it failed. Each channel is marked sent on its own, so a retry after a
//! partial failure does not resend what already went out.

use std::time::Duration;

use super::{email::Mailer, webhook::Webhook};
use crate::adapters::s3::{ObjectStore, S3Url};
use crate::alerts::{compose, Alert, AlertsConfig, Delivery, Kind, Rule};
use crate::sources::kafka::leader::{Leader, Seen};
use crate::store::{Store, StoreError};
use crate::timeutil::now_ms;

/// A delivery channel that cannot be set up; the message names its config section.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error(transparent)]
    Email(#[from] super::email::EmailError),
    #[error(transparent)]
    Webhook(#[from] super::webhook::WebhookError),
}

/// Most alerts one pass handles; the rest are due the next pass.
const PASS_MAX: usize = 1_000;
/// How often alerts past retention are looked for.
const RETIRE_EVERY: Duration = Duration::from_secs(60);
/// How long a standby leaves a due alert it may not send before looking at it again.
const STANDBY_RECHECK: Duration = Duration::from_secs(15);

pub struct Sender {
    store: Store,
    cfg: AlertsConfig,
    s3: Option<ObjectStore>,
    mailer: Option<Mailer>,
    webhook: Option<Webhook>,
    /// With `[leader]`: only the leader sends, and deliveries recorded by any leader are marked here.
    leader: Option<Leader>,
}

impl Sender {
    /// Fails on a misconfigured channel, at start-up rather than at the first deletion.
    pub fn new(store: Store, cfg: AlertsConfig, s3: Option<ObjectStore>) -> Result<Sender, SenderError> {
        let mailer = cfg.email.as_ref().map(Mailer::new).transpose()?;
        let webhook = cfg.webhook.as_ref().map(Webhook::new).transpose()?;
        if mailer.is_none() && webhook.is_none() {
            tracing::warn!("[alerts] has neither email nor webhook configured: alerts are recorded but not delivered");
        }
        Ok(Sender { store, cfg, s3, mailer, webhook, leader: None })
    }

    /// Sends only while `leader` says this replica leads, and marks what the deliveries topic reports.
    pub fn with_leader(mut self, leader: Leader) -> Sender {
        self.leader = Some(leader);
        self
    }

    pub async fn run(self, every: Duration) {
        let mut last_retire: Option<std::time::Instant> = None;
        loop {
            if let Err(e) = self.apply_deliveries() {
                tracing::warn!(error = %e, "marking deliveries from the deliveries topic failed; retrying");
            }
            if let Err(e) = self.pass().await {
                tracing::error!(error = %e, "alert delivery pass failed; retrying");
            }
            if last_retire.is_none_or(|t| t.elapsed() >= RETIRE_EVERY.min(self.cfg.retention)) {
                last_retire = Some(std::time::Instant::now());
                if let Err(e) = self.retire(now_ms()).await {
                    tracing::warn!(error = %e, "moving old alerts out of the outbox failed; retrying later");
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Handles the alerts that are due, read from the due index (at most [`PASS_MAX`]); returns how many
    /// were attempted.
    pub async fn pass(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        let due: Vec<Alert> = self.store.due_alerts(now, PASS_MAX)?;
        let mut waiting = Vec::new();
        for a in &due {
            // The due index only lists pending alerts; an entry is checked all the same.
            if a.state != Delivery::Pending {
                continue;
            }
            if let Some(l) = &self.leader {
                // Delivered by a leader (this one before a restart, or another): mark, do not resend.
                if let Some(seen) = l.delivered(&a.id) {
                    if self.mark(&a.id, &seen)?.is_some_and(|m| m.state != Delivery::Pending || m.next_attempt_at > now) {
                        continue;
                    }
                }
                if !self.may_send() {
                    waiting.push(a.id.clone());
                    continue;
                }
            }
            self.process(a.clone()).await?;
        }
        // A standby looks at these again in a while: left due, the first PASS_MAX would be all it ever
        // looked at. It takes over no later than that after it leads.
        if !waiting.is_empty() {
            let at = now + crate::settings::millis(STANDBY_RECHECK);
            self.store.update_alerts(&waiting, |a| a.next_attempt_at = a.next_attempt_at.max(at))?;
        }
        Ok(due.len())
    }

    /// Whether this replica may send now (always, without `[leader]`): it leads, and it has read the
    /// deliveries topic to its end once (else it would resend what a previous leader delivered).
    fn may_send(&self) -> bool {
        self.leader.as_ref().is_none_or(|l| l.is_leader() && l.caught_up())
    }

    /// Marks in the outbox what the deliveries topic reported since the last call.
    pub fn apply_deliveries(&self) -> Result<usize, StoreError> {
        let Some(l) = &self.leader else { return Ok(0) };
        let mut n = 0;
        for (id, seen) in l.take_fresh() {
            if self.mark(&id, &seen)?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Applies what the deliveries topic says about an alert to its copy here (see [`apply_seen`]).
    /// `None` when the alert is not in this outbox (not raised here yet, or retired).
    fn mark(&self, id: &str, seen: &Seen) -> Result<Option<Alert>, StoreError> {
        let (email, webhook) = (self.mailer.is_some(), self.webhook.is_some());
        // Most marks change nothing (the leader reading its own records, a restart reading the whole
        // topic): `update_alert` writes nothing for those.
        let done = self.store.update_alert(id, |a| {
            if apply_seen(a, seen, email, webhook) {
                tracing::info!(alert = %a.id, state = a.state.as_str(), "alert finished by the leader (deliveries topic)");
            }
        })?;
        if let (Some(l), Some(a)) = (&self.leader, &done) {
            // Kept until the outcome is known, so the rule and verdict reach this copy too.
            if a.state != Delivery::Pending && seen.outcome.is_some() {
                l.forget(id);
            }
        }
        Ok(done)
    }

    /// Moves alerts finished more than `alerts.retention` ago out of the outbox; their ids stay, so a
    /// replay of what raised them raises nothing.
    pub async fn retire(&self, now: i64) -> Result<usize, StoreError> {
        let before = now.saturating_sub(crate::settings::millis(self.cfg.retention));
        let mut total = 0;
        loop {
            let ids = self.store.retire_alerts(before, 10_000)?;
            total += ids.len();
            // The leader also deletes their records from the deliveries topic (every replica retires
            // the same alerts; one deleting is enough).
            if let Some(l) = self.leader.as_ref().filter(|l| l.is_leader()) {
                l.forget_retired(&ids).await;
            }
            if ids.len() < 10_000 {
                break;
            }
        }
        if total > 0 {
            tracing::info!(alerts = total, retention = %humantime::format_duration(self.cfg.retention), "moved delivered and failed alerts past retention out of the outbox (their ids are kept)");
        }
        Ok(total)
    }

    async fn decide(&self, a: &mut Alert) {
        let logs_show_backup = a.snapshot.latest_complete_backup.is_some();
        let restorable = match (&self.s3, a.snapshot.backup_prefix.as_deref().map(S3Url::parse)) {
            (Some(s3), Some(Ok(url))) => {
                let report = crate::verify::verify(s3, &url).await;
                a.verdict = Some(report.verdict.as_str().to_string());
                a.verification_text = Some(report.render_text());
                a.verification = serde_json::to_value(&report).ok();
                match report.verdict {
                    crate::verify::Verdict::Unreachable { .. } => logs_show_backup,
                    ref v => v.is_restorable(),
                }
            }
            (None, _) => {
                a.verification_text = Some("not checked: no [s3] section in the config; judged from the logs only".into());
                logs_show_backup
            }
            (_, None) => {
                a.verification_text = Some("not checked: no backup prefix was seen in the logs for this instance".into());
                logs_show_backup
            }
            (_, Some(Err(e))) => {
                a.verification_text = Some(format!("not checked: the recorded prefix is not an S3 URL: {e}"));
                logs_show_backup
            }
        };
        let rule = if restorable { Rule::InstanceDeleted } else { Rule::DeletedWithoutBaseBackup };
        a.rule = Some(rule);
        a.severity = Some(rule.severity());
    }

    async fn process(&self, mut a: Alert) -> Result<(), StoreError> {
        let now = now_ms();
        if a.kind == Kind::Deletion && a.rule.is_none() {
            self.decide(&mut a).await;
            self.store.put_alert(&a)?;
        }
        let rule = a.rule.unwrap_or(Rule::InstanceDeleted);
        // Deciding may have taken a while (the object store's check): a replica that no longer leads
        // keeps the alert pending, decided, for whoever leads now.
        if !self.may_send() {
            return self.store.put_alert(&a);
        }
        if !rule.enabled(&self.cfg.params()) {
            a.state = Delivery::Suppressed;
            a.last_error = Some(format!("rule {} is switched off", rule.as_str()));
            return self.finish(&a).await;
        }
        if self.mailer.is_none() && self.webhook.is_none() {
            a.state = Delivery::Suppressed;
            a.last_error = Some("no email or webhook configured".into());
            return self.finish(&a).await;
        }
        let m = compose(&a);
        let mut errors = Vec::new();
        if let (Some(mailer), None) = (&self.mailer, a.email_sent_at) {
            match mailer.send(&a, &m).await {
                Ok(()) => {
                    let at = now_ms();
                    a.email_sent_at = Some(at);
                    if let Some(l) = &self.leader {
                        l.record_delivery(&a.id, "email", at).await;
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !self.may_send() {
            return self.store.put_alert(&a);
        }
        if let (Some(hook), None) = (&self.webhook, a.webhook_sent_at) {
            match hook.send(&a).await {
                Ok(()) => {
                    let at = now_ms();
                    a.webhook_sent_at = Some(at);
                    if let Some(l) = &self.leader {
                        l.record_delivery(&a.id, "webhook", at).await;
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        a.attempts += 1;
        if errors.is_empty() {
            a.state = Delivery::Sent;
            a.sent_at = Some(now_ms());
            a.last_error = None;
            tracing::info!(alert = %a.id, rule = rule.as_str(), severity = a.severity.map(|s| s.as_str()).unwrap_or("-"), "alert delivered");
        } else {
            // Stored in the alert (the store, its snapshot, `alerts --json`) and logged: redacted here,
            // whatever the channel put in it.
            let err = crate::redact::text(&errors.join("; "));
            let backoff = (1000i64 << a.attempts.min(20)).min(self.cfg.max_retry_interval.as_millis() as i64);
            a.next_attempt_at = now + backoff;
            if now >= a.give_up_at {
                a.state = Delivery::Failed;
                tracing::error!(alert = %a.id, attempts = a.attempts, error = %err, "alert delivery FAILED for good; fix the channel, then `safeguard alerts retry {}`", a.id);
            } else {
                tracing::warn!(alert = %a.id, attempts = a.attempts, retry_in_ms = backoff, error = %err, "alert delivery failed; will retry");
            }
            a.last_error = Some(err);
            a.last_error_at = Some(now);
        }
        self.finish(&a).await
    }

    /// Stores the alert; a finished one is first recorded on the deliveries topic. Sent and failed are
    /// what this replica did, so they are recorded even if leadership lapsed meanwhile; suppressed is a
    /// decision, recorded only by the leader.
    async fn finish(&self, a: &Alert) -> Result<(), StoreError> {
        if let Some(l) = &self.leader {
            if a.state != Delivery::Pending && (a.state != Delivery::Suppressed || l.is_leader()) {
                let mut a = a.clone();
                a.outcome_at = Some(crate::sources::kafka::leader::outcome_time(&a, now_ms()));
                l.record_outcome(&a).await;
                return self.store.put_alert(&a);
            }
        }
        self.store.put_alert(a)
    }
}

/// Applies what the deliveries topic says to this replica's copy of an alert; returns whether that
/// finished it. Channels the leader sent are marked sent (once), and an alert with every configured
/// channel sent is sent. Of the leader's outcomes the latest recorded one holds (an older one read later
/// changes nothing): the copy takes its state (a sent copy stays sent), error, attempts, times, rule and
/// verdict. So the copy is the same whatever order the records are read in, whichever of them
/// compaction left, and whichever intermediate states a pass happened to apply.
pub fn apply_seen(a: &mut Alert, seen: &Seen, email: bool, webhook: bool) -> bool {
    let was = a.state;
    if let Some(o) = seen.outcome.as_ref().filter(|o| a.outcome_at.is_none_or(|t| o.at > t)) {
        a.outcome_at = Some(o.at);
        if a.state != Delivery::Sent || o.state == Delivery::Sent {
            a.state = o.state;
            a.last_error.clone_from(&o.error);
        }
        a.last_error_at = o.error_at;
        a.attempts = o.attempts;
        a.give_up_at = o.give_up_at.unwrap_or(a.give_up_at);
        a.next_attempt_at = o.next_attempt_at.unwrap_or(a.next_attempt_at);
        a.rule = o.rule.or(a.rule);
        a.severity = o.severity.or(a.severity);
        if o.verdict.is_some() {
            a.verdict.clone_from(&o.verdict);
        }
        if o.state == Delivery::Sent {
            a.sent_at = o.sent_at.or(Some(o.at));
        }
        a.email_sent_at = a.email_sent_at.or(o.email_sent_at);
        a.webhook_sent_at = a.webhook_sent_at.or(o.webhook_sent_at);
    }
    if a.email_sent_at.is_none() {
        a.email_sent_at = seen.channels.get("email").copied();
    }
    if a.webhook_sent_at.is_none() {
        a.webhook_sent_at = seen.channels.get("webhook").copied();
    }
    let complete = (!email || a.email_sent_at.is_some()) && (!webhook || a.webhook_sent_at.is_some()) && (email || webhook);
    if complete && matches!(a.state, Delivery::Pending | Delivery::Failed) {
        a.state = Delivery::Sent;
        // The leader's time when its outcome says sent, else the last channel's.
        a.sent_at = seen.outcome.as_ref().filter(|o| o.state == Delivery::Sent).and_then(|o| o.sent_at).or_else(|| a.email_sent_at.max(a.webhook_sent_at));
        a.last_error = None;
    }
    a.state != was && a.state != Delivery::Pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{Kind, Severity, Snapshot};
    use crate::sources::kafka::leader::Outcome;

    fn pending() -> Alert {
        Alert {
            id: "i:deletion:1".into(),
            instance_id: "i".into(),
            kind: Kind::Deletion,
            rule: None,
            severity: None,
            episode: "1".into(),
            summary: "deleted".into(),
            raised_at: 1,
            snapshot: Snapshot::default(),
            verdict: None,
            verification_text: None,
            verification: None,
            state: Delivery::Pending,
            attempts: 0,
            next_attempt_at: 1,
            give_up_at: 100,
            last_error: None,
            last_error_at: None,
            email_sent_at: None,
            webhook_sent_at: None,
            sent_at: None,
            digest: None,
            outcome_at: None,
        }
    }

    #[derive(Clone, Debug)]
    enum Rec {
        Email,
        Webhook,
        Outcome(Outcome),
    }

    /// The leader's outcome at `at` (later outcomes are later `at`s, as the leader records them).
    fn outcome(state: Delivery, at: i64, email: Option<i64>, webhook: Option<i64>) -> Outcome {
        let failed = state == Delivery::Failed;
        Outcome {
            state,
            rule: Some(Rule::DeletedWithoutBaseBackup),
            severity: Some(Severity::Critical),
            verdict: Some("no_base_backup".into()),
            error: (failed || state == Delivery::Pending).then(|| format!("smtp: refused at {at}")),
            error_at: (failed || state == Delivery::Pending).then_some(at - 1),
            attempts: (at / 10) as u32,
            give_up_at: Some(100 + at),
            next_attempt_at: Some(at),
            sent_at: (state == Delivery::Sent).then_some(at - 2),
            email_sent_at: email,
            webhook_sent_at: webhook,
            at,
        }
    }

    fn apply_all(recs: &[Rec], mask: u32, email: bool, webhook: bool) -> Alert {
        let mut a = pending();
        let mut seen = Seen::default();
        for (i, r) in recs.iter().enumerate() {
            match r {
                Rec::Email => drop(seen.channels.insert("email".into(), 10)),
                Rec::Webhook => drop(seen.channels.insert("webhook".into(), 20)),
                // The reader keeps the newest outcome it read (compaction keeps the newest per key).
                Rec::Outcome(o) => {
                    if seen.outcome.as_ref().is_none_or(|s| o.at > s.at) {
                        seen.outcome = Some(o.clone());
                    }
                }
            }
            if mask & (1 << i) != 0 || i + 1 == recs.len() {
                apply_seen(&mut a, &seen, email, webhook);
            }
        }
        // Applying again changes nothing.
        let once = a.clone();
        apply_seen(&mut a, &seen, email, webhook);
        assert_eq!(a, once);
        a
    }

    /// The standby's copy is a function of the records the leader wrote, not of the order they are read
    /// in, of which older outcomes compaction had already dropped, nor of which intermediate states a
    /// pass happened to apply.
    #[test]
    fn a_standby_copy_ends_the_same_whatever_the_order_the_compaction_and_the_passes() {
        let sent_both = outcome(Delivery::Sent, 40, Some(10), Some(20));
        let cases: Vec<((bool, bool), Vec<Rec>, Delivery)> = vec![
            ((true, true), vec![Rec::Email, Rec::Webhook, Rec::Outcome(sent_both.clone())], Delivery::Sent),
            ((true, false), vec![Rec::Email, Rec::Outcome(outcome(Delivery::Sent, 40, Some(10), None))], Delivery::Sent),
            ((true, true), vec![Rec::Email, Rec::Outcome(outcome(Delivery::Failed, 30, Some(10), None))], Delivery::Failed),
            ((true, true), vec![Rec::Outcome(outcome(Delivery::Suppressed, 30, None, None))], Delivery::Suppressed),
            // Failed, retried on the leader (pending again), then sent.
            (
                (true, true),
                vec![
                    Rec::Email,
                    Rec::Outcome(outcome(Delivery::Failed, 30, Some(10), None)),
                    Rec::Outcome(outcome(Delivery::Pending, 50, Some(10), None)),
                    Rec::Webhook,
                    Rec::Outcome(outcome(Delivery::Sent, 70, Some(10), Some(20))),
                ],
                Delivery::Sent,
            ),
            // Failed, retried, and the leader died before it sent again: pending, for the next leader.
            (
                (true, true),
                vec![Rec::Email, Rec::Outcome(outcome(Delivery::Failed, 30, Some(10), None)), Rec::Outcome(outcome(Delivery::Pending, 50, Some(10), None))],
                Delivery::Pending,
            ),
            // Retried and both channels went out, but the leader died before recording it sent.
            (
                (true, true),
                vec![
                    Rec::Outcome(outcome(Delivery::Failed, 30, None, None)),
                    Rec::Outcome(outcome(Delivery::Pending, 50, None, None)),
                    Rec::Email,
                    Rec::Webhook,
                ],
                Delivery::Sent,
            ),
        ];
        for ((email, webhook), recs, want) in cases {
            let newest = recs.iter().filter_map(|r| if let Rec::Outcome(o) = r { Some(o.at) } else { None }).max();
            let mut ends = Vec::new();
            // Every order of every subset that compaction may leave (the channel records and the newest
            // outcome always stay), and every choice of passes.
            let older: Vec<usize> = (0..recs.len()).filter(|i| matches!(&recs[*i], Rec::Outcome(o) if Some(o.at) != newest)).collect();
            for keep in 0u32..(1 << older.len()) {
                let dropped = |i: usize| older.iter().position(|x| *x == i).is_some_and(|k| keep & (1 << k) == 0);
                let kept: Vec<Rec> = recs.iter().enumerate().filter(|(i, _)| !dropped(*i)).map(|(_, r)| r.clone()).collect();
                for perm in permutations(&kept) {
                    for mask in 0u32..(1 << perm.len()) {
                        ends.push(apply_all(&perm, mask, email, webhook));
                    }
                }
            }
            let first = ends[0].clone();
            assert_eq!(first.state, want, "{recs:?}");
            assert_eq!((first.rule, first.verdict.as_deref()), (Some(Rule::DeletedWithoutBaseBackup), Some("no_base_backup")));
            assert!(ends.iter().all(|e| *e == first), "{recs:?}: {:#?} vs {first:#?}", ends.iter().find(|e| **e != first));
        }
    }

    /// A failed copy becomes sent; a sent one never goes back to failed, whatever arrives late.
    #[test]
    fn a_failed_copy_becomes_sent_but_never_the_reverse() {
        let mut a = pending();
        let failed = Seen { outcome: Some(outcome(Delivery::Failed, 30, None, None)), ..Seen::default() };
        assert!(apply_seen(&mut a, &failed, true, false));
        assert_eq!(a.state, Delivery::Failed);
        let sent = Seen { outcome: Some(outcome(Delivery::Sent, 60, Some(55), None)), channels: [("email".to_string(), 55)].into() };
        assert!(apply_seen(&mut a, &sent, true, false));
        assert_eq!((a.state, a.last_error.as_deref(), a.sent_at), (Delivery::Sent, None, Some(58)));
        assert!(!apply_seen(&mut a, &failed, true, false));
        let later_failed = Seen { outcome: Some(outcome(Delivery::Failed, 90, None, None)), ..Seen::default() };
        assert!(!apply_seen(&mut a, &later_failed, true, false));
        assert_eq!(a.state, Delivery::Sent);
    }

    fn permutations(v: &[Rec]) -> Vec<Vec<Rec>> {
        if v.len() <= 1 {
            return vec![v.to_vec()];
        }
        let mut out = Vec::new();
        for i in 0..v.len() {
            let mut rest = v.to_vec();
            let x = rest.remove(i);
            for mut p in permutations(&rest) {
                p.insert(0, x.clone());
                out.push(p);
            }
        }
        out
    }
}
