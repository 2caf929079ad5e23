//! The service layer. Each use case on the platform is written once here; the console's server
//! functions and the JSON API's handlers only parse their input, call one operation, and render
//! its result (or its [`OpsError`], mapped once per edge). Goal-state rules live in
//! `keystone_control::goal`; an operation adds what needs the data plane (the log, the jobs this
//! process runs) and nudges the reconciler after its commit.

mod processors;
pub mod reconciler;
mod role;
mod routes;
mod sources;
pub mod telemetry;

pub use role::ProcessRole;

pub use routes::{JobState, PreviewInput};

use keystone_control::auth::Principal;
use keystone_control::goal::{Goal, GoalError};
use keystone_control::store::Store;
use keystone_engine::job::registry::JobRegistry;
use keystone_engine::log::{AnyLog, LogError};
use keystone_engine::meter::IngestMeter;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The platform's handles, built once at start-up and shared by both edges (each gets it from
/// its own state by `FromRef`).
#[derive(Clone)]
pub struct Platform {
    /// The source-of-truth database.
    pub store: Store,
    /// The streams' log (embedded or Kafka).
    pub log: Arc<AnyLog>,
    /// The route jobs this process runs.
    pub jobs: Arc<JobRegistry<AnyLog>>,
    /// Per-stream ingest counters.
    pub meter: Arc<IngestMeter>,
    /// The environment layer of job configuration (`KEYSTONE_JOB_*`).
    pub job_env: Arc<BTreeMap<String, String>>,
    /// Where file sinks write (`<data dir>/sinks`): the folders a files backfill reads.
    pub sinks_root: PathBuf,
}

impl Platform {
    /// The operations `who` may run.
    pub fn ops<'a>(&'a self, who: &'a Principal) -> Ops<'a> {
        Ops { platform: self, who }
    }
}

/// The platform as seen by one caller: every operation checks the caller's rights.
pub struct Ops<'a> {
    platform: &'a Platform,
    who: &'a Principal,
}

impl Ops<'_> {
    fn goal(&self) -> Goal<'_> {
        Goal::new(&self.platform.store, self.who)
    }
}

/// Why an operation did not happen. Both edges map it once: the API to a status and an error
/// body, the console to a message next to the form.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Goal-state outcomes: invalid input (by field), not found, forbidden, conflict, held for
    /// approval, the store failing.
    #[error(transparent)]
    Goal(#[from] GoalError),
    /// The log could not be read or written; retry later.
    #[error("the log failed: {0}")]
    Log(#[from] LogError),
    /// Something the operation needs cannot serve it now (the route's job is not running here,
    /// its sink keeps failing, a bucket is unreachable); retry later. The message is safe to show.
    #[error("{0}")]
    Unavailable(String),
}

impl From<keystone_control::ValidationErrors> for OpsError {
    fn from(v: keystone_control::ValidationErrors) -> Self {
        OpsError::Goal(GoalError::Invalid(v))
    }
}

impl From<keystone_control::store::StoreError> for OpsError {
    fn from(e: keystone_control::store::StoreError) -> Self {
        OpsError::Goal(GoalError::Store(e))
    }
}
