//! The server's side of a cluster (see [`crate::cluster`]): the workers it knows, the
//! endpoints they call, and [`ClusterTasks`], which runs an attempt's tasks on them while
//! the job's checkpoint coordinator stays in the server.

// Heartbeats and the worker timeout are wall time by nature.
#![allow(clippy::disallowed_methods)]

use super::{json_body, now_ms, ApiError, ApiResult, AppState};
use crate::cluster::{
    AttemptMetrics, Command, Commands, Deployment, Poll, Registered, Registration, Reports,
    StoredCheckpoints,
};
use crate::spec::JobSpec;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use oxflow_runtime::coordinator::ReportSender;
use oxflow_runtime::executor::CancelHandle;
use oxflow_runtime::launcher::{RemoteRun, RemoteTasks};
use oxflow_runtime::metrics::JobMetrics;
use oxflow_runtime::plan::TaskId;
use oxflow_runtime::store::StoreRef;
use oxflow_runtime::RuntimeError;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a poll waits for a command before it is answered with none.
const LONG_POLL: Duration = Duration::from_secs(1);

/// A worker polls again as soon as it is answered: one silent for this long is stopped or
/// cut off. It gets no new tasks, and once its attempt is failing anyway it is not waited
/// for (the worker timeout is for the first sign of trouble, not for the last).
const SILENT: Duration = Duration::from_secs(2);

/// The most workers a server takes (each is a few entries; this bounds a flood).
const MAX_WORKERS: usize = 1024;

/// The most slots a worker may offer.
const MAX_SLOTS: usize = 4096;

/// One registered worker.
struct Worker {
    address: SocketAddr,
    slots: usize,
    registered_at_ms: u64,
    last_seen: Instant,
    last_seen_ms: u64,
    /// Commands not yet fetched by a poll.
    commands: Vec<Command>,
    wake: Arc<tokio::sync::Notify>,
}

/// One attempt running on workers.
struct Run {
    /// Handed the reports; dropped when the run ends, which ends its coordinator.
    reports: Mutex<Option<ReportSender>>,
    /// The workers with tasks of the attempt.
    workers: Vec<String>,
    /// How each worker's part ended (`Some(why)` if it failed).
    ended: Mutex<BTreeMap<String, Option<String>>>,
    /// The last counters of each worker's part.
    metrics: Mutex<BTreeMap<String, Vec<(String, u64)>>>,
}

/// The workers of a server, and the attempts running on them.
pub(crate) struct Cluster {
    workers: Mutex<BTreeMap<String, Worker>>,
    runs: Mutex<BTreeMap<(String, u64), Arc<Run>>>,
    next_worker: AtomicU64,
    next_attempt: AtomicU64,
    /// A worker not heard from for this long is lost.
    timeout: Duration,
    /// A file recording that workers have registered with this data directory: a restarted
    /// server gives them time to register again before it resumes its jobs.
    marker: PathBuf,
}

impl Cluster {
    pub(crate) fn new(timeout: Duration, marker: PathBuf) -> Cluster {
        Cluster {
            marker,
            workers: Mutex::default(),
            runs: Mutex::default(),
            next_worker: AtomicU64::new(1),
            // Attempt numbers stay unique across server restarts (a worker may still run an
            // attempt of the previous server).
            next_attempt: AtomicU64::new(now_ms()),
            timeout,
        }
    }

    /// Workers to place tasks on: those heard from recently (a poll returns within
    /// [`LONG_POLL`], so a live worker is never silent much longer), by id.
    fn placeable(&self) -> Vec<(String, SocketAddr)> {
        let recent = self.timeout.min(SILENT);
        self.workers
            .lock()
            .expect("workers lock")
            .iter()
            .filter(|(_, w)| w.last_seen.elapsed() < recent)
            .map(|(id, w)| (id.clone(), w.address))
            .collect()
    }

    /// Whether any worker can take tasks: then jobs run on workers, else in the server.
    pub(crate) fn has_workers(&self) -> bool {
        !self.placeable().is_empty()
    }

    /// Before resuming a job after a restart: if workers served this data directory before,
    /// waits (up to the worker timeout) for one to register again, so that the job resumes
    /// on the cluster rather than in the server alone.
    pub(crate) fn await_workers(&self) {
        if !self.marker.exists() {
            return;
        }
        let until = Instant::now() + self.timeout;
        while !self.has_workers() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        // The rest of the workers register within a poll or two of the first.
        if self.has_workers() {
            std::thread::sleep(LONG_POLL);
        }
    }

    /// Whether worker `id` was heard from within `within`.
    fn heard_within(&self, id: &str, within: Duration) -> bool {
        self.workers
            .lock()
            .expect("workers lock")
            .get(id)
            .is_some_and(|w| w.last_seen.elapsed() < within)
    }

    fn push(&self, worker: &str, command: Command) {
        if let Some(w) = self.workers.lock().expect("workers lock").get_mut(worker) {
            w.commands.push(command);
            w.wake.notify_one();
        }
    }

    fn register(&self, r: Registration) -> std::result::Result<Registered, ApiError> {
        if r.slots == 0 || r.slots > MAX_SLOTS {
            return Err(ApiError::bad_request(format!(
                "slots must be 1 to {MAX_SLOTS}, not {}",
                r.slots
            )));
        }
        let mut workers = self.workers.lock().expect("workers lock");
        // A worker lost long ago makes room; a live one is never dropped.
        let forget = self.timeout * 10;
        workers.retain(|_, w| w.last_seen.elapsed() < forget);
        if workers.len() >= MAX_WORKERS {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("this server already has {MAX_WORKERS} workers"),
            ));
        }
        // Numbered, and random: a worker of a previous run of this server (which did not
        // hear of the restart yet) must not poll as a new one.
        let id = format!(
            "w{}-{}",
            self.next_worker.fetch_add(1, Ordering::Relaxed),
            &secret()
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?[..8]
        );
        workers.insert(
            id.clone(),
            Worker {
                address: r.address,
                slots: r.slots,
                registered_at_ms: now_ms(),
                last_seen: Instant::now(),
                last_seen_ms: now_ms(),
                commands: Vec::new(),
                wake: Arc::default(),
            },
        );
        tracing::info!(worker = %id, address = %r.address, slots = r.slots, "worker registered");
        if let Err(e) = std::fs::write(&self.marker, format!("{}\n", now_ms())) {
            tracing::warn!(file = %self.marker.display(), error = %e, "could not record that workers registered");
        }
        Ok(Registered {
            id,
            timeout_ms: self.timeout.as_millis() as u64,
        })
    }

    /// Records a worker's heartbeat and counters; its commands, waiting up to
    /// [`LONG_POLL`] for one. `None`: no such worker.
    async fn poll(&self, id: &str, poll: Poll) -> Option<Commands> {
        let wake = {
            let mut workers = self.workers.lock().expect("workers lock");
            let w = workers.get_mut(id)?;
            w.last_seen = Instant::now();
            w.last_seen_ms = now_ms();
            w.wake.clone()
        };
        self.record_metrics(id, poll.metrics);
        let take = || -> Option<Vec<Command>> {
            let mut workers = self.workers.lock().expect("workers lock");
            let w = workers.get_mut(id)?;
            w.last_seen = Instant::now();
            w.last_seen_ms = now_ms();
            Some(std::mem::take(&mut w.commands))
        };
        let commands = take()?;
        if !commands.is_empty() {
            return Some(Commands { commands });
        }
        let _ = tokio::time::timeout(LONG_POLL, wake.notified()).await;
        take().map(|commands| Commands { commands })
    }

    fn record_metrics(&self, worker: &str, metrics: Vec<AttemptMetrics>) {
        let runs = self.runs.lock().expect("runs lock");
        for m in metrics {
            if let Some(run) = runs.get(&(m.job, m.attempt)) {
                if run.workers.iter().any(|w| w == worker) {
                    run.metrics
                        .lock()
                        .expect("metrics lock")
                        .insert(worker.to_string(), m.counters);
                }
            }
        }
    }

    fn reports(&self, worker: &str, r: Reports) {
        let run = self
            .runs
            .lock()
            .expect("runs lock")
            .get(&(r.job.clone(), r.attempt))
            .cloned();
        // Reports of an attempt that has ended (or of another server's) count for nothing.
        let Some(run) = run.filter(|run| run.workers.iter().any(|w| w == worker)) else {
            return;
        };
        if let Some(sender) = run.reports.lock().expect("reports lock").as_ref() {
            for report in r.reports {
                sender.send(report);
            }
        }
        if let Some(ended) = r.ended {
            // The counters at the end, then the end: the driver sums them before it
            // finishes the run.
            run.metrics
                .lock()
                .expect("metrics lock")
                .insert(worker.to_string(), ended.counters);
            // The first end counts (a cancel that reached a worker whose part had just
            // ended gets a second).
            run.ended
                .lock()
                .expect("ended lock")
                .entry(worker.to_string())
                .or_insert(ended.failure);
        }
    }

    fn list(&self) -> serde_json::Value {
        let busy: BTreeMap<String, usize> = {
            let runs = self.runs.lock().expect("runs lock");
            let mut busy = BTreeMap::new();
            for run in runs.values() {
                for w in &run.workers {
                    *busy.entry(w.clone()).or_insert(0) += 1;
                }
            }
            busy
        };
        let workers = self.workers.lock().expect("workers lock");
        let list: Vec<_> = workers
            .iter()
            .map(|(id, w)| {
                json!({
                    "id": id,
                    "address": w.address,
                    "slots": w.slots,
                    "state": if w.last_seen.elapsed() < self.timeout { "ALIVE" } else { "LOST" },
                    "registered_at_ms": w.registered_at_ms,
                    "last_heartbeat_ms": w.last_seen_ms,
                    "attempts": busy.get(id).copied().unwrap_or(0),
                })
            })
            .collect();
        json!({ "workers": list, "timeout_ms": self.timeout.as_millis() as u64 })
    }
}

/// A job's part of the server's checkpoint store.
pub(crate) struct JobStore {
    /// The job's prefix of the store.
    pub(crate) own: StoreRef,
    /// The whole store, as workers must name theirs.
    pub(crate) describe: String,
    /// The job's prefix.
    pub(crate) prefix: String,
}

/// Runs an attempt's tasks on the cluster's workers (see [`RemoteTasks`]).
pub(crate) struct ClusterTasks {
    cluster: Arc<Cluster>,
    job: String,
    spec: JobSpec,
    checkpoint_dir: PathBuf,
    /// With a checkpoint store, workers upload and download state there.
    store: Option<JobStore>,
    max_line_bytes: usize,
    metrics: JobMetrics,
    /// Where each task runs, for the job's status.
    placement: Arc<Mutex<Vec<serde_json::Value>>>,
    driver: Option<std::thread::JoinHandle<Option<RuntimeError>>>,
}

impl ClusterTasks {
    pub(crate) fn new(
        cluster: Arc<Cluster>,
        job: String,
        spec: JobSpec,
        checkpoint_dir: PathBuf,
        max_line_bytes: usize,
        metrics: JobMetrics,
        placement: Arc<Mutex<Vec<serde_json::Value>>>,
    ) -> ClusterTasks {
        ClusterTasks {
            cluster,
            job,
            spec,
            checkpoint_dir,
            store: None,
            max_line_bytes,
            metrics,
            placement,
            driver: None,
        }
    }
}

impl ClusterTasks {
    /// Keeps the job's state in `store` (see [`StoredCheckpoints`]).
    pub(crate) fn with_store(mut self, store: Option<JobStore>) -> ClusterTasks {
        self.store = store;
        self
    }
}

fn secret() -> std::result::Result<String, RuntimeError> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)
        .map_err(|e| RuntimeError::Worker(format!("making the attempt's secret: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl RemoteTasks for ClusterTasks {
    fn start(&mut self, run: RemoteRun) -> oxflow_runtime::Result<()> {
        let workers = self.cluster.placeable();
        if workers.is_empty() {
            return Err(RuntimeError::Worker(
                "no worker is alive to run the job".into(),
            ));
        }
        let attempt = self.cluster.next_attempt.fetch_add(1, Ordering::Relaxed);
        // Round robin over the tasks in stage order: every stage's subtasks (and so its key
        // groups) spread over all the workers.
        let mut mine: BTreeMap<String, Vec<TaskId>> = BTreeMap::new();
        let mut placement = Vec::new();
        let mut shown = Vec::new();
        for (i, task) in run.plan.tasks.iter().enumerate() {
            let (id, address) = &workers[i % workers.len()];
            mine.entry(id.clone()).or_default().push(task.id);
            placement.push((task.id, *address));
            shown.push(json!({
                "stage": task.id.stage,
                "subtask": task.id.subtask,
                "name": task.name,
                "worker": id,
                "address": address,
            }));
        }
        *self.placement.lock().expect("placement lock") = shown;
        let entry = Arc::new(Run {
            reports: Mutex::new(Some(run.reports.clone())),
            workers: mine.keys().cloned().collect(),
            ended: Mutex::default(),
            metrics: Mutex::default(),
        });
        self.cluster
            .runs
            .lock()
            .expect("runs lock")
            .insert((self.job.clone(), attempt), entry.clone());
        let secret = secret()?;
        let checkpointed = self.spec.checkpoints.is_some();
        let stored = match &self.store {
            Some(store) => {
                if let Some(restored) = &run.restore {
                    // A savepoint (or a checkpoint taken in one process) has its files
                    // here: the workers read them from the store.
                    let bytes =
                        oxflow_runtime::store::ensure_files(store.own.0.as_ref(), restored)?;
                    if bytes > 0 {
                        tracing::info!(job = %self.job, checkpoint = restored.manifest.id, bytes, "restored state uploaded to the store for the workers");
                    }
                }
                Some(StoredCheckpoints {
                    store: store.describe.clone(),
                    prefix: store.prefix.clone(),
                    restore: run.restore.as_ref().map(|r| r.manifest.clone()),
                })
            }
            None => None,
        };
        for (worker, tasks) in &mine {
            let deployment = Deployment {
                job: self.job.clone(),
                attempt,
                spec: self.spec.clone(),
                tasks: tasks.clone(),
                placement: placement.clone(),
                secret: secret.clone(),
                checkpoint_dir: checkpointed.then(|| self.checkpoint_dir.clone()),
                restore: match &stored {
                    Some(_) => None,
                    None => run.restore.as_ref().map(|r| r.dir.clone()),
                },
                stored: stored.clone(),
                max_line_bytes: self.max_line_bytes,
            };
            self.cluster
                .push(worker, Command::Deploy(Box::new(deployment)));
        }
        tracing::info!(job = %self.job, attempt, workers = mine.len(), tasks = run.plan.tasks.len(), "attempt deployed on workers");
        let driver = Driver {
            cluster: self.cluster.clone(),
            job: self.job.clone(),
            attempt,
            run: entry,
            trigger: run.trigger,
            completed: run.completed,
            cancel: run.cancel,
            metrics: self.metrics.clone(),
        };
        self.driver = Some(
            std::thread::Builder::new()
                .name(format!("cluster-{}", self.job))
                .spawn(move || driver.drive())
                .map_err(|e| RuntimeError::io("spawning the cluster driver", e))?,
        );
        Ok(())
    }

    fn join(&mut self) -> Option<RuntimeError> {
        let driver = self.driver.take()?;
        driver.join().unwrap_or_else(|_| {
            Some(RuntimeError::Panic {
                task: "cluster driver".into(),
                message: "thread panicked".into(),
            })
        })
    }
}

/// Follows one attempt on the workers: passes the coordinator's triggers and completions
/// on, gathers counters, and ends it when every worker's part has ended, or fails it when
/// one fails or is lost.
struct Driver {
    cluster: Arc<Cluster>,
    job: String,
    attempt: u64,
    run: Arc<Run>,
    trigger: Arc<AtomicU64>,
    completed: Arc<AtomicU64>,
    cancel: CancelHandle,
    metrics: JobMetrics,
}

impl Driver {
    fn to_all(&self, ended: &BTreeMap<String, Option<String>>, command: impl Fn() -> Command) {
        for w in self.run.workers.iter().filter(|w| !ended.contains_key(*w)) {
            self.cluster.push(w, command());
        }
    }

    fn sum_metrics(&self) {
        let mut sums: BTreeMap<String, u64> = BTreeMap::new();
        for counters in self.run.metrics.lock().expect("metrics lock").values() {
            for (name, value) in counters {
                let sum = sums.entry(name.clone()).or_insert(0);
                *sum = sum.saturating_add(*value);
            }
        }
        for (name, value) in sums {
            self.metrics.counter(&name).set(value);
        }
    }

    fn drive(self) -> Option<RuntimeError> {
        let (job, attempt) = (self.job.clone(), self.attempt);
        let (mut triggered, mut completed) = (0, 0);
        let mut failure: Option<String> = None;
        let mut cancel_sent = false;
        let mut lost = BTreeSet::new();
        let mut last_sum = Instant::now();
        // Cancelled (by the job's owner or its coordinator) before any worker failed: the
        // workers' parts then end as cancelled, which is no failure of theirs.
        let mut cancelled_first = false;
        loop {
            cancelled_first |= failure.is_none() && self.cancel.is_cancelled();
            let ended = self.run.ended.lock().expect("ended lock").clone();
            let t = self.trigger.load(Ordering::SeqCst);
            if t > triggered {
                triggered = t;
                self.to_all(&ended, || Command::Trigger {
                    job: job.clone(),
                    attempt,
                    checkpoint: t,
                });
            }
            let c = self.completed.load(Ordering::SeqCst);
            if c > completed {
                completed = c;
                self.to_all(&ended, || Command::Complete {
                    job: job.clone(),
                    attempt,
                    checkpoint: c,
                });
            }
            // Once the attempt is failing, a worker silent for a little while is not waited
            // for: it is the one that died, most likely.
            let patience = if self.cancel.is_cancelled() {
                self.cluster.timeout.min(SILENT)
            } else {
                self.cluster.timeout
            };
            for w in &self.run.workers {
                if !ended.contains_key(w)
                    && !lost.contains(w)
                    && !self.cluster.heard_within(w, patience)
                {
                    lost.insert(w.clone());
                    failure.get_or_insert_with(|| {
                        format!(
                            "worker {w} was lost: no heartbeat for {} ms",
                            patience.as_millis()
                        )
                    });
                }
            }
            for (w, why) in &ended {
                if let Some(why) = why {
                    failure.get_or_insert_with(|| format!("worker {w}: {why}"));
                }
            }
            if failure.is_some() && !self.cancel.is_cancelled() {
                tracing::warn!(job = %job, attempt, failure = ?failure, "an attempt failed on the workers; cancelling it everywhere");
                self.cancel.cancel();
            }
            if self.cancel.is_cancelled() && !cancel_sent {
                cancel_sent = true;
                self.to_all(&ended, || Command::Cancel {
                    job: job.clone(),
                    attempt,
                });
            }
            if last_sum.elapsed() >= Duration::from_millis(100) {
                self.sum_metrics();
                last_sum = Instant::now();
            }
            let all_ended = self
                .run
                .workers
                .iter()
                .all(|w| ended.contains_key(w) || lost.contains(w));
            if all_ended {
                tracing::info!(job = %job, attempt, lost = lost.len(), "an attempt ended on every worker");
                self.sum_metrics();
                self.cluster
                    .runs
                    .lock()
                    .expect("runs lock")
                    .remove(&(job.clone(), attempt));
                // The coordinator ends once no one can report any more.
                self.run.reports.lock().expect("reports lock").take();
                return match failure {
                    Some(why) if !cancelled_first => Some(RuntimeError::Worker(why)),
                    _ if self.cancel.is_cancelled() => Some(RuntimeError::Cancelled),
                    _ => None,
                };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

pub(super) async fn register(State(state): State<AppState>, request: Request) -> ApiResult {
    let registration: Registration = json_body(&state, request).await?;
    let registered = state.manager.cluster.register(registration)?;
    Ok((StatusCode::CREATED, Json(registered)).into_response())
}

pub(super) async fn list(State(state): State<AppState>) -> ApiResult {
    Ok(Json(state.manager.cluster.list()).into_response())
}

pub(super) async fn poll(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    request: Request,
) -> ApiResult {
    let poll: Poll = json_body(&state, request).await?;
    match state.manager.cluster.poll(&id, poll).await {
        Some(commands) => Ok(Json(commands).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no worker `{id}`: register again"),
        )),
    }
}

pub(super) async fn reports(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    request: Request,
) -> ApiResult {
    let reports: Reports = json_body(&state, request).await?;
    state.manager.cluster.reports(&id, reports);
    Ok(Json(json!({})).into_response())
}
