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
//! | `d/<instance-id>`           | empty: a deletion episode not yet final |
//! | `p/<source-id>`             | JSON [`super::Position`]                |
//! | `o/<alert id>`              | JSON [`safeguard_core::alerts::Alert`] (outbox)  |
//! | `q/<seq, 16 hex>`           | JSON [`super::Parked`]: a line waiting for its instance |
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
