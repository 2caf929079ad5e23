//! Committing a job's acknowledged positions: every interval, and when partitions move.

use super::*;

/// Where checkpoints live (the source-of-truth database in production).
pub trait CheckpointStore: Send + Sync + 'static {
    fn load(&self, route_id: &str) -> impl Future<Output = Result<HashMap<u32, u64>, CheckpointError>> + Send;
    fn commit(
        &self,
        route_id: &str,
        positions: &[(u32, u64)],
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send;
}

/// Positions could not be loaded or committed; the cause is the store's own error (a database
/// unreachable, a commit fenced off because another process took the job over).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct CheckpointError(Box<dyn std::error::Error + Send + Sync + 'static>);

impl CheckpointError {
    pub fn new(cause: impl std::error::Error + Send + Sync + 'static) -> CheckpointError {
        CheckpointError(Box::new(cause))
    }
}

/// Commits the acknowledged positions that moved since their last commit: of `partitions`, or of
/// every partition with `None`; then passes them to `mirror` (the group's offsets). The caller
/// holds the job's commit lock.
pub(super) async fn commit_moved<C: CheckpointStore>(
    store: &C,
    route_id: &str,
    stats: &JobStats,
    partitions: Option<&[u32]>,
    mirror: Option<&std::sync::mpsc::Sender<Vec<(u32, u64)>>>,
) -> Result<(), CheckpointError> {
    let moved: Vec<(u32, u64)> = {
        let acked = stats.acked.lock().expect("stats lock");
        let committed = stats.committed.lock().expect("stats lock");
        acked
            .iter()
            .enumerate()
            .map(|(p, a)| (p as u32, *a))
            .filter(|(p, a)| committed.get(*p as usize) != Some(a) && partitions.is_none_or(|ps| ps.contains(p)))
            .collect()
    };
    if moved.is_empty() {
        return Ok(());
    }
    store.commit(route_id, &moved).await?;
    for &(p, a) in &moved {
        stats.set_committed(p, a);
    }
    stats.committed_at.store(crate::now_ms(), Ordering::Relaxed);
    if let Some(mirror) = mirror {
        // The member may have left already (the process is stopping): nothing to mirror to.
        let _ = mirror.send(moved);
    }
    Ok(())
}

/// Commits acknowledged positions that moved, every interval and once more when stopped.
pub(super) async fn checkpoint_loop<C: CheckpointStore>(
    spec: Arc<JobSpec>,
    store: Arc<C>,
    stats: Arc<JobStats>,
    commit: Arc<tokio::sync::Mutex<()>>,
    mirror: Option<std::sync::mpsc::Sender<Vec<(u32, u64)>>>,
    stop: CancellationToken,
) -> Result<(), JobError> {
    let mut tick = tokio::time::interval(spec.checkpoint_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        let _held = commit.lock().await;
        match commit_moved(store.as_ref(), &spec.route_id, &stats, None, mirror.as_ref()).await {
            Ok(()) => {}
            // Not fatal: the positions stay acknowledged and the next tick tries again.
            Err(e) if !stopping => stats.record_error(format!("checkpoint commit failed: {e}")),
            Err(e) => return Err(JobError::Checkpoints(e)),
        }
        if stopping {
            return Ok(());
        }
    }
}
