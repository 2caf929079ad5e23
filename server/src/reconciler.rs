//! The executor of the reconciler's topic plan: every few seconds, forever, it compares the
//! declared streams with the log's topics and applies the difference. If the log is wiped, the
//! next pass recreates every topic from the database alone.

use keystone_control::reconcile::{plan_topics, ObservedTopic, TopicAction, TopicGoal};
use keystone_control::store::{Scope, Store};
use keystone_control::{stream_topic, Kind, StreamSpec};
use keystone_engine::log::{EmbeddedLog, Log, Retention};
use std::sync::Arc;
use std::time::Duration;

pub fn spawn(store: Store, log: Arc<EmbeddedLog>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = pass(&store, &log).await {
                tracing::warn!(error = %e, "Reconcile pass failed; retrying on the next tick.");
            }
        }
    });
}

/// One reconcile pass over all topics.
pub async fn pass(store: &Store, log: &EmbeddedLog) -> anyhow::Result<()> {
    let goal: Vec<TopicGoal> = store
        .list(Kind::Stream, &Scope::All)
        .await?
        .into_iter()
        .filter_map(|o| {
            let spec: StreamSpec = o.spec_as().ok()?;
            Some(TopicGoal {
                topic: stream_topic(&o.team, &o.name),
                partitions: spec.partitions,
                max_age_ms: i64::from(spec.retention_hours) * 3_600_000,
                max_bytes_per_partition: spec.retention_bytes,
            })
        })
        .collect();
    let observed: Vec<ObservedTopic> = log
        .topics()
        .into_iter()
        .map(|(topic, partitions, r)| ObservedTopic {
            topic,
            partitions,
            max_age_ms: r.max_age_ms,
            max_bytes_per_partition: r.max_bytes_per_partition,
        })
        .collect();
    for action in plan_topics(&goal, &observed) {
        match action {
            TopicAction::Create(g) | TopicAction::Update(g) => {
                let retention =
                    Retention { max_age_ms: g.max_age_ms, max_bytes_per_partition: g.max_bytes_per_partition };
                log.ensure_topic(&g.topic, g.partitions, retention).await?;
                tracing::info!(topic = %g.topic, partitions = g.partitions, "Topic reconciled.");
            }
            TopicAction::CannotShrink { topic, declared, actual } => {
                tracing::warn!(topic = %topic, declared, actual, "Topic has more partitions than declared; partitions never shrink.");
            }
            // Left to retention; reported at debug level to keep a steady log quiet.
            TopicAction::Orphan { topic } => tracing::debug!(topic = %topic, "Topic without a stream."),
        }
    }
    Ok(())
}
