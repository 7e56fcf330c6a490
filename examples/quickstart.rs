//! The one-command demo: `cargo run --release --example quickstart`.
//!
//! Everything runs in this process, on loopback: an embedded Kafka (librdkafka's mock
//! cluster), the example API sink, the example gRPC handler, and kafka-scc itself. The demo
//! produces events, lets kafka-scc forward them through the handler to the sink, takes the sink
//! down for a few seconds in the middle, and shows kafka-scc pausing, retrying with backoff and
//! resuming by itself. It exits 0 only when every produced event reached the sink and every
//! partition's committed offset reached its end offset.
//!
//! Options: `--count N` (default 2000), `--outage-ms MS` (default 3000), `--sink-delay-ms MS`
//! (simulated work per event in the sink, default 2). `RUST_LOG` filters the logs; the default,
//! `info,librdkafka=warn,quickstart::handler=error`, hides the handler's own line per failed
//! call because kafka-scc logs the same failure (with topic, partition, offset and trace id).

#[path = "common/handler.rs"]
mod handler;
#[path = "common/logging.rs"]
mod logging;
#[path = "common/produce.rs"]
mod produce;
#[path = "common/sink.rs"]
mod sink;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use handler::SinkForwarder;
use kafka_scc::{Config, GrpcHandler, Sidecar, Stats};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sink::{SinkCounts, SinkOptions, SinkServer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const TOPIC: &str = "test-topic";
const PARTITIONS: i32 = 4;
const GROUP: &str = "quickstart";
/// Bound on waiting for every offset to be committed; reaching it fails the demo.
const COMMIT_DEADLINE: Duration = Duration::from_secs(45);

/// kafka-scc quickstart: embedded Kafka, example handler and sink, and an outage in the middle.
#[derive(Parser, Debug)]
struct Cli {
    /// Events to produce.
    #[arg(long, default_value_t = 2000)]
    count: u64,
    /// How long the sink stays down, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    outage_ms: u64,
    /// Simulated work per event in the sink, in milliseconds.
    #[arg(long, default_value_t = 2)]
    sink_delay_ms: u64,
}

/// Prints a progress line for the reader, on stdout (logs go to stderr).
macro_rules! say {
    ($($arg:tt)*) => { say(format_args!($($arg)*)) };
}

fn say(line: std::fmt::Arguments<'_>) {
    println!("[quickstart] {line}");
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init("info,librdkafka=warn,quickstart::handler=error");
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            say!("FAILED: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<bool, String> {
    let started = Instant::now();
    let count = cli.count.max(1);

    // 1. An embedded Kafka: librdkafka's mock cluster, listening on a free loopback port.
    let cluster = MockCluster::new(1).map_err(|e| format!("starting the mock cluster: {e}"))?;
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic(TOPIC, PARTITIONS, 1).map_err(|e| format!("creating {TOPIC}: {e}"))?;
    say!("embedded Kafka (librdkafka mock cluster) at {brokers}; topic {TOPIC} with {PARTITIONS} partitions");

    // 2. The events.
    let produced = produce::produce_events(&brokers, TOPIC, count, Duration::from_secs(10))
        .await
        .map_err(|e| format!("creating the producer: {e}"))?;
    if produced.failed > 0 {
        return Err(format!(
            "{} of {count} events were not acknowledged: {}",
            produced.failed,
            produced.first_error.unwrap_or_default()
        ));
    }
    let end_offsets = {
        let brokers = brokers.clone();
        tokio::task::spawn_blocking(move || end_offsets(&brokers)).await.map_err(|e| e.to_string())??
    };
    let produce_took = started.elapsed();
    say!(
        "produced {} events keyed customer-0..{} in {:.1?}; end offsets {}",
        produced.acknowledged,
        produce::CUSTOMERS - 1,
        produce_took,
        describe(&end_offsets)
    );

    // 3. The downstream API and the handler, each on a free loopback port.
    let sink_counts = Arc::new(SinkCounts::default());
    let sink_options = SinkOptions { log_every: 0, delay: Duration::from_millis(cli.sink_delay_ms) };
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let sink = sink::start_sink(any_port, sink_counts.clone(), sink_options.clone())
        .await
        .map_err(|e| format!("starting the sink: {e}"))?;
    let forwarder = SinkForwarder::new(&sink.url(), Duration::from_secs(2))?;
    let forwarder_counts = forwarder.counts();
    let listener = TcpListener::bind(any_port).await.map_err(|e| format!("binding the handler port: {e}"))?;
    let handler_server =
        handler::start_handler(forwarder, listener).map_err(|e| format!("starting the handler: {e}"))?;
    say!("api sink on {}; gRPC handler on {}", sink.url(), handler_server.endpoint());

    // 4. kafka-scc, configured the way the binary reads its environment.
    let endpoint = handler_server.endpoint();
    let vars = [
        ("KAFKA_BROKERS", brokers.as_str()),
        ("KAFKA_GROUP_ID", GROUP),
        ("SCC_HTTP_ADDR", "127.0.0.1:0"),
        ("KAFKA_TOPIC", TOPIC),
        ("HANDLER_ENDPOINT", endpoint.as_str()),
        ("SCC_MAX_IN_FLIGHT", "16"),
        ("SCC_COMMIT_INTERVAL_MS", "100"),
        ("SCC_BACKOFF_BASE_MS", "200"),
        ("SCC_BACKOFF_MAX_MS", "2000"),
        ("SCC_HANDLER_TIMEOUT_MS", "5000"),
        ("SCC_SHUTDOWN_TIMEOUT_MS", "5000"),
        ("KAFKA_CFG_SESSION_TIMEOUT_MS", "6000"),
        ("KAFKA_CFG_HEARTBEAT_INTERVAL_MS", "500"),
    ];
    let config = Config::from_vars(vars).map_err(|e| e.to_string())?;
    let grpc = GrpcHandler::from_config(&config).map_err(|e| format!("handler endpoint: {e}"))?;
    let sidecar = Sidecar::new(config, grpc);
    let stats = sidecar.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let consume_started = Instant::now();
    let deadline = consume_started + COMMIT_DEADLINE;
    let mut run = tokio::spawn(sidecar.run(async {
        let _ = stopped.await;
    }));
    say!(
        "kafka-scc started: joining group {GROUP} (the broker waits about 3 s for more members before the first \
         assignment)"
    );

    let progress = tokio::spawn(report_progress(stats.clone(), sink_counts.clone(), count));
    let outage = tokio::spawn(take_sink_down(
        stats.clone(),
        sink,
        sink_counts.clone(),
        sink_options,
        count,
        Duration::from_millis(cli.outage_ms),
        deadline,
    ));

    // 5. Wait until every partition's committed offset reached its end offset.
    let all_committed = stats.wait_until(COMMIT_DEADLINE, |s| {
        end_offsets.iter().all(|(p, end)| caught_up(s.committed_offset(TOPIC, *p), *end))
    });
    let done = tokio::select! {
        done = all_committed => done,
        ended = &mut run => {
            progress.abort();
            outage.abort();
            return Err(match ended {
                Ok(Ok(summary)) => format!("kafka-scc stopped on its own: {:?}", summary.report),
                Ok(Err(error)) => error.to_string(),
                Err(error) => error.to_string(),
            });
        }
    };
    let consume_took = consume_started.elapsed();
    progress.abort();
    match &done {
        Ok(_) => say!("every partition committed up to its end offset after {consume_took:.1?}"),
        Err(_) => say!("gave up waiting for the commits after {consume_took:.1?}"),
    }
    let outage = outage.await.map_err(|e| e.to_string())?;

    // 6. Shut down, in order: kafka-scc first, then the handler and the sink.
    let shutdown_started = Instant::now();
    let _ = stop.send(());
    let summary = run.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    let shutdown_took = shutdown_started.elapsed();
    handler_server.stop(Duration::from_secs(2)).await;
    if let Some(sink) = outage.sink {
        sink.stop(Duration::from_secs(2)).await;
    }
    let committed = {
        let brokers = brokers.clone();
        tokio::task::spawn_blocking(move || committed_offsets(&brokers)).await.map_err(|e| e.to_string())??
    };
    drop(cluster);

    // 7. The summary.
    let stats = summary.stats;
    let missing = missing_at_sink(&sink_counts, &end_offsets);
    let received = sink_counts.received();
    let mut problems = Vec::new();
    if stats.handled() < count {
        problems.push(format!("kafka-scc handled {} of {count} events", stats.handled()));
    }
    if stats.non_pausing > 0 {
        problems.push(format!(
            "{} events were rejected by the handler (committed without reaching the sink)",
            stats.non_pausing
        ));
    }
    for (partition, end) in &end_offsets {
        let got = committed.get(partition).copied().flatten();
        if !caught_up(got, *end) {
            problems.push(format!(
                "partition {partition}: committed {} but the end offset is {end}",
                got.map_or("nothing".to_owned(), |o| o.to_string())
            ));
        }
    }
    if !missing.is_empty() {
        problems.push(format!(
            "{} events never reached the sink, e.g. {}",
            missing.len(),
            missing.iter().take(10).map(|(p, o)| format!("{p}@{o}")).collect::<Vec<_>>().join(", ")
        ));
    }
    if received < count {
        problems.push(format!("the sink received {received} < {count} events"));
    }
    if let Some(fatal) = stats.fatal_error.as_ref().or(summary.report.fatal_error.as_ref()) {
        problems.push(format!("the consumer hit a fatal error: {fatal}"));
    }
    if summary.report.poll_thread_stopped {
        problems.push("the Kafka poll thread stopped before the shutdown".to_owned());
    }

    println!();
    println!("================ kafka-scc quickstart summary ================");
    println!("messages produced        {count}");
    println!(
        "handled by kafka-scc     {} ({} succeeded, {} rejected by the handler)",
        stats.handled(),
        stats.succeeded,
        stats.non_pausing
    );
    println!("handler calls retried    {} (pause-eligible failures: UNAVAILABLE or no answer)", stats.pause_eligible);
    println!(
        "gate closures            {}{}",
        stats.gate_closures,
        outage.gate_closed_for.map(|d| format!(" (closed for {:.1?})", d)).unwrap_or_default()
    );
    println!(
        "handler answered         {} OK, {} UNAVAILABLE, {} rejected",
        forwarder_counts.forwarded(),
        forwarder_counts.unavailable(),
        forwarder_counts.rejected()
    );
    if stats.commit_failures > 0 {
        println!("commit failures          {} (retried)", stats.commit_failures);
    }
    println!(
        "api sink received        {received} events, {} distinct records ({} redelivered: at-least-once)",
        sink_counts.distinct(),
        received.saturating_sub(sink_counts.distinct())
    );
    println!("committed offsets        partition  committed  end offset");
    for (partition, end) in &end_offsets {
        let got = committed.get(partition).copied().flatten();
        println!(
            "                         {partition:<9}  {:<9}  {end}{}",
            got.map_or("-".to_owned(), |o| o.to_string()),
            if caught_up(got, *end) { "" } else { "  <- behind" }
        );
    }
    println!(
        "shutdown                 {:.1?} (consumer closed: {}, final commit done: {})",
        shutdown_took, summary.consumer_closed, summary.report.final_commit_done
    );
    println!(
        "elapsed                  {:.1?} total (produce {:.1?}, consume {:.1?})",
        started.elapsed(),
        produce_took,
        consume_took
    );
    if problems.is_empty() {
        println!("result                   OK: every produced event was handled, delivered and committed");
        Ok(true)
    } else {
        println!("result                   FAILED:");
        for problem in &problems {
            println!("                         - {problem}");
        }
        Ok(false)
    }
}

/// Announces the partition assignment, then prints a progress line every second.
async fn report_progress(stats: Arc<Stats>, sink: Arc<SinkCounts>, count: u64) {
    let joining = Instant::now();
    if let Ok(s) = stats.wait_until(COMMIT_DEADLINE, |s| !s.assigned.is_empty()).await {
        let partitions: Vec<String> = s.assigned.iter().map(ToString::to_string).collect();
        say!(
            "partitions {} assigned after {:.1?}; kafka-scc is handling events",
            partitions.join(","),
            joining.elapsed()
        );
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let s = stats.snapshot();
        let committed: i64 = s.committed.values().sum();
        say!(
            "progress: handled {}/{count}, committed {committed}, sink received {}, retried {}, gate {}",
            s.handled(),
            sink.received(),
            s.pause_eligible,
            if s.gate_open { "open" } else { "CLOSED" }
        );
    }
}

/// What happened during the outage.
struct Outage {
    /// The sink as it runs after the outage (`None` if it could not be restarted).
    sink: Option<SinkServer>,
    gate_closed_for: Option<Duration>,
}

/// Once a third of the events is handled, stops the sink for `outage`, then starts it again on
/// the same port and waits, until `deadline` at most, for kafka-scc to resume.
async fn take_sink_down(
    stats: Arc<Stats>,
    sink: SinkServer,
    counts: Arc<SinkCounts>,
    options: SinkOptions,
    count: u64,
    outage: Duration,
    deadline: Instant,
) -> Outage {
    let remaining = || deadline.saturating_duration_since(Instant::now());
    let third = count / 3;
    let at = match stats.wait_until(remaining(), |s| s.handled() >= third).await {
        Ok(s) => s,
        Err(s) => {
            say!("only {} events handled; not taking the sink down", s.handled());
            return Outage { sink: Some(sink), gate_closed_for: None };
        }
    };
    let addr = sink.addr();
    say!("{}/{count} handled: taking the api sink DOWN for {:.1?}", at.handled(), outage);
    sink.stop(Duration::from_secs(2)).await;
    let down_since = Instant::now();

    let closed = stats.wait_until(outage, |s| !s.gate_open || s.handled() >= count).await;
    let mut gate_closed_at = None;
    match closed {
        Ok(s) if !s.gate_open => {
            gate_closed_at = Some(Instant::now());
            say!(
                "gate CLOSED after {} ms: the handler answers UNAVAILABLE, kafka-scc paused fetching and retries one message with backoff (200 ms doubling up to 2 s)",
                down_since.elapsed().as_millis()
            );
        }
        Ok(_) => say!("everything was handled before the sink went down; nothing to retry"),
        Err(_) => say!("the gate did not close during the outage (no messages were in flight)"),
    }

    tokio::time::sleep_until((down_since + outage).into()).await;
    let mut restarted = None;
    for attempt in 1..=20 {
        match sink::start_sink(addr, counts.clone(), options.clone()).await {
            Ok(sink) => {
                restarted = Some(sink);
                break;
            }
            Err(error) if attempt < 20 => {
                say!("restarting the sink on {addr} failed ({error}); trying again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => say!("restarting the sink on {addr} failed: {error}"),
        }
    }
    if restarted.is_none() {
        return Outage { sink: None, gate_closed_for: None };
    }
    let back_at = Instant::now();
    say!("api sink back UP on {addr}; waiting for kafka-scc's next retry probe");

    let mut gate_closed_for = None;
    if let Some(closed_at) = gate_closed_at {
        match stats.wait_until(remaining(), |s| s.gate_open).await {
            Ok(s) => {
                gate_closed_for = Some(closed_at.elapsed());
                say!(
                    "gate OPEN again {} ms after the sink came back: a retry succeeded, kafka-scc resumed by itself ({} handled so far, {} retries)",
                    back_at.elapsed().as_millis(),
                    s.handled(),
                    s.pause_eligible
                );
            }
            Err(_) => say!("the gate did not open again"),
        }
    }
    Outage { sink: restarted, gate_closed_for }
}

/// The end (high watermark) offset of every partition of the topic.
fn end_offsets(brokers: &str) -> Result<BTreeMap<i32, i64>, String> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).create().map_err(|e| e.to_string())?;
    (0..PARTITIONS)
        .map(|p| {
            consumer
                .fetch_watermarks(TOPIC, p, Duration::from_secs(10))
                .map(|(_, high)| (p, high))
                .map_err(|e| format!("reading the end offset of partition {p}: {e}"))
        })
        .collect()
}

/// The group's committed offsets, as the broker has them.
fn committed_offsets(brokers: &str) -> Result<BTreeMap<i32, Option<i64>>, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", GROUP)
        .create()
        .map_err(|e| e.to_string())?;
    let mut list = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        list.add_partition(TOPIC, partition);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .map_err(|e| format!("reading the committed offsets: {e}"))?;
    Ok(committed
        .elements()
        .iter()
        .map(|element| {
            let offset = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            (element.partition(), offset)
        })
        .collect())
}

/// Whether a committed offset (`None`: nothing committed) covers a partition up to `end`.
fn caught_up(committed: Option<i64>, end: i64) -> bool {
    committed.unwrap_or(0) == end
}

/// Records `(partition, offset)` below the end offsets that the sink never received.
fn missing_at_sink(sink: &SinkCounts, end_offsets: &BTreeMap<i32, i64>) -> Vec<(i32, i64)> {
    end_offsets
        .iter()
        .flat_map(|(p, end)| (0..*end).map(move |o| (*p, o)))
        .filter(|(p, o)| !sink.contains(TOPIC, i64::from(*p), *o))
        .collect()
}

fn describe(offsets: &BTreeMap<i32, i64>) -> String {
    offsets.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(" ")
}
