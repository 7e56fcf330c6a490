//! Secrets stay out of everything the `kafka-scc` binary prints or serves: `--check-config`
//! output, configuration errors, the logs of a real run at debug level with librdkafka's own
//! debug logging on, and `/metrics`. The secrets are Kafka passwords, the SASL/OAUTHBEARER
//! configuration, an unrelated `*SECRET*` variable of the pod, and the private key file of the
//! handler's mutual TLS.

mod support;

use std::time::Duration;

use support::binary::{drain_pipe, run_binary, spawn_binary};
use support::pki::TestPki;
use support::*;

const SASL_PASSWORD: &str = "sasl-pw-Zq8vLm3x";
const SSL_KEY_PASSWORD: &str = "key-pw-Hr5tNw2k";
const KEYSTORE_PASSWORD: &str = "keystore-pw-Ub6sJy9f";
const OAUTHBEARER_CONFIG: &str = "principal=alice extension_token=oauth-token-Pj7cXe4d";
const APP_SECRET: &str = "app-secret-Wd3kQa8n";

/// Returns the secret settings every run below gets. With the default PLAINTEXT protocol
/// librdkafka accepts the Kafka ones and does not use them, so the binary runs against the mock
/// broker.
/// `sasl.oauthbearer.client.secret` is not among them: librdkafka rejects it in a build
/// without libcurl, which OIDC needs.
fn secret_vars() -> Vec<(&'static str, &'static str)> {
    vec![
        ("KAFKA_CFG_SASL_USERNAME", "alice"),
        ("KAFKA_CFG_SASL_PASSWORD", SASL_PASSWORD),
        ("KAFKA_CFG_SSL_KEY_PASSWORD", SSL_KEY_PASSWORD),
        ("KAFKA_CFG_SSL_KEYSTORE_PASSWORD", KEYSTORE_PASSWORD),
        ("KAFKA_CFG_SASL_OAUTHBEARER_CONFIG", OAUTHBEARER_CONFIG),
        // Not a kafka-scc setting: other containers' secrets end up in the same environment.
        ("APP_CLIENT_SECRET", APP_SECRET),
    ]
}

/// Returns every secret text: the values above and each base64 line of the client's private key.
fn secrets(pki: &TestPki) -> Vec<String> {
    let mut secrets: Vec<String> =
        [SASL_PASSWORD, SSL_KEY_PASSWORD, KEYSTORE_PASSWORD, "oauth-token-Pj7cXe4d", APP_SECRET]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
    secrets.extend(pki.client.key_pem.lines().filter(|line| !line.starts_with("-----")).map(str::to_owned));
    secrets
}

fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(!text.contains(secret.as_str()), "{what} contains the secret {secret:?}:\n{text}");
    }
}

/// Runs the binary to completion with only `env`; returns its exit code, stdout and stderr.
async fn run_to_exit(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let run = run_binary(args, env).await;
    (run.code, run.stdout, run.stderr)
}

#[tokio::test]
async fn check_config_redacts_secrets() {
    let pki = TestPki::new();
    let mut env = secret_vars();
    let ca = pki.ca_path.to_str().unwrap();
    let cert = pki.client.cert_path.to_str().unwrap();
    let key = pki.client.key_path.to_str().unwrap();
    env.extend([
        ("KAFKA_TOPIC", "events"),
        ("HANDLER_ENDPOINT", "https://127.0.0.1:9"),
        ("HANDLER_TLS_CA", ca),
        ("HANDLER_TLS_CERT", cert),
        ("HANDLER_TLS_KEY", key),
    ]);

    let (code, stdout, stderr) = run_to_exit(&env, &["--check-config"]).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_no_secret("--check-config stdout", &stdout, &secrets(&pki));
    assert_no_secret("--check-config stderr", &stderr, &secrets(&pki));
    for name in ["sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.config"] {
        assert!(stdout.contains(&format!("{name}=[redacted]")), "{name} not shown as redacted: {stdout}");
    }
    assert!(stdout.contains("sasl.username=alice"), "{stdout}");
    assert!(stdout.contains(&format!("handler_tls_key={key}")), "{stdout}");
}

#[tokio::test]
async fn config_errors_redact_secrets() {
    let pki = TestPki::new();
    let broken_key =
        pki.write("broken-key.pem", &format!("-----BEGIN PRIVATE KEY-----\n{APP_SECRET}\n-----END PRIVATE KEY-----\n"));
    let cert = pki.client.cert_path.to_str().unwrap();
    let ca = pki.ca_path.to_str().unwrap();
    let cases: Vec<Vec<(&str, &str)>> = vec![
        // No such librdkafka property; the name says the value is secret.
        vec![("KAFKA_CFG_MY_SECRET", SASL_PASSWORD)],
        // librdkafka's `ssl_key` cannot be set by name; the value is a private key.
        vec![("KAFKA_CFG_SSL_KEY", pki.client.key_pem.as_str())],
        // A key file without a valid key, with the secret inside.
        vec![
            ("HANDLER_ENDPOINT", "https://127.0.0.1:9"),
            ("HANDLER_TLS_CA", ca),
            ("HANDLER_TLS_CERT", cert),
            ("HANDLER_TLS_KEY", broken_key.to_str().unwrap()),
        ],
        // An invalid value next to valid secrets.
        vec![("SCC_MAX_IN_FLIGHT", "lots")],
    ];
    for case in cases {
        let mut env = secret_vars();
        env.push(("KAFKA_TOPIC", "events"));
        env.extend(case.iter().copied());
        let (code, stdout, stderr) = run_to_exit(&env, &[]).await;
        let at = case.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(",");
        assert_eq!(code, Some(2), "{at}: stderr {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{at}: stderr {stderr}");
        assert_no_secret(&format!("the error for {at}"), &stderr, &secrets(&pki));
        assert_no_secret(&format!("stdout for {at}"), &stdout, &secrets(&pki));
    }
}

/// A real run over mutual TLS to the handler, with `RUST_LOG=debug` and every librdkafka debug
/// context on. librdkafka dumps its configuration at debug level with its sensitive properties
/// redacted; kafka-scc also scrubs every secret value from librdkafka's messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_run_logs_and_metrics_redact_secrets() {
    const COUNT: i64 = 5;

    init_logs();
    let pki = TestPki::new();
    let broker = Broker::start();
    let topic = unique("secrets");
    let group = unique("group");
    broker.create_topic(&topic, 1);
    broker.produce(keyed_records(&topic, 0, COUNT as usize, 2)).await;
    let handler = RecordingHandler::new(|_| async { Ok(()) });
    let options = ServerOptions { tls: Some(pki.server_mtls()), health: true, ..ServerOptions::default() };
    let server = HandlerServer::start_with(handler.clone(), options).await;

    let http_addr = free_loopback_addr().to_string();
    let endpoint = server.endpoint();
    let mut env = secret_vars();
    env.extend([
        ("KAFKA_BROKERS", broker.bootstrap.as_str()),
        ("KAFKA_GROUP_ID", group.as_str()),
        ("KAFKA_TOPIC", topic.as_str()),
        ("HANDLER_ENDPOINT", endpoint.as_str()),
        ("HANDLER_TLS_CA", pki.ca_path.to_str().unwrap()),
        ("HANDLER_TLS_CERT", pki.client.cert_path.to_str().unwrap()),
        ("HANDLER_TLS_KEY", pki.client.key_path.to_str().unwrap()),
        ("SCC_HTTP_ADDR", http_addr.as_str()),
        ("SCC_COMMIT_INTERVAL_MS", "50"),
        ("SCC_SHUTDOWN_TIMEOUT_MS", "5000"),
        ("KAFKA_CFG_SESSION_TIMEOUT_MS", "6000"),
        ("KAFKA_CFG_HEARTBEAT_INTERVAL_MS", "500"),
        ("KAFKA_CFG_DEBUG", "all"),
        ("RUST_LOG", "debug"),
    ]);
    let mut child = spawn_binary::<&str>(&[], &env);
    // Drain both pipes while the binary runs, so a full pipe can never block it.
    let logs = drain_pipe(child.stderr.take().expect("stderr is piped"));
    let output = drain_pipe(child.stdout.take().expect("stdout is piped"));

    let committed = broker.wait_for_committed(&group, &topic, &[COUNT]).await;
    assert!(committed.is_ok(), "broker committed offsets: {committed:?}");
    assert_eq!(handler.calls().len(), COUNT as usize);
    let metrics = reqwest::get(format!("http://{http_addr}/metrics"))
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("a text body");
    assert!(metrics.contains("scc_messages_total"), "{metrics}");

    let pid = child.id().expect("the binary is still running").to_string();
    let kill = std::process::Command::new("kill").args(["-TERM", pid.as_str()]).status().expect("kill runs");
    assert!(kill.success(), "kill -TERM failed: {kill}");
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the binary exits after SIGTERM")
        .expect("the binary's exit status is read");
    let logs = tokio::time::timeout(Duration::from_secs(10), logs).await.expect("logs read").expect("log reader");
    let output = output.await.expect("stdout reader");
    assert_eq!(status.code(), Some(0), "exit status {status}");

    // The run logged at debug level, librdkafka's configuration dump included.
    assert!(logs.contains("librdkafka"), "no librdkafka log lines");
    // librdkafka's own dump line; kafka-scc's start-up line writes `sasl.password=[redacted]`.
    assert!(logs.contains("sasl.password = [redacted]"), "no librdkafka configuration dump in the debug log");
    let secrets = secrets(&pki);
    assert_no_secret("the log", &logs, &secrets);
    assert_no_secret("stdout", &output, &secrets);
    assert_no_secret("/metrics", &metrics, &secrets);
    server.stop().await;
}
