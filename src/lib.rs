//! kafka-scc: a Kafka consumer sidecar that forwards every message to a handler over gRPC and
//! commits offsets strictly in order per partition, only after the handler has finished with
//! them.
//!
//! # Layout
//! - [`config`]: the environment and the optional TOML file read into one validated
//!   [`Config`], plus the per-topic handler routes.
//! - [`message`]: the owned [`Message`] copied out of librdkafka.
//! - [`handler`]: the [`Handler`] trait, its gRPC implementation, the status classifier and the
//!   per-topic router.
//! - [`gate`]: the health latch closed by pause-eligible failures.
//! - [`backoff`]: exponential backoff with full jitter for retry probes.
//! - [`commit`]: the per-partition tracker that decides the committable offset.
//! - [`dispatch`]: the lane scheduler behind the processing orders.
//! - [`kafka`]: the librdkafka consumer, its poll thread, the per-partition buffer bound and the
//!   rebalance handshake.
//! - [`pipeline`]: the single task that owns all per-partition state and ties the above
//!   together.
//! - [`telemetry`]: logging set-up and the counters behind the run summary.
//! - [`sidecar`]: start-up and the bounded shutdown sequence.
//!
//! # Invariants
//! 1. A partition's committed offset never passes a fetched offset whose message has not
//!    succeeded or been classified non-pausing, and never decreases.
//! 2. The poll loop never waits on a handler call, a backoff or an asynchronous commit; the
//!    consumer stays in its group while the gate is closed.
//! 3. Every result carries its assignment generation; a result from an older generation is
//!    dropped, never committed.
//! 4. A retry re-sends the message held in memory.
//! 5. Shutdown is bounded by `SCC_SHUTDOWN_TIMEOUT_MS`, closes the consumer once, and commits
//!    only what invariant 1 allows.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod commit;
pub mod config;
pub mod dispatch;
pub mod gate;
pub mod handler;
pub mod kafka;
pub mod message;
pub mod pipeline;
pub mod sidecar;
pub mod telemetry;

/// Code generated from `proto/scc/handler/v1/handler.proto`.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("scc.handler.v1");
}

/// Builds a record's HandleBatch result from the status that Handle would return for it, for
/// handler servers written in Rust.
impl From<Result<(), tonic::Status>> for proto::RecordResult {
    fn from(status: Result<(), tonic::Status>) -> proto::RecordResult {
        match status {
            Ok(()) => proto::RecordResult::default(),
            Err(status) => proto::RecordResult { code: status.code().into(), message: status.message().to_owned() },
        }
    }
}

pub use config::{Config, ConfigError, ProcessingOrder};
pub use handler::{Disposition, GrpcHandler, Handler, HandlerError, Readiness, TopicRouter};
pub use message::{Message, TopicPartition};
pub use sidecar::{RunError, Sidecar, Summary};
pub use telemetry::Stats;
