//! Route jobs as observed: phases, transitions, checkpoints, metrics, previews, operations,
//! account events and ingest counters.

use super::*;

pub use crate::phase::JobPhase;

/// One recorded phase change of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct JobTransition {
    pub at: i64,
    pub from: Option<JobPhase>,
    pub to: JobPhase,
    pub cause: String,
}

/// A partition's checkpoint: the next offset the job reads after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct CheckpointInfo {
    pub partition: u32,
    pub next_offset: u64,
    pub committed_at: i64,
}

/// What the database knows of one route's job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct JobRecord {
    pub route_id: String,
    pub team: String,
    pub route: String,
    /// The route version the job runs.
    pub version: i64,
    pub phase: JobPhase,
    pub last_error: Option<String>,
    pub restarts: i64,
    pub updated_at: i64,
}

/// A partition's position as a running job sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct PartitionLag {
    pub partition: u32,
    /// Next offset after everything the sink acknowledged.
    pub acked: u64,
    /// Next offset the log will write.
    pub end: u64,
}

/// Live numbers of a running job (counters since the server started it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct JobMetrics {
    /// Counted since this job instance started (flattened: the JSON keeps one level).
    #[serde(flatten)]
    pub counters: crate::telemetry::JobCounters,
    /// Events in the log not yet acknowledged by the sink.
    pub lag: u64,
    pub partitions: Vec<PartitionLag>,
    /// Most recent errors, oldest first.
    pub recent_errors: Vec<RecentError>,
}

/// One error a job met, with the event that caused it when there is one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct RecentError {
    /// ms since the epoch.
    pub at: i64,
    pub message: String,
    /// The event's payload as JSON, cut to [`RecentError::SAMPLE_BYTES`] (a filter that could
    /// not evaluate it); refused events are in the dead-letter queue whole instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<String>,
}

impl RecentError {
    pub const SAMPLE_BYTES: usize = 2048;
}

/// What a route would do with one recent event (the preview while editing a route).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct PreviewRow {
    pub partition: u32,
    pub offset: u64,
    pub ingested_at: i64,
    /// The event's payload as ingested.
    #[cfg_attr(feature = "store", schema(value_type = Object))]
    pub input: serde_json::Value,
    /// `delivered`, `filtered_out` or `error`.
    pub outcome: String,
    /// What the sink would receive (when delivered), as its JSON text: values keep their text as
    /// sent where the route copies fields (numbers their digits, nested objects their key order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "store", schema(value_type = Option<Object>))]
    pub output: Option<Box<serde_json::value::RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Something a person did to a running thing (see `operations`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct Operation {
    pub at: i64,
    pub actor: String,
    pub kind: Kind,
    pub team: String,
    pub name: String,
    /// `restart`, `retry dead letters`, `silence alerts`.
    pub action: String,
    pub detail: String,
}

/// A sign-in or a change to a user, a membership or a token, as admins read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct AccountEvent {
    pub at: i64,
    /// Who acted (a username; for a sign-in, the name typed).
    pub actor: String,
    /// Whom or what it concerns.
    pub subject: String,
    /// `signed in`, `sign-in failed`, `sign-in throttled`, `user created`, `user disabled`, ...
    pub action: String,
    pub detail: String,
}

/// What the ingest proxy of this process has counted for one stream since it started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct IngestStats {
    pub accepted: u64,
    pub bytes: u64,
    /// Events refused by validation (their requests stored nothing).
    pub rejected: u64,
    /// The same, by cause: `malformed`, `not_object`, `too_large`, `schema`.
    #[serde(default)]
    pub rejected_by_kind: std::collections::BTreeMap<String, u64>,
    /// Events refused for the stream's quota (429).
    pub throttled: u64,
    pub requests: u64,
    /// Accepted events per second over the last minute.
    pub events_per_second: f64,
    /// Distinct producer tokens that had events accepted in the last five minutes.
    #[serde(default)]
    pub producers: u64,
}
