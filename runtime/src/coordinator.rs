//! The checkpoint coordinator: triggers checkpoints, collects every subtask's acknowledgement,
//! writes the manifest, then tells the sink to commit. Runs on its own thread beside a job.

// Checkpoint intervals and durations are wall time by nature.
#![allow(clippy::disallowed_methods)]

use crate::checkpoint::{
    apply_retention, checkpoint_dir, copy_checkpoint, write_manifest, CheckpointConfig, Manifest,
    StageSnapshot, TaskSnapshot,
};
use crate::error::{Result, RuntimeError};
use crate::metrics::{CheckpointHistory, CheckpointRecord, CheckpointStatus, Counter, JobMetrics};
use crate::sink::{PendingCommit, SinkRef};
use crate::source::SourceReader;
use crate::store::{save_checkpoint, upload};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a subtask tells the coordinator, in its process or from a worker's.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskReport {
    /// The subtask has taken its part of checkpoint `id`.
    Ack {
        /// The checkpoint.
        id: u64,
        /// The subtask's stage.
        stage: usize,
        /// The subtask's index.
        subtask: usize,
        /// Its part.
        snapshot: TaskSnapshot,
        /// Bytes of state files it added.
        new_bytes: u64,
        /// How long it held inputs back to align the barrier.
        alignment_ms: u64,
    },
    /// The subtask could not take its part of checkpoint `id`.
    Decline {
        /// The checkpoint.
        id: u64,
        /// Why, naming the subtask.
        reason: String,
    },
    /// The subtask has ended (its inputs all ended, or its source split was read to the
    /// end) and sent end-of-stream on. Later checkpoints take `snapshot` as its part: it
    /// holds no state (a finished subtask's state is never read again: nothing reaches it
    /// any more, and what it emitted is downstream, before every later barrier), only a
    /// source split's final position, so that a restore starts that split at its end.
    Finished {
        /// The subtask's stage.
        stage: usize,
        /// The subtask's index.
        subtask: usize,
        /// A source split's final position (no state).
        snapshot: TaskSnapshot,
        /// Whether it read a source split (once all have ended, no checkpoint starts).
        source: bool,
    },
    /// The sink subtask reached the end of input with this output pending.
    Final {
        /// The sink subtask's index.
        subtask: usize,
        /// Its output pending commit.
        pending: Option<PendingCommit>,
    },
}

/// What a subtask hands the coordinator: its report and, when a source split ends, the
/// split's reader (which stays in the subtask's process: a worker keeps it, and tells it of
/// later checkpoints itself).
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) task: TaskReport,
    pub(crate) reader: Option<FinishedReader>,
}

impl From<TaskReport> for Report {
    fn from(task: TaskReport) -> Report {
        Report { task, reader: None }
    }
}

/// Where the reports of tasks running elsewhere are handed to this job's coordinator.
#[derive(Clone)]
pub struct ReportSender(pub(crate) Sender<Report>);

impl ReportSender {
    /// Hands `report` over; false once the coordinator has ended.
    pub fn send(&self, report: TaskReport) -> bool {
        self.0.send(report.into()).is_ok()
    }
}

/// The reader of a source split that has ended.
pub(crate) struct FinishedReader(pub Box<dyn SourceReader>);

impl std::fmt::Debug for FinishedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FinishedReader")
    }
}

/// The shape of a job, as a manifest records it.
#[derive(Debug, Clone)]
pub(crate) struct JobShape {
    pub stages: Vec<(String, Vec<String>, usize)>,
    /// Each operator's state fingerprint, stage by stage.
    pub fingerprints: Vec<Vec<String>>,
    pub max_parallelism: usize,
    /// How many subtasks read a source (once all have ended, no checkpoint is started).
    pub sources: usize,
}

/// Requests for savepoints, shared with whoever holds the job's handle.
#[derive(Debug, Clone, Default)]
pub struct SavepointRequests(Arc<Mutex<Vec<SavepointRequest>>>);

/// A savepoint's name, and where to send its path.
type SavepointRequest = (String, Sender<Result<PathBuf>>);

impl SavepointRequests {
    /// Asks for a savepoint called `name` (kept under `DIR/savepoints/NAME`, never deleted by
    /// retention); the receiver gets its path once the checkpoint behind it completes.
    pub fn request(&self, name: &str) -> Receiver<Result<PathBuf>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && !name.starts_with('.');
        if valid {
            self.0
                .lock()
                .expect("savepoint lock is never held across a panic")
                .push((name.to_string(), tx));
        } else {
            let _ = tx.send(Err(RuntimeError::InvalidJob(format!(
                "savepoint name `{name}` must be letters, digits, `-`, `_` or `.`, not starting with `.`"
            ))));
        }
        rx
    }
    fn waiting(&self) -> bool {
        !self
            .0
            .lock()
            .expect("savepoint lock is never held across a panic")
            .is_empty()
    }
    fn take(&self) -> Vec<SavepointRequest> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .expect("savepoint lock is never held across a panic"),
        )
    }
}

/// Figures of a job's checkpoints.
#[derive(Debug, Clone, Default)]
pub struct CheckpointStats {
    /// Checkpoints completed in this run (the final one at end of input included).
    pub completed: u64,
    /// Id of the last completed checkpoint.
    pub last_id: Option<u64>,
    /// Trigger to manifest of the last completed checkpoint (not the end-of-input one).
    pub last_duration: Option<Duration>,
    /// Size of the state files of the last completed checkpoint.
    pub state_bytes: u64,
    /// Bytes of state files the last completed checkpoint added.
    pub new_state_bytes: u64,
}

struct Pending {
    id: u64,
    started: Instant,
    triggered_at_ms: u64,
    alignment_ms: u64,
    acks: Vec<Vec<Option<TaskSnapshot>>>,
    missing: usize,
    new_bytes: u64,
    savepoints: Vec<SavepointRequest>,
}

pub(crate) struct Coordinator {
    pub config: Option<CheckpointConfig>,
    pub trigger: Arc<AtomicU64>,
    /// The last checkpoint that completed (manifest written, sink committed), for the source
    /// readers still running.
    pub completed: Arc<AtomicU64>,
    pub next_id: u64,
    pub shape: JobShape,
    pub sink: SinkRef,
    pub savepoints: SavepointRequests,
    pub stats: CheckpointStats,
    pub finals: Vec<Option<PendingCommit>>,
    /// What each subtask that has ended contributes to later checkpoints, stage by stage.
    finished: Vec<Vec<Option<TaskSnapshot>>>,
    /// Source splits that have ended.
    sources_finished: usize,
    /// Their readers, told of each checkpoint that completes after they ended.
    finished_readers: Vec<Box<dyn SourceReader>>,
    /// Sink output handed over for checkpoints that were abandoned: it is committed with the
    /// next one that completes (or at the end), never dropped.
    carried: Vec<PendingCommit>,
    pub completed_counter: Counter,
    pub last_id_counter: Counter,
    pub duration_counter: Counter,
    pub bytes_counter: Counter,
    /// Bytes the last checkpoint uploaded to the checkpoint store, and how long it took.
    uploaded_counter: Counter,
    upload_ms_counter: Counter,
    history: CheckpointHistory,
    pending: Option<Pending>,
    /// When the last checkpoint was triggered: the interval counts from there, as in Flink,
    /// so a checkpoint that takes a while does not stretch the time between two.
    last_trigger: Instant,
    /// When a checkpoint last ended (completed or abandoned), for the minimum pause.
    last_done: Instant,
    /// Whether the tasks upload their state files to the store themselves (they run on
    /// workers): the checkpoint directory then holds manifests only.
    pub(crate) state_in_store: bool,
}

impl Coordinator {
    pub(crate) fn new(
        config: Option<CheckpointConfig>,
        next_id: u64,
        shape: JobShape,
        sink: SinkRef,
        savepoints: SavepointRequests,
        metrics: &JobMetrics,
        history: CheckpointHistory,
    ) -> Self {
        let sinks = shape.stages.last().map_or(0, |s| s.2);
        let finished = shape
            .stages
            .iter()
            .map(|(_, _, p)| vec![None; *p])
            .collect();
        Coordinator {
            config,
            trigger: Arc::new(AtomicU64::new(0)),
            completed: Arc::new(AtomicU64::new(0)),
            next_id,
            shape,
            sink,
            savepoints,
            stats: CheckpointStats::default(),
            finals: vec![None; sinks],
            finished,
            sources_finished: 0,
            finished_readers: Vec::new(),
            carried: Vec::new(),
            completed_counter: metrics.counter("checkpoints.completed"),
            last_id_counter: metrics.counter("checkpoints.last_id"),
            duration_counter: metrics.counter("checkpoints.last_duration_ms"),
            bytes_counter: metrics.counter("checkpoints.state_bytes"),
            uploaded_counter: metrics.counter("checkpoints.uploaded_bytes"),
            upload_ms_counter: metrics.counter("checkpoints.last_upload_ms"),
            history,
            pending: None,
            last_trigger: Instant::now(),
            last_done: Instant::now(),
            state_in_store: false,
        }
    }

    /// How long until the next checkpoint is due: an interval after the last trigger, and
    /// at least the minimum pause after the last one ended.
    fn due_in(&self, config: &CheckpointConfig) -> Duration {
        let at = (self.last_trigger + config.interval).max(self.last_done + config.min_pause);
        at.saturating_duration_since(Instant::now())
    }

    /// Runs until every subtask has dropped its sender. An error (a manifest that could not
    /// be written, a commit that failed) ends the job.
    pub(crate) fn run(&mut self, reports: Receiver<Report>) -> Result<()> {
        loop {
            let wait = match (&self.config, &self.pending) {
                (Some(c), None) if self.sources_running() => self.due_in(c),
                _ => Duration::from_millis(100),
            };
            match reports.recv_timeout(wait) {
                Ok(report) => self.handle(report)?,
                Err(RecvTimeoutError::Timeout) => {
                    let due = self
                        .config
                        .as_ref()
                        .is_some_and(|c| self.due_in(c).is_zero());
                    let asked = self.config.is_some() && self.savepoints.waiting();
                    if self.pending.is_none() && self.sources_running() && (due || asked) {
                        self.start();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    }

    /// Takes in one subtask's report.
    fn handle(&mut self, report: Report) -> Result<()> {
        let Report { task, reader } = report;
        match task {
            TaskReport::Ack {
                id,
                stage,
                subtask,
                snapshot,
                new_bytes,
                alignment_ms,
            } => {
                let Some(p) = self.pending.as_mut().filter(|p| p.id == id) else {
                    // A late part of an abandoned checkpoint: its sink output still counts.
                    self.carried.extend(snapshot.sink);
                    return Ok(());
                };
                if p.acks[stage][subtask].replace(snapshot).is_none() {
                    p.missing -= 1;
                    p.new_bytes += new_bytes;
                    p.alignment_ms = p.alignment_ms.max(alignment_ms);
                }
                if p.missing == 0 {
                    let p = self.pending.take().expect("just matched");
                    self.complete(p)?;
                    self.last_done = Instant::now();
                }
            }
            TaskReport::Decline { id, reason } => {
                if self.pending.as_ref().is_some_and(|p| p.id == id) {
                    tracing::warn!(checkpoint = id, %reason, "checkpoint abandoned");
                    self.abandon(&format!("checkpoint {id} was abandoned: {reason}"));
                    self.last_done = Instant::now();
                }
            }
            TaskReport::Finished {
                stage,
                subtask,
                snapshot,
                source,
            } => {
                if source {
                    self.sources_finished += 1;
                }
                if let Some(reader) = reader {
                    self.finished_readers.push(reader.0);
                }
                let last = stage + 1 == self.shape.stages.len();
                let mut part = snapshot.clone();
                self.finished[stage][subtask] = Some(snapshot);
                if let Some(p) = self.pending.as_mut() {
                    if p.acks[stage][subtask].is_none() {
                        // It ended before the barrier reached it: everything it did comes
                        // before the barrier, its sink's last output included.
                        if last {
                            part.sink = self.finals[subtask].take();
                        }
                        p.acks[stage][subtask] = Some(part);
                        p.missing -= 1;
                        if p.missing == 0 {
                            let p = self.pending.take().expect("just matched");
                            self.complete(p)?;
                            self.last_done = Instant::now();
                        }
                    }
                }
            }
            TaskReport::Final { subtask, pending } => self.finals[subtask] = pending,
        }
        Ok(())
    }

    /// Whether a source split is still reading (a checkpoint can then still be taken).
    fn sources_running(&self) -> bool {
        self.sources_finished < self.shape.sources
    }

    fn start(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        // Subtasks that have ended take part with what they left; a sink's output since its
        // last barrier goes into this checkpoint.
        let last = self.finished.len().saturating_sub(1);
        let mut acks = self.finished.clone();
        for (subtask, ack) in acks[last].iter_mut().enumerate() {
            if let Some(ack) = ack {
                ack.sink = self.finals[subtask].take();
            }
        }
        let missing = acks.iter().flatten().filter(|a| a.is_none()).count();
        self.pending = Some(Pending {
            id,
            started: Instant::now(),
            triggered_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            alignment_ms: 0,
            acks,
            missing,
            new_bytes: 0,
            savepoints: self.savepoints.take(),
        });
        self.last_trigger = Instant::now();
        tracing::debug!(checkpoint = id, "checkpoint triggered");
        self.trigger.store(id, Ordering::SeqCst);
    }

    fn abandon(&mut self, why: &str) {
        if let Some(p) = self.pending.take() {
            self.history.push(CheckpointRecord {
                id: p.id,
                status: CheckpointStatus::Abandoned,
                triggered_at_ms: p.triggered_at_ms,
                duration_ms: p.started.elapsed().as_millis() as u64,
                alignment_ms: p.alignment_ms,
                state_bytes: 0,
                new_bytes: 0,
                savepoint: !p.savepoints.is_empty(),
                reason: Some(why.to_string()),
            });
            let sinks = p.acks.last().into_iter().flatten().flatten();
            self.carried.extend(sinks.filter_map(|t| t.sink.clone()));
            for (_, reply) in p.savepoints {
                let _ = reply.send(Err(RuntimeError::Checkpoint(why.to_string())));
            }
        }
    }

    fn manifest(&mut self, id: u64, finished: bool, stages: Vec<Vec<TaskSnapshot>>) -> Manifest {
        let mut sink_pending = std::mem::take(&mut self.carried);
        if let Some(last) = stages.last() {
            sink_pending.extend(last.iter().filter_map(|t| t.sink.clone()));
        }
        let state_bytes = stages
            .iter()
            .flatten()
            .flat_map(|t| &t.files)
            .map(|f| f.size)
            .sum();
        Manifest {
            format: 1,
            id,
            finished,
            max_parallelism: self.shape.max_parallelism,
            duration_ms: 0,
            state_bytes,
            new_state_bytes: 0,
            stages: self
                .shape
                .stages
                .iter()
                .zip(&self.shape.fingerprints)
                .zip(stages)
                .map(
                    |(((name, operators, _), fingerprints), subtasks)| StageSnapshot {
                        name: name.clone(),
                        operators: operators.clone(),
                        fingerprints: fingerprints.clone(),
                        subtasks,
                    },
                )
                .collect(),
            sink_pending,
        }
    }

    /// Writes the manifest, commits the sink's output of the checkpoint, then tells the
    /// source readers it has completed.
    fn publish(&mut self, manifest: &Manifest) -> Result<PathBuf> {
        let config = self.config.as_ref().expect("checkpoints are on");
        let dir = checkpoint_dir(&config.dir, manifest.id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
        write_manifest(&dir, manifest)?;
        if let Some(store) = &config.store {
            // In the store before any output is committed from it: a job restored elsewhere
            // never finds output committed from a checkpoint the store lacks.
            let started = Instant::now();
            let bytes = upload(store.0.as_ref(), &dir, manifest, config.retained)?;
            self.uploaded_counter.set(bytes);
            let upload_ms = started.elapsed().as_millis() as u64;
            self.upload_ms_counter.set(upload_ms);
            tracing::info!(checkpoint = manifest.id, uploaded_bytes = bytes, upload_ms, store = ?store, "checkpoint copied to the store");
        }
        self.sink.commit(manifest.id, &manifest.sink_pending)?;
        apply_retention(&config.dir, config.retained)?;
        self.notify_completed(manifest.id);
        self.stats.completed += 1;
        self.stats.last_id = Some(manifest.id);
        self.completed_counter.set(self.stats.completed);
        self.last_id_counter.set(manifest.id);
        if !manifest.finished {
            // The end-of-input manifest holds no state; the figures stay the last real ones.
            self.stats.state_bytes = manifest.state_bytes;
            self.stats.new_state_bytes = manifest.new_state_bytes;
            self.bytes_counter.set(manifest.state_bytes);
        }
        Ok(dir)
    }

    /// Checkpoint `id` has completed: running readers see it through `completed`, ended ones
    /// are told here. An ended reader that cannot act on it (a queue's acknowledgement lost
    /// with its connection) leaves its messages to be delivered again: at least once.
    fn notify_completed(&mut self, id: u64) {
        self.completed.store(id, Ordering::SeqCst);
        for reader in &mut self.finished_readers {
            if let Err(e) = reader.checkpoint_complete(id) {
                tracing::warn!(checkpoint = id, error = %e, "a finished source split could not act on a completed checkpoint");
            }
        }
    }

    fn complete(&mut self, p: Pending) -> Result<()> {
        let stages: Vec<Vec<TaskSnapshot>> = p
            .acks
            .into_iter()
            .map(|s| {
                s.into_iter()
                    .map(|t| t.expect("all acknowledged"))
                    .collect()
            })
            .collect();
        let mut manifest = self.manifest(p.id, false, stages);
        let duration = p.started.elapsed();
        manifest.duration_ms = duration.as_millis() as u64;
        manifest.new_state_bytes = p.new_bytes;
        let dir = self.publish(&manifest)?;
        self.history.push(CheckpointRecord {
            id: p.id,
            status: CheckpointStatus::Completed,
            triggered_at_ms: p.triggered_at_ms,
            duration_ms: manifest.duration_ms,
            alignment_ms: p.alignment_ms,
            state_bytes: manifest.state_bytes,
            new_bytes: manifest.new_state_bytes,
            savepoint: !p.savepoints.is_empty(),
            reason: None,
        });
        self.stats.last_duration = Some(duration);
        self.duration_counter.set(manifest.duration_ms);
        tracing::info!(
            checkpoint = p.id,
            duration_ms = manifest.duration_ms,
            state_bytes = manifest.state_bytes,
            new_state_bytes = manifest.new_state_bytes,
            "checkpoint completed"
        );
        let config = self.config.as_ref().expect("checkpoints are on");
        for (name, reply) in p.savepoints {
            let target = config.dir.join("savepoints").join(&name);
            let saved = match &config.store {
                // The state files are in the store, not here.
                Some(store) if self.state_in_store => {
                    save_checkpoint(store.0.as_ref(), &manifest, &target)
                }
                _ => copy_checkpoint(&dir, &target),
            };
            let _ = reply.send(saved.map(|_| target));
        }
        Ok(())
    }

    /// The job has read all its input and every subtask succeeded: commit the sink's last
    /// output, after recording it in a final manifest when checkpoints are on (so that a crash
    /// during the commit is healed by a restore, which commits it again).
    pub(crate) fn finish(&mut self) -> Result<()> {
        self.abandon("the job ended first");
        for (_, reply) in self.savepoints.take() {
            let _ = reply.send(Err(RuntimeError::Checkpoint(
                "no savepoint: the job ended, or runs without a checkpoint directory".into(),
            )));
        }
        if self.config.is_none() {
            let mut pending = std::mem::take(&mut self.carried);
            pending.extend(self.finals.iter().flatten().cloned());
            return self.sink.commit(0, &pending);
        }
        let mut stages: Vec<Vec<TaskSnapshot>> = self
            .shape
            .stages
            .iter()
            .map(|(_, _, p)| vec![TaskSnapshot::default(); *p])
            .collect();
        if let Some(last) = stages.last_mut() {
            for (task, pending) in last.iter_mut().zip(&self.finals) {
                task.sink = pending.clone();
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let manifest = self.manifest(id, true, stages);
        self.publish(&manifest)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::read_manifest;
    use crate::sink::{Sink, SinkWriter};
    use crate::SubtaskInfo;
    use datafusion::arrow::datatypes::SchemaRef;
    use serde_json::json;

    /// Records what it is asked to commit; the first `fail` commits fail, as a crash right
    /// after the manifest is written would leave them undone.
    #[derive(Default)]
    struct RecordingSink {
        committed: Mutex<Vec<PendingCommit>>,
        fail: AtomicU64,
    }

    impl Sink for RecordingSink {
        fn name(&self) -> String {
            "recording".into()
        }
        fn create_writer(&self, _: SubtaskInfo, _: SchemaRef) -> Result<Box<dyn SinkWriter>> {
            Err(RuntimeError::InvalidJob("not run".into()))
        }
        fn commit(&self, _: u64, pending: &[PendingCommit]) -> Result<()> {
            if self.fail.load(Ordering::SeqCst) > 0 {
                self.fail.fetch_sub(1, Ordering::SeqCst);
                return Err(RuntimeError::Connector("crashed before the commit".into()));
            }
            self.committed.lock().unwrap().extend_from_slice(pending);
            Ok(())
        }
    }

    /// A coordinator of one stage of two subtasks, each a source split and a sink, with
    /// checkpoints into `dir` triggered only by the test.
    fn two_subtasks(
        dir: &std::path::Path,
        sink: Arc<RecordingSink>,
        history: CheckpointHistory,
    ) -> Coordinator {
        let shape = JobShape {
            stages: vec![("q0".into(), vec!["op".into()], 2)],
            fingerprints: vec![vec!["f".into()]],
            max_parallelism: 128,
            sources: 2,
        };
        Coordinator::new(
            Some(CheckpointConfig::new(dir, Duration::from_secs(3600))),
            1,
            shape,
            sink,
            SavepointRequests::default(),
            &JobMetrics::default(),
            history,
        )
    }

    fn ack(id: u64, subtask: usize, sink: &str) -> Report {
        aligned_ack(id, subtask, sink, 0)
    }

    fn aligned_ack(id: u64, subtask: usize, sink: &str, alignment_ms: u64) -> Report {
        TaskReport::Ack {
            id,
            stage: 0,
            subtask,
            snapshot: TaskSnapshot {
                sink: Some(json!(sink)),
                ..Default::default()
            },
            new_bytes: 0,
            alignment_ms,
        }
        .into()
    }

    #[test]
    fn the_history_records_abandoned_and_completed_checkpoints_with_their_longest_alignment() {
        let tmp = tempfile::tempdir().unwrap();
        let history = CheckpointHistory::default();
        let mut c = two_subtasks(
            tmp.path(),
            Arc::new(RecordingSink::default()),
            history.clone(),
        );
        c.start();
        let decline = TaskReport::Decline {
            id: 1,
            reason: "disk full".into(),
        };
        c.handle(decline.into()).unwrap();
        c.start();
        c.handle(aligned_ack(2, 0, "a", 7)).unwrap();
        assert_eq!(history.snapshot().len(), 1, "checkpoint 2 is still pending");
        c.handle(aligned_ack(2, 1, "b", 3)).unwrap();
        let kept = history.snapshot();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].id, 1);
        assert_eq!(kept[0].status, CheckpointStatus::Abandoned);
        let reason = kept[0].reason.as_deref().unwrap_or("");
        assert!(reason.contains("disk full"), "{reason}");
        assert_eq!(kept[1].id, 2);
        assert_eq!(kept[1].status, CheckpointStatus::Completed);
        assert_eq!(kept[1].alignment_ms, 7);
        assert!(kept[1].triggered_at_ms > 1_600_000_000_000);
    }

    #[test]
    fn output_of_a_declined_checkpoint_survives_a_crash_between_the_next_manifest_and_its_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = Arc::new(RecordingSink::default());
        let mut c = two_subtasks(tmp.path(), sink.clone(), CheckpointHistory::default());
        // Checkpoint 1: one sink subtask pre-commits, the other declines.
        c.start();
        c.handle(ack(1, 0, "p1-a")).unwrap();
        c.handle(
            TaskReport::Decline {
                id: 1,
                reason: "injected".into(),
            }
            .into(),
        )
        .unwrap();
        // Checkpoint 2 completes; the process dies after its manifest, before the commit.
        sink.fail.store(1, Ordering::SeqCst);
        c.start();
        c.handle(ack(2, 0, "p2-a")).unwrap();
        let crash = c.handle(ack(2, 1, "p2-b")).unwrap_err();
        assert!(crash.to_string().contains("crashed"), "{crash}");
        assert!(sink.committed.lock().unwrap().is_empty());
        // The restore commits everything the manifest lists, carried output included.
        let manifest = read_manifest(&checkpoint_dir(tmp.path(), 2)).unwrap();
        crate::executor::commit_restored(sink.as_ref(), &manifest).unwrap();
        let mut committed = sink.committed.lock().unwrap().clone();
        committed.sort_by_key(|v| v.to_string());
        assert_eq!(committed, vec![json!("p1-a"), json!("p2-a"), json!("p2-b")]);
    }

    /// Remembers which checkpoints it was told of.
    struct HearingReader(Arc<Mutex<Vec<u64>>>);

    impl SourceReader for HearingReader {
        fn poll_next(&mut self) -> Result<crate::source::SourcePoll> {
            Ok(crate::source::SourcePoll::Finished)
        }
        fn checkpoint_complete(&mut self, id: u64) -> Result<()> {
            self.0.lock().unwrap().push(id);
            Ok(())
        }
    }

    #[test]
    fn checkpoints_go_on_after_a_split_ends_and_take_its_last_output_and_final_position() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = Arc::new(RecordingSink::default());
        let mut c = two_subtasks(tmp.path(), sink.clone(), CheckpointHistory::default());
        let heard = Arc::new(Mutex::new(Vec::new()));
        let finished = |subtask: usize, at: i64, heard: &Arc<Mutex<Vec<u64>>>| Report {
            task: TaskReport::Finished {
                stage: 0,
                subtask,
                snapshot: TaskSnapshot {
                    source: Some(crate::checkpoint::SourceSnapshot {
                        position: json!({ "end": at }),
                        max_event_time: None,
                        partition_event_times: Default::default(),
                    }),
                    ..Default::default()
                },
                source: true,
            },
            reader: Some(FinishedReader(Box::new(HearingReader(heard.clone())))),
        };
        // Checkpoint 1 is pending when split 0 ends without its barrier: its output since the
        // previous barrier and its end position are its part of checkpoint 1.
        c.start();
        c.handle(ack(1, 1, "b1")).unwrap();
        let last_output = TaskReport::Final {
            subtask: 0,
            pending: Some(json!("a-end")),
        };
        c.handle(last_output.into()).unwrap();
        c.handle(finished(0, 10, &heard)).unwrap();
        assert_eq!(c.stats.last_id, Some(1));
        let m = read_manifest(&checkpoint_dir(tmp.path(), 1)).unwrap();
        assert_eq!(
            m.stages[0].subtasks[0].source.as_ref().unwrap().position,
            json!({ "end": 10 })
        );
        assert_eq!(m.sink_pending, vec![json!("a-end"), json!("b1")]);
        assert!(c.sources_running(), "split 1 still reads");
        // Checkpoint 2 is taken with split 1 alone; split 0 is told of it.
        c.start();
        c.handle(ack(2, 1, "b2")).unwrap();
        assert_eq!(c.stats.last_id, Some(2));
        let m = read_manifest(&checkpoint_dir(tmp.path(), 2)).unwrap();
        assert_eq!(
            m.stages[0].subtasks[0].source.as_ref().unwrap().position,
            json!({ "end": 10 })
        );
        assert_eq!(
            m.sink_pending,
            vec![json!("b2")],
            "split 0's output is committed once"
        );
        // Checkpoint 1 took its end position too: it covers all split 0 read.
        assert_eq!(*heard.lock().unwrap(), vec![1, 2]);
        // Split 1 acknowledges checkpoint 3, then ends with output after that barrier: the
        // output waits for the end-of-input manifest, which every ended reader hears of.
        c.start();
        c.handle(ack(3, 1, "b3")).unwrap();
        c.handle(
            TaskReport::Final {
                subtask: 1,
                pending: Some(json!("b-end")),
            }
            .into(),
        )
        .unwrap();
        c.handle(finished(1, 20, &heard)).unwrap();
        assert!(!c.sources_running());
        c.finish().unwrap();
        assert_eq!(
            *sink.committed.lock().unwrap(),
            vec![
                json!("a-end"),
                json!("b1"),
                json!("b2"),
                json!("b3"),
                json!("b-end")
            ]
        );
        assert_eq!(*heard.lock().unwrap(), vec![1, 2, 3, 4, 4]);
    }

    #[test]
    fn the_interval_counts_from_the_trigger_and_the_minimum_pause_from_the_end() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = two_subtasks(
            tmp.path(),
            Arc::new(RecordingSink::default()),
            CheckpointHistory::default(),
        );
        let now = Instant::now();
        let mut config = CheckpointConfig::new(tmp.path(), Duration::from_secs(10));
        // Triggered 4 s ago, ended 1 s ago: due 10 s after the trigger, not after the end.
        c.last_trigger = now - Duration::from_secs(4);
        c.last_done = now - Duration::from_secs(1);
        let due = c.due_in(&config);
        assert!(
            due <= Duration::from_secs(6) && due > Duration::from_secs(5),
            "{due:?}"
        );
        // One that took longer than the interval is followed at once...
        c.last_trigger = now - Duration::from_secs(12);
        assert_eq!(c.due_in(&config), Duration::ZERO);
        // ...unless a minimum pause is asked for: then it counts from the end.
        config.min_pause = Duration::from_secs(3);
        let due = c.due_in(&config);
        assert!(
            due <= Duration::from_secs(2) && due > Duration::from_secs(1),
            "{due:?}"
        );
    }
}
