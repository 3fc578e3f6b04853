//! A datagen source: `id` (a sequence), `key` (random, of a chosen cardinality), `value`
//! (random) and `ts` (event time advancing at a chosen rate), deterministic per `id`.

use crate::error::{ConnectorError, Result};
use crate::random::RecordRng;
use crate::split::{ChunkGenerator, GeneratedReader};
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use oxflow_runtime::source::{Source, SourceReader};
use oxflow_runtime::SubtaskInfo;
use std::sync::Arc;

/// Datagen settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DatagenConfig {
    /// Rows to generate; `None`: unbounded.
    pub rows: Option<u64>,
    /// Distinct values of `key` (uniform over `0..key_cardinality`).
    pub key_cardinality: u64,
    /// Rows per second of event time in `ts`.
    pub event_rate: u64,
    /// `ts` of row 0, ms since the epoch.
    pub base_time: i64,
    /// Seed of the random columns.
    pub seed: u64,
    /// Rows per batch.
    pub batch_size: usize,
    /// Throttle: rows per second of wall time over all splits.
    pub rate_limit: Option<f64>,
}

impl Default for DatagenConfig {
    fn default() -> Self {
        DatagenConfig {
            rows: Some(1_000_000),
            key_cardinality: 1000,
            event_rate: 100_000,
            base_time: 1_704_067_200_000,
            seed: 0,
            batch_size: 8192,
            rate_limit: None,
        }
    }
}

/// The datagen source.
#[derive(Debug, Clone)]
pub struct DatagenSource {
    config: DatagenConfig,
}

impl DatagenSource {
    /// Checks `config` and builds the source.
    pub fn try_new(config: DatagenConfig) -> Result<Self> {
        let bad = |reason: &str| {
            Err(ConnectorError::Config {
                connector: "datagen",
                reason: reason.into(),
            })
        };
        if config.key_cardinality == 0 {
            return bad("key cardinality must be positive");
        }
        if config.event_rate == 0 || config.batch_size == 0 {
            return bad("event rate and batch size must be positive");
        }
        if config.rate_limit.is_some_and(|r| r.is_nan() || r <= 0.0) {
            return bad("rate limit must be a positive number of rows per second");
        }
        Ok(DatagenSource { config })
    }

    fn generate(&self, range: std::ops::Range<u64>) -> Result<RecordBatch> {
        let c = &self.config;
        let n = (range.end - range.start) as usize;
        let (mut keys, mut values, mut times) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for id in range.clone() {
            let mut rng = RecordRng::new(c.seed, id);
            keys.push(rng.below(c.key_cardinality) as i64);
            values.push(rng.below(1_000_000) as i64);
            times.push(c.base_time + (id as u128 * 1000 / c.event_rate as u128) as i64);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(range.map(|i| i as i64))),
            Arc::new(Int64Array::from(keys)),
            Arc::new(Int64Array::from(values)),
            Arc::new(TimestampMillisecondArray::from(times)),
        ];
        Ok(RecordBatch::try_new(self.schema(), columns)?)
    }
}

impl Source for DatagenSource {
    fn name(&self) -> String {
        "datagen".into()
    }
    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("key", DataType::Int64, false),
            Field::new("value", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]))
    }
    fn restore_reader(
        &self,
        split: SubtaskInfo,
        positions: &[serde_json::Value],
    ) -> oxflow_runtime::Result<Box<dyn SourceReader>> {
        let c = &self.config;
        let chunks = (c.batch_size, c.rows, c.rate_limit);
        GeneratedReader::boxed(self.clone(), split, chunks, positions)
    }
}

impl ChunkGenerator for DatagenSource {
    fn generate(&self, range: std::ops::Range<u64>) -> Result<RecordBatch> {
        DatagenSource::generate(self, range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Array;

    #[test]
    fn keys_stay_within_cardinality_and_ids_are_a_sequence() {
        let s = DatagenSource::try_new(DatagenConfig {
            rows: Some(1000),
            key_cardinality: 7,
            ..Default::default()
        })
        .unwrap();
        let b = s.generate(0..1000).unwrap();
        let keys = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        assert!(keys.values().iter().all(|k| (0..7).contains(k)));
        let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.value(999), 999);
        assert!(DatagenSource::try_new(DatagenConfig {
            key_cardinality: 0,
            ..Default::default()
        })
        .is_err());
    }
}
