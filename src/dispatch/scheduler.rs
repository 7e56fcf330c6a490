//! The lane scheduler behind the three processing orders.
//!
//! Every queued message belongs to one lane of its partition. A lane runs at most one message
//! at a time, in queue order; different lanes run concurrently. The processing order only
//! chooses the lane:
//! - `partition`: one lane per partition;
//! - `key`: one lane per key per partition, plus one lane for the partition's null keys;
//! - `unordered`: one lane per message.
//!
//! Invariants: a lane is busy from [`Scheduler::pop`] until [`Scheduler::release`], and no
//! message of a busy lane is popped; within a lane, messages leave in the order they were
//! pushed. Across lanes, the ready message pushed first leaves first.
//!
//! Cost: `push`, `pop` and `release` are O(log n) in the number of ready lanes; removing a
//! partition is O(lanes), which is fine because it only happens on revocation.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;

use crate::config::ProcessingOrder;
use crate::message::TopicPartition;

/// The key that separates the lanes of one partition.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LaneKey {
    Partition,
    NullKey,
    Key(Bytes),
    Offset(i64),
}

impl LaneKey {
    /// Returns the lane of a message with `key` and `offset` under `order`.
    pub fn for_message(order: ProcessingOrder, key: Option<&Bytes>, offset: i64) -> LaneKey {
        match (order, key) {
            (ProcessingOrder::Partition, _) => LaneKey::Partition,
            (ProcessingOrder::Key, None) => LaneKey::NullKey,
            (ProcessingOrder::Key, Some(key)) => LaneKey::Key(key.clone()),
            (ProcessingOrder::Unordered, _) => LaneKey::Offset(offset),
        }
    }
}

/// One lane: a partition and the lane key within it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LaneId {
    pub partition: TopicPartition,
    pub key: LaneKey,
}

#[derive(Debug)]
struct Lane<T> {
    queue: VecDeque<(u64, T)>,
    busy: bool,
}

/// Queued messages by lane, and the ready lanes ordered by the arrival of their head message.
#[derive(Debug)]
pub struct Scheduler<T> {
    lanes: HashMap<LaneId, Lane<T>>,
    /// Lanes that are not busy and have a queued message, keyed by their head's sequence number.
    ready: BTreeMap<u64, LaneId>,
    next_seq: u64,
    queued: usize,
}

impl<T> Default for Scheduler<T> {
    fn default() -> Self {
        Scheduler { lanes: HashMap::new(), ready: BTreeMap::new(), next_seq: 0, queued: 0 }
    }
}

impl<T> Scheduler<T> {
    pub fn new() -> Self {
        Scheduler::default()
    }

    /// Queues an item at the tail of its lane.
    pub fn push(&mut self, lane_id: LaneId, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queued += 1;

        let lane = self.lanes.entry(lane_id.clone()).or_insert_with(|| Lane { queue: VecDeque::new(), busy: false });
        if !lane.busy && lane.queue.is_empty() {
            self.ready.insert(seq, lane_id);
        }
        lane.queue.push_back((seq, item));
    }

    /// Takes the earliest-queued item of any ready lane and marks its lane busy.
    pub fn pop(&mut self) -> Option<(LaneId, T)> {
        let (_, lane_id) = self.ready.pop_first()?;
        let lane = self.lanes.get_mut(&lane_id).expect("a ready lane exists");
        let (_, item) = lane.queue.pop_front().expect("a ready lane has a queued item");
        lane.busy = true;
        self.queued -= 1;
        Some((lane_id, item))
    }

    /// Ends the busy period of a lane, making its next item ready. Releasing a lane that is
    /// unknown (its partition was removed) does nothing.
    pub fn release(&mut self, lane_id: &LaneId) {
        let Some(lane) = self.lanes.get_mut(lane_id) else {
            return;
        };
        lane.busy = false;
        match lane.queue.front() {
            Some((seq, _)) => {
                self.ready.insert(*seq, lane_id.clone());
            }
            None => {
                self.lanes.remove(lane_id);
            }
        }
    }

    /// Drops every lane of a partition, busy or not, and returns how many queued items were
    /// dropped.
    pub fn remove_partition(&mut self, partition: &TopicPartition) -> usize {
        let mut dropped = 0;
        self.lanes.retain(|lane_id, lane| {
            if &lane_id.partition == partition {
                dropped += lane.queue.len();
                false
            } else {
                true
            }
        });
        self.ready.retain(|_, lane_id| &lane_id.partition != partition);
        self.queued -= dropped;
        dropped
    }

    /// Items queued and not yet popped.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Returns true when a lane has queued items or is busy (used by tests and assertions).
    pub fn has_lane(&self, lane_id: &LaneId) -> bool {
        self.lanes.contains_key(lane_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn partition(n: i32) -> TopicPartition {
        TopicPartition::new("t", n)
    }

    fn lane(n: i32, key: &'static [u8]) -> LaneId {
        LaneId { partition: partition(n), key: LaneKey::Key(Bytes::from_static(key)) }
    }

    #[test]
    fn same_lane_runs_one_at_a_time_in_order() {
        let mut scheduler = Scheduler::new();
        scheduler.push(lane(0, b"a"), 1);
        scheduler.push(lane(0, b"a"), 2);
        scheduler.push(lane(0, b"b"), 3);

        assert_eq!(scheduler.pop(), Some((lane(0, b"a"), 1)));
        assert_eq!(scheduler.pop(), Some((lane(0, b"b"), 3)));
        assert_eq!(scheduler.pop(), None);

        scheduler.release(&lane(0, b"a"));
        assert_eq!(scheduler.pop(), Some((lane(0, b"a"), 2)));
    }

    #[test]
    fn ready_lanes_leave_in_arrival_order() {
        let mut scheduler = Scheduler::new();
        scheduler.push(lane(1, b"x"), 10);
        scheduler.push(lane(0, b"y"), 11);
        scheduler.push(lane(2, b"z"), 12);
        let order: Vec<i32> = std::iter::from_fn(|| scheduler.pop().map(|(_, item)| item)).collect();
        assert_eq!(order, vec![10, 11, 12]);
    }

    #[test]
    fn remove_partition_drops_its_lanes() {
        let mut scheduler = Scheduler::new();
        scheduler.push(lane(0, b"a"), 1);
        scheduler.push(lane(0, b"a"), 2);
        scheduler.push(lane(1, b"a"), 3);
        let (busy, _) = scheduler.pop().unwrap();

        assert_eq!(scheduler.remove_partition(&partition(0)), 1);
        assert_eq!(scheduler.queued(), 1);
        scheduler.release(&busy);
        assert_eq!(scheduler.pop(), Some((lane(1, b"a"), 3)));
        assert_eq!(scheduler.pop(), None);
    }

    #[test]
    fn lane_key_follows_processing_order() {
        let key = Bytes::from_static(b"k");
        assert_eq!(LaneKey::for_message(ProcessingOrder::Partition, Some(&key), 4), LaneKey::Partition);
        assert_eq!(LaneKey::for_message(ProcessingOrder::Key, None, 4), LaneKey::NullKey);
        assert_eq!(LaneKey::for_message(ProcessingOrder::Key, Some(&key), 4), LaneKey::Key(key.clone()));
        assert_eq!(LaneKey::for_message(ProcessingOrder::Unordered, Some(&key), 4), LaneKey::Offset(4));
    }

    proptest! {
        /// For any arrival sequence and any completion order, no two items of one lane are
        /// out at once, and each lane's items leave in arrival order.
        #[test]
        fn lanes_never_overlap(
            keys in prop::collection::vec(0u8..5, 1..80),
            completions in prop::collection::vec(any::<prop::sample::Index>(), 1..200),
        ) {
            let mut scheduler = Scheduler::new();
            for (seq, key) in keys.iter().enumerate() {
                let lane_id = LaneId { partition: partition(0), key: LaneKey::Key(Bytes::from(vec![*key])) };
                scheduler.push(lane_id, (seq, *key));
            }

            let mut running: Vec<(LaneId, (usize, u8))> = Vec::new();
            let mut last_seq_per_key: HashMap<u8, usize> = HashMap::new();
            let mut completions = completions.into_iter();
            let mut finished = 0;
            while finished < keys.len() {
                while let Some((lane_id, item)) = scheduler.pop() {
                    let busy: HashSet<u8> = running.iter().map(|(_, (_, key))| *key).collect();
                    prop_assert!(!busy.contains(&item.1), "key {} ran twice at once", item.1);
                    if let Some(previous) = last_seq_per_key.insert(item.1, item.0) {
                        prop_assert!(previous < item.0);
                    }
                    running.push((lane_id, item));
                }
                let index = completions.next().map(|i| i.index(running.len())).unwrap_or(0);
                let (lane_id, _) = running.remove(index);
                scheduler.release(&lane_id);
                finished += 1;
            }
            prop_assert_eq!(scheduler.queued(), 0);
        }
    }
}
