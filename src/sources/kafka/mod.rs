//! Everything that talks to Kafka, in one place: the source's config section and the librdkafka client
//! settings built from it ([`config`]), the consumer-group member that feeds the engine ([`consumer`]),
//! how a partition's offset becomes an engine position ([`position`]), and the probes that read
//! metadata, watermarks and committed offsets without joining the group ([`probe`]: `safeguard doctor`'s
//! check and the lag `/metrics` reports).

pub mod config;
pub mod consumer;
pub mod leader;
pub mod position;
pub mod probe;

pub use config::{KafkaClientSettings, KafkaConfig, KafkaSourceError, KafkaStart};
pub use consumer::{start, Finished};
pub use position::{decode_position, encode_position};
