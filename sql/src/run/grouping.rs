//! What the window and the updating operators share: a GROUP BY's key expressions and its
//! aggregate functions compiled into DataFusion accumulators (one set per group), and the
//! snapshot of a group's accumulators as intermediate-state columns, restored by merging (the
//! state/merge contract DataFusion's partial aggregation relies on).

use super::steps::{evaluate, physical};
use datafusion_common::arrow::array::{new_empty_array, Array, ArrayRef, Int64Array, RecordBatch, UInt32Array};
use datafusion_common::arrow::compute::take;
use datafusion_common::arrow::datatypes::{DataType, Field};
use datafusion_common::{plan_err, DataFusionError, Result, ScalarValue};
use datafusion_expr::{Accumulator, Aggregate, Expr, ExprSchemable};
use datafusion_physical_expr::aggregate::{AggregateExprBuilder, AggregateFunctionExpr};
use datafusion_physical_expr::PhysicalExpr;
use std::sync::Arc;

/// A group's accumulators, one per aggregate function.
pub(crate) type Accumulators = Vec<Box<dyn Accumulator>>;

pub(crate) struct Grouping {
    /// The group key expressions (without a window), over the aggregate's input.
    pub(crate) keys: Vec<Arc<dyn PhysicalExpr>>,
    pub(crate) key_types: Vec<DataType>,
    pub(crate) aggregates: Vec<AggregateFunctionExpr>,
    /// The aggregate's output columns: group expressions, then aggregates.
    pub(crate) names: Vec<String>,
}

/// A batch's key and argument columns, evaluated once.
pub(crate) struct Evaluated {
    pub(crate) keys: Vec<ArrayRef>,
    /// Per aggregate, its argument columns.
    pub(crate) args: Vec<Vec<ArrayRef>>,
}

impl Evaluated {
    pub(crate) fn key(&self, row: usize) -> Result<Vec<ScalarValue>> {
        self.keys.iter().map(|k| ScalarValue::try_from_array(k, row)).collect()
    }
}

impl Grouping {
    /// Compiles `a`'s aggregates and its group expressions except those `skip` picks (a window).
    pub(crate) fn compile(a: &Aggregate, skip: impl Fn(&Expr) -> bool) -> Result<Grouping> {
        let input = a.input.schema();
        let mut keys = Vec::new();
        let mut key_types = Vec::new();
        for g in a.group_expr.iter().filter(|g| !skip(g)) {
            keys.push(physical(g, input)?);
            key_types.push(g.get_type(input)?);
        }
        let input_schema = Arc::new(input.as_arrow().clone());
        let mut aggregates = Vec::new();
        for (e, field) in a.aggr_expr.iter().zip(a.schema.fields().iter().skip(a.group_expr.len())) {
            let Expr::AggregateFunction(f) = strip_alias(e) else {
                return plan_err!("{e} is not an aggregate function");
            };
            if f.params.filter.is_some() {
                return plan_err!("FILTER (WHERE ...) on an aggregate is not supported yet");
            }
            if !f.params.order_by.is_empty() {
                return plan_err!("ORDER BY inside an aggregate is not supported yet");
            }
            let args = f.params.args.iter().map(|x| physical(x, input)).collect::<Result<Vec<_>>>()?;
            let mut b =
                AggregateExprBuilder::new(f.func.clone(), args).schema(input_schema.clone()).alias(field.name());
            if f.params.distinct {
                b = b.distinct();
            }
            aggregates.push(b.build()?);
        }
        let names = a.schema.fields().iter().map(|f| f.name().clone()).collect();
        Ok(Grouping { keys, key_types, aggregates, names })
    }

    pub(crate) fn accumulators(&self) -> Result<Accumulators> {
        self.aggregates.iter().map(AggregateFunctionExpr::create_accumulator).collect()
    }

    pub(crate) fn evaluate(&self, batch: &RecordBatch) -> Result<Evaluated> {
        let keys = self.keys.iter().map(|k| evaluate(k, batch)).collect::<Result<Vec<_>>>()?;
        let args = self
            .aggregates
            .iter()
            .map(|a| a.expressions().iter().map(|e| evaluate(e, batch)).collect::<Result<Vec<_>>>())
            .collect::<Result<_>>()?;
        Ok(Evaluated { keys, args })
    }

    /// Adds the rows `rows` of an evaluated batch to one group's accumulators.
    pub(crate) fn update(&self, accs: &mut Accumulators, evaluated: &Evaluated, rows: Vec<u32>) -> Result<()> {
        let indices = UInt32Array::from(rows);
        for (acc, columns) in accs.iter_mut().zip(&evaluated.args) {
            let taken = columns.iter().map(|c| take(c.as_ref(), &indices, None)).collect::<Result<Vec<_>, _>>()?;
            acc.update_batch(&taken)?;
        }
        Ok(())
    }

    /// The key columns of `keys`, one row each.
    pub(crate) fn key_columns<'a>(
        &self,
        keys: impl Iterator<Item = &'a [ScalarValue]> + Clone,
    ) -> Result<Vec<ArrayRef>> {
        let n = keys.clone().count();
        (0..self.key_types.len())
            .map(|i| scalars_to_array(keys.clone().map(|k| k[i].clone()), &self.key_types[i], n))
            .collect()
    }

    /// Each aggregate's current value for every group, as one column per aggregate (DataFusion's
    /// `evaluate` leaves the state as it was, so a group can be read after every update).
    pub(crate) fn values<'a>(&self, groups: impl Iterator<Item = &'a mut Accumulators>) -> Result<Vec<ArrayRef>> {
        let mut values: Vec<Vec<ScalarValue>> = vec![Vec::new(); self.aggregates.len()];
        for accs in groups {
            for (j, acc) in accs.iter_mut().enumerate() {
                values[j].push(acc.evaluate()?);
            }
        }
        let n = values.first().map_or(0, Vec::len);
        values
            .into_iter()
            .zip(&self.aggregates)
            .map(|(v, agg)| scalars_to_array(v.into_iter(), agg.field().data_type(), n))
            .collect()
    }

    /// The fields of a group's snapshot: each accumulator's intermediate state.
    pub(crate) fn state_fields(&self) -> Result<Vec<Field>> {
        let mut fields = Vec::new();
        for (j, agg) in self.aggregates.iter().enumerate() {
            for (k, f) in agg.state_fields()?.iter().enumerate() {
                fields.push(Field::new(format!("state_{j}_{k}"), f.data_type().clone(), true));
            }
        }
        Ok(fields)
    }

    /// The state columns of `groups` (reading a state may consume it: the caller restores the
    /// groups from the snapshot it makes).
    pub(crate) fn state_columns<'a>(
        &self,
        groups: impl Iterator<Item = &'a mut Accumulators>,
    ) -> Result<Vec<ArrayRef>> {
        let fields = self.state_fields()?;
        let mut states: Vec<Vec<ScalarValue>> = vec![Vec::new(); fields.len()];
        let mut n = 0;
        for accs in groups {
            let mut at = 0;
            for acc in accs.iter_mut() {
                for value in acc.state()? {
                    states[at].push(value);
                    at += 1;
                }
            }
            n += 1;
        }
        states
            .into_iter()
            .zip(&fields)
            .map(|(values, f)| scalars_to_array(values.into_iter(), f.data_type(), n))
            .collect()
    }

    /// A group's accumulators rebuilt from row `row` of a snapshot whose state columns begin at
    /// column `first`.
    pub(crate) fn restore(&self, batch: &RecordBatch, first: usize, row: usize) -> Result<Accumulators> {
        let mut accs = self.accumulators()?;
        let mut at = first;
        for (acc, agg) in accs.iter_mut().zip(&self.aggregates) {
            let width = agg.state_fields()?.len();
            let state: Vec<ArrayRef> = (at..at + width).map(|c| batch.column(c).slice(row, 1)).collect();
            acc.merge_batch(&state)?;
            at += width;
        }
        Ok(accs)
    }

    /// How many columns a snapshot with `leading` columns before the keys has.
    pub(crate) fn snapshot_width(&self, leading: usize) -> Result<usize> {
        Ok(leading + self.key_types.len() + self.state_fields()?.len())
    }

    /// A row's key from a snapshot whose key columns begin at column `first`.
    pub(crate) fn snapshot_key(&self, batch: &RecordBatch, first: usize, row: usize) -> Result<Vec<ScalarValue>> {
        (0..self.key_types.len()).map(|i| ScalarValue::try_from_array(batch.column(first + i), row)).collect()
    }
}

/// Folds `from`'s accumulators into `into`'s.
pub(crate) fn merge(from: &mut Accumulators, into: &mut Accumulators) -> Result<()> {
    for (src, dst) in from.iter_mut().zip(into.iter_mut()) {
        let state = src.state()?.iter().map(ScalarValue::to_array).collect::<Result<Vec<_>>>()?;
        dst.merge_batch(&state)?;
    }
    Ok(())
}

fn strip_alias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip_alias(&a.expr),
        other => other,
    }
}

pub(crate) fn scalars_to_array(values: impl Iterator<Item = ScalarValue>, ty: &DataType, n: usize) -> Result<ArrayRef> {
    if n == 0 {
        return Ok(new_empty_array(ty));
    }
    ScalarValue::iter_to_array(values)
}

pub(crate) fn int64(a: &ArrayRef) -> Result<&Int64Array> {
    a.as_any().downcast_ref::<Int64Array>().ok_or_else(|| DataFusionError::Internal("not an Int64 column".into()))
}
