//! The handler seam: the [`Handler`] trait the pipeline calls for every message, the error it
//! returns, its gRPC implementation, and the router that gives each topic its own handler.
//!
//! A handler sees nothing of Kafka offsets or commits. It only says whether a message
//! succeeded, failed in a way worth pausing for (the downstream is unavailable, so the same
//! message would succeed later), or failed for good (the message itself is bad). A handler may
//! also take several messages in one call ([`Handler::handle_batch`]); it then returns one such
//! result per message, in order.

pub mod classify;
pub mod grpc;
pub mod router;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use futures_util::future::join_all;
use tonic::Code;

use crate::message::Message;

pub use classify::{CallFailure, DEFAULT_PAUSE_CODES, classify};
pub use grpc::GrpcHandler;
pub use router::{TopicRouter, connect_grpc};

/// The pipeline's treatment of a failed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Close the gate, retry the same message until it succeeds, keep its offset uncommitted.
    PauseEligible,
    /// Log the failure and treat the message as finished, so its offset becomes committable.
    NonPausing,
}

/// A failed handler call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerError {
    pub disposition: Disposition,
    /// The gRPC code, when the failure has one.
    pub code: Option<Code>,
    pub message: String,
}

impl HandlerError {
    pub fn pause_eligible(code: Option<Code>, message: impl Into<String>) -> HandlerError {
        HandlerError { disposition: Disposition::PauseEligible, code, message: message.into() }
    }

    pub fn non_pausing(code: Option<Code>, message: impl Into<String>) -> HandlerError {
        HandlerError { disposition: Disposition::NonPausing, code, message: message.into() }
    }

    pub fn is_pause_eligible(&self) -> bool {
        self.disposition == Disposition::PauseEligible
    }

    /// Returns the code's canonical name (`UNAVAILABLE`), or `NONE` when the failure has no code.
    pub fn code_name(&self) -> &'static str {
        self.code.map(classify::code_name).unwrap_or("NONE")
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code_name(), self.message)
    }
}

impl std::error::Error for HandlerError {}

/// Handles one message. Implementations are called concurrently, up to the in-flight limit, so
/// they must be safe to share between tasks.
///
/// The returned futures are polled on the pipeline's own task, which suits calls that mostly
/// wait, such as a remote call. CPU-heavy work belongs on `tokio::task::spawn_blocking` or a
/// spawned task, because a future that computes for long delays every other message.
///
/// `attempt` is 1 on the first delivery of the message by this process and grows by one on
/// every retry.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, message: &Message, attempt: u32) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Handles several messages, each with its attempt number, and returns one result per
    /// message in the order of `batch`. The pipeline puts no two messages in one batch that
    /// the processing order forbids running at the same time, so they may run concurrently.
    ///
    /// The default calls [`Handler::handle`] for every message concurrently.
    fn handle_batch(&self, batch: &[(&Message, u32)]) -> impl Future<Output = Vec<Result<(), HandlerError>>> + Send {
        handle_each(self, batch)
    }

    /// Returns the maximum number of messages this handler takes in one
    /// [`Handler::handle_batch`] call. The default, 1, means that batches gain nothing, and the
    /// pipeline calls [`Handler::handle`] per message. The pipeline reads it before every
    /// dispatch, so it may change at run time.
    fn max_batch_len(&self) -> usize {
        1
    }

    /// Waits, at most `timeout`, until the handler reports that it can take calls. Called once
    /// before consuming starts; the default reports ready at once.
    fn wait_until_ready(&self, timeout: Duration) -> impl Future<Output = Readiness> + Send {
        let _ = timeout;
        async { Readiness::Ready }
    }
}

/// Calls `handler.handle` for every message of `batch` concurrently and returns the results in
/// the order of `batch`.
pub async fn handle_each<H: Handler + ?Sized>(handler: &H, batch: &[(&Message, u32)]) -> Vec<Result<(), HandlerError>> {
    join_all(batch.iter().map(|(message, attempt)| handler.handle(message, *attempt))).await
}

/// The result of a handler's start-up check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// The handler reported that it serves.
    Ready,
    /// The handler has no way to report readiness; it is assumed ready.
    Unknown,
    /// The handler did not report ready within the timeout; the last reason is kept.
    TimedOut(String),
}
