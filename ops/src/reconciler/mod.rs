//! The executor of the reconciler's plans. Every second it asks the database whether any goal
//! state changed (one cheap query); when it did, and every 30 s regardless, it compares the
//! declared streams and routes with the log's topics and the running jobs, and applies the
//! difference. If the data plane is wiped, the next pass rebuilds topics and jobs from the
//! database alone (jobs resume from their checkpoints there).
//!
//! Every start of a new route version is recorded as a deployment, and every second the
//! deployments still being judged go through the route's stability gate: a new version that
//! fails is rolled back to the last stable one (a new revision by the platform, with the reason).
//!
//! One file per concern, each applying a pure plan from `keystone_control` (`reconcile`,
//! `deployments`, `workers`): `lease`, `topics`, `jobs`, `deployments`, `backfills`, and
//! `checkpoints` (where a job's positions and phases are written).

use crate::ProcessRole;
use keystone_control::auth::Principal;
use keystone_control::backfill::{Backfill, BackfillState};
use keystone_control::deployments::{judge, Deployment, DeploymentState, Verdict};
use keystone_control::goal::Goal;
use keystone_control::reconcile::{
    expired_topics, job_fingerprint, plan_jobs, plan_topics, JobAction, JobGoal, JobInputs, ObservedJob, ObservedTopic,
    RetiredTopic, TopicAction, TopicGoal,
};
use keystone_control::store::deployments::NewDeployment;
use keystone_control::store::jobs::PhaseChange;
use keystone_control::store::lease::Lease;
use keystone_control::store::{Scope, Store};
use keystone_control::workers::{combine_shares, oldest_start, HeldJob};
use keystone_control::{
    is_dead_letter_topic, Delivery, DesiredState, JobPhase, Kind, Object, RouteSpec, SinkSpec, StreamRef, StreamSpec,
};
use keystone_engine::job::registry::{JobRegistry, RunningJob, SinkFactory};
use keystone_engine::job::supervisor::{supervise, JobObserver, JoinGroup, PhaseReport, RestartPolicy};
use keystone_engine::job::{CheckpointStore, JobSpec, JobStats};
use keystone_engine::log::{AnyLog, Log, Retention};
use keystone_engine::sinks::{AnySink, Appender};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

mod backfills;
mod checkpoints;
mod deployments;
mod jobs;
mod lease;
mod processors;
mod sources;
mod topics;

use lease::Leadership;
pub use lease::RECONCILER_LEASE;
pub use sources::Sources;

use checkpoints::{JobCheckpoints, StoreCheckpoints, StoreObserver};

pub type Jobs = JobRegistry<AnyLog>;

pub struct Reconciler {
    /// This process among those sharing the database: the reconciler lease's holder name.
    pub instance: String,
    /// How long the lease lasts unless renewed (renewed every second).
    pub lease_ttl: Duration,
    /// The lease while held (`None`: another process reconciles and runs the jobs).
    pub lease: std::sync::Mutex<Option<Lease>>,
    pub store: Store,
    pub log: Arc<AnyLog>,
    pub jobs: Arc<Jobs>,
    /// Processors' jobs (their own registry: the routes' plan never sees them).
    pub processors: Arc<Jobs>,
    /// Sources' jobs (change data capture).
    pub sources: Arc<Sources>,
    /// Roots file sinks.
    pub data_dir: PathBuf,
    pub health: Arc<ReconcilerHealth>,
    /// The environment layer of job configuration (`KEYSTONE_JOB_*`).
    pub job_env: Arc<BTreeMap<String, String>>,
    /// What this process does: control (under the lease), jobs, or both.
    pub role: ProcessRole,
    /// The jobs the workers should run, as this control plane last planned them (role
    /// `control`, which runs none itself): route id -> (fingerprint, paused).
    pub planned: std::sync::Mutex<HashMap<String, (String, bool)>>,
    /// `session.timeout.ms` of a worker's consumer-group memberships.
    pub group_session: Duration,
    /// A worker's pool: it runs only the routes of that pool (`job.pool`).
    pub pool: Option<String>,
    /// Where jobs are spawned: the job runtime (`keystone_engine::job::runtime`).
    pub jobs_on: tokio::runtime::Handle,
}

/// How the reconciler is doing, for `/metrics`.
#[derive(Debug, Default)]
pub struct ReconcilerHealth {
    /// Duration of the last pass, in microseconds.
    pub last_pass_us: std::sync::atomic::AtomicU64,
    /// When the last pass succeeded (ms since the epoch; 0 before the first).
    pub last_success_ms: std::sync::atomic::AtomicI64,
    pub failures: std::sync::atomic::AtomicU64,
    /// The reconciler's queue: a pass plans every difference between goal and world at once,
    /// so its queue is the actions the last pass found to do (topics and jobs).
    pub last_actions: std::sync::atomic::AtomicU64,
    /// Deployments still in their stability window.
    pub deploying: std::sync::atomic::AtomicU64,
    /// Whether this process holds the reconciler lease (and runs the jobs).
    pub leader: std::sync::atomic::AtomicBool,
}

/// A full pass also runs this often when nothing changed, to catch drift.
const RESYNC: Duration = Duration::from_secs(30);
impl Reconciler {
    /// Runs the control loop until `stop` fires (after the jobs were drained at shutdown).
    pub fn spawn(self: Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seen: Option<i64> = None;
            let mut last_full = Instant::now();
            loop {
                let requested = tokio::select! {
                    _ = tick.tick() => false,
                    _ = self.jobs.pass_requested() => true,
                    // Shutting down: the caller drains the jobs, then releases the lease.
                    _ = stop.cancelled() => return,
                };
                let mut backfill_ended = false;
                if self.role.controls() {
                    match self.lead().await {
                        Leadership::Following => continue,
                        // Everything is checked again: another process ran it until now.
                        Leadership::Leading { new: true } => seen = None,
                        Leadership::Leading { new: false } => {}
                    }
                    // A silent worker's part of a shared job stops speaking for the job's phase
                    // (before the deployments are judged on it).
                    if let Err(e) = self.store.recombine_shared_phases().await {
                        tracing::warn!(error = %e, "Recombining shared jobs' phases failed; retrying on the next tick.");
                    }
                    // Deployments are judged every tick: a gate window is seconds, not a resync.
                    if let Err(e) = self.judge_deployments().await {
                        tracing::warn!(error = %e, "Judging deployments failed; retrying on the next tick.");
                    }
                    // So are backfills: one that reached its end hands the job back to its stream.
                    backfill_ended = match self.end_backfills().await {
                        Ok(ended) => ended,
                        Err(e) => {
                            tracing::warn!(error = %e, "Checking backfills failed; retrying on the next tick.");
                            false
                        }
                    };
                }
                let seq = match self.store.goal_seq().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "Cannot read the goal state; retrying.");
                        continue;
                    }
                };
                if !requested && !backfill_ended && seen == Some(seq) && last_full.elapsed() < RESYNC {
                    continue;
                }
                let started = Instant::now();
                let outcome = self.pass().await;
                let h = &self.health;
                h.last_pass_us.store(started.elapsed().as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
                match outcome {
                    Ok(()) => {
                        seen = Some(seq);
                        h.last_success_ms
                            .store(keystone_control::store::now_ms(), std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => {
                        h.failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(error = %e, "Reconcile pass failed; retrying on the next tick.")
                    }
                }
                last_full = Instant::now();
            }
        })
    }

    /// One pass over topics, then jobs (which need their topics). Outside the control plane,
    /// the topics pass only checks that the streams' topics exist (and learns them).
    pub async fn pass(&self) -> anyhow::Result<()> {
        let streams = self.store.list(Kind::Stream, &Scope::All).await?;
        self.topics(&streams).await?;
        if self.role == ProcessRole::Ingest {
            return Ok(());
        }
        let routes = self.routes(&streams).await;
        // One concern's failure never stops the other's pass.
        let processors = self.processors(&streams).await;
        let sources = self.sources(&streams).await;
        routes.and(processors).and(sources)
    }
}

/// The topic a stream sink appends to: its target stream's current topic, so a re-created target
/// is a redeploy of the jobs delivering to it onto the new topic. `None` for other sinks.
fn target_topic(sink_spec: &SinkSpec, sink: &Object, streams: &[Object]) -> Option<String> {
    let t = StreamRef::parse(sink_spec.stream_target()?, &sink.team).ok()?;
    streams.iter().find(|s| s.team == t.team && s.name == t.stream).map(Object::stream_topic)
}

/// The failures of one pass over many objects: each is logged with its object when it happens,
/// and the pass goes on with the others; the pass then reports them together.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn note(&mut self, object: &str, outcome: anyhow::Result<()>) {
        if let Err(e) = outcome {
            tracing::warn!(object, error = %format!("{e:#}"), "Reconciling one object failed; the others go on.");
            self.0.push(format!("{object}: {e:#}"));
        }
    }

    fn into_result(self) -> anyhow::Result<()> {
        match self.0.len() {
            0 => Ok(()),
            n => anyhow::bail!("{n} object(s) failed: {}", self.0.join("; ")),
        }
    }
}
