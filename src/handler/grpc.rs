//! The gRPC implementation of [`Handler`]: one `MessageHandler.Handle` call per message over a
//! shared HTTP/2 channel.
//!
//! The channel connects lazily and reconnects by itself, so a handler that starts after
//! kafka-scc, or restarts, is picked up without restarting the sidecar; until then every call
//! fails as a transport error, which is pause-eligible.

use std::collections::HashSet;
use std::time::Duration;

use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tracing::debug;

use super::classify::{CallFailure, classify};
use super::{Handler, HandlerError, Readiness};
use crate::message::{Message, TimestampType, traceparent_for};
use crate::proto::message_handler_client::MessageHandlerClient;
use crate::proto::{self, HandleRequest};

/// The fully qualified name of the handler service, as registered with the health service.
const HANDLER_SERVICE: &str = "scc.handler.v1.MessageHandler";

/// How long one health check may take.
const HEALTH_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The interval between start-up health checks while the handler is not serving.
const HEALTH_RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// Calls a remote `MessageHandler` service.
#[derive(Clone, Debug)]
pub struct GrpcHandler {
    client: MessageHandlerClient<Channel>,
    health: HealthClient<Channel>,
    group_id: String,
    timeout: Duration,
    pause_codes: HashSet<Code>,
}

impl GrpcHandler {
    /// Creates a handler client for `endpoint` (`http://host:port`) without connecting yet.
    ///
    /// `timeout` is kafka-scc's own deadline for each call; it is also sent to the handler as
    /// the gRPC deadline. `pause_codes` are the handler codes that close the gate.
    pub fn connect_lazy(
        endpoint: &str,
        group_id: impl Into<String>,
        timeout: Duration,
        pause_codes: HashSet<Code>,
    ) -> Result<GrpcHandler, tonic::transport::Error> {
        let channel = Endpoint::from_shared(endpoint.to_owned())?
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(GrpcHandler {
            client: MessageHandlerClient::new(channel.clone()),
            health: HealthClient::new(channel),
            group_id: group_id.into(),
            timeout,
            pause_codes,
        })
    }

    fn request(&self, message: &Message, attempt: u32) -> tonic::Request<HandleRequest> {
        let timestamp_type = match message.timestamp_type {
            TimestampType::NotAvailable => proto::TimestampType::Unspecified,
            TimestampType::CreateTime => proto::TimestampType::CreateTime,
            TimestampType::LogAppendTime => proto::TimestampType::LogAppendTime,
        };
        let body = HandleRequest {
            topic: message.topic.to_string(),
            partition: message.partition,
            offset: message.offset,
            key: message.key.clone(),
            value: message.value.clone(),
            headers: message
                .headers
                .iter()
                .map(|header| proto::Header { key: header.key.clone(), value: header.value.clone() })
                .collect(),
            timestamp_ms: message.timestamp_ms,
            timestamp_type: timestamp_type.into(),
            group_id: self.group_id.clone(),
            trace_id: message.trace_id.clone(),
            attempt,
        };

        let mut request = tonic::Request::new(body);
        request.set_timeout(self.timeout);
        if let Ok(value) = MetadataValue::try_from(traceparent_for(&message.trace_id)) {
            request.metadata_mut().insert("traceparent", value);
        }
        request
    }
}

impl GrpcHandler {
    /// Asks the standard gRPC health service once: for the `MessageHandler` service, then for
    /// the server as a whole when the handler does not register the service name.
    async fn check_health(&self) -> Result<Readiness, String> {
        let mut health = self.health.clone();
        for service in [HANDLER_SERVICE, ""] {
            let request = tonic::Request::new(HealthCheckRequest { service: service.to_owned() });
            match tokio::time::timeout(HEALTH_CALL_TIMEOUT, health.check(request)).await {
                Ok(Ok(response)) => {
                    let status = response.into_inner().status();
                    return match status {
                        ServingStatus::Serving => Ok(Readiness::Ready),
                        other => Err(format!("health status {}", other.as_str_name())),
                    };
                }
                Ok(Err(status)) if status.code() == Code::Unimplemented => return Ok(Readiness::Unknown),
                Ok(Err(status)) if status.code() == Code::NotFound => continue,
                Ok(Err(status)) => return Err(format!("{}: {}", status.code(), status.message())),
                Err(_) => return Err(format!("no health answer within {} ms", HEALTH_CALL_TIMEOUT.as_millis())),
            }
        }
        Err("the health service knows neither the MessageHandler service nor the server".to_owned())
    }
}

impl Handler for GrpcHandler {
    async fn wait_until_ready(&self, timeout: Duration) -> Readiness {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.check_health().await {
                Ok(readiness) => return readiness,
                Err(reason) if tokio::time::Instant::now() + HEALTH_RETRY_INTERVAL >= deadline => {
                    return Readiness::TimedOut(reason);
                }
                Err(reason) => {
                    debug!(%reason, "handler not serving yet; checking again");
                    tokio::time::sleep(HEALTH_RETRY_INTERVAL).await;
                }
            }
        }
    }

    async fn handle(&self, message: &Message, attempt: u32) -> Result<(), HandlerError> {
        let request = self.request(message, attempt);
        let mut client = self.client.clone();

        // NOTE: a request larger than the handler's maximum receive size (4 MiB by default in
        // most gRPC servers) is rejected with RESOURCE_EXHAUSTED, which is pause-eligible by
        // default, so such a message is retried until the limit is raised.
        let started = tokio::time::Instant::now();
        let failure = match tokio::time::timeout(self.timeout, client.handle(request)).await {
            Ok(Ok(_)) => return Ok(()),
            // A handler server that enforces the deadline sent in `grpc-timeout` responds when it
            // expires, at about the moment kafka-scc's own timer fires, and its response can come
            // first. It reports the same expired deadline, so it is classified as the own timeout.
            Ok(Err(status)) if reports_expired_deadline(&status) && started.elapsed() >= self.timeout => {
                CallFailure::Timeout(self.timeout)
            }
            Ok(Err(status)) => CallFailure::Status(status),
            Err(_) => CallFailure::Timeout(self.timeout),
        };
        Err(classify(&failure, &self.pause_codes))
    }
}

/// Returns true for the codes that servers respond with when a deadline expires:
/// DEADLINE_EXCEEDED, the gRPC code for it, and CANCELLED ("Timeout expired"), which tonic 0.14
/// servers send.
fn reports_expired_deadline(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled)
}
