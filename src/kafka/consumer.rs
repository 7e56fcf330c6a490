//! The consumer and its poll thread.
//!
//! One dedicated OS thread owns the polling: it calls librdkafka's `poll` in a loop, forwards
//! every record and callback to the pipeline as an [`Event`], and never waits on the pipeline
//! except during a revocation. Keeping it off the async runtime means a busy runtime cannot
//! delay polling past `max.poll.interval.ms`, and the blocking rebalance handshake cannot stall
//! a runtime worker.
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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::client_logs::ClientLogs;
use super::context::{SidecarContext, describe, offsets_list, partitions_list};
use super::{Event, KafkaControl, Offsets};
use crate::config::Config;
use crate::message::{Message, TopicPartition};
use crate::telemetry::Stats;

/// How long one `poll` call may wait for a record; it bounds how quickly the thread notices a
/// stop request.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

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
        };
        let consumer: BaseConsumer<SidecarContext> = config.consumer_config().create_with_context(context)?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let consumer = Arc::new(consumer);

        let stop = Arc::new(AtomicBool::new(false));
        let (closed_tx, closed_rx) = oneshot::channel();
        let thread = {
            let consumer = consumer.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("kafka-poll".into())
                .spawn(move || poll_loop(consumer, events_tx, stop, closed_tx))
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

fn poll_loop(
    consumer: Arc<BaseConsumer<SidecarContext>>,
    events: mpsc::UnboundedSender<Event>,
    stop: Arc<AtomicBool>,
    closed: oneshot::Sender<()>,
) {
    let mut topic_names: HashMap<String, Arc<str>> = HashMap::new();
    while !stop.load(Ordering::Acquire) {
        let event = match consumer.poll(POLL_TIMEOUT) {
            None => continue,
            Some(Ok(record)) => {
                let topic = match topic_names.get(record.topic()) {
                    Some(topic) => topic.clone(),
                    None => {
                        let topic: Arc<str> = Arc::from(record.topic());
                        topic_names.insert(record.topic().to_owned(), topic.clone());
                        topic
                    }
                };
                Event::Fetched(Message::from_kafka(&record, topic))
            }
            Some(Err(error)) => Event::ConsumerError(error),
        };
        if events.send(event).is_err() {
            break;
        }
    }

    info!("closing the Kafka consumer");
    consumer.context().closing.store(true, Ordering::Release);
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
