//! Delivers pending alerts from the outbox: checks the object store for deletions (once, bounded),
//! decides the rule, sends by email and webhook, retries with exponential backoff until the alert's
//! give-up time, then marks it failed. Each channel is marked sent on its own, so a retry after a
//! partial failure does not resend what already went out.

use std::time::Duration;

use super::{email::Mailer, webhook::Webhook};
use crate::adapters::s3::{ObjectStore, S3Url};
use crate::alerts::{compose, Alert, AlertsConfig, Delivery, Kind, Rule};
use crate::sources::kafka::leader::{Leader, Marks};
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
                if let Err(e) = self.retire(now_ms()) {
                    tracing::warn!(error = %e, "moving old alerts out of the outbox failed; retrying later");
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Handles the alerts that are due, read from the due index (at most [`PASS_MAX`]); returns how many
    /// were attempted.
    pub async fn pass(&self) -> Result<usize, StoreError> {
        let due: Vec<Alert> = self.store.due_alerts(now_ms(), PASS_MAX)?;
        for a in &due {
            // The due index only lists pending alerts; an entry is checked all the same.
            if a.state != Delivery::Pending {
                continue;
            }
            if let Some(l) = &self.leader {
                // Delivered by a leader (this one before a restart, or another): mark, do not resend.
                if let Some(marks) = l.delivered(&a.id) {
                    if self.mark(&a.id, &marks)?.is_some_and(|m| m.state != Delivery::Pending) {
                        continue;
                    }
                }
                if !self.may_send() {
                    continue;
                }
            }
            self.process(a.clone()).await?;
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
        for (id, marks) in l.take_fresh() {
            if self.mark(&id, &marks)?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Sets each channel the marks report as sent; an alert whose configured channels are all sent is
    /// delivered. `None` when the alert is not in this outbox (not raised here yet, or retired).
    fn mark(&self, id: &str, marks: &Marks) -> Result<Option<Alert>, StoreError> {
        let (email, webhook) = (self.mailer.is_some(), self.webhook.is_some());
        // Most marks change nothing (the leader reading its own records, a restart reading the whole
        // topic): no write for those.
        match self.store.alert(id)? {
            None => return Ok(None),
            Some(a) if a.state != Delivery::Pending && a.state != Delivery::Failed => {
                if let Some(l) = &self.leader {
                    l.forget(id);
                }
                return Ok(Some(a));
            }
            Some(_) => {}
        }
        let done = self.store.update_alert(id, |a| {
            if a.email_sent_at.is_none() {
                a.email_sent_at = marks.get("email").copied();
            }
            if a.webhook_sent_at.is_none() {
                a.webhook_sent_at = marks.get("webhook").copied();
            }
            let complete = (!email || a.email_sent_at.is_some()) && (!webhook || a.webhook_sent_at.is_some()) && (email || webhook);
            if complete && matches!(a.state, Delivery::Pending | Delivery::Failed) {
                a.state = Delivery::Sent;
                a.sent_at = marks.values().max().copied();
                a.last_error = None;
                tracing::info!(alert = %a.id, "alert delivered by the leader (deliveries topic)");
            }
        })?;
        if let (Some(l), Some(a)) = (&self.leader, &done) {
            if a.state != Delivery::Pending {
                l.forget(id);
            }
        }
        Ok(done)
    }

    /// Moves alerts finished more than `alerts.retention` ago out of the outbox; their ids stay, so a
    /// replay of what raised them raises nothing.
    pub fn retire(&self, now: i64) -> Result<usize, StoreError> {
        let before = now.saturating_sub(crate::settings::millis(self.cfg.retention));
        let mut total = 0;
        loop {
            let n = self.store.retire_alerts(before, 10_000)?;
            total += n;
            if n < 10_000 {
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
        if !rule.enabled(&self.cfg.params()) {
            a.state = Delivery::Suppressed;
            a.last_error = Some(format!("rule {} is switched off", rule.as_str()));
            return self.store.put_alert(&a);
        }
        if self.mailer.is_none() && self.webhook.is_none() {
            a.state = Delivery::Suppressed;
            a.last_error = Some("no email or webhook configured".into());
            return self.store.put_alert(&a);
        }
        let m = compose(&a);
        let mut errors = Vec::new();
        // Leadership is checked again right before each send: deciding may have taken a while.
        if !self.may_send() {
            return self.store.put_alert(&a);
        }
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
        self.store.put_alert(&a)
    }
}
