//! The RabbitMQ source: streams, read by offset, exactly once on the source side; classic and
//! quorum queues (`mode=queue`), acknowledged when a checkpoint completes, at least once
//! (`super::queue`).
//!
//! Stream `i` of the URI is read by split `i % parallelism` as one partition (its own
//! watermark), by offset (an AMQP consumer with `x-stream-offset`), and the last offset
//! emitted per stream is the checkpoint's position: a restored split, at any parallelism,
//! goes on after it. Deliveries are acknowledged at once: on a stream that only grants
//! credit, nothing is removed.
//!
//! The consumers run on the connectors' runtime and hand chunks over a bounded channel, so a
//! slow job slows the consumers.

use super::queue::{read_queues, Delivered};
use super::{rabbitmq_error, RabbitMqConnection, RabbitMqUri};
use crate::decode::{RecordDecoder, TextFormat};
use crate::error::{ConnectorError, Result};
use crate::file::BadRecordPolicy;
use crate::io_runtime::spawn;
use crate::split::Throttle;
use datafusion::arrow::datatypes::SchemaRef;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use oxflow_runtime::checkpoint::decode_stored;
use oxflow_runtime::metrics::Counter;
use oxflow_runtime::source::{Source, SourcePoll, SourceReader};
use oxflow_runtime::SubtaskInfo;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where a stream is read from when the checkpoint has no offset for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamStart {
    /// The first message the stream still holds.
    #[default]
    First,
    /// The last chunk the stream holds (RabbitMQ's `last`).
    Last,
    /// Messages published after the reader starts.
    Next,
}

/// What the source's queues are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceMode {
    /// Streams, read by offset (`mode=stream`).
    #[default]
    Stream,
    /// Classic or quorum queues, consumed by every split, acknowledged at checkpoints
    /// (`mode=queue`).
    Queue,
}

/// Settings of a [`RabbitMqSource`].
#[derive(Debug, Clone)]
pub struct RabbitMqSourceConfig {
    /// Server, credentials, vhost.
    pub connection: RabbitMqConnection,
    /// Streams or queues.
    pub mode: SourceMode,
    /// The streams (or queues), each a partition.
    pub queues: Vec<String>,
    /// The columns of the JSON messages.
    pub schema: SchemaRef,
    /// Where a stream starts without a checkpoint.
    pub start: StreamStart,
    /// Messages that do not decode.
    pub bad_records: BadRecordPolicy,
    /// End each stream at the last offset it had when its reader started; `false`: read
    /// until stopped.
    pub bounded: bool,
    /// Most messages per batch.
    pub batch_size: usize,
    /// Most unacknowledged deliveries per stream (AMQP's prefetch count: a stream
    /// consumer's credit), or per queue and split: a queue's messages are acknowledged at
    /// checkpoints, so each consumer takes at most this many per checkpoint interval.
    pub prefetch: u16,
    /// Throttle: at most this many messages per second over all splits. `None`: as fast as
    /// the server serves.
    pub max_rate: Option<f64>,
}

impl RabbitMqSourceConfig {
    /// Settings from a parsed `rabbitmq://` URI naming streams or queues, reading JSON with
    /// `schema`. Options: `mode` (`stream`, `queue`), `start` (streams: `first`, `last`, `next`),
    /// `bad-records` (`fail`, `skip`), `bounded` (`true`, `false`), `batch-size`, `prefetch`,
    /// `vhost`, `connect-timeout-ms`.
    pub fn from_uri(uri: &RabbitMqUri, schema: SchemaRef) -> Result<Self> {
        uri.check_options(&[
            "mode",
            "start",
            "bad-records",
            "bounded",
            "batch-size",
            "prefetch",
            "vhost",
            "connect-timeout-ms",
        ])?;
        let bad = |reason: String| ConnectorError::Config {
            connector: "rabbitmq source",
            reason,
        };
        let option = |k: &str| uri.options.get(k).map(String::as_str);
        let mode = match option("mode") {
            None | Some("stream") => SourceMode::Stream,
            Some("queue") => SourceMode::Queue,
            Some(other) => return Err(bad(format!("mode={other}: use stream or queue"))),
        };
        if mode == SourceMode::Queue && option("start").is_some() {
            return Err(bad(
                "start= is for streams: a queue is read from what it holds".into(),
            ));
        }
        let start = match option("start") {
            None | Some("first") => StreamStart::First,
            Some("last") => StreamStart::Last,
            Some("next") => StreamStart::Next,
            Some(other) => return Err(bad(format!("start={other}: use first, last or next"))),
        };
        if start == StreamStart::Next && option("bounded") == Some("true") {
            return Err(bad(
                "bounded=true with start=next would read nothing: start at first or last".into(),
            ));
        }
        let prefetch = match uri.number("prefetch")? {
            // A queue's window is what the checkpoints in flight cover: per split and queue at
            // most this many messages per checkpoint interval. Not larger by default: quorum
            // queues of RabbitMQ 3.10 stalled in our tests at 32768 (the server counted
            // messages as delivered that never reached the channel).
            None if mode == SourceMode::Queue => 8192,
            None => 4096,
            Some(n @ 1..=65535) => n as u16,
            Some(n) => return Err(bad(format!("prefetch={n}: use 1 to 65535"))),
        };
        Ok(RabbitMqSourceConfig {
            connection: uri.connection()?,
            mode,
            queues: uri.queues.clone(),
            schema,
            start,
            bad_records: match option("bad-records") {
                None | Some("fail") => BadRecordPolicy::Fail,
                Some("skip") => BadRecordPolicy::Skip,
                Some(other) => return Err(bad(format!("bad-records={other}: use fail or skip"))),
            },
            bounded: match option("bounded") {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => return Err(bad(format!("bounded={other}: use true or false"))),
            },
            batch_size: uri.number("batch-size")?.unwrap_or(4096).clamp(1, 1 << 20) as usize,
            prefetch,
            max_rate: None,
        })
    }
}

/// Reads RabbitMQ streams of JSON messages.
#[derive(Debug, Clone)]
pub struct RabbitMqSource {
    config: RabbitMqSourceConfig,
    bad_records: Counter,
    redelivered: Counter,
}

impl RabbitMqSource {
    /// A source with `config`; checks the settings, not the server (a reader does that).
    pub fn try_new(config: RabbitMqSourceConfig) -> Result<Self> {
        if config.queues.is_empty() {
            return Err(ConnectorError::Config {
                connector: "rabbitmq source",
                reason: "name at least one stream".into(),
            });
        }
        Ok(RabbitMqSource {
            config,
            bad_records: Counter::default(),
            redelivered: Counter::default(),
        })
    }

    /// Messages skipped as bad so far.
    pub fn bad_records(&self) -> Counter {
        self.bad_records.clone()
    }

    /// Queue messages the server delivered again (their earlier delivery was never
    /// acknowledged: a crash, a lost connection): the duplicates of at-least-once reading.
    pub fn redelivered(&self) -> Counter {
        self.redelivered.clone()
    }
}

/// A split's position: the last offset emitted of every stream it knows (its own, and those
/// it was restored with, so that a checkpoint taken before it has connected loses nothing).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct RabbitMqPosition {
    offsets: BTreeMap<String, u64>,
}

pub(super) struct Message {
    /// A stream's offset, or a queue delivery's tag.
    pub offset: u64,
    pub payload: Vec<u8>,
}

/// What the consumer tasks hand the reader.
pub(super) enum Chunk {
    /// The streams this split reads, its partitions.
    Partitions(Vec<String>),
    /// Messages of one stream (an index into the partitions), in offset order.
    Messages(usize, Vec<Message>),
    /// Messages of one queue, in delivery-tag order on the channel of `generation`.
    Delivered {
        partition: usize,
        generation: u64,
        /// How many of them the server had delivered before.
        redelivered: u64,
        messages: Vec<Message>,
    },
    /// A bounded stream is read to its end.
    End(usize),
    /// Something the reader cannot go on from.
    Failed(ConnectorError),
}

impl Source for RabbitMqSource {
    fn name(&self) -> String {
        format!("rabbitmq:{}", self.config.queues.join(","))
    }
    fn schema(&self) -> SchemaRef {
        self.config.schema.clone()
    }
    fn restore_reader(
        &self,
        split: SubtaskInfo,
        positions: &[serde_json::Value],
    ) -> oxflow_runtime::Result<Box<dyn SourceReader>> {
        let mut offsets = BTreeMap::new();
        for p in positions {
            let p: RabbitMqPosition = decode_stored(p, "a RabbitMQ source position")?;
            for (stream, offset) in p.offsets {
                // Splits may carry a stale copy of a stream they do not read: the furthest wins.
                let e = offsets.entry(stream).or_insert(offset);
                *e = (*e).max(offset);
            }
        }
        // Room for a few batches: the consumers wait when the job falls behind.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let available = Arc::new(AtomicBool::new(false));
        let (task, queue) = match self.config.mode {
            SourceMode::Stream => {
                let task = spawn(read_streams(
                    self.config.clone(),
                    split,
                    offsets.clone(),
                    tx,
                    available.clone(),
                ));
                (task, None)
            }
            SourceMode::Queue => {
                // Unbounded, but only a few acknowledgements per completed checkpoint.
                let (ack_tx, ack_rx): (Vec<_>, Vec<_>) = self
                    .config
                    .queues
                    .iter()
                    .map(|_| tokio::sync::mpsc::unbounded_channel())
                    .unzip();
                let task = spawn(read_queues(
                    self.config.clone(),
                    tx,
                    available.clone(),
                    ack_rx,
                ));
                (task, Some(QueueAcks::new(ack_tx)))
            }
        };
        Ok(Box::new(RabbitMqReader {
            queue,
            throttle: Throttle::new(self.config.max_rate, split.parallelism),
            source: self.clone(),
            decoder: RecordDecoder::new(TextFormat::Json, self.config.schema.clone()),
            partitions: Vec::new(),
            known: false,
            finished: Vec::new(),
            offsets,
            rx,
            available,
            task,
        }))
    }
}

/// A consumer of `what` could not be opened: waits before the next attempt and returns
/// `false`, or, when retrying cannot help (no such queue, no access, no connect timeout),
/// hands the reader the error and returns `true`.
pub(super) async fn give_up(
    e: ConnectorError,
    what: &str,
    config: &RabbitMqSourceConfig,
    tx: &tokio::sync::mpsc::Sender<Chunk>,
    available: &AtomicBool,
    backoff: &mut Duration,
) -> bool {
    available.store(false, Ordering::Relaxed);
    let fatal = matches!(e, ConnectorError::RabbitMq { ref reason, .. } if reason.contains("NOT_FOUND") || reason.contains("ACCESS_REFUSED"));
    if fatal || config.connection.connect_timeout.is_none() {
        let _ = send(tx, Chunk::Failed(e)).await;
        return true;
    }
    tracing::warn!(%what, error = %e, "cannot consume from RabbitMQ, retrying");
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(2));
    false
}

/// Sends what a consumer gathered; `false` when the reader is gone.
pub(super) async fn send(tx: &tokio::sync::mpsc::Sender<Chunk>, chunk: Chunk) -> bool {
    tx.send(chunk).await.is_ok()
}

/// Waits for the next delivery; a partial batch waits at most 10 ms for more, so that latency
/// stays low when messages trickle in. `None` in the outer option: the wait ran out.
pub(super) async fn next_delivery(
    consumer: &mut lapin::Consumer,
    partial: bool,
    idle: Duration,
) -> Option<Option<lapin::Result<lapin::message::Delivery>>> {
    let wait = if partial {
        Duration::from_millis(10)
    } else {
        idle
    };
    tokio::time::timeout(wait, consumer.next()).await.ok()
}

/// The stream offset a delivery carries.
fn stream_offset(d: &lapin::message::Delivery) -> Option<u64> {
    let headers = d.properties.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(o) => u64::try_from(*o).ok(),
        AMQPValue::LongUInt(o) => Some(u64::from(*o)),
        AMQPValue::LongInt(o) => u64::try_from(*o).ok(),
        _ => None,
    }
}

/// Reads this split's streams, one partition each.
async fn read_streams(
    config: RabbitMqSourceConfig,
    split: SubtaskInfo,
    offsets: BTreeMap<String, u64>,
    tx: tokio::sync::mpsc::Sender<Chunk>,
    available: Arc<AtomicBool>,
) {
    let mine: Vec<String> = config
        .queues
        .iter()
        .enumerate()
        .filter(|(i, _)| i % split.parallelism == split.index)
        .map(|(_, q)| q.clone())
        .collect();
    if !send(&tx, Chunk::Partitions(mine.clone())).await {
        return;
    }
    let readers: Vec<_> = mine
        .into_iter()
        .enumerate()
        .map(|(i, stream)| {
            let next = offsets.get(&stream).map(|o| o + 1);
            read_stream(
                config.clone(),
                i,
                stream,
                next,
                tx.clone(),
                available.clone(),
            )
        })
        .collect();
    futures::future::join_all(readers).await;
}

/// A consumer of `stream` from `offset` (an `x-stream-offset` value) on a new channel.
async fn stream_consumer(
    connection: &lapin::Connection,
    config: &RabbitMqSourceConfig,
    stream: &str,
    offset: AMQPValue,
) -> Result<(lapin::Channel, lapin::Consumer)> {
    let mut arguments = FieldTable::default();
    arguments.insert("x-stream-offset".into(), offset);
    consumer_of(
        connection,
        config,
        &format!("stream {stream}"),
        stream,
        arguments,
    )
    .await
}

/// A consumer of `queue` (`what` names it in errors) with `arguments`, on a new channel
/// with the configured prefetch count: a stream consumer's credit, or a queue consumer's
/// window of unacknowledged deliveries (what the checkpoints in flight cover).
pub(super) async fn consumer_of(
    connection: &lapin::Connection,
    config: &RabbitMqSourceConfig,
    what: &str,
    queue: &str,
    arguments: FieldTable,
) -> Result<(lapin::Channel, lapin::Consumer)> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| rabbitmq_error("opening a channel", e))?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| rabbitmq_error("setting the prefetch count", e))?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .map_err(|e| rabbitmq_error(format!("consuming {what}"), e))?;
    Ok((channel, consumer))
}

/// The last offset `stream` holds now, by reading its last chunk until it goes quiet; `None`
/// for an empty stream.
async fn stream_end(
    connection: &lapin::Connection,
    config: &RabbitMqSourceConfig,
    stream: &str,
) -> Result<Option<u64>> {
    let (channel, mut consumer) = stream_consumer(
        connection,
        config,
        stream,
        AMQPValue::LongString("last".into()),
    )
    .await?;
    let mut end = None;
    while let Some(Some(Ok(d))) =
        next_delivery(&mut consumer, false, Duration::from_millis(300)).await
    {
        end = end.max(stream_offset(&d));
        let _ = d.ack(BasicAckOptions::default()).await;
    }
    let _ = channel.close(200, "oxflow: end found".into()).await;
    Ok(end)
}

/// Reads one stream from `next` (or the configured start), reconnecting after an error, until
/// the reader goes away (or, bounded, the stream's end at start).
async fn read_stream(
    config: RabbitMqSourceConfig,
    partition: usize,
    stream: String,
    mut next: Option<u64>,
    tx: tokio::sync::mpsc::Sender<Chunk>,
    available: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut end: Option<Option<u64>> = None;
    loop {
        let opened = async {
            let connection = config.connection.connect_with_retry().await?;
            if config.bounded && end.is_none() {
                end = Some(stream_end(&connection, &config, &stream).await?);
            }
            let offset = match (next, config.start) {
                (Some(o), _) => AMQPValue::LongLongInt(o as i64),
                (None, StreamStart::First) => AMQPValue::LongString("first".into()),
                (None, StreamStart::Last) => AMQPValue::LongString("last".into()),
                (None, StreamStart::Next) => AMQPValue::LongString("next".into()),
            };
            let (_, consumer) = stream_consumer(&connection, &config, &stream, offset).await?;
            Ok::<_, ConnectorError>((connection, consumer))
        }
        .await;
        let (_connection, mut consumer) = match opened {
            Ok(c) => c,
            Err(e) => {
                let what = format!("stream {stream}");
                if give_up(e, &what, &config, &tx, &available, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        available.store(true, Ordering::Relaxed);
        backoff = Duration::from_millis(100);
        let last = end.flatten();
        let done = |next: Option<u64>| match (config.bounded, last) {
            (false, _) => false,
            (true, None) => true,
            (true, Some(last)) => next.is_some_and(|n| n > last),
        };
        if done(next) {
            let _ = send(&tx, Chunk::End(partition)).await;
            return;
        }
        let mut batch: Vec<Message> = Vec::new();
        loop {
            let item =
                next_delivery(&mut consumer, !batch.is_empty(), Duration::from_secs(3600)).await;
            let mut broken = false;
            match item {
                None => {}
                Some(Some(Ok(d))) => {
                    let Some(offset) = stream_offset(&d) else {
                        tracing::warn!(%stream, "a stream message without x-stream-offset");
                        continue;
                    };
                    // Credit for more; on a stream nothing is removed.
                    let _ = d.ack(BasicAckOptions::default()).await;
                    // A restart at an offset may begin inside a chunk: skip what was read.
                    if next.is_some_and(|n| offset < n) {
                        continue;
                    }
                    next = Some(offset + 1);
                    batch.push(Message {
                        offset,
                        payload: d.data,
                    });
                    if batch.len() < config.batch_size && !done(next) {
                        continue;
                    }
                }
                Some(Some(Err(e))) => {
                    available.store(false, Ordering::Relaxed);
                    tracing::warn!(%stream, error = %e, "RabbitMQ stream consumer failed, reconnecting");
                    broken = true;
                }
                Some(None) => broken = true,
            }
            if !batch.is_empty()
                && !send(&tx, Chunk::Messages(partition, std::mem::take(&mut batch))).await
            {
                return;
            }
            if done(next) {
                let _ = send(&tx, Chunk::End(partition)).await;
                return;
            }
            if broken {
                break;
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

/// A queue split's acknowledgements: what it has emitted, what each checkpoint in flight
/// covers, what it has acknowledged (per queue).
struct QueueAcks {
    senders: Vec<tokio::sync::mpsc::UnboundedSender<Delivered>>,
    emitted: Vec<Option<Delivered>>,
    acked: Vec<Option<Delivered>>,
    /// Checkpoint ids taken and not yet complete, with what had been emitted at each barrier.
    barriers: VecDeque<(u64, Vec<Option<Delivered>>)>,
    /// The last checkpoint this split took part in with a barrier.
    last_barrier: u64,
    /// No checkpoints: acknowledge each batch as it is emitted.
    at_once: bool,
}

impl QueueAcks {
    fn new(senders: Vec<tokio::sync::mpsc::UnboundedSender<Delivered>>) -> Self {
        let n = senders.len();
        QueueAcks {
            senders,
            emitted: vec![None; n],
            acked: vec![None; n],
            barriers: VecDeque::new(),
            last_barrier: 0,
            at_once: false,
        }
    }

    /// Checkpoint `id` takes what has been emitted so far.
    fn barrier(&mut self, id: u64) {
        self.barriers.push_back((id, self.emitted.clone()));
        self.last_barrier = id;
    }

    /// Checkpoint `id` has completed: acknowledges what its barrier covered (`ended`: the
    /// split has read to its end).
    fn completed(&mut self, id: u64, ended: bool) {
        let mut covered = None;
        while self.barriers.front().is_some_and(|(b, _)| *b <= id) {
            covered = self.barriers.pop_front().map(|(_, at)| at);
        }
        // A checkpoint after the last barrier of an ended split took its end as its part: it
        // covers all the split emitted.
        if ended && id > self.last_barrier {
            covered = Some(self.emitted.clone());
        }
        if let Some(at) = covered {
            self.acknowledge(&at);
        }
    }

    /// Acknowledges, per queue, up to `upto` (tags of a channel only grow; a tag of an older
    /// channel is dropped by its consumer, since that channel's messages went back).
    fn acknowledge(&mut self, upto: &[Option<Delivered>]) {
        for (i, d) in upto.iter().enumerate() {
            let Some(d) = *d else { continue };
            // Acknowledging a tag twice closes the channel: only what is new.
            if self.acked[i].is_some_and(|a| a >= d) {
                continue;
            }
            self.acked[i] = Some(d);
            // The consumer is gone only when its reader is: nothing left to acknowledge.
            let _ = self.senders[i].send(d);
        }
    }
}

struct RabbitMqReader {
    /// Queue mode's acknowledgements (`None` for streams).
    queue: Option<QueueAcks>,
    source: RabbitMqSource,
    /// Checked before taking more messages, never after: a batch taken is emitted at once, so
    /// a checkpoint's position never runs ahead of what the job has seen.
    throttle: Throttle,
    decoder: RecordDecoder,
    partitions: Vec<String>,
    /// Whether the split's streams are known.
    known: bool,
    finished: Vec<bool>,
    offsets: BTreeMap<String, u64>,
    rx: tokio::sync::mpsc::Receiver<Chunk>,
    available: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RabbitMqReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RabbitMqReader {
    /// Decodes the messages of partition `partition`; a bad one is named by its partition
    /// and `what` its number is (`offset`, `delivery`).
    fn decode(
        &self,
        partition: usize,
        messages: &[Message],
        what: &str,
    ) -> oxflow_runtime::Result<datafusion::arrow::record_batch::RecordBatch> {
        let kind = match self.source.config.mode {
            SourceMode::Stream => "stream",
            SourceMode::Queue => "queue",
        };
        let name = &self.partitions[partition];
        Ok(self
            .decoder
            .decode_messages(
                messages.iter().map(|m| &m.payload[..]),
                self.source.config.bad_records,
                &self.source.bad_records,
                |i| format!("{kind} {name} {what} {}", messages[i].offset),
            )?
            .batch)
    }

    /// The poll that hands on `batch` (read from `read` messages), if it holds a row.
    fn emit(
        &mut self,
        partition: usize,
        batch: datafusion::arrow::record_batch::RecordBatch,
        read: usize,
    ) -> Option<SourcePoll> {
        (batch.num_rows() > 0).then(|| {
            self.throttle.produced(read as u64);
            SourcePoll::PartitionBatch(partition, batch)
        })
    }

    /// Whether every stream or queue of the split has been read to its end.
    fn ended(&self) -> bool {
        self.known && self.finished.iter().all(|f| *f)
    }
}

impl SourceReader for RabbitMqReader {
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
                    if self.ended() {
                        return Ok(SourcePoll::Finished);
                    }
                    return Err(oxflow_runtime::RuntimeError::Connector(format!(
                        "the RabbitMQ reader of {} stopped",
                        self.source.config.queues.join(",")
                    )));
                }
            };
            match chunk {
                Chunk::Partitions(streams) => {
                    self.finished = vec![false; streams.len()];
                    self.partitions = streams;
                    self.known = true;
                    if self.partitions.is_empty() && self.source.config.bounded {
                        return Ok(SourcePoll::Finished);
                    }
                }
                Chunk::Messages(partition, messages) => {
                    let last = messages.last().map_or(0, |m| m.offset);
                    let batch = self.decode(partition, &messages, "offset")?;
                    self.offsets
                        .insert(self.partitions[partition].clone(), last);
                    if let Some(poll) = self.emit(partition, batch, messages.len()) {
                        return Ok(poll);
                    }
                }
                Chunk::Delivered {
                    partition,
                    generation,
                    redelivered,
                    messages,
                } => {
                    let batch = self.decode(partition, &messages, "delivery")?;
                    self.source.redelivered.add(redelivered);
                    let acks = self.queue.as_mut().expect("queue mode");
                    let last = messages.last().map(|m| Delivered {
                        generation,
                        tag: m.offset,
                    });
                    acks.emitted[partition] = last.max(acks.emitted[partition]);
                    if acks.at_once {
                        let emitted = acks.emitted.clone();
                        acks.acknowledge(&emitted);
                    }
                    if let Some(poll) = self.emit(partition, batch, messages.len()) {
                        return Ok(poll);
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
        let position = RabbitMqPosition {
            offsets: self.offsets.clone(),
        };
        Some(serde_json::to_value(position).expect("positions serialize"))
    }
    fn partitions(&self) -> &[String] {
        &self.partitions
    }
    fn on_barrier(&mut self, id: u64) {
        if let Some(q) = &mut self.queue {
            q.barrier(id);
        }
    }
    fn checkpoint_complete(&mut self, id: u64) -> oxflow_runtime::Result<()> {
        let ended = self.ended();
        if let Some(q) = &mut self.queue {
            q.completed(id, ended);
        }
        Ok(())
    }
    fn without_checkpoints(&mut self) {
        if let Some(q) = &mut self.queue {
            q.at_once = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]))
    }

    fn config(uri: &str) -> Result<RabbitMqSourceConfig> {
        RabbitMqSourceConfig::from_uri(&RabbitMqUri::parse(uri).unwrap(), schema())
    }

    #[test]
    fn source_uris_name_streams_and_check_their_options() {
        let s = config("rabbitmq://h:1/s1,s2?start=last&bounded=true&prefetch=10").unwrap();
        assert_eq!(s.queues, ["s1", "s2"]);
        assert_eq!(
            (s.start, s.bounded, s.prefetch),
            (StreamStart::Last, true, 10)
        );
        assert_eq!(
            config("rabbitmq://h:1/s?mode=stream").unwrap().prefetch,
            4096
        );
        let q = config("rabbitmq://h:1/q1,q2?mode=queue&bounded=true").unwrap();
        assert_eq!(
            (q.mode, q.prefetch, q.bounded),
            (SourceMode::Queue, 8192, true)
        );
        for (uri, want) in [
            (
                "rabbitmq://h:1/a?mode=queue&start=first",
                "start= is for streams",
            ),
            ("rabbitmq://h:1/a?mode=log", "mode=log"),
            (
                "rabbitmq://h:1/a?start=next&bounded=true",
                "would read nothing",
            ),
            ("rabbitmq://h:1/a?prefetch=0", "prefetch=0"),
            ("rabbitmq://h:1/a?prefetch=70000", "prefetch=70000"),
            ("rabbitmq://h:1/a?bad-records=maybe", "bad-records=maybe"),
            ("rabbitmq://h:1/a?topic=x", "unknown option `topic`"),
        ] {
            let e = config(uri).unwrap_err().to_string();
            assert!(e.contains(want), "{uri}: {e}");
        }
    }

    #[test]
    fn queue_messages_are_acknowledged_as_the_checkpoints_covering_them_complete() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut acks = QueueAcks::new(vec![tx]);
        let d = |generation, tag| Some(Delivered { generation, tag });
        let mut sent = || std::iter::from_fn(|| rx.try_recv().ok()).collect::<Vec<_>>();
        acks.emitted[0] = d(1, 10);
        acks.barrier(1);
        acks.emitted[0] = d(1, 20);
        acks.barrier(2);
        acks.emitted[0] = d(1, 25);
        assert!(sent().is_empty(), "nothing before a checkpoint completes");
        acks.completed(1, false);
        assert_eq!(sent(), [d(1, 10).unwrap()]);
        // 3 was abandoned, 4 completes: it covers what 2 covered, and more is not yet.
        acks.barrier(4);
        acks.completed(4, false);
        assert_eq!(sent(), [d(1, 25).unwrap()]);
        acks.completed(4, false);
        assert!(sent().is_empty(), "a tag is never acknowledged twice");
        // After a reconnect tags start again; once the split ended, a later checkpoint
        // covers all it emitted, an earlier one only its barrier.
        acks.emitted[0] = d(2, 3);
        acks.barrier(5);
        acks.emitted[0] = d(2, 9);
        acks.completed(5, true);
        assert_eq!(sent(), [d(2, 3).unwrap()]);
        acks.completed(6, true);
        assert_eq!(sent(), [d(2, 9).unwrap()]);
    }

    #[test]
    fn a_bad_position_is_named() {
        let source = RabbitMqSource::try_new(
            config("rabbitmq://127.0.0.1:1/s1?connect-timeout-ms=0").unwrap(),
        )
        .unwrap();
        let split = SubtaskInfo {
            index: 0,
            parallelism: 1,
            max_parallelism: 128,
        };
        let e = source
            .restore_reader(split, &[serde_json::json!({"offsets": "x"})])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("RabbitMQ source position"), "{e}");
    }
}
