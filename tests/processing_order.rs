//! The three processing orders. `key` never runs two calls for one key at once and keeps each
//! key's offsets in order, `partition` runs one call per partition at a time, and `unordered`
//! lets calls of one partition overlap. In every order the commits reach the end.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_scc::Sidecar;
use kafka_scc::proto::HandleRequest;
use rand::Rng;
use support::*;
use tokio::sync::Notify;

/// How long a call waits for a second call to be open at the same time. After one call gave
/// up, no call waits any more, and the overlap assertion fails.
const OVERLAP_WAIT: Duration = Duration::from_secs(5);

/// Open calls per group (a key or a partition) and in total, with their maxima and the
/// offsets each group received, in arrival order.
#[derive(Default)]
struct Concurrency {
    state: Mutex<ConcurrencyState>,
    overlapped: Notify,
    gave_up: AtomicBool,
}

#[derive(Default, Clone)]
struct ConcurrencyState {
    open: HashMap<String, usize>,
    max_open: HashMap<String, usize>,
    open_total: usize,
    max_open_total: usize,
    offsets: HashMap<String, Vec<i64>>,
}

impl Concurrency {
    fn enter(&self, group: &str, offset: i64) {
        let mut state = self.state.lock().unwrap();
        let open = state.open.entry(group.to_owned()).or_default();
        *open += 1;
        let open = *open;
        let max = state.max_open.entry(group.to_owned()).or_default();
        *max = (*max).max(open);
        state.open_total += 1;
        state.max_open_total = state.max_open_total.max(state.open_total);
        state.offsets.entry(group.to_owned()).or_default().push(offset);
        if state.max_open_total >= 2 {
            self.overlapped.notify_waiters();
        }
    }

    fn exit(&self, group: &str) {
        let mut state = self.state.lock().unwrap();
        *state.open.get_mut(group).expect("entered before") -= 1;
        state.open_total -= 1;
    }

    /// Waits until two calls have been open at the same time at least once, or
    /// [`OVERLAP_WAIT`] passes.
    async fn wait_for_overlap(&self) {
        let notified = self.overlapped.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.state.lock().unwrap().max_open_total >= 2 || self.gave_up.load(Ordering::Relaxed) {
            return;
        }
        if tokio::time::timeout(OVERLAP_WAIT, notified).await.is_err() {
            self.gave_up.store(true, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> ConcurrencyState {
        self.state.lock().unwrap().clone()
    }
}

/// Creates a handler that tracks concurrency per `group_of(request)`, keeps each call open
/// until calls overlap once, and then sleeps a random 1 to 10 ms so that calls finish out of
/// order.
fn tracking_handler(concurrency: Arc<Concurrency>, group_of: fn(&HandleRequest) -> String) -> RecordingHandler {
    RecordingHandler::new(move |request| {
        let concurrency = concurrency.clone();
        async move {
            let group = group_of(&request);
            concurrency.enter(&group, request.offset);
            concurrency.wait_for_overlap().await;
            let pause = Duration::from_millis(rand::rng().random_range(1..=10));
            tokio::time::sleep(pause).await;
            concurrency.exit(&group);
            Ok(())
        }
    })
}

fn key_of(request: &HandleRequest) -> String {
    String::from_utf8_lossy(request.key.as_deref().unwrap_or_default()).into_owned()
}

fn partition_of(request: &HandleRequest) -> String {
    request.partition.to_string()
}

/// Runs a sidecar with `order` over `records` until every partition's committed offset
/// reaches `expected` (index = partition), on the sidecar and on the broker.
async fn run_until_committed(broker: &Broker, topic: &str, order: &str, handler: RecordingHandler, expected: &[i64]) {
    let group = unique("group");
    let server = HandlerServer::start(handler).await;
    let config = config(broker, topic, &group, &server.endpoint(), &[("SCC_PROCESSING_ORDER", order)]);
    let sidecar = RunningSidecar::spawn(Sidecar::new(config.clone(), grpc_handler(&config)));
    let done = sidecar
        .stats
        .wait_until(WAIT, |s| {
            expected
                .iter()
                .enumerate()
                .all(|(partition, offset)| s.committed_offset(topic, partition as i32) == Some(*offset))
        })
        .await;
    assert!(done.is_ok(), "{order}: not committed to the end: {done:?}");
    let on_broker = broker.wait_for_committed(&group, topic, expected).await;
    assert!(on_broker.is_ok(), "{order}: broker committed offsets: {on_broker:?}");
    let summary = sidecar.shutdown().await;
    assert_eq!(summary.stats.pause_eligible, 0, "{order}: no call may fail");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_serialises_each_key() {
    const KEYS: usize = 4;
    const PER_KEY: usize = 10;

    init_logs();
    let broker = Broker::start();
    let topic = unique("key-order");
    broker.create_topic(&topic, 2);
    // Key kN lives in partition N % 2, as a key-hashing partitioner would place it, and the
    // keys of one partition interleave.
    let mut expected_offsets: HashMap<String, Vec<i64>> = HashMap::new();
    let mut next_offset = [0i64; 2];
    let mut records = Vec::new();
    for i in 0..KEYS * PER_KEY {
        let key = format!("k{}", i % KEYS);
        let partition = (i % KEYS % 2) as i32;
        records.push(TestRecord::new(&topic, partition, Some(key.as_bytes()), format!("v{i}").as_bytes()));
        expected_offsets.entry(key).or_default().push(next_offset[partition as usize]);
        next_offset[partition as usize] += 1;
    }
    broker.produce(records).await;

    let concurrency = Arc::new(Concurrency::default());
    let handler = tracking_handler(concurrency.clone(), key_of);
    run_until_committed(&broker, &topic, "key", handler, &next_offset).await;

    let state = concurrency.snapshot();
    for (key, expected) in &expected_offsets {
        assert_eq!(state.max_open.get(key), Some(&1), "key {key} had concurrent calls");
        assert_eq!(state.offsets.get(key), Some(expected), "key {key} offsets out of order");
    }
    assert!(state.max_open_total >= 2, "different keys never ran concurrently");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_order_serialises_each_partition() {
    const PER_PARTITION: usize = 10;

    init_logs();
    let broker = Broker::start();
    let topic = unique("partition-order");
    broker.create_topic(&topic, 2);
    // Distinct keys, which key order would run concurrently.
    let mut records = Vec::new();
    for partition in 0..2 {
        for i in 0..PER_PARTITION {
            let key = format!("p{partition}-k{i}");
            records.push(TestRecord::new(&topic, partition, Some(key.as_bytes()), b"v"));
        }
    }
    broker.produce(records).await;

    let concurrency = Arc::new(Concurrency::default());
    let handler = tracking_handler(concurrency.clone(), partition_of);
    let end = PER_PARTITION as i64;
    run_until_committed(&broker, &topic, "partition", handler, &[end, end]).await;

    let state = concurrency.snapshot();
    for partition in ["0", "1"] {
        assert_eq!(state.max_open.get(partition), Some(&1), "partition {partition} had concurrent calls");
        assert_eq!(
            state.offsets.get(partition),
            Some(&(0..end).collect::<Vec<_>>()),
            "partition {partition} offsets out of order"
        );
    }
    assert!(state.max_open_total >= 2, "the two partitions never ran concurrently");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unordered_calls_overlap_in_partition() {
    const COUNT: usize = 10;

    init_logs();
    let broker = Broker::start();
    let topic = unique("unordered");
    broker.create_topic(&topic, 1);
    // One key, which key order would run one at a time.
    broker.produce(keyed_records(&topic, 0, COUNT, 1)).await;

    let concurrency = Arc::new(Concurrency::default());
    let handler = tracking_handler(concurrency.clone(), partition_of);
    run_until_committed(&broker, &topic, "unordered", handler, &[COUNT as i64]).await;

    let state = concurrency.snapshot();
    assert!(
        state.max_open.get("0").is_some_and(|max| *max >= 2),
        "calls of one partition never overlapped: {:?}",
        state.max_open
    );
    let mut offsets = state.offsets.get("0").cloned().unwrap_or_default();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..COUNT as i64).collect::<Vec<_>>(), "every offset handled once");
}
