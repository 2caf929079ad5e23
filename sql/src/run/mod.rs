//! A planned query made runnable: Keystone's streaming operators over DataFusion's expressions
//! and accumulators. Pure (no I/O, time passed in), so every guarantee is tested here without a
//! log or a sink; the engine's processor job feeds it events and delivers what it returns.
//!
//! - Stateless queries: each batch of events through the filters and projections; a result
//!   keeps its event's id, so a replay after a crash rewrites the same results.
//! - Windowed queries: the steps below the aggregate, then the window operator; a window's
//!   results are emitted once the watermark (the lowest, over the input's partitions that are not
//!   idle, of the highest event time each has seen) passes the window's end plus the allowed
//!   lateness. Events whose every window is already closed are late: returned, not counted.
//!   Results carry ids derived from the processor, the window and the key.
//! - Updating queries (GROUP BY without a window): after each batch, the changed groups' rows,
//!   each with an id derived from the processor and the key (so a sink upserting by id keeps the
//!   latest); groups unseen for the state TTL, in event time, are forgotten.
//! - Deduplication (ROW_NUMBER() ... rn = 1): a key's kept row when it is new or beaten, with
//!   an id derived from the processor and the key.
//! - Events without an event time cannot be placed in time: returned as invalid, with why.

mod decode;
mod dedupe;
mod grouping;
mod steps;
mod updating;
mod watermark;
mod window;

pub use decode::{Decoder, InputEvent};
pub use watermark::Watermarks;

use crate::plan::{Query, Shape};
use crate::schema::stream_table;
use crate::SqlError;
use datafusion_common::arrow::array::BooleanArray;
use datafusion_common::arrow::array::{Array, ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion_common::arrow::compute::{filter, filter_record_batch, take};
use datafusion_common::arrow::ipc::reader::StreamReader;
use datafusion_common::arrow::ipc::writer::StreamWriter;
use datafusion_common::arrow::json::writer::{LineDelimited, WriterBuilder};
use datafusion_common::{DataFusionError, Result};
use datafusion_expr::LogicalPlan;
use dedupe::Deduplicate;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use steps::{physical, Step};
use updating::KeyedAggregate;
use window::WindowAggregate;

/// How a processor reads its input.
#[derive(Debug, Clone)]
pub struct Settings {
    pub partitions: u32,
    pub lateness_ms: i64,
    /// A partition without events this long stops holding the watermark back.
    pub idle_timeout_ms: i64,
    /// The input's event-time column: what the watermark follows (a windowed query's window
    /// names it too).
    pub event_time: String,
    /// How long a group of a GROUP BY without a window is remembered after its last event, in
    /// event time.
    pub state_ttl_ms: Option<i64>,
    /// Prefix of result ids: the processor's identity (and version), so two processors, or two
    /// incompatible versions, never write the same ids.
    pub result_prefix: String,
}

/// One result row for the sink.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    /// Deterministic: the event's id (stateless) or a digest of prefix, window and key.
    pub id: String,
    /// The group key as a JSON array (windowed and updating results).
    pub key: Option<String>,
    /// The row as a JSON object, one field per output column.
    pub json: String,
    /// The window's end (windowed), the group's latest event time (updating) or the event's
    /// ingest time (stateless), ms since the epoch.
    pub time_ms: i64,
}

/// What one call made of its events.
#[derive(Debug, Default)]
pub struct Processed {
    pub results: Vec<ResultRow>,
    /// Events (by index) whose every window had closed (or, updating, older than the state
    /// TTL behind the watermark): for the dead-letter queue, reason `late`.
    pub late: Vec<usize>,
    /// Events (by index) that do not fit the stream's table or have no event time, with why.
    pub invalid: Vec<(usize, String)>,
}

/// The stateful operator of a query, if any.
enum Operator {
    Window(WindowAggregate),
    Keyed(KeyedAggregate),
    Dedupe(Deduplicate),
}

impl Operator {
    fn is_late(&self, ts: i64, watermark: Option<i64>) -> bool {
        match self {
            Operator::Window(w) => w.is_late(ts, watermark),
            Operator::Keyed(k) => k.is_late(ts, watermark),
            Operator::Dedupe(d) => d.is_late(ts, watermark),
        }
    }
}

/// What makes a result's id (with the processor's prefix), its key as JSON, and its time.
type Identity = (String, String, i64);

pub struct Pipeline {
    decoder: Decoder,
    pre: Vec<Step>,
    aggregate: Option<Operator>,
    post: Vec<Step>,
    output_names: Vec<String>,
    /// The event-time column's name and index in the input table (stateful queries).
    time: Option<(String, usize)>,
    watermarks: Watermarks,
    prefix: String,
}

fn internal(e: DataFusionError) -> SqlError {
    SqlError::from(e)
}

impl Pipeline {
    /// Compiles a planned query over its (single) input stream.
    pub fn new(
        query: &Query,
        streams: &BTreeMap<String, Option<Value>>,
        settings: Settings,
    ) -> Result<Pipeline, SqlError> {
        let [input] = query.inputs.as_slice() else {
            return Err(SqlError::new("a processor reads one stream for now"));
        };
        let table = Arc::new(stream_table(streams.get(input).and_then(Option::as_ref)));
        // The plan as a chain from the scan up: every node here has one input.
        let mut chain = Vec::new();
        let mut node = &query.plan;
        loop {
            chain.push(node);
            match node.inputs().as_slice() {
                [] => break,
                [one] => node = one,
                _ => return Err(SqlError::new("a plan node with several inputs is not supported yet")),
            }
        }
        chain.reverse();
        let (mut pre, mut post, mut aggregate) = (Vec::new(), Vec::new(), None);
        for node in chain {
            let step = match node {
                LogicalPlan::TableScan(_) | LogicalPlan::SubqueryAlias(_) => None,
                LogicalPlan::Filter(f) => {
                    Some(Step::Filter(physical(&f.predicate, f.input.schema()).map_err(internal)?))
                }
                LogicalPlan::Projection(p) => {
                    let exprs = p.expr.iter().map(|e| physical(e, p.input.schema())).collect::<Result<Vec<_>>>();
                    let names = p.schema.fields().iter().map(|f| f.name().clone()).collect();
                    Some(Step::Project { exprs: exprs.map_err(internal)?, names })
                }
                LogicalPlan::Aggregate(a) => {
                    let operator = match (&query.shape, settings.state_ttl_ms) {
                        (Shape::Windowed { window, .. }, _) => Operator::Window(
                            WindowAggregate::compile(a, *window, settings.lateness_ms).map_err(internal)?,
                        ),
                        (Shape::Updating { .. }, Some(ttl)) => {
                            Operator::Keyed(KeyedAggregate::compile(a, ttl, settings.lateness_ms).map_err(internal)?)
                        }
                        _ => return Err(SqlError::new("a GROUP BY without a window needs a state TTL")),
                    };
                    aggregate = Some(operator);
                    None
                }
                LogicalPlan::Window(w) => {
                    let (Shape::Deduplicated { keep, .. }, Some(ttl)) = (&query.shape, settings.state_ttl_ms) else {
                        return Err(SqlError::new("OVER (...) runs only as deduplication, with a state TTL"));
                    };
                    aggregate = Some(Operator::Dedupe(
                        Deduplicate::compile(w, *keep, ttl, settings.lateness_ms).map_err(internal)?,
                    ));
                    None
                }
                other => return Err(SqlError::new(format!("{} does not run yet", other.display()))),
            };
            if let Some(step) = step {
                if aggregate.is_some() {
                    post.push(step);
                } else {
                    pre.push(step);
                }
            }
        }
        let time = match aggregate {
            Some(_) => {
                let at = table.index_of(&settings.event_time).map_err(|e| SqlError::new(e.to_string()))?;
                Some((settings.event_time.clone(), at))
            }
            None => None,
        };
        let output_names = query.output.iter().map(|c| c.name.clone()).collect();
        Ok(Pipeline {
            decoder: Decoder::new(table),
            pre,
            aggregate,
            post,
            output_names,
            time,
            watermarks: Watermarks::new(settings.partitions, settings.idle_timeout_ms),
            prefix: settings.result_prefix,
        })
    }

    /// Whether results are emitted per event (no window).
    pub fn is_stateless(&self) -> bool {
        self.aggregate.is_none()
    }

    /// The current watermark (ms since the epoch), once every partition that is not idle has
    /// spoken.
    pub fn watermark(&self, now_ms: i64) -> Option<i64> {
        self.watermarks.current(now_ms)
    }

    /// Rows held in state: open windows (panes) of each key, or groups.
    pub fn state_rows(&self) -> usize {
        match &self.aggregate {
            None => 0,
            Some(Operator::Window(w)) => w.pane_count(),
            Some(Operator::Keyed(k)) => k.group_count(),
            Some(Operator::Dedupe(d)) => d.key_count(),
        }
    }

    /// Runs a batch of one partition's events, in offset order.
    pub fn process(&mut self, partition: u32, events: &[InputEvent<'_>], now_ms: i64) -> Result<Processed, SqlError> {
        let (batch, invalid) = self.decoder.decode(events);
        // Indices of the decoded rows among `events` (invalid ones are missing).
        let decoded: Vec<usize> = (0..events.len()).filter(|i| !invalid.iter().any(|(b, _)| b == i)).collect();
        let mut out = Processed { invalid, ..Processed::default() };
        let Some((time_column, time_index)) = &self.time else {
            let ids = batch.column(0).clone();
            let times: Vec<i64> = decoded.iter().map(|&i| events[i].ingested_at).collect();
            out.results = self.stateless(batch, ids, &times).map_err(internal)?;
            return Ok(out);
        };
        let times = window::millis(batch.column(*time_index)).map_err(internal)?;
        let watermark = self.watermarks.current(now_ms);
        let aggregate = self.aggregate.as_mut().expect("a stateful pipeline has an operator");
        let mut keep = Vec::with_capacity(batch.num_rows());
        for (r, &event) in decoded.iter().enumerate() {
            let kept = if times.is_null(r) {
                out.invalid.push((event, format!("has no event time: {time_column:?} is missing or null")));
                false
            } else if aggregate.is_late(times.value(r), watermark) {
                out.late.push(event);
                false
            } else {
                true
            };
            keep.push(kept);
        }
        out.invalid.sort_by_key(|(i, _)| *i);
        let keep = BooleanArray::from(keep);
        let batch = filter_record_batch(&batch, &keep).map_err(|e| internal(e.into()))?;
        let times = filter(&times, &keep).map_err(|e| internal(e.into()))?;
        let times = times.as_any().downcast_ref::<TimestampMillisecondArray>().cloned().expect("times stay times");
        let (batch, positions) = steps::run_tracked(&self.pre, batch).map_err(internal)?;
        let max = times.iter().flatten().max();
        // The event times of the rows the steps kept.
        let times = take(&times, &positions, None).map_err(|e| internal(e.into()))?;
        let times = times.as_any().downcast_ref::<TimestampMillisecondArray>().expect("times stay times");
        let mut kept = None;
        match aggregate {
            Operator::Window(w) => w.update(&batch, watermark).map_err(internal)?,
            Operator::Keyed(k) => k.update(&batch, times).map_err(internal)?,
            Operator::Dedupe(d) => {
                let rows = d.update(&batch, times).map_err(internal)?;
                let output = d.output(&batch, &rows).map_err(internal)?;
                let ids = rows.into_iter().map(|k| keyed_identity("row", &k.key, k.time)).collect();
                kept = Some((output, ids));
            }
        }
        if let Some(max) = max {
            self.watermarks.observe(partition, max, now_ms);
        }
        if let Some((batch, ids)) = kept {
            out.results = self.results_of(batch, ids).map_err(internal)?;
        }
        out.results.extend(self.fire(now_ms).map_err(internal)?);
        Ok(out)
    }

    /// Closes the windows the watermark has passed (call it now and then: an idle partition
    /// moves the watermark without any event).
    pub fn tick(&mut self, now_ms: i64) -> Result<Vec<ResultRow>, SqlError> {
        self.fire(now_ms).map_err(internal)
    }

    fn stateless(&self, batch: RecordBatch, ids: ArrayRef, times: &[i64]) -> Result<Vec<ResultRow>> {
        let (batch, positions) = steps::run_tracked(&self.pre, batch)?;
        let ids = ids.as_any().downcast_ref::<StringArray>().cloned().expect("ids are strings");
        let json = self.json_lines(&batch)?;
        Ok(json
            .into_iter()
            .enumerate()
            .map(|(r, json)| {
                let at = positions.value(r) as usize;
                ResultRow { id: ids.value(at).to_owned(), key: None, json, time_ms: times[at] }
            })
            .collect())
    }

    fn fire(&mut self, now_ms: i64) -> Result<Vec<ResultRow>> {
        self.fire_at(self.watermarks.current(now_ms))
    }

    /// Ends a bounded run (a preview): every open window closes, as if the watermark had passed
    /// them all.
    pub fn drain(&mut self) -> Result<Vec<ResultRow>, SqlError> {
        self.fire_at(Some(i64::MAX)).map_err(internal)
    }

    fn fire_at(&mut self, watermark: Option<i64>) -> Result<Vec<ResultRow>> {
        let (batch, identities): (RecordBatch, Vec<Identity>) = match self.aggregate.as_mut() {
            None => return Ok(Vec::new()),
            Some(Operator::Window(w)) => {
                let Some((batch, closed)) = w.close(watermark)? else { return Ok(Vec::new()) };
                let ids = closed
                    .into_iter()
                    .map(|pane| {
                        let key = key_json(&pane.key);
                        (format!("{}\n{}\n{key}", pane.start, pane.end), key, pane.end)
                    })
                    .collect();
                (batch, ids)
            }
            Some(Operator::Keyed(k)) => {
                let emitted = k.emit()?;
                k.expire(watermark);
                let Some((batch, updated)) = emitted else { return Ok(Vec::new()) };
                let ids = updated.into_iter().map(|g| keyed_identity("group", &g.key, g.last_seen)).collect();
                (batch, ids)
            }
            Some(Operator::Dedupe(d)) => {
                d.expire(watermark);
                return Ok(Vec::new());
            }
        };
        self.results_of(batch, identities)
    }

    /// The stateful operator's output rows through the steps above it, as results.
    fn results_of(&self, batch: RecordBatch, identities: Vec<Identity>) -> Result<Vec<ResultRow>> {
        // A HAVING filter above a window's aggregate may drop panes: each row finds its pane by
        // position.
        let (batch, positions) = steps::run_tracked(&self.post, batch)?;
        let json = self.json_lines(&batch)?;
        Ok(json
            .into_iter()
            .enumerate()
            .map(|(r, json)| {
                let (identity, key, time_ms) = &identities[positions.value(r) as usize];
                let digest = Sha256::digest(format!("{}\n{identity}", self.prefix));
                let id = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
                ResultRow { id, key: Some(key.clone()), json, time_ms: *time_ms }
            })
            .collect())
    }

    /// The rows of `batch` as JSON objects named after the query's output columns.
    fn json_lines(&self, batch: &RecordBatch) -> Result<Vec<String>> {
        let batch = steps::batch_of(&self.output_names, batch.columns().to_vec(), batch.num_rows())?;
        let mut buf = Vec::new();
        let mut writer = WriterBuilder::new().with_explicit_nulls(true).build::<_, LineDelimited>(&mut buf);
        writer.write(&batch)?;
        writer.finish()?;
        drop(writer);
        let text = String::from_utf8(buf).map_err(|e| DataFusionError::Internal(e.to_string()))?;
        Ok(text.lines().map(str::to_owned).collect())
    }

    /// The operator's state (open windows and watermarks) as Arrow IPC bytes: what a checkpoint
    /// stores beside the input positions it belongs to.
    pub fn snapshot(&mut self) -> Result<Vec<u8>, SqlError> {
        let (batch, operator) = match self.aggregate.as_mut() {
            None => return Ok(Vec::new()),
            Some(Operator::Window(w)) => (w.snapshot().map_err(internal)?, "window"),
            Some(Operator::Keyed(k)) => (k.snapshot().map_err(internal)?, "updating"),
            Some(Operator::Dedupe(d)) => (d.snapshot().map_err(internal)?, "dedupe"),
        };
        let mut metadata = batch.schema().metadata().clone();
        metadata.insert("keystone.watermarks".into(), self.watermarks.to_json());
        metadata.insert("keystone.operator".into(), operator.into());
        let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(metadata));
        let batch = batch.with_schema(schema.clone()).map_err(|e| internal(e.into()))?;
        let mut buf = Vec::new();
        let mut writer = StreamWriter::try_new(&mut buf, &schema).map_err(|e| internal(e.into()))?;
        writer.write(&batch).map_err(|e| internal(e.into()))?;
        writer.finish().map_err(|e| internal(e.into()))?;
        drop(writer);
        Ok(buf)
    }

    /// Restores what [`Pipeline::snapshot`] wrote (by this query).
    pub fn restore(&mut self, bytes: &[u8], now_ms: i64) -> Result<(), SqlError> {
        let Some(aggregate) = self.aggregate.as_mut() else { return Ok(()) };
        if bytes.is_empty() {
            return Ok(());
        }
        let mut reader = StreamReader::try_new(bytes, None).map_err(|e| internal(e.into()))?;
        let metadata = reader.schema().metadata().clone();
        let watermarks = metadata.get("keystone.watermarks").cloned().unwrap_or_default();
        let batch = match reader.next() {
            Some(b) => b.map_err(|e| internal(e.into()))?,
            None => return Err(SqlError::new("the snapshot holds no state batch")),
        };
        // Snapshots written before updating queries existed name no operator: windows.
        let operator = metadata.get("keystone.operator").map_or("window", String::as_str);
        match (aggregate, operator) {
            (Operator::Window(w), "window") => w.restore(&batch).map_err(internal)?,
            (Operator::Keyed(k), "updating") => k.restore(&batch).map_err(internal)?,
            (Operator::Dedupe(d), "dedupe") => d.restore(&batch).map_err(internal)?,
            (_, other) => return Err(SqlError::new(format!("the snapshot holds the state of a {other} operator"))),
        }
        self.watermarks.restore(&watermarks, now_ms).map_err(SqlError::new)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;

/// The identity of a result that one key keeps replacing (updating or deduplicated): its id
/// depends on the kind of result and the key only.
fn keyed_identity(kind: &str, key: &[datafusion_common::ScalarValue], time_ms: i64) -> Identity {
    let key = key_json(key);
    (format!("{kind}\n{key}"), key, time_ms)
}

/// A group key as a JSON array of its values' text.
fn key_json(key: &[datafusion_common::ScalarValue]) -> String {
    let key: Vec<String> = key.iter().map(ToString::to_string).collect();
    serde_json::to_string(&key).expect("strings serialise")
}
