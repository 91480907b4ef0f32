//! Delivers pending alerts from the outbox: checks the object store for deletions (once, bounded),
//! decides the rule, sends by email and webhook, retries with exponential backoff until the alert's
//! give-up time, then marks it failed. Each channel is marked sent on its own, so a retry after a
//! partial failure does not resend what already went out.

use std::time::Duration;

use super::{email::Mailer, webhook::Webhook};
use crate::adapters::s3::{ObjectStore, S3Url};
use crate::alerts::{compose, Alert, AlertsConfig, Delivery, Kind, Rule};
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
}

impl Sender {
    /// Fails on a misconfigured channel, at start-up rather than at the first deletion.
    pub fn new(store: Store, cfg: AlertsConfig, s3: Option<ObjectStore>) -> Result<Sender, SenderError> {
        let mailer = cfg.email.as_ref().map(Mailer::new).transpose()?;
        let webhook = cfg.webhook.as_ref().map(Webhook::new).transpose()?;
        if mailer.is_none() && webhook.is_none() {
            tracing::warn!("[alerts] has neither email nor webhook configured: alerts are recorded but not delivered");
        }
        Ok(Sender { store, cfg, s3, mailer, webhook })
    }

    pub async fn run(self, every: Duration) {
        let mut last_retire: Option<std::time::Instant> = None;
        loop {
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
            if a.state == Delivery::Pending {
                self.process(a.clone()).await?;
            }
        }
        Ok(due.len())
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
        if let (Some(mailer), None) = (&self.mailer, a.email_sent_at) {
            match mailer.send(&a, &m).await {
                Ok(()) => a.email_sent_at = Some(now_ms()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if let (Some(hook), None) = (&self.webhook, a.webhook_sent_at) {
            match hook.send(&a).await {
                Ok(()) => a.webhook_sent_at = Some(now_ms()),
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
