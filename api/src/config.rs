//! A route's layered configuration over the API: the effective value of every key with its
//! source, and the console overrides (the top layer), set and cleared by editors.

use crate::caller::Caller;
use crate::error::{ApiError, ErrorBody, PendingBody};
use crate::ApiState;
use axum::extract::{Path, Query, State};
use axum::Json;
use keystone_control::config::ConfigEntry;
use keystone_control::goal::Goal;
use serde::Deserialize;

/// Every configuration key of a route's job, with its effective value and the layer it comes
/// from (platform default < route < environment < override).
#[utoipa::path(get, path = "/api/v1/teams/{team}/routes/{name}/config",
    params(("team" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = [ConfigEntry]), (status = 404, body = ErrorBody)))]
pub async fn effective(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
) -> Result<Json<Vec<ConfigEntry>>, ApiError> {
    Ok(Json(Goal::new(&s.platform.store, &who).route_config(&team, &name, &s.platform.job_env).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetOverride {
    /// The value as text, in the key's form: a whole number for `batch_size`, the `_ms` and `_s`
    /// keys and `job.max_error_percent`; `earliest` or `latest` for `job.start_at`.
    #[schema(example = "500")]
    pub value: String,
    /// Why (in the operations log).
    #[serde(default)]
    pub reason: String,
}

/// Overrides one key of a route; the job is rolled with the route's deployment strategy and
/// judged by its stability gate. 202 with a change request when the approval policy holds it back.
#[utoipa::path(put, path = "/api/v1/teams/{team}/routes/{name}/config/{key}", request_body = SetOverride,
    params(("team" = String, Path), ("name" = String, Path), ("key" = String, Path)),
    responses((status = 200, body = [ConfigEntry]), (status = 202, body = PendingBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn set_override(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name, key)): Path<(String, String, String)>,
    Json(req): Json<SetOverride>,
) -> Result<Json<Vec<ConfigEntry>>, ApiError> {
    Ok(Json(s.platform.ops(&who).set_config_override(&team, &name, &key, Some(&req.value), &req.reason).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ClearParams {
    #[serde(default)]
    pub reason: String,
}

/// Removes a route's override of one key: the layers below apply again.
#[utoipa::path(delete, path = "/api/v1/teams/{team}/routes/{name}/config/{key}",
    params(("team" = String, Path), ("name" = String, Path), ("key" = String, Path), ClearParams),
    responses((status = 200, body = [ConfigEntry]), (status = 202, body = PendingBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn clear_override(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name, key)): Path<(String, String, String)>,
    Query(p): Query<ClearParams>,
) -> Result<Json<Vec<ConfigEntry>>, ApiError> {
    Ok(Json(s.platform.ops(&who).set_config_override(&team, &name, &key, None, &p.reason).await?))
}
