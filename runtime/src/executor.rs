//! Runs a job graph to completion in this process.
//!
//! [`execute`] prepares the run (restores and heals a checkpoint, numbers the next one,
//! clears working state, starts the checkpoint coordinator), lays the graph out as a
//! [`PhysicalPlan`] (tasks, their channels and key groups, as data), builds each task from
//! its plan ([`TaskContext::task_body`]: operators chained, the sink or senders to the next
//! stage, checkpointing, and the loop reading a source split or the task's inbox), and hands
//! them to the [`LocalLauncher`] over [`LocalChannels`]. A message travels as
//! `(channel, message)`, so a task with several inputs keeps a watermark and a barrier
//! alignment per channel.

// The executor measures real elapsed time (job duration, time blocked on a full channel);
// operator logic never sees it.
#![allow(clippy::disallowed_methods)]

use crate::channel::{ChannelSender, Channels, Envelope, Inbox, LocalChannels, Offer};
use crate::checkpoint::{
    checkpoint_dir, checkpoint_ids, CheckpointConfig, Manifest, Restored, SourceSnapshot,
    TaskSnapshot,
};
use crate::clock::Clock;
pub use crate::coordinator::CheckpointStats;
use crate::coordinator::{Coordinator, FinishedReader, JobShape, Report, SavepointRequests};
use crate::coordinator::{ReportSender, TaskReport};
use crate::error::{Result, RuntimeError};
use crate::exchange::Partitioner;
use crate::graph::{JobGraph, StageInput};
use crate::launcher::{LocalLauncher, RemoteRun, RemoteTasks};
use crate::message::{EventTime, Message};
use crate::metrics::{CheckpointHistory, Counter, JobMetrics, StageCounter};
use crate::operator::{Operator, Output, SubtaskInfo};
use crate::plan::{PhysicalPlan, TaskId, TaskOutput, TaskPlan};
use crate::sink::SinkWriter;
use crate::source::SourcePoll;
use crate::state::{
    read_state, restore_sources, StateBackend, StateSnapshot, StateStorage, StoreUse,
};
use crate::store::{upload_files, StoreRef};
use crate::watermark::{
    InputWatermarks, PartitionWatermarks, WatermarkGenerator, WatermarkStrategy, WatermarkUpdate,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Numbers scratch state directories of the jobs of one process.
static SCRATCH: AtomicU64 = AtomicU64::new(0);

/// A working directory no checkpoint refers to, removed when the job ends however it ends.
struct ScratchDir(Option<PathBuf>);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Lets the owner of a running job stop it.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    /// Asks every subtask to stop; the job then ends with [`RuntimeError::Cancelled`].
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether the job was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// Wall time from start to the last subtask's end.
    pub elapsed: Duration,
    /// Every counter of the job.
    pub metrics: Vec<(String, u64)>,
    /// Rows the sink received.
    pub output_rows: u64,
    /// What checkpoints this run took.
    pub checkpoints: CheckpointStats,
    /// The checkpoint the run started from.
    pub restored_from: Option<u64>,
    /// Whether the restored checkpoint was taken at the end of input: the run only committed
    /// its output again.
    pub already_finished: bool,
}

/// How a job is checkpointed and where it starts.
#[derive(Default)]
pub struct ExecuteOptions {
    /// Checkpoints to take (none: the job cannot be restored, and sinks commit at the end).
    pub checkpoints: Option<CheckpointConfig>,
    /// A verified checkpoint to start from.
    pub restore: Option<Restored>,
    /// Starting from the beginning after a restore found no usable checkpoint: the sink
    /// drops output a previous attempt may have left.
    pub roll_back_output: bool,
    /// Where savepoint requests arrive.
    pub savepoints: SavepointRequests,
    /// Where operators keep state while running.
    pub state: StateStorage,
    /// Where the coordinator records each checkpoint as it ends.
    pub history: CheckpointHistory,
    /// Runs the tasks elsewhere (a cluster's workers) instead of on threads of this
    /// process; the coordinator stays here.
    pub remote: Option<Box<dyn RemoteTasks>>,
}

/// The state fingerprint of every operator, stage by stage.
fn fingerprints(graph: &JobGraph) -> Vec<Vec<String>> {
    graph
        .stages
        .iter()
        .map(|s| s.operators.iter().map(|o| o.state_fingerprint()).collect())
        .collect()
}

/// Checks that a checkpoint was taken from this job: same stages, same operators, and the
/// same state schema for each, before any state is read.
fn check_compatible(graph: &JobGraph, restored: &Restored) -> Result<()> {
    let m = &restored.manifest;
    let ours: Vec<Vec<String>> = graph
        .stages
        .iter()
        .map(|s| s.operators.iter().map(|o| o.name()).collect())
        .collect();
    let theirs: Vec<Vec<String>> = m.stages.iter().map(|s| s.operators.clone()).collect();
    if ours != theirs || m.max_parallelism != graph.max_parallelism {
        return Err(RuntimeError::Checkpoint(format!(
            "{} was taken from a different job: its stages run {theirs:?} over {} key groups, this job's run {ours:?} over {}",
            restored.dir.display(),
            m.max_parallelism,
            graph.max_parallelism
        )));
    }
    for ((i, stage), theirs) in graph.stages.iter().enumerate().zip(&m.stages) {
        // A manifest written before fingerprints existed has none: names alone decide.
        let pairs = stage.operators.iter().zip(&theirs.fingerprints);
        for (position, (op, fingerprint)) in pairs.enumerate() {
            let ours = op.state_fingerprint();
            if &ours != fingerprint {
                return Err(RuntimeError::Checkpoint(format!(
                    "{} was taken from a different job: operator `{}` (stage {i} `{}`, position {position}) kept state of schema {fingerprint}, this job's keeps {ours}; restore it with the job that took it, or start without state",
                    restored.dir.display(),
                    op.name(),
                    stage.name,
                )));
            }
        }
    }
    Ok(())
}

/// Heals a crash between a checkpoint's manifest and its commit: commits again everything the
/// manifest lists (its own and carried output; commits are idempotent), then drops what later
/// attempts wrote, which the replay writes again.
pub fn commit_restored(sink: &dyn crate::sink::Sink, manifest: &Manifest) -> Result<()> {
    sink.commit(manifest.id, &manifest.pending_commits())?;
    sink.roll_back_after(manifest.id)
}

/// Removes the working state an earlier (crashed) run left in `work`: its checkpoints hold
/// all that counts.
fn clear_work(work: &std::path::Path) -> Result<()> {
    if work.exists() {
        std::fs::remove_dir_all(work)
            .map_err(|e| RuntimeError::io(format!("clearing {}", work.display()), e))?;
    }
    Ok(())
}

/// Runs `graph` to completion on the calling thread (subtasks on their own threads).
pub fn execute(
    graph: JobGraph,
    metrics: JobMetrics,
    clock: Arc<dyn Clock>,
    cancel: CancelHandle,
    options: ExecuteOptions,
) -> Result<JobReport> {
    graph.validate()?;
    let schemas = graph.output_schemas()?;
    let started = Instant::now();
    let n = graph.stages.len();
    let sink = graph.stages[n - 1]
        .sink
        .clone()
        .expect("validated: the last stage has a sink");
    let restore = options.restore.map(Arc::new);
    if let Some(r) = &restore {
        check_compatible(&graph, r)?;
        // Heal a crash between the manifest and the commit, then drop what later attempts
        // wrote: the replay writes it again.
        let m = &r.manifest;
        commit_restored(sink.as_ref(), m)?;
        if m.finished {
            return Ok(JobReport {
                elapsed: started.elapsed(),
                metrics: metrics.snapshot(),
                output_rows: 0,
                checkpoints: CheckpointStats::default(),
                restored_from: Some(m.id),
                already_finished: true,
            });
        }
    } else if options.roll_back_output {
        sink.roll_back_after(0)?;
    }
    // Checkpoint ids never repeat in a directory, whatever was restored.
    let next_id = match &options.checkpoints {
        Some(c) => {
            let newest = checkpoint_ids(&c.dir)?.first().copied().unwrap_or(0);
            newest.max(restore.as_ref().map_or(0, |r| r.manifest.id)) + 1
        }
        None => 1,
    };
    // State in RocksDB without checkpoints: a scratch directory for this run alone.
    let scratch = match (&options.checkpoints, options.state) {
        (None, StateStorage::RocksDb { .. }) => Some(std::env::temp_dir().join(format!(
            "oxflow-state-{}-{}",
            std::process::id(),
            SCRATCH.fetch_add(1, Ordering::Relaxed)
        ))),
        _ => None,
    };
    let work_root = match &options.checkpoints {
        Some(c) => Some(c.dir.join(".work")),
        None => scratch.clone(),
    };
    if let Some(work) = &work_root {
        clear_work(work)?;
    }
    let _scratch = ScratchDir(scratch);
    let shape = JobShape {
        stages: graph
            .stages
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.operators.iter().map(|o| o.name()).collect(),
                    s.parallelism,
                )
            })
            .collect(),
        fingerprints: fingerprints(&graph),
        max_parallelism: graph.max_parallelism,
        sources: graph
            .stages
            .iter()
            .filter(|s| matches!(s.input, StageInput::Source { .. }))
            .map(|s| s.parallelism)
            .sum(),
    };
    let mut coordinator = Coordinator::new(
        options.checkpoints.clone(),
        next_id,
        shape,
        sink.clone(),
        options.savepoints.clone(),
        &metrics,
        options.history.clone(),
    );
    coordinator.state_in_store = options.remote.is_some()
        && options
            .checkpoints
            .as_ref()
            .is_some_and(|c| c.store.is_some());
    let trigger = coordinator.trigger.clone();
    let completed = coordinator.completed.clone();
    let (report_tx, report_rx) = channel::<Report>();

    // The job as tasks and channels: run here (a thread per task, in-memory channels), or
    // handed to a launcher that runs them elsewhere.
    let plan = PhysicalPlan::of(&graph);
    let sink_rows = metrics.counter(&format!(
        "stage{}.{}.records_out",
        n - 1,
        graph.stages[n - 1].name
    ));
    let running = match options.remote {
        Some(mut remote) => {
            let run = RemoteRun {
                plan,
                reports: ReportSender(report_tx.clone()),
                trigger: trigger.clone(),
                completed: completed.clone(),
                cancel: cancel.clone(),
                restore: restore.as_deref().cloned(),
            };
            if let Err(e) = remote.start(run) {
                cancel.cancel();
                remote.join();
                return Err(e);
            }
            Running::Remote(remote)
        }
        None => {
            let channels = LocalChannels::new(&plan);
            let context = TaskContext {
                graph: &graph,
                schemas: &schemas,
                metrics: &metrics,
                clock: &clock,
                cancel: &cancel,
                checkpoint_root: options.checkpoints.as_ref().map(|c| c.dir.clone()),
                work_root: work_root.as_ref(),
                storage: options.state,
                restore: restore.as_ref(),
                // The coordinator copies completed checkpoints to the store itself.
                store: None,
                reports: &report_tx,
                trigger: &trigger,
                completed: &completed,
            };
            let ids: Vec<TaskId> = plan.tasks.iter().map(|t| t.id).collect();
            Running::Local(context.launch(&plan, &ids, channels)?)
        }
    };
    // The executor's own report sender must go, or the coordinator would wait forever.
    drop(report_tx);
    let coordinator_cancel = cancel.clone();
    let coordinator_thread = std::thread::Builder::new()
        .name("checkpoint-coordinator".into())
        .spawn(move || {
            let result = coordinator.run(report_rx);
            if result.is_err() {
                coordinator_cancel.cancel();
            }
            (coordinator, result)
        })
        .map_err(|e| RuntimeError::io("spawning the checkpoint coordinator", e))?;

    let first_error = match running {
        Running::Local(launcher) => launcher.join(),
        Running::Remote(mut remote) => remote.join(),
    };
    let (mut coordinator, coordinated) =
        coordinator_thread.join().map_err(|_| RuntimeError::Panic {
            task: "checkpoint-coordinator".into(),
            message: "thread panicked".into(),
        })?;
    if let Some(work) = &work_root {
        // Best effort: a leftover is cleared at the next start.
        let _ = std::fs::remove_dir_all(work);
    }
    match (first_error, coordinated) {
        (_, Err(e)) | (Some(e), _) => Err(e),
        (None, Ok(())) => {
            coordinator.finish()?;
            Ok(JobReport {
                elapsed: started.elapsed(),
                metrics: metrics.snapshot(),
                output_rows: sink_rows.get(),
                checkpoints: coordinator.stats.clone(),
                restored_from: restore.as_ref().map(|r| r.manifest.id),
                already_finished: false,
            })
        }
    }
}

/// How a worker runs its part of a job for a coordinator elsewhere.
pub struct TaskGroupOptions {
    /// The job's checkpoint directory, shared with its coordinator (none: checkpoints off).
    pub checkpoint_root: Option<PathBuf>,
    /// Where the group's tasks keep their working state; cleared first, as a crashed
    /// attempt's working state counts for nothing.
    pub work_root: Option<PathBuf>,
    /// Where operators keep state while running.
    pub state: StateStorage,
    /// The checkpoint the tasks start from.
    pub restore: Option<Restored>,
    /// Where each subtask uploads the state files of its checkpoints before acknowledging
    /// them (none: they stay in `checkpoint_root`, which the coordinator reads).
    pub store: Option<StoreRef>,
}

/// A worker's part of a job, running: its tasks, and a thread handing their reports on.
pub struct TaskGroup {
    /// The checkpoint whose barrier the group's sources are to inject: raised when the
    /// coordinator triggers one.
    pub trigger: Arc<AtomicU64>,
    /// The last checkpoint completed: raised when the coordinator says so.
    pub completed: Arc<AtomicU64>,
    launcher: LocalLauncher,
    forwarder: std::thread::JoinHandle<()>,
}

impl TaskGroup {
    /// Waits for every task of the group; the first real failure, if any.
    pub fn join(self) -> Option<RuntimeError> {
        let error = self.launcher.join();
        let _ = self.forwarder.join();
        error
    }
}

/// Starts the tasks `ids` of `graph`'s plan on threads of this process, wired by `channels`
/// (local ones to tasks here, remote ones to tasks elsewhere): a worker's part of a job whose
/// coordinator runs in another process. Their reports go to `forward` as they come; an
/// ended source split's reader stays here and hears of the checkpoints completed after it.
#[allow(clippy::too_many_arguments)]
pub fn run_tasks(
    graph: &JobGraph,
    ids: &[TaskId],
    channels: impl Channels,
    metrics: &JobMetrics,
    clock: Arc<dyn Clock>,
    cancel: CancelHandle,
    options: TaskGroupOptions,
    mut forward: impl FnMut(TaskReport) + Send + 'static,
) -> Result<TaskGroup> {
    graph.validate()?;
    let schemas = graph.output_schemas()?;
    let restore = options.restore.map(Arc::new);
    if let Some(r) = &restore {
        check_compatible(graph, r)?;
    }
    if let Some(work) = &options.work_root {
        clear_work(work)?;
    }
    let trigger = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let (report_tx, report_rx) = channel::<Report>();
    let plan = PhysicalPlan::of(graph);
    let context = TaskContext {
        graph,
        schemas: &schemas,
        metrics,
        clock: &clock,
        cancel: &cancel,
        checkpoint_root: options.checkpoint_root.clone(),
        work_root: options.work_root.as_ref(),
        storage: options.state,
        restore: restore.as_ref(),
        store: options.store.as_ref(),
        reports: &report_tx,
        trigger: &trigger,
        completed: &completed,
    };
    let launcher = context.launch(&plan, ids, channels)?;
    drop(report_tx);
    let heard_of = completed.clone();
    let forwarder = std::thread::Builder::new()
        .name("task-reports".into())
        .spawn(move || {
            let mut readers = Vec::new();
            let mut heard = heard_of.load(Ordering::SeqCst);
            loop {
                match report_rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(Report { task, reader }) => {
                        readers.extend(reader.map(|r| r.0));
                        forward(task);
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
                let done = heard_of.load(Ordering::SeqCst);
                if done > heard {
                    heard = done;
                    for reader in &mut readers {
                        if let Err(e) = reader.checkpoint_complete(done) {
                            tracing::warn!(checkpoint = done, error = %e, "an ended source split could not act on a completed checkpoint");
                        }
                    }
                }
            }
        })
        .map_err(|e| RuntimeError::io("spawning the report forwarder", e))?;
    Ok(TaskGroup {
        trigger,
        completed,
        launcher,
        forwarder,
    })
}

enum Downstream {
    Exchange {
        partitioner: Partitioner,
        /// The channel this task sends on, in every target's inbox.
        channel: usize,
        /// A sender per task of the next stage, by subtask index.
        senders: Vec<Box<dyn ChannelSender>>,
        /// The targets that hear watermarks, barriers and the end of input.
        control: Vec<usize>,
        backpressure: StageCounter,
        cancel: CancelHandle,
    },
    Sink(Box<dyn SinkWriter>),
}

fn send(
    sender: &dyn ChannelSender,
    envelope: Envelope,
    backpressure: &StageCounter,
    cancel: &CancelHandle,
) -> Result<()> {
    match sender.try_send(envelope) {
        Offer::Sent => Ok(()),
        Offer::Closed => Err(RuntimeError::Cancelled),
        Offer::Full(mut envelope) => {
            // The receiver is slower than we are: wait, and count how long (backpressure).
            let started = Instant::now();
            loop {
                if cancel.is_cancelled() {
                    return Err(RuntimeError::Cancelled);
                }
                match sender.try_send(envelope) {
                    Offer::Sent => break,
                    Offer::Closed => return Err(RuntimeError::Cancelled),
                    Offer::Full(e) => {
                        envelope = e;
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
            }
            backpressure.add(started.elapsed().as_millis() as u64);
            Ok(())
        }
    }
}

impl Downstream {
    fn data(&mut self, batch: RecordBatch) -> Result<()> {
        match self {
            Downstream::Sink(writer) => writer.write(&batch),
            Downstream::Exchange {
                partitioner,
                channel,
                senders,
                backpressure,
                cancel,
                ..
            } => partitioner.partition(batch, |target, part| {
                send(
                    senders[target].as_ref(),
                    (*channel, Message::Data(part)),
                    backpressure,
                    cancel,
                )
            }),
        }
    }

    fn control(&mut self, message: Message) -> Result<()> {
        match self {
            // The sink's end of input and barriers are handled by the task (`Chain::end`,
            // `TaskCheckpointing::checkpoint`): they produce output to commit.
            Downstream::Sink(_) => Ok(()),
            Downstream::Exchange {
                channel,
                senders,
                control,
                backpressure,
                cancel,
                ..
            } => {
                for &target in control.iter() {
                    send(
                        senders[target].as_ref(),
                        (*channel, message.clone()),
                        backpressure,
                        cancel,
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// What every task of one run shares, to build a task's body from its plan.
struct TaskContext<'a> {
    graph: &'a JobGraph,
    schemas: &'a [SchemaRef],
    metrics: &'a JobMetrics,
    clock: &'a Arc<dyn Clock>,
    cancel: &'a CancelHandle,
    checkpoint_root: Option<PathBuf>,
    work_root: Option<&'a PathBuf>,
    storage: StateStorage,
    restore: Option<&'a Arc<Restored>>,
    store: Option<&'a StoreRef>,
    reports: &'a Sender<Report>,
    trigger: &'a Arc<AtomicU64>,
    completed: &'a Arc<AtomicU64>,
}

/// A task ready to run on a thread of its own.
type TaskBody = Box<dyn FnOnce() -> Result<()> + Send>;

/// Where a job's tasks run.
enum Running {
    Local(LocalLauncher),
    Remote(Box<dyn RemoteTasks>),
}

impl TaskContext<'_> {
    /// Builds the tasks `ids` of `plan` and starts each on a thread of this process. If one
    /// cannot be built, those already started are cancelled and waited for. `channels` goes
    /// once every task has its own senders, or the inboxes they feed would never close.
    fn launch(
        &self,
        plan: &PhysicalPlan,
        ids: &[TaskId],
        mut channels: impl Channels,
    ) -> Result<LocalLauncher> {
        let mut launcher = LocalLauncher::new(self.cancel.clone());
        let launched = ids.iter().try_for_each(|&id| {
            let task = plan.task(id).ok_or_else(|| {
                RuntimeError::InvalidJob(format!(
                    "the plan has no subtask {} of stage {}",
                    id.subtask, id.stage
                ))
            })?;
            let body = self.task_body(task, &mut channels)?;
            launcher.spawn(&task.name, body)
        });
        drop(channels);
        if let Err(e) = launched {
            // The tasks already running stop, and are waited for, before the error is told.
            self.cancel.cancel();
            launcher.join();
            return Err(e);
        }
        Ok(launcher)
    }

    /// Builds task `task`: its operators, its downstream (the sink, or senders to the next
    /// stage's tasks), its checkpointing, and its loop (reading a source split, or its inbox).
    fn task_body(&self, task: &TaskPlan, channels: &mut dyn Channels) -> Result<TaskBody> {
        let (s, index, info) = (task.id.stage, task.id.subtask, task.info);
        let stage = &self.graph.stages[s];
        let metrics = self.metrics;
        let prefix = format!("stage{s}.{}", stage.name);
        let records_in = metrics.counter(&format!("{prefix}.records_in"));
        let records_out = metrics.counter(&format!("{prefix}.records_out"));
        let backpressure = metrics.counter(&format!("{prefix}.backpressure_ms"));
        if index == 0 {
            for op in &stage.operators {
                for (name, counter) in op.counters() {
                    metrics.register(&format!("{prefix}.{}.{name}", op.name()), counter);
                }
            }
        }
        // Each count is kept for the stage and for this subtask (`<figure>.<index>`).
        let per_subtask = |stage: &Counter, figure: &str| {
            StageCounter::new(
                stage.clone(),
                metrics.counter(&format!("{prefix}.{figure}.{index}")),
            )
        };
        let records_in = per_subtask(&records_in, "records_in");
        let records_out = per_subtask(&records_out, "records_out");
        let backpressure = per_subtask(&backpressure, "backpressure_ms");
        let operators = stage
            .operators
            .iter()
            .map(|f| f.create(info))
            .collect::<Result<Vec<_>>>()?;
        let downstream = match (&stage.sink, &task.output) {
            (Some(sink), _) => Downstream::Sink(sink.create_writer(info, self.schemas[s].clone())?),
            (None, TaskOutput::Exchange(edge)) => Downstream::Exchange {
                partitioner: Partitioner::try_new(
                    &edge.partitioning,
                    index,
                    edge.targets.len(),
                    self.graph.max_parallelism,
                    &self.schemas[s],
                )?,
                channel: edge.channel,
                senders: edge
                    .targets
                    .iter()
                    .map(|&t| channels.sender(t))
                    .collect::<Result<_>>()?,
                control: edge.control_targets(index),
                backpressure,
                cancel: self.cancel.clone(),
            },
            (None, TaskOutput::Sink) => {
                return Err(RuntimeError::InvalidJob(format!(
                    "stage `{}` ends the job but has no sink",
                    stage.name
                )))
            }
        };
        let chain = Chain {
            operators,
            outputs: Vec::new(),
            downstream,
            records_out,
            watermark: EventTime::MIN,
            // Per subtask: a stage's watermark is the least of its subtasks'.
            watermark_gauge: metrics.counter(&format!("{prefix}.watermark_ms.{index}")),
            cancel: self.cancel.clone(),
        };
        let checkpointing = TaskCheckpointing {
            stage: s,
            info,
            key_groups: task.key_groups.clone(),
            keyed: task.keyed,
            root: self.checkpoint_root.clone(),
            store: self.store.cloned(),
            uploaded: BTreeSet::new(),
            work: self.work_root.map(|w| w.join(format!("stage{s}-{index}"))),
            reports: self.reports.clone(),
            storage: self.storage,
            backend: None,
            background: None,
            restore: self.restore.cloned(),
            restore_ms: metrics.counter("restore.state_ms"),
        };
        let StageInput::Source { source, watermarks } = &stage.input else {
            let inbox = channels.inbox(task.id)?;
            let cancel = self.cancel.clone();
            let sides = task.inbound.clone();
            return Ok(Box::new(move || {
                run_exchange_input(inbox, sides, chain, cancel, records_in, checkpointing)
            }));
        };
        let mut generator = watermarks.clone().map(WatermarkGenerator::new);
        let mut partition_times = BTreeMap::new();
        let reader = match self.restore {
            None => source.create_reader(info)?,
            Some(r) => {
                let old = &r.manifest.stages[s].subtasks;
                let positions = old
                    .iter()
                    .map(|t| {
                        t.source
                            .as_ref()
                            .map(|s| s.position.clone())
                            .ok_or_else(|| {
                                RuntimeError::Checkpoint(format!(
                                    "{}: a source split has no position",
                                    r.dir.display()
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let max_time = own_or_least(old, info, |t| {
                    t.source.as_ref().and_then(|s| s.max_event_time)
                });
                if let (Some(g), Some(t)) = (&mut generator, max_time) {
                    g.restore(t);
                }
                // Each partition was read by one old split: take every one's.
                partition_times = old
                    .iter()
                    .filter_map(|t| t.source.as_ref())
                    .flat_map(|s| s.partition_event_times.clone())
                    .collect();
                source.restore_reader(info, &positions)?
            }
        };
        let idle_timeout = watermarks.as_ref().and_then(|w| w.idle_timeout);
        let partitioned = watermarks
            .clone()
            .map(|w| PartitionWatermarks::new(w, partition_times));
        let task = SourceTask {
            reader,
            generator,
            partitioned,
            idle_timeout,
            screen: watermarks.clone(),
            out_of_range: metrics.counter(&format!("{prefix}.event_time_out_of_range")),
            chain,
            clock: self.clock.clone(),
            cancel: self.cancel.clone(),
            records_in,
            checkpointing,
            trigger: self.trigger.clone(),
            completed: self.completed.clone(),
        };
        Ok(Box::new(move || run_source(task)))
    }
}

/// The operators of one subtask, fed in order, ending downstream.
struct Chain {
    operators: Vec<Box<dyn Operator>>,
    outputs: Vec<Output>,
    downstream: Downstream,
    records_out: StageCounter,
    /// The last watermark the operators handled.
    watermark: EventTime,
    /// The same, for monitoring (an i64 stored as its bits).
    watermark_gauge: Counter,
    /// Handed to operators through their [`Output`], so that long loops can stop early.
    cancel: CancelHandle,
}

impl Chain {
    fn output(&mut self, level: usize) -> Output {
        if self.outputs.len() < self.operators.len() {
            self.outputs
                .resize_with(self.operators.len(), Output::default);
        }
        let mut out = std::mem::take(&mut self.outputs[level]);
        out.watch(&self.cancel.0);
        out
    }

    /// A batch from input `side` of the stage, into the first operator.
    fn input(&mut self, side: usize, batch: RecordBatch) -> Result<()> {
        if self.operators.is_empty() {
            return self.data(0, batch);
        }
        let mut out = self.output(0);
        self.operators[0].on_input_batch(side, batch, &mut out)?;
        for b in out.drain_coalesced()? {
            self.data(1, b)?;
        }
        self.outputs[0] = out;
        Ok(())
    }

    fn data(&mut self, level: usize, batch: RecordBatch) -> Result<()> {
        if level == self.operators.len() {
            self.records_out.add(batch.num_rows() as u64);
            return self.downstream.data(batch);
        }
        let mut out = self.output(level);
        self.operators[level].on_batch(batch, &mut out)?;
        for b in out.drain_coalesced()? {
            self.data(level + 1, b)?;
        }
        self.outputs[level] = out;
        Ok(())
    }

    /// Runs `f` on every operator in order, each one's output going through the rest.
    fn each_operator(
        &mut self,
        mut f: impl FnMut(&mut dyn Operator, &mut Output) -> Result<()>,
    ) -> Result<()> {
        for level in 0..self.operators.len() {
            let mut out = self.output(level);
            f(self.operators[level].as_mut(), &mut out)?;
            for b in out.drain_coalesced()? {
                self.data(level + 1, b)?;
            }
            self.outputs[level] = out;
        }
        Ok(())
    }

    /// Hands a source's messages (data, watermarks, idleness) to the chain, emptying `out`.
    fn send_all(&mut self, out: &mut Vec<Message>) -> Result<()> {
        for message in out.drain(..) {
            match message {
                Message::Data(b) => self.data(0, b)?,
                Message::Watermark(w) => self.watermark(w)?,
                other => self.downstream.control(other)?,
            }
        }
        Ok(())
    }

    fn watermark(&mut self, wm: EventTime) -> Result<()> {
        if wm <= self.watermark {
            // Already handled (a restored job hears its checkpoint's watermark again).
            return Ok(());
        }
        self.watermark = wm;
        self.watermark_gauge.set(wm as u64);
        self.each_operator(|op, out| op.on_watermark(wm, out))?;
        self.downstream.control(Message::Watermark(wm))
    }

    fn end(&mut self, checkpointing: &mut TaskCheckpointing) -> Result<()> {
        self.each_operator(|op, out| op.on_end_of_input(out))?;
        checkpointing.wait_for_background()?;
        if let Downstream::Sink(writer) = &mut self.downstream {
            let pending = writer.finish()?;
            checkpointing.report(TaskReport::Final {
                subtask: checkpointing.info.index,
                pending,
            });
        }
        self.downstream.control(Message::EndOfStream)
    }
}

/// What subtask `info` goes on from, of a time the old subtasks recorded: its own if the
/// stage kept its parallelism, else the least any of them had reached (a lower watermark can
/// only make fewer records late, never more). `None` if any had none.
fn own_or_least(
    old: &[TaskSnapshot],
    info: SubtaskInfo,
    time: impl Fn(&TaskSnapshot) -> Option<EventTime>,
) -> Option<EventTime> {
    if old.len() == info.parallelism {
        time(&old[info.index])
    } else {
        old.iter().map(time).min().flatten()
    }
}

/// A subtask's part in checkpoints: snapshots at barriers, state restore at start.
struct TaskCheckpointing {
    stage: usize,
    /// The subtask (`info.index`) and its stage's shape.
    info: SubtaskInfo,
    /// The key groups whose state it restores: its plan's.
    key_groups: std::ops::Range<usize>,
    /// Whether its state lies in its key groups only (its plan's).
    keyed: bool,
    /// The checkpoint directory (none: checkpoints are off).
    root: Option<PathBuf>,
    /// Where it uploads its checkpoints' state files (a worker's subtask), and the keys it
    /// uploaded so far in this attempt: a checkpoint uploads only the files that are new.
    store: Option<StoreRef>,
    uploaded: BTreeSet<String>,
    /// This subtask's RocksDB working directory.
    work: Option<PathBuf>,
    reports: Sender<Report>,
    storage: StateStorage,
    /// Opened at the first snapshot that holds state (at the start with state in RocksDB).
    backend: Option<StateBackend>,
    /// The slow part of the previous snapshot (RocksDB checkpoint, checksums).
    background: Option<std::thread::JoinHandle<(StateBackend, BTreeSet<String>)>>,
    restore: Option<Arc<Restored>>,
    /// The longest any subtask took to load its state (a gauge).
    restore_ms: Counter,
}

impl TaskCheckpointing {
    fn report(&self, report: impl Into<Report>) {
        // The coordinator only goes away when the job does.
        let _ = self.reports.send(report.into());
    }

    fn wait_for_background(&mut self) -> Result<()> {
        if let Some(handle) = self.background.take() {
            let (backend, uploaded) = handle.join().map_err(|_| RuntimeError::Panic {
                task: format!(
                    "checkpoint of stage {} subtask {}",
                    self.stage, self.info.index
                ),
                message: "thread panicked".into(),
            })?;
            self.backend = Some(backend);
            self.uploaded = uploaded;
        }
        Ok(())
    }

    /// Before any input: gives operators that can keep state in RocksDB their store, then
    /// restores.
    fn start(&mut self, chain: &mut Chain) -> Result<()> {
        let mut in_store = vec![StoreUse::Memory; chain.operators.len()];
        if let StateStorage::RocksDb { memory_budget } = self.storage {
            let work = self
                .work
                .as_ref()
                .expect("a work directory with state in RocksDB");
            // RocksDB's own buffers come out of the budget, as Flink's managed memory holds
            // them: half for RocksDB, half for the operator's state in memory.
            let backend = StateBackend::open_with_budget(work, Some(memory_budget / 2))?;
            let in_memory = memory_budget - memory_budget / 2;
            for (k, op) in chain.operators.iter_mut().enumerate() {
                in_store[k] = op.use_state_store(backend.store(k, self.info.index, in_memory));
            }
            self.backend = Some(backend);
        }
        self.restore(chain, &in_store)
    }

    /// Hands each operator the state of the key groups this subtask owns (copied into the
    /// store for operators `in_store` marks), and the watermark they had reached.
    fn restore(&self, chain: &mut Chain, in_store: &[StoreUse]) -> Result<()> {
        let Some(r) = &self.restore else {
            return Ok(());
        };
        let old = &r.manifest.stages[self.stage].subtasks;
        let sources = restore_sources(
            self.keyed,
            &self.key_groups,
            old.len(),
            self.info.max_parallelism,
        );
        let dirs: Vec<PathBuf> = sources
            .into_iter()
            .filter_map(|j| old[j].state_dir.as_ref().map(|d| r.dir.join(d)))
            .collect();
        let info = self.info;
        let started = Instant::now();
        if !dirs.is_empty() {
            let into = self.backend.as_ref().map(|b| (b, in_store));
            let states = read_state(&dirs, chain.operators.len(), self.key_groups.clone(), into)?;
            for (op, state) in chain.operators.iter_mut().zip(states) {
                if !state.is_empty() {
                    op.restore_state(state)?;
                }
            }
        }
        self.restore_ms.max(started.elapsed().as_millis() as u64);
        // Every subtask of a keyed stage saw the same watermarks before the barrier; source
        // splits differ.
        let watermark = own_or_least(old, info, |t| t.watermark);
        if let Some(w) = watermark {
            chain.watermark = w;
            chain.each_operator(|op, out| op.on_watermark(w, out))?;
        }
        Ok(())
    }

    /// Barrier `id` has arrived on every input: snapshot the operators, pre-commit the sink,
    /// pass the barrier on, and leave the slow part (the RocksDB checkpoint) to a background
    /// thread that acknowledges when done.
    fn checkpoint(
        &mut self,
        id: u64,
        chain: &mut Chain,
        source: Option<SourceSnapshot>,
        alignment: Duration,
    ) -> Result<()> {
        let alignment_ms = alignment.as_millis() as u64;
        self.wait_for_background()?;
        for (k, op) in chain.operators.iter_mut().enumerate() {
            let mut snapshot = StateSnapshot::default();
            op.snapshot_state(&mut snapshot)?;
            if snapshot.is_empty() {
                continue;
            }
            if self.backend.is_none() {
                let work = self.work.as_ref().ok_or_else(|| {
                    RuntimeError::Checkpoint("a barrier arrived, but checkpoints are off".into())
                })?;
                self.backend = Some(StateBackend::open(work)?);
            }
            // Written here, not on the background thread: the operator has just cleared what
            // it marked as changed, so a failed write must fail the task (the job then
            // restores from the last complete checkpoint), not merely decline this checkpoint
            // and leave RocksDB without those changes. (Moved to the background, q11 measured
            // the same: the cost is in `snapshot_state`.)
            let backend = self.backend.as_ref().expect("opened above");
            backend.apply(k, self.info.index, snapshot)?;
        }
        let sink = match &mut chain.downstream {
            Downstream::Sink(writer) => writer.pre_commit()?,
            Downstream::Exchange { .. } => None,
        };
        chain.downstream.control(Message::Barrier(id))?;
        let mut snapshot = TaskSnapshot {
            source,
            sink,
            watermark: (chain.watermark != EventTime::MIN).then_some(chain.watermark),
            ..Default::default()
        };
        let (stage, subtask) = (self.stage, self.info.index);
        let Some(mut backend) = self.backend.take() else {
            self.report(TaskReport::Ack {
                id,
                stage,
                subtask,
                snapshot,
                new_bytes: 0,
                alignment_ms,
            });
            return Ok(());
        };
        let root = self
            .root
            .clone()
            .expect("a backend exists only with checkpoints on");
        let reports = self.reports.clone();
        let store = self.store.clone();
        let mut uploaded = std::mem::take(&mut self.uploaded);
        // Operators keeping state in the store write nothing until the copy is cut.
        backend.freeze();
        let handle = std::thread::Builder::new()
            .name(format!("snapshot-{stage}-{subtask}"))
            .spawn(move || {
                let dir = checkpoint_dir(&root, id);
                let relative = format!("stage{stage}-{subtask}");
                let result = std::fs::create_dir_all(&dir)
                    .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))
                    .and_then(|_| backend.checkpoint(&dir.join(&relative), &dir))
                    .and_then(|mut files| {
                        let Some(store) = &store else {
                            return Ok(files);
                        };
                        // In the store before the acknowledgement: the coordinator's
                        // manifest only names files the store holds. The local copy (hard
                        // links) is then of no further use.
                        files.new_bytes =
                            upload_files(store.0.as_ref(), &dir, &files.files, &mut uploaded)?;
                        let _ = std::fs::remove_dir_all(dir.join(&relative));
                        let _ = std::fs::remove_dir(&dir);
                        Ok(files)
                    });
                let report = match result {
                    Ok(files) => {
                        snapshot.state_dir = Some(relative);
                        snapshot.files = files.files;
                        TaskReport::Ack {
                            id,
                            stage,
                            subtask,
                            snapshot,
                            new_bytes: files.new_bytes,
                            alignment_ms,
                        }
                    }
                    Err(e) => TaskReport::Decline {
                        id,
                        reason: format!("stage {stage} subtask {subtask}: {e}"),
                    },
                };
                let _ = reports.send(report.into());
                (backend, uploaded)
            })
            .map_err(|e| RuntimeError::io("spawning a snapshot thread", e))?;
        self.background = Some(handle);
        Ok(())
    }
}

impl Drop for TaskCheckpointing {
    /// A task that stops (cancelled, failed) still lets its last snapshot finish, so that no
    /// thread writes into a checkpoint directory after its job has ended.
    fn drop(&mut self) {
        if let Some(handle) = self.background.take() {
            let _ = handle.join();
        }
    }
}

struct SourceTask {
    reader: Box<dyn crate::source::SourceReader>,
    generator: Option<WatermarkGenerator>,
    /// Used instead of `generator` for readers of several partitions.
    partitioned: Option<PartitionWatermarks>,
    idle_timeout: Option<Duration>,
    /// Checks every record's event time is in range before it reaches the watermarks.
    screen: Option<WatermarkStrategy>,
    /// Records dropped for an out-of-range event time.
    out_of_range: Counter,
    chain: Chain,
    clock: Arc<dyn Clock>,
    cancel: CancelHandle,
    records_in: StageCounter,
    checkpointing: TaskCheckpointing,
    trigger: Arc<AtomicU64>,
    /// The last checkpoint completed, for [`SourceReader::checkpoint_complete`].
    completed: Arc<AtomicU64>,
}

impl SourceTask {
    /// The split's part of a checkpoint at reader position `position`.
    fn snapshot(&self, position: serde_json::Value) -> SourceSnapshot {
        SourceSnapshot {
            position,
            max_event_time: self.generator.as_ref().and_then(|g| g.max_event_time()),
            partition_event_times: self
                .partitioned
                .as_ref()
                .map(|p| p.max_event_times())
                .unwrap_or_default(),
        }
    }
}

fn run_source(mut t: SourceTask) -> Result<()> {
    t.checkpointing.start(&mut t.chain)?;
    let mut pending = Vec::new();
    let mut last_data = t.clock.elapsed();
    let mut idle = false;
    let mut injected = 0;
    let mut heard = t.completed.load(Ordering::SeqCst);
    if t.checkpointing.root.is_none() {
        t.reader.without_checkpoints();
    }
    if let Some(p) = &mut t.partitioned {
        // The restored watermark (set on the chain) is not sent again.
        p.restore_watermark(t.chain.watermark);
    }
    loop {
        if t.cancel.is_cancelled() {
            return Err(RuntimeError::Cancelled);
        }
        let done = t.completed.load(Ordering::SeqCst);
        if done > heard {
            heard = done;
            t.reader.checkpoint_complete(done)?;
        }
        let requested = t.trigger.load(Ordering::SeqCst);
        if requested > injected {
            injected = requested;
            t.reader.on_barrier(requested);
            let position = t.reader.position().ok_or_else(|| {
                RuntimeError::Checkpoint(
                    "this job's source cannot be checkpointed (it does not report its position)"
                        .into(),
                )
            })?;
            let source = t.snapshot(position);
            t.checkpointing
                .checkpoint(requested, &mut t.chain, Some(source), Duration::ZERO)?;
        }
        let (partition, batch) = match t.reader.poll_next()? {
            SourcePoll::Batch(batch) => (None, batch),
            SourcePoll::PartitionBatch(partition, batch) => (Some(partition), batch),
            SourcePoll::Pending(wait) => {
                let now = t.clock.elapsed();
                match (&mut t.partitioned, t.reader.partitions().is_empty()) {
                    (Some(p), false) => {
                        p.sync(t.reader.partitions(), now);
                        p.on_quiet(now, &mut pending);
                    }
                    _ => {
                        if let Some(timeout) = t.idle_timeout {
                            if !idle && now.saturating_sub(last_data) >= timeout {
                                idle = true;
                                pending.push(Message::Idle);
                            }
                        }
                    }
                }
                t.chain.send_all(&mut pending)?;
                t.clock.sleep(wait);
                continue;
            }
            SourcePoll::Unavailable(wait) => {
                // The idle timeout counts from the end of the outage.
                last_data = t.clock.elapsed();
                if let Some(p) = &mut t.partitioned {
                    p.sync(t.reader.partitions(), last_data);
                    p.hold(last_data);
                }
                t.clock.sleep(wait);
                continue;
            }
            SourcePoll::Finished => {
                t.chain.end(&mut t.checkpointing)?;
                let source = t.reader.position().map(|position| t.snapshot(position));
                let (stage, subtask) = (t.checkpointing.stage, t.checkpointing.info.index);
                t.checkpointing.report(Report {
                    task: TaskReport::Finished {
                        stage,
                        subtask,
                        snapshot: TaskSnapshot {
                            source,
                            ..Default::default()
                        },
                        source: true,
                    },
                    reader: Some(FinishedReader(t.reader)),
                });
                return Ok(());
            }
        };
        if batch.num_rows() == 0 {
            continue;
        }
        t.records_in.add(batch.num_rows() as u64);
        last_data = t.clock.elapsed();
        idle = false;
        let batch = match &t.screen {
            Some(strategy) => {
                let (batch, dropped) = strategy.screen(batch, t.clock.unix_millis())?;
                t.out_of_range.add(dropped as u64);
                batch
            }
            None => batch,
        };
        if batch.num_rows() == 0 {
            continue;
        }
        match (partition, &mut t.partitioned, &mut t.generator) {
            (Some(i), Some(p), _) => {
                p.sync(t.reader.partitions(), last_data);
                p.on_batch(i, batch, last_data, &mut pending)?;
            }
            (_, _, Some(generator)) => generator.on_batch(batch, &mut pending)?,
            _ => pending.push(Message::Data(batch)),
        }
        t.chain.send_all(&mut pending)?;
    }
}

/// Barrier alignment: once barrier `n` has arrived on an input, that input's later messages
/// are held back until barrier `n` has arrived on every input still open, so the snapshot
/// covers exactly what came before the barrier everywhere.
struct Alignment {
    barrier: Option<u64>,
    /// When the current barrier first arrived (on any input).
    since: Option<Instant>,
    arrived: Vec<bool>,
    held: VecDeque<Envelope>,
}

impl Alignment {
    fn new(inputs: usize) -> Self {
        Alignment {
            barrier: None,
            since: None,
            arrived: vec![false; inputs],
            held: VecDeque::new(),
        }
    }

    /// Whether a message from `input` must wait for the current alignment.
    fn holds(&self, input: usize) -> bool {
        self.barrier.is_some() && self.arrived[input]
    }

    /// Records barrier `id` (or the end, `None`) from `input`; returns the barrier when it is
    /// now complete, with the held messages to handle next, in order, and how long the
    /// alignment took.
    fn arrive(
        &mut self,
        input: usize,
        id: Option<u64>,
        watermarks: &InputWatermarks,
    ) -> Option<(u64, VecDeque<Envelope>, Duration)> {
        match id {
            Some(id) => {
                self.barrier = Some(id);
                self.since.get_or_insert_with(Instant::now);
            }
            // An input ending between alignments changes nothing.
            None if self.barrier.is_none() => return None,
            None => {}
        }
        self.arrived[input] = true;
        let barrier = self.barrier?;
        let complete = (0..self.arrived.len()).all(|i| self.arrived[i] || watermarks.ended(i));
        if !complete {
            return None;
        }
        self.barrier = None;
        let took = self.since.take().map_or(Duration::ZERO, |t| t.elapsed());
        self.arrived.iter_mut().for_each(|a| *a = false);
        Some((barrier, std::mem::take(&mut self.held), took))
    }
}

/// Runs a subtask fed by channels; `sides[channel]` is the stage input the channel belongs to.
fn run_exchange_input(
    mut inbox: Box<dyn Inbox>,
    sides: Vec<usize>,
    mut chain: Chain,
    cancel: CancelHandle,
    records_in: StageCounter,
    mut checkpointing: TaskCheckpointing,
) -> Result<()> {
    checkpointing.start(&mut chain)?;
    let inputs = sides.len();
    let mut watermarks = InputWatermarks::new(inputs);
    watermarks.restore(chain.watermark);
    let mut alignment = Alignment::new(inputs);
    let mut replay: VecDeque<Envelope> = VecDeque::new();
    loop {
        if cancel.is_cancelled() {
            return Err(RuntimeError::Cancelled);
        }
        let (input, message) = match replay.pop_front() {
            Some(envelope) => envelope,
            None => inbox.recv().ok_or(RuntimeError::Cancelled)?,
        };
        if alignment.holds(input) {
            alignment.held.push_back((input, message));
            continue;
        }
        let mut aligned = None;
        let update = match message {
            Message::Data(batch) => {
                watermarks.on_data(input);
                records_in.add(batch.num_rows() as u64);
                chain.input(sides[input], batch)?;
                WatermarkUpdate::default()
            }
            Message::Watermark(w) => watermarks.on_watermark(input, w),
            Message::Idle => watermarks.on_idle(input),
            Message::Barrier(id) => {
                aligned = alignment.arrive(input, Some(id), &watermarks);
                WatermarkUpdate::default()
            }
            Message::EndOfStream => {
                let update = watermarks.on_end(input);
                // An ended input no longer holds back an alignment in progress.
                aligned = alignment.arrive(input, None, &watermarks);
                update
            }
        };
        if let Some(w) = update.advanced {
            chain.watermark(w)?;
        }
        if update.idle {
            chain.downstream.control(Message::Idle)?;
        }
        if let Some((id, held, alignment)) = aligned {
            checkpointing.checkpoint(id, &mut chain, None, alignment)?;
            for envelope in held.into_iter().rev() {
                replay.push_front(envelope);
            }
        }
        if watermarks.all_ended() && replay.is_empty() {
            chain.end(&mut checkpointing)?;
            checkpointing.report(TaskReport::Finished {
                stage: checkpointing.stage,
                subtask: checkpointing.info.index,
                snapshot: TaskSnapshot::default(),
                source: false,
            });
            return Ok(());
        }
    }
}

#[cfg(test)]
mod alignment_tests {
    use super::*;
    use crate::watermark::InputWatermarks;

    fn data(input: usize) -> Envelope {
        (input, Message::Watermark(input as i64))
    }

    #[test]
    fn a_barrier_holds_its_input_until_every_open_input_has_sent_it() {
        let mut watermarks = InputWatermarks::new(3);
        let mut a = Alignment::new(3);
        assert!(!a.holds(0));
        assert!(a.arrive(0, Some(7), &watermarks).is_none());
        std::thread::sleep(Duration::from_millis(2));
        // Input 0 is held back, the others still flow.
        assert!(a.holds(0) && !a.holds(1) && !a.holds(2));
        a.held.push_back(data(0));
        assert!(a.arrive(1, Some(7), &watermarks).is_none());
        assert!(a.holds(1));
        a.held.push_back(data(1));
        // Input 2 ends instead of sending the barrier: the alignment completes.
        watermarks.on_end(2);
        let (id, held, took) = a.arrive(2, None, &watermarks).expect("aligned");
        assert_eq!(id, 7);
        assert!(
            took >= Duration::from_millis(2),
            "alignment measured {took:?}"
        );
        assert_eq!(held.len(), 2);
        assert!(!a.holds(0) && !a.holds(1));
        // The next barrier only waits for the inputs still open.
        assert!(a.arrive(1, Some(8), &watermarks).is_none());
        assert_eq!(
            a.arrive(0, Some(8), &watermarks).map(|(id, _, _)| id),
            Some(8)
        );
    }

    #[test]
    fn an_input_ending_between_barriers_changes_nothing() {
        let mut watermarks = InputWatermarks::new(2);
        let mut a = Alignment::new(2);
        watermarks.on_end(0);
        assert!(a.arrive(0, None, &watermarks).is_none());
        assert!(!a.holds(0));
        assert_eq!(
            a.arrive(1, Some(1), &watermarks).map(|(id, _, _)| id),
            Some(1)
        );
    }
}
