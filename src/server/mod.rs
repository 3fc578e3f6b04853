//! The runtime server: jobs submitted as specs over REST, run, watched, stopped, resumed, and
//! restarted from their last checkpoint when they fail.
//!
//! Each job lives in `DATA_DIR/jobs/<id>/`: `job.json` (its spec and status, rewritten
//! atomically at every state change) and `checkpoints/`. A server started on a data directory
//! resumes every job that was running when the last one died (from its latest checkpoint) and
//! lists the others. A failed attempt restarts from the latest checkpoint after a backoff
//! that doubles each time, up to the spec's `restart.max_attempts`; then the job is FAILED
//! with its cause. Jobs run on threads of their own, so a failing job never stops the server.
//!
//! The API (`docs/server.md`, `docs/openapi.yaml`) is versioned under `/v1`; every error is
//! JSON `{"error": "..."}`.
//!
//! Closed by default: every endpoint but `/health` needs `Authorization: Bearer <token>`
//! (the token of `--token-file`, else one the server makes in `DATA_DIR/token`, mode 0600);
//! only an explicit `--no-auth` on a loopback address opens it. POST bodies must be JSON, a
//! loopback server answers only to loopback Host names (no DNS rebinding), and no CORS
//! header is ever sent. A submitted spec passes the `policy`: its paths stay under the data
//! directory or an `--allow-path`, its Kafka properties pass an allow-list, its windows,
//! checkpoints and restarts stay within [`Limits`], and its secrets never appear in answers
//! or logs. Metrics are made in `metrics`.

// The server reports wall-clock times (start, uptime, records per second) and backs off in
// real time; jobs themselves run on the runtime's clock.
#![allow(clippy::disallowed_methods)]

mod cluster;
mod metrics;
mod openapi;
mod policy;
mod ui;

pub use openapi::{openapi, openapi_text};
pub use policy::Limits;
use policy::{redacted, scrub, secrets_of, Policy, Refusal};

use crate::error::{OxflowError, Result};
use crate::spec::{JobSpec, Registry};
use crate::Pipeline;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use oxflow_runtime::checkpoint::RestoreFrom;
use oxflow_runtime::coordinator::SavepointRequests;
use oxflow_runtime::executor::CancelHandle;
use oxflow_runtime::graph::PlanDescription;
use oxflow_runtime::metrics::{watermark_value, CheckpointHistory, JobMetrics, StageFigure};
use oxflow_runtime::store::{PrefixedStore, StoreRef};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How a server listens, where it keeps its jobs, and what it allows them.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (default `127.0.0.1:8081`; port 0 picks a free one).
    pub listen: SocketAddr,
    /// Where jobs, their status and their checkpoints are kept.
    pub data_dir: PathBuf,
    /// The bearer token every endpoint but `/health` requires. `None`: the token kept in
    /// `DATA_DIR/token`, made (random, mode 0600) when there is none.
    pub token: Option<String>,
    /// Require no token at all; refused unless `listen` is a loopback address.
    pub no_auth: bool,
    /// Directories besides the data directory that submitted specs may read and write.
    pub allowed_paths: Vec<PathBuf>,
    /// The bounds every job is held to.
    pub limits: Limits,
    /// Where every job's completed checkpoints are also kept, under `jobs/<id>/`, so that a
    /// job survives the loss of this machine's data directory ([`oxflow_runtime::store`]).
    pub checkpoint_store: Option<StoreRef>,
    /// A worker not heard from for this long is lost, and the attempts it ran fail
    /// (default 5 s).
    pub worker_timeout: Duration,
}

impl ServerConfig {
    /// Loopback on port 8081, jobs under `data_dir`, the token of `DATA_DIR/token`, the
    /// default limits.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            data_dir: data_dir.into(),
            token: None,
            no_auth: false,
            allowed_paths: Vec::new(),
            limits: Limits::default(),
            checkpoint_store: None,
            worker_timeout: Duration::from_secs(5),
        }
    }
}

/// The file, in the data directory, holding the token a server made for itself.
pub const TOKEN_FILE: &str = "token";

/// The token of `DATA_DIR/token`, or a new random one written there (mode 0600) if there is
/// none: kept across restarts, so clients keep working.
fn load_or_create_token(data_dir: &Path) -> Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    let io = |what: &str, e: std::io::Error| {
        OxflowError::Server(format!("{what} the token file {}: {e}", path.display()))
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {
            return Err(OxflowError::Server(format!(
                "the token file {} is empty",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading", e)),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| OxflowError::Server(format!("making a token: {e}")))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(data_dir).map_err(|e| io("creating the directory of", e))?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io("creating", e))?;
    file.write_all(format!("{token}\n").as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| io("writing", e))?;
    Ok(token)
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Running (an attempt is executing).
    Running,
    /// An attempt failed; the next starts after a backoff.
    Restarting,
    /// Its sources ended and its output is committed.
    Finished,
    /// Failed more times than its restart strategy allows.
    Failed,
    /// Cancelled on request.
    Cancelled,
    /// Stopped with a savepoint, from which it can be resumed.
    Stopped,
}

impl JobState {
    fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Finished | JobState::Failed | JobState::Cancelled | JobState::Stopped
        )
    }
}

/// A job's stored record: its spec and what happened to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobRecord {
    id: String,
    spec: JobSpec,
    state: JobState,
    submitted_at_ms: u64,
    /// Start of the current (or last) attempt.
    started_at_ms: Option<u64>,
    finished_at_ms: Option<u64>,
    restarts: u32,
    /// Why the last attempt failed.
    failure: Option<String>,
    /// The savepoint or checkpoint the job was submitted to start from.
    restore_from: Option<PathBuf>,
    /// The savepoint a stop took.
    savepoint: Option<PathBuf>,
    /// Times a restarted server resumed the job: each counts against its restart budget,
    /// so that a job that takes its server down does not do it forever.
    #[serde(default)]
    resumes: u32,
    /// The last failed attempts, newest last (at most [`FAILURES_KEPT`]).
    #[serde(default)]
    failures: VecDeque<Failure>,
}

/// How many failed attempts a job's record keeps.
const FAILURES_KEPT: usize = 10;

/// One failed attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Failure {
    /// When it failed, in milliseconds since the Unix epoch.
    at_ms: u64,
    /// Which attempt it was (1 is the first).
    attempt: u32,
    /// Why, secrets removed.
    cause: String,
}

impl JobRecord {
    /// Whether the job has used up its restart budget: failed attempts and resumes by a
    /// restarted server both count.
    fn restarts_spent(&self) -> bool {
        self.restarts + self.resumes >= self.restart_budget()
    }

    /// The restarts its spec allows.
    fn restart_budget(&self) -> u32 {
        self.spec.restart.clone().unwrap_or_default().max_attempts
    }

    /// Records a failed attempt: the last cause, and the history of causes.
    fn failed(&mut self, cause: String) {
        if self.failures.len() == FAILURES_KEPT {
            self.failures.pop_front();
        }
        self.failures.push_back(Failure {
            at_ms: now_ms(),
            attempt: self.restarts + self.resumes + 1,
            cause: scrub(&cause, &secrets_of(&self.spec)),
        });
        self.failure = Some(cause);
    }
}

/// The live handles of a running attempt.
struct Attempt {
    cancel: CancelHandle,
    savepoints: SavepointRequests,
    metrics: JobMetrics,
    started: Instant,
}

/// One job: its record, persisted at each change, and its running attempt.
struct JobEntry {
    record: Mutex<JobRecord>,
    attempt: Mutex<Option<Attempt>>,
    /// What a cancel or stop request asked the job to become.
    ending: Mutex<Option<JobState>>,
    dir: PathBuf,
    /// The checkpoints of every attempt, newest last.
    history: CheckpointHistory,
    /// The job's dataflow, as its spec last built it.
    plan: Mutex<Option<PlanDescription>>,
    /// Where the current attempt's tasks run, on a cluster (empty: in this process).
    placement: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl JobEntry {
    fn record(&self) -> JobRecord {
        self.record.lock().expect("job lock").clone()
    }

    /// Applies `change` to the record and writes it (temp file, fsync, rename).
    fn update(&self, change: impl FnOnce(&mut JobRecord)) -> Result<()> {
        let mut record = self.record.lock().expect("job lock");
        let before = record.state;
        change(&mut record);
        // A failure quotes errors, which may quote a URI: no secret is kept in it.
        if let Some(failure) = &record.failure {
            record.failure = Some(scrub(failure, &secrets_of(&record.spec)));
        }
        if record.state != before {
            tracing::info!(job = %record.id, from = ?before, to = ?record.state, failure = record.failure.as_deref(), "job state changed");
        }
        write_record(&self.dir, &record)
    }
}

fn write_record(dir: &Path, record: &JobRecord) -> Result<()> {
    let io = |what: &str, e: std::io::Error| {
        OxflowError::InvalidPipeline(format!("{what} {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| io("creating", e))?;
    let tmp = dir.join(".job.json.tmp");
    let bytes = serde_json::to_vec_pretty(record)
        .map_err(|e| OxflowError::InvalidPipeline(format!("encoding job {}: {e}", record.id)))?;
    {
        use std::io::Write;
        // The record holds the spec, secrets included: readable by the server's user alone.
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("writing the job record in", e))?;
        file.write_all(&bytes)
            .map_err(|e| io("writing the job record in", e))?;
        file.sync_all()
            .map_err(|e| io("syncing the job record in", e))?;
    }
    std::fs::rename(&tmp, dir.join("job.json")).map_err(|e| io("renaming the job record in", e))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The jobs of a server.
struct Manager {
    registry: Registry,
    policy: Policy,
    checkpoint_store: Option<StoreRef>,
    jobs_dir: PathBuf,
    jobs: Mutex<BTreeMap<String, Arc<JobEntry>>>,
    next: AtomicU64,
    /// The workers jobs run on (none registered: jobs run in this process).
    cluster: Arc<cluster::Cluster>,
}

impl Manager {
    fn job(&self, id: &str) -> std::result::Result<Arc<JobEntry>, ApiError> {
        self.jobs
            .lock()
            .expect("jobs lock")
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job `{id}`")))
    }

    /// A pipeline with this server's limits, to build jobs on.
    fn pipeline(&self) -> Pipeline {
        Pipeline::new().with_max_line_bytes(self.policy.limits.max_line_bytes)
    }

    /// Jobs running or waiting to restart.
    fn active_jobs(&self) -> usize {
        let jobs = self.jobs.lock().expect("jobs lock");
        jobs.values()
            .filter(|j| !j.record().state.is_terminal())
            .count()
    }

    /// Checks a spec against the policy and that it builds, stores the job and starts it.
    fn submit(
        self: &Arc<Self>,
        mut spec: JobSpec,
        restore_from: Option<PathBuf>,
    ) -> std::result::Result<String, ApiError> {
        let secrets = secrets_of(&spec);
        let refused = |e: OxflowError| ApiError::bad_request(scrub(&e.to_string(), &secrets));
        self.policy.check_spec(&mut spec)?;
        let restore_from = restore_from
            .map(|p| self.policy.check_path("restore_from", &p))
            .transpose()?;
        let max = self.policy.limits.max_running_jobs;
        if self.active_jobs() >= max {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("this server already runs {max} jobs (--max-running-jobs); cancel or stop one first"),
            ));
        }
        let id = format!(
            "{:x}{:04x}",
            now_ms(),
            self.next.fetch_add(1, Ordering::Relaxed) & 0xffff
        );
        let dir = self.jobs_dir.join(&id);
        // Built once here so that a bad spec is refused now, with its reason.
        let job = self
            .pipeline()
            .job_from_spec(&spec, &self.registry, Some(&dir.join("checkpoints")))
            .map_err(refused)?;
        self.policy.check_subtasks(job.subtasks())?;
        let plan = job.plan();
        drop(job);
        if let Some(path) = &restore_from {
            oxflow_runtime::checkpoint::load(path).map_err(|e| refused(OxflowError::from(e)))?;
        }
        let record = JobRecord {
            id: id.clone(),
            spec,
            state: JobState::Running,
            submitted_at_ms: now_ms(),
            started_at_ms: None,
            finished_at_ms: None,
            restarts: 0,
            failure: None,
            restore_from,
            savepoint: None,
            resumes: 0,
            failures: VecDeque::new(),
        };
        write_record(&dir, &record).map_err(refused)?;
        let entry = self.register(record, dir);
        *entry.plan.lock().expect("plan lock") = Some(plan);
        self.supervise(entry, false);
        Ok(id)
    }

    /// Adds a job, kept in `dir`, to those the server knows.
    fn register(&self, record: JobRecord, dir: PathBuf) -> Arc<JobEntry> {
        let id = record.id.clone();
        let entry = Arc::new(JobEntry {
            record: Mutex::new(record),
            attempt: Mutex::new(None),
            ending: Mutex::new(None),
            dir,
            history: CheckpointHistory::default(),
            plan: Mutex::new(None),
            placement: Arc::default(),
        });
        self.jobs
            .lock()
            .expect("jobs lock")
            .insert(id, entry.clone());
        entry
    }

    /// Loads the jobs of the data directory, resuming those that were running.
    fn load(self: &Arc<Self>) -> Result<()> {
        let Ok(listing) = std::fs::read_dir(&self.jobs_dir) else {
            return Ok(());
        };
        for dir in listing.filter_map(|e| e.ok()).map(|e| e.path()) {
            let path = dir.join("job.json");
            let record: JobRecord = match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "skipping a job whose record is unreadable");
                    continue;
                }
            };
            let resume = !record.state.is_terminal();
            let id = record.id.clone();
            let entry = self.register(record, dir);
            if !resume {
                continue;
            }
            // The server died while this job ran, maybe because of it: a resume spends the
            // restart budget like a failed attempt, so a job that kills its server is FAILED
            // after a few tries instead of a crash loop.
            let record = entry.record();
            if record.restarts_spent() {
                let failure = format!(
                    "the server stopped {} times while this job ran, and the job had restarted {} times: its {} restarts are spent, so it is not resumed",
                    record.resumes + 1,
                    record.restarts,
                    record.restart_budget()
                );
                tracing::error!(job = %id, "{failure}");
                entry.update(|r| {
                    r.state = JobState::Failed;
                    r.failed(failure);
                    r.finished_at_ms = Some(now_ms());
                })?;
                continue;
            }
            entry.update(|r| r.resumes += 1)?;
            tracing::info!(job = %id, "resuming a job that was running");
            self.supervise(entry, true);
        }
        Ok(())
    }

    /// Runs a job's attempts on a thread of its own until it ends.
    fn supervise(self: &Arc<Self>, entry: Arc<JobEntry>, resumed: bool) {
        let manager = self.clone();
        let id = entry.record().id;
        let spawned = std::thread::Builder::new()
            .name(format!("job-{id}"))
            .spawn(move || manager.run_attempts(&entry, resumed));
        if let Err(e) = spawned {
            tracing::error!(job = %id, error = %e, "could not start the job's thread");
        }
    }

    fn run_attempts(&self, entry: &JobEntry, resumed: bool) {
        let span = tracing::info_span!("job", id = %entry.record().id);
        let _guard = span.enter();
        if resumed {
            self.cluster.await_workers();
        }
        let mut first = !resumed;
        loop {
            let record = entry.record();
            let restart = record.spec.restart.clone().unwrap_or_default();
            let result = self.attempt(entry, &record, first);
            first = false;
            *entry.attempt.lock().expect("attempt lock") = None;
            let ending = *entry.ending.lock().expect("ending lock");
            let outcome = match (result, ending) {
                (_, Some(state)) => Some((state, None)),
                (Ok(()), None) => Some((JobState::Finished, None)),
                (Err(e), None) if record.restarts_spent() => {
                    Some((JobState::Failed, Some(e.to_string())))
                }
                // Running again cannot help (a sink fenced by another instance of the job).
                (Err(e), None) if e.is_fatal() => Some((JobState::Failed, Some(e.to_string()))),
                (Err(e), None) => {
                    let _ = entry.update(|r| {
                        r.state = JobState::Restarting;
                        r.failed(e.to_string());
                        r.restarts += 1;
                    });
                    let backoff = restart.backoff(record.restarts);
                    let e = scrub(&e.to_string(), &secrets_of(&record.spec));
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "attempt failed; restarting from the latest checkpoint");
                    if self.wait_or_end(entry, backoff) {
                        continue;
                    }
                    let ending = entry
                        .ending
                        .lock()
                        .expect("ending lock")
                        .unwrap_or(JobState::Cancelled);
                    Some((ending, None))
                }
            };
            if let Some((state, failure)) = outcome {
                let _ = entry.update(|r| {
                    r.state = state;
                    if let Some(cause) = failure {
                        r.failed(cause);
                    }
                    r.finished_at_ms = Some(now_ms());
                });
                return;
            }
        }
    }

    /// Sleeps `backoff` unless the job is cancelled meanwhile; says whether to go on.
    fn wait_or_end(&self, entry: &JobEntry, backoff: Duration) -> bool {
        let until = Instant::now() + backoff;
        while Instant::now() < until {
            if entry.ending.lock().expect("ending lock").is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// One attempt: builds the job from its spec and runs it to its end.
    fn attempt(&self, entry: &JobEntry, record: &JobRecord, first: bool) -> Result<()> {
        let checkpoints = entry.dir.join("checkpoints");
        let mut job = self
            .pipeline()
            .job_from_spec(&record.spec, &self.registry, Some(&checkpoints))?
            .with_checkpoint_history(entry.history.clone());
        *entry.plan.lock().expect("plan lock") = Some(job.plan());
        let has_checkpoints = record.spec.checkpoints.is_some();
        let on_workers = self.cluster.has_workers();
        let prefix = format!("jobs/{}", record.id);
        let mut own_store = None;
        if let (Some(store), true) = (&self.checkpoint_store, has_checkpoints) {
            let own = StoreRef(Arc::new(PrefixedStore::new(store.0.clone(), &prefix)?));
            if !first && !on_workers {
                // This machine's copies may be gone (or older): the store's newest comes first.
                let (fetched, _) =
                    oxflow_runtime::store::fetch_latest(own.0.as_ref(), &checkpoints)?;
                if let Some(id) = fetched {
                    tracing::info!(job = %record.id, checkpoint = id, "restoring a checkpoint from the store");
                }
            }
            job = job.with_checkpoint_store(own.clone());
            own_store = Some(own);
        }
        // A later attempt (a restart, or a resume after the server died) goes on from the
        // job's own latest checkpoint; until it has one, from the savepoint it was submitted
        // with; else from the beginning (the sink then drops what earlier attempts wrote).
        // On workers with a store, the store alone holds the state: only it can say.
        let own_checkpoint = !first
            && has_checkpoints
            && match &own_store {
                Some(own) if on_workers => matches!(
                    oxflow_runtime::store::latest_manifest(own.0.as_ref(), &checkpoints),
                    Ok((Some(_), _))
                ),
                _ => matches!(
                    oxflow_runtime::checkpoint::latest(&checkpoints),
                    Ok((Some(_), _))
                ),
            };
        entry.placement.lock().expect("placement lock").clear();
        if on_workers {
            // The workers build the same graph from the spec: its parallelism is fixed
            // here, not left to each machine's core count.
            let mut spec = record.spec.clone();
            spec.parallelism
                .get_or_insert(self.pipeline().parallelism());
            let metrics = job.metrics();
            job = job.with_remote(Box::new(
                cluster::ClusterTasks::new(
                    self.cluster.clone(),
                    record.id.clone(),
                    spec,
                    checkpoints.clone(),
                    self.policy.limits.max_line_bytes,
                    metrics,
                    entry.placement.clone(),
                )
                .with_store(own_store.map(|own| {
                    cluster::JobStore {
                        own,
                        describe: self
                            .checkpoint_store
                            .as_ref()
                            .map(|s| s.0.describe())
                            .unwrap_or_default(),
                        prefix,
                    }
                })),
            ));
        }
        job = match &record.restore_from {
            _ if own_checkpoint => job.restore_from(RestoreFrom::Latest),
            Some(path) => job.restore_from(RestoreFrom::Path(path.clone())),
            None if !first && has_checkpoints => job.restore_from(RestoreFrom::Latest),
            None => job,
        };
        *entry.attempt.lock().expect("attempt lock") = Some(Attempt {
            cancel: job.cancel_handle(),
            savepoints: job.savepoints(),
            metrics: job.metrics(),
            started: Instant::now(),
        });
        entry.update(|r| {
            r.state = JobState::Running;
            r.started_at_ms = Some(now_ms());
        })?;
        if entry.ending.lock().expect("ending lock").is_some() {
            return Err(OxflowError::Runtime(Box::new(
                oxflow_runtime::RuntimeError::Cancelled,
            )));
        }
        job.execute_blocking().map(|_| ())
    }

    /// Takes a savepoint of a running job, waiting up to `timeout`.
    fn savepoint(
        &self,
        entry: &JobEntry,
        timeout: Duration,
    ) -> std::result::Result<PathBuf, ApiError> {
        let name = format!("savepoint-{}", now_ms());
        let receiver = {
            let attempt = entry.attempt.lock().expect("attempt lock");
            let attempt = attempt.as_ref().ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "job `{}` is {:?}, not running: no savepoint",
                        entry.record().id,
                        entry.record().state
                    ),
                )
            })?;
            attempt.savepoints.request(&name)
        };
        match receiver.recv_timeout(timeout) {
            Ok(Ok(path)) => Ok(path),
            Ok(Err(e)) => Err(ApiError::new(StatusCode::CONFLICT, format!("the savepoint failed: {e}"))),
            Err(_) => Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("no savepoint within {} s (a finished job or one without checkpoints takes none)", timeout.as_secs()),
            )),
        }
    }

    /// Ends a job as `state` (cancelled, or stopped after a savepoint) and waits for it.
    fn end(&self, entry: &JobEntry, state: JobState) {
        *entry.ending.lock().expect("ending lock") = Some(state);
        if let Some(attempt) = entry.attempt.lock().expect("attempt lock").as_ref() {
            attempt.cancel.cancel();
        }
        // Operators check for cancellation between bounded units of work: a job ends well
        // within this, even in a hot loop.
        let until = Instant::now() + Duration::from_secs(10);
        while !entry.record().state.is_terminal() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// An error answered as JSON.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<OxflowError> for ApiError {
    fn from(e: OxflowError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, m),
            Refusal::Invalid(m) => ApiError::bad_request(m),
        }
    }
}

type ApiResult = std::result::Result<Response, ApiError>;

#[derive(Clone)]
struct AppState {
    manager: Arc<Manager>,
    token: Option<Arc<str>>,
    max_body_bytes: usize,
    request_timeout: Duration,
    /// Listening on a loopback address: only loopback Host names are answered.
    loopback: bool,
}

impl AppState {
    /// Whether `given` is the server's token (any is, on a server without one). Constant
    /// time: how much of a guess matches must not show in how long it takes.
    fn token_matches(&self, given: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.token
            .as_ref()
            .is_none_or(|token| given.as_bytes().ct_eq(token.as_bytes()).into())
    }
}

/// A submission: the spec or a Flink SQL script (exactly one), and optionally where to
/// start from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Submit {
    #[serde(default)]
    spec: Option<JobSpec>,
    #[serde(default)]
    sql: Option<String>,
    #[serde(default)]
    restore_from: Option<PathBuf>,
}

impl Manager {
    /// The spec a SQL script plans into. Each table's connector passes the server's policy
    /// before planning reads anything of it; a refusal keeps its status (403 for a path).
    fn plan_sql(self: &Arc<Self>, script: &str) -> std::result::Result<JobSpec, ApiError> {
        let refusal: Arc<Mutex<Option<ApiError>>> = Arc::default();
        let manager = self.clone();
        let seen = refusal.clone();
        let check: crate::sql::ConnectorCheck = Box::new(move |probe| {
            let mut probe = probe.clone();
            manager.policy.check_spec(&mut probe).map_err(|r| {
                let error = ApiError::from(r);
                let message = error.message.clone();
                *seen.lock().expect("refusal lock") = Some(error);
                OxflowError::InvalidPipeline(message)
            })
        });
        let mut session = crate::sql::SqlSession::new(self.pipeline()).with_connector_check(check);
        session.job_spec(script).map_err(|e| {
            refusal
                .lock()
                .expect("refusal lock")
                .take()
                .map(|r| ApiError::new(r.status, e.to_string()))
                .unwrap_or_else(|| ApiError::bad_request(e.to_string()))
        })
    }
}

/// The Oxflow runtime server, running the jobs it is sent with the functions of `registry`.
pub struct Server {
    registry: Registry,
}

/// A server that is listening.
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The token clients must send (none with `no_auth`).
    pub token: Option<String>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Stops listening (running jobs go on until the process ends).
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle
            .await
            .map_err(|e| OxflowError::InvalidPipeline(format!("the server task failed: {e}")))?
            .map_err(|e| OxflowError::InvalidPipeline(format!("the server failed: {e}")))
    }

    /// Serves until the listener fails.
    pub async fn wait(self) -> Result<()> {
        self.handle
            .await
            .map_err(|e| OxflowError::InvalidPipeline(format!("the server task failed: {e}")))?
            .map_err(|e| OxflowError::InvalidPipeline(format!("the server failed: {e}")))
    }
}

impl Server {
    /// A server whose jobs may name the functions of `registry`.
    pub fn new(registry: Registry) -> Self {
        Server { registry }
    }

    /// Loads the jobs of the data directory (resuming those that were running), binds and
    /// serves in the background.
    pub async fn start(self, config: ServerConfig) -> Result<RunningServer> {
        let loopback = config.listen.ip().is_loopback();
        let token = match (&config.token, config.no_auth) {
            (Some(_), true) => {
                return Err(OxflowError::Server(
                    "a token and no authentication were both asked for; choose one".into(),
                ))
            }
            (None, true) if !loopback => {
                return Err(OxflowError::Server(format!(
                "--no-auth is refused on {}: without a token only a loopback address may be served",
                config.listen
            )))
            }
            (None, true) => {
                tracing::warn!("serving without authentication (--no-auth), on loopback only");
                None
            }
            (Some(t), false) if t.trim().is_empty() => {
                return Err(OxflowError::Server("the token is empty".into()))
            }
            (Some(t), false) => Some(t.trim().to_string()),
            (None, false) => Some(load_or_create_token(&config.data_dir)?),
        };
        let policy = Policy::new(
            &config.data_dir,
            &config.allowed_paths,
            config.limits.clone(),
        )
        .map_err(|e| {
            OxflowError::Server(format!("data directory {}: {e}", config.data_dir.display()))
        })?;
        let manager = Arc::new(Manager {
            registry: self.registry,
            policy,
            checkpoint_store: config.checkpoint_store.clone(),
            jobs_dir: config.data_dir.join("jobs"),
            jobs: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
            cluster: Arc::new(cluster::Cluster::new(
                config.worker_timeout,
                config.data_dir.join("workers-seen"),
            )),
        });
        manager.load()?;
        let state = AppState {
            manager,
            token: token.clone().map(Arc::from),
            max_body_bytes: config.limits.max_body_bytes,
            request_timeout: config.limits.request_timeout,
            loopback,
        };
        let app = router(state);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| {
                OxflowError::InvalidPipeline(format!("listening on {}: {e}", config.listen))
            })?;
        let addr = listener.local_addr().map_err(|e| {
            OxflowError::InvalidPipeline(format!("listening on {}: {e}", config.listen))
        })?;
        tracing::info!(%addr, data_dir = %config.data_dir.display(), "oxflow server listening");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
        });
        Ok(RunningServer {
            addr,
            token,
            shutdown: Some(tx),
            handle,
        })
    }
}

fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(status).delete(cancel))
        .route("/v1/jobs/{id}/savepoints", post(savepoint))
        .route("/v1/jobs/{id}/stop", post(stop))
        .route("/v1/jobs/{id}/resume", post(resume))
        .route("/v1/workers", post(cluster::register).get(cluster::list))
        .route("/v1/workers/{id}/poll", post(cluster::poll))
        .route("/v1/workers/{id}/reports", post(cluster::reports))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .merge(api)
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/", get(ui::page))
        .route("/ui/{*file}", get(ui::asset))
        .route("/v1/session", post(ui::login).delete(ui::logout))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint; see docs/server.md",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// What every request passes, before any handler: a loopback server answers only to
/// loopback Host names (a page on another site that rebinds its name to 127.0.0.1 gets
/// nothing), POST bodies are JSON (so no "simple" cross-site request gets through), and a
/// request takes at most the request timeout.
async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.loopback {
        if let Some(host) = request.headers().get(header::HOST) {
            let host = host.to_str().unwrap_or("");
            if !is_loopback_host(host) {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("Host `{host}` is not a loopback name; this server listens on loopback and answers only to localhost, 127.0.0.1 or [::1]"),
                )
                .into_response();
            }
        }
    }
    if request.method() == axum::http::Method::POST {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        // HTTP/1.1: a request has a body only with a Content-Length or a Transfer-Encoding.
        let headers = request.headers();
        let has_body = headers.contains_key(header::TRANSFER_ENCODING)
            || headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|l| l.to_str().ok() != Some("0"));
        let json = content_type.is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
        if (content_type.is_some() || has_body) && !json {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "POST bodies must be application/json, not {}",
                    content_type.unwrap_or("a body without Content-Type")
                ),
            )
            .into_response();
        }
    }
    match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the request took longer than {} s (--request-timeout-ms)",
                state.request_timeout.as_secs()
            ),
        )
        .into_response(),
    }
}

/// Whether a Host header names this machine's loopback: `localhost` (or a name under it),
/// an address of 127.0.0.0/8, or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Lets through requests with the token, as `Authorization: Bearer` or the dashboard's
/// session cookie.
async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !state.token_matches(ui::given_token(request.headers())) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <token>; the CLI takes --token-file or OXFLOW_TOKEN, and a server made its own in DATA_DIR/token)",
        )
        .into_response();
    }
    next.run(request).await
}

/// Reads a JSON body of at most the configured size; errors say what and where.
async fn json_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    request: Request,
) -> std::result::Result<T, ApiError> {
    parse_json(&read_body(state, request).await?)
}

/// Reads a body of at most the configured size.
async fn read_body(state: &AppState, request: Request) -> std::result::Result<Bytes, ApiError> {
    axum::body::to_bytes(request.into_body(), state.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than {} bytes",
                    state.max_body_bytes
                ),
            )
        })
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> std::result::Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

async fn submit(State(state): State<AppState>, request: Request) -> ApiResult {
    let submit: Submit = json_body(&state, request).await?;
    let manager = state.manager.clone();
    let id = tokio::task::spawn_blocking(move || {
        let spec = match (submit.spec, submit.sql) {
            (Some(spec), None) => spec,
            (None, Some(sql)) => manager.plan_sql(&sql)?,
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of `spec` (a job spec) and `sql` (Flink SQL statements)",
                ))
            }
        };
        manager.submit(spec, submit.restore_from)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    tracing::info!(job = %id, "job submitted");
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}

async fn list(State(state): State<AppState>) -> ApiResult {
    let entries: Vec<Arc<JobEntry>> = state
        .manager
        .jobs
        .lock()
        .expect("jobs lock")
        .values()
        .cloned()
        .collect();
    let jobs: Vec<_> = entries
        .iter()
        .map(|entry| {
            let r = entry.record();
            let figures = entry.figures();
            let (uptime_ms, rate) = figures
                .as_ref()
                .map_or((None, 0.0), |f| (Some(f.uptime_ms), f.records_per_sec));
            json!({
                "id": r.id,
                "state": r.state,
                "submitted_at_ms": r.submitted_at_ms,
                "started_at_ms": r.started_at_ms,
                "uptime_ms": uptime_ms,
                "restarts": r.restarts,
                "records_per_sec": rate,
            })
        })
        .collect();
    Ok(Json(json!({ "jobs": jobs })).into_response())
}

/// Figures of one stage, from a running attempt's metrics: totals since the attempt
/// started (the dashboard turns successive answers into rates), and the same per subtask.
#[derive(Debug, Default, Serialize)]
struct StageStatus {
    index: usize,
    name: String,
    records_in: u64,
    records_out: u64,
    /// Averages over the attempt so far (the dashboard shows rates between its samples).
    records_in_per_sec: f64,
    records_out_per_sec: f64,
    backpressure_ms: u64,
    /// The least of its subtasks' watermarks; none until every subtask has one.
    watermark_ms: Option<i64>,
    subtasks: Vec<SubtaskStatus>,
}

/// Figures of one subtask of a stage.
#[derive(Debug, Default, Clone, Serialize)]
struct SubtaskStatus {
    index: usize,
    records_in: u64,
    records_out: u64,
    backpressure_ms: u64,
    watermark_ms: Option<i64>,
}

fn stages(metrics: &[(String, u64)], seconds: f64) -> Vec<StageStatus> {
    let mut by_stage: BTreeMap<usize, StageStatus> = BTreeMap::new();
    for (name, value) in metrics {
        let Some(f) = StageFigure::parse(name) else {
            continue;
        };
        let s = by_stage.entry(f.index).or_insert_with(|| StageStatus {
            index: f.index,
            name: f.stage.to_string(),
            ..Default::default()
        });
        match (f.figure, f.per_subtask()) {
            ("records_in", _) => s.records_in = *value,
            ("records_out", _) => s.records_out = *value,
            ("backpressure_ms", _) => s.backpressure_ms = *value,
            (_, Some((figure, i))) if i < MAX_SUBTASKS_SHOWN => {
                if s.subtasks.len() <= i {
                    s.subtasks.resize_with(i + 1, Default::default);
                }
                let t = &mut s.subtasks[i];
                t.index = i;
                match figure {
                    "records_in" => t.records_in = *value,
                    "records_out" => t.records_out = *value,
                    "backpressure_ms" => t.backpressure_ms = *value,
                    "watermark_ms" => t.watermark_ms = watermark_value(*value),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    by_stage
        .into_values()
        .map(|mut s| {
            let per_sec = |n: u64| {
                if seconds > 0.0 {
                    n as f64 / seconds
                } else {
                    0.0
                }
            };
            s.records_in_per_sec = per_sec(s.records_in);
            s.records_out_per_sec = per_sec(s.records_out);
            let marks: Option<Vec<i64>> = s.subtasks.iter().map(|t| t.watermark_ms).collect();
            s.watermark_ms = marks.and_then(|m| m.into_iter().min());
            s
        })
        .collect()
}

/// A bound on the subtasks a status lists per stage: the spec's parallelism is bounded by
/// the server's limits already; this keeps a stray counter name from growing an answer.
const MAX_SUBTASKS_SHOWN: usize = 4096;

/// A running attempt's figures, from one snapshot of its counters and one clock reading.
struct AttemptFigures {
    metrics: Vec<(String, u64)>,
    stages: Vec<StageStatus>,
    uptime_ms: u64,
    /// Records per second the job's sources have read, over the attempt.
    records_per_sec: f64,
}

impl JobEntry {
    /// The running attempt's figures; `None` between attempts.
    fn figures(&self) -> Option<AttemptFigures> {
        let plan = self.plan.lock().expect("plan lock").clone();
        let attempt = self.attempt.lock().expect("attempt lock");
        let a = attempt.as_ref()?;
        let uptime = a.started.elapsed();
        let metrics = a.metrics.snapshot();
        let stages = stages(&metrics, uptime.as_secs_f64());
        let sources = plan.map(|p| p.source_stages()).unwrap_or_default();
        let records_per_sec = stages
            .iter()
            .filter(|s| sources.contains(&s.index))
            .map(|s| s.records_in_per_sec)
            .sum();
        Some(AttemptFigures {
            metrics,
            stages,
            uptime_ms: uptime.as_millis() as u64,
            records_per_sec,
        })
    }
}

fn job_status(entry: &JobEntry) -> serde_json::Value {
    let r = entry.record();
    let plan = entry.plan.lock().expect("plan lock").clone();
    let figures = entry.figures();
    let checkpoint = figures.as_ref().map_or(serde_json::Value::Null, |f| {
        let get = |n: &str| f.metrics.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        json!({
            "completed": get("checkpoints.completed"),
            "last_id": get("checkpoints.last_id").filter(|&id| id > 0),
            "last_duration_ms": get("checkpoints.last_duration_ms"),
            "state_bytes": get("checkpoints.state_bytes"),
        })
    });
    let (operators, uptime_ms, rate) = match figures {
        Some(f) => (f.stages, Some(f.uptime_ms), f.records_per_sec),
        None => (Vec::new(), None, 0.0),
    };
    json!({
        "id": r.id,
        "state": r.state,
        "submitted_at_ms": r.submitted_at_ms,
        "started_at_ms": r.started_at_ms,
        "finished_at_ms": r.finished_at_ms,
        "sampled_at_ms": now_ms(),
        "uptime_ms": uptime_ms,
        "restarts": r.restarts,
        "records_per_sec": rate,
        "failure": r.failure,
        "failures": r.failures,
        "restore_from": r.restore_from,
        "savepoint": r.savepoint,
        "plan": plan,
        "operators": operators,
        "checkpoint": checkpoint,
        "checkpoint_history": entry.history.snapshot(),
        "tasks": entry.placement.lock().expect("placement lock").clone(),
        "spec": redacted(&r.spec),
    })
}

async fn status(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let entry = state.manager.job(&id)?;
    Ok(Json(job_status(&entry)).into_response())
}

async fn savepoint(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let entry = state.manager.job(&id)?;
    let manager = state.manager.clone();
    let path =
        tokio::task::spawn_blocking(move || manager.savepoint(&entry, Duration::from_secs(120)))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(json!({ "path": path })).into_response())
}

async fn stop(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let entry = state.manager.job(&id)?;
    let manager = state.manager.clone();
    let path = tokio::task::spawn_blocking(move || -> std::result::Result<PathBuf, ApiError> {
        let path = manager.savepoint(&entry, Duration::from_secs(120))?;
        entry
            .update(|r| r.savepoint = Some(path.clone()))
            .map_err(ApiError::from)?;
        manager.end(&entry, JobState::Stopped);
        Ok(path)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(json!({ "state": JobState::Stopped, "savepoint": path })).into_response())
}

/// The body of `POST /v1/jobs/{id}/resume`, which may be empty.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resume {
    /// Where to start from; by default the savepoint the job was stopped with.
    #[serde(default)]
    restore_from: Option<PathBuf>,
}

/// Submits an ended job's spec (as stored, secrets included) again as a new job, from its
/// stop savepoint or another savepoint or checkpoint.
async fn resume(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    request: Request,
) -> ApiResult {
    let entry = state.manager.job(&id)?;
    let body = read_body(&state, request).await?;
    let asked: Resume = if body.is_empty() {
        Resume::default()
    } else {
        parse_json(&body)?
    };
    let record = entry.record();
    if !record.state.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "job `{id}` is {:?}: stop it first (two instances would write the same sink)",
                record.state
            ),
        ));
    }
    let from = asked
        .restore_from
        .or(record.savepoint.clone())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("job `{id}` was not stopped with a savepoint: give restore_from"),
            )
        })?;
    let manager = state.manager.clone();
    let new_id = tokio::task::spawn_blocking(move || manager.submit(record.spec, Some(from)))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    tracing::info!(job = %new_id, from = %id, "job resumed from a savepoint");
    Ok((StatusCode::CREATED, Json(json!({ "id": new_id }))).into_response())
}

async fn cancel(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> ApiResult {
    let entry = state.manager.job(&id)?;
    if entry.record().state.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("job `{id}` is already {:?}", entry.record().state),
        ));
    }
    let manager = state.manager.clone();
    let ended = entry.clone();
    tokio::task::spawn_blocking(move || manager.end(&ended, JobState::Cancelled))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(json!({ "state": entry.record().state })).into_response())
}

/// Prometheus text format: the figures of `GET /v1/jobs/{id}` for every job.
async fn metrics(State(state): State<AppState>) -> ApiResult {
    let jobs: Vec<Arc<JobEntry>> = state
        .manager
        .jobs
        .lock()
        .expect("jobs lock")
        .values()
        .cloned()
        .collect();
    let text = metrics::render(&jobs).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response())
}
