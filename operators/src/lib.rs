//! # oxflow-operators: the transformations of a pipeline
//!
//! This crate owns every concrete [`Operator`](oxflow_runtime::Operator): filter, project and
//! map over DataFusion expressions, Rust closures over batches and over typed (serde) rows,
//! and the event-time window operators (tumbling, hopping, session and inherited windows)
//! that aggregate with DataFusion accumulators or keep the top rows of each window, and the
//! stream joins of two keyed inputs (window, interval and regular joins, inner or left outer). Each
//! stateful operator also says how its state is snapshotted at a checkpoint barrier and
//! restored, by key group, at any parallelism.
//!
//! It depends on `oxflow-runtime` and DataFusion. It must never depend on connectors or on
//! the facade: operators know nothing of where records come from or go.
#![warn(missing_docs)]

pub mod aggregate;
pub mod error;
pub mod expr;
pub mod functions;
pub mod join;
mod keyed;
pub mod map;
pub mod running;
pub mod session;
mod state;
pub mod topn;
pub mod window;

pub use error::{OperatorError, Result};
pub use join::{JoinSettings, JoinSpec, JoinType, StreamJoin};
pub use window::{LateRecords, WindowSpec};
