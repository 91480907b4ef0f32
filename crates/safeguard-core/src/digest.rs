//! The daily digest: once a day, one message that says the watcher is alive and what it saw. Pure: the
//! service reads the store and feeds a [`Builder`] the records and outbox entries one by one (with the
//! wall-clock time, the counters and the Kafka lag it measured); the builder tallies them into a
//! [`Digest`], which [`alert`] wraps in an outbox entry (`digest:<local date>`, so the outbox's
//! "an id is never created twice" makes it once a day) and [`compose`] renders.
//!
//! The digest keeps the line counters it saw ([`Digest::mark`]), so that the next day's digest reports
//! the lines read in between; the first one reports those since the watcher started.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alerts::{Alert, Delivery, Kind, Message, Rule, Severity, Snapshot};
use crate::state::risk::{assess, RiskRules};
use crate::state::{InstanceRecord, Status};
use crate::timeutil::{rfc3339, serde_ms};

/// How far back "the last 24 h" reaches.
pub const WINDOW_MS: i64 = 24 * 3_600_000;
/// At-risk instances listed by name; the rest are counted.
pub const AT_RISK_LISTED: usize = 20;
/// Deleted instances listed by name (a mass deletion is counted past this).
pub const DELETED_LISTED: usize = 100;

/// The id of the digest for a local date (`YYYY-MM-DD`).
pub fn id(date: &str) -> String {
    format!("digest:{date}")
}

/// Line counters at a moment: what the next digest diffs against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineMark {
    #[serde(with = "serde_ms")]
    pub at: i64,
    pub lines_read: u64,
    pub lines_relevant: u64,
    pub lines_rejected: u64,
}

/// What the lines figures are counted since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Since {
    /// The previous digest (its [`Digest::mark`]).
    PreviousDigest,
    /// No earlier digest (or its counters are ahead of the store's): since this watcher started.
    WatcherStart,
}

/// Lines read over a span, and the average rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineWindow {
    pub since: Since,
    #[serde(with = "serde_ms")]
    pub from: i64,
    pub lines_read: u64,
    pub lines_relevant: u64,
    pub lines_rejected: u64,
    pub lines_per_second: f64,
}

/// A deletion in the last 24 h.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeletedEntry {
    pub instance_id: String,
    pub name: Option<String>,
    #[serde(with = "serde_ms")]
    pub deleted_at: i64,
    pub evidence: Option<String>,
    /// The newest base backup the logs show as complete.
    pub logs_complete_base_backup: Option<String>,
    /// The deletion alert's rule once its delivery decided it (the object store's check, or the logs
    /// when there is no `[s3]`), and the object store's verdict if it was checked.
    pub rule: Option<Rule>,
    pub verdict: Option<String>,
}

impl DeletedEntry {
    /// Whether it had no complete base backup: as the deletion alert decided it when it did (the object
    /// store, when checked, is the better judge), else by the logs.
    pub fn without_base_backup(&self) -> bool {
        match self.rule {
            Some(r) => r == Rule::DeletedWithoutBaseBackup,
            None => self.logs_complete_base_backup.is_none(),
        }
    }
}

/// A live instance at risk now, with its reasons.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AtRiskEntry {
    pub instance_id: String,
    pub name: Option<String>,
    pub reasons: Vec<String>,
}

/// The outbox over the last 24 h (other digests aside).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertTally {
    /// Raised in the last 24 h.
    pub raised: u64,
    /// Delivered in the last 24 h.
    pub sent: u64,
    /// Given up in the last 24 h (`safeguard alerts --failed`).
    pub failed: u64,
    /// Waiting for delivery now, whenever raised.
    pub pending: u64,
    /// Raised in the last 24 h with their rule off or no channel.
    pub suppressed: u64,
}

/// One Kafka partition's backlog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub lag: i64,
}

/// The Kafka consumer lag when the digest was raised.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum KafkaLag {
    /// No Kafka source is configured.
    #[default]
    NoKafka,
    /// The brokers did not answer (or not yet): why.
    Unknown {
        reason: String,
    },
    Measured {
        partitions: Vec<PartitionLag>,
    },
}

/// What a digest says; stored in its outbox entry ([`Alert::digest`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Digest {
    /// The local date it is for, and the zone that dates it.
    pub date: String,
    pub timezone: String,
    #[serde(with = "serde_ms")]
    pub window_start: i64,
    /// When the running watcher started.
    #[serde(with = "serde_ms")]
    pub watching_since: i64,
    pub instances_live: u64,
    pub instances_deleted: u64,
    /// Deleted in the last 24 h (by deletion time), oldest first; at most [`DELETED_LISTED`].
    pub deleted: Vec<DeletedEntry>,
    pub deleted_count: u64,
    pub deleted_without_base_backup: u64,
    /// Live instances at risk now, by reason, and the first [`AT_RISK_LISTED`] of them.
    pub at_risk: u64,
    pub at_risk_by_reason: BTreeMap<String, u64>,
    pub at_risk_listed: Vec<AtRiskEntry>,
    pub alerts: AlertTally,
    pub lines: LineWindow,
    /// The counters now: the next digest counts from here.
    pub mark: LineMark,
    pub kafka: KafkaLag,
}

/// Tallies a digest from the records and the outbox, fed one at a time.
pub struct Builder {
    d: Digest,
    now: i64,
    risk: RiskRules,
    /// The newest earlier digest's mark.
    previous: Option<LineMark>,
    at_risk: Vec<AtRiskEntry>,
}

impl Builder {
    /// A digest for the local `date` in `timezone`, raised at `now` by a watcher running since
    /// `watching_since`; `risk` is what "at risk" means (as in `/metrics` and `instances --at-risk`).
    pub fn new(date: &str, timezone: &str, now: i64, watching_since: i64, risk: RiskRules) -> Builder {
        let zero = LineWindow { since: Since::WatcherStart, from: watching_since, lines_read: 0, lines_relevant: 0, lines_rejected: 0, lines_per_second: 0.0 };
        Builder {
            d: Digest {
                date: date.to_string(),
                timezone: timezone.to_string(),
                window_start: now - WINDOW_MS,
                watching_since,
                instances_live: 0,
                instances_deleted: 0,
                deleted: Vec::new(),
                deleted_count: 0,
                deleted_without_base_backup: 0,
                at_risk: 0,
                at_risk_by_reason: BTreeMap::new(),
                at_risk_listed: Vec::new(),
                alerts: AlertTally::default(),
                lines: zero,
                mark: LineMark::default(),
                kafka: KafkaLag::NoKafka,
            },
            now,
            risk,
            previous: None,
            at_risk: Vec::new(),
        }
    }

    fn deleted_in_window(&self, r: &InstanceRecord) -> Option<i64> {
        r.deleted_at.filter(|t| r.status == Status::Deleted && *t >= self.d.window_start && *t <= self.now)
    }

    /// The id of the deletion alert to look up for this record (a deletion in the last 24 h), if any:
    /// its decided rule and verdict go into [`Builder::record`].
    pub fn deletion_alert_id(&self, r: &InstanceRecord) -> Option<String> {
        self.deleted_in_window(r).map(|t| crate::alerts::deletion_id(&r.instance_id, t))
    }

    /// Counts one instance record, with its deletion alert when [`Builder::deletion_alert_id`] named one
    /// and the outbox has it.
    pub fn record(&mut self, r: &InstanceRecord, deletion_alert: Option<&Alert>) {
        if r.status == Status::Deleted {
            self.d.instances_deleted += 1;
            if let Some(t) = self.deleted_in_window(r) {
                let e = DeletedEntry {
                    instance_id: r.instance_id.clone(),
                    name: r.name.clone(),
                    deleted_at: t,
                    evidence: r.deleted_by.clone(),
                    logs_complete_base_backup: r.latest_complete_backup().map(|b| b.name.clone()),
                    rule: deletion_alert.and_then(|a| a.rule),
                    verdict: deletion_alert.and_then(|a| a.verdict.clone()),
                };
                self.d.deleted_count += 1;
                self.d.deleted_without_base_backup += u64::from(e.without_base_backup());
                self.d.deleted.push(e);
            }
            return;
        }
        self.d.instances_live += 1;
        let risks = assess(r, self.now, &self.risk);
        if risks.is_empty() {
            return;
        }
        self.d.at_risk += 1;
        for k in &risks {
            *self.d.at_risk_by_reason.entry(k.as_str().to_string()).or_default() += 1;
        }
        self.at_risk.push(AtRiskEntry {
            instance_id: r.instance_id.clone(),
            name: r.name.clone(),
            reasons: risks.iter().map(|k| k.as_str().to_string()).collect(),
        });
    }

    /// Counts one outbox entry; an earlier digest gives the counters to diff against.
    pub fn alert(&mut self, a: &Alert) {
        if a.kind == Kind::Digest {
            if let Some(d) = a.digest.as_ref().filter(|d| d.date != self.d.date && d.mark.at < self.now) {
                if self.previous.is_none_or(|p| p.at < d.mark.at) {
                    self.previous = Some(d.mark);
                }
            }
            return;
        }
        let since = self.d.window_start;
        let t = &mut self.d.alerts;
        t.raised += u64::from(a.raised_at >= since);
        t.sent += u64::from(a.state == Delivery::Sent && a.sent_at.is_some_and(|s| s >= since));
        t.failed += u64::from(a.state == Delivery::Failed && a.last_error_at.unwrap_or(a.give_up_at) >= since);
        t.pending += u64::from(a.state == Delivery::Pending);
        t.suppressed += u64::from(a.state == Delivery::Suppressed && a.raised_at >= since);
    }

    /// The store's line counters now, and those when the watcher started (`start`).
    pub fn lines(&mut self, now: LineMark, start: LineMark) {
        self.d.mark = now;
        let (since, base) = match self.previous {
            // Counters behind the previous digest's (a store restored from an older copy) are not a
            // difference; the watcher's own start is.
            Some(p) if p.lines_read <= now.lines_read && p.lines_relevant <= now.lines_relevant && p.lines_rejected <= now.lines_rejected => {
                (Since::PreviousDigest, p)
            }
            _ => (Since::WatcherStart, start),
        };
        let secs = (now.at - base.at).max(0) as f64 / 1000.0;
        let read = now.lines_read.saturating_sub(base.lines_read);
        self.d.lines = LineWindow {
            since,
            from: base.at,
            lines_read: read,
            lines_relevant: now.lines_relevant.saturating_sub(base.lines_relevant),
            lines_rejected: now.lines_rejected.saturating_sub(base.lines_rejected),
            lines_per_second: if secs > 0.0 { read as f64 / secs } else { 0.0 },
        };
    }

    pub fn kafka(&mut self, lag: KafkaLag) {
        self.d.kafka = lag;
    }

    pub fn finish(mut self) -> Digest {
        self.d.deleted.sort_by(|a, b| (a.deleted_at, &a.instance_id).cmp(&(b.deleted_at, &b.instance_id)));
        self.d.deleted.truncate(DELETED_LISTED);
        // The worst first: no base backup at all, then failing WAL, then the rest; by id within.
        let rank =
            |e: &AtRiskEntry| ["no_base_backup", "wal_push_failing", "stale_base_backup", "wal_silent"].iter().position(|r| e.reasons.iter().any(|x| x == r));
        self.at_risk.sort_by(|a, b| (rank(a), &a.instance_id).cmp(&(rank(b), &b.instance_id)));
        self.at_risk.truncate(AT_RISK_LISTED);
        self.d.at_risk_listed = self.at_risk;
        self.d
    }
}

/// The digest as an outbox entry: `digest:<date>`, rule `digest`, severity `info`, about no one
/// instance (`instance_id` is empty). Retried like any alert until `give_up_after_ms`.
pub fn alert(d: Digest, now: i64, give_up_after_ms: i64) -> Alert {
    Alert {
        id: id(&d.date),
        instance_id: String::new(),
        kind: Kind::Digest,
        rule: Some(Rule::Digest),
        severity: Some(Severity::Info),
        episode: d.date.clone(),
        summary: summary(&d),
        raised_at: now,
        snapshot: Snapshot::default(),
        verdict: None,
        verification_text: None,
        verification: None,
        state: Delivery::Pending,
        attempts: 0,
        next_attempt_at: now,
        give_up_at: now.saturating_add(give_up_after_ms),
        last_error: None,
        last_error_at: None,
        email_sent_at: None,
        webhook_sent_at: None,
        sent_at: None,
        digest: Some(Box::new(d)),
        outcome_at: None,
    }
}

fn instances(n: u64) -> &'static str {
    if n == 1 {
        "instance"
    } else {
        "instances"
    }
}

pub fn subject(d: &Digest) -> String {
    let watched = d.instances_live + d.instances_deleted;
    format!("[safeguard] daily digest {}: {watched} {} watched, {} deleted in 24 h, {} at risk", d.date, instances(watched), d.deleted_count, d.at_risk)
}

/// One sentence: what the subject says, with the deletions that cannot be restored.
pub fn summary(d: &Digest) -> String {
    let watched = d.instances_live + d.instances_deleted;
    let mut s = format!(
        "safeguard is watching {watched} {} ({} live, {} deleted); {} deleted in the last 24 h",
        instances(watched),
        d.instances_live,
        d.instances_deleted,
        d.deleted_count
    );
    if d.deleted_without_base_backup > 0 {
        s.push_str(&format!(" ({} without a complete base backup)", d.deleted_without_base_backup));
    }
    s.push_str(&format!("; {} at risk now.", d.at_risk));
    s
}

fn lag_text(k: &KafkaLag) -> String {
    match k {
        KafkaLag::NoKafka => "no Kafka source".into(),
        KafkaLag::Unknown { reason } => format!("unknown: {reason}"),
        KafkaLag::Measured { partitions } if partitions.is_empty() => "no partition assigned".into(),
        KafkaLag::Measured { partitions } => {
            let total: i64 = partitions.iter().map(|p| p.lag.max(0)).sum();
            let each: Vec<String> = partitions.iter().map(|p| format!("{}/{}: {}", p.topic, p.partition, p.lag)).collect();
            format!("{total} messages behind over {} partition(s) ({})", partitions.len(), each.join(", "))
        }
    }
}

/// The digest's email: every figure, the deleted and at-risk instances by id, and what to run.
pub fn compose(a: &Alert, d: &Digest) -> Message {
    let mut b = String::new();
    b.push_str(&a.summary);
    b.push_str("\n\n");
    b.push_str(&format!(
        "The watcher is alive: running since {}, committing to its store. This digest is for {} ({}).\n\n",
        rfc3339(d.watching_since),
        d.date,
        d.timezone
    ));
    b.push_str(&format!("Instances watched: {} ({} live, {} deleted)\n\n", d.instances_live + d.instances_deleted, d.instances_live, d.instances_deleted));

    b.push_str(&format!("Deleted in the last 24 h (since {}): {}", rfc3339(d.window_start), d.deleted_count));
    if d.deleted_count > 0 {
        b.push_str(&format!(", {} of them without a complete base backup", d.deleted_without_base_backup));
    }
    b.push('\n');
    for e in &d.deleted {
        let name = e.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
        let logs = match &e.logs_complete_base_backup {
            Some(bb) => format!("logs show complete base backup {bb}"),
            None => "logs show no complete base backup".into(),
        };
        let store = match (&e.verdict, e.rule) {
            (Some(v), _) => format!("; object store: {v}"),
            (None, Some(_)) => "; object store not checked".into(),
            (None, None) => "; deletion alert not decided yet".into(),
        };
        let flag = if e.without_base_backup() { "NO complete base backup" } else { "restorable" };
        b.push_str(&format!("  {}{name} deleted {}: {flag} ({logs}{store})\n", e.instance_id, rfc3339(e.deleted_at)));
        b.push_str(&format!("      safeguard show {}; safeguard recover {}\n", e.instance_id, e.instance_id));
    }
    if d.deleted_count > d.deleted.len() as u64 {
        b.push_str(&format!("  ... and {} more: safeguard instances --deleted\n", d.deleted_count - d.deleted.len() as u64));
    }
    b.push('\n');

    b.push_str(&format!("At risk now: {} live {}", d.at_risk, instances(d.at_risk)));
    if !d.at_risk_by_reason.is_empty() {
        let by: Vec<String> = d.at_risk_by_reason.iter().map(|(k, v)| format!("{k} {v}")).collect();
        b.push_str(&format!(" (by reason: {})", by.join(", ")));
    }
    b.push('\n');
    for e in &d.at_risk_listed {
        let name = e.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
        b.push_str(&format!("  {}{name}: {}\n", e.instance_id, e.reasons.join(", ")));
    }
    if d.at_risk > d.at_risk_listed.len() as u64 {
        b.push_str(&format!("  ... and {} more: safeguard instances --at-risk\n", d.at_risk - d.at_risk_listed.len() as u64));
    }
    b.push('\n');

    let t = &d.alerts;
    b.push_str(&format!(
        "Alerts in the last 24 h (digests aside): {} raised, {} sent, {} failed, {} suppressed; {} pending now\n",
        t.raised, t.sent, t.failed, t.suppressed, t.pending
    ));
    if t.failed > 0 || t.pending > 0 {
        b.push_str("  safeguard alerts --failed / --pending lists them\n");
    }
    let l = &d.lines;
    let since = match l.since {
        Since::PreviousDigest => format!("since the previous digest ({})", rfc3339(l.from)),
        Since::WatcherStart => format!("since start (no earlier digest; the watcher started {})", rfc3339(l.from)),
    };
    b.push_str(&format!(
        "Lines read {since}: {} ({:.1} lines/s on average), {} relevant, {} rejected\n",
        l.lines_read, l.lines_per_second, l.lines_relevant, l.lines_rejected
    ));
    b.push_str(&format!("Kafka consumer lag: {}\n", lag_text(&d.kafka)));
    b.push_str(&format!("\nAlert {} (digest), raised {}.\n", a.id, rfc3339(a.raised_at)));
    Message { subject: subject(d), body: b }
}

/// The webhook's JSON body: a Slack-compatible `text` plus the digest's figures.
pub fn webhook_body(a: &Alert, d: &Digest) -> serde_json::Value {
    serde_json::json!({
        "text": format!("{}\n{}", subject(d), a.summary),
        "alert": {
            "id": a.id,
            "rule": Rule::Digest.as_str(),
            "severity": Severity::Info.as_str(),
            "instance_id": serde_json::Value::Null,
            "episode": a.episode,
            "summary": a.summary,
            "raised_at": rfc3339(a.raised_at),
            "digest": d,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{on_deletion, RuleParams};
    use crate::state::BaseBackup;

    const H: i64 = 3_600_000;
    const NOW: i64 = 1_000 * 24 * H;

    fn rec(id: &str) -> InstanceRecord {
        let mut r = InstanceRecord::new(id, NOW - 48 * H);
        r.last_seen = NOW - H;
        r.wal.last_pushed_at = Some(NOW - H);
        r
    }

    fn backed_up(id: &str) -> InstanceRecord {
        let mut r = rec(id);
        r.base_backups.push(BaseBackup { name: format!("base_{id}"), complete: true, time: Some(NOW - 2 * H), ..Default::default() });
        r
    }

    fn deleted(mut r: InstanceRecord, at: i64) -> InstanceRecord {
        r.status = Status::Deleted;
        r.deleted_at = Some(at);
        r.deleted_by = Some("remove-node.perform of its last node".into());
        r
    }

    fn mark(at: i64, read: u64) -> LineMark {
        LineMark { at, lines_read: read, lines_relevant: read / 10, lines_rejected: 1 }
    }

    #[test]
    fn counts_deletions_of_the_last_day_and_judges_their_backups_by_the_alert_else_the_logs() {
        let mut b = Builder::new("2026-03-29", "Europe/Berlin", NOW, NOW - 30 * H, RiskRules::default());
        // Deleted 2 h ago, no complete backup in the logs and no alert yet.
        let a = deleted(rec("aaaa"), NOW - 2 * H);
        assert_eq!(b.deletion_alert_id(&a), Some(crate::alerts::deletion_id("aaaa", NOW - 2 * H)));
        b.record(&a, None);
        // Deleted 3 h ago with a backup in the logs, which the object store found incomplete.
        let c = deleted(backed_up("cccc"), NOW - 3 * H);
        let mut alert = on_deletion(&c, NOW - 3 * H, NOW - 3 * H, &RuleParams::default()).unwrap();
        alert.rule = Some(Rule::DeletedWithoutBaseBackup);
        alert.verdict = Some("no_complete_base_backup".into());
        b.record(&c, Some(&alert));
        // Deleted 3 h ago, restorable by the logs.
        b.record(&deleted(backed_up("dddd"), NOW - 3 * H), None);
        // Deleted 25 h ago: counted as deleted, not as news.
        let old = deleted(rec("eeee"), NOW - 25 * H);
        assert_eq!(b.deletion_alert_id(&old), None);
        b.record(&old, None);
        b.record(&backed_up("ffff"), None);
        let d = b.finish();
        assert_eq!((d.instances_live, d.instances_deleted, d.deleted_count, d.deleted_without_base_backup), (1, 4, 3, 2));
        let ids: Vec<&str> = d.deleted.iter().map(|e| e.instance_id.as_str()).collect();
        assert_eq!(ids, ["cccc", "dddd", "aaaa"], "oldest first");
        assert!(d.deleted[0].without_base_backup() && !d.deleted[1].without_base_backup() && d.deleted[2].without_base_backup());
        assert_eq!(d.deleted[0].verdict.as_deref(), Some("no_complete_base_backup"));
        assert_eq!(d.at_risk, 0);
    }

    #[test]
    fn lists_twenty_at_risk_instances_worst_first_and_counts_every_reason() {
        let mut b = Builder::new("2026-03-29", "UTC", NOW, NOW - H, RiskRules::default());
        for i in 0..30 {
            let mut r = backed_up(&format!("ok-{i:02}"));
            // Silent WAL for 10 hours: at risk (wal_silent), but it has a backup.
            r.wal.last_pushed_at = Some(NOW - 10 * H);
            b.record(&r, None);
        }
        b.record(&rec("never-backed-up"), None);
        b.record(&backed_up("healthy"), None);
        let d = b.finish();
        assert_eq!(d.at_risk, 31);
        assert_eq!(d.at_risk_by_reason.get("wal_silent"), Some(&30));
        assert_eq!(d.at_risk_by_reason.get("no_base_backup"), Some(&1));
        assert_eq!(d.at_risk_listed.len(), AT_RISK_LISTED);
        assert_eq!(d.at_risk_listed[0].instance_id, "never-backed-up");
        assert_eq!(d.at_risk_listed[1].instance_id, "ok-00");
        let m = compose(&alert(d.clone(), NOW, H), &d);
        assert!(m.body.contains("... and 11 more: safeguard instances --at-risk"), "{}", m.body);
        assert!(m.body.contains("never-backed-up: no_base_backup"), "{}", m.body);
    }

    #[test]
    fn tallies_the_outbox_of_the_last_day_and_diffs_lines_against_the_previous_digest() {
        let p = RuleParams::default();
        let mut b = Builder::new("2026-03-29", "UTC", NOW, NOW - H, RiskRules::default());
        let r = deleted(rec("aaaa"), NOW - 2 * H);
        let mut sent = on_deletion(&r, NOW - 2 * H, NOW - 2 * H, &p).unwrap();
        sent.state = Delivery::Sent;
        sent.sent_at = Some(NOW - 2 * H);
        let mut failed = sent.clone();
        failed.state = Delivery::Failed;
        failed.sent_at = None;
        failed.last_error_at = Some(NOW - H);
        let mut old_failed = failed.clone();
        old_failed.raised_at = NOW - 50 * H;
        old_failed.last_error_at = Some(NOW - 26 * H);
        let pending = on_deletion(&r, NOW - 40 * H, NOW - 40 * H, &p).unwrap();
        // Yesterday's digest and the one before: the newest one's counters are the base.
        let mut yesterday = Builder::new("2026-03-28", "UTC", NOW - 24 * H, NOW - 50 * H, RiskRules::default());
        yesterday.lines(mark(NOW - 24 * H, 1_000), mark(NOW - 50 * H, 0));
        let yesterday = alert(yesterday.finish(), NOW - 24 * H, H);
        let mut before = Builder::new("2026-03-27", "UTC", NOW - 48 * H, NOW - 50 * H, RiskRules::default());
        before.lines(mark(NOW - 48 * H, 10), mark(NOW - 50 * H, 0));
        let before = alert(before.finish(), NOW - 48 * H, H);
        for a in [&sent, &failed, &old_failed, &pending, &yesterday, &before] {
            b.alert(a);
        }
        b.lines(mark(NOW, 1_000 + 86_400 * 5), mark(NOW - H, 1_000));
        let d = b.finish();
        assert_eq!(d.alerts, AlertTally { raised: 2, sent: 1, failed: 1, pending: 1, suppressed: 0 });
        assert_eq!(d.lines.since, Since::PreviousDigest);
        assert_eq!(d.lines.from, NOW - 24 * H);
        assert_eq!(d.lines.lines_read, 86_400 * 5);
        assert!((d.lines.lines_per_second - 5.0).abs() < 1e-9, "{}", d.lines.lines_per_second);
        assert_eq!(d.mark.lines_read, 1_000 + 86_400 * 5);

        // Without an earlier digest: since the watcher started.
        let mut b = Builder::new("2026-03-29", "UTC", NOW, NOW - H, RiskRules::default());
        b.lines(mark(NOW, 1_000 + 3_600), mark(NOW - H, 1_000));
        let d = b.finish();
        assert_eq!((d.lines.since, d.lines.lines_read, d.lines.from), (Since::WatcherStart, 3_600, NOW - H));
        assert!((d.lines.lines_per_second - 1.0).abs() < 1e-9);
        let m = compose(&alert(d.clone(), NOW, H), &d);
        assert!(m.body.contains("since start"), "{}", m.body);
    }

    #[test]
    fn the_alert_is_once_per_date_and_its_message_and_webhook_say_every_figure() {
        let mut b = Builder::new("2026-03-29", "Europe/Berlin", NOW, NOW - H, RiskRules::default());
        b.record(&deleted(rec("6e101b27-ee1b-4f4d-a032-4401a3709ec3"), NOW - 2 * H), None);
        b.record(&rec("live-at-risk"), None);
        b.kafka(KafkaLag::Measured { partitions: vec![PartitionLag { topic: "syslog".into(), partition: 0, lag: 42 }] });
        b.lines(mark(NOW, 7_200), mark(NOW - H, 0));
        let a = alert(b.finish(), NOW, 24 * H);
        assert_eq!(a.id, "digest:2026-03-29");
        assert_eq!((a.kind, a.rule, a.severity), (Kind::Digest, Some(Rule::Digest), Some(Severity::Info)));
        assert!(Rule::Digest.enabled(&RuleParams { instance_deleted: false, deleted_without_base_backup: false, ..RuleParams::default() }));
        let m = crate::alerts::compose(&a);
        assert_eq!(m.subject, "[safeguard] daily digest 2026-03-29: 2 instances watched, 1 deleted in 24 h, 1 at risk");
        for needle in [
            "The watcher is alive",
            "Instances watched: 2 (1 live, 1 deleted)",
            "Deleted in the last 24 h",
            "1 of them without a complete base backup",
            "6e101b27-ee1b-4f4d-a032-4401a3709ec3 deleted",
            "NO complete base backup (logs show no complete base backup; deletion alert not decided yet)",
            "safeguard recover 6e101b27-ee1b-4f4d-a032-4401a3709ec3",
            "live-at-risk: no_base_backup",
            "0 pending now",
            "7200 (2.0 lines/s on average)",
            "Kafka consumer lag: 42 messages behind over 1 partition(s) (syslog/0: 42)",
        ] {
            assert!(m.body.contains(needle), "{needle:?} not in:\n{}", m.body);
        }
        // It round-trips through the outbox's JSON.
        let back: Alert = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
        let w = crate::alerts::webhook_body(&a);
        assert_eq!(w["alert"]["rule"], "digest");
        assert_eq!(w["alert"]["digest"]["deleted_count"], 1);
        assert_eq!(w["alert"]["digest"]["kafka"]["state"], "measured");
        assert!(w["text"].as_str().unwrap().starts_with("[safeguard] daily digest 2026-03-29"));
        // An outbox entry written before digests existed still reads.
        let mut old = serde_json::to_value(on_deletion(&rec("x"), NOW, NOW, &RuleParams::default()).unwrap()).unwrap();
        old.as_object_mut().unwrap().remove("digest");
        assert!(serde_json::from_value::<Alert>(old).unwrap().digest.is_none());
    }
}
