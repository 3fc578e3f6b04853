//! End-to-end latency from Kafka to Kafka, as a read_committed client sees it: a producer
//! sends bids at a steady rate and a read_committed consumer of the output topic measures
//! when results arrive. `scripts/bench-latency.sh` runs it beside `oxflow nexmark` per query,
//! guarantee and rate.
//!
//!   cargo bench --bench latency -- BROKERS IN OUT RATE SECONDS [QUERY [DELAY_MS]]
//!
//! - `q0` (the default), a pass-through: each bid is stamped with its send time (in `bidder`,
//!   a column q0 passes through), and each record's latency is its arrival minus its send.
//! - A windowed query (`q5` or `q7`, whose rows carry `window_end`): each bid's event time is
//!   its send time, so a window can close once a bid stamped `window_end + DELAY_MS` (the
//!   watermark delay the job was given) has been sent. A window's latency is the arrival of
//!   its first row minus that moment: what a user waits for a result after it became due.
//!   Windows that close only because the input ended (not because time passed) are left out.
//!
//! Prints one JSON line: query, sent, received (records, or windows), p50_ms, p99_ms, max_ms.

// A benchmark measures wall time itself; the injectable clock is for operators.
#![allow(clippy::disallowed_methods)]

use datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::Message;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A timestamp column of a result: RFC 3339 text (the JSON sinks' form) or milliseconds.
fn millis(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::String(s) => string_to_timestamp_nanos(s)
            .ok()
            .map(|n| n.div_euclid(1_000_000)),
        other => other.as_i64(),
    }
}

/// What is measured, from the query the job runs.
#[derive(Clone, Copy)]
enum Measure {
    /// Send to arrival of every record (`bidder` holds the send time).
    PassThrough,
    /// Due time (`window_end + delay`) to the arrival of each window's first row.
    Window { delay_ms: i64 },
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let usage =
        "usage: cargo bench --bench latency -- BROKERS IN OUT RATE SECONDS [QUERY [DELAY_MS]]";
    let (brokers, input, output, rate, seconds) = match args.as_slice() {
        [b, i, o, r, s, ..] => (b, i, o, r, s),
        _ => anyhow::bail!("{usage}"),
    };
    let query = args.get(5).map_or("q0", String::as_str);
    let measure = match query {
        "q0" => Measure::PassThrough,
        "q5" | "q7" => Measure::Window {
            delay_ms: args.get(6).map_or(Ok(4000), |d| d.parse())?,
        },
        other => anyhow::bail!("query `{other}` is not measured here (q0, q5 or q7); {usage}"),
    };
    let (rate, seconds): (u64, u64) = (rate.parse()?, seconds.parse()?);
    let total = rate * seconds;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("oxflow-latency-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    consumer.subscribe(&[output.as_str()])?;
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "1")
        .create()?;
    let input = input.clone();
    let sent_all = Arc::new(AtomicBool::new(false));
    let done = sent_all.clone();
    let sender = std::thread::spawn(move || -> anyhow::Result<i64> {
        // In steps of 1 ms: a steady rate, not bursts.
        let start = Instant::now();
        let mut last_stamp = 0;
        for i in 0..total {
            let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            last_stamp = now_ms();
            let (bidder, date_time) = match measure {
                Measure::PassThrough => (last_stamp, "\"2024-01-01T00:00:00.000Z\"".to_string()),
                Measure::Window { .. } => ((i % 1000) as i64, last_stamp.to_string()),
            };
            let value = format!(
                r#"{{"auction":{},"bidder":{bidder},"price":{},"channel":"c","url":"u","date_time":{date_time},"extra":""}}"#,
                i % 1000,
                100 + i % 7919,
            );
            let mut record = BaseRecord::<[u8], [u8]>::to(&input).payload(value.as_bytes());
            while let Err((_, back)) = producer.send(record) {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        producer.flush(Duration::from_secs(30))?;
        done.store(true, Ordering::Release);
        Ok(last_stamp)
    });
    let mut latencies = Vec::with_capacity(total as usize);
    // Windowed: the first arrival of each window, by its end.
    let mut windows: BTreeMap<i64, i64> = BTreeMap::new();
    let mut last = Instant::now();
    loop {
        let idle = last.elapsed();
        let finished = match measure {
            Measure::PassThrough => latencies.len() as u64 >= total,
            // The last windows close at the end of input, which the job reaches soon after
            // the last bid: a few quiet seconds after that, nothing more is coming.
            Measure::Window { .. } => {
                sent_all.load(Ordering::Acquire) && idle > Duration::from_secs(5)
            }
        };
        if finished || idle > Duration::from_secs(15) {
            break;
        }
        let Some(m) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let m = m?;
        let at = now_ms();
        let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        last = Instant::now();
        match measure {
            Measure::PassThrough => {
                if let Some(sent) = value["bidder"].as_i64() {
                    latencies.push(at - sent);
                }
            }
            Measure::Window { .. } => {
                if let Some(end) = millis(&value["window_end"]) {
                    windows.entry(end).or_insert(at);
                }
            }
        }
    }
    let last_stamp = sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sender panicked"))??;
    if let Measure::Window { delay_ms } = measure {
        latencies.extend(
            windows
                .iter()
                .map(|(&end, &at)| (end + delay_ms, at))
                .filter(|&(due, _)| due <= last_stamp)
                .map(|(due, at)| at - due),
        );
    }
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(-1)
    };
    println!(
        "{}",
        serde_json::json!({
            "query": query,
            "sent": total,
            "received": latencies.len(),
            "p50_ms": pick(0.50),
            "p99_ms": pick(0.99),
            "max_ms": latencies.last().copied().unwrap_or(-1),
        })
    );
    Ok(())
}
