//! `[alerts]`: which rules are on, their thresholds, and where alerts go (email, webhook). The rules
//! themselves, the durable outbox entry ([`Alert`]) and the message an operator reads are pure and live
//! in the core (`safeguard_core::alerts`, re-exported here); delivery is `crate::sinks`.
//!
//! `[alerts.digest]` ([`digest`]) adds one message a day, raised by the watcher as an outbox entry of
//! its own (`digest:<local date>`), so it is delivered, retried and kept once per day like any alert.
//!
//! A deletion alert is created by the engine in the same store commit as the deletion it reports; the
//! sender later checks the object store, decides the rule (`instance_deleted`, warning, or
//! `deleted_without_base_backup`, critical), and delivers by email and webhook until it succeeds or gives
//! up. The alert id is its idempotency key (instance, kind, episode), so a replay, a restart or a second
//! pass never creates a second alert for the same thing.

pub use safeguard_core::alerts::*;

pub mod digest;

use std::time::Duration;

use serde::Deserialize;

use crate::sinks::{email, webhook};

/// `[alerts]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    pub rules: RuleConfig,
    /// A deletion older than this (by its log time) when first seen raises no alert: a backfill of old
    /// logs records history, it does not page anyone. Absence rules skip instances not seen for this long.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub backfill_window: Duration,
    /// An undelivered alert is retried (exponential backoff) until this long after it was raised, then
    /// marked failed.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub give_up_after: Duration,
    /// Longest wait between two delivery attempts.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub max_retry_interval: Duration,
    /// How often live instances are checked for missing base backups and silent WAL.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub absence_scan_interval: Duration,
    /// Delivered, failed and suppressed alerts leave the outbox this long after they finished; their ids
    /// are kept (a replay never raises one again). `alerts --all` lists what is retained.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub retention: Duration,
    pub email: Option<email::EmailConfig>,
    pub webhook: Option<webhook::WebhookConfig>,
    /// A daily digest through the same channels; none without this section.
    pub digest: Option<digest::DigestConfig>,
}

impl AlertsConfig {
    /// Checks what serde cannot; errors name the key and its value.
    pub fn validate(&self) -> Result<(), String> {
        use crate::settings::check_nonzero;
        check_nonzero("alerts.absence_scan_interval", self.absence_scan_interval, "every changed instance would be scanned at every commit")?;
        check_nonzero("alerts.retention", self.retention, "every alert would leave the outbox as soon as it is delivered")?;
        if let Some(e) = &self.email {
            check_nonzero("alerts.email.timeout", e.timeout, "every SMTP call would time out at once")?;
        }
        if let Some(w) = &self.webhook {
            check_nonzero("alerts.webhook.timeout", w.timeout, "every webhook call would time out at once")?;
        }
        if let Some(d) = &self.digest {
            d.validate()?;
        }
        Ok(())
    }
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            rules: RuleConfig::default(),
            backfill_window: Duration::from_secs(7 * 86_400),
            give_up_after: Duration::from_secs(86_400),
            max_retry_interval: Duration::from_secs(300),
            absence_scan_interval: Duration::from_secs(300),
            retention: Duration::from_secs(90 * 86_400),
            email: None,
            webhook: None,
            digest: None,
        }
    }
}

/// `[alerts.rules]`: each rule can be switched off; thresholds for the absence rules.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    pub instance_deleted: bool,
    pub deleted_without_base_backup: bool,
    pub no_recent_base_backup: bool,
    pub wal_archiving_failing: bool,
    /// A live instance whose newest complete base backup is older than this.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub max_base_backup_age: Duration,
    /// A live instance that never completed a base backup this long after it was first seen.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub first_base_backup_within: Duration,
    /// A live instance that pushed no WAL for this long.
    #[serde(deserialize_with = "crate::settings::duration")]
    pub wal_silence: Duration,
}

impl Default for RuleConfig {
    fn default() -> Self {
        RuleConfig {
            instance_deleted: true,
            deleted_without_base_backup: true,
            no_recent_base_backup: true,
            wal_archiving_failing: true,
            max_base_backup_age: Duration::from_secs(26 * 3600),
            first_base_backup_within: Duration::from_secs(26 * 3600),
            wal_silence: Duration::from_secs(6 * 3600),
        }
    }
}

impl AlertsConfig {
    /// The rules' view of this section.
    pub fn params(&self) -> RuleParams {
        let ms = crate::settings::millis;
        let r = &self.rules;
        RuleParams {
            instance_deleted: r.instance_deleted,
            deleted_without_base_backup: r.deleted_without_base_backup,
            no_recent_base_backup: r.no_recent_base_backup,
            wal_archiving_failing: r.wal_archiving_failing,
            backfill_window_ms: ms(self.backfill_window),
            give_up_after_ms: ms(self.give_up_after),
            max_base_backup_age_ms: ms(r.max_base_backup_age),
            first_base_backup_within_ms: ms(r.first_base_backup_within),
            wal_silence_ms: ms(r.wal_silence),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_rules_defaults() {
        assert_eq!(AlertsConfig::default().params(), RuleParams::default());
    }
}
