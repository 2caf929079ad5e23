//! The jobs this process runs, by route id: what the reconciler's executor starts and stops,
//! and what the API and console read live numbers from. It holds at most one job per route, so
//! the executor can never run two instances of one job.

use super::dead_letters::{ReplayError, Replayed};
use super::{JobSpec, JobStats};
use crate::log::Log;
use crate::sinks::{AnySink, ConfigError};
use keystone_control::workers::{share_of, HeldJob};
use keystone_control::{JobCounters, JobMetrics};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One supervised job.
pub struct RunningJob {
    /// What it was built from (see `reconcile::JobGoal::fingerprint`).
    pub fingerprint: String,
    /// The route version it runs.
    pub version: i64,
    /// When it started (ms since the epoch).
    pub started_at: i64,
    /// `None` for a job whose route could not be compiled (held as failed).
    pub spec: Option<Arc<JobSpec>>,
    pub stats: Arc<JobStats>,
    pub cancel: CancellationToken,
    pub task: JoinHandle<()>,
    /// Builds the route's sink, for replaying dead letters (`None` when the job could not be built).
    pub sink: Option<SinkFactory>,
}

/// One running job as the telemetry task sees it at a sample.
pub struct Observed {
    pub route_id: String,
    /// `team/route`.
    pub route: String,
    /// Identifies the job instance: a restarted job has new stats (and counts from zero).
    pub stats: Arc<JobStats>,
    pub counters: JobCounters,
    pub lag: u64,
    pub lag_seconds: f64,
    /// See `JobStats::checkpoint_age_s`.
    pub checkpoint_age_s: f64,
    /// Distributions since the previous observation.
    pub interval: super::latency::Interval,
}

/// Builds a fresh sink of a route.
pub type SinkFactory = Arc<dyn Fn() -> Result<AnySink, ConfigError> + Send + Sync>;

/// How long a draining job may take to finish its batch and commit before it is aborted.
const DRAIN_GRACE: Duration = Duration::from_secs(15);

pub struct JobRegistry<L> {
    log: Arc<L>,
    jobs: Mutex<HashMap<String, RunningJob>>,
    /// Asks the reconciler for a pass now (e.g. after a manual restart).
    wake: tokio::sync::Notify,
}

impl<L: Log> JobRegistry<L> {
    pub fn new(log: Arc<L>) -> JobRegistry<L> {
        JobRegistry { log, jobs: Mutex::new(HashMap::new()), wake: tokio::sync::Notify::new() }
    }

    /// Asks the reconciler to run a pass now rather than at its next resync.
    pub fn request_pass(&self) {
        self.wake.notify_one();
    }

    /// Resolves when a pass was requested.
    pub async fn pass_requested(&self) {
        self.wake.notified().await;
    }

    /// How many jobs this process holds.
    pub fn running_count(&self) -> usize {
        self.jobs.lock().expect("registry lock").len()
    }

    /// Each held job: (route id, fingerprint, paused).
    pub fn fingerprints(&self) -> Vec<(String, String, bool)> {
        let jobs = self.jobs.lock().expect("registry lock");
        jobs.iter().map(|(id, j)| (id.clone(), j.fingerprint.clone(), j.stats.is_paused())).collect()
    }

    /// What this process runs: each job with the partitions of its stream it holds (all of
    /// them, unless it shares the job through a consumer group) and its share of the live numbers.
    pub fn holdings(&self) -> Vec<HeldJob> {
        let running: Vec<(String, Arc<JobSpec>, Arc<JobStats>, i64, i64)> = {
            let jobs = self.jobs.lock().expect("registry lock");
            jobs.iter()
                .filter_map(|(id, j)| Some((id.clone(), j.spec.clone()?, j.stats.clone(), j.version, j.started_at)))
                .collect()
        };
        let mut out: Vec<HeldJob> = running
            .into_iter()
            .map(|(route_id, spec, stats, version, started_at)| HeldJob {
                route_id,
                route: spec.route.clone(),
                partitions: stats.held(&spec),
                version,
                started_at,
                metrics: Some(share_of(self.metrics_of(&spec, &stats))),
            })
            .collect();
        out.sort_by(|a, b| a.route.cmp(&b.route));
        out
    }

    /// When the route's job held now started.
    pub fn started_at(&self, route_id: &str) -> Option<i64> {
        self.jobs.lock().expect("registry lock").get(route_id).map(|j| j.started_at)
    }

    /// Pauses or resumes a route's job in place (its supervisor reports the phase). False if no
    /// job is held.
    pub fn set_paused(&self, route_id: &str, paused: bool) -> bool {
        let jobs = self.jobs.lock().expect("registry lock");
        jobs.get(route_id).map(|j| j.stats.set_paused(paused)).is_some()
    }

    /// Holds a started job. The caller has stopped any previous job of the route first.
    pub fn insert(&self, route_id: String, job: RunningJob) {
        let old = self.jobs.lock().expect("registry lock").insert(route_id, job);
        if let Some(old) = old {
            // Never two instances: a job replaced without `stop` is stopped here. Cancelled
            // first: aborting its supervisor alone left the run it had spawned going.
            old.cancel.cancel();
            old.task.abort();
        }
    }

    /// Stops a route's job. Draining lets it finish the batch in hand and commit its checkpoint
    /// (no duplicates after a redeploy); otherwise it is aborted at once and its successor
    /// resumes from the last commit (no pause, a bounded repeat). True if a job was held.
    pub async fn stop(&self, route_id: &str, drain: bool) -> bool {
        let Some(job) = self.jobs.lock().expect("registry lock").remove(route_id) else { return false };
        job.cancel.cancel();
        if drain {
            let mut task = job.task;
            if tokio::time::timeout(DRAIN_GRACE, &mut task).await.is_err() {
                task.abort();
            }
        } else {
            job.task.abort();
        }
        true
    }

    /// Re-delivers the route's dead letters from `from` through its current transforms and sink.
    /// `None` when this process does not run the route's job.
    pub async fn replay_dead_letters(
        &self,
        route_id: &str,
        from: u64,
        limit: usize,
    ) -> Option<Result<Replayed, ReplayError>> {
        let (spec, factory) = {
            let jobs = self.jobs.lock().expect("registry lock");
            let j = jobs.get(route_id)?;
            (j.spec.clone()?, j.sink.clone()?)
        };
        let sink = match factory() {
            Ok(s) => s,
            Err(e) => return Some(Err(ReplayError::Transient(format!("the sink cannot be built: {e}")))),
        };
        Some(super::dead_letters::replay(self.log.as_ref(), &spec, &sink, from, limit).await)
    }

    /// Drains every job (at shutdown).
    pub async fn stop_all(&self) {
        let ids: Vec<String> = self.jobs.lock().expect("registry lock").keys().cloned().collect();
        futures_util::future::join_all(ids.iter().map(|id| self.stop(id, true))).await;
    }

    /// Samples every running job; each call starts the next latency interval.
    pub async fn observe(&self, now_ms: i64) -> Vec<Observed> {
        let running: Vec<(String, Arc<JobSpec>, Arc<JobStats>)> = {
            let jobs = self.jobs.lock().expect("registry lock");
            jobs.iter().filter_map(|(id, j)| Some((id.clone(), j.spec.clone()?, j.stats.clone()))).collect()
        };
        let mut out = Vec::with_capacity(running.len());
        for (route_id, spec, stats) in running {
            let interval = stats.latency.lock().expect("stats lock").take();
            let positions = stats.positions(&spec, self.log.as_ref());
            out.push(Observed {
                route_id,
                route: spec.route.clone(),
                counters: stats.counters(),
                lag: super::waiting(&positions),
                lag_seconds: stats.lag_seconds(&spec, self.log.as_ref(), &positions, now_ms).await,
                checkpoint_age_s: stats.checkpoint_age_s(now_ms),
                interval,
                stats,
            });
        }
        out
    }

    /// Live numbers of a route's job, if this process runs it.
    pub fn metrics(&self, route_id: &str) -> Option<JobMetrics> {
        let (spec, stats) = {
            let jobs = self.jobs.lock().expect("registry lock");
            let j = jobs.get(route_id)?;
            (j.spec.clone()?, j.stats.clone())
        };
        Some(self.metrics_of(&spec, &stats))
    }

    fn metrics_of(&self, spec: &JobSpec, stats: &JobStats) -> JobMetrics {
        let partitions = stats.positions(spec, self.log.as_ref());
        let recent_errors = stats.recent_errors.lock().expect("stats lock").clone();
        JobMetrics { counters: stats.counters(), lag: super::waiting(&partitions), partitions, recent_errors }
    }
}
