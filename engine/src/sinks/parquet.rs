//! Parquet files of sink events, through the Arrow implementation's JSON decoder and Parquet
//! writer: a file holds the same record as an NDJSON line (`id`, `ingested_at`, `key`, and the
//! projected `event` as a nested struct), so a backfill reads either format back to the same
//! events, and query engines see real columns rather than JSON text.
//!
//! The schema is inferred from each file's events (routes declare projections, not types): files
//! of one sink may differ in schema as events evolve, which readers handle by merging schemas by
//! name (`union_by_name` in DuckDB, `mergeSchema` in Spark).

use super::SinkEvent;
use arrow_json::reader::{infer_json_schema_from_iterator, ReaderBuilder};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::Value;
use std::sync::Arc;

/// An encoded file, and the events (by index) that could not be part of it, with why.
pub struct Encoded {
    /// `None` when no event could be encoded.
    pub body: Option<Vec<u8>>,
    pub refused: Vec<(usize, String)>,
}

/// An event as a row of a file: the same record an NDJSON line holds.
pub fn row(event: &SinkEvent) -> Value {
    serde_json::to_value(event).unwrap_or(Value::Null)
}

/// Encodes rows (see [`row`]) as one Parquet file. A row whose fields contradict the types of the
/// first row's (an object where a number was, say) is refused rather than failing the whole file:
/// retrying could never succeed, so it belongs in the dead-letter queue with the reason.
pub fn encode(rows: Vec<Value>) -> Encoded {
    let mut refused = Vec::new();
    let mut kept: Vec<usize> = (0..rows.len()).collect();
    if infer_json_schema_from_iterator(rows.iter().map(Ok)).is_err() {
        // Find the culprits: each event against the first one's types.
        kept.retain(|&i| match infer_json_schema_from_iterator([&rows[0], &rows[i]].into_iter().map(Ok)) {
            Ok(_) => true,
            Err(e) => {
                refused.push((i, format!("does not fit the file's Parquet schema: {e}")));
                false
            }
        });
    }
    let kept_rows: Vec<&Value> = kept.iter().map(|&i| &rows[i]).collect();
    match write(&kept_rows) {
        Ok(body) => Encoded { body: Some(body), refused },
        Err(e) => {
            // Types that only conflict three ways, or a shape Parquet cannot hold (an empty
            // object): nothing of this file can be written.
            refused.extend(kept.into_iter().map(|i| (i, format!("cannot be written as Parquet: {e}"))));
            Encoded { body: None, refused }
        }
    }
}

fn write(rows: &[&Value]) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    let schema = Arc::new(infer_json_schema_from_iterator(rows.iter().map(|r| Ok(*r)))?);
    let mut decoder = ReaderBuilder::new(schema.clone()).with_batch_size(rows.len().max(1)).build_decoder()?;
    decoder.serialize(rows)?;
    let batch = decoder.flush()?.ok_or("no rows")?;
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let mut body = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut body, schema, Some(props))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(body)
}

/// Reads back the events of a Parquet file a file sink wrote.
pub fn decode(body: bytes::Bytes) -> Result<Vec<SinkEvent>, String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(body)
        .and_then(|b| b.build())
        .map_err(|e| format!("not a Parquet file: {e}"))?;
    let mut json = Vec::new();
    {
        let mut writer = arrow_json::LineDelimitedWriter::new(&mut json);
        for batch in reader {
            let batch = batch.map_err(|e| format!("unreadable row group: {e}"))?;
            writer.write(&batch).map_err(|e| e.to_string())?;
        }
        writer.finish().map_err(|e| e.to_string())?;
    }
    json.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_slice(line).map_err(|e| format!("row {}: not an event a file sink wrote: {e}", i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(i: u64, payload: Value) -> SinkEvent {
        SinkEvent {
            id: format!("0190a0b0-0000-7000-8000-{i:012}"),
            ingested_at: 1_795_669_629_000 + i as i64,
            key: i.is_multiple_of(2).then(|| format!("k{i}")),
            partition: 0,
            offset: i,
            event: serde_json::value::to_raw_value(&payload).unwrap(),
        }
    }

    #[test]
    fn events_round_trip_through_a_parquet_file() {
        let events: Vec<SinkEvent> = (0..50)
            .map(|i| event(i, json!({"n": i, "user": {"country": "BR", "score": i as f64 / 2.0}, "tags": ["a", "b"]})))
            .collect();
        let encoded = encode(events.iter().map(row).collect());
        assert!(encoded.refused.is_empty());
        let body = encoded.body.unwrap();
        assert_eq!(&body[..4], b"PAR1");
        let back = decode(body.into()).unwrap();
        assert_eq!(back.len(), 50);
        for (a, b) in events.iter().zip(&back) {
            assert_eq!(
                (&a.id, a.ingested_at, &a.key, a.event_value().unwrap()),
                (&b.id, b.ingested_at, &b.key, b.event_value().unwrap())
            );
        }
    }

    #[test]
    fn an_event_of_contradicting_shape_is_refused_alone() {
        let mut events: Vec<SinkEvent> = (0..5).map(|i| event(i, json!({"n": i, "title": "t"}))).collect();
        events[3] = event(3, json!({"n": {"nested": true}, "title": "t"}));
        let encoded = encode(events.iter().map(row).collect());
        assert_eq!(encoded.refused.iter().map(|r| r.0).collect::<Vec<_>>(), [3]);
        assert!(encoded.refused[0].1.contains("Parquet schema"), "{}", encoded.refused[0].1);
        let back = decode(encoded.body.unwrap().into()).unwrap();
        assert_eq!(
            back.iter().map(|e| e.event_value().unwrap()["n"].as_u64().unwrap()).collect::<Vec<_>>(),
            [0, 1, 2, 4]
        );
    }

    #[test]
    fn mixed_numbers_widen_instead_of_failing() {
        let events = vec![event(0, json!({"bitrate": 3000})), event(1, json!({"bitrate": 3000.5}))];
        let encoded = encode(events.iter().map(row).collect());
        assert!(encoded.refused.is_empty());
        let back = decode(encoded.body.unwrap().into()).unwrap();
        assert_eq!(back[1].event_value().unwrap()["bitrate"], json!(3000.5));
    }

    #[test]
    fn a_file_that_is_not_parquet_is_named_as_such() {
        assert!(decode(bytes::Bytes::from_static(b"{\"id\":1}\n")).unwrap_err().contains("not a Parquet file"));
    }
}
