//! Deployments: recording each start of a new route version, and judging the ones in progress
//! through their route's stability gate (rolling back those that fail).

use super::*;

impl Reconciler {
    /// Records a deployment when the job about to start runs a route version with different
    /// job-relevant content than the one last deployed (not for a restart of the same version,
    /// nor for a version that only changed the description, alerts or desired state). Compared
    /// with the deployments, not the job's phase record: workers record their phases themselves
    /// and may report the new version before this pass.
    pub(super) async fn record_deployment(&self, route: &Object) -> anyhow::Result<()> {
        let previous = self.store.deployments(&route.id, 1).await?.first().map(|d| d.to_version);
        if previous == Some(route.version) {
            return Ok(());
        }
        let spec: RouteSpec = route.spec_as()?;
        let history = self.store.history(&route.id).await?;
        let before = previous.and_then(|v| history.iter().find(|r| r.version == v));
        if let Some(b) = before {
            let old: RouteSpec = serde_json::from_value(b.spec.clone())?;
            if old.job_relevant() == spec.job_relevant() {
                return Ok(());
            }
        }
        let detail = match previous {
            None => format!("first version v{}", route.version),
            Some(v) => format!("v{v} → v{}", route.version),
        };
        let deployment = NewDeployment {
            route_id: &route.id,
            from_version: previous,
            to_version: route.version,
            strategy: spec.delivery_on_redeploy,
            detail: &detail,
            config: None,
        };
        self.store.start_deployment(deployment).await?;
        Ok(())
    }

    /// Runs every deployment in progress through its route's stability gate.
    pub(super) async fn judge_deployments(&self) -> anyhow::Result<()> {
        let deploying = self.store.deploying().await?;
        self.health.deploying.store(deploying.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if deploying.is_empty() {
            return Ok(());
        }
        let routes = self.store.list(Kind::Route, &Scope::All).await?;
        let overrides = self.store.all_config_overrides().await?;
        // Jobs run by workers speak through their heartbeats.
        let worker_jobs = self.store.worker_jobs().await?;
        let now = keystone_control::store::now_ms();
        let mut failures = Failures::default();
        for d in deploying {
            let judged = self.judge_deployment(&d, &routes, &overrides, &worker_jobs, now).await;
            failures.note(&d.route_id, judged);
        }
        failures.into_result()
    }

    /// Runs one deployment through its route's stability gate.
    async fn judge_deployment(
        &self,
        d: &Deployment,
        routes: &[Object],
        overrides: &HashMap<String, Vec<keystone_control::config::ConfigOverride>>,
        worker_jobs: &[HeldJob],
        now: i64,
    ) -> anyhow::Result<()> {
        {
            let Some(route) = routes.iter().find(|r| r.id == d.route_id) else {
                let why = format!("{}; the route was deleted", d.detail);
                self.store.finish_deployment(&d.id, DeploymentState::Superseded, &why).await?;
                return Ok(());
            };
            // The gate in force is the effective one (an override may set it).
            let spec = self.effective_spec(route, overrides)?;
            let gate = spec.job_settings().unwrap_or_default().gate();
            // Only the job of this deployment's version speaks for it; an override keeps the
            // version, so there only a job started since (by every worker running it) speaks.
            let started = self.jobs.started_at(&d.route_id).or_else(|| oldest_start(worker_jobs, &d.route_id));
            let speaks = d.config.is_none() || started.is_some_and(|at| at >= d.started_at);
            let (phase, counts) = if speaks {
                let job = self.store.job(&d.route_id).await?.filter(|j| j.version == d.to_version);
                // Only workers' instances of this deployment speak (those of the old version, or
                // from before an override, may still beat).
                let live = self.jobs.metrics(&d.route_id).or_else(|| {
                    let this_deployment = |j: &&HeldJob| {
                        j.route_id == d.route_id
                            && j.version == d.to_version
                            && (d.config.is_none() || j.started_at >= d.started_at)
                    };
                    combine_shares(worker_jobs.iter().filter(this_deployment)).remove(&d.route_id)
                });
                (job.map(|j| j.phase), live.map(|m| m.counters).unwrap_or_default())
            } else {
                (None, Default::default())
            };
            let elapsed_s = (now - d.started_at) as f64 / 1000.0;
            match judge(gate, elapsed_s, phase, &counts) {
                Verdict::Wait => {}
                Verdict::Stable => {
                    let detail = format!("{}; stable after {elapsed_s:.0} s", d.detail);
                    self.store.finish_deployment(&d.id, DeploymentState::Stable, &detail).await?;
                }
                Verdict::RollBack(why) => self.roll_back(d, route, &why).await?,
            }
        }
        Ok(())
    }

    /// Sets a route whose new version failed its gate back to the last stable version (an
    /// override back to what it was).
    async fn roll_back(&self, d: &Deployment, route: &Object, why: &str) -> anyhow::Result<()> {
        let gate = Principal::system("keystone (stability gate)");
        if let Some(c) = &d.config {
            let reason = format!("automatic rollback of the override {}: {why}", c.describe());
            Goal::new(&self.store, &gate)
                .set_config_override(&route.team, &route.name, &c.key, c.before.as_deref(), &reason)
                .await?;
            tracing::warn!(route = %format!("{}/{}", route.team, route.name), key = %c.key, why, "Override rolled back.");
            let detail = format!("{}; rolled back: {why}", d.detail);
            self.store.finish_deployment(&d.id, DeploymentState::RolledBack, &detail).await?;
            return Ok(());
        }
        let target = self.store.last_stable_version(&d.route_id).await?.or(d.from_version);
        let Some(target) = target else {
            let detail = format!("{}; unhealthy ({why}) with no earlier version to return to", d.detail);
            return Ok(self.store.finish_deployment(&d.id, DeploymentState::Failed, &detail).await?);
        };
        let reason = format!("automatic rollback of v{}: {why}", d.to_version);
        match Goal::new(&self.store, &gate).roll_back_route(&route.team, &route.name, target, &reason).await {
            Ok(_) => {
                tracing::warn!(route = %format!("{}/{}", route.team, route.name), to = target, why, "Rolled back.");
                let detail = format!("{}; rolled back to v{target}: {why}", d.detail);
                self.store.finish_deployment(&d.id, DeploymentState::RolledBack, &detail).await?;
            }
            // The old version no longer validates (its sink was deleted, say): say so and stop.
            Err(e) => {
                let detail = format!("{}; unhealthy ({why}), and v{target} cannot be restored: {e}", d.detail);
                self.store.finish_deployment(&d.id, DeploymentState::Failed, &detail).await?;
            }
        }
        Ok(())
    }
}
