//! The `/metrics` series: each job's counters, lag and latency quantiles, jobs by phase, and
//! the platform's own health, in Prometheus text format.

use super::*;

/// The process's metrics, rendered on demand for `/metrics`. Not a global recorder: each server
/// (and each test server in one process) keeps its own.
pub struct Exporter {
    pub(super) recorder: PrometheusRecorder,
    pub(super) handle: PrometheusHandle,
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
    describe_gauge!(
        "keystone_source_retained_wal_bytes",
        Unit::Bytes,
        "WAL the source's replication slot holds back on its database (a stuck slot fills its disk)."
    );
    describe_gauge!(
        "keystone_source_lag_bytes",
        Unit::Bytes,
        "How far the source's confirmed position is behind its database's WAL."
    );
    describe_gauge!(
        "keystone_source_lag_seconds",
        Unit::Seconds,
        "How old the source's last change was (since its commit) when it was appended."
    );
    describe_gauge!("keystone_source_events", "Changes the source's job appended to its streams since it started.");
    describe_gauge!("keystone_source_snapshot_rows", "Rows the source's initial snapshot read.");
    describe_gauge!("keystone_source_running", "1 while the source's job runs (0: failing, paused, stopped).");
}

impl Telemetry {
    /// Each source's last recorded state (written by its job and the reconciler).
    pub(super) fn publish_sources(&self, sources: &[(Object, keystone_control::SourceStatus)]) {
        for (o, s) in sources {
            let labels = [("team", o.team.clone()), ("source", o.name.clone())];
            if let Some(bytes) = s.retained_bytes {
                gauge!("keystone_source_retained_wal_bytes", &labels).set(bytes as f64);
            }
            if let Some(bytes) = s.lag_bytes {
                gauge!("keystone_source_lag_bytes", &labels).set(bytes as f64);
            }
            if let Some(ms) = s.lag_ms {
                gauge!("keystone_source_lag_seconds", &labels).set(ms as f64 / 1000.0);
            }
            gauge!("keystone_source_events", &labels).set(s.events as f64);
            gauge!("keystone_source_snapshot_rows", &labels).set(s.snapshot_rows as f64);
            gauge!("keystone_source_running", &labels).set(if s.phase == "running" { 1.0 } else { 0.0 });
        }
    }
}

impl Telemetry {
    pub(super) fn publish(&self, series: &[JobSeries], jobs: &[keystone_control::JobRecord], now: i64) {
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
pub(super) struct JobSeries {
    pub(super) team: String,
    pub(super) route: String,
    pub(super) counters: JobCounters,
    pub(super) lag: u64,
    pub(super) lag_seconds: f64,
    /// Known only to the process running the job.
    pub(super) checkpoint_age_s: Option<f64>,
    pub(super) end_to_end: Option<Distribution>,
    pub(super) sink_request: Option<Distribution>,
    pub(super) batch_size: Option<Distribution>,
}

impl JobSeries {
    pub(super) fn observed(o: &Observed) -> JobSeries {
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
