//! The HTTP listener for operators: Prometheus metrics on `/metrics`, liveness on `/healthz`
//! and readiness on `/readyz`.
//!
//! Liveness only reports that the pipeline loop still turns, so that a restart can fix it.
//! Readiness reports whether this member is doing useful work (see
//! [`Stats::not_ready_reason`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{error, info};

use super::Stats;

/// The content type of the Prometheus text format, version 0.0.4.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct Endpoints {
    stats: Arc<Stats>,
    /// The pipeline counts as stuck when its loop has not turned for this long.
    stall_limit: Duration,
}

/// The running listener; dropping it does not stop it, [`HttpServer::stop`] does.
pub struct HttpServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Binds `addr` and serves the endpoints from `stats`. `stall_limit` is how long the
    /// pipeline loop may go without turning before liveness fails.
    pub async fn start(addr: SocketAddr, stats: Arc<Stats>, stall_limit: Duration) -> std::io::Result<HttpServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(Endpoints { stats, stall_limit });

        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                error!(%error, "the HTTP listener failed");
            }
        });
        info!(%addr, "serving /metrics, /healthz and /readyz");
        Ok(HttpServer { addr, stop, task })
    }

    /// Returns the bound address, with the port the system chose when the configured one was 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn metrics(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], endpoints.stats.metrics().encode())
}

async fn healthz(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    let idle = endpoints.stats.pipeline_idle_for();
    if idle > endpoints.stall_limit {
        let body = format!("pipeline loop has not run for {} ms\n", idle.as_millis());
        return (StatusCode::SERVICE_UNAVAILABLE, body);
    }
    (StatusCode::OK, "ok\n".to_owned())
}

async fn readyz(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    match endpoints.stats.not_ready_reason() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}
