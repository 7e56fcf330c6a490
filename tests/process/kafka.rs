//! Kafka from the test's side: producing records, reading end offsets, reading a group's
//! committed offsets without joining the group, and sampling them for regressions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// Bound on one request to the broker.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts the producer's delivery reports.
#[derive(Default)]
struct DeliveryCounts {
    delivered: AtomicU64,
    failed: AtomicU64,
}

struct CountingContext(Arc<DeliveryCounts>);

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() { &self.0.delivered } else { &self.0.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A producer that counts acknowledged and failed records.
pub struct TestProducer {
    producer: BaseProducer<CountingContext>,
    counts: Arc<DeliveryCounts>,
    topic: String,
    partitions: i32,
    keys: usize,
    sent: u64,
}

impl TestProducer {
    /// Produces to `topic`'s `partitions` in turn, with keys cycling through `keys` values, so
    /// that key-ordered processing finishes out of offset order within a partition.
    pub fn new(bootstrap: &str, topic: &str, partitions: i32, keys: usize) -> TestProducer {
        let counts = Arc::new(DeliveryCounts::default());
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "200000")
            .create_with_context(CountingContext(counts.clone()))
            .expect("producer created");
        TestProducer { producer, counts, topic: topic.to_owned(), partitions, keys, sent: 0 }
    }

    /// Queues the next record, waiting while librdkafka's queue is full.
    pub fn send_next(&mut self) {
        let index = self.sent;
        let partition = i32::try_from(index % u64::try_from(self.partitions).unwrap()).unwrap();
        let key = format!("k{}", index % self.keys as u64);
        let payload = format!("{{\"n\":{index}}}");
        let mut record = BaseRecord::to(&self.topic).partition(partition).key(&key).payload(&payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((error, _)) => panic!("queuing record {index} failed: {error}"),
            }
        }
        self.sent += 1;
        self.producer.poll(Duration::ZERO);
    }

    /// Waits until every queued record was acknowledged; panics when one failed.
    pub fn flush(&self) {
        self.producer.flush(Duration::from_secs(60)).expect("producer flushed");
        let failed = self.counts.failed.load(Ordering::Relaxed);
        let delivered = self.counts.delivered.load(Ordering::Relaxed);
        assert_eq!(failed, 0, "{failed} records failed to deliver");
        assert_eq!(delivered, self.sent, "delivery reports for {delivered} of {} records", self.sent);
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }
}

/// Produces `count` records to `topic` and waits for every acknowledgement.
pub fn produce(bootstrap: &str, topic: &str, partitions: i32, count: usize, keys: usize) {
    let mut producer = TestProducer::new(bootstrap, topic, partitions, keys);
    for _ in 0..count {
        producer.send_next();
    }
    producer.flush();
}

/// A thread that produces at a steady rate until stopped.
pub struct BackgroundProducer {
    stop: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl BackgroundProducer {
    /// Produces one record every `interval`, to the partitions in turn, until `total` records
    /// were queued or [`BackgroundProducer::finish`] is called.
    pub fn start(bootstrap: &str, topic: &str, partitions: i32, interval: Duration, total: u64) -> BackgroundProducer {
        let stop = Arc::new(AtomicBool::new(false));
        let produced = Arc::new(AtomicU64::new(0));
        let mut producer = TestProducer::new(bootstrap, topic, partitions, 13);
        let thread = {
            let stop = stop.clone();
            let produced = produced.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::Acquire) && producer.sent() < total {
                    producer.send_next();
                    produced.store(producer.sent(), Ordering::Release);
                    // Pace against the start time, so a slow poll does not lower the rate.
                    let due = started + interval * u32::try_from(producer.sent()).unwrap();
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
                producer.flush();
            })
        };
        BackgroundProducer { stop, produced, thread }
    }

    /// Records queued so far.
    pub fn produced(&self) -> u64 {
        self.produced.load(Ordering::Acquire)
    }

    /// Waits until the producer queued all its records, for at most `timeout`.
    pub fn wait_until_done(&self, timeout: Duration) -> bool {
        super::eventually(timeout, || self.thread.is_finished())
    }

    /// Stops producing and waits for every acknowledgement; returns the records produced.
    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Release);
        let produced = self.produced.clone();
        self.thread.join().expect("producer thread did not panic");
        produced.load(Ordering::Acquire)
    }
}

/// Reads offsets from the broker through a consumer that never subscribes or joins a group,
/// so reading the group's committed offsets does not trigger a rebalance.
pub struct OffsetReader {
    consumer: BaseConsumer,
    topic: String,
    partitions: i32,
}

impl OffsetReader {
    pub fn new(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> OffsetReader {
        let consumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("offset reader created");
        OffsetReader { consumer, topic: topic.to_owned(), partitions }
    }

    /// Reads the group's committed offset per partition (index = partition), with `None` where
    /// nothing was committed.
    pub fn committed(&self) -> KafkaResult<Vec<Option<i64>>> {
        let mut list = TopicPartitionList::new();
        for partition in 0..self.partitions {
            list.add_partition(&self.topic, partition);
        }
        let committed = self.consumer.committed_offsets(list, REQUEST_TIMEOUT)?;
        let mut offsets = vec![None; usize::try_from(self.partitions).unwrap()];
        for element in committed.elements() {
            if let Offset::Offset(offset) = element.offset() {
                offsets[usize::try_from(element.partition()).unwrap()] = Some(offset);
            }
        }
        Ok(offsets)
    }

    /// Reads the end offset (high watermark) of every partition.
    pub fn end_offsets(&self) -> Vec<i64> {
        (0..self.partitions)
            .map(|partition| {
                let (_, high) =
                    self.consumer.fetch_watermarks(&self.topic, partition, REQUEST_TIMEOUT).expect("watermarks read");
                high
            })
            .collect()
    }

    /// Waits until the committed offsets equal `expected`; returns the last offsets read as
    /// the error at the timeout.
    pub fn wait_for_committed(&self, expected: &[i64], timeout: Duration) -> Result<(), Vec<Option<i64>>> {
        let wanted: Vec<Option<i64>> = expected.iter().copied().map(Some).collect();
        let mut last = Vec::new();
        let reached = super::eventually(timeout, || {
            if let Ok(committed) = self.committed() {
                last = committed;
            }
            last == wanted
        });
        if reached { Ok(()) } else { Err(last) }
    }
}

/// One read of the committed offsets.
#[derive(Clone, Debug)]
pub struct CommitSample {
    pub at: Instant,
    pub offsets: Vec<Option<i64>>,
}

/// A decrease of one partition's committed offset between two samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Regression {
    pub partition: usize,
    pub before: i64,
    pub after: i64,
}

/// A thread that reads a group's committed offsets every `interval` until stopped.
pub struct CommitSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<CommitSample>>,
}

impl CommitSampler {
    pub fn start(bootstrap: &str, group: &str, topic: &str, partitions: i32, interval: Duration) -> CommitSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let reader = OffsetReader::new(bootstrap, group, topic, partitions);
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    // A read can fail while the coordinator is busy; the next one is taken anyway.
                    if let Ok(offsets) = reader.committed() {
                        samples.push(CommitSample { at: Instant::now(), offsets });
                    }
                    std::thread::sleep(interval);
                }
                samples
            })
        };
        CommitSampler { stop, thread }
    }

    pub fn stop(self) -> Vec<CommitSample> {
        self.stop.store(true, Ordering::Release);
        self.thread.join().expect("sampler thread did not panic")
    }
}

/// Returns every decrease of a committed offset from one sample to a later one.
pub fn regressions(samples: &[CommitSample]) -> Vec<Regression> {
    let mut highest: Vec<Option<i64>> = Vec::new();
    let mut found = Vec::new();
    for sample in samples {
        highest.resize(sample.offsets.len(), None);
        for (partition, offset) in sample.offsets.iter().enumerate() {
            let Some(offset) = *offset else { continue };
            if let Some(before) = highest[partition]
                && offset < before
            {
                found.push(Regression { partition, before, after: offset });
            }
            highest[partition] = Some(highest[partition].map_or(offset, |before| before.max(offset)));
        }
    }
    found
}
