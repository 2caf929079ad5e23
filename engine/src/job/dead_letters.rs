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
