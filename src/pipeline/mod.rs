//! The pipeline: the single task that owns all per-partition state (commit trackers, the lane
//! scheduler, the gate, retries and assignment generations) and ties fetching, handling and
//! committing together.
//!
//! Nothing else touches that state, so it needs no locks: the poll thread talks to the
//! pipeline through [`Event`]s, handler calls are futures that the pipeline task polls itself,
//! and the pipeline acts on
//! Kafka through [`KafkaControl`], whose calls return at once.
//!
//! Invariants kept here:
//! - An offset becomes committable only when its message succeeded or failed non-pausing, and
//!   only once every earlier fetched offset of its partition has (see [`CommitTracker`]).
//! - A result is applied only to the partition state of the generation that dispatched it;
//!   results from an earlier ownership are discarded.
//! - A pause-eligible failure keeps its lane busy, so nothing behind it in the same lane can
//!   overtake it, and keeps its offset uncommitted until a retry succeeds.
//! - With a dead-letter topic, a non-pausing failure finishes only once the broker acknowledged
//!   its dead-letter record. A failed dead-letter produce is retried like a pause-eligible
//!   failure, without calling the handler again.
//! - A message sent to the handler in a batch (module `calls`) is counted in flight and completes
//!   on its own, exactly like a message sent alone, so the invariants above hold per message.

mod calls;
mod partition;
mod retry;
mod shutdown;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::config::{Config, ProcessingOrder};
use crate::dispatch::{LaneId, LaneKey, Scheduler};
use crate::gate::Gate;
use crate::handler::{Handler, HandlerError};
use crate::kafka::{BufferSlot, DeadLetterProducer, Event, Fetched, KafkaControl, Offsets};
use crate::message::{Message, TopicPartition};
use crate::telemetry::Stats;
use crate::telemetry::repeat::RepeatLimiter;

use calls::{CallResult, Completion};
use partition::{PartitionState, Revocation};
use retry::{CommitRetry, Retries};
pub use shutdown::ShutdownReport;

/// The pipeline's tuning, taken from [`Config`].
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub max_in_flight: usize,
    pub processing_order: ProcessingOrder,
    pub commit_interval: Duration,
    /// How long commits may keep failing before the health state reports them.
    pub commit_unhealthy_after: Duration,
    pub revoke_timeout: Duration,
    pub backoff: Backoff,
}

impl PipelineSettings {
    pub fn from_config(config: &Config) -> PipelineSettings {
        PipelineSettings {
            max_in_flight: config.max_in_flight,
            processing_order: config.processing_order,
            commit_interval: config.commit_interval,
            commit_unhealthy_after: config.commit_unhealthy_after,
            revoke_timeout: config.revoke_timeout,
            backoff: Backoff::new(config.backoff_base, config.backoff_max),
        }
    }
}

/// A fetched message on its way through the pipeline.
#[derive(Debug)]
pub(crate) struct Pending {
    message: Arc<Message>,
    lane: LaneId,
    generation: u64,
    /// Fetch order across all partitions; orders retries.
    seq: u64,
    /// Handler calls made so far for this message, counting dead-letter retries.
    attempt: u32,
    /// The handler's rejection, once a dead-letter produce for it failed: the retry produces
    /// again without asking the handler.
    rejection: Option<HandlerError>,
    /// The message's room in its partition's buffer, held until it is dispatched.
    slot: Option<BufferSlot>,
}

/// A commit waiting for its result, with the generation of each partition at the
/// time it was sent.
struct CommitInFlight {
    offsets: Vec<(TopicPartition, i64, u64)>,
}

/// The pipeline task's state. Build it with [`Pipeline::new`] and drive it with
/// [`Pipeline::run`].
pub struct Pipeline<H, C> {
    handler: Arc<H>,
    dead_letter: Option<Arc<DeadLetterProducer>>,
    control: C,
    events: UnboundedReceiver<Event>,
    stats: Arc<Stats>,
    settings: PipelineSettings,

    partitions: HashMap<TopicPartition, PartitionState>,
    scheduler: Scheduler<Pending>,
    gate: Gate,
    retries: Retries,
    revocations: Vec<Revocation>,
    /// Handler calls in flight, polled by the pipeline task itself: a call mostly waits on the
    /// gRPC connection, and keeping it on this task saves a task spawn and a cross-thread
    /// wake-up per message. A call yields the completions of all its messages at once.
    workers: FuturesUnordered<BoxFuture<'static, Vec<Completion>>>,
    /// Messages in handler calls; a batch counts each of its messages.
    in_flight: usize,
    commit_in_flight: Option<CommitInFlight>,
    commit_retry: CommitRetry,
    /// Set by a fatal consumer error; the pipeline then stops.
    fatal_error: Option<String>,
    repeated_errors: RepeatLimiter,
    /// When the pipeline last logged that it is still waiting for its first assignment.
    waiting_logged_at: Instant,
    joined: bool,
    next_generation: u64,
    next_seq: u64,
    draining: bool,
}

impl<H: Handler, C: KafkaControl> Pipeline<H, C> {
    pub fn new(
        handler: Arc<H>,
        control: C,
        events: UnboundedReceiver<Event>,
        stats: Arc<Stats>,
        settings: PipelineSettings,
    ) -> Self {
        let retries = Retries::new(settings.backoff.clone());
        let commit_retry = CommitRetry::new(settings.commit_interval);
        Pipeline {
            handler,
            dead_letter: None,
            control,
            events,
            stats,
            settings,
            partitions: HashMap::new(),
            scheduler: Scheduler::new(),
            gate: Gate::default(),
            retries,
            revocations: Vec::new(),
            workers: FuturesUnordered::new(),
            in_flight: 0,
            commit_in_flight: None,
            commit_retry,
            fatal_error: None,
            repeated_errors: RepeatLimiter::new(Duration::from_secs(10)),
            waiting_logged_at: Instant::now(),
            joined: false,
            next_generation: 0,
            next_seq: 0,
            draining: false,
        }
    }

    /// Sends messages that fail non-pausing to the dead-letter topic before they are committed.
    pub fn with_dead_letter(mut self, producer: Option<Arc<DeadLetterProducer>>) -> Self {
        self.dead_letter = producer;
        self
    }

    /// Runs until `shutdown` completes or the poll thread stops, then drains: in-flight calls
    /// get until `shutdown_timeout` × 0.6 after the signal, the final commit until × 0.8, which
    /// leaves the rest for closing the consumer.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>, shutdown_timeout: Duration) -> ShutdownReport {
        let mut commit_timer = tokio::time::interval(self.settings.commit_interval);
        commit_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
        let mut poll_thread_stopped = false;

        loop {
            let retry_at = self.retries.deadline();
            let revoke_at = self.revocations.iter().map(|revocation| revocation.deadline).min();

            // Biased: timers come before results and fetched messages because they are rare
            // and would otherwise starve under a steady stream of messages.
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                _ = commit_timer.tick() => {
                    self.commit_finished();
                    self.log_if_still_waiting();
                }
                () = tokio::time::sleep_until(retry_at.unwrap_or(far_future)), if retry_at.is_some() => {
                    self.retries.mark_due();
                }
                () = tokio::time::sleep_until(revoke_at.unwrap_or(far_future)), if revoke_at.is_some() => {}
                Some(completions) = self.workers.next(), if !self.workers.is_empty() => self.on_call_finished(completions),
                event = self.events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => {
                        error!("the Kafka poll thread stopped; shutting down");
                        poll_thread_stopped = true;
                        break;
                    }
                },
            }
            if self.fatal_error.is_some() {
                break;
            }
            self.answer_revocations(Instant::now());
            self.dispatch();
            self.stats.record_pipeline_alive();
        }

        let fatal_error = self.fatal_error.clone();
        let mut report = self.drain(shutdown_timeout).await;
        report.poll_thread_stopped = poll_thread_stopped;
        report.fatal_error = fatal_error;
        report
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Fetched(records) => {
                for record in records {
                    self.on_fetched(record);
                }
            }
            Event::Assigned { partitions, paused } => self.on_assigned(partitions, paused),
            Event::Revoked { partitions, reply } => self.begin_revocation(partitions, reply),
            Event::Committed { result, offsets } => self.on_committed(result, offsets),
            Event::RevocationCommitted { result, offsets } => match result {
                Ok(()) => self.stats.record_committed(&offsets),
                Err(_) => self.stats.record_commit_failure(),
            },
            Event::ConsumerError(error) => self.on_consumer_error(error),
            Event::OffsetReset => self.stats.record_offset_reset(),
        }
    }

    /// Logs every 10 s until the first assignment arrives, so that a slow group join is not
    /// mistaken for an idle consumer.
    fn log_if_still_waiting(&mut self) {
        if self.joined || self.waiting_logged_at.elapsed() < Duration::from_secs(10) {
            return;
        }
        self.waiting_logged_at = Instant::now();
        info!("still waiting for the consumer group to assign partitions");
    }

    fn on_consumer_error(&mut self, error: KafkaError) {
        let code = error.rdkafka_error_code();
        let poll_interval_exceeded = code == Some(RDKafkaErrorCode::PollExceeded);
        let fatal = matches!(error, KafkaError::MessageConsumptionFatal(_));
        if fatal {
            error!(%error, "fatal consumer error; shutting down");
            self.fatal_error = Some(error.to_string());
        } else if poll_interval_exceeded {
            error!(%error, "max.poll.interval.ms was exceeded and the consumer left its group; it rejoins on the next poll");
        } else if let Some(left_out) = self.repeated_errors.admit(&error.to_string(), std::time::Instant::now()) {
            warn!(%error, repeats_left_out = left_out, "the consumer reported an error");
        }
        self.stats.record_consumer_error(poll_interval_exceeded, fatal.then(|| error.to_string()));
    }

    /// Queues a fetched message. A message that is not queued is dropped with its buffer slot.
    fn on_fetched(&mut self, Fetched { message, slot }: Fetched) {
        let partition = message.topic_partition();
        if self.draining {
            // Not dispatched and not committed, so the next consumer of the partition reads it.
            debug!(topic = %message.topic, partition = message.partition, offset = message.offset, "fetched while shutting down; left uncommitted");
            return;
        }
        let Some(state) = self.partitions.get_mut(&partition) else {
            warn!(
                topic = %message.topic, partition = message.partition, offset = message.offset, trace_id = %message.trace_id,
                "fetched a message of a partition that is not assigned; it is left uncommitted for its owner"
            );
            return;
        };
        if state.revoking {
            return;
        }
        if let Err(error) = state.tracker.track(message.offset) {
            // NOTE: a rewind (an offset reset or a seek) also lands here; such messages are
            // skipped until the fetch position passes the highest offset tracked.
            warn!(
                topic = %message.topic, partition = message.partition, offset = message.offset, trace_id = %message.trace_id,
                %error, "fetched offset is not above the last one; skipped, it is already tracked"
            );
            return;
        }

        let generation = state.generation;
        let key = LaneKey::for_message(self.settings.processing_order, message.key.as_ref(), message.offset);
        let lane = LaneId { partition: partition.clone(), key };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.stats.record_fetched();
        self.scheduler.push(
            lane.clone(),
            Pending { message: Arc::new(message), lane, generation, seq, attempt: 0, rejection: None, slot },
        );
    }

    fn on_assigned(&mut self, partitions: Vec<TopicPartition>, paused: bool) {
        self.stats.record_joined();
        self.joined = true;
        // Cooperative rebalances can end with nothing added to this member.
        if partitions.is_empty() {
            return;
        }
        for partition in &partitions {
            if self.partitions.contains_key(partition) {
                // Assigned again without a revocation in between: start over as a new owner.
                self.forget_partition(partition);
            }
            let generation = self.next_generation;
            self.next_generation += 1;
            self.partitions.insert(partition.clone(), PartitionState::new(generation, paused));
        }
        info!(partitions = %describe(&partitions), paused, "partitions assigned");
        self.stats.record_assigned(&partitions);
        for partition in &partitions {
            self.reconcile_pause(partition);
        }
    }

    /// Drops everything queued or waiting for a retry in a partition; its in-flight calls
    /// finish on their own and their results are discarded.
    fn forget_partition(&mut self, partition: &TopicPartition) -> (usize, usize) {
        let queued = self.scheduler.remove_partition(partition);
        let retries = self.retries.remove_partition(partition);
        (queued, retries)
    }

    fn begin_revocation(&mut self, partitions: Vec<TopicPartition>, reply: std::sync::mpsc::SyncSender<Offsets>) {
        let mut dropped_retries = 0;
        for partition in &partitions {
            let (_, retries) = self.forget_partition(partition);
            dropped_retries += retries;
            if let Some(state) = self.partitions.get_mut(partition) {
                state.revoking = true;
            }
        }
        info!(
            partitions = %describe(&partitions), dropped_retries,
            "revocation started; waiting for in-flight calls of the revoked partitions"
        );
        let deadline = Instant::now() + self.settings.revoke_timeout;
        self.revocations.push(Revocation { partitions, reply, deadline });
    }

    /// Completes every revocation whose partitions have no call in flight, or whose deadline
    /// passed: replies with the offsets to commit and drops the partitions' state.
    fn answer_revocations(&mut self, now: Instant) {
        let mut index = 0;
        while index < self.revocations.len() {
            let revocation = &self.revocations[index];
            let busy: usize = revocation
                .partitions
                .iter()
                .filter_map(|partition| self.partitions.get(partition))
                .map(|state| state.in_flight)
                .sum();
            if busy > 0 && now < revocation.deadline {
                index += 1;
                continue;
            }

            let revocation = self.revocations.remove(index);
            let offsets: Offsets = revocation
                .partitions
                .iter()
                .filter_map(|partition| {
                    let state = self.partitions.remove(partition)?;
                    state.tracker.commit_candidate().map(|offset| (partition.clone(), offset))
                })
                .collect();
            if busy > 0 {
                warn!(
                    partitions = %describe(&revocation.partitions), abandoned = busy,
                    "revocation timed out waiting for in-flight calls; their results will be discarded and the next owner handles them again"
                );
            }
            info!(partitions = %describe(&revocation.partitions), offsets = %describe_offsets(&offsets), "partitions revoked");
            self.stats.record_revoked(&revocation.partitions);
            let _ = revocation.reply.try_send(offsets);
        }
    }

    /// Applies the completions of one finished call. When the handler takes batches, it also
    /// applies those of every other call that has already finished, without waiting, so that
    /// the room they free goes out as one group instead of one message at a time.
    fn on_call_finished(&mut self, completions: Vec<Completion>) {
        self.on_completions(completions);
        if self.handler.max_batch_len() > 1 {
            while let Some(Some(completions)) = self.workers.next().now_or_never() {
                self.on_completions(completions);
            }
        }
    }

    fn on_completions(&mut self, completions: Vec<Completion>) {
        for completion in completions {
            self.on_completion(completion);
        }
    }

    fn on_completion(&mut self, completion: Completion) {
        let Completion { pending, result, probe, elapsed } = completion;
        self.in_flight -= 1;
        self.stats.record_call_ended();
        if probe {
            self.retries.probe_ended();
        }

        let message = &pending.message;
        let partition = &pending.lane.partition;
        let Some(state) = self.partitions.get_mut(partition).filter(|state| state.generation == pending.generation)
        else {
            debug!(
                topic = %message.topic, partition = message.partition, offset = message.offset, trace_id = %message.trace_id,
                "result for a partition no longer owned by this assignment; discarded"
            );
            return;
        };
        state.in_flight -= 1;

        match result {
            CallResult::Succeeded => {
                self.finish(&pending);
                self.stats.record_success(&message.topic, elapsed);
                if probe {
                    self.retries.probe_succeeded();
                    self.open_gate();
                }
            }
            CallResult::Unavailable(error) => {
                self.stats.record_pause_eligible(&message.topic, &error, elapsed);
                if self.draining {
                    warn!(
                        topic = %message.topic, partition = message.partition, offset = message.offset, trace_id = %message.trace_id,
                        grpc.code = error.code_name(), error = %error.message, attempt = pending.attempt,
                        "handler unavailable during shutdown; message left uncommitted"
                    );
                    return;
                }
                warn!(
                    topic = %message.topic, partition = message.partition, offset = message.offset, trace_id = %message.trace_id,
                    grpc.code = error.code_name(), error = %error.message, attempt = pending.attempt,
                    "handler unavailable; message will be retried"
                );
                self.retries.add(pending);
                self.close_gate("handler unavailable");
            }
            CallResult::Rejected(error) => {
                error!(
                    topic = %message.topic, partition = message.partition, offset = message.offset, trace_id = %message.trace_id,
                    grpc.code = error.code_name(), error = %error.message, attempt = pending.attempt,
                    "handler rejected the message; committing it"
                );
                self.finish(&pending);
                self.stats.record_non_pausing(&message.topic, &error, elapsed);
                self.on_rejection_settled(probe);
            }
            CallResult::DeadLettered(error) => {
                error!(
                    topic = %message.topic, partition = message.partition, offset = message.offset, trace_id = %message.trace_id,
                    grpc.code = error.code_name(), error = %error.message, attempt = pending.attempt,
                    dead_letter_topic = self.dead_letter.as_ref().map(|producer| producer.topic()).unwrap_or_default(),
                    "handler rejected the message; produced it to the dead-letter topic and committing it"
                );
                self.finish(&pending);
                self.stats.record_dead_lettered(&message.topic, &error, elapsed);
                self.on_rejection_settled(probe);
            }
            CallResult::DeadLetterFailed { rejection, error } => {
                self.stats.record_dead_letter_failure(&message.topic);
                if self.draining {
                    warn!(
                        topic = %message.topic, partition = message.partition, offset = message.offset, trace_id = %message.trace_id,
                        grpc.code = rejection.code_name(), %error,
                        "producing a rejected message to the dead-letter topic failed during shutdown; message left uncommitted"
                    );
                    return;
                }
                warn!(
                    topic = %message.topic, partition = message.partition, offset = message.offset, trace_id = %message.trace_id,
                    grpc.code = rejection.code_name(), %error, attempt = pending.attempt,
                    "producing a rejected message to the dead-letter topic failed; the produce will be retried"
                );
                let mut pending = pending;
                pending.rejection = Some(rejection);
                self.retries.add(pending);
                self.close_gate("dead-letter topic unavailable");
            }
        }
    }

    /// A message the handler rejected is settled: when it was the retry probe, the path it
    /// took (the handler, and the dead-letter topic if set) works again, so the gate opens.
    fn on_rejection_settled(&mut self, probe: bool) {
        if probe {
            self.retries.probe_succeeded();
            self.open_gate();
        }
    }

    /// Marks a message finished: its offset may become committable and its lane is free.
    fn finish(&mut self, pending: &Pending) {
        let partition = &pending.lane.partition;
        if let Some(state) = self.partitions.get_mut(partition)
            && let Err(error) = state.tracker.finish(pending.message.offset)
        {
            error!(%partition, offset = pending.message.offset, %error, "commit tracker rejected a finished offset");
        }
        self.scheduler.release(&pending.lane);
    }

    /// Closes the gate; `reason` names the part of the path that failed, for the log.
    fn close_gate(&mut self, reason: &'static str) {
        if self.gate.close(Instant::now()) {
            warn!(reason, "gate closed; pausing fetching and retrying with backoff");
            self.stats.record_gate(false, None);
            self.control.set_fetch_paused(true);
            self.reconcile_all_pauses();
        }
    }

    fn open_gate(&mut self) {
        if let Some(closed_for) = self.gate.open(Instant::now()) {
            info!(
                closed_ms = closed_for.as_millis() as u64,
                retries_waiting = self.retries.len(),
                "gate opened: resuming fetching"
            );
            self.stats.record_gate(true, Some(closed_for));
            self.control.set_fetch_paused(false);
            self.reconcile_all_pauses();
        }
    }

    /// Hands messages to workers up to the in-flight limit. While the gate is closed only the
    /// retry probe goes out; while it is open, failed messages go before anything newer, one per
    /// call.
    ///
    /// When the handler takes batches, the queued messages that are dispatchable now go out in
    /// groups of up to [`Handler::max_batch_len`], each message counted in flight. The scheduler
    /// marks a lane busy when it pops a message, so a group never contains two messages that
    /// the processing order keeps apart. A group takes only what is ready and never waits for
    /// more.
    ///
    /// NOTE: groups grow only when several messages are dispatchable at once: after the gate
    /// opens, or when several calls finished before the pipeline task ran again (see
    /// [`Pipeline::on_call_finished`]). When calls finish one at a time, messages keep going out
    /// one per call. The group sizes this gives under load have not been measured.
    fn dispatch(&mut self) {
        if self.draining {
            return;
        }
        if !self.gate.is_open() {
            if self.retries.is_empty() && !self.retries.probe_in_flight() {
                // Nothing is left to probe with (the failed messages' partitions were
                // revoked), so the next message is the probe.
                self.open_gate();
            } else {
                if let Some(delay) = self.retries.schedule_if_idle(Instant::now()) {
                    debug!(delay_ms = delay.as_millis() as u64, "retry probe scheduled");
                }
                if self.in_flight < self.settings.max_in_flight
                    && let Some(pending) = self.retries.take_probe()
                {
                    self.spawn(pending, true);
                }
                return;
            }
        }

        let batch_limit = self.handler.max_batch_len().max(1);
        while self.in_flight < self.settings.max_in_flight {
            if let Some(pending) = self.retries.take_next() {
                self.spawn(pending, false);
                continue;
            }

            let room = (self.settings.max_in_flight - self.in_flight).min(batch_limit);
            let mut group: Vec<Pending> = std::iter::from_fn(|| self.take_queued()).take(room).collect();
            if group.len() > 1 {
                self.spawn_group(group);
            } else if let Some(pending) = group.pop() {
                self.spawn(pending, false);
            } else {
                break;
            }
        }
    }

    /// Takes the next dispatchable message from the scheduler, if there is one. Leaving the
    /// buffer frees its room for the next fetched message of its partition.
    fn take_queued(&mut self) -> Option<Pending> {
        let (_, mut pending) = self.scheduler.pop()?;
        pending.slot = None;
        Some(pending)
    }

    /// Brings one partition's Kafka pause state in line with what it should be: paused while
    /// fetching is paused (gate closed or shutting down). A full buffer does not pause: the poll
    /// thread stops taking the partition's records instead (see `kafka::flow`).
    fn reconcile_pause(&mut self, partition: &TopicPartition) {
        let fetch_paused = !self.gate.is_open() || self.draining;
        let Some(state) = self.partitions.get_mut(partition) else {
            return;
        };
        match state.wants_pause(fetch_paused) {
            Some(true) => self.control.pause(std::slice::from_ref(partition)),
            Some(false) => self.control.resume(std::slice::from_ref(partition)),
            None => {}
        }
    }

    fn reconcile_all_pauses(&mut self) {
        let fetch_paused = !self.gate.is_open() || self.draining;
        let mut pause = Vec::new();
        let mut resume = Vec::new();
        for (partition, state) in &mut self.partitions {
            match state.wants_pause(fetch_paused) {
                Some(true) => pause.push(partition.clone()),
                Some(false) => resume.push(partition.clone()),
                None => {}
            }
        }
        self.control.pause(&pause);
        self.control.resume(&resume);
    }

    /// Queues a commit of every partition whose committable offset moved, unless a
    /// commit is already in flight: one at a time keeps commits in order, so a late failure
    /// can never follow a newer success. Returns whether a commit was started.
    fn commit_finished(&mut self) -> bool {
        if self.commit_in_flight.is_some() || !self.commit_retry.may_commit(Instant::now()) {
            return false;
        }
        let offsets: Vec<(TopicPartition, i64, u64)> = self
            .partitions
            .iter()
            .filter(|(_, state)| !state.revoking)
            .filter_map(|(partition, state)| {
                state.tracker.commit_candidate().map(|offset| (partition.clone(), offset, state.generation))
            })
            .collect();
        if offsets.is_empty() {
            return false;
        }

        let plain: Offsets = offsets.iter().map(|(partition, offset, _)| (partition.clone(), *offset)).collect();
        match self.control.commit(&plain) {
            Ok(()) => {
                debug!(offsets = %describe_offsets(&plain), "commit sent");
                self.commit_in_flight = Some(CommitInFlight { offsets });
                true
            }
            Err(error) => {
                warn!(%error, offsets = %describe_offsets(&plain), "queuing a commit failed; retrying with backoff");
                self.on_commit_failure();
                false
            }
        }
    }

    fn on_committed(&mut self, result: Result<(), KafkaError>, offsets: Offsets) {
        let ours = self.commit_in_flight.as_ref().is_some_and(|in_flight| {
            in_flight.offsets.len() == offsets.len()
                && in_flight.offsets.iter().all(|(p, o, _)| offsets.iter().any(|(q, n)| p == q && o == n))
        });
        if !ours {
            debug!(ok = result.is_ok(), offsets = %describe_offsets(&offsets), "commit result for a commit not in flight");
            if result.is_ok() {
                self.stats.record_committed(&offsets);
            }
            return;
        }

        let in_flight = self.commit_in_flight.take().expect("checked above");
        match result {
            Ok(()) => {
                for (partition, offset, generation) in &in_flight.offsets {
                    if let Some(state) =
                        self.partitions.get_mut(partition).filter(|state| state.generation == *generation)
                    {
                        state.tracker.mark_committed(*offset);
                    }
                }
                self.stats.record_committed(&offsets);
                if self.commit_retry.succeeded() {
                    info!("commits succeed again");
                    self.stats.record_commits_healthy(true);
                }
            }
            Err(error) => {
                warn!(%error, offsets = %describe_offsets(&offsets), "commit failed; retrying with backoff and the latest offsets");
                self.on_commit_failure();
            }
        }
    }

    fn on_commit_failure(&mut self) {
        self.stats.record_commit_failure();
        let now = Instant::now();
        let failing_for = self.commit_retry.failed(now);
        if failing_for >= self.settings.commit_unhealthy_after && self.commit_retry.mark_reported() {
            error!(
                failing_ms = failing_for.as_millis() as u64,
                "commits have been failing for too long; reporting unhealthy"
            );
            self.stats.record_commits_healthy(false);
        }
    }
}

pub(crate) fn describe(partitions: &[TopicPartition]) -> String {
    partitions.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

pub(crate) fn describe_offsets(offsets: &[(TopicPartition, i64)]) -> String {
    offsets.iter().map(|(partition, offset)| format!("{partition}@{offset}")).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests;
