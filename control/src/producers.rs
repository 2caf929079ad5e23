//! Producer tokens: each lets an application append events to one stream through the ingest
//! proxy, and nothing else. Created by the stream's editors, shown once, stored as a hash.

use crate::auth::{mint, token_hash, Principal};
use crate::goal::{Goal, GoalError};
use crate::model::{Kind, Object, ProducerTokenInfo};
use crate::name::Name;
use crate::store::{new_id, now_ms, Store, StoreError};
use crate::validation::ValidationErrors;
use sqlx::Row;
use std::sync::Arc;

/// Prefix of every producer token.
pub const PRODUCER_PREFIX: &str = "kp_";

/// The stream `who` may change, or why not.
async fn writable_stream(store: &Store, who: &Principal, team: &str, stream: &str) -> Result<Object, GoalError> {
    let object = Goal::new(store, who).get(Kind::Stream, team, stream).await?;
    let team_id = store.get(Kind::Team, "", team).await?.ok_or(GoalError::NotFound)?.id;
    if !who.can_write(Kind::Stream, &team_id) {
        return Err(GoalError::Forbidden);
    }
    Ok(object)
}

/// Creates a producer token for a stream; returns it once with its listing.
pub async fn create(
    store: &Store,
    who: &Principal,
    team: &str,
    stream: &str,
    name: &str,
) -> Result<(ProducerTokenInfo, String), GoalError> {
    Name::parse(name).map_err(|e| ValidationErrors::single("name", e.to_string()))?;
    let object = writable_stream(store, who, team, stream).await?;
    let minted = mint(PRODUCER_PREFIX);
    let (id, now) = (new_id(), now_ms());
    sqlx::query(
        "INSERT INTO producer_tokens (id, stream_id, name, token_hash, prefix, created_by, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&object.id)
    .bind(name)
    .bind(&minted.hash)
    .bind(&minted.prefix)
    .bind(&who.display)
    .bind(now)
    .execute(store.pool())
    .await
    .map_err(StoreError::from)?;
    tracing::info!(stream = %format!("{team}/{stream}"), token = %name, by = %who.display, "Producer token created.");
    store.record_account_event(&who.display, name, "producer token created", &format!("stream {team}/{stream}")).await;
    let info = ProducerTokenInfo { id, name: name.to_owned(), prefix: minted.prefix, created_at: now, revoked: false };
    Ok((info, minted.token))
}

/// The producer tokens of a stream the caller may read.
pub async fn list(
    store: &Store,
    who: &Principal,
    team: &str,
    stream: &str,
) -> Result<Vec<ProducerTokenInfo>, GoalError> {
    let object = Goal::new(store, who).get(Kind::Stream, team, stream).await?;
    let rows = sqlx::query(
        "SELECT id, name, prefix, created_at, revoked_at FROM producer_tokens WHERE stream_id = $1 ORDER BY created_at",
    )
    .bind(&object.id)
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::from)?;
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
        .collect::<Result<_, sqlx::Error>>()
        .map_err(|e| GoalError::Store(e.into()))
}

/// Revokes one producer token of a stream the caller may change.
pub async fn revoke(store: &Store, who: &Principal, team: &str, stream: &str, token_id: &str) -> Result<(), GoalError> {
    let object = writable_stream(store, who, team, stream).await?;
    // A store write: its commit makes ingest look the token up afresh.
    let mut tx = store.write().await?;
    let done = sqlx::query(
        "UPDATE producer_tokens SET revoked_at = $1 WHERE id = $2 AND stream_id = $3 AND revoked_at IS NULL",
    )
    .bind(now_ms())
    .bind(token_id)
    .bind(&object.id)
    .execute(tx.conn())
    .await
    .map_err(StoreError::from)?;
    if done.rows_affected() == 0 {
        return Err(GoalError::NotFound);
    }
    tx.commit().await?;
    tracing::info!(stream = %format!("{team}/{stream}"), token_id = %token_id, by = %who.display, "Producer token revoked.");
    store
        .record_account_event(&who.display, token_id, "producer token revoked", &format!("stream {team}/{stream}"))
        .await;
    Ok(())
}

/// The live stream a producer token may append to, if the token is valid and not revoked, with
/// the producer's identity for counting (the token's hash: the token itself is never kept).
pub async fn stream_for_token(store: &Store, token: &str) -> Result<Option<(Arc<Object>, String)>, StoreError> {
    if !token.starts_with(PRODUCER_PREFIX) {
        return Ok(None);
    }
    let hash = token_hash(token);
    Ok(store.stream_of_producer_token(&hash).await?.map(|stream| (stream, hash)))
}
