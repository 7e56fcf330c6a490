//! The pipeline's state for one owned partition, and a revocation waiting to complete.

use std::sync::mpsc::SyncSender;

use tokio::time::Instant;

use crate::commit::CommitTracker;
use crate::kafka::Offsets;
use crate::message::TopicPartition;

#[derive(Debug)]
pub(super) struct PartitionState {
    /// Distinguishes this ownership of the partition from earlier ones.
    pub(super) generation: u64,
    pub(super) tracker: CommitTracker,
    /// Handler calls of this generation in flight.
    pub(super) in_flight: usize,
    /// The pause state last applied to the consumer.
    kafka_paused: bool,
    /// Set from the start of a revocation until the partition's state is dropped.
    pub(super) revoking: bool,
}

impl PartitionState {
    pub(super) fn new(generation: u64, kafka_paused: bool) -> PartitionState {
        PartitionState { generation, tracker: CommitTracker::new(), in_flight: 0, kafka_paused, revoking: false }
    }

    /// Returns the partition's new Kafka pause state when it differs from the one last
    /// applied, and records it as applied.
    pub(super) fn wants_pause(&mut self, fetch_paused: bool) -> Option<bool> {
        if fetch_paused == self.kafka_paused {
            return None;
        }
        self.kafka_paused = fetch_paused;
        Some(fetch_paused)
    }
}

/// A revocation the poll thread is waiting on.
#[derive(Debug)]
pub(super) struct Revocation {
    pub(super) partitions: Vec<TopicPartition>,
    pub(super) reply: SyncSender<Offsets>,
    pub(super) deadline: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_changes_are_reported_once() {
        let mut state = PartitionState::new(0, false);
        assert_eq!(state.wants_pause(false), None);
        assert_eq!(state.wants_pause(true), Some(true));
        assert_eq!(state.wants_pause(true), None);
        assert_eq!(state.wants_pause(false), Some(false));
    }
}
