//! A source over batches held in memory, re-cut to a chosen batch size (tests, examples, and
//! data a program already has).

use crate::split::ChunkCursor;
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
    fn restore_reader(
        &self,
        split: SubtaskInfo,
        positions: &[serde_json::Value],
    ) -> oxflow_runtime::Result<Box<dyn SourceReader>> {
        Ok(Box::new(MemoryReader {
            source: self.clone(),
            cursor: ChunkCursor::restore(split, self.batch_size, positions)?,
        }))
    }
}

/// Reads batches `k, k + p, ..` of the rows (batches of `batch_size`).
struct MemoryReader {
    source: MemorySource,
    cursor: ChunkCursor,
}

impl SourceReader for MemoryReader {
    fn poll_next(&mut self) -> oxflow_runtime::Result<SourcePoll> {
        let start = self.cursor.peek() as usize * self.source.batch_size;
        let rows = self.source.all.num_rows();
        if start >= rows {
            return Ok(SourcePoll::Finished);
        }
        self.cursor.advance();
        Ok(SourcePoll::Batch(
            self.source
                .all
                .slice(start, self.source.batch_size.min(rows - start)),
        ))
    }
    fn position(&self) -> Option<serde_json::Value> {
        Some(self.cursor.position())
    }
}
