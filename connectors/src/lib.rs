//! # oxflow-connectors: where records come from and go to
//!
//! This crate owns the concrete [`Source`](oxflow_runtime::source::Source)s and
//! [`Sink`](oxflow_runtime::sink::Sink)s: the Nexmark generator (exactly as the project's
//! Nexmark page fixes it), a datagen source, JSON-lines and CSV files in, and stdout,
//! JSON-lines files, a blackhole and an in-memory collector out.
//!
//! It depends on `oxflow-runtime` and DataFusion's Arrow. It must never depend on operators or
//! on the facade.
#![warn(missing_docs)]

pub mod datagen;
pub mod error;
pub mod file;
pub mod json;
pub mod memory;
pub mod nexmark;
pub mod random;
pub mod sinks;
mod split;

pub use error::{ConnectorError, Result};
