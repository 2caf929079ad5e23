//! Declaring a processor: its query planned by DataFusion against the team's streams, inside the
//! write's transaction, so a processor can only be stored if it would run on the streams and sink
//! as they are at that moment.

use super::GoalError;
use crate::lineage::{cycle_through, feeds_with, processor_label, Proposed};
use crate::model::INGEST_TIME_COLUMN;
use crate::model::*;
use crate::store::WriteTx;
use crate::validation::ValidationErrors;
use keystone_sql::schema::stream_table;
use keystone_sql::{Query, Shape};
use serde_json::Value;
use std::collections::BTreeMap;

/// What the planner makes of a processor's query on the team's streams: the query, or the
/// field errors (`sql` with line and column; `inputs.<stream>...`; `sink`).
pub async fn check_processor(
    tx: &mut WriteTx,
    team_id: &str,
    team_name: &str,
    name: &str,
    p: &ProcessorSpec,
) -> Result<Query, GoalError> {
    let mut e = ValidationErrors::default();
    let sink = tx.get(Kind::Sink, team_id, p.sink.as_str()).await?.and_then(|s| s.spec_as::<SinkSpec>().ok());
    if sink.is_none() {
        e.add("sink", format!("no sink named {:?} in team {team_name:?}", p.sink.as_str()));
    }
    let streams = team_streams(tx, team_name).await?;
    let query = match explain(&p.explain_request(), &streams) {
        Ok(q) => q,
        Err(mut errors) => {
            errors.0.extend(e.0);
            return Err(errors.into());
        }
    };
    if let (true, Some(sink)) = (query.shape.is_updating(), &sink) {
        // An insert-only table keeps a key's first row and drops its updates: wrong totals.
        if let Ok(SinkSettings::Postgres(pg)) = sink.typed() {
            if pg.mode != PostgresMode::Upsert {
                e.add(
                    "sink",
                    format!(
                        "this query updates each key's row as events arrive, but sink {:?} only inserts \
                         (a key's later rows would be dropped): set its setting mode to upsert",
                        p.sink.as_str()
                    ),
                );
            }
        }
    }
    if let Some(target) = sink.as_ref().and_then(SinkSpec::stream_target) {
        if let Ok(t) = StreamRef::parse(&target, team_name) {
            if t.team == team_name && query.inputs.contains(&t.stream) {
                e.add("sink", format!("delivers into stream {:?}, which this processor reads: a loop", t.stream));
            }
        }
    }
    if e.is_empty() {
        let change = Proposed::Processor { team: team_name, name, streams: &query.inputs, sink: p.sink.as_str() };
        let label = processor_label(team_name, name);
        if let Some(cycle) = cycle_through(&feeds_with(tx, &change).await?, &label) {
            e.add("sink", format!("would make events go round forever: {cycle}"));
        }
    }
    Ok(e.into_result(query)?)
}

/// The team's live streams, by name, with their JSON Schemas.
async fn team_streams(tx: &mut WriteTx, team_name: &str) -> Result<BTreeMap<String, Option<Value>>, GoalError> {
    Ok(tx
        .live(Kind::Stream)
        .await?
        .into_iter()
        .filter(|o| o.team == team_name)
        .map(|o| {
            let schema = o.spec_as::<StreamSpec>().ok().and_then(|s| s.schema);
            (o.name, schema)
        })
        .collect())
}

/// Plans a processor's query over `streams` and checks its inputs' settings against the plan:
/// pure, so the console's preview and the declaration share it.
pub fn explain(req: &ExplainRequest, streams: &BTreeMap<String, Option<Value>>) -> Result<Query, ValidationErrors> {
    let query = keystone_sql::plan(&req.sql, streams, req.state_ttl_s.is_some())
        .map_err(|err| ValidationErrors::single("sql", err.to_string()))?;
    let mut e = ValidationErrors::default();
    for stream in req.inputs.keys() {
        if !query.inputs.contains(stream) {
            e.add(format!("inputs.{stream}"), format!("the query does not read stream {stream:?}"));
        }
    }
    for stream in &query.inputs {
        let column = req.inputs.get(stream).map_or(INGEST_TIME_COLUMN, ProcessorInput::time_column);
        let table = stream_table(streams.get(stream).and_then(Option::as_ref));
        let is_time =
            table.field_with_name(column).is_ok_and(|f| f.data_type() == &keystone_sql::schema::timestamp_type());
        if !is_time {
            e.add(
                format!("inputs.{stream}.event_time"),
                format!(
                    "{column:?} is not a date-time field of stream {stream:?} (its schema needs \
                     {{\"type\": \"string\", \"format\": \"date-time\"}} there)"
                ),
            );
        }
        let named = match &query.shape {
            Shape::Windowed { time_column, .. } => Some(("windows", "are", "the window names", time_column)),
            Shape::Deduplicated { time_column, .. } => {
                Some(("deduplication", "is", "ROW_NUMBER() orders by", time_column))
            }
            _ => None,
        };
        if let Some((what, verb, names, time_column)) = named {
            if time_column != column && is_time {
                e.add(
                    "sql",
                    format!(
                        "{what} over stream {stream:?} {verb} measured in its event time {column:?} \
                         (inputs.{stream}.event_time), but {names} {time_column:?}"
                    ),
                );
            }
        }
    }
    e.into_result(query)
}

/// What a planned query looks like to its author: read streams, output columns and types, the
/// kind of job, and the plan's operators.
pub fn describe(q: &Query) -> ProcessorPlan {
    let mut keep = None;
    let (kind, window, keys) = match &q.shape {
        Shape::Stateless => ("stateless", None, Vec::new()),
        Shape::Windowed { window, time_column, keys } => {
            let w = match window {
                keystone_sql::Window::Tumble { size_ms } => format!("tumbling {} on {time_column}", span(*size_ms)),
                keystone_sql::Window::Hop { slide_ms, size_ms } => {
                    format!("hopping {} every {} on {time_column}", span(*size_ms), span(*slide_ms))
                }
                keystone_sql::Window::Session { gap_ms } => format!("session, gap {} on {time_column}", span(*gap_ms)),
            };
            ("windowed", Some(w), keys.clone())
        }
        Shape::Updating { keys } => ("updating", None, keys.clone()),
        Shape::Deduplicated { keys, time_column, keep: which } => {
            let which = match which {
                keystone_sql::Keep::First => "first",
                keystone_sql::Keep::Last => "last",
            };
            keep = Some(format!("{which} by {time_column}"));
            ("deduplicated", None, keys.clone())
        }
    };
    ProcessorPlan {
        inputs: q.inputs.clone(),
        output: q
            .output
            .iter()
            .map(|c| OutputColumn { name: c.name.clone(), type_name: c.type_name.clone(), nullable: c.nullable })
            .collect(),
        kind: kind.to_owned(),
        window,
        keys,
        keep,
        operators: q.operators.clone(),
    }
}

/// `90000` -> `1m30s`.
fn span(ms: i64) -> String {
    let mut out = String::new();
    let mut rest = ms;
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if out.is_empty() {
        "0s".into()
    } else {
        out
    }
}

impl super::Goal<'_> {
    /// Plans `req` on `team`'s streams for its author (the console's editor and `processor-plan`),
    /// saving nothing.
    pub async fn explain_processor(&self, team: &str, req: &ExplainRequest) -> Result<ProcessorPlan, GoalError> {
        let team_id = self.readable_team(team).await?;
        let (query, _) = self.plan_on_team(&team_id, req).await?;
        Ok(describe(&query))
    }

    /// What a processor preview runs: `req` planned on `team`'s streams, the team's streams (by
    /// name, with their schemas) and the stream it reads. Editors only: a preview runs the
    /// caller's query on the server, as a route preview runs its filter.
    pub async fn processor_preview_target(
        &self,
        team: &str,
        req: &ExplainRequest,
    ) -> Result<(Query, BTreeMap<String, Option<Value>>, Object), GoalError> {
        let team_id = self.readable_team(team).await?;
        if !self.who().can_write(Kind::Processor, &team_id) {
            return Err(GoalError::Forbidden);
        }
        let (query, streams) = self.plan_on_team(&team_id, req).await?;
        let [input] = query.inputs.as_slice() else {
            return Err(ValidationErrors::single("sql", "a processor reads one stream for now").into());
        };
        let stream =
            self.store().get(Kind::Stream, &team_id, input).await?.ok_or_else(|| {
                GoalError::from(ValidationErrors::single("sql", format!("no stream named {input:?}")))
            })?;
        Ok((query, streams, stream))
    }

    async fn plan_on_team(
        &self,
        team_id: &str,
        req: &ExplainRequest,
    ) -> Result<(Query, BTreeMap<String, Option<Value>>), GoalError> {
        let scope = crate::store::Scope::Teams(vec![team_id.to_owned()]);
        let streams: BTreeMap<String, Option<Value>> = self
            .store()
            .list(Kind::Stream, &scope)
            .await?
            .into_iter()
            .map(|o| {
                let schema = o.spec_as::<StreamSpec>().ok().and_then(|s| s.schema);
                (o.name, schema)
            })
            .collect();
        Ok((explain(req, &streams)?, streams))
    }
}

/// The streams a query names, in order (empty when it does not parse): which stream a form's
/// time settings belong to.
pub fn processor_streams(sql: &str) -> Vec<String> {
    keystone_sql::read_streams(sql).unwrap_or_default()
}

/// The team's processors delivering to sink `sink` whose results update rows (updating GROUP BY,
/// deduplication): what a sink must keep upserting for.
pub async fn updating_users(tx: &mut WriteTx, team_name: &str, sink: &str) -> Result<Vec<String>, GoalError> {
    // One read of the processors; the streams only when one of them uses this sink.
    let users: Vec<(String, ProcessorSpec)> = tx
        .live(Kind::Processor)
        .await?
        .into_iter()
        .filter(|o| o.team == team_name)
        .filter_map(|o| Some((o.name.clone(), o.spec_as::<ProcessorSpec>().ok()?)))
        .filter(|(_, spec)| spec.sink.as_str() == sink)
        .collect();
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let streams = team_streams(tx, team_name).await?;
    Ok(users
        .into_iter()
        .filter(|(_, spec)| {
            let planned = keystone_sql::plan(&spec.sql, &streams, spec.state_ttl_s.is_some());
            planned.is_ok_and(|q| q.shape.is_updating())
        })
        .map(|(name, _)| name)
        .collect())
}

/// The team's processors that read stream `name` (kind stream) or deliver to sink `name` (kind
/// sink): what a delete of that stream or sink would break.
pub async fn processors_using(
    tx: &mut WriteTx,
    team_name: &str,
    kind: Kind,
    name: &str,
) -> Result<Vec<String>, GoalError> {
    let mut users = Vec::new();
    for o in tx.live(Kind::Processor).await?.into_iter().filter(|o| o.team == team_name) {
        let Ok(spec) = o.spec_as::<ProcessorSpec>() else { continue };
        let uses = match kind {
            Kind::Sink => spec.sink.as_str() == name,
            _ => processor_streams(&spec.sql).iter().any(|s| s == name),
        };
        if uses {
            users.push(o.name);
        }
    }
    Ok(users)
}
