//! Pipeline logic on virtual time: the pipeline is driven through its event channel and acts
//! on a recording [`KafkaControl`], with an in-process handler. Kafka itself is covered by the
//! integration tests; these tests pin down retry timing, the gate and commit ordering exactly.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Pipeline, PipelineSettings};
use crate::backoff::Backoff;
use crate::config::ProcessingOrder;
use crate::handler::{Handler, HandlerError};
use crate::kafka::{Event, Fetched, KafkaControl};
use crate::message::{Message, TimestampType, TopicPartition};
use crate::telemetry::Stats;

const SEED: u64 = 17;
const BASE: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_millis(1_000);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Pause(Vec<TopicPartition>),
    Resume(Vec<TopicPartition>),
    Commit(Vec<(TopicPartition, i64)>),
}

/// Records every call and acknowledges commits at once, as a healthy broker would.
struct RecordingControl {
    calls: Arc<Mutex<Vec<Call>>>,
    events: mpsc::UnboundedSender<Event>,
    /// Commits still to fail, as a broker whose coordinator moved would.
    failing_commits: Arc<AtomicU32>,
}

impl KafkaControl for RecordingControl {
    fn pause(&self, partitions: &[TopicPartition]) {
        if !partitions.is_empty() {
            self.calls.lock().unwrap().push(Call::Pause(partitions.to_vec()));
        }
    }

    fn resume(&self, partitions: &[TopicPartition]) {
        if !partitions.is_empty() {
            self.calls.lock().unwrap().push(Call::Resume(partitions.to_vec()));
        }
    }

    fn commit(&self, offsets: &[(TopicPartition, i64)]) -> Result<(), rdkafka::error::KafkaError> {
        self.calls.lock().unwrap().push(Call::Commit(offsets.to_vec()));
        let fail = self.failing_commits.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        let result = if fail {
            Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NotCoordinator))
        } else {
            Ok(())
        };
        let _ = self.events.send(Event::Committed { result, offsets: offsets.to_vec() });
        Ok(())
    }

    fn set_fetch_paused(&self, _paused: bool) {}
}

/// Fails chosen offsets with a pause-eligible error for their first attempts, and records the
/// virtual time of every call.
#[derive(Default)]
struct FlakyHandler {
    failures: HashMap<i64, u32>,
    calls: Mutex<Vec<(i64, u32, Instant)>>,
}

impl Handler for FlakyHandler {
    async fn handle(&self, message: &Message, attempt: u32) -> Result<(), HandlerError> {
        self.calls.lock().unwrap().push((message.offset, attempt, Instant::now()));
        tokio::time::sleep(Duration::from_millis(1)).await;
        match self.failures.get(&message.offset) {
            Some(failing) if attempt <= *failing => {
                Err(HandlerError::pause_eligible(Some(tonic::Code::Unavailable), "downstream down"))
            }
            _ => Ok(()),
        }
    }
}

/// Builds the event of one fetched message, outside any buffer bound.
fn fetched(partition: &TopicPartition, offset: i64) -> Event {
    Event::Fetched(vec![Fetched { message: message(partition, offset), slot: None }])
}

fn message(partition: &TopicPartition, offset: i64) -> Message {
    Message {
        topic: partition.topic.clone(),
        partition: partition.partition,
        offset,
        key: Some(Bytes::from(format!("key-{offset}"))),
        value: Some(Bytes::from_static(b"{}")),
        headers: Vec::new(),
        timestamp_ms: 0,
        timestamp_type: TimestampType::CreateTime,
        trace_id: crate::message::new_trace_id(),
    }
}

struct Harness<H> {
    events: mpsc::UnboundedSender<Event>,
    calls: Arc<Mutex<Vec<Call>>>,
    stats: Arc<Stats>,
    handler: Arc<H>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<super::ShutdownReport>,
}

fn start<H: Handler>(handler: H, order: ProcessingOrder) -> Harness<H> {
    start_with_commit_failures(handler, order, 0)
}

fn start_with_commit_failures<H: Handler>(handler: H, order: ProcessingOrder, failing_commits: u32) -> Harness<H> {
    let (events, receiver) = mpsc::unbounded_channel();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let stats = Arc::new(Stats::new());
    let handler = Arc::new(handler);
    let control = RecordingControl {
        calls: calls.clone(),
        events: events.clone(),
        failing_commits: Arc::new(AtomicU32::new(failing_commits)),
    };
    let settings = PipelineSettings {
        max_in_flight: 8,
        processing_order: order,
        commit_interval: Duration::from_millis(10),
        commit_unhealthy_after: Duration::from_secs(1),
        revoke_timeout: Duration::from_secs(1),
        backoff: Backoff::with_seed(BASE, MAX, SEED),
    };
    let pipeline = Pipeline::new(handler.clone(), control, receiver, stats.clone(), settings);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(pipeline.run(
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    Harness { events, calls, stats, handler, stop, task }
}

fn commits(calls: &[Call]) -> Vec<i64> {
    calls
        .iter()
        .filter_map(|call| match call {
            Call::Commit(offsets) => Some(offsets[0].1),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn probe_delays_follow_seeded_backoff() {
    let partition = TopicPartition::new("t", 0);
    let handler = FlakyHandler { failures: [(2, 3)].into_iter().collect(), ..FlakyHandler::default() };
    let harness = start(handler, ProcessingOrder::Partition);
    harness.events.send(Event::Assigned { partitions: vec![partition.clone()], paused: false }).unwrap();
    for offset in 0..5 {
        harness.events.send(fetched(&partition, offset)).unwrap();
    }

    let done = harness.stats.wait_until(Duration::from_secs(60), |s| s.committed_offset("t", 0) == Some(5)).await;
    assert!(done.is_ok(), "{done:?}");

    let attempts: Vec<Instant> = harness
        .handler
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(offset, _, _)| *offset == 2)
        .map(|(_, _, at)| *at)
        .collect();
    assert_eq!(attempts.len(), 4);
    let mut expected = Backoff::with_seed(BASE, MAX, SEED);
    for (round, pair) in attempts.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let delay = expected.delay(round as u32 + 1);
        // The gap is the backoff delay plus the failed call's own 1 ms, with the timer's
        // millisecond rounding.
        assert!(gap >= delay, "probe {}: gap {gap:?} below delay {delay:?}", round + 1);
        assert!(gap <= delay + Duration::from_millis(3), "probe {}: gap {gap:?} over delay {delay:?}", round + 1);
    }
    let _ = harness.stop.send(());
    harness.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn nothing_committed_past_failing_offset() {
    let partition = TopicPartition::new("t", 0);
    let handler = FlakyHandler { failures: [(2, 4)].into_iter().collect(), ..FlakyHandler::default() };
    let harness = start(handler, ProcessingOrder::Unordered);
    harness.events.send(Event::Assigned { partitions: vec![partition.clone()], paused: false }).unwrap();
    for offset in 0..6 {
        harness.events.send(fetched(&partition, offset)).unwrap();
    }

    let done = harness.stats.wait_until(Duration::from_secs(60), |s| s.committed_offset("t", 0) == Some(6)).await;
    assert!(done.is_ok(), "{done:?}");

    let calls = harness.calls.lock().unwrap().clone();
    let committed = commits(&calls);
    let success_index = committed.iter().position(|offset| *offset > 2).expect("a commit past the failure");
    assert!(committed[..success_index].iter().all(|offset| *offset <= 2), "{committed:?}");
    assert!(committed.windows(2).all(|pair| pair[0] < pair[1]), "{committed:?}");
    let _ = harness.stop.send(());
    harness.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn gate_pauses_then_resumes_partitions() {
    let partition = TopicPartition::new("t", 0);
    let handler = FlakyHandler { failures: [(0, 1)].into_iter().collect(), ..FlakyHandler::default() };
    let harness = start(handler, ProcessingOrder::Key);
    harness.events.send(Event::Assigned { partitions: vec![partition.clone()], paused: false }).unwrap();
    harness.events.send(fetched(&partition, 0)).unwrap();

    let done = harness.stats.wait_until(Duration::from_secs(60), |s| s.committed_offset("t", 0) == Some(1)).await;
    let snapshot = done.expect("offset 0 committed after its retry");
    assert_eq!(snapshot.gate_closures, 1);
    assert!(snapshot.gate_open);

    let calls = harness.calls.lock().unwrap().clone();
    let pause = calls.iter().position(|call| *call == Call::Pause(vec![partition.clone()]));
    let resume = calls.iter().position(|call| *call == Call::Resume(vec![partition.clone()]));
    assert!(pause.is_some(), "{calls:?}");
    assert!(resume > pause, "{calls:?}");
    let _ = harness.stop.send(());
    harness.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn revocation_replies_with_finished_offsets() {
    let partition = TopicPartition::new("t", 0);
    let handler = FlakyHandler { failures: [(3, u32::MAX)].into_iter().collect(), ..FlakyHandler::default() };
    let harness = start(handler, ProcessingOrder::Unordered);
    harness.events.send(Event::Assigned { partitions: vec![partition.clone()], paused: false }).unwrap();
    for offset in 0..6 {
        harness.events.send(fetched(&partition, offset)).unwrap();
    }
    let handled = harness.stats.wait_until(Duration::from_secs(60), |s| s.succeeded == 5).await;
    assert!(handled.is_ok(), "{handled:?}");

    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    harness.events.send(Event::Revoked { partitions: vec![partition.clone()], reply }).unwrap();
    let offsets = tokio::task::spawn_blocking(move || answer.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the pipeline answers the revocation");
    // Offset 3 never succeeds, so nothing past it may be committed for the next owner.
    assert!(offsets.iter().all(|(_, offset)| *offset <= 3), "{offsets:?}");
    let revoked = harness.stats.wait_until(Duration::from_secs(60), |s| s.assigned.is_empty()).await;
    assert!(revoked.is_ok(), "{revoked:?}");
    let _ = harness.stop.send(());
    let report = harness.task.await.unwrap();
    assert_eq!(report.uncommitted_retries, 0);
}

#[tokio::test(start_paused = true)]
async fn failed_commits_retry_and_report_health() {
    let partition = TopicPartition::new("t", 0);
    let harness = start_with_commit_failures(FlakyHandler::default(), ProcessingOrder::Key, 20);
    harness.events.send(Event::Assigned { partitions: vec![partition.clone()], paused: false }).unwrap();
    for offset in 0..3 {
        harness.events.send(fetched(&partition, offset)).unwrap();
    }

    let unhealthy = harness.stats.wait_until(Duration::from_secs(600), |s| !s.commits_healthy).await;
    assert!(unhealthy.is_ok(), "{unhealthy:?}");
    let done = harness.stats.wait_until(Duration::from_secs(600), |s| s.committed_offset("t", 0) == Some(3)).await;
    let snapshot = done.expect("the commit lands once the broker accepts it");
    assert_eq!(snapshot.commit_failures, 20);
    assert!(snapshot.commits_healthy);

    let calls = harness.calls.lock().unwrap().clone();
    let committed = commits(&calls);
    assert!(committed.windows(2).all(|pair| pair[0] <= pair[1]), "{committed:?}");
    let _ = harness.stop.send(());
    harness.task.await.unwrap();
}

/// One message as a [`BatchingHandler`] received it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Received {
    /// Index of the batch among all batches, or `None` for a `handle` call.
    batch: Option<usize>,
    partition: i32,
    key: Option<Bytes>,
    offset: i64,
    attempt: u32,
}

/// Takes batches of up to `max_batch_len` messages and records every message it receives, in
/// order of receipt. Offsets in `flaky` fail pause-eligible on their first attempt; offsets in
/// `rejected` always fail non-pausing. Every call takes 1 ms, so that calls started together
/// finish together on virtual time.
#[derive(Default)]
struct BatchingHandler {
    max_batch_len: usize,
    flaky: HashSet<i64>,
    rejected: HashSet<i64>,
    received: Mutex<Vec<Received>>,
    batches: AtomicU32,
}

impl BatchingHandler {
    fn new(max_batch_len: usize) -> BatchingHandler {
        BatchingHandler { max_batch_len, ..BatchingHandler::default() }
    }

    fn receive(&self, batch: Option<usize>, message: &Message, attempt: u32) {
        let received =
            Received { batch, partition: message.partition, key: message.key.clone(), offset: message.offset, attempt };
        self.received.lock().unwrap().push(received);
    }

    fn outcome(&self, message: &Message, attempt: u32) -> Result<(), HandlerError> {
        if self.rejected.contains(&message.offset) {
            Err(HandlerError::non_pausing(Some(tonic::Code::InvalidArgument), "bad record"))
        } else if self.flaky.contains(&message.offset) && attempt == 1 {
            Err(HandlerError::pause_eligible(Some(tonic::Code::Unavailable), "downstream down"))
        } else {
            Ok(())
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Returns the messages of every batch, in batch order.
    fn batches(&self) -> Vec<Vec<Received>> {
        let mut batches: Vec<Vec<Received>> = Vec::new();
        for received in self.received().into_iter().filter(|received| received.batch.is_some()) {
            let index = received.batch.expect("filtered to batches");
            if batches.len() <= index {
                batches.resize(index + 1, Vec::new());
            }
            batches[index].push(received);
        }
        batches
    }
}

impl Handler for BatchingHandler {
    async fn handle(&self, message: &Message, attempt: u32) -> Result<(), HandlerError> {
        self.receive(None, message, attempt);
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.outcome(message, attempt)
    }

    async fn handle_batch(&self, batch: &[(&Message, u32)]) -> Vec<Result<(), HandlerError>> {
        let index = self.batches.fetch_add(1, Ordering::SeqCst) as usize;
        for (message, attempt) in batch {
            self.receive(Some(index), message, *attempt);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        batch.iter().map(|(message, attempt)| self.outcome(message, *attempt)).collect()
    }

    fn max_batch_len(&self) -> usize {
        self.max_batch_len
    }
}

/// Builds a message of `partition` whose key is one of `keys` distinct keys.
fn keyed_message(partition: &TopicPartition, offset: i64, keys: i64) -> Message {
    Message { key: Some(Bytes::from(format!("key-{}", offset % keys))), ..message(partition, offset) }
}

/// The lane of a received message: its partition, and its key under key order.
type Lane = (i32, Option<Bytes>);

/// Waits until partitions 0 to `partitions - 1` of topic `t` have `offset` committed.
async fn wait_until_all_committed<H>(harness: &Harness<H>, partitions: i32, offset: i64) {
    let done = harness
        .stats
        .wait_until(Duration::from_secs(60), |s| (0..partitions).all(|n| s.committed_offset("t", n) == Some(offset)))
        .await;
    assert!(done.is_ok(), "{done:?}");
}

/// Checks that the handler received at least one batch and that no batch contains two
/// messages of one lane; returns the batches.
fn assert_batches_keep_lanes_apart(
    handler: &BatchingHandler,
    lane_of: impl Fn(&Received) -> Lane,
) -> Vec<Vec<Received>> {
    let batches = handler.batches();
    assert!(!batches.is_empty(), "no message was sent in a batch");
    for batch in &batches {
        let lanes: HashSet<Lane> = batch.iter().map(&lane_of).collect();
        assert_eq!(lanes.len(), batch.len(), "two messages of one lane in a batch: {batch:?}");
    }
    batches
}

/// Checks what every ordering mode promises: each message was received once on its first
/// attempt, and each lane's messages were first received in offset order.
fn assert_handled_once_in_lane_order(received: &[Received], lane_of: impl Fn(&Received) -> Lane) {
    let mut first_attempts: Vec<&Received> = received.iter().filter(|received| received.attempt == 1).collect();
    let distinct: HashSet<(i32, i64)> =
        first_attempts.iter().map(|received| (received.partition, received.offset)).collect();
    assert_eq!(distinct.len(), first_attempts.len(), "a message was sent twice on its first attempt: {received:?}");

    let mut last_offset: HashMap<Lane, i64> = HashMap::new();
    for received in first_attempts.drain(..) {
        if let Some(previous) = last_offset.insert(lane_of(received), received.offset) {
            assert!(previous < received.offset, "{received:?} came after offset {previous} of its lane");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn batches_keep_partitions_apart() {
    let partitions: Vec<TopicPartition> = (0..3).map(|n| TopicPartition::new("t", n)).collect();
    let harness = start(BatchingHandler::new(2), ProcessingOrder::Partition);
    harness.events.send(Event::Assigned { partitions: partitions.clone(), paused: false }).unwrap();
    for partition in &partitions {
        for offset in 0..10 {
            harness.events.send(fetched(partition, offset)).unwrap();
        }
    }

    wait_until_all_committed(&harness, 3, 10).await;

    let partition_lane = |received: &Received| (received.partition, None);
    for batch in assert_batches_keep_lanes_apart(&harness.handler, partition_lane) {
        // Groups of up to the handler's two; a third ready partition goes alone.
        assert_eq!(batch.len(), 2, "{batch:?}");
    }
    let received = harness.handler.received();
    assert_eq!(received.len(), 30);
    assert_handled_once_in_lane_order(&received, partition_lane);
    let _ = harness.stop.send(());
    harness.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn batches_keep_same_keys_apart() {
    let partitions: Vec<TopicPartition> = (0..2).map(|n| TopicPartition::new("t", n)).collect();
    let harness = start(BatchingHandler::new(64), ProcessingOrder::Key);
    harness.events.send(Event::Assigned { partitions: partitions.clone(), paused: false }).unwrap();
    for offset in 0..12 {
        for partition in &partitions {
            harness
                .events
                .send(Event::Fetched(vec![Fetched { message: keyed_message(partition, offset, 3), slot: None }]))
                .unwrap();
        }
    }

    wait_until_all_committed(&harness, 2, 12).await;

    let key_lane = |received: &Received| (received.partition, received.key.clone());
    for batch in assert_batches_keep_lanes_apart(&harness.handler, key_lane) {
        // The pipeline's in-flight limit is 8.
        assert!(batch.len() <= 8, "batch of {} messages: {batch:?}", batch.len());
    }
    let received = harness.handler.received();
    assert_eq!(received.len(), 24);
    assert_handled_once_in_lane_order(&received, key_lane);
    let _ = harness.stop.send(());
    harness.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn batch_failures_settle_per_message() {
    let partition = TopicPartition::new("t", 0);
    // The first eight messages fill the in-flight limit one call each as they arrive. Offsets 8
    // to 11 wait, and they go out together once those calls finish.
    let handler = BatchingHandler {
        flaky: [9].into_iter().collect(),
        rejected: [10].into_iter().collect(),
        ..BatchingHandler::new(64)
    };
    let harness = start(handler, ProcessingOrder::Unordered);
    harness.events.send(Event::Assigned { partitions: vec![partition.clone()], paused: false }).unwrap();
    for offset in 0..12 {
        harness.events.send(fetched(&partition, offset)).unwrap();
    }

    let done = harness.stats.wait_until(Duration::from_secs(60), |s| s.committed_offset("t", 0) == Some(12)).await;
    let snapshot = done.expect("every offset is committed");
    assert_eq!(snapshot.pause_eligible, 1);
    assert_eq!(snapshot.non_pausing, 1);
    assert_eq!(snapshot.succeeded, 11);

    let received = harness.handler.received();
    let calls_for = |offset: i64| -> Vec<&Received> { received.iter().filter(|r| r.offset == offset).collect() };
    let flaky = calls_for(9);
    assert_eq!(flaky.len(), 2, "{flaky:?}");
    assert!(flaky[0].batch.is_some(), "offset 9 was not sent in a batch: {flaky:?}");
    assert_eq!((flaky[1].batch, flaky[1].attempt), (None, 2), "the retry is a call of its own");
    let rejected = calls_for(10);
    assert_eq!(rejected.len(), 1, "the rejected message was sent again: {rejected:?}");
    assert!(rejected[0].batch.is_some(), "offset 10 was not sent in a batch: {rejected:?}");

    let committed = commits(&harness.calls.lock().unwrap());
    let past_failure = committed.iter().position(|offset| *offset > 9).expect("a commit past offset 9");
    assert!(committed[..past_failure].iter().all(|offset| *offset <= 9), "{committed:?}");
    assert!(committed.windows(2).all(|pair| pair[0] <= pair[1]), "{committed:?}");
    let _ = harness.stop.send(());
    harness.task.await.unwrap();
}
