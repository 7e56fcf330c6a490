//! Shared fixtures for the integration tests: a librdkafka mock cluster over TCP, a producer,
//! real tonic handler servers on loopback (plaintext, TLS or a Unix socket), certificates made
//! for the test ([`pki`]), and configuration for a sidecar under test.
#![allow(dead_code)]

pub mod binary;
pub mod pki;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, join_all};
use kafka_scc::proto::message_handler_server::{MessageHandler, MessageHandlerServer};
use kafka_scc::proto::{HandleBatchRequest, HandleBatchResponse, HandleRequest, HandleResponse, RecordResult};
use kafka_scc::{Config, ConfigError, GrpcHandler, Handler, RunError, Sidecar, Stats, Summary};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::transport::ServerTlsConfig;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};

/// Generous bound for conditions the tests wait on; reaching it means the test failed.
pub const WAIT: Duration = Duration::from_secs(60);

/// A mock Kafka cluster with one broker, listening on loopback.
pub struct Broker {
    pub cluster: MockCluster<'static, DefaultProducerContext>,
    pub bootstrap: String,
}

impl Broker {
    pub fn start() -> Broker {
        let cluster = MockCluster::new(1).expect("mock cluster starts");
        let bootstrap = cluster.bootstrap_servers();
        Broker { cluster, bootstrap }
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) {
        self.cluster.create_topic(topic, partitions, 1).expect("topic created");
    }

    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("linger.ms", "5")
            .create()
            .expect("producer created")
    }

    /// Produces records and waits for every acknowledgement.
    pub async fn produce(&self, records: Vec<TestRecord>) {
        let producer = self.producer();
        for record in records {
            let mut headers = OwnedHeaders::new();
            for (key, value) in &record.headers {
                headers = headers.insert(Header { key, value: value.as_deref() });
            }
            let mut future = FutureRecord::<[u8], [u8]>::to(&record.topic).partition(record.partition).headers(headers);
            if let Some(timestamp) = record.timestamp_ms {
                future = future.timestamp(timestamp);
            }
            if let Some(key) = record.key.as_deref() {
                future = future.key(key);
            }
            if let Some(value) = record.value.as_deref() {
                future = future.payload(value);
            }
            producer.send(future, Duration::from_secs(10)).await.expect("record acknowledged");
        }
        producer.flush(Duration::from_secs(10)).expect("producer flushed");
    }

    /// Reads a group's committed offsets straight from the broker.
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, Option<i64>> {
        read_committed(&self.bootstrap, group, topic, partitions)
    }

    /// Reads a group's committed offsets on a blocking thread, so the async runtime's workers
    /// stay free for the sidecar and the handler server.
    pub async fn committed_async(&self, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, Option<i64>> {
        let bootstrap = self.bootstrap.clone();
        let group = group.to_owned();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || read_committed(&bootstrap, &group, &topic, partitions))
            .await
            .expect("committed offsets read on a blocking thread")
    }

    /// Checks that the group's commit on partition 0 of `topic` stops at `offset`, both in
    /// kafka-scc's `stats` and on the broker, while the record at `offset` waits for its retry.
    pub async fn assert_commit_held_at(&self, stats: &Stats, group: &str, topic: &str, offset: i64) {
        let held_back = stats.wait_until(WAIT, |s| s.committed_offset(topic, 0) == Some(offset)).await;
        assert!(held_back.is_ok(), "the commit did not reach record {offset}: {held_back:?}");
        let on_broker = self.wait_for_committed(group, topic, &[offset]).await;
        assert!(on_broker.is_ok(), "broker committed offsets while {offset} is retried: {on_broker:?}");
        assert_eq!(stats.snapshot().committed_offset(topic, 0), Some(offset), "a commit passed record {offset}");
    }

    /// Polls the broker until the group's committed offsets equal `expected` (index =
    /// partition), for at most [`WAIT`]. Returns the last offsets read as the error.
    pub async fn wait_for_committed(
        &self,
        group: &str,
        topic: &str,
        expected: &[i64],
    ) -> Result<(), BTreeMap<i32, Option<i64>>> {
        let partitions = i32::try_from(expected.len()).expect("partition count fits i32");
        let expected_offsets: BTreeMap<i32, Option<i64>> =
            (0..partitions).zip(expected.iter().map(|offset| Some(*offset))).collect();
        let deadline = Instant::now() + WAIT;
        loop {
            let committed = self.committed_async(group, topic, partitions).await;
            if committed == expected_offsets {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(committed);
            }
            tokio::time::sleep(BROKER_POLL_INTERVAL).await;
        }
    }
}

/// One record read back from a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl ReadRecord {
    /// Returns the value of the last header named `key`, as UTF-8.
    pub fn header(&self, key: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(name, _)| name == key)
            .and_then(|(_, value)| value.as_ref())
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }
}

impl Broker {
    /// Reads a topic from the start until `count` records arrived, for at most [`WAIT`];
    /// returns what was read. It runs on a blocking thread so the runtime stays free.
    pub async fn read_topic(&self, topic: &str, partitions: i32, count: usize) -> Vec<ReadRecord> {
        use rdkafka::message::{Headers, Message};

        let bootstrap = self.bootstrap.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", unique("reader"))
                .set("enable.auto.commit", "false")
                .create()
                .expect("reader consumer created");
            let mut list = TopicPartitionList::new();
            for partition in 0..partitions {
                list.add_partition_offset(&topic, partition, Offset::Beginning).expect("partition added");
            }
            consumer.assign(&list).expect("partitions assigned");
            let deadline = Instant::now() + WAIT;
            let mut records = Vec::new();
            while records.len() < count && Instant::now() < deadline {
                let Some(result) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let message = result.expect("record read");
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers.iter().map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec))).collect()
                    })
                    .unwrap_or_default();
                records.push(ReadRecord {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
            records
        })
        .await
        .expect("topic read on a blocking thread")
    }
}

/// Pause between two reads of the broker's committed offsets while polling for a value.
const BROKER_POLL_INTERVAL: Duration = Duration::from_millis(50);

fn read_committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, Option<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("inspection consumer created");
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).expect("committed offsets read");
    committed
        .elements()
        .iter()
        .map(|element| {
            let offset = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            (element.partition(), offset)
        })
        .collect()
}

/// One record to produce.
#[derive(Clone, Debug)]
pub struct TestRecord {
    pub topic: String,
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Create time in milliseconds since the Unix epoch; `None` lets the producer set it.
    pub timestamp_ms: Option<i64>,
}

impl TestRecord {
    pub fn new(topic: &str, partition: i32, key: Option<&[u8]>, value: &[u8]) -> TestRecord {
        TestRecord {
            topic: topic.to_owned(),
            partition,
            key: key.map(<[u8]>::to_vec),
            value: Some(value.to_vec()),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }
}

/// Builds `count` records for one partition with keys `k0`, `k1`, … (cycling through `keys`
/// of them) and values `v0`, `v1`, ….
pub fn keyed_records(topic: &str, partition: i32, count: usize, keys: usize) -> Vec<TestRecord> {
    (0..count)
        .map(|i| {
            TestRecord::new(topic, partition, Some(format!("k{}", i % keys).as_bytes()), format!("v{i}").as_bytes())
        })
        .collect()
}

/// Builds a sidecar configuration for `broker` and `topic` with a fresh group id and fast
/// timings; `extra` overrides or adds variables.
pub fn config(broker: &Broker, topic: &str, group: &str, endpoint: &str, extra: &[(&str, &str)]) -> Config {
    try_config(broker, topic, group, endpoint, extra).expect("valid test configuration")
}

pub fn try_config(
    broker: &Broker,
    topic: &str,
    group: &str,
    endpoint: &str,
    extra: &[(&str, &str)],
) -> Result<Config, ConfigError> {
    let mut vars: BTreeMap<String, String> = [
        ("KAFKA_BROKERS", broker.bootstrap.as_str()),
        ("KAFKA_GROUP_ID", group),
        ("SCC_HTTP_ADDR", "127.0.0.1:0"),
        // Tests that start the handler late would otherwise wait for its health check first.
        ("SCC_HANDLER_READY_TIMEOUT_MS", "0"),
        ("KAFKA_TOPIC", topic),
        ("HANDLER_ENDPOINT", endpoint),
        ("SCC_COMMIT_INTERVAL_MS", "50"),
        ("SCC_BACKOFF_BASE_MS", "50"),
        ("SCC_BACKOFF_MAX_MS", "400"),
        ("SCC_SHUTDOWN_TIMEOUT_MS", "5000"),
        ("KAFKA_CFG_SESSION_TIMEOUT_MS", "6000"),
        ("KAFKA_CFG_HEARTBEAT_INTERVAL_MS", "500"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (name, value) in extra {
        vars.insert((*name).to_owned(), (*value).to_owned());
    }
    Config::from_vars(vars)
}

/// What a [`ScriptedHandler`] returns for one call.
pub type Script = Arc<dyn Fn(&HandleRequest) -> Result<(), Status> + Send + Sync>;

/// A real gRPC `MessageHandler` that records every request and answers with a script.
#[derive(Clone)]
pub struct ScriptedHandler {
    pub calls: Arc<Mutex<Vec<HandleRequest>>>,
    pub script: Script,
    pub changed: Arc<Notify>,
}

impl ScriptedHandler {
    pub fn new(script: impl Fn(&HandleRequest) -> Result<(), Status> + Send + Sync + 'static) -> ScriptedHandler {
        ScriptedHandler { calls: Arc::default(), script: Arc::new(script), changed: Arc::new(Notify::new()) }
    }

    pub fn ok() -> ScriptedHandler {
        ScriptedHandler::new(|_| Ok(()))
    }

    pub fn calls(&self) -> Vec<HandleRequest> {
        self.calls.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl MessageHandler for ScriptedHandler {
    async fn handle(&self, request: Request<HandleRequest>) -> Result<Response<HandleResponse>, Status> {
        let body = request.into_inner();
        let result = (self.script)(&body);
        self.calls.lock().unwrap().push(body);
        self.changed.notify_waiters();
        result.map(|()| Response::new(HandleResponse {}))
    }
}

/// One call as a [`RecordingHandler`] received it.
#[derive(Clone, Debug)]
pub struct ReceivedCall {
    pub request: HandleRequest,
    /// The `traceparent` request metadata, when present and valid ASCII.
    pub traceparent: Option<String>,
    /// When the server received the call.
    pub received_at: Instant,
    /// The HandleBatch call that carried the record, numbered from 0 in arrival order; `None`
    /// for a Handle call.
    pub batch: Option<usize>,
}

/// The behaviour of a [`RecordingHandler`] for one call. Its future may wait before it returns
/// the status.
pub type Behaviour = Arc<dyn Fn(HandleRequest) -> BoxFuture<'static, Result<(), Status>> + Send + Sync>;

/// A real gRPC `MessageHandler` that records every call when it arrives, with its metadata,
/// and then responds through an asynchronous behaviour that may wait, sleep or fail.
///
/// HandleBatch returns UNIMPLEMENTED, as a handler without it does, unless the handler was made
/// with [`RecordingHandler::serving_batches`].
#[derive(Clone)]
pub struct RecordingHandler {
    calls: Arc<Mutex<Vec<ReceivedCall>>>,
    behaviour: Behaviour,
    changed: Arc<Notify>,
    serves_batches: bool,
    /// HandleBatch calls received, including those that returned UNIMPLEMENTED.
    batch_calls: Arc<AtomicUsize>,
}

impl RecordingHandler {
    pub fn new<F, Fut>(behaviour: F) -> RecordingHandler
    where
        F: Fn(HandleRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Status>> + Send + 'static,
    {
        RecordingHandler {
            calls: Arc::default(),
            behaviour: Arc::new(move |request| Box::pin(behaviour(request))),
            changed: Arc::new(Notify::new()),
            serves_batches: false,
            batch_calls: Arc::default(),
        }
    }

    /// Serves HandleBatch too: every record of a batch is recorded and goes through the
    /// behaviour, concurrently, and its status becomes the record's result.
    pub fn serving_batches(mut self) -> RecordingHandler {
        self.serves_batches = true;
        self
    }

    /// Returns how many HandleBatch calls arrived, including those that returned UNIMPLEMENTED.
    pub fn batch_calls(&self) -> usize {
        self.batch_calls.load(Ordering::SeqCst)
    }

    /// Returns every call received so far, in arrival order.
    pub fn calls(&self) -> Vec<ReceivedCall> {
        self.calls.lock().unwrap().clone()
    }

    /// Returns the calls received for one offset, in arrival order.
    pub fn calls_for(&self, partition: i32, offset: i64) -> Vec<ReceivedCall> {
        self.calls()
            .into_iter()
            .filter(|call| call.request.partition == partition && call.request.offset == offset)
            .collect()
    }

    /// Waits until `condition` holds for the calls received so far, re-checking after every
    /// call, for at most `timeout`. Returns the calls, or the last calls seen as the error.
    pub async fn wait_for_calls(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&[ReceivedCall]) -> bool,
    ) -> Result<Vec<ReceivedCall>, Vec<ReceivedCall>> {
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
}

#[tonic::async_trait]
impl MessageHandler for RecordingHandler {
    async fn handle(&self, request: Request<HandleRequest>) -> Result<Response<HandleResponse>, Status> {
        let traceparent =
            request.metadata().get("traceparent").and_then(|value| value.to_str().ok()).map(str::to_owned);
        let body = request.into_inner();
        self.calls.lock().unwrap().push(ReceivedCall {
            request: body.clone(),
            traceparent,
            received_at: Instant::now(),
            batch: None,
        });
        self.changed.notify_waiters();
        (self.behaviour)(body).await.map(|()| Response::new(HandleResponse {}))
    }

    async fn handle_batch(
        &self,
        request: Request<HandleBatchRequest>,
    ) -> Result<Response<HandleBatchResponse>, Status> {
        let index = self.batch_calls.fetch_add(1, Ordering::SeqCst);
        if !self.serves_batches {
            return Err(Status::unimplemented("this test handler does not serve HandleBatch"));
        }
        let records = request.into_inner().records;
        {
            let mut calls = self.calls.lock().unwrap();
            let received_at = Instant::now();
            for record in &records {
                calls.push(ReceivedCall {
                    request: record.clone(),
                    traceparent: None,
                    received_at,
                    batch: Some(index),
                });
            }
        }
        self.changed.notify_waiters();

        let statuses = join_all(records.into_iter().map(|record| (self.behaviour)(record))).await;
        let results = statuses.into_iter().map(RecordResult::from).collect();
        Ok(Response::new(HandleBatchResponse { results }))
    }
}

/// How a [`HandlerServer`] listens and serves. The default is plaintext on a fresh loopback
/// port with tonic's default limits.
#[derive(Clone, Default)]
pub struct ServerOptions {
    /// Serves TLS with this configuration: the server's identity and, for mutual TLS, the CA that
    /// client certificates must chain to.
    pub tls: Option<ServerTlsConfig>,
    /// Listens on this Unix socket path instead of a TCP port.
    pub unix_socket: Option<PathBuf>,
    /// The largest request the handler service accepts; tonic's default (4 MiB) when `None`.
    pub max_decoding_message_size: Option<usize>,
    /// Also serves the standard gRPC health service, reporting the handler as SERVING.
    pub health: bool,
}

/// A running handler server; dropping `stop` or calling [`HandlerServer::stop`] ends it.
pub struct HandlerServer {
    /// The TCP address; unspecified (`0.0.0.0:0`) for a server on a Unix socket.
    pub addr: SocketAddr,
    /// The socket path of a server started with [`ServerOptions::unix_socket`].
    pub unix_socket: Option<PathBuf>,
    tls: bool,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// Second handles on every accepted socket, so that [`HandlerServer::kill`] can cut the
    /// connections that the server's own tasks would keep open.
    connections: Arc<Mutex<Vec<AcceptedSocket>>>,
}

/// A second handle on an accepted connection.
enum AcceptedSocket {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl AcceptedSocket {
    fn shutdown(&self) {
        let _ = match self {
            AcceptedSocket::Tcp(socket) => socket.shutdown(std::net::Shutdown::Both),
            AcceptedSocket::Unix(socket) => socket.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl HandlerServer {
    /// Serves `handler` on a fresh loopback port.
    pub async fn start<S: MessageHandler>(handler: S) -> HandlerServer {
        HandlerServer::start_with(handler, ServerOptions::default()).await
    }

    /// Serves `handler` on `addr`, for restarting a server on the port it had.
    pub async fn start_on<S: MessageHandler>(handler: S, addr: SocketAddr) -> HandlerServer {
        let listener = TcpListener::bind(addr).await.expect("rebind the same loopback port");
        HandlerServer::serve_tcp(handler, listener, ServerOptions::default())
    }

    /// Serves `handler` as `options` set: over TLS, on a Unix socket, with a smaller receive
    /// limit, with the health service.
    pub async fn start_with<S: MessageHandler>(handler: S, options: ServerOptions) -> HandlerServer {
        match options.unix_socket.clone() {
            Some(path) => {
                let listener = tokio::net::UnixListener::bind(&path).expect("bind the Unix socket");
                HandlerServer::serve_unix(handler, listener, path, options)
            }
            None => {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
                HandlerServer::serve_tcp(handler, listener, options)
            }
        }
    }

    fn serve_tcp<S: MessageHandler>(handler: S, listener: TcpListener, options: ServerOptions) -> HandlerServer {
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<AcceptedSocket>>> = Arc::default();
        let tracked = connections.clone();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |accepted| {
            let socket = accepted?.into_std()?;
            tracked.lock().unwrap().push(AcceptedSocket::Tcp(socket.try_clone()?));
            tokio::net::TcpStream::from_std(socket)
        });
        let tls = options.tls.is_some();
        let (stop, task) = spawn_server(handler, incoming, options);
        HandlerServer { addr, unix_socket: None, tls, stop: Some(stop), task, connections }
    }

    fn serve_unix<S: MessageHandler>(
        handler: S,
        listener: tokio::net::UnixListener,
        path: PathBuf,
        options: ServerOptions,
    ) -> HandlerServer {
        let connections: Arc<Mutex<Vec<AcceptedSocket>>> = Arc::default();
        let tracked = connections.clone();
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener).map(move |accepted| {
            let socket = accepted?.into_std()?;
            tracked.lock().unwrap().push(AcceptedSocket::Unix(socket.try_clone()?));
            tokio::net::UnixStream::from_std(socket)
        });
        let tls = options.tls.is_some();
        let (stop, task) = spawn_server(handler, incoming, options);
        let addr = SocketAddr::from(([0, 0, 0, 0], 0));
        HandlerServer { addr, unix_socket: Some(path), tls, stop: Some(stop), task, connections }
    }

    /// The address kafka-scc calls: `unix://`, `https://` or `http://`.
    pub fn endpoint(&self) -> String {
        match (&self.unix_socket, self.tls) {
            (Some(path), _) => format!("unix://{}", path.display()),
            (None, true) => format!("https://{}", self.addr),
            (None, false) => format!("http://{}", self.addr),
        }
    }

    /// Stops accepting calls and closes the listener. A connection with a call still open may
    /// outlive the stop; [`HandlerServer::kill`] cuts those too.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// Ends the server the way a crash would: closes the listener, then shuts down every
    /// accepted socket, so open calls fail at once instead of running on.
    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        for socket in self.connections.lock().unwrap().drain(..) {
            socket.shutdown();
        }
    }
}

/// Serves `handler` on `incoming` in a task until the returned sender fires or is dropped.
fn spawn_server<S, I, IO>(handler: S, incoming: I, options: ServerOptions) -> (oneshot::Sender<()>, JoinHandle<()>)
where
    S: MessageHandler,
    I: tokio_stream::Stream<Item = std::io::Result<IO>> + Send + 'static,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let mut service = MessageHandlerServer::new(handler);
    if let Some(limit) = options.max_decoding_message_size {
        service = service.max_decoding_message_size(limit);
    }
    let task = tokio::spawn(async move {
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = options.tls {
            builder = builder.tls_config(tls).expect("valid server TLS configuration");
        }
        let health = if options.health {
            let (reporter, health) = tonic_health::server::health_reporter();
            reporter.set_serving::<MessageHandlerServer<S>>().await;
            Some(health)
        } else {
            None
        };
        builder
            .add_optional_service(health)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await
            .expect("handler server runs");
    });
    (stop, task)
}

/// Returns a loopback address whose port was free a moment ago, so nothing listens on it unless
/// another process took the port since.
pub fn free_loopback_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("local address")
}

/// Creates the gRPC handler client a sidecar with `config` would use.
pub fn grpc_handler(config: &Config) -> GrpcHandler {
    GrpcHandler::from_config(config).expect("valid handler endpoint")
}

/// A sidecar running on a task of the test runtime until [`RunningSidecar::shutdown`].
pub struct RunningSidecar {
    pub stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<Summary, RunError>>,
}

impl RunningSidecar {
    pub fn spawn<H: Handler>(sidecar: Sidecar<H>) -> RunningSidecar {
        let stats = sidecar.stats();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sidecar.run(async {
            let _ = stopped.await;
        }));
        RunningSidecar { stats, stop: Some(stop), task }
    }

    /// Signals shutdown and waits for the run to end, for at most [`WAIT`].
    pub async fn shutdown(mut self) -> Summary {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("sidecar stops within the wait bound")
            .expect("sidecar task did not panic")
            .expect("sidecar started")
    }
}

/// A unique name for topics and groups, so tests sharing a process never collide.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Sends the library's logs to the test output; `RUST_LOG` filters them.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}
