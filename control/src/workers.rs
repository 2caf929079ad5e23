//! Worker registration: every process that runs route jobs (a `keystone worker`, or a server in
//! role `all`) renews a row every few seconds with what it holds, so the console can show which
//! process runs which partitions of which job, and which processes went silent.

use serde::{Deserialize, Serialize};

/// How often a process renews its row.
pub const HEARTBEAT_EVERY_MS: i64 = 2_000;
/// A row not renewed for this long is a process that died or lost the database.
pub const SILENT_AFTER_MS: i64 = 3 * HEARTBEAT_EVERY_MS;

/// One job a process holds, and the partitions of its stream it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct HeldJob {
    pub route_id: String,
    /// `team/route`.
    pub route: String,
    pub partitions: Vec<u32>,
}

/// A process running route jobs, as it last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct WorkerStatus {
    pub name: String,
    /// `worker`, or `all` for a server that runs jobs itself.
    pub role: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub jobs: Vec<HeldJob>,
    /// Renewed within `SILENT_AFTER_MS`.
    pub alive: bool,
}

#[cfg(feature = "store")]
mod store {
    use super::*;
    use crate::store::{now_ms, Store, StoreError};
    use sqlx::Row;

    impl Store {
        /// Records what process `name` holds now (creating its row on the first beat), and drops
        /// rows silent for an hour (a dead process is shown that long). Through the serialized
        /// write path: on SQLite a beat must not contend with the other writers.
        pub async fn heartbeat_worker(
            &self,
            name: &str,
            role: &str,
            started_at: i64,
            jobs: &[HeldJob],
        ) -> Result<(), StoreError> {
            let jobs = serde_json::to_string(jobs).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let now = now_ms();
            let mut tx = self.write().await?;
            sqlx::query(
                "INSERT INTO workers (name, role, started_at, heartbeat_at, jobs) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (name) DO UPDATE SET role = excluded.role, started_at = excluded.started_at, \
                   heartbeat_at = excluded.heartbeat_at, jobs = excluded.jobs",
            )
            .bind(name)
            .bind(role)
            .bind(started_at)
            .bind(now)
            .bind(jobs)
            .execute(tx.conn())
            .await?;
            sqlx::query("DELETE FROM workers WHERE heartbeat_at < $1").bind(now - 3_600_000).execute(tx.conn()).await?;
            tx.commit().await?;
            Ok(())
        }

        /// Removes a process's row (it stopped cleanly).
        pub async fn forget_worker(&self, name: &str) -> Result<(), StoreError> {
            let mut tx = self.write().await?;
            sqlx::query("DELETE FROM workers WHERE name = $1").bind(name).execute(tx.conn()).await?;
            tx.commit().await?;
            Ok(())
        }

        /// Every registered process, live ones first, then by name.
        pub async fn workers(&self) -> Result<Vec<WorkerStatus>, StoreError> {
            let now = now_ms();
            let rows = sqlx::query("SELECT name, role, started_at, heartbeat_at, jobs FROM workers ORDER BY name")
                .fetch_all(self.pool())
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let jobs: String = r.try_get("jobs")?;
                let heartbeat_at: i64 = r.try_get("heartbeat_at")?;
                out.push(WorkerStatus {
                    name: r.try_get("name")?,
                    role: r.try_get("role")?,
                    started_at: r.try_get("started_at")?,
                    heartbeat_at,
                    jobs: serde_json::from_str(&jobs).map_err(|e| StoreError::Corrupt(format!("worker jobs: {e}")))?,
                    alive: now - heartbeat_at < SILENT_AFTER_MS,
                });
            }
            out.sort_by_key(|w| !w.alive);
            Ok(out)
        }
    }
}
