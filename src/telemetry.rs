//! Telemetry: logging set-up and the live counters of one sidecar run.
//!
//! [`Stats`] is written by the pipeline and read by anyone holding it: the run summary, tests
//! that wait for a condition instead of sleeping, and later exporters. Counters are atomics;
//! the per-partition maps sit behind a mutex that is taken only on commits and rebalances.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::message::TopicPartition;

/// Installs the global tracing subscriber: text or JSON lines on stderr, filtered by
/// `RUST_LOG` (default `info`). Does nothing when a subscriber is already installed.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only help a person at a terminal; log collectors would store them verbatim.
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Live counters of one run.
#[derive(Debug, Default)]
pub struct Stats {
    fetched: AtomicU64,
    succeeded: AtomicU64,
    non_pausing: AtomicU64,
    pause_eligible: AtomicU64,
    gate_closures: AtomicU64,
    gate_open: AtomicBool,
    commit_failures: AtomicU64,
    commits_unhealthy: AtomicBool,
    rebalances: AtomicU64,
    consumer_errors: AtomicU64,
    poll_interval_exceeded: AtomicU64,
    offset_resets: AtomicU64,
    fatal_error: Mutex<Option<String>>,
    partitions: Mutex<PartitionMaps>,
    changed: Notify,
}

#[derive(Debug, Default, Clone)]
struct PartitionMaps {
    assigned: BTreeSet<TopicPartition>,
    committed: BTreeMap<TopicPartition, i64>,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Messages fetched from Kafka and accepted by the pipeline.
    pub fetched: u64,
    /// Handler calls that succeeded.
    pub succeeded: u64,
    /// Handler calls that failed with a non-pausing error; their offsets were made committable.
    pub non_pausing: u64,
    /// Handler calls that failed with a pause-eligible error and were scheduled for a retry.
    pub pause_eligible: u64,
    /// Times the gate closed.
    pub gate_closures: u64,
    pub gate_open: bool,
    /// Offset commits that Kafka rejected or that timed out.
    pub commit_failures: u64,
    /// False while commits have been failing for longer than `SCC_COMMIT_UNHEALTHY_AFTER_MS`.
    pub commits_healthy: bool,
    /// Assignments and revocations seen.
    pub rebalances: u64,
    /// Errors the consumer reported while polling.
    pub consumer_errors: u64,
    /// Times librdkafka reported that `max.poll.interval.ms` was exceeded.
    pub poll_interval_exceeded: u64,
    /// Offset resets librdkafka performed because a position was out of range or expired.
    pub offset_resets: u64,
    /// The fatal consumer error that stopped the run, if any.
    pub fatal_error: Option<String>,
    /// Partitions currently assigned.
    pub assigned: BTreeSet<TopicPartition>,
    /// Last committed offset (the next offset to read) per partition, including partitions
    /// that were assigned earlier in the run.
    pub committed: BTreeMap<TopicPartition, i64>,
}

impl StatsSnapshot {
    /// Messages whose handling finished: succeeded or non-pausing.
    pub fn handled(&self) -> u64 {
        self.succeeded + self.non_pausing
    }

    /// Committed offset of one partition.
    pub fn committed_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.committed.get(&TopicPartition::new(topic, partition)).copied()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats { gate_open: AtomicBool::new(true), ..Stats::default() }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let maps = self.partitions.lock().expect("stats lock poisoned").clone();
        StatsSnapshot {
            fetched: self.fetched.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            non_pausing: self.non_pausing.load(Ordering::Relaxed),
            pause_eligible: self.pause_eligible.load(Ordering::Relaxed),
            gate_closures: self.gate_closures.load(Ordering::Relaxed),
            gate_open: self.gate_open.load(Ordering::Relaxed),
            commit_failures: self.commit_failures.load(Ordering::Relaxed),
            commits_healthy: !self.commits_unhealthy.load(Ordering::Relaxed),
            rebalances: self.rebalances.load(Ordering::Relaxed),
            consumer_errors: self.consumer_errors.load(Ordering::Relaxed),
            poll_interval_exceeded: self.poll_interval_exceeded.load(Ordering::Relaxed),
            offset_resets: self.offset_resets.load(Ordering::Relaxed),
            fatal_error: self.fatal_error.lock().expect("stats lock poisoned").clone(),
            assigned: maps.assigned,
            committed: maps.committed,
        }
    }

    /// Waits until `condition` holds for a snapshot, re-checking after every change, and
    /// returns that snapshot; on timeout returns the last snapshot as the error.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&StatsSnapshot) -> bool,
    ) -> Result<StatsSnapshot, StatsSnapshot> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let snapshot = self.snapshot();
            if condition(&snapshot) {
                return Ok(snapshot);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(self.snapshot());
            }
        }
    }

    pub(crate) fn record_fetched(&self) {
        self.fetched.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn record_success(&self) {
        self.succeeded.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn record_non_pausing(&self) {
        self.non_pausing.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn record_pause_eligible(&self) {
        self.pause_eligible.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn record_gate(&self, open: bool) {
        if !open {
            self.gate_closures.fetch_add(1, Ordering::Relaxed);
        }
        self.gate_open.store(open, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn record_commit_failure(&self) {
        self.commit_failures.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn record_commits_healthy(&self, healthy: bool) {
        self.commits_unhealthy.store(!healthy, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn record_consumer_error(&self, poll_interval_exceeded: bool, fatal: Option<String>) {
        self.consumer_errors.fetch_add(1, Ordering::Relaxed);
        if poll_interval_exceeded {
            self.poll_interval_exceeded.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(fatal) = fatal {
            *self.fatal_error.lock().expect("stats lock poisoned") = Some(fatal);
        }
        self.changed.notify_waiters();
    }

    pub(crate) fn record_offset_reset(&self) {
        self.offset_resets.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn record_committed(&self, offsets: &[(TopicPartition, i64)]) {
        {
            let mut maps = self.partitions.lock().expect("stats lock poisoned");
            for (partition, offset) in offsets {
                let entry = maps.committed.entry(partition.clone()).or_insert(*offset);
                *entry = (*entry).max(*offset);
            }
        }
        self.changed.notify_waiters();
    }

    pub(crate) fn record_assigned(&self, partitions: &[TopicPartition]) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        self.partitions.lock().expect("stats lock poisoned").assigned.extend(partitions.iter().cloned());
        self.changed.notify_waiters();
    }

    pub(crate) fn record_revoked(&self, partitions: &[TopicPartition]) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        {
            let mut maps = self.partitions.lock().expect("stats lock poisoned");
            for partition in partitions {
                maps.assigned.remove(partition);
            }
        }
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn wait_until_wakes_on_change() {
        let stats = Arc::new(Stats::new());
        let writer = stats.clone();
        tokio::spawn(async move {
            for _ in 0..3 {
                writer.record_success();
                tokio::task::yield_now().await;
            }
        });
        let snapshot = stats.wait_until(Duration::from_secs(5), |s| s.succeeded == 3).await.unwrap();
        assert_eq!(snapshot.handled(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_until_times_out_with_last_snapshot() {
        let stats = Stats::new();
        let error = stats.wait_until(Duration::from_secs(1), |s| s.succeeded == 1).await.unwrap_err();
        assert_eq!(error.succeeded, 0);
    }

    #[test]
    fn committed_offsets_never_decrease() {
        let stats = Stats::new();
        let partition = TopicPartition::new("t", 0);
        stats.record_committed(&[(partition.clone(), 10)]);
        stats.record_committed(&[(partition.clone(), 7)]);
        assert_eq!(stats.snapshot().committed_offset("t", 0), Some(10));
    }
}
