//! Shutdown stays within `SCC_SHUTDOWN_TIMEOUT_MS` when what it depends on is gone: the broker
//! (the final commit and the consumer close cannot reach it) or the handler (an in-flight call
//! never returns).

mod support;

use std::time::{Duration, Instant};

use kafka_scc::Sidecar;
use support::*;

const SHUTDOWN_TIMEOUT_MS: u64 = 3_000;

/// Slack over the shutdown timeout for the task to return and be observed by the test.
const SLACK: Duration = Duration::from_millis(1_500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_bounded_when_broker_gone() {
    init_logs();
    let broker = Broker::start();
    let topic = unique("broker-gone");
    let group = unique("group");
    broker.create_topic(&topic, 2);
    broker.produce(keyed_records(&topic, 0, 10, 3)).await;

    let handler = RecordingHandler::new(|_| async { Ok(()) });
    let server = HandlerServer::start(handler.clone()).await;
    let timeout = SHUTDOWN_TIMEOUT_MS.to_string();
    let config = config(&broker, &topic, &group, &server.endpoint(), &[("SCC_SHUTDOWN_TIMEOUT_MS", &timeout)]);
    let sidecar = RunningSidecar::spawn(Sidecar::new(config.clone(), grpc_handler(&config)));
    let committed = sidecar.stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(10)).await;
    assert!(committed.is_ok(), "{committed:?}");

    broker.cluster.broker_down(1).expect("broker taken down");
    let started = Instant::now();
    let summary = sidecar.shutdown().await;
    let took = started.elapsed();

    assert!(took <= Duration::from_millis(SHUTDOWN_TIMEOUT_MS) + SLACK, "shutdown took {took:?}");
    assert_eq!(summary.report.abandoned_in_flight, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_bounded_when_handler_hangs() {
    init_logs();
    let broker = Broker::start();
    let topic = unique("handler-hangs");
    let group = unique("group");
    broker.create_topic(&topic, 1);
    broker.produce(keyed_records(&topic, 0, 5, 5)).await;

    // Offset 3 never gets an answer; the others succeed.
    let handler = RecordingHandler::new(|request| async move {
        if request.offset == 3 {
            std::future::pending::<()>().await;
        }
        Ok(())
    });
    let server = HandlerServer::start(handler.clone()).await;
    let timeout = SHUTDOWN_TIMEOUT_MS.to_string();
    let config = config(
        &broker,
        &topic,
        &group,
        &server.endpoint(),
        &[("SCC_SHUTDOWN_TIMEOUT_MS", &timeout), ("SCC_PROCESSING_ORDER", "unordered")],
    );
    let sidecar = RunningSidecar::spawn(Sidecar::new(config.clone(), grpc_handler(&config)));
    let committed = sidecar.stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(3)).await;
    assert!(committed.is_ok(), "{committed:?}");
    let hanging = handler.wait_for_calls(WAIT, |calls| calls.iter().any(|call| call.request.offset == 3)).await;
    assert!(hanging.is_ok(), "{hanging:?}");
    let finished = sidecar.stats.wait_until(WAIT, |s| s.succeeded == 4).await;
    assert!(finished.is_ok(), "{finished:?}");

    let started = Instant::now();
    let summary = sidecar.shutdown().await;
    let took = started.elapsed();

    assert!(took <= Duration::from_millis(SHUTDOWN_TIMEOUT_MS) + SLACK, "shutdown took {took:?}");
    assert_eq!(summary.report.abandoned_in_flight, 1);
    assert!(summary.consumer_closed, "the consumer did not close");
    // Offset 4 finished, but 3 never did, so the commit stays at 3.
    let on_broker = broker.committed_async(&group, &topic, 1).await;
    assert_eq!(on_broker.get(&0).copied().flatten(), Some(3));
    server.stop().await;
}
