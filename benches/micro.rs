//! Micro-benchmarks of the hot paths, per batch of 8192 Nexmark bids:
//! filter, hash exchange, window aggregate (tumbling count/max per auction) and generation.
//!
//! `cargo bench --bench micro`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use oxflow::connectors::nexmark::{NexmarkConfig, NexmarkSource, NexmarkTable};
use oxflow::operators::map::Filter;
use oxflow::operators::window::{WindowAggregate, WindowSettings};
use oxflow::operators::{LateRecords, WindowSpec};
use oxflow::prelude::*;
use oxflow::runtime::exchange::{Partitioner, Partitioning};
use oxflow::runtime::{OperatorFactory, Output, SubtaskInfo};
use std::time::Duration;

const BATCH: u64 = 8192;

fn bids() -> RecordBatch {
    let source = NexmarkSource::try_new(NexmarkConfig::default(), NexmarkTable::Bid).unwrap();
    // One batch's worth of bids, from events past the start so ids are spread.
    source
        .generate(1_000_000..1_000_000 + BATCH * 50 / 46)
        .unwrap()
}

fn subtask() -> SubtaskInfo {
    SubtaskInfo {
        index: 0,
        parallelism: 1,
        max_parallelism: 128,
    }
}

fn benches(c: &mut Criterion) {
    let batch = bids();
    let rows = batch.num_rows() as u64;
    let mut g = c.benchmark_group("per_batch");
    g.throughput(Throughput::Elements(rows));

    let filter = Filter::try_new(&(col("auction") % lit(123)).eq(lit(0)), batch.schema()).unwrap();
    let mut op = filter.create(subtask()).unwrap();
    g.bench_function("filter_q2", |b| {
        b.iter(|| {
            let mut out = Output::default();
            op.on_batch(batch.clone(), &mut out).unwrap();
            out.drain().count()
        })
    });

    let mut partitioner = Partitioner::try_new(
        &Partitioning::Hash(vec!["auction".into()]),
        0,
        4,
        128,
        &batch.schema(),
    )
    .unwrap();
    g.bench_function("hash_exchange_4", |b| {
        b.iter(|| {
            let mut parts = 0;
            partitioner
                .partition(batch.clone(), |_, _| {
                    parts += 1;
                    Ok(())
                })
                .unwrap();
            parts
        })
    });

    let window = WindowAggregate::try_new(
        WindowSettings {
            keys: vec!["auction".into()],
            window: WindowSpec::tumbling(Duration::from_secs(10)),
            time_column: Some("date_time".into()),
            allowed_lateness: Duration::ZERO,
            late: LateRecords::Drop,
        },
        &[
            count(col("price")).alias("n"),
            max(col("price")).alias("top"),
        ],
        batch.schema(),
    )
    .unwrap();
    let mut op = window.create(subtask()).unwrap();
    g.bench_function("window_aggregate_tumbling", |b| {
        b.iter(|| {
            let mut out = Output::default();
            op.on_batch(batch.clone(), &mut out).unwrap();
        })
    });

    let source = NexmarkSource::try_new(NexmarkConfig::default(), NexmarkTable::Bid).unwrap();
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("nexmark_generate_bids", |b| {
        b.iter(|| source.generate(0..BATCH).unwrap().num_rows())
    });
    g.finish();
}

// criterion_group! generates an undocumented function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(micro, benches);
}
use group::micro;
criterion_main!(micro);
