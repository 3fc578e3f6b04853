//! Event-time windows: their definitions, how rows are assigned to them, late records, and
//! the window aggregate over tumbling, hopping and inherited windows (sessions live in
//! [`crate::session`]).
//!
//! Timing follows Flink: a window `[start, end)` fires when the watermark reaches
//! `end - 1 + allowed_lateness`, once, with its final result (Kafka Streams' "suppress until
//! window closes"). A record whose every window has fired is late: it is counted and goes to
//! the late side output, or is dropped.

mod shared;

use crate::aggregate::{take_inputs, Aggregates, Groups, GroupsState};
use crate::error::{column_index, OperatorError, Result};
use crate::state::{
    decode_entry, encode_by_key_group, encode_i64, max_i64, parse_run_key, run_key, state_batch,
    window_key, RunId, StoredEntries,
};
use datafusion::arrow::array::{
    Array, ArrayRef, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::{concat_batches, take, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::logical_expr::Expr;
use oxflow_runtime::metrics::Counter;
use oxflow_runtime::sink::{SinkRef, SinkWriter};
use oxflow_runtime::state::{encode_batch, RestoredState, StateSnapshot, StateStore, StoreUse};
use oxflow_runtime::watermark::event_times;
use oxflow_runtime::{EventTime, Operator, OperatorFactory, Output, SubtaskInfo};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use shared::SharedWindows;

/// The name of the window start column every window operator emits.
pub const WINDOW_START: &str = "window_start";
/// The name of the window end column every window operator emits.
pub const WINDOW_END: &str = "window_end";

/// Which windows a record belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowSpec {
    /// Fixed, non-overlapping windows `[k*size, (k+1)*size)`.
    Tumbling {
        /// Window length.
        size: Duration,
    },
    /// Fixed windows of `size` starting every `slide`: `[k*slide, k*slide + size)`.
    Hopping {
        /// Window length.
        size: Duration,
        /// Distance between window starts.
        slide: Duration,
    },
    /// Per key, records closer than `gap` to each other form one session
    /// `[first, last + gap)`.
    Session {
        /// Inactivity that closes a session.
        gap: Duration,
    },
    /// The windows of an upstream window operator: rows carry `window_start` and
    /// `window_end`, and are grouped by them (cascading windows, as in Flink SQL).
    Inherited,
}

impl WindowSpec {
    /// Tumbling windows of `size`.
    pub fn tumbling(size: Duration) -> Self {
        WindowSpec::Tumbling { size }
    }
    /// Hopping windows of `size` every `slide`.
    pub fn hopping(size: Duration, slide: Duration) -> Self {
        WindowSpec::Hopping { size, slide }
    }
    /// Session windows closing after `gap` of inactivity.
    pub fn session(gap: Duration) -> Self {
        WindowSpec::Session { gap }
    }

    /// Checks sizes: whole, positive milliseconds.
    ///
    /// ```
    /// use oxflow_operators::WindowSpec;
    /// use std::time::Duration;
    /// assert!(WindowSpec::hopping(Duration::from_secs(10), Duration::from_secs(2)).validate().is_ok());
    /// let err = WindowSpec::session(Duration::ZERO).validate().unwrap_err();
    /// assert!(err.to_string().contains("session gap must be a positive"));
    /// ```
    pub fn validate(&self) -> Result<()> {
        let check = |what: &str, d: &Duration| {
            if d.as_millis() == 0 || !d.as_nanos().is_multiple_of(1_000_000) {
                Err(OperatorError::InvalidWindow(format!(
                    "{what} must be a positive whole number of milliseconds, got {d:?}"
                )))
            } else {
                oxflow_runtime::message::span_millis(what, *d)
                    .map(|_| ())
                    .map_err(|e| OperatorError::InvalidWindow(e.to_string()))
            }
        };
        match self {
            WindowSpec::Tumbling { size } => check("tumbling window size", size),
            WindowSpec::Hopping { size, slide } => {
                check("hopping window size", size)?;
                check("hopping window slide", slide)?;
                if slide > size {
                    return Err(OperatorError::InvalidWindow(format!(
                        "hopping window slide {slide:?} is longer than its size {size:?}: records between windows would be lost"
                    )));
                }
                Ok(())
            }
            WindowSpec::Session { gap } => check("session gap", gap),
            WindowSpec::Inherited => Ok(()),
        }
    }
}

/// What happens to records later than the allowed lateness.
#[derive(Clone, Default)]
pub enum LateRecords {
    /// Counted and dropped.
    #[default]
    Drop,
    /// Counted and written to this sink (a side output), with the input's columns.
    SideOutput(SinkRef),
}

/// Counts late records and sends them to the side output.
pub(crate) struct LateSide {
    counter: Counter,
    writer: Option<(SinkRef, Box<dyn SinkWriter>)>,
}

impl LateSide {
    pub(crate) fn try_new(
        late: &LateRecords,
        counter: Counter,
        subtask: SubtaskInfo,
        schema: SchemaRef,
    ) -> oxflow_runtime::Result<Self> {
        let writer = match late {
            LateRecords::Drop => None,
            LateRecords::SideOutput(sink) => {
                Some((sink.clone(), sink.create_writer(subtask, schema)?))
            }
        };
        Ok(LateSide { counter, writer })
    }

    /// Splits `batch` by `late` (row flags): sends the late rows away, returns the others.
    pub(crate) fn split(&mut self, batch: RecordBatch, late: &[bool]) -> Result<RecordBatch> {
        let n_late = late.iter().filter(|&&l| l).count();
        if n_late == 0 {
            return Ok(batch);
        }
        self.counter.add(n_late as u64);
        let (late_rows, on_time): (Vec<u32>, Vec<u32>) =
            (0..batch.num_rows() as u32).partition(|&i| late[i as usize]);
        if let Some((_, writer)) = &mut self.writer {
            writer.write(&take_record_batch(&batch, &UInt32Array::from(late_rows))?)?;
        }
        Ok(take_record_batch(&batch, &UInt32Array::from(on_time))?)
    }

    /// End of input: the side output is committed at once (it is not part of checkpoints:
    /// late records are at least once).
    pub(crate) fn finish(&mut self) -> Result<()> {
        if let Some((sink, writer)) = &mut self.writer {
            if let Some(pending) = writer.finish()? {
                sink.commit(0, &[pending])?;
            }
        }
        Ok(())
    }
}

/// The rows of a batch that fall into one window.
pub(crate) struct WindowRows {
    pub start: EventTime,
    pub end: EventTime,
    /// `None`: every row of the batch.
    pub indices: Option<UInt32Array>,
}

impl WindowRows {
    pub(crate) fn take(&self, array: &ArrayRef) -> Result<ArrayRef> {
        match &self.indices {
            None => Ok(array.clone()),
            Some(i) => Ok(take(array.as_ref(), i, None)?),
        }
    }
}

/// Assigns rows to fixed windows (tumbling, hopping) or to the windows they carry.
#[derive(Debug, Clone)]
pub(crate) enum Assigner {
    Fixed {
        time_column: String,
        size: i64,
        slide: i64,
    },
    Inherited {
        start: usize,
        end: usize,
    },
}

fn window_column(schema: &Schema, name: &str) -> Result<usize> {
    let i = column_index(schema, name, "inherited window")?;
    match schema.field(i).data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Int64 => Ok(i),
        other => Err(OperatorError::InvalidWindow(format!(
            "column `{name}` has type {other}; an inherited window needs Timestamp(Millisecond)"
        ))),
    }
}

impl Assigner {
    pub(crate) fn try_new(
        spec: &WindowSpec,
        time_column: Option<&str>,
        input: &Schema,
    ) -> Result<Self> {
        spec.validate()?;
        let time = || {
            let t = time_column.ok_or_else(|| {
                OperatorError::InvalidWindow(
                    "an event-time window needs the stream's event-time column; set it on the source".into(),
                )
            })?;
            column_index(input, t, "window")?;
            Ok::<_, OperatorError>(t.to_string())
        };
        Ok(match spec {
            WindowSpec::Tumbling { size } => Assigner::Fixed {
                time_column: time()?,
                size: size.as_millis() as i64,
                slide: size.as_millis() as i64,
            },
            WindowSpec::Hopping { size, slide } => Assigner::Fixed {
                time_column: time()?,
                size: size.as_millis() as i64,
                slide: slide.as_millis() as i64,
            },
            WindowSpec::Inherited => Assigner::Inherited {
                start: window_column(input, WINDOW_START)?,
                end: window_column(input, WINDOW_END)?,
            },
            WindowSpec::Session { .. } => {
                return Err(OperatorError::InvalidWindow(
                    "session windows are assigned per key by the session operator".into(),
                ))
            }
        })
    }

    /// For each row, the end of the last window it belongs to: past `end - 1 + lateness`, the
    /// row is late.
    pub(crate) fn last_ends(&self, batch: &RecordBatch) -> Result<Vec<EventTime>> {
        Ok(match self {
            Assigner::Fixed {
                time_column,
                size,
                slide,
            } => event_times(batch, time_column)?
                .iter()
                .map(|&t| t - t.rem_euclid(*slide) + size)
                .collect(),
            Assigner::Inherited { end, .. } => column_values(batch, *end)?.to_vec(),
        })
    }

    /// Groups the rows of `batch` by window.
    pub(crate) fn assign(&self, batch: &RecordBatch) -> Result<Vec<WindowRows>> {
        let mut by_window: BTreeMap<(EventTime, EventTime), Vec<u32>> = BTreeMap::new();
        let n = batch.num_rows();
        match self {
            Assigner::Fixed {
                time_column,
                size,
                slide,
            } => {
                let times = event_times(batch, time_column)?;
                let (Some(&lo), Some(&hi)) = (times.iter().min(), times.iter().max()) else {
                    return Ok(Vec::new());
                };
                let windows_per_row = (size + slide - 1) / slide;
                for j in 0..windows_per_row {
                    let start_of = |t: i64| t - t.rem_euclid(*slide) - j * slide;
                    // The common case: the whole batch inside one window, no copy. The start
                    // is monotonic in t, so the batch's extremes decide.
                    let s0 = start_of(lo);
                    if start_of(hi) == s0 && s0 + size > hi {
                        by_window.insert((s0 + size, s0), Vec::new());
                        continue;
                    }
                    for (i, &t) in times.iter().enumerate() {
                        let s = start_of(t);
                        if s + size > t {
                            by_window.entry((s + size, s)).or_default().push(i as u32);
                        }
                    }
                }
            }
            Assigner::Inherited { start, end } => {
                let starts = column_values(batch, *start)?;
                let ends = column_values(batch, *end)?;
                for i in 0..n {
                    by_window
                        .entry((ends[i], starts[i]))
                        .or_default()
                        .push(i as u32);
                }
            }
        }
        Ok(by_window
            .into_iter()
            .map(|((end, start), rows)| WindowRows {
                start,
                end,
                // An empty list marks the fast path above: every row.
                indices: (!rows.is_empty() && rows.len() != n).then(|| UInt32Array::from(rows)),
            })
            .collect())
    }
}

/// The non-null i64 values of column `i` (Int64 or Timestamp(ms)).
pub(crate) fn column_values(batch: &RecordBatch, i: usize) -> Result<&[i64]> {
    let name = batch.schema().field(i).name().clone();
    Ok(event_times(batch, &name)?)
}

/// The field of a window bound column.
pub(crate) fn window_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, None),
        false,
    )
}

/// A column repeating `value` `n` times, as a window bound.
fn window_bound(value: EventTime, n: usize) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(vec![value; n]))
}

/// A batch of `schema`: `n` rows of `[start, end)` bounds, then `columns`.
pub(crate) fn with_bounds(
    schema: &SchemaRef,
    start: EventTime,
    end: EventTime,
    n: usize,
    columns: impl IntoIterator<Item = ArrayRef>,
) -> Result<RecordBatch> {
    let mut all = vec![window_bound(start, n), window_bound(end, n)];
    all.extend(columns);
    Ok(RecordBatch::try_new(schema.clone(), all)?)
}

/// Resolves key columns, with errors naming what exists.
pub(crate) fn key_fields(
    input: &Schema,
    keys: &[String],
    context: &str,
) -> Result<(Vec<usize>, SchemaRef)> {
    let indices = keys
        .iter()
        .map(|k| column_index(input, k, context))
        .collect::<Result<Vec<_>>>()?;
    let schema = Arc::new(Schema::new(
        indices
            .iter()
            .map(|&i| input.field(i).clone())
            .collect::<Vec<_>>(),
    ));
    Ok((indices, schema))
}

/// One column the exchange into a window operator hashes: a key column of the operator's
/// state, or a bound of the (inherited) window.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PartitionColumn {
    Key(usize),
    WindowStart,
    WindowEnd,
}

/// The columns `key_by` hashes, in its order, as found in a window operator's state.
pub(crate) fn partition_columns(settings: &WindowSettings) -> Vec<PartitionColumn> {
    let inherited = settings.window == WindowSpec::Inherited;
    let mut next_key = 0;
    settings
        .keys
        .iter()
        .map(|k| match k.as_str() {
            WINDOW_START if inherited => PartitionColumn::WindowStart,
            WINDOW_END if inherited => PartitionColumn::WindowEnd,
            _ => {
                next_key += 1;
                PartitionColumn::Key(next_key - 1)
            }
        })
        .collect()
}

/// The hashed columns of `rows` state rows of window `[start, end)` whose key columns are
/// `keys`.
pub(crate) fn partition_arrays(
    partition: &[PartitionColumn],
    keys: &[ArrayRef],
    start: EventTime,
    end: EventTime,
    rows: usize,
) -> Vec<ArrayRef> {
    partition
        .iter()
        .map(|p| match p {
            PartitionColumn::Key(i) => keys[*i].clone(),
            PartitionColumn::WindowStart => window_bound(start, rows),
            PartitionColumn::WindowEnd => window_bound(end, rows),
        })
        .collect()
}

/// Settings shared by every window operator.
#[derive(Clone)]
pub struct WindowSettings {
    /// Key columns (empty: one global key).
    pub keys: Vec<String>,
    /// The window kind.
    pub window: WindowSpec,
    /// The event-time column (not needed for inherited windows).
    pub time_column: Option<String>,
    /// How long after a window's end records are still accepted.
    pub allowed_lateness: Duration,
    /// Where later records go.
    pub late: LateRecords,
}

impl WindowSettings {
    /// Keys for an inherited window exclude the window bounds (they are always emitted).
    pub(crate) fn effective_keys(&self) -> Vec<String> {
        self.keys
            .iter()
            .filter(|k| {
                !(self.window == WindowSpec::Inherited && (*k == WINDOW_START || *k == WINDOW_END))
            })
            .cloned()
            .collect()
    }
}

/// Aggregates keyed records per window: `window_start, window_end, keys.., aggregates..`.
#[derive(Clone)]
pub struct WindowAggregate {
    settings: WindowSettings,
    input: SchemaRef,
    key_indices: Vec<usize>,
    key_schema: SchemaRef,
    aggregates: Aggregates,
    output: SchemaRef,
    late_records: Counter,
    /// Bytes written to RocksDB as runs (with state in RocksDB).
    spilled_bytes: Counter,
    phase: Phase,
}

/// Which part of a window aggregate an operator computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Records in, final results out.
    Single,
    /// Records in, partial aggregates per pane out (before the exchange).
    Local,
    /// Partial aggregates in, final results out (after the exchange).
    Global,
}

/// Columns of a partial aggregate: the pane, then the keys, then each aggregate's state.
pub const PANE_START: &str = "pane_start";
/// The end of the pane a partial aggregate covers.
pub const PANE_END: &str = "pane_end";

impl WindowAggregate {
    /// Plans the aggregate over `input`.
    pub fn try_new(
        settings: WindowSettings,
        aggregates: &[Expr],
        input: SchemaRef,
    ) -> Result<Self> {
        settings.window.validate()?;
        if let WindowSpec::Session { .. } = settings.window {
            // Checked here so that the error names the column, not the session operator.
            settings
                .time_column
                .as_deref()
                .map(|t| column_index(&input, t, "window"))
                .transpose()?;
        }
        let (key_indices, key_schema) = key_fields(&input, &settings.effective_keys(), "key_by")?;
        let aggregates = Aggregates::try_new(aggregates, &input)?;
        let mut fields = vec![window_field(WINDOW_START), window_field(WINDOW_END)];
        fields.extend(key_schema.fields().iter().map(|f| f.as_ref().clone()));
        fields.extend(aggregates.fields().iter().map(|f| f.as_ref().clone()));
        let output = Arc::new(Schema::new(fields));
        let op = WindowAggregate {
            settings,
            input,
            key_indices,
            key_schema,
            aggregates,
            output,
            late_records: Counter::default(),
            spilled_bytes: Counter::default(),
            phase: Phase::Single,
        };
        // Build one operator now so that a bad window fails when the pipeline is built.
        op.assigner_or_session()?;
        Ok(op)
    }

    /// Splits the aggregate in two (Flink's local/global aggregation): a local phase, chained
    /// before the exchange, that pre-aggregates each pane of its subtask's records and ships
    /// partial states when the watermark completes the pane; and a global phase merging them.
    /// A hot key then costs the exchange and the keyed subtask one row per pane and subtask.
    /// Inherited windows (one per auction in q4, per joined window in q8) are not cut in
    /// panes: their local phase combines each batch's rows by window and key and ships the
    /// partials at once, holding nothing (Flink's mini-batch local aggregation), so a join's
    /// output reaches the exchange as a row per window, key and batch, not a row per match.
    /// `None` for windows that are neither (sessions, uneven hops) or without a key.
    pub fn two_phase(&self) -> Result<Option<(WindowAggregate, WindowAggregate)>> {
        let paned = Layout::of(&self.settings.window).is_some();
        let inherited = self.settings.window == WindowSpec::Inherited;
        if !(paned || inherited) || self.key_indices.is_empty() || self.phase != Phase::Single {
            return Ok(None);
        }
        let mut fields = vec![window_field(PANE_START), window_field(PANE_END)];
        fields.extend(self.key_schema.fields().iter().map(|f| f.as_ref().clone()));
        for (i, state) in self.aggregates.state_fields()?.into_iter().enumerate() {
            for f in state {
                fields.push(Field::new(
                    format!("{i}_{}", f.name()),
                    f.data_type().clone(),
                    true,
                ));
            }
        }
        let partial = Arc::new(Schema::new(fields));
        let local = WindowAggregate {
            output: partial.clone(),
            phase: Phase::Local,
            ..self.clone()
        };
        let key_count = self.key_indices.len();
        let settings = WindowSettings {
            late: LateRecords::Drop,
            ..self.settings.clone()
        };
        let global = WindowAggregate {
            settings,
            input: partial,
            key_indices: (2..2 + key_count).collect(),
            late_records: Counter::default(),
            spilled_bytes: Counter::default(),
            phase: Phase::Global,
            ..self.clone()
        };
        Ok(Some((local, global)))
    }

    fn assigner_or_session(&self) -> Result<Option<Assigner>> {
        if self.phase == Phase::Global {
            // Partials carry their pane in their first two columns.
            return Ok(Some(Assigner::Inherited { start: 0, end: 1 }));
        }
        match &self.settings.window {
            WindowSpec::Session { .. } => {
                if self.settings.time_column.is_none() {
                    return Err(OperatorError::InvalidWindow(
                        "a session window needs the stream's event-time column; set it on the source".into(),
                    ));
                }
                Ok(None)
            }
            spec => Ok(Some(Assigner::try_new(
                spec,
                self.settings.time_column.as_deref(),
                &self.input,
            )?)),
        }
    }
}

impl OperatorFactory for WindowAggregate {
    /// A local phase pre-aggregates ahead of its own exchange: its partials may be of any
    /// key group.
    fn state_in_own_key_groups(&self) -> bool {
        self.phase != Phase::Local && !self.settings.keys.is_empty()
    }
    fn name(&self) -> String {
        match self.phase {
            Phase::Single => "window-aggregate",
            Phase::Local => "window-aggregate-local",
            Phase::Global => "window-aggregate-global",
        }
        .into()
    }
    fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }
    fn counters(&self) -> Vec<(String, Counter)> {
        let spilled = ("spilled_bytes".to_string(), self.spilled_bytes.clone());
        match self.phase {
            // Late records are caught where records are: in the local phase.
            Phase::Global => vec![spilled],
            Phase::Local => vec![("late_records".into(), self.late_records.clone())],
            Phase::Single => vec![("late_records".into(), self.late_records.clone()), spilled],
        }
    }
    fn create(&self, subtask: SubtaskInfo) -> oxflow_runtime::Result<Box<dyn Operator>> {
        let late = LateSide::try_new(
            &self.settings.late,
            self.late_records.clone(),
            subtask,
            self.input.clone(),
        )?;
        let lateness = self.settings.allowed_lateness.as_millis() as i64;
        Ok(match (self.assigner_or_session()?, &self.settings.window) {
            (Some(windows_of), spec) => {
                let layout = Layout::of(spec).unwrap_or(Layout::PerWindow);
                // Inherited windows are many and small (one per auction, per joined window):
                // one table holds them all, unless state goes to RocksDB (`use_state_store`).
                // (The global phase of panes reads them as inherited windows, but merges
                // panes into windows: only inherited windows' own global phase shares.)
                let inherited = *spec == WindowSpec::Inherited;
                let shared = match (&windows_of, self.phase) {
                    (Assigner::Inherited { .. }, Phase::Single | Phase::Global) if inherited => {
                        Some(SharedWindows::try_new(&self.key_schema, &self.aggregates)?)
                    }
                    _ => None,
                };
                let assigner = match (layout, self.phase) {
                    // Partials carry their pane; they were checked for lateness upstream.
                    (_, Phase::Global) | (Layout::PerWindow, _) => windows_of.clone(),
                    (Layout::Panes { slide, .. }, _) => {
                        let panes = WindowSpec::tumbling(Duration::from_millis(slide as u64));
                        let time = self.settings.time_column.as_deref();
                        Assigner::try_new(&panes, time, &self.input)?
                    }
                };
                Box::new(FixedWindows {
                    assigner,
                    windows_of,
                    layout,
                    key_indices: self.key_indices.clone(),
                    key_schema: self.key_schema.clone(),
                    aggregates: self.aggregates.clone(),
                    output: self.output.clone(),
                    lateness,
                    watermark: EventTime::MIN,
                    groups: BTreeMap::new(),
                    fired_up_to: EventTime::MIN,
                    late,
                    phase: self.phase,
                    state_widths: self
                        .aggregates
                        .state_fields()?
                        .iter()
                        .map(|f| f.len())
                        .collect(),
                    max_parallelism: subtask.max_parallelism,
                    partition: partition_columns(&self.settings),
                    dirty: BTreeSet::new(),
                    stored: StoredEntries::default(),
                    spill: None,
                    spilled_bytes: self.spilled_bytes.clone(),
                    local_budget: None,
                    buffered: 0,
                    shared,
                })
            }
            (None, WindowSpec::Session { gap }) => Box::new(crate::session::SessionWindows::new(
                crate::session::SessionConfig {
                    gap: gap.as_millis() as i64,
                    lateness,
                    time_column: self
                        .settings
                        .time_column
                        .clone()
                        .expect("checked when built"),
                    key_indices: self.key_indices.clone(),
                    key_schema: self.key_schema.clone(),
                    aggregates: self.aggregates.clone(),
                    output: self.output.clone(),
                    max_parallelism: subtask.max_parallelism,
                    input: self.input.clone(),
                    spilled_bytes: self.spilled_bytes.clone(),
                },
                late,
            )?),
            (None, _) => unreachable!("only session windows have no assigner"),
        })
    }
}

/// How a fixed-window aggregate keeps its groups.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// One set of groups per window (tumbling, inherited, and hopping windows whose size is
    /// not a multiple of their slide).
    PerWindow,
    /// Hopping windows cut into panes of one slide: a record updates one pane instead of
    /// size/slide windows, and a window is the merge of its panes' partial states when it
    /// fires (Flink SQL calls this slicing).
    Panes { size: i64, slide: i64 },
}

impl Layout {
    /// How windows of `spec` are cut into panes (a tumbling window is its own pane); `None`
    /// when they are not (inherited windows, hops whose size is not a multiple of the slide).
    fn of(spec: &WindowSpec) -> Option<Layout> {
        match spec {
            WindowSpec::Tumbling { .. } => Some(Layout::PerWindow),
            WindowSpec::Hopping { size, slide } if size.as_millis() % slide.as_millis() == 0 => {
                let (size, slide) = (size.as_millis() as i64, slide.as_millis() as i64);
                Some(if size == slide {
                    Layout::PerWindow
                } else {
                    Layout::Panes { size, slide }
                })
            }
            _ => None,
        }
    }
}

/// Window aggregate over tumbling, hopping or inherited windows, fired in order of end.
struct FixedWindows {
    /// Assigns rows to the units of state: windows, or panes.
    assigner: Assigner,
    /// Assigns rows to the real windows, for lateness.
    windows_of: Assigner,
    layout: Layout,
    key_indices: Vec<usize>,
    key_schema: SchemaRef,
    aggregates: Aggregates,
    output: SchemaRef,
    lateness: i64,
    watermark: EventTime,
    /// Groups per window or pane, by (end, start).
    groups: BTreeMap<(EventTime, EventTime), Groups>,
    /// With panes: every window ending at or before this has fired.
    fired_up_to: EventTime,
    late: LateSide,
    phase: Phase,
    /// How many state columns each aggregate's partial has.
    state_widths: Vec<usize>,
    max_parallelism: usize,
    /// What the exchange into this operator hashes, to store state by the same key groups.
    partition: Vec<PartitionColumn>,
    /// Windows or panes changed since the last snapshot.
    dirty: BTreeSet<(EventTime, EventTime)>,
    stored: StoredEntries,
    /// With state in RocksDB: what is in the store.
    spill: Option<Spill>,
    spilled_bytes: Counter,
    /// With state in RocksDB, for the local phase: its memory budget.
    local_budget: Option<usize>,
    /// About how many bytes the groups in memory hold.
    buffered: usize,
    /// Inherited windows with state in memory: every window's groups in one table (see
    /// [`shared`]); `groups` is then unused.
    shared: Option<SharedWindows>,
}

/// A window aggregate's state in RocksDB ([`oxflow_runtime::state::StateStorage::RocksDb`]).
///
/// Memory holds a write buffer: the groups updated since the last spill. When they outgrow
/// the budget, each window's (or pane's) groups are written to the store as a *run*: their
/// keys and partial accumulator states, one entry per key group, and memory is freed. A window that fires merges its runs key group by key group, so only one key
/// group's groups are in memory at a time, however large the window.
///
/// At a barrier, a window whose changed groups in memory are large is spilled: the checkpoint
/// writes the keys updated since the previous spill, incremental by key. A small one is
/// copied as it is, as with state in memory (a *copy*, replaced at each barrier and dropped
/// once the window is spilled or fires), so that a small state costs what it does in memory.
/// A restored copy is a run like any other.
///
/// Runs of a long window pile up, one per spill; like an LSM tree, [`MERGE_RUNS`] runs of one
/// level are merged into one of the next level, a key group at a time between batches, so a
/// window's state grows with the logarithm of its spills (and at most with its keys), and no
/// merge stalls the task for long.
struct Spill {
    store: StateStore,
    spilled_bytes: Counter,
    /// The entry keys of every run, by window or pane and key group.
    runs: BTreeMap<(EventTime, EventTime), RunKeys>,
    /// Windows' key groups with [`MERGE_RUNS`] runs of one level.
    crowded: BTreeSet<((EventTime, EventTime), usize)>,
    next_run: u32,
    /// The sequence number of this instance's copies (above every restored run's).
    copy_seq: u32,
    /// Runs of fired windows, deleted with the next write (not while a checkpoint is cut).
    pending: StateSnapshot,
}

/// The entry keys of a window's runs, by key group.
type RunKeys = BTreeMap<usize, Vec<Vec<u8>>>;

/// Rows emitted at once when a window is merged key group by key group.
const EMIT_ROWS: usize = 8192;

/// A window's spill of at least this many bytes goes to RocksDB as a file of its own.
const INGEST_BYTES: usize = 4 << 20;

/// Runs of one level of a window's key group merged into one of the next level.
const MERGE_RUNS: usize = 4;

/// The lowest level of which `keys` (runs of one window and key group) hold [`MERGE_RUNS`].
fn crowded_level(keys: &[Vec<u8>]) -> Option<u8> {
    let mut per_level: BTreeMap<u8, usize> = BTreeMap::new();
    for key in keys {
        if let Ok(level) = merge_level(key) {
            *per_level.entry(level).or_default() += 1;
        }
    }
    per_level
        .into_iter()
        .find(|&(_, n)| n >= MERGE_RUNS)
        .map(|(level, _)| level)
}

/// The level of a run (of an entry key) for merging: a copy restored from a checkpoint is a
/// run like a spilled one.
fn merge_level(key: &[u8]) -> Result<u8> {
    let (_, _, run) = parse_run_key(key)?;
    Ok(if run.level == COPY_LEVEL {
        0
    } else {
        run.level
    })
}

/// The level of the entries that copy a window's groups at a barrier (see [`Spill`]).
const COPY_LEVEL: u8 = u8::MAX;

impl Spill {
    /// Records run `key` of window `w` in key group `kg`.
    fn add_run(&mut self, w: (EventTime, EventTime), kg: usize, key: Vec<u8>) {
        let keys = self.runs.entry(w).or_default().entry(kg).or_default();
        keys.push(key);
        if crowded_level(keys).is_some() {
            self.crowded.insert((w, kg));
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.next_run = self.next_run.wrapping_add(1);
        self.next_run
    }
}

impl FixedWindows {
    fn emit(
        &self,
        start: EventTime,
        end: EventTime,
        groups: Groups,
        out: &mut Output,
    ) -> Result<()> {
        out.emit(self.finished(start, end, groups)?);
        Ok(())
    }

    /// The results of `groups` in window `[start, end)`.
    fn finished(&self, start: EventTime, end: EventTime, groups: Groups) -> Result<RecordBatch> {
        let (keys, aggregates) = groups.finish()?;
        let n = aggregates.first().map(|a| a.len()).unwrap_or(0);
        with_bounds(
            &self.output,
            start,
            end,
            n,
            keys.into_iter().chain(aggregates),
        )
    }

    /// The groups of the window or pane `[start, end)`, created empty if new.
    fn groups_of(&mut self, end: EventTime, start: EventTime) -> Result<&mut Groups> {
        self.dirty.insert((end, start));
        Ok(match self.groups.entry((end, start)) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(Groups::try_new(&self.key_schema, &self.aggregates)?)
            }
        })
    }

    /// Local phase: ships the partial state of every pane the watermark has completed (rows
    /// for it arriving later, within the lateness, make a new partial).
    fn ship_partials(&mut self, up_to: Option<EventTime>, out: &mut Output) -> Result<()> {
        while let Some(entry) = self.groups.first_entry() {
            let (end, start) = *entry.key();
            if up_to.is_some_and(|w| end - 1 > w) {
                break;
            }
            let groups = entry.remove();
            self.buffered = self.buffered.saturating_sub(groups.size());
            let state = groups.into_state()?;
            let rows = state.groups;
            out.emit(with_bounds(
                &self.output,
                start,
                end,
                rows,
                state.into_columns(),
            )?);
        }
        Ok(())
    }

    /// Global phase: merges partial states into their panes.
    fn merge_partials(&mut self, batch: &RecordBatch) -> Result<()> {
        for rows in self.assigner.assign(batch)? {
            let columns = (2..batch.num_columns())
                .map(|i| rows.take(batch.column(i)))
                .collect::<Result<Vec<_>>>()?;
            let state = self.groups_state(columns);
            self.update_groups(rows.end, rows.start, |g| g.merge(&state))?;
        }
        Ok(())
    }

    /// Keys then each aggregate's state columns, as partials and state entries lay them out.
    fn groups_state(&self, mut columns: Vec<ArrayRef>) -> GroupsState {
        let groups = columns.first().map_or(0, |c| c.len());
        let mut rest = columns.split_off(self.key_indices.len());
        let mut states = Vec::with_capacity(self.state_widths.len());
        for &w in &self.state_widths {
            let tail = rest.split_off(w.min(rest.len()));
            states.push(std::mem::replace(&mut rest, tail));
        }
        GroupsState {
            keys: columns,
            states,
            groups,
        }
    }

    /// Windows and panes with state, in memory or in the store, in order of end.
    fn state_keys(&self) -> BTreeSet<(EventTime, EventTime)> {
        let mut keys: BTreeSet<_> = self.groups.keys().copied().collect();
        if let Some(spill) = &self.spill {
            keys.extend(spill.runs.keys().copied());
        }
        keys
    }

    fn fire(&mut self, up_to: Option<EventTime>, out: &mut Output) -> Result<()> {
        if self.phase == Phase::Local {
            return self.ship_partials(up_to, out);
        }
        let lateness = self.lateness;
        let due = |end: EventTime| up_to.is_none_or(|w| end - 1 + lateness <= w);
        if let Some(shared) = &mut self.shared {
            if let Some(results) = shared.fire(due, &self.output)? {
                for offset in (0..results.num_rows()).step_by(EMIT_ROWS) {
                    let rows = EMIT_ROWS.min(results.num_rows() - offset);
                    out.emit(results.slice(offset, rows));
                }
            }
            return Ok(());
        }
        let spilled = self.spill.as_ref().is_some_and(|s| !s.runs.is_empty());
        match self.layout {
            Layout::PerWindow => {
                // In order of end: only the due ones are looked at.
                let mut windows: BTreeSet<_> = self
                    .groups
                    .keys()
                    .take_while(|&&(end, _)| due(end))
                    .copied()
                    .collect();
                if let Some(spill) = &self.spill {
                    windows.extend(spill.runs.keys().take_while(|&&(end, _)| due(end)));
                }
                if spilled {
                    // A window partly in the store is merged there, whole.
                    let in_store: BTreeSet<_> = self.spill.as_ref().map_or(BTreeSet::new(), |s| {
                        windows
                            .iter()
                            .filter(|w| s.runs.contains_key(w))
                            .copied()
                            .collect()
                    });
                    self.spill_where(|w| in_store.contains(w))?;
                }
                for &(end, start) in &windows {
                    out.check_cancelled()?;
                    self.fire_window(start, end, (end, start)..=(end, start), out)?;
                }
                self.forget(windows.into_iter().collect())?;
            }
            Layout::Panes { size, slide } => {
                // The windows holding pane [start, end) end from `end` to `start + size`.
                let ends: BTreeSet<EventTime> = self
                    .state_keys()
                    .into_iter()
                    .flat_map(|(end, start)| (end..=start + size).step_by(slide as usize))
                    .filter(|&end| end > self.fired_up_to && due(end))
                    .collect();
                if let (true, Some(&last)) = (spilled, ends.last()) {
                    self.spill_where(|&(pane_end, _)| pane_end <= last)?;
                }
                for end in ends {
                    out.check_cancelled()?;
                    let panes = (end - size + slide, end - size)..=(end, end - slide);
                    self.fire_window(end - size, end, panes, out)?;
                    self.fired_up_to = end;
                }
                // Every window due by now counts as fired, even one that held nothing yet: a
                // late record must not bring it back (its later windows still get it).
                if let Some(w) = up_to {
                    let due_end = (w.saturating_add(1) - lateness).div_euclid(slide) * slide;
                    self.fired_up_to = self.fired_up_to.max(due_end);
                }
                // A pane whose last window has fired is done.
                let fired = self.fired_up_to;
                self.retire(|&(_, start)| start + size > fired)?;
            }
        }
        Ok(())
    }

    /// Emits window `[start, end)`, the merge of the windows or panes in `panes`.
    fn fire_window(
        &mut self,
        start: EventTime,
        end: EventTime,
        panes: RangeInclusive<(EventTime, EventTime)>,
        out: &mut Output,
    ) -> Result<()> {
        let mut runs = RunKeys::new();
        if let Some(spill) = &self.spill {
            for (_, by_group) in spill.runs.range(panes.clone()) {
                for (&kg, keys) in by_group {
                    runs.entry(kg).or_default().extend(keys.iter().cloned());
                }
            }
        }
        if runs.is_empty() {
            let window = match self.layout {
                // The window is its only pane: emitted as it is, without a copy.
                Layout::PerWindow => match self.take_groups(*panes.start()) {
                    Some(groups) => groups,
                    None => return Ok(()),
                },
                Layout::Panes { .. } => {
                    let mut window = Groups::try_new(&self.key_schema, &self.aggregates)?;
                    for (_, pane) in self.groups.range_mut(panes) {
                        window.merge(&pane.state(&self.key_schema, &self.aggregates)?)?;
                    }
                    window
                }
            };
            return self.emit(start, end, window, out);
        }
        // The window's state is in the store (`fire` spilled what memory held of it).
        let store = self
            .spill
            .as_ref()
            .expect("runs come from the store")
            .store
            .clone();
        let mut ready: Vec<RecordBatch> = Vec::new();
        let mut ready_rows = 0;
        for (kg, keys) in runs {
            let mut groups = Groups::try_new(&self.key_schema, &self.aggregates)?;
            for key in keys {
                groups.merge(&self.read_run(&store, kg, &key)?)?;
            }
            let batch = self.finished(start, end, groups)?;
            ready_rows += batch.num_rows();
            ready.push(batch);
            if ready_rows >= EMIT_ROWS {
                out.emit(concat_batches(&self.output, &std::mem::take(&mut ready))?);
                ready_rows = 0;
            }
        }
        if !ready.is_empty() {
            out.emit(concat_batches(&self.output, &ready)?);
        }
        Ok(())
    }

    /// Drops the windows or panes `keep` rejects, in memory and in the store.
    fn retire(&mut self, keep: impl Fn(&(EventTime, EventTime)) -> bool) -> Result<()> {
        let gone: Vec<_> = self.state_keys().into_iter().filter(|w| !keep(w)).collect();
        self.forget(gone)
    }

    /// Drops windows or panes, in memory and in the store.
    fn forget(&mut self, windows: Vec<(EventTime, EventTime)>) -> Result<()> {
        for w in &windows {
            self.take_groups(*w);
        }
        let Some(spill) = &mut self.spill else {
            return Ok(());
        };
        let mut deleted = false;
        for w in windows {
            for (kg, keys) in spill.runs.remove(&w).unwrap_or_default() {
                spill.crowded.remove(&(w, kg));
                for key in keys {
                    spill.pending.delete(kg, &key);
                    deleted = true;
                }
            }
        }
        if deleted {
            // Deleted now unless a checkpoint is being cut; else with the next write (a
            // barrier's at the latest, so a checkpoint never holds runs of windows fired
            // before it).
            spill.pending = spill
                .store
                .try_write(std::mem::take(&mut spill.pending))?
                .unwrap_or_default();
        }
        Ok(())
    }

    /// The partial state run `key` of key group `kg` holds in the store.
    fn read_run(&self, store: &StateStore, kg: usize, key: &[u8]) -> Result<GroupsState> {
        let bytes = store.get(kg, key)?.ok_or_else(|| {
            let window = parse_run_key(key)
                .map(|(end, start, _)| format!("window [{start}, {end})"))
                .unwrap_or_else(|_| "a window".into());
            OperatorError::State(format!(
                "{window}: a spilled state entry of key group {kg} is missing from the store"
            ))
        })?;
        self.partial_of(kg, key, &decode_entry(kg, &bytes)?)
    }

    /// The keys and partial states of a state entry, checked against this aggregate.
    fn partial_of(&self, kg: usize, key: &[u8], batch: &RecordBatch) -> Result<GroupsState> {
        let expected = self.key_indices.len() + self.state_widths.iter().sum::<usize>();
        if batch.num_columns() != expected {
            let (end, start, _) = parse_run_key(key)?;
            return Err(OperatorError::State(format!(
                "window [{start}, {end}) in key group {kg} has {} columns; this aggregate keeps {expected}: the checkpoint is of another job",
                batch.num_columns()
            )));
        }
        Ok(self.groups_state(batch.columns().to_vec()))
    }

    /// The partial state of `groups` of window (or pane) `[start, end)`, split by key group
    /// and encoded.
    fn encode_partial(
        &self,
        start: EventTime,
        end: EventTime,
        partial: GroupsState,
    ) -> Result<Vec<(usize, Vec<u8>)>> {
        let batch = state_batch(partial.into_columns())?;
        let keys = partition_arrays(
            &self.partition,
            batch.columns(),
            start,
            end,
            batch.num_rows(),
        );
        encode_by_key_group(&batch, &keys, self.max_parallelism)
    }

    /// With state in RocksDB: writes the groups of the windows or panes `which` selects to
    /// the store as new runs, with the pending deletes, and frees them.
    fn spill_where(&mut self, which: impl Fn(&(EventTime, EventTime)) -> bool) -> Result<()> {
        if self.spill.is_none() {
            return Ok(());
        }
        let chosen: Vec<_> = self.groups.keys().filter(|w| which(w)).copied().collect();
        let run = RunId {
            level: 0,
            seq: self.spill.as_mut().expect("checked above").next_seq(),
        };
        // A window at a time, so that memory holds one window's encoded state, not all; small
        // ones go in one write.
        let mut small = StateSnapshot::default();
        for (end, start) in chosen {
            let groups = self.take_groups((end, start)).expect("listed above");
            self.dirty.remove(&(end, start));
            let parts = self.encode_partial(start, end, groups.into_state()?)?;
            let spill = self.spill.as_mut().expect("checked above");
            let key = run_key(end, start, run);
            let bytes: usize = parts.iter().map(|(_, b)| b.len()).sum();
            spill.spilled_bytes.add(bytes as u64);
            for (kg, _) in &parts {
                spill.add_run((end, start), *kg, key.clone());
            }
            if bytes >= INGEST_BYTES {
                let entries = parts
                    .into_iter()
                    .map(|(kg, value)| (kg, key.clone(), value))
                    .collect();
                spill.store.ingest(entries)?;
            } else {
                for (kg, value) in parts {
                    small.put(kg, &key, value);
                }
            }
        }
        let spill = self.spill.as_mut().expect("checked above");
        spill.store.write(small)?;
        Ok(spill.store.write(std::mem::take(&mut spill.pending))?)
    }

    /// With state in RocksDB: merges the runs of one crowded window key group (see [`Spill`]),
    /// unless a checkpoint is being cut (then after a later batch).
    fn merge_runs(&mut self) -> Result<()> {
        let Some(spill) = &mut self.spill else {
            return Ok(());
        };
        if !spill.store.can_write() {
            return Ok(());
        }
        let Some((w, kg)) = spill.crowded.pop_first() else {
            return Ok(());
        };
        let keys = spill
            .runs
            .get(&w)
            .and_then(|g| g.get(&kg))
            .cloned()
            .unwrap_or_default();
        let Some(level) = crowded_level(&keys) else {
            return Ok(());
        };
        let (merged, kept): (Vec<_>, Vec<_>) = keys
            .into_iter()
            .partition(|k| merge_level(k).is_ok_and(|l| l == level));
        let store = spill.store.clone();
        let (end, start) = w;
        let mut groups = Groups::try_new(&self.key_schema, &self.aggregates)?;
        let mut changes = StateSnapshot::default();
        for key in &merged {
            groups.merge(&self.read_run(&store, kg, key)?)?;
            changes.delete(kg, key);
        }
        let spill = self.spill.as_mut().expect("checked above");
        let run = RunId {
            level: level.saturating_add(1),
            seq: spill.next_seq(),
        };
        let key = run_key(end, start, run);
        let batch = state_batch(groups.into_state()?.into_columns())?;
        changes.put(kg, &key, encode_batch(&batch)?);
        spill.store.write(changes)?;
        let by_group = spill.runs.entry(w).or_default();
        by_group.insert(kg, kept);
        spill.add_run(w, kg, key);
        Ok(())
    }

    /// With state in RocksDB: spills every window once memory holds more than the budget
    /// (the buffer then starts empty; the next updates of the same keys make new runs).
    fn spill_if_full(&mut self) -> Result<()> {
        match self.spill.as_ref().map(|s| s.store.memory_budget()) {
            Some(budget) if self.over(budget) => self.spill_where(|_| true),
            _ => Ok(()),
        }
    }

    /// Whether the groups in memory hold more than `budget` bytes. The running count is
    /// checked against a full count before it is believed (it drifts when groups are read
    /// without being updated).
    fn over(&mut self, budget: usize) -> bool {
        if self.buffered <= budget {
            return false;
        }
        self.buffered = self.groups.values().map(Groups::size).sum();
        self.buffered > budget
    }

    /// Updates the groups of window or pane `[start, end)` (created empty if new) with `f`,
    /// counting the memory they hold: one window's size per update, not every window's.
    fn update_groups(
        &mut self,
        end: EventTime,
        start: EventTime,
        f: impl FnOnce(&mut Groups) -> Result<()>,
    ) -> Result<()> {
        // Only a budget needs the count: state in memory skips measuring on this hot path.
        let counted = self.spill.is_some() || self.local_budget.is_some();
        let groups = self.groups_of(end, start)?;
        if !counted {
            return f(groups);
        }
        let before = groups.size();
        f(groups)?;
        let after = groups.size();
        self.buffered = (self.buffered + after).saturating_sub(before);
        Ok(())
    }

    /// Removes the groups of window or pane `w` from memory.
    fn take_groups(&mut self, w: (EventTime, EventTime)) -> Option<Groups> {
        let groups = self.groups.remove(&w)?;
        self.buffered = self.buffered.saturating_sub(groups.size());
        Some(groups)
    }
}

/// Whether the window ending at `end` has fired at `watermark`.
#[inline]
pub(crate) fn window_fired(end: EventTime, lateness: i64, watermark: EventTime) -> bool {
    watermark != EventTime::MIN && end - 1 + lateness <= watermark
}

/// Flags rows whose last window has already fired.
pub(crate) fn late_flags(
    last_ends: &[EventTime],
    lateness: i64,
    watermark: EventTime,
) -> Vec<bool> {
    last_ends
        .iter()
        .map(|&end| window_fired(end, lateness, watermark))
        .collect()
}

impl Operator for FixedWindows {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Output) -> oxflow_runtime::Result<()> {
        if self.phase == Phase::Global && self.shared.is_some() {
            let (starts, ends) = (column_values(&batch, 0)?, column_values(&batch, 1)?);
            let state = self.groups_state(batch.columns()[2..].to_vec());
            if let Some(shared) = &mut self.shared {
                shared.merge_partials(ends, starts, state)?;
            }
            return Ok(());
        }
        if self.phase == Phase::Global {
            self.merge_partials(&batch)?;
            self.spill_if_full()?;
            return Ok(self.merge_runs()?);
        }
        let last_ends = self.windows_of.last_ends(&batch)?;
        let late = late_flags(&last_ends, self.lateness, self.watermark);
        let batch = self.late.split(batch, &late)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let keys: Vec<ArrayRef> = self
            .key_indices
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let inputs = self.aggregates.evaluate_inputs(&batch)?;
        if let (Phase::Local, Assigner::Inherited { start, end }) = (self.phase, &self.assigner) {
            let (starts, ends) = (column_values(&batch, *start)?, column_values(&batch, *end)?);
            out.emit(shared::combine(
                &self.key_schema,
                &self.aggregates,
                ends,
                starts,
                &keys,
                &inputs,
                batch.num_rows(),
                &self.output,
            )?);
            return Ok(());
        }
        if let (Some(shared), Assigner::Inherited { start, end }) =
            (&mut self.shared, &self.assigner)
        {
            // Rows of fired windows went to the late side above.
            let (starts, ends) = (column_values(&batch, *start)?, column_values(&batch, *end)?);
            shared.update(ends, starts, &keys, &inputs, batch.num_rows())?;
            return Ok(());
        }
        for rows in self.assigner.assign(&batch)? {
            // A hopping record may still belong to later windows while earlier ones have
            // fired; a pane lives until its last window fires.
            let last_end = match self.layout {
                Layout::PerWindow => rows.end,
                Layout::Panes { size, .. } => rows.start + size,
            };
            if window_fired(last_end, self.lateness, self.watermark) {
                continue;
            }
            self.update_groups(rows.end, rows.start, |groups| match &rows.indices {
                None => groups.update(&keys, &inputs, batch.num_rows()),
                Some(indices) => {
                    let keys = keys
                        .iter()
                        .map(|k| rows.take(k))
                        .collect::<Result<Vec<_>>>()?;
                    groups.update(&keys, &take_inputs(&inputs, indices)?, indices.len())
                }
            })?;
        }
        self.spill_if_full()?;
        self.merge_runs()?;
        if self.local_budget.is_some_and(|b| self.over(b)) {
            self.ship_partials(None, out)?;
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

    fn use_state_store(&mut self, store: StateStore) -> StoreUse {
        if self.phase == Phase::Local {
            // A pre-aggregate: instead of spilling, it ships its partials early when they
            // outgrow the budget (the global phase merges however many come). Its state
            // stays in memory, under the budget.
            self.local_budget = Some(store.memory_budget());
            return StoreUse::Memory;
        }
        // Spilled state is kept per window (given before any input: nothing is shared yet).
        self.shared = None;
        self.spill = Some(Spill {
            store,
            spilled_bytes: self.spilled_bytes.clone(),
            runs: BTreeMap::new(),
            crowded: BTreeSet::new(),
            next_run: 1,
            copy_seq: 0,
            pending: StateSnapshot::default(),
        });
        StoreUse::Indexed
    }

    fn snapshot_state(&mut self, state: &mut StateSnapshot) -> oxflow_runtime::Result<()> {
        if let Some(shared) = &mut self.shared {
            // An entry per window, as below with state in memory.
            let live: BTreeSet<Vec<u8>> = shared
                .windows()
                .iter()
                .map(|&(end, start)| window_key(end, start))
                .collect();
            let changed = shared.take_changed()?;
            self.stored.retain(state, |entry| live.contains(entry));
            for ((end, start), partial) in changed {
                let parts = self.encode_partial(start, end, partial)?;
                self.stored.replace(state, window_key(end, start), parts);
            }
            state.set_operator_state(encode_i64(self.fired_up_to));
            return Ok(());
        }
        // With state in RocksDB, the entry of a window's groups in memory is a copy, keyed
        // apart from runs; in memory, it is the window's only entry.
        let copy_seq = self.spill.as_ref().map(|s| s.copy_seq);
        let item = |(end, start): (EventTime, EventTime)| match copy_seq {
            Some(seq) => run_key(
                end,
                start,
                RunId {
                    level: COPY_LEVEL,
                    seq,
                },
            ),
            None => window_key(end, start),
        };
        if self.spill.is_some() {
            // A large change becomes a run: the checkpoint writes those keys only.
            let large: BTreeSet<_> = self
                .groups
                .iter()
                .filter(|(w, g)| self.dirty.contains(w) && g.size() >= INGEST_BYTES)
                .map(|(w, _)| *w)
                .collect();
            self.spill_where(|w| large.contains(w))?;
        }
        let live: BTreeSet<Vec<u8>> = self.groups.keys().map(|&w| item(w)).collect();
        self.stored.retain(state, |entry| live.contains(entry));
        for (end, start) in std::mem::take(&mut self.dirty) {
            let Some(groups) = self.groups.get_mut(&(end, start)) else {
                continue;
            };
            let partial = groups.state(&self.key_schema, &self.aggregates)?;
            let parts = self.encode_partial(start, end, partial)?;
            self.stored.replace(state, item((end, start)), parts);
        }
        state.set_operator_state(encode_i64(self.fired_up_to));
        Ok(())
    }

    fn restore_state(&mut self, state: RestoredState) -> oxflow_runtime::Result<()> {
        for (kg, key, value) in state.keyed {
            let (end, start, _) = parse_run_key(&key)?;
            let partial = self.partial_of(kg, &key, &decode_entry(kg, &value)?)?;
            // Marked dirty: this run's store starts empty.
            match &mut self.shared {
                Some(shared) => shared.merge_window(end, start, partial)?,
                None => self.update_groups(end, start, |g| g.merge(&partial))?,
            }
        }
        if let Some(spill) = &mut self.spill {
            // Copied into the store as they were: each entry is a run of its window.
            for (kg, key) in state.stored {
                let (end, start, run) = parse_run_key(&key)?;
                spill.next_run = spill.next_run.max(run.seq);
                spill.add_run((end, start), kg, key);
            }
            spill.copy_seq = spill.next_seq();
        }
        self.spill_if_full()?;
        if let Some(fired) = max_i64(&state.operator)? {
            self.fired_up_to = self.fired_up_to.max(fired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_windows_are_explained() {
        let e = WindowSpec::tumbling(Duration::ZERO)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("tumbling window size must be a positive"), "{e}");
        let e = WindowSpec::hopping(Duration::from_secs(1), Duration::from_secs(2))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("slide"), "{e}");
        let e = WindowSpec::session(Duration::from_micros(1500))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("whole number of milliseconds"), "{e}");
    }

    #[test]
    fn hopping_assigns_each_row_to_size_over_slide_windows() {
        let schema = Arc::new(Schema::new(vec![Field::new("t", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(datafusion::arrow::array::Int64Array::from(vec![
                0, 2500, -1,
            ]))],
        )
        .unwrap();
        let a = Assigner::try_new(
            &WindowSpec::hopping(Duration::from_secs(10), Duration::from_secs(2)),
            Some("t"),
            &schema,
        )
        .unwrap();
        let windows = a.assign(&batch).unwrap();
        let total: usize = windows
            .iter()
            .map(|w| w.indices.as_ref().map_or(3, |i| i.len()))
            .sum();
        assert_eq!(total, 15);
        assert!(windows.iter().any(|w| w.start == -10000 && w.end == 0));
        assert!(windows
            .iter()
            .all(|w| w.end - w.start == 10000 && w.start % 2000 == 0));
    }
}
