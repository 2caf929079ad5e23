use crate::caller::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::ApiState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use keystone_control::diff::Change;
use keystone_control::goal::{Declaration, Goal};
use keystone_control::store::AuditFilter;
use keystone_control::{Kind, Object, Revision, Role, ValidationErrors};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kinds a URL's `{kind}` names, and how (the OpenAPI document lists them from here).
pub(crate) const KIND_SEGMENTS: [(&str, Kind); 5] = [
    ("streams", Kind::Stream),
    ("sinks", Kind::Sink),
    ("routes", Kind::Route),
    ("processors", Kind::Processor),
    ("sources", Kind::Source),
];

/// `streams`, `sinks`, `routes`, `processors` or `sources` in a URL.
fn kind_of(segment: &str) -> Result<Kind, ApiError> {
    KIND_SEGMENTS
        .iter()
        .find(|(s, _)| *s == segment)
        .map(|(_, k)| *k)
        .ok_or(ApiError::Goal(keystone_control::goal::GoalError::NotFound))
}

/// Parses a JSON body, reporting the line and column of a syntax error.
fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ValidationErrors::single("body", format!("is not valid JSON: {e}")))?;
    from_value(value)
}

fn from_value<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| ValidationErrors::single("body", e.to_string()).into())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    pub principal: String,
    pub role: Role,
    pub teams: Vec<String>,
}

/// Who the token acts as.
#[utoipa::path(get, path = "/api/v1/me", responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
pub async fn me(Caller(who): Caller) -> Json<Me> {
    Json(Me { principal: who.display.clone(), role: who.role, teams: who.teams.into_iter().map(|t| t.name).collect() })
}

/// Teams the caller belongs to (all teams for admins).
#[utoipa::path(get, path = "/api/v1/teams", responses((status = 200, body = [Object]), (status = 401, body = ErrorBody)))]
pub async fn list_teams(State(s): State<ApiState>, Caller(who): Caller) -> Result<Json<Vec<Object>>, ApiError> {
    Ok(Json(Goal::new(&s.platform.store, &who).list(Kind::Team).await?))
}

/// Live objects of one kind in one team.
#[utoipa::path(get, path = "/api/v1/teams/{team}/{kind}",
    params(("team" = String, Path), ("kind" = String, Path, description = "streams, sinks, routes or processors")),
    responses((status = 200, body = [Object]), (status = 404, body = ErrorBody)))]
pub async fn list_objects(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, kind)): Path<(String, String)>,
) -> Result<Json<Vec<Object>>, ApiError> {
    let kind = kind_of(&kind)?;
    let goal = Goal::new(&s.platform.store, &who);
    // Resolving the team first makes an unknown or foreign team a 404, not an empty list.
    goal.get(Kind::Team, "", &team).await?;
    Ok(Json(goal.list(kind).await?.into_iter().filter(|o| o.team == team).collect()))
}

/// The spec of the kind the path names: a StreamSpec, a SinkInput, a RouteSpec, a ProcessorSpec
/// or a SourceInput.
fn spec_schema() -> utoipa::openapi::schema::OneOfBuilder {
    use utoipa::openapi::Ref;
    utoipa::openapi::schema::OneOfBuilder::new()
        .item(Ref::from_schema_name("StreamSpec"))
        .item(Ref::from_schema_name("SinkInput"))
        .item(Ref::from_schema_name("RouteSpec"))
        .item(Ref::from_schema_name("ProcessorSpec"))
        .item(Ref::from_schema_name("SourceInput"))
        .description(Some(
            "The spec of the kind the path names (streams: StreamSpec, sinks: SinkInput, routes: RouteSpec, \
             processors: ProcessorSpec, sources: SourceInput).",
        ))
}

/// A declaration to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// Lowercase letters, digits and single dashes, starting with a letter (a DNS label).
    #[schema(pattern = "^[a-z][a-z0-9]*(-[a-z0-9]+)*$", max_length = 63, example = "plays")]
    pub name: String,
    #[schema(schema_with = spec_schema)]
    pub spec: Value,
    #[serde(default)]
    pub reason: String,
}

/// A declaration replacing the current one.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    #[schema(schema_with = spec_schema)]
    pub spec: Value,
    #[serde(default)]
    pub reason: String,
    /// Refuse with 409 if the object is no longer at this version.
    #[serde(default)]
    pub expected_version: Option<i64>,
}

/// The result of a change.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChangeResult {
    pub revision: Revision,
    /// False when the declaration equalled the current goal (no revision written).
    pub changed: bool,
}

/// Declares a new stream, sink or route.
#[utoipa::path(post, path = "/api/v1/teams/{team}/{kind}", request_body = CreateRequest,
    params(("team" = String, Path), ("kind" = String, Path)),
    responses((status = 201, body = ChangeResult), (status = 422, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_object(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, kind)): Path<(String, String)>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let kind = kind_of(&kind)?;
    let req: CreateRequest = parse_body(&body)?;
    let decl = Declaration::from_json(kind, req.spec)?;
    let applied = Goal::new(&s.platform.store, &who).create(&team, &req.name, decl, &req.reason).await?;
    Ok((StatusCode::CREATED, Json(ChangeResult { revision: applied.revision, changed: applied.changed })))
}

/// The current goal of one object.
#[utoipa::path(get, path = "/api/v1/teams/{team}/{kind}/{name}",
    params(("team" = String, Path), ("kind" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn get_object(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, kind, name)): Path<(String, String, String)>,
) -> Result<Json<Object>, ApiError> {
    Ok(Json(Goal::new(&s.platform.store, &who).get(kind_of(&kind)?, &team, &name).await?))
}

/// Replaces an object's declaration, writing a new revision.
#[utoipa::path(put, path = "/api/v1/teams/{team}/{kind}/{name}", request_body = UpdateRequest,
    params(("team" = String, Path), ("kind" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = ChangeResult), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update_object(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, kind, name)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Json<ChangeResult>, ApiError> {
    let kind = kind_of(&kind)?;
    let req: UpdateRequest = parse_body(&body)?;
    let decl = Declaration::from_json(kind, req.spec)?;
    let applied =
        Goal::new(&s.platform.store, &who).update(&team, &name, decl, &req.reason, req.expected_version).await?;
    Ok(Json(ChangeResult { revision: applied.revision, changed: applied.changed }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DeleteParams {
    #[serde(default)]
    pub reason: String,
    pub expected_version: Option<i64>,
}

/// Deletes an object (a tombstone revision; history stays).
#[utoipa::path(delete, path = "/api/v1/teams/{team}/{kind}/{name}",
    params(("team" = String, Path), ("kind" = String, Path), ("name" = String, Path), DeleteParams),
    responses((status = 200, body = Revision), (status = 422, body = ErrorBody)))]
pub async fn delete_object(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, kind, name)): Path<(String, String, String)>,
    Query(p): Query<DeleteParams>,
) -> Result<Json<Revision>, ApiError> {
    let kind = kind_of(&kind)?;
    Ok(Json(Goal::new(&s.platform.store, &who).delete(kind, &team, &name, &p.reason, p.expected_version).await?))
}

/// Every revision of one live object, oldest first.
#[utoipa::path(get, path = "/api/v1/teams/{team}/{kind}/{name}/revisions",
    params(("team" = String, Path), ("kind" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = [Revision]), (status = 404, body = ErrorBody)))]
pub async fn object_history(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, kind, name)): Path<(String, String, String)>,
) -> Result<Json<Vec<Revision>>, ApiError> {
    Ok(Json(Goal::new(&s.platform.store, &who).history(kind_of(&kind)?, &team, &name).await?))
}

/// Every revision of any object by id, including deleted ones.
#[utoipa::path(get, path = "/api/v1/objects/{id}/revisions", params(("id" = String, Path)),
    responses((status = 200, body = [Revision]), (status = 404, body = ErrorBody)))]
pub async fn history_by_id(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<Revision>>, ApiError> {
    Ok(Json(Goal::new(&s.platform.store, &who).history_by_id(&id).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DiffParams {
    /// A version of the object (versions count from 1).
    #[param(minimum = 1)]
    pub from: i64,
    #[param(minimum = 1)]
    pub to: i64,
}

/// Field-level changes between two versions of one object.
#[utoipa::path(get, path = "/api/v1/objects/{id}/diff", params(("id" = String, Path), DiffParams),
    responses((status = 200, body = [Change]), (status = 404, body = ErrorBody)))]
pub async fn diff(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Query(p): Query<DiffParams>,
) -> Result<Json<Vec<Change>>, ApiError> {
    Ok(Json(Goal::new(&s.platform.store, &who).diff(&id, p.from, p.to).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditParams {
    pub kind: Option<String>,
    pub team: Option<String>,
    pub author: Option<String>,
    pub before_seq: Option<i64>,
    pub limit: Option<i64>,
}

/// The platform-wide revision log (newest first), limited to the caller's teams.
#[utoipa::path(get, path = "/api/v1/revisions", params(AuditParams),
    responses((status = 200, body = [Revision]), (status = 422, body = ErrorBody)))]
pub async fn audit(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Query(p): Query<AuditParams>,
) -> Result<Json<Vec<Revision>>, ApiError> {
    let kind = match p.kind.as_deref() {
        None | Some("") => None,
        Some(k) => Some(Kind::parse(k).ok_or_else(|| ValidationErrors::single("kind", format!("unknown kind {k:?}")))?),
    };
    let filter =
        AuditFilter { kind, team: p.team, author: p.author, before_seq: p.before_seq, limit: p.limit.unwrap_or(100) };
    Ok(Json(Goal::new(&s.platform.store, &who).audit(&filter).await?))
}

pub async fn not_found() -> ApiError {
    ApiError::Goal(keystone_control::goal::GoalError::NotFound)
}

/// Plans a processor's query on the team's streams without saving anything: the streams it
/// reads, its output columns and types, the kind of job and the plan's operators; or the field
/// errors a save would get (`sql` with line and column).
#[utoipa::path(post, path = "/api/v1/teams/{team}/processor-plan", request_body = keystone_control::ExplainRequest,
    params(("team" = String, Path)),
    responses((status = 200, body = keystone_control::ProcessorPlan), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn explain_processor(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path(team): Path<String>,
    body: Bytes,
) -> Result<Json<keystone_control::ProcessorPlan>, ApiError> {
    let req: keystone_control::ExplainRequest = parse_body(&body)?;
    Ok(Json(Goal::new(&s.platform.store, &who).explain_processor(&team, &req).await?))
}

/// Runs a processor's query, as given, over its stream's newest events (default 500) and closes
/// every window: the results a sink would hold (an updated key's latest row), the late events,
/// the events the query cannot use and the plan. Saves and delivers nothing; editors only (the
/// query runs on the server).
#[utoipa::path(post, path = "/api/v1/teams/{team}/processor-preview",
    request_body = keystone_control::ProcessorPreviewRequest, params(("team" = String, Path)),
    responses((status = 200, body = keystone_control::ProcessorPreview), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn preview_processor(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path(team): Path<String>,
    body: Bytes,
) -> Result<Json<keystone_control::ProcessorPreview>, ApiError> {
    let req: keystone_control::ProcessorPreviewRequest = parse_body(&body)?;
    Ok(Json(s.platform.ops(&who).preview_processor(&team, &req).await?))
}
