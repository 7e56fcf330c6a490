//! Every record reaches the handler byte for byte. Null and empty keys and values stay
//! distinct, and header values are raw bytes in record order with duplicates and nulls kept.
//! The request also carries the record's coordinates, timestamp, group and trace context.

mod support;

use std::collections::BTreeSet;

use kafka_scc::Sidecar;
use kafka_scc::proto::{Header, TimestampType};
use support::*;

/// The trace id in `TRACEPARENT` in lowercase, as the handler must receive it.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &[u8] = b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
const TIMESTAMP_MS: i64 = 1_700_000_000_123;
/// Not valid UTF-8: a lone continuation byte, a NUL and a truncated two-byte sequence.
const RAW_BYTES: &[u8] = &[0xff, 0xfe, 0x00, 0x80, 0xc3];

fn record(topic: &str, key: Option<&[u8]>, value: Option<&[u8]>, headers: &[(&str, Option<&[u8]>)]) -> TestRecord {
    TestRecord {
        topic: topic.to_owned(),
        partition: 0,
        key: key.map(<[u8]>::to_vec),
        value: value.map(<[u8]>::to_vec),
        headers: headers.iter().map(|(key, value)| ((*key).to_owned(), value.map(<[u8]>::to_vec))).collect(),
        timestamp_ms: Some(TIMESTAMP_MS),
    }
}

fn is_lowercase_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_byte_exact() {
    init_logs();
    let broker = Broker::start();
    let topic = unique("fidelity");
    let group = unique("group");
    broker.create_topic(&topic, 1);
    let records = vec![
        // Null key, empty value, binary, duplicate, empty and null header values.
        record(
            &topic,
            None,
            Some(b""),
            &[
                ("bin", Some(RAW_BYTES)),
                ("dup", Some(b"first")),
                ("dup", Some(b"second")),
                ("empty", Some(b"")),
                ("null", None),
            ],
        ),
        // Empty key, tombstone, a valid traceparent in upper case.
        record(&topic, Some(b""), None, &[("traceparent", Some(TRACEPARENT))]),
        // Binary key and value, a malformed traceparent.
        record(&topic, Some(RAW_BYTES), Some(RAW_BYTES), &[("traceparent", Some(b"not a trace context"))]),
        // No headers at all.
        record(&topic, Some(b"k"), Some(b"v"), &[]),
    ];
    let count = records.len() as i64;
    broker.produce(records.clone()).await;

    let handler = RecordingHandler::new(|_| async { Ok(()) });
    let server = HandlerServer::start(handler.clone()).await;
    let config = config(&broker, &topic, &group, &server.endpoint(), &[]);
    let sidecar = RunningSidecar::spawn(Sidecar::new(config.clone(), grpc_handler(&config)));
    let done = sidecar.stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(count)).await;
    assert!(done.is_ok(), "not committed to the end: {done:?}");
    sidecar.shutdown().await;
    server.stop().await;

    let mut calls = handler.calls();
    calls.sort_by_key(|call| call.request.offset);
    assert_eq!(calls.len(), records.len());

    for (offset, (call, sent)) in calls.iter().zip(&records).enumerate() {
        let request = &call.request;
        let at = format!("offset {offset}");
        assert_eq!(request.offset, offset as i64, "{at}");
        assert_eq!(request.topic, topic, "{at}");
        assert_eq!(request.partition, 0, "{at}");
        assert_eq!(request.group_id, group, "{at}");
        assert_eq!(request.attempt, 1, "{at}");
        assert_eq!(request.key.as_deref(), sent.key.as_deref(), "{at}: key");
        assert_eq!(request.value.as_deref(), sent.value.as_deref(), "{at}: value");
        let expected_headers: Vec<Header> = sent
            .headers
            .iter()
            .map(|(key, value)| Header { key: key.clone(), value: value.clone().map(Into::into) })
            .collect();
        assert_eq!(request.headers, expected_headers, "{at}: headers");
        assert_eq!(request.timestamp_ms, TIMESTAMP_MS, "{at}");
        assert_eq!(request.timestamp_type(), TimestampType::CreateTime, "{at}");
    }

    // The trace id comes from a valid traceparent header, and is generated otherwise: 32
    // lowercase hex digits, not all zero, a different one per record.
    assert_eq!(calls[1].request.trace_id, TRACE_ID);
    let generated: Vec<&str> = [0, 2, 3].iter().map(|i| calls[*i].request.trace_id.as_str()).collect();
    for trace_id in &generated {
        assert!(is_lowercase_hex(trace_id, 32), "generated trace id {trace_id:?}");
        assert!(trace_id.bytes().any(|b| b != b'0'), "generated trace id is all zeros");
    }
    let distinct: BTreeSet<&str> = generated.iter().copied().chain([TRACE_ID]).collect();
    assert_eq!(distinct.len(), calls.len(), "trace ids repeat: {generated:?}");

    // The `traceparent` request metadata carries the same trace id with a span id of its own.
    for call in &calls {
        let traceparent = call.traceparent.as_deref().expect("traceparent metadata present");
        let fields: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(fields.len(), 4, "{traceparent}");
        assert_eq!(fields[0], "00", "{traceparent}: version");
        assert_eq!(fields[1], call.request.trace_id, "{traceparent}: trace id");
        assert!(is_lowercase_hex(fields[2], 16), "{traceparent}: span id");
        assert_ne!(fields[2], "0000000000000000", "{traceparent}: span id");
        assert!(is_lowercase_hex(fields[3], 2), "{traceparent}: flags");
    }
}
