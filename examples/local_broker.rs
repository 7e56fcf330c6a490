//! A local Kafka-protocol broker for trying kafka-scc without a Kafka installation.
//!
//! It hosts librdkafka's mock cluster on loopback, creates the requested topics, prints the
//! bootstrap address and runs until SIGTERM or SIGINT. The mock cluster keeps everything in
//! memory: topics, records and committed offsets are gone when it stops. It listens on an
//! ephemeral port, so scripts read the address from standard output or from `--bootstrap-file`.
//!
//! ```sh
//! cargo run --example local_broker -- --topic payments:8 --bootstrap-file /tmp/bootstrap
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rdkafka::mocking::MockCluster;

/// Runs librdkafka's in-memory mock Kafka cluster on loopback.
#[derive(Parser, Debug)]
struct Args {
    /// Topic to create, as NAME or NAME:PARTITIONS (default 1 partition); repeat for more.
    #[arg(long = "topic", value_name = "NAME[:PARTITIONS]")]
    topics: Vec<String>,

    /// Number of brokers in the cluster.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=16))]
    brokers: i32,

    /// File to write the bootstrap address to, once the topics exist.
    #[arg(long, value_name = "PATH")]
    bootstrap_file: Option<PathBuf>,
}

fn parse_topic(spec: &str) -> Result<(String, i32), String> {
    let (name, partitions) = match spec.split_once(':') {
        Some((name, partitions)) => (name, partitions),
        None => (spec, "1"),
    };
    let partitions: i32 = partitions.parse().ok().filter(|count| (1..=10_000).contains(count)).ok_or_else(|| {
        format!("invalid --topic {spec:?}: expected NAME or NAME:PARTITIONS with 1 to 10000 partitions")
    })?;
    if name.is_empty() {
        return Err(format!("invalid --topic {spec:?}: the topic name is empty"));
    }
    Ok((name.to_owned(), partitions))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut topics = Vec::new();
    for spec in &args.topics {
        match parse_topic(spec) {
            Ok(topic) => topics.push(topic),
            Err(message) => {
                eprintln!("local_broker: {message}");
                return ExitCode::from(2);
            }
        }
    }

    let cluster = match MockCluster::new(args.brokers) {
        Ok(cluster) => cluster,
        Err(error) => {
            eprintln!("local_broker: starting the mock cluster failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    for (name, partitions) in &topics {
        if let Err(error) = cluster.create_topic(name, *partitions, 1) {
            eprintln!("local_broker: creating topic {name} failed: {error}");
            return ExitCode::FAILURE;
        }
    }

    let bootstrap = cluster.bootstrap_servers();
    if let Some(path) = &args.bootstrap_file
        && let Err(error) = std::fs::write(path, &bootstrap)
    {
        eprintln!("local_broker: writing {} failed: {error}", path.display());
        return ExitCode::FAILURE;
    }
    let created: Vec<String> = topics.iter().map(|(name, partitions)| format!("{name}:{partitions}")).collect();
    println!("{bootstrap}");
    eprintln!("local_broker: listening on {bootstrap}; topics {}; stop with Ctrl-C", created.join(","));

    wait_for_stop().await;
    eprintln!("local_broker: stopping");
    drop(cluster);
    ExitCode::SUCCESS
}

/// Completes on SIGTERM or SIGINT.
async fn wait_for_stop() {
    let interrupt = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = interrupt => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = interrupt.await;
        }
    }
}
