//! The consumer and its poll thread.
//!
//! One dedicated OS thread owns the polling: it serves the consumer's main queue (rebalances,
//! errors) and reads every assigned partition from its own queue while the partition has room
//! in the pipeline's buffer (see [`super::flow`]). It forwards records and callbacks to the
//! pipeline as [`Event`]s and never waits on the pipeline except during a revocation. Keeping
//! it off the async runtime means a busy runtime cannot delay polling past
//! `max.poll.interval.ms`, and the blocking rebalance handshake cannot stall a runtime worker.
//! It polls the main queue on every turn, full partitions or not, so the consumer stays in its
//! group whatever the pipeline does.
//!
//! A second thread makes the pipeline's commits, one at a time and synchronously, and reports
//! each result as [`Event::Committed`]. rust-rdkafka 0.39 never invokes the commit callback
//! for asynchronous manual commits (rust-rdkafka issue 856), so an asynchronous commit's
//! outcome could not be observed; a synchronous commit on its own thread keeps the pipeline
//! from waiting while still reporting every failure.
//!
//! The consumer is closed exactly once, on the poll thread, when the last reference to it is
//! dropped after the loop ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::client_logs::ClientLogs;
use super::context::{QueueChange, SidecarContext, describe, offsets_list, partitions_list};
use super::flow::{PartitionRoom, PollWakeup};
use super::{Event, Fetched, KafkaControl, Offsets};
use crate::config::Config;
use crate::message::{Message, TopicPartition};
use crate::telemetry::Stats;

/// How long the poll thread parks when no queue has anything for it; it bounds how quickly the
/// thread notices a stop request. Records and events wake it earlier.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// Events served from the main queue per turn, at most.
const EVENTS_PER_TURN: usize = 1024;

/// Records taken from one partition queue per turn, so that a busy partition does not delay
/// the others' records or the main queue's events.
const RECORDS_PER_TURN: usize = 256;

/// How long the poll thread waits, at shutdown, for the commit thread to release the consumer
/// before closing it. A commit stuck on an unreachable broker can hold it longer; the caller's
/// close timeout bounds the shutdown either way.
const OWNER_WAIT: Duration = Duration::from_secs(30);

/// The running consumer: its poll thread and the means to stop it.
pub struct KafkaConsumer {
    stop: Arc<AtomicBool>,
    closed: oneshot::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

/// The pipeline's [`KafkaControl`] over the consumer.
pub struct ConsumerHandle {
    consumer: Arc<BaseConsumer<SidecarContext>>,
    fetch_paused: Arc<AtomicBool>,
    commits: std::sync::mpsc::Sender<Offsets>,
}

impl KafkaConsumer {
    /// Creates the consumer, subscribes to the configured topics and starts the poll thread.
    /// Returns the running consumer, the pipeline's handle on it and the event stream.
    pub fn start(
        config: &Config,
        stats: Arc<Stats>,
    ) -> Result<(KafkaConsumer, ConsumerHandle, mpsc::UnboundedReceiver<Event>), KafkaError> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let events_tx_for_commits = events_tx.clone();
        let fetch_paused = Arc::new(AtomicBool::new(false));
        let context = SidecarContext {
            events: events_tx.clone(),
            fetch_paused: fetch_paused.clone(),
            closing: AtomicBool::new(false),
            revoke_timeout: config.revoke_timeout,
            stats,
            logs: ClientLogs::new(config.kafka_properties.secret_values()),
            consumer: OnceLock::new(),
            queue_changes: Mutex::new(Vec::new()),
            event_served: AtomicBool::new(false),
        };
        let mut consumer: BaseConsumer<SidecarContext> = config.consumer_config().create_with_context(context)?;
        let wakeup = Arc::new(PollWakeup::default());
        {
            let wakeup = wakeup.clone();
            consumer.set_nonempty_callback(move || wakeup.wake());
        }
        let consumer = Arc::new(consumer);
        let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;

        let stop = Arc::new(AtomicBool::new(false));
        let (closed_tx, closed_rx) = oneshot::channel();
        let buffer_limit = config.partition_buffer;
        let thread = {
            let consumer = consumer.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("kafka-poll".into())
                .spawn(move || poll_loop(consumer, events_tx, wakeup, buffer_limit, stop, closed_tx))
                .map_err(|error| KafkaError::Subscription(format!("starting the poll thread failed: {error}")))?
        };

        let (commits, commit_requests) = std::sync::mpsc::channel();
        {
            let consumer = consumer.clone();
            let events = events_tx_for_commits;
            std::thread::Builder::new()
                .name("kafka-commit".into())
                .spawn(move || commit_loop(consumer, commit_requests, events))
                .map_err(|error| KafkaError::Subscription(format!("starting the commit thread failed: {error}")))?;
        }

        let handle = ConsumerHandle { consumer, fetch_paused, commits };
        Ok((KafkaConsumer { stop, closed: closed_rx, thread: Some(thread) }, handle, events_rx))
    }

    /// Stops polling and closes the consumer, waiting at most `timeout`. Returns false when the
    /// close did not finish in time; the poll thread then goes on closing in the background.
    ///
    /// The pipeline's [`ConsumerHandle`] must be dropped first: the consumer closes when its
    /// last reference goes.
    pub async fn close(mut self, timeout: Duration) -> bool {
        self.stop.store(true, Ordering::Release);
        let closed = tokio::time::timeout(timeout, &mut self.closed).await.is_ok();
        if closed && let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        closed
    }
}

/// The poll thread's state: the consumer, the partition queues it reads and their rooms.
struct PollLoop {
    consumer: Arc<BaseConsumer<SidecarContext>>,
    events: mpsc::UnboundedSender<Event>,
    wakeup: Arc<PollWakeup>,
    /// `SCC_PARTITION_BUFFER`.
    buffer_limit: usize,
    /// The assigned partitions' queues, read in turn.
    partitions: Vec<PartitionReader>,
    /// The index of the partition read first in the next turn, so that no partition is always
    /// read first.
    next: usize,
    topic_names: HashMap<String, Arc<str>>,
}

struct PartitionReader {
    partition: TopicPartition,
    queue: PartitionQueue<SidecarContext>,
    room: Arc<PartitionRoom>,
}

impl PollLoop {
    /// Polls until `stop` is set or the pipeline is gone. Each turn serves the main queue
    /// (rebalances, errors), then takes records from every partition queue that has room, and
    /// parks only when neither gave anything.
    fn run(&mut self, stop: &AtomicBool) {
        self.wakeup.register();
        while !stop.load(Ordering::Acquire) {
            let Some(served_main) = self.serve_main_queue() else { return };
            self.apply_queue_changes();
            let Some(took) = self.serve_partition_queues() else { return };
            if !served_main && !took {
                // A record, an event or freed room unparks the thread; the timeout bounds how
                // quickly it notices a stop request.
                std::thread::park_timeout(IDLE_WAIT);
            }
        }
    }

    /// Serves the main queue until it is empty, or for at most [`EVENTS_PER_TURN`] events so
    /// that a flood of log lines cannot hold up the partitions' records. Returns whether it
    /// contained anything, or `None` when the pipeline is gone.
    fn serve_main_queue(&mut self) -> Option<bool> {
        let mut served = false;
        for _ in 0..EVENTS_PER_TURN {
            self.consumer.context().event_served.store(false, Ordering::Release);
            let event = match self.consumer.poll(Duration::ZERO) {
                None if self.consumer.context().event_served.load(Ordering::Acquire) => {
                    served = true;
                    continue;
                }
                None => return Some(served),
                // Only a partition whose queue could not be split delivers records here.
                Some(Ok(record)) => {
                    let topic = topic_name(&mut self.topic_names, record.topic());
                    Event::Fetched(vec![Fetched { message: Message::from_kafka(&record, topic), slot: None }])
                }
                Some(Err(error)) => Event::ConsumerError(error),
            };
            served = true;
            self.events.send(event).ok()?;
        }
        // More events may be waiting; the caller does not park after a turn that served any.
        Some(served)
    }

    /// Takes the partition queues that rebalance callbacks split or revoked.
    fn apply_queue_changes(&mut self) {
        let changes = std::mem::take(
            &mut *self.consumer.context().queue_changes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for change in changes {
            match change {
                QueueChange::Split { partition, mut queue } => {
                    // An earlier reader of the partition shares the same librdkafka queue, and
                    // dropping it removes the queue's callback, so it goes before the new one
                    // installs its own.
                    self.partitions.retain(|reader| reader.partition != partition);
                    let wakeup = self.wakeup.clone();
                    queue.set_nonempty_callback(move || wakeup.wake());
                    let room = PartitionRoom::new(self.buffer_limit, self.wakeup.clone());
                    self.partitions.push(PartitionReader { partition, queue, room });
                }
                QueueChange::Revoked(partition) => self.partitions.retain(|reader| reader.partition != partition),
            }
        }
    }

    /// Takes up to [`RECORDS_PER_TURN`] records from each partition queue with room, and sends
    /// each partition's records as one event. Returns whether any queue gave anything, or
    /// `None` when the pipeline is gone.
    fn serve_partition_queues(&mut self) -> Option<bool> {
        let count = self.partitions.len();
        let mut took = false;
        for index in 0..count {
            let reader = &self.partitions[(self.next + index) % count];
            let mut batch = Vec::new();
            let mut errors = Vec::new();
            let mut budget = reader.room.available().min(RECORDS_PER_TURN);
            while budget > 0 {
                match reader.queue.poll(Duration::ZERO) {
                    None => break,
                    Some(Ok(record)) => {
                        let topic = reader.partition.topic.clone();
                        batch.push(Fetched {
                            message: Message::from_kafka(&record, topic),
                            slot: Some(reader.room.take()),
                        });
                        budget -= 1;
                    }
                    // Fetch errors of the partition, such as an offset out of range, arrive on
                    // its own queue.
                    Some(Err(error)) => errors.push(Event::ConsumerError(error)),
                }
            }
            took |= !batch.is_empty() || !errors.is_empty();
            for error in errors {
                self.events.send(error).ok()?;
            }
            if !batch.is_empty() {
                self.events.send(Event::Fetched(batch)).ok()?;
            }
        }
        self.next = if count == 0 { 0 } else { (self.next + 1) % count };
        Some(took)
    }
}

fn topic_name(names: &mut HashMap<String, Arc<str>>, topic: &str) -> Arc<str> {
    match names.get(topic) {
        Some(name) => name.clone(),
        None => {
            let name: Arc<str> = Arc::from(topic);
            names.insert(topic.to_owned(), name.clone());
            name
        }
    }
}

fn poll_loop(
    consumer: Arc<BaseConsumer<SidecarContext>>,
    events: mpsc::UnboundedSender<Event>,
    wakeup: Arc<PollWakeup>,
    buffer_limit: usize,
    stop: Arc<AtomicBool>,
    closed: oneshot::Sender<()>,
) {
    let mut polling = PollLoop {
        consumer,
        events,
        wakeup,
        buffer_limit,
        partitions: Vec::new(),
        next: 0,
        topic_names: HashMap::new(),
    };
    polling.run(&stop);
    let PollLoop { consumer, partitions, .. } = polling;

    info!("closing the Kafka consumer");
    consumer.context().closing.store(true, Ordering::Release);
    // Partition queues hold references to the consumer; drop them so that it can close.
    drop(partitions);
    consumer.context().queue_changes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
    // The commit thread drops its reference once the pipeline's handle is gone; wait for it so
    // that the close happens here, where the caller's timeout observes it.
    let waiting_since = std::time::Instant::now();
    while Arc::strong_count(&consumer) > 1 && waiting_since.elapsed() < OWNER_WAIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    if Arc::strong_count(&consumer) > 1 {
        warn!("the consumer is still referenced by a commit in progress; it closes when that commit returns");
    }
    // Dropping the last reference leaves the group and destroys the client.
    drop(consumer);
    info!("Kafka consumer closed");
    let _ = closed.send(());
}

/// Makes each requested commit synchronously, in request order, until the pipeline drops its
/// handle.
fn commit_loop(
    consumer: Arc<BaseConsumer<SidecarContext>>,
    requests: std::sync::mpsc::Receiver<Offsets>,
    events: mpsc::UnboundedSender<Event>,
) {
    for offsets in requests {
        let result = offsets_list(&offsets).and_then(|list| consumer.commit(&list, CommitMode::Sync));
        if events.send(Event::Committed { result, offsets }).is_err() {
            break;
        }
    }
}

impl KafkaControl for ConsumerHandle {
    fn pause(&self, partitions: &[TopicPartition]) {
        if partitions.is_empty() {
            return;
        }
        if let Err(error) = self.consumer.pause(&partitions_list(partitions)) {
            debug!(%error, partitions = %describe(partitions), "pausing partitions failed");
        }
    }

    fn resume(&self, partitions: &[TopicPartition]) {
        if partitions.is_empty() {
            return;
        }
        if let Err(error) = self.consumer.resume(&partitions_list(partitions)) {
            debug!(%error, partitions = %describe(partitions), "resuming partitions failed");
        }
    }

    fn commit(&self, offsets: &[(TopicPartition, i64)]) -> Result<(), KafkaError> {
        self.commits
            .send(offsets.to_vec())
            .map_err(|_| KafkaError::Subscription("the commit thread has stopped".to_owned()))
    }

    fn set_fetch_paused(&self, paused: bool) {
        self.fetch_paused.store(paused, Ordering::Release);
    }
}
