//! Running aggregates: a keyed aggregate without windows (Flink SQL's `GROUP BY` on a stream,
//! Kafka Streams' `groupByKey().aggregate()`), emitting every key's new value after each row.
//!
//! The output is a changelog: one row per input row, holding the key and the aggregates over
//! every row of that key so far; the last row of a key is its current value. To make that
//! sequence the same in every run (after a restore, at any parallelism, whatever order the
//! inputs interleaved in), rows are held until the watermark passes their event time and are
//! then applied in event-time order, ties broken by the rows' values. Rows at or below the
//! watermark when they arrive are late: counted and dropped.

use crate::aggregate::Aggregates;
use crate::error::{column_index, OperatorError, Result};
use crate::state::{decode_entry, encode_by_key_group, state_batch, StoredEntries};
use crate::window::{key_fields, LateSide};
use crate::LateRecords;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::compute::{
    cast, concat_batches, filter_record_batch, lexsort_to_indices, take_record_batch, SortColumn,
};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Accumulator, Expr};
use oxflow_runtime::exchange::{hash_keys, key_group};
use oxflow_runtime::metrics::Counter;
use oxflow_runtime::operator::{Operator, OperatorFactory, Output, SubtaskInfo};
use oxflow_runtime::state::{encode_batch, RestoredState, StateSnapshot};
use oxflow_runtime::watermark::event_times;
use oxflow_runtime::EventTime;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Builds the running aggregate of each subtask; see the module documentation.
pub struct RunningAggregate {
    key_indices: Vec<usize>,
    time_column: String,
    aggregates: Aggregates,
    input: SchemaRef,
    key_schema: SchemaRef,
    output: SchemaRef,
    late_records: Counter,
}

impl RunningAggregate {
    /// Aggregates per key of `keys` (at least one), ordered by `time_column`.
    pub fn try_new(
        keys: Vec<String>,
        time_column: Option<String>,
        aggregates: &[Expr],
        input: SchemaRef,
    ) -> Result<Self> {
        if keys.is_empty() {
            return Err(OperatorError::InvalidWindow(
                "a running aggregate needs at least one key column".into(),
            ));
        }
        let time_column = time_column.ok_or_else(|| {
            OperatorError::InvalidWindow(
                "a running aggregate applies rows in event-time order: the stream needs an event-time column (with_watermarks, or with_event_time after a window)".into(),
            )
        })?;
        column_index(&input, &time_column, "running aggregate")?;
        let (key_indices, key_schema) = key_fields(&input, &keys, "running aggregate")?;
        let aggregates = Aggregates::try_new(aggregates, &input)?;
        let mut fields: Vec<Field> = key_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(aggregates.fields().iter().map(|f| f.as_ref().clone()));
        Ok(RunningAggregate {
            key_indices,
            time_column,
            aggregates,
            input,
            key_schema,
            output: Arc::new(Schema::new(fields)),
            late_records: Counter::default(),
        })
    }
}

impl OperatorFactory for RunningAggregate {
    fn name(&self) -> String {
        "running-aggregate".into()
    }
    fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }
    fn counters(&self) -> Vec<(String, Counter)> {
        vec![("late_records".into(), self.late_records.clone())]
    }
    fn create(&self, subtask: SubtaskInfo) -> oxflow_runtime::Result<Box<dyn Operator>> {
        let converter = RowConverter::new(
            self.key_schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(OperatorError::from)?;
        Ok(Box::new(RunningOperator {
            key_indices: self.key_indices.clone(),
            time_column: self.time_column.clone(),
            aggregates: self.aggregates.clone(),
            input: self.input.clone(),
            output: self.output.clone(),
            keys: converter,
            groups: HashMap::new(),
            dirty: HashSet::new(),
            pending: Vec::new(),
            earliest: EventTime::MAX,
            pending_changed: false,
            stored: StoredEntries::default(),
            watermark: EventTime::MIN,
            late: LateSide::try_new(
                &LateRecords::Drop,
                self.late_records.clone(),
                subtask,
                self.input.clone(),
            )?,
            max_parallelism: subtask.max_parallelism,
        }))
    }
}

/// The accumulators of one key.
struct KeyState {
    key_group: u16,
    accumulators: Vec<Box<dyn Accumulator>>,
}

/// The entry item of the rows waiting for the watermark.
const PENDING: &[u8] = b"p";
/// The prefix of a key's accumulator entry.
const KEY: u8 = b'k';

struct RunningOperator {
    key_indices: Vec<usize>,
    time_column: String,
    aggregates: Aggregates,
    input: SchemaRef,
    output: SchemaRef,
    keys: RowConverter,
    groups: HashMap<Box<[u8]>, KeyState>,
    /// Keys updated since the last snapshot.
    dirty: HashSet<Box<[u8]>>,
    /// Rows waiting for the watermark to pass them, and the earliest time among them.
    pending: Vec<RecordBatch>,
    earliest: EventTime,
    pending_changed: bool,
    stored: StoredEntries,
    watermark: EventTime,
    /// Counts and drops late rows.
    late: LateSide,
    max_parallelism: usize,
}

impl RunningOperator {
    /// Keeps `batch` until the watermark passes its rows.
    fn hold(&mut self, batch: RecordBatch) -> Result<()> {
        let times = event_times(&batch, &self.time_column)?;
        self.earliest = times.iter().copied().fold(self.earliest, EventTime::min);
        self.pending.push(batch);
        self.pending_changed = true;
        Ok(())
    }

    fn key_columns(&self, batch: &RecordBatch) -> Vec<ArrayRef> {
        self.key_indices
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect()
    }

    /// Applies the pending rows with a time at or below `watermark` (all: `None`), in order.
    fn apply_ready(&mut self, watermark: Option<EventTime>, out: &mut Output) -> Result<()> {
        // Most watermarks pass no waiting row: nothing to copy then.
        if self.pending.is_empty() || watermark.is_some_and(|w| w < self.earliest) {
            return Ok(());
        }
        let all = concat_batches(&self.input, &self.pending)?;
        self.pending.clear();
        self.pending_changed = true;
        let times = event_times(&all, &self.time_column)?;
        let ready: datafusion::arrow::array::BooleanArray = times
            .iter()
            .map(|&t| Some(watermark.is_none_or(|w| t <= w)))
            .collect();
        let rest = filter_record_batch(&all, &datafusion::arrow::compute::not(&ready)?)?;
        self.earliest = EventTime::MAX;
        if rest.num_rows() > 0 {
            self.hold(rest)?;
        }
        let ready = filter_record_batch(&all, &ready)?;
        if ready.num_rows() == 0 {
            return Ok(());
        }
        self.apply(&self.sorted(ready)?, out)
    }

    /// `batch` in event-time order, ties broken by every other column where they sort.
    fn sorted(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let time = column_index(&self.input, &self.time_column, "running aggregate")?;
        let mut columns = vec![SortColumn {
            values: batch.column(time).clone(),
            options: None,
        }];
        let by_time = lexsort_to_indices(&columns, None)?;
        columns.extend(
            (0..batch.num_columns())
                .filter(|&i| i != time)
                .map(|i| SortColumn {
                    values: batch.column(i).clone(),
                    options: None,
                }),
        );
        // A column that does not sort (a list, say) leaves ties in arrival order.
        let indices = lexsort_to_indices(&columns, None).unwrap_or(by_time);
        Ok(take_record_batch(&batch, &indices)?)
    }

    /// Folds `batch` row by row, emitting each row's key with its new aggregates.
    fn apply(&mut self, batch: &RecordBatch, out: &mut Output) -> Result<()> {
        let keys = self.key_columns(batch);
        let encoded = self.keys.convert_columns(&keys)?;
        let mut hashes = Vec::new();
        hash_keys(&keys, &mut hashes)?;
        let inputs = self.aggregates.evaluate_inputs(batch)?;
        let mut values: Vec<Vec<ScalarValue>> = vec![Vec::new(); inputs.len()];
        for (row, &hash) in hashes.iter().enumerate() {
            let key: Box<[u8]> = encoded.row(row).as_ref().into();
            let state = match self.groups.get_mut(&key) {
                Some(state) => state,
                None => {
                    let state = KeyState {
                        key_group: key_group(hash, self.max_parallelism) as u16,
                        accumulators: self.aggregates.row_accumulators()?,
                    };
                    self.groups.entry(key.clone()).or_insert(state)
                }
            };
            for ((acc, (args, filter)), values) in
                state.accumulators.iter_mut().zip(&inputs).zip(&mut values)
            {
                if filter
                    .as_ref()
                    .is_none_or(|f| f.is_valid(row) && f.value(row))
                {
                    let args: Vec<ArrayRef> = args.iter().map(|a| a.slice(row, 1)).collect();
                    acc.update_batch(&args)?;
                }
                values.push(acc.evaluate()?);
            }
            self.dirty.insert(key);
        }
        let mut columns = keys;
        for (values, field) in values
            .into_iter()
            .zip(self.output.fields().iter().skip(columns.len()))
        {
            let array = ScalarValue::iter_to_array(values)?;
            columns.push(if array.data_type() == field.data_type() {
                array
            } else {
                cast(&array, field.data_type())?
            });
        }
        out.emit(RecordBatch::try_new(self.output.clone(), columns)?);
        Ok(())
    }

    fn snapshot(&mut self, state: &mut StateSnapshot) -> Result<()> {
        if self.pending_changed {
            let parts = if self.pending.is_empty() {
                Vec::new()
            } else {
                let pending = concat_batches(&self.input, &self.pending)?;
                encode_by_key_group(&pending, &self.key_columns(&pending), self.max_parallelism)?
            };
            self.stored.replace(state, PENDING.to_vec(), parts);
            self.pending_changed = false;
        }
        for key in std::mem::take(&mut self.dirty) {
            let Some(group) = self.groups.get_mut(&key) else {
                continue;
            };
            let parser = self.keys.parser();
            let mut columns = self.keys.convert_rows([parser.parse(&key)])?;
            for acc in group.accumulators.iter_mut() {
                for scalar in acc.state()? {
                    columns.push(scalar.to_array()?);
                }
            }
            let mut item = vec![KEY];
            item.extend_from_slice(&key);
            state.put(
                group.key_group as usize,
                &item,
                encode_batch(&state_batch(columns)?)?,
            );
        }
        Ok(())
    }

    fn restore(&mut self, kg: usize, item: &[u8], value: &[u8]) -> Result<()> {
        let batch = decode_entry(kg, value)?;
        let bad = |m: String| {
            OperatorError::State(format!("running aggregate state in key group {kg}: {m}"))
        };
        if item == PENDING {
            let rows = RecordBatch::try_new(self.input.clone(), batch.columns().to_vec())
                .map_err(|e| bad(format!("waiting rows do not fit this job's input: {e}")))?;
            self.hold(rows)?;
            return Ok(());
        }
        if item.first() != Some(&KEY) || batch.num_rows() != 1 {
            return Err(bad(format!(
                "an entry of {} bytes is not a key's",
                item.len()
            )));
        }
        let n = self.key_indices.len();
        let state_fields = self.aggregates.state_fields()?;
        let expected = n + state_fields.iter().map(Vec::len).sum::<usize>();
        if batch.num_columns() != expected {
            return Err(bad(format!(
                "{} columns, this job's aggregates keep {expected}",
                batch.num_columns()
            )));
        }
        let key_columns = batch.columns()[..n].to_vec();
        let key: Box<[u8]> = self
            .keys
            .convert_columns(&key_columns)?
            .row(0)
            .as_ref()
            .into();
        let mut accumulators = self.aggregates.row_accumulators()?;
        let mut next = n;
        for (acc, fields) in accumulators.iter_mut().zip(&state_fields) {
            acc.merge_batch(&batch.columns()[next..next + fields.len()])?;
            next += fields.len();
        }
        self.groups.insert(
            key.clone(),
            KeyState {
                key_group: kg as u16,
                accumulators,
            },
        );
        // A restored subtask writes a new store: its next checkpoint must hold this key.
        self.dirty.insert(key);
        Ok(())
    }
}

impl Operator for RunningOperator {
    fn on_batch(&mut self, batch: RecordBatch, _: &mut Output) -> oxflow_runtime::Result<()> {
        let watermark = self.watermark;
        let late: Vec<bool> = event_times(&batch, &self.time_column)?
            .iter()
            .map(|&t| watermark != EventTime::MIN && t <= watermark)
            .collect();
        let batch = self.late.split(batch, &late)?;
        if batch.num_rows() > 0 {
            self.hold(batch)?;
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: EventTime,
        out: &mut Output,
    ) -> oxflow_runtime::Result<()> {
        self.watermark = watermark;
        Ok(self.apply_ready(Some(watermark), out)?)
    }

    fn on_end_of_input(&mut self, out: &mut Output) -> oxflow_runtime::Result<()> {
        Ok(self.apply_ready(None, out)?)
    }

    fn snapshot_state(&mut self, state: &mut StateSnapshot) -> oxflow_runtime::Result<()> {
        Ok(self.snapshot(state)?)
    }

    fn restore_state(&mut self, state: RestoredState) -> oxflow_runtime::Result<()> {
        for (kg, item, value) in state.keyed {
            self.restore(kg, &item, &value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::DataType;
    use datafusion::functions_aggregate::expr_fn::{count, sum};
    use datafusion::prelude::col;
    use proptest::prelude::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("t", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]))
    }

    fn factory() -> RunningAggregate {
        RunningAggregate::try_new(
            vec!["k".into()],
            Some("t".into()),
            &[count(col("v")).alias("n"), sum(col("v")).alias("total")],
            schema(),
        )
        .unwrap()
    }

    fn info() -> SubtaskInfo {
        SubtaskInfo {
            index: 0,
            parallelism: 1,
            max_parallelism: 8,
        }
    }

    /// Output rows `(k, n, total)`, sorted.
    fn rows(batches: &[RecordBatch]) -> Vec<(i64, i64, i64)> {
        let mut rows = Vec::new();
        for b in batches {
            let c = |i: usize| {
                b.column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone()
            };
            let (k, n, total) = (c(0), c(1), c(2));
            rows.extend((0..b.num_rows()).map(|i| (k.value(i), n.value(i), total.value(i))));
        }
        rows.sort();
        rows
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100))]
        /// Rows out of order (within the watermark delay), in any batches, restored from
        /// RocksDB at random points: the changelog equals folding the rows in (time, key,
        /// value) order.
        #[test]
        fn the_changelog_folds_rows_in_event_time_order(
            raw in proptest::collection::vec((0i64..3, 0i64..100, 0i64..20, 0i64..10), 1..60),
            chunk in 1usize..5,
            restores in proptest::collection::vec(0usize..20, 0..3),
        ) {
            const DELAY: i64 = 10;
            let mut arrivals: Vec<(i64, (i64, i64, i64))> =
                raw.iter().map(|&(k, t, j, v)| (t + j % DELAY, (k, t, v))).collect();
            arrivals.sort();
            let factory = factory();
            let mut restarts = crate::state::Restarts::new();
            let mut op = factory.create(info()).unwrap();
            let (mut out, mut emitted) = (Output::default(), Vec::new());
            let (mut max_time, mut watermark) = (i64::MIN, EventTime::MIN);
            for (n, part) in arrivals.chunks(chunk).enumerate() {
                if restores.contains(&n) {
                    restarts.restart(&mut op, &factory, info());
                }
                let col = |f: fn(&(i64, i64, i64)) -> i64| -> ArrayRef {
                    Arc::new(Int64Array::from_iter_values(part.iter().map(|(_, r)| f(r))))
                };
                let batch = RecordBatch::try_new(schema(), vec![col(|r| r.0), col(|r| r.1), col(|r| r.2)]).unwrap();
                op.on_batch(batch, &mut out).unwrap();
                max_time = max_time.max(part.iter().map(|(_, r)| r.1).max().unwrap());
                if max_time - DELAY > watermark {
                    watermark = max_time - DELAY;
                    op.on_watermark(watermark, &mut out).unwrap();
                }
                emitted.extend(out.drain());
            }
            op.on_end_of_input(&mut out).unwrap();
            emitted.extend(out.drain());
            prop_assert_eq!(factory.late_records.get(), 0);
            // The reference: every row in (time, key, value) order, folded per key.
            let mut ordered: Vec<(i64, i64, i64)> = raw.iter().map(|&(k, t, _, v)| (t, k, v)).collect();
            ordered.sort();
            let mut totals: HashMap<i64, (i64, i64)> = HashMap::new();
            let mut expected: Vec<(i64, i64, i64)> = ordered
                .into_iter()
                .map(|(_, k, v)| {
                    let e = totals.entry(k).or_default();
                    *e = (e.0 + 1, e.1 + v);
                    (k, e.0, e.1)
                })
                .collect();
            expected.sort();
            prop_assert_eq!(rows(&emitted), expected);
        }
    }

    #[test]
    fn a_stream_without_event_time_is_refused() {
        let err = RunningAggregate::try_new(vec!["k".into()], None, &[count(col("v"))], schema())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("needs an event-time column"), "{err}");
    }
}
