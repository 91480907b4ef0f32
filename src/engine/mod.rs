//! The engine, between the sources and the store: [`pipeline`] parses, attributes (parking what cannot be
//! attributed yet), applies the pure core's state changes and commits them with their effects; [`watch`]
//! runs it as the service (sources, ticks, query socket, shutdown); [`ingest`] drives it over archived files.
pub mod ingest;
pub mod pipeline;
pub mod watch;
