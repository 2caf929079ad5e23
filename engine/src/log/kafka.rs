//! The Kafka backend of the [`Log`] trait: any Apache Kafka protocol cluster (Apache Kafka,
//! Redpanda, ...) through rdkafka, the Rust binding of librdkafka, the client most Kafka tools are
//! built on (idempotent producer, consumer groups, transactions, every broker quirk handled).
//!
//! - Appends are produced with `acks=all` and idempotence: `Ok` means every in-sync replica has
//!   the records, and retries can neither duplicate nor reorder them within a partition.
//! - Reads are positioned (assign + offset), as the embedded log's: a job keeps its checkpoints
//!   in the source of truth and reads each partition from where it stopped. Readers are pooled
//!   per partition, and one that is already positioned where a read starts is reused, so a
//!   tailing job costs no seek.
//! - End offsets are watched: our own appends move them at once; a background task polls the
//!   cluster's high watermarks for what other processes append.
//! - Topics: with `manage_topics` (the default) `ensure_topic` creates a missing topic with its
//!   partitions and retention, adds partitions, and alters a changed retention; without it (a
//!   platform team owns the topics) it only checks that the topic exists with enough partitions.
//!   A topic deleted on the cluster is noticed by the poller and recreated by the reconciler.
//!
//! Unlike the embedded log, a failed multi-partition append may have kept the records of some
//! partitions: a producer retrying after an error can duplicate them, never lose them.

pub use super::kafka_config::KafkaConfig;
use super::{Log, LogError, NewRecord, Retention, StartAt, StoredRecord};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One positioned reader of one partition.
struct Reader {
    consumer: BaseConsumer,
    /// The offset its next message has, when positioned.
    next: Option<u64>,
}

/// The readers of one partition.
type ReaderPool = Vec<Arc<Mutex<Reader>>>;

struct Inner {
    config: KafkaConfig,
    producer: FutureProducer,
    /// For metadata and watermarks.
    meta: BaseConsumer,
    admin: AdminClient<DefaultClientContext>,
    /// Known topics: the end watch of each partition.
    topics: RwLock<HashMap<String, Arc<Vec<watch::Sender<u64>>>>>,
    /// The retention last applied to (or, unmanaged, asked of) each topic.
    retention: Mutex<HashMap<String, Retention>>,
    readers: Mutex<HashMap<(String, u32), ReaderPool>>,
    /// Per topic, why its settings could not be applied.
    problems: Mutex<HashMap<String, String>>,
}

pub struct KafkaLog {
    inner: Arc<Inner>,
}

fn unavailable(e: KafkaError) -> LogError {
    LogError::Unavailable(e.to_string())
}

impl KafkaLog {
    /// Connects (lazily: no request is made until the first operation) and starts the watermark
    /// poller. Must be called inside a Tokio runtime.
    pub fn connect(config: KafkaConfig) -> Result<KafkaLog, LogError> {
        let mut producer = config.client();
        producer
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // Small batches leave at once; the ingest proxy already batches per request.
            .set("linger.ms", "2")
            .set("message.timeout.ms", config.request_timeout.as_millis().to_string());
        let producer: FutureProducer = producer.create().map_err(unavailable)?;
        let meta: BaseConsumer = config.client().set("group.id", "keystone-metadata").create().map_err(unavailable)?;
        let admin = config.client().create().map_err(unavailable)?;
        let inner = Arc::new(Inner {
            config,
            producer,
            meta,
            admin,
            topics: RwLock::new(HashMap::new()),
            retention: Mutex::new(HashMap::new()),
            readers: Mutex::new(HashMap::new()),
            problems: Mutex::new(HashMap::new()),
        });
        tokio::spawn(poll_watermarks(Arc::downgrade(&inner)));
        Ok(KafkaLog { inner })
    }

    /// Joins the consumer group `group` on `topic` (see `group`): how several processes share
    /// one route's job.
    pub fn join_group(
        &self,
        group: &str,
        topic: &str,
        session_timeout: Duration,
    ) -> Result<super::group::Membership, LogError> {
        super::group::join(&self.inner.config, group, topic, session_timeout)
    }

    /// Every topic this log serves, with its partition count and retention: what the
    /// reconciler observes. A topic deleted on the cluster drops out (the watermark poller
    /// notices), so the reconciler creates it again from the goal state.
    pub fn topics(&self) -> Vec<(String, u32, Retention)> {
        let retention = self.inner.retention.lock().expect("retention lock");
        let mut out: Vec<(String, u32, Retention)> = self
            .inner
            .topics
            .read()
            .expect("topics lock")
            .iter()
            .filter_map(|(t, ends)| retention.get(t).map(|r| (t.clone(), ends.len() as u32, *r)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Deletes a managed topic on the cluster (never one the platform does not manage).
    pub async fn delete_topic(&self, topic: &str) -> Result<(), LogError> {
        if !self.inner.config.manage_topics {
            return Err(LogError::Unavailable(format!("topic {topic} is not managed by the platform; not deleted")));
        }
        let opts = AdminOptions::new().operation_timeout(Some(self.inner.config.request_timeout));
        for r in self.inner.admin.delete_topics(&[topic], &opts).await.map_err(unavailable)? {
            if let Err((_, code)) = r {
                return Err(LogError::Unavailable(format!("deleting {topic}: {code}")));
            }
        }
        self.inner.topics.write().expect("topics lock").remove(topic);
        self.inner.retention.lock().expect("retention lock").remove(topic);
        Ok(())
    }

    /// Brings a managed topic's retention to `retention` on the cluster, reading its configs
    /// first (see `topic_config`).
    async fn apply_retention(&self, topic: &str, retention: Retention) -> Result<(), LogError> {
        use super::topic_config::{plan_config_change, ConfigChange, Described};
        let opts = AdminOptions::new().operation_timeout(Some(self.inner.config.request_timeout));
        let resource = ResourceSpecifier::Topic(topic);
        let described = self.inner.admin.describe_configs([&resource], &opts).await.map_err(unavailable)?;
        let config = match described.into_iter().next() {
            Some(Ok(c)) => c,
            Some(Err(code)) => return Err(LogError::Unavailable(format!("reading the configs of {topic}: {code}"))),
            None => return Err(LogError::Unavailable(format!("reading the configs of {topic}: no answer"))),
        };
        let described: Vec<Described> = config
            .entries
            .into_iter()
            .map(|e| Described {
                dynamic_topic: e.source == rdkafka::admin::ConfigSource::DynamicTopic,
                name: e.name,
                value: e.value,
                sensitive: e.is_sensitive,
            })
            .collect();
        let wanted = retention_configs(retention);
        let all = match plan_config_change(&described, &wanted) {
            ConfigChange::Nothing => return Ok(()),
            ConfigChange::Refuse(why) => return Err(LogError::Unavailable(why)),
            ConfigChange::Replace(all) => all,
        };
        let change = all.iter().fold(AlterConfig::new(resource), |c, (k, v)| c.set(k, v));
        for r in self.inner.admin.alter_configs(&[change], &opts).await.map_err(unavailable)? {
            if let Err((_, code)) = r {
                return Err(LogError::Unavailable(format!("setting the retention of {topic}: {code}")));
            }
        }
        Ok(())
    }

    /// Why the platform could not bring a topic's settings in line, if it could not (reported on
    /// the stream; appends go on regardless).
    pub fn topic_problem(&self, topic: &str) -> Option<String> {
        self.inner.problems.lock().expect("problems lock").get(topic).cloned()
    }

    /// The partition count of a topic on the cluster, `None` when it does not exist.
    async fn partition_count(&self, topic: &str) -> Result<Option<u32>, LogError> {
        let inner = self.inner.clone();
        let topic = topic.to_owned();
        blocking(move || {
            let md = inner.meta.fetch_metadata(Some(&topic), inner.config.request_timeout).map_err(unavailable)?;
            Ok(md.topics().iter().find(|t| t.name() == topic).and_then(|t| match t.error() {
                None if !t.partitions().is_empty() => Some(t.partitions().len() as u32),
                _ => None,
            }))
        })
        .await
    }

    fn ends(&self, topic: &str) -> Result<Arc<Vec<watch::Sender<u64>>>, LogError> {
        self.inner
            .topics
            .read()
            .expect("topics lock")
            .get(topic)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic(topic.to_owned()))
    }

    /// Registers a topic's partitions, each watch starting at its current high watermark.
    async fn register(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        let known = self.inner.topics.read().expect("topics lock").get(topic).map(|e| e.len() as u32);
        if known == Some(partitions) {
            return Ok(());
        }
        let mut ends = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            ends.push(watch::Sender::new(self.watermarks(topic, p).await?.1));
        }
        self.inner.topics.write().expect("topics lock").insert(topic.to_owned(), Arc::new(ends));
        Ok(())
    }

    async fn watermarks(&self, topic: &str, partition: u32) -> Result<(u64, u64), LogError> {
        let inner = self.inner.clone();
        let topic = topic.to_owned();
        blocking(move || inner.watermarks(&topic, partition)).await
    }
}

impl Inner {
    fn watermarks(&self, topic: &str, partition: u32) -> Result<(u64, u64), LogError> {
        let (low, high) =
            self.meta.fetch_watermarks(topic, partition as i32, self.config.request_timeout).map_err(unavailable)?;
        Ok((low.max(0) as u64, high.max(0) as u64))
    }

    /// A reader of the partition, preferably one already positioned at `from`.
    fn reader(&self, topic: &str, partition: u32, from: u64) -> Result<Arc<Mutex<Reader>>, LogError> {
        let mut all = self.readers.lock().expect("readers lock");
        let pool = all.entry((topic.to_owned(), partition)).or_default();
        let idle = |r: &&Arc<Mutex<Reader>>| r.try_lock().is_ok();
        if let Some(r) = pool.iter().filter(idle).find(|r| r.lock().expect("reader").next == Some(from)) {
            return Ok(r.clone());
        }
        if let Some(r) = pool.iter().find(idle) {
            return Ok(r.clone());
        }
        let consumer: BaseConsumer = self
            .config
            .client()
            .set("group.id", "keystone-readers")
            .set("enable.auto.commit", "false")
            // Reading below the retained range is an error the job handles, not a silent jump.
            .set("auto.offset.reset", "error")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "50")
            .create()
            .map_err(unavailable)?;
        let r = Arc::new(Mutex::new(Reader { consumer, next: None }));
        pool.push(r.clone());
        Ok(r)
    }

    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: usize,
        end: u64,
    ) -> Result<Vec<StoredRecord>, LogError> {
        let reader = self.reader(topic, partition, from)?;
        let mut reader = reader.lock().expect("reader lock");
        if reader.next != Some(from) {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, partition as i32, Offset::Offset(from as i64)).map_err(unavailable)?;
            reader.consumer.assign(&tpl).map_err(unavailable)?;
            reader.next = Some(from);
        }
        let mut out = Vec::new();
        // Wait for what is known to exist (the first fetch after a seek takes a round trip);
        // return soon when at the end.
        let patience = if from < end { self.config.request_timeout } else { Duration::from_millis(20) };
        let deadline = Instant::now() + patience;
        while out.len() < max {
            let left = deadline.saturating_duration_since(Instant::now());
            // Once records came, wait briefly for more only while more are known to exist.
            let wait = match reader.next {
                _ if out.is_empty() => left,
                Some(next) if next < end => left.min(Duration::from_millis(100)),
                _ => Duration::ZERO,
            };
            match reader.consumer.poll(wait) {
                None => break,
                Some(Ok(m)) => {
                    let offset = m.offset() as u64;
                    out.push(StoredRecord {
                        offset,
                        timestamp_ms: m.timestamp().to_millis().unwrap_or_default(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().unwrap_or_default().to_vec(),
                    });
                    reader.next = Some(offset + 1);
                }
                // An end-of-partition event can be stale (queued before the latest appends):
                // it ends the read only once the reader is where the known end is.
                Some(Err(KafkaError::PartitionEOF(_))) if reader.next.unwrap_or(from) >= end || !out.is_empty() => {
                    break
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange,
                ))) => {
                    reader.next = None;
                    let (earliest, _) = self.watermarks(topic, partition)?;
                    return Err(LogError::OffsetOutOfRange { requested: from, earliest });
                }
                Some(Err(e)) => {
                    reader.next = None;
                    return Err(unavailable(e));
                }
            }
            if out.is_empty() && Instant::now() >= deadline {
                break;
            }
        }
        if out.is_empty() && from < end {
            // Records known to exist did not arrive: fail (the job restarts) rather than wait for
            // an append that may never come.
            reader.next = None;
            return Err(LogError::Unavailable(format!("{topic}/{partition}: offset {from} did not arrive in time")));
        }
        Ok(out)
    }
}

/// A topic's retention as Kafka topic configs (`-1`: no size cap).
fn retention_configs(r: Retention) -> [(&'static str, String); 2] {
    [
        ("retention.ms", r.max_age_ms.to_string()),
        ("retention.bytes", r.max_bytes_per_partition.map_or("-1".to_owned(), |b| b.to_string())),
    ]
}

/// Runs blocking librdkafka calls off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, LogError> + Send + 'static) -> Result<T, LogError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| LogError::Unavailable(format!("Kafka call panicked: {e}")))?
}

/// Moves end watches to the cluster's high watermarks, for appends by other processes, until the
/// log is dropped.
async fn poll_watermarks(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let interval = strong.config.watermark_interval;
        let _ = tokio::task::spawn_blocking(move || {
            let topics: Vec<(String, Arc<Vec<watch::Sender<u64>>>)> =
                strong.topics.read().expect("topics lock").iter().map(|(t, e)| (t.clone(), e.clone())).collect();
            if topics.is_empty() {
                return;
            }
            // One metadata request for the whole cluster; none answered means none judged gone.
            let on_cluster: Option<std::collections::HashSet<String>> =
                strong.meta.fetch_metadata(None, strong.config.request_timeout).ok().map(|md| {
                    md.topics()
                        .iter()
                        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                        .map(|t| t.name().to_owned())
                        .collect()
                });
            for (topic, ends) in topics {
                if on_cluster.as_ref().is_some_and(|names| !names.contains(&topic)) {
                    // Deleted on the cluster: forget it, so the reconciler recreates it.
                    tracing::warn!(topic = %topic, "Topic missing on the Kafka cluster.");
                    strong.topics.write().expect("topics lock").remove(&topic);
                    strong.retention.lock().expect("retention lock").remove(&topic);
                    continue;
                }
                for (p, end) in ends.iter().enumerate() {
                    if let Ok((_, high)) = strong.watermarks(&topic, p as u32) {
                        end.send_if_modified(|e| std::mem::replace(e, high.max(*e)) < high);
                    }
                }
            }
        })
        .await;
        tokio::time::sleep(interval).await;
    }
}

impl Log for KafkaLog {
    async fn ensure_topic(&self, topic: &str, partitions: u32, retention: Retention) -> Result<(), LogError> {
        let existing = self.partition_count(topic).await?;
        if self.inner.config.manage_topics {
            let opts = AdminOptions::new().operation_timeout(Some(self.inner.config.request_timeout));
            match existing {
                None => {
                    let [(k1, v1), (k2, v2)] = retention_configs(retention);
                    let new = NewTopic::new(
                        topic,
                        partitions as i32,
                        TopicReplication::Fixed(self.inner.config.replication_factor),
                    )
                    .set(k1, &v1)
                    .set(k2, &v2);
                    let results = self.inner.admin.create_topics(&[new], &opts).await.map_err(unavailable)?;
                    for r in results {
                        match r {
                            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                            Err((t, code)) => return Err(LogError::Unavailable(format!("creating topic {t}: {code}"))),
                        }
                    }
                }
                Some(n) if n < partitions => {
                    let more = NewPartitions::new(topic, partitions as usize);
                    let results = self.inner.admin.create_partitions(&[more], &opts).await.map_err(unavailable)?;
                    for r in results {
                        if let Err((t, code)) = r {
                            return Err(LogError::Unavailable(format!("adding partitions to {t}: {code}")));
                        }
                    }
                }
                Some(_) => {}
            }
            let applied = self.inner.retention.lock().expect("retention lock").get(topic).copied();
            if existing.is_some() && applied != Some(retention) {
                // Optional: a broker that cannot describe or alter configs (tansu answers
                // UnsupportedFeature) must not stop appends or the reconciliation of the rest.
                let mut problems = None;
                if let Err(e) = self.apply_retention(topic, retention).await {
                    tracing::warn!(topic, error = %e, "Could not set the topic's retention; the stream keeps working.");
                    problems = Some(format!("retention not applied on the cluster: {e}"));
                }
                let mut all = self.inner.problems.lock().expect("problems lock");
                match problems {
                    Some(p) => all.insert(topic.to_owned(), p),
                    None => all.remove(topic),
                };
            }
        } else {
            match existing {
                None => return Err(LogError::UnknownTopic(topic.to_owned())),
                Some(n) if n < partitions => {
                    return Err(LogError::Unavailable(format!(
                        "topic {topic} has {n} partitions, the stream declares {partitions}, and topics are managed \
                         outside Keystone"
                    )))
                }
                Some(_) => {}
            }
        }
        // Wait until the cluster's metadata shows every partition (creation is asynchronous).
        let deadline = Instant::now() + self.inner.config.request_timeout;
        let mut seen = existing;
        loop {
            match seen {
                Some(n) if n >= partitions => {
                    self.register(topic, n).await?;
                    self.inner.retention.lock().expect("retention lock").insert(topic.to_owned(), retention);
                    return Ok(());
                }
                _ if Instant::now() >= deadline => {
                    return Err(LogError::Unavailable(format!("topic {topic} did not appear in time")))
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            seen = self.partition_count(topic).await?;
        }
    }

    async fn append(&self, topic: &str, records: Vec<NewRecord>) -> Result<Vec<(u32, u64)>, LogError> {
        let ends = self.ends(topic)?;
        let mut pending = Vec::with_capacity(records.len());
        for r in &records {
            if r.partition as usize >= ends.len() {
                return Err(LogError::UnknownPartition { topic: topic.to_owned(), partition: r.partition });
            }
            let mut record =
                FutureRecord::to(topic).partition(r.partition as i32).payload(&r.value).timestamp(r.timestamp_ms);
            if let Some(k) = &r.key {
                record = record.key(k);
            }
            let delivery = match self.inner.producer.send_result(record) {
                Ok(d) => d,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => return Err(LogError::Full),
                Err((e, _)) => return Err(unavailable(e)),
            };
            pending.push(delivery);
        }
        let mut out = Vec::with_capacity(pending.len());
        let mut failed = None;
        // Await every delivery, even after a failure, so nothing is left in flight unaccounted.
        for d in pending {
            match d.await {
                Ok(Ok(delivery)) => out.push((delivery.partition as u32, delivery.offset as u64)),
                Ok(Err((e, _))) => failed = failed.or(Some(unavailable(e))),
                Err(_) => failed = failed.or(Some(LogError::Closed)),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        for &(p, o) in &out {
            ends[p as usize].send_if_modified(|e| std::mem::replace(e, (o + 1).max(*e)) <= o);
        }
        Ok(out)
    }

    async fn read(&self, topic: &str, partition: u32, from: u64, max: usize) -> Result<Vec<StoredRecord>, LogError> {
        let end = *self.watch_end(topic, partition)?.borrow();
        let inner = self.inner.clone();
        let topic = topic.to_owned();
        blocking(move || inner.read(&topic, partition, from, max, end)).await
    }

    async fn resolve(&self, topic: &str, partition: u32, at: StartAt) -> Result<u64, LogError> {
        let (low, high) = self.watermarks(topic, partition).await?;
        match at {
            StartAt::Earliest => Ok(low),
            StartAt::Latest => Ok(high),
            StartAt::Offset(o) => Ok(o.clamp(low, high)),
            StartAt::Timestamp(ms) => {
                let inner = self.inner.clone();
                let topic = topic.to_owned();
                blocking(move || {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition_offset(&topic, partition as i32, Offset::Offset(ms)).map_err(unavailable)?;
                    let found = inner.meta.offsets_for_times(tpl, inner.config.request_timeout).map_err(unavailable)?;
                    Ok(match found.find_partition(&topic, partition as i32).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => (o as u64).clamp(low, high),
                        // No record at or after the time: the end.
                        _ => high,
                    })
                })
                .await
            }
        }
    }

    fn watch_end(&self, topic: &str, partition: u32) -> Result<watch::Receiver<u64>, LogError> {
        self.ends(topic)?
            .get(partition as usize)
            .map(watch::Sender::subscribe)
            .ok_or_else(|| LogError::UnknownPartition { topic: topic.to_owned(), partition })
    }
}
