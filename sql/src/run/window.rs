//! The window operator: rows grouped by window and key into panes, each pane one DataFusion
//! accumulator per aggregate (so COUNT DISTINCT, percentiles and the rest are DataFusion's own),
//! closed and emitted once the watermark passes the pane's end plus the allowed lateness.
//! Its state snapshots to a record batch (a row per pane: bounds, key, each accumulator's
//! intermediate state), which restores into fresh accumulators by merging: the same
//! state/merge contract DataFusion's partial aggregation relies on.

use super::steps::{evaluate, physical};
use crate::windows::Window;
use datafusion_common::arrow::array::{
    new_empty_array, Array, ArrayRef, Int64Array, RecordBatch, StructArray, TimestampMillisecondArray, UInt32Array,
};
use datafusion_common::arrow::compute::{cast, take};
use datafusion_common::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion_common::{plan_err, DataFusionError, Result, ScalarValue};
use datafusion_expr::{Accumulator, Aggregate, Expr, ExprSchemable};
use datafusion_physical_expr::aggregate::{AggregateExprBuilder, AggregateFunctionExpr};
use datafusion_physical_expr::PhysicalExpr;
use std::collections::HashMap;
use std::sync::Arc;

/// One window of one key and its accumulators.
struct Pane {
    start: i64,
    end: i64,
    accs: Vec<Box<dyn Accumulator>>,
}

pub(crate) struct WindowAggregate {
    window: Window,
    lateness_ms: i64,
    /// The window's time argument, an expression of the aggregate's input.
    time: Arc<dyn PhysicalExpr>,
    /// Where the window sits among the group expressions.
    window_pos: usize,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    key_types: Vec<DataType>,
    aggregates: Vec<AggregateFunctionExpr>,
    /// The aggregate's output columns: group expressions, then aggregates.
    pub(crate) names: Vec<String>,
    panes: HashMap<Vec<ScalarValue>, Vec<Pane>>,
    /// The earliest end among open panes (`i64::MAX` when none): most batches close nothing.
    earliest_end: i64,
}

/// A closed pane's identity, for its result's id.
pub(crate) struct Closed {
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) key: Vec<ScalarValue>,
}

impl WindowAggregate {
    pub(crate) fn compile(a: &Aggregate, window: Window, lateness_ms: i64) -> Result<WindowAggregate> {
        let input = a.input.schema();
        let mut time = None;
        let mut window_pos = 0;
        let mut keys = Vec::new();
        let mut key_types = Vec::new();
        for (i, g) in a.group_expr.iter().enumerate() {
            match g {
                Expr::ScalarFunction(f) if crate::windows::is_window_function(f.name()) => {
                    time = Some(physical(&f.args[0], input)?);
                    window_pos = i;
                }
                key => {
                    keys.push(physical(key, input)?);
                    key_types.push(key.get_type(input)?);
                }
            }
        }
        let Some(time) = time else { return plan_err!("the aggregate has no window") };
        let input_schema = Arc::new(input.as_arrow().clone());
        let mut aggregates = Vec::new();
        for (e, field) in a.aggr_expr.iter().zip(a.schema.fields().iter().skip(a.group_expr.len())) {
            let Expr::AggregateFunction(f) = strip_alias(e) else {
                return plan_err!("{e} is not an aggregate function");
            };
            if f.params.filter.is_some() {
                return plan_err!("FILTER (WHERE ...) on an aggregate is not supported yet");
            }
            let args = f.params.args.iter().map(|x| physical(x, input)).collect::<Result<Vec<_>>>()?;
            let mut b =
                AggregateExprBuilder::new(f.func.clone(), args).schema(input_schema.clone()).alias(field.name());
            if f.params.distinct {
                b = b.distinct();
            }
            if !f.params.order_by.is_empty() {
                return plan_err!("ORDER BY inside an aggregate is not supported yet");
            }
            aggregates.push(b.build()?);
        }
        let names = a.schema.fields().iter().map(|f| f.name().clone()).collect();
        Ok(WindowAggregate {
            window,
            lateness_ms,
            time,
            window_pos,
            keys,
            key_types,
            aggregates,
            names,
            panes: HashMap::new(),
            earliest_end: i64::MAX,
        })
    }

    /// Whether every window an event at `ts` belongs to was closed by `watermark`.
    pub(crate) fn is_late(&self, ts: i64, watermark: Option<i64>) -> bool {
        let Some(w) = watermark else { return false };
        self.window.assign(ts).iter().all(|&(_, end)| self.closed(end, w))
    }

    fn closed(&self, end: i64, watermark: i64) -> bool {
        end.saturating_add(self.lateness_ms) <= watermark
    }

    /// Open panes.
    pub(crate) fn pane_count(&self) -> usize {
        self.panes.values().map(Vec::len).sum()
    }

    fn new_accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        self.aggregates.iter().map(AggregateFunctionExpr::create_accumulator).collect()
    }

    /// Adds a batch of the aggregate's input; rows only in closed windows are skipped (the
    /// caller dead-letters late events before they get here).
    pub(crate) fn update(&mut self, batch: &RecordBatch, watermark: Option<i64>) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let times = millis(&evaluate(&self.time, batch)?)?;
        let keys = self.keys.iter().map(|k| evaluate(k, batch)).collect::<Result<Vec<_>>>()?;
        let args: Vec<Vec<ArrayRef>> = self
            .aggregates
            .iter()
            .map(|a| a.expressions().iter().map(|e| evaluate(e, batch)).collect::<Result<Vec<_>>>())
            .collect::<Result<_>>()?;
        // Rows by key, then by pane: one update_batch per pane and batch, not per row.
        let mut by_key: HashMap<Vec<ScalarValue>, Vec<(i64, u32)>> = HashMap::new();
        for row in 0..batch.num_rows() {
            if times.is_null(row) {
                continue;
            }
            let key = keys.iter().map(|k| ScalarValue::try_from_array(k, row)).collect::<Result<Vec<_>>>()?;
            by_key.entry(key).or_default().push((times.value(row), row as u32));
        }
        for (key, mut rows) in by_key {
            let mut runs: Vec<(i64, i64, Vec<u32>)> = Vec::new();
            match self.window {
                Window::Session { gap_ms } => {
                    // Rows closer than the gap make one session.
                    rows.sort_unstable();
                    for (ts, row) in rows {
                        match runs.last_mut() {
                            Some(run) if ts < run.1 => {
                                run.1 = run.1.max(ts + gap_ms);
                                run.2.push(row);
                            }
                            _ => runs.push((ts, ts + gap_ms, vec![row])),
                        }
                    }
                }
                _ => {
                    let mut panes: HashMap<(i64, i64), Vec<u32>> = HashMap::new();
                    for (ts, row) in rows {
                        for bounds in self.window.assign(ts) {
                            panes.entry(bounds).or_default().push(row);
                        }
                    }
                    runs.extend(panes.into_iter().map(|((s, e), rows)| (s, e, rows)));
                }
            }
            for (start, end, rows) in runs {
                if watermark.is_some_and(|w| self.closed(end, w)) {
                    continue;
                }
                let indices = UInt32Array::from(rows);
                let mut pane = Pane { start, end, accs: self.new_accumulators()? };
                for (acc, columns) in pane.accs.iter_mut().zip(&args) {
                    let taken =
                        columns.iter().map(|c| take(c.as_ref(), &indices, None)).collect::<Result<Vec<_>, _>>()?;
                    acc.update_batch(&taken)?;
                }
                self.add_pane(key.clone(), pane)?;
            }
        }
        Ok(())
    }

    /// Adds a pane to its key: merged into the pane of the same bounds, or (sessions) into every
    /// pane it overlaps.
    fn add_pane(&mut self, key: Vec<ScalarValue>, mut pane: Pane) -> Result<()> {
        let session = matches!(self.window, Window::Session { .. });
        let panes = self.panes.entry(key).or_default();
        let overlapping = |p: &Pane, (start, end): (i64, i64)| {
            if session {
                p.start < end && start < p.end
            } else {
                p.start == start && p.end == end
            }
        };
        let mut i = 0;
        while i < panes.len() {
            if overlapping(&panes[i], (pane.start, pane.end)) {
                let mut other = panes.swap_remove(i);
                merge(&mut other, &mut pane)?;
                pane.start = pane.start.min(other.start);
                pane.end = pane.end.max(other.end);
            } else {
                i += 1;
            }
        }
        self.earliest_end = self.earliest_end.min(pane.end);
        panes.push(pane);
        Ok(())
    }

    /// Closes every pane the watermark has passed (end plus lateness): the aggregate's output
    /// rows, in order of window end then key, and which pane each came from.
    pub(crate) fn close(&mut self, watermark: Option<i64>) -> Result<Option<(RecordBatch, Vec<Closed>)>> {
        let Some(w) = watermark else { return Ok(None) };
        if !self.closed(self.earliest_end, w) {
            return Ok(None);
        }
        let lateness = self.lateness_ms;
        let mut done: Vec<(Vec<ScalarValue>, Pane)> = Vec::new();
        for (key, panes) in self.panes.iter_mut() {
            let mut i = 0;
            while i < panes.len() {
                if panes[i].end.saturating_add(lateness) <= w {
                    done.push((key.clone(), panes.swap_remove(i)));
                } else {
                    i += 1;
                }
            }
        }
        self.panes.retain(|_, p| !p.is_empty());
        self.earliest_end = self.panes.values().flatten().map(|p| p.end).min().unwrap_or(i64::MAX);
        done.sort_by(|a, b| {
            (a.1.end, a.1.start, format!("{:?}", a.0)).cmp(&(b.1.end, b.1.start, format!("{:?}", b.0)))
        });
        let batch = self.output(&mut done)?;
        let closed = done.into_iter().map(|(key, p)| Closed { start: p.start, end: p.end, key }).collect();
        Ok(Some((batch, closed)))
    }

    fn output(&self, done: &mut [(Vec<ScalarValue>, Pane)]) -> Result<RecordBatch> {
        let n = done.len();
        let starts = TimestampMillisecondArray::from_iter_values(done.iter().map(|d| d.1.start)).with_timezone("UTC");
        let ends = TimestampMillisecondArray::from_iter_values(done.iter().map(|d| d.1.end)).with_timezone("UTC");
        let window_type = crate::windows::window_struct();
        let DataType::Struct(window_fields) = window_type else { unreachable!("a window is a struct") };
        let window = StructArray::try_new(window_fields, vec![Arc::new(starts), Arc::new(ends)], None)?;
        let mut columns: Vec<ArrayRef> = Vec::new();
        for (i, ty) in self.key_types.iter().enumerate() {
            columns.push(scalars_to_array(done.iter().map(|d| d.0[i].clone()), ty, n)?);
        }
        columns.insert(self.window_pos, Arc::new(window));
        for (j, agg) in self.aggregates.iter().enumerate() {
            let values = done.iter_mut().map(|d| d.1.accs[j].evaluate()).collect::<Result<Vec<_>>>()?;
            columns.push(scalars_to_array(values.into_iter(), agg.field().data_type(), n)?);
        }
        super::steps::batch_of(&self.names, columns, n)
    }

    /// Every open pane as a row: `pane_start`, `pane_end`, the key columns, then each
    /// accumulator's intermediate state. The accumulators are rebuilt from it (reading a state
    /// may consume it, in DataFusion's contract).
    pub(crate) fn snapshot(&mut self) -> Result<RecordBatch> {
        let mut fields =
            vec![Field::new("pane_start", DataType::Int64, false), Field::new("pane_end", DataType::Int64, false)];
        for (i, ty) in self.key_types.iter().enumerate() {
            fields.push(Field::new(format!("key_{i}"), ty.clone(), true));
        }
        let mut state_types = Vec::new();
        for (j, agg) in self.aggregates.iter().enumerate() {
            for (k, f) in agg.state_fields()?.iter().enumerate() {
                fields.push(Field::new(format!("state_{j}_{k}"), f.data_type().clone(), true));
                state_types.push(f.data_type().clone());
            }
        }
        let mut rows: Vec<(&Vec<ScalarValue>, &mut Pane)> =
            self.panes.iter_mut().flat_map(|(k, ps)| ps.iter_mut().map(move |p| (k, p))).collect();
        let n = rows.len();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1.start))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1.end))),
        ];
        for (i, ty) in self.key_types.iter().enumerate() {
            columns.push(scalars_to_array(rows.iter().map(|r| r.0[i].clone()), ty, n)?);
        }
        let mut states: Vec<Vec<ScalarValue>> = vec![Vec::with_capacity(n); state_types.len()];
        for (_, pane) in rows.iter_mut() {
            let mut at = 0;
            for acc in pane.accs.iter_mut() {
                for value in acc.state()? {
                    states[at].push(value);
                    at += 1;
                }
            }
        }
        for (values, ty) in states.into_iter().zip(&state_types) {
            columns.push(scalars_to_array(values.into_iter(), ty, n)?);
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        self.restore(&batch)?;
        Ok(batch)
    }

    /// Replaces the open panes with those of a snapshot.
    pub(crate) fn restore(&mut self, batch: &RecordBatch) -> Result<()> {
        self.panes.clear();
        self.earliest_end = i64::MAX;
        let starts = int64(batch.column(0))?;
        let ends = int64(batch.column(1))?;
        let key_count = self.key_types.len();
        let expected =
            2 + key_count + self.aggregates.iter().map(|a| a.state_fields().map(|f| f.len())).sum::<Result<usize>>()?;
        if batch.num_columns() != expected {
            return plan_err!(
                "the snapshot has {} columns where this query's state has {expected}",
                batch.num_columns()
            );
        }
        for row in 0..batch.num_rows() {
            let key = (0..key_count)
                .map(|i| ScalarValue::try_from_array(batch.column(2 + i), row))
                .collect::<Result<Vec<_>>>()?;
            let mut accs = self.new_accumulators()?;
            let mut at = 2 + key_count;
            for (acc, agg) in accs.iter_mut().zip(&self.aggregates) {
                let width = agg.state_fields()?.len();
                let state: Vec<ArrayRef> = (at..at + width).map(|c| batch.column(c).slice(row, 1)).collect();
                acc.merge_batch(&state)?;
                at += width;
            }
            let pane = Pane { start: starts.value(row), end: ends.value(row), accs };
            self.earliest_end = self.earliest_end.min(pane.end);
            self.panes.entry(key).or_default().push(pane);
        }
        Ok(())
    }
}

fn strip_alias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip_alias(&a.expr),
        other => other,
    }
}

/// Folds `from`'s accumulators into `into`'s.
fn merge(from: &mut Pane, into: &mut Pane) -> Result<()> {
    for (src, dst) in from.accs.iter_mut().zip(into.accs.iter_mut()) {
        let state = src.state()?.iter().map(ScalarValue::to_array).collect::<Result<Vec<_>>>()?;
        dst.merge_batch(&state)?;
    }
    Ok(())
}

fn scalars_to_array(values: impl Iterator<Item = ScalarValue>, ty: &DataType, n: usize) -> Result<ArrayRef> {
    if n == 0 {
        return Ok(new_empty_array(ty));
    }
    ScalarValue::iter_to_array(values)
}

fn int64(a: &ArrayRef) -> Result<&Int64Array> {
    a.as_any().downcast_ref::<Int64Array>().ok_or_else(|| DataFusionError::Internal("not an Int64 column".into()))
}

/// Event times as milliseconds since the epoch.
pub(crate) fn millis(a: &ArrayRef) -> Result<TimestampMillisecondArray> {
    let ms = cast(a, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    Ok(ms.as_any().downcast_ref::<TimestampMillisecondArray>().cloned().expect("cast to milliseconds"))
}
