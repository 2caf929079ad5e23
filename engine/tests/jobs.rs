//! Route jobs over the real embedded log: delivery, order, checkpoints, retries, dead letters,
//! isolation between jobs, and the supervisor's restarts.

use keystone_control::Projection;
use keystone_control::{JobPhase, SinkErrorKind};
use keystone_engine::job::supervisor::{supervise, JobObserver, PhaseReport, RestartPolicy};
use keystone_engine::job::{run, run_assigned, CheckpointError, CheckpointStore, JobSpec, JobStats, Transforms};
use keystone_engine::log::group::GroupMember;
use keystone_engine::log::{EmbeddedLog, KafkaConfig, KafkaLog, Log, NewRecord, Retention, StartAt};
use keystone_engine::sinks::{ConfigError, Rolling, Sink, SinkError, SinkEvent};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const KEEP: Retention = Retention { max_age_ms: i64::MAX, max_bytes_per_partition: None };

/// A sink that keeps what it receives, and can be told to fail.
#[derive(Default)]
struct MemorySink {
    got: Mutex<Vec<SinkEvent>>,
    /// Fail this many deliveries transiently before accepting.
    transient_failures: AtomicUsize,
    /// Refuse events whose payload has `"poison": true`.
    refuse_poison: bool,
    /// Never answer (a hung endpoint).
    hang: bool,
    /// Batch bounds of its own, like a file sink rolling files.
    rolling: Option<Rolling>,
    /// The size of every batch it accepted.
    batches: Mutex<Vec<usize>>,
    /// Take this long over each delivery (a slow endpoint).
    delay: Option<Duration>,
    /// Deliveries under way now, and the most ever at once.
    active: AtomicUsize,
    most_active: AtomicUsize,
}

impl Sink for MemorySink {
    async fn deliver(&self, batch: &[SinkEvent]) -> Result<(), SinkError> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        if let Some(delay) = self.delay {
            let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_active.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            self.active.fetch_sub(1, Ordering::SeqCst);
        }
        if self.transient_failures.load(Ordering::SeqCst) > 0 {
            self.transient_failures.fetch_sub(1, Ordering::SeqCst);
            return Err(SinkError::transient(SinkErrorKind::Server, "endpoint returned 503"));
        }
        self.batches.lock().unwrap().push(batch.len());
        let mut refused = Vec::new();
        let mut got = self.got.lock().unwrap();
        for (i, e) in batch.iter().enumerate() {
            if self.refuse_poison && e.event_value().unwrap().get("poison") == Some(&Value::Bool(true)) {
                refused.push((i, "poison event".to_owned()));
            } else {
                got.push(e.clone());
            }
        }
        SinkError::refusing(refused)
    }

    fn rolling(&self) -> Option<Rolling> {
        self.rolling
    }
}

#[derive(Default)]
struct MemoryCheckpoints(Mutex<HashMap<String, HashMap<u32, u64>>>);

impl CheckpointStore for MemoryCheckpoints {
    async fn load(&self, route_id: &str) -> Result<HashMap<u32, u64>, CheckpointError> {
        Ok(self.0.lock().unwrap().get(route_id).cloned().unwrap_or_default())
    }
    async fn commit(&self, route_id: &str, positions: &[(u32, u64)]) -> Result<(), CheckpointError> {
        let mut all = self.0.lock().unwrap();
        let route = all.entry(route_id.to_owned()).or_default();
        for &(p, o) in positions {
            route.insert(p, o);
        }
        Ok(())
    }
}

fn spec(route: &str, partitions: u32, filter: Option<&str>, projection: Projection, batch: usize) -> Arc<JobSpec> {
    Arc::new(JobSpec {
        route_id: format!("id-{route}"),
        route: format!("alpha/{route}"),
        topic: "alpha.plays".into(),
        partitions,
        dead_letter_topic: format!("_dlq.alpha.{route}"),
        transforms: Transforms::compile(filter, &projection, "alpha").unwrap(),
        batch_size: batch,
        max_latency: Duration::from_millis(20),
        checkpoint_interval: Duration::from_millis(50),
        start_at: StartAt::Earliest,
        until: Default::default(),
        in_flight: 1,
    })
}

fn envelope(n: u64, payload: Value) -> Vec<u8> {
    json!({"id": format!("ev-{n:06}"), "stream": "alpha/plays", "ingested_at": 1_700_000_000_000i64 + n as i64,
           "key": null, "headers": {}, "payload": payload})
    .to_string()
    .into_bytes()
}

/// Appends events `from..to` (partition = n % partitions) with payload `{n, country}`.
async fn produce<L: Log>(log: &Arc<L>, partitions: u32, from: u64, to: u64) {
    let records = (from..to)
        .map(|n| NewRecord {
            partition: (n % u64::from(partitions)) as u32,
            timestamp_ms: n as i64,
            key: None,
            value: envelope(n, json!({"n": n, "country": if n % 3 == 0 { "BR" } else { "US" }, "secret": "x"})),
        })
        .collect();
    log.append("alpha.plays", records).await.unwrap();
}

async fn open_log(dir: &tempfile::TempDir, partitions: u32) -> Arc<EmbeddedLog> {
    let log = Arc::new(EmbeddedLog::open(dir.path(), Default::default()).unwrap());
    log.ensure_topic("alpha.plays", partitions, KEEP).await.unwrap();
    log
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn ns(sink: &MemorySink) -> Vec<u64> {
    sink.got.lock().unwrap().iter().map(|e| e.event_value().unwrap()["n"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn delivers_filtered_projected_events_in_partition_order_and_checkpoints_after_ack() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, 3).await;
    produce(&log, 3, 0, 600).await;
    let sink = Arc::new(MemorySink::default());
    let checkpoints = Arc::new(MemoryCheckpoints::default());
    let stats = Arc::new(JobStats::default());
    let cancel = CancellationToken::new();
    let projection = Projection {
        keep: vec!["n".into(), "country".into()],
        rename: [("country".into(), "where".into())].into(),
        ..Default::default()
    };
    let job = spec("br", 3, Some(r#"event.country == "BR""#), projection, 50);
    let task = tokio::spawn(run(job, log.clone(), sink.clone(), checkpoints.clone(), stats.clone(), cancel.clone()));
    wait_for("200 BR events", || ns(&sink).len() == 200).await;
    cancel.cancel();
    task.await.unwrap().unwrap();

    let got = sink.got.lock().unwrap().clone();
    assert!(
        got.iter().all(|e| e.event.get() == format!(r#"{{"n":{},"where":"BR"}}"#, e.event_value().unwrap()["n"])),
        "projection applied: {:?}",
        got.first()
    );
    for p in 0..3 {
        let offsets: Vec<u64> = got.iter().filter(|e| e.partition == p).map(|e| e.offset).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "partition {p} in log order");
    }
    let mut sorted = ns(&sink);
    sorted.sort();
    assert_eq!(sorted, (0..600).filter(|n| n % 3 == 0).collect::<Vec<_>>());
    assert_eq!(stats.filtered_out.load(Ordering::Relaxed), 400);
    // Every partition's checkpoint is past the last event, filtered-out ones included.
    let saved = checkpoints.load("id-br").await.unwrap();
    assert_eq!(saved, HashMap::from([(0, 200), (1, 200), (2, 200)]));
}

#[tokio::test]
async fn a_rolling_sink_gets_batches_bounded_by_its_size_and_age_not_the_routes() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, 1).await;
    produce(&log, 1, 0, 100).await;
    // The first batch must close at the event that brings it to max_bytes of stored records.
    let sizes: Vec<usize> = log.read("alpha.plays", 0, 0, 100).await.unwrap().iter().map(|r| r.value.len()).collect();
    let max_bytes = sizes[..30].iter().sum::<usize>() - 1;
    let rolling = Rolling { max_bytes, max_age: Duration::from_millis(300) };
    let sink = Arc::new(MemorySink { rolling: Some(rolling), ..Default::default() });
    let cancel = CancellationToken::new();
    // A route batch of 10 events: the sink's bounds replace it.
    let job = spec("roll", 1, None, Projection::default(), 10);
    let stats = Arc::new(JobStats::default());
    let task = tokio::spawn(run(
        job,
        log.clone(),
        sink.clone(),
        Arc::new(MemoryCheckpoints::default()),
        stats,
        cancel.clone(),
    ));
    wait_for("100 events", || ns(&sink).len() == 100).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    let batches = sink.batches.lock().unwrap().clone();
    assert_eq!(batches[..3], [30, 30, 30], "rolled by size: {batches:?}");
    assert_eq!(batches[3..], [10], "the rest rolled by age: {batches:?}");
    assert_eq!(ns(&sink), (0..100).collect::<Vec<_>>());
}

/// An unordered route keeps several batches of a partition in flight against a slow sink, yet
/// its position never passes an event the sink has not acknowledged; an ordered one keeps one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unordered_routes_deliver_batches_in_parallel_and_acknowledge_in_order() {
    for in_flight in [1, 4] {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(&dir, 1).await;
        produce(&log, 1, 0, 200).await;
        let sink = Arc::new(MemorySink { delay: Some(Duration::from_millis(30)), ..Default::default() });
        let mut job = spec("fast", 1, None, Projection::default(), 10);
        Arc::get_mut(&mut job).unwrap().in_flight = in_flight;
        let stats = Arc::new(JobStats::default());
        let cancel = CancellationToken::new();
        let checkpoints = Arc::new(MemoryCheckpoints::default());
        let task = tokio::spawn(run(job, log.clone(), sink.clone(), checkpoints, stats.clone(), cancel.clone()));
        // A deadline in time, not in polls: on a loaded machine (other tests' brokers on the same
        // two cores) the 200 events can take seconds.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            // Acknowledged means delivered: every offset below the position reached the sink.
            let acked = stats.progress();
            let mut got: Vec<u64> = sink.got.lock().unwrap().iter().map(|e| e.offset).collect();
            got.sort();
            assert!(
                got.iter().take(acked as usize).copied().eq(0..acked),
                "position {acked} passed an undelivered event"
            );
            if acked == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(stats.progress(), 200, "everything acknowledged");
        cancel.cancel();
        task.await.unwrap().unwrap();
        let mut all = ns(&sink);
        all.sort();
        assert_eq!(all, (0..200).collect::<Vec<_>>(), "each event once");
        let most = sink.most_active.load(Ordering::SeqCst);
        if in_flight == 1 {
            assert_eq!(most, 1, "an ordered route delivers one batch at a time");
            assert_eq!(ns(&sink), (0..200).collect::<Vec<_>>(), "in log order");
        } else {
            assert!(most > 1, "an unordered route delivers batches in parallel ({most} at most)");
        }
    }
}

/// Routes and sinks do not change with the log: the same job over the Kafka backend (librdkafka's
/// mock cluster) delivers every event in partition order and checkpoints after the sink's ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_kafka_delivers_like_over_the_embedded_log() {
    let cluster = rdkafka::mocking::MockCluster::new(3).unwrap();
    cluster.create_topic("alpha.plays", 3, 3).unwrap();
    cluster.create_topic("_dlq.alpha.kafka", 1, 3).unwrap();
    let mut config = KafkaConfig::new(cluster.bootstrap_servers());
    config.manage_topics = false;
    let log = Arc::new(KafkaLog::connect(config).unwrap());
    log.ensure_topic("alpha.plays", 3, KEEP).await.unwrap();
    produce(&log, 3, 0, 300).await;
    let sink = Arc::new(MemorySink::default());
    let checkpoints = Arc::new(MemoryCheckpoints::default());
    let cancel = CancellationToken::new();
    let job = spec("kafka", 3, Some(r#"event.country == "BR""#), Projection::default(), 25);
    let stats = Arc::new(JobStats::default());
    let task = tokio::spawn(run(job, log.clone(), sink.clone(), checkpoints.clone(), stats.clone(), cancel.clone()));
    wait_for("100 BR events", || ns(&sink).len() == 100).await;
    // Appended while the job tails the partitions.
    produce(&log, 3, 300, 330).await;
    wait_for("every event acknowledged", || stats.progress() == 330).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    let got = sink.got.lock().unwrap().clone();
    for p in 0..3 {
        let offsets: Vec<u64> = got.iter().filter(|e| e.partition == p).map(|e| e.offset).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "partition {p} in log order");
    }
    let mut sorted = ns(&sink);
    sorted.sort();
    assert_eq!(sorted, (0..330).filter(|n| n % 3 == 0).collect::<Vec<_>>());
    assert_eq!(checkpoints.load("id-kafka").await.unwrap(), HashMap::from([(0, 110), (1, 110), (2, 110)]));
}

/// One member of a route job's consumer group, as one `keystone worker` runs it.
struct Member {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), keystone_engine::job::JobError>>,
    group: GroupMember,
    stats: Arc<JobStats>,
}

impl Member {
    fn join(
        log: &Arc<KafkaLog>,
        job: &Arc<JobSpec>,
        sink: &Arc<MemorySink>,
        checkpoints: &Arc<MemoryCheckpoints>,
    ) -> Member {
        let (group, assignments) =
            log.join_group("keystone.route.id-shared", &job.topic, Duration::from_secs(6)).unwrap();
        let stats = Arc::new(JobStats::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_assigned(
            job.clone(),
            log.clone(),
            sink.clone(),
            checkpoints.clone(),
            stats.clone(),
            cancel.clone(),
            Some(assignments),
        ));
        Member { cancel, task, group, stats }
    }

    fn owned(&self) -> usize {
        self.stats.owned.lock().unwrap().as_ref().map_or(0, |o| o.len())
    }

    /// Stops as a worker does at shutdown: drains, commits, then leaves the group.
    async fn leave(self) {
        self.cancel.cancel();
        self.task.await.unwrap().unwrap();
        self.group.leave().await;
    }

    /// Dies as a killed worker does: its readers stop without committing what they delivered
    /// since the last periodic commit, and its membership ends without handing anything over.
    fn crash(self) {
        self.task.abort();
        self.cancel.cancel();
        drop(self.group);
    }
}

async fn wait_long(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Several workers share one route job through a Kafka consumer group (librdkafka's mock
/// cluster): members joining while events flow take partitions over exactly where the previous
/// owner committed on revocation (a graceful handover repeats nothing and loses nothing), and a
/// member that dies loses nothing either: its partitions resume from the last commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_sharing_a_job_through_a_consumer_group_hand_partitions_over_without_loss() {
    let cluster = rdkafka::mocking::MockCluster::new(3).unwrap();
    cluster.create_topic("alpha.plays", 12, 3).unwrap();
    cluster.create_topic("_dlq.alpha.shared", 1, 3).unwrap();
    let mut config = KafkaConfig::new(cluster.bootstrap_servers());
    config.manage_topics = false;
    let log = Arc::new(KafkaLog::connect(config).unwrap());
    log.ensure_topic("alpha.plays", 12, KEEP).await.unwrap();
    let distinct = |sink: &MemorySink| ns(sink).into_iter().collect::<std::collections::BTreeSet<u64>>();
    produce(&log, 12, 0, 600).await;
    let sink = Arc::new(MemorySink::default());
    let checkpoints = Arc::new(MemoryCheckpoints::default());
    let job = spec("shared", 12, None, Projection::default(), 20);

    let a = Member::join(&log, &job, &sink, &checkpoints);
    wait_long("the only member holds every partition", || a.owned() == 12).await;
    wait_long("600 events", || ns(&sink).len() == 600).await;

    // Two more members join while producers keep sending: the partitions spread out.
    let producing = {
        let log = log.clone();
        tokio::spawn(async move {
            for from in (600..1800).step_by(50) {
                produce(&log, 12, from, from + 50).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let b = Member::join(&log, &job, &sink, &checkpoints);
    let c = Member::join(&log, &job, &sink, &checkpoints);
    wait_long("12 partitions spread over three members", || {
        a.owned() > 0 && b.owned() > 0 && c.owned() > 0 && a.owned() + b.owned() + c.owned() == 12
    })
    .await;
    producing.await.unwrap();
    wait_long("1800 distinct events", || distinct(&sink).len() == 1800).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ns(&sink).len(), 1800, "graceful handovers deliver no event twice");

    // One member dies: the others take its partitions and deliver everything, repeating at
    // most what it delivered after its last commit.
    c.crash();
    produce(&log, 12, 1800, 2400).await;
    wait_long("two members hold every partition", || a.owned() + b.owned() == 12).await;
    wait_long("2400 distinct events", || distinct(&sink).len() == 2400).await;
    assert_eq!(distinct(&sink), (0..2400).collect(), "none lost");
    let repeated = ns(&sink).len() - 2400;
    assert!(repeated <= 600, "repeats bounded by what the dead member had not committed: {repeated}");

    // Both remaining members leave: everything is committed at the end of the stream.
    a.leave().await;
    b.leave().await;
    let committed = checkpoints.load("id-shared").await.unwrap();
    assert_eq!(committed, (0..12).map(|p| (p, 200)).collect::<HashMap<u32, u64>>());
    // The group's own offsets say the same, for Kafka's tools (committed as partitions were
    // handed over and as the last members left).
    let outside: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "keystone.route.id-shared")
        .create()
        .unwrap();
    let mut asked = rdkafka::TopicPartitionList::new();
    for p in 0..12 {
        asked.add_partition("alpha.plays", p);
    }
    let group_offsets = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::Consumer;
        outside.committed_offsets(asked, Duration::from_secs(10)).unwrap()
    })
    .await
    .unwrap();
    let group_offsets: Vec<(i32, rdkafka::Offset)> =
        group_offsets.elements().iter().map(|e| (e.partition(), e.offset())).collect();
    assert_eq!(group_offsets, (0..12).map(|p| (p, rdkafka::Offset::Offset(200))).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_partition_whose_events_are_all_filtered_out_is_acknowledged_without_waiting_for_more() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, 2).await;
    // Even events land in partition 0, odd ones in partition 1: the filter drops all of the latter.
    produce(&log, 2, 0, 40).await;
    let sink = Arc::new(MemorySink::default());
    let stats = Arc::new(JobStats::default());
    let cancel = CancellationToken::new();
    let job = spec("even", 2, Some("event.n % 2 == 0"), Projection::default(), 100);
    let task = tokio::spawn(run(
        job,
        log.clone(),
        sink.clone(),
        Arc::new(MemoryCheckpoints::default()),
        stats.clone(),
        cancel.clone(),
    ));
    wait_for("both partitions acknowledged", || stats.progress() == 40).await;
    assert_eq!(ns(&sink).len(), 20);
    cancel.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_restarted_job_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, 2).await;
    let checkpoints = Arc::new(MemoryCheckpoints::default());
    produce(&log, 2, 0, 100).await;
    let first = Arc::new(MemorySink::default());
    let cancel = CancellationToken::new();
    let job = spec("all", 2, None, Projection::default(), 10);
    let task = tokio::spawn(run(
        job.clone(),
        log.clone(),
        first.clone(),
        checkpoints.clone(),
        Default::default(),
        cancel.clone(),
    ));
    wait_for("100 events", || ns(&first).len() == 100).await;
    cancel.cancel();
    task.await.unwrap().unwrap();

    produce(&log, 2, 100, 150).await;
    let second = Arc::new(MemorySink::default());
    let cancel = CancellationToken::new();
    let task =
        tokio::spawn(run(job, log.clone(), second.clone(), checkpoints.clone(), Default::default(), cancel.clone()));
    wait_for("50 new events", || ns(&second).len() == 50).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    let mut again = ns(&second);
    again.sort();
    assert_eq!(again, (100..150).collect::<Vec<_>>(), "a clean stop commits: nothing is delivered twice");
}

#[tokio::test]
async fn a_crash_loses_nothing_and_repeats_at_most_one_checkpoint_interval() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, 1).await;
    let checkpoints = Arc::new(MemoryCheckpoints::default());
    produce(&log, 1, 0, 2000).await;
    let first = Arc::new(MemorySink::default());
    let job = spec("crash", 1, None, Projection::default(), 7);
    let task = tokio::spawn(run(
        job.clone(),
        log.clone(),
        first.clone(),
        checkpoints.clone(),
        Default::default(),
        CancellationToken::new(),
    ));
    wait_for("some deliveries", || ns(&first).len() > 300).await;
    task.abort(); // a crash: no final checkpoint
    let _ = task.await;
    let committed = checkpoints.load("id-crash").await.unwrap().get(&0).copied().unwrap_or(0);
    let delivered_before = ns(&first).len() as u64;
    assert!(committed <= delivered_before, "never commits what the sink has not acknowledged");

    let second = Arc::new(MemorySink::default());
    let cancel = CancellationToken::new();
    let task =
        tokio::spawn(run(job, log.clone(), second.clone(), checkpoints.clone(), Default::default(), cancel.clone()));
    wait_for("the rest", || ns(&second).last() == Some(&1999)).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(ns(&second).first(), Some(&committed), "resumes exactly at the checkpoint");
    let mut all: Vec<u64> = ns(&first).into_iter().chain(ns(&second)).collect();
    let duplicates = all.len() as u64 - 2000;
    all.sort();
    all.dedup();
    assert_eq!(all, (0..2000).collect::<Vec<_>>(), "nothing lost");
    assert_eq!(duplicates, delivered_before - committed, "duplicates are exactly the uncommitted window");
}

#[tokio::test]
async fn transient_failures_are_retried_and_refused_events_go_to_the_dead_letter_queue() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, 1).await;
    let records = (0..10)
        .map(|n| NewRecord {
            partition: 0,
            timestamp_ms: n,
            key: None,
            value: envelope(n as u64, json!({"n": n, "poison": n == 4 || n == 7})),
        })
        .chain([NewRecord { partition: 0, timestamp_ms: 10, key: None, value: b"not json".to_vec() }])
        .collect();
    log.append("alpha.plays", records).await.unwrap();
    let sink =
        Arc::new(MemorySink { refuse_poison: true, transient_failures: AtomicUsize::new(3), ..Default::default() });
    let checkpoints = Arc::new(MemoryCheckpoints::default());
    let stats = Arc::new(JobStats::default());
    let cancel = CancellationToken::new();
    let job = spec("dlq", 1, None, Projection::default(), 100);
    let task = tokio::spawn(run(job, log.clone(), sink.clone(), checkpoints.clone(), stats.clone(), cancel.clone()));
    wait_for("the checkpoint past every event", || stats.progress() == 11).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(ns(&sink), [0, 1, 2, 3, 5, 6, 8, 9]);
    assert_eq!(stats.retries.load(Ordering::Relaxed), 3);
    // Three failed requests were the sink's (5xx); one request had events refused.
    let errors: Vec<(SinkErrorKind, u64)> = stats.counters().sink_errors.seen().collect();
    assert_eq!(errors, [(SinkErrorKind::Server, 3), (SinkErrorKind::Refused, 1)]);
    let letters = log.read("_dlq.alpha.dlq", 0, 0, 100).await.unwrap();
    let letters: Vec<Value> = letters.iter().map(|r| serde_json::from_slice(&r.value).unwrap()).collect();
    assert_eq!(letters.len(), 3);
    assert_eq!(letters[0]["reason"], "poison event");
    assert_eq!(letters[0]["offset"], 4);
    assert_eq!(letters[0]["envelope"]["payload"]["n"], 4);
    assert!(letters[2]["reason"].as_str().unwrap().contains("not a Keystone envelope"));
    assert_eq!(letters[2]["envelope"], "not json");
    assert_eq!(checkpoints.load("id-dlq").await.unwrap()[&0], 11);
}

#[tokio::test]
async fn an_event_the_filter_cannot_evaluate_is_counted_and_kept_as_the_error_sample() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, 1).await;
    let payloads =
        [json!({"n": 0, "bitrate": 5000}), json!({"n": 1, "note": "no bitrate"}), json!({"n": 2, "bitrate": 10})];
    let records = payloads
        .iter()
        .enumerate()
        .map(|(n, p)| NewRecord {
            partition: 0,
            timestamp_ms: n as i64,
            key: None,
            value: envelope(n as u64, p.clone()),
        })
        .collect();
    log.append("alpha.plays", records).await.unwrap();
    let sink = Arc::new(MemorySink::default());
    let stats = Arc::new(JobStats::default());
    let cancel = CancellationToken::new();
    let job = spec("fe", 1, Some("event.bitrate > 3000"), Projection::default(), 100);
    let checkpoints = Arc::new(MemoryCheckpoints::default());
    let task = tokio::spawn(run(job, log.clone(), sink.clone(), checkpoints, stats.clone(), cancel.clone()));
    wait_for("every event handled", || stats.progress() == 3).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(ns(&sink), [0]);
    let c = stats.counters();
    assert_eq!((c.read, c.delivered, c.filtered_out, c.filter_errors), (3, 1, 1, 1));
    let errors = stats.recent_errors.lock().unwrap().clone();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].message.contains("filter could not evaluate event ev-000001"), "{errors:?}");
    let sample: Value = serde_json::from_str(errors[0].sample.as_deref().unwrap()).unwrap();
    assert_eq!(sample, payloads[1], "the event the filter failed on, as it was read");
}

#[tokio::test]
async fn a_hung_sink_on_one_route_does_not_slow_another_route() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, 2).await;
    let hung = Arc::new(MemorySink { hang: true, ..Default::default() });
    let healthy = Arc::new(MemorySink::default());
    let checkpoints = Arc::new(MemoryCheckpoints::default());
    let cancel = CancellationToken::new();
    let hung_stats = Arc::new(JobStats::default());
    let a = tokio::spawn(run(
        spec("a", 2, None, Projection::default(), 100),
        log.clone(),
        hung.clone(),
        checkpoints.clone(),
        hung_stats.clone(),
        cancel.clone(),
    ));
    let b = tokio::spawn(run(
        spec("b", 2, None, Projection::default(), 100),
        log.clone(),
        healthy.clone(),
        checkpoints.clone(),
        Default::default(),
        cancel.clone(),
    ));
    produce(&log, 2, 0, 20_000).await;
    wait_for("route b to deliver everything", || ns(&healthy).len() == 20_000).await;
    assert!(ns(&hung).is_empty());
    assert_eq!(hung_stats.progress(), 0, "route a acknowledged nothing");
    a.abort();
    cancel.cancel();
    b.await.unwrap().unwrap();
}

#[derive(Default)]
struct Phases(Mutex<Vec<PhaseReport>>);
impl JobObserver for Phases {
    async fn report(&self, report: PhaseReport) {
        self.0.lock().unwrap().push(report);
    }
}

#[tokio::test]
async fn the_supervisor_restarts_with_backoff_then_marks_a_job_failed() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, 1).await;
    let phases = Arc::new(Phases::default());
    let policy = RestartPolicy { max_restarts: 2, first_backoff: Duration::from_millis(10), ..Default::default() };
    let builds = Arc::new(AtomicUsize::new(0));
    let counted = builds.clone();
    let make_sink = move || -> Result<MemorySink, ConfigError> {
        counted.fetch_add(1, Ordering::SeqCst);
        Err(ConfigError::new("secrets.url", "connection refused"))
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn(supervise(
        spec("bad", 1, None, Projection::default(), 10),
        log,
        make_sink,
        Arc::new(MemoryCheckpoints::default()),
        phases.clone(),
        Arc::new(JobStats::default()),
        policy,
        None,
        cancel.clone(),
    ));
    wait_for("the failed phase", || phases.0.lock().unwrap().iter().any(|r| r.phase == JobPhase::Failed)).await;
    assert_eq!(builds.load(Ordering::SeqCst), 3, "first start plus two restarts");
    let seen: Vec<JobPhase> = phases.0.lock().unwrap().iter().map(|r| r.phase).collect();
    use JobPhase::*;
    assert_eq!(seen, [Starting, Failing, Starting, Failing, Starting, Failed]);
    let reports = phases.0.lock().unwrap().clone();
    assert!(reports[2].restart && reports[2].cause.contains("connection refused"));
    assert!(reports[5].error.as_deref().unwrap().contains("connection refused"));
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_job_replaced_in_the_registry_stops_reading() {
    use keystone_engine::job::registry::{JobRegistry, RunningJob};
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, 1).await;
    produce(&log, 1, 0, 5).await;
    let registry = JobRegistry::new(log.clone());
    let running = |stats: Arc<JobStats>| {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(supervise(
            spec("replaced", 1, None, Projection::default(), 10),
            log.clone(),
            || Ok(MemorySink::default()),
            Arc::new(MemoryCheckpoints::default()),
            Arc::new(Phases::default()),
            stats.clone(),
            RestartPolicy::default(),
            None,
            cancel.clone(),
        ));
        RunningJob {
            fingerprint: String::new(),
            version: 1,
            started_at: 0,
            spec: None,
            stats,
            cancel,
            task,
            sink: None,
        }
    };
    let first = Arc::new(JobStats::default());
    registry.insert("r".into(), running(first.clone()));
    wait_for("delivery", || first.progress() == 5).await;
    // Replaced without `stop`: the first job must not read on beside the second.
    registry.insert("r".into(), running(Arc::new(JobStats::default())));
    tokio::time::sleep(Duration::from_millis(300)).await;
    produce(&log, 1, 5, 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(first.progress(), 5, "the replaced job read and delivered after it was replaced");
}

#[tokio::test]
async fn the_supervisor_reports_failing_while_the_sink_is_down_and_running_once_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, 1).await;
    produce(&log, 1, 0, 5).await;
    let phases = Arc::new(Phases::default());
    let cancel = CancellationToken::new();
    let stats = Arc::new(JobStats::default());
    let task = tokio::spawn(supervise(
        spec("flaky", 1, None, Projection::default(), 10),
        log,
        || Ok(MemorySink { transient_failures: AtomicUsize::new(4), ..Default::default() }),
        Arc::new(MemoryCheckpoints::default()),
        phases.clone(),
        stats.clone(),
        RestartPolicy::default(),
        None,
        cancel.clone(),
    ));
    wait_for("delivery", || stats.progress() == 5).await;
    wait_for("running again", || phases.0.lock().unwrap().last().is_some_and(|r| r.phase == JobPhase::Running)).await;
    let seen: Vec<JobPhase> = phases.0.lock().unwrap().iter().map(|r| r.phase).collect();
    assert!(seen.contains(&JobPhase::Failing), "{seen:?}");
    let failing = phases.0.lock().unwrap().iter().find(|r| r.phase == JobPhase::Failing).cloned().unwrap();
    assert!(failing.error.unwrap().contains("503"));
    cancel.cancel();
    task.await.unwrap();
}

/// Issue 26 item 17: a job whose sink stops answering while events wait is restarted once it has
/// made no progress for `stall_after`, and the next run delivers everything.
#[tokio::test]
async fn a_stalled_job_is_restarted_and_the_next_run_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, 1).await;
    produce(&log, 1, 0, 5).await;
    let phases = Arc::new(Phases::default());
    let builds = Arc::new(AtomicUsize::new(0));
    let counted = builds.clone();
    // The first sink hangs on its first delivery; the one built for the restart answers.
    let make_sink = move || -> Result<MemorySink, ConfigError> {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        Ok(MemorySink { hang: n == 0, ..Default::default() })
    };
    let policy = RestartPolicy {
        stall_after: Duration::from_millis(300),
        first_backoff: Duration::from_millis(10),
        ..Default::default()
    };
    let stats = Arc::new(JobStats::default());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(supervise(
        spec("stuck", 1, None, Projection::default(), 10),
        log,
        make_sink,
        Arc::new(MemoryCheckpoints::default()),
        phases.clone(),
        stats.clone(),
        policy,
        None,
        cancel.clone(),
    ));
    // The hung batch gets the supervisor's stop grace (10 s) before it is aborted.
    wait_long("delivery after the restart", || stats.progress() == 5).await;
    assert_eq!(builds.load(Ordering::SeqCst), 2, "one start and one restart");
    let reports = phases.0.lock().unwrap().clone();
    let restart = reports.iter().find(|r| r.restart).expect("a restart was reported");
    assert!(restart.cause.contains("stalled"), "{restart:?}");
    cancel.cancel();
    task.await.unwrap();
}

/// Issue 26 item 6: a preview runs the caller's filter off the async runtime and stops when its
/// time budget is spent, saying so, instead of holding a thread for as long as the filter takes.
#[tokio::test]
async fn a_preview_stops_at_its_time_budget_and_says_so() {
    use keystone_engine::job::preview::preview_within;
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&dir, 1).await;
    produce(&log, 1, 0, 5).await;
    let compile = || Transforms::compile(Some("event.n >= 0"), &Projection::default(), "alpha").unwrap();
    let topic = "alpha.plays";
    let all = preview_within(log.as_ref(), topic, 1, compile(), 10, Duration::from_secs(10)).await.unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.iter().all(|r| r.outcome == "delivered"), "{all:?}");
    let cut = preview_within(log.as_ref(), topic, 1, compile(), 10, Duration::ZERO).await.unwrap();
    assert_eq!(cut.len(), 1, "{cut:?}");
    assert!(cut[0].error.as_deref().unwrap().contains("time budget"), "{cut:?}");
}
