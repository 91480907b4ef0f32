//! safeguard: watch a Dingo PostgreSQL platform's syslog, index every instance's backups, and recover
//! deleted instances. See ARCHITECTURE.md for the map.
//!
//! The folders read like the pipeline:
//! [`sources`] -> `parse` -> [`engine`] (attribute, park, `state::apply`, commit) -> [`store`] ->
//! [`alerts`] (what to say, rules in the core) -> [`sinks`] (email, webhook); the layers are ARCHITECTURE.md's
//! and `tests/it/layers.rs` checks them; beside it [`verify`] and [`recover`], which
//! reach the outside world through [`adapters`] (S3, etcd, the platform). The CLI
//! (`main.rs`) reads through [`store::query`] and prints with [`app::report`]; [`app::config`] composes
//! every component's config section and [`app::doctor`] checks each connection. [`settings`] is what the
//! sections share (durations, lists); [`redact`] is what every shown URL and error text goes through.
//!
//! `parse`, `state`, the alert rules, `timeutil`, `layout` and `gen` live in the `safeguard-core` crate, which has no I/O
//! dependency at all; they are re-exported here under their old paths, as are the modules that moved
//! into `engine/`, `adapters/`, `app/` and `store/`.

pub mod sources;
pub use safeguard_core::{gen, layout, parse, state, timeutil};
pub mod engine;
pub use engine::{http, ingest, memory, pipeline, watch};
pub mod adapters;
pub mod alerts;
pub mod recover;
pub mod sinks;
pub mod store;
pub mod verify;
pub use adapters::{etcd, platform, s3};
pub mod app;
pub mod redact;
pub mod settings;
pub use app::{config, doctor, report};
pub use store::query;

/// "a: b: c" from an error and its sources, for operator-facing messages: without the Debug dumps of
/// the SDKs' own context printers, without repeating a layer that already quotes its source (an
/// `io::Error` a config error names is not printed twice), and redacted ([`redact::text`]): the one way
/// an error chain becomes text, in the library and for `main`'s `error: ...`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(x) = cur {
        let s = x.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = x.source();
    }
    redact::text(&parts.join(": "))
}
