//! A typed-row pipeline: bids as a serde struct, a Rust closure that flags suspicious ones,
//! then a tumbling window counting flags per bidder.
//!
//! `cargo run --release --example typed_rows`

use oxflow::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use oxflow::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

#[derive(Serialize, Deserialize)]
struct Bid {
    auction: i64,
    bidder: i64,
    price: i64,
    date_time: i64,
}

impl TypedRow for Bid {
    fn schema() -> SchemaRef {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        Arc::new(Schema::new(vec![
            Field::new("auction", DataType::Int64, false),
            Field::new("bidder", DataType::Int64, false),
            Field::new("price", DataType::Int64, false),
            Field::new("date_time", ts, false),
        ]))
    }
}

#[derive(Serialize, Deserialize)]
struct Flag {
    bidder: i64,
    reason: String,
    date_time: i64,
}

impl TypedRow for Flag {
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("bidder", DataType::Int64, false),
            Field::new("reason", DataType::Utf8, false),
            Field::new(
                "date_time",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bids = NexmarkSource::try_new(
        NexmarkConfig {
            events: Some(200_000),
            ..Default::default()
        },
        NexmarkTable::Bid,
    )?;
    let out = CollectSink::new();
    Pipeline::new()
        .source(bids)
        .with_watermarks(WatermarkStrategy::bounded(
            "date_time",
            Duration::from_secs(4),
        ))?
        .select([
            col("auction"),
            col("bidder"),
            col("price"),
            col("date_time"),
        ])?
        .flat_map_rows("flag", |b: Bid| {
            // Per-row logic that expressions can't say as simply.
            let reason = if b.price > 50_000_000 {
                "very high price"
            } else if b.auction % 1000 == b.bidder % 1000 {
                "bidder mirrors auction"
            } else {
                return vec![];
            };
            vec![Flag {
                bidder: b.bidder,
                reason: reason.into(),
                date_time: b.date_time,
            }]
        })?
        .key_by(["bidder"])
        .window(WindowSpec::tumbling(Duration::from_secs(1)))
        .aggregate([count(col("reason")).alias("flags")])?
        .filter(col("flags").gt_eq(lit(2)))?
        .sink(out.clone())?
        .execute()
        .await?;
    let rows: usize = out.batches().iter().map(|b| b.num_rows()).sum();
    println!("{rows} (bidder, second) pairs with two or more flags");
    Ok(())
}
