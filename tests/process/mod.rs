//! Fixtures for the process-level tests, which run every component as its own OS process: the
//! `kafka-scc` binary, the `local_broker` example (librdkafka's mock cluster on loopback) and
//! the Python and Node example handlers. Kafka is driven from the test with rdkafka.
//!
//! Every child process is wrapped in a [`Process`], which kills it (SIGKILL) and reaps it when
//! dropped, so a failing or panicking test leaves nothing running. Its stdout and stderr are
//! collected line by line so tests wait on a line instead of sleeping.
//!
//! Layout: this file contains processes, their output, the broker and the sidecar. `kafka.rs`
//! produces and reads offsets, and `handlers.rs` contains the handler processes and the
//! in-process recorder.
#![allow(dead_code)]

pub mod handlers;
pub mod kafka;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Generous bound for a condition the tests wait on; reaching it means the test failed.
pub const WAIT: Duration = Duration::from_secs(60);

/// Pause between two checks of a condition that nothing notifies about.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// librdkafka group settings that keep rebalances on the mock cluster short. The mock
/// coordinator (`rdkafka_mock_cgrp.c` in librdkafka 2.12) waits 3 s for more members when a
/// group forms, and it evicts a member with no activity for `session.timeout.ms`. With a
/// session timeout of 3 s or less a first member can expire while its own join is pending, so
/// 4 s is the smallest safe value.
pub const FAST_GROUP: [(&str, &str); 2] =
    [("KAFKA_CFG_SESSION_TIMEOUT_MS", "4000"), ("KAFKA_CFG_HEARTBEAT_INTERVAL_MS", "250")];

/// Returns the repository root, which contains `examples/` and `proto/`.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Returns a unique name for topics, groups and files, so that tests never share state.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Polls `condition` every [`POLL_INTERVAL`] until it holds, for at most `timeout`; returns
/// whether it held.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A temporary directory, removed when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&path).expect("temporary directory created");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The lines one output stream of a child process wrote so far.
#[derive(Default)]
pub struct Lines {
    state: Mutex<LinesState>,
    changed: Condvar,
}

#[derive(Default)]
struct LinesState {
    lines: Vec<String>,
    /// Set when the stream reached its end: the process exited or closed it.
    closed: bool,
}

impl Lines {
    pub fn snapshot(&self) -> Vec<String> {
        self.state.lock().unwrap().lines.clone()
    }

    pub fn len(&self) -> usize {
        self.state.lock().unwrap().lines.len()
    }

    /// Waits until a line that satisfies `matches` exists and returns the first such line.
    /// Returns `None` at the timeout, or as soon as the stream ended without one.
    pub fn wait_for(&self, timeout: Duration, matches: impl FnMut(&str) -> bool) -> Option<String> {
        self.wait_for_after(0, timeout, matches)
    }

    /// Like [`Lines::wait_for`], but looks only at the lines after the first `skip`.
    pub fn wait_for_after(
        &self,
        skip: usize,
        timeout: Duration,
        mut matches: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap();
        let mut checked = skip;
        loop {
            let start = checked.min(state.lines.len());
            if let Some(line) = state.lines[start..].iter().find(|line| matches(line)) {
                return Some(line.clone());
            }
            checked = checked.max(state.lines.len());
            let now = Instant::now();
            if state.closed || now >= deadline {
                return None;
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    fn push(&self, line: String) {
        self.state.lock().unwrap().lines.push(line);
        self.changed.notify_all();
    }

    fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.changed.notify_all();
    }

    /// Returns the last `count` lines joined, for failure messages.
    pub fn tail(&self, count: usize) -> String {
        let state = self.state.lock().unwrap();
        let start = state.lines.len().saturating_sub(count);
        state.lines[start..].join("\n")
    }
}

/// Reads `stream` line by line into `lines` until it ends; invalid UTF-8 is replaced.
fn collect_lines(stream: impl Read + Send + 'static, lines: Arc<Lines>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match reader.read_until(b'\n', &mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buffer);
                    lines.push(line.trim_end_matches(['\n', '\r']).to_owned());
                }
            }
        }
        lines.close();
    })
}

/// A child process that is killed with SIGKILL and reaped when dropped.
///
/// NOTE: when the test process itself is killed with SIGKILL, no guard runs and the children
/// outlive it.
pub struct Process {
    name: String,
    child: Child,
    exit: Option<ExitStatus>,
    pub stdout: Arc<Lines>,
    pub stderr: Arc<Lines>,
}

impl Process {
    /// Starts `command` with stdin closed and stdout and stderr collected.
    pub fn spawn(name: &str, mut command: Command) -> Process {
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|error| panic!("starting {name} ({command:?}) failed: {error}"));
        let stdout = Arc::new(Lines::default());
        let stderr = Arc::new(Lines::default());
        collect_lines(child.stdout.take().expect("stdout is piped"), stdout.clone());
        collect_lines(child.stderr.take().expect("stderr is piped"), stderr.clone());
        Process { name: name.to_owned(), child, exit: None, stdout, stderr }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL, as a crash or an OOM kill would, and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        let _ = self.child.kill();
        let status = self.child.wait().unwrap_or_else(|error| panic!("reaping {} failed: {error}", self.name));
        self.exit = Some(status);
        status
    }

    /// Sends SIGTERM, the signal an orchestrator sends to stop a container.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap_or_else(|error| panic!("running kill -TERM for {} failed: {error}", self.name));
        assert!(status.success(), "kill -TERM {} ({}) failed: {status}", self.pid(), self.name);
    }

    /// Returns the exit status, if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().unwrap_or_else(|error| panic!("checking {} failed: {error}", self.name));
        }
        self.exit
    }

    /// Waits for the process to exit, for at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Both streams' last lines, for failure messages.
    pub fn output_tail(&self, count: usize) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            self.stdout.tail(count),
            self.name,
            self.stderr.tail(count)
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.output_tail(40));
        }
        self.kill();
    }
}

/// Returns the profile directory the test binaries were built into, such as `target/debug`.
fn profile_dir() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kafka-scc")).parent().expect("the kafka-scc binary sits in a profile directory")
}

/// Returns the path of the `local_broker` example binary, and builds it once when it is
/// missing. `cargo test` builds the examples next to the test binaries, but a filtered run such
/// as `cargo test --test process_crash_safety` does not.
pub fn local_broker_binary() -> PathBuf {
    static BUILT: Mutex<bool> = Mutex::new(false);

    let path = profile_dir().join("examples").join(format!("local_broker{}", std::env::consts::EXE_SUFFIX));
    let mut built = BUILT.lock().unwrap();
    if path.is_file() || *built {
        return path;
    }

    let profile = match profile_dir().file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => "dev",
        Some(name) => name,
    };
    let target_dir = profile_dir().parent().expect("the profile directory sits in a target directory");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", "local_broker", "--profile", profile, "--manifest-path"])
        .arg(repo_root().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .status();
    *built = true;
    match status {
        Ok(status) if status.success() && path.is_file() => path,
        outcome => panic!(
            "the local_broker example is missing at {} and building it failed ({outcome:?}); run `cargo build --examples`",
            path.display()
        ),
    }
}

/// A `local_broker` process: librdkafka's mock cluster on loopback with the given topics.
pub struct LocalBroker {
    pub process: Process,
    pub bootstrap: String,
}

impl LocalBroker {
    /// Starts the broker with `topics` as `(name, partitions)` and waits for its address.
    pub fn start(topics: &[(&str, i32)]) -> LocalBroker {
        let mut command = Command::new(local_broker_binary());
        for (name, partitions) in topics {
            command.arg("--topic").arg(format!("{name}:{partitions}"));
        }
        let process = Process::spawn("local_broker", command);
        // The first stdout line is the bootstrap address, printed once the topics exist.
        let Some(bootstrap) = process.stdout.wait_for(WAIT, |line| !line.trim().is_empty()) else {
            panic!("local_broker printed no address\n{}", process.output_tail(20));
        };
        LocalBroker { process, bootstrap: bootstrap.trim().to_owned() }
    }
}

/// Builds the environment of a `kafka-scc` process for one test: JSON logs on stderr, the fast
/// group settings, and `extra` on top. A later entry replaces an earlier one of the same name.
pub fn sidecar_env(
    bootstrap: &str,
    group: &str,
    topic: &str,
    handler_endpoint: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = [
        ("KAFKA_BROKERS", bootstrap),
        ("KAFKA_GROUP_ID", group),
        ("SCC_HTTP_ADDR", "127.0.0.1:0"),
        ("KAFKA_TOPIC", topic),
        ("HANDLER_ENDPOINT", handler_endpoint),
        ("SCC_LOG_FORMAT", "json"),
        ("RUST_LOG", "info"),
    ]
    .into_iter()
    .chain(FAST_GROUP)
    .chain(extra.iter().copied())
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect();
    let mut seen = std::collections::HashSet::new();
    vars.reverse();
    vars.retain(|(name, _)| seen.insert(name.clone()));
    vars
}

/// Starts the `kafka-scc` binary with exactly the environment `vars`.
pub fn start_sidecar(name: &str, vars: &[(String, String)]) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kafka-scc"));
    command.env_clear().envs(vars.iter().map(|(name, value)| (name, value)));
    Process::spawn(name, command)
}

/// Parses one JSON log line of kafka-scc (`SCC_LOG_FORMAT=json`), where the event's fields sit
/// at the top level next to `message`, `level` and `target`.
pub fn parse_log_line(line: &str) -> Option<Value> {
    serde_json::from_str::<Value>(line).ok().filter(Value::is_object)
}

/// Returns the `message` field of a JSON log event.
pub fn log_message(event: &Value) -> &str {
    event.get("message").and_then(Value::as_str).unwrap_or("")
}

/// Returns every JSON log event of `lines` whose message starts with `prefix`.
pub fn log_events(lines: &Lines, prefix: &str) -> Vec<Value> {
    lines
        .snapshot()
        .iter()
        .filter_map(|line| parse_log_line(line))
        .filter(|event| log_message(event).starts_with(prefix))
        .collect()
}

/// Waits for a JSON log event whose message starts with `prefix`, among the lines after the
/// first `skip`.
pub fn wait_for_log(lines: &Lines, skip: usize, prefix: &str, timeout: Duration) -> Option<Value> {
    lines
        .wait_for_after(skip, timeout, |line| {
            parse_log_line(line).is_some_and(|event| log_message(&event).starts_with(prefix))
        })
        .and_then(|line| parse_log_line(&line))
}

/// Returns the partition numbers of a `partitions` log field such as `topic/0,topic/3`.
pub fn partitions_field(event: &Value) -> Vec<i32> {
    event
        .get("partitions")
        .and_then(Value::as_str)
        .unwrap_or("")
        .split(',')
        .filter_map(|entry| entry.rsplit_once('/').and_then(|(_, partition)| partition.parse().ok()))
        .collect()
}

/// Returns the partitions assigned to a sidecar according to its log: every `partitions
/// assigned` event adds to them, and every `partitions revoked` event removes from them.
pub fn assigned_partitions(lines: &Lines) -> std::collections::BTreeSet<i32> {
    let mut assigned = std::collections::BTreeSet::new();
    for event in lines.snapshot().iter().filter_map(|line| parse_log_line(line)) {
        match log_message(&event) {
            "partitions assigned" => assigned.extend(partitions_field(&event)),
            "partitions revoked" => {
                for partition in partitions_field(&event) {
                    assigned.remove(&partition);
                }
            }
            _ => {}
        }
    }
    assigned
}
