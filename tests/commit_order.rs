//! Offsets are committed strictly in order: a message that finishes late holds back the
//! committed offset of its partition even when later messages already finished.

mod support;

use std::sync::Arc;

use kafka_scc::Sidecar;
use support::*;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long the test watches the committed offset while offset 1 is held, in commit intervals.
/// Several intervals give the sidecar several chances to commit too far.
const HELD_OBSERVATION_INTERVALS: u32 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_message_blocks_later_commits() {
    init_logs();
    let broker = Broker::start();
    let topic = unique("order");
    let group = unique("group");
    broker.create_topic(&topic, 1);
    // Distinct keys, so that key mode would run them concurrently too; unordered makes it
    // explicit.
    broker.produce(keyed_records(&topic, 0, 3, 3)).await;

    let release = Arc::new(Notify::new());
    let handler = {
        let release = release.clone();
        RecordingHandler::new(move |request| {
            let release = release.clone();
            async move {
                if request.offset == 1 {
                    release.notified().await;
                }
                Ok(())
            }
        })
    };
    let server = HandlerServer::start(handler.clone()).await;
    let config = config(&broker, &topic, &group, &server.endpoint(), &[("SCC_PROCESSING_ORDER", "unordered")]);
    let commit_interval = config.commit_interval;
    let sidecar = RunningSidecar::spawn(Sidecar::new(config.clone(), grpc_handler(&config)));
    let stats = sidecar.stats.clone();

    // Offsets 0 and 2 finish while 1 is held by the handler.
    let held_call = handler.wait_for_calls(WAIT, |calls| calls.iter().any(|c| c.request.offset == 1)).await;
    assert!(held_call.is_ok(), "offset 1 never reached the handler: {held_call:?}");
    let finished = stats.wait_until(WAIT, |s| s.succeeded == 2).await;
    assert!(finished.is_ok(), "offsets 0 and 2 did not finish: {finished:?}");
    let first_commit =
        stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0).is_some()).await.expect("offset 0 is committed");
    assert_eq!(first_commit.committed_offset(&topic, 0), Some(1));

    // Watch the committed offset for several commit intervals while offset 1 is still held:
    // it must stay at 1 both in the sidecar and on the broker.
    let watch_until = Instant::now() + commit_interval * HELD_OBSERVATION_INTERVALS;
    let mut samples = 0;
    while Instant::now() < watch_until {
        let on_broker = broker.committed_async(&group, &topic, 1).await;
        assert_eq!(on_broker.get(&0).copied().flatten(), Some(1));
        assert_eq!(stats.snapshot().committed_offset(&topic, 0), Some(1));
        samples += 1;
    }
    assert!(samples > 0, "the committed offset was never sampled");
    assert_eq!(stats.snapshot().succeeded, 2, "offset 1 finished before release");

    release.notify_one();
    let all_committed = stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(3)).await;
    assert!(all_committed.is_ok(), "not committed to the end: {all_committed:?}");
    let on_broker = broker.wait_for_committed(&group, &topic, &[3]).await;
    assert!(on_broker.is_ok(), "broker committed offsets: {on_broker:?}");

    let summary = sidecar.shutdown().await;
    assert_eq!(summary.stats.succeeded, 3);
    assert_eq!(summary.stats.pause_eligible, 0);
    server.stop().await;
}
