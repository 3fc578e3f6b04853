//! Sinks: stdout, JSON-lines and Parquet files, a blackhole and an in-memory collector.

use crate::error::ConnectorError;
use crate::json::encode_json_lines;
use crate::object::{PendingUpload, S3Location, Upload};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use oxflow_runtime::checkpoint::decode_stored;
use oxflow_runtime::clock::{Clock, SystemClock};
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

/// How a [`FileSink`] encodes its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileSinkFormat {
    /// One JSON object per line (`.jsonl`).
    #[default]
    JsonLines,
    /// Parquet (`.parquet`), Snappy-compressed, the schema of the sink's input.
    Parquet,
}

impl FileSinkFormat {
    /// The committed files' extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            FileSinkFormat::JsonLines => "jsonl",
            FileSinkFormat::Parquet => "parquet",
        }
    }
}

/// When a [`FileSink`] writer closes its file and starts another before the next checkpoint
/// (Flink's rolling policy): files stay a size that readers and object stores handle well.
/// Files are closed at every checkpoint barrier regardless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollingPolicy {
    /// Roll once a file holds this many bytes (for Parquet, written plus buffered).
    pub max_file_bytes: u64,
    /// Roll, at the next batch, a file open this long.
    pub rollover_interval: Option<std::time::Duration>,
}

impl Default for RollingPolicy {
    /// 128 MiB and no time limit, Flink's default part size.
    fn default() -> Self {
        RollingPolicy {
            max_file_bytes: 128 << 20,
            rollover_interval: None,
        }
    }
}

/// Writes JSON-lines or Parquet files into a directory, exactly once when the job checkpoints.
///
/// A subtask writes an in-progress file (`.part-….<ext>.inprogress`: names starting with
/// `.` are not output yet) and closes it at each checkpoint barrier, or earlier when the
/// [`RollingPolicy`] says so; when the checkpoint completes, its files are renamed to
/// `part-<checkpoint>-<writer>.<ext>`. Without checkpoints the whole output is committed at
/// the end as checkpoint 0. Renaming is idempotent (an already renamed file counts as
/// committed), and a restore from checkpoint `n` deletes in-progress files and files of
/// checkpoints after `n`, which the replay writes again: the committed files always hold each
/// result exactly once.
#[derive(Debug, Clone)]
pub struct FileSink {
    dir: PathBuf,
    /// Files go to S3 instead of `dir` (multipart uploads completed at commit).
    s3: Option<S3Location>,
    format: FileSinkFormat,
    rolling: RollingPolicy,
}

impl FileSink {
    /// A JSON-lines sink into `dir`, created if missing.
    pub fn try_new(dir: impl Into<PathBuf>) -> crate::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| {
            ConnectorError::io(format!("creating output directory {}", dir.display()), e)
        })?;
        Ok(FileSink {
            dir,
            s3: None,
            format: FileSinkFormat::JsonLines,
            rolling: RollingPolicy::default(),
        })
    }

    /// A JSON-lines sink into an S3 location: each file is a multipart upload, completed (made
    /// visible, whole) when its checkpoint completes; see [`crate::object`].
    pub fn s3(location: S3Location) -> Self {
        FileSink {
            dir: PathBuf::new(),
            s3: Some(location),
            format: FileSinkFormat::JsonLines,
            rolling: RollingPolicy::default(),
        }
    }

    /// Sets the format of the files.
    pub fn with_format(mut self, format: FileSinkFormat) -> Self {
        self.format = format;
        self
    }

    /// Sets when files roll over between checkpoints.
    pub fn with_rolling(mut self, rolling: RollingPolicy) -> Self {
        self.rolling = RollingPolicy {
            max_file_bytes: rolling.max_file_bytes.max(1),
            ..rolling
        };
        self
    }

    /// The committed name of an in-progress file `.part-<writer>.<ext>.inprogress` committed
    /// with a checkpoint: `part-<checkpoint>-<writer>.<ext>` (the same every time, so that a
    /// replayed commit finds what it did before).
    fn committed_name(checkpoint: u64, in_progress: &str) -> Option<String> {
        let name = in_progress
            .strip_prefix(".part-")?
            .strip_suffix(".inprogress")?;
        let (writer, ext) = name.rsplit_once('.')?;
        [FileSinkFormat::JsonLines, FileSinkFormat::Parquet]
            .iter()
            .any(|f| f.extension() == ext)
            .then(|| format!("part-{checkpoint:010}-{writer}.{ext}"))
    }

    /// The checkpoint a committed file belongs to.
    fn checkpoint_of(name: &str) -> Option<u64> {
        let rest = name.strip_prefix("part-")?;
        let (rest, ext) = rest.rsplit_once('.')?;
        if ext != "jsonl" && ext != "parquet" {
            return None;
        }
        rest.split('-').next()?.parse().ok()
    }
}

/// What a file writer hands over at a barrier: the in-progress files it closed since the
/// previous one, in order. (`file`: the single file of checkpoints taken before rolling.)
#[derive(Debug, Default, Serialize, Deserialize)]
struct PendingFiles {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    files: Vec<String>,
    /// Uploads to complete (a sink on S3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    uploads: Vec<PendingUpload>,
}

/// Where a file's bytes go.
enum Output {
    Local(std::fs::File),
    Upload(Upload),
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::Local(f) => f.write(buf),
            Output::Upload(u) => u.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Local(f) => f.flush(),
            Output::Upload(u) => u.flush(),
        }
    }
}

enum FileBody {
    Json(std::io::BufWriter<Output>),
    Parquet(Box<::parquet::arrow::ArrowWriter<Output>>),
}

struct OpenFile {
    body: FileBody,
    name: String,
    /// Bytes written (JSON lines).
    bytes: u64,
    /// When it was opened, on the writer's clock.
    opened: std::time::Duration,
}

struct FileWriter {
    dir: PathBuf,
    s3: Option<S3Location>,
    format: FileSinkFormat,
    rolling: RollingPolicy,
    schema: SchemaRef,
    subtask: usize,
    current: Option<OpenFile>,
    /// Files closed by rolling since the last barrier.
    closed: Vec<String>,
    /// Uploads finished since the last barrier (on S3).
    uploads: Vec<PendingUpload>,
    /// Times the rollover interval.
    clock: SystemClock,
    buffer: Vec<u8>,
}

/// Tells apart the in-progress files of writers of this process.
static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// A Parquet writer's row group is flushed at this many buffered bytes, so that a writer's
/// memory stays bounded whatever the rows' width.
const PARQUET_ROW_GROUP_BYTES: usize = 64 << 20;

impl Sink for FileSink {
    fn name(&self) -> String {
        if self.s3.is_some() { "s3" } else { "file" }.into()
    }
    fn create_writer(
        &self,
        subtask: SubtaskInfo,
        schema: SchemaRef,
    ) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(FileWriter {
            dir: self.dir.clone(),
            s3: self.s3.clone(),
            format: self.format,
            rolling: self.rolling,
            schema,
            subtask: subtask.index,
            current: None,
            closed: Vec::new(),
            uploads: Vec::new(),
            clock: SystemClock::new(),
            buffer: Vec::new(),
        }))
    }
    fn commit(&self, checkpoint: u64, pending: &[PendingCommit]) -> Result<()> {
        let pending = pending
            .iter()
            .map(|p| decode_stored::<PendingFiles>(p, "pending output of the file sink"))
            .collect::<Result<Vec<_>>>()?;
        let keys: Vec<String> = pending
            .iter()
            .flat_map(|p| p.uploads.iter().map(|u| u.key.clone()))
            .collect();
        if !keys.is_empty() {
            let Some(s3) = &self.s3 else {
                return Err(RuntimeError::Checkpoint(
                    "pending output holds S3 uploads, and this file sink writes to a local directory".into(),
                ));
            };
            // Recorded before any completes: every object a checkpoint makes is in its record.
            s3.log_commit(checkpoint, &keys)?;
        }
        for p in pending {
            if let Some(s3) = &self.s3 {
                for upload in &p.uploads {
                    s3.complete(upload)?;
                }
            }
            for file in p.file.iter().chain(&p.files) {
                let name = Self::committed_name(checkpoint, file).filter(|_| !file.contains('/'));
                let Some(name) = name else {
                    return Err(RuntimeError::Checkpoint(format!(
                        "pending output `{file}` is not an in-progress file of the file sink"
                    )));
                };
                let from = self.dir.join(file);
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
        }
        // The renames are durable once the directory is; an S3 sink has none.
        match self.s3 {
            Some(_) => Ok(()),
            None => oxflow_runtime::checkpoint::sync_dir(&self.dir),
        }
    }
    fn roll_back_after(&self, checkpoint: u64) -> Result<()> {
        if let Some(s3) = &self.s3 {
            // Uploads never completed are invisible (a bucket lifecycle rule aborts them);
            // objects completed by later checkpoints are found in the commit records.
            return Ok(s3.roll_back_commits_after(checkpoint)?);
        }
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

impl FileWriter {
    fn io(&self, what: &str) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let name = self.current.as_ref().map_or("", |f| f.name.as_str());
        RuntimeError::io_while(format!("{what} {}", self.dir.join(name).display()))
    }

    fn open(&mut self) -> Result<()> {
        let (name, file) = match &self.s3 {
            // Visible only once the upload is completed, so the final name from the start;
            // the process token keeps names of different runs apart.
            Some(s3) => {
                let name = format!(
                    "part-{}-{:016x}-{}.{}",
                    self.subtask,
                    crate::spool::process_token(),
                    NEXT_FILE.fetch_add(1, Ordering::Relaxed),
                    self.format.extension()
                );
                let upload = Upload::create(s3, &name)?;
                (name, Output::Upload(upload))
            }
            None => {
                let name = format!(
                    ".part-{}-{}-{}.{}.inprogress",
                    self.subtask,
                    std::process::id(),
                    NEXT_FILE.fetch_add(1, Ordering::Relaxed),
                    self.format.extension()
                );
                let path = self.dir.join(&name);
                let file = std::fs::File::create(&path).map_err(RuntimeError::io_while(
                    format!("creating {}", path.display()),
                ))?;
                (name, Output::Local(file))
            }
        };
        let path = self.dir.join(&name);
        let body = match self.format {
            FileSinkFormat::JsonLines => FileBody::Json(std::io::BufWriter::new(file)),
            FileSinkFormat::Parquet => {
                let props = ::parquet::file::properties::WriterProperties::builder()
                    .set_compression(::parquet::basic::Compression::SNAPPY)
                    .build();
                let writer =
                    ::parquet::arrow::ArrowWriter::try_new(file, self.schema.clone(), Some(props))
                        .map_err(|e| {
                            RuntimeError::Connector(format!(
                                "creating Parquet file {}: {e}",
                                path.display()
                            ))
                        })?;
                FileBody::Parquet(Box::new(writer))
            }
        };
        self.current = Some(OpenFile {
            body,
            name,
            bytes: 0,
            opened: self.clock.elapsed(),
        });
        Ok(())
    }

    /// Closes the current file, durable, into `closed`.
    fn close(&mut self) -> Result<()> {
        let Some(open) = self.current.take() else {
            return Ok(());
        };
        let path = self.dir.join(&open.name).display().to_string();
        let io = |what: &str| RuntimeError::io_while(format!("{what} {path}"));
        let file = match open.body {
            FileBody::Json(mut out) => {
                out.flush().map_err(io("flushing"))?;
                out.into_inner()
                    .map_err(|e| io("flushing")(e.into_error()))?
            }
            FileBody::Parquet(writer) => writer.into_inner().map_err(|e| {
                RuntimeError::Connector(format!("finishing Parquet file {path}: {e}"))
            })?,
        };
        match file {
            Output::Local(file) => {
                file.sync_all().map_err(io("syncing"))?;
                self.closed.push(open.name);
            }
            Output::Upload(upload) => self.uploads.push(upload.finish()?),
        }
        Ok(())
    }

    /// Hands over every file closed since the last barrier.
    fn hand_over(&mut self) -> Result<Option<PendingCommit>> {
        self.close()?;
        if self.closed.is_empty() && self.uploads.is_empty() {
            return Ok(None);
        }
        let pending = PendingFiles {
            file: None,
            files: std::mem::take(&mut self.closed),
            uploads: std::mem::take(&mut self.uploads),
        };
        Ok(Some(
            serde_json::to_value(pending).expect("pending files serialize"),
        ))
    }

    fn size(open: &OpenFile) -> u64 {
        match &open.body {
            FileBody::Json(_) => open.bytes,
            FileBody::Parquet(w) => (w.bytes_written() + w.in_progress_size()) as u64,
        }
    }
}

impl SinkWriter for FileWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if let Some(open) = &self.current {
            let old = self
                .rolling
                .rollover_interval
                .is_some_and(|limit| self.clock.elapsed().saturating_sub(open.opened) >= limit);
            if old || Self::size(open) >= self.rolling.max_file_bytes {
                self.close()?;
            }
        }
        if self.current.is_none() {
            self.open()?;
        }
        let open = self.current.as_mut().expect("opened above");
        match &mut open.body {
            FileBody::Json(out) => {
                self.buffer.clear();
                encode_json_lines(batch, &mut self.buffer)?;
                open.bytes += self.buffer.len() as u64;
                let result = out.write_all(&self.buffer);
                result.map_err(self.io("writing"))
            }
            FileBody::Parquet(writer) => {
                let result = writer.write(batch).and_then(|()| {
                    if writer.in_progress_size() >= PARQUET_ROW_GROUP_BYTES {
                        writer.flush()
                    } else {
                        Ok(())
                    }
                });
                result.map_err(|e| {
                    RuntimeError::Connector(format!(
                        "writing Parquet file {}: {e}",
                        self.dir.join(&open.name).display()
                    ))
                })
            }
        }
    }
    fn pre_commit(&mut self) -> Result<Option<PendingCommit>> {
        self.hand_over()
    }
    fn finish(&mut self) -> Result<Option<PendingCommit>> {
        self.hand_over()
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn batch(from: i64, n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from_iter_values(from..from + n))],
        )
        .unwrap()
    }

    fn committed(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("part-"))
            .collect();
        names.sort();
        names
    }

    fn parquet_values(path: &std::path::Path) -> Vec<i64> {
        let reader = ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(path).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        reader
            .flat_map(|b| {
                let b = b.unwrap();
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    #[test]
    fn parquet_files_roll_by_size_and_commit_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::try_new(dir.path())
            .unwrap()
            .with_format(FileSinkFormat::Parquet)
            .with_rolling(RollingPolicy {
                max_file_bytes: 1,
                rollover_interval: None,
            });
        let split = SubtaskInfo {
            index: 0,
            parallelism: 1,
            max_parallelism: 128,
        };
        let mut w = sink.create_writer(split, batch(0, 1).schema()).unwrap();
        // Every batch after the first finds its file full (1 byte): three files in one epoch.
        for i in 0..3 {
            w.write(&batch(i * 10, 10)).unwrap();
        }
        let pending = w.pre_commit().unwrap().unwrap();
        assert_eq!(pending["files"].as_array().unwrap().len(), 3, "{pending}");
        assert!(
            committed(dir.path()).is_empty(),
            "nothing visible before the commit"
        );
        sink.commit(1, std::slice::from_ref(&pending)).unwrap();
        sink.commit(1, std::slice::from_ref(&pending)).unwrap();
        let names = committed(dir.path());
        assert_eq!(names.len(), 3);
        let values: Vec<i64> = names
            .iter()
            .flat_map(|n| parquet_values(&dir.path().join(n)))
            .collect();
        assert_eq!(values, (0..30).collect::<Vec<_>>());
        // A later epoch, then a restore from checkpoint 1: its files go, checkpoint 1's stay.
        w.write(&batch(100, 5)).unwrap();
        let later = w.pre_commit().unwrap().unwrap();
        sink.commit(2, std::slice::from_ref(&later)).unwrap();
        w.write(&batch(200, 5)).unwrap();
        sink.roll_back_after(1).unwrap();
        assert_eq!(committed(dir.path()), names);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            3,
            "in-progress files removed"
        );
    }

    #[test]
    fn json_files_roll_by_time_and_old_pending_output_still_commits() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::try_new(dir.path())
            .unwrap()
            .with_rolling(RollingPolicy {
                max_file_bytes: u64::MAX,
                rollover_interval: Some(std::time::Duration::ZERO),
            });
        let split = SubtaskInfo {
            index: 3,
            parallelism: 4,
            max_parallelism: 128,
        };
        let mut w = sink.create_writer(split, batch(0, 1).schema()).unwrap();
        w.write(&batch(0, 2)).unwrap();
        w.write(&batch(2, 2)).unwrap();
        let pending = w.finish().unwrap().unwrap();
        sink.commit(0, std::slice::from_ref(&pending)).unwrap();
        let names = committed(dir.path());
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names
            .iter()
            .all(|n| n.starts_with("part-0000000000-3-") && n.ends_with(".jsonl")));
        // Pending output as checkpoints taken before rolling recorded it: one `file`.
        std::fs::write(
            dir.path().join(".part-3-1-9.jsonl.inprogress"),
            "{\"a\":9}\n",
        )
        .unwrap();
        let old = serde_json::json!({"file": ".part-3-1-9.jsonl.inprogress"});
        sink.commit(4, &[old]).unwrap();
        assert!(dir.path().join("part-0000000004-3-1-9.jsonl").exists());
        // Pending output naming a path outside the directory is refused.
        let evil = serde_json::json!({"files": ["../.part-0-1-1.jsonl.inprogress"]});
        let e = sink.commit(5, &[evil]).unwrap_err().to_string();
        assert!(e.contains("not an in-progress file"), "{e}");
    }
}
