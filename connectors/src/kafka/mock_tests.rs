//! The Kafka source and sink against librdkafka's mock cluster (in-process, no broker).
//! The same behaviours against a real Apache Kafka broker are in the workspace's
//! tests/kafka.rs.

use super::*;
use datafusion::arrow::array::{Array, AsArray, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use oxflow_runtime::sink::{PendingCommit, Sink};
use oxflow_runtime::source::{Source, SourcePoll, SourceReader};
use oxflow_runtime::SubtaskInfo;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use std::sync::Arc;
use std::time::Duration;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, false),
        Field::new("t", DataType::Int64, false),
    ]))
}

fn produce(brokers: &str, topic: &str, records: &[(i32, String)]) {
    let records: Vec<_> = records
        .iter()
        .map(|(p, v)| (*p, None, v.as_str()))
        .collect();
    send(brokers, topic, &records);
}

/// Sends `(partition, timestamp, value)` records and waits until they are all written.
fn send(brokers: &str, topic: &str, records: &[(i32, Option<i64>, &str)]) {
    let producer: ThreadedProducer<DeliveryContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create_with_context(DeliveryContext::default())
        .unwrap();
    for &(partition, timestamp, value) in records {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(partition)
            .payload(value.as_bytes());
        if let Some(ts) = timestamp {
            record = record.timestamp(ts);
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    assert_eq!(producer.context().take_failure(), None);
}

fn split(index: usize, parallelism: usize) -> SubtaskInfo {
    SubtaskInfo {
        index,
        parallelism,
        max_parallelism: 128,
    }
}

/// Polls a reader until it finishes (or `limit` rows), checking each batch is one
/// partition's; returns the `a` values.
fn drain(reader: &mut Box<dyn SourceReader>, limit: usize) -> Vec<i64> {
    let mut out = Vec::new();
    let mut idle = 0;
    while out.len() < limit && idle < 300 {
        match reader.poll_next().unwrap() {
            SourcePoll::PartitionBatch(p, b) => {
                assert!(p < reader.partitions().len());
                out.extend(
                    b.column(0)
                        .as_primitive::<Int64Type>()
                        .values()
                        .iter()
                        .copied(),
                );
            }
            SourcePoll::Batch(_) => panic!("a Kafka reader names the partition of each batch"),
            SourcePoll::Pending(_) | SourcePoll::Unavailable(_) => idle += 1,
            SourcePoll::Finished => break,
        }
    }
    out
}

fn source(brokers: &str, topic: &str, max: Option<u64>) -> KafkaSource {
    let mut config = KafkaSourceConfig::json(brokers, topic, schema());
    config.max_records = max;
    config.batch_size = 7;
    KafkaSource::try_new(config).unwrap()
}

#[test]
fn source_reads_every_record_once_and_restores_at_another_parallelism() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("bids", 3, 1).unwrap();
    let records: Vec<(i32, String)> = (0..90)
        .map(|i: i32| (i % 3, format!(r#"{{"a":{i},"t":{}}}"#, i * 10)))
        .collect();
    produce(&brokers, "bids", &records);

    // First run: 2 splits stop after 40 records in all; keep their positions.
    let s = source(&brokers, "bids", Some(90));
    let mut readers: Vec<_> = (0..2)
        .map(|i| s.restore_reader(split(i, 2), &[]).unwrap())
        .collect();
    let mut seen = drain(&mut readers[0], 25);
    seen.extend(drain(&mut readers[1], 15));
    let positions: Vec<_> = readers.iter().map(|r| r.position().unwrap()).collect();
    let names: Vec<String> = readers
        .iter()
        .flat_map(|r| r.partitions().to_vec())
        .collect();
    assert_eq!(names.len(), 3, "every partition has one reader: {names:?}");

    // Restored at 3 splits: the rest, exactly once, and the budget ends the read at 90.
    let s = source(&brokers, "bids", Some(90));
    let mut readers: Vec<_> = (0..3)
        .map(|i| s.restore_reader(split(i, 3), &positions).unwrap())
        .collect();
    // Round robin, as the runtime runs them side by side: the budget is shared.
    let mut finished = vec![false; readers.len()];
    for _ in 0..2000 {
        for (r, done) in readers.iter_mut().zip(&mut finished) {
            match r.poll_next().unwrap() {
                SourcePoll::PartitionBatch(_, b) => seen.extend(
                    b.column(0)
                        .as_primitive::<Int64Type>()
                        .values()
                        .iter()
                        .copied(),
                ),
                SourcePoll::Finished => *done = true,
                _ => {}
            }
        }
        if finished.iter().all(|&d| d) {
            break;
        }
    }
    assert!(
        finished.iter().all(|&d| d),
        "every split ends once the budget is spent"
    );
    seen.sort();
    assert_eq!(seen, (0..90).collect::<Vec<_>>());
}

#[test]
fn bad_records_fail_with_their_offset_or_are_skipped_or_dead_lettered() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("in", 1, 1).unwrap();
    cluster.create_topic("dlq", 1, 1).unwrap();
    let values = [r#"{"a":1,"t":1}"#, "oops", r#"{"a":3,"t":3}"#];
    produce(
        &brokers,
        "in",
        &values
            .iter()
            .map(|v| (0, v.to_string()))
            .collect::<Vec<_>>(),
    );

    let fail = source(&brokers, "in", Some(3));
    let mut r = fail.restore_reader(split(0, 1), &[]).unwrap();
    let err = loop {
        match r.poll_next() {
            Err(e) => break e.to_string(),
            Ok(SourcePoll::Finished) => panic!("a bad record must fail the job"),
            Ok(_) => {}
        }
    };
    assert!(err.contains("topic in partition 0 at offset 1"), "{err}");

    let mut config = KafkaSourceConfig::json(&brokers, "in", schema());
    config.max_records = Some(2);
    config.bad_records = BadRecords::Skip;
    let skip = KafkaSource::try_new(config.clone()).unwrap();
    let mut r = skip.restore_reader(split(0, 1), &[]).unwrap();
    assert_eq!(drain(&mut r, usize::MAX), [1, 3]);
    assert_eq!(skip.bad_records().get(), 1);

    config.bad_records = BadRecords::DeadLetter("dlq".into());
    let dead = KafkaSource::try_new(config).unwrap();
    let mut r = dead.restore_reader(split(0, 1), &[]).unwrap();
    assert_eq!(drain(&mut r, usize::MAX), [1, 3]);
    assert_eq!(dead.bad_records().get(), 1);
    let mut raw = KafkaSourceConfig::json(&brokers, "dlq", schema());
    raw.format = RecordFormat::Raw;
    raw.max_records = Some(1);
    let dlq = KafkaSource::try_new(raw).unwrap();
    let mut r = dlq.restore_reader(split(0, 1), &[]).unwrap();
    let batch = loop {
        if let SourcePoll::PartitionBatch(_, b) = r.poll_next().unwrap() {
            break b;
        }
    };
    assert_eq!(batch.column(1).as_binary::<i32>().value(0), b"oops");
    let headers = batch.column(2).as_map();
    let keys = headers.keys().as_string::<i32>();
    assert!(keys.iter().any(|k| k == Some("oxflow.error")));
    assert!(keys.iter().any(|k| k == Some("oxflow.source")));
}

#[test]
fn a_missing_topic_is_named() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let s = source(&brokers, "nope", None);
    let err = s
        .restore_reader(split(0, 1), &[])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("topic `nope`"), "{err}");
}

fn committed_values(brokers: &str, topic: &str, expect: usize) -> Vec<String> {
    let mut config = KafkaSourceConfig::json(brokers, topic, schema());
    config.format = RecordFormat::Raw;
    config.max_records = Some(expect as u64 + 1);
    let s = KafkaSource::try_new(config).unwrap();
    let mut r = s.restore_reader(split(0, 1), &[]).unwrap();
    let mut out = Vec::new();
    let mut idle = 0;
    // Read until nothing more comes for a while: more than `expect` would be a duplicate.
    while idle < 50 {
        match r.poll_next().unwrap() {
            SourcePoll::PartitionBatch(_, b) => {
                let v = b.column(1).as_binary::<i32>();
                out.extend((0..v.len()).map(|i| String::from_utf8_lossy(v.value(i)).into_owned()));
                idle = 0;
            }
            _ => idle += 1,
        }
    }
    out.sort();
    out
}

fn batch(values: &[i64]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(values.to_vec())),
            Arc::new(Int64Array::from(values.to_vec())),
        ],
    )
    .unwrap()
}

/// The mock cluster takes transactions but does not keep transactional offset commits (the
/// marker), so the replay after a crash is tested against a real broker (tests/kafka.rs);
/// here, a plain exactly-once round: spool, barrier, commit.
#[test]
fn exactly_once_commits_each_epoch_at_its_checkpoint() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("out", 2, 1).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let mut config = KafkaSinkConfig::json(
        &brokers,
        "out",
        DeliveryGuarantee::ExactlyOnce {
            spool_dir: spool.path().to_path_buf(),
            transactional_id_prefix: "job".into(),
        },
    );
    config.key_columns = vec!["a".into()];
    let sink = KafkaSink::try_new(config).unwrap();
    let mut writer = sink.create_writer(split(0, 1), schema()).unwrap();
    writer.write(&batch(&[1, 2, 3])).unwrap();
    let epoch1 = writer.pre_commit().unwrap().unwrap();
    writer.write(&batch(&[4])).unwrap();
    let epoch2 = writer.pre_commit().unwrap().unwrap();
    let empty = writer.pre_commit().unwrap().unwrap();
    assert_eq!(
        sink.records(),
        0,
        "nothing is committed before its checkpoint completes"
    );
    sink.commit(1, std::slice::from_ref(&epoch1)).unwrap();
    assert_eq!(sink.records(), 3);
    sink.commit(2, &[epoch2, empty]).unwrap();
    assert_eq!(sink.records(), 4);
    assert_eq!(
        std::fs::read_dir(spool.path()).unwrap().count(),
        0,
        "spool files removed"
    );
    let values = committed_values(&brokers, "out", 4);
    let expect: Vec<String> = (1..=4).map(|i| format!(r#"{{"a":{i},"t":{i}}}"#)).collect();
    assert_eq!(values, expect);
}

#[test]
fn exactly_once_epochs_wait_in_open_transactions_and_fall_back_to_their_spool_files() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("eo", 1, 1).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let sink = KafkaSink::try_new(KafkaSinkConfig::json(
        &brokers,
        "eo",
        DeliveryGuarantee::ExactlyOnce {
            spool_dir: spool.path().to_path_buf(),
            transactional_id_prefix: "job".into(),
        },
    ))
    .unwrap();
    let id = |p: &PendingCommit| p["transactional_id"].as_str().unwrap().to_string();
    let mut writer = sink.create_writer(split(0, 1), schema()).unwrap();
    // Two epochs produced into the two slots' transactions; the third finds both waiting
    // for their checkpoint (as when a checkpoint is abandoned) and is only spooled.
    writer.write(&batch(&[1, 2])).unwrap();
    let e1 = writer.pre_commit().unwrap().unwrap();
    writer.write(&batch(&[3])).unwrap();
    let e2 = writer.pre_commit().unwrap().unwrap();
    writer.write(&batch(&[4])).unwrap();
    let e3 = writer.pre_commit().unwrap().unwrap();
    assert_eq!(
        [id(&e1), id(&e2), id(&e3)],
        ["job-0-t0", "job-0-t1", "job-0"]
    );
    // (That read_committed consumers see nothing before the commit is tested against a real
    // broker, tests/kafka.rs: the mock cluster does not hide open transactions.)
    assert_eq!(sink.records(), 0, "nothing committed before the checkpoint");
    sink.commit(1, &[e1, e2, e3]).unwrap();
    let expect: Vec<String> = (1..=4).map(|i| format!(r#"{{"a":{i},"t":{i}}}"#)).collect();
    assert_eq!(committed_values(&brokers, "eo", 4), expect);
    assert_eq!(sink.records(), 4);
    // A run of this process leaves an epoch half written in an open transaction, then the
    // job restores from checkpoint 1 in the same process: the transaction is aborted, and
    // the slot is free for the replay.
    writer.write(&batch(&[5])).unwrap();
    drop(writer);
    sink.roll_back_after(1).unwrap();
    let mut writer = sink.create_writer(split(0, 1), schema()).unwrap();
    writer.write(&batch(&[6])).unwrap();
    let e4 = writer.pre_commit().unwrap().unwrap();
    assert_eq!(id(&e4), "job-0-t0");
    sink.commit(2, &[e4]).unwrap();
    let mut expect = expect;
    expect.push(r#"{"a":6,"t":6}"#.to_string());
    assert_eq!(committed_values(&brokers, "eo", 5), expect);
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
}

#[test]
fn at_least_once_flushes_at_barriers() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("plain", 1, 1).unwrap();
    let sink = KafkaSink::try_new(KafkaSinkConfig::json(
        &brokers,
        "plain",
        DeliveryGuarantee::AtLeastOnce,
    ))
    .unwrap();
    let mut writer = sink.create_writer(split(0, 1), schema()).unwrap();
    writer.write(&batch(&[7, 8])).unwrap();
    assert!(writer.pre_commit().unwrap().is_none());
    assert_eq!(committed_values(&brokers, "plain", 2).len(), 2);
    let err = sink.create_writer(split(0, 1), Arc::new(Schema::empty()));
    assert!(err.is_ok(), "a JSON sink takes any schema");
    let missing = KafkaSink::try_new(KafkaSinkConfig::json(
        &brokers,
        "nope",
        DeliveryGuarantee::None,
    ))
    .unwrap();
    let err = missing
        .create_writer(split(0, 1), schema())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("topic `nope`"), "{err}");
}

/// Producers report deliveries that fail only (`delivery.report.only.error`): a record the
/// broker refuses still fails the flush at the barrier, saying why.
#[test]
fn a_refused_record_fails_the_barrier() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("refusing", 1, 1).unwrap();
    let sink = KafkaSink::try_new(KafkaSinkConfig::json(
        &brokers,
        "refusing",
        DeliveryGuarantee::AtLeastOnce,
    ))
    .unwrap();
    let mut writer = sink.create_writer(split(0, 1), schema()).unwrap();
    writer.write(&batch(&[1, 2])).unwrap();
    assert!(writer.pre_commit().unwrap().is_none());
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 8],
    );
    writer.write(&batch(&[3])).unwrap();
    let err = writer.pre_commit().unwrap_err().to_string();
    assert!(err.contains("delivery to refusing/0 failed"), "{err}");
}

fn produce_at(brokers: &str, topic: &str, records: &[(i64, &str)]) {
    let records: Vec<_> = records.iter().map(|&(ts, v)| (0, Some(ts), v)).collect();
    send(brokers, topic, &records);
}

#[test]
fn start_from_latest_and_kafka_time_as_a_column() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("timed", 1, 1).unwrap();
    let rec = |a: i64| format!(r#"{{"a":{a},"t":0}}"#);
    let (r1, r2, r3) = (rec(1), rec(2), rec(3));
    produce_at(
        &brokers,
        "timed",
        &[(1_000, &r1), (2_000, &r2), (3_000, &r3)],
    );

    // (Start from a timestamp is tested against a real broker: the mock cluster does not
    // look offsets up by time.)
    let mut config = KafkaSourceConfig::json(&brokers, "timed", schema());
    config.max_records = Some(3);
    config.timestamp_column = Some("kafka_time".into());
    let timed = KafkaSource::try_new(config.clone()).unwrap();
    assert_eq!(timed.schema().field(2).name(), "kafka_time");
    let mut r = timed.restore_reader(split(0, 1), &[]).unwrap();
    let mut rows = Vec::new();
    for _ in 0..500 {
        if let SourcePoll::PartitionBatch(_, b) = r.poll_next().unwrap() {
            let a = b.column(0).as_primitive::<Int64Type>();
            let t = b
                .column(2)
                .as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>();
            rows.extend((0..b.num_rows()).map(|i| (a.value(i), t.value(i))));
        }
        if rows.len() == 3 {
            break;
        }
    }
    assert_eq!(rows, [(1, 1_000), (2, 2_000), (3, 3_000)]);

    config.start = StartFrom::Latest;
    config.timestamp_column = None;
    config.max_records = Some(1);
    let latest = KafkaSource::try_new(config).unwrap();
    let mut r = latest.restore_reader(split(0, 1), &[]).unwrap();
    let r4 = rec(4);
    produce_at(&brokers, "timed", &[(4_000, &r4)]);
    assert_eq!(
        drain(&mut r, usize::MAX),
        [4],
        "only what came after the start"
    );
}

#[test]
fn json_schema_is_inferred_from_the_topic() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("infer", 2, 1).unwrap();
    produce(
        &brokers,
        "infer",
        &[
            (0, r#"{"a":1,"s":"x"}"#.to_string()),
            (1, r#"{"a":2,"f":1.5}"#.to_string()),
        ],
    );
    let connection = KafkaConnection::new(&brokers);
    let schema = KafkaSource::infer_json_schema(&connection, &["infer".into()], 100).unwrap();
    let mut fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            ("a".to_string(), DataType::Int64),
            ("f".to_string(), DataType::Float64),
            ("s".to_string(), DataType::Utf8)
        ]
    );
    produce(&brokers, "infer", &[(0, "[1]".to_string())]);
    let err = KafkaSource::infer_json_schema(&connection, &["infer".into()], 100)
        .unwrap_err()
        .to_string();
    assert!(err.contains("topic infer partition 0 at offset 1"), "{err}");
}

#[test]
fn raw_output_writes_value_and_key_columns_as_they_are() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("raw", 3, 1).unwrap();
    let mut config = KafkaSinkConfig::json(&brokers, "raw", DeliveryGuarantee::AtLeastOnce);
    config.format = OutputFormat::Raw;
    let sink = KafkaSink::try_new(config).unwrap();
    let kv = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, true),
        Field::new("value", DataType::Binary, true),
    ]));
    let batch = RecordBatch::try_new(
        kv.clone(),
        vec![
            Arc::new(datafusion::arrow::array::StringArray::from(vec![
                "k1", "k1", "k2",
            ])),
            Arc::new(datafusion::arrow::array::BinaryArray::from_vec(vec![
                b"v1", b"v2", b"v3",
            ])),
        ],
    )
    .unwrap();
    let mut writer = sink.create_writer(split(0, 1), kv).unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    let mut raw = KafkaSourceConfig::json(&brokers, "raw", schema());
    raw.format = RecordFormat::Raw;
    raw.max_records = Some(3);
    let source = KafkaSource::try_new(raw).unwrap();
    let mut r = source.restore_reader(split(0, 1), &[]).unwrap();
    let mut got = Vec::new();
    for _ in 0..500 {
        if got.len() == 3 {
            break;
        }
        if let SourcePoll::PartitionBatch(_, b) = r.poll_next().unwrap() {
            let (k, v, p) = (
                b.column(0).as_binary::<i32>(),
                b.column(1).as_binary::<i32>(),
                b.column(4)
                    .as_primitive::<datafusion::arrow::datatypes::Int32Type>(),
            );
            got.extend(
                (0..b.num_rows()).map(|i| (k.value(i).to_vec(), v.value(i).to_vec(), p.value(i))),
            );
        }
    }
    got.sort();
    assert_eq!(
        got.iter().map(|g| g.1.clone()).collect::<Vec<_>>(),
        [b"v1".to_vec(), b"v2".to_vec(), b"v3".to_vec()]
    );
    assert_eq!(got[0].0, b"k1");
    assert_eq!(got[0].2, got[1].2, "one key, one partition");
    let bad = sink
        .create_writer(split(0, 1), schema())
        .err()
        .unwrap()
        .to_string();
    assert!(bad.contains("column `value`"), "{bad}");
}

#[test]
fn json_tombstones_are_skipped_and_counted_not_bad_records() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("table", 1, 1).unwrap();
    let producer: ThreadedProducer<DeliveryContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create_with_context(DeliveryContext::default())
        .unwrap();
    for value in [
        Some(r#"{"a":1,"t":1}"#),
        None,
        Some(r#"{"a":2,"t":2}"#),
        None,
    ] {
        let mut record = BaseRecord::<[u8], [u8]>::to("table").key(b"k");
        if let Some(v) = value {
            record = record.payload(v.as_bytes());
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    // The default policy fails on a bad record: a tombstone must not be one.
    let s = source(&brokers, "table", Some(2));
    let mut reader = s.create_reader(split(0, 1)).unwrap();
    assert_eq!(drain(&mut reader, 2), vec![1, 2]);
    assert_eq!(s.bad_records().get(), 0);
    assert!(s.tombstones().get() >= 1, "{}", s.tombstones().get());
}

#[test]
fn brokers_that_go_away_make_the_split_unavailable_not_idle() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("bids", 1, 1).unwrap();
    produce(&brokers, "bids", &[(0, r#"{"a":1,"t":1}"#.to_string())]);
    let s = source(&brokers, "bids", None);
    let mut reader = s.create_reader(split(0, 1)).unwrap();
    assert_eq!(drain(&mut reader, 1), vec![1]);
    cluster.broker_down(1).unwrap();
    let mut unavailable = false;
    for _ in 0..300 {
        match reader.poll_next().unwrap() {
            SourcePoll::Unavailable(_) => {
                unavailable = true;
                break;
            }
            SourcePoll::Pending(d) => std::thread::sleep(d),
            other => panic!("no records while the broker is down, got {other:?}"),
        }
    }
    assert!(unavailable, "the reader never said the brokers were away");
    cluster.broker_up(1).unwrap();
    produce(&brokers, "bids", &[(0, r#"{"a":2,"t":2}"#.to_string())]);
    assert_eq!(drain(&mut reader, 1), vec![2]);
}
