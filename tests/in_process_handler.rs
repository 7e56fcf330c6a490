//! A handler written in Rust and plugged into the sidecar directly, without gRPC, gets the
//! same pipeline: ordered commits, pause-eligible retries and non-pausing failures.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kafka_scc::{Handler, HandlerError, Message, Sidecar};
use support::*;
use tonic::Code;

const PARTITIONS: i32 = 2;
const PER_PARTITION: i64 = 5;
/// Fails pause-eligible on its first attempt.
const FLAKY: (i32, i64) = (0, 3);
/// Fails non-pausing on every attempt.
const REJECTED: (i32, i64) = (1, 1);

/// Records every message it is given, with its attempt, and fails the two offsets above.
struct InProcessHandler {
    seen: Arc<Mutex<Vec<(Message, u32)>>>,
}

impl Handler for InProcessHandler {
    async fn handle(&self, message: &Message, attempt: u32) -> Result<(), HandlerError> {
        self.seen.lock().unwrap().push((message.clone(), attempt));
        let at = (message.partition, message.offset);
        if at == FLAKY && attempt == 1 {
            return Err(HandlerError::pause_eligible(Some(Code::Unavailable), "warming up"));
        }
        if at == REJECTED {
            return Err(HandlerError::non_pausing(Some(Code::InvalidArgument), "bad record"));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_handler_runs_end_to_end() {
    init_logs();
    let broker = Broker::start();
    let topic = unique("in-process");
    let group = unique("group");
    broker.create_topic(&topic, PARTITIONS);
    let mut records = Vec::new();
    for partition in 0..PARTITIONS {
        for offset in 0..PER_PARTITION {
            let key = format!("k{offset}");
            let value = format!("p{partition}-v{offset}");
            records.push(TestRecord::new(&topic, partition, Some(key.as_bytes()), value.as_bytes()));
        }
    }
    broker.produce(records).await;

    // The endpoint is required by the configuration but never dialled: no gRPC is involved.
    let config = config(&broker, &topic, &group, "http://127.0.0.1:9", &[]);
    let seen: Arc<Mutex<Vec<(Message, u32)>>> = Arc::default();
    let sidecar = RunningSidecar::spawn(Sidecar::new(config, InProcessHandler { seen: seen.clone() }));
    let done = sidecar
        .stats
        .wait_until(WAIT, |s| (0..PARTITIONS).all(|p| s.committed_offset(&topic, p) == Some(PER_PARTITION)))
        .await;
    assert!(done.is_ok(), "not committed to the end: {done:?}");
    let on_broker = broker.wait_for_committed(&group, &topic, &[PER_PARTITION; PARTITIONS as usize]).await;
    assert!(on_broker.is_ok(), "broker committed offsets: {on_broker:?}");

    let summary = sidecar.shutdown().await;
    let expected_calls = (PARTITIONS as i64 * PER_PARTITION) as u64;
    assert_eq!(summary.stats.succeeded, expected_calls - 1);
    assert_eq!(summary.stats.non_pausing, 1);
    assert_eq!(summary.stats.pause_eligible, 1);
    assert_eq!(summary.stats.gate_closures, 1);

    let mut attempts: BTreeMap<(i32, i64), Vec<u32>> = BTreeMap::new();
    for (message, attempt) in seen.lock().unwrap().iter() {
        let at = format!("{}/{}", message.partition, message.offset);
        assert_eq!(&*message.topic, topic, "{at}");
        let key = format!("k{}", message.offset);
        assert_eq!(message.key.as_deref(), Some(key.as_bytes()), "{at}: key");
        let value = format!("p{}-v{}", message.partition, message.offset);
        assert_eq!(message.value.as_deref(), Some(value.as_bytes()), "{at}: value");
        attempts.entry((message.partition, message.offset)).or_default().push(*attempt);
    }
    assert_eq!(attempts.len(), expected_calls as usize, "every offset reached the handler");
    assert_eq!(attempts.get(&FLAKY), Some(&vec![1, 2]));
    assert_eq!(attempts.get(&REJECTED), Some(&vec![1]));
}
