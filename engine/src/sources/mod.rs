//! Sources: jobs that bring events into streams from outside (today: PostgreSQL change data
//! capture). A source writes to the log; positions it must survive a restart with (the snapshot's
//! completion, the last confirmed position) are kept through [`SourceOffsets`].

pub mod change;
pub mod postgres_cdc;
pub mod schema;

use crate::log::LogError;
use keystone_control::JobPhase;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The declaration cannot work as it is (a table without a primary key, a refused host).
    #[error("{0}")]
    Config(String),
    /// The source database failed or refused.
    #[error("{0}")]
    Source(String),
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("saving the source's position: {0}")]
    Offsets(#[from] crate::job::CheckpointError),
}

/// What a source must remember across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceState {
    /// The position the initial snapshot was read at, once it was appended whole.
    pub snapshot_lsn: Option<u64>,
    /// The last position confirmed to the source (everything before it is in the log).
    pub confirmed_lsn: u64,
    pub snapshot_rows: u64,
    /// The tables the snapshot read (`schema.table`, sorted): a table added since needs a new
    /// snapshot (its rows from before would be missing otherwise).
    pub snapshot_tables: Vec<String>,
    /// The rows the snapshot expects (the planner's estimate), for its progress.
    pub snapshot_estimate: Option<u64>,
}

/// What a source's slot and stream measure: shown on its page and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotMeasures {
    /// WAL the slot holds back on the database (`None`: no slot).
    pub retained_bytes: Option<i64>,
    /// How far the slot's confirmed position is behind the database's WAL.
    pub lag_bytes: Option<i64>,
    /// How old the last change was (since its commit) when appended; a running source's only.
    pub lag_ms: Option<i64>,
}

/// Where a source's state lives (the database, in production).
pub trait SourceOffsets: Send + Sync + 'static {
    fn load(
        &self,
        source_id: &str,
    ) -> impl Future<Output = Result<Option<SourceState>, crate::job::CheckpointError>> + Send;
    /// Records the position, with the changes appended so far (`events`).
    fn save(
        &self,
        source_id: &str,
        state: &SourceState,
        events: u64,
    ) -> impl Future<Output = Result<(), crate::job::CheckpointError>> + Send;
    /// Makes `stream`'s (`team/name`) schema `schema`, derived from `table`'s columns: called
    /// before the first change of that shape is appended (a no-op when it is the schema already).
    fn schema(
        &self,
        source_id: &str,
        stream: &str,
        table: &str,
        schema: &serde_json::Value,
    ) -> impl Future<Output = Result<(), crate::job::CheckpointError>> + Send;
    /// Counts changes appended to a stream's topic (its ingest counters: the stream's page
    /// charts them as it does producers' events).
    fn appended(&self, _topic: &str, _events: u64, _bytes: u64) {}
    /// Records what was measured of the slot and the stream.
    fn measured(&self, source_id: &str, measures: SlotMeasures) -> impl Future<Output = ()> + Send;
    /// Records the job's phase; `error` is the failure that caused it.
    fn report(
        &self,
        source_id: &str,
        phase: JobPhase,
        cause: &str,
        error: Option<&str>,
    ) -> impl Future<Output = ()> + Send;
}

/// A source's live counters.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Changes appended to the streams.
    pub events: AtomicU64,
    pub snapshot_rows: AtomicU64,
    pub snapshot_done: AtomicBool,
    snapshot_lsn: AtomicU64,
    /// The last position confirmed to the source.
    pub confirmed_lsn: AtomicU64,
    /// The last failure, shown until the source runs again.
    pub last_error: Mutex<Option<String>>,
    pub phase: Mutex<Option<(JobPhase, String)>>,
}

impl SourceStats {
    fn set_snapshot_lsn(&self, lsn: u64) {
        self.snapshot_lsn.store(lsn, Ordering::Relaxed);
    }

    fn snapshot_lsn(&self) -> Option<u64> {
        Some(self.snapshot_lsn.load(Ordering::Relaxed)).filter(|l| *l != 0)
    }

    fn set_phase(&self, phase: JobPhase, cause: impl Into<String>) {
        *self.phase.lock().expect("stats lock") = Some((phase, cause.into()));
    }

    pub fn current_phase(&self) -> Option<(JobPhase, String)> {
        self.phase.lock().expect("stats lock").clone()
    }
}

/// Runs a source until `cancel` fires, restarting it after a failure with a growing delay
/// (1 s doubling to 60 s, back to 1 s after a minute without failing); every phase is reported.
pub async fn supervise<F, Fut, O>(
    source_id: String,
    run: F,
    offsets: std::sync::Arc<O>,
    stats: std::sync::Arc<SourceStats>,
    cancel: CancellationToken,
) where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), SourceError>> + Send,
    O: SourceOffsets,
{
    let mut delay = Duration::from_secs(1);
    let mut cause = "declared".to_owned();
    loop {
        stats.set_phase(JobPhase::Running, cause.clone());
        offsets.report(&source_id, JobPhase::Running, &cause, None).await;
        let started = tokio::time::Instant::now();
        let outcome = run().await;
        if cancel.is_cancelled() {
            stats.set_phase(JobPhase::Stopped, "stopped");
            offsets.report(&source_id, JobPhase::Stopped, "stopped", None).await;
            return;
        }
        let error = match outcome {
            Ok(()) => "the source ended".to_owned(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(source = %source_id, error = %error, "Source failed; restarting.");
        *stats.last_error.lock().expect("stats lock") = Some(error.clone());
        if started.elapsed() > Duration::from_secs(60) {
            delay = Duration::from_secs(1);
        }
        let waiting = format!("crashed, restarting in {} s", delay.as_secs());
        stats.set_phase(JobPhase::Failing, waiting.clone());
        offsets.report(&source_id, JobPhase::Failing, &waiting, Some(&error)).await;
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => {
                stats.set_phase(JobPhase::Stopped, "stopped");
                offsets.report(&source_id, JobPhase::Stopped, "stopped", None).await;
                return;
            }
        }
        delay = (delay * 2).min(Duration::from_secs(60));
        cause = format!("restarted after: {error}");
    }
}
