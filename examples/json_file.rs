//! An expression pipeline over a JSON-lines file: filter and compute with DataFusion
//! expressions, then average per sensor in tumbling windows, printed to stdout.
//!
//! `cargo run --release --example json_file -- [PATH]` (default: examples/data/readings.jsonl)

use oxflow::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use oxflow::prelude::*;
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo run` sets CARGO_MANIFEST_DIR for the program too: prefer it to the directory the
    // example was compiled in, so a build shared between clones reads this clone's data.
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        let root = std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
        format!("{root}/examples/data/readings.jsonl")
    });
    let schema = Arc::new(Schema::new(vec![
        Field::new("sensor", DataType::Utf8, false),
        Field::new("celsius", DataType::Float64, true),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let source = FileSource::try_new(vec![path.into()], FileFormat::JsonLines, Some(schema))?;
    Pipeline::new()
        .with_parallelism(2)
        .source(source)
        .with_watermarks(WatermarkStrategy::bounded("at", Duration::from_secs(5)))?
        .filter(col("celsius").is_not_null())?
        .select([
            col("sensor"),
            (col("celsius") * lit(1.8) + lit(32.0)).alias("fahrenheit"),
            col("at"),
        ])?
        .key_by(["sensor"])
        .window(WindowSpec::tumbling(Duration::from_secs(60)))
        .aggregate([
            avg(col("fahrenheit")).alias("avg_f"),
            max(col("fahrenheit")).alias("max_f"),
            count(col("at")).alias("readings"),
        ])?
        .sink(StdoutSink)?
        .execute()
        .await?;
    Ok(())
}
