//! Server-side state handed to every server function through Leptos context.

use axum::extract::FromRef;
use keystone_control::auth::{principal_for_user, LoginLimiter, Principal};
use keystone_control::store::{now_ms, Store};
use keystone_ops::Platform;
use leptos::prelude::*;
use std::sync::Arc;
use tower_sessions::Session;

use crate::error::AppError;

/// Session keys.
pub const SESSION_USER: &str = "user_id";
pub const SESSION_LOGIN_AT: &str = "login_at";

#[derive(Clone, FromRef)]
pub struct AppState {
    pub leptos_options: LeptosOptions,
    pub limiter: Arc<LoginLimiter>,
    /// The header a trusted reverse proxy puts the client's address in (e.g. `X-Forwarded-For`;
    /// its last entry, the one the proxy added, counts). Without it, the connection's peer.
    pub client_ip_header: Option<String>,
    /// A session older than this is ended however active it is.
    pub session_absolute_ms: i64,
    /// The platform's handles, shared with the JSON API: server functions call its operations.
    pub platform: Platform,
}

pub fn app_state() -> Result<AppState, AppError> {
    use_context::<AppState>().ok_or_else(|| {
        tracing::error!("AppState missing from the server function context.");
        AppError::Internal
    })
}

pub async fn session() -> Result<Session, AppError> {
    leptos_axum::extract::<Session>().await.map_err(|e| {
        tracing::error!(error = %e, "Session layer missing.");
        AppError::Internal
    })
}

/// The signed-in user, or `Unauthenticated`. Enforces the absolute session lifetime; the idle
/// timeout is enforced by the session layer's expiry.
pub async fn principal() -> Result<Principal, AppError> {
    Ok(optional_principal().await?.ok_or(AppError::Unauthenticated)?.1)
}

pub async fn optional_principal() -> Result<Option<(AppState, Principal)>, AppError> {
    let state = app_state()?;
    let session = session().await?;
    let user: Option<String> = session.get(SESSION_USER).await.map_err(|_| AppError::Internal)?;
    let Some(user) = user else { return Ok(None) };
    let login_at: i64 = session.get(SESSION_LOGIN_AT).await.map_err(|_| AppError::Internal)?.unwrap_or(0);
    if now_ms() - login_at > state.session_absolute_ms {
        session.flush().await.map_err(|_| AppError::Internal)?;
        return Ok(None);
    }
    match principal_for_user(&state.platform.store, &user).await? {
        Some(p) => Ok(Some((state, p))),
        None => {
            session.flush().await.map_err(|_| AppError::Internal)?;
            Ok(None)
        }
    }
}

/// The store and the signed-in caller, the start of nearly every server function.
pub async fn caller() -> Result<(Store, Principal), AppError> {
    let (state, p) = signed_in().await?;
    Ok((state.platform.store, p))
}

/// The whole state and the signed-in caller, for server functions that need more than the store.
///
/// Context must be read before a server function's first `.await`: when the server renders a
/// page, the router may build the page twice and drop the first build's owner while its
/// resources are still loading; reading context after an await then fails, and that failure was
/// sent to the browser as the first build's resource value (a hydration mismatch).
pub async fn signed_in() -> Result<(AppState, Principal), AppError> {
    optional_principal().await?.ok_or(AppError::Unauthenticated)
}
