//! The deduplication operator (`ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts) ... rn = 1`):
//! per key, the time of the row it holds. A row is emitted when its key is new, or when it beats
//! the held row (earlier, keeping the first; as late or later, keeping the last); every row of a
//! key carries one result id, so a sink upserting by id holds the kept row. Keys unseen for the
//! state TTL, in event time, are forgotten. A snapshot is a row per key: held time, last seen,
//! key; the rows themselves were delivered, so the state is small.

use super::grouping::{int64, scalars_to_array};
use super::steps::{evaluate, physical};
use crate::plan::Keep;
use datafusion_common::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, TimestampMillisecondArray, UInt32Array, UInt64Array,
};
use datafusion_common::arrow::compute::take;
use datafusion_common::arrow::datatypes::{DataType, Field, Schema};
use datafusion_common::{plan_err, Result, ScalarValue};
use datafusion_expr::{Expr, ExprSchemable};
use datafusion_physical_expr::PhysicalExpr;
use std::collections::HashMap;
use std::sync::Arc;

struct Held {
    /// The event time of the row held for the key.
    time: i64,
    /// The latest event time seen for the key (what its TTL counts from).
    last_seen: i64,
}

pub(crate) struct Deduplicate {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    key_types: Vec<DataType>,
    keep: Keep,
    ttl_ms: i64,
    lateness_ms: i64,
    held: HashMap<Vec<ScalarValue>, Held>,
    oldest_seen: i64,
    /// The window node's output columns: its input's, then the row number.
    names: Vec<String>,
}

/// A row to emit: its index in the batch, its key and its event time.
pub(crate) struct Kept {
    pub(crate) row: u32,
    pub(crate) key: Vec<ScalarValue>,
    pub(crate) time: i64,
}

impl Deduplicate {
    pub(crate) fn compile(
        w: &datafusion_expr::logical_plan::Window,
        keep: Keep,
        ttl_ms: i64,
        lateness_ms: i64,
    ) -> Result<Deduplicate> {
        let [Expr::WindowFunction(f)] = w.window_expr.as_slice() else {
            return plan_err!("deduplication has one window function");
        };
        let input = w.input.schema();
        let keys = f.params.partition_by.iter().map(|k| physical(k, input)).collect::<Result<Vec<_>>>()?;
        let key_types = f.params.partition_by.iter().map(|k| k.get_type(input)).collect::<Result<Vec<_>>>()?;
        let names = w.schema.fields().iter().map(|f| f.name().clone()).collect();
        Ok(Deduplicate {
            keys,
            key_types,
            keep,
            ttl_ms,
            lateness_ms,
            held: HashMap::new(),
            oldest_seen: i64::MAX,
            names,
        })
    }

    /// Like the updating operator: an event older than any key can still be remembered.
    pub(crate) fn is_late(&self, ts: i64, watermark: Option<i64>) -> bool {
        watermark.is_some_and(|w| ts.saturating_add(self.ttl_ms).saturating_add(self.lateness_ms) <= w)
    }

    pub(crate) fn key_count(&self) -> usize {
        self.held.len()
    }

    /// The rows of a batch (the window's input; `times` their event times) to emit, in row order:
    /// per key at most one, the batch's best if it beats the held row.
    pub(crate) fn update(&mut self, batch: &RecordBatch, times: &TimestampMillisecondArray) -> Result<Vec<Kept>> {
        let keys = self.keys.iter().map(|k| evaluate(k, batch)).collect::<Result<Vec<_>>>()?;
        let mut best: HashMap<Vec<ScalarValue>, (u32, i64, i64)> = HashMap::new();
        for row in 0..batch.num_rows() {
            let key = keys.iter().map(|k| ScalarValue::try_from_array(k, row)).collect::<Result<Vec<_>>>()?;
            let t = times.value(row);
            match best.get_mut(&key) {
                Some((at, time, seen)) => {
                    *seen = (*seen).max(t);
                    if beats(self.keep, t, *time) {
                        (*at, *time) = (row as u32, t);
                    }
                }
                None => {
                    best.insert(key, (row as u32, t, t));
                }
            }
        }
        let mut kept = Vec::new();
        for (key, (row, time, seen)) in best {
            let replace = match self.held.get_mut(&key) {
                Some(h) => {
                    h.last_seen = h.last_seen.max(seen);
                    let replaces = beats(self.keep, time, h.time);
                    if replaces {
                        h.time = time;
                    }
                    replaces
                }
                None => {
                    self.held.insert(key.clone(), Held { time, last_seen: seen });
                    true
                }
            };
            self.oldest_seen = self.oldest_seen.min(seen);
            if replace {
                kept.push(Kept { row, key, time });
            }
        }
        kept.sort_by_key(|k| k.row);
        Ok(kept)
    }

    /// The window node's output for the kept rows of `batch`: the rows, each numbered 1.
    pub(crate) fn output(&self, batch: &RecordBatch, kept: &[Kept]) -> Result<RecordBatch> {
        let indices = UInt32Array::from_iter_values(kept.iter().map(|k| k.row));
        let mut columns = batch.columns().iter().map(|c| take(c, &indices, None)).collect::<Result<Vec<_>, _>>()?;
        columns.push(Arc::new(UInt64Array::from_value(1, kept.len())));
        super::steps::batch_of(&self.names, columns, kept.len())
    }

    /// Forgets the keys the watermark has left behind by more than the TTL.
    pub(crate) fn expire(&mut self, watermark: Option<i64>) {
        let Some(w) = watermark else { return };
        if self.oldest_seen.saturating_add(self.ttl_ms) > w {
            return;
        }
        let ttl = self.ttl_ms;
        self.held.retain(|_, h| h.last_seen.saturating_add(ttl) > w);
        self.oldest_seen = self.held.values().map(|h| h.last_seen).min().unwrap_or(i64::MAX);
    }

    pub(crate) fn snapshot(&self) -> Result<RecordBatch> {
        let mut fields =
            vec![Field::new("held_time", DataType::Int64, false), Field::new("last_seen", DataType::Int64, false)];
        for (i, ty) in self.key_types.iter().enumerate() {
            fields.push(Field::new(format!("key_{i}"), ty.clone(), true));
        }
        let rows: Vec<(&Vec<ScalarValue>, &Held)> = self.held.iter().collect();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|(_, h)| h.time))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|(_, h)| h.last_seen))),
        ];
        for (i, ty) in self.key_types.iter().enumerate() {
            columns.push(scalars_to_array(rows.iter().map(|(k, _)| k[i].clone()), ty, rows.len())?);
        }
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
    }

    pub(crate) fn restore(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_columns() != 2 + self.key_types.len() {
            return plan_err!(
                "the snapshot has {} columns where this query's state has {}",
                batch.num_columns(),
                2 + self.key_types.len()
            );
        }
        self.held.clear();
        let (times, seen) = (int64(batch.column(0))?, int64(batch.column(1))?);
        for row in 0..batch.num_rows() {
            let key = (0..self.key_types.len())
                .map(|i| ScalarValue::try_from_array(batch.column(2 + i), row))
                .collect::<Result<Vec<_>>>()?;
            self.held.insert(key, Held { time: times.value(row), last_seen: seen.value(row) });
        }
        self.oldest_seen = self.held.values().map(|h| h.last_seen).min().unwrap_or(i64::MAX);
        Ok(())
    }
}

/// Whether a row at `t` replaces the row held at `held`.
fn beats(keep: Keep, t: i64, held: i64) -> bool {
    match keep {
        Keep::First => t < held,
        Keep::Last => t >= held,
    }
}
