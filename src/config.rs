//! Configuration: reads the environment into one typed, validated [`Config`].
//!
//! The optional TOML file is read against its schema (module `schema`), translated into the
//! same variables (module `file`) and layered under the environment (module `sources`), so both
//! go through [`Config::from_vars`].
//!
//! Every value is checked here, before any connection is made. A bad value becomes a
//! [`ConfigError`] whose one-line message names the variable, the value and the accepted form;
//! the binary prints it and exits with code 2. Settings passed through to librdkafka
//! (`KAFKA_CFG_<NAME>`) are checked by librdkafka's own configuration parser, which validates
//! names and values without connecting.
//!
//! Submodules: [`handler_transport`] reads the handler's TLS files and message size limit and
//! parses handler endpoints; [`redact`] decides which values are secret and keeps them out of
//! every output.

mod handler_transport;
mod redact;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use tonic::Code;

use crate::handler::classify::{DEFAULT_PAUSE_CODES, code_name, parse_code};
use handler_transport::{parse_handler_max_message_bytes, parse_handler_tls};

pub use handler_transport::{
    ClientIdentity, DEFAULT_HANDLER_MAX_MESSAGE_BYTES, HANDLER_REQUEST_OVERHEAD_BYTES, HandlerAddress, HandlerTls,
    HandlerTransport, PemFile, parse_handler_endpoint,
};
pub use redact::{KafkaProperties, is_secret_name, looks_like_private_key, redacted, scrub_secrets};

mod file;
mod schema;
mod sources;

pub use file::SETTING_KEYS;
pub use sources::{LoadError, Loaded, TopicRoutes, load, load_str};

/// Prefix of the environment variables passed through to librdkafka.
pub const KAFKA_CFG_PREFIX: &str = "KAFKA_CFG_";

/// librdkafka properties that kafka-scc sets itself, because its delivery guarantee depends on
/// them; setting one through `KAFKA_CFG_*` is rejected.
const MANAGED_KAFKA_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "KAFKA_BROKERS"),
    ("group.id", "KAFKA_GROUP_ID"),
    ("enable.auto.commit", "nothing: kafka-scc commits itself"),
    ("enable.auto.offset.store", "nothing: kafka-scc stores offsets itself"),
];

/// Default of `SCC_HTTP_ADDR`: all interfaces, so that the kubelet can reach the probes on the
/// pod's address.
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:9464";

/// Default of `SCC_HANDLER_BATCH_MAX`, in records per HandleBatch call.
pub const DEFAULT_HANDLER_BATCH_MAX: usize = 64;

/// The order in which messages of one partition may be handled concurrently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessingOrder {
    /// Messages with the same key in the same partition run one at a time, in offset order;
    /// null-key messages of a partition are ordered among themselves.
    Key,
    /// One message at a time per partition.
    Partition,
    /// Any message may run concurrently with any other; commits are still in offset order.
    Unordered,
}

impl ProcessingOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessingOrder::Key => "key",
            ProcessingOrder::Partition => "partition",
            ProcessingOrder::Unordered => "unordered",
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration of one kafka-scc process.
#[derive(Clone, Debug)]
pub struct Config {
    /// `KAFKA_BROKERS`: bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// `KAFKA_GROUP_ID`: the consumer group.
    pub group_id: String,
    /// `KAFKA_TOPIC`: topics to subscribe to (a comma list); at least one.
    pub topics: Vec<String>,
    /// `HANDLER_ENDPOINT`: the handler's gRPC address: `http://host:port`, `https://host:port` or
    /// `unix:///absolute/path`. [`parse_handler_endpoint`] turns it into a [`HandlerAddress`].
    pub handler_endpoint: String,
    /// `HANDLER_TLS_*` and `SCC_HANDLER_MAX_MESSAGE_BYTES`: how every handler connection is made.
    pub handler_transport: HandlerTransport,
    /// `SCC_MAX_IN_FLIGHT`: messages in handler calls at once, each message of a batch counted,
    /// 1 to 10,000.
    pub max_in_flight: usize,
    /// `SCC_PROCESSING_ORDER`: which messages may run concurrently.
    pub processing_order: ProcessingOrder,
    /// `SCC_PAUSE_CODES`: gRPC codes that close the gate and are retried.
    pub pause_codes: HashSet<Code>,
    /// `SCC_BACKOFF_BASE_MS`: the first retry's maximum delay.
    pub backoff_base: Duration,
    /// `SCC_BACKOFF_MAX_MS`: the cap on any retry delay; at least the base.
    pub backoff_max: Duration,
    /// `SCC_HANDLER_TIMEOUT_MS`: kafka-scc's own deadline for one handler call.
    pub handler_timeout: Duration,
    /// `SCC_HANDLER_BATCH_MAX`: the maximum number of records in one HandleBatch call, 1 to
    /// 10,000; 1 sends every message with Handle.
    pub handler_batch_max: usize,
    /// `SCC_HANDLER_STREAM`: `auto` sends records on one HandleStream stream when the handler
    /// implements it; `off` never opens one.
    pub handler_stream: bool,
    /// `SCC_HANDLER_READY_TIMEOUT_MS`: how long start-up waits for the handler's health service
    /// to report SERVING before consuming anyway.
    pub handler_ready_timeout: Duration,
    /// `SCC_SHUTDOWN_TIMEOUT_MS`: the bound on the whole shutdown, from signal to exit.
    pub shutdown_timeout: Duration,
    /// `SCC_COMMIT_INTERVAL_MS`: how often finished offsets are committed.
    pub commit_interval: Duration,
    /// `SCC_COMMIT_UNHEALTHY_AFTER_MS`: how long commits may keep failing before the health
    /// state reports them as failing.
    pub commit_unhealthy_after: Duration,
    /// `SCC_REVOKE_TIMEOUT_MS`: how long a revocation waits for the revoked partitions'
    /// in-flight calls before it commits what is finished.
    pub revoke_timeout: Duration,
    /// `SCC_PARTITION_BUFFER`: fetched messages held per partition ahead of dispatch. The poll
    /// thread takes no more records of a partition whose buffer is full until it drains to half.
    pub partition_buffer: usize,
    /// `SCC_HTTP_ADDR`: where `/metrics`, `/healthz` and `/readyz` are served; `None` when set
    /// to `off`.
    pub http_addr: Option<std::net::SocketAddr>,
    /// `SCC_LOG_FORMAT`: `text` or `json`.
    pub log_format: LogFormat,
    /// `SCC_DLQ_TOPIC`: where messages that failed non-pausing are produced before their offset
    /// is committed; `None` logs and commits them.
    pub dead_letter_topic: Option<String>,
    /// `SCC_DLQ_TIMEOUT_MS`: how long one dead-letter produce may take until the broker
    /// acknowledges it (librdkafka's `message.timeout.ms`). A produce that fails or times out is
    /// retried like a pause-eligible failure.
    pub dead_letter_timeout: Duration,
    /// `KAFKA_CFG_<NAME>`: extra librdkafka properties, by librdkafka name; they apply to the
    /// consumer and to the dead-letter producer.
    pub kafka_properties: KafkaProperties,
}

/// An invalid configuration value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {variable}={value:?}: {expected}")]
pub struct ConfigError {
    /// The environment variable.
    pub variable: String,
    /// The rejected value, or `[redacted]` for a secret.
    pub value: String,
    /// The accepted form, or why the value was rejected.
    pub expected: String,
}

impl ConfigError {
    /// Builds the error. `expected` is put on one line, because librdkafka's own messages can
    /// span several and the error is printed as a single line.
    fn new(variable: &str, value: &str, expected: impl Into<String>) -> Self {
        let expected: String = expected.into();
        let expected = expected.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>().join(" ");
        ConfigError { variable: variable.to_owned(), value: redacted(variable, value).to_owned(), expected }
    }
}

impl Config {
    /// Reads and validates the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(std::env::vars())
    }

    /// Reads and validates the configuration from `(name, value)` pairs; unrelated names are
    /// ignored.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars: BTreeMap<String, String> = vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let env = Env(&vars);

        let brokers = env.string("KAFKA_BROKERS", "localhost:9094")?;
        if brokers.trim().is_empty() {
            return Err(ConfigError::new("KAFKA_BROKERS", &brokers, "expected host:port[,host:port...]"));
        }
        let group_id = env.string("KAFKA_GROUP_ID", "event-processor-group")?;
        if group_id.trim().is_empty() {
            return Err(ConfigError::new("KAFKA_GROUP_ID", &group_id, "expected a non-empty group id"));
        }
        let topics = parse_topics(&env)?;
        let handler_tls = parse_handler_tls(&env)?;
        let handler_endpoint = env.string("HANDLER_ENDPOINT", "http://127.0.0.1:50051")?;
        parse_handler_endpoint("HANDLER_ENDPOINT", &handler_endpoint, &handler_tls)?;

        let max_in_flight = env.integer("SCC_MAX_IN_FLIGHT", 100, 1, 10_000)? as usize;
        let processing_order = parse_processing_order(&env)?;
        let pause_codes = parse_pause_codes(&env)?;

        let backoff_base = env.millis("SCC_BACKOFF_BASE_MS", 500, 1, 3_600_000)?;
        let backoff_max = env.millis("SCC_BACKOFF_MAX_MS", 10_000, 1, 3_600_000)?;
        if backoff_max < backoff_base {
            let value = env.get("SCC_BACKOFF_MAX_MS").unwrap_or("10000");
            return Err(ConfigError::new(
                "SCC_BACKOFF_MAX_MS",
                value,
                format!("expected a value no smaller than SCC_BACKOFF_BASE_MS ({} ms)", backoff_base.as_millis()),
            ));
        }
        let handler_timeout = env.millis("SCC_HANDLER_TIMEOUT_MS", 30_000, 1, 3_600_000)?;
        let handler_batch_max =
            env.integer("SCC_HANDLER_BATCH_MAX", DEFAULT_HANDLER_BATCH_MAX as u64, 1, 10_000)? as usize;
        let handler_stream = match env.get("SCC_HANDLER_STREAM").unwrap_or("auto") {
            "auto" => true,
            "off" => false,
            other => return Err(ConfigError::new("SCC_HANDLER_STREAM", other, "expected auto or off")),
        };
        let handler_ready_timeout = env.millis("SCC_HANDLER_READY_TIMEOUT_MS", 30_000, 0, 3_600_000)?;
        let shutdown_timeout = env.millis("SCC_SHUTDOWN_TIMEOUT_MS", 25_000, 100, 3_600_000)?;
        let commit_interval = env.millis("SCC_COMMIT_INTERVAL_MS", 500, 1, 600_000)?;
        let commit_unhealthy_after = env.millis("SCC_COMMIT_UNHEALTHY_AFTER_MS", 30_000, 1, 3_600_000)?;
        let revoke_timeout = env.millis("SCC_REVOKE_TIMEOUT_MS", 10_000, 0, 3_600_000)?;
        let partition_buffer = env.integer("SCC_PARTITION_BUFFER", 1_000, 1, 1_000_000)? as usize;
        let http_addr = match env.get("SCC_HTTP_ADDR").unwrap_or(DEFAULT_HTTP_ADDR) {
            "off" => None,
            raw => Some(raw.parse().map_err(|_| {
                ConfigError::new("SCC_HTTP_ADDR", raw, "expected ip:port, such as 0.0.0.0:9464, or off")
            })?),
        };
        let log_format = match env.get("SCC_LOG_FORMAT").unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::new("SCC_LOG_FORMAT", other, "expected text or json"));
            }
        };
        let dead_letter_topic = parse_dead_letter_topic(&env, &topics)?;
        let dead_letter_timeout = env.millis("SCC_DLQ_TIMEOUT_MS", 30_000, 1, 3_600_000)?;
        let kafka_properties = parse_kafka_properties(&vars)?;
        let handler_max_message_bytes = parse_handler_max_message_bytes(&env, &kafka_properties)?;

        let config = Config {
            brokers,
            group_id,
            topics,
            handler_endpoint,
            handler_transport: HandlerTransport { tls: handler_tls, max_message_bytes: handler_max_message_bytes },
            max_in_flight,
            processing_order,
            pause_codes,
            backoff_base,
            backoff_max,
            handler_timeout,
            handler_batch_max,
            handler_stream,
            handler_ready_timeout,
            shutdown_timeout,
            commit_interval,
            commit_unhealthy_after,
            revoke_timeout,
            partition_buffer,
            http_addr,
            log_format,
            dead_letter_topic,
            dead_letter_timeout,
            kafka_properties,
        };
        config.check_kafka_client()?;
        Ok(config)
    }

    /// Creates a librdkafka consumer from the whole configuration, without bootstrap servers so
    /// that it connects nowhere, and destroys it. Setting a property checks it alone; creating
    /// the client also checks combinations and loads the files that properties name, such as
    /// `ssl.key.location`. The error names the property that librdkafka blames, when it names
    /// one.
    fn check_kafka_client(&self) -> Result<(), ConfigError> {
        let mut client_config = self.consumer_config();
        client_config.remove("bootstrap.servers");
        let Err(error) = client_config.create_with_context::<_, BaseConsumer<SilentContext>>(SilentContext) else {
            return Ok(());
        };

        let reason = scrub_secrets(&error.to_string(), &self.kafka_properties.secret_values()).into_owned();
        // librdkafka names the property in such a message, as in
        // "Client creation error: ssl.key.location failed: ...".
        // Other messages quote only the value, as in "Unsupported SASL mechanism: NOPE"; a
        // property whose (non-secret) value the message quotes is the likely cause.
        let blamed = reason
            .split(|c: char| c.is_whitespace() || c == ':' || c == '"')
            .find(|word| self.kafka_properties.contains_key(*word))
            .map(str::to_owned)
            .or_else(|| {
                self.kafka_properties
                    .iter()
                    .filter(|(name, value)| !is_secret_name(name) && value.len() > 1)
                    .find(|(_, value)| reason.contains(value.as_str()))
                    .map(|(name, _)| name.clone())
            });
        let variable_of = |name: &str| format!("{KAFKA_CFG_PREFIX}{}", name.to_ascii_uppercase().replace('.', "_"));
        Err(match blamed {
            Some(name) => ConfigError::new(
                &variable_of(&name),
                &self.kafka_properties[name.as_str()],
                format!("rejected by librdkafka when creating the consumer: {reason}"),
            ),
            // The value names the variables that were set, never their values.
            None => ConfigError::new(
                &format!("{KAFKA_CFG_PREFIX}*"),
                &self.kafka_properties.keys().map(|name| variable_of(name)).collect::<Vec<_>>().join(","),
                format!("rejected by librdkafka when creating the consumer: {reason}"),
            ),
        })
    }

    /// Builds the librdkafka configuration of the consumer: kafka-scc's own settings first,
    /// then the `KAFKA_CFG_*` properties, which may override everything except the managed ones.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // Feeds the consumer-lag metric.
            .set("statistics.interval.ms", "5000")
            // Every partition has its own queue (see `kafka::flow`), so these bounds apply per
            // partition. librdkafka's defaults (64 MiB and a 1 s back-off) would
            // let a few partitions hold gigabytes; see `prefetch_kbytes`.
            .set("queued.max.messages.kbytes", self.prefetch_kbytes().to_string())
            // How long a partition whose queue is full waits before librdkafka checks again;
            // the queue drains in tens of milliseconds at full speed.
            .set("fetch.queue.backoff.ms", "10");
        for (name, value) in &self.kafka_properties {
            config.set(name, value);
        }
        config
    }

    /// Returns librdkafka's prefetch bound per partition, in KiB: 16 KiB per message the
    /// in-flight limit allows, between 1 MiB and 64 MiB. The pipeline's own buffer
    /// (`SCC_PARTITION_BUFFER` records) keeps the handler busy. This queue only has to cover
    /// the next fetch, and that need grows with the rate the handler is called at.
    pub fn prefetch_kbytes(&self) -> usize {
        (self.max_in_flight * 16).clamp(1024, 65_536)
    }

    /// Builds the librdkafka configuration of the dead-letter producer: the brokers, every
    /// `KAFKA_CFG_*` property and `acks=all`. The producer shares the consumer's security
    /// settings, and librdkafka ignores the consumer-only properties. With `acks=all`, a
    /// delivery report means that every in-sync replica stored the record.
    ///
    /// The idempotent producer is left off on purpose, because some of its errors are fatal:
    /// the producer could not send again until restarted, and the pipeline would stall. A rare
    /// duplicate on the dead-letter topic fits the at-least-once guarantee.
    pub fn dead_letter_producer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers).set("acks", "all").set("linger.ms", "5");
        for (name, value) in &self.kafka_properties {
            config.set(name, value);
        }
        // Set last: the pipeline's own wait for the delivery report relies on this bound.
        config.set("message.timeout.ms", self.dead_letter_timeout.as_millis().to_string());
        config
    }

    /// Formats the effective configuration on one line for the start-up log, with secret
    /// values replaced by `[redacted]`.
    pub fn summary(&self) -> String {
        let codes: Vec<&str> = {
            let mut codes: Vec<&str> = self.pause_codes.iter().map(|code| code_name(*code)).collect();
            codes.sort_unstable();
            codes
        };
        let mut line = format!(
            "brokers={} group_id={} topics={} handler={} max_in_flight={} order={} pause_codes={} \
             backoff_base_ms={} backoff_max_ms={} handler_timeout_ms={} handler_batch_max={} handler_stream={} \
             shutdown_timeout_ms={} \
             commit_interval_ms={} commit_unhealthy_after_ms={} revoke_timeout_ms={} partition_buffer={} http_addr={}",
            self.brokers,
            self.group_id,
            self.topics.join(","),
            self.handler_endpoint,
            self.max_in_flight,
            self.processing_order.as_str(),
            codes.join(","),
            self.backoff_base.as_millis(),
            self.backoff_max.as_millis(),
            self.handler_timeout.as_millis(),
            self.handler_batch_max,
            if self.handler_stream { "auto" } else { "off" },
            self.shutdown_timeout.as_millis(),
            self.commit_interval.as_millis(),
            self.commit_unhealthy_after.as_millis(),
            self.revoke_timeout.as_millis(),
            self.partition_buffer,
            self.http_addr.map_or_else(|| "off".to_owned(), |addr| addr.to_string()),
        );
        line.push_str(&self.handler_transport.summary(self.handler_endpoint.starts_with("https:")));
        for (name, value) in &self.kafka_properties {
            line.push_str(&format!(" {name}={}", redacted(name, value)));
        }
        if let Some(topic) = &self.dead_letter_topic {
            line.push_str(&format!(" dlq_topic={topic} dlq_timeout_ms={}", self.dead_letter_timeout.as_millis()));
        }
        // The prefetch bounds kafka-scc sets itself, unless the properties above override them.
        let consumer = self.consumer_config();
        for name in ["queued.max.messages.kbytes", "fetch.queue.backoff.ms"] {
            if !self.kafka_properties.contains_key(name)
                && let Some(value) = consumer.get(name)
            {
                line.push_str(&format!(" {name}={value}"));
            }
        }
        line
    }
}

/// The context of the throwaway consumer of [`Config::check_kafka_client`]: its log lines would
/// only repeat those of the real consumer, so they are dropped.
struct SilentContext;

impl ClientContext for SilentContext {
    fn log(&self, _level: RDKafkaLogLevel, _facility: &str, _message: &str) {}

    fn error(&self, _error: KafkaError, _reason: &str) {}
}

impl ConsumerContext for SilentContext {}

/// A view of the variables with typed getters that produce [`ConfigError`]s.
struct Env<'a>(&'a BTreeMap<String, String>);

impl Env<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn string(&self, name: &str, default: &str) -> Result<String, ConfigError> {
        Ok(self.get(name).unwrap_or(default).to_owned())
    }

    fn integer(&self, name: &str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
        let Some(raw) = self.get(name) else {
            return Ok(default);
        };
        match raw.trim().parse::<u64>() {
            Ok(value) if (min..=max).contains(&value) => Ok(value),
            _ => Err(ConfigError::new(name, raw, format!("expected a whole number from {min} to {max}"))),
        }
    }

    fn millis(&self, name: &str, default: u64, min: u64, max: u64) -> Result<Duration, ConfigError> {
        let Some(raw) = self.get(name) else {
            return Ok(Duration::from_millis(default));
        };
        match raw.trim().parse::<u64>() {
            Ok(value) if (min..=max).contains(&value) => Ok(Duration::from_millis(value)),
            _ => {
                Err(ConfigError::new(name, raw, format!("expected a whole number of milliseconds from {min} to {max}")))
            }
        }
    }
}

fn parse_topics(env: &Env<'_>) -> Result<Vec<String>, ConfigError> {
    let Some(raw) = env.get("KAFKA_TOPIC") else {
        return Err(ConfigError::new(
            "KAFKA_TOPIC",
            "",
            "missing: expected a topic name or a comma list of topic names",
        ));
    };
    let topics: Vec<String> = raw.split(',').map(|topic| topic.trim().to_owned()).collect();
    if topics.iter().all(|topic| is_topic_name(topic)) {
        Ok(topics)
    } else {
        Err(ConfigError::new(
            "KAFKA_TOPIC",
            raw,
            format!("expected a comma list of topic names, each made of {TOPIC_NAME_FORM}"),
        ))
    }
}

/// The accepted form of a Kafka topic name, for error messages.
const TOPIC_NAME_FORM: &str = "ASCII letters, digits, '.', '_' and '-' (1 to 249 characters)";

fn is_topic_name(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn parse_dead_letter_topic(env: &Env<'_>, topics: &[String]) -> Result<Option<String>, ConfigError> {
    let Some(raw) = env.get("SCC_DLQ_TOPIC") else {
        return Ok(None);
    };
    let topic = raw.trim();
    if topic.is_empty() {
        return Ok(None);
    }
    if !is_topic_name(topic) {
        return Err(ConfigError::new("SCC_DLQ_TOPIC", raw, format!("expected a topic name made of {TOPIC_NAME_FORM}")));
    }
    // A dead-letter topic that is also consumed would hand every rejected message back to
    // the handler that rejected it, forever.
    if topics.iter().any(|consumed| consumed == topic) {
        return Err(ConfigError::new(
            "SCC_DLQ_TOPIC",
            raw,
            "expected a topic that kafka-scc does not consume (it is also in KAFKA_TOPIC)",
        ));
    }
    Ok(Some(topic.to_owned()))
}

fn parse_processing_order(env: &Env<'_>) -> Result<ProcessingOrder, ConfigError> {
    match env.get("SCC_PROCESSING_ORDER").unwrap_or("key") {
        "key" => Ok(ProcessingOrder::Key),
        "partition" => Ok(ProcessingOrder::Partition),
        "unordered" => Ok(ProcessingOrder::Unordered),
        other => Err(ConfigError::new("SCC_PROCESSING_ORDER", other, "expected key, partition or unordered")),
    }
}

fn parse_pause_codes(env: &Env<'_>) -> Result<HashSet<Code>, ConfigError> {
    let Some(raw) = env.get("SCC_PAUSE_CODES") else {
        return Ok(DEFAULT_PAUSE_CODES.iter().copied().collect());
    };
    let expected = "expected a comma list of gRPC code names other than OK, such as UNAVAILABLE,DEADLINE_EXCEEDED";
    let mut codes = HashSet::new();
    for name in raw.split(',').map(str::trim) {
        match parse_code(name) {
            Some(code) if code != Code::Ok => {
                codes.insert(code);
            }
            _ => return Err(ConfigError::new("SCC_PAUSE_CODES", raw, expected)),
        }
    }
    Ok(codes)
}

fn parse_kafka_properties(vars: &BTreeMap<String, String>) -> Result<KafkaProperties, ConfigError> {
    let mut properties = BTreeMap::new();
    for (variable, value) in vars {
        let Some(suffix) = variable.strip_prefix(KAFKA_CFG_PREFIX) else {
            continue;
        };
        let name = suffix.to_ascii_lowercase().replace('_', ".");
        if let Some((_, owner)) = MANAGED_KAFKA_PROPERTIES.iter().find(|(managed, _)| *managed == name) {
            return Err(ConfigError::new(
                variable,
                value,
                format!("{name} is managed by kafka-scc and cannot be set; set {owner}"),
            ));
        }

        // librdkafka checks the name and the value when it is set, without connecting.
        let mut probe = ClientConfig::new();
        probe.set(&name, value);
        if let Err(error) = probe.create_native_config() {
            let reason = error.to_string();
            let reason = if !value.is_empty() && (is_secret_name(&name) || looks_like_private_key(value)) {
                reason.replace(value.as_str(), "[redacted]")
            } else {
                reason
            };
            return Err(ConfigError::new(variable, value, format!("rejected by librdkafka as {name}: {reason}")));
        }
        properties.insert(name, value.clone());
    }
    Ok(KafkaProperties::from(properties))
}

impl fmt::Display for ProcessingOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut all = vec![("KAFKA_TOPIC", "events")];
        all.extend_from_slice(vars);
        Config::from_vars(all)
    }

    #[test]
    fn defaults_match_documentation() {
        let config = config(&[]).unwrap();
        assert_eq!(config.brokers, "localhost:9094");
        assert_eq!(config.group_id, "event-processor-group");
        assert_eq!(config.topics, vec!["events"]);
        assert_eq!(config.handler_endpoint, "http://127.0.0.1:50051");
        assert_eq!(config.handler_transport.max_message_bytes, 4 * 1024 * 1024);
        assert!(config.handler_transport.tls.first_setting().is_none());
        assert_eq!(config.processing_order, ProcessingOrder::Key);
        assert_eq!(config.backoff_base, Duration::from_millis(500));
        assert_eq!(config.backoff_max, Duration::from_millis(10_000));
        assert_eq!(config.pause_codes.len(), DEFAULT_PAUSE_CODES.len());
        assert_eq!(config.handler_batch_max, 64);
        assert!(config.handler_stream);
    }

    #[test]
    fn missing_topic_names_the_variable() {
        let error = Config::from_vars(Vec::<(String, String)>::new()).unwrap_err();
        assert_eq!(error.variable, "KAFKA_TOPIC");
        assert!(error.expected.starts_with("missing"));
    }

    #[test]
    fn invalid_values_name_variable_value_and_form() {
        let cases = [
            ("SCC_MAX_IN_FLIGHT", "abc"),
            ("SCC_MAX_IN_FLIGHT", "0"),
            ("SCC_PROCESSING_ORDER", "random"),
            ("SCC_PAUSE_CODES", "UNAVAILABLE,NOPE"),
            ("SCC_PAUSE_CODES", "OK"),
            ("SCC_BACKOFF_BASE_MS", "-5"),
            ("SCC_HANDLER_TIMEOUT_MS", "1.5"),
            ("SCC_HANDLER_BATCH_MAX", "0"),
            ("SCC_HANDLER_BATCH_MAX", "10001"),
            ("SCC_HANDLER_BATCH_MAX", "many"),
            ("SCC_HANDLER_STREAM", "on"),
            ("SCC_LOG_FORMAT", "xml"),
            ("SCC_HTTP_ADDR", "localhost"),
            ("HANDLER_ENDPOINT", "127.0.0.1:50051"),
            ("KAFKA_TOPIC", "a,,b"),
            ("KAFKA_CFG_SESSION_TIMEOUT_MS", "soon"),
            ("KAFKA_CFG_NO_SUCH_PROPERTY", "1"),
            ("KAFKA_CFG_ENABLE_AUTO_COMMIT", "true"),
            ("SCC_DLQ_TOPIC", "bad topic"),
            ("SCC_DLQ_TOPIC", "events"),
            ("SCC_DLQ_TIMEOUT_MS", "0"),
        ];
        for (variable, value) in cases {
            let error = config(&[(variable, value)]).unwrap_err();
            assert_eq!(error.variable, variable, "{variable}={value}");
            assert_eq!(error.value, value, "{variable}={value}");
            let line = error.to_string();
            assert!(!line.contains('\n'), "{line}");
            assert!(line.contains(variable), "{line}");
        }
    }

    #[test]
    fn batch_max_accepts_its_range() {
        assert_eq!(config(&[("SCC_HANDLER_BATCH_MAX", "1")]).unwrap().handler_batch_max, 1);
        assert_eq!(config(&[("SCC_HANDLER_BATCH_MAX", "10000")]).unwrap().handler_batch_max, 10_000);
        let error = config(&[("SCC_HANDLER_BATCH_MAX", "0")]).unwrap_err();
        assert_eq!(error.expected, "expected a whole number from 1 to 10000");
    }

    #[test]
    fn stream_accepts_auto_and_off() {
        assert!(config(&[("SCC_HANDLER_STREAM", "auto")]).unwrap().handler_stream);
        assert!(!config(&[("SCC_HANDLER_STREAM", "off")]).unwrap().handler_stream);
        let error = config(&[("SCC_HANDLER_STREAM", "false")]).unwrap_err();
        assert_eq!(error.expected, "expected auto or off");
    }

    #[test]
    fn backoff_max_below_base_is_rejected() {
        let error = config(&[("SCC_BACKOFF_BASE_MS", "2000"), ("SCC_BACKOFF_MAX_MS", "1000")]).unwrap_err();
        assert_eq!(error.variable, "SCC_BACKOFF_MAX_MS");
    }

    #[test]
    fn kafka_cfg_maps_to_librdkafka_names() {
        let config =
            config(&[("KAFKA_CFG_SESSION_TIMEOUT_MS", "6000"), ("KAFKA_CFG_AUTO_OFFSET_RESET", "latest")]).unwrap();
        assert_eq!(config.kafka_properties.get("session.timeout.ms").map(String::as_str), Some("6000"));
        let consumer = config.consumer_config();
        assert_eq!(consumer.get("auto.offset.reset"), Some("latest"));
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
    }

    #[test]
    fn librdkafka_rejection_is_one_line() {
        let error = config(&[("KAFKA_CFG_FETCH_QUEUE_BACKOFF_MS", "-5")]).unwrap_err();
        assert_eq!(error.variable, "KAFKA_CFG_FETCH_QUEUE_BACKOFF_MS");
        assert!(!error.to_string().contains('\n'), "{error}");
    }

    #[test]
    fn prefetch_bound_follows_in_flight_limit_unless_set() {
        let kbytes = |vars: &[(&str, &str)]| {
            config(vars).unwrap().consumer_config().get("queued.max.messages.kbytes").map(str::to_owned)
        };
        assert_eq!(kbytes(&[]).as_deref(), Some("1600"));
        assert_eq!(kbytes(&[("SCC_MAX_IN_FLIGHT", "1")]).as_deref(), Some("1024"));
        assert_eq!(kbytes(&[("SCC_MAX_IN_FLIGHT", "10000")]).as_deref(), Some("65536"));
        assert_eq!(kbytes(&[("KAFKA_CFG_QUEUED_MAX_MESSAGES_KBYTES", "4096")]).as_deref(), Some("4096"));
        let backoff = config(&[]).unwrap().consumer_config().get("fetch.queue.backoff.ms").map(str::to_owned);
        assert_eq!(backoff.as_deref(), Some("10"));
    }

    #[test]
    fn secrets_are_redacted() {
        let config = config(&[("KAFKA_CFG_SASL_PASSWORD", "hunter2"), ("KAFKA_CFG_SASL_USERNAME", "alice")]).unwrap();
        let summary = config.summary();
        assert!(!summary.contains("hunter2"), "{summary}");
        assert!(summary.contains("sasl.password=[redacted]"), "{summary}");
        assert!(summary.contains("sasl.username=alice"), "{summary}");
    }

    #[test]
    fn dead_letter_topic_configures_producer() {
        assert_eq!(config(&[]).unwrap().dead_letter_topic, None);
        let config = config(&[("SCC_DLQ_TOPIC", "events.dlq"), ("KAFKA_CFG_SECURITY_PROTOCOL", "plaintext")]).unwrap();
        assert_eq!(config.dead_letter_topic.as_deref(), Some("events.dlq"));
        let producer = config.dead_letter_producer_config();
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(producer.get("message.timeout.ms"), Some("30000"));
        assert_eq!(producer.get("security.protocol"), Some("plaintext"));
        assert!(config.summary().contains("dlq_topic=events.dlq"));
    }

    #[test]
    fn rejected_combination_names_the_quoted_property() {
        let error =
            config(&[("KAFKA_CFG_SECURITY_PROTOCOL", "sasl_ssl"), ("KAFKA_CFG_SASL_MECHANISMS", "NOPE")]).unwrap_err();
        assert_eq!(error.variable, "KAFKA_CFG_SASL_MECHANISMS");
        assert_eq!(error.value, "NOPE");
    }

    #[test]
    fn pause_codes_accept_names_in_any_case() {
        let config = config(&[("SCC_PAUSE_CODES", "unavailable, Internal")]).unwrap();
        assert!(config.pause_codes.contains(&Code::Unavailable));
        assert!(config.pause_codes.contains(&Code::Internal));
        assert_eq!(config.pause_codes.len(), 2);
    }
}
