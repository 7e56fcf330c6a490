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
    /// Fetched messages queued in the scheduler, not yet dispatched.
    pub(super) buffered: usize,
    /// Handler calls of this generation in flight.
    pub(super) in_flight: usize,
    /// The pause state last applied to the consumer.
    kafka_paused: bool,
    /// Set when the buffer reached its limit; cleared when it drains to half.
    buffer_full: bool,
    /// Set from the start of a revocation until the partition's state is dropped.
    pub(super) revoking: bool,
}

impl PartitionState {
    pub(super) fn new(generation: u64, kafka_paused: bool) -> PartitionState {
        PartitionState {
            generation,
            tracker: CommitTracker::new(),
            buffered: 0,
            in_flight: 0,
            kafka_paused,
            buffer_full: false,
            revoking: false,
        }
    }

    /// Decides the partition's Kafka pause state from the pipeline-wide fetch pause and the
    /// buffer fill, with hysteresis so a partition near its limit does not flap. Returns the
    /// new state when it differs from the one last applied, and records it as applied.
    pub(super) fn wants_pause(&mut self, fetch_paused: bool, buffer_limit: usize) -> Option<bool> {
        if self.buffered >= buffer_limit {
            self.buffer_full = true;
        } else if self.buffered <= buffer_limit / 2 {
            self.buffer_full = false;
        }
        let paused = fetch_paused || self.buffer_full;
        if paused == self.kafka_paused {
            return None;
        }
        self.kafka_paused = paused;
        Some(paused)
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
    fn buffer_pause_has_hysteresis() {
        let mut state = PartitionState::new(0, false);
        state.buffered = 10;
        assert_eq!(state.wants_pause(false, 10), Some(true));
        state.buffered = 6;
        assert_eq!(state.wants_pause(false, 10), None);
        state.buffered = 5;
        assert_eq!(state.wants_pause(false, 10), Some(false));
    }

    #[test]
    fn fetch_pause_overrides_buffer() {
        let mut state = PartitionState::new(0, false);
        assert_eq!(state.wants_pause(true, 10), Some(true));
        assert_eq!(state.wants_pause(true, 10), None);
        assert_eq!(state.wants_pause(false, 10), Some(false));
    }
}
