//! The health monitor of one job: starts it, reports its phase, restarts it with exponential
//! backoff when it crashes or stalls, and marks it failed when it keeps failing. Each job has its
//! own supervisor task, so one job's trouble never delays another's restart.

use super::{run_assigned, Assignments, CheckpointStore, JobError, JobSpec, JobStats};
use crate::log::group::Membership;
use crate::log::{Log, LogError};
use crate::sinks::{ConfigError, Sink};
use keystone_control::JobPhase;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A phase change the supervisor reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseReport {
    pub phase: JobPhase,
    pub cause: String,
    pub error: Option<String>,
    /// This start follows a crash or a stall.
    pub restart: bool,
}

/// Where phase changes go (the database, in production).
pub trait JobObserver: Send + Sync + 'static {
    fn report(&self, report: PhaseReport) -> impl Future<Output = ()> + Send;
}

#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// More crashes than this within `window` mark the job failed.
    pub max_restarts: usize,
    pub window: Duration,
    /// A job with lag whose position has not moved for this long (while its sink is not
    /// reporting errors) is restarted.
    pub stall_after: Duration,
    /// First restart delay, doubled per consecutive crash up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 5,
            window: Duration::from_secs(600),
            stall_after: Duration::from_secs(120),
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// How often the supervisor looks at its job.
const WATCH_EVERY: Duration = Duration::from_millis(200);
/// How long a job asked to stop may take to finish its batch before it is aborted.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Joins a route job's consumer group for one run of the job (see `log::group`).
pub type JoinGroup = Arc<dyn Fn() -> Result<Membership, LogError> + Send + Sync>;

/// What a supervisor runs: one run of a job, until it is cancelled or fails, and how many events
/// wait for it (no progress with events waiting is a stall). Route jobs and processor jobs are
/// supervised by the same code through it.
pub trait JobBody: Send + Sync + 'static {
    type Sink: Sink;
    fn run(
        &self,
        sink: Arc<Self::Sink>,
        stats: Arc<JobStats>,
        cancel: CancellationToken,
        assignments: Option<Assignments>,
    ) -> impl Future<Output = Result<(), JobError>> + Send + 'static;
    fn lag(&self, stats: &JobStats) -> u64;
}

/// A route's job: its spec, the log it reads and where it commits positions.
struct RouteBody<L, S, C> {
    spec: Arc<JobSpec>,
    log: Arc<L>,
    checkpoints: Arc<C>,
    sink: PhantomData<fn() -> S>,
}

impl<L: Log, S: Sink, C: CheckpointStore> JobBody for RouteBody<L, S, C> {
    type Sink = S;

    fn run(
        &self,
        sink: Arc<S>,
        stats: Arc<JobStats>,
        cancel: CancellationToken,
        assignments: Option<Assignments>,
    ) -> impl Future<Output = Result<(), JobError>> + Send + 'static {
        run_assigned(self.spec.clone(), self.log.clone(), sink, self.checkpoints.clone(), stats, cancel, assignments)
    }

    fn lag(&self, stats: &JobStats) -> u64 {
        stats.lag(&self.spec, self.log.as_ref())
    }
}

/// Supervises one job until `cancel` fires. `make_sink` builds a fresh sink for every start.
/// With `group`, every run of the job joins the route's consumer group and runs the partitions
/// it is assigned (the job is shared by several workers); without, it runs them all.
#[allow(clippy::too_many_arguments)]
pub async fn supervise<L, S, C, O, F>(
    spec: Arc<JobSpec>,
    log: Arc<L>,
    make_sink: F,
    checkpoints: Arc<C>,
    observer: Arc<O>,
    stats: Arc<JobStats>,
    policy: RestartPolicy,
    group: Option<JoinGroup>,
    cancel: CancellationToken,
) where
    L: Log,
    S: Sink,
    C: CheckpointStore,
    O: JobObserver,
    F: Fn() -> Result<S, ConfigError> + Send + Sync + 'static,
{
    let body = RouteBody { spec, log, checkpoints, sink: PhantomData };
    supervise_body(Arc::new(body), make_sink, observer, stats, policy, group, cancel).await
}

/// [`supervise`] for any [`JobBody`].
pub async fn supervise_body<B, O, F>(
    body: Arc<B>,
    make_sink: F,
    observer: Arc<O>,
    stats: Arc<JobStats>,
    policy: RestartPolicy,
    group: Option<JoinGroup>,
    cancel: CancellationToken,
) where
    B: JobBody,
    O: JobObserver,
    F: Fn() -> Result<B::Sink, ConfigError> + Send + Sync + 'static,
{
    let mut crashes: Vec<Instant> = Vec::new();
    let mut restart_cause: Option<String> = None;
    let observer = Checked { observer, last: std::sync::Mutex::new(None) };
    let observer = &observer;
    loop {
        let restart = restart_cause.is_some();
        let cause = restart_cause.clone().unwrap_or_else(|| "declared".into());
        observer.report(PhaseReport { phase: JobPhase::Starting, cause, error: None, restart }).await;
        let membership = group.as_ref().map(|join| join()).transpose();
        let failure = match (make_sink(), membership) {
            (Err(e), _) => format!("the sink cannot be built: {e}"),
            (_, Err(e)) => format!("joining the route's consumer group failed: {e}"),
            (Ok(sink), Ok(membership)) => {
                // The member stays in the group while the job runs and leaves after it ended.
                let (member, assignments) = membership.unzip();
                let sink = Arc::new(sink);
                let outcome = watch(&body, sink, observer, &stats, &policy, assignments, &cancel).await;
                if let Some(member) = member {
                    member.leave().await;
                }
                match outcome {
                    None => return,
                    Some(failure) => failure,
                }
            }
        };
        if cancel.is_cancelled() {
            return;
        }
        stats.record_error(failure.clone());
        let now = Instant::now();
        crashes.retain(|t| now.duration_since(*t) < policy.window);
        crashes.push(now);
        if crashes.len() > policy.max_restarts {
            let cause = format!("failed {} times within {} s", crashes.len(), policy.window.as_secs());
            observer.report(PhaseReport { phase: JobPhase::Failed, cause, error: Some(failure), restart: false }).await;
            // Held failed until the route changes (the executor then replaces this supervisor).
            cancel.cancelled().await;
            return;
        }
        let exp = (crashes.len() - 1).min(16) as u32;
        let delay = policy.first_backoff.saturating_mul(1 << exp).min(policy.max_backoff);
        let cause = format!("crashed, restarting in {} ms", delay.as_millis());
        observer
            .report(PhaseReport { phase: JobPhase::Failing, cause, error: Some(failure.clone()), restart: false })
            .await;
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return,
        }
        restart_cause = Some(format!("restarted after: {failure}"));
    }
}

/// The observer of one supervisor, which checks that every phase it reports may follow the one
/// before (`JobPhase::may_become`): an undeclared transition is a bug, caught by the tests.
struct Checked<O> {
    observer: Arc<O>,
    last: std::sync::Mutex<Option<JobPhase>>,
}

impl<O: JobObserver> Checked<O> {
    async fn report(&self, report: PhaseReport) {
        let before = self.last.lock().expect("phase lock").replace(report.phase);
        debug_assert!(
            before.is_none_or(|b| b.may_become(report.phase)),
            "undeclared job phase transition {before:?} -> {}",
            report.phase
        );
        self.observer.report(report).await;
    }
}

/// Runs the job once and watches it. `None` when it stopped because it was asked to; otherwise
/// why it ended (crash, stall, or an unexpected exit).
async fn watch<B: JobBody, O: JobObserver>(
    body: &Arc<B>,
    sink: Arc<B::Sink>,
    observer: &Checked<O>,
    stats: &Arc<JobStats>,
    policy: &RestartPolicy,
    assignments: Option<Assignments>,
    cancel: &CancellationToken,
) -> Option<String> {
    let this_run = cancel.child_token();
    let mut task = tokio::spawn(body.run(sink, stats.clone(), this_run.clone(), assignments));
    // (failing, paused) as last reported.
    let mut reported: Option<(bool, bool)> = None;
    let mut last_progress = (stats.activity(), Instant::now());
    let mut tick = tokio::time::interval(WATCH_EVERY);
    loop {
        tokio::select! {
            joined = &mut task => {
                return match joined {
                    _ if cancel.is_cancelled() => None,
                    Ok(Ok(())) => Some("the job stopped unexpectedly".into()),
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) => Some(format!("the job panicked: {e}")),
                };
            }
            _ = tick.tick() => {}
        }
        let failing = stats.failing.load(Ordering::Relaxed);
        let paused = stats.is_paused();
        if reported != Some((failing, paused)) {
            let report = if failing {
                PhaseReport {
                    phase: JobPhase::Failing,
                    cause: "the sink keeps failing; retrying with backoff".into(),
                    error: stats.last_error(),
                    restart: false,
                }
            } else if paused {
                PhaseReport { phase: JobPhase::Paused, cause: "paused".into(), error: None, restart: false }
            } else {
                let cause = match reported {
                    None => "started",
                    Some((_, true)) => "resumed",
                    Some(_) => "the sink recovered",
                };
                PhaseReport { phase: JobPhase::Running, cause: cause.into(), error: None, restart: false }
            };
            observer.report(report).await;
            reported = Some((failing, paused));
        }
        let progress = stats.activity();
        // A paused job makes no progress on purpose: that is not a stall.
        if progress != last_progress.0 || failing || paused {
            last_progress = (progress, Instant::now());
        } else if last_progress.1.elapsed() >= policy.stall_after && body.lag(stats) > 0 {
            this_run.cancel();
            if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
                task.abort();
            }
            return Some(format!("stalled: no progress for {} s with events waiting", policy.stall_after.as_secs()));
        }
    }
}
