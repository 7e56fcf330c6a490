//! Pipeline logic on virtual time: the pipeline is driven through its event channel and acts
//! on a recording [`KafkaControl`], with an in-process handler. Kafka itself is covered by the
//! integration tests; these tests pin down retry timing, the gate and commit ordering exactly.

use std::collections::HashMap;
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

/// One fetched message, outside any buffer bound.
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

struct Harness {
    events: mpsc::UnboundedSender<Event>,
    calls: Arc<Mutex<Vec<Call>>>,
    stats: Arc<Stats>,
    handler: Arc<FlakyHandler>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<super::ShutdownReport>,
}

fn start(handler: FlakyHandler, order: ProcessingOrder) -> Harness {
    start_with_commit_failures(handler, order, 0)
}

fn start_with_commit_failures(handler: FlakyHandler, order: ProcessingOrder, failing_commits: u32) -> Harness {
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
