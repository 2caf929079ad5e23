//! Operations on a route's job: restart, desired state, rollback, rewind, backfill, dead-letter
//! retry and preview.

use crate::{Ops, OpsError};
use keystone_control::approvals::ChangeRequest;
use keystone_control::backfill::{Backfill, BackfillSource};
use keystone_control::config::ConfigEntry;
use keystone_control::goal::Applied;
use keystone_control::rewind::{RewindPlan, RewindTo};
use keystone_control::store::StoreError;
use keystone_control::{
    CheckpointInfo, DesiredState, JobMetrics, JobRecord, JobTransition, Kind, Object, PreviewRow, Projection,
    RouteSpec, ValidationErrors,
};
use keystone_engine::job::backfill::{source_end, ImportError, SinkFiles};
use keystone_engine::job::dead_letters::{ReplayError, Replayed};
use keystone_engine::job::rewind::target_positions;
use keystone_engine::job::Transforms;

/// A route's transforms to try on a stream's newest events.
#[derive(Debug, Clone, Default)]
pub struct PreviewInput {
    pub stream: String,
    pub filter: Option<String>,
    pub projection: Projection,
    /// How many of the newest events (clamped to 1..=1000).
    pub limit: usize,
}

/// A route's job as its owners see it: what they want, what it does, where it is.
#[derive(Debug, Clone)]
pub struct JobState {
    pub route: Object,
    pub desired: DesiredState,
    /// The recorded phase; `None` before the reconciler first started the job.
    pub job: Option<JobRecord>,
    /// Live numbers: from this process, or summed over the workers sharing the job.
    pub metrics: Option<JobMetrics>,
    pub checkpoints: Vec<CheckpointInfo>,
    /// The newest phase transitions, most recent first.
    pub transitions: Vec<JobTransition>,
}

/// Most dead letters one retry handles.
const MAX_RETRY: usize = 10_000;

impl Ops<'_> {
    /// The route's job: desired state, phase, live numbers, checkpoints and the newest
    /// `transitions` transitions (readers of the route's team).
    pub async fn job_state(&self, team: &str, name: &str, transitions: i64) -> Result<JobState, OpsError> {
        let route = self.goal().get(Kind::Route, team, name).await?;
        let spec: RouteSpec = route.spec_as().map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (store, jobs) = (&self.platform.store, &self.platform.jobs);
        Ok(JobState {
            desired: spec.state,
            job: store.job(&route.id).await?,
            metrics: store.live_job_metrics(&route.id, jobs.metrics(&route.id)).await?,
            checkpoints: store.checkpoints(&route.id).await?,
            transitions: store.transitions(&route.id, transitions).await?,
            route,
        })
    }

    /// Restarts the route's job wherever it runs (a new restart generation; see
    /// `Goal::restart_route`). `via` says from where, for the operations log.
    pub async fn restart_route(&self, team: &str, name: &str, via: &str) -> Result<i64, OpsError> {
        let generation = self.goal().restart_route(team, name, via).await?;
        tracing::info!(route = %format!("{team}/{name}"), by = %self.who.display, generation, "Job restart requested.");
        self.platform.jobs.request_pass();
        Ok(generation)
    }

    /// Sets the route's desired state (a new revision when it changes).
    pub async fn set_route_state(
        &self,
        team: &str,
        name: &str,
        state: DesiredState,
        reason: &str,
    ) -> Result<Applied, OpsError> {
        let applied = self.goal().set_route_state(team, name, state, reason).await?;
        self.platform.jobs.request_pass();
        Ok(applied)
    }

    /// Sets the route back to an earlier version's declaration (a new revision).
    pub async fn roll_back_route(
        &self,
        team: &str,
        name: &str,
        version: i64,
        reason: &str,
    ) -> Result<Applied, OpsError> {
        let applied = self.goal().roll_back_route(team, name, version, reason).await?;
        self.platform.jobs.request_pass();
        Ok(applied)
    }

    /// Rewinds a stopped route to the earliest retained event, a time, a savepoint or a
    /// checkpoint of its history; with `dry_run`, only estimates (any state).
    pub async fn rewind_route(
        &self,
        team: &str,
        name: &str,
        to: &RewindTo,
        dry_run: bool,
    ) -> Result<RewindPlan, OpsError> {
        let goal = self.goal();
        let i = goal.rewind_inputs(team, name, to).await?;
        let target = target_positions(self.platform.log.as_ref(), &i.topic, i.partitions, to, &i.recorded).await?;
        let held = self.platform.jobs.metrics(i.route_id()).is_some();
        Ok(goal.rewind_route(&i, held, &target, dry_run).await?)
    }

    /// Starts a backfill from another stream or a file sink's files: the files are checked
    /// whole first, and the job switches to the source on the reconciler's next pass.
    pub async fn start_backfill(&self, team: &str, name: &str, source: BackfillSource) -> Result<Backfill, OpsError> {
        let goal = self.goal();
        let plan = goal.plan_backfill(team, name, source).await?;
        let p = self.platform;
        let files = plan
            .files
            .as_ref()
            .map(|f| {
                SinkFiles::of_sink(&f.path, &f.team, f.bucket.as_ref(), &f.secrets, &p.sinks_root, p.store.egress())
            })
            .transpose()
            .map_err(|e| ValidationErrors::single("sink", format!("the file sink's store cannot be opened: {e}")))?;
        let label = format!("{team}/{name} backfill");
        let end = match source_end(p.log.as_ref(), &plan.topic, plan.partitions, files.as_ref(), &label).await {
            Ok(end) => end,
            Err(ImportError::Log(e)) => return Err(e.into()),
            Err(e @ ImportError::Store(_)) => return Err(OpsError::Unavailable(e.to_string())),
            Err(e) => return Err(ValidationErrors::single("path", e.to_string()).into()),
        };
        let started = goal.start_backfill(plan, &end).await?;
        p.jobs.request_pass();
        Ok(started)
    }

    /// Cancels the route's running backfill: the job returns to its stream where it left off.
    pub async fn cancel_backfill(&self, team: &str, name: &str) -> Result<Backfill, OpsError> {
        let cancelled = self.goal().cancel_backfill(team, name).await?;
        self.platform.jobs.request_pass();
        Ok(cancelled)
    }

    /// Re-delivers up to `limit` of the route's unhandled dead letters (oldest first) through its
    /// current transforms and sink; letters refused again go back to the queue with the new
    /// reason. On a transient sink failure nothing moves.
    pub async fn retry_dead_letters(&self, team: &str, name: &str, limit: usize) -> Result<Replayed, OpsError> {
        let goal = self.goal();
        let route = goal.operable_route(team, name).await?;
        let store = &self.platform.store;
        let from = store.dead_letter_cursor(&route.id).await?;
        let limit = limit.clamp(1, MAX_RETRY);
        let replayed = match self.platform.jobs.replay_dead_letters(&route.id, from, limit).await {
            None => return Err(OpsError::Unavailable("the route's job is not running here; retry in a moment".into())),
            Some(Err(ReplayError::Transient(why))) => {
                return Err(OpsError::Unavailable(format!("the sink is still failing, nothing was retried: {why}")))
            }
            Some(Err(ReplayError::Log(e))) => return Err(e.into()),
            Some(Ok(r)) => r,
        };
        store.set_dead_letter_cursor(&route.id, replayed.next).await?;
        tracing::info!(route = %format!("{team}/{name}"), by = %self.who.display, delivered = replayed.delivered,
            refused_again = replayed.refused_again, "Dead letters replayed.");
        let detail = format!(
            "{} retried, {} delivered, {} refused again",
            replayed.letters, replayed.delivered, replayed.refused_again
        );
        goal.record(&route, "retry dead letters", &detail).await?;
        Ok(replayed)
    }

    /// Overrides one configuration key of the route (`None` removes the override); the job is
    /// rolled with the route's strategy and judged by its stability gate. Returns the route's
    /// configuration as it is now, with provenance.
    pub async fn set_config_override(
        &self,
        team: &str,
        name: &str,
        key: &str,
        value: Option<&str>,
        reason: &str,
    ) -> Result<Vec<ConfigEntry>, OpsError> {
        let goal = self.goal();
        goal.set_config_override(team, name, key, value, reason).await?;
        self.platform.jobs.request_pass();
        Ok(goal.route_config(team, name, &self.platform.job_env).await?)
    }

    /// Approves or rejects a change request (admins, not their own); an approved change applies
    /// at once, and the reconciler is nudged (an override or a backfill changes what a job runs).
    pub async fn decide_request(&self, id: i64, approve: bool, comment: &str) -> Result<ChangeRequest, OpsError> {
        let jobs = &self.platform.jobs;
        let decided = self.goal().decide(id, approve, comment, |route_id| jobs.metrics(route_id).is_some()).await?;
        jobs.request_pass();
        Ok(decided)
    }

    /// Runs a filter and projection against the stream's newest events, saving and delivering
    /// nothing (editors: it runs the caller's filter on the server, within a time budget).
    pub async fn preview(&self, team: &str, input: &PreviewInput) -> Result<Vec<PreviewRow>, OpsError> {
        let filter = input.filter.as_deref().map(str::trim).filter(|f| !f.is_empty());
        let (stream, spec) = self.goal().preview_target(team, input.stream.trim(), filter, &input.projection).await?;
        let transforms =
            Transforms::compile(filter, &input.projection, team).map_err(|e| ValidationErrors::single("filter", e))?;
        let topic = stream.stream_topic();
        let limit = input.limit.clamp(1, 1000);
        Ok(keystone_engine::job::preview::preview(
            self.platform.log.as_ref(),
            &topic,
            spec.partitions,
            transforms,
            limit,
        )
        .await?)
    }
}
