//! Nexmark q5 ("hot items") written with the public API: per sliding window of 10 s every
//! 2 s, the auction(s) with the most bids.
//!
//! `cargo run --release --example nexmark_q5 -- [EVENTS]`

use oxflow::prelude::*;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let bids = NexmarkSource::try_new(
        NexmarkConfig {
            events: Some(events),
            ..Default::default()
        },
        NexmarkTable::Bid,
    )?;
    let hot_items = CollectSink::new();
    let report = Pipeline::new()
        .source(bids)
        .with_watermarks(WatermarkStrategy::bounded(
            "date_time",
            Duration::from_secs(4),
        ))?
        .key_by(["auction"])
        .window(WindowSpec::hopping(
            Duration::from_secs(10),
            Duration::from_secs(2),
        ))
        .aggregate([count(col("auction")).alias("num")])?
        .key_by(["window_start", "window_end"])
        .window(WindowSpec::Inherited)
        .top_n("num", 1)?
        .sink(hot_items.clone())?
        .execute()
        .await?;
    let batches = hot_items.batches();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    println!(
        "{events} events in {:.2?}: {rows} hot items",
        report.elapsed
    );
    if let Some(first) = batches.first() {
        println!(
            "{}",
            oxflow::arrow::util::pretty::pretty_format_batches(&[
                first.slice(0, first.num_rows().min(5))
            ])?
        );
    }
    Ok(())
}
