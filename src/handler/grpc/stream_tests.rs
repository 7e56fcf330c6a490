//! [`GrpcHandler`]'s HandleStream path against real tonic servers on loopback. The tests cover
//! per-record results in any order, the start-up probe and the UNIMPLEMENTED fallback, and
//! per-record deadlines. They also cover the end of a stream while records wait, one stream for
//! all clones, the off switch and the message size limit.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::codegen::BoxStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::GrpcHandler;
use super::tests::{
    BatchResponse, TIMEOUT, TestService, default_codes, error, first_attempts, message, messages, serve,
};
use crate::config::DEFAULT_HANDLER_BATCH_MAX;
use crate::handler::{Disposition, Handler, HandlerError, Readiness};
use crate::proto::message_handler_server::{MessageHandler, MessageHandlerServer};
use crate::proto::{
    HandleBatchRequest, HandleBatchResponse, HandleRequest, HandleResponse, RecordResult, StreamRequest, StreamResponse,
};

/// Bound for the conditions that the tests wait on. Reaching it means that the test failed.
const WAIT: Duration = Duration::from_secs(30);

/// How a [`StreamService`] responds to the records of the first stream opened to it. Every
/// later stream responds OK to each record at once.
#[derive(Clone, Copy)]
enum StreamMode {
    /// Responds to each record at once, with the code that the function returns for its offset.
    AtOnce(fn(i64) -> Code),
    /// Keeps the records until `count` have arrived, then responds to them in the reverse order
    /// of their arrival, with the code that `code_for` returns for each offset. OK goes as an
    /// unset result.
    Reversed { count: usize, code_for: fn(i64) -> Code },
    /// Responds OK at once, except to the record at this offset. That one gets INVALID_ARGUMENT,
    /// and only after [`StreamService::release_held`].
    Hold(i64),
    /// Never responds.
    Never,
    /// Keeps the records until `count` have arrived, then ends the stream without responding to
    /// them. It ends with status `code`, or cleanly (OK trailers) when `code` is OK.
    EndAfter { count: usize, code: Code },
    /// Rejects every HandleStream call with UNIMPLEMENTED, as a handler without it does.
    Unimplemented,
    /// Ends the first stream cleanly once `count` records have arrived, without responding, and
    /// rejects every later HandleStream call with UNIMPLEMENTED, as a handler redeployed without
    /// HandleStream does.
    EndThenUnimplemented { count: usize },
}

/// What a [`StreamService`] received.
#[derive(Debug, Default)]
struct StreamReceived {
    /// HandleStream calls opened, including those rejected with UNIMPLEMENTED.
    opens: usize,
    /// Every request received on a stream, with the number of its stream (0 for the first one
    /// opened).
    requests: Vec<(usize, StreamRequest)>,
    /// Responses sent for the held record after [`StreamService::release_held`].
    late_responses: usize,
    /// Offsets of the Handle calls.
    handle: Vec<i64>,
    /// Offsets of each HandleBatch call.
    batches: Vec<Vec<i64>>,
}

/// A handler server that implements HandleStream as [`StreamMode`] sets, and Handle and
/// HandleBatch with OK for every record.
#[derive(Clone)]
struct StreamService {
    mode: StreamMode,
    received: Arc<Mutex<StreamReceived>>,
    changed: Arc<Notify>,
    release: Arc<watch::Sender<bool>>,
}

impl StreamService {
    fn new(mode: StreamMode) -> StreamService {
        StreamService {
            mode,
            received: Arc::default(),
            changed: Arc::new(Notify::new()),
            release: Arc::new(watch::Sender::new(false)),
        }
    }

    fn opens(&self) -> usize {
        self.received.lock().unwrap().opens
    }

    fn requests(&self) -> Vec<(usize, StreamRequest)> {
        self.received.lock().unwrap().requests.clone()
    }

    /// Returns the offsets received on streams, sorted.
    fn stream_offsets(&self) -> Vec<i64> {
        let mut offsets: Vec<i64> = self.requests().iter().map(|(_, request)| offset_of(request)).collect();
        offsets.sort_unstable();
        offsets
    }

    fn handle_offsets(&self) -> Vec<i64> {
        self.received.lock().unwrap().handle.clone()
    }

    fn batches(&self) -> Vec<Vec<i64>> {
        self.received.lock().unwrap().batches.clone()
    }

    /// Lets the service respond to the record that [`StreamMode::Hold`] keeps.
    fn release_held(&self) {
        self.release.send_replace(true);
    }

    /// Waits until `condition` holds for what the server received, re-checking after every
    /// change, for at most [`WAIT`]. Returns false on timeout.
    async fn wait_for(&self, condition: impl Fn(&StreamReceived) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            if condition(&self.received.lock().unwrap()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Reads the requests of stream number `stream` and responds on `responses`. Returning
    /// drops `responses`, which ends the response stream.
    async fn serve_stream(
        self,
        stream: usize,
        mut requests: Streaming<StreamRequest>,
        responses: mpsc::UnboundedSender<Result<StreamResponse, Status>>,
    ) {
        let mode = if stream == 0 { self.mode } else { StreamMode::AtOnce(|_| Code::Ok) };
        let mut waiting = Vec::new();
        while let Ok(Some(request)) = requests.message().await {
            let (id, offset) = (request.id, offset_of(&request));
            self.received.lock().unwrap().requests.push((stream, request));
            self.changed.notify_waiters();

            match mode {
                StreamMode::AtOnce(code_for) => {
                    let _ = responses.send(Ok(response_for(id, offset, code_for(offset))));
                }
                StreamMode::Reversed { count, code_for } => {
                    waiting.push((id, offset));
                    if waiting.len() == count {
                        for (id, offset) in waiting.drain(..).rev() {
                            let response = match code_for(offset) {
                                Code::Ok => StreamResponse { id, result: None },
                                code => response_for(id, offset, code),
                            };
                            let _ = responses.send(Ok(response));
                        }
                    }
                }
                StreamMode::Hold(held_offset) if offset == held_offset => {
                    tokio::spawn(self.clone().respond_when_released(id, offset, responses.clone()));
                }
                StreamMode::Hold(_) => {
                    let _ = responses.send(Ok(response_for(id, offset, Code::Ok)));
                }
                StreamMode::Never | StreamMode::Unimplemented => {}
                StreamMode::EndThenUnimplemented { count } => {
                    waiting.push((id, offset));
                    if waiting.len() == count {
                        return;
                    }
                }
                StreamMode::EndAfter { count, code } => {
                    waiting.push((id, offset));
                    if waiting.len() == count {
                        if code != Code::Ok {
                            let _ = responses.send(Err(Status::new(code, "the test handler ends the stream")));
                        }
                        return;
                    }
                }
            }
        }
    }

    /// Responds to the held record with INVALID_ARGUMENT once the test releases it.
    async fn respond_when_released(
        self,
        id: u64,
        offset: i64,
        responses: mpsc::UnboundedSender<Result<StreamResponse, Status>>,
    ) {
        let mut release = self.release.subscribe();
        let _ = release.wait_for(|released| *released).await;
        let _ = responses.send(Ok(response_for(id, offset, Code::InvalidArgument)));
        self.received.lock().unwrap().late_responses += 1;
        self.changed.notify_waiters();
    }
}

#[tonic::async_trait]
impl MessageHandler for StreamService {
    async fn handle(&self, request: Request<HandleRequest>) -> Result<Response<HandleResponse>, Status> {
        self.received.lock().unwrap().handle.push(request.get_ref().offset);
        self.changed.notify_waiters();
        Ok(Response::new(HandleResponse {}))
    }

    async fn handle_batch(
        &self,
        request: Request<HandleBatchRequest>,
    ) -> Result<Response<HandleBatchResponse>, Status> {
        let offsets: Vec<i64> = request.get_ref().records.iter().map(|record| record.offset).collect();
        let results = vec![RecordResult::default(); offsets.len()];
        self.received.lock().unwrap().batches.push(offsets);
        self.changed.notify_waiters();
        Ok(Response::new(HandleBatchResponse { results }))
    }

    async fn handle_stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<BoxStream<StreamResponse>>, Status> {
        let stream = {
            let mut received = self.received.lock().unwrap();
            received.opens += 1;
            received.opens - 1
        };
        self.changed.notify_waiters();
        let rejected = match self.mode {
            StreamMode::Unimplemented => true,
            StreamMode::EndThenUnimplemented { .. } => stream > 0,
            _ => false,
        };
        if rejected {
            return Err(Status::unimplemented("this test handler does not serve HandleStream"));
        }

        let (responses, receiver) = mpsc::unbounded_channel();
        tokio::spawn(self.clone().serve_stream(stream, request.into_inner(), responses));
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(receiver))))
    }
}

/// Returns the offset of a request's record, or -1 when the record is missing.
fn offset_of(request: &StreamRequest) -> i64 {
    request.record.as_ref().map_or(-1, |record| record.offset)
}

/// Builds the response for record `id` with `code` and a message that names the offset.
fn response_for(id: u64, offset: i64, code: Code) -> StreamResponse {
    StreamResponse { id, result: Some(RecordResult { code: i32::from(code), message: format!("offset {offset}") }) }
}

/// Serves `service` on a fresh loopback port until the test's runtime ends. Returns the
/// endpoint and a second handle on every accepted connection, so that the test can cut them
/// the way a crashed handler or a broken network would.
async fn serve_cuttable<S: MessageHandler>(service: S) -> (String, Arc<Mutex<Vec<std::net::TcpStream>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    let accepted: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
    let tracked = accepted.clone();
    let incoming = TcpListenerStream::new(listener).map(move |socket| {
        let socket = socket?.into_std()?;
        tracked.lock().unwrap().push(socket.try_clone()?);
        tokio::net::TcpStream::from_std(socket)
    });
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(MessageHandlerServer::new(service))
            .serve_with_incoming(incoming)
            .await
            .expect("test handler server runs");
    });
    (format!("http://{addr}"), accepted)
}

/// Builds a client with the HandleStream stream on, as a sidecar has it by default.
fn client(endpoint: &str, pause_codes: HashSet<Code>) -> GrpcHandler {
    super::tests::client(endpoint, pause_codes).with_stream(true)
}

/// Builds a client like [`client`] whose requests may be at most `max_message_bytes` long.
fn limited_client(endpoint: &str, max_message_bytes: usize, timeout: Duration) -> GrpcHandler {
    super::tests::limited_client(endpoint, max_message_bytes, timeout).with_stream(true)
}

/// Sends each message once, all at the same time, with attempt 1. Returns the results in the
/// order of `messages`.
async fn handle_all(handler: &GrpcHandler, messages: &[crate::message::Message]) -> Vec<Result<(), HandlerError>> {
    join_all(messages.iter().map(|message| handler.handle(message, 1))).await
}

#[tokio::test]
async fn record_codes_are_classified_in_any_order() {
    let service = StreamService::new(StreamMode::Reversed {
        count: 4,
        code_for: |offset| match offset {
            1 => Code::Unavailable,
            2 => Code::InvalidArgument,
            _ => Code::Ok,
        },
    });
    let handler = client(&serve(service.clone()).await, default_codes());
    let batch = messages(0..4);

    // Offset 3 goes as a retry, to show that the attempt travels with the record.
    let attempts = [1, 1, 1, 3];
    let results = join_all(batch.iter().zip(attempts).map(|(message, attempt)| handler.handle(message, attempt))).await;

    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(results[3].is_ok(), "an unset result counts as OK: {:?}", results[3]);
    assert_eq!(error(&results[1]).code, Some(Code::Unavailable));
    assert_eq!(error(&results[1]).disposition, Disposition::PauseEligible);
    assert_eq!(error(&results[2]).code, Some(Code::InvalidArgument));
    assert_eq!(error(&results[2]).disposition, Disposition::NonPausing);
    assert_eq!(error(&results[2]).message, "offset 2");

    assert_eq!(service.opens(), 1);
    assert!(service.handle_offsets().is_empty(), "Handle was called: {:?}", service.handle_offsets());
    assert!(service.batches().is_empty(), "HandleBatch was called: {:?}", service.batches());
    let requests = service.requests();
    assert_eq!(requests.len(), 4);
    let ids: HashSet<u64> = requests.iter().map(|(_, request)| request.id).collect();
    assert_eq!(ids.len(), 4, "ids repeat on one stream: {requests:?}");
    for (_, request) in &requests {
        assert_eq!(request.timeout_ms, TIMEOUT.as_millis() as u64);
        let record = request.record.as_ref().expect("the request carries its record");
        let sent = &batch[record.offset as usize];
        assert_eq!(record.trace_id, sent.trace_id, "offset {}", record.offset);
        assert_eq!(record.group_id, "group");
        assert_eq!(record.attempt, attempts[record.offset as usize], "offset {}", record.offset);
    }
}

#[tokio::test]
async fn probe_learns_stream_support() {
    let service = StreamService::new(StreamMode::AtOnce(|_| Code::Ok));
    let handler = client(&serve(service.clone()).await, default_codes());

    // The server has no health service, which reads as ready.
    assert_eq!(handler.wait_until_ready(Duration::ZERO).await, Readiness::Unknown);

    assert_eq!(handler.max_batch_len(), 1, "records on the stream go one by one");
    assert_eq!(service.opens(), 1, "the probe opens the stream");
    assert!(service.requests().is_empty(), "the probe sent a record");
    assert!(service.batches().is_empty(), "HandleBatch was probed although the stream is in use");

    let result = handler.handle(&message(0, 10), 1).await;

    assert!(result.is_ok(), "{result:?}");
    assert_eq!(service.opens(), 1, "the first record did not use the probe's stream");
    assert_eq!(service.stream_offsets(), vec![0]);
    assert!(service.handle_offsets().is_empty());
}

#[tokio::test]
async fn probe_learns_missing_stream() {
    // TestService leaves HandleStream to the generated default, which returns UNIMPLEMENTED.
    let service = TestService::new(BatchResponse::PerRecord(|_| Code::Ok));
    let handler = client(&serve(service.clone()).await, default_codes());
    assert_eq!(handler.max_batch_len(), 1, "records go one by one while the stream may be in use");

    assert_eq!(handler.wait_until_ready(Duration::ZERO).await, Readiness::Unknown);

    assert_eq!(handler.max_batch_len(), DEFAULT_HANDLER_BATCH_MAX);
    assert!(service.handle_offsets().is_empty(), "the probes sent a record");
    assert_eq!(service.batches(), vec![Vec::<i64>::new()], "the HandleBatch probe follows");

    let result = handler.handle(&message(0, 10), 1).await;
    let batch = messages(1..3);
    let results = handler.handle_batch(&first_attempts(&batch)).await;

    assert!(result.is_ok(), "{result:?}");
    assert_eq!(service.handle_offsets(), vec![0]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(service.batches(), vec![vec![], vec![1, 2]]);
}

#[tokio::test]
async fn first_record_learns_missing_stream() {
    let service = StreamService::new(StreamMode::Unimplemented);
    let handler = client(&serve(service.clone()).await, default_codes());
    let copy = handler.clone();
    let batch = messages(0..3);

    // No probe: the three records wait on the stream when UNIMPLEMENTED comes back.
    let results = handle_all(&handler, &batch).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut resent = service.handle_offsets();
    resent.sort_unstable();
    assert_eq!(resent, vec![0, 1, 2], "each record is sent again once, with Handle");
    assert_eq!(service.opens(), 1);
    assert_eq!(handler.max_batch_len(), DEFAULT_HANDLER_BATCH_MAX);
    assert_eq!(copy.max_batch_len(), DEFAULT_HANDLER_BATCH_MAX, "a clone still uses the stream");

    let result = copy.handle(&message(3, 10), 1).await;

    assert!(result.is_ok(), "{result:?}");
    assert_eq!(service.opens(), 1, "HandleStream was tried again after UNIMPLEMENTED");
    assert_eq!(service.handle_offsets().len(), 4);
}

#[tokio::test]
async fn later_unimplemented_turns_stream_off() {
    let service = StreamService::new(StreamMode::EndThenUnimplemented { count: 2 });
    let handler = client(&serve(service.clone()).await, default_codes());
    assert_eq!(handler.wait_until_ready(TIMEOUT).await, Readiness::Unknown);
    assert_eq!(handler.max_batch_len(), 1, "the first stream was accepted");

    // The first stream ends without responding, so both records are left without an answer.
    let results = handle_all(&handler, &messages(0..2)).await;

    for result in &results {
        assert_eq!(error(result).disposition, Disposition::PauseEligible, "{result:?}");
    }

    // The next opening gets UNIMPLEMENTED: the record goes through Handle, and so does every
    // later one, without another HandleStream attempt.
    let resent = handler.handle(&message(0, 10), 2).await;
    let later = handler.handle(&message(1, 10), 2).await;

    assert!(resent.is_ok(), "{resent:?}");
    assert!(later.is_ok(), "{later:?}");
    assert_eq!(service.opens(), 2, "HandleStream was tried again after UNIMPLEMENTED");
    assert_eq!(service.handle_offsets(), vec![0, 1]);
    assert_eq!(handler.max_batch_len(), DEFAULT_HANDLER_BATCH_MAX);
}

#[tokio::test]
async fn record_deadline_spares_the_stream() {
    const HELD: i64 = 1;
    let service = StreamService::new(StreamMode::Hold(HELD));
    // NOTE: records 0 and 2 must get their responses within this deadline too. A loopback
    // round trip normally takes a few milliseconds, so only a stalled machine misses it.
    let timeout = Duration::from_secs(2);
    let handler = limited_client(&serve(service.clone()).await, 1 << 20, timeout);
    let batch = messages(0..3);

    // The server never responds to the held record, so without the client's deadline the call
    // would wait until WAIT.
    let settled = tokio::time::timeout(WAIT, handle_all(&handler, &batch)).await;
    let results = settled.expect("the held record was not settled by its deadline");

    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(results[2].is_ok(), "{:?}", results[2]);
    let expired = error(&results[1]);
    assert_eq!(expired.code, Some(Code::DeadlineExceeded));
    assert_eq!(expired.disposition, Disposition::PauseEligible);
    assert!(expired.message.contains("2000 ms"), "{}", expired.message);

    // The late response is INVALID_ARGUMENT, which would fail any record it were matched to.
    service.release_held();
    let late = service.wait_for(|received| received.late_responses == 1).await;
    assert!(late, "the late response was not sent");
    let after = handler.handle(&message(3, 10), 1).await;

    assert!(after.is_ok(), "{after:?}");
    assert_eq!(service.opens(), 1, "the expired record or its late response ended the stream");
    assert_eq!(service.stream_offsets(), vec![0, 1, 2, 3]);
    let requests = service.requests();
    let (_, held_request) =
        requests.iter().find(|(_, request)| offset_of(request) == HELD).expect("the held record reached the server");
    assert_eq!(held_request.timeout_ms, 2_000);
}

#[tokio::test]
async fn stream_end_settles_waiting_records() {
    let internal: HashSet<Code> = [Code::Internal].into_iter().collect();
    let cases = [
        // The handler's status is classified as if Handle had returned it.
        (Code::Internal, default_codes(), Code::Internal, Disposition::NonPausing),
        (Code::Internal, internal, Code::Internal, Disposition::PauseEligible),
        // A clean end leaves the records unanswered, which is pause-eligible.
        (Code::Ok, default_codes(), Code::Unavailable, Disposition::PauseEligible),
    ];
    for (end, pause_codes, code, disposition) in cases {
        let service = StreamService::new(StreamMode::EndAfter { count: 2, code: end });
        let handler = client(&serve(service.clone()).await, pause_codes);
        let batch = messages(0..2);

        let results = handle_all(&handler, &batch).await;

        for result in &results {
            assert_eq!(error(result).code, Some(code), "stream ended with {end:?}");
            assert_eq!(error(result).disposition, disposition, "stream ended with {end:?}");
        }

        let next = handler.handle(&message(2, 10), 1).await;

        assert!(next.is_ok(), "stream ended with {end:?}: {next:?}");
        assert_eq!(service.opens(), 2, "stream ended with {end:?}: the next record opened no new stream");
        let streams: Vec<(usize, i64)> =
            service.requests().iter().map(|(stream, request)| (*stream, offset_of(request))).collect();
        assert!(streams.contains(&(1, 2)), "stream ended with {end:?}: {streams:?}");
    }
}

#[tokio::test]
async fn transport_failure_settles_waiting_records() {
    let service = StreamService::new(StreamMode::Never);
    let (endpoint, connections) = serve_cuttable(service.clone()).await;
    let handler = client(&endpoint, default_codes());
    let batch = messages(0..2);

    let cut = async {
        let arrived = service.wait_for(|received| received.requests.len() == 2).await;
        for socket in connections.lock().unwrap().drain(..) {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        arrived
    };
    let (results, arrived) = tokio::join!(handle_all(&handler, &batch), cut);

    assert!(arrived, "the records did not reach the server");
    for result in &results {
        assert_eq!(error(result).disposition, Disposition::PauseEligible, "{result:?}");
        assert_ne!(error(result).code, Some(Code::DeadlineExceeded), "the records waited for their deadline");
    }

    // The channel reconnects by itself. A call that meets the broken connection before the
    // channel notices fails pause-eligible, so a few tries are allowed.
    let mut tries = Vec::new();
    for _ in 0..5 {
        let result = handler.handle(&message(2, 10), 1).await;
        let done = result.is_ok();
        tries.push(result);
        if done {
            break;
        }
    }
    assert!(tries.last().is_some_and(Result::is_ok), "{tries:?}");
    for failed in tries.iter().filter_map(|result| result.as_ref().err()) {
        assert_eq!(failed.disposition, Disposition::PauseEligible, "{tries:?}");
    }
    assert!(service.opens() >= 2, "no new stream was opened");
    let requests = service.requests();
    let (last_stream, last_request) = requests.last().expect("the last record reached the server");
    assert_eq!(offset_of(last_request), 2);
    assert!(*last_stream >= 1, "the last record went on the broken stream");
}

#[tokio::test]
async fn clones_share_one_stream() {
    let service = StreamService::new(StreamMode::AtOnce(|_| Code::Ok));
    let handler = client(&serve(service.clone()).await, default_codes());
    let copy = handler.clone();
    let batch = messages(0..20);

    let calls = batch.iter().enumerate().map(|(index, message)| {
        let sender = if index % 2 == 0 { &handler } else { &copy };
        sender.handle(message, 1)
    });
    let results = join_all(calls).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(service.opens(), 1);
    assert_eq!(service.stream_offsets(), (0..20).collect::<Vec<_>>());
    let ids: HashSet<u64> = service.requests().iter().map(|(_, request)| request.id).collect();
    assert_eq!(ids.len(), 20, "two clones sent the same id");
    assert!(service.handle_offsets().is_empty());
}

#[tokio::test]
async fn disabled_stream_never_opens() {
    let service = StreamService::new(StreamMode::AtOnce(|_| Code::Ok));
    let handler = client(&serve(service.clone()).await, default_codes()).with_stream(false);
    assert_eq!(handler.max_batch_len(), DEFAULT_HANDLER_BATCH_MAX);

    assert_eq!(handler.wait_until_ready(Duration::ZERO).await, Readiness::Unknown);
    let result = handler.handle(&message(0, 10), 1).await;
    let batch = messages(1..3);
    let results = handler.handle_batch(&first_attempts(&batch)).await;

    assert!(result.is_ok(), "{result:?}");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(service.opens(), 0, "HandleStream was called");
    assert_eq!(service.handle_offsets(), vec![0]);
    assert_eq!(service.batches(), vec![vec![], vec![1, 2]], "the HandleBatch probe, then the batch");
}

#[tokio::test]
async fn oversized_record_is_not_sent() {
    const LIMIT: usize = 2_000;
    let service = StreamService::new(StreamMode::AtOnce(|_| Code::Ok));
    let handler = limited_client(&serve(service.clone()).await, LIMIT, TIMEOUT);

    let result = handler.handle(&message(0, 3 * LIMIT), 1).await;

    let oversized = error(&result);
    assert_eq!(oversized.code, Some(Code::ResourceExhausted));
    assert_eq!(oversized.disposition, Disposition::NonPausing);
    assert!(oversized.message.contains("not sent"), "{}", oversized.message);

    let small = handler.handle(&message(1, 10), 1).await;

    assert!(small.is_ok(), "{small:?}");
    assert_eq!(service.stream_offsets(), vec![1], "the oversized record reached the stream");
    assert!(service.handle_offsets().is_empty(), "the oversized record went through Handle");
}

#[tokio::test]
async fn record_at_size_limit_is_sent() {
    const LIMIT: usize = 2_000;
    let service = StreamService::new(StreamMode::AtOnce(|_| Code::Ok));
    let handler = limited_client(&serve(service.clone()).await, LIMIT, TIMEOUT);

    // Binary search for the largest value that the client sends. A record whose request is over
    // the transport's encoding limit would fail the whole stream instead of being rejected.
    let mut offset = 0;
    let mut sent = 0;
    let (mut fits, mut too_big) = (0, LIMIT);
    while too_big - fits > 1 || offset == 0 {
        let value_len = if offset == 0 { fits } else { (fits + too_big) / 2 };
        let result = handler.handle(&message(offset, value_len), 1).await;
        offset += 1;
        match result {
            Ok(()) => {
                fits = value_len;
                sent += 1;
            }
            Err(error) => {
                assert_eq!(error.code, Some(Code::ResourceExhausted), "value of {value_len} bytes: {error}");
                assert_eq!(error.disposition, Disposition::NonPausing, "value of {value_len} bytes");
                assert!(offset > 1, "a record with an empty value was rejected: {error}");
                too_big = value_len;
            }
        }
    }

    assert!(fits > LIMIT / 2, "only a value of {fits} bytes fits under {LIMIT}");
    assert_eq!(service.opens(), 1, "a record near the limit broke the stream");
    let requests = service.requests();
    assert_eq!(requests.len(), sent, "a rejected record reached the stream");
    for (_, request) in &requests {
        assert!(request.encoded_len() <= LIMIT, "a request of {} bytes was sent", request.encoded_len());
    }
}
