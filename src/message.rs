//! The owned message: one Kafka record copied out of librdkafka's buffers, with the trace id
//! that every log line and handler call about it carries.
//!
//! A message is immutable once built and shared by `Arc`, so that a retry re-sends exactly the
//! bytes that were fetched without asking the broker for them again.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use rand::Rng;
use rdkafka::message::{BorrowedMessage, Headers, Message as _};

/// The source of the record's timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    NotAvailable,
    /// Set by the producer.
    CreateTime,
    /// Set by the broker when it appended the record.
    LogAppendTime,
}

/// One record header; duplicates and their order are kept as in the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    /// `None` for a null header value.
    pub value: Option<Bytes>,
}

/// A topic and partition; cheap to clone because the topic name is shared.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> TopicPartition {
        TopicPartition { topic: topic.into(), partition }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// A fetched Kafka record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// `None` for a null key, distinct from an empty key.
    pub key: Option<Bytes>,
    /// `None` for a tombstone, distinct from an empty value.
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
    /// Milliseconds since the Unix epoch; 0 when the record has no timestamp.
    pub timestamp_ms: i64,
    pub timestamp_type: TimestampType,
    /// W3C trace id: 32 lowercase hex digits.
    pub trace_id: String,
}

impl Message {
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition { topic: self.topic.clone(), partition: self.partition }
    }

    /// Copies a record out of librdkafka's buffer; `topic` is the record's topic name, passed
    /// in so that callers can share one allocation per topic.
    pub fn from_kafka(record: &BorrowedMessage<'_>, topic: Arc<str>) -> Message {
        let headers: Vec<Header> = record
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| Header {
                        key: header.key.to_owned(),
                        value: header.value.map(Bytes::copy_from_slice),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (timestamp_ms, timestamp_type) = match record.timestamp() {
            rdkafka::Timestamp::NotAvailable => (0, TimestampType::NotAvailable),
            rdkafka::Timestamp::CreateTime(ms) => (ms, TimestampType::CreateTime),
            rdkafka::Timestamp::LogAppendTime(ms) => (ms, TimestampType::LogAppendTime),
        };
        let trace_id = trace_id_from_headers(&headers).unwrap_or_else(new_trace_id);

        Message {
            topic,
            partition: record.partition(),
            offset: record.offset(),
            key: record.key().map(Bytes::copy_from_slice),
            value: record.payload().map(Bytes::copy_from_slice),
            headers,
            timestamp_ms,
            timestamp_type,
            trace_id,
        }
    }
}

/// Takes the trace id from the first `traceparent` header that contains a valid W3C trace context.
pub fn trace_id_from_headers(headers: &[Header]) -> Option<String> {
    headers
        .iter()
        .filter(|header| header.key.eq_ignore_ascii_case("traceparent"))
        .filter_map(|header| header.value.as_deref())
        .find_map(|value| std::str::from_utf8(value).ok().and_then(parse_traceparent))
}

/// Parses a W3C `traceparent` value (`version-traceid-parentid-flags`) and returns its trace id,
/// or `None` when the value is malformed or the trace id is all zeros.
pub fn parse_traceparent(value: &str) -> Option<String> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent_id = parts.next()?;
    let flags = parts.next()?;
    let is_hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = is_hex(version, 2)
        && version != "ff"
        && is_hex(trace_id, 32)
        && is_hex(parent_id, 16)
        && is_hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0');
    // Version 00 has exactly four fields; later versions may append more.
    if !valid || (version == "00" && parts.next().is_some()) {
        return None;
    }
    Some(trace_id.to_ascii_lowercase())
}

/// Generates a random W3C trace id.
pub fn new_trace_id() -> String {
    let id: u128 = rand::rng().random_range(1..=u128::MAX);
    format!("{id:032x}")
}

/// Formats a `traceparent` value for the trace id, with a new random span id and the sampled
/// flag cleared.
pub fn traceparent_for(trace_id: &str) -> String {
    let span: u64 = rand::rng().random_range(1..=u64::MAX);
    format!("00-{trace_id}-{span:016x}-00")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_valid_value_yields_trace_id() {
        let id = parse_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01");
        assert_eq!(id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn traceparent_malformed_values_are_rejected() {
        for value in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(parse_traceparent(value), None, "{value}");
        }
    }

    #[test]
    fn trace_id_prefers_first_valid_header() {
        let headers = vec![
            Header { key: "traceparent".into(), value: Some(Bytes::from_static(b"garbage")) },
            Header {
                key: "traceparent".into(),
                value: Some(Bytes::from_static(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")),
            },
        ];
        assert_eq!(trace_id_from_headers(&headers).as_deref(), Some("0af7651916cd43dd8448eb211c80319c"));
    }

    #[test]
    fn generated_trace_id_is_valid() {
        let id = new_trace_id();
        let parent = traceparent_for(&id);
        assert_eq!(parse_traceparent(&parent), Some(id));
    }
}
