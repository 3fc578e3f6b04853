//! Sinks: stdout, JSON-lines files, a blackhole and an in-memory collector.

use crate::error::ConnectorError;
use crate::json::encode_json_lines;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use oxflow_runtime::checkpoint::decode_stored;
use oxflow_runtime::metrics::Counter;
use oxflow_runtime::sink::{PendingCommit, Sink, SinkWriter};
use oxflow_runtime::RuntimeError;
use oxflow_runtime::{Result, SubtaskInfo};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Discards everything, counting rows (for benchmarks).
#[derive(Debug, Clone, Default)]
pub struct BlackholeSink {
    rows: Counter,
}

impl BlackholeSink {
    /// Rows received so far.
    pub fn rows(&self) -> Counter {
        self.rows.clone()
    }
}

impl Sink for BlackholeSink {
    fn name(&self) -> String {
        "blackhole".into()
    }
    fn create_writer(&self, _: SubtaskInfo, _: SchemaRef) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(self.clone()))
    }
}

impl SinkWriter for BlackholeSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows.add(batch.num_rows() as u64);
        Ok(())
    }
    fn finish(&mut self) -> Result<Option<PendingCommit>> {
        Ok(None)
    }
}

/// Prints JSON lines to standard output.
#[derive(Debug, Clone, Default)]
pub struct StdoutSink;

struct StdoutWriter {
    buffer: Vec<u8>,
}

impl Sink for StdoutSink {
    fn name(&self) -> String {
        "stdout".into()
    }
    fn create_writer(&self, _: SubtaskInfo, _: SchemaRef) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(StdoutWriter { buffer: Vec::new() }))
    }
}

impl SinkWriter for StdoutWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.buffer.clear();
        encode_json_lines(batch, &mut self.buffer)?;
        // One locked write per batch keeps lines of parallel subtasks whole.
        std::io::stdout()
            .lock()
            .write_all(&self.buffer)
            .map_err(|e| oxflow_runtime::RuntimeError::io("writing to stdout", e))
    }
    fn finish(&mut self) -> Result<Option<PendingCommit>> {
        std::io::stdout()
            .flush()
            .map_err(|e| oxflow_runtime::RuntimeError::io("flushing stdout", e))?;
        Ok(None)
    }
}

/// Writes JSON-lines files into a directory, exactly once when the job checkpoints.
///
/// A subtask writes an in-progress file (`.part-….jsonl.inprogress`: names starting with
/// `.` are not output yet) and closes it at each checkpoint barrier; when the checkpoint
/// completes, the file is renamed to `part-<checkpoint>-<subtask>-<file>.jsonl`. Without
/// checkpoints the whole output is committed at the end as checkpoint 0. Renaming is
/// idempotent (an already renamed file counts as committed), and a restore from checkpoint
/// `n` deletes in-progress files and files of checkpoints after `n`, which the replay writes
/// again: the committed files always hold each result exactly once.
#[derive(Debug, Clone)]
pub struct JsonFileSink {
    dir: PathBuf,
}

impl JsonFileSink {
    /// A sink into `dir`, created if missing.
    pub fn try_new(dir: impl Into<PathBuf>) -> crate::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| {
            ConnectorError::io(format!("creating output directory {}", dir.display()), e)
        })?;
        Ok(JsonFileSink { dir })
    }

    /// The committed name of an in-progress file `.part-<writer>.jsonl.inprogress` committed
    /// with a checkpoint: `part-<checkpoint>-<writer>.jsonl` (the same every time, so that a
    /// replayed commit finds what it did before).
    fn committed_name(checkpoint: u64, in_progress: &str) -> Option<String> {
        let writer = in_progress
            .strip_prefix(".part-")?
            .strip_suffix(".jsonl.inprogress")?;
        Some(format!("part-{checkpoint:010}-{writer}.jsonl"))
    }

    /// The checkpoint a committed file belongs to.
    fn checkpoint_of(name: &str) -> Option<u64> {
        let rest = name.strip_prefix("part-")?.strip_suffix(".jsonl")?;
        rest.split('-').next()?.parse().ok()
    }
}

/// What a file writer hands over at a barrier.
#[derive(Debug, Serialize, Deserialize)]
struct PendingFile {
    /// The in-progress file's name in the sink's directory.
    file: String,
}

struct OpenFile {
    file: std::io::BufWriter<std::fs::File>,
    name: String,
}

struct JsonFileWriter {
    dir: PathBuf,
    subtask: usize,
    current: Option<OpenFile>,
    buffer: Vec<u8>,
}

/// Tells apart the in-progress files of writers of this process.
static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

impl Sink for JsonFileSink {
    fn name(&self) -> String {
        "file".into()
    }
    fn create_writer(&self, subtask: SubtaskInfo, _: SchemaRef) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(JsonFileWriter {
            dir: self.dir.clone(),
            subtask: subtask.index,
            current: None,
            buffer: Vec::new(),
        }))
    }
    fn commit(&self, checkpoint: u64, pending: &[PendingCommit]) -> Result<()> {
        for p in pending {
            let p: PendingFile = decode_stored(p, "pending output of the file sink")?;
            let name = Self::committed_name(checkpoint, &p.file).filter(|_| !p.file.contains('/'));
            let Some(name) = name else {
                return Err(RuntimeError::Checkpoint(format!(
                    "pending output `{}` is not an in-progress file of the file sink",
                    p.file
                )));
            };
            let from = self.dir.join(&p.file);
            let to = self.dir.join(name);
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                // Committed before (a commit replayed after a crash).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && to.exists() => {}
                Err(e) => {
                    return Err(RuntimeError::io(
                        format!(
                            "committing {} of checkpoint {checkpoint} as {}",
                            from.display(),
                            to.display()
                        ),
                        e,
                    ))
                }
            }
        }
        oxflow_runtime::checkpoint::sync_dir(&self.dir)
    }
    fn roll_back_after(&self, checkpoint: u64) -> Result<()> {
        let listing = format!("listing {}", self.dir.display());
        let listing = || RuntimeError::io_while(listing.clone());
        for entry in std::fs::read_dir(&self.dir).map_err(listing())? {
            let entry = entry.map_err(listing())?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = (name.starts_with(".part-") && name.ends_with(".inprogress"))
                || Self::checkpoint_of(&name).is_some_and(|c| c > checkpoint);
            if stale {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(RuntimeError::io_while(format!(
                    "deleting {}",
                    path.display()
                )))?;
            }
        }
        oxflow_runtime::checkpoint::sync_dir(&self.dir)
    }
}

impl JsonFileWriter {
    fn io(&self, what: &str) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let name = self.current.as_ref().map_or("", |f| f.name.as_str());
        RuntimeError::io_while(format!("{what} {}", self.dir.join(name).display()))
    }

    /// Closes the current file, durable, and hands it over.
    fn close(&mut self) -> Result<Option<PendingCommit>> {
        let Some(mut open) = self.current.take() else {
            return Ok(None);
        };
        let path = self.dir.join(&open.name).display().to_string();
        let io = |what: &str| RuntimeError::io_while(format!("{what} {path}"));
        open.file.flush().map_err(io("flushing"))?;
        open.file.get_ref().sync_all().map_err(io("syncing"))?;
        Ok(Some(
            serde_json::to_value(PendingFile { file: open.name }).expect("pending files serialize"),
        ))
    }
}

impl SinkWriter for JsonFileWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.current.is_none() {
            let name = format!(
                ".part-{}-{}-{}.jsonl.inprogress",
                self.subtask,
                std::process::id(),
                NEXT_FILE.fetch_add(1, Ordering::Relaxed)
            );
            let path = self.dir.join(&name);
            let file = std::fs::File::create(&path).map_err(RuntimeError::io_while(format!(
                "creating {}",
                path.display()
            )))?;
            self.current = Some(OpenFile {
                file: std::io::BufWriter::new(file),
                name,
            });
        }
        self.buffer.clear();
        encode_json_lines(batch, &mut self.buffer)?;
        let result = self
            .current
            .as_mut()
            .expect("opened above")
            .file
            .write_all(&self.buffer);
        result.map_err(self.io("writing"))
    }
    fn pre_commit(&mut self) -> Result<Option<PendingCommit>> {
        self.close()
    }
    fn finish(&mut self) -> Result<Option<PendingCommit>> {
        self.close()
    }
}

/// Keeps every batch in memory (for tests and small jobs).
#[derive(Debug, Clone, Default)]
pub struct CollectSink {
    batches: Arc<Mutex<Vec<RecordBatch>>>,
}

impl CollectSink {
    /// A new, empty collector.
    pub fn new() -> Self {
        Self::default()
    }
    /// Everything collected so far.
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.batches
            .lock()
            .expect("collector lock is never held across a panic")
            .clone()
    }
}

impl Sink for CollectSink {
    fn name(&self) -> String {
        "collect".into()
    }
    fn create_writer(&self, _: SubtaskInfo, _: SchemaRef) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(self.clone()))
    }
}

impl SinkWriter for CollectSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.batches
            .lock()
            .expect("collector lock is never held across a panic")
            .push(batch.clone());
        Ok(())
    }
    fn finish(&mut self) -> Result<Option<PendingCommit>> {
        Ok(None)
    }
}
