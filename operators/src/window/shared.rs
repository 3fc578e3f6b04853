//! Many small windows in a few tables of groups.
//!
//! An inherited window (one per auction in Nexmark q4, one per joined window in q8) holds a
//! handful of groups. With a table of groups per window, each batch costs a `take` of every
//! column, a hash table lookup pass and an accumulator update per window it touches, and each
//! fired window a table built and torn down for one row. Here the window's bounds are the
//! first two key columns of a table shared by all windows whose ends fall in one second, as
//! Flink keeps window state in one keyed state with the window as its namespace: a batch
//! updates a table or a few in one pass each, and a watermark hands over the tables wholly
//! behind it as they are and cuts only the one it falls in (with one table for all windows,
//! every watermark rebuilt every open window's groups: a fifth of q4's CPU).
//!
//! State entries stay one per window, as the per-window table writes them, so a checkpoint of
//! either restores into the other (state in RocksDB keeps a table per window).

use crate::aggregate::{take_inputs, AggregateInputs, Aggregates, Groups, GroupsState};
use crate::error::{OperatorError, Result};
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt32Array,
};
use datafusion::arrow::compute::kernels::boolean::not;
use datafusion::arrow::compute::{cast, concat_batches, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use oxflow_runtime::EventTime;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// How wide, in event time, the windows' ends are that share one table: a watermark
/// finishes the tables wholly behind it as they are and cuts only the one it falls in, so a
/// watermark costs the groups of at most one table, not of every open window. A batch's rows
/// spread over the tables their ends fall in (a q4 batch touches about four).
pub(super) const PART_MS: i64 = 1_000;

/// What a part takes in: rows, or partial states of groups.
#[derive(Clone, Copy)]
enum Add<'a> {
    Rows(&'a AggregateInputs),
    States(&'a [Vec<ArrayRef>]),
}

/// `indices` of each of `columns`.
fn take_all(columns: &[ArrayRef], indices: &UInt32Array) -> Result<Vec<ArrayRef>> {
    Ok(columns
        .iter()
        .map(|c| take(c.as_ref(), indices, None))
        .collect::<std::result::Result<_, _>>()?)
}

/// The groups of the windows whose ends fall in one stretch of [`PART_MS`].
struct Part {
    groups: Groups,
    /// Per group (by id): updated since the last snapshot.
    touched: Vec<bool>,
}

/// The groups of every window of one subtask, keyed by window end, window start, then key,
/// in tables by stretch of window end.
pub(super) struct SharedWindows {
    parts: BTreeMap<i64, Part>,
    /// The width of a part's stretch of ends, in ms ([`PART_MS`]; tests vary it).
    width: i64,
    /// The key columns of the groups: the bounds as Int64, then the aggregate's keys.
    schema: SchemaRef,
    aggregates: Aggregates,
    /// The windows with groups, in order of end.
    windows: BTreeSet<(EventTime, EventTime)>,
}

/// The key columns of a table of many windows' groups: the window's end and start as Int64,
/// then the aggregate's keys.
fn bounded_keys(key_schema: &SchemaRef) -> SchemaRef {
    let mut fields = vec![
        Field::new("window_end", DataType::Int64, false),
        Field::new("window_start", DataType::Int64, false),
    ];
    fields.extend(key_schema.fields().iter().map(|f| f.as_ref().clone()));
    Arc::new(Schema::new(fields))
}

/// Pre-aggregates one batch's rows by window and key into partial states, laid out as
/// `output` (`[start, end, keys.., states..]`): what a combining phase ships in place of the
/// rows (Flink's mini-batch local aggregation), holding nothing between batches.
#[allow(clippy::too_many_arguments)]
pub(super) fn combine(
    key_schema: &SchemaRef,
    aggregates: &Aggregates,
    ends: &[i64],
    starts: &[i64],
    keys: &[ArrayRef],
    inputs: &AggregateInputs,
    rows: usize,
    output: &SchemaRef,
) -> Result<RecordBatch> {
    let mut groups = Groups::try_new(&bounded_keys(key_schema), aggregates)?;
    groups.update(&with_bounds(ends, starts, keys), inputs, rows)?;
    let state = groups.into_state()?;
    let mut columns = bounds_first(&state.keys)?;
    columns.extend(state.states.into_iter().flatten());
    Ok(RecordBatch::try_new(output.clone(), columns)?)
}

/// A table's key columns for rows of windows `[starts[i], ends[i])` with keys `keys`: the
/// bounds as Int64, then the keys ([`bounded_keys`]).
fn with_bounds(ends: &[i64], starts: &[i64], keys: &[ArrayRef]) -> Vec<ArrayRef> {
    let bound = |values: &[i64]| -> ArrayRef { Arc::new(Int64Array::from(values.to_vec())) };
    let mut all = vec![bound(ends), bound(starts)];
    all.extend(keys.iter().cloned());
    all
}

/// A table's key columns laid out for output: `window_start`, `window_end` as timestamps,
/// then the aggregate's keys.
fn bounds_first(keys: &[ArrayRef]) -> Result<Vec<ArrayRef>> {
    let timestamp = DataType::Timestamp(TimeUnit::Millisecond, None);
    let mut columns = vec![cast(&keys[1], &timestamp)?, cast(&keys[0], &timestamp)?];
    columns.extend(keys[2..].iter().cloned());
    Ok(columns)
}

/// The window ends and starts of a table's key columns.
fn bounds_of(keys: &[ArrayRef]) -> Result<(&Int64Array, &Int64Array)> {
    let column = |i: usize| {
        keys.get(i)
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
        Self::with_width(key_schema, aggregates, PART_MS)
    }

    fn with_width(key_schema: &SchemaRef, aggregates: &Aggregates, width: i64) -> Result<Self> {
        Ok(SharedWindows {
            parts: BTreeMap::new(),
            width: width.max(1),
            schema: bounded_keys(key_schema),
            aggregates: aggregates.clone(),
            windows: BTreeSet::new(),
        })
    }

    fn part_of(&self, end: EventTime) -> i64 {
        end.div_euclid(self.width)
    }

    /// Part `part` of the parts, made empty if new, with the windows to note its new ones in.
    fn part(&mut self, part: i64) -> Result<(&mut Part, &mut BTreeSet<(EventTime, EventTime)>)> {
        let target = match self.parts.entry(part) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Part {
                groups: Groups::try_new(&self.schema, &self.aggregates)?,
                touched: Vec::new(),
            }),
        };
        Ok((target, &mut self.windows))
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
        self.add(ends, starts, keys, rows, Add::Rows(inputs))
    }

    /// Merges partial states of groups (`partial`'s keys without the bounds), the i-th of
    /// window `[starts[i], ends[i])`: what a combining phase ships.
    pub(super) fn merge_partials(
        &mut self,
        ends: &[i64],
        starts: &[i64],
        partial: GroupsState,
    ) -> Result<()> {
        let n = partial.groups;
        self.add(ends, starts, &partial.keys, n, Add::States(&partial.states))
    }

    /// Adds rows or partial states, each to the part of its window's end.
    fn add(
        &mut self,
        ends: &[i64],
        starts: &[i64],
        keys: &[ArrayRef],
        rows: usize,
        add: Add,
    ) -> Result<()> {
        for (part, picked) in self.rows_by_part(ends) {
            let Some(indices) = picked else {
                return self.add_to_part(part, ends, starts, keys, rows, add);
            };
            let pick = |values: &[i64]| -> Vec<i64> {
                indices
                    .values()
                    .iter()
                    .map(|&i| values[i as usize])
                    .collect()
            };
            let (inputs, states);
            let picked = match add {
                Add::Rows(all) => {
                    inputs = take_inputs(all, &indices)?;
                    Add::Rows(&inputs)
                }
                Add::States(all) => {
                    states = all
                        .iter()
                        .map(|s| take_all(s, &indices))
                        .collect::<Result<Vec<_>>>()?;
                    Add::States(&states)
                }
            };
            self.add_to_part(
                part,
                &pick(ends),
                &pick(starts),
                &take_all(keys, &indices)?,
                indices.len(),
                picked,
            )?;
        }
        Ok(())
    }

    /// The parts the rows with window ends `ends` fall in, each with its rows (`None`: all
    /// rows, the usual case).
    fn rows_by_part(&self, ends: &[i64]) -> Vec<(i64, Option<UInt32Array>)> {
        let Some(&first) = ends.first() else {
            return Vec::new();
        };
        let part = self.part_of(first);
        if ends.iter().all(|&e| self.part_of(e) == part) {
            return vec![(part, None)];
        }
        let mut by_part: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (i, &end) in ends.iter().enumerate() {
            by_part.entry(self.part_of(end)).or_default().push(i as u32);
        }
        by_part
            .into_iter()
            .map(|(part, rows)| (part, Some(UInt32Array::from(rows))))
            .collect()
    }

    fn add_to_part(
        &mut self,
        part: i64,
        ends: &[i64],
        starts: &[i64],
        keys: &[ArrayRef],
        rows: usize,
        add: Add,
    ) -> Result<()> {
        let all = with_bounds(ends, starts, keys);
        let (target, windows) = self.part(part)?;
        let before = target.groups.len();
        match add {
            Add::Rows(inputs) => target.groups.update(&all, inputs, rows)?,
            Add::States(states) => target.groups.merge(&GroupsState {
                keys: all,
                states: states.to_vec(),
                groups: rows,
            })?,
        }
        Self::note(target, windows, ends, starts, before);
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
        let part = self.part_of(end);
        self.add_to_part(
            part,
            &vec![end; n],
            &vec![start; n],
            &partial.keys,
            n,
            Add::States(&partial.states),
        )
    }

    /// Marks the groups of the part's last update touched, and lists the windows of new ones
    /// (only a new group can bring a new window, so known groups cost no window lookup).
    fn note(
        part: &mut Part,
        windows: &mut BTreeSet<(EventTime, EventTime)>,
        ends: &[i64],
        starts: &[i64],
        before: usize,
    ) {
        part.touched.resize(part.groups.len(), false);
        for (i, &g) in part.groups.group_indices().iter().enumerate() {
            if g >= before && !part.touched[g] {
                windows.insert((ends[i], starts[i]));
            }
            part.touched[g] = true;
        }
    }

    /// Takes out the windows whose end `due` accepts and returns their results, in order of
    /// window, laid out as `output` (`[window_start, window_end, keys.., aggregates..]`).
    /// `due` holds for every end up to some time and for none after it.
    pub(super) fn fire(
        &mut self,
        due: impl Fn(EventTime) -> bool,
        output: &SchemaRef,
    ) -> Result<Option<RecordBatch>> {
        let fired = self.windows.iter().take_while(|(end, _)| due(*end)).count();
        if fired == 0 {
            return Ok(None);
        }
        let kept = match self.windows.iter().nth(fired) {
            Some(&first_kept) => self.windows.split_off(&first_kept),
            None => BTreeSet::new(),
        };
        let done = std::mem::replace(&mut self.windows, kept);
        let last_part = done.last().map(|&(end, _)| self.part_of(end));
        let mut results = Vec::new();
        while let Some(entry) = self.parts.first_entry() {
            if last_part.is_none_or(|last| *entry.key() > last) {
                break;
            }
            let (part, Part { groups, touched }) = entry.remove_entry();
            let first_kept = self.windows.first().map(|&(end, _)| self.part_of(end));
            if first_kept != Some(part) {
                // Every window of the part is due: the table is finished as it is.
                results.push(self.results(groups, output)?);
                continue;
            }
            // The watermark falls in this part: its table is cut in two, its groups in
            // order (ids are assigned in order of arrival, so the kept groups keep their
            // relative ids and touched flags).
            let state = groups.into_state()?;
            let (ends, _) = bounds_of(&state.keys)?;
            let due_mask: BooleanArray = ends.values().iter().map(|&e| Some(due(e))).collect();
            let kept_mask = not(&due_mask)?;
            let mut rest = Part {
                groups: Groups::try_new(&self.schema, &self.aggregates)?,
                touched: touched
                    .iter()
                    .zip(kept_mask.values().iter())
                    .filter_map(|(&t, keep)| keep.then_some(t))
                    .collect(),
            };
            rest.groups.merge(&state.filter(&kept_mask)?)?;
            let mut window = Groups::try_new(&self.schema, &self.aggregates)?;
            window.merge(&state.filter(&due_mask)?)?;
            results.push(self.results(window, output)?);
            self.parts.insert(part, rest);
            break;
        }
        Ok(Some(concat_batches(output, &results)?))
    }

    /// The final results of `groups`, sorted by window.
    fn results(&self, groups: Groups, output: &SchemaRef) -> Result<RecordBatch> {
        let (keys, aggregates) = groups.finish()?;
        let mut columns = bounds_first(&keys)?;
        columns.extend(aggregates);
        let (ends, starts) = bounds_of(&keys)?;
        let window = |g: usize| (ends.value(g), starts.value(g));
        if (1..ends.len()).any(|g| window(g - 1) > window(g)) {
            // In order of end, then start, as windows fire one by one; a window's groups
            // stay in order of arrival (a stable sort).
            let mut order: Vec<u32> = (0..ends.len() as u32).collect();
            order.sort_by_key(|&g| window(g as usize));
            let order = UInt32Array::from(order);
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
        let mut changed_windows = BTreeMap::new();
        for part in self.parts.values_mut() {
            if !part.touched.contains(&true) {
                continue;
            }
            let state = part.groups.state(&self.schema, &self.aggregates)?;
            let (ends, starts) = bounds_of(&state.keys)?;
            let window = |g: usize| (ends.value(g), starts.value(g));
            let changed: BTreeSet<_> = (0..state.groups)
                .filter(|&g| part.touched.get(g).copied().unwrap_or(true))
                .map(window)
                .collect();
            let mut rows: BTreeMap<(EventTime, EventTime), Vec<u32>> = BTreeMap::new();
            for g in 0..state.groups {
                let w = window(g);
                if changed.contains(&w) {
                    rows.entry(w).or_default().push(g as u32);
                }
            }
            part.touched.fill(false);
            for (w, groups) in rows {
                let mut partial = state.take(&UInt32Array::from(groups))?;
                // The bounds are in the entry's key, not its columns.
                partial.keys.drain(..2);
                changed_windows.insert(w, partial);
            }
        }
        Ok(changed_windows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::compute::concat_batches;
    use datafusion::functions_aggregate::expr_fn::{max, sum};
    use datafusion::prelude::col;
    use proptest::prelude::*;

    fn input_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("key", DataType::Int64, false),
            Field::new("value", DataType::Int64, false),
        ]))
    }

    /// A window's bounds `(end, start)` and its entry's columns.
    type WindowEntry = ((i64, i64), Vec<ArrayRef>);

    /// Feeds `batches` of `(end, length, key, value)` rows with watermarks after each, taking
    /// snapshots and restoring from them (a table rebuilt from its changes) at `restores`, and
    /// returns every fired result and every window's entry at the end.
    fn run(
        width: i64,
        batches: &[Vec<(i64, i64, i64, i64)>],
        restores: &[usize],
    ) -> (Vec<RecordBatch>, Vec<WindowEntry>) {
        let input = input_schema();
        let aggregates = Aggregates::try_new(
            &[
                sum(col("value")).alias("total"),
                max(col("value")).alias("hi"),
            ],
            &input,
        )
        .unwrap();
        let key_schema = Arc::new(Schema::new(vec![Field::new("key", DataType::Int64, false)]));
        let mut fields = vec![
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new(
                "window_end",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("key", DataType::Int64, false),
        ];
        fields.extend(aggregates.fields().iter().map(|f| f.as_ref().clone()));
        let output = Arc::new(Schema::new(fields));
        let new = || SharedWindows::with_width(&key_schema, &aggregates, width).unwrap();
        let mut windows = new();
        // Every window's latest entry, as a snapshot store keeps them.
        let mut store: BTreeMap<(i64, i64), Vec<ArrayRef>> = BTreeMap::new();
        let mut fired = Vec::new();
        let mut watermark = i64::MIN;
        for (b, rows) in batches.iter().enumerate() {
            let rows: Vec<_> = rows.iter().filter(|r| r.0 - 1 > watermark).collect();
            if !rows.is_empty() {
                let ends: Vec<i64> = rows.iter().map(|r| r.0).collect();
                let starts: Vec<i64> = rows.iter().map(|r| r.0 - r.1).collect();
                let batch = RecordBatch::try_new(
                    input.clone(),
                    vec![
                        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
                    ],
                )
                .unwrap();
                let keys = vec![batch.column(0).clone()];
                let inputs = aggregates.evaluate_inputs(&batch).unwrap();
                windows
                    .update(&ends, &starts, &keys, &inputs, rows.len())
                    .unwrap();
            }
            watermark = watermark.max(b as i64 * 3);
            let w = watermark;
            if let Some(out) = windows.fire(|end| end - 1 <= w, &output).unwrap() {
                fired.push(out);
            }
            let live = windows.windows().clone();
            store.retain(|w, _| live.contains(w));
            for (w, partial) in windows.take_changed().unwrap() {
                store.insert(w, partial.into_columns());
            }
            if restores.contains(&b) {
                windows = new();
                for (&(end, start), columns) in &store {
                    let n = columns[0].len();
                    let state = GroupsState {
                        keys: vec![columns[0].clone()],
                        states: vec![vec![columns[1].clone()], vec![columns[2].clone()]],
                        groups: n,
                    };
                    windows.merge_window(end, start, state).unwrap();
                }
                // What was restored is in the store already.
                windows.take_changed().unwrap();
            }
        }
        if let Some(out) = windows.fire(|_| true, &output).unwrap() {
            fired.push(out);
        }
        (fired, store.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Tables by stretch of window end fire and snapshot exactly as one table does,
        /// whatever the stretch, with restores in between.
        #[test]
        fn any_part_width_fires_as_one_table(
            batches in proptest::collection::vec(
                proptest::collection::vec((0i64..60, 1i64..20, 0i64..3, -50i64..50), 0..12),
                1..14,
            ),
            width in prop_oneof![Just(1i64), 2i64..9, Just(25)],
            restores in proptest::collection::vec(0usize..14, 0..3),
        ) {
            let (fired, store) = run(width, &batches, &restores);
            let (one_fired, one_store) = run(i64::MAX, &batches, &restores);
            let all = |b: &[RecordBatch]| {
                let schema = b.first().map(|b| b.schema());
                schema.map(|s| concat_batches(&s, b).unwrap())
            };
            prop_assert_eq!(fired.len(), one_fired.len());
            for (a, b) in fired.iter().zip(&one_fired) {
                prop_assert_eq!(a, b);
            }
            prop_assert_eq!(all(&fired), all(&one_fired));
            prop_assert_eq!(store, one_store);
        }
    }
}
