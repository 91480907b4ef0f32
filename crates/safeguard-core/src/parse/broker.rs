//! The service broker's Go lager JSON lines, in all three naming eras.

use serde::Deserialize;
use serde_json::{Map, Value};

use std::sync::LazyLock;

use memchr::memmem::Finder;

use super::{is_instance_id, Event, EventKind, Phase, Reject};

#[derive(Deserialize)]
struct LagerLine {
    #[serde(default)]
    timestamp: Option<Value>,
    message: String,
    #[serde(default)]
    data: Option<Value>,
}

const SOURCES: [&str; 2] = ["patroni-broker.", "dingo-postgresql-broker."];

/// Every message name (after the source and an optional `cluster.`) that bears on instance state: the
/// arms of the match in [`parse`].
const NAMES: [&str; 20] = [
    "provision.start",
    "provision.done",
    "provision.running.success",
    "deprovision.start",
    "deprovision.done",
    "etcd-delete.done",
    "update.start",
    "update.done",
    "recreate.start",
    "recreate.done",
    "bind.start",
    "bind.done",
    "unbind.start",
    "unbind.done",
    "add-node.perform",
    "add-node.perform.success",
    "remove-node.perform",
    "assign-port-to-cluster",
    "remove-cluster-assignment",
    "callbacks.copy-database-backup.start",
];

/// The lager `message` value read straight off the line (`"message":"<name>"`), without decoding the
/// JSON; `None` when it is not written that way (then the line is decoded).
fn message_name(body: &str) -> Option<&str> {
    static KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"message\":\""));
    let at = KEY.find(body.as_bytes())? + "\"message\":\"".len();
    let rest = &body[at..];
    Some(&rest[..memchr::memchr2(b'"', b'\\', rest.as_bytes())?])
}

/// What a line is to the broker parser.
#[derive(Debug, PartialEq)]
pub enum Lager {
    /// Not the broker's: other parsers may read it.
    NotBroker,
    /// The broker's, about no instance (catalog requests, state dumps): nothing else reads it either.
    Ignored,
    /// Boxed: most lines this parser sees are the other two.
    Event(Box<Event<'static>>),
}

/// Reads a broker lager line. The broker logs far more lines about no instance (every catalog request)
/// than instance events, so the message name is checked before the JSON is decoded.
pub fn parse(body: &str, host: &str) -> Result<Lager, Reject> {
    if !body.starts_with('{') {
        return Ok(Lager::NotBroker);
    }
    match message_name(body) {
        Some(msg) => match SOURCES.iter().find_map(|s| msg.strip_prefix(s)) {
            None => return Ok(Lager::NotBroker),
            Some(name) if !NAMES.contains(&name.strip_prefix("cluster.").unwrap_or(name)) => return Ok(Lager::Ignored),
            Some(_) => {}
        },
        None if !SOURCES.iter().any(|s| body.contains(s)) => return Ok(Lager::NotBroker),
        None => {}
    }
    let lager: LagerLine = serde_json::from_str(body).map_err(|_| Reject::Json)?;
    let Some(name) = SOURCES.iter().find_map(|s| lager.message.strip_prefix(s)) else {
        return Ok(Lager::Ignored);
    };
    let name = name.strip_prefix("cluster.").unwrap_or(name);
    let empty = Map::new();
    let data = lager.data.as_ref().and_then(Value::as_object).unwrap_or(&empty);
    let s = |keys: &[&str]| find_str(data, keys);

    let kind = match name {
        "provision.start" | "provision.done" | "provision.running.success" => EventKind::Provision {
            phase: if name == "provision.start" { Phase::Start } else { Phase::Done },
            org_guid: s(&["organization_guid", "organization-guid", "organizationGUID", "orgID", "org_guid"]),
            space_guid: s(&["space_guid", "space-guid", "spaceGUID", "spaceID"]),
            plan_id: s(&["plan_id", "plan-id", "planID"]),
            name: s(&["name", "instance-name", "service_instance_name"]),
        },
        "deprovision.start" => EventKind::Deprovision { phase: Phase::Start },
        "deprovision.done" => EventKind::Deprovision { phase: Phase::Done },
        "etcd-delete.done" => EventKind::EtcdDeleted,
        "update.start" => EventKind::Update { phase: Phase::Start },
        "update.done" => EventKind::Update { phase: Phase::Done },
        "recreate.start" => EventKind::Recreate { phase: Phase::Start },
        "recreate.done" => EventKind::Recreate { phase: Phase::Done },
        "bind.start" | "bind.done" => {
            EventKind::Bind { phase: if name == "bind.start" { Phase::Start } else { Phase::Done }, app_guid: s(&["app_guid", "app-guid", "appGUID", "appID"]) }
        }
        "unbind.start" => EventKind::Unbind { phase: Phase::Start },
        "unbind.done" => EventKind::Unbind { phase: Phase::Done },
        "add-node.perform" => EventKind::AddNode { node_uuid: s(&["node-uuid", "node_uuid", "nodeUUID"]), backend: s(&["backend", "backend-id", "backendID"]) },
        "add-node.perform.success" => EventKind::AddNodeSuccess { member: s(&["member", "node-uuid"]) },
        "remove-node.perform" => {
            EventKind::RemoveNode { node_uuid: s(&["node-uuid", "node_uuid", "nodeUUID"]), backend: s(&["backend", "backend-id", "backendID"]) }
        }
        "assign-port-to-cluster" => EventKind::AssignPort { port: find(data, &["port"]).and_then(Value::as_u64) },
        "remove-cluster-assignment" => EventKind::RemoveClusterAssignment,
        "callbacks.copy-database-backup.start" => {
            let from_uri = s(&["from-uri", "from_uri", "fromURI"]).ok_or(Reject::Broker)?;
            let to_uri = s(&["to-uri", "to_uri", "toURI"]).ok_or(Reject::Broker)?;
            let from_instance = last_component(&from_uri).ok_or(Reject::Broker)?;
            let to_instance = last_component(&to_uri).ok_or(Reject::Broker)?;
            return Ok(Lager::Event(Box::new(Event {
                time: lager_time(lager.timestamp.as_ref()),
                host: host.to_string().into(),
                node_uuid: None,
                short_id: None,
                instance: Some(to_instance.into()),
                backup_prefix: None,
                kind: EventKind::CopyBackup { from_instance, from_uri, to_uri },
                weak_year: false,
            })));
        }
        // Everything else, including state.save-cluster (which carries credentials), is not kept.
        _ => return Ok(Lager::Ignored),
    };
    let instance = s(&["instance-id", "instanceID", "instance_id", "clusterID", "cluster-id", "cluster_id"])
        .filter(|i| is_instance_id(i))
        .map(|i| i.to_ascii_lowercase())
        .ok_or(Reject::Broker)?;
    Ok(Lager::Event(Box::new(Event {
        time: lager_time(lager.timestamp.as_ref()),
        host: host.to_string().into(),
        node_uuid: None,
        short_id: None,
        instance: Some(instance.into()),
        backup_prefix: None,
        kind,
        weak_year: false,
    })))
}

/// Looks a key up at the top of `data` and one level down (`details`, `request`, ...).
fn find<'a>(data: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| data.get(*k)).or_else(|| data.values().filter_map(Value::as_object).find_map(|inner| keys.iter().find_map(|k| inner.get(*k))))
}

fn find_str(data: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    find(data, keys).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)
}

fn last_component(uri: &str) -> Option<String> {
    let id = uri.trim_end_matches('/').rsplit('/').next()?;
    is_instance_id(id).then(|| id.to_ascii_lowercase())
}

/// Lager writes unix seconds with nanoseconds as a string; newer lager writes RFC 3339.
fn lager_time(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::String(s) => unix_secs_str(s).or_else(|| crate::timeutil::parse_rfc3339(s)),
        Value::Number(n) => n.as_f64().filter(|f| f.is_finite() && *f > 0.0 && *f < 1e11).map(|f| (f * 1000.0) as i64),
        _ => None,
    }
}

fn unix_secs_str(s: &str) -> Option<i64> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty() || secs.len() > 11 || !secs.bytes().all(|c| c.is_ascii_digit()) || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut ms = 0i64;
    for (i, c) in frac.bytes().take(3).enumerate() {
        ms += (c - b'0') as i64 * [100, 10, 1][i];
    }
    Some(secs * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_are_read_without_decoding_and_match_the_parser() {
        let line = |m: &str| {
            format!(
                r#"{{"timestamp":"1458195017.896692991","source":"dingo-postgresql-broker","message":"{m}","log_level":1,"data":{{"instance-id":"6e101b27-ee1b-4f4d-a032-4401a3709ec3","node-uuid":"c8ce128e-7b4c-4fe7-a533-e9379356f906","from-uri":"s3://b/backups/a1b2c3d4","to-uri":"s3://b/backups/6e101b27-ee1b-4f4d-a032-4401a3709ec3"}}}}"#
            )
        };
        assert!(matches!(parse(&line("dingo-postgresql-broker.catalog"), "h"), Ok(Lager::Ignored)));
        assert!(matches!(parse(&line("patroni-broker.cluster.remove-node.perform"), "h"), Ok(Lager::Event(_))));
        assert!(matches!(parse(r#"{"message":"Started GET /v2/apps","source":"cc.api"}"#, "h"), Ok(Lager::NotBroker)));
        assert_eq!(message_name(r#"{"message" : "x"}"#), None);
        // Every listed name parses into an event, so the shortcut never drops one the parser keeps.
        for n in NAMES {
            assert!(matches!(parse(&line(&format!("dingo-postgresql-broker.{n}")), "h"), Ok(Lager::Event(_))), "{n}");
        }
    }

    #[test]
    fn remove_node_era1() {
        let l = r#"{"timestamp":"1458195017.896692991","source":"patroni-broker","message":"patroni-broker.cluster.remove-node.perform","log_level":1,"data":{"backend":"10.58.111.150","instance-id":"6e101b27-ee1b-4f4d-a032-4401a3709ec3","node-uuid":"c8ce128e-7b4c-4fe7-a533-e9379356f906","session":"76"}}"#;
        let Ok(Lager::Event(ev)) = parse(l, "router") else { panic!("not an event") };
        assert_eq!(ev.instance.as_deref(), Some("6e101b27-ee1b-4f4d-a032-4401a3709ec3"));
        assert_eq!(ev.time, Some(1_458_195_017_896));
        assert_eq!(ev.kind, EventKind::RemoveNode { node_uuid: Some("c8ce128e-7b4c-4fe7-a533-e9379356f906".into()), backend: Some("10.58.111.150".into()) });
    }

    #[test]
    fn save_cluster_is_never_kept() {
        let l = r#"{"timestamp":"1","source":"dingo-postgresql-broker","message":"dingo-postgresql-broker.state.save-cluster","log_level":1,"data":{"instance-id":"abcd","password":"s3cret"}}"#;
        assert_eq!(parse(l, "h").unwrap(), Lager::Ignored);
    }

    #[test]
    fn lifecycle_without_instance_is_rejected() {
        let l = r#"{"timestamp":"1","source":"dingo-postgresql-broker","message":"dingo-postgresql-broker.deprovision.start","log_level":1,"data":{}}"#;
        assert_eq!(parse(l, "h"), Err(Reject::Broker));
        assert_eq!(parse(r#"{"message":"dingo-postgresql-broker.x"#, "h"), Err(Reject::Json));
    }
}
