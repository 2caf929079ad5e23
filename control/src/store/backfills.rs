//! Backfills in the store: each backfill's source, end and state, and its own positions (the
//! route's checkpoints stay where they were).

use crate::backfill::{Backfill, BackfillSource, BackfillState};
use crate::store::{now_ms, Store, StoreError, WriteTx};
use sqlx::Row;

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("backfill: {e}"))
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<Backfill, StoreError> {
    let source: String = r.try_get("source")?;
    let end: String = r.try_get("end_offsets")?;
    let state: String = r.try_get("state")?;
    let partitions: i64 = r.try_get("partitions")?;
    Ok(Backfill {
        id: r.try_get("id")?,
        route_id: r.try_get("route_id")?,
        source: serde_json::from_str(&source).map_err(corrupt)?,
        topic: r.try_get("topic")?,
        partitions: partitions as u32,
        end: serde_json::from_str(&end).map_err(corrupt)?,
        state: BackfillState::parse(&state).ok_or_else(|| corrupt(&state))?,
        started_by: r.try_get("started_by")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        positions: Vec::new(),
    })
}

const SELECT: &str = "SELECT id, route_id, source, topic, partitions, end_offsets, state, started_by, \
     started_at, finished_at FROM backfills";

impl Store {
    /// Running backfills, with their positions.
    pub async fn running_backfills(&self) -> Result<Vec<Backfill>, StoreError> {
        let rows = sqlx::query(&format!("{SELECT} WHERE state = 'running'")).fetch_all(self.pool()).await?;
        self.with_positions(rows).await
    }

    /// A route's backfills, newest first, with their positions.
    pub async fn backfills(&self, route_id: &str) -> Result<Vec<Backfill>, StoreError> {
        let rows = sqlx::query(&format!("{SELECT} WHERE route_id = $1 ORDER BY started_at DESC"))
            .bind(route_id)
            .fetch_all(self.pool())
            .await?;
        self.with_positions(rows).await
    }

    async fn with_positions(&self, rows: Vec<sqlx::any::AnyRow>) -> Result<Vec<Backfill>, StoreError> {
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut b = from_row(&r)?;
            b.positions = self.backfill_positions(&b.id).await?;
            out.push(b);
        }
        Ok(out)
    }

    pub async fn backfill_positions(&self, backfill_id: &str) -> Result<Vec<(u32, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT partition_no, next_offset FROM backfill_checkpoints WHERE backfill_id = $1 ORDER BY partition_no",
        )
        .bind(backfill_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let (p, o): (i64, i64) = (r.try_get("partition_no")?, r.try_get("next_offset")?);
                Ok((p as u32, o as u64))
            })
            .collect()
    }

    /// Saves a backfill's positions, only while `lease` (the reconciler's) is still held.
    pub async fn commit_backfill_positions(
        &self,
        backfill_id: &str,
        positions: &[(u32, u64)],
        lease: Option<&crate::store::lease::Lease>,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_fenced(lease).await?;
        for &(p, o) in positions {
            sqlx::query(
                "INSERT INTO backfill_checkpoints (backfill_id, partition_no, next_offset) VALUES ($1, $2, $3) \
                 ON CONFLICT (backfill_id, partition_no) DO UPDATE SET next_offset = excluded.next_offset",
            )
            .bind(backfill_id)
            .bind(i64::from(p))
            .bind(o as i64)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await
    }

    /// Ends a running backfill (done or cancelled); false if it was not running.
    pub async fn finish_backfill(&self, id: &str, state: BackfillState) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let done = sqlx::query("UPDATE backfills SET state = $1, finished_at = $2 WHERE id = $3 AND state = 'running'")
            .bind(state.as_str())
            .bind(now_ms())
            .bind(id)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }
}

/// A running backfill to record.
pub(crate) struct NewBackfill<'a> {
    pub id: &'a str,
    pub route_id: &'a str,
    pub source: &'a BackfillSource,
    pub topic: &'a str,
    pub partitions: u32,
    pub end: &'a [(u32, u64)],
    pub by: &'a str,
}

/// Writes a running backfill (a unique index allows one running backfill per route: a second
/// is a unique violation).
pub(crate) async fn insert_running(tx: &mut WriteTx, b: NewBackfill<'_>) -> Result<(), StoreError> {
    let source = serde_json::to_string(b.source).map_err(corrupt)?;
    let end_json = serde_json::to_string(b.end).map_err(corrupt)?;
    sqlx::query(
        "INSERT INTO backfills (id, route_id, source, topic, partitions, end_offsets, state, started_by, started_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, $8)",
    )
    .bind(b.id)
    .bind(b.route_id)
    .bind(source)
    .bind(b.topic)
    .bind(i64::from(b.partitions))
    .bind(end_json)
    .bind(b.by)
    .bind(now_ms())
    .execute(tx.conn())
    .await?;
    Ok(())
}
