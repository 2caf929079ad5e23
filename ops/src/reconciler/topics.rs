//! Topics: every stream's topic exists with its declared partitions and retention; a deleted
//! stream's topic is removed once its retention has run out.

use super::*;

impl Reconciler {
    pub(super) async fn topics(&self, streams: &[Object]) -> anyhow::Result<()> {
        let goal: Vec<TopicGoal> = streams
            .iter()
            .filter_map(|o| {
                let spec: StreamSpec = o.spec_as().ok()?;
                Some(TopicGoal {
                    topic: o.stream_topic(),
                    partitions: spec.partitions,
                    max_age_ms: i64::from(spec.retention_hours) * 3_600_000,
                    max_bytes_per_partition: spec.retention_bytes,
                })
            })
            .collect();
        let observed: Vec<ObservedTopic> = self
            .log
            .topics()
            .into_iter()
            // Dead-letter topics belong to routes, not streams.
            .filter(|(topic, _, _)| !is_dead_letter_topic(topic))
            .map(|(topic, partitions, r)| ObservedTopic {
                topic,
                partitions,
                max_age_ms: r.max_age_ms,
                max_bytes_per_partition: r.max_bytes_per_partition,
            })
            .collect();
        let plan = plan_topics(&goal, &observed);
        let orphans: Vec<String> = plan
            .iter()
            .filter_map(|a| match a {
                TopicAction::Orphan { topic } => Some(topic.clone()),
                _ => None,
            })
            .collect();
        let work = plan.iter().filter(|a| matches!(a, TopicAction::Create(_) | TopicAction::Update(_))).count();
        self.health.last_actions.store(work as u64, std::sync::atomic::Ordering::Relaxed);
        for action in plan {
            match action {
                TopicAction::Create(g) | TopicAction::Update(g) => {
                    let retention =
                        Retention { max_age_ms: g.max_age_ms, max_bytes_per_partition: g.max_bytes_per_partition };
                    // One topic the cluster refuses must not hold back the others or the jobs.
                    match self.log.ensure_topic(&g.topic, g.partitions, retention).await {
                        Ok(()) => tracing::info!(topic = %g.topic, partitions = g.partitions, "Topic reconciled."),
                        Err(e) => {
                            tracing::warn!(topic = %g.topic, error = %e, "Could not reconcile the topic; the others go on.")
                        }
                    }
                }
                TopicAction::CannotShrink { topic, declared, actual } => {
                    tracing::warn!(topic = %topic, declared, actual, "Topic has more partitions than declared; partitions never shrink.");
                }
                // Left to retention; reported at debug level to keep a steady log quiet.
                TopicAction::Orphan { topic } => tracing::debug!(topic = %topic, "Topic without a stream."),
            }
        }
        if !orphans.is_empty() && self.role.controls() {
            self.retire_topics(&orphans).await?;
        }
        Ok(())
    }

    /// Removes the topics of deleted streams whose retention has run out since the deletion; a
    /// failure is reported and the others still go.
    pub(super) async fn retire_topics(&self, orphans: &[String]) -> anyhow::Result<()> {
        let retired: Vec<RetiredTopic> = self
            .store
            .deleted_streams()
            .await?
            .into_iter()
            .filter_map(|(o, deleted_at)| {
                let spec: StreamSpec = o.spec_as().ok()?;
                Some(RetiredTopic {
                    topic: o.stream_topic(),
                    deleted_at,
                    max_age_ms: i64::from(spec.retention_hours) * 3_600_000,
                })
            })
            .collect();
        for topic in expired_topics(orphans, &retired, keystone_control::store::now_ms()) {
            match self.log.delete_topic(&topic).await {
                Ok(()) => tracing::info!(topic = %topic, "Deleted stream's topic removed after its retention."),
                Err(e) => tracing::warn!(topic = %topic, error = %e, "Could not remove a deleted stream's topic."),
            }
        }
        Ok(())
    }
}
