//! The example handler: a gRPC `MessageHandler` that posts every record it gets from kafka-scc
//! to the downstream API (see `api_sink`) as JSON.
//!
//! ```text
//! cargo run --example handler_server      # gRPC on 127.0.0.1:50051, posts to 127.0.0.1:8090
//! HANDLER_ADDR=127.0.0.1:50052 SINK_URL=http://127.0.0.1:9000/events \
//!     cargo run --example handler_server
//! ```
//!
//! Environment: `HANDLER_ADDR` (default `127.0.0.1:50051`), `SINK_URL` (default
//! `http://127.0.0.1:8090/events`), `SINK_TIMEOUT_MS` (default 5000: the bound on one POST,
//! keep it below kafka-scc's `SCC_HANDLER_TIMEOUT_MS`), `RUST_LOG` (default `info`).
//!
//! When the sink cannot be reached, times out or answers 5xx, the handler answers UNAVAILABLE,
//! so kafka-scc closes its gate and retries; a 4xx answer becomes INVALID_ARGUMENT, which
//! kafka-scc logs and commits.

#[path = "common/handler.rs"]
mod handler;
#[path = "common/logging.rs"]
mod logging;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use handler::SinkForwarder;
use tokio::net::TcpListener;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> ExitCode {
    logging::init("info");
    let addr_raw = env_or("HANDLER_ADDR", "127.0.0.1:50051");
    let Ok(addr) = addr_raw.parse::<SocketAddr>() else {
        eprintln!("handler_server: invalid HANDLER_ADDR={addr_raw:?}: expected ip:port");
        return ExitCode::from(2);
    };
    let sink_url = env_or("SINK_URL", "http://127.0.0.1:8090/events");
    let timeout_raw = env_or("SINK_TIMEOUT_MS", "5000");
    let timeout = match timeout_raw.parse::<u64>() {
        Ok(ms) if ms > 0 => Duration::from_millis(ms),
        _ => {
            eprintln!(
                "handler_server: invalid SINK_TIMEOUT_MS={timeout_raw:?}: expected a positive number of milliseconds"
            );
            return ExitCode::from(2);
        }
    };
    let service = match SinkForwarder::new(&sink_url, timeout) {
        Ok(service) => service,
        Err(error) => {
            eprintln!("handler_server: {error}");
            return ExitCode::from(2);
        }
    };
    let counts = service.counts();

    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("handler_server: cannot listen on {addr}: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "handler_server: gRPC MessageHandler on {addr}, forwarding to {sink_url} (timeout {} ms); Ctrl-C to stop",
        timeout.as_millis()
    );
    let result = handler::serve_handler(service, listener, logging::shutdown_signal()).await;
    println!(
        "handler_server: stopped; {} forwarded, {} answered UNAVAILABLE, {} rejected",
        counts.forwarded(),
        counts.unavailable(),
        counts.rejected()
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("handler_server: server failed: {error}");
            ExitCode::FAILURE
        }
    }
}
