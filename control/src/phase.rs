//! A job's phases and the transitions a run of a job may make between them: a rule of its own,
//! which the model (job records), alert rules and the data plane's supervisor all read.

use serde::{Deserialize, Serialize};

/// A route job's observed lifecycle phase, recorded with every transition and its cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobPhase {
    /// Building its sink and loading its checkpoints.
    Starting,
    /// Delivering.
    Running,
    /// Up, but its sink keeps failing; it retries with backoff and commits nothing undelivered.
    Failing,
    /// Crashed or stalled too often; stays down until its route changes or is restarted.
    Failed,
    /// Suspended on purpose: up, reading nothing, everything delivered committed.
    Paused,
    /// Stopped on purpose (route stopped, deleted or being redeployed).
    Stopped,
}

wire_names!(JobPhase { Starting => "starting", Running => "running", Failing => "failing", Failed => "failed", Paused => "paused", Stopped => "stopped" });

impl JobPhase {
    /// Whether one run of a job may go from `self` to `to`. A new run (or version) starts, and a
    /// job is stopped, from any phase; otherwise a job moves among running, failing and paused,
    /// and may fail for good from any of them or while starting. A failed or stopped job only
    /// ever starts again.
    pub fn may_become(self, to: JobPhase) -> bool {
        use JobPhase::*;
        self == to
            || matches!(to, Starting | Stopped)
            || matches!((self, to), (Starting | Running | Failing | Paused, Running | Failing | Paused | Failed))
    }
}
