//! Counters a job keeps while it runs, readable while it runs and reported when it ends, and
//! the history of its recent checkpoints (what the dashboard and `GET /v1/jobs/{id}` show).

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A monotonically increasing count shared by the subtasks that add to it.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Replaces the value (for gauges such as the last checkpoint's duration).
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    /// Raises the value to `n` if it is lower (a gauge of the largest of several).
    pub fn max(&self, n: u64) {
        self.0.fetch_max(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A count kept for a stage and for one of its subtasks at once: the stage's total is what
/// summaries and `/metrics` show, the subtask's is what the dashboard shows per subtask.
#[derive(Debug, Clone, Default)]
pub struct StageCounter {
    stage: Counter,
    subtask: Counter,
}

impl StageCounter {
    /// Counts into `stage` (shared by the stage's subtasks) and `subtask` (this one's).
    pub fn new(stage: Counter, subtask: Counter) -> Self {
        StageCounter { stage, subtask }
    }
    /// Adds `n` to both.
    #[inline]
    pub fn add(&self, n: u64) {
        self.stage.add(n);
        self.subtask.add(n);
    }
}

/// The named counters of a job, e.g. `stage1.window-aggregate.records_in`.
#[derive(Debug, Clone, Default)]
pub struct JobMetrics {
    counters: Arc<Mutex<Vec<(String, Counter)>>>,
}

impl JobMetrics {
    /// The counter called `name`, created at zero if new.
    pub fn counter(&self, name: &str) -> Counter {
        let mut counters = self
            .counters
            .lock()
            .expect("metrics lock is never held across a panic");
        if let Some((_, c)) = counters.iter().find(|(n, _)| n == name) {
            return c.clone();
        }
        let c = Counter::default();
        counters.push((name.to_string(), c.clone()));
        c
    }
    /// Adds an existing counter under `name` (an operator's own, e.g. late records).
    pub fn register(&self, name: &str, counter: Counter) {
        let mut counters = self
            .counters
            .lock()
            .expect("metrics lock is never held across a panic");
        counters.retain(|(n, _)| n != name);
        counters.push((name.to_string(), counter));
    }
    /// Every counter and its value, in creation order.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let counters = self
            .counters
            .lock()
            .expect("metrics lock is never held across a panic");
        counters.iter().map(|(n, c)| (n.clone(), c.get())).collect()
    }
    /// The value of `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.snapshot()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
}

/// One counter of a stage, as the executor names it: `stage<N>.<name>.<figure>`, with the
/// figures kept per subtask as `<figure>.<i>` (`stage2.keyed.watermark_ms.1`), split. The one
/// parser of these names: the server's status, `/metrics` and the CLI's progress read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageFigure<'a> {
    /// The stage's index.
    pub index: usize,
    /// The stage's name.
    pub stage: &'a str,
    /// What is counted, with the subtask's index for a figure kept per subtask.
    pub figure: &'a str,
}

impl<'a> StageFigure<'a> {
    /// Splits a counter's name; `None` for one that is not a stage's.
    pub fn parse(name: &'a str) -> Option<Self> {
        let rest = name.strip_prefix("stage")?;
        let mut parts = rest.splitn(3, '.');
        let (index, stage, figure) = (parts.next()?, parts.next()?, parts.next()?);
        Some(StageFigure {
            index: index.parse().ok()?,
            stage,
            figure,
        })
    }

    /// The figure's name and subtask, for one counted per subtask.
    pub fn per_subtask(&self) -> Option<(&'a str, usize)> {
        let (figure, subtask) = self.figure.rsplit_once('.')?;
        Some((figure, subtask.parse().ok()?))
    }
}

/// A watermark counter's value: an i64 stored as its bits, `i64::MIN` before the first.
pub fn watermark_value(value: u64) -> Option<i64> {
    Some(value as i64).filter(|&w| w != i64::MIN)
}

/// How a checkpoint ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CheckpointStatus {
    /// Every subtask acknowledged it, its manifest is written and its output committed.
    Completed,
    /// A subtask declined it, or the input ended first; its sink output is carried to the
    /// next checkpoint that completes.
    Abandoned,
}

/// One checkpoint of a job, as its history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointRecord {
    /// The checkpoint's id.
    pub id: u64,
    /// How it ended.
    pub status: CheckpointStatus,
    /// When the coordinator triggered it, in milliseconds since the Unix epoch.
    pub triggered_at_ms: u64,
    /// Trigger to manifest (to abandonment for one abandoned).
    pub duration_ms: u64,
    /// The longest barrier alignment of any subtask: from the first input's barrier to the
    /// last's, while the inputs that had sent it were held back.
    pub alignment_ms: u64,
    /// Size of the state files the checkpoint refers to.
    pub state_bytes: u64,
    /// Bytes of state files it added (incremental checkpoints share the rest).
    pub new_bytes: u64,
    /// Whether a savepoint was asked for with it.
    pub savepoint: bool,
    /// Why it was abandoned.
    pub reason: Option<String>,
}

/// The last [`CheckpointHistory::CAPACITY`] checkpoints of a job, newest last; shared with
/// whoever holds the job's handle, readable while it runs.
#[derive(Debug, Clone, Default)]
pub struct CheckpointHistory {
    records: Arc<Mutex<VecDeque<CheckpointRecord>>>,
}

impl CheckpointHistory {
    /// How many checkpoints are kept: older ones are dropped, so a job that runs for months
    /// keeps a bounded history.
    pub const CAPACITY: usize = 100;

    /// Adds a checkpoint that has ended, dropping the oldest beyond the capacity.
    pub fn push(&self, record: CheckpointRecord) {
        let mut records = self
            .records
            .lock()
            .expect("history lock is never held across a panic");
        if records.len() == Self::CAPACITY {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// The checkpoints kept, oldest first.
    pub fn snapshot(&self) -> Vec<CheckpointRecord> {
        let records = self
            .records
            .lock()
            .expect("history lock is never held across a panic");
        records.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_shared_by_name() {
        let m = JobMetrics::default();
        m.counter("a").add(2);
        m.counter("a").add(3);
        assert_eq!(m.get("a"), Some(5));
        assert_eq!(m.get("b"), None);
    }

    #[test]
    fn public_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<JobMetrics>();
        check::<Counter>();
        check::<CheckpointHistory>();
    }

    #[test]
    fn stage_counters_are_split_into_index_name_figure_and_subtask() {
        let s = StageFigure::parse("stage2.keyed.watermark_ms.1").unwrap();
        assert_eq!((s.index, s.stage, s.figure), (2, "keyed", "watermark_ms.1"));
        assert_eq!(s.per_subtask(), Some(("watermark_ms", 1)));
        let total = StageFigure::parse("stage0.source-bids.records_in").unwrap();
        assert_eq!(total.per_subtask(), None);
        assert!(StageFigure::parse("checkpoints.completed").is_none());
        assert!(StageFigure::parse("stagex.keyed.records_in").is_none());
        assert_eq!(watermark_value(i64::MIN as u64), None);
        assert_eq!(watermark_value(-5_i64 as u64), Some(-5));
    }

    #[test]
    fn the_history_keeps_the_newest_checkpoints_up_to_its_capacity() {
        let history = CheckpointHistory::default();
        for id in 1..=(CheckpointHistory::CAPACITY as u64 + 5) {
            history.push(CheckpointRecord {
                id,
                status: CheckpointStatus::Completed,
                triggered_at_ms: id * 1000,
                duration_ms: 3,
                alignment_ms: 0,
                state_bytes: 10,
                new_bytes: 1,
                savepoint: false,
                reason: None,
            });
        }
        let kept = history.snapshot();
        assert_eq!(kept.len(), CheckpointHistory::CAPACITY);
        assert_eq!(kept.first().map(|r| r.id), Some(6));
        assert_eq!(
            kept.last().map(|r| r.id),
            Some(CheckpointHistory::CAPACITY as u64 + 5)
        );
    }
}
