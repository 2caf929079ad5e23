//! The executor of the reconciler's plans. Every second it asks the database whether any goal
//! state changed (one cheap query); when it did, and every 30 s regardless, it compares the
//! declared streams and routes with the log's topics and the running jobs, and applies the
//! difference. If the data plane is wiped, the next pass rebuilds topics and jobs from the
//! database alone (jobs resume from their checkpoints there).
//!
//! Every start of a new route version is recorded as a deployment, and every second the
//! deployments still being judged go through the route's stability gate: a new version that
//! fails is rolled back to the last stable one (a new revision by the platform, with the reason).

use crate::ProcessRole;
use keystone_control::auth::Principal;
use keystone_control::backfill::{Backfill, BackfillState};
use keystone_control::deployment_store::NewDeployment;
use keystone_control::deployments::{judge, Deployment, DeploymentState, Verdict};
use keystone_control::goal::Goal;
use keystone_control::jobs::PhaseChange;
use keystone_control::lease_store::Lease;
use keystone_control::reconcile::{
    expired_topics, job_fingerprint, plan_jobs, plan_topics, JobAction, JobGoal, JobInputs, ObservedJob, ObservedTopic,
    RetiredTopic, TopicAction, TopicGoal,
};
use keystone_control::store::{Scope, Store};
use keystone_control::workers::{combine_shares, oldest_start, HeldJob};
use keystone_control::{
    is_dead_letter_topic, Delivery, DesiredState, JobPhase, Kind, Object, RouteSpec, SinkSpec, StreamSpec,
};
use keystone_engine::job::registry::{JobRegistry, RunningJob, SinkFactory};
use keystone_engine::job::supervisor::{supervise, JobObserver, JoinGroup, PhaseReport, RestartPolicy};
use keystone_engine::job::{CheckpointStore, JobSpec, JobStats};
use keystone_engine::log::{AnyLog, Log, Retention};
use keystone_engine::sinks::{AnySink, Appender, StreamSinkConfig};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

mod checkpoints;
mod deployments;

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

/// The lease that makes one process among those sharing a database the reconciler.
pub const RECONCILER_LEASE: &str = "reconciler";

/// Whether this process may reconcile now.
enum Leadership {
    /// It holds the lease; `new` when it just took it.
    Leading {
        new: bool,
    },
    Following,
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
        self.routes(&streams).await
    }

    async fn topics(&self, streams: &[Object]) -> anyhow::Result<()> {
        let goal: Vec<TopicGoal> = streams
            .iter()
            .filter_map(|o| {
                let spec: StreamSpec = o.spec_as().ok()?;
                Some(TopicGoal {
                    topic: o.stream_topic(),
                    partitions: spec.partitions,
                    max_age_ms: i64::from(spec.retention_hours) * 3_600_000,
                    max_bytes_per_partition: spec.retention_bytes,
                })
            })
            .collect();
        let observed: Vec<ObservedTopic> = self
            .log
            .topics()
            .into_iter()
            // Dead-letter topics belong to routes, not streams.
            .filter(|(topic, _, _)| !is_dead_letter_topic(topic))
            .map(|(topic, partitions, r)| ObservedTopic {
                topic,
                partitions,
                max_age_ms: r.max_age_ms,
                max_bytes_per_partition: r.max_bytes_per_partition,
            })
            .collect();
        let plan = plan_topics(&goal, &observed);
        let orphans: Vec<String> = plan
            .iter()
            .filter_map(|a| match a {
                TopicAction::Orphan { topic } => Some(topic.clone()),
                _ => None,
            })
            .collect();
        let work = plan.iter().filter(|a| matches!(a, TopicAction::Create(_) | TopicAction::Update(_))).count();
        self.health.last_actions.store(work as u64, std::sync::atomic::Ordering::Relaxed);
        for action in plan {
            match action {
                TopicAction::Create(g) | TopicAction::Update(g) => {
                    let retention =
                        Retention { max_age_ms: g.max_age_ms, max_bytes_per_partition: g.max_bytes_per_partition };
                    // One topic the cluster refuses must not hold back the others or the jobs.
                    match self.log.ensure_topic(&g.topic, g.partitions, retention).await {
                        Ok(()) => tracing::info!(topic = %g.topic, partitions = g.partitions, "Topic reconciled."),
                        Err(e) => {
                            tracing::warn!(topic = %g.topic, error = %e, "Could not reconcile the topic; the others go on.")
                        }
                    }
                }
                TopicAction::CannotShrink { topic, declared, actual } => {
                    tracing::warn!(topic = %topic, declared, actual, "Topic has more partitions than declared; partitions never shrink.");
                }
                // Left to retention; reported at debug level to keep a steady log quiet.
                TopicAction::Orphan { topic } => tracing::debug!(topic = %topic, "Topic without a stream."),
            }
        }
        if !orphans.is_empty() && self.role.controls() {
            self.retire_topics(&orphans).await?;
        }
        Ok(())
    }

    /// Removes the topics of deleted streams whose retention has run out since the deletion; a
    /// failure is reported and the others still go.
    async fn retire_topics(&self, orphans: &[String]) -> anyhow::Result<()> {
        let retired: Vec<RetiredTopic> = self
            .store
            .deleted_streams()
            .await?
            .into_iter()
            .filter_map(|(o, deleted_at)| {
                let spec: StreamSpec = o.spec_as().ok()?;
                Some(RetiredTopic {
                    topic: o.stream_topic(),
                    deleted_at,
                    max_age_ms: i64::from(spec.retention_hours) * 3_600_000,
                })
            })
            .collect();
        for topic in expired_topics(orphans, &retired, keystone_control::store::now_ms()) {
            match self.log.delete_topic(&topic).await {
                Ok(()) => tracing::info!(topic = %topic, "Deleted stream's topic removed after its retention."),
                Err(e) => tracing::warn!(topic = %topic, error = %e, "Could not remove a deleted stream's topic."),
            }
        }
        Ok(())
    }

    async fn routes(&self, streams: &[Object]) -> anyhow::Result<()> {
        let routes = self.store.list(Kind::Route, &Scope::All).await?;
        let sinks = self.store.list(Kind::Sink, &Scope::All).await?;
        let find = |objects: &[Object], team: &str, name: &str| {
            objects.iter().find(|o| o.team == team && o.name == name).cloned()
        };
        let overrides = self.store.all_config_overrides().await?;
        let mut backfills: HashMap<String, Backfill> =
            self.store.running_backfills().await?.into_iter().map(|b| (b.route_id.clone(), b)).collect();
        let restarts = self.store.restart_generations().await?;
        let mut inputs: HashMap<String, Inputs> = HashMap::new();
        let mut goal = Vec::new();
        for mut route in routes {
            // The job runs the effective spec, so changing a layer rolls the job like a new version.
            let Ok(spec) = self.effective_spec(&route, &overrides) else { continue };
            // A worker runs the routes of its own pool only: a pool isolates one kind of sink's
            // jobs on their own machines.
            if self.role == ProcessRole::Worker && spec.pool() != self.pool.as_deref() {
                continue;
            }
            route.spec = serde_json::to_value(&spec)?;
            let (Some(stream), Some(sink)) =
                (find(streams, &route.team, spec.stream.as_str()), find(&sinks, &route.team, spec.sink.as_str()))
            else {
                continue;
            };
            let Ok(sink_spec) = sink.spec_as::<SinkSpec>() else { continue };
            let backfill = backfills.remove(&route.id);
            // A stream sink appends to its target's current topic: a re-created target is a
            // redeploy onto the new topic.
            let target_topic = (sink_spec.kind == keystone_control::SinkKind::Stream)
                .then(|| StreamSinkConfig::from_spec(&sink_spec.settings, &sink.team).ok())
                .flatten()
                .and_then(|c| find(streams, &c.target.team, &c.target.stream).map(|s| s.stream_topic()));
            let fingerprint = job_fingerprint(&JobInputs {
                route: serde_json::to_value(spec.job_relevant())?,
                stream_version: stream.version,
                sink: serde_json::to_value(sink_spec.job_relevant())?,
                backfill: backfill.as_ref().map(|b| b.id.as_str()),
                target_topic: target_topic.as_deref(),
                restart_generation: restarts.get(&route.id).copied().unwrap_or(0),
            });
            goal.push(JobGoal {
                route_id: route.id.clone(),
                fingerprint,
                drain_first: spec.delivery_on_redeploy == Delivery::NoDuplicates,
                desired: spec.state,
            });
            inputs.insert(route.id.clone(), Inputs { route, stream, sink, backfill, target_topic });
        }
        let observed: Vec<ObservedJob> = if self.role.runs_jobs() {
            self.jobs.fingerprints()
        } else {
            let planned = self.planned.lock().expect("planned lock");
            planned.iter().map(|(id, (fingerprint, paused))| (id.clone(), fingerprint.clone(), *paused)).collect()
        }
        .into_iter()
        .map(|(route_id, fingerprint, paused)| ObservedJob { route_id, fingerprint, paused })
        .collect();
        let plan = plan_jobs(&goal, &observed);
        self.health.last_actions.fetch_add(plan.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if !self.role.runs_jobs() {
            return self.plan_for_workers(plan, &inputs).await;
        }
        let mut failures = Failures::default();
        for action in plan {
            let route_id = action.route_id().to_owned();
            failures.note(&route_id, self.apply(action, &inputs).await);
        }
        failures.into_result()
    }

    /// Applies one job action in this process (an error concerns that route alone).
    async fn apply(&self, action: JobAction, inputs: &HashMap<String, Inputs>) -> anyhow::Result<()> {
        match action {
            JobAction::Start(g) => {
                if self.role.controls() {
                    self.record_deployment(&inputs[&g.route_id].route).await?;
                }
                self.start(&g, &inputs[&g.route_id]).await;
            }
            JobAction::Redeploy(g) => {
                if self.role.controls() {
                    self.record_deployment(&inputs[&g.route_id].route).await?;
                }
                self.jobs.stop(&g.route_id, g.drain_first).await;
                self.start(&g, &inputs[&g.route_id]).await;
            }
            JobAction::Pause { route_id } => {
                self.jobs.set_paused(&route_id, true);
            }
            JobAction::Resume { route_id } => {
                self.jobs.set_paused(&route_id, false);
            }
            JobAction::Halt { route_id } => self.stop(&route_id, "stopped as declared").await?,
            JobAction::Stop { route_id } => self.stop(&route_id, "the route was deleted").await?,
        }
        Ok(())
    }

    /// The control plane's side of a plan whose jobs run on workers: it records deployments and
    /// declared stops, and creates the dead-letter topics the workers' jobs need (workers do
    /// not create topics).
    async fn plan_for_workers(&self, plan: Vec<JobAction>, inputs: &HashMap<String, Inputs>) -> anyhow::Result<()> {
        let mut failures = Failures::default();
        for action in plan {
            let route_id = action.route_id().to_owned();
            failures.note(&route_id, self.plan_for_workers_one(action, inputs).await);
        }
        failures.into_result()
    }

    async fn plan_for_workers_one(&self, action: JobAction, inputs: &HashMap<String, Inputs>) -> anyhow::Result<()> {
        match action {
            JobAction::Start(g) | JobAction::Redeploy(g) => {
                let route = &inputs[&g.route_id].route;
                self.record_deployment(route).await?;
                let dead_letters = keystone_control::dead_letter_topic(&route.team, &route.name);
                self.log.ensure_topic(&dead_letters, 1, keystone_engine::job::DEAD_LETTER_RETENTION).await?;
                let paused = g.desired == DesiredState::Paused;
                self.planned.lock().expect("planned lock").insert(g.route_id.clone(), (g.fingerprint, paused));
            }
            JobAction::Pause { route_id } => self.set_planned_paused(&route_id, true),
            JobAction::Resume { route_id } => self.set_planned_paused(&route_id, false),
            JobAction::Halt { route_id } => {
                self.planned.lock().expect("planned lock").remove(&route_id);
                self.stop(&route_id, "stopped as declared").await?;
            }
            JobAction::Stop { route_id } => {
                self.planned.lock().expect("planned lock").remove(&route_id);
                self.stop(&route_id, "the route was deleted").await?;
            }
        }
        Ok(())
    }

    fn set_planned_paused(&self, route_id: &str, paused: bool) {
        if let Some(p) = self.planned.lock().expect("planned lock").get_mut(route_id) {
            p.1 = paused;
        }
    }

    /// Hands the lease over at once (at shutdown, after the jobs were drained).
    pub async fn release(&self) {
        let held = self.lease.lock().expect("lease lock").take();
        if let Some(lease) = held {
            if let Err(e) = self.store.release_lease(&lease).await {
                tracing::warn!(error = %e, "Releasing the reconciler lease failed; it will expire.");
            }
        }
    }

    /// The lease held now, for the writes a job makes under it.
    fn lease(&self) -> Option<Lease> {
        self.lease.lock().expect("lease lock").clone()
    }

    /// Takes or renews the reconciler lease. A process that loses it stops its jobs at once
    /// (their checkpoint commits would be refused anyway); one that cannot reach the database
    /// stops them before its lease could expire, so two processes never run a job at once.
    async fn lead(&self) -> Leadership {
        use std::sync::atomic::Ordering::Relaxed;
        let ttl_ms = self.lease_ttl.as_millis() as i64;
        let held = self.lease();
        let outcome = self.store.acquire_lease(RECONCILER_LEASE, &self.instance, ttl_ms).await;
        let lost = match outcome {
            Ok(Some(lease)) => {
                let new = held.as_ref().map(|l| l.token) != Some(lease.token);
                if new {
                    tracing::info!(instance = %self.instance, token = lease.token, "Took the reconciler lease.");
                }
                *self.lease.lock().expect("lease lock") = Some(lease);
                self.health.leader.store(true, Relaxed);
                return Leadership::Leading { new };
            }
            Ok(None) => held.is_some(),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot renew the reconciler lease.");
                // Still ours for a while; give it up with half its time left.
                match &held {
                    Some(l) if keystone_control::store::now_ms() < l.expires_at - ttl_ms / 2 => {
                        return Leadership::Leading { new: false }
                    }
                    Some(_) => true,
                    None => false,
                }
            }
        };
        if lost {
            tracing::warn!(instance = %self.instance, "Lost the reconciler lease; stopping this process's jobs.");
            *self.lease.lock().expect("lease lock") = None;
            self.jobs.stop_all().await;
        }
        self.health.leader.store(false, Relaxed);
        Leadership::Following
    }

    /// A route's effective spec: the declaration with the environment and the console overrides
    /// layered on (a layer that no longer applies is ignored, with a warning).
    fn effective_spec(
        &self,
        route: &Object,
        overrides: &HashMap<String, Vec<keystone_control::config::ConfigOverride>>,
    ) -> Result<RouteSpec, serde_json::Error> {
        let declared: RouteSpec = route.spec_as()?;
        let layers = overrides.get(&route.id).map_or(&[][..], Vec::as_slice);
        Ok(match keystone_control::config::effective(&declared, &self.job_env, layers) {
            Ok((spec, _)) => spec,
            Err(e) => {
                tracing::warn!(route = %format!("{}/{}", route.team, route.name), error = %e, "Configuration layers ignored.");
                declared
            }
        })
    }

    /// Drains a route's job (finishing and committing the batch in hand) and records why.
    async fn stop(&self, route_id: &str, cause: &str) -> anyhow::Result<()> {
        self.jobs.stop(route_id, true).await;
        if !self.role.controls() {
            // The control plane records it once, not every worker.
            return Ok(());
        }
        let version = self.store.job(route_id).await?.map_or(0, |j| j.version);
        let change = PhaseChange {
            route_id,
            version,
            to: JobPhase::Stopped,
            cause,
            error: None,
            restart: false,
            reporter: None,
        };
        self.store.record_phase(change).await?;
        Ok(())
    }

    /// Ends every running backfill that delivered up to its end (or whose route was deleted),
    /// in the operations log too. True when one ended (the job goes back to its stream on the
    /// next pass).
    async fn end_backfills(&self) -> anyhow::Result<bool> {
        let running = self.store.running_backfills().await?;
        if running.is_empty() {
            return Ok(false);
        }
        let live: std::collections::HashSet<String> =
            self.store.list(Kind::Route, &Scope::All).await?.into_iter().map(|r| r.id).collect();
        let mut ended = false;
        let mut failures = Failures::default();
        for b in running {
            let (state, detail) = if !live.contains(&b.route_id) {
                (BackfillState::Cancelled, format!("from {} cancelled: the route was deleted", b.source.describe()))
            } else if b.complete() {
                let total: u64 = b.end.iter().map(|(_, o)| o).sum();
                (BackfillState::Done, format!("from {} done: delivered up to {total} event(s)", b.source.describe()))
            } else {
                continue;
            };
            let finished = async {
                if self.store.finish_backfill(&b.id, state).await? {
                    self.store.record_operation(&b.route_id, "keystone", "backfill", &detail).await?;
                    ended = true;
                }
                anyhow::Ok(())
            };
            failures.note(&b.route_id, finished.await);
        }
        failures.into_result().map(|()| ended)
    }

    async fn start(&self, goal: &JobGoal, Inputs { route, stream, sink, backfill, target_topic }: &Inputs) {
        let observer = Arc::new(StoreObserver {
            store: self.store.clone(),
            route_id: route.id.clone(),
            version: route.version,
            part_of: (self.role == ProcessRole::Worker).then(|| self.instance.clone()),
        });
        let stats = Arc::new(JobStats::default());
        // Set before the readers start, so a paused route's job reads nothing.
        stats.set_paused(goal.desired == DesiredState::Paused);
        let cancel = CancellationToken::new();
        let built = self.build(route, stream, sink, backfill.as_ref()).await;
        let (spec, task, sink) = match built {
            Ok((spec, sink_spec, secrets, policy)) => {
                let data_dir = self.data_dir.clone();
                let team = sink.team.clone();
                let appender: Arc<dyn Appender> = self.log.clone();
                let egress = self.store.egress().clone();
                let target = target_topic.clone();
                let factory: SinkFactory = Arc::new(move || {
                    AnySink::build(&sink_spec, &team, &secrets, &data_dir, &appender, &egress, target.as_deref())
                });
                let make_sink = {
                    let factory = factory.clone();
                    move || factory()
                };
                // A worker shares the job with the other workers: a consumer group per route (and
                // per backfill, which reads another topic) assigns each its partitions.
                let group: Option<JoinGroup> = (self.role == ProcessRole::Worker).then(|| {
                    let group_id = match backfill {
                        Some(b) => format!("keystone.route.{}.backfill.{}", route.id, b.id),
                        None => format!("keystone.route.{}", route.id),
                    };
                    let (log, topic, session) = (self.log.clone(), spec.topic.clone(), self.group_session);
                    Arc::new(move || log.join_group(&group_id, &topic, session)) as JoinGroup
                });
                let task = self.jobs_on.spawn(supervise(
                    spec.clone(),
                    self.log.clone(),
                    make_sink,
                    Arc::new(match backfill {
                        Some(b) => JobCheckpoints::Backfill {
                            store: self.store.clone(),
                            id: b.id.clone(),
                            lease: self.lease(),
                        },
                        None => JobCheckpoints::Route(StoreCheckpoints::new(self.store.clone(), self.lease())),
                    }),
                    observer,
                    stats.clone(),
                    policy,
                    group,
                    cancel.clone(),
                ));
                (Some(spec), task, Some(factory))
            }
            Err(why) => {
                // Held as failed until the route changes, so the plan does not retry every pass.
                tracing::warn!(route = %format!("{}/{}", route.team, route.name), error = %why, "Job cannot start.");
                observer
                    .report(PhaseReport {
                        phase: JobPhase::Failed,
                        cause: "cannot start".into(),
                        error: Some(why),
                        restart: false,
                    })
                    .await;
                (None, tokio::spawn(async {}), None)
            }
        };
        tracing::info!(route = %format!("{}/{}", route.team, route.name), fingerprint = %goal.fingerprint, "Job started.");
        self.jobs.insert(
            route.id.clone(),
            RunningJob {
                fingerprint: goal.fingerprint.clone(),
                version: route.version,
                started_at: keystone_control::store::now_ms(),
                spec,
                stats,
                cancel,
                task,
                sink,
            },
        );
    }

    async fn build(
        &self,
        route: &Object,
        stream: &Object,
        sink: &Object,
        backfill: Option<&Backfill>,
    ) -> Result<(Arc<JobSpec>, SinkSpec, BTreeMap<String, String>, RestartPolicy), String> {
        let route_spec: RouteSpec = route.spec_as().map_err(|e| format!("route spec: {e}"))?;
        let stream_spec: StreamSpec = stream.spec_as().map_err(|e| format!("stream spec: {e}"))?;
        let sink_spec: SinkSpec = sink.spec_as().map_err(|e| format!("sink spec: {e}"))?;
        let secrets: BTreeMap<String, String> =
            self.store.sink_secrets(&sink.id).await.map_err(|e| format!("sink secrets: {e}"))?.into_iter().collect();
        let mut spec = JobSpec::for_route(
            &route.id,
            &route.team,
            &route.name,
            &route_spec,
            (stream.stream_topic(), &stream_spec),
        )?;
        if let Some(b) = backfill {
            // The route's code, another source: read it from its start up to its recorded end.
            spec.topic = b.topic.clone();
            spec.partitions = b.partitions;
            spec.start_at = keystone_engine::log::StartAt::Earliest;
            spec.until = b.end.iter().copied().collect();
        }
        let settings = route_spec.job_settings().map_err(|e| e.to_string())?;
        let policy = RestartPolicy {
            stall_after: Duration::from_secs(u64::from(settings.stall_timeout_s)),
            ..Default::default()
        };
        Ok((Arc::new(spec), sink_spec, secrets, policy))
    }
}

/// What a route's job is built from.
struct Inputs {
    route: Object,
    stream: Object,
    sink: Object,
    /// A running backfill: the job reads its source instead of the stream.
    backfill: Option<Backfill>,
    /// A stream sink's target topic.
    target_topic: Option<String>,
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
