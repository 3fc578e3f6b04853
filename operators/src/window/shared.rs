//! Many small windows in one table of groups.
//!
//! An inherited window (one per auction in Nexmark q4, one per joined window in q8) holds a
//! handful of groups. With a table of groups per window, each batch costs a `take` of every
//! column, a hash table lookup pass and an accumulator update per window it touches, and each
//! fired window a table built and torn down for one row. Here the window's bounds are the
//! first two key columns of one table for all windows, as Flink keeps window state in one
//! keyed state with the window as its namespace: a batch updates the table in one pass, and a
//! watermark takes out the groups of the windows it closes, as one batch.
//!
//! State entries stay one per window, as the per-window table writes them, so a checkpoint of
//! either restores into the other (state in RocksDB keeps a table per window).

use crate::aggregate::{AggregateInputs, Aggregates, Groups, GroupsState};
use crate::error::{OperatorError, Result};
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt32Array,
};
use datafusion::arrow::compute::kernels::boolean::not;
use datafusion::arrow::compute::{cast, lexsort_to_indices, take, SortColumn};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use oxflow_runtime::EventTime;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The groups of every window of one subtask, keyed by window end, window start, then key.
pub(super) struct SharedWindows {
    groups: Groups,
    /// The key columns of `groups`: the bounds as Int64, then the aggregate's keys.
    schema: SchemaRef,
    aggregates: Aggregates,
    /// The windows with groups, in order of end.
    windows: BTreeSet<(EventTime, EventTime)>,
    /// Per group (by id): updated since the last snapshot.
    touched: Vec<bool>,
}

/// A window's bounds as a key column.
fn bound_column(values: &[i64]) -> ArrayRef {
    Arc::new(Int64Array::from(values.to_vec()))
}

fn bounds_of(state: &GroupsState) -> Result<(&Int64Array, &Int64Array)> {
    let column = |i: usize| {
        state
            .keys
            .get(i)
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .ok_or_else(|| {
                OperatorError::State("the shared window table lost its bound columns".into())
            })
    };
    Ok((column(0)?, column(1)?))
}

impl SharedWindows {
    /// An empty table for groups keyed by `key_schema` within each window.
    pub(super) fn try_new(key_schema: &SchemaRef, aggregates: &Aggregates) -> Result<Self> {
        let mut fields = vec![
            Field::new("window_end", DataType::Int64, false),
            Field::new("window_start", DataType::Int64, false),
        ];
        fields.extend(key_schema.fields().iter().map(|f| f.as_ref().clone()));
        let schema = Arc::new(Schema::new(fields));
        Ok(SharedWindows {
            groups: Groups::try_new(&schema, aggregates)?,
            schema,
            aggregates: aggregates.clone(),
            windows: BTreeSet::new(),
            touched: Vec::new(),
        })
    }

    /// Adds `rows` rows, the i-th in window `[starts[i], ends[i])`.
    pub(super) fn update(
        &mut self,
        ends: &[i64],
        starts: &[i64],
        keys: &[ArrayRef],
        inputs: &AggregateInputs,
        rows: usize,
    ) -> Result<()> {
        let before = self.groups.len();
        let mut all = vec![bound_column(ends), bound_column(starts)];
        all.extend(keys.iter().cloned());
        self.groups.update(&all, inputs, rows)?;
        self.note(ends, starts, before);
        Ok(())
    }

    /// Merges the partial state of window `[start, end)` (its keys without the bounds).
    pub(super) fn merge_window(
        &mut self,
        end: EventTime,
        start: EventTime,
        partial: GroupsState,
    ) -> Result<()> {
        let n = partial.groups;
        let (ends, starts) = (vec![end; n], vec![start; n]);
        let mut keys = vec![bound_column(&ends), bound_column(&starts)];
        keys.extend(partial.keys);
        let before = self.groups.len();
        self.groups.merge(&GroupsState {
            keys,
            states: partial.states,
            groups: n,
        })?;
        self.note(&ends, &starts, before);
        Ok(())
    }

    /// Marks the groups of the last update touched, and lists the windows of new ones (only
    /// a new group can bring a new window, so known groups cost no window lookup).
    fn note(&mut self, ends: &[i64], starts: &[i64], before: usize) {
        self.touched.resize(self.groups.len(), false);
        for (i, &g) in self.groups.group_indices().iter().enumerate() {
            if g >= before && !self.touched[g] {
                self.windows.insert((ends[i], starts[i]));
            }
            self.touched[g] = true;
        }
    }

    /// Takes out the windows whose end `due` accepts and returns their results, in order of
    /// window, laid out as `output` (`[window_start, window_end, keys.., aggregates..]`).
    pub(super) fn fire(
        &mut self,
        due: impl Fn(EventTime) -> bool,
        output: &SchemaRef,
    ) -> Result<Option<RecordBatch>> {
        let fired = self.windows.iter().take_while(|(end, _)| due(*end)).count();
        if fired == 0 {
            return Ok(None);
        }
        let fresh = Groups::try_new(&self.schema, &self.aggregates)?;
        let groups = std::mem::replace(&mut self.groups, fresh);
        let Some(&kept_from) = self.windows.iter().nth(fired) else {
            // Every window is due: the table is finished as it is.
            self.windows.clear();
            self.touched.clear();
            return self.results(groups, fired, output).map(Some);
        };
        self.windows = self.windows.split_off(&kept_from);
        // Some windows stay: the table is cut in two, its groups in order (ids are assigned in
        // order of arrival, so the kept groups keep their relative ids and touched flags).
        let state = groups.into_state()?;
        let (ends, _) = bounds_of(&state)?;
        let due_mask: BooleanArray = ends.values().iter().map(|&e| Some(due(e))).collect();
        let kept_mask = not(&due_mask)?;
        self.touched = self
            .touched
            .iter()
            .zip(kept_mask.values().iter())
            .filter_map(|(&t, keep)| keep.then_some(t))
            .collect();
        self.groups.merge(&state.filter(&kept_mask)?)?;
        let mut window = Groups::try_new(&self.schema, &self.aggregates)?;
        window.merge(&state.filter(&due_mask)?)?;
        self.results(window, fired, output).map(Some)
    }

    /// The final results of `groups`, of `windows` windows, sorted by window.
    fn results(&self, groups: Groups, windows: usize, output: &SchemaRef) -> Result<RecordBatch> {
        let (keys, aggregates) = groups.finish()?;
        let timestamp = DataType::Timestamp(TimeUnit::Millisecond, None);
        let mut columns = vec![cast(&keys[1], &timestamp)?, cast(&keys[0], &timestamp)?];
        columns.extend(keys[2..].iter().cloned());
        columns.extend(aggregates);
        if windows > 1 {
            // In order of end, then start, as windows fire one by one.
            let order = lexsort_to_indices(
                &[
                    SortColumn {
                        values: keys[0].clone(),
                        options: None,
                    },
                    SortColumn {
                        values: keys[1].clone(),
                        options: None,
                    },
                ],
                None,
            )?;
            columns = columns
                .iter()
                .map(|c| take(c.as_ref(), &order, None))
                .collect::<std::result::Result<_, _>>()?;
        }
        Ok(RecordBatch::try_new(output.clone(), columns)?)
    }

    /// The windows with groups, as `(end, start)`.
    pub(super) fn windows(&self) -> &BTreeSet<(EventTime, EventTime)> {
        &self.windows
    }

    /// The partial state of every window with a group updated since the last call, keyed by
    /// `(end, start)`, its keys without the bounds: what a snapshot writes.
    pub(super) fn take_changed(&mut self) -> Result<BTreeMap<(EventTime, EventTime), GroupsState>> {
        if !self.touched.contains(&true) {
            return Ok(BTreeMap::new());
        }
        let state = self.groups.state(&self.schema, &self.aggregates)?;
        let (ends, starts) = bounds_of(&state)?;
        let window = |g: usize| (ends.value(g), starts.value(g));
        let changed: BTreeSet<_> = (0..state.groups)
            .filter(|&g| self.touched.get(g).copied().unwrap_or(true))
            .map(window)
            .collect();
        let mut rows: BTreeMap<(EventTime, EventTime), Vec<u32>> = BTreeMap::new();
        for g in 0..state.groups {
            let w = window(g);
            if changed.contains(&w) {
                rows.entry(w).or_default().push(g as u32);
            }
        }
        self.touched.fill(false);
        rows.into_iter()
            .map(|(w, groups)| {
                let mut part = state.take(&UInt32Array::from(groups))?;
                // The bounds are in the entry's key, not its columns.
                part.keys.drain(..2);
                Ok((w, part))
            })
            .collect()
    }
}
