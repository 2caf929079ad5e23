//! Account lifecycle, run by admins (console and `keystone admin`): users, their roles per team,
//! disabling and deleting them; and users changing their own password. Every change ends a
//! removed right at once: sessions and API tokens are checked against these tables on every
//! request (see [`crate::auth`]).

use crate::auth::{
    authenticate, check_password_policy, hash_password, mint, teams_of, Minted, Principal, TOKEN_PREFIX,
};
use crate::model::{Kind, Role, TokenInfo, UserInfo};
use crate::name::Name;
use crate::store::{new_id, now_ms, Store, StoreError, WriteTx};
use crate::validation::ValidationErrors;
use sqlx::Row;

/// Why an account change was refused.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Invalid(ValidationErrors),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: &str, message: impl Into<String>) -> UserError {
    UserError::Invalid(ValidationErrors::single(field, message))
}

fn admins_only(who: &Principal) -> Result<(), UserError> {
    if who.is_admin() {
        Ok(())
    } else {
        Err(invalid("username", "only admins manage users"))
    }
}

/// A membership as written by admins: `alpha` (the user's own role on it) or `alpha:viewer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamGrant {
    pub team: String,
    /// Overrides the user's role on this team; `None` keeps it.
    pub role: Option<Role>,
}

impl TeamGrant {
    pub fn parse(s: &str) -> Result<TeamGrant, String> {
        let (team, role) = match s.trim().split_once(':') {
            None => (s.trim(), None),
            Some((team, role)) => match Role::parse(role.trim()) {
                Some(Role::Admin) => return Err(format!("{s:?}: admin is a platform role, not a team role")),
                Some(r) => (team.trim(), Some(r)),
                None => return Err(format!("{s:?}: role {:?} is not viewer or editor", role.trim())),
            },
        };
        Name::parse(team).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(TeamGrant { team: team.to_owned(), role })
    }

    /// How listings show it, in the form it is typed.
    pub fn display(team: &str, role: Option<Role>) -> String {
        match role {
            Some(r) => format!("{team}:{r}"),
            None => team.to_owned(),
        }
    }
}

/// Parses `alpha, beta:viewer` grants, every bad one reported under `field`.
pub fn parse_grants(field: &str, items: &[String]) -> Result<Vec<TeamGrant>, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    let grants: Vec<TeamGrant> =
        items.iter().filter_map(|s| TeamGrant::parse(s).map_err(|e| errors.add(field, e)).ok()).collect();
    if errors.is_empty() {
        Ok(grants)
    } else {
        Err(errors)
    }
}

pub async fn list_users(store: &Store) -> Result<Vec<UserInfo>, StoreError> {
    let rows = sqlx::query("SELECT id, username, role, disabled_at FROM users ORDER BY username")
        .fetch_all(store.pool())
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let id: String = r.try_get("id")?;
        let role: String = r.try_get("role")?;
        out.push(UserInfo {
            teams: teams_of(store, &id).await?.into_iter().map(|t| TeamGrant::display(&t.name, t.role)).collect(),
            id,
            username: r.try_get("username")?,
            role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role}")))?,
            disabled: r.try_get::<Option<i64>, _>("disabled_at")?.is_some(),
        });
    }
    Ok(out)
}

/// Disables (or enables again) a user: a disabled user cannot sign in, and their sessions and API
/// tokens stop working on their next request. `who` may not disable themselves. Returns false
/// for an unknown user.
pub async fn set_user_disabled(
    store: &Store,
    who: &Principal,
    username: &str,
    disabled: bool,
) -> Result<bool, UserError> {
    admins_only(who)?;
    if disabled && who.display == username {
        return Err(invalid("username", "you cannot disable yourself"));
    }
    let at = disabled.then(now_ms);
    let done = sqlx::query("UPDATE users SET disabled_at = $1 WHERE username = $2")
        .bind(at)
        .bind(username)
        .execute(store.pool())
        .await
        .map_err(StoreError::from)?;
    let changed = done.rows_affected() > 0;
    if changed {
        let action = if disabled { "user disabled" } else { "user enabled" };
        store.record_account_event(&who.display, username, action, "").await;
    }
    Ok(changed)
}

/// Deletes a user: memberships and the API tokens they created go in the same transaction, so
/// their sessions and tokens stop at once. The revisions they wrote keep their name. Refuses the
/// caller's own account and the last admin. Returns false for an unknown user.
pub async fn delete_user(store: &Store, who: &Principal, username: &str) -> Result<bool, UserError> {
    admins_only(who)?;
    if who.display == username {
        return Err(invalid("username", "you cannot delete yourself"));
    }
    let mut tx = store.write().await?;
    let Some(row) = sqlx::query("SELECT id, role FROM users WHERE username = $1")
        .bind(username)
        .fetch_optional(tx.conn())
        .await
        .map_err(StoreError::from)?
    else {
        return Ok(false);
    };
    let id: String = row.try_get("id").map_err(StoreError::from)?;
    let role: String = row.try_get("role").map_err(StoreError::from)?;
    if role == Role::Admin.as_str() {
        let admins: i64 = sqlx::query("SELECT COUNT(*) AS n FROM users WHERE role = 'admin' AND disabled_at IS NULL")
            .fetch_one(tx.conn())
            .await
            .and_then(|r| r.try_get("n"))
            .map_err(StoreError::from)?;
        if admins <= 1 {
            return Err(invalid("username", "the last admin cannot be deleted"));
        }
    }
    let tokens: i64 = sqlx::query("SELECT COUNT(*) AS n FROM api_tokens WHERE created_by = $1")
        .bind(&id)
        .fetch_one(tx.conn())
        .await
        .and_then(|r| r.try_get("n"))
        .map_err(StoreError::from)?;
    for sql in [
        "DELETE FROM api_tokens WHERE created_by = $1",
        "DELETE FROM memberships WHERE user_id = $1",
        "DELETE FROM users WHERE id = $1",
    ] {
        sqlx::query(sql).bind(&id).execute(tx.conn()).await.map_err(StoreError::from)?;
    }
    tx.commit().await?;
    store.record_account_event(&who.display, username, "user deleted", &format!("{tokens} API token(s) deleted")).await;
    Ok(true)
}

/// Adds a user to a team or changes their role on it (`None`: their own role).
pub async fn set_membership(
    store: &Store,
    who: &Principal,
    username: &str,
    grant: &TeamGrant,
) -> Result<bool, UserError> {
    admins_only(who)?;
    let mut tx = store.write().await?;
    let Some(id) = user_id(&mut tx, username).await? else { return Ok(false) };
    let Some(team) = tx.get(Kind::Team, "", &grant.team).await? else {
        return Err(invalid("team", format!("team {:?} does not exist", grant.team)));
    };
    grant_in(&mut tx, &id, &team.id, grant.role).await?;
    tx.commit().await?;
    let role = grant.role.map_or("their own role".to_owned(), |r| r.to_string());
    store.record_account_event(&who.display, username, "team role set", &format!("{}: {role}", grant.team)).await;
    Ok(true)
}

async fn user_id(tx: &mut WriteTx, username: &str) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query("SELECT id FROM users WHERE username = $1")
        .bind(username)
        .fetch_optional(tx.conn())
        .await?
        .map(|r| r.try_get("id"))
        .transpose()?)
}

async fn grant_in(tx: &mut WriteTx, user_id: &str, team_id: &str, role: Option<Role>) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM memberships WHERE user_id = $1 AND team_id = $2")
        .bind(user_id)
        .bind(team_id)
        .execute(tx.conn())
        .await?;
    sqlx::query("INSERT INTO memberships (user_id, team_id, role) VALUES ($1, $2, $3)")
        .bind(user_id)
        .bind(team_id)
        .bind(role.map(Role::as_str))
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Takes a user out of a team: their sessions lose the team and their tokens for it stop at once.
/// Returns false when they were not a member.
pub async fn remove_membership(store: &Store, who: &Principal, username: &str, team: &str) -> Result<bool, UserError> {
    admins_only(who)?;
    let done = sqlx::query(
        "DELETE FROM memberships WHERE user_id = (SELECT id FROM users WHERE username = $1) \
         AND team_id = (SELECT id FROM objects WHERE kind = 'team' AND name = $2 AND deleted = 0)",
    )
    .bind(username)
    .bind(team)
    .execute(store.pool())
    .await
    .map_err(StoreError::from)?;
    let changed = done.rows_affected() > 0;
    if changed {
        store.record_account_event(&who.display, username, "removed from team", team).await;
    }
    Ok(changed)
}

/// Changes the caller's own password, given the current one. `Ok(false)` when the current one is
/// wrong (nothing changed).
pub async fn change_own_password(store: &Store, who: &Principal, current: &str, new: &str) -> Result<bool, UserError> {
    check_password_policy(new).map_err(|e| {
        let mut v = ValidationErrors::default();
        for f in e.0 {
            v.add("new_password", f.message);
        }
        UserError::Invalid(v)
    })?;
    match authenticate(store, &who.display, current).await? {
        Some(p) if p.user_id == who.user_id => {}
        _ => return Ok(false),
    }
    let pw = new.to_owned();
    let phc = tokio::task::spawn_blocking(move || hash_password(&pw)).await.expect("hashing task");
    sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
        .bind(&phc)
        .bind(&who.user_id)
        .execute(store.pool())
        .await
        .map_err(StoreError::from)?;
    store.record_account_event(&who.display, &who.display, "password changed", "").await;
    Ok(true)
}

/// Creates a user (or, with `replace`, resets an existing user's password and role) and makes
/// them a member of `teams` (`alpha` or `alpha:viewer`, see [`TeamGrant`]). Usernames follow
/// object-name rules.
pub async fn upsert_user(
    store: &Store,
    username: &str,
    password: &str,
    role: Role,
    teams: &[String],
    replace: bool,
) -> Result<String, UserError> {
    let mut errors = ValidationErrors::default();
    if let Err(e) = Name::parse(username) {
        errors.add("username", e.to_string());
    }
    if let Err(e) = check_password_policy(password) {
        errors.0.extend(e.0);
    }
    let grants = parse_grants("teams", teams).unwrap_or_else(|e| {
        errors.0.extend(e.0);
        Vec::new()
    });
    if !errors.is_empty() {
        return Err(UserError::Invalid(errors));
    }
    let pw = password.to_owned();
    let phc = tokio::task::spawn_blocking(move || hash_password(&pw)).await.expect("hashing task");
    let mut tx = store.write().await?;
    let mut team_ids = Vec::new();
    for g in &grants {
        match tx.get(Kind::Team, "", &g.team).await? {
            Some(o) => team_ids.push((o.id, g.role)),
            None => errors.add("teams", format!("team {:?} does not exist", g.team)),
        }
    }
    let existing = user_id(&mut tx, username).await?;
    if existing.is_some() && !replace {
        errors.add("username", "is already taken");
    }
    if !errors.is_empty() {
        return Err(UserError::Invalid(errors));
    }
    let id = match existing {
        Some(id) => {
            sqlx::query(
                "UPDATE users SET password_hash = $1, \
                 role_since = CASE WHEN role = $2 THEN role_since ELSE $4 END, role = $2 WHERE id = $3",
            )
            .bind(&phc)
            .bind(role.as_str())
            .bind(&id)
            .bind(now_ms())
            .execute(tx.conn())
            .await
            .map_err(StoreError::from)?;
            id
        }
        None => {
            let id = new_id();
            sqlx::query(
                "INSERT INTO users (id, username, password_hash, role, created_at, role_since) \
                 VALUES ($1, $2, $3, $4, $5, $5)",
            )
            .bind(&id)
            .bind(username)
            .bind(&phc)
            .bind(role.as_str())
            .bind(now_ms())
            .execute(tx.conn())
            .await
            .map_err(StoreError::from)?;
            id
        }
    };
    for (team_id, role) in team_ids {
        grant_in(&mut tx, &id, &team_id, role).await?;
    }
    tx.commit().await?;
    Ok(id)
}

/// Creates an API token for `team_id` with `role` (viewer or editor). Returns the token, which is
/// shown once and stored only as a hash.
pub async fn create_token(
    store: &Store,
    creator: &Principal,
    name: &str,
    team_id: &str,
    role: Role,
    expires_at: Option<i64>,
) -> Result<(TokenInfo, String), UserError> {
    let mut errors = ValidationErrors::default();
    let now = now_ms();
    if expires_at.is_some_and(|at| at <= now) {
        errors.add("expires_at", "must be in the future");
    }
    if let Err(e) = Name::parse(name) {
        errors.add("name", e.to_string());
    }
    if role == Role::Admin {
        errors.add("role", "tokens are limited to viewer or editor");
    }
    if role == Role::Editor && !creator.can_write(Kind::Stream, team_id) {
        errors.add("role", "you cannot grant more than you hold on this team");
    }
    if !creator.can_read(team_id) {
        errors.add("team", "you are not a member of this team");
    }
    if !errors.is_empty() {
        return Err(UserError::Invalid(errors));
    }
    let Minted { token, hash, prefix } = mint(TOKEN_PREFIX);
    let id = new_id();
    sqlx::query(
        "INSERT INTO api_tokens (id, name, team_id, role, token_hash, prefix, created_by, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&id)
    .bind(name)
    .bind(team_id)
    .bind(role.as_str())
    .bind(&hash)
    .bind(&prefix)
    .bind(&creator.user_id)
    .bind(now)
    .bind(expires_at)
    .execute(store.pool())
    .await
    .map_err(StoreError::from)?;
    let team = creator.teams.iter().find(|t| t.id == team_id).map(|t| t.name.clone()).unwrap_or_default();
    let info = TokenInfo {
        id,
        name: name.to_owned(),
        team,
        role,
        prefix,
        created_at: now,
        revoked: false,
        expires_at,
        expired: false,
    };
    let expiry = expires_at.map_or(String::new(), |at| format!(", expires at {at} ms"));
    let detail = format!("team {}, role {}{expiry}", info.team, role.as_str());
    store.record_account_event(&creator.display, name, "API token created", &detail).await;
    Ok((info, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_team_grant_names_a_team_and_optionally_a_team_role() {
        assert_eq!(TeamGrant::parse(" alpha ").unwrap(), TeamGrant { team: "alpha".into(), role: None });
        assert_eq!(
            TeamGrant::parse("beta:viewer").unwrap(),
            TeamGrant { team: "beta".into(), role: Some(Role::Viewer) }
        );
        assert!(TeamGrant::parse("beta:admin").unwrap_err().contains("platform role"));
        assert!(TeamGrant::parse("beta:owner").unwrap_err().contains("not viewer or editor"));
        assert!(TeamGrant::parse("Bad Name").is_err());
        let errors = parse_grants("teams", &["alpha".into(), "x:y".into()]).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert_eq!(TeamGrant::display("beta", Some(Role::Viewer)), "beta:viewer");
    }
}
