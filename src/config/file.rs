//! The TOML configuration file: reading it against its schema (module `schema`) and
//! translating its values into the settings that the environment carries.
//!
//! Every key has an environment variable with the same meaning ([`SETTING_KEYS`]), and the
//! file's values are turned into the strings that variable would hold, so the file and the
//! environment go through one validation, `Config::from_vars`. This module rejects only what
//! the environment cannot express: unknown keys, values of the wrong TOML type, and malformed
//! property names, each with the key and its line. `[[topics]]` entries may also carry a
//! handler endpoint of their own, which has no environment variable.

use std::collections::BTreeMap;
use std::path::Path;

use toml::Spanned;

use super::schema::{Document, Field, FileValue};
use super::{KAFKA_CFG_PREFIX, is_secret_name};
use crate::config::sources::LoadError;

/// The environment variable of the topic list, which the file sets from its `[[topics]]`.
pub(crate) const TOPICS_VARIABLE: &str = "KAFKA_TOPIC";

/// The file key for the topic list as a whole, used when no single entry is at fault.
pub(crate) const TOPICS_KEY: &str = "topics";

/// Each file key and the environment variable with the same meaning. `[[topics]]` and
/// `[kafka.properties]` are not listed: they map to `KAFKA_TOPIC` and `KAFKA_CFG_<NAME>`.
pub const SETTING_KEYS: &[(&str, &str)] = &[
    ("kafka.brokers", "KAFKA_BROKERS"),
    ("kafka.group_id", "KAFKA_GROUP_ID"),
    ("handler.endpoint", "HANDLER_ENDPOINT"),
    ("handler.timeout_ms", "SCC_HANDLER_TIMEOUT_MS"),
    ("handler.ready_timeout_ms", "SCC_HANDLER_READY_TIMEOUT_MS"),
    ("handler.pause_codes", "SCC_PAUSE_CODES"),
    ("handler.max_message_bytes", "SCC_HANDLER_MAX_MESSAGE_BYTES"),
    ("handler.batch_max", "SCC_HANDLER_BATCH_MAX"),
    ("handler.stream", "SCC_HANDLER_STREAM"),
    ("handler.tls_ca", "HANDLER_TLS_CA"),
    ("handler.tls_cert", "HANDLER_TLS_CERT"),
    ("handler.tls_key", "HANDLER_TLS_KEY"),
    ("handler.tls_server_name", "HANDLER_TLS_SERVER_NAME"),
    ("processing.max_in_flight", "SCC_MAX_IN_FLIGHT"),
    ("processing.order", "SCC_PROCESSING_ORDER"),
    ("processing.partition_buffer", "SCC_PARTITION_BUFFER"),
    ("processing.backoff_base_ms", "SCC_BACKOFF_BASE_MS"),
    ("processing.backoff_max_ms", "SCC_BACKOFF_MAX_MS"),
    ("commit.interval_ms", "SCC_COMMIT_INTERVAL_MS"),
    ("commit.unhealthy_after_ms", "SCC_COMMIT_UNHEALTHY_AFTER_MS"),
    ("rebalance.revoke_timeout_ms", "SCC_REVOKE_TIMEOUT_MS"),
    ("shutdown.timeout_ms", "SCC_SHUTDOWN_TIMEOUT_MS"),
    ("telemetry.http_addr", "SCC_HTTP_ADDR"),
    ("telemetry.log_format", "SCC_LOG_FORMAT"),
    ("dead_letter.topic", "SCC_DLQ_TOPIC"),
    ("dead_letter.timeout_ms", "SCC_DLQ_TIMEOUT_MS"),
];

/// Returns the file key of an environment variable, if the file has one.
pub(crate) fn key_for_variable(variable: &str) -> Option<String> {
    if variable == TOPICS_VARIABLE {
        return Some(TOPICS_KEY.to_owned());
    }
    if let Some(suffix) = variable.strip_prefix(KAFKA_CFG_PREFIX) {
        return Some(property_key(&suffix.to_ascii_lowercase().replace('_', ".")));
    }
    SETTING_KEYS.iter().find(|(_, known)| *known == variable).map(|(key, _)| (*key).to_owned())
}

/// One value of the file, in the form the environment would carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileSetting {
    /// The key in the file, such as `handler.timeout_ms`.
    pub key: String,
    /// The environment variable with the same meaning.
    pub variable: String,
    /// The value as the environment variable would hold it.
    pub value: String,
    /// The value as written in the file, or `[redacted]` for a secret; for error messages.
    pub as_written: String,
    /// The 1-based line of the value in the file.
    pub line: usize,
}

/// One `[[topics]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileTopic {
    /// The entry's key prefix, such as `topics[1]`.
    pub key: String,
    pub name: String,
    pub name_line: usize,
    /// The entry's own handler endpoint and its line.
    pub handler_endpoint: Option<(String, usize)>,
}

/// A parsed configuration file.
#[derive(Clone, Debug)]
pub(crate) struct ConfigFile {
    /// The path as given, for messages.
    pub path: String,
    pub settings: Vec<FileSetting>,
    pub topics: Vec<FileTopic>,
}

impl ConfigFile {
    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<ConfigFile, LoadError> {
        let path_text = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path_text.clone(), source })?;
        ConfigFile::parse(&path_text, &text)
    }

    /// Parses `text`; `path` names the file in errors.
    pub fn parse(path: &str, text: &str) -> Result<ConfigFile, LoadError> {
        let file_error = |span: Option<std::ops::Range<usize>>, key: Option<String>, message: String| LoadError::File {
            path: path.to_owned(),
            line: span.map_or(1, |span| line_of(text, span.start)),
            key,
            message,
        };

        let deserializer = toml::Deserializer::parse(text)
            .map_err(|error| file_error(error.span(), None, error.message().to_owned()))?;
        let document: Document = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let key = schema_path(&error.path().to_string());
            let message = error.inner().message().replace("unknown field", "unknown key");
            file_error(error.inner().span(), Some(key.clone()), format!("{key}: {message}"))
        })?;

        let mut collector = Collector { text, settings: Vec::new() };
        collect_settings(&document, &mut collector);
        collect_properties(&mut collector, &document.kafka.properties)
            .map_err(|(span, key, message)| file_error(Some(span), Some(key.clone()), format!("{key}: {message}")))?;

        let topics = topic_entries(&document, text);
        if let Some(first) = topics.first() {
            let names: Vec<&str> = topics.iter().map(|topic| topic.name.as_str()).collect();
            collector.settings.push(FileSetting {
                key: TOPICS_KEY.to_owned(),
                variable: TOPICS_VARIABLE.to_owned(),
                value: names.join(","),
                as_written: format!("{names:?}"),
                line: first.name_line,
            });
        }
        Ok(ConfigFile { path: path.to_owned(), settings: collector.settings, topics })
    }

    /// Returns the file's setting for an environment variable.
    pub fn setting(&self, variable: &str) -> Option<&FileSetting> {
        self.settings.iter().find(|setting| setting.variable == variable)
    }
}

/// Returns the 1-based line of the byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    let end = at.min(text.len());
    text.as_bytes()[..end].iter().filter(|byte| **byte == b'\n').count() + 1
}

/// Turns a serde path into a file key: drops the segment that `toml::Spanned` adds.
fn schema_path(path: &str) -> String {
    path.replace(".$__serde_spanned_private_value", "")
}

/// Returns the file key of a librdkafka property, quoted as TOML requires for a dotted name.
fn property_key(name: &str) -> String {
    format!("kafka.properties.{name:?}")
}

/// Adds the settings of the file's tables, except `[kafka.properties]` and `[[topics]]`.
fn collect_settings(document: &Document, out: &mut Collector<'_>) {
    out.add("KAFKA_BROKERS", &document.kafka.brokers);
    out.add("KAFKA_GROUP_ID", &document.kafka.group_id);
    out.add("HANDLER_ENDPOINT", &document.handler.endpoint);
    out.add("SCC_HANDLER_TIMEOUT_MS", &document.handler.timeout_ms);
    out.add("SCC_HANDLER_READY_TIMEOUT_MS", &document.handler.ready_timeout_ms);
    out.add("SCC_PAUSE_CODES", &document.handler.pause_codes);
    out.add("SCC_HANDLER_MAX_MESSAGE_BYTES", &document.handler.max_message_bytes);
    out.add("SCC_HANDLER_BATCH_MAX", &document.handler.batch_max);
    out.add("SCC_HANDLER_STREAM", &document.handler.stream);
    out.add("HANDLER_TLS_CA", &document.handler.tls_ca);
    out.add("HANDLER_TLS_CERT", &document.handler.tls_cert);
    out.add("HANDLER_TLS_KEY", &document.handler.tls_key);
    out.add("HANDLER_TLS_SERVER_NAME", &document.handler.tls_server_name);
    out.add("SCC_MAX_IN_FLIGHT", &document.processing.max_in_flight);
    out.add("SCC_PROCESSING_ORDER", &document.processing.order);
    out.add("SCC_PARTITION_BUFFER", &document.processing.partition_buffer);
    out.add("SCC_BACKOFF_BASE_MS", &document.processing.backoff_base_ms);
    out.add("SCC_BACKOFF_MAX_MS", &document.processing.backoff_max_ms);
    out.add("SCC_COMMIT_INTERVAL_MS", &document.commit.interval_ms);
    out.add("SCC_COMMIT_UNHEALTHY_AFTER_MS", &document.commit.unhealthy_after_ms);
    out.add("SCC_REVOKE_TIMEOUT_MS", &document.rebalance.revoke_timeout_ms);
    out.add("SCC_SHUTDOWN_TIMEOUT_MS", &document.shutdown.timeout_ms);
    out.add("SCC_HTTP_ADDR", &document.telemetry.http_addr);
    out.add("SCC_LOG_FORMAT", &document.telemetry.log_format);
    out.add("SCC_DLQ_TOPIC", &document.dead_letter.topic);
    out.add("SCC_DLQ_TIMEOUT_MS", &document.dead_letter.timeout_ms);
}

/// Returns the `[[topics]]` entries with the lines of their values.
fn topic_entries(document: &Document, text: &str) -> Vec<FileTopic> {
    document
        .topics
        .iter()
        .enumerate()
        .map(|(index, entry)| FileTopic {
            key: format!("{TOPICS_KEY}[{index}]"),
            name: entry.name.get_ref().clone(),
            name_line: line_of(text, entry.name.span().start),
            handler_endpoint: entry
                .handler_endpoint
                .as_ref()
                .map(|endpoint| (endpoint.get_ref().clone(), line_of(text, endpoint.span().start))),
        })
        .collect()
}

/// Gathers [`FileSetting`]s with the lines of their values.
struct Collector<'a> {
    text: &'a str,
    settings: Vec<FileSetting>,
}

impl Collector<'_> {
    /// Adds the setting of `variable` when the file sets it.
    ///
    /// # Panics
    /// When `variable` is missing from [`SETTING_KEYS`]; a unit test sets every key.
    fn add<T: FileValue>(&mut self, variable: &str, field: &Field<T>) {
        let Some(field) = field else {
            return;
        };
        let key = SETTING_KEYS
            .iter()
            .find(|(_, known)| *known == variable)
            .map(|(key, _)| *key)
            .unwrap_or_else(|| panic!("{variable} has no entry in SETTING_KEYS"));
        self.settings.push(FileSetting {
            key: key.to_owned(),
            variable: variable.to_owned(),
            value: field.get_ref().env_value(),
            as_written: field.get_ref().as_written(),
            line: line_of(self.text, field.span().start),
        });
    }
}

/// A property problem: the span of the value, the key, and the message.
type PropertyError = (std::ops::Range<usize>, String, String);

/// Adds the `[kafka.properties]` settings as `KAFKA_CFG_<NAME>` variables.
fn collect_properties(
    out: &mut Collector<'_>,
    properties: &BTreeMap<String, Spanned<toml::Value>>,
) -> Result<(), PropertyError> {
    for (name, value) in properties {
        collect_property(out, name, value.get_ref(), value.span())?;
    }
    Ok(())
}

fn collect_property(
    out: &mut Collector<'_>,
    name: &str,
    value: &toml::Value,
    span: std::ops::Range<usize>,
) -> Result<(), PropertyError> {
    let key = property_key(name);
    // `KAFKA_CFG_<NAME>` maps underscores to dots and ignores case, so only names made of
    // lowercase letters, digits and dots survive the trip through the environment's form.
    let valid_name = !name.is_empty()
        && name.split('.').all(|part| !part.is_empty())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.');
    if !valid_name {
        let message = "expected a librdkafka property name made of lowercase letters, digits and dots, \
                       such as \"session.timeout.ms\""
            .to_owned();
        return Err((span, key, message));
    }

    let text = match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Integer(number) => number.to_string(),
        toml::Value::Float(number) => number.to_string(),
        toml::Value::Boolean(flag) => flag.to_string(),
        // An unquoted dotted key (`session.timeout.ms = 6000`) arrives as nested tables.
        toml::Value::Table(table) => {
            for (part, inner) in table {
                collect_property(out, &format!("{name}.{part}"), inner, span.clone())?;
            }
            return Ok(());
        }
        toml::Value::Array(_) | toml::Value::Datetime(_) => {
            let message = format!("invalid type: {}, expected a string, number or boolean", value.type_str());
            return Err((span, key, message));
        }
    };
    let as_written = if is_secret_name(name) {
        "[redacted]".to_owned()
    } else if value.is_str() {
        format!("{text:?}")
    } else {
        text.clone()
    };
    out.settings.push(FileSetting {
        key,
        variable: format!("{KAFKA_CFG_PREFIX}{}", name.to_ascii_uppercase().replace('.', "_")),
        value: text,
        as_written,
        line: line_of(out.text, span.start),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, LoadError> {
        ConfigFile::parse("/etc/scc.toml", text)
    }

    fn file_error(text: &str) -> (usize, Option<String>, String) {
        match parse(text) {
            Err(LoadError::File { line, key, message, .. }) => (line, key, message),
            other => panic!("expected a file error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn keys_map_to_variables_with_lines() {
        let file = parse("[handler]\ntimeout_ms = 1500\npause_codes = [\"UNAVAILABLE\", \"ABORTED\"]\n").unwrap();
        let timeout = file.setting("SCC_HANDLER_TIMEOUT_MS").unwrap();
        assert_eq!(timeout.key, "handler.timeout_ms");
        assert_eq!(timeout.value, "1500");
        assert_eq!(timeout.line, 2);
        let codes = file.setting("SCC_PAUSE_CODES").unwrap();
        assert_eq!(codes.value, "UNAVAILABLE,ABORTED");
        assert_eq!(codes.line, 3);
    }

    #[test]
    fn every_setting_key_is_read() {
        let mut text = String::new();
        let mut section = "";
        for (key, _) in SETTING_KEYS {
            let (table, name) = key.split_once('.').unwrap();
            if table != section {
                text.push_str(&format!("[{table}]\n"));
                section = table;
            }
            let whole_number = name.ends_with("_ms")
                || ["max_in_flight", "partition_buffer", "max_message_bytes", "batch_max"].contains(&name);
            let value = if whole_number { "7" } else { "\"x\"" };
            text.push_str(&format!("{name} = {value}\n"));
        }

        let file = parse(&text).unwrap();
        for (key, variable) in SETTING_KEYS {
            let setting = file.setting(variable).unwrap_or_else(|| panic!("{key} was not read"));
            assert_eq!(setting.key, *key);
        }
        assert_eq!(file.settings.len(), SETTING_KEYS.len());
    }

    #[test]
    fn properties_accept_quoted_and_dotted_names() {
        let file = parse(
            "[kafka.properties]\n\"session.timeout.ms\" = 6000\nfetch.wait.max.ms = 100\n\"enable.ssl.certificate.verification\" = false\n",
        )
        .unwrap();
        let session = file.setting("KAFKA_CFG_SESSION_TIMEOUT_MS").unwrap();
        assert_eq!(session.value, "6000");
        assert_eq!(session.key, "kafka.properties.\"session.timeout.ms\"");
        let fetch = file.setting("KAFKA_CFG_FETCH_WAIT_MAX_MS").unwrap();
        assert_eq!(fetch.value, "100");
        assert_eq!(fetch.line, 3);
        let verification = file.setting("KAFKA_CFG_ENABLE_SSL_CERTIFICATE_VERIFICATION").unwrap();
        assert_eq!(verification.value, "false");
    }

    #[test]
    fn secret_properties_are_not_shown() {
        let file = parse("[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n").unwrap();
        let password = file.setting("KAFKA_CFG_SASL_PASSWORD").unwrap();
        assert_eq!(password.value, "hunter2");
        assert_eq!(password.as_written, "[redacted]");
    }

    #[test]
    fn topics_become_one_list() {
        let file = parse(
            "[[topics]]\nname = \"payments\"\nhandler_endpoint = \"http://127.0.0.1:50052\"\n\n[[topics]]\nname = \"refunds\"\n",
        )
        .unwrap();
        let topics = file.setting(TOPICS_VARIABLE).unwrap();
        assert_eq!(topics.value, "payments,refunds");
        assert_eq!(topics.line, 2);
        assert_eq!(file.topics.len(), 2);
        assert_eq!(file.topics[0].handler_endpoint, Some(("http://127.0.0.1:50052".to_owned(), 3)));
        assert_eq!(file.topics[1].key, "topics[1]");
        assert_eq!(file.topics[1].name_line, 6);
        assert_eq!(file.topics[1].handler_endpoint, None);
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let (line, key, message) = file_error("[handler]\ntimeout_ms = 5\ntimeout = 3\n");
        assert_eq!(line, 3);
        assert_eq!(key.as_deref(), Some("handler.timeout"));
        assert!(message.contains("unknown key `timeout`"), "{message}");

        let (line, key, _) = file_error("[[topics]]\nname = \"a\"\n\n[[topics]]\nname = \"b\"\nendpoint = \"x\"\n");
        assert_eq!(line, 6);
        assert_eq!(key.as_deref(), Some("topics[1].endpoint"));

        let (line, key, _) = file_error("# comment\n[sidecar]\n");
        assert_eq!(line, 2);
        assert_eq!(key.as_deref(), Some("sidecar"));
    }

    #[test]
    fn wrong_types_are_named_with_the_expected_type() {
        let (line, key, message) = file_error("[handler]\n\ntimeout_ms = \"soon\"\n");
        assert_eq!(line, 3);
        assert_eq!(key.as_deref(), Some("handler.timeout_ms"));
        assert!(message.contains("expected a whole number"), "{message}");

        let (_, key, message) = file_error("[processing]\nmax_in_flight = 1.5\n");
        assert_eq!(key.as_deref(), Some("processing.max_in_flight"));
        assert!(message.contains("expected a whole number"), "{message}");

        let (_, key, message) = file_error("[kafka]\nbrokers = 9092\n");
        assert_eq!(key.as_deref(), Some("kafka.brokers"));
        assert!(message.contains("a string or an array of strings"), "{message}");

        let (_, key, message) = file_error("[kafka.properties]\n\"client.id\" = [\"a\"]\n");
        assert_eq!(key.as_deref(), Some("kafka.properties.\"client.id\""));
        assert!(message.contains("expected a string, number or boolean"), "{message}");
    }

    #[test]
    fn property_names_must_survive_the_environment_form() {
        let (line, key, message) = file_error("[kafka.properties]\n\"client.id\" = \"a\"\n\"Client_ID\" = \"b\"\n");
        assert_eq!(line, 3);
        assert_eq!(key.as_deref(), Some("kafka.properties.\"Client_ID\""));
        assert!(message.contains("lowercase letters, digits and dots"), "{message}");
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        let (line, key, message) = file_error("[kafka]\ngroup_id = \"a\"\n[handler\n");
        assert_eq!(line, 3);
        assert_eq!(key, None);
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn variables_map_back_to_keys() {
        assert_eq!(key_for_variable("SCC_SHUTDOWN_TIMEOUT_MS").as_deref(), Some("shutdown.timeout_ms"));
        assert_eq!(key_for_variable("KAFKA_TOPIC").as_deref(), Some("topics"));
        assert_eq!(key_for_variable("KAFKA_CFG_SASL_PASSWORD").as_deref(), Some("kafka.properties.\"sasl.password\""));
        assert_eq!(key_for_variable("RUST_LOG"), None);
    }
}
