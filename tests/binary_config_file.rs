//! The `kafka-scc` binary with `--config FILE`. The example file passes `--check-config` with
//! secrets redacted, and the environment overrides the file. An unknown key or an invalid value
//! exits with code 2 and one line naming the file, the key and its line.
//!
//! Every run uses `--check-config` or fails validation, so no run connects anywhere.

mod support;

use std::path::{Path, PathBuf};

use support::binary::{BinaryRun, run_binary};

/// Exit code the binary documents for an invalid configuration.
const EXIT_INVALID_CONFIG: i32 = 2;

/// Returns the path of the example configuration file that the README points to.
fn example_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kafka-scc.toml")
}

/// A configuration file in the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("kafka-scc-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).expect("temporary configuration file written");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn check_config(file: &Path, env: &[(&str, &str)]) -> BinaryRun {
    run_binary(&["--config".as_ref(), file.as_os_str(), "--check-config".as_ref()], env).await
}

/// Asserts that a run was rejected with exit code 2 and exactly one line on stderr, and
/// returns that line.
fn rejection_line(run: &BinaryRun) -> String {
    assert_eq!(run.code, Some(EXIT_INVALID_CONFIG), "stdout {:?}, stderr {:?}", run.stdout, run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr {:?}", run.stderr);
    lines[0].to_owned()
}

#[tokio::test]
async fn example_file_passes_check_config() {
    let run = check_config(&example_file(), &[("KAFKA_CFG_SASL_PASSWORD", "env-secret")]).await;

    assert_eq!(run.code, Some(0), "stderr {:?}", run.stderr);
    let printed = run.stdout.trim_end();
    assert!(!printed.contains('\n'), "{printed}");
    assert!(printed.contains("group_id=payments-processor"), "{printed}");
    assert!(printed.contains("topics=payments,refunds"), "{printed}");
    assert!(printed.contains("handler=http://127.0.0.1:50051"), "{printed}");
    assert!(printed.contains("handler[payments]=http://127.0.0.1:50052"), "{printed}");
    assert!(!printed.contains("handler[refunds]"), "{printed}");
    assert!(printed.contains("sasl.username=payments-processor"), "{printed}");
    assert!(printed.contains("sasl.password=[redacted]"), "{printed}");
    assert!(!printed.contains("env-secret"), "{printed}");
}

#[tokio::test]
async fn secret_in_file_is_redacted() {
    let file = TempFile::new(
        "secret",
        "[[topics]]\nname = \"events\"\n\n[kafka.properties]\n\"sasl.password\" = \"file-secret\"\n",
    );
    let run = check_config(&file.0, &[]).await;

    assert_eq!(run.code, Some(0), "stderr {:?}", run.stderr);
    assert!(run.stdout.contains("sasl.password=[redacted]"), "{}", run.stdout);
    assert!(!run.stdout.contains("file-secret"), "{}", run.stdout);
}

#[tokio::test]
async fn environment_overrides_file() {
    let file = TempFile::new(
        "override",
        "[[topics]]\nname = \"events\"\n\n[handler]\ntimeout_ms = 1500\n\n[processing]\norder = \"partition\"\n",
    );
    let run = check_config(&file.0, &[("SCC_HANDLER_TIMEOUT_MS", "2500"), ("KAFKA_TOPIC", "audit")]).await;

    assert_eq!(run.code, Some(0), "stderr {:?}", run.stderr);
    assert!(run.stdout.contains("handler_timeout_ms=2500"), "{}", run.stdout);
    assert!(run.stdout.contains("topics=audit "), "{}", run.stdout);
    assert!(run.stdout.contains("order=partition"), "{}", run.stdout);
}

#[tokio::test]
async fn unknown_key_exits_naming_key() {
    let file = TempFile::new("unknown", "[[topics]]\nname = \"events\"\n\n[handler]\ntimeot_ms = 1500\n");
    let run = check_config(&file.0, &[]).await;

    let line = rejection_line(&run);
    assert!(line.contains(&file.0.display().to_string()), "{line}");
    assert!(line.contains("line 5"), "{line}");
    assert!(line.contains("handler.timeot_ms"), "{line}");
    assert!(line.contains("unknown key"), "{line}");
}

#[tokio::test]
async fn invalid_value_exits_naming_key() {
    let file = TempFile::new("invalid", "[[topics]]\nname = \"events\"\n\n[handler]\ntimeout_ms = 0\n");
    let run = check_config(&file.0, &[]).await;

    let line = rejection_line(&run);
    assert!(line.contains(&file.0.display().to_string()), "{line}");
    assert!(line.contains("handler.timeout_ms = 0"), "{line}");
    assert!(line.contains("line 5"), "{line}");
    assert!(line.contains("milliseconds from 1 to 3600000"), "{line}");
}

#[tokio::test]
async fn invalid_environment_value_names_variable() {
    let file = TempFile::new("env-invalid", "[[topics]]\nname = \"events\"\n\n[handler]\ntimeout_ms = 1500\n");
    let run = check_config(&file.0, &[("SCC_HANDLER_TIMEOUT_MS", "soon")]).await;

    let line = rejection_line(&run);
    assert!(line.contains("SCC_HANDLER_TIMEOUT_MS=\"soon\""), "{line}");
    assert!(!line.contains("handler.timeout_ms"), "{line}");
}

#[tokio::test]
async fn unreadable_file_exits_naming_path() {
    let missing = std::env::temp_dir().join(format!("kafka-scc-{}-missing.toml", std::process::id()));
    let run = check_config(&missing, &[("KAFKA_TOPIC", "events")]).await;

    let line = rejection_line(&run);
    assert!(line.contains(&missing.display().to_string()), "{line}");
}
