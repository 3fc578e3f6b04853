//! # Oxflow: stream processing on Arrow, in Rust
//!
//! Build a pipeline with [`Pipeline`], run it embedded with [`Job::execute`].
//!
//! ```
//! use oxflow::prelude::*;
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> oxflow::Result<()> {
//! let results = CollectSink::new();
//! let bids = NexmarkSource::try_new(
//!     NexmarkConfig { events: Some(100_000), ..Default::default() },
//!     NexmarkTable::Bid,
//! )?;
//! Pipeline::new()
//!     .with_parallelism(2)
//!     .source(bids)
//!     .with_watermarks(WatermarkStrategy::bounded("date_time", Duration::from_secs(4)))?
//!     .filter(col("price").gt(lit(1_000)))?
//!     .key_by(["auction"])
//!     .window(WindowSpec::tumbling(Duration::from_secs(10)))
//!     .aggregate([count(col("price")).alias("bids"), max(col("price")).alias("top")])?
//!     .sink(results.clone())?
//!     .execute()
//!     .await?;
//! let rows: usize = results.batches().iter().map(|b| b.num_rows()).sum();
//! assert!(rows > 0);
//! # Ok(()) }
//! ```
//!
//! ## How a record flows through Oxflow
//!
//! 1. A **source** ([`oxflow_connectors`]: Nexmark, datagen, files) is read in parallel
//!    splits; each split yields Arrow `RecordBatch`es.
//! 2. The split's **watermark generator** ([`oxflow_runtime::watermark`]) follows the
//!    event-time column and puts watermarks in band after the batches.
//! 3. **Chained operators** ([`oxflow_operators`]: filter, select, closures) run on the batch
//!    in the same thread, no copy between them.
//! 4. At `key_by`, a **hash exchange** ([`oxflow_runtime::exchange`]) hashes the key columns to
//!    one of 128 key groups and sends each row to the subtask owning its key group, through a
//!    bounded channel (a full channel blocks the sender: backpressure).
//! 5. A **window operator** keeps per-window accumulators (DataFusion `GroupsAccumulator`s) and
//!    fires a window when the minimum watermark over its inputs passes the window's end.
//! 6. The results reach a **sink** (stdout, JSON-lines files, blackhole, collect).
//!
//! ## Jobs as data, and the server
//!
//! A pipeline also has a JSON form, [`spec::JobSpec`] ([`Pipeline::from_spec`],
//! [`Job::to_spec`]), with Rust functions registered by name in a [`spec::Registry`]. The
//! [`server`] runs such specs over REST, restarting failed jobs from their checkpoints and
//! resuming them after its own restart; [`client`] talks to it (as `oxflow submit` does).
//!
//! The crates depend one way: this facade -> operators, connectors -> runtime.
#![warn(missing_docs)]

pub mod client;
pub mod cluster;
pub mod error;
pub mod nexmark;
pub mod pipeline;
pub mod progress;
pub mod server;
pub mod spec;
pub mod sql;

pub use error::{OxflowError, Result};

/// CPU time this process has used so far (user + system, all threads), in seconds: with
/// wall time, it gives events per CPU second. `NaN` if the OS does not say.
pub fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
pub use pipeline::{Job, KeyedStream, Pipeline, Stream, WindowedStream};

pub use oxflow_connectors as connectors;
pub use oxflow_operators as operators;
pub use oxflow_runtime as runtime;

/// DataFusion, for expressions and aggregate functions.
pub use datafusion;
/// Arrow, as re-exported by DataFusion (one version across Oxflow and your code).
pub use datafusion::arrow;

/// Everything a pipeline usually needs.
pub mod prelude {
    pub use crate::pipeline::{Job, Pipeline, Stream};
    pub use crate::Result;
    pub use datafusion::arrow::record_batch::RecordBatch;
    pub use datafusion::functions_aggregate::expr_fn::{avg, count, max, min, sum};
    pub use datafusion::prelude::{col, lit, Expr};
    pub use oxflow_connectors::datagen::{DatagenConfig, DatagenSource};
    pub use oxflow_connectors::file::{BadRecordPolicy, FileFormat, FileSource};
    pub use oxflow_connectors::nexmark::{NexmarkConfig, NexmarkSource, NexmarkTable};
    pub use oxflow_connectors::sinks::{BlackholeSink, CollectSink, FileSink, StdoutSink};
    pub use oxflow_operators::map::TypedRow;
    pub use oxflow_operators::{LateRecords, WindowSpec};
    pub use oxflow_runtime::checkpoint::{CheckpointConfig, RestoreFrom};
    pub use oxflow_runtime::state::StateStorage;
    pub use oxflow_runtime::watermark::WatermarkStrategy;
}

/// The README's example, compiled and run as a doctest so it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
