//! The engine raises alerts into the outbox in the same commit as the state that causes them, and never
//! twice for one episode: deletions within the backfill window, and the absence rules of a scan.

use safeguard::alerts::{AlertsConfig, Delivery, Kind, Rule};
use safeguard::pipeline::{Engine, EngineConfig, SourceId};
use safeguard::state::Rules;
use safeguard::store::Store;
use safeguard::timeutil::{now_ms, rfc3339};

const H: i64 = 3_600_000;

fn line(t: i64, name: &str, data: &str) -> String {
    format!(
        r#"<134>1 {} 0.router broker.stdout.log - - - {{"timestamp":"{}.0","source":"dingo-postgresql-broker","message":"dingo-postgresql-broker.cluster.{name}","log_level":1,"data":{{{data}}}}}"#,
        rfc3339(t),
        t / 1000
    )
}

fn wal(t: i64, id: &str, node: &str, seg: u32) -> String {
    format!(
        r#"<134>1 {} cell-1 cf-{node} - - - patroni>  DETAIL: Archiving to "s3://b/backups/{id}/wal/wal_005/{seg:024X}.lzo" complete at 1KiB/s."#,
        rfc3339(t)
    )
}

fn engine(dir: &std::path::Path) -> Engine {
    let cfg = EngineConfig {
        rules: Rules { deletion_grace_ms: 1_000, ..Rules::default() },
        alerts: Some(AlertsConfig::default()),
        raise_absence: true,
        ..EngineConfig::default()
    };
    Engine::new(Store::open(dir, 8 << 20).unwrap(), cfg).unwrap()
}

#[test]
fn absence_scan_raises_each_episode_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut e = engine(tmp.path());
    let h = e.add_source(SourceId::stream(b"t"), "t", true).unwrap();
    let now = now_ms();
    let (live, node) = ("aaaa0001-0000-4000-8000-000000000001", "bbbb0001-0000-4000-8000-000000000001");
    let (failing, node2) = ("aaaa0002-0000-4000-8000-000000000002", "bbbb0002-0000-4000-8000-000000000002");
    let lines = [
        line(now - 30 * H, "add-node.perform", &format!(r#""instance-id":"{live}","node-uuid":"{node}""#)),
        wal(now - 30 * H + 1, live, node, 1),
        wal(now - H, live, node, 2),
        line(now - 2 * H, "add-node.perform", &format!(r#""instance-id":"{failing}","node-uuid":"{node2}""#)),
        wal(now - 2 * H + 1, failing, node2, 1),
        format!("<134>1 {} cell-1 cf-{node2} - - - patroni> LOG:  archive command failed with exit code 1", rfc3339(now - H)),
    ];
    let mut off = 0;
    for l in &lines {
        off += l.len() as u64 + 1;
        e.feed_line(h, off, l.as_bytes());
    }
    e.commit_at(None, now).unwrap();
    assert_eq!(e.store().alerts().count(), 0, "the rules look at changed instances when a scan asks");
    e.scan_absence();
    e.commit_at(None, now).unwrap();
    assert_eq!(e.store().alerts().count(), 2);
    // A second scan finds the same episodes and adds nothing.
    e.scan_absence();
    e.commit_at(None, now + 60_000).unwrap();
    let alerts: Vec<_> = e.store().alerts().map(Result::unwrap).collect();
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    let a = alerts.iter().find(|a| a.instance_id == live).unwrap();
    assert_eq!((a.kind, a.rule, a.episode.as_str()), (Kind::NoRecentBaseBackup, Some(Rule::NoRecentBaseBackup), "never"));
    assert_eq!(a.state, Delivery::Pending);
    let f = alerts.iter().find(|a| a.instance_id == failing).unwrap();
    assert_eq!(f.rule, Some(Rule::WalArchivingFailing));
    assert!(f.summary.contains("archive command failed"), "{}", f.summary);
}

#[test]
fn deletion_alert_commits_with_the_deletion_and_old_deletions_are_history() {
    let tmp = tempfile::tempdir().unwrap();
    let mut e = engine(tmp.path());
    let h = e.add_source(SourceId::stream(b"d"), "d", true).unwrap();
    let now = now_ms();
    let (recent, old) = ("cccc0001-0000-4000-8000-000000000001", "cccc0002-0000-4000-8000-000000000002");
    let lines = [
        line(now - 20 * 86_400_000, "add-node.perform", &format!(r#""instance-id":"{old}","node-uuid":"n-old""#)),
        line(now - 20 * 86_400_000 + 5, "remove-node.perform", &format!(r#""instance-id":"{old}","node-uuid":"n-old""#)),
        line(now - 60_000, "add-node.perform", &format!(r#""instance-id":"{recent}","node-uuid":"n-new""#)),
        line(now - 50_000, "remove-node.perform", &format!(r#""instance-id":"{recent}","node-uuid":"n-new""#)),
    ];
    let mut off = 0;
    for l in &lines {
        off += l.len() as u64 + 1;
        e.feed_line(h, off, l.as_bytes());
    }
    let c = e.commit(Some(now)).unwrap();
    assert_eq!(c.effects.iter().filter(|x| matches!(x, safeguard::state::Effect::InstanceDeleted { .. })).count(), 2);
    let alerts: Vec<_> = e.store().alerts().map(Result::unwrap).collect();
    assert_eq!(alerts.len(), 1, "only the recent deletion pages anyone: {alerts:#?}");
    assert_eq!(alerts[0].instance_id, recent);
    assert_eq!(alerts[0].kind, Kind::Deletion);
    assert_eq!(alerts[0].rule, None, "the object store decides the rule at delivery");
    // The same lines again (a replay) change nothing.
    let mut off = 0;
    for l in &lines {
        off += l.len() as u64 + 1;
        e.feed_line(h, off, l.as_bytes());
    }
    e.commit(Some(now + 10_000)).unwrap();
    assert_eq!(e.store().alerts().count(), 1);
}
