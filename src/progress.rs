//! Progress of a job run from the command line (`oxflow nexmark`, `oxflow run`): events read,
//! events per second, the watermark and checkpoints, redrawn on stderr twice a second while
//! stderr is a terminal, and nothing at all when it is not (a pipe, a file, CI), so that
//! output stays clean for scripts.

// The rate shown is per second of wall time; nothing here decides anything about the job.
#![allow(clippy::disallowed_methods)]

use crate::Job;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use oxflow_runtime::metrics::{watermark_value, JobMetrics, StageFigure};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a progress line shows, read from a job's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Figures {
    /// Records the job's sources have read.
    pub events: u64,
    /// The least watermark of the last stage's subtasks, in milliseconds since the epoch.
    pub watermark_ms: Option<i64>,
    /// Checkpoints completed.
    pub checkpoints: u64,
}

impl Figures {
    /// Reads the figures from `metrics`; `sources` are the indexes of the job's source stages
    /// and `last` the index of its last stage.
    pub fn read(metrics: &JobMetrics, sources: &[usize], last: usize) -> Self {
        let mut figures = Figures::default();
        let mut marks: Vec<u64> = Vec::new();
        for (name, value) in metrics.snapshot() {
            if name == "checkpoints.completed" {
                figures.checkpoints = value;
                continue;
            }
            let Some(f) = StageFigure::parse(&name) else {
                continue;
            };
            match f.per_subtask() {
                None if f.figure == "records_in" && sources.contains(&f.index) => {
                    figures.events += value;
                }
                Some(("watermark_ms", _)) if f.index == last => marks.push(value),
                _ => {}
            }
        }
        // A subtask without a watermark yet holds the stage's at "none".
        let marks: Option<Vec<i64>> = marks.into_iter().map(watermark_value).collect();
        figures.watermark_ms = marks.and_then(|m| m.into_iter().min());
        figures
    }

    /// The line shown: events, their rate over the last interval, watermark, checkpoints.
    pub fn line(&self, per_second: f64, elapsed: Duration) -> String {
        let watermark = match self.watermark_ms {
            Some(ms) => format_time(ms),
            None => "none yet".to_string(),
        };
        format!(
            "{} events · {}/s · watermark {} · {} checkpoints · {:.0} s",
            group_thousands(self.events),
            group_thousands(per_second.max(0.0) as u64),
            watermark,
            self.checkpoints,
            elapsed.as_secs_f64()
        )
    }
}

/// `1234567` as `1,234,567`.
fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds since the epoch as `HH:MM:SS` UTC (the day is rarely what one watches).
fn format_time(ms: i64) -> String {
    let seconds = ms.div_euclid(1000).rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02} UTC",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// A progress line kept up to date while a job runs; dropping it clears the line.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts showing `job`'s progress if stderr is a terminal (`None` otherwise).
    pub fn start(job: &Job, total_events: Option<u64>) -> Option<Progress> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        Some(Self::start_on(
            job,
            total_events,
            ProgressDrawTarget::stderr_with_hz(4),
        ))
    }

    fn start_on(job: &Job, total_events: Option<u64>, target: ProgressDrawTarget) -> Progress {
        let plan = job.plan();
        let sources = plan.source_stages();
        let last = plan.stages.len().saturating_sub(1);
        let metrics = job.metrics();
        let bar = match total_events {
            Some(total) => ProgressBar::with_draw_target(Some(total), target).with_style(
                ProgressStyle::with_template("{bar:24} {percent:>3}% {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::with_draw_target(None, target).with_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                let started = Instant::now();
                let (mut then, mut before) = (started, 0u64);
                while !stopping.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(500));
                    let figures = Figures::read(&metrics, &sources, last);
                    let now = Instant::now();
                    let seconds = now.duration_since(then).as_secs_f64();
                    let rate = if seconds > 0.0 {
                        figures.events.saturating_sub(before) as f64 / seconds
                    } else {
                        0.0
                    };
                    (then, before) = (now, figures.events);
                    bar.set_position(figures.events);
                    bar.set_message(figures.line(rate, started.elapsed()));
                }
                bar.finish_and_clear();
            })
            .ok();
        Progress { stop, thread }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_add_the_sources_and_take_the_last_stages_least_watermark() {
        let metrics = JobMetrics::default();
        metrics.counter("stage0.source-bids.records_in").set(700);
        metrics.counter("stage0.source-bids.records_in.0").set(400);
        metrics.counter("stage1.source-people.records_in").set(300);
        metrics.counter("stage2.join.records_out").set(50);
        metrics
            .counter("stage2.join.watermark_ms.0")
            .set(5_000_i64 as u64);
        metrics
            .counter("stage2.join.watermark_ms.1")
            .set(3_000_i64 as u64);
        metrics.counter("checkpoints.completed").set(4);
        let f = Figures::read(&metrics, &[0, 1], 2);
        assert_eq!(
            f,
            Figures {
                events: 1000,
                watermark_ms: Some(3_000),
                checkpoints: 4
            }
        );
        metrics
            .counter("stage2.join.watermark_ms.1")
            .set(i64::MIN as u64);
        assert_eq!(Figures::read(&metrics, &[0, 1], 2).watermark_ms, None);
    }

    #[test]
    fn the_line_groups_digits_and_shows_the_watermark_as_a_time() {
        let f = Figures {
            events: 1_234_567,
            watermark_ms: Some(3_723_000),
            checkpoints: 2,
        };
        assert_eq!(
            f.line(98_765.4, Duration::from_secs(12)),
            "1,234,567 events · 98,765/s · watermark 01:02:03 UTC · 2 checkpoints · 12 s"
        );
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1000), "1,000");
    }
}
