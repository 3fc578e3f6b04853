//! The baseline for the Kafka pass-through benchmark: a plain rdkafka consumer + producer
//! loop that copies records from one topic to another, as fast as librdkafka goes, with no
//! decoding. `scripts/bench-kafka.sh` runs it beside `oxflow nexmark --query q0` from Kafka to
//! Kafka on the same topic, in the same run.
//!
//!   cargo bench --bench kafka -- BROKERS IN OUT RECORDS [exactly-once]
//!
//! Prints one JSON line: records, seconds, records_per_sec, mb_per_sec, cpu_seconds. With
//! `exactly-once` the loop commits a transaction every second, as a checkpointed job would.

// A benchmark measures wall time itself; the injectable clock is for operators.
#![allow(clippy::disallowed_methods)]

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [brokers, input, output, records, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: cargo bench --bench kafka -- BROKERS IN OUT RECORDS [exactly-once]");
    };
    let records: u64 = records.parse()?;
    let exactly_once = rest.first().map(String::as_str) == Some("exactly-once");
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "oxflow-bench-baseline")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(input), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        assignment.add_partition_offset(input, p.id(), Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    if exactly_once {
        config.set(
            "transactional.id",
            format!("oxflow-bench-{}", std::process::id()),
        );
    }
    let producer: ThreadedProducer<DefaultProducerContext> = config.create()?;
    if exactly_once {
        producer.init_transactions(Duration::from_secs(30))?;
        producer.begin_transaction()?;
    }
    let (cpu0, start) = (oxflow::process_cpu_seconds(), Instant::now());
    let (mut n, mut bytes, mut last_commit) = (0u64, 0u64, Instant::now());
    while n < records {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        let payload = m.payload().unwrap_or_default();
        bytes += payload.len() as u64;
        let mut record = BaseRecord::<[u8], [u8]>::to(output).payload(payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(1));
                }
            }
        }
        n += 1;
        if exactly_once && last_commit.elapsed() >= Duration::from_secs(1) {
            producer.commit_transaction(Duration::from_secs(60))?;
            producer.begin_transaction()?;
            last_commit = Instant::now();
        }
    }
    if exactly_once {
        producer.commit_transaction(Duration::from_secs(60))?;
    } else {
        producer.flush(Duration::from_secs(60))?;
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "records": n,
            "seconds": seconds,
            "records_per_sec": n as f64 / seconds,
            "mb_per_sec": bytes as f64 / seconds / 1e6,
            "cpu_seconds": oxflow::process_cpu_seconds() - cpu0,
        })
    );
    Ok(())
}
