//! Checkpoints on disk: the manifest that makes one complete, how it is written atomically and
//! verified, which one a job restores from, and which ones are kept.
//!
//! Layout of a checkpoint directory `DIR`:
//!
//! ```text
//! DIR/chk-0000000007/_manifest.json   written last: a checkpoint without it never completed
//! DIR/chk-0000000007/stage1-0/...      RocksDB checkpoint of subtask 0 of stage 1
//! DIR/savepoints/NAME/...              savepoints: same layout, never deleted by retention
//! DIR/.work/                           the running job's RocksDB working directories
//! ```
//!
//! The manifest is one JSON line followed by a line with its CRC-32, and lists every state
//! file with its size and CRC-32, so a torn, truncated or bit-flipped checkpoint is detected
//! before anything is restored from it.

use crate::error::{Result, RuntimeError};
use crate::state::{file_crc32, FileEntry};
use crate::store::StoreRef;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The manifest's file name inside a checkpoint directory.
pub const MANIFEST: &str = "_manifest.json";
const FORMAT: u32 = 1;

/// How a job takes checkpoints.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// Where checkpoints (and the job's working state) live.
    pub dir: PathBuf,
    /// Time from one checkpoint's trigger to the next one's (Flink's
    /// `execution.checkpointing.interval`). One checkpoint runs at a time: one that takes
    /// longer than this is followed by the next as soon as it ends (and `min_pause` has passed).
    pub interval: Duration,
    /// The least time from the end of one checkpoint to the start of the next (Flink's
    /// `execution.checkpointing.min-pause`; 0 by default), so that slow checkpoints leave
    /// the job time to process between them.
    pub min_pause: Duration,
    /// How many completed checkpoints to keep (at least 1), here and in the store.
    pub retained: usize,
    /// Where completed checkpoints are copied before their output is committed, so that a
    /// job survives the loss of this machine ([`crate::store`]); none: local only.
    pub store: Option<StoreRef>,
}

impl CheckpointConfig {
    /// Checkpoints into `dir` every `interval`, with no minimum pause, keeping the last 3.
    pub fn new(dir: impl Into<PathBuf>, interval: Duration) -> Self {
        CheckpointConfig {
            dir: dir.into(),
            interval,
            min_pause: Duration::ZERO,
            retained: 3,
            store: None,
        }
    }
}

/// Where a job starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreFrom {
    /// The newest checkpoint of the checkpoint directory that verifies (or the beginning if
    /// there is none).
    Latest,
    /// This checkpoint or savepoint directory.
    Path(PathBuf),
}

/// Reads back what a source or sink put in a checkpoint (a split position, pending output),
/// saying what it should have been when it is not.
pub fn decode_stored<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
    what: &str,
) -> Result<T> {
    T::deserialize(value)
        .map_err(|e| RuntimeError::Checkpoint(format!("{value} is not {what}: {e}")))
}

/// Where a source split was at a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceSnapshot {
    /// The reader's own position (offsets, chunk numbers...).
    pub position: serde_json::Value,
    /// The largest event time the split's watermark generator had seen.
    pub max_event_time: Option<i64>,
    /// Of a split read as several partitions: the largest event time of each partition, by
    /// name (a partition may belong to another split after a rescale).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partition_event_times: BTreeMap<String, i64>,
}

/// What one subtask contributed to a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskSnapshot {
    /// Its RocksDB checkpoint, relative to the checkpoint directory (none: no state).
    pub state_dir: Option<String>,
    /// Every state file, with size and checksum.
    pub files: Vec<FileEntry>,
    /// A source split's position.
    pub source: Option<SourceSnapshot>,
    /// A sink's output pending commit (what `Sink::commit` makes visible).
    pub sink: Option<serde_json::Value>,
    /// The watermark the subtask's operators had reached (absent: none yet).
    pub watermark: Option<i64>,
}

/// One stage's part of a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageSnapshot {
    /// The stage's name.
    pub name: String,
    /// Names of its chained operators, to recognise the job on restore.
    pub operators: Vec<String>,
    /// Each operator's state schema fingerprint ([`crate::OperatorFactory::state_fingerprint`]),
    /// so that a changed job fails its restore before any state is read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fingerprints: Vec<String>,
    /// One entry per subtask, in order (their number is the stage's parallelism).
    pub subtasks: Vec<TaskSnapshot>,
}

/// A completed checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of this file.
    pub format: u32,
    /// Checkpoint id, increasing over the life of a checkpoint directory.
    pub id: u64,
    /// Whether the job had ended (all input read, all output pending commit): restoring from it
    /// only commits that output.
    pub finished: bool,
    /// Number of key groups of the job.
    pub max_parallelism: usize,
    /// From trigger to the last acknowledgement.
    pub duration_ms: u64,
    /// Total size of the state files.
    pub state_bytes: u64,
    /// Bytes of state files this checkpoint added.
    pub new_state_bytes: u64,
    /// Per stage, in job order.
    pub stages: Vec<StageSnapshot>,
    /// The sink output this checkpoint commits: what the sink subtasks handed over at its
    /// barrier, and what they handed over for earlier checkpoints that never completed.
    #[serde(default)]
    pub sink_pending: Vec<serde_json::Value>,
}

impl Manifest {
    /// Everything a restore from this checkpoint must commit again (commits are idempotent):
    /// the output it lists as its own to commit, which includes what its sink subtasks handed
    /// over for abandoned checkpoints before it ([`Manifest::sink_pending`]), and the sink
    /// stage's own pending output (all a manifest written before `sink_pending` existed has).
    pub fn pending_commits(&self) -> Vec<serde_json::Value> {
        let mut pending = self.sink_pending.clone();
        let own = self.stages.last().into_iter().flat_map(|s| &s.subtasks);
        for p in own.filter_map(|t| t.sink.as_ref()) {
            if !pending.contains(p) {
                pending.push(p.clone());
            }
        }
        pending
    }
}

/// The directory name of checkpoint `id`.
pub fn checkpoint_dir(root: &Path, id: u64) -> PathBuf {
    root.join(format!("chk-{id:010}"))
}

fn checkpoint_id(name: &str) -> Option<u64> {
    name.strip_prefix("chk-")?.parse().ok()
}

fn corrupt(dir: &Path, what: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Checkpoint(format!("{}: {what}", dir.display()))
}

/// Syncs a directory, so that a rename inside it survives power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(RuntimeError::io_while(format!(
            "syncing directory {}",
            dir.display()
        )))
}

/// Writes `manifest` into `dir` atomically: a temporary file, synced, renamed over the final
/// name, and the directory synced. A crash leaves either no manifest or the whole of it.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let body = serde_json::to_string(manifest)
        .map_err(|e| RuntimeError::Checkpoint(format!("encoding the manifest: {e}")))?;
    let text = format!("{body}\n{:08x}\n", crc32fast::hash(body.as_bytes()));
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(RuntimeError::io_while(format!(
        "creating {}",
        tmp.display()
    )))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(RuntimeError::io_while(format!("writing {}", tmp.display())))?;
    let target = dir.join(MANIFEST);
    std::fs::rename(&tmp, &target).map_err(RuntimeError::io_while(format!(
        "renaming {}",
        tmp.display()
    )))?;
    sync_dir(dir)
}

/// Reads and checks the manifest of the checkpoint in `dir` (not yet its state files).
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(corrupt(dir, "no manifest: the checkpoint never completed"))
        }
        Err(e) => return Err(corrupt(dir, format!("reading {MANIFEST}: {e}"))),
    };
    parse_manifest(&text, dir)
}

/// Checks a manifest's text (its checksum, its format, its paths); `dir` names it in errors.
pub fn parse_manifest(text: &str, dir: &Path) -> Result<Manifest> {
    let mut lines = text.lines();
    let (Some(body), Some(crc)) = (lines.next(), lines.next()) else {
        return Err(corrupt(dir, format!("{MANIFEST} is truncated")));
    };
    let expected = u32::from_str_radix(crc.trim(), 16)
        .map_err(|_| corrupt(dir, format!("{MANIFEST} has no valid checksum line")))?;
    if crc32fast::hash(body.as_bytes()) != expected {
        return Err(corrupt(
            dir,
            format!("{MANIFEST} does not match its checksum"),
        ));
    }
    let manifest: Manifest = serde_json::from_str(body)
        .map_err(|e| corrupt(dir, format!("{MANIFEST} is not a manifest: {e}")))?;
    check_paths(dir, &manifest)?;
    if manifest.format != FORMAT {
        return Err(corrupt(
            dir,
            format!(
                "manifest format {} is not the {FORMAT} this version reads",
                manifest.format
            ),
        ));
    }
    Ok(manifest)
}

/// Every path a manifest names is relative and stays inside its checkpoint directory: a
/// crafted manifest must not make a restore read (or a later retention delete) anything else.
fn check_paths(dir: &Path, manifest: &Manifest) -> Result<()> {
    let tasks = manifest.stages.iter().flat_map(|s| &s.subtasks);
    for task in tasks {
        let paths = task
            .state_dir
            .iter()
            .chain(task.files.iter().map(|f| &f.path));
        for path in paths {
            if !is_contained(path) {
                return Err(corrupt(
                    dir,
                    format!("{MANIFEST} names `{path}`, which is not a path inside the checkpoint"),
                ));
            }
        }
    }
    Ok(())
}

/// Whether `path` is relative, non-empty and made only of plain names (no `..`, no root).
pub fn is_contained(path: &str) -> bool {
    let path = Path::new(path);
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// Checks every state file the manifest names: present, of its size, of its checksum.
pub fn verify(dir: &Path, manifest: &Manifest) -> Result<()> {
    for stage in &manifest.stages {
        for task in &stage.subtasks {
            for file in &task.files {
                let path = dir.join(&file.path);
                let (size, crc32) = file_crc32(&path).map_err(|e| {
                    corrupt(dir, format!("state file {} is unreadable: {e}", file.path))
                })?;
                if size != file.size {
                    return Err(corrupt(
                        dir,
                        format!(
                            "state file {} has {size} bytes, the manifest says {}",
                            file.path, file.size
                        ),
                    ));
                }
                if crc32 != file.crc32 {
                    return Err(corrupt(
                        dir,
                        format!("state file {} fails its checksum", file.path),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A checkpoint chosen for restore, verified.
#[derive(Debug, Clone)]
pub struct Restored {
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

/// Reads and verifies the checkpoint or savepoint in `dir`.
pub fn load(dir: &Path) -> Result<Restored> {
    let manifest = read_manifest(dir)?;
    verify(dir, &manifest)?;
    Ok(Restored {
        dir: dir.to_path_buf(),
        manifest,
    })
}

/// Ids of the `chk-*` directories under `root`, newest first (complete or not).
pub fn checkpoint_ids(root: &Path) -> Result<Vec<u64>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(RuntimeError::io(format!("listing {}", root.display()), e)),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(RuntimeError::io_while(format!(
            "listing {}",
            root.display()
        )))?;
        if let Some(id) = checkpoint_id(&entry.file_name().to_string_lossy()) {
            ids.push(id);
        }
    }
    ids.sort_unstable_by(|a, b| b.cmp(a));
    Ok(ids)
}

/// The newest checkpoint under `root` that verifies, and why each newer one was passed over.
pub fn latest(root: &Path) -> Result<(Option<Restored>, Vec<String>)> {
    let mut skipped = Vec::new();
    for id in checkpoint_ids(root)? {
        let dir = checkpoint_dir(root, id);
        match load(&dir) {
            Ok(r) => return Ok((Some(r), skipped)),
            Err(e) => {
                tracing::warn!(error = %e, "skipping checkpoint {id}");
                skipped.push(e.to_string());
            }
        }
    }
    Ok((None, skipped))
}

/// Deletes checkpoints older than the `retained` newest complete ones (and incomplete ones
/// older than those). Savepoints are never touched.
pub fn apply_retention(root: &Path, retained: usize) -> Result<()> {
    let ids = checkpoint_ids(root)?;
    let complete: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|&id| checkpoint_dir(root, id).join(MANIFEST).exists())
        .collect();
    let Some(&oldest_kept) = complete.get(retained.max(1) - 1) else {
        return Ok(());
    };
    for id in ids.into_iter().filter(|&id| id < oldest_kept) {
        let dir = checkpoint_dir(root, id);
        std::fs::remove_dir_all(&dir).map_err(RuntimeError::io_while(format!(
            "deleting {}",
            dir.display()
        )))?;
    }
    Ok(())
}

/// Copies a checkpoint directory to `target` as a savepoint, hard-linking files where the file
/// system allows (checkpoint files are never modified, so sharing them is safe).
pub fn copy_checkpoint(from: &Path, target: &Path) -> Result<()> {
    if target.exists() {
        return Err(RuntimeError::Checkpoint(format!(
            "savepoint {} already exists",
            target.display()
        )));
    }
    fn copy_tree(from: &Path, to: &Path) -> Result<()> {
        std::fs::create_dir_all(to)
            .map_err(RuntimeError::io_while(format!("creating {}", to.display())))?;
        for entry in std::fs::read_dir(from).map_err(RuntimeError::io_while(format!(
            "listing {}",
            from.display()
        )))? {
            let entry = entry.map_err(RuntimeError::io_while(format!(
                "listing {}",
                from.display()
            )))?;
            let (src, dst) = (entry.path(), to.join(entry.file_name()));
            if src.is_dir() {
                copy_tree(&src, &dst)?;
            } else if std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst)
                    .map_err(RuntimeError::io_while(format!("copying {}", src.display())))?;
            }
        }
        Ok(())
    }
    let tmp = target.with_extension("inprogress");
    let _ = std::fs::remove_dir_all(&tmp);
    copy_tree(from, &tmp)?;
    std::fs::rename(&tmp, target).map_err(RuntimeError::io_while(format!(
        "renaming {}",
        tmp.display()
    )))?;
    if let Some(parent) = target.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(id: u64, files: Vec<FileEntry>) -> Manifest {
        Manifest {
            format: FORMAT,
            id,
            max_parallelism: 128,
            stages: vec![StageSnapshot {
                name: "s".into(),
                operators: vec!["op".into()],
                fingerprints: Vec::new(),
                subtasks: vec![TaskSnapshot {
                    state_dir: Some("stage0-0".into()),
                    files,
                    ..Default::default()
                }],
            }],
            ..Default::default()
        }
    }

    /// A complete checkpoint `id` under `root` with one state file holding `content`.
    fn complete(root: &Path, id: u64, content: &[u8]) -> PathBuf {
        let dir = checkpoint_dir(root, id);
        std::fs::create_dir_all(dir.join("stage0-0")).unwrap();
        std::fs::write(dir.join("stage0-0/000001.sst"), content).unwrap();
        let entry = FileEntry {
            path: "stage0-0/000001.sst".into(),
            size: content.len() as u64,
            crc32: crc32fast::hash(content),
        };
        write_manifest(&dir, &manifest(id, vec![entry])).unwrap();
        dir
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Fuzz: any bytes as a manifest are an error or a manifest, never a panic.
        #[test]
        fn reading_any_manifest_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::write(tmp.path().join(MANIFEST), &bytes).unwrap();
            let _ = load(tmp.path());
        }

        /// Fuzz: JSON with a valid checksum (so the decoder itself is reached), from a real
        /// manifest with its text mutated.
        #[test]
        fn reading_mutated_manifest_json_never_panics(
            edits in proptest::collection::vec((proptest::num::usize::ANY, proptest::char::any()), 1..6)
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let entry = FileEntry { path: "stage0-0/000001.sst".into(), size: 5, crc32: 7 };
            let mut body: Vec<char> = serde_json::to_string(&manifest(3, vec![entry])).unwrap().chars().collect();
            for (at, c) in edits {
                let n = body.len();
                body[at % n] = c;
            }
            let body: String = body.into_iter().collect();
            let text = format!("{body}\n{:08x}\n", crc32fast::hash(body.as_bytes()));
            std::fs::write(tmp.path().join(MANIFEST), text).unwrap();
            let _ = load(tmp.path());
        }
    }

    #[test]
    fn a_manifest_round_trips_and_leaves_no_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = complete(tmp.path(), 1, b"state");
        let restored = load(&dir).unwrap();
        assert_eq!(restored.manifest.id, 1);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn corruption_of_the_manifest_or_a_state_file_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = complete(tmp.path(), 1, b"state");
        // A flipped byte in a state file.
        std::fs::write(dir.join("stage0-0/000001.sst"), b"stbte").unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("stage0-0/000001.sst fails its checksum"), "{e}");
        // A truncated state file.
        std::fs::write(dir.join("stage0-0/000001.sst"), b"st").unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("has 2 bytes, the manifest says 5"), "{e}");
        // A missing one.
        std::fs::remove_file(dir.join("stage0-0/000001.sst")).unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("unreadable"), "{e}");
        // An edited manifest.
        let dir = complete(tmp.path(), 2, b"state");
        let text = std::fs::read_to_string(dir.join(MANIFEST)).unwrap();
        std::fs::write(dir.join(MANIFEST), text.replace("\"id\":2", "\"id\":3")).unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("does not match its checksum"), "{e}");
        // A truncated manifest, and none at all.
        std::fs::write(dir.join(MANIFEST), &text[..10]).unwrap();
        assert!(load(&dir).unwrap_err().to_string().contains("truncated"));
        std::fs::remove_file(dir.join(MANIFEST)).unwrap();
        assert!(load(&dir)
            .unwrap_err()
            .to_string()
            .contains("never completed"));
    }

    #[test]
    fn a_manifest_naming_a_path_outside_its_checkpoint_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["../../etc/passwd", "/etc/passwd", "stage0-0/../../x", ""] {
            let dir = checkpoint_dir(tmp.path(), 1);
            std::fs::create_dir_all(&dir).unwrap();
            let entry = FileEntry {
                path: bad.into(),
                size: 0,
                crc32: 0,
            };
            write_manifest(&dir, &manifest(1, vec![entry])).unwrap();
            let e = load(&dir).unwrap_err().to_string();
            assert!(e.contains("not a path inside the checkpoint"), "{bad}: {e}");
        }
        assert!(is_contained("stage0-0/000001.sst"));
    }

    #[test]
    fn latest_falls_back_past_partial_and_corrupt_checkpoints() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        assert!(latest(root).unwrap().0.is_none());
        complete(root, 1, b"one");
        complete(root, 2, b"two");
        let bad = complete(root, 3, b"three");
        std::fs::write(bad.join("stage0-0/000001.sst"), b"thr3e").unwrap();
        std::fs::create_dir_all(checkpoint_dir(root, 4)).unwrap(); // never completed
        let (found, skipped) = latest(root).unwrap();
        assert_eq!(found.unwrap().manifest.id, 2);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].contains("chk-0000000004") && skipped[0].contains("never completed"));
        assert!(skipped[1].contains("chk-0000000003") && skipped[1].contains("checksum"));
    }

    #[test]
    fn retention_keeps_the_newest_complete_checkpoints_and_savepoints() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for id in 1..=5 {
            complete(root, id, b"x");
        }
        std::fs::create_dir_all(checkpoint_dir(root, 6)).unwrap(); // in progress: kept
        copy_checkpoint(&checkpoint_dir(root, 1), &root.join("savepoints/mine")).unwrap();
        apply_retention(root, 2).unwrap();
        assert_eq!(checkpoint_ids(root).unwrap(), vec![6, 5, 4]);
        assert_eq!(load(&root.join("savepoints/mine")).unwrap().manifest.id, 1);
        let e = copy_checkpoint(&checkpoint_dir(root, 5), &root.join("savepoints/mine"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("already exists"), "{e}");
    }
}
