//! Backfills over the API: a route's job temporarily reads another stream, or the files a file
//! sink wrote, through the route's own transforms and sink, then returns to its stream where it
//! left off.

use crate::caller::Caller;
use crate::error::{ApiError, ErrorBody, PendingBody};
use crate::ApiState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use keystone_control::backfill::{Backfill, BackfillSource};
use keystone_control::goal::Goal;
use keystone_control::Kind;

/// Starts a backfill of a route (editors): `{"from": "stream", "stream": "archive"}` or
/// `{"from": "files", "path": "plays/br"}` (a file sink's folder). The job switches to the
/// source on the reconciler's next pass, delivers it up to where it ends now, and goes back to
/// its stream where it left off. Files are checked whole and imported first.
#[utoipa::path(post, path = "/api/v1/teams/{team}/routes/{name}/backfill", request_body = BackfillSource,
    params(("team" = String, Path), ("name" = String, Path)),
    responses((status = 201, body = Backfill), (status = 202, body = PendingBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn start(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
    Json(source): Json<BackfillSource>,
) -> Result<(StatusCode, Json<Backfill>), ApiError> {
    let started = s.platform.ops(&who).start_backfill(&team, &name, source).await?;
    Ok((StatusCode::CREATED, Json(started)))
}

/// A route's backfills, newest first, with how far each got.
#[utoipa::path(get, path = "/api/v1/teams/{team}/routes/{name}/backfills", operation_id = "list_backfills",
    params(("team" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = [Backfill]), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
) -> Result<Json<Vec<Backfill>>, ApiError> {
    let route = Goal::new(&s.platform.store, &who).get(Kind::Route, &team, &name).await?;
    Ok(Json(s.platform.store.backfills(&route.id).await?))
}

/// Cancels a route's running backfill: the job returns to its stream where it left off.
#[utoipa::path(post, path = "/api/v1/teams/{team}/routes/{name}/backfill/cancel",
    params(("team" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = Backfill), (status = 409, body = ErrorBody)))]
pub async fn cancel(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
) -> Result<Json<Backfill>, ApiError> {
    Ok(Json(s.platform.ops(&who).cancel_backfill(&team, &name).await?))
}
