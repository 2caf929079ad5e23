//! From a processor's SQL to a checked streaming query: parsed by `sqlparser`, planned and
//! type-checked by DataFusion against the input streams' schemas, then classified into the shapes
//! Keystone's streaming operators run, refusing what would keep state without bound.

use crate::catalog::{Catalog, Functions};
use crate::error::SqlError;
use crate::schema::type_name;
use crate::windows::{accessor, is_window_function, window_of, Window};
use datafusion_common::tree_node::TreeNode;
use datafusion_expr::{Expr, LogicalPlan};
use datafusion_optimizer::analyzer::Analyzer;
use datafusion_optimizer::simplify_expressions::SimplifyExpressions;
use datafusion_optimizer::{Optimizer, OptimizerContext};
use datafusion_sql::planner::{ParserOptions, SqlToRel};
use datafusion_sql::sqlparser::ast::{self, visit_expressions_mut, Statement};
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::parser::Parser;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

/// At most this many bytes of SQL per processor.
pub const SQL_MAX_BYTES: usize = 64 * 1024;

/// An output column: its name, its type as a user reads it, and whether it may be null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub nullable: bool,
}

/// What kind of streaming job a query is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Shape {
    /// Each event in gives at most one row out (projections, filters, functions): no state.
    Stateless,
    /// One row per window and group key, emitted once the watermark passes the window's end.
    Windowed { window: Window, time_column: String, keys: Vec<String> },
    /// One row per group key, updated as events arrive (upserts by key), forgotten after the
    /// processor's state TTL.
    Updating { keys: Vec<String> },
    /// One row per key: its first (or last) event by the time column, replaced when an event
    /// comes that is earlier (or later); keys forgotten after the processor's state TTL.
    Deduplicated { keys: Vec<String>, time_column: String, keep: Keep },
}

impl Shape {
    /// Whether a key's result is replaced as events arrive (a sink must upsert by id).
    pub fn is_updating(&self) -> bool {
        matches!(self, Shape::Updating { .. } | Shape::Deduplicated { .. })
    }
}

/// Which row per key a deduplication keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// The earliest by the time column (`ORDER BY ts` or `ASC`).
    First,
    /// The latest (`ORDER BY ts DESC`).
    Last,
}

/// A planned, checked query.
#[derive(Debug, Clone)]
pub struct Query {
    /// The streams it reads, by name.
    pub inputs: Vec<String>,
    pub output: Vec<Column>,
    pub shape: Shape,
    /// The plan's operators, top first, one line each (indented by depth).
    pub operators: Vec<String>,
    pub plan: LogicalPlan,
}

/// The streams a query names in FROM and JOIN clauses, without planning it (cheap enough for
/// every lineage check). Names that are not streams are left for [`plan`] to refuse.
pub fn read_streams(sql: &str) -> Result<Vec<String>, SqlError> {
    let statements = Parser::new(&GenericDialect {}).try_with_sql(sql).and_then(|mut p| p.parse_statements())?;
    let mut names = Vec::new();
    let _ = ast::visit_relations(&statements, |relation| {
        // By the names' values: a quoted name (`"page-views"`, as a stream name with dashes
        // must be written) is the stream `page-views`.
        let parts: Vec<String> =
            relation.0.iter().map(|p| p.as_ident().map_or_else(|| p.to_string(), |i| i.value.clone())).collect();
        let name = parts.join(".");
        if !names.contains(&name) {
            names.push(name);
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(names)
}

/// Plans `sql` over `streams` (name to JSON Schema, `None` for a stream without one).
/// `has_state_ttl`: whether the processor declares a state TTL, which bounds a GROUP BY without
/// a window.
pub fn plan(sql: &str, streams: &BTreeMap<String, Option<Value>>, has_state_ttl: bool) -> Result<Query, SqlError> {
    if sql.len() > SQL_MAX_BYTES {
        return Err(SqlError::new(format!("is longer than {SQL_MAX_BYTES} bytes")));
    }
    let mut statements = Parser::new(&GenericDialect {}).try_with_sql(sql).and_then(|mut p| p.parse_statements())?;
    let mut statement = match statements.len() {
        1 => statements.remove(0),
        0 => return Err(SqlError::new("is empty: write one SELECT query")),
        n => return Err(SqlError::new(format!("holds {n} statements: a processor runs exactly one SELECT query"))),
    };
    if !matches!(statement, Statement::Query(_)) {
        return Err(SqlError::new("must be a SELECT query (a processor reads streams; it declares nothing)"));
    }
    rewrite_window_accessors(&mut statement);
    let catalog = Catalog::new(streams);
    let options = ParserOptions {
        // Field names are case-sensitive in JSON (and in Flink SQL): `userId` means `userId`.
        enable_ident_normalization: false,
        collect_spans: true,
        ..ParserOptions::new()
    };
    let planned = SqlToRel::new_with_options(&catalog, options).sql_statement_to_plan(statement).map_err(|e| {
        // DataFusion words an unknown table its own way; say what the team can read instead.
        let mut err = SqlError::from(e);
        if let Some(name) = err.message.strip_prefix("table '").and_then(|r| r.strip_suffix("' not found")) {
            let known: Vec<&str> = streams.keys().map(String::as_str).collect();
            err.message = format!("no stream named {name:?} that this team can read (readable: {})", known.join(", "));
        }
        err
    })?;
    let plan = Analyzer::new().execute_and_check(planned, &Functions::get().options, |_, _| {})?;
    // Constants folded once, here: a literal that cannot take its column's type (`bitrate =
    // 'fast'`) is refused now rather than failing every batch of the running job.
    let simplify = Optimizer::with_rules(vec![Arc::new(SimplifyExpressions::new())]);
    let plan = simplify.optimize(plan, &OptimizerContext::new(), |_, _| {})?;
    let shape = classify(&plan, has_state_ttl)?;
    let output = plan
        .schema()
        .fields()
        .iter()
        .map(|f| Column { name: f.name().clone(), type_name: type_name(f.data_type()), nullable: f.is_nullable() })
        .collect();
    let mut inputs = Vec::new();
    let mut operators = Vec::new();
    walk(&plan, 0, &mut |node, depth| {
        operators.push(format!("{}{}", "  ".repeat(depth), node.display()));
        if let LogicalPlan::TableScan(scan) = node {
            let name = scan.table_name.table().to_owned();
            if !inputs.contains(&name) {
                inputs.push(name);
            }
        }
    });
    Ok(Query { inputs, output, shape, operators, plan })
}

/// `TUMBLE_START(args)` becomes `get_field(TUMBLE(args), 'start')`, an expression of the GROUP
/// BY key `TUMBLE(args)` that DataFusion accepts in the select list.
fn rewrite_window_accessors(statement: &mut Statement) {
    let _ = visit_expressions_mut(statement, |expr| {
        if let ast::Expr::Function(f) = expr {
            let name = f.name.to_string();
            if let Some((window, part)) = accessor(&name) {
                let mut inner = f.clone();
                inner.name = ast::ObjectName::from(vec![ast::Ident::new(window)]);
                let mut outer = f.clone();
                outer.name = ast::ObjectName::from(vec![ast::Ident::new("get_field")]);
                let part = ast::Expr::Value(ast::Value::SingleQuotedString(part.into()).into());
                let arg = |e| ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e));
                outer.args = ast::FunctionArguments::List(ast::FunctionArgumentList {
                    duplicate_treatment: None,
                    args: vec![arg(ast::Expr::Function(inner)), arg(part)],
                    clauses: Vec::new(),
                });
                *expr = ast::Expr::Function(outer);
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

fn walk<'a>(plan: &'a LogicalPlan, depth: usize, f: &mut impl FnMut(&'a LogicalPlan, usize)) {
    f(plan, depth);
    for input in plan.inputs() {
        walk(input, depth + 1, f);
    }
}

fn calls_window(e: &Expr) -> bool {
    e.exists(|e| Ok(matches!(e, Expr::ScalarFunction(f) if is_window_function(f.name())))).unwrap_or(false)
}

/// Which shape the plan has, or why Keystone cannot run it (yet, or ever without a bound).
fn classify(plan: &LogicalPlan, has_state_ttl: bool) -> Result<Shape, SqlError> {
    let mut refusal: Option<SqlError> = None;
    let mut aggregates = Vec::new();
    let mut overs = Vec::new();
    walk(plan, 0, &mut |node, _| {
        if refusal.is_some() {
            return;
        }
        let problem = match node {
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::TableScan(_)
            | LogicalPlan::SubqueryAlias(_) => None,
            LogicalPlan::Aggregate(a) => {
                aggregates.push(a);
                None
            }
            LogicalPlan::Distinct(_) => Some(
                "SELECT DISTINCT over a stream remembers every row forever; group by a window instead \
                 (GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE), ...)"
                    .to_owned(),
            ),
            LogicalPlan::Join(_) => Some(
                "joins are not supported yet: interval joins (a.ts BETWEEN b.ts - INTERVAL ... AND b.ts + \
                 INTERVAL ...) and enrichment joins (FOR SYSTEM_TIME AS OF) are the next step"
                    .to_owned(),
            ),
            LogicalPlan::Window(w) => {
                overs.push(w);
                None
            }
            LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => Some(
                "ORDER BY and LIMIT never finish over an unbounded stream; use a window (top-N per window \
                 is the next step)"
                    .to_owned(),
            ),
            LogicalPlan::Union(_) => Some("UNION is not supported yet: declare one processor per input".to_owned()),
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                Some("reads no stream: name one in FROM".to_owned())
            }
            other => Some(format!("{} is not a streaming query", other.display())),
        };
        if let Some(p) = problem {
            refusal = Some(SqlError::new(p));
        }
    });
    if let Some(r) = refusal {
        return Err(r);
    }
    // Window functions are group keys, nothing else: anywhere else there is no window to be in.
    let mut stray = false;
    walk(plan, 0, &mut |node, _| {
        let group_keys = match node {
            LogicalPlan::Aggregate(a) => a.group_expr.clone(),
            _ => Vec::new(),
        };
        for e in node.expressions() {
            if calls_window(&e) && !group_keys.contains(&e) {
                stray = true;
            }
        }
    });
    if stray {
        return Err(SqlError::new(
            "TUMBLE, HOP and SESSION belong in GROUP BY (their _START and _END in the select list)",
        ));
    }
    match (aggregates.as_slice(), overs.as_slice()) {
        ([], [w]) => {
            let mut above: Vec<&LogicalPlan> = Vec::new();
            let mut found = false;
            walk(plan, 0, &mut |node, _| {
                found |= matches!(node, LogicalPlan::Window(_));
                if !found {
                    above.push(node);
                }
            });
            return crate::dedupe::classify(w, &above, has_state_ttl);
        }
        (_, []) => {}
        _ => {
            return Err(SqlError::new(
                "one OVER (...) per query, and not beside a GROUP BY: deduplicate (ROW_NUMBER() ... rn = 1) \
                 in one processor and aggregate its output stream in another",
            ))
        }
    }
    let aggregate = match aggregates.as_slice() {
        [] => return Ok(Shape::Stateless),
        [a] => *a,
        _ => return Err(SqlError::new("one GROUP BY per query for now: nested aggregations are not supported yet")),
    };
    let windows: Vec<&Expr> = aggregate.group_expr.iter().filter(|e| calls_window(e)).collect();
    let keys: Vec<String> = aggregate
        .group_expr
        .iter()
        .filter(|e| !calls_window(e))
        .map(|e| match e {
            Expr::Column(c) => c.name.clone(),
            other => other.schema_name().to_string(),
        })
        .collect();
    let mut above: Vec<&LogicalPlan> = Vec::new();
    let mut aggregate_depth = usize::MAX;
    walk(plan, 0, &mut |node, depth| match node {
        LogicalPlan::Aggregate(_) => aggregate_depth = depth,
        other if aggregate_depth == usize::MAX => above.push(other),
        _ => {}
    });
    let having = above.iter().any(|n| matches!(n, LogicalPlan::Filter(_)));
    match windows.as_slice() {
        [] if having => Err(SqlError::new(
            "HAVING on a GROUP BY without a window is not supported yet: a key's row that stops \
             matching would have to be deleted from the sink; filter in WHERE, or group by a window",
        )),
        [] if has_state_ttl => Ok(Shape::Updating { keys }),
        [] => Err(SqlError::new(
            "a GROUP BY without a window keeps a row per key forever: group by a window \
             (GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE), ...) or set the processor's state_ttl so keys \
             unseen for that long are forgotten",
        )),
        [Expr::ScalarFunction(f)] => {
            let window = window_of(f.name(), &f.args)?;
            let time_column = match f.args.first() {
                Some(Expr::Column(c)) => c.name.clone(),
                _ => {
                    return Err(SqlError::new(format!(
                        "the first argument of {} must be an event-time column of the input",
                        f.name().to_uppercase()
                    )))
                }
            };
            Ok(Shape::Windowed { window, time_column, keys })
        }
        [_] => Err(SqlError::new("a window must be a GROUP BY key of its own, not part of an expression")),
        _ => Err(SqlError::new("group by one window at a time")),
    }
}
