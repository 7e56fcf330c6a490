//! The operator's view: `/metrics`, `/healthz` and `/readyz` served over real HTTP while a
//! sidecar consumes from the mock broker, and the start-up wait on the handler's gRPC health
//! service.

mod support;

use std::time::Duration;

use kafka_scc::Sidecar;
use kafka_scc::proto::message_handler_server::MessageHandlerServer;
use support::*;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

const HANDLER_SERVICE: &str = "scc.handler.v1.MessageHandler";

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("the HTTP endpoint answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a text body"))
}

/// Polls `url` until its status is `expected`, for at most [`WAIT`].
async fn wait_for_status(url: &str, expected: u16) -> Result<String, (u16, String)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = get(url).await;
        if status == expected {
            return Ok(body);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err((status, body));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_change_as_messages_flow() {
    init_logs();
    let broker = Broker::start();
    let topic = unique("metrics");
    let group = unique("group");
    broker.create_topic(&topic, 2);

    let handler = RecordingHandler::new(|request| async move {
        if request.offset == 1 && request.partition == 0 {
            return Err(tonic::Status::invalid_argument("bad record"));
        }
        Ok(())
    });
    let server = HandlerServer::start(handler.clone()).await;
    let config = config(&broker, &topic, &group, &server.endpoint(), &[]);
    let sidecar = RunningSidecar::spawn(Sidecar::new(config.clone(), grpc_handler(&config)));
    let assigned = sidecar.stats.wait_until(WAIT, |s| s.assigned.len() == 2).await;
    assert!(assigned.is_ok(), "{assigned:?}");
    let addr = sidecar.stats.http_addr().expect("the HTTP listener is bound");
    let metrics_url = format!("http://{addr}/metrics");

    let (status, before) = get(&metrics_url).await;
    assert_eq!(status, 200);
    assert!(!before.contains(&format!(r#"scc_messages_total{{topic="{topic}""#)), "{before}");

    let mut records = keyed_records(&topic, 0, 5, 5);
    records.extend(keyed_records(&topic, 1, 3, 3));
    broker.produce(records).await;
    let committed = sidecar
        .stats
        .wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(5) && s.committed_offset(&topic, 1) == Some(3))
        .await;
    assert!(committed.is_ok(), "{committed:?}");

    let (_, after) = get(&metrics_url).await;
    let success = format!(r#"scc_messages_total{{topic="{topic}",outcome="success",grpc_code="OK"}} 7"#);
    let rejected =
        format!(r#"scc_messages_total{{topic="{topic}",outcome="non_pausing",grpc_code="INVALID_ARGUMENT"}} 1"#);
    let offset = format!(r#"scc_committed_offset{{topic="{topic}",partition="0"}} 5"#);
    assert!(after.contains(&success), "{after}");
    assert!(after.contains(&rejected), "{after}");
    assert!(after.contains(&offset), "{after}");
    assert!(after.contains("scc_handler_latency_seconds_count"), "{after}");
    assert!(after.contains("scc_gate_open 1"), "{after}");
    assert!(after.contains("scc_in_flight 0"), "{after}");
    for forbidden in ["key-", "value-"] {
        assert!(!after.contains(forbidden), "a label holds record content: {forbidden}");
    }

    let (status, _) = get(&format!("http://{addr}/healthz")).await;
    assert_eq!(status, 200);
    sidecar.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_serving_handler() {
    init_logs();
    let broker = Broker::start();
    let topic = unique("ready");
    let group = unique("group");
    broker.create_topic(&topic, 1);
    broker.produce(keyed_records(&topic, 0, 3, 3)).await;

    // A handler whose health service reports NOT_SERVING until the test flips it.
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status(HANDLER_SERVICE, ServingStatus::NotServing).await;
    let handler = RecordingHandler::new(|_| async { Ok(()) });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(MessageHandlerServer::new(handler.clone()))
            .serve_with_incoming(incoming),
    );

    let config = config(&broker, &topic, &group, &endpoint, &[("SCC_HANDLER_READY_TIMEOUT_MS", "60000")]);
    let sidecar = RunningSidecar::spawn(Sidecar::new(config.clone(), grpc_handler(&config)));
    let deadline = tokio::time::Instant::now() + WAIT;
    let addr = loop {
        if let Some(addr) = sidecar.stats.http_addr() {
            break addr;
        }
        assert!(tokio::time::Instant::now() < deadline, "the HTTP listener never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ready_url = format!("http://{addr}/readyz");

    let (status, body) = get(&ready_url).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("SERVING"), "{body}");
    assert_eq!(handler.calls().len(), 0, "consumed before the handler was serving");

    reporter.set_service_status(HANDLER_SERVICE, ServingStatus::Serving).await;
    let ready = wait_for_status(&ready_url, 200).await;
    assert!(ready.is_ok(), "{ready:?}");
    let committed = sidecar.stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(3)).await;
    assert!(committed.is_ok(), "{committed:?}");

    sidecar.shutdown().await;
    server.abort();
}
