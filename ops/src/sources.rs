//! Operations on sources: their job's state as the console and the API show it.

use crate::{Ops, OpsError};
use keystone_control::Kind;
use keystone_control::SourceStatus;

impl Ops<'_> {
    /// A source's phase, snapshot progress, confirmed position and the WAL its slot holds back,
    /// as last recorded; readers of the team. A source that never ran yet is `starting`.
    pub async fn source_status(&self, team: &str, name: &str) -> Result<SourceStatus, OpsError> {
        let source = self.goal().get(Kind::Source, team, name).await?;
        let status = self.platform.store.source_status(&source.id).await?;
        Ok(status.unwrap_or_else(|| SourceStatus { phase: "starting".into(), ..Default::default() }))
    }
}
