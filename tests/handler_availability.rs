//! A handler that is not reachable, because it has not started yet or was killed and restarted
//! on its port, closes the gate. The sidecar keeps probing and resumes by itself once the
//! handler listens again, without losing a message.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use kafka_scc::Sidecar;
use support::*;
use tokio::time::Instant;

/// Time allowed beyond the maximum backoff delay for the gRPC channel to reconnect and the
/// probe to come back.
const RECONNECT_SLACK: Duration = Duration::from_secs(2);

/// Offsets of partition 0 that some call received by `handler` carried.
fn offsets_seen(handler: &RecordingHandler) -> BTreeSet<i64> {
    handler.calls().iter().map(|call| call.request.offset).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_started_late_is_picked_up() {
    const COUNT: i64 = 5;

    init_logs();
    let broker = Broker::start();
    let topic = unique("late");
    let group = unique("group");
    broker.create_topic(&topic, 1);
    broker.produce(keyed_records(&topic, 0, COUNT as usize, 2)).await;

    let addr = free_loopback_addr();
    let endpoint = format!("http://{addr}");
    let config = config(&broker, &topic, &group, &endpoint, &[]);
    let backoff_max = config.backoff_max;
    let sidecar = RunningSidecar::spawn(Sidecar::new(config.clone(), grpc_handler(&config)));
    let stats = sidecar.stats.clone();

    let closed = stats.wait_until(WAIT, |s| !s.gate_open).await.expect("the gate closes while nothing listens");
    assert!(closed.pause_eligible >= 1, "no pause-eligible failure counted");
    assert_eq!(closed.committed_offset(&topic, 0), None);

    let handler = RecordingHandler::new(|_| async { Ok(()) });
    let server = HandlerServer::start_on(handler.clone(), addr).await;
    let started = Instant::now();

    let opened = stats.wait_until(WAIT, |s| s.gate_open).await;
    assert!(opened.is_ok(), "the gate did not reopen: {opened:?}");
    let reopen_took = started.elapsed();
    assert!(
        reopen_took <= backoff_max + RECONNECT_SLACK,
        "the gate reopened {reopen_took:?} after the handler started"
    );

    let done = stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(COUNT)).await;
    assert!(done.is_ok(), "not committed to the end: {done:?}");
    let on_broker = broker.wait_for_committed(&group, &topic, &[COUNT]).await;
    assert!(on_broker.is_ok(), "broker committed offsets: {on_broker:?}");
    assert_eq!(offsets_seen(&handler), (0..COUNT).collect());

    let summary = sidecar.shutdown().await;
    assert_eq!(summary.stats.succeeded, COUNT as u64);
    assert_eq!(summary.stats.non_pausing, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_restart_resumes_without_loss() {
    const COUNT: i64 = 20;
    /// The first offset that the first handler instance never responds to. The instance is
    /// killed while that call is open.
    const KILLED_AT: i64 = 10;

    init_logs();
    let broker = Broker::start();
    let topic = unique("restart");
    let group = unique("group");
    broker.create_topic(&topic, 1);
    broker.produce(keyed_records(&topic, 0, COUNT as usize, 4)).await;

    let first = RecordingHandler::new(|request| async move {
        if request.offset >= KILLED_AT {
            std::future::pending::<()>().await;
        }
        Ok(())
    });
    let server = HandlerServer::start(first.clone()).await;
    let addr = server.addr;
    // One call at a time, so the kill lands between the offsets with a response and those
    // without one.
    let config = config(
        &broker,
        &topic,
        &group,
        &server.endpoint(),
        &[("SCC_PROCESSING_ORDER", "partition"), ("SCC_HANDLER_TIMEOUT_MS", "5000")],
    );
    let backoff_max = config.backoff_max;
    let sidecar = RunningSidecar::spawn(Sidecar::new(config.clone(), grpc_handler(&config)));
    let stats = sidecar.stats.clone();

    let killed_call = first.wait_for_calls(WAIT, |calls| calls.iter().any(|c| c.request.offset == KILLED_AT)).await;
    assert!(killed_call.is_ok(), "offset {KILLED_AT} never reached the first handler: {killed_call:?}");
    let before_kill = stats
        .wait_until(WAIT, |s| s.committed_offset(&topic, 0).is_some_and(|offset| offset >= KILLED_AT))
        .await
        .expect("the offsets before the kill are committed");
    assert_eq!(before_kill.committed_offset(&topic, 0), Some(KILLED_AT));
    server.kill().await;

    // The open call fails with the connection, and at least one probe finds nothing listening.
    let down = stats
        .wait_until(WAIT, |s| !s.gate_open && s.pause_eligible >= 2)
        .await
        .expect("the gate closes and a probe fails after the kill");
    assert_eq!(down.committed_offset(&topic, 0), Some(KILLED_AT));

    let second = RecordingHandler::new(|_| async { Ok(()) });
    let server = HandlerServer::start_on(second.clone(), addr).await;
    let restarted = Instant::now();

    let opened = stats.wait_until(WAIT, |s| s.gate_open).await;
    assert!(opened.is_ok(), "the gate did not reopen: {opened:?}");
    let reopen_took = restarted.elapsed();
    assert!(reopen_took <= backoff_max + RECONNECT_SLACK, "the gate reopened {reopen_took:?} after the restart");

    let done = stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(COUNT)).await;
    assert!(done.is_ok(), "not committed to the end: {done:?}");
    let on_broker = broker.wait_for_committed(&group, &topic, &[COUNT]).await;
    assert!(on_broker.is_ok(), "broker committed offsets: {on_broker:?}");

    // Nothing lost: the first instance returned OK for every offset before the kill, and the
    // second received every offset from the killed call to the end.
    let handled_by_first: BTreeSet<i64> = (0..KILLED_AT).collect();
    assert!(offsets_seen(&first).is_superset(&handled_by_first), "first instance missed offsets");
    assert_eq!(offsets_seen(&second), (KILLED_AT..COUNT).collect());

    let summary = sidecar.shutdown().await;
    assert_eq!(summary.stats.succeeded, COUNT as u64);
    assert_eq!(summary.stats.non_pausing, 0);
    server.stop().await;
}
