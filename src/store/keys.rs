//! The whole key layout of the sled store, in one place. One tree, prefixes separate the record kinds,
//! so one `apply_batch` commits a state change, its index entries, the alerts it raises and its source position
//! atomically.
//!
//! | key                         | value                                   |
//! |-----------------------------|-----------------------------------------|
//! | `m/schema`                  | schema version, decimal                 |
//! | `m/counters`                | JSON [`super::Counters`]                |
//! | `i/<instance-id>`           | JSON [`crate::state::InstanceRecord`]   |
//! | `n/<node-uuid>`             | instance id (container attribution)     |
//! | `d/<instance-id>`           | 8 bytes: the earliest deletion episode not yet final (ms, big endian) |
//! | `p/<source-id>`             | JSON [`super::Position`]                |
//! | `o/<alert id>`              | JSON [`safeguard_core::alerts::Alert`] (outbox)  |
//! | `q/<seq, 16 hex>`           | JSON [`super::Parked`]: a line waiting for its instance |
//! | `m/tally`, `m/alerts`       | JSON [`super::tally::Tally`], [`super::tally::AlertTally`]: counts kept |
//! | `k/<instance-id>`           | 9 bytes: the instance's standing as counted (flags, deadline) |
//! | `t/<ms, 16 hex>/<instance>` | empty: when its risk or absence can next change by time alone |
//! | `e/<instance-id>`           | empty: changed since the absence rules last looked        |
//! | `x/<instance-id>`           | empty: a deleted instance                                 |
//! | `w/<ms, 16 hex>/<alert id>` | raised-at ms: a pending alert, by next attempt            |
//! | `v/<ms, 16 hex>/<alert id>` | empty: a pending alert, by when it was raised             |
//! | `f/<ms, 16 hex>/<alert id>` | empty: a finished alert, by when (retention)              |
//! | `z/<alert id>`              | JSON [`super::tally::Tombstone`]: an alert past retention |
//!
//! Beside the sled files, `<store>/snapshot` holds a copy of all of these for queries run while no
//! watcher is (see [`super::snapshot`]).

pub const SCHEMA: &[u8] = b"m/schema";
pub const COUNTERS: &[u8] = b"m/counters";
pub const INSTANCE: &str = "i/";
pub const NODE: &str = "n/";
pub const PENDING: &str = "d/";
pub const POSITION: &str = "p/";
pub const ALERT: &str = "o/";
pub const PARKED: &str = "q/";

pub fn instance(id: &str) -> Vec<u8> {
    format!("{INSTANCE}{id}").into_bytes()
}
pub fn node(uuid: &str) -> Vec<u8> {
    format!("{NODE}{uuid}").into_bytes()
}
pub fn pending(id: &str) -> Vec<u8> {
    format!("{PENDING}{id}").into_bytes()
}
pub fn position(source: &str) -> Vec<u8> {
    format!("{POSITION}{source}").into_bytes()
}
pub fn alert(id: &str) -> Vec<u8> {
    format!("{ALERT}{id}").into_bytes()
}
pub fn parked(seq: u64) -> Vec<u8> {
    format!("{PARKED}{seq:016x}").into_bytes()
}

// Indexes kept in the commit that changes what they index (see `super::tally`), so that counts, due
// work and listings cost what changed, not what the store holds.

/// `m/tally`: JSON [`super::tally::Tally`], instance counts and the thresholds they were made with.
pub const TALLY: &[u8] = b"m/tally";
/// `m/alerts`: JSON [`super::tally::AlertTally`], alerts by rule and state.
pub const ALERT_TALLY: &[u8] = b"m/alerts";
/// `k/<instance-id>`: 9 bytes, the instance's standing as counted (flags, next deadline).
pub const STANDING: &str = "k/";
/// `t/<deadline ms, 16 hex>/<instance-id>`: empty; when the instance's risk or absence can next change by time alone.
pub const DEADLINE: &str = "t/";
/// `e/<instance-id>`: empty; changed since the absence rules last looked at it.
pub const UNEVALUATED: &str = "e/";
/// `x/<instance-id>`: empty; a deleted instance (`instances --deleted`).
pub const DELETED: &str = "x/";
/// `w/<next attempt ms, 16 hex>/<alert id>`: raised-at ms (8 bytes, big endian); a pending alert.
pub const DUE: &str = "w/";
/// `v/<raised ms, 16 hex>/<alert id>`: empty; a pending alert, by when it was raised (the oldest first).
pub const PENDING_BY_AGE: &str = "v/";
/// `f/<finished ms, 16 hex>/<alert id>`: empty; a delivered, failed or suppressed alert, by when.
pub const FINISHED: &str = "f/";
/// `z/<alert id>`: JSON [`super::tally::Tombstone`]; an alert past `alerts.retention`, kept as its id.
pub const TOMBSTONE: &str = "z/";

pub fn standing(id: &str) -> Vec<u8> {
    format!("{STANDING}{id}").into_bytes()
}
pub fn deadline(at: i64, id: &str) -> Vec<u8> {
    format!("{DEADLINE}{:016x}/{id}", at.max(0)).into_bytes()
}
/// The first deadline key after every deadline at or before `at`.
pub fn deadline_end(at: i64) -> Vec<u8> {
    format!("{DEADLINE}{:016x}0", at.max(0)).into_bytes()
}
pub fn unevaluated(id: &str) -> Vec<u8> {
    format!("{UNEVALUATED}{id}").into_bytes()
}
pub fn deleted(id: &str) -> Vec<u8> {
    format!("{DELETED}{id}").into_bytes()
}
pub fn due(at: i64, id: &str) -> Vec<u8> {
    format!("{DUE}{:016x}/{id}", at.max(0)).into_bytes()
}
pub fn due_end(at: i64) -> Vec<u8> {
    format!("{DUE}{:016x}0", at.max(0)).into_bytes()
}
pub fn pending_by_age(raised: i64, id: &str) -> Vec<u8> {
    format!("{PENDING_BY_AGE}{:016x}/{id}", raised.max(0)).into_bytes()
}
pub fn finished(at: i64, id: &str) -> Vec<u8> {
    format!("{FINISHED}{:016x}/{id}", at.max(0)).into_bytes()
}
pub fn finished_end(at: i64) -> Vec<u8> {
    format!("{FINISHED}{:016x}0", at.max(0)).into_bytes()
}
pub fn tombstone(id: &str) -> Vec<u8> {
    format!("{TOMBSTONE}{id}").into_bytes()
}
/// The time in an index key under `prefix` (`<prefix><16 hex>/...`).
pub fn time_in(prefix: &str, key: &[u8]) -> Option<i64> {
    let hex = key.get(prefix.len()..prefix.len() + 16)?;
    i64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// The id after a `<16 hex>/` time prefix in an index key under `prefix`.
pub fn id_after_time<'k>(prefix: &str, key: &'k [u8]) -> &'k [u8] {
    key.get(prefix.len() + 17..).unwrap_or(&[])
}
