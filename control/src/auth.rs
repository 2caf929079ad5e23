//! Who is asking, and what they may do: users with argon2id passwords, team memberships,
//! API tokens, and the authorisation rules every entry point applies.

use crate::model::{Kind, Role};
pub use crate::model::{TokenInfo, UserInfo};
use crate::store::{now_ms, Scope, Store, StoreError};
use crate::validation::ValidationErrors;
use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A team a principal belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamRef {
    pub id: String,
    pub name: String,
    /// The principal's role on this team when it differs from their own (roles per team: an
    /// editor of team A may be a viewer of team B).
    #[serde(default)]
    pub role: Option<Role>,
}

/// The authenticated caller of a request: a signed-in user or an API token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Principal {
    pub user_id: String,
    /// What revisions record as the author (`alice`, or `token:deploy-bot` for a token).
    pub display: String,
    pub role: Role,
    pub teams: Vec<TeamRef>,
}

/// The user id of Keystone acting on its own (automatic rollbacks): never a real user's.
pub const SYSTEM_USER_ID: &str = "keystone";

impl Principal {
    /// Keystone itself, with `display` saying which part (e.g. `keystone (stability gate)`).
    pub fn system(display: &str) -> Principal {
        Principal { user_id: SYSTEM_USER_ID.into(), display: display.into(), role: Role::Admin, teams: Vec::new() }
    }

    pub fn is_system(&self) -> bool {
        self.user_id == SYSTEM_USER_ID
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub fn member_of(&self, team_id: &str) -> bool {
        self.teams.iter().any(|t| t.id == team_id)
    }

    /// What the principal may do on a team: admins everything, members their role there (their
    /// own unless the membership says otherwise), others nothing.
    pub fn role_in(&self, team_id: &str) -> Option<Role> {
        if self.is_admin() {
            return Some(Role::Admin);
        }
        self.teams.iter().find(|t| t.id == team_id).map(|t| t.role.unwrap_or(self.role))
    }

    /// The teams whose objects this principal may change (without admins' every team).
    pub fn writable_teams(&self) -> impl Iterator<Item = &TeamRef> {
        self.teams.iter().filter(|t| self.role_in(&t.id) >= Some(Role::Editor))
    }

    /// Viewers and up read their teams' objects; admins read everything.
    pub fn can_read(&self, team_id: &str) -> bool {
        self.is_admin() || self.member_of(team_id)
    }

    /// Editors change their own teams' objects; admins change everything.
    pub fn can_write(&self, kind: Kind, team_id: &str) -> bool {
        match kind {
            Kind::Team | Kind::Policy => self.is_admin(),
            _ => self.role_in(team_id) >= Some(Role::Editor),
        }
    }

    pub fn scope(&self) -> Scope {
        if self.is_admin() {
            Scope::All
        } else {
            Scope::Teams(self.teams.iter().map(|t| t.id.clone()).collect())
        }
    }
}

/// OWASP's argon2id baseline: 19 MiB, 2 passes, 1 lane.
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("static argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub const PASSWORD_MIN: usize = 10;
pub const PASSWORD_MAX: usize = 256;

pub fn check_password_policy(pw: &str) -> Result<(), ValidationErrors> {
    let n = pw.chars().count();
    if n < PASSWORD_MIN {
        return Err(ValidationErrors::single("password", format!("must be at least {PASSWORD_MIN} characters")));
    }
    if n > PASSWORD_MAX {
        return Err(ValidationErrors::single("password", format!("must be at most {PASSWORD_MAX} characters")));
    }
    Ok(())
}

pub fn hash_password(pw: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    hasher().hash_password(pw.as_bytes(), &salt).expect("argon2 hashing cannot fail with valid params").to_string()
}

pub fn verify_password(phc: &str, pw: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| hasher().verify_password(pw.as_bytes(), &h).is_ok())
}

/// Hash checked when the user does not exist, so a wrong name costs as long as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("keystone-timing-equaliser"))
}

/// Checks a username and password. `None` for any failure, without saying which part was wrong.
/// The argon2 work runs on the blocking pool so it never stalls the async workers.
pub async fn authenticate(store: &Store, username: &str, password: &str) -> Result<Option<Principal>, StoreError> {
    let (id, phc) = match store.password_of(username).await? {
        Some((id, phc)) => (Some(id), phc),
        None => (None, dummy_hash().to_owned()),
    };
    let pw = password.to_owned();
    let ok = tokio::task::spawn_blocking(move || verify_password(&phc, &pw)).await.unwrap_or(false);
    match (ok, id) {
        (true, Some(id)) => principal_for_user(store, &id).await,
        _ => Ok(None),
    }
}

/// Loads a user's role and teams (fresh on every request, so a role change, a removal from a team
/// or a disabled account applies at once); `None` for a disabled user.
pub async fn principal_for_user(store: &Store, user_id: &str) -> Result<Option<Principal>, StoreError> {
    let Some((display, role)) = store.active_user(user_id).await? else { return Ok(None) };
    Ok(Some(Principal { user_id: user_id.to_owned(), display, role, teams: store.user_teams(user_id).await? }))
}

/// Prefix of every API token, so leaked tokens are easy to recognise in scanners.
pub const TOKEN_PREFIX: &str = "ks_";

/// SHA-256 of a token: tokens are 256-bit random, so a fast hash suffices and lookups stay O(1).
pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A freshly generated bearer token: the secret (shown once), its hash (stored) and a short
/// prefix (listed, to tell tokens apart).
pub(crate) struct Minted {
    pub token: String,
    pub hash: String,
    pub prefix: String,
}

pub(crate) fn mint(kind_prefix: &str) -> Minted {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = format!("{kind_prefix}{}", hex::encode(bytes));
    Minted { hash: token_hash(&token), prefix: token.chars().take(10).collect(), token }
}

/// Tokens the principal may see: their teams' (all for admins).
pub async fn list_tokens(store: &Store, who: &Principal) -> Result<Vec<TokenInfo>, StoreError> {
    let all = store.all_tokens().await?;
    Ok(all.into_iter().filter(|(team_id, _)| who.can_read(team_id)).map(|(_, t)| t).collect())
}

/// Revokes a token the principal may write to. Returns false when there is no such token.
pub async fn revoke_token(store: &Store, who: &Principal, token_id: &str) -> Result<bool, StoreError> {
    let Some(team_id) = store.token_team(token_id).await? else { return Ok(false) };
    if !who.can_write(Kind::Stream, &team_id) {
        return Ok(false);
    }
    store.revoke_token_now(token_id).await?;
    store.record_account_event(&who.display, token_id, "API token revoked", "").await;
    Ok(true)
}

/// What a token may do: the lesser of its own role and what its creator holds on its team now.
/// A creator who left the team (or whose account is gone) leaves a token that does nothing, so a
/// token never outlives the rights it was cut from.
/// `creator_on_team` is the creator's role on the token's team (`None`: not a member), which
/// overrides their own role below admin.
pub fn token_role(token: Role, creator: Option<Role>, creator_on_team: Option<Option<Role>>) -> Option<Role> {
    let on_team = match creator? {
        Role::Admin => return Some(token),
        own => creator_on_team?.unwrap_or(own),
    };
    Some(token.min(on_team))
}

/// The principal an API token acts as, if it is valid, not revoked, not expired, and its creator still holds
/// rights on its team (see [`token_role`]).
pub async fn principal_for_token(store: &Store, token: &str) -> Result<Option<Principal>, StoreError> {
    if !token.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let Some(t) = store.token_by_hash(&token_hash(token)).await? else { return Ok(None) };
    let Some(role) = token_role(t.role, t.creator_role, t.creator_on_team) else { return Ok(None) };
    Ok(Some(Principal {
        user_id: t.created_by,
        display: format!("token:{}", t.name),
        role,
        teams: vec![TeamRef { id: t.team_id, name: t.team, role: None }],
    }))
}

/// Throttles sign-in attempts: after too many failures in a sliding window, further attempts for
/// that account, or from that address, are refused until the window moves on. The attempts are
/// counted in the database (every server sharing it counts the same ones, and a restart forgets
/// nothing); password checks are bounded per process.
pub struct LoginLimiter {
    max_per_account: usize,
    max_per_address: usize,
    window: std::time::Duration,
    /// Password checks running at once: each takes 19 MiB and a core for a while.
    hashing: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Password checks one process runs at once; further sign-ins are refused at once, not queued.
pub const CONCURRENT_PASSWORD_CHECKS: usize = 4;

/// A counted sign-in attempt: its address row, taken back if the sign-in succeeds.
#[derive(Debug, Clone, Copy)]
pub struct Attempt(i64);

/// How long until one more attempt is allowed, given the attempt times (ms) in the window for the
/// account and the address; `None` when both are under their limits. Pure, unit-tested.
pub fn wait_ms(account: &[i64], address: &[i64], limits: (usize, usize), window_ms: i64, now: i64) -> Option<i64> {
    [(account, limits.0), (address, limits.1)]
        .into_iter()
        .filter(|(times, max)| times.len() >= *max)
        .filter_map(|(times, _)| times.iter().min().map(|oldest| (oldest + window_ms - now).max(1)))
        .max()
}

impl LoginLimiter {
    pub fn new(max_per_account: usize, max_per_address: usize, window: std::time::Duration) -> Self {
        LoginLimiter {
            max_per_account,
            max_per_address,
            window,
            hashing: std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENT_PASSWORD_CHECKS)),
        }
    }

    /// A permit to check one password, or `None` when as many checks as allowed are running.
    pub fn hashing_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.hashing.clone().try_acquire_owned().ok()
    }

    /// Counts a sign-in attempt before its password is checked, so that concurrent attempts
    /// cannot all pass the limit: `Err(wait)` when the account or the address is over its limit
    /// (nothing counted); otherwise the attempt counts as a failure until
    /// [`record_success`](Self::record_success) takes it back.
    pub async fn begin(
        &self,
        store: &Store,
        account: &str,
        address: &str,
    ) -> Result<Result<Attempt, std::time::Duration>, StoreError> {
        let now = now_ms();
        let window = self.window.as_millis() as i64;
        let (user_key, address_key) = (format!("u:{account}"), format!("a:{address}"));
        let limits = (self.max_per_account, self.max_per_address);
        let counted = store
            .count_sign_in([&user_key, &address_key], now, window, |account, address| {
                wait_ms(account, address, limits, window, now)
            })
            .await?;
        Ok(counted.map(Attempt).map_err(|wait| std::time::Duration::from_millis(wait as u64)))
    }

    /// A successful sign-in clears the account's failures and takes back its own attempt from
    /// the address's (the address's earlier failures stay).
    pub async fn record_success(&self, store: &Store, account: &str, attempt: Attempt) -> Result<(), StoreError> {
        store.forget_sign_ins(&format!("u:{account}"), attempt.0).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_acts_with_the_lesser_of_its_role_and_its_creators_current_rights() {
        use Role::*;
        let member = Some(None);
        assert_eq!(token_role(Editor, Some(Editor), member), Some(Editor));
        assert_eq!(token_role(Viewer, Some(Editor), member), Some(Viewer));
        assert_eq!(token_role(Editor, Some(Viewer), member), Some(Viewer), "the creator was made a viewer");
        assert_eq!(token_role(Editor, Some(Editor), Some(Some(Viewer))), Some(Viewer), "a viewer on this team");
        assert_eq!(token_role(Editor, Some(Viewer), Some(Some(Editor))), Some(Editor), "an editor on this team");
        assert_eq!(token_role(Editor, Some(Editor), None), None, "the creator left the team");
        assert_eq!(token_role(Editor, None, member), None, "the creator's account is gone");
        assert_eq!(token_role(Editor, Some(Admin), None), Some(Editor), "admins hold every team");
    }

    #[test]
    fn argon2id_with_owasp_parameters() {
        let h = hash_password("correct horse battery");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse batterY"));
        assert!(!verify_password("not a hash", "x"));
    }

    #[test]
    fn permissions_follow_role_and_team() {
        let team = |id: &str| TeamRef { id: id.into(), name: id.into(), role: None };
        let p = |role| Principal { user_id: "u".into(), display: "u".into(), role, teams: vec![team("a")] };
        let (viewer, editor, admin) = (p(Role::Viewer), p(Role::Editor), p(Role::Admin));
        assert!(viewer.can_read("a") && !viewer.can_read("b"));
        assert!(!viewer.can_write(Kind::Stream, "a"));
        assert!(editor.can_write(Kind::Route, "a") && !editor.can_write(Kind::Route, "b"));
        assert!(!editor.can_write(Kind::Team, "a"));
        assert!(admin.can_read("b") && admin.can_write(Kind::Team, "b"));
        assert_eq!(editor.scope(), Scope::Teams(vec!["a".into()]));
        assert_eq!(admin.scope(), Scope::All);
    }

    #[test]
    fn a_role_on_a_team_overrides_the_users_own() {
        let grant = |id: &str, role| TeamRef { id: id.into(), name: id.into(), role };
        let p = |role, teams| Principal { user_id: "u".into(), display: "u".into(), role, teams };
        let mixed = p(Role::Editor, vec![grant("a", None), grant("b", Some(Role::Viewer))]);
        assert!(mixed.can_write(Kind::Route, "a") && !mixed.can_write(Kind::Route, "b"));
        assert!(mixed.can_read("b"));
        assert_eq!(mixed.role_in("b"), Some(Role::Viewer));
        assert_eq!(mixed.role_in("c"), None);
        assert_eq!(mixed.writable_teams().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["a"]);
        let promoted = p(Role::Viewer, vec![grant("a", Some(Role::Editor)), grant("b", None)]);
        assert!(promoted.can_write(Kind::Stream, "a") && !promoted.can_write(Kind::Stream, "b"));
        let admin = p(Role::Admin, vec![grant("b", Some(Role::Viewer))]);
        assert!(admin.can_write(Kind::Stream, "b"), "admins hold every team whatever a membership says");
    }

    #[test]
    fn limiter_throttles_per_account_and_per_address() {
        let min = 60_000;
        // Two attempts allowed per account, three per address.
        assert_eq!(wait_ms(&[], &[], (2, 3), min, 0), None);
        assert_eq!(wait_ms(&[0], &[0], (2, 3), min, 10), None);
        assert_eq!(wait_ms(&[0, 5], &[0, 5], (2, 3), min, 10), Some(min - 10), "the account is at its limit");
        assert_eq!(wait_ms(&[], &[0, 1, 2], (2, 3), min, 10), Some(min - 10), "the address is at its limit");
        assert_eq!(wait_ms(&[30], &[0, 1, 2], (2, 3), min, 40), Some(min - 40), "the longer wait wins");
        let limiter = LoginLimiter::new(2, 100, std::time::Duration::from_secs(60));
        let permits: Vec<_> = (0..CONCURRENT_PASSWORD_CHECKS).map(|_| limiter.hashing_permit().unwrap()).collect();
        assert!(limiter.hashing_permit().is_none(), "no more than the bound at once");
        drop(permits);
        assert!(limiter.hashing_permit().is_some());
    }

    #[test]
    fn password_policy_names_the_field() {
        assert_eq!(check_password_policy("short").unwrap_err().0[0].field, "password");
        assert!(check_password_policy("long enough pw").is_ok());
    }
}
