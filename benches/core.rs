//! Criterion micro-benchmarks of the per-message cost of `CommitTracker` and `Scheduler` at
//! 1,000 and 100,000 pending offsets, over 1,000 partitions and over a single partition.
//!
//! Run with `cargo bench --bench core`; the workloads are described in
//! `examples/bench/micro.rs`, which the `bench` example also times for its summary table.

#[path = "../examples/bench/micro.rs"]
mod micro;

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use micro::{LaneShape, SchedulerWorkload, TrackerWorkload};

/// Pending offsets (or queued messages) compared.
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

fn commit_tracker(c: &mut Criterion) {
    let mut group = c.benchmark_group("commit_tracker_per_message");
    group.throughput(Throughput::Elements(1));
    for partitions in [1_000, 1] {
        for pending in SIZES {
            let mut workload = TrackerWorkload::new(partitions, pending);
            let id = BenchmarkId::new(format!("{partitions}_partitions"), pending);
            group.bench_function(id, |b| b.iter(|| workload.step()));
        }
    }
    group.finish();
}

fn scheduler(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler_per_message");
    group.throughput(Throughput::Elements(1));
    for (name, shape) in [("distinct_keys", LaneShape::DistinctKeys), ("partition_order", LaneShape::PerPartition)] {
        for queued in SIZES {
            let mut workload = SchedulerWorkload::new(1_000, queued, shape);
            let id = BenchmarkId::new(format!("1000_partitions_{name}"), queued);
            group.bench_function(id, |b| b.iter(|| workload.step()));
        }
    }
    group.finish();
}

// Short windows keep `cargo bench --bench core` near one minute; each step takes well under a
// microsecond, so two seconds still gives millions of samples per benchmark.
criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = commit_tracker, scheduler
}
criterion_main!(benches);
