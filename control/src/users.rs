//! Account lifecycle, run by admins (console and `keystone admin`): users, their roles per team,
//! disabling and deleting them; and users changing their own password. Every change ends a
//! removed right at once: sessions and API tokens are checked against these tables on every
//! request (see [`crate::auth`]).

use crate::auth::{authenticate, check_password_policy, hash_password, mint, Minted, Principal, TOKEN_PREFIX};
use crate::model::{Kind, Role, TokenInfo, UserInfo};
use crate::name::Name;
use crate::store::accounts::UserWrite;
use crate::store::tokens::NewToken;
use crate::store::{new_id, now_ms, Store, StoreError};
use crate::validation::ValidationErrors;

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
    let mut out = Vec::new();
    for u in store.users().await? {
        out.push(UserInfo {
            teams: store.user_teams(&u.id).await?.into_iter().map(|t| TeamGrant::display(&t.name, t.role)).collect(),
            id: u.id,
            username: u.username,
            role: u.role,
            disabled: u.disabled,
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
    let changed = store.set_disabled(username, disabled.then(now_ms)).await?;
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
    let Some((id, role)) = tx.user_by_name(username).await? else { return Ok(false) };
    if role == Role::Admin && tx.enabled_admins().await? <= 1 {
        return Err(invalid("username", "the last admin cannot be deleted"));
    }
    let tokens = tx.delete_account(&id).await?;
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
    let Some((id, _)) = tx.user_by_name(username).await? else { return Ok(false) };
    let Some(team) = tx.get(Kind::Team, "", &grant.team).await? else {
        return Err(invalid("team", format!("team {:?} does not exist", grant.team)));
    };
    tx.grant(&id, &team.id, grant.role).await?;
    tx.commit().await?;
    let role = grant.role.map_or("their own role".to_owned(), |r| r.to_string());
    store.record_account_event(&who.display, username, "team role set", &format!("{}: {role}", grant.team)).await;
    Ok(true)
}

/// Takes a user out of a team: their sessions lose the team and their tokens for it stop at once.
/// Returns false when they were not a member.
pub async fn remove_membership(store: &Store, who: &Principal, username: &str, team: &str) -> Result<bool, UserError> {
    admins_only(who)?;
    let changed = store.remove_membership(username, team).await?;
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
    store.set_password(&who.user_id, &phc).await?;
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
    let existing = tx.user_by_name(username).await?.map(|(id, _)| id);
    if existing.is_some() && !replace {
        errors.add("username", "is already taken");
    }
    if !errors.is_empty() {
        return Err(UserError::Invalid(errors));
    }
    let is_update = existing.is_some();
    let id = existing.unwrap_or_else(new_id);
    tx.put_user(&id, is_update, UserWrite { username, password_hash: &phc, role }).await?;
    for (team_id, role) in team_ids {
        tx.grant(&id, &team_id, role).await?;
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
    let new = NewToken {
        id: &id,
        name,
        team_id,
        role,
        hash: &hash,
        prefix: &prefix,
        created_by: &creator.user_id,
        created_at: now,
        expires_at,
    };
    store.insert_token(new).await?;
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
