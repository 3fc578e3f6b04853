//! # oxflow-connectors: where records come from and go to
//!
//! This crate owns the concrete [`Source`](oxflow_runtime::source::Source)s and
//! [`Sink`](oxflow_runtime::sink::Sink)s: the Nexmark generator (exactly as the project's
//! Nexmark page fixes it), a datagen source, JSON-lines, CSV and Parquet files (local or on
//! S3, through [`input`]), Kafka topics, NATS JetStream streams and RabbitMQ streams and
//! queues in; and stdout, JSON-lines and Parquet files (local or on S3, [`object`]), Kafka
//! topics (exactly once, with transactions), NATS JetStream, RabbitMQ, a blackhole and an
//! in-memory collector out.
//!
//! A record flows in through a source's split reader (one per subtask, on the subtask's
//! thread; network clients run on this crate's own tokio runtime and hand chunks over bounded
//! channels), which decodes bytes into Arrow batches and reports its position for checkpoints;
//! it leaves through a sink writer, which stages output at each barrier (`pre_commit`) and
//! makes it visible only when the checkpoint's manifest is written (`commit`).
//!
//! It depends on `oxflow-runtime` and DataFusion's Arrow. It must never depend on operators or
//! on the facade.
#![warn(missing_docs)]

pub mod datagen;
mod decode;
pub mod error;
pub mod file;
mod flat_json;
pub mod input;
mod io_runtime;
pub mod json;
pub mod kafka;
pub mod memory;
pub mod nats;
pub mod nexmark;
pub mod object;
pub mod parquet;
pub mod rabbitmq;
pub mod random;
pub mod sinks;
mod split;
mod spool;
pub mod uri;

pub use error::{ConnectorError, Result};
