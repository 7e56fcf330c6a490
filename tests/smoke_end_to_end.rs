//! The whole path once: mock broker, real gRPC handler, sidecar, committed offsets.

mod support;

use kafka_scc::{GrpcHandler, Sidecar};
use support::*;
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_handled_and_committed() {
    init_logs();
    let broker = Broker::start();
    let topic = unique("smoke");
    let group = unique("group");
    broker.create_topic(&topic, 3);
    let records: Vec<TestRecord> = (0..30)
        .map(|i| TestRecord::new(&topic, i % 3, Some(format!("k{}", i % 5).as_bytes()), format!("v{i}").as_bytes()))
        .collect();
    broker.produce(records).await;

    let handler = ScriptedHandler::ok();
    let server = HandlerServer::start(handler.clone()).await;
    let config = config(&broker, &topic, &group, &server.endpoint(), &[]);
    let grpc = GrpcHandler::connect_lazy(
        &server.endpoint(),
        group.clone(),
        config.handler_timeout,
        config.pause_codes.clone(),
    )
    .unwrap();
    let sidecar = Sidecar::new(config, grpc);
    let stats = sidecar.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(sidecar.run(async {
        let _ = stopped.await;
    }));

    let snapshot = stats
        .wait_until(WAIT, |s| (0..3).all(|p| s.committed_offset(&topic, p) == Some(10)))
        .await
        .expect("all offsets committed");
    assert_eq!(snapshot.handled(), 30);

    stop.send(()).unwrap();
    let summary = run.await.unwrap().unwrap();
    assert!(summary.consumer_closed);
    assert_eq!(handler.calls().len(), 30);
    let committed = broker.committed(&group, &topic, 3);
    assert_eq!(committed.values().copied().collect::<Vec<_>>(), vec![Some(10), Some(10), Some(10)]);
}
