//! `keystone bench ...`: throughput figures for the README, measured on the machine at hand.

use keystone_engine::log::embedded::EmbeddedConfig;
use keystone_engine::log::{EmbeddedLog, Log, NewRecord, Retention};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Appends `events` durable events of `size` bytes in several ways and prints events/s.
pub async fn log(dir: &Path, events: usize, size: usize) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    let log = Arc::new(EmbeddedLog::open(dir, EmbeddedConfig::default())?);
    let keep = Retention { max_age_ms: i64::MAX, max_bytes_per_partition: None };
    let payload = vec![b'x'; size];
    println!("Embedded log, {events} events of {size} bytes per scenario, fsync before every acknowledgement:");
    println!("{:<44} {:>12} {:>10} {:>9}", "scenario", "events/s", "MB/s", "fsyncs");
    // (name, producers, events per append, partitions)
    let scenarios = [
        ("1 producer, 1 event per append", 1, 1, 1),
        ("64 producers, 1 event per append", 64, 1, 1),
        ("64 producers, 1 event per append, 8 parts", 64, 1, 8),
        ("4 producers, 100-event batches", 4, 100, 1),
        ("4 producers, 100-event batches, 8 parts", 4, 100, 8),
    ];
    for (i, (name, producers, batch, partitions)) in scenarios.into_iter().enumerate() {
        let topic = format!("bench-{i}");
        log.ensure_topic(&topic, partitions, keep).await?;
        // The sequential scenario is fsync-bound: fewer events keep it short.
        let total = if producers == 1 && batch == 1 { events.min(2_000) } else { events };
        let per_producer = total / producers / batch;
        let fsyncs_before = log.fsync_count();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for p in 0..producers {
            let (log, topic, payload) = (log.clone(), topic.clone(), payload.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0..per_producer {
                    let records = (0..batch)
                        .map(|k| NewRecord {
                            partition: ((p + n + k) % partitions as usize) as u32,
                            timestamp_ms: 0,
                            key: None,
                            value: payload.clone(),
                        })
                        .collect();
                    log.append(&topic, records).await?;
                }
                Ok::<_, keystone_engine::log::LogError>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let secs = started.elapsed().as_secs_f64();
        let done = (per_producer * producers * batch) as f64;
        println!(
            "{:<44} {:>12.0} {:>10.1} {:>9}",
            name,
            done / secs,
            done * size as f64 / secs / 1e6,
            log.fsync_count() - fsyncs_before
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// Shape of the end-to-end benchmark.
#[derive(Debug, Clone)]
pub struct PipelineBench {
    pub events: usize,
    pub producers: usize,
    /// Events per ingest request.
    pub batch: usize,
    pub partitions: u32,
    /// Also run a route to this PostgreSQL database (a table is created there).
    pub postgres_url: Option<String>,
    /// Offered events per second over all producers; `None`: each sends its next request as soon
    /// as the last was acknowledged.
    pub rate: Option<u32>,
}

/// A team in a benchmark's database, and an admin declaring objects in it.
struct BenchTeam {
    store: keystone_control::store::Store,
    root: keystone_control::auth::Principal,
    name: String,
}

impl BenchTeam {
    async fn create(database_url: &str, name: &str) -> anyhow::Result<BenchTeam> {
        use keystone_control::goal::{Declaration, Goal};
        let store = keystone_control::store::Store::connect(database_url).await?;
        let root = keystone_control::auth::Principal {
            user_id: "bench".into(),
            display: "bench".into(),
            role: keystone_control::Role::Admin,
            teams: vec![],
        };
        let team = Declaration::Team(keystone_control::TeamSpec::default());
        Goal::new(&store, &root).create("", name, team, "benchmark").await?;
        Ok(BenchTeam { store, root, name: name.to_owned() })
    }

    async fn declare(&self, kind: keystone_control::Kind, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        use keystone_control::goal::{Declaration, Goal};
        let decl = Declaration::from_json(kind, spec).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        Goal::new(&self.store, &self.root)
            .create(&self.name, name, decl, "benchmark")
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        Ok(())
    }
}

/// A ~250-byte play event; half of them pass the benchmark route's filter.
fn play_event(n: usize) -> String {
    format!(
        r#"{{"user_id":"user-{:08}","title_id":"title-{:06}","country":"{}","bitrate":{},"device":"tv-model-x","session":"{:032x}","position_ms":{},"event":"play","app_version":"12.4.1","network":"wifi","cdn":"edge-042.eu-west-1"}}"#,
        n % 100_000,
        n % 5_000,
        ["BR", "US", "DE", "JP"][n % 4],
        if n.is_multiple_of(2) { 4800 } else { 800 },
        n as u128 * 7919,
        n * 250
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The whole platform in this process: the real server on a free port with a fresh SQLite
/// database and log, a stream, a filter + projection route to a file sink (and to PostgreSQL when
/// asked), and concurrent producers posting NDJSON batches to the ingest proxy. Prints the
/// acknowledged ingest rate with ack latency percentiles, then how fast the routes delivered
/// everything (ingest start to the last checkpoint of the data).
pub async fn pipeline(dir: &Path, b: PipelineBench) -> anyhow::Result<()> {
    use crate::settings::Settings;
    use crate::startup::Application;
    use keystone_control::Kind;
    use serde_json::json;

    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let mut settings = Settings::local(dir);
    // The benchmark measures this machine's ceiling, not the default per-stream quota.
    settings.ingest_default_max_events_per_second = 0;
    // The benchmark's PostgreSQL sink is on this machine.
    settings.egress.allow = vec!["127.0.0.0/8".into(), "::1".into(), "localhost".into()];
    let app = Application::build(settings.clone()).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let jobs = app.jobs();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    let team = BenchTeam::create(settings.database_url.as_deref().unwrap_or_default(), "bench").await?;
    let (store, root) = (&team.store, &team.root);
    team.declare(Kind::Stream, "plays", json!({"partitions": b.partitions, "retention_hours": 24})).await?;
    team.declare(Kind::Sink, "lake", json!({"kind": "file", "settings": {"path": "plays"}})).await?;
    let route = |sink: &str| {
        json!({"stream": "plays", "sink": sink, "filter": "event.bitrate > 3000",
               "projection": {"keep": ["user_id", "title_id", "country", "bitrate"]},
               "batch_size": 5000, "max_latency_ms": 200})
    };
    team.declare(Kind::Route, "to-lake", route("lake")).await?;
    let mut routes = vec!["to-lake"];
    if let Some(url) = &b.postgres_url {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
        sqlx::query("DROP TABLE IF EXISTS keystone_bench_plays").execute(&mut conn).await?;
        sqlx::query(
            "CREATE TABLE keystone_bench_plays (event_id uuid PRIMARY KEY, user_id text, title_id text, \
             country text, bitrate integer)",
        )
        .execute(&mut conn)
        .await?;
        team.declare(
            Kind::Sink,
            "dwh",
            json!({"kind": "postgres", "settings": {"table": "keystone_bench_plays"}, "secrets": {"url": url}}),
        )
        .await?;
        team.declare(Kind::Route, "to-dwh", route("dwh")).await?;
        routes.push("to-dwh");
    }
    let (_, token) = keystone_control::producers::create(store, root, "bench", "plays", "bench").await?;
    let team_id = store.get(Kind::Team, "", "bench").await?.map(|t| t.id).unwrap_or_default();
    let mut route_ids = Vec::new();
    for r in &routes {
        route_ids.push(store.get(Kind::Route, &team_id, r).await?.map(|o| o.id).unwrap_or_default());
    }
    // Wait for the reconciler to start the jobs.
    while route_ids.iter().any(|id| jobs.metrics(id).is_none()) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let body_of = |from: usize| -> String { (from..from + b.batch).map(|n| play_event(n) + "\n").collect() };
    let event_bytes = play_event(0).len();
    let requests = b.events / b.batch;
    let per_producer = requests / b.producers;
    let total = per_producer * b.producers * b.batch;
    let offered = b.rate.map_or_else(|| "as fast as acknowledged".to_owned(), |r| format!("offering {r} events/s"));
    println!(
        "Pipeline: {total} events of ~{event_bytes} bytes, {} producers posting {}-event NDJSON batches ({offered}), {} partitions, routes: {}",
        b.producers,
        b.batch,
        b.partitions,
        routes.join(", ")
    );
    // With a rate, each producer's requests are due at fixed times, staggered between
    // producers; one that falls behind sends at once until it is on time again (its latency
    // counts from when each request was due).
    let every =
        b.rate.map(|r| std::time::Duration::from_secs_f64((b.batch * b.producers) as f64 / f64::from(r.max(1))));
    let http = reqwest::Client::new();
    // Producers are other programs: their request bodies are made before the clock starts.
    let bodies: Vec<Vec<String>> = (0..b.producers)
        .map(|p| (0..per_producer).map(|i| body_of((p * per_producer + i) * b.batch)).collect())
        .collect();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (p, bodies) in bodies.into_iter().enumerate() {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        let first = every.map(|e| started + e.mul_f64(p as f64 / b.producers as f64));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(bodies.len());
            for (i, body) in bodies.into_iter().enumerate() {
                // A request's latency counts from when it was due: time spent behind schedule
                // is latency a producer would see too.
                let due = first.zip(every).map(|(first, every)| first + every * i as u32);
                if let Some(due) = due {
                    tokio::time::sleep_until(due.into()).await;
                }
                let sent = due.unwrap_or_else(Instant::now);
                let resp = http
                    .post(format!("{base}/ingest/plays"))
                    .bearer_auth(&token)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(resp.status().is_success(), "ingest answered {}", resp.status());
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let ingest_secs = started.elapsed().as_secs_f64();
    let busy = cpu_before.zip(cpu_seconds()).map(|(a, b)| (b - a) / ingest_secs);
    latencies.sort_by(f64::total_cmp);
    println!(
        "  ingest (durable acks): {:>9.0} events/s {:>6.1} MB/s   ack p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (per {}-event request)",
        total as f64 / ingest_secs,
        (total * event_bytes) as f64 / ingest_secs / 1e6,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        b.batch
    );
    if let Some(busy) = busy {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        println!("  CPU while ingesting: {busy:.2} of {cores} cores busy (producers, proxy, log and routes alike)");
    }
    for (name, id) in routes.iter().zip(&route_ids) {
        loop {
            let m = jobs.metrics(id).ok_or_else(|| anyhow::anyhow!("job {name} vanished"))?;
            if m.lag == 0 && m.counters.read >= total as u64 {
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "  route {name:<8} ingest-to-sink: {:>9.0} events/s {:>6.1} MB/s   ({} delivered, {} filtered out, done {:.2} s after the first post)",
                    total as f64 / secs,
                    (total * event_bytes) as f64 / secs / 1e6,
                    m.counters.delivered,
                    m.counters.filtered_out,
                    secs
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let mut e2e = sink_latencies(&dir.join("sinks/bench/plays"))?;
    e2e.sort_by(f64::total_cmp);
    println!(
        "  ingest-to-file latency (ingest timestamp to the file's commit, {} events): p50 {:.0} ms, p99 {:.0} ms",
        e2e.len(),
        percentile(&e2e, 0.50),
        percentile(&e2e, 0.99)
    );
    let _ = stop.send(());
    server.await??;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// CPU time this process has used (user and system), from `/proc/self/stat`; `None` where there
/// is no procfs.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name (which may hold spaces) start at state; utime and stime
    // are the 14th and 15th fields of the line, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// For every event in the file sink's output: the file's modification time (set when it was
/// written, kept by the atomic rename) minus the event's ingest timestamp, in ms.
fn sink_latencies(dir: &Path) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let path = entry?.path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            let committed = std::fs::metadata(&path)?.modified()?.duration_since(std::time::UNIX_EPOCH)?;
            let committed_ms = committed.as_secs_f64() * 1000.0;
            for line in std::fs::read_to_string(&path)?.lines() {
                let v: serde_json::Value = serde_json::from_str(line)?;
                let ingested = v["ingested_at"].as_f64().unwrap_or(committed_ms);
                out.push(committed_ms - ingested);
            }
        }
    }
    Ok(out)
}

/// The platform overview with `jobs` routes: declares them (one stream, one file sink), stores
/// five minutes of 10-second samples for each, starts the real server (which starts every job),
/// signs in and times the server-side render of `/jobs`, whole and filtered.
pub async fn overview(dir: &Path, jobs: usize, rounds: usize) -> anyhow::Result<()> {
    use crate::settings::Settings;
    use crate::startup::Application;
    use keystone_control::telemetry::RESOLUTIONS;
    use keystone_control::users::upsert_user;
    use keystone_control::{JobCounters, JobSample, Kind, Role};
    use serde_json::json;

    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let url = format!("sqlite://{}", dir.join("keystone.db").display());
    let team = BenchTeam::create(&url, "bench").await?;
    let (store, root) = (&team.store, &team.root);
    let started = Instant::now();
    team.declare(Kind::Stream, "plays", json!({"partitions": 1, "retention_hours": 24})).await?;
    team.declare(Kind::Sink, "lake", json!({"kind": "file", "settings": {"path": "plays"}})).await?;
    for n in 0..jobs {
        team.declare(Kind::Route, &format!("route-{n:05}"), json!({"stream": "plays", "sink": "lake"})).await?;
    }
    let fine = RESOLUTIONS[0];
    let now = keystone_control::store::now_ms();
    let routes = keystone_control::goal::Goal::new(store, root).list(Kind::Route).await?;
    for chunk in routes.chunks(500) {
        let mut samples = Vec::new();
        for (i, r) in chunk.iter().enumerate() {
            for k in 0..30 {
                let delivered = ((i + k) % 17) as u64 * 10;
                let sample = JobSample {
                    at: fine.bucket(now - k as i64 * 10_000),
                    seconds: fine.seconds,
                    counts: JobCounters { read: delivered, delivered, batches: 1, ..Default::default() },
                    lag: (k % 5) as u64,
                    lag_seconds: (k % 5) as f64,
                    end_to_end: None,
                    sink_request: None,
                    batch_size: None,
                };
                samples.push((r.id.clone(), sample));
            }
        }
        store.put_samples(fine, &samples).await?;
    }
    println!("Declared {jobs} routes with 30 samples each in {:.1?}", started.elapsed());
    upsert_user(&store, "bench-admin", "bench-password-1", Role::Admin, &[], false).await?;

    let settings = Settings { database_url: Some(url), ingest_max_body_bytes: 1 << 20, ..Settings::local(dir) };
    let app = Application::build(settings).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let running = app.jobs();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let started = Instant::now();
    while running.running_count() < jobs {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    println!("The reconciler started {jobs} jobs in {:.1?}", started.elapsed());

    let http = reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build()?;
    let login = http
        .post(format!("{base}/api/login"))
        .header("origin", &base)
        .form(&[("username", "bench-admin"), ("password", "bench-password-1")])
        .send()
        .await?;
    anyhow::ensure!(
        login.status().is_redirection() || login.status().is_success(),
        "sign-in failed: {}",
        login.status()
    );
    println!("{:<40} {:>10} {:>10} {:>12}", "page", "p50 ms", "max ms", "HTML bytes");
    for page in ["/jobs", "/jobs?health=failing", "/jobs?sort=lag&stream=plays"] {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..rounds {
            let t = Instant::now();
            let resp = http.get(format!("{base}{page}")).send().await?;
            anyhow::ensure!(resp.status().is_success(), "{page}: {}", resp.status());
            bytes = resp.bytes().await?.len();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        println!("{:<40} {:>10.0} {:>10.0} {:>12}", page, percentile(&times, 0.5), percentile(&times, 1.0), bytes);
    }
    let _ = stop.send(());
    server.await??;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// Shape of the scale-out benchmark.
#[derive(Debug, Clone)]
pub struct WorkersBench {
    pub events: usize,
    /// Worker counts to measure, one run each.
    pub workers: Vec<usize>,
    pub partitions: u32,
    /// A PostgreSQL server: each run gets a fresh database on it.
    pub postgres_url: String,
    /// A Kafka cluster (its topics are created); librdkafka's mock cluster in this process when
    /// none is given.
    pub brokers: Option<String>,
}

/// Route jobs spread over `keystone worker` processes. For each worker count: a fresh
/// PostgreSQL database, a control-role server in this process, that many worker processes of
/// this binary, and a stream of `partitions` partitions on Kafka. Once every partition is held
/// by a worker, the stream is filled with `events` play events; the figure is events over the
/// time until the route committed them all (at a file sink, so each worker writes its own files).
pub async fn workers(dir: &Path, b: WorkersBench) -> anyhow::Result<()> {
    let cluster = match &b.brokers {
        Some(_) => None,
        None => Some(rdkafka::mocking::MockCluster::new(1)?),
    };
    let brokers = match (&b.brokers, &cluster) {
        (Some(brokers), _) => brokers.clone(),
        (None, Some(c)) => c.bootstrap_servers(),
        (None, None) => unreachable!("a mock cluster is started without brokers"),
    };
    println!(
        "Workers: {} events of ~{} bytes, a {}-partition stream on {}, one route to a file sink, PostgreSQL at {}",
        b.events,
        play_event(0).len(),
        b.partitions,
        if cluster.is_some() { "librdkafka's mock cluster (in this process)" } else { brokers.as_str() },
        b.postgres_url.rsplit('@').next().unwrap_or_default()
    );
    for (run, &count) in b.workers.iter().enumerate() {
        // Each run its own topic: a fresh stream, so every run reads exactly its events.
        let team = format!("bench{run}");
        if let Some(c) = &cluster {
            c.create_topic(&keystone_control::stream_topic(&team, "plays", 0), b.partitions as i32, 1)?;
            c.create_topic(&keystone_control::dead_letter_topic(&team, "all"), 1, 1)?;
        }
        let secs = workers_run(&dir.join(&team), &b, &brokers, &team, count).await?;
        println!(
            "  {count} worker(s): {:>9.0} events/s   (all {} committed {:.2} s after the first append)",
            b.events as f64 / secs,
            b.events,
            secs
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

async fn workers_run(dir: &Path, b: &WorkersBench, brokers: &str, team: &str, count: usize) -> anyhow::Result<f64> {
    use crate::settings::{KafkaSettings, ProcessRole, Settings};
    use crate::startup::Application;
    use keystone_control::Kind;
    use keystone_engine::log::{KafkaConfig, KafkaLog};
    use serde_json::json;
    use sqlx::Connection;

    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let db = format!("keystone_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&b.postgres_url).await?;
    sqlx::query(&format!("CREATE DATABASE {db}")).execute(&mut admin).await?;
    let url = format!("{}/{db}", &b.postgres_url[..b.postgres_url.rfind('/').unwrap_or(b.postgres_url.len())]);
    let kafka = KafkaSettings {
        brokers: brokers.to_owned(),
        manage_topics: b.brokers.is_some(),
        replication_factor: 1,
        properties: Default::default(),
        session_timeout_ms: 6_000,
    };
    // The workers share the database, so they share its secrets key.
    let secrets_key = keystone_control::secret_box::SecretBox::generate_hex();
    let settings = Settings {
        database_url: Some(url.clone()),
        kafka: Some(kafka),
        role: ProcessRole::Control,
        secrets_key: Some(secrets_key.clone()),
        ..Settings::local(dir)
    };
    let app = Application::build(settings).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let bench = BenchTeam::create(&url, team).await?;
    let store = &bench.store;
    bench.declare(Kind::Stream, "plays", json!({"partitions": b.partitions, "retention_hours": 24})).await?;
    bench.declare(Kind::Sink, "lake", json!({"kind": "file", "settings": {"path": "plays"}})).await?;
    let route = json!({"stream": "plays", "sink": "lake", "batch_size": 5000, "max_latency_ms": 200,
                       "config": {"job.checkpoint_interval_ms": "200"}});
    bench.declare(Kind::Route, "all", route).await?;
    let team_id = store.get(Kind::Team, "", team).await?.map(|t| t.id).unwrap_or_default();
    let route_id = store.get(Kind::Route, &team_id, "all").await?.map(|o| o.id).unwrap_or_default();

    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for i in 0..count {
        children.push(
            std::process::Command::new(&exe)
                .arg("worker")
                .env("KEYSTONE_DATABASE_URL", &url)
                .env("KEYSTONE_SECRETS_KEY", &secrets_key)
                .env("KEYSTONE_DATA_DIR", dir)
                .env("KEYSTONE_INSTANCE", format!("bench-worker-{i}"))
                .env("KEYSTONE_KAFKA__BROKERS", brokers)
                .env("KEYSTONE_KAFKA__MANAGE_TOPICS", "false")
                .env("KEYSTONE_KAFKA__SESSION_TIMEOUT_MS", "6000")
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?,
        );
    }
    let outcome = async {
        // Every partition held by one of the workers, all of them heartbeating.
        let deadline = Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let workers = store.workers().await?;
            let held: usize =
                workers.iter().filter(|w| w.alive).flat_map(|w| &w.jobs).map(|j| j.partitions.len()).sum();
            if workers.iter().filter(|w| w.alive).count() == count && held == b.partitions as usize {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the workers did not share the partitions within 120 s");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let mut config = KafkaConfig::new(brokers);
        config.manage_topics = false;
        let log = KafkaLog::connect(config)?;
        let topic = keystone_control::stream_topic(team, "plays", 0);
        log.ensure_topic(&topic, b.partitions, Retention { max_age_ms: i64::MAX, max_bytes_per_partition: None })
            .await?;
        let started = Instant::now();
        for from in (0..b.events).step_by(1000) {
            let records = (from..(from + 1000).min(b.events))
                .map(|n| {
                    let envelope = keystone_engine::envelope::Envelope {
                        id: uuid::Uuid::now_v7().to_string(),
                        stream: format!("{team}/plays"),
                        ingested_at: keystone_control::store::now_ms(),
                        key: None,
                        headers: Default::default(),
                        payload: serde_json::from_str(&play_event(n)).expect("a play event is JSON"),
                    };
                    NewRecord {
                        partition: (n % b.partitions as usize) as u32,
                        timestamp_ms: envelope.ingested_at,
                        key: None,
                        value: envelope.to_bytes(),
                    }
                })
                .collect();
            log.append(&topic, records).await?;
        }
        loop {
            let committed: u64 = store.checkpoints(&route_id).await?.iter().map(|c| c.next_offset).sum();
            if committed >= b.events as u64 {
                return Ok(started.elapsed().as_secs_f64());
            }
            anyhow::ensure!(started.elapsed().as_secs() < 600, "not all events were committed within 10 minutes");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    .await;
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = stop.send(());
    server.await??;
    store.pool().close().await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&mut admin).await?;
    outcome
}
