//! Sources: where records enter a job, read in parallel splits.

use crate::error::Result;
use crate::operator::SubtaskInfo;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;
use std::time::Duration;

/// What a split reader has for the runtime right now.
#[derive(Debug)]
pub enum SourcePoll {
    /// A batch of records.
    Batch(RecordBatch),
    /// Nothing now (an unbounded source waiting for data); ask again after about this long.
    Pending(Duration),
    /// This split is exhausted (a bounded source): end of stream.
    Finished,
}

/// Reads one split of a source. Called from the split's own thread, so it may block briefly.
pub trait SourceReader: Send {
    /// The next batch, or why there is none.
    fn poll_next(&mut self) -> Result<SourcePoll>;
}

/// A source of a job: its schema, and a reader per split.
pub trait Source: Send + Sync {
    /// A short name for logs, e.g. `nexmark`.
    fn name(&self) -> String;
    /// The schema of every batch it yields.
    fn schema(&self) -> SchemaRef;
    /// The same source producing only `columns` (indices into its schema, in order), if it
    /// can do that cheaper than producing every column; `None` otherwise.
    fn with_projection(&self, columns: &[usize]) -> Option<SourceRef> {
        let _ = columns;
        None
    }
    /// Creates the reader of split `split.index` of `split.parallelism`.
    fn create_reader(&self, split: SubtaskInfo) -> Result<Box<dyn SourceReader>>;
}

/// Shared handle to a source.
pub type SourceRef = Arc<dyn Source>;
