//! A job's distributions between two telemetry samples: latency end to end (ingest to sink
//! acknowledgement) and per sink request, and events per sink request. HdrHistogram records in
//! a few nanoseconds with bounded relative error, so every delivered event can be recorded on
//! the hot path.

use hdrhistogram::Histogram;
use keystone_control::Distribution;
use std::time::Duration;

/// Longest latency told apart (one hour); anything slower is recorded as one hour.
const MAX_MS: u64 = 3_600_000;

#[derive(Debug)]
pub struct Latency {
    end_to_end: Histogram<u64>,
    request: Histogram<u64>,
    batch: Histogram<u64>,
}

/// One interval's distributions, `None` where nothing was recorded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub end_to_end: Option<Distribution>,
    pub sink_request: Option<Distribution>,
    pub batch_size: Option<Distribution>,
}

impl Default for Latency {
    fn default() -> Self {
        // Two significant digits: 1% error, a few KiB per histogram.
        let h = || Histogram::new_with_bounds(1, MAX_MS, 2).expect("valid histogram bounds");
        Latency { end_to_end: h(), request: h(), batch: h() }
    }
}

impl Latency {
    /// One delivered event, `ms` after it was ingested (clock skew below zero counts as 0).
    pub fn record_end_to_end(&mut self, ms: i64) {
        self.end_to_end.saturating_record(ms.clamp(0, MAX_MS as i64) as u64);
    }

    /// One sink request of `events` events that was answered (accepted or refused).
    pub fn record_request(&mut self, took: Duration, events: usize) {
        self.request.saturating_record((took.as_millis() as u64).min(MAX_MS));
        self.batch.saturating_record(events.max(1) as u64);
    }

    /// The distributions since the last call, which starts the next interval.
    pub fn take(&mut self) -> Interval {
        let out = Interval {
            end_to_end: summary(&self.end_to_end),
            sink_request: summary(&self.request),
            batch_size: summary(&self.batch),
        };
        self.end_to_end.reset();
        self.request.reset();
        self.batch.reset();
        out
    }
}

fn summary(h: &Histogram<u64>) -> Option<Distribution> {
    (!h.is_empty()).then(|| Distribution {
        count: h.len(),
        p50: h.value_at_quantile(0.50) as f64,
        p95: h.value_at_quantile(0.95) as f64,
        p99: h.value_at_quantile(0.99) as f64,
        max: h.max() as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_cover_the_interval_then_reset() {
        let mut l = Latency::default();
        for ms in 1..=100 {
            l.record_end_to_end(ms);
        }
        l.record_request(Duration::from_millis(40), 60);
        l.record_request(Duration::from_millis(40), 40);
        let taken = l.take();
        let e2e = taken.end_to_end.unwrap();
        assert_eq!(e2e.count, 100);
        assert_eq!(e2e.p50, 50.0);
        assert_eq!(e2e.p99, 99.0);
        assert_eq!(e2e.max, 100.0);
        assert_eq!(taken.sink_request.unwrap().p50, 40.0);
        let batch = taken.batch_size.unwrap();
        assert_eq!((batch.count, batch.p50, batch.max), (2, 40.0, 60.0));
        assert_eq!(
            l.take(),
            Interval { end_to_end: None, sink_request: None, batch_size: None },
            "each interval starts empty"
        );
    }

    #[test]
    fn skewed_and_huge_values_are_clamped() {
        let mut l = Latency::default();
        l.record_end_to_end(-5);
        l.record_end_to_end(i64::MAX);
        let e2e = l.take().end_to_end.unwrap();
        assert_eq!(e2e.count, 2);
        assert_eq!(e2e.p50, 0.0);
        assert!(e2e.max >= MAX_MS as f64 * 0.99);
    }
}
