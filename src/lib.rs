//! safeguard: watch a Dingo PostgreSQL platform's syslog, index every instance's backups, and recover
//! deleted instances. See ARCHITECTURE.md for the map.
//!
//! Pipeline: [`sources`] -> [`parse`] -> [`pipeline`] (attribute + [`state::apply`]) -> [`store`] -> [`alerts`].
pub mod alerts;
pub mod config;
pub mod doctor;
pub mod etcd;
pub mod gen;
pub mod http;
pub mod ingest;
pub mod parse;
pub mod pipeline;
pub mod platform;
pub mod query;
pub mod recover;
pub mod report;
pub mod s3;
pub mod sources;
pub mod state;
pub mod store;
pub mod timeutil;
pub mod verify;
pub mod watch;
