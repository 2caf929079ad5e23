//! The durable, partitioned log: one topic per stream. Kept behind the [`Log`] trait, so the
//! embedded log and the Kafka backend serve routes and sinks alike.

pub mod codec;
pub mod embedded;
pub mod group;
pub mod kafka;
mod kafka_config;
mod recovery;
pub mod storage;
pub mod topic_config;

pub use codec::StoredRecord;
pub use embedded::EmbeddedLog;
pub use kafka::{KafkaConfig, KafkaLog};

use std::future::Future;

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest retained record.
    Earliest,
    /// The next record to be appended.
    Latest,
    /// A given offset (clamped to what is retained).
    Offset(u64),
    /// The first record stamped at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// A record to append; the log assigns its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    pub partition: u32,
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

/// How much a topic keeps. Whole segments are dropped once every record in them is too old, or
/// while a partition is over its size cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age_ms: i64,
    pub max_bytes_per_partition: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The topic was never created.
    #[error("no topic {0:?}")]
    UnknownTopic(String),
    /// The partition number is out of range.
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition { topic: String, partition: u32 },
    /// The offset was already removed by retention.
    #[error("offset {requested} is no longer retained; the earliest is {earliest}")]
    OffsetOutOfRange { requested: u64, earliest: u64 },
    /// The disk is full: nothing of the failed append was kept; retry later.
    #[error("the log is out of disk space")]
    Full,
    /// Reading or writing the log's files failed.
    #[error("log I/O failed")]
    Io(#[from] std::io::Error),
    /// An fsync failed: what the disk holds is unknown (the page cache may have dropped the
    /// failed pages), so the partition takes no more writes until the process restarts and
    /// re-verifies its files.
    #[error("partition {0} refuses writes since an fsync failed; restart the process to re-verify its files")]
    Poisoned(String),
    /// A stored record does not decode (its checksum fails). Records after it are kept; a reader
    /// stops here until an operator restores the file or moves the reader past the record.
    #[error("topic {topic:?} partition {partition}: the stored record at offset {offset} is corrupt; later records are kept")]
    Corrupt { topic: String, partition: u32, offset: u64 },
    /// The log is shutting down.
    #[error("the log is shut down")]
    Closed,
    /// A remote log (a Kafka cluster) did not answer in time or refused the request.
    #[error("the log is unavailable: {0}")]
    Unavailable(String),
}

/// What a log backend offers the data plane.
pub trait Log: Send + Sync + 'static {
    /// Creates a topic, or grows its partition count and updates its retention.
    fn ensure_topic(
        &self,
        topic: &str,
        partitions: u32,
        retention: Retention,
    ) -> impl Future<Output = Result<(), LogError>> + Send;

    /// Appends records durably: when this returns `Ok`, every record is on disk (fsync), and the
    /// result holds each record's `(partition, offset)` in input order. On `Err` no record of a
    /// partition whose write failed was kept.
    fn append(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> impl Future<Output = Result<Vec<(u32, u64)>, LogError>> + Send;

    /// Up to `max_records` records of one partition, from offset `from`, in offset order. Empty
    /// when `from` is the end.
    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
    ) -> impl Future<Output = Result<Vec<StoredRecord>, LogError>> + Send;

    /// The offset a reader starting at `at` reads first.
    fn resolve(&self, topic: &str, partition: u32, at: StartAt) -> impl Future<Output = Result<u64, LogError>> + Send;

    /// A watch on the partition's end offset (the next offset to be written), for tailing readers.
    fn watch_end(&self, topic: &str, partition: u32) -> Result<tokio::sync::watch::Receiver<u64>, LogError>;

    /// The end offset of every partition of a topic, i.e. the records ever appended to each; empty
    /// when the topic does not exist. Its length is the partition count.
    fn end_offsets(&self, topic: &str) -> Vec<u64> {
        (0u32..).map_while(|p| self.watch_end(topic, p).ok().map(|w| *w.borrow())).collect()
    }
}

/// The log a process runs on, chosen by configuration: routes, sinks and the console use it
/// through [`Log`] and never see which.
pub enum AnyLog {
    Embedded(EmbeddedLog),
    Kafka(KafkaLog),
}

impl AnyLog {
    /// Every topic with its partition count and retention (the reconciler's observed state).
    pub fn topics(&self) -> Vec<(String, u32, Retention)> {
        match self {
            AnyLog::Embedded(l) => l.topics(),
            AnyLog::Kafka(l) => l.topics(),
        }
    }

    /// Bytes a topic holds, where this process can know it (the embedded log's files).
    pub fn topic_bytes(&self, topic: &str) -> Option<u64> {
        match self {
            AnyLog::Embedded(l) => Some(l.topic_bytes(topic)),
            AnyLog::Kafka(_) => None,
        }
    }

    /// Why the platform could not apply a topic's settings on the cluster, if so.
    pub fn topic_problem(&self, topic: &str) -> Option<String> {
        match self {
            AnyLog::Embedded(_) => None,
            AnyLog::Kafka(l) => l.topic_problem(topic),
        }
    }

    /// fsyncs issued by the embedded log's group commit.
    pub fn fsync_count(&self) -> Option<u64> {
        match self {
            AnyLog::Embedded(l) => Some(l.fsync_count()),
            AnyLog::Kafka(_) => None,
        }
    }

    /// Joins a route job's consumer group (see `group`); only the Kafka backend has groups.
    pub fn join_group(
        &self,
        group: &str,
        topic: &str,
        session_timeout: std::time::Duration,
    ) -> Result<group::Membership, LogError> {
        match self {
            AnyLog::Embedded(_) => {
                Err(LogError::Unavailable("sharing jobs between workers needs streams on Kafka".into()))
            }
            AnyLog::Kafka(l) => l.join_group(group, topic, session_timeout),
        }
    }

    /// Removes a topic and everything in it (a deleted stream's, once its retention has run out).
    pub async fn delete_topic(&self, topic: &str) -> Result<(), LogError> {
        match self {
            AnyLog::Embedded(l) => l.delete_topic(topic).await,
            AnyLog::Kafka(l) => l.delete_topic(topic).await,
        }
    }

    /// Drops what retention no longer keeps; Kafka brokers enforce retention themselves.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<usize, LogError> {
        match self {
            AnyLog::Embedded(l) => l.enforce_retention(now_ms),
            AnyLog::Kafka(_) => Ok(0),
        }
    }
}

impl Log for AnyLog {
    async fn ensure_topic(&self, topic: &str, partitions: u32, retention: Retention) -> Result<(), LogError> {
        match self {
            AnyLog::Embedded(l) => l.ensure_topic(topic, partitions, retention).await,
            AnyLog::Kafka(l) => l.ensure_topic(topic, partitions, retention).await,
        }
    }

    async fn append(&self, topic: &str, records: Vec<NewRecord>) -> Result<Vec<(u32, u64)>, LogError> {
        match self {
            AnyLog::Embedded(l) => l.append(topic, records).await,
            AnyLog::Kafka(l) => l.append(topic, records).await,
        }
    }

    async fn read(&self, topic: &str, partition: u32, from: u64, max: usize) -> Result<Vec<StoredRecord>, LogError> {
        match self {
            AnyLog::Embedded(l) => l.read(topic, partition, from, max).await,
            AnyLog::Kafka(l) => l.read(topic, partition, from, max).await,
        }
    }

    async fn resolve(&self, topic: &str, partition: u32, at: StartAt) -> Result<u64, LogError> {
        match self {
            AnyLog::Embedded(l) => l.resolve(topic, partition, at).await,
            AnyLog::Kafka(l) => l.resolve(topic, partition, at).await,
        }
    }

    fn watch_end(&self, topic: &str, partition: u32) -> Result<tokio::sync::watch::Receiver<u64>, LogError> {
        match self {
            AnyLog::Embedded(l) => l.watch_end(topic, partition),
            AnyLog::Kafka(l) => l.watch_end(topic, partition),
        }
    }
}
