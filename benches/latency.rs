//! End-to-end latency from Kafka to Kafka, as a read_committed client sees it: a producer
//! sends bids at a steady rate, each stamped with its send time (in `bidder`, a column q0
//! passes through), and a read_committed consumer of the output topic measures, for each
//! record, the time from its send to its arrival. `scripts/bench-latency.sh` runs it beside
//! `oxflow nexmark --query q0` per guarantee and rate.
//!
//!   cargo bench --bench latency -- BROKERS IN OUT RATE SECONDS
//!
//! Prints one JSON line: sent, received, p50_ms, p99_ms, max_ms.

// A benchmark measures wall time itself; the injectable clock is for operators.
#![allow(clippy::disallowed_methods)]

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::Message;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [brokers, input, output, rate, seconds] = args.as_slice() else {
        anyhow::bail!("usage: cargo bench --bench latency -- BROKERS IN OUT RATE SECONDS");
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
    let sender = std::thread::spawn(move || -> anyhow::Result<()> {
        // In steps of 1 ms: a steady rate, not bursts.
        let start = Instant::now();
        for i in 0..total {
            let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let value = format!(
                r#"{{"auction":{},"bidder":{},"price":100,"channel":"c","url":"u","date_time":"2024-01-01T00:00:00.000Z","extra":""}}"#,
                i % 1000,
                now_ms()
            );
            let mut record = BaseRecord::<[u8], [u8]>::to(&input).payload(value.as_bytes());
            while let Err((_, back)) = producer.send(record) {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        producer.flush(Duration::from_secs(30))?;
        Ok(())
    });
    let mut latencies = Vec::with_capacity(total as usize);
    let mut last = Instant::now();
    while (latencies.len() as u64) < total && last.elapsed() < Duration::from_secs(15) {
        let Some(m) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let m = m?;
        let at = now_ms();
        let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
        if let Some(sent) = value["bidder"].as_i64() {
            latencies.push(at - sent);
            last = Instant::now();
        }
    }
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sender panicked"))??;
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
            "sent": total,
            "received": latencies.len(),
            "p50_ms": pick(0.50),
            "p99_ms": pick(0.99),
            "max_ms": latencies.last().copied().unwrap_or(-1),
        })
    );
    Ok(())
}
