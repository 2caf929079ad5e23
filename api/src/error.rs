use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use keystone_control::goal::GoalError;
use keystone_control::{FieldError, ValidationErrors};
use serde::Serialize;

/// The one error shape of the API.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `invalid`, `unauthenticated`, `forbidden`, `not_found`,
    /// `conflict`, `internal`.
    pub code: &'static str,
    pub message: String,
    /// The first offending field, when the error is about input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every offending field, when there are several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

/// An API failure, rendered as [`ErrorBody`] with the matching status.
#[derive(Debug)]
pub enum ApiError {
    Unauthenticated,
    Goal(GoalError),
    /// The log could not be read; retry later.
    Log(keystone_engine::log::LogError),
    /// A dependency (a sink, a job) cannot serve the request now; retry later.
    Unavailable(String),
}

impl From<GoalError> for ApiError {
    fn from(e: GoalError) -> Self {
        ApiError::Goal(e)
    }
}

impl From<keystone_ops::OpsError> for ApiError {
    fn from(e: keystone_ops::OpsError) -> Self {
        use keystone_ops::OpsError;
        match e {
            OpsError::Goal(g) => ApiError::Goal(g),
            OpsError::Log(l) => ApiError::Log(l),
            OpsError::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(e: ValidationErrors) -> Self {
        ApiError::Goal(GoalError::Invalid(e))
    }
}

impl From<keystone_control::store::StoreError> for ApiError {
    fn from(e: keystone_control::store::StoreError) -> Self {
        ApiError::Goal(GoalError::Store(e))
    }
}

/// What a change held back by the approval policy answers (202 Accepted): nothing is applied
/// yet; the change request says what waits, and why.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PendingBody {
    pub message: String,
    pub change_request: keystone_control::approvals::ChangeRequest,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, details) = match self {
            ApiError::Goal(GoalError::ApprovalRequired(request)) => {
                let message = GoalError::ApprovalRequired(request.clone()).to_string();
                return (StatusCode::ACCEPTED, Json(PendingBody { message, change_request: *request })).into_response();
            }
            ApiError::Goal(GoalError::Refused(m)) => (StatusCode::FORBIDDEN, "forbidden", m, vec![]),
            ApiError::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "send a valid API token as 'Authorization: Bearer ks_...'".to_owned(),
                vec![],
            ),
            ApiError::Goal(GoalError::Invalid(v)) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid", v.to_string(), v.0),
            ApiError::Goal(GoalError::NotFound) => {
                (StatusCode::NOT_FOUND, "not_found", "no such object".to_owned(), vec![])
            }
            ApiError::Goal(GoalError::Forbidden) => {
                (StatusCode::FORBIDDEN, "forbidden", "your role does not allow this change".to_owned(), vec![])
            }
            ApiError::Goal(GoalError::Conflict(m)) => (StatusCode::CONFLICT, "conflict", m, vec![]),
            ApiError::Log(e) => {
                tracing::error!(error = %e, "API request failed in the log.");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the log could not be read; retry later".to_owned(),
                    vec![],
                )
            }
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m, vec![]),
            ApiError::Goal(GoalError::Store(e)) => {
                tracing::error!(error = ?e, "API request failed in the store.");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log".to_owned(), vec![])
            }
        };
        respond(status, code, message, details)
    }
}

/// Renders the one error shape; every API and ingest error goes through here.
pub(crate) fn respond(status: StatusCode, code: &'static str, message: String, details: Vec<FieldError>) -> Response {
    let field = details.first().map(|d| d.field.clone());
    (status, Json(ErrorBody { error: ErrorDetail { code, message, field, details } })).into_response()
}
