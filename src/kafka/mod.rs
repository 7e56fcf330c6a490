//! The Kafka side: the librdkafka consumer, the thread that polls it, the rebalance
//! handshake with the pipeline, and the dead-letter producer.
//!
//! The poll thread turns everything librdkafka reports into [`Event`]s for the pipeline; the
//! pipeline acts on Kafka through [`KafkaControl`], whose calls never block.

mod client_logs;
mod consumer;
mod context;
pub mod dead_letter;
mod flow;

use std::sync::mpsc::SyncSender;

use rdkafka::error::KafkaError;

use crate::message::{Message, TopicPartition};

pub use consumer::{ConsumerHandle, KafkaConsumer};
pub use dead_letter::DeadLetterProducer;
pub use flow::BufferSlot;

/// Offsets to commit: the next offset to read, per partition.
pub type Offsets = Vec<(TopicPartition, i64)>;

/// A report from the poll thread to the pipeline, sent in the order things happened.
#[derive(Debug)]
pub enum Event {
    /// Records were fetched, in offset order within each partition.
    Fetched(Vec<Fetched>),
    /// Partitions were added to the assignment. `paused` is true when the poll thread already
    /// paused them because fetching was paused when they arrived.
    Assigned { partitions: Vec<TopicPartition>, paused: bool },
    /// Partitions are being revoked. The poll thread waits, bounded, for the pipeline to send
    /// the offsets to commit for them through `reply`, commits those synchronously, and only
    /// then lets the revocation complete.
    Revoked { partitions: Vec<TopicPartition>, reply: SyncSender<Offsets> },
    /// A commit requested through [`KafkaControl::commit`] finished.
    Committed { result: Result<(), KafkaError>, offsets: Offsets },
    /// A synchronous commit made during a revocation finished.
    RevocationCommitted { result: Result<(), KafkaError>, offsets: Offsets },
    /// The consumer reported an error while polling.
    ConsumerError(KafkaError),
    /// librdkafka reset a partition's position because it was out of range or expired; its
    /// own warning names the partition and both offsets.
    OffsetReset,
}

/// A fetched record and the room it takes in its partition's buffer.
#[derive(Debug)]
pub struct Fetched {
    pub message: Message,
    /// Dropped when the record leaves the pipeline's buffer, which lets the poll thread take
    /// the next record of the partition. `None` for records that bypass the bound.
    pub slot: Option<BufferSlot>,
}

/// The pipeline's handle on the consumer. Every call returns at once: pausing and resuming are
/// local operations of librdkafka, and commits are queued to a commit thread that reports each
/// result as [`Event::Committed`].
pub trait KafkaControl: Send + 'static {
    fn pause(&self, partitions: &[TopicPartition]);
    fn resume(&self, partitions: &[TopicPartition]);
    /// Queues a commit of `offsets`; commits are made one at a time, in the order queued.
    fn commit(&self, offsets: &[(TopicPartition, i64)]) -> Result<(), KafkaError>;
    /// Tells the poll thread whether partitions assigned from now on start paused.
    fn set_fetch_paused(&self, paused: bool);
}
