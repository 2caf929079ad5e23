//! What a process does among those sharing one database and one Kafka cluster.

use serde::Deserialize;

/// What a process does among those sharing the database and the Kafka cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProcessRole {
    /// Console, API and ingest; the control plane and, holding the reconciler lease, every
    /// route job (one machine, or a standby of it).
    #[default]
    All,
    /// Console, API and ingest, and the control plane (topics, deployments, backfills) when it
    /// holds the lease; route jobs run on `keystone worker` processes.
    Control,
    /// Console, API and ingest only, for more ingest capacity behind a load balancer.
    Ingest,
    /// Route jobs only: each route's job is shared by the workers through its Kafka consumer
    /// group.
    Worker,
}

impl ProcessRole {
    /// Takes part in the reconciler lease (topics, deployments, backfills).
    pub fn controls(self) -> bool {
        matches!(self, ProcessRole::All | ProcessRole::Control)
    }

    /// Runs route jobs.
    pub fn runs_jobs(self) -> bool {
        matches!(self, ProcessRole::All | ProcessRole::Worker)
    }
}
