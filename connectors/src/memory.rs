//! A source over batches held in memory, re-cut to a chosen batch size (tests, examples, and
//! data a program already has).

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use oxflow_runtime::source::{Source, SourcePoll, SourceReader};
use oxflow_runtime::SubtaskInfo;

/// Yields the given rows in order, `batch_size` at a time; with several splits, batches go
/// round-robin (batch `i` to split `i % parallelism`).
#[derive(Debug, Clone)]
pub struct MemorySource {
    all: RecordBatch,
    batch_size: usize,
}

impl MemorySource {
    /// A source over `batches` (all of `schema`).
    pub fn try_new(
        schema: SchemaRef,
        batches: &[RecordBatch],
        batch_size: usize,
    ) -> crate::Result<Self> {
        if batch_size == 0 {
            return Err(crate::ConnectorError::Config {
                connector: "memory",
                reason: "batch size must be positive".into(),
            });
        }
        Ok(MemorySource {
            all: concat_batches(&schema, batches)?,
            batch_size,
        })
    }
}

impl Source for MemorySource {
    fn name(&self) -> String {
        "memory".into()
    }
    fn schema(&self) -> SchemaRef {
        self.all.schema()
    }
    fn create_reader(&self, split: SubtaskInfo) -> oxflow_runtime::Result<Box<dyn SourceReader>> {
        Ok(Box::new(MemoryReader {
            source: self.clone(),
            next: split.index,
            stride: split.parallelism,
        }))
    }
}

struct MemoryReader {
    source: MemorySource,
    next: usize,
    stride: usize,
}

impl SourceReader for MemoryReader {
    fn poll_next(&mut self) -> oxflow_runtime::Result<SourcePoll> {
        let start = self.next * self.source.batch_size;
        let rows = self.source.all.num_rows();
        if start >= rows {
            return Ok(SourcePoll::Finished);
        }
        self.next += self.stride;
        Ok(SourcePoll::Batch(
            self.source
                .all
                .slice(start, self.source.batch_size.min(rows - start)),
        ))
    }
}
