//! The reconciler lease: one process among those sharing a database reconciles and runs the
//! jobs; it renews the lease every second, and one that loses it stops its jobs at once.

use super::*;

/// Whether this process may reconcile now.
pub(super) enum Leadership {
    /// It holds the lease; `new` when it just took it.
    Leading {
        new: bool,
    },
    Following,
}

/// The lease that makes one process among those sharing a database the reconciler.
pub const RECONCILER_LEASE: &str = "reconciler";

impl Reconciler {
    /// Hands the lease over at once (at shutdown, after the jobs were drained).
    pub async fn release(&self) {
        let held = self.lease.lock().expect("lease lock").take();
        if let Some(lease) = held {
            if let Err(e) = self.store.release_lease(&lease).await {
                tracing::warn!(error = %e, "Releasing the reconciler lease failed; it will expire.");
            }
        }
    }

    /// The lease held now, for the writes a job makes under it.
    pub(super) fn lease(&self) -> Option<Lease> {
        self.lease.lock().expect("lease lock").clone()
    }

    /// Takes or renews the reconciler lease. A process that loses it stops its jobs at once
    /// (their checkpoint commits would be refused anyway); one that cannot reach the database
    /// stops them before its lease could expire, so two processes never run a job at once.
    pub(super) async fn lead(&self) -> Leadership {
        use std::sync::atomic::Ordering::Relaxed;
        let ttl_ms = self.lease_ttl.as_millis() as i64;
        let held = self.lease();
        let outcome = self.store.acquire_lease(RECONCILER_LEASE, &self.instance, ttl_ms).await;
        let lost = match outcome {
            Ok(Some(lease)) => {
                let new = held.as_ref().map(|l| l.token) != Some(lease.token);
                if new {
                    tracing::info!(instance = %self.instance, token = lease.token, "Took the reconciler lease.");
                }
                *self.lease.lock().expect("lease lock") = Some(lease);
                self.health.leader.store(true, Relaxed);
                return Leadership::Leading { new };
            }
            Ok(None) => held.is_some(),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot renew the reconciler lease.");
                // Still ours for a while; give it up with half its time left.
                match &held {
                    Some(l) if keystone_control::store::now_ms() < l.expires_at - ttl_ms / 2 => {
                        return Leadership::Leading { new: false }
                    }
                    Some(_) => true,
                    None => false,
                }
            }
        };
        if lost {
            tracing::warn!(instance = %self.instance, "Lost the reconciler lease; stopping this process's jobs.");
            *self.lease.lock().expect("lease lock") = None;
            self.jobs.stop_all().await;
            self.processors.stop_all().await;
        }
        self.health.leader.store(false, Relaxed);
        Leadership::Following
    }
}
