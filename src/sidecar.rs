//! Start-up and shutdown of one sidecar: creates the consumer, runs the pipeline until the
//! shutdown signal, and closes the consumer within what is left of the shutdown timeout.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rdkafka::error::KafkaError;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::handler::{Handler, Readiness};
use crate::kafka::{DeadLetterProducer, KafkaConsumer};
use crate::pipeline::{Pipeline, PipelineSettings, ShutdownReport};
use crate::telemetry::http::HttpServer;
use crate::telemetry::{Stats, StatsSnapshot};

/// The shortest time the pipeline loop may stand still before liveness fails; the loop turns
/// at least once per commit interval, so a longer interval raises the limit to 20 intervals.
const MIN_STALL_LIMIT: Duration = Duration::from_secs(30);

/// The smallest time given to closing the consumer, even when draining used up the timeout.
const MIN_CLOSE_TIME: Duration = Duration::from_millis(100);

/// An error that stops a sidecar from starting.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("creating the Kafka consumer failed: {0}")]
    Kafka(#[from] KafkaError),
    #[error("creating the dead-letter producer failed: {0}")]
    DeadLetter(KafkaError),
    #[error("listening for HTTP on {addr} failed: {source}")]
    Http { addr: std::net::SocketAddr, source: std::io::Error },
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub report: ShutdownReport,
    /// Whether the consumer finished closing within the shutdown timeout.
    pub consumer_closed: bool,
    /// Time from the shutdown signal to the end of the close.
    pub shutdown_took: Duration,
    pub stats: StatsSnapshot,
}

/// One kafka-scc instance: a consumer group member that feeds `H`.
pub struct Sidecar<H> {
    config: Config,
    handler: Arc<H>,
    stats: Arc<Stats>,
    backoff: Option<Backoff>,
}

impl<H: Handler> Sidecar<H> {
    pub fn new(config: Config, handler: H) -> Sidecar<H> {
        Sidecar { config, handler: Arc::new(handler), stats: Arc::new(Stats::new()), backoff: None }
    }

    /// Replaces the backoff built from the configuration, for example with a seeded one.
    pub fn with_backoff(mut self, backoff: Backoff) -> Sidecar<H> {
        self.backoff = Some(backoff);
        self
    }

    /// Returns the live counters of this sidecar, which stay valid before, during and after
    /// [`Sidecar::run`].
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Consumes until `shutdown` completes, then shuts down within `SCC_SHUTDOWN_TIMEOUT_MS`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<Summary, RunError> {
        let Sidecar { config, handler, stats, backoff } = self;
        info!(config = %config.summary(), "kafka-scc starting");

        let http = match config.http_addr {
            Some(addr) => {
                let stall_limit = (config.commit_interval * 20).max(MIN_STALL_LIMIT);
                let server = HttpServer::start(addr, stats.clone(), stall_limit)
                    .await
                    .map_err(|source| RunError::Http { addr, source })?;
                stats.record_http_addr(server.local_addr());
                Some(server)
            }
            None => None,
        };

        stats.record_handler_ready(false);
        match handler.wait_until_ready(config.handler_ready_timeout).await {
            Readiness::Ready => info!("the handler reports SERVING"),
            Readiness::Unknown => {
                warn!("the handler serves no gRPC health service; assuming it is ready")
            }
            Readiness::TimedOut(reason) => warn!(
                %reason, timeout_ms = config.handler_ready_timeout.as_millis() as u64,
                "the handler did not report SERVING in time; consuming anyway, the gate pauses if it is unavailable"
            ),
        }
        stats.record_handler_ready(true);

        let dead_letter = DeadLetterProducer::from_config(&config).map_err(RunError::DeadLetter)?.map(Arc::new);
        let (consumer, control, events) = KafkaConsumer::start(&config, stats.clone())?;
        let mut settings = PipelineSettings::from_config(&config);
        if let Some(backoff) = backoff {
            settings.backoff = backoff;
        }
        let pipeline = Pipeline::new(handler, control, events, stats.clone(), settings).with_dead_letter(dead_letter);

        let signalled_at: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
        let shutdown = {
            let signalled_at = signalled_at.clone();
            async move {
                shutdown.await;
                let _ = signalled_at.set(Instant::now());
                info!("shutdown requested");
            }
        };
        let report = pipeline.run(shutdown, config.shutdown_timeout).await;

        let started = *signalled_at.get_or_init(Instant::now);
        let remaining = (started + config.shutdown_timeout).saturating_duration_since(Instant::now());
        let consumer_closed = consumer.close(remaining.max(MIN_CLOSE_TIME)).await;
        if !consumer_closed {
            warn!("the Kafka consumer did not close within the shutdown timeout");
        }
        let shutdown_took = started.elapsed();
        if let Some(http) = http {
            http.stop().await;
        }
        let stats = stats.snapshot();
        info!(
            handled = stats.handled(),
            succeeded = stats.succeeded,
            non_pausing = stats.non_pausing,
            dead_lettered = stats.dead_lettered,
            retried = stats.pause_eligible,
            shutdown_ms = shutdown_took.as_millis() as u64,
            "kafka-scc stopped"
        );
        Ok(Summary { report, consumer_closed, shutdown_took, stats })
    }
}
