//! The job graph: a chain of stages, each a source or an exchange followed by chained
//! operators, the last one ending in a sink.

use crate::error::{Result, RuntimeError};
use crate::exchange::Partitioning;
use crate::operator::OperatorFactoryRef;
use crate::sink::SinkRef;
use crate::source::SourceRef;
use crate::watermark::WatermarkStrategy;
use datafusion::arrow::datatypes::SchemaRef;

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
        for (i, stage) in self.stages.iter().enumerate() {
            let name = &stage.name;
            if stage.parallelism == 0 || stage.parallelism > self.max_parallelism {
                return invalid(format!(
                    "stage `{name}`: parallelism {} must be between 1 and the max parallelism {}",
                    stage.parallelism, self.max_parallelism
                ));
            }
            match (&stage.input, i) {
                (StageInput::Source { .. }, 0) => {}
                (StageInput::Source { .. }, _) => {
                    return invalid(format!("stage `{name}`: only the first stage reads a source"))
                }
                (StageInput::Exchange(_), 0) => {
                    return invalid(format!("stage `{name}`: the first stage must read a source"))
                }
                (StageInput::Exchange(Partitioning::Forward), _)
                    if self.stages[i - 1].parallelism != stage.parallelism =>
                {
                    return invalid(format!(
                        "stage `{name}`: a forward exchange needs the same parallelism on both sides ({} != {})",
                        self.stages[i - 1].parallelism, stage.parallelism
                    ))
                }
                _ => {}
            }
            let last = i + 1 == self.stages.len();
            if last != stage.sink.is_some() {
                return invalid(format!(
                    "stage `{name}`: exactly the last stage must end in a sink"
                ));
            }
        }
        Ok(())
    }

    /// The schema each stage emits, in order.
    pub fn output_schemas(&self) -> Result<Vec<SchemaRef>> {
        let mut schemas = Vec::with_capacity(self.stages.len());
        let mut current: Option<SchemaRef> = None;
        for stage in &self.stages {
            let mut schema = match (&stage.input, current.take()) {
                (StageInput::Source { source, .. }, _) => source.schema(),
                (StageInput::Exchange(_), Some(s)) => s,
                (StageInput::Exchange(_), None) => {
                    return Err(RuntimeError::InvalidJob("an exchange has no input".into()))
                }
            };
            for op in &stage.operators {
                schema = op.output_schema();
            }
            schemas.push(schema.clone());
            current = Some(schema);
        }
        Ok(schemas)
    }
}
