//! The Kafka sink: none, at-least-once, or exactly-once through Kafka transactions. The
//! exactly-once protocol is in docs/design/kafka.md; in short:
//!
//! - A writer produces each epoch (the records between two checkpoint barriers) as it comes,
//!   into a transaction of its own: a writer has [`SLOTS`] transactional ids, so that one
//!   epoch's transaction can wait for its checkpoint while the next is written. It also
//!   appends the records to a spool file beside the job's checkpoints, the epoch's replay
//!   source, and at the barrier makes the file durable and hands over its name.
//! - Once the checkpoint's manifest is written, [`Sink::commit`] writes a marker into the
//!   epoch's transaction (a consumer-group offset commit, `send_offsets_to_transaction`, for
//!   the group `<transactional id>.marker`, whose metadata names the epoch) and commits it:
//!   the records and the marker become visible together, one round trip after the
//!   checkpoint. An epoch with no open transaction (all slots busy, or a commit replayed after
//!   a restart) is sent from its spool file at the commit, in a new transaction.
//! - A commit replayed after a crash first fences the old producer (`init_transactions` with
//!   the same transactional id aborts whatever it left open), then reads the marker: if it
//!   names the epoch, the epoch is in Kafka and nothing is sent; otherwise the spool file is
//!   sent again. Nothing is lost and nothing is written twice.

use super::source::send_blocking;
use super::{flush_delivered, kafka_error, DeliveryContext, KafkaConnection};
use crate::error::{ConnectorError, Result as ConnectorResult};
use crate::json::encode_json_lines;
use crate::spool::{read_spool, remove_all, remove_spool, SpoolFile};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use oxflow_runtime::checkpoint::decode_stored;
use oxflow_runtime::sink::{PendingCommit, Sink, SinkWriter};
use oxflow_runtime::{Result, RuntimeError, SubtaskInfo};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a sink promises about its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryGuarantee {
    /// Produce and move on; records in flight at a crash may be lost.
    None,
    /// Every checkpoint barrier waits until everything produced before it is acknowledged:
    /// nothing is lost, but a replay after a crash writes some records again.
    AtLeastOnce,
    /// Kafka transactions, committed with checkpoints: a `read_committed` consumer sees every
    /// record exactly once. Epochs are spooled to files in `spool_dir` (put it beside the
    /// checkpoints: it must survive the process) until committed.
    ExactlyOnce {
        /// Where epochs wait for their checkpoint.
        spool_dir: PathBuf,
        /// Prefix of the writers' transactional ids (`<prefix>-<subtask>`); unique per job
        /// and stable across its restarts.
        transactional_id_prefix: String,
    },
}

/// How rows become record values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Each row as a JSON object (timestamps as RFC 3339 strings).
    #[default]
    Json,
    /// The row's `value` column (binary or string) as it is, and `key` if there is one.
    Raw,
}

/// Settings of a [`KafkaSink`].
#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    /// Brokers and client properties.
    pub connection: KafkaConnection,
    /// The topic written.
    pub topic: String,
    /// Value format.
    pub format: OutputFormat,
    /// Columns that make the record key (one column: its text; several: a JSON object).
    /// Records of one key go to one partition (librdkafka's murmur2, as Java clients).
    /// Empty: no key (with [`OutputFormat::Raw`], a `key` column if present).
    pub key_columns: Vec<String>,
    /// The guarantee.
    pub guarantee: DeliveryGuarantee,
}

impl KafkaSinkConfig {
    /// JSON into `topic` with the given guarantee, no key.
    pub fn json(
        brokers: impl Into<String>,
        topic: impl Into<String>,
        guarantee: DeliveryGuarantee,
    ) -> Self {
        KafkaSinkConfig {
            connection: KafkaConnection::new(brokers),
            topic: topic.into(),
            format: OutputFormat::Json,
            key_columns: Vec::new(),
            guarantee,
        }
    }
}

type TxProducer = ThreadedProducer<DeliveryContext>;

/// A transactional id's producer and the consumer that reads its marker, made once per
/// process: making them fences any earlier holder of the id.
struct Transactional {
    producer: TxProducer,
    marker: BaseConsumer,
    group: rdkafka::consumer::ConsumerGroupMetadata,
    open: Open,
}

/// The transaction a transactional id has open in this process, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Open {
    None,
    /// A writer is producing its epoch into it.
    Writing,
    /// It holds all of the named epoch, sealed at its barrier: its checkpoint's commit
    /// commits it.
    Sealed(String),
}

/// Transactional ids a writer produces its epochs into as they come (`<id>-t<k>`). The
/// coordinator commits checkpoint n before it triggers n+1, so two are enough for one epoch
/// waiting for its commit and the next being written; an epoch finding both busy (a
/// checkpoint was abandoned and its epoch carried to the next) is only spooled, and sent at
/// its commit under the writer's own id, as every epoch is after a restart.
pub const SLOTS: usize = 2;

fn slot_ids(writer: &str) -> impl Iterator<Item = String> + '_ {
    (0..SLOTS).map(move |k| format!("{writer}-t{k}"))
}

impl Transactional {
    /// Begins a transaction (`what` names it in an error).
    fn begin(&self, what: &str) -> ConnectorResult<()> {
        // Deliveries an abort purged are failures of the aborted transaction, not of this one.
        let _ = self.producer.context().take_failure();
        self.producer
            .begin_transaction()
            .map_err(|e| kafka_error(format!("beginning {what}"), e))
    }
}

/// The record of `value` (and `key`) for `topic`.
fn record<'a>(
    topic: &'a str,
    key: Option<&'a [u8]>,
    value: &'a [u8],
) -> BaseRecord<'a, [u8], [u8]> {
    let record = BaseRecord::to(topic).payload(value);
    match key {
        Some(key) => record.key(key),
        None => record,
    }
}

type Producers = Arc<Mutex<HashMap<String, Arc<Mutex<Transactional>>>>>;

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes rows into a Kafka topic.
pub struct KafkaSink {
    config: KafkaSinkConfig,
    producers: Producers,
    records: Arc<AtomicU64>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.config.topic)
            .finish_non_exhaustive()
    }
}

/// What an exactly-once writer hands over at a barrier.
#[derive(Debug, Serialize, Deserialize)]
struct PendingEpoch {
    /// The transactional id its records were produced under (one of the writer's slots), or
    /// are to be sent under at the commit (the writer's own).
    transactional_id: String,
    /// The writer's own transactional id (`<prefix>-<subtask>`); empty in checkpoints from
    /// before slots, whose `transactional_id` is the writer's.
    #[serde(default)]
    writer: String,
    /// Unique name of the epoch (also its spool file's name); the marker carries it.
    epoch: String,
    /// Records in the spool file (none: no file).
    records: u64,
}

impl PendingEpoch {
    fn writer(&self) -> &str {
        if self.writer.is_empty() {
            &self.transactional_id
        } else {
            &self.writer
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(60);

impl KafkaSink {
    /// A sink with `config`; checks the settings, not the brokers (a writer does that).
    pub fn try_new(config: KafkaSinkConfig) -> ConnectorResult<Self> {
        let bad = |reason: String| ConnectorError::Config {
            connector: "kafka sink",
            reason,
        };
        if config.topic.is_empty() {
            return Err(bad("no topic".into()));
        }
        if let DeliveryGuarantee::ExactlyOnce {
            spool_dir,
            transactional_id_prefix,
        } = &config.guarantee
        {
            if transactional_id_prefix.is_empty() {
                return Err(bad("exactly-once needs a transactional id prefix".into()));
            }
            std::fs::create_dir_all(spool_dir).map_err(|e| {
                ConnectorError::io(
                    format!("creating spool directory {}", spool_dir.display()),
                    e,
                )
            })?;
        }
        Ok(KafkaSink {
            config,
            producers: Producers::default(),
            records: Arc::default(),
        })
    }

    /// Records produced (for exactly-once: committed) so far by this process.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    fn producer(&self, transactional: Option<&str>) -> ConnectorResult<TxProducer> {
        let mut config = self.config.connection.client_config();
        config
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            // `DeliveryContext` wants failures only; a report per delivered record cost the
            // producer's polling thread a lock and two clock reads each (a tenth of a
            // pass-through job's CPU). Flushes still wait for every record.
            .set("delivery.report.only.error", "true");
        if let Some(id) = transactional {
            config
                .set("transactional.id", id)
                .set("transaction.timeout.ms", "60000");
        }
        config
            .create_with_context(DeliveryContext::default())
            .map_err(|e| kafka_error("creating a producer", e))
    }

    /// The producer of a transactional id, made (and the id's earlier holder fenced) on
    /// first use in this process.
    fn transactional(&self, id: &str) -> ConnectorResult<Arc<Mutex<Transactional>>> {
        if let Some(t) = locked(&self.producers).get(id) {
            return Ok(t.clone());
        }
        let producer = self.producer(Some(id))?;
        let connection = &self.config.connection;
        connection.with_retry(&format!("initialising transactions of `{id}`"), || {
            producer.init_transactions(TIMEOUT)
        })?;
        let marker: BaseConsumer = connection
            .client_config()
            .set("group.id", format!("{id}.marker"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(|e| kafka_error("creating the marker reader", e))?;
        let group = marker
            .group_metadata()
            .ok_or_else(|| ConnectorError::Config {
                connector: "kafka sink",
                reason: format!("no consumer group metadata for `{id}.marker`"),
            })?;
        let t = Arc::new(Mutex::new(Transactional {
            producer,
            marker,
            group,
            open: Open::None,
        }));
        locked(&self.producers).insert(id.to_string(), t.clone());
        Ok(t)
    }

    fn spool_dir(&self) -> Option<&Path> {
        match &self.config.guarantee {
            DeliveryGuarantee::ExactlyOnce { spool_dir, .. } => Some(spool_dir),
            _ => None,
        }
    }

    /// Commits the epochs of one writer, oldest first: usually one, more when an abandoned
    /// checkpoint's epochs were carried to this one.
    fn commit_writer(&self, checkpoint: u64, epochs: &[&PendingEpoch]) -> ConnectorResult<()> {
        let spool = self
            .spool_dir()
            .expect("only exactly-once writers hand over epochs");
        // On a restore, fence the slots of every writer the checkpoint had (at whatever
        // parallelism), so that no transaction a dead process left open holds back
        // read_committed consumers until it times out. Made once per process: free later.
        for slot in slot_ids(epochs[0].writer()) {
            self.transactional(&slot)?;
        }
        let mut markers: HashMap<&str, Option<String>> = HashMap::new();
        for (i, pending) in epochs.iter().enumerate() {
            if pending.records == 0 {
                continue;
            }
            let path = spool.join(&pending.epoch);
            if self.commit_open(checkpoint, pending, &path)? {
                continue;
            }
            // Not in a transaction of this process: the commit may replay one made before a
            // crash (or before a restart of the job in this process). The marker names the
            // last epoch of this id that reached Kafka; one offset fetch per id and commit.
            let id = pending.transactional_id.as_str();
            let t = self.transactional(id)?;
            let t = locked(&t);
            if !markers.contains_key(id) {
                markers.insert(id, self.marker(&t)?);
            }
            let done = markers[id].as_deref().is_some_and(|m| {
                epochs[i..]
                    .iter()
                    .any(|e| e.transactional_id == id && e.epoch == m)
            });
            if done {
                tracing::info!(transactional_id = %id, epoch = %pending.epoch, checkpoint, "epoch already committed");
                remove_spool(&path)?;
            } else {
                self.send_epoch(&t, checkpoint, pending, &path)?;
            }
        }
        Ok(())
    }

    /// Commits `pending` if its records are in a transaction this process has open (sealed
    /// at its barrier): true once committed. False if there is none, or committing it failed:
    /// the producer is then dropped, and the caller makes a new one, whose fencing completes
    /// or aborts that transaction, and reads the marker to learn which.
    fn commit_open(
        &self,
        checkpoint: u64,
        pending: &PendingEpoch,
        path: &Path,
    ) -> ConnectorResult<bool> {
        let id = &pending.transactional_id;
        let Some(t) = locked(&self.producers).get(id).cloned() else {
            return Ok(false);
        };
        let mut t = locked(&t);
        if t.open != Open::Sealed(pending.epoch.clone()) {
            return Ok(false);
        }
        t.open = Open::None;
        match self.commit_transaction(&t, checkpoint, pending) {
            Ok(()) => {
                self.records.fetch_add(pending.records, Ordering::Relaxed);
                remove_spool(path)?;
                Ok(true)
            }
            Err(e @ ConnectorError::Fenced { .. }) => Err(e),
            Err(e) => {
                tracing::warn!(transactional_id = %id, epoch = %pending.epoch, checkpoint, error = %e,
                    "committing the epoch's transaction failed; the spool file decides");
                drop(t);
                locked(&self.producers).remove(id);
                Ok(false)
            }
        }
    }

    /// Sends one spooled epoch and its marker in one transaction.
    fn send_epoch(
        &self,
        t: &Transactional,
        checkpoint: u64,
        pending: &PendingEpoch,
        path: &Path,
    ) -> ConnectorResult<()> {
        let id = &pending.transactional_id;
        let records = read_spool(path, pending.records, "kafka sink")?;
        t.begin(&format!(
            "a transaction of `{id}` for checkpoint {checkpoint}"
        ))?;
        let topic = &self.config.topic;
        let sent = records.iter().try_for_each(|(key, value)| {
            send_blocking(&t.producer, record(topic, key.as_deref(), value))
        });
        let sent = sent.and_then(|()| self.commit_transaction(t, checkpoint, pending));
        if let Err(e) = sent {
            let _ = t.producer.abort_transaction(TIMEOUT);
            return Err(e);
        }
        self.records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        remove_spool(path)
    }

    /// Writes the marker naming `pending` into the open transaction and commits it.
    fn commit_transaction(
        &self,
        t: &Transactional,
        checkpoint: u64,
        pending: &PendingEpoch,
    ) -> ConnectorResult<()> {
        let id = &pending.transactional_id;
        let fail =
            |what: &str, e| kafka_error(format!("{what} of `{id}` for checkpoint {checkpoint}"), e);
        let mut marker = TopicPartitionList::new();
        marker
            .add_partition_offset(&self.config.topic, 0, Offset::Offset(checkpoint as i64))
            .map_err(|e| fail("the marker", e))?;
        if let Some(mut e) = marker.find_partition(&self.config.topic, 0) {
            e.set_metadata(pending.epoch.as_str());
        }
        t.producer
            .send_offsets_to_transaction(&marker, &t.group, TIMEOUT)
            .map_err(|e| fail("writing the marker", e))?;
        t.producer
            .commit_transaction(TIMEOUT)
            .map_err(|e| fail("committing the transaction", e))?;
        t.producer.context().check(&format!(
            "transaction of `{id}` committed after a failed delivery"
        ))
    }

    /// The epoch the marker of a transactional id names, if any.
    fn marker(&self, t: &Transactional) -> ConnectorResult<Option<String>> {
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.config.topic, 0);
        let committed = self
            .config
            .connection
            .with_retry("reading a commit marker", || {
                t.marker.committed_offsets(list.clone(), TIMEOUT)
            })?;
        Ok(committed
            .find_partition(&self.config.topic, 0)
            .filter(|e| matches!(e.offset(), Offset::Offset(_)))
            .map(|e| e.metadata().to_string())
            .filter(|m| !m.is_empty()))
    }
}

/// Turns rows into record keys and values.
struct Encoder {
    format: OutputFormat,
    key_columns: Vec<usize>,
    json: Vec<u8>,
}

impl Encoder {
    fn new(config: &KafkaSinkConfig, schema: &SchemaRef) -> Result<Self> {
        let find = |name: &str| {
            schema.index_of(name).map_err(|_| {
                RuntimeError::InvalidJob(format!(
                    "kafka sink: column `{name}` not in the sink's input {:?}",
                    schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
                ))
            })
        };
        let mut key_columns = config
            .key_columns
            .iter()
            .map(|c| find(c))
            .collect::<Result<Vec<_>>>()?;
        if config.format == OutputFormat::Raw {
            let value = find("value")?;
            if !matches!(
                schema.field(value).data_type(),
                DataType::Binary | DataType::Utf8
            ) {
                return Err(RuntimeError::InvalidJob(
                    "kafka sink: raw output needs a binary or string `value` column".into(),
                ));
            }
            if key_columns.is_empty() {
                key_columns.extend(schema.index_of("key").ok());
            }
        }
        Ok(Encoder {
            format: config.format,
            key_columns,
            json: Vec::new(),
        })
    }

    /// Calls `emit(key, value)` for every row.
    fn encode(
        &mut self,
        batch: &RecordBatch,
        mut emit: impl FnMut(Option<&[u8]>, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let keys = self.keys(batch)?;
        match self.format {
            OutputFormat::Json => {
                self.json.clear();
                encode_json_lines(batch, &mut self.json)?;
                let lines = self.json.split(|&b| b == b'\n');
                for (row, line) in lines.take(batch.num_rows()).enumerate() {
                    emit(keys.as_ref().map(|k| k[row].as_slice()), line)?;
                }
            }
            OutputFormat::Raw => {
                let column = batch.column(batch.schema().index_of("value")?);
                for row in 0..batch.num_rows() {
                    let value: &[u8] = match column.data_type() {
                        _ if column.is_null(row) => &[],
                        DataType::Utf8 => column.as_string::<i32>().value(row).as_bytes(),
                        _ => column.as_binary::<i32>().value(row),
                    };
                    emit(keys.as_ref().map(|k| k[row].as_slice()), value)?;
                }
            }
        }
        Ok(())
    }

    fn keys(&self, batch: &RecordBatch) -> Result<Option<Vec<Vec<u8>>>> {
        match self.key_columns.as_slice() {
            [] => Ok(None),
            [one] => {
                let column = batch.column(*one);
                if let DataType::Binary = column.data_type() {
                    let b = column.as_binary::<i32>();
                    return Ok(Some((0..b.len()).map(|i| b.value(i).to_vec()).collect()));
                }
                let options = FormatOptions::default().with_null("");
                let f = ArrayFormatter::try_new(column.as_ref(), &options)?;
                Ok(Some(
                    (0..batch.num_rows())
                        .map(|i| f.value(i).to_string().into_bytes())
                        .collect(),
                ))
            }
            several => {
                let projected = batch.project(several)?;
                let mut out = Vec::new();
                encode_json_lines(&projected, &mut out)?;
                Ok(Some(
                    out.split(|&b| b == b'\n')
                        .take(batch.num_rows())
                        .map(<[u8]>::to_vec)
                        .collect(),
                ))
            }
        }
    }
}

/// A writer that produces as it goes (none, at-least-once).
struct DirectWriter {
    producer: TxProducer,
    topic: String,
    encoder: Encoder,
    flush_at_barriers: bool,
    records: Arc<AtomicU64>,
}

impl DirectWriter {
    fn flush(&mut self) -> Result<()> {
        let what = format!("records to {}", self.topic);
        Ok(flush_delivered(&self.producer, &what, TIMEOUT)?)
    }
}

impl SinkWriter for DirectWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let (producer, topic) = (&self.producer, &self.topic);
        self.encoder.encode(batch, |key, value| {
            Ok(send_blocking(producer, record(topic, key, value))?)
        })?;
        self.records
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        Ok(self
            .producer
            .context()
            .check(&format!("records to {}", self.topic))?)
    }
    fn pre_commit(&mut self) -> Result<Option<PendingCommit>> {
        if self.flush_at_barriers {
            self.flush()?;
        }
        Ok(None)
    }
    fn finish(&mut self) -> Result<Option<PendingCommit>> {
        self.flush()?;
        Ok(None)
    }
}

/// An exactly-once writer: produces each epoch into a transaction of one of its slots as it
/// comes (when one is free), and spools it to a file, its replay source.
struct SpoolWriter {
    dir: PathBuf,
    /// The writer's own transactional id; its slots' ids derive from it.
    transactional_id: String,
    topic: String,
    encoder: Encoder,
    file: Option<SpoolFile>,
    producers: Producers,
    /// The slot the current epoch is produced into: its id and transaction.
    slot: Option<(String, Arc<Mutex<Transactional>>)>,
}

impl SpoolWriter {
    /// Begins a transaction on a free slot, if there is one.
    fn open_slot(&self) -> Result<Option<(String, Arc<Mutex<Transactional>>)>> {
        for id in slot_ids(&self.transactional_id) {
            // A slot whose producer failed at a commit is made again by the next commit of
            // its epochs; until then it is not free.
            let Some(t) = locked(&self.producers).get(&id).cloned() else {
                continue;
            };
            let mut slot = locked(&t);
            if slot.open == Open::None {
                slot.begin(&format!("a transaction of `{id}`"))?;
                slot.open = Open::Writing;
                drop(slot);
                return Ok(Some((id, t)));
            }
        }
        Ok(None)
    }

    /// Closes the epoch: trailer, fsync; returns what to commit.
    fn seal(&mut self) -> Result<Option<PendingCommit>> {
        let (epoch, records) = match self.file.take() {
            None => (String::new(), 0),
            Some(file) => file.seal()?,
        };
        let transactional_id = match self.slot.take() {
            Some((id, t)) => {
                locked(&t).open = Open::Sealed(epoch.clone());
                id
            }
            None => self.transactional_id.clone(),
        };
        let pending = PendingEpoch {
            transactional_id,
            writer: self.transactional_id.clone(),
            epoch,
            records,
        };
        Ok(Some(
            serde_json::to_value(pending).expect("pending epochs serialize"),
        ))
    }
}

impl SinkWriter for SpoolWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.file.is_none() {
            self.file = Some(SpoolFile::create(&self.dir, &self.transactional_id)?);
            self.slot = self.open_slot()?;
        }
        let file = self.file.as_mut().expect("opened above");
        let Some((_, t)) = &self.slot else {
            return self
                .encoder
                .encode(batch, |key, value| Ok(file.append(key, value)?));
        };
        let t = locked(t);
        let topic = &self.topic;
        self.encoder.encode(batch, |key, value| {
            file.append(key, value)?;
            Ok(send_blocking(&t.producer, record(topic, key, value))?)
        })
    }
    fn pre_commit(&mut self) -> Result<Option<PendingCommit>> {
        self.seal()
    }
    fn finish(&mut self) -> Result<Option<PendingCommit>> {
        self.seal()
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> String {
        format!("kafka:{}", self.config.topic)
    }

    fn create_writer(
        &self,
        subtask: SubtaskInfo,
        schema: SchemaRef,
    ) -> Result<Box<dyn SinkWriter>> {
        let encoder = Encoder::new(&self.config, &schema)?;
        // Fail at start, with the topic's name, if it is missing or the brokers are down.
        let probe: BaseConsumer = self
            .config
            .connection
            .client_config()
            .create()
            .map_err(|e| kafka_error("creating a metadata client", e))?;
        self.config
            .connection
            .partitions_of(&probe, std::slice::from_ref(&self.config.topic))?;
        Ok(match &self.config.guarantee {
            DeliveryGuarantee::ExactlyOnce {
                spool_dir,
                transactional_id_prefix,
            } => {
                let transactional_id = format!("{transactional_id_prefix}-{}", subtask.index);
                // Fence producers an earlier run left with these ids now, so their open
                // transactions do not hold back read_committed consumers until they time out.
                for id in
                    std::iter::once(transactional_id.clone()).chain(slot_ids(&transactional_id))
                {
                    self.transactional(&id)?;
                }
                Box::new(SpoolWriter {
                    dir: spool_dir.clone(),
                    transactional_id,
                    topic: self.config.topic.clone(),
                    encoder,
                    file: None,
                    producers: self.producers.clone(),
                    slot: None,
                })
            }
            guarantee => Box::new(DirectWriter {
                producer: self.producer(None)?,
                topic: self.config.topic.clone(),
                encoder,
                flush_at_barriers: *guarantee == DeliveryGuarantee::AtLeastOnce,
                records: self.records.clone(),
            }),
        })
    }

    fn commit(&self, checkpoint: u64, pending: &[PendingCommit]) -> Result<()> {
        let epochs = pending
            .iter()
            .map(|p| decode_stored::<PendingEpoch>(p, "pending output of the Kafka sink"))
            .collect::<Result<Vec<_>>>()?;
        // Each writer's epochs in order; writers are independent transactions, side by side.
        let mut writers: Vec<Vec<&PendingEpoch>> = Vec::new();
        for epoch in &epochs {
            match writers.iter_mut().find(|w| w[0].writer() == epoch.writer()) {
                Some(w) => w.push(epoch),
                None => writers.push(vec![epoch]),
            }
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = writers
                .iter()
                .map(|w| scope.spawn(move || self.commit_writer(checkpoint, w)))
                .collect();
            for handle in handles {
                handle.join().map_err(|_| {
                    RuntimeError::Connector("a Kafka commit thread panicked".into())
                })??;
            }
            Ok(())
        })
    }

    fn roll_back_after(&self, checkpoint: u64) -> Result<()> {
        let Some(dir) = self.spool_dir() else {
            return Ok(());
        };
        // Epochs not committed by now belong to checkpoints after `checkpoint` (or none):
        // the replay produces them again. Their transactions, if a run in this process left
        // them open, are aborted (a producer that cannot abort is dropped: made again, it
        // fences the id).
        let producers: Vec<_> = locked(&self.producers)
            .iter()
            .map(|(id, t)| (id.clone(), t.clone()))
            .collect();
        for (id, t) in producers {
            let mut t = locked(&t);
            if t.open != Open::None {
                t.open = Open::None;
                if let Err(e) = t.producer.abort_transaction(TIMEOUT) {
                    tracing::warn!(transactional_id = %id, error = %e, "aborting a transaction failed; its producer is made again");
                    drop(t);
                    locked(&self.producers).remove(&id);
                }
            }
        }
        remove_all(dir)?;
        tracing::debug!(
            checkpoint,
            "kafka sink: dropped spooled epochs after the checkpoint"
        );
        Ok(())
    }
}

impl KafkaSinkConfig {
    /// Settings from a parsed `kafka://` URI. Options: `guarantee` (`none`,
    /// `at-least-once`, `exactly-once`), `key` (comma-separated columns), `format` (`json`,
    /// `raw`), `transactional-id` (the prefix), `connect-timeout-ms`. `exactly_once` is what
    /// exactly-once needs from the job (spool directory beside its checkpoints, and a default
    /// transactional id prefix); when given, exactly-once is the default guarantee, else
    /// at-least-once.
    pub fn from_uri(
        uri: &super::KafkaUri,
        exactly_once: Option<(PathBuf, String)>,
    ) -> ConnectorResult<Self> {
        uri.check_options(&[
            "guarantee",
            "key",
            "format",
            "transactional-id",
            "connect-timeout-ms",
        ])?;
        let bad = |reason: String| ConnectorError::Config {
            connector: "kafka sink",
            reason,
        };
        let guarantee = match (
            uri.options.get("guarantee").map(String::as_str),
            exactly_once,
        ) {
            (Some("none"), _) => DeliveryGuarantee::None,
            (Some("at-least-once"), _) | (None, None) => DeliveryGuarantee::AtLeastOnce,
            (Some("exactly-once") | None, Some((spool_dir, prefix))) => {
                DeliveryGuarantee::ExactlyOnce {
                    spool_dir,
                    transactional_id_prefix: uri
                        .options
                        .get("transactional-id")
                        .cloned()
                        .unwrap_or(prefix),
                }
            }
            (Some("exactly-once"), None) => {
                return Err(bad(
                    "exactly-once needs checkpoints (a checkpoint directory)".into(),
                ))
            }
            (Some(other), _) => {
                return Err(bad(format!(
                    "guarantee={other}: use none, at-least-once or exactly-once"
                )))
            }
        };
        let format = match uri.options.get("format").map(String::as_str) {
            None | Some("json") => OutputFormat::Json,
            Some("raw") => OutputFormat::Raw,
            Some(other) => return Err(bad(format!("format={other}: use json or raw"))),
        };
        Ok(KafkaSinkConfig {
            connection: super::KafkaConnection {
                brokers: uri.brokers.clone(),
                properties: uri.properties.clone(),
                connect_timeout: super::connect_timeout(uri)?,
            },
            topic: uri.topic.clone(),
            format,
            key_columns: uri
                .options
                .get("key")
                .map(|k| k.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            guarantee,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exactly_once_writer_spools_its_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter {
            dir: dir.path().to_path_buf(),
            transactional_id: "t-0".into(),
            encoder: Encoder {
                format: OutputFormat::Json,
                key_columns: vec![0],
                json: Vec::new(),
            },
            file: None,
            topic: "out".into(),
            // No slot's producer: the epoch is only spooled, as when both slots are busy.
            producers: Producers::default(),
            slot: None,
        };
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new("k", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(datafusion::arrow::array::Int64Array::from(vec![
                7, 8,
            ]))],
        )
        .unwrap();
        w.write(&batch).unwrap();
        let pending: PendingEpoch =
            serde_json::from_value(w.pre_commit().unwrap().unwrap()).unwrap();
        assert_eq!(pending.records, 2);
        assert!(pending.epoch.starts_with("epoch-t-0-"), "{}", pending.epoch);
        let path = dir.path().join(&pending.epoch);
        let records = read_spool(&path, 2, "kafka sink").unwrap();
        assert_eq!(records[0], (Some(b"7".to_vec()), br#"{"k":7}"#.to_vec()));
        assert_eq!(records[1].1, br#"{"k":8}"#.to_vec());
        // An empty epoch has no file and still names its transactional id (to fence it).
        let empty: PendingEpoch = serde_json::from_value(w.pre_commit().unwrap().unwrap()).unwrap();
        assert_eq!((empty.records, empty.transactional_id.as_str()), (0, "t-0"));
    }
}
