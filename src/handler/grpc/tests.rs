//! [`GrpcHandler`]'s batch path against real tonic servers on loopback: per-record results,
//! whole-call failures, the UNIMPLEMENTED fallback, result-count checks and size splitting.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

use super::GrpcHandler;
use crate::config::{DEFAULT_HANDLER_BATCH_MAX, HandlerTls, HandlerTransport, parse_handler_endpoint};
use crate::handler::{DEFAULT_PAUSE_CODES, Disposition, Handler, HandlerError, Readiness};
use crate::message::{Message, TimestampType};
use crate::proto::message_handler_server::{MessageHandler, MessageHandlerServer};
use crate::proto::{HandleBatchRequest, HandleBatchResponse, HandleRequest, HandleResponse, RecordResult};

/// Deadline of the handlers under test, long enough for any loopback call.
pub(super) const TIMEOUT: Duration = Duration::from_secs(10);

/// How a [`TestService`] responds to HandleBatch.
#[derive(Clone, Copy)]
pub(super) enum BatchResponse {
    /// One result per record, with the code that the function returns for its offset.
    PerRecord(fn(i64) -> Code),
    /// This status for the whole call.
    Status(Code),
    /// This many OK results, whatever the record count.
    Results(usize),
    /// No response until the client gives up.
    Never,
}

/// What a [`TestService`] received.
#[derive(Debug, Default)]
struct Received {
    /// Offset and `traceparent` metadata of every Handle call.
    handle: Vec<(i64, Option<String>)>,
    /// Offsets of every HandleBatch call, including calls that failed.
    batches: Vec<Vec<i64>>,
    /// Encoded size of every HandleBatch request, in bytes.
    batch_bytes: Vec<usize>,
    /// Whether any HandleBatch call carried `traceparent` metadata.
    batch_traceparent: bool,
}

/// A handler server whose Handle returns OK and whose HandleBatch responds as configured.
#[derive(Clone)]
pub(super) struct TestService {
    response: BatchResponse,
    received: Arc<Mutex<Received>>,
}

impl TestService {
    pub(super) fn new(response: BatchResponse) -> TestService {
        TestService { response, received: Arc::default() }
    }

    pub(super) fn handle_offsets(&self) -> Vec<i64> {
        self.received.lock().unwrap().handle.iter().map(|(offset, _)| *offset).collect()
    }

    pub(super) fn batches(&self) -> Vec<Vec<i64>> {
        self.received.lock().unwrap().batches.clone()
    }
}

#[tonic::async_trait]
impl MessageHandler for TestService {
    async fn handle(&self, request: Request<HandleRequest>) -> Result<Response<HandleResponse>, Status> {
        let traceparent =
            request.metadata().get("traceparent").and_then(|value| value.to_str().ok()).map(str::to_owned);
        self.received.lock().unwrap().handle.push((request.get_ref().offset, traceparent));
        Ok(Response::new(HandleResponse {}))
    }

    async fn handle_batch(
        &self,
        request: Request<HandleBatchRequest>,
    ) -> Result<Response<HandleBatchResponse>, Status> {
        let has_traceparent = request.metadata().contains_key("traceparent");
        let body = request.into_inner();
        let offsets: Vec<i64> = body.records.iter().map(|record| record.offset).collect();
        {
            let mut received = self.received.lock().unwrap();
            received.batches.push(offsets.clone());
            received.batch_bytes.push(body.encoded_len());
            received.batch_traceparent |= has_traceparent;
        }

        let results = match self.response {
            BatchResponse::PerRecord(code_for) => offsets
                .iter()
                .map(|offset| {
                    let code = code_for(*offset);
                    RecordResult { code: i32::from(code), message: format!("offset {offset}") }
                })
                .collect(),
            BatchResponse::Status(code) => return Err(Status::new(code, "whole batch")),
            BatchResponse::Results(count) => vec![RecordResult::default(); count],
            BatchResponse::Never => std::future::pending().await,
        };
        Ok(Response::new(HandleBatchResponse { results }))
    }
}

/// A handler server that implements only Handle, so HandleBatch gets the generated default.
#[derive(Clone, Default)]
struct UnaryOnly {
    handled: Arc<Mutex<Vec<i64>>>,
}

#[tonic::async_trait]
impl MessageHandler for UnaryOnly {
    async fn handle(&self, request: Request<HandleRequest>) -> Result<Response<HandleResponse>, Status> {
        self.handled.lock().unwrap().push(request.get_ref().offset);
        Ok(Response::new(HandleResponse {}))
    }
}

/// Serves `service` on a fresh loopback port until the test's runtime ends; returns the
/// endpoint.
pub(super) async fn serve<S: MessageHandler>(service: S) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(MessageHandlerServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .expect("test handler server runs");
    });
    format!("http://{addr}")
}

pub(super) fn default_codes() -> HashSet<Code> {
    DEFAULT_PAUSE_CODES.iter().copied().collect()
}

/// Builds a client with the HandleStream stream off. While the stream may be in use, a batch
/// goes record by record, so the batch tests turn it off; `stream_tests` turns it back on.
pub(super) fn client(endpoint: &str, pause_codes: HashSet<Code>) -> GrpcHandler {
    GrpcHandler::connect_lazy(endpoint, "group", TIMEOUT, pause_codes).expect("valid endpoint").with_stream(false)
}

/// Builds a client whose requests may be at most `max_message_bytes` long, with the
/// HandleStream stream off like [`client`].
pub(super) fn limited_client(endpoint: &str, max_message_bytes: usize, timeout: Duration) -> GrpcHandler {
    let tls = HandlerTls::default();
    let address = parse_handler_endpoint("HANDLER_ENDPOINT", endpoint, &tls).expect("valid endpoint");
    let transport = HandlerTransport { tls, max_message_bytes };
    GrpcHandler::new(&address, &transport, "group", timeout, default_codes()).expect("channel built").with_stream(false)
}

pub(super) fn message(offset: i64, value_len: usize) -> Message {
    Message {
        topic: "events".into(),
        partition: 0,
        offset,
        key: None,
        value: Some(Bytes::from(vec![b'v'; value_len])),
        headers: Vec::new(),
        timestamp_ms: 0,
        timestamp_type: TimestampType::CreateTime,
        trace_id: crate::message::new_trace_id(),
    }
}

pub(super) fn messages(offsets: std::ops::Range<i64>) -> Vec<Message> {
    offsets.map(|offset| message(offset, 10)).collect()
}

pub(super) fn first_attempts(messages: &[Message]) -> Vec<(&Message, u32)> {
    messages.iter().map(|message| (message, 1)).collect()
}

pub(super) fn error(result: &Result<(), HandlerError>) -> &HandlerError {
    result.as_ref().expect_err("a failed record")
}

#[tokio::test]
async fn per_record_codes_are_classified() {
    let service = TestService::new(BatchResponse::PerRecord(|offset| match offset {
        1 => Code::Unavailable,
        2 => Code::InvalidArgument,
        _ => Code::Ok,
    }));
    let handler = client(&serve(service.clone()).await, default_codes());
    let batch = messages(0..4);

    let results = handler.handle_batch(&first_attempts(&batch)).await;

    assert_eq!(results.len(), 4);
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(results[3].is_ok(), "{:?}", results[3]);
    assert_eq!(error(&results[1]).disposition, Disposition::PauseEligible);
    assert_eq!(error(&results[1]).code, Some(Code::Unavailable));
    assert_eq!(error(&results[2]).disposition, Disposition::NonPausing);
    assert_eq!(error(&results[2]).code, Some(Code::InvalidArgument));
    assert_eq!(error(&results[2]).message, "offset 2");
    assert_eq!(service.batches(), vec![vec![0, 1, 2, 3]]);
    assert!(service.handle_offsets().is_empty());
    assert!(!service.received.lock().unwrap().batch_traceparent, "a batch call carried traceparent");
}

#[tokio::test]
async fn unknown_record_code_reads_as_unknown() {
    /// A server that returns, for every record, a number that is no gRPC code.
    #[derive(Clone)]
    struct OutOfRange;

    #[tonic::async_trait]
    impl MessageHandler for OutOfRange {
        async fn handle_batch(
            &self,
            request: Request<HandleBatchRequest>,
        ) -> Result<Response<HandleBatchResponse>, Status> {
            let results = request.get_ref().records.iter().map(|_| RecordResult { code: 99, message: String::new() });
            Ok(Response::new(HandleBatchResponse { results: results.collect() }))
        }
    }

    let handler = client(&serve(OutOfRange).await, default_codes());
    let batch = messages(0..2);
    let results = handler.handle_batch(&first_attempts(&batch)).await;
    for result in &results {
        assert_eq!(error(result).code, Some(Code::Unknown));
        assert_eq!(error(result).disposition, Disposition::NonPausing);
    }
}

#[tokio::test]
async fn whole_call_status_applies_to_every_record() {
    for (code, disposition) in
        [(Code::Unavailable, Disposition::PauseEligible), (Code::InvalidArgument, Disposition::NonPausing)]
    {
        let service = TestService::new(BatchResponse::Status(code));
        let handler = client(&serve(service.clone()).await, default_codes());
        let batch = messages(0..3);

        let results = handler.handle_batch(&first_attempts(&batch)).await;

        assert_eq!(results.len(), 3, "{code:?}");
        for result in &results {
            assert_eq!(error(result).code, Some(code));
            assert_eq!(error(result).disposition, disposition, "{code:?}");
        }
        assert!(service.handle_offsets().is_empty(), "{code:?}: records were sent again with Handle");
        assert_eq!(handler.max_batch_len(), DEFAULT_HANDLER_BATCH_MAX, "{code:?}");
    }
}

#[tokio::test]
async fn unimplemented_falls_back_to_handle_for_good() {
    let service = TestService::new(BatchResponse::Status(Code::Unimplemented));
    let handler = client(&serve(service.clone()).await, default_codes());
    let first = messages(0..3);

    let results = handler.handle_batch(&first_attempts(&first)).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(service.batches().len(), 1);
    let mut resent = service.handle_offsets();
    resent.sort_unstable();
    assert_eq!(resent, vec![0, 1, 2]);
    assert_eq!(handler.max_batch_len(), 1);

    let second = messages(3..5);
    let results = handler.handle_batch(&first_attempts(&second)).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(service.batches().len(), 1, "HandleBatch was called again after UNIMPLEMENTED");
    assert_eq!(service.handle_offsets().len(), 5);
    let received = service.received.lock().unwrap();
    assert!(received.handle.iter().all(|(_, traceparent)| traceparent.is_some()), "{:?}", received.handle);
}

#[tokio::test]
async fn clones_share_the_fallback() {
    let service = TestService::new(BatchResponse::Status(Code::Unimplemented));
    let handler = client(&serve(service.clone()).await, default_codes());
    let copy = handler.clone();
    let batch = messages(0..2);

    handler.handle_batch(&first_attempts(&batch)).await;

    assert_eq!(copy.max_batch_len(), 1);
}

#[tokio::test]
async fn generated_default_means_no_handle_batch() {
    let service = UnaryOnly::default();
    let handler = client(&serve(service.clone()).await, default_codes());
    let batch = messages(0..2);

    let results = handler.handle_batch(&first_attempts(&batch)).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(handler.max_batch_len(), 1);
    assert_eq!(service.handled.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn readiness_probe_learns_batch_support() {
    let unary = client(&serve(UnaryOnly::default()).await, default_codes());
    let batching_service = TestService::new(BatchResponse::PerRecord(|_| Code::Ok));
    let batching = client(&serve(batching_service.clone()).await, default_codes());

    // Neither server has a health service, which reads as ready.
    assert_eq!(unary.wait_until_ready(Duration::ZERO).await, Readiness::Unknown);
    assert_eq!(batching.wait_until_ready(Duration::ZERO).await, Readiness::Unknown);

    assert_eq!(unary.max_batch_len(), 1, "a handler without HandleBatch gets Handle calls only");
    assert!(batching.max_batch_len() > 1, "a handler with HandleBatch keeps batching");
    assert_eq!(batching_service.batches(), vec![Vec::<i64>::new()], "the probe is one call with no records");
}

#[tokio::test]
async fn wrong_result_count_is_internal() {
    let service = TestService::new(BatchResponse::Results(1));
    let endpoint = serve(service.clone()).await;
    let batch = messages(0..3);

    let results = client(&endpoint, default_codes()).handle_batch(&first_attempts(&batch)).await;

    assert_eq!(results.len(), 3);
    for result in &results {
        assert_eq!(error(result).code, Some(Code::Internal));
        assert_eq!(error(result).disposition, Disposition::NonPausing);
        assert!(error(result).message.contains("1 results for a batch of 3"), "{}", error(result).message);
    }

    let internal_pauses: HashSet<Code> = [Code::Internal].into_iter().collect();
    let results = client(&endpoint, internal_pauses).handle_batch(&first_attempts(&batch)).await;
    for result in &results {
        assert_eq!(error(result).disposition, Disposition::PauseEligible);
    }
}

#[tokio::test]
async fn batch_splits_at_record_count() {
    let service = TestService::new(BatchResponse::PerRecord(|_| Code::Ok));
    let handler = client(&serve(service.clone()).await, default_codes()).with_batch_max(2);
    let batch = messages(0..5);

    let results = handler.handle_batch(&first_attempts(&batch)).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut batches = service.batches();
    batches.sort();
    assert_eq!(batches, vec![vec![0, 1], vec![2, 3]]);
    // A piece of one record goes as a Handle call.
    assert_eq!(service.handle_offsets(), vec![4]);
}

#[tokio::test]
async fn batch_splits_within_message_limit() {
    const LIMIT: usize = 2_000;
    let service = TestService::new(BatchResponse::PerRecord(|_| Code::Ok));
    let handler = limited_client(&serve(service.clone()).await, LIMIT, TIMEOUT);
    // Offset 3 is over the limit alone; the others fit two or three to a call.
    let batch: Vec<Message> = (0..7).map(|offset| message(offset, if offset == 3 { 3 * LIMIT } else { 600 })).collect();

    let results = handler.handle_batch(&first_attempts(&batch)).await;

    assert_eq!(results.len(), 7);
    let oversized = error(&results[3]);
    assert_eq!(oversized.code, Some(Code::ResourceExhausted));
    assert_eq!(oversized.disposition, Disposition::NonPausing);
    assert!(oversized.message.contains("not sent"), "{}", oversized.message);
    for (index, result) in results.iter().enumerate().filter(|(index, _)| *index != 3) {
        assert!(result.is_ok(), "offset {index}: {result:?}");
    }

    let received = service.received.lock().unwrap();
    assert!(received.batches.len() >= 2, "{:?}", received.batches);
    assert!(received.batch_bytes.iter().all(|bytes| *bytes <= LIMIT), "{:?}", received.batch_bytes);
    let mut sent: Vec<i64> = received.batches.iter().flatten().copied().collect();
    sent.extend(received.handle.iter().map(|(offset, _)| *offset));
    sent.sort_unstable();
    assert_eq!(sent, vec![0, 1, 2, 4, 5, 6], "every record but the oversized one is sent once");
}

#[tokio::test]
async fn batch_deadline_is_pause_eligible() {
    let service = TestService::new(BatchResponse::Never);
    let timeout = Duration::from_millis(200);
    let handler = limited_client(&serve(service.clone()).await, 1 << 20, timeout);
    let batch = messages(0..2);

    let results = handler.handle_batch(&first_attempts(&batch)).await;

    for result in &results {
        assert_eq!(error(result).code, Some(Code::DeadlineExceeded));
        assert_eq!(error(result).disposition, Disposition::PauseEligible);
    }
    assert_eq!(service.batches().len(), 1);
}

#[tokio::test]
async fn unreachable_handler_keeps_batching() {
    // A port that was free a moment ago: nothing listens on it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("bind");
    let handler = client(&format!("http://{addr}"), default_codes());
    let batch = messages(0..2);

    let results = handler.handle_batch(&first_attempts(&batch)).await;

    for result in &results {
        assert_eq!(error(result).disposition, Disposition::PauseEligible);
    }
    assert_eq!(handler.max_batch_len(), DEFAULT_HANDLER_BATCH_MAX);
}
