//! The telemetry task. Every interval it samples each running job, stores the samples (the time
//! series the dashboards plot, rolled up and pruned by age) and publishes the same numbers, with
//! the streams' ingest counters and the jobs by phase, for `/metrics` in Prometheus text format.
//!
//! The data plane only bumps atomics and records latencies into per-job histograms; everything
//! here runs off the hot path, once per interval.

use keystone_control::alerts::{condition, step, AlertKind, AlertRule, AlertState, Observation, RuleStatus};
use keystone_control::alerts::{AlertEvent, AlertStatus};
use keystone_control::samples::SampleShare;
use keystone_control::store::{now_ms, Scope, Store, StoreError};
use keystone_control::telemetry::{add_share, Resolution, RESOLUTIONS};
use keystone_control::{Distribution, IngestStats, JobCounters, JobPhase, JobSample, StreamSample};
use keystone_control::{Kind, Object, RouteSpec, TeamSpec};
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

/// The process's metrics, rendered on demand for `/metrics`. Not a global recorder: each server
/// (and each test server in one process) keeps its own.
pub struct Exporter {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Exporter {
    /// Series not updated for `idle` (a deleted route's, say) disappear from the output.
    pub fn new(idle: Duration) -> Exporter {
        let recorder = PrometheusBuilder::new().idle_timeout(MetricKindMask::ALL, Some(idle)).build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, describe);
        Exporter { recorder, handle }
    }

    pub fn handle(&self) -> PrometheusHandle {
        self.handle.clone()
    }
}

fn describe() {
    describe_counter!("keystone_job_events_read_total", "Events a route's job read from its stream.");
    describe_counter!("keystone_job_events_delivered_total", "Events the sink acknowledged.");
    describe_counter!("keystone_job_events_filtered_total", "Events the route's filter left out.");
    describe_counter!("keystone_job_filter_errors_total", "Events the filter could not evaluate (not delivered).");
    describe_counter!("keystone_job_events_dead_lettered_total", "Events sent to the route's dead-letter queue.");
    describe_counter!("keystone_job_sink_batches_total", "Sink requests that went through.");
    describe_counter!(
        "keystone_job_sink_errors_total",
        "Failed sink requests, by kind (refused: events dead-lettered)."
    );
    describe_gauge!("keystone_job_batch_size_events", "Events per sink request over the last interval (quantiles).");
    describe_counter!("keystone_job_sink_retries_total", "Sink requests that failed transiently and were retried.");
    describe_counter!("keystone_job_sink_bytes_total", Unit::Bytes, "Bytes of events delivered.");
    describe_gauge!("keystone_job_lag_events", "Events in the stream the sink has not acknowledged yet.");
    describe_gauge!("keystone_job_lag_seconds", Unit::Seconds, "Age of the oldest event not acknowledged yet.");
    describe_gauge!(
        "keystone_job_checkpoint_age_seconds",
        Unit::Seconds,
        "How long acknowledged positions have waited for a commit (what a crash would repeat); 0 when all is committed."
    );
    describe_gauge!(
        "keystone_job_end_to_end_latency_seconds",
        Unit::Seconds,
        "Ingest to sink acknowledgement, quantiles over the last sample interval."
    );
    describe_gauge!(
        "keystone_job_sink_request_seconds",
        Unit::Seconds,
        "One sink request, quantiles over the last sample interval."
    );
    describe_gauge!("keystone_job_restarts", "Restarts after crashes or stalls, since the route was declared.");
    describe_gauge!("keystone_jobs", "Jobs by observed phase.");
    describe_counter!("keystone_stream_events_accepted_total", "Events the ingest proxy appended.");
    describe_counter!("keystone_stream_bytes_accepted_total", Unit::Bytes, "Bytes the ingest proxy appended.");
    describe_counter!("keystone_stream_events_rejected_total", "Events refused by validation, by reason.");
    describe_counter!("keystone_stream_events_throttled_total", "Events refused for the stream's quota.");
    describe_gauge!("keystone_stream_log_events", "Events ever appended to the stream's log.");
    describe_gauge!(
        "keystone_stream_log_bytes",
        Unit::Bytes,
        "Bytes the stream's log holds on disk (after retention)."
    );
    describe_gauge!("keystone_stream_retention_seconds", Unit::Seconds, "How long the stream's log keeps events.");
    describe_gauge!("keystone_reconciler_pass_seconds", Unit::Seconds, "How long the last reconcile pass took.");
    describe_gauge!(
        "keystone_reconciler_last_success_age_seconds",
        Unit::Seconds,
        "Time since the last reconcile pass that succeeded."
    );
    describe_counter!("keystone_reconciler_failures_total", "Reconcile passes that failed (retried on the next tick).");
    describe_gauge!("keystone_reconciler_leader", "1 while this process holds the reconciler lease and runs the jobs.");
    describe_gauge!(
        "keystone_reconciler_last_actions",
        "Actions (topics to create or change, jobs to start, redeploy, pause, resume or stop) the last pass found to do."
    );
    describe_gauge!("keystone_deployments_in_progress", "Deployments still in their stability window.");
    describe_counter!("keystone_log_fsyncs_total", "fsyncs the embedded log issued (group commit shares them).");
    describe_gauge!("keystone_database_up", "1 when the source-of-truth database answered the last telemetry query.");
    describe_gauge!("keystone_database_query_seconds", Unit::Seconds, "How long that query took.");
    describe_gauge!("keystone_stream_producers", "Producer tokens that had events accepted in the last five minutes.");
    describe_gauge!("keystone_telemetry_pass_seconds", Unit::Seconds, "How long the last telemetry pass took.");
}

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

/// This process's jobs sampled into the fine bucket in progress: one sample per route, merged
/// over the passes within the bucket, and the counts each job had at the last pass.
#[derive(Default)]
struct JobSampler {
    bucket: i64,
    samples: HashMap<String, JobSample>,
    previous: HashMap<String, (Arc<JobStats>, JobCounters)>,
    /// Job instances gone from the registry since a pass saw them (stopped, restarted, their
    /// partitions moved, this process shutting down): they may have counted after that pass
    /// while they drained, so they are sampled until nothing but this sampler holds their stats.
    departed: Vec<(String, Arc<JobStats>, JobCounters)>,
}

impl JobSampler {
    /// Each job's sample of `bucket` so far, and what it counted since the last pass.
    fn sample(
        &mut self,
        observed: &[Observed],
        bucket: i64,
    ) -> (Vec<(String, JobSample)>, HashMap<String, JobCounters>) {
        if bucket != self.bucket {
            self.samples.clear();
            self.bucket = bucket;
        }
        let at = |counts, lag, lag_seconds, interval: Interval| JobSample {
            at: bucket,
            seconds: RESOLUTIONS[0].seconds,
            counts,
            lag,
            lag_seconds,
            end_to_end: interval.end_to_end,
            sink_request: interval.sink_request,
            batch_size: interval.batch_size,
        };
        let previous = std::mem::replace(
            &mut self.previous,
            observed.iter().map(|o| (o.route_id.clone(), (o.stats.clone(), o.counters))).collect(),
        );
        // A departed instance's tail first: a job still observed (restarted here) sets the lag.
        let mut parts = Vec::with_capacity(observed.len() + self.departed.len());
        for (route_id, (stats, before)) in &previous {
            if !observed.iter().any(|o| Arc::ptr_eq(&o.stats, stats)) {
                self.departed.push((route_id.clone(), stats.clone(), *before));
            }
        }
        for (route_id, stats, before) in &mut self.departed {
            let now = stats.counters();
            let interval = stats.latency.lock().expect("stats lock").take();
            parts.push((route_id.clone(), at(now.since(Some(&*before)), 0, 0.0, interval)));
            *before = now;
        }
        self.departed.retain(|(_, stats, _)| Arc::strong_count(stats) > 1);
        for o in observed {
            let before = previous.get(&o.route_id).filter(|(stats, _)| Arc::ptr_eq(stats, &o.stats)).map(|(_, c)| c);
            parts.push((o.route_id.clone(), at(o.counters.since(before), o.lag, o.lag_seconds, o.interval)));
        }
        let mut increments: HashMap<String, JobCounters> = HashMap::new();
        for (route_id, part) in parts {
            *increments.entry(route_id.clone()).or_default() += part.counts;
            match self.samples.get_mut(&route_id) {
                Some(s) => {
                    keystone_control::telemetry::merge(s, &part);
                    // Lag is a level, not a worst-of within one fine bucket: the latest counts.
                    s.lag = part.lag;
                    s.lag_seconds = part.lag_seconds;
                }
                None => {
                    self.samples.insert(route_id, part);
                }
            }
        }
        let rows = increments.keys().map(|id| (id.clone(), self.samples[id].clone())).collect();
        (rows, increments)
    }
}

/// A job's lag now: events waiting, and the age of the oldest, in seconds.
type Level = (u64, f64);

/// Jobs shared by several processes (streams on Kafka, partitions spread by consumer groups):
/// each process stores its share of every job's fine sample, and the job's sample is their sum.
#[derive(Default)]
struct ShareSums {
    /// The sums at the last pass, by route and bucket.
    seen: HashMap<(String, i64), JobCounters>,
}

impl ShareSums {
    /// Adds the shares up: each job's sample per bucket, what the sums grew by since the last
    /// pass, and each job's lag now. A share not rewritten since `live_since` is a process gone
    /// (or its job moved away): its counts happened, but its lag is someone else's now.
    fn add_up(
        &mut self,
        shares: Vec<SampleShare>,
        live_since: i64,
    ) -> (Vec<(String, JobSample)>, HashMap<String, JobCounters>, HashMap<String, Level>) {
        let mut sums: BTreeMap<(String, i64), JobSample> = BTreeMap::new();
        // The newest live share of each process, per route: the job's lag is the sum of theirs.
        let mut newest: HashMap<(String, String), (i64, Level)> = HashMap::new();
        for share in shares {
            let s = &share.sample;
            if share.written_at >= live_since {
                let key = (share.route_id.clone(), share.worker.clone());
                if newest.get(&key).is_none_or(|(at, _)| *at < s.at) {
                    newest.insert(key, (s.at, (s.lag, s.lag_seconds)));
                }
            }
            match sums.get_mut(&(share.route_id.clone(), s.at)) {
                Some(sum) => add_share(sum, s),
                None => {
                    sums.insert((share.route_id, s.at), share.sample);
                }
            }
        }
        let mut increments: HashMap<String, JobCounters> = HashMap::new();
        for ((route, at), sum) in &sums {
            let grown = sum.counts.since(self.seen.get(&(route.clone(), *at)));
            *increments.entry(route.clone()).or_default() += grown;
        }
        let mut levels: HashMap<String, Level> = HashMap::new();
        for ((route, _), (_, (lag, lag_seconds))) in newest {
            let level = levels.entry(route).or_default();
            level.0 += lag;
            level.1 = level.1.max(lag_seconds);
        }
        self.seen = sums.iter().map(|(key, s)| (key.clone(), s.counts)).collect();
        (sums.into_iter().map(|((route, _), s)| (route, s)).collect(), increments, levels)
    }
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

/// A `keystone worker`'s telemetry: every interval, its share of each job it runs, stored for the
/// serving processes to add up (a worker serves no dashboards and no `/metrics` itself). Stop it
/// after the jobs drained: its last pass then counts their final batches.
pub fn spawn_shares(
    store: Store,
    jobs: Arc<JobRegistry<AnyLog>>,
    worker: String,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut sampler = JobSampler::default();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Stopped after the jobs drained: one last pass stores what they did meanwhile.
            let last = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.cancelled() => true,
            };
            let now = now_ms();
            let bucket = tick_bucket(now, interval);
            let (shares, _) = sampler.sample(&jobs.observe(now).await, bucket);
            if let Err(e) = store.put_sample_shares(&worker, &shares, now).await {
                tracing::warn!(error = %e, "Job samples not stored; the next pass tries again.");
            }
            if last {
                return;
            }
        }
    })
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
        self.evaluate_alerts(&mut open.alerts, &routes, &levels, &open.totals, &jobs, now).await?;
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
        });
        self.exporter.handle.run_upkeep();
        Ok(())
    }

    /// Stores what each declared stream took in since the last pass (zeros for a quiet stream,
    /// so its chart shows it was watched).
    async fn sample_streams(&self, open: &mut Open, bucket: i64, now: i64) -> Result<(), StoreError> {
        let fine = RESOLUTIONS[0];
        let mut rows = Vec::new();
        for stream in self.store.list(Kind::Stream, &Scope::All).await? {
            let topic = stream.stream_topic();
            let now_counts = self.meter.stats(&topic, now);
            let before = open.ingested.get(&topic).cloned().unwrap_or_default();
            let sample = StreamSample {
                at: bucket,
                seconds: fine.seconds,
                accepted: now_counts.accepted.saturating_sub(before.accepted),
                bytes: now_counts.bytes.saturating_sub(before.bytes),
                rejected: now_counts.rejected.saturating_sub(before.rejected),
                throttled: now_counts.throttled.saturating_sub(before.throttled),
                producers: self.meter.producers_since(&topic, now - self.interval.as_millis() as i64),
            };
            open.ingested.insert(topic, now_counts);
            let merged = match open.stream_samples.get_mut(&stream.id) {
                Some(s) => {
                    s.merge(&sample);
                    s.clone()
                }
                None => {
                    open.stream_samples.insert(stream.id.clone(), sample.clone());
                    sample
                }
            };
            rows.push((stream.id, merged));
        }
        self.store.put_samples(fine, &rows).await
    }

    /// Rolls finished 5-minute buckets up (once each) and prunes what is past keeping.
    async fn roll_up(&self, open: &mut Open, now: i64) -> Result<(), StoreError> {
        let coarse: Resolution = RESOLUTIONS[1];
        let current = coarse.bucket(now);
        if open.rolled_up_to >= current {
            return Ok(());
        }
        // The bucket that just closed (after a restart this also completes one left half done).
        let closed = current - coarse.seconds * 1000;
        self.store.roll_up_samples::<JobSample>(closed).await?;
        self.store.roll_up_samples::<StreamSample>(closed).await?;
        // Shares are summed within a bucket or two; a coarse bucket back is long past that.
        let removed = self.store.prune_samples::<JobSample>(now).await?
            + self.store.prune_samples::<StreamSample>(now).await?
            + self.store.prune_sample_shares(closed).await?;
        if removed > 0 {
            tracing::debug!(removed, "Pruned old samples.");
        }
        open.rolled_up_to = current;
        Ok(())
    }

    fn publish(&self, series: &[JobSeries], jobs: &[keystone_control::JobRecord], now: i64) {
        for o in series {
            let labels = [("team", o.team.clone()), ("route", o.route.clone())];
            let c = &o.counters;
            counter!("keystone_job_events_read_total", &labels).absolute(c.read);
            counter!("keystone_job_events_delivered_total", &labels).absolute(c.delivered);
            counter!("keystone_job_events_filtered_total", &labels).absolute(c.filtered_out);
            counter!("keystone_job_filter_errors_total", &labels).absolute(c.filter_errors);
            counter!("keystone_job_events_dead_lettered_total", &labels).absolute(c.dead_lettered);
            counter!("keystone_job_sink_batches_total", &labels).absolute(c.batches);
            counter!("keystone_job_sink_retries_total", &labels).absolute(c.retries);
            counter!("keystone_job_sink_bytes_total", &labels).absolute(c.bytes_out);
            gauge!("keystone_job_lag_events", &labels).set(o.lag as f64);
            gauge!("keystone_job_lag_seconds", &labels).set(o.lag_seconds);
            if let Some(age) = o.checkpoint_age_s {
                gauge!("keystone_job_checkpoint_age_seconds", &labels).set(age);
            }
            for (kind, n) in c.sink_errors.seen() {
                let mut by = labels.to_vec();
                by.push(("kind", kind.as_str().to_owned()));
                counter!("keystone_job_sink_errors_total", &by).absolute(n);
            }
            quantiles("keystone_job_end_to_end_latency_seconds", &labels, o.end_to_end, 1e-3);
            quantiles("keystone_job_sink_request_seconds", &labels, o.sink_request, 1e-3);
            quantiles("keystone_job_batch_size_events", &labels, o.batch_size, 1.0);
        }
        for j in jobs {
            let labels = [("team", j.team.clone()), ("route", j.route.clone())];
            gauge!("keystone_job_restarts", &labels).set(j.restarts as f64);
        }
        for phase in JobPhase::ALL {
            let n = jobs.iter().filter(|j| j.phase == phase).count();
            gauge!("keystone_jobs", "phase" => phase.as_str()).set(n as f64);
        }
        let h = &self.reconciler;
        gauge!("keystone_reconciler_pass_seconds").set(h.last_pass_us.load(Ordering::Relaxed) as f64 / 1e6);
        let last = h.last_success_ms.load(Ordering::Relaxed);
        if last > 0 {
            gauge!("keystone_reconciler_last_success_age_seconds").set((now - last).max(0) as f64 / 1000.0);
        }
        counter!("keystone_reconciler_failures_total").absolute(h.failures.load(Ordering::Relaxed));
        gauge!("keystone_reconciler_leader").set(if h.leader.load(Ordering::Relaxed) { 1.0 } else { 0.0 });
        gauge!("keystone_reconciler_last_actions").set(h.last_actions.load(Ordering::Relaxed) as f64);
        gauge!("keystone_deployments_in_progress").set(h.deploying.load(Ordering::Relaxed) as f64);
        if let Some(n) = self.log.fsync_count() {
            counter!("keystone_log_fsyncs_total").absolute(n);
        }
        for (topic, _, retention) in self.log.topics() {
            if keystone_control::is_dead_letter_topic(&topic) {
                continue;
            }
            let (team, stream) = topic.split_once('.').unwrap_or(("", &topic));
            let labels = [("team", team.to_owned()), ("stream", stream.to_owned())];
            if let Some(bytes) = self.log.topic_bytes(&topic) {
                gauge!("keystone_stream_log_bytes", &labels).set(bytes as f64);
            }
            if retention.max_age_ms < i64::MAX {
                gauge!("keystone_stream_retention_seconds", &labels).set(retention.max_age_ms as f64 / 1000.0);
            }
            let in_log: u64 = keystone_engine::log::Log::end_offsets(self.log.as_ref(), &topic).iter().sum();
            gauge!("keystone_stream_log_events", &labels).set(in_log as f64);
        }
        for topic in self.meter.topics() {
            let s = self.meter.stats(&topic, now);
            let (team, stream) = topic.split_once('.').unwrap_or(("", &topic));
            let labels = [("team", team.to_owned()), ("stream", stream.to_owned())];
            counter!("keystone_stream_events_accepted_total", &labels).absolute(s.accepted);
            counter!("keystone_stream_bytes_accepted_total", &labels).absolute(s.bytes);
            for (kind, n) in &s.rejected_by_kind {
                let mut by = labels.to_vec();
                by.push(("reason", kind.clone()));
                counter!("keystone_stream_events_rejected_total", &by).absolute(*n);
            }
            counter!("keystone_stream_events_throttled_total", &labels).absolute(s.throttled);
            gauge!("keystone_stream_producers", &labels).set(s.producers as f64);
        }
    }
}

/// One job's series on `/metrics`: this process's own job, or a shared job's sums.
struct JobSeries {
    team: String,
    route: String,
    counters: JobCounters,
    lag: u64,
    lag_seconds: f64,
    /// Known only to the process running the job.
    checkpoint_age_s: Option<f64>,
    end_to_end: Option<Distribution>,
    sink_request: Option<Distribution>,
    batch_size: Option<Distribution>,
}

impl JobSeries {
    fn observed(o: &Observed) -> JobSeries {
        let (team, route) = o.route.split_once('/').unwrap_or(("", &o.route));
        JobSeries {
            team: team.to_owned(),
            route: route.to_owned(),
            counters: o.counters,
            lag: o.lag,
            lag_seconds: o.lag_seconds,
            checkpoint_age_s: Some(o.checkpoint_age_s),
            end_to_end: o.interval.end_to_end,
            sink_request: o.interval.sink_request,
            batch_size: o.interval.batch_size,
        }
    }
}

/// Quantile gauges of an interval's distribution, times `scale` (ms to seconds); nothing when
/// nothing was measured.
fn quantiles(name: &'static str, labels: &[(&'static str, String); 2], d: Option<Distribution>, scale: f64) {
    let Some(d) = d else { return };
    for (q, v) in [("0.5", d.p50), ("0.95", d.p95), ("0.99", d.p99)] {
        let mut with_q = labels.to_vec();
        with_q.push(("quantile", q.to_owned()));
        gauge!(name, &with_q).set(v * scale);
    }
}

/// What the alert evaluator remembers between passes.
#[derive(Default)]
struct Alerts {
    /// Loaded from the store on the first pass, so a restart neither re-fires nor forgets.
    loaded: bool,
    states: HashMap<(String, AlertKind), RuleStatus>,
    /// Per route: recent observations, oldest first.
    history: HashMap<String, VecDeque<Observation>>,
}

impl Telemetry {
    /// Evaluates every live route's alert rules on its observations, stores the states, and
    /// records and notifies each firing and resolution once.
    async fn evaluate_alerts(
        &self,
        a: &mut Alerts,
        routes: &[Object],
        levels: &HashMap<String, Level>,
        totals: &HashMap<String, JobCounters>,
        jobs: &[keystone_control::JobRecord],
        now: i64,
    ) -> Result<(), keystone_control::store::StoreError> {
        if !a.loaded {
            a.states = self.store.alert_states().await?.into_iter().map(|(r, k, s)| ((r, k), s)).collect();
            a.loaded = true;
        }
        let teams: HashMap<String, TeamSpec> = self
            .store
            .list(Kind::Team, &Scope::All)
            .await?
            .into_iter()
            .filter_map(|t| Some((t.name.clone(), t.spec_as().ok()?)))
            .collect();
        let jobs: HashMap<&str, &keystone_control::JobRecord> = jobs.iter().map(|j| (j.route_id.as_str(), j)).collect();
        let silences = self.store.active_silences(None, now).await?;
        let mut states = Vec::new();
        for route in routes {
            let Ok(spec) = route.spec_as::<RouteSpec>() else { continue };
            let job = jobs.get(route.id.as_str());
            let totals = totals.get(&route.id).copied().unwrap_or_default();
            let (lag, lag_seconds) = levels.get(&route.id).copied().unwrap_or_default();
            let history = a.history.entry(route.id.clone()).or_default();
            history.push_back(Observation {
                at: now,
                delivered: totals.delivered,
                dead_lettered: totals.dead_lettered,
                restarts: job.map_or(0, |j| j.restarts),
                lag,
                lag_seconds,
                phase: job.map(|j| j.phase),
            });
            let keep_ms =
                spec.alerts.iter().map(|r| r.threshold.max(f64::from(r.for_s)).max(60.0)).fold(60.0, f64::max);
            while history.front().is_some_and(|h| h.at < now - (keep_ms * 1000.0) as i64 - 1000) {
                history.pop_front();
            }
            let history = history.make_contiguous();
            for rule in &spec.alerts {
                let key = (route.id.clone(), rule.kind);
                let prev = a.states.get(&key).copied().unwrap_or(RuleStatus { state: AlertState::Ok, since: now });
                let (holds, value) = condition(rule, history);
                // A route paused or stopped on purpose waits by design: its rules hold still.
                let next = if spec.state.is_running() { step(rule, prev, holds, now) } else { prev };
                a.states.insert(key, next);
                states.push((
                    route.id.clone(),
                    AlertStatus { rule: rule.kind, state: next.state, since: next.since, value },
                ));
                if next.state != prev.state && matches!(next.state, AlertState::Firing | AlertState::Resolved) {
                    let silenced = silences.iter().find(|(id, x)| id == &route.id && x.covers(rule.kind, now));
                    let target = match silenced {
                        Some((_, x)) => Err(format!("silenced by {} until {}", x.by, x.until)),
                        None => teams
                            .get(&route.team)
                            .and_then(|t| t.alert_webhook.clone())
                            .ok_or_else(|| "no webhook".to_owned()),
                    };
                    self.notify(route, rule, next, value, target);
                }
            }
        }
        // Rules of deleted routes, or removed from a route, are forgotten (what this pass did not
        // evaluate), and so are deleted routes' observations.
        let evaluated: HashSet<(&str, AlertKind)> = states.iter().map(|(id, s)| (id.as_str(), s.rule)).collect();
        a.states.retain(|(id, kind), _| evaluated.contains(&(id.as_str(), *kind)));
        let declared: HashSet<&str> = routes.iter().map(|r| r.id.as_str()).collect();
        a.history.retain(|id, _| declared.contains(id.as_str()));
        self.store.put_alert_states(&states).await
    }

    /// Records a firing or resolution and POSTs it to the team's webhook, retrying three times
    /// with backoff; off the telemetry loop, so a slow webhook delays nothing.
    /// `target` is the webhook URL, or why nothing is sent (no webhook, silenced).
    fn notify(&self, route: &Object, rule: &AlertRule, status: RuleStatus, value: f64, target: Result<String, String>) {
        let message = format!(
            "{}/{}: {} ({}, value {value})",
            route.team,
            route.name,
            status.state.as_str(),
            rule.kind.describe(rule.threshold, rule.for_s)
        );
        tracing::warn!(route = %format!("{}/{}", route.team, route.name), rule = rule.kind.as_str(), state = status.state.as_str(), value, "Alert.");
        let payload = serde_json::json!({
            "version": 1,
            "team": route.team,
            "route": route.name,
            "rule": rule.kind.as_str(),
            "state": status.state.as_str(),
            "value": value,
            "threshold": rule.threshold,
            "for_s": rule.for_s,
            "description": rule.kind.describe(rule.threshold, rule.for_s),
            "at": status.since,
            "dashboard": format!("/routes/{}/{}/dashboard", route.team, route.name),
        });
        let (store, http, route_id) = (self.store.clone(), self.http.clone(), route.id.clone());
        let event = AlertEvent {
            rule: rule.kind,
            at: status.since,
            state: status.state,
            value,
            message,
            notified: String::new(),
        };
        tokio::spawn(async move {
            let notified = match target {
                Err(why) => why,
                Ok(url) => match keystone_engine::egress::check_url(store.egress(), &url) {
                    Err(denied) => denied.to_string(),
                    Ok(()) => send_with_retry(&http, &url, &payload).await,
                },
            };
            if let Err(e) = store.record_alert_event(&route_id, &AlertEvent { notified, ..event }).await {
                tracing::warn!(error = %e, "Recording an alert event failed.");
            }
        });
    }
}

/// `sent`, or the last failure after four attempts (1 s, 2 s, 4 s apart).
async fn send_with_retry(http: &reqwest::Client, url: &str, payload: &serde_json::Value) -> String {
    let mut last = String::new();
    for attempt in 0..4u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
        }
        match http.post(url).json(payload).send().await {
            Ok(r) if r.status().is_success() => return "sent".to_owned(),
            Ok(r) => last = format!("webhook answered {}", r.status()),
            Err(e) => last = format!("webhook unreachable: {}", e.without_url()),
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(route: &str, worker: &str, written_at: i64, at: i64, delivered: u64, lag: u64) -> SampleShare {
        SampleShare {
            route_id: route.into(),
            worker: worker.into(),
            written_at,
            sample: JobSample {
                at,
                seconds: 10,
                counts: JobCounters { read: delivered, delivered, ..Default::default() },
                lag,
                lag_seconds: lag as f64 / 10.0,
                end_to_end: Some(Distribution { count: delivered, p50: 5.0, p95: 9.0, p99: 10.0, max: 12.0 }),
                sink_request: None,
                batch_size: None,
            },
        }
    }

    fn observed(route_id: &str, stats: &Arc<JobStats>, lag: u64) -> Observed {
        Observed {
            route_id: route_id.into(),
            route: format!("alpha/{route_id}"),
            stats: stats.clone(),
            counters: stats.counters(),
            lag,
            lag_seconds: 0.0,
            checkpoint_age_s: 0.0,
            interval: stats.latency.lock().unwrap().take(),
        }
    }

    #[test]
    fn a_job_that_left_is_sampled_until_it_finished_draining() {
        let mut sampler = JobSampler::default();
        let first = Arc::new(JobStats::default());
        first.delivered.store(10, Ordering::Relaxed);
        let (rows, grown) = sampler.sample(&[observed("r", &first, 4)], 0);
        assert_eq!((rows[0].1.counts.delivered, rows[0].1.lag, grown["r"].delivered), (10, 4, 10));
        // The job is stopped (gone from the registry) but still draining: its last batch counts.
        first.delivered.store(15, Ordering::Relaxed);
        let (rows, grown) = sampler.sample(&[], 0);
        assert_eq!((rows[0].1.counts.delivered, rows[0].1.lag, grown["r"].delivered), (15, 0, 5));
        // A new instance of the route starts while the old one finishes its final batch.
        let second = Arc::new(JobStats::default());
        second.delivered.store(3, Ordering::Relaxed);
        first.delivered.store(16, Ordering::Relaxed);
        let job_task = first.clone();
        drop(first);
        let (rows, grown) = sampler.sample(&[observed("r", &second, 2)], 0);
        assert_eq!((rows[0].1.counts.delivered, rows[0].1.lag, grown["r"].delivered), (19, 2, 4));
        // Drained: only the sampler held the old stats, so it lets them go.
        drop(job_task);
        let (_, grown) = sampler.sample(&[observed("r", &second, 0)], 0);
        assert_eq!(grown["r"].delivered, 0);
        assert!(sampler.departed.is_empty());
    }

    #[test]
    fn shares_of_one_job_add_up_and_a_gone_process_keeps_its_counts_but_not_its_lag() {
        let mut sums = ShareSums::default();
        // Two workers share route r in bucket 0; a third stopped writing (at 1_000) in bucket 0.
        let first = vec![
            share("r", "w1", 9_000, 0, 100, 5),
            share("r", "w2", 9_000, 0, 50, 7),
            share("r", "w3", 1_000, 0, 30, 40),
            share("q", "w1", 9_000, 0, 8, 0),
        ];
        let (rows, grown, levels) = sums.add_up(first, 5_000);
        let r = rows.iter().find(|(id, _)| id == "r").map(|(_, s)| s).unwrap();
        assert_eq!(r.counts.delivered, 180);
        assert_eq!(r.end_to_end.unwrap().count, 180);
        assert_eq!(grown["r"].delivered, 180);
        assert_eq!(levels["r"], (12, 0.7));
        assert_eq!(levels["q"].0, 0);
        // Next pass: w1's share of bucket 0 grew, and it moved on to bucket 10_000.
        let second = vec![
            share("r", "w1", 19_000, 0, 120, 5),
            share("r", "w2", 19_000, 0, 50, 7),
            share("r", "w3", 1_000, 0, 30, 40),
            share("r", "w1", 19_000, 10_000, 10, 2),
        ];
        let (rows, grown, levels) = sums.add_up(second, 15_000);
        let buckets: Vec<(i64, u64)> =
            rows.iter().filter(|(id, _)| id == "r").map(|(_, s)| (s.at, s.counts.delivered)).collect();
        assert_eq!(buckets, [(0, 200), (10_000, 10)]);
        assert_eq!(grown["r"].delivered, 30, "20 more in bucket 0 and 10 in the new one");
        // w1's newest share speaks for it; w2 is still live with its bucket-0 lag.
        assert_eq!(levels["r"].0, 2 + 7);
    }
}
