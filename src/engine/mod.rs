//! The engine, between the sources and the store: [`pipeline`] parses, attributes (parking what cannot be
//! attributed yet), applies the pure core's state changes and commits them with their effects; [`watch`]
//! runs it as the service (sources, ticks, query socket, shutdown) with [`http`] as its face (`/healthz`,
//! `/readyz`, `/metrics`) and [`digest`] raising the daily digest; [`ingest`] drives it over archived files.
pub mod digest;
pub mod heartbeat;
pub mod http;
pub mod ingest;
pub mod memory;
pub mod pipeline;
pub mod watch;
