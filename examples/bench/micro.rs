//! Steady-state workloads for the per-message cost of the commit tracker and the lane scheduler.
//!
//! Each workload contains a fixed number of partitions and pending offsets (or queued messages),
//! and one `step` is one message's life in that structure, so the time per step is the cost per
//! message at that size. Comparing 1,000 with 100,000 pending shows how the cost grows: an
//! O(log n) step grows by about log2(100,000) / log2(1,000) ≈ 1.7 plus cache misses, an O(n)
//! step by about 100.
//!
//! Shared by the `bench` example (a quick timing for its table) and `benches/core.rs`
//! (criterion).
#![allow(dead_code)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_scc::TopicPartition;
use kafka_scc::commit::CommitTracker;
use kafka_scc::dispatch::{LaneId, LaneKey, Scheduler};

/// Commit trackers of `partitions` partitions holding `pending` unfinished offsets in total.
///
/// A step takes the next partition in turn, looks its tracker up in a hash map as the pipeline
/// does, tracks a newly fetched offset and finishes an older one. Offsets finish in swapped
/// pairs (1, 0, 3, 2, …), so half of the finishes land behind an unfinished offset and the
/// contiguous prefix advances by two every other step.
pub struct TrackerWorkload {
    trackers: HashMap<TopicPartition, CommitTracker>,
    partitions: Vec<TopicPartition>,
    /// Per partition: the next offset to track.
    next_offset: Vec<i64>,
    /// Per partition: finishes made so far; the next finish is of offset `finished ^ 1`.
    finished: Vec<i64>,
    cursor: usize,
}

impl TrackerWorkload {
    /// Builds the steady state; `pending` is spread evenly, at least one offset per partition.
    pub fn new(partitions: usize, pending: usize) -> TrackerWorkload {
        let window = (pending / partitions).max(1) as i64;
        let names: Vec<TopicPartition> = (0..partitions).map(|p| TopicPartition::new("bench", p as i32)).collect();
        let mut trackers = HashMap::with_capacity(partitions);
        for name in &names {
            let mut tracker = CommitTracker::new();
            for offset in 0..window {
                tracker.track(offset).expect("offsets increase");
            }
            trackers.insert(name.clone(), tracker);
        }
        TrackerWorkload {
            trackers,
            partitions: names,
            next_offset: vec![window; partitions],
            finished: vec![0; partitions],
            cursor: 0,
        }
    }

    pub fn step(&mut self) {
        let index = self.cursor;
        self.cursor = if self.cursor + 1 == self.partitions.len() { 0 } else { self.cursor + 1 };

        let tracker = self.trackers.get_mut(&self.partitions[index]).expect("every partition has a tracker");
        tracker.track(self.next_offset[index]).expect("offsets increase");
        self.next_offset[index] += 1;
        // `finished ^ 1` is at most `finished + 1`, which is below the next offset to track
        // because every partition starts with at least one pending offset.
        tracker.finish(self.finished[index] ^ 1).expect("the offset is pending");
        self.finished[index] += 1;
        black_box(tracker.commit_candidate());
    }

    /// Fetched offsets not yet covered by the committable offset, over all partitions.
    pub fn pending(&self) -> usize {
        self.trackers.values().map(CommitTracker::pending_len).sum()
    }
}

/// The lanes that the scheduler workload's messages fall into.
#[derive(Clone, Copy, Debug)]
pub enum LaneShape {
    /// `key` order with a distinct key per message: one lane per message, so the ready set
    /// contains every queued message (the largest ready set the scheduler can have).
    DistinctKeys,
    /// `partition` order: one lane per partition, each holding pending / partitions messages.
    PerPartition,
}

/// A lane scheduler holding `queued` messages over `partitions` partitions.
///
/// A step pops the earliest ready message, releases its lane as a finished handler call does,
/// and pushes a newly fetched message, so the queue length stays constant.
pub struct SchedulerWorkload {
    scheduler: Scheduler<u64>,
    partitions: Vec<TopicPartition>,
    /// Pre-built keys, reused in a ring twice the queue length: a key comes back only after
    /// its previous message has left the scheduler, so the lane shape stays as described.
    keys: Vec<Bytes>,
    shape: LaneShape,
    next: u64,
}

impl SchedulerWorkload {
    pub fn new(partitions: usize, queued: usize, shape: LaneShape) -> SchedulerWorkload {
        let names: Vec<TopicPartition> = (0..partitions).map(|p| TopicPartition::new("bench", p as i32)).collect();
        let keys = match shape {
            LaneShape::DistinctKeys => {
                (0..(2 * queued).max(2)).map(|n| Bytes::from(format!("key-{n:08}").into_bytes())).collect()
            }
            LaneShape::PerPartition => Vec::new(),
        };
        let mut workload = SchedulerWorkload { scheduler: Scheduler::new(), partitions: names, keys, shape, next: 0 };
        for _ in 0..queued {
            workload.push_next();
        }
        workload
    }

    fn push_next(&mut self) {
        let n = self.next;
        self.next += 1;
        let partition = self.partitions[(n % self.partitions.len() as u64) as usize].clone();
        let key = match self.shape {
            LaneShape::DistinctKeys => LaneKey::Key(self.keys[(n % self.keys.len() as u64) as usize].clone()),
            LaneShape::PerPartition => LaneKey::Partition,
        };
        self.scheduler.push(LaneId { partition, key }, n);
    }

    pub fn step(&mut self) {
        let (lane, item) = self.scheduler.pop().expect("the workload keeps messages queued");
        black_box(item);
        self.scheduler.release(&lane);
        self.push_next();
    }

    pub fn queued(&self) -> usize {
        self.scheduler.queued()
    }
}

/// Times `step` and returns the median time per call over five batches of about `budget` / 5,
/// after a warm-up that also sizes the batches.
pub fn time_per_step(mut step: impl FnMut(), budget: Duration) -> Duration {
    let warm_up = budget / 10;
    let started = Instant::now();
    let mut calls: u64 = 0;
    while started.elapsed() < warm_up {
        for _ in 0..64 {
            step();
        }
        calls += 64;
    }
    let per_call = started.elapsed().as_secs_f64() / calls as f64;
    let batch = ((budget.as_secs_f64() / 5.0 / per_call) as u64).max(64);

    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..batch {
                step();
            }
            started.elapsed().as_secs_f64() / batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    Duration::from_secs_f64(samples[2])
}
