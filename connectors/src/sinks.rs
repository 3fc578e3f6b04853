//! Sinks: stdout, JSON-lines files, a blackhole and an in-memory collector.

use crate::error::ConnectorError;
use crate::json::encode_json_lines;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use oxflow_runtime::metrics::Counter;
use oxflow_runtime::sink::{Sink, SinkWriter};
use oxflow_runtime::{Result, SubtaskInfo};
use std::io::Write;
use std::path::PathBuf;
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
    fn finish(&mut self) -> Result<()> {
        Ok(())
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
    fn finish(&mut self) -> Result<()> {
        std::io::stdout()
            .flush()
            .map_err(|e| oxflow_runtime::RuntimeError::io("flushing stdout", e))
    }
}

/// Writes JSON-lines files into a directory, one per subtask: `part-<subtask>.jsonl`.
///
/// While the job runs a file is `.part-<subtask>.jsonl.inprogress` (names starting with `.`
/// are not output yet); it is renamed when its subtask finishes.
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
}

struct JsonFileWriter {
    file: std::io::BufWriter<std::fs::File>,
    in_progress: PathBuf,
    done: PathBuf,
    buffer: Vec<u8>,
}

impl Sink for JsonFileSink {
    fn name(&self) -> String {
        "file".into()
    }
    fn create_writer(&self, subtask: SubtaskInfo, _: SchemaRef) -> Result<Box<dyn SinkWriter>> {
        let in_progress = self
            .dir
            .join(format!(".part-{}.jsonl.inprogress", subtask.index));
        let done = self.dir.join(format!("part-{}.jsonl", subtask.index));
        let file = std::fs::File::create(&in_progress).map_err(|e| {
            oxflow_runtime::RuntimeError::io(format!("creating {}", in_progress.display()), e)
        })?;
        Ok(Box::new(JsonFileWriter {
            file: std::io::BufWriter::new(file),
            in_progress,
            done,
            buffer: Vec::new(),
        }))
    }
}

impl SinkWriter for JsonFileWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.buffer.clear();
        encode_json_lines(batch, &mut self.buffer)?;
        self.file.write_all(&self.buffer).map_err(|e| {
            oxflow_runtime::RuntimeError::io(format!("writing {}", self.in_progress.display()), e)
        })
    }
    fn finish(&mut self) -> Result<()> {
        let io = |what: &str, e| {
            oxflow_runtime::RuntimeError::io(format!("{what} {}", self.in_progress.display()), e)
        };
        self.file.flush().map_err(|e| io("flushing", e))?;
        self.file
            .get_ref()
            .sync_all()
            .map_err(|e| io("syncing", e))?;
        std::fs::rename(&self.in_progress, &self.done).map_err(|e| io("renaming", e))
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
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}
