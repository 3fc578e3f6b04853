//! The top rows of each key in each window, ties included (Nexmark's "highest bid" and
//! "hot items"; Flink's window Top-N).
//!
//! State is incremental: each batch is reduced to its own top rows before it is kept, and
//! the kept rows are reduced again when they outgrow the last reduction, so a window holds
//! little more than its answer whatever its input.

use crate::error::{column_index, OperatorError, Result};
use crate::keyed::{is_timer, FixedRows, FlatRows, KeyedCodec, TimedKeys, KEY};
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
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use oxflow_runtime::exchange::{hash_keys, key_group as key_group_of};
use oxflow_runtime::metrics::Counter;
use oxflow_runtime::state::{
    decode_batch, encode_batch, RestoredState, StateSnapshot, StateStore, StoreUse,
};
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
    spilled_bytes: Counter,
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
            spilled_bytes: Counter::default(),
        })
    }
}

impl OperatorFactory for WindowTopN {
    /// Without keys, it is the local phase of a top-N over the whole stream, ahead of its
    /// own exchange: its rows may be of any key group.
    fn state_in_own_key_groups(&self) -> bool {
        !self.settings.keys.is_empty() || self.settings.window == WindowSpec::Inherited
    }
    fn name(&self) -> String {
        "window-top-n".into()
    }
    fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }
    fn counters(&self) -> Vec<(String, Counter)> {
        vec![
            ("late_records".into(), self.late_records.clone()),
            ("spilled_bytes".into(), self.spilled_bytes.clone()),
        ]
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
            codec: TopCodec::plan(&self.input, self.order_index)?,
            by_key: None,
            spilled_bytes: self.spilled_bytes.clone(),
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
    /// How a key's rows become an entry with state in RocksDB; taken by `use_state_store`.
    codec: Option<TopCodec>,
    /// The state, with state in RocksDB (then `windows` stays empty).
    by_key: Option<ByKey>,
    /// Counts the bytes written to the store early, with state in RocksDB.
    spilled_bytes: Counter,
}

impl TopNOperator {
    /// Emits a window's top rows, with its bounds unless the rows carry their window.
    fn emit_window(
        &self,
        start: EventTime,
        end: EventTime,
        top: RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
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
        Ok(())
    }

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
            self.emit_window(start, end, top, out)?;
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
            match self.by_key {
                Some(_) => self.add_stored((rows.end, rows.start), &top)?,
                None => self.add_candidates((rows.end, rows.start), top)?,
            }
        }
        if let Some(by_key) = &mut self.by_key {
            by_key.evict_if_over()?;
        }
        Ok(())
    }

    fn use_state_store(&mut self, store: StateStore) -> StoreUse {
        let Some(codec) = self.codec.take() else {
            return StoreUse::Memory;
        };
        let (by_key, used) = ByKey::new(
            store,
            codec,
            self.max_parallelism,
            self.spilled_bytes.clone(),
        );
        self.by_key = Some(by_key);
        used
    }

    fn snapshot_state(&mut self, state: &mut StateSnapshot) -> oxflow_runtime::Result<()> {
        if let Some(by_key) = &mut self.by_key {
            return Ok(by_key.snapshot(state)?);
        }
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
            match (is_timer(&key), key.first(), &mut self.by_key) {
                (true, _, Some(by_key)) => {
                    by_key.restore_timer(kg, &key, &value)?;
                    continue;
                }
                // A timer of state kept in RocksDB: here the windows' rows are enough.
                (true, _, None) => continue,
                (false, Some(&KEY), None) => {
                    self.restore_key_into_memory(kg, &key, &value)?;
                    continue;
                }
                _ => {}
            }
            let window = parse_window_key(&key)?;
            let batch = decode_entry(kg, &value)?;
            let batch = RecordBatch::try_new(self.input.clone(), batch.columns().to_vec())
                .map_err(|e| {
                    OperatorError::State(format!(
                        "top-n rows of window [{}, {}) in key group {kg} do not fit this job's input: {e}",
                        window.1, window.0
                    ))
                })?;
            match self.by_key {
                // Rows of a window written with state in memory, into the store key by key.
                Some(_) => self.add_stored_in(window, &batch, Some(kg))?,
                None => self.add_candidates(window, batch)?,
            }
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: EventTime,
        out: &mut Output,
    ) -> oxflow_runtime::Result<()> {
        self.watermark = watermark;
        if self.by_key.is_some() {
            return Ok(self.fire_stored(watermark, out)?);
        }
        Ok(self.fire(Some(watermark), out)?)
    }

    fn on_end_of_input(&mut self, out: &mut Output) -> oxflow_runtime::Result<()> {
        match self.by_key {
            Some(_) => self.fire_stored(EventTime::MAX, out)?,
            None => self.fire(None, out)?,
        }
        Ok(self.late.finish()?)
    }
}

/// A key's top rows in one window with state in RocksDB, best first (ties kept): their
/// values of the order column and the rows, in Arrow's row format.
#[derive(Default)]
struct TopRows {
    order: FlatRows,
    rows: FlatRows,
}

impl TopRows {
    /// Puts a row in its place, keeping the `n` best and those tied with the n-th.
    fn insert(&mut self, order: &[u8], row: &[u8], n: usize) {
        let len = self.order.len();
        // The order values' row format sorts ascending: a larger encoding is a better row.
        if len >= n && order < self.order.get(n - 1) {
            return;
        }
        let at = (0..len).find(|&i| self.order.get(i) < order).unwrap_or(len);
        let mut kept = TopRows::default();
        for i in 0..=len {
            let (o, r) = match i.cmp(&at) {
                std::cmp::Ordering::Less => (self.order.get(i), self.rows.get(i)),
                std::cmp::Ordering::Equal => (order, row),
                std::cmp::Ordering::Greater => (self.order.get(i - 1), self.rows.get(i - 1)),
            };
            if kept.order.len() >= n && o != kept.order.get(n - 1) {
                break;
            }
            kept.order.push(o);
            kept.rows.push(r);
        }
        *self = kept;
    }
}

/// The magic of a key's top rows entry in the row format (the runtime's IPC entries start
/// with `OXS1`); then [`FixedRows::frame`]'s fingerprint and CRC-32 and the rows, back to
/// back. Rows of other types are an IPC batch each.
const TOP_ENTRY: &[u8; 4] = b"OXT1";

/// How a key's top rows become an entry and back.
struct TopCodec {
    /// The input's rows in the row format.
    rows: RowConverter,
    input: SchemaRef,
    /// When every input column is fixed-width.
    fixed: Option<FixedRows>,
    order_index: usize,
    /// The order column's row format.
    order: RowConverter,
}

impl TopCodec {
    /// The codec of rows of `input` ranked by column `order_index`; `None` when the row
    /// format cannot hold their types (the operator then keeps its state in memory).
    fn plan(input: &SchemaRef, order_index: usize) -> Result<Option<TopCodec>> {
        let types: Vec<DataType> = input
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let converter = |types: &[DataType]| {
            RowConverter::new(types.iter().cloned().map(SortField::new).collect()).ok()
        };
        let (Some(rows), Some(order)) = (
            converter(&types),
            converter(std::slice::from_ref(&types[order_index])),
        ) else {
            return Ok(None);
        };
        Ok(Some(TopCodec {
            rows,
            input: input.clone(),
            fixed: FixedRows::of(&types)?,
            order_index,
            order,
        }))
    }

    /// `rows` as a batch of the input's schema.
    fn batch(&self, rows: &FlatRows) -> Result<RecordBatch> {
        let parser = self.rows.parser();
        // Rows made by this converter, or read from fixed-width rows of the right length.
        let columns = self
            .rows
            .convert_rows(rows.iter().map(|r| parser.parse(r)))?;
        Ok(RecordBatch::try_new(self.input.clone(), columns)?)
    }
}

impl KeyedCodec<TopRows> for TopCodec {
    fn encode(&self, _: &[u8], value: &mut TopRows) -> Result<Vec<u8>> {
        match &self.fixed {
            Some(fixed) => Ok(fixed.frame(TOP_ENTRY, &value.rows.bytes)),
            None => Ok(encode_batch(&self.batch(&value.rows)?)?),
        }
    }

    fn decode(&self, kg: usize, _: &[u8], entry: &[u8]) -> Result<TopRows> {
        let bad = |what: String| {
            OperatorError::State(format!("top-n rows of a key in key group {kg}: {what}"))
        };
        let mut rows = FlatRows::default();
        match &self.fixed {
            Some(fixed) if entry.starts_with(TOP_ENTRY) => {
                let body = fixed.unframe(TOP_ENTRY, entry).map_err(bad)?;
                if body.len() % fixed.width != 0 {
                    return Err(bad("its rows are not whole".into()));
                }
                for row in body.chunks_exact(fixed.width) {
                    rows.push(row);
                }
            }
            _ => {
                let batch = decode_batch(entry, &format!("of top-n rows in key group {kg}"))?;
                let batch = RecordBatch::try_new(self.input.clone(), batch.columns().to_vec())
                    .map_err(|e| bad(format!("they do not fit this job's input: {e}")))?;
                for row in self.rows.convert_columns(batch.columns())?.iter() {
                    rows.push(row.as_ref());
                }
            }
        }
        // The order values, and so the rows' ranks, come from the rows themselves.
        let order = self.batch(&rows)?.column(self.order_index).clone();
        let mut value = TopRows::default();
        for o in self.order.convert_columns(&[order])?.iter() {
            value.order.push(o.as_ref());
        }
        value.rows = rows;
        Ok(value)
    }

    fn size(&self, value: &TopRows) -> usize {
        std::mem::size_of::<TopRows>() + value.order.heap_bytes() + value.rows.heap_bytes()
    }
}

/// Top rows by window and key with state in RocksDB, each (window, key) with a timer at its
/// window's firing.
type ByKey = TimedKeys<TopRows, TopCodec>;

impl TopNOperator {
    /// Adds a window's rows, already reduced to each key's top, with state in RocksDB.
    fn add_stored(&mut self, window: (EventTime, EventTime), top: &RecordBatch) -> Result<()> {
        self.add_stored_in(window, top, None)
    }

    /// As [`TopNOperator::add_stored`]; rows restored from a key group's entry are in
    /// `key_group` (else each row's is its partition key's).
    fn add_stored_in(
        &mut self,
        (end, start): (EventTime, EventTime),
        top: &RecordBatch,
        key_group: Option<usize>,
    ) -> Result<()> {
        let by_key = self.by_key.as_mut().expect("state is in the store");
        let column = |i: &usize| top.column(*i).clone();
        let keys: Vec<ArrayRef> = self.reducer.key_indices.iter().map(column).collect();
        let partition: Vec<ArrayRef> = self.partition.iter().map(column).collect();
        let key_rows = self.reducer.keys.convert_columns(&keys)?;
        let order = top.column(self.reducer.order_index);
        let order_rows = by_key
            .codec
            .order
            .convert_columns(std::slice::from_ref(order))?;
        let rows = by_key.codec.rows.convert_columns(top.columns())?;
        let mut hashes = Vec::new();
        if !partition.is_empty() {
            hash_keys(&partition, &mut hashes)?;
        }
        let fires = end - 1 + self.lateness;
        let n = self.reducer.n;
        let mut item = Vec::new();
        for i in 0..top.num_rows() {
            if order.is_null(i) {
                continue;
            }
            item.clear();
            item.push(KEY);
            item.extend_from_slice(&end.to_be_bytes());
            item.extend_from_slice(&start.to_be_bytes());
            if !keys.is_empty() {
                item.extend_from_slice(key_rows.row(i).as_ref());
            }
            let kg = key_group.unwrap_or_else(|| {
                hashes
                    .get(i)
                    .map_or(0, |&h| key_group_of(h, self.max_parallelism))
            });
            let new = by_key.state.update(
                kg,
                &item,
                &by_key.codec,
                || Ok(TopRows::default()),
                |v| {
                    let new = v.rows.is_empty();
                    v.insert(order_rows.row(i).as_ref(), rows.row(i).as_ref(), n);
                    Ok(new)
                },
            )?;
            if new {
                by_key.arm(kg as u16, &item[1..], fires)?;
            }
        }
        Ok(())
    }

    /// Emits the windows that fire at `up_to` with state in RocksDB, window by window.
    fn fire_stored(&mut self, up_to: EventTime, out: &mut Output) -> Result<()> {
        let by_key = self.by_key.as_mut().expect("state is in the store");
        let mut windows: Vec<((EventTime, EventTime), FlatRows)> = Vec::new();
        while let Some((_, key, kg)) = by_key.pop_due(up_to)? {
            let item = [&[KEY][..], &key].concat();
            let window = parse_window_key(&key)?;
            let Some(top) = by_key.state.take(kg as usize, &item, &by_key.codec)? else {
                continue;
            };
            match windows.last_mut() {
                Some((w, rows)) if *w == window => rows.append(top.rows),
                _ => windows.push((window, top.rows)),
            }
        }
        by_key.evict_if_over()?;
        let fired = windows
            .into_iter()
            .map(|(window, rows)| Ok((window, by_key.codec.batch(&rows)?)))
            .collect::<Result<Vec<_>>>()?;
        for ((end, start), top) in fired {
            self.emit_window(start, end, top, out)?;
            out.check_cancelled()?;
        }
        Ok(())
    }

    /// Takes back a key's entry of state kept in RocksDB, with state in memory.
    fn restore_key_into_memory(&mut self, kg: usize, item: &[u8], value: &[u8]) -> Result<()> {
        let Some(codec) = &self.codec else {
            return Err(OperatorError::State(format!(
                "key group {kg} holds top-n rows of state kept in RocksDB, which this operator cannot read"
            )));
        };
        let window = parse_window_key(&item[1..])?;
        let rows = codec.batch(&codec.decode(kg, item, value)?.rows)?;
        self.add_candidates(window, rows)
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

    /// Top-n of (k, t, v) rows (v nullable) in tumbling windows of 50 ms by k, arriving in
    /// order in chunks of `chunk`, the watermark 10 behind the latest time, restored at the
    /// chunks `restores` names with state kept as `budgets` says in turn (`None`: in
    /// memory). Returns (window start, k, t, v) rows, sorted.
    fn run_top_n(
        rows: &[(i64, i64, Option<i64>)],
        n: usize,
        chunk: usize,
        restores: &[usize],
        budgets: &[Option<usize>],
    ) -> Vec<(i64, i64, i64, Option<i64>)> {
        use crate::window::LateRecords;
        use std::time::Duration;
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("t", DataType::Int64, false),
            Field::new("v", DataType::Int64, true),
        ]));
        let settings = WindowSettings {
            keys: vec!["k".into()],
            window: WindowSpec::tumbling(Duration::from_millis(50)),
            time_column: Some("t".into()),
            allowed_lateness: Duration::ZERO,
            late: LateRecords::Drop,
        };
        let factory = WindowTopN::try_new(settings, "v", n, schema.clone()).unwrap();
        let info = SubtaskInfo {
            index: 0,
            parallelism: 1,
            max_parallelism: 8,
        };
        let mut max_time = i64::MIN;
        let chunks = rows.chunks(chunk).map(|part| {
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(part.iter().map(|r| r.0))),
                    Arc::new(Int64Array::from_iter_values(part.iter().map(|r| r.1))),
                    Arc::new(Int64Array::from_iter(part.iter().map(|r| r.2))),
                ],
            )
            .unwrap();
            max_time = part.iter().map(|r| r.1).fold(max_time, i64::max);
            (batch, max_time)
        });
        let emitted = crate::state::Restarts::run(&factory, info, chunks, restores, budgets, 10);
        if budgets.iter().all(|b| *b == Some(1)) && rows.iter().any(|r| r.2.is_some()) {
            // Nothing fits a one-byte budget: every key went through RocksDB.
            assert!(factory.spilled_bytes.get() > 0, "nothing was spilled");
        }
        let mut got = Vec::new();
        for b in &emitted {
            let int = |i: usize| {
                let c = datafusion::arrow::compute::cast(b.column(i), &DataType::Int64).unwrap();
                c.as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .iter()
                    .collect::<Vec<_>>()
            };
            let (starts, ks, ts, vs) = (int(0), int(2), int(3), int(4));
            for r in 0..b.num_rows() {
                got.push((starts[r].unwrap(), ks[r].unwrap(), ts[r].unwrap(), vs[r]));
            }
        }
        got.sort();
        got
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Restored at random points, keeping state in memory or in RocksDB under a budget
        /// (of one byte: every key is written out after each batch) that changes at each
        /// restore: each window's top rows per key, ties included, are those of a naive
        /// sort of all its rows.
        #[test]
        fn top_n_in_any_storage_equals_a_naive_top_n(
            raw in proptest::collection::vec((0i64..4, 0i64..8, proptest::option::weighted(0.9, 0i64..6)), 1..80),
            n in 1usize..4,
            chunk in 1usize..9,
            restores in proptest::collection::vec(0usize..20, 0..3),
            storages in proptest::collection::vec(0u8..3, 1..4),
        ) {
            // Times rise by up to 7 ms a row: in order, so nothing is late.
            let mut t = 0;
            let rows: Vec<(i64, i64, Option<i64>)> = raw
                .iter()
                .map(|&(k, step, v)| {
                    t += step;
                    (k, t, v)
                })
                .collect();
            let mut expected = Vec::new();
            let mut groups: BTreeMap<(i64, i64), Vec<(i64, i64)>> = BTreeMap::new();
            for &(k, t, v) in &rows {
                if let Some(v) = v {
                    groups.entry((t - t % 50, k)).or_default().push((v, t));
                }
            }
            for ((start, k), mut g) in groups {
                g.sort_by_key(|r| std::cmp::Reverse(r.0));
                let bar = g[(n - 1).min(g.len() - 1)].0;
                for (v, t) in g.into_iter().filter(|(v, _)| *v >= bar) {
                    expected.push((start, k, t, Some(v)));
                }
            }
            expected.sort();
            let budgets: Vec<Option<usize>> = storages
                .iter()
                .map(|s| [None, Some(1), Some(1 << 20)][*s as usize])
                .collect();
            proptest::prop_assert_eq!(run_top_n(&rows, n, chunk, &restores, &budgets), expected);
        }
    }
}
