//! The HTTP sink's `bulk_changes` format: change events (see `sources::change`) applied to an
//! Elasticsearch/OpenSearch index through `_bulk`, one document per primary key, so the index
//! holds the source table's rows.
//!
//! An insert, update or snapshot read indexes the row under `_id` = the primary key (its value,
//! or its values as a JSON array); a delete deletes it. Both carry the change's position as an
//! external version (`version_type=external_gte`), so the index refuses a change older than
//! what it holds (409, counted as applied): repeats after a restart and partitions read at
//! different speeds never move a document back. The position is also kept in the document as
//! `keystone_lsn` (and its ordinal in its transaction as `keystone_seq`), which a truncate needs:
//! it deletes (`_delete_by_query`) the documents older than itself, met in each partition after
//! that partition's earlier changes.
//!
//! Not covered, and said in the docs: an update that left an unchanged TOASTed value out
//! indexes the row without it (give such tables `REPLICA IDENTITY FULL`: the capture then fills
//! it in); a delete's tombstone is kept by the index for `index.gc_deletes` (60 s by default),
//! after which a change older than the delete, replayed, would bring the row back.

use super::SinkEvent;
use crate::sources::change::key_text;
use serde_json::{json, Value};

/// The fields that keep the position of the change a document reflects, and its ordinal in its
/// transaction (which orders it against a truncate of the same transaction).
pub const LSN_FIELD: &str = "keystone_lsn";
pub const SEQ_FIELD: &str = "keystone_seq";

/// One request of a batch's application.
#[derive(Debug, PartialEq)]
pub(super) enum Step {
    /// `_bulk` actions; `events[i]` is the batch index of action `i`.
    Bulk { body: Vec<u8>, events: Vec<usize> },
    /// Delete the documents older than (`lsn`, `seq`) (the truncate at batch index `at`).
    Truncate { lsn: u64, seq: u64, at: usize },
}

/// The requests that apply `batch` to `index`, in order, and the events refused (not changes).
pub(super) fn plan(index: &str, batch: &[SinkEvent]) -> (Vec<Step>, Vec<(usize, String)>) {
    let mut steps = Vec::new();
    let mut refused = Vec::new();
    let mut body = Vec::new();
    let mut events = Vec::new();
    for (at, e) in batch.iter().enumerate() {
        let change = match e.event_value() {
            Ok(v) => v,
            Err(err) => {
                refused.push((at, format!("the event cannot be read: {err}")));
                continue;
            }
        };
        let op = change.get("op").and_then(Value::as_str);
        let key = change.get("key").and_then(Value::as_object);
        let lsn = change.get("lsn").and_then(Value::as_u64);
        let (Some(op), Some(key), Some(lsn)) = (op, key, lsn) else {
            refused.push((
                at,
                "not a change event: bulk_changes needs op, key and lsn (a CDC source's events, unprojected)".into(),
            ));
            continue;
        };
        let seq = change.get("seq").and_then(Value::as_u64).unwrap_or(0);
        if op == "t" {
            if !events.is_empty() {
                steps.push(Step::Bulk { body: std::mem::take(&mut body), events: std::mem::take(&mut events) });
            }
            steps.push(Step::Truncate { lsn, seq, at });
            continue;
        }
        if key.is_empty() {
            refused.push((at, "the change has an empty key".into()));
            continue;
        }
        let meta = json!({"_index": index, "_id": key_text(key), "version": lsn, "version_type": "external_gte"});
        match op {
            "d" => {
                serde_json::to_writer(&mut body, &json!({ "delete": meta })).expect("json");
                body.push(b'\n');
            }
            "c" | "u" | "r" => {
                let Some(after) = change.get("after").and_then(Value::as_object) else {
                    refused.push((at, format!("a change of op {op:?} needs its row in \"after\"")));
                    continue;
                };
                let mut doc = after.clone();
                doc.insert(LSN_FIELD.into(), Value::from(lsn));
                doc.insert(SEQ_FIELD.into(), Value::from(seq));
                serde_json::to_writer(&mut body, &json!({ "index": meta })).expect("json");
                body.push(b'\n');
                serde_json::to_writer(&mut body, &doc).expect("json");
                body.push(b'\n');
            }
            other => {
                refused.push((at, format!("unknown change op {other:?}")));
                continue;
            }
        }
        events.push(at);
    }
    if !events.is_empty() {
        steps.push(Step::Bulk { body, events });
    }
    (steps, refused)
}

/// Whether a bulk item's status means the change is in the index: applied, older than what the
/// index holds (409), or a delete of a document that is not there (404).
pub(super) fn applied(action: &str, status: u64) -> bool {
    (200..300).contains(&status) || status == 409 || (action == "delete" && status == 404)
}

/// The `_delete_by_query` request of a truncate: its URL, from the `_bulk` URL, and its body
/// (the documents before (`lsn`, `seq`)).
pub(super) fn truncate_request(bulk_url: &str, index: &str, lsn: u64, seq: u64) -> (String, Value) {
    let base = bulk_url.split('?').next().unwrap_or(bulk_url).trim_end_matches('/');
    let base = base.strip_suffix("/_bulk").unwrap_or(base);
    let index = percent_encoding::utf8_percent_encode(index, percent_encoding::NON_ALPHANUMERIC);
    let url = format!("{base}/{index}/_delete_by_query?conflicts=proceed&refresh=true");
    let older = json!({"bool": {"should": [
        {"range": {LSN_FIELD: {"lt": lsn}}},
        {"bool": {"filter": [{"term": {LSN_FIELD: lsn}}, {"range": {SEQ_FIELD: {"lt": seq}}}]}}
    ], "minimum_should_match": 1}});
    (url, json!({ "query": older }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at: u64, change: Value) -> SinkEvent {
        SinkEvent {
            id: format!("0190a0b0-0000-7000-8000-{at:012}"),
            ingested_at: 1,
            key: None,
            partition: 0,
            offset: at,
            event: serde_json::value::to_raw_value(&change).unwrap(),
        }
    }

    fn change(op: &str, key: Value, after: Value, lsn: u64) -> Value {
        json!({"op": op, "table": "public.items", "key": key, "before": null, "after": after, "lsn": lsn, "seq": 1})
    }

    #[test]
    fn changes_become_versioned_actions_split_at_truncates() {
        let batch = vec![
            event(0, change("c", json!({"id": 1}), json!({"id": 1, "name": "a"}), 10)),
            event(1, change("d", json!({"id": 2}), Value::Null, 11)),
            event(2, json!({"n": 1})),
            event(3, change("t", json!({}), Value::Null, 12)),
            event(4, change("u", json!({"a": 1, "b": "x"}), json!({"a": 1, "b": "x", "v": true}), 13)),
        ];
        let (steps, refused) = plan("items", &batch);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, 2);
        assert_eq!(steps.len(), 3);
        let Step::Bulk { body, events } = &steps[0] else { panic!("{steps:?}") };
        assert_eq!(events, &[0, 1]);
        let lines: Vec<Value> =
            body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
        assert_eq!(
            lines,
            [
                json!({"index": {"_index": "items", "_id": "1", "version": 10, "version_type": "external_gte"}}),
                json!({"id": 1, "name": "a", "keystone_lsn": 10, "keystone_seq": 1}),
                json!({"delete": {"_index": "items", "_id": "2", "version": 11, "version_type": "external_gte"}}),
            ]
        );
        assert_eq!(steps[1], Step::Truncate { lsn: 12, seq: 1, at: 3 });
        let Step::Bulk { body, .. } = &steps[2] else { panic!("{steps:?}") };
        assert!(String::from_utf8_lossy(body).contains(r#""_id":"[1,\"x\"]""#), "a composite key as a JSON array");
        assert!(applied("index", 409) && applied("delete", 404) && !applied("index", 404) && !applied("index", 400));
        assert_eq!(
            truncate_request("http://es:9200/_bulk?refresh=false", "my index", 12, 1).0,
            "http://es:9200/my%20index/_delete_by_query?conflicts=proceed&refresh=true"
        );
    }
}
