//! Shared pieces of the benchmark: the mock broker, bulk and paced producing, kafka-scc run in
//! process, waiting on its counters, and reading CPU time and memory from `/proc`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kafka_scc::{Config, Handler, Sidecar, Stats, Summary};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// librdkafka's in-memory mock cluster with one broker on a loopback port.
pub struct Broker {
    /// Dropping it stops the broker.
    cluster: MockCluster<'static, DefaultProducerContext>,
    pub bootstrap: String,
}

impl Broker {
    pub fn start() -> Result<Broker, String> {
        let cluster = MockCluster::new(1).map_err(|error| format!("starting the mock cluster failed: {error}"))?;
        let bootstrap = cluster.bootstrap_servers();
        Ok(Broker { cluster, bootstrap })
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), String> {
        self.cluster
            .create_topic(topic, partitions, 1)
            .map_err(|error| format!("creating topic {topic} failed: {error}"))
    }
}

/// The mock cluster keeps at most 5 MiB of record batches per partition and drops the oldest
/// batches beyond that (`max_size` in librdkafka 2.12.1, `rdkafka_mock.c`, not configurable).
pub const MOCK_PARTITION_BYTES: u64 = 5 * 1024 * 1024;

/// A batch of records to produce: `count` records with distinct keys (`key-00000042`) and
/// `value_size`-byte values, round-robin over the partitions.
pub struct Bulk<'a> {
    pub topic: &'a str,
    pub partitions: i32,
    pub count: u64,
    pub value_size: usize,
    /// librdkafka `compression.type`: `none`, or `lz4` to fit a backlog larger than
    /// [`MOCK_PARTITION_BYTES`] per partition into the mock broker.
    pub compression: &'a str,
}

/// Produces the records as fast as the producer goes. Returns the end offset of every
/// partition.
pub fn produce_bulk(bootstrap: &str, bulk: &Bulk<'_>) -> Result<BTreeMap<i32, i64>, String> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", bulk.compression)
        .set("queue.buffering.max.messages", "200000")
        .set("queue.buffering.max.kbytes", "524288")
        .set("message.timeout.ms", "120000")
        .create()
        .map_err(|error| format!("creating the producer failed: {error}"))?;
    let value = payload(bulk.value_size);
    let mut key = String::new();
    for n in 0..bulk.count {
        key.clear();
        {
            use std::fmt::Write;
            let _ = write!(key, "key-{n:08}");
        }
        let partition = (n % bulk.partitions as u64) as i32;
        let mut record = BaseRecord::to(bulk.topic).partition(partition).key(key.as_str()).payload(value.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    producer.poll(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(format!("producing to {} failed: {error}", bulk.topic)),
            }
        }
        if n.is_multiple_of(1024) {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120)).map_err(|error| format!("flushing the producer failed: {error}"))?;
    end_offsets(bootstrap, bulk.topic, bulk.partitions)
}

/// Produces the records and checks that the broker kept every one of them: nothing dropped by
/// the mock's size limit. Returns the end offset of every partition.
pub fn produce_backlog(bootstrap: &str, bulk: &Bulk<'_>) -> Result<BTreeMap<i32, i64>, String> {
    let ends = produce_bulk(bootstrap, bulk)?;
    let stored: i64 = ends.values().sum();
    if stored != bulk.count as i64 {
        return Err(format!(
            "the broker stores {stored} records of topic {}; {} were produced",
            bulk.topic, bulk.count
        ));
    }
    let starts = start_offsets(bootstrap, bulk.topic, bulk.partitions)?;
    if let Some((partition, start)) = starts.iter().find(|(_, start)| **start > 0) {
        return Err(format!(
            "the mock broker dropped the first {start} records of {}/{partition}: it keeps {} MiB per partition",
            bulk.topic,
            MOCK_PARTITION_BYTES >> 20
        ));
    }
    Ok(ends)
}

/// Builds a record value of `size` bytes: printable text with a little variety, so that it is
/// not a single repeated byte.
pub fn payload(size: usize) -> Vec<u8> {
    b"{\"event\":\"order_paid\",\"customer\":\"customer-0042\",\"amount_cents\":12345,\"note\":\""
        .iter()
        .copied()
        .chain(
            std::iter::repeat_n(b"abcdefghijklmnopqrstuvwxyz0123456789".iter().copied(), size.div_ceil(36)).flatten(),
        )
        .take(size)
        .collect()
}

/// Reads the start offset (low watermark) of every partition of `topic`.
pub fn start_offsets(bootstrap: &str, topic: &str, partitions: i32) -> Result<BTreeMap<i32, i64>, String> {
    watermarks(bootstrap, topic, partitions).map(|marks| marks.into_iter().map(|(p, (low, _))| (p, low)).collect())
}

/// Reads the end offset (high watermark) of every partition of `topic`.
pub fn end_offsets(bootstrap: &str, topic: &str, partitions: i32) -> Result<BTreeMap<i32, i64>, String> {
    watermarks(bootstrap, topic, partitions).map(|marks| marks.into_iter().map(|(p, (_, high))| (p, high)).collect())
}

fn watermarks(bootstrap: &str, topic: &str, partitions: i32) -> Result<BTreeMap<i32, (i64, i64)>, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|error| format!("creating the watermark client failed: {error}"))?;
    (0..partitions)
        .map(|partition| {
            consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .map(|marks| (partition, marks))
                .map_err(|error| format!("reading the watermarks of {topic}/{partition} failed: {error}"))
        })
        .collect()
}

/// The kafka-scc configuration used everywhere: the defaults, plus the broker, the topic, a
/// fresh group and the handler endpoint, plus `extra` variables.
pub fn sidecar_config(
    bootstrap: &str,
    topic: &str,
    group: &str,
    endpoint: &str,
    extra: &[(&str, &str)],
) -> Result<Config, String> {
    let mut vars: Vec<(String, String)> = vec![
        ("KAFKA_BROKERS".into(), bootstrap.into()),
        ("KAFKA_TOPIC".into(), topic.into()),
        ("KAFKA_GROUP_ID".into(), group.into()),
        ("HANDLER_ENDPOINT".into(), endpoint.into()),
    ];
    vars.extend(extra.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())));
    Config::from_vars(vars).map_err(|error| error.to_string())
}

/// A kafka-scc pipeline running in this process.
pub struct RunningSidecar {
    pub stats: Arc<Stats>,
    pub started: Instant,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<Summary, kafka_scc::RunError>>,
}

impl RunningSidecar {
    pub fn start<H: Handler>(config: Config, handler: H) -> RunningSidecar {
        let sidecar = Sidecar::new(config, handler);
        let stats = sidecar.stats();
        let (stop, stopped) = oneshot::channel::<()>();
        let started = Instant::now();
        let task = tokio::spawn(sidecar.run(async {
            let _ = stopped.await;
        }));
        RunningSidecar { stats, started, stop: Some(stop), task }
    }

    /// Shuts the sidecar down and waits for it.
    pub async fn stop(mut self) -> Result<Summary, String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(Ok(summary)) => Ok(summary),
            Ok(Err(error)) => Err(format!("kafka-scc failed: {error}")),
            Err(error) => Err(format!("the kafka-scc task failed: {error}")),
        }
    }

    /// Waits for the partition assignment. Returns its time, or an error after `timeout`.
    pub async fn wait_assigned(&self, timeout: Duration) -> Result<Instant, String> {
        match self.stats.wait_until(timeout, |s| !s.assigned.is_empty()).await {
            Ok(_) => Ok(Instant::now()),
            Err(snapshot) => Err(format!("kafka-scc got no partitions within {timeout:?}: {snapshot:?}")),
        }
    }
}

/// Polls the counters every millisecond until `condition` is true and returns the time it was
/// first seen, or an error after `timeout`.
///
/// Polling, rather than [`Stats::wait_until`], because a waiter is woken by every change,
/// which at 100,000 messages per second would cost the sidecar's runtime a wake-up and a
/// snapshot per message.
pub async fn poll_stats_until(
    stats: &Stats,
    timeout: Duration,
    condition_name: &str,
    mut condition: impl FnMut(&kafka_scc::telemetry::StatsSnapshot) -> bool,
) -> Result<Instant, String> {
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snapshot = stats.snapshot();
        if condition(&snapshot) {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out after {timeout:?} waiting for {condition_name}: fetched {}, handled {}, committed {:?}",
                snapshot.fetched,
                snapshot.handled(),
                snapshot.committed
            ));
        }
    }
}

/// Returns whether every partition's committed offset reached its end offset.
pub fn all_committed(snapshot: &kafka_scc::telemetry::StatsSnapshot, topic: &str, ends: &BTreeMap<i32, i64>) -> bool {
    ends.iter().all(|(partition, end)| snapshot.committed_offset(topic, *partition) == Some(*end))
}

/// Microseconds since the Unix epoch on the wall clock, which the bench process and the
/// handler child share.
pub fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_micros() as i64).unwrap_or(0)
}

/// Draws the seeded sleep of one message, uniform over 0..=`max_us` microseconds, from a
/// SplitMix64 hash of the seed, partition and offset, so the handler and the bench agree.
pub fn sleep_micros(seed: u64, partition: i32, offset: i64, max_us: u64) -> u64 {
    let mut z = seed ^ ((partition as u64) << 40) ^ (offset as u64);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z % (max_us + 1)
}

/// User plus system CPU time of a process, from `/proc/<pid>/stat`; `None` off Linux or when
/// the process is gone.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in field 2 may contain spaces, so fields are counted after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ticks_to_duration(utime + stime))
}

/// Converts `/proc` clock ticks to time. Linux reports them in USER_HZ, which is 100 on every
/// architecture that Rust targets with Linux; `getconf CLK_TCK` prints it.
fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 10)
}

/// Resident and peak resident memory of a process, in KiB, from `/proc/<pid>/status`.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|line| line.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time per thread of this process, summed by thread name with digits removed
/// (`tokio-runtime-w`, `rdk:broker`), from `/proc/self/task/*/schedstat`, in nanoseconds.
/// Threads that ended are not included.
pub fn thread_cpu() -> BTreeMap<String, u64> {
    let mut totals = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return totals;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else { continue };
        let Ok(schedstat) = std::fs::read_to_string(path.join("schedstat")) else { continue };
        let Some(nanos) = schedstat.split_whitespace().next().and_then(|field| field.parse::<u64>().ok()) else {
            continue;
        };
        let name: String = name.trim().chars().filter(|c| !c.is_ascii_digit()).collect();
        *totals.entry(name).or_insert(0) += nanos;
    }
    totals
}

/// Computes the per-thread CPU used between two [`thread_cpu`] readings, in milliseconds, largest first.
pub fn thread_cpu_delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Vec<(String, f64)> {
    let mut delta: Vec<(String, f64)> = after
        .iter()
        .map(|(name, nanos)| {
            let earlier = before.get(name).copied().unwrap_or(0);
            (name.clone(), nanos.saturating_sub(earlier) as f64 / 1e6)
        })
        .filter(|(_, millis)| *millis >= 1.0)
        .collect();
    delta.sort_by(|a, b| b.1.total_cmp(&a.1));
    delta
}

/// CPU time of this process and of an optional child between `start` and a later call.
pub struct CpuMeter {
    child: Option<u32>,
    own: Duration,
    child_time: Duration,
}

impl CpuMeter {
    pub fn start(child: Option<u32>) -> CpuMeter {
        CpuMeter {
            child,
            own: cpu_time(std::process::id()).unwrap_or_default(),
            child_time: child.and_then(cpu_time).unwrap_or_default(),
        }
    }

    /// CPU seconds used since `start` by this process and by the child.
    pub fn read(&self) -> (f64, f64) {
        let own = cpu_time(std::process::id()).unwrap_or_default().saturating_sub(self.own);
        let child = self.child.and_then(cpu_time).map(|now| now.saturating_sub(self.child_time)).unwrap_or_default();
        (own.as_secs_f64(), child.as_secs_f64())
    }
}

/// The `p`-th percentile (0 to 100) of sorted values, by the nearest-rank method.
pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
