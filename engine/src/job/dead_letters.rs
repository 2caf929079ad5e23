//! Reading a route's dead-letter queue (the API and the console share this).

use crate::log::{Log, LogError, StartAt};
use serde_json::Value;

/// Up to `limit` dead letters as `(offset, letter)`, oldest first: from offset `from`, or the
/// newest `limit` when `from` is `None`. Empty when the route never dead-lettered anything.
pub async fn read<L: Log>(
    log: &L,
    topic: &str,
    from: Option<u64>,
    limit: usize,
) -> Result<Vec<(u64, Value)>, LogError> {
    let from = match from {
        Some(f) => f,
        None => {
            let (earliest, end) =
                match (log.resolve(topic, 0, StartAt::Earliest).await, log.resolve(topic, 0, StartAt::Latest).await) {
                    (Ok(e), Ok(l)) => (e, l),
                    (Err(LogError::UnknownTopic(_)), _) | (_, Err(LogError::UnknownTopic(_))) => return Ok(Vec::new()),
                    (Err(e), _) | (_, Err(e)) => return Err(e),
                };
            end.saturating_sub(limit as u64).max(earliest)
        }
    };
    match log.read(topic, 0, from, limit).await {
        Ok(records) => Ok(records
            .into_iter()
            .map(|r| (r.offset, serde_json::from_slice(&r.value).unwrap_or(Value::Null)))
            .collect()),
        Err(LogError::UnknownTopic(_)) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Replayed {
    /// Letters read.
    pub letters: usize,
    /// Delivered to the sink this time.
    pub delivered: usize,
    /// The route's filter now rejects them: nothing to deliver.
    pub filtered_out: usize,
    /// Refused again: appended to the dead-letter queue anew, with the new reason.
    pub refused_again: usize,
    /// The offset after the last letter handled (the new cursor).
    pub next: u64,
}

/// Re-delivers up to `limit` dead letters from offset `from` through the route's current
/// transforms and the given sink, as one batch. Letters the sink refuses again go back to the
/// queue with the new reason. On a transient failure nothing is marked handled: the caller keeps
/// its cursor and may retry later.
pub async fn replay<L: Log, S: crate::sinks::Sink>(
    log: &L,
    spec: &super::JobSpec,
    sink: &S,
    from: u64,
    limit: usize,
) -> Result<Replayed, ReplayError> {
    let letters = read(log, &spec.dead_letter_topic, Some(from), limit).await.map_err(ReplayError::Log)?;
    let mut out = Replayed { letters: letters.len(), next: from, ..Default::default() };
    let mut batch = Vec::new();
    let mut sources = Vec::new();
    // Letters that stay dead: re-appended, so replaying never makes one disappear.
    let mut again: Vec<Value> = Vec::new();
    for (offset, letter) in &letters {
        out.next = offset + 1;
        let Ok(envelope) = serde_json::from_value::<crate::envelope::Envelope>(letter["envelope"].clone()) else {
            again.push(letter.clone());
            continue;
        };
        match spec.transforms.transform(envelope.payload) {
            super::Transformed::Deliver(event) => {
                batch.push(crate::sinks::SinkEvent {
                    id: envelope.id,
                    ingested_at: envelope.ingested_at,
                    key: envelope.key,
                    partition: letter["partition"].as_u64().unwrap_or(0) as u32,
                    offset: letter["offset"].as_u64().unwrap_or(0),
                    event,
                });
                sources.push(letter.clone());
            }
            _ => out.filtered_out += 1,
        }
    }
    if !batch.is_empty() {
        let refused = match sink.deliver(&batch).await {
            Ok(()) => Vec::new(),
            Err(crate::sinks::SinkError::Rejected(refused)) => refused,
            Err(crate::sinks::SinkError::Transient { message, .. }) => return Err(ReplayError::Transient(message)),
        };
        out.delivered = batch.len() - refused.len();
        for (i, reason) in refused {
            let mut letter = sources[i].clone();
            letter["reason"] = Value::String(reason);
            again.push(letter);
        }
    }
    out.refused_again = again.len();
    if !again.is_empty() {
        let now = crate::now_ms();
        let records = again
            .into_iter()
            .map(|mut letter| {
                letter["failed_at"] = Value::from(now);
                crate::log::NewRecord {
                    partition: 0,
                    timestamp_ms: now,
                    key: None,
                    value: letter.to_string().into_bytes(),
                }
            })
            .collect();
        log.append(&spec.dead_letter_topic, records).await.map_err(ReplayError::Log)?;
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the sink is failing; nothing was marked handled: {0}")]
    Transient(String),
    #[error("the dead-letter queue could not be read or written: {0}")]
    Log(LogError),
}
