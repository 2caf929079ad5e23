//! The telemetry task. Every interval it samples each running job, stores the samples (the time
//! series the dashboards plot, rolled up and pruned by age) and publishes the same numbers, with
//! the streams' ingest counters and the jobs by phase, for `/metrics` in Prometheus text format.
//!
//! The data plane only bumps atomics and records latencies into per-job histograms; everything
//! here runs off the hot path, once per interval.
//!
//! One file per concern: `sampling` (jobs' and streams' samples, and the shares of jobs spread
//! over workers), `exporter` (the `/metrics` series) and `alerting` (rules evaluated on the
//! samples, notifications delivered).

use keystone_control::alerts::{condition, step, AlertKind, AlertRule, AlertState, Observation, RuleStatus};
use keystone_control::alerts::{AlertEvent, AlertStatus};
use keystone_control::store::samples::SampleShare;
use keystone_control::store::{now_ms, Scope, Store, StoreError};
use keystone_control::telemetry::{add_share, Resolution, RESOLUTIONS};
use keystone_control::{Distribution, IngestStats, JobCounters, JobPhase, JobSample, StreamSample};
use keystone_control::{Kind, Object, RouteSpec, SourceSpec, SourceStatus, TeamSpec};
use keystone_engine::job::latency::Interval;
use keystone_engine::job::registry::{JobRegistry, Observed};
use keystone_engine::job::JobStats;
use keystone_engine::log::AnyLog;
use keystone_engine::meter::IngestMeter;
use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use metrics_util::MetricKindMask;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

mod alerting;
mod exporter;
mod sampling;

use alerting::Alerts;
pub use exporter::Exporter;
use exporter::JobSeries;
pub use sampling::spawn_shares;
use sampling::{JobSampler, Level, ShareSums};

pub struct Telemetry {
    pub store: Store,
    pub log: Arc<AnyLog>,
    pub jobs: Arc<JobRegistry<AnyLog>>,
    pub meter: Arc<IngestMeter>,
    pub exporter: Arc<Exporter>,
    pub interval: Duration,
    /// This process's instance name when jobs are shared among processes (streams on Kafka):
    /// it then stores its share of each job's samples, and the jobs' samples are the sums of
    /// every process's shares.
    pub shared_as: Option<String>,
    pub reconciler: Arc<crate::reconciler::ReconcilerHealth>,
    /// Sends alert notifications.
    pub http: reqwest::Client,
}

/// The fine bucket in progress, per stream, and the counts they started from; this process's
/// jobs' samples; and what the alert rules are evaluated on.
struct Open {
    bucket: i64,
    jobs: JobSampler,
    shares: ShareSums,
    stream_samples: HashMap<String, StreamSample>,
    /// Each stream's cumulative ingest counts at the previous pass, by topic.
    ingested: HashMap<String, IngestStats>,
    rolled_up_to: i64,
    alerts: Alerts,
    /// Per route: what its jobs counted since this process started (across job restarts, and
    /// over every process's share of a shared job).
    totals: HashMap<String, JobCounters>,
}

/// The fine bucket a tick at `now` reports: it covers the interval before the tick, so it is
/// filed under that interval's middle.
fn tick_bucket(now: i64, interval: Duration) -> i64 {
    RESOLUTIONS[0].bucket(now - interval.as_millis() as i64 / 2)
}

impl Telemetry {
    pub fn spawn(self) {
        tokio::spawn(async move {
            let mut open = Open {
                bucket: 0,
                jobs: JobSampler::default(),
                shares: ShareSums::default(),
                stream_samples: HashMap::new(),
                ingested: HashMap::new(),
                rolled_up_to: i64::MIN,
                alerts: Alerts::default(),
                totals: HashMap::new(),
            };
            let mut tick = tokio::time::interval(self.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let started = std::time::Instant::now();
                if let Err(e) = self.pass(&mut open).await {
                    tracing::warn!(error = %e, "Telemetry pass failed; the next one tries again.");
                }
                metrics::with_local_recorder(&self.exporter.recorder, || {
                    gauge!("keystone_telemetry_pass_seconds").set(started.elapsed().as_secs_f64());
                });
            }
        });
    }

    async fn pass(&self, open: &mut Open) -> Result<(), keystone_control::store::StoreError> {
        let now = now_ms();
        let fine = RESOLUTIONS[0];
        let bucket = tick_bucket(now, self.interval);
        if bucket != open.bucket {
            open.stream_samples.clear();
            open.bucket = bucket;
        }
        let observed = self.jobs.observe(now).await;
        let (rows, increments) = open.jobs.sample(&observed, bucket);
        let (rows, increments, levels) = match &self.shared_as {
            None => {
                let levels = observed.iter().map(|o| (o.route_id.clone(), (o.lag, o.lag_seconds))).collect();
                (rows, increments, levels)
            }
            Some(me) => {
                self.store.put_sample_shares(me, &rows, now).await?;
                // The bucket before too: shares written after its last pass here still count.
                let shares = self.store.sample_shares(bucket - fine.seconds * 1000).await?;
                open.shares.add_up(shares, now - 3 * self.interval.as_millis() as i64)
            }
        };
        self.store.put_samples(fine, &rows).await?;
        self.sample_streams(open, bucket, now).await?;
        self.roll_up(open, now).await?;
        // The database's health: how long a small query takes (and whether it answers at all,
        // reported below when it fails).
        let asked = std::time::Instant::now();
        let jobs = self.store.jobs(&Scope::All).await;
        metrics::with_local_recorder(&self.exporter.recorder, || {
            gauge!("keystone_database_up").set(if jobs.is_ok() { 1.0 } else { 0.0 });
            gauge!("keystone_database_query_seconds").set(asked.elapsed().as_secs_f64());
        });
        let jobs = jobs?;
        let routes = self.store.list(Kind::Route, &Scope::All).await?;
        let declared: HashSet<&str> = routes.iter().map(|r| r.id.as_str()).collect();
        open.totals.retain(|id, _| declared.contains(id.as_str()));
        for (route_id, grown) in &increments {
            *open.totals.entry(route_id.clone()).or_default() += *grown;
        }
        let mut sources = Vec::new();
        for o in self.store.list(Kind::Source, &Scope::All).await? {
            if let Some(status) = self.store.source_status(&o.id).await? {
                sources.push((o, status));
            }
        }
        self.evaluate_alerts(&mut open.alerts, &routes, &sources, &levels, &open.totals, &jobs, now).await?;
        // A shared job's series come from the sums, published by one process: the leader.
        let series: Vec<JobSeries> = match &self.shared_as {
            None => observed.iter().map(JobSeries::observed).collect(),
            Some(_) if self.reconciler.leader.load(Ordering::Relaxed) => {
                let newest: HashMap<&str, &JobSample> = rows.iter().map(|(id, s)| (id.as_str(), s)).collect();
                routes
                    .iter()
                    .filter_map(|r| {
                        let counters = *open.totals.get(&r.id)?;
                        let (lag, lag_seconds) = levels.get(&r.id).copied().unwrap_or_default();
                        let sample = newest.get(r.id.as_str());
                        Some(JobSeries {
                            team: r.team.clone(),
                            route: r.name.clone(),
                            counters,
                            lag,
                            lag_seconds,
                            checkpoint_age_s: None,
                            end_to_end: sample.and_then(|s| s.end_to_end),
                            sink_request: sample.and_then(|s| s.sink_request),
                            batch_size: sample.and_then(|s| s.batch_size),
                        })
                    })
                    .collect()
            }
            Some(_) => Vec::new(),
        };
        metrics::with_local_recorder(&self.exporter.recorder, || {
            self.publish(&series, &jobs, now);
            self.publish_sources(&sources);
        });
        self.exporter.handle.run_upkeep();
        Ok(())
    }
}
