//! Shared fixtures for the integration tests: a librdkafka mock cluster over TCP, a producer,
//! real tonic handler servers on loopback, and configuration for a sidecar under test.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_scc::proto::message_handler_server::{MessageHandler, MessageHandlerServer};
use kafka_scc::proto::{HandleRequest, HandleResponse};
use kafka_scc::{Config, ConfigError};
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
        self.cluster
            .create_topic(topic, partitions, 1)
            .expect("topic created");
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
                headers = headers.insert(Header {
                    key,
                    value: value.as_deref(),
                });
            }
            let mut future = FutureRecord::<[u8], [u8]>::to(&record.topic)
                .partition(record.partition)
                .headers(headers);
            if let Some(key) = record.key.as_deref() {
                future = future.key(key);
            }
            if let Some(value) = record.value.as_deref() {
                future = future.payload(value);
            }
            producer
                .send(future, Duration::from_secs(10))
                .await
                .expect("record acknowledged");
        }
        producer
            .flush(Duration::from_secs(10))
            .expect("producer flushed");
    }

    /// Reads a group's committed offsets straight from the broker.
    pub fn committed(
        &self,
        group: &str,
        topic: &str,
        partitions: i32,
    ) -> BTreeMap<i32, Option<i64>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .create()
            .expect("inspection consumer created");
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(topic, partition);
        }
        let committed = consumer
            .committed_offsets(list, Duration::from_secs(10))
            .expect("committed offsets read");
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
}

/// One record to produce.
#[derive(Clone, Debug)]
pub struct TestRecord {
    pub topic: String,
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl TestRecord {
    pub fn new(topic: &str, partition: i32, key: Option<&[u8]>, value: &[u8]) -> TestRecord {
        TestRecord {
            topic: topic.to_owned(),
            partition,
            key: key.map(<[u8]>::to_vec),
            value: Some(value.to_vec()),
            headers: Vec::new(),
        }
    }
}

/// Builds a sidecar configuration for `broker` and `topic` with a fresh group id and fast
/// timings; `extra` overrides or adds variables.
pub fn config(
    broker: &Broker,
    topic: &str,
    group: &str,
    endpoint: &str,
    extra: &[(&str, &str)],
) -> Config {
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
    pub fn new(
        script: impl Fn(&HandleRequest) -> Result<(), Status> + Send + Sync + 'static,
    ) -> ScriptedHandler {
        ScriptedHandler {
            calls: Arc::default(),
            script: Arc::new(script),
            changed: Arc::new(Notify::new()),
        }
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
    async fn handle(
        &self,
        request: Request<HandleRequest>,
    ) -> Result<Response<HandleResponse>, Status> {
        let body = request.into_inner();
        let result = (self.script)(&body);
        self.calls.lock().unwrap().push(body);
        self.changed.notify_waiters();
        result.map(|()| Response::new(HandleResponse {}))
    }
}

/// A running handler server; dropping `stop` or calling [`HandlerServer::stop`] ends it.
pub struct HandlerServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl HandlerServer {
    /// Serves `handler` on a fresh loopback port.
    pub async fn start<S: MessageHandler>(handler: S) -> HandlerServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        HandlerServer::serve(handler, listener)
    }

    /// Serves `handler` on `addr`, for restarting a server on the port it had.
    pub async fn start_on<S: MessageHandler>(handler: S, addr: SocketAddr) -> HandlerServer {
        let listener = TcpListener::bind(addr)
            .await
            .expect("rebind the same loopback port");
        HandlerServer::serve(handler, listener)
    }

    fn serve<S: MessageHandler>(handler: S, listener: TcpListener) -> HandlerServer {
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(MessageHandlerServer::new(handler))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
                .expect("handler server runs");
        });
        HandlerServer {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting calls and closes the listener and every connection.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

/// A unique name for topics and groups, so tests sharing a process never collide.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Sends the library's logs to the test output; `RUST_LOG` filters them.
pub fn init_logs() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
