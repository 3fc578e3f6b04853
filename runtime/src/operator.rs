//! The one operator contract every transformation implements.

use crate::error::Result;
use crate::message::EventTime;
use crate::metrics::Counter;
use crate::state::{RestoredState, StateSnapshot, StateStore, StoreUse};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Where a subtask sits in its stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubtaskInfo {
    /// Index of this subtask, `0..parallelism`.
    pub index: usize,
    /// Number of subtasks of the stage.
    pub parallelism: usize,
    /// Number of key groups of the job (the most a keyed stage can be split into).
    pub max_parallelism: usize,
}

/// The most rows [`Output::drain_coalesced`] puts in one batch by concatenating smaller ones.
pub const COALESCE_ROWS: usize = 4096;

/// Batches an operator emits while handling one message.
#[derive(Debug, Default)]
pub struct Output {
    batches: Vec<RecordBatch>,
    /// The job's cancellation flag, when run by the executor.
    cancel: Option<Arc<AtomicBool>>,
}

impl Output {
    /// Lets [`Output::check_cancelled`] see the job's cancellation flag.
    pub(crate) fn watch(&mut self, cancel: &Arc<AtomicBool>) {
        if self.cancel.is_none() {
            self.cancel = Some(cancel.clone());
        }
    }

    /// Fails with [`crate::RuntimeError::Cancelled`] once the job is being cancelled. An
    /// operator whose work for one message can be long (firing many windows, emitting many
    /// join pairs) calls this between bounded units of it, so that a cancel or stop takes
    /// effect within a second even then.
    pub fn check_cancelled(&self) -> Result<()> {
        match &self.cancel {
            Some(c) if c.load(Ordering::Relaxed) => Err(crate::RuntimeError::Cancelled),
            _ => Ok(()),
        }
    }

    /// Emits a batch downstream. Empty batches are dropped here so operators need not check.
    pub fn emit(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.batches.push(batch);
        }
    }
    /// Takes what was emitted so far.
    pub fn drain(&mut self) -> std::vec::Drain<'_, RecordBatch> {
        self.batches.drain(..)
    }

    /// Takes what was emitted so far, small batches in a row concatenated into batches of up
    /// to [`COALESCE_ROWS`] rows (order kept; a larger batch goes on as it is). An operator
    /// that fires many small windows at one watermark emits a batch per window: the next
    /// operator, and an exchange, then pay their per-batch cost once instead of per window.
    pub fn drain_coalesced(&mut self) -> Result<std::vec::Drain<'_, RecordBatch>> {
        // One batch, the usual case, is handed on without a new vector.
        if self.batches.len() < 2 {
            return Ok(self.batches.drain(..));
        }
        let mut merged = Vec::with_capacity(self.batches.len());
        let mut run: Vec<RecordBatch> = Vec::new();
        let mut run_rows = 0;
        let flush = |run: &mut Vec<RecordBatch>, merged: &mut Vec<RecordBatch>| -> Result<()> {
            match run.len() {
                0 => {}
                1 => merged.append(run),
                _ => {
                    let schema = run[0].schema();
                    merged.push(datafusion::arrow::compute::concat_batches(&schema, &*run)?);
                    run.clear();
                }
            }
            Ok(())
        };
        for batch in self.batches.drain(..) {
            let rows = batch.num_rows();
            let fits = run
                .first()
                .is_none_or(|first| first.schema() == batch.schema())
                && run_rows + rows <= COALESCE_ROWS;
            if !fits {
                flush(&mut run, &mut merged)?;
                run_rows = 0;
            }
            if rows >= COALESCE_ROWS {
                merged.push(batch);
                continue;
            }
            run_rows += rows;
            run.push(batch);
        }
        flush(&mut run, &mut merged)?;
        self.batches = merged;
        Ok(self.batches.drain(..))
    }
    /// Whether nothing was emitted.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// A transformation of a stream, run by one subtask.
///
/// The runtime calls these in stream order; watermarks and end of input are forwarded by the
/// runtime after the operator has handled them, so an operator only emits data.
pub trait Operator: Send {
    /// Handles one batch of input.
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Output) -> Result<()>;

    /// Handles one batch from input `input` of a stage with several inputs (a join's sides,
    /// in the order the stage lists them). Only the first operator of such a stage is called
    /// this way; the default ignores which input it was.
    fn on_input_batch(&mut self, input: usize, batch: RecordBatch, out: &mut Output) -> Result<()> {
        let _ = input;
        self.on_batch(batch, out)
    }

    /// Event time has advanced to `watermark` (the minimum over this subtask's inputs); fire
    /// whatever it completes. The default does nothing: stateless operators ignore time.
    fn on_watermark(&mut self, watermark: EventTime, out: &mut Output) -> Result<()> {
        let _ = (watermark, out);
        Ok(())
    }

    /// All inputs have ended: flush every pending result (bounded jobs end here).
    fn on_end_of_input(&mut self, out: &mut Output) -> Result<()> {
        let _ = out;
        Ok(())
    }

    /// A checkpoint barrier has arrived on every input: record in `state` what changed since
    /// the previous snapshot (the runtime stores it by key group). Stateless operators keep
    /// the default, which records nothing.
    fn snapshot_state(&mut self, state: &mut StateSnapshot) -> Result<()> {
        let _ = state;
        Ok(())
    }

    /// The job keeps state in RocksDB ([`crate::state::StateStorage::RocksDb`]): an operator
    /// that can keep its state in `store`, with at most `store.memory_budget()` bytes in
    /// memory, takes it and says how it uses it; it is then restored through the store too
    /// (its entries are copied there). Called before [`Operator::restore_state`] and any
    /// input. The default keeps state in memory.
    fn use_state_store(&mut self, store: StateStore) -> StoreUse {
        let _ = store;
        StoreUse::Memory
    }

    /// Before any input: take back the state of the key groups this subtask now owns, as
    /// written by [`Operator::snapshot_state`] of the checkpointed job (at any parallelism).
    /// Called only when there is something to restore.
    fn restore_state(&mut self, state: RestoredState) -> Result<()> {
        let _ = state;
        Err(crate::RuntimeError::State(
            "this operator keeps no state, yet the checkpoint holds some for it".into(),
        ))
    }
}

/// Builds the operator of each subtask of a stage, and says what it outputs.
pub trait OperatorFactory: Send + Sync {
    /// A short name for logs and metrics, e.g. `filter`.
    fn name(&self) -> String;
    /// The schema of the batches the operator emits.
    fn output_schema(&self) -> SchemaRef;
    /// How many inputs the operator joins: more than one only for the first operator of a
    /// stage with that many inputs.
    fn inputs(&self) -> usize {
        1
    }
    /// A fingerprint of the layout of the state the operator checkpoints, recorded in every
    /// manifest (as Flink records a state's serializer snapshot): a restore into an operator
    /// whose fingerprint differs fails with a clear error before any state is read. The
    /// default covers the operator's name and the columns and types it emits, which change
    /// with its keys and aggregates; an operator whose state holds more (its input rows, say)
    /// should mix that in too.
    fn state_fingerprint(&self) -> String {
        schema_fingerprint(&self.name(), &[&self.output_schema()])
    }
    /// Whether each subtask's keyed state lies in the key groups it owns: true for an
    /// operator keyed by the exchange into its stage. A pre-aggregate chained ahead of its
    /// own exchange (a local phase) keeps entries of any key group and says false; a restore
    /// of its stage then reads every old subtask, not only those of overlapping key groups.
    fn state_in_own_key_groups(&self) -> bool {
        true
    }
    /// Creates the operator for one subtask.
    fn create(&self, subtask: SubtaskInfo) -> Result<Box<dyn Operator>>;
    /// Counters the operator keeps besides records in and out (e.g. late records), shared
    /// by all its subtasks.
    fn counters(&self) -> Vec<(String, Counter)> {
        Vec::new()
    }
}

/// Shared handle to an operator factory.
pub type OperatorFactoryRef = Arc<dyn OperatorFactory>;

/// A short, stable fingerprint of a name and the fields (names, types, nullability) of some
/// schemas: CRC-32 over a canonical text, so it is the same in every process and release.
pub fn schema_fingerprint(name: &str, schemas: &[&SchemaRef]) -> String {
    let mut text = String::from(name);
    for schema in schemas {
        text.push('|');
        for field in schema.fields() {
            text.push_str(&format!(
                "{}:{}:{};",
                field.name(),
                field.data_type(),
                field.is_nullable()
            ));
        }
    }
    format!("{:08x}", crc32fast::hash(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn batch(schema: &SchemaRef, values: std::ops::Range<i64>) -> RecordBatch {
        RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(values))],
        )
        .expect("one column")
    }

    fn values(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                let c = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                c.values().to_vec()
            })
            .collect()
    }

    #[test]
    fn small_batches_are_concatenated_in_order_and_large_ones_pass_as_they_are() {
        let a: SchemaRef = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let b: SchemaRef = Arc::new(Schema::new(vec![Field::new("b", DataType::Int64, false)]));
        let big = COALESCE_ROWS as i64;
        let mut out = Output::default();
        let mut expected = Vec::new();
        // 3000 one-row batches, a large one, two small ones, one of another schema.
        for i in 0..3000 {
            out.emit(batch(&a, i..i + 1));
        }
        out.emit(batch(&a, 10_000..10_000 + big));
        out.emit(batch(&a, 0..0));
        out.emit(batch(&a, 1..3));
        out.emit(batch(&a, 5..6));
        out.emit(batch(&b, 7..8));
        expected.extend(0..3000);
        expected.extend(10_000..10_000 + big);
        expected.extend([1, 2, 5, 7]);
        let merged: Vec<RecordBatch> = out.drain_coalesced().unwrap().collect();
        assert_eq!(values(&merged), expected);
        let rows: Vec<usize> = merged.iter().map(|b| b.num_rows()).collect();
        assert_eq!(rows, vec![3000, COALESCE_ROWS, 3, 1]);
        assert_eq!(merged[3].schema(), b);
        assert!(out.is_empty());

        // More small rows than one batch holds: split at the limit.
        for i in 0..(big + 10) {
            out.emit(batch(&a, i..i + 1));
        }
        let merged: Vec<RecordBatch> = out.drain_coalesced().unwrap().collect();
        let rows: Vec<usize> = merged.iter().map(|b| b.num_rows()).collect();
        assert_eq!(rows, vec![COALESCE_ROWS, 10]);
        assert_eq!(values(&merged), (0..big + 10).collect::<Vec<_>>());
    }
}
