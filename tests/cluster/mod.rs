//! Fixtures for the consumer group and broker fault tests. They provide an in-process handler
//! that records every offset it was called for, a producer that keeps messages flowing in the
//! background, the broker's end offsets, and a sampler that watches committed offsets for
//! regressions.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_scc::{Handler, HandlerError, Message, Stats};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use crate::support::Broker;

/// librdkafka settings that keep group rebalances on the mock cluster as short as it allows.
/// The mock coordinator (librdkafka 2.12, `rdkafka_mock_cgrp.c`) waits 3 s for more members
/// when the first member joins an empty group, and `session.timeout.ms - 1000` for members to
/// rejoin after the membership changed. A session timeout no longer than that first wait
/// expires the first member while its join is pending, and the join then hangs (seen with
/// 2 s). 4 s leaves a margin, so every rebalance takes about 3 s. Heartbeats every 250 ms tell
/// a member about a rebalance well within that wait.
pub const FAST_GROUP: &[(&str, &str)] =
    &[("KAFKA_CFG_SESSION_TIMEOUT_MS", "4000"), ("KAFKA_CFG_HEARTBEAT_INTERVAL_MS", "250")];

/// Joins `FAST_GROUP` with test-specific variables; later entries win in `support::config`.
pub fn with_fast_group<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut vars: Vec<(&str, &str)> = FAST_GROUP.to_vec();
    vars.extend_from_slice(extra);
    vars
}

/// What an [`OffsetRecorder`] returns for one call, given the message and the attempt number.
pub type Outcome = Arc<dyn Fn(&Message, u32) -> Result<(), HandlerError> + Send + Sync>;

/// One call an [`OffsetRecorder`] received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedCall {
    pub partition: i32,
    pub offset: i64,
    pub attempt: u32,
    pub succeeded: bool,
}

/// An in-process [`Handler`] that records every call, after an optional amount of simulated
/// work, and returns what its outcome function returns. Clones share the record, so the
/// sidecars of one group can feed one recorder.
#[derive(Clone)]
pub struct OffsetRecorder {
    calls: Arc<Mutex<Vec<RecordedCall>>>,
    changed: Arc<Notify>,
    work: Duration,
    outcome: Outcome,
}

impl OffsetRecorder {
    /// Creates a recorder whose calls all succeed after `work`.
    pub fn succeeding(work: Duration) -> OffsetRecorder {
        OffsetRecorder::new(work, |_, _| Ok(()))
    }

    pub fn new(
        work: Duration,
        outcome: impl Fn(&Message, u32) -> Result<(), HandlerError> + Send + Sync + 'static,
    ) -> OffsetRecorder {
        OffsetRecorder { calls: Arc::default(), changed: Arc::new(Notify::new()), work, outcome: Arc::new(outcome) }
    }

    pub fn calls(&self) -> Vec<RecordedCall> {
        self.calls.lock().unwrap().clone()
    }

    /// Offsets whose call succeeded at least once, per partition.
    pub fn handled(&self) -> BTreeMap<i32, BTreeSet<i64>> {
        let mut handled: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
        for call in self.calls.lock().unwrap().iter().filter(|call| call.succeeded) {
            handled.entry(call.partition).or_default().insert(call.offset);
        }
        handled
    }

    /// Offsets below `end_offsets` (index = partition) that no call succeeded for.
    pub fn missing(&self, end_offsets: &[i64]) -> Vec<(i32, i64)> {
        let handled = self.handled();
        let mut missing = Vec::new();
        for (partition, end) in (0..).zip(end_offsets) {
            let seen = handled.get(&partition);
            missing.extend(
                (0..*end)
                    .filter(|offset| !seen.is_some_and(|seen| seen.contains(offset)))
                    .map(|offset| (partition, offset)),
            );
        }
        missing
    }

    /// Waits until `condition` holds for the calls so far, re-checking after every call, for
    /// at most `timeout`. Returns the calls, or the last calls seen as the error.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&[RecordedCall]) -> bool,
    ) -> Result<Vec<RecordedCall>, Vec<RecordedCall>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let calls = self.calls();
            if condition(&calls) {
                return Ok(calls);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(self.calls());
            }
        }
    }

    /// Waits until every offset below `end_offsets` was handled. Returns the offsets still
    /// missing at the timeout as the error.
    pub async fn wait_for_all(&self, timeout: Duration, end_offsets: &[i64]) -> Result<(), Vec<(i32, i64)>> {
        match self.wait_for(timeout, |_| self.missing(end_offsets).is_empty()).await {
            Ok(_) => Ok(()),
            Err(_) => Err(self.missing(end_offsets)),
        }
    }
}

impl Handler for OffsetRecorder {
    async fn handle(&self, message: &Message, attempt: u32) -> Result<(), HandlerError> {
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        let result = (self.outcome)(message, attempt);
        let call =
            RecordedCall { partition: message.partition, offset: message.offset, attempt, succeeded: result.is_ok() };
        self.calls.lock().unwrap().push(call);
        self.changed.notify_waiters();
        result
    }
}

/// A producer task that sends one record per tick, to the partitions in turn, until stopped.
pub struct BackgroundProducer {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Vec<(i32, i64)>>,
}

impl BackgroundProducer {
    /// Starts producing to `topic`'s `partitions`, one record every `interval`.
    pub fn start(broker: &Broker, topic: &str, partitions: i32, interval: Duration) -> BackgroundProducer {
        let producer = broker.producer();
        let topic = topic.to_owned();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut delivered = Vec::new();
            let mut ticks = tokio::time::interval(interval);
            let mut sequence: u64 = 0;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = ticks.tick() => {}
                }
                let partition = i32::try_from(sequence % partitions as u64).expect("partition fits i32");
                let payload = format!("v{sequence}");
                let key = format!("k{}", sequence % 7);
                let record = FutureRecord::to(&topic).partition(partition).key(&key).payload(&payload);
                // Waits for the acknowledgement, which during a broker outage comes only
                // after the broker is back.
                let delivery = producer.send(record, Duration::from_secs(30)).await.expect("record acknowledged");
                delivered.push((delivery.partition, delivery.offset));
                sequence += 1;
            }
            delivered
        });
        BackgroundProducer { stop: Some(stop), task }
    }

    /// Stops producing and returns the partition and offset of every acknowledged record.
    pub async fn stop(mut self) -> Vec<(i32, i64)> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("producer task did not panic")
    }
}

/// Reads the end offset (high watermark) of every partition of `topic` from the broker.
pub async fn end_offsets(broker: &Broker, topic: &str, partitions: i32) -> Vec<i64> {
    let bootstrap = broker.bootstrap.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("watermark consumer created");
        (0..partitions)
            .map(|partition| {
                let (_, high) =
                    consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10)).expect("watermarks read");
                high
            })
            .collect()
    })
    .await
    .expect("watermarks read on a blocking thread")
}

/// A decrease of one partition's committed offset between two samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Regression {
    /// Where the samples came from: `broker` or `stats`.
    pub source: &'static str,
    pub partition: i32,
    pub before: i64,
    pub after: i64,
}

/// The samples a [`CommitSampler`] took and the decreases among them.
#[derive(Clone, Debug, Default)]
pub struct SampleReport {
    /// Broker reads made.
    pub broker_samples: usize,
    /// Stats snapshots taken.
    pub stats_samples: usize,
    pub regressions: Vec<Regression>,
}

/// Samples a group's committed offsets from the broker and from a sidecar's stats until
/// stopped, and records every decrease. `Stats` keeps the maximum offset committed per
/// partition, so its samples check that contract, while the broker's samples check what
/// kafka-scc actually committed.
pub struct CommitSampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<SampleReport>,
}

/// Pause between two samples, on top of the few milliseconds that a broker read takes.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(40);

impl CommitSampler {
    pub fn start(broker: &Broker, group: &str, topic: &str, partitions: i32, stats: Arc<Stats>) -> CommitSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = stop.clone();
            let bootstrap = broker.bootstrap.clone();
            let group = group.to_owned();
            let topic = topic.to_owned();
            tokio::spawn(async move {
                let mut report = SampleReport::default();
                let mut last_broker: BTreeMap<i32, i64> = BTreeMap::new();
                let mut last_stats: BTreeMap<i32, i64> = BTreeMap::new();
                while !stop.load(Ordering::Acquire) {
                    let from_broker = {
                        let (bootstrap, group, topic) = (bootstrap.clone(), group.clone(), topic.clone());
                        tokio::task::spawn_blocking(move || read_committed(&bootstrap, &group, &topic, partitions))
                            .await
                            .expect("committed offsets read on a blocking thread")
                    };
                    report.broker_samples += 1;
                    for (partition, offset) in from_broker.into_iter().filter_map(|(p, o)| Some((p, o?))) {
                        check_sample(&mut report, &mut last_broker, "broker", partition, offset);
                    }

                    let snapshot = stats.snapshot();
                    report.stats_samples += 1;
                    for partition in 0..partitions {
                        if let Some(offset) = snapshot.committed_offset(&topic, partition) {
                            check_sample(&mut report, &mut last_stats, "stats", partition, offset);
                        }
                    }
                    tokio::time::sleep(SAMPLE_INTERVAL).await;
                }
                report
            })
        };
        CommitSampler { stop, task }
    }

    pub async fn stop(self) -> SampleReport {
        self.stop.store(true, Ordering::Release);
        self.task.await.expect("sampler task did not panic")
    }
}

fn check_sample(
    report: &mut SampleReport,
    last: &mut BTreeMap<i32, i64>,
    source: &'static str,
    partition: i32,
    offset: i64,
) {
    if let Some(before) = last.insert(partition, offset)
        && offset < before
    {
        report.regressions.push(Regression { source, partition, before, after: offset });
    }
}

/// Reads a group's committed offsets like `Broker::committed`, which a spawned sampler task
/// cannot call because it borrows the `Broker`.
fn read_committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, Option<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("inspection consumer created");
    let mut list = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).expect("committed offsets read");
    committed
        .elements()
        .iter()
        .map(|element| {
            let offset = match element.offset() {
                rdkafka::Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            (element.partition(), offset)
        })
        .collect()
}

/// Polls `condition` every 20 ms until it holds, for at most `timeout`, and returns whether it
/// held. It serves conditions that nothing notifies about, such as the union of two sidecars'
/// assignments.
pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
