//! Samples: this process's jobs into the fine bucket in progress, the streams' ingest counts,
//! the shares of jobs spread over workers (stored by each, added up by the serving processes),
//! and the roll-up of fine buckets into coarser ones.

use super::*;

/// This process's jobs sampled into the fine bucket in progress: one sample per route, merged
/// over the passes within the bucket, and the counts each job had at the last pass.
#[derive(Default)]
pub(super) struct JobSampler {
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
    pub(super) fn sample(
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
pub(super) type Level = (u64, f64);

/// Jobs shared by several processes (streams on Kafka, partitions spread by consumer groups):
/// each process stores its share of every job's fine sample, and the job's sample is their sum.
#[derive(Default)]
pub(super) struct ShareSums {
    /// The sums at the last pass, by route and bucket.
    seen: HashMap<(String, i64), JobCounters>,
}

impl ShareSums {
    /// Adds the shares up: each job's sample per bucket, what the sums grew by since the last
    /// pass, and each job's lag now. A share not rewritten since `live_since` is a process gone
    /// (or its job moved away): its counts happened, but its lag is someone else's now.
    pub(super) fn add_up(
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
    /// Stores what each declared stream took in since the last pass (zeros for a quiet stream,
    /// so its chart shows it was watched).
    pub(super) async fn sample_streams(&self, open: &mut Open, bucket: i64, now: i64) -> Result<(), StoreError> {
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
    pub(super) async fn roll_up(&self, open: &mut Open, now: i64) -> Result<(), StoreError> {
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
