//! Change requests and the approval policy over the API, read-only: scripts and `keystone
//! apply` follow a held-back change here. Decisions and policy edits are made by admins in the
//! console: API tokens never carry the admin role, so a leaked CI token cannot approve the
//! change it just submitted.

use crate::caller::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::ApiState;
use axum::extract::{Path, Query, State};
use axum::Json;
use keystone_control::approvals::{ApprovalPolicy, ChangeRequest, RequestState};
use keystone_control::goal::Goal;
use keystone_control::store::approvals::RequestFilter;
use keystone_control::ValidationErrors;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListParams {
    /// pending, approved, rejected or stale.
    pub state: Option<String>,
    /// Only the caller's own requests.
    #[serde(default)]
    pub mine: bool,
    pub limit: Option<i64>,
}

/// Change requests the caller may see (admins: all; others: their teams'), newest first.
#[utoipa::path(get, path = "/api/v1/change-requests", operation_id = "list_change_requests", params(ListParams),
    responses((status = 200, body = [ChangeRequest]), (status = 422, body = ErrorBody)))]
pub async fn list(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Query(p): Query<ListParams>,
) -> Result<Json<Vec<ChangeRequest>>, ApiError> {
    let state = match p.state.as_deref() {
        None | Some("") => None,
        Some(st) => Some(
            RequestState::parse(st)
                .ok_or_else(|| ValidationErrors::single("state", "must be pending, approved, rejected or stale"))?,
        ),
    };
    let filter =
        RequestFilter { state, requester_id: p.mine.then(|| who.user_id.clone()), limit: p.limit.unwrap_or(100) };
    Ok(Json(Goal::new(&s.platform.store, &who).change_requests(&filter).await?))
}

/// One change request, with its diff and decision.
#[utoipa::path(get, path = "/api/v1/change-requests/{id}", params(("id" = i64, Path)),
    responses((status = 200, body = ChangeRequest), (status = 404, body = ErrorBody)))]
pub async fn get_one(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path(id): Path<i64>,
) -> Result<Json<ChangeRequest>, ApiError> {
    Ok(Json(Goal::new(&s.platform.store, &who).change_request(id).await?))
}

/// The approval policy in force, and its version (0: none declared, nothing needs approval).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PolicyView {
    pub policy: ApprovalPolicy,
    pub version: i64,
}

/// The approval policy (any signed-in caller may read it).
#[utoipa::path(get, path = "/api/v1/policies/approvals", responses((status = 200, body = PolicyView)))]
pub async fn get_policy(State(s): State<ApiState>, Caller(who): Caller) -> Result<Json<PolicyView>, ApiError> {
    let (policy, object) = Goal::new(&s.platform.store, &who).approval_policy().await?;
    Ok(Json(PolicyView { policy, version: object.map_or(0, |o| o.version) }))
}
