//! Who is calling: an API token, checked on every request.

use crate::error::ApiError;
use crate::ApiState;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use keystone_control::auth::{principal_for_token, Principal};

/// The caller, authenticated by an API token.
pub struct Caller(pub Principal);

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthenticated)?;
        principal_for_token(&state.platform.store, token.trim()).await?.map(Caller).ok_or(ApiError::Unauthenticated)
    }
}
