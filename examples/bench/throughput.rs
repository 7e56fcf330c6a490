//! Throughput with a no-op handler: (a) plain rdkafka consumption, (b) plain tonic calls at
//! kafka-scc's concurrency, (c) kafka-scc end to end, all on the same topic and machine.
//!
//! The handler implements HandleStream and HandleBatch, so (c) sends records on one stream, as
//! kafka-scc does by default. Two more runs of (c) turn the stream off
//! (`SCC_HANDLER_STREAM=off`): one sends records in HandleBatch calls, one sends every record
//! with its own Handle call (`SCC_HANDLER_BATCH_MAX=1` too). Two diagnostic runs split (c):
//! kafka-scc with an in-process no-op handler (Kafka and the pipeline without gRPC) and
//! kafka-scc's own `GrpcHandler` driven without Kafka.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_scc::{Config, Handler, HandlerError, Message};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{Value, json};

use crate::calls::{grpc_handler_calls, grpc_handler_for, plain_calls, plain_client, sample_message, sample_request};
use crate::handler::{HandlerArgs, HandlerProcess};
use crate::report::{Row, Unit};
use crate::support::{
    Broker, Bulk, CpuMeter, RunningSidecar, all_committed, poll_stats_until, produce_backlog, sidecar_config,
    thread_cpu, thread_cpu_delta,
};

const STAGE: &str = "throughput";
const TOPIC: &str = "throughput";
/// Bound on each measured phase; reaching it fails the stage.
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);
/// The backlog is 25 MiB per partition, more than the mock broker keeps uncompressed
/// ([`crate::support::MOCK_PARTITION_BYTES`]), but LZ4 stores it in a fraction of that. Both (a) and
/// (c) pay for the decompression, which librdkafka does on its broker thread.
const COMPRESSION: &str = "lz4";
/// Calls made before timing (b) and the GrpcHandler run, so that connecting and the first
/// allocations are not timed.
const WARM_UP_CALLS: u64 = 2_000;

pub struct Params {
    pub messages: u64,
    pub partitions: i32,
    pub value_size: usize,
    /// Rounds of all six runs; each figure is the best round.
    pub rounds: usize,
}

/// One timed run: messages over elapsed time, and the CPU both processes used.
#[derive(Clone, Debug)]
struct Run {
    elapsed: Duration,
    bench_cpu_s: f64,
    handler_cpu_s: f64,
}

impl Run {
    fn rate(&self, messages: u64) -> f64 {
        messages as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_per_message_us(&self, messages: u64) -> f64 {
        (self.bench_cpu_s + self.handler_cpu_s) * 1e6 / messages as f64
    }

    fn to_json(&self, messages: u64) -> Value {
        json!({
            "elapsed_s": self.elapsed.as_secs_f64(),
            "rate_msg_s": self.rate(messages),
            "bench_process_cpu_s": self.bench_cpu_s,
            "handler_process_cpu_s": self.handler_cpu_s,
        })
    }
}

/// A kafka-scc run: time to the assignment, then from the assignment to the last message
/// handled and to the last offset committed.
#[derive(Clone, Debug)]
struct SidecarRun {
    join: Duration,
    handled: Run,
    committed: Duration,
    threads_ms: Vec<(String, f64)>,
}

pub async fn run(params: &Params) -> Result<(Vec<Row>, Value), String> {
    let broker = Broker::start()?;
    broker.create_topic(TOPIC, params.partitions)?;
    let produce_started = Instant::now();
    let ends = {
        let (bootstrap, partitions, count, value_size) =
            (broker.bootstrap.clone(), params.partitions, params.messages, params.value_size);
        tokio::task::spawn_blocking(move || {
            let bulk = Bulk { topic: TOPIC, partitions, count, value_size, compression: COMPRESSION };
            produce_backlog(&bootstrap, &bulk)
        })
        .await
        .map_err(|error| error.to_string())??
    };
    let produce_s = produce_started.elapsed().as_secs_f64();
    eprintln!(
        "[bench] throughput: produced {} records of {} B in {produce_s:.1} s",
        params.messages, params.value_size
    );

    let mut handler = HandlerProcess::spawn(&HandlerArgs::no_op())?;
    let endpoint = handler.endpoint().to_owned();
    let n = params.messages;
    let in_flight = sidecar_config(&broker.bootstrap, TOPIC, "probe", &endpoint, &[])?.max_in_flight;

    let mut plain_kafka = Vec::new();
    let mut plain_grpc = Vec::new();
    let mut grpc_handler = Vec::new();
    let mut pipeline_only = Vec::new();
    let mut end_to_end = Vec::new();
    let mut batches = Vec::new();
    let mut unary = Vec::new();
    for round in 0..params.rounds {
        let config = sidecar_config(&broker.bootstrap, TOPIC, &format!("bench-plain-{round}"), &endpoint, &[])?;
        let run = tokio::task::spawn_blocking({
            let ends = ends.clone();
            move || consume_plain(&config, &ends)
        })
        .await
        .map_err(|error| error.to_string())??;
        eprintln!("[bench] throughput: (a) plain rdkafka {:.0} msg/s", run.rate(n));
        plain_kafka.push(run);

        handler.reset()?;
        let client = plain_client(&endpoint).await?;
        let request = sample_request(params.value_size);
        plain_calls(&client, &request, WARM_UP_CALLS, in_flight).await?;
        let run = timed(handler.pid(), plain_calls(&client, &request, n, in_flight)).await?;
        check_calls(&mut handler, n + WARM_UP_CALLS, "(b)")?;
        eprintln!("[bench] throughput: (b) plain tonic {:.0} msg/s", run.rate(n));
        plain_grpc.push(run);

        handler.reset()?;
        let config = sidecar_config(&broker.bootstrap, TOPIC, "bench", &endpoint, &[])?;
        let grpc = grpc_handler_for(&config)?;
        let message = Arc::new(sample_message(params.value_size));
        grpc_handler_calls(&grpc, &message, WARM_UP_CALLS, in_flight).await?;
        let run = timed(handler.pid(), grpc_handler_calls(&grpc, &message, n, in_flight)).await?;
        check_calls(&mut handler, n + WARM_UP_CALLS, "GrpcHandler alone")?;
        eprintln!("[bench] throughput: kafka-scc GrpcHandler alone {:.0} msg/s", run.rate(n));
        grpc_handler.push(run);

        let config = sidecar_config(&broker.bootstrap, TOPIC, &format!("bench-noop-{round}"), &endpoint, &[])?;
        let run = run_sidecar(config, NoopHandler, &ends, None).await?;
        eprintln!("[bench] throughput: kafka-scc, in-process no-op handler {:.0} msg/s", run.handled.rate(n));
        pipeline_only.push(run);

        handler.reset()?;
        let config = sidecar_config(&broker.bootstrap, TOPIC, &format!("bench-scc-{round}"), &endpoint, &[])?;
        let run = run_sidecar(config.clone(), grpc_handler_for(&config)?, &ends, Some(handler.pid())).await?;
        let calls = handler.report()?.calls;
        if calls < n {
            return Err(format!("(c): the handler received {calls} calls for {n} messages"));
        }
        eprintln!(
            "[bench] throughput: (c) kafka-scc {:.0} msg/s handled, {:.0} msg/s committed",
            run.handled.rate(n),
            n as f64 / run.committed.as_secs_f64()
        );
        end_to_end.push(run);

        handler.reset()?;
        let vars = [("SCC_HANDLER_STREAM", "off")];
        let config = sidecar_config(&broker.bootstrap, TOPIC, &format!("bench-batch-{round}"), &endpoint, &vars)?;
        let run = run_sidecar(config.clone(), grpc_handler_for(&config)?, &ends, Some(handler.pid())).await?;
        eprintln!("[bench] throughput: (c) kafka-scc, HandleBatch calls {:.0} msg/s handled", run.handled.rate(n));
        batches.push(run);

        handler.reset()?;
        let vars = [("SCC_HANDLER_STREAM", "off"), ("SCC_HANDLER_BATCH_MAX", "1")];
        let config = sidecar_config(&broker.bootstrap, TOPIC, &format!("bench-unary-{round}"), &endpoint, &vars)?;
        let run = run_sidecar(config.clone(), grpc_handler_for(&config)?, &ends, Some(handler.pid())).await?;
        eprintln!("[bench] throughput: (c) kafka-scc, unary calls only {:.0} msg/s handled", run.handled.rate(n));
        unary.push(run);
    }

    let best = |runs: &[Run]| runs.iter().min_by_key(|run| run.elapsed).expect("at least one round").clone();
    let best_sidecar =
        |runs: &[SidecarRun]| runs.iter().min_by_key(|run| run.committed).expect("at least one round").clone();
    let a = best(&plain_kafka);
    let b = best(&plain_grpc);
    let b2 = best(&grpc_handler);
    let c0 = best_sidecar(&pipeline_only);
    let c = best_sidecar(&end_to_end);
    let c_batches = best_sidecar(&batches);
    let c_unary = best_sidecar(&unary);

    let rate_a = a.rate(n);
    let rate_b = b.rate(n);
    let floor = rate_a.min(rate_b);
    let rate_c_committed = n as f64 / c.committed.as_secs_f64();
    let rate_c_handled = c.handled.rate(n);
    let shared_cpu_bound = 1.0 / (1.0 / rate_a + 1.0 / rate_b);

    let rows = vec![
        Row::new(STAGE, "(a) plain rdkafka BaseConsumer, no handler", rate_a, Unit::MessagesPerSecond),
        Row::new(
            STAGE,
            format!("(b) plain tonic client, {in_flight} in flight, no Kafka"),
            rate_b,
            Unit::MessagesPerSecond,
        ),
        Row::new(STAGE, "(c) kafka-scc, assignment to all committed", rate_c_committed, Unit::MessagesPerSecond)
            .limit("min(a, b)", floor)
            .target(">= 0.80x", rate_c_committed >= 0.8 * floor),
        Row::new(STAGE, "(c) kafka-scc, assignment to all handled", rate_c_handled, Unit::MessagesPerSecond)
            .limit("min(a, b)", floor),
        Row::new(STAGE, "(c) handled, against a and b sharing the CPU", rate_c_handled, Unit::MessagesPerSecond)
            .limit("1 / (1/a + 1/b)", shared_cpu_bound),
        Row::new(
            STAGE,
            "(c) committed, HandleBatch calls (SCC_HANDLER_STREAM=off)",
            n as f64 / c_batches.committed.as_secs_f64(),
            Unit::MessagesPerSecond,
        )
        .limit("min(a, b)", floor),
        Row::new(
            STAGE,
            "CPU per message, (c) HandleBatch calls, both processes",
            c_batches.handled.cpu_per_message_us(n),
            Unit::Microseconds,
        )
        .limit("a + b", a.cpu_per_message_us(n) + b.cpu_per_message_us(n)),
        Row::new(
            STAGE,
            "(c) committed, unary calls only (also SCC_HANDLER_BATCH_MAX=1)",
            n as f64 / c_unary.committed.as_secs_f64(),
            Unit::MessagesPerSecond,
        )
        .limit("min(a, b)", floor),
        Row::new(
            STAGE,
            "CPU per message, (c) unary calls only, both processes",
            c_unary.handled.cpu_per_message_us(n),
            Unit::Microseconds,
        )
        .limit("a + b", a.cpu_per_message_us(n) + b.cpu_per_message_us(n)),
        Row::new(STAGE, "kafka-scc, in-process no-op handler (no gRPC)", c0.handled.rate(n), Unit::MessagesPerSecond)
            .limit("a", rate_a),
        Row::new(
            STAGE,
            format!("kafka-scc GrpcHandler alone (HandleStream), {in_flight} in flight"),
            b2.rate(n),
            Unit::MessagesPerSecond,
        )
        .limit("b", rate_b),
        Row::new(STAGE, "CPU per message, (c), both processes", c.handled.cpu_per_message_us(n), Unit::Microseconds)
            .limit("a + b", a.cpu_per_message_us(n) + b.cpu_per_message_us(n)),
        Row::new(
            STAGE,
            "CPU per message, in-process no-op handler",
            c0.handled.cpu_per_message_us(n),
            Unit::Microseconds,
        )
        .limit("a", a.cpu_per_message_us(n)),
        Row::new(
            STAGE,
            "CPU per message, GrpcHandler alone, both processes",
            b2.cpu_per_message_us(n),
            Unit::Microseconds,
        )
        .limit("b", b.cpu_per_message_us(n)),
        Row::new(STAGE, "group join before (c): start to assignment", c.join.as_secs_f64(), Unit::Seconds),
    ];

    let sidecar_json = |runs: &[SidecarRun]| -> Vec<Value> {
        runs.iter()
            .map(|run| {
                json!({
                    "join_s": run.join.as_secs_f64(),
                    "handled": run.handled.to_json(n),
                    "committed_s": run.committed.as_secs_f64(),
                    "committed_rate_msg_s": n as f64 / run.committed.as_secs_f64(),
                    "bench_process_threads_cpu_ms": run.threads_ms.iter().cloned().collect::<BTreeMap<_, _>>(),
                })
            })
            .collect()
    };
    let details = json!({
        "messages": n,
        "partitions": params.partitions,
        "value_bytes": params.value_size,
        "max_in_flight": in_flight,
        "rounds": params.rounds,
        "produce_s": produce_s,
        "handler": "no-op tonic server in a child process on 127.0.0.1",
        "a_plain_rdkafka": plain_kafka.iter().map(|run| run.to_json(n)).collect::<Vec<_>>(),
        "b_plain_tonic": plain_grpc.iter().map(|run| run.to_json(n)).collect::<Vec<_>>(),
        "grpc_handler_alone": grpc_handler.iter().map(|run| run.to_json(n)).collect::<Vec<_>>(),
        "kafka_scc_noop_in_process": sidecar_json(&pipeline_only),
        "c_kafka_scc": sidecar_json(&end_to_end),
        "c_kafka_scc_batches": sidecar_json(&batches),
        "c_kafka_scc_unary": sidecar_json(&unary),
    });
    print_thread_cpu("(c) kafka-scc", &c.threads_ms);
    print_thread_cpu("kafka-scc, in-process no-op handler", &c0.threads_ms);
    Ok((rows, details))
}

fn print_thread_cpu(run: &str, threads: &[(String, f64)]) {
    let listed: Vec<String> = threads.iter().take(8).map(|(name, ms)| format!("{name} {ms:.0} ms")).collect();
    eprintln!("[bench] throughput: bench-process CPU by thread during {run}: {}", listed.join(", "));
}

fn check_calls(handler: &mut HandlerProcess, expected: u64, run: &str) -> Result<(), String> {
    let calls = handler.report()?.calls;
    if calls != expected {
        return Err(format!("{run}: the handler received {calls} calls; {expected} were made"));
    }
    Ok(())
}

/// (a): reads every record of the topic with a plain `BaseConsumer` that has kafka-scc's
/// librdkafka settings, assigned (no group join) from the beginning.
fn consume_plain(config: &Config, ends: &BTreeMap<i32, i64>) -> Result<Run, String> {
    let consumer: BaseConsumer =
        config.consumer_config().create().map_err(|error| format!("creating the plain consumer failed: {error}"))?;
    let mut list = TopicPartitionList::new();
    for partition in ends.keys() {
        list.add_partition_offset(TOPIC, *partition, Offset::Beginning)
            .map_err(|error| format!("building the assignment failed: {error}"))?;
    }
    let total: i64 = ends.values().sum();
    let cpu = CpuMeter::start(None);
    let started = Instant::now();
    consumer.assign(&list).map_err(|error| format!("assigning the partitions failed: {error}"))?;

    let mut received: i64 = 0;
    let mut payload_bytes: usize = 0;
    while received < total {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(record)) => {
                received += 1;
                payload_bytes += record.payload_len();
            }
            Some(Err(error)) => return Err(format!("(a): the plain consumer failed: {error}")),
            None if started.elapsed() > PHASE_TIMEOUT => {
                return Err(format!("(a): read {received} of {total} records in {PHASE_TIMEOUT:?}"));
            }
            None => {}
        }
    }
    let elapsed = started.elapsed();
    std::hint::black_box(payload_bytes);
    let (bench_cpu_s, _) = cpu.read();
    Ok(Run { elapsed, bench_cpu_s, handler_cpu_s: 0.0 })
}

/// Runs `calls` and measures its time and the CPU of this process and of the handler child.
async fn timed(handler_pid: u32, calls: impl Future<Output = Result<(), String>>) -> Result<Run, String> {
    let cpu = CpuMeter::start(Some(handler_pid));
    let started = Instant::now();
    calls.await?;
    let elapsed = started.elapsed();
    let (bench_cpu_s, handler_cpu_s) = cpu.read();
    Ok(Run { elapsed, bench_cpu_s, handler_cpu_s })
}

/// Succeeds at once: kafka-scc's pipeline and Kafka path without any gRPC.
struct NoopHandler;

impl Handler for NoopHandler {
    async fn handle(&self, _message: &Message, _attempt: u32) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// (c): runs kafka-scc from a fresh group until every offset is committed.
async fn run_sidecar<H: Handler>(
    config: Config,
    handler: H,
    ends: &BTreeMap<i32, i64>,
    handler_pid: Option<u32>,
) -> Result<SidecarRun, String> {
    let total: u64 = ends.values().map(|end| *end as u64).sum();
    let sidecar = RunningSidecar::start(config, handler);
    let assigned = sidecar.wait_assigned(Duration::from_secs(60)).await?;
    let cpu = CpuMeter::start(handler_pid);
    let threads_before = thread_cpu();

    let handled =
        poll_stats_until(&sidecar.stats, PHASE_TIMEOUT, "every message handled", |s| s.handled() >= total).await?;
    let (bench_cpu_s, handler_cpu_s) = cpu.read();
    let threads_ms = thread_cpu_delta(&threads_before, &thread_cpu());
    let committed =
        poll_stats_until(&sidecar.stats, PHASE_TIMEOUT, "every offset committed", |s| all_committed(s, TOPIC, ends))
            .await?;

    let join = assigned - sidecar.started;
    let summary = sidecar.stop().await?;
    if summary.stats.pause_eligible > 0 || summary.stats.non_pausing > 0 {
        return Err(format!("kafka-scc saw handler failures during the throughput run: {:?}", summary.stats));
    }
    Ok(SidecarRun {
        join,
        handled: Run { elapsed: handled - assigned, bench_cpu_s, handler_cpu_s },
        committed: committed - assigned,
        threads_ms,
    })
}
