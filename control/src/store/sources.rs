//! Sources' state in the store: what a CDC source must remember across restarts (its snapshot's
//! completion, the last confirmed position) and what the console shows of it (its job's phase,
//! counters, the WAL its slot holds back), readable from any process.

pub use crate::model::SourceStatus;
use crate::store::{now_ms, Store, StoreError};
use sqlx::Row;

impl Store {
    pub async fn source_status(&self, source_id: &str) -> Result<Option<SourceStatus>, StoreError> {
        let row = sqlx::query(
            "SELECT snapshot_lsn, confirmed_lsn, snapshot_rows, snapshot_tables, events, retained_bytes, phase, cause, last_error, \
             updated_at, snapshot_estimate, lag_bytes, lag_ms FROM source_states WHERE source_id = $1",
        )
        .bind(source_id)
        .fetch_optional(self.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(SourceStatus {
            snapshot_lsn: r.try_get::<Option<i64>, _>("snapshot_lsn")?.map(|l| l as u64),
            confirmed_lsn: r.try_get::<i64, _>("confirmed_lsn")? as u64,
            snapshot_rows: r.try_get::<i64, _>("snapshot_rows")? as u64,
            snapshot_tables: serde_json::from_str(&r.try_get::<String, _>("snapshot_tables")?)
                .map_err(|e| StoreError::Corrupt(format!("source tables: {e}")))?,
            events: r.try_get::<i64, _>("events")? as u64,
            retained_bytes: r.try_get("retained_bytes")?,
            phase: r.try_get("phase")?,
            cause: r.try_get("cause")?,
            last_error: r.try_get("last_error")?,
            updated_at: r.try_get("updated_at")?,
            snapshot_estimate: r.try_get::<Option<i64>, _>("snapshot_estimate")?.map(|n| n.max(0) as u64),
            lag_bytes: r.try_get("lag_bytes")?,
            lag_ms: r.try_get("lag_ms")?,
            alerts: Vec::new(),
        }))
    }

    /// Records the source's position and counters.
    pub async fn put_source_position(
        &self,
        source_id: &str,
        snapshot_lsn: Option<u64>,
        confirmed_lsn: u64,
        snapshot_rows: u64,
        snapshot_tables: &[String],
        snapshot_estimate: Option<u64>,
        events: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO source_states (source_id, snapshot_lsn, confirmed_lsn, snapshot_rows, snapshot_tables, \
             events, updated_at, snapshot_estimate) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (source_id) DO UPDATE SET \
             snapshot_lsn = excluded.snapshot_lsn, confirmed_lsn = excluded.confirmed_lsn, \
             snapshot_rows = excluded.snapshot_rows, snapshot_tables = excluded.snapshot_tables, \
             events = excluded.events, updated_at = excluded.updated_at, snapshot_estimate = excluded.snapshot_estimate",
        )
        .bind(source_id)
        .bind(snapshot_lsn.map(|l| l as i64))
        .bind(confirmed_lsn as i64)
        .bind(snapshot_rows as i64)
        .bind(serde_json::to_string(snapshot_tables).expect("names serialise"))
        .bind(events as i64)
        .bind(now_ms())
        .bind(snapshot_estimate.map(|n| n as i64))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Records the source job's phase (and its last error, kept until it runs again).
    pub async fn put_source_phase(
        &self,
        source_id: &str,
        phase: &str,
        cause: &str,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO source_states (source_id, phase, cause, last_error, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (source_id) DO UPDATE SET phase = excluded.phase, cause = excluded.cause, \
             last_error = COALESCE(excluded.last_error, source_states.last_error), updated_at = excluded.updated_at",
        )
        .bind(source_id)
        .bind(phase)
        .bind(cause)
        .bind(error)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Records what was measured of the source's slot (`None`: no slot) and, for a running
    /// source, how old its last change was when appended.
    pub async fn put_source_measures(
        &self,
        source_id: &str,
        retained_bytes: Option<i64>,
        lag_bytes: Option<i64>,
        lag_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO source_states (source_id, retained_bytes, lag_bytes, lag_ms, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (source_id) DO UPDATE SET retained_bytes = excluded.retained_bytes, \
             lag_bytes = excluded.lag_bytes, lag_ms = excluded.lag_ms",
        )
        .bind(source_id)
        .bind(retained_bytes)
        .bind(lag_bytes)
        .bind(lag_ms)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The sources with a recorded state (deleted ones too, until their cleanup is done).
    pub async fn source_state_ids(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT source_id FROM source_states").fetch_all(self.pool()).await?;
        rows.iter().map(|r| Ok(r.try_get("source_id")?)).collect()
    }

    /// Forgets a source's state (a deleted source, once its slot and publication are gone).
    pub async fn drop_source_state(&self, source_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM source_states WHERE source_id = $1").bind(source_id).execute(self.pool()).await?;
        Ok(())
    }
}
