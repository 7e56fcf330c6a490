//! The example downstream API: takes `POST /events` with a JSON body, answers 200 and counts
//! the events; a body that is not JSON gets 400.
//!
//! ```text
//! cargo run --example api_sink                      # listens on 127.0.0.1:8090
//! cargo run --example api_sink -- --addr 127.0.0.1:9000 --log-every 500
//! SINK_ADDR=127.0.0.1:9000 cargo run --example api_sink
//! curl -d '{"hello":"world"}' http://127.0.0.1:8090/events
//! ```
//!
//! Stop it (Ctrl-C) while kafka-scc is running to watch the gate close, and start it again to
//! watch kafka-scc resume.

#[path = "common/logging.rs"]
mod logging;
#[path = "common/sink.rs"]
mod sink;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use sink::{SinkCounts, SinkOptions};
use tokio::net::TcpListener;

/// Example downstream API for kafka-scc: counts the JSON events posted to /events.
#[derive(Parser, Debug)]
struct Cli {
    /// Address to listen on [env: SINK_ADDR] [default: 127.0.0.1:8090]
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Log a line every this many events (0 for never).
    #[arg(long, default_value_t = 100)]
    log_every: u64,
    /// Simulated work per event, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    logging::init("info");
    let cli = Cli::parse();
    let addr = match cli.addr {
        Some(addr) => addr,
        None => {
            let raw = std::env::var("SINK_ADDR").unwrap_or_else(|_| "127.0.0.1:8090".to_owned());
            match raw.parse::<SocketAddr>() {
                Ok(addr) => addr,
                Err(error) => {
                    eprintln!("api_sink: invalid SINK_ADDR={raw:?}: {error} (expected ip:port)");
                    return ExitCode::from(2);
                }
            }
        }
    };

    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("api_sink: cannot listen on {addr}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let counts = Arc::new(SinkCounts::default());
    let options = SinkOptions { log_every: cli.log_every, delay: Duration::from_millis(cli.delay_ms) };
    println!("api_sink: listening on http://{addr}/events (Ctrl-C to stop)");
    let result = sink::serve_sink(listener, counts.clone(), options, logging::shutdown_signal()).await;
    println!(
        "api_sink: stopped; {} events received ({} distinct records), {} rejected",
        counts.received(),
        counts.distinct(),
        counts.rejected()
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("api_sink: server failed: {error}");
            ExitCode::FAILURE
        }
    }
}
