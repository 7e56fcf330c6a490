//! The HandleStream path of [`GrpcHandler`]: one long-lived bidirectional call per handler
//! endpoint, on which each record is one `StreamRequest` and each result one `StreamResponse`
//! matched to it by id.
//!
//! A unary call costs a new HTTP/2 stream, request and response headers, trailers and, on the
//! server, a task per call. On the stream a record costs two length-prefixed messages, and
//! several ready ones share a write. Unlike a HandleBatch call, no record waits for another.
//!
//! Invariants:
//! - At most one stream is open per [`StreamLink`], and clones of a `GrpcHandler` share the
//!   link. A stream opens at start-up (the probe) or with the first record after the previous
//!   stream ended.
//! - Every record sent is settled exactly once: by its response, by its own deadline (the
//!   caller stops waiting and removes its id), or by the end of the stream. A record registered
//!   after the stream ended is refused at once, so none waits on a stream that can no longer
//!   answer.
//! - When the stream ends, every record still waiting gets the end's failure: no answer (a
//!   clean end, a transport error) is pause-eligible whatever `SCC_PAUSE_CODES` says, and a
//!   status from the handler is classified as if Handle had returned it.
//! - UNIMPLEMENTED from the handler at any opening turns the stream off for the rest of the
//!   process. The records that were waiting on it are sent again by the caller through
//!   HandleBatch or Handle, so none is lost to the fallback.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use super::{GrpcHandler, means_unimplemented};
use crate::handler::HandlerError;
use crate::handler::classify::{CallFailure, classify};
use crate::message::Message;
use crate::proto::message_handler_client::MessageHandlerClient;
use crate::proto::{RecordResult, StreamRequest, StreamResponse};

/// How long the start-up probe waits for the handler to accept or reject the stream.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The maximum bytes that the `id` field adds to a `StreamRequest`: its key and a 10-byte varint.
/// The size check counts it, because the id is chosen after the check.
const MAX_ID_FIELD_BYTES: usize = 11;

/// Whether the handler implements HandleStream, as far as kafka-scc has learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Support {
    /// No stream has been accepted or rejected yet.
    Unknown,
    /// The handler accepted a stream.
    Supported,
    /// The handler returned UNIMPLEMENTED, or `SCC_HANDLER_STREAM=off`.
    Unsupported,
}

/// The HandleStream state of one handler endpoint, shared by the clones of a `GrpcHandler`.
#[derive(Debug)]
pub(super) struct StreamLink {
    support: watch::Sender<Support>,
    /// The stream that new records go on; replaced once it has ended.
    current: Mutex<Option<Arc<OpenStream>>>,
}

impl StreamLink {
    /// Creates the link of one endpoint. `enabled` false (`SCC_HANDLER_STREAM=off`) starts it
    /// as unsupported, so no stream ever opens.
    pub(super) fn new(enabled: bool) -> StreamLink {
        let support = if enabled { Support::Unknown } else { Support::Unsupported };
        StreamLink { support: watch::Sender::new(support), current: Mutex::new(None) }
    }

    /// Returns true while records may go on a stream: the stream is on and the handler has not
    /// returned UNIMPLEMENTED for it.
    pub(super) fn usable(&self) -> bool {
        *self.support.borrow() != Support::Unsupported
    }

    /// Stores what the handler's response to an opening showed, and logs each change.
    /// UNIMPLEMENTED is final even after earlier streams were accepted, because a handler
    /// redeployed without HandleStream would otherwise get a new stream attempt before every
    /// record.
    fn learn(&self, learned: Support, endpoint: &str, status: Option<&Status>) {
        let changed = self.support.send_if_modified(|support| {
            let change = matches!(
                (*support, learned),
                (Support::Unknown, Support::Supported) | (Support::Unknown | Support::Supported, Support::Unsupported)
            );
            if change {
                *support = learned;
            }
            change
        });
        if !changed {
            return;
        }
        match learned {
            Support::Supported => {
                info!(endpoint, "the handler implements HandleStream; every record goes on one long-lived stream")
            }
            _ => info!(
                endpoint,
                grpc.message = status.map(Status::message).unwrap_or_default(),
                "the handler does not implement HandleStream; using HandleBatch and Handle from now on"
            ),
        }
    }
}

/// One HandleStream call. The link and the records waiting on the call keep its sending half.
/// The task reading the responses shares the waiting records only, so dropping the last sending
/// half ends the request stream, and the handler then ends its side.
#[derive(Debug)]
struct OpenStream {
    requests: mpsc::UnboundedSender<StreamRequest>,
    waiting: Arc<Waiting>,
}

/// The records of one stream awaiting their responses.
#[derive(Debug, Default)]
struct Waiting {
    state: Mutex<WaitingState>,
    next_id: AtomicU64,
}

#[derive(Debug, Default)]
struct WaitingState {
    senders: HashMap<u64, oneshot::Sender<Settled>>,
    /// Set once the stream has ended; no record registers after that.
    ended: bool,
}

/// The settlement of a record sent on the stream.
#[derive(Clone, Debug)]
enum Settled {
    /// The handler's result for the record.
    Answered(Option<RecordResult>),
    /// The stream ended before the record's response, with this failure.
    Ended(HandlerError),
    /// The handler does not implement HandleStream; the record must go another way.
    Unsupported,
}

impl Waiting {
    /// Registers a record and returns its id and the receiver of its settlement, or `None` when
    /// the stream has ended.
    fn register(&self) -> Option<(u64, oneshot::Receiver<Settled>)> {
        let mut state = self.state.lock().expect("stream waiting lock");
        if state.ended {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        state.senders.insert(id, sender);
        Some((id, receiver))
    }

    fn forget(&self, id: u64) {
        self.state.lock().expect("stream waiting lock").senders.remove(&id);
    }

    fn is_ended(&self) -> bool {
        self.state.lock().expect("stream waiting lock").ended
    }

    /// Delivers one response; returns false when no record waits for its id.
    fn answer(&self, response: StreamResponse) -> bool {
        let sender = self.state.lock().expect("stream waiting lock").senders.remove(&response.id);
        match sender {
            // The receiver is gone when the record's deadline passed in the meantime.
            Some(sender) => sender.send(Settled::Answered(response.result)).is_ok(),
            None => false,
        }
    }

    /// Marks the stream ended and settles every waiting record with `settled`; returns how
    /// many there were.
    fn end(&self, settled: &Settled) -> usize {
        let senders = {
            let mut state = self.state.lock().expect("stream waiting lock");
            state.ended = true;
            std::mem::take(&mut state.senders)
        };
        let count = senders.len();
        for sender in senders.into_values() {
            let _ = sender.send(settled.clone());
        }
        count
    }
}

/// Removes a record from the waiting set when its caller stops waiting, on its deadline or
/// because its future was dropped.
struct Registration<'a> {
    waiting: &'a Waiting,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.waiting.forget(self.id);
    }
}

/// The end of a stream, as the response reader saw it.
enum End {
    /// The handler closed its side with OK.
    Closed,
    /// The call failed with this status, from the handler or from the transport.
    Failed(Status),
    /// The handler returned UNIMPLEMENTED to the opening.
    Unsupported(Status),
}

impl GrpcHandler {
    /// Sends one record on the stream and waits for its result under the handler deadline.
    /// Returns `None` when the record must go through HandleBatch or Handle instead, because
    /// the handler does not implement HandleStream.
    pub(super) async fn handle_on_stream(&self, message: &Message, attempt: u32) -> Option<Result<(), HandlerError>> {
        let mut request = StreamRequest {
            id: 0,
            record: Some(self.record(message, attempt)),
            timeout_ms: self.timeout.as_millis() as u64,
        };
        let size = request.encoded_len() + MAX_ID_FIELD_BYTES;
        if size > self.max_message_bytes {
            return Some(Err(self.oversized(size)));
        }

        // The stream can end between being picked and the registration. A second pick opens a
        // new stream, or returns `None` when the end was UNIMPLEMENTED, so the record then goes
        // through HandleBatch or Handle.
        let mut registered = None;
        for _ in 0..2 {
            let stream = self.stream_for_record()?;
            if let Some((id, settled)) = stream.waiting.register() {
                registered = Some((stream, id, settled));
                break;
            }
        }
        let Some((stream, id, settled)) = registered else {
            return Some(Err(no_answer("the HandleStream stream ended twice before the record was sent")));
        };
        let _registration = Registration { waiting: &stream.waiting, id };
        request.id = id;
        // A send fails only once the call has ended. The response reader then settles every
        // registered record, this one included, so the receiver below still completes.
        let _ = stream.requests.send(request);

        match tokio::time::timeout(self.timeout, settled).await {
            Ok(Ok(Settled::Answered(result))) => Some(self.record_result(result.unwrap_or_default())),
            Ok(Ok(Settled::Ended(error))) => Some(Err(error)),
            Ok(Ok(Settled::Unsupported)) => None,
            Ok(Err(_)) => Some(Err(no_answer("the HandleStream response reader stopped"))),
            Err(_) => Some(Err(classify(&CallFailure::Timeout(self.timeout), &self.pause_codes))),
        }
    }

    /// Maps one record's result to the outcome that Handle returning its code would have.
    pub(super) fn record_result(&self, result: RecordResult) -> Result<(), HandlerError> {
        match Code::from(result.code) {
            Code::Ok => Ok(()),
            code => Err(classify(&CallFailure::Status(Status::new(code, result.message)), &self.pause_codes)),
        }
    }

    /// Returns the open stream, opening one if none is open, or `None` once the handler has
    /// turned out not to implement HandleStream.
    fn stream_for_record(&self) -> Option<Arc<OpenStream>> {
        let link = &self.stream;
        let mut current = link.current.lock().expect("stream link lock");
        if !link.usable() {
            return None;
        }
        if let Some(stream) = current.as_ref().filter(|stream| !stream.waiting.is_ended()) {
            return Some(stream.clone());
        }
        let stream = self.open_stream();
        *current = Some(stream.clone());
        Some(stream)
    }

    /// Starts a HandleStream call and the task that reads its responses.
    fn open_stream(&self) -> Arc<OpenStream> {
        let (requests, receiver) = mpsc::unbounded_channel();
        let waiting = Arc::new(Waiting::default());
        let reader = ResponseReader {
            client: self.client.clone(),
            waiting: waiting.clone(),
            link: Arc::downgrade(&self.stream),
            pause_codes: self.pause_codes.clone(),
            endpoint: self.endpoint.clone(),
        };
        tokio::spawn(reader.run(UnboundedReceiverStream::new(receiver)));
        debug!(endpoint = %self.endpoint, "opening a HandleStream stream");
        Arc::new(OpenStream { requests, waiting })
    }

    /// Opens the stream at start-up without a record, to learn before the first record whether
    /// the handler implements HandleStream. A handler that sends its response headers only with
    /// its first response leaves the question open; the first record then decides.
    pub(super) async fn probe_handle_stream(&self) {
        if self.stream_for_record().is_none() {
            return;
        }
        let mut support = self.stream.support.subscribe();
        let learned = tokio::time::timeout(PROBE_TIMEOUT, support.wait_for(|support| *support != Support::Unknown));
        if learned.await.is_err() {
            info!(
                endpoint = %self.endpoint, timeout_ms = PROBE_TIMEOUT.as_millis() as u64,
                "the handler has not accepted or rejected the HandleStream stream yet; \
                 the first record decides"
            );
        }
    }
}

/// Returns the pause-eligible failure of a record that got no response.
fn no_answer(reason: &str) -> HandlerError {
    HandlerError::pause_eligible(Some(Code::Unavailable), reason)
}

/// The task that makes the HandleStream call and delivers its responses.
struct ResponseReader {
    client: MessageHandlerClient<Channel>,
    waiting: Arc<Waiting>,
    link: Weak<StreamLink>,
    pause_codes: HashSet<Code>,
    endpoint: String,
}

impl ResponseReader {
    async fn run(mut self, requests: UnboundedReceiverStream<StreamRequest>) {
        let end = self.read(requests).await;
        let (settled, reason) = match &end {
            End::Closed => (
                Settled::Ended(no_answer("the handler ended the HandleStream stream without answering")),
                "the handler closed the stream".to_owned(),
            ),
            End::Failed(status) => {
                let error = classify(&CallFailure::Status(status.clone()), &self.pause_codes);
                let reason = error.to_string();
                (Settled::Ended(error), reason)
            }
            End::Unsupported(status) => {
                if let Some(link) = self.link.upgrade() {
                    link.learn(Support::Unsupported, &self.endpoint, Some(status));
                }
                (Settled::Unsupported, "UNIMPLEMENTED".to_owned())
            }
        };

        let unanswered = self.waiting.end(&settled);
        match end {
            End::Unsupported(_) => {}
            _ if unanswered > 0 => warn!(
                endpoint = %self.endpoint, unanswered, %reason,
                "the HandleStream stream failed to open or ended while records waited; each gets its final status"
            ),
            _ => debug!(endpoint = %self.endpoint, %reason, "the HandleStream stream ended"),
        }
    }

    /// Makes the call and delivers responses until the stream ends.
    async fn read(&mut self, requests: UnboundedReceiverStream<StreamRequest>) -> End {
        let mut responses = match self.client.handle_stream(tonic::Request::new(requests)).await {
            Ok(response) => response.into_inner(),
            Err(status) if means_unimplemented(&status) => return End::Unsupported(status),
            Err(status) => return End::Failed(status),
        };
        if let Some(link) = self.link.upgrade() {
            link.learn(Support::Supported, &self.endpoint, None);
        }
        loop {
            match responses.message().await {
                Ok(Some(response)) => {
                    let id = response.id;
                    if !self.waiting.answer(response) {
                        debug!(endpoint = %self.endpoint, id, "a HandleStream response came after its record's deadline");
                    }
                }
                Ok(None) => return End::Closed,
                Err(status) => return End::Failed(status),
            }
        }
    }
}
