//! The backfill use cases: plan one (who may, from which source, up to where), start it (or
//! hold it for an approval), and cancel it. The model is `crate::backfill`, its rows are kept
//! by `store::backfills`.

use crate::approvals::{backfill_needs, RequestAction};
use crate::backfill::*;
use crate::diff::Change;
use crate::goal::{Goal, GoalError, HeldOperation};
use crate::model::{
    BucketSettings, FileSettings, Kind, Object, RouteSpec, SinkSettings, SinkSpec, StreamRef, StreamSpec,
};
use crate::store::approvals::StoredRequest;
use crate::store::backfills::NewBackfill;
use crate::store::{StoreError, WriteTx};
use crate::ValidationErrors;
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("backfill: {e}"))
}

/// What starting a backfill needs from the log, resolved by the caller (the API or the
/// console): a stream's topic, or the folder of files to import.
pub struct BackfillPlan {
    pub route: Object,
    pub id: String,
    pub source: BackfillSource,
    /// The topic to read: the stream's, or the scratch topic to import files into.
    pub topic: String,
    /// The stream's partitions (1 for imported files).
    pub partitions: u32,
    /// For files: where they are.
    pub files: Option<BackfillFiles>,
}

/// The files a backfill imports: a folder (`path`, a key prefix in a bucket) in the store of
/// the file sink that wrote them (its settings and secrets; the secrets never leave the
/// server).
pub struct BackfillFiles {
    pub path: String,
    /// The team whose sink wrote them (the route's own).
    pub team: String,
    /// The bucket they are in; `None`: the team's folder of the data directory.
    pub bucket: Option<BucketSettings>,
    pub secrets: BTreeMap<String, String>,
}

impl Goal<'_> {
    /// Checks a backfill of a route may start (write access; the route has none running; the
    /// source exists and the caller may read it) and says what to read.
    pub async fn plan_backfill(
        &self,
        team: &str,
        name: &str,
        source: BackfillSource,
    ) -> Result<BackfillPlan, GoalError> {
        let route = self.operable_route(team, name).await?;
        if self.store().backfills(&route.id).await?.iter().any(|b| b.state == BackfillState::Running) {
            return Err(GoalError::Conflict(format!(
                "route {name:?} is already backfilling; cancel that backfill or wait for it to end"
            )));
        }
        let id = crate::store::new_id();
        let (topic, partitions, files) = match &source {
            BackfillSource::Stream { stream } => {
                let r = StreamRef::parse(stream, team).map_err(|m| ValidationErrors::single("stream", m))?;
                let missing = || ValidationErrors::single("stream", format!("no stream named {stream:?}"));
                let object = self.get(Kind::Stream, &r.team, &r.stream).await.map_err(|_| missing())?;
                let spec: StreamSpec = object.spec_as().map_err(|e| StoreError::Corrupt(e.to_string()))?;
                (object.stream_topic(), spec.partitions, None)
            }
            BackfillSource::Files { path, sink } => {
                if !crate::model::is_relative_path(path) {
                    return Err(ValidationErrors::single(
                        "path",
                        "must be a file sink's relative path, without '..' or empty segments",
                    )
                    .into());
                }
                // Only the output of a file sink of the route's own team: its files are the
                // team's, and another team's path answers exactly as a missing one does.
                let named = |o: &Object| {
                    o.team == route.team
                        && sink.as_ref().is_none_or(|n| {
                            StreamRef::parse(n, team).is_ok_and(|r| r.team == o.team && r.stream == o.name)
                        })
                };
                let candidates: Vec<(Object, FileSettings)> = self
                    .list(Kind::Sink)
                    .await?
                    .into_iter()
                    .filter(|o| named(o))
                    .filter_map(|o| match o.spec_as::<SinkSpec>().ok()?.typed().ok()? {
                        SinkSettings::File(f) => Some((o, f)),
                        _ => None,
                    })
                    .filter(|(_, f)| {
                        path == &f.path || path.strip_prefix(f.path.as_str()).is_some_and(|rest| rest.starts_with('/'))
                    })
                    .collect();
                fn store_of(f: &FileSettings) -> Option<(&str, Option<&str>)> {
                    f.bucket.as_ref().map(|b| (b.url.as_str(), b.endpoint.as_deref()))
                }
                let Some((sink_object, sink_spec)) = candidates.first() else {
                    let field = if sink.is_some() { "sink" } else { "path" };
                    return Err(ValidationErrors::single(
                        field,
                        format!("{path:?} is not the folder of a file sink of team {:?}", route.team),
                    )
                    .into());
                };
                if candidates.iter().any(|(_, spec)| store_of(spec) != store_of(sink_spec)) {
                    return Err(ValidationErrors::single(
                        "sink",
                        format!("file sinks in different stores write under {path:?}: name the sink to read"),
                    )
                    .into());
                }
                let secrets = if sink_spec.bucket.is_some() {
                    self.store().sink_secrets(&sink_object.id).await?.into_iter().collect()
                } else {
                    BTreeMap::new()
                };
                let files = BackfillFiles {
                    path: path.clone(),
                    team: sink_object.team.clone(),
                    bucket: sink_spec.bucket.clone(),
                    secrets,
                };
                (import_topic(team, name, &id), 1, Some(files))
            }
        };
        Ok(BackfillPlan { route, id, source, topic, partitions, files })
    }

    /// Records a planned backfill with where its source ends now (the reconciler switches the
    /// job over on its next pass), in the operations log too. One the approval policy holds
    /// back (too many events, a route to a production sink) becomes a change request instead
    /// (`ApprovalRequired`), carrying the end found now: an approval delivers what was asked.
    pub async fn start_backfill(&self, plan: BackfillPlan, end: &[(u32, u64)]) -> Result<Backfill, GoalError> {
        let total: u64 = end.iter().map(|(_, o)| o).sum();
        let mut tx = self.store().write().await?;
        let needs = self.operation_needs(&mut tx, &plan.route, |p| backfill_needs(p, total)).await?;
        if !needs.is_empty() {
            let described = plan.source.describe();
            let declaration = json!({
                "id": plan.id, "source": plan.source, "topic": plan.topic,
                "partitions": plan.partitions, "end": end,
            });
            let shown = json!({ "backfill": described, "events": total });
            let spec: RouteSpec = plan.route.spec_as().map_err(corrupt)?;
            let changes = [Change {
                path: "source".into(),
                before: Some(Value::from(format!("stream {}", spec.stream.as_str()))),
                after: Some(Value::from(format!("{described}, up to {total} event(s), then back"))),
            }];
            let held = HeldOperation {
                action: RequestAction::Backfill,
                declaration: &declaration,
                shown: &shown,
                changes: &changes,
                needs: &needs,
                reason: &format!("backfill from {described}"),
            };
            return Err(self.hold_back_operation(tx, &plan.route, held).await?);
        }
        self.insert_backfill(&mut tx, &plan, end, &self.who().display, "").await?;
        tx.commit().await?;
        let started = self.store().backfills(&plan.route.id).await?.into_iter().find(|b| b.id == plan.id);
        Ok(started.ok_or_else(|| StoreError::Corrupt("a backfill vanished after it was written".into()))?)
    }

    /// Starts the backfill of an approved request on `route` (still at the version it was
    /// asked of), up to the end found when it was requested.
    pub(crate) async fn approve_backfill(
        &self,
        stored: &StoredRequest,
        route: &Object,
        comment: &str,
    ) -> Result<(), GoalError> {
        let request = &stored.request;
        let submitted = stored.declaration.as_ref().ok_or_else(|| corrupt("a pending backfill without its plan"))?;
        let field = |k: &str| submitted.get(k).cloned().unwrap_or(Value::Null);
        let plan = BackfillPlan {
            route: route.clone(),
            id: serde_json::from_value(field("id")).map_err(corrupt)?,
            source: serde_json::from_value(field("source")).map_err(corrupt)?,
            topic: serde_json::from_value(field("topic")).map_err(corrupt)?,
            partitions: serde_json::from_value(field("partitions")).map_err(corrupt)?,
            files: None,
        };
        let end: Vec<(u32, u64)> = serde_json::from_value(field("end")).map_err(corrupt)?;
        let mut tx = self.store().write().await?;
        let detail = self.approve_operation(&mut tx, request, comment).await?;
        self.insert_backfill(&mut tx, &plan, &end, &request.requester, &detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes a running backfill started by `by` and its operations-log entry (`detail`
    /// appended).
    async fn insert_backfill(
        &self,
        tx: &mut WriteTx,
        plan: &BackfillPlan,
        end: &[(u32, u64)],
        by: &str,
        detail: &str,
    ) -> Result<(), GoalError> {
        let new = NewBackfill {
            id: &plan.id,
            route_id: &plan.route.id,
            source: &plan.source,
            topic: &plan.topic,
            partitions: plan.partitions,
            end,
            by,
        };
        let inserted = crate::store::backfills::insert_running(tx, new).await;
        if let Err(e) = inserted {
            return Err(if e.is_unique_violation() {
                GoalError::Conflict(format!("route {:?} is already backfilling", plan.route.name))
            } else {
                e.into()
            });
        }
        let total: u64 = end.iter().map(|(_, o)| o).sum();
        let what = format!("from {}: up to {total} event(s){detail}", plan.source.describe());
        tx.record_operation(&plan.route.id, &self.who().display, "backfill", &what).await?;
        Ok(())
    }

    /// Cancels a route's running backfill: the job goes back to its stream, where it was.
    pub async fn cancel_backfill(&self, team: &str, name: &str) -> Result<Backfill, GoalError> {
        let route = self.operable_route(team, name).await?;
        let running = self.store().backfills(&route.id).await?.into_iter().find(|b| b.state == BackfillState::Running);
        let b = running.ok_or_else(|| GoalError::Conflict(format!("route {name:?} is not backfilling")))?;
        self.store().finish_backfill(&b.id, BackfillState::Cancelled).await?;
        let detail = format!("from {} cancelled, {} event(s) left", b.source.describe(), b.remaining());
        self.record(&route, "backfill", &detail).await?;
        Ok(b)
    }
}
