//! Operations on a route's job: restart, desired state, rollback, rewind, backfill, dead-letter
//! retry and preview.

use crate::{Ops, OpsError};
use keystone_control::backfill::{Backfill, BackfillSource};
use keystone_control::goal::Applied;
use keystone_control::rewind::{RewindPlan, RewindTo};
use keystone_control::{DesiredState, PreviewRow, Projection, ValidationErrors};
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

/// What a rewind did, or would do with `dry_run`.
pub type RewindOutcome = RewindPlan;

/// A backfill that started.
pub type BackfillStarted = Backfill;

/// Most dead letters one retry handles.
const MAX_RETRY: usize = 10_000;

impl Ops<'_> {
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
    ) -> Result<RewindOutcome, OpsError> {
        let goal = self.goal();
        let i = goal.rewind_inputs(team, name, to).await?;
        let target = target_positions(self.platform.log.as_ref(), &i.topic, i.partitions, to, &i.recorded).await?;
        let held = self.platform.jobs.metrics(i.route_id()).is_some();
        Ok(goal.rewind_route(&i, held, &target, dry_run).await?)
    }

    /// Starts a backfill from another stream or a file sink's files: the files are checked
    /// whole first, and the job switches to the source on the reconciler's next pass.
    pub async fn start_backfill(
        &self,
        team: &str,
        name: &str,
        source: BackfillSource,
    ) -> Result<BackfillStarted, OpsError> {
        let goal = self.goal();
        let plan = goal.plan_backfill(team, name, source).await?;
        let p = self.platform;
        let files = plan
            .files
            .as_ref()
            .map(|f| SinkFiles::of_sink(&f.path, &f.team, &f.settings, &f.secrets, &p.sinks_root, p.store.egress()))
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
