//! The benchmark's gRPC handler and the child process it runs in.
//!
//! The handler runs in a child process (the bench binary started again with the hidden
//! `handler` subcommand), not in the bench process. In a deployment the handler is another
//! container with its own runtime and threads. In the bench process it would share the tokio
//! worker threads with kafka-scc and the tonic client, so each would slow the other. A
//! separate process also lets the bench read each side's CPU time from `/proc`.
//!
//! The parent controls the child through its standard streams: the child prints its endpoint
//! on the first line of standard output, then replies to `stats` on standard input with one JSON
//! line of [`HandlerReport`], clears its counters on `reset`, and exits when its standard
//! input closes.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use kafka_scc::proto::message_handler_server::{MessageHandler, MessageHandlerServer};
use kafka_scc::proto::{
    HandleBatchRequest, HandleBatchResponse, HandleRequest, HandleResponse, RecordResult, StreamRequest, StreamResponse,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codegen::BoxStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use crate::support::{now_micros, sleep_micros};

/// Record header carrying the producer's wall clock in microseconds since the Unix epoch, as
/// decimal ASCII; the handler subtracts it from its own clock on receipt.
pub const PRODUCED_AT_HEADER: &str = "bench-produced-us";

/// The handler's behaviour for each record, whether it comes in a Handle call, a HandleBatch call
/// or on a HandleStream stream.
#[derive(clap::Args, Clone, Debug)]
pub struct HandlerArgs {
    /// Sleep a seeded uniform 0..=MAX microseconds per message, drawn from the seed, the
    /// partition and the offset, so that the parent can compute the same total.
    #[arg(long, value_name = "MAX")]
    pub random_sleep_us: Option<u64>,
    /// Seed of the random sleeps.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Sleep this many microseconds per message.
    #[arg(long, value_name = "MICROSECONDS")]
    pub fixed_sleep_us: Option<u64>,
    /// Sleep until this many microseconds before the end of each sleep, then spin: makes
    /// sleeps precise to a few microseconds at the cost of CPU, for calls made one at a time.
    #[arg(long, value_name = "MICROSECONDS")]
    pub spin_us: Option<u64>,
}

impl HandlerArgs {
    /// A handler that returns OK at once.
    pub fn no_op() -> HandlerArgs {
        HandlerArgs { random_sleep_us: None, seed: 0, fixed_sleep_us: None, spin_us: None }
    }
}

/// The child's counters, as sent to the parent.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct HandlerReport {
    /// Records handled: one per Handle call, and one per record of a HandleBatch call or of a
    /// HandleStream stream.
    pub calls: u64,
    /// Sum of the sleeps drawn, in microseconds.
    pub sleep_requested_us: u64,
    /// Sum of the sleeps measured around the sleeping call, in microseconds.
    pub sleep_measured_us: u64,
    /// Receipt time minus the [`PRODUCED_AT_HEADER`] value, per record that carried it, in
    /// microseconds, in order of receipt.
    pub produce_to_receipt_us: Vec<i64>,
    /// The child's user plus system CPU time, in milliseconds.
    pub cpu_ms: u64,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    sleep_requested_us: AtomicU64,
    sleep_measured_us: AtomicU64,
    latencies_us: Mutex<Vec<i64>>,
}

impl Counters {
    fn report(&self) -> HandlerReport {
        HandlerReport {
            calls: self.calls.load(Ordering::Relaxed),
            sleep_requested_us: self.sleep_requested_us.load(Ordering::Relaxed),
            sleep_measured_us: self.sleep_measured_us.load(Ordering::Relaxed),
            produce_to_receipt_us: self.latencies_us.lock().expect("latency lock").clone(),
            cpu_ms: crate::support::cpu_time(std::process::id()).map_or(0, |cpu| cpu.as_millis() as u64),
        }
    }

    fn reset(&self) {
        self.calls.store(0, Ordering::Relaxed);
        self.sleep_requested_us.store(0, Ordering::Relaxed);
        self.sleep_measured_us.store(0, Ordering::Relaxed);
        self.latencies_us.lock().expect("latency lock").clear();
    }
}

#[derive(Clone)]
struct BenchHandler {
    args: HandlerArgs,
    counters: Arc<Counters>,
}

impl BenchHandler {
    /// Handles one record received at `received_us`: records its latency, sleeps its time and
    /// counts it.
    async fn handle_record(&self, record: &HandleRequest, received_us: i64) {
        let produced_us = record
            .headers
            .iter()
            .find(|header| header.key == PRODUCED_AT_HEADER)
            .and_then(|header| header.value.as_deref())
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(|value| value.parse::<i64>().ok());
        if let Some(produced_us) = produced_us {
            self.counters.latencies_us.lock().expect("latency lock").push(received_us - produced_us);
        }

        let sleep_us = match (self.args.fixed_sleep_us, self.args.random_sleep_us) {
            (Some(fixed), _) => fixed,
            (None, Some(max)) => sleep_micros(self.args.seed, record.partition, record.offset, max),
            (None, None) => 0,
        };
        if sleep_us > 0 {
            // A blocking-pool thread sleeps with the kernel's precision (70-100 microseconds late
            // on average on the machine of BENCHMARKS.md). A tokio timer rounds every sleep up to
            // its 1 ms tick, which would add about half a millisecond to each 0-5 ms sleep.
            let started = Instant::now();
            let deadline = started + Duration::from_micros(sleep_us);
            let spin = Duration::from_micros(self.args.spin_us.unwrap_or(0));
            let _ = tokio::task::spawn_blocking(move || {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining > spin {
                    std::thread::sleep(remaining - spin);
                }
                while Instant::now() < deadline {
                    std::hint::spin_loop();
                }
            })
            .await;
            let measured = started.elapsed().as_micros() as u64;
            self.counters.sleep_requested_us.fetch_add(sleep_us, Ordering::Relaxed);
            self.counters.sleep_measured_us.fetch_add(measured, Ordering::Relaxed);
        }
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
    }
}

#[tonic::async_trait]
impl MessageHandler for BenchHandler {
    async fn handle(&self, request: Request<HandleRequest>) -> Result<Response<HandleResponse>, Status> {
        let received_us = now_micros();
        self.handle_record(request.get_ref(), received_us).await;
        Ok(Response::new(HandleResponse {}))
    }

    /// Handles the records concurrently, so a batch takes about as long as its longest sleep.
    async fn handle_batch(
        &self,
        request: Request<HandleBatchRequest>,
    ) -> Result<Response<HandleBatchResponse>, Status> {
        let received_us = now_micros();
        let records = request.into_inner().records;
        join_all(records.iter().map(|record| self.handle_record(record, received_us))).await;
        Ok(Response::new(HandleBatchResponse { results: vec![RecordResult::default(); records.len()] }))
    }

    /// Handles the records of the stream concurrently and responds to each as soon as it is done.
    async fn handle_stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<BoxStream<StreamResponse>>, Status> {
        let (responses, receiver) = mpsc::unbounded_channel();
        tokio::spawn(self.clone().serve_stream(request.into_inner(), responses));
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(receiver))))
    }
}

impl BenchHandler {
    /// Reads the stream's records and runs them on one task, in a `FuturesUnordered`, so a
    /// record costs no task of its own. Returns when kafka-scc closes its side and every record
    /// read has its response.
    async fn serve_stream(
        self,
        mut requests: Streaming<StreamRequest>,
        responses: mpsc::UnboundedSender<Result<StreamResponse, Status>>,
    ) {
        let mut running = FuturesUnordered::new();
        let mut open = true;
        loop {
            tokio::select! {
                next = requests.next(), if open => match next {
                    Some(Ok(request)) => {
                        let received_us = now_micros();
                        let handler = &self;
                        running.push(async move {
                            if let Some(record) = &request.record {
                                handler.handle_record(record, received_us).await;
                            }
                            request.id
                        });
                    }
                    Some(Err(_)) | None => open = false,
                },
                Some(id) = running.next() => {
                    let response = StreamResponse { id, result: Some(RecordResult::default()) };
                    if responses.send(Ok(response)).is_err() {
                        return;
                    }
                }
                else => return,
            }
        }
    }
}

/// Runs the child: serves the handler on a free loopback port until standard input closes.
pub fn run_child(args: HandlerArgs) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bench handler: starting the runtime failed: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let incoming = match TcpIncoming::bind("127.0.0.1:0".parse().expect("valid address")) {
            Ok(incoming) => incoming.with_nodelay(Some(true)),
            Err(error) => {
                eprintln!("bench handler: binding 127.0.0.1 failed: {error}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let addr = incoming.local_addr().expect("a bound listener has an address");
        let counters = Arc::new(Counters::default());
        let service = BenchHandler { args, counters: counters.clone() };

        // Standard input is read on its own thread: its reads block.
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || serve_commands(&counters, closed_tx));

        println!("http://{addr}");
        let _ = std::io::stdout().flush();
        let served = tonic::transport::Server::builder()
            .add_service(MessageHandlerServer::new(service))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = closed_rx.await;
            })
            .await;
        match served {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("bench handler: the server failed: {error}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}

fn serve_commands(counters: &Counters, closed: tokio::sync::oneshot::Sender<()>) {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "stats" => {
                let report = serde_json::to_string(&counters.report()).expect("the report serializes");
                if writeln!(stdout, "{report}").and_then(|()| stdout.flush()).is_err() {
                    break;
                }
            }
            "reset" => counters.reset(),
            other => eprintln!("bench handler: unknown command {other:?}; expected stats or reset"),
        }
    }
    let _ = closed.send(());
}

/// A running handler child. Dropping it closes its standard input and kills it.
pub struct HandlerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    endpoint: String,
}

impl HandlerProcess {
    /// Starts the bench binary as a handler child and waits for its endpoint.
    pub fn spawn(args: &HandlerArgs) -> Result<HandlerProcess, String> {
        let exe = std::env::current_exe().map_err(|error| format!("locating the bench binary failed: {error}"))?;
        let mut command = Command::new(exe);
        command.arg("handler").arg("--seed").arg(args.seed.to_string());
        if let Some(max) = args.random_sleep_us {
            command.arg("--random-sleep-us").arg(max.to_string());
        }
        if let Some(fixed) = args.fixed_sleep_us {
            command.arg("--fixed-sleep-us").arg(fixed.to_string());
        }
        if let Some(spin) = args.spin_us {
            command.arg("--spin-us").arg(spin.to_string());
        }

        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| format!("starting the handler child failed: {error}"))?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));

        // The child's first line is its endpoint.
        let mut endpoint = String::new();
        match stdout.read_line(&mut endpoint) {
            Ok(n) if n > 0 && endpoint.starts_with("http://") => {}
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the handler child printed no endpoint; its first line was {endpoint:?}"));
            }
        }
        Ok(HandlerProcess { child, stdin: Some(stdin), stdout, endpoint: endpoint.trim().to_owned() })
    }

    /// Returns the handler's address, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Returns the child's counters since the last reset.
    pub fn report(&mut self) -> Result<HandlerReport, String> {
        self.command("stats")?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|error| format!("reading the handler's report failed: {error}"))?;
        serde_json::from_str(&line).map_err(|error| format!("the handler's report {line:?} is invalid: {error}"))
    }

    /// Clears the child's counters.
    pub fn reset(&mut self) -> Result<(), String> {
        self.command("reset")
    }

    fn command(&mut self, command: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("the handler's standard input is closed")?;
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .map_err(|error| format!("sending {command:?} to the handler failed: {error}"))
    }
}

impl Drop for HandlerProcess {
    fn drop(&mut self) {
        // Closing standard input stops the child. Killing it covers a child that hangs.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
