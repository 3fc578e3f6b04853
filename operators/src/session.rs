//! Session windows: per key, records closer than the gap form one window `[first, last + gap)`.
//!
//! Sessions merge as records arrive, so their aggregates cannot be updated in place the way
//! fixed windows are. Each open session keeps references to its rows (batch, row) instead;
//! when it closes, its rows are gathered with one `interleave` per column and aggregated in
//! one vectorized pass. A batch is freed when no open session refers to it any more.

use crate::aggregate::{AggregateInputs, Aggregates, Groups};
use crate::error::{OperatorError, Result};
use crate::keyed::{is_timer, FixedRows, FlatRows, KeyedCodec, TimedKeys, KEY};
use crate::state::{decode_entry, encode_by_key_group, state_batch, StoredEntries};
use crate::window::LateSide;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::{concat, interleave, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::HashMap;
use oxflow_runtime::exchange::{hash_keys, key_group};
use oxflow_runtime::metrics::Counter;
use oxflow_runtime::state::{encode_batch, RestoredState, StateSnapshot, StateStore, StoreUse};
use oxflow_runtime::watermark::event_times;
use oxflow_runtime::{EventTime, Operator, Output};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

pub(crate) struct SessionConfig {
    pub gap: i64,
    pub lateness: i64,
    pub time_column: String,
    pub key_indices: Vec<usize>,
    pub key_schema: SchemaRef,
    pub aggregates: Aggregates,
    pub output: SchemaRef,
    pub max_parallelism: usize,
    /// The operator's input (the types of the rows it keeps).
    pub input: SchemaRef,
    /// Counts the bytes written to the store early, with state in RocksDB.
    pub spilled_bytes: Counter,
}

/// One open session of a key: its bounds and rows, which are (batch, row) references with
/// state in memory and the rows themselves, in Arrow's row format, with state in RocksDB.
struct Session<S = Vec<(u32, u32)>> {
    start: EventTime,
    last: EventTime,
    rows: S,
}

/// The rows of one session.
trait RowSet {
    type Row<'a>;
    fn one(row: Self::Row<'_>) -> Self;
    fn push(&mut self, row: Self::Row<'_>);
    /// Takes in the rows of a session merged into this one.
    fn append(&mut self, other: Self);
}

impl RowSet for Vec<(u32, u32)> {
    type Row<'a> = (u32, u32);
    fn one(row: (u32, u32)) -> Self {
        vec![row]
    }
    fn push(&mut self, row: (u32, u32)) {
        Vec::push(self, row)
    }
    fn append(&mut self, mut other: Self) {
        Vec::append(self, &mut other)
    }
}

impl RowSet for FlatRows {
    type Row<'a> = &'a [u8];
    fn one(row: &[u8]) -> Self {
        let mut rows = FlatRows::default();
        rows.push(row);
        rows
    }
    fn push(&mut self, row: &[u8]) {
        FlatRows::push(self, row)
    }
    fn append(&mut self, other: Self) {
        FlatRows::append(self, other)
    }
}

/// Where a record went among its key's sessions.
enum Placed {
    /// Into no session: it is late.
    Late,
    /// Into a new session, closing at the given time at the earliest.
    Opened(EventTime),
    /// Into an open session (merging those it bridges).
    Joined,
}

/// Puts the record at `t` (as `row`) into `sessions`, which are disjoint and sorted.
fn place<S: RowSet>(
    sessions: &mut Vec<Session<S>>,
    t: EventTime,
    row: S::Row<'_>,
    (gap, lateness, watermark): (i64, i64, EventTime),
) -> Placed {
    // The sessions the record's [t, t + gap) overlaps are contiguous; it may bridge several.
    let first = sessions.partition_point(|s| s.last + gap <= t);
    let overlapping = sessions[first..]
        .iter()
        .take_while(|s| s.start < t + gap)
        .count();
    if overlapping == 0 {
        if watermark != EventTime::MIN && t + gap - 1 + lateness <= watermark {
            return Placed::Late;
        }
        sessions.insert(
            first,
            Session {
                start: t,
                last: t,
                rows: S::one(row),
            },
        );
        return Placed::Opened(t + gap - 1 + lateness);
    }
    for merged in sessions
        .drain(first + 1..first + overlapping)
        .collect::<Vec<_>>()
    {
        let s = &mut sessions[first];
        s.start = s.start.min(merged.start);
        s.last = s.last.max(merged.last);
        s.rows.append(merged.rows);
    }
    let s = &mut sessions[first];
    s.start = s.start.min(t);
    s.last = s.last.max(t);
    s.rows.push(row);
    Placed::Joined
}

/// When the first of `sessions` closes (`None`: there are none).
fn earliest_close<S>(sessions: &[Session<S>], gap_and_lateness: i64) -> Option<EventTime> {
    sessions.iter().map(|s| s.last + gap_and_lateness).min()
}

/// Whether row `i` of a restored entry starts a session: its session number or its key
/// (when `keys` holds the rows' keys) differs from the previous row's.
fn starts_session(numbers: &UInt32Array, keys: Option<&Rows>, i: usize) -> bool {
    i == 0
        || numbers.value(i) != numbers.value(i - 1)
        || keys.is_some_and(|k| k.row(i) != k.row(i - 1))
}

/// Moves the sessions of `sessions` that close at or before `up_to` into `closed`, and
/// returns when the next of the others closes.
fn take_closed<R>(
    sessions: &mut Vec<Session<R>>,
    up_to: EventTime,
    gap_and_lateness: i64,
    closed: &mut Vec<Session<R>>,
) -> Option<EventTime> {
    let mut i = 0;
    while i < sessions.len() {
        if sessions[i].last + gap_and_lateness <= up_to {
            closed.push(sessions.remove(i));
        } else {
            i += 1;
        }
    }
    earliest_close(sessions, gap_and_lateness)
}

/// Columns of a batch kept while open sessions refer to its rows.
struct Pending {
    columns: Vec<ArrayRef>,
    live: usize,
}

pub(crate) struct SessionWindows {
    cfg: SessionConfig,
    late: LateSide,
    converter: RowConverter,
    sessions: HashMap<Vec<u8>, Vec<Session>>,
    /// When each key's earliest session may close (possibly stale: see `fire`).
    timers: BinaryHeap<Reverse<(EventTime, Box<[u8]>)>>,
    pending: HashMap<u32, Pending>,
    next_batch: u32,
    watermark: EventTime,
    /// Per aggregate: number of arguments and whether it has a filter.
    layout: Vec<(usize, bool)>,
    stored: StoredEntries,
    /// How rows would be kept in RocksDB (none when the row format cannot hold their types),
    /// and the layout of the inputs they hold.
    row_format: Option<(StoredRows, InputLayout)>,
    /// With state in RocksDB: the sessions by key (`sessions`, `timers` and `pending` are
    /// then unused).
    by_key: Option<ByKey>,
}

impl SessionWindows {
    pub(crate) fn new(cfg: SessionConfig, late: LateSide) -> Result<Self> {
        let converter = RowConverter::new(
            cfg.key_schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let row_format = StoredRows::plan(&cfg)?;
        Ok(SessionWindows {
            row_format,
            by_key: None,
            cfg,
            late,
            converter,
            sessions: HashMap::default(),
            timers: BinaryHeap::new(),
            pending: HashMap::new(),
            next_batch: 0,
            watermark: EventTime::MIN,
            layout: Vec::new(),
            stored: StoredEntries::default(),
        })
    }

    /// Takes back restored open sessions as a batch of their own. A row starts a session
    /// where its session number or its key differs from the previous row's.
    fn restore_rows(&mut self, entry: EntryRows) -> Result<()> {
        let EntryRows {
            starts,
            lasts,
            numbers,
            columns,
        } = entry;
        let n_keys = self.cfg.key_indices.len();
        let keys = self.converter.convert_columns(&columns[..n_keys])?;
        let keys = (n_keys > 0).then_some(&keys);
        let id = self.next_batch;
        self.next_batch = self.next_batch.wrapping_add(1);
        for i in 0..starts.len() {
            let key: &[u8] = keys.map_or(&[], |k| k.row(i).data());
            let sessions = self.sessions.entry_ref(key).or_default();
            if starts_session(&numbers, keys, i) {
                sessions.push(Session {
                    start: starts.value(i),
                    last: lasts.value(i),
                    rows: Vec::new(),
                });
            }
            sessions
                .last_mut()
                .expect("pushed above")
                .rows
                .push((id, i as u32));
        }
        let live = starts.len();
        if live > 0 {
            self.pending.insert(id, Pending { columns, live });
        }
        Ok(())
    }

    fn fire(&mut self, up_to: EventTime, out: &mut Output) -> Result<()> {
        if self.by_key.is_some() {
            return self.fire_stored(up_to, out);
        }
        // Timers are lazy: a session that grew after its timer was set is re-armed when the
        // old timer pops, so a record never touches the heap unless it opens a session.
        let mut closed: Vec<Session> = Vec::new();
        let (gap, lateness) = (self.cfg.gap, self.cfg.lateness);
        while self.timers.peek().is_some_and(|t| t.0 .0 <= up_to) {
            let Reverse((_, key)) = self.timers.pop().expect("peeked");
            let Some(sessions) = self.sessions.get_mut(&*key) else {
                continue;
            };
            match take_closed(sessions, up_to, gap - 1 + lateness, &mut closed) {
                None => {
                    self.sessions.remove(&*key);
                }
                Some(next) => self.timers.push(Reverse((next, key))),
            }
        }
        if closed.is_empty() {
            return Ok(());
        }

        let (gathered, group_indices, first_rows) = self.gather(&closed)?;
        for session in &closed {
            for &(b, _) in &session.rows {
                let p = self
                    .pending
                    .get_mut(&b)
                    .expect("referenced batches are kept");
                p.live -= 1;
                if p.live == 0 {
                    self.pending.remove(&b);
                }
            }
        }

        let bounds: Vec<(EventTime, EventTime)> =
            closed.iter().map(|s| (s.start, s.last)).collect();
        self.emit(&bounds, &gathered, group_indices, first_rows, out)
    }

    /// Emits the sessions of `bounds` (start, last): their rows are `gathered` (keys, then
    /// aggregate inputs), session by session, with each row's session number and each
    /// session's first row.
    fn emit(
        &self,
        bounds: &[(EventTime, EventTime)],
        gathered: &[ArrayRef],
        group_indices: Vec<usize>,
        first_rows: Vec<u32>,
        out: &mut Output,
    ) -> Result<()> {
        let n_keys = self.cfg.key_indices.len();
        let inputs = self.rebuild_inputs(&gathered[n_keys..]);
        let mut groups = Groups::try_new(
            &Arc::new(datafusion::arrow::datatypes::Schema::empty()),
            &self.cfg.aggregates,
        )?;
        groups.update_with_indices(group_indices, bounds.len(), &inputs)?;
        let (_, aggregates) = groups.finish()?;
        let first = UInt32Array::from(first_rows);
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMillisecondArray::from_iter_values(
                bounds.iter().map(|s| s.0),
            )),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                bounds.iter().map(|s| s.1 + self.cfg.gap),
            )),
        ];
        for key in &gathered[..n_keys] {
            columns.push(take(key.as_ref(), &first, None)?);
        }
        columns.extend(aggregates);
        out.emit(RecordBatch::try_new(self.cfg.output.clone(), columns)?);
        Ok(())
    }

    /// The rows of `sessions`, session by session (one `interleave` per column), with each
    /// row's session number and each session's first row.
    fn gather<'a>(
        &self,
        sessions: impl IntoIterator<Item = &'a Session>,
    ) -> Result<(Vec<ArrayRef>, Vec<usize>, Vec<u32>)> {
        let mut batch_slots: HashMap<u32, usize> = HashMap::new();
        let mut batch_ids: Vec<u32> = Vec::new();
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        let mut group_indices: Vec<usize> = Vec::new();
        let mut first_rows: Vec<u32> = Vec::new();
        for (g, session) in sessions.into_iter().enumerate() {
            first_rows.push(pairs.len() as u32);
            for &(b, r) in &session.rows {
                let slot = *batch_slots.entry(b).or_insert_with(|| {
                    batch_ids.push(b);
                    batch_ids.len() - 1
                });
                pairs.push((slot, r as usize));
                group_indices.push(g);
            }
        }
        let Some(first) = batch_ids.first() else {
            return Ok((Vec::new(), group_indices, first_rows));
        };
        let width = self.pending[first].columns.len();
        let mut gathered = Vec::with_capacity(width);
        for c in 0..width {
            let arrays: Vec<&dyn Array> = batch_ids
                .iter()
                .map(|b| self.pending[b].columns[c].as_ref())
                .collect();
            gathered.push(interleave(&arrays, &pairs)?);
        }
        Ok((gathered, group_indices, first_rows))
    }

    fn rebuild_inputs(&self, columns: &[ArrayRef]) -> AggregateInputs {
        let mut it = columns.iter();
        self.layout
            .iter()
            .map(|&(n_args, has_filter)| {
                let args: Vec<ArrayRef> = it.by_ref().take(n_args).cloned().collect();
                let filter = has_filter.then(|| {
                    it.next()
                        .expect("layout matches")
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .expect("filters are boolean")
                        .clone()
                });
                (args, filter)
            })
            .collect()
    }
}

impl Operator for SessionWindows {
    fn on_batch(&mut self, batch: RecordBatch, _: &mut Output) -> oxflow_runtime::Result<()> {
        if self.by_key.is_some() {
            return Ok(self.on_batch_stored(batch)?);
        }
        let n = batch.num_rows();
        let times = event_times(&batch, &self.cfg.time_column)?.to_vec();
        let keys: Vec<ArrayRef> = self
            .cfg
            .key_indices
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let rows = self
            .converter
            .convert_columns(&keys)
            .map_err(crate::OperatorError::from)?;
        let inputs = self.cfg.aggregates.evaluate_inputs(&batch)?;
        let id = self.next_batch;
        self.next_batch = self.next_batch.wrapping_add(1);
        let (gap, lateness, watermark) = (self.cfg.gap, self.cfg.lateness, self.watermark);

        let mut late = vec![false; n];
        let mut live = 0;
        for (i, &t) in times.iter().enumerate() {
            // Without key columns every record has the one, empty key.
            let key: &[u8] = if keys.is_empty() {
                &[]
            } else {
                rows.row(i).data()
            };
            let sessions = self.sessions.entry_ref(key).or_default();
            match place(sessions, t, (id, i as u32), (gap, lateness, watermark)) {
                Placed::Late => {
                    late[i] = true;
                    if sessions.is_empty() {
                        self.sessions.remove(key);
                    }
                    continue;
                }
                Placed::Opened(closes) => self.timers.push(Reverse((closes, key.into()))),
                Placed::Joined => {}
            }
            live += 1;
        }
        if live > 0 {
            let mut columns = keys;
            self.layout.clear();
            for (args, filter) in inputs {
                self.layout.push((args.len(), filter.is_some()));
                columns.extend(args);
                if let Some(f) = filter {
                    columns.push(Arc::new(f));
                }
            }
            self.pending.insert(id, Pending { columns, live });
        }
        self.late.split(batch, &late)?;
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: EventTime,
        out: &mut Output,
    ) -> oxflow_runtime::Result<()> {
        self.watermark = watermark;
        Ok(self.fire(watermark, out)?)
    }

    fn on_end_of_input(&mut self, out: &mut Output) -> oxflow_runtime::Result<()> {
        self.fire(EventTime::MAX - self.cfg.gap - self.cfg.lateness, out)?;
        Ok(self.late.finish()?)
    }

    /// Open sessions are written whole at every checkpoint, one entry per key group: their
    /// rows with each row's session bounds and number.
    fn snapshot_state(&mut self, state: &mut StateSnapshot) -> oxflow_runtime::Result<()> {
        let layout = serde_json::to_vec(&self.layout).expect("layouts serialize");
        state.set_operator_state(layout);
        if let Some(by_key) = &mut self.by_key {
            return Ok(by_key.snapshot(state)?);
        }
        let open: Vec<&Session> = self.sessions.values().flatten().collect();
        let (gathered, numbers, _) = self.gather(open.iter().copied())?;
        let parts = if gathered.is_empty() {
            Vec::new()
        } else {
            let bounds: Vec<(EventTime, EventTime)> =
                open.iter().map(|s| (s.start, s.last)).collect();
            let batch = entry_batch(&bounds, &numbers, gathered)?;
            // Session keys are exactly the key_by columns, in order.
            let keys = &batch.columns()[3..3 + self.cfg.key_indices.len()];
            encode_by_key_group(&batch, keys, self.cfg.max_parallelism)?
        };
        self.stored.replace(state, SESSIONS.to_vec(), parts);
        Ok(())
    }

    fn use_state_store(&mut self, store: StateStore) -> StoreUse {
        let Some((codec, layout)) = self.row_format.take() else {
            // Rows of types Arrow's row format cannot hold stay in memory.
            return StoreUse::Memory;
        };
        self.layout = layout;
        let (by_key, used) = TimedKeys::new(
            store,
            codec,
            self.cfg.max_parallelism,
            self.cfg.spilled_bytes.clone(),
        );
        self.by_key = Some(by_key);
        used
    }

    fn restore_state(&mut self, state: RestoredState) -> oxflow_runtime::Result<()> {
        if let Some(layout) = state.operator.iter().find(|l| l.as_slice() != b"[]") {
            self.layout = serde_json::from_slice(layout).map_err(|e| {
                OperatorError::State(format!("session aggregate layout is unreadable: {e}"))
            })?;
        }
        if self.by_key.is_some() {
            return Ok(self.restore_stored(state.keyed)?);
        }
        let (gap, lateness) = (self.cfg.gap, self.cfg.lateness);
        let n_keys = self.cfg.key_indices.len();
        // Keys' entries of state kept in RocksDB, gathered into one batch per 4 096 keys (a
        // batch per key would cost its arrays' overhead for every key).
        let mut keys_entries: Vec<EntryRows> = Vec::new();
        for (kg, item, value) in state.keyed {
            if is_timer(&item) {
                // A timer of state kept in RocksDB: here timers come from the sessions.
                continue;
            }
            let entry = match &self.row_format {
                // A key's entry of state in RocksDB may be in the row format.
                Some((rows, _)) => rows.entry_rows(kg, &value)?,
                None => EntryRows::parse(kg, &value, n_keys)?,
            };
            if item.first() != Some(&KEY) {
                self.restore_rows(entry)?;
                continue;
            }
            keys_entries.push(entry);
            if keys_entries.len() >= 4096 {
                self.restore_rows(EntryRows::concat(std::mem::take(&mut keys_entries))?)?;
            }
        }
        if !keys_entries.is_empty() {
            self.restore_rows(EntryRows::concat(keys_entries)?)?;
        }
        for (key, sessions) in self.sessions.iter_mut() {
            sessions.sort_by_key(|s| s.start);
            if let Some(next) = earliest_close(sessions, gap - 1 + lateness) {
                self.timers.push(Reverse((next, key.as_slice().into())));
            }
        }
        Ok(())
    }
}

/// The item key of the sessions entry of a key group.
const SESSIONS: &[u8] = b"sessions";

/// The batch of a sessions entry: each row's session bounds and number (an index into
/// `bounds`), then the rows' columns (keys, then aggregate inputs).
fn entry_batch(
    bounds: &[(EventTime, EventTime)],
    numbers: &[usize],
    rows: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            numbers.iter().map(|&g| bounds[g].0),
        )),
        Arc::new(Int64Array::from_iter_values(
            numbers.iter().map(|&g| bounds[g].1),
        )),
        Arc::new(UInt32Array::from_iter_values(
            numbers.iter().map(|&g| g as u32),
        )),
    ];
    columns.extend(rows);
    state_batch(columns)
}

/// The open sessions of a state entry: a key group's (state in memory) or one key's (state
/// in RocksDB). Both are [`entry_batch`]es, so a checkpoint restores into either storage.
struct EntryRows {
    starts: Int64Array,
    lasts: Int64Array,
    numbers: UInt32Array,
    columns: Vec<ArrayRef>,
}

impl EntryRows {
    /// The rows of `entries` one after the other, their session numbers kept apart.
    fn concat(entries: Vec<EntryRows>) -> Result<EntryRows> {
        let mut numbers = Vec::new();
        let mut next = 0u32;
        for e in &entries {
            let base = next;
            for &n in e.numbers.values() {
                numbers.push(base.saturating_add(n));
                next = next.max(base.saturating_add(n).saturating_add(1));
            }
        }
        let column = |arrays: Vec<&dyn Array>| -> Result<ArrayRef> { Ok(concat(&arrays)?) };
        let width = entries.first().map_or(0, |e| e.columns.len());
        if let Some(e) = entries.iter().find(|e| e.columns.len() != width) {
            return Err(OperatorError::State(format!(
                "sessions of keys with {} and {width} columns",
                e.columns.len()
            )));
        }
        let int64 = |f: fn(&EntryRows) -> &Int64Array| -> Result<Int64Array> {
            let arrays: Vec<&dyn Array> = entries.iter().map(|e| f(e) as &dyn Array).collect();
            Ok(column(arrays)?
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("Int64 arrays concatenate to one")
                .clone())
        };
        Ok(EntryRows {
            starts: int64(|e| &e.starts)?,
            lasts: int64(|e| &e.lasts)?,
            numbers: UInt32Array::from(numbers),
            columns: (0..width)
                .map(|c| column(entries.iter().map(|e| e.columns[c].as_ref()).collect()))
                .collect::<Result<_>>()?,
        })
    }

    fn parse(kg: usize, value: &[u8], n_keys: usize) -> Result<EntryRows> {
        let batch = decode_entry(kg, value)?;
        let bad = |what: &str| OperatorError::State(format!("sessions of key group {kg}: {what}"));
        if batch.num_columns() < 3 + n_keys {
            return Err(bad("too few columns"));
        }
        let int64 = |i: usize| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .cloned()
                .ok_or_else(|| bad("session bounds are not Int64"))
        };
        let (starts, lasts) = (int64(0)?, int64(1)?);
        let numbers = batch
            .column(2)
            .as_any()
            .downcast_ref::<UInt32Array>()
            .cloned()
            .ok_or_else(|| bad("session numbers are not UInt32"))?;
        Ok(EntryRows {
            starts,
            lasts,
            numbers,
            columns: batch.columns()[3..].to_vec(),
        })
    }
}

/// A key's open sessions with state in RocksDB: their rows in Arrow's row format (owned, so
/// that a key is written out or dropped on its own, which rows referring to shared batches
/// would not allow).
type KeySessions = Vec<OwnedSession>;
type OwnedSession = Session<FlatRows>;
/// Per aggregate: number of arguments and whether it has a filter.
type InputLayout = Vec<(usize, bool)>;

/// How a key's sessions become an entry and back: the rows' columns are the key columns,
/// then the aggregates' inputs (arguments, then filter, per aggregate).
struct StoredRows {
    rows: RowConverter,
    types: Vec<DataType>,
    n_keys: usize,
    /// When every column is of a fixed-width type: entries in the row format
    /// ([`SESSION_ENTRY`]) rather than as an IPC batch each.
    fixed: Option<FixedRows>,
}

/// The magic of a key's sessions entry in the row format (the runtime's IPC entries start
/// with `OXS1`, running aggregates' rows with `OXR1`); then [`FixedRows::frame`]'s
/// fingerprint and CRC-32 and the body: the number of sessions (u32), each session's start,
/// last (i64) and number of rows (u32), then every row, session by session (big endian).
const SESSION_ENTRY: &[u8; 4] = b"OXW1";

impl StoredRows {
    /// The row format of the operator's rows, with the layout of their inputs; `None` when
    /// the row format cannot hold their types.
    fn plan(cfg: &SessionConfig) -> Result<Option<(StoredRows, InputLayout)>> {
        let inputs = cfg
            .aggregates
            .evaluate_inputs(&RecordBatch::new_empty(cfg.input.clone()))?;
        let mut types: Vec<DataType> = cfg
            .key_schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let mut layout = Vec::new();
        for (args, filter) in &inputs {
            layout.push((args.len(), filter.is_some()));
            types.extend(args.iter().map(|a| a.data_type().clone()));
            if filter.is_some() {
                types.push(DataType::Boolean);
            }
        }
        let fields = types.iter().cloned().map(SortField::new).collect();
        let Ok(rows) = RowConverter::new(fields) else {
            return Ok(None);
        };
        let fixed = FixedRows::of(&types)?;
        let n_keys = cfg.key_indices.len();
        Ok(Some((
            StoredRows {
                rows,
                types,
                n_keys,
                fixed,
            },
            layout,
        )))
    }

    /// The rows of `sessions` as columns, session by session, with each row's session
    /// number and each session's first row.
    fn gather<'a>(
        &self,
        sessions: impl IntoIterator<Item = &'a OwnedSession>,
    ) -> Result<(Vec<ArrayRef>, Vec<usize>, Vec<u32>)> {
        let parser = self.rows.parser();
        let mut rows = Vec::new();
        let mut numbers = Vec::new();
        let mut first_rows = Vec::new();
        for (g, session) in sessions.into_iter().enumerate() {
            first_rows.push(rows.len() as u32);
            for row in session.rows.iter() {
                // Rows made by this converter, never read from outside.
                rows.push(parser.parse(row));
                numbers.push(g);
            }
        }
        if rows.is_empty() {
            return Ok((Vec::new(), numbers, first_rows));
        }
        Ok((self.rows.convert_rows(rows)?, numbers, first_rows))
    }

    /// A key's sessions from a [`SESSION_ENTRY`], checked to the byte.
    fn decode_rows(&self, kg: usize, entry: &[u8]) -> Result<KeySessions> {
        let bad = |what: String| {
            OperatorError::State(format!("sessions of a key in key group {kg}: {what}"))
        };
        let Some(fixed) = &self.fixed else {
            return Err(bad(
                "a row-format entry, but this job keeps rows the row format cannot hold".into(),
            ));
        };
        let body = fixed.unframe(SESSION_ENTRY, entry).map_err(bad)?;
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?))
        };
        let i64_at = |at: usize| -> Option<i64> {
            Some(i64::from_be_bytes(body.get(at..at + 8)?.try_into().ok()?))
        };
        let truncated = || bad(format!("an entry of {} bytes is truncated", entry.len()));
        let n = u32_at(0).ok_or_else(truncated)? as usize;
        // Checked against the length before anything is allocated for it.
        let rows_at = n
            .checked_mul(20)
            .and_then(|h| h.checked_add(4))
            .filter(|&end| end <= body.len())
            .ok_or_else(truncated)?;
        let mut rows = body[rows_at..].chunks_exact(fixed.width);
        if rows.len() * fixed.width != body.len() - rows_at {
            return Err(bad("its rows are not whole".into()));
        }
        let mut sessions = Vec::with_capacity(n);
        for i in 0..n {
            let at = 4 + 20 * i;
            let (Some(start), Some(last), Some(count)) =
                (i64_at(at), i64_at(at + 8), u32_at(at + 16))
            else {
                return Err(truncated());
            };
            if count == 0 || count as usize > rows.len() {
                return Err(bad(format!(
                    "session {i} has {count} rows, {} are left",
                    rows.len()
                )));
            }
            let mut flat = FlatRows::default();
            for row in rows.by_ref().take(count as usize) {
                flat.push(row);
            }
            sessions.push(Session {
                start,
                last,
                rows: flat,
            });
        }
        if rows.len() > 0 {
            return Err(bad(format!("{} rows belong to no session", rows.len())));
        }
        sessions.sort_by_key(|s| s.start);
        Ok(sessions)
    }

    /// The open sessions of a key's entry or a key group's, as columns.
    fn entry_rows(&self, kg: usize, value: &[u8]) -> Result<EntryRows> {
        if !value.starts_with(SESSION_ENTRY) {
            return EntryRows::parse(kg, value, self.n_keys);
        }
        let sessions = self.decode_rows(kg, value)?;
        let (columns, numbers, _) = self.gather(sessions.iter())?;
        Ok(EntryRows {
            starts: Int64Array::from_iter_values(numbers.iter().map(|&g| sessions[g].start)),
            lasts: Int64Array::from_iter_values(numbers.iter().map(|&g| sessions[g].last)),
            numbers: UInt32Array::from_iter_values(numbers.iter().map(|&g| g as u32)),
            columns,
        })
    }

    /// The sessions of an entry, in its order, with the row of each one's first record
    /// (`keys`: the rows' keys, when the entry may hold several).
    fn sessions(
        &self,
        kg: usize,
        entry: &EntryRows,
        keys: Option<&Rows>,
    ) -> Result<Vec<(usize, OwnedSession)>> {
        let types: Vec<DataType> = entry
            .columns
            .iter()
            .map(|c| c.data_type().clone())
            .collect();
        if types != self.types {
            return Err(OperatorError::State(format!(
                "sessions of key group {kg}: rows of types {types:?}, this job keeps {:?}",
                self.types
            )));
        }
        let rows = self.rows.convert_columns(&entry.columns)?;
        let mut sessions: Vec<(usize, OwnedSession)> = Vec::new();
        for i in 0..entry.starts.len() {
            if starts_session(&entry.numbers, keys, i) {
                let session = Session {
                    start: entry.starts.value(i),
                    last: entry.lasts.value(i),
                    rows: FlatRows::default(),
                };
                sessions.push((i, session));
            }
            let (_, session) = sessions.last_mut().expect("pushed above");
            session.rows.push(rows.row(i).as_ref());
        }
        Ok(sessions)
    }
}

impl KeyedCodec<KeySessions> for StoredRows {
    fn encode(&self, _: &[u8], sessions: &mut KeySessions) -> Result<Vec<u8>> {
        if let Some(fixed) = &self.fixed {
            let rows: usize = sessions.iter().map(|s| s.rows.len()).sum();
            let mut body = Vec::with_capacity(4 + 20 * sessions.len() + fixed.width * rows);
            body.extend_from_slice(&(sessions.len() as u32).to_be_bytes());
            for s in sessions.iter() {
                body.extend_from_slice(&s.start.to_be_bytes());
                body.extend_from_slice(&s.last.to_be_bytes());
                body.extend_from_slice(&(s.rows.len() as u32).to_be_bytes());
            }
            for s in sessions.iter() {
                // Fixed-width rows, one after the other: the buffer as it is.
                body.extend_from_slice(&s.rows.bytes);
            }
            return Ok(fixed.frame(SESSION_ENTRY, &body));
        }
        let (columns, numbers, _) = self.gather(sessions.iter())?;
        let bounds: Vec<(EventTime, EventTime)> =
            sessions.iter().map(|s| (s.start, s.last)).collect();
        Ok(encode_batch(&entry_batch(&bounds, &numbers, columns)?)?)
    }

    fn decode(&self, kg: usize, _: &[u8], entry: &[u8]) -> Result<KeySessions> {
        if entry.starts_with(SESSION_ENTRY) {
            return self.decode_rows(kg, entry);
        }
        let entry = EntryRows::parse(kg, entry, self.n_keys)?;
        let mut sessions: KeySessions = self
            .sessions(kg, &entry, None)?
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        sessions.sort_by_key(|s| s.start);
        Ok(sessions)
    }

    fn size(&self, sessions: &KeySessions) -> usize {
        let session = std::mem::size_of::<OwnedSession>();
        sessions.iter().map(|s| session + s.rows.heap_bytes()).sum()
    }
}

/// Sessions by key with state in RocksDB: each key's sessions in a [`KeyedState`] under the
/// memory budget, with a timer per key at its earliest session's close, at the earliest (a
/// timer may be stale: see `fire_stored`).
type ByKey = TimedKeys<KeySessions, StoredRows>;

impl SessionWindows {
    fn on_batch_stored(&mut self, batch: RecordBatch) -> Result<()> {
        let by_key = self.by_key.as_mut().expect("state is in the store");
        let times = event_times(&batch, &self.cfg.time_column)?;
        let mut columns: Vec<ArrayRef> = self
            .cfg
            .key_indices
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let keys = self.converter.convert_columns(&columns)?;
        let mut hashes = Vec::new();
        if !columns.is_empty() {
            hash_keys(&columns, &mut hashes)?;
        }
        for (args, filter) in self.cfg.aggregates.evaluate_inputs(&batch)? {
            columns.extend(args);
            if let Some(f) = filter {
                columns.push(Arc::new(f));
            }
        }
        let rows = by_key.codec.rows.convert_columns(&columns)?;
        let (gap, lateness) = (self.cfg.gap, self.cfg.lateness);
        let limits = (gap, lateness, self.watermark);
        let gap_and_lateness = gap - 1 + lateness;
        let mut late = vec![false; batch.num_rows()];
        let mut item = vec![KEY];
        for (i, &t) in times.iter().enumerate() {
            item.truncate(1);
            // Without key columns every record has the one, empty key, in key group 0.
            let kg = match hashes.get(i) {
                Some(&h) => {
                    item.extend_from_slice(keys.row(i).as_ref());
                    key_group(h, self.cfg.max_parallelism)
                }
                None => 0,
            };
            let row = rows.row(i);
            let (placed, earliest) = by_key.state.update(
                kg,
                &item,
                &by_key.codec,
                || Ok(Vec::new()),
                |sessions| {
                    let placed = place(sessions, t, row.as_ref(), limits);
                    Ok((placed, earliest_close(sessions, gap_and_lateness)))
                },
            )?;
            match (placed, earliest) {
                (Placed::Late, None) => {
                    late[i] = true;
                    // The key had no session: drop the empty one made for it.
                    by_key.state.take(kg, &item, &by_key.codec)?;
                }
                (Placed::Late, Some(_)) => late[i] = true,
                // Timers are lazy, as with state in memory: a new session arms its key at
                // the key's earliest close (a lower bound of when it next has one due).
                (Placed::Opened(closes), earliest) => {
                    by_key.arm(kg as u16, &item[1..], earliest.unwrap_or(closes))?
                }
                (Placed::Joined, _) => {}
            }
        }
        by_key.evict_if_over()?;
        self.late.split(batch, &late)?;
        Ok(())
    }

    fn fire_stored(&mut self, up_to: EventTime, out: &mut Output) -> Result<()> {
        let gap_and_lateness = self.cfg.gap - 1 + self.cfg.lateness;
        let by_key = self.by_key.as_mut().expect("state is in the store");
        let mut closed: KeySessions = Vec::new();
        while let Some((_, key, kg)) = by_key.pop_due(up_to)? {
            let item = [&[KEY][..], &key].concat();
            // A stale timer of a key whose sessions all closed finds none (an empty value,
            // dropped below).
            let next = by_key.state.update(
                kg as usize,
                &item,
                &by_key.codec,
                || Ok(Vec::new()),
                |sessions| Ok(take_closed(sessions, up_to, gap_and_lateness, &mut closed)),
            )?;
            match next {
                None => {
                    by_key.state.take(kg as usize, &item, &by_key.codec)?;
                }
                Some(next) => by_key.arm(kg, &key, next)?,
            }
        }
        if closed.is_empty() {
            return Ok(());
        }
        let (gathered, numbers, first_rows) = by_key.codec.gather(closed.iter())?;
        by_key.evict_if_over()?;
        let bounds: Vec<(EventTime, EventTime)> =
            closed.iter().map(|s| (s.start, s.last)).collect();
        self.emit(&bounds, &gathered, numbers, first_rows, out)
    }

    /// Takes back restored entries with state in RocksDB that were not copied into the
    /// store: keys' timers of checkpoints written before timers were kept in RocksDB, or the
    /// sessions of a key group written with state in memory.
    fn restore_stored(&mut self, keyed: Vec<(usize, Vec<u8>, Vec<u8>)>) -> Result<()> {
        let n_keys = self.cfg.key_indices.len();
        let gap_and_lateness = self.cfg.gap - 1 + self.cfg.lateness;
        let by_key = self.by_key.as_mut().expect("state is in the store");
        for (kg, item, value) in keyed {
            if is_timer(&item) {
                by_key.restore_timer(kg, &item, &value)?;
                continue;
            }
            // Keys' sessions and timers were copied into the store (`StoreUse::ByKey`): what
            // is left are key groups' sessions written with state in memory.
            let entry = EntryRows::parse(kg, &value, n_keys)?;
            let keys = self.converter.convert_columns(&entry.columns[..n_keys])?;
            let mut by_row: HashMap<Box<[u8]>, KeySessions> = HashMap::default();
            let key_rows = (n_keys > 0).then_some(&keys);
            for (first, session) in by_key.codec.sessions(kg, &entry, key_rows)? {
                let mut key = vec![KEY];
                if n_keys > 0 {
                    key.extend_from_slice(keys.row(first).as_ref());
                }
                by_row.entry(key.into()).or_default().push(session);
            }
            for (item, mut sessions) in by_row {
                sessions.sort_by_key(|s| s.start);
                if let Some(at) = earliest_close(&sessions, gap_and_lateness) {
                    by_key.arm(kg as u16, &item[1..], at)?;
                }
                by_key.state.restore(kg, &item, sessions, &by_key.codec);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
impl SessionWindows {
    fn open_sessions(&self) -> usize {
        self.sessions.values().map(|s| s.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::{LateRecords, WindowAggregate, WindowSettings, WindowSpec};
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::functions_aggregate::expr_fn::count;
    use datafusion::prelude::col;
    use oxflow_runtime::{OperatorFactory, SubtaskInfo};
    use std::time::Duration;

    /// Session windows of `gap_ms` per key `k` over `t`, computing `aggregates`.
    fn session_factory(
        gap_ms: u64,
        aggregates: &[datafusion::logical_expr::Expr],
        schema: SchemaRef,
    ) -> WindowAggregate {
        WindowAggregate::try_new(
            WindowSettings {
                keys: vec!["k".into()],
                window: WindowSpec::session(Duration::from_millis(gap_ms)),
                time_column: Some("t".into()),
                allowed_lateness: Duration::ZERO,
                late: LateRecords::Drop,
            },
            aggregates,
            schema,
        )
        .unwrap()
    }

    /// Rows of a key, a time and a value, all Int64.
    fn ktv_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("t", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]))
    }

    /// Sessions of (k, t, v) rows arriving in `arrivals` order in chunks of `chunk`, the
    /// watermark 2 behind the latest time after each chunk, restored at the chunks
    /// `restores` names, each attempt keeping its state as `budgets` says in turn (`None`:
    /// in memory). Returns the closed sessions (start, end, key, count, sum), sorted, and
    /// the number of late records.
    fn run_sessions(
        arrivals: &[(i64, i64, i64)],
        chunk: usize,
        restores: &[usize],
        budgets: &[Option<usize>],
    ) -> (Vec<[i64; 5]>, u64) {
        use datafusion::functions_aggregate::expr_fn::sum;
        let schema = ktv_schema();
        let factory = session_factory(
            4,
            &[count(col("v")).alias("n"), sum(col("v")).alias("total")],
            schema.clone(),
        );
        let info = SubtaskInfo {
            index: 0,
            parallelism: 1,
            max_parallelism: 8,
        };
        let mut max_time = i64::MIN;
        let chunks = arrivals.chunks(chunk).map(|part| {
            let column = |f: fn(&(i64, i64, i64)) -> i64| -> ArrayRef {
                Arc::new(Int64Array::from_iter_values(part.iter().map(f)))
            };
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![column(|r| r.0), column(|r| r.1), column(|r| r.2)],
            )
            .unwrap();
            max_time = part.iter().map(|r| r.1).fold(max_time, i64::max);
            (batch, max_time)
        });
        let emitted = crate::state::Restarts::run(&factory, info, chunks, restores, budgets, 2);
        let mut rows = Vec::new();
        for b in &emitted {
            let int = |i: usize| -> Vec<i64> {
                let c = datafusion::arrow::compute::cast(b.column(i), &DataType::Int64).unwrap();
                c.as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            };
            let columns: Vec<Vec<i64>> = (0..5).map(int).collect();
            rows.extend((0..b.num_rows()).map(|r| std::array::from_fn(|c| columns[c][r])));
        }
        rows.sort();
        let late = factory
            .counters()
            .into_iter()
            .find(|(name, _)| name == "late_records")
            .map_or(0, |(_, c)| c.get());
        (rows, late)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Restored at random points, keeping state in memory or in RocksDB under a budget
        /// (of one byte: every key is written out after each batch) that changes at each
        /// restore: the same sessions close, and the same records are late, as in one run
        /// in memory.
        #[test]
        fn restores_and_storages_change_no_session(
            raw in proptest::collection::vec((0i64..6, 0i64..200, 0i64..10), 1..80),
            chunk in 1usize..6,
            restores in proptest::collection::vec(0usize..30, 0..3),
            budgets in proptest::collection::vec(
                proptest::option::of(proptest::prop_oneof![
                    proptest::strategy::Just(1usize),
                    proptest::strategy::Just(1 << 20)
                ]),
                4,
            ),
        ) {
            // Out of order by up to 10 (the third number), so that some records are late.
            let mut arrivals: Vec<(i64, (i64, i64, i64))> =
                raw.iter().map(|&(k, t, d)| (t + d, (k, t, d))).collect();
            arrivals.sort();
            let arrivals: Vec<(i64, i64, i64)> = arrivals.into_iter().map(|(_, r)| r).collect();
            let expected = run_sessions(&arrivals, chunk, &[], &[None]);
            let got = run_sessions(&arrivals, chunk, &restores, &budgets);
            proptest::prop_assert_eq!(got, expected);
        }
    }

    /// The row format of (k, t, v) rows whose session windows count and sum v.
    fn stored_rows() -> StoredRows {
        use datafusion::functions_aggregate::expr_fn::sum;
        let schema = ktv_schema();
        let aggregates = [count(col("v")).alias("n"), sum(col("v")).alias("total")];
        let cfg = session_config(4, &aggregates, schema.clone(), schema, 8);
        StoredRows::plan(&cfg).unwrap().unwrap().0
    }

    /// The sessions of rows keyed by their first column `k`, in time `t`, closing after
    /// `gap`, with `aggregates`.
    fn session_config(
        gap: i64,
        aggregates: &[datafusion::logical_expr::Expr],
        input: SchemaRef,
        output: SchemaRef,
        max_parallelism: usize,
    ) -> SessionConfig {
        SessionConfig {
            gap,
            lateness: 0,
            time_column: "t".into(),
            key_indices: vec![0],
            key_schema: Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)])),
            aggregates: crate::aggregate::Aggregates::try_new(aggregates, &input).unwrap(),
            output,
            max_parallelism,
            input,
            spilled_bytes: Counter::default(),
        }
    }

    #[test]
    fn a_keys_sessions_round_trip_in_the_row_format() {
        let codec = stored_rows();
        let columns: Vec<ArrayRef> = (0..3)
            .map(|c| Arc::new(Int64Array::from(vec![c, c + 10, c + 20])) as ArrayRef)
            .collect();
        let rows = codec.rows.convert_columns(&columns).unwrap();
        let mut first = FlatRows::one(rows.row(0).as_ref());
        first.push(rows.row(1).as_ref());
        let mut sessions: KeySessions = vec![
            Session {
                start: 1,
                last: 3,
                rows: first,
            },
            Session {
                start: 9,
                last: 9,
                rows: FlatRows::one(rows.row(2).as_ref()),
            },
        ];
        let entry = codec.encode(b"k", &mut sessions).unwrap();
        assert!(entry.starts_with(SESSION_ENTRY), "fixed-width rows");
        let back = codec.decode(0, b"k", &entry).unwrap();
        let bounds: Vec<_> = back
            .iter()
            .map(|s| (s.start, s.last, s.rows.len()))
            .collect();
        assert_eq!(bounds, vec![(1, 3, 2), (9, 9, 1)]);
        assert_eq!(back[0].rows.iter().nth(1), sessions[0].rows.iter().nth(1));
        // The same sessions as columns, for a restore with state in memory.
        let columns = codec.entry_rows(0, &entry).unwrap();
        assert_eq!(columns.numbers.values(), &[0, 0, 1]);
        assert_eq!(
            columns.columns.len(),
            3,
            "the key and each aggregate's argument"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Fuzz: a key's sessions entry from a damaged or foreign checkpoint is an error or
        /// some sessions, never a panic, even with a valid header and checksum around any
        /// bytes.
        #[test]
        fn session_entries_never_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            framed in proptest::bool::ANY,
        ) {
            let codec = stored_rows();
            let fixed = codec.fixed.as_ref().expect("Int64 rows are fixed-width");
            let entry = if framed { fixed.frame(SESSION_ENTRY, &bytes) } else { bytes.clone() };
            let _ = codec.decode(0, b"k", &entry);
            let _ = codec.entry_rows(0, &entry);
        }
    }

    #[test]
    fn a_restored_session_number_shared_by_two_keys_is_two_sessions() {
        let factory = session_factory(4, &[count(col("v")).alias("n")], ktv_schema());
        let info = SubtaskInfo {
            index: 0,
            parallelism: 1,
            max_parallelism: 8,
        };
        // Rows of keys 1 and 2 numbered as one session (no checkpoint writes that).
        let rows: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(Int64Array::from(vec![5, 6])),
        ];
        let entry = encode_batch(&entry_batch(&[(0, 1)], &[0, 0], rows).unwrap()).unwrap();
        let mut op = factory.create(info).unwrap();
        op.restore_state(RestoredState {
            keyed: vec![(0, SESSIONS.to_vec(), entry)],
            operator: vec![b"[[1,false]]".to_vec()],
            ..Default::default()
        })
        .unwrap();
        let mut out = Output::default();
        op.on_end_of_input(&mut out).unwrap();
        let rows: usize = out.drain().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 2, "one session per key");
    }

    #[test]
    fn a_record_bridging_two_sessions_merges_them_and_frees_batches() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("t", DataType::Int64, false),
        ]));
        let factory = session_factory(10, &[count(col("t")).alias("n")], schema.clone());
        let batch = |k: Vec<i64>, t: Vec<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(k)), Arc::new(Int64Array::from(t))],
            )
            .unwrap()
        };
        let cfg = session_config(
            10,
            &[count(col("t")).alias("n")],
            schema.clone(),
            factory.output_schema(),
            128,
        );
        let late = LateSide::try_new(
            &LateRecords::Drop,
            Default::default(),
            SubtaskInfo {
                index: 0,
                parallelism: 1,
                max_parallelism: 128,
            },
            schema.clone(),
        )
        .unwrap();
        let mut s = SessionWindows::new(cfg, late).unwrap();
        let mut out = Output::default();
        s.on_batch(batch(vec![1, 1, 2], vec![0, 15, 0]), &mut out)
            .unwrap();
        assert_eq!(s.open_sessions(), 3);
        s.on_batch(batch(vec![1], vec![8]), &mut out).unwrap();
        assert_eq!(
            s.open_sessions(),
            2,
            "8 bridges [0, 10) and [15, 25) for key 1"
        );
        s.on_watermark(20, &mut out).unwrap();
        let fired: Vec<RecordBatch> = out.drain().collect();
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].num_rows(), 1, "key 2's session [0, 10) closed");
        s.on_end_of_input(&mut out).unwrap();
        let last: Vec<RecordBatch> = out.drain().collect();
        let n = last[0]
            .column(3)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(n.values(), &[3]);
        assert!(s.pending.is_empty());
    }
}
