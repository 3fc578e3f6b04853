//! The job graph: stages, each a source or one or more exchanges followed by chained
//! operators, the last one ending in a sink.
//!
//! Stages form a tree that converges on the sink: every stage but the last feeds exactly one
//! later stage. A stage with several inputs (the two sides of a join, or a union) receives
//! each through its own exchange; its first operator learns which input a batch came from.

use crate::error::{Result, RuntimeError};
use crate::exchange::Partitioning;
use crate::operator::OperatorFactoryRef;
use crate::sink::SinkRef;
use crate::source::SourceRef;
use crate::watermark::WatermarkStrategy;
use datafusion::arrow::datatypes::SchemaRef;
use serde::Serialize;

/// Where a stage's records come from.
#[derive(Clone)]
pub enum StageInput {
    /// Read from a source, with watermarks generated per split.
    Source {
        /// The source.
        source: SourceRef,
        /// How watermarks are derived; `None` for a job without event time.
        watermarks: Option<WatermarkStrategy>,
    },
    /// Received from the previous stage through an exchange.
    Exchange(Partitioning),
    /// Received from earlier stages, input `k` through `edges[k]`: the sides of a join (its
    /// first operator takes that many inputs), or a union of streams of one schema.
    Inputs(Vec<StageEdge>),
}

/// One input of a stage: the stage it comes from and how records are spread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageEdge {
    /// Index of the upstream stage (always lower than the receiving stage's).
    pub from: usize,
    /// How the upstream's records are spread over this stage's subtasks.
    pub partitioning: Partitioning,
}

impl StageInput {
    /// The inputs of stage `index`: none for a source.
    pub fn edges(&self, index: usize) -> Vec<StageEdge> {
        match self {
            StageInput::Source { .. } => Vec::new(),
            StageInput::Exchange(p) => vec![StageEdge {
                from: index.saturating_sub(1),
                partitioning: p.clone(),
            }],
            StageInput::Inputs(edges) => edges.clone(),
        }
    }
}

/// Operators chained into one task, run by `parallelism` subtasks.
#[derive(Clone)]
pub struct Stage {
    /// Name for logs and metrics.
    pub name: String,
    /// Number of subtasks.
    pub parallelism: usize,
    /// Where records come from.
    pub input: StageInput,
    /// Operators applied in order within the task (no channel between them).
    pub operators: Vec<OperatorFactoryRef>,
    /// The sink ending the job; only on the last stage.
    pub sink: Option<SinkRef>,
}

/// A whole job, ready to run.
#[derive(Clone)]
pub struct JobGraph {
    /// Stages in order; the first reads a source, the last writes a sink.
    pub stages: Vec<Stage>,
    /// Number of key groups.
    pub max_parallelism: usize,
    /// Batches buffered per channel before the sender blocks (backpressure).
    pub channel_capacity: usize,
}

impl JobGraph {
    /// Checks the graph's shape; errors name the stage.
    pub fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(RuntimeError::InvalidJob(msg));
        if self.stages.is_empty() {
            return invalid("the job has no stage".into());
        }
        if self.channel_capacity == 0 {
            return invalid("channel capacity must be at least 1".into());
        }
        let mut fed = vec![0usize; self.stages.len()];
        for (i, stage) in self.stages.iter().enumerate() {
            let name = &stage.name;
            if stage.parallelism == 0 || stage.parallelism > self.max_parallelism {
                return invalid(format!(
                    "stage `{name}`: parallelism {} must be between 1 and the max parallelism {}",
                    stage.parallelism, self.max_parallelism
                ));
            }
            let edges = stage.input.edges(i);
            match &stage.input {
                StageInput::Source { .. } => {}
                _ if i == 0 => {
                    return invalid(format!(
                        "stage `{name}`: the first stage must read a source"
                    ))
                }
                StageInput::Inputs(e) if e.is_empty() => {
                    return invalid(format!("stage `{name}`: a stage needs at least one input"))
                }
                _ => {}
            }
            for edge in &edges {
                if edge.from >= i {
                    return invalid(format!(
                        "stage `{name}`: an input must come from an earlier stage, not stage {}",
                        edge.from
                    ));
                }
                let upstream = &self.stages[edge.from];
                if edge.partitioning == Partitioning::Forward
                    && upstream.parallelism != stage.parallelism
                {
                    return invalid(format!(
                        "stage `{name}`: a forward exchange needs the same parallelism on both sides ({} != {})",
                        upstream.parallelism, stage.parallelism
                    ));
                }
                fed[edge.from] += 1;
            }
            if let Some(first) = stage.operators.first() {
                let takes = first.inputs();
                if edges.len() > 1 && takes != edges.len() && takes != 1 {
                    return invalid(format!(
                        "stage `{name}`: operator `{}` takes {takes} inputs, the stage has {}",
                        first.name(),
                        edges.len()
                    ));
                }
            }
            if let Some(op) = stage.operators.iter().skip(1).find(|o| o.inputs() != 1) {
                return invalid(format!(
                    "stage `{name}`: operator `{}` takes {} inputs, so it must start its stage",
                    op.name(),
                    op.inputs()
                ));
            }
            let last = i + 1 == self.stages.len();
            if last != stage.sink.is_some() {
                return invalid(format!(
                    "stage `{name}`: exactly the last stage must end in a sink"
                ));
            }
        }
        let last = self.stages.len() - 1;
        for (i, &n) in fed.iter().enumerate() {
            let expected = usize::from(i != last);
            if n != expected {
                return invalid(format!(
                    "stage `{}` feeds {n} stages; every stage but the last feeds exactly one",
                    self.stages[i].name
                ));
            }
        }
        Ok(())
    }

    /// For each stage, the stage it feeds and which of that stage's inputs it is (`None` for
    /// the last).
    pub fn consumers(&self) -> Vec<Option<(usize, usize)>> {
        let mut consumers = vec![None; self.stages.len()];
        for (t, stage) in self.stages.iter().enumerate() {
            for (k, edge) in stage.input.edges(t).iter().enumerate() {
                consumers[edge.from] = Some((t, k));
            }
        }
        consumers
    }

    /// The schema each stage emits, in order.
    pub fn output_schemas(&self) -> Result<Vec<SchemaRef>> {
        let mut schemas: Vec<SchemaRef> = Vec::with_capacity(self.stages.len());
        for (i, stage) in self.stages.iter().enumerate() {
            let inputs: Vec<SchemaRef> = match &stage.input {
                StageInput::Source { source, .. } => vec![source.schema()],
                other => other
                    .edges(i)
                    .iter()
                    .map(|e| schemas[e.from].clone())
                    .collect(),
            };
            let multi_input_op = stage.operators.first().is_some_and(|o| o.inputs() > 1);
            if !multi_input_op && inputs.iter().any(|s| s != &inputs[0]) {
                return Err(RuntimeError::InvalidJob(format!(
                    "stage `{}`: a union needs one schema on every input",
                    stage.name
                )));
            }
            let mut schema = inputs[0].clone();
            for op in &stage.operators {
                schema = op.output_schema();
            }
            schemas.push(schema);
        }
        Ok(schemas)
    }

    /// The graph as data: what `oxflow validate` prints, `GET /v1/jobs/{id}` returns and the
    /// dashboard draws.
    pub fn describe(&self) -> PlanDescription {
        let stages = self
            .stages
            .iter()
            .enumerate()
            .map(|(index, stage)| StageDescription {
                index,
                name: stage.name.clone(),
                parallelism: stage.parallelism,
                source: match &stage.input {
                    StageInput::Source { source, .. } => Some(source.name()),
                    _ => None,
                },
                event_time: match &stage.input {
                    StageInput::Source { watermarks, .. } => {
                        watermarks.as_ref().map(|w| w.time_column.clone())
                    }
                    _ => None,
                },
                operators: stage.operators.iter().map(|o| o.name()).collect(),
                sink: stage.sink.as_ref().map(|s| s.name()),
                inputs: stage
                    .input
                    .edges(index)
                    .into_iter()
                    .map(|e| InputDescription {
                        from: e.from,
                        exchange: match e.partitioning {
                            Partitioning::Forward => "forward".to_string(),
                            Partitioning::Rebalance => "rebalance".to_string(),
                            Partitioning::Hash(keys) => format!("hash({})", keys.join(", ")),
                        },
                    })
                    .collect(),
            })
            .collect();
        PlanDescription {
            stages,
            max_parallelism: self.max_parallelism,
        }
    }
}

/// A job graph described for people and pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanDescription {
    /// The stages in order: sources first, the sink's stage last.
    pub stages: Vec<StageDescription>,
    /// Number of key groups.
    pub max_parallelism: usize,
}

/// The plan as text, one stage per paragraph (what `EXPLAIN` prints): its subtasks, where
/// its records come from, its chained operators and its sink.
impl std::fmt::Display for PlanDescription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for stage in &self.stages {
            writeln!(
                f,
                "stage {} {} (parallelism {})",
                stage.index, stage.name, stage.parallelism
            )?;
            if let Some(source) = &stage.source {
                match &stage.event_time {
                    Some(t) => writeln!(f, "  source: {source}, watermarks on {t}")?,
                    None => writeln!(f, "  source: {source}, no watermarks")?,
                }
            }
            for input in &stage.inputs {
                writeln!(f, "  input: stage {} by {}", input.from, input.exchange)?;
            }
            if !stage.operators.is_empty() {
                writeln!(f, "  operators: {}", stage.operators.join(" -> "))?;
            }
            if let Some(sink) = &stage.sink {
                writeln!(f, "  sink: {sink}")?;
            }
        }
        write!(f, "key groups: {}", self.max_parallelism)
    }
}

impl PlanDescription {
    /// The indexes of the stages that read a source.
    pub fn source_stages(&self) -> Vec<usize> {
        self.stages
            .iter()
            .filter(|s| s.source.is_some())
            .map(|s| s.index)
            .collect()
    }
}

/// One stage of a [`PlanDescription`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageDescription {
    /// Its index, as metrics name it (`stage<index>.<name>`).
    pub index: usize,
    /// Its name.
    pub name: String,
    /// Its subtasks.
    pub parallelism: usize,
    /// The source it reads, for a source stage.
    pub source: Option<String>,
    /// The column event time comes from, for a source stage with watermarks.
    pub event_time: Option<String>,
    /// Its chained operators, in order.
    pub operators: Vec<String>,
    /// The sink it ends in, for the last stage.
    pub sink: Option<String>,
    /// Where its records come from.
    pub inputs: Vec<InputDescription>,
}

/// One input edge of a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputDescription {
    /// The upstream stage's index.
    pub from: usize,
    /// How records cross: `forward`, `rebalance` or `hash(KEYS)`.
    pub exchange: String,
}
