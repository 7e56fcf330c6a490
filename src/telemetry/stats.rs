//! The live counters of one sidecar run.
//!
//! [`Stats`] is written by the pipeline and read by anyone holding it: the run summary, the
//! health endpoints, and tests that wait for a condition instead of sleeping. Counters are
//! atomics; the per-partition maps sit behind a mutex that is taken only on commits and
//! rebalances.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::metrics::{Metrics, Outcome};
use crate::handler::HandlerError;

use crate::message::TopicPartition;

/// Live counters of one run.
#[derive(Debug)]
pub struct Stats {
    fetched: AtomicU64,
    succeeded: AtomicU64,
    non_pausing: AtomicU64,
    dead_lettered: AtomicU64,
    dead_letter_failures: AtomicU64,
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
    metrics: Metrics,
    started: Instant,
    /// Milliseconds from `started` to the pipeline loop's last turn.
    pipeline_alive_ms: AtomicU64,
    /// Set once the consumer has received its first assignment, even an empty one.
    joined: AtomicBool,
    /// Set once the handler passed its start-up health check, or has none to check.
    handler_ready: AtomicBool,
    http_addr: std::sync::OnceLock<std::net::SocketAddr>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            fetched: AtomicU64::default(),
            succeeded: AtomicU64::default(),
            non_pausing: AtomicU64::default(),
            dead_lettered: AtomicU64::default(),
            dead_letter_failures: AtomicU64::default(),
            pause_eligible: AtomicU64::default(),
            gate_closures: AtomicU64::default(),
            gate_open: AtomicBool::new(true),
            commit_failures: AtomicU64::default(),
            commits_unhealthy: AtomicBool::default(),
            rebalances: AtomicU64::default(),
            consumer_errors: AtomicU64::default(),
            poll_interval_exceeded: AtomicU64::default(),
            offset_resets: AtomicU64::default(),
            fatal_error: Mutex::default(),
            partitions: Mutex::default(),
            changed: Notify::new(),
            metrics: Metrics::new(),
            started: Instant::now(),
            pipeline_alive_ms: AtomicU64::default(),
            joined: AtomicBool::default(),
            handler_ready: AtomicBool::new(true),
            http_addr: std::sync::OnceLock::new(),
        }
    }
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
    /// Non-pausing failures whose message the broker acknowledged on the dead-letter topic; a
    /// part of `non_pausing`.
    pub dead_lettered: u64,
    /// Dead-letter produces that failed or timed out; each was retried.
    pub dead_letter_failures: u64,
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
        Stats::default()
    }

    /// Returns the Prometheus metrics that these counters feed.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Returns how long ago the pipeline loop last turned; zero before it started.
    pub fn pipeline_idle_for(&self) -> std::time::Duration {
        let alive_ms = self.pipeline_alive_ms.load(Ordering::Relaxed);
        if alive_ms == 0 {
            return std::time::Duration::ZERO;
        }
        let alive = std::time::Duration::from_millis(alive_ms);
        self.started.elapsed().saturating_sub(alive)
    }

    /// Returns why this sidecar is not ready, or `None` when it is: it must have joined its
    /// group, its handler must be reachable (start-up check passed and the gate open), and
    /// commits must not be failing for longer than allowed.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if !self.handler_ready.load(Ordering::Relaxed) {
            Some("the handler has not reported SERVING")
        } else if !self.joined.load(Ordering::Relaxed) {
            Some("no partition assignment received yet")
        } else if !self.gate_open.load(Ordering::Relaxed) {
            Some("the gate is closed: the handler is unavailable")
        } else if self.commits_unhealthy.load(Ordering::Relaxed) {
            Some("offset commits have been failing")
        } else {
            None
        }
    }

    /// Returns the address the HTTP endpoints listen on, once they are bound.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http_addr.get().copied()
    }

    pub(crate) fn record_http_addr(&self, addr: std::net::SocketAddr) {
        let _ = self.http_addr.set(addr);
    }

    pub(crate) fn record_pipeline_alive(&self) {
        // At least 1, because 0 means that the loop has not started.
        let elapsed = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
        self.pipeline_alive_ms.store(elapsed, Ordering::Relaxed);
    }

    pub(crate) fn record_joined(&self) {
        self.joined.store(true, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Records whether the handler is ready to take calls, as its health check reports.
    pub fn record_handler_ready(&self, ready: bool) {
        self.handler_ready.store(ready, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn record_call_started(&self, topic: &str, attempt: u32) {
        self.metrics.call_started(topic, attempt);
    }

    pub(crate) fn record_call_ended(&self) {
        self.metrics.call_ended();
    }

    /// Records one handler call that carries a batch of `messages` messages.
    pub(crate) fn record_batch_started(&self, messages: usize) {
        self.metrics.batch_started(messages);
    }

    pub(crate) fn record_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.metrics.lag(topic, partition, lag);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let maps = self.partitions.lock().expect("stats lock poisoned").clone();
        StatsSnapshot {
            fetched: self.fetched.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            non_pausing: self.non_pausing.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            dead_letter_failures: self.dead_letter_failures.load(Ordering::Relaxed),
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

    pub(crate) fn record_success(&self, topic: &str, latency: std::time::Duration) {
        self.metrics.call_finished(topic, Outcome::Success, "OK", latency);
        self.succeeded.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn record_non_pausing(&self, topic: &str, error: &HandlerError, latency: std::time::Duration) {
        self.metrics.call_finished(topic, Outcome::NonPausing, error.code_name(), latency);
        self.non_pausing.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Records a non-pausing failure whose message is now on the dead-letter topic.
    pub(crate) fn record_dead_lettered(&self, topic: &str, error: &HandlerError, latency: std::time::Duration) {
        self.metrics.call_finished(topic, Outcome::DeadLetter, error.code_name(), latency);
        self.non_pausing.fetch_add(1, Ordering::Relaxed);
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn record_dead_letter_failure(&self, topic: &str) {
        self.metrics.dead_letter_failed(topic);
        self.dead_letter_failures.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn record_pause_eligible(&self, topic: &str, error: &HandlerError, latency: std::time::Duration) {
        self.metrics.call_finished(topic, Outcome::Retried, error.code_name(), latency);
        self.pause_eligible.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn record_gate(&self, open: bool, closed_for: Option<std::time::Duration>) {
        self.metrics.gate_changed(open, closed_for);
        if !open {
            self.gate_closures.fetch_add(1, Ordering::Relaxed);
        }
        self.gate_open.store(open, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn record_commit_failure(&self) {
        self.metrics.commit_failed();
        self.commit_failures.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn record_commits_healthy(&self, healthy: bool) {
        self.commits_unhealthy.store(!healthy, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn record_consumer_error(&self, poll_interval_exceeded: bool, fatal: Option<String>) {
        self.metrics.consumer_error();
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
                let committed = *entry;
                if maps.assigned.contains(partition) {
                    self.metrics.committed(&partition.topic, partition.partition, committed);
                }
            }
        }
        self.changed.notify_waiters();
    }

    pub(crate) fn record_assigned(&self, partitions: &[TopicPartition]) {
        self.metrics.rebalanced();
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        self.partitions.lock().expect("stats lock poisoned").assigned.extend(partitions.iter().cloned());
        self.changed.notify_waiters();
    }

    pub(crate) fn record_revoked(&self, partitions: &[TopicPartition]) {
        self.metrics.rebalanced();
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        {
            let mut maps = self.partitions.lock().expect("stats lock poisoned");
            for partition in partitions {
                maps.assigned.remove(partition);
                self.metrics.partition_revoked(&partition.topic, partition.partition);
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
                writer.record_success("t", std::time::Duration::from_millis(1));
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
