//! `/metrics`: every job's figures in Prometheus' text format, made by the `prometheus`
//! crate (HELP and TYPE on every family, escaping, ordering), not formatted by hand.
//!
//! A scrape builds a fresh registry from the jobs' counters: the server keeps no second copy
//! of the figures, and a finished job's series disappear with it. Units are base units
//! (`_seconds`, `_bytes`); a stage is labelled by its index and its name together, since two
//! stages may share a name.

use super::{JobEntry, JobState};
use oxflow_runtime::metrics::{watermark_value, StageFigure};
use prometheus::{CounterVec, Encoder, GaugeVec, Opts, Registry, TextEncoder};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The metric families, registered once per scrape.
struct Families {
    registry: Registry,
    restarts: CounterVec,
    running: GaugeVec,
    records_in: CounterVec,
    records_out: CounterVec,
    backpressure: CounterVec,
    out_of_range: CounterVec,
    watermark: GaugeVec,
    checkpoints: CounterVec,
    checkpoint_duration: GaugeVec,
    checkpoint_bytes: GaugeVec,
    checkpoint_id: GaugeVec,
}

const JOB: &[&str] = &["job"];
const STAGE: &[&str] = &["job", "stage_index", "stage"];
const SUBTASK: &[&str] = &["job", "stage_index", "stage", "subtask"];

impl Families {
    fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        fn counter(
            r: &Registry,
            name: &str,
            help: &str,
            labels: &[&str],
        ) -> prometheus::Result<CounterVec> {
            let c = CounterVec::new(Opts::new(name, help), labels)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        }
        fn gauge(
            r: &Registry,
            name: &str,
            help: &str,
            labels: &[&str],
        ) -> prometheus::Result<GaugeVec> {
            let g = GaugeVec::new(Opts::new(name, help), labels)?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        }
        let r = &registry;
        Ok(Families {
            restarts: counter(
                r,
                "oxflow_job_restarts_total",
                "Restarts of the job after a failed attempt.",
                JOB,
            )?,
            running: gauge(
                r,
                "oxflow_job_running",
                "1 while the job is running, else 0.",
                JOB,
            )?,
            records_in: counter(
                r,
                "oxflow_stage_records_in_total",
                "Records the stage received, over its subtasks, in the current attempt.",
                STAGE,
            )?,
            records_out: counter(
                r,
                "oxflow_stage_records_out_total",
                "Records the stage emitted, over its subtasks, in the current attempt.",
                STAGE,
            )?,
            backpressure: counter(
                r,
                "oxflow_stage_backpressure_seconds_total",
                "Time the stage's subtasks waited for room downstream (backpressure).",
                STAGE,
            )?,
            out_of_range: counter(
                r,
                "oxflow_stage_event_time_out_of_range_total",
                "Records a source stage dropped for an event time out of range.",
                STAGE,
            )?,
            watermark: gauge(
                r,
                "oxflow_subtask_watermark_seconds",
                "The subtask's event-time watermark, in seconds since the Unix epoch.",
                SUBTASK,
            )?,
            checkpoints: counter(
                r,
                "oxflow_checkpoints_completed_total",
                "Checkpoints the current attempt completed.",
                JOB,
            )?,
            checkpoint_duration: gauge(
                r,
                "oxflow_checkpoint_last_duration_seconds",
                "Trigger to manifest of the last completed checkpoint.",
                JOB,
            )?,
            checkpoint_bytes: gauge(
                r,
                "oxflow_checkpoint_state_bytes",
                "Size of the state files of the last completed checkpoint.",
                JOB,
            )?,
            checkpoint_id: gauge(
                r,
                "oxflow_checkpoint_last_id",
                "Id of the last completed checkpoint.",
                JOB,
            )?,
            registry,
        })
    }
}

/// The text of `/metrics` for `jobs`.
pub(crate) fn render(jobs: &[Arc<JobEntry>]) -> prometheus::Result<String> {
    let f = Families::new()?;
    for entry in jobs {
        let record = entry.record();
        let job = record.id.as_str();
        f.restarts
            .with_label_values(&[job])
            .inc_by(f64::from(record.restarts));
        f.running
            .with_label_values(&[job])
            .set(f64::from(u8::from(record.state == JobState::Running)));
        let attempt = entry.attempt.lock().expect("attempt lock");
        let Some(a) = attempt.as_ref() else { continue };
        let snapshot: BTreeMap<String, u64> = a.metrics.snapshot().into_iter().collect();
        for (name, &value) in &snapshot {
            match name.as_str() {
                "checkpoints.completed" => {
                    f.checkpoints.with_label_values(&[job]).inc_by(value as f64)
                }
                "checkpoints.last_duration_ms" => f
                    .checkpoint_duration
                    .with_label_values(&[job])
                    .set(value as f64 / 1000.0),
                "checkpoints.state_bytes" => f
                    .checkpoint_bytes
                    .with_label_values(&[job])
                    .set(value as f64),
                "checkpoints.last_id" if value > 0 => {
                    f.checkpoint_id.with_label_values(&[job]).set(value as f64)
                }
                _ => {}
            }
            let Some(s) = StageFigure::parse(name) else {
                continue;
            };
            let index = s.index.to_string();
            let labels = [job, index.as_str(), s.stage];
            match s.figure {
                "records_in" => f.records_in.with_label_values(&labels).inc_by(value as f64),
                "records_out" => f
                    .records_out
                    .with_label_values(&labels)
                    .inc_by(value as f64),
                "backpressure_ms" => f
                    .backpressure
                    .with_label_values(&labels)
                    .inc_by(value as f64 / 1000.0),
                "event_time_out_of_range" => f
                    .out_of_range
                    .with_label_values(&labels)
                    .inc_by(value as f64),
                _ => {
                    let Some(("watermark_ms", subtask)) = s.per_subtask() else {
                        continue;
                    };
                    if let Some(w) = watermark_value(value) {
                        let subtask = subtask.to_string();
                        f.watermark
                            .with_label_values(&[job, &index, s.stage, &subtask])
                            .set(w as f64 / 1000.0);
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&f.registry.gather(), &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}
