//! Crash safety of the `kafka-scc` binary. It is killed with SIGKILL at random points while it
//! works through a backlog, and started again each time. It must lose nothing, never move a
//! committed offset backwards, and deliver again only what the delivery guarantee allows.
//!
//! The broker is the `local_broker` example in its own process; the handler is an in-process
//! tonic server that records every call and returns OK at once, so the sidecar is the bottleneck.
//! Set `CRASH_TEST_SEED` to replay the kill points of an earlier run.

mod process;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use process::handlers::{HandledCall, InProcessHandler, missing_offsets};
use process::kafka::{CommitSampler, OffsetReader, produce, regressions};
use process::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PARTITIONS: i32 = 8;
const MESSAGES: usize = 50_000;
/// Keys cycle through this many values, 8 per partition, so that key-ordered processing
/// finishes messages out of offset order within a partition.
const KEYS: usize = 64;
const KILLS: usize = 6;
const MAX_IN_FLIGHT: usize = 100;
const COMMIT_INTERVAL_MS: u64 = 200;

/// How long before a kill a finished message may still be uncommitted.
///
/// A message finished by the killed process is delivered again when its offset was not yet
/// committed at the kill. That is true of at most:
/// - the calls in flight at the kill, at most `SCC_MAX_IN_FLIGHT`, counted separately;
/// - messages finished since the last commit that reached the broker: the commit timer fires
///   every `SCC_COMMIT_INTERVAL_MS`, and its commit takes a round trip to the broker, so they
///   finished within one interval plus that round trip;
/// - finished messages held back behind a slower earlier message of their partition: with a
///   handler that returns at once, the earlier message is at most one call's latency behind.
///
/// On loopback the round trip and a call's latency take milliseconds, so a second interval
/// covers both. The duplicate bound of one kill is `SCC_MAX_IN_FLIGHT` plus the calls the
/// handler finished in this window before the kill, which is the throughput times the window,
/// measured. In three runs of this test (debug build, 2-core machine) the duplicates came to
/// 34% to 43% of the summed bound.
const DUPLICATE_WINDOW: Duration = Duration::from_millis(2 * COMMIT_INTERVAL_MS);

/// Bound on consuming the whole backlog after the last restart.
const FINISH_WAIT: Duration = Duration::from_secs(180);

/// One SIGKILL and the figures that bound its duplicates.
struct Kill {
    at: Instant,
    /// Distinct offsets handled when the kill was sent.
    distinct_handled: usize,
    /// Distinct offsets handled minus the committed offsets read right after the kill: about
    /// how many handled messages the next run gets again.
    uncommitted: i64,
    /// Calls the handler finished within [`DUPLICATE_WINDOW`] before the kill.
    finished_in_window: usize,
}

fn seed() -> u64 {
    match std::env::var("CRASH_TEST_SEED") {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("invalid CRASH_TEST_SEED {text:?}: expected an integer")),
        Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos() as u64,
    }
}

fn finished_between(calls: &[HandledCall], from: Instant, to: Instant) -> usize {
    calls.iter().filter(|call| call.at > from && call.at <= to).count()
}

#[test]
fn sigkill_loses_no_message() {
    let seed = seed();
    println!("crash test seed {seed} (replay with CRASH_TEST_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let test_started = Instant::now();

    let topic = unique("crash");
    let group = unique("crash-group");
    let broker = LocalBroker::start(&[(&topic, PARTITIONS)]);
    produce(&broker.bootstrap, &topic, PARTITIONS, MESSAGES, KEYS);
    let produce_took = test_started.elapsed();
    let reader = OffsetReader::new(&broker.bootstrap, &group, &topic, PARTITIONS);
    let end_offsets = reader.end_offsets();
    assert_eq!(end_offsets.iter().sum::<i64>(), MESSAGES as i64, "end offsets {end_offsets:?}");

    let mut handler = InProcessHandler::new(Duration::ZERO);
    let endpoint = handler.serve();
    let max_in_flight = MAX_IN_FLIGHT.to_string();
    let commit_interval = COMMIT_INTERVAL_MS.to_string();
    let env = sidecar_env(
        &broker.bootstrap,
        &group,
        &topic,
        &endpoint,
        &[("SCC_MAX_IN_FLIGHT", &max_in_flight), ("SCC_COMMIT_INTERVAL_MS", &commit_interval)],
    );

    // Kill points are counts of distinct offsets handled, between 5% and 90% of the backlog.
    let mut kill_points: Vec<usize> = (0..KILLS).map(|_| rng.random_range(MESSAGES / 20..MESSAGES * 9 / 10)).collect();
    kill_points.sort_unstable();
    println!("kill points (distinct offsets handled): {kill_points:?}");

    let sampler = CommitSampler::start(&broker.bootstrap, &group, &topic, PARTITIONS, Duration::from_millis(100));
    let consume_started = Instant::now();
    let mut sidecar = start_sidecar("kafka-scc run 1", &env);
    let mut kills = Vec::new();
    for (index, point) in kill_points.iter().enumerate() {
        // Each run must handle at least one call before it is killed, so every kill hits a
        // sidecar at work, even when the next point was already passed.
        let calls_at_start = handler.log.counts().0;
        let reached = eventually(WAIT * 2, || {
            let (calls, distinct) = handler.log.counts();
            calls > calls_at_start && distinct >= *point
        });
        assert!(reached, "run {} never reached {point} distinct offsets: {:?}", index + 1, handler.log.counts());
        assert!(sidecar.try_exit().is_none(), "run {} exited by itself before the kill", index + 1);

        let distinct_handled = handler.log.counts().1;
        let at = Instant::now();
        let status = sidecar.kill();
        assert_eq!(status.signal(), Some(9), "run {} did not end by SIGKILL: {status}", index + 1);
        let committed: i64 = reader.committed().expect("committed offsets read").iter().flatten().sum();
        let uncommitted = distinct_handled as i64 - committed;
        kills.push(Kill { at, distinct_handled, uncommitted, finished_in_window: 0 });
        sidecar = start_sidecar(&format!("kafka-scc run {}", index + 2), &env);
    }

    let finished = reader.wait_for_committed(&end_offsets, FINISH_WAIT);
    let consume_took = consume_started.elapsed();
    let samples = sampler.stop();
    assert!(finished.is_ok(), "committed offsets {finished:?} never reached the end offsets {end_offsets:?}");

    let calls = handler.log.calls();
    for kill in &mut kills {
        kill.finished_in_window = finished_between(&calls, kill.at - DUPLICATE_WINDOW, kill.at);
    }
    let (total_calls, distinct) = handler.log.counts();
    let duplicates = total_calls - distinct;
    let bound: usize = kills.iter().map(|kill| MAX_IN_FLIGHT + kill.finished_in_window).sum();

    println!(
        "crash test: {MESSAGES} messages over {PARTITIONS} partitions, {} SIGKILL restarts, seed {seed}",
        kills.len()
    );
    for (index, kill) in kills.iter().enumerate() {
        println!(
            "  kill {}: {} distinct offsets handled, about {} of them uncommitted, {} calls finished in the last {} ms",
            index + 1,
            kill.distinct_handled,
            kill.uncommitted,
            kill.finished_in_window,
            DUPLICATE_WINDOW.as_millis()
        );
    }
    println!(
        "  {total_calls} handler calls, {distinct} distinct offsets, {duplicates} duplicates, bound {bound} \
         ({MAX_IN_FLIGHT} in flight + calls finished in the window, per kill)"
    );
    println!(
        "  produced in {:.1} s, consumed in {:.1} s ({:.0} calls/s including restarts), {} commit samples, test {:.1} s",
        produce_took.as_secs_f64(),
        consume_took.as_secs_f64(),
        total_calls as f64 / consume_took.as_secs_f64(),
        samples.len(),
        test_started.elapsed().as_secs_f64()
    );

    let missing = missing_offsets(&handler.log.handled_offsets(), &end_offsets);
    assert!(
        missing.is_empty(),
        "{} offsets never handled, first: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    let committed = reader.committed().expect("committed offsets read");
    let expected: Vec<Option<i64>> = end_offsets.iter().copied().map(Some).collect();
    assert_eq!(committed, expected, "final committed offsets");
    let regressions = regressions(&samples);
    assert!(regressions.is_empty(), "committed offsets went backwards: {regressions:?}");
    assert!(samples.len() > 10, "only {} commit samples were taken", samples.len());
    assert!(duplicates <= bound, "{duplicates} duplicates exceed the bound of {bound}");
}
