//! One module per external system the service talks to, each behind its own types: [`s3`] (the object
//! store holding the backups), [`etcd`] (Patroni's keys), [`platform`] (Cloud Controller, the Docker
//! engine, operator command templates). They know nothing of the engine, the store or the sources.
pub mod etcd;
pub mod platform;
pub mod s3;
