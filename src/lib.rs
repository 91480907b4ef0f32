//! safeguard: watch a Dingo PostgreSQL platform's syslog, index every instance's backups, and recover
//! deleted instances. See ARCHITECTURE.md for the map.
//!
//! Pipeline: [`sources`] -> [`parse`] -> [`pipeline`] (attribute + [`state::apply`]) -> [`store`] -> [`alerts`].
//! `parse`, `state`, `timeutil` and `gen` live in the `safeguard-core` crate, which has no I/O dependency
//! at all; they are re-exported here under their old paths.
pub use safeguard_core::{gen, layout, parse, state, timeutil};
pub mod alerts;
pub mod config;
pub mod doctor;
pub mod etcd;
pub mod http;
pub mod ingest;
pub mod pipeline;
pub mod platform;
pub mod query;
pub mod recover;
pub mod report;
pub mod s3;
pub mod sources;
pub mod store;
pub mod verify;
pub mod watch;

/// "a: b: c" from an error and its sources, for operator-facing messages: without the Debug dumps of
/// the SDKs' own context printers, and without repeating a layer that already quotes its source.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(x) = cur {
        let s = x.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = x.source();
    }
    parts.join(": ")
}
