//! The example downstream API: an HTTP server that takes `POST /events` with a JSON body,
//! answers 200 and counts what it received.
//!
//! Shared by the `api_sink` example (a standalone process) and `quickstart` (in-process, where
//! it is stopped and started again on the same port to simulate an outage).
#![allow(dead_code)]

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// How the sink behaves.
#[derive(Clone, Debug)]
pub struct SinkOptions {
    /// Log a line every this many accepted events; 0 turns the line off.
    pub log_every: u64,
    /// Simulated work per event before answering; zero for none.
    pub delay: Duration,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions { log_every: 100, delay: Duration::ZERO }
    }
}

/// What the sink received. Survives restarts: pass the same `Arc` to every [`start_sink`].
#[derive(Debug, Default)]
pub struct SinkCounts {
    received: AtomicU64,
    rejected: AtomicU64,
    /// `(topic, partition, offset)` of every event that carried them, to tell redeliveries
    /// (at-least-once) from new events.
    distinct: Mutex<HashSet<(String, i64, i64)>>,
}

impl SinkCounts {
    /// Events accepted with 200, redeliveries included.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Bodies rejected with 400.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Distinct Kafka records (by topic, partition and offset) among the accepted events.
    pub fn distinct(&self) -> u64 {
        self.distinct.lock().unwrap().len() as u64
    }

    /// Whether the record at `(topic, partition, offset)` was received at least once.
    pub fn contains(&self, topic: &str, partition: i64, offset: i64) -> bool {
        self.distinct.lock().unwrap().contains(&(topic.to_owned(), partition, offset))
    }
}

#[derive(Clone)]
struct AppState {
    counts: Arc<SinkCounts>,
    options: SinkOptions,
}

/// A running sink. Stop it with [`SinkServer::stop`]; dropping it leaves it running.
pub struct SinkServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

/// Binds `addr` (port 0 picks a free port) and serves the sink in a background task.
pub async fn start_sink(addr: SocketAddr, counts: Arc<SinkCounts>, options: SinkOptions) -> io::Result<SinkServer> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_sink(listener, counts, options, async {
        let _ = stopped.await;
    }));
    Ok(SinkServer { addr, stop: Some(stop), task })
}

/// Serves the sink on `listener` until `shutdown` completes, then stops accepting, lets
/// running requests finish and closes every connection.
pub async fn serve_sink(
    listener: TcpListener,
    counts: Arc<SinkCounts>,
    options: SinkOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = Router::new().route("/events", post(receive_event)).with_state(AppState { counts, options });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

impl SinkServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL events are posted to.
    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    /// Stops the server: closes the listener at once, lets requests already running finish,
    /// and closes every connection, idle keep-alive ones included. Bounded by `timeout`.
    pub async fn stop(mut self, timeout: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(timeout, &mut self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => warn!(%error, "the sink server failed"),
            Ok(Err(error)) => warn!(%error, "the sink server task ended abnormally"),
            Err(_) => {
                warn!("the sink did not stop in time; aborting it");
                self.task.abort();
            }
        }
    }
}

async fn receive_event(State(state): State<AppState>, body: Bytes) -> (StatusCode, &'static str) {
    let event: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(_) => {
            state.counts.rejected.fetch_add(1, Ordering::Relaxed);
            return (StatusCode::BAD_REQUEST, "body is not JSON\n");
        }
    };
    if !state.options.delay.is_zero() {
        tokio::time::sleep(state.options.delay).await;
    }

    let record = match (
        event.get("topic").and_then(|v| v.as_str()),
        event.get("partition").and_then(|v| v.as_i64()),
        event.get("offset").and_then(|v| v.as_i64()),
    ) {
        (Some(topic), Some(partition), Some(offset)) => Some((topic.to_owned(), partition, offset)),
        _ => None,
    };
    let distinct = {
        let mut seen = state.counts.distinct.lock().unwrap();
        if let Some(record) = record {
            seen.insert(record);
        }
        seen.len()
    };
    let received = state.counts.received.fetch_add(1, Ordering::Relaxed) + 1;
    if state.options.log_every > 0 && received % state.options.log_every == 0 {
        info!(received, distinct, "events received");
    }
    (StatusCode::OK, "ok\n")
}
