//! A job's numbers over time: what the data plane counts, and the samples the dashboards plot.
//! Samples are kept at two resolutions (10 s for a day, 5 min for a month) so a dashboard of any
//! window stays a few thousand points and the store stays bounded.

use serde::{Deserialize, Serialize};

/// Counters of one job instance, cumulative since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct JobCounters {
    pub read: u64,
    pub delivered: u64,
    pub filtered_out: u64,
    pub filter_errors: u64,
    pub dead_lettered: u64,
    pub batches: u64,
    pub retries: u64,
    pub bytes_out: u64,
    /// Failed sink requests by cause (older samples have none).
    #[serde(default)]
    pub sink_errors: SinkErrors,
}

/// Why a sink request failed. Transient kinds are retried; `Refused` means the sink turned down
/// some events of the request for good (they went to the dead-letter queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkErrorKind {
    /// The sink could not be reached, or the connection broke.
    Connection,
    Timeout,
    /// The sink asked to slow down (HTTP 429, a bulk item's 429).
    Throttled,
    /// The sink failed the whole request (HTTP 5xx, a bulk request refused as a whole) or
    /// answered something that makes no sense.
    Server,
    /// What the sink writes to is missing or closed (a table, a topic, a stream).
    Unavailable,
    /// Writing local files failed.
    Io,
    Refused,
}

impl SinkErrorKind {
    pub const COUNT: usize = 7;
    pub const ALL: [SinkErrorKind; Self::COUNT] = [
        SinkErrorKind::Connection,
        SinkErrorKind::Timeout,
        SinkErrorKind::Throttled,
        SinkErrorKind::Server,
        SinkErrorKind::Unavailable,
        SinkErrorKind::Io,
        SinkErrorKind::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SinkErrorKind::Connection => "connection",
            SinkErrorKind::Timeout => "timeout",
            SinkErrorKind::Throttled => "throttled",
            SinkErrorKind::Server => "server",
            SinkErrorKind::Unavailable => "unavailable",
            SinkErrorKind::Io => "io",
            SinkErrorKind::Refused => "refused",
        }
    }
}

/// Failed sink requests, counted by [`SinkErrorKind`] (in its order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct SinkErrors(pub [u64; SinkErrorKind::COUNT]);

impl SinkErrors {
    pub fn get(&self, kind: SinkErrorKind) -> u64 {
        self.0[kind as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Each kind with its count, the kinds never seen left out.
    pub fn seen(&self) -> impl Iterator<Item = (SinkErrorKind, u64)> + '_ {
        SinkErrorKind::ALL.into_iter().map(|k| (k, self.get(k))).filter(|(_, n)| *n > 0)
    }
}

impl JobCounters {
    /// What happened since `before`. A job restarted in between counts from zero again, which
    /// shows as a counter going down: then everything it counted is new.
    pub fn since(&self, before: Option<&JobCounters>) -> JobCounters {
        let Some(b) = before else { return *self };
        if self.read < b.read || self.delivered < b.delivered || self.batches < b.batches {
            return *self;
        }
        JobCounters {
            read: self.read - b.read,
            delivered: self.delivered - b.delivered,
            filtered_out: self.filtered_out.saturating_sub(b.filtered_out),
            filter_errors: self.filter_errors.saturating_sub(b.filter_errors),
            dead_lettered: self.dead_lettered.saturating_sub(b.dead_lettered),
            batches: self.batches - b.batches,
            retries: self.retries.saturating_sub(b.retries),
            bytes_out: self.bytes_out.saturating_sub(b.bytes_out),
            sink_errors: SinkErrors(std::array::from_fn(|i| self.sink_errors.0[i].saturating_sub(b.sink_errors.0[i]))),
        }
    }
}

impl std::ops::AddAssign for JobCounters {
    fn add_assign(&mut self, d: JobCounters) {
        self.read += d.read;
        self.delivered += d.delivered;
        self.filtered_out += d.filtered_out;
        self.filter_errors += d.filter_errors;
        self.dead_lettered += d.dead_lettered;
        self.batches += d.batches;
        self.retries += d.retries;
        self.bytes_out += d.bytes_out;
        for (a, b) in self.sink_errors.0.iter_mut().zip(d.sink_errors.0) {
            *a += b;
        }
    }
}

/// A distribution over one interval: a latency in milliseconds, or a batch size in events.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct Distribution {
    pub count: u64,
    // The aliases read samples stored when only latencies were kept.
    #[serde(alias = "p50_ms")]
    pub p50: f64,
    #[serde(alias = "p95_ms")]
    pub p95: f64,
    #[serde(alias = "p99_ms")]
    pub p99: f64,
    #[serde(alias = "max_ms")]
    pub max: f64,
}

/// What one job did over `seconds` starting at `at` (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct JobSample {
    pub at: i64,
    pub seconds: i64,
    /// Events counted in the interval.
    pub counts: JobCounters,
    /// Events waiting for the sink at the end of the interval (the worst, once downsampled).
    pub lag: u64,
    /// Age of the oldest waiting event, in seconds (the worst, once downsampled).
    pub lag_seconds: f64,
    /// Ingest to sink acknowledgement, in ms. Downsampled: p50 weighted by events, p95/p99/max
    /// the worst interval's (an upper bound, never an underestimate).
    pub end_to_end: Option<Distribution>,
    /// One sink request, answered, in ms.
    pub sink_request: Option<Distribution>,
    /// Events per sink request (older samples have none).
    #[serde(default)]
    pub batch_size: Option<Distribution>,
}

/// What one stream took in over `seconds` starting at `at` (ms since the epoch).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct StreamSample {
    pub at: i64,
    pub seconds: i64,
    pub accepted: u64,
    pub bytes: u64,
    /// Events refused by validation.
    pub rejected: u64,
    /// Events refused for the stream's quota.
    pub throttled: u64,
    /// Distinct producer tokens that had events accepted (the most in one interval, once
    /// downsampled: a producer seen in two intervals is one producer).
    pub producers: u64,
}

impl StreamSample {
    pub fn merge(&mut self, s: &StreamSample) {
        self.accepted += s.accepted;
        self.bytes += s.bytes;
        self.rejected += s.rejected;
        self.throttled += s.throttled;
        self.producers = self.producers.max(s.producers);
    }
}

/// The sample resolutions kept, and for how long.
pub const RESOLUTIONS: [Resolution; 2] =
    [Resolution { seconds: 10, keep_ms: 24 * 3_600_000 }, Resolution { seconds: 300, keep_ms: 30 * 24 * 3_600_000 }];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    pub seconds: i64,
    pub keep_ms: i64,
}

impl Resolution {
    /// Start of the bucket holding `at`.
    pub fn bucket(&self, at: i64) -> i64 {
        at - at.rem_euclid(self.seconds * 1000)
    }

    /// The finest resolution that still covers a window reaching `window_ms` back.
    pub fn for_window(window_ms: i64) -> Resolution {
        RESOLUTIONS.into_iter().find(|r| window_ms <= r.keep_ms).unwrap_or(RESOLUTIONS[RESOLUTIONS.len() - 1])
    }
}

/// How a job looks at a glance, on the platform overview.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Failing or failed: its sink keeps refusing, or it crashed too often.
    Failing,
    /// Running, but its oldest waiting event is older than [`LAGGING_AFTER_S`].
    Lagging,
    Healthy,
    /// Not running: paused, stopped, or not started yet.
    Stopped,
}

/// A running job whose oldest waiting event is this old is lagging.
pub const LAGGING_AFTER_S: f64 = 60.0;

impl Health {
    pub const ALL: [Health; 4] = [Health::Healthy, Health::Lagging, Health::Failing, Health::Stopped];

    pub fn of(phase: Option<crate::JobPhase>, lag_seconds: f64) -> Health {
        use crate::JobPhase::*;
        match phase {
            Some(Failing | Failed) => Health::Failing,
            Some(Running | Starting) if lag_seconds > LAGGING_AFTER_S => Health::Lagging,
            Some(Running | Starting) => Health::Healthy,
            Some(Paused | Stopped) | None => Health::Stopped,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Failing => "failing",
            Health::Lagging => "lagging",
            Health::Healthy => "healthy",
            Health::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Option<Health> {
        Health::ALL.into_iter().find(|h| h.as_str() == s)
    }
}

/// The time windows dashboards offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Window {
    #[serde(rename = "15m")]
    Minutes15,
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "24h")]
    Day,
    #[serde(rename = "7d")]
    Week,
}

impl Window {
    pub const ALL: [Window; 4] = [Window::Minutes15, Window::Hour, Window::Day, Window::Week];

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Minutes15 => "15m",
            Window::Hour => "1h",
            Window::Day => "24h",
            Window::Week => "7d",
        }
    }

    pub fn parse(s: &str) -> Option<Window> {
        Window::ALL.into_iter().find(|w| w.as_str() == s)
    }

    pub fn ms(self) -> i64 {
        match self {
            Window::Minutes15 => 15 * 60_000,
            Window::Hour => 3_600_000,
            Window::Day => 24 * 3_600_000,
            Window::Week => 7 * 24 * 3_600_000,
        }
    }
}

/// Folds a finer sample into a coarser bucket (both of the same job).
pub fn merge(bucket: &mut JobSample, s: &JobSample) {
    bucket.counts += s.counts;
    bucket.lag = bucket.lag.max(s.lag);
    bucket.lag_seconds = bucket.lag_seconds.max(s.lag_seconds);
    bucket.end_to_end = merge_distribution(bucket.end_to_end, s.end_to_end);
    bucket.sink_request = merge_distribution(bucket.sink_request, s.sink_request);
    bucket.batch_size = merge_distribution(bucket.batch_size, s.batch_size);
}

/// Adds one process's share of a job (the partitions it runs) to the job's sample of the same
/// bucket. As [`merge`], except that lags add up: the shares wait on different partitions.
pub fn add_share(job: &mut JobSample, share: &JobSample) {
    let lag = job.lag + share.lag;
    merge(job, share);
    job.lag = lag;
}

fn merge_distribution(a: Option<Distribution>, b: Option<Distribution>) -> Option<Distribution> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => {
            let count = a.count + b.count;
            let weighted = |x: f64, y: f64| (x * a.count as f64 + y * b.count as f64) / count.max(1) as f64;
            Some(Distribution {
                count,
                p50: weighted(a.p50, b.p50),
                p95: a.p95.max(b.p95),
                p99: a.p99.max(b.p99),
                max: a.max.max(b.max),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_stored_before_batch_sizes_and_error_kinds_still_read() {
        let old = r#"{"at":0,"seconds":10,"counts":{"read":3,"delivered":2,"filtered_out":1,"filter_errors":0,
            "dead_lettered":0,"batches":1,"retries":0,"bytes_out":40},"lag":0,"lag_seconds":0.0,
            "end_to_end":{"count":2,"p50_ms":4.0,"p95_ms":5.0,"p99_ms":5.0,"max_ms":5.0},"sink_request":null}"#;
        let s: JobSample = serde_json::from_str(old).unwrap();
        assert_eq!(s.end_to_end.unwrap().p95, 5.0);
        assert_eq!((s.batch_size, s.counts.sink_errors.total()), (None, 0));
    }

    #[test]
    fn sink_error_deltas_survive_restarts() {
        let mut before = JobCounters::default();
        before.sink_errors.0[SinkErrorKind::Timeout as usize] = 4;
        let mut now = before;
        now.sink_errors.0[SinkErrorKind::Timeout as usize] = 6;
        now.sink_errors.0[SinkErrorKind::Refused as usize] = 1;
        let d = now.since(Some(&before));
        assert_eq!(
            d.sink_errors.seen().collect::<Vec<_>>(),
            [(SinkErrorKind::Timeout, 2), (SinkErrorKind::Refused, 1)]
        );
        let mut total = before;
        total += d;
        assert_eq!(total.sink_errors.total(), 7);
    }

    fn counters(read: u64, delivered: u64) -> JobCounters {
        JobCounters { read, delivered, batches: delivered / 10, ..Default::default() }
    }

    #[test]
    fn deltas_follow_counters_and_survive_restarts() {
        assert_eq!(counters(100, 80).since(None), counters(100, 80));
        let d = counters(150, 120).since(Some(&counters(100, 80)));
        assert_eq!((d.read, d.delivered), (50, 40));
        // Restarted: the new instance counted 30 since it started.
        let d = counters(30, 20).since(Some(&counters(150, 120)));
        assert_eq!((d.read, d.delivered), (30, 20));
    }

    #[test]
    fn merging_sums_counts_keeps_worst_lag_and_weights_the_median() {
        let lat = |count, p50, p99| Some(Distribution { count, p50, p95: p99, p99, max: p99 });
        let mut bucket = JobSample {
            at: 0,
            seconds: 300,
            counts: counters(10, 10),
            lag: 5,
            lag_seconds: 1.0,
            end_to_end: lat(30, 10.0, 50.0),
            sink_request: None,
            batch_size: None,
        };
        let s = JobSample {
            at: 10_000,
            seconds: 10,
            counts: counters(20, 10),
            lag: 3,
            lag_seconds: 4.0,
            end_to_end: lat(10, 50.0, 20.0),
            sink_request: lat(1, 7.0, 7.0),
            batch_size: lat(1, 10.0, 10.0),
        };
        merge(&mut bucket, &s);
        assert_eq!((bucket.counts.read, bucket.counts.delivered), (30, 20));
        assert_eq!((bucket.lag, bucket.lag_seconds), (5, 4.0));
        let e = bucket.end_to_end.unwrap();
        assert_eq!((e.count, e.p50, e.p99), (40, 20.0, 50.0));
        assert_eq!(bucket.sink_request.unwrap().p50, 7.0);
        assert_eq!(bucket.batch_size.unwrap().max, 10.0);
    }

    #[test]
    fn health_follows_phase_then_lag() {
        use crate::JobPhase;
        assert_eq!(Health::of(Some(JobPhase::Running), 0.5), Health::Healthy);
        assert_eq!(Health::of(Some(JobPhase::Running), 61.0), Health::Lagging);
        assert_eq!(Health::of(Some(JobPhase::Failing), 0.0), Health::Failing);
        assert_eq!(Health::of(Some(JobPhase::Failed), 500.0), Health::Failing);
        assert_eq!(Health::of(Some(JobPhase::Stopped), 500.0), Health::Stopped);
        assert_eq!(Health::of(None, 0.0), Health::Stopped);
        for h in Health::ALL {
            assert_eq!(Health::parse(h.as_str()), Some(h));
        }
    }

    #[test]
    fn windows_round_trip_their_names() {
        for w in Window::ALL {
            assert_eq!(Window::parse(w.as_str()), Some(w));
        }
        assert_eq!(Window::parse("2h"), None);
    }

    #[test]
    fn resolution_is_the_finest_that_covers_the_window() {
        assert_eq!(Resolution::for_window(15 * 60_000).seconds, 10);
        assert_eq!(Resolution::for_window(24 * 3_600_000).seconds, 10);
        assert_eq!(Resolution::for_window(7 * 24 * 3_600_000).seconds, 300);
        assert_eq!(RESOLUTIONS[0].bucket(1_234_567), 1_230_000);
        assert_eq!(RESOLUTIONS[1].bucket(1_234_567), 1_200_000);
    }
}
