//! The performance benchmark: `cargo run --release --example bench`.
//!
//! A sidecar sits on every message's path, so its cost is judged against the two costs it
//! cannot avoid: reading from Kafka and one gRPC call per message. Every stage measures those
//! limits and kafka-scc in the same run on the same machine and reports ratios, which stay
//! meaningful on a noisy machine where absolute rates do not.
//!
//! Stages (`--only STAGE[,STAGE…]` runs a subset):
//! - `throughput`: no-op handler; plain rdkafka, plain tonic and kafka-scc end to end.
//! - `ordering`: 1 partition, distinct keys, a seeded 0-5 ms sleep per message; the three
//!   processing orders against their lower bounds.
//! - `memory`: the `kafka-scc` binary in a child process facing a large backlog and a slow
//!   handler. It reports the peak resident memory with and without smaller librdkafka queues.
//! - `latency`: a producer paced at 1,000 records per second; produce-to-receipt percentiles
//!   for kafka-scc and for a plain rdkafka consumer.
//! - `micro`: per-message cost of the commit tracker and the lane scheduler at 1,000 and
//!   100,000 pending offsets (criterion versions: `cargo bench --bench core`).
//!
//! The broker is librdkafka's mock cluster in this process, on 127.0.0.1. The handler is a
//! tonic server in a child process (this binary started with the hidden `handler`
//! subcommand), and `bench/handler.rs` explains why. The table goes to standard output,
//! progress to standard error, the JSON results to `target/bench/results.json` (or `--output`)
//! and the table in Markdown next to it, with the extension `.md`.

#[path = "bench/calls.rs"]
mod calls;
#[path = "bench/handler.rs"]
mod handler;
#[path = "bench/latency.rs"]
mod latency;
#[path = "common/logging.rs"]
mod logging;
#[path = "bench/memory.rs"]
mod memory;
#[path = "bench/micro.rs"]
mod micro;
#[path = "bench/micro_stage.rs"]
mod micro_stage;
#[path = "bench/ordering.rs"]
mod ordering;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/support.rs"]
mod support;
#[path = "bench/throughput.rs"]
mod throughput;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use report::{Document, Machine, Row};

/// Measures kafka-scc against plain rdkafka and plain tonic on this machine.
#[derive(Parser, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Internal>,

    /// Stages to run, comma-separated; all when omitted.
    #[arg(long, value_delimiter = ',', value_name = "STAGE")]
    only: Vec<Stage>,

    /// Path of the JSON results file; `target/bench/results.json` by default.
    #[arg(long, value_name = "PATH")]
    output: Option<PathBuf>,

    /// Divides every message count by 10 and shortens the latency run to 2 s, for a quick check
    /// that the stages run. The figures are then not comparable with the targets.
    #[arg(long)]
    quick: bool,

    /// Rounds of the throughput runs; each throughput figure is the best round.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10))]
    rounds: u32,
}

#[derive(Subcommand, Debug)]
enum Internal {
    /// Serves the benchmark's gRPC handler; started by the bench itself.
    #[command(hide = true)]
    Handler(handler::HandlerArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Stage {
    Throughput,
    Ordering,
    Memory,
    Latency,
    Micro,
}

impl Stage {
    const ALL: [Stage; 5] = [Stage::Throughput, Stage::Ordering, Stage::Memory, Stage::Latency, Stage::Micro];

    fn name(self) -> &'static str {
        match self {
            Stage::Throughput => "throughput",
            Stage::Ordering => "ordering",
            Stage::Memory => "memory",
            Stage::Latency => "latency",
            Stage::Micro => "micro",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Internal::Handler(args)) = cli.command {
        return handler::run_child(args);
    }
    logging::init("warn,librdkafka=error");

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bench: starting the async runtime failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(cli));
    runtime.shutdown_background();
    code
}

async fn run(cli: Cli) -> ExitCode {
    let started = Instant::now();
    let started_at = report::command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]);
    let load_at_start = report::load_average();
    let build_profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    if build_profile == "debug" {
        eprintln!("[bench] WARNING: this is a debug build; run with --release for meaningful figures");
    }
    eprintln!("[bench] load average at start: {load_at_start} (figures are noisy when it is high)");

    let stages: Vec<Stage> = if cli.only.is_empty() { Stage::ALL.to_vec() } else { cli.only.clone() };
    let scale = if cli.quick { 10 } else { 1 };
    let mut rows: Vec<Row> = Vec::new();
    let mut details: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut failed = false;

    // Built before any stage runs, so that a compile does not land inside a measurement.
    let mut binary = None;
    if stages.contains(&Stage::Memory) {
        let build_started = Instant::now();
        match memory::build_binary().await {
            Ok(path) => binary = Some(path),
            Err(error) => {
                failed = true;
                eprintln!("[bench] {error}");
            }
        }
        details.insert("kafka_scc_build_s".to_owned(), build_started.elapsed().as_secs_f64().into());
    }

    for stage in Stage::ALL.into_iter().filter(|stage| stages.contains(stage)) {
        let stage_started = Instant::now();
        eprintln!("[bench] stage {} starting", stage.name());
        let outcome = match stage {
            Stage::Throughput => {
                let params = throughput::Params {
                    messages: 200_000 / scale,
                    partitions: 8,
                    value_size: 1024,
                    rounds: cli.rounds as usize,
                };
                throughput::run(&params).await
            }
            Stage::Ordering => ordering::run(&ordering::Params { messages: 10_000 / scale, max_sleep_us: 5_000 }).await,
            Stage::Memory => match &binary {
                Some(binary) => {
                    let params = memory::Params { messages: 1_000_000 / scale, partitions: 8, value_size: 1024 };
                    memory::run(&params, binary).await
                }
                None => Err("the kafka-scc binary could not be built".to_owned()),
            },
            Stage::Latency => {
                latency::run(&latency::Params { rate_per_s: 1_000, seconds: if cli.quick { 2 } else { 8 } }).await
            }
            Stage::Micro => micro_stage::run().await,
        };
        let took = stage_started.elapsed().as_secs_f64();
        match outcome {
            Ok((stage_rows, mut stage_details)) => {
                if let Some(object) = stage_details.as_object_mut() {
                    object.insert("stage_duration_s".to_owned(), took.into());
                }
                rows.extend(stage_rows);
                details.insert(stage.name().to_owned(), stage_details);
                eprintln!("[bench] stage {} finished in {took:.1} s", stage.name());
            }
            Err(error) => {
                failed = true;
                eprintln!("[bench] stage {} FAILED after {took:.1} s: {error}", stage.name());
                details.insert(stage.name().to_owned(), serde_json::json!({ "error": error }));
            }
        }
    }

    let duration_s = started.elapsed().as_secs_f64();
    println!();
    report::print_table(&rows);
    let judged: Vec<&Row> = rows.iter().filter(|row| row.met.is_some()).collect();
    let met = judged.iter().filter(|row| row.met == Some(true)).count();
    println!();
    println!("targets met: {met} of {}; benchmark took {duration_s:.0} s", judged.len());
    if cli.quick {
        println!("--quick: message counts were divided by 10, so the figures cannot be judged against the targets");
    }

    let document = Document {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started_at,
        duration_s,
        git_commit: git_commit(),
        build_profile,
        machine: Machine::read(),
        load_average_at_start: load_at_start,
        load_average_at_end: report::load_average(),
        rows,
        details,
    };
    let output = cli
        .output
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("bench").join("results.json"));
    let markdown = output.with_extension("md");
    let written = document.write(&output).and_then(|()| {
        std::fs::write(&markdown, report::markdown_table(&document.rows))
            .map_err(|error| format!("writing {} failed: {error}", markdown.display()))
    });
    match written {
        Ok(()) => println!("results written to {} (table also in {})", output.display(), markdown.display()),
        Err(error) => {
            eprintln!("bench: {error}");
            failed = true;
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Returns the checked-out commit, with `-dirty` when the work tree has changes.
fn git_commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let commit = report::command_output("git", &["-C", dir, "rev-parse", "--short", "HEAD"]);
    let dirty =
        !report::command_output("git", &["-C", dir, "status", "--porcelain", "--untracked-files=no"]).is_empty();
    if dirty { format!("{commit}-dirty") } else { commit }
}
