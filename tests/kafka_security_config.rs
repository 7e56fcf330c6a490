//! Kafka over TLS and SASL through `KAFKA_CFG_*`: librdkafka, built with OpenSSL, accepts
//! SASL_SSL with SCRAM and SSL with a client certificate, and loads the certificate files when
//! the consumer is created.
//!
//! NOTE: librdkafka's mock cluster has no TLS or SASL listener, so these tests stop at
//! configuration and client creation. No TLS or SASL handshake with a broker is exercised.

mod support;

use kafka_scc::Config;
use rdkafka::consumer::BaseConsumer;
use support::pki::TestPki;

/// A closed loopback port: the consumers below never reach a broker.
const NO_BROKER: &str = "127.0.0.1:9";

fn kafka_config(extra: &[(&str, &str)]) -> Result<Config, kafka_scc::ConfigError> {
    let mut vars =
        vec![("KAFKA_BROKERS", NO_BROKER), ("KAFKA_TOPIC", "secure"), ("HANDLER_ENDPOINT", "http://127.0.0.1:9")];
    vars.extend_from_slice(extra);
    Config::from_vars(vars)
}

#[test]
fn sasl_ssl_scram_is_accepted() {
    let config = kafka_config(&[
        ("KAFKA_CFG_SECURITY_PROTOCOL", "sasl_ssl"),
        ("KAFKA_CFG_SASL_MECHANISMS", "SCRAM-SHA-512"),
        ("KAFKA_CFG_SASL_USERNAME", "alice"),
        ("KAFKA_CFG_SASL_PASSWORD", "scram-password"),
    ])
    .expect("librdkafka accepts SASL_SSL with SCRAM-SHA-512");
    assert_eq!(config.kafka_properties.get("security.protocol").map(String::as_str), Some("sasl_ssl"));

    let consumer: Result<BaseConsumer, _> = config.consumer_config().create();
    assert!(consumer.is_ok(), "consumer not created: {:?}", consumer.err());
}

#[test]
fn sasl_plain_is_accepted() {
    let config = kafka_config(&[
        ("KAFKA_CFG_SECURITY_PROTOCOL", "sasl_plaintext"),
        ("KAFKA_CFG_SASL_MECHANISMS", "PLAIN"),
        ("KAFKA_CFG_SASL_USERNAME", "alice"),
        ("KAFKA_CFG_SASL_PASSWORD", "plain-password"),
    ])
    .expect("librdkafka accepts SASL/PLAIN");
    let consumer: Result<BaseConsumer, _> = config.consumer_config().create();
    assert!(consumer.is_ok(), "consumer not created: {:?}", consumer.err());
}

#[test]
fn ssl_client_certificate_is_loaded() {
    let pki = TestPki::new();
    let config = kafka_config(&[
        ("KAFKA_CFG_SECURITY_PROTOCOL", "ssl"),
        ("KAFKA_CFG_SSL_CA_LOCATION", pki.ca_path.to_str().unwrap()),
        ("KAFKA_CFG_SSL_CERTIFICATE_LOCATION", pki.client.cert_path.to_str().unwrap()),
        ("KAFKA_CFG_SSL_KEY_LOCATION", pki.client.key_path.to_str().unwrap()),
    ])
    .expect("librdkafka accepts SSL with a client certificate");

    // librdkafka reads and checks the certificate files when the client is created.
    let consumer: Result<BaseConsumer, _> = config.consumer_config().create();
    assert!(consumer.is_ok(), "consumer not created: {:?}", consumer.err());
}

/// Setting `ssl.key.location` checks nothing but the value's type. The configuration check
/// creates the client, which loads the file, so a file without a key is a configuration error.
#[test]
fn ssl_invalid_key_file_is_config_error() {
    let pki = TestPki::new();
    let broken = pki.write("broken-key.pem", "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n");
    let key_location = broken.to_str().unwrap();
    let error = kafka_config(&[
        ("KAFKA_CFG_SECURITY_PROTOCOL", "ssl"),
        ("KAFKA_CFG_SSL_CA_LOCATION", pki.ca_path.to_str().unwrap()),
        ("KAFKA_CFG_SSL_CERTIFICATE_LOCATION", pki.client.cert_path.to_str().unwrap()),
        ("KAFKA_CFG_SSL_KEY_LOCATION", key_location),
    ])
    .expect_err("librdkafka rejects a key file that holds no key");
    assert_eq!(error.variable, "KAFKA_CFG_SSL_KEY_LOCATION", "{error}");
    assert_eq!(error.value, key_location, "{error}");
    assert!(error.expected.contains("ssl.key.location"), "{error}");
    assert!(!error.to_string().contains("bm90IGEga2V5"), "the key file's contents were printed: {error}");
}
