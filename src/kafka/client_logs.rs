//! The logging shared by both librdkafka clients, the consumer and the dead-letter producer.
//! librdkafka's log lines and client errors go to tracing under the `librdkafka` target, with
//! every secret configuration value removed. A client error that repeats is written at most
//! once per interval.

use std::borrow::Cow;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use tracing::{debug, error, info, warn};

use crate::config::scrub_secrets;
use crate::telemetry::repeat::RepeatLimiter;

/// The shortest time between two log lines about the same repeated client error: while a broker
/// is unreachable, librdkafka reports the same error many times a second.
const REPEATED_ERROR_INTERVAL: Duration = Duration::from_secs(10);

/// Forwards one client's librdkafka output to tracing.
pub(crate) struct ClientLogs {
    repeated_errors: Mutex<RepeatLimiter>,
    /// Secret configuration values, removed from every line before it is logged.
    secrets: Vec<String>,
}

impl ClientLogs {
    pub(crate) fn new(secrets: Vec<String>) -> ClientLogs {
        ClientLogs { repeated_errors: Mutex::new(RepeatLimiter::new(REPEATED_ERROR_INTERVAL)), secrets }
    }

    /// Removes the secret values from `text`.
    pub(crate) fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        scrub_secrets(text, &self.secrets)
    }

    /// Logs one librdkafka log line at the matching tracing level.
    pub(crate) fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let message = self.scrub(message);
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                error!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => info!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    /// Logs a client error as a warning, unless the same error was logged within the interval;
    /// `client` names the client in the line. librdkafka reports transient broker problems here
    /// too and recovers from them itself, so none of them stops anything.
    pub(crate) fn error(&self, client: &'static str, error: KafkaError, reason: &str) {
        let reason = self.scrub(reason);
        let admitted = self.repeated_errors.lock().map(|mut limiter| limiter.admit(&reason, Instant::now()));
        if let Ok(Some(left_out)) = admitted {
            let error = self.scrub(&error.to_string()).into_owned();
            warn!(target: "librdkafka", client, %error, reason = &*reason, repeats_left_out = left_out, "client error");
        }
    }
}
