//! Per-stream ingest counters: events and bytes accepted, events rejected, the rate over the
//! last minute (one-second buckets), and which producers were active. Kept in memory by the
//! process that ingests; the log's end offsets give the durable totals, the telemetry task
//! stores samples of these.

use keystone_control::IngestStats;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

/// Seconds of history the rate is computed over.
const WINDOW_S: i64 = 60;
/// A producer that sent nothing for this long no longer counts as active.
pub const PRODUCER_ACTIVE_MS: i64 = 5 * 60_000;

#[derive(Default)]
struct StreamMeter {
    accepted: u64,
    bytes: u64,
    rejected: u64,
    rejected_by_kind: BTreeMap<String, u64>,
    throttled: u64,
    requests: u64,
    /// (second since the epoch, events accepted in it), oldest first.
    recent: VecDeque<(i64, u64)>,
    /// When each producer (by its token's hash, never the token) last had events accepted.
    producers: HashMap<String, i64>,
}

#[derive(Default)]
pub struct IngestMeter(Mutex<HashMap<String, StreamMeter>>);

impl IngestMeter {
    /// Counts an acknowledged request of the producer whose token hashes to `producer`.
    pub fn accepted(&self, topic: &str, producer: &str, events: u64, bytes: u64, now_ms: i64) {
        let mut all = self.0.lock().expect("meter lock");
        let m = all.entry(topic.to_owned()).or_default();
        m.accepted += events;
        m.bytes += bytes;
        m.requests += 1;
        match m.producers.get_mut(producer) {
            Some(seen) => *seen = now_ms,
            None => {
                m.producers.retain(|_, seen| *seen > now_ms - PRODUCER_ACTIVE_MS);
                m.producers.insert(producer.to_owned(), now_ms);
            }
        }
        let second = now_ms.div_euclid(1000);
        match m.recent.back_mut() {
            Some((s, n)) if *s == second => *n += events,
            _ => m.recent.push_back((second, events)),
        }
        while m.recent.front().is_some_and(|(s, _)| *s <= second - WINDOW_S) {
            m.recent.pop_front();
        }
    }

    /// Counts events refused by validation, by kind of refusal (see `ingest::Rejection`).
    pub fn rejected<'a>(&self, topic: &str, kinds: impl IntoIterator<Item = &'a str>) {
        let mut all = self.0.lock().expect("meter lock");
        let m = all.entry(topic.to_owned()).or_default();
        for kind in kinds {
            m.rejected += 1;
            *m.rejected_by_kind.entry(kind.to_owned()).or_default() += 1;
        }
    }

    /// Counts events refused for the stream's quota.
    pub fn throttled(&self, topic: &str, events: u64) {
        self.0.lock().expect("meter lock").entry(topic.to_owned()).or_default().throttled += events;
    }

    /// Every stream counted so far, by topic.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.0.lock().expect("meter lock").keys().cloned().collect();
        topics.sort();
        topics
    }

    /// Producers of a stream that had events accepted since `since_ms`.
    pub fn producers_since(&self, topic: &str, since_ms: i64) -> u64 {
        let all = self.0.lock().expect("meter lock");
        all.get(topic).map_or(0, |m| m.producers.values().filter(|seen| **seen >= since_ms).count() as u64)
    }

    pub fn stats(&self, topic: &str, now_ms: i64) -> IngestStats {
        let all = self.0.lock().expect("meter lock");
        let Some(m) = all.get(topic) else { return IngestStats::default() };
        let since = now_ms.div_euclid(1000) - WINDOW_S;
        let last_minute: u64 = m.recent.iter().filter(|(s, _)| *s > since).map(|(_, n)| n).sum();
        IngestStats {
            accepted: m.accepted,
            bytes: m.bytes,
            rejected: m.rejected,
            rejected_by_kind: m.rejected_by_kind.clone(),
            throttled: m.throttled,
            requests: m.requests,
            events_per_second: last_minute as f64 / WINDOW_S as f64,
            producers: m.producers.values().filter(|seen| **seen > now_ms - PRODUCER_ACTIVE_MS).count() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_rates_over_the_last_minute() {
        let m = IngestMeter::default();
        m.accepted("a.s", "p1", 600, 60_000, 1_000_000);
        m.accepted("a.s", "p2", 600, 60_000, 1_030_500);
        m.rejected("a.s", ["schema", "schema", "malformed"]);
        let s = m.stats("a.s", 1_031_000);
        assert_eq!((s.accepted, s.bytes, s.rejected, s.requests), (1200, 120_000, 3, 2));
        assert_eq!(s.rejected_by_kind.get("schema"), Some(&2));
        assert_eq!(s.rejected_by_kind.get("malformed"), Some(&1));
        assert_eq!(s.events_per_second, 20.0);
        assert_eq!(s.producers, 2);
        assert_eq!(m.producers_since("a.s", 1_030_000), 1, "only p2 sent since");
        // Five minutes after p1's last request, only p2 is active.
        assert_eq!(m.stats("a.s", 1_000_000 + PRODUCER_ACTIVE_MS).producers, 1);
        // A minute later the first burst has left the window.
        assert_eq!(m.stats("a.s", 1_061_000).events_per_second, 10.0);
        assert_eq!(m.stats("a.other", 0), IngestStats::default());
    }
}
