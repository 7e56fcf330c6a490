//! Combines the configuration file and the environment into one validated [`Config`] and the
//! per-topic handler routes.
//!
//! Precedence: an environment variable overrides the file key with the same meaning, and the
//! file overrides the built-in default. So a file can hold the settings of a deployment while
//! secrets and per-pod values come from the environment. `KAFKA_TOPIC` in the environment
//! replaces the file's whole `[[topics]]` list.
//!
//! Both sources go through `Config::from_vars`, so a value is valid in the file exactly when it
//! is valid in the environment. An invalid value's error names the source it came from: the
//! file key, the file and the line, or the environment variable.

use std::collections::BTreeMap;
use std::path::Path;

use super::file::{ConfigFile, FileTopic, SETTING_KEYS, TOPICS_KEY, TOPICS_VARIABLE, key_for_variable};
use super::{Config, ConfigError, is_secret_name};

/// The environment variable of the default handler endpoint.
const ENDPOINT_VARIABLE: &str = "HANDLER_ENDPOINT";

/// An error that stops the configuration from loading; the binary prints it on one line and
/// exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The configuration file could not be read.
    #[error("reading the configuration file {path} failed: {source}")]
    Read { path: String, source: std::io::Error },
    /// The file is not valid TOML, has an unknown key, or has a value of the wrong type.
    #[error("invalid configuration file {path}, line {line}: {message}")]
    File {
        path: String,
        line: usize,
        /// The key at fault, when the error concerns one.
        key: Option<String>,
        message: String,
    },
    /// A value from the file failed the validation that the environment's values get.
    #[error("invalid configuration: {key} = {value} in {path}, line {line}: {expected}")]
    Value {
        path: String,
        key: String,
        line: usize,
        /// The value as written in the file, or `[redacted]` for a secret.
        value: String,
        expected: String,
    },
    /// A setting that neither the file nor the environment sets has no valid default here.
    #[error("invalid configuration: {key} in {path}, or {variable} in the environment: {expected}")]
    Unset { path: String, key: String, variable: String, expected: String },
    /// A value from the environment is invalid.
    #[error(transparent)]
    Env(#[from] ConfigError),
}

/// The handler endpoints of topics that have their own; other topics use the default
/// endpoint, `HANDLER_ENDPOINT`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicRoutes {
    endpoints: BTreeMap<String, String>,
}

impl TopicRoutes {
    /// Builds routes from `(topic, endpoint)` pairs whose endpoints are already validated.
    pub fn new<T: Into<String>, E: Into<String>>(routes: impl IntoIterator<Item = (T, E)>) -> TopicRoutes {
        TopicRoutes { endpoints: routes.into_iter().map(|(topic, endpoint)| (topic.into(), endpoint.into())).collect() }
    }

    /// Returns the topic's own endpoint, if it has one.
    pub fn endpoint(&self, topic: &str) -> Option<&str> {
        self.endpoints.get(topic).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Formats the routes for the start-up log and `--check-config`, as
    /// `handler[payments]=http://127.0.0.1:50052`, separated by spaces.
    pub fn summary(&self) -> String {
        let routes: Vec<String> =
            self.endpoints.iter().map(|(topic, endpoint)| format!("handler[{topic}]={endpoint}")).collect();
        routes.join(" ")
    }
}

/// The loaded configuration.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    pub routes: TopicRoutes,
}

impl Loaded {
    /// Formats the effective configuration on one line with secrets redacted: the
    /// configuration's summary followed by the topic routes.
    pub fn summary(&self) -> String {
        if self.routes.is_empty() {
            self.config.summary()
        } else {
            format!("{} {}", self.config.summary(), self.routes.summary())
        }
    }
}

/// Loads the configuration from the environment `env` and, when `file` is given, from that
/// TOML file; the environment overrides the file.
pub fn load<I, K, V>(file: Option<&Path>, env: I) -> Result<Loaded, LoadError>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    let env: BTreeMap<String, String> = env.into_iter().map(|(name, value)| (name.into(), value.into())).collect();
    match file {
        None => Ok(Loaded { config: Config::from_vars(env)?, routes: TopicRoutes::default() }),
        Some(path) => Layers { file: ConfigFile::read(path)?, env }.resolve(),
    }
}

/// Loads the configuration from the TOML `text` of a file named `path` and the environment
/// `env`, without reading any file.
pub fn load_str<I, K, V>(path: &str, text: &str, env: I) -> Result<Loaded, LoadError>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    let env = env.into_iter().map(|(name, value)| (name.into(), value.into())).collect();
    Layers { file: ConfigFile::parse(path, text)?, env }.resolve()
}

/// A parsed file and the environment, before validation.
struct Layers {
    file: ConfigFile,
    env: BTreeMap<String, String>,
}

impl Layers {
    fn resolve(&self) -> Result<Loaded, LoadError> {
        self.check_topic_entries()?;
        let vars = self.merged();
        let config = Config::from_vars(vars.clone()).map_err(|error| self.explain(error, &vars))?;
        let routes = self.routes(&config, &vars)?;
        Ok(Loaded { config, routes })
    }

    /// Returns the variables `Config::from_vars` reads: the file's settings, then the
    /// environment on top.
    fn merged(&self) -> BTreeMap<String, String> {
        let mut vars: BTreeMap<String, String> =
            self.file.settings.iter().map(|setting| (setting.variable.clone(), setting.value.clone())).collect();
        vars.extend(self.env.iter().map(|(name, value)| (name.clone(), value.clone())));
        vars
    }

    /// Rejects what the joined `KAFKA_TOPIC` list would hide: a name with a comma, which would
    /// split into two topics, and a topic listed twice.
    fn check_topic_entries(&self) -> Result<(), LoadError> {
        for (index, topic) in self.file.topics.iter().enumerate() {
            if topic.name.contains(',') {
                return Err(
                    self.entry_error(topic, "expected one topic name; give each topic its own [[topics]] entry")
                );
            }
            if self.file.topics[..index].iter().any(|earlier| earlier.name == topic.name) {
                return Err(self.entry_error(topic, "expected each topic once; this topic has an earlier entry"));
            }
        }
        Ok(())
    }

    /// Turns an error of `Config::from_vars` into one that names where the value came from.
    fn explain(&self, error: ConfigError, vars: &BTreeMap<String, String>) -> LoadError {
        if self.env.contains_key(&error.variable) {
            return LoadError::Env(error);
        }
        if error.variable == TOPICS_VARIABLE
            && let Some(entry) = self.failing_topic_entry(vars)
        {
            return self.entry_error(entry, &error.expected);
        }
        let expected = file_vocabulary(&error.expected);
        match (self.file.setting(&error.variable), key_for_variable(&error.variable)) {
            (Some(setting), _) => LoadError::Value {
                path: self.file.path.clone(),
                key: setting.key.clone(),
                line: setting.line,
                value: if is_secret_name(&setting.key) { "[redacted]".to_owned() } else { setting.as_written.clone() },
                expected,
            },
            (None, Some(key)) => {
                LoadError::Unset { path: self.file.path.clone(), key, variable: error.variable, expected }
            }
            (None, None) => LoadError::Env(error),
        }
    }

    /// Finds the first `[[topics]]` entry whose name alone fails validation.
    fn failing_topic_entry(&self, vars: &BTreeMap<String, String>) -> Option<&FileTopic> {
        self.file.topics.iter().find(|topic| {
            let mut vars = vars.clone();
            vars.insert(TOPICS_VARIABLE.to_owned(), topic.name.clone());
            Config::from_vars(vars).is_err_and(|error| error.variable == TOPICS_VARIABLE)
        })
    }

    fn entry_error(&self, topic: &FileTopic, expected: &str) -> LoadError {
        LoadError::Value {
            path: self.file.path.clone(),
            key: format!("{}.name", topic.key),
            line: topic.name_line,
            value: format!("{:?}", topic.name),
            expected: file_vocabulary(expected),
        }
    }

    /// Validates each `[[topics]]` entry's own handler endpoint by the rules of
    /// `HANDLER_ENDPOINT`, together with the other settings, and returns the routes.
    fn routes(&self, config: &Config, vars: &BTreeMap<String, String>) -> Result<TopicRoutes, LoadError> {
        let mut routes = Vec::new();
        for topic in &self.file.topics {
            let Some((endpoint, line)) = &topic.handler_endpoint else {
                continue;
            };
            let endpoint_error = |expected: String| LoadError::Value {
                path: self.file.path.clone(),
                key: format!("{}.handler_endpoint", topic.key),
                line: *line,
                value: format!("{endpoint:?}"),
                expected,
            };

            if !config.topics.contains(&topic.name) {
                return Err(endpoint_error(format!(
                    "topic {} is not subscribed, because {TOPICS_VARIABLE} in the environment replaces the \
                     file's topics; add the topic to {TOPICS_VARIABLE} or remove this entry",
                    topic.name
                )));
            }
            let mut vars = vars.clone();
            vars.insert(ENDPOINT_VARIABLE.to_owned(), endpoint.clone());
            match Config::from_vars(vars) {
                Ok(_) => routes.push((topic.name.clone(), endpoint.clone())),
                Err(error) if error.variable == ENDPOINT_VARIABLE => {
                    return Err(endpoint_error(file_vocabulary(&error.expected)));
                }
                Err(error) => return Err(self.explain(error, &self.merged())),
            }
        }
        Ok(TopicRoutes::new(routes))
    }
}

/// Rewrites the environment variable names in a validation message as file keys, for an error
/// about a value from the file.
fn file_vocabulary(expected: &str) -> String {
    let mut names: Vec<(&str, &str)> = SETTING_KEYS.iter().map(|(key, variable)| (*variable, *key)).collect();
    names.push((TOPICS_VARIABLE, TOPICS_KEY));
    // Longer names first, so that no name is rewritten inside a longer one.
    names.sort_by_key(|(variable, _)| std::cmp::Reverse(variable.len()));
    names.iter().fold(expected.to_owned(), |text, (variable, key)| text.replace(variable, key))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const PATH: &str = "/etc/scc.toml";

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Loaded, LoadError> {
        load_str(PATH, text, env.iter().copied())
    }

    fn value_error(text: &str, env: &[(&str, &str)]) -> (String, usize, String, String) {
        match load(text, env) {
            Err(LoadError::Value { key, line, value, expected, .. }) => (key, line, value, expected),
            other => panic!("expected a value error, got {other:?}"),
        }
    }

    #[test]
    fn file_values_reach_the_config() {
        let loaded = load(
            "[kafka]\nbrokers = [\"127.0.0.1:9092\", \"127.0.0.1:9093\"]\n\n[[topics]]\nname = \"payments\"\n\n\
             [handler]\ntimeout_ms = 1500\n\n[shutdown]\ntimeout_ms = 20000\n\n[kafka.properties]\n\"session.timeout.ms\" = 6000\n",
            &[],
        )
        .unwrap();
        assert_eq!(loaded.config.brokers, "127.0.0.1:9092,127.0.0.1:9093");
        assert_eq!(loaded.config.topics, vec!["payments"]);
        assert_eq!(loaded.config.handler_timeout, Duration::from_millis(1500));
        assert_eq!(loaded.config.shutdown_timeout, Duration::from_millis(20_000));
        assert_eq!(loaded.config.kafka_properties.get("session.timeout.ms").map(String::as_str), Some("6000"));
        assert!(loaded.routes.is_empty());
    }

    #[test]
    fn environment_overrides_the_file() {
        let loaded = load(
            "[[topics]]\nname = \"payments\"\n\n[handler]\ntimeout_ms = 1500\n\n[kafka.properties]\n\"sasl.username\" = \"file\"\n",
            &[("SCC_HANDLER_TIMEOUT_MS", "2500"), ("KAFKA_CFG_SASL_USERNAME", "env"), ("KAFKA_TOPIC", "audit")],
        )
        .unwrap();
        assert_eq!(loaded.config.handler_timeout, Duration::from_millis(2500));
        assert_eq!(loaded.config.kafka_properties.get("sasl.username").map(String::as_str), Some("env"));
        assert_eq!(loaded.config.topics, vec!["audit"]);
    }

    #[test]
    fn invalid_file_value_names_key_line_and_form() {
        let (key, line, value, expected) = value_error("[[topics]]\nname = \"a\"\n\n[handler]\ntimeout_ms = 0\n", &[]);
        assert_eq!(key, "handler.timeout_ms");
        assert_eq!(line, 5);
        assert_eq!(value, "0");
        assert!(expected.contains("milliseconds from 1 to 3600000"), "{expected}");

        let error = load("[[topics]]\nname = \"a\"\n\n[processing]\norder = \"random\"\n", &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid configuration: processing.order = \"random\" in /etc/scc.toml, line 5: expected key, partition or unordered"
        );
    }

    #[test]
    fn invalid_environment_value_names_the_variable() {
        let error =
            load("[[topics]]\nname = \"a\"\n\n[handler]\ntimeout_ms = 0\n", &[("SCC_HANDLER_TIMEOUT_MS", "abc")])
                .unwrap_err();
        let LoadError::Env(error) = error else {
            panic!("expected an environment error, got {error:?}");
        };
        assert_eq!(error.variable, "SCC_HANDLER_TIMEOUT_MS");
        assert_eq!(error.value, "abc");
    }

    #[test]
    fn cross_checks_use_file_keys() {
        let (key, _, _, expected) = value_error(
            "[[topics]]\nname = \"a\"\n\n[processing]\nbackoff_base_ms = 2000\nbackoff_max_ms = 1000\n",
            &[],
        );
        assert_eq!(key, "processing.backoff_max_ms");
        assert!(expected.contains("processing.backoff_base_ms"), "{expected}");
        assert!(!expected.contains("SCC_"), "{expected}");
    }

    #[test]
    fn unset_invalid_default_names_both_sources() {
        let error = load("[handler]\ntimeout_ms = 100\n", &[]).unwrap_err();
        let LoadError::Unset { key, variable, .. } = &error else {
            panic!("expected an unset error, got {error:?}");
        };
        assert_eq!(key, "topics");
        assert_eq!(variable, "KAFKA_TOPIC");

        let error = load("[[topics]]\nname = \"a\"\n\n[processing]\nbackoff_base_ms = 20000\n", &[]).unwrap_err();
        let LoadError::Unset { key, .. } = &error else {
            panic!("expected an unset error, got {error:?}");
        };
        assert_eq!(key, "processing.backoff_max_ms");
    }

    #[test]
    fn invalid_topic_entry_is_named() {
        let (key, line, value, _) = value_error("[[topics]]\nname = \"a\"\n\n[[topics]]\nname = \"b c\"\n", &[]);
        assert_eq!(key, "topics[1].name");
        assert_eq!(line, 5);
        assert_eq!(value, "\"b c\"");

        let (key, _, _, expected) = value_error("[[topics]]\nname = \"a,b\"\n", &[]);
        assert_eq!(key, "topics[0].name");
        assert!(expected.contains("its own [[topics]] entry"), "{expected}");

        let (key, _, _, expected) = value_error("[[topics]]\nname = \"a\"\n[[topics]]\nname = \"a\"\n", &[]);
        assert_eq!(key, "topics[1].name");
        assert!(expected.contains("earlier entry"), "{expected}");
    }

    #[test]
    fn topic_endpoints_become_routes() {
        let loaded = load(
            "[[topics]]\nname = \"payments\"\nhandler_endpoint = \"http://127.0.0.1:50052\"\n\n[[topics]]\nname = \"refunds\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(loaded.config.topics, vec!["payments", "refunds"]);
        assert_eq!(loaded.routes.endpoint("payments"), Some("http://127.0.0.1:50052"));
        assert_eq!(loaded.routes.endpoint("refunds"), None);
        assert!(loaded.summary().ends_with(" handler[payments]=http://127.0.0.1:50052"), "{}", loaded.summary());
    }

    #[test]
    fn topic_endpoint_follows_handler_endpoint_rules() {
        let (key, line, value, expected) =
            value_error("[[topics]]\nname = \"payments\"\nhandler_endpoint = \"127.0.0.1:50052\"\n", &[]);
        assert_eq!(key, "topics[0].handler_endpoint");
        assert_eq!(line, 3);
        assert_eq!(value, "\"127.0.0.1:50052\"");
        assert!(expected.contains("http://"), "{expected}");
    }

    #[test]
    fn route_for_replaced_topic_rejected() {
        let (key, _, _, expected) = value_error(
            "[[topics]]\nname = \"payments\"\nhandler_endpoint = \"http://127.0.0.1:50052\"\n",
            &[("KAFKA_TOPIC", "refunds")],
        );
        assert_eq!(key, "topics[0].handler_endpoint");
        assert!(expected.contains("not subscribed"), "{expected}");

        let loaded = load(
            "[[topics]]\nname = \"payments\"\nhandler_endpoint = \"http://127.0.0.1:50052\"\n",
            &[("KAFKA_TOPIC", "payments,refunds")],
        )
        .unwrap();
        assert_eq!(loaded.routes.endpoint("payments"), Some("http://127.0.0.1:50052"));
    }

    #[test]
    fn secrets_from_the_file_are_redacted() {
        let text = "[[topics]]\nname = \"a\"\n\n[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n";
        let loaded = load(text, &[]).unwrap();
        let summary = loaded.summary();
        assert!(summary.contains("sasl.password=[redacted]"), "{summary}");
        assert!(!summary.contains("hunter2"), "{summary}");

        let text = "[[topics]]\nname = \"a\"\n\n[kafka.properties]\n\"ssl.key.password\" = \"hunter2\"\n\"group.id\" = \"x\"\n";
        let error = load(text, &[]).unwrap_err().to_string();
        assert!(error.contains("kafka.properties.\"group.id\""), "{error}");
        assert!(error.contains("set kafka.group_id"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let path = std::env::temp_dir().join("kafka-scc-no-such-config.toml");
        let error = super::load(Some(&path), [("KAFKA_TOPIC", "a")]).unwrap_err();
        assert!(matches!(error, LoadError::Read { .. }), "{error:?}");
        assert!(error.to_string().contains("kafka-scc-no-such-config.toml"), "{error}");
    }
}
