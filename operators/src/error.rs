//! The operators' one error type.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use oxflow_runtime::RuntimeError;

/// Result with [`OperatorError`].
pub type Result<T, E = OperatorError> = std::result::Result<T, E>;

/// What can go wrong while building or running an operator.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// An expression does not plan against the input schema.
    #[error("invalid expression `{expr}`: {reason}")]
    InvalidExpression {
        /// The expression as written.
        expr: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A named column does not exist.
    #[error("column `{column}` not found in {context}; available columns: {available}")]
    MissingColumn {
        /// The missing column.
        column: String,
        /// Which operator looked for it.
        context: String,
        /// The columns that do exist, comma separated.
        available: String,
    },
    /// A window definition is invalid.
    #[error("invalid window: {0}")]
    InvalidWindow(String),
    /// A typed-row closure's rows did not convert to or from the batch.
    #[error("typed rows: {0}")]
    TypedRow(String),
    /// Checkpointed operator state could not be read back.
    #[error("operator state: {0}")]
    State(String),
    /// DataFusion failed.
    #[error("datafusion: {0}")]
    DataFusion(Box<DataFusionError>),
    /// An Arrow kernel failed.
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    /// Something the runtime returned (e.g. a late-records sink failing).
    #[error(transparent)]
    Runtime(Box<RuntimeError>),
}

impl From<DataFusionError> for OperatorError {
    fn from(e: DataFusionError) -> Self {
        OperatorError::DataFusion(Box::new(e))
    }
}

impl From<RuntimeError> for OperatorError {
    fn from(e: RuntimeError) -> Self {
        OperatorError::Runtime(Box::new(e))
    }
}

impl From<OperatorError> for RuntimeError {
    fn from(e: OperatorError) -> Self {
        match e {
            OperatorError::Runtime(r) => *r,
            OperatorError::Arrow(a) => RuntimeError::Arrow(a),
            OperatorError::DataFusion(d) => RuntimeError::DataFusion(d),
            OperatorError::TypedRow(m) => RuntimeError::BadInput(format!("typed rows: {m}")),
            OperatorError::State(m) => RuntimeError::State(m),
            other => RuntimeError::InvalidJob(other.to_string()),
        }
    }
}

/// The column names of a schema, for error messages.
pub(crate) fn column_list(schema: &datafusion::arrow::datatypes::Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Looks up `column` in `schema`, with an error that names what exists.
pub(crate) fn column_index(
    schema: &datafusion::arrow::datatypes::Schema,
    column: &str,
    context: &str,
) -> Result<usize> {
    schema
        .index_of(column)
        .map_err(|_| OperatorError::MissingColumn {
            column: column.to_string(),
            context: context.to_string(),
            available: column_list(schema),
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_stays_small() {
        assert!(std::mem::size_of::<super::OperatorError>() <= 80);
    }
}
