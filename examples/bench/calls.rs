//! Calls to the handler over gRPC without Kafka: plain tonic calls and kafka-scc's own
//! `GrpcHandler`, at a fixed concurrency, one at a time, or paced.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_scc::message::{Header, Message, TimestampType};
use kafka_scc::proto::HandleRequest;
use kafka_scc::proto::message_handler_client::MessageHandlerClient;
use kafka_scc::{Config, GrpcHandler, Handler};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::handler::PRODUCED_AT_HEADER;
use crate::support::{now_micros, payload};

/// Topic named in the sample requests; the handler ignores it.
const TOPIC: &str = "throughput";
/// A valid W3C trace id for the sample requests.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A schedule of paced calls or records: a warm-up at the same rate, then the measured ones.
pub struct Pace {
    pub rate_per_s: u64,
    pub seconds: u64,
    pub warm_up: Duration,
    pub partitions: i32,
    pub value_size: usize,
}

impl Pace {
    /// Returns the number of warm-up items, the total number of items and the interval
    /// between two items.
    pub fn schedule(&self) -> (u64, u64, Duration) {
        let warm_up = self.rate_per_s * self.warm_up.as_millis() as u64 / 1000;
        let total = warm_up + self.rate_per_s * self.seconds;
        (warm_up, total, Duration::from_secs(1) / self.rate_per_s as u32)
    }
}

/// Creates kafka-scc's gRPC client, configured as the binary configures it.
pub fn grpc_handler_for(config: &Config) -> Result<GrpcHandler, String> {
    GrpcHandler::from_config(config).map_err(|error| format!("creating the handler client failed: {error}"))
}

/// Connects a plain tonic client over one HTTP/2 connection, with `TCP_NODELAY` as kafka-scc
/// sets it.
pub async fn plain_client(endpoint: &str) -> Result<MessageHandlerClient<Channel>, String> {
    let channel = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|error| format!("invalid handler endpoint {endpoint:?}: {error}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|error| format!("connecting to the handler at {endpoint} failed: {error}"))?;
    Ok(MessageHandlerClient::new(channel))
}

/// Builds a request shaped like kafka-scc's for a record of `value_size` bytes.
pub fn sample_request(value_size: usize) -> HandleRequest {
    HandleRequest {
        topic: TOPIC.to_owned(),
        partition: 0,
        offset: 0,
        key: Some(Bytes::from_static(b"key-00000000")),
        value: Some(Bytes::from(payload(value_size))),
        headers: Vec::new(),
        timestamp_ms: 1_700_000_000_000,
        timestamp_type: kafka_scc::proto::TimestampType::CreateTime.into(),
        group_id: "bench".to_owned(),
        trace_id: TRACE_ID.to_owned(),
        attempt: 1,
    }
}

/// Builds a message like the one kafka-scc fetches for a record of `value_size` bytes.
pub fn sample_message(value_size: usize) -> Message {
    Message {
        topic: Arc::from(TOPIC),
        partition: 0,
        offset: 0,
        key: Some(Bytes::from_static(b"key-00000000")),
        value: Some(Bytes::from(payload(value_size))),
        headers: Vec::new(),
        timestamp_ms: 1_700_000_000_000,
        timestamp_type: TimestampType::CreateTime,
        trace_id: TRACE_ID.to_owned(),
    }
}

/// Makes `count` unary calls with a plain tonic client, from `in_flight` tasks that each make
/// one call at a time.
pub async fn plain_calls(
    client: &MessageHandlerClient<Channel>,
    request: &HandleRequest,
    count: u64,
    in_flight: usize,
) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..in_flight {
        let (mut client, request, next) = (client.clone(), request.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return Ok(());
                }
                let mut request = request.clone();
                request.offset = n as i64;
                client.handle(request).await.map_err(|status| format!("a plain call failed: {status}"))?;
            }
        });
    }
    join_all(workers).await
}

/// Makes `count` calls through kafka-scc's `GrpcHandler` without Kafka, from `in_flight`
/// tasks that each make one call at a time.
pub async fn grpc_handler_calls(
    handler: &GrpcHandler,
    message: &Arc<Message>,
    count: u64,
    in_flight: usize,
) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..in_flight {
        let (handler, message, next) = (handler.clone(), message.clone(), next.clone());
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                handler.handle(&message, 1).await.map_err(|error| format!("a GrpcHandler call failed: {error}"))?;
            }
            Ok(())
        });
    }
    join_all(workers).await
}

/// Returns the mean round trip of `calls` plain tonic calls made one at a time, after a
/// warm-up of a tenth as many.
pub async fn plain_serial_round_trip(endpoint: &str, calls: u64, value_size: usize) -> Result<Duration, String> {
    let mut client = plain_client(endpoint).await?;
    let request = sample_request(value_size);
    let mut started = Instant::now();
    for n in 0..(calls + calls / 10) {
        if n == calls / 10 {
            started = Instant::now();
        }
        client.handle(request.clone()).await.map_err(|status| format!("a plain call failed: {status}"))?;
    }
    Ok(started.elapsed() / calls as u32)
}

/// Returns the mean round trip of `calls` messages sent one at a time through kafka-scc's
/// `GrpcHandler`, after a warm-up of a tenth as many: on the HandleStream stream when the
/// handler implements it.
pub async fn grpc_handler_serial_round_trip(
    handler: &GrpcHandler,
    calls: u64,
    value_size: usize,
) -> Result<Duration, String> {
    let message = sample_message(value_size);
    let mut started = Instant::now();
    for n in 0..(calls + calls / 10) {
        if n == calls / 10 {
            started = Instant::now();
        }
        handler.handle(&message, 1).await.map_err(|error| format!("a GrpcHandler call failed: {error}"))?;
    }
    Ok(started.elapsed() / calls as u32)
}

async fn join_all(mut workers: JoinSet<Result<(), String>>) -> Result<(), String> {
    while let Some(joined) = workers.join_next().await {
        joined.map_err(|error| format!("a call task failed: {error}"))??;
    }
    Ok(())
}

/// Makes the same paced sequence of calls with a plain tonic client and no Kafka. Warm-up calls
/// go first, then measured calls that carry the send time in a request header. Each call runs
/// on its own task so that a slow call does not delay the next send.
pub async fn paced_calls(endpoint: &str, pace: &Pace) -> Result<(), String> {
    let client = plain_client(endpoint).await?;
    let template = sample_request(pace.value_size);
    let (warm_up, total, interval) = pace.schedule();

    let started = tokio::time::Instant::now();
    let mut calls = JoinSet::new();
    for n in 0..total {
        tokio::time::sleep_until(started + interval * n as u32).await;
        let mut request = template.clone();
        request.offset = n as i64;
        if n >= warm_up {
            let produced_at = now_micros().to_string();
            request.headers.push(kafka_scc::proto::Header {
                key: PRODUCED_AT_HEADER.to_owned(),
                value: Some(Bytes::from(produced_at.into_bytes())),
            });
        }
        let mut client = client.clone();
        calls.spawn(async move { client.handle(request).await.map(|_| ()) });
    }
    while let Some(joined) = calls.join_next().await {
        joined
            .map_err(|error| format!("a paced call task failed: {error}"))?
            .map_err(|status| format!("a paced call failed: {status}"))?;
    }
    Ok(())
}

/// Makes the same paced calls through kafka-scc's `GrpcHandler`, without Kafka and without
/// the pipeline.
pub async fn paced_grpc_handler(config: &Config, pace: &Pace) -> Result<(), String> {
    let handler = grpc_handler_for(config)?;
    let value = Bytes::from(payload(pace.value_size));
    let (warm_up, total, interval) = pace.schedule();

    let started = tokio::time::Instant::now();
    let mut calls = JoinSet::new();
    for n in 0..total {
        tokio::time::sleep_until(started + interval * n as u32).await;
        let mut headers = Vec::new();
        if n >= warm_up {
            let produced_at = Bytes::from(now_micros().to_string().into_bytes());
            headers.push(Header { key: PRODUCED_AT_HEADER.to_owned(), value: Some(produced_at) });
        }
        let message = Message {
            topic: Arc::from(config.topics[0].as_str()),
            partition: (n % pace.partitions as u64) as i32,
            offset: n as i64,
            key: Some(Bytes::from(format!("key-{n:08}").into_bytes())),
            value: Some(value.clone()),
            headers,
            timestamp_ms: 0,
            timestamp_type: TimestampType::CreateTime,
            trace_id: TRACE_ID.to_owned(),
        };
        let handler = handler.clone();
        calls.spawn(async move { handler.handle(&message, 1).await });
    }
    while let Some(joined) = calls.join_next().await {
        joined
            .map_err(|error| format!("a paced call task failed: {error}"))?
            .map_err(|error| format!("a paced GrpcHandler call failed: {error}"))?;
    }
    Ok(())
}
