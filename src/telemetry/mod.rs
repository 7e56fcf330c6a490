//! Telemetry: logging set-up, the live counters of a run, Prometheus metrics and the HTTP
//! endpoints that expose them.

pub mod http;
pub mod metrics;
pub mod repeat;
pub mod stats;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub use metrics::Metrics;
pub use stats::{Stats, StatsSnapshot};

/// Installs the global tracing subscriber: text or JSON lines on stderr, filtered by
/// `RUST_LOG` (default `info`). Does nothing when a subscriber is already installed.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only help a person at a terminal; log collectors would store them verbatim.
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
