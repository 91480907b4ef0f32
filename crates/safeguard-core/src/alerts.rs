//! The alert rules: when a record's change or its state at a time raises an alert, and what the alert
//! says (email text, webhook body). Pure: the service decides when to evaluate them and delivers what
//! they raise; `[alerts]` in its config becomes the [`RuleParams`] here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state::{InstanceRecord, Status};
use crate::timeutil::{rfc3339, serde_ms, serde_opt_ms};

/// What the rules need of the configuration: which rules are on, and their thresholds in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleParams {
    pub instance_deleted: bool,
    pub deleted_without_base_backup: bool,
    pub no_recent_base_backup: bool,
    pub wal_archiving_failing: bool,
    /// A deletion older than this when first seen is history, not news; absence rules skip instances
    /// not seen for this long.
    pub backfill_window_ms: i64,
    /// An undelivered alert is retried until this long after it was raised.
    pub give_up_after_ms: i64,
    pub max_base_backup_age_ms: i64,
    pub first_base_backup_within_ms: i64,
    pub wal_silence_ms: i64,
}

impl Default for RuleParams {
    fn default() -> Self {
        const H: i64 = 3_600_000;
        RuleParams {
            instance_deleted: true,
            deleted_without_base_backup: true,
            no_recent_base_backup: true,
            wal_archiving_failing: true,
            backfill_window_ms: 7 * 24 * H,
            give_up_after_ms: 24 * H,
            max_base_backup_age_ms: 26 * H,
            first_base_backup_within_ms: 26 * H,
            wal_silence_ms: 6 * H,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Deletion,
    /// A deletion that was announced turned out not to be one (a late line showed a node added within
    /// the grace): the all-clear for that deletion alert.
    DeletionResolved,
    NoRecentBaseBackup,
    WalArchivingFailing,
    /// The daily digest (`[alerts.digest]`): about the watcher and every instance, not one.
    Digest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    InstanceDeleted,
    DeletedWithoutBaseBackup,
    DeletionResolved,
    NoRecentBaseBackup,
    WalArchivingFailing,
    Digest,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::InstanceDeleted => "instance_deleted",
            Rule::DeletedWithoutBaseBackup => "deleted_without_base_backup",
            Rule::DeletionResolved => "deletion_resolved",
            Rule::NoRecentBaseBackup => "no_recent_base_backup",
            Rule::WalArchivingFailing => "wal_archiving_failing",
            Rule::Digest => "digest",
        }
    }
    pub fn enabled(self, c: &RuleParams) -> bool {
        match self {
            Rule::InstanceDeleted => c.instance_deleted,
            Rule::DeletedWithoutBaseBackup => c.deleted_without_base_backup,
            // It follows the deletion alert it resolves.
            Rule::DeletionResolved => c.instance_deleted || c.deleted_without_base_backup,
            Rule::NoRecentBaseBackup => c.no_recent_base_backup,
            Rule::WalArchivingFailing => c.wal_archiving_failing,
            // Raised only when `[alerts.digest]` is configured, whichever deletion rules are on.
            Rule::Digest => true,
        }
    }
    pub fn severity(self) -> Severity {
        match self {
            Rule::DeletedWithoutBaseBackup => Severity::Critical,
            Rule::DeletionResolved => Severity::Resolved,
            Rule::Digest => Severity::Info,
            _ => Severity::Warning,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
    Resolved,
    /// News, not a problem: the daily digest.
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
            Severity::Resolved => "resolved",
            Severity::Info => "info",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    Pending,
    Sent,
    Failed,
    /// Its rule is switched off, or no channel is configured.
    Suppressed,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Pending => "pending",
            Delivery::Sent => "sent",
            Delivery::Failed => "failed",
            Delivery::Suppressed => "suppressed",
        }
    }
}

/// What the alert says about the instance, captured when it was raised (the record may change later).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Snapshot {
    pub name: Option<String>,
    pub org_guid: Option<String>,
    pub space_guid: Option<String>,
    pub backup_prefix: Option<String>,
    /// `cf-<node> on cell <host>` for every node seen.
    pub nodes: Vec<String>,
    #[serde(with = "serde_opt_ms")]
    pub deleted_at: Option<i64>,
    pub evidence: Option<String>,
    /// The newest base backup the logs show as complete, with its time.
    pub latest_complete_backup: Option<String>,
    #[serde(with = "serde_opt_ms")]
    pub last_wal_push: Option<i64>,
    pub last_wal_failure: Option<String>,
}

impl Snapshot {
    pub fn of(r: &InstanceRecord) -> Snapshot {
        Snapshot {
            name: r.name.clone(),
            org_guid: r.org_guid.clone(),
            space_guid: r.space_guid.clone(),
            backup_prefix: r.backup_prefix.clone(),
            nodes: r.nodes.iter().map(|n| format!("{} on cell {}", n.container, n.host.as_deref().unwrap_or("?"))).collect(),
            deleted_at: r.deleted_at,
            evidence: r.deleted_by.clone(),
            latest_complete_backup: r.latest_complete_backup().map(|b| format!("{} ({})", b.name, b.time.map(rfc3339).unwrap_or_default())),
            last_wal_push: r.wal.last_pushed_at,
            last_wal_failure: r.wal.last_failure.clone(),
        }
    }
}

/// One outbox entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `<instance>:<kind>:<episode>` (`digest:<local date>` for the daily digest): the idempotency key.
    pub id: String,
    /// Empty for the daily digest, which is about no one instance.
    pub instance_id: String,
    pub kind: Kind,
    /// Decided when raised, except for deletions, which the object store decides at delivery.
    pub rule: Option<Rule>,
    pub severity: Option<Severity>,
    pub episode: String,
    /// What happened, in one sentence from the stream's evidence.
    pub summary: String,
    #[serde(with = "serde_ms")]
    pub raised_at: i64,
    pub snapshot: Snapshot,
    /// The object store's verdict (`verify::Verdict` name) and report, once checked.
    pub verdict: Option<String>,
    pub verification_text: Option<String>,
    pub verification: Option<serde_json::Value>,
    pub state: Delivery,
    pub attempts: u32,
    #[serde(with = "serde_ms")]
    pub next_attempt_at: i64,
    /// Retries stop after this; `alerts retry` moves it.
    #[serde(with = "serde_ms")]
    pub give_up_at: i64,
    pub last_error: Option<String>,
    #[serde(with = "serde_opt_ms", default)]
    pub last_error_at: Option<i64>,
    #[serde(with = "serde_opt_ms", default)]
    pub email_sent_at: Option<i64>,
    #[serde(with = "serde_opt_ms", default)]
    pub webhook_sent_at: Option<i64>,
    #[serde(with = "serde_opt_ms", default)]
    pub sent_at: Option<i64>,
    /// The daily digest's figures (its counters are what the next day's digest diffs against).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Box<crate::digest::Digest>>,
    /// With a leader (`[leader]`): when the leader recorded the outcome this copy took last; an older one
    /// read later changes nothing.
    #[serde(with = "serde_opt_ms", default, skip_serializing_if = "Option::is_none")]
    pub outcome_at: Option<i64>,
}

impl Alert {
    fn new(r: &InstanceRecord, kind: Kind, rule: Option<Rule>, episode: String, summary: String, now: i64, p: &RuleParams) -> Alert {
        let kind_s = match kind {
            Kind::Deletion => "deletion",
            Kind::DeletionResolved => "deletion_resolved",
            Kind::NoRecentBaseBackup => "no_recent_base_backup",
            Kind::WalArchivingFailing => "wal_archiving_failing",
            Kind::Digest => "digest",
        };
        Alert {
            id: format!("{}:{kind_s}:{episode}", r.instance_id),
            instance_id: r.instance_id.clone(),
            kind,
            rule,
            severity: rule.map(Rule::severity),
            episode,
            summary,
            raised_at: now,
            snapshot: Snapshot::of(r),
            verdict: None,
            verification_text: None,
            verification: None,
            state: Delivery::Pending,
            attempts: 0,
            next_attempt_at: now,
            give_up_at: now.saturating_add(p.give_up_after_ms),
            last_error: None,
            last_error_at: None,
            email_sent_at: None,
            webhook_sent_at: None,
            sent_at: None,
            digest: None,
            outcome_at: None,
        }
    }

    pub fn recover_command(&self) -> String {
        format!("safeguard recover {}", self.instance_id)
    }
}

/// The deletion alert for a record whose deletion just became final, unless the deletion is older than
/// the backfill window (history, not news) or both deletion rules are off.
pub fn on_deletion(r: &InstanceRecord, at: i64, now: i64, p: &RuleParams) -> Option<Alert> {
    if !(p.instance_deleted || p.deleted_without_base_backup) || now - at > p.backfill_window_ms {
        return None;
    }
    let summary =
        format!("Instance {} was deleted at {} ({}).", r.instance_id, rfc3339(at), r.deleted_by.as_deref().unwrap_or("deletion seen in the broker log"));
    Some(Alert::new(r, Kind::Deletion, None, rfc3339(at), summary, now, p))
}

/// The id of the deletion alert for the episode at `at` (see [`on_deletion`]).
pub fn deletion_id(instance: &str, at: i64) -> String {
    format!("{instance}:deletion:{}", rfc3339(at))
}

/// The all-clear for an announced deletion at `at` that the facts no longer support. Its id follows the
/// deletion's, so it too is raised once whatever the replays.
pub fn on_reversal(r: &InstanceRecord, at: i64, evidence: &str, now: i64, p: &RuleParams) -> Option<Alert> {
    if !Rule::DeletionResolved.enabled(p) {
        return None;
    }
    let summary = format!(
        "Instance {} was reported deleted at {}, but it is {} now: {evidence}. No recovery is needed for that deletion.",
        r.instance_id,
        rfc3339(at),
        if r.status == Status::Live { "live" } else { "deleted at another time" },
    );
    Some(Alert::new(r, Kind::DeletionResolved, Some(Rule::DeletionResolved), rfc3339(at), summary, now, p))
}

/// Absence rules for one live instance at `now`: no recent base backup, WAL archiving failing or silent.
pub fn absence(r: &InstanceRecord, now: i64, p: &RuleParams) -> Vec<Alert> {
    let rc = p;
    let mut out = Vec::new();
    if r.status != Status::Live || r.deletion_pending || now - r.last_seen > p.backfill_window_ms {
        return out;
    }
    if rc.no_recent_base_backup {
        match r.latest_complete_backup() {
            Some(b) if b.time.is_some_and(|t| now - t > rc.max_base_backup_age_ms) => {
                let t = b.time.unwrap_or(0);
                let summary = format!("Instance {} has had no complete base backup since {} ({} at {}).", r.instance_id, rfc3339(t), b.name, rfc3339(t));
                out.push(Alert::new(r, Kind::NoRecentBaseBackup, Some(Rule::NoRecentBaseBackup), format!("after:{}", b.name), summary, now, p));
            }
            None if now - r.first_seen > rc.first_base_backup_within_ms => {
                let summary = format!("Instance {} has never completed a base backup since it was first seen at {}.", r.instance_id, rfc3339(r.first_seen));
                out.push(Alert::new(r, Kind::NoRecentBaseBackup, Some(Rule::NoRecentBaseBackup), "never".into(), summary, now, p));
            }
            _ => {}
        }
    }
    if rc.wal_archiving_failing {
        let last_ok = r.wal.last_pushed_at;
        if let Some(f) = r.wal.last_failure_at.filter(|f| last_ok.is_none_or(|ok| ok < *f)) {
            let summary = format!(
                "WAL archiving is failing for instance {}: {} (last failure {}, last successful push {}).",
                r.instance_id,
                r.wal.last_failure.as_deref().unwrap_or("archive command failed"),
                rfc3339(f),
                last_ok.map(rfc3339).unwrap_or_else(|| "never".into())
            );
            let episode = format!("failing-after:{}", last_ok.map(rfc3339).unwrap_or_else(|| "never".into()));
            out.push(Alert::new(r, Kind::WalArchivingFailing, Some(Rule::WalArchivingFailing), episode, summary, now, p));
        } else if let Some(ok) = last_ok.filter(|ok| now - ok > rc.wal_silence_ms) {
            let summary = format!("Instance {} has pushed no WAL segment since {}.", r.instance_id, rfc3339(ok));
            out.push(Alert::new(r, Kind::WalArchivingFailing, Some(Rule::WalArchivingFailing), format!("silent-after:{}", rfc3339(ok)), summary, now, p));
        }
    }
    out
}

/// The first time after `now` at which [`absence`] can raise something it does not raise at `now`, if
/// any: a backup growing stale, the first backup overdue, WAL falling silent. Nothing new is raised
/// before it, so a watcher need look at an unchanged record only then. Past the backfill window the
/// rules raise nothing, so a time beyond it is no change.
pub fn absence_next_change(r: &InstanceRecord, now: i64, p: &RuleParams) -> Option<i64> {
    if r.status != Status::Live || r.deletion_pending {
        return None;
    }
    let eligible_until = r.last_seen.saturating_add(p.backfill_window_ms);
    let mut next: Option<i64> = None;
    let mut at = |t: i64| {
        if t > now && t <= eligible_until {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
    };
    // Each rule fires when `now - t > limit`, i.e. from `t + limit + 1` on.
    if p.no_recent_base_backup {
        match r.latest_complete_backup() {
            Some(b) => {
                if let Some(t) = b.time {
                    at(t.saturating_add(p.max_base_backup_age_ms).saturating_add(1));
                }
            }
            None => at(r.first_seen.saturating_add(p.first_base_backup_within_ms).saturating_add(1)),
        }
    }
    if p.wal_archiving_failing {
        let failing = r.wal.last_failure_at.is_some_and(|f| r.wal.last_pushed_at.is_none_or(|ok| ok < f));
        if let (false, Some(ok)) = (failing, r.wal.last_pushed_at) {
            at(ok.saturating_add(p.wal_silence_ms).saturating_add(1));
        }
    }
    next
}

/// The message, as the operator reads it.
pub struct Message {
    pub subject: String,
    pub body: String,
}

pub fn compose(a: &Alert) -> Message {
    if let Some(d) = a.digest.as_deref() {
        return crate::digest::compose(a, d);
    }
    let sev = a.severity.unwrap_or(Severity::Warning);
    let tag = match sev {
        Severity::Critical => "CRITICAL",
        Severity::Warning => "WARNING",
        Severity::Resolved => "RESOLVED",
        Severity::Info => "INFO",
    };
    let id = &a.instance_id;
    let subject = match a.rule {
        Some(Rule::DeletedWithoutBaseBackup) => format!("[safeguard] {tag}: deleted instance {id} has NO complete base backup"),
        Some(Rule::InstanceDeleted) => format!("[safeguard] {tag}: instance {id} was deleted - recover with safeguard recover {id}"),
        Some(Rule::DeletionResolved) => format!("[safeguard] {tag}: instance {id} is live again - the deletion reported at {} did not happen", a.episode),
        Some(Rule::NoRecentBaseBackup) => format!("[safeguard] {tag}: instance {id} has no recent base backup"),
        Some(Rule::WalArchivingFailing) => format!("[safeguard] {tag}: WAL archiving problem on instance {id}"),
        Some(Rule::Digest) => format!("[safeguard] {tag}: daily digest {}", a.episode),
        None => format!("[safeguard] {tag}: instance {id}"),
    };
    let s = &a.snapshot;
    let mut b = String::new();
    b.push_str(&a.summary);
    b.push_str("\n\n");
    if a.rule == Some(Rule::DeletedWithoutBaseBackup) {
        b.push_str("The object store holds no complete base backup for this instance: it cannot be restored from its\n");
        b.push_str("backups. Contact the instance's owners now; if the data still exists anywhere else, save it.\n\n");
    }
    let mut facts: BTreeMap<&str, String> = BTreeMap::new();
    facts.insert("1 instance", id.clone());
    if let Some(n) = &s.name {
        facts.insert("2 name", n.clone());
    }
    if let Some(o) = &s.org_guid {
        facts.insert("3 org", o.clone());
    }
    if let Some(sp) = &s.space_guid {
        facts.insert("4 space", sp.clone());
    }
    facts.insert("5 nodes", if s.nodes.is_empty() { "none seen".into() } else { s.nodes.join("; ") });
    facts.insert("6 backups at", s.backup_prefix.clone().unwrap_or_else(|| "unknown (no WAL-E line seen)".into()));
    facts.insert(
        "7 logs show",
        s.latest_complete_backup.clone().map(|b| format!("complete base backup {b}")).unwrap_or_else(|| "no complete base backup".into()),
    );
    for (k, v) in facts {
        b.push_str(&format!("  {:<13} {v}\n", &k[2..]));
    }
    if a.kind == Kind::Deletion {
        b.push_str("\nObject store check:\n");
        match &a.verification_text {
            Some(t) => {
                for line in t.lines() {
                    b.push_str("  ");
                    b.push_str(line);
                    b.push('\n');
                }
            }
            None => b.push_str("  not checked\n"),
        }
        b.push_str(&format!("\nNext step:\n  safeguard verify {id}\n  {}\n", a.recover_command()));
    } else {
        b.push_str(&format!("\nInspect it with: safeguard show {id}\n"));
    }
    b.push_str(&format!("\nAlert {} ({}), raised {}.\n", a.id, a.rule.map(Rule::as_str).unwrap_or("undecided"), rfc3339(a.raised_at)));
    Message { subject, body: b }
}

/// The webhook's JSON body: a Slack-compatible `text` plus the structured alert.
pub fn webhook_body(a: &Alert) -> serde_json::Value {
    if let Some(d) = a.digest.as_deref() {
        return crate::digest::webhook_body(a, d);
    }
    let m = compose(a);
    serde_json::json!({
        "text": format!("{}\n{}", m.subject, a.summary),
        "alert": {
            "id": a.id,
            "rule": a.rule.map(Rule::as_str),
            "severity": a.severity.map(Severity::as_str),
            "instance_id": a.instance_id,
            "episode": a.episode,
            "summary": a.summary,
            "raised_at": rfc3339(a.raised_at),
            "name": a.snapshot.name,
            "org_guid": a.snapshot.org_guid,
            "space_guid": a.snapshot.space_guid,
            "nodes": a.snapshot.nodes,
            "backup_prefix": a.snapshot.backup_prefix,
            "logs_show_complete_base_backup": a.snapshot.latest_complete_backup,
            "verdict": a.verdict,
            "verification": a.verification,
            "recover_command": if a.kind == Kind::Deletion { Some(a.recover_command()) } else { None },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{BaseBackup, Node};

    #[test]
    fn nothing_new_is_raised_before_the_next_change() {
        let mut rng = crate::gen::Rng::new(11);
        let h = 3_600_000i64;
        for _ in 0..5_000 {
            let r = crate::state::risk::tests::random_record(&mut rng);
            let p = RuleParams {
                no_recent_base_backup: rng.below(4) != 0,
                wal_archiving_failing: rng.below(4) != 0,
                backfill_window_ms: (1 + rng.below(300) as i64) * h,
                max_base_backup_age_ms: (1 + rng.below(48) as i64) * h,
                first_base_backup_within_ms: (1 + rng.below(48) as i64) * h,
                wal_silence_ms: (1 + rng.below(12) as i64) * h,
                ..RuleParams::default()
            };
            let now = r.first_seen + rng.below(200) as i64 * h - 50 * h;
            let ids = |t: i64| absence(&r, t, &p).into_iter().map(|a| a.id).collect::<std::collections::BTreeSet<_>>();
            let here = ids(now);
            let next = absence_next_change(&r, now, &p);
            let end = next.unwrap_or(now + 400 * h);
            for t in [now, end - 1, now + (end - now) / 2, now + rng.below((end - now) as u64) as i64] {
                assert!(ids(t).is_subset(&here), "{r:?}: {:?} raised at {t} but not at {now} (next {next:?})", ids(t));
            }
            if let Some(n) = next {
                assert!(!ids(n).is_subset(&here), "nothing new at the announced time {n} for {r:?}");
            }
        }
    }

    fn rec() -> InstanceRecord {
        let mut r = InstanceRecord::new("6e101b27-ee1b-4f4d-a032-4401a3709ec3", 1_000);
        r.backup_prefix = Some("s3://b/backups/6e101b27-ee1b-4f4d-a032-4401a3709ec3/wal/".into());
        r.nodes.push(Node { node_uuid: "n1".into(), container: "cf-n1".into(), host: Some("cell-1".into()), ..Default::default() });
        r
    }

    #[test]
    fn old_deletions_are_history_not_alerts() {
        let cfg = RuleParams::default();
        let mut r = rec();
        r.status = Status::Deleted;
        let now = 100 * 86_400_000;
        assert!(on_deletion(&r, now - 60_000, now, &cfg).is_some());
        assert!(on_deletion(&r, now - 8 * 86_400_000, now, &cfg).is_none());
        let off = RuleParams { instance_deleted: false, deleted_without_base_backup: false, ..cfg };
        assert!(on_deletion(&r, now, now, &off).is_none());
    }

    #[test]
    fn absence_rules_and_their_episodes() {
        let cfg = RuleParams::default();
        let h = 3_600_000;
        let mut r = rec();
        r.first_seen = 0;
        r.last_seen = 30 * h;
        let a = absence(&r, 30 * h, &cfg);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].id, "6e101b27-ee1b-4f4d-a032-4401a3709ec3:no_recent_base_backup:never");
        r.base_backups.push(BaseBackup { name: "base_1".into(), complete: true, time: Some(29 * h), ..Default::default() });
        assert!(absence(&r, 30 * h, &cfg).is_empty());
        let a = absence(&r, 56 * h, &RuleParams { backfill_window_ms: 30 * 86_400_000, ..cfg });
        assert_eq!(a.iter().map(|a| a.episode.as_str()).collect::<Vec<_>>(), ["after:base_1"]);
        r.wal.last_pushed_at = Some(29 * h);
        r.wal.last_failure_at = Some(30 * h);
        r.wal.last_failure = Some("archive command failed with exit code 1".into());
        let a = absence(&r, 30 * h, &cfg);
        assert_eq!(a[0].rule, Some(Rule::WalArchivingFailing));
        assert!(a[0].summary.contains("exit code 1"), "{}", a[0].summary);
    }

    #[test]
    fn message_names_the_instance_the_prefix_and_the_command() {
        let cfg = RuleParams::default();
        let mut r = rec();
        r.status = Status::Deleted;
        r.deleted_by = Some("remove-node.perform of its last node n1".into());
        let mut a = on_deletion(&r, 5_000, 6_000, &cfg).unwrap();
        a.rule = Some(Rule::DeletedWithoutBaseBackup);
        a.severity = Some(Severity::Critical);
        let m = compose(&a);
        assert!(m.subject.starts_with("[safeguard] CRITICAL: deleted instance 6e101b27"), "{}", m.subject);
        assert!(m.body.contains("s3://b/backups/6e101b27-ee1b-4f4d-a032-4401a3709ec3/wal/"));
        assert!(m.body.contains("safeguard recover 6e101b27-ee1b-4f4d-a032-4401a3709ec3"));
        assert!(m.body.contains("cf-n1 on cell cell-1"));
        let w = webhook_body(&a);
        assert_eq!(w["alert"]["severity"], "critical");
        assert!(w["text"].as_str().unwrap().contains("NO complete base backup"));
    }
}
