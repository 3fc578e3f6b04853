//! Session windows: per key, records closer than the gap form one window `[first, last + gap)`.
//!
//! Sessions merge as records arrive, so their aggregates cannot be updated in place the way
//! fixed windows are. Each open session keeps references to its rows (batch, row) instead;
//! when it closes, its rows are gathered with one `interleave` per column and aggregated in
//! one vectorized pass. A batch is freed when no open session refers to it any more.

use crate::aggregate::{AggregateInputs, Aggregates, Groups};
use crate::error::{OperatorError, Result};
use crate::state::{decode_entry, encode_by_key_group, state_batch, StoredEntries};
use crate::window::LateSide;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::{interleave, take};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::HashMap;
use oxflow_runtime::state::{RestoredState, StateSnapshot};
use oxflow_runtime::watermark::event_times;
use oxflow_runtime::{EventTime, Operator, Output};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

pub(crate) struct SessionConfig {
    pub gap: i64,
    pub lateness: i64,
    pub time_column: String,
    pub key_indices: Vec<usize>,
    pub key_schema: SchemaRef,
    pub aggregates: Aggregates,
    pub output: SchemaRef,
    pub max_parallelism: usize,
}

struct Session {
    start: EventTime,
    last: EventTime,
    rows: Vec<(u32, u32)>,
}

/// Columns of a batch kept while open sessions refer to its rows.
struct Pending {
    columns: Vec<ArrayRef>,
    live: usize,
}

pub(crate) struct SessionWindows {
    cfg: SessionConfig,
    late: LateSide,
    converter: RowConverter,
    sessions: HashMap<Vec<u8>, Vec<Session>>,
    /// When each key's earliest session may close (possibly stale: see `fire`).
    timers: BinaryHeap<Reverse<(EventTime, Box<[u8]>)>>,
    pending: HashMap<u32, Pending>,
    next_batch: u32,
    watermark: EventTime,
    /// Per aggregate: number of arguments and whether it has a filter.
    layout: Vec<(usize, bool)>,
    stored: StoredEntries,
}

impl SessionWindows {
    pub(crate) fn new(cfg: SessionConfig, late: LateSide) -> Result<Self> {
        let converter = RowConverter::new(
            cfg.key_schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        Ok(SessionWindows {
            cfg,
            late,
            converter,
            sessions: HashMap::default(),
            timers: BinaryHeap::new(),
            pending: HashMap::new(),
            next_batch: 0,
            watermark: EventTime::MIN,
            layout: Vec::new(),
            stored: StoredEntries::default(),
        })
    }

    fn fire(&mut self, up_to: EventTime, out: &mut Output) -> Result<()> {
        // Timers are lazy: a session that grew after its timer was set is re-armed when the
        // old timer pops, so a record never touches the heap unless it opens a session.
        let mut closed: Vec<Session> = Vec::new();
        let (gap, lateness) = (self.cfg.gap, self.cfg.lateness);
        while self.timers.peek().is_some_and(|t| t.0 .0 <= up_to) {
            let Reverse((_, key)) = self.timers.pop().expect("peeked");
            let Some(sessions) = self.sessions.get_mut(&*key) else {
                continue;
            };
            let mut i = 0;
            while i < sessions.len() {
                if sessions[i].last + gap - 1 + lateness <= up_to {
                    closed.push(sessions.remove(i));
                } else {
                    i += 1;
                }
            }
            match sessions.iter().map(|s| s.last + gap - 1 + lateness).min() {
                None => {
                    self.sessions.remove(&*key);
                }
                Some(next) => self.timers.push(Reverse((next, key))),
            }
        }
        if closed.is_empty() {
            return Ok(());
        }

        let (gathered, group_indices, first_rows) = self.gather(&closed)?;
        for session in &closed {
            for &(b, _) in &session.rows {
                let p = self
                    .pending
                    .get_mut(&b)
                    .expect("referenced batches are kept");
                p.live -= 1;
                if p.live == 0 {
                    self.pending.remove(&b);
                }
            }
        }

        let n_keys = self.cfg.key_indices.len();
        let inputs = self.rebuild_inputs(&gathered[n_keys..]);
        let mut groups = Groups::try_new(
            &Arc::new(datafusion::arrow::datatypes::Schema::empty()),
            &self.cfg.aggregates,
        )?;
        groups.update_with_indices(group_indices, closed.len(), &inputs)?;
        let (_, aggregates) = groups.finish()?;
        let first = UInt32Array::from(first_rows);
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMillisecondArray::from_iter_values(
                closed.iter().map(|s| s.start),
            )),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                closed.iter().map(|s| s.last + self.cfg.gap),
            )),
        ];
        for key in &gathered[..n_keys] {
            columns.push(take(key.as_ref(), &first, None)?);
        }
        columns.extend(aggregates);
        out.emit(RecordBatch::try_new(self.cfg.output.clone(), columns)?);
        Ok(())
    }

    /// The rows of `sessions`, session by session (one `interleave` per column), with each
    /// row's session number and each session's first row.
    fn gather<'a>(
        &self,
        sessions: impl IntoIterator<Item = &'a Session>,
    ) -> Result<(Vec<ArrayRef>, Vec<usize>, Vec<u32>)> {
        let mut batch_slots: HashMap<u32, usize> = HashMap::new();
        let mut batch_ids: Vec<u32> = Vec::new();
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        let mut group_indices: Vec<usize> = Vec::new();
        let mut first_rows: Vec<u32> = Vec::new();
        for (g, session) in sessions.into_iter().enumerate() {
            first_rows.push(pairs.len() as u32);
            for &(b, r) in &session.rows {
                let slot = *batch_slots.entry(b).or_insert_with(|| {
                    batch_ids.push(b);
                    batch_ids.len() - 1
                });
                pairs.push((slot, r as usize));
                group_indices.push(g);
            }
        }
        let Some(first) = batch_ids.first() else {
            return Ok((Vec::new(), group_indices, first_rows));
        };
        let width = self.pending[first].columns.len();
        let mut gathered = Vec::with_capacity(width);
        for c in 0..width {
            let arrays: Vec<&dyn Array> = batch_ids
                .iter()
                .map(|b| self.pending[b].columns[c].as_ref())
                .collect();
            gathered.push(interleave(&arrays, &pairs)?);
        }
        Ok((gathered, group_indices, first_rows))
    }

    fn rebuild_inputs(&self, columns: &[ArrayRef]) -> AggregateInputs {
        let mut it = columns.iter();
        self.layout
            .iter()
            .map(|&(n_args, has_filter)| {
                let args: Vec<ArrayRef> = it.by_ref().take(n_args).cloned().collect();
                let filter = has_filter.then(|| {
                    it.next()
                        .expect("layout matches")
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .expect("filters are boolean")
                        .clone()
                });
                (args, filter)
            })
            .collect()
    }
}

impl Operator for SessionWindows {
    fn on_batch(&mut self, batch: RecordBatch, _: &mut Output) -> oxflow_runtime::Result<()> {
        let n = batch.num_rows();
        let times = event_times(&batch, &self.cfg.time_column)?.to_vec();
        let keys: Vec<ArrayRef> = self
            .cfg
            .key_indices
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let rows = self
            .converter
            .convert_columns(&keys)
            .map_err(crate::OperatorError::from)?;
        let inputs = self.cfg.aggregates.evaluate_inputs(&batch)?;
        let id = self.next_batch;
        self.next_batch = self.next_batch.wrapping_add(1);
        let (gap, lateness, watermark) = (self.cfg.gap, self.cfg.lateness, self.watermark);

        let mut late = vec![false; n];
        let mut live = 0;
        for (i, &t) in times.iter().enumerate() {
            // Without key columns every record has the one, empty key.
            let key: &[u8] = if keys.is_empty() {
                &[]
            } else {
                rows.row(i).data()
            };
            let sessions = self.sessions.entry_ref(key).or_default();
            // Sessions are disjoint and sorted, so the ones the record's [t, t + gap)
            // overlaps are contiguous; it may bridge several.
            let first = sessions.partition_point(|s| s.last + gap <= t);
            let overlapping = sessions[first..]
                .iter()
                .take_while(|s| s.start < t + gap)
                .count();
            if overlapping == 0 {
                if watermark != EventTime::MIN && t + gap - 1 + lateness <= watermark {
                    late[i] = true;
                    if sessions.is_empty() {
                        self.sessions.remove(key);
                    }
                    continue;
                }
                let session = Session {
                    start: t,
                    last: t,
                    rows: vec![(id, i as u32)],
                };
                sessions.insert(first, session);
                self.timers
                    .push(Reverse((t + gap - 1 + lateness, key.into())));
            } else {
                for merged in sessions
                    .drain(first + 1..first + overlapping)
                    .collect::<Vec<_>>()
                {
                    let s = &mut sessions[first];
                    s.start = s.start.min(merged.start);
                    s.last = s.last.max(merged.last);
                    s.rows.extend(merged.rows);
                }
                let s = &mut sessions[first];
                s.start = s.start.min(t);
                s.last = s.last.max(t);
                s.rows.push((id, i as u32));
            }
            live += 1;
        }
        if live > 0 {
            let mut columns = keys;
            self.layout.clear();
            for (args, filter) in inputs {
                self.layout.push((args.len(), filter.is_some()));
                columns.extend(args);
                if let Some(f) = filter {
                    columns.push(Arc::new(f));
                }
            }
            self.pending.insert(id, Pending { columns, live });
        }
        self.late.split(batch, &late)?;
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: EventTime,
        out: &mut Output,
    ) -> oxflow_runtime::Result<()> {
        self.watermark = watermark;
        Ok(self.fire(watermark, out)?)
    }

    fn on_end_of_input(&mut self, out: &mut Output) -> oxflow_runtime::Result<()> {
        self.fire(EventTime::MAX - self.cfg.gap - self.cfg.lateness, out)?;
        Ok(self.late.finish()?)
    }

    /// Open sessions are written whole at every checkpoint, one entry per key group: their
    /// rows with each row's session bounds and number.
    fn snapshot_state(&mut self, state: &mut StateSnapshot) -> oxflow_runtime::Result<()> {
        let open: Vec<&Session> = self.sessions.values().flatten().collect();
        let (gathered, numbers, _) = self.gather(open.iter().copied())?;
        let parts = if gathered.is_empty() {
            Vec::new()
        } else {
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from_iter_values(
                    numbers.iter().map(|&g| open[g].start),
                )),
                Arc::new(Int64Array::from_iter_values(
                    numbers.iter().map(|&g| open[g].last),
                )),
                Arc::new(UInt32Array::from_iter_values(
                    numbers.iter().map(|&g| g as u32),
                )),
            ];
            columns.extend(gathered);
            let batch = state_batch(columns)?;
            // Session keys are exactly the key_by columns, in order.
            let keys = &batch.columns()[3..3 + self.cfg.key_indices.len()];
            encode_by_key_group(&batch, keys, self.cfg.max_parallelism)?
        };
        self.stored.replace(state, SESSIONS.to_vec(), parts);
        let layout = serde_json::to_vec(&self.layout).expect("layouts serialize");
        state.set_operator_state(layout);
        Ok(())
    }

    fn restore_state(&mut self, state: RestoredState) -> oxflow_runtime::Result<()> {
        if let Some(layout) = state.operator.iter().find(|l| l.as_slice() != b"[]") {
            self.layout = serde_json::from_slice(layout).map_err(|e| {
                OperatorError::State(format!("session aggregate layout is unreadable: {e}"))
            })?;
        }
        let (gap, lateness) = (self.cfg.gap, self.cfg.lateness);
        let n_keys = self.cfg.key_indices.len();
        for (kg, _, value) in state.keyed {
            let batch = decode_entry(kg, &value)?;
            let bad =
                |what: &str| OperatorError::State(format!("sessions of key group {kg}: {what}"));
            if batch.num_columns() < 3 + n_keys {
                return Err(bad("too few columns").into());
            }
            let int64 = |i: usize| {
                batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or_else(|| bad("session bounds are not Int64"))
            };
            let (starts, lasts) = (int64(0)?, int64(1)?);
            let numbers = batch
                .column(2)
                .as_any()
                .downcast_ref::<UInt32Array>()
                .ok_or_else(|| bad("session numbers are not UInt32"))?;
            let columns = batch.columns()[3..].to_vec();
            let keys = self
                .converter
                .convert_columns(&columns[..n_keys])
                .map_err(OperatorError::from)?;
            let id = self.next_batch;
            self.next_batch = self.next_batch.wrapping_add(1);
            for i in 0..batch.num_rows() {
                let key: &[u8] = if n_keys == 0 { &[] } else { keys.row(i).data() };
                let sessions = self.sessions.entry_ref(key).or_default();
                if i == 0 || numbers.value(i) != numbers.value(i - 1) {
                    sessions.push(Session {
                        start: starts.value(i),
                        last: lasts.value(i),
                        rows: Vec::new(),
                    });
                }
                sessions
                    .last_mut()
                    .expect("pushed above")
                    .rows
                    .push((id, i as u32));
            }
            let live = batch.num_rows();
            if live > 0 {
                self.pending.insert(id, Pending { columns, live });
            }
        }
        for (key, sessions) in self.sessions.iter_mut() {
            sessions.sort_by_key(|s| s.start);
            if let Some(next) = sessions.iter().map(|s| s.last + gap - 1 + lateness).min() {
                self.timers.push(Reverse((next, key.as_slice().into())));
            }
        }
        Ok(())
    }
}

/// The item key of the sessions entry of a key group.
const SESSIONS: &[u8] = b"sessions";

#[cfg(test)]
impl SessionWindows {
    fn open_sessions(&self) -> usize {
        self.sessions.values().map(|s| s.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::{LateRecords, WindowAggregate, WindowSettings, WindowSpec};
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::functions_aggregate::expr_fn::count;
    use datafusion::prelude::col;
    use oxflow_runtime::{OperatorFactory, SubtaskInfo};
    use std::time::Duration;

    #[test]
    fn a_record_bridging_two_sessions_merges_them_and_frees_batches() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("t", DataType::Int64, false),
        ]));
        let factory = WindowAggregate::try_new(
            WindowSettings {
                keys: vec!["k".into()],
                window: WindowSpec::session(Duration::from_millis(10)),
                time_column: Some("t".into()),
                allowed_lateness: Duration::ZERO,
                late: LateRecords::Drop,
            },
            &[count(col("t")).alias("n")],
            schema.clone(),
        )
        .unwrap();
        let batch = |k: Vec<i64>, t: Vec<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(k)), Arc::new(Int64Array::from(t))],
            )
            .unwrap()
        };
        let cfg = SessionConfig {
            gap: 10,
            lateness: 0,
            time_column: "t".into(),
            key_indices: vec![0],
            key_schema: Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)])),
            aggregates: crate::aggregate::Aggregates::try_new(
                &[count(col("t")).alias("n")],
                &schema,
            )
            .unwrap(),
            output: factory.output_schema(),
            max_parallelism: 128,
        };
        let late = LateSide::try_new(
            &LateRecords::Drop,
            Default::default(),
            SubtaskInfo {
                index: 0,
                parallelism: 1,
                max_parallelism: 128,
            },
            schema.clone(),
        )
        .unwrap();
        let mut s = SessionWindows::new(cfg, late).unwrap();
        let mut out = Output::default();
        s.on_batch(batch(vec![1, 1, 2], vec![0, 15, 0]), &mut out)
            .unwrap();
        assert_eq!(s.open_sessions(), 3);
        s.on_batch(batch(vec![1], vec![8]), &mut out).unwrap();
        assert_eq!(
            s.open_sessions(),
            2,
            "8 bridges [0, 10) and [15, 25) for key 1"
        );
        s.on_watermark(20, &mut out).unwrap();
        let fired: Vec<RecordBatch> = out.drain().collect();
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].num_rows(), 1, "key 2's session [0, 10) closed");
        s.on_end_of_input(&mut out).unwrap();
        let last: Vec<RecordBatch> = out.drain().collect();
        let n = last[0]
            .column(3)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(n.values(), &[3]);
        assert!(s.pending.is_empty());
    }
}
