//! The signed-in user's session as every page sees it: who they are (for the navigation and
//! what it offers), and signing out. Sign-in itself is a page (`pages::auth`).

use crate::error::AppError;
use keystone_control::Role;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

/// The signed-in user as the console shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Me {
    pub username: String,
    pub role: Role,
    pub teams: Vec<String>,
    /// Teams whose objects this user may change (every team for admins).
    pub writable_teams: Vec<String>,
    /// Change requests waiting for this user's decision (admins), for the navigation.
    pub pending_approvals: i64,
}

#[server(endpoint = "whoami")]
pub async fn whoami() -> Result<Option<Me>, AppError> {
    use keystone_control::goal::Goal;
    let Some((state, p)) = crate::state::optional_principal().await? else { return Ok(None) };
    let writable_teams = if p.is_admin() {
        Goal::new(&state.platform.store, &p)
            .list(keystone_control::Kind::Team)
            .await?
            .into_iter()
            .map(|t| t.name)
            .collect()
    } else {
        p.writable_teams().map(|t| t.name.clone()).collect()
    };
    let pending_approvals =
        if p.is_admin() { state.platform.store.pending_change_requests_for(&p.user_id).await? } else { 0 };
    Ok(Some(Me {
        pending_approvals,
        username: p.display,
        role: p.role,
        teams: p.teams.iter().map(|t| keystone_control::users::TeamGrant::display(&t.name, t.role)).collect(),
        writable_teams,
    }))
}

/// Ends the session on the server (not only the cookie).
#[server(endpoint = "logout")]
pub async fn logout() -> Result<(), AppError> {
    let session = crate::state::session().await?;
    session.flush().await.map_err(|_| AppError::Internal)?;
    leptos_axum::redirect("/login");
    Ok(())
}
