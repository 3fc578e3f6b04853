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

/// Builds the source a [`StartedSource`] stands for.
pub type OpenSource = Arc<dyn Fn() -> Result<SourceRef> + Send + Sync>;

/// A source that is built when the job starts (when its first reader is created), not when
/// the job is: as a Flink split enumerator lists a file system's files at run time, an object
/// store's files are listed here, so a job over them can be validated, planned and shown
/// without reaching the store. Its schema is known beforehand (the user gave the columns),
/// and the source built must have it.
///
/// Every split builds through one shared cell, so all agree on one listing; a failed build
/// is not kept, so a restarted job tries again.
#[derive(Clone)]
pub struct StartedSource {
    name: String,
    /// The schema produced, after `projection`.
    schema: SchemaRef,
    /// Columns of the built source to produce, if projected.
    projection: Option<Vec<usize>>,
    /// Whether the source built can be projected (decided without building it).
    projects: bool,
    open: OpenSource,
    opened: Arc<std::sync::Mutex<Option<SourceRef>>>,
}

impl StartedSource {
    /// A source named `name` of `schema`, built by `open` when the job starts. `projects`:
    /// whether the built source takes a projection (`with_projection` returns `Some`).
    pub fn new(name: &str, schema: SchemaRef, projects: bool, open: OpenSource) -> Self {
        StartedSource {
            name: name.to_string(),
            schema,
            projection: None,
            projects,
            open,
            opened: Arc::default(),
        }
    }

    fn opened(&self) -> Result<SourceRef> {
        // Held while building, so that the splits wait for one listing instead of each
        // listing the store.
        let mut opened = self
            .opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let source = match opened.as_ref() {
            Some(s) => s.clone(),
            None => opened.insert((self.open)()?).clone(),
        };
        let source = match &self.projection {
            None => source,
            Some(columns) => source.with_projection(columns).ok_or_else(|| {
                crate::RuntimeError::InvalidJob(format!(
                    "source `{}` was to read only some columns, but cannot",
                    self.name
                ))
            })?,
        };
        if source.schema().fields() != self.schema.fields() {
            return Err(crate::RuntimeError::InvalidJob(format!(
                "source `{}` reads columns {:?}, not the {:?} it was declared with",
                self.name,
                source.schema().fields(),
                self.schema.fields()
            )));
        }
        Ok(source)
    }
}

impl Source for StartedSource {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn with_projection(&self, columns: &[usize]) -> Option<SourceRef> {
        if !self.projects {
            return None;
        }
        let schema = Arc::new(self.schema.project(columns).ok()?);
        // Indices are into this source's schema, which is itself a projection if one is set.
        let projection = match &self.projection {
            None => columns.to_vec(),
            Some(outer) => columns.iter().map(|&c| outer[c]).collect(),
        };
        Some(Arc::new(StartedSource {
            schema,
            projection: Some(projection),
            ..self.clone()
        }))
    }
    fn restore_reader(
        &self,
        split: SubtaskInfo,
        positions: &[serde_json::Value],
    ) -> Result<Box<dyn SourceReader>> {
        let source = self.opened()?;
        if positions.is_empty() {
            source.create_reader(split)
        } else {
            source.restore_reader(split, positions)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Three columns, one batch per split; projects.
    struct Columns(SchemaRef);

    struct OneBatch(Option<RecordBatch>);

    impl SourceReader for OneBatch {
        fn poll_next(&mut self) -> Result<SourcePoll> {
            Ok(match self.0.take() {
                Some(b) => SourcePoll::Batch(b),
                None => SourcePoll::Finished,
            })
        }
    }

    impl Source for Columns {
        fn name(&self) -> String {
            "columns".into()
        }
        fn schema(&self) -> SchemaRef {
            self.0.clone()
        }
        fn with_projection(&self, columns: &[usize]) -> Option<SourceRef> {
            Some(Arc::new(Columns(Arc::new(self.0.project(columns).ok()?))))
        }
        fn create_reader(&self, split: SubtaskInfo) -> Result<Box<dyn SourceReader>> {
            let columns = (0..self.0.fields().len())
                .map(|_| Arc::new(Int64Array::from(vec![split.index as i64])) as _)
                .collect();
            Ok(Box::new(OneBatch(Some(RecordBatch::try_new(
                self.0.clone(),
                columns,
            )?))))
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(
            ["a", "b", "c"]
                .map(|n| Field::new(n, DataType::Int64, false))
                .to_vec(),
        ))
    }

    fn split(index: usize) -> SubtaskInfo {
        SubtaskInfo {
            index,
            parallelism: 2,
            max_parallelism: 128,
        }
    }

    #[test]
    fn builds_once_when_a_reader_is_made_and_projects_then() {
        let builds = Arc::new(AtomicUsize::new(0));
        let counted = builds.clone();
        let fail_first = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let open: OpenSource = Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            if fail_first.swap(false, Ordering::SeqCst) {
                return Err(crate::RuntimeError::InvalidJob("store unreachable".into()));
            }
            Ok(Arc::new(Columns(schema())) as SourceRef)
        });
        let source = StartedSource::new("columns", schema(), true, open);
        // Projected twice over: c, b, then of those the second (b).
        let projected = source.with_projection(&[2, 1]).unwrap();
        let projected = projected.with_projection(&[1]).unwrap();
        assert_eq!(projected.schema().field(0).name(), "b");
        assert_eq!(
            builds.load(Ordering::SeqCst),
            0,
            "nothing is built with the plan"
        );
        let err = projected.create_reader(split(0)).err().unwrap();
        assert!(err.to_string().contains("store unreachable"), "{err}");
        for index in 0..2 {
            let mut reader = projected.create_reader(split(index)).unwrap();
            let SourcePoll::Batch(b) = reader.poll_next().unwrap() else {
                panic!("a batch first")
            };
            assert_eq!(b.schema().field(0).name(), "b");
            assert_eq!(b.num_columns(), 1);
        }
        assert_eq!(
            builds.load(Ordering::SeqCst),
            2,
            "one failure, then one build"
        );
    }

    #[test]
    fn a_built_source_of_other_columns_is_refused() {
        let other = Arc::new(Schema::new(vec![Field::new("z", DataType::Int64, false)]));
        let open: OpenSource = Arc::new(move || Ok(Arc::new(Columns(other.clone())) as SourceRef));
        let source = StartedSource::new("columns", schema(), false, open);
        assert!(source.with_projection(&[0]).is_none());
        let err = source.create_reader(split(0)).err().unwrap();
        assert!(err.to_string().contains("declared with"), "{err}");
    }
}
