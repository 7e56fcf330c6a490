//! The `micro` stage: a quick timing of the workloads in `micro.rs` for the summary table.
//! `cargo bench --bench core` runs the same workloads under criterion with confidence
//! intervals.

use std::time::Duration;

use serde_json::{Value, json};

use crate::micro::{LaneShape, SchedulerWorkload, TrackerWorkload, time_per_step};
use crate::report::{Row, Unit};

const STAGE: &str = "micro";
const PARTITIONS: usize = 1_000;
const SMALL: usize = 1_000;
const LARGE: usize = 100_000;
/// Time spent on each workload.
const BUDGET: Duration = Duration::from_millis(600);
/// The largest growth from 1,000 to 100,000 pending accepted as logarithmic. An O(log n) step
/// grows by about 1.7 in comparisons, plus cache misses once the structure outgrows the
/// caches. An O(n) step would grow by about 100.
const MAX_GROWTH: f64 = 4.0;

pub async fn run() -> Result<(Vec<Row>, Value), String> {
    tokio::task::spawn_blocking(measure).await.map_err(|error| format!("the micro stage failed: {error}"))
}

fn measure() -> (Vec<Row>, Value) {
    let tracker = |pending| {
        let mut workload = TrackerWorkload::new(PARTITIONS, pending);
        time_per_step(|| workload.step(), BUDGET)
    };
    let scheduler = |queued, shape| {
        let mut workload = SchedulerWorkload::new(PARTITIONS, queued, shape);
        time_per_step(|| workload.step(), BUDGET)
    };
    let cases = [
        ("CommitTracker track + finish", tracker(SMALL), tracker(LARGE)),
        (
            "Scheduler push + pop + release, distinct keys",
            scheduler(SMALL, LaneShape::DistinctKeys),
            scheduler(LARGE, LaneShape::DistinctKeys),
        ),
        (
            "Scheduler push + pop + release, partition order",
            scheduler(SMALL, LaneShape::PerPartition),
            scheduler(LARGE, LaneShape::PerPartition),
        ),
    ];

    let mut rows = Vec::new();
    let mut details = serde_json::Map::new();
    for (name, small, large) in cases {
        let small_ns = small.as_secs_f64() * 1e9;
        let large_ns = large.as_secs_f64() * 1e9;
        rows.push(Row::new(
            STAGE,
            format!("{name}, {PARTITIONS} partitions, {SMALL} pending"),
            small_ns,
            Unit::Nanoseconds,
        ));
        rows.push(
            Row::new(STAGE, format!("{name}, {PARTITIONS} partitions, {LARGE} pending"), large_ns, Unit::Nanoseconds)
                .limit(format!("same at {SMALL} pending"), small_ns)
                .target(format!("<= {MAX_GROWTH:.1}x"), large_ns <= MAX_GROWTH * small_ns),
        );
        details.insert(
            name.to_owned(),
            json!({ "ns_per_message": { SMALL.to_string(): small_ns, LARGE.to_string(): large_ns } }),
        );
    }
    (rows, Value::Object(details))
}
