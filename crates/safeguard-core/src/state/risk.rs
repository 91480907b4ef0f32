//! Why an instance is at risk, derived from its record at a given time (never stored, so it cannot go stale).

use serde::{Deserialize, Serialize};

use super::{InstanceRecord, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// No complete base backup in the evidence: a deletion now would be unrecoverable.
    NoBaseBackup,
    /// The newest complete base backup is older than the configured age.
    StaleBaseBackup,
    /// Archive command failures since the last successful WAL push.
    WalPushFailing,
    /// A live instance has pushed no WAL for longer than the configured silence.
    WalSilent,
}

impl Risk {
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::NoBaseBackup => "no_base_backup",
            Risk::StaleBaseBackup => "stale_base_backup",
            Risk::WalPushFailing => "wal_push_failing",
            Risk::WalSilent => "wal_silent",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RiskRules {
    pub max_base_backup_age_ms: i64,
    pub wal_silence_ms: i64,
}

impl Default for RiskRules {
    fn default() -> Self {
        RiskRules { max_base_backup_age_ms: 26 * 3_600_000, wal_silence_ms: 6 * 3_600_000 }
    }
}

pub fn assess(rec: &InstanceRecord, now: i64, rules: &RiskRules) -> Vec<Risk> {
    let mut out = Vec::new();
    match rec.latest_complete_backup() {
        None => out.push(Risk::NoBaseBackup),
        Some(b) if rec.status == Status::Live && b.time.is_some_and(|t| now - t > rules.max_base_backup_age_ms) => out.push(Risk::StaleBaseBackup),
        _ => {}
    }
    if let Some(f) = rec.wal.last_failure_at {
        if rec.wal.last_pushed_at.is_none_or(|p| p < f) {
            out.push(Risk::WalPushFailing);
        }
    }
    if rec.status == Status::Live {
        let last = rec.wal.last_pushed_at.unwrap_or(rec.first_seen);
        if now - last > rules.wal_silence_ms {
            out.push(Risk::WalSilent);
        }
    }
    out
}
