//! The processing orders on one partition of 10,000 records with distinct keys, each handled
//! by a seeded uniform 0-5 ms sleep, against each order's lower bound.
//!
//! The workload is the "illustrative performance example" of the Confluent Parallel Consumer
//! README (confluentinc/parallel-consumer, README.adoc), which reports 22.221 s in partition
//! order, 2.128 s in key order with 10,000 keys and 2.829 s unordered, at 100 concurrent
//! calls. Those figures come from another machine and client and are kept in the JSON for
//! orientation only; the targets are against this run's bounds.
//!
//! Times count from the first fetched record, so the group join and the committed-offset
//! lookup, which any consumer pays, stay out. The JSON has them too.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_scc::Config;
use serde_json::{Value, json};

use crate::calls::{grpc_handler_for, grpc_handler_serial_round_trip, plain_serial_round_trip};
use crate::handler::{HandlerArgs, HandlerProcess};
use crate::report::{Row, Unit};
use crate::support::{
    Broker, Bulk, RunningSidecar, all_committed, poll_stats_until, produce_backlog, sidecar_config, sleep_micros,
};

const STAGE: &str = "ordering";
const TOPIC: &str = "ordering";
const SEED: u64 = 20_240_601;
/// Small values: the workload is about scheduling, and 10,000 of them fit the mock broker's
/// per-partition limit uncompressed.
const VALUE_SIZE: usize = 100;
/// Spin before the end of each sleep in partition order, where calls run one at a time,
/// because `std::thread::sleep` returned 70-100 µs late on average on the machine of
/// BENCHMARKS.md, which would add about 0.8 s over 10,000 serial calls.
const PARTITION_ORDER_SPIN_US: u64 = 250;
pub struct Params {
    pub messages: u64,
    pub max_sleep_us: u64,
}

/// The README's duration for each order, in seconds.
const README_SECONDS: [(&str, f64); 3] = [("partition", 22.221), ("key", 2.128), ("unordered", 2.829)];

/// One kafka-scc run over the whole partition.
struct OrderRun {
    join: Duration,
    /// From the assignment to the first fetched record.
    first_fetch: Duration,
    /// From the first fetched record to the last message handled.
    handled: Duration,
    /// From the first fetched record to the last offset committed.
    committed: Duration,
    handler_sleep_requested_s: f64,
    handler_sleep_measured_s: f64,
    handler_calls: u64,
}

impl OrderRun {
    fn to_json(&self, bound: Duration, readme: Option<f64>) -> Value {
        json!({
            "handled_s": self.handled.as_secs_f64(),
            "committed_s": self.committed.as_secs_f64(),
            "join_s": self.join.as_secs_f64(),
            "assignment_to_first_fetch_s": self.first_fetch.as_secs_f64(),
            "bound_s": bound.as_secs_f64(),
            "handler_calls": self.handler_calls,
            "handler_sleep_requested_s": self.handler_sleep_requested_s,
            "handler_sleep_measured_s": self.handler_sleep_measured_s,
            "parallel_consumer_readme_s": readme,
        })
    }
}

pub async fn run(params: &Params) -> Result<(Vec<Row>, Value), String> {
    let broker = Broker::start()?;
    broker.create_topic(TOPIC, 1)?;
    let ends = {
        let (bootstrap, count) = (broker.bootstrap.clone(), params.messages);
        tokio::task::spawn_blocking(move || {
            let bulk = Bulk { topic: TOPIC, partitions: 1, count, value_size: VALUE_SIZE, compression: "none" };
            produce_backlog(&bootstrap, &bulk)
        })
        .await
        .map_err(|error| error.to_string())??
    };
    let sleep_sum_us: u64 =
        (0..params.messages as i64).map(|offset| sleep_micros(SEED, 0, offset, params.max_sleep_us)).sum();
    let sleep_sum = Duration::from_micros(sleep_sum_us);
    let sleeping = HandlerArgs { random_sleep_us: Some(params.max_sleep_us), seed: SEED, ..HandlerArgs::no_op() };

    let mut rows = Vec::new();
    let mut details = serde_json::Map::new();
    let readme = |order: &str| README_SECONDS.iter().find(|(name, _)| *name == order).map(|(_, seconds)| *seconds);

    // Key and unordered: many calls at once, so the bound is the sum of the sleeps spread over
    // the in-flight limit.
    {
        let mut handler = HandlerProcess::spawn(&sleeping)?;
        for order in ["key", "unordered"] {
            let run =
                run_order(&broker, &mut handler, &ends, order, &[("SCC_PROCESSING_ORDER", order)], params).await?;
            let in_flight = run_in_flight(&broker, &handler)?;
            let bound = sleep_sum / in_flight as u32;
            let handled_s = run.handled.as_secs_f64();
            rows.push(
                Row::new(
                    STAGE,
                    format!("{order} order, first record fetched to all handled"),
                    handled_s,
                    Unit::Seconds,
                )
                .limit(format!("sum of sleeps / {in_flight}"), bound.as_secs_f64())
                .target("< 0.5 s", handled_s < 0.5),
            );
            details.insert(order.to_owned(), run.to_json(bound, readme(order)));
        }

        // Diagnostics: key order without the stream, in HandleBatch calls and in one Handle call
        // per record. A HandleBatch call returns when its slowest record is done, so with sleeps
        // of 0 to 5 ms batches can cost time.
        /// Run name, table figure and kafka-scc settings of one run.
        type Variant<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
        let without_stream: [Variant; 2] = [
            (
                "key-batch",
                "key order, HandleBatch calls (SCC_HANDLER_STREAM=off)",
                &[("SCC_PROCESSING_ORDER", "key"), ("SCC_HANDLER_STREAM", "off")],
            ),
            (
                "key-unary",
                "key order, unary calls only (also SCC_HANDLER_BATCH_MAX=1)",
                &[("SCC_PROCESSING_ORDER", "key"), ("SCC_HANDLER_STREAM", "off"), ("SCC_HANDLER_BATCH_MAX", "1")],
            ),
        ];
        for (name, figure, vars) in without_stream {
            let run = run_order(&broker, &mut handler, &ends, name, vars, params).await?;
            let in_flight = run_in_flight(&broker, &handler)?;
            let bound = sleep_sum / in_flight as u32;
            rows.push(
                Row::new(STAGE, figure, run.handled.as_secs_f64(), Unit::Seconds)
                    .limit(format!("sum of sleeps / {in_flight}"), bound.as_secs_f64()),
            );
            details.insert(name.replace('-', "_"), run.to_json(bound, None));
        }
    }

    // Partition order: one call at a time, so every round trip adds to the wall time.
    let (round_trip, stream_round_trip) = {
        let handler = HandlerProcess::spawn(&HandlerArgs::no_op())?;
        let plain = plain_serial_round_trip(handler.endpoint(), 2_000, VALUE_SIZE).await?;
        let config = sidecar_config(&broker.bootstrap, TOPIC, "round-trip", handler.endpoint(), &[])?;
        let grpc = grpc_handler_for(&config)?;
        let stream = grpc_handler_serial_round_trip(&grpc, 2_000, VALUE_SIZE).await?;
        (plain, stream)
    };
    eprintln!(
        "[bench] ordering: serial round trip {:.1} µs plain unary, {:.1} µs GrpcHandler",
        round_trip.as_secs_f64() * 1e6,
        stream_round_trip.as_secs_f64() * 1e6
    );
    {
        let precise = HandlerArgs { spin_us: Some(PARTITION_ORDER_SPIN_US), ..sleeping.clone() };
        let mut handler = HandlerProcess::spawn(&precise)?;
        let run =
            run_order(&broker, &mut handler, &ends, "partition", &[("SCC_PROCESSING_ORDER", "partition")], params)
                .await?;
        let handled_s = run.handled.as_secs_f64();
        rows.push(
            Row::new(STAGE, "partition order, first record fetched to all handled", handled_s, Unit::Seconds)
                .limit("sum of sleeps", sleep_sum.as_secs_f64())
                .target("<= 1.05x", handled_s <= 1.05 * sleep_sum.as_secs_f64()),
        );
        let with_round_trips = sleep_sum + round_trip * params.messages as u32;
        rows.push(
            Row::new(STAGE, "partition order, against sleeps plus one plain round trip each", handled_s, Unit::Seconds)
                .limit("sum of sleeps + N x RTT", with_round_trips.as_secs_f64()),
        );
        let beyond_sleep_us = (handled_s - run.handler_sleep_measured_s) * 1e6 / params.messages as f64;
        rows.push(
            Row::new(STAGE, "partition order, time per message beyond the sleep", beyond_sleep_us, Unit::Microseconds)
                .limit("plain tonic round trip, 1 in flight", round_trip.as_secs_f64() * 1e6),
        );
        rows.push(
            Row::new(STAGE, "partition order, time per message beyond the sleep", beyond_sleep_us, Unit::Microseconds)
                .limit("GrpcHandler round trip on the stream, 1 in flight", stream_round_trip.as_secs_f64() * 1e6),
        );
        let mut json = run.to_json(sleep_sum, readme("partition"));
        if let Some(object) = json.as_object_mut() {
            object.insert("plain_round_trip_us".to_owned(), (round_trip.as_secs_f64() * 1e6).into());
            object.insert("grpc_handler_round_trip_us".to_owned(), (stream_round_trip.as_secs_f64() * 1e6).into());
            object.insert("handler_spin_us".to_owned(), PARTITION_ORDER_SPIN_US.into());
        }
        details.insert("partition".to_owned(), json);
    }

    details.insert("messages".to_owned(), params.messages.into());
    details.insert("value_bytes".to_owned(), VALUE_SIZE.into());
    details.insert("max_sleep_us".to_owned(), params.max_sleep_us.into());
    details.insert("seed".to_owned(), SEED.into());
    details.insert("sum_of_sleeps_s".to_owned(), sleep_sum.as_secs_f64().into());
    Ok((rows, Value::Object(details)))
}

/// Returns the in-flight limit of kafka-scc's default configuration.
fn run_in_flight(broker: &Broker, handler: &HandlerProcess) -> Result<usize, String> {
    Ok(sidecar_config(&broker.bootstrap, TOPIC, "probe", handler.endpoint(), &[])?.max_in_flight)
}

/// Runs kafka-scc with `vars` from a fresh group over the whole partition.
async fn run_order(
    broker: &Broker,
    handler: &mut HandlerProcess,
    ends: &BTreeMap<i32, i64>,
    name: &str,
    vars: &[(&str, &str)],
    params: &Params,
) -> Result<OrderRun, String> {
    handler.reset()?;
    let group = format!("bench-order-{name}");
    let config: Config = sidecar_config(&broker.bootstrap, TOPIC, &group, handler.endpoint(), vars)?;
    let grpc = grpc_handler_for(&config)?;

    let timeout = Duration::from_secs(120);
    let sidecar = RunningSidecar::start(config, grpc);
    let assigned = sidecar.wait_assigned(Duration::from_secs(60)).await?;
    let first_fetched = poll_stats_until(&sidecar.stats, timeout, "the first record", |s| s.fetched > 0).await?;
    let handled =
        poll_stats_until(&sidecar.stats, timeout, "every message handled", |s| s.handled() >= params.messages).await?;
    let committed =
        poll_stats_until(&sidecar.stats, timeout, "every offset committed", |s| all_committed(s, TOPIC, ends)).await?;
    let join = assigned - sidecar.started;
    sidecar.stop().await?;

    let report = handler.report()?;
    eprintln!("[bench] ordering: {name} handled all in {:.3} s", (handled - first_fetched).as_secs_f64());
    Ok(OrderRun {
        join,
        first_fetch: first_fetched - assigned,
        handled: handled - first_fetched,
        committed: committed - first_fetched,
        handler_sleep_requested_s: report.sleep_requested_us as f64 / 1e6,
        handler_sleep_measured_s: report.sleep_measured_us as f64 / 1e6,
        handler_calls: report.calls,
    })
}
