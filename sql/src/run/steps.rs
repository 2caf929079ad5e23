//! The stateless part of a plan as physical steps over record batches: each filter and each
//! projection of the logical plan, its expressions compiled by DataFusion's physical planner.

use datafusion_common::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, UInt32Array};
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

/// A batch on its way through the steps, with each row's position in the batch the steps began
/// with (a filter drops rows: a result finds its event, or its window, again by position).
pub(crate) struct Rows {
    batch: RecordBatch,
    positions: ArrayRef,
}

/// Runs `batch` through `steps`: the resulting batch and, per row, its position in `batch`.
pub(crate) fn run_tracked(steps: &[Step], batch: RecordBatch) -> Result<(RecordBatch, UInt32Array)> {
    let positions = Arc::new(UInt32Array::from_iter_values(0..batch.num_rows() as u32));
    let mut rows = Rows { batch, positions };
    for step in steps {
        rows = step.apply(rows)?;
    }
    let positions = rows.positions.as_any().downcast_ref::<UInt32Array>().cloned().expect("positions are u32");
    Ok((rows.batch, positions))
}

impl Step {
    fn apply(&self, rows: Rows) -> Result<Rows> {
        match self {
            Step::Filter(predicate) => {
                let mask = evaluate(predicate, &rows.batch)?;
                let mask = mask.as_any().downcast_ref::<BooleanArray>().cloned().unwrap_or_else(|| {
                    // A predicate of type NULL (e.g. `WHERE NULL`) keeps nothing.
                    BooleanArray::from(vec![false; rows.batch.num_rows()])
                });
                // NULL counts as false, as in SQL (arrow's filter keeps only true).
                Ok(Rows { batch: filter_record_batch(&rows.batch, &mask)?, positions: filter(&rows.positions, &mask)? })
            }
            Step::Project { exprs, names } => {
                let n = rows.batch.num_rows();
                let columns = exprs.iter().map(|e| evaluate(e, &rows.batch)).collect::<Result<Vec<_>>>()?;
                let batch = batch_of(names, columns, n)?;
                Ok(Rows { batch, positions: rows.positions })
            }
        }
    }
}
