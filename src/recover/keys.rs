//! The whole key layout of the recovery journal, a sled database of its own at `<store>/recoveries/`
//! (its own lock, so `recover` runs while `safeguard watch` owns the main store). Every process opens it
//! only for the moment of a read or a write, so several recoveries (of different instances) and
//! `safeguard recoveries` can run at the same time.
//!
//! | key                              | value                                                        |
//! |----------------------------------|--------------------------------------------------------------|
//! | `m/schema`                       | journal schema version, decimal                              |
//! | `r/<recovery-id>`                | JSON [`super::journal::Recovery`]: status, ids, every step's |
//! |                                  | status, attempts, start/finish times, summary and output     |
//! | `p/<recovery-id>`                | JSON [`super::plan::Plan`] as approved (resume runs exactly it)|
//! | `e/<recovery-id>/<seq u64 BE>`   | JSON [`super::journal::Event`]: append-only step start/result |
//! | `l/<resource>`                   | recovery id holding the lock on `<resource>`                 |
//!
//! Resources are `instance:<id>` (source and target instances share one namespace, so an instance can
//! be in one recovery at a time, as source or target) and `prefix:<s3 url>` (a `--to-prefix` target).

pub const SCHEMA: &[u8] = b"m/schema";
pub const SCHEMA_VERSION: &str = "1";
pub const RECOVERY: &str = "r/";
pub const PLAN: &str = "p/";
pub const EVENT: &str = "e/";
pub const LOCK: &str = "l/";

pub fn recovery(id: &str) -> Vec<u8> {
    format!("{RECOVERY}{id}").into_bytes()
}
pub fn plan(id: &str) -> Vec<u8> {
    format!("{PLAN}{id}").into_bytes()
}
pub fn event_prefix(id: &str) -> Vec<u8> {
    format!("{EVENT}{id}/").into_bytes()
}
pub fn event(id: &str, seq: u64) -> Vec<u8> {
    let mut k = event_prefix(id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}
pub fn lock(resource: &str) -> Vec<u8> {
    format!("{LOCK}{resource}").into_bytes()
}
pub fn instance_resource(id: &str) -> String {
    format!("instance:{}", id.to_ascii_lowercase())
}
pub fn prefix_resource(url: &crate::adapters::s3::S3Url) -> String {
    format!("prefix:{url}")
}
