//! How window operators lay their state out for checkpoints: one entry per window (or pane)
//! and key group, holding that key group's rows as an Arrow IPC batch, so state moves between
//! parallelisms by key group and a checkpoint rewrites only windows that changed.

use crate::error::{OperatorError, Result};
use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::{Field, Schema};
use oxflow_runtime::exchange::{hash_keys, key_group};
use oxflow_runtime::state::{decode_batch, encode_batch, StateSnapshot};
use oxflow_runtime::EventTime;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The entry key of window (or pane) `[start, end)`.
pub(crate) fn window_key(end: EventTime, start: EventTime) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&end.to_be_bytes());
    k.extend_from_slice(&start.to_be_bytes());
    k
}

/// The `(end, start)` of a window entry key.
pub(crate) fn parse_window_key(key: &[u8]) -> Result<(EventTime, EventTime)> {
    let bad = || {
        OperatorError::State(format!(
            "a window entry key has {} bytes, not 16",
            key.len()
        ))
    };
    let end = key.get(..8).ok_or_else(bad)?;
    let start = key.get(8..16).ok_or_else(bad)?;
    Ok((
        i64::from_be_bytes(end.try_into().expect("8 bytes")),
        i64::from_be_bytes(start.try_into().expect("8 bytes")),
    ))
}

/// Which run of a window's partial state an entry holds: runs spilled from memory are level
/// 0; merging runs of level `l` makes one of level `l + 1`. `seq` tells runs apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RunId {
    pub level: u8,
    pub seq: u32,
}

/// The entry key of run `run` of window (or pane) `[start, end)`: a partial state in the
/// store, merged with the window's other runs when it fires.
pub(crate) fn run_key(end: EventTime, start: EventTime, run: RunId) -> Vec<u8> {
    let mut k = window_key(end, start);
    k.push(run.level);
    k.extend_from_slice(&run.seq.to_be_bytes());
    k
}

/// The `(end, start, run)` of a window's entry key: a run key, or a plain window key (as
/// state kept in memory writes it; a run of level 0).
pub(crate) fn parse_run_key(key: &[u8]) -> Result<(EventTime, EventTime, RunId)> {
    match key.len() {
        16 => {
            let (end, start) = parse_window_key(key)?;
            Ok((end, start, RunId { level: 0, seq: 0 }))
        }
        21 => {
            let (end, start) = parse_window_key(&key[..16])?;
            let seq = u32::from_be_bytes(key[17..].try_into().expect("4 bytes"));
            Ok((
                end,
                start,
                RunId {
                    level: key[16],
                    seq,
                },
            ))
        }
        n => Err(OperatorError::State(format!(
            "a window entry key has {n} bytes, not 16 or 21"
        ))),
    }
}

/// A batch of `columns` with positional names (state entries carry no user schema).
pub(crate) fn state_batch(columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    let fields: Vec<Field> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
        .collect();
    let rows = columns.first().map_or(0, |c| c.len());
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

/// Splits `batch` by key group, encoding each part. `keys` are, row by row, the columns the
/// exchange into the operator hashes (so a key group's state lands where its records will);
/// no key: everything in key group 0.
pub(crate) fn encode_by_key_group(
    batch: &RecordBatch,
    keys: &[ArrayRef],
    max_parallelism: usize,
) -> Result<Vec<(usize, Vec<u8>)>> {
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    if keys.is_empty() {
        return Ok(vec![(0, encode_batch(batch)?)]);
    }
    let mut hashes = Vec::new();
    hash_keys(keys, &mut hashes)?;
    let mut rows: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for (i, &h) in hashes.iter().enumerate() {
        rows.entry(key_group(h, max_parallelism))
            .or_default()
            .push(i as u32);
    }
    rows.into_iter()
        .map(|(kg, rows)| {
            let part = if rows.len() == batch.num_rows() {
                batch.clone()
            } else {
                take_record_batch(batch, &UInt32Array::from(rows))?
            };
            Ok((kg, encode_batch(&part)?))
        })
        .collect()
}

/// Decodes one state entry; `key_group` names it in errors.
pub(crate) fn decode_entry(key_group: usize, value: &[u8]) -> Result<RecordBatch> {
    Ok(decode_batch(value, &format!("in key group {key_group}"))?)
}

/// Which entries (item key, key groups) an operator has in the store, so that a snapshot
/// writes only what changed and deletes what is gone.
#[derive(Debug, Default)]
pub(crate) struct StoredEntries {
    written: BTreeMap<Vec<u8>, BTreeSet<usize>>,
}

impl StoredEntries {
    /// Replaces the entries of `item` with `parts` (one per key group).
    pub(crate) fn replace(
        &mut self,
        state: &mut StateSnapshot,
        item: Vec<u8>,
        parts: Vec<(usize, Vec<u8>)>,
    ) {
        let now: BTreeSet<usize> = parts.iter().map(|(kg, _)| *kg).collect();
        if let Some(before) = self.written.get(&item) {
            for &kg in before.difference(&now) {
                state.delete(kg, &item);
            }
        }
        for (kg, value) in parts {
            state.put(kg, &item, value);
        }
        if now.is_empty() {
            self.written.remove(&item);
        } else {
            self.written.insert(item, now);
        }
    }

    /// Deletes every entry of items `keep` rejects.
    pub(crate) fn retain(&mut self, state: &mut StateSnapshot, keep: impl Fn(&[u8]) -> bool) {
        self.written.retain(|item, groups| {
            let kept = keep(item);
            if !kept {
                for &kg in groups.iter() {
                    state.delete(kg, item);
                }
            }
            kept
        });
    }
}

/// Encodes an operator's one number of non-keyed state (a watermark-derived bound).
pub(crate) fn encode_i64(v: i64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

/// The largest of the numbers every old subtask stored with [`encode_i64`].
pub(crate) fn max_i64(values: &[Vec<u8>]) -> Result<Option<i64>> {
    values
        .iter()
        .map(|v| {
            let bytes: [u8; 8] = v.as_slice().try_into().map_err(|_| {
                OperatorError::State(format!("operator state has {} bytes, not 8", v.len()))
            })?;
            Ok(i64::from_be_bytes(bytes))
        })
        .try_fold(None, |acc: Option<i64>, v: Result<i64>| {
            let v = v?;
            Ok(Some(acc.map_or(v, |a| a.max(v))))
        })
}

/// A subtask restarting from its own checkpoints, for operator tests: each restart snapshots
/// the operator into RocksDB, checkpoints the store, and restores a fresh operator into a
/// fresh store, as a restored subtask of a real job does. Each operator keeps its state in
/// memory, or in the store with a memory budget (chosen per operator, so that a checkpoint
/// of one storage restores into the other).
#[cfg(test)]
pub(crate) struct Restarts {
    backend: oxflow_runtime::state::StateBackend,
    count: usize,
    store_use: oxflow_runtime::state::StoreUse,
    /// Dropped last: RocksDB flushes on close, and a flush into a deleted directory fails
    /// and waits a second before it gives up.
    dir: tempfile::TempDir,
}

#[cfg(test)]
impl Restarts {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let backend = oxflow_runtime::state::StateBackend::open(&dir.path().join("db-0")).unwrap();
        Restarts {
            dir,
            backend,
            count: 0,
            store_use: oxflow_runtime::state::StoreUse::Memory,
        }
    }

    /// A new operator of `factory`, keeping its state in the store with `budget` bytes in
    /// memory (`None`: in memory).
    pub(crate) fn create(
        &mut self,
        factory: &dyn oxflow_runtime::OperatorFactory,
        subtask: oxflow_runtime::SubtaskInfo,
        budget: Option<usize>,
    ) -> Box<dyn oxflow_runtime::Operator> {
        let mut op = factory.create(subtask).unwrap();
        self.store_use = match budget {
            Some(budget) => op.use_state_store(self.backend.store(0, 0, budget)),
            None => oxflow_runtime::state::StoreUse::Memory,
        };
        op
    }

    /// Runs a single-input operator of `factory` over `chunks` (each a batch and the latest
    /// event time so far) as a subtask does: before each chunk `restores` names, restarted
    /// from its own state, each attempt keeping its state as `budgets` says in turn (`None`:
    /// in memory), and told its watermark again; after each chunk, the watermark `lag`
    /// behind the latest time. Returns everything it emitted, to the end of input.
    pub(crate) fn run(
        factory: &dyn oxflow_runtime::OperatorFactory,
        subtask: oxflow_runtime::SubtaskInfo,
        chunks: impl IntoIterator<Item = (datafusion::arrow::array::RecordBatch, i64)>,
        restores: &[usize],
        budgets: &[Option<usize>],
        lag: i64,
    ) -> Vec<datafusion::arrow::array::RecordBatch> {
        let mut restarts = Restarts::new();
        let mut op = restarts.create(factory, subtask, budgets[0]);
        let mut budget = budgets.iter().cycle().skip(1);
        let (mut out, mut emitted) = (oxflow_runtime::Output::default(), Vec::new());
        let mut watermark = None;
        for (n, (batch, max_time)) in chunks.into_iter().enumerate() {
            if restores.contains(&n) {
                restarts.restart_with(&mut op, factory, subtask, *budget.next().unwrap());
                // As the executor does: a restored operator hears its watermark again.
                if let Some(w) = watermark {
                    op.on_watermark(w, &mut out).unwrap();
                }
            }
            op.on_batch(batch, &mut out).unwrap();
            watermark = Some(max_time - lag);
            op.on_watermark(max_time - lag, &mut out).unwrap();
            emitted.extend(out.drain());
        }
        op.on_end_of_input(&mut out).unwrap();
        emitted.extend(out.drain());
        emitted
    }

    /// Replaces `op` by a new operator of `factory` restored from `op`'s state, keeping its
    /// state in the store with `budget` bytes in memory (`None`: in memory).
    pub(crate) fn restart_with(
        &mut self,
        op: &mut Box<dyn oxflow_runtime::Operator>,
        factory: &dyn oxflow_runtime::OperatorFactory,
        subtask: oxflow_runtime::SubtaskInfo,
        budget: Option<usize>,
    ) {
        use oxflow_runtime::state::{key_group_range, read_state, StateBackend};
        let mut snapshot = StateSnapshot::default();
        op.snapshot_state(&mut snapshot).unwrap();
        self.backend.apply(0, 0, snapshot).unwrap();
        self.backend.freeze();
        self.count += 1;
        let target = self.dir.path().join(format!("chk-{}", self.count));
        self.backend.checkpoint(&target, self.dir.path()).unwrap();
        let key_groups =
            key_group_range(subtask.index, subtask.parallelism, subtask.max_parallelism);
        self.backend =
            StateBackend::open(&self.dir.path().join(format!("db-{}", self.count))).unwrap();
        *op = self.create(factory, subtask, budget);
        let store_use = [self.store_use];
        let state = read_state(&[target], 1, key_groups, Some((&self.backend, &store_use)))
            .unwrap()
            .remove(0);
        if !state.is_empty() {
            op.restore_state(state).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        /// Fuzz: window and run keys, and entries, from a corrupt store are errors, not
        /// panics.
        #[test]
        fn state_key_and_entry_decoders_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = parse_window_key(&bytes);
            let _ = parse_run_key(&bytes);
            let _ = decode_entry(3, &bytes);
            let _ = max_i64(std::slice::from_ref(&bytes));
        }
    }
    use datafusion::arrow::array::Int64Array;

    #[test]
    fn rows_split_by_key_group_come_back_whole() {
        let keys: ArrayRef = Arc::new(Int64Array::from_iter_values(0..1000));
        let values: ArrayRef = Arc::new(Int64Array::from_iter_values((0..1000).map(|v| v * 2)));
        let batch = state_batch(vec![keys, values]).unwrap();
        let parts = encode_by_key_group(&batch, &batch.columns()[..1], 128).unwrap();
        assert!(
            parts.len() > 100,
            "1000 keys spread over most of 128 key groups"
        );
        let mut seen = 0;
        for (kg, bytes) in &parts {
            let part = decode_entry(*kg, bytes).unwrap();
            let mut hashes = Vec::new();
            hash_keys(&part.columns()[..1], &mut hashes).unwrap();
            assert!(hashes.iter().all(|&h| key_group(h, 128) == *kg));
            seen += part.num_rows();
        }
        assert_eq!(seen, 1000);
        assert_eq!(encode_by_key_group(&batch, &[], 128).unwrap().len(), 1);
    }

    #[test]
    fn stored_entries_delete_what_is_gone() {
        let mut stored = StoredEntries::default();
        let mut s = StateSnapshot::default();
        stored.replace(&mut s, window_key(10, 0), vec![(1, vec![1]), (2, vec![2])]);
        stored.replace(&mut s, window_key(20, 10), vec![(3, vec![3])]);
        let mut s = StateSnapshot::default();
        stored.replace(&mut s, window_key(10, 0), vec![(2, vec![9])]);
        stored.retain(&mut s, |item| item != window_key(20, 10).as_slice());
        let text = format!("{s:?}");
        assert!(
            text.contains("deletes: [(1,") && text.contains("(3,"),
            "{text}"
        );
        assert_eq!(parse_window_key(&window_key(-5, 7)).unwrap(), (-5, 7));
        let run = RunId { level: 2, seq: 9 };
        assert_eq!(parse_run_key(&run_key(-5, 7, run)).unwrap(), (-5, 7, run));
        let first = RunId { level: 0, seq: 0 };
        assert_eq!(parse_run_key(&window_key(-5, 7)).unwrap(), (-5, 7, first));
        assert!(parse_run_key(&[0; 17]).is_err());
        assert!(parse_window_key(&[1, 2]).is_err());
        assert_eq!(max_i64(&[encode_i64(3), encode_i64(-1)]).unwrap(), Some(3));
        assert!(max_i64(&[vec![1]]).is_err());
    }
}
