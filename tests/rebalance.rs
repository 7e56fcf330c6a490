//! Consumer group behaviour on librdkafka's mock cluster. The tests cover members joining and
//! leaving while messages flow, and the revocation of a partition whose message waits for a
//! retry or is still being handled. They also cover assignments that arrive while the gate is
//! closed, retry backoff longer than `max.poll.interval.ms`, and static membership.

mod cluster;
mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster::*;
use kafka_scc::backoff::Backoff;
use kafka_scc::{Sidecar, TopicPartition};
use support::*;
use tokio::sync::Notify;
use tonic::Status;

/// Partitions of the topic in the join and leave tests, so two members get four each.
const PARTITIONS: i32 = 8;

/// One record every 20 ms, spread over all partitions: about 50 records a second in total.
const PRODUCE_INTERVAL: Duration = Duration::from_millis(20);

/// Simulated work per handler call, so that revocations find calls in flight.
const HANDLER_WORK: Duration = Duration::from_millis(3);

fn all_partitions(topic: &str) -> BTreeSet<TopicPartition> {
    (0..PARTITIONS).map(|partition| TopicPartition::new(topic, partition)).collect()
}

/// How a join-and-leave run differs from the defaults.
#[derive(Default)]
struct Variant<'a> {
    /// Records produced over all partitions before the first sidecar starts.
    backlog: usize,
    vars: &'a [(&'a str, &'a str)],
}

/// Runs `cycles` rounds of a second sidecar joining and leaving a group whose first sidecar
/// stays, while a producer keeps messages flowing, and checks that nothing was lost.
async fn join_and_leave(strategy: &str, cycles: usize, variant: Variant<'_>) {
    init_logs();
    let started = Instant::now();
    let broker = Broker::start();
    let topic = unique("rebalance");
    let group = unique("group");
    broker.create_topic(&topic, PARTITIONS);
    let backlog = (0..variant.backlog)
        .map(|n| TestRecord::new(&topic, n as i32 % PARTITIONS, None, format!("backlog-{n}").as_bytes()));
    broker.produce(backlog.collect()).await;
    let recorder = OffsetRecorder::succeeding(HANDLER_WORK);
    let mut vars = with_fast_group(&[("KAFKA_CFG_PARTITION_ASSIGNMENT_STRATEGY", strategy)]);
    vars.extend_from_slice(variant.vars);
    // The in-process handler never connects to this endpoint.
    let config = config(&broker, &topic, &group, "http://127.0.0.1:1", &vars);

    let first = RunningSidecar::spawn(Sidecar::new(config.clone(), recorder.clone()));
    let assigned = first.stats.wait_until(WAIT, |s| s.assigned.len() == PARTITIONS as usize).await;
    assert!(assigned.is_ok(), "the first sidecar never got every partition: {assigned:?}");
    let producer = BackgroundProducer::start(&broker, &topic, PARTITIONS, PRODUCE_INTERVAL);

    let everything = all_partitions(&topic);
    for cycle in 0..cycles {
        let cycle_started = Instant::now();
        let second = RunningSidecar::spawn(Sidecar::new(config.clone(), recorder.clone()));
        let split = eventually(WAIT, || {
            let first = first.stats.snapshot().assigned;
            let second = second.stats.snapshot().assigned;
            !first.is_empty()
                && !second.is_empty()
                && first.is_disjoint(&second)
                && first.union(&second).cloned().collect::<BTreeSet<_>>() == everything
        })
        .await;
        assert!(split, "cycle {cycle}: the partitions were never split between the two sidecars");
        let consumed = second.stats.wait_until(WAIT, |s| s.handled() > 0).await;
        assert!(consumed.is_ok(), "cycle {cycle}: the second sidecar handled nothing: {consumed:?}");
        let joined_after = cycle_started.elapsed();

        let handled_before_leave = first.stats.snapshot().handled();
        let summary = second.shutdown().await;
        assert!(summary.consumer_closed, "cycle {cycle}: the second sidecar's consumer did not close");
        let regained =
            first.stats.wait_until(WAIT, |s| s.assigned == everything && s.handled() > handled_before_leave).await;
        assert!(regained.is_ok(), "cycle {cycle}: the first sidecar never took every partition back: {regained:?}");
        eprintln!(
            "cycle {cycle}: joined after {} ms, whole cycle {} ms",
            joined_after.as_millis(),
            cycle_started.elapsed().as_millis()
        );
    }

    let delivered = producer.stop().await;
    let end = end_offsets(&broker, &topic, PARTITIONS).await;
    assert_eq!(
        end.iter().sum::<i64>(),
        (variant.backlog + delivered.len()) as i64,
        "end offsets disagree with the records delivered"
    );
    let all_handled = recorder.wait_for_all(WAIT, &end).await;
    assert!(all_handled.is_ok(), "offsets never handled: {all_handled:?}");
    let committed = broker.wait_for_committed(&group, &topic, &end).await;
    assert!(committed.is_ok(), "committed offsets never reached the end offsets {end:?}: {committed:?}");
    // Commits fail while the group rebalances; once it is stable they must succeed again.
    let healthy = first.stats.wait_until(WAIT, |s| s.commits_healthy).await;
    assert!(healthy.is_ok(), "commits stayed unhealthy after the rebalances: {healthy:?}");

    let summary = first.shutdown().await;
    assert!(summary.consumer_closed, "the first sidecar's consumer did not close");
    assert_eq!(summary.stats.fatal_error, None, "fatal consumer error");
    let committed = broker.committed_async(&group, &topic, PARTITIONS).await;
    let expected: Vec<Option<i64>> = end.iter().copied().map(Some).collect();
    assert_eq!(committed.into_values().collect::<Vec<_>>(), expected, "committed offsets after shutdown");
    let calls = recorder.calls().len();
    eprintln!(
        "{strategy}: {cycles} cycles, {} records, {calls} handler calls, {} ms",
        delivered.len(),
        started.elapsed().as_millis()
    );
}

/// Range assignment is eager: every rebalance revokes all partitions of both members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_join_leave_loses_nothing() {
    join_and_leave("range", 10, Variant::default()).await;
}

/// With a buffer of two records per partition and a backlog, the poll thread keeps most
/// records back in librdkafka's queues while partitions move between the members. None may be
/// lost or skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffers_lose_nothing_across_rebalances() {
    let vars = [("SCC_PARTITION_BUFFER", "2"), ("SCC_MAX_IN_FLIGHT", "4")];
    join_and_leave("range", 3, Variant { backlog: 4_000, vars: &vars }).await;
}

/// Cooperative rebalancing moves only the partitions that change owner. A join takes two
/// rebalances, so one cycle took about 9 s on the mock cluster, and three cycles are run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_join_leave_loses_nothing() {
    join_and_leave("cooperative-sticky", 3, Variant::default()).await;
}

/// A message waiting for a retry when its partition is revoked is dropped by the old owner,
/// never committed past, and handled by the new owner. Static members are ordered by
/// `group.instance.id` in librdkafka's range assignor, so with two partitions the member whose
/// id sorts first, the joining one, gets partition 0 with the failing message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_retry_goes_to_new_owner() {
    const FAILING_OFFSET: i64 = 2;
    const COUNT: i64 = 5;

    init_logs();
    let broker = Broker::start();
    let topic = unique("revoked-retry");
    let group = unique("group");
    broker.create_topic(&topic, 2);
    let mut records = keyed_records(&topic, 0, COUNT as usize, 5);
    records.extend(keyed_records(&topic, 1, COUNT as usize, 5));
    broker.produce(records).await;

    let failing = RecordingHandler::new(|request| async move {
        if request.partition == 0 && request.offset == FAILING_OFFSET {
            return Err(Status::unavailable("dependency down"));
        }
        Ok(())
    });
    let failing_server = HandlerServer::start(failing.clone()).await;
    let first_vars = with_fast_group(&[("KAFKA_CFG_GROUP_INSTANCE_ID", "member-b")]);
    let first_config = config(&broker, &topic, &group, &failing_server.endpoint(), &first_vars);
    let first = RunningSidecar::spawn(Sidecar::new(first_config.clone(), grpc_handler(&first_config)));

    let retrying = first.stats.wait_until(WAIT, |s| !s.gate_open && s.pause_eligible >= 2).await;
    assert!(retrying.is_ok(), "the failing message was never retried: {retrying:?}");

    let healthy = RecordingHandler::new(|_| async { Ok(()) });
    let healthy_server = HandlerServer::start(healthy.clone()).await;
    let second_vars = with_fast_group(&[("KAFKA_CFG_GROUP_INSTANCE_ID", "member-a")]);
    let second_config = config(&broker, &topic, &group, &healthy_server.endpoint(), &second_vars);
    let second = RunningSidecar::spawn(Sidecar::new(second_config.clone(), grpc_handler(&second_config)));

    let moved = second.stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(COUNT)).await;
    assert!(moved.is_ok(), "the new owner never committed partition 0: {moved:?}");
    let first_assigned = first.stats.snapshot().assigned;
    assert!(
        !first_assigned.contains(&TopicPartition::new(topic.as_str(), 0)),
        "the failing partition is still assigned to the first sidecar: {first_assigned:?}"
    );
    let reopened = first.stats.wait_until(WAIT, |s| s.gate_open).await;
    assert!(reopened.is_ok(), "the first sidecar's gate stayed closed after losing the failing message: {reopened:?}");
    let committed = broker.wait_for_committed(&group, &topic, &[COUNT, COUNT]).await;
    assert!(committed.is_ok(), "committed offsets never reached the end: {committed:?}");

    let first_summary = first.shutdown().await;
    let second_summary = second.shutdown().await;
    let first_committed = first_summary.stats.committed_offset(&topic, 0);
    assert!(
        first_committed.is_none_or(|offset| offset <= FAILING_OFFSET),
        "the first sidecar committed past its failing message: {first_committed:?}"
    );
    let new_owner_calls = healthy.calls_for(0, FAILING_OFFSET);
    assert_eq!(new_owner_calls.len(), 1, "calls for the failing offset at the new owner");
    assert_eq!(new_owner_calls[0].request.attempt, 1, "the new owner's first delivery");
    assert_eq!(second_summary.stats.pause_eligible, 0, "failures at the new owner");
    failing_server.stop().await;
    healthy_server.stop().await;
}

/// A call still running when its partition's revocation times out is abandoned: the new owner
/// handles the message again, and the old owner's late result is discarded, neither committed
/// nor counted. The joining member's instance id sorts first, so it gets partition 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_result_after_revocation_discarded() {
    const HELD_OFFSET: i64 = 2;
    const COUNT: i64 = 5;

    init_logs();
    let broker = Broker::start();
    let topic = unique("late-result");
    let group = unique("group");
    broker.create_topic(&topic, 2);
    let mut records = keyed_records(&topic, 0, COUNT as usize, 5);
    records.extend(keyed_records(&topic, 1, COUNT as usize, 5));
    broker.produce(records).await;

    let release = Arc::new(Notify::new());
    let holding = {
        let release = release.clone();
        RecordingHandler::new(move |request| {
            let release = release.clone();
            async move {
                if request.partition == 0 && request.offset == HELD_OFFSET {
                    release.notified().await;
                }
                Ok(())
            }
        })
    };
    let holding_server = HandlerServer::start(holding.clone()).await;
    // Partition order keeps the messages behind the held one queued, so only the held call is
    // in flight when the revocation times out.
    let first_vars = with_fast_group(&[
        ("KAFKA_CFG_GROUP_INSTANCE_ID", "member-b"),
        ("SCC_PROCESSING_ORDER", "partition"),
        ("SCC_REVOKE_TIMEOUT_MS", "500"),
    ]);
    let first_config = config(&broker, &topic, &group, &holding_server.endpoint(), &first_vars);
    let first = RunningSidecar::spawn(Sidecar::new(first_config.clone(), grpc_handler(&first_config)));
    let held = holding
        .wait_for_calls(WAIT, |calls| {
            calls.iter().any(|call| call.request.partition == 0 && call.request.offset == HELD_OFFSET)
        })
        .await;
    assert!(held.is_ok(), "the held message never reached the first handler");
    // The mock cluster rejects commits during a rebalance, so the offsets before the held one
    // must be committed before the second sidecar joins for the new owner to start at it.
    let committed_before = first.stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(HELD_OFFSET)).await;
    assert!(committed_before.is_ok(), "the offsets before the held one were never committed: {committed_before:?}");

    let healthy = RecordingHandler::new(|_| async { Ok(()) });
    let healthy_server = HandlerServer::start(healthy.clone()).await;
    let second_vars = with_fast_group(&[("KAFKA_CFG_GROUP_INSTANCE_ID", "member-a")]);
    let second_config = config(&broker, &topic, &group, &healthy_server.endpoint(), &second_vars);
    let second = RunningSidecar::spawn(Sidecar::new(second_config.clone(), grpc_handler(&second_config)));
    let moved = second.stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(COUNT)).await;
    assert!(moved.is_ok(), "the new owner never committed partition 0: {moved:?}");

    release.notify_one();
    let first_summary = first.shutdown().await;
    let second_summary = second.shutdown().await;
    let committed = broker.wait_for_committed(&group, &topic, &[COUNT, COUNT]).await;
    assert!(committed.is_ok(), "committed offsets never reached the end: {committed:?}");

    assert_eq!(first_summary.report.abandoned_in_flight, 0, "calls still running at the first sidecar's shutdown");
    let first_committed = first_summary.stats.committed_offset(&topic, 0);
    assert!(
        first_committed.is_none_or(|offset| offset <= HELD_OFFSET),
        "the first sidecar committed past the abandoned call: {first_committed:?}"
    );
    let first_calls = holding.calls().len() as u64;
    assert_eq!(first_summary.stats.succeeded, first_calls - 1, "successes counted by the first sidecar");
    let new_owner_calls = healthy.calls_for(0, HELD_OFFSET);
    assert_eq!(new_owner_calls.len(), 1, "calls for the held offset at the new owner");
    assert_eq!(second_summary.stats.succeeded, (COUNT - HELD_OFFSET) as u64, "successes at the new owner");
    holding_server.stop().await;
    healthy_server.stop().await;
}

/// With cooperative rebalancing the first sidecar keeps the partition of its failing message
/// when the second leaves, so its gate stays closed while the second's partitions arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_during_closed_gate_starts_paused() {
    const PARTITION_COUNT: i32 = 4;
    const LATE_RECORDS: usize = 6;
    /// Failed probes to wait for after producing to the newly assigned partition. Each one
    /// is a chance for a wrongly resumed partition to be fetched.
    const PROBES_WHILE_CLOSED: u64 = 4;

    init_logs();
    let broker = Broker::start();
    let topic = unique("closed-gate");
    let group = unique("group");
    broker.create_topic(&topic, PARTITION_COUNT);
    // One record per partition, so that every partition has a committed offset to compare
    // at the end.
    broker
        .produce((0..PARTITION_COUNT).map(|partition| TestRecord::new(&topic, partition, None, b"first")).collect())
        .await;

    let healthy_now = Arc::new(AtomicBool::new(false));
    let first_handler = {
        let healthy_now = healthy_now.clone();
        RecordingHandler::new(move |request| {
            let healthy_now = healthy_now.load(Ordering::Acquire);
            async move {
                if request.value.as_deref() == Some(b"fail".as_slice()) && !healthy_now {
                    return Err(Status::unavailable("dependency down"));
                }
                Ok(())
            }
        })
    };
    let first_server = HandlerServer::start(first_handler.clone()).await;
    let vars = with_fast_group(&[("KAFKA_CFG_PARTITION_ASSIGNMENT_STRATEGY", "cooperative-sticky")]);
    let first_config = config(&broker, &topic, &group, &first_server.endpoint(), &vars);
    let first = RunningSidecar::spawn(Sidecar::new(first_config.clone(), grpc_handler(&first_config)));
    let all_assigned = first.stats.wait_until(WAIT, |s| s.assigned.len() == PARTITION_COUNT as usize).await;
    assert!(all_assigned.is_ok(), "the first sidecar never got every partition: {all_assigned:?}");

    let second_handler = RecordingHandler::new(|_| async { Ok(()) });
    let second_server = HandlerServer::start(second_handler.clone()).await;
    let second_config = config(&broker, &topic, &group, &second_server.endpoint(), &vars);
    let second = RunningSidecar::spawn(Sidecar::new(second_config.clone(), grpc_handler(&second_config)));
    let split = eventually(WAIT, || {
        let first = first.stats.snapshot().assigned;
        let second = second.stats.snapshot().assigned;
        !first.is_empty() && !second.is_empty() && first.len() + second.len() == PARTITION_COUNT as usize
    })
    .await;
    assert!(split, "the partitions were never split between the two sidecars");
    let failing_partition =
        first.stats.snapshot().assigned.iter().next().cloned().expect("the first sidecar has a partition");
    let moved_partition =
        second.stats.snapshot().assigned.iter().next().cloned().expect("the second sidecar has a partition");

    broker.produce(vec![TestRecord::new(&topic, failing_partition.partition, None, b"fail")]).await;
    let closed = first.stats.wait_until(WAIT, |s| !s.gate_open).await;
    assert!(closed.is_ok(), "the first sidecar's gate never closed: {closed:?}");

    let second_summary = second.shutdown().await;
    assert!(second_summary.consumer_closed, "the second sidecar's consumer did not close");
    let regained = first.stats.wait_until(WAIT, |s| s.assigned.contains(&moved_partition)).await;
    let regained = regained.expect("the first sidecar gets the second sidecar's partitions");
    assert!(!regained.gate_open, "the gate opened during the rebalance");
    assert!(
        regained.assigned.contains(&failing_partition),
        "the first sidecar lost the partition of its failing message"
    );

    let late_start = end_offsets(&broker, &topic, PARTITION_COUNT).await[moved_partition.partition as usize];
    let late: Vec<TestRecord> = (0..LATE_RECORDS)
        .map(|i| TestRecord::new(&topic, moved_partition.partition, None, format!("late{i}").as_bytes()))
        .collect();
    let fetched_before = first.stats.snapshot().fetched;
    let probes_before = first.stats.snapshot().pause_eligible;
    broker.produce(late).await;
    let probed = first.stats.wait_until(WAIT, |s| s.pause_eligible >= probes_before + PROBES_WHILE_CLOSED).await;
    let probed = probed.expect("the failing message keeps being probed");
    assert!(!probed.gate_open, "the gate opened while the handler still fails");
    assert_eq!(probed.fetched, fetched_before, "messages fetched while the gate was closed");
    let late_calls = first_handler
        .calls()
        .into_iter()
        .filter(|call| call.request.partition == moved_partition.partition && call.request.offset >= late_start)
        .count();
    assert_eq!(late_calls, 0, "messages of the new partition handled while the gate was closed");

    healthy_now.store(true, Ordering::Release);
    let end = end_offsets(&broker, &topic, PARTITION_COUNT).await;
    let committed = broker.wait_for_committed(&group, &topic, &end).await;
    assert!(committed.is_ok(), "committed offsets never reached the end offsets {end:?}: {committed:?}");
    let late_offsets: BTreeSet<i64> = first_handler
        .calls()
        .into_iter()
        .filter(|call| call.request.partition == moved_partition.partition && call.request.offset >= late_start)
        .map(|call| call.request.offset)
        .collect();
    let expected: BTreeSet<i64> = (late_start..late_start + LATE_RECORDS as i64).collect();
    assert_eq!(late_offsets, expected, "late messages handled after the gate opened");

    let summary = first.shutdown().await;
    assert!(summary.stats.gate_open, "the gate is open at the end");
    first_server.stop().await;
    second_server.stop().await;
}

/// Retry delays longer than `max.poll.interval.ms` do not cost the group membership, because
/// the poll thread keeps polling while the pipeline waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_backoff_keeps_membership() {
    const FAILING_OFFSET: i64 = 1;
    const FAILURES: u32 = 2;
    const COUNT: i64 = 3;
    // librdkafka requires max.poll.interval.ms >= session.timeout.ms, and the mock cluster
    // needs a session timeout above 3 s (see `FAST_GROUP`), so 4 s is the smallest usable.
    let max_poll_interval = Duration::from_millis(4_000);
    let backoff = Duration::from_millis(6_000);

    init_logs();
    let broker = Broker::start();
    let topic = unique("long-backoff");
    let group = unique("group");
    broker.create_topic(&topic, 1);
    broker.produce(keyed_records(&topic, 0, COUNT as usize, 1)).await;

    let handler = RecordingHandler::new(|request| async move {
        if request.offset == FAILING_OFFSET && request.attempt <= FAILURES {
            return Err(Status::unavailable("dependency down"));
        }
        Ok(())
    });
    let server = HandlerServer::start(handler.clone()).await;
    let interval_ms = max_poll_interval.as_millis().to_string();
    let vars = with_fast_group(&[("KAFKA_CFG_MAX_POLL_INTERVAL_MS", interval_ms.as_str())]);
    let config = config(&broker, &topic, &group, &server.endpoint(), &vars);
    // Full jitter draws each delay from [0, backoff]; this seed makes every delay longer than
    // the poll interval, so the test cannot pass on short delays.
    let seed = (0..10_000)
        .find(|seed| {
            let mut draws = Backoff::with_seed(backoff, backoff, *seed);
            (1..=FAILURES).all(|probe| draws.delay(probe) > max_poll_interval + Duration::from_millis(500))
        })
        .expect("a seed with long delays exists");
    let sidecar =
        Sidecar::new(config.clone(), grpc_handler(&config)).with_backoff(Backoff::with_seed(backoff, backoff, seed));
    let sidecar = RunningSidecar::spawn(sidecar);

    let assigned = sidecar.stats.wait_until(WAIT, |s| s.assigned.len() == 1).await;
    let rebalances = assigned.expect("the partition is assigned").rebalances;
    let done = sidecar.stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(COUNT)).await;
    assert!(done.is_ok(), "not committed to the end: {done:?}");
    let committed = broker.wait_for_committed(&group, &topic, &[COUNT]).await;
    assert!(committed.is_ok(), "broker committed offsets: {committed:?}");

    let summary = sidecar.shutdown().await;
    assert_eq!(summary.stats.rebalances, rebalances, "rebalances after the first assignment");
    assert_eq!(summary.stats.poll_interval_exceeded, 0, "max.poll.interval.ms exceeded");
    assert_eq!(summary.stats.pause_eligible, u64::from(FAILURES), "failed attempts");
    let calls = handler.calls_for(0, FAILING_OFFSET);
    assert_eq!(calls.len(), FAILURES as usize + 1, "attempts of the failing message");
    for (probe, pair) in (1..).zip(calls.windows(2)) {
        let gap = pair[1].received_at - pair[0].received_at;
        assert!(gap > max_poll_interval, "retry {probe} came after {gap:?}, within max.poll.interval.ms");
    }
    server.stop().await;
}

/// A static member (`group.instance.id`) consumes and commits, and a restart with the same
/// instance id goes on from the committed offset.
///
/// NOTE: the mock's classic group coordinator (librdkafka 2.12) looks members up by member id
/// only, so the restarted member joins as a new one and the group waits for the old member's
/// session to expire. Replacing a static member without a rebalance is therefore not covered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_member_consumes_and_commits() {
    const WAVE: i64 = 4;

    init_logs();
    let broker = Broker::start();
    let topic = unique("static");
    let group = unique("group");
    broker.create_topic(&topic, 1);
    broker.produce(keyed_records(&topic, 0, WAVE as usize, 2)).await;
    let recorder = OffsetRecorder::succeeding(Duration::ZERO);
    let vars = with_fast_group(&[("KAFKA_CFG_GROUP_INSTANCE_ID", "static-member")]);
    let config = config(&broker, &topic, &group, "http://127.0.0.1:1", &vars);

    let first_run = RunningSidecar::spawn(Sidecar::new(config.clone(), recorder.clone()));
    let done = first_run.stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(WAVE)).await;
    assert!(done.is_ok(), "the static member never committed: {done:?}");
    let summary = first_run.shutdown().await;
    assert!(summary.consumer_closed, "the first run's consumer did not close");

    broker.produce(keyed_records(&topic, 0, WAVE as usize, 2)).await;
    let second_run = RunningSidecar::spawn(Sidecar::new(config.clone(), recorder.clone()));
    let done = second_run.stats.wait_until(WAIT, |s| s.committed_offset(&topic, 0) == Some(2 * WAVE)).await;
    assert!(done.is_ok(), "the restarted static member never committed: {done:?}");
    let committed = broker.wait_for_committed(&group, &topic, &[2 * WAVE]).await;
    assert!(committed.is_ok(), "broker committed offsets: {committed:?}");
    let summary = second_run.shutdown().await;
    assert_eq!(summary.stats.handled(), WAVE as u64, "messages the restarted member handled");
    assert!(recorder.missing(&[2 * WAVE]).is_empty(), "offsets never handled: {:?}", recorder.missing(&[2 * WAVE]));
}
