//! Sinks: where records leave a job, and how their output is committed exactly once.
//!
//! A transactional sink commits in two phases, tied to checkpoints: at a barrier its writer
//! hands over what it wrote since the previous barrier (`pre_commit`, data durable but not yet
//! visible); once the checkpoint's manifest is written, the runtime calls [`Sink::commit`]
//! with what every writer handed over. A crash between the two is healed on restore: the
//! runtime commits the restored checkpoint's pending output again (so `commit` must be
//! idempotent) and asks the sink to drop everything newer ([`Sink::roll_back_after`]), which
//! the replay writes again.

use crate::error::Result;
use crate::operator::SubtaskInfo;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;

/// Output a writer has made durable but not visible, to be committed with a checkpoint.
pub type PendingCommit = serde_json::Value;

/// Writes the batches of one sink subtask.
pub trait SinkWriter: Send {
    /// Writes a batch.
    fn write(&mut self, batch: &RecordBatch) -> Result<()>;
    /// A checkpoint barrier: make what was written since the previous barrier durable and
    /// return it for [`Sink::commit`]; `None` when there is nothing to commit (or the sink
    /// is not transactional).
    fn pre_commit(&mut self) -> Result<Option<PendingCommit>> {
        Ok(None)
    }
    /// End of input: flush and close, returning the last pending output like `pre_commit`.
    /// Not called when the job fails.
    fn finish(&mut self) -> Result<Option<PendingCommit>>;
}

/// A sink of a job: a writer per subtask.
pub trait Sink: Send + Sync {
    /// A short name for logs, e.g. `stdout`.
    fn name(&self) -> String;
    /// Creates the writer of one subtask; `schema` is what it will receive.
    fn create_writer(&self, subtask: SubtaskInfo, schema: SchemaRef)
        -> Result<Box<dyn SinkWriter>>;
    /// Makes pending output of checkpoint `checkpoint` visible. Idempotent: committing again
    /// what was already committed succeeds and changes nothing.
    fn commit(&self, checkpoint: u64, pending: &[PendingCommit]) -> Result<()> {
        let _ = (checkpoint, pending);
        Ok(())
    }
    /// The job restores from checkpoint `checkpoint`: remove output committed by later
    /// checkpoints and output never committed (the replay produces it again).
    fn roll_back_after(&self, checkpoint: u64) -> Result<()> {
        let _ = checkpoint;
        Ok(())
    }
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
    fn commit(&self, checkpoint: u64, pending: &[PendingCommit]) -> Result<()> {
        self.as_ref().commit(checkpoint, pending)
    }
    fn roll_back_after(&self, checkpoint: u64) -> Result<()> {
        self.as_ref().roll_back_after(checkpoint)
    }
}
