//! Backfills: one that delivered up to its end (or whose route was deleted) is finished, and
//! the job goes back to its stream.

use super::*;

impl Reconciler {
    /// Ends every running backfill that delivered up to its end (or whose route was deleted),
    /// in the operations log too. True when one ended (the job goes back to its stream on the
    /// next pass).
    pub(super) async fn end_backfills(&self) -> anyhow::Result<bool> {
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
}
