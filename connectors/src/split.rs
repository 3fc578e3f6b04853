//! Generated sources read record numbers in chunks, round-robin over splits: split `k` of `p`
//! takes chunks `k, k + p, k + 2p, ..`. Every split thus moves along the same timeline, and
//! the records are the same at any parallelism. An optional rate limit spreads the records
//! of each split evenly over wall time.

use datafusion::arrow::record_batch::RecordBatch;
use oxflow_runtime::clock::{Clock, SystemClock};
use oxflow_runtime::source::{SourcePoll, SourceReader};
use std::ops::Range;
use std::time::Duration;

/// What a split should do next.
pub(crate) enum Chunk {
    /// Produce these records.
    Records(Range<u64>),
    /// The rate limit says wait this long.
    Wait(Duration),
    /// All records are produced.
    Done,
}

pub(crate) struct ChunkedSplit {
    next_chunk: u64,
    stride: u64,
    chunk_size: u64,
    total: Option<u64>,
    produced: u64,
    split_rate: Option<f64>,
    clock: SystemClock,
}

impl ChunkedSplit {
    pub(crate) fn new(
        split: oxflow_runtime::SubtaskInfo,
        chunk_size: usize,
        total: Option<u64>,
        rate_limit: Option<f64>,
    ) -> Self {
        ChunkedSplit {
            next_chunk: split.index as u64,
            stride: split.parallelism as u64,
            chunk_size: chunk_size as u64,
            total,
            produced: 0,
            split_rate: rate_limit.map(|r| r / split.parallelism as f64),
            clock: SystemClock::new(),
        }
    }

    pub(crate) fn next(&mut self) -> Chunk {
        let start = self.next_chunk * self.chunk_size;
        let end = match self.total {
            Some(n) if start >= n => return Chunk::Done,
            Some(n) => (start + self.chunk_size).min(n),
            None => start + self.chunk_size,
        };
        if let Some(rate) = self.split_rate {
            let due = Duration::from_secs_f64(self.produced as f64 / rate);
            let now = self.clock.elapsed();
            if due > now {
                return Chunk::Wait((due - now).min(Duration::from_millis(100)));
            }
        }
        self.next_chunk += self.stride;
        self.produced += end - start;
        Chunk::Records(start..end)
    }
}

/// Something that builds the records of a range of record numbers.
pub(crate) trait ChunkGenerator: Send {
    fn generate(&self, range: Range<u64>) -> crate::Result<RecordBatch>;
}

/// The reader of one split of a generated source.
pub(crate) struct GeneratedReader<G> {
    pub(crate) generator: G,
    pub(crate) chunks: ChunkedSplit,
}

impl<G: ChunkGenerator> SourceReader for GeneratedReader<G> {
    fn poll_next(&mut self) -> oxflow_runtime::Result<SourcePoll> {
        Ok(match self.chunks.next() {
            Chunk::Records(range) => SourcePoll::Batch(self.generator.generate(range)?),
            Chunk::Wait(d) => SourcePoll::Pending(d),
            Chunk::Done => SourcePoll::Finished,
        })
    }
}
