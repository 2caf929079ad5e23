//! Processors: each processor's job runs its current version, in the process that runs jobs
//! and serves everything (role `all`); spreading processors over workers is the next step.
//! Planned like routes (`plan_jobs`), supervised like routes (`supervise_body`), held in a
//! registry of their own so the two plans never see each other's jobs.

use super::*;
use keystone_control::{processor_dead_letter_topic, ProcessorSpec};
use keystone_engine::job::processor::{ProcessorBody, ProcessorCheckpoints, ProcessorJob};
use keystone_engine::job::supervisor::supervise_body;
use keystone_engine::job::CheckpointError;
use std::marker::PhantomData;

/// What a processor's job is built from.
pub(super) struct ProcessorInputs {
    processor: Object,
    spec: ProcessorSpec,
    stream: Object,
    sink: Object,
    target_topic: Option<String>,
}

/// A processor's checkpoints in the database: positions and state in one row.
struct StoreProcessorCheckpoints {
    store: Store,
}

impl ProcessorCheckpoints for StoreProcessorCheckpoints {
    async fn load(&self, processor_id: &str) -> Result<Option<(Vec<(u32, u64)>, Vec<u8>)>, CheckpointError> {
        let saved = self.store.processor_checkpoint(processor_id).await.map_err(CheckpointError::new)?;
        Ok(saved.map(|c| (c.positions, c.state)))
    }

    async fn save(&self, processor_id: &str, positions: &[(u32, u64)], state: &[u8]) -> Result<(), CheckpointError> {
        self.store.put_processor_checkpoint(processor_id, positions, state).await.map_err(CheckpointError::new)
    }
}

impl Reconciler {
    pub(super) async fn processors(&self, streams: &[Object]) -> anyhow::Result<()> {
        if self.role != ProcessRole::All {
            return Ok(());
        }
        let processors = self.store.list(Kind::Processor, &Scope::All).await?;
        let sinks = self.store.list(Kind::Sink, &Scope::All).await?;
        let find = |objects: &[Object], team: &str, name: &str| {
            objects.iter().find(|o| o.team == team && o.name == name).cloned()
        };
        let live: std::collections::HashSet<String> = processors.iter().map(|p| p.id.clone()).collect();
        let mut goal = Vec::new();
        let mut inputs: HashMap<String, ProcessorInputs> = HashMap::new();
        for processor in processors {
            let Ok(spec) = processor.spec_as::<ProcessorSpec>() else { continue };
            let Ok(read) = keystone_sql::read_streams(&spec.sql) else { continue };
            let [input] = read.as_slice() else { continue };
            let (Some(stream), Some(sink)) =
                (find(streams, &processor.team, input), find(&sinks, &processor.team, spec.sink.as_str()))
            else {
                continue;
            };
            let Ok(sink_spec) = sink.spec_as::<SinkSpec>() else { continue };
            let target_topic = target_topic(&sink_spec, &sink, streams);
            let fingerprint = job_fingerprint(&JobInputs {
                route: serde_json::to_value(spec.job_relevant())?,
                stream_version: stream.version,
                sink: serde_json::to_value(sink_spec.job_relevant())?,
                backfill: None,
                target_topic: target_topic.as_deref(),
                restart_generation: 0,
            });
            // Always drained on redeploy: the new version restores the old one's checkpoint,
            // which must be taken first (two versions must never share one).
            goal.push(JobGoal { route_id: processor.id.clone(), fingerprint, drain_first: true, desired: spec.state });
            inputs.insert(processor.id.clone(), ProcessorInputs { processor, spec, stream, sink, target_topic });
        }
        let observed: Vec<ObservedJob> = self
            .processors
            .fingerprints()
            .into_iter()
            .map(|(route_id, fingerprint, paused)| ObservedJob { route_id, fingerprint, paused })
            .collect();
        let plan = plan_jobs(&goal, &observed);
        self.health.last_actions.fetch_add(plan.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let mut failures = Failures::default();
        for action in plan {
            let id = action.route_id().to_owned();
            let outcome = match action {
                JobAction::Start(g) => self.start_processor(&g, &inputs[&g.route_id], streams).await,
                JobAction::Redeploy(g) => {
                    self.processors.stop(&g.route_id, true).await;
                    self.start_processor(&g, &inputs[&g.route_id], streams).await
                }
                JobAction::Pause { route_id } => {
                    self.processors.set_paused(&route_id, true);
                    Ok(())
                }
                JobAction::Resume { route_id } => {
                    self.processors.set_paused(&route_id, false);
                    Ok(())
                }
                JobAction::Halt { route_id } => self.stop_processor(&route_id, "stopped as declared").await,
                JobAction::Stop { route_id } => {
                    // A deleted processor's state goes with it (a processor declared again under
                    // the same name is a new object and starts empty).
                    match self.stop_processor(&route_id, "the processor was deleted").await {
                        Ok(()) if !live.contains(&route_id) => {
                            self.store.drop_processor_checkpoint(&route_id).await.map_err(Into::into)
                        }
                        other => other,
                    }
                }
            };
            failures.note(&id, outcome);
        }
        failures.into_result()
    }

    async fn stop_processor(&self, id: &str, cause: &str) -> anyhow::Result<()> {
        self.processors.stop(id, true).await;
        self.record_stopped(id, cause).await
    }

    async fn start_processor(
        &self,
        goal: &JobGoal,
        inputs: &ProcessorInputs,
        streams: &[Object],
    ) -> anyhow::Result<()> {
        let ProcessorInputs { processor, stream, sink, target_topic, .. } = inputs;
        let observer = Arc::new(StoreObserver {
            store: self.store.clone(),
            route_id: processor.id.clone(),
            version: processor.version,
            part_of: None,
        });
        let stats = Arc::new(JobStats::default());
        stats.set_paused(goal.desired == DesiredState::Paused);
        let cancel = CancellationToken::new();
        let name = format!("{}/{}", processor.team, processor.name);
        let (task, factory) = match self.build_processor(inputs, streams).await {
            Ok((job, sink_spec, secrets, policy)) => {
                let (data_dir, team) = (self.data_dir.clone(), sink.team.clone());
                let appender: Arc<dyn Appender> = self.log.clone();
                let (egress, target) = (self.store.egress().clone(), target_topic.clone());
                let factory: SinkFactory = Arc::new(move || {
                    AnySink::build(&sink_spec, &team, &secrets, &data_dir, &appender, &egress, target.as_deref())
                });
                let make_sink = {
                    let factory = factory.clone();
                    move || factory()
                };
                let body = ProcessorBody {
                    job: Arc::new(job),
                    log: self.log.clone(),
                    checkpoints: Arc::new(StoreProcessorCheckpoints { store: self.store.clone() }),
                    sink: PhantomData,
                };
                let task = self.jobs_on.spawn(supervise_body(
                    Arc::new(body),
                    make_sink,
                    observer,
                    stats.clone(),
                    policy,
                    None,
                    cancel.clone(),
                ));
                (task, Some(factory))
            }
            Err(why) => {
                tracing::warn!(processor = %name, error = %why, "Processor job cannot start.");
                let report = PhaseReport {
                    phase: JobPhase::Failed,
                    cause: "cannot start".into(),
                    error: Some(why),
                    restart: false,
                };
                observer.report(report).await;
                (tokio::spawn(async {}), None)
            }
        };
        tracing::info!(processor = %name, stream = %stream.name, fingerprint = %goal.fingerprint, "Processor job started.");
        self.processors.insert(
            processor.id.clone(),
            RunningJob {
                fingerprint: goal.fingerprint.clone(),
                version: processor.version,
                started_at: keystone_control::store::now_ms(),
                spec: None,
                stats,
                cancel,
                task,
                sink: factory,
            },
        );
        Ok(())
    }

    async fn build_processor(
        &self,
        ProcessorInputs { processor, spec, stream, sink, .. }: &ProcessorInputs,
        streams: &[Object],
    ) -> Result<(ProcessorJob, SinkSpec, BTreeMap<String, String>, RestartPolicy), String> {
        let stream_spec: StreamSpec = stream.spec_as().map_err(|e| format!("stream spec: {e}"))?;
        let sink_spec: SinkSpec = sink.spec_as().map_err(|e| format!("sink spec: {e}"))?;
        let secrets: BTreeMap<String, String> =
            self.store.sink_secrets(&sink.id).await.map_err(|e| format!("sink secrets: {e}"))?.into_iter().collect();
        let team_streams: BTreeMap<String, Option<serde_json::Value>> = streams
            .iter()
            .filter(|s| s.team == processor.team)
            .map(|s| (s.name.clone(), s.spec_as::<StreamSpec>().ok().and_then(|s| s.schema)))
            .collect();
        // Planned again against the streams as they are now (a stream's schema may have moved
        // since the declaration): a query that no longer plans fails the job, with why.
        let query =
            keystone_sql::plan(&spec.sql, &team_streams, spec.state_ttl_s.is_some()).map_err(|e| e.to_string())?;
        let settings = spec.job_settings().map_err(|e| e.to_string())?;
        let input = spec.input(&stream.name);
        let job = ProcessorJob {
            processor_id: processor.id.clone(),
            name: format!("{}/{}", processor.team, processor.name),
            version: processor.version,
            topic: stream.stream_topic(),
            partitions: stream_spec.partitions,
            dead_letter_topic: processor_dead_letter_topic(&processor.team, &processor.name),
            query,
            streams: team_streams,
            lateness_ms: i64::from(input.allowed_lateness_ms),
            idle_timeout_ms: i64::from(input.idle_timeout_ms()),
            event_time: input.time_column().to_owned(),
            state_ttl_ms: spec.state_ttl_s.map(|s| i64::from(s) * 1000),
            batch_size: 1000,
            checkpoint_interval: Duration::from_millis(u64::from(settings.checkpoint_interval_ms)),
        };
        let policy = RestartPolicy {
            stall_after: Duration::from_secs(u64::from(settings.stall_timeout_s)),
            ..Default::default()
        };
        Ok((job, sink_spec, secrets, policy))
    }
}
