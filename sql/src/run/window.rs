//! The window operator: rows grouped by window and key into panes, each pane one DataFusion
//! accumulator per aggregate (so COUNT DISTINCT, percentiles and the rest are DataFusion's own),
//! closed and emitted once the watermark passes the pane's end plus the allowed lateness.
//! Its state snapshots to a record batch (a row per pane: bounds, key, each accumulator's
//! intermediate state), which restores into fresh accumulators by merging: the same
//! state/merge contract DataFusion's partial aggregation relies on.

use super::grouping::{int64, merge, Accumulators, Grouping};
use super::steps::{evaluate, physical};
use crate::windows::Window;
use datafusion_common::arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StructArray, TimestampMillisecondArray,
};
use datafusion_common::arrow::compute::cast;
use datafusion_common::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion_common::{plan_err, Result, ScalarValue};
use datafusion_expr::{Aggregate, Expr};
use datafusion_physical_expr::PhysicalExpr;
use std::collections::HashMap;
use std::sync::Arc;

/// One window of one key and its accumulators.
struct Pane {
    start: i64,
    end: i64,
    accs: Accumulators,
}

pub(crate) struct WindowAggregate {
    window: Window,
    lateness_ms: i64,
    /// The window's time argument, an expression of the aggregate's input.
    time: Arc<dyn PhysicalExpr>,
    /// Where the window sits among the group expressions.
    window_pos: usize,
    grouping: Grouping,
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
        let is_window = |e: &Expr| matches!(e, Expr::ScalarFunction(f) if crate::windows::is_window_function(f.name()));
        let Some((window_pos, Expr::ScalarFunction(f))) = a.group_expr.iter().enumerate().find(|(_, g)| is_window(g))
        else {
            return plan_err!("the aggregate has no window");
        };
        let time = physical(&f.args[0], a.input.schema())?;
        Ok(WindowAggregate {
            window,
            lateness_ms,
            time,
            window_pos,
            grouping: Grouping::compile(a, is_window)?,
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

    /// Adds a batch of the aggregate's input; rows only in closed windows are skipped (the
    /// caller dead-letters late events before they get here).
    pub(crate) fn update(&mut self, batch: &RecordBatch, watermark: Option<i64>) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let times = millis(&evaluate(&self.time, batch)?)?;
        let evaluated = self.grouping.evaluate(batch)?;
        // Rows by key, then by pane: one update_batch per pane and batch, not per row.
        let mut by_key: HashMap<Vec<ScalarValue>, Vec<(i64, u32)>> = HashMap::new();
        for row in 0..batch.num_rows() {
            if times.is_null(row) {
                continue;
            }
            let key = evaluated.key(row)?;
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
                let mut pane = Pane { start, end, accs: self.grouping.accumulators()? };
                self.grouping.update(&mut pane.accs, &evaluated, rows)?;
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
                merge(&mut other.accs, &mut pane.accs)?;
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
        let mut columns = self.grouping.key_columns(done.iter().map(|d| d.0.as_slice()))?;
        columns.insert(self.window_pos, Arc::new(window));
        columns.extend(self.grouping.values(done.iter_mut().map(|d| &mut d.1.accs))?);
        super::steps::batch_of(&self.grouping.names, columns, n)
    }

    /// Every open pane as a row: `pane_start`, `pane_end`, the key columns, then each
    /// accumulator's intermediate state. The accumulators are rebuilt from it (reading a state
    /// may consume it, in DataFusion's contract).
    pub(crate) fn snapshot(&mut self) -> Result<RecordBatch> {
        let mut fields =
            vec![Field::new("pane_start", DataType::Int64, false), Field::new("pane_end", DataType::Int64, false)];
        for (i, ty) in self.grouping.key_types.iter().enumerate() {
            fields.push(Field::new(format!("key_{i}"), ty.clone(), true));
        }
        fields.extend(self.grouping.state_fields()?);
        let mut rows: Vec<(&Vec<ScalarValue>, &mut Pane)> =
            self.panes.iter_mut().flat_map(|(k, ps)| ps.iter_mut().map(move |p| (k, p))).collect();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1.start))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1.end))),
        ];
        columns.extend(self.grouping.key_columns(rows.iter().map(|r| r.0.as_slice()))?);
        columns.extend(self.grouping.state_columns(rows.iter_mut().map(|r| &mut r.1.accs))?);
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        self.restore(&batch)?;
        Ok(batch)
    }

    /// Replaces the open panes with those of a snapshot.
    pub(crate) fn restore(&mut self, batch: &RecordBatch) -> Result<()> {
        self.panes.clear();
        self.earliest_end = i64::MAX;
        let expected = self.grouping.snapshot_width(2)?;
        if batch.num_columns() != expected {
            return plan_err!(
                "the snapshot has {} columns where this query's state has {expected}",
                batch.num_columns()
            );
        }
        let starts = int64(batch.column(0))?;
        let ends = int64(batch.column(1))?;
        let first_state = 2 + self.grouping.key_types.len();
        for row in 0..batch.num_rows() {
            let key = self.grouping.snapshot_key(batch, 2, row)?;
            let accs = self.grouping.restore(batch, first_state, row)?;
            let pane = Pane { start: starts.value(row), end: ends.value(row), accs };
            self.earliest_end = self.earliest_end.min(pane.end);
            self.panes.entry(key).or_default().push(pane);
        }
        Ok(())
    }
}

/// Event times as milliseconds since the epoch.
pub(crate) fn millis(a: &ArrayRef) -> Result<TimestampMillisecondArray> {
    let ms = cast(a, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    Ok(ms.as_any().downcast_ref::<TimestampMillisecondArray>().cloned().expect("cast to milliseconds"))
}
