//! The integration tests as one binary: each file here used to be linked on its own (about twenty
//! binaries of a few hundred MB each, which ran a clean CI build out of disk). Run one area with
//! `cargo test --test it <module>::`, e.g. `cargo test --test it archives::`.

mod common;
mod harness;
mod recover_support;

mod alert_rules;
mod alerts;
mod archives;
mod backup;
mod deploy;
mod digest;
mod doctor;
mod e2e;
mod heartbeat;
mod hostile;
mod ingest;
mod kafka;
mod layers;
mod leader;
mod metrics;
mod monitoring;
mod order;
mod parse_shapes;
mod recover;
mod recover_platform;
mod redaction;
mod report;
mod robustness;
mod s3_verify;
mod scale;
mod watch;
