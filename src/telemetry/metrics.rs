//! Prometheus metrics of one sidecar, in one registry.
//!
//! Only [`super::Stats`] writes these, from the same calls that update its counters, so a log
//! line, a counter and a metric about one event cannot disagree. Labels hold topic names,
//! partition numbers, gRPC code names and outcomes; never keys or payloads.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The outcome of one handler call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Success,
    /// Pause-eligible failure: the message will be retried.
    Retried,
    /// Non-pausing failure: the message was logged and committed.
    NonPausing,
    /// Non-pausing failure: the message was produced to the dead-letter topic and committed.
    DeadLetter,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Retried => "retried",
            Outcome::NonPausing => "non_pausing",
            Outcome::DeadLetter => "dead_letter",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    topic: String,
    outcome: &'static str,
    grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: String,
}

fn new_latency_histogram() -> Histogram {
    // 0.5 ms to about 33 s in 17 doubling buckets.
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

fn new_batch_histogram() -> Histogram {
    // 2 to 8,192 messages in 13 doubling buckets; `SCC_HANDLER_BATCH_MAX` is at most 10,000.
    Histogram::new(exponential_buckets(2.0, 2.0, 13))
}

/// The metric families and the registry that exposes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    messages: Family<MessageLabels, Counter>,
    handler_latency: Family<TopicLabels, Histogram, fn() -> Histogram>,
    retry_attempts: Family<TopicLabels, Counter>,
    in_flight: Gauge,
    batch_messages: Histogram,
    gate_open: Gauge,
    gate_closed_seconds: Counter<f64, AtomicU64>,
    committed_offset: Family<PartitionLabels, Gauge>,
    consumer_lag: Family<PartitionLabels, Gauge>,
    commit_failures: Counter,
    rebalances: Counter,
    consumer_errors: Counter,
    dead_letter_failures: Family<TopicLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("scc");
        let messages = Family::<MessageLabels, Counter>::default();
        let handler_latency =
            Family::<TopicLabels, Histogram, fn() -> Histogram>::new_with_constructor(new_latency_histogram);
        let retry_attempts = Family::<TopicLabels, Counter>::default();
        let in_flight = Gauge::default();
        let batch_messages = new_batch_histogram();
        let gate_open = Gauge::default();
        let gate_closed_seconds = Counter::<f64, AtomicU64>::default();
        let committed_offset = Family::<PartitionLabels, Gauge>::default();
        let consumer_lag = Family::<PartitionLabels, Gauge>::default();
        let commit_failures = Counter::default();
        let rebalances = Counter::default();
        let consumer_errors = Counter::default();
        let dead_letter_failures = Family::<TopicLabels, Counter>::default();

        registry.register(
            "messages",
            "Handler calls by topic and outcome (success, retried, non_pausing, dead_letter), with the gRPC code of failures",
            messages.clone(),
        );
        registry.register(
            "handler_latency_seconds",
            "Duration of handler calls, successful or not",
            handler_latency.clone(),
        );
        registry.register("retry_attempts", "Handler calls that retried a message", retry_attempts.clone());
        registry.register("in_flight", "Messages in handler calls in flight", in_flight.clone());
        registry.register(
            "batch_messages",
            "Messages per batch the pipeline handed to the handler in one call (batches of two or more)",
            batch_messages.clone(),
        );
        registry.register("gate_open", "1 while the gate is open, 0 while it is closed", gate_open.clone());
        registry.register(
            "gate_closed_seconds",
            "Time the gate spent closed, counted when it reopens",
            gate_closed_seconds.clone(),
        );
        registry.register(
            "committed_offset",
            "Last committed offset (the next offset to read) by partition",
            committed_offset.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages between the partition's high watermark and the committed offset, from librdkafka statistics",
            consumer_lag.clone(),
        );
        registry.register("commit_failures", "Offset commits that failed", commit_failures.clone());
        registry.register("rebalances", "Assignments and revocations", rebalances.clone());
        registry.register("consumer_errors", "Errors the Kafka consumer reported", consumer_errors.clone());
        registry.register(
            "dead_letter_failures",
            "Dead-letter produces that failed or timed out, by source topic; each is retried",
            dead_letter_failures.clone(),
        );
        gate_open.set(1);

        Metrics {
            registry,
            messages,
            handler_latency,
            retry_attempts,
            in_flight,
            batch_messages,
            gate_open,
            gate_closed_seconds,
            committed_offset,
            consumer_lag,
            commit_failures,
            rebalances,
            consumer_errors,
            dead_letter_failures,
        }
    }

    /// Encodes every metric in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // `fmt::Write` for String never returns an error.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    pub(crate) fn call_finished(&self, topic: &str, outcome: Outcome, grpc_code: &'static str, latency: Duration) {
        let labels = MessageLabels { topic: topic.to_owned(), outcome: outcome.as_str(), grpc_code };
        self.messages.get_or_create(&labels).inc();
        self.handler_latency.get_or_create(&TopicLabels { topic: topic.to_owned() }).observe(latency.as_secs_f64());
    }

    pub(crate) fn dead_letter_failed(&self, topic: &str) {
        self.dead_letter_failures.get_or_create(&TopicLabels { topic: topic.to_owned() }).inc();
    }

    pub(crate) fn call_started(&self, topic: &str, attempt: u32) {
        self.in_flight.inc();
        if attempt > 1 {
            self.retry_attempts.get_or_create(&TopicLabels { topic: topic.to_owned() }).inc();
        }
    }

    pub(crate) fn call_ended(&self) {
        self.in_flight.dec();
    }

    pub(crate) fn batch_started(&self, messages: usize) {
        self.batch_messages.observe(messages as f64);
    }

    pub(crate) fn gate_changed(&self, open: bool, closed_for: Option<Duration>) {
        self.gate_open.set(i64::from(open));
        if let Some(closed_for) = closed_for {
            self.gate_closed_seconds.inc_by(closed_for.as_secs_f64());
        }
    }

    pub(crate) fn committed(&self, topic: &str, partition: i32, offset: i64) {
        self.committed_offset.get_or_create(&partition_labels(topic, partition)).set(offset);
    }

    pub(crate) fn lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag.get_or_create(&partition_labels(topic, partition)).set(lag);
    }

    /// Drops the per-partition series of a partition this member no longer owns.
    pub(crate) fn partition_revoked(&self, topic: &str, partition: i32) {
        let labels = partition_labels(topic, partition);
        self.committed_offset.remove(&labels);
        self.consumer_lag.remove(&labels);
    }

    pub(crate) fn commit_failed(&self) {
        self.commit_failures.inc();
    }

    pub(crate) fn rebalanced(&self) {
        self.rebalances.inc();
    }

    pub(crate) fn consumer_error(&self) {
        self.consumer_errors.inc();
    }
}

fn partition_labels(topic: &str, partition: i32) -> PartitionLabels {
    PartitionLabels { topic: topic.to_owned(), partition: partition.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_names_families_and_labels() {
        let metrics = Metrics::new();
        metrics.call_finished("orders", Outcome::NonPausing, "INVALID_ARGUMENT", Duration::from_millis(3));
        metrics.committed("orders", 2, 41);
        let text = metrics.encode();
        assert!(
            text.contains(r#"scc_messages_total{topic="orders",outcome="non_pausing",grpc_code="INVALID_ARGUMENT"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"scc_committed_offset{topic="orders",partition="2"} 41"#), "{text}");
        assert!(text.contains("scc_handler_latency_seconds_bucket"), "{text}");
        assert!(text.contains("scc_gate_open 1"), "{text}");
    }

    #[test]
    fn batch_sizes_fill_the_histogram() {
        let metrics = Metrics::new();
        metrics.batch_started(3);
        metrics.batch_started(64);
        let text = metrics.encode();
        assert!(text.contains("scc_batch_messages_count 2"), "{text}");
        assert!(text.contains("scc_batch_messages_sum 67.0"), "{text}");
        assert!(text.contains(r#"scc_batch_messages_bucket{le="4.0"} 1"#), "{text}");
    }

    #[test]
    fn revoked_partition_series_disappear() {
        let metrics = Metrics::new();
        metrics.committed("orders", 1, 5);
        metrics.partition_revoked("orders", 1);
        assert!(!metrics.encode().contains(r#"partition="1""#));
    }
}
