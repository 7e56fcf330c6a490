//! Handler outage with the example handlers as real processes: the handler goes away for 10 s
//! in the middle of a backlog and comes back on the same port. kafka-scc closes its gate,
//! commits nothing past the failed message while the handler is down, and resumes by itself,
//! without a restart, until every message is handled and committed.

mod process;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use process::handlers::{HandlerKind, HandlerProcess, handled_offsets, missing_offsets, read_record, record_path};
use process::kafka::{OffsetReader, produce};
use process::*;

const PARTITIONS: i32 = 4;
const MESSAGES: usize = 8_000;
/// Simulated work per call. With `SCC_MAX_IN_FLIGHT=20` it keeps the handler below 4,000
/// calls/s, so the backlog is still being worked through when the handler stops.
const DELAY_MS: u64 = 5;
/// How long the handler stays down: the scenario itself, not a wait for a condition.
const OUTAGE: Duration = Duration::from_secs(10);
const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// How the handler is taken down.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// SIGKILL: calls in flight are cut off.
    Kill,
    /// SIGTERM: the handler finishes its calls in flight and refuses new ones.
    Terminate,
}

#[test]
fn python_handler_outage_resumes_by_itself() {
    handler_outage(HandlerKind::Python, Stop::Kill);
}

#[test]
fn node_handler_outage_resumes_by_itself() {
    handler_outage(HandlerKind::Node, Stop::Terminate);
}

fn handler_outage(kind: HandlerKind, stop: Stop) {
    let test_started = Instant::now();
    let dir = TempDir::new("outage");
    let record = record_path(dir.path(), "calls");
    let topic = unique("outage");
    let group = unique("outage-group");
    let broker = LocalBroker::start(&[(&topic, PARTITIONS)]);
    produce(&broker.bootstrap, &topic, PARTITIONS, MESSAGES, 16);
    let reader = OffsetReader::new(&broker.bootstrap, &group, &topic, PARTITIONS);
    let end_offsets = reader.end_offsets();

    let mut handler = HandlerProcess::start(kind, "127.0.0.1:0", &record, DELAY_MS);
    let addr = handler.addr.clone();
    let env = sidecar_env(
        &broker.bootstrap,
        &group,
        &topic,
        &handler.endpoint(),
        &[
            ("SCC_MAX_IN_FLIGHT", "20"),
            ("SCC_COMMIT_INTERVAL_MS", "100"),
            ("SCC_BACKOFF_BASE_MS", "100"),
            ("SCC_BACKOFF_MAX_MS", "1000"),
        ],
    );
    let mut sidecar = start_sidecar("kafka-scc", &env);

    let mid_stream = eventually(WAIT, || read_record(&record).len() >= MESSAGES / 10);
    assert!(mid_stream, "the {} handled only {} calls", kind.name(), read_record(&record).len());
    match stop {
        Stop::Kill => {
            handler.process.kill();
        }
        Stop::Terminate => {
            handler.process.terminate();
            let status = handler.process.wait_exit(WAIT);
            assert!(status.is_some_and(|status| status.success()), "the {} stopped with {status:?}", kind.name());
        }
    }
    let outage_started = Instant::now();
    let calls_before_outage = read_record(&record).len();

    let gate_closed = wait_for_log(&sidecar.stderr, 0, "gate closed", WAIT);
    let gate_closed_after = outage_started.elapsed();
    assert!(gate_closed.is_some(), "kafka-scc logged no 'gate closed' line");

    // The handler stays down for the whole outage while the committed offsets are sampled.
    let mut samples = Vec::new();
    while outage_started.elapsed() < OUTAGE {
        if let Ok(committed) = reader.committed() {
            samples.push(committed);
        }
        std::thread::sleep(SAMPLE_INTERVAL);
    }
    let log_lines_at_restart = sidecar.stderr.len();
    let failures = log_events(&sidecar.stderr, "handler unavailable; message will be retried");

    let _restarted = HandlerProcess::start(kind, &addr, &record, DELAY_MS);
    let restarted_at = Instant::now();
    let gate_opened = wait_for_log(&sidecar.stderr, log_lines_at_restart, "gate opened", WAIT);
    let resumed_after = restarted_at.elapsed();
    let finished = reader.wait_for_committed(&end_offsets, WAIT);
    let calls = read_record(&record);

    // The earliest failed offset of each partition: nothing may be committed past it while
    // the handler is down, because that message has not succeeded.
    let mut first_failed: BTreeMap<i32, i64> = BTreeMap::new();
    for event in &failures {
        let partition = i32::try_from(event["partition"].as_i64().expect("partition field")).unwrap();
        let offset = event["offset"].as_i64().expect("offset field");
        let entry = first_failed.entry(partition).or_insert(offset);
        *entry = (*entry).min(offset);
    }
    let mut committed_past_failure = Vec::new();
    for sample in &samples {
        for (&partition, &failed) in &first_failed {
            let committed = sample[usize::try_from(partition).unwrap()];
            if committed.is_some_and(|committed| committed > failed) {
                committed_past_failure.push((partition, failed, committed));
            }
        }
    }
    let retried_ok = calls
        .iter()
        .any(|call| call.code == "OK" && call.attempt >= 2 && first_failed.get(&call.partition) == Some(&call.offset));
    let starts = log_events(&sidecar.stderr, "kafka-scc starting").len();
    let distinct: usize = handled_offsets(&calls).values().map(|offsets| offsets.len()).sum();

    println!(
        "{} outage ({stop:?}): {MESSAGES} messages, {} handled before the stop, gate closed {} ms after it, \
         {} failed calls logged, {} commit samples while down, gate opened {} ms after the restart, \
         {} calls for {distinct} distinct offsets, test {:.1} s",
        kind.name(),
        calls_before_outage,
        gate_closed_after.as_millis(),
        failures.len(),
        samples.len(),
        resumed_after.as_millis(),
        calls.len(),
        test_started.elapsed().as_secs_f64()
    );

    assert!(!first_failed.is_empty(), "kafka-scc logged no failed call while the handler was down");
    assert!(samples.len() >= 10, "only {} commit samples while the handler was down", samples.len());
    assert!(
        committed_past_failure.is_empty(),
        "committed past a failed offset (partition, failed, committed): {committed_past_failure:?}"
    );
    assert!(gate_opened.is_some(), "kafka-scc logged no 'gate opened' line after the handler came back");
    assert!(retried_ok, "no failed message succeeded on a retry; first failed offsets {first_failed:?}");
    assert!(finished.is_ok(), "committed offsets {finished:?} never reached the end offsets {end_offsets:?}");
    let missing = missing_offsets(&handled_offsets(&calls), &end_offsets);
    assert!(
        missing.is_empty(),
        "{} offsets never handled, first: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(sidecar.try_exit().is_none(), "kafka-scc exited during the outage");
    assert_eq!(starts, 1, "kafka-scc started {starts} times");
}
