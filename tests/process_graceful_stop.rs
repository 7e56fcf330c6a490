//! Graceful stop of the `kafka-scc` binary next to the Python handler. SIGTERM in the middle
//! of a backlog makes it exit 0 within `SCC_SHUTDOWN_TIMEOUT_MS`. The committed offsets then
//! cover every message the handler finished before the signal, and never pass a message the
//! handler did not finish.
//!
//! Processing is key-ordered with several keys per partition, so at the signal a partition
//! usually has finished messages after one still running. Those cannot be committed; what
//! must be is the contiguous finished prefix of each partition, as the handler recorded it.

mod process;

use std::time::{Duration, Instant};

use process::handlers::{HandlerKind, HandlerProcess, contiguous_end, handled_offsets, read_record, record_path};
use process::kafka::{OffsetReader, produce};
use process::*;

const PARTITIONS: i32 = 4;
const MESSAGES: usize = 8_000;
/// Keys cycle through 16 values, 4 per partition.
const KEYS: usize = 16;
/// Simulated work per call, so that calls are in flight when the signal arrives.
const DELAY_MS: u64 = 5;
const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(5_000);

#[test]
fn sigterm_commits_finished_prefix() {
    let test_started = Instant::now();
    let dir = TempDir::new("graceful");
    let record = record_path(dir.path(), "calls");
    let topic = unique("graceful");
    let group = unique("graceful-group");
    let broker = LocalBroker::start(&[(&topic, PARTITIONS)]);
    produce(&broker.bootstrap, &topic, PARTITIONS, MESSAGES, KEYS);
    let reader = OffsetReader::new(&broker.bootstrap, &group, &topic, PARTITIONS);

    let handler = HandlerProcess::start(HandlerKind::Python, "127.0.0.1:0", &record, DELAY_MS);
    let shutdown_ms = SHUTDOWN_TIMEOUT.as_millis().to_string();
    // A long commit interval leaves up to a second of finished work uncommitted at the
    // signal, so only the final commit of the shutdown can cover it.
    let env = sidecar_env(
        &broker.bootstrap,
        &group,
        &topic,
        &handler.endpoint(),
        &[("SCC_MAX_IN_FLIGHT", "40"), ("SCC_COMMIT_INTERVAL_MS", "1000"), ("SCC_SHUTDOWN_TIMEOUT_MS", &shutdown_ms)],
    );
    let mut sidecar = start_sidecar("kafka-scc", &env);

    let mid_stream = eventually(WAIT, || read_record(&record).len() >= MESSAGES / 4);
    assert!(mid_stream, "the handler handled only {} calls", read_record(&record).len());

    // Read before the signal, so every call in it finished before the signal.
    let finished_before = handled_offsets(&read_record(&record));
    let signalled_at = Instant::now();
    sidecar.terminate();
    let status = sidecar.wait_exit(WAIT);
    let took = signalled_at.elapsed();

    let committed = reader.committed().expect("committed offsets read");
    let handled = handled_offsets(&read_record(&record));
    let stopped = log_events(&sidecar.stderr, "pipeline stopped");
    let finished_count: usize = finished_before.values().map(|offsets| offsets.len()).sum();
    let committed_total: i64 = committed.iter().flatten().sum();

    println!(
        "graceful stop: {MESSAGES} messages, {finished_count} finished before SIGTERM, then {} after {} ms \
         (timeout {} ms), {committed_total} committed, test {:.1} s",
        status.map_or_else(|| "none yet".to_owned(), |status| status.to_string()),
        took.as_millis(),
        SHUTDOWN_TIMEOUT.as_millis(),
        test_started.elapsed().as_secs_f64()
    );
    assert!(status.is_some_and(|status| status.code() == Some(0)), "kafka-scc exited with {status:?}");
    assert!(took <= SHUTDOWN_TIMEOUT, "kafka-scc took {took:?} to exit after SIGTERM");
    assert!(committed_total < MESSAGES as i64, "the backlog was done before the signal, so nothing ran mid-stream");
    assert_eq!(stopped.len(), 1, "'pipeline stopped' log lines");
    assert_eq!(stopped[0]["final_commit_done"].as_bool(), Some(true), "final commit done: {}", stopped[0]);

    for partition in 0..PARTITIONS {
        let index = usize::try_from(partition).unwrap();
        let committed = committed[index].unwrap_or(0);
        let prefix_before = contiguous_end(finished_before.get(&partition));
        let prefix_handled = contiguous_end(handled.get(&partition));
        let finished_beyond_prefix =
            finished_before.get(&partition).map_or(0, |offsets| offsets.range(prefix_before..).count());
        println!(
            "  partition {partition}: committed {committed}, finished prefix at the signal {prefix_before} \
             (+{finished_beyond_prefix} finished after a gap), handled prefix at exit {prefix_handled}"
        );
        assert!(
            committed >= prefix_before,
            "partition {partition}: committed {committed} < finished prefix {prefix_before}"
        );
        assert!(
            committed <= prefix_handled,
            "partition {partition}: committed {committed} > handled prefix {prefix_handled}"
        );
    }
}
