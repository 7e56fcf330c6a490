//! The `kafka-scc` binary: reads the configuration from the environment and the optional
//! `--config` file, connects to Kafka and the handlers, and runs until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kafka_scc::config::{self, Loaded};
use kafka_scc::{Sidecar, handler, telemetry};
use tracing::{error, info};

/// Exit code for invalid configuration.
const EXIT_INVALID_CONFIG: u8 = 2;

const CONFIGURATION_HELP: &str = "\
Configuration comes from the environment and, with --config, from a TOML file. The example
file examples/kafka-scc.toml, in the image /usr/share/doc/kafka-scc/kafka-scc.toml, lists every
key. An environment variable overrides the file key of the same setting. The variables:
  KAFKA_BROKERS            bootstrap servers (default localhost:9094)
  KAFKA_GROUP_ID           consumer group (default event-processor-group)
  KAFKA_TOPIC              topic, or a comma list of topics (required)
  HANDLER_ENDPOINT         handler gRPC address: http://host:port, https://host:port or
                           unix:///absolute/path (default http://127.0.0.1:50051)
  HANDLER_TLS_CA           PEM file of the CA that signs the handler's certificate, for https://
                           (default: the system's root certificates)
  HANDLER_TLS_CERT, HANDLER_TLS_KEY
                           PEM files of the client certificate and its unencrypted key, for
                           mutual TLS; both or neither
  HANDLER_TLS_SERVER_NAME  name checked in the handler's certificate (default: the endpoint's host)
  SCC_HANDLER_MAX_MESSAGE_BYTES
                           largest request sent to the handler, in bytes (default 4194304); a larger
                           message is not sent and is committed as non-pausing. At least
                           max.partition.fetch.bytes + 65536; the handler must accept this size
  SCC_HANDLER_BATCH_MAX    maximum records per HandleBatch call, 1 to 10000 (default 64); 1 sends
                           every message with Handle, as kafka-scc does anyway for a handler
                           without HandleBatch
  SCC_MAX_IN_FLIGHT        records in handler calls at once (default 100)
  SCC_PROCESSING_ORDER     key, partition or unordered (default key)
  SCC_PAUSE_CODES          gRPC codes that pause and retry (default UNAVAILABLE,DEADLINE_EXCEEDED,
                           RESOURCE_EXHAUSTED,ABORTED,UNIMPLEMENTED,UNAUTHENTICATED,PERMISSION_DENIED)
  SCC_BACKOFF_BASE_MS      first retry delay ceiling in ms (default 500)
  SCC_BACKOFF_MAX_MS       retry delay cap in ms (default 10000)
  SCC_HANDLER_TIMEOUT_MS   deadline of one handler call in ms (default 30000)
  SCC_SHUTDOWN_TIMEOUT_MS  bound on shutdown in ms (default 25000)
  SCC_COMMIT_INTERVAL_MS   commit interval in ms (default 500)
  SCC_COMMIT_UNHEALTHY_AFTER_MS
                           report commits as failing after this long in ms (default 30000)
  SCC_REVOKE_TIMEOUT_MS    wait for in-flight calls on revocation in ms (default 10000)
  SCC_PARTITION_BUFFER     fetched messages held per partition (default 1000)
  SCC_HANDLER_READY_TIMEOUT_MS
                           wait for the handler's health service in ms (default 30000)
  SCC_HTTP_ADDR            /metrics, /healthz and /readyz listener, or off (default 0.0.0.0:9464)
  SCC_LOG_FORMAT           text or json (default text); filter with RUST_LOG
  SCC_DLQ_TOPIC            dead-letter topic for non-pausing failures (default unset: log and commit)
  SCC_DLQ_TIMEOUT_MS       bound on one dead-letter produce in ms (default 30000)
  KAFKA_CFG_<NAME>         any librdkafka property, e.g. KAFKA_CFG_SECURITY_PROTOCOL=sasl_ssl,
                           KAFKA_CFG_SASL_MECHANISMS=SCRAM-SHA-512, KAFKA_CFG_SSL_CA_LOCATION=/ca.pem;
                           passwords, secrets and private keys are never printed";

/// Kafka consumer sidecar: forwards each message to a gRPC handler and commits offsets in order.
#[derive(Parser, Debug)]
#[command(version, about, after_help = CONFIGURATION_HELP)]
struct Cli {
    /// Read settings from this TOML file; environment variables override its keys.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Validate the configuration, print it with secrets redacted, and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("kafka-scc: {error}");
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
    };
    if cli.check_config {
        println!("{}", loaded.summary());
        return ExitCode::SUCCESS;
    }
    telemetry::init_logging(loaded.config.log_format);

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kafka-scc: starting the async runtime failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(loaded));
    // The consumer may still be closing on its own thread after a timed-out shutdown; the
    // process exits without waiting for it.
    runtime.shutdown_background();
    code
}

async fn run(Loaded { config, routes }: Loaded) -> ExitCode {
    let handler = match handler::connect_grpc(&config, &routes) {
        Ok(handler) => handler,
        Err(error) => {
            eprintln!("kafka-scc: {error}");
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
    };
    if !routes.is_empty() {
        info!(routes = %routes.summary(), "topics with their own handler endpoint");
    }

    match Sidecar::new(config, handler).run(shutdown_signal()).await {
        Ok(summary) if summary.report.poll_thread_stopped || summary.report.fatal_error.is_some() => ExitCode::FAILURE,
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            error!(%error, "kafka-scc failed to start");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                error!(%error, "installing the SIGTERM handler failed; only SIGINT stops kafka-scc");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
