//! One partition's reader: reads the log, runs the route's transforms, gathers batches, delivers
//! them (with retries and dead letters) and moves the partition's acknowledged position.

use super::*;
use crate::envelope::Routable;

pub(super) struct PartitionReader<L, S> {
    pub(super) spec: Arc<JobSpec>,
    pub(super) log: Arc<L>,
    pub(super) sink: Arc<S>,
    pub(super) stats: Arc<JobStats>,
    pub(super) cancel: CancellationToken,
    pub(super) partition: u32,
}

/// What became of one record before delivery.
enum Routed {
    Deliver(SinkEvent),
    Skip,
    DeadLetter(String),
}

impl<L: Log, S: Sink> Clone for PartitionReader<L, S> {
    fn clone(&self) -> Self {
        PartitionReader {
            spec: self.spec.clone(),
            log: self.log.clone(),
            sink: self.sink.clone(),
            stats: self.stats.clone(),
            cancel: self.cancel.clone(),
            partition: self.partition,
        }
    }
}

/// A record through a route's transforms: the outcome, and the envelope it came in (its payload
/// as far as it was read). Jobs and the preview both call this, so the preview shows the bytes a
/// sink would receive.
pub(crate) fn transform_record<'r>(
    transforms: &Transforms,
    record: &'r [u8],
) -> serde_json::Result<(Transformed, Routable<'r, ()>)> {
    // Fields as sent when the route allows it; otherwise, or when this event needs it, a tree.
    if transforms.copies_fields() {
        if let Ok(Routable { id, ingested_at, key, payload }) =
            Routable::parse(record, RawFieldsSeed(transforms.reads()))
        {
            if let Some(outcome) = transforms.transform_fields(payload) {
                return Ok((outcome, Routable { id, ingested_at, key, payload: () }));
            }
        }
    }
    let parsed = match Routable::parse(record, Tree(transforms.reads())) {
        // A payload that is not an object is parsed whole: the transforms say what they make of it.
        Err(_) if transforms.reads().is_some() => Routable::parse(record, Tree(None)),
        parsed => parsed,
    };
    let Routable { id, ingested_at, key, payload } = parsed?;
    Ok((transforms.transform(payload), Routable { id, ingested_at, key, payload: () }))
}

/// The payload as a tree: only the named top-level fields, when given.
struct Tree<'f>(Option<&'f [String]>);

impl<'de> DeserializeSeed<'de> for Tree<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0 {
            Some(fields) => crate::transforms::Fields(fields).deserialize(d),
            None => serde::Deserialize::deserialize(d),
        }
    }
}

/// What a delivery came back with: the events the sink refused for good (by index, with why),
/// or `None` if it was cancelled while retrying.
type Refusals = Option<Vec<(usize, String)>>;

/// A gathered batch on its way to the sink: what it came from, and where its partition's
/// position may move once it is settled.
struct InFlight {
    /// The delivery; `None` for a batch of dead letters only. Its result: the events the sink
    /// refused for good, or `None` if cancelled while retrying.
    delivery: Option<tokio::task::JoinHandle<Refusals>>,
    sources: Vec<StoredRecord>,
    dead: Vec<(StoredRecord, String)>,
    /// The offset after the last record the batch covers.
    end: u64,
}

impl<L: Log, S: Sink> PartitionReader<L, S> {
    /// Gathers batches and hands them to the sink. An ordered route has one batch in flight at a
    /// time; an unordered one up to `spec.in_flight`, delivered in parallel. Either way batches
    /// are settled (dead letters written, position acknowledged) in log order, so the position
    /// never passes an event the sink has not acknowledged.
    pub(super) async fn run(self, start: u64) -> Result<(), JobError> {
        let spec = &self.spec;
        let mut end = self.log.watch_end(&spec.topic, self.partition)?;
        // A sink that rolls files by size and age bounds its batches itself.
        let (max_events, max_bytes, max_latency) = match self.sink.rolling() {
            Some(r) => (usize::MAX, r.max_bytes, r.max_age),
            None => (spec.batch_size, usize::MAX, spec.max_latency),
        };
        let depth = spec.in_flight.max(1);
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let settled = Arc::new(tokio::sync::Notify::new());
        // Where the next batch starts (ahead of the acknowledged position while batches fly).
        let mut next = start;
        loop {
            // Settle what already came back, then wait for room.
            if !self.settle_front(&mut in_flight, depth - 1).await? {
                return Ok(());
            }
            self.stats.wait_while_paused(&self.cancel).await;
            // Gather one batch: up to max_events deliverable events (or max_bytes of them), or
            // whatever arrived by the time the first of them has waited max_latency.
            let mut batch: Vec<SinkEvent> = Vec::new();
            let mut bytes = 0usize;
            let mut sources: Vec<StoredRecord> = Vec::new();
            let mut dead: Vec<(StoredRecord, String)> = Vec::new();
            let mut scanned = next;
            let mut deadline: Option<Instant> = None;
            loop {
                if (self.cancel.is_cancelled() || self.stats.is_paused()) && batch.is_empty() {
                    break;
                }
                // Read in chunks a normal batch could hold, however large a rolled file grows.
                let room = (max_events - batch.len()).min(keystone_control::BATCH_SIZE_MAX as usize);
                let want = match spec.until.get(&self.partition) {
                    Some(until) => room.min(until.saturating_sub(scanned) as usize),
                    None => room,
                };
                let read = if want == 0 {
                    Ok(Vec::new())
                } else {
                    self.log.read(&spec.topic, self.partition, scanned, want).await
                };
                let records = match read {
                    Ok(r) => r,
                    Err(LogError::OffsetOutOfRange { earliest, .. }) => {
                        self.stats.record_error(format!(
                            "partition {}: events {scanned}..{earliest} expired before delivery (retention)",
                            self.partition
                        ));
                        scanned = earliest;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                if records.is_empty() {
                    if batch.is_empty() && dead.is_empty() && scanned > next && in_flight.is_empty() {
                        // Only filtered-out events so far: their position is acknowledged too,
                        // now, since no later batch may come to carry it.
                        next = scanned;
                        self.stats.set_acked(self.partition, next);
                    }
                    // Nothing new: wait for an append, the batch deadline, cancellation, or a
                    // batch in flight coming back (settled at once, so positions keep moving).
                    tokio::select! {
                        changed = end.changed() => changed.map_err(|_| LogError::Closed)?,
                        // Stop gathering; a partial batch is still delivered before stopping.
                        _ = self.cancel.cancelled() => if !batch.is_empty() { break },
                        _ = sleep_until(deadline) => break,
                        _ = settled.notified(), if !in_flight.is_empty() => {
                            if !self.settle_front(&mut in_flight, usize::MAX).await? {
                                return Ok(());
                            }
                        }
                    }
                    continue;
                }
                for (n, r) in records.into_iter().enumerate() {
                    if bytes >= max_bytes {
                        // The file is full: the rest is read again for the next one.
                        break;
                    }
                    if n > 0 && n.is_multiple_of(crate::YIELD_EVERY) {
                        // A read brings up to thousands of records: routing them without a break
                        // held a runtime thread for milliseconds while ingest requests waited.
                        tokio::task::yield_now().await;
                    }
                    scanned = r.offset + 1;
                    self.stats.read.fetch_add(1, Ordering::Relaxed);
                    match self.route(&r) {
                        Routed::Deliver(e) => {
                            bytes += r.value.len();
                            batch.push(e);
                            sources.push(r);
                        }
                        Routed::Skip => {}
                        Routed::DeadLetter(why) => dead.push((r, why)),
                    }
                }
                if batch.len() >= max_events || bytes >= max_bytes {
                    break;
                }
                if !batch.is_empty() && deadline.is_none() {
                    deadline = Some(Instant::now() + max_latency);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
            if batch.is_empty() && dead.is_empty() && scanned == next && self.cancel.is_cancelled() {
                // Stopping: what is in flight is settled first, in order.
                self.settle_front(&mut in_flight, 0).await?;
                return Ok(());
            }
            let delivery = (!batch.is_empty()).then(|| {
                let me = self.clone();
                let settled = settled.clone();
                tokio::spawn(async move {
                    let refused = me.deliver(&batch).await;
                    settled.notify_one();
                    refused
                })
            });
            in_flight.push_back(InFlight { delivery, sources, dead, end: scanned });
            next = scanned;
        }
    }

    /// Settles batches from the front, in log order: every one already back, and more (waiting
    /// for them) until at most `keep` remain in flight. `false` when a delivery was cancelled
    /// while retrying: nothing after it may be acknowledged.
    async fn settle_front(&self, in_flight: &mut VecDeque<InFlight>, keep: usize) -> Result<bool, JobError> {
        while let Some(f) = in_flight.front() {
            let back = f.delivery.as_ref().is_none_or(|d| d.is_finished());
            if !back && in_flight.len() <= keep {
                break;
            }
            let f = in_flight.pop_front().expect("a batch in flight");
            if !self.settle(f).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Settles the oldest batch in flight: its refused events and dead letters go to the
    /// dead-letter queue, then the partition's position moves past it. `false` when the delivery
    /// was cancelled while retrying (nothing acknowledged, nothing committed).
    async fn settle(&self, f: InFlight) -> Result<bool, JobError> {
        let mut dead = f.dead;
        if let Some(delivery) = f.delivery {
            let outcome = delivery.await.map_err(|e| {
                JobError::Log(LogError::Io(std::io::Error::other(format!("delivery task panicked: {e}"))))
            })?;
            match outcome {
                Some(refused) => dead.extend(refused.into_iter().map(|(i, why)| (f.sources[i].clone(), why))),
                None => return Ok(false),
            }
        }
        if !dead.is_empty() {
            dead.sort_by_key(|(r, _)| r.offset);
            self.dead_letter(dead).await?;
        }
        self.stats.set_acked(self.partition, f.end);
        Ok(true)
    }

    /// Filter and projection of one record.
    fn route(&self, r: &StoredRecord) -> Routed {
        let (outcome, Routable { id, ingested_at, key, .. }) = match transform_record(&self.spec.transforms, &r.value) {
            Ok(routed) => routed,
            Err(e) => return Routed::DeadLetter(format!("the record is not a Keystone envelope: {e}")),
        };
        match outcome {
            Transformed::Deliver(event) => Routed::Deliver(SinkEvent {
                id: id.into_owned(),
                ingested_at,
                key: key.map(Cow::into_owned),
                partition: self.partition,
                offset: r.offset,
                event,
            }),
            Transformed::FilteredOut => {
                self.stats.filtered_out.fetch_add(1, Ordering::Relaxed);
                Routed::Skip
            }
            Transformed::FilterError(e) => {
                self.stats.filter_errors.fetch_add(1, Ordering::Relaxed);
                let why = format!("filter could not evaluate event {id}: {e}");
                // The sample shows the whole event, not just the fields the route parsed.
                let whole = Routable::parse(&r.value, Tree(None)).map_or(Value::Null, |e| e.payload);
                self.stats.record_error_with_sample(why, &whole);
                Routed::Skip
            }
        }
    }

    /// Delivers a batch, retrying transient failures with backoff until it goes through.
    /// Returns the events the sink refused for good, or `None` if cancelled while retrying.
    async fn deliver(&self, batch: &[SinkEvent]) -> Refusals {
        let mut attempt = 0u32;
        loop {
            let started = std::time::Instant::now();
            let outcome = self.sink.deliver(batch).await;
            let took = started.elapsed();
            if let Err(e) = &outcome {
                self.stats.sink_errors[e.kind() as usize].fetch_add(1, Ordering::Relaxed);
            }
            let refused = match outcome {
                Ok(()) => Vec::new(),
                Err(SinkError::Rejected(refused)) => refused,
                Err(SinkError::Transient { message: why, .. }) => {
                    self.stats.failing.store(true, Ordering::Relaxed);
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    self.stats.record_error(format!("partition {}: {why}", self.partition));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(attempt)) => {}
                        _ = self.cancel.cancelled() => return None,
                    }
                    attempt += 1;
                    continue;
                }
            };
            self.stats.failing.store(false, Ordering::Relaxed);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            self.stats.delivered.fetch_add((batch.len() - refused.len()) as u64, Ordering::Relaxed);
            let bytes: u64 = batch.iter().map(|e| e.event.get().len() as u64).sum();
            self.stats.bytes_out.fetch_add(bytes, Ordering::Relaxed);
            let now = crate::now_ms();
            let mut latency = self.stats.latency.lock().expect("stats lock");
            latency.record_request(took, batch.len());
            // Refused events are not delivered: their latency is the dead-letter queue's business.
            let refused_at: Vec<usize> = refused.iter().map(|(i, _)| *i).collect();
            for (_, e) in batch.iter().enumerate().filter(|(i, _)| !refused_at.contains(i)) {
                latency.record_end_to_end(now - e.ingested_at);
            }
            drop(latency);
            return Some(refused);
        }
    }

    /// Appends refused events, with the reason, to the route's dead-letter queue; durably, before
    /// their offsets can be acknowledged.
    async fn dead_letter(&self, dead: Vec<(StoredRecord, String)>) -> Result<(), JobError> {
        let now = crate::now_ms();
        let count = dead.len() as u64;
        let records = dead
            .into_iter()
            .map(|(r, reason)| {
                let original: Value = serde_json::from_slice(&r.value)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.value).into_owned()));
                let letter = json!({
                    "route": self.spec.route,
                    "reason": reason,
                    "partition": self.partition,
                    "offset": r.offset,
                    "failed_at": now,
                    "envelope": original,
                });
                NewRecord { partition: 0, timestamp_ms: now, key: r.key, value: letter.to_string().into_bytes() }
            })
            .collect();
        self.log.append(&self.spec.dead_letter_topic, records).await.map_err(JobError::DeadLetter)?;
        self.stats.dead_lettered.fetch_add(count, Ordering::Relaxed);
        self.stats
            .record_error(format!("partition {}: {count} event(s) sent to the dead-letter queue", self.partition));
        Ok(())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transforms(filter: Option<&str>, keep: &[&str], rename: &[(&str, &str)], mask: &[&str]) -> Transforms {
        let projection = keystone_control::Projection {
            keep: keep.iter().map(|k| k.to_string()).collect(),
            rename: rename.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            mask: mask.iter().map(|k| k.to_string()).collect(),
            ..Default::default()
        };
        Transforms::compile(filter, &projection, "alpha").unwrap()
    }

    #[test]
    fn a_route_keeping_some_fields_parses_only_what_it_reads_and_delivers_the_same() {
        let event = r#"{"country":"BR","bitrate":4800,"user":{"id":7,"email":"a@b.c"},"session":"x","skipped":[1,{"deep":null}]}"#;
        // The last column: whether, without masking, the route can work on fields as sent.
        let cases = [
            (
                Some("event.bitrate > 3000"),
                &["country", "user.email"][..],
                &[("country", "where")][..],
                Some(vec!["bitrate", "country", "user"]),
                false,
            ),
            (None, &["user.id"][..], &[][..], Some(vec!["user"]), false),
            (Some("event.bitrate > 3000"), &[][..], &[][..], None, true),
            (Some("size(event) > 2"), &["country"][..], &[][..], None, false),
            (
                Some("event.bitrate > 3000"),
                &["session", "country"][..],
                &[("country", "where")][..],
                Some(vec!["bitrate", "session", "country"]),
                true,
            ),
        ];
        for (filter, keep, rename, reads, copies) in cases {
            let t = transforms(filter, keep, rename, &["user.email"]);
            assert!(!t.copies_fields(), "masking needs the tree");
            assert_eq!(
                t.reads,
                reads.map(|r| r.into_iter().map(String::from).collect::<Vec<_>>()),
                "{filter:?} {keep:?}"
            );
            let record = format!(
                r#"{{"id":"e1","stream":"alpha/plays","ingested_at":5,"key":null,"headers":{{"h":"x"}},"payload":{event}}}"#
            );
            let envelope = Routable::parse(record.as_bytes(), Tree(t.reads())).unwrap();
            assert_eq!((envelope.id.as_ref(), envelope.ingested_at, envelope.key), ("e1", 5, None));
            let delivered = |t: Transformed| match t {
                Transformed::Deliver(v) => v.get().to_owned(),
                _ => panic!("delivered"),
            };
            let partial = delivered(t.transform(envelope.payload));
            let full = delivered(t.transform(serde_json::from_str(event).unwrap()));
            assert_eq!(partial, full, "{filter:?} {keep:?}");
            // Without masking, fields as sent give the same event (nested objects keep the key
            // order they were sent in, so compared as trees).
            let plain = transforms(filter, keep, rename, &[]);
            assert_eq!(plain.copies_fields(), copies, "{filter:?} {keep:?}");
            if plain.copies_fields() {
                let fields = Routable::parse(record.as_bytes(), RawFieldsSeed(plain.reads())).unwrap().payload;
                let copied = delivered(plain.transform_fields(fields).unwrap());
                let tree = delivered(plain.transform(serde_json::from_str(event).unwrap()));
                assert_eq!(
                    serde_json::from_str::<Value>(&copied).unwrap(),
                    serde_json::from_str::<Value>(&tree).unwrap()
                );
            }
        }
    }
}
