//! JSON-lines encoding shared by the sinks: one object per row, timestamps as RFC 3339 UTC
//! strings with milliseconds (`2024-01-01T00:00:10.000Z`).

use datafusion::arrow::array::{ArrayRef, AsArray, PrimitiveArray, StringArray, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit, TimestampMillisecondType};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::writer::LineDelimited;
use datafusion::arrow::json::WriterBuilder;
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;

/// Appends `batch` to `out` as JSON lines.
pub fn encode_json_lines(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), ArrowError> {
    let batch = &format_millisecond_timestamps(batch)?;
    let mut writer = WriterBuilder::new()
        .with_timestamp_format("%Y-%m-%dT%H:%M:%S%.3fZ".to_string())
        .with_timestamp_tz_format("%Y-%m-%dT%H:%M:%S%.3fZ".to_string())
        .build::<_, LineDelimited>(out);
    writer.write(batch)?;
    writer.finish()
}

/// Millisecond timestamps formatted as text up front: the JSON writer formats each one through
/// a strftime pattern it parses again for every value, which was a tenth of a Kafka
/// pass-through job's CPU. Same text, a few times faster. Columns with a year outside
/// 0..=9999 are left to the writer.
fn format_millisecond_timestamps(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let is_ms = |t: &DataType| matches!(t, DataType::Timestamp(TimeUnit::Millisecond, _));
    if !schema.fields().iter().any(|f| is_ms(f.data_type())) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let formatted = is_ms(field.data_type())
            .then(|| format_millis(column.as_primitive::<TimestampMillisecondType>()))
            .flatten();
        match formatted {
            Some(text) => {
                fields.push(Field::new(
                    field.name(),
                    DataType::Utf8,
                    field.is_nullable(),
                ));
                columns.push(Arc::new(text) as ArrayRef);
            }
            None => {
                fields.push(field.as_ref().clone());
                columns.push(column.clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// `2024-01-01T00:00:10.000Z` for each value, or `None` if a year is not four digits.
fn format_millis(values: &PrimitiveArray<TimestampMillisecondType>) -> Option<StringArray> {
    let mut out = StringBuilder::with_capacity(values.len(), values.len() * 24);
    let mut text = [0u8; 24];
    for v in values.iter() {
        let Some(ms) = v else {
            out.append_null();
            continue;
        };
        let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
        let (year, month, day) = civil_from_days(days);
        if !(0..=9999).contains(&year) {
            return None;
        }
        let (secs, millis) = (ms_of_day / 1000, ms_of_day % 1000);
        let digits = |out: &mut [u8], mut n: i64| {
            for slot in out.iter_mut().rev() {
                *slot = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        digits(&mut text[0..4], year);
        text[4] = b'-';
        digits(&mut text[5..7], month);
        text[7] = b'-';
        digits(&mut text[8..10], day);
        text[10] = b'T';
        digits(&mut text[11..13], secs / 3600);
        text[13] = b':';
        digits(&mut text[14..16], secs / 60 % 60);
        text[16] = b':';
        digits(&mut text[17..19], secs % 60);
        text[19] = b'.';
        digits(&mut text[20..23], millis);
        text[23] = b'Z';
        out.append_value(std::str::from_utf8(&text).expect("ASCII digits"));
    }
    Some(out.finish())
}

/// Year, month and day of a day count since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Rows as JSON values, one per row (a message each); `buffer` is scratch space.
pub(crate) fn json_values(
    batch: &RecordBatch,
    buffer: &mut Vec<u8>,
) -> oxflow_runtime::Result<Vec<bytes::Bytes>> {
    buffer.clear();
    encode_json_lines(batch, buffer)?;
    Ok(buffer
        .split(|&b| b == b'\n')
        .take(batch.num_rows())
        .map(bytes::Bytes::copy_from_slice)
        .collect())
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

    proptest::proptest! {
        /// The fast path writes exactly what the JSON writer's strftime path writes.
        #[test]
        fn fast_timestamps_equal_the_writers_own(ms in -62_135_596_800_000i64..253_402_300_799_999) {
            let values = TimestampMillisecondArray::from(vec![ms]);
            let fast = format_millis(&values).unwrap();
            let schema = Arc::new(Schema::new(vec![Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            )]));
            let b = RecordBatch::try_new(schema, vec![Arc::new(values)]).unwrap();
            let mut slow = Vec::new();
            let mut writer = WriterBuilder::new()
                .with_timestamp_format("%Y-%m-%dT%H:%M:%S%.3fZ".to_string())
                .build::<_, LineDelimited>(&mut slow);
            writer.write(&b).unwrap();
            writer.finish().unwrap();
            proptest::prop_assert_eq!(
                String::from_utf8(slow).unwrap(),
                format!("{{\"t\":\"{}\"}}\n", fast.value(0))
            );
        }
    }
}
