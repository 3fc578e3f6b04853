//! The pipeline builder: `source -> filter/select/map -> key_by -> window -> aggregate -> sink`.
//!
//! Each call adds an operator to the current stage (chained, same thread) or, at `key_by`
//! and `rebalance`, starts a new stage behind an exchange. Everything that can be checked is
//! checked when the call is made, so a bad column or expression fails at build time with its
//! name, not when the first batch arrives.

use crate::error::{OxflowError, Result};
use crate::spec::{
    self, CheckpointSpec, JobSpec, JoinOn, RegisteredMap, Registry, SinkSpec, SourceSpec, Step,
    StreamSpec, WatermarkSpec, WindowCompute,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::Expr;
use oxflow_operators::join::{JoinSettings, JoinSpec, JoinType, StreamJoin};
use oxflow_operators::map::{Filter, MapBatches, MapRows, Project, TypedRow};
use oxflow_operators::running::RunningAggregate;
use oxflow_operators::topn::WindowTopN;
use oxflow_operators::window::{WindowAggregate, WindowSettings};
use oxflow_operators::{LateRecords, WindowSpec};
use oxflow_runtime::checkpoint::{self, CheckpointConfig, RestoreFrom};
use oxflow_runtime::clock::{Clock, SystemClock};
use oxflow_runtime::coordinator::SavepointRequests;
use oxflow_runtime::exchange::{Partitioning, DEFAULT_MAX_PARALLELISM};
use oxflow_runtime::executor::{execute, CancelHandle, ExecuteOptions, JobReport};
use oxflow_runtime::graph::{JobGraph, PlanDescription, Stage, StageEdge, StageInput};
use oxflow_runtime::message::span_millis;
use oxflow_runtime::metrics::{CheckpointHistory, JobMetrics};
use oxflow_runtime::operator::{OperatorFactory, OperatorFactoryRef};
use oxflow_runtime::sink::Sink;
use oxflow_runtime::source::Source;
use oxflow_runtime::state::StateStorage;
use oxflow_runtime::watermark::WatermarkStrategy;
use std::sync::Arc;
use std::time::Duration;

/// Job-wide settings, and the start of every pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    parallelism: usize,
    max_parallelism: usize,
    channel_capacity: usize,
    max_line_bytes: usize,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline {
            parallelism: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            max_parallelism: DEFAULT_MAX_PARALLELISM,
            channel_capacity: 16,
            max_line_bytes: oxflow_connectors::file::DEFAULT_MAX_LINE_BYTES,
        }
    }
}

impl Pipeline {
    /// A pipeline with one subtask per core and 128 key groups.
    pub fn new() -> Self {
        Self::default()
    }
    /// Subtasks per stage, unless a step says otherwise.
    pub fn parallelism(&self) -> usize {
        self.parallelism
    }

    /// Subtasks per stage (unless a stage sets its own).
    pub fn with_parallelism(mut self, parallelism: usize) -> Self {
        self.parallelism = parallelism;
        self
    }
    /// Number of key groups: the most subtasks a keyed stage can ever have.
    pub fn with_max_parallelism(mut self, max_parallelism: usize) -> Self {
        self.max_parallelism = max_parallelism;
        self
    }
    /// Batches buffered between two subtasks before the sender waits (backpressure).
    pub fn with_channel_capacity(mut self, batches: usize) -> Self {
        self.channel_capacity = batches;
        self
    }

    /// The longest line a file source built from a spec reads (a longer one is a bad record).
    pub fn with_max_line_bytes(mut self, bytes: usize) -> Self {
        self.max_line_bytes = bytes;
        self
    }

    /// Starts the stream at `source`.
    pub fn source(self, source: impl Source + 'static) -> Stream {
        let name = source.name();
        self.start(
            Arc::new(source),
            Err(format!(
                "its source `{name}` was built in Rust; start it with Pipeline::source_spec"
            )),
        )
    }

    /// Starts the stream at the source `spec` describes (a job built this way has a spec:
    /// [`Job::to_spec`]).
    pub fn source_spec(self, spec: SourceSpec) -> Result<Stream> {
        let source = spec::build_source(&spec, self.max_line_bytes)?;
        Ok(self.start(
            source,
            Ok(StreamSpec {
                source: spec,
                watermarks: None,
                steps: Vec::new(),
            }),
        ))
    }

    fn start(
        self,
        source: Arc<dyn Source>,
        spec: std::result::Result<StreamSpec, String>,
    ) -> Stream {
        let schema = source.schema();
        let name = source.name();
        Stream {
            stages: vec![Stage {
                name: format!("source-{name}"),
                parallelism: self.parallelism,
                input: StageInput::Source {
                    source,
                    watermarks: None,
                },
                operators: Vec::new(),
                sink: None,
            }],
            pipeline: self,
            schema,
            time_column: None,
            spec,
        }
    }

    /// Builds the job `spec` describes, naming functions from `registry`. With a
    /// `checkpoint_dir`, the job takes the checkpoints the spec asks for there.
    pub fn from_spec(
        spec: &JobSpec,
        registry: &Registry,
        checkpoint_dir: Option<&std::path::Path>,
    ) -> Result<Job> {
        Pipeline::new().job_from_spec(spec, registry, checkpoint_dir)
    }

    /// [`Pipeline::from_spec`] on this pipeline's settings (the spec's own take precedence).
    pub fn job_from_spec(
        self,
        spec: &JobSpec,
        registry: &Registry,
        checkpoint_dir: Option<&std::path::Path>,
    ) -> Result<Job> {
        let mut pipeline = self;
        if let Some(p) = spec.parallelism {
            pipeline = pipeline.with_parallelism(p);
        }
        if let Some(p) = spec.max_parallelism {
            pipeline = pipeline.with_max_parallelism(p);
        }
        let stream = spec::build_stream(&pipeline, &spec.stream, registry)?;
        let checkpoints = match (&spec.checkpoints, checkpoint_dir) {
            (Some(c), Some(dir)) => {
                if c.interval_ms == 0 {
                    return Err(OxflowError::InvalidPipeline(
                        "checkpoints.interval_ms must be at least 1".into(),
                    ));
                }
                let mut config = CheckpointConfig::new(dir, Duration::from_millis(c.interval_ms));
                if let Some(k) = c.retained {
                    config.retained = k.max(1);
                }
                if let Some(ms) = c.min_pause_ms {
                    config.min_pause = Duration::from_millis(ms);
                }
                Some(config)
            }
            _ => None,
        };
        let job = stream.sink_spec(
            spec.sink.clone(),
            checkpoints.as_ref().map(|c| c.dir.as_path()),
        )?;
        let job = match &spec.state {
            Some(state) if state.memory_budget_mb == 0 => {
                return Err(OxflowError::InvalidPipeline(
                    "state.memory_budget_mb must be at least 1".into(),
                ))
            }
            Some(state) => job.with_state_storage(state.storage()),
            None => job,
        };
        Ok(match checkpoints {
            Some(c) => job.with_checkpoints(c),
            None => job,
        })
    }
}

/// A stream under construction: the stages so far and the schema they emit.
pub struct Stream {
    pipeline: Pipeline,
    stages: Vec<Stage>,
    schema: SchemaRef,
    time_column: Option<String>,
    /// What the stream is as a spec, or why it has no spec form.
    spec: std::result::Result<StreamSpec, String>,
}

fn invalid<T>(message: impl Into<String>) -> Result<T> {
    Err(OxflowError::InvalidPipeline(message.into()))
}

impl Stream {
    /// Adds `step` to the stream's spec (if it still has one): `Err` says why the stream has
    /// no spec form from here on.
    fn record(mut self, step: std::result::Result<Step, String>) -> Self {
        if let Ok(spec) = &mut self.spec {
            match step {
                Ok(step) => spec.steps.push(step),
                Err(why) => self.spec = Err(why),
            }
        }
        self
    }

    /// The schema of the stream at this point.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The event-time column at this point, if the stream has one (set by watermarks or
    /// `with_event_time`, kept by steps that pass it through unchanged).
    pub fn time_column(&self) -> Option<&str> {
        self.time_column.as_deref()
    }

    /// Derives event time and watermarks from the source's records; call right after
    /// `source`.
    pub fn with_watermarks(mut self, strategy: WatermarkStrategy) -> Result<Self> {
        if self.stages.len() != 1 || !self.stages[0].operators.is_empty() {
            return invalid("with_watermarks must come right after source");
        }
        span_millis("the watermark delay", strategy.max_out_of_orderness)?;
        if self.schema.index_of(&strategy.time_column).is_err() {
            return invalid(format!(
                "event-time column `{}` not found in the source's columns {:?}",
                strategy.time_column,
                self.schema
                    .fields()
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
            ));
        }
        self.time_column = Some(strategy.time_column.clone());
        if let Ok(spec) = &mut self.spec {
            spec.watermarks = Some(WatermarkSpec {
                column: strategy.time_column.clone(),
                delay_ms: strategy.max_out_of_orderness.as_millis() as u64,
                idle_timeout_ms: strategy.idle_timeout.map(|d| d.as_millis() as u64),
                max_ahead_ms: strategy
                    .max_ahead_of_wall_clock
                    .map(|d| d.as_millis() as u64),
                out_of_range: match strategy.out_of_range {
                    oxflow_runtime::watermark::OutOfRange::Fail => None,
                    oxflow_runtime::watermark::OutOfRange::Skip => {
                        Some(crate::spec::OutOfRangeSpec::Skip)
                    }
                },
            });
        }
        if let StageInput::Source { watermarks, .. } = &mut self.stages[0].input {
            *watermarks = Some(strategy);
        }
        Ok(self)
    }

    /// Declares `column` (a `Timestamp(Millisecond)` or `Int64` column) the event time of the
    /// records from here on, for the time-based operators that follow. Its values must not
    /// be behind the watermark where the records are emitted: `window_end` after a window
    /// qualifies (a window's rows go out as the watermark reaches its end).
    pub fn with_event_time(mut self, column: &str) -> Result<Self> {
        use datafusion::arrow::datatypes::{DataType, TimeUnit};
        match self.schema.field_with_name(column).map(|f| f.data_type()) {
            Ok(DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Int64) => {
                self.time_column = Some(column.to_string());
                Ok(self.record(Ok(Step::WithEventTime(column.to_string()))))
            }
            Ok(other) => invalid(format!(
                "with_event_time: column `{column}` has type {other}, not Timestamp(Millisecond) or Int64"
            )),
            Err(_) => invalid(format!(
                "with_event_time: column `{column}` not found; available columns: {:?}",
                self.schema
                    .fields()
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
            )),
        }
    }

    /// Sets the parallelism of the current stage (the source's, or the one after the last
    /// exchange).
    pub fn with_parallelism(mut self, parallelism: usize) -> Self {
        self.stages
            .last_mut()
            .expect("a stream has a stage")
            .parallelism = parallelism;
        self.record(Err(
            "a stage's own parallelism has no spec form (a spec sets one for the job)".into(),
        ))
    }

    fn push(mut self, op: OperatorFactoryRef) -> Self {
        self.schema = op.output_schema();
        self.stages
            .last_mut()
            .expect("a stream has a stage")
            .operators
            .push(op);
        self
    }

    fn exchange(mut self, name: &str, partitioning: Partitioning, parallelism: usize) -> Self {
        self.stages.push(Stage {
            name: name.to_string(),
            parallelism,
            input: StageInput::Exchange(partitioning),
            operators: Vec::new(),
            sink: None,
        });
        self
    }

    /// Narrows the source itself to `columns` (which exist), if nothing follows it yet and it
    /// can produce exactly those columns in that order; says whether it did.
    fn project_source(&mut self, columns: &[String]) -> bool {
        let Ok(indices) = columns
            .iter()
            .map(|c| self.schema.index_of(c))
            .collect::<std::result::Result<Vec<_>, _>>()
        else {
            return false;
        };
        let [stage] = self.stages.as_mut_slice() else {
            return false;
        };
        let StageInput::Source { source, watermarks } = &mut stage.input else {
            return false;
        };
        // The source's watermarks read its event-time column, so the source must keep it.
        let drops_time = watermarks
            .as_ref()
            .is_some_and(|w| !columns.contains(&w.time_column));
        if !stage.operators.is_empty() || drops_time {
            return false;
        }
        // A source keeps its own column order; use it only if that is the one asked.
        let projected = source.with_projection(&indices).filter(|p| {
            p.schema()
                .fields()
                .iter()
                .map(|f| f.name())
                .eq(columns.iter())
        });
        match projected {
            Some(projected) => {
                self.schema = projected.schema();
                *source = projected;
                true
            }
            None => false,
        }
    }

    /// The event-time column the source's watermarks read, while the stream is the source alone.
    fn source_time_column(&self) -> Option<String> {
        match self.stages.as_slice() {
            [Stage {
                input:
                    StageInput::Source {
                        watermarks: Some(w),
                        ..
                    },
                operators,
                ..
            }] if operators.is_empty() => Some(w.time_column.clone()),
            _ => None,
        }
    }

    /// Keeps only `columns` (which exist): straight in the source when nothing precedes it
    /// and the source can skip producing the others, else with a projection.
    fn project_columns(mut self, columns: &[String]) -> Result<Self> {
        if self.project_source(columns) {
            return Ok(self);
        }
        let exprs: Vec<Expr> = columns
            .iter()
            .map(|c| datafusion::prelude::col(datafusion::common::Column::new_unqualified(c)))
            .collect();
        let project = Project::try_new(&exprs, self.schema.clone())?;
        Ok(self.push(Arc::new(project)))
    }

    /// Keeps records for which `predicate` is true.
    pub fn filter(self, predicate: Expr) -> Result<Self> {
        let op = Filter::try_new(&predicate, self.schema.clone())?;
        let step = spec::expr_sql(&predicate).map(Step::Filter);
        Ok(self.push(Arc::new(op)).record(step))
    }

    /// Replaces the columns by `exprs` (map and project): `[col("a"), (col("b") * lit(2)).alias("b2")]`.
    pub fn select(self, exprs: impl IntoIterator<Item = Expr>) -> Result<Self> {
        let exprs: Vec<Expr> = exprs.into_iter().collect();
        let step = exprs
            .iter()
            .map(spec::expr_sql)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Step::Select);
        Ok(self.select_exprs(exprs)?.record(step))
    }

    fn select_exprs(mut self, exprs: Vec<Expr>) -> Result<Self> {
        let op = Project::try_new(&exprs, self.schema.clone())?;
        let time_kept = self
            .time_column
            .as_ref()
            .is_some_and(|t| op.output_schema().index_of(t).is_ok());
        // The source may skip what the select does not need: exactly the listed columns for a
        // plain column list, else the columns the expressions read (then planned anew).
        let plain: Option<Vec<String>> = exprs
            .iter()
            .map(|e| match e {
                Expr::Column(c) => Some(c.name.clone()),
                _ => None,
            })
            .collect();
        let mut wanted = plain.unwrap_or_else(|| {
            let read: Vec<String> = exprs
                .iter()
                .flat_map(|e| e.column_refs())
                .map(|c| c.name.clone())
                .collect();
            in_schema_order(&self.schema, &read)
        });
        // Watermarks need the event-time column from the source even if the select drops it.
        if let Some(t) = self.source_time_column() {
            if !wanted.contains(&t) {
                wanted.push(t);
                wanted = in_schema_order(&self.schema, &wanted);
            }
        }
        let op = if wanted.len() < self.schema.fields().len() && self.project_source(&wanted) {
            Project::try_new(&exprs, self.schema.clone())?
        } else {
            op
        };
        // A select the source now does by itself needs no operator.
        let mut s = if op.output_schema() == self.schema {
            self
        } else {
            self.push(Arc::new(op))
        };
        if !time_kept {
            s.time_column = None;
        }
        Ok(s)
    }

    /// Applies `f` to every batch; it must return batches of `output` schema.
    pub fn map_batches(
        self,
        name: &str,
        output: SchemaRef,
        f: impl Fn(RecordBatch) -> oxflow_operators::Result<RecordBatch> + Send + Sync + 'static,
    ) -> Self {
        let why = format!(
            "map_batches `{name}` is a Rust closure: register it in a Registry and use Stream::map"
        );
        self.push(Arc::new(MapBatches::new(name, output, Arc::new(f))))
            .record(Err(why))
    }

    /// Applies a function registered in a [`Registry`] to every batch (a job using it keeps
    /// its spec form: the spec names the function).
    pub fn map(self, f: RegisteredMap) -> Self {
        let step = Ok(Step::Map(f.name.clone()));
        self.push(Arc::new(MapBatches::new(&f.name, f.output, f.function)))
            .record(step)
    }

    /// Applies `f` to every row as a typed struct; each input row gives zero or more outputs.
    pub fn flat_map_rows<I: TypedRow, O: TypedRow>(
        self,
        name: &str,
        f: impl Fn(I) -> Vec<O> + Send + Sync + 'static,
    ) -> Result<Self> {
        let input = I::schema();
        for field in input.fields() {
            if self.schema.index_of(field.name()).is_err() {
                return invalid(format!(
                    "flat_map_rows `{name}`: the row type reads column `{}`, which the stream does not have",
                    field.name()
                ));
            }
        }
        let why = format!("flat_map_rows `{name}` is a Rust closure and has no spec form");
        Ok(self
            .push(Arc::new(MapRows::<I, O>::new(name, Arc::new(f))))
            .record(Err(why)))
    }

    /// Merges `other` into this stream (Flink's `union`): both must have the same schema. The
    /// records meet in a new stage, round-robin; the merged watermark is the lesser of the
    /// two, so event time stays correct for windows that follow.
    pub fn union(self, other: Stream) -> Result<Stream> {
        if self.schema != other.schema {
            return invalid(format!(
                "union: the streams' columns differ: {:?} and {:?}",
                self.schema
                    .fields()
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>(),
                other
                    .schema
                    .fields()
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
            ));
        }
        let time_column = (self.time_column == other.time_column)
            .then_some(self.time_column.clone())
            .flatten();
        let step = other.spec.clone().map(|o| Step::Union(Box::new(o)));
        let left_spec = self.spec.clone();
        let parallelism = self.pipeline.parallelism;
        let schema = self.schema.clone();
        let (pipeline, stages, left_end, right_end) = merge_stages(self, other);
        let mut stages = stages;
        stages.push(Stage {
            name: "union".into(),
            parallelism,
            input: StageInput::Inputs(vec![
                StageEdge {
                    from: left_end,
                    partitioning: Partitioning::Rebalance,
                },
                StageEdge {
                    from: right_end,
                    partitioning: Partitioning::Rebalance,
                },
            ]),
            operators: Vec::new(),
            sink: None,
        });
        let merged = Stream {
            pipeline,
            stages,
            schema,
            time_column,
            spec: left_spec,
        };
        Ok(merged.record(step))
    }

    /// Spreads batches round-robin over a new stage of `parallelism` subtasks.
    pub fn rebalance(self, parallelism: usize) -> Self {
        self.exchange("rebalance", Partitioning::Rebalance, parallelism)
            .record(Ok(Step::Rebalance(parallelism)))
    }

    /// Partitions the stream by key columns: records with equal keys meet in one subtask.
    pub fn key_by<S: Into<String>>(self, keys: impl IntoIterator<Item = S>) -> KeyedStream {
        KeyedStream {
            stream: self,
            keys: keys.into_iter().map(Into::into).collect(),
        }
    }

    /// Windows over the whole stream (no key): computed by one subtask, after a local
    /// pre-aggregation where the operator allows it.
    pub fn window_all(self, window: WindowSpec) -> WindowedStream {
        WindowedStream::new(self, Vec::new(), window)
    }

    /// Ends the stream in `sink`, giving a job ready to run.
    pub fn sink(self, sink: impl Sink + 'static) -> Result<Job> {
        // The first part without a spec form is the one to name.
        let why = match &self.spec {
            Err(why) => why.clone(),
            Ok(_) => "its sink was built in Rust; end it with Stream::sink_spec".to_string(),
        };
        self.end(Arc::new(sink), Err(why))
    }

    /// Ends the stream in the sink `spec` describes. `checkpoint_dir`: where the job will keep
    /// checkpoints, if it will (a Kafka sink is then exactly once).
    pub fn sink_spec(
        self,
        spec: SinkSpec,
        checkpoint_dir: Option<&std::path::Path>,
    ) -> Result<Job> {
        let sink = spec::build_sink(&spec, checkpoint_dir)?;
        let job_spec = self.spec.clone().map(|stream| JobSpec {
            parallelism: Some(self.pipeline.parallelism),
            max_parallelism: Some(self.pipeline.max_parallelism),
            stream,
            sink: spec,
            checkpoints: None,
            restart: None,
            state: None,
        });
        self.end(sink, job_spec)
    }

    fn end(
        mut self,
        sink: Arc<dyn Sink>,
        spec: std::result::Result<JobSpec, String>,
    ) -> Result<Job> {
        self.stages.last_mut().expect("a stream has a stage").sink = Some(sink);
        let graph = JobGraph {
            stages: self.stages,
            max_parallelism: self.pipeline.max_parallelism,
            channel_capacity: self.pipeline.channel_capacity,
        };
        graph.validate()?;
        Ok(Job {
            graph,
            spec,
            metrics: JobMetrics::default(),
            cancel: CancelHandle::default(),
            clock: Arc::new(SystemClock::new()),
            checkpoints: None,
            restore: None,
            savepoints: SavepointRequests::default(),
            history: CheckpointHistory::default(),
            state: StateStorage::Memory,
            remote: None,
        })
    }
}

/// The SQL text of each expression, or why one has none.
fn sql_list(exprs: &[Expr]) -> std::result::Result<Vec<String>, String> {
    exprs.iter().map(spec::expr_sql).collect()
}

/// The stages of two streams in one list, left then right, with the index of each one's last
/// stage (the two inputs of the stage that will join or merge them).
fn merge_stages(left: Stream, right: Stream) -> (Pipeline, Vec<Stage>, usize, usize) {
    let Stream {
        pipeline,
        mut stages,
        ..
    } = left;
    let left_end = stages.len() - 1;
    // The right stages follow the left ones; their `Exchange`s still name the stage just
    // before them, which is still the right stream's own.
    stages.extend(right.stages.into_iter().map(|mut stage| {
        if let StageInput::Inputs(edges) = &mut stage.input {
            for e in edges {
                e.from += left_end + 1;
            }
        }
        stage
    }));
    let right_end = stages.len() - 1;
    (pipeline, stages, left_end, right_end)
}

/// The columns of `schema` named in `names`, in the schema's order.
fn in_schema_order(schema: &SchemaRef, names: &[String]) -> Vec<String> {
    schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|f| names.contains(f))
        .collect()
}

/// A stream partitioned by key.
pub struct KeyedStream {
    stream: Stream,
    keys: Vec<String>,
}

impl KeyedStream {
    /// Groups the keyed records into event-time windows.
    pub fn window(self, window: WindowSpec) -> WindowedStream {
        WindowedStream::new(self.stream, self.keys, window)
    }

    /// Aggregates per key without windows, like a streaming `GROUP BY`: for every record, in
    /// event-time order once the watermark has passed it, emits its key with the aggregates
    /// over all of the key's records so far (a changelog; a key's last row is its current
    /// value). Output: `keys.., aggregates..`.
    pub fn aggregate(self, aggregates: impl IntoIterator<Item = Expr>) -> Result<Stream> {
        let aggregates: Vec<Expr> = aggregates.into_iter().collect();
        let KeyedStream { stream, keys } = self;
        let step = sql_list(&aggregates).map(|aggregates| Step::Aggregate {
            keys: keys.clone(),
            aggregates,
        });
        let op = RunningAggregate::try_new(
            keys.clone(),
            stream.time_column.clone(),
            &aggregates,
            stream.schema.clone(),
        )?;
        let parallelism = stream.pipeline.parallelism;
        let mut s = stream
            .exchange("keyed", Partitioning::Hash(keys), parallelism)
            .push(Arc::new(op));
        s.time_column = None;
        Ok(s.record(step))
    }

    /// Joins this stream (the left side) with `right`, matching equal keys (the two key
    /// lists pair up in order and must have the same types). Say which rows join with
    /// [`JoinedStreams::window`], [`JoinedStreams::interval`] or [`JoinedStreams::regular`].
    pub fn join(self, right: KeyedStream) -> JoinedStreams {
        JoinedStreams {
            left: self,
            right,
            join_type: JoinType::Inner,
        }
    }
}

/// Two keyed streams about to be joined: an inner join unless [`JoinedStreams::left_outer`].
///
/// The join runs in a stage of its own, fed by both streams through hash exchanges on their
/// keys. Its output is the left columns, then the right ones (a right column whose name is
/// taken gets the prefix `right_`); its event time is the left side's. A pair is emitted when
/// its second row arrives, so rows after an interval or TTL join can be behind the watermark
/// by up to the bound: give windows after such a join that much allowed lateness.
pub struct JoinedStreams {
    left: KeyedStream,
    right: KeyedStream,
    join_type: JoinType,
}

impl JoinedStreams {
    /// Also emits left rows that match nothing, with nulls for the right columns, once no
    /// right row can match them any more (for an unbounded join: at the end of input).
    pub fn left_outer(mut self) -> Self {
        self.join_type = JoinType::LeftOuter;
        self
    }

    /// Joins rows in the same tumbling or hopping window of both sides (on each side's event
    /// time), when the window fires. Output starts with `window_start, window_end`.
    pub fn window(self, window: WindowSpec) -> Result<Stream> {
        self.build(JoinSpec::Window(window))
    }

    /// Joins left row `a` with right row `b` when `a.time + lower <= b.time <= a.time +
    /// upper` (milliseconds of event time; `lower` may be negative).
    pub fn interval(self, lower_ms: i64, upper_ms: i64) -> Result<Stream> {
        for bound in [lower_ms, upper_ms] {
            span_millis(
                "an interval join bound",
                Duration::from_millis(bound.unsigned_abs()),
            )?;
        }
        self.build(JoinSpec::Interval {
            lower: lower_ms,
            upper: upper_ms,
        })
    }

    /// Joins every pair of rows with equal keys. With a `ttl`, a row stays in state for that
    /// long of event time after its own timestamp (so rows join when their times are at most
    /// `ttl` apart); without one, every row is kept for the life of the job.
    pub fn regular(self, ttl: Option<Duration>) -> Result<Stream> {
        if let Some(ttl) = ttl {
            span_millis("a join's state TTL", ttl)?;
        }
        self.build(JoinSpec::Regular { ttl })
    }

    fn build(self, spec: JoinSpec) -> Result<Stream> {
        let JoinedStreams {
            left,
            right,
            join_type,
        } = self;
        let on = match &spec {
            JoinSpec::Window(w) => JoinOn::Window(spec::window_kind(w)),
            JoinSpec::Interval { lower, upper } => JoinOn::Interval {
                lower_ms: *lower,
                upper_ms: *upper,
            },
            JoinSpec::Regular { ttl } => JoinOn::Regular {
                ttl_ms: ttl.map(|t| t.as_millis() as u64),
            },
        };
        let step = right.stream.spec.clone().map(|right_spec| Step::Join {
            keys: left.keys.clone(),
            right: Box::new(right_spec),
            right_keys: right.keys.clone(),
            on,
            left_outer: join_type == JoinType::LeftOuter,
        });
        let left_spec = left.stream.spec.clone();
        let settings = JoinSettings {
            join_type,
            spec,
            left_keys: left.keys.clone(),
            right_keys: right.keys.clone(),
            left_time: left.stream.time_column.clone(),
            right_time: right.stream.time_column.clone(),
        };
        let join = StreamJoin::try_new(
            settings,
            left.stream.schema.clone(),
            right.stream.schema.clone(),
        )?;
        let time_column = left.stream.time_column.clone();
        let (pipeline, mut stages, left_end, right_end) = merge_stages(left.stream, right.stream);
        stages.push(Stage {
            name: join.name(),
            parallelism: pipeline.parallelism,
            input: StageInput::Inputs(vec![
                StageEdge {
                    from: left_end,
                    partitioning: Partitioning::Hash(left.keys),
                },
                StageEdge {
                    from: right_end,
                    partitioning: Partitioning::Hash(right.keys),
                },
            ]),
            operators: Vec::new(),
            sink: None,
        });
        let stream = Stream {
            pipeline,
            stages,
            schema: join.output_schema(),
            time_column: None,
            spec: left_spec,
        };
        let mut joined = stream.push(Arc::new(join));
        joined.time_column = time_column.filter(|t| joined.schema.index_of(t).is_ok());
        Ok(joined.record(step))
    }
}

/// A keyed (or global) stream in windows, waiting for what to compute per window.
pub struct WindowedStream {
    stream: Stream,
    settings: WindowSettings,
}

impl WindowedStream {
    fn new(stream: Stream, keys: Vec<String>, window: WindowSpec) -> Self {
        let time_column = stream.time_column.clone();
        WindowedStream {
            stream,
            settings: WindowSettings {
                keys,
                window,
                time_column,
                allowed_lateness: Duration::ZERO,
                late: LateRecords::Drop,
            },
        }
    }

    /// Accepts records up to `lateness` after a window's end (the window fires then).
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.settings.allowed_lateness = lateness;
        self
    }

    /// Where records later than the allowed lateness go (they are always counted).
    pub fn late_records(mut self, late: LateRecords) -> Self {
        self.settings.late = late;
        self
    }

    /// The input columns a window aggregate reads, in input order; `None` if every column
    /// is wanted (a late side output) or one is missing (the operator then names it).
    fn columns_read(&self, aggregates: &[Expr]) -> Option<Vec<String>> {
        if let LateRecords::SideOutput(_) = self.settings.late {
            return None; // late records go out whole, with every input column
        }
        let schema = &self.stream.schema;
        let mut read: Vec<String> = self.settings.keys.clone();
        match &self.settings.window {
            WindowSpec::Inherited => {
                read.extend(["window_start".to_string(), "window_end".to_string()])
            }
            _ => read.extend(self.settings.time_column.clone()),
        }
        for a in aggregates {
            read.extend(a.column_refs().into_iter().map(|c| c.name.clone()));
        }
        if read.iter().any(|c| schema.index_of(c).is_err()) {
            return None;
        }
        Some(in_schema_order(schema, &read))
    }

    /// Checks the keys and prunes the columns the window does not read (`needed`), before
    /// the exchange.
    fn prepare(self, needed: Option<Vec<String>>) -> Result<(Stream, WindowSettings)> {
        let WindowedStream { stream, settings } = self;
        for k in &settings.keys {
            if stream.schema.index_of(k).is_err() {
                return invalid(format!(
                    "key_by: column `{k}` not found; available columns: {:?}",
                    stream
                        .schema
                        .fields()
                        .iter()
                        .map(|f| f.name())
                        .collect::<Vec<_>>()
                ));
            }
        }
        let stream = match needed {
            // Only what the window reads crosses the exchange (projection pushdown): the
            // columns are dropped before the hash split copies them.
            Some(columns) if columns.len() < stream.schema.fields().len() => {
                stream.project_columns(&columns)?
            }
            _ => stream,
        };
        Ok((stream, settings))
    }

    /// The exchange into the window's stage: by key, or everything to one subtask.
    fn exchange(stream: Stream, settings: &WindowSettings) -> Stream {
        let parallelism = stream.pipeline.parallelism;
        if settings.keys.is_empty() {
            stream.exchange("window-all", Partitioning::Rebalance, 1)
        } else {
            stream.exchange(
                "keyed",
                Partitioning::Hash(settings.keys.clone()),
                parallelism,
            )
        }
    }

    fn keyed_stage(self, needed: Option<Vec<String>>) -> Result<(Stream, WindowSettings)> {
        span_millis("the allowed lateness", self.settings.allowed_lateness)?;
        let (stream, settings) = self.prepare(needed)?;
        Ok((Self::exchange(stream, &settings), settings))
    }

    /// Computes aggregates (`count(col("x")).alias("n")`, any DataFusion aggregate) per key and
    /// window. Output: `window_start, window_end, keys.., aggregates..`.
    pub fn aggregate(self, aggregates: impl IntoIterator<Item = Expr>) -> Result<Stream> {
        let aggregates: Vec<Expr> = aggregates.into_iter().collect();
        let step =
            sql_list(&aggregates).and_then(|a| self.window_step(WindowCompute::Aggregate(a)));
        Ok(self.window_aggregate(aggregates)?.record(step))
    }

    /// The spec step of this window computing `compute`.
    fn window_step(&self, compute: WindowCompute) -> std::result::Result<Step, String> {
        if let LateRecords::SideOutput(_) = self.settings.late {
            return Err("its late records go to a side-output sink built in Rust".into());
        }
        Ok(Step::Window {
            keys: self.settings.keys.clone(),
            window: spec::window_kind(&self.settings.window),
            allowed_lateness_ms: self.settings.allowed_lateness.as_millis() as u64,
            compute,
        })
    }

    fn window_aggregate(self, aggregates: Vec<Expr>) -> Result<Stream> {
        let needed = self.columns_read(&aggregates);
        let (stream, settings) = self.prepare(needed)?;
        let op = WindowAggregate::try_new(settings.clone(), &aggregates, stream.schema.clone())?;
        let mut s = match op.two_phase()? {
            // Pre-aggregate before the exchange; merge the partials after it.
            Some((local, global)) => {
                Self::exchange(stream.push(Arc::new(local)), &settings).push(Arc::new(global))
            }
            None => Self::exchange(stream, &settings).push(Arc::new(op)),
        };
        s.time_column = None;
        Ok(s)
    }

    /// Keeps, per key and window, the rows with the `n` largest `order_by` values, ties
    /// included. Output: `window_start, window_end` and the input columns.
    pub fn top_n(self, order_by: &str, n: usize) -> Result<Stream> {
        let step = self.window_step(WindowCompute::TopN {
            order_by: order_by.to_string(),
            n,
        });
        Ok(self.window_top_n(order_by, n)?.record(step))
    }

    fn window_top_n(self, order_by: &str, n: usize) -> Result<Stream> {
        if self.settings.keys.is_empty() && self.settings.window != WindowSpec::Inherited {
            // Two phases: each upstream subtask keeps its local top rows per window, one
            // subtask merges them when the same watermark reaches it.
            let WindowedStream { stream, settings } = self;
            let local = WindowTopN::try_new(settings.clone(), order_by, n, stream.schema.clone())?;
            let stream =
                stream
                    .push(Arc::new(local))
                    .exchange("window-all", Partitioning::Rebalance, 1);
            let global_settings = WindowSettings {
                window: WindowSpec::Inherited,
                late: LateRecords::Drop,
                ..settings
            };
            let global = WindowTopN::try_new(global_settings, order_by, n, stream.schema.clone())?;
            let mut s = stream.push(Arc::new(global));
            s.time_column = None;
            return Ok(s);
        }
        let (stream, settings) = self.keyed_stage(None)?;
        let op = WindowTopN::try_new(settings, order_by, n, stream.schema.clone())?;
        let mut s = stream.push(Arc::new(op));
        s.time_column = None;
        Ok(s)
    }
}

/// A complete pipeline, ready to run.
pub struct Job {
    graph: JobGraph,
    spec: std::result::Result<JobSpec, String>,
    metrics: JobMetrics,
    cancel: CancelHandle,
    clock: Arc<dyn Clock>,
    checkpoints: Option<CheckpointConfig>,
    restore: Option<RestoreFrom>,
    savepoints: SavepointRequests,
    history: CheckpointHistory,
    state: StateStorage,
    remote: Option<Box<dyn oxflow_runtime::launcher::RemoteTasks>>,
}

impl Job {
    /// Where the job keeps operator state while it runs.
    pub fn state_storage(&self) -> StateStorage {
        self.state
    }

    /// The job's graph, for a worker that runs some of its tasks.
    pub(crate) fn into_graph(self) -> JobGraph {
        self.graph
    }

    /// Runs the job's tasks through `remote` (a cluster's workers) instead of on threads of
    /// this process; checkpoints are still coordinated here.
    pub(crate) fn with_remote(
        mut self,
        remote: Box<dyn oxflow_runtime::launcher::RemoteTasks>,
    ) -> Self {
        self.remote = Some(remote);
        self
    }

    /// The job's dataflow: stages, their chained operators, parallelism and exchanges.
    pub fn plan(&self) -> PlanDescription {
        self.graph.describe()
    }

    /// The number of subtasks the job runs, over all its stages.
    pub fn subtasks(&self) -> usize {
        self.graph.stages.iter().map(|s| s.parallelism).sum()
    }

    /// The job as a spec (JSON with serde), which [`Pipeline::from_spec`] turns back into this
    /// job; an error says which part was built in Rust and has no spec form.
    pub fn to_spec(&self) -> Result<JobSpec> {
        let mut spec = self.spec.clone().map_err(|why| {
            OxflowError::InvalidPipeline(format!("this job has no spec form: {why}"))
        })?;
        spec.checkpoints = self.checkpoints.as_ref().map(|c| CheckpointSpec {
            interval_ms: c.interval.as_millis() as u64,
            min_pause_ms: (!c.min_pause.is_zero()).then_some(c.min_pause.as_millis() as u64),
            retained: Some(c.retained),
        });
        spec.state = match self.state {
            StateStorage::Memory => None,
            StateStorage::RocksDb { memory_budget } => Some(spec::StateSpec {
                memory_budget_mb: memory_budget.div_ceil(1 << 20) as u64,
            }),
        };
        Ok(spec)
    }

    /// Keeps state as `storage` says. With [`StateStorage::RocksDb`], every stateful operator
    /// (window aggregates, session windows, running aggregates, joins, top-N) keeps at most
    /// the memory budget in memory per subtask and the rest in RocksDB, so its state may be
    /// larger than memory; the default keeps everything in memory (faster while it fits).
    pub fn with_state_storage(mut self, storage: StateStorage) -> Self {
        self.state = storage;
        self
    }

    /// Takes checkpoints as `config` says: operator state in RocksDB, source positions and
    /// pending sink output, so that a restored run produces exactly the output of one that was
    /// never interrupted.
    pub fn with_checkpoints(mut self, config: CheckpointConfig) -> Self {
        self.checkpoints = Some(config);
        self
    }

    /// Copies the job's completed checkpoints to `store` too (see
    /// [`CheckpointConfig::store`]); nothing without checkpoints.
    pub fn with_checkpoint_store(mut self, store: oxflow_runtime::store::StoreRef) -> Self {
        if let Some(c) = &mut self.checkpoints {
            c.store = Some(store);
        }
        self
    }

    /// Starts from a checkpoint instead of the beginning: the newest valid one of the
    /// checkpoint directory ([`RestoreFrom::Latest`]; none yet means the beginning), or a
    /// given checkpoint or savepoint directory. The parallelism may differ from the run that
    /// took it.
    pub fn restore_from(mut self, from: RestoreFrom) -> Self {
        self.restore = Some(from);
        self
    }

    /// A handle to ask the running job for savepoints.
    pub fn savepoints(&self) -> SavepointRequests {
        self.savepoints.clone()
    }

    /// The job's counters (records in/out per stage, late records, backpressure), live.
    pub fn metrics(&self) -> JobMetrics {
        self.metrics.clone()
    }

    /// The job's recent checkpoints (completed and abandoned), live.
    pub fn checkpoint_history(&self) -> CheckpointHistory {
        self.history.clone()
    }

    /// Records checkpoints into `history` (shared, for instance, by every attempt of a job
    /// a server restarts) instead of a history of the job's own.
    pub fn with_checkpoint_history(mut self, history: CheckpointHistory) -> Self {
        self.history = history;
        self
    }

    /// A handle that stops the running job.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// Uses `clock` for idleness timeouts (a manual clock in tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Runs the job on the calling thread until its sources end (forever if unbounded).
    pub fn execute_blocking(self) -> Result<JobReport> {
        let mut options = ExecuteOptions {
            checkpoints: self.checkpoints,
            savepoints: self.savepoints,
            state: self.state,
            history: self.history,
            remote: self.remote,
            ..Default::default()
        };
        match self.restore {
            None => {}
            Some(RestoreFrom::Path(dir)) => options.restore = Some(checkpoint::load(&dir)?),
            Some(RestoreFrom::Latest) => {
                let dir = match &options.checkpoints {
                    Some(c) => c.dir.clone(),
                    None => {
                        return Err(OxflowError::InvalidPipeline(
                            "restoring the latest checkpoint needs a checkpoint directory (with_checkpoints)".into(),
                        ))
                    }
                };
                let store = options.checkpoints.as_ref().and_then(|c| c.store.clone());
                let (found, skipped) = match store {
                    // Tasks on workers upload their state to the store and download their
                    // part of it: here, only the manifest counts.
                    Some(store) if options.remote.is_some() => {
                        oxflow_runtime::store::latest_manifest(store.0.as_ref(), &dir)?
                    }
                    Some(store) => {
                        // A newer checkpoint in the store (this machine's were lost, or
                        // another ran the job last) is downloaded first; the local ones
                        // decide otherwise.
                        let (fetched, passed_over) =
                            oxflow_runtime::store::fetch_latest(store.0.as_ref(), &dir)?;
                        if let Some(id) = fetched {
                            tracing::info!(checkpoint = id, store = ?store, passed_over = passed_over.len(), "restoring a checkpoint from the store");
                        }
                        checkpoint::latest(&dir)?
                    }
                    None => checkpoint::latest(&dir)?,
                };
                if found.is_none() {
                    tracing::warn!(
                        dir = %dir.display(),
                        passed_over = skipped.len(),
                        "no completed checkpoint to restore: starting from the beginning"
                    );
                    // Output an earlier attempt committed from a checkpoint that no longer
                    // verifies is written again by this run.
                    options.roll_back_output = true;
                }
                options.restore = found;
            }
        }
        Ok(execute(
            self.graph,
            self.metrics,
            self.clock,
            self.cancel,
            options,
        )?)
    }

    /// Runs the job without blocking the async runtime; resolves when its sources end.
    pub async fn execute(self) -> Result<JobReport> {
        tokio::task::spawn_blocking(move || self.execute_blocking())
            .await
            .map_err(|e| OxflowError::InvalidPipeline(format!("the job's thread failed: {e}")))?
    }
}
