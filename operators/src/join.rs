//! Stream joins of two keyed inputs: window joins, interval joins and regular joins (unbounded,
//! or bounded by a state time-to-live), inner or left outer.
//!
//! Both sides arrive hash-partitioned on their join keys, so rows with equal keys meet in one
//! subtask. With state in RocksDB, rows are kept per join key in the store under the memory
//! budget (see [`stored`]). Otherwise each side keeps its rows in memory, found by key, and
//! laid out in *buckets* (a window for a window join, a slice of event time otherwise) per key
//! group: a checkpoint rewrites only the buckets that changed, expiry drops whole buckets, and
//! state moves between parallelisms by key group like every other keyed operator's.
//!
//! Output is append-only, so every emitted row is final:
//! - a window join emits a window's pairs when the watermark passes the window's end;
//! - interval and regular joins emit a pair as soon as its second row arrives;
//! - a left outer join emits a left row without a match, padded with nulls, once no right row
//!   can match it any more: when the watermark has passed its time plus the upper bound (or
//!   the TTL), and for an unbounded join only at the end of input. (Flink SQL emits such rows
//!   at once and retracts them later; an append-only sink could not take the retraction.)
//!
//! Time bounds are in event time, so a replay after a failure, at any parallelism, joins
//! exactly the same pairs: rows with a time at or below the watermark (which promised no such
//! row would come) are late, counted and dropped, because state they could have matched may
//! already be gone.

use crate::error::{column_index, OperatorError, Result};
use crate::keyed::{is_timer, KEY};
use crate::window::{window_field, WindowSpec, WINDOW_END, WINDOW_START};
use datafusion::arrow::array::{
    new_empty_array, new_null_array, Array, ArrayRef, BooleanArray, Int64Array, RecordBatch,
    UInt32Array,
};
use datafusion::arrow::compute::{interleave, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::hash_utils::RandomState;
use hashbrown::HashTable;
use oxflow_runtime::exchange::{hash_keys, key_group};
use oxflow_runtime::metrics::Counter;
use oxflow_runtime::operator::{Operator, OperatorFactory, Output, SubtaskInfo};
use oxflow_runtime::state::{RestoredState, StateSnapshot, StateStore, StoreUse};
use oxflow_runtime::watermark::event_times;
use oxflow_runtime::EventTime;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// Which rows a join emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinType {
    /// Only pairs of matching rows.
    Inner,
    /// Pairs, and every left row that matched nothing, with nulls for the right columns.
    LeftOuter,
}

/// Which rows with equal keys join, and so how long they are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinSpec {
    /// Rows in the same window of both sides (tumbling or hopping, on each side's event
    /// time). Output starts with `window_start, window_end`.
    Window(WindowSpec),
    /// `right.time` between `left.time + lower` and `left.time + upper`, both inclusive.
    Interval {
        /// Lower bound, in milliseconds (may be negative).
        lower: i64,
        /// Upper bound, in milliseconds (at least `lower`).
        upper: i64,
    },
    /// Every pair with equal keys. With a TTL, a row is kept for `ttl` of event time after its
    /// own timestamp, so two rows join when their times are at most `ttl` apart; without one,
    /// state grows with the input.
    Regular {
        /// How long, in event time, a row stays in state.
        ttl: Option<Duration>,
    },
}

/// A join of a left and a right stream.
#[derive(Debug, Clone)]
pub struct JoinSettings {
    /// Inner or left outer.
    pub join_type: JoinType,
    /// Which rows join.
    pub spec: JoinSpec,
    /// Key columns of the left input.
    pub left_keys: Vec<String>,
    /// Key columns of the right input, as many as the left's and of the same types.
    pub right_keys: Vec<String>,
    /// Event-time column of the left input (needed unless the join is regular without TTL).
    pub left_time: Option<String>,
    /// Event-time column of the right input.
    pub right_time: Option<String>,
}

/// Time bounds of a join in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bounds {
    Unbounded,
    /// `right.time - left.time` in `lower..=upper`.
    Interval {
        lower: i64,
        upper: i64,
    },
    Window {
        size: i64,
        slide: i64,
    },
}

impl Bounds {
    /// Whether a row at `time` comes too late at `watermark` to join: at or below a
    /// watermark, state it could have matched may be gone (an unbounded join has none).
    fn is_late(&self, watermark: EventTime, time: EventTime) -> bool {
        *self != Bounds::Unbounded && watermark != EventTime::MIN && time <= watermark
    }

    /// Whether a row of one side at `time` joins one of the other at `other` (both of a key):
    /// `right.time - left.time` within the bounds (any for an unbounded join).
    fn joins(&self, side: usize, time: EventTime, other: EventTime) -> bool {
        let (lower, upper) = match self {
            Bounds::Interval { lower, upper } => (*lower, *upper),
            _ => (i64::MIN / 2, i64::MAX / 2),
        };
        let diff = if side == LEFT {
            other - time
        } else {
            time - other
        };
        (lower..=upper).contains(&diff)
    }

    /// The time a window ending at `end` fires at: when the watermark reaches it.
    fn fires_at(end: EventTime) -> EventTime {
        end - 1
    }

    /// Whether the window ending at `end` has fired at `watermark`.
    fn fired(end: EventTime, watermark: EventTime) -> bool {
        watermark != EventTime::MIN && Bounds::fires_at(end) <= watermark
    }

    /// The ends of the windows of `size` every `slide` that hold `time`, latest first.
    fn window_ends(time: EventTime, size: i64, slide: i64) -> impl Iterator<Item = EventTime> {
        let last_start = time - time.rem_euclid(slide);
        (0..)
            .map(move |k| last_start - k * slide)
            .take_while(move |start| start + size > time)
            .map(move |start| start + size)
    }

    /// The width of the time slices state is laid out in (the window for a window join).
    fn slice(&self) -> i64 {
        match self {
            // Wide enough that a long run has few buckets, narrow enough that a checkpoint
            // rewrites only recent ones.
            Bounds::Unbounded => 10_000,
            Bounds::Interval { lower, upper } => ((upper - lower) / 2).clamp(100, 10_000),
            Bounds::Window { .. } => 1,
        }
    }
}

/// Builds the join operator of each subtask; see the module documentation.
pub struct StreamJoin {
    settings: JoinSettings,
    bounds: Bounds,
    left: SchemaRef,
    right: SchemaRef,
    output: SchemaRef,
    late_records: Counter,
    spilled_bytes: Counter,
}

/// The key, time and column layout of one input.
#[derive(Debug, Clone)]
struct SideLayout {
    schema: SchemaRef,
    keys: Vec<usize>,
    time: Option<usize>,
}

fn time_index(schema: &Schema, column: Option<&str>, side: &str) -> Result<Option<usize>> {
    let Some(column) = column else {
        return Ok(None);
    };
    let i = column_index(schema, column, &format!("the join's {side} input"))?;
    match schema.field(i).data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Int64 => Ok(Some(i)),
        other => Err(OperatorError::InvalidWindow(format!(
            "join: the {side} event-time column `{column}` has type {other}, not Timestamp(Millisecond)"
        ))),
    }
}

impl StreamJoin {
    /// Plans a join of `left` and `right`; errors name the column or bound at fault.
    pub fn try_new(settings: JoinSettings, left: SchemaRef, right: SchemaRef) -> Result<Self> {
        let invalid = |m: String| Err(OperatorError::InvalidWindow(format!("join: {m}")));
        if settings.left_keys.is_empty() || settings.left_keys.len() != settings.right_keys.len() {
            return invalid(format!(
                "needs as many right keys as left keys, and at least one: {:?} and {:?}",
                settings.left_keys, settings.right_keys
            ));
        }
        for (l, r) in settings.left_keys.iter().zip(&settings.right_keys) {
            let lt = left
                .field(column_index(&left, l, "the join's left keys")?)
                .data_type();
            let rt = right
                .field(column_index(&right, r, "the join's right keys")?)
                .data_type();
            if lt != rt {
                return invalid(format!(
                    "key `{l}` is {lt} on the left but `{r}` is {rt} on the right; cast one so equal keys meet"
                ));
            }
        }
        let bounds = match &settings.spec {
            JoinSpec::Regular { ttl: None } => Bounds::Unbounded,
            JoinSpec::Regular { ttl: Some(ttl) } => {
                let ttl = ttl.as_millis() as i64;
                if ttl <= 0 {
                    return invalid("a state TTL must be at least 1 ms".into());
                }
                Bounds::Interval {
                    lower: -ttl,
                    upper: ttl,
                }
            }
            JoinSpec::Interval { lower, upper } => {
                if lower > upper {
                    return invalid(format!(
                        "interval lower bound {lower} ms is above the upper bound {upper} ms"
                    ));
                }
                Bounds::Interval {
                    lower: *lower,
                    upper: *upper,
                }
            }
            JoinSpec::Window(w @ (WindowSpec::Tumbling { .. } | WindowSpec::Hopping { .. })) => {
                w.validate()?;
                let (size, slide) = match w {
                    WindowSpec::Tumbling { size } => (*size, *size),
                    WindowSpec::Hopping { size, slide } => (*size, *slide),
                    _ => unreachable!("matched above"),
                };
                Bounds::Window {
                    size: size.as_millis() as i64,
                    slide: slide.as_millis() as i64,
                }
            }
            JoinSpec::Window(other) => {
                return invalid(format!(
                    "a window join needs tumbling or hopping windows, not {other:?}"
                ))
            }
        };
        if bounds != Bounds::Unbounded
            && (settings.left_time.is_none() || settings.right_time.is_none())
        {
            return invalid(
                "a window, interval or TTL join needs the event-time column of both inputs; set watermarks on both sources".into(),
            );
        }
        time_index(&left, settings.left_time.as_deref(), "left")?;
        time_index(&right, settings.right_time.as_deref(), "right")?;
        let mut fields: Vec<Field> = Vec::new();
        if matches!(bounds, Bounds::Window { .. }) {
            fields.push(window_field(WINDOW_START));
            fields.push(window_field(WINDOW_END));
        }
        for f in left.fields() {
            if fields.iter().any(|g| g.name() == f.name()) {
                return invalid(format!(
                    "the left input's column `{}` clashes with the window bounds; rename it first",
                    f.name()
                ));
            }
            fields.push(f.as_ref().clone());
        }
        for f in right.fields() {
            // Clashing right columns are prefixed, as `right_id` for a second `id`.
            let mut name = f.name().clone();
            while fields.iter().any(|g| g.name() == &name) {
                name = format!("right_{name}");
            }
            let nullable = f.is_nullable() || settings.join_type == JoinType::LeftOuter;
            fields.push(f.as_ref().clone().with_name(name).with_nullable(nullable));
        }
        Ok(StreamJoin {
            settings,
            bounds,
            left,
            right,
            output: Arc::new(Schema::new(fields)),
            late_records: Counter::default(),
            spilled_bytes: Counter::default(),
        })
    }

    fn layout(&self, side: usize) -> Result<SideLayout> {
        let (schema, keys, time) = match side {
            LEFT => (
                &self.left,
                &self.settings.left_keys,
                &self.settings.left_time,
            ),
            _ => (
                &self.right,
                &self.settings.right_keys,
                &self.settings.right_time,
            ),
        };
        let keys = keys
            .iter()
            .map(|k| column_index(schema, k, "the join's keys"))
            .collect::<Result<Vec<_>>>()?;
        let time = match self.bounds {
            Bounds::Unbounded => None,
            _ => time_index(
                schema,
                time.as_deref(),
                if side == LEFT { "left" } else { "right" },
            )?,
        };
        Ok(SideLayout {
            schema: schema.clone(),
            keys,
            time,
        })
    }
}

impl OperatorFactory for StreamJoin {
    fn name(&self) -> String {
        match self.settings.spec {
            JoinSpec::Window(_) => "window-join",
            JoinSpec::Interval { .. } => "interval-join",
            JoinSpec::Regular { .. } => "join",
        }
        .into()
    }
    fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }
    fn inputs(&self) -> usize {
        2
    }
    fn counters(&self) -> Vec<(String, Counter)> {
        vec![
            ("late_records".into(), self.late_records.clone()),
            ("spilled_bytes".into(), self.spilled_bytes.clone()),
        ]
    }
    fn create(&self, subtask: SubtaskInfo) -> oxflow_runtime::Result<Box<dyn Operator>> {
        let left = self.layout(LEFT)?;
        let key_fields: Vec<SortField> = left
            .keys
            .iter()
            .map(|&i| SortField::new(left.schema.field(i).data_type().clone()))
            .collect();
        let slice = self.bounds.slice();
        let sides = [
            SideState::new(left, slice),
            SideState::new(self.layout(RIGHT)?, slice),
        ];
        Ok(Box::new(JoinOperator {
            join_type: self.settings.join_type,
            bounds: self.bounds,
            output: self.output.clone(),
            keys: RowConverter::new(key_fields).map_err(OperatorError::from)?,
            sides,
            unmatched: BTreeMap::new(),
            watermark: EventTime::MIN,
            late_records: self.late_records.clone(),
            max_parallelism: subtask.max_parallelism,
            windowed: Vec::new(),
            codec: stored::JoinCodec::plan(&self.left, &self.right)?,
            by_key: None,
            spilled_bytes: self.spilled_bytes.clone(),
        }))
    }
}

type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;
type HashSet<K> = std::collections::HashSet<K, RandomState>;

mod stored;

const LEFT: usize = 0;
const RIGHT: usize = 1;

/// Where a stored row is: its input batch in the side's [`Batches`], and its index there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RowRef {
    batch: u32,
    row: u32,
}

/// One stored row.
#[derive(Debug, Clone, Copy)]
struct Entry {
    time: EventTime,
    bucket: i64,
    at: RowRef,
    /// Whether a right row joined it, or it went out alone already (left rows of a left
    /// outer join): either way it needs no null-padded output any more.
    matched: bool,
}

/// The input batches a side's rows live in, each kept whole while any of its rows is stored.
///
/// Rows stay in the columns they arrived in: storing is a reference, and output is gathered
/// from the batches with `take`/`interleave`, column by column, instead of encoding each row
/// into bytes on the way in and decoding it on the way out. A batch goes when its last row
/// does; rows of one batch have nearby times, so they leave state together.
#[derive(Default)]
struct Batches {
    slots: Vec<Option<(RecordBatch, usize)>>,
    free: Vec<u32>,
    /// Batches whose count of stored rows reached zero, freed by [`Batches::sweep`] once the
    /// pairs of the current call, which may still point into them, are out.
    emptied: Vec<u32>,
    /// Scratch: a batch's position among the arrays of one gather.
    position: Vec<u32>,
}

impl Batches {
    fn add(&mut self, batch: RecordBatch) -> u32 {
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some((batch, 0));
                id
            }
            None => {
                self.slots.push(Some((batch, 0)));
                self.slots.len() as u32 - 1
            }
        };
        // Freed at the next sweep unless a row of it is stored.
        self.emptied.push(id);
        id
    }

    fn hold(&mut self, id: u32) {
        if let Some((_, live)) = &mut self.slots[id as usize] {
            *live += 1;
        }
    }

    fn release(&mut self, id: u32) {
        if let Some((_, live)) = &mut self.slots[id as usize] {
            *live -= 1;
            if *live == 0 {
                self.emptied.push(id);
            }
        }
    }

    /// Frees the batches no stored row points into.
    fn sweep(&mut self) {
        for id in std::mem::take(&mut self.emptied) {
            if matches!(self.slots[id as usize], Some((_, 0))) {
                self.slots[id as usize] = None;
                self.free.push(id);
            }
        }
    }

    fn batch(&self, id: u32) -> Result<&RecordBatch> {
        match self.slots.get(id as usize) {
            Some(Some((batch, _))) => Ok(batch),
            _ => Err(OperatorError::State(format!(
                "a join row points into batch {id}, which is no longer held"
            ))),
        }
    }

    /// The columns of the rows at `refs`, in order: one `take` when they share a batch (the
    /// usual case for the side that just arrived), an `interleave` otherwise.
    fn gather(&mut self, schema: &SchemaRef, refs: &[RowRef]) -> Result<Vec<ArrayRef>> {
        let Some(first) = refs.first() else {
            return Ok(schema
                .fields()
                .iter()
                .map(|f| new_empty_array(f.data_type()))
                .collect());
        };
        if refs.iter().all(|r| r.batch == first.batch) {
            let batch = self.batch(first.batch)?;
            let indices = UInt32Array::from_iter_values(refs.iter().map(|r| r.row));
            return Ok(batch
                .columns()
                .iter()
                .map(|c| take(c.as_ref(), &indices, None))
                .collect::<std::result::Result<_, _>>()?);
        }
        self.position.resize(self.slots.len(), u32::MAX);
        let mut batches: Vec<u32> = Vec::new();
        let mut indices = Vec::with_capacity(refs.len());
        for r in refs {
            let p = &mut self.position[r.batch as usize];
            if *p == u32::MAX {
                *p = batches.len() as u32;
                batches.push(r.batch);
            }
            indices.push((*p as usize, r.row as usize));
        }
        for &b in &batches {
            self.position[b as usize] = u32::MAX;
        }
        let held = batches
            .iter()
            .map(|&b| self.batch(b))
            .collect::<Result<Vec<_>>>()?;
        (0..schema.fields().len())
            .map(|c| {
                let arrays: Vec<&dyn Array> = held.iter().map(|b| b.column(c).as_ref()).collect();
                Ok(interleave(&arrays, &indices)?)
            })
            .collect()
    }
}

/// A join key's encoded bytes, inline when short (an integer key is 9 bytes in the row
/// format), so that finding a key reads the slot it is in and no second allocation.
enum KeyBytes {
    Inline {
        len: u8,
        bytes: [u8; KeyBytes::INLINE],
    },
    Heap(Box<[u8]>),
}

impl KeyBytes {
    const INLINE: usize = 22;

    fn new(key: &[u8]) -> KeyBytes {
        let mut bytes = KeyBytes::Inline {
            len: 0,
            bytes: [0; KeyBytes::INLINE],
        };
        bytes.set(key);
        bytes
    }

    fn set(&mut self, key: &[u8]) {
        match self {
            KeyBytes::Inline { len, bytes } if key.len() <= KeyBytes::INLINE => {
                bytes[..key.len()].copy_from_slice(key);
                *len = key.len() as u8;
            }
            KeyBytes::Heap(b) if b.len() == key.len() => b.copy_from_slice(key),
            _ if key.len() <= KeyBytes::INLINE => *self = KeyBytes::new(key),
            _ => *self = KeyBytes::Heap(key.into()),
        }
    }
}

impl std::ops::Deref for KeyBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            KeyBytes::Inline { len, bytes } => &bytes[..*len as usize],
            KeyBytes::Heap(b) => b,
        }
    }
}

/// The rows of one join key (for a window join: window and key).
struct KeySlot {
    hash: u64,
    key_group: u16,
    key: KeyBytes,
    /// Empty: the slot is free.
    entries: Vec<Entry>,
    /// The snapshot epoch and bucket this key last marked changed: its next row in the same
    /// bucket before the next snapshot need not mark it again (a hash-set insert per row).
    noted: Option<(u32, i64)>,
}

/// The most row entries a freed key slot keeps room for.
const REUSED_ENTRIES: usize = 16;

/// Rows by join key: a slab of keys found through a hash table of slot numbers, so a lookup
/// takes the encoded key as a slice and the hash the exchange computed. A slot is freed when
/// its last row leaves, which happens only as its last bucket is dropped, so no bucket lists
/// a freed slot; it keeps its key until it is reused, and then its buffers (the key's, and
/// room for up to [`REUSED_ENTRIES`] rows): keys come and go with every time slice, and a
/// reused slot seldom allocates.
#[derive(Default)]
struct KeyTable {
    slots: Vec<KeySlot>,
    free: Vec<u32>,
    index: HashTable<u32>,
}

impl KeyTable {
    fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(hash, |&s| {
                let slot = &slots[s as usize];
                slot.hash == hash && *slot.key == *key
            })
            .copied()
    }

    /// The slot of `key`, and whether it is new.
    fn find_or_insert(&mut self, hash: u64, key: &[u8], key_group: u16) -> (u32, bool) {
        if let Some(s) = self.find(hash, key) {
            return (s, false);
        }
        let s = match self.free.pop() {
            Some(s) => {
                let slot = &mut self.slots[s as usize];
                slot.hash = hash;
                slot.key_group = key_group;
                slot.key.set(key);
                // A hot key's rows (half of q4's bids go to one auction) leave a long list
                // behind: kept for the next key, every slot would end up that size.
                if slot.entries.capacity() > REUSED_ENTRIES {
                    slot.entries = Vec::new();
                } else {
                    slot.entries.clear();
                }
                slot.noted = None;
                s
            }
            None => {
                self.slots.push(KeySlot {
                    hash,
                    key_group,
                    key: KeyBytes::new(key),
                    entries: Vec::new(),
                    noted: None,
                });
                self.slots.len() as u32 - 1
            }
        };
        let slots = &self.slots;
        self.index
            .insert_unique(hash, s, |&t| slots[t as usize].hash);
        (s, true)
    }

    /// Frees slot `s`, whose last row just left.
    fn remove(&mut self, s: u32) {
        let hash = self.slots[s as usize].hash;
        if let Ok(e) = self.index.find_entry(hash, |&t| t == s) {
            e.remove();
        }
        self.free.push(s);
    }
}

/// Spreads the exchange's hash over all bits: within a subtask the hashes of its keys share
/// their residue modulo the key groups (`key_group` is `hash % max_parallelism`), which would
/// otherwise leave part of the table's buckets unused.
fn table_hash(exchange_hash: u64) -> u64 {
    exchange_hash
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(29)
}

/// The rows of one side.
struct SideState {
    layout: SideLayout,
    slice: i64,
    batches: Batches,
    keys: KeyTable,
    /// The key slots with rows in each bucket and key group. A key is listed when a row of
    /// it goes to another bucket than the key's previous row did, so an out-of-order row can
    /// list a key twice: readers skip repeats (a hash set here cost a second hash per row).
    buckets: BTreeMap<i64, BTreeMap<u16, Vec<u32>>>,
    /// Buckets changed since the last snapshot, and those the store holds.
    dirty: HashSet<(i64, u16)>,
    written: BTreeSet<(i64, u16)>,
    /// Counts snapshots, for [`KeySlot::noted`].
    epoch: u32,
}

/// The keys, hashes, key groups and times of a batch's rows.
struct PreparedRows {
    keys: Rows,
    /// Whether row i has a key without nulls (a key with a null matches nothing).
    keyed: Vec<bool>,
    hashes: Vec<u64>,
    key_groups: Vec<u16>,
    times: Vec<EventTime>,
}

impl SideState {
    fn new(layout: SideLayout, slice: i64) -> Self {
        SideState {
            layout,
            slice,
            batches: Batches::default(),
            keys: KeyTable::default(),
            buckets: BTreeMap::new(),
            dirty: HashSet::default(),
            written: BTreeSet::new(),
            epoch: 0,
        }
    }

    /// Encodes the keys of `batch`, hashes them as the exchange did (so they fall in the key
    /// groups the exchange routed them by), and reads their times.
    fn prepare(
        &self,
        batch: &RecordBatch,
        keys: &RowConverter,
        max_parallelism: usize,
    ) -> Result<PreparedRows> {
        let key_columns: Vec<ArrayRef> = self
            .layout
            .keys
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let encoded = keys.convert_columns(&key_columns)?;
        let mut hashes = Vec::new();
        hash_keys(&key_columns, &mut hashes)?;
        let n = batch.num_rows();
        let keyed = if key_columns.iter().all(|c| c.null_count() == 0) {
            vec![true; n]
        } else {
            (0..n)
                .map(|i| !key_columns.iter().any(|c| c.is_null(i)))
                .collect()
        };
        let key_groups = hashes
            .iter()
            .map(|&h| key_group(h, max_parallelism) as u16)
            .collect();
        let times = match self.layout.time {
            Some(t) => {
                let name = self.layout.schema.field(t).name().clone();
                event_times(batch, &name)?.to_vec()
            }
            None => vec![0; n],
        };
        Ok(PreparedRows {
            keys: encoded,
            keyed,
            hashes,
            key_groups,
            times,
        })
    }

    /// Stores `entry` under `key` (`hash` from [`table_hash`] or [`windowed_key`]),
    /// returning the key's slot.
    fn insert(&mut self, hash: u64, key: &[u8], key_group: u16, entry: Entry) -> u32 {
        let bucket = entry.bucket;
        self.batches.hold(entry.at.batch);
        let (s, new) = self.keys.find_or_insert(hash, key, key_group);
        let slot = &mut self.keys.slots[s as usize];
        if slot.noted != Some((self.epoch, bucket)) {
            self.dirty.insert((bucket, key_group));
            slot.noted = Some((self.epoch, bucket));
        }
        let entries = &mut slot.entries;
        if new || entries.last().is_none_or(|last| last.bucket != bucket) {
            self.buckets
                .entry(bucket)
                .or_default()
                .entry(key_group)
                .or_default()
                .push(s);
        }
        entries.push(entry);
        s
    }

    /// Removes every row of `bucket`, returning them with their key slots.
    fn drop_bucket(&mut self, bucket: i64) -> Vec<(u32, Entry)> {
        self.drop_bucket_where(bucket, |_| true)
    }

    /// Removes every row of `bucket`, returning those `wanted` picks with their key slots
    /// (expiry wants only the unmatched left rows of an outer join, not every row). Their
    /// batches stay held until the next [`Batches::sweep`], and the slots keep their keys.
    fn drop_bucket_where(
        &mut self,
        bucket: i64,
        wanted: impl Fn(&Entry) -> bool,
    ) -> Vec<(u32, Entry)> {
        let mut dropped = Vec::new();
        let Some(groups) = self.buckets.remove(&bucket) else {
            return dropped;
        };
        for (kg, slots) in groups {
            // A written entry is deleted at the next snapshot; one never written is
            // forgotten (without checkpoints, every bucket would stay listed for good).
            if self.written.contains(&(bucket, kg)) {
                self.dirty.insert((bucket, kg));
            } else {
                self.dirty.remove(&(bucket, kg));
            }
            for s in slots {
                let entries = &mut self.keys.slots[s as usize].entries;
                if entries.is_empty() {
                    // Listed twice, emptied by the first listing.
                    continue;
                }
                let batches = &mut self.batches;
                entries.retain(|e| {
                    let keep = e.bucket != bucket;
                    if !keep {
                        if wanted(e) {
                            dropped.push((s, *e));
                        }
                        batches.release(e.at.batch);
                    }
                    keep
                });
                if entries.is_empty() {
                    self.keys.remove(s);
                }
            }
        }
        dropped
    }

    /// Writes the buckets that changed since the last snapshot; `side` prefixes entry keys.
    fn snapshot(&mut self, side: u8, state: &mut StateSnapshot) -> Result<()> {
        self.epoch = self.epoch.wrapping_add(1);
        let mut dirty: Vec<(i64, u16)> = std::mem::take(&mut self.dirty).into_iter().collect();
        dirty.sort_unstable();
        for (bucket, kg) in dirty {
            let item = bucket_item(side, bucket);
            // A key may be listed twice (see `buckets`): its rows are written once.
            let mut seen: HashSet<u32> = HashSet::default();
            let entries: Vec<Entry> = self
                .buckets
                .get(&bucket)
                .and_then(|g| g.get(&kg))
                .into_iter()
                .flatten()
                .filter(|s| seen.insert(**s))
                .flat_map(|&s| self.keys.slots[s as usize].entries.iter())
                .filter(|e| e.bucket == bucket)
                .copied()
                .collect();
            if entries.is_empty() {
                if self.written.remove(&(bucket, kg)) {
                    state.delete(kg as usize, &item);
                }
                continue;
            }
            let refs: Vec<RowRef> = entries.iter().map(|e| e.at).collect();
            let columns = self.batches.gather(&self.layout.schema, &refs)?;
            let entry = stored::slice_entry(
                entries.iter().map(|e| e.time),
                entries.iter().map(|e| e.matched),
                columns,
            )?;
            state.put(kg as usize, &item, entry);
            self.written.insert((bucket, kg));
        }
        Ok(())
    }
}

fn bucket_item(side: u8, bucket: i64) -> Vec<u8> {
    let mut item = vec![side];
    item.extend_from_slice(&bucket.to_be_bytes());
    item
}

/// The join of one subtask.
struct JoinOperator {
    join_type: JoinType,
    bounds: Bounds,
    output: SchemaRef,
    /// Encodes keys of both sides alike (their types are equal).
    keys: RowConverter,
    sides: [SideState; 2],
    /// Left rows of a bounded left outer join still without a match, by the watermark at
    /// which nothing can match them any more (`time + upper`), as key slots of the left
    /// side: they go out alone exactly then, not when their whole time slice leaves state.
    /// A slot may have been freed and reused since; what is emitted from it is still only
    /// rows nothing can match at that watermark, each once.
    unmatched: BTreeMap<EventTime, Vec<u32>>,
    watermark: EventTime,
    late_records: Counter,
    max_parallelism: usize,
    /// Scratch for a window join's stored key (window end, then key).
    windowed: Vec<u8>,
    /// How rows become entries with state in RocksDB (`None`: the row format cannot hold
    /// them); taken by [`JoinOperator::use_store`].
    codec: Option<stored::JoinCodec>,
    /// The state, with state in RocksDB (then `sides` hold only batches being emitted).
    by_key: Option<stored::ByKey>,
    /// Counts the bytes written to the store early, with state in RocksDB.
    spilled_bytes: Counter,
}

/// A joined pair (or a left row alone), as stored rows.
type Pair = (RowRef, Option<RowRef>);

/// Writes a window join's stored key into `into` (the window's end, then the key) and
/// returns its table hash, from the key's exchange hash `key_hash`.
fn windowed_key(into: &mut Vec<u8>, end: EventTime, key: &[u8], key_hash: u64) -> u64 {
    into.clear();
    into.extend_from_slice(&end.to_be_bytes());
    into.extend_from_slice(key);
    table_hash(key_hash ^ (end as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
}

impl JoinOperator {
    /// Remembers an unmatched left row of a bounded left outer join, to emit it alone when
    /// the watermark passes its time plus the upper bound.
    fn track_unmatched(&mut self, slot: u32, time: EventTime) {
        if let (JoinType::LeftOuter, Bounds::Interval { upper, .. }) = (self.join_type, self.bounds)
        {
            self.unmatched.entry(time + upper).or_default().push(slot);
        }
    }

    /// Emits the left rows no right row can match any more at `watermark`.
    fn emit_unmatched(&mut self, watermark: EventTime, pairs: &mut Vec<Pair>) {
        let Bounds::Interval { upper, .. } = self.bounds else {
            return;
        };
        let later = self.unmatched.split_off(&(watermark + 1));
        let due = std::mem::replace(&mut self.unmatched, later);
        let left = &mut self.sides[LEFT];
        for s in due.into_values().flatten() {
            let slot = &mut left.keys.slots[s as usize];
            for e in slot.entries.iter_mut() {
                if !e.matched && e.time + upper <= watermark {
                    e.matched = true;
                    pairs.push((e.at, None));
                    left.dirty.insert((e.bucket, slot.key_group));
                }
            }
        }
    }

    /// Builds output rows from pairs; `window` adds the bounds columns.
    fn emit(
        &mut self,
        pairs: &[Pair],
        window: Option<(EventTime, EventTime)>,
        out: &mut Output,
    ) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let [left, right] = &mut self.sides;
        let mut columns: Vec<ArrayRef> = Vec::new();
        if let Some((start, end)) = window {
            let n = pairs.len();
            columns.push(Arc::new(
                datafusion::arrow::array::TimestampMillisecondArray::from(vec![start; n]),
            ));
            columns.push(Arc::new(
                datafusion::arrow::array::TimestampMillisecondArray::from(vec![end; n]),
            ));
        }
        let lefts: Vec<RowRef> = pairs.iter().map(|(l, _)| *l).collect();
        columns.extend(left.batches.gather(&left.layout.schema, &lefts)?);
        let matched: Vec<RowRef> = pairs.iter().filter_map(|(_, r)| *r).collect();
        let right_columns = right.batches.gather(&right.layout.schema, &matched)?;
        if matched.len() == pairs.len() {
            columns.extend(right_columns);
        } else {
            let mut next = 0u32;
            let indices: UInt32Array = pairs
                .iter()
                .map(|(_, r)| {
                    r.as_ref().map(|_| {
                        next += 1;
                        next - 1
                    })
                })
                .collect();
            for (c, field) in right_columns.iter().zip(right.layout.schema.fields()) {
                columns.push(if matched.is_empty() {
                    new_null_array(field.data_type(), pairs.len())
                } else {
                    take(c.as_ref(), &indices, None)?
                });
            }
        }
        out.emit(RecordBatch::try_new(self.output.clone(), columns)?);
        Ok(())
    }

    /// Frees the batches no stored row points into any more (after the pairs are out).
    fn sweep(&mut self) {
        for side in &mut self.sides {
            side.batches.sweep();
        }
    }

    fn on_side(&mut self, side: usize, batch: RecordBatch, out: &mut Output) -> Result<()> {
        let prepared = self.sides[side].prepare(&batch, &self.keys, self.max_parallelism)?;
        let n = batch.num_rows();
        let here = self.sides[side].batches.add(batch);
        let at = |i: usize| RowRef {
            batch: here,
            row: i as u32,
        };
        let mut late = 0u64;
        let mut pairs: Vec<Pair> = Vec::new();
        match self.bounds {
            Bounds::Window { size, slide } => {
                for i in 0..n {
                    let t = prepared.times[i];
                    let mut ends = Bounds::window_ends(t, size, slide).peekable();
                    if ends
                        .peek()
                        .is_some_and(|&last| Bounds::fired(last, self.watermark))
                    {
                        late += 1;
                        continue;
                    }
                    // A null key matches nothing, but a left outer join still emits the row
                    // with its windows: it is kept under the empty key, which no encoded key
                    // equals.
                    let key: &[u8] = match prepared.keyed[i] {
                        true => prepared.keys.row(i).data(),
                        false if side == LEFT && self.join_type == JoinType::LeftOuter => &[],
                        false => continue,
                    };
                    for end in ends.filter(|&end| !Bounds::fired(end, self.watermark)) {
                        let hash = windowed_key(&mut self.windowed, end, key, prepared.hashes[i]);
                        self.sides[side].insert(
                            hash,
                            &self.windowed,
                            prepared.key_groups[i],
                            Entry {
                                time: t,
                                bucket: end,
                                at: at(i),
                                matched: false,
                            },
                        );
                    }
                }
            }
            Bounds::Unbounded | Bounds::Interval { .. } => {
                let other = 1 - side;
                let mut newly_matched = Vec::new();
                for i in 0..n {
                    let t = prepared.times[i];
                    if self.bounds.is_late(self.watermark, t) {
                        late += 1;
                        continue;
                    }
                    if !prepared.keyed[i] {
                        if side == LEFT && self.join_type == JoinType::LeftOuter {
                            pairs.push((at(i), None));
                        }
                        continue;
                    }
                    let key = prepared.keys.row(i).data();
                    let hash = table_hash(prepared.hashes[i]);
                    let kg = prepared.key_groups[i];
                    let mut matched = false;
                    let others = &mut self.sides[other];
                    if let Some(s) = others.keys.find(hash, key) {
                        for e in others.keys.slots[s as usize].entries.iter_mut() {
                            if !self.bounds.joins(side, t, e.time) {
                                continue;
                            }
                            matched = true;
                            if side == LEFT {
                                pairs.push((at(i), Some(e.at)));
                            } else {
                                pairs.push((e.at, Some(at(i))));
                                if !e.matched && self.join_type == JoinType::LeftOuter {
                                    e.matched = true;
                                    newly_matched.push((e.bucket, kg));
                                }
                            }
                        }
                    }
                    if !newly_matched.is_empty() {
                        others.dirty.extend(newly_matched.drain(..));
                    }
                    let slice = self.sides[side].slice;
                    let slot = self.sides[side].insert(
                        hash,
                        key,
                        kg,
                        Entry {
                            time: t,
                            bucket: t.div_euclid(slice),
                            at: at(i),
                            matched,
                        },
                    );
                    if side == LEFT && !matched {
                        self.track_unmatched(slot, t);
                    }
                }
            }
        }
        self.late_records.add(late);
        self.emit(&pairs, None, out)?;
        self.sweep();
        Ok(())
    }

    /// Fires the windows that end at or before `watermark` (all: `None`).
    fn fire_windows(&mut self, watermark: Option<EventTime>, out: &mut Output) -> Result<()> {
        let Bounds::Window { size, .. } = self.bounds else {
            return Ok(());
        };
        let ends: BTreeSet<i64> = self.sides[LEFT]
            .buckets
            .keys()
            .chain(self.sides[RIGHT].buckets.keys())
            .copied()
            .filter(|&end| watermark.is_none_or(|w| Bounds::fires_at(end) <= w))
            .collect();
        for end in ends {
            let left = self.sides[LEFT].drop_bucket(end);
            let right = self.sides[RIGHT].drop_bucket(end);
            // Dropped slots keep their keys until an insert reuses them: none comes here.
            let right_keys = &self.sides[RIGHT].keys.slots;
            let mut by_key: HashMap<&[u8], Vec<RowRef>> = HashMap::default();
            for (s, e) in &right {
                by_key
                    .entry(&right_keys[*s as usize].key)
                    .or_default()
                    .push(e.at);
            }
            let left_keys = &self.sides[LEFT].keys.slots;
            let mut pairs = Vec::new();
            for (s, e) in &left {
                match by_key.get(&*left_keys[*s as usize].key) {
                    Some(rights) => {
                        for r in rights {
                            pairs.push((e.at, Some(*r)));
                        }
                    }
                    None if self.join_type == JoinType::LeftOuter => pairs.push((e.at, None)),
                    None => {}
                }
            }
            self.emit(&pairs, Some((end - size, end)), out)?;
        }
        self.sweep();
        Ok(())
    }

    /// Drops the time slices no future row can join (`None`: all, at the end of input),
    /// emitting the unmatched left rows of a left outer join.
    fn expire(&mut self, watermark: Option<EventTime>, out: &mut Output) -> Result<()> {
        let (lower, upper) = match self.bounds {
            Bounds::Interval { lower, upper } => (lower, upper),
            Bounds::Unbounded if watermark.is_none() => (0, 0),
            _ => return Ok(()),
        };
        let mut pairs = Vec::new();
        if let Some(w) = watermark {
            self.emit_unmatched(w, &mut pairs);
        }
        for side in [LEFT, RIGHT] {
            let slice = self.sides[side].slice;
            // A row of time t is needed while a future row (time > watermark) can join it:
            // left rows until t + upper, right rows until t - lower.
            let reach = if side == LEFT { upper } else { -lower };
            let expired: Vec<i64> = self.sides[side]
                .buckets
                .keys()
                .copied()
                .filter(|&b| watermark.is_none_or(|w| (b + 1) * slice - 1 + reach <= w))
                .collect();
            let outer = side == LEFT && self.join_type == JoinType::LeftOuter;
            for bucket in expired {
                for (_, e) in self.sides[side].drop_bucket_where(bucket, |e| outer && !e.matched) {
                    pairs.push((e.at, None));
                }
            }
        }
        self.emit(&pairs, None, out)?;
        self.sweep();
        Ok(())
    }

    fn restore(&mut self, kg: usize, item: &[u8], value: &[u8]) -> Result<()> {
        if is_timer(item) {
            // A timer of state kept in RocksDB: here timers come from the rows.
            return Ok(());
        }
        if item.first() == Some(&KEY) {
            return self.restore_key_into_memory(kg, item, value);
        }
        let (side, bucket, times, matched, rows) = self.parse_slice(kg, item, value)?;
        self.restore_rows(kg, side, Some(bucket), &times, &matched, rows)
    }

    /// Takes back stored rows of `side` in key group `kg`, in `bucket` (`None`: each in the
    /// time slice of its time).
    fn restore_rows(
        &mut self,
        kg: usize,
        side: usize,
        bucket: Option<i64>,
        times: &Int64Array,
        matched: &BooleanArray,
        rows: RecordBatch,
    ) -> Result<()> {
        let bad = |m: String| OperatorError::State(format!("join rows in key group {kg}: {m}"));
        let prepared = self.sides[side].prepare(&rows, &self.keys, self.max_parallelism)?;
        let windowed = matches!(self.bounds, Bounds::Window { .. });
        if !windowed && prepared.keyed.iter().any(|k| !k) {
            return Err(bad("a stored row has a null key".into()));
        }
        let n = rows.num_rows();
        let here = self.sides[side].batches.add(rows);
        for i in 0..n {
            let key: &[u8] = if prepared.keyed[i] {
                prepared.keys.row(i).data()
            } else {
                &[]
            };
            let time = times.value(i);
            let slice = self.sides[side].slice;
            let bucket = bucket.unwrap_or_else(|| time.div_euclid(slice));
            let (hash, key) = if windowed {
                let hash = windowed_key(&mut self.windowed, bucket, key, prepared.hashes[i]);
                (hash, &self.windowed[..])
            } else {
                (table_hash(prepared.hashes[i]), key)
            };
            let slot = self.sides[side].insert(
                hash,
                key,
                kg as u16,
                Entry {
                    time,
                    bucket,
                    at: RowRef {
                        batch: here,
                        row: i as u32,
                    },
                    matched: matched.value(i),
                },
            );
            if side == LEFT && !matched.value(i) {
                self.track_unmatched(slot, time);
            }
        }
        self.sweep();
        // `insert` marked the bucket changed: a restored subtask starts a new store, and its
        // next checkpoint must hold what it restored.
        Ok(())
    }
}

impl Operator for JoinOperator {
    fn on_batch(&mut self, _: RecordBatch, _: &mut Output) -> oxflow_runtime::Result<()> {
        Err(OperatorError::State(
            "a join must start a stage with two inputs; it received a batch from no side".into(),
        )
        .into())
    }

    fn on_input_batch(
        &mut self,
        input: usize,
        batch: RecordBatch,
        out: &mut Output,
    ) -> oxflow_runtime::Result<()> {
        if input > RIGHT {
            return Err(
                OperatorError::State(format!("a join has 2 inputs, not {}", input + 1)).into(),
            );
        }
        if self.by_key.is_some() {
            return Ok(self.on_side_stored(input, batch, out)?);
        }
        Ok(self.on_side(input, batch, out)?)
    }

    fn on_watermark(
        &mut self,
        watermark: EventTime,
        out: &mut Output,
    ) -> oxflow_runtime::Result<()> {
        self.watermark = watermark;
        if self.by_key.is_some() {
            // An unbounded join's timers wait for the end of input.
            if self.bounds != Bounds::Unbounded {
                self.fire_stored(watermark, out)?;
            }
            return Ok(());
        }
        self.fire_windows(Some(watermark), out)?;
        Ok(self.expire(Some(watermark), out)?)
    }

    fn on_end_of_input(&mut self, out: &mut Output) -> oxflow_runtime::Result<()> {
        if self.by_key.is_some() {
            return Ok(self.fire_stored(EventTime::MAX, out)?);
        }
        self.fire_windows(None, out)?;
        Ok(self.expire(None, out)?)
    }

    fn use_state_store(&mut self, store: StateStore) -> StoreUse {
        self.use_store(store, self.spilled_bytes.clone())
    }

    fn snapshot_state(&mut self, state: &mut StateSnapshot) -> oxflow_runtime::Result<()> {
        if let Some(by_key) = &mut self.by_key {
            return Ok(by_key.snapshot(state)?);
        }
        for (side, s) in self.sides.iter_mut().enumerate() {
            s.snapshot(side as u8, state)?;
        }
        Ok(())
    }

    fn restore_state(&mut self, state: RestoredState) -> oxflow_runtime::Result<()> {
        for (kg, item, value) in state.keyed {
            match self.by_key {
                Some(_) => self.restore_stored(kg, &item, &value)?,
                None => self.restore(kg, &item, &value)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A test row: side, key, time, value.
    #[derive(Debug, Clone, Copy)]
    struct Row {
        left: bool,
        key: Option<i64>,
        time: i64,
        value: i64,
    }

    type Out = (Option<i64>, Vec<Option<i64>>);

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("t", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]))
    }

    fn settings(join_type: JoinType, spec: JoinSpec) -> JoinSettings {
        JoinSettings {
            join_type,
            spec,
            left_keys: vec!["k".into()],
            right_keys: vec!["k".into()],
            left_time: Some("t".into()),
            right_time: Some("t".into()),
        }
    }

    fn batch(rows: &[Row]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.key))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.time))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.value))),
            ],
        )
        .unwrap()
    }

    /// Output rows as (window start, the six side columns), sorted.
    fn rows_of(batches: &[RecordBatch], windowed: bool) -> Vec<Out> {
        let mut rows = Vec::new();
        for b in batches {
            let skip = if windowed { 2 } else { 0 };
            let col = |i: usize| -> Vec<Option<i64>> {
                let c = b.column(i);
                match c.data_type() {
                    DataType::Timestamp(..) => {
                        let c = datafusion::arrow::compute::cast(c, &DataType::Int64).unwrap();
                        c.as_any()
                            .downcast_ref::<Int64Array>()
                            .unwrap()
                            .iter()
                            .collect()
                    }
                    _ => c
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .iter()
                        .collect(),
                }
            };
            let cols: Vec<Vec<Option<i64>>> = (skip..skip + 6).map(col).collect();
            let starts = windowed.then(|| col(0));
            for i in 0..b.num_rows() {
                let start = starts.as_ref().and_then(|s| s[i]);
                rows.push((start, cols.iter().map(|c| c[i]).collect()));
            }
        }
        rows.sort();
        rows
    }

    /// The join computed the obvious way, over all rows at once.
    fn naive(rows: &[Row], join_type: JoinType, spec: &JoinSpec) -> Vec<Out> {
        let lefts: Vec<&Row> = rows.iter().filter(|r| r.left).collect();
        let rights: Vec<&Row> = rows.iter().filter(|r| !r.left).collect();
        let cols = |l: &Row, r: Option<&Row>| {
            vec![
                l.key,
                Some(l.time),
                Some(l.value),
                r.and_then(|r| r.key),
                r.map(|r| r.time),
                r.map(|r| r.value),
            ]
        };
        let mut out = Vec::new();
        for l in lefts {
            // Each window (or the one unwindowed case) the left row is in.
            let windows: Vec<Option<(i64, i64)>> = match spec {
                JoinSpec::Window(WindowSpec::Tumbling { size }) => {
                    let s = size.as_millis() as i64;
                    vec![Some((l.time - l.time.rem_euclid(s), s))]
                }
                JoinSpec::Window(WindowSpec::Hopping { size, slide }) => {
                    let (s, h) = (size.as_millis() as i64, slide.as_millis() as i64);
                    let mut w = Vec::new();
                    let mut start = l.time - l.time.rem_euclid(h);
                    while start + s > l.time {
                        w.push(Some((start, s)));
                        start -= h;
                    }
                    w
                }
                _ => vec![None],
            };
            for w in windows {
                let joins = |r: &Row| {
                    if l.key.is_none() || l.key != r.key {
                        return false;
                    }
                    match (spec, w) {
                        (JoinSpec::Window(_), Some((start, size))) => {
                            r.time >= start && r.time < start + size
                        }
                        (JoinSpec::Interval { lower, upper }, _) => {
                            (*lower..=*upper).contains(&(r.time - l.time))
                        }
                        (JoinSpec::Regular { ttl: Some(ttl) }, _) => {
                            (r.time - l.time).abs() <= ttl.as_millis() as i64
                        }
                        _ => true,
                    }
                };
                let matched: Vec<&&Row> = rights.iter().filter(|r| joins(r)).collect();
                let start = w.map(|(s, _)| s);
                for r in &matched {
                    out.push((start, cols(l, Some(r))));
                }
                if matched.is_empty() && join_type == JoinType::LeftOuter {
                    out.push((start, cols(l, None)));
                }
            }
        }
        out.sort();
        out
    }

    /// Runs the join over `rows` in arrival order, `chunk` rows per batch (split where the
    /// side changes), a watermark `delay` behind the latest time after each batch, and a
    /// snapshot into RocksDB and restore into a fresh operator before each batch in `restores`.
    fn run(
        factory: &StreamJoin,
        rows: &[Row],
        chunk: usize,
        delay: i64,
        restores: &[usize],
    ) -> Vec<RecordBatch> {
        run_in(factory, rows, chunk, delay, restores, &[None])
    }

    /// As [`run`], with state in RocksDB under a budget of `budgets[0]` bytes (`None`: in
    /// memory), and after the n-th restore `budgets[n]` (cycling through them).
    fn run_in(
        factory: &StreamJoin,
        rows: &[Row],
        chunk: usize,
        delay: i64,
        restores: &[usize],
        budgets: &[Option<usize>],
    ) -> Vec<RecordBatch> {
        let mut restarts = crate::state::Restarts::new();
        let mut op = restarts.create(factory, info(), budgets[0]);
        let mut restarted = 0;
        let mut out = Output::default();
        let mut emitted = Vec::new();
        let mut max_time = i64::MIN;
        let mut watermark = EventTime::MIN;
        let mut batches = Vec::new();
        let mut i = 0;
        while i < rows.len() {
            let side = rows[i].left;
            let mut j = i;
            while j < rows.len() && j - i < chunk && rows[j].left == side {
                j += 1;
            }
            batches.push(&rows[i..j]);
            i = j;
        }
        for (n, part) in batches.into_iter().enumerate() {
            if restores.contains(&n) {
                restarted += 1;
                let budget = budgets[restarted % budgets.len()];
                restarts.restart_with(&mut op, factory, info(), budget);
                if watermark != EventTime::MIN {
                    op.on_watermark(watermark, &mut out).unwrap();
                }
            }
            let input = if part[0].left { LEFT } else { RIGHT };
            op.on_input_batch(input, batch(part), &mut out).unwrap();
            max_time = max_time.max(part.iter().map(|r| r.time).max().unwrap());
            if max_time - delay > watermark {
                watermark = max_time - delay;
                op.on_watermark(watermark, &mut out).unwrap();
            }
            emitted.extend(out.drain());
        }
        op.on_end_of_input(&mut out).unwrap();
        emitted.extend(out.drain());
        emitted
    }

    fn info() -> SubtaskInfo {
        SubtaskInfo {
            index: 0,
            parallelism: 1,
            max_parallelism: 16,
        }
    }

    fn spec_strategy() -> impl Strategy<Value = JoinSpec> {
        prop_oneof![
            (1u64..40)
                .prop_map(|s| JoinSpec::Window(WindowSpec::tumbling(Duration::from_millis(s)))),
            (1u64..20, 1u64..4).prop_map(|(slide, k)| JoinSpec::Window(WindowSpec::hopping(
                Duration::from_millis(slide * k),
                Duration::from_millis(slide)
            ))),
            (-30i64..30, 0i64..30).prop_map(|(lower, w)| JoinSpec::Interval {
                lower,
                upper: lower + w
            }),
            (1u64..30).prop_map(|t| JoinSpec::Regular {
                ttl: Some(Duration::from_millis(t))
            }),
            Just(JoinSpec::Regular { ttl: None }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Every kind of join, inner and left outer, with rows out of order (never later than
        /// the watermark), in batches of any size and restored from RocksDB at random points,
        /// gives exactly what a join over all rows at once gives.
        #[test]
        fn joins_equal_a_join_over_all_rows(
            spec in spec_strategy(),
            outer in any::<bool>(),
            raw in proptest::collection::vec((any::<bool>(), proptest::option::weighted(0.9, 0i64..4), 0i64..150, 0i64..20), 0..60),
            chunk in 1usize..6,
            restores in proptest::collection::vec(0usize..30, 0..4),
            storages in proptest::collection::vec(0u8..3, 1..5),
        ) {
            const DELAY: i64 = 20;
            let join_type = if outer { JoinType::LeftOuter } else { JoinType::Inner };
            // Arrival order: by time plus a jitter below the watermark delay, so no row is
            // ever at or below the watermark.
            let mut rows: Vec<(i64, Row)> = raw
                .iter()
                .enumerate()
                .map(|(value, &(left, key, time, jitter))| {
                    (time + jitter % DELAY, Row { left, key, time, value: value as i64 })
                })
                .collect();
            rows.sort_by_key(|(arrival, r)| (*arrival, r.value));
            let rows: Vec<Row> = rows.into_iter().map(|(_, r)| r).collect();
            let factory = StreamJoin::try_new(settings(join_type, spec.clone()), schema(), schema()).unwrap();
            let windowed = matches!(spec, JoinSpec::Window(_));
            // In memory, in RocksDB with every key evicted at once (a 1-byte budget), or in
            // RocksDB with room to spare; restores move state between them.
            let budgets: Vec<Option<usize>> = storages
                .iter()
                .map(|s| [None, Some(1), Some(1 << 20)][*s as usize])
                .collect();
            let got = rows_of(&run_in(&factory, &rows, chunk, DELAY, &restores, &budgets), windowed);
            prop_assert_eq!(factory.late_records.get(), 0);
            prop_assert_eq!(got, naive(&rows, join_type, &spec));
        }
    }

    /// With state in RocksDB and a budget of one byte, every key goes to the store as soon as
    /// it is touched, and the join's output is still the same as in memory.
    /// A reused key slot holds whatever key comes next, short or long, and finds it.
    #[test]
    fn key_slots_are_reused_for_keys_of_any_length() {
        let keys: Vec<Vec<u8>> = [0usize, 9, 22, 23, 40, 9, 23, 23, 0, 60]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|b| (b * 7 + i) as u8).collect())
            .collect();
        let mut table = KeyTable::default();
        let mut live: Vec<(u32, usize)> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let hash = table_hash(i as u64);
            let (s, new) = table.find_or_insert(hash, key, 0);
            assert!(new);
            assert_eq!(&*table.slots[s as usize].key, &key[..]);
            live.push((s, i));
            // Keys leave in turn, so slots of every length are reused for every length.
            if i % 2 == 1 {
                let (gone, _) = live.remove(0);
                table.remove(gone);
            }
            for &(s, k) in &live {
                assert_eq!(table.find(table_hash(k as u64), &keys[k]), Some(s));
            }
        }
        assert!(table.slots.len() < keys.len());
    }

    #[test]
    fn a_join_under_a_tiny_budget_spills_and_joins_the_same() {
        let rows: Vec<Row> = (0..200)
            .map(|i| Row {
                left: i % 3 != 0,
                key: Some(i % 7),
                time: i,
                value: i,
            })
            .collect();
        for spec in [
            JoinSpec::Interval {
                lower: -10,
                upper: 5,
            },
            JoinSpec::Window(WindowSpec::tumbling(Duration::from_millis(10))),
            JoinSpec::Regular { ttl: None },
        ] {
            let factory = StreamJoin::try_new(
                settings(JoinType::LeftOuter, spec.clone()),
                schema(),
                schema(),
            )
            .unwrap();
            let windowed = matches!(spec, JoinSpec::Window(_));
            let stored = rows_of(
                &run_in(&factory, &rows, 4, 3, &[10, 30], &[Some(1)]),
                windowed,
            );
            assert!(factory.spilled_bytes.get() > 0, "{spec:?}");
            assert_eq!(stored, naive(&rows, JoinType::LeftOuter, &spec), "{spec:?}");
        }
    }

    /// Rows of one key arriving out of order across a time slice's edge list the key twice in
    /// a slice's index: a checkpoint still writes each row once, so a restored join matches
    /// each once.
    #[test]
    fn a_key_listed_twice_in_a_slice_is_stored_once() {
        let spec = JoinSpec::Interval {
            lower: -5,
            upper: 5,
        };
        let factory =
            StreamJoin::try_new(settings(JoinType::Inner, spec.clone()), schema(), schema())
                .unwrap();
        let row = |left, time, value| Row {
            left,
            key: Some(1),
            time,
            value,
        };
        // Right rows in slices 1, 0, 1 (slices are 100 ms wide), then a left row matching all.
        let rows = [
            row(false, 101, 0),
            row(false, 99, 1),
            row(false, 102, 2),
            row(true, 100, 3),
        ];
        let got = rows_of(&run(&factory, &rows, 1, 50, &[3]), false);
        assert_eq!(got.len(), 3);
        assert_eq!(got, naive(&rows, JoinType::Inner, &spec));
    }

    #[test]
    fn an_unmatched_left_row_goes_out_as_soon_as_nothing_can_match_it() {
        let factory = StreamJoin::try_new(
            settings(
                JoinType::LeftOuter,
                JoinSpec::Interval {
                    lower: 0,
                    upper: 10,
                },
            ),
            schema(),
            schema(),
        )
        .unwrap();
        let mut op = factory.create(info()).unwrap();
        let mut out = Output::default();
        let row = Row {
            left: true,
            key: Some(1),
            time: 0,
            value: 7,
        };
        op.on_input_batch(LEFT, batch(&[row]), &mut out).unwrap();
        op.on_watermark(9, &mut out).unwrap();
        assert!(out.is_empty(), "a right row at 10 could still match");
        op.on_watermark(10, &mut out).unwrap();
        let rows = rows_of(&out.drain().collect::<Vec<_>>(), false);
        assert_eq!(
            rows,
            vec![(None, vec![Some(1), Some(0), Some(7), None, None, None])]
        );
        op.on_end_of_input(&mut out).unwrap();
        assert!(out.is_empty(), "emitted once");
    }

    #[test]
    fn late_rows_are_counted_and_dropped() {
        let factory = StreamJoin::try_new(
            settings(
                JoinType::Inner,
                JoinSpec::Interval {
                    lower: 0,
                    upper: 10,
                },
            ),
            schema(),
            schema(),
        )
        .unwrap();
        let row = |left, time, value| Row {
            left,
            key: Some(1),
            time,
            value,
        };
        // The right row at 5 arrives after the watermark passed it.
        let rows = [row(true, 0, 0), row(true, 100, 1), row(false, 5, 2)];
        let out = run(&factory, &rows, 1, 0, &[]);
        assert_eq!(factory.late_records.get(), 1);
        assert!(rows_of(&out, false).is_empty());
    }

    #[test]
    fn bad_joins_are_named() {
        let other = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("t", DataType::Int64, false),
        ]));
        let err = StreamJoin::try_new(
            settings(JoinType::Inner, JoinSpec::Regular { ttl: None }),
            schema(),
            other,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("key `k` is Int64 on the left but `k` is Utf8"),
            "{err}"
        );
        let err = StreamJoin::try_new(
            settings(JoinType::Inner, JoinSpec::Interval { lower: 5, upper: 1 }),
            schema(),
            schema(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("lower bound 5 ms is above the upper bound 1 ms"),
            "{err}"
        );
        let mut no_time = settings(
            JoinType::Inner,
            JoinSpec::Window(WindowSpec::tumbling(Duration::from_secs(1))),
        );
        no_time.right_time = None;
        let err = StreamJoin::try_new(no_time, schema(), schema())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("needs the event-time column of both inputs"),
            "{err}"
        );
        let mut missing = settings(JoinType::Inner, JoinSpec::Regular { ttl: None });
        missing.right_keys = vec!["nope".into()];
        let err = StreamJoin::try_new(missing, schema(), schema())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("column `nope` not found"), "{err}");
    }

    #[test]
    fn clashing_right_columns_are_prefixed_and_outer_ones_nullable() {
        let factory = StreamJoin::try_new(
            settings(
                JoinType::LeftOuter,
                JoinSpec::Window(WindowSpec::tumbling(Duration::from_secs(1))),
            ),
            schema(),
            schema(),
        )
        .unwrap();
        let names: Vec<String> = factory
            .output_schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            [
                "window_start",
                "window_end",
                "k",
                "t",
                "v",
                "right_k",
                "right_t",
                "right_v"
            ]
        );
        assert!(factory.output_schema().field(6).is_nullable());
        assert_eq!(factory.inputs(), 2);
    }
}
