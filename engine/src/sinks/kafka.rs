//! Kafka sink: produces each event to a topic of a Kafka cluster (any Apache Kafka protocol
//! broker, e.g. another team's or another region's cluster), on the same client as the Kafka log
//! (rdkafka). The producer is idempotent with `acks=all`: a batch is acknowledged only once every
//! in-sync replica has all of its events, and the client's own retries neither duplicate nor
//! reorder them. A batch retried after a failure may repeat events (at-least-once); each record
//! carries the event id (as a header and in the value) for consumers to drop repeats.
//!
//! Records: the key is the event's key, or its id when it has none (so one key's events stay in
//! one partition, in order); the value is the JSON a file sink writes per event (`id`,
//! `ingested_at`, `key`, `event`); the header `keystone-event-id` holds the id. An event the
//! cluster refuses for good (larger than the topic allows) is refused alone and dead-lettered.

use super::{ConfigError, Sink, SinkError, SinkEvent};
use keystone_control::egress::EgressPolicy;
use keystone_control::{KafkaSettings, SinkErrorKind};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSinkConfig {
    pub brokers: String,
    pub topic: String,
    /// librdkafka security settings (protocol, SASL mechanism, user name, password).
    pub security: BTreeMap<String, String>,
    /// How long one batch may wait for the cluster before the delivery fails (and is retried).
    pub timeout: Duration,
}

impl KafkaSinkConfig {
    pub fn new(settings: &KafkaSettings, secrets: &BTreeMap<String, String>) -> KafkaSinkConfig {
        let mut security = BTreeMap::from([("security.protocol".to_owned(), settings.security_protocol.clone())]);
        for (property, value) in
            [("sasl.mechanisms", &settings.sasl_mechanism), ("sasl.username", &settings.sasl_username)]
        {
            if let Some(v) = value {
                security.insert(property.to_owned(), v.clone());
            }
        }
        if let Some(p) = secrets.get("sasl_password").filter(|v| !v.is_empty()) {
            security.insert("sasl.password".to_owned(), p.clone());
        }
        KafkaSinkConfig {
            brokers: settings.brokers.clone(),
            topic: settings.topic.clone(),
            security,
            timeout: Duration::from_secs(30),
        }
    }
}

pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
}

impl KafkaSink {
    /// Connects lazily: nothing is sent before the first batch.
    pub fn new(config: KafkaSinkConfig, egress: &EgressPolicy) -> Result<KafkaSink, ConfigError> {
        // The bootstrap brokers are checked here, at every build of the sink (each job start);
        // librdkafka resolves names itself and has no hook in this binding to check its own
        // connections, so brokers the cluster advertises are not checked (see the README).
        for hp in config.brokers.split(',') {
            let (host, port) = hp.trim().rsplit_once(':').unwrap_or((hp.trim(), "9092"));
            let port = port.parse().map_err(|_| ConfigError::new("settings.brokers", "must be host:port"))?;
            crate::egress::checked_addrs(egress, host, port)
                .map_err(|e| ConfigError::new("settings.brokers", e.to_string()))?;
        }
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", config.timeout.as_millis().to_string());
        for (k, v) in &config.security {
            client.set(k, v);
        }
        let producer = client.create().map_err(|e| ConfigError::new("settings.brokers", e.to_string()))?;
        Ok(KafkaSink { producer, topic: config.topic })
    }
}

/// Whether the cluster refuses this record for good (retrying cannot help).
fn refused_for_good(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

impl Sink for KafkaSink {
    async fn deliver(&self, batch: &[SinkEvent]) -> Result<(), SinkError> {
        // Every record is handed to the producer first, then all acknowledgements are awaited:
        // the batch travels in as few requests as the client can make of it.
        let mut pending = Vec::with_capacity(batch.len());
        let mut refused = Vec::new();
        for (i, e) in batch.iter().enumerate() {
            let value = serde_json::to_vec(e).expect("an event serializes");
            let key = e.key.as_deref().unwrap_or(&e.id);
            let headers = OwnedHeaders::new().insert(Header { key: "keystone-event-id", value: Some(e.id.as_bytes()) });
            let record = FutureRecord::to(&self.topic).key(key).payload(&value).headers(headers);
            match self.producer.send_result(record) {
                Ok(delivery) => pending.push((i, delivery)),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(SinkError::transient(SinkErrorKind::Throttled, "the producer's queue is full"))
                }
                Err((err, _)) if refused_for_good(&err) => {
                    refused.push((i, format!("the record cannot be produced: {err}")))
                }
                Err((err, _)) => return Err(SinkError::transient(SinkErrorKind::Connection, err.to_string())),
            }
        }
        let mut failure: Option<KafkaError> = None;
        for (i, delivery) in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((err, _))) if refused_for_good(&err) => {
                    refused.push((i, format!("the Kafka cluster refused the record: {err}")))
                }
                Ok(Err((err, _))) => failure = Some(err),
                Err(_) => return Err(SinkError::transient(SinkErrorKind::Unavailable, "the producer was shut down")),
            }
        }
        if let Some(err) = failure {
            let kind = match err.rdkafka_error_code() {
                Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::RequestTimedOut) => SinkErrorKind::Timeout,
                Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                    SinkErrorKind::Unavailable
                }
                _ => SinkErrorKind::Server,
            };
            return Err(SinkError::transient(kind, format!("producing to {} failed: {err}", self.topic)));
        }
        SinkError::refusing(refused)
    }
}
