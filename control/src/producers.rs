//! Producer tokens: each lets an application append events to one stream through the ingest
//! proxy, and nothing else. Created by the stream's editors, shown once, stored as a hash.

use crate::auth::{mint, token_hash, Principal};
use crate::goal::{Goal, GoalError};
use crate::model::{Kind, Object, ProducerTokenInfo};
use crate::name::Name;
use crate::store::{new_id, now_ms, Store, StoreError};
use crate::validation::ValidationErrors;
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
    store.insert_producer_token(&id, &object.id, name, &minted, &who.display, now).await?;
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
    Ok(store.producer_tokens(&object.id).await?)
}

/// Revokes one producer token of a stream the caller may change.
pub async fn revoke(store: &Store, who: &Principal, team: &str, stream: &str, token_id: &str) -> Result<(), GoalError> {
    let object = writable_stream(store, who, team, stream).await?;
    if !store.revoke_producer_token(&object.id, token_id).await? {
        return Err(GoalError::NotFound);
    }
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
