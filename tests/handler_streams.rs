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

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kafka_scc::Sidecar;
use kafka_scc::proto::message_handler_server::MessageHandler;
use kafka_scc::proto::{
    HandleBatchRequest, HandleBatchResponse, HandleRequest, HandleResponse, RecordResult, StreamRequest, StreamResponse,
};
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
    offset: i64,
    attempt: u32,
    key: Vec<u8>,
    via: Via,
}

/// A handler server that responds to every record, on the stream or in a Handle call, with
/// [`status_for`]. HandleBatch returns UNIMPLEMENTED.
#[derive(Clone)]
struct StreamingHandler {
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    /// HandleStream calls opened.
    opens: Arc<AtomicUsize>,
    /// HandleStream calls whose request stream kafka-scc closed.
    closed: Arc<AtomicUsize>,
    /// HandleBatch calls received.
    batch_calls: Arc<AtomicUsize>,
    changed: Arc<Notify>,
    /// Becomes true when the retry of `FLAKY` may succeed.
    release: watch::Receiver<bool>,
}

impl StreamingHandler {
    fn new(release: watch::Receiver<bool>) -> StreamingHandler {
        StreamingHandler {
            arrivals: Arc::default(),
            opens: Arc::default(),
            closed: Arc::default(),
            batch_calls: Arc::default(),
            changed: Arc::new(Notify::new()),
            release,
        }
    }

    fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals.lock().unwrap().clone()
    }

    /// Records a delivery and returns the future of its status.
    fn receive(&self, record: HandleRequest, via: Via) -> impl Future<Output = Result<(), Status>> + Send + 'static {
        let arrival = Arrival {
            offset: record.offset,
            attempt: record.attempt,
            key: record.key.clone().unwrap_or_default().to_vec(),
            via,
        };
        self.arrivals.lock().unwrap().push(arrival);
        self.changed.notify_waiters();
        status_for(record.offset, record.attempt, self.release.clone())
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
    let handler = StreamingHandler::new(release_rx);
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
    let held_back = stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(FLAKY)).await;
    assert!(held_back.is_ok(), "the commit did not reach record {FLAKY}: {held_back:?}");
    let on_broker = broker.wait_for_committed(&group, &topic, &[FLAKY]).await;
    assert!(on_broker.is_ok(), "broker committed offsets while {FLAKY} is retried: {on_broker:?}");
    assert_eq!(stats.snapshot().committed_offset(&topic, 0), Some(FLAKY), "a commit passed record {FLAKY}");

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
