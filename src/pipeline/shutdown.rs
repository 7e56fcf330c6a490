//! The pipeline's part of shutdown: stop dispatching, let in-flight calls finish within their
//! share of the shutdown timeout, and commit what is contiguous.
//!
//! Messages still waiting for a retry, and messages fetched but not dispatched, are left
//! uncommitted, so the next consumer of their partitions handles them.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Pipeline, describe_offsets};
use crate::dispatch::Scheduler;
use crate::handler::Handler;
use crate::kafka::KafkaControl;

/// The state the pipeline left behind when it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Handler calls still running at the drain deadline; their messages are uncommitted.
    pub abandoned_in_flight: usize,
    /// Messages that were waiting for a retry; uncommitted.
    pub uncommitted_retries: usize,
    /// Whether the final commit was acknowledged (or there was nothing to commit).
    pub final_commit_done: bool,
    /// Whether the pipeline stopped because the poll thread ended.
    pub poll_thread_stopped: bool,
    /// The fatal consumer error that stopped the pipeline, if any.
    pub fatal_error: Option<String>,
}

impl<H: Handler, C: KafkaControl> Pipeline<H, C> {
    pub(super) async fn drain(mut self, shutdown_timeout: Duration) -> ShutdownReport {
        let started = Instant::now();
        let drain_deadline = started + shutdown_timeout.mul_f64(0.6);
        let commit_deadline = started + shutdown_timeout.mul_f64(0.8);

        self.draining = true;
        self.control.set_fetch_paused(true);
        self.reconcile_all_pauses();
        let uncommitted_retries = self.retries.clear();
        let unsent = self.scheduler.queued();
        self.scheduler = Scheduler::new();
        info!(
            in_flight = self.in_flight,
            uncommitted_retries, unsent, "shutting down: waiting for in-flight handler calls"
        );

        while self.in_flight > 0 {
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(drain_deadline) => break,
                Some(completions) = self.workers.next() => self.on_completions(completions),
                event = self.events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => break,
                },
            }
            self.answer_revocations(Instant::now());
        }
        let abandoned_in_flight = self.in_flight;
        if abandoned_in_flight > 0 {
            warn!(
                abandoned_in_flight,
                "shutdown timeout reached with handler calls in flight; their messages stay uncommitted"
            );
        }
        // Dropping the calls cancels them; their messages stay uncommitted.
        self.workers.clear();
        for revocation in &mut self.revocations {
            revocation.deadline = Instant::now();
        }
        self.answer_revocations(Instant::now());

        let final_commit_done = self.final_commit(commit_deadline).await;
        let committed = self.stats.snapshot().committed;
        let committed: Vec<_> = committed.into_iter().collect();
        info!(committed = %describe_offsets(&committed), final_commit_done, "pipeline stopped");

        ShutdownReport { abandoned_in_flight, uncommitted_retries, final_commit_done, ..ShutdownReport::default() }
    }

    /// Commits the contiguous finished offsets and waits for the acknowledgement, after any
    /// commit already in flight. Returns false when the deadline passed first or the commit
    /// failed.
    async fn final_commit(&mut self, deadline: Instant) -> bool {
        let mut sent = false;
        loop {
            if self.commit_in_flight.is_none() {
                if sent {
                    return self.stats_commit_matches();
                }
                sent = true;
                if !self.commit_finished() && self.commit_in_flight.is_none() {
                    return self.stats_commit_matches();
                }
            }
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(deadline) => {
                    warn!("the final commit was not acknowledged before the shutdown deadline");
                    return false;
                }
                event = self.events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => return false,
                },
            }
            self.answer_revocations(Instant::now());
        }
    }

    /// Returns true when every owned partition's committable offset is committed.
    fn stats_commit_matches(&self) -> bool {
        self.partitions.values().all(|state| state.tracker.commit_candidate().is_none())
    }
}
