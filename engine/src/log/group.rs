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
//!
//! The source of truth holds the positions Keystone resumes from; the member also commits them
//! as the group's offsets (for the partitions it holds), so Kafka's own tools show each route's
//! progress and lag.

use super::kafka_config::KafkaConfig;
use super::LogError;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// A change of the partitions one instance of a job runs, when several share a route's job
/// through a consumer group (see `log::kafka::GroupMember`).
pub enum AssignmentChange {
    Assigned(Vec<u32>),
    /// Stop these partitions and commit their acknowledged positions, then say `done`: only then
    /// may another member take them, and it resumes exactly where this one stopped.
    Revoked {
        partitions: Vec<u32>,
        done: std::sync::mpsc::SyncSender<()>,
    },
}

/// What one instance of a job shared through a consumer group gets from the group.
pub struct Assignments {
    pub changes: tokio::sync::mpsc::Receiver<AssignmentChange>,
    /// Positions the job committed (in the source of truth), to commit as the group's offsets
    /// too: Kafka's own tools then see how far the route got. Keystone resumes from its own.
    pub committed: std::sync::mpsc::Sender<Vec<(u32, u64)>>,
}

/// How long a revocation waits for the job to drain and commit before the partitions are let go
/// anyway (a sink stuck retrying is cancelled well before this).
const REVOKE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a leaving member keeps trying to commit its last positions as the group's offsets.
const LEAVE_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// A membership and the assignment changes it brings, for `job::run_assigned`.
pub type Membership = (GroupMember, Assignments);

/// This process's membership of one route job's consumer group; leaves the group when dropped
/// (without waiting: see [`GroupMember::leave`]).
pub struct GroupMember {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupMember {
    /// Leaves the group and waits until it has left: the job's last positions committed as the
    /// group's offsets and its partitions handed over. A process about to exit must wait, or
    /// the group holds its partitions until the session times out.
    pub async fn leave(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
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
    /// The job's committed positions (see `Assignments::committed`), and those not yet
    /// committed as the group's offsets, by partition.
    committed: Mutex<(std::sync::mpsc::Receiver<Vec<(u32, u64)>>, BTreeMap<u32, u64>)>,
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
        // Still held until this callback returns: the handover's positions become the group's.
        let _ = self.mirror_offsets(consumer);
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
    /// Commits the positions the job committed as the group's offsets, for the partitions this
    /// member holds now (never for one handed over: its new owner commits it). What fails (a
    /// rebalance in progress) is tried again on the next poll. True when nothing is left to commit.
    fn mirror_offsets(&self, consumer: &BaseConsumer<Self>) -> bool {
        let mut committed = self.committed.lock().expect("committed lock");
        let (positions, pending) = &mut *committed;
        // The newest position of each partition wins (a rewind may lower one).
        pending.extend(positions.try_iter().flatten());
        if pending.is_empty() {
            return true;
        }
        let Ok(held) = consumer.assignment() else { return false };
        pending.retain(|p, _| held.find_partition(&self.topic, *p as i32).is_some());
        let mut offsets = TopicPartitionList::new();
        for (&p, &next) in pending.iter() {
            let _ = offsets.add_partition_offset(&self.topic, p as i32, Offset::Offset(next as i64));
        }
        if offsets.count() == 0 {
            return true;
        }
        match consumer.commit(&offsets, CommitMode::Sync) {
            Ok(()) => {
                pending.clear();
                true
            }
            // Keystone resumes from its own checkpoints; only outside tools see this late.
            Err(e) => {
                tracing::debug!(error = %e, topic = %self.topic, "Committing the group's offsets failed.");
                false
            }
        }
    }

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
    let (committed, positions) = std::sync::mpsc::channel();
    let context =
        GroupContext { topic: topic.to_owned(), changes, committed: Mutex::new((positions, BTreeMap::new())) };
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
    let thread = std::thread::Builder::new()
        .name(format!("group-{topic}"))
        .spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                // Rebalance callbacks run inside poll; no record comes (partitions are paused).
                let _ = consumer.poll(Duration::from_millis(100));
                let _ = consumer.context().mirror_offsets(&consumer);
            }
            // Leaving: the job has ended, so its last positions are in; they become the group's
            // while this member still holds the partitions (a rebalance in progress refuses
            // commits: polling lets it finish, for a moment). Then close revokes what is held
            // (the job drains and commits if it still runs).
            let deadline = std::time::Instant::now() + LEAVE_COMMIT_TIMEOUT;
            while !consumer.context().mirror_offsets(&consumer) && std::time::Instant::now() < deadline {
                let _ = consumer.poll(Duration::from_millis(100));
            }
            consumer.unsubscribe();
            let _ = consumer.poll(Duration::from_millis(100));
            drop(consumer);
        })
        .map_err(LogError::Io)?;
    Ok((GroupMember { stop, thread: Some(thread) }, Assignments { changes: rx, committed }))
}
