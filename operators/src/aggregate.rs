//! Aggregates over groups of rows, with DataFusion's accumulators.
//!
//! Any DataFusion aggregate expression works (`count`, `sum`, `min`, `max`, `avg`, every
//! built-in and every user-defined `AggregateUDF`); they are planned with DataFusion's own type
//! coercion and run as vectorized `GroupsAccumulator`s (row accumulators are adapted).

use crate::error::{OperatorError, Result};
use crate::expr::check_columns;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{filter, take};
use datafusion::arrow::datatypes::{FieldRef, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::common::tree_node::TreeNode;
use datafusion::common::DFSchema;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Accumulator, EmitTo, Expr, GroupsAccumulator};
use datafusion::optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use datafusion::physical_expr::aggregate::{AggregateFunctionExpr, LoweredAggregateBuilder};
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::physical_plan::aggregates::group_values::{new_group_values, GroupValues};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use std::sync::Arc;

/// One planned aggregate with its optional `FILTER (WHERE ..)`.
#[derive(Debug, Clone)]
struct PlannedAggregate {
    function: Arc<AggregateFunctionExpr>,
    filter: Option<Arc<dyn PhysicalExpr>>,
}

/// The aggregates of a window, planned against its input schema.
#[derive(Debug, Clone)]
pub struct Aggregates {
    planned: Vec<PlannedAggregate>,
}

/// The evaluated arguments (and filter mask) of each aggregate for one batch.
pub type AggregateInputs = Vec<(Vec<ArrayRef>, Option<BooleanArray>)>;

impl Aggregates {
    /// Plans aggregate expressions such as `count(col("auction")).alias("num")`.
    pub fn try_new(exprs: &[Expr], input: &SchemaRef) -> Result<Self> {
        if exprs.is_empty() {
            return Err(OperatorError::InvalidExpression {
                expr: String::new(),
                reason: "a window aggregate needs at least one aggregate".into(),
            });
        }
        let df_schema = DFSchema::try_from(input.as_ref().clone())?;
        let planned = exprs
            .iter()
            .map(|e| {
                check_columns(e, input, "aggregate")?;
                let invalid = |reason: String| OperatorError::InvalidExpression {
                    expr: e.to_string(),
                    reason,
                };
                let inner = match e {
                    Expr::Alias(a) => a.expr.as_ref(),
                    other => other,
                };
                if !matches!(inner, Expr::AggregateFunction(_)) {
                    return Err(invalid(
                        "not an aggregate function such as count(..) or sum(..)".into(),
                    ));
                }
                let coerced = e
                    .clone()
                    .rewrite(&mut TypeCoercionRewriter::new(&df_schema))
                    .map_err(|err| invalid(err.to_string()))?
                    .data;
                let props = ExecutionProps::new();
                let planning = PhysicalPlanningContext::default();
                let lowered =
                    LoweredAggregateBuilder::new(&coerced, &df_schema, input, &props, &planning)
                        .build()
                        .map_err(|err| invalid(err.to_string()))?;
                Ok(PlannedAggregate {
                    function: lowered.aggregate,
                    filter: lowered.filter,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Aggregates { planned })
    }

    /// The output field of each aggregate, named after its alias.
    pub fn fields(&self) -> Vec<FieldRef> {
        self.planned.iter().map(|p| p.function.field()).collect()
    }

    /// The intermediate state fields of each aggregate (what a partial aggregate ships).
    pub fn state_fields(&self) -> Result<Vec<Vec<FieldRef>>> {
        self.planned
            .iter()
            .map(|p| Ok(p.function.state_fields()?))
            .collect()
    }

    /// Evaluates every aggregate's arguments on `batch` (once per batch, whatever the number
    /// of windows the rows fall into).
    pub fn evaluate_inputs(&self, batch: &RecordBatch) -> Result<AggregateInputs> {
        let rows = batch.num_rows();
        self.planned
            .iter()
            .map(|p| {
                let args = p
                    .function
                    .expressions()
                    .iter()
                    .map(|e| e.evaluate(batch)?.into_array(rows))
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                let filter = match &p.filter {
                    None => None,
                    Some(f) => {
                        let mask = f.evaluate(batch)?.into_array(rows)?;
                        Some(
                            mask.as_any()
                                .downcast_ref::<BooleanArray>()
                                .cloned()
                                .ok_or_else(|| OperatorError::InvalidExpression {
                                    expr: f.to_string(),
                                    reason: "FILTER must be boolean".into(),
                                })?,
                        )
                    }
                };
                Ok((args, filter))
            })
            .collect()
    }

    /// One row accumulator per aggregate, for a single group that is read after every
    /// update (a running aggregate).
    pub fn row_accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        self.planned
            .iter()
            .map(|p| Ok(p.function.create_accumulator()?))
            .collect()
    }

    fn accumulators(&self) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
        self.planned
            .iter()
            .map(|p| {
                if p.function.groups_accumulator_supported() {
                    Ok(p.function.create_groups_accumulator()?)
                } else {
                    let function = p.function.clone();
                    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                        function.create_accumulator()
                    })) as Box<dyn GroupsAccumulator>)
                }
            })
            .collect()
    }
}

/// Takes `indices` of every aggregate input (the rows of one window).
pub fn take_inputs(inputs: &AggregateInputs, indices: &dyn Array) -> Result<AggregateInputs> {
    inputs
        .iter()
        .map(|(args, filter)| {
            let args = args
                .iter()
                .map(|a| take(a.as_ref(), indices, None))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let filter = match filter {
                None => None,
                Some(f) => Some(
                    take(f, indices, None)?
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .expect("take keeps the type")
                        .clone(),
                ),
            };
            Ok((args, filter))
        })
        .collect()
}

/// Keys and intermediate accumulator states of some groups (a pane's partial aggregates).
pub struct GroupsState {
    /// Key columns, one row per group.
    pub keys: Vec<ArrayRef>,
    /// Per aggregate, its state columns, one row per group.
    pub states: Vec<Vec<ArrayRef>>,
    /// Number of groups (rows).
    pub groups: usize,
}

impl GroupsState {
    /// The groups at `indices`, in their order.
    pub fn take(&self, indices: &UInt32Array) -> Result<GroupsState> {
        self.select(indices.len(), |c| take(c, indices, None))
    }

    /// The groups `mask` selects, in their order.
    pub fn filter(&self, mask: &BooleanArray) -> Result<GroupsState> {
        self.select(mask.true_count(), |c| filter(c, mask))
    }

    /// `groups` groups, each column picked from by `pick`.
    fn select(
        &self,
        groups: usize,
        pick: impl Fn(&dyn Array) -> std::result::Result<ArrayRef, ArrowError>,
    ) -> Result<GroupsState> {
        let pick_all = |columns: &[ArrayRef]| {
            columns
                .iter()
                .map(|c| pick(c.as_ref()))
                .collect::<std::result::Result<Vec<_>, _>>()
        };
        Ok(GroupsState {
            keys: pick_all(&self.keys)?,
            states: self
                .states
                .iter()
                .map(|s| pick_all(s))
                .collect::<std::result::Result<_, _>>()?,
            groups,
        })
    }

    /// The key columns, then each aggregate's state columns: how partials and state entries
    /// lay them out.
    pub fn into_columns(self) -> Vec<ArrayRef> {
        self.keys
            .into_iter()
            .chain(self.states.into_iter().flatten())
            .collect()
    }
}

/// The groups of one window (or one batch of sessions): distinct keys and their accumulators.
pub struct Groups {
    values: Option<Box<dyn GroupValues>>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    group_indices: Vec<usize>,
    len: usize,
}

impl Groups {
    /// Empty groups over keys of `key_schema` (no key fields: one global group).
    pub fn try_new(key_schema: &SchemaRef, aggregates: &Aggregates) -> Result<Self> {
        let values = if key_schema.fields().is_empty() {
            None
        } else {
            Some(new_group_values(key_schema.clone(), &GroupOrdering::None)?)
        };
        Ok(Groups {
            values,
            accumulators: aggregates.accumulators()?,
            group_indices: Vec::new(),
            len: 0,
        })
    }

    /// Adds rows: `keys` decide their group, `inputs` feed the accumulators.
    pub fn update(
        &mut self,
        keys: &[ArrayRef],
        inputs: &AggregateInputs,
        rows: usize,
    ) -> Result<()> {
        self.intern(keys, rows)?;
        self.update_groups(inputs)
    }

    /// Adds rows whose group ids are already known (`0..groups`).
    pub fn update_with_indices(
        &mut self,
        group_indices: Vec<usize>,
        groups: usize,
        inputs: &AggregateInputs,
    ) -> Result<()> {
        self.group_indices = group_indices;
        self.len = self.len.max(groups);
        self.update_groups(inputs)
    }

    fn update_groups(&mut self, inputs: &AggregateInputs) -> Result<()> {
        for (acc, (args, filter)) in self.accumulators.iter_mut().zip(inputs) {
            acc.update_batch(args, &self.group_indices, filter.as_ref(), self.len)?;
        }
        Ok(())
    }

    /// How many groups there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no groups.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The group of each row of the last [`Groups::update`] or [`Groups::merge`].
    pub fn group_indices(&self) -> &[usize] {
        &self.group_indices
    }

    /// Approximate memory held, in bytes.
    pub fn size(&self) -> usize {
        self.values.as_ref().map(|v| v.size()).unwrap_or(0)
            + self.accumulators.iter().map(|a| a.size()).sum::<usize>()
    }

    /// The groups' keys and intermediate accumulator states, leaving the groups as they were
    /// (DataFusion emits state destructively, so it is merged straight back).
    pub fn state(
        &mut self,
        key_schema: &SchemaRef,
        aggregates: &Aggregates,
    ) -> Result<GroupsState> {
        let old = std::mem::replace(self, Groups::try_new(key_schema, aggregates)?);
        let state = old.into_state()?;
        self.merge(&state)?;
        Ok(state)
    }

    /// Consumes the groups: their keys and intermediate states.
    pub fn into_state(mut self) -> Result<GroupsState> {
        let keys = self.emit_keys()?;
        let states = self
            .accumulators
            .iter_mut()
            .map(|a| a.state(EmitTo::All))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        Ok(GroupsState {
            keys,
            states,
            groups: self.len,
        })
    }

    /// Sets the group of each of `rows` rows from its key (no key columns: group 0).
    fn intern(&mut self, keys: &[ArrayRef], rows: usize) -> Result<()> {
        match &mut self.values {
            Some(values) => {
                values.intern(keys, &mut self.group_indices)?;
                self.len = values.len();
            }
            None => {
                self.group_indices.clear();
                self.group_indices.resize(rows, 0);
                self.len = self.len.max(rows.min(1));
            }
        }
        Ok(())
    }

    /// Emits every group's key columns (none without key columns).
    fn emit_keys(&mut self) -> Result<Vec<ArrayRef>> {
        Ok(match &mut self.values {
            Some(values) => values.emit(EmitTo::All)?,
            None => Vec::new(),
        })
    }

    /// Merges intermediate states (of the same aggregates) into these groups.
    pub fn merge(&mut self, state: &GroupsState) -> Result<()> {
        self.intern(&state.keys, state.groups)?;
        for (acc, s) in self.accumulators.iter_mut().zip(&state.states) {
            acc.merge_batch(s, &self.group_indices, self.len)?;
        }
        Ok(())
    }

    /// Consumes the groups: their key columns and aggregate columns, group by group.
    pub fn finish(mut self) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>)> {
        let keys = self.emit_keys()?;
        let aggregates = self
            .accumulators
            .iter_mut()
            .map(|a| a.evaluate(EmitTo::All))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        Ok((keys, aggregates))
    }
}
