//! The example handler: a gRPC `MessageHandler` that posts every record it gets from kafka-scc
//! to the downstream API (see `api_sink`) as JSON.
//!
//! ```text
//! cargo run --example handler_server      # gRPC on 127.0.0.1:50051, posts to 127.0.0.1:8090
//! HANDLER_ADDR=127.0.0.1:50052 SINK_URL=http://127.0.0.1:9000/events \
//!     cargo run --example handler_server
//! HANDLER_ADDR=unix:///tmp/handler.sock cargo run --example handler_server
//! ```
//!
//! Environment: `HANDLER_ADDR` (default `127.0.0.1:50051`): `ip:port`, or
//! `unix:///absolute/path` for a Unix domain socket, which kafka-scc reaches with the same
//! `HANDLER_ENDPOINT`. `SERVER_TLS_CERT` and `SERVER_TLS_KEY`: PEM files of the server's
//! certificate and key, to serve TLS on a TCP address (kafka-scc then uses `https://`). With
//! `SERVER_TLS_CLIENT_CA` as well, client certificates signed by that CA are required (mutual
//! TLS). `SINK_URL` (default `http://127.0.0.1:8090/events`), `SINK_TIMEOUT_MS` (default 5000:
//! the bound on one POST, keep it below kafka-scc's `SCC_HANDLER_TIMEOUT_MS`), `RUST_LOG`
//! (default `info`).
//!
//! When the sink cannot be reached, times out or answers 5xx, the handler answers UNAVAILABLE,
//! so kafka-scc closes its gate and retries; a 4xx answer becomes INVALID_ARGUMENT, which
//! kafka-scc logs and commits.

#[path = "common/handler.rs"]
mod handler;
#[path = "common/logging.rs"]
mod logging;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use handler::SinkForwarder;
use tokio::net::{TcpListener, UnixListener};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The address the server listens on.
enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

fn parse_listen(raw: &str) -> Result<Listen, String> {
    if let Some(path) = raw.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(format!("invalid HANDLER_ADDR={raw:?}: expected unix:///absolute/path"));
        }
        return Ok(Listen::Unix(PathBuf::from(path)));
    }
    raw.parse::<SocketAddr>()
        .map(Listen::Tcp)
        .map_err(|_| format!("invalid HANDLER_ADDR={raw:?}: expected ip:port or unix:///absolute/path"))
}

/// Reads `SERVER_TLS_CERT`, `SERVER_TLS_KEY` and `SERVER_TLS_CLIENT_CA`; `None` when the first two
/// are unset.
fn server_tls() -> Result<Option<ServerTlsConfig>, String> {
    let read = |name: &str| -> Result<Option<Vec<u8>>, String> {
        match std::env::var(name) {
            Ok(path) => std::fs::read(&path).map(Some).map_err(|error| format!("cannot read {name}={path:?}: {error}")),
            Err(_) => Ok(None),
        }
    };
    let (cert, key) = match (read("SERVER_TLS_CERT")?, read("SERVER_TLS_KEY")?) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => return Ok(None),
        _ => return Err("set both SERVER_TLS_CERT and SERVER_TLS_KEY, or neither".to_owned()),
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = read("SERVER_TLS_CLIENT_CA")? {
        tls = tls.client_ca_root(Certificate::from_pem(ca));
    }
    Ok(Some(tls))
}

#[tokio::main]
async fn main() -> ExitCode {
    logging::init("info");
    let addr_raw = env_or("HANDLER_ADDR", "127.0.0.1:50051");
    let listen = match parse_listen(&addr_raw) {
        Ok(listen) => listen,
        Err(error) => {
            eprintln!("handler_server: {error}");
            return ExitCode::from(2);
        }
    };
    let tls = match server_tls() {
        Ok(tls) => tls,
        Err(error) => {
            eprintln!("handler_server: {error}");
            return ExitCode::from(2);
        }
    };
    if tls.is_some() && matches!(listen, Listen::Unix(_)) {
        eprintln!("handler_server: TLS is for TCP addresses; kafka-scc does not use TLS over a Unix socket");
        return ExitCode::from(2);
    }
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
    // A graceful shutdown waits for open calls, so the long-lived HandleStream streams must end
    // first.
    let shutdown = {
        let service = service.clone();
        async move {
            logging::shutdown_signal().await;
            service.end_streams();
        }
    };

    let scheme = if tls.is_some() { "https" } else { "http" };
    let result = match listen {
        Listen::Tcp(addr) => {
            let listener = match TcpListener::bind(addr).await {
                Ok(listener) => listener,
                Err(error) => {
                    eprintln!("handler_server: cannot listen on {addr}: {error}");
                    return ExitCode::FAILURE;
                }
            };
            announce(&format!("{scheme}://{addr}"), service.sink_url(), timeout);
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            handler::serve_handler_on(service, incoming, tls, shutdown).await
        }
        Listen::Unix(path) => {
            // A socket file left by an earlier run would make the bind fail.
            remove_stale_socket(&path);
            let listener = match UnixListener::bind(&path) {
                Ok(listener) => listener,
                Err(error) => {
                    eprintln!("handler_server: cannot listen on {}: {error}", path.display());
                    return ExitCode::FAILURE;
                }
            };
            announce(&format!("unix://{}", path.display()), service.sink_url(), timeout);
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let result = handler::serve_handler_on(service, incoming, None, shutdown).await;
            remove_stale_socket(&path);
            result
        }
    };
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

fn announce(endpoint: &str, sink_url: &str, timeout: Duration) {
    println!(
        "handler_server: gRPC MessageHandler on {endpoint}, forwarding to {sink_url} (timeout {} ms); Ctrl-C to stop",
        timeout.as_millis()
    );
}

/// Removes `path` if it is a socket; any other file is left alone, and the bind then fails.
fn remove_stale_socket(path: &std::path::Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|metadata| metadata.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}
