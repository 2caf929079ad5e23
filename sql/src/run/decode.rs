//! Events as a record batch of their stream's table: the payloads decoded by arrow-json into the
//! schema's columns (vectorised, no JSON tree per event), the envelope's columns beside them.

use crate::schema::ENVELOPE_COLUMNS;
use datafusion_common::arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion_common::arrow::datatypes::{Schema, SchemaRef};
use datafusion_common::arrow::json::ReaderBuilder;
use std::sync::Arc;

/// One event read from the log.
#[derive(Debug, Clone, Copy)]
pub struct InputEvent<'a> {
    pub id: &'a str,
    pub key: Option<&'a str>,
    pub ingested_at: i64,
    pub partition: u32,
    pub offset: u64,
    /// The payload, a JSON object, as sent.
    pub payload: &'a [u8],
}

/// Decodes events into batches of one table.
pub struct Decoder {
    table: SchemaRef,
    payload: SchemaRef,
}

impl Decoder {
    pub fn new(table: SchemaRef) -> Decoder {
        let payload_fields: Vec<_> =
            table.fields().iter().filter(|f| !ENVELOPE_COLUMNS.contains(&f.name().as_str())).cloned().collect();
        Decoder { payload: Arc::new(Schema::new(payload_fields)), table }
    }

    pub fn table(&self) -> &SchemaRef {
        &self.table
    }

    /// The batch of `events` that decode, and the index and reason of each that does not (a
    /// value of the wrong type for its column). Fields the table lacks are ignored.
    pub fn decode(&self, events: &[InputEvent<'_>]) -> (RecordBatch, Vec<(usize, String)>) {
        match self.payloads(events.iter()) {
            Ok(batch) => (self.with_envelope(events.iter(), batch), Vec::new()),
            // One bad event fails the whole batch: find it (and any other) one by one.
            Err(_) => {
                let mut good = Vec::new();
                let mut bad = Vec::new();
                for (i, e) in events.iter().enumerate() {
                    match self.payloads(std::iter::once(e)) {
                        Ok(_) => good.push(*e),
                        Err(reason) => bad.push((i, format!("does not fit the stream's schema: {reason}"))),
                    }
                }
                let batch = self.payloads(good.iter()).expect("events that decode alone decode together");
                (self.with_envelope(good.iter(), batch), bad)
            }
        }
    }

    fn payloads<'a>(&self, events: impl Iterator<Item = &'a InputEvent<'a>>) -> Result<RecordBatch, String> {
        let events: Vec<&InputEvent<'_>> = events.collect();
        let mut decoder = ReaderBuilder::new(self.payload.clone())
            .with_batch_size(events.len() + 1)
            .build_decoder()
            .map_err(|e| e.to_string())?;
        for e in events {
            // The decoder reads concatenated JSON values, all of them while the batch has room.
            let read = decoder.decode(e.payload).map_err(|e| e.to_string())?;
            if read < e.payload.len() {
                return Err("the payload is not one JSON object".into());
            }
        }
        match decoder.flush().map_err(|e| e.to_string())? {
            Some(batch) => Ok(batch),
            None => Ok(RecordBatch::new_empty(self.payload.clone())),
        }
    }

    fn with_envelope<'a>(
        &self,
        events: impl Iterator<Item = &'a InputEvent<'a>> + Clone,
        payload: RecordBatch,
    ) -> RecordBatch {
        let ids: StringArray = events.clone().map(|e| Some(e.id)).collect();
        let keys: StringArray = events.clone().map(|e| e.key).collect();
        let times =
            TimestampMillisecondArray::from_iter_values(events.clone().map(|e| e.ingested_at)).with_timezone("UTC");
        let partitions = Int32Array::from_iter_values(events.clone().map(|e| e.partition as i32));
        let offsets = Int64Array::from_iter_values(events.map(|e| e.offset as i64));
        let envelope: [ArrayRef; 5] =
            [Arc::new(ids), Arc::new(keys), Arc::new(times), Arc::new(partitions), Arc::new(offsets)];
        let columns: Vec<ArrayRef> = envelope.into_iter().chain(payload.columns().iter().cloned()).collect();
        RecordBatch::try_new(self.table.clone(), columns).expect("the envelope and payload columns make the table")
    }
}
