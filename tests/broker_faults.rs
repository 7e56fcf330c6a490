//! Broker faults on librdkafka's mock cluster: injected commit errors, a broker outage in the
//! middle of a stream, and a committed offset that is out of range.

mod cluster;
mod support;

use std::time::Duration;

use cluster::*;
use kafka_scc::Sidecar;
use kafka_scc::telemetry::StatsSnapshot;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use support::*;

/// The mock cluster's only broker; librdkafka numbers mock brokers from 1.
const BROKER_ID: i32 = 1;

/// Partitions of the topic in the commit error and outage tests.
const PARTITIONS: i32 = 4;

/// One record every 20 ms, spread over all partitions.
const PRODUCE_INTERVAL: Duration = Duration::from_millis(20);

/// How long the broker stays down, below the 6 s session timeout of `support::config`, so the
/// sidecar keeps its group membership unless librdkafka gives it up on its own.
const OUTAGE: Duration = Duration::from_secs(3);

/// Commits that the broker rejects with retriable errors are retried with the latest offsets,
/// and the committed offset never goes backwards on the broker or in the sidecar's stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_errors_are_retried() {
    const INJECTED: usize = 12;

    init_logs();
    let broker = Broker::start();
    let topic = unique("commit-errors");
    let group = unique("group");
    broker.create_topic(&topic, PARTITIONS);
    let recorder = OffsetRecorder::succeeding(Duration::ZERO);
    let config = config(&broker, &topic, &group, "http://127.0.0.1:1", &[]);
    let sidecar = RunningSidecar::spawn(Sidecar::new(config, recorder.clone()));
    let assigned = sidecar.stats.wait_until(WAIT, |s| s.assigned.len() == PARTITIONS as usize).await;
    assert!(assigned.is_ok(), "the partitions were never assigned: {assigned:?}");

    let sampler = CommitSampler::start(&broker, &group, &topic, PARTITIONS, sidecar.stats.clone());
    let producer = BackgroundProducer::start(&broker, &topic, PARTITIONS, PRODUCE_INTERVAL);
    let flowing = sidecar.stats.wait_until(WAIT, |s| s.committed.len() == PARTITIONS as usize).await;
    assert!(flowing.is_ok(), "nothing was committed before the errors: {flowing:?}");

    // librdkafka 2.12 retries a commit request that fails with NOT_COORDINATOR or
    // REQUEST_TIMED_OUT twice by itself, so only a run of them fails kafka-scc's commits.
    let errors: Vec<RDKafkaRespErr> = (0..INJECTED)
        .map(|i| {
            if i % 2 == 0 {
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR
            } else {
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT
            }
        })
        .collect();
    broker.cluster.request_errors(RDKafkaApiKey::OffsetCommit, &errors);
    let failed = sidecar.stats.wait_until(WAIT, |s| s.commit_failures > 0).await;
    assert!(failed.is_ok(), "no commit failed: {failed:?}");
    let commits_during_errors = sidecar.stats.snapshot().committed;

    let moved_on = sidecar
        .stats
        .wait_until(WAIT, |s| {
            s.committed.iter().any(|(partition, offset)| commits_during_errors.get(partition) < Some(offset))
        })
        .await;
    assert!(moved_on.is_ok(), "commits never succeeded again: {moved_on:?}");
    let delivered = producer.stop().await;
    let end = end_offsets(&broker, &topic, PARTITIONS).await;
    assert_eq!(end.iter().sum::<i64>(), delivered.len() as i64, "end offsets disagree with the records delivered");
    let committed = broker.wait_for_committed(&group, &topic, &end).await;
    assert!(committed.is_ok(), "committed offsets never reached the end offsets {end:?}: {committed:?}");

    let report = sampler.stop().await;
    let summary = sidecar.shutdown().await;
    assert!(report.regressions.is_empty(), "committed offsets went backwards: {:?}", report.regressions);
    assert!(report.broker_samples > 1, "the broker was sampled {} times", report.broker_samples);
    assert!(summary.stats.commit_failures > 0, "no commit failure was counted");
    assert!(summary.stats.commits_healthy, "commits are reported unhealthy at the end");
    assert!(recorder.missing(&end).is_empty(), "offsets never handled: {:?}", recorder.missing(&end));
}

/// The broker goes down in the middle of a stream and comes back. The sidecar reconnects by
/// itself and loses no message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_resumes_by_itself() {
    /// Messages handled before the outage starts and after it ends, so that the outage falls
    /// in the middle of a stream.
    const HANDLED_AROUND_OUTAGE: u64 = 40;

    init_logs();
    let broker = Broker::start();
    let topic = unique("outage");
    let group = unique("group");
    broker.create_topic(&topic, PARTITIONS);
    let recorder = OffsetRecorder::succeeding(Duration::ZERO);
    let config = config(&broker, &topic, &group, "http://127.0.0.1:1", &[]);
    let sidecar = RunningSidecar::spawn(Sidecar::new(config, recorder.clone()));
    let assigned = sidecar.stats.wait_until(WAIT, |s| s.assigned.len() == PARTITIONS as usize).await;
    assert!(assigned.is_ok(), "the partitions were never assigned: {assigned:?}");

    let producer = BackgroundProducer::start(&broker, &topic, PARTITIONS, PRODUCE_INTERVAL);
    let flowing = sidecar
        .stats
        .wait_until(WAIT, |s| s.handled() >= HANDLED_AROUND_OUTAGE && s.committed.len() == PARTITIONS as usize)
        .await;
    assert!(flowing.is_ok(), "too little was handled and committed before the outage: {flowing:?}");

    let before = sidecar.stats.snapshot();
    broker.cluster.broker_down(BROKER_ID).expect("broker set down");
    let noticed = sidecar.stats.wait_until(WAIT, |s| s.consumer_errors > before.consumer_errors).await;
    assert!(noticed.is_ok(), "the sidecar never reported the outage: {noticed:?}");
    // This sleep sets the outage's length, which is part of the scenario, and waits for no
    // condition. The broker stays down for this long after the sidecar noticed.
    tokio::time::sleep(OUTAGE).await;
    let handled_at_up = sidecar.stats.snapshot().handled();
    broker.cluster.broker_up(BROKER_ID).expect("broker set up");

    let resumed = sidecar.stats.wait_until(WAIT, |s| s.handled() >= handled_at_up + HANDLED_AROUND_OUTAGE).await;
    assert!(resumed.is_ok(), "consumption never resumed: {resumed:?}");
    let delivered = producer.stop().await;
    let end = end_offsets(&broker, &topic, PARTITIONS).await;
    assert_eq!(end.iter().sum::<i64>(), delivered.len() as i64, "end offsets disagree with the records delivered");
    let all_handled = recorder.wait_for_all(WAIT, &end).await;
    assert!(all_handled.is_ok(), "offsets never handled: {all_handled:?}");
    let committed = broker.wait_for_committed(&group, &topic, &end).await;
    assert!(committed.is_ok(), "committed offsets never reached the end offsets {end:?}: {committed:?}");

    let summary = sidecar.shutdown().await;
    assert_eq!(summary.stats.fatal_error, None, "fatal consumer error");
    assert!(summary.consumer_closed, "the consumer did not close");
}

/// Commits `offset` for every partition of `topic` in `group` with a plain consumer that
/// never joins the group, as an operator's tool would.
async fn commit_with_plain_consumer(broker: &Broker, group: &str, topic: &str, partitions: i32, offset: i64) {
    let bootstrap = broker.bootstrap.clone();
    let group = group.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .create()
            .expect("plain consumer created");
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition_offset(&topic, partition, Offset::Offset(offset)).expect("offset added");
        }
        consumer.commit(&list, CommitMode::Sync).expect("offsets committed");
    })
    .await
    .expect("commit on a blocking thread");
}

/// Records produced before the committed offset is moved beyond the end.
const EARLY_RECORDS: i64 = 5;

/// Starts a sidecar on a group whose committed offset lies beyond the end of the partition,
/// while records keep arriving, and returns the offsets it handled and its final stats.
/// `policy` is the `auto.offset.reset` value.
async fn consume_after_bad_commit(policy: &str) -> (Vec<i64>, i64, StatsSnapshot) {
    /// Far beyond anything the producer reaches during the test.
    const BEYOND_END: i64 = 1_000_000;

    init_logs();
    let broker = Broker::start();
    let topic = unique("out-of-range");
    let group = unique("group");
    broker.create_topic(&topic, 1);
    broker.produce(keyed_records(&topic, 0, EARLY_RECORDS as usize, 1)).await;
    commit_with_plain_consumer(&broker, &group, &topic, 1, BEYOND_END).await;
    let before = broker.committed_async(&group, &topic, 1).await;
    assert_eq!(before.get(&0).copied().flatten(), Some(BEYOND_END), "offset committed beyond the end");

    // With `latest` the sidecar starts at whatever the end is when librdkafka looks it up,
    // so records keep arriving until one of them was handled.
    let producer = BackgroundProducer::start(&broker, &topic, 1, PRODUCE_INTERVAL);
    let recorder = OffsetRecorder::succeeding(Duration::ZERO);
    let config = config(&broker, &topic, &group, "http://127.0.0.1:1", &[("KAFKA_CFG_AUTO_OFFSET_RESET", policy)]);
    let sidecar = RunningSidecar::spawn(Sidecar::new(config, recorder.clone()));
    let reset = sidecar.stats.wait_until(WAIT, |s| s.offset_resets > 0).await;
    assert!(reset.is_ok(), "no offset reset was counted: {reset:?}");
    let consuming = sidecar.stats.wait_until(WAIT, |s| s.handled() > 0).await;
    assert!(consuming.is_ok(), "nothing was handled after the reset: {consuming:?}");

    producer.stop().await;
    let end = end_offsets(&broker, &topic, 1).await[0];
    let done = sidecar.stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(end)).await;
    assert!(done.is_ok(), "not committed to the end offset {end}: {done:?}");
    let summary = sidecar.shutdown().await;
    let handled: Vec<i64> =
        recorder.handled().get(&0).map(|offsets| offsets.iter().copied().collect()).unwrap_or_default();
    (handled, end, summary.stats)
}

/// librdkafka logs a reset caused by an out-of-range fetch at warning level, and the sidecar
/// counts it. With `earliest` every record of the partition is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_resets_to_earliest() {
    let (handled, end, stats) = consume_after_bad_commit("earliest").await;
    assert_eq!(handled, (0..end).collect::<Vec<_>>(), "offsets handled after the reset");
    assert_eq!(stats.offset_resets, 1, "offset resets counted");
}

/// With `latest` the records from before the reset are skipped, and everything from the first
/// record handled on is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_resets_to_latest() {
    let (handled, end, stats) = consume_after_bad_commit("latest").await;
    let first = handled.first().copied().expect("something was handled");
    assert!(first >= EARLY_RECORDS, "the reset to latest handled old offset {first}");
    assert_eq!(handled, (first..end).collect::<Vec<_>>(), "offsets handled after the reset");
    assert_eq!(stats.offset_resets, 1, "offset resets counted");
}
