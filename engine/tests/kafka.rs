//! The Kafka backend of the log against librdkafka's mock cluster (three brokers inside the test
//! process, real Kafka protocol on loopback sockets, fault injection). The mock broker has no
//! CreateTopics API, so topics are created on the cluster and the log runs with
//! `manage_topics: false`, as it does where a platform team owns the topics.

use keystone_engine::log::{KafkaConfig, KafkaLog, Log, LogError, NewRecord, Retention, StartAt};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use std::time::Duration;

const KEEP: Retention = Retention { max_age_ms: i64::MAX, max_bytes_per_partition: None };

fn cluster(topics: &[(&str, i32)]) -> (MockCluster<'static, DefaultProducerContext>, KafkaConfig) {
    let cluster = MockCluster::new(3).unwrap();
    for (topic, partitions) in topics {
        cluster.create_topic(topic, *partitions, 3).unwrap();
    }
    let mut config = KafkaConfig::new(cluster.bootstrap_servers());
    config.manage_topics = false;
    config.request_timeout = Duration::from_secs(3);
    (cluster, config)
}

fn rec(partition: u32, ts: i64, value: &str) -> NewRecord {
    NewRecord {
        partition,
        timestamp_ms: ts,
        key: Some(format!("k{ts}").into_bytes()),
        value: value.as_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_get_dense_offsets_and_read_back_from_any_start() {
    let (_cluster, config) = cluster(&[("alpha.plays", 3)]);
    let log = KafkaLog::connect(config).unwrap();
    log.ensure_topic("alpha.plays", 3, KEEP).await.unwrap();
    let records: Vec<NewRecord> = (0..30).map(|i| rec(i % 3, 1_000 + i64::from(i), &format!("v{i}"))).collect();
    let placed = log.append("alpha.plays", records).await.unwrap();
    // Input order kept; offsets dense per partition.
    assert_eq!(placed[..4], [(0, 0), (1, 0), (2, 0), (0, 1)]);
    assert_eq!(placed[29], (2, 9));
    assert_eq!(*log.watch_end("alpha.plays", 1).unwrap().borrow(), 10);
    assert_eq!(log.end_offsets("alpha.plays"), [10, 10, 10]);

    let read = log.read("alpha.plays", 1, 0, 100).await.unwrap();
    assert_eq!(read.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    assert_eq!((read[2].value.as_slice(), read[2].timestamp_ms), (b"v7".as_slice(), 1_007));
    assert_eq!(read[2].key.as_deref(), Some(b"k1007".as_slice()));
    // A read from the middle, a bounded read, and a read at the end.
    let mid = log.read("alpha.plays", 1, 4, 3).await.unwrap();
    assert_eq!(mid.iter().map(|r| r.offset).collect::<Vec<_>>(), [4, 5, 6]);
    assert!(log.read("alpha.plays", 1, 10, 5).await.unwrap().is_empty());
    // A reader at the end picks up what is appended next (a tailing job).
    log.append("alpha.plays", vec![rec(1, 2_000, "later")]).await.unwrap();
    let later = log.read("alpha.plays", 1, 10, 5).await.unwrap();
    assert_eq!(later.iter().map(|r| (r.offset, r.value.as_slice())).collect::<Vec<_>>(), [(10, b"later".as_slice())]);

    assert_eq!(log.resolve("alpha.plays", 0, StartAt::Earliest).await.unwrap(), 0);
    assert_eq!(log.resolve("alpha.plays", 0, StartAt::Latest).await.unwrap(), 10);
    assert_eq!(log.resolve("alpha.plays", 0, StartAt::Offset(99)).await.unwrap(), 10);
    assert_eq!(log.resolve("alpha.plays", 0, StartAt::Offset(3)).await.unwrap(), 3);
    // A time after every record resolves to the end. (The mock broker answers no other lookup by
    // time: its ListOffsets handler knows only earliest and latest.)
    assert_eq!(log.resolve("alpha.plays", 0, StartAt::Timestamp(9_999)).await.unwrap(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmanaged_topics_must_exist_with_enough_partitions() {
    let (_cluster, config) = cluster(&[("alpha.small", 2)]);
    let log = KafkaLog::connect(config).unwrap();
    assert!(matches!(log.ensure_topic("alpha.missing", 1, KEEP).await, Err(LogError::UnknownTopic(_))));
    let err = log.ensure_topic("alpha.small", 4, KEEP).await.unwrap_err().to_string();
    assert!(err.contains("has 2 partitions, the stream declares 4"), "{err}");
    log.ensure_topic("alpha.small", 2, KEEP).await.unwrap();
    assert!(matches!(log.append("alpha.small", vec![rec(5, 1, "x")]).await, Err(LogError::UnknownPartition { .. })));
    assert!(matches!(log.append("alpha.nope", vec![rec(0, 1, "x")]).await, Err(LogError::UnknownTopic(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_appends_move_the_end_a_reader_watches() {
    let (_cluster, config) = cluster(&[("alpha.plays", 1)]);
    let reader = KafkaLog::connect(config.clone()).unwrap();
    let writer = KafkaLog::connect(config).unwrap();
    reader.ensure_topic("alpha.plays", 1, KEEP).await.unwrap();
    writer.ensure_topic("alpha.plays", 1, KEEP).await.unwrap();
    let mut end = reader.watch_end("alpha.plays", 0).unwrap();
    writer.append("alpha.plays", (0..5).map(|i| rec(0, i, "w")).collect()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), end.wait_for(|e| *e == 5)).await.expect("end moved").unwrap();
    assert_eq!(reader.read("alpha.plays", 0, 0, 10).await.unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_broker_down_an_append_fails_and_afterwards_nothing_was_lost() {
    let (cluster, config) = cluster(&[("alpha.plays", 1)]);
    let log = KafkaLog::connect(config).unwrap();
    log.ensure_topic("alpha.plays", 1, KEEP).await.unwrap();
    log.append("alpha.plays", vec![rec(0, 1, "before")]).await.unwrap();
    for b in 1..=3 {
        cluster.broker_down(b).unwrap();
    }
    let down = log.append("alpha.plays", vec![rec(0, 2, "during")]).await;
    assert!(matches!(down, Err(LogError::Unavailable(_))), "{down:?}");
    for b in 1..=3 {
        cluster.broker_up(b).unwrap();
    }
    // A failed append may still have been kept (the caller retries; duplicates, never loss).
    // The client reconnects with backoff: retry as a producer does on a 503.
    let mut after = Vec::new();
    for _ in 0..10 {
        match log.append("alpha.plays", vec![rec(0, 3, "after")]).await {
            Ok(placed) => {
                after = placed;
                break;
            }
            Err(e) => assert!(matches!(e, LogError::Unavailable(_)), "{e:?}"),
        }
    }
    let values: Vec<Vec<u8>> = log.read("alpha.plays", 0, 0, 10).await.unwrap().into_iter().map(|r| r.value).collect();
    assert_eq!(values.first().map(Vec::as_slice), Some(b"before".as_slice()));
    assert_eq!(values.last().map(Vec::as_slice), Some(b"after".as_slice()));
    assert_eq!(after[0].1 as usize, values.len() - 1, "the acknowledged offset is the record's");
}
