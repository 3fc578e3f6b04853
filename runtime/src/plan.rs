//! The physical plan: a job graph laid out as the tasks that run it and the channels between
//! them, as plain data.
//!
//! A [`JobGraph`] says what a job computes (stages of chained operators, their parallelism,
//! how records are spread between stages). The plan says how it runs: one task per subtask,
//! the key groups it owns, the channels it reads (each numbered within the task's inbox, with
//! the stage input it belongs to) and where its output goes. Nothing in it is an operator or
//! a thread, so a launcher can place tasks anywhere: the local launcher runs every task of a
//! plan on a thread of this process over in-memory channels, and a distributed one hands
//! each worker the tasks it was given, to build from the same job and wire with remote
//! channels to tasks elsewhere.
//!
//! Channel numbering, which every launcher must keep: input `k` of a stage has channels
//! `offset(k)..offset(k) + senders(k)`, one per upstream subtask (just one for a forward
//! edge), and upstream subtask `i` sends on channel `offset(k) + i` (`offset(k)` on a forward
//! edge). Watermarks and barriers are tracked per channel.

use crate::exchange::Partitioning;
use crate::graph::{JobGraph, StageInput};
use crate::operator::SubtaskInfo;
use crate::state::key_group_range;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// A task: subtask `subtask` of stage `stage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId {
    /// The stage's position in the job graph.
    pub stage: usize,
    /// The subtask's index within its stage.
    pub subtask: usize,
}

/// Where a task's output goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskOutput {
    /// The job's sink (the last stage).
    Sink,
    /// The channels of the next stage's tasks.
    Exchange(OutputEdge),
}

/// The edge a task sends its output on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputEdge {
    /// How records are spread over `targets`.
    pub partitioning: Partitioning,
    /// Every task of the receiving stage, by subtask index (what the partitioner picks).
    pub targets: Vec<TaskId>,
    /// The channel this task sends on, in each target's inbox.
    pub channel: usize,
}

impl OutputEdge {
    /// The targets that hear this task's watermarks, barriers and end of input: on a forward
    /// edge only the one its records go to, otherwise every one (each tracks every channel).
    pub fn control_targets(&self, subtask: usize) -> Vec<usize> {
        match self.partitioning {
            Partitioning::Forward => vec![subtask],
            _ => (0..self.targets.len()).collect(),
        }
    }
}

/// One task of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPlan {
    /// Which subtask of which stage.
    pub id: TaskId,
    /// For logs and thread names: `stage[i/p]`.
    pub name: String,
    /// Its index, its stage's parallelism and the number of key groups.
    pub info: SubtaskInfo,
    /// The key groups whose state and keyed records it owns.
    pub key_groups: Range<usize>,
    /// Whether every input is a hash exchange and every operator keeps its state by that
    /// exchange's key: its state then lies in its own key groups only
    /// ([`crate::state::restore_sources`]).
    #[serde(default)]
    pub keyed: bool,
    /// Whether it reads a source split (then `inbound` is empty).
    pub reads_source: bool,
    /// The stage input each channel of its inbox belongs to, by channel number.
    pub inbound: Vec<usize>,
    /// Where its output goes.
    pub output: TaskOutput,
}

impl TaskPlan {
    /// Which subtasks of its stage in a checkpoint taken at `old_parallelism` hold state it
    /// restores.
    pub fn restores_from(&self, old_parallelism: usize) -> Vec<usize> {
        crate::state::restore_sources(
            self.keyed,
            &self.key_groups,
            old_parallelism,
            self.info.max_parallelism,
        )
    }
}

/// Every task of a job, in order of stage, then subtask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhysicalPlan {
    /// The tasks.
    pub tasks: Vec<TaskPlan>,
    /// Batches a channel buffers before its sender waits (backpressure).
    pub channel_capacity: usize,
}

impl PhysicalPlan {
    /// Lays out `graph` (validated) as tasks and channels.
    pub fn of(graph: &JobGraph) -> PhysicalPlan {
        // Per stage: the first channel of each input, and the input of each channel.
        let mut offsets: Vec<Vec<usize>> = Vec::with_capacity(graph.stages.len());
        let mut inbound: Vec<Vec<usize>> = Vec::with_capacity(graph.stages.len());
        for (t, stage) in graph.stages.iter().enumerate() {
            let (mut stage_offsets, mut sides) = (Vec::new(), Vec::new());
            for (k, edge) in stage.input.edges(t).iter().enumerate() {
                stage_offsets.push(sides.len());
                let senders = match edge.partitioning {
                    Partitioning::Forward => 1,
                    _ => graph.stages[edge.from].parallelism,
                };
                sides.extend(std::iter::repeat_n(k, senders));
            }
            offsets.push(stage_offsets);
            inbound.push(sides);
        }
        let consumers = graph.consumers();
        let mut tasks = Vec::new();
        for (s, stage) in graph.stages.iter().enumerate() {
            let edges = stage.input.edges(s);
            let keyed = !edges.is_empty()
                && edges
                    .iter()
                    .all(|e| matches!(e.partitioning, Partitioning::Hash(_)))
                && stage.operators.iter().all(|o| o.state_in_own_key_groups());
            // The edge this stage feeds: the next stage's tasks, the channels' first number.
            let consumer = consumers[s].map(|(t, k)| OutputEdge {
                partitioning: graph.stages[t].input.edges(t)[k].partitioning.clone(),
                targets: (0..graph.stages[t].parallelism)
                    .map(|subtask| TaskId { stage: t, subtask })
                    .collect(),
                channel: offsets[t][k],
            });
            for subtask in 0..stage.parallelism {
                let info = SubtaskInfo {
                    index: subtask,
                    parallelism: stage.parallelism,
                    max_parallelism: graph.max_parallelism,
                };
                let output = match &consumer {
                    None => TaskOutput::Sink,
                    Some(edge) => TaskOutput::Exchange(OutputEdge {
                        // Subtask i sends on the edge's i-th channel (the one channel of a
                        // forward edge).
                        channel: edge.channel
                            + match edge.partitioning {
                                Partitioning::Forward => 0,
                                _ => subtask,
                            },
                        ..edge.clone()
                    }),
                };
                tasks.push(TaskPlan {
                    id: TaskId { stage: s, subtask },
                    name: format!("{}[{}/{}]", stage.name, subtask + 1, stage.parallelism),
                    info,
                    key_groups: key_group_range(subtask, stage.parallelism, graph.max_parallelism),
                    keyed,
                    reads_source: matches!(stage.input, StageInput::Source { .. }),
                    inbound: inbound[s].clone(),
                    output,
                });
            }
        }
        PhysicalPlan {
            tasks,
            channel_capacity: graph.channel_capacity,
        }
    }

    /// The task `id`, if the plan has it.
    pub fn task(&self, id: TaskId) -> Option<&TaskPlan> {
        self.tasks.iter().find(|t| t.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::subtask_for_key_group;
    use crate::graph::{Stage, StageEdge};
    use crate::source::Source;
    use datafusion::arrow::datatypes::{Schema, SchemaRef};
    use std::sync::Arc;

    /// A source the plan only names (it never reads one).
    struct Named;

    impl Source for Named {
        fn name(&self) -> String {
            "named".into()
        }
        fn schema(&self) -> SchemaRef {
            Arc::new(Schema::empty())
        }
    }

    fn stage(name: &str, parallelism: usize, input: StageInput) -> Stage {
        Stage {
            name: name.into(),
            parallelism,
            input,
            operators: Vec::new(),
            sink: None,
        }
    }

    /// Two sources joined by key: the join reads one channel per upstream subtask of each
    /// side, numbered side by side, and a forward edge to the sink is one channel.
    #[test]
    fn a_join_reads_a_channel_per_upstream_subtask_of_each_side() {
        let source = || StageInput::Source {
            source: Arc::new(Named) as Arc<dyn Source>,
            watermarks: None,
        };
        let hash = |k: &str| Partitioning::Hash(vec![k.into()]);
        // The last stage (the plan needs no sink to lay it out).
        let sink = stage("sink", 3, StageInput::Exchange(Partitioning::Forward));
        let graph = JobGraph {
            stages: vec![
                stage("left", 2, source()),
                stage("right", 1, source()),
                stage(
                    "join",
                    3,
                    StageInput::Inputs(vec![
                        StageEdge {
                            from: 0,
                            partitioning: hash("k"),
                        },
                        StageEdge {
                            from: 1,
                            partitioning: hash("k"),
                        },
                    ]),
                ),
                sink,
            ],
            max_parallelism: 128,
            channel_capacity: 4,
        };
        let plan = PhysicalPlan::of(&graph);
        assert_eq!(plan.tasks.len(), 2 + 1 + 3 + 3);
        let task = |stage, subtask| plan.task(TaskId { stage, subtask }).unwrap();
        // Left subtasks send on channels 0 and 1 of the join, the right one on channel 2.
        let channel_of = |t: &TaskPlan| match &t.output {
            TaskOutput::Exchange(e) => (e.channel, e.targets.len()),
            TaskOutput::Sink => panic!("{} should feed the join", t.name),
        };
        assert_eq!(channel_of(task(0, 0)), (0, 3));
        assert_eq!(channel_of(task(0, 1)), (1, 3));
        assert_eq!(channel_of(task(1, 0)), (2, 3));
        assert_eq!(task(2, 1).inbound, vec![0, 0, 1]);
        assert!(task(0, 0).reads_source && task(0, 0).inbound.is_empty());
        // Forward: subtask i sends on channel 0 of sink subtask i, and only it hears control.
        let TaskOutput::Exchange(edge) = &task(2, 2).output else {
            panic!("the join feeds the sink");
        };
        assert_eq!(edge.channel, 0);
        assert_eq!(edge.control_targets(2), vec![2]);
        assert_eq!(task(3, 0).inbound, vec![0]);
        assert_eq!(task(3, 0).output, TaskOutput::Sink);
        assert_eq!(task(2, 1).name, "join[2/3]");
        // Key groups: each owned by exactly the subtask the exchange routes them to.
        for kg in 0..128 {
            let owners: Vec<usize> = (0..3)
                .filter(|&i| task(2, i).key_groups.contains(&kg))
                .collect();
            assert_eq!(owners, vec![subtask_for_key_group(kg, 3, 128)]);
        }
        // The plan is data: it survives a round trip through JSON.
        let json = serde_json::to_string(&plan).unwrap();
        assert_eq!(serde_json::from_str::<PhysicalPlan>(&json).unwrap(), plan);
    }
}
