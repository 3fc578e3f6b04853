//! One job across many processes: the runtime server as the job's coordinator, and
//! `oxflow worker` processes running its tasks.
//!
//! A worker registers with the server (`POST /v1/workers`, with the server's token), then
//! asks it for work in a long poll (`POST /v1/workers/{id}/poll`, which doubles as its
//! heartbeat and carries its tasks' counters). A command deploys a job's tasks on it, with
//! the worker of every other task of the job and a secret for the job's streams; or raises
//! a checkpoint's barrier, tells of a checkpoint completed, or cancels. The tasks send
//! records to tasks on other workers over Arrow Flight ([`oxflow_runtime::flight`]), and
//! their reports (checkpoint acknowledgements, ends, output pending commit) go back to the
//! coordinator (`POST /v1/workers/{id}/reports`) as they come. State and checkpoints live in
//! the job's checkpoint directory, which the server and its workers share (one host, or a
//! shared file system mounted at the same path).
//!
//! A worker that stops polling is lost after the server's worker timeout: the job's attempt
//! fails, and the server restarts it from its latest checkpoint on the workers left.

// Heartbeats, timeouts and back-offs are wall time by nature.
#![allow(clippy::disallowed_methods)]

use crate::client::Client;
use crate::error::{OxflowError, Result};
use crate::spec::{JobSpec, Registry};
use crate::Pipeline;
use hyper::Method;
use oxflow_runtime::coordinator::TaskReport;
use oxflow_runtime::executor::{run_tasks, CancelHandle, TaskGroupOptions};
use oxflow_runtime::flight::{
    ClusterChannels, ClusterWiring, ExchangeService, Failure, InboxRegistry,
};
use oxflow_runtime::metrics::JobMetrics;
use oxflow_runtime::plan::TaskId;
use oxflow_runtime::store::{PrefixedStore, StoreRef};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest a call to the server may take (a poll is answered within about a second).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a worker tells the server when it registers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Where other workers reach its Flight service.
    pub address: SocketAddr,
    /// How many tasks it offers to run at once.
    pub slots: usize,
}

/// The server's answer to a registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    /// The worker's id, in every later call.
    pub id: String,
    /// After this long without a poll, the server takes the worker for lost.
    pub timeout_ms: u64,
}

/// A job's tasks for one worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployment {
    /// The job's id.
    pub job: String,
    /// Which attempt of the job.
    pub attempt: u64,
    /// The job, as submitted (its parallelism fixed by the server).
    pub spec: JobSpec,
    /// The tasks this worker runs.
    pub tasks: Vec<TaskId>,
    /// The Flight address of every task of the job.
    pub placement: Vec<(TaskId, SocketAddr)>,
    /// What the job's streams present to each other's workers.
    pub secret: String,
    /// The job's checkpoint directory, shared with the server (none: checkpoints off).
    pub checkpoint_dir: Option<PathBuf>,
    /// The checkpoint the tasks start from, in the shared checkpoint directory.
    pub restore: Option<PathBuf>,
    /// With a checkpoint store: the tasks cut checkpoints in the worker's data directory,
    /// upload their state files to the store, and restore from it.
    #[serde(default)]
    pub stored: Option<StoredCheckpoints>,
    /// The longest line a file source reads (the server's limit).
    pub max_line_bytes: usize,
}

/// A job's checkpoints in the server's checkpoint store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredCheckpoints {
    /// The store, as the server names it (`s3://bucket/prefix`): the worker's own
    /// `--checkpoint-store` must be the same.
    pub store: String,
    /// The job's part of the store.
    pub prefix: String,
    /// The checkpoint to restore (its state files are in the store).
    pub restore: Option<oxflow_runtime::checkpoint::Manifest>,
}

/// What the server asks of a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Run these tasks.
    Deploy(Box<Deployment>),
    /// Inject the barrier of checkpoint `checkpoint` at the sources.
    Trigger {
        /// The job.
        job: String,
        /// Its attempt.
        attempt: u64,
        /// The checkpoint.
        checkpoint: u64,
    },
    /// Checkpoint `checkpoint` has completed.
    Complete {
        /// The job.
        job: String,
        /// Its attempt.
        attempt: u64,
        /// The checkpoint.
        checkpoint: u64,
    },
    /// Stop the attempt's tasks.
    Cancel {
        /// The job.
        job: String,
        /// Its attempt.
        attempt: u64,
    },
}

/// A worker's poll: its heartbeat, with the counters of the tasks it runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Poll {
    /// Per attempt running here, its counters.
    #[serde(default)]
    pub metrics: Vec<AttemptMetrics>,
}

/// The counters of one attempt's tasks on one worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptMetrics {
    /// The job.
    pub job: String,
    /// Its attempt.
    pub attempt: u64,
    /// Every counter of its tasks here.
    pub counters: Vec<(String, u64)>,
}

/// The server's answer to a poll.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Commands {
    /// What to do, in order.
    pub commands: Vec<Command>,
}

/// Reports of an attempt's tasks on a worker, in the order they were made.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reports {
    /// The job.
    pub job: String,
    /// Its attempt.
    pub attempt: u64,
    /// The reports.
    #[serde(default)]
    pub reports: Vec<TaskReport>,
    /// Set once every task of the attempt here has ended.
    #[serde(default)]
    pub ended: Option<AttemptEnd>,
}

/// How an attempt's tasks on a worker ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptEnd {
    /// The first failure; none if every task ended well.
    #[serde(default)]
    pub failure: Option<String>,
    /// The tasks' counters at the end.
    #[serde(default)]
    pub counters: Vec<(String, u64)>,
}

impl Reports {
    /// The end of an attempt's tasks on a worker: `failure` if one failed, and their last
    /// counters.
    fn ended(
        job: String,
        attempt: u64,
        failure: Option<String>,
        counters: Vec<(String, u64)>,
    ) -> Reports {
        Reports {
            job,
            attempt,
            reports: Vec::new(),
            ended: Some(AttemptEnd { failure, counters }),
        }
    }
}

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The server, e.g. `http://127.0.0.1:8081`.
    pub server: String,
    /// Where the worker keeps its tasks' working state.
    pub data_dir: PathBuf,
    /// Where its Flight service listens (default `127.0.0.1:0`, a free loopback port).
    pub listen: SocketAddr,
    /// The address other workers reach it at, if not `listen`'s (behind NAT, or `listen`
    /// on 0.0.0.0).
    pub advertise: Option<SocketAddr>,
    /// How many tasks it offers.
    pub slots: usize,
    /// The server's token.
    pub token: Option<String>,
    /// The checkpoint store, the same as the server's (`--checkpoint-store`): needed for jobs
    /// whose server keeps checkpoints in one.
    pub checkpoint_store: Option<StoreRef>,
}

/// A running attempt's tasks on this worker.
struct Group {
    trigger: Arc<std::sync::atomic::AtomicU64>,
    completed: Arc<std::sync::atomic::AtomicU64>,
    cancel: CancelHandle,
    metrics: JobMetrics,
}

type Groups = Arc<Mutex<BTreeMap<(String, u64), Group>>>;

/// Runs a worker until the process is stopped: registers, polls, runs what it is given.
pub async fn run_worker(config: WorkerConfig, registry: Registry) -> Result<()> {
    let client = Arc::new(Client::new(&config.server, config.token.clone())?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| OxflowError::Server(format!("listening on {}: {e}", config.listen)))?;
    let bound = listener
        .local_addr()
        .map_err(|e| OxflowError::Server(format!("the worker's address: {e}")))?;
    let address = config.advertise.unwrap_or(bound);
    let inboxes = InboxRegistry::default();
    let service = ExchangeService::new(inboxes.clone());
    tokio::spawn(async move {
        if let Err(e) =
            oxflow_runtime::flight::serve(listener, service, std::future::pending()).await
        {
            tracing::error!(error = %e, "the worker's Flight service stopped");
        }
    });
    eprintln!("oxflow worker: Flight service on {bound}");
    let registry = Arc::new(registry);
    let groups: Groups = Arc::default();
    let (report_tx, report_rx) = tokio::sync::mpsc::unbounded_channel::<Reports>();
    let id = Arc::new(Mutex::new(register(&client, address, config.slots).await));
    tokio::spawn(send_reports(client.clone(), id.clone(), report_rx));
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let me = id.lock().expect("id lock").clone();
        let poll = Poll {
            metrics: groups
                .lock()
                .expect("groups lock")
                .iter()
                .map(|((job, attempt), g)| AttemptMetrics {
                    job: job.clone(),
                    attempt: *attempt,
                    counters: g.metrics.snapshot(),
                })
                .collect(),
        };
        let body = serde_json::to_value(&poll).map_err(|e| OxflowError::Server(e.to_string()))?;
        // A poll is answered within a second or so; one that hangs (the link is gone) must
        // count as a failure, not wait for TCP to give up.
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.send(Method::POST, &format!("/v1/workers/{me}/poll"), Some(&body)),
        )
        .await
        .unwrap_or_else(|_| Err(OxflowError::Server("the poll timed out".into())));
        match answer {
            Ok((200, text)) => {
                unreachable_since = None;
                let commands: Commands = match serde_json::from_str(&text) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "the server's commands are unreadable");
                        continue;
                    }
                };
                for command in commands.commands {
                    if !matches!(command, Command::Deploy(_)) {
                        // Raising a trigger or a cancel is instant: no thread hop before a
                        // checkpoint's barrier.
                        handle(command, &groups, &inboxes, &registry, &config, &report_tx);
                        continue;
                    }
                    // Building a job may block (listing files, asking a broker): off the
                    // async threads, one command at a time, in order.
                    let (groups, inboxes, registry, config, report_tx) = (
                        groups.clone(),
                        inboxes.clone(),
                        registry.clone(),
                        config.clone(),
                        report_tx.clone(),
                    );
                    let handled = tokio::task::spawn_blocking(move || {
                        handle(command, &groups, &inboxes, &registry, &config, &report_tx)
                    })
                    .await;
                    if let Err(e) = handled {
                        tracing::error!(error = %e, "a command's handler failed");
                    }
                }
            }
            Ok((404, _)) => {
                // The server no longer knows this worker (it restarted, or took it for
                // lost): what ran here belongs to attempts it has given up.
                cancel_all(&groups);
                let new = register(&client, address, config.slots).await;
                *id.lock().expect("id lock") = new;
            }
            Ok((status, text)) => {
                tracing::warn!(status, answer = %text, "the server refused a poll");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(10) {
                    // No coordinator: nothing these tasks do can be committed.
                    cancel_all(&groups);
                }
                tracing::warn!(error = %e, "the server is unreachable");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Registers with the server, trying until it answers.
async fn register(client: &Client, address: SocketAddr, slots: usize) -> String {
    let body = serde_json::json!({ "address": address, "slots": slots });
    loop {
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.call(Method::POST, "/v1/workers", Some(&body)),
        )
        .await
        .unwrap_or_else(|_| Err(OxflowError::Server("registering timed out".into())));
        match answer {
            Ok(answer) => match serde_json::from_value::<Registered>(answer) {
                Ok(r) => {
                    eprintln!("oxflow worker: registered as {}", r.id);
                    return r.id;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the server's registration answer is unreadable")
                }
            },
            Err(e) => tracing::warn!(error = %e, "registering with the server"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn cancel_all(groups: &Groups) {
    for ((job, attempt), g) in groups.lock().expect("groups lock").iter() {
        tracing::info!(job = %job, attempt, "cancelling an attempt's tasks: the server is gone");
        g.cancel.cancel();
    }
}

/// Posts reports to the server in order, a few tries each.
async fn send_reports(
    client: Arc<Client>,
    id: Arc<Mutex<String>>,
    mut reports: tokio::sync::mpsc::UnboundedReceiver<Reports>,
) {
    while let Some(first) = reports.recv().await {
        // Everything queued for the same attempt goes in one call.
        let mut batch = first;
        while let Ok(next) = reports.try_recv() {
            if next.job == batch.job && next.attempt == batch.attempt && batch.ended.is_none() {
                batch.reports.extend(next.reports);
                batch.ended = next.ended;
            } else {
                post_reports(&client, &id, &batch).await;
                batch = next;
            }
        }
        post_reports(&client, &id, &batch).await;
    }
}

async fn post_reports(client: &Client, id: &Mutex<String>, batch: &Reports) {
    let Ok(body) = serde_json::to_value(batch) else {
        return;
    };
    let id = id.lock().expect("id lock").clone();
    for attempt in 0..10 {
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.send(
                Method::POST,
                &format!("/v1/workers/{id}/reports"),
                Some(&body),
            ),
        )
        .await
        .unwrap_or_else(|_| Err(OxflowError::Server("sending reports timed out".into())));
        match answer {
            Ok((200, _)) => return,
            Ok((status, text)) => {
                tracing::warn!(status, answer = %text, "the server refused reports");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "sending reports");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn handle(
    command: Command,
    groups: &Groups,
    inboxes: &InboxRegistry,
    registry: &Arc<Registry>,
    config: &WorkerConfig,
    reports: &tokio::sync::mpsc::UnboundedSender<Reports>,
) {
    // Applies `f` to the attempt's group here; false if it has none.
    let raise = |job: &str, attempt: u64, f: &dyn Fn(&Group)| {
        groups
            .lock()
            .expect("groups lock")
            .get(&(job.to_string(), attempt))
            .map(f)
            .is_some()
    };
    match command {
        Command::Trigger {
            job,
            attempt,
            checkpoint,
        } => {
            raise(&job, attempt, &|g| {
                g.trigger.fetch_max(checkpoint, Ordering::SeqCst);
            });
        }
        Command::Complete {
            job,
            attempt,
            checkpoint,
        } => {
            raise(&job, attempt, &|g| {
                g.completed.fetch_max(checkpoint, Ordering::SeqCst);
            });
        }
        Command::Cancel { job, attempt } => {
            tracing::info!(job = %job, attempt, "cancelling an attempt's tasks");
            if !raise(&job, attempt, &|g| g.cancel.cancel()) {
                // Never deployed here (or already ended): say so, or the coordinator would
                // wait for this worker's part forever.
                let why = Some("not running on this worker".into());
                let _ = reports.send(Reports::ended(job, attempt, why, Vec::new()));
            }
        }
        Command::Deploy(d) => {
            let (job, attempt) = (d.job.clone(), d.attempt);
            tracing::info!(job = %job, attempt, tasks = d.tasks.len(), "deploying tasks");
            if let Err(e) = deploy(*d, groups, inboxes, registry, config, reports) {
                tracing::error!(job = %job, attempt, error = %e, "deploying tasks failed");
                inboxes.remove_attempt(&job, attempt);
                let why = Some(e.to_string());
                let _ = reports.send(Reports::ended(job, attempt, why, Vec::new()));
            }
        }
    }
}

/// The job's part of this worker's checkpoint store, which must be the server's.
fn job_store(config: &WorkerConfig, stored: &StoredCheckpoints) -> Result<StoreRef> {
    let Some(store) = &config.checkpoint_store else {
        return Err(OxflowError::Server(format!(
            "the server keeps this job's checkpoints in {}, and this worker has no checkpoint store: start it with --checkpoint-store {}",
            stored.store, stored.store
        )));
    };
    if store.0.describe() != stored.store {
        return Err(OxflowError::Server(format!(
            "the server keeps this job's checkpoints in {}, this worker's --checkpoint-store is {}",
            stored.store,
            store.0.describe()
        )));
    }
    Ok(StoreRef(Arc::new(PrefixedStore::new(
        store.0.clone(),
        &stored.prefix,
    )?)))
}

/// Starts a deployment's tasks, and a thread that reports their end.
fn deploy(
    d: Deployment,
    groups: &Groups,
    inboxes: &InboxRegistry,
    registry: &Arc<Registry>,
    config: &WorkerConfig,
    reports: &tokio::sync::mpsc::UnboundedSender<Reports>,
) -> Result<()> {
    let job = Pipeline::new()
        .with_max_line_bytes(d.max_line_bytes)
        .job_from_spec(&d.spec, registry, d.checkpoint_dir.as_deref())?;
    let state = job.state_storage();
    let graph = job.into_graph();
    let plan = oxflow_runtime::plan::PhysicalPlan::of(&graph);
    let (cancel, failure) = (CancelHandle::default(), Failure::default());
    let channels = ClusterChannels::new(
        &plan,
        &d.tasks,
        ClusterWiring {
            job: d.job.clone(),
            attempt: d.attempt,
            placement: d.placement.iter().copied().collect(),
            secret: d.secret.clone(),
        },
        inboxes,
        tokio::runtime::Handle::current(),
        cancel.clone(),
        failure.clone(),
    );
    let attempt_dir = |what: &str| {
        config
            .data_dir
            .join(what)
            .join(format!("{}-{}", d.job, d.attempt))
    };
    let work = attempt_dir("work");
    // Removed with the work directory when the attempt ends.
    let (local_checkpoints, fetched) = (attempt_dir("checkpoints"), attempt_dir("restore"));
    let (checkpoint_root, store, restore) = match &d.stored {
        None => (
            d.checkpoint_dir.clone(),
            None,
            d.restore
                .as_deref()
                .map(oxflow_runtime::checkpoint::load)
                .transpose()?,
        ),
        Some(stored) => {
            let store = job_store(config, stored)?;
            let restore = match &stored.restore {
                None => None,
                Some(manifest) => {
                    // Only the old subtasks whose state this worker's tasks take.
                    let wanted = |stage: usize, old: usize, parallelism: usize| {
                        d.tasks.iter().any(|&id| {
                            id.stage == stage
                                && plan
                                    .task(id)
                                    .is_some_and(|t| t.restores_from(parallelism).contains(&old))
                        })
                    };
                    let started = Instant::now();
                    let (restored, bytes) = oxflow_runtime::store::fetch_state(
                        store.0.as_ref(),
                        &fetched,
                        manifest.clone(),
                        wanted,
                    )?;
                    tracing::info!(job = %d.job, attempt = d.attempt, checkpoint = manifest.id, bytes, ms = started.elapsed().as_millis() as u64, "state downloaded from the checkpoint store");
                    Some(restored)
                }
            };
            (
                d.checkpoint_dir.as_ref().map(|_| local_checkpoints.clone()),
                Some(store),
                restore,
            )
        }
    };
    let metrics = JobMetrics::default();
    let forward = {
        let (job, attempt, reports) = (d.job.clone(), d.attempt, reports.clone());
        move |report: TaskReport| {
            let _ = reports.send(Reports {
                job: job.clone(),
                attempt,
                reports: vec![report],
                ended: None,
            });
        }
    };
    let group = run_tasks(
        &graph,
        &d.tasks,
        channels,
        &metrics,
        Arc::new(oxflow_runtime::clock::SystemClock::new()),
        cancel.clone(),
        TaskGroupOptions {
            checkpoint_root,
            work_root: Some(work.clone()),
            state,
            restore,
            store,
        },
        forward,
    )?;
    let key = (d.job.clone(), d.attempt);
    groups.lock().expect("groups lock").insert(
        key.clone(),
        Group {
            trigger: group.trigger.clone(),
            completed: group.completed.clone(),
            cancel,
            metrics,
        },
    );
    let (groups, inboxes, reports) = (groups.clone(), inboxes.clone(), reports.clone());
    std::thread::Builder::new()
        .name(format!("attempt-{}-{}", d.job, d.attempt))
        .spawn(move || {
            let error = group.join();
            inboxes.remove_attempt(&key.0, key.1);
            let counters = groups
                .lock()
                .expect("groups lock")
                .remove(&key)
                .map(|g| g.metrics.snapshot())
                .unwrap_or_default();
            for dir in [&work, &local_checkpoints, &fetched] {
                let _ = std::fs::remove_dir_all(dir);
            }
            // A broken stream says why; the tasks it cancelled only say "cancelled".
            let failure = match (error, failure.get()) {
                (None, _) => None,
                (Some(oxflow_runtime::RuntimeError::Cancelled), Some(why)) => Some(why),
                (Some(e), _) => Some(e.to_string()),
            };
            tracing::info!(job = %key.0, attempt = key.1, failure = ?failure, "an attempt's tasks ended");
            let _ = reports.send(Reports::ended(key.0, key.1, failure, counters));
        })
        .map_err(|e| OxflowError::Server(format!("starting the attempt's watcher: {e}")))?;
    Ok(())
}
