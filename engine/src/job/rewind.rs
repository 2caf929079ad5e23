//! The log's part of a rewind: where each partition of a route's stream is at a point in time.
//! (The plan, its checks and the commit are the control plane's: `Goal::rewind_route`.)

use crate::log::{Log, LogError, StartAt};
use keystone_control::rewind::RewindTo;

/// The position each partition would start at for `to`. A savepoint's or a checkpoint's
/// positions (`recorded`) come from the store; they are clamped to what the log still retains,
/// since older events are gone.
pub async fn target_positions<L: Log>(
    log: &L,
    topic: &str,
    partitions: u32,
    to: &RewindTo,
    recorded: &[(u32, u64)],
) -> Result<Vec<(u32, u64)>, LogError> {
    let mut out = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        let at = match to {
            RewindTo::Earliest => StartAt::Earliest,
            RewindTo::Timestamp { timestamp } => StartAt::Timestamp(*timestamp),
            RewindTo::Savepoint { .. } | RewindTo::Checkpoint { .. } => {
                match recorded.iter().find(|(rp, _)| *rp == p) {
                    Some((_, offset)) => StartAt::Offset(*offset),
                    // A partition added since starts at its beginning.
                    None => StartAt::Earliest,
                }
            }
        };
        out.push((p, log.resolve(topic, p, at).await?));
    }
    Ok(out)
}
