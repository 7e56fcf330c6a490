//! Peak resident memory of the `kafka-scc` binary facing a large backlog and a slow handler.
//!
//! kafka-scc runs as the real binary in a child process, so its VmHWM and VmRSS (from
//! `/proc/<pid>/status`) are its own. The broker stays in the bench process and the handler
//! runs in another child. Each variant runs on a fresh topic with a fresh group.
//!
//! The mock broker keeps at most 5 MiB per partition ([`MOCK_PARTITION_BYTES`]), so a 1 GB
//! backlog cannot be stored up front. The records are produced while kafka-scc consumes, at
//! about [`PRODUCE_RATE`] per second, far faster than the slow handler takes them. So the
//! backlog grows to nearly the whole million, and librdkafka's prefetch and kafka-scc's buffers
//! fill as they would in front of a real broker. Records that the broker drops before
//! kafka-scc fetches them make librdkafka reset to the earliest offset still held. They change
//! which records are handled, not how much kafka-scc holds.
//!
//! NOTE: a real broker holding the whole 1 GB backlog from the start can return the first
//! fetches with up to `fetch.max.bytes` (50 MiB) each. Here at most 5 MiB per partition is
//! available at a time, so the first burst is smaller than it could be in production.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::handler::{HandlerArgs, HandlerProcess};
use crate::report::{Row, Unit};
use crate::support::{Broker, Bulk, MOCK_PARTITION_BYTES, memory_kib, produce_backlog, produce_bulk, sidecar_config};

const STAGE: &str = "memory";
/// The target: peak resident memory of kafka-scc, in MiB.
const LIMIT_MIB: f64 = 128.0;
/// Time each slow handler call takes: 100 calls in flight handle 5,000 records per second.
const HANDLER_SLEEP_US: u64 = 20_000;
/// Records produced per second while kafka-scc runs.
const PRODUCE_RATE: u64 = 200_000;
/// Records per partition produced before kafka-scc's first handler call: close to the number
/// the mock broker keeps of 1 KiB records, so kafka-scc meets a full partition when it joins.
const FIRST_BATCH_PER_PARTITION: u64 = 4_500;
/// Sampling continues this long after the last record was produced.
const TAIL: Duration = Duration::from_secs(2);
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

pub struct Params {
    pub messages: u64,
    pub partitions: i32,
    pub value_size: usize,
}

/// A kafka-scc configuration to measure: a name and extra environment variables.
struct Variant {
    name: &'static str,
    vars: &'static [(&'static str, &'static str)],
    /// Whether the 128 MiB target applies; a diagnostic variant only shows an effect.
    judged: bool,
}

/// The defaults are judged. Two diagnostic variants show what each bound prevents. The first
/// restores librdkafka's own prefetch bounds per partition (65,536 KiB, and a 1,000 ms wait
/// before a full queue is fetched again) in place of the ones kafka-scc derives from
/// `SCC_MAX_IN_FLIGHT`. The second lifts kafka-scc's buffer bound, so the pipeline takes every
/// record librdkafka delivers.
const VARIANTS: [Variant; 3] = [
    Variant { name: "defaults", vars: &[], judged: true },
    Variant {
        name: "KAFKA_CFG_QUEUED_MAX_MESSAGES_KBYTES=65536, KAFKA_CFG_FETCH_QUEUE_BACKOFF_MS=1000 (librdkafka defaults)",
        vars: &[("KAFKA_CFG_QUEUED_MAX_MESSAGES_KBYTES", "65536"), ("KAFKA_CFG_FETCH_QUEUE_BACKOFF_MS", "1000")],
        judged: false,
    },
    Variant {
        name: "SCC_PARTITION_BUFFER=1000000 (no buffer bound)",
        vars: &[("SCC_PARTITION_BUFFER", "1000000")],
        judged: false,
    },
];

/// Measurements of one variant's run.
struct Measured {
    /// VmRSS one second after the start: configured and joining the group, nothing fetched,
    /// because the mock broker delays the first assignment by 3 s.
    start_kib: u64,
    max_rss_kib: u64,
    /// VmHWM read at the end: the kernel's own peak, which catches spikes between samples.
    hwm_kib: u64,
    handled: u64,
    /// From the first handler call to the end of sampling.
    handling_window: Duration,
    samples: usize,
    produced: u64,
    log: PathBuf,
}

pub async fn run(params: &Params, binary: &Path) -> Result<(Vec<Row>, Value), String> {
    let broker = Broker::start()?;
    let mut handler =
        HandlerProcess::spawn(&HandlerArgs { fixed_sleep_us: Some(HANDLER_SLEEP_US), ..HandlerArgs::no_op() })?;

    // kafka-scc's default in-flight limit over the handler's time per call.
    let in_flight = sidecar_config(&broker.bootstrap, "memory", "probe", handler.endpoint(), &[])?.max_in_flight;
    let handler_capacity = in_flight as f64 * 1e6 / HANDLER_SLEEP_US as f64;
    let mut rows = Vec::new();
    let mut details = serde_json::Map::new();
    for (index, variant) in VARIANTS.iter().enumerate() {
        let topic = format!("memory-{index}");
        broker.create_topic(&topic, params.partitions)?;
        handler.reset()?;
        let measured = measure(binary, &broker, &mut handler, &topic, variant, params).await?;
        let peak_mib = measured.hwm_kib.max(measured.max_rss_kib) as f64 / 1024.0;
        eprintln!(
            "[bench] memory: {}: peak {peak_mib:.1} MiB, {} handled while {} were produced",
            variant.name, measured.handled, measured.produced
        );
        let peak = Row::new(STAGE, format!("kafka-scc peak RSS (VmHWM), {}", variant.name), peak_mib, Unit::Mebibytes)
            .limit("target", LIMIT_MIB);
        rows.push(if variant.judged {
            peak.target(format!("< {LIMIT_MIB:.0} MiB"), peak_mib < LIMIT_MIB)
        } else {
            peak
        });
        let handled_rate = measured.handled as f64 / measured.handling_window.as_secs_f64();
        rows.push(
            Row::new(
                STAGE,
                format!("handled per second meanwhile, {}", variant.name),
                handled_rate,
                Unit::MessagesPerSecond,
            )
            .limit("handler capacity", handler_capacity),
        );
        details.insert(
            variant.name.to_owned(),
            json!({
                "environment": variant.vars.iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>(),
                "rss_1s_after_start_mib": measured.start_kib as f64 / 1024.0,
                "max_sampled_rss_mib": measured.max_rss_kib as f64 / 1024.0,
                "vm_hwm_mib": measured.hwm_kib as f64 / 1024.0,
                "rss_samples": measured.samples,
                "records_produced": measured.produced,
                "records_handled": measured.handled,
                "handling_window_s": measured.handling_window.as_secs_f64(),
                "kafka_scc_log": measured.log.display().to_string(),
            }),
        );
        if index == 0 {
            rows.push(Row::new(
                STAGE,
                "kafka-scc RSS 1 s after start (joining), defaults",
                measured.start_kib as f64 / 1024.0,
                Unit::Mebibytes,
            ));
        }
    }
    details.insert("messages".to_owned(), params.messages.into());
    details.insert("partitions".to_owned(), params.partitions.into());
    details.insert("value_bytes".to_owned(), params.value_size.into());
    details.insert("handler_sleep_ms".to_owned(), (HANDLER_SLEEP_US / 1000).into());
    details.insert("produce_rate_per_s".to_owned(), PRODUCE_RATE.into());
    details.insert("mock_broker_bytes_per_partition".to_owned(), MOCK_PARTITION_BYTES.into());
    Ok((rows, Value::Object(details)))
}

/// Builds the `kafka-scc` binary of this checkout in the bench's profile and returns its
/// path. `cargo run --example` does not build the package's binaries.
pub async fn build_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|error| format!("locating the bench binary failed: {error}"))?;
    // The bench binary sits in `<target>/<profile>/examples/`.
    let profile_dir = exe
        .parent()
        .and_then(|examples| examples.parent())
        .ok_or_else(|| format!("unexpected bench binary location {}", exe.display()))?
        .to_path_buf();
    let binary = profile_dir.join(format!("kafka-scc{}", std::env::consts::EXE_SUFFIX));
    let release = !cfg!(debug_assertions);

    eprintln!("[bench] building the kafka-scc binary for the memory stage");
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let mut command = Command::new(cargo);
    command.args(["build", "--quiet", "--bin", "kafka-scc", "--manifest-path"]);
    command.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    if release {
        command.arg("--release");
    }
    let status = tokio::task::spawn_blocking(move || command.status())
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| format!("running cargo build failed: {error}"))?;
    if !status.success() || !binary.exists() {
        return Err(format!("building the kafka-scc binary failed ({status}); expected it at {}", binary.display()));
    }
    Ok(binary)
}

async fn measure(
    binary: &Path,
    broker: &Broker,
    handler: &mut HandlerProcess,
    topic: &str,
    variant: &Variant,
    params: &Params,
) -> Result<Measured, String> {
    let log =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("bench").join(format!("memory-{}.log", topic));
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent).map_err(|error| format!("creating {} failed: {error}", parent.display()))?;
    }
    let log_file =
        std::fs::File::create(&log).map_err(|error| format!("creating {} failed: {error}", log.display()))?;

    // The child gets only the variables below, so nothing from the bench's environment
    // changes its configuration.
    let mut command = Command::new(binary);
    command.env_clear();
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    command
        .env("KAFKA_BROKERS", &broker.bootstrap)
        .env("KAFKA_TOPIC", topic)
        .env("KAFKA_GROUP_ID", format!("bench-{topic}"))
        .env("HANDLER_ENDPOINT", handler.endpoint())
        .env("RUST_LOG", "warn")
        .envs(variant.vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    let child = command.spawn().map_err(|error| format!("starting {} failed: {error}", binary.display()))?;
    let spawned = Instant::now();
    let mut child = KillOnDrop(child);
    let pid = child.0.id();

    let sampling = Arc::new(AtomicBool::new(true));
    let max_rss = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sampling, max_rss, samples) = (sampling.clone(), max_rss.clone(), samples.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            while sampling.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Some((rss, _)) = memory_kib(pid) {
                    max_rss.fetch_max(rss, Ordering::Relaxed);
                    samples.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    // `retained`: check that the broker kept every record.
    let produce = |count: u64, retained: bool| {
        let bootstrap = broker.bootstrap.clone();
        let topic = topic.to_owned();
        let (partitions, value_size) = (params.partitions, params.value_size);
        tokio::task::spawn_blocking(move || {
            let bulk = Bulk { topic: &topic, partitions, count, value_size, compression: "none" };
            if retained { produce_backlog(&bootstrap, &bulk) } else { produce_bulk(&bootstrap, &bulk) }.map(|_| ())
        })
    };
    let first_batch = (FIRST_BATCH_PER_PARTITION * params.partitions as u64).min(params.messages);
    produce(first_batch, true).await.map_err(|error| error.to_string())??;

    let waiting_since = Instant::now();
    let mut start_kib = 0;
    loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            return Err(format!("kafka-scc exited early with {status}; see {}", log.display()));
        }
        if handler.report()?.calls > 0 {
            break;
        }
        if start_kib == 0 && spawned.elapsed() >= Duration::from_secs(1) {
            start_kib = memory_kib(pid).map_or(0, |(rss, _)| rss);
        }
        if waiting_since.elapsed() > Duration::from_secs(60) {
            return Err(format!("kafka-scc made no handler call within 60 s; see {}", log.display()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let first_call = Instant::now();

    // The rest in one-second chunks of PRODUCE_RATE records.
    let mut produced = first_batch;
    while produced < params.messages {
        let chunk = PRODUCE_RATE.min(params.messages - produced);
        let second = tokio::time::sleep(Duration::from_secs(1));
        produce(chunk, false).await.map_err(|error| error.to_string())??;
        produced += chunk;
        second.await;
    }
    tokio::time::sleep(TAIL).await;

    let hwm_kib = memory_kib(pid).map_or(0, |(_, hwm)| hwm);
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let handling_window = first_call.elapsed();
    let handled = handler.report()?.calls;
    stop(&mut child.0).await;
    Ok(Measured {
        start_kib,
        max_rss_kib: max_rss.load(Ordering::Relaxed),
        hwm_kib,
        handled,
        handling_window,
        samples: samples.load(Ordering::Relaxed) as usize,
        produced,
        log,
    })
}

/// Sends SIGTERM (through the `kill` command, to keep this crate free of unsafe code) and
/// waits up to 10 s for the exit, then kills.
async fn stop(child: &mut Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills the kafka-scc child if the stage ends early with an error.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
