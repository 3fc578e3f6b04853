//! # oxflow-runtime: the engine
//!
//! This crate owns how records move: the [`Message`]s on a stream (Arrow batches with
//! watermarks in band), the [`Operator`] contract, sources and sinks as traits, the job graph
//! of chained stages, hash exchanges through key groups, bounded channels (backpressure) in
//! memory or between processes over Arrow Flight ([`flight`]), the physical plan ([`plan`]),
//! the executor that runs every subtask of a job on its own thread (all of a job's here, or a
//! worker's share of one whose coordinator runs elsewhere, [`launcher`]), and checkpoints: barriers and
//! their alignment, the coordinator, operator state in RocksDB by key group, the manifest, and
//! restore at any parallelism ([`checkpoint`], [`coordinator`], [`state`]).
//!
//! It depends on DataFusion (for Arrow and hashing) and nothing else of Oxflow. It must never
//! depend on concrete operators (`oxflow-operators`) or connectors (`oxflow-connectors`):
//! they depend on it.
//!
//! A record's path: a [`source::SourceReader`] yields a batch; the source task stamps a
//! watermark after it ([`watermark::WatermarkGenerator`]); the batch flows through the chained
//! operators of its stage; at a stage boundary an [`exchange::Partitioner`] splits it by key
//! group into the channels of the next stage; the last stage ends in a [`sink::SinkWriter`].
#![warn(missing_docs)]

pub mod channel;
pub mod checkpoint;
pub mod clock;
pub mod coordinator;
pub mod error;
pub mod exchange;
pub mod executor;
pub mod flight;
pub mod graph;
pub mod launcher;
pub mod message;
pub mod metrics;
pub mod operator;
pub mod plan;
pub mod sink;
pub mod source;
pub mod state;
pub mod store;
pub mod watermark;

pub use error::{Result, RuntimeError};
pub use message::{EventTime, Message};
pub use operator::{Operator, OperatorFactory, Output, SubtaskInfo};

/// Arrow, as re-exported by DataFusion, so that every crate of Oxflow uses one version.
pub use datafusion::arrow;
