//! Route jobs over the API: desired and observed state, live numbers, checkpoints, transitions,
//! dead letters, a manual restart, and pausing, stopping and resuming. Reads need read access to
//! the route's team; acting on a job needs write access.

use crate::caller::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::handlers::ChangeResult;
use crate::ApiState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use keystone_control::deployments::Deployment;
use keystone_control::goal::Goal;
use keystone_control::rewind::{HistoricCheckpoint, RewindPlan, RewindTo, Savepoint};
use keystone_control::store::jobs::{JobCounts, JobFilter};
use keystone_control::{
    dead_letter_topic, CheckpointInfo, DesiredState, JobMetrics, JobRecord, JobTransition, Kind, ValidationErrors,
};
use keystone_engine::job::dead_letters;
use keystone_engine::log::LogError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Everything known about one route's job.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobStatus {
    /// What the route's owners want (part of the route's spec).
    pub desired: DesiredState,
    /// The recorded phase; null before the reconciler first started the job.
    pub job: Option<JobRecord>,
    /// Live numbers while the job runs: from this server, or summed over the workers that share
    /// it (null when no live process runs it).
    pub metrics: Option<JobMetrics>,
    pub checkpoints: Vec<CheckpointInfo>,
    /// Most recent first.
    pub transitions: Vec<JobTransition>,
}

/// A route's job: phase, lag, checkpoints, recent transitions and errors.
#[utoipa::path(get, path = "/api/v1/teams/{team}/routes/{name}/job",
    params(("team" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = JobStatus), (status = 404, body = ErrorBody)))]
pub async fn job_status(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
) -> Result<Json<JobStatus>, ApiError> {
    let j = s.platform.ops(&who).job_state(&team, &name, 20).await?;
    Ok(Json(JobStatus {
        desired: j.desired,
        job: j.job,
        metrics: j.metrics,
        checkpoints: j.checkpoints,
        transitions: j.transitions,
    }))
}

/// A job in the platform-wide list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobSummary {
    #[serde(flatten)]
    pub job: JobRecord,
    /// Events not yet acknowledged by the sink (null when no live process runs the job).
    pub lag: Option<u64>,
}

/// The processes running route jobs, and the partitions of each job they hold: an admin sees
/// every process by name; anyone else only their teams' jobs, on processes shown as `process N`.
#[utoipa::path(get, path = "/api/v1/workers", responses((status = 200, body = [keystone_control::workers::WorkerStatus])))]
pub async fn workers(
    State(s): State<ApiState>,
    Caller(who): Caller,
) -> Result<Json<Vec<keystone_control::workers::WorkerStatus>>, ApiError> {
    Ok(Json(s.platform.store.workers_for(&who).await?))
}

/// Most jobs one listing returns.
pub const JOBS_PAGE_MAX: i64 = 1000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct JobsParams {
    /// Only this team's jobs.
    pub team: Option<String>,
    /// Only jobs in this phase.
    #[param(inline, value_type = Option<keystone_control::JobPhase>)]
    pub phase: Option<String>,
    /// At most this many (1 to 1000, default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Skip this many first (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

impl JobsParams {
    fn filter(&self) -> Result<JobFilter, ValidationErrors> {
        let mut e = ValidationErrors::default();
        let phase = match self.phase.as_deref() {
            None => None,
            Some(p) => keystone_control::JobPhase::parse(p).or_else(|| {
                e.add("phase", "must be starting, running, failing, failed, paused or stopped");
                None
            }),
        };
        let limit = self.limit.unwrap_or(JOBS_PAGE_MAX);
        if !(1..=JOBS_PAGE_MAX).contains(&limit) {
            e.add("limit", format!("must be between 1 and {JOBS_PAGE_MAX}"));
        }
        let offset = self.offset.unwrap_or(0);
        if offset < 0 {
            e.add("offset", "must not be negative");
        }
        e.into_result(JobFilter { team: self.team.clone(), phase, limit: Some(limit), offset })
    }
}

/// A page of the jobs the caller may see (by team, then route), with each one's phase and lag.
/// `X-Total-Count` says how many match the filters in all.
#[utoipa::path(get, path = "/api/v1/jobs", params(JobsParams),
    responses((status = 200, body = [JobSummary], headers(("x-total-count" = i64, description = "Jobs matching the filters"))),
              (status = 422, body = ErrorBody)))]
pub async fn list_jobs(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Query(params): Query<JobsParams>,
) -> Result<([(&'static str, String); 1], Json<Vec<JobSummary>>), ApiError> {
    let filter = params.filter()?;
    let scope = who.scope();
    let jobs = s.platform.store.jobs_page(&scope, &filter).await?;
    let counts = s.platform.store.job_counts(&scope, filter.team.as_deref()).await?;
    let total = match filter.phase {
        Some(p) => counts.by_phase.get(p.as_str()).copied().unwrap_or(0),
        None => counts.total,
    };
    // Jobs run by workers are in their beats (a server's own are not).
    let mut shared = s.platform.store.shared_job_metrics().await?;
    let page = jobs
        .into_iter()
        .map(|job| {
            let lag = s.platform.jobs.metrics(&job.route_id).or_else(|| shared.remove(&job.route_id)).map(|m| m.lag);
            JobSummary { job, lag }
        })
        .collect();
    Ok(([("x-total-count", total.to_string())], Json(page)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct CountsParams {
    /// Only this team's jobs.
    pub team: Option<String>,
}

/// How many jobs the caller may see (of one team, if given), in all and by phase.
#[utoipa::path(get, path = "/api/v1/jobs/counts", params(CountsParams), responses((status = 200, body = JobCounts)))]
pub async fn job_counts(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Query(params): Query<CountsParams>,
) -> Result<Json<JobCounts>, ApiError> {
    Ok(Json(s.platform.store.job_counts(&who.scope(), params.team.as_deref()).await?))
}

/// Restarts a route's job (e.g. one marked failed after its sink was fixed) wherever it runs:
/// every process holding it replaces it, from its last checkpoint, within a second.
#[utoipa::path(post, path = "/api/v1/teams/{team}/routes/{name}/restart",
    params(("team" = String, Path), ("name" = String, Path)),
    responses((status = 202), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn restart(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    s.platform.ops(&who).restart_route(&team, &name, "over the API").await?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SetState {
    /// `running`, `paused` or `stopped`.
    pub state: DesiredState,
    /// Why (recorded with the route's new revision).
    pub reason: String,
}

/// Sets a route's desired state. Paused: the job finishes the batch in hand and reads nothing
/// more, keeping its sink, until resumed right after the last delivered event. Stopped: the
/// job is drained and removed; started again it resumes from its checkpoint. The state is part
/// of the route's goal state: the change is a new revision (nothing when unchanged).
#[utoipa::path(post, path = "/api/v1/teams/{team}/routes/{name}/state", request_body = SetState,
    params(("team" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = ChangeResult), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub async fn set_state(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
    Json(req): Json<SetState>,
) -> Result<Json<ChangeResult>, ApiError> {
    let applied = s.platform.ops(&who).set_route_state(&team, &name, req.state, &req.reason).await?;
    Ok(Json(ChangeResult { revision: applied.revision, changed: applied.changed }))
}

/// A route's deployments, newest first: each move of its job to another route version, its
/// strategy, and how the stability gate judged it.
#[utoipa::path(get, path = "/api/v1/teams/{team}/routes/{name}/deployments",
    params(("team" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = [Deployment]), (status = 404, body = ErrorBody)))]
pub async fn deployments(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
) -> Result<Json<Vec<Deployment>>, ApiError> {
    let route = Goal::new(&s.platform.store, &who).get(Kind::Route, &team, &name).await?;
    Ok(Json(s.platform.store.deployments(&route.id, 50).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RollBack {
    /// The route version to return to.
    #[schema(minimum = 1)]
    pub version: i64,
    pub reason: String,
}

/// Sets a route back to an earlier version's declaration, as a new revision; the reconciler
/// deploys it like any change (with the route's strategy and stability gate).
#[utoipa::path(post, path = "/api/v1/teams/{team}/routes/{name}/rollback", request_body = RollBack,
    params(("team" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = ChangeResult), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn roll_back(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
    Json(req): Json<RollBack>,
) -> Result<Json<ChangeResult>, ApiError> {
    let applied = s.platform.ops(&who).roll_back_route(&team, &name, req.version, &req.reason).await?;
    Ok(Json(ChangeResult { revision: applied.revision, changed: applied.changed }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewSavepoint {
    pub name: String,
}

/// Takes a savepoint: the route's committed positions now, under a name, to rewind to later.
#[utoipa::path(post, path = "/api/v1/teams/{team}/routes/{name}/savepoints", request_body = NewSavepoint,
    params(("team" = String, Path), ("name" = String, Path)),
    responses((status = 201, body = Savepoint), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub async fn take_savepoint(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
    Json(req): Json<NewSavepoint>,
) -> Result<(StatusCode, Json<Savepoint>), ApiError> {
    let saved = Goal::new(&s.platform.store, &who).take_savepoint(&team, &name, &req.name).await?;
    Ok((StatusCode::CREATED, Json(saved)))
}

/// A route's checkpoint history, newest first: its committed positions copied at most once a
/// minute, the newest 60 kept (rewind targets).
#[utoipa::path(get, path = "/api/v1/teams/{team}/routes/{name}/checkpoints",
    params(("team" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = [HistoricCheckpoint]), (status = 404, body = ErrorBody)))]
pub async fn checkpoint_history(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
) -> Result<Json<Vec<HistoricCheckpoint>>, ApiError> {
    let route = Goal::new(&s.platform.store, &who).get(Kind::Route, &team, &name).await?;
    Ok(Json(s.platform.store.checkpoint_history(&route.id).await?))
}

/// A route's savepoints, newest first.
#[utoipa::path(get, path = "/api/v1/teams/{team}/routes/{name}/savepoints",
    params(("team" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = [Savepoint]), (status = 404, body = ErrorBody)))]
pub async fn savepoints(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
) -> Result<Json<Vec<Savepoint>>, ApiError> {
    let route = Goal::new(&s.platform.store, &who).get(Kind::Route, &team, &name).await?;
    Ok(Json(s.platform.store.savepoints(&route.id).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Rewind {
    #[serde(flatten)]
    pub to: RewindTo,
    /// Only estimate: nothing changes.
    #[serde(default)]
    pub dry_run: bool,
}

/// Rewinds a stopped route's job to the earliest retained event, a time, or a savepoint; with
/// `dry_run`, only says how many events would be delivered again (any state). Start the route
/// again to deliver from there.
#[utoipa::path(post, path = "/api/v1/teams/{team}/routes/{name}/rewind", request_body = Rewind,
    params(("team" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = RewindPlan), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn rewind(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
    Json(req): Json<Rewind>,
) -> Result<Json<RewindPlan>, ApiError> {
    Ok(Json(s.platform.ops(&who).rewind_route(&team, &name, &req.to, req.dry_run).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DeadLetterParams {
    /// First offset to return (default: the newest `limit` letters).
    pub from: Option<u64>,
    /// At most this many (default 50, at most 1000).
    pub limit: Option<usize>,
}

/// An event a sink refused, with the reason.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// Position in the dead-letter queue.
    pub offset: u64,
    /// `{route, reason, partition, offset, failed_at, envelope}`.
    #[schema(value_type = Object)]
    pub letter: Value,
}

/// The route's dead-letter queue, oldest first within the page.
#[utoipa::path(get, path = "/api/v1/teams/{team}/routes/{name}/dead-letters",
    params(("team" = String, Path), ("name" = String, Path), DeadLetterParams),
    responses((status = 200, body = [DeadLetter]), (status = 404, body = ErrorBody)))]
pub async fn dead_letters(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
    Query(p): Query<DeadLetterParams>,
) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    Goal::new(&s.platform.store, &who).get(Kind::Route, &team, &name).await?;
    letters(&s, &dead_letter_topic(&team, &name), &p).await
}

/// The processor's dead-letter queue (late events, with reason `late`; events that do not fit
/// the stream's schema; results its sink refused), oldest first within the page.
#[utoipa::path(get, path = "/api/v1/teams/{team}/processors/{name}/dead-letters",
    params(("team" = String, Path), ("name" = String, Path), DeadLetterParams),
    responses((status = 200, body = [DeadLetter]), (status = 404, body = ErrorBody)))]
pub async fn processor_dead_letters(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
    Query(p): Query<DeadLetterParams>,
) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    Goal::new(&s.platform.store, &who).get(Kind::Processor, &team, &name).await?;
    letters(&s, &keystone_control::processor_dead_letter_topic(&team, &name), &p).await
}

/// A source's job: its phase (and the last error), the initial snapshot's progress, the last
/// position confirmed to its database, its replication lag, the WAL its replication slot holds
/// back there and its alerts.
#[utoipa::path(get, path = "/api/v1/teams/{team}/sources/{name}/status",
    params(("team" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = keystone_control::SourceStatus), (status = 404, body = ErrorBody)))]
pub async fn source_status(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
) -> Result<Json<keystone_control::SourceStatus>, ApiError> {
    Ok(Json(s.platform.ops(&who).source_status(&team, &name).await?))
}

/// Restarts a source's job: it stops, confirming what it appended, and starts again from its
/// replication slot within a second. Editors of the team.
#[utoipa::path(post, path = "/api/v1/teams/{team}/sources/{name}/restart",
    params(("team" = String, Path), ("name" = String, Path)),
    responses((status = 202), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn restart_source(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    s.platform.ops(&who).restart_source(&team, &name, "over the API").await?;
    Ok(StatusCode::ACCEPTED)
}

async fn letters(s: &ApiState, topic: &str, p: &DeadLetterParams) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    let limit = p.limit.unwrap_or(50).clamp(1, 1000);
    let letters = match dead_letters::read(s.platform.log.as_ref(), topic, p.from, limit).await {
        Ok(l) => l,
        Err(LogError::OffsetOutOfRange { earliest, .. }) => {
            return Err(ValidationErrors::single(
                "from",
                format!("no longer retained; the earliest offset is {earliest}"),
            )
            .into())
        }
        Err(e) => return Err(ApiError::Log(e)),
    };
    Ok(Json(letters.into_iter().map(|(offset, letter)| DeadLetter { offset, letter }).collect()))
}

/// A route's transforms to try on recent events.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    pub stream: String,
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub projection: keystone_control::Projection,
    /// How many of the newest events (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Runs a filter and projection against the stream's newest events without saving or delivering
/// anything: which events pass, what the sink would receive, and the error of each event the
/// filter cannot evaluate. Invalid transforms get the same field errors as a save.
#[utoipa::path(post, path = "/api/v1/teams/{team}/route-preview", request_body = PreviewRequest,
    params(("team" = String, Path)),
    responses((status = 200, body = [keystone_control::PreviewRow]), (status = 422, body = ErrorBody)))]
pub async fn preview(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path(team): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Vec<keystone_control::PreviewRow>>, ApiError> {
    let req: PreviewRequest = serde_json::from_slice(&body)
        .map_err(|e| ValidationErrors::single("body", format!("is not a valid preview request: {e}")))?;
    let input = keystone_ops::PreviewInput {
        stream: req.stream,
        filter: req.filter,
        projection: req.projection,
        limit: req.limit.unwrap_or(100),
    };
    Ok(Json(s.platform.ops(&who).preview(&team, &input).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// At most this many letters, oldest unhandled first (default 500, at most 10000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Re-delivers the route's unhandled dead letters (oldest first, from the route's cursor) through
/// its current filter, projection and sink, e.g. after the sink or the route was fixed. Letters
/// refused again go back to the queue with the new reason; the cursor moves past every letter
/// handled. On a transient sink failure nothing moves (503).
#[utoipa::path(post, path = "/api/v1/teams/{team}/routes/{name}/dead-letters/retry", request_body = RetryRequest,
    params(("team" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = Object), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn retry_dead_letters(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<dead_letters::Replayed>, ApiError> {
    let req: RetryRequest = if body.is_empty() {
        RetryRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ValidationErrors::single("body", format!("is not a valid retry request: {e}")))?
    };
    Ok(Json(s.platform.ops(&who).retry_dead_letters(&team, &name, req.limit.unwrap_or(500)).await?))
}
