//! JSON-lines encoding shared by the sinks: one object per row, timestamps as RFC 3339 UTC
//! strings with milliseconds (`2024-01-01T00:00:10.000Z`).

use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::writer::LineDelimited;
use datafusion::arrow::json::WriterBuilder;
use datafusion::arrow::record_batch::RecordBatch;

/// Appends `batch` to `out` as JSON lines.
pub fn encode_json_lines(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), ArrowError> {
    let mut writer = WriterBuilder::new()
        .with_timestamp_format("%Y-%m-%dT%H:%M:%S%.3fZ".to_string())
        .with_timestamp_tz_format("%Y-%m-%dT%H:%M:%S%.3fZ".to_string())
        .build::<_, LineDelimited>(out);
    writer.write(batch)?;
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    #[test]
    fn timestamps_are_rfc3339_with_millis() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1])),
                Arc::new(TimestampMillisecondArray::from(vec![1_704_067_210_000])),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        encode_json_lines(&b, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"a\":1,\"t\":\"2024-01-01T00:00:10.000Z\"}\n"
        );
    }
}
