//! Worker processes in the store: their heartbeats, the jobs they hold and those jobs' shared
//! metrics.

use crate::store::{now_ms, Store, StoreError};
use crate::workers::*;
use crate::JobMetrics;
use sqlx::Row;
use std::collections::HashMap;

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

    /// The processes `who` may see (see [`visible_to`]).
    pub async fn workers_for(&self, who: &crate::auth::Principal) -> Result<Vec<WorkerStatus>, StoreError> {
        let teams: Vec<&str> = who.teams.iter().map(|t| t.name.as_str()).collect();
        Ok(visible_to(self.workers().await?, who.is_admin(), &teams))
    }

    /// Every registered process, live ones first, then by name (without their jobs' live
    /// numbers: see [`Store::worker_jobs`]).
    pub async fn workers(&self) -> Result<Vec<WorkerStatus>, StoreError> {
        let mut workers = self.beats().await?;
        for job in workers.iter_mut().flat_map(|w| w.jobs.iter_mut()) {
            job.metrics = None;
        }
        Ok(workers)
    }

    /// The live numbers of every job that live workers run, by route id, each combined from
    /// every worker's share.
    pub async fn shared_job_metrics(&self) -> Result<HashMap<String, JobMetrics>, StoreError> {
        Ok(combine_shares(&self.worker_jobs().await?))
    }

    /// A route's job's live numbers, to show: `local` when the serving process runs the job
    /// (a server runs its jobs whole), else the sum of the live workers' shares.
    pub async fn live_job_metrics(
        &self,
        route_id: &str,
        local: Option<JobMetrics>,
    ) -> Result<Option<JobMetrics>, StoreError> {
        match local {
            Some(m) => Ok(Some(m)),
            None => Ok(self.shared_job_metrics().await?.remove(route_id)),
        }
    }

    /// The job instances live workers run, with their shares of the live numbers. (Only
    /// workers share jobs; a server runs its jobs whole and answers for them itself.)
    pub async fn worker_jobs(&self) -> Result<Vec<HeldJob>, StoreError> {
        let beats = self.beats().await?.into_iter();
        Ok(beats.filter(|w| w.alive && w.role.starts_with("worker")).flat_map(|w| w.jobs).collect())
    }

    async fn beats(&self) -> Result<Vec<WorkerStatus>, StoreError> {
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
