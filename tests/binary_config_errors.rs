//! The `kafka-scc` binary rejects an invalid configuration before connecting anywhere: exit
//! code 2 and exactly one line on stderr naming the variable, the value and the accepted form.
//! For a setting that names a file, the value is the path; the file's contents are never
//! printed.

mod support;

use support::binary::run_binary;

/// Exit code the binary documents for an invalid configuration. A binary that accepted the
/// configuration would keep running, and the run's time bound would fail the test.
const EXIT_INVALID_CONFIG: i32 = 2;

/// One invalid setting: the variable, its value (`None` to leave it unset) and a piece of the
/// accepted form that the error line must contain.
struct Case {
    variable: &'static str,
    value: Option<&'static str>,
    accepted_form: &'static str,
}

const CASES: &[Case] = &[
    Case { variable: "SCC_MAX_IN_FLIGHT", value: Some("abc"), accepted_form: "whole number" },
    Case { variable: "SCC_MAX_IN_FLIGHT", value: Some("0"), accepted_form: "whole number" },
    Case { variable: "SCC_HANDLER_BATCH_MAX", value: Some("0"), accepted_form: "whole number from 1 to 10000" },
    Case { variable: "SCC_HANDLER_BATCH_MAX", value: Some("10001"), accepted_form: "whole number from 1 to 10000" },
    Case { variable: "SCC_PROCESSING_ORDER", value: Some("random"), accepted_form: "key, partition or unordered" },
    Case { variable: "KAFKA_TOPIC", value: None, accepted_form: "missing" },
    Case { variable: "KAFKA_CFG_SESSION_TIMEOUT_MS", value: Some("soon"), accepted_form: "session.timeout.ms" },
    Case { variable: "KAFKA_CFG_NO_SUCH_PROPERTY", value: Some("1"), accepted_form: "no.such.property" },
    Case { variable: "SCC_BACKOFF_BASE_MS", value: Some("-5"), accepted_form: "milliseconds" },
    Case { variable: "HANDLER_ENDPOINT", value: Some("127.0.0.1:50051"), accepted_form: "http://" },
    Case { variable: "SCC_PAUSE_CODES", value: Some("UNAVAILABLE,NOPE"), accepted_form: "gRPC code" },
];

/// Runs the binary with only the given environment; returns its exit code and stderr.
async fn run_with_env(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let run = run_binary::<&str>(&[], env).await;
    (run.code, run.stderr)
}

#[tokio::test]
async fn invalid_values_exit_with_one_line() {
    for case in CASES {
        // Every address is a closed loopback port, so a binary that wrongly accepted the
        // configuration would connect nowhere else.
        let mut env = vec![
            ("KAFKA_BROKERS", "127.0.0.1:9"),
            ("HANDLER_ENDPOINT", "http://127.0.0.1:9"),
            ("KAFKA_TOPIC", "events"),
        ];
        env.retain(|(name, _)| *name != case.variable);
        if let Some(value) = case.value {
            env.push((case.variable, value));
        }

        let (code, stderr) = run_with_env(&env).await;
        let at = format!("{}={:?}", case.variable, case.value);
        assert_eq!(code, Some(EXIT_INVALID_CONFIG), "{at}: stderr {stderr:?}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{at}: stderr {stderr:?}");
        let line = lines[0];
        assert!(line.contains(case.variable), "{at}: {line}");
        if let Some(value) = case.value {
            assert!(line.contains(value), "{at}: {line}");
        }
        assert!(line.contains(case.accepted_form), "{at}: {line}");
    }
}

/// One invalid handler transport or Kafka TLS setting: the variables to set, the variable the
/// error must name, the value it must show, a piece of the accepted form, and text from a file
/// that must never be printed.
struct FileCase {
    vars: Vec<(&'static str, String)>,
    variable: &'static str,
    value: String,
    accepted_form: &'static str,
    never_printed: Option<&'static str>,
}

/// Marker inside files whose contents must never be printed.
const FILE_MARKER: &str = "UHJpdmF0ZUtleU1hcmtlcg";

#[tokio::test]
async fn invalid_tls_files_exit_with_one_line() {
    let pki = support::pki::TestPki::new();
    let path = |path: &std::path::Path| path.to_str().unwrap().to_owned();
    let garbage = pki.write("garbage.pem", &format!("not a certificate {FILE_MARKER}\n"));
    let bad_key =
        pki.write("bad-key.pem", &format!("-----BEGIN PRIVATE KEY-----\n{FILE_MARKER}\n-----END PRIVATE KEY-----\n"));
    let missing = pki.dir.join("missing.pem");
    let ca = path(&pki.ca_path);

    let cases = vec![
        FileCase {
            vars: vec![("HANDLER_ENDPOINT", "https://127.0.0.1:9".into()), ("HANDLER_TLS_CA", path(&missing))],
            variable: "HANDLER_TLS_CA",
            value: path(&missing),
            accepted_form: "readable PEM file",
            never_printed: None,
        },
        FileCase {
            vars: vec![("HANDLER_ENDPOINT", "https://127.0.0.1:9".into()), ("HANDLER_TLS_CA", path(&garbage))],
            variable: "HANDLER_TLS_CA",
            value: path(&garbage),
            accepted_form: "no CERTIFICATE block",
            never_printed: Some(FILE_MARKER),
        },
        FileCase {
            // A private key given as the CA: its contents must stay out of the message.
            vars: vec![
                ("HANDLER_ENDPOINT", "https://127.0.0.1:9".into()),
                ("HANDLER_TLS_CA", path(&pki.client.key_path)),
            ],
            variable: "HANDLER_TLS_CA",
            value: path(&pki.client.key_path),
            accepted_form: "CA certificates",
            never_printed: None,
        },
        FileCase {
            vars: vec![
                ("HANDLER_ENDPOINT", "https://127.0.0.1:9".into()),
                ("HANDLER_TLS_CA", ca.clone()),
                ("HANDLER_TLS_CERT", path(&pki.client.cert_path)),
            ],
            variable: "HANDLER_TLS_CERT",
            value: path(&pki.client.cert_path),
            accepted_form: "set both",
            never_printed: None,
        },
        FileCase {
            vars: vec![
                ("HANDLER_ENDPOINT", "https://127.0.0.1:9".into()),
                ("HANDLER_TLS_CA", ca.clone()),
                ("HANDLER_TLS_CERT", path(&pki.client.cert_path)),
                ("HANDLER_TLS_KEY", path(&bad_key)),
            ],
            variable: "HANDLER_TLS_KEY",
            value: path(&bad_key),
            accepted_form: "private key",
            never_printed: Some(FILE_MARKER),
        },
        FileCase {
            // The server's key does not belong to the client certificate.
            vars: vec![
                ("HANDLER_ENDPOINT", "https://127.0.0.1:9".into()),
                ("HANDLER_TLS_CA", ca.clone()),
                ("HANDLER_TLS_CERT", path(&pki.client.cert_path)),
                ("HANDLER_TLS_KEY", path(&pki.server.key_path)),
            ],
            variable: "HANDLER_TLS_KEY",
            value: path(&pki.server.key_path),
            accepted_form: "private key",
            never_printed: None,
        },
        FileCase {
            vars: vec![("HANDLER_ENDPOINT", "http://127.0.0.1:9".into()), ("HANDLER_TLS_CA", ca.clone())],
            variable: "HANDLER_ENDPOINT",
            value: "http://127.0.0.1:9".into(),
            accepted_form: "https://",
            never_printed: None,
        },
        FileCase {
            vars: vec![("HANDLER_ENDPOINT", "unix:handler.sock".into())],
            variable: "HANDLER_ENDPOINT",
            value: "unix:handler.sock".into(),
            accepted_form: "unix:///absolute/path",
            never_printed: None,
        },
        FileCase {
            vars: vec![("SCC_HANDLER_MAX_MESSAGE_BYTES", "100000".into())],
            variable: "SCC_HANDLER_MAX_MESSAGE_BYTES",
            value: "100000".into(),
            accepted_form: "max.partition.fetch.bytes",
            never_printed: None,
        },
        FileCase {
            vars: vec![
                ("KAFKA_CFG_SECURITY_PROTOCOL", "ssl".into()),
                ("KAFKA_CFG_SSL_CERTIFICATE_LOCATION", path(&pki.client.cert_path)),
                ("KAFKA_CFG_SSL_KEY_LOCATION", path(&bad_key)),
            ],
            variable: "KAFKA_CFG_SSL_KEY_LOCATION",
            value: path(&bad_key),
            accepted_form: "ssl.key.location",
            never_printed: Some(FILE_MARKER),
        },
    ];

    let key_body: Vec<&str> = pki.client.key_pem.lines().filter(|line| !line.starts_with("-----")).collect();
    for case in cases {
        let mut env: Vec<(&str, &str)> = vec![
            ("KAFKA_BROKERS", "127.0.0.1:9"),
            ("HANDLER_ENDPOINT", "http://127.0.0.1:9"),
            ("KAFKA_TOPIC", "events"),
        ];
        for (name, value) in &case.vars {
            env.retain(|(existing, _)| existing != name);
            env.push((name, value.as_str()));
        }

        let (code, stderr) = run_with_env(&env).await;
        let at = format!("{:?}", case.vars);
        assert_eq!(code, Some(EXIT_INVALID_CONFIG), "{at}: stderr {stderr:?}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{at}: stderr {stderr:?}");
        let line = lines[0];
        assert!(line.contains(case.variable), "{at}: {line}");
        assert!(line.contains(&case.value), "{at}: {line}");
        assert!(line.contains(case.accepted_form), "{at}: {line}");
        if let Some(text) = case.never_printed {
            assert!(!line.contains(text), "{at}: a file's contents were printed: {line}");
        }
        for body in &key_body {
            assert!(!line.contains(body), "{at}: the client key was printed: {line}");
        }
    }
}
