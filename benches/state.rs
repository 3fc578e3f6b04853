//! State-heavy checkpoint benchmark: datagen with many distinct keys, checkpointed every
//! interval, into one of:
//!
//! - `window` (the default): one long tumbling window, count, sum, min, max, avg per key;
//! - `running`: the same aggregates per key without a window (a streaming `GROUP BY`, one
//!   output row per input row);
//! - `session`: the same aggregates per key in session windows with a one-hour gap (every
//!   key's session stays open, and a session keeps its rows until it closes);
//! - `join`: two such streams (other seeds) joined on `key` with a one-hour state TTL (every
//!   row of both sides stays in state);
//! - `window-join`: the same two streams in a one-hour tumbling window join;
//! - `topn`: the three highest values per key in a one-hour tumbling window.
//!
//! Prints, per checkpoint, its duration, total state and bytes added, then the process's
//! peak memory. With `restore`, starts from the latest checkpoint and prints how long the
//! state took to load.
//!
//! ```text
//! cargo bench --bench state -- run DIR [KEYS] [CHECKPOINTS] [INTERVAL_MS] [BUDGET_MB] [JOB]
//! cargo bench --bench state -- restore DIR [KEYS] [CHECKPOINTS] [INTERVAL_MS] [BUDGET_MB] [JOB]
//! ```
//!
//! `BUDGET_MB` 0 (the default) keeps state in memory; more keeps it in RocksDB with that much
//! in memory per subtask (`StateStorage::RocksDb`).

// A benchmark measures wall time.
#![allow(clippy::disallowed_methods)]

use oxflow::prelude::*;
use oxflow::runtime::checkpoint::{checkpoint_dir, checkpoint_ids, read_manifest};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn peak_rss_mib() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss as f64 / 1024.0
}

fn job(dir: &PathBuf, keys: u64, interval: Duration, budget_mb: usize, kind: &str) -> Job {
    let config = |seed| DatagenConfig {
        rows: None,
        key_cardinality: keys,
        // One hour of event time holds ~360 M rows: everything lands in one window.
        event_rate: 100_000,
        batch_size: 8192,
        seed,
        ..Default::default()
    };
    let aggregates = [
        count(col("value")).alias("n"),
        sum(col("value")).alias("total"),
        min(col("value")).alias("low"),
        max(col("value")).alias("high"),
        avg(col("value")).alias("mean"),
    ];
    let pipeline = Pipeline::new().with_parallelism(2);
    let keyed_stream = |seed| {
        pipeline
            .clone()
            .source(DatagenSource::try_new(config(seed)).unwrap())
            .with_watermarks(oxflow::runtime::watermark::WatermarkStrategy::bounded(
                "ts",
                Duration::from_secs(1),
            ))
            .unwrap()
            .key_by(["key"])
    };
    let hour = Duration::from_secs(3600);
    let keyed = keyed_stream(0);
    let stream = match kind {
        "window" => keyed
            .window(WindowSpec::tumbling(hour))
            .aggregate(aggregates),
        "running" => keyed.aggregate(aggregates),
        "session" => keyed
            .window(WindowSpec::session(hour))
            .aggregate(aggregates),
        "join" => keyed.join(keyed_stream(1)).regular(Some(hour)),
        "window-join" => keyed
            .join(keyed_stream(1))
            .window(WindowSpec::tumbling(hour)),
        "topn" => keyed.window(WindowSpec::tumbling(hour)).top_n("value", 3),
        other => panic!("JOB is window, running, session, join, window-join or topn, not {other}"),
    };
    stream
        .unwrap()
        .sink(BlackholeSink::default())
        .unwrap()
        .with_checkpoints(CheckpointConfig::new(dir, interval))
        .with_state_storage(match budget_mb {
            0 => StateStorage::Memory,
            mb => StateStorage::RocksDb {
                memory_budget: mb << 20,
            },
        })
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (Some(phase), Some(dir)) = (args.first(), args.get(1)) else {
        eprintln!(
            "usage: state run|restore DIR [KEYS] [CHECKPOINTS] [INTERVAL_MS] [BUDGET_MB] [JOB]"
        );
        return;
    };
    let dir = PathBuf::from(dir);
    let keys: u64 = args.get(2).map_or(10_000_000, |k| k.parse().expect("KEYS"));
    let wanted: u64 = args.get(3).map_or(5, |k| k.parse().expect("CHECKPOINTS"));
    let interval = Duration::from_millis(
        args.get(4)
            .map_or(1000, |k| k.parse().expect("INTERVAL_MS")),
    );
    let budget_mb: usize = args.get(5).map_or(0, |k| k.parse().expect("BUDGET_MB"));
    let kind = args.get(6).map_or("window", String::as_str);
    let mut job = job(&dir, keys, interval, budget_mb, kind);
    if phase == "restore" {
        job = job.restore_from(RestoreFrom::Latest);
    }
    let metrics = job.metrics();
    let completed = metrics.counter("checkpoints.completed");
    let restore_ms = metrics.counter("restore.state_ms");
    let cancel = job.cancel_handle();
    let started = Instant::now();
    let runner = std::thread::spawn(move || job.execute_blocking());
    let target = if phase == "restore" { 1 } else { wanted };
    while completed.get() < target && !runner.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let seconds = started.elapsed().as_secs_f64();
    cancel.cancel();
    let _ = runner.join();
    if phase == "restore" {
        println!(
            "{{\"phase\":\"restore\",\"job\":\"{kind}\",\"keys\":{keys},\"budget_mb\":{budget_mb},\"restore_state_ms\":{},\"peak_rss_mib\":{:.0}}}",
            restore_ms.get(),
            peak_rss_mib()
        );
        return;
    }
    let mut ids = checkpoint_ids(&dir).unwrap();
    ids.reverse();
    for id in ids {
        if let Ok(m) = read_manifest(&checkpoint_dir(&dir, id)) {
            println!(
                "{{\"checkpoint\":{id},\"duration_ms\":{},\"state_bytes\":{},\"new_state_bytes\":{}}}",
                m.duration_ms, m.state_bytes, m.new_state_bytes
            );
        }
    }
    // Both inputs of a join.
    let rows: u64 = metrics
        .snapshot()
        .iter()
        .filter(|(name, _)| name.ends_with("source-datagen.records_in"))
        .map(|(_, n)| n)
        .sum();
    println!(
        "{{\"phase\":\"run\",\"job\":\"{kind}\",\"keys\":{keys},\"budget_mb\":{budget_mb},\"records\":{rows},\"seconds\":{seconds:.1},\"events_per_sec\":{:.0},\"peak_rss_mib\":{:.0}}}",
        rows as f64 / seconds,
        peak_rss_mib()
    );
}
