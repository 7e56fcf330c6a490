//! The example handler: a `MessageHandler` gRPC service that posts each Kafka record to the
//! downstream API as JSON and maps the API's answer to the gRPC status kafka-scc acts on.
//!
//! | downstream answer                         | status returned    | kafka-scc does            |
//! |-------------------------------------------|--------------------|---------------------------|
//! | 2xx                                       | OK                 | commits                   |
//! | no connection, timeout, broken connection | UNAVAILABLE        | closes the gate, retries  |
//! | 5xx, 408 Request Timeout, 429 Too Many    | UNAVAILABLE        | closes the gate, retries  |
//! | any other 4xx                             | INVALID_ARGUMENT   | logs and commits          |
//! | anything else (1xx, unfollowed 3xx)       | INTERNAL           | logs and commits          |
//!
//! It implements HandleStream and HandleBatch too. On the stream it posts each record as it
//! arrives, on a task of its own, and responds to each as soon as its POST is done. A batch's
//! records are posted concurrently, one POST each. Either way each record's status becomes its
//! result code.
//!
//! Shared by the `handler_server` example and `quickstart`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use kafka_scc::handler::classify::code_name;
use kafka_scc::message::traceparent_for;
use kafka_scc::proto::message_handler_server::{MessageHandler, MessageHandlerServer};
use kafka_scc::proto::{
    HandleBatchRequest, HandleBatchResponse, HandleRequest, HandleResponse, RecordResult, StreamRequest, StreamResponse,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

/// Counters of one [`SinkForwarder`], shared by its clones.
#[derive(Debug, Default)]
pub struct ForwarderCounts {
    forwarded: AtomicU64,
    unavailable: AtomicU64,
    rejected: AtomicU64,
}

impl ForwarderCounts {
    /// Calls answered OK.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Calls answered UNAVAILABLE (kafka-scc retries these).
    pub fn unavailable(&self) -> u64 {
        self.unavailable.load(Ordering::Relaxed)
    }

    /// Calls answered INVALID_ARGUMENT or INTERNAL (kafka-scc commits these).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

/// The handler service: forwards each record to `sink_url`.
#[derive(Clone, Debug)]
pub struct SinkForwarder {
    client: reqwest::Client,
    sink_url: reqwest::Url,
    counts: Arc<ForwarderCounts>,
    /// Set by [`SinkForwarder::end_streams`]; the HandleStream streams then stop reading records
    /// and end once every record already read has its response.
    ending: Arc<watch::Sender<bool>>,
}

impl SinkForwarder {
    /// `timeout` bounds each POST, connecting included; keep it below kafka-scc's
    /// `SCC_HANDLER_TIMEOUT_MS` so the handler answers before kafka-scc gives up on it.
    pub fn new(sink_url: &str, timeout: Duration) -> Result<SinkForwarder, String> {
        let sink_url =
            reqwest::Url::parse(sink_url).map_err(|error| format!("invalid sink URL {sink_url:?}: {error}"))?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .build()
            .map_err(|error| format!("building the HTTP client failed: {error}"))?;
        Ok(SinkForwarder { client, sink_url, counts: Arc::default(), ending: Arc::new(watch::Sender::new(false)) })
    }

    /// Makes every HandleStream stream, open or later, read no more records and end once every
    /// record it has read has its response. Call it when a graceful shutdown starts: the server
    /// waits for open calls, and kafka-scc closes its side of the stream only when it stops.
    /// kafka-scc retries the records it sent that were never read.
    pub fn end_streams(&self) {
        self.ending.send_replace(true);
    }

    pub fn counts(&self) -> Arc<ForwarderCounts> {
        self.counts.clone()
    }

    pub fn sink_url(&self) -> &str {
        self.sink_url.as_str()
    }

    /// Posts one event; returns the status to answer kafka-scc with.
    async fn forward(&self, event: &Value, traceparent: Option<&str>) -> Result<(), Status> {
        let mut request = self.client.post(self.sink_url.clone()).json(event);
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                let what = if error.is_timeout() {
                    "timed out"
                } else if error.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                return Err(Status::unavailable(format!("sink {what}: {}", root_cause(&error))));
            }
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = format!("sink answered HTTP {status}");
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS
        {
            Err(Status::unavailable(text))
        } else if status.is_client_error() {
            Err(Status::invalid_argument(text))
        } else {
            Err(Status::internal(text))
        }
    }

    /// Forwards one record, counts the outcome and logs a failure; returns the record's status.
    async fn forward_record(&self, record: &HandleRequest, traceparent: Option<&str>) -> Result<(), Status> {
        let event = event_json(record);
        match self.forward(&event, traceparent).await {
            Ok(()) => {
                self.counts.forwarded.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(status) => {
                let counter = if status.code() == tonic::Code::Unavailable {
                    &self.counts.unavailable
                } else {
                    &self.counts.rejected
                };
                counter.fetch_add(1, Ordering::Relaxed);
                warn!(
                    topic = %record.topic,
                    partition = record.partition,
                    offset = record.offset,
                    trace_id = %record.trace_id,
                    attempt = record.attempt,
                    grpc.code = code_name(status.code()),
                    error = %status.message(),
                    "forwarding to the sink failed"
                );
                Err(status)
            }
        }
    }
}

#[tonic::async_trait]
impl MessageHandler for SinkForwarder {
    async fn handle(&self, request: Request<HandleRequest>) -> Result<Response<HandleResponse>, Status> {
        let traceparent =
            request.metadata().get("traceparent").and_then(|value| value.to_str().ok()).map(str::to_owned);
        let record = request.into_inner();
        self.forward_record(&record, traceparent.as_deref()).await.map(|()| Response::new(HandleResponse {}))
    }

    /// Forwards the records concurrently: kafka-scc never puts two records in one batch that
    /// its processing order keeps apart. A batch call carries no `traceparent` metadata, so
    /// each POST gets one made from its record's trace id.
    async fn handle_batch(
        &self,
        request: Request<HandleBatchRequest>,
    ) -> Result<Response<HandleBatchResponse>, Status> {
        let records = request.into_inner().records;
        let forwards = records.iter().map(|record| async move {
            let traceparent = (!record.trace_id.is_empty()).then(|| traceparent_for(&record.trace_id));
            self.forward_record(record, traceparent.as_deref()).await
        });
        let results = join_all(forwards).await.into_iter().map(RecordResult::from).collect();
        Ok(Response::new(HandleBatchResponse { results }))
    }

    /// Forwards each record of the stream on its own task and responds when its POST is done,
    /// so a slow POST holds back no other record. The response stream ends once every record
    /// read has its response and either kafka-scc has closed its side or
    /// [`SinkForwarder::end_streams`] was called.
    async fn handle_stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<BoxStream<StreamResponse>>, Status> {
        let mut requests = request.into_inner();
        let (responses, receiver) = mpsc::unbounded_channel();
        let forwarder = self.clone();
        let mut ending = self.ending.subscribe();
        tokio::spawn(async move {
            loop {
                let request = tokio::select! {
                    next = requests.message() => match next {
                        Ok(Some(request)) => request,
                        _ => break,
                    },
                    _ = ending.wait_for(|ending| *ending) => break,
                };
                let (forwarder, responses) = (forwarder.clone(), responses.clone());
                tokio::spawn(async move {
                    let result = match &request.record {
                        Some(record) => {
                            let traceparent = (!record.trace_id.is_empty()).then(|| traceparent_for(&record.trace_id));
                            forwarder.forward_record(record, traceparent.as_deref()).await
                        }
                        None => Err(Status::invalid_argument("the stream request carries no record")),
                    };
                    let response = StreamResponse { id: request.id, result: Some(RecordResult::from(result)) };
                    // The send fails only after the response stream was dropped, when no one waits for it.
                    let _ = responses.send(Ok(response));
                });
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(receiver))))
    }
}

/// The JSON event posted for one record: the key as UTF-8 (lossy) or null, the value as JSON
/// when it parses as JSON, else as a (lossy UTF-8) string, else null for a tombstone.
pub fn event_json(record: &HandleRequest) -> Value {
    let key = record.key.as_ref().map(|key| Value::String(String::from_utf8_lossy(key).into_owned()));
    let value = record.value.as_ref().map(|value| {
        serde_json::from_slice::<Value>(value)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(value).into_owned()))
    });
    json!({
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "trace_id": record.trace_id,
        "key": key,
        "value": value,
    })
}

/// The innermost error: "Connection refused (os error 111)" rather than the whole chain.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(cause) = current.source() {
        current = cause;
    }
    current.to_string()
}

/// A running handler server.
pub struct HandlerServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Serves `service` on `listener` in a background task.
pub fn start_handler<S: MessageHandler>(service: S, listener: TcpListener) -> std::io::Result<HandlerServer> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_handler(service, listener, async {
        let _ = stopped.await;
    }));
    Ok(HandlerServer { addr, stop: Some(stop), task })
}

/// Serves `service` on `listener` until `shutdown` completes, then lets running calls finish.
/// The standard gRPC health service reports `MessageHandler` as SERVING, which kafka-scc waits
/// for before it consumes.
pub async fn serve_handler<S: MessageHandler>(
    service: S,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    serve_handler_on(service, incoming, None, shutdown).await
}

/// Serves `service` on the connections of `incoming` (TCP or Unix socket), over TLS when `tls`
/// is set, until `shutdown` completes. Like [`serve_handler`], it also serves the health
/// service.
pub async fn serve_handler_on<S, I, IO, IE>(
    service: S,
    incoming: I,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    S: MessageHandler,
    I: tokio_stream::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<MessageHandlerServer<S>>().await;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_service(health_service)
        .add_service(MessageHandlerServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

impl HandlerServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address kafka-scc calls (`HANDLER_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting calls, lets running calls finish (bounded by `timeout`) and closes.
    pub async fn stop(mut self, timeout: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(timeout, &mut self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => warn!(%error, "the handler server failed"),
            Ok(Err(error)) => warn!(%error, "the handler server task ended abnormally"),
            Err(_) => self.task.abort(),
        }
    }
}
