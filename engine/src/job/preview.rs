//! The route preview: a route's transforms run against a stream's most recent events, without
//! delivering anything, so users see what passes and what the sink would receive before saving.

use super::{transform_record, Transformed, Transforms};
use crate::envelope::Envelope;
use crate::log::{Log, LogError, StartAt};
use keystone_control::PreviewRow;

/// How long one preview may spend running the transforms. A preview runs a caller's filter on
/// the server, so it runs on a blocking thread (never on the runtime serving ingest) and stops
/// when its budget is spent, saying so in its last row.
pub const PREVIEW_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

/// The newest `limit` events of `topic` (across its partitions, newest first) through the
/// transforms, within [`PREVIEW_BUDGET`].
pub async fn preview<L: Log>(
    log: &L,
    topic: &str,
    partitions: u32,
    transforms: Transforms,
    limit: usize,
) -> Result<Vec<PreviewRow>, LogError> {
    preview_within(log, topic, partitions, transforms, limit, PREVIEW_BUDGET).await
}

/// [`preview`] with a budget of the caller's choosing.
pub async fn preview_within<L: Log>(
    log: &L,
    topic: &str,
    partitions: u32,
    transforms: Transforms,
    limit: usize,
    budget: std::time::Duration,
) -> Result<Vec<PreviewRow>, LogError> {
    let records = newest(log, topic, partitions, limit).await?;
    // Newest first: by ingest time, then by envelope id (UUIDv7, ordered within a millisecond).
    let mut decoded: Vec<_> =
        records.into_iter().map(|(p, r)| (p, serde_json::from_slice::<Envelope>(&r.value), r)).collect();
    decoded.sort_by(|(_, a, ra), (_, b, rb)| {
        let id = |e: &Result<Envelope, serde_json::Error>| e.as_ref().map(|e| e.id.clone()).unwrap_or_default();
        (rb.timestamp_ms, id(b)).cmp(&(ra.timestamp_ms, id(a)))
    });
    decoded.truncate(limit);
    let evaluate = move || {
        let started = std::time::Instant::now();
        let mut rows = Vec::with_capacity(decoded.len());
        for (partition, envelope, r) in decoded {
            if started.elapsed() >= budget {
                rows.push(PreviewRow {
                    partition,
                    offset: r.offset,
                    ingested_at: r.timestamp_ms,
                    input: serde_json::Value::Null,
                    outcome: "error".to_owned(),
                    output: None,
                    error: Some(format!(
                        "preview stopped after {} ms, its time budget: the filter is too costly to run on \
                         this many events",
                        budget.as_millis()
                    )),
                });
                break;
            }
            rows.push(preview_row(&transforms, partition, envelope, &r));
        }
        rows
    };
    tokio::task::spawn_blocking(evaluate).await.map_err(|e| LogError::Io(std::io::Error::other(e)))
}

/// Up to `limit` of the newest records of each partition of `topic` (none of a topic not
/// created yet), oldest first per partition.
pub(crate) async fn newest<L: Log>(
    log: &L,
    topic: &str,
    partitions: u32,
    limit: usize,
) -> Result<Vec<(u32, crate::log::StoredRecord)>, LogError> {
    let mut records = Vec::new();
    for p in 0..partitions {
        let (earliest, end) =
            match (log.resolve(topic, p, StartAt::Earliest).await, log.resolve(topic, p, StartAt::Latest).await) {
                (Ok(e), Ok(l)) => (e, l),
                // Nothing ingested into this stream yet.
                (Err(LogError::UnknownTopic(_) | LogError::UnknownPartition { .. }), _)
                | (_, Err(LogError::UnknownTopic(_) | LogError::UnknownPartition { .. })) => continue,
                (Err(e), _) | (_, Err(e)) => return Err(e),
            };
        let from = end.saturating_sub(limit as u64).max(earliest);
        records.extend(log.read(topic, p, from, limit).await?.into_iter().map(|r| (p, r)));
    }
    Ok(records)
}

fn preview_row(
    transforms: &Transforms,
    partition: u32,
    envelope: Result<Envelope, serde_json::Error>,
    r: &crate::log::StoredRecord,
) -> PreviewRow {
    let row = |input, outcome: &str, output, error| PreviewRow {
        partition,
        offset: r.offset,
        ingested_at: r.timestamp_ms,
        input,
        outcome: outcome.to_owned(),
        output,
        error,
    };
    let envelope = match envelope {
        Ok(env) => env,
        Err(e) => return row(serde_json::Value::Null, "error", None, Some(format!("not a Keystone envelope: {e}"))),
    };
    // The job's own path, so the output is byte for byte what the sink would receive.
    match transform_record(transforms, &r.value).map(|(outcome, _)| outcome) {
        Ok(Transformed::Deliver(out)) => row(envelope.payload, "delivered", Some(out), None),
        Ok(Transformed::FilteredOut) => row(envelope.payload, "filtered_out", None, None),
        Ok(Transformed::FilterError(e)) => row(envelope.payload, "error", None, Some(e)),
        Err(e) => row(envelope.payload, "error", None, Some(format!("not a Keystone envelope: {e}"))),
    }
}
