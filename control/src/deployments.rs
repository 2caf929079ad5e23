//! Deployments: each move of a route's job to another version, and the stability gate that
//! decides whether the new version stays or is rolled back. `judge` is pure (tested without
//! I/O); the reconciler's executor records deployments and applies the verdicts.

use crate::telemetry::JobCounters;
use crate::{Delivery, JobPhase};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// Started; the new version has not proven itself yet.
    Deploying,
    /// Healthy through its stability window.
    Stable,
    /// Unhealthy within its window: the route was set back to the last stable version.
    RolledBack,
    /// Unhealthy within its window, with no earlier version to return to (a new route).
    Failed,
    /// Another deployment of the route started before this one was judged.
    Superseded,
}

impl DeploymentState {
    pub const ALL: [DeploymentState; 5] = [
        DeploymentState::Deploying,
        DeploymentState::Stable,
        DeploymentState::RolledBack,
        DeploymentState::Failed,
        DeploymentState::Superseded,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Deploying => "deploying",
            DeploymentState::Stable => "stable",
            DeploymentState::RolledBack => "rolled_back",
            DeploymentState::Failed => "failed",
            DeploymentState::Superseded => "superseded",
        }
    }
    pub fn parse(s: &str) -> Option<DeploymentState> {
        DeploymentState::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// One deployment of a route's job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct Deployment {
    pub id: String,
    pub route_id: String,
    /// The route version the job ran before (none for the first deployment).
    pub from_version: Option<i64>,
    pub to_version: i64,
    pub strategy: Delivery,
    pub state: DeploymentState,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// What changed, and how it ended.
    pub detail: String,
    /// For the deployment of a console override (the route version stays): the key and its
    /// override before and after, which a rollback puts back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigChange>,
}

/// One override of a route's configuration, as deployed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct ConfigChange {
    pub key: String,
    /// The override before (none: the layers below decided).
    pub before: Option<String>,
    /// The override after (none: cleared).
    pub after: Option<String>,
}

impl ConfigChange {
    /// "batch_size: 500 → 50" (an absent override reads "the layers below").
    pub fn describe(&self) -> String {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "the layers below".to_owned());
        format!("{}: {} → {}", self.key, show(&self.before), show(&self.after))
    }
}

/// The stability gate of a route (its `job.stability_s` and `job.max_error_percent`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    /// How long the new version must stay healthy; 0 turns the gate off.
    pub window_s: u32,
    /// Share of read events that may fail (filter errors and dead letters), in percent.
    pub max_error_percent: u32,
}

/// Fewer events than this say nothing about an error rate.
pub const MIN_EVENTS_FOR_RATE: u64 = 10;

/// What the gate decides about a deployment in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Wait,
    Stable,
    RollBack(String),
}

/// Judges a deployment `elapsed_s` after it started, on the new job's phase and its counters
/// since it started.
pub fn judge(gate: Gate, elapsed_s: f64, phase: Option<JobPhase>, counts: &JobCounters) -> Verdict {
    if gate.window_s == 0 {
        return Verdict::Stable;
    }
    if phase == Some(JobPhase::Failed) {
        return Verdict::RollBack("the new version's job failed".into());
    }
    let failed = counts.filter_errors + counts.dead_lettered;
    if counts.read >= MIN_EVENTS_FOR_RATE && failed * 100 > counts.read * u64::from(gate.max_error_percent) {
        return Verdict::RollBack(format!(
            "{failed} of {} events failed (filter errors and dead letters), over the {}% threshold",
            counts.read, gate.max_error_percent
        ));
    }
    if elapsed_s < f64::from(gate.window_s) {
        return Verdict::Wait;
    }
    match phase {
        Some(JobPhase::Running | JobPhase::Paused) => Verdict::Stable,
        Some(p) => Verdict::RollBack(format!("still {p} after the {} s stability window", gate.window_s)),
        None => Verdict::RollBack(format!("not started after the {} s stability window", gate.window_s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATE: Gate = Gate { window_s: 60, max_error_percent: 50 };

    fn counts(read: u64, filter_errors: u64, dead_lettered: u64) -> JobCounters {
        JobCounters { read, filter_errors, dead_lettered, ..Default::default() }
    }

    #[test]
    fn a_healthy_version_waits_out_its_window_then_is_stable() {
        let ok = counts(500, 3, 1);
        assert_eq!(judge(GATE, 10.0, Some(JobPhase::Running), &ok), Verdict::Wait);
        assert_eq!(judge(GATE, 60.0, Some(JobPhase::Running), &ok), Verdict::Stable);
        assert_eq!(judge(Gate { window_s: 0, ..GATE }, 0.0, None, &ok), Verdict::Stable, "gate off");
    }

    #[test]
    fn failing_events_a_failed_job_or_a_job_still_unhealthy_roll_back() {
        let bad = judge(GATE, 2.0, Some(JobPhase::Running), &counts(40, 30, 0));
        assert_eq!(
            bad,
            Verdict::RollBack("30 of 40 events failed (filter errors and dead letters), over the 50% threshold".into())
        );
        // Too few events to judge a rate yet.
        assert_eq!(judge(GATE, 2.0, Some(JobPhase::Running), &counts(4, 4, 0)), Verdict::Wait);
        assert!(matches!(judge(GATE, 1.0, Some(JobPhase::Failed), &counts(0, 0, 0)), Verdict::RollBack(_)));
        assert_eq!(
            judge(GATE, 61.0, Some(JobPhase::Failing), &counts(0, 0, 0)),
            Verdict::RollBack("still failing after the 60 s stability window".into())
        );
        assert_eq!(judge(GATE, 30.0, Some(JobPhase::Failing), &counts(0, 0, 0)), Verdict::Wait);
    }
}
