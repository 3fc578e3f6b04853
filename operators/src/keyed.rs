//! Per-key state under a memory budget: Flink's keyed value state on its RocksDB backend,
//! with a write-back cache in front of it.
//!
//! Operators whose state is a value per key (a running aggregate's accumulators, a key's open
//! sessions) keep it in a [`KeyedState`]. With state in memory, every value stays in memory
//! and a barrier writes the values changed since the previous one. With state in RocksDB
//! ([`StoreUse::ByKey`]) memory holds at most the budget: when the values outgrow it, the
//! least recently used are written to the store (if changed) and dropped, and a key not in
//! memory is read back from the store when a record needs it. A barrier writes the changed
//! values still in memory; the store, values written early included, is what the checkpoint
//! cuts. Either way an entry is one key's value, so a checkpoint restores into either
//! storage at any parallelism.

use crate::error::Result;
use datafusion::arrow::array::{new_null_array, ArrayRef};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{HashMap, HashSet};
use oxflow_runtime::metrics::Counter;
use oxflow_runtime::state::{StateSnapshot, StateStore, StoreUse};

/// Arrow's row format for values whose every column is of a fixed-width type, so that a row
/// of the right length always decodes, whatever its bytes: per-key entries in it are a
/// fraction of an IPC batch's bytes and time. Entries are framed by a magic, a fingerprint of
/// the types (so that an entry of a job with other types is refused, not misread) and the
/// CRC-32 of the body.
pub(crate) struct FixedRows {
    pub(crate) converter: RowConverter,
    /// The bytes of one row.
    pub(crate) width: usize,
    fingerprint: u32,
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
            fingerprint: crc32fast::hash(format!("{types:?}").as_bytes()),
        }))
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
            return Err("the entry was written by a job with other aggregates".into());
        }
        if crc != crc32fast::hash(body).to_be_bytes() {
            return Err("the entry fails its checksum".into());
        }
        Ok(body)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::OperatorError;
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
