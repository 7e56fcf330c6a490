//! The dead-letter topic: a message the handler rejects for good is produced there with its
//! key, value and headers plus headers naming its origin and the rejection, and its offset is
//! committed only once the broker acknowledged that record. A failed dead-letter produce is
//! retried like a pause-eligible failure: the gate closes, the offset stays uncommitted, and
//! the handler is not called again for it.

mod support;

use kafka_scc::Sidecar;
use kafka_scc::kafka::dead_letter::{
    HEADER_CONSUMER_GROUP, HEADER_ERROR_CODE, HEADER_ERROR_MESSAGE, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TIMESTAMP, HEADER_SOURCE_TIMESTAMP_TYPE, HEADER_SOURCE_TOPIC, HEADER_TRACE_ID,
};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use support::*;
use tonic::Status;

const COUNT: i64 = 5;

fn source_records(topic: &str) -> Vec<TestRecord> {
    (0..COUNT)
        .map(|offset| {
            let mut record = TestRecord::new(topic, 0, Some(format!("key-{offset}").as_bytes()), b"");
            record.value = Some(format!("value-{offset}").into_bytes());
            record.headers = vec![("origin".to_owned(), Some(b"test".to_vec())), ("empty".to_owned(), None)];
            record.timestamp_ms = Some(1_700_000_000_000 + offset);
            record
        })
        .collect()
}

/// A broker with a one-partition source topic that contains the records of [`source_records`],
/// and an empty dead-letter topic.
struct Scenario {
    broker: Broker,
    topic: String,
    dead_letter_topic: String,
    group: String,
}

impl Scenario {
    async fn start() -> Scenario {
        init_logs();
        let broker = Broker::start();
        let topic = unique("payments");
        let dead_letter_topic = format!("{topic}.dlq");
        broker.create_topic(&topic, 1);
        broker.create_topic(&dead_letter_topic, 1);
        broker.produce(source_records(&topic)).await;
        Scenario { broker, topic, dead_letter_topic, group: unique("group") }
    }
}

/// A handler that rejects the records at `rejected` offsets with INVALID_ARGUMENT.
fn rejecting_handler(rejected: &'static [i64]) -> RecordingHandler {
    RecordingHandler::new(move |request| async move {
        if rejected.contains(&request.offset) {
            return Err(Status::invalid_argument(format!("amount of record {} is negative", request.offset)));
        }
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_produces_dead_letter_record() {
    const REJECTED: [i64; 2] = [1, 3];

    let Scenario { broker, topic, dead_letter_topic, group } = Scenario::start().await;

    let handler = rejecting_handler(&REJECTED);
    let server = HandlerServer::start(handler.clone()).await;
    let config = config(&broker, &topic, &group, &server.endpoint(), &[("SCC_DLQ_TOPIC", &dead_letter_topic)]);
    let sidecar = RunningSidecar::spawn(Sidecar::new(config.clone(), grpc_handler(&config)));
    let stats = sidecar.stats.clone();

    let done = stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(COUNT)).await;
    assert!(done.is_ok(), "not committed past the rejected offsets: {done:?}");
    let mut dead_letters = broker.read_topic(&dead_letter_topic, 1, REJECTED.len()).await;
    // Messages with different keys are handled concurrently, so their dead-letter records may
    // arrive in either order.
    dead_letters
        .sort_by_key(|record| record.header(HEADER_SOURCE_OFFSET).and_then(|offset| offset.parse::<i64>().ok()));
    let metrics = reqwest::get(format!("http://{}/metrics", stats.http_addr().expect("HTTP listener bound")))
        .await
        .expect("metrics endpoint answers")
        .text()
        .await
        .expect("metrics body read");
    let summary = sidecar.shutdown().await;
    server.stop().await;

    assert_eq!(dead_letters.len(), REJECTED.len(), "dead-letter records: {dead_letters:?}");
    for (record, offset) in dead_letters.iter().zip(REJECTED) {
        assert_eq!(record.key.as_deref(), Some(format!("key-{offset}").as_bytes()));
        assert_eq!(record.value.as_deref(), Some(format!("value-{offset}").as_bytes()));
        assert_eq!(record.headers[0], ("origin".to_owned(), Some(b"test".to_vec())));
        assert_eq!(record.headers[1], ("empty".to_owned(), None));
        assert_eq!(record.header(HEADER_SOURCE_TOPIC).as_deref(), Some(topic.as_str()));
        assert_eq!(record.header(HEADER_SOURCE_PARTITION).as_deref(), Some("0"));
        assert_eq!(record.header(HEADER_SOURCE_OFFSET), Some(offset.to_string()));
        assert_eq!(record.header(HEADER_SOURCE_TIMESTAMP), Some((1_700_000_000_000 + offset).to_string()));
        assert_eq!(record.header(HEADER_SOURCE_TIMESTAMP_TYPE).as_deref(), Some("create_time"));
        assert_eq!(record.header(HEADER_CONSUMER_GROUP).as_deref(), Some(group.as_str()));
        assert_eq!(record.header(HEADER_ERROR_CODE).as_deref(), Some("INVALID_ARGUMENT"));
        assert_eq!(record.header(HEADER_ERROR_MESSAGE), Some(format!("amount of record {offset} is negative")));
        let call = &handler.calls_for(0, offset)[0];
        assert_eq!(record.header(HEADER_TRACE_ID), Some(call.request.trace_id.clone()));
    }

    assert_eq!(summary.stats.dead_lettered, REJECTED.len() as u64);
    assert_eq!(summary.stats.non_pausing, REJECTED.len() as u64);
    assert_eq!(summary.stats.dead_letter_failures, 0);
    assert_eq!(summary.stats.gate_closures, 0);
    let dead_letter_line = format!(
        r#"scc_messages_total{{topic="{topic}",outcome="dead_letter",grpc_code="INVALID_ARGUMENT"}} {}"#,
        REJECTED.len()
    );
    assert!(metrics.contains(&dead_letter_line), "no {dead_letter_line} in:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_failure_pauses_consumption() {
    const PRODUCE_FAILURES: usize = 3;
    const REJECTED: i64 = 2;

    let Scenario { broker, topic, dead_letter_topic, group } = Scenario::start().await;
    // The next produce requests fail until these errors are used up. The source records are
    // already stored, so only the dead-letter producer meets them.
    broker.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; PRODUCE_FAILURES],
    );

    let handler = rejecting_handler(&[REJECTED]);
    let server = HandlerServer::start(handler.clone()).await;
    let extra = [("SCC_DLQ_TOPIC", dead_letter_topic.as_str()), ("SCC_BACKOFF_BASE_MS", "20")];
    let config = config(&broker, &topic, &group, &server.endpoint(), &extra);
    let sidecar = RunningSidecar::spawn(Sidecar::new(config.clone(), grpc_handler(&config)));
    let stats = sidecar.stats.clone();

    let failing = stats.wait_until(WAIT, |s| s.dead_letter_failures >= 1 && s.gate_closures >= 1).await;
    assert!(failing.is_ok(), "no dead-letter failure with a closed gate seen: {failing:?}");
    let during = stats.snapshot();
    assert!(
        during.committed_offset(&topic, 0).is_none_or(|offset| offset <= REJECTED),
        "committed past a message that is not on the dead-letter topic yet: {during:?}"
    );

    let done = stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(COUNT)).await;
    assert!(done.is_ok(), "not committed after the dead-letter topic recovered: {done:?}");
    let dead_letters = broker.read_topic(&dead_letter_topic, 1, 1).await;
    let summary = sidecar.shutdown().await;
    server.stop().await;

    let offsets: Vec<String> = dead_letters.iter().filter_map(|record| record.header(HEADER_SOURCE_OFFSET)).collect();
    assert_eq!(offsets, vec![REJECTED.to_string()], "dead-letter records: {dead_letters:?}");
    // librdkafka may also fail sends locally while it still caches the topic's authorization
    // error, so there can be more failures than injected errors.
    assert!(summary.stats.dead_letter_failures >= PRODUCE_FAILURES as u64, "{:?}", summary.stats);
    assert_eq!(summary.stats.dead_lettered, 1);
    // A dead-letter retry produces again without asking the handler.
    assert_eq!(handler.calls_for(0, REJECTED).len(), 1, "handler calls for the rejected offset");
}
