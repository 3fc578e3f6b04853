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
//! JSON `{"error": "..."}`; with a token, every endpoint but `/health` needs
//! `Authorization: Bearer <token>`.

// The server reports wall-clock times (start, uptime, records per second) and backs off in
// real time; jobs themselves run on the runtime's clock.
#![allow(clippy::disallowed_methods)]

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
use oxflow_runtime::metrics::JobMetrics;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How a server listens and where it keeps its jobs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (default `127.0.0.1:8081`; port 0 picks a free one).
    pub listen: SocketAddr,
    /// Where jobs, their status and their checkpoints are kept.
    pub data_dir: PathBuf,
    /// A bearer token every endpoint but `/health` requires.
    pub token: Option<String>,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl ServerConfig {
    /// Loopback on port 8081, jobs under `data_dir`, no token, bodies up to 1 MiB.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            data_dir: data_dir.into(),
            token: None,
            max_body_bytes: 1 << 20,
        }
    }
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
        let mut file =
            std::fs::File::create(&tmp).map_err(|e| io("writing the job record in", e))?;
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
    jobs_dir: PathBuf,
    jobs: Mutex<BTreeMap<String, Arc<JobEntry>>>,
    next: AtomicU64,
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

    /// Checks a spec builds, stores the job and starts it.
    fn submit(self: &Arc<Self>, spec: JobSpec, restore_from: Option<PathBuf>) -> Result<String> {
        let id = format!(
            "{:x}{:04x}",
            now_ms(),
            self.next.fetch_add(1, Ordering::Relaxed) & 0xffff
        );
        let dir = self.jobs_dir.join(&id);
        // Built once here so that a bad spec is refused now, with its reason.
        Pipeline::from_spec(&spec, &self.registry, Some(&dir.join("checkpoints")))?;
        if let Some(path) = &restore_from {
            oxflow_runtime::checkpoint::load(path)?;
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
        };
        write_record(&dir, &record)?;
        let entry = self.register(record, dir);
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
            if resume {
                tracing::info!(job = %id, "resuming a job that was running");
                self.supervise(entry, true);
            }
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
                (Err(e), None) if record.restarts >= restart.max_attempts => {
                    Some((JobState::Failed, Some(e.to_string())))
                }
                (Err(e), None) => {
                    let _ = entry.update(|r| {
                        r.state = JobState::Restarting;
                        r.restarts += 1;
                        r.failure = Some(e.to_string());
                    });
                    let backoff = restart.backoff(record.restarts);
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
                    if failure.is_some() {
                        r.failure = failure;
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
        let mut job = Pipeline::from_spec(&record.spec, &self.registry, Some(&checkpoints))?;
        let has_checkpoints = record.spec.checkpoints.is_some();
        // A later attempt (a restart, or a resume after the server died) goes on from the
        // job's own latest checkpoint; until it has one, from the savepoint it was submitted
        // with; else from the beginning (the sink then drops what earlier attempts wrote).
        let own_checkpoint = !first
            && has_checkpoints
            && matches!(
                oxflow_runtime::checkpoint::latest(&checkpoints),
                Ok((Some(_), _))
            );
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
        let until = Instant::now() + Duration::from_secs(30);
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

type ApiResult = std::result::Result<Response, ApiError>;

#[derive(Clone)]
struct AppState {
    manager: Arc<Manager>,
    token: Option<Arc<str>>,
    max_body_bytes: usize,
}

/// A submission: the spec, and optionally where to start from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Submit {
    spec: JobSpec,
    #[serde(default)]
    restore_from: Option<PathBuf>,
}

/// The Oxflow runtime server, running the jobs it is sent with the functions of `registry`.
pub struct Server {
    registry: Registry,
}

/// A server that is listening.
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
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
        let manager = Arc::new(Manager {
            registry: self.registry,
            jobs_dir: config.data_dir.join("jobs"),
            jobs: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
        });
        manager.load()?;
        let state = AppState {
            manager,
            token: config.token.map(Arc::from),
            max_body_bytes: config.max_body_bytes,
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
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .merge(api)
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
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
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_ref()) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer <token>)",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Reads a JSON body of at most the configured size; errors say what and where.
async fn json_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    request: Request,
) -> std::result::Result<T, ApiError> {
    let body = axum::body::to_bytes(request.into_body(), state.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than {} bytes",
                    state.max_body_bytes
                ),
            )
        })?;
    parse_json(&body)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> std::result::Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

async fn submit(State(state): State<AppState>, request: Request) -> ApiResult {
    let submit: Submit = json_body(&state, request).await?;
    let manager = state.manager.clone();
    let id = tokio::task::spawn_blocking(move || manager.submit(submit.spec, submit.restore_from))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}

async fn list(State(state): State<AppState>) -> ApiResult {
    let jobs: Vec<_> = state
        .manager
        .jobs
        .lock()
        .expect("jobs lock")
        .values()
        .map(|entry| {
            let r = entry.record();
            json!({
                "id": r.id,
                "state": r.state,
                "submitted_at_ms": r.submitted_at_ms,
                "restarts": r.restarts,
            })
        })
        .collect();
    Ok(Json(json!({ "jobs": jobs })).into_response())
}

/// Figures of one stage, from a running attempt's metrics.
#[derive(Debug, Default, Serialize)]
struct StageStatus {
    name: String,
    records_in: u64,
    records_out: u64,
    records_out_per_sec: f64,
    backpressure_ms: u64,
    watermark_ms: Option<i64>,
}

fn stages(metrics: &[(String, u64)], seconds: f64) -> Vec<StageStatus> {
    let mut by_stage: BTreeMap<(usize, String), StageStatus> = BTreeMap::new();
    for (name, value) in metrics {
        // `stage<N>.<name>.<figure>`; watermarks per subtask: `...watermark_ms.<i>`.
        let Some(rest) = name.strip_prefix("stage") else {
            continue;
        };
        let mut parts = rest.splitn(3, '.');
        let (Some(n), Some(stage), Some(figure)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(n) = n.parse::<usize>() else { continue };
        let s = by_stage
            .entry((n, stage.to_string()))
            .or_insert_with(|| StageStatus {
                name: stage.to_string(),
                ..Default::default()
            });
        match figure {
            "records_in" => s.records_in = *value,
            "records_out" => s.records_out = *value,
            "backpressure_ms" => s.backpressure_ms = *value,
            f if f.starts_with("watermark_ms.") => {
                let w = *value as i64;
                s.watermark_ms = Some(s.watermark_ms.map_or(w, |m| m.min(w)));
            }
            _ => {}
        }
    }
    by_stage
        .into_values()
        .map(|mut s| {
            s.records_out_per_sec = if seconds > 0.0 {
                s.records_out as f64 / seconds
            } else {
                0.0
            };
            s
        })
        .collect()
}

fn job_status(entry: &JobEntry) -> serde_json::Value {
    let r = entry.record();
    let attempt = entry.attempt.lock().expect("attempt lock");
    let (operators, checkpoint) = match attempt.as_ref() {
        Some(a) => {
            let metrics = a.metrics.snapshot();
            let get = |n: &str| metrics.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
            (
                stages(&metrics, a.started.elapsed().as_secs_f64()),
                json!({
                    "completed": get("checkpoints.completed"),
                    "last_id": get("checkpoints.last_id").filter(|&id| id > 0),
                    "last_duration_ms": get("checkpoints.last_duration_ms"),
                    "state_bytes": get("checkpoints.state_bytes"),
                }),
            )
        }
        None => (Vec::new(), serde_json::Value::Null),
    };
    json!({
        "id": r.id,
        "state": r.state,
        "submitted_at_ms": r.submitted_at_ms,
        "started_at_ms": r.started_at_ms,
        "finished_at_ms": r.finished_at_ms,
        "restarts": r.restarts,
        "failure": r.failure,
        "restore_from": r.restore_from,
        "savepoint": r.savepoint,
        "operators": operators,
        "checkpoint": checkpoint,
        "spec": r.spec,
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
    use std::fmt::Write;
    let mut out = String::new();
    let jobs: Vec<Arc<JobEntry>> = state
        .manager
        .jobs
        .lock()
        .expect("jobs lock")
        .values()
        .cloned()
        .collect();
    let mut families: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for entry in &jobs {
        let r = entry.record();
        let job = &r.id;
        families
            .entry("oxflow_job_restarts")
            .or_default()
            .push(format!(
                "oxflow_job_restarts{{job=\"{job}\"}} {}",
                r.restarts
            ));
        families
            .entry("oxflow_job_running")
            .or_default()
            .push(format!(
                "oxflow_job_running{{job=\"{job}\"}} {}",
                u8::from(r.state == JobState::Running)
            ));
        let attempt = entry.attempt.lock().expect("attempt lock");
        let Some(a) = attempt.as_ref() else { continue };
        let snapshot = a.metrics.snapshot();
        for s in stages(&snapshot, a.started.elapsed().as_secs_f64()) {
            let labels = format!("job=\"{job}\",stage=\"{}\"", s.name);
            for (family, value) in [
                ("oxflow_records_in_total", s.records_in as i64),
                ("oxflow_records_out_total", s.records_out as i64),
                ("oxflow_backpressure_ms_total", s.backpressure_ms as i64),
            ] {
                families
                    .entry(family)
                    .or_default()
                    .push(format!("{family}{{{labels}}} {value}"));
            }
            if let Some(w) = s.watermark_ms {
                families
                    .entry("oxflow_watermark_ms")
                    .or_default()
                    .push(format!("oxflow_watermark_ms{{{labels}}} {w}"));
            }
        }
        for (name, family) in [
            (
                "checkpoints.completed",
                "oxflow_checkpoints_completed_total",
            ),
            (
                "checkpoints.last_duration_ms",
                "oxflow_checkpoint_last_duration_ms",
            ),
            ("checkpoints.state_bytes", "oxflow_checkpoint_state_bytes"),
        ] {
            if let Some((_, v)) = snapshot.iter().find(|(k, _)| k == name) {
                families
                    .entry(family)
                    .or_default()
                    .push(format!("{family}{{job=\"{job}\"}} {v}"));
            }
        }
    }
    for (family, lines) in families {
        let kind = if family.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(out, "# TYPE {family} {kind}");
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
