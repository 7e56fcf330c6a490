//! The configuration file's schema: its tables, keys and value types as serde reads them.
//!
//! Every table rejects unknown keys, and every value type names the TOML type it expects, so a
//! mistake in the file fails with the key and its line. Values are kept in the form that the
//! environment carries them, because `Config::from_vars` checks their ranges and formats.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use toml::Spanned;

/// The file's top level.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct Document {
    #[serde(default)]
    pub(super) kafka: KafkaSection,
    #[serde(default)]
    pub(super) topics: Vec<TopicEntry>,
    #[serde(default)]
    pub(super) handler: HandlerSection,
    #[serde(default)]
    pub(super) processing: ProcessingSection,
    #[serde(default)]
    pub(super) commit: CommitSection,
    #[serde(default)]
    pub(super) rebalance: RebalanceSection,
    #[serde(default)]
    pub(super) shutdown: ShutdownSection,
    #[serde(default)]
    pub(super) telemetry: TelemetrySection,
    #[serde(default)]
    pub(super) dead_letter: DeadLetterSection,
}

pub(super) type Field<T> = Option<Spanned<T>>;

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct KafkaSection {
    pub(super) brokers: Field<TextList>,
    pub(super) group_id: Field<String>,
    /// librdkafka properties by their own names; dotted keys that TOML splits into tables
    /// are joined again.
    #[serde(default)]
    pub(super) properties: BTreeMap<String, Spanned<toml::Value>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table with a name and an optional handler_endpoint")]
pub(super) struct TopicEntry {
    pub(super) name: Spanned<String>,
    pub(super) handler_endpoint: Field<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct HandlerSection {
    pub(super) endpoint: Field<String>,
    pub(super) timeout_ms: Field<WholeNumber>,
    pub(super) ready_timeout_ms: Field<WholeNumber>,
    pub(super) pause_codes: Field<TextList>,
    pub(super) max_message_bytes: Field<WholeNumber>,
    pub(super) batch_max: Field<WholeNumber>,
    pub(super) stream: Field<String>,
    pub(super) tls_ca: Field<String>,
    pub(super) tls_cert: Field<String>,
    pub(super) tls_key: Field<String>,
    pub(super) tls_server_name: Field<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct ProcessingSection {
    pub(super) max_in_flight: Field<WholeNumber>,
    pub(super) order: Field<String>,
    pub(super) partition_buffer: Field<WholeNumber>,
    pub(super) backoff_base_ms: Field<WholeNumber>,
    pub(super) backoff_max_ms: Field<WholeNumber>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct CommitSection {
    pub(super) interval_ms: Field<WholeNumber>,
    pub(super) unhealthy_after_ms: Field<WholeNumber>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RebalanceSection {
    pub(super) revoke_timeout_ms: Field<WholeNumber>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct ShutdownSection {
    pub(super) timeout_ms: Field<WholeNumber>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct TelemetrySection {
    pub(super) http_addr: Field<String>,
    pub(super) log_format: Field<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct DeadLetterSection {
    pub(super) topic: Field<String>,
    pub(super) timeout_ms: Field<WholeNumber>,
}

/// A typed file value that converts to an environment value.
pub(super) trait FileValue {
    /// Formats the value as the environment variable would hold it.
    fn env_value(&self) -> String;
    /// Formats the value as TOML, for error messages.
    fn as_written(&self) -> String;
}

impl FileValue for String {
    fn env_value(&self) -> String {
        self.clone()
    }

    fn as_written(&self) -> String {
        format!("{self:?}")
    }
}

/// An integer, kept as its decimal digits so that `Config::from_vars` checks its range like an
/// environment value, negative numbers included.
#[derive(Debug)]
pub(super) struct WholeNumber(String);

impl FileValue for WholeNumber {
    fn env_value(&self) -> String {
        self.0.clone()
    }

    fn as_written(&self) -> String {
        self.0.clone()
    }
}

impl<'de> Deserialize<'de> for WholeNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<WholeNumber, D::Error> {
        struct WholeNumberVisitor;

        impl Visitor<'_> for WholeNumberVisitor {
            type Value = WholeNumber;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a whole number")
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<WholeNumber, E> {
                Ok(WholeNumber(value.to_string()))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<WholeNumber, E> {
                Ok(WholeNumber(value.to_string()))
            }
        }

        deserializer.deserialize_i64(WholeNumberVisitor)
    }
}

/// A list written either as one comma-separated string, as in the environment, or as an array
/// of strings.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged, expecting = "a string or an array of strings")]
pub(super) enum TextList {
    Joined(String),
    Items(Vec<String>),
}

impl FileValue for TextList {
    fn env_value(&self) -> String {
        match self {
            TextList::Joined(text) => text.clone(),
            TextList::Items(items) => items.join(","),
        }
    }

    fn as_written(&self) -> String {
        match self {
            TextList::Joined(text) => format!("{text:?}"),
            TextList::Items(items) => format!("{items:?}"),
        }
    }
}
