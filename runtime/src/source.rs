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
    /// A batch of records all from one partition of the split: an index into
    /// [`SourceReader::partitions`]. Watermarks are then kept per partition.
    PartitionBatch(usize, RecordBatch),
    /// Nothing now (an unbounded source waiting for data); ask again after about this long.
    Pending(Duration),
    /// Nothing now because the external system cannot be reached (brokers down); ask again
    /// after about this long. Unlike [`SourcePoll::Pending`] this never counts toward the
    /// idle timeout: an outage is not an empty partition, and marking the split idle would
    /// let the watermark run ahead of the records still to come.
    Unavailable(Duration),
    /// This split is exhausted (a bounded source): end of stream.
    Finished,
}

/// Reads one split of a source. Called from the split's own thread, so it may block briefly.
pub trait SourceReader: Send {
    /// The next batch, or why there is none.
    fn poll_next(&mut self) -> Result<SourcePoll>;

    /// Where the split is, for a checkpoint: enough for [`Source::restore_reader`] to go on
    /// from exactly the next record. `None`: this reader cannot be checkpointed.
    fn position(&self) -> Option<serde_json::Value> {
        None
    }

    /// The partitions this split reads, for a reader whose split is made of several ordered
    /// partitions (a Kafka split: `topic/partition`); it sends their records as
    /// [`SourcePoll::PartitionBatch`]. The list only grows (new partitions are discovered),
    /// and an index keeps its name. Empty (the default): one ordered stream.
    fn partitions(&self) -> &[String] {
        &[]
    }

    /// Checkpoint `id` is being taken: called just before [`SourceReader::position`] gives
    /// its part. A reader that must act once the checkpoint completes remembers what the
    /// position covers under `id`.
    fn on_barrier(&mut self, id: u64) {
        let _ = id;
    }

    /// Checkpoint `id` has completed: its manifest is written and the sink has committed its
    /// output, so what its position covered never needs reading again (a queue acknowledges
    /// those messages). Every earlier checkpoint has completed or been abandoned; an id may be
    /// skipped. Called also after the split has finished, for the checkpoints that complete
    /// later, the last one at the end of the job. An error fails a running split.
    fn checkpoint_complete(&mut self, id: u64) -> Result<()> {
        let _ = id;
        Ok(())
    }

    /// Called once, before the first poll, when the job runs without checkpoints: no
    /// checkpoint will complete, so a reader waiting for one to acknowledge its input must
    /// acknowledge as it emits instead.
    fn without_checkpoints(&mut self) {}
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
    /// Creates the reader of split `split.index` of `split.parallelism`, from the start. The
    /// default is [`Source::restore_reader`] with no positions: a checkpointable source
    /// implements only that.
    fn create_reader(&self, split: SubtaskInfo) -> Result<Box<dyn SourceReader>> {
        self.restore_reader(split, &[])
    }

    /// Creates the reader of split `split.index` of `split.parallelism`, going on from the
    /// positions every split of the checkpointed job had reached (`positions`, in split order;
    /// the old parallelism may differ, and the splits must then share the rest between them).
    fn restore_reader(
        &self,
        split: SubtaskInfo,
        positions: &[serde_json::Value],
    ) -> Result<Box<dyn SourceReader>> {
        let _ = split;
        Err(if positions.is_empty() {
            crate::RuntimeError::InvalidJob(format!(
                "source `{}` implements neither create_reader nor restore_reader",
                self.name()
            ))
        } else {
            crate::RuntimeError::Checkpoint(format!(
                "source `{}` cannot restore from a checkpoint",
                self.name()
            ))
        })
    }
}

/// Shared handle to a source.
pub type SourceRef = Arc<dyn Source>;
