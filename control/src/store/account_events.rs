//! The account log: sign-ins (and failed ones) and changes to users, memberships, API tokens and
//! producer tokens, for admins. Recording never fails the action it records: a write error is
//! logged and the action stands (a sign-in must not break because the log is busy).

use crate::model::AccountEvent;
use crate::store::{now_ms, Store, StoreError};
use sqlx::Row;

impl Store {
    /// Records one event. `subject` is whom or what it concerns (a username, a token's name).
    pub async fn record_account_event(&self, actor: &str, subject: &str, action: &str, detail: &str) {
        let written = sqlx::query(
            "INSERT INTO account_events (id, at, actor, subject, action, detail) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(now_ms())
        .bind(actor)
        .bind(subject)
        .bind(action)
        .bind(detail)
        .execute(self.pool())
        .await;
        if let Err(e) = written {
            tracing::error!(error = %e, action, "Account event not recorded.");
        }
    }

    /// The newest `limit` events, newest first.
    pub async fn account_events(&self, limit: i64) -> Result<Vec<AccountEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, actor, subject, action, detail FROM account_events ORDER BY at DESC, id DESC LIMIT $1",
        )
        .bind(limit.clamp(1, 1000))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AccountEvent {
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    subject: r.try_get("subject")?,
                    action: r.try_get("action")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }
}
