//! Join state in RocksDB, under the memory budget ([`StoreUse::ByKey`]), as Flink's RocksDB
//! backend keeps a join's state: per join key (for a window join: per window and key), the
//! rows of both sides in Arrow's row format, in a [`KeyedState`](crate::keyed::KeyedState)
//! whose least recently used keys go to the store. A row that arrives reads its key's rows
//! (from memory, or with one point lookup) and joins them there. Each key has a timer, kept
//! in memory: when its window fires, or when its earliest row can join nothing more and
//! expires (a left outer join's unmatched left row then goes out alone). Output is the same,
//! pair for pair, as with state in memory; entries move between the two storages both ways.

use super::{Bounds, JoinOperator, JoinType, Pair, RowRef, LEFT, RIGHT};
use crate::error::{OperatorError, Result};
use crate::keyed::{is_timer, EntryFrame, FixedRows, FlatRows, KeyedCodec, TimedKeys, KEY};
use crate::state::state_batch;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{Row, RowConverter, SortField};
use oxflow_runtime::metrics::Counter;
use oxflow_runtime::state::{decode_batch, encode_batch, StateStore, StoreUse};
use oxflow_runtime::{EventTime, Output};
use std::sync::Arc;

/// One side's rows of a join key.
#[derive(Default)]
pub(super) struct SideRows {
    times: Vec<EventTime>,
    /// Per row: whether a right row joined it or it went out alone (left rows of a left
    /// outer join), as [`super::Entry::matched`].
    matched: Vec<bool>,
    rows: FlatRows,
}

impl SideRows {
    fn push(&mut self, time: EventTime, matched: bool, row: &[u8]) {
        self.times.push(time);
        self.matched.push(matched);
        self.rows.push(row);
    }

    fn len(&self) -> usize {
        self.times.len()
    }

    fn heap_bytes(&self) -> usize {
        self.times.capacity() * 8 + self.matched.capacity() + self.rows.heap_bytes()
    }

    /// Keeps the rows `keep` flags, in order.
    fn retain(&mut self, keep: &[bool]) {
        let mut flags = keep.iter();
        self.times
            .retain(|_| *flags.next().expect("a flag per row"));
        let mut flags = keep.iter();
        self.matched
            .retain(|_| *flags.next().expect("a flag per row"));
        self.rows.retain(|i| keep[i]);
    }
}

/// A join key's rows of both sides (for a window join: of one window).
#[derive(Default)]
pub(super) struct KeyRows {
    /// When the key's timer fires, at the earliest: it is never later than the expiry of
    /// any of its rows (or its window's end), so that a key is always armed in time.
    armed: Option<EventTime>,
    sides: [SideRows; 2],
}

impl KeyRows {
    fn is_empty(&self) -> bool {
        self.sides.iter().all(|s| s.len() == 0)
    }

    /// Makes the key's timer fire by `at` (a row's expiry, its window's end): the time to
    /// arm, if that is earlier than its timer so far.
    fn arm_by(&mut self, at: Option<EventTime>) -> Option<EventTime> {
        let at = at.filter(|&e| self.armed.is_none_or(|a| e < a))?;
        self.armed = Some(at);
        Some(at)
    }
}

/// The magic of a join key's entry (the runtime's IPC entries start with `OXS1`); then
/// [`EntryFrame::frame`]'s fingerprint and CRC-32 and the body: the timer (i64, `i64::MIN`
/// for none), then per side the number of rows (u32), their times (i64 each), their matched
/// flags (a byte each), the length of their rows (u32) and the rows, back to back in the row
/// format when every column is fixed-width, else as an IPC batch (big endian).
const JOIN_ENTRY: &[u8; 4] = b"OXJ1";

/// How a join key's rows become an entry and back.
pub(super) struct JoinCodec {
    /// Each side's rows in the row format (all its columns).
    converters: [RowConverter; 2],
    schemas: [SchemaRef; 2],
    /// Per side, when its columns are all fixed-width.
    fixed: [Option<FixedRows>; 2],
    frame: EntryFrame,
}

impl JoinCodec {
    /// The codec of rows of `left` and `right`; `None` when the row format cannot hold one
    /// of their types (such a join keeps its state in memory).
    pub(super) fn plan(left: &SchemaRef, right: &SchemaRef) -> Result<Option<JoinCodec>> {
        let types = |s: &SchemaRef| -> Vec<DataType> {
            s.fields().iter().map(|f| f.data_type().clone()).collect()
        };
        let converter = |s: &SchemaRef| {
            RowConverter::new(types(s).into_iter().map(SortField::new).collect()).ok()
        };
        let (Some(l), Some(r)) = (converter(left), converter(right)) else {
            return Ok(None);
        };
        let mut all = types(left);
        all.push(DataType::Null);
        all.extend(types(right));
        Ok(Some(JoinCodec {
            converters: [l, r],
            schemas: [left.clone(), right.clone()],
            fixed: [FixedRows::of(&types(left))?, FixedRows::of(&types(right))?],
            frame: EntryFrame::of(&all),
        }))
    }

    /// `rows` of `side` as a batch of the side's schema.
    fn batch(&self, side: usize, rows: &FlatRows) -> Result<RecordBatch> {
        let converter = &self.converters[side];
        let parser = converter.parser();
        // Rows made by this converter (or checked to the byte when read: see `decode`).
        let columns = converter.convert_rows(rows.iter().map(|r| parser.parse(r)))?;
        Ok(RecordBatch::try_new(self.schemas[side].clone(), columns)?)
    }

    fn decode_side(
        &self,
        side: usize,
        body: &[u8],
        at: &mut usize,
        bad: &dyn Fn(String) -> OperatorError,
    ) -> Result<SideRows> {
        let mut take = |n: usize| -> Result<&[u8]> {
            let bytes = at
                .checked_add(n)
                .and_then(|end| body.get(*at..end))
                .ok_or_else(|| bad(format!("an entry of {} bytes is truncated", body.len())))?;
            *at += n;
            Ok(bytes)
        };
        let n = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        // Checked against the length before anything is allocated for it.
        let times: Vec<EventTime> = take(
            n.checked_mul(8)
                .ok_or_else(|| bad("too many rows".into()))?,
        )?
        .chunks_exact(8)
        .map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes")))
        .collect();
        let matched: Vec<bool> = take(n)?.iter().map(|&b| b != 0).collect();
        let len = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        let bytes = take(len)?;
        let mut rows = FlatRows::default();
        match &self.fixed[side] {
            Some(fixed) => {
                if len != n * fixed.width {
                    return Err(bad(format!(
                        "{len} bytes of rows for {n} rows of {} bytes",
                        fixed.width
                    )));
                }
                for row in bytes.chunks_exact(fixed.width) {
                    rows.push(row);
                }
            }
            None => {
                let batch = decode_batch(bytes, "of a join key")?;
                let want: Vec<&DataType> = self.schemas[side]
                    .fields()
                    .iter()
                    .map(|f| f.data_type())
                    .collect();
                let got: Vec<&DataType> = batch.columns().iter().map(|c| c.data_type()).collect();
                if got != want || batch.num_rows() != n {
                    return Err(bad(format!(
                        "{} rows of types {got:?}, this job joins {n} of {want:?}",
                        batch.num_rows()
                    )));
                }
                let converted = self.converters[side].convert_columns(batch.columns())?;
                for row in converted.iter() {
                    rows.push(row.as_ref());
                }
            }
        }
        Ok(SideRows {
            times,
            matched,
            rows,
        })
    }
}

impl KeyedCodec<KeyRows> for JoinCodec {
    fn encode(&self, _: &[u8], value: &mut KeyRows) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        body.extend_from_slice(&value.armed.unwrap_or(i64::MIN).to_be_bytes());
        for (side, rows) in value.sides.iter().enumerate() {
            body.extend_from_slice(&(rows.len() as u32).to_be_bytes());
            for t in &rows.times {
                body.extend_from_slice(&t.to_be_bytes());
            }
            body.extend(rows.matched.iter().map(|&m| m as u8));
            let bytes = match &self.fixed[side] {
                // Fixed-width rows, back to back: the buffer as it is.
                Some(_) => rows.rows.bytes.clone(),
                None => encode_batch(&self.batch(side, &rows.rows)?)?,
            };
            body.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            body.extend_from_slice(&bytes);
        }
        Ok(self.frame.frame(JOIN_ENTRY, &body))
    }

    fn decode(&self, kg: usize, _: &[u8], entry: &[u8]) -> Result<KeyRows> {
        let bad = |what: String| {
            OperatorError::State(format!("join rows of a key in key group {kg}: {what}"))
        };
        let body = self.frame.unframe(JOIN_ENTRY, entry).map_err(bad)?;
        let armed = match body.get(..8) {
            Some(b) => i64::from_be_bytes(b.try_into().expect("8 bytes")),
            None => {
                return Err(bad(format!(
                    "an entry of {} bytes is truncated",
                    entry.len()
                )))
            }
        };
        let mut at = 8;
        let left = self.decode_side(LEFT, body, &mut at, &bad)?;
        let right = self.decode_side(RIGHT, body, &mut at, &bad)?;
        if at != body.len() {
            return Err(bad(format!("{} bytes after its rows", body.len() - at)));
        }
        Ok(KeyRows {
            armed: (armed != i64::MIN).then_some(armed),
            sides: [left, right],
        })
    }

    fn size(&self, value: &KeyRows) -> usize {
        std::mem::size_of::<KeyRows>() + value.sides.iter().map(SideRows::heap_bytes).sum::<usize>()
    }
}

/// See [`JoinOperator::expiry`].
fn expiry(bounds: Bounds, join_type: JoinType, side: usize, t: EventTime) -> Option<EventTime> {
    match bounds {
        Bounds::Interval { upper, .. } if side == LEFT => Some(t.saturating_add(upper)),
        Bounds::Interval { lower, .. } => Some(t.saturating_sub(lower)),
        Bounds::Unbounded if side == LEFT && join_type == JoinType::LeftOuter => {
            Some(EventTime::MAX)
        }
        _ => None,
    }
}

/// Writes into `into` the store key of a join key's rows: [`KEY`], the window's end (for a
/// window join), then the key.
fn key_item(into: &mut Vec<u8>, end: Option<EventTime>, key: &[u8]) {
    into.clear();
    into.push(KEY);
    if let Some(end) = end {
        into.extend_from_slice(&end.to_be_bytes());
    }
    into.extend_from_slice(key);
}

/// Adds a row (its side, time, matched flag and row-format bytes) to the rows of `item` in
/// key group `kg`, and makes the key's timer fire by `timer`.
fn store_row(
    by_key: &mut ByKey,
    kg: u16,
    item: &[u8],
    (side, time, matched, row): (usize, EventTime, bool, Row<'_>),
    timer: Option<EventTime>,
) -> Result<()> {
    let arm = by_key.state.update(
        kg as usize,
        item,
        &by_key.codec,
        || Ok(KeyRows::default()),
        |v| {
            v.sides[side].push(time, matched, row.as_ref());
            Ok(v.arm_by(timer))
        },
    )?;
    if let Some(at) = arm {
        by_key.arm(kg, &item[1..], at)?;
    }
    Ok(())
}

/// The window's end in a window join's key (without [`KEY`]).
fn window_end(kg: usize, key: &[u8]) -> Result<EventTime> {
    key.get(..8)
        .map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| {
            OperatorError::State(format!(
                "a window join key in key group {kg} has {} bytes",
                key.len()
            ))
        })
}

/// Join keys with state in RocksDB.
pub(super) type ByKey = TimedKeys<KeyRows, JoinCodec>;

/// Stands for the batch of rows gathered from the store, in pairs made before it is added.
const GATHERED: u32 = u32::MAX;

/// Rows of one side read from the store for output, and the pairs pointing at them.
#[derive(Default)]
struct Gathered {
    rows: [FlatRows; 2],
    pairs: Vec<Pair>,
}

impl Gathered {
    /// Row `i` of `rows` of `side`, kept for output.
    fn keep(&mut self, side: usize, rows: &SideRows, i: usize) -> RowRef {
        let kept = &mut self.rows[side];
        kept.push(rows.rows.get(i));
        RowRef {
            batch: GATHERED,
            row: kept.len() as u32 - 1,
        }
    }
}

impl JoinOperator {
    /// Takes the store: the join's state goes there, under its budget. A join whose rows the
    /// row format cannot hold stays in memory.
    pub(super) fn use_store(&mut self, store: StateStore, spilled_bytes: Counter) -> StoreUse {
        let Some(codec) = self.codec.take() else {
            return StoreUse::Memory;
        };
        let (by_key, used) = ByKey::new(store, codec, self.max_parallelism, spilled_bytes);
        self.by_key = Some(by_key);
        used
    }

    /// The time at which a row of `side` at `t` can join nothing more (its timer), if it
    /// needs one: in an unbounded join only a left outer join's left rows do, at the end.
    fn expiry(&self, side: usize, t: EventTime) -> Option<EventTime> {
        expiry(self.bounds, self.join_type, side, t)
    }

    /// Adds `batch` of `side` with state in RocksDB: as [`JoinOperator::on_side`].
    pub(super) fn on_side_stored(
        &mut self,
        side: usize,
        batch: RecordBatch,
        out: &mut Output,
    ) -> Result<()> {
        let prepared = self.sides[side].prepare(&batch, &self.keys, self.max_parallelism)?;
        let (outer, watermark, bounds) = (
            self.join_type == JoinType::LeftOuter,
            self.watermark,
            self.bounds,
        );
        let expiries: Vec<Option<EventTime>> = prepared
            .times
            .iter()
            .map(|&t| self.expiry(side, t))
            .collect();
        let by_key = self.by_key.as_mut().expect("state is in the store");
        let rows = by_key.codec.converters[side].convert_columns(batch.columns())?;
        let here = self.sides[side].batches.add(batch);
        let at = |i: usize| RowRef {
            batch: here,
            row: i as u32,
        };
        let mut gathered = Gathered::default();
        let mut late = 0u64;
        let mut item = Vec::new();
        for (i, &expires) in expiries.iter().enumerate() {
            let t = prepared.times[i];
            let kg = prepared.key_groups[i];
            if let Bounds::Window { size, slide } = bounds {
                let mut ends = Bounds::window_ends(t, size, slide).peekable();
                if ends
                    .peek()
                    .is_some_and(|&last| Bounds::fired(last, watermark))
                {
                    late += 1;
                    continue;
                }
                let key: &[u8] = match prepared.keyed[i] {
                    true => prepared.keys.row(i).data(),
                    false if side == LEFT && outer => &[],
                    false => continue,
                };
                for end in ends.filter(|&end| !Bounds::fired(end, watermark)) {
                    key_item(&mut item, Some(end), key);
                    let row = (side, t, false, rows.row(i));
                    store_row(by_key, kg, &item, row, Some(Bounds::fires_at(end)))?;
                }
                continue;
            }
            if bounds.is_late(watermark, t) {
                late += 1;
                continue;
            }
            if !prepared.keyed[i] {
                if side == LEFT && outer {
                    gathered.pairs.push((at(i), None));
                }
                continue;
            }
            key_item(&mut item, None, prepared.keys.row(i).data());
            let other = 1 - side;
            let arm = by_key.state.update(
                kg as usize,
                &item,
                &by_key.codec,
                || Ok(KeyRows::default()),
                |v| {
                    let mut matched = false;
                    let others = &mut v.sides[other];
                    for j in 0..others.len() {
                        if !bounds.joins(side, t, others.times[j]) {
                            continue;
                        }
                        matched = true;
                        let stored = gathered.keep(other, others, j);
                        gathered.pairs.push(match side {
                            LEFT => (at(i), Some(stored)),
                            _ => (stored, Some(at(i))),
                        });
                        if side == RIGHT && outer {
                            others.matched[j] = true;
                        }
                    }
                    v.sides[side].push(t, matched, rows.row(i).as_ref());
                    Ok(v.arm_by(expires))
                },
            )?;
            if let Some(e) = arm {
                by_key.arm(kg, &item[1..], e)?;
            }
        }
        by_key.evict_if_over()?;
        self.late_records.add(late);
        self.emit_gathered(gathered, None, out)?;
        self.sweep();
        Ok(())
    }

    /// Emits `gathered`'s pairs, its rows read from the store added to their sides' batches.
    fn emit_gathered(
        &mut self,
        mut gathered: Gathered,
        window: Option<(EventTime, EventTime)>,
        out: &mut Output,
    ) -> Result<()> {
        let codec = &self.by_key.as_ref().expect("state is in the store").codec;
        let mut ids = [GATHERED; 2];
        for side in [LEFT, RIGHT] {
            if !gathered.rows[side].is_empty() {
                let batch = codec.batch(side, &gathered.rows[side])?;
                ids[side] = self.sides[side].batches.add(batch);
            }
        }
        for (l, r) in gathered.pairs.iter_mut() {
            for (side, at) in [(LEFT, Some(l)), (RIGHT, r.as_mut())] {
                if let Some(at) = at.filter(|a| a.batch == GATHERED) {
                    at.batch = ids[side];
                }
            }
        }
        self.emit(&gathered.pairs, window, out)
    }

    /// Fires the timers due at `up_to` with state in RocksDB: windows that end, rows that
    /// expire (a left outer join's unmatched left rows going out alone).
    pub(super) fn fire_stored(&mut self, up_to: EventTime, out: &mut Output) -> Result<()> {
        let (join_type, bounds) = (self.join_type, self.bounds);
        let outer = join_type == JoinType::LeftOuter;
        let mut gathered = Gathered::default();
        let mut window = None;
        let mut done: Vec<(Gathered, Option<(EventTime, EventTime)>)> = Vec::new();
        let by_key = self.by_key.as_mut().expect("state is in the store");
        while let Some((_, key, kg)) = by_key.pop_due(up_to)? {
            let item = [&[KEY][..], &key].concat();
            if let Bounds::Window { size, .. } = bounds {
                let Some(v) = by_key.state.take(kg as usize, &item, &by_key.codec)? else {
                    continue;
                };
                let end = window_end(kg as usize, &key)?;
                // Pairs go out window by window, with its bounds.
                if window.is_some_and(|(_, e)| e != end) {
                    done.push((std::mem::take(&mut gathered), window));
                }
                window = Some((end - size, end));
                let [left, right] = &v.sides;
                for l in 0..left.len() {
                    let at = gathered.keep(LEFT, left, l);
                    if right.len() == 0 && outer {
                        gathered.pairs.push((at, None));
                    }
                    for r in 0..right.len() {
                        let stored = gathered.keep(RIGHT, right, r);
                        gathered.pairs.push((at, Some(stored)));
                    }
                }
                continue;
            }
            let rest = by_key.state.update(
                kg as usize,
                &item,
                &by_key.codec,
                || Ok(KeyRows::default()),
                |v| {
                    for side in [LEFT, RIGHT] {
                        let rows = &v.sides[side];
                        let mut keep = Vec::with_capacity(rows.len());
                        for i in 0..rows.len() {
                            let expires = expiry(bounds, join_type, side, rows.times[i])
                                .unwrap_or(EventTime::MAX);
                            let due = expires <= up_to;
                            if due && side == LEFT && outer && !rows.matched[i] {
                                let at = gathered.keep(LEFT, rows, i);
                                gathered.pairs.push((at, None));
                            }
                            keep.push(!due);
                        }
                        v.sides[side].retain(&keep);
                    }
                    if v.armed.is_some_and(|a| a > up_to) {
                        // This timer was stale: the key's own is still armed.
                        return Ok((v.is_empty(), None));
                    }
                    v.armed = v
                        .sides
                        .iter()
                        .enumerate()
                        .flat_map(|(side, rows)| {
                            rows.times
                                .iter()
                                .filter_map(move |&t| expiry(bounds, join_type, side, t))
                        })
                        .min();
                    Ok((v.is_empty(), v.armed))
                },
            )?;
            match rest {
                (true, _) => {
                    by_key.state.take(kg as usize, &item, &by_key.codec)?;
                }
                (false, Some(next)) => by_key.arm(kg, &key, next)?,
                (false, None) => {}
            }
        }
        by_key.evict_if_over()?;
        done.push((gathered, window));
        for (gathered, window) in done {
            self.emit_gathered(gathered, window, out)?;
            out.check_cancelled()?;
        }
        self.sweep();
        Ok(())
    }

    /// Takes back a restored entry with state in RocksDB that was not copied into the store:
    /// a time slice's rows written with state in memory, or a key's timer of a checkpoint
    /// written before timers were kept in RocksDB.
    pub(super) fn restore_stored(&mut self, kg: usize, item: &[u8], value: &[u8]) -> Result<()> {
        let by_key = self.by_key.as_mut().expect("state is in the store");
        if is_timer(item) {
            // Of a checkpoint written before timers were kept in RocksDB.
            return by_key.restore_timer(kg, item, value);
        }
        // Keys' rows and timers were copied into the store: what is left are time slices
        // of state kept in memory.
        let (side, bucket, times, matched, rows) = self.parse_slice(kg, item, value)?;
        let prepared = self.sides[side].prepare(&rows, &self.keys, self.max_parallelism)?;
        let expiries: Vec<Option<EventTime>> = times
            .values()
            .iter()
            .map(|&t| self.expiry(side, t))
            .collect();
        let windowed = matches!(self.bounds, Bounds::Window { .. });
        let by_key = self.by_key.as_mut().expect("state is in the store");
        let converted = by_key.codec.converters[side].convert_columns(rows.columns())?;
        let mut key = Vec::new();
        for (i, &expires) in expiries.iter().enumerate() {
            let row_key: &[u8] = match prepared.keyed[i] {
                true => prepared.keys.row(i).data(),
                // A window join's left outer rows with a null key are kept under the empty
                // key; no other row has a null key.
                false if windowed => &[],
                false => {
                    return Err(OperatorError::State(format!(
                        "join rows in key group {kg}: a stored row has a null key"
                    )))
                }
            };
            let (end, timer) = match windowed {
                true => (Some(bucket), Some(Bounds::fires_at(bucket))),
                false => (None, expires),
            };
            key_item(&mut key, end, row_key);
            let row = (side, times.value(i), matched.value(i), converted.row(i));
            store_row(by_key, kg as u16, &key, row, timer)?;
            by_key.evict_if_over()?;
        }
        Ok(())
    }

    /// Takes back a key's entry of state kept in RocksDB, with state in memory.
    pub(super) fn restore_key_into_memory(
        &mut self,
        kg: usize,
        item: &[u8],
        value: &[u8],
    ) -> Result<()> {
        let Some(codec) = &self.codec else {
            return Err(OperatorError::State(format!(
                "key group {kg} holds a join key's rows in the row format, which cannot hold this job's rows"
            )));
        };
        let rows = codec.decode(kg, item, value)?;
        let bucket = match self.bounds {
            Bounds::Window { .. } => Some(window_end(kg, &item[1..])?),
            _ => None,
        };
        let mut sides = Vec::new();
        for (side, rows) in rows.sides.into_iter().enumerate() {
            if rows.len() > 0 {
                let batch = codec.batch(side, &rows.rows)?;
                sides.push((side, rows.times, rows.matched, batch));
            }
        }
        for (side, times, matched, batch) in sides {
            let (times, matched) = (Int64Array::from(times), BooleanArray::from(matched));
            self.restore_rows(kg, side, bucket, &times, &matched, batch)?;
        }
        Ok(())
    }

    /// The side, bucket, times, match flags and rows of a time slice's entry of state in
    /// memory.
    pub(super) fn parse_slice(
        &self,
        kg: usize,
        item: &[u8],
        value: &[u8],
    ) -> Result<(usize, i64, Int64Array, BooleanArray, RecordBatch)> {
        let (side, bucket) = match item {
            [side @ (0 | 1), rest @ ..] if rest.len() == 8 => (
                *side as usize,
                i64::from_be_bytes(rest.try_into().expect("8 bytes")),
            ),
            _ => {
                return Err(OperatorError::State(format!(
                    "a join state entry key in key group {kg} has {} bytes, not 9",
                    item.len()
                )))
            }
        };
        let batch = decode_batch(value, &format!("of a join in key group {kg}"))?;
        let bad = |m: String| OperatorError::State(format!("join rows in key group {kg}: {m}"));
        if batch.num_columns() < 2 {
            return Err(bad("too few columns".into()));
        }
        let times = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| bad("no times".into()))?
            .clone();
        let matched = batch
            .column(1)
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| bad("no match flags".into()))?
            .clone();
        let schema = self.sides[side].layout.schema.clone();
        let rows = RecordBatch::try_new(schema, batch.columns()[2..].to_vec())
            .map_err(|e| bad(format!("they do not fit this job's input: {e}")))?;
        Ok((side, bucket, times, matched, rows))
    }
}

/// The entry of a time slice of state in memory: each row's time and match flag, then its
/// columns.
pub(super) fn slice_entry(
    times: impl Iterator<Item = EventTime>,
    matched: impl Iterator<Item = bool>,
    columns: Vec<ArrayRef>,
) -> Result<Vec<u8>> {
    let mut all: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(times)),
        Arc::new(BooleanArray::from_iter(matched.map(Some))),
    ];
    all.extend(columns);
    Ok(encode_batch(&state_batch(all)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::{Field, Schema};

    fn codec(strings: bool) -> JoinCodec {
        let right = if strings {
            DataType::Utf8
        } else {
            DataType::Int64
        };
        let left = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let right = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("s", right, true),
        ]));
        JoinCodec::plan(&left, &right).unwrap().unwrap()
    }

    fn key_rows(codec: &JoinCodec, strings: bool) -> KeyRows {
        let mut v = KeyRows {
            armed: Some(42),
            ..KeyRows::default()
        };
        let left = codec.converters[LEFT]
            .convert_columns(&[Arc::new(Int64Array::from(vec![Some(1), None]))])
            .unwrap();
        let s: ArrayRef = if strings {
            Arc::new(StringArray::from(vec![Some("a"), None, Some("ccc")]))
        } else {
            Arc::new(Int64Array::from(vec![Some(7), None, Some(9)]))
        };
        let right = codec.converters[RIGHT]
            .convert_columns(&[Arc::new(Int64Array::from(vec![1, 1, 1])), s])
            .unwrap();
        for i in 0..2 {
            v.sides[LEFT].push(i as i64, i == 1, left.row(i).as_ref());
        }
        for i in 0..3 {
            v.sides[RIGHT].push(10 + i as i64, false, right.row(i).as_ref());
        }
        v
    }

    #[test]
    fn a_keys_rows_round_trip_in_either_layout() {
        for strings in [false, true] {
            let codec = codec(strings);
            let mut v = key_rows(&codec, strings);
            let entry = codec.encode(b"k", &mut v).unwrap();
            let back = codec.decode(0, b"k", &entry).unwrap();
            assert_eq!(back.armed, Some(42));
            for side in [LEFT, RIGHT] {
                assert_eq!(back.sides[side].times, v.sides[side].times);
                assert_eq!(back.sides[side].matched, v.sides[side].matched);
                assert_eq!(back.sides[side].rows.bytes, v.sides[side].rows.bytes);
            }
            let err = codec
                .decode(3, b"k", &entry[..entry.len() - 1])
                .err()
                .unwrap();
            assert!(err.to_string().contains("key group 3"), "{err}");
        }
    }

    proptest::proptest! {
        /// Any bytes in a valid frame, and any entry cut or changed, are an error at worst.
        #[test]
        fn join_entries_never_panic(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            strings in proptest::bool::ANY,
            flip in 0usize..400,
        ) {
            let codec = codec(strings);
            let _ = codec.decode(0, b"k", &codec.frame.frame(JOIN_ENTRY, &body));
            let mut entry = codec.encode(b"k", &mut key_rows(&codec, strings)).unwrap();
            if let Some(b) = entry.get_mut(flip) {
                *b ^= 0x5a;
            }
            let _ = codec.decode(0, b"k", &entry);
            let _ = codec.decode(0, b"k", &entry[..flip.min(entry.len())]);
        }
    }
}
