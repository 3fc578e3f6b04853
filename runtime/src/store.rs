//! Completed checkpoints kept beyond this machine: a checkpoint store.
//!
//! Checkpoints are cut on the local disk (`--checkpoint-dir`: RocksDB checkpoints are hard
//! links, so cutting one is cheap). With a store, the coordinator then copies each completed
//! checkpoint to it before the sinks commit, so that output is never committed from a
//! checkpoint the store does not hold; a job whose machine is lost restores from the store on
//! another one (Flink's checkpoint storage on a distributed file system).
//!
//! Layout under the store's root, as Flink's incremental RocksDB checkpoints share files:
//! - `files/<path>.<crc32>-<size>`: a state file by its path in the checkpoint and its
//!   content. State files never change once written (RocksDB's SST files), so a checkpoint
//!   uploads only the files no earlier one did: the upload is incremental, by file.
//! - `chk-<id>/_manifest.json`: the manifest, uploaded last: a checkpoint is in the store
//!   once its manifest is.
//!
//! A restore downloads the newest checkpoint of the store that is newer than the local ones
//! into the checkpoint directory, checking every file against its manifest, and passes over
//! a checkpoint with a missing or damaged object to the one before. Retention keeps the
//! store's newest checkpoints and the files they name. Savepoints stay local.

use crate::checkpoint::{
    checkpoint_dir, checkpoint_ids, parse_manifest, Manifest, Restored, MANIFEST,
};
use crate::error::{Result, RuntimeError};
use crate::state::FileEntry;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

/// Objects by key: what a checkpoint store needs of a file system or an object store.
pub trait CheckpointStore: Send + Sync {
    /// Where it is, for messages (`s3://bucket/prefix`, `file:///dir`).
    fn describe(&self) -> String;
    /// Writes object `key` whole (replacing it).
    fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()>;
    /// Reads object `key`; `None` if there is none.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// The keys of every object whose key starts with `prefix`.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Deletes object `key` (nothing if there is none).
    fn delete(&self, key: &str) -> Result<()>;
}

/// A shared checkpoint store.
#[derive(Clone)]
pub struct StoreRef(pub Arc<dyn CheckpointStore>);

impl std::fmt::Debug for StoreRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.describe())
    }
}

const FILES: &str = "files/";

/// Every state file `manifest` names.
fn state_files(manifest: &Manifest) -> impl Iterator<Item = &FileEntry> {
    manifest
        .stages
        .iter()
        .flat_map(|s| &s.subtasks)
        .flat_map(|t| &t.files)
}

/// The key of a state file's content.
fn file_key(file: &FileEntry) -> String {
    format!("{FILES}{}.{:08x}-{}", file.path, file.crc32, file.size)
}

fn manifest_key(id: u64) -> String {
    format!("chk-{id:010}/{MANIFEST}")
}

/// Ids of the checkpoints in the store, newest first.
fn store_ids(store: &dyn CheckpointStore) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> = store
        .list("chk-")?
        .iter()
        .filter_map(|k| k.strip_suffix(&format!("/{MANIFEST}")))
        .filter_map(|d| d.strip_prefix("chk-")?.parse().ok())
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    Ok(ids)
}

fn store_error(store: &dyn CheckpointStore, what: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Checkpoint(format!("checkpoint store {}: {what}", store.describe()))
}

/// Copies completed checkpoint `manifest` (in `dir`) to the store: the state files it does
/// not hold yet, then the manifest; then drops the store's checkpoints beyond the `retained`
/// newest, and the files none of those names. Returns the bytes uploaded.
pub fn upload(
    store: &dyn CheckpointStore,
    dir: &Path,
    manifest: &Manifest,
    retained: usize,
) -> Result<u64> {
    let mut uploaded = upload_missing(store, dir, manifest)?;
    let path = dir.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(RuntimeError::io_while(format!(
        "reading {} to upload it",
        path.display()
    )))?;
    uploaded += bytes.len() as u64;
    store.put(&manifest_key(manifest.id), bytes)?;
    retain(store, retained)?;
    Ok(uploaded)
}

/// Copies the state `files` (paths relative to `dir`) that `held` lacks to the store, and
/// adds them to it; returns the bytes uploaded. A worker's subtask calls this for its own
/// files before it acknowledges a checkpoint, with `held` what it uploaded earlier in the
/// attempt (content-addressed keys: a file named there is in the store until a completed
/// checkpoint's retention drops it, and each one the subtask still has is named by the last
/// completed checkpoint).
pub fn upload_files<'a>(
    store: &dyn CheckpointStore,
    dir: &Path,
    files: impl IntoIterator<Item = &'a FileEntry>,
    held: &mut BTreeSet<String>,
) -> Result<u64> {
    let mut uploaded = 0;
    for file in files {
        let key = file_key(file);
        if held.contains(&key) {
            continue;
        }
        let path = dir.join(&file.path);
        let bytes = std::fs::read(&path).map_err(RuntimeError::io_while(format!(
            "reading {} to upload it",
            path.display()
        )))?;
        uploaded += bytes.len() as u64;
        store.put(&key, bytes)?;
        held.insert(key);
    }
    Ok(uploaded)
}

/// Keeps the `retained` newest checkpoints of the store and the files they name.
fn retain(store: &dyn CheckpointStore, retained: usize) -> Result<()> {
    let ids = store_ids(store)?;
    let (kept, dropped) = ids.split_at(retained.max(1).min(ids.len()));
    for id in dropped {
        store.delete(&manifest_key(*id))?;
    }
    let mut named = BTreeSet::new();
    for &id in kept {
        // A kept manifest that cannot be read names nothing it could still restore.
        if let Ok(Some((manifest, _))) = fetch_manifest(store, id) {
            named.extend(state_files(&manifest).map(file_key));
        }
    }
    for key in store.list(FILES)? {
        if !named.contains(&key) {
            store.delete(&key)?;
        }
    }
    Ok(())
}

/// Checkpoint `id`'s manifest in the store, checked as a local one is, with its bytes.
fn fetch_manifest(store: &dyn CheckpointStore, id: u64) -> Result<Option<(Manifest, Vec<u8>)>> {
    let Some(bytes) = store.get(&manifest_key(id))? else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| store_error(store, format!("checkpoint {id}'s manifest is not text")))?;
    let name = std::path::PathBuf::from(format!("{}/chk-{id:010}", store.describe()));
    let manifest = parse_manifest(text, &name)?;
    Ok(Some((manifest, bytes)))
}

/// Downloads into `root` the newest checkpoint of the store that is newer than every
/// complete one in `root` and that verifies, passing over (and naming) any with a missing or
/// damaged object. Returns its id, if one was downloaded, and why newer ones were passed over.
pub fn fetch_latest(
    store: &dyn CheckpointStore,
    root: &Path,
) -> Result<(Option<u64>, Vec<String>)> {
    let local = checkpoint_ids(root)?
        .into_iter()
        .find(|&id| checkpoint_dir(root, id).join(MANIFEST).exists());
    let mut skipped = Vec::new();
    for id in store_ids(store)? {
        if local.is_some_and(|l| id <= l) {
            break;
        }
        match download(store, root, id) {
            Ok(()) => return Ok((Some(id), skipped)),
            Err(e) => {
                tracing::warn!(checkpoint = id, error = %e, "skipping a checkpoint of the store");
                skipped.push(e.to_string());
                let _ = std::fs::remove_dir_all(checkpoint_dir(root, id));
            }
        }
    }
    Ok((None, skipped))
}

/// Downloads checkpoint `id` into `root`: state files first, checked, the manifest last.
fn download(store: &dyn CheckpointStore, root: &Path, id: u64) -> Result<()> {
    let (manifest, bytes) = fetch_manifest(store, id)?
        .ok_or_else(|| store_error(store, format!("checkpoint {id} has no manifest")))?;
    let dir = checkpoint_dir(root, id);
    let _ = std::fs::remove_dir_all(&dir);
    // Each file is checked as it comes, before the manifest makes the copy a complete
    // checkpoint.
    fetch_files(store, &dir, &manifest)?;
    let staged = dir.join(format!("{MANIFEST}.store"));
    std::fs::create_dir_all(&dir).map_err(RuntimeError::io_while(format!(
        "creating {}",
        dir.display()
    )))?;
    std::fs::write(&staged, &bytes).map_err(RuntimeError::io_while(format!(
        "writing {}",
        staged.display()
    )))?;
    std::fs::rename(&staged, dir.join(MANIFEST)).map_err(RuntimeError::io_while(format!(
        "renaming {}",
        staged.display()
    )))?;
    crate::checkpoint::sync_dir(&dir)
}

/// Makes sure the store holds every state file of checkpoint `restored` before a cluster's
/// workers restore from it: those it lacks are uploaded from the checkpoint's directory (a
/// savepoint, or a checkpoint taken in one process). Returns the bytes uploaded.
pub fn ensure_files(store: &dyn CheckpointStore, restored: &Restored) -> Result<u64> {
    upload_missing(store, &restored.dir, &restored.manifest)
}

/// Uploads the state files of checkpoint `manifest` (in `dir`) that the store lacks.
fn upload_missing(store: &dyn CheckpointStore, dir: &Path, manifest: &Manifest) -> Result<u64> {
    let mut held: BTreeSet<String> = store.list(FILES)?.into_iter().collect();
    upload_files(store, dir, state_files(manifest), &mut held)
}

/// Copies checkpoint `manifest`, whose state files are in the store, to `target` as a
/// complete checkpoint directory (a savepoint of a job whose tasks ran on workers).
pub fn save_checkpoint(
    store: &dyn CheckpointStore,
    manifest: &Manifest,
    target: &Path,
) -> Result<()> {
    if target.exists() {
        return Err(RuntimeError::Checkpoint(format!(
            "savepoint {} already exists",
            target.display()
        )));
    }
    let staged = target.with_extension("inprogress");
    let _ = std::fs::remove_dir_all(&staged);
    fetch_files(store, &staged, manifest)?;
    std::fs::create_dir_all(&staged).map_err(RuntimeError::io_while(format!(
        "creating {}",
        staged.display()
    )))?;
    crate::checkpoint::write_manifest(&staged, manifest)?;
    std::fs::rename(&staged, target).map_err(RuntimeError::io_while(format!(
        "renaming {}",
        staged.display()
    )))
}

/// Downloads state file `file` of checkpoint `id` into `dir`, checked against the size and
/// CRC-32 its manifest gives before it is written (so a restore reads nothing back). Returns
/// its size, or (inside) why the object is not the file the manifest names.
fn fetch_file(
    store: &dyn CheckpointStore,
    dir: &Path,
    id: u64,
    file: &FileEntry,
) -> Result<std::result::Result<u64, String>> {
    let key = file_key(file);
    let bytes = store
        .get(&key)?
        .ok_or_else(|| missing_object(store, id, &key))?;
    let size = bytes.len() as u64;
    if size != file.size {
        return Ok(Err(format!(
            "checkpoint {id}: state file {} has {size} bytes in the store, the manifest says {}",
            file.path, file.size
        )));
    }
    if crc32fast::hash(&bytes) != file.crc32 {
        return Ok(Err(format!(
            "checkpoint {id}: state file {} fails its checksum in the store",
            file.path
        )));
    }
    let path = dir.join(&file.path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(RuntimeError::io_while(format!(
            "creating {}",
            parent.display()
        )))?;
    }
    std::fs::write(&path, bytes).map_err(RuntimeError::io_while(format!(
        "writing {}",
        path.display()
    )))?;
    Ok(Ok(size))
}

/// Downloads every state file of `manifest` into `dir`, each checked; returns the bytes.
fn fetch_files(store: &dyn CheckpointStore, dir: &Path, manifest: &Manifest) -> Result<u64> {
    let mut bytes = 0;
    for file in state_files(manifest) {
        bytes +=
            fetch_file(store, dir, manifest.id, file)?.map_err(|why| store_error(store, why))?;
    }
    Ok(bytes)
}

/// The error of checkpoint `id` naming object `key`, which the store does not hold.
fn missing_object(store: &dyn CheckpointStore, id: u64, key: &str) -> RuntimeError {
    store_error(
        store,
        format!("checkpoint {id} names {key}, which is missing"),
    )
}

/// The newest checkpoint of the store whose manifest reads and whose every state file is in
/// the store, its manifest written into `root` (the state files stay in the store: a cluster's
/// workers download their parts, [`fetch_state`]). Checkpoints passed over are named.
///
/// A checkpoint whose manifest is in `root` but not in the store counts for nothing: with a
/// store, a checkpoint is complete once its manifest is there.
pub fn latest_manifest(
    store: &dyn CheckpointStore,
    root: &Path,
) -> Result<(Option<Restored>, Vec<String>)> {
    let held: BTreeSet<String> = store.list(FILES)?.into_iter().collect();
    let mut skipped = Vec::new();
    for id in store_ids(store)? {
        let manifest = match fetch_manifest(store, id) {
            Ok(Some((manifest, _))) => manifest,
            Ok(None) => continue,
            Err(e) => {
                skipped.push(e.to_string());
                continue;
            }
        };
        if let Some(missing) = state_files(&manifest)
            .map(file_key)
            .find(|k| !held.contains(k))
        {
            let why = missing_object(store, id, &missing);
            tracing::warn!(checkpoint = id, error = %why, "skipping a checkpoint of the store");
            skipped.push(why.to_string());
            continue;
        }
        let dir = checkpoint_dir(root, id);
        std::fs::create_dir_all(&dir).map_err(RuntimeError::io_while(format!(
            "creating {}",
            dir.display()
        )))?;
        crate::checkpoint::write_manifest(&dir, &manifest)?;
        return Ok((Some(Restored { dir, manifest }), skipped));
    }
    Ok((None, skipped))
}

/// Downloads into `root` the state files of checkpoint `manifest` that the old subtasks
/// `wanted` says (by stage, subtask and the stage's old parallelism) wrote, each checked
/// against the manifest; returns the
/// checkpoint, to restore those subtasks' state from, and the bytes downloaded. An object
/// whose bytes are not what the manifest names is deleted from the store (it can never
/// restore anything), so that the next attempt passes over its checkpoint.
pub fn fetch_state(
    store: &dyn CheckpointStore,
    root: &Path,
    manifest: Manifest,
    wanted: impl Fn(usize, usize, usize) -> bool,
) -> Result<(Restored, u64)> {
    let id = manifest.id;
    let dir = checkpoint_dir(root, id);
    let _ = std::fs::remove_dir_all(&dir);
    let mut bytes = 0;
    for (s, stage) in manifest.stages.iter().enumerate() {
        let old = stage.subtasks.len();
        for (j, task) in stage.subtasks.iter().enumerate() {
            if !wanted(s, j, old) {
                continue;
            }
            for file in &task.files {
                match fetch_file(store, &dir, id, file)? {
                    Ok(size) => bytes += size,
                    Err(why) => {
                        let key = file_key(file);
                        store.delete(&key)?;
                        return Err(store_error(
                            store,
                            format!("{why}; {key} was deleted, the job restores from an earlier checkpoint"),
                        ));
                    }
                }
            }
        }
    }
    Ok((Restored { dir, manifest }, bytes))
}

/// The part of a store under `prefix/`: one job's checkpoints in a store a server keeps for
/// all its jobs.
pub struct PrefixedStore {
    inner: Arc<dyn CheckpointStore>,
    prefix: String,
}

impl PrefixedStore {
    /// The keys of `inner` under `prefix` (made of plain names, e.g. `jobs/job-3`).
    pub fn new(inner: Arc<dyn CheckpointStore>, prefix: &str) -> Result<PrefixedStore> {
        if !crate::checkpoint::is_contained(prefix) {
            return Err(store_error(
                inner.as_ref(),
                format!("`{prefix}` is not a prefix inside the store"),
            ));
        }
        Ok(PrefixedStore {
            inner,
            prefix: format!("{}/", prefix.trim_end_matches('/')),
        })
    }
}

impl CheckpointStore for PrefixedStore {
    fn describe(&self) -> String {
        format!(
            "{}/{}",
            self.inner.describe(),
            self.prefix.trim_end_matches('/')
        )
    }
    fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.inner.put(&format!("{}{key}", self.prefix), bytes)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get(&format!("{}{key}", self.prefix))
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .inner
            .list(&format!("{}{prefix}", self.prefix))?
            .into_iter()
            .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_string))
            .collect())
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(&format!("{}{key}", self.prefix))
    }
}

/// A checkpoint store in a local (or mounted, shared) directory: `file:///dir`.
pub struct FileStore {
    root: std::path::PathBuf,
}

impl FileStore {
    /// A store under `root` (created when first written).
    pub fn new(root: impl Into<std::path::PathBuf>) -> FileStore {
        FileStore { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<std::path::PathBuf> {
        if !crate::checkpoint::is_contained(key) {
            return Err(store_error(
                self,
                format!("`{key}` is not a key inside the store"),
            ));
        }
        Ok(self.root.join(key))
    }
}

impl CheckpointStore for FileStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.path(key)?;
        let parent = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(parent).map_err(RuntimeError::io_while(format!(
            "creating {}",
            parent.display()
        )))?;
        // Whole or not at all: a temporary file, synced, renamed over the key.
        let tmp = path.with_extension("uploading");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(RuntimeError::io_while(format!(
            "writing {}",
            path.display()
        )))?;
        crate::checkpoint::sync_dir(parent)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(key)?) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RuntimeError::io(
                format!("reading {key} of {}", self.describe()),
                e,
            )),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let path = entry?.path();
                if path.is_dir() {
                    walk(&path, base, out)?;
                } else if path.extension().is_none_or(|e| e != "uploading") {
                    if let Ok(rel) = path.strip_prefix(base) {
                        out.push(rel.to_string_lossy().into_owned());
                    }
                }
            }
            Ok(())
        }
        let mut keys = Vec::new();
        walk(&self.root, &self.root, &mut keys).map_err(RuntimeError::io_while(format!(
            "listing {}",
            self.describe()
        )))?;
        keys.retain(|k| k.starts_with(prefix));
        keys.sort();
        Ok(keys)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(RuntimeError::io(
                    format!("deleting {key} of {}", self.describe()),
                    e,
                ))
            }
        }
        // Directories left empty go too (a checkpoint's, a subtask's), as keys do in S3.
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| *d != self.root.as_path()) {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{write_manifest, StageSnapshot, TaskSnapshot};
    use crate::state::file_crc32;

    /// Writes checkpoint `id` into `root` with `files` (path, content) and its manifest.
    fn checkpoint(root: &Path, id: u64, files: &[(&str, &[u8])]) -> Manifest {
        let dir = checkpoint_dir(root, id);
        let mut entries = Vec::new();
        for (path, content) in files {
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, content).unwrap();
            let (size, crc32) = file_crc32(&file).unwrap();
            entries.push(FileEntry {
                path: path.to_string(),
                size,
                crc32,
            });
        }
        let manifest = Manifest {
            format: 1,
            id,
            max_parallelism: 128,
            stages: vec![StageSnapshot {
                name: "window".into(),
                subtasks: vec![TaskSnapshot {
                    state_dir: Some("stage0-0".into()),
                    files: entries,
                    ..TaskSnapshot::default()
                }],
                ..StageSnapshot::default()
            }],
            ..Manifest::default()
        };
        write_manifest(&dir, &manifest).unwrap();
        manifest
    }

    /// Each checkpoint uploads only the files no earlier one did; retention keeps the newest
    /// checkpoints and the files they name, and nothing else.
    #[test]
    fn uploads_are_incremental_and_retention_keeps_what_is_named() {
        let (local, remote) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = FileStore::new(remote.path());
        let big = vec![7u8; 10_000];
        let first = checkpoint(
            local.path(),
            1,
            &[("stage0-0/1.sst", &big), ("stage0-0/MANIFEST", b"a")],
        );
        let sent = upload(&store, &checkpoint_dir(local.path(), 1), &first, 2).unwrap();
        assert!(sent > 10_000, "{sent}");
        // The big file is unchanged: the second checkpoint sends the small ones only.
        let second = checkpoint(
            local.path(),
            2,
            &[("stage0-0/1.sst", &big), ("stage0-0/MANIFEST", b"b")],
        );
        let sent = upload(&store, &checkpoint_dir(local.path(), 2), &second, 2).unwrap();
        assert!(sent < 1_000, "{sent}");
        let third = checkpoint(
            local.path(),
            3,
            &[("stage0-0/2.sst", b"new"), ("stage0-0/MANIFEST", b"c")],
        );
        upload(&store, &checkpoint_dir(local.path(), 3), &third, 2).unwrap();
        // Checkpoints 2 and 3 are kept; 1.sst only by 2, MANIFEST `a` by none.
        assert_eq!(store_ids(&store).unwrap(), vec![3, 2]);
        let files = store.list(FILES).unwrap();
        assert_eq!(files.len(), 4, "{files:?}");
        assert!(files.iter().any(|k| k.starts_with("files/stage0-0/1.sst.")));
        assert!(
            !remote.path().join("chk-0000000001").exists(),
            "an emptied directory goes"
        );
        // Two jobs' checkpoints side by side in one store see only their own.
        let base: Arc<dyn CheckpointStore> = Arc::new(FileStore::new(remote.path()));
        let job = PrefixedStore::new(base.clone(), "jobs/job-1").unwrap();
        upload(&job, &checkpoint_dir(local.path(), 3), &third, 2).unwrap();
        assert_eq!(store_ids(&job).unwrap(), vec![3]);
        assert_eq!(store_ids(&store).unwrap(), vec![3, 2]);
        assert_eq!(base.list("jobs/job-1/chk-").unwrap().len(), 1);
        assert!(PrefixedStore::new(base, "../up").is_err());
    }

    /// A machine that lost its checkpoints gets the newest the store holds that is whole; a
    /// damaged or missing object sends it to the one before, and says why; a local
    /// checkpoint as new as the store's is not replaced.
    #[test]
    fn the_newest_whole_checkpoint_of_the_store_is_fetched() {
        let (local, remote) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = FileStore::new(remote.path());
        for id in 1..=3 {
            let m = checkpoint(
                local.path(),
                id,
                &[
                    ("stage0-0/1.sst", b"shared"),
                    ("stage0-0/own", format!("{id}").as_bytes()),
                ],
            );
            upload(&store, &checkpoint_dir(local.path(), id), &m, 5).unwrap();
        }
        // Checkpoint 3's own file is damaged in the store.
        let own3 = store.list("files/stage0-0/own").unwrap();
        let damaged = own3
            .iter()
            .find(|k| store.get(k).unwrap().unwrap() == b"3")
            .unwrap();
        store.put(damaged, b"x".to_vec()).unwrap();
        let fresh = tempfile::tempdir().unwrap();
        let (fetched, skipped) = fetch_latest(&store, fresh.path()).unwrap();
        assert_eq!(fetched, Some(2));
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(skipped[0].contains("own"), "{skipped:?}");
        let restored = crate::checkpoint::latest(fresh.path()).unwrap().0.unwrap();
        assert_eq!(restored.manifest.id, 2);
        assert_eq!(
            std::fs::read(restored.dir.join("stage0-0/own")).unwrap(),
            b"2"
        );
        assert!(
            !checkpoint_dir(fresh.path(), 3).exists(),
            "a failed download leaves nothing"
        );
        // Checkpoint 2 is here now: nothing older or equal is fetched again.
        assert_eq!(fetch_latest(&store, fresh.path()).unwrap().0, None);
        // A store manifest that does not parse is passed over as well.
        store
            .put(&manifest_key(4), b"{not a manifest".to_vec())
            .unwrap();
        let (fetched, skipped) = fetch_latest(&store, tempfile::tempdir().unwrap().path()).unwrap();
        assert_eq!(fetched, Some(2));
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        // Keys leaving the store's directory are refused.
        assert!(store.put("../escape", Vec::new()).is_err());
    }

    /// Workers upload their subtasks' files themselves and download only the old subtasks
    /// they restore from; the coordinator then finds the files held and sends the manifest
    /// alone. A damaged object is deleted, so that the next look for the latest checkpoint
    /// passes over it.
    #[test]
    fn workers_upload_their_own_files_and_download_only_their_part() {
        let (local, remote) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = FileStore::new(remote.path());
        let dir = checkpoint_dir(local.path(), 1);
        let mut manifest = checkpoint(
            local.path(),
            1,
            &[("stage0-0/1.sst", b"first"), ("stage0-1/1.sst", b"second")],
        );
        // Two subtasks: split the one the helper made.
        let files = manifest.stages[0].subtasks[0].files.clone();
        manifest.stages[0].subtasks = files
            .iter()
            .enumerate()
            .map(|(i, f)| TaskSnapshot {
                state_dir: Some(format!("stage0-{i}")),
                files: vec![f.clone()],
                ..TaskSnapshot::default()
            })
            .collect();
        let mut held = BTreeSet::new();
        let sent = upload_files(&store, &dir, &files[..1], &mut held).unwrap();
        assert_eq!(sent, 5);
        assert_eq!(
            upload_files(&store, &dir, &files[..1], &mut held).unwrap(),
            0
        );
        upload_files(&store, &dir, &files[1..], &mut BTreeSet::new()).unwrap();
        // Everything is held: the coordinator sends the manifest alone.
        let manifest_bytes = std::fs::metadata(dir.join(MANIFEST)).unwrap().len();
        crate::checkpoint::write_manifest(&dir, &manifest).unwrap();
        let sent = upload(&store, &dir, &manifest, 3).unwrap();
        assert!(sent < manifest_bytes + 200, "{sent}");
        // A server without the files finds the checkpoint by its manifest.
        let server = tempfile::tempdir().unwrap();
        let (found, skipped) = latest_manifest(&store, server.path()).unwrap();
        let found = found.expect("a checkpoint");
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(found.manifest, manifest);
        // A worker restoring old subtask 1 only downloads its file.
        let worker = tempfile::tempdir().unwrap();
        let (restored, bytes) =
            fetch_state(&store, worker.path(), manifest.clone(), |_, j, _| j == 1).unwrap();
        assert_eq!(bytes, 6);
        assert!(restored.dir.join("stage0-1/1.sst").exists());
        assert!(!restored.dir.join("stage0-0/1.sst").exists());
        // Damaged in the store: the download fails, says which, and deletes the object.
        let key = file_key(&files[0]);
        store.put(&key, b"xxxxx".to_vec()).unwrap();
        let err = fetch_state(&store, worker.path(), manifest.clone(), |_, _, _| true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("stage0-0/1.sst"), "{err}");
        assert_eq!(store.get(&key).unwrap(), None);
        let (found, skipped) = latest_manifest(&store, server.path()).unwrap();
        assert!(found.is_none());
        assert!(skipped[0].contains("missing"), "{skipped:?}");
        // A savepoint taken from the store is a whole checkpoint directory.
        upload_files(&store, &dir, &files, &mut BTreeSet::new()).unwrap();
        let target = worker.path().join("savepoint");
        save_checkpoint(&store, &manifest, &target).unwrap();
        assert_eq!(crate::checkpoint::load(&target).unwrap().manifest, manifest);
        assert!(save_checkpoint(&store, &manifest, &target).is_err());
    }
}
