//! The NATS JetStream sink: JSON messages on one subject, published with a `Nats-Msg-Id`.
//!
//! Exactly once (with checkpoints): a writer spools each epoch beside the checkpoints (the
//! Kafka sink's spool), and [`Sink::commit`] publishes it once the checkpoint's manifest is
//! written, message `i` of epoch `E` with id `E-i`. Epoch names are unique (writer, process,
//! counter), and a commit replayed after a crash publishes the same messages with the same
//! ids, which JetStream drops as duplicates when they arrive within the stream's duplicate
//! window (2 minutes unless the stream says otherwise). So the stream holds each result exactly
//! once as long as a failed commit is replayed within that window; later than that, a replay
//! can duplicate the epoch's messages (at least once). Without checkpoints messages are
//! published as they come and their acknowledgements awaited at each barrier: at least once.

use super::{nats_error, NatsConnection, NatsUri};
use crate::error::{ConnectorError, Result as ConnectorResult};
use crate::io_runtime::run;
use crate::json::json_values;
use crate::spool::{read_spool, remove_all, remove_spool, SpoolFile};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use oxflow_runtime::checkpoint::decode_stored;
use oxflow_runtime::clock::{Clock, SystemClock};
use oxflow_runtime::sink::{PendingCommit, Sink, SinkWriter};
use oxflow_runtime::{Result, RuntimeError, SubtaskInfo};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a NATS sink promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsSinkGuarantee {
    /// Publish as records come; every barrier waits for the server's acknowledgements.
    AtLeastOnce,
    /// Publish each epoch at its checkpoint's commit with message ids the server deduplicates
    /// (exactly once within the stream's duplicate window).
    ExactlyOnce {
        /// Where epochs wait for their checkpoint (beside the checkpoints).
        spool_dir: PathBuf,
        /// Names the writers (`<prefix>-<subtask>`): unique per job, stable across restarts.
        writer_prefix: String,
    },
}

/// Settings of a [`NatsSink`].
#[derive(Debug, Clone)]
pub struct NatsSinkConfig {
    /// Servers and credentials.
    pub connection: NatsConnection,
    /// The stream the subject belongs to (checked at start).
    pub stream: String,
    /// The subject messages are published on.
    pub subject: String,
    /// The guarantee.
    pub guarantee: NatsSinkGuarantee,
}

impl NatsSinkConfig {
    /// Settings from a parsed `nats://` URI. Options: `subject` (required), `guarantee`
    /// (`at-least-once`, `exactly-once`), `connect-timeout-ms`. `exactly_once`: the spool
    /// directory and writer prefix a checkpointed job provides; exactly-once is then the
    /// default.
    pub fn from_uri(
        uri: &NatsUri,
        exactly_once: Option<(PathBuf, String)>,
    ) -> ConnectorResult<Self> {
        uri.check_options(&["subject", "guarantee", "connect-timeout-ms"])?;
        let bad = |reason: String| ConnectorError::Config {
            connector: "nats sink",
            reason,
        };
        let subject = uri
            .options
            .get("subject")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("name the subject to publish on with subject=".into()))?;
        if subject.contains(['*', '>', ' ']) {
            return Err(bad(format!(
                "subject `{subject}` has a wildcard or a space"
            )));
        }
        let guarantee = match (
            uri.options.get("guarantee").map(String::as_str),
            exactly_once,
        ) {
            (Some("at-least-once"), _) | (None, None) => NatsSinkGuarantee::AtLeastOnce,
            (Some("exactly-once") | None, Some((spool_dir, writer_prefix))) => {
                NatsSinkGuarantee::ExactlyOnce {
                    spool_dir,
                    writer_prefix,
                }
            }
            (Some("exactly-once"), None) => {
                return Err(bad(
                    "exactly-once needs checkpoints (a checkpoint directory)".into(),
                ))
            }
            (Some(other), _) => {
                return Err(bad(format!(
                    "guarantee={other}: use at-least-once or exactly-once"
                )))
            }
        };
        Ok(NatsSinkConfig {
            connection: uri.connection()?,
            stream: uri.stream.clone(),
            subject: subject.clone(),
            guarantee,
        })
    }
}

/// Writes JSON messages to a JetStream subject. Clones share one client and counters.
#[derive(Clone)]
pub struct NatsSink {
    config: NatsSinkConfig,
    /// One client for every writer and commit of the sink, made on first use.
    client: Arc<Mutex<Option<async_nats::jetstream::Context>>>,
    published: Arc<AtomicU64>,
    duplicates: Arc<AtomicU64>,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink")
            .field("stream", &self.config.stream)
            .field("subject", &self.config.subject)
            .finish_non_exhaustive()
    }
}

/// Tells apart the at-least-once writers of this process.
static NEXT_WRITER: AtomicU64 = AtomicU64::new(0);

/// What an exactly-once writer hands over at a barrier.
#[derive(Debug, Serialize, Deserialize)]
struct PendingEpoch {
    /// The spool file (and message id prefix); empty: no records.
    epoch: String,
    records: u64,
}

/// Most acknowledgements awaited at once: enough to keep the connection busy, few enough that
/// a failure resends little.
const IN_FLIGHT: usize = 1024;

impl NatsSink {
    /// A sink with `config`; checks the settings, not the servers (a writer does that).
    pub fn try_new(config: NatsSinkConfig) -> ConnectorResult<Self> {
        if let NatsSinkGuarantee::ExactlyOnce {
            spool_dir,
            writer_prefix,
        } = &config.guarantee
        {
            if writer_prefix.is_empty() {
                return Err(ConnectorError::Config {
                    connector: "nats sink",
                    reason: "exactly-once needs a writer prefix".into(),
                });
            }
            std::fs::create_dir_all(spool_dir).map_err(|e| {
                ConnectorError::io(
                    format!("creating spool directory {}", spool_dir.display()),
                    e,
                )
            })?;
        }
        Ok(NatsSink {
            config,
            client: Arc::default(),
            published: Arc::default(),
            duplicates: Arc::default(),
        })
    }

    /// Messages the server stored (for exactly-once: committed) so far by this process.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Messages the server reported as duplicates (replayed commits) so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// The shared client, connecting (with retries) on first use; checks that the stream
    /// exists and takes the subject.
    fn client(&self) -> ConnectorResult<async_nats::jetstream::Context> {
        let mut client = self.client.lock().expect("not poisoned");
        if let Some(c) = client.as_ref() {
            return Ok(c.clone());
        }
        let (connection, stream, subject) = (
            self.config.connection.clone(),
            self.config.stream.clone(),
            self.config.subject.clone(),
        );
        let js = run(async move {
            let js = connection.connect_with_retry().await?;
            let mut s = js
                .get_stream(&stream)
                .await
                .map_err(|e| nats_error(format!("looking up stream {stream}"), e))?;
            let info = s
                .info()
                .await
                .map_err(|e| nats_error(format!("reading stream {stream}"), e))?;
            let takes = info
                .config
                .subjects
                .iter()
                .any(|f| subject_matches(f, &subject));
            if !takes {
                return Err(ConnectorError::Config {
                    connector: "nats sink",
                    reason: format!(
                        "stream {stream} does not take subject `{subject}` (its subjects: {:?})",
                        info.config.subjects
                    ),
                });
            }
            tracing::info!(%stream, window_s = info.config.duplicate_window.as_secs(), "NATS sink: the stream's duplicate window bounds exactly-once replays");
            Ok(js)
        })?;
        *client = Some(js.clone());
        Ok(js)
    }

    fn spool_dir(&self) -> Option<&std::path::Path> {
        match &self.config.guarantee {
            NatsSinkGuarantee::ExactlyOnce { spool_dir, .. } => Some(spool_dir),
            NatsSinkGuarantee::AtLeastOnce => None,
        }
    }

    /// Publishes messages with their ids and waits for every acknowledgement; retries the
    /// whole set (the ids make that safe) while the servers cannot be reached, up to the
    /// connect timeout.
    fn publish(&self, messages: Vec<(String, bytes::Bytes)>, what: &str) -> ConnectorResult<()> {
        let js = self.client()?;
        let messages = Arc::new(messages);
        let clock = SystemClock::new();
        let mut backoff = Duration::from_millis(100);
        loop {
            let (js, subject, batch) = (js.clone(), self.config.subject.clone(), messages.clone());
            let sent = run(async move { publish_all(&js, &subject, &batch).await });
            match sent {
                Ok((stored, duplicates)) => {
                    self.published.fetch_add(stored, Ordering::Relaxed);
                    self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
                    if duplicates > 0 {
                        tracing::info!(
                            duplicates,
                            what,
                            "NATS dropped messages already published (a replayed commit)"
                        );
                    }
                    return Ok(());
                }
                Err(e) => match self.config.connection.connect_timeout {
                    Some(limit) if clock.elapsed() < limit => {
                        tracing::warn!(error = %e, what, "publishing to NATS failed, retrying");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                    _ => return Err(e),
                },
            }
        }
    }
}

/// Whether subject filter `filter` (with `*` and `>` wildcards) takes `subject`.
fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Publishes `messages` with `Nats-Msg-Id` headers, keeping up to [`IN_FLIGHT`]
/// acknowledgements outstanding: (stored, dropped as duplicates).
async fn publish_all(
    js: &async_nats::jetstream::Context,
    subject: &str,
    messages: &[(String, bytes::Bytes)],
) -> ConnectorResult<(u64, u64)> {
    let failed = |e: &dyn std::fmt::Display| nats_error(format!("publishing to {subject}"), e);
    let mut acks = VecDeque::new();
    let (mut stored, mut duplicates) = (0u64, 0u64);
    let mut settle = |ack: async_nats::jetstream::publish::PublishAck| {
        if ack.duplicate {
            duplicates += 1;
        } else {
            stored += 1;
        }
    };
    for (id, payload) in messages {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        let ack = js
            .publish_with_headers(subject.to_string(), headers, payload.clone())
            .await
            .map_err(|e| failed(&e))?;
        acks.push_back(ack);
        if acks.len() >= IN_FLIGHT {
            let ack = acks
                .pop_front()
                .expect("non-empty")
                .await
                .map_err(|e| failed(&e))?;
            settle(ack);
        }
    }
    while let Some(ack) = acks.pop_front() {
        settle(ack.await.map_err(|e| failed(&e))?);
    }
    Ok((stored, duplicates))
}

/// A writer that publishes as it goes (at least once).
struct DirectWriter {
    sink: NatsSink,
    name: String,
    next: u64,
    buffer: Vec<u8>,
}

impl SinkWriter for DirectWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let values = json_values(batch, &mut self.buffer)?;
        let messages = values
            .into_iter()
            .map(|v| {
                self.next += 1;
                (format!("{}-{}", self.name, self.next), v)
            })
            .collect();
        Ok(self.sink.publish(messages, "records")?)
    }
    fn finish(&mut self) -> Result<Option<PendingCommit>> {
        Ok(None)
    }
}

/// An exactly-once writer: spools each epoch.
struct SpoolWriter {
    dir: PathBuf,
    writer: String,
    file: Option<SpoolFile>,
    buffer: Vec<u8>,
}

impl SpoolWriter {
    fn seal(&mut self) -> Result<Option<PendingCommit>> {
        let Some(file) = self.file.take() else {
            return Ok(None);
        };
        let (epoch, records) = file.seal()?;
        Ok(Some(
            serde_json::to_value(PendingEpoch { epoch, records })
                .expect("pending epochs serialize"),
        ))
    }
}

impl SinkWriter for SpoolWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.file.is_none() {
            self.file = Some(SpoolFile::create(&self.dir, &self.writer)?);
        }
        let file = self.file.as_mut().expect("opened above");
        for value in json_values(batch, &mut self.buffer)? {
            file.append(None, &value)?;
        }
        Ok(())
    }
    fn pre_commit(&mut self) -> Result<Option<PendingCommit>> {
        self.seal()
    }
    fn finish(&mut self) -> Result<Option<PendingCommit>> {
        self.seal()
    }
}

impl Sink for NatsSink {
    fn name(&self) -> String {
        format!("nats:{}", self.config.subject)
    }
    fn create_writer(&self, subtask: SubtaskInfo, _: SchemaRef) -> Result<Box<dyn SinkWriter>> {
        // Fail at start, naming the stream, if it is missing or the servers are down.
        self.client()?;
        Ok(match &self.config.guarantee {
            NatsSinkGuarantee::ExactlyOnce {
                spool_dir,
                writer_prefix,
            } => Box::new(SpoolWriter {
                dir: spool_dir.clone(),
                writer: format!("{writer_prefix}-{}", subtask.index),
                file: None,
                buffer: Vec::new(),
            }),
            NatsSinkGuarantee::AtLeastOnce => Box::new(DirectWriter {
                sink: self.clone(),
                // Unique per writer, also across restarts within one process: ids the server
                // has seen within its window would be dropped as duplicates.
                name: format!(
                    "oxflow-{}-{:016x}-{}",
                    subtask.index,
                    crate::spool::process_token(),
                    NEXT_WRITER.fetch_add(1, Ordering::Relaxed)
                ),
                next: 0,
                buffer: Vec::new(),
            }),
        })
    }
    fn commit(&self, checkpoint: u64, pending: &[PendingCommit]) -> Result<()> {
        let Some(dir) = self.spool_dir() else {
            return Ok(());
        };
        for p in pending {
            let epoch: PendingEpoch = decode_stored(p, "pending output of the NATS sink")?;
            if epoch.records == 0 || epoch.epoch.is_empty() {
                continue;
            }
            if epoch.epoch.contains(['/', '\\'])
                || !epoch.epoch.starts_with(crate::spool::SPOOL_PREFIX)
            {
                return Err(RuntimeError::Checkpoint(format!(
                    "pending output `{}` is not a spooled epoch of the NATS sink",
                    epoch.epoch
                )));
            }
            let path = dir.join(&epoch.epoch);
            if !path.exists() {
                // Committed and removed before (a commit replayed after a crash).
                continue;
            }
            let records = read_spool(&path, epoch.records, "nats sink")?;
            let messages = records
                .into_iter()
                .enumerate()
                .map(|(i, (_, value))| (format!("{}-{i}", epoch.epoch), bytes::Bytes::from(value)))
                .collect();
            self.publish(messages, &format!("checkpoint {checkpoint}"))?;
            remove_spool(&path)?;
        }
        Ok(())
    }
    fn roll_back_after(&self, checkpoint: u64) -> Result<()> {
        if let Some(dir) = self.spool_dir() {
            // Epochs not committed by now belong to later checkpoints (or none): the replay
            // produces them again, in new epochs.
            remove_all(dir)?;
            tracing::debug!(
                checkpoint,
                "nats sink: dropped spooled epochs after the checkpoint"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_filters_as_nats_does() {
        assert!(subject_matches("bids", "bids"));
        assert!(subject_matches("bids.*", "bids.eu"));
        assert!(!subject_matches("bids.*", "bids.eu.x"));
        assert!(subject_matches("bids.>", "bids.eu.x"));
        assert!(!subject_matches("bids.>", "bids"));
        assert!(!subject_matches("asks", "bids"));
    }

    #[test]
    fn sink_uris_need_a_plain_subject_and_checkpoints_for_exactly_once() {
        let uri = |q: &str| NatsUri::parse(&format!("nats://127.0.0.1:4222/OUT?{q}")).unwrap();
        let e = NatsSinkConfig::from_uri(&uri(""), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("subject="), "{e}");
        let e = NatsSinkConfig::from_uri(&uri("subject=a.*"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("wildcard"), "{e}");
        let e = NatsSinkConfig::from_uri(&uri("subject=a&guarantee=exactly-once"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs checkpoints"), "{e}");
        let c = NatsSinkConfig::from_uri(&uri("subject=a"), Some(("/tmp/x".into(), "p".into())))
            .unwrap();
        assert!(matches!(c.guarantee, NatsSinkGuarantee::ExactlyOnce { .. }));
        let c = NatsSinkConfig::from_uri(&uri("subject=a"), None).unwrap();
        assert_eq!(c.guarantee, NatsSinkGuarantee::AtLeastOnce);
    }
}
