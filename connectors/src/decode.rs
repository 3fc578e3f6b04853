//! Decoding text records (JSON objects, CSV rows) into Arrow batches, shared by the file and
//! Kafka sources: a whole batch at once while every record parses, record by record when one
//! does not, so that the bad one can be named (file and line, topic, partition and offset)
//! and skipped or reported.

use crate::flat_json::FlatJson;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

/// How text records are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFormat {
    /// One JSON object per record.
    Json,
    /// Comma (or other) separated values, one record per line, no header.
    Csv {
        /// The separator byte.
        delimiter: u8,
    },
}

enum Decoder {
    Json(Box<datafusion::arrow::json::reader::Decoder>),
    Csv(Box<datafusion::arrow::csv::reader::Decoder>),
}

impl Decoder {
    fn new(format: TextFormat, schema: &SchemaRef, batch_size: usize) -> Result<Self, ArrowError> {
        Ok(match format {
            TextFormat::Json => Decoder::Json(Box::new(
                datafusion::arrow::json::ReaderBuilder::new(schema.clone())
                    .with_batch_size(batch_size)
                    .build_decoder()?,
            )),
            TextFormat::Csv { delimiter } => Decoder::Csv(Box::new(
                datafusion::arrow::csv::ReaderBuilder::new(schema.clone())
                    .with_header(false)
                    .with_delimiter(delimiter)
                    .with_batch_size(batch_size)
                    .build_decoder(),
            )),
        })
    }

    /// Decodes whole records into one batch.
    fn decode_all(&mut self, bytes: &[u8]) -> Result<Option<RecordBatch>, ArrowError> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let used = match self {
                Decoder::Json(d) => d.decode(rest)?,
                Decoder::Csv(d) => d.decode(rest)?,
            };
            if used == 0 {
                break;
            }
            rest = &rest[used..];
        }
        match self {
            Decoder::Json(d) => d.flush(),
            Decoder::Csv(d) => d.flush(),
        }
    }
}

/// Decodes batches of records of one format and schema.
#[derive(Debug, Clone)]
pub(crate) struct RecordDecoder {
    format: TextFormat,
    schema: SchemaRef,
    /// JSON of flat objects of simple types: the fast path, tried first.
    flat: Option<FlatJson>,
}

/// A decoded batch, and which records made its rows (indices into the records given, in
/// order; the others were bad and skipped).
pub(crate) struct Decoded {
    pub batch: RecordBatch,
    pub kept: Vec<usize>,
}

impl RecordDecoder {
    pub fn new(format: TextFormat, schema: SchemaRef) -> Self {
        let flat = match format {
            TextFormat::Json => FlatJson::plan(&schema),
            TextFormat::Csv { .. } => None,
        };
        RecordDecoder {
            format,
            schema,
            flat,
        }
    }

    /// Decodes message payloads, one record each (a queue's messages), under a bad-record
    /// policy: a bad one fails with where it is (`at(i)` names message `i`), or is logged and
    /// counted in `skipped`.
    pub fn decode_messages<'a>(
        &self,
        payloads: impl Iterator<Item = &'a [u8]>,
        policy: crate::file::BadRecordPolicy,
        skipped: &oxflow_runtime::metrics::Counter,
        at: impl Fn(usize) -> String,
    ) -> crate::error::Result<Decoded> {
        let mut bytes = Vec::new();
        let mut spans = Vec::new();
        for payload in payloads {
            let start = bytes.len();
            bytes.extend_from_slice(payload);
            bytes.push(b'\n');
            spans.push((start, bytes.len()));
        }
        self.decode(&bytes, &spans, |i, reason| match policy {
            crate::file::BadRecordPolicy::Fail => Err(crate::error::ConnectorError::BadInput {
                at: format!("bad record in {}", at(i)),
                reason,
            }),
            crate::file::BadRecordPolicy::Skip => {
                tracing::warn!(at = %at(i), error = %reason, "skipping a bad message");
                skipped.add(1);
                Ok(())
            }
        })
    }

    /// Decodes `records` (byte ranges of `bytes`, one whole record each, each ending in a
    /// newline) into one batch. A record that does not parse, or that is not exactly one row,
    /// is handed to `bad` with the reason: an error from `bad` stops decoding, `Ok` skips it.
    pub fn decode<E>(
        &self,
        bytes: &[u8],
        records: &[(usize, usize)],
        mut bad: impl FnMut(usize, String) -> Result<(), E>,
    ) -> Result<Decoded, E>
    where
        E: From<ArrowError>,
    {
        if let Some(batch) = self.flat.as_ref().and_then(|f| f.decode(bytes, records)) {
            return Ok(Decoded {
                batch,
                kept: (0..records.len()).collect(),
            });
        }
        let batch_size = records.len().max(1);
        let whole = Decoder::new(self.format, &self.schema, batch_size)?.decode_all(bytes);
        if let Ok(batch) = whole {
            let batch = batch.unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone()));
            if batch.num_rows() == records.len() {
                return Ok(Decoded {
                    batch,
                    kept: (0..records.len()).collect(),
                });
            }
        }
        // Slow path: one record at a time, to find the bad ones.
        let mut good = Vec::new();
        let mut kept = Vec::new();
        for (i, &(start, end)) in records.iter().enumerate() {
            // Room for two rows: a record holding two objects must show as two, not one.
            let decoded =
                Decoder::new(self.format, &self.schema, 2)?.decode_all(&bytes[start..end]);
            match decoded {
                Ok(Some(b)) if b.num_rows() == 1 => {
                    good.push(b);
                    kept.push(i);
                }
                Ok(b) => bad(
                    i,
                    format!(
                        "expected one record, found {}",
                        b.map_or(0, |b| b.num_rows())
                    ),
                )?,
                Err(e) => bad(i, e.to_string())?,
            }
        }
        Ok(Decoded {
            batch: concat_batches(&self.schema, &good)?,
            kept,
        })
    }
}

/// `texts` as records: their bytes, each ending in a newline, and each one's range.
#[cfg(test)]
pub(crate) fn records(texts: &[&str]) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut bytes = Vec::new();
    let mut spans = Vec::new();
    for t in texts {
        let start = bytes.len();
        bytes.extend_from_slice(t.as_bytes());
        bytes.push(b'\n');
        spans.push((start, bytes.len()));
    }
    (bytes, spans)
}

/// arrow-json's reading of `records` JSON records in `bytes`, as the general path decodes a
/// batch (`None`: an error, or not one row per record): the reference for the fast path.
#[cfg(test)]
pub(crate) fn general_json(
    schema: &SchemaRef,
    bytes: &[u8],
    records: usize,
) -> Option<RecordBatch> {
    let mut decoder = Decoder::new(TextFormat::Json, schema, records.max(1)).ok()?;
    let batch = decoder.decode_all(bytes).ok()??;
    (batch.num_rows() == records).then_some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        /// Fuzz: any bytes, cut into records anywhere, decode (JSON and CSV) into rows or
        /// bad records, never a panic; every record is either kept or reported.
        #[test]
        fn decoding_any_records_never_panics(
            texts in proptest::collection::vec("[ -~\\n{}\"\\[\\]:,0-9a-z\\\\]{0,40}", 0..12),
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let schema = Arc::new(Schema::new(vec![
                Field::new("a", DataType::Int64, true),
                Field::new("b", DataType::Utf8, true),
            ]));
            let mut all: Vec<String> = texts.iter().map(|t| t.replace('\n', " ")).collect();
            all.push(String::from_utf8_lossy(&raw).replace('\n', " "));
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            let (bytes, spans) = records(&refs);
            for format in [TextFormat::Json, TextFormat::Csv { delimiter: b',' }] {
                let d = RecordDecoder::new(format, schema.clone());
                let mut bad = 0;
                if let Ok(out) = d.decode::<ArrowError>(&bytes, &spans, |_, _| {
                    bad += 1;
                    Ok(())
                }) {
                    proptest::prop_assert_eq!(out.kept.len() + bad, spans.len());
                    proptest::prop_assert_eq!(out.batch.num_rows(), out.kept.len());
                }
            }
        }
    }

    #[test]
    fn bad_records_are_named_by_index_and_the_rest_kept() {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let d = RecordDecoder::new(TextFormat::Json, schema);
        let (bytes, spans) = records(&[r#"{"a":1}"#, r#"{"a":"x"}"#, r#"{"a":3} {"a":4}"#, "{"]);
        let mut bad = Vec::new();
        let out = d
            .decode::<ArrowError>(&bytes, &spans, |i, why| {
                bad.push((i, why));
                Ok(())
            })
            .unwrap();
        let a = out
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(a.values(), &[1]);
        assert_eq!(out.kept, [0]);
        assert_eq!(bad.iter().map(|b| b.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(bad[1].1.contains("found 2"), "{:?}", bad[1]);
    }
}
