//! Scale-out with real processes: two `kafka-scc` processes in one consumer group share the
//! partitions of a topic that is being produced to. When one of them is killed with SIGKILL,
//! the group evicts it after its session timeout and the survivor takes over every
//! partition, with nothing lost and no committed offset moving backwards.
//!
//! Each sidecar calls its own in-process handler server. Both servers record into one call log
//! with their index, so the test can tell which sidecar handled each message.

mod process;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use process::handlers::{InProcessHandler, missing_offsets};
use process::kafka::{BackgroundProducer, CommitSampler, OffsetReader, regressions};
use process::*;

const PARTITIONS: i32 = 8;
const MESSAGES: u64 = 12_000;
/// One record every 500 µs: 2,000 records/s, so production runs for about 6 s.
const PRODUCE_INTERVAL: Duration = Duration::from_micros(500);
/// Index of each sidecar's handler server in the shared call log.
const SERVER_A: usize = 0;
const SERVER_B: usize = 1;

#[test]
fn survivor_takes_over_killed_member() {
    let test_started = Instant::now();
    let topic = unique("scale");
    let group = unique("scale-group");
    let broker = LocalBroker::start(&[(&topic, PARTITIONS)]);
    let reader = OffsetReader::new(&broker.bootstrap, &group, &topic, PARTITIONS);

    let mut handler = InProcessHandler::new(Duration::ZERO);
    let endpoint_a = handler.serve();
    let endpoint_b = handler.serve();
    let extra = [("SCC_COMMIT_INTERVAL_MS", "100")];
    let mut sidecar_a =
        start_sidecar("kafka-scc A", &sidecar_env(&broker.bootstrap, &group, &topic, &endpoint_a, &extra));
    let sidecar_b = start_sidecar("kafka-scc B", &sidecar_env(&broker.bootstrap, &group, &topic, &endpoint_b, &extra));

    let shared = eventually(WAIT, || {
        let held_by_a = assigned_partitions(&sidecar_a.stderr);
        let held_by_b = assigned_partitions(&sidecar_b.stderr);
        !held_by_a.is_empty()
            && !held_by_b.is_empty()
            && held_by_a.is_disjoint(&held_by_b)
            && held_by_a.len() + held_by_b.len() == PARTITIONS as usize
    });
    let held_by_a = assigned_partitions(&sidecar_a.stderr);
    let held_by_b = assigned_partitions(&sidecar_b.stderr);
    assert!(shared, "the members never split the partitions: A holds {held_by_a:?}, B holds {held_by_b:?}");
    let group_formed_after = test_started.elapsed();

    let sampler = CommitSampler::start(&broker.bootstrap, &group, &topic, PARTITIONS, Duration::from_millis(100));
    let producer = BackgroundProducer::start(&broker.bootstrap, &topic, PARTITIONS, PRODUCE_INTERVAL, MESSAGES);
    let both_working = eventually(WAIT, || {
        let calls = handler.log.calls();
        producer.produced() >= MESSAGES / 3
            && calls.iter().any(|call| call.server == SERVER_A)
            && calls.iter().any(|call| call.server == SERVER_B)
    });
    let calls_before_kill = handler.log.calls();
    let handled_by_a = calls_before_kill.iter().filter(|call| call.server == SERVER_A).count();
    let handled_by_b = calls_before_kill.iter().filter(|call| call.server == SERVER_B).count();
    assert!(both_working, "before the kill A handled {handled_by_a} and B {handled_by_b} calls");

    let killed_at = Instant::now();
    sidecar_a.kill();
    let took_over = eventually(WAIT, || assigned_partitions(&sidecar_b.stderr).len() == PARTITIONS as usize);
    let takeover_after = killed_at.elapsed();
    assert!(producer.wait_until_done(WAIT), "the producer did not finish");
    let produced = producer.finish();
    let end_offsets = reader.end_offsets();
    let finished = reader.wait_for_committed(&end_offsets, WAIT);
    let samples = sampler.stop();

    let calls = handler.log.calls();
    let partitions_b_handled_after_kill: BTreeSet<i32> =
        calls.iter().filter(|call| call.server == SERVER_B && call.at > killed_at).map(|call| call.partition).collect();
    let (total_calls, distinct) = handler.log.counts();
    println!(
        "scale-out: {produced} messages over {PARTITIONS} partitions; group formed after {:.1} s \
         (A held {held_by_a:?}, B held {held_by_b:?}); before the kill A handled {handled_by_a} and B {handled_by_b} calls; \
         B held every partition {:.1} s after the kill; {total_calls} calls, {} duplicates, test {:.1} s",
        group_formed_after.as_secs_f64(),
        takeover_after.as_secs_f64(),
        total_calls - distinct,
        test_started.elapsed().as_secs_f64()
    );

    assert!(took_over, "B holds only {:?} after the kill", assigned_partitions(&sidecar_b.stderr));
    let all_partitions: BTreeSet<i32> = (0..PARTITIONS).collect();
    assert_eq!(partitions_b_handled_after_kill, all_partitions, "partitions B handled after the kill");
    assert_eq!(produced, MESSAGES, "records produced");
    assert!(finished.is_ok(), "committed offsets {finished:?} never reached the end offsets {end_offsets:?}");
    let missing = missing_offsets(&handler.log.handled_offsets(), &end_offsets);
    assert!(
        missing.is_empty(),
        "{} offsets never handled, first: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    let regressions = regressions(&samples);
    assert!(regressions.is_empty(), "committed offsets went backwards: {regressions:?}");
}
