//! Backfills: a route's job temporarily reads another source — another stream, or NDJSON files a
//! file sink wrote (imported into a scratch topic) — through the route's own filter, projection
//! and sink, up to the end that source had when the backfill started, then switches back to its
//! stream. Its position in the stream is kept: the backfill has positions of its own.

use serde::{Deserialize, Serialize};

/// Where a backfill reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "from")]
pub enum BackfillSource {
    /// A stream of the route's team (`name`) or of another team the caller may read
    /// (`team/name`).
    Stream { stream: String },
    /// The NDJSON and Parquet files under the folder of a file sink the caller can read (its
    /// `path` setting, e.g. `plays/br`, or a folder below it), in file-name order, in the sink's
    /// store (its local folder or its bucket). `sink` (`name` or `team/name`) says which sink's
    /// store when sinks in different stores share the path.
    Files {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sink: Option<String>,
    },
}

impl BackfillSource {
    pub fn describe(&self) -> String {
        match self {
            BackfillSource::Stream { stream } => format!("stream {stream}"),
            BackfillSource::Files { path, sink: None } => format!("files under {path}"),
            BackfillSource::Files { path, sink: Some(sink) } => format!("files under {path} of sink {sink}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BackfillState {
    Running,
    /// Every event up to the recorded end was delivered; the job is back on its stream.
    Done,
    Cancelled,
}

impl BackfillState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackfillState::Running => "running",
            BackfillState::Done => "done",
            BackfillState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<BackfillState> {
        [BackfillState::Running, BackfillState::Done, BackfillState::Cancelled].into_iter().find(|b| b.as_str() == s)
    }
}

/// One backfill of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct Backfill {
    pub id: String,
    pub route_id: String,
    pub source: BackfillSource,
    /// The log topic read (the stream's, or the scratch topic files were imported into).
    pub topic: String,
    pub partitions: u32,
    /// Where each partition ended when the backfill started: (partition, next offset).
    pub end: Vec<(u32, u64)>,
    pub state: BackfillState,
    pub started_by: String,
    pub started_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// How far it got: (partition, next offset to deliver).
    #[serde(default)]
    pub positions: Vec<(u32, u64)>,
}

impl Backfill {
    /// Every partition delivered up to its recorded end.
    pub fn complete(&self) -> bool {
        self.end.iter().all(|(p, end)| *end == 0 || self.positions.iter().any(|(q, at)| q == p && at >= end))
    }

    /// Events still to deliver.
    pub fn remaining(&self) -> u64 {
        self.end
            .iter()
            .map(|(p, end)| {
                let at = self.positions.iter().find(|(q, _)| q == p).map_or(0, |(_, at)| *at);
                end.saturating_sub(at)
            })
            .sum()
    }
}

/// The scratch topic a files backfill is imported into.
pub fn import_topic(team: &str, route: &str, backfill_id: &str) -> String {
    format!("backfill.{team}.{route}.{backfill_id}")
}

#[cfg(feature = "store")]
mod store {
    use super::*;
    use crate::approvals::{backfill_needs, RequestAction};
    use crate::diff::Change;
    use crate::goal::{Goal, GoalError, HeldOperation};
    use crate::model::{
        BucketSettings, FileSettings, Kind, Object, RouteSpec, SinkSettings, SinkSpec, StreamRef, StreamSpec,
    };
    use crate::store::approvals::StoredRequest;
    use crate::store::{now_ms, Store, StoreError, WriteTx};
    use crate::ValidationErrors;
    use serde_json::{json, Value};
    use sqlx::Row;
    use std::collections::BTreeMap;

    fn corrupt(e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt(format!("backfill: {e}"))
    }

    fn from_row(r: &sqlx::any::AnyRow) -> Result<Backfill, StoreError> {
        let source: String = r.try_get("source")?;
        let end: String = r.try_get("end_offsets")?;
        let state: String = r.try_get("state")?;
        let partitions: i64 = r.try_get("partitions")?;
        Ok(Backfill {
            id: r.try_get("id")?,
            route_id: r.try_get("route_id")?,
            source: serde_json::from_str(&source).map_err(corrupt)?,
            topic: r.try_get("topic")?,
            partitions: partitions as u32,
            end: serde_json::from_str(&end).map_err(corrupt)?,
            state: BackfillState::parse(&state).ok_or_else(|| corrupt(&state))?,
            started_by: r.try_get("started_by")?,
            started_at: r.try_get("started_at")?,
            finished_at: r.try_get("finished_at")?,
            positions: Vec::new(),
        })
    }

    const SELECT: &str = "SELECT id, route_id, source, topic, partitions, end_offsets, state, started_by, \
         started_at, finished_at FROM backfills";

    impl Store {
        /// Running backfills, with their positions.
        pub async fn running_backfills(&self) -> Result<Vec<Backfill>, StoreError> {
            let rows = sqlx::query(&format!("{SELECT} WHERE state = 'running'")).fetch_all(self.pool()).await?;
            self.with_positions(rows).await
        }

        /// A route's backfills, newest first, with their positions.
        pub async fn backfills(&self, route_id: &str) -> Result<Vec<Backfill>, StoreError> {
            let rows = sqlx::query(&format!("{SELECT} WHERE route_id = $1 ORDER BY started_at DESC"))
                .bind(route_id)
                .fetch_all(self.pool())
                .await?;
            self.with_positions(rows).await
        }

        async fn with_positions(&self, rows: Vec<sqlx::any::AnyRow>) -> Result<Vec<Backfill>, StoreError> {
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let mut b = from_row(&r)?;
                b.positions = self.backfill_positions(&b.id).await?;
                out.push(b);
            }
            Ok(out)
        }

        pub async fn backfill_positions(&self, backfill_id: &str) -> Result<Vec<(u32, u64)>, StoreError> {
            let rows = sqlx::query(
                "SELECT partition_no, next_offset FROM backfill_checkpoints WHERE backfill_id = $1 ORDER BY partition_no",
            )
            .bind(backfill_id)
            .fetch_all(self.pool())
            .await?;
            rows.iter()
                .map(|r| {
                    let (p, o): (i64, i64) = (r.try_get("partition_no")?, r.try_get("next_offset")?);
                    Ok((p as u32, o as u64))
                })
                .collect()
        }

        /// Saves a backfill's positions, only while `lease` (the reconciler's) is still held.
        pub async fn commit_backfill_positions(
            &self,
            backfill_id: &str,
            positions: &[(u32, u64)],
            lease: Option<&crate::store::lease::Lease>,
        ) -> Result<(), StoreError> {
            let mut tx = self.write_fenced(lease).await?;
            for &(p, o) in positions {
                sqlx::query(
                    "INSERT INTO backfill_checkpoints (backfill_id, partition_no, next_offset) VALUES ($1, $2, $3) \
                     ON CONFLICT (backfill_id, partition_no) DO UPDATE SET next_offset = excluded.next_offset",
                )
                .bind(backfill_id)
                .bind(i64::from(p))
                .bind(o as i64)
                .execute(tx.conn())
                .await?;
            }
            tx.commit().await
        }

        /// Ends a running backfill (done or cancelled); false if it was not running.
        pub async fn finish_backfill(&self, id: &str, state: BackfillState) -> Result<bool, StoreError> {
            let mut tx = self.write().await?;
            let done =
                sqlx::query("UPDATE backfills SET state = $1, finished_at = $2 WHERE id = $3 AND state = 'running'")
                    .bind(state.as_str())
                    .bind(now_ms())
                    .bind(id)
                    .execute(tx.conn())
                    .await?;
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        }
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
                            path == &f.path
                                || path.strip_prefix(f.path.as_str()).is_some_and(|rest| rest.starts_with('/'))
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
            let submitted =
                stored.declaration.as_ref().ok_or_else(|| corrupt("a pending backfill without its plan"))?;
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
            let source = serde_json::to_string(&plan.source).map_err(corrupt)?;
            let end_json = serde_json::to_string(end).map_err(corrupt)?;
            let inserted = sqlx::query(
                "INSERT INTO backfills (id, route_id, source, topic, partitions, end_offsets, state, started_by, started_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, $8)",
            )
            .bind(&plan.id)
            .bind(&plan.route.id)
            .bind(source)
            .bind(&plan.topic)
            .bind(i64::from(plan.partitions))
            .bind(end_json)
            .bind(by)
            .bind(now_ms())
            .execute(tx.conn())
            .await;
            if let Err(e) = inserted {
                let e = StoreError::from(e);
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
            let running =
                self.store().backfills(&route.id).await?.into_iter().find(|b| b.state == BackfillState::Running);
            let b = running.ok_or_else(|| GoalError::Conflict(format!("route {name:?} is not backfilling")))?;
            self.store().finish_backfill(&b.id, BackfillState::Cancelled).await?;
            let detail = format!("from {} cancelled, {} event(s) left", b.source.describe(), b.remaining());
            self.record(&route, "backfill", &detail).await?;
            Ok(b)
        }
    }
}

#[cfg(feature = "store")]
pub use store::{BackfillFiles, BackfillPlan};

#[cfg(test)]
mod tests {
    use super::*;

    fn backfill(end: Vec<(u32, u64)>, positions: Vec<(u32, u64)>) -> Backfill {
        Backfill {
            id: "b".into(),
            route_id: "r".into(),
            source: BackfillSource::Stream { stream: "archive".into() },
            topic: "alpha.archive".into(),
            partitions: 2,
            end,
            state: BackfillState::Running,
            started_by: "alice".into(),
            started_at: 0,
            finished_at: None,
            positions,
        }
    }

    #[test]
    fn complete_once_every_partition_reached_its_end() {
        assert!(!backfill(vec![(0, 10), (1, 5)], vec![(0, 10)]).complete());
        assert_eq!(backfill(vec![(0, 10), (1, 5)], vec![(0, 10)]).remaining(), 5);
        assert!(backfill(vec![(0, 10), (1, 5)], vec![(0, 10), (1, 7)]).complete());
        assert!(backfill(vec![(0, 0), (1, 3)], vec![(1, 3)]).complete(), "an empty partition is done");
    }

    #[test]
    fn sources_read_from_json() {
        let s: BackfillSource = serde_json::from_str(r#"{"from": "files", "path": "plays/br"}"#).unwrap();
        assert_eq!(s, BackfillSource::Files { path: "plays/br".into(), sink: None });
        let s: BackfillSource = serde_json::from_str(r#"{"from": "files", "path": "p", "sink": "lake"}"#).unwrap();
        assert_eq!(s.describe(), "files under p of sink lake");
        let s: BackfillSource = serde_json::from_str(r#"{"from": "stream", "stream": "beta/plays"}"#).unwrap();
        assert_eq!(s.describe(), "stream beta/plays");
    }
}
