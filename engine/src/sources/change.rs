//! Change events: what a captured row change looks like in a stream (pure, no I/O).
//!
//! Every change of a captured table becomes one event, keyed by the row's primary key so a key's
//! changes stay in order in one partition:
//!
//! ```json
//! {"op": "u", "table": "public.orders", "key": {"id": 7},
//!  "before": null, "after": {"id": 7, "total": "12.50", "note": "gift"},
//!  "lsn": 23991720, "seq": 2, "txid": 771, "ts_ms": 1796670688123}
//! ```
//!
//! `op` is `c` (insert), `u` (update), `d` (delete), `r` (a row read by the initial snapshot) or
//! `t` (the table was truncated: an event with an empty key in every partition).
//! `lsn` is the commit's position in the source's WAL (the snapshot's consistent point for `r`),
//! `seq` the event's ordinal within its transaction: together they order a key's changes and
//! make a repeat recognisable. A column PostgreSQL left out because its TOASTed value did not
//! change is absent from `after` (never null), so an applier keeps the value it has.

use crate::envelope::EnvelopeFrame;
use crate::ingest::partition_for_key;
use crate::log::NewRecord;
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
    /// Read by the initial snapshot.
    Read,
    /// The table was emptied (`TRUNCATE`): one such event in every partition of the stream.
    Truncate,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Insert => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }
}

/// One row change, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub op: Op,
    /// `schema.table`.
    pub table: String,
    /// The primary key's columns and values.
    pub key: Map<String, Value>,
    pub before: Option<Map<String, Value>>,
    pub after: Option<Map<String, Value>>,
    /// The commit's WAL position (the snapshot's consistent point for a snapshot read).
    pub lsn: u64,
    /// The event's ordinal within its transaction (within the snapshot, for reads).
    pub seq: u64,
    pub txid: Option<u32>,
    /// Commit time (snapshot time for reads), ms since the epoch.
    pub ts_ms: i64,
}

impl Change {
    /// The event's payload.
    pub fn payload(&self) -> Value {
        serde_json::to_value(self.wire()).expect("a change serialises")
    }

    /// The payload as it is written, borrowing the row images (no copy per change).
    fn wire(&self) -> Wire<'_> {
        Wire {
            op: self.op.code(),
            table: &self.table,
            key: &self.key,
            before: self.before.as_ref(),
            after: self.after.as_ref(),
            lsn: self.lsn,
            seq: self.seq,
            txid: self.txid,
            ts_ms: self.ts_ms,
        }
    }

    /// The partition key: the primary key's value (one column), or its values as a JSON array.
    pub fn partition_key(&self) -> String {
        key_text(&self.key)
    }

    /// A deterministic event id: a UUID laid out as v7 (the commit time in its first 48 bits,
    /// so ids stay time-ordered) whose other bits hash the source, the position and the key.
    /// A change delivered twice (after a restart) gets the same id both times, so sinks that
    /// keep an id once keep it once.
    pub fn event_id(&self, source: &str) -> String {
        self.event_id_in(source, None)
    }

    /// The id of the copy of a change written to `partition` (a truncate is in every one).
    fn event_id_in(&self, source: &str, partition: Option<u32>) -> String {
        let mut h = Sha256::new();
        if let Some(p) = partition {
            h.update(p.to_be_bytes());
        }
        for part in [source.as_bytes(), self.table.as_bytes(), self.op.code().as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.update(self.lsn.to_be_bytes());
        h.update(self.seq.to_be_bytes());
        h.update(serde_json::to_string(&self.key).expect("a key serialises").as_bytes());
        let digest = h.finalize();
        let mut bytes = [0u8; 16];
        let ms = (self.ts_ms.max(0) as u64) & 0xFFFF_FFFF_FFFF;
        bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        bytes[6..].copy_from_slice(&digest[..10]);
        bytes[6] = (bytes[6] & 0x0F) | 0x70;
        bytes[8] = (bytes[8] & 0x3F) | 0x80;
        uuid::Uuid::from_bytes(bytes).hyphenated().to_string()
    }

    /// The record for a stream of `partitions` partitions, its envelope written by `frame`.
    pub(crate) fn record(&self, source: &str, frame: &EnvelopeFrame, partitions: u32, now_ms: i64) -> NewRecord {
        let key = self.partition_key();
        let payload = serde_json::value::to_raw_value(&self.wire()).expect("a change serialises");
        let value = frame.envelope(&self.event_id(source), Some(&key), &payload);
        let partition = partition_for_key(key.as_bytes(), partitions.max(1));
        NewRecord { partition, timestamp_ms: now_ms, key: Some(key.into_bytes()), value }
    }
}

impl Change {
    /// A truncate's records: one per partition, each after that partition's earlier changes,
    /// so an applier reading the partitions at different speeds still converges (it removes the
    /// rows older than the truncate whenever it meets one; see `sinks::postgres_apply`).
    pub(crate) fn truncate_records(
        &self,
        source: &str,
        frame: &EnvelopeFrame,
        partitions: u32,
        now_ms: i64,
    ) -> Vec<NewRecord> {
        let payload = serde_json::value::to_raw_value(&self.wire()).expect("a change serialises");
        (0..partitions.max(1))
            .map(|partition| {
                let value = frame.envelope(&self.event_id_in(source, Some(partition)), None, &payload);
                NewRecord { partition, timestamp_ms: now_ms, key: None, value }
            })
            .collect()
    }
}

/// A primary key as one text: its value (one column), or its values as a JSON array. The
/// partition key of a change, and the document id an index keeps a row under.
pub fn key_text(key: &Map<String, Value>) -> String {
    let mut values = key.values();
    match (values.next(), values.next()) {
        (Some(Value::String(s)), None) => s.clone(),
        (Some(v), None) => v.to_string(),
        _ => Value::Array(key.values().cloned().collect()).to_string(),
    }
}

/// A change's payload as written (see the module's example).
#[derive(serde::Serialize)]
struct Wire<'a> {
    op: &'static str,
    table: &'a str,
    key: &'a Map<String, Value>,
    before: Option<&'a Map<String, Value>>,
    after: Option<&'a Map<String, Value>>,
    lsn: u64,
    seq: u64,
    txid: Option<u32>,
    ts_ms: i64,
}

/// PostgreSQL type OIDs the typing below knows (`pg_type.oid`).
mod oid {
    pub const BOOL: u32 = 16;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const JSONB: u32 = 3802;
}

/// A column's value from PostgreSQL's text output, as JSON: integers and floats as numbers,
/// booleans, JSON as JSON, timestamps as RFC 3339 (a timestamp without time zone is read as
/// UTC), everything else (numeric too, whose precision a JSON number would lose) as the text.
pub fn typed_value(type_oid: u32, text: &str) -> Value {
    let as_text = || Value::String(text.to_owned());
    match type_oid {
        oid::BOOL => Value::Bool(text == "t"),
        oid::INT2 | oid::INT4 | oid::INT8 => text.parse::<i64>().map_or_else(|_| as_text(), Value::from),
        oid::OID => text.parse::<u64>().map_or_else(|_| as_text(), Value::from),
        oid::FLOAT4 | oid::FLOAT8 => {
            text.parse::<f64>().ok().and_then(Number::from_f64).map_or_else(as_text, Value::Number)
        }
        oid::JSON | oid::JSONB => serde_json::from_str(text).unwrap_or_else(|_| as_text()),
        oid::TIMESTAMPTZ => Value::String(rfc3339(text, false)),
        oid::TIMESTAMP => Value::String(rfc3339(text, true)),
        _ => as_text(),
    }
}

/// `2026-12-07 19:51:28.5+01` -> `2026-12-07T19:51:28.5+01:00`; without a zone, `Z` is added.
/// Values PostgreSQL writes differently (`infinity`, BC dates) are kept as they are.
fn rfc3339(text: &str, add_utc: bool) -> String {
    let b = text.as_bytes();
    if b.len() < 19 || b[10] != b' ' || !b[..4].iter().all(u8::is_ascii_digit) || text.ends_with(" BC") {
        return text.to_owned();
    }
    let mut out = format!("{}T{}", &text[..10], &text[11..]);
    if add_utc {
        out.push('Z');
        return out;
    }
    // The zone is the last `+`/`-` after the time: `+01`, `+05:30` or `-03:00:00`.
    if let Some(at) = out[19..].rfind(['+', '-']).map(|i| i + 19) {
        let zone = &out[at + 1..];
        let fixed = match zone.len() {
            2 => format!("{zone}:00"),
            8 => zone[..5].to_owned(),
            _ => zone.to_owned(),
        };
        out.replace_range(at + 1.., &fixed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(op: Op, seq: u64) -> Change {
        Change {
            op,
            table: "public.orders".into(),
            key: json!({"id": 7}).as_object().unwrap().clone(),
            before: None,
            after: Some(json!({"id": 7, "note": "gift"}).as_object().unwrap().clone()),
            lsn: 23_991_720,
            seq,
            txid: Some(771),
            ts_ms: 1_796_670_688_123,
        }
    }

    #[test]
    fn values_are_typed_by_column_type() {
        assert_eq!(typed_value(oid::INT8, "-9007199254740993"), json!(-9_007_199_254_740_993i64));
        assert_eq!(typed_value(oid::BOOL, "f"), json!(false));
        assert_eq!(typed_value(oid::FLOAT8, "1.5"), json!(1.5));
        assert_eq!(typed_value(oid::FLOAT8, "NaN"), json!("NaN"));
        assert_eq!(typed_value(1700, "12345678901234567890.01"), json!("12345678901234567890.01"));
        assert_eq!(typed_value(oid::JSONB, r#"{"a": [1]}"#), json!({"a": [1]}));
        assert_eq!(typed_value(oid::TIMESTAMPTZ, "2026-12-07 19:51:28.5+01"), json!("2026-12-07T19:51:28.5+01:00"));
        assert_eq!(typed_value(oid::TIMESTAMPTZ, "2026-12-07 19:51:28-03:30"), json!("2026-12-07T19:51:28-03:30"));
        assert_eq!(typed_value(oid::TIMESTAMP, "2026-12-07 19:51:28"), json!("2026-12-07T19:51:28Z"));
        assert_eq!(typed_value(oid::TIMESTAMPTZ, "infinity"), json!("infinity"));
        assert_eq!(typed_value(25, "plain"), json!("plain"));
    }

    #[test]
    fn a_repeated_change_gets_the_same_id_and_another_change_another() {
        let a = change(Op::Update, 2);
        assert_eq!(a.event_id("s1"), change(Op::Update, 2).event_id("s1"));
        assert_ne!(a.event_id("s1"), change(Op::Update, 3).event_id("s1"));
        assert_ne!(a.event_id("s1"), a.event_id("s2"));
        let id = uuid::Uuid::parse_str(&a.event_id("s1")).unwrap();
        assert_eq!(id.get_version_num(), 7);
        // Time-ordered like ingested events' ids: the commit time leads.
        let later = Change { ts_ms: a.ts_ms + 1, ..a.clone() };
        assert!(later.event_id("s1") > a.event_id("s1"));
    }

    #[test]
    fn the_payload_carries_op_key_images_and_position() {
        let p = change(Op::Insert, 1).payload();
        assert_eq!(p["op"], "c");
        assert_eq!(p["key"], json!({"id": 7}));
        assert_eq!(p["before"], Value::Null);
        assert_eq!((p["lsn"].as_u64(), p["seq"].as_u64(), p["txid"].as_u64()), (Some(23_991_720), Some(1), Some(771)));
        assert_eq!(change(Op::Read, 0).partition_key(), "7");
        let two = Change { key: json!({"a": 1, "b": "x"}).as_object().unwrap().clone(), ..change(Op::Delete, 0) };
        assert_eq!(two.partition_key(), r#"[1,"x"]"#);
    }

    #[test]
    fn a_truncate_is_in_every_partition_each_with_its_own_id() {
        let t = Change { op: Op::Truncate, key: Map::new(), after: None, ..change(Op::Insert, 4) };
        let frame = EnvelopeFrame::new("alpha/orders", 1, &std::collections::BTreeMap::new());
        let records = t.truncate_records("s1", &frame, 3, 1);
        assert_eq!(records.iter().map(|r| r.partition).collect::<Vec<_>>(), vec![0, 1, 2]);
        let ids: std::collections::BTreeSet<String> = records
            .iter()
            .map(|r| {
                let v: Value = serde_json::from_slice(&r.value).unwrap();
                assert_eq!(v["payload"]["op"], "t", "{v}");
                v["id"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(ids.len(), 3);
        assert_eq!(t.truncate_records("s1", &frame, 3, 1)[1].value, records[1].value, "a repeat is the same event");
    }
}
