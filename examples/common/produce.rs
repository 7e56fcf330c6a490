//! Synthetic events for the examples: JSON order events keyed by customer, produced to Kafka
//! with every acknowledgement awaited.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

/// Distinct customer keys the events are spread over; events of one customer go to one
/// partition, in order.
pub const CUSTOMERS: u64 = 100;

/// What [`produce_events`] did.
#[derive(Debug, Default, Clone)]
pub struct ProduceReport {
    /// Events acknowledged by the broker.
    pub acknowledged: u64,
    /// Events the broker or the client rejected, with the first error seen.
    pub failed: u64,
    pub first_error: Option<String>,
    /// Acknowledged events per partition.
    pub per_partition: BTreeMap<i32, u64>,
}

/// The key and JSON value of the `n`th synthetic event (0-based).
pub fn synthetic_event(n: u64) -> (String, String) {
    let customer = format!("customer-{}", n % CUSTOMERS);
    let kinds = ["order_created", "order_paid", "order_shipped"];
    let created_at_ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0);
    let value = json!({
        "event_id": n,
        "type": kinds[(n / CUSTOMERS % 3) as usize],
        "customer_id": customer,
        "amount_cents": 100 + (n * 7919) % 99_900,
        "created_at_ms": created_at_ms,
    });
    (customer, value.to_string())
}

/// Produces `count` synthetic events to `topic` and waits for every acknowledgement.
///
/// Returns an error only when the producer cannot be created; failed deliveries are counted in
/// the report. A broker that never answers fails each event after `delivery_timeout`.
pub async fn produce_events(
    brokers: &str,
    topic: &str,
    count: u64,
    delivery_timeout: Duration,
) -> Result<ProduceReport, KafkaError> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("acks", "all")
        .set("message.timeout.ms", delivery_timeout.as_millis().max(1).to_string())
        .create()?;

    // Queue everything first, then wait: the broker acknowledges in batches, so waiting for
    // each event before sending the next would cost a linger per event.
    let mut deliveries = Vec::with_capacity(count as usize);
    for n in 0..count {
        let (key, value) = synthetic_event(n);
        let mut record = FutureRecord::to(topic).key(&key).payload(&value);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    // The local queue is full: let some acknowledgements arrive.
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((error, _)) => {
                    return Err(error);
                }
            }
        }
    }

    let mut report = ProduceReport::default();
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(delivery)) => {
                report.acknowledged += 1;
                *report.per_partition.entry(delivery.partition).or_default() += 1;
            }
            Ok(Err((error, _))) => {
                report.failed += 1;
                report.first_error.get_or_insert_with(|| error.to_string());
            }
            Err(_) => {
                report.failed += 1;
                report.first_error.get_or_insert_with(|| "the producer was dropped".to_owned());
            }
        }
    }
    Ok(report)
}
