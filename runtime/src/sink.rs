//! Sinks: where records leave a job.

use crate::error::Result;
use crate::operator::SubtaskInfo;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;

/// Writes the batches of one sink subtask.
pub trait SinkWriter: Send {
    /// Writes a batch.
    fn write(&mut self, batch: &RecordBatch) -> Result<()>;
    /// End of input: flush and close. Not called when the job fails.
    fn finish(&mut self) -> Result<()>;
}

/// A sink of a job: a writer per subtask.
pub trait Sink: Send + Sync {
    /// A short name for logs, e.g. `stdout`.
    fn name(&self) -> String;
    /// Creates the writer of one subtask; `schema` is what it will receive.
    fn create_writer(&self, subtask: SubtaskInfo, schema: SchemaRef)
        -> Result<Box<dyn SinkWriter>>;
}

/// Shared handle to a sink.
pub type SinkRef = Arc<dyn Sink>;

/// A shared sink is a sink (so a sink chosen at run time can be passed where one is expected).
impl<S: Sink + ?Sized> Sink for Arc<S> {
    fn name(&self) -> String {
        self.as_ref().name()
    }
    fn create_writer(
        &self,
        subtask: SubtaskInfo,
        schema: SchemaRef,
    ) -> Result<Box<dyn SinkWriter>> {
        self.as_ref().create_writer(subtask, schema)
    }
}
