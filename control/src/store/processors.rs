//! Processors' checkpoints in the store: input positions and operator state in one row, so a
//! restore always pairs the state with the positions it was taken at (exactly-once state).

use crate::store::{now_ms, Store, StoreError};
use sqlx::Row;

/// A processor's last checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorCheckpoint {
    /// (partition, next offset) of its input.
    pub positions: Vec<(u32, u64)>,
    /// The operator's snapshot (Arrow IPC; empty for a stateless query).
    pub state: Vec<u8>,
    pub taken_at: i64,
}

impl Store {
    pub async fn processor_checkpoint(&self, processor_id: &str) -> Result<Option<ProcessorCheckpoint>, StoreError> {
        let row = sqlx::query("SELECT positions, state, taken_at FROM processor_checkpoints WHERE processor_id = $1")
            .bind(processor_id)
            .fetch_optional(self.pool())
            .await?;
        let Some(r) = row else { return Ok(None) };
        let positions: String = r.try_get("positions")?;
        let positions =
            serde_json::from_str(&positions).map_err(|e| StoreError::Corrupt(format!("processor positions: {e}")))?;
        Ok(Some(ProcessorCheckpoint { positions, state: r.try_get("state")?, taken_at: r.try_get("taken_at")? }))
    }

    /// Replaces the processor's checkpoint (one statement: positions and state move together).
    pub async fn put_processor_checkpoint(
        &self,
        processor_id: &str,
        positions: &[(u32, u64)],
        state: &[u8],
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(positions).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO processor_checkpoints (processor_id, positions, state, taken_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (processor_id) DO UPDATE SET positions = excluded.positions, state = excluded.state, \
             taken_at = excluded.taken_at",
        )
        .bind(processor_id)
        .bind(json)
        .bind(state.to_vec())
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Forgets a processor's checkpoint (deleted processors; a version whose state is incompatible).
    pub async fn drop_processor_checkpoint(&self, processor_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM processor_checkpoints WHERE processor_id = $1")
            .bind(processor_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
