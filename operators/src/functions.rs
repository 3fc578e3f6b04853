//! Flink SQL's scalar functions that DataFusion lacks, as DataFusion functions: every
//! expression parsed from SQL (a job spec's, a SQL job's) can call them.
//!
//! - `regexp_extract(str, regex[, group])`: the `group`-th capture group (default 1; 0 is
//!   the whole match) of the first match of `regex` in `str`; NULL when nothing matches or
//!   the group took no part.
//! - `split_index(str, delimiter, index)`: the `index`-th (from 0) part of `str` split at
//!   `delimiter`; NULL when there is no such part.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{exec_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use std::collections::HashMap;
use std::sync::Arc;

/// Every function of this module.
pub fn all() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::new_from_impl(RegexpExtract::new()),
        ScalarUDF::new_from_impl(SplitIndex::new()),
    ]
}

/// The arguments as arrays of one length, and whether they all were scalars.
fn arrays(args: &ScalarFunctionArgs) -> Result<(Vec<ArrayRef>, bool)> {
    let scalar = args
        .args
        .iter()
        .all(|a| matches!(a, ColumnarValue::Scalar(_)));
    Ok((ColumnarValue::values_to_arrays(&args.args)?, scalar))
}

/// `out` as the function's value: one scalar if every argument was one.
fn finish(out: ArrayRef, scalar: bool) -> Result<ColumnarValue> {
    if scalar {
        return Ok(ColumnarValue::Scalar(
            datafusion::common::ScalarValue::try_from_array(&out, 0)?,
        ));
    }
    Ok(ColumnarValue::Array(out))
}

/// Flink's `REGEXP_EXTRACT`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct RegexpExtract {
    signature: Signature,
}

impl RegexpExtract {
    fn new() -> Self {
        RegexpExtract {
            signature: Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![DataType::Utf8, DataType::Utf8]),
                    TypeSignature::Exact(vec![DataType::Utf8, DataType::Utf8, DataType::Int64]),
                ],
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for RegexpExtract {
    fn name(&self) -> &str {
        "regexp_extract"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (arrays, scalar) = arrays(&args)?;
        let text = arrays[0].as_string::<i32>();
        let patterns = arrays[1].as_string::<i32>();
        let groups = arrays.get(2).map(|a| a.as_primitive::<Int64Type>());
        // A pattern is compiled once per batch (usually it is one literal).
        let mut compiled: HashMap<&str, regex::Regex> = HashMap::new();
        let mut out = StringBuilder::with_capacity(text.len(), 0);
        for row in 0..text.len() {
            let group = match groups {
                Some(g) if g.is_null(row) => {
                    out.append_null();
                    continue;
                }
                Some(g) => g.value(row),
                None => 1,
            };
            if text.is_null(row) || patterns.is_null(row) || group < 0 {
                out.append_null();
                continue;
            }
            let pattern = patterns.value(row);
            if !compiled.contains_key(pattern) {
                match regex::Regex::new(pattern) {
                    Ok(r) => compiled.insert(pattern, r),
                    Err(e) => return exec_err!("regexp_extract: bad pattern `{pattern}`: {e}"),
                };
            }
            let value = compiled[pattern]
                .captures(text.value(row))
                .and_then(|c| c.get(group as usize))
                .map(|m| m.as_str());
            out.append_option(value);
        }
        finish(Arc::new(out.finish()), scalar)
    }
}

/// Flink's `SPLIT_INDEX`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SplitIndex {
    signature: Signature,
}

impl SplitIndex {
    fn new() -> Self {
        SplitIndex {
            signature: Signature::exact(
                vec![DataType::Utf8, DataType::Utf8, DataType::Int64],
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for SplitIndex {
    fn name(&self) -> &str {
        "split_index"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (arrays, scalar) = arrays(&args)?;
        let text = arrays[0].as_string::<i32>();
        let delimiters = arrays[1].as_string::<i32>();
        let indexes = arrays[2].as_primitive::<Int64Type>();
        let mut out = StringBuilder::with_capacity(text.len(), 0);
        for row in 0..text.len() {
            if text.is_null(row) || delimiters.is_null(row) || indexes.is_null(row) {
                out.append_null();
                continue;
            }
            let (delimiter, index) = (delimiters.value(row), indexes.value(row));
            let part = usize::try_from(index)
                .ok()
                .filter(|_| !delimiter.is_empty())
                .and_then(|i| text.value(row).split(delimiter).nth(i));
            out.append_option(part);
        }
        finish(Arc::new(out.finish()), scalar)
    }
}

#[cfg(test)]
mod tests {
    use crate::expr::{compile, parse_sql};
    use datafusion::arrow::array::{AsArray, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn run(sql: &str, urls: &[Option<&str>]) -> Vec<Option<String>> {
        let schema = Arc::new(Schema::new(vec![Field::new("url", DataType::Utf8, true)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(urls.to_vec()))],
        )
        .unwrap();
        let expr = parse_sql(sql, &schema).unwrap();
        let compiled = compile(&expr, &schema).unwrap();
        let out = compiled
            .physical
            .evaluate(&batch)
            .unwrap()
            .into_array(batch.num_rows())
            .unwrap();
        out.as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    }

    #[test]
    fn regexp_extract_as_flink_documents_it() {
        let urls = [
            Some("https://www.nexmark.com/a/b?channel_id=42&x=1"),
            Some("channel_id=7"),
            Some("https://no.channel/"),
            None,
        ];
        assert_eq!(
            run(
                "regexp_extract(url, '(&|^|\\?)channel_id=([^&]*)', 2)",
                &urls
            ),
            vec![Some("42".into()), Some("7".into()), None, None]
        );
        assert_eq!(
            run("regexp_extract(url, 'channel_id=([0-9]+)')", &urls[..2]),
            vec![Some("42".into()), Some("7".into())]
        );
        let err = parse_sql(
            "regexp_extract(url, '(')",
            &Arc::new(Schema::new(vec![Field::new("url", DataType::Utf8, true)])),
        )
        .and_then(|e| {
            let schema = Arc::new(Schema::new(vec![Field::new("url", DataType::Utf8, true)]));
            let c = compile(&e, &schema)?;
            let batch =
                RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec!["x"]))]).unwrap();
            c.physical.evaluate(&batch).map_err(Into::into)
        });
        assert!(err.is_err(), "a bad pattern is an error, not a panic");
    }

    #[test]
    fn split_index_counts_from_zero_and_gives_null_past_the_end() {
        let urls = [Some("https://www.nexmark.com/a/b"), Some("x"), None];
        assert_eq!(
            run("split_index(url, '/', 3)", &urls),
            vec![Some("a".into()), None, None]
        );
        assert_eq!(
            run("split_index(url, '/', 0)", &urls),
            vec![Some("https:".into()), Some("x".into()), None]
        );
        assert_eq!(run("split_index(url, '/', -1)", &urls[..1]), vec![None]);
    }
}
