//! Crash test: the real `keystone serve` process is killed with SIGKILL several times while a
//! producer posts and a route delivers to a file sink. Afterwards every acknowledged event is in
//! the sink (none lost), every sink file is whole, and redeliveries stay within the checkpoint
//! bound. `KEYSTONE_CRASH_KILLS` sets the number of kills (default 3; a script can run hundreds).
//! A processor with a window, and one with updating totals per key, run through the same kills:
//! their results equal those of processors declared afterwards that read the same events
//! without a crash. A CDC source (its own test) copies a table through kills into a PostgreSQL
//! table that must end equal to the source, row for row.

use keystone_control::auth::Principal;
use keystone_control::goal::{Declaration, Goal};
use keystone_control::store::Store;
use keystone_control::{Kind, Role, TeamSpec};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHECKPOINT_MS: u64 = 100;

/// The two crash tests take turns: each loads both cores, and their timings assume it.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn log_file(dir: &Path) -> Stdio {
    let f = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("server.log"));
    f.map(Stdio::from).unwrap_or_else(|_| Stdio::null())
}

fn start(dir: &Path, port: u16) -> Child {
    // `KEYSTONE_BIN` runs another build (a copy kept apart to loop this test while working).
    let bin = std::env::var("KEYSTONE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_keystone").to_owned());
    Command::new(bin)
        .arg("serve")
        .env("KEYSTONE_DATA_DIR", dir)
        .env("KEYSTONE_LISTEN", format!("127.0.0.1:{port}"))
        .env("KEYSTONE_SITE_ROOT", dir.join("site"))
        .env_remove("KEYSTONE_DATABASE_URL")
        .env("RUST_LOG", "warn,sqlx=warn")
        // The CDC test's PostgreSQL runs on this machine: allowed explicitly.
        .env("KEYSTONE_EGRESS__ALLOW", "127.0.0.0/8")
        .env("NO_COLOR", "1")
        // Every start's warnings (the server logs to stdout), kept to be shown if the test fails.
        .stdout(log_file(dir))
        .stderr(log_file(dir))
        .spawn()
        .expect("the keystone binary starts")
}

async fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "the server did not start listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every line of every committed sink file, with the files that did not parse whole.
fn sink_lines(root: &Path) -> (Vec<Value>, Vec<PathBuf>) {
    fn walk(dir: &Path, lines: &mut Vec<Value>, broken: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, lines, broken);
            } else if p.extension().is_some_and(|x| x == "ndjson") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let parsed: Result<Vec<Value>, _> = text.lines().map(serde_json::from_str).collect();
                match parsed {
                    Ok(v) if text.ends_with('\n') => lines.extend(v),
                    _ => broken.push(p),
                }
            }
        }
    }
    let (mut lines, mut broken) = (Vec::new(), Vec::new());
    walk(root, &mut lines, &mut broken);
    (lines, broken)
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_event() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let kills: usize = std::env::var("KEYSTONE_CRASH_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("keystone.db").display());
    // Declare through the goal-state service before the first start, as an admin would.
    let store = Store::connect(&db).await.unwrap();
    let root = Principal { user_id: "t".into(), display: "t".into(), role: Role::Admin, teams: vec![] };
    let goal = Goal::new(&store, &root);
    goal.create("", "alpha", Declaration::Team(TeamSpec::default()), "").await.unwrap();
    let declare = |kind, name: &str, spec: Value| {
        let goal = Goal::new(&store, &root);
        let name = name.to_owned();
        async move { goal.create("alpha", &name, Declaration::from_json(kind, spec).unwrap(), "").await.unwrap() }
    };
    let schema = json!({"type": "object", "properties": {
        "n": {"type": "integer"}, "k": {"type": "integer"}, "ts": {"type": "string", "format": "date-time"}}});
    declare(Kind::Stream, "plays", json!({"partitions": 2, "retention_hours": 24, "schema": schema})).await;
    declare(Kind::Sink, "lake", json!({"kind": "file", "settings": {"path": "crash"}})).await;
    let config = json!({"job.checkpoint_interval_ms": CHECKPOINT_MS.to_string()});
    let route = json!({"stream": "plays", "sink": "lake", "batch_size": 50, "max_latency_ms": 10, "config": config});
    declare(Kind::Route, "all", route).await;
    declare(Kind::Sink, "windows", json!({"kind": "file", "settings": {"path": "windows"}})).await;
    declare(Kind::Processor, "per-second", windowed("windows")).await;
    declare(Kind::Sink, "totals", json!({"kind": "file", "settings": {"path": "totals"}})).await;
    declare(Kind::Processor, "totals", updating("totals")).await;
    let (_, token) = keystone_control::producers::create(&store, &root, "alpha", "plays", "crash").await.unwrap();
    store.pool().close().await;

    let port = free_port();
    let mut server = start(dir.path(), port);
    wait_listening(port).await;

    // The producer: numbered events, 50 per request; a request that got no 200 is retried.
    let acked: Arc<Mutex<BTreeSet<u64>>> = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (acked, stop, token) = (acked.clone(), stop.clone(), token.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
            let mut next = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body: String = (next..next + 50).map(|n| format!("{}\n", play(n))).collect();
                let sent = http
                    .post(format!("http://127.0.0.1:{port}/ingest/plays"))
                    .bearer_auth(&token)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    acked.lock().unwrap().extend(next..next + 50);
                    next += 50;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.kill().unwrap(); // SIGKILL: no shutdown, no final checkpoint
        server.wait().unwrap();
        server = start(dir.path(), port);
        wait_listening(port).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 500, "the producer made progress ({} acknowledged)", acked.len());
    let sink = dir.path().join("sinks/alpha/crash");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (lines, broken) = sink_lines(&sink);
        assert!(broken.is_empty(), "half-written sink files: {broken:?}");
        let delivered: BTreeSet<u64> = lines.iter().filter_map(|l| l["event"]["n"].as_u64()).collect();
        if acked.is_subset(&delivered) {
            let mut copies: HashMap<&str, usize> = HashMap::new();
            for l in &lines {
                *copies.entry(l["id"].as_str().unwrap()).or_default() += 1;
            }
            let repeats: usize = copies.values().map(|c| c - 1).sum();
            // A kill repeats what was delivered since the last checkpoint: at most about one
            // interval's worth of events (2,500/s here) plus the batches in flight.
            let bound = kills * 1000;
            println!(
                "{kills} kills: {} events acknowledged, {} lines delivered, {repeats} redelivered (bound {bound})",
                acked.len(),
                lines.len()
            );
            assert!(repeats <= bound, "{repeats} redeliveries exceed the checkpoint bound {bound}");
            break;
        }
        let missing: Vec<&u64> = acked.difference(&delivered).take(5).collect();
        if Instant::now() >= deadline {
            // What the server said helps more than the numbers alone.
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let missing_all = acked.difference(&delivered).count();
            panic!(
                "acknowledged events never delivered: {missing_all} of {}, e.g. {missing:?}; server log (newest first):\n{}",
                acked.len(),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The processor's windows: close them all (an event far ahead in event time), then declare
    // a second processor over the same stream, which reads every event without a crash.
    let http = reqwest::Client::new();
    let far = json!({"n": 0, "ts": "2030-01-01T00:00:00Z", "k": 0});
    let sent = http
        .post(format!("http://127.0.0.1:{port}/ingest/plays"))
        .bearer_auth(&token)
        .header("content-type", "application/x-ndjson")
        .body(format!("{far}\n"))
        .send()
        .await
        .unwrap();
    assert!(sent.status().is_success());
    let store = Store::connect(&db).await.unwrap();
    let goal = Goal::new(&store, &root);
    let sink = json!({"kind": "file", "settings": {"path": "reference"}});
    goal.create("alpha", "reference", Declaration::from_json(Kind::Sink, sink).unwrap(), "").await.unwrap();
    let reference = Declaration::from_json(Kind::Processor, windowed("reference")).unwrap();
    goal.create("alpha", "reference", reference, "").await.unwrap();
    let sink = json!({"kind": "file", "settings": {"path": "reference-totals"}});
    goal.create("alpha", "reference-totals", Declaration::from_json(Kind::Sink, sink).unwrap(), "").await.unwrap();
    let reference = Declaration::from_json(Kind::Processor, updating("reference-totals")).unwrap();
    goal.create("alpha", "reference-totals", reference, "").await.unwrap();
    let windows = |path: &str| {
        let (lines, broken) = sink_lines(&dir.path().join("sinks/alpha").join(path));
        assert!(broken.is_empty(), "half-written sink files: {broken:?}");
        lines
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (crashed, uninterrupted) = (windows("windows"), windows("reference"));
        // Every copy of a result is the same result (a result repeated after a kill keeps its id
        // and its value), and the results are the uninterrupted run's.
        let mut by_id: HashMap<&str, &Value> = HashMap::new();
        for l in &crashed {
            let first = by_id.entry(l["id"].as_str().unwrap()).or_insert(&l["event"]);
            assert_eq!(*first, &l["event"], "one result id with two values");
        }
        let crashed: BTreeSet<String> = by_id.values().map(|v| v.to_string()).collect();
        let uninterrupted: BTreeSet<String> = uninterrupted.iter().map(|l| l["event"].to_string()).collect();
        // Updating results: each key's latest row (its count only grows), as an upserting sink
        // would hold it.
        let latest = |path: &str| {
            let mut by_key: BTreeMap<String, Value> = BTreeMap::new();
            for l in windows(path) {
                let row = l["event"].clone();
                let slot = by_key.entry(row["k"].to_string()).or_insert_with(|| row.clone());
                if row["plays"].as_u64() > slot["plays"].as_u64() {
                    *slot = row;
                }
            }
            by_key
        };
        let (crashed_totals, reference_totals) = (latest("totals"), latest("reference-totals"));
        if !uninterrupted.is_empty() && crashed == uninterrupted && crashed_totals == reference_totals {
            println!(
                "{kills} kills: {} windowed results and {} keys' updating totals, equal to the uninterrupted run's",
                crashed.len(),
                crashed_totals.len()
            );
            break;
        }
        if Instant::now() >= deadline {
            let only_crashed: Vec<&String> = crashed.difference(&uninterrupted).take(3).collect();
            let only_reference: Vec<&String> = uninterrupted.difference(&crashed).take(3).collect();
            panic!(
                "the crashed processor's {} results differ from the uninterrupted run's {}: only crashed {only_crashed:?}, only uninterrupted {only_reference:?}; totals {crashed_totals:?} against {reference_totals:?}",
                crashed.len(),
                uninterrupted.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

/// Event `n`: 10 ms of event time apart, in five keys.
fn play(n: u64) -> Value {
    let ms = 1_800_000_000_000u64 + n * 10;
    let ts = keystone_control::time::rfc3339_ms(ms as i64);
    json!({"n": n, "ts": ts, "k": n % 5})
}

/// A processor counting events and summing `n` per key and one-second window of event time.
fn windowed(sink: &str) -> Value {
    json!({
        "sql": "SELECT TUMBLE_START(ts, INTERVAL '1' SECOND) AS w, k, COUNT(*) AS plays, SUM(n) AS total \
                FROM plays GROUP BY TUMBLE(ts, INTERVAL '1' SECOND), k",
        "inputs": {"plays": {"event_time": "ts", "idle_timeout_ms": 1000}},
        "sink": sink,
        "config": {"job.checkpoint_interval_ms": CHECKPOINT_MS.to_string()},
    })
}

/// A processor keeping each key's running count and sum of `n` (an updating result).
fn updating(sink: &str) -> Value {
    json!({
        "sql": "SELECT k, COUNT(*) AS plays, SUM(n) AS total FROM plays GROUP BY k",
        "inputs": {"plays": {"event_time": "ts", "idle_timeout_ms": 1000}},
        "state_ttl_s": 86_400,
        "sink": sink,
        "config": {"job.checkpoint_interval_ms": CHECKPOINT_MS.to_string()},
    })
}

#[path = "../../engine/tests/pg_logical/mod.rs"]
mod pg_logical;

/// Inserts, updates (also of the primary key) and deletes of `items` in small transactions.
async fn cdc_writer(url: String, seed: u64, stop: Arc<std::sync::atomic::AtomicBool>) -> u64 {
    use sqlx::Connection;
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut i = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        i += 1;
        let id = ((seed * 7919 + i * 104_729) % 500) as i32;
        let sql = match (seed + i) % 7 {
            0..=2 => "INSERT INTO items (id, name, qty) VALUES ($1, 'n' || $1, 1) ON CONFLICT (id) DO NOTHING",
            3 | 4 => "UPDATE items SET qty = qty + 1, name = name || '+' WHERE id = $1",
            5 => {
                "UPDATE items SET id = id + 500 WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM items WHERE id = $1 + 500)"
            }
            _ => "DELETE FROM items WHERE id = $1",
        };
        let _ = sqlx::query(sql).bind(id).execute(&mut db).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    i
}

async fn item_rows(db: &mut sqlx::PgConnection, table: &str) -> Vec<(i32, String, i32)> {
    let sql = format!("SELECT id, name, qty FROM {table} ORDER BY id");
    sqlx::query_as(&sql).fetch_all(db).await.unwrap()
}

#[tokio::test]
async fn kill_9_keeps_a_cdc_copy_equal_to_its_source() {
    use sqlx::Connection;
    let _turn = ONE_AT_A_TIME.lock().await;
    let kills: usize = std::env::var("KEYSTONE_CRASH_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(3);
    let pg = pg_logical::LogicalPostgres::start().await;
    let url = pg.url();
    let mut src = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL);
         INSERT INTO items SELECT g, 'seed' || g, g FROM generate_series(1, 200) g;",
    )
    .execute(&mut src)
    .await
    .unwrap();
    sqlx::query("CREATE DATABASE target").execute(&mut src).await.unwrap();
    let target_url = format!("{}/target", &url[..url.rfind('/').unwrap()]);
    let mut dst = sqlx::PgConnection::connect(&target_url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE items_copy (id int PRIMARY KEY, name text, qty int, _lsn bigint NOT NULL)")
        .execute(&mut dst)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("keystone.db").display());
    // The test's PostgreSQL is on this machine: allowed, as the server is (see `start`).
    let local = keystone_control::egress::EgressPolicy::new(&["127.0.0.0/8".into()], &[], false).unwrap();
    let store = Store::connect(&db).await.unwrap().with_egress(local);
    let root = Principal { user_id: "t".into(), display: "t".into(), role: Role::Admin, teams: vec![] };
    let goal = Goal::new(&store, &root);
    goal.create("", "alpha", Declaration::Team(TeamSpec::default()), "").await.unwrap();
    for (kind, name, spec) in [
        (Kind::Stream, "items", json!({"partitions": 3, "retention_hours": 24})),
        (
            Kind::Source,
            "shop",
            json!({"kind": "postgres_cdc", "tables": [{"table": "items", "stream": "items"}],
            "secrets": {"url": url}}),
        ),
        (
            Kind::Sink,
            "copy",
            json!({"kind": "postgres", "settings": {"table": "items_copy", "mode": "apply_changes"},
            "secrets": {"url": target_url}}),
        ),
        (
            Kind::Route,
            "copy",
            json!({"stream": "items", "sink": "copy", "batch_size": 50, "max_latency_ms": 20,
            "config": {"job.checkpoint_interval_ms": CHECKPOINT_MS.to_string()}}),
        ),
    ] {
        goal.create("alpha", name, Declaration::from_json(kind, spec).unwrap(), "").await.unwrap();
    }
    store.pool().close().await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (1..=3).map(|i| tokio::spawn(cdc_writer(url.clone(), i, stop.clone()))).collect();
    let port = free_port();
    let mut server = start(dir.path(), port);
    wait_listening(port).await;
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.kill().unwrap(); // SIGKILL: nothing confirmed to the slot or checkpointed at exit
        server.wait().unwrap();
        server = start(dir.path(), port);
        wait_listening(port).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut statements = 0;
    for w in writers {
        statements += w.await.unwrap();
    }
    let expected = item_rows(&mut src, "items").await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let copy = item_rows(&mut dst, "items_copy").await;
        if copy == expected {
            println!("{kills} kills: {statements} statements by 3 writers, {} rows copied equal", copy.len());
            break;
        }
        if Instant::now() >= deadline {
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let missing: Vec<_> = expected.iter().filter(|r| !copy.contains(r)).take(5).collect();
            let extra: Vec<_> = copy.iter().filter(|r| !expected.contains(r)).take(5).collect();
            panic!(
                "the copy ({} rows) differs from the source ({}): missing {missing:?}, extra {extra:?}; server log (newest first):\n{}",
                copy.len(),
                expected.len(),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
}
