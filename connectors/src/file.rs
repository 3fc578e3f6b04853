//! JSON-lines and CSV file sources: one record per line, schema given or inferred.
//!
//! Lines are decoded a batch at a time with arrow-json / arrow-csv. When a batch fails, it is
//! decoded again line by line to find the culprit, so an error always names the file and the
//! line; with the `Skip` policy bad lines are counted and left out, and every good line
//! before and after them is kept.

use crate::decode::{RecordDecoder, TextFormat};
use crate::error::{ConnectorError, Result};
use crate::input::{FileStore, InputFile};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use oxflow_runtime::checkpoint::decode_stored;
use oxflow_runtime::metrics::Counter;
use oxflow_runtime::source::{Source, SourcePoll, SourceReader, SourceRef};
use oxflow_runtime::SubtaskInfo;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

/// How lines are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// One JSON object per line.
    JsonLines,
    /// Comma (or other) separated values, one record per line.
    Csv {
        /// Whether the first line of each file names the columns.
        has_header: bool,
        /// The separator byte.
        delimiter: u8,
    },
}

/// What to do with a line that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BadRecordPolicy {
    /// Fail the job with the file and line.
    #[default]
    Fail,
    /// Count the line and go on.
    Skip,
}

/// Reads JSON-lines or CSV files, local or on S3; files are spread round-robin over splits.
#[derive(Debug, Clone)]
pub struct FileSource {
    store: FileStore,
    paths: Vec<PathBuf>,
    format: FileFormat,
    schema: SchemaRef,
    batch_size: usize,
    policy: BadRecordPolicy,
    bad_records: Counter,
    max_line_bytes: usize,
}

/// The longest line a file source reads by default: a file without newlines must not be read
/// into memory whole.
pub const DEFAULT_MAX_LINE_BYTES: usize = 4 << 20;

impl FileSource {
    /// A source over `paths`; with no schema it is inferred from the first file (up to
    /// 1000 records).
    pub fn try_new(
        paths: Vec<PathBuf>,
        format: FileFormat,
        schema: Option<SchemaRef>,
    ) -> Result<Self> {
        Self::try_new_in(FileStore::Local, paths, format, schema)
    }

    /// A source over `paths` of `store` (on S3: URIs, as [`FileStore::s3_files`] lists them).
    pub fn try_new_in(
        store: FileStore,
        paths: Vec<PathBuf>,
        format: FileFormat,
        schema: Option<SchemaRef>,
    ) -> Result<Self> {
        let first = paths.first().ok_or_else(|| ConnectorError::Config {
            connector: "file",
            reason: "no input file given".into(),
        })?;
        for p in &paths {
            store.check(p, "file")?;
        }
        let schema = match schema {
            Some(s) => s,
            None => Arc::new(infer_schema(&store, first, format)?),
        };
        Ok(FileSource {
            store,
            paths,
            format,
            schema,
            batch_size: 8192,
            policy: BadRecordPolicy::Fail,
            bad_records: Counter::default(),
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        })
    }

    /// Sets the policy for lines that do not parse.
    pub fn with_bad_records(mut self, policy: BadRecordPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the longest line read (default [`DEFAULT_MAX_LINE_BYTES`]); a longer one is a bad
    /// record (skipped, up to its end, with the `skip` policy).
    pub fn with_max_line_bytes(mut self, max: usize) -> Self {
        self.max_line_bytes = max.max(1);
        self
    }

    /// Sets the number of lines per batch.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Lines skipped as bad so far.
    pub fn bad_records(&self) -> Counter {
        self.bad_records.clone()
    }
}

fn infer_schema(
    store: &FileStore,
    path: &std::path::Path,
    format: FileFormat,
) -> Result<datafusion::arrow::datatypes::Schema> {
    let reader = BufReader::new(store.open(path)?);
    let inferred = match format {
        FileFormat::JsonLines => {
            datafusion::arrow::json::reader::infer_json_schema(reader, Some(1000)).map(|(s, _)| s)
        }
        FileFormat::Csv {
            has_header,
            delimiter,
        } => datafusion::arrow::csv::reader::Format::default()
            .with_header(has_header)
            .with_delimiter(delimiter)
            .infer_schema(reader, Some(1000))
            .map(|(s, _)| s),
    };
    inferred.map_err(|e| ConnectorError::BadRecord {
        path: path.display().to_string(),
        line: 0,
        reason: format!("cannot infer a schema: {e}"),
    })
}

impl Source for FileSource {
    fn name(&self) -> String {
        "file".into()
    }
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    /// JSON lines decode only the columns asked for (fields not in the schema are skipped
    /// by the decoder without building anything), which saves most of the work when a wide
    /// record is read for a few columns. CSV fields are positional: not projected.
    fn with_projection(&self, columns: &[usize]) -> Option<SourceRef> {
        if self.format != FileFormat::JsonLines {
            return None;
        }
        let schema = Arc::new(self.schema.project(columns).ok()?);
        Some(Arc::new(FileSource {
            schema,
            ..self.clone()
        }))
    }
    /// Files are spread over splits by their index (`i % parallelism`); a restored split
    /// skips files the checkpointed run had finished and resumes a file it was reading at the
    /// byte after the last line it had read.
    fn restore_reader(
        &self,
        split: SubtaskInfo,
        positions: &[serde_json::Value],
    ) -> oxflow_runtime::Result<Box<dyn SourceReader>> {
        let mut done = std::collections::BTreeSet::new();
        let mut resume = std::collections::BTreeMap::new();
        for p in positions {
            let p: FilePosition = decode_stored(p, "a file source position")?;
            done.extend(p.done);
            if let Some(c) = p.current {
                resume.insert(c.path.clone(), c);
            }
        }
        let files = self
            .paths
            .iter()
            .enumerate()
            .filter(|(i, _)| i % split.parallelism == split.index)
            .map(|(_, p)| p.display().to_string())
            .filter(|p| !done.contains(p))
            .collect();
        Ok(Box::new(FileReader {
            source: self.clone(),
            files,
            current: None,
            done: done.into_iter().collect(),
            resume,
        }))
    }
}

/// Where a file split is: files finished, and the file being read.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct FilePosition {
    done: Vec<String>,
    current: Option<FileOffset>,
}

/// The next byte to read of a file, and the number of the last line read.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct FileOffset {
    path: String,
    offset: u64,
    line: u64,
}

/// A line of a batch: its 1-based number and its byte range in the batch's buffer.
type LineSpan = (u64, usize, usize);

struct OpenFile {
    path: String,
    reader: BufReader<InputFile>,
    line: u64,
    /// Bytes read so far.
    offset: u64,
}

struct FileReader {
    source: FileSource,
    files: std::collections::VecDeque<String>,
    current: Option<OpenFile>,
    /// Files this split (and the runs it was restored from) finished.
    done: Vec<String>,
    /// Where to resume files a checkpointed run was reading.
    resume: std::collections::BTreeMap<String, FileOffset>,
}

impl FileReader {
    fn open_next(&mut self) -> Result<bool> {
        let Some(path) = self.files.pop_front() else {
            return Ok(false);
        };
        let file = self.source.store.open(std::path::Path::new(&path))?;
        let mut open = OpenFile {
            path,
            reader: BufReader::new(file),
            line: 0,
            offset: 0,
        };
        if let Some(at) = self.resume.remove(&open.path) {
            open.reader
                .seek(SeekFrom::Start(at.offset))
                .map_err(|e| ConnectorError::io(format!("seeking in {}", open.path), e))?;
            open.offset = at.offset;
            open.line = at.line;
        } else if let FileFormat::Csv {
            has_header: true, ..
        } = self.source.format
        {
            let mut header = String::new();
            open.offset = open
                .reader
                .read_line(&mut header)
                .map_err(|e| ConnectorError::io(format!("reading {}", open.path), e))?
                as u64;
            open.line = 1;
        }
        self.current = Some(open);
        Ok(true)
    }

    /// Reads up to a batch of non-empty lines: their bytes and line numbers.
    fn read_lines(&mut self) -> Result<Option<(Vec<u8>, Vec<LineSpan>)>> {
        loop {
            if self.current.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let f = self.current.as_mut().expect("opened above");
            let mut bytes = Vec::new();
            let mut lines = Vec::new();
            let max = self.source.max_line_bytes;
            while lines.len() < self.source.batch_size {
                let start = bytes.len();
                let (path, line) = (f.path.clone(), f.line + 1);
                let reading =
                    move |e| ConnectorError::io(format!("reading {path} at line {line}"), e);
                // At most one byte more than a line may hold, so that memory stays bounded.
                let n = (&mut f.reader)
                    .take(max as u64 + 1)
                    .read_until(b'\n', &mut bytes)
                    .map_err(reading.clone())?;
                if n == 0 {
                    break;
                }
                f.offset += n as u64;
                f.line += 1;
                if n > max && bytes.last() != Some(&b'\n') {
                    bytes.truncate(start);
                    let line = f.line;
                    if self.source.policy == BadRecordPolicy::Fail {
                        return Err(ConnectorError::BadRecord {
                            path: f.path.clone(),
                            line,
                            reason: format!("the line is longer than {max} bytes"),
                        });
                    }
                    // Skip the rest of the line, a bounded piece at a time.
                    let mut rest = Vec::new();
                    loop {
                        rest.clear();
                        let m = (&mut f.reader)
                            .take(64 << 10)
                            .read_until(b'\n', &mut rest)
                            .map_err(reading.clone())?;
                        f.offset += m as u64;
                        if m == 0 || rest.last() == Some(&b'\n') {
                            break;
                        }
                    }
                    tracing::warn!(path = %f.path, line, max, "skipping a line longer than the limit");
                    self.source.bad_records.add(1);
                    continue;
                }
                if bytes[start..].iter().all(|b| b.is_ascii_whitespace()) {
                    bytes.truncate(start);
                    continue;
                }
                if bytes.last() != Some(&b'\n') {
                    bytes.push(b'\n');
                }
                lines.push((f.line, start, bytes.len()));
            }
            if lines.is_empty() {
                if let Some(finished) = self.current.take() {
                    self.done.push(finished.path);
                }
                continue;
            }
            return Ok(Some((bytes, lines)));
        }
    }

    fn decoder(&self) -> RecordDecoder {
        let format = match self.source.format {
            FileFormat::JsonLines => TextFormat::Json,
            FileFormat::Csv { delimiter, .. } => TextFormat::Csv { delimiter },
        };
        RecordDecoder::new(format, self.source.schema.clone())
    }

    /// Decodes a batch of lines, naming (or skipping) the bad ones.
    fn decode_lines(&mut self, bytes: &[u8], lines: &[LineSpan]) -> Result<RecordBatch> {
        let path = self
            .current
            .as_ref()
            .map(|f| f.path.clone())
            .unwrap_or_default();
        let spans: Vec<(usize, usize)> = lines.iter().map(|&(_, s, e)| (s, e)).collect();
        let (policy, counter) = (self.source.policy, &self.source.bad_records);
        let decoded = self.decoder().decode(bytes, &spans, |i, reason| {
            let line = lines[i].0;
            match policy {
                BadRecordPolicy::Fail => Err(ConnectorError::BadRecord {
                    path: path.clone(),
                    line,
                    reason,
                }),
                BadRecordPolicy::Skip => {
                    tracing::warn!(path = %path, line, error = %reason, "skipping a bad record");
                    counter.add(1);
                    Ok(())
                }
            }
        })?;
        Ok(decoded.batch)
    }
}

impl SourceReader for FileReader {
    fn poll_next(&mut self) -> oxflow_runtime::Result<SourcePoll> {
        let Some((bytes, lines)) = self.read_lines()? else {
            return Ok(SourcePoll::Finished);
        };
        Ok(SourcePoll::Batch(self.decode_lines(&bytes, &lines)?))
    }
    fn position(&self) -> Option<serde_json::Value> {
        let position = FilePosition {
            done: self.done.clone(),
            current: self.current.as_ref().map(|f| FileOffset {
                path: f.path.clone(),
                offset: f.offset,
                line: f.line,
            }),
        };
        Some(serde_json::to_value(position).expect("positions serialize"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::io::Write;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::File::create(&p)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        p
    }

    fn read(source: &FileSource) -> oxflow_runtime::Result<usize> {
        let mut r = source.create_reader(SubtaskInfo {
            index: 0,
            parallelism: 1,
            max_parallelism: 128,
        })?;
        let mut rows = 0;
        while let SourcePoll::Batch(b) = r.poll_next()? {
            rows += b.num_rows();
        }
        Ok(rows)
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn bad_json_line_is_named_by_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            "in.jsonl",
            "{\"a\":1,\"b\":\"x\"}\n\n{\"a\":\"nope\"}\n{\"a\":3}\n",
        );
        let s =
            FileSource::try_new(vec![p.clone()], FileFormat::JsonLines, Some(schema())).unwrap();
        let err = read(&s).unwrap_err().to_string();
        assert!(err.contains(&format!("{}:3:", p.display())), "{err}");
        let s = s.with_bad_records(BadRecordPolicy::Skip);
        assert_eq!(
            read(&s).unwrap(),
            2,
            "the good lines around the bad one are kept"
        );
        assert_eq!(s.bad_records().get(), 1);
    }

    #[test]
    fn a_line_longer_than_the_limit_is_a_bad_record_read_in_bounded_memory() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{{\"a\":2,\"b\":\"{}\"}}", "x".repeat(300_000));
        let text = format!("{{\"a\":1}}\n{long}\n{{\"a\":3}}\n");
        let p = write(&dir, "in.jsonl", &text);
        let s = FileSource::try_new(vec![p.clone()], FileFormat::JsonLines, Some(schema()))
            .unwrap()
            .with_max_line_bytes(1000);
        let err = read(&s).unwrap_err().to_string();
        assert!(
            err.contains(":2:") && err.contains("longer than 1000 bytes"),
            "{err}"
        );
        let s = s.with_bad_records(BadRecordPolicy::Skip);
        assert_eq!(
            read(&s).unwrap(),
            2,
            "the lines around the long one are kept"
        );
        assert_eq!(s.bad_records().get(), 1);
    }

    #[test]
    fn truncated_json_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "in.jsonl", "{\"a\":1}\n{\"a\":");
        let s = FileSource::try_new(vec![p], FileFormat::JsonLines, Some(schema())).unwrap();
        assert!(read(&s).unwrap_err().to_string().contains(":2:"));
    }

    #[test]
    fn csv_with_header_and_inferred_schema() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "in.csv", "a,b\n1,x\n2,y\nthree,z\n");
        let s = FileSource::try_new(
            vec![p.clone()],
            FileFormat::Csv {
                has_header: true,
                delimiter: b',',
            },
            Some(schema()),
        )
        .unwrap();
        let err = read(&s).unwrap_err().to_string();
        assert!(err.contains(&format!("{}:4:", p.display())), "{err}");
        let p2 = write(&dir, "ok.csv", "a,b\n1,x\n2,y\n");
        let s = FileSource::try_new(
            vec![p2],
            FileFormat::Csv {
                has_header: true,
                delimiter: b',',
            },
            None,
        )
        .unwrap();
        assert_eq!(s.schema().field(0).data_type(), &DataType::Int64);
        assert_eq!(read(&s).unwrap(), 2);
    }

    #[test]
    fn missing_file_is_a_config_error() {
        let err = FileSource::try_new(
            vec!["/nonexistent/x.jsonl".into()],
            FileFormat::JsonLines,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/nonexistent/x.jsonl is not a readable file"),
            "{err}"
        );
    }

    /// Values of column `a` in the batches `reader` yields, at most `batches` of them.
    fn values(reader: &mut Box<dyn SourceReader>, batches: usize) -> Vec<i64> {
        let mut out = Vec::new();
        for _ in 0..batches {
            match reader.poll_next().unwrap() {
                SourcePoll::Batch(b) => out.extend(
                    b.column(0)
                        .as_any()
                        .downcast_ref::<datafusion::arrow::array::Int64Array>()
                        .unwrap()
                        .values()
                        .iter()
                        .copied(),
                ),
                _ => break,
            }
        }
        out
    }

    #[test]
    fn a_restored_split_goes_on_after_the_last_line_read_at_any_parallelism() {
        let dir = tempfile::tempdir().unwrap();
        let lines = |from: i64| {
            (from..from + 10)
                .map(|a| format!("{{\"a\":{a}}}\n"))
                .collect::<String>()
        };
        let csv = |from: i64| {
            "a,b\n".to_string()
                + &(from..from + 10)
                    .map(|a| format!("{a},x\n"))
                    .collect::<String>()
        };
        let json = vec![
            write(&dir, "0.jsonl", &lines(0)),
            write(&dir, "1.jsonl", &lines(100)),
        ];
        let csvs = vec![
            write(&dir, "0.csv", &csv(0)),
            write(&dir, "1.csv", &csv(100)),
        ];
        let header = FileFormat::Csv {
            has_header: true,
            delimiter: b',',
        };
        for (paths, format) in [(json, FileFormat::JsonLines), (csvs, header)] {
            let s = FileSource::try_new(paths, format, Some(schema()))
                .unwrap()
                .with_batch_size(3);
            let split = |index, parallelism| SubtaskInfo {
                index,
                parallelism,
                max_parallelism: 128,
            };
            // One split reads two batches of file 0, the other all of file 1 and then stops.
            let mut first = s.create_reader(split(0, 2)).unwrap();
            let mut second = s.create_reader(split(1, 2)).unwrap();
            let mut seen = values(&mut first, 2);
            seen.extend(values(&mut second, 10));
            let positions = vec![first.position().unwrap(), second.position().unwrap()];
            // Restored at one split: the rest of file 0 only.
            let mut restored = s.restore_reader(split(0, 1), &positions).unwrap();
            seen.extend(values(&mut restored, 100));
            seen.sort();
            let expected: Vec<i64> = (0..10).chain(100..110).collect();
            assert_eq!(seen, expected, "{format:?}");
        }
        let e = FileSource::try_new(
            vec![dir.path().join("0.jsonl")],
            FileFormat::JsonLines,
            Some(schema()),
        )
        .unwrap()
        .restore_reader(
            SubtaskInfo {
                index: 0,
                parallelism: 1,
                max_parallelism: 128,
            },
            &[serde_json::json!(3)],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("not a file source position"), "{e}");
    }

    #[test]
    fn json_projection_decodes_only_the_columns_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "p.jsonl",
            "{\"a\":1,\"b\":\"x\",\"c\":3}\n{\"a\":4,\"b\":\"y\",\"c\":6}\n",
        );
        let full = FileSource::try_new(vec![path], FileFormat::JsonLines, None).unwrap();
        let projected = full.with_projection(&[2, 0]).unwrap();
        let names: Vec<_> = projected
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["c", "a"]);
        let mut r = projected
            .create_reader(SubtaskInfo {
                index: 0,
                parallelism: 1,
                max_parallelism: 128,
            })
            .unwrap();
        let SourcePoll::Batch(b) = r.poll_next().unwrap() else {
            panic!("a batch")
        };
        let c = b
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap();
        assert_eq!(c.values(), &[3, 6]);
        assert_eq!(b.num_columns(), 2);
    }
}
