//! The stateless part of a plan as physical steps over record batches: each filter and each
//! projection of the logical plan, its expressions compiled by DataFusion's physical planner.

use datafusion_common::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions};
use datafusion_common::arrow::compute::{filter, filter_record_batch};
use datafusion_common::arrow::datatypes::{Field, Schema};
use datafusion_common::{DFSchema, Result};
use datafusion_expr::execution_props::ExecutionProps;
use datafusion_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion_expr::Expr;
use datafusion_physical_expr::{create_physical_expr, PhysicalExpr};
use std::sync::Arc;

/// An expression of `schema`'s columns, ready to evaluate on batches of that schema.
pub(crate) fn physical(e: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
    create_physical_expr(e, schema, &ExecutionProps::new(), &PhysicalPlanningContext::default())
}

/// A batch of `columns` named `names`, typed as the arrays are (every column nullable).
pub(crate) fn batch_of(names: &[String], columns: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch> {
    let fields: Vec<Field> =
        names.iter().zip(&columns).map(|(n, c)| Field::new(n, c.data_type().clone(), true)).collect();
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options)?)
}

pub(crate) fn evaluate(e: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<ArrayRef> {
    e.evaluate(batch)?.into_array(batch.num_rows())
}

/// One stateless step.
#[derive(Debug)]
pub(crate) enum Step {
    Filter(Arc<dyn PhysicalExpr>),
    /// The expressions and their output names.
    Project {
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        names: Vec<String>,
    },
}

/// A batch on its way through the steps, with the id of the event behind each row (a filter
/// drops rows, a projection may drop the `_id` column: a stateless result keeps its event's id).
pub(crate) struct Rows {
    pub(crate) batch: RecordBatch,
    pub(crate) ids: ArrayRef,
}

impl Step {
    pub(crate) fn apply(&self, rows: Rows) -> Result<Rows> {
        match self {
            Step::Filter(predicate) => {
                let mask = evaluate(predicate, &rows.batch)?;
                let mask = mask.as_any().downcast_ref::<BooleanArray>().cloned().unwrap_or_else(|| {
                    // A predicate of type NULL (e.g. `WHERE NULL`) keeps nothing.
                    BooleanArray::from(vec![false; rows.batch.num_rows()])
                });
                // NULL counts as false, as in SQL (arrow's filter keeps only true).
                Ok(Rows { batch: filter_record_batch(&rows.batch, &mask)?, ids: filter(&rows.ids, &mask)? })
            }
            Step::Project { exprs, names } => {
                let n = rows.batch.num_rows();
                let columns = exprs.iter().map(|e| evaluate(e, &rows.batch)).collect::<Result<Vec<_>>>()?;
                let batch = batch_of(names, columns, n)?;
                Ok(Rows { batch, ids: rows.ids })
            }
        }
    }
}
