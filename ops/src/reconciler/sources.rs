//! Sources: each declared, running source's job runs in the process that runs jobs and serves
//! everything (role `all`), restarted when its declaration or its streams change. A deleted
//! source's slot and publication are dropped from its database (retried every pass until done,
//! also after a restart of Keystone), then its recorded state.

use super::*;
use keystone_control::goal::{Declaration, GoalError, REASON_MAX};
use keystone_control::{SourceKind, SourceSpec};
use keystone_engine::job::CheckpointError;
use keystone_engine::meter::IngestMeter;
use keystone_engine::sources::postgres_cdc::{self, CdcTable, PostgresCdcJob};
use keystone_engine::sources::schema::describe_change;
use keystone_engine::sources::{supervise as supervise_source, SlotMeasures, SourceOffsets, SourceState, SourceStats};
use serde_json::Value;
use std::sync::Mutex;

/// The sources this process runs.
#[derive(Default)]
pub struct Sources {
    running: Mutex<HashMap<String, RunningSource>>,
    /// The streams' ingest counters, which count what sources append too.
    meter: Option<Arc<IngestMeter>>,
}

struct RunningSource {
    fingerprint: String,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Sources {
    /// Sources whose appends count in the streams' ingest counters.
    pub fn metered(meter: Arc<IngestMeter>) -> Sources {
        Sources { running: Mutex::default(), meter: Some(meter) }
    }

    /// Stops every source (at shutdown); each confirms what it appended first.
    pub async fn stop_all(&self) {
        let all: Vec<RunningSource> = self.running.lock().expect("sources lock").drain().map(|(_, r)| r).collect();
        for r in all {
            r.cancel.cancel();
            let _ = r.task.await;
        }
    }

    async fn stop(&self, id: &str) {
        let running = self.running.lock().expect("sources lock").remove(id);
        if let Some(r) = running {
            r.cancel.cancel();
            let _ = r.task.await;
        }
    }
}

/// A source's state in the database.
struct StoreSourceOffsets {
    store: Store,
    meter: Option<Arc<IngestMeter>>,
}

/// What a source's appends count as in a stream's ingest counters: one producer, the source.
const SOURCE_PRODUCER: &str = "source";

impl SourceOffsets for StoreSourceOffsets {
    async fn load(&self, source_id: &str) -> Result<Option<SourceState>, CheckpointError> {
        let status = self.store.source_status(source_id).await.map_err(CheckpointError::new)?;
        Ok(status.map(|s| SourceState {
            snapshot_lsn: s.snapshot_lsn,
            confirmed_lsn: s.confirmed_lsn,
            snapshot_rows: s.snapshot_rows,
            snapshot_tables: s.snapshot_tables,
            snapshot_estimate: s.snapshot_estimate,
        }))
    }

    async fn save(&self, source_id: &str, state: &SourceState, events: u64) -> Result<(), CheckpointError> {
        self.store
            .put_source_position(
                source_id,
                state.snapshot_lsn,
                state.confirmed_lsn,
                state.snapshot_rows,
                &state.snapshot_tables,
                state.snapshot_estimate,
                events,
            )
            .await
            .map_err(CheckpointError::new)
    }

    /// A new revision of the stream, by Keystone, saying what changed in the table; retried on a
    /// concurrent change of the stream (a user growing its partitions, say).
    async fn schema(&self, _source_id: &str, stream: &str, table: &str, schema: &Value) -> Result<(), CheckpointError> {
        let (team, name) = stream.split_once('/').ok_or_else(|| {
            CheckpointError::new(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("stream {stream:?}")))
        })?;
        let who = Principal::system("keystone (change data capture)");
        let goal = Goal::new(&self.store, &who);
        for attempt in 0..3 {
            let current = goal.get(Kind::Stream, team, name).await.map_err(CheckpointError::new)?;
            let mut spec: StreamSpec = current.spec_as().map_err(CheckpointError::new)?;
            if spec.schema.as_ref() == Some(schema) {
                return Ok(());
            }
            let what = describe_change(spec.schema.as_ref(), schema);
            let reason: String = format!("{table}: {what}").chars().take(REASON_MAX).collect();
            spec.schema = Some(schema.clone());
            match goal.update(team, name, Declaration::Stream(spec), &reason, Some(current.version)).await {
                Ok(_) => {
                    tracing::info!(stream = %stream, table = %table, change = %what, "Stream schema follows its table.");
                    return Ok(());
                }
                Err(GoalError::Conflict(_)) if attempt < 2 => continue,
                Err(e) => return Err(CheckpointError::new(e)),
            }
        }
        unreachable!("the last attempt returns")
    }

    fn appended(&self, topic: &str, events: u64, bytes: u64) {
        if let Some(meter) = &self.meter {
            meter.accepted(topic, SOURCE_PRODUCER, events, bytes, keystone_control::store::now_ms());
        }
    }

    async fn measured(&self, source_id: &str, m: SlotMeasures) {
        if let Err(e) = self.store.put_source_measures(source_id, m.retained_bytes, m.lag_bytes, m.lag_ms).await {
            tracing::warn!(source = %source_id, error = %e, "Could not record the slot's retained WAL.");
        }
    }

    async fn report(&self, source_id: &str, phase: JobPhase, cause: &str, error: Option<&str>) {
        if let Err(e) = self.store.put_source_phase(source_id, phase.as_str(), cause, error).await {
            tracing::warn!(source = %source_id, error = %e, "Could not record the source's phase.");
        }
    }
}

impl Reconciler {
    pub(super) async fn sources(&self, streams: &[Object]) -> anyhow::Result<()> {
        if self.role != ProcessRole::All {
            return Ok(());
        }
        let declared = self.store.list(Kind::Source, &Scope::All).await?;
        let restarts = self.store.restart_generations().await?;
        let mut failures = Failures::default();
        let mut goal: HashMap<String, (String, PostgresCdcJob)> = HashMap::new();
        // Phases recorded after the jobs stopped (a stopping job records `stopped`).
        let mut idle: Vec<(&str, &'static str, Option<String>)> = Vec::new();
        for source in &declared {
            match self.source_job(source, streams).await {
                Ok(Some(job)) => {
                    let generation = restarts.get(&source.id).copied().unwrap_or(0);
                    let fingerprint = source_fingerprint(source, &job, generation);
                    goal.insert(source.id.clone(), (fingerprint, job));
                }
                Ok(None) => {
                    let paused = source.spec_as::<SourceSpec>().is_ok_and(|s| s.state == DesiredState::Paused);
                    idle.push((&source.id, if paused { "paused" } else { "stopped" }, None));
                }
                Err(why) => {
                    failures.note(&source.id, Err(anyhow::anyhow!(why.clone())));
                    idle.push((&source.id, JobPhase::Failed.as_str(), Some(why)));
                }
            }
        }
        // Stop what is no longer wanted, or wanted differently.
        let running: Vec<(String, String)> = {
            let r = self.sources.running.lock().expect("sources lock");
            r.iter().map(|(id, s)| (id.clone(), s.fingerprint.clone())).collect()
        };
        for (id, fingerprint) in running {
            if goal.get(&id).is_none_or(|(f, _)| *f != fingerprint) {
                self.sources.stop(&id).await;
            }
        }
        for (id, phase, error) in idle {
            let cause = if error.is_some() { "cannot start" } else { "as declared" };
            self.store.put_source_phase(id, phase, cause, error.as_deref()).await?;
        }
        for (id, (fingerprint, job)) in goal {
            if self.sources.running.lock().expect("sources lock").contains_key(&id) {
                continue;
            }
            self.start_source(id, fingerprint, job);
        }
        self.measure_slots(&declared).await;
        let live: std::collections::HashSet<&str> = declared.iter().map(|o| o.id.as_str()).collect();
        for id in self.store.source_state_ids().await? {
            if !live.contains(id.as_str()) {
                let outcome = self.clean_up_source(&id).await;
                failures.note(&id, outcome);
            }
        }
        failures.into_result()
    }

    fn start_source(&self, id: String, fingerprint: String, job: PostgresCdcJob) {
        let cancel = CancellationToken::new();
        let offsets = Arc::new(StoreSourceOffsets { store: self.store.clone(), meter: self.sources.meter.clone() });
        let stats = Arc::new(SourceStats::default());
        let job = Arc::new(job);
        tracing::info!(source = %job.name, "Source started.");
        let run = {
            let (log, offsets, egress, stats, cancel) =
                (self.log.clone(), offsets.clone(), self.store.egress().clone(), stats.clone(), cancel.clone());
            move || {
                postgres_cdc::run(
                    job.clone(),
                    log.clone(),
                    offsets.clone(),
                    egress.clone(),
                    stats.clone(),
                    cancel.clone(),
                )
            }
        };
        let task = self.jobs_on.spawn(supervise_source(id.clone(), run, offsets, stats, cancel.clone()));
        self.sources.running.lock().expect("sources lock").insert(id, RunningSource { fingerprint, cancel, task });
    }

    /// The job of a source that should run now; `None` for a paused or stopped one.
    async fn source_job(&self, source: &Object, streams: &[Object]) -> Result<Option<PostgresCdcJob>, String> {
        let spec: SourceSpec = source.spec_as().map_err(|e| format!("source spec: {e}"))?;
        if spec.state != DesiredState::Running {
            return Ok(None);
        }
        let SourceKind::PostgresCdc = spec.kind;
        let secrets: BTreeMap<String, String> =
            self.store.sink_secrets(&source.id).await.map_err(|e| format!("secrets: {e}"))?.into_iter().collect();
        let url = secrets.get("url").cloned().ok_or("secrets.url is not set")?;
        let mut tables = Vec::with_capacity(spec.tables.len());
        for t in &spec.tables {
            let stream = streams
                .iter()
                .find(|s| s.team == source.team && s.name == t.stream.as_str())
                .ok_or_else(|| format!("stream {:?} does not exist", t.stream.as_str()))?;
            let stream_spec: StreamSpec = stream.spec_as().map_err(|e| format!("stream spec: {e}"))?;
            tables.push(CdcTable {
                table: t.qualified(),
                topic: stream.stream_topic(),
                stream: format!("{}/{}", stream.team, stream.name),
                partitions: stream_spec.partitions,
            });
        }
        let (slot, publication) = postgres_cdc::owned_names(&source.id);
        Ok(Some(PostgresCdcJob {
            source_id: source.id.clone(),
            name: format!("{}/{}", source.team, source.name),
            url,
            slot,
            publication,
            tables,
            batch_max: 2000,
            flush_interval: Duration::from_millis(100),
            heartbeat: Duration::from_secs(10),
        }))
    }

    /// Records how much WAL the slot of each source that is not running holds back (a running
    /// source's job measures its own): a paused source's slot keeps the database's WAL, and
    /// the metric shows it growing.
    async fn measure_slots(&self, declared: &[Object]) {
        for source in declared {
            let running = source.spec_as::<SourceSpec>().is_ok_and(|s| s.state == DesiredState::Running);
            if running {
                continue;
            }
            let Ok(secrets) = self.store.sink_secrets(&source.id).await else { continue };
            let Some((_, url)) = secrets.into_iter().find(|(k, _)| k == "url") else { continue };
            let (slot, _) = postgres_cdc::owned_names(&source.id);
            match postgres_cdc::measure_slot(&url, self.store.egress(), &slot).await {
                Ok(m) => {
                    let _ = self.store.put_source_measures(&source.id, m.retained_bytes, m.lag_bytes, None).await;
                }
                Err(e) => tracing::debug!(source = %source.name, error = %e, "Could not measure the slot."),
            }
        }
    }

    /// Drops a deleted source's slot and publication from its database, then its state.
    async fn clean_up_source(&self, id: &str) -> anyhow::Result<()> {
        self.sources.stop(id).await;
        let secrets = self.store.sink_secrets(id).await?;
        if let Some((_, url)) = secrets.into_iter().find(|(k, _)| k == "url") {
            let (slot, publication) = postgres_cdc::owned_names(id);
            postgres_cdc::drop_owned(&url, self.store.egress(), &slot, &publication).await?;
        }
        self.store.drop_source_state(id).await?;
        tracing::info!(source = %id, "Deleted source's slot and publication dropped.");
        Ok(())
    }
}

/// What a running source is built from: a change restarts it, and so does a requested restart
/// (a new `generation`).
fn source_fingerprint(source: &Object, job: &PostgresCdcJob, generation: i64) -> String {
    let spec = source.spec_as::<SourceSpec>().map(|s| s.job_relevant()).ok();
    let tables: Vec<(&str, &str, u32)> =
        job.tables.iter().map(|t| (t.table.as_str(), t.topic.as_str(), t.partitions)).collect();
    serde_json::json!({"spec": spec, "tables": tables, "restart": generation}).to_string()
}
