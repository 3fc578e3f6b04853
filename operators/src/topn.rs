//! The top rows of each key in each window, ties included (Nexmark's "highest bid" and
//! "hot items"; Flink's window Top-N).
//!
//! State is incremental: each batch is reduced to its own top rows before it is kept, and
//! the kept rows are reduced again when they outgrow the last reduction, so a window holds
//! little more than its answer whatever its input.

use crate::error::{column_index, OperatorError, Result};
use crate::state::{
    decode_entry, encode_by_key_group, parse_window_key, window_key, StoredEntries,
};
use crate::window::{
    key_fields, late_flags, window_field, window_fired, with_bounds, Assigner, LateSide,
    WindowSettings, WindowSpec, WINDOW_END, WINDOW_START,
};
use datafusion::arrow::array::{ArrayRef, RecordBatch, Scalar, UInt32Array};
use datafusion::arrow::compute::kernels::cmp::gt_eq;
use datafusion::arrow::compute::{
    concat_batches, lexsort_to_indices, take_record_batch, SortColumn, SortOptions,
};
use datafusion::arrow::compute::{filter_record_batch, sort_to_indices};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use oxflow_runtime::metrics::Counter;
use oxflow_runtime::state::{RestoredState, StateSnapshot};
use oxflow_runtime::{EventTime, Operator, OperatorFactory, Output, SubtaskInfo};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Keeps, per key and window, the rows with the `n` highest values of a column, ties
/// included. Output: `window_start, window_end` then the input's columns (for an inherited
/// window, the input's columns as they are).
#[derive(Clone)]
pub struct WindowTopN {
    settings: WindowSettings,
    input: SchemaRef,
    output: SchemaRef,
    key_indices: Vec<usize>,
    order_index: usize,
    n: usize,
    late_records: Counter,
}

impl WindowTopN {
    /// Plans the operator over `input`.
    pub fn try_new(
        settings: WindowSettings,
        order_by: &str,
        n: usize,
        input: SchemaRef,
    ) -> Result<Self> {
        if n == 0 {
            return Err(crate::OperatorError::InvalidWindow(
                "top-n needs n >= 1".into(),
            ));
        }
        if let WindowSpec::Session { .. } = settings.window {
            return Err(crate::OperatorError::InvalidWindow(
                "top-n over session windows is not supported; use tumbling, hopping or inherited windows".into(),
            ));
        }
        Assigner::try_new(&settings.window, settings.time_column.as_deref(), &input)?;
        let (key_indices, _) = key_fields(&input, &settings.effective_keys(), "key_by")?;
        let order_index = column_index(&input, order_by, "top-n order")?;
        let output = if settings.window == WindowSpec::Inherited {
            input.clone()
        } else {
            let mut fields = vec![window_field(WINDOW_START), window_field(WINDOW_END)];
            fields.extend(input.fields().iter().map(|f| f.as_ref().clone()));
            Arc::new(Schema::new(fields))
        };
        Ok(WindowTopN {
            settings,
            input,
            output,
            key_indices,
            order_index,
            n,
            late_records: Counter::default(),
        })
    }
}

impl OperatorFactory for WindowTopN {
    fn name(&self) -> String {
        "window-top-n".into()
    }
    fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }
    fn counters(&self) -> Vec<(String, Counter)> {
        vec![("late_records".into(), self.late_records.clone())]
    }
    fn create(&self, subtask: SubtaskInfo) -> oxflow_runtime::Result<Box<dyn Operator>> {
        let sort_field = |i: usize| SortField::new(self.input.field(i).data_type().clone());
        Ok(Box::new(TopNOperator {
            assigner: Assigner::try_new(
                &self.settings.window,
                self.settings.time_column.as_deref(),
                &self.input,
            )?,
            reducer: TopNReducer {
                key_indices: self.key_indices.clone(),
                order_index: self.order_index,
                n: self.n,
                keys: RowConverter::new(self.key_indices.iter().map(|&i| sort_field(i)).collect())
                    .map_err(crate::OperatorError::from)?,
                order: RowConverter::new(vec![sort_field(self.order_index)])
                    .map_err(crate::OperatorError::from)?,
            },
            inherited: self.settings.window == WindowSpec::Inherited,
            input: self.input.clone(),
            output: self.output.clone(),
            lateness: self.settings.allowed_lateness.as_millis() as i64,
            watermark: EventTime::MIN,
            windows: BTreeMap::new(),
            late: LateSide::try_new(
                &self.settings.late,
                self.late_records.clone(),
                subtask,
                self.input.clone(),
            )?,
            max_parallelism: subtask.max_parallelism,
            partition: self
                .settings
                .keys
                .iter()
                .map(|k| column_index(&self.input, k, "key_by"))
                .collect::<Result<_>>()?,
            dirty: BTreeSet::new(),
            stored: StoredEntries::default(),
        }))
    }
}

/// Reduces a batch to the top rows of each key.
struct TopNReducer {
    key_indices: Vec<usize>,
    order_index: usize,
    n: usize,
    keys: RowConverter,
    order: RowConverter,
}

impl TopNReducer {
    fn reduce(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        if batch.num_rows() == 0 {
            return Ok(batch.clone());
        }
        if self.key_indices.is_empty() {
            return self.reduce_unkeyed(batch);
        }
        let keys: Vec<ArrayRef> = self
            .key_indices
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let order = batch.column(self.order_index).clone();
        let mut sort: Vec<SortColumn> = keys
            .iter()
            .map(|k| SortColumn {
                values: k.clone(),
                options: None,
            })
            .collect();
        sort.push(SortColumn {
            values: order.clone(),
            options: Some(SortOptions {
                descending: true,
                nulls_first: false,
            }),
        });
        let sorted = lexsort_to_indices(&sort, None)?;
        let key_rows = self.keys.convert_columns(&keys)?;
        let order_rows = self.order.convert_columns(std::slice::from_ref(&order))?;
        let mut keep = Vec::new();
        let mut run_start: Option<u32> = None;
        let mut in_run = 0;
        let mut threshold: Option<u32> = None;
        for &i in sorted.values() {
            let row = i as usize;
            // Without key columns the whole batch is one key (a RowConverter of no columns has no rows).
            let same_key = run_start.is_some_and(|s| {
                self.key_indices.is_empty() || key_rows.row(s as usize) == key_rows.row(row)
            });
            if !same_key {
                run_start = Some(i);
                in_run = 0;
                threshold = None;
            }
            if order.is_null(row) {
                continue;
            }
            in_run += 1;
            if in_run <= self.n {
                keep.push(i);
                threshold = Some(i);
            } else if threshold.is_some_and(|t| order_rows.row(t as usize) == order_rows.row(row)) {
                keep.push(i);
            }
        }
        keep.sort_unstable();
        Ok(take_record_batch(batch, &UInt32Array::from(keep))?)
    }

    /// Without a key: a partial sort finds the n-th best value (the bar) and one comparison
    /// kernel keeps every row at or above it, ties included; no full sort, no row format.
    fn reduce_unkeyed(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let order = batch.column(self.order_index);
        let options = SortOptions {
            descending: true,
            nulls_first: false,
        };
        let best = sort_to_indices(order, Some(options), Some(self.n))?;
        let Some(&bar) = best
            .values()
            .iter()
            .rev()
            .find(|&&i| order.is_valid(i as usize))
        else {
            return Ok(batch.slice(0, 0));
        };
        let bar = Scalar::new(order.slice(bar as usize, 1));
        // A null order value compares to null, which the filter drops.
        let keep = gt_eq(order, &bar)?;
        Ok(filter_record_batch(batch, &keep)?)
    }
}

use datafusion::arrow::array::Array;

struct Candidates {
    batches: Vec<RecordBatch>,
    rows: usize,
    reduce_at: usize,
}

struct TopNOperator {
    assigner: Assigner,
    reducer: TopNReducer,
    inherited: bool,
    input: SchemaRef,
    output: SchemaRef,
    lateness: i64,
    watermark: EventTime,
    windows: BTreeMap<(EventTime, EventTime), Candidates>,
    late: LateSide,
    max_parallelism: usize,
    /// Input columns the exchange into this operator hashes (`key_by`, window bounds
    /// included), to store state by the same key groups.
    partition: Vec<usize>,
    /// Windows changed since the last snapshot.
    dirty: BTreeSet<(EventTime, EventTime)>,
    stored: StoredEntries,
}

impl TopNOperator {
    /// Adds rows to a window's candidates, reducing them to the top n when they pile up.
    fn add_candidates(&mut self, window: (EventTime, EventTime), top: RecordBatch) -> Result<()> {
        self.dirty.insert(window);
        let c = self.windows.entry(window).or_insert_with(|| Candidates {
            batches: Vec::new(),
            rows: 0,
            reduce_at: 1024,
        });
        c.rows += top.num_rows();
        c.batches.push(top);
        if c.rows > c.reduce_at {
            let reduced = self
                .reducer
                .reduce(&concat_batches(&self.input, &c.batches)?)?;
            c.rows = reduced.num_rows();
            c.reduce_at = (2 * c.rows).max(1024);
            c.batches = vec![reduced];
        }
        Ok(())
    }

    fn fire(&mut self, up_to: Option<EventTime>, out: &mut Output) -> Result<()> {
        while let Some(entry) = self.windows.first_entry() {
            let (end, start) = *entry.key();
            if up_to.is_some_and(|w| end - 1 + self.lateness > w) {
                break;
            }
            let c = entry.remove();
            let top = self
                .reducer
                .reduce(&concat_batches(&self.input, &c.batches)?)?;
            if self.inherited {
                out.emit(top);
            } else {
                let columns = top.columns().iter().cloned();
                out.emit(with_bounds(
                    &self.output,
                    start,
                    end,
                    top.num_rows(),
                    columns,
                )?);
            }
        }
        Ok(())
    }
}

impl Operator for TopNOperator {
    fn on_batch(&mut self, batch: RecordBatch, _: &mut Output) -> oxflow_runtime::Result<()> {
        let late = late_flags(
            &self.assigner.last_ends(&batch)?,
            self.lateness,
            self.watermark,
        );
        let batch = self.late.split(batch, &late)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        for rows in self.assigner.assign(&batch)? {
            if window_fired(rows.end, self.lateness, self.watermark) {
                continue;
            }
            let part = match &rows.indices {
                None => batch.clone(),
                Some(i) => take_record_batch(&batch, i)?,
            };
            let top = self.reducer.reduce(&part)?;
            self.add_candidates((rows.end, rows.start), top)?;
        }
        Ok(())
    }

    fn snapshot_state(&mut self, state: &mut StateSnapshot) -> oxflow_runtime::Result<()> {
        let windows = &self.windows;
        self.stored.retain(state, |item| {
            parse_window_key(item).is_ok_and(|w| windows.contains_key(&w))
        });
        for window in std::mem::take(&mut self.dirty) {
            let Some(c) = self.windows.get(&window) else {
                continue;
            };
            let rows = concat_batches(&self.input, &c.batches)?;
            let keys: Vec<ArrayRef> = self
                .partition
                .iter()
                .map(|&i| rows.column(i).clone())
                .collect();
            let parts = encode_by_key_group(&rows, &keys, self.max_parallelism)?;
            self.stored
                .replace(state, window_key(window.0, window.1), parts);
        }
        Ok(())
    }

    fn restore_state(&mut self, state: RestoredState) -> oxflow_runtime::Result<()> {
        for (kg, key, value) in state.keyed {
            let window = parse_window_key(&key)?;
            let batch = decode_entry(kg, &value)?;
            let batch = RecordBatch::try_new(self.input.clone(), batch.columns().to_vec())
                .map_err(|e| {
                    OperatorError::State(format!(
                        "top-n rows of window [{}, {}) in key group {kg} do not fit this job's input: {e}",
                        window.1, window.0
                    ))
                })?;
            self.add_candidates(window, batch)?;
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: EventTime,
        out: &mut Output,
    ) -> oxflow_runtime::Result<()> {
        self.watermark = watermark;
        Ok(self.fire(Some(watermark), out)?)
    }

    fn on_end_of_input(&mut self, out: &mut Output) -> oxflow_runtime::Result<()> {
        self.fire(None, out)?;
        Ok(self.late.finish()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field};

    #[test]
    fn unkeyed_keeps_the_top_n_values_with_ties_and_no_nulls() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(vec![
                Some(3),
                None,
                Some(9),
                Some(5),
                Some(9),
                Some(5),
                Some(1),
            ]))],
        )
        .unwrap();
        let reducer = |n| TopNReducer {
            key_indices: vec![],
            order_index: 0,
            n,
            keys: RowConverter::new(vec![]).unwrap(),
            order: RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap(),
        };
        let values = |b: RecordBatch| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            values(reducer(1).reduce(&batch).unwrap()),
            [Some(9), Some(9)]
        );
        assert_eq!(
            values(reducer(3).reduce(&batch).unwrap()),
            [Some(9), Some(5), Some(9), Some(5)]
        );
        assert_eq!(
            values(reducer(10).reduce(&batch).unwrap()).len(),
            6,
            "all but the null"
        );
    }

    #[test]
    fn keeps_ties_per_key() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 1, 1, 2, 2, 1])),
                Arc::new(Int64Array::from(vec![
                    Some(5),
                    Some(7),
                    Some(7),
                    Some(1),
                    None,
                    Some(3),
                ])),
            ],
        )
        .unwrap();
        let r = TopNReducer {
            key_indices: vec![0],
            order_index: 1,
            n: 1,
            keys: RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap(),
            order: RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap(),
        };
        let top = r.reduce(&batch).unwrap();
        let v = top.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(v.iter().collect::<Vec<_>>(), [Some(7), Some(7), Some(1)]);
    }
}
