//! What runs in and around a service container: the syslog program (`docker/cf-<node>`, `cf-<node>`),
//! the script prefixes (`patroni> `, `6e101b-backup> `), and the container's own messages.

use super::{is_instance_id, EventKind, RestoreMsg, Script};

/// The node uuid of a container program: `docker/cf-<uuid>`, `cf-<uuid>`, `cf-<uuid>[pid]`.
pub fn node_from_program(program: &str) -> Option<&str> {
    let p = memchr::memrchr(b'/', program.as_bytes()).map_or(program, |i| &program[i + 1..]);
    let p = p.strip_prefix("cf-")?;
    let p = memchr::memchr(b'[', p.as_bytes()).map_or(p, |i| &p[..i]);
    is_instance_id(p).then_some(p)
}

fn script_named(name: &str) -> Option<Script> {
    Some(match name {
        "patroni" => Script::Patroni,
        "backup" => Script::Backup,
        "startup" => Script::Startup,
        "restore_leader_if_missing" => Script::RestoreLeaderIfMissing,
        "reinitialize" => Script::Reinitialize,
        "shutdown" => Script::Shutdown,
        _ => return None,
    })
}

/// Splits `patroni> rest` or `6e101b-backup> rest` into (script, short instance id, rest).
pub fn strip_script_prefix(msg: &str) -> (Option<Script>, Option<&str>, &str) {
    let head = &msg.as_bytes()[..msg.len().min(40)];
    let Some(gt) = memchr::memchr(b'>', head) else {
        return (None, None, msg);
    };
    let token = &msg[..gt];
    let rest = &msg[gt + 1..];
    if let Some(s) = script_named(token) {
        return (Some(s), None, rest);
    }
    if let Some((short, name)) = token.split_once('-') {
        if short.len() == 6 && short.bytes().all(|c| c.is_ascii_hexdigit()) {
            if let Some(s) = script_named(name) {
                return (Some(s), Some(short), rest);
            }
        }
    }
    (None, None, msg)
}

pub struct ContainerEvent {
    pub kind: EventKind,
    /// The node a message names explicitly (the cf-containers-broker's create/destroy lines).
    pub node_uuid: Option<String>,
}

fn node_in_backticks(body: &str) -> Option<String> {
    let start = body.find("`cf-")? + 4;
    let rest = &body[start..];
    let end = rest.find(['\'', '`'])?;
    let id = &rest[..end];
    is_instance_id(id).then(|| id.to_string())
}

const RESTORE: [(&str, RestoreMsg); 6] = [
    ("leader exists, no additional preparation required", RestoreMsg::LeaderExists),
    ("local database exists; no additional preparation required", RestoreMsg::LocalDatabaseExists),
    ("new cluster, no existing backup to restore", RestoreMsg::NewClusterNoBackup),
    ("etcd missing /initialize system ID", RestoreMsg::FetchingSysid),
    ("with original 'Database system identifier'", RestoreMsg::ReinitializingSystemId),
    ("preparing patroni to restore this container from wal-e backups", RestoreMsg::PreparingRestore),
];

pub fn parse_message(body: &str, script: Option<Script>) -> Option<ContainerEvent> {
    let ev = |kind| Some(ContainerEvent { kind, node_uuid: None });
    if let Some(r) = body.strip_prefix("Creating Docker container ") {
        return Some(ContainerEvent { kind: EventKind::ContainerCreating, node_uuid: Some(node_in_backticks(r)?) });
    }
    if let Some(r) = body.strip_prefix("Destroying Docker container ") {
        return Some(ContainerEvent { kind: EventKind::ContainerDestroying, node_uuid: Some(node_in_backticks(r)?) });
    }
    if let Some(r) = body.strip_prefix("looking up public host:port from etcd -> ") {
        // .../postgresql-patroni/<host>:cf-<uuid>:5432 (0)
        let key = r.split_whitespace().next()?;
        let last = key.rsplit('/').next()?;
        let mut parts = last.split(':');
        let host = parts.next()?.to_string();
        let node = parts.next()?.strip_prefix("cf-")?;
        if !is_instance_id(node) {
            return None;
        }
        return Some(ContainerEvent { kind: EventKind::ContainerRegistered { public_host: host }, node_uuid: Some(node.to_string()) });
    }
    if let Some(r) = body.strip_prefix("public address ") {
        return ev(EventKind::PublicAddress { address: r.split_whitespace().next()?.to_string() });
    }
    if let Some(r) = body.strip_prefix("Enabling wal-e archives to S3 bucket ") {
        let b = r.trim_matches(|c: char| c == '\'' || c == '"' || c == '`' || c.is_whitespace() || c == '.');
        return ev(EventKind::WalEEnabled { bucket: b.to_string() });
    }
    // Only the restore script prints these; skipping the search for every other container line is most
    // of the cost of a busy container's chatter.
    if !matches!(script, None | Some(Script::RestoreLeaderIfMissing)) {
        return None;
    }
    RESTORE.iter().find(|(needle, _)| body.contains(needle)).and_then(|(_, msg)| ev(EventKind::Restore { msg: *msg }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_and_prefixes() {
        assert_eq!(node_from_program("docker/cf-c8ce128e-7b4c-4fe7-a533-e9379356f906"), Some("c8ce128e-7b4c-4fe7-a533-e9379356f906"));
        assert_eq!(node_from_program("cf-c8ce128e[12]"), Some("c8ce128e"));
        assert_eq!(node_from_program("broker.stdout.log"), None);
        assert_eq!(strip_script_prefix("6e101b-backup> x"), (Some(Script::Backup), Some("6e101b"), " x"));
        assert_eq!(strip_script_prefix("restore_leader_if_missing> y"), (Some(Script::RestoreLeaderIfMissing), None, " y"));
        assert_eq!(strip_script_prefix("zzzzzz-backup> x"), (None, None, "zzzzzz-backup> x"));
        assert_eq!(strip_script_prefix("a -> b"), (None, None, "a -> b"));
    }

    #[test]
    fn container_lines() {
        let e = parse_message("Creating Docker container `cf-52167ceb-bd3d-4bff-8699-a239d21c5379'...", None).unwrap();
        assert_eq!(e.node_uuid.as_deref(), Some("52167ceb-bd3d-4bff-8699-a239d21c5379"));
        let e = parse_message(
            "looking up public host:port from etcd -> 10.58.111.149:4001/v2/keys/postgresql-patroni/10.58.111.150:cf-c8ce128e-7b4c-4fe7-a533-e9379356f906:5432 (0)",
            None,
        )
        .unwrap();
        assert_eq!(e.kind, EventKind::ContainerRegistered { public_host: "10.58.111.150".into() });
        assert!(parse_message("Creating Docker container `cf-", None).is_none());
    }
}
