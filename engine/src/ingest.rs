//! The ingest proxy's pure part: parse a request body into events, check each, wrap each in its
//! envelope and choose its partition. A batch is all-or-nothing: one bad event rejects the batch,
//! and the rejection lists every bad event by index with the reason.

use crate::envelope::EnvelopeFrame;
use crate::log::NewRecord;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};

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
    /// Largest accepted event, as sent, in bytes.
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

/// Splits a body into events, each checked to be valid JSON but kept as sent (no tree is built:
/// most streams need none, and building one per event was most of ingest's cost). An event that
/// is not valid JSON is an `Err` with the reason; a JSON body that does not parse at all is an
/// error for the whole request.
pub fn parse_body(format: BodyFormat, body: &[u8]) -> Result<Vec<Result<&RawValue, String>>, String> {
    match format {
        BodyFormat::Json => {
            let malformed = |e: serde_json::Error| {
                format!(
                    "malformed JSON: {e} (send one object, an array, or NDJSON with Content-Type: application/x-ndjson)"
                )
            };
            let whole: &RawValue = serde_json::from_slice(body).map_err(malformed)?;
            if whole.get().starts_with('[') {
                let items: Vec<&RawValue> = serde_json::from_str(whole.get()).map_err(malformed)?;
                Ok(items.into_iter().map(Ok).collect())
            } else {
                Ok(vec![Ok(whole)])
            }
        }
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

/// Checks every event and builds the records to append, or lists every rejected event. A tree of
/// the event is built only when something must look inside it: the stream's JSON Schema or its
/// key field.
pub fn prepare(
    target: &IngestTarget,
    events: Vec<Result<&RawValue, String>>,
    header_key: Option<&str>,
    headers: &BTreeMap<String, String>,
    now_ms: i64,
    limits: IngestLimits,
) -> Result<Vec<NewRecord>, Vec<Rejection>> {
    let mut rejected = Vec::new();
    let mut records = Vec::with_capacity(events.len());
    let key_field = if header_key.is_some() { None } else { target.key_field.as_deref() };
    let mut id = uuid::Uuid::encode_buffer();
    let frame = EnvelopeFrame::new(&target.stream, now_ms, headers);
    for (index, event) in events.into_iter().enumerate() {
        let reject = |kind: &'static str, reason: String| Rejection { index, kind, reason };
        let raw = match event {
            Ok(raw) => raw,
            Err(reason) => {
                rejected.push(reject("malformed", reason));
                continue;
            }
        };
        let text = raw.get();
        if !text.starts_with('{') {
            rejected.push(reject("not_object", format!("an event must be a JSON object, not {}", kind_of(text))));
            continue;
        }
        if text.len() > limits.max_event_bytes {
            let reason = format!("event is {} bytes; the limit is {}", text.len(), limits.max_event_bytes);
            rejected.push(reject("too_large", reason));
            continue;
        }
        let tree = if target.schema.is_some() || key_field.is_some() {
            match serde_json::from_str::<Value>(text) {
                Ok(tree) => Some(tree),
                // Valid JSON that serde cannot hold, e.g. a number beyond f64's range.
                Err(e) => {
                    rejected.push(reject("malformed", format!("unsupported JSON: {e}")));
                    continue;
                }
            }
        } else {
            None
        };
        if let (Some(schema), Some(event)) = (&target.schema, &tree) {
            let errors: Vec<String> = schema
                .iter_errors(event)
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
        if !rejected.is_empty() {
            // The batch is refused anyway: only the remaining rejections matter.
            continue;
        }
        let field_key = key_field.zip(tree.as_ref()).and_then(|(f, event)| match lookup(event, f)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        });
        let key = header_key.or(field_key.as_deref());
        let partition = match key {
            Some(k) => partition_for_key(k.as_bytes(), target.partitions),
            None => target.round_robin.fetch_add(1, Ordering::Relaxed) % target.partitions,
        };
        let id = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut id);
        let value = frame.envelope(id, key, raw);
        records.push(NewRecord { partition, timestamp_ms: now_ms, key: key.map(|k| k.as_bytes().to_vec()), value });
    }
    if rejected.is_empty() {
        Ok(records)
    } else {
        Err(rejected)
    }
}

/// What a JSON text that is not an object is, from its first character.
fn kind_of(text: &str) -> &'static str {
    match text.as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        _ => "a number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, SentEnvelope};
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

    /// Parses an NDJSON body and prepares it, as the proxy does.
    fn ingest(
        t: &IngestTarget,
        lines: &[&str],
        header_key: Option<&str>,
        headers: &BTreeMap<String, String>,
    ) -> Result<Vec<NewRecord>, Vec<Rejection>> {
        let body = lines.join("\n");
        prepare(t, parse_body(BodyFormat::NdJson, body.as_bytes()).unwrap(), header_key, headers, 1_700, LIMITS)
    }

    #[test]
    fn every_bad_event_is_listed_and_nothing_is_kept() {
        let schema = json!({"type": "object", "required": ["user"], "properties": {"bitrate": {"type": "integer"}}});
        let t = target(Some(schema), None);
        let long = format!(r#"{{"user": "{}"}}"#, "x".repeat(300));
        let lines = [
            r#"{"user": "u1", "bitrate": 3000}"#,
            "[1, 2]",
            r#"{"bitrate": "fast"}"#,
            long.as_str(),
            "{oops",
            r#"{"user": "u2", "n": 1e400}"#,
            r#""just a string""#,
        ];
        let rejected = ingest(&t, &lines, None, &BTreeMap::new()).unwrap_err();
        let idx: Vec<usize> = rejected.iter().map(|r| r.index).collect();
        assert_eq!(idx, [1, 2, 3, 4, 5, 6]);
        assert!(rejected[0].reason.contains("must be a JSON object, not an array"));
        assert!(rejected[1].reason.contains("schema") && rejected[1].reason.contains("user"), "{}", rejected[1].reason);
        assert!(rejected[1].reason.contains("/bitrate"), "{}", rejected[1].reason);
        assert!(rejected[2].reason.contains("limit is 200"));
        assert!(rejected[3].reason.starts_with("line 5: malformed JSON"), "{}", rejected[3].reason);
        assert_eq!(rejected[4].kind, "malformed");
        assert!(rejected[4].reason.contains("number out of range"), "{}", rejected[4].reason);
        assert!(rejected[5].reason.contains("not a string"));
    }

    #[test]
    fn envelopes_carry_id_stream_time_key_and_payload_as_sent() {
        let t = target(None, Some("user.id"));
        let headers = BTreeMap::from([("source".to_owned(), "web".to_owned())]);
        let sent = r#"{"user": {"id": "u-42"}, "n": 1, "price": 1.50, "big": 123456789012345678901234567890}"#;
        let recs = ingest(&t, &[sent], None, &headers).unwrap();
        let env: Envelope = serde_json::from_slice(&recs[0].value).unwrap();
        assert_eq!(env.stream, "alpha/plays");
        assert_eq!(env.ingested_at, 1_700);
        assert_eq!(env.key.as_deref(), Some("u-42"));
        assert_eq!(env.headers["source"], "web");
        assert_eq!(env.payload["n"], 1);
        assert_eq!(uuid::Uuid::parse_str(&env.id).unwrap().get_version_num(), 7);
        assert_eq!(recs[0].key.as_deref(), Some(&b"u-42"[..]));
        assert_eq!(recs[0].partition, partition_for_key(b"u-42", 4));
        // Stored byte for byte: no number is rounded or reformatted on the way in.
        let stored = String::from_utf8(recs[0].value.clone()).unwrap();
        assert!(stored.contains(&format!(r#""payload":{sent}"#)), "{stored}");
        // A JSON array body: each item is an event; ids are unique and time-ordered.
        let array = br#" [ {"a": 1}, {"a": 2} ] "#;
        let recs = prepare(&t, parse_body(BodyFormat::Json, array).unwrap(), None, &headers, 1, LIMITS).unwrap();
        let ids: Vec<String> = recs.iter().map(|r| serde_json::from_slice::<Envelope>(&r.value).unwrap().id).collect();
        assert_eq!(recs.len(), 2);
        assert!(ids[0] < ids[1], "{ids:?}");
    }

    #[test]
    fn an_envelope_written_from_its_frame_is_the_serialised_envelope() {
        let headers =
            BTreeMap::from([("source".to_owned(), "web \"app\"".to_owned()), ("z".to_owned(), "1".to_owned())]);
        let payload: &RawValue = serde_json::from_str(r#"{"n": 1.50, "s": "\u00e9"}"#).unwrap();
        for (stream, key, headers) in [("alpha/plays", Some("user-\"7\"\n"), &headers), ("b/x", None, &BTreeMap::new())]
        {
            let frame = EnvelopeFrame::new(stream, 1_700_000_000_123, headers);
            let id = "0190a0b0-0000-7000-8000-000000000001";
            let sent = SentEnvelope { id, stream, ingested_at: 1_700_000_000_123, key, headers, payload };
            assert_eq!(
                String::from_utf8(frame.envelope(id, key, payload)).unwrap(),
                serde_json::to_string(&sent).unwrap()
            );
        }
    }

    #[test]
    fn same_key_same_partition_and_unkeyed_events_spread() {
        let t = target(None, None);
        let none = BTreeMap::new();
        let keyed: Vec<u32> =
            (0..5).map(|_| ingest(&t, &["{}"], Some("user-7"), &none).unwrap()[0].partition).collect();
        assert!(keyed.windows(2).all(|w| w[0] == w[1]));
        let spread: std::collections::HashSet<u32> =
            ingest(&t, &["{}"; 8], None, &none).unwrap().iter().map(|r| r.partition).collect();
        assert_eq!(spread.len(), 4);
        // murmur2 spreads keys over partitions.
        let parts: std::collections::HashSet<u32> =
            (0..100).map(|i| partition_for_key(format!("k{i}").as_bytes(), 8)).collect();
        assert_eq!(parts.len(), 8);
    }
}
