//! The bound on fetched records per partition, on librdkafka's mock cluster. The poll thread
//! stops taking a partition's records once `SCC_PARTITION_BUFFER` of them are taken and goes
//! on with the other partitions. As room is freed, it delivers the rest in offset order and
//! without gaps. The consumer is driven directly, so the test keeps and frees the buffer slots
//! itself.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kafka_scc::Stats;
use kafka_scc::kafka::{Event, Fetched, KafkaConsumer};
use support::*;
use tokio::sync::mpsc::UnboundedReceiver;

const PARTITIONS: i32 = 2;
const RECORDS_PER_PARTITION: usize = 300;
const BUFFER: usize = 20;

/// How long the test watches for records that the bound should hold back. Records that are
/// not held back arrive within milliseconds of the fetch, so a slow machine cannot make the
/// check fail, only pass for the wrong reason.
const QUIET_PERIOD: Duration = Duration::from_secs(1);

/// Receives events until `done` is true for the records received so far, and ignores other
/// events. Records are kept, with their slots, per partition.
async fn receive_until(
    events: &mut UnboundedReceiver<Event>,
    in_buffer: &mut BTreeMap<i32, Vec<Fetched>>,
    done: impl Fn(&BTreeMap<i32, Vec<Fetched>>) -> bool,
) {
    let received = tokio::time::timeout(WAIT, async {
        while !done(in_buffer) {
            match events.recv().await.expect("the poll thread runs") {
                Event::Fetched(records) => {
                    for record in records {
                        in_buffer.entry(record.message.partition).or_default().push(record);
                    }
                }
                Event::Revoked { .. } => panic!("no rebalance is expected after the assignment"),
                _ => {}
            }
        }
    })
    .await;
    let counts: BTreeMap<i32, usize> =
        in_buffer.iter().map(|(partition, records)| (*partition, records.len())).collect();
    assert!(received.is_ok(), "records never arrived as expected; in_buffer per partition: {counts:?}");
}

/// Returns the records that arrived within [`QUIET_PERIOD`].
async fn arrivals_within_quiet_period(events: &mut UnboundedReceiver<Event>) -> Vec<(i32, i64)> {
    let mut arrived = Vec::new();
    let _ = tokio::time::timeout(QUIET_PERIOD, async {
        while let Some(event) = events.recv().await {
            if let Event::Fetched(records) = event {
                arrived.extend(records.iter().map(|record| (record.message.partition, record.message.offset)));
            }
        }
    })
    .await;
    arrived
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffer_stops_its_partition() {
    init_logs();
    let broker = Broker::start();
    let topic = unique("flow");
    broker.create_topic(&topic, PARTITIONS);
    let records = (0..PARTITIONS).flat_map(|partition| keyed_records(&topic, partition, RECORDS_PER_PARTITION, 7));
    broker.produce(records.collect()).await;

    let buffer = BUFFER.to_string();
    let config = config(&broker, &topic, &unique("group"), "http://127.0.0.1:1", &[("SCC_PARTITION_BUFFER", &buffer)]);
    let (consumer, control, mut events) =
        KafkaConsumer::start(&config, Arc::new(Stats::new())).expect("consumer starts");

    // Both partitions fill their buffer, and nothing more arrives while the slots are kept.
    let mut in_buffer = BTreeMap::new();
    receive_until(&mut events, &mut in_buffer, |in_buffer| {
        (0..PARTITIONS).all(|partition| in_buffer.get(&partition).is_some_and(|records| records.len() >= BUFFER))
    })
    .await;
    let extra = arrivals_within_quiet_period(&mut events).await;
    assert!(extra.is_empty(), "records arrived beyond the buffer of {BUFFER}: {extra:?}");
    for (partition, records) in &in_buffer {
        assert_eq!(records.len(), BUFFER, "partition {partition} holds more than its buffer");
    }

    // Freeing half of partition 0's room lets its records flow again, and only its records.
    let freed: Vec<Fetched> = in_buffer.get_mut(&0).expect("partition 0 in_buffer").drain(..BUFFER / 2).collect();
    let mut delivered: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    delivered.insert(0, freed.iter().map(|record| record.message.offset).collect());
    drop(freed);
    receive_until(&mut events, &mut in_buffer, |in_buffer| in_buffer[&0].len() == BUFFER).await;
    let extra = arrivals_within_quiet_period(&mut events).await;
    assert!(extra.is_empty(), "records arrived beyond the buffer after freeing half of it: {extra:?}");
    assert_eq!(in_buffer[&1].len(), BUFFER, "partition 1 took records although its room was never freed");

    // Freeing every record as it arrives delivers the rest of both partitions, in offset
    // order and without gaps.
    for (partition, records) in std::mem::take(&mut in_buffer) {
        delivered.entry(partition).or_default().extend(records.iter().map(|record| record.message.offset));
    }
    let finished = tokio::time::timeout(WAIT, async {
        while delivered.values().map(Vec::len).sum::<usize>() < PARTITIONS as usize * RECORDS_PER_PARTITION {
            if let Some(Event::Fetched(records)) = events.recv().await {
                for record in records {
                    delivered.entry(record.message.partition).or_default().push(record.message.offset);
                }
            }
        }
    })
    .await;
    assert!(finished.is_ok(), "not every record arrived: {:?}", delivered.values().map(Vec::len).collect::<Vec<_>>());
    let expected: Vec<i64> = (0..RECORDS_PER_PARTITION as i64).collect();
    for (partition, offsets) in &delivered {
        assert_eq!(offsets, &expected, "partition {partition} arrived out of order or with gaps");
    }

    drop(control);
    assert!(consumer.close(Duration::from_secs(10)).await, "the consumer did not close");
}
