//! The `kafka-scc` binary rejects an invalid configuration before connecting anywhere: exit
//! code 2 and exactly one line on stderr naming the variable, the value and the accepted form.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// Exit code the binary documents for an invalid configuration.
const EXIT_INVALID_CONFIG: i32 = 2;
/// Bound on one run; a binary that accepted the configuration would keep running and be
/// killed after this.
const RUN_BOUND: Duration = Duration::from_secs(20);

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
    Case { variable: "SCC_PROCESSING_ORDER", value: Some("random"), accepted_form: "key, partition or unordered" },
    Case { variable: "KAFKA_TOPIC", value: None, accepted_form: "missing" },
    Case { variable: "KAFKA_CFG_SESSION_TIMEOUT_MS", value: Some("soon"), accepted_form: "session.timeout.ms" },
    Case { variable: "KAFKA_CFG_NO_SUCH_PROPERTY", value: Some("1"), accepted_form: "no.such.property" },
    Case { variable: "SCC_BACKOFF_BASE_MS", value: Some("-5"), accepted_form: "milliseconds" },
    Case { variable: "HANDLER_ENDPOINT", value: Some("127.0.0.1:50051"), accepted_form: "http://" },
    Case { variable: "SCC_PAUSE_CODES", value: Some("UNAVAILABLE,NOPE"), accepted_form: "gRPC code" },
];

/// Runs the binary with only the given environment; returns its exit code and stderr.
async fn run_binary(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_kafka-scc"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let output = tokio::time::timeout(RUN_BOUND, child.wait_with_output())
        .await
        .expect("the binary exits on an invalid configuration")
        .expect("the binary's output is read");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
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

        let (code, stderr) = run_binary(&env).await;
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
