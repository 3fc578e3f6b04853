//! The runtime's one error type.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

/// Result with [`RuntimeError`].
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// What can go wrong while building or running a job.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// An Arrow kernel failed (usually a schema or type mismatch in user data).
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    /// A DataFusion expression or aggregate failed to plan or evaluate.
    #[error("datafusion: {0}")]
    DataFusion(Box<DataFusionError>),
    /// Reading or writing a file, or spawning a thread, failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. the path.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The job graph or one of its settings is invalid; the message names the stage.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// Input data was malformed; the message says where (file, line, column).
    #[error("bad input: {0}")]
    BadInput(String),
    /// An operator, source or sink failed while running; `task` names the subtask.
    #[error("task {task} failed: {source}")]
    Task {
        /// Name of the failed subtask, e.g. `window-aggregate[1/2]`.
        task: String,
        /// The error it returned.
        source: Box<RuntimeError>,
    },
    /// A subtask panicked; this is a bug in user code or in Oxflow.
    #[error("task {task} panicked: {message}")]
    Panic {
        /// Name of the subtask.
        task: String,
        /// The panic payload, if it was a string.
        message: String,
    },
    /// Operator state could not be stored or read (RocksDB, or an unreadable entry).
    #[error("state: {0}")]
    State(String),
    /// A checkpoint could not be written, or one being restored is missing, partial or
    /// corrupt; the message names the file.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// An external system (a Kafka broker...) failed a request; the message says which and
    /// what was being done.
    #[error("connector: {0}")]
    Connector(String),
    /// A transactional sink was fenced by another producer of the same id: a second
    /// instance of the job is writing. Fatal: restarting would fence that one in turn.
    #[error("fenced: {0}")]
    Fenced(String),
    /// A worker running part of the job failed, or was lost; the message names it.
    #[error("worker: {0}")]
    Worker(String),
    /// Another task failed first and this one was cancelled.
    #[error("job cancelled")]
    Cancelled,
}

impl From<DataFusionError> for RuntimeError {
    fn from(e: DataFusionError) -> Self {
        RuntimeError::DataFusion(Box::new(e))
    }
}

impl RuntimeError {
    /// Whether running the job again cannot help (a sink fenced by another instance of the
    /// job): a supervisor fails the job instead of restarting it.
    pub fn is_fatal(&self) -> bool {
        match self {
            RuntimeError::Fenced(_) => true,
            RuntimeError::Task { source, .. } => source.is_fatal(),
            _ => false,
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }

    /// The same, as a function for `map_err`: `.map_err(RuntimeError::io_while(what))`.
    pub fn io_while(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| RuntimeError::io(context, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_stays_small() {
        // Errors travel through every `Result` on the hot path; keep them pointer-sized-ish.
        assert!(std::mem::size_of::<RuntimeError>() <= 56);
    }
}
