//! Stream sink: re-routing into another Keystone stream, which is how a route feeds a
//! downstream team. Each event keeps its id and key and gets a new envelope (the target stream,
//! a new ingest time) around the projected payload. Its partition follows its key, or its id when
//! it has none, so a redelivered batch lands in the same partitions. Redelivery appends again:
//! downstream routes may see an id twice (at-least-once), which idempotent sinks absorb.

use super::{ConfigError, Sink, SinkError, SinkEvent};
use crate::envelope::SentEnvelope;
use crate::ingest::partition_for_key;
use crate::log::{Log, LogError, NewRecord};
use keystone_control::{stream_topic, SinkErrorKind, StreamRef, StreamSettings};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// An append in flight: the `(partition, offset)` of each record, or why none was kept.
pub type Appending<'a> = Pin<Box<dyn Future<Output = Result<Vec<(u32, u64)>, LogError>> + Send + 'a>>;

/// The part of a log a stream sink needs, object-safe so sinks need not be generic over the log.
pub trait Appender: Send + Sync + 'static {
    /// The topic's partition count, if it exists.
    fn partitions(&self, topic: &str) -> Option<u32>;
    fn append_records<'a>(&'a self, topic: &'a str, records: Vec<NewRecord>) -> Appending<'a>;
}

impl<L: Log> Appender for L {
    fn partitions(&self, topic: &str) -> Option<u32> {
        let n = self.end_offsets(topic).len() as u32;
        (n > 0).then_some(n)
    }

    fn append_records<'a>(&'a self, topic: &'a str, records: Vec<NewRecord>) -> Appending<'a> {
        Box::pin(self.append(topic, records))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSinkConfig {
    pub target: StreamRef,
}

impl StreamSinkConfig {
    /// `team` is the sink's own team, the default of a bare stream name.
    pub fn new(settings: &StreamSettings, team: &str) -> Result<StreamSinkConfig, ConfigError> {
        let target = settings.target(team).map_err(|m| ConfigError::new("settings.stream", m))?;
        Ok(StreamSinkConfig { target })
    }
}

pub struct StreamSink {
    topic: String,
    stream: String,
    log: Arc<dyn Appender>,
}

impl StreamSink {
    /// `topic` is the target stream's topic as the goal state resolves it (a re-created stream
    /// has a topic of its own); without it, the name's first one.
    pub fn new(config: StreamSinkConfig, topic: Option<&str>, log: Arc<dyn Appender>) -> StreamSink {
        let StreamRef { team, stream } = config.target;
        let topic = topic.map_or_else(|| stream_topic(&team, &stream, 0), str::to_owned);
        StreamSink { topic, stream: format!("{team}/{stream}"), log }
    }
}

impl Sink for StreamSink {
    async fn deliver(&self, batch: &[SinkEvent]) -> Result<(), SinkError> {
        let Some(partitions) = self.log.partitions(&self.topic) else {
            let why = format!("stream {} has no topic yet", self.stream);
            return Err(SinkError::transient(SinkErrorKind::Unavailable, why));
        };
        let now = crate::now_ms();
        let no_headers = BTreeMap::new();
        let records = batch
            .iter()
            .map(|e| {
                let routing = e.key.as_deref().unwrap_or(&e.id);
                let envelope = SentEnvelope {
                    id: &e.id,
                    stream: &self.stream,
                    ingested_at: now,
                    key: e.key.as_deref(),
                    headers: &no_headers,
                    payload: &e.event,
                };
                NewRecord {
                    partition: partition_for_key(routing.as_bytes(), partitions),
                    timestamp_ms: now,
                    key: e.key.clone().map(String::into_bytes),
                    value: serde_json::to_vec(&envelope).expect("an envelope serialises"),
                }
            })
            .collect();
        self.log.append_records(&self.topic, records).await.map(|_| ()).map_err(|e| {
            SinkError::transient(SinkErrorKind::Unavailable, format!("appending to stream {} failed: {e}", self.stream))
        })
    }
}
