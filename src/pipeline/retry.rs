//! Messages waiting for a retry after a pause-eligible failure, and the single retry probe.
//!
//! While the gate is closed exactly one failed message, the earliest fetched, is retried at a
//! time, after a backoff delay that grows with every failed probe. When a probe succeeds the
//! gate opens and the remaining failed messages are dispatched again, earliest first, before
//! anything newer.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::Pending;
use crate::backoff::Backoff;
use crate::message::TopicPartition;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Idle,
    Waiting(Instant),
    Due,
    InFlight,
}

#[derive(Debug)]
pub(super) struct Retries {
    /// Failed messages by fetch sequence number.
    failed: BTreeMap<u64, Pending>,
    probe: Probe,
    /// Probes scheduled since the gate last opened; picks the backoff ceiling.
    round: u32,
    backoff: Backoff,
}

impl Retries {
    pub(super) fn new(backoff: Backoff) -> Retries {
        Retries { failed: BTreeMap::new(), probe: Probe::Idle, round: 0, backoff }
    }

    pub(super) fn add(&mut self, pending: Pending) {
        self.failed.insert(pending.seq, pending);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.failed.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.failed.len()
    }

    pub(super) fn probe_in_flight(&self) -> bool {
        self.probe == Probe::InFlight
    }

    /// Schedules the next probe when none is scheduled or running and a message is waiting;
    /// returns the delay chosen.
    pub(super) fn schedule_if_idle(&mut self, now: Instant) -> Option<std::time::Duration> {
        if self.probe != Probe::Idle || self.failed.is_empty() {
            return None;
        }
        self.round = self.round.saturating_add(1);
        let delay = self.backoff.delay(self.round);
        self.probe = Probe::Waiting(now + delay);
        Some(delay)
    }

    /// When the scheduled probe is due.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self.probe {
            Probe::Waiting(at) => Some(at),
            _ => None,
        }
    }

    pub(super) fn mark_due(&mut self) {
        if matches!(self.probe, Probe::Waiting(_)) {
            self.probe = Probe::Due;
        }
    }

    /// Takes the earliest failed message as the probe, once the probe is due.
    pub(super) fn take_probe(&mut self) -> Option<Pending> {
        if self.probe != Probe::Due {
            return None;
        }
        let (_, pending) = self.failed.pop_first()?;
        self.probe = Probe::InFlight;
        Some(pending)
    }

    /// Ends the running probe: it failed (and was added back), or its result was discarded.
    pub(super) fn probe_ended(&mut self) {
        self.probe = Probe::Idle;
    }

    /// Ends the running probe with success; the next closure starts from the first backoff
    /// step again.
    pub(super) fn probe_succeeded(&mut self) {
        self.probe = Probe::Idle;
        self.round = 0;
    }

    /// Takes the earliest failed message for re-dispatch while the gate is open.
    pub(super) fn take_next(&mut self) -> Option<Pending> {
        self.failed.pop_first().map(|(_, pending)| pending)
    }

    /// Drops the failed messages of a partition; returns how many.
    pub(super) fn remove_partition(&mut self, partition: &TopicPartition) -> usize {
        let before = self.failed.len();
        self.failed.retain(|_, pending| &pending.lane.partition != partition);
        before - self.failed.len()
    }

    /// Drops every failed message and cancels the probe timer; returns how many were dropped.
    pub(super) fn clear(&mut self) -> usize {
        let dropped = self.failed.len();
        self.failed.clear();
        if self.probe != Probe::InFlight {
            self.probe = Probe::Idle;
        }
        dropped
    }
}

/// Backoff state of failing commits. A retry always commits the latest committable offsets,
/// which cover every offset of the failed attempt, so no offset is skipped.
#[derive(Debug)]
pub(super) struct CommitRetry {
    backoff: Backoff,
    rounds: u32,
    retry_at: Option<Instant>,
    failing_since: Option<Instant>,
    reported: bool,
}

impl CommitRetry {
    /// Retries start from the commit interval and are capped at ten times it, or ten seconds
    /// when that is longer.
    pub(super) fn new(commit_interval: std::time::Duration) -> CommitRetry {
        let max = (commit_interval * 10).max(std::time::Duration::from_secs(10));
        CommitRetry {
            backoff: Backoff::new(commit_interval, max),
            rounds: 0,
            retry_at: None,
            failing_since: None,
            reported: false,
        }
    }

    pub(super) fn may_commit(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|at| now >= at)
    }

    /// Records a failure and schedules the retry; returns how long commits have been failing.
    pub(super) fn failed(&mut self, now: Instant) -> std::time::Duration {
        self.rounds = self.rounds.saturating_add(1);
        self.retry_at = Some(now + self.backoff.delay(self.rounds));
        now.saturating_duration_since(*self.failing_since.get_or_insert(now))
    }

    /// Records that the failure was reported; returns false when it already was.
    pub(super) fn mark_reported(&mut self) -> bool {
        !std::mem::replace(&mut self.reported, true)
    }

    /// Records a success; returns true when it ends a period of reported failures.
    pub(super) fn succeeded(&mut self) -> bool {
        self.rounds = 0;
        self.retry_at = None;
        self.failing_since = None;
        std::mem::replace(&mut self.reported, false)
    }
}
