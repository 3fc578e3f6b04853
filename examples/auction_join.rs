//! Joins with the public API: each auction's bids during its first 10 ms (an interval join,
//! left outer so that auctions nobody bid on early still show), counted per auction.
//!
//! `cargo run --release --example auction_join -- [EVENTS]`

use oxflow::prelude::*;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let config = NexmarkConfig {
        events: Some(events),
        ..Default::default()
    };
    let pipeline = Pipeline::new();
    let watermarks = WatermarkStrategy::bounded("date_time", Duration::from_secs(4));
    let auctions = pipeline
        .clone()
        .source(NexmarkSource::try_new(
            config.clone(),
            NexmarkTable::Auction,
        )?)
        .with_watermarks(watermarks.clone())?
        .select([col("id"), col("category"), col("date_time")])?;
    let bids = pipeline
        .source(NexmarkSource::try_new(config, NexmarkTable::Bid)?)
        .with_watermarks(watermarks)?
        .select([col("auction"), col("price"), col("date_time")])?;
    let early = CollectSink::new();
    let report = auctions
        .key_by(["id"])
        .join(bids.key_by(["auction"]))
        .left_outer()
        // A bid joins when its time is within [opened, opened + 10 ms].
        .interval(0, 10)?
        // Output: the auction's columns, then the bid's (`right_date_time` for the clash).
        .key_by(["id", "category"])
        .window(WindowSpec::tumbling(Duration::from_secs(60)))
        .allowed_lateness(Duration::from_millis(10))
        .aggregate([
            count(col("price")).alias("early_bids"),
            max(col("price")).alias("best_early_price"),
        ])?
        .sink(early.clone())?
        .execute()
        .await?;
    let batches = early.batches();
    let auctions: usize = batches.iter().map(|b| b.num_rows()).sum();
    println!(
        "{events} events in {:.2?}: {auctions} auctions with their early bids",
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
