//! The console's error type: expected outcomes (sign-in needed, invalid fields, conflicts) travel
//! to the browser as values, so forms can show each message next to its field, with or without
//! JavaScript (leptos encodes the error into the redirect when the form was posted natively).

use keystone_control::ValidationErrors;
use leptos::server_fn::codec::JsonEncoding;
use leptos::server_fn::error::{FromServerFnError, ServerFnErrorErr};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum AppError {
    #[error("Please sign in.")]
    Unauthenticated,
    #[error("Your role does not allow this.")]
    Forbidden,
    #[error("Not found.")]
    NotFound,
    #[error("Please correct the highlighted fields.")]
    Invalid(ValidationErrors),
    #[error("{0}")]
    Conflict(String),
    /// Not a failure: the approval policy held the change back as change request `id`.
    #[error("Submitted for approval as change request #{id}: it needs an admin's approval ({needs}).")]
    PendingApproval { id: i64, needs: String },
    /// A refused sign-in or a throttled request; the message is safe to show as is.
    #[error("{0}")]
    Refused(String),
    #[error("Something went wrong on the server; the details are in its log.")]
    Internal,
    #[error("The request failed: {0}")]
    Transport(String),
}

impl AppError {
    /// Field errors, if this is a validation failure.
    pub fn fields(&self) -> Option<&ValidationErrors> {
        match self {
            AppError::Invalid(v) => Some(v),
            _ => None,
        }
    }
}

impl FromServerFnError for AppError {
    type Encoder = JsonEncoding;

    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        AppError::Transport(value.to_string())
    }

    /// Encodes the error for the response, and gives the response the status that says what
    /// went wrong (403, 404, 422, ...) instead of a bare 500. A plain form post (no JavaScript)
    /// keeps leptos' redirect back to the form, which carries the error in its URL.
    fn ser(&self) -> leptos::server_fn::Bytes {
        #[cfg(feature = "ssr")]
        set_response_status(self);
        // As the trait's own default: an error that cannot be encoded travels as a transport one.
        use leptos::server_fn::Encodes;
        Self::Encoder::encode(self)
            .unwrap_or_else(|e| Self::Encoder::encode(&AppError::Transport(e.to_string())).unwrap_or_default())
    }
}

impl AppError {
    /// The HTTP status this error answers with; `None` keeps the default (500), which the
    /// browser side reads as "decode the error" (a held-back change is not a success to it).
    pub fn status(&self) -> Option<u16> {
        match self {
            AppError::Unauthenticated => Some(401),
            AppError::Forbidden => Some(403),
            AppError::NotFound => Some(404),
            AppError::Invalid(_) => Some(422),
            AppError::Conflict(_) => Some(409),
            AppError::Refused(_) => Some(400),
            AppError::PendingApproval { .. } | AppError::Internal | AppError::Transport(_) => None,
        }
    }
}

#[cfg(feature = "ssr")]
fn set_response_status(e: &AppError) {
    use axum::http::{header::ACCEPT, request::Parts, StatusCode};
    use leptos::prelude::use_context;
    let native_form = use_context::<Parts>()
        .and_then(|p| p.headers.get(ACCEPT).and_then(|v| v.to_str().ok()).map(|v| v.contains("text/html")))
        .unwrap_or(false);
    let Some(response) = use_context::<leptos_axum::ResponseOptions>() else { return };
    // A status set on purpose already (a throttled sign-in's 429) stays.
    if native_form || response.0.read().map(|r| r.status.is_some()).unwrap_or(true) {
        return;
    }
    if let Some(status) = e.status().and_then(|s| StatusCode::from_u16(s).ok()) {
        response.set_status(status);
    }
}

#[cfg(feature = "ssr")]
impl From<keystone_control::goal::GoalError> for AppError {
    fn from(e: keystone_control::goal::GoalError) -> Self {
        use keystone_control::goal::GoalError;
        match e {
            GoalError::Invalid(v) => AppError::Invalid(v),
            GoalError::NotFound => AppError::NotFound,
            GoalError::Forbidden => AppError::Forbidden,
            GoalError::Conflict(m) => AppError::Conflict(m),
            GoalError::Refused(m) => AppError::Refused(m),
            GoalError::ApprovalRequired(r) => AppError::PendingApproval { id: r.id, needs: r.needs.join("; ") },
            GoalError::Store(e) => e.into(),
        }
    }
}

#[cfg(feature = "ssr")]
impl From<keystone_ops::OpsError> for AppError {
    fn from(e: keystone_ops::OpsError) -> Self {
        use keystone_ops::OpsError;
        match e {
            OpsError::Goal(g) => g.into(),
            OpsError::Log(l) => {
                tracing::error!(error = %l, "Console request failed in the log.");
                AppError::Internal
            }
            OpsError::Unavailable(m) => AppError::Refused(m),
        }
    }
}

#[cfg(feature = "ssr")]
impl From<keystone_control::store::StoreError> for AppError {
    fn from(e: keystone_control::store::StoreError) -> Self {
        tracing::error!(error = ?e, "Console request failed in the store.");
        AppError::Internal
    }
}

#[cfg(feature = "ssr")]
impl From<keystone_control::users::UserError> for AppError {
    fn from(e: keystone_control::users::UserError) -> Self {
        match e {
            keystone_control::users::UserError::Invalid(v) => AppError::Invalid(v),
            keystone_control::users::UserError::Store(s) => s.into(),
        }
    }
}

impl From<ValidationErrors> for AppError {
    fn from(v: ValidationErrors) -> Self {
        AppError::Invalid(v)
    }
}
