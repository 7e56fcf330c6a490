//! Non-pausing failures: a handler that rejects a message with a code outside the pause set
//! gets it once. The failure is counted, the gate stays open and the offset is committed.

mod support;

use kafka_scc::Sidecar;
use support::*;
use tonic::Status;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_argument_is_committed_once() {
    const REJECTED_OFFSET: i64 = 1;
    const COUNT: i64 = 4;

    init_logs();
    let broker = Broker::start();
    let topic = unique("invalid");
    let group = unique("group");
    broker.create_topic(&topic, 1);
    broker.produce(keyed_records(&topic, 0, COUNT as usize, 1)).await;

    let handler = RecordingHandler::new(|request| async move {
        if request.offset == REJECTED_OFFSET {
            return Err(Status::invalid_argument("malformed record"));
        }
        Ok(())
    });
    let server = HandlerServer::start(handler.clone()).await;
    let config = config(&broker, &topic, &group, &server.endpoint(), &[]);
    let sidecar = RunningSidecar::spawn(Sidecar::new(config.clone(), grpc_handler(&config)));
    let stats = sidecar.stats.clone();

    let done = stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(COUNT)).await;
    assert!(done.is_ok(), "not committed past the rejected offset: {done:?}");
    let on_broker = broker.wait_for_committed(&group, &topic, &[COUNT]).await;
    assert!(on_broker.is_ok(), "broker committed offsets: {on_broker:?}");

    let summary = sidecar.shutdown().await;
    assert_eq!(summary.stats.non_pausing, 1);
    assert_eq!(summary.stats.succeeded, (COUNT - 1) as u64);
    assert_eq!(summary.stats.pause_eligible, 0);
    assert_eq!(summary.stats.gate_closures, 0);
    let rejected = handler.calls_for(0, REJECTED_OFFSET);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].request.attempt, 1);
    server.stop().await;
}
