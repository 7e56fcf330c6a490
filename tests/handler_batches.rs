//! HandleBatch end to end: a mock Kafka cluster, a real tonic handler and the sidecar with its
//! gRPC client. Each record of a batch is settled on its own (a non-pausing failure is
//! committed, a pause-eligible one is retried alone until it succeeds), commits stay in offset
//! order, and a handler without HandleBatch gets every record through Handle.
//!
//! The handler delays its responses in stages, so that the test controls which records travel
//! together:
//! 1. Record 0 is produced and goes out alone. Then the other 39 are produced, and records 1 to
//!    9 (ten keys, ten messages in flight at most) go out. All are held until the 40 records
//!    are fetched and queued.
//! 2. Record 0 fails UNAVAILABLE, and the gate closes. Records 1 to 9 then succeed, but while
//!    the gate is closed only the retry probe of record 0 goes out.
//! 3. The probe succeeds, the gate opens with the whole in-flight limit free, and the ten
//!    queued records at the heads of their key lanes, 10 to 19, go out as one group.
//! 4. Within that group record 12 fails UNAVAILABLE and record 15 INVALID_ARGUMENT. Record 12's
//!    retry is held until the test has checked that no commit passed it.

mod support;

use std::collections::BTreeMap;

use kafka_scc::Sidecar;
use kafka_scc::proto::HandleRequest;
use support::*;
use tokio::sync::watch;
use tonic::Status;

const RECORDS: usize = 40;
/// Distinct keys; equal to the in-flight limit, so the first records fill it one call each.
const KEYS: usize = 10;
const MAX_IN_FLIGHT: &str = "10";
/// The first record: fails UNAVAILABLE once and keeps the gate closed while the others queue.
const HELD: i64 = 0;
/// Fails UNAVAILABLE on its first attempt, which travels in the group 10 to 19.
const FLAKY: i64 = 12;
/// Always fails INVALID_ARGUMENT; it travels in the group 10 to 19.
const REJECTED: i64 = 15;
/// The group that goes out when the gate opens.
const GROUP: std::ops::Range<i64> = 10..20;

/// Waits until the test has moved the scenario to `stage` or further.
async fn reach(stage: &mut watch::Receiver<u8>, target: u8) {
    // An error means the test dropped the sender because it ended; the call may then go on.
    let _ = stage.wait_for(|current| *current >= target).await;
}

/// Returns the handler's status for one record, once its stage is reached; see the module
/// documentation for the stages.
async fn status_for(request: HandleRequest, mut stage: watch::Receiver<u8>) -> Result<(), Status> {
    match (request.offset, request.attempt) {
        (HELD, 1) => {
            reach(&mut stage, 1).await;
            Err(Status::unavailable("downstream down"))
        }
        (1..=9, 1) => {
            reach(&mut stage, 2).await;
            Ok(())
        }
        (HELD, _) => {
            reach(&mut stage, 3).await;
            Ok(())
        }
        (FLAKY, 1) => Err(Status::unavailable("downstream down")),
        (FLAKY, _) => {
            reach(&mut stage, 4).await;
            Ok(())
        }
        (REJECTED, _) => Err(Status::invalid_argument("bad record")),
        _ => Ok(()),
    }
}

/// What a scenario run leaves for the checks.
struct Outcome {
    calls: Vec<ReceivedCall>,
    handler: RecordingHandler,
    summary: kafka_scc::Summary,
}

/// Runs the staged scenario against `handler`, built by [`staged_handler`], and checks the
/// commits on the way.
async fn run_scenario(handler: RecordingHandler, stage: watch::Sender<u8>) -> Outcome {
    init_logs();
    let broker = Broker::start();
    let topic = unique("batches");
    let group = unique("group");
    broker.create_topic(&topic, 1);
    let mut records = keyed_records(&topic, 0, RECORDS, KEYS);
    let later = records.split_off(1);
    broker.produce(records).await;

    let server = HandlerServer::start(handler.clone()).await;
    let config = config(
        &broker,
        &topic,
        &group,
        &server.endpoint(),
        &[("SCC_MAX_IN_FLIGHT", MAX_IN_FLIGHT), ("SCC_PROCESSING_ORDER", "key"), ("SCC_HANDLER_BATCH_MAX", "64")],
    );
    let sidecar = RunningSidecar::spawn(Sidecar::new(config.clone(), grpc_handler(&config)));
    let stats = sidecar.stats.clone();
    // Record 0 goes out alone, so that its failure does not wait for other records' results.
    let alone = handler.wait_for_calls(WAIT, |calls| !calls.is_empty()).await;
    assert!(alone.is_ok(), "record {HELD} did not reach the handler: {alone:?}");
    broker.produce(later).await;

    let fetched = stats.wait_until(WAIT, |s| s.fetched == RECORDS as u64).await;
    assert!(fetched.is_ok(), "not every record was fetched: {fetched:?}");
    let first = handler.wait_for_calls(WAIT, |calls| calls.len() >= KEYS).await;
    assert!(first.is_ok(), "the first records did not reach the handler: {first:?}");

    stage.send_replace(1);
    let closed = stats.wait_until(WAIT, |s| s.gate_closures >= 1).await;
    assert!(closed.is_ok(), "the gate did not close: {closed:?}");
    stage.send_replace(2);
    let finished = stats.wait_until(WAIT, |s| s.succeeded == KEYS as u64 - 1).await;
    assert!(finished.is_ok(), "records 1 to 9 did not finish: {finished:?}");
    stage.send_replace(3);

    // Records 10 and 11 are done, 12 failed and 13 to 19 finished with it, so the next commit
    // shows whether anything passed 12.
    let retry = handler
        .wait_for_calls(WAIT, |calls| {
            calls.iter().any(|call| call.request.offset == FLAKY && call.request.attempt == 2)
        })
        .await;
    assert!(retry.is_ok(), "record {FLAKY} was not retried: {retry:?}");
    broker.assert_commit_held_at(&stats, &group, &topic, FLAKY).await;

    stage.send_replace(4);
    let all = broker.wait_for_committed(&group, &topic, &[RECORDS as i64]).await;
    assert!(all.is_ok(), "not committed to the end: {all:?}");

    let summary = sidecar.shutdown().await;
    server.stop().await;
    Outcome { calls: handler.calls(), handler, summary }
}

/// Starts a scenario's handler and stage; `serves_batches` picks whether it has HandleBatch.
fn staged_handler(serves_batches: bool) -> (RecordingHandler, watch::Sender<u8>) {
    let (stage, stage_rx) = watch::channel(0u8);
    let handler = RecordingHandler::new(move |request| status_for(request, stage_rx.clone()));
    let handler = if serves_batches { handler.serving_batches() } else { handler };
    (handler, stage)
}

/// Returns the calls of each offset, in arrival order.
fn calls_by_offset(calls: &[ReceivedCall]) -> BTreeMap<i64, Vec<&ReceivedCall>> {
    let mut by_offset: BTreeMap<i64, Vec<&ReceivedCall>> = BTreeMap::new();
    for call in calls {
        by_offset.entry(call.request.offset).or_default().push(call);
    }
    by_offset
}

/// Checks what both handlers must see. Every record arrived: the held and flaky records twice,
/// with attempts 1 and 2, and every other record exactly once. The records of each key arrived
/// in offset order.
fn assert_each_record_handled_once(calls: &[ReceivedCall]) {
    let by_offset = calls_by_offset(calls);
    assert_eq!(by_offset.len(), RECORDS, "records missing: {:?}", by_offset.keys().collect::<Vec<_>>());
    for (offset, calls) in &by_offset {
        let attempts: Vec<u32> = calls.iter().map(|call| call.request.attempt).collect();
        let expected = if *offset == HELD || *offset == FLAKY { vec![1, 2] } else { vec![1] };
        assert_eq!(attempts, expected, "offset {offset}");
    }

    let mut last_by_key: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    for call in calls.iter().filter(|call| call.request.attempt == 1) {
        let key = call.request.key.clone().unwrap_or_default().to_vec();
        if let Some(previous) = last_by_key.insert(key, call.request.offset) {
            assert!(
                previous < call.request.offset,
                "offset {} arrived after {previous} of its key",
                call.request.offset
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_records_settle_one_by_one() {
    let (handler, stage) = staged_handler(true);
    let Outcome { calls, handler, summary } = run_scenario(handler, stage).await;

    assert_each_record_handled_once(&calls);
    let by_offset = calls_by_offset(&calls);
    let group_batch = by_offset[&GROUP.start][0].batch.expect("the group went out as a HandleBatch call");
    let members: Vec<i64> =
        calls.iter().filter(|call| call.batch == Some(group_batch)).map(|call| call.request.offset).collect();
    assert_eq!(members, GROUP.collect::<Vec<_>>(), "the group's HandleBatch call");
    assert_eq!(by_offset[&FLAKY][1].batch, None, "the retry of record {FLAKY} is a Handle call of its own");
    assert_eq!(by_offset[&HELD][1].batch, None, "the retry probe is a Handle call of its own");
    assert!(handler.batch_calls() >= 1);

    assert_eq!(summary.stats.succeeded, RECORDS as u64 - 1);
    assert_eq!(summary.stats.non_pausing, 1, "record {REJECTED} is committed as non-pausing");
    assert_eq!(summary.stats.pause_eligible, 2, "records {HELD} and {FLAKY} fail once each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_without_batches_gets_handle_calls() {
    let (handler, stage) = staged_handler(false);
    let Outcome { calls, handler, summary } = run_scenario(handler, stage).await;

    assert_each_record_handled_once(&calls);
    assert!(calls.iter().all(|call| call.batch.is_none()), "a record arrived in a HandleBatch call");
    // The one HandleBatch call is the start-up probe, which carries no records.
    assert_eq!(handler.batch_calls(), 1, "HandleBatch was tried again after UNIMPLEMENTED");

    assert_eq!(summary.stats.succeeded, RECORDS as u64 - 1);
    assert_eq!(summary.stats.non_pausing, 1);
    assert_eq!(summary.stats.pause_eligible, 2);
}
