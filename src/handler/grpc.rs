//! The gRPC implementation of [`Handler`], over a shared HTTP/2 channel. Each message goes on
//! one long-lived `HandleStream` stream (module `stream`) when the handler implements it.
//! Otherwise messages that are ready together go in one `HandleBatch` call (module `batch`)
//! when the handler implements that, and each remaining message goes in its own `Handle` call.
//!
//! The channel connects lazily and reconnects by itself, so a handler that starts after
//! kafka-scc, or restarts, is picked up without restarting the sidecar; until then every call
//! fails as a transport error, which is pause-eligible. The same is true over TLS and over a Unix
//! domain socket: [`GrpcHandler::new`] is the one place that builds the channel.
//!
//! Every unary or batch call goes through `GrpcHandler::call`, so the deadline and the
//! classification of a failed call are the same for both. A record on the stream has the same
//! deadline, and its result code is classified the same way.

mod batch;
mod stream;
#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prost::Message as _;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tracing::debug;

use super::classify::{CallFailure, classify, is_transport_failure};
use super::{Handler, HandlerError, Readiness};
use crate::config::{
    Config, ConfigError, DEFAULT_HANDLER_BATCH_MAX, HandlerAddress, HandlerTls, HandlerTransport,
    parse_handler_endpoint,
};
use crate::message::{Message, TimestampType, traceparent_for};
use crate::proto::message_handler_client::MessageHandlerClient;
use crate::proto::{self, HandleRequest};

/// The fully qualified name of the handler service, as registered with the health service.
const HANDLER_SERVICE: &str = "scc.handler.v1.MessageHandler";

/// How long one health check may take.
const HEALTH_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The interval between start-up health checks while the handler is not serving.
const HEALTH_RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// Maximum duration of a connection attempt (TCP connect and TLS handshake); the call timeout
/// when that is shorter.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Calls a remote `MessageHandler` service.
#[derive(Clone, Debug)]
pub struct GrpcHandler {
    client: MessageHandlerClient<Channel>,
    health: HealthClient<Channel>,
    group_id: String,
    timeout: Duration,
    pause_codes: HashSet<Code>,
    max_message_bytes: usize,
    /// The maximum number of records in one HandleBatch call; 1 sends every message with Handle.
    batch_max: usize,
    /// Set when HandleBatch first returns UNIMPLEMENTED. Clones share it, because they call the
    /// same server.
    batch_unsupported: Arc<AtomicBool>,
    /// Whether the handler takes records on a HandleStream stream, and the open stream. Clones
    /// share it, because they call the same server.
    stream: Arc<stream::StreamLink>,
    /// The endpoint, for log lines.
    endpoint: String,
}

impl GrpcHandler {
    /// Creates the handler client of `config`: its `HANDLER_ENDPOINT` over its handler
    /// transport, without connecting yet.
    pub fn from_config(config: &Config) -> Result<GrpcHandler, ConfigError> {
        GrpcHandler::for_endpoint(config, "HANDLER_ENDPOINT", &config.handler_endpoint)
    }

    /// Creates a handler client for `endpoint` with the other handler settings of `config`
    /// (transport, deadline, group id, pause codes, batch size), without connecting yet.
    /// `variable` names the setting the endpoint came from, for the error.
    pub fn for_endpoint(config: &Config, variable: &str, endpoint: &str) -> Result<GrpcHandler, ConfigError> {
        let address = parse_handler_endpoint(variable, endpoint, &config.handler_transport.tls)?;
        GrpcHandler::new(
            &address,
            &config.handler_transport,
            config.group_id.clone(),
            config.handler_timeout,
            config.pause_codes.clone(),
        )
        .map(|handler| handler.with_batch_max(config.handler_batch_max).with_stream(config.handler_stream))
        .map_err(|error| ConfigError {
            variable: variable.to_owned(),
            value: endpoint.to_owned(),
            expected: format!("the handler channel cannot be built: {error}"),
        })
    }

    /// Creates a handler client for `address` over `transport`, without connecting yet. The
    /// address comes from [`parse_handler_endpoint`], which has checked it against the TLS
    /// settings.
    ///
    /// `timeout` is kafka-scc's own deadline for each call; it is also sent to the handler as
    /// the gRPC deadline. `pause_codes` are the handler codes that close the gate. Batches
    /// hold up to [`DEFAULT_HANDLER_BATCH_MAX`] records; [`GrpcHandler::with_batch_max`]
    /// changes that. Records go on a HandleStream stream when the handler implements it;
    /// [`GrpcHandler::with_stream`] turns that off.
    pub fn new(
        address: &HandlerAddress,
        transport: &HandlerTransport,
        group_id: impl Into<String>,
        timeout: Duration,
        pause_codes: HashSet<Code>,
    ) -> Result<GrpcHandler, tonic::transport::Error> {
        let connect_timeout = timeout.min(MAX_CONNECT_TIMEOUT);
        let endpoint = match address {
            HandlerAddress::Http(uri) => Endpoint::from_shared(uri.clone())?,
            HandlerAddress::Https(uri) => {
                Endpoint::from_shared(uri.clone())?.tls_config(tls_config(&transport.tls, connect_timeout))?
            }
            // tonic connects `unix:` endpoints with tokio's UnixStream, lazily and again after
            // every disconnection, like TCP ones.
            HandlerAddress::Unix(path) => Endpoint::from_shared(format!("unix://{}", path.display()))?,
        };
        let channel = endpoint
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy();
        let limit = transport.max_message_bytes;
        Ok(GrpcHandler {
            client: MessageHandlerClient::new(channel.clone())
                .max_encoding_message_size(limit)
                .max_decoding_message_size(limit),
            health: HealthClient::new(channel),
            group_id: group_id.into(),
            timeout,
            pause_codes,
            max_message_bytes: limit,
            batch_max: DEFAULT_HANDLER_BATCH_MAX,
            batch_unsupported: Arc::default(),
            stream: Arc::new(stream::StreamLink::new(true)),
            endpoint: address.to_string(),
        })
    }

    /// Sets the maximum number of records in one HandleBatch call (`SCC_HANDLER_BATCH_MAX`); 1
    /// sends every message with Handle, and 0 counts as 1.
    pub fn with_batch_max(mut self, batch_max: usize) -> GrpcHandler {
        self.batch_max = batch_max.max(1);
        self
    }

    /// Turns the HandleStream stream on (`SCC_HANDLER_STREAM=auto`, the default: used when the
    /// handler implements it) or off.
    pub fn with_stream(mut self, enabled: bool) -> GrpcHandler {
        self.stream = Arc::new(stream::StreamLink::new(enabled));
        self
    }

    /// Creates a handler client for `endpoint` with the default transport (no TLS settings, the
    /// default message size limit), without connecting yet. For tools and tests; the binary
    /// uses [`GrpcHandler::from_config`].
    pub fn connect_lazy(
        endpoint: &str,
        group_id: impl Into<String>,
        timeout: Duration,
        pause_codes: HashSet<Code>,
    ) -> Result<GrpcHandler, ConfigError> {
        let transport = HandlerTransport::default();
        let address = parse_handler_endpoint("HANDLER_ENDPOINT", endpoint, &transport.tls)?;
        GrpcHandler::new(&address, &transport, group_id, timeout, pause_codes).map_err(|error| ConfigError {
            variable: "HANDLER_ENDPOINT".to_owned(),
            value: endpoint.to_owned(),
            expected: format!("the handler channel cannot be built: {error}"),
        })
    }

    /// Builds the request body for one message, as Handle and HandleBatch send it.
    fn record(&self, message: &Message, attempt: u32) -> HandleRequest {
        let timestamp_type = match message.timestamp_type {
            TimestampType::NotAvailable => proto::TimestampType::Unspecified,
            TimestampType::CreateTime => proto::TimestampType::CreateTime,
            TimestampType::LogAppendTime => proto::TimestampType::LogAppendTime,
        };
        HandleRequest {
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
        }
    }

    /// Builds a Handle request: the record, the deadline and the `traceparent` metadata.
    fn request(&self, message: &Message, attempt: u32) -> tonic::Request<HandleRequest> {
        let mut request = tonic::Request::new(self.record(message, attempt));
        request.set_timeout(self.timeout);
        if let Ok(value) = MetadataValue::try_from(traceparent_for(&message.trace_id)) {
            request.metadata_mut().insert("traceparent", value);
        }
        request
    }

    /// Returns the non-pausing error for a request of `size` bytes, over the message size limit.
    /// Retrying cannot make the message smaller, so it is not pause-eligible. gRPC libraries
    /// report an over-limit message as RESOURCE_EXHAUSTED.
    fn oversized(&self, size: usize) -> HandlerError {
        HandlerError::non_pausing(
            Some(Code::ResourceExhausted),
            format!(
                "the request is {size} bytes, over the limit of {} bytes (SCC_HANDLER_MAX_MESSAGE_BYTES); not sent to the handler",
                self.max_message_bytes
            ),
        )
    }

    /// Awaits one call under kafka-scc's own deadline and returns the response body or the
    /// failure, not yet classified.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CallFailure> {
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            // A handler server that enforces the deadline sent in `grpc-timeout` responds when it
            // expires, at about the moment kafka-scc's own timer fires, and its response can come
            // first. It reports the same expired deadline, so it is classified as the own timeout.
            Ok(Err(status)) if reports_expired_deadline(&status) && started.elapsed() >= self.timeout => {
                Err(CallFailure::Timeout(self.timeout))
            }
            Ok(Err(status)) => Err(CallFailure::Status(status)),
            Err(_) => Err(CallFailure::Timeout(self.timeout)),
        }
    }
}

/// Builds the TLS client configuration of an `https://` endpoint: the configured CA or else the system's
/// root certificates, the client identity for mutual TLS, and the server name override.
fn tls_config(tls: &HandlerTls, handshake_timeout: Duration) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new().timeout(handshake_timeout);
    config = match &tls.ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(ca.pem())),
        None => config.with_native_roots(),
    };
    if let Some(identity) = &tls.identity {
        config = config.identity(Identity::from_pem(identity.cert.pem(), identity.key.pem()));
    }
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name.clone());
    }
    config
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

impl GrpcHandler {
    /// Checks the health service until it reports SERVING, or until `timeout`.
    async fn wait_until_serving(&self, timeout: Duration) -> Readiness {
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
}

impl Handler for GrpcHandler {
    /// Waits for the health service to report SERVING, then probes whether the handler
    /// implements HandleStream and, when it does not, HandleBatch.
    async fn wait_until_ready(&self, timeout: Duration) -> Readiness {
        let readiness = self.wait_until_serving(timeout).await;
        if !matches!(readiness, Readiness::TimedOut(_)) {
            self.probe_handle_stream().await;
            if !self.stream.usable() {
                self.probe_handle_batch().await;
            }
        }
        readiness
    }

    /// Sends the message on the HandleStream stream, or as a Handle call when the handler does
    /// not implement HandleStream.
    async fn handle(&self, message: &Message, attempt: u32) -> Result<(), HandlerError> {
        if self.stream.usable()
            && let Some(result) = self.handle_on_stream(message, attempt).await
        {
            return result;
        }
        self.handle_unary(message, attempt).await
    }

    /// Sends the batch as HandleBatch calls, or as Handle calls once the handler has returned
    /// UNIMPLEMENTED for HandleBatch; see module `batch`. While the stream is in use, each
    /// message goes on it instead.
    async fn handle_batch(&self, batch: &[(&Message, u32)]) -> Vec<Result<(), HandlerError>> {
        self.send_batch(batch).await
    }

    /// Returns 1 while the stream is in use or once the handler has returned UNIMPLEMENTED for
    /// HandleBatch, and `SCC_HANDLER_BATCH_MAX` otherwise. Records on the stream gain nothing
    /// from a batch, and one record's wait would hold back the others.
    fn max_batch_len(&self) -> usize {
        if self.stream.usable() || self.batch_unsupported.load(Ordering::Relaxed) { 1 } else { self.batch_max }
    }
}

impl GrpcHandler {
    /// Makes one Handle call.
    async fn handle_unary(&self, message: &Message, attempt: u32) -> Result<(), HandlerError> {
        let request = self.request(message, attempt);
        let size = request.get_ref().encoded_len();
        if size > self.max_message_bytes {
            return Err(self.oversized(size));
        }
        let mut client = self.client.clone();

        // NOTE: a handler server whose own receive limit is below SCC_HANDLER_MAX_MESSAGE_BYTES
        // (4 MiB by default in most gRPC servers) rejects a request between the two limits with
        // RESOURCE_EXHAUSTED. That code is pause-eligible by default, so such a message is
        // retried until the handler's limit is raised. The README asks for a handler receive
        // limit of at least SCC_HANDLER_MAX_MESSAGE_BYTES.
        match self.call(client.handle(request)).await {
            Ok(_) => Ok(()),
            Err(failure) => Err(classify(&failure, &self.pause_codes)),
        }
    }
}

/// Returns true when the handler itself returned UNIMPLEMENTED, which for an optional method
/// means that it does not implement the method. A status that tonic built from a local
/// transport error does not come from the handler, so it proves nothing.
fn means_unimplemented(status: &tonic::Status) -> bool {
    status.code() == Code::Unimplemented && !is_transport_failure(status)
}

/// Returns true for the codes that servers respond with when a deadline expires:
/// DEADLINE_EXCEEDED, the gRPC code for it, and CANCELLED ("Timeout expired"), which tonic 0.14
/// servers send.
fn reports_expired_deadline(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled)
}
