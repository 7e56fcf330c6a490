//! The handler connection: TLS and mutual TLS with certificates made in the test, a Unix domain
//! socket endpoint through the whole pipeline, and the message size limit, which turns an
//! oversized message into a non-pausing failure that is committed past.

mod support;

use std::time::Duration;

use kafka_scc::message::TimestampType;
use kafka_scc::{Config, Disposition, GrpcHandler, Handler, Message, Readiness, Sidecar};
use support::pki::TestPki;
use support::*;
use tonic::Code;

/// Builds a message for calling a [`GrpcHandler`] directly, with `value_size` bytes of value.
fn message(value_size: usize) -> Message {
    Message {
        topic: "transport".into(),
        partition: 0,
        offset: 7,
        key: Some(bytes::Bytes::from_static(b"key")),
        value: Some(bytes::Bytes::from(vec![b'x'; value_size])),
        headers: Vec::new(),
        timestamp_ms: 0,
        timestamp_type: TimestampType::CreateTime,
        trace_id: "0af7651916cd43dd8448eb211c80319c".to_owned(),
    }
}

/// Builds a handler-only configuration: the broker address is never used.
fn handler_config(endpoint: &str, extra: &[(&str, &str)]) -> Config {
    let mut vars =
        vec![("KAFKA_TOPIC", "transport"), ("HANDLER_ENDPOINT", endpoint), ("SCC_HANDLER_TIMEOUT_MS", "5000")];
    vars.extend_from_slice(extra);
    Config::from_vars(vars).expect("valid handler configuration")
}

/// Calls the handler until a call succeeds, for at most [`WAIT`]; returns the last error.
async fn call_until_ok(handler: &GrpcHandler) -> Result<(), kafka_scc::HandlerError> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match handler.handle(&message(16), 1).await {
            Ok(()) => return Ok(()),
            Err(error) if tokio::time::Instant::now() >= deadline => return Err(error),
            Err(error) => {
                assert!(error.is_pause_eligible(), "not pause-eligible: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handler_serves_calls_and_health() {
    init_logs();
    let pki = TestPki::new();
    let handler = ScriptedHandler::ok();
    let options = ServerOptions { tls: Some(pki.server_tls()), health: true, ..ServerOptions::default() };
    let server = HandlerServer::start_with(handler.clone(), options).await;
    assert!(server.endpoint().starts_with("https://"), "{}", server.endpoint());

    let ca = pki.ca_path.to_str().unwrap();
    let config = handler_config(&server.endpoint(), &[("HANDLER_TLS_CA", ca)]);
    let grpc = GrpcHandler::from_config(&config).expect("TLS handler client");
    assert_eq!(grpc.wait_until_ready(WAIT).await, Readiness::Ready);
    grpc.handle(&message(16), 1).await.expect("the call succeeds over TLS");
    assert_eq!(handler.calls().len(), 1);

    // The certificate names localhost and 127.0.0.1; the override is checked instead of the host.
    let named = handler_config(&server.endpoint(), &[("HANDLER_TLS_CA", ca), ("HANDLER_TLS_SERVER_NAME", "localhost")]);
    let grpc = GrpcHandler::from_config(&named).expect("TLS handler client");
    grpc.handle(&message(16), 1).await.expect("the call succeeds with the server name override");

    let wrong =
        handler_config(&server.endpoint(), &[("HANDLER_TLS_CA", ca), ("HANDLER_TLS_SERVER_NAME", "other.test")]);
    let grpc = GrpcHandler::from_config(&wrong).expect("TLS handler client");
    let error = grpc.handle(&message(16), 1).await.expect_err("a name outside the certificate is rejected");
    assert_eq!(error.disposition, Disposition::PauseEligible, "{error}");
    assert_eq!(handler.calls().len(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handler_rejects_unknown_ca() {
    init_logs();
    let pki = TestPki::new();
    let other = TestPki::new();
    let handler = ScriptedHandler::ok();
    let options = ServerOptions { tls: Some(pki.server_tls()), ..ServerOptions::default() };
    let server = HandlerServer::start_with(handler.clone(), options).await;

    let config = handler_config(&server.endpoint(), &[("HANDLER_TLS_CA", other.ca_path.to_str().unwrap())]);
    let grpc = GrpcHandler::from_config(&config).expect("TLS handler client");
    let error = grpc.handle(&message(16), 1).await.expect_err("a certificate from another CA is rejected");
    assert_eq!(error.disposition, Disposition::PauseEligible, "{error}");
    assert!(handler.calls().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_handler_accepts_client_certificate() {
    init_logs();
    let pki = TestPki::new();
    let handler = ScriptedHandler::ok();
    let options = ServerOptions { tls: Some(pki.server_mtls()), health: true, ..ServerOptions::default() };
    let server = HandlerServer::start_with(handler.clone(), options).await;

    let config = handler_config(
        &server.endpoint(),
        &[
            ("HANDLER_TLS_CA", pki.ca_path.to_str().unwrap()),
            ("HANDLER_TLS_CERT", pki.client.cert_path.to_str().unwrap()),
            ("HANDLER_TLS_KEY", pki.client.key_path.to_str().unwrap()),
        ],
    );
    let grpc = GrpcHandler::from_config(&config).expect("mTLS handler client");
    assert_eq!(grpc.wait_until_ready(WAIT).await, Readiness::Ready);
    grpc.handle(&message(16), 1).await.expect("the call succeeds over mutual TLS");
    assert_eq!(handler.calls().len(), 1);
    server.stop().await;
}

/// A server that requires client certificates rejects a client without one. The failure is a
/// transport error, so it is pause-eligible: the gate closes and nothing is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_without_client_certificate_pauses() {
    const COUNT: usize = 3;

    init_logs();
    let pki = TestPki::new();
    let handler = RecordingHandler::new(|_| async { Ok(()) });
    let options = ServerOptions { tls: Some(pki.server_mtls()), ..ServerOptions::default() };
    let server = HandlerServer::start_with(handler.clone(), options).await;

    let broker = Broker::start();
    let topic = unique("mtls");
    let group = unique("group");
    broker.create_topic(&topic, 1);
    broker.produce(keyed_records(&topic, 0, COUNT, 1)).await;

    let ca = pki.ca_path.to_str().unwrap();
    let config = config(&broker, &topic, &group, &server.endpoint(), &[("HANDLER_TLS_CA", ca)]);
    let grpc = grpc_handler(&config);
    let error = grpc.handle(&message(16), 1).await.expect_err("the server requires a client certificate");
    assert_eq!(error.disposition, Disposition::PauseEligible, "{error}");

    let sidecar = RunningSidecar::spawn(Sidecar::new(config.clone(), grpc));
    let paused = sidecar.stats.wait_until(WAIT, |s| s.gate_closures >= 1 && s.pause_eligible >= 2).await;
    assert!(paused.is_ok(), "{paused:?}");
    let summary = sidecar.shutdown().await;

    assert_eq!(summary.stats.succeeded, 0);
    assert_eq!(summary.stats.non_pausing, 0);
    assert!(handler.calls().is_empty(), "the handler got a call without a client certificate");
    let committed = broker.committed_async(&group, &topic, 1).await;
    assert_eq!(committed.get(&0).copied().flatten().unwrap_or(0), 0, "committed past unhandled messages");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_end_to_end() {
    const PARTITIONS: i32 = 3;
    const PER_PARTITION: i64 = 10;

    init_logs();
    let broker = Broker::start();
    let topic = unique("uds");
    let group = unique("group");
    broker.create_topic(&topic, PARTITIONS);
    let records: Vec<TestRecord> = (0..PARTITIONS * PER_PARTITION as i32)
        .map(|i| TestRecord::new(&topic, i % PARTITIONS, Some(format!("k{}", i % 4).as_bytes()), b"v"))
        .collect();
    broker.produce(records).await;

    let socket = std::env::temp_dir().join(format!("{}.sock", unique("scc")));
    let endpoint = format!("unix://{}", socket.display());
    let config = config(&broker, &topic, &group, &endpoint, &[("SCC_HANDLER_READY_TIMEOUT_MS", "30000")]);
    let grpc = grpc_handler(&config);

    // Nothing listens yet: the call fails as a transport error, and the channel connects once
    // the server is up, without a new client.
    let error = grpc.handle(&message(16), 1).await.expect_err("no server on the socket yet");
    assert_eq!(error.disposition, Disposition::PauseEligible, "{error}");
    let handler = ScriptedHandler::ok();
    let options = ServerOptions { unix_socket: Some(socket.clone()), health: true, ..ServerOptions::default() };
    let server = HandlerServer::start_with(handler.clone(), options).await;
    assert_eq!(server.endpoint(), endpoint);
    let reconnected = call_until_ok(&grpc).await;
    assert!(reconnected.is_ok(), "{reconnected:?}");
    assert_eq!(grpc.wait_until_ready(WAIT).await, Readiness::Ready);

    let sidecar = RunningSidecar::spawn(Sidecar::new(config.clone(), grpc));
    let done = sidecar
        .stats
        .wait_until(WAIT, |s| (0..PARTITIONS).all(|p| s.committed_offset(&topic, p) == Some(PER_PARTITION)))
        .await;
    assert!(done.is_ok(), "{done:?}");
    let on_broker = broker.wait_for_committed(&group, &topic, &[PER_PARTITION; PARTITIONS as usize]).await;
    assert!(on_broker.is_ok(), "broker committed offsets: {on_broker:?}");
    let summary = sidecar.shutdown().await;

    assert_eq!(summary.stats.succeeded, (PARTITIONS as i64 * PER_PARTITION) as u64);
    // One call from the reconnection check above, then one per record.
    assert_eq!(handler.calls().len(), 1 + (PARTITIONS as i64 * PER_PARTITION) as usize);
    server.stop().await;
    let _ = std::fs::remove_file(&socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_is_non_pausing() {
    init_logs();
    let handler = ScriptedHandler::ok();
    let server = HandlerServer::start(handler.clone()).await;
    // The smallest limit the default max.partition.fetch.bytes (1048576) allows.
    let limit = 1_048_576 + 65_536;
    let config = handler_config(&server.endpoint(), &[("SCC_HANDLER_MAX_MESSAGE_BYTES", &limit.to_string())]);
    let grpc = GrpcHandler::from_config(&config).expect("handler client");

    grpc.handle(&message(limit - 1024), 1).await.expect("a request under the limit is sent");
    let error = grpc.handle(&message(limit), 1).await.expect_err("a request over the limit is not sent");
    assert_eq!(error.disposition, Disposition::NonPausing, "{error}");
    assert_eq!(error.code, Some(Code::ResourceExhausted));
    assert!(error.message.contains("SCC_HANDLER_MAX_MESSAGE_BYTES"), "{}", error.message);
    assert!(error.message.contains(&format!("limit of {limit} bytes")), "{}", error.message);
    assert_eq!(handler.calls().len(), 1, "the oversized request reached the handler");
    server.stop().await;
}

/// An oversized record in the middle of a partition is not sent, counted as non-pausing, and
/// committed past; the records around it are handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_record_is_committed_past() {
    const OVERSIZED_OFFSET: i64 = 1;
    const COUNT: i64 = 3;
    const FETCH_BYTES: usize = 1024;
    let limit = FETCH_BYTES + 65_536;

    init_logs();
    let broker = Broker::start();
    let topic = unique("oversized");
    let group = unique("group");
    broker.create_topic(&topic, 1);
    let records = (0..COUNT)
        .map(|offset| {
            let size = if offset == OVERSIZED_OFFSET { limit + 1 } else { 10 };
            TestRecord::new(&topic, 0, Some(b"k"), &vec![b'v'; size])
        })
        .collect();
    broker.produce(records).await;

    let handler = RecordingHandler::new(|_| async { Ok(()) });
    let server = HandlerServer::start(handler.clone()).await;
    let fetch_bytes = FETCH_BYTES.to_string();
    let limit_text = limit.to_string();
    let extra = [
        ("KAFKA_CFG_MAX_PARTITION_FETCH_BYTES", fetch_bytes.as_str()),
        ("SCC_HANDLER_MAX_MESSAGE_BYTES", limit_text.as_str()),
    ];
    let config = config(&broker, &topic, &group, &server.endpoint(), &extra);
    let sidecar = RunningSidecar::spawn(Sidecar::new(config.clone(), grpc_handler(&config)));

    let done = sidecar.stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(COUNT)).await;
    assert!(done.is_ok(), "not committed past the oversized record: {done:?}");
    let summary = sidecar.shutdown().await;

    assert_eq!(summary.stats.non_pausing, 1);
    assert_eq!(summary.stats.succeeded, (COUNT - 1) as u64);
    assert_eq!(summary.stats.gate_closures, 0);
    assert!(handler.calls_for(0, OVERSIZED_OFFSET).is_empty(), "the oversized record reached the handler");
    assert_eq!(handler.calls().len(), (COUNT - 1) as usize);
    server.stop().await;
}
