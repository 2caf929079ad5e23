//! API tokens in the store: stored as hashes, listed by prefix, revoked, and resolved to what
//! they may do (see `auth::token_role`).

use crate::model::{ProducerTokenInfo, Role, TokenInfo};
use crate::store::accounts::parse_role;
use crate::store::{now_ms, Store, StoreError};
use sqlx::Row;

/// An unexpired, unrevoked token of a live team, with what its creator holds now.
pub(crate) struct StoredToken {
    pub name: String,
    pub role: Role,
    pub team_id: String,
    pub team: String,
    pub created_by: String,
    /// The creator's own role; `None` when the account is gone or disabled.
    pub creator_role: Option<Role>,
    /// The creator's role on the token's team: `None` when not a member, `Some(None)` when a
    /// member without a team role of their own.
    pub creator_on_team: Option<Option<Role>>,
}

impl Store {
    /// Every token with its team's id (the caller filters by what the principal may read).
    pub(crate) async fn all_tokens(&self) -> Result<Vec<(String, TokenInfo)>, StoreError> {
        let rows = sqlx::query(
            "SELECT k.id, k.name, k.role, k.prefix, k.created_at, k.revoked_at, k.expires_at, k.team_id, o.name AS team \
             FROM api_tokens k JOIN objects o ON o.id = k.team_id ORDER BY o.name, k.name",
        )
        .fetch_all(self.pool())
        .await?;
        let now = now_ms();
        rows.iter()
            .map(|r| {
                let expires_at: Option<i64> = r.try_get("expires_at")?;
                let info = TokenInfo {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    team: r.try_get("team")?,
                    role: parse_role(&r.try_get::<String, _>("role")?)?,
                    prefix: r.try_get("prefix")?,
                    created_at: r.try_get("created_at")?,
                    revoked: r.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
                    expires_at,
                    expired: expires_at.is_some_and(|at| at <= now),
                };
                Ok((r.try_get("team_id")?, info))
            })
            .collect()
    }

    /// The team of a token, if it exists.
    pub(crate) async fn token_team(&self, token_id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT team_id FROM api_tokens WHERE id = $1")
            .bind(token_id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| r.try_get("team_id")).transpose().map_err(Into::into)
    }

    pub(crate) async fn revoke_token_now(&self, token_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(token_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The token stored under `hash`, if it is valid now (see [`StoredToken`]).
    pub(crate) async fn token_by_hash(&self, hash: &str) -> Result<Option<StoredToken>, StoreError> {
        let row = sqlx::query(
            "SELECT k.name, k.role, k.team_id, k.created_by, o.name AS team, u.role AS creator_role, \
             m.user_id AS creator_member, m.role AS creator_team_role \
             FROM api_tokens k \
             JOIN objects o ON o.id = k.team_id AND o.deleted = 0 \
             LEFT JOIN users u ON u.id = k.created_by AND u.disabled_at IS NULL \
             LEFT JOIN memberships m ON m.user_id = k.created_by AND m.team_id = k.team_id \
             WHERE k.token_hash = $1 AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $2)",
        )
        .bind(hash)
        .bind(now_ms())
        .fetch_optional(self.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        let role_of = |column: &str| -> Result<Option<Role>, StoreError> {
            r.try_get::<Option<String>, _>(column)?.map(|s| parse_role(&s)).transpose()
        };
        let creator_on_team = match r.try_get::<Option<String>, _>("creator_member")? {
            None => None,
            Some(_) => Some(role_of("creator_team_role")?),
        };
        Ok(Some(StoredToken {
            name: r.try_get("name")?,
            role: parse_role(&r.try_get::<String, _>("role")?)?,
            team_id: r.try_get("team_id")?,
            team: r.try_get("team")?,
            created_by: r.try_get("created_by")?,
            creator_role: role_of("creator_role")?,
            creator_on_team,
        }))
    }
}

/// A token to store: only its hash and prefix, never the token.
pub(crate) struct NewToken<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub team_id: &'a str,
    pub role: Role,
    pub hash: &'a str,
    pub prefix: &'a str,
    pub created_by: &'a str,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

impl Store {
    pub(crate) async fn insert_token(&self, t: NewToken<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_tokens (id, name, team_id, role, token_hash, prefix, created_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(t.id)
        .bind(t.name)
        .bind(t.team_id)
        .bind(t.role.as_str())
        .bind(t.hash)
        .bind(t.prefix)
        .bind(t.created_by)
        .bind(t.created_at)
        .bind(t.expires_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

impl Store {
    /// Stores a producer token of stream `stream_id` (only its hash and prefix).
    pub(crate) async fn insert_producer_token(
        &self,
        id: &str,
        stream_id: &str,
        name: &str,
        minted: &crate::auth::Minted,
        created_by: &str,
        created_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO producer_tokens (id, stream_id, name, token_hash, prefix, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(stream_id)
        .bind(name)
        .bind(&minted.hash)
        .bind(&minted.prefix)
        .bind(created_by)
        .bind(created_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A stream's producer tokens, oldest first.
    pub(crate) async fn producer_tokens(&self, stream_id: &str) -> Result<Vec<ProducerTokenInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, prefix, created_at, revoked_at FROM producer_tokens WHERE stream_id = $1 ORDER BY created_at",
        )
        .bind(stream_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ProducerTokenInfo {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    prefix: r.try_get("prefix")?,
                    created_at: r.try_get("created_at")?,
                    revoked: r.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
                })
            })
            .collect()
    }

    /// Revokes a producer token of stream `stream_id`; false when there is no such live token.
    /// A store write: its commit makes ingest look the token up afresh.
    pub(crate) async fn revoke_producer_token(&self, stream_id: &str, token_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE producer_tokens SET revoked_at = $1 WHERE id = $2 AND stream_id = $3 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(token_id)
        .bind(stream_id)
        .execute(tx.conn())
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }
}
