//! The Kafka source and sink against a real Apache Kafka broker: `scripts/kafka.sh start`,
//! then `OXFLOW_KAFKA_BROKERS=127.0.0.1:9092 cargo test --release --workspace -- --ignored kafka`.
//! `scripts/test.sh` (the README's test command) and .ci/run do exactly that. Each test makes
//! its own topics, named uniquely, so runs never see each other's records.

// Unique names and time limits come from the wall clock; no operator logic is under test here.
#![allow(clippy::disallowed_methods)]

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
mod common;

use common::{oxflow, summary};
use std::time::Duration;

const NEEDS: &str =
    "needs a Kafka broker: scripts/kafka.sh start; OXFLOW_KAFKA_BROKERS=127.0.0.1:9092";

fn brokers() -> String {
    std::env::var("OXFLOW_KAFKA_BROKERS").unwrap_or_else(|_| panic!("{NEEDS}"))
}

fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt
        .block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

/// A bid as JSON, with q0's columns, for auction `auction` at second `second` of 2024.
fn bid_json(auction: i64, second: i64) -> String {
    format!(
        r#"{{"auction":{auction},"bidder":0,"price":0,"date_time":"2024-01-01T00:00:{second:02}.000Z","extra":""}}"#
    )
}

fn produce(topic: &str, values: &[&str]) {
    let records: Vec<_> = values
        .iter()
        .map(|v| (topic, 0, None, v.to_string()))
        .collect();
    produce_records(&records);
}

/// Sends `(topic, partition, timestamp, value)` records and waits until they are written.
fn produce_records(records: &[(&str, i32, Option<i64>, String)]) {
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    for (topic, partition, timestamp, value) in records {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(*partition)
            .payload(value.as_bytes());
        if let Some(ts) = timestamp {
            record = record.timestamp(*ts);
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

fn failed(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; OXFLOW_KAFKA_BROKERS=127.0.0.1:9092"]
fn kafka_round_trip_q5_and_q7_equal_the_generator() {
    let b = brokers();
    let topic = common::unique("bids");
    create_topic(&topic, 4);
    let gen = common::ORDERED_GENERATOR;
    // Fill the topic with the generator's bids (q0's columns), one writer so each
    // partition's records are in event-time order.
    let fill = summary(&oxflow(
        &[
            &gen[..],
            &["--query", "q0", "--sink", &format!("kafka://{b}/{topic}")],
        ]
        .concat(),
    ));
    let bids = fill["output_rows"].as_u64().unwrap().to_string();
    for query in ["q5", "q7"] {
        let expected = tempfile::tempdir().unwrap();
        summary(&oxflow(
            &[
                &gen[..],
                &[
                    "--query",
                    query,
                    "--sink",
                    &format!("file:{}", expected.path().display()),
                ],
            ]
            .concat(),
        ));
        let actual = tempfile::tempdir().unwrap();
        let from_kafka = summary(&oxflow(&[
            "nexmark",
            "--query",
            query,
            "--workers",
            "2",
            "--source",
            &format!("kafka://{b}/{topic}"),
            "--events",
            &bids,
            "--sink",
            &format!("file:{}", actual.path().display()),
        ]));
        assert_eq!(from_kafka["events"].as_u64().unwrap().to_string(), bids);
        let (want, got) = (
            common::committed_lines(expected.path()),
            common::committed_lines(actual.path()),
        );
        assert!(!want.is_empty());
        assert_eq!(got, want, "{query} from Kafka differs from the generator");
    }
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; OXFLOW_KAFKA_BROKERS=127.0.0.1:9092"]
fn kafka_bad_records_per_policy() {
    let b = brokers();
    let topic = common::unique("bad");
    let dlq = common::unique("dlq");
    create_topic(&topic, 1);
    create_topic(&dlq, 1);
    let good =
        r#"{"auction":1,"bidder":2,"price":3,"date_time":"2024-01-01T00:00:00.000Z","extra":""}"#;
    produce(&topic, &[good, "not json", r#"{"auction":"x"}"#, good]);
    let run = |options: &str, events: &str| {
        oxflow(&[
            "nexmark",
            "--query",
            "q0",
            "--workers",
            "1",
            "--source",
            &format!("kafka://{b}/{topic}?{options}"),
            "--events",
            events,
            "--sink",
            "blackhole",
        ])
    };
    let err = failed(&run("bad-records=fail", "2"));
    assert!(
        err.contains(&format!("topic {topic} partition 0 at offset 1")),
        "{err}"
    );
    assert_eq!(summary(&run("bad-records=skip", "2"))["output_rows"], 2);
    assert_eq!(
        summary(&run(&format!("bad-records=dead-letter:{dlq}"), "2"))["output_rows"],
        2
    );
    // The dead letters hold the bad values as they were.
    let raw = dump(&dlq, 2);
    assert_eq!(raw, ["not json", r#"{"auction":"x"}"#]);
    let bad = failed(&run("bad-records=sideways", "2"));
    assert!(bad.contains("bad-records=sideways"), "{bad}");
}

/// The values in a topic (read_committed), read with a plain consumer until `n` or 20 s.
fn dump(topic: &str, n: usize) -> Vec<String> {
    dump_within(topic, n, Duration::from_secs(20))
}

/// What a read_committed consumer reads of `topic`, up to `n` records or for `wait`.
fn dump_within(topic: &str, n: usize, wait: Duration) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", common::unique("dump"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let start = std::time::Instant::now();
    while out.len() < n && start.elapsed() < wait {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    out
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; OXFLOW_KAFKA_BROKERS=127.0.0.1:9092"]
fn kafka_missing_topic_and_unreachable_broker_are_clear_errors() {
    let b = brokers();
    let run = |source: &str| {
        oxflow(&[
            "nexmark",
            "--query",
            "q0",
            "--workers",
            "1",
            "--source",
            source,
            "--events",
            "1",
        ])
    };
    let missing = common::unique("missing");
    let err = failed(&run(&format!("kafka://{b}/{missing}")));
    assert!(err.contains(&format!("topic `{missing}`")), "{err}");
    let err = failed(&oxflow(&[
        "nexmark",
        "--query",
        "q0",
        "--events",
        "1000",
        "--sink",
        &format!("kafka://{b}/{missing}"),
    ]));
    assert!(err.contains(&format!("topic `{missing}`")), "{err}");
    // Nothing listens on port 1: fail at once (connect-timeout-ms=0), or retry with backoff
    // for a while (by default a minute, so that a broker blip spends no restart), then fail.
    let err = failed(&run("kafka://127.0.0.1:1/bids?connect-timeout-ms=0"));
    assert!(err.contains("127.0.0.1:1"), "{err}");
    let start = std::time::Instant::now();
    let err = failed(&run("kafka://127.0.0.1:1/bids?connect-timeout-ms=3000"));
    assert!(err.contains("gave up after"), "{err}");
    assert!(start.elapsed() >= Duration::from_secs(2), "it retried");
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; OXFLOW_KAFKA_BROKERS=127.0.0.1:9092"]
fn kafka_exactly_once_sink_commits_with_checkpoints() {
    let b = brokers();
    let topic = common::unique("eos");
    create_topic(&topic, 2);
    let chk = tempfile::tempdir().unwrap();
    // Four seconds of input at 100 ms checkpoints: several epochs commit even when the first
    // checkpoint waits a second or more for the transaction coordinator of a new broker
    // (at 400 000 events/s, CI once saw the whole run fit inside that first checkpoint).
    let report = summary(&oxflow(&[
        "nexmark",
        "--query",
        "q7",
        "--events",
        "400000",
        "--event-rate",
        "10000",
        "--rate",
        "100000",
        "--workers",
        "2",
        "--checkpoint-dir",
        &chk.path().display().to_string(),
        "--checkpoint-interval-ms",
        "100",
        "--sink",
        &format!("kafka://{b}/{topic}"),
    ]));
    assert!(report["checkpoints"].as_u64().unwrap() >= 2, "{report}");
    let rows = report["output_rows"].as_u64().unwrap() as usize;
    let mut got = dump(&topic, rows + 1);
    got.sort();
    let expected = tempfile::tempdir().unwrap();
    summary(&oxflow(&[
        "nexmark",
        "--query",
        "q7",
        "--events",
        "400000",
        "--event-rate",
        "10000",
        "--sink",
        &format!("file:{}", expected.path().display()),
    ]));
    assert_eq!(got, common::committed_lines(expected.path()));
    assert_eq!(
        std::fs::read_dir(chk.path().join("kafka-spool"))
            .unwrap()
            .count(),
        0,
        "every spooled epoch was committed and removed"
    );
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; OXFLOW_KAFKA_BROKERS=127.0.0.1:9092"]
fn kafka_exactly_once_commit_replayed_by_a_new_process_writes_each_epoch_once() {
    use oxflow::arrow::array::Int64Array;
    use oxflow::arrow::datatypes::{DataType, Field, Schema};
    use oxflow::arrow::record_batch::RecordBatch;
    use oxflow::connectors::kafka::{DeliveryGuarantee, KafkaSink, KafkaSinkConfig};
    use oxflow::runtime::sink::Sink;
    use oxflow::runtime::SubtaskInfo;
    use std::sync::Arc;

    let b = brokers();
    let topic = common::unique("replay");
    create_topic(&topic, 2);
    let spool = tempfile::tempdir().unwrap();
    let prefix = common::unique("job");
    let config = || {
        let mut c = KafkaSinkConfig::json(
            &b,
            &topic,
            DeliveryGuarantee::ExactlyOnce {
                spool_dir: spool.path().to_path_buf(),
                transactional_id_prefix: prefix.clone(),
            },
        );
        c.key_columns = vec!["a".into()];
        c
    };
    let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
    let batch = |v: &[i64]| {
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v.to_vec()))]).unwrap()
    };
    let split = SubtaskInfo {
        index: 0,
        parallelism: 1,
        max_parallelism: 128,
    };
    let sink = KafkaSink::try_new(config()).unwrap();
    let mut writer = sink.create_writer(split, schema.clone()).unwrap();
    writer.write(&batch(&[1, 2, 3])).unwrap();
    let epoch1 = writer.pre_commit().unwrap().unwrap();
    writer.write(&batch(&[4])).unwrap();
    let epoch2 = writer.pre_commit().unwrap().unwrap();
    sink.commit(1, std::slice::from_ref(&epoch1)).unwrap();
    // Checkpoint 2's commit reaches Kafka, then the process "dies" before it can tell: a new
    // process replays commit 2, and must not write epoch 2 again.
    sink.commit(2, std::slice::from_ref(&epoch2)).unwrap();
    drop((writer, sink));
    let restarted = KafkaSink::try_new(config()).unwrap();
    restarted.commit(2, std::slice::from_ref(&epoch2)).unwrap();
    restarted.roll_back_after(2).unwrap();
    assert_eq!(
        restarted.records(),
        0,
        "the marker says epoch 2 is in Kafka"
    );

    // Checkpoint 3 completes but the process dies before its commit: the replay sends it,
    // once, after an epoch it had left open in a transaction is fenced.
    let mut writer = restarted.create_writer(split, schema.clone()).unwrap();
    writer.write(&batch(&[5, 6])).unwrap();
    let epoch3 = writer.pre_commit().unwrap().unwrap();
    // Produced into its open transaction as they came, yet unseen until the commit.
    assert_eq!(dump_within(&topic, 5, Duration::from_secs(3)).len(), 4);
    drop((writer, restarted));
    let again = KafkaSink::try_new(config()).unwrap();
    again.commit(3, std::slice::from_ref(&epoch3)).unwrap();
    again.commit(3, std::slice::from_ref(&epoch3)).unwrap();
    assert_eq!(again.records(), 2);
    assert_eq!(
        std::fs::read_dir(spool.path()).unwrap().count(),
        0,
        "spool files removed"
    );

    let mut values = dump(&topic, 7);
    values.sort();
    let expect: Vec<String> = (1..=6).map(|i| format!(r#"{{"a":{i}}}"#)).collect();
    assert_eq!(values, expect);
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; OXFLOW_KAFKA_BROKERS=127.0.0.1:9092"]
fn kafka_new_partitions_and_topics_are_discovered_while_running() {
    use oxflow::arrow::array::AsArray;
    use oxflow::arrow::datatypes::Int64Type;
    use oxflow::connectors::kafka::{KafkaSource, KafkaSourceConfig, Topics};
    use oxflow::runtime::source::{Source, SourcePoll};
    use oxflow::runtime::SubtaskInfo;
    use rdkafka::admin::NewPartitions;

    let base = common::unique("disc");
    let first = format!("{base}-a");
    create_topic(&first, 1);
    let bid = |i: i64| bid_json(i, 0);
    let values: Vec<String> = (0..5).map(bid).collect();
    produce(
        &first,
        &values.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let mut config = KafkaSourceConfig::json(brokers(), "", oxflow::nexmark::bid_json_schema());
    config.topics = Topics::Pattern(format!("^{base}-.*"));
    config.discovery_interval = Some(Duration::from_millis(200));
    let source = KafkaSource::try_new(config).unwrap();
    let split = SubtaskInfo {
        index: 0,
        parallelism: 1,
        max_parallelism: 128,
    };
    let mut reader = source.restore_reader(split, &[]).unwrap();
    let mut seen = Vec::new();
    let mut read_until = |reader: &mut Box<dyn oxflow::runtime::source::SourceReader>, n: usize| {
        let start = std::time::Instant::now();
        while seen.len() < n && start.elapsed() < Duration::from_secs(30) {
            if let SourcePoll::PartitionBatch(_, b) = reader.poll_next().unwrap() {
                seen.extend(
                    b.column(0)
                        .as_primitive::<Int64Type>()
                        .values()
                        .iter()
                        .copied(),
                );
            }
        }
        seen.len()
    };
    assert_eq!(read_until(&mut reader, 5), 5);
    assert_eq!(reader.partitions(), [format!("{first}/0")]);

    // A partition added to the topic, and a new topic matching the pattern.
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for r in rt
        .block_on(admin.create_partitions([&NewPartitions::new(&first, 2)], &AdminOptions::new()))
        .unwrap()
    {
        r.unwrap();
    }
    let second = format!("{base}-b");
    create_topic(&second, 1);
    produce_records(&[(&first, 1, None, bid(10)), (&second, 0, None, bid(20))]);
    assert_eq!(read_until(&mut reader, 7), 7);
    let mut names = reader.partitions().to_vec();
    names.sort();
    assert_eq!(
        names,
        [
            format!("{first}/0"),
            format!("{first}/1"),
            format!("{second}/0")
        ]
    );
    seen.sort();
    assert_eq!(seen, [0, 1, 2, 3, 4, 10, 20]);
}

#[test]
#[ignore = "needs a Kafka broker: scripts/kafka.sh start; OXFLOW_KAFKA_BROKERS=127.0.0.1:9092"]
fn kafka_start_from_a_timestamp() {
    let b = brokers();
    let topic = common::unique("ts");
    create_topic(&topic, 1);
    let bid = |i: i64| bid_json(i, i);
    let timed: Vec<_> = (1..=3)
        .map(|i| {
            (
                topic.as_str(),
                0,
                Some(1_700_000_000_000 + i * 1000),
                bid(i),
            )
        })
        .collect();
    produce_records(&timed);
    let out = tempfile::tempdir().unwrap();
    let report = summary(&oxflow(&[
        "nexmark",
        "--query",
        "q0",
        "--workers",
        "1",
        "--source",
        &format!("kafka://{b}/{topic}?start=1700000002000"),
        "--events",
        "2",
        "--sink",
        &format!("file:{}", out.path().display()),
    ]));
    assert_eq!(report["events"], 2);
    let auctions: Vec<i64> = common::committed_lines(out.path())
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["auction"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(auctions, [2, 3], "the records at and after the timestamp");
    let err = failed(&oxflow(&[
        "nexmark",
        "--query",
        "q2",
        "--source",
        &format!("kafka://{b}/{topic}?start=yesterday"),
    ]));
    assert!(err.contains("start=yesterday"), "{err}");
}
