//! The librdkafka consumer context: passes librdkafka's logs and errors to [`ClientLogs`], feeds
//! its statistics to the lag metric, and turns rebalance callbacks into pipeline events.
//!
//! Callbacks run on the poll thread, inside `poll`. The revocation callback is the only one
//! that waits: for the pipeline's offsets (bounded by the revoke timeout) and for their
//! synchronous commit, because offsets of revoked partitions must be committed while this
//! consumer still owns them.
//!
//! The assignment callback gives every new partition its own queue before librdkafka starts
//! fetching it (see [`super::flow`]). No record of the partition then reaches the consumer's
//! main queue, because records split between two queues could reach the pipeline out of
//! offset order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, warn};

use super::Event;
use super::client_logs::ClientLogs;
use crate::message::TopicPartition;
use crate::telemetry::Stats;

/// Extra time the revocation callback waits beyond the pipeline's own revoke timeout before it
/// gives up on the pipeline's reply.
const REVOKE_REPLY_SLACK: Duration = Duration::from_secs(5);

pub(crate) struct SidecarContext {
    pub(crate) events: UnboundedSender<Event>,
    /// Partitions assigned while this is set start paused.
    pub(crate) fetch_paused: Arc<AtomicBool>,
    /// Set when the consumer is closing; the pipeline has already committed and stopped, so
    /// revocations no longer wait for it.
    pub(crate) closing: AtomicBool,
    pub(crate) revoke_timeout: Duration,
    pub(crate) stats: Arc<Stats>,
    pub(crate) logs: ClientLogs,
    /// The consumer this context belongs to, set once it is built; weak, because the consumer
    /// owns the context.
    pub(crate) consumer: OnceLock<Weak<BaseConsumer<SidecarContext>>>,
    /// Queue changes made by rebalance callbacks, taken by the poll loop after each poll.
    pub(crate) queue_changes: Mutex<Vec<QueueChange>>,
    /// Set by the log, statistics and rebalance callbacks: a poll that served such an event
    /// returns nothing, and the poll loop then polls again instead of concluding that the queue
    /// is empty. librdkafka signals a queue only when it turns non-empty, so events left in the
    /// queue would wait for the poll loop's idle timeout, one event per timeout.
    pub(crate) event_served: AtomicBool,
}

/// A change to the set of partition queues the poll loop reads.
pub(crate) enum QueueChange {
    /// A partition was assigned; its records arrive on `queue`.
    Split { partition: TopicPartition, queue: PartitionQueue<SidecarContext> },
    /// A partition was revoked; its queue is no longer read.
    Revoked(TopicPartition),
}

impl SidecarContext {
    /// Gives each partition of an assignment its own queue, before the assignment starts
    /// fetching. A partition whose queue cannot be split keeps delivering to the main queue,
    /// without the buffer bound.
    fn split_queues(&self, list: &TopicPartitionList) {
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            // The consumer is being dropped; nothing will be read any more.
            return;
        };
        let mut changes = self.queue_changes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for element in list.elements() {
            let partition = TopicPartition::new(element.topic(), element.partition());
            match consumer.split_partition_queue(element.topic(), element.partition()) {
                Some(queue) => changes.push(QueueChange::Split { partition, queue }),
                None => {
                    warn!(%partition, "the partition's queue could not be split; its records bypass the buffer bound")
                }
            }
        }
    }

    fn note_revoked(&self, list: &TopicPartitionList) {
        let mut changes = self.queue_changes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        changes.extend(partitions_of(list).into_iter().map(QueueChange::Revoked));
    }
}

impl ClientContext for SidecarContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        // rust-rdkafka routes librdkafka's logs through the main queue, so a poll may serve one.
        self.event_served.store(true, Ordering::Release);
        self.logs.log(level, facility, message);
        // librdkafka logs offset resets caused by errors at warning level under this facility
        // (librdkafka 2.12, rdkafka_offset.c).
        if matches!(level, RDKafkaLogLevel::Warning) && facility == "OFFSET" && message.contains("offset reset") {
            let _ = self.events.send(Event::OffsetReset);
        }
    }

    fn stats(&self, statistics: Statistics) {
        self.event_served.store(true, Ordering::Release);
        for (topic, topic_statistics) in &statistics.topics {
            for (partition, partition_statistics) in &topic_statistics.partitions {
                // Partition -1 is librdkafka's internal unassigned queue; undesired partitions
                // are not (or no longer) assigned to this member.
                if *partition < 0 || !partition_statistics.desired || partition_statistics.consumer_lag < 0 {
                    continue;
                }
                self.stats.record_lag(topic, *partition, partition_statistics.consumer_lag);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logs.error("consumer", error, reason);
    }
}

impl ConsumerContext for SidecarContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.event_served.store(true, Ordering::Release);
        let list = match rebalance {
            Rebalance::Assign(list) => return self.split_queues(list),
            Rebalance::Revoke(list) => list,
            Rebalance::Error(_) => return,
        };
        self.note_revoked(list);
        let partitions = partitions_of(list);
        if partitions.is_empty() || self.closing.load(Ordering::Acquire) {
            return;
        }

        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        if self.events.send(Event::Revoked { partitions: partitions.clone(), reply }).is_err() {
            return;
        }
        let offsets = match answer.recv_timeout(self.revoke_timeout + REVOKE_REPLY_SLACK) {
            Ok(offsets) => offsets,
            Err(_) => {
                warn!(partitions = %describe(&partitions), "revocation got no offsets from the pipeline in time; committing nothing");
                return;
            }
        };
        if offsets.is_empty() {
            return;
        }

        let result = offsets_list(&offsets).and_then(|list| consumer.commit(&list, CommitMode::Sync));
        if let Err(error) = &result {
            warn!(%error, offsets = %describe_offsets(&offsets), "commit during revocation failed; the next owner may handle these messages again");
        }
        let _ = self.events.send(Event::RevocationCommitted { result, offsets });
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                // Pause state is kafka-scc's own: apply it to the new partitions whatever the
                // client library kept from an earlier assignment.
                let paused = self.fetch_paused.load(Ordering::Acquire);
                let applied = if paused { consumer.pause(list) } else { consumer.resume(list) };
                if let Err(error) = applied {
                    warn!(%error, paused, "applying the pause state to assigned partitions failed");
                }
                let partitions = partitions_of(list);
                let _ = self.events.send(Event::Assigned { partitions, paused });
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => error!(%error, "rebalance failed"),
        }
    }
}

pub(crate) fn partitions_of(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements().iter().map(|element| TopicPartition::new(element.topic(), element.partition())).collect()
}

pub(crate) fn offsets_list(offsets: &[(TopicPartition, i64)]) -> KafkaResult<TopicPartitionList> {
    let mut list = TopicPartitionList::with_capacity(offsets.len());
    for (partition, offset) in offsets {
        list.add_partition_offset(&partition.topic, partition.partition, Offset::Offset(*offset))?;
    }
    Ok(list)
}

pub(crate) fn partitions_list(partitions: &[TopicPartition]) -> TopicPartitionList {
    let mut list = TopicPartitionList::with_capacity(partitions.len());
    for partition in partitions {
        list.add_partition(&partition.topic, partition.partition);
    }
    list
}

pub(crate) fn describe(partitions: &[TopicPartition]) -> String {
    partitions.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

pub(crate) fn describe_offsets(offsets: &[(TopicPartition, i64)]) -> String {
    offsets.iter().map(|(partition, offset)| format!("{partition}@{offset}")).collect::<Vec<_>>().join(",")
}
