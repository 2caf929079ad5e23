//! Consumer-group membership for a route job shared by several processes (`keystone worker`):
//! Kafka's group protocol decides which member runs which partitions of the stream, so adding a
//! worker spreads the partitions and losing one moves its partitions to the others, with no
//! cluster logic of Keystone's own.
//!
//! The member only takes part in the group: it never fetches (its partitions are paused as soon
//! as they are assigned). Records are read by the job's positioned readers, from the positions
//! committed in the source of truth, as in a single process. The group's rebalance callbacks
//! become [`AssignmentChange`]s for the job:
//!
//! - on assignment, the job opens readers of the new partitions at their committed positions;
//! - on revocation (another member joined, or this one leaves), the callback waits until the job
//!   drained those partitions (the batch in hand delivered and acknowledged) and committed their
//!   positions; only then does the group hand them to another member, which resumes exactly
//!   there. Nothing prefetched or refused is ever committed, and nothing is committed for a
//!   partition after it was handed over.
//!
//! A member that dies without leaving (kill -9) stops heartbeating; after the session timeout
//! the group gives its partitions to the others, which resume from the last periodic commit:
//! duplicates bounded by one checkpoint interval, no loss.

use super::kafka::KafkaConfig;
use super::LogError;
use crate::job::AssignmentChange;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::topic_partition_list::TopicPartitionList;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a revocation waits for the job to drain and commit before the partitions are let go
/// anyway (a sink stuck retrying is cancelled well before this).
const REVOKE_TIMEOUT: Duration = Duration::from_secs(60);

/// A membership and the assignment changes it brings, for `job::run_assigned`.
pub type Membership = (GroupMember, mpsc::Receiver<AssignmentChange>);

/// This process's membership of one route job's consumer group; leaves the group when dropped.
pub struct GroupMember {
    stop: Arc<AtomicBool>,
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        // The polling thread leaves the group (handing over what the job still holds) and ends.
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct GroupContext {
    topic: String,
    changes: mpsc::Sender<AssignmentChange>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let revoked = match rebalance {
            Rebalance::Revoke(tpl) => self.partitions(tpl),
            // A failed rebalance (e.g. the assignment was lost): whatever is held goes.
            Rebalance::Error(_) => consumer.assignment().map(|tpl| self.partitions(&tpl)).unwrap_or_default(),
            Rebalance::Assign(_) => return,
        };
        if revoked.is_empty() {
            return;
        }
        let (done, drained) = std::sync::mpsc::sync_channel(1);
        // A job that already ended has committed everything: nothing to wait for.
        if self.changes.blocking_send(AssignmentChange::Revoked { partitions: revoked, done }).is_ok() {
            let _ = drained.recv_timeout(REVOKE_TIMEOUT);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // Membership only: the job's own readers fetch the records.
            if let Err(e) = consumer.pause(tpl) {
                tracing::warn!(error = %e, "Pausing assigned partitions failed; their records are ignored.");
            }
            let assigned = self.partitions(tpl);
            if !assigned.is_empty() {
                let _ = self.changes.blocking_send(AssignmentChange::Assigned(assigned));
            }
        }
    }
}

impl GroupContext {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<u32> {
        let mut out: Vec<u32> = tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition() as u32).collect();
        out.sort_unstable();
        out
    }
}

/// Joins consumer group `group` on `topic`: the assignment changes arrive on the returned
/// receiver, for `job::run_assigned`. Uses the cooperative-sticky assignor, so a rebalance moves
/// only the partitions that change owner and the others keep running.
pub fn join(config: &KafkaConfig, group: &str, topic: &str, session_timeout: Duration) -> Result<Membership, LogError> {
    let (changes, rx) = mpsc::channel(16);
    let context = GroupContext { topic: topic.to_owned(), changes };
    let consumer: BaseConsumer<GroupContext> = config
        .client()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", session_timeout.as_millis().to_string())
        .set("heartbeat.interval.ms", (session_timeout.as_millis() / 3).max(100).to_string())
        .create_with_context(context)
        .map_err(|e| LogError::Unavailable(e.to_string()))?;
    consumer.subscribe(&[topic]).map_err(|e| LogError::Unavailable(e.to_string()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    std::thread::Builder::new()
        .name(format!("group-{topic}"))
        .spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                // Rebalance callbacks run inside poll; no record comes (partitions are paused).
                let _ = consumer.poll(Duration::from_millis(100));
            }
            // Leaving: close revokes what is held (the job drains and commits if it still runs).
            consumer.unsubscribe();
            let _ = consumer.poll(Duration::from_millis(100));
            drop(consumer);
        })
        .map_err(LogError::Io)?;
    Ok((GroupMember { stop }, rx))
}
