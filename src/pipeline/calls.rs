//! Handler calls as the pipeline starts them: one message per [`Handler::handle`] call, or a
//! group of messages in one [`Handler::handle_batch`] call. Either way the call yields one
//! [`Completion`] per message, and the pipeline applies each one on its own.
//!
//! Every message of a group is counted in flight, retried, dead-lettered and committed exactly
//! as if it had been sent alone. Only the call is shared. Retries and the retry probe always go
//! alone.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::join_all;
use rdkafka::error::KafkaError;
use tokio::time::Instant;
use tonic::Code;
use tracing::info;

use super::{Pending, Pipeline};
use crate::handler::{Handler, HandlerError};
use crate::kafka::{DeadLetterProducer, KafkaControl};
use crate::message::Message;

/// The outcome of one message's handler call.
pub(super) enum CallResult {
    Succeeded,
    /// Pause-eligible failure: retry the message.
    Unavailable(HandlerError),
    /// Non-pausing failure with no dead-letter topic set: log and commit.
    Rejected(HandlerError),
    /// Non-pausing failure whose dead-letter record the broker acknowledged: commit.
    DeadLettered(HandlerError),
    /// Non-pausing failure whose dead-letter produce failed: retry the produce.
    DeadLetterFailed {
        rejection: HandlerError,
        error: KafkaError,
    },
}

/// One message whose call finished.
pub(super) struct Completion {
    pub(super) pending: Pending,
    pub(super) result: CallResult,
    pub(super) probe: bool,
    /// Duration of the handler call alone, the whole batch call for a message sent in a batch;
    /// zero when the handler was not called.
    pub(super) elapsed: Duration,
}

impl<H: Handler, C: KafkaControl> Pipeline<H, C> {
    /// Starts a call for one message; `probe` marks the retry probe.
    pub(super) fn spawn(&mut self, mut pending: Pending, probe: bool) {
        self.begin_call(&mut pending, probe);

        let handler = self.handler.clone();
        let dead_letter = self.dead_letter.clone();
        self.workers.push(Box::pin(async move {
            let started = Instant::now();
            let handled = match &pending.rejection {
                Some(rejection) => Err(rejection.clone()),
                None => call_handler(handler.as_ref(), &pending).await,
            };
            let elapsed = if pending.rejection.is_some() { Duration::ZERO } else { started.elapsed() };

            let result = settle(handled, &pending.message, dead_letter.as_deref()).await;
            vec![Completion { pending, result, probe, elapsed }]
        }));
    }

    /// Starts one [`Handler::handle_batch`] call for `group`: two or more messages fresh from
    /// the scheduler, so on their first attempt, with no rejection, and each in its own lane.
    pub(super) fn spawn_group(&mut self, mut group: Vec<Pending>) {
        debug_assert!(group.iter().all(|pending| pending.attempt == 0 && pending.rejection.is_none()));
        for pending in &mut group {
            self.begin_call(pending, false);
        }
        self.stats.record_batch_started(group.len());

        let handler = self.handler.clone();
        let dead_letter = self.dead_letter.clone();
        self.workers.push(Box::pin(async move {
            let started = Instant::now();
            let handled = call_handler_batch(handler.as_ref(), &group).await;
            let elapsed = started.elapsed();

            let settled = group
                .iter()
                .zip(handled)
                .map(|(pending, handled)| settle(handled, &pending.message, dead_letter.as_deref()));
            let results = join_all(settled).await;
            group
                .into_iter()
                .zip(results)
                .map(|(pending, result)| Completion { pending, result, probe: false, elapsed })
                .collect()
        }));
    }

    /// Counts a message as in flight, for the pipeline and for its partition's generation, and
    /// advances its attempt.
    fn begin_call(&mut self, pending: &mut Pending, probe: bool) {
        pending.attempt += 1;
        if let Some(state) = self.partitions.get_mut(&pending.lane.partition)
            && state.generation == pending.generation
        {
            state.in_flight += 1;
        }
        self.in_flight += 1;
        self.stats.record_call_started(&pending.message.topic, pending.attempt);
        if pending.attempt > 1 {
            let message = &pending.message;
            info!(
                topic = %message.topic, partition = message.partition, offset = message.offset, trace_id = %message.trace_id,
                attempt = pending.attempt, probe, "retrying message"
            );
        }
    }
}

/// Turns the handler's result for one message into the message's outcome. A non-pausing
/// failure is first produced to the dead-letter topic, when one is set.
async fn settle(
    handled: Result<(), HandlerError>,
    message: &Message,
    dead_letter: Option<&DeadLetterProducer>,
) -> CallResult {
    match handled {
        Ok(()) => CallResult::Succeeded,
        Err(error) if error.is_pause_eligible() => CallResult::Unavailable(error),
        Err(rejection) => match dead_letter {
            None => CallResult::Rejected(rejection),
            Some(producer) => match producer.send(message, &rejection).await {
                Ok(()) => CallResult::DeadLettered(rejection),
                Err(error) => CallResult::DeadLetterFailed { rejection, error },
            },
        },
    }
}

/// Calls the handler once; a panic inside it becomes a non-pausing failure, so that one bad
/// message cannot take the pipeline down.
async fn call_handler<H: Handler>(handler: &H, pending: &Pending) -> Result<(), HandlerError> {
    let call = handler.handle(&pending.message, pending.attempt);
    AssertUnwindSafe(call).catch_unwind().await.unwrap_or_else(|panic| Err(panicked(panic.as_ref())))
}

/// Calls the handler once for a group and returns one result per message. A panic, or a result
/// count other than the group's size, is a non-pausing failure of every message of the group,
/// like a panic of a single call.
async fn call_handler_batch<H: Handler>(handler: &H, group: &[Pending]) -> Vec<Result<(), HandlerError>> {
    let batch: Vec<(&Message, u32)> = group.iter().map(|pending| (pending.message.as_ref(), pending.attempt)).collect();
    let call = handler.handle_batch(&batch);
    match AssertUnwindSafe(call).catch_unwind().await {
        Ok(results) if results.len() == group.len() => results,
        Ok(results) => {
            let message =
                format!("the handler returned {} results for a batch of {} messages", results.len(), group.len());
            vec![Err(HandlerError::non_pausing(Some(Code::Internal), message)); group.len()]
        }
        Err(panic) => vec![Err(panicked(panic.as_ref())); group.len()],
    }
}

/// Returns the non-pausing failure for a handler that panicked with `panic`.
fn panicked(panic: &(dyn std::any::Any + Send)) -> HandlerError {
    let text = panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    HandlerError::non_pausing(Some(Code::Internal), format!("handler panicked: {text}"))
}
