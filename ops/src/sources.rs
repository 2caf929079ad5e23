//! Operations on sources: their job's state as the console and the API show it.

use crate::{Ops, OpsError};
use keystone_control::Kind;
use keystone_control::SourceStatus;

impl Ops<'_> {
    /// A source's phase, snapshot progress, confirmed position, the WAL its slot holds back and
    /// its alerts' states, as last recorded; readers of the team. A source that never ran yet is `starting`.
    pub async fn source_status(&self, team: &str, name: &str) -> Result<SourceStatus, OpsError> {
        let source = self.goal().get(Kind::Source, team, name).await?;
        let status = self.platform.store.source_status(&source.id).await?;
        let mut status = status.unwrap_or_else(|| SourceStatus { phase: "starting".into(), ..Default::default() });
        status.alerts = self.platform.store.route_alerts(&source.id).await?;
        Ok(status)
    }

    /// Restarts the source's job (it resumes from its slot); editors of the team.
    pub async fn restart_source(&self, team: &str, name: &str, via: &str) -> Result<i64, OpsError> {
        let generation = self.goal().restart_source(team, name, via).await?;
        tracing::info!(source = %format!("{team}/{name}"), by = %self.who.display, generation, "Source restart requested.");
        self.platform.jobs.request_pass();
        Ok(generation)
    }
}
