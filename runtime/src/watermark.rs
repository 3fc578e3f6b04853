//! Event-time watermarks: how a source split generates them, and how a task with several
//! inputs combines them (the minimum over its live inputs).

use crate::error::{Result, RuntimeError};
use crate::message::{EventTime, Message};
use datafusion::arrow::array::{Array, Int64Array, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use std::collections::BTreeMap;
use std::time::Duration;

/// How a source derives watermarks from its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkStrategy {
    /// The event-time column: `Timestamp(Millisecond)` or `Int64` milliseconds.
    pub time_column: String,
    /// Bounded out-of-orderness: records up to this much older than the newest one seen are
    /// still on time. The watermark is `max_event_time - delay - 1` (as in Flink).
    pub max_out_of_orderness: Duration,
    /// A split with no data for this long is marked idle and stops holding back the
    /// watermark downstream. `None`: never idle.
    pub idle_timeout: Option<Duration>,
    /// Records whose event time is more than this ahead of the wall clock are not trusted
    /// to advance the watermark: they go to [`WatermarkStrategy::out_of_range`] instead. One
    /// record stamped in the year 3000 would otherwise close every window of the split
    /// (Flink and Kafka Streams have no such guard). `None`: no bound.
    pub max_ahead_of_wall_clock: Option<Duration>,
    /// What happens to a record whose event time is out of range: beyond the bound above,
    /// or outside the years 1 to 9999 (where window arithmetic could overflow).
    pub out_of_range: OutOfRange,
}

/// What a source does with a record whose event time is out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutOfRange {
    /// Fail the job, naming the record's time and the bound (the default, as for any bad
    /// record).
    #[default]
    Fail,
    /// Drop the record and count it (`<stage>.event_time_out_of_range`).
    Skip,
}

/// The latest event time accepted: 9999-12-31T23:59:59.999Z. Far from `i64::MAX`, so that
/// window ends, lateness and out-of-orderness never overflow.
pub const MAX_EVENT_TIME: EventTime = 253_402_300_799_999;
/// The earliest event time accepted: 0001-01-01T00:00:00Z.
pub const MIN_EVENT_TIME: EventTime = -62_135_596_800_000;

impl WatermarkStrategy {
    /// Bounded out-of-orderness on `time_column`, never idle.
    pub fn bounded(time_column: impl Into<String>, max_out_of_orderness: Duration) -> Self {
        WatermarkStrategy {
            time_column: time_column.into(),
            max_out_of_orderness,
            idle_timeout: None,
            max_ahead_of_wall_clock: None,
            out_of_range: OutOfRange::Fail,
        }
    }
    /// Sends records more than `bound` ahead of the wall clock to `policy` instead of letting
    /// them advance the watermark.
    pub fn with_max_ahead_of_wall_clock(mut self, bound: Duration, policy: OutOfRange) -> Self {
        self.max_ahead_of_wall_clock = Some(bound);
        self.out_of_range = policy;
        self
    }

    /// Checks the event times of `batch` against the accepted range (and, with a bound, the
    /// wall clock at `now_ms`, milliseconds since the epoch): returns the batch without the
    /// rows out of range and how many were dropped, or an error naming the first one.
    pub fn screen(&self, batch: RecordBatch, now_ms: i64) -> Result<(RecordBatch, usize)> {
        let times = event_times(&batch, &self.time_column)?;
        let ahead = self
            .max_ahead_of_wall_clock
            .map(|b| now_ms.saturating_add(b.as_millis().min(i64::MAX as u128) as i64));
        let latest = ahead.map_or(MAX_EVENT_TIME, |a| a.min(MAX_EVENT_TIME));
        let in_range = |t: i64| (MIN_EVENT_TIME..=latest).contains(&t);
        if times.iter().all(|&t| in_range(t)) {
            return Ok((batch, 0));
        }
        if self.out_of_range == OutOfRange::Fail {
            let (row, t) = times
                .iter()
                .enumerate()
                .find(|(_, &t)| !in_range(t))
                .expect("one is out of range");
            let why = match ahead {
                Some(a) if *t <= MAX_EVENT_TIME && *t > a => format!(
                    "more than {:?} ahead of the wall clock ({now_ms})",
                    self.max_ahead_of_wall_clock.unwrap_or_default()
                ),
                _ => {
                    format!("outside the years 1 to 9999 ({MIN_EVENT_TIME} to {MAX_EVENT_TIME} ms)")
                }
            };
            return Err(RuntimeError::BadInput(format!(
                "event time {t} in column `{}` (row {row} of a batch) is {why}; skip such records with the watermark's out-of-range policy",
                self.time_column
            )));
        }
        let keep: datafusion::arrow::array::BooleanArray =
            times.iter().map(|&t| Some(in_range(t))).collect();
        let dropped = keep.false_count();
        let kept = datafusion::arrow::compute::filter_record_batch(&batch, &keep)?;
        Ok((kept, dropped))
    }
    /// Marks a split idle after `timeout` without data.
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }
}

/// The event times of `column` in `batch`, checked to be non-null milliseconds.
pub fn event_times<'a>(batch: &'a RecordBatch, column: &str) -> Result<&'a [i64]> {
    let array = batch.column_by_name(column).ok_or_else(|| {
        RuntimeError::InvalidJob(format!(
            "event-time column `{column}` not found; columns are {:?}",
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
        ))
    })?;
    if array.null_count() > 0 {
        let row = (0..array.len()).find(|&i| array.is_null(i)).unwrap_or(0);
        return Err(RuntimeError::BadInput(format!(
            "event-time column `{column}` is null at row {row} of a batch"
        )));
    }
    match array.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) => Ok(array
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .expect("type checked above")
            .values()),
        DataType::Int64 => Ok(array
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("type checked above")
            .values()),
        other => Err(RuntimeError::InvalidJob(format!(
            "event-time column `{column}` has type {other}; expected Timestamp(Millisecond) or Int64"
        ))),
    }
}

/// Generates the watermarks of one source split.
///
/// The watermark is tracked per record, not per batch: when a record arrives that is already
/// behind the watermark implied by the records before it, the batch is cut there and that
/// watermark is emitted first. So whether a record is late depends only on the order of
/// records in the split, never on how they were batched.
#[derive(Debug)]
pub struct WatermarkGenerator {
    strategy: WatermarkStrategy,
    delay: i64,
    max_event_time: EventTime,
    emitted: EventTime,
}

impl WatermarkGenerator {
    /// A generator that has seen nothing yet.
    pub fn new(strategy: WatermarkStrategy) -> Self {
        let delay = strategy.max_out_of_orderness.as_millis() as i64;
        WatermarkGenerator {
            strategy,
            delay,
            max_event_time: EventTime::MIN,
            emitted: EventTime::MIN,
        }
    }

    /// The largest event time seen so far (`None` before the first record), for checkpoints.
    pub fn max_event_time(&self) -> Option<EventTime> {
        (self.max_event_time != EventTime::MIN).then_some(self.max_event_time)
    }

    /// Goes on from a checkpoint: the largest event time the split had seen. The watermark it
    /// implies is emitted again before the next record.
    pub fn restore(&mut self, max_event_time: EventTime) {
        self.max_event_time = max_event_time;
    }

    fn watermark(&self) -> EventTime {
        self.max_event_time
            .saturating_sub(self.delay)
            .saturating_sub(1)
    }

    /// Turns a batch into the messages to send: the batch (possibly cut in pieces) with the
    /// watermarks it implies.
    pub fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let times = event_times(&batch, &self.strategy.time_column)?;
        let mut start = 0;
        for (i, &t) in times.iter().enumerate() {
            let before = self.watermark();
            if t <= before && before > self.emitted {
                if i > start {
                    out.push(Message::Data(batch.slice(start, i - start)));
                }
                out.push(Message::Watermark(before));
                self.emitted = before;
                start = i;
            }
            self.max_event_time = self.max_event_time.max(t);
        }
        if start == 0 {
            out.push(Message::Data(batch));
        } else if start < times.len() {
            out.push(Message::Data(batch.slice(start, times.len() - start)));
        }
        let wm = self.watermark();
        if wm > self.emitted {
            out.push(Message::Watermark(wm));
            self.emitted = wm;
        }
        Ok(())
    }
}

/// The watermarks of a source split that reads several partitions (a Kafka split reads some
/// of a topic's partitions, each in its own order): a generator per partition, combined as a
/// task combines its inputs, so the split's watermark is the least over its partitions that
/// are not idle. One fast partition then cannot make a slow one's records late.
#[derive(Debug)]
pub struct PartitionWatermarks {
    strategy: WatermarkStrategy,
    /// What a checkpoint recorded per partition, for partitions that appear later.
    restored: BTreeMap<String, EventTime>,
    /// Name, generator and the time of the last record of each partition, in the reader's
    /// partition order.
    partitions: Vec<(String, WatermarkGenerator, Duration)>,
    combined: InputWatermarks,
    scratch: Vec<Message>,
}

impl PartitionWatermarks {
    /// Tracks no partition yet. `restored`: the largest event time of each partition at the
    /// checkpoint restored from (empty when starting afresh); a partition named there goes on
    /// from it once the reader names it.
    pub fn new(strategy: WatermarkStrategy, restored: BTreeMap<String, EventTime>) -> Self {
        PartitionWatermarks {
            strategy,
            restored,
            partitions: Vec::new(),
            combined: InputWatermarks::new(0),
            scratch: Vec::new(),
        }
    }

    /// Goes on from a checkpoint taken at the split's watermark `w`: it is not reported again.
    pub fn restore_watermark(&mut self, w: EventTime) {
        self.combined.restore(w);
    }

    /// Adds the partitions of `names` not tracked yet (a reader discovered them); `now` is
    /// the clock's time, from which their idle timeout counts.
    pub fn sync(&mut self, names: &[String], now: Duration) {
        for name in &names[self.partitions.len().min(names.len())..] {
            let mut generator = WatermarkGenerator::new(self.strategy.clone());
            if let Some(&t) = self.restored.get(name) {
                generator.restore(t);
            }
            self.partitions.push((name.clone(), generator, now));
            self.combined.add_input();
        }
    }

    /// The largest event time each partition has seen, for a checkpoint.
    pub fn max_event_times(&self) -> BTreeMap<String, EventTime> {
        self.partitions
            .iter()
            .filter_map(|(name, g, _)| g.max_event_time().map(|t| (name.clone(), t)))
            .collect()
    }

    /// Turns a batch of partition `partition` (an index into the names given to
    /// [`PartitionWatermarks::sync`]) into messages: its data, and the split's watermark
    /// whenever it advances.
    pub fn on_batch(
        &mut self,
        partition: usize,
        batch: RecordBatch,
        now: Duration,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        let Some((_, generator, last)) = self.partitions.get_mut(partition) else {
            return Err(RuntimeError::InvalidJob(format!(
                "a source reader sent a batch of partition {partition} but names only {}",
                self.partitions.len()
            )));
        };
        *last = now;
        self.combined.on_data(partition);
        generator.on_batch(batch, &mut self.scratch)?;
        for message in self.scratch.drain(..) {
            match message {
                Message::Watermark(w) => {
                    let update = self.combined.on_watermark(partition, w);
                    if let Some(w) = update.advanced {
                        out.push(Message::Watermark(w));
                    }
                }
                other => out.push(other),
            }
        }
        Ok(())
    }

    /// The split's source is unavailable at `now` (an outage): no partition's idle timeout
    /// counts the outage, so none becomes idle because of it.
    pub fn hold(&mut self, now: Duration) {
        for (_, _, last) in &mut self.partitions {
            *last = (*last).max(now);
        }
    }

    /// Marks partitions without data for the idle timeout as idle, and returns what to send:
    /// the watermark if that advanced it, and `Idle` if every partition is now idle.
    pub fn on_quiet(&mut self, now: Duration, out: &mut Vec<Message>) {
        let Some(timeout) = self.strategy.idle_timeout else {
            return;
        };
        for (i, (_, _, last)) in self.partitions.iter().enumerate() {
            if !self.combined.idle[i] && now.saturating_sub(*last) >= timeout {
                let update = self.combined.on_idle(i);
                if let Some(w) = update.advanced {
                    out.push(Message::Watermark(w));
                }
                if update.idle {
                    out.push(Message::Idle);
                }
            }
        }
    }
}

/// Combines the watermarks of a task's inputs: the minimum over inputs that are neither idle
/// nor finished, never moving backwards.
#[derive(Debug)]
pub struct InputWatermarks {
    watermarks: Vec<EventTime>,
    idle: Vec<bool>,
    ended: Vec<bool>,
    current: EventTime,
    all_idle: bool,
}

/// What a task should forward after an input's control message.
#[derive(Debug, PartialEq, Eq, Default)]
pub struct WatermarkUpdate {
    /// The combined watermark advanced to this.
    pub advanced: Option<EventTime>,
    /// Every live input is now idle: the task is idle too (sent after `advanced`).
    pub idle: bool,
}

#[cfg(test)]
impl WatermarkUpdate {
    fn advanced(w: EventTime) -> Self {
        WatermarkUpdate {
            advanced: Some(w),
            idle: false,
        }
    }
}

impl InputWatermarks {
    /// Tracks `inputs` inputs, none seen yet.
    pub fn new(inputs: usize) -> Self {
        InputWatermarks {
            watermarks: vec![EventTime::MIN; inputs],
            idle: vec![false; inputs],
            ended: vec![false; inputs],
            current: EventTime::MIN,
            all_idle: false,
        }
    }

    /// Goes on from a checkpoint taken at watermark `w`: nothing at or below it is reported
    /// again.
    pub fn restore(&mut self, w: EventTime) {
        self.current = self.current.max(w);
    }

    /// The combined watermark so far.
    pub fn current(&self) -> EventTime {
        self.current
    }

    /// One more input, not seen yet (it holds the watermark back until it sends one or idles).
    pub fn add_input(&mut self) {
        self.watermarks.push(EventTime::MIN);
        self.idle.push(false);
        self.ended.push(false);
    }

    /// Whether input `i` has ended.
    pub fn ended(&self, i: usize) -> bool {
        self.ended[i]
    }

    /// Whether every input has ended.
    pub fn all_ended(&self) -> bool {
        self.ended.iter().all(|&e| e)
    }

    /// Input `i` sent data: it is active again.
    pub fn on_data(&mut self, i: usize) {
        self.idle[i] = false;
        self.all_idle = false;
    }

    /// Input `i` sent a watermark.
    pub fn on_watermark(&mut self, i: usize, wm: EventTime) -> WatermarkUpdate {
        self.watermarks[i] = self.watermarks[i].max(wm);
        self.idle[i] = false;
        self.recompute()
    }

    /// Input `i` went idle.
    pub fn on_idle(&mut self, i: usize) -> WatermarkUpdate {
        self.idle[i] = true;
        self.recompute()
    }

    /// Input `i` ended.
    pub fn on_end(&mut self, i: usize) -> WatermarkUpdate {
        self.ended[i] = true;
        self.recompute()
    }

    fn recompute(&mut self) -> WatermarkUpdate {
        let live: Vec<usize> = (0..self.watermarks.len())
            .filter(|&i| !self.ended[i])
            .collect();
        let active = live
            .iter()
            .filter(|&&i| !self.idle[i])
            .map(|&i| self.watermarks[i])
            .min();
        let mut update = WatermarkUpdate::default();
        let target = match active {
            Some(min) => {
                self.all_idle = false;
                min
            }
            None => {
                // Every live input is idle (or all ended): as Flink does, let event time
                // advance to the furthest any input has reached, then go idle.
                if !live.is_empty() && !self.all_idle {
                    self.all_idle = true;
                    update.idle = true;
                }
                live.iter()
                    .map(|&i| self.watermarks[i])
                    .max()
                    .unwrap_or(EventTime::MIN)
            }
        };
        if target > self.current {
            self.current = target;
            update.advanced = Some(target);
        }
        update
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn batch(ts: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("t", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(ts.to_vec()))]).unwrap()
    }

    fn run(batches: &[&[i64]]) -> Vec<String> {
        let mut g =
            WatermarkGenerator::new(WatermarkStrategy::bounded("t", Duration::from_millis(10)));
        let mut out = vec![];
        for b in batches {
            g.on_batch(batch(b), &mut out).unwrap();
        }
        out.iter()
            .map(|m| match m {
                Message::Data(b) => format!("data{:?}", event_times(b, "t").unwrap()),
                Message::Watermark(w) => format!("wm{w}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn watermark_is_max_minus_delay_minus_one() {
        assert_eq!(run(&[&[100, 105, 103]]), ["data[100, 105, 103]", "wm94"]);
    }

    #[test]
    fn batch_is_cut_before_a_record_beyond_the_bound() {
        // 50 is 60 ms behind 110: the watermark 99 must precede it whatever the batching.
        let one = run(&[&[100, 110, 50, 111]]);
        assert_eq!(one, ["data[100, 110]", "wm99", "data[50, 111]", "wm100"]);
        let split = run(&[&[100], &[110], &[50], &[111]]);
        let wms = |v: &[String]| {
            v.iter()
                .filter(|s| s.starts_with("wm"))
                .cloned()
                .collect::<Vec<_>>()
        };
        // Per-record batching emits more watermarks, but the one right before 50 is the same.
        let pos = split.iter().position(|s| s == "data[50]").unwrap();
        assert_eq!(split[pos - 1], "wm99");
        assert!(wms(&split).contains(&"wm100".to_string()));
    }

    fn show(out: &mut Vec<Message>) -> Vec<String> {
        out.drain(..)
            .map(|m| match m {
                Message::Data(b) => format!("data{:?}", event_times(&b, "t").unwrap()),
                Message::Watermark(w) => format!("wm{w}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn partitions_hold_the_split_watermark_at_the_slowest_until_idle() {
        let strategy = WatermarkStrategy::bounded("t", Duration::from_millis(10))
            .with_idle_timeout(Duration::from_secs(5));
        let mut p = PartitionWatermarks::new(strategy.clone(), BTreeMap::new());
        let names = ["t/0".to_string(), "t/1".to_string()];
        let (s0, s1) = (Duration::ZERO, Duration::from_secs(1));
        p.sync(&names, s0);
        let mut out = vec![];
        // A fast partition alone moves nothing: the other has sent nothing yet.
        p.on_batch(0, batch(&[1000, 1010]), s0, &mut out).unwrap();
        assert_eq!(show(&mut out), ["data[1000, 1010]"]);
        p.on_batch(1, batch(&[200]), s1, &mut out).unwrap();
        assert_eq!(show(&mut out), ["data[200]", "wm189"]);
        // Partition 1 falls quiet: after the timeout, partition 0 alone drives the watermark.
        p.on_quiet(Duration::from_secs(4), &mut out);
        assert!(out.is_empty());
        p.on_batch(0, batch(&[1020]), Duration::from_secs(6), &mut out)
            .unwrap();
        p.on_quiet(Duration::from_secs(6), &mut out);
        assert_eq!(show(&mut out), ["data[1020]", "wm1009"]);

        // Restored elsewhere (a rescale), partition 1 goes on from its own event time.
        let times = p.max_event_times();
        assert_eq!(times.get("t/1"), Some(&200));
        let mut q = PartitionWatermarks::new(strategy, times);
        q.restore_watermark(189);
        q.sync(&names[1..], s0);
        q.on_batch(0, batch(&[150]), s0, &mut out).unwrap();
        // 150 is behind partition 1's bound (189): the watermark is not sent again.
        assert_eq!(show(&mut out), ["data[150]"]);
        q.on_batch(0, batch(&[300]), s0, &mut out).unwrap();
        assert_eq!(show(&mut out), ["data[300]", "wm289"]);
        let err = q.on_batch(1, batch(&[1]), s0, &mut out).unwrap_err();
        assert!(err.to_string().contains("partition 1"), "{err}");
    }

    #[test]
    fn null_event_time_is_an_error_naming_the_column() {
        let schema = Arc::new(Schema::new(vec![Field::new("t", DataType::Int64, true)]));
        let b = RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(vec![Some(1), None]))],
        )
        .unwrap();
        let err = event_times(&b, "t").unwrap_err().to_string();
        assert!(err.contains("`t` is null at row 1"), "{err}");
        assert!(event_times(&b, "nope")
            .unwrap_err()
            .to_string()
            .contains("`nope` not found"));
    }

    #[test]
    fn min_over_live_inputs() {
        let none = WatermarkUpdate::default();
        let idle = |advanced| WatermarkUpdate {
            advanced,
            idle: true,
        };
        let mut w = InputWatermarks::new(2);
        assert_eq!(w.on_watermark(0, 10), none);
        assert_eq!(w.on_watermark(1, 5), WatermarkUpdate::advanced(5));
        assert_eq!(w.on_watermark(1, 20), WatermarkUpdate::advanced(10));
        // An idle input stops holding back the minimum...
        assert_eq!(w.on_watermark(0, 15), WatermarkUpdate::advanced(15));
        assert_eq!(w.on_idle(0), WatermarkUpdate::advanced(20));
        // ...and all idle means idle downstream.
        assert_eq!(w.on_idle(1), idle(None));
        // Coming back never moves the watermark backwards.
        assert_eq!(w.on_watermark(0, 16), none);
        assert_eq!(w.current(), 20);
        assert_eq!(w.on_end(0), idle(None));
        assert_eq!(w.on_end(1), none);
        assert!(w.all_ended());
    }

    #[test]
    fn all_idle_advances_to_the_furthest_input() {
        // Input 0 went idle first, while input 1 had no watermark yet: when 1 goes idle
        // too, event time reaches what input 0 had seen (Flink's StatusWatermarkValve).
        let mut w = InputWatermarks::new(2);
        assert_eq!(w.on_watermark(0, 249), WatermarkUpdate::default());
        assert_eq!(w.on_idle(0), WatermarkUpdate::default());
        assert_eq!(
            w.on_idle(1),
            WatermarkUpdate {
                advanced: Some(249),
                idle: true
            }
        );
    }
}
