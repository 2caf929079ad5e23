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
impl From<keystone_control::store::StoreError> for AppError {
    fn from(e: keystone_control::store::StoreError) -> Self {
        tracing::error!(error = ?e, "Console request failed in the store.");
        AppError::Internal
    }
}

#[cfg(feature = "ssr")]
impl From<keystone_control::auth::UserError> for AppError {
    fn from(e: keystone_control::auth::UserError) -> Self {
        match e {
            keystone_control::auth::UserError::Invalid(v) => AppError::Invalid(v),
            keystone_control::auth::UserError::Store(s) => s.into(),
        }
    }
}

impl From<ValidationErrors> for AppError {
    fn from(v: ValidationErrors) -> Self {
        AppError::Invalid(v)
    }
}
