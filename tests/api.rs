//! The pipeline API as a user meets it: errors at build time that name what is wrong, bad
//! input records, late records, idle sources, typed rows.

mod common;

use common::*;
use oxflow::arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
use oxflow::connectors::memory::MemorySource;
use oxflow::prelude::*;
use oxflow::runtime::clock::ManualClock;
use oxflow::runtime::source::{Source, SourcePoll, SourceReader};
use oxflow::runtime::SubtaskInfo;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

fn kv(keys: Vec<i64>, times: Vec<i64>) -> RecordBatch {
    let n = keys.len() as i64;
    RecordBatch::try_new(
        kv_schema(),
        vec![
            Arc::new(Int64Array::from(keys)),
            Arc::new(TimestampMillisecondArray::from(times)),
            Arc::new(Int64Array::from((0..n).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

fn kv_stream(batch: RecordBatch) -> Stream {
    Pipeline::new()
        .with_parallelism(2)
        .source(MemorySource::try_new(kv_schema(), &[batch], 10).unwrap())
        .with_parallelism(1)
        .with_watermarks(WatermarkStrategy::bounded("ts", Duration::ZERO))
        .unwrap()
}

fn err_text<T>(r: oxflow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_bad_expression_or_column_is_named_at_build_time() {
    let e = err_text(kv_stream(kv(vec![1], vec![1])).filter(col("nope").gt(lit(1))));
    assert!(
        e.contains("column `nope` not found") && e.contains("key, ts, value"),
        "{e}"
    );
    let e = err_text(kv_stream(kv(vec![1], vec![1])).filter(col("value") + lit(1)));
    assert!(e.contains("needs a boolean expression"), "{e}");
    let e = err_text(
        kv_stream(kv(vec![1], vec![1]))
            .key_by(["k"])
            .window(WindowSpec::tumbling(Duration::from_secs(1)))
            .aggregate([count(col("value"))]),
    );
    assert!(e.contains("column `k` not found"), "{e}");
    let e = err_text(
        kv_stream(kv(vec![1], vec![1]))
            .key_by(["key"])
            .window(WindowSpec::tumbling(Duration::from_secs(1)))
            .aggregate([sum(col("valu"))]),
    );
    assert!(e.contains("column `valu` not found"), "{e}");
    let e = err_text(
        kv_stream(kv(vec![1], vec![1]))
            .key_by(["key"])
            .window(WindowSpec::tumbling(Duration::ZERO))
            .aggregate([count(col("value"))]),
    );
    assert!(
        e.contains("invalid window: tumbling window size must be a positive"),
        "{e}"
    );
    let e = err_text(
        kv_stream(kv(vec![1], vec![1]))
            .key_by(["key"])
            .window(WindowSpec::tumbling(Duration::from_secs(1)))
            .aggregate([col("value")]),
    );
    assert!(e.contains("not an aggregate function"), "{e}");
    let e = err_text(
        Pipeline::new()
            .source(MemorySource::try_new(kv_schema(), &[kv(vec![1], vec![1])], 10).unwrap())
            .with_watermarks(WatermarkStrategy::bounded("time", Duration::ZERO)),
    );
    assert!(e.contains("event-time column `time` not found"), "{e}");
}

#[test]
fn late_records_go_to_the_side_output_and_are_counted() {
    // Window [0, 100) fires at watermark 99, reached after ts 100; then 5 and 50 are late.
    let late = CollectSink::new();
    let out = CollectSink::new();
    let job = kv_stream(kv(vec![1, 1, 1, 1, 1], vec![10, 100, 5, 150, 50]))
        .key_by(["key"])
        .window(WindowSpec::tumbling(Duration::from_millis(100)))
        .late_records(LateRecords::SideOutput(Arc::new(late.clone())))
        .aggregate([count(col("value")).alias("n")])
        .unwrap()
        .sink(out.clone())
        .unwrap();
    let metrics = job.metrics();
    job.execute_blocking().unwrap();
    let late_rows: usize = late.batches().iter().map(|b| b.num_rows()).sum();
    assert_eq!(late_rows, 2);
    assert_eq!(
        late.batches()[0].schema(),
        kv_schema(),
        "late records keep every column"
    );
    let counted: u64 = metrics
        .snapshot()
        .iter()
        .filter(|(n, _)| n.ends_with("late_records"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(counted, 2);
    #[derive(Deserialize, PartialEq, PartialOrd, Debug)]
    struct Row {
        window_start: i64,
        window_end: i64,
        key: i64,
        n: i64,
    }
    assert_eq!(
        sorted_rows::<Row>(&out.batches()),
        vec![
            Row {
                window_start: 0,
                window_end: 100,
                key: 1,
                n: 1
            },
            Row {
                window_start: 100,
                window_end: 200,
                key: 1,
                n: 2
            }
        ]
    );
}

#[test]
fn a_malformed_json_line_fails_the_job_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bids.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "{{\"key\": 1, \"ts\": 5, \"value\": 1}}").unwrap();
    writeln!(f, "{{\"key\": 1, \"ts\": 6, \"value\": \"oops\"}}").unwrap();
    writeln!(f, "{{\"key\": 2, \"ts\": 7, \"value\": 3}}").unwrap();
    drop(f);
    let run = |policy| {
        let out = CollectSink::new();
        let source =
            FileSource::try_new(vec![path.clone()], FileFormat::JsonLines, Some(kv_schema()))
                .unwrap()
                .with_bad_records(policy);
        let result = Pipeline::new()
            .with_parallelism(1)
            .source(source)
            .filter(col("value").gt_eq(lit(0)))
            .unwrap()
            .sink(out.clone())
            .unwrap()
            .execute_blocking();
        (
            result,
            out.batches().iter().map(|b| b.num_rows()).sum::<usize>(),
        )
    };
    let (result, _) = run(BadRecordPolicy::Fail);
    let e = result.unwrap_err().to_string();
    assert!(e.contains(&format!("{}:2:", path.display())), "{e}");
    let (result, rows) = run(BadRecordPolicy::Skip);
    result.unwrap();
    assert_eq!(rows, 2, "the lines around the bad one are kept");
}

/// A split that yields its batches, then waits forever (an unbounded source gone quiet), or
/// with `outage`, says its external system cannot be reached.
struct QuietAfter {
    batches: Vec<RecordBatch>,
    outage: bool,
}
struct QuietReader {
    batches: Vec<RecordBatch>,
    outage: bool,
}
impl Source for QuietAfter {
    fn name(&self) -> String {
        "quiet".into()
    }
    fn schema(&self) -> oxflow::arrow::datatypes::SchemaRef {
        kv_schema()
    }
    fn create_reader(&self, split: SubtaskInfo) -> oxflow::runtime::Result<Box<dyn SourceReader>> {
        let batches = if split.index == 0 {
            self.batches.clone()
        } else {
            vec![]
        };
        Ok(Box::new(QuietReader {
            batches,
            outage: self.outage,
        }))
    }
}
impl SourceReader for QuietReader {
    fn poll_next(&mut self) -> oxflow::runtime::Result<SourcePoll> {
        Ok(match self.batches.pop() {
            Some(b) => SourcePoll::Batch(b),
            None if self.outage => SourcePoll::Unavailable(Duration::from_millis(10)),
            None => SourcePoll::Pending(Duration::from_millis(10)),
        })
    }
}

fn run_until_output(idle: Option<Duration>, polls: usize, outage: bool) -> usize {
    let out = CollectSink::new();
    let mut strategy = WatermarkStrategy::bounded("ts", Duration::ZERO);
    if let Some(t) = idle {
        strategy = strategy.with_idle_timeout(t);
    }
    let job = Pipeline::new()
        .with_parallelism(2)
        .source(QuietAfter {
            batches: vec![kv(vec![1, 2], vec![10, 250])],
            outage,
        })
        .with_watermarks(strategy)
        .unwrap()
        .key_by(["key"])
        .window(WindowSpec::tumbling(Duration::from_millis(100)))
        .aggregate([count(col("value")).alias("n")])
        .unwrap()
        .sink(out.clone())
        .unwrap()
        .with_clock(Arc::new(ManualClock::new()));
    let cancel = job.cancel_handle();
    let running = std::thread::spawn(move || job.execute_blocking());
    // The manual clock runs as fast as the sources poll, so idleness comes within a few
    // polls; give the threads a bounded number of chances (up to 10 s) to deliver.
    for _ in 0..polls {
        if !out.batches().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cancel.cancel();
    assert!(
        running.join().unwrap().is_err(),
        "a cancelled job reports it was cancelled"
    );
    out.batches().iter().map(|b| b.num_rows()).sum()
}

#[test]
fn an_idle_split_stops_holding_back_the_watermark() {
    assert_eq!(
        run_until_output(Some(Duration::from_millis(100)), 2000, false),
        1,
        "window [0,100) of key 1 fires"
    );
}

#[test]
fn without_idleness_a_quiet_split_holds_back_every_window() {
    assert_eq!(run_until_output(None, 100, false), 0);
}

#[test]
fn an_unavailable_split_is_not_idle_and_holds_back_the_watermark() {
    // As long as the idle test waits for its output, and longer than the idle timeout.
    assert_eq!(
        run_until_output(Some(Duration::from_millis(100)), 400, true),
        0
    );
}

#[derive(Serialize, Deserialize)]
struct Reading {
    key: i64,
    ts: i64,
    value: i64,
}
impl TypedRow for Reading {
    fn schema() -> oxflow::arrow::datatypes::SchemaRef {
        kv_schema()
    }
}

#[test]
fn typed_rows_flow_through_a_closure() {
    let batches = collect(
        kv_stream(kv(vec![1, 2, 3], vec![1, 2, 3]))
            .flat_map_rows("double-odd", |r: Reading| {
                if r.key % 2 == 1 {
                    vec![Reading {
                        value: r.value * 10,
                        ..r
                    }]
                } else {
                    vec![]
                }
            })
            .unwrap(),
    );
    #[derive(Deserialize, PartialEq, PartialOrd, Debug)]
    struct Row {
        key: i64,
        ts: i64,
        value: i64,
    }
    assert_eq!(
        sorted_rows::<Row>(&batches),
        vec![
            Row {
                key: 1,
                ts: 1,
                value: 0
            },
            Row {
                key: 3,
                ts: 3,
                value: 20
            }
        ]
    );
}

#[test]
fn public_types_are_send() {
    fn send<T: Send>() {}
    send::<Job>();
    send::<Stream>();
    send::<oxflow::OxflowError>();
}

#[test]
fn select_keeps_the_order_asked_for_even_when_pushed_into_the_source() {
    let run = |columns: Vec<&str>| {
        let source = NexmarkSource::try_new(
            NexmarkConfig {
                events: Some(500),
                ..Default::default()
            },
            NexmarkTable::Bid,
        )
        .unwrap();
        collect(
            Pipeline::new()
                .with_parallelism(1)
                .source(source)
                .select(columns.iter().map(|c| col(*c)))
                .unwrap(),
        )
    };
    let reversed = run(vec!["price", "auction"]);
    let names: Vec<String> = reversed[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["price", "auction"]);
    let in_order = run(vec!["auction", "price"]);
    assert_eq!(
        in_order[0].column(0),
        reversed[0].column(1),
        "the same values either way"
    );
}

/// A sink that takes its time with every batch.
struct SlowSink;
impl oxflow::runtime::sink::Sink for SlowSink {
    fn name(&self) -> String {
        "slow".into()
    }
    fn create_writer(
        &self,
        _: SubtaskInfo,
        _: oxflow::arrow::datatypes::SchemaRef,
    ) -> oxflow::runtime::Result<Box<dyn oxflow::runtime::sink::SinkWriter>> {
        Ok(Box::new(SlowSink))
    }
}
impl oxflow::runtime::sink::SinkWriter for SlowSink {
    fn write(&mut self, _: &RecordBatch) -> oxflow::runtime::Result<()> {
        std::thread::sleep(Duration::from_millis(10));
        Ok(())
    }
    fn finish(&mut self) -> oxflow::runtime::Result<Option<oxflow::runtime::sink::PendingCommit>> {
        Ok(None)
    }
}

#[test]
fn a_slow_sink_backpressures_the_source_through_bounded_channels() {
    let source = DatagenSource::try_new(DatagenConfig {
        rows: Some(3_000),
        batch_size: 100,
        ..Default::default()
    })
    .unwrap();
    let job = Pipeline::new()
        .with_parallelism(1)
        .with_channel_capacity(1)
        .source(source)
        .rebalance(1)
        .sink(SlowSink)
        .unwrap();
    let metrics = job.metrics();
    job.execute_blocking().unwrap();
    // 30 batches, 10 ms each at the sink, one batch of buffer: the source must have waited.
    let waited = metrics
        .get("stage0.source-datagen.backpressure_ms")
        .unwrap();
    assert!(waited > 0, "the source never waited for the sink");
    assert_eq!(metrics.get("stage1.rebalance.records_in"), Some(3_000));
}

#[test]
fn datagen_through_rebalance_and_key_by_counts_every_row_once() {
    let source = DatagenSource::try_new(DatagenConfig {
        rows: Some(10_000),
        key_cardinality: 17,
        batch_size: 333,
        ..Default::default()
    })
    .unwrap();
    let batches = collect(
        Pipeline::new()
            .with_parallelism(3)
            .source(source)
            .with_watermarks(WatermarkStrategy::bounded("ts", Duration::ZERO))
            .unwrap()
            .rebalance(2)
            .key_by(["key"])
            .window(WindowSpec::tumbling(Duration::from_secs(3600)))
            .aggregate([count(col("value")).alias("n")])
            .unwrap(),
    );
    #[derive(Deserialize, PartialEq, PartialOrd, Debug)]
    struct Row {
        window_start: i64,
        window_end: i64,
        key: i64,
        n: i64,
    }
    let rows: Vec<Row> = sorted_rows(&batches);
    assert_eq!(
        rows.len(),
        17,
        "one row per key: 10,000 rows at 100 K/s fit one hour"
    );
    assert_eq!(rows.iter().map(|r| r.n).sum::<i64>(), 10_000);
}

/// A user-defined aggregate with only a row accumulator: the spread (max - min) of values.
#[derive(Debug, Default)]
struct Spread {
    lo: Option<i64>,
    hi: Option<i64>,
}

impl oxflow::datafusion::logical_expr::Accumulator for Spread {
    fn update_batch(
        &mut self,
        values: &[oxflow::arrow::array::ArrayRef],
    ) -> oxflow::datafusion::error::Result<()> {
        let v = values[0]
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("declared Int64");
        for x in v.iter().flatten() {
            self.lo = Some(self.lo.map_or(x, |l| l.min(x)));
            self.hi = Some(self.hi.map_or(x, |h| h.max(x)));
        }
        Ok(())
    }
    fn evaluate(
        &mut self,
    ) -> oxflow::datafusion::error::Result<oxflow::datafusion::scalar::ScalarValue> {
        Ok(oxflow::datafusion::scalar::ScalarValue::Int64(
            self.hi.zip(self.lo).map(|(h, l)| h - l),
        ))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
    fn state(
        &mut self,
    ) -> oxflow::datafusion::error::Result<Vec<oxflow::datafusion::scalar::ScalarValue>> {
        use oxflow::datafusion::scalar::ScalarValue::Int64;
        Ok(vec![Int64(self.lo), Int64(self.hi)])
    }
    fn merge_batch(
        &mut self,
        states: &[oxflow::arrow::array::ArrayRef],
    ) -> oxflow::datafusion::error::Result<()> {
        self.update_batch(&states[0..1])?;
        self.update_batch(&states[1..2])
    }
}

#[test]
fn a_user_defined_aggregate_runs_in_windows() {
    use oxflow::arrow::datatypes::DataType;
    use oxflow::datafusion::logical_expr::{create_udaf, Volatility};
    let spread = create_udaf(
        "spread",
        vec![DataType::Int64],
        Arc::new(DataType::Int64),
        Volatility::Immutable,
        Arc::new(|_| Ok(Box::new(Spread::default()))),
        Arc::new(vec![DataType::Int64, DataType::Int64]),
    );
    // Hopping in panes exercises state() and merge_batch() too.
    let batches = collect(
        kv_stream(kv(vec![1, 1, 2, 1, 2], vec![10, 20, 30, 150, 160]))
            .key_by(["key"])
            .window(WindowSpec::hopping(
                Duration::from_millis(200),
                Duration::from_millis(100),
            ))
            .aggregate([spread.call(vec![col("value")]).alias("spread")])
            .unwrap(),
    );
    #[derive(Deserialize, PartialEq, PartialOrd, Debug)]
    struct Row {
        window_start: i64,
        window_end: i64,
        key: i64,
        spread: i64,
    }
    // Values are the row numbers 0..5: key 1 has 0, 1 (first 100 ms) and 3; key 2 has 2 and 4.
    assert_eq!(
        sorted_rows::<Row>(&batches),
        vec![
            Row {
                window_start: -100,
                window_end: 100,
                key: 1,
                spread: 1
            },
            Row {
                window_start: -100,
                window_end: 100,
                key: 2,
                spread: 0
            },
            Row {
                window_start: 0,
                window_end: 200,
                key: 1,
                spread: 3
            },
            Row {
                window_start: 0,
                window_end: 200,
                key: 2,
                spread: 2
            },
            Row {
                window_start: 100,
                window_end: 300,
                key: 1,
                spread: 0
            },
            Row {
                window_start: 100,
                window_end: 300,
                key: 2,
                spread: 0
            },
        ]
    );
}

#[test]
fn a_union_merges_two_streams_and_windows_after_it_see_both() {
    // Left: keys 0..4 at times 0..40; right: the same keys at times 40..80. Windows of 20 ms
    // after the union count each key's records from both.
    let left = kv((0..40).map(|i| i % 4).collect(), (0..40).collect());
    let right = kv((0..40).map(|i| i % 4).collect(), (40..80).collect());
    let out = collect(
        kv_stream(left)
            .union(kv_stream(right))
            .unwrap()
            .key_by(["key"])
            .window(WindowSpec::tumbling(Duration::from_millis(20)))
            .aggregate([count(col("value")).alias("n")])
            .unwrap(),
    );
    #[derive(Deserialize, PartialEq, PartialOrd, Debug)]
    struct Row {
        window_start: i64,
        key: i64,
        n: i64,
    }
    let rows: Vec<Row> = sorted_rows(&out);
    assert_eq!(rows.len(), 16, "4 windows of 4 keys");
    assert!(rows.iter().all(|r| r.n == 5), "{rows:?}");

    let other = Pipeline::new().source(
        MemorySource::try_new(
            bid_schema(),
            &[bid_batch(vec![1], vec![1], vec![1], vec![1])],
            1,
        )
        .unwrap(),
    );
    let err = err_text(kv_stream(kv(vec![1], vec![1])).union(other));
    assert!(err.contains("union: the streams' columns differ"), "{err}");
}

#[test]
fn joins_are_wired_through_the_api_and_bad_ones_named() {
    // Left rows at times 0..20 (keys 0..4); right rows 5 ms later, same keys, one key (3)
    // missing on the right: an interval join [5, 5] pairs each left row with the right
    // row of its key 5 ms later; left outer also emits key 3's rows alone.
    let left = kv((0..20).map(|i| i % 4).collect(), (0..20).collect());
    let right = kv(
        (0..20).map(|i| i % 4).filter(|k| *k != 3).collect(),
        (0..20).filter(|i| i % 4 != 3).map(|i| i + 5).collect(),
    );
    let joined = |outer: bool| {
        let j = kv_stream(left.clone())
            .key_by(["key"])
            .join(kv_stream(right.clone()).key_by(["key"]));
        let j = if outer { j.left_outer() } else { j };
        collect(j.interval(5, 5).unwrap())
    };
    #[derive(Deserialize, PartialEq, PartialOrd, Debug)]
    struct Pair {
        key: i64,
        ts: i64,
        right_key: Option<i64>,
        right_ts: Option<i64>,
    }
    let inner: Vec<Pair> = sorted_rows(&joined(false));
    assert_eq!(inner.len(), 15);
    assert!(inner
        .iter()
        .all(|p| p.right_key == Some(p.key) && p.right_ts == Some(p.ts + 5)));
    let outer: Vec<Pair> = sorted_rows(&joined(true));
    assert_eq!(outer.len(), 20);
    assert_eq!(outer.iter().filter(|p| p.right_key.is_none()).count(), 5);

    let err = err_text(
        kv_stream(kv(vec![1], vec![1]))
            .key_by(["ts"])
            .join(kv_stream(kv(vec![1], vec![1])).key_by(["key"]))
            .regular(None),
    );
    assert!(
        err.contains("key `ts` is Timestamp(ms) on the left but `key` is Int64"),
        "{err}"
    );
}

/// The q5-like job the restore tests change: counts (or `aggregate`) per key in 1 s windows.
fn keyed_windows(aggregate: Expr, dir: &std::path::Path) -> Job {
    let times: Vec<i64> = (0..2000).map(|i| i * 10).collect();
    let keys: Vec<i64> = (0..2000).map(|i| i % 7).collect();
    kv_stream(kv(keys, times))
        .key_by(["key"])
        .window(WindowSpec::tumbling(Duration::from_secs(1)))
        .aggregate([aggregate.alias("n")])
        .unwrap()
        .sink(CollectSink::new())
        .unwrap()
        .with_checkpoints(CheckpointConfig::new(dir, Duration::from_millis(1)))
}

#[test]
fn restoring_a_checkpoint_into_a_changed_job_fails_before_reading_state() {
    let tmp = tempfile::tempdir().unwrap();
    keyed_windows(count(col("value")), tmp.path())
        .execute_blocking()
        .unwrap();
    // Same operators and names, but the state now holds averages, not counts.
    let e = err_text(
        keyed_windows(avg(col("value")), tmp.path())
            .restore_from(RestoreFrom::Latest)
            .execute_blocking(),
    );
    assert!(
        e.contains("was taken from a different job") && e.contains("kept state of schema"),
        "{e}"
    );
    // The job that took it restores from it.
    keyed_windows(count(col("value")), tmp.path())
        .restore_from(RestoreFrom::Latest)
        .execute_blocking()
        .unwrap();
}

/// Counts per key in tumbling windows of `window` over `keys` at `times`, with `strategy`:
/// the sink and the job's metrics, or the job's error.
fn count_windows(
    keys: Vec<i64>,
    times: Vec<i64>,
    strategy: WatermarkStrategy,
    window: Duration,
) -> oxflow::Result<(CollectSink, Vec<(String, u64)>)> {
    let out = CollectSink::new();
    let job = Pipeline::new()
        .with_parallelism(1)
        .source(MemorySource::try_new(kv_schema(), &[kv(keys, times)], 1).unwrap())
        .with_watermarks(strategy)
        .unwrap()
        .key_by(["key"])
        .window(WindowSpec::tumbling(window))
        .aggregate([count(col("value")).alias("n")])
        .unwrap()
        .sink(out.clone())
        .unwrap();
    let metrics = job.metrics();
    job.execute_blocking()?;
    Ok((out, metrics.snapshot()))
}

/// Records the sources dropped for an event time out of range.
fn out_of_range(metrics: &[(String, u64)]) -> u64 {
    metrics
        .iter()
        .filter(|(k, _)| k.ends_with(".event_time_out_of_range"))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn an_event_time_out_of_range_is_a_clear_error_or_skipped_and_counted() {
    use oxflow::runtime::watermark::OutOfRange;
    let times = vec![1_000, i64::MAX - 1, 2_000, -i64::MAX];
    let run = |policy: OutOfRange| {
        let mut strategy = WatermarkStrategy::bounded("ts", Duration::ZERO);
        strategy.out_of_range = policy;
        count_windows(
            vec![1, 2, 3, 4],
            times.clone(),
            strategy,
            Duration::from_secs(1),
        )
    };
    let e = err_text(run(OutOfRange::Fail));
    assert!(
        e.contains(&format!("event time {}", i64::MAX - 1)) && e.contains("years 1 to 9999"),
        "{e}"
    );
    let (out, metrics) = run(OutOfRange::Skip).unwrap();
    let rows: usize = out.batches().iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 2, "the windows of the two records in range");
    assert_eq!(out_of_range(&metrics), 2);
}

#[test]
#[allow(clippy::disallowed_methods)] // the wall clock the bound is measured against
fn a_record_far_ahead_of_the_wall_clock_does_not_close_every_window() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let year = 365 * 24 * 3600 * 1000;
    // Two records now, one a year ahead (a bad clock upstream), then one more now.
    let times = vec![now, now + 10, now + year, now + 20];
    let strategy = WatermarkStrategy::bounded("ts", Duration::ZERO).with_max_ahead_of_wall_clock(
        Duration::from_secs(3600),
        oxflow::runtime::watermark::OutOfRange::Skip,
    );
    let (out, metrics) =
        count_windows(vec![1, 1, 1, 1], times, strategy, Duration::from_secs(60)).unwrap();
    // Had the future record passed, the last one would have been late and dropped.
    let counted: i64 = out
        .batches()
        .iter()
        .map(|b| {
            b.column_by_name("n")
                .unwrap()
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .iter()
                .sum::<i64>()
        })
        .sum();
    assert_eq!(counted, 3);
    assert_eq!(out_of_range(&metrics), 1);
}

/// Two splits of very different lengths: split 0 reads batches `0..SHORT` and ends at once;
/// split 1 reads `SHORT..total`, one batch per millisecond or so, so that many checkpoints
/// fall after split 0 has ended. `ended` is set when split 0 ends.
#[derive(Clone)]
struct Uneven {
    batches: Arc<Vec<RecordBatch>>,
    ended: Arc<std::sync::atomic::AtomicBool>,
}

const SHORT: usize = 4;

struct UnevenReader {
    source: Uneven,
    index: usize,
    next: usize,
    end: usize,
    paced: bool,
}

impl Source for Uneven {
    fn name(&self) -> String {
        "uneven".into()
    }
    fn schema(&self) -> oxflow::arrow::datatypes::SchemaRef {
        kv_schema()
    }
    fn restore_reader(
        &self,
        split: SubtaskInfo,
        positions: &[serde_json::Value],
    ) -> oxflow::runtime::Result<Box<dyn SourceReader>> {
        assert_eq!(split.parallelism, 2, "the test runs two splits");
        let (start, end) = match split.index {
            0 => (0, SHORT),
            _ => (SHORT, self.batches.len()),
        };
        let next = positions
            .get(split.index)
            .map_or(start, |p| p.as_u64().unwrap() as usize);
        Ok(Box::new(UnevenReader {
            source: self.clone(),
            index: split.index,
            next,
            end,
            paced: false,
        }))
    }
}

impl SourceReader for UnevenReader {
    fn poll_next(&mut self) -> oxflow::runtime::Result<SourcePoll> {
        if self.next == self.end {
            if self.index == 0 {
                self.source
                    .ended
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            return Ok(SourcePoll::Finished);
        }
        // Every other poll waits a millisecond: the long split takes a while.
        self.paced = !self.paced;
        if self.index == 1 && self.paced {
            return Ok(SourcePoll::Pending(Duration::from_millis(1)));
        }
        self.next += 1;
        Ok(SourcePoll::Batch(
            self.source.batches[self.next - 1].clone(),
        ))
    }
    fn position(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!(self.next))
    }
}

/// Counts per key in 100 ms windows of the uneven source, into files.
fn uneven_job(source: &Uneven, out: &std::path::Path) -> Job {
    Pipeline::new()
        .with_parallelism(2)
        .source(source.clone())
        .with_watermarks(WatermarkStrategy::bounded("ts", Duration::from_millis(50)))
        .unwrap()
        .key_by(["key"])
        .window(WindowSpec::tumbling(Duration::from_millis(100)))
        .aggregate([count(col("value")).alias("n"), sum(col("value")).alias("s")])
        .unwrap()
        .sink(FileSink::try_new(out).unwrap())
        .unwrap()
}

#[test]
fn checkpoints_go_on_after_a_split_ends_and_a_restore_from_one_gives_the_same_output() {
    // 600 batches of 10 records, 1 ms of event time apart; split 0 has the first 4.
    let batches: Vec<RecordBatch> = (0..600)
        .map(|b| {
            let keys = (0..10).map(|i| (b * 10 + i) % 13).collect();
            let times = (0..10).map(|i| b * 10 + i).collect();
            kv(keys, times)
        })
        .collect();
    let source = Uneven {
        batches: Arc::new(batches),
        ended: Default::default(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight");
    uneven_job(&source, &straight).execute_blocking().unwrap();
    let expected = committed_lines(&straight);
    assert!(expected.len() > 60, "{} windows", expected.len());

    // Checkpointed, and killed once two checkpoints have completed after split 0 ended.
    let (out, chk) = (tmp.path().join("out"), tmp.path().join("chk"));
    let checkpoints = CheckpointConfig::new(&chk, Duration::from_millis(10));
    let source = Uneven {
        ended: Default::default(),
        ..source
    };
    let job = uneven_job(&source, &out).with_checkpoints(checkpoints.clone());
    let completed = job.metrics().counter("checkpoints.completed");
    let cancel = job.cancel_handle();
    let runner = std::thread::spawn(move || job.execute_blocking());
    let mut after_end = None;
    for _ in 0..10_000 {
        if runner.is_finished() {
            break;
        }
        if source.ended.load(std::sync::atomic::Ordering::SeqCst) {
            let since = *after_end.get_or_insert(completed.get());
            if completed.get() >= since + 2 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cancel.cancel();
    let killed = runner.join().unwrap();
    assert!(killed.is_err(), "the job was killed before its end");
    let since = after_end.expect("split 0 ended");
    assert!(
        completed.get() >= since + 2,
        "checkpoints stopped when split 0 ended: {} completed, {since} when it ended",
        completed.get()
    );
    let report = uneven_job(&source, &out)
        .with_checkpoints(checkpoints)
        .restore_from(RestoreFrom::Latest)
        .execute_blocking()
        .unwrap();
    assert!(report.restored_from.is_some());
    assert_eq!(committed_lines(&out), expected);
}
