//! Runs the `kafka-scc` binary as its own process, with only the environment a test gives it,
//! the way a container runtime starts it.

use std::ffi::OsStr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// Bound on a run that is expected to exit by itself, such as a configuration check; reaching
/// it means the test failed.
pub const RUN_BOUND: Duration = Duration::from_secs(20);

/// What one finished run of the binary printed.
#[derive(Debug)]
pub struct BinaryRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Starts the binary with `args` and only the environment `env`: standard input closed,
/// standard output and error piped, and killed when the handle is dropped.
pub fn spawn_binary<A: AsRef<OsStr>>(args: &[A], env: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kafka-scc"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts")
}

/// Runs the binary until it exits, for at most [`RUN_BOUND`].
pub async fn run_binary<A: AsRef<OsStr>>(args: &[A], env: &[(&str, &str)]) -> BinaryRun {
    let output = tokio::time::timeout(RUN_BOUND, spawn_binary(args, env).wait_with_output())
        .await
        .expect("the binary exits")
        .expect("the binary's output is read");
    BinaryRun {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Reads a child's pipe to its end on a task, so that a full pipe never blocks the child;
/// the task returns the text read.
pub fn drain_pipe<R: AsyncRead + Unpin + Send + 'static>(mut pipe: R) -> JoinHandle<String> {
    tokio::spawn(async move {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text).await;
        text
    })
}
