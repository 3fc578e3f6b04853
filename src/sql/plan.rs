//! Queries into streams, bottom-up: each relation of a `FROM` becomes a [`Stream`] (a
//! source with its watermarks, a view's or subquery's plan, a window table function over
//! one), then `WHERE`, `GROUP BY` and the select list add steps through the public API.
//!
//! Expressions stay SQL until the end: identifiers are resolved against the relation (and
//! quoted, since Flink's names are case-sensitive and DataFusion folds unquoted ones), Flink's
//! functions are written as DataFusion's, and the text is parsed by DataFusion against the
//! stream's schema, so a SQL job runs the very operators a Rust job runs.

use super::catalog::{Catalog, Connector, Table};
use super::parse::{expr_start, ColumnKind, SqlType};
use super::{at, sql_error, Located};
use crate::error::Result;
use crate::spec::JobSpec;
use crate::spec::{SinkSpec, SourceSpec};
use crate::{Pipeline, Stream};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr as DfExpr;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, DateTimeField, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments,
    GroupByExpr, Ident, ObjectName, Query, Select, SelectItem, SetExpr, SetOperator, SetQuantifier,
    TableFactor, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Location;
use oxflow_operators::WindowSpec;
use oxflow_runtime::watermark::WatermarkStrategy;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::Duration;

/// The columns an enclosing query reads from a relation (`None`: all of them): a view or
/// subquery computes only those, so that its source reads only what the query uses.
type Needed = Option<std::collections::HashSet<String>>;

/// Adds the names `expr` reads (every part of a qualified name) to `names`.
fn names_in(expr: &Expr, names: &mut std::collections::HashSet<String>) {
    use datafusion::sql::sqlparser::ast::visit_expressions;
    let _ = visit_expressions(expr, |e| {
        match e {
            Expr::Identifier(id) => {
                names.insert(id.value.clone());
            }
            Expr::CompoundIdentifier(parts) => {
                names.extend(parts.iter().map(|p| p.value.clone()));
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
}

/// The names `select` reads from its `FROM` (`None` with a wildcard).
fn referenced(select: &Select) -> Needed {
    let mut names = std::collections::HashSet::new();
    for item in &select.projection {
        match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                names_in(e, &mut names)
            }
            _ => return None,
        }
    }
    if let Some(e) = &select.selection {
        names_in(e, &mut names);
    }
    if let GroupByExpr::Expressions(exprs, _) = &select.group_by {
        exprs.iter().for_each(|e| names_in(e, &mut names));
    }
    if let Some(e) = &select.having {
        names_in(e, &mut names);
    }
    Some(names)
}

/// The select items whose output an enclosing query reads (at least one).
fn pruned(items: &[SelectItem], needed: Needed) -> Vec<SelectItem> {
    let Some(needed) = needed else {
        return items.to_vec();
    };
    let kept: Vec<SelectItem> = items
        .iter()
        .enumerate()
        .filter(|(i, item)| match item {
            SelectItem::UnnamedExpr(e) => needed.contains(&item_name(e, *i)),
            SelectItem::ExprWithAlias { alias, .. } => needed.contains(&alias.value),
            _ => true,
        })
        .map(|(_, item)| item.clone())
        .collect();
    if kept.is_empty() {
        items.iter().take(1).cloned().collect()
    } else {
        kept
    }
}

/// Aggregate calls of a select by their text, each with the column that holds its value.
type Calls = Vec<(String, Expr)>;

/// Views may use views; a cycle cannot be declared, but depth is bounded all the same.
const MAX_DEPTH: usize = 64;

/// Plans one statement's query.
pub(crate) struct Planner<'a> {
    catalog: &'a Catalog,
    pipeline: Pipeline,
    /// Whether views and subqueries compute only what the enclosing query reads (off to
    /// report an error against every column).
    prune: std::cell::Cell<bool>,
    /// `SET 'table.exec.state.ttl'`: how long a regular join keeps a row.
    state_ttl: Option<Duration>,
}

/// A relation being planned.
struct Rel {
    stream: Stream,
    /// Names that may qualify its columns (`B.price`): its table or view name and alias.
    qualifiers: Vec<String>,
    /// A window table function applied to it, waiting for its `GROUP BY window_start,
    /// window_end`.
    tvf: Option<(WindowSpec, Location)>,
    /// The columns holding the window bounds of the window aggregate it came from (start,
    /// end), by their names here: a `GROUP BY` over both aggregates the same windows again.
    bounds: Option<(String, String)>,
    /// The length of those windows, if they all have one (tumbling, hopping).
    window_ms: Option<u64>,
}

/// How expressions over a relation are resolved.
#[derive(Default)]
struct Scope {
    /// Column names of the stream.
    columns: Vec<String>,
    qualifiers: Vec<String>,
    /// Names that stand for an expression (a nexmark scan's `event_type` and computed
    /// columns), already resolved.
    substitutes: HashMap<String, Expr>,
    /// `row.field` of a nexmark scan: the generator's column, or NULL for another kind.
    fields: HashMap<(String, String), Expr>,
    /// Names that are another column here (a window's bounds renamed for its operator).
    renamed: HashMap<String, String>,
    /// After a join: `(relation, column)` to the joined stream's column.
    qualified: HashMap<(String, String), String>,
    /// After a join: names both sides have, which must be qualified.
    ambiguous: std::collections::HashSet<String>,
}

/// The names of `stream`'s columns, in order.
fn column_names(stream: &Stream) -> Vec<String> {
    stream
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// Parses one SQL expression the planner writes itself.
fn ast(sql: &str) -> Result<Expr> {
    Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| sql_error(format!("internal expression `{sql}`: {e}")))
}

/// A column name as a quoted identifier expression.
fn column(name: &str) -> Expr {
    Expr::Identifier(Ident::with_quote('"', name))
}

/// The name of an expression's function, upper case, if it is a call.
fn function_name(f: &Function) -> String {
    f.name.to_string().to_ascii_uppercase()
}

/// The positional or named (`SIZE => ...`) arguments of a call.
fn arguments(f: &Function) -> Vec<(Option<String>, &Expr)> {
    let FunctionArguments::List(list) = &f.args else {
        return Vec::new();
    };
    list.args
        .iter()
        .filter_map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some((None, e)),
            FunctionArg::Named {
                name,
                arg: FunctionArgExpr::Expr(e),
                ..
            } => Some((Some(name.value.to_ascii_uppercase()), e)),
            _ => None,
        })
        .collect()
}

/// Milliseconds of an `INTERVAL 'n' UNIT` literal.
fn interval_ms(expr: &Expr) -> Result<u64> {
    let bad = || {
        at(
            expr_start(expr),
            format!("expected an interval such as INTERVAL '10' SECOND, found `{expr}`"),
        )
    };
    let Expr::Interval(interval) = expr else {
        return Err(bad());
    };
    let text = match interval.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::Number(s, _) => s.clone(),
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    };
    let unit_ms = match interval.leading_field {
        Some(DateTimeField::Millisecond | DateTimeField::Milliseconds) => 1.0,
        Some(DateTimeField::Second | DateTimeField::Seconds) | None => 1_000.0,
        Some(DateTimeField::Minute | DateTimeField::Minutes) => 60_000.0,
        Some(DateTimeField::Hour | DateTimeField::Hours) => 3_600_000.0,
        Some(DateTimeField::Day | DateTimeField::Days) => 86_400_000.0,
        _ => return Err(bad()),
    };
    if interval.last_field.is_some() {
        return Err(bad());
    }
    let n: f64 = text.trim().parse().map_err(|_| bad())?;
    let ms = n * unit_ms;
    if !(0.0..=1e15).contains(&ms) || ms.fract() != 0.0 {
        return Err(bad());
    }
    Ok(ms as u64)
}

/// Splits `a AND b AND c` into its conjuncts.
fn conjuncts(expr: &Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        Expr::Nested(inner) => conjuncts(inner, out),
        other => out.push(other.clone()),
    }
}

fn and_all(mut exprs: Vec<Expr>) -> Option<Expr> {
    let first = exprs.pop()?;
    Some(
        exprs
            .into_iter()
            .rev()
            .fold(first, |acc, e| Expr::BinaryOp {
                left: Box::new(e),
                op: BinaryOperator::And,
                right: Box::new(acc),
            }),
    )
}

/// Aggregate functions a `GROUP BY` computes (DataFusion's, under Flink's names).
const AGGREGATES: [&str; 12] = [
    "COUNT",
    "SUM",
    "MIN",
    "MAX",
    "AVG",
    "STDDEV",
    "STDDEV_POP",
    "STDDEV_SAMP",
    "VAR_POP",
    "VAR_SAMP",
    "FIRST_VALUE",
    "LAST_VALUE",
];

fn is_aggregate(expr: &Expr) -> bool {
    matches!(expr, Expr::Function(f) if AGGREGATES.contains(&function_name(f).as_str()) && f.over.is_none())
}

fn contains_aggregate(expr: &Expr) -> bool {
    let found = datafusion::sql::sqlparser::ast::visit_expressions(expr, |e| {
        if is_aggregate(e) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    found.is_break()
}

/// Replaces Flink's group-window functions in a select item (`TUMBLE_START(ts, ...)`) by
/// the window bound columns.
fn group_window_bounds(expr: &mut Expr) -> Result<()> {
    let flow = datafusion::sql::sqlparser::ast::visit_expressions_mut(expr, |e| {
        if let Expr::Function(f) = e {
            let name = function_name(f);
            for window in ["TUMBLE", "HOP", "SESSION"] {
                if let Some(which) = name.strip_prefix(window).and_then(|s| s.strip_prefix('_')) {
                    match which {
                        "START" => *e = column("window_start"),
                        "END" => *e = column("window_end"),
                        _ => {
                            return ControlFlow::Break(at(
                                f.name.0.first().map_or(Location::new(0, 0), |p| {
                                    use datafusion::sql::sqlparser::ast::Spanned;
                                    p.span().start
                                }),
                                format!(
                                    "{name} is not supported; use {window}_START or {window}_END"
                                ),
                            ))
                        }
                    }
                    break;
                }
            }
        }
        ControlFlow::Continue(())
    });
    match flow {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

impl Scope {
    fn of(rel: &Rel) -> Scope {
        Scope {
            columns: column_names(&rel.stream),
            qualifiers: rel.qualifiers.clone(),
            ..Scope::default()
        }
    }

    /// The names that qualify columns here.
    fn relations(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .qualifiers
            .iter()
            .cloned()
            .chain(self.qualified.keys().map(|(q, _)| q.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Which sides of a join `expr` reads: (left, right).
    fn sides(left: &Scope, right: &Scope, expr: &Expr) -> Result<(bool, bool)> {
        use datafusion::sql::sqlparser::ast::visit_expressions;
        let mut sides = (false, false);
        let flow = visit_expressions(expr, |e| {
            let (l, r) = match e {
                Expr::Identifier(id) => (left.resolve(id).is_ok(), right.resolve(id).is_ok()),
                Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
                    (left.rewrite(e).is_ok(), right.rewrite(e).is_ok())
                }
                _ => return ControlFlow::Continue(()),
            };
            if l && r {
                return ControlFlow::Break(at(
                    expr_start(e),
                    format!("`{e}` is on both sides of the join: qualify it"),
                ));
            }
            sides.0 |= l;
            sides.1 |= r;
            ControlFlow::Continue(())
        });
        match flow {
            ControlFlow::Break(e) => Err(e),
            ControlFlow::Continue(()) => Ok(sides),
        }
    }

    /// The column `name` resolves to.
    fn resolve(&self, name: &Ident) -> Result<Expr> {
        if self.ambiguous.contains(&name.value) {
            return Err(at(
                name.span.start,
                format!(
                    "column `{}` is on both sides of the join: qualify it",
                    name.value
                ),
            ));
        }
        if let Some(e) = self.substitutes.get(&name.value) {
            return Ok(Expr::Nested(Box::new(e.clone())));
        }
        let actual = self.renamed.get(&name.value).unwrap_or(&name.value);
        if self.columns.contains(actual) {
            return Ok(column(actual));
        }
        let known: Vec<&str> = self
            .columns
            .iter()
            .map(String::as_str)
            .chain(self.substitutes.keys().map(String::as_str))
            .filter(|c| !c.starts_with("__"))
            .collect();
        let case = known
            .iter()
            .find(|c| c.eq_ignore_ascii_case(&name.value))
            .map(|c| format!(" (names are case-sensitive: `{c}`)"))
            .unwrap_or_else(|| super::catalog::did_you_mean(&name.value, &known));
        Err(at(
            name.span.start,
            format!(
                "column `{}` not found{case}; the columns here are {}",
                name.value,
                known.join(", ")
            ),
        ))
    }

    /// `expr` with every name resolved and Flink's functions written as DataFusion's.
    fn rewrite(&self, expr: &Expr) -> Result<Expr> {
        let mut expr = expr.clone();
        let flow = datafusion::sql::sqlparser::ast::visit_expressions_mut(&mut expr, |e| {
            match self.rewrite_one(e) {
                Ok(Some(new)) => *e = new,
                Ok(None) => {}
                Err(err) => return ControlFlow::Break(err),
            }
            ControlFlow::Continue(())
        });
        match flow {
            ControlFlow::Break(e) => Err(e),
            ControlFlow::Continue(()) => Ok(expr),
        }
    }

    fn rewrite_one(&self, e: &Expr) -> Result<Option<Expr>> {
        Ok(Some(match e {
            Expr::Identifier(id) => self.resolve(id)?,
            Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
                let (q, name) = (&parts[0], &parts[1]);
                let pair = (q.value.clone(), name.value.clone());
                if let Some(field) = self.fields.get(&pair) {
                    Expr::Nested(Box::new(field.clone()))
                } else if let Some(actual) = self.qualified.get(&pair) {
                    column(actual)
                } else if self.qualifiers.contains(&q.value) {
                    self.resolve(name)?
                } else {
                    return Err(at(
                        q.span.start,
                        format!(
                            "`{}.{}`: `{}` names no relation here, or no column of it (relations: {})",
                            q.value,
                            name.value,
                            q.value,
                            self.relations().join(", ")
                        ),
                    ));
                }
            }
            Expr::CompoundIdentifier(parts) => {
                return Err(at(
                    parts[0].span.start,
                    format!(
                        "`{e}`: nested field access is supported on a nexmark table's ROWs only"
                    ),
                ))
            }
            Expr::Function(f) if date_part_of(&function_name(f)).is_some() => {
                let part = date_part_of(&function_name(f)).unwrap_or("hour");
                let args = arguments(f);
                let [(None, arg)] = args.as_slice() else {
                    return Err(at(
                        expr_start(e),
                        format!("{} takes one argument", function_name(f)),
                    ));
                };
                Expr::Nested(Box::new(ast(&format!(
                    "CAST(date_part('{part}', {arg}) AS BIGINT)"
                ))?))
            }
            Expr::Function(f) if function_name(f) == "DATE_FORMAT" => {
                let args = arguments(f);
                let [(None, ts), (None, Expr::Value(v))] = args.as_slice() else {
                    return Err(at(
                        expr_start(e),
                        "DATE_FORMAT takes a timestamp and a literal pattern here",
                    ));
                };
                let Value::SingleQuotedString(pattern) = &v.value else {
                    return Err(at(expr_start(e), "DATE_FORMAT takes a literal pattern"));
                };
                let chrono = java_date_pattern(pattern).map_err(|why| at(expr_start(e), why))?;
                Expr::Nested(Box::new(ast(&format!(
                    "to_char({ts}, '{}')",
                    chrono.replace('\'', "''")
                ))?))
            }
            Expr::Function(f) if function_name(f) == "IF" => {
                let args = arguments(f);
                let [(None, c), (None, a), (None, b)] = args.as_slice() else {
                    return Err(at(expr_start(e), "IF takes a condition and two values"));
                };
                Expr::Nested(Box::new(ast(&format!(
                    "CASE WHEN {c} THEN {a} ELSE {b} END"
                ))?))
            }
            Expr::Function(f) if function_name(f) == "MOD" => {
                let args = arguments(f);
                let [(None, a), (None, b)] = args.as_slice() else {
                    return Err(at(expr_start(e), "MOD takes two arguments"));
                };
                Expr::Nested(Box::new(Expr::BinaryOp {
                    left: Box::new((*a).clone()),
                    op: BinaryOperator::Modulo,
                    right: Box::new((*b).clone()),
                }))
            }
            _ => return Ok(None),
        }))
    }
}

/// The `date_part` field Flink's function `name` (`HOUR`, ...) extracts.
fn date_part_of(name: &str) -> Option<&'static str> {
    Some(match name {
        "YEAR" => "year",
        "QUARTER" => "quarter",
        "MONTH" => "month",
        "WEEK" => "week",
        "DAYOFYEAR" => "doy",
        "DAYOFMONTH" => "day",
        "DAYOFWEEK" => "dow",
        "HOUR" => "hour",
        "MINUTE" => "minute",
        "SECOND" => "second",
        _ => return None,
    })
}

/// A Java date pattern (`yyyy-MM-dd HH:mm:ss.SSS`, as Flink's `DATE_FORMAT` takes) as the
/// strftime pattern of DataFusion's `to_char`.
fn java_date_pattern(pattern: &str) -> std::result::Result<String, String> {
    let mut out = String::new();
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // Quoted literal text; '' is a quote.
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '\'' {
                out.push_str(&chars[j].to_string().replace('%', "%%"));
                j += 1;
            }
            if j == i + 1 && j < chars.len() {
                out.push('\'');
            }
            i = j + 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            out.push_str(if c == '%' { "%%" } else { "" });
            if c != '%' {
                out.push(c);
            }
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&d| d == c).count();
        out.push_str(match (c, run) {
            ('y', 2) => "%y",
            ('y', _) => "%Y",
            ('M', 1 | 2) => "%m",
            ('M', 3) => "%b",
            ('M', _) => "%B",
            ('d', _) => "%d",
            ('H', _) => "%H",
            ('h', _) => "%I",
            ('m', _) => "%M",
            ('s', _) => "%S",
            ('S', 3) => "%3f",
            ('a', _) => "%p",
            ('E', 1..=3) => "%a",
            ('E', _) => "%A",
            _ => {
                return Err(format!(
                    "DATE_FORMAT pattern `{pattern}`: `{}` is not supported (yyyy, yy, MM, MMM, dd, HH, hh, mm, ss, SSS, a, E are)",
                    chars[i..i + run].iter().collect::<String>()
                ))
            }
        });
        i += run;
    }
    Ok(out)
}

/// The name Flink gives select item `index` without an alias.
fn item_name(expr: &Expr, index: usize) -> String {
    match expr {
        Expr::Identifier(id) => id.value.clone(),
        Expr::CompoundIdentifier(parts) => {
            parts.last().map(|p| p.value.clone()).unwrap_or_default()
        }
        _ => format!("EXPR${index}"),
    }
}

/// Parses the (resolved) SQL of `expr` against `stream`'s columns and simplifies it (a
/// nexmark scan's `CASE WHEN 2 = 0 ...` folds to the one column it picks).
fn datafusion_expr(stream: &Stream, expr: &Expr, alias: Option<&str>) -> Result<DfExpr> {
    let schema = stream.schema();
    let parsed = oxflow_operators::expr::parse_sql(&expr.to_string(), &schema)
        .map_err(|e| at(expr_start(expr), e.to_string()))?;
    let df_schema =
        DFSchema::try_from(schema.as_ref().clone()).map_err(|e| sql_error(e.to_string()))?;
    let simplifier = ExprSimplifier::new(
        datafusion::logical_expr::simplify::SimplifyContext::builder()
            .with_schema(std::sync::Arc::new(df_schema))
            .build(),
    );
    // `count(*)` parses as an aliased `count(1)`: the alias goes, the select's name stays.
    let simplified = simplifier
        .simplify(parsed.clone())
        .unwrap_or(parsed)
        .unalias();
    Ok(match alias {
        Some(a) => simplified.alias(a),
        None => simplified,
    })
}

impl<'a> Planner<'a> {
    pub fn new(catalog: &'a Catalog, pipeline: Pipeline, state_ttl: Option<Duration>) -> Self {
        Planner {
            catalog,
            pipeline,
            prune: std::cell::Cell::new(true),
            state_ttl,
        }
    }

    /// Plans `query` with pruning; an error is planned again without, so that it names the
    /// columns the user declared rather than those a pruned view kept.
    fn top_query(&self, query: &Query) -> Result<Rel> {
        self.prune.set(true);
        self.query(query, 0, None).map_err(|first| {
            self.prune.set(false);
            let again = self.query(query, 0, None);
            self.prune.set(true);
            again.err().unwrap_or(first)
        })
    }

    /// `INSERT INTO table [(columns)] query`: the query's columns, by position, become the
    /// table's (cast where the types differ, as Flink does).
    pub fn insert(
        &self,
        table: &Located<String>,
        columns: &[Ident],
        query: &Query,
    ) -> Result<JobSpec> {
        let Some(target) = self.catalog.tables.get(&table.value) else {
            let what = if self.catalog.views.contains_key(&table.value) {
                "is a view: INSERT INTO takes a table"
            } else {
                "is not declared (CREATE TABLE it first)"
            };
            return Err(at(table.at, format!("`{}` {what}", table.value)));
        };
        let sink = target.sink()?;
        let rel = self.top_query(query)?;
        let declared: Vec<(String, DataType)> = target
            .def
            .columns
            .iter()
            .filter_map(|c| match &c.kind {
                ColumnKind::Physical(t) => {
                    super::catalog::arrow_type(t).map(|dt| (c.name.value.clone(), dt))
                }
                ColumnKind::Computed(_) => None,
            })
            .collect();
        let targets: Vec<(String, DataType)> = if columns.is_empty() {
            declared
        } else {
            columns
                .iter()
                .map(|c| {
                    declared
                        .iter()
                        .find(|(n, _)| *n == c.value)
                        .cloned()
                        .ok_or_else(|| {
                            at(
                                c.span.start,
                                format!("`{}` is not a column of `{}`", c.value, table.value),
                            )
                        })
                })
                .collect::<Result<_>>()?
        };
        let schema = rel.stream.schema();
        if schema.fields().len() != targets.len() {
            return Err(at(
                table.at,
                format!(
                    "the query gives {} columns ({}) and `{}` takes {} ({})",
                    schema.fields().len(),
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    table.value,
                    targets.len(),
                    targets
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let same = schema
            .fields()
            .iter()
            .zip(&targets)
            .all(|(f, (n, t))| f.name() == n && f.data_type() == t);
        let stream = if same {
            rel.stream
        } else {
            let exprs = schema
                .fields()
                .iter()
                .zip(&targets)
                .map(|(f, (name, ty))| {
                    let c = datafusion::prelude::col(datafusion::common::Column::new_unqualified(
                        f.name(),
                    ));
                    if f.data_type() == ty {
                        c.alias(name)
                    } else {
                        datafusion::prelude::cast(c, ty.clone()).alias(name)
                    }
                })
                .collect::<Vec<_>>();
            rel.stream.select(exprs)?
        };
        spec_with_sink(stream, sink)
    }

    /// A query alone: its rows are printed.
    pub fn print(&self, query: &Query) -> Result<JobSpec> {
        spec_with_sink(self.top_query(query)?.stream, SinkSpec::Stdout)
    }

    fn query(&self, query: &Query, depth: usize, needed: Needed) -> Result<Rel> {
        if depth > MAX_DEPTH {
            return Err(sql_error(format!(
                "views and subqueries nest deeper than {MAX_DEPTH}"
            )));
        }
        let unsupported = |what: &str| {
            sql_error(format!(
                "{what} is not supported in a streaming query: `{query}`"
            ))
        };
        if query.with.is_some() {
            return Err(unsupported("WITH"));
        }
        if query.order_by.is_some() {
            return Err(unsupported("ORDER BY"));
        }
        if query.limit_clause.is_some() || query.fetch.is_some() {
            return Err(unsupported("LIMIT"));
        }
        self.set_expr(&query.body, depth, needed)
    }

    fn set_expr(&self, body: &SetExpr, depth: usize, needed: Needed) -> Result<Rel> {
        match body {
            SetExpr::Select(select) => self.select(select, depth + 1, needed),
            SetExpr::Query(q) => self.query(q, depth + 1, needed),
            SetExpr::SetOperation {
                op: SetOperator::Union,
                set_quantifier: SetQuantifier::All,
                left,
                right,
            } => {
                let left = self.set_expr(left, depth + 1, None)?;
                let right = self.set_expr(right, depth + 1, None)?;
                let names: Vec<String> = column_names(&left.stream);
                let right_schema = right.stream.schema();
                if right_schema.fields().len() != names.len() {
                    return Err(sql_error(format!(
                        "UNION ALL of {} columns and {} columns",
                        names.len(),
                        right_schema.fields().len()
                    )));
                }
                // The right side takes the left's names, as in Flink.
                let right_stream = if right_schema
                    .fields()
                    .iter()
                    .zip(&names)
                    .all(|(f, n)| f.name() == n)
                {
                    right.stream
                } else {
                    let exprs: Vec<DfExpr> = right_schema
                        .fields()
                        .iter()
                        .zip(&names)
                        .map(|(f, n)| {
                            datafusion::prelude::col(datafusion::common::Column::new_unqualified(
                                f.name(),
                            ))
                            .alias(n)
                        })
                        .collect();
                    right.stream.select(exprs)?
                };
                Ok(Rel {
                    stream: left.stream.union(right_stream)?,
                    qualifiers: Vec::new(),
                    tvf: None,
                    bounds: None,
                    window_ms: None,
                })
            }
            other => Err(sql_error(format!(
                "`{other}` is not supported; a query is a SELECT, or a UNION ALL of them"
            ))),
        }
    }

    fn select(&self, select: &Select, depth: usize, needed: Needed) -> Result<Rel> {
        let place = select.select_token.0.span.start;
        if select.distinct.is_some() {
            return Err(at(
                place,
                "SELECT DISTINCT is not supported yet (it produces an updating result)",
            ));
        }
        let single = matches!(select.from.as_slice(), [one] if one.joins.is_empty());
        let (mut rel, mut scope, selection) = if single {
            self.relation(
                &select.from[0].relation,
                select.selection.as_ref(),
                depth,
                referenced(select),
            )?
        } else if select.from.is_empty() {
            return Err(at(place, "a streaming query reads FROM a table"));
        } else {
            self.join(select, depth)?
        };
        if let Some(predicate) = selection {
            let resolved = scope.rewrite(&predicate)?;
            let filter = datafusion_expr(&rel.stream, &resolved, None)?;
            rel.stream = rel.stream.filter(filter)?;
        }
        let items = pruned(&select.projection, needed.filter(|_| self.prune.get()));
        let group_by = match &select.group_by {
            GroupByExpr::Expressions(exprs, modifiers) if modifiers.is_empty() => exprs.clone(),
            _ => {
                return Err(at(
                    place,
                    "GROUP BY ALL and GROUP BY modifiers are not supported",
                ))
            }
        };
        let aggregates = items.iter().any(|item| match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                contains_aggregate(e)
            }
            _ => false,
        });
        if group_by.is_empty() && !aggregates {
            if select.having.is_some() {
                return Err(at(place, "HAVING without GROUP BY or aggregates"));
            }
            if let Some((_, tvf_at)) = &rel.tvf {
                return Err(at(
                    *tvf_at,
                    "a window table function is supported under GROUP BY window_start, window_end (window aggregation); window assignment alone, window Top-N and window joins are not supported yet",
                ));
            }
            return self.project(rel, &scope, &items, &[]);
        }
        let (rel, post, calls) = self.aggregate(rel, &mut scope, select, &items, group_by)?;
        self.project(rel, &post, &items, &calls)
    }

    /// A join of two relations (`a JOIN b ON ..`, `a LEFT JOIN b ON ..` or `FROM a, b WHERE
    /// ..`): the equalities between the two sides key it, a condition on one side alone
    /// filters that side before the join, and the rest filters its output. It is a regular
    /// join: every row stays in state, or for `SET 'table.exec.state.ttl'` that long of
    /// event time. Returns the joined relation, its scope, and what of `WHERE` is left.
    fn join(&self, select: &Select, depth: usize) -> Result<(Rel, Scope, Option<Expr>)> {
        use datafusion::sql::sqlparser::ast::{JoinConstraint, JoinOperator, Spanned};
        let place = select.select_token.0.span.start;
        let (left_factor, right_factor, operator) = match select.from.as_slice() {
            [one] if one.joins.len() == 1 => (
                &one.relation,
                &one.joins[0].relation,
                Some(&one.joins[0].join_operator),
            ),
            [a, b] if a.joins.is_empty() && b.joins.is_empty() => (&a.relation, &b.relation, None),
            _ => {
                return Err(at(
                    place,
                    "a join of more than two relations is not supported yet; join two in a subquery first",
                ))
            }
        };
        let right_place = right_factor.span().start;
        let (on, left_outer) = match operator {
            None => (None, false),
            Some(JoinOperator::Join(JoinConstraint::On(e)) | JoinOperator::Inner(JoinConstraint::On(e))) => {
                (Some(e), false)
            }
            Some(JoinOperator::Left(JoinConstraint::On(e)) | JoinOperator::LeftOuter(JoinConstraint::On(e))) => {
                (Some(e), true)
            }
            Some(_) => {
                return Err(at(
                    right_place,
                    "only [INNER] JOIN .. ON and LEFT [OUTER] JOIN .. ON are supported yet (no RIGHT, FULL, CROSS, USING, NATURAL, lookup or temporal joins)",
                ))
            }
        };
        let mut needed = referenced(select);
        if let (Some(names), Some(on)) = (&mut needed, on) {
            names_in(on, names);
        }
        let (mut left, left_scope, _) = self.relation(left_factor, None, depth, needed.clone())?;
        let (mut right, right_scope, _) = self.relation(right_factor, None, depth, needed)?;
        // The join's conditions: its ON, and for an inner join WHERE too.
        let mut conditions = Vec::new();
        if let Some(on) = on {
            conjuncts(on, &mut conditions);
        }
        let mut rest = None;
        match (&select.selection, left_outer) {
            (Some(w), false) => conjuncts(w, &mut conditions),
            (Some(w), true) => rest = Some(w.clone()),
            (None, _) => {}
        }
        let mut keys: Vec<(String, String)> = Vec::new();
        let mut residual = Vec::new();
        for c in conditions {
            if let Expr::BinaryOp {
                left: a,
                op: BinaryOperator::Eq,
                right: b,
            } = &c
            {
                let pair = match (
                    Scope::sides(&left_scope, &right_scope, a)?,
                    Scope::sides(&left_scope, &right_scope, b)?,
                ) {
                    ((true, false), (false, true)) => {
                        column_of(&left_scope, a).zip(column_of(&right_scope, b))
                    }
                    ((false, true), (true, false)) => {
                        column_of(&left_scope, b).zip(column_of(&right_scope, a))
                    }
                    _ => None,
                };
                if let Some(pair) = pair {
                    keys.push(pair);
                    continue;
                }
            }
            match Scope::sides(&left_scope, &right_scope, &c)? {
                (true, false) if !left_outer => {
                    let filter = datafusion_expr(&left.stream, &left_scope.rewrite(&c)?, None)?;
                    left.stream = left.stream.filter(filter)?;
                }
                (false, true) => {
                    let filter = datafusion_expr(&right.stream, &right_scope.rewrite(&c)?, None)?;
                    right.stream = right.stream.filter(filter)?;
                }
                _ if left_outer => {
                    return Err(at(
                        expr_start(&c),
                        format!("`{c}`: a LEFT JOIN's ON takes equalities of the two sides and conditions on the right side only, here"),
                    ))
                }
                _ => residual.push(c),
            }
        }
        if keys.is_empty() {
            return Err(at(
                right_place,
                "a join needs an equality between a column of each side (a cross join is not supported)",
            ));
        }
        // Both sides the output of window aggregates, joined on both bounds: each row can
        // meet only rows of its own window, all of which arrive before the watermark passes
        // the window's end. With the end as each side's event time, a state TTL of 1 ms drops
        // a window's rows then, so state stays bounded (Flink's window join).
        let mut ttl = self.state_ttl;
        let mut window_join = false;
        let mut interval = None;
        if let (Some((ls, le)), Some((rs, re))) = (&left.bounds, &right.bounds) {
            let has = |l: &String, r: &String| keys.iter().any(|(a, b)| a == l && b == r);
            if has(ls, rs) && has(le, re) {
                left.stream = left.stream.with_event_time(le)?;
                right.stream = right.stream.with_event_time(re)?;
                ttl = Some(Duration::from_millis(1));
                window_join = true;
            }
        }
        // Left rows kept to the right's windows they fall in (`l.t >= r.window_start AND
        // l.t < r.window_end`, Nexmark's q7): a window's end is within its length after such
        // a row's time, so with the end as the right's event time this is an interval join,
        // whose state leaves as the watermark passes (the conditions still filter exactly).
        if let (false, Some(time), Some((rs, re)), Some(size)) = (
            left_outer || window_join,
            left.stream.time_column().map(str::to_string),
            right.bounds.clone(),
            right.window_ms,
        ) {
            use BinaryOperator::{Gt, GtEq, Lt, LtEq};
            let compares = |ops: &[BinaryOperator], mirrored: &[BinaryOperator], bound: &str| {
                residual.iter().any(|c| {
                    let Expr::BinaryOp {
                        left: a,
                        op,
                        right: b,
                    } = c
                    else {
                        return false;
                    };
                    let is = |scope: &Scope, e: &Expr, name: &str| {
                        column_of(scope, e).is_some_and(|c| c == name)
                    };
                    (ops.contains(op) && is(&left_scope, a, &time) && is(&right_scope, b, bound))
                        || (mirrored.contains(op)
                            && is(&right_scope, a, bound)
                            && is(&left_scope, b, &time))
                })
            };
            if compares(&[GtEq], &[LtEq], &rs) && compares(&[Lt, LtEq], &[Gt, GtEq], &re) {
                right.stream = right.stream.with_event_time(&re)?;
                interval = Some((0, size as i64));
            }
        }
        let left_names = column_names(&left.stream);
        let right_names = column_names(&right.stream);
        let (left_keys, right_keys): (Vec<String>, Vec<String>) = keys.into_iter().unzip();
        let mut joined = left
            .stream
            .key_by(left_keys)
            .join(right.stream.key_by(right_keys));
        if left_outer {
            joined = joined.left_outer();
        }
        let stream = match interval {
            Some((lower, upper)) => joined.interval(lower, upper)?,
            None => joined.regular(ttl)?,
        };
        // The join's output: the left columns, then the right ones (renamed where taken).
        let output = column_names(&stream);
        let mut scope = Scope {
            columns: output.clone(),
            ..Scope::default()
        };
        for (i, name) in right_names.iter().enumerate() {
            let actual = &output[left_names.len() + i];
            for q in &right.qualifiers {
                scope
                    .qualified
                    .insert((q.clone(), name.clone()), actual.clone());
            }
            if left_names.contains(name) {
                scope.ambiguous.insert(name.clone());
            } else if actual != name {
                scope.renamed.insert(name.clone(), actual.clone());
            }
        }
        for name in &left_names {
            for q in &left.qualifiers {
                scope
                    .qualified
                    .insert((q.clone(), name.clone()), name.clone());
            }
        }
        let mut rel = Rel {
            stream,
            qualifiers: Vec::new(),
            tvf: None,
            bounds: left.bounds.clone(),
            window_ms: left.window_ms,
        };
        if let Some(condition) = and_all(residual) {
            let filter = datafusion_expr(&rel.stream, &scope.rewrite(&condition)?, None)?;
            rel.stream = rel.stream.filter(filter)?;
        }
        Ok((rel, scope, rest))
    }

    /// The relation a `FROM` names, with the scope its expressions resolve in, and what is
    /// left of `selection` to filter (a nexmark scan takes its `event_type = n`).
    fn relation(
        &self,
        factor: &TableFactor,
        selection: Option<&Expr>,
        depth: usize,
        needed: Needed,
    ) -> Result<(Rel, Scope, Option<Expr>)> {
        use datafusion::sql::sqlparser::ast::Spanned;
        let place = factor.span().start;
        match factor {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                if args.is_some() {
                    return Err(at(
                        place,
                        format!("`{factor}`: call a table function as TABLE({name}(...))"),
                    ));
                }
                let name = object_name(name, place)?;
                let mut qualifiers = vec![name.clone()];
                if let Some(a) = alias {
                    if !a.columns.is_empty() {
                        return Err(at(place, "column aliases on a table are not supported"));
                    }
                    qualifiers = vec![a.name.value.clone()];
                }
                if let Some(table) = self.catalog.tables.get(&name) {
                    if let Connector::Nexmark { .. } = table.connector {
                        return self.nexmark_scan(table, qualifiers, selection, place);
                    }
                    let mut rel = self.scan(table)?;
                    rel.qualifiers = qualifiers;
                    let scope = Scope::of(&rel);
                    return Ok((rel, scope, selection.cloned()));
                }
                let mut rel = self.named(&name, place, depth, needed)?;
                rel.qualifiers = qualifiers;
                let scope = Scope::of(&rel);
                Ok((rel, scope, selection.cloned()))
            }
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                ..
            } => {
                if *lateral {
                    return Err(at(place, "LATERAL is not supported"));
                }
                let column_aliases = alias.as_ref().is_some_and(|a| !a.columns.is_empty());
                let mut rel = self.query(
                    subquery,
                    depth + 1,
                    if column_aliases { None } else { needed },
                )?;
                rel.qualifiers = alias.iter().map(|a| a.name.value.clone()).collect();
                if let Some(a) = alias {
                    if !a.columns.is_empty() {
                        let names: Vec<String> =
                            a.columns.iter().map(|c| c.name.value.clone()).collect();
                        rel = rename(rel, &names, place)?;
                        rel.qualifiers = vec![a.name.value.clone()];
                    }
                }
                let scope = Scope::of(&rel);
                Ok((rel, scope, selection.cloned()))
            }
            TableFactor::TableFunction { expr, alias } => {
                let mut rel = self.window_function(expr, depth, needed)?;
                if let Some(a) = alias {
                    rel.qualifiers.push(a.name.value.clone());
                }
                let scope = Scope::of(&rel);
                Ok((rel, scope, selection.cloned()))
            }
            other => Err(at(place, format!("`{other}` is not supported in FROM"))),
        }
    }

    /// A view or table by name (a nexmark table cannot be read without its `event_type`).
    fn named(&self, name: &str, place: Location, depth: usize, needed: Needed) -> Result<Rel> {
        if let Some(table) = self.catalog.tables.get(name) {
            if let Connector::Nexmark { .. } = table.connector {
                return Err(at(place, format!("the nexmark table `{name}` is read through a view that selects one kind of event (`WHERE event_type = 2`)")));
            }
            return self.scan(table);
        }
        let Some(view) = self.catalog.views.get(name) else {
            let known: Vec<&str> = self
                .catalog
                .tables
                .keys()
                .chain(self.catalog.views.keys())
                .map(String::as_str)
                .collect();
            return Err(at(
                place,
                format!(
                    "table or view `{name}` is not declared{}",
                    super::catalog::did_you_mean(name, &known)
                ),
            ));
        };
        let needed = if view.columns.is_empty() {
            needed
        } else {
            None
        };
        let mut rel = self.query(&view.query, depth + 1, needed)?;
        if !view.columns.is_empty() {
            let names: Vec<String> = view.columns.iter().map(|c| c.value.clone()).collect();
            rel = rename(rel, &names, place)?;
        }
        rel.qualifiers = vec![name.to_string()];
        Ok(rel)
    }

    /// A table read by its connector, with its watermarks and computed columns.
    fn scan(&self, table: &Table) -> Result<Rel> {
        let def = &table.def;
        let stream = self.pipeline.clone().source_spec(table.source()?)?;
        let mut rel = Rel {
            stream,
            qualifiers: vec![def.name.value.clone()],
            tvf: None,
            bounds: None,
            window_ms: None,
        };
        if let Some(w) = &def.watermark {
            let physical = def.columns.iter().any(|c| {
                c.name.value == w.column.value && matches!(c.kind, ColumnKind::Physical(_))
            });
            if !physical {
                return Err(at(
                    w.column.at,
                    format!("WATERMARK FOR `{}`: a computed time column is supported on the nexmark connector only; declare the watermark on a column the connector reads", w.column.value),
                ));
            }
            rel.stream = with_watermark(rel.stream, &w.column.value, w)?;
        }
        let computed = def
            .columns
            .iter()
            .any(|c| matches!(c.kind, ColumnKind::Computed(_)));
        if computed {
            let scope = Scope::of(&rel);
            let exprs = def
                .columns
                .iter()
                .map(|c| {
                    let expr = match &c.kind {
                        ColumnKind::Physical(_) => column(&c.name.value),
                        ColumnKind::Computed(e) => scope.rewrite(e)?,
                    };
                    datafusion_expr(&rel.stream, &expr, Some(&c.name.value))
                })
                .collect::<Result<Vec<_>>>()?;
            rel.stream = rel.stream.select(exprs)?;
        }
        Ok(rel)
    }

    /// A scan of Nexmark's one table of events: the `event_type = n` conjunct of `selection`
    /// picks the generator's table, the ROW of that kind reads its columns (the others' are
    /// NULL) and computed columns fold accordingly, so the scan costs what reading one
    /// generator table costs.
    fn nexmark_scan(
        &self,
        table: &Table,
        qualifiers: Vec<String>,
        selection: Option<&Expr>,
        place: Location,
    ) -> Result<(Rel, Scope, Option<Expr>)> {
        use oxflow_connectors::nexmark::NexmarkTable;
        let Connector::Nexmark {
            events,
            event_rate,
            rate_limit,
        } = &table.connector
        else {
            return Err(sql_error("not a nexmark table"));
        };
        let def = &table.def;
        let mut rest = Vec::new();
        if let Some(s) = selection {
            conjuncts(s, &mut rest);
        }
        let is_event_type = |e: &Expr| match e {
            Expr::Identifier(id) => id.value == "event_type",
            Expr::CompoundIdentifier(p) => {
                p.len() == 2 && qualifiers.contains(&p[0].value) && p[1].value == "event_type"
            }
            _ => false,
        };
        let number = |e: &Expr| match e {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => n.parse::<u8>().ok(),
                _ => None,
            },
            _ => None,
        };
        let kind = rest.iter().position(|c| match c {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => {
                (is_event_type(left) && number(right).is_some_and(|n| n <= 2))
                    || (is_event_type(right) && number(left).is_some_and(|n| n <= 2))
            }
            _ => false,
        });
        let Some(index) = kind else {
            return Err(at(
                place,
                format!("the nexmark table `{}` is read one kind of event at a time: add `WHERE event_type = 0` (person), 1 (auction) or 2 (bid)", def.name.value),
            ));
        };
        let Expr::BinaryOp { left, right, .. } = rest.remove(index) else {
            return Err(sql_error("event_type condition"));
        };
        let kind = number(&left).or(number(&right)).unwrap_or(2);
        let (generator, row) = match kind {
            0 => (NexmarkTable::Person, "person"),
            1 => (NexmarkTable::Auction, "auction"),
            _ => (NexmarkTable::Bid, "bid"),
        };
        let spec = SourceSpec::Nexmark {
            table: row.to_string(),
            events: *events,
            event_rate: *event_rate,
            seed: None,
            rate: rate_limit.map(|r| r as f64),
        };
        let stream = self.pipeline.clone().source_spec(spec)?;
        let mut rel = Rel {
            stream,
            qualifiers: qualifiers.clone(),
            tvf: None,
            bounds: None,
            window_ms: None,
        };
        let schema = generator.schema();
        let mut scope = Scope {
            columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
            qualifiers,
            ..Scope::default()
        };
        scope
            .substitutes
            .insert("event_type".into(), ast(&kind.to_string())?);
        for c in &def.columns {
            let ColumnKind::Physical(SqlType::Row(fields)) = &c.kind else {
                continue;
            };
            for (i, (field, ty)) in fields.iter().enumerate() {
                let value = if c.name.value == row {
                    column(schema.field(i).name())
                } else {
                    ast(&format!("CAST(NULL AS {})", sql_type_name(ty)))?
                };
                scope
                    .fields
                    .insert((c.name.value.clone(), field.clone()), value);
            }
        }
        // Computed columns resolve over the physical ones (Flink allows no chains).
        let mut computed = HashMap::new();
        for c in &def.columns {
            if let ColumnKind::Computed(e) = &c.kind {
                computed.insert(c.name.value.clone(), scope.rewrite(e)?);
            }
        }
        scope.substitutes.extend(computed);
        if let Some(w) = &def.watermark {
            let time = scope.rewrite(&Expr::Identifier(Ident::new(&w.column.value)))?;
            let folded = datafusion_expr(&rel.stream, &time, None)?;
            let DfExpr::Column(time_column) = folded else {
                return Err(at(
                    w.column.at,
                    format!("WATERMARK FOR `{}`: for {row} events it is `{folded}`, not one of the generator's columns", w.column.value),
                ));
            };
            rel.stream = with_watermark(rel.stream, &time_column.name, w)?;
        }
        Ok((rel, scope, and_all(rest)))
    }

    /// `TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), size))` and `HOP(.., slide, size)`.
    fn window_function(&self, expr: &Expr, depth: usize, needed: Needed) -> Result<Rel> {
        let place = expr_start(expr);
        let Expr::Function(f) = expr else {
            return Err(at(
                place,
                format!("`{expr}` is not a window table function"),
            ));
        };
        let name = function_name(f);
        let args = arguments(f);
        let get = |index: usize, named: &str| -> Result<&Expr> {
            args.iter()
                .find(|(n, _)| n.as_deref() == Some(named))
                .or_else(|| args.get(index).filter(|(n, _)| n.is_none()))
                .map(|(_, e)| *e)
                .ok_or_else(|| at(place, format!("{name}: argument {named} is missing")))
        };
        let expected = match name.as_str() {
            "TUMBLE" => 3,
            "HOP" => 4,
            "CUMULATE" => {
                return Err(at(place, "CUMULATE windows are not supported yet; TUMBLE and HOP are"))
            }
            "SESSION" => {
                return Err(at(place, "the SESSION window table function is not supported yet; GROUP BY SESSION(ts, gap) is"))
            }
            other => {
                return Err(at(place, format!("`{other}` is not a window table function; TUMBLE and HOP are")))
            }
        };
        if args.len() != expected {
            return Err(at(
                place,
                format!(
                    "{name} takes {expected} arguments here (an offset is not supported), not {}",
                    args.len()
                ),
            ));
        }
        let data = get(0, "DATA")?;
        let input = match data {
            Expr::Identifier(id) => id.value.clone(),
            Expr::CompoundIdentifier(p) => p.last().map(|i| i.value.clone()).unwrap_or_default(),
            other => {
                return Err(at(
                    expr_start(other),
                    format!("{name}: the first argument is TABLE name, not `{other}`"),
                ))
            }
        };
        let time = match get(1, "TIMECOL")? {
            Expr::Function(d) if function_name(d) == "DESCRIPTOR" => {
                match arguments(d).as_slice() {
                    [(None, Expr::Identifier(id))] => id.clone(),
                    _ => return Err(at(place, "DESCRIPTOR names one column")),
                }
            }
            other => {
                return Err(at(
                    expr_start(other),
                    format!(
                        "{name}: the time column is given as DESCRIPTOR(column), not `{other}`"
                    ),
                ))
            }
        };
        let window = if name == "TUMBLE" {
            let size = interval_ms(get(2, "SIZE")?)?;
            WindowSpec::tumbling(positive(size, get(2, "SIZE")?)?)
        } else {
            let slide = interval_ms(get(2, "SLIDE")?)?;
            let size = interval_ms(get(3, "SIZE")?)?;
            WindowSpec::hopping(
                positive(size, get(3, "SIZE")?)?,
                positive(slide, get(2, "SLIDE")?)?,
            )
        };
        let needed = needed.map(|mut n| {
            n.insert(time.value.clone());
            n
        });
        let mut rel = self.named(&input, expr_start(data), depth, needed)?;
        check_time_attribute(&rel, &time)?;
        rel.tvf = Some((window, place));
        rel.qualifiers.push(input);
        Ok(rel)
    }

    /// `GROUP BY`: over a window table function's `window_start, window_end`, a legacy group
    /// window (`TUMBLE(ts, size)`, `HOP(ts, slide, size)`, `SESSION(ts, gap)`), or the bounds
    /// of an upstream window aggregate, a window aggregate per the other keys. Returns the
    /// relation and the scope its select list and HAVING resolve in.
    fn aggregate(
        &self,
        mut rel: Rel,
        scope: &mut Scope,
        select: &Select,
        items: &[SelectItem],
        group_by: Vec<Expr>,
    ) -> Result<(Rel, Scope, Calls)> {
        let place = select.select_token.0.span.start;
        let mut window: Option<WindowSpec> = None;
        let mut keys: Vec<String> = Vec::new();
        let mut seen_bounds = (false, false);
        let mut renamed = HashMap::new();
        // The bounds named in this scope (a subquery's `starttime`), resolved to columns.
        let bound_of = |e: &Expr, scope: &Scope| -> Option<String> {
            match scope.rewrite(e).ok()? {
                Expr::Identifier(id) => Some(id.value),
                _ => None,
            }
        };
        for e in &group_by {
            if let Expr::Function(f) = e {
                let name = function_name(f);
                if ["TUMBLE", "HOP", "SESSION"].contains(&name.as_str()) {
                    if window.is_some() || rel.tvf.is_some() {
                        return Err(at(expr_start(e), "one window per GROUP BY"));
                    }
                    window = Some(group_window(&rel, scope, f, &name, e)?);
                    continue;
                }
            }
            let resolved = bound_of(e, scope);
            if rel.tvf.is_some() {
                if let Expr::Identifier(id) = e {
                    match id.value.as_str() {
                        "window_start" => {
                            seen_bounds.0 = true;
                            continue;
                        }
                        "window_end" => {
                            seen_bounds.1 = true;
                            continue;
                        }
                        _ => {}
                    }
                }
            }
            if let (Some((start, end)), Some(r)) = (&rel.bounds, &resolved) {
                if r == start {
                    seen_bounds.0 = true;
                    renamed.insert(start.clone(), "window_start".to_string());
                    continue;
                }
                if r == end {
                    seen_bounds.1 = true;
                    renamed.insert(end.clone(), "window_end".to_string());
                    continue;
                }
            }
            match resolved {
                Some(c) if !c.starts_with("__") => keys.push(c),
                _ => {
                    return Err(at(
                        expr_start(e),
                        format!("GROUP BY `{e}`: grouping by an expression is not supported yet; select it as a column in a subquery first"),
                    ))
                }
            }
        }
        let window = match (rel.tvf.take(), window, seen_bounds) {
            (Some((spec, _)), _, (true, true)) => spec,
            (Some((_, tvf_at)), _, _) => {
                return Err(at(
                    tvf_at,
                    "a window table function is aggregated with GROUP BY window_start, window_end (and any keys)",
                ))
            }
            (None, Some(group_window), _) => group_window,
            (None, None, (true, true)) => WindowSpec::Inherited,
            (None, None, _) => {
                return Err(at(
                    place,
                    "GROUP BY without a window produces an updating result, which Oxflow SQL does not support yet; group by a window (TUMBLE, HOP, SESSION) instead",
                ))
            }
        };
        // An upstream window's bounds go by their operator's names.
        if !renamed.is_empty() {
            let schema = rel.stream.schema();
            let exprs: Vec<DfExpr> = schema
                .fields()
                .iter()
                .map(|f| {
                    let c = datafusion::prelude::col(datafusion::common::Column::new_unqualified(
                        f.name(),
                    ));
                    match renamed.get(f.name()) {
                        Some(to) => c.alias(to),
                        None => c,
                    }
                })
                .collect();
            rel.stream = rel.stream.select(exprs)?;
            scope.columns = column_names(&rel.stream);
            scope.renamed = renamed.clone();
        }
        // Each aggregate call of the select list and HAVING becomes a column `__aggN`.
        let mut calls: Vec<(String, Expr)> = Vec::new();
        let mut collect = |expr: &Expr| {
            let _ = datafusion::sql::sqlparser::ast::visit_expressions(expr, |e| {
                if is_aggregate(e) {
                    let text = e.to_string();
                    if !calls.iter().any(|(t, _)| *t == text) {
                        calls.push((text, e.clone()));
                    }
                }
                ControlFlow::<()>::Continue(())
            });
        };
        for item in items {
            if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
                collect(e);
            }
        }
        if let Some(h) = &select.having {
            collect(h);
        }
        if calls.is_empty() {
            // A window GROUP BY without aggregates gives each key once per window: the
            // window operator counts, and the count is not selected.
            calls.push(("COUNT(1)".to_string(), ast("COUNT(1)")?));
        }
        let exprs = calls
            .iter()
            .enumerate()
            .map(|(i, (_, call))| {
                let resolved = scope.rewrite(call)?;
                datafusion_expr(&rel.stream, &resolved, Some(&format!("__agg{i}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let window_ms = match &window {
            WindowSpec::Tumbling { size } | WindowSpec::Hopping { size, .. } => {
                Some(size.as_millis() as u64)
            }
            WindowSpec::Inherited => rel.window_ms,
            WindowSpec::Session { .. } => None,
        };
        let windowed = if keys.is_empty() {
            rel.stream.window_all(window)
        } else {
            rel.stream.key_by(keys.clone()).window(window)
        };
        let stream = windowed.aggregate(exprs)?;
        let mut post = Scope {
            columns: column_names(&stream),
            qualifiers: rel.qualifiers.clone(),
            renamed: scope.renamed.clone(),
            ..Scope::default()
        };
        // Keys picked from a nexmark scan's ROW stay reachable by that name.
        for (k, v) in &scope.fields {
            if matches!(v, Expr::Identifier(id) if keys.contains(&id.value)) {
                post.fields.insert(k.clone(), v.clone());
            }
        }
        // After a join, `A.key` stays reachable for the keys.
        for (k, actual) in &scope.qualified {
            if keys.contains(actual) {
                post.qualified.insert(k.clone(), actual.clone());
            }
        }
        let mut rel = Rel {
            stream,
            qualifiers: rel.qualifiers,
            tvf: None,
            bounds: Some(("window_start".into(), "window_end".into())),
            window_ms,
        };
        if let Some(having) = &select.having {
            let replaced = replace_calls(having, &calls)?;
            let resolved = post.rewrite(&replaced)?;
            let filter = datafusion_expr(&rel.stream, &resolved, None)?;
            rel.stream = rel.stream.filter(filter)?;
        }
        let columns = calls
            .iter()
            .enumerate()
            .map(|(i, (text, _))| (text.clone(), column(&format!("__agg{i}"))))
            .collect();
        Ok((rel, post, columns))
    }

    /// The select list over `rel`.
    fn project(
        &self,
        mut rel: Rel,
        scope: &Scope,
        items: &[SelectItem],
        calls: &[(String, Expr)],
    ) -> Result<Rel> {
        let schema = rel.stream.schema();
        let mut exprs: Vec<DfExpr> = Vec::new();
        let mut names: Vec<(Option<String>, String)> = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let (expr, alias) = match item {
                SelectItem::UnnamedExpr(e) => (e.clone(), None),
                SelectItem::ExprWithAlias { expr, alias } => {
                    (expr.clone(), Some(alias.value.clone()))
                }
                SelectItem::Wildcard(_) => {
                    for f in schema.fields() {
                        if f.name().starts_with("__") {
                            continue;
                        }
                        exprs.push(datafusion::prelude::col(
                            datafusion::common::Column::new_unqualified(f.name()),
                        ));
                        names.push((Some(f.name().clone()), f.name().clone()));
                    }
                    continue;
                }
                other => {
                    return Err(sql_error(format!("select item `{other}` is not supported")));
                }
            };
            let mut expr = expr;
            group_window_bounds(&mut expr)?;
            let expr = replace_calls_with(&expr, calls)?;
            let name = alias.unwrap_or_else(|| item_name(&expr, index));
            let resolved = scope.rewrite(&expr)?;
            let source = match &resolved {
                Expr::Identifier(id) => Some(id.value.clone()),
                Expr::Nested(inner) => match inner.as_ref() {
                    Expr::Identifier(id) => Some(id.value.clone()),
                    _ => None,
                },
                _ => None,
            };
            let df = datafusion_expr(&rel.stream, &resolved, Some(&name))?;
            let source = source.or_else(|| match &df {
                DfExpr::Alias(a) => match a.expr.as_ref() {
                    DfExpr::Column(c) => Some(c.name.clone()),
                    _ => None,
                },
                _ => None,
            });
            exprs.push(df);
            names.push((source, name));
        }
        let mut seen = std::collections::HashSet::new();
        for (_, n) in &names {
            if !seen.insert(n) {
                return Err(sql_error(format!(
                    "the select list names column `{n}` twice; give one an alias"
                )));
            }
        }
        let identity = names.len() == schema.fields().len()
            && names
                .iter()
                .zip(schema.fields())
                .all(|((s, n), f)| s.as_deref() == Some(f.name().as_str()) && n == f.name());
        let time = rel.stream.time_column().map(str::to_string);
        let renamed_time = time.as_ref().and_then(|t| {
            names
                .iter()
                .find(|(s, n)| s.as_deref() == Some(t.as_str()) && n != t)
                .map(|(_, n)| n.clone())
        });
        let keeps_time = time.as_ref().is_some_and(|t| {
            names
                .iter()
                .any(|(s, n)| s.as_deref() == Some(t.as_str()) && n == t)
        });
        let bounds = rel.bounds.as_ref().and_then(|(start, end)| {
            let find = |b: &str| {
                names
                    .iter()
                    .find(|(s, _)| s.as_deref() == Some(b))
                    .map(|(_, n)| n.clone())
            };
            Some((find(start)?, find(end)?))
        });
        if !identity {
            rel.stream = rel.stream.select(exprs)?;
        }
        if let (Some(new), false) = (renamed_time, keeps_time) {
            // The time attribute under its new name (Flink keeps it through a rename).
            rel.stream = rel.stream.with_event_time(&new)?;
        }
        rel.bounds = bounds;
        rel.qualifiers = Vec::new();
        Ok(rel)
    }
}

/// The spec of `stream` ending in `sink`, which is named, not built (a blackhole stands in
/// while the job is checked).
fn spec_with_sink(stream: Stream, sink: SinkSpec) -> Result<JobSpec> {
    let mut spec = stream.sink_spec(SinkSpec::Blackhole, None)?.to_spec()?;
    spec.sink = sink;
    Ok(spec)
}

/// The column `e` names in `scope`, if it is a plain column.
fn column_of(scope: &Scope, e: &Expr) -> Option<String> {
    match scope.rewrite(e) {
        Ok(Expr::Identifier(id)) => Some(id.value),
        _ => None,
    }
}

/// Replaces aggregate calls (by their text) in `expr` with their columns.
fn replace_calls(expr: &Expr, calls: &[(String, Expr)]) -> Result<Expr> {
    let columns: Vec<(String, Expr)> = calls
        .iter()
        .enumerate()
        .map(|(i, (text, _))| (text.clone(), column(&format!("__agg{i}"))))
        .collect();
    replace_calls_with(expr, &columns)
}

fn replace_calls_with(expr: &Expr, columns: &[(String, Expr)]) -> Result<Expr> {
    let mut expr = expr.clone();
    let flow = datafusion::sql::sqlparser::ast::visit_expressions_mut(&mut expr, |e| {
        if is_aggregate(e) {
            let text = e.to_string();
            match columns.iter().find(|(t, _)| *t == text) {
                Some((_, c)) => *e = c.clone(),
                None => {
                    return ControlFlow::Break(at(
                        expr_start(e),
                        format!("aggregate `{text}` outside a GROUP BY query"),
                    ))
                }
            }
        }
        ControlFlow::Continue(())
    });
    match flow {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(expr),
    }
}

/// `rel` with its columns renamed, in order.
fn rename(mut rel: Rel, names: &[String], place: Location) -> Result<Rel> {
    let schema = rel.stream.schema();
    if schema.fields().len() != names.len() {
        return Err(at(
            place,
            format!(
                "{} column names for {} columns",
                names.len(),
                schema.fields().len()
            ),
        ));
    }
    let exprs: Vec<DfExpr> = schema
        .fields()
        .iter()
        .zip(names)
        .map(|(f, n)| {
            datafusion::prelude::col(datafusion::common::Column::new_unqualified(f.name())).alias(n)
        })
        .collect();
    let time = rel.stream.time_column().map(str::to_string);
    let new_time = time.and_then(|t| {
        schema
            .fields()
            .iter()
            .position(|f| *f.name() == t)
            .map(|i| names[i].clone())
    });
    let bounds = rel.bounds.take().and_then(|(s, e)| {
        let at = |b: &str| {
            schema
                .fields()
                .iter()
                .position(|f| f.name() == b)
                .map(|i| names[i].clone())
        };
        Some((at(&s)?, at(&e)?))
    });
    rel.stream = rel.stream.select(exprs)?;
    if let Some(t) = new_time {
        if rel.stream.time_column() != Some(t.as_str()) {
            rel.stream = rel.stream.with_event_time(&t)?;
        }
    }
    rel.bounds = bounds;
    Ok(rel)
}

fn object_name(name: &ObjectName, place: Location) -> Result<String> {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.clone())
        .ok_or_else(|| at(place, format!("`{name}` is not a table name")))
}

fn sql_type_name(ty: &SqlType) -> String {
    match ty {
        SqlType::Scalar("timestamp_ms") => "TIMESTAMP(3)".into(),
        other => other.describe(),
    }
}

fn positive(ms: u64, expr: &Expr) -> Result<Duration> {
    if ms == 0 {
        return Err(at(
            expr_start(expr),
            "a window's size, slide and gap are longer than 0",
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// `stream` with watermarks on `column` as `WATERMARK FOR` declares them.
fn with_watermark(stream: Stream, column: &str, w: &super::parse::WatermarkDef) -> Result<Stream> {
    let delay = watermark_delay(&w.column, &w.expr)?;
    stream.with_watermarks(WatermarkStrategy::bounded(column, delay))
}

/// The delay of `WATERMARK FOR c AS c - INTERVAL 'n' UNIT` (or `AS c`: none).
fn watermark_delay(column: &Located<String>, expr: &Expr) -> Result<Duration> {
    let is_column = |e: &Expr| matches!(e, Expr::Identifier(id) if id.value == column.value);
    match expr {
        e if is_column(e) => Ok(Duration::ZERO),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Minus,
            right,
        } if is_column(left) => Ok(Duration::from_millis(interval_ms(right)?)),
        other => Err(at(
            expr_start(other),
            format!(
                "WATERMARK FOR {0} AS `{other}`: Oxflow takes bounded out-of-orderness, `{0} - INTERVAL 'n' SECOND` (or `{0}`)",
                column.value
            ),
        )),
    }
}

fn expr_start_span(e: &Expr) -> datafusion::sql::sqlparser::tokenizer::Span {
    use datafusion::sql::sqlparser::ast::Spanned;
    e.span()
}

/// Checks that `time` is `rel`'s event-time attribute.
fn check_time_attribute(rel: &Rel, time: &Ident) -> Result<()> {
    match rel.stream.time_column() {
        Some(t) if t == time.value => Ok(()),
        Some(t) => Err(at(
            time.span.start,
            format!("`{}` is not the time attribute here; windows run on `{t}`, which the watermark follows", time.value),
        )),
        None => Err(at(
            time.span.start,
            format!("`{}` is not a time attribute: declare WATERMARK FOR it in its table", time.value),
        )),
    }
}

/// A legacy group window of `GROUP BY`: `TUMBLE(ts, size)`, `HOP(ts, slide, size)`,
/// `SESSION(ts, gap)`.
fn group_window(
    rel: &Rel,
    scope: &Scope,
    f: &Function,
    name: &str,
    whole: &Expr,
) -> Result<WindowSpec> {
    let args = arguments(f);
    let place = expr_start(whole);
    let args: Vec<&Expr> = args.into_iter().map(|(_, e)| e).collect();
    let (time, rest) = match args.split_first() {
        Some((first, rest)) => match scope.rewrite(first)? {
            Expr::Identifier(id) => (Ident::with_span(expr_start_span(first), id.value), rest),
            _ => {
                return Err(at(
                    expr_start(first),
                    format!("{name}: `{first}` is not a time attribute column"),
                ))
            }
        },
        _ => {
            return Err(at(
                place,
                format!("{name}(time_column, ...) takes the time column first"),
            ))
        }
    };
    check_time_attribute(rel, &time)?;
    Ok(match (name, rest) {
        ("TUMBLE", [size]) => WindowSpec::tumbling(positive(interval_ms(size)?, size)?),
        ("HOP", [slide, size]) => WindowSpec::hopping(
            positive(interval_ms(size)?, size)?,
            positive(interval_ms(slide)?, slide)?,
        ),
        ("SESSION", [gap]) => WindowSpec::session(positive(interval_ms(gap)?, gap)?),
        _ => {
            return Err(at(
                place,
                format!(
                    "{name} takes (time_column, interval{}) in GROUP BY",
                    if name == "HOP" { ", interval" } else { "" }
                ),
            ))
        }
    })
}
