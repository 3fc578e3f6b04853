//! The NATS JetStream source.
//!
//! A split reads some of the stream's subject filters (the URI's `subject` list, or the
//! stream's own subjects): filter `i` goes to split `i % parallelism`, and each filter is a
//! partition of the split (its own watermark), read by an ordered consumer from the sequence
//! after the last one the split emitted. Ordered consumers are ephemeral and need no acks:
//! positions live in checkpoints only, as a map from filter to last sequence, and a restored
//! split, at any parallelism, starts each filter it now reads after that sequence.
//!
//! The consumers run on the NATS runtime and hand messages over a bounded channel, so a slow
//! job slows the consumers (no more than a few batches are ever buffered).

use super::{nats_error, NatsConnection, NatsUri};
use crate::decode::{RecordDecoder, TextFormat};
use crate::error::{ConnectorError, Result};
use crate::file::BadRecordPolicy;
use crate::io_runtime::{run, spawn};
use crate::split::Throttle;
use datafusion::arrow::array::{ArrayRef, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use futures::StreamExt;
use oxflow_runtime::checkpoint::decode_stored;
use oxflow_runtime::metrics::Counter;
use oxflow_runtime::source::{Source, SourcePoll, SourceReader};
use oxflow_runtime::SubtaskInfo;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where a filter starts when the checkpoint has no sequence for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NatsStart {
    /// The first message still in the stream.
    #[default]
    Earliest,
    /// Messages published after the reader starts.
    Latest,
}

/// Settings of a [`NatsSource`].
#[derive(Debug, Clone)]
pub struct NatsSourceConfig {
    /// Servers and credentials.
    pub connection: NatsConnection,
    /// The stream.
    pub stream: String,
    /// Subject filters, each read as one partition; empty: the stream's subjects.
    pub subjects: Vec<String>,
    /// The columns of the JSON messages.
    pub schema: SchemaRef,
    /// Where to start without a checkpoint.
    pub start: NatsStart,
    /// Messages that do not decode.
    pub bad_records: BadRecordPolicy,
    /// Also put the time the server stored each message into a `Timestamp(ms)` column of this
    /// name (to use as event time).
    pub timestamp_column: Option<String>,
    /// End each filter at the last message it had when its consumer started (a bounded read
    /// of what is in the stream); `false`: read until stopped.
    pub bounded: bool,
    /// Most messages per batch.
    pub batch_size: usize,
    /// Throttle: at most this many messages per second over all splits (for demos and tests
    /// that must run long enough to be interrupted). `None`: as fast as the server serves.
    pub max_rate: Option<f64>,
}

impl NatsSourceConfig {
    /// Settings from a parsed `nats://` URI, reading JSON with `schema`. Options: `subject`
    /// (comma-separated filters), `start` (`earliest`, `latest`), `bad-records` (`fail`,
    /// `skip`), `timestamp-column`, `bounded` (`true`, `false`), `batch-size`,
    /// `connect-timeout-ms`.
    pub fn from_uri(uri: &NatsUri, schema: SchemaRef) -> Result<Self> {
        uri.check_options(&[
            "subject",
            "start",
            "bad-records",
            "timestamp-column",
            "bounded",
            "batch-size",
            "connect-timeout-ms",
        ])?;
        let bad = |reason: String| ConnectorError::Config {
            connector: "nats source",
            reason,
        };
        let option = |k: &str| uri.options.get(k).map(String::as_str);
        Ok(NatsSourceConfig {
            connection: uri.connection()?,
            stream: uri.stream.clone(),
            subjects: option("subject")
                .map(|s| {
                    s.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            schema,
            start: match option("start") {
                None | Some("earliest") => NatsStart::Earliest,
                Some("latest") => NatsStart::Latest,
                Some(other) => return Err(bad(format!("start={other}: use earliest or latest"))),
            },
            bad_records: match option("bad-records") {
                None | Some("fail") => BadRecordPolicy::Fail,
                Some("skip") => BadRecordPolicy::Skip,
                Some(other) => return Err(bad(format!("bad-records={other}: use fail or skip"))),
            },
            timestamp_column: option("timestamp-column").map(str::to_string),
            bounded: match option("bounded") {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => return Err(bad(format!("bounded={other}: use true or false"))),
            },
            batch_size: uri.number("batch-size")?.unwrap_or(8192).clamp(1, 1 << 20) as usize,
            max_rate: None,
        })
    }
}

/// Reads a JetStream stream of JSON messages.
#[derive(Debug, Clone)]
pub struct NatsSource {
    config: NatsSourceConfig,
    /// The JSON columns, then the timestamp column if asked for.
    schema: SchemaRef,
    bad_records: Counter,
}

impl NatsSource {
    /// A source with `config`; checks the settings, not the servers (a reader does that).
    pub fn try_new(config: NatsSourceConfig) -> Result<Self> {
        let mut fields: Vec<Field> = config
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        if let Some(name) = &config.timestamp_column {
            if config.schema.column_with_name(name).is_some() {
                return Err(ConnectorError::Config {
                    connector: "nats source",
                    reason: format!("timestamp-column `{name}` is also a column of the records"),
                });
            }
            fields.push(Field::new(
                name,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ));
        }
        Ok(NatsSource {
            schema: Arc::new(Schema::new(fields)),
            config,
            bad_records: Counter::default(),
        })
    }

    /// Messages skipped as bad so far.
    pub fn bad_records(&self) -> Counter {
        self.bad_records.clone()
    }
}

/// A split's position: the last sequence emitted of every filter it knows (its own, and those
/// it was restored with, so that a checkpoint taken before it has connected loses nothing).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct NatsPosition {
    sequences: BTreeMap<String, u64>,
}

struct Message {
    sequence: u64,
    published_ms: i64,
    payload: bytes::Bytes,
}

/// What the consumer tasks hand the reader.
enum Chunk {
    /// The filters this split reads, once the stream is known.
    Partitions(Vec<String>),
    /// Messages of one filter, in sequence order.
    Messages(usize, Vec<Message>),
    /// A bounded filter is read to its end.
    End(usize),
    /// Something the reader cannot go on from.
    Failed(ConnectorError),
}

impl Source for NatsSource {
    fn name(&self) -> String {
        format!("nats:{}", self.config.stream)
    }
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn restore_reader(
        &self,
        split: SubtaskInfo,
        positions: &[serde_json::Value],
    ) -> oxflow_runtime::Result<Box<dyn SourceReader>> {
        let mut sequences = BTreeMap::new();
        for p in positions {
            let p: NatsPosition = decode_stored(p, "a NATS source position")?;
            for (filter, seq) in p.sequences {
                // Splits may carry a stale copy of a filter they do not read: the furthest wins.
                let e = sequences.entry(filter).or_insert(seq);
                *e = (*e).max(seq);
            }
        }
        // Room for a few batches: the consumers wait when the job falls behind.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let available = Arc::new(AtomicBool::new(false));
        let task = spawn(read_split(
            self.config.clone(),
            split,
            sequences.clone(),
            tx,
            available.clone(),
        ));
        Ok(Box::new(self.reader(split, sequences, rx, available, task)))
    }
}

impl NatsSource {
    /// The job's side of a split whose consumers send on the other end of `rx`.
    fn reader(
        &self,
        split: SubtaskInfo,
        sequences: BTreeMap<String, u64>,
        rx: tokio::sync::mpsc::Receiver<Chunk>,
        available: Arc<AtomicBool>,
        task: tokio::task::JoinHandle<()>,
    ) -> NatsReader {
        NatsReader {
            throttle: Throttle::new(self.config.max_rate, split.parallelism),
            source: self.clone(),
            decoder: RecordDecoder::new(TextFormat::Json, self.config.schema.clone()),
            partitions: Vec::new(),
            known: false,
            finished: Vec::new(),
            sequences,
            rx,
            available,
            task,
        }
    }
}

/// Connects, finds this split's filters, and runs one consumer per filter.
async fn read_split(
    config: NatsSourceConfig,
    split: SubtaskInfo,
    sequences: BTreeMap<String, u64>,
    tx: tokio::sync::mpsc::Sender<Chunk>,
    available: Arc<AtomicBool>,
) {
    let started = async {
        let js = config.connection.connect_with_retry().await?;
        let stream = format!("stream {}", config.stream);
        let mut info = js
            .get_stream(&config.stream)
            .await
            .map_err(|e| nats_error(format!("looking up {stream}"), e))?;
        let subjects = if config.subjects.is_empty() {
            info.info()
                .await
                .map_err(|e| nats_error(format!("reading {stream}"), e))?
                .config
                .subjects
                .clone()
        } else {
            config.subjects.clone()
        };
        if subjects.is_empty() {
            return Err(ConnectorError::Config {
                connector: "nats source",
                reason: format!("{stream} has no subjects: name them with subject="),
            });
        }
        Ok::<_, ConnectorError>((js, subjects))
    };
    let (js, subjects) = match started.await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Chunk::Failed(e)).await;
            return;
        }
    };
    available.store(true, Ordering::Relaxed);
    let mine: Vec<String> = subjects
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % split.parallelism == split.index)
        .map(|(_, s)| s)
        .collect();
    if tx.send(Chunk::Partitions(mine.clone())).await.is_err() {
        return;
    }
    let readers: Vec<_> = mine
        .into_iter()
        .enumerate()
        .map(|(i, filter)| {
            let next = sequences.get(&filter).map(|s| s + 1);
            read_filter(
                js.clone(),
                config.clone(),
                i,
                filter,
                next,
                tx.clone(),
                available.clone(),
            )
        })
        .collect();
    futures::future::join_all(readers).await;
}

/// Reads one filter from `next` (or the configured start), recreating its consumer after an
/// error, until the reader goes away (or, bounded, the filter's end).
async fn read_filter(
    js: async_nats::jetstream::Context,
    config: NatsSourceConfig,
    partition: usize,
    filter: String,
    mut next: Option<u64>,
    tx: tokio::sync::mpsc::Sender<Chunk>,
    available: Arc<AtomicBool>,
) {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let mut backoff = Duration::from_millis(100);
    loop {
        let deliver_policy = match (next, config.start) {
            (Some(start_sequence), _) => DeliverPolicy::ByStartSequence { start_sequence },
            (None, NatsStart::Earliest) => DeliverPolicy::All,
            (None, NatsStart::Latest) => DeliverPolicy::New,
        };
        let consumer = async {
            let stream = js.get_stream_no_info(&config.stream).await?;
            let consumer = stream
                .create_consumer(OrderedConfig {
                    filter_subject: filter.clone(),
                    deliver_policy,
                    ..Default::default()
                })
                .await?;
            Ok::<_, async_nats::Error>(consumer)
        }
        .await;
        let consumer = match consumer {
            Ok(c) => c,
            Err(e) => {
                available.store(false, Ordering::Relaxed);
                tracing::warn!(stream = %config.stream, %filter, error = %e, "cannot create a NATS consumer, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        available.store(true, Ordering::Relaxed);
        backoff = Duration::from_millis(100);
        if config.bounded && consumer.cached_info().num_pending == 0 {
            let _ = tx.send(Chunk::End(partition)).await;
            return;
        }
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(stream = %config.stream, %filter, error = %e, "cannot read a NATS consumer, retrying");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let mut batch: Vec<Message> = Vec::new();
        loop {
            // A partial batch waits at most 10 ms for more, so that latency stays low when
            // messages trickle in.
            let item = if batch.is_empty() {
                Some(messages.next().await)
            } else {
                tokio::time::timeout(Duration::from_millis(10), messages.next())
                    .await
                    .ok()
            };
            let mut end = false;
            let mut broken = false;
            match item {
                // The wait for more ran out: send what there is.
                None => {}
                Some(Some(Ok(m))) => {
                    let info = match m.info() {
                        Ok(info) => (info.stream_sequence, info.pending, info.published),
                        Err(e) => {
                            tracing::warn!(%filter, error = %e, "a NATS message without JetStream info");
                            continue;
                        }
                    };
                    let (sequence, pending, published) = info;
                    next = Some(sequence + 1);
                    batch.push(Message {
                        sequence,
                        published_ms: (published.unix_timestamp_nanos() / 1_000_000) as i64,
                        payload: m.message.payload.clone(),
                    });
                    end = config.bounded && pending == 0;
                    if batch.len() < config.batch_size && !end {
                        continue;
                    }
                }
                Some(Some(Err(e))) => {
                    available.store(false, Ordering::Relaxed);
                    tracing::warn!(stream = %config.stream, %filter, error = %e, "NATS consumer failed, recreating it");
                    broken = true;
                }
                Some(None) => broken = true,
            }
            if !batch.is_empty()
                && tx
                    .send(Chunk::Messages(partition, std::mem::take(&mut batch)))
                    .await
                    .is_err()
            {
                return;
            }
            if end {
                let _ = tx.send(Chunk::End(partition)).await;
                return;
            }
            if broken {
                break;
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

struct NatsReader {
    source: NatsSource,
    /// Checked before taking more messages, never after: a batch taken is emitted at once, so
    /// a checkpoint's sequences never run ahead of what the job has seen.
    throttle: Throttle,
    decoder: RecordDecoder,
    partitions: Vec<String>,
    /// Whether the split's filters are known (the stream was reached).
    known: bool,
    finished: Vec<bool>,
    sequences: BTreeMap<String, u64>,
    rx: tokio::sync::mpsc::Receiver<Chunk>,
    available: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NatsReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NatsReader {
    /// Decodes one filter's messages into a batch (bad ones failed or skipped).
    fn decode(&mut self, partition: usize, messages: &[Message]) -> Result<RecordBatch> {
        let (stream, filter) = (&self.source.config.stream, &self.partitions[partition]);
        let decoded = self.decoder.decode_messages(
            messages.iter().map(|m| &m.payload[..]),
            self.source.config.bad_records,
            &self.source.bad_records,
            |i| {
                format!(
                    "stream {stream} ({filter}) sequence {}",
                    messages[i].sequence
                )
            },
        )?;
        if self.source.config.timestamp_column.is_none() {
            return Ok(decoded.batch);
        }
        let times: TimestampMillisecondArray = decoded
            .kept
            .iter()
            .map(|&i| Some(messages[i].published_ms))
            .collect();
        let mut columns: Vec<ArrayRef> = decoded.batch.columns().to_vec();
        columns.push(Arc::new(times));
        Ok(RecordBatch::try_new(self.source.schema.clone(), columns)?)
    }
}

impl SourceReader for NatsReader {
    fn poll_next(&mut self) -> oxflow_runtime::Result<SourcePoll> {
        if let Some(wait) = self.throttle.wait() {
            return Ok(SourcePoll::Pending(wait));
        }
        loop {
            let chunk = match self.rx.try_recv() {
                Ok(chunk) => chunk,
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                    return Ok(if self.available.load(Ordering::Relaxed) {
                        SourcePoll::Pending(Duration::from_millis(5))
                    } else {
                        SourcePoll::Unavailable(Duration::from_millis(100))
                    })
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    if self.known && self.finished.iter().all(|f| *f) {
                        return Ok(SourcePoll::Finished);
                    }
                    return Err(oxflow_runtime::RuntimeError::Connector(format!(
                        "the NATS reader of stream {} stopped",
                        self.source.config.stream
                    )));
                }
            };
            match chunk {
                Chunk::Partitions(filters) => {
                    self.finished = vec![false; filters.len()];
                    self.partitions = filters;
                    self.known = true;
                    if self.partitions.is_empty() && self.source.config.bounded {
                        return Ok(SourcePoll::Finished);
                    }
                }
                Chunk::Messages(partition, messages) => {
                    let last = messages.last().map_or(0, |m| m.sequence);
                    let batch = self.decode(partition, &messages)?;
                    self.sequences
                        .insert(self.partitions[partition].clone(), last);
                    if batch.num_rows() > 0 {
                        self.throttle.produced(messages.len() as u64);
                        return Ok(SourcePoll::PartitionBatch(partition, batch));
                    }
                }
                Chunk::End(partition) => {
                    self.finished[partition] = true;
                    if self.finished.iter().all(|f| *f) {
                        return Ok(SourcePoll::Finished);
                    }
                }
                Chunk::Failed(e) => return Err(e.into()),
            }
        }
    }
    fn position(&self) -> Option<serde_json::Value> {
        let position = NatsPosition {
            sequences: self.sequences.clone(),
        };
        Some(serde_json::to_value(position).expect("positions serialize"))
    }
    fn partitions(&self) -> &[String] {
        &self.partitions
    }
}

/// Reads `stream` from its first message for a quick look (tests, tools): at most `max`
/// payloads. Blocks on the NATS runtime.
pub fn read_payloads(
    connection: &NatsConnection,
    stream: &str,
    max: usize,
) -> Result<Vec<Vec<u8>>> {
    let (connection, stream) = (connection.clone(), stream.to_string());
    run(async move {
        use async_nats::jetstream::consumer::pull::OrderedConfig;
        let js = connection.connect().await?;
        let s = js
            .get_stream_no_info(&stream)
            .await
            .map_err(|e| nats_error(format!("looking up stream {stream}"), e))?;
        let consumer = s
            .create_consumer(OrderedConfig::default())
            .await
            .map_err(|e| nats_error(format!("reading stream {stream}"), e))?;
        let mut left = consumer.cached_info().num_pending.min(max as u64);
        let mut out = Vec::new();
        if left == 0 {
            return Ok(out);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| nats_error(format!("reading stream {stream}"), e))?;
        while left > 0 {
            match messages.next().await {
                Some(Ok(m)) => {
                    out.push(m.message.payload.to_vec());
                    left -= 1;
                }
                Some(Err(e)) => return Err(nats_error(format!("reading stream {stream}"), e)),
                None => break,
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(from: u64, n: u64) -> Vec<Message> {
        (from..from + n)
            .map(|sequence| Message {
                sequence,
                published_ms: 0,
                payload: format!("{{\"v\":{sequence}}}").into(),
            })
            .collect()
    }

    /// A throttled reader must not take a batch it cannot emit yet: the position a checkpoint
    /// records is what the job has seen, or a restore skips the batch (events lost, as the
    /// NATS chaos test once showed).
    #[test]
    fn throttled_positions_never_run_ahead_of_emitted_batches() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let uri = NatsUri::parse("nats://127.0.0.1:1/S").unwrap();
        let mut config = NatsSourceConfig::from_uri(&uri, schema).unwrap();
        config.max_rate = Some(20.0);
        let source = NatsSource::try_new(config).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let available = Arc::new(AtomicBool::new(true));
        let task = spawn(async {});
        let split = SubtaskInfo {
            index: 0,
            parallelism: 1,
            max_parallelism: 128,
        };
        let mut reader = source.reader(split, BTreeMap::new(), rx, available, task);
        tx.try_send(Chunk::Partitions(vec!["s.a".into()])).unwrap();
        tx.try_send(Chunk::Messages(0, messages(1, 10))).unwrap();
        tx.try_send(Chunk::Messages(0, messages(11, 10))).unwrap();
        let mut emitted = 0;
        let (mut batches, mut polls) = (0, 0);
        while batches < 2 && polls < 10_000 {
            polls += 1;
            match reader.poll_next().unwrap() {
                SourcePoll::PartitionBatch(0, b) => {
                    emitted += b.num_rows() as u64;
                    batches += 1;
                }
                SourcePoll::Pending(wait) => std::thread::sleep(wait),
                other => panic!("unexpected poll {:?}", std::mem::discriminant(&other)),
            }
            let seen = reader.position().unwrap()["sequences"]
                .get("s.a")
                .and_then(|s| s.as_u64())
                .unwrap_or(0);
            assert_eq!(seen, emitted, "the position is ahead of what was emitted");
        }
        assert_eq!(emitted, 20);
    }
}
