//! Streams: one event type each, carried by one topic, with its partitions, retention, key,
//! schema and ingest quota.

use super::*;

pub const PARTITIONS_MAX: u32 = 256;
pub const RETENTION_HOURS_MAX: u32 = 24 * 365;
pub const RETENTION_BYTES_MIN: u64 = 1 << 20;

/// A stream: one event type, carried by one topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    #[serde(default)]
    pub description: String,
    /// Number of partitions of the stream's topic (1 to 256).
    #[cfg_attr(feature = "store", schema(minimum = 1, maximum = 256))]
    pub partitions: u32,
    /// How long events are kept, in hours (1 to 8760).
    #[cfg_attr(feature = "store", schema(minimum = 1, maximum = 8760))]
    pub retention_hours: u32,
    /// Optional cap on the size kept per partition, in bytes (at least 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "store", schema(minimum = 1048576))]
    pub retention_bytes: Option<u64>,
    /// Optional dotted path of the event field whose value keys the partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_field: Option<String>,
    /// Optional JSON Schema every event must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "store", schema(value_type = Option<Object>))]
    pub schema: Option<serde_json::Value>,
    /// Optional ingest quota: events per second (bursts of two seconds' worth); beyond it
    /// producers get 429 with Retry-After.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "store", schema(minimum = 1, maximum = 10_000_000))]
    pub max_events_per_second: Option<u32>,
    /// Labels an approval policy can match (e.g. `critical`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl StreamSpec {
    /// Structural checks; the JSON Schema itself is compiled by the store-side service.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = ValidationErrors::default();
        check_description(&mut e, &self.description);
        check_range(&mut e, "partitions", self.partitions, PARTITIONS_MAX);
        check_range(&mut e, "retention_hours", self.retention_hours, RETENTION_HOURS_MAX);
        if let Some(b) = self.retention_bytes {
            if b < RETENTION_BYTES_MIN {
                e.add("retention_bytes", format!("must be at least {RETENTION_BYTES_MIN} bytes (1 MiB) (got {b})"));
            }
        }
        if let Some(k) = &self.key_field {
            if let Err(msg) = check_field_path(k) {
                e.add("key_field", msg);
            }
        }
        if let Some(s) = &self.schema {
            if !(s.is_object() || s.is_boolean()) {
                e.add("schema", "must be a JSON object (a JSON Schema)");
            }
        }
        if let Some(q) = self.max_events_per_second {
            check_range(&mut e, "max_events_per_second", q, QUOTA_MAX);
        }
        check_tags(&mut e, "tags", &self.tags);
        e.into_result(())
    }
}

/// The log topic carrying a stream's events.
pub fn stream_topic(team: &str, stream: &str, incarnation: i64) -> String {
    // The first incarnation keeps the name topics have always had.
    if incarnation == 0 {
        format!("{team}.{stream}")
    } else {
        format!("{team}.{stream}_{incarnation}")
    }
}
