//! Parquet files in and out, through arrow-rs' own reader and writer.
//!
//! The source's unit of work is a row group: every row group of every file is numbered (files
//! in the order given, row groups in file order) and unit `k` goes to split
//! `k % parallelism`, so a single large file is still read in parallel. Only the columns a
//! query uses are decoded (the projection goes into the reader as a Parquet projection mask).
//! A split's checkpoint position is the units it finished and, for the unit it is in, the
//! rows it has emitted; a restored split, at any parallelism, skips those.
//!
//! The sink side is [`crate::sinks::FileSink`] with the Parquet format: one Parquet file per
//! subtask and epoch (or more, when a file rolls over), committed with checkpoints.

use crate::error::{ConnectorError, Result};
use crate::file::BadRecordPolicy;
use crate::input::{FileStore, InputFile};
use ::parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use ::parquet::arrow::ProjectionMask;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use oxflow_runtime::checkpoint::decode_stored;
use oxflow_runtime::metrics::Counter;
use oxflow_runtime::source::{Source, SourcePoll, SourceReader, SourceRef};
use oxflow_runtime::SubtaskInfo;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

/// Reads Parquet files; their row groups are spread round-robin over splits.
#[derive(Debug, Clone)]
pub struct ParquetSource {
    store: FileStore,
    paths: Vec<PathBuf>,
    /// Every row group: (index into `paths`, row group, rows).
    units: Arc<Vec<(usize, usize, u64)>>,
    /// What batches hold: the files' columns, or the ones asked for, in that order.
    schema: SchemaRef,
    batch_size: usize,
    policy: BadRecordPolicy,
    bad_records: Counter,
}

/// A Parquet error (or a panic inside the parquet crate on a corrupt file) as an error that
/// names the file and what was being read.
fn parquet_error(
    path: &std::path::Path,
    what: &str,
    reason: impl std::fmt::Display,
) -> ConnectorError {
    ConnectorError::BadInput {
        at: path.display().to_string(),
        reason: format!("{what}: {reason}"),
    }
}

/// Runs `f`, turning a panic into an error: the parquet crate is fuzzed upstream, but a file
/// is outside input, and one corrupt file must fail its job, not the process.
fn guarded<T>(path: &std::path::Path, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let reason = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("the reader panicked");
            Err(parquet_error(
                path,
                what,
                format!("corrupt file ({reason})"),
            ))
        }
    }
}

fn open(
    store: &FileStore,
    path: &std::path::Path,
) -> Result<ParquetRecordBatchReaderBuilder<InputFile>> {
    let file = store.open(path)?;
    guarded(path, "reading the footer", || {
        ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| parquet_error(path, "not a readable Parquet file", e))
    })
}

/// The columns of `wanted` in `file`'s schema, by name, with the types they must have.
fn columns_of(path: &std::path::Path, file: &Schema, wanted: &Schema) -> Result<Vec<usize>> {
    wanted
        .fields()
        .iter()
        .map(|w| {
            let (i, f) = file.column_with_name(w.name()).ok_or_else(|| {
                parquet_error(
                    path,
                    "schema mismatch",
                    format!(
                        "no column `{}` (the file has {:?})",
                        w.name(),
                        file.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
                    ),
                )
            })?;
            if f.data_type() != w.data_type() {
                return Err(parquet_error(
                    path,
                    "schema mismatch",
                    format!(
                        "column `{}` is {}, expected {}",
                        w.name(),
                        f.data_type(),
                        w.data_type()
                    ),
                ));
            }
            Ok(i)
        })
        .collect()
}

impl ParquetSource {
    /// A source over `paths`. With no schema, the columns are the first file's; every file
    /// must have each column of the schema, with the same type (other columns are not read).
    /// Reads each file's footer now, so that a missing or corrupt file fails here.
    pub fn try_new(paths: Vec<PathBuf>, schema: Option<SchemaRef>) -> Result<Self> {
        Self::try_new_in(FileStore::Local, paths, schema)
    }

    /// A source over `paths` of `store` (on S3: URIs, as [`FileStore::s3_files`] lists them;
    /// footers and row groups are read by ranged GETs).
    pub fn try_new_in(
        store: FileStore,
        paths: Vec<PathBuf>,
        schema: Option<SchemaRef>,
    ) -> Result<Self> {
        if paths.is_empty() {
            return Err(ConnectorError::Config {
                connector: "parquet",
                reason: "no input file given".into(),
            });
        }
        let mut units = Vec::new();
        let mut schema = schema;
        for (i, path) in paths.iter().enumerate() {
            store.check(path, "parquet")?;
            let builder = open(&store, path)?;
            let file_schema = builder.schema().clone();
            let wanted =
                schema.get_or_insert_with(|| Arc::new(Schema::new(file_schema.fields().clone())));
            columns_of(path, &file_schema, wanted)?;
            for (g, rg) in builder.metadata().row_groups().iter().enumerate() {
                units.push((i, g, rg.num_rows().max(0) as u64));
            }
        }
        Ok(ParquetSource {
            store,
            paths,
            units: Arc::new(units),
            schema: schema.expect("set from the first file"),
            batch_size: 8192,
            policy: BadRecordPolicy::Fail,
            bad_records: Counter::default(),
        })
    }

    /// Sets the policy for row groups that do not decode: `Skip` counts their rows as bad
    /// records and goes on with the next row group.
    pub fn with_bad_records(mut self, policy: BadRecordPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the rows per batch.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Rows skipped as bad so far.
    pub fn bad_records(&self) -> Counter {
        self.bad_records.clone()
    }

    /// Rows in all the files.
    pub fn rows(&self) -> u64 {
        self.units.iter().map(|u| u.2).sum()
    }
}

/// A row group, named so that positions survive a different split of the units.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
struct Unit {
    path: String,
    row_group: usize,
}

/// Where a Parquet split is: row groups finished, and rows emitted of the one being read.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ParquetPosition {
    done: Vec<Unit>,
    current: Option<(Unit, u64)>,
}

impl Source for ParquetSource {
    fn name(&self) -> String {
        "parquet".into()
    }
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn with_projection(&self, columns: &[usize]) -> Option<SourceRef> {
        let schema = Arc::new(self.schema.project(columns).ok()?);
        Some(Arc::new(ParquetSource {
            schema,
            ..self.clone()
        }))
    }
    fn restore_reader(
        &self,
        split: SubtaskInfo,
        positions: &[serde_json::Value],
    ) -> oxflow_runtime::Result<Box<dyn SourceReader>> {
        let mut done = BTreeSet::new();
        let mut resume = BTreeMap::new();
        for p in positions {
            let p: ParquetPosition = decode_stored(p, "a Parquet source position")?;
            done.extend(p.done);
            if let Some((unit, rows)) = p.current {
                resume.insert(unit, rows);
            }
        }
        let todo = self
            .units
            .iter()
            .enumerate()
            .filter(|(k, _)| k % split.parallelism == split.index)
            .map(|(_, &(file, row_group, _))| Unit {
                path: self.paths[file].display().to_string(),
                row_group,
            })
            .filter(|u| !done.contains(u))
            .collect();
        Ok(Box::new(ParquetReader {
            source: self.clone(),
            todo,
            current: None,
            done: done.into_iter().collect(),
            resume,
        }))
    }
}

struct OpenUnit {
    unit: Unit,
    reader: ParquetRecordBatchReader,
    /// Rows emitted so far (counting those a restored run had emitted).
    rows: u64,
}

struct ParquetReader {
    source: ParquetSource,
    todo: std::collections::VecDeque<Unit>,
    current: Option<OpenUnit>,
    done: Vec<Unit>,
    resume: BTreeMap<Unit, u64>,
}

impl ParquetReader {
    fn open_unit(&self, unit: &Unit, skip: u64) -> Result<ParquetRecordBatchReader> {
        let path = std::path::Path::new(&unit.path);
        let builder = open(&self.source.store, path)?;
        let indices = columns_of(path, &builder.schema().clone(), &self.source.schema)?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), indices.iter().copied());
        let what = format!("row group {}", unit.row_group);
        guarded(path, &what, || {
            builder
                .with_row_groups(vec![unit.row_group])
                .with_projection(mask)
                .with_batch_size(self.source.batch_size)
                .with_offset(skip as usize)
                .build()
                .map_err(|e| parquet_error(path, &what, e))
        })
    }

    /// The next batch of the current row group, opening the next one as needed; `None` at
    /// the end of the split.
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if self.current.is_none() {
                let Some(unit) = self.todo.pop_front() else {
                    return Ok(None);
                };
                let skip = self.resume.remove(&unit).unwrap_or(0);
                match self.open_unit(&unit, skip) {
                    Ok(reader) => {
                        self.current = Some(OpenUnit {
                            unit,
                            reader,
                            rows: skip,
                        })
                    }
                    Err(e) => self.bad_unit(unit, skip, e)?,
                }
                continue;
            }
            let open = self.current.as_mut().expect("opened above");
            let path = std::path::PathBuf::from(&open.unit.path);
            let what = format!("row group {} after row {}", open.unit.row_group, open.rows);
            let next = guarded(&path, &what, || {
                open.reader
                    .next()
                    .transpose()
                    .map_err(|e| parquet_error(&path, &what, e))
            });
            match next {
                Ok(Some(batch)) => {
                    open.rows += batch.num_rows() as u64;
                    return Ok(Some(self.in_schema_order(&path, batch)?));
                }
                Ok(None) => {
                    let finished = self.current.take().expect("current");
                    self.done.push(finished.unit);
                }
                Err(e) => {
                    let open = self.current.take().expect("current");
                    self.bad_unit(open.unit, open.rows, e)?;
                }
            }
        }
    }

    /// The reader's batch (columns in file order: a projection mask is a set) as the
    /// source's schema has them, checked (a non-null column must hold no null).
    fn in_schema_order(&self, path: &std::path::Path, batch: RecordBatch) -> Result<RecordBatch> {
        let columns = self
            .source
            .schema
            .fields()
            .iter()
            .map(|f| {
                batch.column_by_name(f.name()).cloned().ok_or_else(|| {
                    parquet_error(path, "schema mismatch", format!("no column `{}`", f.name()))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // With no column at all (`count(*)`), the rows still count.
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        RecordBatch::try_new_with_options(self.source.schema.clone(), columns, &options)
            .map_err(|e| parquet_error(path, "schema mismatch", e))
    }

    /// A row group that does not decode: fail, or (`Skip`) count its remaining rows as bad
    /// and mark it done.
    fn bad_unit(&mut self, unit: Unit, emitted: u64, error: ConnectorError) -> Result<()> {
        if self.source.policy == BadRecordPolicy::Fail {
            return Err(error);
        }
        let rows = self
            .source
            .units
            .iter()
            .find(|&&(f, g, _)| {
                g == unit.row_group && self.source.paths[f].display().to_string() == unit.path
            })
            .map_or(0, |u| u.2);
        tracing::warn!(path = %unit.path, row_group = unit.row_group, %error, "skipping a row group that does not decode");
        self.source
            .bad_records
            .add(rows.saturating_sub(emitted).max(1));
        self.done.push(unit);
        Ok(())
    }
}

impl SourceReader for ParquetReader {
    fn poll_next(&mut self) -> oxflow_runtime::Result<SourcePoll> {
        Ok(match self.next_batch()? {
            Some(batch) => SourcePoll::Batch(batch),
            None => SourcePoll::Finished,
        })
    }
    fn position(&self) -> Option<serde_json::Value> {
        let position = ParquetPosition {
            done: self.done.clone(),
            current: self.current.as_ref().map(|o| (o.unit.clone(), o.rows)),
        };
        Some(serde_json::to_value(position).expect("positions serialize"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::parquet::arrow::ArrowWriter;
    use ::parquet::file::properties::WriterProperties;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field};
    use std::fs::File;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Utf8, true),
        ]))
    }

    /// A file of `a` = `from..from+rows`, `rows_per_group` rows per row group.
    fn write(
        dir: &tempfile::TempDir,
        name: &str,
        from: i64,
        rows: i64,
        per_group: usize,
    ) -> PathBuf {
        let path = dir.path().join(name);
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(per_group))
            .build();
        let mut w =
            ArrowWriter::try_new(File::create(&path).unwrap(), schema(), Some(props)).unwrap();
        let a: Vec<i64> = (from..from + rows).collect();
        let b: Vec<String> = a.iter().map(|v| format!("v{v}")).collect();
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(a)),
                Arc::new(StringArray::from(b)),
            ],
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        path
    }

    fn split(index: usize, parallelism: usize) -> SubtaskInfo {
        SubtaskInfo {
            index,
            parallelism,
            max_parallelism: 128,
        }
    }

    /// Column `a` of up to `batches` batches.
    fn values(r: &mut Box<dyn SourceReader>, batches: usize) -> Vec<i64> {
        let mut out = Vec::new();
        for _ in 0..batches {
            match r.poll_next().unwrap() {
                SourcePoll::Batch(b) => {
                    let i = b.schema().index_of("a").unwrap();
                    out.extend(
                        b.column(i)
                            .as_any()
                            .downcast_ref::<Int64Array>()
                            .unwrap()
                            .values(),
                    );
                }
                _ => break,
            }
        }
        out
    }

    #[test]
    fn row_groups_spread_over_splits_and_restore_at_another_parallelism() {
        let dir = tempfile::tempdir().unwrap();
        let paths = vec![
            write(&dir, "0.parquet", 0, 1000, 300),
            write(&dir, "1.parquet", 5000, 700, 300),
        ];
        let s = ParquetSource::try_new(paths, None)
            .unwrap()
            .with_batch_size(100);
        assert_eq!(s.rows(), 1700);
        assert_eq!(s.units.len(), 4 + 3);
        let expected: Vec<i64> = (0..1000).chain(5000..5700).collect();
        // Three splits read some batches each, then the job restores at two.
        let mut readers: Vec<_> = (0..3)
            .map(|i| s.create_reader(split(i, 3)).unwrap())
            .collect();
        let mut seen = Vec::new();
        for (i, r) in readers.iter_mut().enumerate() {
            seen.extend(values(r, 2 + i * 3));
        }
        let positions: Vec<_> = readers.iter().map(|r| r.position().unwrap()).collect();
        for i in 0..2 {
            let mut r = s.restore_reader(split(i, 2), &positions).unwrap();
            seen.extend(values(&mut r, usize::MAX));
        }
        seen.sort();
        assert_eq!(seen, expected, "every row exactly once");
    }

    #[test]
    fn projection_reads_only_the_columns_asked_for_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "0.parquet", 0, 10, 100);
        let s = ParquetSource::try_new(vec![p.clone()], None).unwrap();
        let projected = s.with_projection(&[1, 0]).unwrap();
        let mut r = projected.create_reader(split(0, 1)).unwrap();
        let SourcePoll::Batch(b) = r.poll_next().unwrap() else {
            panic!("a batch")
        };
        // In the order asked for, not the file's.
        let names: Vec<_> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(
            b.column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .value(1),
            "v1"
        );
        // No column at all still counts rows.
        let none = s.with_projection(&[]).unwrap();
        let mut r = none.create_reader(split(0, 1)).unwrap();
        let SourcePoll::Batch(b) = r.poll_next().unwrap() else {
            panic!("a batch")
        };
        assert_eq!((b.num_columns(), b.num_rows()), (0, 10));
        // A declared schema that names a missing column or another type is an error at once.
        let wrong = Arc::new(Schema::new(vec![Field::new("a", DataType::Utf8, false)]));
        let e = ParquetSource::try_new(vec![p.clone()], Some(wrong))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("column `a` is Int64, expected Utf8") && e.contains("0.parquet"),
            "{e}"
        );
        let missing = Arc::new(Schema::new(vec![Field::new("zz", DataType::Int64, false)]));
        let e = ParquetSource::try_new(vec![p], Some(missing))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no column `zz`"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_parquet_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.parquet");
        std::fs::write(&p, b"{\"a\":1}\n").unwrap();
        let e = ParquetSource::try_new(vec![p], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x.parquet") && e.contains("not a readable Parquet file"),
            "{e}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Fuzz: a valid file with bytes overwritten anywhere reads to rows or an error naming
        /// the file, never a panic or a hang; with `Skip`, bad row groups are counted.
        #[test]
        fn corrupt_files_fail_cleanly(
            edits in proptest::collection::vec((0.0f64..1.0, proptest::num::u8::ANY), 1..8),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let p = write(&dir, "c.parquet", 0, 500, 100);
            let mut bytes = std::fs::read(&p).unwrap();
            let n = bytes.len();
            for (at, b) in &edits {
                bytes[((*at * n as f64) as usize).min(n - 1)] = *b;
            }
            std::fs::write(&p, &bytes).unwrap();
            for policy in [BadRecordPolicy::Fail, BadRecordPolicy::Skip] {
                let Ok(s) = ParquetSource::try_new(vec![p.clone()], None) else { continue };
                let s = s.with_bad_records(policy);
                let Ok(mut r) = s.create_reader(split(0, 1)) else { continue };
                let mut rows = 0u64;
                loop {
                    match r.poll_next() {
                        Ok(SourcePoll::Batch(b)) => rows += b.num_rows() as u64,
                        Ok(_) => break,
                        Err(e) => {
                            proptest::prop_assert!(e.to_string().contains("c.parquet"), "{}", e);
                            break;
                        }
                    }
                    proptest::prop_assert!(rows <= 1_000_000, "bounded output");
                }
            }
        }
    }
}
