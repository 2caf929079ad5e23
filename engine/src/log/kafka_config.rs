//! How to reach a Kafka cluster, shared by the log's clients and its consumer-group members.

use rdkafka::config::ClientConfig;
use std::collections::BTreeMap;
use std::time::Duration;

/// How to reach the cluster, and what Keystone may do to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: host:port, comma-separated.
    pub brokers: String,
    /// Further librdkafka properties for every client (e.g. `security.protocol`,
    /// `sasl.mechanisms`): the way to reach a secured cluster.
    pub properties: BTreeMap<String, String>,
    /// Create topics and add partitions from the goal state.
    pub manage_topics: bool,
    /// Replication factor of created topics (3 in production, with `min.insync.replicas=2`).
    pub replication_factor: i32,
    /// How often end offsets written by other processes are polled.
    pub watermark_interval: Duration,
    /// How long one request may take before the operation fails as unavailable.
    pub request_timeout: Duration,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            properties: BTreeMap::new(),
            manage_topics: true,
            replication_factor: 3,
            watermark_interval: Duration::from_millis(200),
            request_timeout: Duration::from_secs(10),
        }
    }

    pub(crate) fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        // Topics come from the goal state only, never from a typo in a read or write.
        c.set("allow.auto.create.topics", "false");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}
