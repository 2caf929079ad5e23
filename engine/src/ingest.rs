//! The ingest proxy's pure part: parse a request body into events, check each, wrap each in its
//! envelope and choose its partition. A batch is all-or-nothing: one bad event rejects the batch,
//! and the rejection lists every bad event by index with the reason.

use crate::log::NewRecord;
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};

/// What every record of a stream's topic holds: the event's identity and the payload as sent.
/// Written by the ingest proxy and the stream sink, read by route jobs, the preview and the
/// dead-letter replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// UUID v7: unique and time-ordered; the idempotency key of sinks.
    pub id: String,
    /// `team/name`.
    #[serde(default)]
    pub stream: String,
    pub ingested_at: i64,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub payload: Value,
}

impl Envelope {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope serialises")
    }
}

/// Everything ingest needs to know about one stream (resolved by the caller from the goal state).
pub struct IngestTarget {
    /// The log topic of the stream.
    pub topic: String,
    /// `team/name`, recorded in each envelope.
    pub stream: String,
    pub partitions: u32,
    /// Dotted path of the field whose value keys the partition.
    pub key_field: Option<String>,
    /// Compiled once per stream revision, not per request.
    pub schema: Option<jsonschema::Validator>,
    /// Spreads unkeyed events over the partitions.
    pub round_robin: AtomicU32,
    /// The stream's ingest quota, if it declares one.
    pub quota: Option<crate::quota::Quota>,
}

#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    /// Largest accepted event, serialised, in bytes.
    pub max_event_bytes: usize,
}

/// One refused event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// Position in the batch (0-based; for NDJSON, line number minus one).
    pub index: usize,
    /// `malformed`, `not_object`, `too_large` or `schema`: for counting rejects by cause.
    pub kind: &'static str,
    pub reason: String,
}

/// The body formats the proxy accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One JSON object, or a JSON array of objects.
    Json,
    /// One JSON object per line.
    NdJson,
}

impl BodyFormat {
    pub fn from_content_type(ct: Option<&str>) -> BodyFormat {
        match ct {
            Some(ct) if ct.contains("ndjson") || ct.contains("jsonl") || ct.contains("json-seq") => BodyFormat::NdJson,
            _ => BodyFormat::Json,
        }
    }
}

/// Splits a body into events; an event that is not valid JSON is an `Err` with the reason. A JSON
/// body that does not parse at all is an error for the whole request.
pub fn parse_body(format: BodyFormat, body: &[u8]) -> Result<Vec<Result<Value, String>>, String> {
    match format {
        BodyFormat::Json => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(items)) => Ok(items.into_iter().map(Ok).collect()),
            Ok(one) => Ok(vec![Ok(one)]),
            Err(e) => Err(format!(
                "malformed JSON: {e} (send one object, an array, or NDJSON with Content-Type: application/x-ndjson)"
            )),
        },
        BodyFormat::NdJson => Ok(body
            .split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
            .map(|(i, line)| serde_json::from_slice(line).map_err(|e| format!("line {}: malformed JSON: {e}", i + 1)))
            .collect()),
    }
}

/// Kafka's default partitioner hash (murmur2), so a key lands in the same partition on the
/// embedded log and on a Kafka cluster.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// The partition of a key, as Kafka's default partitioner picks it.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

fn lookup<'a>(event: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(event, |v, seg| v.get(seg))
}

/// Checks every event and builds the records to append, or lists every rejected event.
pub fn prepare(
    target: &IngestTarget,
    events: Vec<Result<Value, String>>,
    header_key: Option<&str>,
    headers: &BTreeMap<String, String>,
    now_ms: i64,
    limits: IngestLimits,
) -> Result<Vec<NewRecord>, Vec<Rejection>> {
    let mut rejected = Vec::new();
    let mut records = Vec::with_capacity(events.len());
    for (index, event) in events.into_iter().enumerate() {
        let reject = |kind: &'static str, reason: String| Rejection { index, kind, reason };
        let event = match event {
            Ok(Value::Object(map)) => Value::Object(map),
            Ok(other) => {
                rejected.push(reject("not_object", format!("an event must be a JSON object, not {}", kind_of(&other))));
                continue;
            }
            Err(reason) => {
                rejected.push(reject("malformed", reason));
                continue;
            }
        };
        let size = serde_json::to_vec(&event).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > limits.max_event_bytes {
            rejected
                .push(reject("too_large", format!("event is {size} bytes; the limit is {}", limits.max_event_bytes)));
            continue;
        }
        if let Some(schema) = &target.schema {
            let errors: Vec<String> = schema
                .iter_errors(&event)
                .take(5)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    if at.is_empty() {
                        e.to_string()
                    } else {
                        format!("at {at}: {e}")
                    }
                })
                .collect();
            if !errors.is_empty() {
                rejected.push(reject("schema", format!("does not match the stream's schema: {}", errors.join("; "))));
                continue;
            }
        }
        let key: Option<String> = match header_key {
            Some(k) => Some(k.to_owned()),
            None => target.key_field.as_deref().and_then(|f| lookup(&event, f)).and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            }),
        };
        let partition = match &key {
            Some(k) => partition_for_key(k.as_bytes(), target.partitions),
            None => target.round_robin.fetch_add(1, Ordering::Relaxed) % target.partitions,
        };
        let envelope = Envelope {
            id: uuid::Uuid::now_v7().to_string(),
            stream: target.stream.clone(),
            ingested_at: now_ms,
            key,
            headers: headers.clone(),
            payload: event,
        };
        records.push(NewRecord {
            partition,
            timestamp_ms: now_ms,
            key: envelope.key.clone().map(String::into_bytes),
            value: envelope.to_bytes(),
        });
    }
    if rejected.is_empty() {
        Ok(records)
    } else {
        Err(rejected)
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(schema: Option<Value>, key_field: Option<&str>) -> IngestTarget {
        IngestTarget {
            topic: "alpha.plays".into(),
            stream: "alpha/plays".into(),
            partitions: 4,
            key_field: key_field.map(str::to_owned),
            schema: schema.map(|s| jsonschema::validator_for(&s).unwrap()),
            round_robin: AtomicU32::new(0),
            quota: None,
        }
    }
    const LIMITS: IngestLimits = IngestLimits { max_event_bytes: 200 };

    #[test]
    fn bodies_parse_as_object_array_or_ndjson() {
        assert_eq!(parse_body(BodyFormat::Json, br#"{"a":1}"#).unwrap().len(), 1);
        assert_eq!(parse_body(BodyFormat::Json, br#"[{"a":1},{"a":2}]"#).unwrap().len(), 2);
        assert!(parse_body(BodyFormat::Json, b"{\"a\":").unwrap_err().contains("malformed JSON"));
        let nd = parse_body(BodyFormat::NdJson, b"{\"a\":1}\n\n{oops\n{\"a\":3}\n").unwrap();
        assert_eq!(nd.len(), 3);
        assert!(nd[1].as_ref().unwrap_err().starts_with("line 3:"));
        assert_eq!(BodyFormat::from_content_type(Some("application/x-ndjson")), BodyFormat::NdJson);
        assert_eq!(BodyFormat::from_content_type(Some("application/json")), BodyFormat::Json);
    }

    #[test]
    fn every_bad_event_is_listed_and_nothing_is_kept() {
        let schema = json!({"type": "object", "required": ["user"], "properties": {"bitrate": {"type": "integer"}}});
        let t = target(Some(schema), None);
        let events = vec![
            Ok(json!({"user": "u1", "bitrate": 3000})),
            Ok(json!([1, 2])),
            Ok(json!({"bitrate": "fast"})),
            Ok(json!({"user": "x".repeat(300)})),
            Err("line 5: malformed JSON".into()),
        ];
        let rejected = prepare(&t, events, None, &BTreeMap::new(), 1, LIMITS).unwrap_err();
        let idx: Vec<usize> = rejected.iter().map(|r| r.index).collect();
        assert_eq!(idx, [1, 2, 3, 4]);
        assert!(rejected[0].reason.contains("must be a JSON object, not an array"));
        assert!(rejected[1].reason.contains("schema") && rejected[1].reason.contains("user"), "{}", rejected[1].reason);
        assert!(rejected[1].reason.contains("/bitrate"), "{}", rejected[1].reason);
        assert!(rejected[2].reason.contains("limit is 200"));
    }

    #[test]
    fn envelopes_carry_id_stream_time_key_and_payload() {
        let t = target(None, Some("user.id"));
        let headers = BTreeMap::from([("source".to_owned(), "web".to_owned())]);
        let recs =
            prepare(&t, vec![Ok(json!({"user": {"id": "u-42"}, "n": 1}))], None, &headers, 1_700, LIMITS).unwrap();
        let env: Value = serde_json::from_slice(&recs[0].value).unwrap();
        assert_eq!(env["stream"], "alpha/plays");
        assert_eq!(env["ingested_at"], 1_700);
        assert_eq!(env["key"], "u-42");
        assert_eq!(env["headers"]["source"], "web");
        assert_eq!(env["payload"]["n"], 1);
        assert_eq!(uuid::Uuid::parse_str(env["id"].as_str().unwrap()).unwrap().get_version_num(), 7);
        assert_eq!(recs[0].key.as_deref(), Some(&b"u-42"[..]));
        assert_eq!(recs[0].partition, partition_for_key(b"u-42", 4));
    }

    #[test]
    fn same_key_same_partition_and_unkeyed_events_spread() {
        let t = target(None, None);
        let keyed: Vec<u32> = (0..5)
            .map(|_| {
                prepare(&t, vec![Ok(json!({}))], Some("user-7"), &BTreeMap::new(), 0, LIMITS).unwrap()[0].partition
            })
            .collect();
        assert!(keyed.windows(2).all(|w| w[0] == w[1]));
        let spread: std::collections::HashSet<u32> =
            prepare(&t, (0..8).map(|_| Ok(json!({}))).collect(), None, &BTreeMap::new(), 0, LIMITS)
                .unwrap()
                .iter()
                .map(|r| r.partition)
                .collect();
        assert_eq!(spread.len(), 4);
        // murmur2 spreads keys over partitions.
        let parts: std::collections::HashSet<u32> =
            (0..100).map(|i| partition_for_key(format!("k{i}").as_bytes(), 8)).collect();
        assert_eq!(parts.len(), 8);
    }
}
