//! The Nexmark queries, written with the public pipeline API like any user's job.

use crate::error::{OxflowError, Result};
use crate::pipeline::{Job, Pipeline, Stream};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::prelude::{col, lit};
use oxflow_connectors::file::{FileFormat, FileSource};
use oxflow_connectors::kafka::{KafkaSource, KafkaSourceConfig};
use oxflow_connectors::nexmark::{NexmarkConfig, NexmarkSource, NexmarkTable};
use oxflow_operators::WindowSpec;
use oxflow_runtime::sink::Sink;
use oxflow_runtime::watermark::WatermarkStrategy;
use std::sync::Arc;
use std::time::Duration;

/// The queries this build runs.
pub const QUERIES: [&str; 6] = ["q0", "q1", "q2", "q5", "q7", "q11"];

/// The watermark every query uses: 4 s of bounded out-of-orderness on `date_time`.
pub fn watermarks() -> WatermarkStrategy {
    WatermarkStrategy::bounded("date_time", Duration::from_secs(4))
}

/// The bid stream of the generator, with watermarks.
pub fn bids(pipeline: Pipeline, config: NexmarkConfig) -> Result<Stream> {
    pipeline
        .source(NexmarkSource::try_new(config, NexmarkTable::Bid)?)
        .with_watermarks(watermarks())
}

/// The columns of bids written as JSON (q0's output: `auction`, `bidder`, `price`,
/// `date_time`, `extra`) and read back from Kafka or files, typed as the generator's.
pub fn bid_json_schema() -> SchemaRef {
    let bid = NexmarkTable::Bid.schema();
    let fields = ["auction", "bidder", "price", "date_time", "extra"]
        .iter()
        .map(|n| bid.field_with_name(n).expect("a bid column").clone())
        .collect::<Vec<_>>();
    Arc::new(Schema::new(fields))
}

/// Bids read from Kafka (JSON objects with [`bid_json_schema`]'s columns), with watermarks
/// `delay` behind the newest `date_time` of each partition.
pub fn kafka_bids(
    pipeline: Pipeline,
    config: KafkaSourceConfig,
    watermarks: WatermarkStrategy,
) -> Result<Stream> {
    pipeline
        .source(KafkaSource::try_new(config)?)
        .with_watermarks(watermarks)
}

/// Bids from JSON-lines files (q0's output, e.g. a file sink's directory), with watermarks.
pub fn file_bids(
    pipeline: Pipeline,
    paths: Vec<std::path::PathBuf>,
    watermarks: WatermarkStrategy,
) -> Result<Stream> {
    let source = FileSource::try_new(paths, FileFormat::JsonLines, Some(bid_json_schema()))?;
    pipeline.source(source).with_watermarks(watermarks)
}

/// Applies query `query` to a bid stream (columns of the Nexmark bid table).
pub fn apply(query: &str, bids: Stream) -> Result<Stream> {
    let secs = Duration::from_secs;
    match query {
        "q0" => bids.select([
            col("auction"),
            col("bidder"),
            col("price"),
            col("date_time"),
            col("extra"),
        ]),
        "q1" => bids.select([
            col("auction"),
            col("bidder"),
            (col("price") * lit(0.908)).alias("price"),
            col("date_time"),
        ]),
        "q2" => bids
            .filter((col("auction") % lit(123)).eq(lit(0)))?
            .select([col("auction"), col("price")]),
        "q5" => bids
            .key_by(["auction"])
            .window(WindowSpec::hopping(secs(10), secs(2)))
            .aggregate([count(col("auction")).alias("num")])?
            .key_by(["window_start", "window_end"])
            .window(WindowSpec::Inherited)
            .top_n("num", 1),
        "q7" => bids
            .select([
                col("auction"),
                col("bidder"),
                col("price"),
                col("date_time"),
            ])?
            .window_all(WindowSpec::tumbling(secs(10)))
            .top_n("price", 1),
        "q11" => bids
            .key_by(["bidder"])
            .window(WindowSpec::session(secs(10)))
            .aggregate([count(col("auction")).alias("bid_count")])?
            .select([
                col("bidder"),
                col("bid_count"),
                col("window_start"),
                col("window_end"),
            ]),
        other => Err(OxflowError::InvalidPipeline(format!(
            "unknown Nexmark query `{other}`; this build runs {}",
            QUERIES.join(", ")
        ))),
    }
}

/// Query `query` on the generator into `sink`.
pub fn job(
    query: &str,
    pipeline: Pipeline,
    config: NexmarkConfig,
    sink: impl Sink + 'static,
) -> Result<Job> {
    apply(query, bids(pipeline, config)?)?.sink(sink)
}
