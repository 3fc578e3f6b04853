//! Launchers: [`LocalLauncher`] runs tasks in this process, a thread per task; a
//! [`RemoteTasks`] runs them elsewhere (a cluster's workers), driven by this process's
//! checkpoint coordinator through a [`RemoteRun`].
//!
//! Threads rather than async tasks: every task is CPU-bound on Arrow kernels, and a thread of
//! its own lets sources and sinks block (files, stdout, librdkafka) without starving anyone.
//! A task that fails or panics cancels the others; the job's error is the first real one
//! (not a cancellation it caused).

use crate::coordinator::ReportSender;
use crate::error::{Result, RuntimeError};
use crate::executor::CancelHandle;
use crate::plan::PhysicalPlan;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread::JoinHandle;

/// What a job's coordinator hands a launcher that runs the tasks elsewhere.
pub struct RemoteRun {
    /// Every task of the job, to place.
    pub plan: PhysicalPlan,
    /// Where the tasks' reports go (acknowledgements, ends, pending output).
    pub reports: ReportSender,
    /// The checkpoint the sources are asked to inject a barrier for (raised by the
    /// coordinator; the tasks' own copy must follow it).
    pub trigger: Arc<AtomicU64>,
    /// The last checkpoint completed (the tasks' sources hear of it).
    pub completed: Arc<AtomicU64>,
    /// Cancelled when the job is to stop; the launcher cancels it when a task fails.
    pub cancel: CancelHandle,
    /// The checkpoint the tasks restore from (its state files in its directory, or, with
    /// a checkpoint store, in the store).
    pub restore: Option<crate::checkpoint::Restored>,
}

/// Runs a job's tasks outside this process.
pub trait RemoteTasks: Send {
    /// Places and starts every task of `run.plan`.
    fn start(&mut self, run: RemoteRun) -> Result<()>;
    /// Waits until every task has ended; the first real failure, if any.
    fn join(&mut self) -> Option<RuntimeError>;
}

/// Runs tasks on threads of this process and collects how they ended.
pub struct LocalLauncher {
    cancel: CancelHandle,
    handles: Vec<JoinHandle<Result<()>>>,
}

impl LocalLauncher {
    /// A launcher whose tasks cancel `cancel` when one fails.
    pub fn new(cancel: CancelHandle) -> LocalLauncher {
        LocalLauncher {
            cancel,
            handles: Vec::new(),
        }
    }

    /// Starts task `name` on a thread of its own.
    pub fn spawn(
        &mut self,
        name: &str,
        body: Box<dyn FnOnce() -> Result<()> + Send>,
    ) -> Result<()> {
        let cancel = self.cancel.clone();
        let task = name.to_string();
        let handle = std::thread::Builder::new()
            .name(task.clone())
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body))
                    .unwrap_or_else(|payload| {
                        let message = payload
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "non-string panic".into());
                        Err(RuntimeError::Panic {
                            task: task.clone(),
                            message,
                        })
                    });
                if result.is_err() {
                    cancel.cancel();
                }
                result.map_err(|e| match e {
                    RuntimeError::Cancelled | RuntimeError::Panic { .. } => e,
                    other => RuntimeError::Task {
                        task,
                        source: Box::new(other),
                    },
                })
            })
            .map_err(|e| RuntimeError::io(format!("spawning thread for {name}"), e))?;
        self.handles.push(handle);
        Ok(())
    }

    /// Waits for every task; the first error that is not a cancellation, else the first.
    pub fn join(self) -> Option<RuntimeError> {
        let mut first_error: Option<RuntimeError> = None;
        for handle in self.handles {
            let result = handle.join().unwrap_or_else(|_| {
                Err(RuntimeError::Panic {
                    task: "unknown".into(),
                    message: "thread panicked".into(),
                })
            });
            if let Err(e) = result {
                let replace = match &first_error {
                    None => true,
                    Some(RuntimeError::Cancelled) => !matches!(e, RuntimeError::Cancelled),
                    Some(_) => false,
                };
                if replace {
                    first_error = Some(e);
                }
            }
        }
        first_error
    }
}
