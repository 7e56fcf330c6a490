//! Sends synthetic JSON order events to Kafka, keyed `customer-<n>`, and waits for every
//! acknowledgement.
//!
//! ```text
//! cargo run --example producer                          # 1000 events to test-topic on localhost:9094
//! cargo run --example producer -- --count 5000 --topic orders --brokers localhost:9092
//! KAFKA_BROKERS=localhost:9092 cargo run --example producer
//! ```

#[path = "common/logging.rs"]
mod logging;
#[path = "common/produce.rs"]
mod produce;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

/// Sends synthetic JSON events to a Kafka topic.
#[derive(Parser, Debug)]
struct Cli {
    /// Number of events to send.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Topic to send to.
    #[arg(long, default_value = "test-topic")]
    topic: String,
    /// Bootstrap servers [env: KAFKA_BROKERS] [default: localhost:9094]
    #[arg(long)]
    brokers: Option<String>,
    /// How long one event may wait for its acknowledgement, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    // librdkafka's connection errors show up as warnings while it retries.
    logging::init("warn");
    let cli = Cli::parse();
    let brokers =
        cli.brokers.or_else(|| std::env::var("KAFKA_BROKERS").ok()).unwrap_or_else(|| "localhost:9094".to_owned());

    println!("producer: sending {} events to {} on {brokers}", cli.count, cli.topic);
    let started = Instant::now();
    let report =
        match produce::produce_events(&brokers, &cli.topic, cli.count, Duration::from_secs(cli.timeout_secs.max(1)))
            .await
        {
            Ok(report) => report,
            Err(error) => {
                eprintln!("producer: {error}");
                return ExitCode::FAILURE;
            }
        };
    let per_partition: Vec<String> =
        report.per_partition.iter().map(|(partition, count)| format!("{partition}:{count}")).collect();
    println!(
        "producer: sent {} events to {} in {:.2?} (per partition {})",
        report.acknowledged,
        cli.topic,
        started.elapsed(),
        per_partition.join(" ")
    );
    if report.failed > 0 {
        eprintln!(
            "producer: {} events failed; first error: {}",
            report.failed,
            report.first_error.as_deref().unwrap_or("unknown")
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
