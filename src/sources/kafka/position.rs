//! A Kafka partition's place in the engine: its [`SourceId`] and the engine position of an offset.
//!
//! A partition whose log restarts below the applied position (topic deleted and recreated, a broker
//! that lost its data) starts a new epoch: the engine position is `epoch << 48 | next offset`, so the
//! new log's low offsets are not mistaken for replays.

use crate::sources::SourceId;

const EPOCH_SHIFT: u32 = 48;
const OFFSET_MASK: u64 = (1 << EPOCH_SHIFT) - 1;

/// The engine position of Kafka offset `next` (the offset after a message) in `epoch`.
pub fn encode_position(epoch: u64, next: i64) -> u64 {
    (epoch << EPOCH_SHIFT) | (next.max(0) as u64 & OFFSET_MASK)
}

/// (epoch, next offset) of an engine position.
pub fn decode_position(pos: u64) -> (u64, i64) {
    (pos >> EPOCH_SHIFT, (pos & OFFSET_MASK) as i64)
}

/// Messages of a partition not yet durably applied: its high watermark minus the next offset the
/// store holds (`applied`, an engine position), counting from the low watermark when the store has none
/// or retention deleted what it had not read.
pub fn lag(low: i64, high: i64, applied: Option<u64>) -> i64 {
    let from = applied.map(|p| decode_position(p).1).unwrap_or(low).max(low);
    (high - from).max(0)
}

/// The engine positions of Kafka partitions among `positions`, by (topic, partition).
pub fn partition_positions<'a>(positions: impl IntoIterator<Item = (&'a SourceId, u64)>) -> std::collections::BTreeMap<(String, i32), u64> {
    positions
        .into_iter()
        .filter_map(|(id, p)| match id {
            SourceId::Kafka { topic, partition } => Some(((topic.clone(), *partition), p)),
            SourceId::Syslog | SourceId::Lines { .. } => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_epochs_above_offsets() {
        let a = encode_position(0, 1_000_000);
        let b = encode_position(1, 1);
        assert!(b > a);
        assert_eq!(decode_position(a), (0, 1_000_000));
        assert_eq!(decode_position(b), (1, 1));
        assert_eq!(encode_position(0, 5), 5, "epoch 0 positions are plain offsets");
    }

    #[test]
    fn lag_counts_from_the_store_or_the_log_start() {
        assert_eq!(lag(0, 10, Some(encode_position(0, 4))), 6);
        assert_eq!(lag(5, 10, None), 5);
        assert_eq!(lag(8, 10, Some(encode_position(0, 4))), 2, "retention deleted what was not read");
        assert_eq!(lag(0, 10, Some(encode_position(0, 12))), 0);
    }
}
