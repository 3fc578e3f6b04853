//! Generated and in-memory sources read numbered chunks, round-robin over splits: split `k`
//! of `p` takes chunks `k, k + p, k + 2p, ..`. Every split thus moves along the same timeline,
//! and the records are the same at any parallelism. An optional rate limit spreads the
//! records of each split evenly over wall time.
//!
//! For checkpoints a split's position is the set of chunks already read, as rules "chunks
//! `c` with `c % modulus == residue` and `c < below`". A restored split takes its chunks at
//! its own (possibly new) parallelism and skips those the rules of every old split cover, so
//! a job can be restored at another parallelism without reading a record twice or missing one.

use datafusion::arrow::record_batch::RecordBatch;
use oxflow_runtime::checkpoint::decode_stored;
use oxflow_runtime::clock::{Clock, SystemClock};
use oxflow_runtime::source::{SourcePoll, SourceReader};
use oxflow_runtime::{RuntimeError, SubtaskInfo};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::time::Duration;

/// Chunks `c` with `c % modulus == residue && c < below` have been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct ReadRule {
    modulus: u64,
    residue: u64,
    below: u64,
}

/// The position a split reports in a checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct ChunkPosition {
    chunk_size: u64,
    read: Vec<ReadRule>,
}

/// Which chunk a split reads next.
#[derive(Debug, Clone)]
pub(crate) struct ChunkCursor {
    next: u64,
    stride: u64,
    residue: u64,
    chunk_size: u64,
    /// Chunks read by the runs this one was restored from.
    inherited: Vec<ReadRule>,
}

impl ChunkCursor {
    pub(crate) fn new(split: SubtaskInfo, chunk_size: usize) -> Self {
        ChunkCursor {
            next: split.index as u64,
            stride: split.parallelism as u64,
            residue: split.index as u64,
            chunk_size: chunk_size as u64,
            inherited: Vec::new(),
        }
    }

    /// A cursor going on from the positions of every split of a checkpointed run.
    pub(crate) fn restore(
        split: SubtaskInfo,
        chunk_size: usize,
        positions: &[serde_json::Value],
    ) -> oxflow_runtime::Result<Self> {
        let mut cursor = ChunkCursor::new(split, chunk_size);
        for p in positions {
            let p: ChunkPosition = decode_stored(p, "a chunk position")?;
            if p.chunk_size != cursor.chunk_size {
                return Err(RuntimeError::Checkpoint(format!(
                    "the checkpoint was taken reading batches of {} records, this run reads {}: restore with the same batch size",
                    p.chunk_size, cursor.chunk_size
                )));
            }
            for rule in p.read {
                if rule.modulus == 0 {
                    return Err(RuntimeError::Checkpoint(format!(
                        "a split position has modulus 0: {rule:?}"
                    )));
                }
                match cursor
                    .inherited
                    .iter_mut()
                    .find(|r| r.modulus == rule.modulus && r.residue == rule.residue)
                {
                    Some(r) => r.below = r.below.max(rule.below),
                    None => cursor.inherited.push(rule),
                }
            }
        }
        Ok(cursor)
    }

    fn was_read(&self, chunk: u64) -> bool {
        self.inherited
            .iter()
            .any(|r| chunk % r.modulus == r.residue && chunk < r.below)
    }

    /// The next chunk to read (not yet read by this run or an earlier one).
    pub(crate) fn peek(&mut self) -> u64 {
        while self.was_read(self.next) {
            self.next += self.stride;
        }
        self.next
    }

    pub(crate) fn advance(&mut self) {
        self.next += self.stride;
    }

    pub(crate) fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    pub(crate) fn position(&self) -> serde_json::Value {
        let mut read = self.inherited.clone();
        read.push(ReadRule {
            modulus: self.stride,
            residue: self.residue,
            below: self.next,
        });
        serde_json::to_value(ChunkPosition {
            chunk_size: self.chunk_size,
            read,
        })
        .expect("positions serialize")
    }
}

/// What a split should do next.
pub(crate) enum Chunk {
    /// Produce these records.
    Records(Range<u64>),
    /// The rate limit says wait this long.
    Wait(Duration),
    /// All records are produced.
    Done,
}

/// A source split's share of a rate limit over all splits: how long to wait before the
/// next records so that what it produced stays spread evenly over wall time.
pub(crate) struct Throttle {
    split_rate: Option<f64>,
    produced: u64,
    clock: SystemClock,
}

impl Throttle {
    /// `rate_limit` records per second over `parallelism` splits (`None`: no limit).
    pub(crate) fn new(rate_limit: Option<f64>, parallelism: usize) -> Self {
        Throttle {
            split_rate: rate_limit.map(|r| r / parallelism as f64),
            produced: 0,
            clock: SystemClock::new(),
        }
    }

    /// How long to wait before producing more (at most 100 ms at a time), or `None`.
    pub(crate) fn wait(&self) -> Option<Duration> {
        let rate = self.split_rate?;
        let due = Duration::from_secs_f64(self.produced as f64 / rate);
        let now = self.clock.elapsed();
        (due > now).then(|| (due - now).min(Duration::from_millis(100)))
    }

    /// `n` more records were produced.
    pub(crate) fn produced(&mut self, n: u64) {
        self.produced += n;
    }
}

pub(crate) struct ChunkedSplit {
    cursor: ChunkCursor,
    total: Option<u64>,
    throttle: Throttle,
}

impl ChunkedSplit {
    pub(crate) fn new(
        cursor: ChunkCursor,
        parallelism: usize,
        total: Option<u64>,
        rate_limit: Option<f64>,
    ) -> Self {
        ChunkedSplit {
            cursor,
            total,
            throttle: Throttle::new(rate_limit, parallelism),
        }
    }

    pub(crate) fn next(&mut self) -> Chunk {
        let chunk_size = self.cursor.chunk_size();
        let start = self.cursor.peek() * chunk_size;
        let end = match self.total {
            Some(n) if start >= n => return Chunk::Done,
            Some(n) => (start + chunk_size).min(n),
            None => start + chunk_size,
        };
        if let Some(wait) = self.throttle.wait() {
            return Chunk::Wait(wait);
        }
        self.cursor.advance();
        self.throttle.produced(end - start);
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

impl<G: ChunkGenerator + 'static> GeneratedReader<G> {
    /// A reader of `split` going on from checkpointed `positions` (none: from the start);
    /// `chunks` is (records per chunk, total records if bounded, records/s rate limit).
    pub(crate) fn boxed(
        generator: G,
        split: SubtaskInfo,
        (chunk_size, total, rate_limit): (usize, Option<u64>, Option<f64>),
        positions: &[serde_json::Value],
    ) -> oxflow_runtime::Result<Box<dyn SourceReader>> {
        let cursor = ChunkCursor::restore(split, chunk_size, positions)?;
        Ok(Box::new(GeneratedReader {
            generator,
            chunks: ChunkedSplit::new(cursor, split.parallelism, total, rate_limit),
        }))
    }
}

impl<G: ChunkGenerator> SourceReader for GeneratedReader<G> {
    fn poll_next(&mut self) -> oxflow_runtime::Result<SourcePoll> {
        Ok(match self.chunks.next() {
            Chunk::Records(range) => SourcePoll::Batch(self.generator.generate(range)?),
            Chunk::Wait(d) => SourcePoll::Pending(d),
            Chunk::Done => SourcePoll::Finished,
        })
    }
    fn position(&self) -> Option<serde_json::Value> {
        Some(self.chunks.cursor.position())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(index: usize, parallelism: usize) -> SubtaskInfo {
        SubtaskInfo {
            index,
            parallelism,
            max_parallelism: 128,
        }
    }

    /// Reads `steps[i]` chunks on split `i` of a run at `steps.len()` splits (starting from
    /// `positions`), returning the chunks read and the positions reached.
    fn run(
        steps: &[usize],
        positions: Option<&[serde_json::Value]>,
    ) -> (Vec<u64>, Vec<serde_json::Value>) {
        let p = steps.len();
        let mut read = Vec::new();
        let mut reached = Vec::new();
        for (i, &n) in steps.iter().enumerate() {
            let mut c = match positions {
                None => ChunkCursor::new(split(i, p), 10),
                Some(pos) => ChunkCursor::restore(split(i, p), 10, pos).unwrap(),
            };
            for _ in 0..n {
                read.push(c.peek());
                c.advance();
            }
            reached.push(c.position());
        }
        (read, reached)
    }

    proptest! {
        /// However often a job is stopped and restored at whatever parallelism, every chunk
        /// below the furthest one reached is read exactly once.
        #[test]
        fn restores_at_any_parallelism_read_each_chunk_once(
            runs in prop::collection::vec(prop::collection::vec(0usize..6, 1..5), 1..5)
        ) {
            let mut positions: Option<Vec<serde_json::Value>> = None;
            let mut all = Vec::new();
            for steps in &runs {
                let (read, reached) = run(steps, positions.as_deref());
                all.extend(read);
                positions = Some(reached);
            }
            let mut sorted = all.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), all.len(), "a chunk was read twice: {:?}", all);
            // Nothing below the least chunk any final split would read next was skipped.
            let last = runs.last().unwrap().len();
            let next: Vec<u64> = (0..last)
                .map(|i| ChunkCursor::restore(split(i, last), 10, positions.as_deref().unwrap()).unwrap().peek())
                .collect();
            let low = *next.iter().min().unwrap();
            for c in 0..low {
                prop_assert!(sorted.binary_search(&c).is_ok(), "chunk {} was never read", c);
            }
        }
    }

    #[test]
    fn a_position_with_another_batch_size_is_refused() {
        let (_, positions) = run(&[2], None);
        let e = ChunkCursor::restore(split(0, 1), 20, &positions)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("batches of 10 records, this run reads 20"),
            "{e}"
        );
        let e = ChunkCursor::restore(split(0, 1), 10, &[serde_json::json!({"x": 1})])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a chunk position"), "{e}");
    }
}
