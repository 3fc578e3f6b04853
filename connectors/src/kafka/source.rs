//! The Kafka source: partitions spread over splits by a fixed rule, offsets in checkpoints,
//! per-partition watermarks (each partition's records go to the runtime as their own batches).

use super::{flush_delivered, kafka_error, DeliveryContext, KafkaConnection};
use crate::decode::{RecordDecoder, TextFormat};
use crate::error::{ConnectorError, Result};
use crate::split::Throttle;
use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, Int32Builder, Int64Builder, MapBuilder, StringBuilder,
    TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use oxflow_runtime::checkpoint::decode_stored;
use oxflow_runtime::clock::{Clock, SystemClock};
use oxflow_runtime::metrics::Counter;
use oxflow_runtime::source::{Source, SourcePoll, SourceReader};
use oxflow_runtime::SubtaskInfo;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which topics a source reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topics {
    /// These topics.
    Names(Vec<String>),
    /// Every topic whose name matches this regular expression (checked again at each
    /// partition discovery, so new topics are picked up).
    Pattern(String),
}

/// Where a job that does not restore from a checkpoint starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The oldest record still in the partition.
    #[default]
    Earliest,
    /// After the newest record at start.
    Latest,
    /// The first record with a timestamp at or after this (milliseconds since the epoch).
    Timestamp(i64),
}

/// How record values become columns.
#[derive(Debug, Clone)]
pub enum RecordFormat {
    /// Each value is one JSON object with these columns (see [`KafkaSource::infer_json_schema`]).
    Json(SchemaRef),
    /// The record as it is: `key`, `value` (binary), `headers` (map of string to binary),
    /// `topic`, `partition`, `offset` and `timestamp` columns.
    Raw,
}

/// What to do with a record whose value does not decode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BadRecords {
    /// Fail the job, naming topic, partition and offset.
    #[default]
    Fail,
    /// Count it and go on.
    Skip,
    /// Copy it (key, value, headers, plus `oxflow.error` and `oxflow.source` headers) to this
    /// topic, count it and go on.
    DeadLetter(String),
}

/// Settings of a [`KafkaSource`].
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    /// Brokers and client properties.
    pub connection: KafkaConnection,
    /// The topics.
    pub topics: Topics,
    /// Value format.
    pub format: RecordFormat,
    /// Where to start without a checkpoint. Partitions discovered later (or not in the
    /// restored checkpoint) start at their earliest record, as in Flink.
    pub start: StartFrom,
    /// Bad-record policy.
    pub bad_records: BadRecords,
    /// With JSON: also put the Kafka record timestamp into a `Timestamp(ms)` column of this
    /// name (to use as event time).
    pub timestamp_column: Option<String>,
    /// End after this many records in all (over every split), flushing every window as at
    /// the end of a bounded source. `None`: unbounded.
    pub max_records: Option<u64>,
    /// How often to look for new partitions (and topics, with a pattern). `None`: never.
    pub discovery_interval: Option<Duration>,
    /// Most records per batch.
    pub batch_size: usize,
    /// Throttle: at most this many records per second over all splits (for demos and tests
    /// that must run long enough to be interrupted). `None`: as fast as Kafka serves.
    pub max_rate: Option<f64>,
}

impl KafkaSourceConfig {
    /// Reads `topic` from `brokers`, JSON with `schema`, from the earliest record.
    pub fn json(brokers: impl Into<String>, topic: impl Into<String>, schema: SchemaRef) -> Self {
        KafkaSourceConfig {
            connection: KafkaConnection::new(brokers),
            topics: Topics::Names(vec![topic.into()]),
            format: RecordFormat::Json(schema),
            start: StartFrom::Earliest,
            bad_records: BadRecords::Fail,
            timestamp_column: None,
            max_records: None,
            discovery_interval: Some(Duration::from_secs(10)),
            batch_size: 8192,
            max_rate: None,
        }
    }
}

/// Reads Kafka topics. Every split reads the partitions the rule
/// `(crc32(topic) + partition) % parallelism == split` gives it (so partitions of a topic are
/// spread evenly and the same way at every restore), with a consumer of its own that assigns
/// them directly: no consumer-group rebalancing, and offsets live in checkpoints. (With a
/// `group.id` property, offsets are also committed to Kafka after they are read, for
/// monitoring only.)
#[derive(Clone)]
pub struct KafkaSource {
    config: KafkaSourceConfig,
    schema: SchemaRef,
    bad_records: Counter,
    /// Records with a null value (tombstones) skipped by the JSON format.
    tombstones: Counter,
    /// Records still to read when bounded, shared by the splits of one run.
    budget: Arc<Mutex<Option<Arc<AtomicU64>>>>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("topics", &self.config.topics)
            .finish_non_exhaustive()
    }
}

/// The schema of [`RecordFormat::Raw`].
pub fn raw_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new(
            "headers",
            DataType::Map(
                Arc::new(Field::new(
                    "entries",
                    DataType::Struct(
                        vec![
                            Field::new("keys", DataType::Utf8, false),
                            Field::new("values", DataType::Binary, true),
                        ]
                        .into(),
                    ),
                    false,
                )),
                false,
            ),
            true,
        ),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
    ]))
}

impl KafkaSource {
    /// A source with `config`; checks the settings, not the brokers (a reader does that).
    pub fn try_new(config: KafkaSourceConfig) -> Result<Self> {
        let bad = |reason: String| ConnectorError::Config {
            connector: "kafka source",
            reason,
        };
        match &config.topics {
            Topics::Names(names) if names.is_empty() || names.iter().any(|n| n.is_empty()) => {
                return Err(bad(format!(
                    "topics {names:?}: give at least one, none empty"
                )))
            }
            Topics::Pattern(p) => {
                regex::Regex::new(p).map_err(|e| bad(format!("topic pattern `{p}`: {e}")))?;
            }
            _ => {}
        }
        if config.max_records == Some(0) {
            return Err(bad("max_records must be at least 1".into()));
        }
        let mut schema = match &config.format {
            RecordFormat::Json(schema) => schema.as_ref().clone(),
            RecordFormat::Raw => raw_schema().as_ref().clone(),
        };
        if let Some(name) = &config.timestamp_column {
            if !matches!(config.format, RecordFormat::Json(_)) {
                return Err(bad(
                    "timestamp_column is for JSON; raw records have `timestamp`".into(),
                ));
            }
            if schema.field_with_name(name).is_ok() {
                return Err(bad(format!(
                    "timestamp column `{name}` is already in the schema"
                )));
            }
            let mut fields: Vec<Field> =
                schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new(
                name,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            ));
            schema = Schema::new(fields);
        }
        Ok(KafkaSource {
            schema: Arc::new(schema),
            config,
            bad_records: Counter::default(),
            tombstones: Counter::default(),
            budget: Arc::default(),
        })
    }

    /// Infers the schema of JSON values from up to `sample` records of `topics` (from the
    /// earliest offset of every partition), as the file source does from a file's first
    /// lines. A value that is not a JSON object fails with its topic, partition and offset.
    pub fn infer_json_schema(
        connection: &KafkaConnection,
        topics: &[String],
        sample: usize,
    ) -> Result<SchemaRef> {
        let consumer: BaseConsumer = connection
            .client_config()
            .set("group.id", "oxflow-schema-inference")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(|e| kafka_error("creating a consumer", e))?;
        let partitions = connection.partitions_of(&consumer, topics)?;
        let mut assignment = TopicPartitionList::new();
        let mut remaining = 0;
        for (topic, partition) in &partitions {
            let (low, high) = connection.with_retry("fetching offsets", || {
                consumer.fetch_watermarks(topic, *partition, Duration::from_secs(10))
            })?;
            remaining += (high - low).max(0) as usize;
            assignment
                .add_partition_offset(topic, *partition, Offset::Offset(low))
                .map_err(|e| kafka_error("assigning partitions", e))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| kafka_error("assigning partitions", e))?;
        let wanted = remaining.min(sample);
        let mut values: Vec<Vec<u8>> = Vec::with_capacity(wanted);
        let clock = SystemClock::new();
        while values.len() < wanted && clock.elapsed() < Duration::from_secs(30) {
            let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = polled.map_err(|e| kafka_error("reading records to infer a schema", e))?;
            let value = m.payload().unwrap_or_default();
            if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(value).is_err()
            {
                return Err(ConnectorError::BadKafkaRecord {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    reason: "not a JSON object, so no schema can be inferred from it".into(),
                });
            }
            values.push(value.to_vec());
        }
        if values.is_empty() {
            return Err(ConnectorError::Config {
                connector: "kafka source",
                reason: format!("topics {topics:?} hold no record to infer a schema from"),
            });
        }
        let joined = values.join(&b'\n');
        let (schema, _) =
            datafusion::arrow::json::reader::infer_json_schema(std::io::Cursor::new(joined), None)?;
        Ok(Arc::new(schema))
    }

    /// Records that did not decode (skipped or sent to the dead-letter topic).
    pub fn bad_records(&self) -> Counter {
        self.bad_records.clone()
    }

    /// Records with a null value (tombstones: a compacted topic's deletes) that the JSON
    /// format skipped. They are not bad records: a JSON source has no row to make of them.
    pub fn tombstones(&self) -> Counter {
        self.tombstones.clone()
    }

    fn consumer(&self) -> Result<BaseConsumer> {
        let mut config = self.config.connection.client_config();
        let commits = config.get("group.id").is_some();
        if !commits {
            // librdkafka wants a group id even for assigned partitions; nothing is committed.
            config.set("group.id", "oxflow-unused");
        }
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed");
        config
            .create()
            .map_err(|e| kafka_error("creating a consumer", e))
    }

    /// The topics to read now (a pattern is matched against the brokers' topic list).
    fn topic_names(&self, consumer: &BaseConsumer) -> Result<Vec<String>> {
        match &self.config.topics {
            Topics::Names(names) => Ok(names.clone()),
            Topics::Pattern(p) => {
                let re = regex::Regex::new(p).expect("checked in try_new");
                let metadata = self.config.connection.with_retry("listing topics", || {
                    consumer.fetch_metadata(None, Duration::from_secs(10))
                })?;
                Ok(metadata
                    .topics()
                    .iter()
                    .map(|t| t.name().to_string())
                    .filter(|n| re.is_match(n) && !n.starts_with("__"))
                    .collect())
            }
        }
    }
}

/// Which split reads a partition: the same at every run and every restore.
fn owner(topic: &str, partition: i32, parallelism: usize) -> usize {
    (crc32fast::hash(topic.as_bytes()) as usize + partition as usize) % parallelism
}

fn partition_name(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// A split's place in its partitions, in a checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct KafkaPosition {
    /// The next offset to read, by `topic/partition`.
    offsets: BTreeMap<String, i64>,
    /// Records delivered so far (counting those of the runs restored from, once).
    delivered: u64,
}

impl Source for KafkaSource {
    fn name(&self) -> String {
        match &self.config.topics {
            Topics::Names(n) => format!("kafka:{}", n.join(",")),
            Topics::Pattern(p) => format!("kafka:{p}"),
        }
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn restore_reader(
        &self,
        split: SubtaskInfo,
        positions: &[serde_json::Value],
    ) -> oxflow_runtime::Result<Box<dyn SourceReader>> {
        let mut restored = KafkaPosition::default();
        for p in positions {
            let p: KafkaPosition = decode_stored(p, "a Kafka source position")?;
            restored.offsets.extend(p.offsets);
            restored.delivered += p.delivered;
        }
        // Readers of one run are created in split order: the first sets the shared budget.
        let budget = self.config.max_records.map(|max| {
            let mut shared = self.budget.lock().expect("not poisoned");
            if split.index == 0 || shared.is_none() {
                *shared = Some(Arc::new(AtomicU64::new(
                    max.saturating_sub(restored.delivered),
                )));
            }
            shared.clone().expect("set above")
        });
        let consumer = self.consumer()?;
        let dead_letter = match &self.config.bad_records {
            BadRecords::DeadLetter(topic) => {
                let producer: ThreadedProducer<DeliveryContext> = self
                    .config
                    .connection
                    .client_config()
                    .set("enable.idempotence", "true")
                    .create_with_context(DeliveryContext::default())
                    .map_err(|e| kafka_error("creating the dead-letter producer", e))?;
                // Fail now, not at the first bad record, if the topic is missing.
                self.config
                    .connection
                    .partitions_of(&consumer, std::slice::from_ref(topic))?;
                Some((topic.clone(), producer))
            }
            _ => None,
        };
        let mut reader = KafkaReader {
            source: self.clone(),
            split,
            consumer,
            dead_letter,
            partitions: Vec::new(),
            names: Vec::new(),
            next: Vec::new(),
            restored: restored.offsets,
            fresh: positions.is_empty(),
            delivered: if split.index == 0 {
                restored.delivered
            } else {
                0
            },
            budget,
            ready: VecDeque::new(),
            last_discovery: Duration::ZERO,
            last_warning: None,
            clock: SystemClock::new(),
            throttle: Throttle::new(self.config.max_rate, split.parallelism),
            outage: None,
            decoder: match &self.config.format {
                RecordFormat::Json(schema) => {
                    Some(RecordDecoder::new(TextFormat::Json, schema.clone()))
                }
                RecordFormat::Raw => None,
            },
        };
        reader.discover()?;
        Ok(Box::new(reader))
    }
}

/// A decoded batch waiting to be handed over, with where its partition is after it.
struct Ready {
    partition: usize,
    batch: RecordBatch,
    /// The offset of each row (to cut the batch when the record budget runs out).
    offsets: Vec<i64>,
    /// The partition's next offset once this batch is delivered whole.
    next: i64,
}

struct KafkaReader {
    source: KafkaSource,
    split: SubtaskInfo,
    consumer: BaseConsumer,
    dead_letter: Option<(String, ThreadedProducer<DeliveryContext>)>,
    /// This split's partitions, in the order they were added.
    partitions: Vec<(String, i32)>,
    /// `topic/partition` of each, for the runtime's per-partition watermarks.
    names: Vec<String>,
    /// The next offset to deliver, per partition.
    next: Vec<i64>,
    /// Offsets from the checkpoint restored from.
    restored: BTreeMap<String, i64>,
    /// Not restored: partitions found at the first discovery start where the config says.
    fresh: bool,
    delivered: u64,
    budget: Option<Arc<AtomicU64>>,
    ready: VecDeque<Ready>,
    /// Reader time (from `clock`) of the last partition discovery and warning.
    last_discovery: Duration,
    last_warning: Option<Duration>,
    decoder: Option<RecordDecoder>,
    /// Time since this reader started, for discovery and warnings.
    clock: SystemClock,
    /// The source's rate limit, this split's share.
    throttle: Throttle,
    /// While the brokers are unreachable: when (reader time) that was last found to be so.
    /// An outage is reported as such, never as an idle split.
    outage: Option<Duration>,
}

impl KafkaReader {
    /// The index of a partition this split reads, trying `hint` first: records come in runs
    /// from one partition, and this finds them without allocating a name per record.
    fn slot(&self, topic: &str, partition: i32, hint: usize) -> Option<usize> {
        let is = |(t, p): &(String, i32)| *p == partition && t == topic;
        if self.partitions.get(hint).is_some_and(is) {
            return Some(hint);
        }
        self.partitions.iter().position(is)
    }

    /// Finds partitions this split owns that it does not read yet, and starts reading them.
    fn discover(&mut self) -> Result<()> {
        self.last_discovery = self.clock.elapsed();
        let connection = &self.source.config.connection;
        let topics = self.source.topic_names(&self.consumer)?;
        let all = connection.partitions_of(&self.consumer, &topics)?;
        let first = self.partitions.is_empty() && self.fresh;
        let mut added = TopicPartitionList::new();
        for (topic, partition) in all {
            if owner(&topic, partition, self.split.parallelism) != self.split.index
                || self.slot(&topic, partition, 0).is_some()
            {
                continue;
            }
            let name = partition_name(&topic, partition);
            let offset = match self.restored.get(&name) {
                Some(&o) => o,
                None => self.start_offset(&topic, partition, first)?,
            };
            added
                .add_partition_offset(&topic, partition, Offset::Offset(offset))
                .map_err(|e| kafka_error(format!("assigning {name}"), e))?;
            tracing::info!(split = self.split.index, partition = %name, offset, "reading partition");
            self.partitions.push((topic, partition));
            self.names.push(name);
            self.next.push(offset);
        }
        if added.count() > 0 {
            self.consumer
                .incremental_assign(&added)
                .map_err(|e| kafka_error("assigning partitions", e))?;
        }
        Ok(())
    }

    /// Where a partition not in a checkpoint starts: per the config at the job's first
    /// start, else (discovered later) at its earliest record.
    fn start_offset(&self, topic: &str, partition: i32, first: bool) -> Result<i64> {
        let connection = &self.source.config.connection;
        let timeout = Duration::from_secs(10);
        let (low, high) = connection.with_retry("fetching offsets", || {
            self.consumer.fetch_watermarks(topic, partition, timeout)
        })?;
        Ok(match (first, self.source.config.start) {
            (false, _) | (true, StartFrom::Earliest) => low,
            (true, StartFrom::Latest) => high,
            (true, StartFrom::Timestamp(ts)) => {
                let mut query = TopicPartitionList::new();
                query
                    .add_partition_offset(topic, partition, Offset::Offset(ts))
                    .map_err(|e| kafka_error("offsets for a timestamp", e))?;
                let found = connection.with_retry("looking up offsets by timestamp", || {
                    self.consumer.offsets_for_times(query.clone(), timeout)
                })?;
                match found.find_partition(topic, partition).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    // No record at or after the timestamp: start after the newest.
                    _ => high,
                }
            }
        })
    }

    /// Polls up to a batch of records and decodes them, a batch per partition.
    fn fetch(&mut self) -> Result<()> {
        let batch_size = self.source.config.batch_size;
        let mut raw: HashMap<usize, RawRecords> = HashMap::new();
        let mut count = 0;
        let mut wait = Duration::from_millis(100);
        let mut last = 0;
        // Keys and headers are kept only where they are used.
        let details = matches!(self.source.config.format, RecordFormat::Raw)
            || matches!(self.source.config.bad_records, BadRecords::DeadLetter(_));
        while count < batch_size {
            let Some(polled) = self.consumer.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            let message = match polled {
                Ok(m) => {
                    self.outage = None;
                    m
                }
                Err(e) => {
                    let now = self.clock.elapsed();
                    if broker_unreachable(&e) && self.outage.is_none() {
                        self.outage = Some(now);
                    }
                    // librdkafka retries broker failures itself; say so, at most every 10 s.
                    if self
                        .last_warning
                        .is_none_or(|t| now.saturating_sub(t) > Duration::from_secs(10))
                    {
                        tracing::warn!(split = self.split.index, error = %e, "kafka consumer");
                        self.last_warning = Some(now);
                    }
                    break;
                }
            };
            // Records come in runs from one partition: try the last one first (no allocation
            // per record, unlike a lookup by owned name).
            let Some(i) = self.slot(message.topic(), message.partition(), last) else {
                continue;
            };
            last = i;
            if message.offset() < self.next[i] {
                continue;
            }
            raw.entry(i).or_default().push(&message, details);
            count += 1;
        }
        let mut partitions: Vec<_> = raw.into_iter().collect();
        partitions.sort_by_key(|(i, _)| *i);
        for (i, records) in partitions {
            let next = records.offsets.last().map_or(self.next[i], |o| o + 1);
            let (batch, offsets) = self.decode(i, records)?;
            self.ready.push_back(Ready {
                partition: i,
                batch,
                offsets,
                next,
            });
        }
        Ok(())
    }

    fn decode(&mut self, i: usize, records: RawRecords) -> Result<(RecordBatch, Vec<i64>)> {
        let Some(decoder) = &self.decoder else {
            return Ok((
                records.raw_batch(&self.source.schema, &self.partitions[i])?,
                records.offsets,
            ));
        };
        let (topic, partition) = &self.partitions[i];
        let policy = &self.source.config.bad_records;
        let counter = &self.source.bad_records;
        let tombstones = &self.source.tombstones;
        let dead_letter = &self.dead_letter;
        let decoded = decoder.decode(&records.values, &records.spans, |r, reason| {
            let offset = records.offsets[r];
            if records.nulls[r] {
                tombstones.add(1);
                return Ok(());
            }
            match policy {
                BadRecords::Fail => {
                    return Err(ConnectorError::BadKafkaRecord {
                        topic: topic.clone(),
                        partition: *partition,
                        offset,
                        reason,
                    })
                }
                BadRecords::Skip => {}
                BadRecords::DeadLetter(_) => {
                    let (to, producer) = dead_letter.as_ref().expect("made with the policy");
                    let (start, end) = records.spans[r];
                    let value = &records.values[start..end - 1];
                    let mut headers = records.headers[r].clone().unwrap_or_default();
                    headers = headers
                        .insert(rdkafka::message::Header {
                            key: "oxflow.error",
                            value: Some(reason.as_bytes()),
                        })
                        .insert(rdkafka::message::Header {
                            key: "oxflow.source",
                            value: Some(format!("{topic}/{partition}@{offset}").as_bytes()),
                        });
                    let mut record = BaseRecord::to(to).payload(value).headers(headers);
                    if let Some(key) = &records.keys[r] {
                        record = record.key(key.as_slice());
                    }
                    send_blocking(producer, record)?;
                }
            }
            tracing::warn!(%topic, partition, offset, error = %reason, "bad record");
            counter.add(1);
            Ok(())
        })?;
        if let Some((to, producer)) = &self.dead_letter {
            if decoded.kept.len() < records.offsets.len() {
                // The bad records must be in the dead-letter topic before their offsets can
                // be part of a checkpoint.
                let what = format!("dead letters to {to}");
                flush_delivered(producer, &what, Duration::from_secs(30))?;
            }
        }
        let offsets: Vec<i64> = decoded.kept.iter().map(|&r| records.offsets[r]).collect();
        let mut batch = decoded.batch;
        if self.source.config.timestamp_column.is_some() {
            let mut ts = TimestampMillisecondBuilder::with_capacity(offsets.len());
            for &r in &decoded.kept {
                ts.append_option(records.timestamps[r]);
            }
            let mut columns = batch.columns().to_vec();
            columns.push(Arc::new(ts.finish()));
            batch = RecordBatch::try_new(self.source.schema.clone(), columns)?;
        }
        Ok((batch, offsets))
    }

    /// Takes up to `rows` from the shared budget; how many were granted.
    fn claim(&self, rows: usize) -> usize {
        let Some(budget) = &self.budget else {
            return rows;
        };
        let mut left = budget.load(Ordering::SeqCst);
        loop {
            let take = left.min(rows as u64);
            match budget.compare_exchange(left, left - take, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return take as usize,
                Err(now) => left = now,
            }
        }
    }

    fn commit_for_monitoring(&self, partition: usize) {
        if self
            .source
            .config
            .connection
            .properties
            .contains_key("group.id")
        {
            let (topic, p) = &self.partitions[partition];
            let mut list = TopicPartitionList::new();
            if list
                .add_partition_offset(topic, *p, Offset::Offset(self.next[partition]))
                .is_ok()
            {
                let _ = self
                    .consumer
                    .commit(&list, rdkafka::consumer::CommitMode::Async);
            }
        }
    }
}

/// Records of one partition from one poll: values joined by newlines for the decoder, and
/// what the raw format and dead letters need.
#[derive(Default)]
struct RawRecords {
    values: Vec<u8>,
    spans: Vec<(usize, usize)>,
    offsets: Vec<i64>,
    timestamps: Vec<Option<i64>>,
    keys: Vec<Option<Vec<u8>>>,
    headers: Vec<Option<rdkafka::message::OwnedHeaders>>,
    nulls: Vec<bool>,
}

impl RawRecords {
    fn push(&mut self, m: &rdkafka::message::BorrowedMessage<'_>, details: bool) {
        let start = self.values.len();
        self.values
            .extend_from_slice(m.payload().unwrap_or_default());
        self.values.push(b'\n');
        self.spans.push((start, self.values.len()));
        self.nulls.push(m.payload().is_none());
        self.offsets.push(m.offset());
        self.timestamps.push(m.timestamp().to_millis());
        if details {
            self.keys.push(m.key().map(<[u8]>::to_vec));
            self.headers.push(m.headers().map(|h| h.detach()));
        } else {
            self.keys.push(None);
            self.headers.push(None);
        }
    }

    fn raw_batch(
        &self,
        schema: &SchemaRef,
        (topic, partition): &(String, i32),
    ) -> Result<RecordBatch> {
        let n = self.offsets.len();
        let mut keys = BinaryBuilder::new();
        let mut values = BinaryBuilder::new();
        let mut headers = MapBuilder::new(None, StringBuilder::new(), BinaryBuilder::new());
        for r in 0..n {
            keys.append_option(self.keys[r].as_deref());
            let (start, end) = self.spans[r];
            if self.nulls[r] {
                values.append_null();
            } else {
                values.append_value(&self.values[start..end - 1]);
            }
            match &self.headers[r] {
                None => headers.append(false)?,
                Some(h) => {
                    for header in h.iter() {
                        headers.keys().append_value(header.key);
                        headers.values().append_option(header.value);
                    }
                    headers.append(true)?;
                }
            }
        }
        let mut topics = StringBuilder::new();
        let mut partitions = Int32Builder::new();
        let mut offsets = Int64Builder::new();
        for _ in 0..n {
            topics.append_value(topic);
            partitions.append_value(*partition);
        }
        offsets.append_slice(&self.offsets);
        let mut timestamps = TimestampMillisecondBuilder::new();
        for t in &self.timestamps {
            timestamps.append_option(*t);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(keys.finish()),
            Arc::new(values.finish()),
            Arc::new(headers.finish()),
            Arc::new(topics.finish()),
            Arc::new(partitions.finish()),
            Arc::new(offsets.finish()),
            Arc::new(timestamps.finish()),
        ];
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

/// Sends a record, waiting while librdkafka's queue is full.
pub(crate) fn send_blocking<C>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> Result<()>
where
    C: rdkafka::producer::ProducerContext<DeliveryOpaque = ()> + 'static,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, back)) => return Err(kafka_error(format!("producing to {}", back.topic), e)),
        }
    }
}

/// Whether a consumer error says the brokers cannot be reached (as opposed to a bad record
/// or a setting): the split is then unavailable, not idle.
fn broker_unreachable(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        e.rdkafka_error_code(),
        Some(
            Code::AllBrokersDown
                | Code::BrokerTransportFailure
                | Code::Resolve
                | Code::BrokerNotAvailable
                | Code::NetworkException
                | Code::LeaderNotAvailable
                | Code::NotLeaderForPartition
        )
    )
}

impl KafkaReader {
    /// Whether the brokers are still away: after an error saying so, and until a record
    /// arrives or (checked at most every second) a metadata request succeeds.
    fn brokers_away(&mut self) -> bool {
        let Some(checked) = self.outage else {
            return false;
        };
        let now = self.clock.elapsed();
        if now.saturating_sub(checked) < Duration::from_secs(1) {
            return true;
        }
        let reachable = self
            .consumer
            .fetch_metadata(None, Duration::from_millis(500))
            .is_ok();
        self.outage = if reachable {
            tracing::info!(split = self.split.index, "kafka brokers reachable again");
            None
        } else {
            Some(now)
        };
        !reachable
    }
}

impl SourceReader for KafkaReader {
    fn poll_next(&mut self) -> oxflow_runtime::Result<SourcePoll> {
        if self
            .budget
            .as_ref()
            .is_some_and(|b| b.load(Ordering::SeqCst) == 0)
        {
            return Ok(SourcePoll::Finished);
        }
        if self
            .source
            .config
            .discovery_interval
            .is_some_and(|d| self.clock.elapsed().saturating_sub(self.last_discovery) >= d)
        {
            // The partitions already assigned go on being read while the brokers are away
            // (librdkafka reconnects by itself); discovery tries again next interval.
            if let Err(e) = self.discover() {
                tracing::warn!(split = self.split.index, error = %e, "kafka partition discovery failed; retrying later");
            }
        }
        if let Some(wait) = self.throttle.wait() {
            return Ok(SourcePoll::Pending(wait));
        }
        if self.ready.is_empty() {
            self.fetch()?;
        }
        let Some(mut ready) = self.ready.pop_front() else {
            if self.brokers_away() {
                return Ok(SourcePoll::Unavailable(Duration::from_millis(100)));
            }
            return Ok(SourcePoll::Pending(Duration::from_millis(10)));
        };
        let rows = ready.batch.num_rows();
        let granted = self.claim(rows);
        if granted < rows {
            // The budget ran out inside this batch: deliver its head, stop after it.
            ready.next = ready.offsets[granted];
            ready.batch = ready.batch.slice(0, granted);
            self.ready.clear();
        }
        self.next[ready.partition] = ready.next;
        self.delivered += granted as u64;
        self.throttle.produced(granted as u64);
        self.commit_for_monitoring(ready.partition);
        Ok(SourcePoll::PartitionBatch(ready.partition, ready.batch))
    }

    fn position(&self) -> Option<serde_json::Value> {
        let position = KafkaPosition {
            offsets: self
                .names
                .iter()
                .cloned()
                .zip(self.next.iter().copied())
                .collect(),
            delivered: self.delivered,
        };
        Some(serde_json::to_value(position).expect("positions serialize"))
    }

    fn partitions(&self) -> &[String] {
        &self.names
    }
}

impl KafkaSourceConfig {
    /// Settings from a parsed `kafka://` URI, reading `format`. Options: `start`
    /// (`earliest`, `latest` or milliseconds since the epoch), `bad-records` (`fail`, `skip`
    /// or `dead-letter:TOPIC`), `connect-timeout-ms` (keep retrying unreachable brokers this
    /// long; default 60 000, 0: fail at once), `discovery-interval-ms` (0: never), `batch-size`,
    /// `timestamp-column`. The topic may be a comma-separated list, or a regex starting with
    /// `^`.
    pub fn from_uri(uri: &super::KafkaUri, format: RecordFormat) -> Result<Self> {
        uri.check_options(&[
            "start",
            "bad-records",
            "connect-timeout-ms",
            "discovery-interval-ms",
            "batch-size",
            "timestamp-column",
        ])?;
        let bad = |reason: String| ConnectorError::Config {
            connector: "kafka source",
            reason,
        };
        let start = match uri.options.get("start").map(String::as_str) {
            None | Some("earliest") => StartFrom::Earliest,
            Some("latest") => StartFrom::Latest,
            Some(ms) => StartFrom::Timestamp(ms.parse().map_err(|_| {
                bad(format!(
                    "start={ms}: use earliest, latest or milliseconds since the epoch"
                ))
            })?),
        };
        let bad_records = match uri.options.get("bad-records").map(String::as_str) {
            None | Some("fail") => BadRecords::Fail,
            Some("skip") => BadRecords::Skip,
            Some(other) => match other.strip_prefix("dead-letter:") {
                Some(topic) if !topic.is_empty() => BadRecords::DeadLetter(topic.to_string()),
                _ => {
                    return Err(bad(format!(
                        "bad-records={other}: use fail, skip or dead-letter:TOPIC"
                    )))
                }
            },
        };
        let topics = if uri.topic.starts_with('^') {
            Topics::Pattern(uri.topic.clone())
        } else {
            Topics::Names(uri.topic.split(',').map(str::to_string).collect())
        };
        let batch_size = match uri.options.get("batch-size") {
            None => 8192,
            Some(n) => n
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| bad(format!("batch-size={n} is not a positive number")))?,
        };
        Ok(KafkaSourceConfig {
            connection: super::KafkaConnection {
                brokers: uri.brokers.clone(),
                properties: uri.properties.clone(),
                connect_timeout: super::connect_timeout(uri)?,
            },
            topics,
            format,
            start,
            bad_records,
            timestamp_column: uri.options.get("timestamp-column").cloned(),
            max_records: None,
            discovery_interval: match uri.millis("discovery-interval-ms")? {
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
                None => Some(Duration::from_secs(10)),
            },
            batch_size,
            max_rate: None,
        })
    }
}
