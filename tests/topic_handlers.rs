//! Per-topic handlers end to end: a configuration file gives one topic its own handler
//! endpoint, two real gRPC handler servers run on loopback, and each topic's messages reach
//! only its handler and are committed.

mod support;

use kafka_scc::config;
use kafka_scc::handler::connect_grpc;
use kafka_scc::{Handler, Readiness, Sidecar};
use support::*;

const PARTITIONS: i32 = 2;
const PER_PARTITION: usize = 6;

/// Builds the file text for two topics: `own` with its own endpoint, and `other`, which uses
/// `default_endpoint`.
fn config_text(own: &str, own_endpoint: &str, other: &str, default_endpoint: &str) -> String {
    format!(
        "[[topics]]\nname = \"{own}\"\nhandler_endpoint = \"{own_endpoint}\"\n\n\
         [[topics]]\nname = \"{other}\"\n\n\
         [handler]\nendpoint = \"{default_endpoint}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_reach_only_their_handler() {
    init_logs();
    let broker = Broker::start();
    let payments = unique("payments");
    let refunds = unique("refunds");
    let group = unique("group");
    for topic in [&payments, &refunds] {
        broker.create_topic(topic, PARTITIONS);
        for partition in 0..PARTITIONS {
            broker.produce(keyed_records(topic, partition, PER_PARTITION, 3)).await;
        }
    }

    let payments_handler = RecordingHandler::new(|_| async { Ok(()) });
    let default_handler = RecordingHandler::new(|_| async { Ok(()) });
    let payments_server = HandlerServer::start(payments_handler.clone()).await;
    let default_server = HandlerServer::start(default_handler.clone()).await;

    let text = config_text(&payments, &payments_server.endpoint(), &refunds, &default_server.endpoint());
    let env = [
        ("KAFKA_BROKERS", broker.bootstrap.as_str()),
        ("KAFKA_GROUP_ID", group.as_str()),
        ("SCC_HTTP_ADDR", "127.0.0.1:0"),
        ("SCC_HANDLER_READY_TIMEOUT_MS", "0"),
        ("SCC_COMMIT_INTERVAL_MS", "50"),
        ("SCC_SHUTDOWN_TIMEOUT_MS", "5000"),
        ("KAFKA_CFG_SESSION_TIMEOUT_MS", "6000"),
        ("KAFKA_CFG_HEARTBEAT_INTERVAL_MS", "500"),
    ];
    let loaded = config::load_str("topic-handlers.toml", &text, env).expect("valid configuration");
    assert_eq!(loaded.routes.endpoint(&payments), Some(payments_server.endpoint().as_str()));
    let router = connect_grpc(&loaded.config, &loaded.routes).expect("valid endpoints");
    assert_eq!(router.endpoints().count(), 2);
    let sidecar = RunningSidecar::spawn(Sidecar::new(loaded.config, router));

    let end = PER_PARTITION as i64;
    for topic in [&payments, &refunds] {
        let committed = broker.wait_for_committed(&group, topic, &[end, end]).await;
        assert!(committed.is_ok(), "{topic}: broker committed offsets {committed:?}");
    }
    let summary = sidecar.shutdown().await;
    assert!(summary.consumer_closed);

    let expected_calls = PARTITIONS as usize * PER_PARTITION;
    let payments_calls = payments_handler.calls();
    let default_calls = default_handler.calls();
    assert_eq!(payments_calls.len(), expected_calls);
    assert_eq!(default_calls.len(), expected_calls);
    assert!(payments_calls.iter().all(|call| call.request.topic == payments), "payments handler got another topic");
    assert!(default_calls.iter().all(|call| call.request.topic == refunds), "default handler got another topic");

    payments_server.stop().await;
    default_server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_the_handler_that_is_down() {
    let handler = RecordingHandler::new(|_| async { Ok(()) });
    let up = HandlerServer::start(handler).await;
    let down = format!("http://{}", free_loopback_addr());

    let text = config_text("payments", &down, "refunds", &up.endpoint());
    let loaded = config::load_str("readiness.toml", &text, [("KAFKA_BROKERS", "127.0.0.1:9")]).unwrap();
    let router = connect_grpc(&loaded.config, &loaded.routes).unwrap();

    // The health check against the closed port fails at once, so the wait ends at its bound.
    let readiness = router.wait_until_ready(std::time::Duration::from_secs(1)).await;
    let Readiness::TimedOut(reason) = readiness else {
        panic!("expected a timeout naming {down}, got {readiness:?}");
    };
    assert!(reason.contains(&down), "{reason}");
    assert!(!reason.contains(&up.endpoint()), "{reason}");
    up.stop().await;
}
