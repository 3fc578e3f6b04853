//! Job specs: the JSON form of a pipeline, for submitting it to a server.
//!
//! A spec says what the Rust API says, as data: a source, watermarks, steps (expressions as
//! DataFusion SQL strings such as `"price > 1000"` or `"count(auction) AS num"`), windows,
//! joins, a sink, parallelism and checkpoints. Rust closures cannot be data, so they are
//! registered by name in a [`Registry`] compiled into the binary that runs the job (as a Flink
//! job brings its jar), and a spec names them.
//!
//! [`Pipeline::from_spec`](crate::Pipeline::from_spec) builds a job from a spec;
//! [`Job::to_spec`](crate::Job::to_spec) gives the spec of a job built with the API (from
//! expressions, spec sources and sinks, and registered functions), and the two round-trip.

use crate::error::{OxflowError, Result};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use oxflow_connectors::file::{FileFormat, FileSource};
use oxflow_connectors::input::FileStore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A whole job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Subtasks per stage (default: one per core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<usize>,
    /// Number of key groups (default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallelism: Option<usize>,
    /// The stream: source, watermarks, steps.
    pub stream: StreamSpec,
    /// Where results go.
    pub sink: SinkSpec,
    /// Checkpoints (a server keeps them in the job's own directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<CheckpointSpec>,
    /// How a server restarts the job when it fails (default: 3 times, backoff from 1 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartSpec>,
    /// Where operators keep state while running (default: in memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateSpec>,
}

/// State kept in RocksDB while the job runs, so that it may be larger than memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    /// MiB of state each stateful operator subtask (window, session, running aggregate, join,
    /// top-N) keeps in memory before writing to RocksDB.
    pub memory_budget_mb: u64,
}

impl StateSpec {
    /// The storage this spec asks for.
    pub fn storage(&self) -> oxflow_runtime::state::StateStorage {
        oxflow_runtime::state::StateStorage::RocksDb {
            memory_budget: (self.memory_budget_mb as usize).saturating_mul(1 << 20),
        }
    }
}

/// A stream: a source, its watermarks, and the steps applied in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// Where records come from.
    pub source: SourceSpec,
    /// Event time and watermarks of the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermarks: Option<WatermarkSpec>,
    /// The transformations, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
}

impl StreamSpec {
    /// Calls `f` on this stream, then on every stream joined or unioned into it (depth first),
    /// stopping at the first error.
    pub fn try_for_each_stream<E>(
        &mut self,
        f: &mut impl FnMut(&mut StreamSpec) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        f(self)?;
        for step in &mut self.steps {
            match step {
                Step::Join { right, .. } => right.try_for_each_stream(f)?,
                Step::Union(other) => other.try_for_each_stream(f)?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// A source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceSpec {
    /// A table of the Nexmark generator.
    Nexmark {
        /// `person`, `auction` or `bid`.
        table: String,
        /// Events to generate (all kinds; none: unbounded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        events: Option<u64>,
        /// Events per second of event time (default 100 000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_rate: Option<u64>,
        /// Seed of the random choices (default 0).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seed: Option<u64>,
        /// Throttle: events per second of wall time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate: Option<f64>,
    },
    /// JSON-lines or CSV files: a file, or the `part-*` files of a directory.
    File {
        /// The file or directory.
        path: PathBuf,
        /// Of a directory, read the files whose whole path matches this regular expression
        /// (names starting with `.` or `_` never), in place of its `part-*` files.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path_regex: Option<String>,
        /// `json`, `csv` (with a header line) or `parquet`; default: `parquet` when every file
        /// ends in `.parquet`, else `json`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<String>,
        /// The columns (default: inferred from the first file; of Parquet files, read from
        /// their schema, and only these columns are decoded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        columns: Option<Vec<ColumnSpec>>,
    },
    /// A Kafka topic of JSON records: `kafka://HOST:PORT/TOPIC?options`, as on the CLI.
    Kafka {
        /// The URI.
        uri: String,
        /// The records' columns.
        columns: Vec<ColumnSpec>,
    },
    /// A NATS JetStream stream of JSON messages: `nats://HOST:PORT/STREAM?options`, as on
    /// the CLI.
    Nats {
        /// The URI.
        uri: String,
        /// The messages' columns.
        columns: Vec<ColumnSpec>,
    },
    /// RabbitMQ streams of JSON messages:
    /// `rabbitmq://HOST:PORT/QUEUE[,QUEUE]?options`, as on the CLI.
    #[serde(rename = "rabbitmq")]
    RabbitMq {
        /// The URI.
        uri: String,
        /// The messages' columns.
        columns: Vec<ColumnSpec>,
    },
    /// JSON-lines, CSV or Parquet files on S3 (or an S3-compatible server): every object
    /// directly under `s3://BUCKET/PREFIX[?endpoint=URL&region=R]` but hidden ones (names
    /// starting with `.` or `_`), read by ranged GETs; credentials from the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
    S3 {
        /// The location.
        uri: String,
        /// As for files: `json`, `csv` or `parquet` (default: by the objects' names).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<String>,
        /// As for files.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        columns: Option<Vec<ColumnSpec>>,
    },
}

/// A column of a source's schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// Column name.
    pub name: String,
    /// `int64`, `int32`, `float64`, `bool`, `string` or `timestamp_ms`.
    #[serde(rename = "type")]
    pub data_type: String,
}

/// Watermarks: bounded out-of-orderness on an event-time column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatermarkSpec {
    /// The event-time column.
    pub column: String,
    /// How far behind the newest event time the watermark stays.
    pub delay_ms: u64,
    /// Mark a split idle after this long without records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// Records whose event time is more than this far ahead of the wall clock go to
    /// `out_of_range` instead of pushing the watermark into the future.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ahead_ms: Option<u64>,
    /// What happens to a record whose event time is out of range (beyond `max_ahead_ms`, or
    /// outside the years 1 to 9999): `fail` (the default) or `skip` (dropped and counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_range: Option<OutOfRangeSpec>,
}

/// What a source does with a record whose event time is out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutOfRangeSpec {
    /// Fail the job, naming the record's time.
    Fail,
    /// Drop the record and count it.
    Skip,
}

impl From<OutOfRangeSpec> for oxflow_runtime::watermark::OutOfRange {
    fn from(s: OutOfRangeSpec) -> Self {
        match s {
            OutOfRangeSpec::Fail => Self::Fail,
            OutOfRangeSpec::Skip => Self::Skip,
        }
    }
}

/// One transformation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Keep records for which the SQL predicate is true.
    Filter(String),
    /// Replace the columns by SQL expressions (`"price * 0.908 AS euros"`).
    Select(Vec<String>),
    /// A function registered under this name in the [`Registry`].
    Map(String),
    /// Spread batches round-robin over this many subtasks.
    Rebalance(usize),
    /// Declare a column the event time from here on.
    WithEventTime(String),
    /// Windows per key (no keys: over the whole stream), then aggregates or top-N.
    Window {
        /// Key columns.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        keys: Vec<String>,
        /// Which windows.
        window: WindowKind,
        /// Milliseconds a window waits for late records after its end.
        #[serde(default, skip_serializing_if = "is_zero")]
        allowed_lateness_ms: u64,
        /// What each window computes.
        compute: WindowCompute,
    },
    /// A running (non-windowed) aggregate per key: a changelog.
    Aggregate {
        /// Key columns.
        keys: Vec<String>,
        /// SQL aggregates (`"avg(final) AS avg_final"`).
        aggregates: Vec<String>,
    },
    /// Join with another stream.
    Join {
        /// This stream's key columns.
        keys: Vec<String>,
        /// The other stream (the right side).
        right: Box<StreamSpec>,
        /// The right side's key columns.
        right_keys: Vec<String>,
        /// Which rows join.
        on: JoinOn,
        /// Left outer rather than inner.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        left_outer: bool,
    },
    /// Merge another stream of the same columns.
    Union(Box<StreamSpec>),
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A window kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowKind {
    /// Fixed windows.
    Tumbling {
        /// Length.
        size_ms: u64,
    },
    /// Fixed windows starting every `slide_ms`.
    Hopping {
        /// Length.
        size_ms: u64,
        /// Distance between starts.
        slide_ms: u64,
    },
    /// Sessions closing after `gap_ms` without records.
    Session {
        /// Inactivity gap.
        gap_ms: u64,
    },
    /// The windows of an upstream window (`window_start`, `window_end` columns).
    Inherited,
}

/// What a window computes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowCompute {
    /// SQL aggregates (`"count(auction) AS num"`).
    Aggregate(Vec<String>),
    /// The rows with the `n` largest values of `order_by`, ties included.
    TopN {
        /// Column to rank by.
        order_by: String,
        /// How many.
        n: usize,
    },
}

/// Which rows of a join match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum JoinOn {
    /// The same window of both sides.
    Window(WindowKind),
    /// `right.time` within `[left.time + lower_ms, left.time + upper_ms]`.
    Interval {
        /// Lower bound.
        lower_ms: i64,
        /// Upper bound.
        upper_ms: i64,
    },
    /// Equal keys, rows kept `ttl_ms` of event time (none: forever).
    Regular {
        /// State time-to-live.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
}

/// A sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkSpec {
    /// Discard everything.
    Blackhole,
    /// JSON lines on standard output.
    Stdout,
    /// JSON-lines or Parquet files in a directory, exactly once with checkpoints.
    File {
        /// The directory.
        path: PathBuf,
        /// `json` (default) or `parquet`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<String>,
        /// Start a new file once one holds this many MiB (default 128).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_file_mb: Option<u64>,
        /// Start a new file, at the next record, once one has been open this long (default:
        /// only at checkpoints and by size).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rollover_ms: Option<u64>,
    },
    /// A Kafka topic (`kafka://HOST:PORT/TOPIC?options`, as on the CLI).
    Kafka {
        /// The URI.
        uri: String,
    },
    /// A NATS JetStream subject (`nats://HOST:PORT/STREAM?subject=S&options`, as on the CLI).
    Nats {
        /// The URI.
        uri: String,
    },
    /// A RabbitMQ queue or exchange (`rabbitmq://HOST:PORT/QUEUE?options`, as on the CLI):
    /// publisher confirms, at least once.
    #[serde(rename = "rabbitmq")]
    RabbitMq {
        /// The URI.
        uri: String,
    },
    /// JSON-lines or Parquet files on S3 (or an S3-compatible server), exactly once with
    /// checkpoints: `s3://BUCKET/PREFIX[?endpoint=URL&region=R]`; credentials from the
    /// environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
    S3 {
        /// The location.
        uri: String,
        /// `json` (default) or `parquet`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<String>,
        /// Start a new file once one holds this many MiB (default 128).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_file_mb: Option<u64>,
        /// Start a new file, at the next record, once one has been open this long.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rollover_ms: Option<u64>,
    },
}

impl SinkSpec {
    /// JSON-lines files in `path`, with the default rolling policy.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        SinkSpec::File {
            path: path.into(),
            format: None,
            max_file_mb: None,
            rollover_ms: None,
        }
    }
}

/// Checkpoint settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Milliseconds from one checkpoint's start to the next one's.
    pub interval_ms: u64,
    /// Least milliseconds from the end of one checkpoint to the start of the next (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_pause_ms: Option<u64>,
    /// Completed checkpoints kept (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained: Option<usize>,
}

/// Restart strategy of a job: exponential backoff, a maximum number of restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    /// Restarts allowed before the job is FAILED (default 3).
    #[serde(default = "RestartSpec::default_attempts")]
    pub max_attempts: u32,
    /// Wait before the first restart (default 1000 ms); doubles each time.
    #[serde(default = "RestartSpec::default_initial")]
    pub initial_backoff_ms: u64,
    /// The longest wait (default 60 000 ms).
    #[serde(default = "RestartSpec::default_max")]
    pub max_backoff_ms: u64,
}

impl RestartSpec {
    fn default_attempts() -> u32 {
        3
    }
    fn default_initial() -> u64 {
        1000
    }
    fn default_max() -> u64 {
        60_000
    }
    /// The wait before restart number `restarts + 1`.
    pub fn backoff(&self, restarts: u32) -> Duration {
        let ms = self
            .initial_backoff_ms
            .saturating_mul(1u64 << restarts.min(30))
            .min(self.max_backoff_ms);
        Duration::from_millis(ms)
    }
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            max_attempts: Self::default_attempts(),
            initial_backoff_ms: Self::default_initial(),
            max_backoff_ms: Self::default_max(),
        }
    }
}

/// A function over batches, as registered.
pub type MapFn =
    Arc<dyn Fn(RecordBatch) -> oxflow_operators::Result<RecordBatch> + Send + Sync + 'static>;

/// Rust functions a spec may name, compiled into the binary that runs the job.
#[derive(Clone, Default)]
pub struct Registry {
    maps: BTreeMap<String, (SchemaRef, MapFn)>,
}

/// A registered function, ready for [`Stream::map`](crate::Stream::map).
#[derive(Clone)]
pub struct RegisteredMap {
    pub(crate) name: String,
    pub(crate) output: SchemaRef,
    pub(crate) function: MapFn,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `f`, which turns each batch into one of `output`'s schema, under `name`.
    pub fn register_map(
        &mut self,
        name: &str,
        output: SchemaRef,
        f: impl Fn(RecordBatch) -> oxflow_operators::Result<RecordBatch> + Send + Sync + 'static,
    ) -> &mut Self {
        self.maps.insert(name.to_string(), (output, Arc::new(f)));
        self
    }

    /// The function registered as `name`; the error lists those that are.
    pub fn map(&self, name: &str) -> Result<RegisteredMap> {
        let (output, function) = self.maps.get(name).ok_or_else(|| {
            OxflowError::InvalidPipeline(format!(
                "no function `{name}` is registered; registered: [{}]",
                self.maps.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        Ok(RegisteredMap {
            name: name.to_string(),
            output: output.clone(),
            function: function.clone(),
        })
    }
}

/// The Arrow type of a spec column type.
fn data_type(name: &str, column: &str) -> Result<DataType> {
    Ok(match name {
        "int64" => DataType::Int64,
        "int32" => DataType::Int32,
        "float64" => DataType::Float64,
        "bool" => DataType::Boolean,
        "string" => DataType::Utf8,
        "timestamp_ms" => DataType::Timestamp(TimeUnit::Millisecond, None),
        other => {
            return Err(OxflowError::InvalidPipeline(format!(
                "column `{column}`: unknown type `{other}`; use int64, int32, float64, bool, string or timestamp_ms"
            )))
        }
    })
}

/// The schema of spec columns.
pub(crate) fn schema_of(columns: &[ColumnSpec]) -> Result<SchemaRef> {
    let fields = columns
        .iter()
        .map(|c| Ok(Field::new(&c.name, data_type(&c.data_type, &c.name)?, true)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// A SQL expression's text, as a spec holds it; `None` if the unparser cannot say it.
pub(crate) fn expr_sql(
    expr: &datafusion::logical_expr::Expr,
) -> std::result::Result<String, String> {
    use datafusion::logical_expr::Expr;
    let unparse = |e: &Expr| {
        datafusion::sql::unparser::expr_to_sql(e)
            .map(|ast| ast.to_string())
            .map_err(|err| format!("`{e}` has no SQL form: {err}"))
    };
    match expr {
        Expr::Alias(a) => Ok(format!("{} AS {}", unparse(&a.expr)?, quote(&a.name))),
        other => unparse(other),
    }
}

/// An identifier as SQL needs it (DataFusion lower-cases unquoted names).
fn quote(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// The Nexmark table a spec names.
fn nexmark_table(name: &str) -> Result<oxflow_connectors::nexmark::NexmarkTable> {
    use oxflow_connectors::nexmark::NexmarkTable;
    Ok(match name {
        "person" => NexmarkTable::Person,
        "auction" => NexmarkTable::Auction,
        "bid" => NexmarkTable::Bid,
        other => {
            return Err(OxflowError::InvalidPipeline(format!(
                "unknown Nexmark table `{other}`; use person, auction or bid"
            )))
        }
    })
}

/// Builds the source a spec describes.
pub(crate) fn build_source(
    spec: &SourceSpec,
    max_line_bytes: usize,
) -> Result<Arc<dyn oxflow_runtime::source::Source>> {
    use oxflow_connectors::kafka::{KafkaSource, KafkaSourceConfig, KafkaUri, RecordFormat};
    use oxflow_connectors::nexmark::{NexmarkConfig, NexmarkSource};
    Ok(match spec {
        SourceSpec::Nexmark {
            table,
            events,
            event_rate,
            seed,
            rate,
        } => {
            let defaults = NexmarkConfig::default();
            let config = NexmarkConfig {
                events: *events,
                event_rate: event_rate.unwrap_or(defaults.event_rate),
                seed: seed.unwrap_or(defaults.seed),
                rate_limit: *rate,
                ..defaults
            };
            Arc::new(NexmarkSource::try_new(config, nexmark_table(table)?)?)
        }
        SourceSpec::File {
            path,
            path_regex,
            format,
            columns,
        } => {
            let files = match path_regex {
                Some(regex) => matching_files(path, regex)?,
                None => crate::nexmark::part_files(path)?,
            };
            let what = format!("file source {}", path.display());
            let kind = file_kind(&what, format, &files)?;
            let schema = columns.as_deref().map(schema_of).transpose()?;
            file_source(FileStore::Local, files, kind, schema, max_line_bytes)?
        }
        SourceSpec::S3 {
            uri,
            format,
            columns,
        } => {
            let location = oxflow_connectors::object::S3Location::parse_plain(uri, "S3 source")?;
            let what = format!("S3 source {uri}");
            match (format.as_deref(), columns) {
                // Columns and format given: nothing to learn from the files, so they are listed
                // when the job starts, and a job is built (validated, shown) offline.
                (Some(_), Some(cols)) => {
                    // The format and columns are read now, as for any file source; only the
                    // listing waits for the start.
                    let kind = file_kind(&what, format, &[])?;
                    let schema = schema_of(cols)?;
                    let declared = schema.clone();
                    let open: oxflow_runtime::source::OpenSource = Arc::new(move || {
                        let files = FileStore::s3_files(&location)?;
                        let store = FileStore::S3(location.clone());
                        let schema = Some(declared.clone());
                        file_source(store, files, kind, schema, max_line_bytes)
                            .map_err(OxflowError::into_runtime)
                    });
                    // The names the built sources give, and which of them read only some
                    // columns (FileSource::with_projection: JSON lines; ParquetSource: all).
                    let (name, projects) = match kind {
                        None => ("parquet", true),
                        Some(f) => ("file", f == FileFormat::JsonLines),
                    };
                    Arc::new(oxflow_runtime::source::StartedSource::new(
                        name, schema, projects, open,
                    ))
                }
                _ => {
                    let files = FileStore::s3_files(&location)?;
                    let kind = file_kind(&what, format, &files)?;
                    let schema = columns.as_deref().map(schema_of).transpose()?;
                    file_source(FileStore::S3(location), files, kind, schema, max_line_bytes)?
                }
            }
        }
        SourceSpec::Kafka { uri, columns } => {
            let uri = KafkaUri::parse(uri)?;
            let config =
                KafkaSourceConfig::from_uri(&uri, RecordFormat::Json(schema_of(columns)?))?;
            Arc::new(KafkaSource::try_new(config)?)
        }
        SourceSpec::Nats { uri, columns } => {
            use oxflow_connectors::nats::{NatsSource, NatsSourceConfig, NatsUri};
            let config = NatsSourceConfig::from_uri(&NatsUri::parse(uri)?, schema_of(columns)?)?;
            Arc::new(NatsSource::try_new(config)?)
        }
        SourceSpec::RabbitMq { uri, columns } => {
            use oxflow_connectors::rabbitmq::{RabbitMqSource, RabbitMqSourceConfig, RabbitMqUri};
            let config =
                RabbitMqSourceConfig::from_uri(&RabbitMqUri::parse(uri)?, schema_of(columns)?)?;
            Arc::new(RabbitMqSource::try_new(config)?)
        }
    })
}

/// The files directly in directory `dir` whose whole path matches `regex` (Flink's
/// `source.path.regex-pattern`), but hidden ones (`.` or `_` first), sorted.
fn matching_files(dir: &std::path::Path, regex: &str) -> Result<Vec<PathBuf>> {
    let bad =
        |why: String| OxflowError::InvalidPipeline(format!("file source {}: {why}", dir.display()));
    let regex = regex::Regex::new(&format!("^(?:{regex})$"))
        .map_err(|e| bad(format!("path_regex is not a regular expression: {e}")))?;
    let listing = std::fs::read_dir(dir).map_err(|e| bad(format!("cannot list it: {e}")))?;
    let mut files: Vec<PathBuf> = listing
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    !n.starts_with('.') && !n.starts_with('_')
                })
                && regex.is_match(&p.to_string_lossy())
        })
        .collect();
    if files.is_empty() {
        return Err(bad(format!(
            "no file matches path_regex `{}`",
            regex.as_str()
        )));
    }
    files.sort();
    Ok(files)
}

/// How a file source's files are read: lines of JSON or CSV, or Parquet (`None`).
type FileKind = Option<FileFormat>;

/// The kind `format` names, as a spec gives it: by default Parquet when every name of
/// `files` ends in `.parquet`, else JSON lines.
fn file_kind(what: &str, format: &Option<String>, files: &[PathBuf]) -> Result<FileKind> {
    Ok(match format.as_deref() {
        None if crate::nexmark::all_parquet(files) => None,
        None | Some("json") => Some(FileFormat::JsonLines),
        Some("csv") => Some(FileFormat::Csv {
            has_header: true,
            delimiter: b',',
        }),
        Some("parquet") => None,
        Some(other) => {
            return Err(OxflowError::InvalidPipeline(format!(
                "{what}: unknown format `{other}`; use json, csv or parquet"
            )))
        }
    })
}

/// A JSON-lines, CSV or Parquet source over `files` of `store`, of `schema` if given (else
/// the one the files show).
fn file_source(
    store: FileStore,
    files: Vec<PathBuf>,
    kind: FileKind,
    schema: Option<SchemaRef>,
    max_line_bytes: usize,
) -> Result<Arc<dyn oxflow_runtime::source::Source>> {
    Ok(match kind {
        Some(format) => Arc::new(
            FileSource::try_new_in(store, files, format, schema)?
                .with_max_line_bytes(max_line_bytes),
        ),
        None => Arc::new(oxflow_connectors::parquet::ParquetSource::try_new_in(
            store, files, schema,
        )?),
    })
}

/// What an exactly-once sink needs from a checkpointed job: a spool directory `spool` beside
/// the checkpoints, and a name for its writers derived from the checkpoint directory, stable
/// across restarts of this job and different for another job.
fn exactly_once_parts(dir: &std::path::Path, spool: &str, name: &str) -> Result<(PathBuf, String)> {
    let io = |e: std::io::Error| {
        OxflowError::InvalidPipeline(format!("checkpoint directory {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let canonical = dir.canonicalize().map_err(io)?;
    let id = crc32fast::hash(canonical.to_string_lossy().as_bytes());
    Ok((dir.join(spool), format!("oxflow-{name}-{id:08x}")))
}

/// Builds the sink a spec describes. `checkpoint_dir`: where the job keeps checkpoints, if it
/// does (a Kafka sink is then exactly once, spooling beside them; else at least once).
pub fn build_sink(
    spec: &SinkSpec,
    checkpoint_dir: Option<&std::path::Path>,
) -> Result<Arc<dyn oxflow_runtime::sink::Sink>> {
    use oxflow_connectors::kafka::{KafkaSink, KafkaSinkConfig, KafkaUri};
    use oxflow_connectors::sinks::{BlackholeSink, FileSink, StdoutSink};
    Ok(match spec {
        SinkSpec::Blackhole => Arc::new(BlackholeSink::default()),
        SinkSpec::Stdout => Arc::new(StdoutSink),
        SinkSpec::File {
            path,
            format,
            max_file_mb,
            rollover_ms,
        } => {
            let what = format!("file sink {}", path.display());
            let (format, rolling) = file_options(&what, format, *max_file_mb, *rollover_ms)?;
            Arc::new(
                FileSink::try_new(path.clone())?
                    .with_format(format)
                    .with_rolling(rolling),
            )
        }
        SinkSpec::S3 {
            uri,
            format,
            max_file_mb,
            rollover_ms,
        } => {
            let location = oxflow_connectors::object::S3Location::parse_plain(uri, "S3 sink")?;
            let what = format!("S3 sink {uri}");
            let (format, rolling) = file_options(&what, format, *max_file_mb, *rollover_ms)?;
            Arc::new(
                FileSink::s3(location)
                    .with_format(format)
                    .with_rolling(rolling),
            )
        }
        SinkSpec::Kafka { uri } => {
            let uri = KafkaUri::parse(uri)?;
            // Exactly-once spools epochs beside the checkpoints; the transactional ids are
            // derived from the checkpoint directory, stable across restarts of this job.
            let exactly_once = checkpoint_dir
                .map(|dir| exactly_once_parts(dir, "kafka-spool", &uri.topic))
                .transpose()?;
            Arc::new(KafkaSink::try_new(KafkaSinkConfig::from_uri(
                &uri,
                exactly_once,
            )?)?)
        }
        SinkSpec::Nats { uri } => {
            use oxflow_connectors::nats::{NatsSink, NatsSinkConfig, NatsUri};
            let uri = NatsUri::parse(uri)?;
            let exactly_once = checkpoint_dir
                .map(|dir| exactly_once_parts(dir, "nats-spool", &uri.stream))
                .transpose()?;
            Arc::new(NatsSink::try_new(NatsSinkConfig::from_uri(
                &uri,
                exactly_once,
            )?)?)
        }
        SinkSpec::RabbitMq { uri } => {
            use oxflow_connectors::rabbitmq::{RabbitMqSink, RabbitMqSinkConfig, RabbitMqUri};
            let config = RabbitMqSinkConfig::from_uri(&RabbitMqUri::parse(uri)?)?;
            Arc::new(RabbitMqSink::try_new(config)?)
        }
    })
}

/// The format and rolling policy of a file sink's spec (`what` names the sink in errors).
fn file_options(
    what: &str,
    format: &Option<String>,
    max_file_mb: Option<u64>,
    rollover_ms: Option<u64>,
) -> Result<(
    oxflow_connectors::sinks::FileSinkFormat,
    oxflow_connectors::sinks::RollingPolicy,
)> {
    use oxflow_connectors::sinks::{FileSinkFormat, RollingPolicy};
    let format = match format.as_deref() {
        None | Some("json") => FileSinkFormat::JsonLines,
        Some("parquet") => FileSinkFormat::Parquet,
        Some(other) => {
            return Err(OxflowError::InvalidPipeline(format!(
                "{what}: unknown format `{other}`; use json or parquet"
            )))
        }
    };
    let mut rolling = RollingPolicy::default();
    match max_file_mb {
        Some(0) => {
            return Err(OxflowError::InvalidPipeline(format!(
                "{what}: max_file_mb must be at least 1"
            )))
        }
        Some(mb) => rolling.max_file_bytes = mb.saturating_mul(1 << 20),
        None => {}
    }
    rolling.rollover_interval = rollover_ms.map(Duration::from_millis);
    Ok((format, rolling))
}

/// The window of a spec.
pub(crate) fn window_spec(kind: &WindowKind) -> oxflow_operators::WindowSpec {
    use oxflow_operators::WindowSpec;
    let ms = std::time::Duration::from_millis;
    match kind {
        WindowKind::Tumbling { size_ms } => WindowSpec::tumbling(ms(*size_ms)),
        WindowKind::Hopping { size_ms, slide_ms } => {
            WindowSpec::hopping(ms(*size_ms), ms(*slide_ms))
        }
        WindowKind::Session { gap_ms } => WindowSpec::session(ms(*gap_ms)),
        WindowKind::Inherited => WindowSpec::Inherited,
    }
}

/// The spec of a window.
pub(crate) fn window_kind(window: &oxflow_operators::WindowSpec) -> WindowKind {
    use oxflow_operators::WindowSpec;
    let ms = |d: &std::time::Duration| d.as_millis() as u64;
    match window {
        WindowSpec::Tumbling { size } => WindowKind::Tumbling { size_ms: ms(size) },
        WindowSpec::Hopping { size, slide } => WindowKind::Hopping {
            size_ms: ms(size),
            slide_ms: ms(slide),
        },
        WindowSpec::Session { gap } => WindowKind::Session { gap_ms: ms(gap) },
        WindowSpec::Inherited => WindowKind::Inherited,
    }
}

/// Parses spec expressions against the stream's columns; errors say which step.
fn parse_all(
    sqls: &[String],
    schema: &SchemaRef,
    step: &str,
) -> Result<Vec<datafusion::logical_expr::Expr>> {
    sqls.iter()
        .map(|sql| {
            oxflow_operators::expr::parse_sql(sql, schema)
                .map_err(|e| OxflowError::InvalidPipeline(format!("{step}: {e}")))
        })
        .collect()
}

/// Builds a stream from its spec.
pub(crate) fn build_stream(
    pipeline: &crate::Pipeline,
    spec: &StreamSpec,
    registry: &Registry,
) -> Result<crate::Stream> {
    let mut stream = pipeline.clone().source_spec(spec.source.clone())?;
    if let Some(w) = &spec.watermarks {
        let mut strategy = oxflow_runtime::watermark::WatermarkStrategy::bounded(
            &w.column,
            std::time::Duration::from_millis(w.delay_ms),
        );
        if let Some(ms) = w.idle_timeout_ms {
            strategy = strategy.with_idle_timeout(std::time::Duration::from_millis(ms));
        }
        if let Some(ms) = w.max_ahead_ms {
            strategy = strategy.with_max_ahead_of_wall_clock(
                std::time::Duration::from_millis(ms),
                Default::default(),
            );
        }
        if let Some(policy) = w.out_of_range {
            strategy.out_of_range = policy.into();
        }
        stream = stream.with_watermarks(strategy)?;
    }
    for (i, step) in spec.steps.iter().enumerate() {
        let at = |what: &str| format!("step {} ({what})", i + 1);
        stream = match step {
            Step::Filter(sql) => {
                let predicate =
                    parse_all(std::slice::from_ref(sql), &stream.schema(), &at("filter"))?;
                stream.filter(predicate.into_iter().next().expect("one expression"))?
            }
            Step::Select(sqls) => {
                let exprs = parse_all(sqls, &stream.schema(), &at("select"))?;
                stream.select(exprs)?
            }
            Step::Map(name) => stream.map(registry.map(name)?),
            Step::Rebalance(parallelism) => stream.rebalance(*parallelism),
            Step::WithEventTime(column) => stream.with_event_time(column)?,
            Step::Window {
                keys,
                window,
                allowed_lateness_ms,
                compute,
            } => {
                let schema = stream.schema();
                let windowed = if keys.is_empty() {
                    stream.window_all(window_spec(window))
                } else {
                    stream.key_by(keys.clone()).window(window_spec(window))
                }
                .allowed_lateness(std::time::Duration::from_millis(*allowed_lateness_ms));
                match compute {
                    WindowCompute::Aggregate(sqls) => {
                        windowed.aggregate(parse_all(sqls, &schema, &at("window aggregate"))?)?
                    }
                    WindowCompute::TopN { order_by, n } => windowed.top_n(order_by, *n)?,
                }
            }
            Step::Aggregate { keys, aggregates } => {
                let exprs = parse_all(aggregates, &stream.schema(), &at("aggregate"))?;
                stream.key_by(keys.clone()).aggregate(exprs)?
            }
            Step::Join {
                keys,
                right,
                right_keys,
                on,
                left_outer,
            } => {
                let right = build_stream(pipeline, right, registry)?;
                let mut joined = stream
                    .key_by(keys.clone())
                    .join(right.key_by(right_keys.clone()));
                if *left_outer {
                    joined = joined.left_outer();
                }
                match on {
                    JoinOn::Window(kind) => joined.window(window_spec(kind))?,
                    JoinOn::Interval { lower_ms, upper_ms } => {
                        joined.interval(*lower_ms, *upper_ms)?
                    }
                    JoinOn::Regular { ttl_ms } => {
                        joined.regular(ttl_ms.map(std::time::Duration::from_millis))?
                    }
                }
            }
            Step::Union(other) => stream.union(build_stream(pipeline, other, registry)?)?,
        };
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_types_are_checked_and_named() {
        let err = schema_of(&[ColumnSpec {
            name: "x".into(),
            data_type: "decimal".into(),
        }])
        .unwrap_err()
        .to_string();
        assert!(err.contains("column `x`: unknown type `decimal`"), "{err}");
        assert_eq!(quote("num"), "num");
        assert_eq!(quote("Num"), "\"Num\"");
    }
}
