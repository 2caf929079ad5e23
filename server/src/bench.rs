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
}

/// A ~250-byte play event; half of them pass the benchmark route's filter.
fn play_event(n: usize) -> String {
    format!(
        r#"{{"user_id":"user-{:08}","title_id":"title-{:06}","country":"{}","bitrate":{},"device":"tv-model-x","session":"{:032x}","position_ms":{},"event":"play","app_version":"12.4.1","network":"wifi"}}"#,
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
    use keystone_control::auth::Principal;
    use keystone_control::goal::{Declaration, Goal};
    use keystone_control::{Kind, Role, TeamSpec};
    use serde_json::json;

    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let settings = Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        database_url: Some(format!("sqlite://{}", dir.join("keystone.db").display())),
        site_root: dir.join("site"),
        secure_cookies: false,
        session_idle_minutes: 60,
        session_absolute_hours: 12,
        public_origin: None,
        ingest_max_body_bytes: 16 << 20,
        ingest_max_event_bytes: 64 << 10,
        telemetry_interval_ms: 10_000,
        metrics_token: None,
        instance: None,
        reconciler_lease_ms: 10_000,
        kafka: None,
        role: Default::default(),
        job_env: Default::default(),
    };
    let app = Application::build(settings.clone()).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let jobs = app.jobs();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    let store = keystone_control::store::Store::connect(settings.database_url.as_deref().unwrap_or_default()).await?;
    let root = Principal { user_id: "bench".into(), display: "bench".into(), role: Role::Admin, teams: vec![] };
    let goal = Goal::new(&store, &root);
    goal.create("", "bench", Declaration::Team(TeamSpec::default()), "benchmark").await?;
    let declare = |kind: Kind, name: &'static str, spec: serde_json::Value| {
        let goal = Goal::new(&store, &root);
        async move {
            let decl = Declaration::from_json(kind, spec).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            goal.create("bench", name, decl, "benchmark").await.map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            Ok::<_, anyhow::Error>(())
        }
    };
    declare(Kind::Stream, "plays", json!({"partitions": b.partitions, "retention_hours": 24})).await?;
    declare(Kind::Sink, "lake", json!({"kind": "file", "settings": {"path": "plays"}})).await?;
    let route = |sink: &str| {
        json!({"stream": "plays", "sink": sink, "filter": "event.bitrate > 3000",
               "projection": {"keep": ["user_id", "title_id", "country", "bitrate"]},
               "batch_size": 5000, "max_latency_ms": 200})
    };
    declare(Kind::Route, "to-lake", route("lake")).await?;
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
        declare(
            Kind::Sink,
            "dwh",
            json!({"kind": "postgres", "settings": {"table": "keystone_bench_plays"}, "secrets": {"url": url}}),
        )
        .await?;
        declare(Kind::Route, "to-dwh", route("dwh")).await?;
        routes.push("to-dwh");
    }
    let (_, token) = keystone_control::producers::create(&store, &root, "bench", "plays", "bench").await?;
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
    println!(
        "Pipeline: {total} events of ~{event_bytes} bytes, {} producers posting {}-event NDJSON batches, {} partitions, routes: {}",
        b.producers,
        b.batch,
        b.partitions,
        routes.join(", ")
    );
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..b.producers {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        let bodies: Vec<String> = (0..per_producer).map(|i| body_of((p * per_producer + i) * b.batch)).collect();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(bodies.len());
            for body in bodies {
                let sent = Instant::now();
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
    latencies.sort_by(f64::total_cmp);
    println!(
        "  ingest (durable acks): {:>9.0} events/s {:>6.1} MB/s   ack p50 {:.1} ms, p99 {:.1} ms (per {}-event request)",
        total as f64 / ingest_secs,
        (total * event_bytes) as f64 / ingest_secs / 1e6,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        b.batch
    );
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
    let mut e2e = sink_latencies(&dir.join("sinks/plays"))?;
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
    use keystone_control::auth::{upsert_user, Principal};
    use keystone_control::goal::{Declaration, Goal};
    use keystone_control::telemetry::RESOLUTIONS;
    use keystone_control::{JobCounters, JobSample, Kind, Role, TeamSpec};
    use serde_json::json;

    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let url = format!("sqlite://{}", dir.join("keystone.db").display());
    let store = keystone_control::store::Store::connect(&url).await?;
    let root = Principal { user_id: "bench".into(), display: "bench".into(), role: Role::Admin, teams: vec![] };
    let goal = Goal::new(&store, &root);
    goal.create("", "bench", Declaration::Team(TeamSpec::default()), "benchmark").await?;
    let declare = |kind: Kind, name: String, spec: serde_json::Value| {
        let goal = Goal::new(&store, &root);
        async move {
            let decl = Declaration::from_json(kind, spec).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            goal.create("bench", &name, decl, "benchmark").await.map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            Ok::<_, anyhow::Error>(())
        }
    };
    let started = Instant::now();
    declare(Kind::Stream, "plays".into(), json!({"partitions": 1, "retention_hours": 24})).await?;
    declare(Kind::Sink, "lake".into(), json!({"kind": "file", "settings": {"path": "plays"}})).await?;
    for n in 0..jobs {
        declare(Kind::Route, format!("route-{n:05}"), json!({"stream": "plays", "sink": "lake"})).await?;
    }
    let fine = RESOLUTIONS[0];
    let now = keystone_control::store::now_ms();
    let routes = goal.list(Kind::Route).await?;
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

    let settings = Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        database_url: Some(url),
        site_root: dir.join("site"),
        secure_cookies: false,
        session_idle_minutes: 60,
        session_absolute_hours: 12,
        public_origin: None,
        ingest_max_body_bytes: 1 << 20,
        ingest_max_event_bytes: 64 << 10,
        telemetry_interval_ms: 10_000,
        metrics_token: None,
        instance: None,
        reconciler_lease_ms: 10_000,
        kafka: None,
        role: Default::default(),
        job_env: Default::default(),
    };
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
