//! A job's latency distributions between two telemetry samples: end to end (ingest to sink
//! acknowledgement) and per sink request. HdrHistogram records in a few nanoseconds with bounded
//! relative error, so every delivered event can be recorded on the hot path.

use hdrhistogram::Histogram;
use keystone_control::LatencySummary;
use std::time::Duration;

/// Longest latency told apart (one hour); anything slower is recorded as one hour.
const MAX_MS: u64 = 3_600_000;

#[derive(Debug)]
pub struct Latency {
    end_to_end: Histogram<u64>,
    request: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        // Two significant digits: 1% error, a few KiB per histogram.
        let h = || Histogram::new_with_bounds(1, MAX_MS, 2).expect("valid histogram bounds");
        Latency { end_to_end: h(), request: h() }
    }
}

impl Latency {
    /// One delivered event, `ms` after it was ingested (clock skew below zero counts as 0).
    pub fn record_end_to_end(&mut self, ms: i64) {
        self.end_to_end.saturating_record(ms.clamp(0, MAX_MS as i64) as u64);
    }

    /// One sink request that was answered (accepted or refused).
    pub fn record_request(&mut self, took: Duration) {
        self.request.saturating_record((took.as_millis() as u64).min(MAX_MS));
    }

    /// The distributions since the last call, which starts the next interval.
    pub fn take(&mut self) -> (Option<LatencySummary>, Option<LatencySummary>) {
        let out = (summary(&self.end_to_end), summary(&self.request));
        self.end_to_end.reset();
        self.request.reset();
        out
    }
}

fn summary(h: &Histogram<u64>) -> Option<LatencySummary> {
    (!h.is_empty()).then(|| LatencySummary {
        count: h.len(),
        p50_ms: h.value_at_quantile(0.50) as f64,
        p95_ms: h.value_at_quantile(0.95) as f64,
        p99_ms: h.value_at_quantile(0.99) as f64,
        max_ms: h.max() as f64,
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
        l.record_request(Duration::from_millis(40));
        let (e2e, req) = l.take();
        let e2e = e2e.unwrap();
        assert_eq!(e2e.count, 100);
        assert_eq!(e2e.p50_ms, 50.0);
        assert_eq!(e2e.p99_ms, 99.0);
        assert_eq!(e2e.max_ms, 100.0);
        assert_eq!(req.unwrap().p50_ms, 40.0);
        assert_eq!(l.take(), (None, None), "each interval starts empty");
    }

    #[test]
    fn skewed_and_huge_values_are_clamped() {
        let mut l = Latency::default();
        l.record_end_to_end(-5);
        l.record_end_to_end(i64::MAX);
        let e2e = l.take().0.unwrap();
        assert_eq!(e2e.count, 2);
        assert_eq!(e2e.p50_ms, 0.0);
        assert!(e2e.max_ms >= MAX_MS as f64 * 0.99);
    }
}
