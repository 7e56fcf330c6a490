//! The `kafka-scc` binary against the mock broker and a real handler server: it commits every
//! message, and on SIGTERM exits 0 within `SCC_SHUTDOWN_TIMEOUT_MS`.

mod support;

use std::time::Duration;

use support::binary::{drain_pipe, spawn_binary};
use support::*;
use tokio::time::Instant;

const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(5_000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_commits_and_stops_on_sigterm() {
    const PARTITIONS: i32 = 2;
    const PER_PARTITION: usize = 5;

    init_logs();
    let broker = Broker::start();
    let topic = unique("binary");
    let group = unique("group");
    broker.create_topic(&topic, PARTITIONS);
    for partition in 0..PARTITIONS {
        broker.produce(keyed_records(&topic, partition, PER_PARTITION, 3)).await;
    }
    let handler = RecordingHandler::new(|_| async { Ok(()) });
    let server = HandlerServer::start(handler.clone()).await;

    let shutdown_ms = SHUTDOWN_TIMEOUT.as_millis().to_string();
    let endpoint = server.endpoint();
    let env = [
        ("KAFKA_BROKERS", broker.bootstrap.as_str()),
        ("KAFKA_GROUP_ID", group.as_str()),
        ("SCC_HTTP_ADDR", "127.0.0.1:0"),
        ("KAFKA_TOPIC", topic.as_str()),
        ("HANDLER_ENDPOINT", endpoint.as_str()),
        ("SCC_COMMIT_INTERVAL_MS", "50"),
        ("SCC_SHUTDOWN_TIMEOUT_MS", shutdown_ms.as_str()),
        ("KAFKA_CFG_SESSION_TIMEOUT_MS", "6000"),
        ("KAFKA_CFG_HEARTBEAT_INTERVAL_MS", "500"),
        ("RUST_LOG", "info"),
    ];
    let mut child = spawn_binary::<&str>(&[], &env);
    // Drain both pipes while the binary runs, so a full pipe can never block it.
    let log = drain_pipe(child.stderr.take().expect("stderr is piped"));
    let _stdout = drain_pipe(child.stdout.take().expect("stdout is piped"));

    let end = PER_PARTITION as i64;
    let committed = broker.wait_for_committed(&group, &topic, &[end, end]).await;
    assert!(committed.is_ok(), "broker committed offsets: {committed:?}");
    assert_eq!(handler.calls().len(), PARTITIONS as usize * PER_PARTITION);

    let pid = child.id().expect("the binary is still running").to_string();
    let signalled_at = Instant::now();
    let kill = std::process::Command::new("kill").args(["-TERM", pid.as_str()]).status().expect("kill runs");
    assert!(kill.success(), "kill -TERM failed: {kill}");
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the binary exits after SIGTERM")
        .expect("the binary's exit status is read");
    let took = signalled_at.elapsed();
    let log = log.await.expect("the log reader finished");

    assert_eq!(status.code(), Some(0), "exit status {status}; log:\n{log}");
    assert!(took <= SHUTDOWN_TIMEOUT, "exited {took:?} after SIGTERM; log:\n{log}");
    assert!(log.contains("kafka-scc stopped"), "no stop line in the log:\n{log}");
    server.stop().await;
}
