//! Stateless operators: filter, project, and Rust closures over batches or typed rows.

use crate::error::{OperatorError, Result};
use crate::expr::{compile, CompiledExpr};
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::logical_expr::Expr;
use oxflow_runtime::{Operator, OperatorFactory, Output, SubtaskInfo};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

/// Keeps the records for which a boolean expression is true (null counts as false).
#[derive(Debug, Clone)]
pub struct Filter {
    predicate: CompiledExpr,
    schema: SchemaRef,
}

impl Filter {
    /// Plans `predicate` against `schema`; it must be boolean.
    pub fn try_new(predicate: &Expr, schema: SchemaRef) -> Result<Self> {
        let predicate = compile(predicate, &schema)?;
        if predicate.field.data_type() != &DataType::Boolean {
            return Err(OperatorError::InvalidExpression {
                expr: predicate.field.name().clone(),
                reason: format!(
                    "a filter needs a boolean expression, this one is {}",
                    predicate.field.data_type()
                ),
            });
        }
        Ok(Filter { predicate, schema })
    }
}

impl Operator for Filter {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Output) -> oxflow_runtime::Result<()> {
        let mask = self
            .predicate
            .physical
            .evaluate(&batch)?
            .into_array(batch.num_rows())?;
        let mask = mask
            .as_any()
            .downcast_ref::<BooleanArray>()
            .expect("checked boolean when planned");
        if mask.true_count() == batch.num_rows() {
            out.emit(batch);
        } else {
            out.emit(filter_record_batch(&batch, mask)?);
        }
        Ok(())
    }
}

impl OperatorFactory for Filter {
    fn name(&self) -> String {
        "filter".into()
    }
    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn create(&self, _: SubtaskInfo) -> oxflow_runtime::Result<Box<dyn Operator>> {
        Ok(Box::new(self.clone()))
    }
}

/// Computes new columns from expressions (a `SELECT` list): map and project in one.
#[derive(Debug, Clone)]
pub struct Project {
    exprs: Vec<CompiledExpr>,
    schema: SchemaRef,
}

impl Project {
    /// Plans each expression against `input`; output columns are named after their aliases.
    pub fn try_new(exprs: &[Expr], input: SchemaRef) -> Result<Self> {
        let exprs = exprs
            .iter()
            .map(|e| compile(e, &input))
            .collect::<Result<Vec<_>>>()?;
        let mut names = std::collections::HashSet::new();
        for e in &exprs {
            if !names.insert(e.field.name().clone()) {
                return Err(OperatorError::InvalidExpression {
                    expr: e.field.name().clone(),
                    reason: "two output columns have this name; give one an alias".into(),
                });
            }
        }
        let schema = Arc::new(Schema::new(
            exprs.iter().map(|e| e.field.clone()).collect::<Vec<_>>(),
        ));
        Ok(Project { exprs, schema })
    }
}

impl Operator for Project {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Output) -> oxflow_runtime::Result<()> {
        let columns = self
            .exprs
            .iter()
            .map(|e| e.physical.evaluate(&batch)?.into_array(batch.num_rows()))
            .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}

impl OperatorFactory for Project {
    fn name(&self) -> String {
        "project".into()
    }
    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn create(&self, _: SubtaskInfo) -> oxflow_runtime::Result<Box<dyn Operator>> {
        Ok(Box::new(self.clone()))
    }
}

/// A user function from a batch to a batch of a declared schema.
pub type BatchFn = dyn Fn(RecordBatch) -> Result<RecordBatch> + Send + Sync;

/// Applies a Rust closure to each batch: for what expressions cannot say.
#[derive(Clone)]
pub struct MapBatches {
    name: String,
    function: Arc<BatchFn>,
    schema: SchemaRef,
}

impl MapBatches {
    /// `function` must return batches of `output` schema; this is checked on every batch.
    pub fn new(name: impl Into<String>, output: SchemaRef, function: Arc<BatchFn>) -> Self {
        MapBatches {
            name: name.into(),
            function,
            schema: output,
        }
    }
}

impl Operator for MapBatches {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Output) -> oxflow_runtime::Result<()> {
        let result = (self.function)(batch)?;
        if result.schema().fields() != self.schema.fields() {
            return Err(OperatorError::TypedRow(format!(
                "map `{}` returned columns {:?}, but declared {:?}",
                self.name,
                result
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>(),
                self.schema
                    .fields()
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
            ))
            .into());
        }
        out.emit(result);
        Ok(())
    }
}

impl OperatorFactory for MapBatches {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn create(&self, _: SubtaskInfo) -> oxflow_runtime::Result<Box<dyn Operator>> {
        Ok(Box::new(self.clone()))
    }
}

/// A Rust type that is one row of a stream: serde gives its fields, [`TypedRow::schema`]
/// their Arrow types. Timestamps are `i64` milliseconds in the struct.
pub trait TypedRow: Serialize + DeserializeOwned + Send + 'static {
    /// The Arrow schema of a batch of these rows.
    fn schema() -> SchemaRef;
}

/// Decodes the rows of `batch` into `T` (by column name, through serde).
pub fn batch_to_rows<T: DeserializeOwned>(batch: &RecordBatch) -> Result<Vec<T>> {
    // Timestamps become their i64 milliseconds so that structs can hold them as numbers.
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Timestamp(_, _) => cast(c, &DataType::Int64),
            _ => Ok(c.clone()),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| Field::new(f.name(), c.data_type().clone(), f.is_nullable()))
        .collect();
    let plain = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    writer.write(&plain)?;
    writer.finish()?;
    let json = writer.into_inner();
    if json.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&json).map_err(|e| OperatorError::TypedRow(e.to_string()))
}

/// Encodes `rows` as a batch of `schema`.
pub fn rows_to_batch<T: Serialize>(rows: &[T], schema: SchemaRef) -> Result<RecordBatch> {
    let mut decoder = datafusion::arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.len().max(1))
        .build_decoder()?;
    decoder
        .serialize(rows)
        .map_err(|e| OperatorError::TypedRow(e.to_string()))?;
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

/// A user function from one typed row to any number of typed rows (a flat map: return one
/// to map, none to filter).
pub type RowFn<I, O> = dyn Fn(I) -> Vec<O> + Send + Sync;

/// Applies a Rust closure to typed rows: the batch is decoded into `I`s, each goes through
/// the closure, and the `O`s are encoded back. Per-row code: use expressions where they do.
pub struct MapRows<I, O> {
    name: String,
    function: Arc<RowFn<I, O>>,
}

impl<I, O> Clone for MapRows<I, O> {
    fn clone(&self) -> Self {
        MapRows {
            name: self.name.clone(),
            function: self.function.clone(),
        }
    }
}

impl<I: TypedRow, O: TypedRow> MapRows<I, O> {
    /// Wraps `function`.
    pub fn new(name: impl Into<String>, function: Arc<RowFn<I, O>>) -> Self {
        MapRows {
            name: name.into(),
            function,
        }
    }
}

impl<I: TypedRow, O: TypedRow> Operator for MapRows<I, O> {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Output) -> oxflow_runtime::Result<()> {
        let rows: Vec<I> = batch_to_rows(&batch).map_err(|e| {
            OperatorError::TypedRow(format!("map `{}` could not read its input: {e}", self.name))
        })?;
        let outputs: Vec<O> = rows.into_iter().flat_map(|r| (self.function)(r)).collect();
        out.emit(rows_to_batch(&outputs, O::schema())?);
        Ok(())
    }
}

impl<I: TypedRow, O: TypedRow> OperatorFactory for MapRows<I, O> {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn output_schema(&self) -> SchemaRef {
        O::schema()
    }
    fn create(&self, _: SubtaskInfo) -> oxflow_runtime::Result<Box<dyn Operator>> {
        Ok(Box::new(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::TimeUnit;
    use datafusion::prelude::{col, lit};
    use serde::Deserialize;

    fn bids() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("auction", DataType::Int64, false),
            Field::new("price", DataType::Int64, false),
            Field::new(
                "date_time",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 123, 246])),
                Arc::new(Int64Array::from(vec![500, 2000, 10])),
                Arc::new(TimestampMillisecondArray::from(vec![1, 2, 3])),
            ],
        )
        .unwrap()
    }

    fn run(op: &mut dyn Operator, batch: RecordBatch) -> Vec<RecordBatch> {
        let mut out = Output::default();
        op.on_batch(batch, &mut out).unwrap();
        out.drain().collect()
    }

    #[test]
    fn filter_keeps_matching_rows() {
        let b = bids();
        let mut f = Filter::try_new(&col("price").gt(lit(1000)), b.schema()).unwrap();
        let out = run(&mut f, b);
        assert_eq!(out[0].num_rows(), 1);
    }

    #[test]
    fn filter_rejects_non_boolean() {
        let err = Filter::try_new(&col("price"), bids().schema())
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a boolean expression"), "{err}");
    }

    #[test]
    fn project_computes_and_names_columns() {
        let b = bids();
        let mut p = Project::try_new(
            &[col("auction"), (col("price") * lit(0.908)).alias("euros")],
            b.schema(),
        )
        .unwrap();
        let out = run(&mut p, b);
        assert_eq!(out[0].schema().field(1).name(), "euros");
        assert_eq!(out[0].num_columns(), 2);
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Bid {
        auction: i64,
        price: i64,
        date_time: i64,
    }
    impl TypedRow for Bid {
        fn schema() -> SchemaRef {
            bids().schema()
        }
    }
    #[derive(Serialize, Deserialize)]
    struct Label {
        auction: i64,
        label: String,
    }
    impl TypedRow for Label {
        fn schema() -> SchemaRef {
            Arc::new(Schema::new(vec![
                Field::new("auction", DataType::Int64, false),
                Field::new("label", DataType::Utf8, false),
            ]))
        }
    }

    #[test]
    fn typed_rows_round_trip_and_flat_map() {
        let rows: Vec<Bid> = batch_to_rows(&bids()).unwrap();
        assert_eq!(
            rows[1],
            Bid {
                auction: 123,
                price: 2000,
                date_time: 2
            }
        );
        let back = rows_to_batch(&rows, Bid::schema()).unwrap();
        assert_eq!(back, bids());
        let mut m = MapRows::<Bid, Label>::new(
            "label",
            Arc::new(|b: Bid| {
                if b.price < 100 {
                    vec![]
                } else {
                    vec![Label {
                        auction: b.auction,
                        label: format!("{}c", b.price),
                    }]
                }
            }),
        );
        let out = run(&mut m, bids());
        let labels = out[0]
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(
            labels.iter().flatten().collect::<Vec<_>>(),
            ["500c", "2000c"]
        );
    }
}
