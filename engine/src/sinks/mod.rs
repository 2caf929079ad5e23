//! Managed sinks: where a route job delivers. One file per sink kind, each with its own config
//! type built from the declared [`SinkSpec`]; all behind the small [`Sink`] trait and checked by
//! the same compliance test (`tests/sinks.rs`).
//!
//! The contract a job relies on for at-least-once delivery: when `deliver` returns `Ok`, every
//! event of the batch is durably accepted; on `Err(Transient)` the job retries the whole batch
//! (so a sink must tolerate seeing events again, and idempotent sinks key writes by event id);
//! on `Err(Rejected)` the listed events were refused for good (they go to the dead-letter queue)
//! and all others were accepted.

mod bulk_changes;
pub mod file;
pub mod file_layout;
pub mod http;
pub mod kafka;
pub mod parquet;
pub mod postgres;
mod postgres_apply;
pub mod stream;

use keystone_control::egress::EgressPolicy;
use keystone_control::{SinkErrorKind, SinkSettings, SinkSpec, ValidationErrors};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use file::{FileSink, FileSinkConfig};
pub use http::{HttpSink, HttpSinkConfig};
pub use kafka::{KafkaSink, KafkaSinkConfig};
pub use postgres::{PostgresSink, PostgresSinkConfig};
pub use stream::{Appender, StreamSink, StreamSinkConfig};

/// One event as a sink receives it: the envelope's identity and the projected payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinkEvent {
    /// The envelope id (UUID v7): the idempotency key of sinks that support it.
    pub id: String,
    pub ingested_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip, default)]
    pub partition: u32,
    #[serde(skip, default)]
    pub offset: u64,
    /// The payload after the route's projection, as JSON text: most sinks only write it out,
    /// so a route whose projection keeps fields copies their text from the log record instead
    /// of building a tree per event and serialising it again (see `job::Transforms`).
    pub event: Box<RawValue>,
}

impl SinkEvent {
    /// The projected payload as a tree, for a sink that looks inside it.
    pub fn event_value(&self) -> serde_json::Result<Value> {
        serde_json::from_str(self.event.get())
    }
}

impl PartialEq for SinkEvent {
    fn eq(&self, other: &SinkEvent) -> bool {
        (&self.id, self.ingested_at, &self.key, self.partition, self.offset, self.event.get())
            == (&other.id, other.ingested_at, &other.key, other.partition, other.offset, other.event.get())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Nothing may be assumed delivered; retry later (network, 5xx, 429, sink down). The kind is
    /// what the job counts.
    #[error("{message}")]
    Transient { kind: SinkErrorKind, message: String },
    /// These events (by index in the batch) were refused for good, with the sink's reason;
    /// every other event of the batch was accepted.
    #[error("the sink refused {} event(s): {}", .0.len(), .0.first().map(|(_, r)| r.as_str()).unwrap_or(""))]
    Rejected(Vec<(usize, String)>),
}

impl SinkError {
    pub fn transient(kind: SinkErrorKind, message: impl Into<String>) -> SinkError {
        SinkError::Transient { kind, message: message.into() }
    }

    /// The outcome of a batch with these events refused for good (by index): `Ok` when none.
    pub fn refusing(refused: Vec<(usize, String)>) -> Result<(), SinkError> {
        if refused.is_empty() {
            Ok(())
        } else {
            Err(SinkError::Rejected(refused))
        }
    }

    pub fn kind(&self) -> SinkErrorKind {
        match self {
            SinkError::Transient { kind, .. } => *kind,
            SinkError::Rejected(_) => SinkErrorKind::Refused,
        }
    }
}

/// A destination of route jobs.
pub trait Sink: Send + Sync + 'static {
    fn deliver(&self, batch: &[SinkEvent]) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Batch bounds of the sink's own, replacing the route's batch size and max latency: a file
    /// sink rolling files by size and age.
    fn rolling(&self) -> Option<Rolling> {
        None
    }
}

/// A batch gathers until its events' bytes reach `max_bytes` or its first event has waited
/// `max_age`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rolling {
    pub max_bytes: usize,
    pub max_age: Duration,
}

/// A sink could not be built from its declaration (bad setting, missing secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sink setting {field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError { field: field.into(), message: message.into() }
    }
}

/// A declaration the typed settings refuse: its first problem (the declaration was validated
/// whole when it was made; this is a stored one the rules grew stricter for).
impl From<ValidationErrors> for ConfigError {
    fn from(e: ValidationErrors) -> ConfigError {
        match e.0.into_iter().next() {
            Some(f) => ConfigError::new(f.field, f.message),
            None => ConfigError::new("settings", "is invalid"),
        }
    }
}

/// Reads a required secret.
fn required_secret<'a>(secrets: &'a BTreeMap<String, String>, key: &str) -> Result<&'a str, ConfigError> {
    secrets
        .get(key)
        .map(String::as_str)
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| ConfigError::new(format!("secrets.{key}"), "is required"))
}

/// Any declared sink, dispatched without boxing.
pub enum AnySink {
    File(FileSink),
    Http(HttpSink),
    Postgres(PostgresSink),
    Stream(StreamSink),
    Kafka(KafkaSink),
}

impl AnySink {
    /// Builds the sink a declaration describes, for a sink of team `team`. `secrets` are the
    /// sink's current secret values; `data_dir` roots file sinks; stream sinks append to `log`.
    pub fn build(
        spec: &SinkSpec,
        team: &str,
        secrets: &BTreeMap<String, String>,
        data_dir: &Path,
        log: &Arc<dyn Appender>,
        egress: &Arc<EgressPolicy>,
        target_topic: Option<&str>,
    ) -> Result<AnySink, ConfigError> {
        Ok(match spec.typed()? {
            SinkSettings::File(s) => {
                AnySink::File(FileSink::new(FileSinkConfig::new(&s, secrets, data_dir, team), egress)?)
            }
            SinkSettings::Http(s) => AnySink::Http(HttpSink::new(HttpSinkConfig::new(&s, secrets), egress)?),
            SinkSettings::Postgres(s) => {
                AnySink::Postgres(PostgresSink::new(PostgresSinkConfig::new(&s, secrets)?, egress)?)
            }
            SinkSettings::Stream(s) => {
                AnySink::Stream(StreamSink::new(StreamSinkConfig::new(&s, team)?, target_topic, log.clone()))
            }
            SinkSettings::Kafka(s) => AnySink::Kafka(KafkaSink::new(KafkaSinkConfig::new(&s, secrets), egress)?),
        })
    }
}

impl Sink for AnySink {
    async fn deliver(&self, batch: &[SinkEvent]) -> Result<(), SinkError> {
        match self {
            AnySink::File(s) => s.deliver(batch).await,
            AnySink::Http(s) => s.deliver(batch).await,
            AnySink::Postgres(s) => s.deliver(batch).await,
            AnySink::Stream(s) => s.deliver(batch).await,
            AnySink::Kafka(s) => s.deliver(batch).await,
        }
    }

    fn rolling(&self) -> Option<Rolling> {
        match self {
            AnySink::File(s) => s.rolling(),
            _ => None,
        }
    }
}
