//! Compiling DataFusion expressions against a stream's schema.
//!
//! Expressions are planned once, when the pipeline is built, with DataFusion's type coercion
//! (so `col("price").gt(lit(1000))` works whether `price` is Int32 or Int64); the physical
//! expression then runs on every batch with no per-row interpretation.

use crate::error::{column_list, OperatorError, Result};
use datafusion::arrow::datatypes::{Field, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use std::sync::Arc;

/// A physical expression with the name and field it produces.
#[derive(Debug, Clone)]
pub struct CompiledExpr {
    /// The expression, ready to evaluate on batches of the input schema.
    pub physical: Arc<dyn PhysicalExpr>,
    /// The output field (named after the alias, column or expression text).
    pub field: Field,
}

fn invalid(expr: &Expr, reason: impl ToString) -> OperatorError {
    OperatorError::InvalidExpression {
        expr: expr.to_string(),
        reason: reason.to_string(),
    }
}

/// Checks that every column `expr` reads exists, with an error naming the missing one.
pub fn check_columns(expr: &Expr, schema: &SchemaRef, context: &str) -> Result<()> {
    for column in expr.column_refs() {
        if schema.index_of(&column.name).is_err() {
            return Err(OperatorError::MissingColumn {
                column: column.name.clone(),
                context: format!("{context} `{expr}`"),
                available: column_list(schema),
            });
        }
    }
    Ok(())
}

/// Plans `expr` against `schema`.
pub fn compile(expr: &Expr, schema: &SchemaRef) -> Result<CompiledExpr> {
    check_columns(expr, schema, "expression")?;
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    let physical = SessionContext::new()
        .create_physical_expr(expr.clone(), &df_schema)
        .map_err(|e| invalid(expr, e))?;
    let data_type = physical.data_type(schema).map_err(|e| invalid(expr, e))?;
    let nullable = physical.nullable(schema).map_err(|e| invalid(expr, e))?;
    let name = match expr {
        Expr::Column(c) => c.name.clone(),
        other => other.schema_name().to_string(),
    };
    Ok(CompiledExpr {
        physical,
        field: Field::new(name, data_type, nullable),
    })
}

/// Parses a SQL expression such as `price > 1000` against `schema` (job specs use these).
pub fn parse_sql(sql: &str, schema: &SchemaRef) -> Result<Expr> {
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    // String types are Utf8, as every connector reads and writes them (DataFusion would map
    // `CAST(x AS VARCHAR)` to Utf8View).
    let mut config = datafusion::prelude::SessionConfig::new();
    config.options_mut().sql_parser.map_string_types_to_utf8view = false;
    let context = SessionContext::new_with_config(config);
    for function in crate::functions::all() {
        context.register_udf(function);
    }
    context
        .parse_sql_expr(sql, &df_schema)
        .map_err(|e| OperatorError::InvalidExpression {
            expr: sql.to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Schema};
    use datafusion::prelude::{col, lit};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("price", DataType::Int64, false),
            Field::new("channel", DataType::Utf8, false),
        ]))
    }

    #[test]
    fn literal_types_are_coerced() {
        let c = compile(&col("price").gt(lit(1000i32)), &schema()).unwrap();
        assert_eq!(c.field.data_type(), &DataType::Boolean);
        let c = compile(&(col("price") * lit(0.908)).alias("euros"), &schema()).unwrap();
        assert_eq!(c.field.name(), "euros");
        assert_eq!(c.field.data_type(), &DataType::Float64);
    }

    #[test]
    fn missing_column_is_named() {
        let err = compile(&col("prize").gt(lit(1)), &schema())
            .unwrap_err()
            .to_string();
        assert!(err.contains("column `prize` not found"), "{err}");
        assert!(err.contains("price, channel"), "{err}");
    }

    #[test]
    fn bad_sql_is_reported_with_its_text() {
        let err = parse_sql("price >", &schema()).unwrap_err().to_string();
        assert!(err.contains("invalid expression `price >`"), "{err}");
        assert!(parse_sql("price > 10 AND channel = 'x'", &schema()).is_ok());
    }
}
