//! What the CLI prints: the same facts as readable text for a person and as stable JSON for scripts.

use std::fmt::Write;

use serde_json::{json, Value};

use crate::state::risk::{assess, RiskRules};
use crate::state::{InstanceRecord, Status};
use crate::timeutil::rfc3339;

fn t(ms: Option<i64>) -> String {
    ms.map(rfc3339).unwrap_or_else(|| "-".to_string())
}

pub fn record_json(rec: &InstanceRecord, now: i64, rules: &RiskRules) -> Value {
    let mut v = serde_json::to_value(rec).unwrap_or(Value::Null);
    let risks: Vec<&str> = assess(rec, now, rules).into_iter().map(|r| r.as_str()).collect();
    if let Value::Object(m) = &mut v {
        // The facts behind the fields are the store's business, not the reader's.
        m.remove("facts");
        m.insert("at_risk".into(), json!(risks));
    }
    v
}

pub fn record_text(rec: &InstanceRecord, now: i64, rules: &RiskRules) -> String {
    let mut s = String::new();
    let status = match (rec.status, rec.deletion_pending) {
        (Status::Live, _) => "live".to_string(),
        (Status::Deleted, true) => format!("DELETED at {} (pending: a node added again within the grace cancels it)", t(rec.deleted_at)),
        (Status::Deleted, false) => format!("DELETED at {}", t(rec.deleted_at)),
    };
    let _ = writeln!(s, "Instance {}  {}", rec.instance_id, status);
    if let Some(by) = &rec.deleted_by {
        let _ = writeln!(s, "  evidence      {by}");
    }
    let _ = writeln!(s, "  backups       {}", rec.backup_prefix.as_deref().unwrap_or("(no WAL-E line seen yet)"));
    let _ = writeln!(s, "  seen          {} .. {}", rfc3339(rec.first_seen), rfc3339(rec.last_seen));
    for (k, v) in [("name", &rec.name), ("org", &rec.org_guid), ("space", &rec.space_guid), ("plan", &rec.plan_id), ("cloned from", &rec.cloned_from)] {
        if let Some(v) = v {
            let _ = writeln!(s, "  {k:<13} {v}");
        }
    }
    if rec.nodes.is_empty() {
        let _ = writeln!(s, "  nodes         none seen");
    }
    for (i, n) in rec.nodes.iter().enumerate() {
        let label = if i == 0 { "nodes" } else { "" };
        let mut line = format!("{} on cell {}", n.container, n.host.as_deref().unwrap_or("?"));
        if let Some(b) = &n.backend {
            let _ = write!(line, ", backend {b}");
        }
        match n.removed_at {
            Some(r) => {
                let _ = write!(line, ", removed {}", rfc3339(r));
            }
            None => line.push_str(", active"),
        }
        let _ = writeln!(s, "  {label:<13} {line}");
    }
    if rec.base_backups.is_empty() {
        let _ = writeln!(s, "  base backups  NONE seen in the logs");
    }
    for (i, b) in rec.base_backups.iter().enumerate() {
        let label = if i == 0 { "base backups" } else { "" };
        let state = if b.pruned {
            "pruned".to_string()
        } else if b.complete {
            format!("complete {}", t(b.time))
        } else {
            format!("INCOMPLETE ({} of {} partitions finished), started {}", b.partitions_done, b.partitions_started, t(b.time))
        };
        let _ = writeln!(s, "  {label:<13} {}  {state}", b.name);
    }
    let w = &rec.wal;
    let _ = writeln!(
        s,
        "  WAL           last segment {} pushed {}; {} segments pushed; {} push failures{}",
        w.last_segment.as_deref().unwrap_or("-"),
        t(w.last_pushed_at),
        w.segments_pushed,
        w.push_failures,
        w.last_failure.as_deref().map(|f| format!(" (last: {f} at {})", t(w.last_failure_at))).unwrap_or_default()
    );
    let _ = writeln!(s, "  sysid         {}", if rec.sysid_uploaded { "uploaded" } else { "not seen" });
    if rec.restore.preparing_at.is_some() || rec.restore.wal_fetched > 0 {
        let _ = writeln!(
            s,
            "  restore seen  preparing {}; {} partitions downloaded; {} WAL segments fetched, last {}",
            t(rec.restore.preparing_at),
            rec.restore.partitions_downloaded,
            rec.restore.wal_fetched,
            t(rec.restore.last_wal_fetch_at)
        );
    }
    let risks: Vec<&str> = assess(rec, now, rules).into_iter().map(|r| r.as_str()).collect();
    let _ = writeln!(s, "  at risk       {}", if risks.is_empty() { "no".to_string() } else { risks.join(", ") });
    if rec.status == Status::Deleted {
        let _ = writeln!(s, "  next step     safeguard verify {id}   then   safeguard recover {id}", id = rec.instance_id);
    }
    s
}

pub fn instances_table(recs: &[InstanceRecord], now: i64, rules: &RiskRules) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{:<38} {:<8} {:<25} {:<26} {:<25} AT RISK", "INSTANCE", "STATUS", "DELETED AT", "LAST COMPLETE BASE BACKUP", "LAST WAL PUSH");
    for r in recs {
        let risks: Vec<&str> = assess(r, now, rules).into_iter().map(|x| x.as_str()).collect();
        let _ = writeln!(
            s,
            "{:<38} {:<8} {:<25} {:<26} {:<25} {}",
            r.instance_id,
            match r.status {
                Status::Live => "live",
                Status::Deleted => "deleted",
            },
            t(r.deleted_at),
            t(r.latest_complete_backup().and_then(|b| b.time)),
            t(r.wal.last_pushed_at),
            if risks.is_empty() { "-".to_string() } else { risks.join(",") }
        );
    }
    let _ = writeln!(s, "{} instance(s)", recs.len());
    s
}

pub fn alerts_table(alerts: &[crate::alerts::Alert]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{:<9} {:<9} {:<28} {:<25} {:<8} ALERT / LAST ERROR", "STATE", "SEVERITY", "RULE", "RAISED", "ATTEMPTS");
    for a in alerts {
        let state = serde_json::to_value(a.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let _ = writeln!(
            s,
            "{:<9} {:<9} {:<28} {:<25} {:<8} {}{}",
            state,
            a.severity.map(|x| x.as_str()).unwrap_or("-"),
            a.rule.map(|r| r.as_str()).unwrap_or("(deciding)"),
            rfc3339(a.raised_at),
            a.attempts,
            a.id,
            a.last_error.as_deref().map(|e| format!("\n{:>83}{e}", "")).unwrap_or_default()
        );
    }
    let _ = writeln!(s, "{} alert(s)", alerts.len());
    s
}
