//! Rewinds: moving a stopped route's job to other positions in its stream (the earliest
//! retained event, a time, a savepoint, or a checkpoint of its bounded history) so it
//! re-delivers from there. `plan_rewind` is the
//! pure estimate shown before anything changes (the dry run).

use serde::{Deserialize, Serialize};

/// Where a rewind goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "to")]
pub enum RewindTo {
    /// The oldest event each partition still retains.
    Earliest,
    /// The first event ingested at or after this time (ms since the epoch).
    Timestamp { timestamp: i64 },
    /// The positions a savepoint of the route recorded.
    Savepoint { savepoint: String },
    /// The positions of one entry of the route's checkpoint history (by id).
    Checkpoint { checkpoint: i64 },
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct PartitionRewind {
    pub partition: u32,
    /// The committed position now (next offset to deliver).
    pub from: u64,
    pub to: u64,
}

/// What a rewind does: per partition, and in total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct RewindPlan {
    pub partitions: Vec<PartitionRewind>,
    /// Events delivered before that will be delivered again.
    pub redelivered: u64,
    /// Events not delivered yet that will be skipped (a savepoint ahead of the job).
    pub skipped: u64,
}

/// The plan from the committed positions to the target ones (partitions without a commit are
/// at 0; partitions the target does not name stay where they are).
pub fn plan_rewind(committed: &[(u32, u64)], target: &[(u32, u64)]) -> RewindPlan {
    let mut partitions: Vec<PartitionRewind> = target
        .iter()
        .map(|&(partition, to)| {
            let from = committed.iter().find(|(p, _)| *p == partition).map_or(0, |(_, o)| *o);
            PartitionRewind { partition, from, to }
        })
        .collect();
    partitions.sort_by_key(|p| p.partition);
    let redelivered = partitions.iter().map(|p| p.from.saturating_sub(p.to)).sum();
    let skipped = partitions.iter().map(|p| p.to.saturating_sub(p.from)).sum();
    RewindPlan { partitions, redelivered, skipped }
}

/// What a rewind needs besides the log (see `Goal::rewind_inputs`). Only `rewind_inputs`
/// builds one, after checking the caller may operate the route, so `Goal::rewind_route` need not
/// check again.
#[cfg(feature = "store")]
pub struct RewindInputs {
    pub(crate) route: crate::Object,
    pub(crate) describe: String,
    pub topic: String,
    pub partitions: u32,
    /// The recorded positions of a savepoint or checkpoint (empty for other targets).
    pub recorded: Vec<(u32, u64)>,
}

#[cfg(feature = "store")]
impl RewindInputs {
    pub fn route_id(&self) -> &str {
        &self.route.id
    }
}

/// A named position of a route's job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct Savepoint {
    pub name: String,
    /// (partition, next offset to deliver) pairs.
    #[cfg_attr(feature = "store", schema(value_type = Vec<Vec<u64>>))]
    pub positions: Vec<(u32, u64)>,
    pub created_at: i64,
    pub created_by: String,
}

/// How often, at most, the automatic checkpoints of a route are copied into its history, and
/// how many copies are kept (an hour's worth at one a minute).
pub const CHECKPOINT_HISTORY_EVERY_MS: i64 = 60_000;
pub const CHECKPOINT_HISTORY_KEEP: i64 = 60;

/// An entry of a route's checkpoint history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct HistoricCheckpoint {
    pub id: i64,
    pub taken_at: i64,
    /// (partition, next offset to deliver) pairs.
    #[cfg_attr(feature = "store", schema(value_type = Vec<Vec<u64>>))]
    pub positions: Vec<(u32, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_counts_events_delivered_again_and_skipped() {
        let plan = plan_rewind(&[(0, 100), (1, 40)], &[(1, 10), (0, 60), (2, 0)]);
        assert_eq!(
            plan.partitions,
            [
                PartitionRewind { partition: 0, from: 100, to: 60 },
                PartitionRewind { partition: 1, from: 40, to: 10 },
                PartitionRewind { partition: 2, from: 0, to: 0 },
            ]
        );
        assert_eq!((plan.redelivered, plan.skipped), (70, 0));
        let ahead = plan_rewind(&[(0, 5)], &[(0, 25)]);
        assert_eq!((ahead.redelivered, ahead.skipped), (0, 20));
    }

    #[test]
    fn targets_read_from_json_by_kind() {
        let t: RewindTo = serde_json::from_str(r#"{"to": "timestamp", "timestamp": 1700000000000}"#).unwrap();
        assert_eq!(t, RewindTo::Timestamp { timestamp: 1_700_000_000_000 });
        let s: RewindTo = serde_json::from_str(r#"{"to": "savepoint", "savepoint": "before-v2"}"#).unwrap();
        assert_eq!(s, RewindTo::Savepoint { savepoint: "before-v2".into() });
        let c: RewindTo = serde_json::from_str(r#"{"to": "checkpoint", "checkpoint": 12}"#).unwrap();
        assert_eq!(c, RewindTo::Checkpoint { checkpoint: 12 });
        assert!(serde_json::from_str::<RewindTo>(r#"{"to": "yesterday"}"#).is_err());
    }
}
