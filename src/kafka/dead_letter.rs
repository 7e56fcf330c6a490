//! The dead-letter producer: writes a message that the handler rejected for good to the
//! dead-letter topic, with its original key, value and headers, plus headers that name where
//! the message came from and why it was rejected.
//!
//! Contract: [`DeadLetterProducer::send`] returns `Ok` only once the broker has acknowledged the
//! record (`acks=all`), so the caller may then commit the source offset.
//! A failure or a timeout is returned as an error. The pipeline then retries the send like a
//! pause-eligible failure, and the source offset stays uncommitted until it succeeds.

use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::{FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use super::client_logs::ClientLogs;
use crate::config::Config;
use crate::handler::HandlerError;
use crate::message::{Message, TimestampType};

/// Header: the topic the message was consumed from.
pub const HEADER_SOURCE_TOPIC: &str = "scc.source.topic";
/// Header: its partition, in decimal.
pub const HEADER_SOURCE_PARTITION: &str = "scc.source.partition";
/// Header: its offset, in decimal.
pub const HEADER_SOURCE_OFFSET: &str = "scc.source.offset";
/// Header: its timestamp in milliseconds since the Unix epoch, in decimal; 0 when it had none.
pub const HEADER_SOURCE_TIMESTAMP: &str = "scc.source.timestamp";
/// Header: what its timestamp means: `create_time`, `log_append_time` or `none`.
pub const HEADER_SOURCE_TIMESTAMP_TYPE: &str = "scc.source.timestamp.type";
/// Header: the consumer group that consumed it.
pub const HEADER_CONSUMER_GROUP: &str = "scc.consumer.group";
/// Header: the gRPC code name of the rejection, such as `INVALID_ARGUMENT`; `NONE` when the
/// failure had no code.
pub const HEADER_ERROR_CODE: &str = "scc.error.grpc.code";
/// Header: the rejection's message, as the handler sent it.
pub const HEADER_ERROR_MESSAGE: &str = "scc.error.message";
/// Header: the trace id that kafka-scc's logs about the message carry.
pub const HEADER_TRACE_ID: &str = "scc.trace.id";

/// Extra time allowed beyond librdkafka's own delivery timeout before a send is given up on,
/// so that a lost delivery report cannot hold a message for ever.
const DELIVERY_REPORT_SLACK: Duration = Duration::from_secs(5);

/// Produces rejected messages to the dead-letter topic.
pub struct DeadLetterProducer {
    producer: FutureProducer<DeadLetterContext>,
    topic: String,
    group_id: String,
    timeout: Duration,
}

impl std::fmt::Debug for DeadLetterProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterProducer").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl DeadLetterProducer {
    /// Creates the producer when `SCC_DLQ_TOPIC` is set; `Ok(None)` when it is not. Nothing is
    /// sent until the first rejected message.
    pub fn from_config(config: &Config) -> Result<Option<DeadLetterProducer>, KafkaError> {
        let Some(topic) = &config.dead_letter_topic else {
            return Ok(None);
        };
        let context = DeadLetterContext { logs: ClientLogs::new(config.kafka_properties.secret_values()) };
        let producer = FutureProducer::from_config_and_context(&config.dead_letter_producer_config(), context)?;
        Ok(Some(DeadLetterProducer {
            producer,
            topic: topic.clone(),
            group_id: config.group_id.clone(),
            timeout: config.dead_letter_timeout,
        }))
    }

    /// Returns the dead-letter topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces `message` with the reason it was rejected and waits for the broker's
    /// acknowledgement; see the module's contract.
    pub async fn send(&self, message: &Message, rejection: &HandlerError) -> Result<(), KafkaError> {
        let headers = dead_letter_headers(message, rejection, &self.group_id);
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key.as_ref());
        }
        if let Some(value) = &message.value {
            record = record.payload(value.as_ref());
        }

        // A full local queue waits up to the same bound as the delivery itself.
        let delivery = self.producer.send(record, Timeout::After(self.timeout));
        match tokio::time::timeout(self.timeout + DELIVERY_REPORT_SLACK, delivery).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((error, _))) => Err(error),
            Err(_) => Err(KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageTimedOut)),
        }
    }
}

/// Builds the dead-letter record's headers: the original ones in their order, then kafka-scc's.
fn dead_letter_headers(message: &Message, rejection: &HandlerError, group_id: &str) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 9);
    for header in &message.headers {
        headers = headers.insert(Header { key: &header.key, value: header.value.as_deref() });
    }
    let timestamp_type = match message.timestamp_type {
        TimestampType::NotAvailable => "none",
        TimestampType::CreateTime => "create_time",
        TimestampType::LogAppendTime => "log_append_time",
    };
    let ours: [(&str, String); 9] = [
        (HEADER_SOURCE_TOPIC, message.topic.to_string()),
        (HEADER_SOURCE_PARTITION, message.partition.to_string()),
        (HEADER_SOURCE_OFFSET, message.offset.to_string()),
        (HEADER_SOURCE_TIMESTAMP, message.timestamp_ms.to_string()),
        (HEADER_SOURCE_TIMESTAMP_TYPE, timestamp_type.to_owned()),
        (HEADER_CONSUMER_GROUP, group_id.to_owned()),
        (HEADER_ERROR_CODE, rejection.code_name().to_owned()),
        (HEADER_ERROR_MESSAGE, rejection.message.clone()),
        (HEADER_TRACE_ID, message.trace_id.clone()),
    ];
    for (key, value) in &ours {
        headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
    }
    headers
}

/// Routes the producer's librdkafka output into tracing, like the consumer's.
struct DeadLetterContext {
    logs: ClientLogs,
}

impl ClientContext for DeadLetterContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        // `KAFKA_CFG_*` contains consumer settings too. The producer ignores them, as it should,
        // so librdkafka's warning about each one is noise here.
        let level = if facility == "CONFWARN" && message.contains("is a consumer property") {
            RDKafkaLogLevel::Debug
        } else {
            level
        };
        self.logs.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logs.error("dead-letter producer", error, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Header as MessageHeader;
    use rdkafka::message::Headers;

    #[test]
    fn headers_append_origin_after_originals() {
        let message = Message {
            topic: "payments".into(),
            partition: 3,
            offset: 42,
            key: None,
            value: None,
            headers: vec![
                MessageHeader { key: "a".into(), value: Some("1".into()) },
                MessageHeader { key: "a".into(), value: None },
            ],
            timestamp_ms: 1_700_000_000_123,
            timestamp_type: TimestampType::CreateTime,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        };
        let rejection = HandlerError::non_pausing(Some(tonic::Code::InvalidArgument), "amount is negative");
        let headers = dead_letter_headers(&message, &rejection, "fraud");

        let pairs: Vec<(String, Option<String>)> = headers
            .iter()
            .map(|header| {
                (header.key.to_owned(), header.value.map(|value| String::from_utf8_lossy(value).into_owned()))
            })
            .collect();
        let expected: Vec<(String, Option<String>)> = [
            ("a", Some("1")),
            ("a", None),
            (HEADER_SOURCE_TOPIC, Some("payments")),
            (HEADER_SOURCE_PARTITION, Some("3")),
            (HEADER_SOURCE_OFFSET, Some("42")),
            (HEADER_SOURCE_TIMESTAMP, Some("1700000000123")),
            (HEADER_SOURCE_TIMESTAMP_TYPE, Some("create_time")),
            (HEADER_CONSUMER_GROUP, Some("fraud")),
            (HEADER_ERROR_CODE, Some("INVALID_ARGUMENT")),
            (HEADER_ERROR_MESSAGE, Some("amount is negative")),
            (HEADER_TRACE_ID, Some("0af7651916cd43dd8448eb211c80319c")),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.map(str::to_owned)))
        .collect();
        assert_eq!(pairs, expected);
    }
}
