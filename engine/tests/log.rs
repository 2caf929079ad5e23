//! The embedded log against real files: durability, recovery, offsets, group commit, retention;
//! and the Kafka backend against librdkafka's mock cluster.

use keystone_engine::log::embedded::EmbeddedConfig;
use keystone_engine::log::{EmbeddedLog, Log, LogError, NewRecord, Retention, StartAt};
use std::path::PathBuf;
use std::sync::Arc;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn scratch() -> Dir {
    let d = std::env::temp_dir().join(format!("keystone-log-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}
fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    h.finish()
}

#[path = "log/faults.rs"]
mod faults;

const KEEP: Retention = Retention { max_age_ms: i64::MAX, max_bytes_per_partition: None };

fn rec(partition: u32, ts: i64, value: &str) -> NewRecord {
    NewRecord {
        partition,
        timestamp_ms: ts,
        key: Some(format!("k{ts}").into_bytes()),
        value: value.as_bytes().to_vec(),
    }
}

fn small_segments() -> EmbeddedConfig {
    EmbeddedConfig { segment_bytes: 2048, ..Default::default() }
}

#[tokio::test]
async fn offsets_are_dense_per_partition_and_survive_segment_rolls() {
    let dir = scratch();
    let log = EmbeddedLog::open(&dir.0, small_segments()).unwrap();
    log.ensure_topic("plays", 2, KEEP).await.unwrap();
    let mut expected = Vec::new();
    for i in 0..300 {
        let got = log.append("plays", vec![rec(i % 2, i as i64, &format!("event-{i}"))]).await.unwrap();
        expected.push(got[0]);
    }
    for p in 0..2u32 {
        let offs: Vec<u64> = expected.iter().filter(|(pp, _)| *pp == p).map(|(_, o)| *o).collect();
        assert_eq!(offs, (0..150).collect::<Vec<u64>>());
        let all = log.read("plays", p, 0, 1000).await.unwrap();
        assert_eq!(all.len(), 150);
        assert!(all.iter().enumerate().all(|(i, r)| r.offset == i as u64));
        assert_eq!(all[10].value, format!("event-{}", 20 + p).into_bytes());
        // Reading from the middle starts exactly there, across segment boundaries.
        let mid = log.read("plays", p, 97, 5).await.unwrap();
        assert_eq!(mid.iter().map(|r| r.offset).collect::<Vec<_>>(), [97, 98, 99, 100, 101]);
    }
    let segments = std::fs::read_dir(dir.0.join("plays/0")).unwrap().count();
    assert!(segments >= 3, "expected several segments, found {segments}");
    assert!(log.read("plays", 0, 150, 10).await.unwrap().is_empty());
    assert!(matches!(log.read("plays", 7, 0, 1).await, Err(LogError::UnknownPartition { .. })));
    assert!(matches!(log.read("nope", 0, 0, 1).await, Err(LogError::UnknownTopic(_))));
}

#[tokio::test]
async fn a_batch_reports_offsets_in_input_order() {
    let dir = scratch();
    let log = EmbeddedLog::open(&dir.0, EmbeddedConfig::default()).unwrap();
    log.ensure_topic("t", 3, KEEP).await.unwrap();
    let batch = vec![rec(2, 1, "a"), rec(0, 2, "b"), rec(2, 3, "c"), rec(1, 4, "d")];
    assert_eq!(log.append("t", batch).await.unwrap(), [(2, 0), (0, 0), (2, 1), (1, 0)]);
    let p2 = log.read("t", 2, 0, 10).await.unwrap();
    assert_eq!(p2.iter().map(|r| r.value.clone()).collect::<Vec<_>>(), [b"a".to_vec(), b"c".to_vec()]);
    assert_eq!(p2[0].key.as_deref(), Some(&b"k1"[..]));
}

#[tokio::test]
async fn reopening_recovers_everything_and_cuts_a_torn_tail() {
    let dir = scratch();
    {
        let log = EmbeddedLog::open(&dir.0, small_segments()).unwrap();
        log.ensure_topic("plays", 1, KEEP).await.unwrap();
        for i in 0..100 {
            log.append("plays", vec![rec(0, i, &format!("e{i}"))]).await.unwrap();
        }
    }
    // Simulate a crash mid-write: half a record at the end of the active segment.
    let part = dir.0.join("plays/0");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&part).unwrap().map(|e| e.unwrap().path()).collect();
    segs.sort();
    let last = segs.last().unwrap().clone();
    let clean_len = std::fs::metadata(&last).unwrap().len();
    let mut torn = std::fs::read(&last).unwrap();
    torn.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]);
    std::fs::write(&last, &torn).unwrap();

    let log = EmbeddedLog::open(&dir.0, small_segments()).unwrap();
    assert_eq!(std::fs::metadata(&last).unwrap().len(), clean_len, "the torn tail is cut off");
    let all = log.read("plays", 0, 0, 1000).await.unwrap();
    assert_eq!(all.len(), 100);
    assert_eq!(log.resolve("plays", 0, StartAt::Latest).await.unwrap(), 100);
    // Appending continues at the next offset.
    assert_eq!(log.append("plays", vec![rec(0, 100, "after")]).await.unwrap(), [(0, 100)]);
    assert_eq!(log.read("plays", 0, 100, 1).await.unwrap()[0].value, b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs_and_lose_nothing() {
    let dir = scratch();
    let log = Arc::new(EmbeddedLog::open(&dir.0, EmbeddedConfig::default()).unwrap());
    log.ensure_topic("t", 1, KEEP).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..50 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut offs = Vec::new();
            for i in 0..20 {
                offs.push(log.append("t", vec![rec(0, i, &format!("{w}-{i}"))]).await.unwrap()[0].1);
            }
            offs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (0..1000).collect::<Vec<u64>>());
    assert!(log.fsync_count() < 1000, "group commit should share fsyncs: {} for 1000 appends", log.fsync_count());
    assert_eq!(log.read("t", 0, 0, 2000).await.unwrap().len(), 1000);
}

#[tokio::test]
async fn readers_start_at_earliest_latest_offset_or_time() {
    let dir = scratch();
    let log = EmbeddedLog::open(&dir.0, small_segments()).unwrap();
    log.ensure_topic("t", 1, KEEP).await.unwrap();
    for i in 0..50 {
        log.append("t", vec![rec(0, 1_000 + i * 10, "v")]).await.unwrap();
    }
    assert_eq!(log.resolve("t", 0, StartAt::Earliest).await.unwrap(), 0);
    assert_eq!(log.resolve("t", 0, StartAt::Latest).await.unwrap(), 50);
    assert_eq!(log.resolve("t", 0, StartAt::Offset(7)).await.unwrap(), 7);
    assert_eq!(log.resolve("t", 0, StartAt::Offset(900)).await.unwrap(), 50);
    assert_eq!(log.resolve("t", 0, StartAt::Timestamp(1_205)).await.unwrap(), 21);
    assert_eq!(log.resolve("t", 0, StartAt::Timestamp(0)).await.unwrap(), 0);
    assert_eq!(log.resolve("t", 0, StartAt::Timestamp(99_999)).await.unwrap(), 50);
    let mut end = log.watch_end("t", 0).unwrap();
    assert_eq!(*end.borrow(), 50);
    log.append("t", vec![rec(0, 5_000, "new")]).await.unwrap();
    end.changed().await.unwrap();
    assert_eq!(*end.borrow(), 51);
}

#[tokio::test]
async fn retention_drops_old_segments_by_age_and_size() {
    let dir = scratch();
    let log = EmbeddedLog::open(&dir.0, small_segments()).unwrap();
    log.ensure_topic("t", 1, Retention { max_age_ms: 1_000, max_bytes_per_partition: None }).await.unwrap();
    for i in 0..200 {
        log.append("t", vec![rec(0, i * 10, "some payload bytes")]).await.unwrap();
    }
    // At t=2500 every record older than 1500 is expired: whole segments before that go.
    let removed = log.enforce_retention(2_500).unwrap();
    assert!(removed > 0);
    let earliest = log.resolve("t", 0, StartAt::Earliest).await.unwrap();
    assert!(earliest > 0 && earliest <= 150, "earliest {earliest}");
    assert!(
        matches!(log.read("t", 0, 0, 1).await, Err(LogError::OffsetOutOfRange { earliest: e, .. }) if e == earliest)
    );
    assert_eq!(log.read("t", 0, earliest, 1).await.unwrap()[0].offset, earliest);

    log.ensure_topic("t", 1, Retention { max_age_ms: i64::MAX, max_bytes_per_partition: Some(4096) }).await.unwrap();
    log.enforce_retention(2_500).unwrap();
    let kept: u64 = std::fs::read_dir(dir.0.join("t/0")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(kept <= 4096 + 2048 + 64, "kept {kept} bytes");
    // The newest record is never dropped.
    assert_eq!(log.read("t", 0, 199, 1).await.unwrap().len(), 1);
}

/// Many callers declaring the same new topic at once get one topic: one writer per partition,
/// so offsets stay dense and a reopened log recovers every appended record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_declarations_of_a_topic_open_it_once() {
    let dir = scratch();
    let log = std::sync::Arc::new(EmbeddedLog::open(&dir.0, EmbeddedConfig::default()).unwrap());
    let declare: Vec<_> = (0..8)
        .map(|_| {
            let log = log.clone();
            tokio::spawn(async move { log.ensure_topic("raced", 2, KEEP).await })
        })
        .collect();
    let mut appends = Vec::new();
    for d in declare {
        d.await.unwrap().unwrap();
        let log = log.clone();
        appends.push(tokio::spawn(async move {
            for i in 0..25 {
                log.append("raced", vec![rec(i % 2, i as i64, "x")]).await.unwrap();
            }
        }));
    }
    for a in appends {
        a.await.unwrap();
    }
    drop(log);
    let reopened = EmbeddedLog::open(&dir.0, EmbeddedConfig::default()).unwrap();
    // Each of 8 appenders sent events 0..25 alternately to partitions 0 and 1: 13 and 12 each.
    for (p, want) in [(0u32, 8 * 13), (1, 8 * 12)] {
        let all = reopened.read("raced", p, 0, 1000).await.unwrap();
        assert_eq!(all.len(), want, "partition {p}");
        assert!(all.iter().enumerate().all(|(i, r)| r.offset == i as u64), "partition {p}: offsets dense");
    }
}

/// The Kafka backend of the log against librdkafka's mock cluster (three brokers inside the test
/// process, the real Kafka protocol on loopback sockets, fault injection). The mock broker has no
/// CreateTopics API, so topics are created on the cluster and the log runs with
/// `manage_topics: false`, as it does where a platform team owns the topics.
mod kafka {
    use super::*;
    use keystone_engine::log::{KafkaConfig, KafkaLog};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;
    use std::time::Duration;

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
        assert_eq!(
            later.iter().map(|r| (r.offset, r.value.as_slice())).collect::<Vec<_>>(),
            [(10, b"later".as_slice())]
        );

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
        assert!(matches!(
            log.append("alpha.small", vec![rec(5, 1, "x")]).await,
            Err(LogError::UnknownPartition { .. })
        ));
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
        let values: Vec<Vec<u8>> =
            log.read("alpha.plays", 0, 0, 10).await.unwrap().into_iter().map(|r| r.value).collect();
        assert_eq!(values.first().map(Vec::as_slice), Some(b"before".as_slice()));
        assert_eq!(values.last().map(Vec::as_slice), Some(b"after".as_slice()));
        assert_eq!(after[0].1 as usize, values.len() - 1, "the acknowledged offset is the record's");
    }
}

/// The Kafka backend against a real broker process (tansu, installed by `cargo xtask test` and
/// found through `KEYSTONE_TANSU`), for what librdkafka's mock broker lacks: creating topics
/// through the admin API, and finding an offset by time.
mod real_broker {
    use super::*;
    use keystone_engine::log::{KafkaConfig, KafkaLog};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn topics_are_created_and_offsets_found_by_time() {
        let Some(bin) = std::env::var_os("KEYSTONE_TANSU").filter(|b| std::path::Path::new(b).exists()) else {
            eprintln!("SKIPPED: no tansu broker (KEYSTONE_TANSU); `cargo xtask test` installs it");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut broker = std::process::Command::new(bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "tansu did not listen");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let mut config = KafkaConfig::new(format!("127.0.0.1:{port}"));
        config.replication_factor = 1;
        let log = KafkaLog::connect(config).unwrap();
        let keep = Retention { max_age_ms: 86_400_000, max_bytes_per_partition: None };
        log.ensure_topic("alpha.clicks", 2, keep).await.unwrap();
        assert_eq!(log.end_offsets("alpha.clicks").len(), 2);
        let records = (0..20)
            .map(|n| NewRecord { partition: 0, timestamp_ms: 1_000 + n * 10, key: None, value: vec![b'x'] })
            .collect();
        log.append("alpha.clicks", records).await.unwrap();
        assert_eq!(log.resolve("alpha.clicks", 0, StartAt::Timestamp(1_055)).await.unwrap(), 6);
        assert_eq!(log.resolve("alpha.clicks", 0, StartAt::Latest).await.unwrap(), 20);
        // tansu 0.6 has no CreatePartitions: a broker that cannot add partitions is reported as
        // unavailable with its reason, and the topic stays as it was.
        match log.ensure_topic("alpha.clicks", 3, keep).await {
            Err(LogError::Unavailable(why)) => assert!(why.contains("not supported"), "{why}"),
            other => panic!("adding partitions on tansu: {other:?}"),
        }
        assert_eq!(log.end_offsets("alpha.clicks").len(), 2);
        let _ = broker.kill();
        let _ = broker.wait();
    }
}
