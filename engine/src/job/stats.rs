//! A job's counters and positions, shared with the supervisor, the API and the console.

use super::*;

/// Events in the log not acknowledged yet, over the given partition positions.
pub fn waiting(positions: &[PartitionLag]) -> u64 {
    positions.iter().map(|p| p.end.saturating_sub(p.acked)).sum()
}

/// A job's counters, shared with the supervisor, the API and the console. Positions are the
/// acknowledged next offset per partition.
#[derive(Debug, Default)]
pub struct JobStats {
    pub read: AtomicU64,
    pub delivered: AtomicU64,
    pub filtered_out: AtomicU64,
    /// Events the filter could not evaluate (e.g. a missing field): not delivered, counted apart.
    pub filter_errors: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub batches: AtomicU64,
    pub retries: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Failed sink requests, by `SinkErrorKind` (its order).
    pub sink_errors: [AtomicU64; keystone_control::SinkErrorKind::COUNT],
    /// Set while the sink keeps failing a batch; cleared when a batch goes through.
    pub failing: AtomicBool,
    /// Set while the job is paused (see `set_paused`).
    paused: AtomicBool,
    resumed: tokio::sync::Notify,
    pub acked: Mutex<Vec<u64>>,
    pub committed: Mutex<Vec<u64>>,
    /// The partitions this instance runs when it shares the job with others (a consumer group
    /// assigns them); `None`: all of them.
    pub owned: Mutex<Option<std::collections::BTreeSet<u32>>>,
    /// When positions were last committed (ms since the epoch; the job's start before that).
    pub committed_at: AtomicI64,
    pub recent_errors: Mutex<Vec<RecentError>>,
    /// Latencies and batch sizes since the last telemetry sample.
    pub latency: Mutex<latency::Latency>,
}

const RECENT_ERRORS: usize = 20;

impl JobStats {
    pub fn record_error(&self, message: String) {
        self.push_error(RecentError { at: crate::now_ms(), message, sample: None });
    }

    /// An error caused by one event, kept with (the start of) the event.
    pub fn record_error_with_sample(&self, message: String, event: &Value) {
        let mut sample = event.to_string();
        if sample.len() > RecentError::SAMPLE_BYTES {
            let mut cut = RecentError::SAMPLE_BYTES;
            while !sample.is_char_boundary(cut) {
                cut -= 1;
            }
            sample.truncate(cut);
            sample.push('…');
        }
        self.push_error(RecentError { at: crate::now_ms(), message, sample: Some(sample) });
    }

    pub(super) fn push_error(&self, e: RecentError) {
        let mut errors = self.recent_errors.lock().expect("stats lock");
        if errors.len() == RECENT_ERRORS {
            errors.remove(0);
        }
        errors.push(e);
    }

    /// Pauses or resumes the job in place: a paused job finishes the batch in hand (delivered
    /// and acknowledged), then its readers read nothing until it is resumed.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        if !paused {
            self.resumed.notify_waiters();
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Returns once the job is not paused (at once if it is not), or when `cancel` fires.
    pub(super) async fn wait_while_paused(&self, cancel: &CancellationToken) {
        loop {
            // Registered before the flag is read, so a resume in between is not missed.
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            if !self.is_paused() {
                return;
            }
            tokio::select! {
                _ = resumed => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.recent_errors.lock().expect("stats lock").last().map(|e| e.message.clone())
    }

    pub(super) fn set_acked(&self, partition: u32, next: u64) {
        set_at(&self.acked, partition, next);
    }

    pub(super) fn set_committed(&self, partition: u32, next: u64) {
        set_at(&self.committed, partition, next);
    }

    /// Each partition's acknowledged position beside the log's end offset.
    /// Only the partitions this instance runs, when it shares the job (the others' lag is
    /// theirs).
    pub fn positions<L: Log>(&self, spec: &JobSpec, log: &L) -> Vec<PartitionLag> {
        let ends = log.end_offsets(&spec.topic);
        let held = self.held(spec);
        let acked = self.acked.lock().expect("stats lock");
        held.into_iter()
            .map(|p| PartitionLag {
                partition: p,
                acked: acked.get(p as usize).copied().unwrap_or(0),
                end: ends.get(p as usize).copied().unwrap_or(0),
            })
            .collect()
    }

    /// The partitions this instance runs: every partition of the stream, unless it shares the
    /// job through a consumer group.
    pub fn held(&self, spec: &JobSpec) -> Vec<u32> {
        match self.owned.lock().expect("stats lock").as_ref() {
            None => (0..spec.partitions).collect(),
            Some(owned) => owned.iter().copied().collect(),
        }
    }

    /// Events in the log not acknowledged yet.
    pub fn lag<L: Log>(&self, spec: &JobSpec, log: &L) -> u64 {
        waiting(&self.positions(spec, log))
    }

    /// The counters as they are now (cumulative since this job instance started).
    pub fn counters(&self) -> JobCounters {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        JobCounters {
            read: n(&self.read),
            delivered: n(&self.delivered),
            filtered_out: n(&self.filtered_out),
            filter_errors: n(&self.filter_errors),
            dead_lettered: n(&self.dead_lettered),
            batches: n(&self.batches),
            retries: n(&self.retries),
            bytes_out: n(&self.bytes_out),
            sink_errors: SinkErrors(std::array::from_fn(|i| n(&self.sink_errors[i]))),
        }
    }

    /// Age of the oldest event the sink has not acknowledged yet (0 when caught up): reads the
    /// first unacknowledged record of each lagging partition for its ingest time.
    /// `positions` as `positions` returned them.
    pub async fn lag_seconds<L: Log>(&self, spec: &JobSpec, log: &L, positions: &[PartitionLag], now_ms: i64) -> f64 {
        let mut oldest: Option<i64> = None;
        for p in positions.iter().filter(|p| p.end > p.acked) {
            // A record already expired (or unreadable) is not waiting any more.
            if let Ok(records) = log.read(&spec.topic, p.partition, p.acked, 1).await {
                if let Some(r) = records.first() {
                    oldest = Some(oldest.map_or(r.timestamp_ms, |o| o.min(r.timestamp_ms)));
                }
            }
        }
        oldest.map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0)
    }

    /// How long acknowledged positions have waited for a commit: 0 when everything acknowledged
    /// is committed, else the time since the last commit. This bounds what a crash would repeat.
    pub fn checkpoint_age_s(&self, now_ms: i64) -> f64 {
        let pending = *self.acked.lock().expect("stats lock") != *self.committed.lock().expect("stats lock");
        if pending {
            (now_ms - self.committed_at.load(Ordering::Relaxed)).max(0) as f64 / 1000.0
        } else {
            0.0
        }
    }

    /// Sum of acknowledged positions: grows whenever the job delivers.
    pub fn progress(&self) -> u64 {
        self.acked.lock().expect("stats lock").iter().sum()
    }

    /// Acknowledged positions and events read: a job gathering a large rolled file acknowledges
    /// nothing for minutes, and is not stalled while it reads.
    pub fn activity(&self) -> (u64, u64) {
        (self.progress(), self.read.load(Ordering::Relaxed))
    }
}

/// Sets one partition's entry of a position vector, growing it as needed.
fn set_at(positions: &Mutex<Vec<u64>>, partition: u32, next: u64) {
    let mut positions = positions.lock().expect("stats lock");
    if positions.len() <= partition as usize {
        positions.resize(partition as usize + 1, 0);
    }
    positions[partition as usize] = next;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_age_counts_only_while_acknowledged_positions_wait() {
        let stats = JobStats::default();
        stats.set_acked(0, 10);
        *stats.committed.lock().unwrap() = vec![10];
        stats.committed_at.store(1_000, Ordering::Relaxed);
        assert_eq!(stats.checkpoint_age_s(9_000), 0.0, "everything acknowledged is committed");
        stats.set_acked(0, 25);
        assert_eq!(stats.checkpoint_age_s(9_000), 8.0);
    }
}
