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

mod decode;
mod steps;
mod watermark;
mod window;

pub use decode::{Decoder, InputEvent};
pub use watermark::Watermarks;

use crate::plan::{Query, Shape};
use crate::schema::stream_table;
use crate::SqlError;
use datafusion_common::arrow::array::BooleanArray;
use datafusion_common::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion_common::arrow::compute::filter_record_batch;
use datafusion_common::arrow::ipc::reader::StreamReader;
use datafusion_common::arrow::ipc::writer::StreamWriter;
use datafusion_common::arrow::json::writer::{LineDelimited, WriterBuilder};
use datafusion_common::{DataFusionError, Result};
use datafusion_expr::LogicalPlan;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use steps::{physical, Step};
use window::WindowAggregate;

/// How a processor reads its input.
#[derive(Debug, Clone)]
pub struct Settings {
    pub partitions: u32,
    pub lateness_ms: i64,
    /// A partition without events this long stops holding the watermark back.
    pub idle_timeout_ms: i64,
    /// Prefix of result ids: the processor's identity (and version), so two processors, or two
    /// incompatible versions, never write the same ids.
    pub result_prefix: String,
}

/// One result row for the sink.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    /// Deterministic: the event's id (stateless) or a digest of prefix, window and key.
    pub id: String,
    /// The group key as a JSON array (windowed results).
    pub key: Option<String>,
    /// The row as a JSON object, one field per output column.
    pub json: String,
    /// The window's end (windowed) or the event's ingest time (stateless), ms since the epoch.
    pub time_ms: i64,
}

/// What one call made of its events.
#[derive(Debug, Default)]
pub struct Processed {
    pub results: Vec<ResultRow>,
    /// Events (by index) whose every window had closed: for the dead-letter queue, reason `late`.
    pub late: Vec<usize>,
    /// Events (by index) that do not fit the stream's table, with why.
    pub invalid: Vec<(usize, String)>,
}

pub struct Pipeline {
    decoder: Decoder,
    pre: Vec<Step>,
    aggregate: Option<WindowAggregate>,
    post: Vec<Step>,
    output_names: Vec<String>,
    /// The event-time column's index in the input table (windowed queries).
    time_index: Option<usize>,
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
                    let Shape::Windowed { window, .. } = &query.shape else {
                        return Err(SqlError::new(
                            "a GROUP BY without a window does not run yet (updating results come next)",
                        ));
                    };
                    aggregate = Some(WindowAggregate::compile(a, *window, settings.lateness_ms).map_err(internal)?);
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
        let time_index = match &query.shape {
            Shape::Windowed { time_column, .. } => {
                Some(table.index_of(time_column).map_err(|e| SqlError::new(e.to_string()))?)
            }
            _ => None,
        };
        let output_names = query.output.iter().map(|c| c.name.clone()).collect();
        Ok(Pipeline {
            decoder: Decoder::new(table),
            pre,
            aggregate,
            post,
            output_names,
            time_index,
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

    /// Open windows (panes) held in state.
    pub fn open_windows(&self) -> usize {
        self.aggregate.as_ref().map_or(0, WindowAggregate::pane_count)
    }

    /// Runs a batch of one partition's events, in offset order.
    pub fn process(&mut self, partition: u32, events: &[InputEvent<'_>], now_ms: i64) -> Result<Processed, SqlError> {
        let (batch, invalid) = self.decoder.decode(events);
        // Indices of the decoded rows among `events` (invalid ones are missing).
        let decoded: Vec<usize> = (0..events.len()).filter(|i| !invalid.iter().any(|(b, _)| b == i)).collect();
        let mut out = Processed { invalid, ..Processed::default() };
        let Some(time_index) = self.time_index else {
            let ids = batch.column(0).clone();
            let times: Vec<i64> = decoded.iter().map(|&i| events[i].ingested_at).collect();
            out.results = self.stateless(batch, ids, &times).map_err(internal)?;
            return Ok(out);
        };
        let times = window::millis(batch.column(time_index)).map_err(internal)?;
        let watermark = self.watermarks.current(now_ms);
        let aggregate = self.aggregate.as_mut().expect("a windowed pipeline has an aggregate");
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|r| Some(times.is_null(r) || !aggregate.is_late(times.value(r), watermark)))
            .collect();
        out.late = keep.iter().zip(&decoded).filter(|(k, _)| *k == Some(false)).map(|(_, &i)| i).collect();
        let batch = filter_record_batch(&batch, &keep).map_err(|e| internal(e.into()))?;
        let (batch, _) = steps::run_tracked(&self.pre, batch).map_err(internal)?;
        aggregate.update(&batch, watermark).map_err(internal)?;
        if let Some(max) = (0..times.len()).filter(|&r| !times.is_null(r)).map(|r| times.value(r)).max() {
            self.watermarks.observe(partition, max, now_ms);
        }
        out.results = self.fire(now_ms).map_err(internal)?;
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
        let watermark = self.watermarks.current(now_ms);
        let Some(aggregate) = self.aggregate.as_mut() else { return Ok(Vec::new()) };
        let Some((batch, closed)) = aggregate.close(watermark)? else { return Ok(Vec::new()) };
        // A HAVING filter above the aggregate may drop panes: each row finds its pane by position.
        let (batch, positions) = steps::run_tracked(&self.post, batch)?;
        let json = self.json_lines(&batch)?;
        Ok(json
            .into_iter()
            .enumerate()
            .map(|(r, json)| {
                let pane = &closed[positions.value(r) as usize];
                let key: Vec<String> = pane.key.iter().map(ToString::to_string).collect();
                let key = serde_json::to_string(&key).expect("strings serialise");
                let digest = Sha256::digest(format!("{}\n{}\n{}\n{key}", self.prefix, pane.start, pane.end));
                let id = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
                ResultRow { id, key: Some(key), json, time_ms: pane.end }
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
        let Some(aggregate) = self.aggregate.as_mut() else { return Ok(Vec::new()) };
        let batch = aggregate.snapshot().map_err(internal)?;
        let mut metadata = batch.schema().metadata().clone();
        metadata.insert("keystone.watermarks".into(), self.watermarks.to_json());
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
        let watermarks = reader.schema().metadata().get("keystone.watermarks").cloned().unwrap_or_default();
        let batch = match reader.next() {
            Some(b) => b.map_err(|e| internal(e.into()))?,
            None => return Err(SqlError::new("the snapshot holds no state batch")),
        };
        aggregate.restore(&batch).map_err(internal)?;
        self.watermarks.restore(&watermarks, now_ms).map_err(SqlError::new)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
