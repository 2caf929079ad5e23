//! Flink's deduplication pattern recognised in a plan: `ROW_NUMBER() OVER (PARTITION BY k ORDER
//! BY ts [ASC|DESC])` with the outer query keeping `rn = 1`. Anything else with OVER is refused,
//! saying what does run.

use crate::error::SqlError;
use crate::plan::{Keep, Shape};
use datafusion_common::ScalarValue;
use datafusion_expr::{BinaryExpr, Expr, LogicalPlan, Operator};

/// The shape of a plan whose only stateful node is `window` (a `LogicalPlan::Window`), given the
/// nodes above it (top first).
pub(crate) fn classify(
    window: &datafusion_expr::logical_plan::Window,
    above: &[&LogicalPlan],
    has_state_ttl: bool,
) -> Result<Shape, SqlError> {
    let refuse = |why: &str| {
        Err(SqlError::new(format!(
            "{why}: OVER (...) runs only as deduplication, Flink's pattern: SELECT ... FROM (SELECT *, \
             ROW_NUMBER() OVER (PARTITION BY key ORDER BY ts) AS rn FROM stream) WHERE rn = 1 (ORDER BY ts \
             DESC keeps the last row instead of the first)"
        )))
    };
    let [Expr::WindowFunction(f)] = window.window_expr.as_slice() else {
        return refuse("one window function per query");
    };
    if f.fun.name() != "row_number" {
        return refuse(&format!("{} is not supported yet", f.fun.name().to_uppercase()));
    }
    let p = &f.params;
    if p.partition_by.is_empty() {
        return refuse("ROW_NUMBER() needs PARTITION BY the key to deduplicate on");
    }
    let [order] = p.order_by.as_slice() else {
        return refuse("ROW_NUMBER() needs ORDER BY exactly one time column");
    };
    let Expr::Column(time) = &order.expr else {
        return refuse("ROW_NUMBER() must be ordered by a time column of the input, not an expression");
    };
    // The names the row number goes by: its own column, then each alias a projection gives it.
    let own = window.schema.fields().last().map(|f| f.name().clone()).unwrap_or_default();
    let mut names = vec![own];
    let mut rank_limit = None;
    for node in above.iter().rev() {
        match node {
            LogicalPlan::Projection(proj) => {
                for e in &proj.expr {
                    if let Expr::Alias(a) = e {
                        if matches!(&*a.expr, Expr::Column(c) if names.contains(&c.name)) {
                            names.push(a.name.clone());
                        }
                    }
                }
            }
            LogicalPlan::Filter(filter) => {
                if let Some(n) = limit_of(&filter.predicate, &names) {
                    rank_limit = Some(n);
                }
            }
            _ => {}
        }
    }
    match rank_limit {
        Some(1) => {}
        Some(n) => {
            return Err(SqlError::new(format!(
                "top-{n} over a stream without a window never finishes: only rn = 1 (deduplication) runs; \
                 top-N per window is not supported yet"
            )))
        }
        None => return refuse("ROW_NUMBER() without a filter keeping rn = 1 numbers every event forever"),
    }
    if !has_state_ttl {
        return Err(SqlError::new(
            "deduplication remembers every key it has seen: set the processor's state_ttl so keys unseen \
             for that long are forgotten",
        ));
    }
    let keys = p
        .partition_by
        .iter()
        .map(|e| match e {
            Expr::Column(c) => c.name.clone(),
            other => other.schema_name().to_string(),
        })
        .collect();
    let keep = if order.asc { Keep::First } else { Keep::Last };
    Ok(Shape::Deduplicated { keys, time_column: time.name.clone(), keep })
}

/// The highest row number a filter keeps (`rn = 1`, `rn <= n`, `rn < n + 1`, either way round),
/// when it is a filter on the row number.
fn limit_of(predicate: &Expr, names: &[String]) -> Option<u64> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = predicate else { return None };
    let (column, literal, op) = match (&**left, &**right) {
        (Expr::Column(c), Expr::Literal(v, _)) => (c, v, *op),
        (Expr::Literal(v, _), Expr::Column(c)) => (c, v, op.swap()?),
        _ => return None,
    };
    if !names.contains(&column.name) {
        return None;
    }
    let n = match literal {
        ScalarValue::UInt64(Some(n)) => *n,
        ScalarValue::Int64(Some(n)) => u64::try_from(*n).ok()?,
        _ => return None,
    };
    match op {
        Operator::Eq if n == 1 => Some(1),
        Operator::LtEq => Some(n),
        Operator::Lt => n.checked_sub(1),
        _ => None,
    }
}
