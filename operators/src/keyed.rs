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
use crate::state::encode_i64;
use datafusion::arrow::array::{new_null_array, ArrayRef};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{HashMap, HashSet};
use oxflow_runtime::metrics::Counter;
use oxflow_runtime::state::{StateSnapshot, StateStore, StoreUse};
use oxflow_runtime::EventTime;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

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
    /// `prefix` (its other entries, not kept here, must not).
    pub(crate) fn use_store(
        &mut self,
        store: StateStore,
        prefix: u8,
        spilled_bytes: Counter,
    ) -> StoreUse {
        self.budget = store.memory_budget();
        self.store = Some(store);
        self.spilled_bytes = spilled_bytes;
        StoreUse::ByKey { prefix }
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
        let was_removed = self.removed.remove(&(kg, Box::from(key)));
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
/// With state in RocksDB, the first byte of a key's timer entry (then the key).
pub(crate) const TIMER: u8 = b't';

/// A key's timer: when, the key (without [`KEY`]), its key group.
type Timer = Reverse<(EventTime, Box<[u8]>, u16)>;

/// Per-key values in a [`KeyedState`] under the memory budget, each with a timer in event
/// time (when a key's session closes, a join key's rows expire or its window fires), as
/// Flink keeps keyed state and its timer service. Timers stay in memory (a time and a key
/// per key that has one) and go to the checkpoint as one small entry per key, so that a
/// restore, which copies values into the store without listing them, finds its keys again.
pub(crate) struct TimedKeys<V, C> {
    pub(crate) state: KeyedState<V>,
    pub(crate) codec: C,
    timers: BinaryHeap<Timer>,
    /// Timer entries to write at the next snapshot, by key (`None`: delete it).
    changed: HashMap<Box<[u8]>, (u16, Option<EventTime>)>,
}

impl<V, C: KeyedCodec<V>> TimedKeys<V, C> {
    /// Keeps values in `store` through `codec`; see [`KeyedState::use_store`].
    pub(crate) fn new(store: StateStore, codec: C, spilled_bytes: Counter) -> (Self, StoreUse) {
        let mut state = KeyedState::default();
        let used = state.use_store(store, KEY, spilled_bytes);
        let keys = TimedKeys {
            state,
            codec,
            timers: BinaryHeap::new(),
            changed: HashMap::default(),
        };
        (keys, used)
    }

    /// At a barrier: the changed values and timers.
    pub(crate) fn snapshot(&mut self, state: &mut StateSnapshot) -> Result<()> {
        self.state.snapshot(state, &self.codec)?;
        for (key, (kg, at)) in self.changed.drain() {
            let item = [&[TIMER][..], &key].concat();
            match at {
                Some(t) => state.put(kg as usize, &item, encode_i64(t)),
                None => state.delete(kg as usize, &item),
            }
        }
        Ok(())
    }

    /// Arms the timer of `key` (without [`KEY`]) at `at`, and has the checkpoint keep it. An
    /// earlier timer of the key stays armed: timers are lower bounds, and the operator
    /// re-arms a key whose timer found nothing due.
    pub(crate) fn arm(&mut self, kg: u16, key: &[u8], at: EventTime) {
        self.timers.push(Reverse((at, key.into(), kg)));
        self.changed.insert(key.into(), (kg, Some(at)));
    }

    /// Deletes the timer entry of `key`, whose value is gone.
    pub(crate) fn disarm(&mut self, kg: u16, key: Box<[u8]>) {
        self.changed.insert(key, (kg, None));
    }

    /// The next key whose timer is at or before `up_to`, with its key group.
    pub(crate) fn pop_due(&mut self, up_to: EventTime) -> Option<(EventTime, Box<[u8]>, u16)> {
        if self.timers.peek()?.0 .0 > up_to {
            return None;
        }
        self.timers.pop().map(|Reverse(t)| t)
    }

    /// Takes back a restored timer entry (`item` starts with [`TIMER`]).
    pub(crate) fn restore_timer(&mut self, kg: usize, item: &[u8], value: &[u8]) -> Result<()> {
        let bytes: [u8; 8] = value.try_into().map_err(|_| {
            OperatorError::State(format!(
                "a timer in key group {kg} has {} bytes, not 8",
                value.len()
            ))
        })?;
        // Restored into a new store: written again at the next snapshot.
        self.arm(kg as u16, &item[1..], i64::from_be_bytes(bytes));
        Ok(())
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
            let _ = state.use_store(backend.store(0, 0, budget_keys * 250), 0, Counter::default());
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
}
