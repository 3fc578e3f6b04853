//! The facade's one error type: what went wrong building or running a pipeline.

use oxflow_connectors::ConnectorError;
use oxflow_operators::OperatorError;
use oxflow_runtime::RuntimeError;

/// Result with [`OxflowError`].
pub type Result<T, E = OxflowError> = std::result::Result<T, E>;

/// An error from any layer of Oxflow.
#[derive(Debug, thiserror::Error)]
pub enum OxflowError {
    /// The pipeline is built wrongly (the message says which call).
    #[error("invalid pipeline: {0}")]
    InvalidPipeline(String),
    /// An operator could not be planned.
    #[error(transparent)]
    Operator(Box<OperatorError>),
    /// A source or sink could not be set up.
    #[error(transparent)]
    Connector(Box<ConnectorError>),
    /// The job failed while running.
    #[error(transparent)]
    Runtime(Box<RuntimeError>),
    /// A SQL statement could not be parsed or planned (the message gives its line and
    /// column).
    #[error("SQL: {0}")]
    Sql(String),
    /// The runtime server refused a request, or could not be reached.
    #[error("server: {0}")]
    Server(String),
}

impl OxflowError {
    /// Whether running the job again cannot help ([`RuntimeError::is_fatal`]).
    pub fn is_fatal(&self) -> bool {
        matches!(self, OxflowError::Runtime(e) if e.is_fatal())
    }

    /// The same error as the runtime's, for a failure inside a running job (a source built
    /// when the job starts).
    pub fn into_runtime(self) -> RuntimeError {
        match self {
            OxflowError::Runtime(e) => *e,
            OxflowError::Connector(e) => (*e).into(),
            OxflowError::Operator(e) => (*e).into(),
            other => RuntimeError::InvalidJob(other.to_string()),
        }
    }
}

impl From<OperatorError> for OxflowError {
    fn from(e: OperatorError) -> Self {
        OxflowError::Operator(Box::new(e))
    }
}
impl From<ConnectorError> for OxflowError {
    fn from(e: ConnectorError) -> Self {
        OxflowError::Connector(Box::new(e))
    }
}
impl From<RuntimeError> for OxflowError {
    fn from(e: RuntimeError) -> Self {
        OxflowError::Runtime(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_stays_small() {
        assert!(std::mem::size_of::<super::OxflowError>() <= 32);
    }
}
