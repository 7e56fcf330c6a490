//! Handlers for the process tests: the Python and Node example handlers as child processes in
//! standalone mode (`--no-sink --record PATH`), their record files, and an in-process tonic
//! handler that records every call in memory, for tests where handler speed matters.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_scc::proto::message_handler_server::{MessageHandler, MessageHandlerServer};
use kafka_scc::proto::{HandleRequest, HandleResponse};
use serde_json::Value;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::{Process, WAIT, repo_root};

/// Which example handler to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandlerKind {
    Python,
    Node,
}

impl HandlerKind {
    /// Builds the command for the handler's server script, after checking that `scripts/test`
    /// installed what it needs.
    fn command(self) -> Command {
        match self {
            HandlerKind::Python => {
                let folder = repo_root().join("examples/python");
                let generated = folder.join("generated/scc/handler/v1/handler_pb2_grpc.py");
                assert!(
                    generated.is_file(),
                    "{} is missing: run scripts/test, or `python3 -m pip install -r examples/python/requirements.txt` \
                     and `python3 examples/python/generate.py`",
                    generated.display()
                );
                let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
                let mut command = Command::new(python);
                command.arg(folder.join("server.py"));
                command
            }
            HandlerKind::Node => {
                let folder = repo_root().join("examples/node");
                let module = folder.join("node_modules/@grpc/grpc-js");
                assert!(
                    module.is_dir(),
                    "{} is missing: run scripts/test, or `npm ci` in examples/node",
                    module.display()
                );
                let mut command = Command::new("node");
                command.arg(folder.join("server.js"));
                command
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HandlerKind::Python => "python handler",
            HandlerKind::Node => "node handler",
        }
    }
}

/// A running example handler and the address it serves on.
pub struct HandlerProcess {
    pub process: Process,
    pub addr: String,
}

impl HandlerProcess {
    /// Starts the handler in standalone mode on `addr`, where port 0 picks a free port or
    /// `unix:///PATH` names a Unix domain socket, and waits until it listens. It records every call to `record` and simulates `delay_ms` of
    /// work per call.
    pub fn start(kind: HandlerKind, addr: &str, record: &Path, delay_ms: u64) -> HandlerProcess {
        let mut command = kind.command();
        command
            .args(["--no-sink", "--addr", addr, "--delay-ms", &delay_ms.to_string(), "--record"])
            .arg(record)
            .current_dir(repo_root());
        let process = Process::spawn(kind.name(), command);

        // The handler prints "... listening on HOST:PORT, forwarding to ..." once it serves.
        let Some(line) = process.stdout.wait_for(WAIT, |line| line.contains("listening on ")) else {
            panic!("the {} did not start listening\n{}", kind.name(), process.output_tail(30));
        };
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .trim()
            .to_owned();
        HandlerProcess { process, addr }
    }

    /// Returns the address kafka-scc calls (`HANDLER_ENDPOINT`): the `unix://` address of a
    /// handler on a Unix domain socket, else `http://HOST:PORT`.
    pub fn endpoint(&self) -> String {
        if self.addr.starts_with("unix:") { self.addr.clone() } else { format!("http://{}", self.addr) }
    }
}

/// One line of a handler's record file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedCall {
    pub partition: i32,
    pub offset: i64,
    pub attempt: u32,
    /// The gRPC status name the handler returned, such as `OK`.
    pub code: String,
}

/// Reads a record file written with `--record`. A last line without its newline is still
/// being written and is left out.
pub fn read_record(path: &Path) -> Vec<RecordedCall> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(error) => panic!("reading {} failed: {error}", path.display()),
    };
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let entry: Value =
                serde_json::from_str(line).unwrap_or_else(|error| panic!("invalid record line {line:?}: {error}"));
            RecordedCall {
                partition: i32::try_from(entry["partition"].as_i64().expect("partition")).unwrap(),
                offset: entry["offset"].as_i64().expect("offset"),
                attempt: u32::try_from(entry["attempt"].as_u64().expect("attempt")).unwrap(),
                code: entry["code"].as_str().expect("code").to_owned(),
            }
        })
        .collect()
}

/// Returns the offsets whose call returned OK, per partition.
pub fn handled_offsets<'a>(calls: impl IntoIterator<Item = &'a RecordedCall>) -> BTreeMap<i32, BTreeSet<i64>> {
    let mut handled: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
    for call in calls.into_iter().filter(|call| call.code == "OK") {
        handled.entry(call.partition).or_default().insert(call.offset);
    }
    handled
}

/// Offsets below `end_offsets` (index = partition) missing from `handled`.
pub fn missing_offsets(handled: &BTreeMap<i32, BTreeSet<i64>>, end_offsets: &[i64]) -> Vec<(i32, i64)> {
    let mut missing = Vec::new();
    for (partition, end) in (0..).zip(end_offsets) {
        let seen = handled.get(&partition);
        missing.extend(
            (0..*end)
                .filter(|offset| !seen.is_some_and(|seen| seen.contains(offset)))
                .map(|offset| (partition, offset)),
        );
    }
    missing
}

/// Returns the offset after the contiguous run of `handled` offsets that starts at 0: the
/// highest offset a correct commit may have reached with these calls finished.
pub fn contiguous_end(handled: Option<&BTreeSet<i64>>) -> i64 {
    let mut next = 0;
    if let Some(handled) = handled {
        while handled.contains(&next) {
            next += 1;
        }
    }
    next
}

/// One call an [`InProcessHandler`] returned OK for.
#[derive(Clone, Copy, Debug)]
pub struct HandledCall {
    /// Index of the server that took the call, in start order.
    pub server: usize,
    pub partition: i32,
    pub offset: i64,
    pub attempt: u32,
    pub at: Instant,
}

#[derive(Default)]
struct CallLog {
    calls: Vec<HandledCall>,
    distinct: HashSet<(i32, i64)>,
}

/// The calls that the servers of one [`InProcessHandler`] returned OK for.
#[derive(Clone, Default)]
pub struct SharedCallLog(Arc<Mutex<CallLog>>);

impl SharedCallLog {
    pub fn calls(&self) -> Vec<HandledCall> {
        self.0.lock().unwrap().calls.clone()
    }

    /// Returns the number of calls and of distinct `(partition, offset)` pairs among them.
    pub fn counts(&self) -> (usize, usize) {
        let log = self.0.lock().unwrap();
        (log.calls.len(), log.distinct.len())
    }

    pub fn handled_offsets(&self) -> BTreeMap<i32, BTreeSet<i64>> {
        let mut handled: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
        for (partition, offset) in &self.0.lock().unwrap().distinct {
            handled.entry(*partition).or_default().insert(*offset);
        }
        handled
    }

    fn push(&self, call: HandledCall) {
        let mut log = self.0.lock().unwrap();
        log.distinct.insert((call.partition, call.offset));
        log.calls.push(call);
    }
}

/// One server's service: records each call and returns OK after `work`.
#[derive(Clone)]
struct RecordingService {
    server: usize,
    log: SharedCallLog,
    work: Duration,
}

#[tonic::async_trait]
impl MessageHandler for RecordingService {
    async fn handle(&self, request: Request<HandleRequest>) -> Result<Response<HandleResponse>, Status> {
        let request = request.into_inner();
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        self.log.push(HandledCall {
            server: self.server,
            partition: request.partition,
            offset: request.offset,
            attempt: request.attempt,
            at: Instant::now(),
        });
        Ok(Response::new(HandleResponse {}))
    }
}

/// Real gRPC `MessageHandler` servers on loopback, in the test process, on a runtime of their
/// own. They record every call in one [`SharedCallLog`] and return OK.
pub struct InProcessHandler {
    runtime: tokio::runtime::Runtime,
    pub log: SharedCallLog,
    work: Duration,
    servers: Vec<(SocketAddr, oneshot::Sender<()>)>,
}

impl InProcessHandler {
    /// `work` is the simulated work per call before it is recorded and OK is returned.
    pub fn new(work: Duration) -> InProcessHandler {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("handler runtime built");
        InProcessHandler { runtime, log: SharedCallLog::default(), work, servers: Vec::new() }
    }

    /// Starts one more server on a free loopback port; returns its endpoint. Calls it takes
    /// are recorded with the server's index, which is the number of servers started before.
    pub fn serve(&mut self) -> String {
        let service = RecordingService { server: self.servers.len(), log: self.log.clone(), work: self.work };
        let listener =
            self.runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("handler listens on loopback");
        let addr = listener.local_addr().expect("handler address");
        let (stop, stopped) = oneshot::channel::<()>();
        self.runtime.spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let served = tonic::transport::Server::builder()
                .add_service(MessageHandlerServer::new(service))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = served {
                eprintln!("in-process handler on {addr} failed: {error}");
            }
        });
        self.servers.push((addr, stop));
        format!("http://{addr}")
    }
}

/// Returns the path of a record file inside `dir`.
pub fn record_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.jsonl"))
}
