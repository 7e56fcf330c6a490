//! HandleStream end to end: a mock Kafka cluster, a real tonic handler that implements
//! HandleStream and Handle, and the sidecar with its gRPC client. Every record goes on one
//! long-lived stream. A non-pausing failure is committed. A pause-eligible failure is retried
//! until it succeeds, and no commit passes it before then. With `SCC_HANDLER_STREAM=off` the
//! same records go through Handle.
//!
//! Record `FLAKY` fails UNAVAILABLE on its first attempt, and the handler delays the response to
//! its retry until the test has checked that the commit stopped at it. Record `REJECTED` always
//! fails INVALID_ARGUMENT.
//!
//! `FLAKY` and every record before it are the first records of their keys. Under key order, and
//! with an in-flight limit above `KEYS`, each is sent as soon as it is fetched, so all of them
//! are in flight before `FLAKY` fails and the gate closes. A record before `FLAKY` that waited
//! behind another record of its key could be held back by the closed gate until the retry
//! succeeds, and the commit would never reach `FLAKY` while the retry is delayed.
//!
//! The outage scenario cuts the stream while records wait on it. The handler responds OK after
//! a millisecond of simulated work, then hangs: every record that arrives gets no response.
//! The test kills the server with those records unanswered and restarts it on the same port.
//! Throughout, no commit may pass a record without an OK response, and in the end every record
//! has one and is committed.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, join_all};
use kafka_scc::proto::message_handler_server::MessageHandler;
use kafka_scc::proto::{
    HandleBatchRequest, HandleBatchResponse, HandleRequest, HandleResponse, RecordResult, StreamRequest, StreamResponse,
};
use kafka_scc::telemetry::StatsSnapshot;
use kafka_scc::{Sidecar, Stats};
use support::*;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

const RECORDS: usize = 30;
/// Distinct keys, more than `FLAKY`, so that no record up to `FLAKY` shares a key with an
/// earlier one.
const KEYS: usize = 10;
const MAX_IN_FLIGHT: &str = "16";
/// Fails UNAVAILABLE on its first attempt. Its retry gets OK once the test releases it.
const FLAKY: i64 = 7;
/// Always fails INVALID_ARGUMENT.
const REJECTED: i64 = 12;
const _: () = assert!(FLAKY < KEYS as i64, "a record up to FLAKY shares a key with an earlier record");

/// Partitions of the outage scenario's topic.
const OUTAGE_PARTITIONS: i32 = 3;
/// Records per partition in the outage scenario.
const OUTAGE_RECORDS: usize = 1_000;
/// Distinct keys per partition in the outage scenario.
const OUTAGE_KEYS: usize = 16;
/// The in-flight limit of the outage scenario. It is below the number of keys, so that the
/// limit and not the key order bounds the records in flight. Once this many records arrived
/// at the hung handler, no record is on its way to it.
const OUTAGE_MAX_IN_FLIGHT: usize = 32;
const _: () =
    assert!(OUTAGE_MAX_IN_FLIGHT < OUTAGE_PARTITIONS as usize * OUTAGE_KEYS, "key order bounds the records in flight");
/// OK responses that the handler sends before it hangs.
const OK_RESPONSES_BEFORE_HANG: usize = 300;
/// Simulated work per record in the outage scenario, so that records are in flight at any
/// moment. The test never waits for it to pass.
const WORK: Duration = Duration::from_millis(1);

/// How a record reached the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Handle,
    /// On the HandleStream stream with this number, counted from 0 in opening order.
    Stream(usize),
}

/// One delivery of a record, as the handler received it.
#[derive(Clone, Debug)]
struct Arrival {
    partition: i32,
    offset: i64,
    attempt: u32,
    key: Vec<u8>,
    via: Via,
}

/// How a [`StreamingHandler`] responds to each delivery.
#[derive(Clone)]
enum Script {
    /// [`status_for`], with the receiver that releases the retry of `FLAKY`.
    FlakyAndRejected(watch::Receiver<bool>),
    /// OK after [`WORK`], unless [`ResponseLog::hang`] is set when the work ends. The record
    /// then gets no response.
    SlowOk,
}

/// The responses of a [`Script::SlowOk`] handler: the records that got OK, and those left
/// without a response while the handler hangs.
#[derive(Debug, Default)]
struct ResponseLog {
    /// Per partition, the offsets that got an OK response.
    ok_offsets: BTreeMap<i32, BTreeSet<i64>>,
    /// Per partition, the first offset without an OK response. Every offset below it got OK,
    /// so no commit may pass it.
    first_unanswered: BTreeMap<i32, i64>,
    /// OK responses sent, retries included.
    sent: usize,
    /// While true, the handler hangs: a record whose work ends gets no response.
    hang: bool,
    /// The records that got no response because of `hang`, as (partition, offset).
    unanswered: Vec<(i32, i64)>,
}

impl ResponseLog {
    /// Decides the response to a record whose work has ended. Returns true, after logging the
    /// OK, when the record gets OK now, or false while the handler hangs.
    fn respond(&mut self, partition: i32, offset: i64) -> bool {
        if self.hang {
            self.unanswered.push((partition, offset));
            return false;
        }
        self.sent += 1;
        let ok_offsets = self.ok_offsets.entry(partition).or_default();
        ok_offsets.insert(offset);
        let first_unanswered = self.first_unanswered.entry(partition).or_insert(0);
        while ok_offsets.contains(first_unanswered) {
            *first_unanswered += 1;
        }
        true
    }

    /// Returns the first offset of `partition` without an OK response.
    fn first_unanswered(&self, partition: i32) -> i64 {
        self.first_unanswered.get(&partition).copied().unwrap_or(0)
    }
}

/// A handler server that responds to every record, on the stream or in a Handle call, as its
/// [`Script`] sets. HandleBatch returns UNIMPLEMENTED.
#[derive(Clone)]
struct StreamingHandler {
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    /// HandleStream calls opened.
    opens: Arc<AtomicUsize>,
    /// HandleStream calls whose request stream kafka-scc closed.
    closed: Arc<AtomicUsize>,
    /// HandleBatch calls received.
    batch_calls: Arc<AtomicUsize>,
    /// Notified on every arrival, response decision and closed stream.
    changed: Arc<Notify>,
    script: Script,
    response_log: Arc<Mutex<ResponseLog>>,
}

impl StreamingHandler {
    fn new(script: Script) -> StreamingHandler {
        StreamingHandler {
            arrivals: Arc::default(),
            opens: Arc::default(),
            closed: Arc::default(),
            batch_calls: Arc::default(),
            changed: Arc::new(Notify::new()),
            script,
            response_log: Arc::default(),
        }
    }

    fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals.lock().unwrap().clone()
    }

    /// Records a delivery and returns the future of its status.
    fn receive(&self, record: HandleRequest, via: Via) -> BoxFuture<'static, Result<(), Status>> {
        let arrival = Arrival {
            partition: record.partition,
            offset: record.offset,
            attempt: record.attempt,
            key: record.key.clone().unwrap_or_default().to_vec(),
            via,
        };
        self.arrivals.lock().unwrap().push(arrival);
        self.changed.notify_waiters();
        match &self.script {
            Script::FlakyAndRejected(release) => Box::pin(status_for(record.offset, record.attempt, release.clone())),
            Script::SlowOk => {
                let response_log = self.response_log.clone();
                let changed = self.changed.clone();
                Box::pin(async move {
                    tokio::time::sleep(WORK).await;
                    let ok = response_log.lock().unwrap().respond(record.partition, record.offset);
                    changed.notify_waiters();
                    if !ok {
                        std::future::pending::<()>().await;
                    }
                    Ok(())
                })
            }
        }
    }

    /// Sets whether the handler hangs, so that records whose work ends from now on get no
    /// response. Returns the OK responses sent so far. The switch and the log share one lock,
    /// so no record gets OK after `set_hang(true)` returns.
    fn set_hang(&self, hang: bool) -> usize {
        let mut response_log = self.response_log.lock().unwrap();
        response_log.hang = hang;
        response_log.sent
    }

    /// Waits until `condition` holds for the response log, re-checking after every change, for
    /// at most [`WAIT`]. Returns the counts of OK responses and unanswered records as the error.
    async fn wait_for_responses(&self, condition: impl Fn(&ResponseLog) -> bool) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            {
                let response_log = self.response_log.lock().unwrap();
                if condition(&response_log) {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let response_log = self.response_log.lock().unwrap();
                let (sent, unanswered) = (response_log.sent, response_log.unanswered.len());
                return Err(format!("{sent} OK responses sent, {unanswered} records unanswered"));
            }
        }
    }

    /// Waits until `condition` holds for the arrivals so far, re-checking after every arrival,
    /// for at most [`WAIT`]. Returns the last arrivals seen as the error.
    async fn wait_for_arrivals(&self, condition: impl Fn(&[Arrival]) -> bool) -> Result<(), Vec<Arrival>> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            if condition(&self.arrivals()) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(self.arrivals());
            }
        }
    }

    /// Waits until kafka-scc has closed every stream it opened, for at most [`WAIT`]. Returns
    /// false on timeout.
    async fn wait_for_closed_streams(&self) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            if self.closed.load(Ordering::SeqCst) == self.opens.load(Ordering::SeqCst) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Reads the requests of stream number `stream` and responds to each as soon as its status
    /// is known, so that the delayed retry delays no other record. Counts the stream as closed
    /// when kafka-scc ends its side.
    async fn serve_stream(
        self,
        stream: usize,
        mut requests: Streaming<StreamRequest>,
        responses: mpsc::UnboundedSender<Result<StreamResponse, Status>>,
    ) {
        loop {
            let request = match requests.message().await {
                Ok(Some(request)) => request,
                Ok(None) => {
                    self.closed.fetch_add(1, Ordering::SeqCst);
                    self.changed.notify_waiters();
                    return;
                }
                Err(_) => return,
            };
            let Some(record) = request.record else {
                let _ = responses.send(Err(Status::invalid_argument("a stream request without a record")));
                return;
            };
            let status = self.receive(record, Via::Stream(stream));
            let responses = responses.clone();
            tokio::spawn(async move {
                let result = RecordResult::from(status.await);
                let _ = responses.send(Ok(StreamResponse { id: request.id, result: Some(result) }));
            });
        }
    }
}

/// Returns the handler's status for one delivery, as the module documentation describes.
async fn status_for(offset: i64, attempt: u32, mut release: watch::Receiver<bool>) -> Result<(), Status> {
    match (offset, attempt) {
        (FLAKY, 1) => Err(Status::unavailable("downstream down")),
        (FLAKY, _) => {
            // An error means that the test dropped the sender because it ended, so the record
            // may then succeed.
            let _ = release.wait_for(|released| *released).await;
            Ok(())
        }
        (REJECTED, _) => Err(Status::invalid_argument("bad record")),
        _ => Ok(()),
    }
}

#[tonic::async_trait]
impl MessageHandler for StreamingHandler {
    async fn handle(&self, request: Request<HandleRequest>) -> Result<Response<HandleResponse>, Status> {
        self.receive(request.into_inner(), Via::Handle).await.map(|()| Response::new(HandleResponse {}))
    }

    async fn handle_batch(
        &self,
        _request: Request<HandleBatchRequest>,
    ) -> Result<Response<HandleBatchResponse>, Status> {
        self.batch_calls.fetch_add(1, Ordering::SeqCst);
        Err(Status::unimplemented("this test handler does not serve HandleBatch"))
    }

    async fn handle_stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<BoxStream<StreamResponse>>, Status> {
        let stream = self.opens.fetch_add(1, Ordering::SeqCst);
        let (responses, receiver) = mpsc::unbounded_channel();
        tokio::spawn(self.clone().serve_stream(stream, request.into_inner(), responses));
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(receiver))))
    }
}

/// What a scenario run leaves for the checks.
struct Outcome {
    arrivals: Vec<Arrival>,
    handler: StreamingHandler,
    summary: kafka_scc::Summary,
}

/// Runs the scenario with `SCC_HANDLER_STREAM` set to `stream`, and checks the commits on the
/// way.
async fn run_scenario(stream: &str) -> Outcome {
    init_logs();
    let broker = Broker::start();
    let topic = unique("streams");
    let group = unique("group");
    broker.create_topic(&topic, 1);
    broker.produce(keyed_records(&topic, 0, RECORDS, KEYS)).await;

    let (release, release_rx) = watch::channel(false);
    let handler = StreamingHandler::new(Script::FlakyAndRejected(release_rx));
    let server = HandlerServer::start(handler.clone()).await;
    // The delayed retry must not reach its deadline while the test checks the commits.
    let timeout_ms = (2 * WAIT.as_millis()).to_string();
    let config = config(
        &broker,
        &topic,
        &group,
        &server.endpoint(),
        &[
            ("SCC_HANDLER_STREAM", stream),
            ("SCC_HANDLER_TIMEOUT_MS", &timeout_ms),
            ("SCC_PROCESSING_ORDER", "key"),
            ("SCC_MAX_IN_FLIGHT", MAX_IN_FLIGHT),
        ],
    );
    let sidecar = RunningSidecar::spawn(Sidecar::new(config.clone(), grpc_handler(&config)));
    let stats = sidecar.stats.clone();

    let retry = handler
        .wait_for_arrivals(|arrivals| arrivals.iter().any(|arrival| arrival.offset == FLAKY && arrival.attempt == 2))
        .await;
    assert!(retry.is_ok(), "record {FLAKY} was not retried: {retry:?}");
    broker.assert_commit_held_at(&stats, &group, &topic, FLAKY).await;

    release.send_replace(true);
    let all = broker.wait_for_committed(&group, &topic, &[RECORDS as i64]).await;
    assert!(all.is_ok(), "not committed to the end: {all:?}");

    let summary = sidecar.shutdown().await;
    let closed = handler.wait_for_closed_streams().await;
    assert!(closed, "kafka-scc did not close its side of the stream when it stopped");
    server.stop().await;
    Outcome { arrivals: handler.arrivals(), handler, summary }
}

/// Checks what both modes must show. Every record arrived: `FLAKY` twice, with attempts 1 and
/// 2, and every other record once. The records of each key arrived in offset order. The
/// counters match.
fn assert_each_record_handled(outcome: &Outcome) {
    let mut by_offset: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for arrival in &outcome.arrivals {
        by_offset.entry(arrival.offset).or_default().push(arrival.attempt);
    }
    assert_eq!(by_offset.len(), RECORDS, "records missing: {:?}", by_offset.keys().collect::<Vec<_>>());
    for (offset, attempts) in &by_offset {
        let expected = if *offset == FLAKY { vec![1, 2] } else { vec![1] };
        assert_eq!(attempts, &expected, "offset {offset}");
    }

    let mut last_by_key: BTreeMap<&[u8], i64> = BTreeMap::new();
    for arrival in outcome.arrivals.iter().filter(|arrival| arrival.attempt == 1) {
        if let Some(previous) = last_by_key.insert(&arrival.key, arrival.offset) {
            assert!(previous < arrival.offset, "offset {} arrived after {previous} of its key", arrival.offset);
        }
    }

    let stats = &outcome.summary.stats;
    assert_eq!(stats.succeeded, RECORDS as u64 - 1);
    assert_eq!(stats.non_pausing, 1, "record {REJECTED} is committed as non-pausing");
    assert_eq!(stats.pause_eligible, 1, "record {FLAKY} fails once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_records_settle_one_by_one() {
    let outcome = run_scenario("auto").await;

    assert_each_record_handled(&outcome);
    let off_stream: Vec<&Arrival> = outcome.arrivals.iter().filter(|arrival| arrival.via != Via::Stream(0)).collect();
    assert!(off_stream.is_empty(), "records that missed the first stream: {off_stream:?}");
    assert_eq!(outcome.handler.opens.load(Ordering::SeqCst), 1, "the stream was opened again");
    assert_eq!(outcome.handler.batch_calls.load(Ordering::SeqCst), 0, "HandleBatch was called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_off_uses_handle() {
    let outcome = run_scenario("off").await;

    assert_each_record_handled(&outcome);
    let streamed: Vec<&Arrival> = outcome.arrivals.iter().filter(|arrival| arrival.via != Via::Handle).collect();
    assert!(streamed.is_empty(), "records on a stream: {streamed:?}");
    assert_eq!(outcome.handler.opens.load(Ordering::SeqCst), 0, "HandleStream was called");
    // The one HandleBatch call is the start-up probe, which returned UNIMPLEMENTED.
    assert_eq!(outcome.handler.batch_calls.load(Ordering::SeqCst), 1);
}

/// Returns a description of the first partition of `topic` whose committed offset in
/// `snapshot` passes a record without an OK response, or `None`.
fn commit_past_unanswered(snapshot: &StatsSnapshot, topic: &str, response_log: &ResponseLog) -> Option<String> {
    (0..OUTAGE_PARTITIONS).find_map(|partition| {
        let committed = snapshot.committed_offset(topic, partition)?;
        let first_unanswered = response_log.first_unanswered(partition);
        (committed > first_unanswered).then(|| {
            format!("partition {partition} committed to {committed}, but offset {first_unanswered} got no OK response")
        })
    })
}

/// Checks the sidecar's committed offsets after every change of its stats until the task is
/// aborted. Returns the first commit that passed a record without an OK response.
async fn watch_commits(stats: Arc<Stats>, topic: String, response_log: Arc<Mutex<ResponseLog>>) -> String {
    loop {
        let mut violation = None;
        let found = stats
            .wait_until(WAIT, |snapshot| {
                violation = commit_past_unanswered(snapshot, &topic, &response_log.lock().unwrap());
                violation.is_some()
            })
            .await;
        if found.is_ok() {
            return violation.expect("the condition held, so it stored the violation");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_outage_loses_nothing() {
    init_logs();
    let broker = Broker::start();
    let topic = unique("outage");
    let group = unique("group");
    broker.create_topic(&topic, OUTAGE_PARTITIONS);
    let produced = (0..OUTAGE_PARTITIONS)
        .map(|partition| broker.produce(keyed_records(&topic, partition, OUTAGE_RECORDS, OUTAGE_KEYS)));
    join_all(produced).await;
    let end_offsets = vec![OUTAGE_RECORDS as i64; OUTAGE_PARTITIONS as usize];

    let handler = StreamingHandler::new(Script::SlowOk);
    let server = HandlerServer::start(handler.clone()).await;
    let addr = server.addr;
    // With a deadline beyond WAIT, a record that the broken stream failed to settle stalls the
    // test instead of being settled by its own deadline.
    let timeout_ms = (2 * WAIT.as_millis()).to_string();
    let config = config(
        &broker,
        &topic,
        &group,
        &server.endpoint(),
        &[
            ("SCC_BACKOFF_BASE_MS", "50"),
            ("SCC_BACKOFF_MAX_MS", "200"),
            ("SCC_HANDLER_TIMEOUT_MS", &timeout_ms),
            ("SCC_MAX_IN_FLIGHT", &OUTAGE_MAX_IN_FLIGHT.to_string()),
        ],
    );
    let sidecar = RunningSidecar::spawn(Sidecar::new(config.clone(), grpc_handler(&config)));
    let stats = sidecar.stats.clone();
    let watcher = tokio::spawn(watch_commits(stats.clone(), topic.clone(), handler.response_log.clone()));

    let responded = handler.wait_for_responses(|log| log.sent >= OK_RESPONSES_BEFORE_HANG).await;
    assert!(responded.is_ok(), "the handler did not respond OK to {OK_RESPONSES_BEFORE_HANG} records: {responded:?}");

    // The handler hangs. Once as many records as may be in flight are unanswered and kafka-scc
    // has received every OK sent before, the records that wait on the stream are exactly the
    // unanswered ones.
    let sent_before_hang = handler.set_hang(true);
    let hung = handler.wait_for_responses(|log| log.unanswered.len() >= OUTAGE_MAX_IN_FLIGHT).await;
    assert!(hung.is_ok(), "the hung handler did not receive {OUTAGE_MAX_IN_FLIGHT} records: {hung:?}");
    let received = stats.wait_until(WAIT, |s| s.succeeded == sent_before_hang as u64).await;
    let received = received.expect("kafka-scc receives every OK response sent before the hang");
    assert!(received.gate_open, "the gate closed before the outage");
    assert_eq!(received.pause_eligible, 0, "a record failed before the outage");
    let (unanswered_at_kill, first_unanswered) = {
        let response_log = handler.response_log.lock().unwrap();
        let first_unanswered: Vec<i64> =
            (0..OUTAGE_PARTITIONS).map(|partition| response_log.first_unanswered(partition)).collect();
        (response_log.unanswered.clone(), first_unanswered)
    };
    assert_eq!(unanswered_at_kill.len(), OUTAGE_MAX_IN_FLIGHT, "unanswered records: {unanswered_at_kill:?}");

    server.kill().await;
    let streams_before_kill = handler.opens.load(Ordering::SeqCst);

    // Every record waiting on the cut stream fails pause-eligible and the gate closes. A retry
    // finds no handler and fails too. Commits go on up to the first unanswered record of each
    // partition and no further.
    let unanswered_count = unanswered_at_kill.len() as u64;
    let settled = stats.wait_until(WAIT, |s| !s.gate_open && s.pause_eligible >= unanswered_count).await;
    assert!(settled.is_ok(), "the records on the cut stream were not settled pause-eligible: {settled:?}");
    let retried = stats.wait_until(WAIT, |s| s.pause_eligible > unanswered_count).await;
    assert!(retried.is_ok(), "no retry failed while the handler was down: {retried:?}");
    let caught_up = stats
        .wait_until(WAIT, |s| {
            (0..OUTAGE_PARTITIONS).all(|partition| {
                s.committed_offset(&topic, partition).unwrap_or(0) == first_unanswered[partition as usize]
            })
        })
        .await;
    let down = caught_up.expect("the commits reach the first unanswered record of each partition");
    assert!(!down.gate_open, "the gate opened while the handler was down");

    handler.set_hang(false);
    let server = HandlerServer::start_on(handler.clone(), addr).await;
    let all = broker.wait_for_committed(&group, &topic, &end_offsets).await;
    assert!(all.is_ok(), "not committed to the end: {all:?}");

    let summary = sidecar.shutdown().await;
    server.stop().await;
    watcher.abort();
    if let Ok(violation) = watcher.await {
        panic!("a commit passed a record without an OK response: {violation}");
    }

    let response_log = handler.response_log.lock().unwrap();
    for partition in 0..OUTAGE_PARTITIONS {
        let ok_records = response_log.ok_offsets.get(&partition).map_or(0, BTreeSet::len);
        assert_eq!(ok_records, OUTAGE_RECORDS, "records of partition {partition} with an OK response");
        let committed = summary.stats.committed_offset(&topic, partition);
        assert_eq!(committed, Some(OUTAGE_RECORDS as i64), "committed offset of partition {partition}");
    }

    let arrivals = handler.arrivals();
    assert!(streams_before_kill >= 1, "no stream was open before the outage");
    let after_restart: Vec<&Arrival> = arrivals
        .iter()
        .filter(|arrival| matches!(arrival.via, Via::Stream(stream) if stream >= streams_before_kill))
        .collect();
    assert!(!after_restart.is_empty(), "no record arrived on a stream opened after the restart");
    for (partition, offset) in &unanswered_at_kill {
        let redelivered = after_restart
            .iter()
            .any(|arrival| arrival.partition == *partition && arrival.offset == *offset && arrival.attempt > 1);
        assert!(redelivered, "unanswered record {partition}/{offset} was not retried after the restart");
    }
    let unary: Vec<&Arrival> = arrivals.iter().filter(|arrival| arrival.via == Via::Handle).collect();
    assert!(unary.is_empty(), "records sent through Handle: {unary:?}");
    assert_eq!(handler.batch_calls.load(Ordering::SeqCst), 0, "HandleBatch was called");

    let stats = &summary.stats;
    assert!(stats.gate_closures >= 1, "the gate never closed");
    assert!(stats.pause_eligible > unanswered_count, "pause-eligible failures: {}", stats.pause_eligible);
    assert_eq!(stats.succeeded, response_log.sent as u64, "OK responses that kafka-scc counted");
    assert_eq!(stats.non_pausing, 0, "non-pausing failures");
}
