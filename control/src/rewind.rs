//! Rewinds: moving a stopped route's job to other positions in its stream (the earliest
//! retained event, a time, a savepoint, or a checkpoint of its bounded history) so it
//! re-delivers from there. `plan_rewind` is the
//! pure estimate shown before anything changes (the dry run).

use serde::{Deserialize, Serialize};

/// Where a rewind goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "to")]
pub enum RewindTo {
    /// The oldest event each partition still retains.
    Earliest,
    /// The first event ingested at or after this time (ms since the epoch).
    Timestamp { timestamp: i64 },
    /// The positions a savepoint of the route recorded.
    Savepoint { savepoint: String },
    /// The positions of one entry of the route's checkpoint history (by id).
    Checkpoint { checkpoint: i64 },
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct PartitionRewind {
    pub partition: u32,
    /// The committed position now (next offset to deliver).
    pub from: u64,
    pub to: u64,
}

/// What a rewind does: per partition, and in total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct RewindPlan {
    pub partitions: Vec<PartitionRewind>,
    /// Events delivered before that will be delivered again.
    pub redelivered: u64,
    /// Events not delivered yet that will be skipped (a savepoint ahead of the job).
    pub skipped: u64,
}

/// The plan from the committed positions to the target ones (partitions without a commit are
/// at 0; partitions the target does not name stay where they are).
pub fn plan_rewind(committed: &[(u32, u64)], target: &[(u32, u64)]) -> RewindPlan {
    let mut partitions: Vec<PartitionRewind> = target
        .iter()
        .map(|&(partition, to)| {
            let from = committed.iter().find(|(p, _)| *p == partition).map_or(0, |(_, o)| *o);
            PartitionRewind { partition, from, to }
        })
        .collect();
    partitions.sort_by_key(|p| p.partition);
    let redelivered = partitions.iter().map(|p| p.from.saturating_sub(p.to)).sum();
    let skipped = partitions.iter().map(|p| p.to.saturating_sub(p.from)).sum();
    RewindPlan { partitions, redelivered, skipped }
}

/// What a rewind needs besides the log (see `Goal::rewind_inputs`). Only `rewind_inputs`
/// builds one, after checking the caller may operate the route, so `Goal::rewind_route` need not
/// check again.
#[cfg(feature = "store")]
pub struct RewindInputs {
    pub(crate) route: crate::Object,
    pub(crate) describe: String,
    pub topic: String,
    pub partitions: u32,
    /// The recorded positions of a savepoint or checkpoint (empty for other targets).
    pub recorded: Vec<(u32, u64)>,
}

#[cfg(feature = "store")]
impl RewindInputs {
    pub fn route_id(&self) -> &str {
        &self.route.id
    }
}

/// A named position of a route's job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct Savepoint {
    pub name: String,
    /// (partition, next offset to deliver) pairs.
    #[cfg_attr(feature = "store", schema(value_type = Vec<Vec<u64>>))]
    pub positions: Vec<(u32, u64)>,
    pub created_at: i64,
    pub created_by: String,
}

/// How often, at most, the automatic checkpoints of a route are copied into its history, and
/// how many copies are kept (an hour's worth at one a minute).
pub const CHECKPOINT_HISTORY_EVERY_MS: i64 = 60_000;
pub const CHECKPOINT_HISTORY_KEEP: i64 = 60;

/// An entry of a route's checkpoint history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct HistoricCheckpoint {
    pub id: i64,
    pub taken_at: i64,
    /// (partition, next offset to deliver) pairs.
    #[cfg_attr(feature = "store", schema(value_type = Vec<Vec<u64>>))]
    pub positions: Vec<(u32, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_counts_events_delivered_again_and_skipped() {
        let plan = plan_rewind(&[(0, 100), (1, 40)], &[(1, 10), (0, 60), (2, 0)]);
        assert_eq!(
            plan.partitions,
            [
                PartitionRewind { partition: 0, from: 100, to: 60 },
                PartitionRewind { partition: 1, from: 40, to: 10 },
                PartitionRewind { partition: 2, from: 0, to: 0 },
            ]
        );
        assert_eq!((plan.redelivered, plan.skipped), (70, 0));
        let ahead = plan_rewind(&[(0, 5)], &[(0, 25)]);
        assert_eq!((ahead.redelivered, ahead.skipped), (0, 20));
    }

    #[test]
    fn targets_read_from_json_by_kind() {
        let t: RewindTo = serde_json::from_str(r#"{"to": "timestamp", "timestamp": 1700000000000}"#).unwrap();
        assert_eq!(t, RewindTo::Timestamp { timestamp: 1_700_000_000_000 });
        let s: RewindTo = serde_json::from_str(r#"{"to": "savepoint", "savepoint": "before-v2"}"#).unwrap();
        assert_eq!(s, RewindTo::Savepoint { savepoint: "before-v2".into() });
        let c: RewindTo = serde_json::from_str(r#"{"to": "checkpoint", "checkpoint": 12}"#).unwrap();
        assert_eq!(c, RewindTo::Checkpoint { checkpoint: 12 });
        assert!(serde_json::from_str::<RewindTo>(r#"{"to": "yesterday"}"#).is_err());
    }
}

#[cfg(feature = "store")]
mod store {
    use super::*;
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
            let rows = sqlx::query(
                "SELECT id, taken_at, positions FROM checkpoint_history WHERE route_id = $1 ORDER BY id DESC",
            )
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
}
