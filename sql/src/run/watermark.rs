//! Event-time progress of one input: per partition the highest event time seen; the watermark is
//! the lowest of them over the partitions that are not idle. A partition that has not spoken
//! holds the watermark back until it does or until it has been silent for the idle timeout.

use std::collections::BTreeMap;

#[derive(Debug, Clone)]
struct Partition {
    /// The highest event time seen (ms), if any.
    max: Option<i64>,
    /// When (wall clock, ms) the partition last had an event, or when tracking began.
    heard: i64,
}

#[derive(Debug, Clone)]
pub struct Watermarks {
    partitions: Vec<Partition>,
    idle_timeout_ms: i64,
    /// Set on first use: a fresh job gives silent partitions the idle timeout from its start.
    started: bool,
}

impl Watermarks {
    pub fn new(partitions: u32, idle_timeout_ms: i64) -> Watermarks {
        let p = Partition { max: None, heard: 0 };
        Watermarks { partitions: vec![p; partitions.max(1) as usize], idle_timeout_ms, started: false }
    }

    fn start(&mut self, now_ms: i64) {
        if !self.started {
            self.started = true;
            for p in &mut self.partitions {
                p.heard = now_ms;
            }
        }
    }

    /// A batch of `partition` whose highest event time is `max`.
    pub fn observe(&mut self, partition: u32, max: i64, now_ms: i64) {
        self.start(now_ms);
        let i = partition as usize;
        if i >= self.partitions.len() {
            self.partitions.resize(i + 1, Partition { max: None, heard: now_ms });
        }
        let p = &mut self.partitions[i];
        p.max = Some(p.max.map_or(max, |m| m.max(max)));
        p.heard = now_ms;
    }

    /// The watermark at `now_ms`: `None` while a partition that is not idle has not spoken.
    /// When every partition is idle, the highest time seen anywhere (a quiet stream still
    /// closes its windows).
    pub fn current(&self, now_ms: i64) -> Option<i64> {
        if !self.started {
            return None;
        }
        let active: Vec<&Partition> =
            self.partitions.iter().filter(|p| now_ms.saturating_sub(p.heard) < self.idle_timeout_ms).collect();
        if active.is_empty() {
            return self.partitions.iter().filter_map(|p| p.max).max();
        }
        active.iter().map(|p| p.max).collect::<Option<Vec<i64>>>()?.into_iter().min()
    }

    pub(crate) fn to_json(&self) -> String {
        let maxima: BTreeMap<usize, i64> =
            self.partitions.iter().enumerate().filter_map(|(i, p)| Some((i, p.max?))).collect();
        serde_json::to_string(&maxima).expect("numbers serialise")
    }

    /// The maxima a snapshot recorded; every partition counts as heard now.
    pub(crate) fn restore(&mut self, json: &str, now_ms: i64) -> Result<(), String> {
        self.started = false;
        self.start(now_ms);
        if json.is_empty() {
            return Ok(());
        }
        let maxima: BTreeMap<usize, i64> =
            serde_json::from_str(json).map_err(|e| format!("the snapshot's watermarks are unreadable: {e}"))?;
        for (i, max) in maxima {
            if i >= self.partitions.len() {
                self.partitions.resize(i + 1, Partition { max: None, heard: now_ms });
            }
            self.partitions[i].max = Some(max);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_waits_for_every_partition_until_one_is_idle() {
        let mut w = Watermarks::new(2, 1000);
        assert_eq!(w.current(0), None);
        w.observe(0, 500, 0);
        assert_eq!(w.current(10), None, "partition 1 has not spoken");
        w.observe(1, 300, 20);
        assert_eq!(w.current(30), Some(300));
        w.observe(1, 900, 40);
        assert_eq!(w.current(50), Some(500));
        // Partition 0 falls silent: after the idle timeout only partition 1 counts.
        w.observe(1, 1200, 1500);
        assert_eq!(w.current(1500), Some(1200));
        // Everything idle: the highest time seen.
        assert_eq!(w.current(10_000), Some(1200));
    }

    #[test]
    fn watermarks_survive_a_snapshot() {
        let mut w = Watermarks::new(2, 1000);
        w.observe(0, 500, 0);
        w.observe(1, 700, 0);
        let mut back = Watermarks::new(2, 1000);
        back.restore(&w.to_json(), 5000).unwrap();
        assert_eq!(back.current(5000), Some(500));
    }
}
