//! Savepoints and the checkpoint history in the store: the positions a route can be rewound to.

use crate::rewind::*;
use crate::store::{now_ms, Store, StoreError};
use sqlx::Row;

/// The `positions` column of a savepoint or history row: (partition, next offset) pairs.
fn positions(r: &sqlx::any::AnyRow, what: &str) -> Result<Vec<(u32, u64)>, StoreError> {
    let json: String = r.try_get("positions")?;
    serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

impl Store {
    /// Records a savepoint; a name already used for the route is refused (`Ok(false)`).
    pub async fn put_savepoint(
        &self,
        route_id: &str,
        name: &str,
        positions: &[(u32, u64)],
        by: &str,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(positions).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "INSERT INTO savepoints (route_id, name, positions, created_at, created_by) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (route_id, name) DO NOTHING",
        )
        .bind(route_id)
        .bind(name)
        .bind(json)
        .bind(now_ms())
        .bind(by)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Copies the route's committed positions into its checkpoint history and drops all but
    /// the newest `CHECKPOINT_HISTORY_KEEP` entries.
    pub async fn snapshot_checkpoints(&self, route_id: &str) -> Result<(), StoreError> {
        let positions: Vec<(u32, u64)> =
            self.checkpoints(route_id).await?.into_iter().map(|c| (c.partition, c.next_offset)).collect();
        if positions.is_empty() {
            return Ok(());
        }
        let json = serde_json::to_string(&positions).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.write().await?;
        sqlx::query("INSERT INTO checkpoint_history (route_id, taken_at, positions) VALUES ($1, $2, $3)")
            .bind(route_id)
            .bind(now_ms())
            .bind(json)
            .execute(tx.conn())
            .await?;
        sqlx::query(
            "DELETE FROM checkpoint_history WHERE route_id = $1 AND id NOT IN \
             (SELECT id FROM checkpoint_history WHERE route_id = $1 ORDER BY id DESC LIMIT $2)",
        )
        .bind(route_id)
        .bind(CHECKPOINT_HISTORY_KEEP)
        .execute(tx.conn())
        .await?;
        tx.commit().await
    }

    /// A route's checkpoint history, newest first.
    pub async fn checkpoint_history(&self, route_id: &str) -> Result<Vec<HistoricCheckpoint>, StoreError> {
        let rows =
            sqlx::query("SELECT id, taken_at, positions FROM checkpoint_history WHERE route_id = $1 ORDER BY id DESC")
                .bind(route_id)
                .fetch_all(self.pool())
                .await?;
        rows.iter()
            .map(|r| {
                Ok(HistoricCheckpoint {
                    id: r.try_get("id")?,
                    taken_at: r.try_get("taken_at")?,
                    positions: positions(r, "checkpoint history")?,
                })
            })
            .collect()
    }

    /// A route's savepoints, newest first.
    pub async fn savepoints(&self, route_id: &str) -> Result<Vec<Savepoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, positions, created_at, created_by FROM savepoints WHERE route_id = $1 \
             ORDER BY created_at DESC",
        )
        .bind(route_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Savepoint {
                    name: r.try_get("name")?,
                    positions: positions(r, "savepoint")?,
                    created_at: r.try_get("created_at")?,
                    created_by: r.try_get("created_by")?,
                })
            })
            .collect()
    }
}
