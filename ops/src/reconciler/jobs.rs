//! Jobs: each route's job runs its current version (the fingerprint of what it is built from),
//! here or, on a control-only process, as the plan the workers follow.

use super::*;

/// What a route's job is built from.
pub(super) struct Inputs {
    route: Object,
    stream: Object,
    sink: Object,
    /// A running backfill: the job reads its source instead of the stream.
    backfill: Option<Backfill>,
    /// A stream sink's target topic.
    target_topic: Option<String>,
}

impl Reconciler {
    pub(super) async fn routes(&self, streams: &[Object]) -> anyhow::Result<()> {
        let routes = self.store.list(Kind::Route, &Scope::All).await?;
        let sinks = self.store.list(Kind::Sink, &Scope::All).await?;
        let find = |objects: &[Object], team: &str, name: &str| {
            objects.iter().find(|o| o.team == team && o.name == name).cloned()
        };
        let overrides = self.store.all_config_overrides().await?;
        let mut backfills: HashMap<String, Backfill> =
            self.store.running_backfills().await?.into_iter().map(|b| (b.route_id.clone(), b)).collect();
        let restarts = self.store.restart_generations().await?;
        let mut inputs: HashMap<String, Inputs> = HashMap::new();
        let mut goal = Vec::new();
        for mut route in routes {
            // The job runs the effective spec, so changing a layer rolls the job like a new version.
            let Ok(spec) = self.effective_spec(&route, &overrides) else { continue };
            // A worker runs the routes of its own pool only: a pool isolates one kind of sink's
            // jobs on their own machines.
            if self.role == ProcessRole::Worker && spec.pool() != self.pool.as_deref() {
                continue;
            }
            route.spec = serde_json::to_value(&spec)?;
            let (Some(stream), Some(sink)) =
                (find(streams, &route.team, spec.stream.as_str()), find(&sinks, &route.team, spec.sink.as_str()))
            else {
                continue;
            };
            let Ok(sink_spec) = sink.spec_as::<SinkSpec>() else { continue };
            let backfill = backfills.remove(&route.id);
            let target_topic = target_topic(&sink_spec, &sink, streams);
            let fingerprint = job_fingerprint(&JobInputs {
                route: serde_json::to_value(spec.job_relevant())?,
                stream_version: stream.version,
                sink: serde_json::to_value(sink_spec.job_relevant())?,
                backfill: backfill.as_ref().map(|b| b.id.as_str()),
                target_topic: target_topic.as_deref(),
                restart_generation: restarts.get(&route.id).copied().unwrap_or(0),
            });
            goal.push(JobGoal {
                route_id: route.id.clone(),
                fingerprint,
                drain_first: spec.delivery_on_redeploy == Delivery::NoDuplicates,
                desired: spec.state,
            });
            inputs.insert(route.id.clone(), Inputs { route, stream, sink, backfill, target_topic });
        }
        let observed: Vec<ObservedJob> = if self.role.runs_jobs() {
            self.jobs.fingerprints()
        } else {
            let planned = self.planned.lock().expect("planned lock");
            planned.iter().map(|(id, (fingerprint, paused))| (id.clone(), fingerprint.clone(), *paused)).collect()
        }
        .into_iter()
        .map(|(route_id, fingerprint, paused)| ObservedJob { route_id, fingerprint, paused })
        .collect();
        let plan = plan_jobs(&goal, &observed);
        self.health.last_actions.fetch_add(plan.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if !self.role.runs_jobs() {
            return self.plan_for_workers(plan, &inputs).await;
        }
        let mut failures = Failures::default();
        for action in plan {
            let route_id = action.route_id().to_owned();
            failures.note(&route_id, self.apply(action, &inputs).await);
        }
        failures.into_result()
    }

    /// Applies one job action in this process (an error concerns that route alone).
    pub(super) async fn apply(&self, action: JobAction, inputs: &HashMap<String, Inputs>) -> anyhow::Result<()> {
        match action {
            JobAction::Start(g) => {
                if self.role.controls() {
                    self.record_deployment(&inputs[&g.route_id].route).await?;
                }
                self.start(&g, &inputs[&g.route_id]).await;
            }
            JobAction::Redeploy(g) => {
                if self.role.controls() {
                    self.record_deployment(&inputs[&g.route_id].route).await?;
                }
                self.jobs.stop(&g.route_id, g.drain_first).await;
                self.start(&g, &inputs[&g.route_id]).await;
            }
            JobAction::Pause { route_id } => {
                self.jobs.set_paused(&route_id, true);
            }
            JobAction::Resume { route_id } => {
                self.jobs.set_paused(&route_id, false);
            }
            JobAction::Halt { route_id } => self.stop(&route_id, "stopped as declared").await?,
            JobAction::Stop { route_id } => self.stop(&route_id, "the route was deleted").await?,
        }
        Ok(())
    }

    /// The control plane's side of a plan whose jobs run on workers: it records deployments and
    /// declared stops, and creates the dead-letter topics the workers' jobs need (workers do
    /// not create topics).
    pub(super) async fn plan_for_workers(
        &self,
        plan: Vec<JobAction>,
        inputs: &HashMap<String, Inputs>,
    ) -> anyhow::Result<()> {
        let mut failures = Failures::default();
        for action in plan {
            let route_id = action.route_id().to_owned();
            failures.note(&route_id, self.plan_for_workers_one(action, inputs).await);
        }
        failures.into_result()
    }

    pub(super) async fn plan_for_workers_one(
        &self,
        action: JobAction,
        inputs: &HashMap<String, Inputs>,
    ) -> anyhow::Result<()> {
        match action {
            JobAction::Start(g) | JobAction::Redeploy(g) => {
                let route = &inputs[&g.route_id].route;
                self.record_deployment(route).await?;
                let dead_letters = keystone_control::dead_letter_topic(&route.team, &route.name);
                self.log.ensure_topic(&dead_letters, 1, keystone_engine::job::DEAD_LETTER_RETENTION).await?;
                let paused = g.desired == DesiredState::Paused;
                self.planned.lock().expect("planned lock").insert(g.route_id.clone(), (g.fingerprint, paused));
            }
            JobAction::Pause { route_id } => self.set_planned_paused(&route_id, true),
            JobAction::Resume { route_id } => self.set_planned_paused(&route_id, false),
            JobAction::Halt { route_id } => {
                self.planned.lock().expect("planned lock").remove(&route_id);
                self.stop(&route_id, "stopped as declared").await?;
            }
            JobAction::Stop { route_id } => {
                self.planned.lock().expect("planned lock").remove(&route_id);
                self.stop(&route_id, "the route was deleted").await?;
            }
        }
        Ok(())
    }

    pub(super) fn set_planned_paused(&self, route_id: &str, paused: bool) {
        if let Some(p) = self.planned.lock().expect("planned lock").get_mut(route_id) {
            p.1 = paused;
        }
    }

    /// A route's effective spec: the declaration with the environment and the console overrides
    /// layered on (a layer that no longer applies is ignored, with a warning).
    pub(super) fn effective_spec(
        &self,
        route: &Object,
        overrides: &HashMap<String, Vec<keystone_control::config::ConfigOverride>>,
    ) -> Result<RouteSpec, serde_json::Error> {
        let declared: RouteSpec = route.spec_as()?;
        let layers = overrides.get(&route.id).map_or(&[][..], Vec::as_slice);
        Ok(match keystone_control::config::effective(&declared, &self.job_env, layers) {
            Ok((spec, _)) => spec,
            Err(e) => {
                tracing::warn!(route = %format!("{}/{}", route.team, route.name), error = %e, "Configuration layers ignored.");
                declared
            }
        })
    }

    /// Drains a route's job (finishing and committing the batch in hand) and records why.
    pub(super) async fn stop(&self, route_id: &str, cause: &str) -> anyhow::Result<()> {
        self.jobs.stop(route_id, true).await;
        if !self.role.controls() {
            // The control plane records it once, not every worker.
            return Ok(());
        }
        self.record_stopped(route_id, cause).await
    }

    /// Records that a job (a route's or a processor's) stopped, and why.
    pub(super) async fn record_stopped(&self, job_id: &str, cause: &str) -> anyhow::Result<()> {
        let version = self.store.job(job_id).await?.map_or(0, |j| j.version);
        let change = PhaseChange {
            route_id: job_id,
            version,
            to: JobPhase::Stopped,
            cause,
            error: None,
            restart: false,
            reporter: None,
        };
        self.store.record_phase(change).await?;
        Ok(())
    }

    pub(super) async fn start(&self, goal: &JobGoal, Inputs { route, stream, sink, backfill, target_topic }: &Inputs) {
        let observer = Arc::new(StoreObserver {
            store: self.store.clone(),
            route_id: route.id.clone(),
            version: route.version,
            part_of: (self.role == ProcessRole::Worker).then(|| self.instance.clone()),
        });
        let stats = Arc::new(JobStats::default());
        // Set before the readers start, so a paused route's job reads nothing.
        stats.set_paused(goal.desired == DesiredState::Paused);
        let cancel = CancellationToken::new();
        let built = self.build(route, stream, sink, backfill.as_ref()).await;
        let (spec, task, sink) = match built {
            Ok((spec, sink_spec, secrets, policy)) => {
                let data_dir = self.data_dir.clone();
                let team = sink.team.clone();
                let appender: Arc<dyn Appender> = self.log.clone();
                let egress = self.store.egress().clone();
                let target = target_topic.clone();
                let factory: SinkFactory = Arc::new(move || {
                    AnySink::build(&sink_spec, &team, &secrets, &data_dir, &appender, &egress, target.as_deref())
                });
                let make_sink = {
                    let factory = factory.clone();
                    move || factory()
                };
                // A worker shares the job with the other workers: a consumer group per route (and
                // per backfill, which reads another topic) assigns each its partitions.
                let group: Option<JoinGroup> = (self.role == ProcessRole::Worker).then(|| {
                    let group_id = match backfill {
                        Some(b) => format!("keystone.route.{}.backfill.{}", route.id, b.id),
                        None => format!("keystone.route.{}", route.id),
                    };
                    let (log, topic, session) = (self.log.clone(), spec.topic.clone(), self.group_session);
                    Arc::new(move || log.join_group(&group_id, &topic, session)) as JoinGroup
                });
                let task = self.jobs_on.spawn(supervise(
                    spec.clone(),
                    self.log.clone(),
                    make_sink,
                    Arc::new(match backfill {
                        Some(b) => JobCheckpoints::Backfill {
                            store: self.store.clone(),
                            id: b.id.clone(),
                            lease: self.lease(),
                        },
                        None => JobCheckpoints::Route(StoreCheckpoints::new(self.store.clone(), self.lease())),
                    }),
                    observer,
                    stats.clone(),
                    policy,
                    group,
                    cancel.clone(),
                ));
                (Some(spec), task, Some(factory))
            }
            Err(why) => {
                // Held as failed until the route changes, so the plan does not retry every pass.
                tracing::warn!(route = %format!("{}/{}", route.team, route.name), error = %why, "Job cannot start.");
                observer
                    .report(PhaseReport {
                        phase: JobPhase::Failed,
                        cause: "cannot start".into(),
                        error: Some(why),
                        restart: false,
                    })
                    .await;
                (None, tokio::spawn(async {}), None)
            }
        };
        tracing::info!(route = %format!("{}/{}", route.team, route.name), fingerprint = %goal.fingerprint, "Job started.");
        self.jobs.insert(
            route.id.clone(),
            RunningJob {
                fingerprint: goal.fingerprint.clone(),
                version: route.version,
                started_at: keystone_control::store::now_ms(),
                spec,
                stats,
                cancel,
                task,
                sink,
            },
        );
    }

    pub(super) async fn build(
        &self,
        route: &Object,
        stream: &Object,
        sink: &Object,
        backfill: Option<&Backfill>,
    ) -> Result<(Arc<JobSpec>, SinkSpec, BTreeMap<String, String>, RestartPolicy), String> {
        let route_spec: RouteSpec = route.spec_as().map_err(|e| format!("route spec: {e}"))?;
        let stream_spec: StreamSpec = stream.spec_as().map_err(|e| format!("stream spec: {e}"))?;
        let sink_spec: SinkSpec = sink.spec_as().map_err(|e| format!("sink spec: {e}"))?;
        let secrets: BTreeMap<String, String> =
            self.store.sink_secrets(&sink.id).await.map_err(|e| format!("sink secrets: {e}"))?.into_iter().collect();
        let mut spec = JobSpec::for_route(
            &route.id,
            &route.team,
            &route.name,
            &route_spec,
            (stream.stream_topic(), &stream_spec),
        )?;
        if let Some(b) = backfill {
            // The route's code, another source: read it from its start up to its recorded end.
            spec.topic = b.topic.clone();
            spec.partitions = b.partitions;
            spec.start_at = keystone_engine::log::StartAt::Earliest;
            spec.until = b.end.iter().copied().collect();
        }
        let settings = route_spec.job_settings().map_err(|e| e.to_string())?;
        let policy = RestartPolicy {
            stall_after: Duration::from_secs(u64::from(settings.stall_timeout_s)),
            ..Default::default()
        };
        Ok((Arc::new(spec), sink_spec, secrets, policy))
    }
}
