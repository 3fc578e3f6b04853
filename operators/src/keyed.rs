//! Per-key state under a memory budget: Flink's keyed value state on its RocksDB backend,
//! with a write-back cache in front of it.
//!
//! Operators whose state is a value per key (a running aggregate's accumulators, a key's open
//! sessions, a join key's rows, a window and key's top rows) keep it in a [`KeyedState`],
//! those with timers in a [`TimedKeys`]. With state in memory, every value stays in memory
//! and a barrier writes the values changed since the previous one. With state in RocksDB
//! ([`StoreUse::ByKey`]) memory holds at most the budget: when the values outgrow it, the
//! least recently used are written to the store (if changed) and dropped, and a key not in
//! memory is read back from the store when a record needs it. A barrier writes the changed
//! values still in memory; the store, values written early included, is what the checkpoint
//! cuts. Either way an entry is one key's value, so a checkpoint restores into either
//! storage at any parallelism.

use crate::error::{OperatorError, Result};
use datafusion::arrow::array::{new_null_array, ArrayRef};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{HashMap, HashSet};
use oxflow_runtime::metrics::Counter;
use oxflow_runtime::state::{StateSnapshot, StateStore, StoreUse};
use oxflow_runtime::EventTime;
use std::collections::BTreeSet;

/// The frame of an entry in a row layout of our own: a magic, a fingerprint of the types it
/// holds (so that an entry of a job with other types is refused, not misread) and the
/// CRC-32 of the body.
pub(crate) struct EntryFrame {
    fingerprint: u32,
}

impl EntryFrame {
    /// The frame of entries holding values of `types`.
    pub(crate) fn of(types: &[DataType]) -> EntryFrame {
        EntryFrame {
            fingerprint: crc32fast::hash(format!("{types:?}").as_bytes()),
        }
    }

    /// `body` framed as an entry starting with `magic`.
    pub(crate) fn frame(&self, magic: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut entry = Vec::with_capacity(12 + body.len());
        entry.extend_from_slice(magic);
        entry.extend_from_slice(&self.fingerprint.to_be_bytes());
        entry.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
        entry.extend_from_slice(body);
        entry
    }

    /// The body of an entry framed with `magic`; an error says what is wrong with it.
    pub(crate) fn unframe<'a>(
        &self,
        magic: &[u8; 4],
        entry: &'a [u8],
    ) -> std::result::Result<&'a [u8], String> {
        let Some(rest) = entry.strip_prefix(magic) else {
            return Err("the entry is not in the row format".into());
        };
        let (Some(fp), Some(crc), Some(body)) = (rest.get(..4), rest.get(4..8), rest.get(8..))
        else {
            return Err(format!("a row entry of {} bytes is truncated", entry.len()));
        };
        if fp != self.fingerprint.to_be_bytes() {
            return Err("the entry was written by a job whose state has other types".into());
        }
        if crc != crc32fast::hash(body).to_be_bytes() {
            return Err("the entry fails its checksum".into());
        }
        Ok(body)
    }
}

/// Arrow's row format for values whose every column is of a fixed-width type, so that a row
/// of the right length always decodes, whatever its bytes: per-key entries in it are a
/// fraction of an IPC batch's bytes and time. Entries are framed by an [`EntryFrame`].
pub(crate) struct FixedRows {
    pub(crate) converter: RowConverter,
    /// The bytes of one row.
    pub(crate) width: usize,
    frame: EntryFrame,
}

impl FixedRows {
    /// The row format of `types`, if they are all fixed-width.
    pub(crate) fn of(types: &[DataType]) -> Result<Option<FixedRows>> {
        let fixed = types
            .iter()
            .all(|t| t.is_primitive() || *t == DataType::Boolean);
        // No columns: no rows to tell apart (and a row of no bytes).
        if !fixed || types.is_empty() {
            return Ok(None);
        }
        let Ok(converter) = RowConverter::new(types.iter().cloned().map(SortField::new).collect())
        else {
            return Ok(None);
        };
        let nulls: Vec<ArrayRef> = types.iter().map(|t| new_null_array(t, 1)).collect();
        let width = converter.convert_columns(&nulls)?.row(0).as_ref().len();
        Ok(Some(FixedRows {
            converter,
            width,
            frame: EntryFrame::of(types),
        }))
    }

    /// `body` framed as an entry starting with `magic`.
    pub(crate) fn frame(&self, magic: &[u8; 4], body: &[u8]) -> Vec<u8> {
        self.frame.frame(magic, body)
    }

    /// The body of an entry framed with `magic`; an error says what is wrong with it.
    pub(crate) fn unframe<'a>(
        &self,
        magic: &[u8; 4],
        entry: &'a [u8],
    ) -> std::result::Result<&'a [u8], String> {
        self.frame.unframe(magic, entry)
    }
}

/// Rows in Arrow's row format, one after the other in one buffer (a heap allocation per
/// set of rows, not per row).
#[derive(Default, Clone)]
pub(crate) struct FlatRows {
    pub(crate) bytes: Vec<u8>,
    /// Where each row ends in `bytes`.
    ends: Vec<usize>,
}

impl FlatRows {
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let row = &self.bytes[start..end];
            start = end;
            row
        })
    }

    /// Row `i`.
    pub(crate) fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    pub(crate) fn push(&mut self, row: &[u8]) {
        self.bytes.extend_from_slice(row);
        self.ends.push(self.bytes.len());
    }

    /// Takes in the rows of `other` after these.
    pub(crate) fn append(&mut self, other: Self) {
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&other.bytes);
        self.ends.extend(other.ends.iter().map(|end| end + base));
    }

    /// Keeps the rows whose index `keep` picks, in order.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(usize) -> bool) {
        let mut start = 0;
        let mut to = 0;
        let mut kept = 0;
        for i in 0..self.ends.len() {
            let end = self.ends[i];
            if keep(i) {
                let len = end - start;
                self.bytes.copy_within(start..end, to);
                to += len;
                self.ends[kept] = to;
                kept += 1;
            }
            start = end;
        }
        self.bytes.truncate(to);
        self.ends.truncate(kept);
    }

    /// What the rows hold on the heap.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * std::mem::size_of::<usize>()
    }
}

/// How an operator turns its per-key values into entry bytes and back.
pub(crate) trait KeyedCodec<V> {
    /// The entry of `key`'s value.
    fn encode(&self, key: &[u8], value: &mut V) -> Result<Vec<u8>>;
    /// The value of `key` from its entry, read in `key_group`.
    fn decode(&self, key_group: usize, key: &[u8], entry: &[u8]) -> Result<V>;
    /// About how many bytes `value` holds in memory (for the budget; checked per update).
    fn size(&self, value: &V) -> usize;
}

/// What a key and its value hold in memory, as counted against the budget: the value, the
/// key, the map's entry and about what the allocator and the map's spare room add to them (a
/// running aggregate's accumulators are a fraction of what a key costs).
fn footprint<V, C: KeyedCodec<V>>(codec: &C, key: &[u8], value: &V) -> usize {
    /// Allocation headers of the key and the value, and the map's control bytes and load
    /// factor, per entry.
    const ENTRY_OVERHEAD: usize = 48;
    codec.size(value) + key.len() + std::mem::size_of::<(Box<[u8]>, Slot<V>)>() + ENTRY_OVERHEAD
}

struct Slot<V> {
    key_group: u16,
    value: V,
    /// What `value` held when last measured (only counted under a budget).
    size: usize,
    /// Changed since it was last written.
    dirty: bool,
    /// The store or the checkpointed state holds a version of this key (so removing it
    /// must delete that).
    stored: bool,
    /// When it was last used, in updates; the least recent go first.
    used: u64,
}

/// Per-key values of one operator subtask, in memory up to a budget; see the module
/// documentation. Keys are the operator's entry keys (item bytes), whole.
pub(crate) struct KeyedState<V> {
    slots: HashMap<Box<[u8]>, Slot<V>>,
    store: Option<StateStore>,
    budget: usize,
    /// Bytes held by the values in memory (counted only under a budget).
    bytes: usize,
    clock: u64,
    /// Keys that turned dirty since the last snapshot (each once).
    changed: Vec<Box<[u8]>>,
    /// Keys removed whose stored version must be deleted, by key group.
    removed: HashSet<(u16, Box<[u8]>)>,
    /// Counts the bytes written to the store early (to stay under the budget).
    spilled_bytes: Counter,
}

impl<V> Default for KeyedState<V> {
    fn default() -> Self {
        KeyedState {
            slots: HashMap::default(),
            store: None,
            budget: usize::MAX,
            bytes: 0,
            clock: 0,
            changed: Vec::new(),
            removed: HashSet::default(),
            spilled_bytes: Counter::default(),
        }
    }
}

impl<V> KeyedState<V> {
    /// Keeps values in `store`, with at most its budget in memory, counting the bytes
    /// written to it early in `spilled_bytes`. Every key the operator gives starts with
    /// one of `prefixes` (its other entries, not kept here, must not).
    pub(crate) fn use_store(
        &mut self,
        store: StateStore,
        prefixes: &'static [u8],
        spilled_bytes: Counter,
    ) -> StoreUse {
        self.budget = store.memory_budget();
        self.store = Some(store);
        self.spilled_bytes = spilled_bytes;
        StoreUse::ByKey { prefixes }
    }

    /// Bytes the values in memory hold (under a budget; 0 without one).
    #[cfg(test)]
    pub(crate) fn bytes_in_memory(&self) -> usize {
        self.bytes
    }

    fn counted(&self) -> bool {
        self.budget != usize::MAX
    }

    /// Updates `key`'s value with `f`: the value in memory, else the stored one, else a new
    /// one from `create`. The value is then changed (written at the next snapshot).
    pub(crate) fn update<C: KeyedCodec<V>, R>(
        &mut self,
        key_group: usize,
        key: &[u8],
        codec: &C,
        create: impl FnOnce() -> Result<V>,
        f: impl FnOnce(&mut V) -> Result<R>,
    ) -> Result<R> {
        self.clock += 1;
        let counted = self.counted();
        if !self.slots.contains_key(key) {
            let slot = self.load(key_group, key, codec, create)?;
            self.bytes += slot.size;
            self.slots.insert(key.into(), slot);
        }
        let slot = self.slots.get_mut(key).expect("inserted above");
        slot.used = self.clock;
        let result = f(&mut slot.value)?;
        if counted {
            let size = footprint(codec, key, &slot.value);
            self.bytes = (self.bytes + size).saturating_sub(slot.size);
            slot.size = size;
        }
        if !slot.dirty {
            slot.dirty = true;
            self.changed.push(key.into());
        }
        Ok(result)
    }

    /// A slot for `key`, which is not in memory: read from the store, or new.
    fn load<C: KeyedCodec<V>>(
        &mut self,
        key_group: usize,
        key: &[u8],
        codec: &C,
        create: impl FnOnce() -> Result<V>,
    ) -> Result<Slot<V>> {
        let kg = key_group as u16;
        // A key removed since the last write still has its old version in the store: it is
        // gone, not to be read back; the new value will replace it.
        let was_removed = !self.removed.is_empty() && self.removed.remove(&(kg, Box::from(key)));
        let stored = match &self.store {
            Some(store) if !was_removed => store.get(key_group, key)?,
            _ => None,
        };
        let (value, stored) = match stored {
            Some(entry) => (codec.decode(key_group, key, &entry)?, true),
            None => (create()?, was_removed),
        };
        let size = if self.counted() {
            footprint(codec, key, &value)
        } else {
            0
        };
        Ok(Slot {
            key_group: kg,
            value,
            size,
            dirty: false,
            stored,
            used: self.clock,
        })
    }

    /// Reads `key`'s value (from the store if it is not in memory) without changing it, and
    /// removes it: its entry is deleted at the next write (a key's last session closing).
    pub(crate) fn take<C: KeyedCodec<V>>(
        &mut self,
        key_group: usize,
        key: &[u8],
        codec: &C,
    ) -> Result<Option<V>> {
        let kg = key_group as u16;
        let slot = match self.slots.remove(key) {
            Some(slot) => slot,
            None => {
                if self.removed.contains(&(kg, Box::from(key))) {
                    return Ok(None);
                }
                let Some(store) = &self.store else {
                    return Ok(None);
                };
                let Some(entry) = store.get(key_group, key)? else {
                    return Ok(None);
                };
                let value = codec.decode(key_group, key, &entry)?;
                self.removed.insert((kg, key.into()));
                return Ok(Some(value));
            }
        };
        self.bytes = self.bytes.saturating_sub(slot.size);
        if slot.stored {
            self.removed.insert((kg, key.into()));
        }
        Ok(Some(slot.value))
    }

    /// Takes back a value restored from a checkpoint with state in memory: it is written
    /// again at the next snapshot (a restored subtask writes a new store).
    pub(crate) fn restore<C: KeyedCodec<V>>(
        &mut self,
        key_group: usize,
        key: &[u8],
        value: V,
        codec: &C,
    ) {
        let size = if self.counted() {
            footprint(codec, key, &value)
        } else {
            0
        };
        self.bytes += size;
        self.changed.push(key.into());
        self.slots.insert(
            key.into(),
            Slot {
                key_group: key_group as u16,
                value,
                size,
                dirty: true,
                stored: false,
                used: self.clock,
            },
        );
    }

    /// Under a budget: once the values in memory outgrow it, writes the least recently used
    /// to the store (those changed) and drops them, down to three quarters of the budget (so
    /// that the next evictions are not one key at a time). While a checkpoint is being cut
    /// the store takes no writes; memory may then grow to twice the budget before this
    /// waits for the cut.
    pub(crate) fn evict_if_over<C: KeyedCodec<V>>(&mut self, codec: &C) -> Result<()> {
        let Some(can_write) = self.store.as_ref().map(StateStore::can_write) else {
            return Ok(());
        };
        if self.bytes <= self.budget || (!can_write && self.bytes <= self.budget.saturating_mul(2))
        {
            return Ok(());
        }
        let target = self.budget / 4 * 3;
        let mut by_age: Vec<(u64, usize)> = self.slots.values().map(|s| (s.used, s.size)).collect();
        by_age.sort_unstable();
        let mut freed = 0usize;
        let mut cutoff = 0u64;
        for (used, size) in by_age {
            if self.bytes - freed <= target {
                break;
            }
            freed += size;
            cutoff = used;
        }
        let mut changes = self.take_removed();
        let mut written = 0usize;
        let mut bytes = self.bytes;
        let mut failed = None;
        self.slots.retain(|key, slot| {
            if slot.used > cutoff || failed.is_some() {
                return true;
            }
            if slot.dirty {
                match codec.encode(key, &mut slot.value) {
                    Ok(entry) => {
                        written += entry.len();
                        changes.put(slot.key_group as usize, key, entry);
                    }
                    Err(e) => {
                        failed = Some(e);
                        return true;
                    }
                }
            }
            bytes = bytes.saturating_sub(slot.size);
            false
        });
        self.bytes = bytes;
        // Keys written out need no write at the barrier: forget them, so that the list of
        // changed keys stays within the keys in memory.
        let slots = &self.slots;
        self.changed.retain(|key| slots.contains_key(key));
        self.spilled_bytes.add(written as u64);
        if let Some(e) = failed {
            return Err(e);
        }
        self.store.as_ref().expect("checked above").write(changes)?;
        Ok(())
    }

    /// The deletes of removed keys, as changes to write.
    fn take_removed(&mut self) -> StateSnapshot {
        let mut changes = StateSnapshot::default();
        for (kg, key) in self.removed.drain() {
            changes.delete(kg as usize, &key);
        }
        changes
    }

    /// At a barrier: writes the values changed since the last snapshot that are in memory,
    /// and deletes the entries of removed keys.
    pub(crate) fn snapshot<C: KeyedCodec<V>>(
        &mut self,
        state: &mut StateSnapshot,
        codec: &C,
    ) -> Result<()> {
        for (kg, key) in self.removed.drain() {
            state.delete(kg as usize, &key);
        }
        for key in std::mem::take(&mut self.changed) {
            // Evicted or removed since it changed: already written or deleted.
            let Some(slot) = self.slots.get_mut(&key) else {
                continue;
            };
            if !slot.dirty {
                continue;
            }
            state.put(
                slot.key_group as usize,
                &key,
                codec.encode(&key, &mut slot.value)?,
            );
            slot.dirty = false;
            slot.stored = true;
        }
        Ok(())
    }
}

/// With state in RocksDB, the first byte of a key's value entry (then the key).
pub(crate) const KEY: u8 = b'k';
/// With state in RocksDB, the first byte of a timer entry (then its time, ordered, and the
/// key): timers sort by time within their key group.
pub(crate) const TIMER: u8 = b'T';
/// The first byte of a key's timer entry as checkpoints before timers were kept in RocksDB
/// wrote it (then the key; its time is the value): restored, they are armed again.
const OLD_TIMER: u8 = b't';

/// Whether an entry key is a timer's (either layout): state kept in memory skips them, its
/// timers come from its values.
pub(crate) fn is_timer(item: &[u8]) -> bool {
    matches!(item.first(), Some(&TIMER) | Some(&OLD_TIMER))
}

/// A timer entry's key: [`TIMER`], the time (big endian with its sign bit flipped, so that
/// bytes sort as times do) and the key.
fn timer_item(at: EventTime, key: &[u8]) -> Vec<u8> {
    let mut item = Vec::with_capacity(9 + key.len());
    item.push(TIMER);
    item.extend_from_slice(&((at as u64) ^ (1 << 63)).to_be_bytes());
    item.extend_from_slice(key);
    item
}

/// The time and key of a timer entry's key.
fn parse_timer(kg: usize, item: &[u8]) -> Result<(EventTime, Box<[u8]>)> {
    match item {
        [TIMER, rest @ ..] if rest.len() >= 8 => {
            let (time, key) = rest.split_at(8);
            let t = u64::from_be_bytes(time.try_into().expect("8 bytes")) ^ (1 << 63);
            Ok((t as i64, key.into()))
        }
        _ => Err(OperatorError::State(format!(
            "a timer entry key in key group {kg} has {} bytes, not a time and a key",
            item.len()
        ))),
    }
}

/// The earliest timers of one key group held in memory.
#[derive(Default)]
struct GroupTimers {
    cache: BTreeSet<(EventTime, Box<[u8]>)>,
    /// Every timer of the key group before this time is in `cache` (`None`: every timer
    /// is); later ones may be only in the store.
    bound: Option<EventTime>,
}

impl GroupTimers {
    /// When the key group's next timer is due, at the earliest: its first cached timer, or
    /// else the bound from which the store must be read.
    fn head(&self) -> Option<EventTime> {
        self.cache.first().map(|(t, _)| *t).or(self.bound)
    }
}

/// Timers of keyed state in RocksDB, as Flink's RocksDB timer service keeps them: each is
/// an entry of its key group in the store, sorted by time, and memory holds only each key
/// group's earliest ones (at most `cap` over all), read from the store in runs as they are
/// needed. So timers cost memory for the few due next, not for every key. Timers are lower
/// bounds: an operator re-arms a key whose timer found nothing due; a key may have several.
struct TimerQueue {
    store: StateStore,
    /// By key group; each starts unknown (bound `EventTime::MIN`), so a restored job reads
    /// its timers from the store when first asked, without being told what was restored.
    groups: Vec<GroupTimers>,
    /// Each key group's head, to find the earliest over all.
    heads: BTreeSet<(EventTime, u16)>,
    /// Timer puts (`true`) and deletes not yet in the store.
    pending: Vec<(u16, Vec<u8>, bool)>,
    cached: usize,
    cap: usize,
    /// Timers read from the store per key group at a time.
    run: usize,
}

/// Timers read from the store per key group at a time.
const TIMER_RUN: usize = 256;

/// A due timer: its time, key and key group.
pub(crate) type DueTimer = (EventTime, Box<[u8]>, u16);

impl TimerQueue {
    fn new(store: StateStore, key_groups: usize) -> TimerQueue {
        // About 100 bytes a cached timer: an eighth of the budget, at least four runs.
        let cap = (store.memory_budget() / 8 / 100).max(TIMER_RUN * 4);
        Self::with_limits(store, key_groups, cap, TIMER_RUN)
    }

    /// Caching at most `cap` timers, reading `run` at a time.
    fn with_limits(store: StateStore, key_groups: usize, cap: usize, run: usize) -> TimerQueue {
        let groups: Vec<GroupTimers> = (0..key_groups)
            .map(|_| GroupTimers {
                cache: BTreeSet::new(),
                bound: Some(EventTime::MIN),
            })
            .collect();
        let heads = (0..key_groups as u16)
            .map(|g| (EventTime::MIN, g))
            .collect();
        TimerQueue {
            store,
            groups,
            heads,
            pending: Vec::new(),
            cached: 0,
            cap,
            run,
        }
    }

    fn group(&mut self, kg: u16) -> Result<&mut GroupTimers> {
        let n = self.groups.len();
        self.groups
            .get_mut(kg as usize)
            .ok_or_else(|| OperatorError::State(format!("a timer of key group {kg}, of {n}")))
    }

    /// Runs `f` on key group `kg`'s timers, keeping its head in `heads`.
    fn with_group<R>(
        &mut self,
        kg: u16,
        f: impl FnOnce(&mut GroupTimers, &mut usize) -> R,
    ) -> Result<R> {
        let mut cached = self.cached;
        let group = self.group(kg)?;
        let before = group.head();
        let result = f(group, &mut cached);
        let after = group.head();
        self.cached = cached;
        if before != after {
            if let Some(t) = before {
                self.heads.remove(&(t, kg));
            }
            if let Some(t) = after {
                self.heads.insert((t, kg));
            }
        }
        Ok(result)
    }

    fn arm(&mut self, kg: u16, key: &[u8], at: EventTime) -> Result<()> {
        self.pending.push((kg, timer_item(at, key), true));
        self.with_group(kg, |g, cached| {
            if g.bound.is_none_or(|b| at < b) && g.cache.insert((at, key.into())) {
                *cached += 1;
            }
        })?;
        if self.cached > self.cap {
            self.trim()?;
        }
        Ok(())
    }

    /// Drops the latest quarter (at least one) of each key group's cached timers until at
    /// most `cap` are left (they stay in the store).
    fn trim(&mut self) -> Result<()> {
        while self.cached > self.cap {
            self.trim_once()?;
        }
        Ok(())
    }

    fn trim_once(&mut self) -> Result<()> {
        for kg in 0..self.groups.len() as u16 {
            self.with_group(kg, |g, cached| {
                let drop = g.cache.len().div_ceil(4);
                for _ in 0..drop {
                    if let Some((t, _)) = g.cache.pop_last() {
                        *cached -= 1;
                        g.bound = Some(g.bound.map_or(t, |b| b.min(t)));
                    }
                }
            })?;
        }
        Ok(())
    }

    /// Writes the pending timer changes to the store; unless `wait`, only if it takes writes
    /// now (not while a checkpoint is being cut) or they pile up.
    fn flush(&mut self, wait: bool) -> Result<()> {
        if self.pending.is_empty()
            || !(wait || self.store.can_write() || self.pending.len() > self.cap)
        {
            return Ok(());
        }
        let mut changes = StateSnapshot::default();
        self.drain_into(&mut changes);
        Ok(self.store.write(changes)?)
    }

    fn drain_into(&mut self, changes: &mut StateSnapshot) {
        // A snapshot applies its deletes before its puts: only each entry's last change
        // goes in (a timer armed again after it fired must stay, one fired after it was
        // armed must go).
        let mut last: HashMap<(u16, Vec<u8>), bool> = HashMap::default();
        for (kg, item, put) in self.pending.drain(..) {
            last.insert((kg, item), put);
        }
        for ((kg, item), put) in last {
            match put {
                true => changes.put(kg as usize, &item, Vec::new()),
                false => changes.delete(kg as usize, &item),
            }
        }
    }

    /// The earliest timer at or before `up_to`, removed (its entry deleted).
    fn pop_due(&mut self, up_to: EventTime) -> Result<Option<DueTimer>> {
        let popped = self.pop_reading(up_to)?;
        // Runs read on the way may have filled the cache past its cap.
        self.trim()?;
        Ok(popped)
    }

    fn pop_reading(&mut self, up_to: EventTime) -> Result<Option<DueTimer>> {
        loop {
            let Some(&(head, kg)) = self.heads.first() else {
                return Ok(None);
            };
            if head > up_to {
                return Ok(None);
            }
            let popped = self.with_group(kg, |g, cached| {
                let popped = g.cache.pop_first();
                *cached -= popped.is_some() as usize;
                popped
            })?;
            if let Some((t, key)) = popped {
                self.pending.push((kg, timer_item(t, &key), false));
                return Ok(Some((t, key, kg)));
            }
            self.refill(kg)?;
        }
    }

    /// Reads key group `kg`'s next run of timers from the store (its cache is empty).
    fn refill(&mut self, kg: u16) -> Result<()> {
        // The store must hold every arm and delete so far.
        self.flush(true)?;
        let Some(bound) = self.group(kg)?.bound else {
            return Ok(());
        };
        let items =
            self.store
                .scan_keys(kg as usize, &timer_item(bound, &[]), &[TIMER], self.run)?;
        let timers = items
            .iter()
            .map(|item| parse_timer(kg as usize, item))
            .collect::<Result<Vec<_>>>()?;
        let run = self.run;
        self.with_group(kg, |g, cached| {
            g.bound = match timers.len() < run {
                true => None,
                // Those at the last time may not all have been read.
                false => timers.last().map(|(t, _)| *t),
            };
            for timer in timers {
                *cached += g.cache.insert(timer) as usize;
            }
        })
    }
}

/// Per-key values in a [`KeyedState`] under the memory budget, each with timers in event
/// time (when a key's session closes, a join key's rows expire or its window fires), as
/// Flink keeps keyed state and its timer service, both in RocksDB ([`TimerQueue`]). A
/// restore copies values and timers into the store without listing them.
pub(crate) struct TimedKeys<V, C> {
    pub(crate) state: KeyedState<V>,
    pub(crate) codec: C,
    timers: TimerQueue,
}

impl<V, C: KeyedCodec<V>> TimedKeys<V, C> {
    /// Keeps values in `store` through `codec`, with timers for `key_groups` key groups;
    /// see [`KeyedState::use_store`].
    pub(crate) fn new(
        store: StateStore,
        codec: C,
        key_groups: usize,
        spilled_bytes: Counter,
    ) -> (Self, StoreUse) {
        let mut state = KeyedState::default();
        let timers = TimerQueue::new(store.clone(), key_groups);
        let used = state.use_store(store, &[KEY, TIMER], spilled_bytes);
        (
            TimedKeys {
                state,
                codec,
                timers,
            },
            used,
        )
    }

    /// At a barrier: the changed values and timers.
    pub(crate) fn snapshot(&mut self, state: &mut StateSnapshot) -> Result<()> {
        self.state.snapshot(state, &self.codec)?;
        self.timers.drain_into(state);
        Ok(())
    }

    /// Between batches: writes values out if they outgrow the budget, and timer changes.
    pub(crate) fn evict_if_over(&mut self) -> Result<()> {
        self.state.evict_if_over(&self.codec)?;
        self.timers.flush(false)
    }

    /// Arms a timer of `key` (without [`KEY`]) at `at`. An earlier timer of the key stays
    /// armed: timers are lower bounds, and the operator re-arms a key whose timer found
    /// nothing due.
    pub(crate) fn arm(&mut self, kg: u16, key: &[u8], at: EventTime) -> Result<()> {
        self.timers.arm(kg, key, at)
    }

    /// The next key whose timer is at or before `up_to`, with its key group; the timer is
    /// gone.
    pub(crate) fn pop_due(&mut self, up_to: EventTime) -> Result<Option<DueTimer>> {
        self.timers.pop_due(up_to)
    }

    /// Takes back a restored timer entry that was not copied into the store: one of a
    /// checkpoint written before timers were kept in RocksDB (`item` is [`OLD_TIMER`] and
    /// the key, the value its time).
    pub(crate) fn restore_timer(&mut self, kg: usize, item: &[u8], value: &[u8]) -> Result<()> {
        let bytes: [u8; 8] = value.try_into().map_err(|_| {
            OperatorError::State(format!(
                "a timer in key group {kg} has {} bytes, not 8",
                value.len()
            ))
        })?;
        if item.first() != Some(&OLD_TIMER) {
            return Err(OperatorError::State(format!(
                "an entry in key group {kg} is not a timer"
            )));
        }
        self.arm(kg as u16, &item[1..], i64::from_be_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxflow_runtime::state::StateBackend;

    /// Values are u64 counters, 100 bytes each for the budget (a key in memory counts about
    /// 250 with its entry).
    struct Counters;
    impl KeyedCodec<u64> for Counters {
        fn encode(&self, _: &[u8], value: &mut u64) -> Result<Vec<u8>> {
            Ok(value.to_be_bytes().to_vec())
        }
        fn decode(&self, kg: usize, _: &[u8], entry: &[u8]) -> Result<u64> {
            let bytes: [u8; 8] = entry
                .try_into()
                .map_err(|_| OperatorError::State(format!("bad counter in key group {kg}")))?;
            Ok(u64::from_be_bytes(bytes))
        }
        fn size(&self, _: &u64) -> usize {
            100
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Counting and removing keys under a tiny budget, with snapshots in between, gives
        /// the same counts as a plain map, and memory stays near the budget.
        #[test]
        fn a_budget_changes_no_value(
            ops in proptest::collection::vec((0u8..40, 0u8..10), 1..400),
            budget_keys in 1usize..8,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let backend = StateBackend::open(dir.path()).unwrap();
            let mut state = KeyedState::default();
            let _ = state.use_store(backend.store(0, 0, budget_keys * 250), &[0], Counter::default());
            let mut reference: HashMap<u8, u64> = HashMap::default();
            for (key, op) in ops {
                let kg = (key % 4) as usize;
                match op {
                    0 => {
                        let got = state.take(kg, &[key], &Counters).unwrap();
                        proptest::prop_assert_eq!(got, reference.remove(&key));
                    }
                    1 => {
                        let mut snapshot = StateSnapshot::default();
                        state.snapshot(&mut snapshot, &Counters).unwrap();
                        backend.apply(0, 0, snapshot).unwrap();
                    }
                    _ => {
                        let n = state
                            .update(kg, &[key], &Counters, || Ok(0), |v| {
                                *v += 1;
                                Ok(*v)
                            })
                            .unwrap();
                        let r = reference.entry(key).or_default();
                        *r += 1;
                        proptest::prop_assert_eq!(n, *r);
                        state.evict_if_over(&Counters).unwrap();
                        proptest::prop_assert!(state.bytes_in_memory() <= budget_keys * 250);
                    }
                }
            }
            for key in 0u8..40 {
                let got = state.take((key % 4) as usize, &[key], &Counters).unwrap();
                proptest::prop_assert_eq!(got, reference.get(&key).copied());
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Arming and popping timers, caching at most a few and reading two at a time from
        /// the store, with snapshots applied in between and restores into a new queue over
        /// the same store: timers pop in time order, each once, as from a plain set.
        #[test]
        fn timers_in_the_store_pop_in_order(
            ops in proptest::collection::vec((0u8..4, 0u8..6, -20i64..20, 0u8..8), 1..300),
            cap in 1usize..6,
        ) {
            const RUN: usize = 2;
            let dir = tempfile::tempdir().unwrap();
            let backend = StateBackend::open(dir.path()).unwrap();
            let queue = || TimerQueue::with_limits(backend.store(0, 0, 1), 4, cap, RUN);
            let mut timers = queue();
            let mut reference: BTreeSet<(EventTime, u8, u16)> = BTreeSet::new();
            for (kg, key, t, op) in ops {
                match op {
                    0 => {
                        let mut snapshot = StateSnapshot::default();
                        timers.drain_into(&mut snapshot);
                        backend.apply(0, 0, snapshot).unwrap();
                        // A restore: only the store is left.
                        timers = queue();
                    }
                    1 | 2 => {
                        let got = timers.pop_due(t).unwrap();
                        let want = reference.iter().find(|r| r.0 <= t).copied();
                        match (got, want) {
                            (None, None) => {}
                            (Some((at, k, g)), Some((first, _, _))) => {
                                proptest::prop_assert_eq!(at, first, "not the earliest");
                                proptest::prop_assert!(reference.remove(&(at, k[0], g)));
                            }
                            (got, want) => proptest::prop_assert!(false, "{:?} vs {:?}", got, want),
                        }
                    }
                    3 => timers.flush(false).unwrap(),
                    _ => {
                        timers.arm(kg as u16, &[key], t).unwrap();
                        reference.insert((t, key, kg as u16));
                    }
                }
                proptest::prop_assert!(timers.cached <= cap);
            }
            while let Some((at, k, g)) = timers.pop_due(EventTime::MAX).unwrap() {
                proptest::prop_assert!(reference.remove(&(at, k[0], g)));
            }
            proptest::prop_assert!(reference.is_empty(), "left: {:?}", reference);
        }
    }
}
