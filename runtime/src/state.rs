//! Operator state: what operators hand over at a checkpoint barrier, how it is kept in RocksDB
//! by key group, and how it comes back on restore (at any parallelism).
//!
//! Each subtask that holds state owns one RocksDB instance (a working directory no one else
//! touches). A key is `[operator u16][key group u16][operator's own key]`, so the entries of
//! one key group are contiguous and a restoring subtask reads exactly its key-group range from
//! every old subtask's checkpoint, whatever the old parallelism was. Entries that are not
//! keyed (an operator's watermark, say) use the reserved key group [`OPERATOR_STATE`] and are
//! handed to every restoring subtask (Flink's union list state).
//!
//! Where state lives while the job runs is the job's [`StateStorage`]:
//!
//! - `Memory` (the default, Flink's heap backend): operators keep their state in memory
//!   (Arrow accumulators are far faster than a key-value store per record) and write to
//!   RocksDB at each barrier only what changed since the previous one.
//! - `RocksDb` (Flink's RocksDB backend): operators that can spill get a [`StateStore`] and
//!   keep in memory only a write buffer of at most the memory budget; what does not fit, and
//!   everything at a barrier, goes to RocksDB, so state larger than memory works.
//!
//! Writes skip the WAL: durability comes from the checkpoint, which flushes the memtable and
//! hard-links the immutable SST files, so a checkpoint costs the changed bytes, not the whole
//! state.

use crate::error::{Result, RuntimeError};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use rocksdb::{
    checkpoint::Checkpoint, BlockBasedOptions, Direction, IngestExternalFileOptions, IteratorMode,
    Options, ReadOptions, SstFileWriter, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Where operators keep their state while the job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateStorage {
    /// In memory; written to RocksDB only at checkpoints. Fastest while state fits in memory.
    #[default]
    Memory,
    /// In RocksDB, with at most `memory_budget` bytes buffered in memory per stateful
    /// operator and subtask: state may be larger than memory. An operator whose rows
    /// Arrow's row format cannot hold keeps its state in memory as with `Memory`.
    RocksDb {
        /// Bytes of state an operator subtask keeps in memory before writing it to RocksDB.
        memory_budget: usize,
    },
}

/// How an operator keeps its state when the job keeps state in RocksDB (its answer to
/// [`crate::Operator::use_state_store`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreUse {
    /// In memory, as with [`StateStorage::Memory`]: the operator does not take the store.
    #[default]
    Memory,
    /// In the store, with an index of its entries in memory: on restore the operator is
    /// told the key of every entry copied into the store ([`RestoredState::stored`]).
    Indexed,
    /// Per-key entries (those whose key starts with one of `prefixes`) in the store, found
    /// by key when needed, as Flink's RocksDB backend keeps keyed state and timers: on
    /// restore they are copied into the store and not listed, so restoring costs no memory
    /// per key. Every other entry is handed over in [`RestoredState::keyed`], as with state
    /// in memory.
    ByKey {
        /// The first bytes of the operator's per-key entry keys (its values, its timers).
        prefixes: &'static [u8],
    },
}

/// The key group of entries that belong to an operator instance, not to a key.
pub const OPERATOR_STATE: u16 = u16::MAX;

/// The key groups subtask `index` of `parallelism` owns (the inverse of
/// [`crate::exchange::subtask_for_key_group`]).
///
/// ```
/// use oxflow_runtime::state::key_group_range;
/// assert_eq!(key_group_range(0, 3, 128), 0..43);
/// assert_eq!(key_group_range(1, 3, 128), 43..86);
/// assert_eq!(key_group_range(2, 3, 128), 86..128);
/// ```
pub fn key_group_range(index: usize, parallelism: usize, max_parallelism: usize) -> Range<usize> {
    let start = (index * max_parallelism).div_ceil(parallelism);
    let end = ((index + 1) * max_parallelism).div_ceil(parallelism);
    start..end
}

/// Which of a stage's `old_parallelism` checkpointed subtasks hold state a subtask owning
/// `key_groups` restores. A stage fed by hash exchanges only (`keyed`) keeps each entry in
/// the subtask owning its key group, so only the old subtasks whose key groups overlap count
/// (a restore, local or from a checkpoint store, reads only those); any other stage (a
/// source's chain, a two-phase aggregate's pre-aggregate) may hold entries of any key group in
/// any subtask, so every old subtask counts.
///
/// ```
/// use oxflow_runtime::state::{key_group_range, restore_sources};
/// // From 3 subtasks to 2: the new first (key groups 0..64) reads old 0 (0..43) and 1 (43..86).
/// assert_eq!(restore_sources(true, &key_group_range(0, 2, 128), 3, 128), vec![0, 1]);
/// assert_eq!(restore_sources(false, &key_group_range(0, 2, 128), 3, 128), vec![0, 1, 2]);
/// ```
pub fn restore_sources(
    keyed: bool,
    key_groups: &Range<usize>,
    old_parallelism: usize,
    max_parallelism: usize,
) -> Vec<usize> {
    (0..old_parallelism)
        .filter(|&j| {
            let old = key_group_range(j, old_parallelism, max_parallelism);
            !keyed || (old.start < key_groups.end && key_groups.start < old.end)
        })
        .collect()
}

/// The changes one operator makes to its stored state at a checkpoint barrier.
#[derive(Debug, Default)]
pub struct StateSnapshot {
    puts: Vec<(u16, Vec<u8>, Vec<u8>)>,
    deletes: Vec<(u16, Vec<u8>)>,
    operator: Option<Vec<u8>>,
}

impl StateSnapshot {
    /// Stores `value` under `key` in `key_group` (replacing what was there).
    pub fn put(&mut self, key_group: usize, key: &[u8], value: Vec<u8>) {
        self.puts.push((key_group as u16, key.to_vec(), value));
    }
    /// Removes `key` from `key_group`.
    pub fn delete(&mut self, key_group: usize, key: &[u8]) {
        self.deletes.push((key_group as u16, key.to_vec()));
    }
    /// Stores this operator instance's non-keyed state (its watermark, say).
    pub fn set_operator_state(&mut self, value: Vec<u8>) {
        self.operator = Some(value);
    }
    /// Whether the snapshot changes nothing.
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty() && self.operator.is_none()
    }
}

/// State handed to an operator when its job restores from a checkpoint.
#[derive(Debug, Default)]
pub struct RestoredState {
    /// `(key group, key, value)` of the key groups this subtask owns now, in key order.
    pub keyed: Vec<(usize, Vec<u8>, Vec<u8>)>,
    /// For an operator that took a [`StateStore`] as [`StoreUse::Indexed`]: `(key group,
    /// key)` of the entries copied into that store instead of being handed over in `keyed`
    /// (state may not fit in memory). Empty for [`StoreUse::ByKey`].
    pub stored: Vec<(usize, Vec<u8>)>,
    /// The non-keyed state of every subtask of the checkpointed job, in subtask order.
    pub operator: Vec<Vec<u8>>,
}

impl RestoredState {
    /// Whether there is nothing to restore.
    pub fn is_empty(&self) -> bool {
        self.keyed.is_empty() && self.stored.is_empty() && self.operator.is_empty()
    }
}

/// Closed while a RocksDB checkpoint is being cut: operators' writes wait, so a checkpoint
/// holds exactly the state at its barrier, never a write made after it.
#[derive(Debug, Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = closed;
        if !closed {
            self.opened.notify_all();
        }
    }
    fn wait_open(&self) {
        let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        while *closed {
            closed = self.opened.wait(closed).unwrap_or_else(|e| e.into_inner());
        }
    }
    fn is_open(&self) -> bool {
        !*self.closed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Opens the gate when dropped: a failed checkpoint must not stall the task.
struct Reopen<'a>(&'a Gate);

impl Drop for Reopen<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// One operator's part of its subtask's RocksDB instance, for operators that keep state
/// there while running ([`StateStorage::RocksDb`]). Keys are the operator's own (they are
/// prefixed with the operator and key group here).
#[derive(Clone)]
pub struct StateStore {
    db: Arc<DB>,
    /// Numbers the SST files this store's operators ingest.
    files: Arc<AtomicU64>,
    operator: u16,
    subtask: usize,
    gate: Arc<Gate>,
    memory_budget: usize,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("operator", &self.operator)
            .field("memory_budget", &self.memory_budget)
            .finish()
    }
}

impl StateStore {
    /// Bytes of state the operator may keep in memory.
    pub fn memory_budget(&self) -> usize {
        self.memory_budget
    }

    /// Applies `changes`, waiting while a checkpoint is being cut.
    pub fn write(&self, changes: StateSnapshot) -> Result<()> {
        self.gate.wait_open();
        write_changes(&self.db, self.operator, self.subtask, changes)
    }

    /// Whether a write would go through now (no checkpoint is being cut).
    pub fn can_write(&self) -> bool {
        self.gate.is_open()
    }

    /// Applies `changes` unless a checkpoint is being cut; gives them back if it is.
    pub fn try_write(&self, changes: StateSnapshot) -> Result<Option<StateSnapshot>> {
        if !self.can_write() {
            return Ok(Some(changes));
        }
        self.write(changes)?;
        Ok(None)
    }

    /// Writes `entries` (ascending by key group, then key) as one SST file that RocksDB takes
    /// in whole: a large spill then costs one sequential write, not a copy into the memtable
    /// and a flush at the next checkpoint. Waits while a checkpoint is being cut.
    pub fn ingest(&self, entries: Vec<(usize, Vec<u8>, Vec<u8>)>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        if let Some(w) = entries
            .windows(2)
            .find(|w| (w[0].0, &w[0].1) >= (w[1].0, &w[1].1))
        {
            return Err(RuntimeError::State(format!(
                "entries to ingest are out of order: key group {} after {}",
                w[1].0, w[0].0
            )));
        }
        let options = sst_options();
        let mut copy = SstCopy::new(&self.db, &self.files, &options)?;
        for (kg, key, value) in entries {
            copy.put(&entry_key(self.operator, kg as u16, &key), &value)?;
        }
        self.gate.wait_open();
        copy.ingest()
    }

    /// The value of `key` in `key_group`.
    pub fn get(&self, key_group: usize, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db
            .get(entry_key(self.operator, key_group as u16, key))
            .map_err(|e| rocks("reading state", e))
    }

    /// The keys of `key_group`, in order, from `from` (inclusive) on, that start with
    /// `prefix` (which `from` starts with too): at most `limit` of them. A scan stops at the
    /// prefix's end, so deleted entries beyond it cost nothing.
    pub fn scan_keys(
        &self,
        key_group: usize,
        from: &[u8],
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let kg = key_group as u16;
        let start = entry_key(self.operator, kg, from);
        let mut options = ReadOptions::default();
        // The first key after every key starting with the prefix.
        let mut end = entry_key(self.operator, kg, prefix);
        while end.last() == Some(&u8::MAX) {
            end.pop();
        }
        if let Some(last) = end.last_mut() {
            *last += 1;
            options.set_iterate_upper_bound(end);
        }
        let head = entry_key(self.operator, kg, &[]).len();
        let mut keys = Vec::new();
        let entries = self
            .db
            .iterator_opt(IteratorMode::From(&start, Direction::Forward), options);
        for entry in entries.take(limit) {
            let (k, _) = entry.map_err(|e| rocks("scanning state", e))?;
            keys.push(k[head..].to_vec());
        }
        Ok(keys)
    }
}

fn entry_key(operator: u16, key_group: u16, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&operator.to_be_bytes());
    k.extend_from_slice(&key_group.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn rocks(context: impl std::fmt::Display, e: rocksdb::Error) -> RuntimeError {
    RuntimeError::State(format!("{context}: {e}"))
}

fn write_batch(db: &DB, batch: WriteBatch) -> Result<()> {
    let mut options = WriteOptions::default();
    // The checkpoint is the durable copy; a WAL would only write everything twice.
    options.disable_wal(true);
    db.write_opt(batch, &options)
        .map_err(|e| rocks("writing state", e))
}

fn write_changes(db: &DB, op: u16, subtask: usize, changes: StateSnapshot) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut batch = WriteBatch::default();
    for (kg, key) in &changes.deletes {
        batch.delete(entry_key(op, *kg, key));
    }
    for (kg, key, value) in &changes.puts {
        batch.put(entry_key(op, *kg, key), value);
    }
    if let Some(value) = &changes.operator {
        batch.put(
            entry_key(op, OPERATOR_STATE, &(subtask as u32).to_be_bytes()),
            value,
        );
    }
    write_batch(db, batch)
}

/// One file of a checkpoint, with what verifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the checkpoint directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC-32 (IEEE) of the content.
    pub crc32: u32,
}

/// CRC-32 of a file's content.
pub fn file_crc32(path: &Path) -> Result<(u64, u32)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)
        .map_err(|e| RuntimeError::io(format!("reading {}", path.display()), e))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| RuntimeError::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hasher.finalize()))
}

/// Entries written into an SST file beside a store, then moved into it whole.
struct SstCopy<'a> {
    db: &'a DB,
    path: PathBuf,
    writer: SstFileWriter<'a>,
    empty: bool,
}

/// Options of the SST files written for a store: spilled Arrow state of distinct keys barely
/// compresses, and is read back once.
fn sst_options() -> Options {
    let mut options = Options::default();
    options.set_compression_type(rocksdb::DBCompressionType::None);
    options.set_block_based_table_factory(&table_options());
    options
}

/// Tables with a Bloom filter (10 bits a key, about 1 % false positives): operators that keep
/// state by key ([`StoreUse::ByKey`]) look up every key not in memory, and most lookups of a
/// new key find nothing; the filter answers those without reading a data block.
fn table_options() -> BlockBasedOptions {
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table
}

impl<'a> SstCopy<'a> {
    fn new(db: &'a DB, files: &AtomicU64, options: &'a Options) -> Result<Self> {
        let path = db.path().join(format!(
            "ingest-{}.sst",
            files.fetch_add(1, Ordering::Relaxed)
        ));
        let writer = SstFileWriter::create(options);
        writer
            .open(&path)
            .map_err(|e| rocks(format!("writing {}", path.display()), e))?;
        Ok(SstCopy {
            db,
            path,
            writer,
            empty: true,
        })
    }

    /// Adds an entry; keys must ascend.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.empty = false;
        self.writer
            .put(key, value)
            .map_err(|e| rocks(format!("writing {}", self.path.display()), e))
    }

    /// Moves the file into the store.
    fn ingest(mut self) -> Result<()> {
        let result = if self.empty {
            Ok(())
        } else {
            self.writer
                .finish()
                .map_err(|e| rocks(format!("writing {}", self.path.display()), e))
                .and_then(|_| {
                    let mut ingest = IngestExternalFileOptions::default();
                    ingest.set_move_files(true);
                    self.db
                        .ingest_external_file_opts(&ingest, vec![&self.path])
                        .map_err(|e| rocks(format!("ingesting {}", self.path.display()), e))
                })
        };
        // Moved into the store when ingested; a failed ingestion leaves nothing behind either.
        let _ = std::fs::remove_file(&self.path);
        result
    }
}

/// A subtask's state store: a RocksDB instance in a working directory.
pub struct StateBackend {
    db: Arc<DB>,
    gate: Arc<Gate>,
    files: Arc<AtomicU64>,
    /// Checksums of SST files already described by an earlier checkpoint (SST files are
    /// immutable and never reuse a name), so each checkpoint only reads its new files.
    known: HashMap<String, (u64, u32)>,
}

/// What a subtask's state checkpoint holds.
#[derive(Debug, Clone)]
pub struct StateFiles {
    /// Every file, relative to the checkpoint directory.
    pub files: Vec<FileEntry>,
    /// Bytes of files this checkpoint added (not already in an earlier one).
    pub new_bytes: u64,
}

impl StateBackend {
    /// Opens (creating) the store in `dir`, which must be this subtask's alone.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with_budget(dir, None)
    }

    /// As [`StateBackend::open`], for operators that keep state in the store while they
    /// run, RocksDB itself using about `rocksdb_memory` bytes (`None`: state in memory,
    /// written at barriers; RocksDB's defaults). As Flink counts RocksDB's write buffers and
    /// block cache within managed memory: two write buffers of a quarter of it each and a
    /// block cache of half (at least 1 MiB each, at most RocksDB's defaults of 64 MiB and
    /// 32 MiB). A Bloom filter on the write buffers lets a lookup of a key that is not
    /// there, the usual case for a key not yet seen, skip the buffer's search.
    pub fn open_with_budget(dir: &Path, rocksdb_memory: Option<usize>) -> Result<Self> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut table = table_options();
        if let Some(memory) = rocksdb_memory {
            const MIB: usize = 1 << 20;
            options.set_write_buffer_size((memory / 4).clamp(MIB, 64 * MIB));
            options.set_max_write_buffer_number(2);
            options.set_memtable_prefix_bloom_ratio(0.1);
            options.set_memtable_whole_key_filtering(true);
            table.set_block_cache(&rocksdb::Cache::new_lru_cache(
                (memory / 2).clamp(MIB, 32 * MIB),
            ));
        }
        options.set_block_based_table_factory(&table);
        let db = DB::open(&options, dir)
            .map_err(|e| rocks(format!("opening state in {}", dir.display()), e))?;
        Ok(StateBackend {
            db: Arc::new(db),
            gate: Arc::default(),
            files: Arc::default(),
            known: HashMap::new(),
        })
    }

    /// Applies one operator's snapshot.
    pub fn apply(&self, operator: usize, subtask: usize, snapshot: StateSnapshot) -> Result<()> {
        write_changes(&self.db, operator as u16, subtask, snapshot)
    }

    /// Operator `operator`'s handle on this store, for keeping state in it while running.
    pub fn store(&self, operator: usize, subtask: usize, memory_budget: usize) -> StateStore {
        StateStore {
            db: self.db.clone(),
            files: self.files.clone(),
            operator: operator as u16,
            subtask,
            gate: self.gate.clone(),
            memory_budget,
        }
    }

    /// Holds back writes through [`StateStore`]s until the next [`StateBackend::checkpoint`]
    /// has cut its copy: called at the barrier, before the task goes on processing.
    pub fn freeze(&self) {
        self.gate.set(true);
    }

    /// Writes a consistent copy of the store into `target` (which must not exist): the memtable
    /// is flushed and SST files are hard-linked where the file system allows. `relative_to` is
    /// the checkpoint directory the file paths are relative to.
    pub fn checkpoint(&mut self, target: &Path, relative_to: &Path) -> Result<StateFiles> {
        {
            let _reopen = Reopen(&self.gate);
            let checkpoint =
                Checkpoint::new(&self.db).map_err(|e| rocks("preparing a checkpoint", e))?;
            checkpoint.create_checkpoint(target).map_err(|e| {
                rocks(
                    format!("writing the state checkpoint {}", target.display()),
                    e,
                )
            })?;
        }
        let mut files = Vec::new();
        let mut new_bytes = 0;
        for entry in std::fs::read_dir(target)
            .map_err(|e| RuntimeError::io(format!("listing {}", target.display()), e))?
        {
            let entry =
                entry.map_err(|e| RuntimeError::io(format!("listing {}", target.display()), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let immutable = name.ends_with(".sst");
            let (size, crc32) = match self.known.get(&name) {
                Some(&known) if immutable => known,
                _ => {
                    let described = file_crc32(&path)?;
                    new_bytes += described.0;
                    if immutable {
                        self.known.insert(name.clone(), described);
                    }
                    described
                }
            };
            let relative = path.strip_prefix(relative_to).unwrap_or(&path);
            files.push(FileEntry {
                path: relative.to_string_lossy().into_owned(),
                size,
                crc32,
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        // Forget SST files compacted away (they will not come back under the same name).
        self.known
            .retain(|name, _| files.iter().any(|f| f.path.ends_with(name.as_str())));
        Ok(StateFiles { files, new_bytes })
    }
}

/// Reads the state of operators `0..operators` of a chain for `key_groups` out of old
/// subtasks' checkpointed stores, one [`RestoredState`] per operator. The keyed entries of an
/// operator `into` says keeps its state in the store are copied there (a batch at a time, so
/// state larger than memory restores) and only their keys are listed.
pub fn read_state(
    dirs: &[PathBuf],
    operators: usize,
    key_groups: Range<usize>,
    into: Option<(&StateBackend, &[StoreUse])>,
) -> Result<Vec<RestoredState>> {
    let mut restored: Vec<RestoredState> =
        (0..operators).map(|_| RestoredState::default()).collect();
    let mut options = Options::default();
    options.create_if_missing(false);
    // Each old store is opened once, and read for every operator of the chain.
    for dir in dirs {
        let db = DB::open_for_read_only(&options, dir, false)
            .map_err(|e| rocks(format!("opening checkpointed state {}", dir.display()), e))?;
        for (op, state) in restored.iter_mut().enumerate() {
            let op = op as u16;
            let from = entry_key(op, key_groups.start as u16, &[]);
            let to = entry_key(op, key_groups.end as u16, &[]);
            let use_ = into.map_or(StoreUse::Memory, |(_, ops)| {
                ops.get(op as usize).copied().unwrap_or_default()
            });
            let copy_to = into
                .filter(|_| use_ != StoreUse::Memory)
                .map(|(backend, _)| backend);
            // Copied entries go into an SST file the store then takes in whole: one
            // sequential write, no memtable (the old store's keys come in order).
            let options = sst_options();
            let mut copy = match copy_to {
                Some(backend) => Some(SstCopy::new(&backend.db, &backend.files, &options)?),
                None => None,
            };
            for item in db.iterator(IteratorMode::From(&from, Direction::Forward)) {
                let (k, v) = item.map_err(|e| rocks(format!("reading {}", dir.display()), e))?;
                if k.as_ref() >= to.as_slice() {
                    break;
                }
                let Some(&[_, _, kg0, kg1]) = k.get(..4) else {
                    return Err(RuntimeError::State(format!(
                        "{}: an entry key of {} bytes is shorter than its prefix",
                        dir.display(),
                        k.len()
                    )));
                };
                let kg = u16::from_be_bytes([kg0, kg1]) as usize;
                let copied = match use_ {
                    StoreUse::Memory => None,
                    StoreUse::Indexed => copy.as_mut(),
                    StoreUse::ByKey { prefixes } => copy
                        .as_mut()
                        .filter(|_| k.get(4).is_some_and(|b| prefixes.contains(b))),
                };
                match copied {
                    None => state.keyed.push((kg, k[4..].to_vec(), v.to_vec())),
                    Some(copy) => {
                        // Same operator, same key group: the entry key is the same.
                        copy.put(&k, &v)?;
                        if use_ == StoreUse::Indexed {
                            state.stored.push((kg, k[4..].to_vec()));
                        }
                    }
                }
            }
            if let Some(copy) = copy {
                copy.ingest()?;
            }
            let prefix = entry_key(op, OPERATOR_STATE, &[]);
            for item in db.prefix_iterator(&prefix) {
                let (k, v) = item.map_err(|e| rocks(format!("reading {}", dir.display()), e))?;
                if !k.starts_with(&prefix) {
                    break;
                }
                state.operator.push(v.to_vec());
            }
        }
    }
    Ok(restored)
}

/// The first bytes of a state entry: format 1, an Arrow IPC stream behind a CRC-32. Entries
/// written before it (a bare IPC stream, starting with 0xFFFFFFFF) are still read.
const ENTRY_TAG: &[u8; 4] = b"OXS1";

/// Encodes a batch for a state entry: [`ENTRY_TAG`], the CRC-32 of the rest (big endian),
/// then the batch as an Arrow IPC stream. The checksum keeps damaged bytes away from the IPC
/// decoder, which is not built for hostile input.
pub fn encode_batch(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut ipc = Vec::new();
    let mut writer = StreamWriter::try_new(&mut ipc, &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    drop(writer);
    let mut out = Vec::with_capacity(ipc.len() + 8);
    out.extend_from_slice(ENTRY_TAG);
    out.extend_from_slice(&crc32fast::hash(&ipc).to_be_bytes());
    out.extend_from_slice(&ipc);
    Ok(out)
}

/// Decodes a state entry written by [`encode_batch`]; `what` names it in errors. Damage is an
/// error, never a panic: the checksum catches it, and a panic of the IPC decoder on what
/// passes (an entry of the older format has no checksum) is caught and reported too.
pub fn decode_batch(bytes: &[u8], what: &str) -> Result<RecordBatch> {
    let corrupt = |m: String| RuntimeError::State(format!("state entry {what} is unreadable: {m}"));
    let ipc = match bytes.strip_prefix(ENTRY_TAG.as_slice()) {
        Some(rest) => {
            let (crc, ipc) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| corrupt("truncated before its checksum".into()))?;
            if crc32fast::hash(ipc) != u32::from_be_bytes(*crc) {
                return Err(corrupt("it fails its checksum".into()));
            }
            ipc
        }
        // The older format: a bare IPC stream, which starts with its continuation marker.
        None if bytes.starts_with(&[0xff; 4]) => bytes,
        None => {
            return Err(corrupt(
                "it is not a state entry of any known format".into(),
            ))
        }
    };
    let decoded = std::panic::catch_unwind(|| -> Result<RecordBatch> {
        let mut reader = StreamReader::try_new(ipc, None).map_err(|e| corrupt(e.to_string()))?;
        match reader.next() {
            Some(batch) => batch.map_err(|e| corrupt(e.to_string())),
            None => Err(corrupt("no batch".into())),
        }
    });
    decoded.unwrap_or_else(|_| Err(corrupt("the Arrow IPC decoder rejected it".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// A keyed subtask restores from exactly the old subtasks that owned one of its key
        /// groups (counted key group by key group); any other from all of them.
        #[test]
        fn restore_sources_are_the_old_owners_of_its_key_groups(
            max in 1usize..300,
            old in 1usize..40,
            new in 1usize..40,
            keyed: bool,
        ) {
            let (old, new) = (old.min(max), new.min(max));
            for i in 0..new {
                let mine = key_group_range(i, new, max);
                let naive: Vec<usize> = (0..old)
                    .filter(|&j| !keyed || mine.clone().any(|kg| key_group_range(j, old, max).contains(&kg)))
                    .collect();
                proptest::prop_assert_eq!(restore_sources(keyed, &mine, old, max), naive);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        /// Fuzz: a state entry's decoder takes any bytes (a corrupt store) without panicking.
        #[test]
        fn decode_batch_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_batch(&bytes, "fuzzed");
        }
    }

    proptest::proptest! {
        // Fewer: the IPC decoder panics on most of these (caught), and a panic is slow to
        // report when backtraces are on.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Fuzz: bytes in the older format's framing reach the IPC decoder itself, whose
        /// panics come out as errors.
        #[test]
        fn decode_batch_of_the_older_format_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let mut framed = vec![0xff; 4];
            framed.extend(bytes);
            let _ = decode_batch(&framed, "fuzzed");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// Fuzz: the same from a real entry with bytes flipped, so the IPC framing is valid
        /// and the damage is deeper in.
        #[test]
        fn decode_batch_of_a_damaged_entry_never_panics(
            flips in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 1..8)
        ) {
            use datafusion::arrow::array::{Int64Array, StringArray};
            use datafusion::arrow::datatypes::{DataType, Field, Schema};
            let schema = Arc::new(Schema::new(vec![
                Field::new("k", DataType::Utf8, false),
                Field::new("v", DataType::Int64, true),
            ]));
            let batch = RecordBatch::try_new(schema, vec![
                Arc::new(StringArray::from(vec!["a", "bb", "ccc"])),
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])),
            ]).unwrap();
            let mut bytes = encode_batch(&batch).unwrap();
            for (at, value) in flips {
                let n = bytes.len();
                bytes[at % n] ^= value | 1;
            }
            let _ = decode_batch(&bytes, "damaged");
        }
    }

    #[test]
    fn key_group_ranges_partition_and_match_the_exchange() {
        for p in 1..=9 {
            let mut next = 0;
            for i in 0..p {
                let r = key_group_range(i, p, 128);
                assert_eq!(r.start, next);
                for kg in r.clone() {
                    assert_eq!(crate::exchange::subtask_for_key_group(kg, p, 128), i);
                }
                next = r.end;
            }
            assert_eq!(next, 128);
        }
    }

    #[test]
    fn state_is_read_back_by_key_group_range_from_several_stores() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dirs = Vec::new();
        for subtask in 0..2 {
            let mut backend =
                StateBackend::open(&tmp.path().join(format!("work{subtask}"))).unwrap();
            let mut snap = StateSnapshot::default();
            for kg in 0..128usize {
                if kg % 2 == subtask {
                    snap.put(kg, b"k", vec![kg as u8]);
                }
            }
            snap.put(5, b"gone", vec![1]);
            snap.set_operator_state(vec![subtask as u8]);
            backend.apply(0, subtask, snap).unwrap();
            let mut snap = StateSnapshot::default();
            snap.delete(5, b"gone");
            backend.apply(0, subtask, snap).unwrap();
            // Another operator's entries must not leak into operator 0's.
            let mut other = StateSnapshot::default();
            other.put(10, b"x", vec![9]);
            backend.apply(1, subtask, other).unwrap();
            let target = tmp.path().join(format!("chk{subtask}"));
            let files = backend.checkpoint(&target, tmp.path()).unwrap();
            assert!(files
                .files
                .iter()
                .any(|f| f.path.starts_with(&format!("chk{subtask}/"))));
            dirs.push(target);
        }
        let mut restored = read_state(&dirs, 2, 10..20, None).unwrap();
        let other = restored.pop().unwrap();
        assert!(
            other.keyed.iter().all(|(kg, _, _)| *kg == 10),
            "operator 1 keeps its own"
        );
        let restored = restored.pop().unwrap();
        let mut groups: Vec<usize> = restored.keyed.iter().map(|(kg, _, _)| *kg).collect();
        groups.sort();
        assert_eq!(groups, (10..20).collect::<Vec<_>>());
        assert!(restored
            .keyed
            .iter()
            .all(|(kg, k, v)| k == b"k" && v == &vec![*kg as u8]));
        assert_eq!(restored.operator, vec![vec![0], vec![1]]);
        let other = read_state(&dirs, 2, 0..128, None).unwrap().pop().unwrap();
        assert_eq!(other.keyed.len(), 2);

        // Copied into a store instead: only keys come back, values are in the store.
        let backend = StateBackend::open(&tmp.path().join("new")).unwrap();
        let mut restored = read_state(
            &dirs,
            2,
            10..20,
            Some((&backend, &[StoreUse::Indexed, StoreUse::Memory])),
        )
        .unwrap();
        let other = restored.pop().unwrap();
        let copied = restored.pop().unwrap();
        assert!(copied.keyed.is_empty());
        assert_eq!(copied.stored.len(), 10);
        assert_eq!(copied.operator, vec![vec![0], vec![1]]);
        assert_eq!(other.keyed.len(), 2, "operator 1 was not copied");
        let store = backend.store(0, 0, 0);
        for (kg, key) in &copied.stored {
            assert_eq!(store.get(*kg, key).unwrap(), Some(vec![*kg as u8]));
        }
        assert_eq!(backend.store(1, 0, 0).get(10, b"x").unwrap(), None);
        let other = read_state(&dirs, 2, 0..128, None).unwrap().pop().unwrap();
        assert_eq!(other.keyed.len(), 2);

        // By key: entries with the prefix are copied and not listed, the others handed over.
        let backend = StateBackend::open(&tmp.path().join("by-key")).unwrap();
        let uses = [
            StoreUse::ByKey { prefixes: b"k" },
            StoreUse::ByKey { prefixes: b"k" },
        ];
        let mut restored = read_state(&dirs, 2, 10..20, Some((&backend, &uses))).unwrap();
        let other = restored.pop().unwrap();
        let copied = restored.pop().unwrap();
        assert!(copied.keyed.is_empty() && copied.stored.is_empty());
        assert_eq!(
            backend.store(0, 0, 0).get(11, b"k").unwrap(),
            Some(vec![11])
        );
        assert_eq!(other.keyed.len(), 2, "operator 1's b\"x\" has no prefix");
        assert!(other.stored.is_empty());
    }

    #[test]
    fn a_second_checkpoint_rereads_only_new_files() {
        let tmp = tempfile::tempdir().unwrap();
        let mut backend = StateBackend::open(&tmp.path().join("work")).unwrap();
        // Incompressible bytes (the store compresses with LZ4).
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut snap = StateSnapshot::default();
        snap.put(1, b"a", noise);
        backend.apply(0, 0, snap).unwrap();
        let first = backend
            .checkpoint(&tmp.path().join("c1"), tmp.path())
            .unwrap();
        let mut snap = StateSnapshot::default();
        snap.put(2, b"b", vec![8; 1000]);
        backend.apply(0, 0, snap).unwrap();
        let second = backend
            .checkpoint(&tmp.path().join("c2"), tmp.path())
            .unwrap();
        assert!(first.new_bytes > 100_000, "{first:?}");
        assert!(second.new_bytes < first.new_bytes / 2, "{second:?}");
    }

    #[test]
    fn a_write_after_the_barrier_waits_and_stays_out_of_the_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let mut backend = StateBackend::open(&tmp.path().join("work")).unwrap();
        let store = backend.store(0, 0, 1 << 20);
        let mut before = StateSnapshot::default();
        before.put(3, b"before", vec![1]);
        store.write(before).unwrap();
        // The barrier: the task freezes the store and hands the checkpoint to a thread.
        backend.freeze();
        let mut after = StateSnapshot::default();
        after.put(3, b"after", vec![2]);
        let after = store
            .try_write(after)
            .unwrap()
            .expect("refused while frozen");
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || store.write(after).unwrap())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!writer.is_finished(), "the write waits for the checkpoint");
        let target = tmp.path().join("chk");
        backend.checkpoint(&target, tmp.path()).unwrap();
        writer.join().unwrap();
        assert_eq!(store.get(3, b"after").unwrap(), Some(vec![2]));
        let restored = read_state(&[target], 1, 0..128, None).unwrap().remove(0);
        let keys: Vec<&[u8]> = restored
            .keyed
            .iter()
            .map(|(_, k, _)| k.as_slice())
            .collect();
        assert_eq!(keys, vec![b"before".as_slice()]);
    }

    #[test]
    fn ingested_entries_are_read_back_and_checkpointed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut backend = StateBackend::open(&tmp.path().join("work")).unwrap();
        let store = backend.store(2, 0, 0);
        let entries: Vec<_> = (0..128usize)
            .map(|kg| (kg, b"run".to_vec(), vec![kg as u8; 1000]))
            .collect();
        store.ingest(entries).unwrap();
        let err = store
            .ingest(vec![(5, b"b".to_vec(), vec![]), (4, b"a".to_vec(), vec![])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("out of order"), "{err}");
        assert_eq!(store.get(77, b"run").unwrap(), Some(vec![77; 1000]));
        let target = tmp.path().join("chk");
        backend.checkpoint(&target, tmp.path()).unwrap();
        let restored = read_state(&[target], 3, 10..12, None).unwrap().remove(2);
        assert_eq!(restored.keyed.len(), 2);
        assert!(
            std::fs::read_dir(tmp.path().join("work"))
                .unwrap()
                .all(|f| !f
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("spill-")),
            "the ingested file was moved into the store"
        );
    }

    #[test]
    /// Found by the fuzzer: one byte changed in a state entry of the first format made
    /// Arrow's IPC reader panic (slicing a buffer past its end) instead of failing.
    fn damaged_entry_that_panicked_the_ipc_reader() {
        use datafusion::arrow::array::{Int64Array, StringArray};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "bb", "ccc"])),
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])),
            ],
        )
        .unwrap();
        let entry = encode_batch(&batch).unwrap();
        // The same damage in the bare IPC stream the first format wrote, and in this one.
        let mut bare = entry[8..].to_vec();
        let at = (9148859590965202665usize) % bare.len();
        bare[at] ^= 3;
        assert!(decode_batch(&bare, "damaged").is_err());
        let mut tagged = entry.clone();
        let at = 8 + (9148859590965202665usize) % (tagged.len() - 8);
        tagged[at] ^= 3;
        let e = decode_batch(&tagged, "damaged").unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        assert_eq!(decode_batch(&entry, "whole").unwrap(), batch);
    }

    #[test]
    fn a_corrupt_entry_is_an_error_not_a_panic() {
        let e = decode_batch(b"not arrow", "pane 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pane 3"), "{e}");
    }
}
