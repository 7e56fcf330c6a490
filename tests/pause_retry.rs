//! Pause-eligible failures: the gate closes, the failed message is retried from memory with
//! exponential backoff and full jitter, nothing past it is committed until it succeeds, and
//! the gate opens again.

mod support;

use std::sync::Arc;
use std::time::Duration;

use kafka_scc::backoff::Backoff;
use kafka_scc::handler::DEFAULT_PAUSE_CODES;
use kafka_scc::message::TimestampType;
use kafka_scc::{GrpcHandler, Handler, Message, Sidecar};
use support::*;
use tokio::sync::Notify;
use tonic::Status;

/// Timer slack allowed below an expected backoff delay; tokio timers never fire early, so
/// this only absorbs clock reads on both sides of the gap.
const TIMER_TOLERANCE: Duration = Duration::from_millis(5);

/// Finds the first seed whose delays for probes `1..=probes` each exceed half their ceiling,
/// so that the seeded delays grow from one probe to the next while the ceiling doubles.
fn growing_seed(base: Duration, max: Duration, probes: u32) -> u64 {
    (0..10_000)
        .find(|seed| {
            let mut backoff = Backoff::with_seed(base, max, *seed);
            (1..=probes).all(|probe| backoff.delay(probe) > backoff.ceiling(probe) / 2)
        })
        .expect("a seed with growing delays exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_closes_gate_and_retries() {
    const FAILING_OFFSET: i64 = 2;
    const FAILURES: u32 = 4;
    const COUNT: i64 = 5;
    let base = Duration::from_millis(60);
    let max = Duration::from_millis(800);

    init_logs();
    let broker = Broker::start();
    let topic = unique("unavailable");
    let group = unique("group");
    broker.create_topic(&topic, 1);
    broker.produce(keyed_records(&topic, 0, COUNT as usize, 5)).await;

    // The last failing attempt is held until the test has looked at the sidecar, so at least
    // one observation is certain to fall inside the failure.
    let observed = Arc::new(Notify::new());
    let handler = {
        let observed = observed.clone();
        RecordingHandler::new(move |request| {
            let observed = observed.clone();
            async move {
                if request.offset != FAILING_OFFSET || request.attempt > FAILURES {
                    return Ok(());
                }
                if request.attempt == FAILURES {
                    observed.notified().await;
                }
                Err(Status::unavailable("dependency down"))
            }
        })
    };
    let server = HandlerServer::start(handler.clone()).await;
    let config = config(&broker, &topic, &group, &server.endpoint(), &[("SCC_PROCESSING_ORDER", "unordered")]);
    let seed = growing_seed(base, max, FAILURES);
    let sidecar = Sidecar::new(config.clone(), grpc_handler(&config)).with_backoff(Backoff::with_seed(base, max, seed));
    let sidecar = RunningSidecar::spawn(sidecar);
    let stats = sidecar.stats.clone();

    let closed = stats.wait_until(WAIT, |s| s.gate_closures == 1).await;
    assert!(closed.is_ok(), "the gate never closed: {closed:?}");

    // Sample while the message fails. A sample counts only when the succeeding attempt had
    // not arrived by the time it was read. The gate is known to be closed once a probe arrived.
    let mut samples = 0;
    loop {
        let attempts_before = handler.calls_for(0, FAILING_OFFSET).len();
        let on_broker = broker.committed_async(&group, &topic, 1).await;
        let snapshot = stats.snapshot();
        let attempts_after = handler.calls_for(0, FAILING_OFFSET).len();
        if attempts_after >= FAILURES as usize {
            break;
        }
        samples += 1;
        let broker_offset = on_broker.get(&0).copied().flatten();
        assert!(
            broker_offset.is_none_or(|offset| offset <= FAILING_OFFSET),
            "broker committed past the failing offset: {broker_offset:?}"
        );
        let own_offset = snapshot.committed_offset(&topic, 0);
        assert!(
            own_offset.is_none_or(|offset| offset <= FAILING_OFFSET),
            "sidecar committed past the failing offset: {own_offset:?}"
        );
        if attempts_before >= 2 {
            assert!(!snapshot.gate_open, "gate open while probes fail");
        }
    }

    // The last failing attempt is being held: the gate is closed and the offsets before the
    // failing one, but none after it, are committed.
    let last_failure = stats
        .wait_until(WAIT, |s| s.committed_offset(&topic, 0).is_some_and(|offset| offset >= FAILING_OFFSET))
        .await
        .expect("offsets before the failing one are committed");
    assert_eq!(last_failure.committed_offset(&topic, 0), Some(FAILING_OFFSET));
    assert!(!last_failure.gate_open, "gate open while the last failing attempt runs");
    assert_eq!(last_failure.succeeded, (COUNT - 1) as u64);
    let on_broker = broker.committed_async(&group, &topic, 1).await;
    assert_eq!(on_broker.get(&0).copied().flatten(), Some(FAILING_OFFSET));
    observed.notify_one();

    let done = stats.wait_until(WAIT, |s| s.gate_open && s.committed_offset(&topic, 0) == Some(COUNT)).await;
    assert!(done.is_ok(), "gate did not reopen with all committed: {done:?}");
    let on_broker = broker.wait_for_committed(&group, &topic, &[COUNT]).await;
    assert!(on_broker.is_ok(), "broker committed offsets: {on_broker:?}");

    let calls = handler.calls_for(0, FAILING_OFFSET);
    let attempts: Vec<u32> = calls.iter().map(|call| call.request.attempt).collect();
    assert_eq!(attempts, (1..=FAILURES + 1).collect::<Vec<_>>());

    // Probe n waits the n-th seeded delay after attempt n failed, so the gap between the
    // arrivals of attempts n and n+1 is at least that delay.
    let mut expected = Backoff::with_seed(base, max, seed);
    for (probe, pair) in (1..=FAILURES).zip(calls.windows(2)) {
        let gap = pair[1].received_at - pair[0].received_at;
        let delay = expected.delay(probe);
        assert!(
            gap + TIMER_TOLERANCE >= delay,
            "probe {probe}: gap {gap:?} is shorter than the backoff delay {delay:?}"
        );
    }

    let summary = sidecar.shutdown().await;
    assert!(samples > 0, "no sample was taken while the message failed");
    assert_eq!(summary.stats.pause_eligible, u64::from(FAILURES));
    assert_eq!(summary.stats.gate_closures, 1);
    assert_eq!(summary.stats.succeeded, COUNT as u64);
    assert_eq!(summary.stats.non_pausing, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_timeout_is_retried() {
    const SLOW_OFFSET: i64 = 1;
    const COUNT: i64 = 3;
    let timeout = Duration::from_millis(200);

    init_logs();
    let broker = Broker::start();
    let topic = unique("deadline");
    let group = unique("group");
    broker.create_topic(&topic, 1);
    broker.produce(keyed_records(&topic, 0, COUNT as usize, 1)).await;

    let handler = RecordingHandler::new(move |request| async move {
        if request.offset == SLOW_OFFSET && request.attempt == 1 {
            tokio::time::sleep(timeout * 3).await;
        }
        Ok(())
    });
    let server = HandlerServer::start(handler.clone()).await;
    let timeout_ms = timeout.as_millis().to_string();
    let config =
        config(&broker, &topic, &group, &server.endpoint(), &[("SCC_HANDLER_TIMEOUT_MS", timeout_ms.as_str())]);
    let sidecar = RunningSidecar::spawn(Sidecar::new(config.clone(), grpc_handler(&config)));
    let stats = sidecar.stats.clone();

    let done = stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(COUNT)).await;
    assert!(done.is_ok(), "not committed to the end: {done:?}");
    let on_broker = broker.wait_for_committed(&group, &topic, &[COUNT]).await;
    assert!(on_broker.is_ok(), "broker committed offsets: {on_broker:?}");

    let calls = handler.calls_for(0, SLOW_OFFSET);
    let attempts: Vec<u32> = calls.iter().map(|call| call.request.attempt).collect();
    assert_eq!(attempts, vec![1, 2]);
    let gap = calls[1].received_at - calls[0].received_at;
    assert!(gap + TIMER_TOLERANCE >= timeout, "retried after {gap:?}, before the {timeout:?} timeout");

    let summary = sidecar.shutdown().await;
    assert_eq!(summary.stats.pause_eligible, 1);
    assert_eq!(summary.stats.gate_closures, 1);
    assert_eq!(summary.stats.non_pausing, 0);
    assert_eq!(summary.stats.succeeded, COUNT as u64);
    server.stop().await;
}

/// A tonic handler server enforces the `grpc-timeout` deadline that kafka-scc sends, and
/// responds with CANCELLED when it expires, at about the moment kafka-scc's own timer fires.
/// Whichever of the two comes first, the call must count as kafka-scc's own timeout, which is
/// pause-eligible. The server's response wins the race only now and then, so the test makes
/// many calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_deadline_response_is_pause_eligible() {
    const ROUNDS: usize = 100;
    const CONCURRENT_CALLS: usize = 8;
    let timeout = Duration::from_millis(20);

    init_logs();
    let handler = RecordingHandler::new(move |_| async move {
        tokio::time::sleep(timeout * 5).await;
        Ok(())
    });
    let server = HandlerServer::start(handler).await;
    let grpc =
        GrpcHandler::connect_lazy(&server.endpoint(), "group", timeout, DEFAULT_PAUSE_CODES.iter().copied().collect())
            .expect("valid endpoint");
    let message = Message {
        topic: "deadline".into(),
        partition: 0,
        offset: 0,
        key: None,
        value: None,
        headers: Vec::new(),
        timestamp_ms: 0,
        timestamp_type: TimestampType::CreateTime,
        trace_id: "0af7651916cd43dd8448eb211c80319c".to_owned(),
    };

    let mut non_pausing = Vec::new();
    for _ in 0..ROUNDS {
        let calls = (0..CONCURRENT_CALLS).map(|_| grpc.handle(&message, 1));
        for result in futures_util::future::join_all(calls).await {
            match result {
                Err(error) if !error.is_pause_eligible() => non_pausing.push(error.to_string()),
                _ => {}
            }
        }
    }
    assert!(non_pausing.is_empty(), "timed-out calls classified non-pausing: {non_pausing:?}");
    server.stop().await;
}
