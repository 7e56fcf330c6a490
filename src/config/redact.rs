//! Redaction of secret settings: which names and values are secret, and the `KAFKA_CFG_*`
//! property map whose `Debug` output hides them. Secrets never appear in `--check-config`
//! output, configuration errors, logs or metrics.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;

/// Returns true for setting names whose values must never be printed: passwords, passphrases,
/// secrets, private keys and the SASL/OAUTHBEARER settings that carry credentials. Accepts
/// librdkafka names (`ssl.key.password`) and environment variable names
/// (`KAFKA_CFG_SSL_KEY_PASSWORD`) alike.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase().replace('_', ".");
    [
        "password",
        "passphrase",
        "secret",
        "private.key",
        "ssl.key.pem",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.extensions",
    ]
    .iter()
    .any(|word| name.contains(word))
        // librdkafka's `ssl_key`, which is a private key.
        || name.ends_with("ssl.key")
}

/// Returns true for a value that contains a PEM private key, whatever the setting is called.
pub fn looks_like_private_key(value: &str) -> bool {
    value.contains("PRIVATE KEY-----")
}

/// Returns the value as it may be shown: `[redacted]` for a secret.
pub fn redacted<'a>(name: &str, value: &'a str) -> &'a str {
    if is_secret_name(name) || looks_like_private_key(value) { "[redacted]" } else { value }
}

/// Replaces every value of `secrets` in `text` with `[redacted]`. librdkafka redacts the
/// properties it marks sensitive in its own configuration dumps; this also covers any other
/// message that might quote a secret, such as an error.
pub fn scrub_secrets<'a>(text: &'a str, secrets: &[String]) -> Cow<'a, str> {
    let mut text = Cow::Borrowed(text);
    for secret in secrets {
        if text.contains(secret.as_str()) {
            text = Cow::Owned(text.replace(secret.as_str(), "[redacted]"));
        }
    }
    text
}

/// The `KAFKA_CFG_*` properties by librdkafka name. Its `Debug` output redacts secret values;
/// otherwise it is the map it dereferences to.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(BTreeMap<String, String>);

impl KafkaProperties {
    /// Returns the values of the secret properties, for scrubbing them from text that librdkafka
    /// produces, such as its log lines.
    pub fn secret_values(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(name, value)| !value.is_empty() && redacted(name, value) != value.as_str())
            .map(|(_, value)| value.clone())
            .collect()
    }
}

impl Deref for KafkaProperties {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl From<BTreeMap<String, String>> for KafkaProperties {
    fn from(map: BTreeMap<String, String>) -> Self {
        KafkaProperties(map)
    }
}

impl<'a> IntoIterator for &'a KafkaProperties {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(name, value)| (name, redacted(name, value)))).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_in_both_spellings() {
        let secret = [
            "sasl.password",
            "KAFKA_CFG_SASL_PASSWORD",
            "ssl.key.password",
            "ssl.keystore.password",
            "KAFKA_CFG_SSL_KEYSTORE_PASSWORD",
            "ssl.key.pem",
            "KAFKA_CFG_SSL_KEY_PEM",
            "ssl_key",
            "KAFKA_CFG_SSL_KEY",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.client.credentials.client.secret",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.extensions",
            "sasl.oauthbearer.assertion.private.key.pem",
            "sasl.oauthbearer.assertion.private.key.passphrase",
            "MY_API_SECRET",
        ];
        for name in secret {
            assert!(is_secret_name(name), "{name} should be secret");
        }
        let plain = [
            "sasl.username",
            "ssl.key.location",
            "ssl.certificate.location",
            "ssl.ca.location",
            "ssl.ca.pem",
            "security.protocol",
            "HANDLER_TLS_KEY",
            "KAFKA_CFG_SASL_MECHANISMS",
        ];
        for name in plain {
            assert!(!is_secret_name(name), "{name} should not be secret");
        }
    }

    #[test]
    fn private_key_values_are_redacted_by_content() {
        let pem = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----";
        assert_eq!(redacted("client.note", pem), "[redacted]");
        assert_eq!(redacted("client.note", "hello"), "hello");
    }

    #[test]
    fn scrub_replaces_every_secret() {
        let secrets = vec!["hunter2".to_owned(), "s3cr3t-token".to_owned()];
        let text = "sasl.password=hunter2 retry with hunter2 and s3cr3t-token";
        assert_eq!(scrub_secrets(text, &secrets), "sasl.password=[redacted] retry with [redacted] and [redacted]");
    }

    #[test]
    fn scrub_leaves_clean_text_borrowed() {
        let secrets = vec!["hunter2".to_owned()];
        assert!(matches!(scrub_secrets("Connected to broker 1", &secrets), Cow::Borrowed(_)));
    }

    #[test]
    fn debug_output_hides_secret_values() {
        let map: BTreeMap<String, String> = [
            ("sasl.password".to_owned(), "hunter2-debug".to_owned()),
            ("sasl.username".to_owned(), "alice".to_owned()),
        ]
        .into_iter()
        .collect();
        let properties = KafkaProperties::from(map);
        let shown = format!("{properties:?}");
        assert!(!shown.contains("hunter2-debug"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");
        assert_eq!(properties.secret_values(), vec!["hunter2-debug".to_owned()]);
    }
}
