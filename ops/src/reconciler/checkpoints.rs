//! Where jobs keep their positions and report their phases: the source-of-truth database.

use super::*;
use keystone_engine::job::CheckpointError;

/// Where a job's positions are kept: the route's checkpoints, or a backfill's own (so the
/// route's position in its stream stays where it was).
pub(super) enum JobCheckpoints {
    Route(StoreCheckpoints),
    Backfill { store: Store, id: String, lease: Option<Lease> },
}

impl CheckpointStore for JobCheckpoints {
    async fn load(&self, route_id: &str) -> Result<HashMap<u32, u64>, CheckpointError> {
        match self {
            JobCheckpoints::Route(c) => c.load(route_id).await,
            JobCheckpoints::Backfill { store, id, .. } => {
                Ok(store.backfill_positions(id).await.map_err(CheckpointError::new)?.into_iter().collect())
            }
        }
    }

    async fn commit(&self, route_id: &str, positions: &[(u32, u64)]) -> Result<(), CheckpointError> {
        match self {
            JobCheckpoints::Route(c) => c.commit(route_id, positions).await,
            JobCheckpoints::Backfill { store, id, lease } => {
                store.commit_backfill_positions(id, positions, lease.as_ref()).await.map_err(CheckpointError::new)
            }
        }
    }
}

/// Checkpoints in the source-of-truth database. The first commit of a job, then one a minute
/// at most, is also copied into the route's bounded checkpoint history (a rewind target).
pub(super) struct StoreCheckpoints {
    store: Store,
    /// The reconciler's lease the job was started under: commits are fenced by it.
    lease: Option<Lease>,
    /// When this job last copied its checkpoints into the history (ms; 0: not yet).
    last_snapshot: std::sync::atomic::AtomicI64,
}

impl StoreCheckpoints {
    pub(super) fn new(store: Store, lease: Option<Lease>) -> Self {
        StoreCheckpoints { store, lease, last_snapshot: Default::default() }
    }
}

impl CheckpointStore for StoreCheckpoints {
    async fn load(&self, route_id: &str) -> Result<HashMap<u32, u64>, CheckpointError> {
        let saved = self.store.checkpoints(route_id).await.map_err(CheckpointError::new)?;
        Ok(saved.into_iter().map(|c| (c.partition, c.next_offset)).collect())
    }

    async fn commit(&self, route_id: &str, positions: &[(u32, u64)]) -> Result<(), CheckpointError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.store.commit_checkpoints(route_id, positions, self.lease.as_ref()).await.map_err(CheckpointError::new)?;
        let now = keystone_control::store::now_ms();
        let last = self.last_snapshot.load(Relaxed);
        if now - last >= keystone_control::rewind::CHECKPOINT_HISTORY_EVERY_MS {
            self.last_snapshot.store(now, Relaxed);
            // The commit itself is done: a failed copy only costs a history entry.
            if let Err(e) = self.store.snapshot_checkpoints(route_id).await {
                tracing::warn!(route_id, error = %e, "Checkpoint history not written.");
            }
        }
        Ok(())
    }
}

/// Records a job's phase changes in the database.
pub(super) struct StoreObserver {
    pub(super) store: Store,
    pub(super) route_id: String,
    pub(super) version: i64,
    /// A worker's name: it reports the phase of its part of the shared job.
    pub(super) part_of: Option<String>,
}

impl JobObserver for StoreObserver {
    async fn report(&self, r: PhaseReport) {
        let change = PhaseChange {
            route_id: &self.route_id,
            version: self.version,
            to: r.phase,
            cause: &r.cause,
            error: r.error.as_deref(),
            restart: r.restart,
            reporter: self.part_of.as_deref(),
        };
        if let Err(e) = self.store.record_phase(change).await {
            tracing::warn!(route_id = %self.route_id, error = %e, "Cannot record a job phase.");
        }
    }
}
