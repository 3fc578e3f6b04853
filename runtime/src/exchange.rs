//! How records cross from one stage to the next: forward, rebalance, or hash by key through
//! key groups.
//!
//! A key hashes to one of `max_parallelism` key groups; subtask `i` of `p` owns the
//! contiguous range of key groups `kg` with `kg * p / max_parallelism == i` (Flink's
//! assignment), so state stored by key group can later move between parallelisms.

use crate::error::{Result, RuntimeError};
use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::hash_utils::{create_hashes, RandomState};

/// The number of key groups when a job does not say (Flink's default is also 128).
pub const DEFAULT_MAX_PARALLELISM: usize = 128;

/// How the records of one stage are spread over the subtasks of the next.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Partitioning {
    /// Subtask `i` sends to subtask `i` (same parallelism on both sides).
    Forward,
    /// Whole batches round-robin over the next stage's subtasks.
    Rebalance,
    /// Every record to the subtask owning its key's key group; columns name the key.
    Hash(Vec<String>),
}

/// The key group of a key hash.
#[inline]
pub fn key_group(hash: u64, max_parallelism: usize) -> usize {
    (hash % max_parallelism as u64) as usize
}

/// The subtask, of `parallelism`, that owns `key_group`.
///
/// ```
/// use oxflow_runtime::exchange::subtask_for_key_group;
/// // 128 key groups over 4 subtasks: 32 contiguous groups each.
/// assert_eq!(subtask_for_key_group(31, 4, 128), 0);
/// assert_eq!(subtask_for_key_group(32, 4, 128), 1);
/// assert_eq!(subtask_for_key_group(127, 4, 128), 3);
/// ```
#[inline]
pub fn subtask_for_key_group(
    key_group: usize,
    parallelism: usize,
    max_parallelism: usize,
) -> usize {
    key_group * parallelism / max_parallelism
}

/// Hashes key columns the same way in every process and every run: the hash decides key
/// groups, and key groups name state in checkpoints.
pub fn hash_keys(keys: &[ArrayRef], hashes: &mut Vec<u64>) -> Result<()> {
    let rows = keys.first().map(|k| k.len()).unwrap_or(0);
    hashes.clear();
    hashes.resize(rows, 0);
    create_hashes(keys, &RandomState::default(), hashes)?;
    Ok(())
}

/// Splits batches for the subtasks of the next stage.
#[derive(Debug)]
pub struct Partitioner {
    kind: PartitionerKind,
    targets: usize,
}

#[derive(Debug)]
enum PartitionerKind {
    Forward(usize),
    Rebalance {
        next: usize,
    },
    Hash {
        key_indices: Vec<usize>,
        max_parallelism: usize,
        hashes: Vec<u64>,
        rows: Vec<Vec<u32>>,
    },
}

impl Partitioner {
    /// A partitioner for subtask `index` sending to `targets` subtasks; `schema` is what it
    /// sends (hash keys are looked up in it).
    pub fn try_new(
        partitioning: &Partitioning,
        index: usize,
        targets: usize,
        max_parallelism: usize,
        schema: &SchemaRef,
    ) -> Result<Self> {
        let kind = match partitioning {
            Partitioning::Forward => PartitionerKind::Forward(index),
            Partitioning::Rebalance => PartitionerKind::Rebalance {
                next: index % targets,
            },
            Partitioning::Hash(columns) => {
                let key_indices = columns
                    .iter()
                    .map(|c| {
                        schema.index_of(c).map_err(|_| {
                            RuntimeError::InvalidJob(format!(
                                "key column `{c}` not found; columns are {:?}",
                                schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                PartitionerKind::Hash {
                    key_indices,
                    max_parallelism,
                    hashes: Vec::new(),
                    rows: vec![Vec::new(); targets],
                }
            }
        };
        Ok(Partitioner { kind, targets })
    }

    /// Splits `batch` into `(target, part)` pairs, calling `emit` for each non-empty part.
    pub fn partition(
        &mut self,
        batch: RecordBatch,
        mut emit: impl FnMut(usize, RecordBatch) -> Result<()>,
    ) -> Result<()> {
        match &mut self.kind {
            PartitionerKind::Forward(i) => emit(*i, batch),
            PartitionerKind::Rebalance { next } => {
                let target = *next;
                *next = (*next + 1) % self.targets;
                emit(target, batch)
            }
            PartitionerKind::Hash {
                key_indices,
                max_parallelism,
                hashes,
                rows,
            } => {
                if self.targets == 1 {
                    return emit(0, batch);
                }
                let keys: Vec<ArrayRef> = key_indices
                    .iter()
                    .map(|&i| batch.column(i).clone())
                    .collect();
                hash_keys(&keys, hashes)?;
                for r in rows.iter_mut() {
                    r.clear();
                }
                for (row, &h) in hashes.iter().enumerate() {
                    let target = subtask_for_key_group(
                        key_group(h, *max_parallelism),
                        self.targets,
                        *max_parallelism,
                    );
                    rows[target].push(row as u32);
                }
                for (target, indices) in rows.iter_mut().enumerate() {
                    if indices.is_empty() {
                        continue;
                    }
                    if indices.len() == batch.num_rows() {
                        return emit(target, batch);
                    }
                    let idx = UInt32Array::from(std::mem::take(indices));
                    emit(target, take_record_batch(&batch, &idx)?)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    /// Pins the key-group hash: state is stored by key group, so a hash that changed (a
    /// DataFusion or ahash upgrade, a seed) would send restored keys to subtasks that do not
    /// hold their state. If this fails after an upgrade, do not update the numbers: keep the
    /// old hash, or write the migration of checkpoints it needs.
    const PINNED_INT64: (&[u64], &[usize]) = (
        &[
            6908261415171690783,
            11485087932207604273,
            17103352462266903514,
            15839238120341338829,
            4571573961624992205,
        ],
        &[31, 49, 90, 77, 77],
    );
    const PINNED_UTF8: (&[u64], &[usize]) = (
        &[
            3949196377064614455,
            17013553549990595388,
            16350045927799413540,
            1084874106880461431,
            6714133014617132797,
        ],
        &[55, 60, 36, 119, 125],
    );
    const PINNED_BOTH: &[u64] = &[
        5454574776886035963,
        13797270775734901958,
        13312497358430024439,
        639347853789780201,
        13186822544234757959,
    ];

    #[test]
    fn the_key_group_hash_is_pinned() {
        use datafusion::arrow::array::StringArray;
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![0, 1, 42, -7, i64::MAX]));
        let strings: ArrayRef = Arc::new(StringArray::from(vec!["", "a", "auction", "ü", "x y"]));
        let mut hashes = Vec::new();
        hash_keys(std::slice::from_ref(&ints), &mut hashes).unwrap();
        let groups: Vec<usize> = hashes.iter().map(|&h| key_group(h, 128)).collect();
        assert_eq!((hashes.as_slice(), groups.as_slice()), PINNED_INT64);
        hash_keys(std::slice::from_ref(&strings), &mut hashes).unwrap();
        let groups: Vec<usize> = hashes.iter().map(|&h| key_group(h, 128)).collect();
        assert_eq!((hashes.as_slice(), groups.as_slice()), PINNED_UTF8);
        hash_keys(&[ints, strings], &mut hashes).unwrap();
        assert_eq!(hashes.as_slice(), PINNED_BOTH);
    }

    #[test]
    fn key_groups_cover_subtasks_contiguously() {
        let owners: Vec<usize> = (0..128)
            .map(|kg| subtask_for_key_group(kg, 3, 128))
            .collect();
        assert!(owners.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(owners[0], 0);
        assert_eq!(owners[127], 2);
    }

    #[test]
    fn hash_partitioning_keeps_each_key_on_one_subtask() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let keys: Vec<i64> = (0..1000).map(|i| i % 37).collect();
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(keys))]).unwrap();
        let mut p = Partitioner::try_new(&Partitioning::Hash(vec!["k".into()]), 0, 4, 128, &schema)
            .unwrap();
        let mut owner = std::collections::HashMap::new();
        let mut total = 0;
        for _ in 0..2 {
            p.partition(batch.clone(), |t, part| {
                let col = part
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                total += col.len();
                for k in col.values() {
                    assert_eq!(*owner.entry(*k).or_insert(t), t, "key {k} on two subtasks");
                }
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(total, 2000);
        assert!(
            owner
                .values()
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 1
        );
    }

    #[test]
    fn unknown_key_column_is_named() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let err = Partitioner::try_new(&Partitioning::Hash(vec!["x".into()]), 0, 2, 128, &schema)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`x` not found"), "{err}");
    }
}
