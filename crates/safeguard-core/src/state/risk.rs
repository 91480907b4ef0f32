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

impl Risk {
    pub const ALL: [Risk; 4] = [Risk::NoBaseBackup, Risk::StaleBaseBackup, Risk::WalPushFailing, Risk::WalSilent];

    fn bit(self) -> u8 {
        match self {
            Risk::NoBaseBackup => 1,
            Risk::StaleBaseBackup => 2,
            Risk::WalPushFailing => 4,
            Risk::WalSilent => 8,
        }
    }

    /// The reasons in a set made by [`bits`].
    pub fn from_bits(bits: u8) -> impl Iterator<Item = Risk> {
        Risk::ALL.into_iter().filter(move |r| bits & r.bit() != 0)
    }
}

/// A set of reasons as one byte (what the store keeps per instance to count it exactly).
pub fn bits(risks: &[Risk]) -> u8 {
    risks.iter().fold(0, |b, r| b | r.bit())
}

/// The first time after `now` at which [`assess`] can answer otherwise for this record, if any. Only two
/// things change by time alone, both for live instances: the newest backup growing stale and WAL
/// falling silent. Between `now` and that time the answer is the one at `now`, so a count kept from it
/// stays exact until then.
pub fn next_change(rec: &InstanceRecord, now: i64, rules: &RiskRules) -> Option<i64> {
    if rec.status != Status::Live {
        return None;
    }
    let mut next: Option<i64> = None;
    let mut at = |t: i64| {
        if t > now {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
    };
    // `assess` fires when `now - t > age`, i.e. from `t + age + 1` on.
    if let Some(t) = rec.latest_complete_backup().and_then(|b| b.time) {
        at(t.saturating_add(rules.max_base_backup_age_ms).saturating_add(1));
    }
    let last = rec.wal.last_pushed_at.unwrap_or(rec.first_seen);
    at(last.saturating_add(rules.wal_silence_ms).saturating_add(1));
    next
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gen::Rng;
    use crate::state::BaseBackup;

    /// Records with random times, backups and WAL activity, live or deleted.
    pub(crate) fn random_record(rng: &mut Rng) -> InstanceRecord {
        let h = 3_600_000i64;
        let base = 1_700_000_000_000 + rng.below(1000) as i64 * h;
        let mut r = InstanceRecord::new("i", base);
        r.last_seen = base + rng.below(100) as i64 * h;
        if rng.below(4) == 0 {
            r.status = Status::Deleted;
        }
        for i in 0..rng.below(3) {
            let t = base + rng.below(60) as i64 * h;
            r.base_backups.push(BaseBackup {
                name: format!("b{i}"),
                complete: rng.below(3) != 0,
                time: (rng.below(5) != 0).then_some(t),
                ..Default::default()
            });
        }
        if rng.below(3) != 0 {
            r.wal.last_pushed_at = Some(base + rng.below(60) as i64 * h);
        }
        if rng.below(3) == 0 {
            r.wal.last_failure_at = Some(base + rng.below(60) as i64 * h);
        }
        r.deletion_pending = r.status == Status::Deleted && rng.below(2) == 0;
        r
    }

    #[test]
    fn the_assessment_holds_until_the_next_change_and_changes_there() {
        let mut rng = Rng::new(7);
        let h = 3_600_000i64;
        for _ in 0..5_000 {
            let r = random_record(&mut rng);
            let rules = RiskRules { max_base_backup_age_ms: (1 + rng.below(48) as i64) * h, wal_silence_ms: (1 + rng.below(12) as i64) * h };
            let now = r.first_seen + rng.below(200) as i64 * h - 50 * h;
            let here = assess(&r, now, &rules);
            let next = next_change(&r, now, &rules);
            let end = next.unwrap_or(now + 400 * h);
            assert!(end > now);
            // Probe the interval: its ends, and random points inside.
            for t in [now, end - 1, now + (end - now) / 2, now + rng.below((end - now).min(1 << 40) as u64) as i64] {
                assert_eq!(assess(&r, t, &rules), here, "{r:?} at {t}, next {next:?}, rules {rules:?}");
            }
            if let Some(n) = next {
                assert_ne!(assess(&r, n, &rules), here, "nothing changed at the announced time {n} for {r:?}");
            }
        }
    }

    #[test]
    fn bits_round_trip() {
        for b in 0u8..16 {
            let risks: Vec<Risk> = Risk::from_bits(b).collect();
            assert_eq!(bits(&risks), b);
        }
    }
}
