//! Produce-to-receipt latency at a paced 1,000 records per second over 8 partitions, from the
//! producer to kafka-scc's handler. Its two parts are measured alone as well: a plain rdkafka
//! consumer up to `poll` returning the record (with kafka-scc's librdkafka settings), and a
//! plain tonic client sending the same paced calls, up to the handler's receipt.
//!
//! Each measured record carries the producer's wall clock in the [`PRODUCED_AT_HEADER`]
//! header, taken just before the send, and the receiver subtracts it from its own clock. The
//! handler child and the bench share the machine's clock. Half a second of records without
//! the header goes first, so that connecting and the first fetch are not measured.
//!
//! The mock broker responds to a fetch that finds no data only after the consumer's whole
//! `fetch.wait.max.ms` (500 ms by default), even when records arrive meanwhile (librdkafka
//! 2.12.1, `rdkafka_mock_handlers.c`), while a real broker responds when data arrives. At 1,000
//! records per second over 8 partitions many fetches find nothing, so with the default every
//! consumer here measures latencies of hundreds of milliseconds that a real broker would not cause.
//! Both consumers therefore run with `fetch.wait.max.ms` = [`FETCH_WAIT_MAX_MS`], which caps
//! that artificial wait. The default is measured too, for kafka-scc, as a diagnostic. Two more
//! diagnostics split kafka-scc: its `GrpcHandler` driven alone at the same pace, and kafka-scc
//! with an in-process handler, which measures the pipeline without the gRPC call.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_scc::{Config, Handler, HandlerError, Message};
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{Value, json};

use crate::calls::{Pace, grpc_handler_for, paced_calls, paced_grpc_handler};
use crate::handler::{HandlerArgs, HandlerProcess, PRODUCED_AT_HEADER};
use crate::report::{Row, Unit};
use crate::support::{Broker, RunningSidecar, now_micros, payload, percentile, sidecar_config};

const STAGE: &str = "latency";
const PARTITIONS: i32 = 8;
const VALUE_SIZE: usize = 1024;
/// The consumers' `fetch.wait.max.ms` in the measured runs; see the module documentation.
const FETCH_WAIT_MAX_MS: &str = "1";
/// Records sent before the measured ones, without the timestamp header.
const WARM_UP: Duration = Duration::from_millis(500);
/// The target for kafka-scc's 99th percentile, in milliseconds.
const TARGET_P99_MS: f64 = 10.0;

pub struct Params {
    pub rate_per_s: u64,
    pub seconds: u64,
}

/// Latency percentiles of one run, in microseconds.
struct Latencies {
    sorted_us: Vec<i64>,
    expected: u64,
}

impl Latencies {
    fn new(mut samples: Vec<i64>, expected: u64) -> Latencies {
        samples.sort_unstable();
        Latencies { sorted_us: samples, expected }
    }

    fn ms(&self, p: f64) -> f64 {
        percentile(&self.sorted_us, p) as f64 / 1000.0
    }

    fn to_json(&self) -> Value {
        json!({
            "records_expected": self.expected,
            "records_measured": self.sorted_us.len(),
            "p50_ms": self.ms(50.0),
            "p90_ms": self.ms(90.0),
            "p99_ms": self.ms(99.0),
            "p999_ms": self.ms(99.9),
            "max_ms": self.sorted_us.last().map_or(0.0, |us| *us as f64 / 1000.0),
        })
    }
}

pub async fn run(params: &Params) -> Result<(Vec<Row>, Value), String> {
    let broker = Broker::start()?;
    let measured_count = params.rate_per_s * params.seconds;
    let pace = Pace {
        rate_per_s: params.rate_per_s,
        seconds: params.seconds,
        warm_up: WARM_UP,
        partitions: PARTITIONS,
        value_size: VALUE_SIZE,
    };
    let fast_fetch = [("KAFKA_CFG_FETCH_WAIT_MAX_MS", FETCH_WAIT_MAX_MS)];
    let mut handler = HandlerProcess::spawn(&HandlerArgs::no_op())?;

    let plain = {
        let topic = "latency-plain";
        broker.create_topic(topic, PARTITIONS)?;
        let config = sidecar_config(&broker.bootstrap, topic, "bench-latency-plain", handler.endpoint(), &fast_fetch)?;
        let consumer = std::thread::spawn(move || consume_plain(&config, measured_count));
        paced_produce(&broker.bootstrap, topic, &pace).await?;
        let samples = tokio::task::spawn_blocking(move || consumer.join())
            .await
            .map_err(|error| error.to_string())?
            .map_err(|_| "the plain consumer thread panicked".to_owned())??;
        Latencies::new(samples, measured_count)
    };
    eprintln!("[bench] latency: plain rdkafka p50 {:.2} ms, p99 {:.2} ms", plain.ms(50.0), plain.ms(99.0));

    handler.reset()?;
    paced_calls(handler.endpoint(), &pace).await?;
    let grpc = Latencies::new(handler.report()?.produce_to_receipt_us, measured_count);
    eprintln!("[bench] latency: plain tonic p50 {:.2} ms, p99 {:.2} ms", grpc.ms(50.0), grpc.ms(99.0));

    handler.reset()?;
    let config = sidecar_config(&broker.bootstrap, "latency-scc", "bench-grpc-alone", handler.endpoint(), &[])?;
    paced_grpc_handler(&config, &pace).await?;
    let grpc_handler = Latencies::new(handler.report()?.produce_to_receipt_us, measured_count);
    eprintln!(
        "[bench] latency: kafka-scc GrpcHandler alone p50 {:.2} ms, p99 {:.2} ms",
        grpc_handler.ms(50.0),
        grpc_handler.ms(99.0)
    );

    let scc = run_sidecar(&broker, &mut handler, "latency-scc", &fast_fetch, &pace).await?;
    eprintln!("[bench] latency: kafka-scc p50 {:.2} ms, p99 {:.2} ms", scc.ms(50.0), scc.ms(99.0));
    let in_process = run_in_process(&broker, handler.endpoint(), "latency-in-process", &fast_fetch, &pace).await?;
    eprintln!(
        "[bench] latency: kafka-scc with an in-process handler p50 {:.2} ms, p99 {:.2} ms",
        in_process.ms(50.0),
        in_process.ms(99.0)
    );
    let scc_default = run_sidecar(&broker, &mut handler, "latency-scc-default", &[], &pace).await?;
    eprintln!(
        "[bench] latency: kafka-scc with the default fetch.wait.max.ms p50 {:.2} ms, p99 {:.2} ms",
        scc_default.ms(50.0),
        scc_default.ms(99.0)
    );

    let p99 = scc.ms(99.0);
    let rows = vec![
        Row::new(STAGE, "plain rdkafka consumer, p50", plain.ms(50.0), Unit::Milliseconds),
        Row::new(STAGE, "plain rdkafka consumer, p99", plain.ms(99.0), Unit::Milliseconds),
        Row::new(STAGE, "plain tonic client, send to handler receipt, p50", grpc.ms(50.0), Unit::Milliseconds),
        Row::new(STAGE, "plain tonic client, send to handler receipt, p99", grpc.ms(99.0), Unit::Milliseconds),
        Row::new(STAGE, "kafka-scc to handler receipt, p50", scc.ms(50.0), Unit::Milliseconds)
            .limit("sum of plain p50s", plain.ms(50.0) + grpc.ms(50.0)),
        Row::new(STAGE, "kafka-scc to handler receipt, p99", p99, Unit::Milliseconds)
            .limit("sum of plain p99s", plain.ms(99.0) + grpc.ms(99.0))
            .target(format!("< {TARGET_P99_MS:.0} ms"), p99 < TARGET_P99_MS),
        Row::new(STAGE, "kafka-scc GrpcHandler alone (no Kafka), p50", grpc_handler.ms(50.0), Unit::Milliseconds)
            .limit("plain tonic p50", grpc.ms(50.0)),
        Row::new(STAGE, "kafka-scc GrpcHandler alone (no Kafka), p99", grpc_handler.ms(99.0), Unit::Milliseconds)
            .limit("plain tonic p99", grpc.ms(99.0)),
        Row::new(STAGE, "kafka-scc, in-process handler (no gRPC), p50", in_process.ms(50.0), Unit::Milliseconds)
            .limit("plain p50", plain.ms(50.0)),
        Row::new(STAGE, "kafka-scc, in-process handler (no gRPC), p99", in_process.ms(99.0), Unit::Milliseconds)
            .limit("plain p99", plain.ms(99.0)),
        Row::new(STAGE, "kafka-scc, default fetch.wait.max.ms (500), p99", scc_default.ms(99.0), Unit::Milliseconds)
            .limit("plain p99", plain.ms(99.0)),
    ];
    let details = json!({
        "rate_per_s": params.rate_per_s,
        "seconds": params.seconds,
        "partitions": PARTITIONS,
        "value_bytes": VALUE_SIZE,
        "fetch_wait_max_ms": FETCH_WAIT_MAX_MS,
        "warm_up_s": WARM_UP.as_secs_f64(),
        "plain_rdkafka": plain.to_json(),
        "plain_tonic": grpc.to_json(),
        "kafka_scc_grpc_handler_alone": grpc_handler.to_json(),
        "kafka_scc": scc.to_json(),
        "kafka_scc_in_process_handler": in_process.to_json(),
        "kafka_scc_default_fetch_wait": scc_default.to_json(),
    });
    Ok((rows, details))
}

/// Sends half a second of unmeasured records, then `rate × seconds` measured ones, each at
/// its own scheduled time, with `linger.ms=0` so the producer sends at once.
async fn paced_produce(bootstrap: &str, topic: &str, pace: &Pace) -> Result<(), String> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "0")
        .create()
        .map_err(|error| format!("creating the paced producer failed: {error}"))?;
    let value = payload(VALUE_SIZE);
    let (warm_up, total, interval) = pace.schedule();

    let started = tokio::time::Instant::now();
    let mut deliveries = Vec::with_capacity(total as usize);
    for n in 0..total {
        tokio::time::sleep_until(started + interval * n as u32).await;
        let key = format!("key-{n:08}");
        let mut record =
            FutureRecord::to(topic).partition((n % PARTITIONS as u64) as i32).key(&key).payload(value.as_slice());
        let produced_at;
        if n >= warm_up {
            produced_at = now_micros().to_string();
            record = record.headers(
                OwnedHeaders::new().insert(Header { key: PRODUCED_AT_HEADER, value: Some(produced_at.as_bytes()) }),
            );
        }
        let delivery = producer.send_result(record).map_err(|(error, _)| format!("producing failed: {error}"))?;
        deliveries.push(delivery);
    }
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => return Err(format!("a paced record was not delivered: {error}")),
            Err(_) => return Err("the paced producer was dropped".to_owned()),
        }
    }
    Ok(())
}

/// Reads the topic with a plain `BaseConsumer` with kafka-scc's librdkafka settings until
/// `expected` measured records arrived; returns their latencies in microseconds.
fn consume_plain(config: &Config, expected: u64) -> Result<Vec<i64>, String> {
    let consumer: BaseConsumer =
        config.consumer_config().create().map_err(|error| format!("creating the plain consumer failed: {error}"))?;
    let mut list = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        list.add_partition_offset(&config.topics[0], partition, Offset::Beginning)
            .map_err(|error| format!("building the assignment failed: {error}"))?;
    }
    consumer.assign(&list).map_err(|error| format!("assigning the partitions failed: {error}"))?;

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut samples = Vec::with_capacity(expected as usize);
    while (samples.len() as u64) < expected {
        if Instant::now() > deadline {
            return Err(format!("the plain consumer measured {} of {expected} records in 120 s", samples.len()));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(record)) => {
                let received = now_micros();
                let produced = record.headers().and_then(|headers| {
                    headers
                        .iter()
                        .find(|header| header.key == PRODUCED_AT_HEADER)
                        .and_then(|header| header.value)
                        .and_then(|value| std::str::from_utf8(value).ok())
                        .and_then(|value| value.parse::<i64>().ok())
                });
                if let Some(produced) = produced {
                    samples.push(received - produced);
                }
            }
            Some(Err(error)) => return Err(format!("the plain consumer failed: {error}")),
            None => {}
        }
    }
    Ok(samples)
}

/// Records produce-to-receipt latencies inside the bench process: kafka-scc's poll thread and
/// pipeline without any gRPC.
#[derive(Clone, Default)]
struct InProcessHandler {
    latencies_us: Arc<Mutex<Vec<i64>>>,
}

impl Handler for InProcessHandler {
    async fn handle(&self, message: &Message, _attempt: u32) -> Result<(), HandlerError> {
        let received = now_micros();
        let produced = message
            .headers
            .iter()
            .find(|header| header.key == PRODUCED_AT_HEADER)
            .and_then(|header| header.value.as_deref())
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(|value| value.parse::<i64>().ok());
        if let Some(produced) = produced {
            self.latencies_us.lock().expect("latency lock").push(received - produced);
        }
        Ok(())
    }
}

/// Runs kafka-scc with an [`InProcessHandler`] on a fresh topic while the paced producer sends.
async fn run_in_process(
    broker: &Broker,
    endpoint: &str,
    topic: &str,
    vars: &[(&str, &str)],
    pace: &Pace,
) -> Result<Latencies, String> {
    broker.create_topic(topic, PARTITIONS)?;
    let expected = pace.rate_per_s * pace.seconds;
    let config = sidecar_config(&broker.bootstrap, topic, &format!("bench-{topic}"), endpoint, vars)?;
    let handler = InProcessHandler::default();
    let latencies = handler.latencies_us.clone();
    let sidecar = RunningSidecar::start(config, handler);
    sidecar.wait_assigned(Duration::from_secs(60)).await?;

    paced_produce(&broker.bootstrap, topic, pace).await?;
    let measured = || latencies.lock().expect("latency lock").len() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while measured() < expected {
        if Instant::now() > deadline {
            return Err(format!("the in-process handler received {} of {expected} measured records", measured()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sidecar.stop().await?;
    let samples = latencies.lock().expect("latency lock").clone();
    Ok(Latencies::new(samples, expected))
}

/// Runs kafka-scc on a fresh topic while the paced producer sends, and returns the latencies
/// the handler recorded.
async fn run_sidecar(
    broker: &Broker,
    handler: &mut HandlerProcess,
    topic: &str,
    vars: &[(&str, &str)],
    pace: &Pace,
) -> Result<Latencies, String> {
    broker.create_topic(topic, PARTITIONS)?;
    handler.reset()?;
    let expected = pace.rate_per_s * pace.seconds;
    let config = sidecar_config(&broker.bootstrap, topic, &format!("bench-{topic}"), handler.endpoint(), vars)?;
    let grpc = grpc_handler_for(&config)?;
    let sidecar = RunningSidecar::start(config, grpc);
    sidecar.wait_assigned(Duration::from_secs(60)).await?;

    paced_produce(&broker.bootstrap, topic, pace).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let report = handler.report()?;
        if report.produce_to_receipt_us.len() as u64 >= expected {
            break report;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the handler received {} of {expected} measured records within 30 s of the last send",
                report.produce_to_receipt_us.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    sidecar.stop().await?;
    Ok(Latencies::new(report.produce_to_receipt_us, expected))
}
