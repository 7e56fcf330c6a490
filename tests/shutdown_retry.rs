//! Shutdown while a message is being retried: the message stays uncommitted, and the next
//! consumer in the group receives it again.

mod support;

use kafka_scc::Sidecar;
use support::*;
use tonic::Status;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_retried_message_uncommitted() {
    const FAILING_OFFSET: i64 = 2;
    const COUNT: i64 = 5;

    init_logs();
    let broker = Broker::start();
    let topic = unique("shutdown");
    let group = unique("group");
    broker.create_topic(&topic, 1);
    broker.produce(keyed_records(&topic, 0, COUNT as usize, 1)).await;

    let failing = RecordingHandler::new(|request| async move {
        if request.offset == FAILING_OFFSET {
            return Err(Status::unavailable("dependency down"));
        }
        Ok(())
    });
    let server = HandlerServer::start(failing.clone()).await;
    let first_config = config(&broker, &topic, &group, &server.endpoint(), &[]);
    let first = RunningSidecar::spawn(Sidecar::new(first_config.clone(), grpc_handler(&first_config)));

    // A retry of the failing offset has reached the handler, and the offsets before it are
    // committed.
    let retried = failing
        .wait_for_calls(WAIT, |calls| {
            calls.iter().any(|call| call.request.offset == FAILING_OFFSET && call.request.attempt >= 2)
        })
        .await;
    assert!(retried.is_ok(), "the failing offset was never retried: {retried:?}");
    let committed_before = first
        .stats
        .wait_until(WAIT, |s| s.committed_offset(&topic, 0).is_some_and(|offset| offset >= FAILING_OFFSET))
        .await
        .expect("offsets before the failure are committed");
    assert_eq!(committed_before.committed_offset(&topic, 0), Some(FAILING_OFFSET));

    let summary = first.shutdown().await;
    assert!(summary.consumer_closed, "the first consumer did not close");
    assert_eq!(summary.stats.committed_offset(&topic, 0), Some(FAILING_OFFSET));
    assert_eq!(summary.stats.succeeded, FAILING_OFFSET as u64);
    let on_broker = broker.committed_async(&group, &topic, 1).await;
    assert_eq!(on_broker.get(&0).copied().flatten(), Some(FAILING_OFFSET));
    server.stop().await;

    // A second sidecar in the same group with a healthy handler resumes at the failing offset.
    let healthy = RecordingHandler::new(|_| async { Ok(()) });
    let server = HandlerServer::start(healthy.clone()).await;
    let second_config = config(&broker, &topic, &group, &server.endpoint(), &[]);
    let second = RunningSidecar::spawn(Sidecar::new(second_config.clone(), grpc_handler(&second_config)));

    let done = second.stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(COUNT)).await;
    assert!(done.is_ok(), "the second sidecar did not commit to the end: {done:?}");
    let on_broker = broker.wait_for_committed(&group, &topic, &[COUNT]).await;
    assert!(on_broker.is_ok(), "broker committed offsets: {on_broker:?}");

    let offsets: Vec<i64> = healthy.calls().iter().map(|call| call.request.offset).collect();
    assert_eq!(offsets, (FAILING_OFFSET..COUNT).collect::<Vec<_>>());
    let redelivered = healthy.calls_for(0, FAILING_OFFSET);
    assert_eq!(redelivered[0].request.attempt, 1, "a new process counts attempts from 1");

    second.shutdown().await;
    server.stop().await;
}
