//! The event envelope: what every record of a stream's topic holds (the event's identity, its
//! stream, when it was ingested, its key and headers, and the payload as sent). One home for its
//! three shapes: [`Envelope`] (read whole: preview, dead-letter replay, backfill), the bytes
//! ingest and the stream sink write ([`SentEnvelope`], [`EnvelopeFrame`]), and what a route job
//! reads of it in one pass ([`Routable`]).

use serde::de::DeserializeSeed;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// What every record of a stream's topic holds: the event's identity and the payload as sent.
/// Written by the ingest proxy and the stream sink (see `SentEnvelope`, the payload as sent);
/// read by the preview and the dead-letter replay (route jobs read it in one pass of their own,
/// [`Routable`]).
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

/// An envelope with the payload exactly as it was sent, as the stream sink writes it (ingest
/// writes the same bytes from an [`EnvelopeFrame`]). Serialises to the same fields as
/// [`Envelope`].
#[derive(Serialize)]
pub(crate) struct SentEnvelope<'a> {
    pub(crate) id: &'a str,
    pub(crate) stream: &'a str,
    pub(crate) ingested_at: i64,
    pub(crate) key: Option<&'a str>,
    pub(crate) headers: &'a BTreeMap<String, String>,
    pub(crate) payload: &'a RawValue,
}

/// The text every envelope of one request shares (stream, time, headers), written once per
/// request: each envelope is then its id, its key and its payload copied between them, the
/// same bytes [`SentEnvelope`] serialises to. Serialising the whole envelope per event was a
/// tenth of ingest's CPU.
pub(crate) struct EnvelopeFrame {
    /// From after the id to the key's value.
    middle: Vec<u8>,
    /// From after the key to the payload.
    tail: Vec<u8>,
}

impl EnvelopeFrame {
    pub(crate) fn new(stream: &str, ingested_at: i64, headers: &BTreeMap<String, String>) -> EnvelopeFrame {
        let mut middle = br#"","stream":"#.to_vec();
        serde_json::to_writer(&mut middle, stream).expect("a string serialises");
        middle.extend_from_slice(format!(r#","ingested_at":{ingested_at},"key":"#).as_bytes());
        let mut tail = br#","headers":"#.to_vec();
        serde_json::to_writer(&mut tail, headers).expect("headers serialise");
        tail.extend_from_slice(br#","payload":"#);
        EnvelopeFrame { middle, tail }
    }

    pub(crate) fn envelope(&self, id: &str, key: Option<&str>, payload: &RawValue) -> Vec<u8> {
        let key_len = key.map_or(4, |k| k.len() + 2);
        // Sized for the whole envelope: a buffer a few bytes too small was copied into one twice
        // its size for every event (a key with escapes may still grow it once).
        let len = 8 + id.len() + self.middle.len() + key_len + self.tail.len() + payload.get().len() + 1;
        let mut value = Vec::with_capacity(len);
        value.extend_from_slice(br#"{"id":""#);
        value.extend_from_slice(id.as_bytes());
        value.extend_from_slice(&self.middle);
        serde_json::to_writer(&mut value, &key).expect("a key serialises");
        value.extend_from_slice(&self.tail);
        value.extend_from_slice(payload.get().as_bytes());
        value.push(b'}');
        value
    }
}

/// What a job reads of a record's envelope, in one pass over it: the payload as far as the
/// route reads it (`P`: a tree, or fields as sent), the stream and headers skipped, not copied,
/// and the id and key borrowed from the record until an event is delivered.
pub(crate) struct Routable<'r, P> {
    pub(crate) id: Cow<'r, str>,
    pub(crate) ingested_at: i64,
    pub(crate) key: Option<Cow<'r, str>>,
    pub(crate) payload: P,
}

impl<'r, P> Routable<'r, P> {
    /// Reads the envelope, the payload with `payload`.
    pub(crate) fn parse<S: DeserializeSeed<'r, Value = P>>(record: &'r [u8], payload: S) -> serde_json::Result<Self> {
        let mut de = serde_json::Deserializer::from_slice(record);
        let envelope = EnvelopeSeed(payload).deserialize(&mut de)?;
        de.end()?;
        Ok(envelope)
    }
}

struct EnvelopeSeed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for EnvelopeSeed<S> {
    type Value = Routable<'de, S::Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> serde::de::Visitor<'de> for EnvelopeSeed<S> {
    type Value = Routable<'de, S::Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Keystone envelope")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use crate::transforms::Key;
        use serde::de::Error;
        let (mut id, mut ingested_at, mut key, mut payload) = (None, None, None, None);
        let mut seed = Some(self.0);
        while let Some(Key(field)) = map.next_key()? {
            match field.as_ref() {
                "id" => id = Some(map.next_value::<Key>()?.0),
                "ingested_at" => ingested_at = Some(map.next_value::<i64>()?),
                "key" => key = map.next_value::<Option<Key>>()?.map(|k| k.0),
                "payload" => match seed.take() {
                    Some(seed) => payload = Some(map.next_value_seed(seed)?),
                    None => return Err(A::Error::duplicate_field("payload")),
                },
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(Routable {
            id: id.ok_or_else(|| A::Error::missing_field("id"))?,
            ingested_at: ingested_at.ok_or_else(|| A::Error::missing_field("ingested_at"))?,
            key,
            payload: payload.ok_or_else(|| A::Error::missing_field("payload"))?,
        })
    }
}
