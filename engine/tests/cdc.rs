//! PostgreSQL change data capture against a real PostgreSQL with `wal_level=logical`: a cluster
//! of the test's own (the machine's server runs with `wal_level=replica`), started from the
//! installed binaries on a free port in a temporary directory.
//!
//! The oracle: every change appended to the streams, folded in log order per key (an update
//! keeps the columns it left out, as a TOASTed value it did not change), must equal the source
//! table read at the end, row for row; across concurrent writers during the snapshot, primary
//! key changes, TOASTed values and restarts of the source.

mod pg_logical;

use keystone_control::egress::EgressPolicy;
use keystone_engine::job::CheckpointError;
use keystone_engine::log::{EmbeddedLog, Log, Retention};
use keystone_engine::sources::postgres_cdc::{self, CdcTable, PostgresCdcJob};
use keystone_engine::sources::{SourceOffsets, SourceState, SourceStats};
use pg_logical::LogicalPostgres;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};
use sqlx::{Connection, PgConnection, Row};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const KEEP: Retention = Retention { max_age_ms: i64::MAX / 2, max_bytes_per_partition: None };
const TOPIC: &str = "alpha.orders";
const NOTES: &str = "alpha.notes";

/// A stream schema made current, and how many of the log's events had a column it added (none,
/// if it came before the first change of its shape).
struct Described {
    stream: String,
    schema: Value,
    events_ahead: usize,
}

#[derive(Default)]
struct MemoryOffsets(
    Mutex<BTreeMap<String, SourceState>>,
    Mutex<Vec<Described>>,
    std::sync::OnceLock<Arc<EmbeddedLog>>,
);

impl SourceOffsets for MemoryOffsets {
    async fn schema(&self, _id: &str, stream: &str, _table: &str, schema: &Value) -> Result<(), CheckpointError> {
        let mut events_ahead = 0;
        if let Some(log) = self.2.get() {
            let columns: Vec<String> =
                schema["properties"]["after"]["properties"].as_object().unwrap().keys().cloned().collect();
            let known: Vec<String> =
                self.1.lock().unwrap().iter().rev().find(|d| d.stream == stream).map_or(columns.clone(), |d| {
                    d.schema["properties"]["after"]["properties"].as_object().unwrap().keys().cloned().collect()
                });
            let topic = format!("alpha.{}", &stream["alpha/".len()..]);
            for p in 0..3 {
                for r in log.read(&topic, p, 0, 100_000).await.unwrap() {
                    let e: Value = serde_json::from_slice(&r.value).unwrap();
                    let after = e["payload"]["after"].as_object().cloned().unwrap_or_default();
                    events_ahead += usize::from(after.keys().any(|k| !known.contains(k)));
                }
            }
        }
        self.1.lock().unwrap().push(Described { stream: stream.to_owned(), schema: schema.clone(), events_ahead });
        Ok(())
    }
    async fn load(&self, id: &str) -> Result<Option<SourceState>, CheckpointError> {
        Ok(self.0.lock().unwrap().get(id).cloned())
    }
    async fn save(&self, id: &str, state: &SourceState, _events: u64) -> Result<(), CheckpointError> {
        self.0.lock().unwrap().insert(id.to_owned(), state.clone());
        Ok(())
    }
    async fn report(&self, _id: &str, _phase: keystone_control::JobPhase, _cause: &str, _error: Option<&str>) {}
    async fn measured(&self, _id: &str, _measures: keystone_engine::sources::SlotMeasures) {}
}

fn job(url: &str) -> PostgresCdcJob {
    let (slot, publication) = postgres_cdc::owned_names("0193a1b2-src");
    PostgresCdcJob {
        source_id: "0193a1b2-src".into(),
        name: "alpha/shop".into(),
        url: url.to_owned(),
        slot,
        publication,
        tables: vec![
            CdcTable {
                table: "public.orders".into(),
                topic: TOPIC.into(),
                stream: "alpha/orders".into(),
                partitions: 3,
            },
            // The default replica identity: an update's unchanged TOASTed value is not sent.
            CdcTable { table: "notes".into(), topic: NOTES.into(), stream: "alpha/notes".into(), partitions: 3 },
        ],
        batch_max: 500,
        flush_interval: Duration::from_millis(50),
        heartbeat: Duration::from_secs(1),
    }
}

fn loopback() -> Arc<EgressPolicy> {
    Arc::new(EgressPolicy::new(&["127.0.0.0/8".into()], &[], false).unwrap())
}

/// An embedded log in a temporary directory with the two tables' streams.
async fn open_log() -> (tempfile::TempDir, Arc<EmbeddedLog>) {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(EmbeddedLog::open(dir.path(), Default::default()).unwrap());
    for topic in [TOPIC, NOTES] {
        log.ensure_topic(topic, 3, KEEP).await.unwrap();
    }
    (dir, log)
}

/// A running source and how to stop it.
struct Running {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), keystone_engine::sources::SourceError>>,
    stats: Arc<SourceStats>,
}

fn start(job: &PostgresCdcJob, log: &Arc<EmbeddedLog>, offsets: &Arc<MemoryOffsets>) -> Running {
    let cancel = CancellationToken::new();
    let stats = Arc::new(SourceStats::default());
    let task = tokio::spawn(postgres_cdc::run(
        Arc::new(job.clone()),
        log.clone(),
        offsets.clone(),
        loopback(),
        stats.clone(),
        cancel.clone(),
    ));
    Running { cancel, task, stats }
}

/// Random inserts, updates (some of the primary key, some of the TOASTed column only, most
/// leaving it alone) and deletes, in transactions of 1 to 3 statements, from one writer.
async fn write(url: String, seed: u64, rounds: usize) {
    let mut db = PgConnection::connect(&url).await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..rounds {
        let mut tx = db.begin().await.unwrap();
        for _ in 0..rng.gen_range(1..=3) {
            let id: i32 = rng.gen_range(1..400);
            let sql = match rng.gen_range(0..12) {
                10 => "UPDATE notes SET n = n + 1 WHERE id = $1 % 40",
                11 => "UPDATE notes SET body = (SELECT string_agg(md5(random()::text || x), '') FROM generate_series(1, 200) x) \
                       WHERE id = $1 % 40 AND $1 % 7 = 0",
                0..=3 => "INSERT INTO orders (id, note, total, big) VALUES ($1, 'new', 1.25, repeat(md5($1::text), 200)) ON CONFLICT (id) DO NOTHING",
                4..=6 => "UPDATE orders SET total = total + 1, note = note || '+' WHERE id = $1",
                7 => "UPDATE orders SET big = repeat(md5(random()::text), 150) WHERE id = $1",
                8 => "UPDATE orders SET id = id + 1000 WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM orders WHERE id = $1 + 1000)",
                _ => "DELETE FROM orders WHERE id = $1",
            };
            // A conflict between writers aborts the transaction: the next one starts afresh.
            if sqlx::query(sql).bind(id).execute(&mut *tx).await.is_err() {
                break;
            }
        }
        let _ = tx.commit().await;
    }
}

/// The table as change images would show it: the key, the columns as JSON.
async fn source_rows(url: &str, query: &str) -> BTreeMap<String, Map<String, Value>> {
    let mut db = PgConnection::connect(url).await.unwrap();
    let rows = sqlx::query(query).fetch_all(&mut db).await.unwrap();
    rows.iter()
        .map(|r| {
            let doc: Value = r.get("doc");
            (r.get::<String, _>("k"), doc.as_object().unwrap().clone())
        })
        .collect()
}

/// Every change in the streams, folded per key in log order, partition after partition, as an
/// applier would: a truncate removes the rows older than itself whenever it is met.
async fn folded(log: &EmbeddedLog, topic: &str) -> (BTreeMap<String, Map<String, Value>>, usize, Vec<String>) {
    let mut rows: BTreeMap<String, ((u64, u64), Map<String, Value>)> = BTreeMap::new();
    let mut count = 0;
    let mut ids = Vec::new();
    for p in 0..3 {
        let mut from = 0;
        loop {
            let records = log.read(topic, p, from, 1000).await.unwrap();
            let Some(last) = records.last() else { break };
            from = last.offset + 1;
            for r in &records {
                let envelope: Value = serde_json::from_slice(&r.value).unwrap();
                ids.push(envelope["id"].as_str().unwrap().to_owned());
                // Stamped with the stream and the time the change was taken into the log.
                assert_eq!(envelope["stream"].as_str().unwrap(), format!("alpha/{}", &topic["alpha.".len()..]));
                let age = keystone_engine::now_ms() - envelope["ingested_at"].as_i64().unwrap();
                assert!((0..120_000).contains(&age), "ingested {age} ms ago");
                let change = &envelope["payload"];
                // A change's place: its transaction's position, then its ordinal in it.
                let lsn = (change["lsn"].as_u64().unwrap(), change["seq"].as_u64().unwrap());
                count += 1;
                if change["op"] == "t" {
                    assert_eq!((envelope["key"].is_null(), change["key"].clone()), (true, serde_json::json!({})));
                    rows.retain(|_, (at, _)| *at >= lsn);
                    continue;
                }
                let key = change["key"]["id"].to_string();
                assert_eq!(envelope["key"].as_str(), Some(key.as_str()), "keyed by the primary key");
                match change["op"].as_str().unwrap() {
                    "c" | "r" => {
                        rows.insert(key, (lsn, change["after"].as_object().unwrap().clone()));
                    }
                    "u" => {
                        let (at, row) = rows.entry(key).or_default();
                        *at = lsn;
                        for (k, v) in change["after"].as_object().unwrap() {
                            row.insert(k.clone(), v.clone());
                        }
                    }
                    "d" => {
                        rows.remove(&key);
                    }
                    op => panic!("unknown op {op}"),
                }
            }
        }
    }
    (rows.into_iter().map(|(k, (_, row))| (k, row)).collect(), count, ids)
}

async fn wait_snapshot(stats: &SourceStats) {
    for _ in 0..300 {
        if stats.snapshot_done.load(Ordering::Relaxed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the snapshot did not finish");
}

async fn wait_caught_up(url: &str, stats: &SourceStats) {
    let mut db = PgConnection::connect(url).await.unwrap();
    // A marker transaction after the writers' last: once it is confirmed, all before it is in.
    // Its commit ends after the position read inside it.
    let mut tx = db.begin().await.unwrap();
    sqlx::query("UPDATE orders SET note = note WHERE id = (SELECT min(id) FROM orders)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let target: i64 =
        sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0')::bigint").fetch_one(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    for _ in 0..600 {
        if stats.confirmed_lsn.load(Ordering::Relaxed) >= target as u64 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the source did not confirm {target} (at {})", stats.confirmed_lsn.load(Ordering::Relaxed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_table_folds_back_to_the_source_across_snapshot_writers_and_restarts() {
    let pg = LogicalPostgres::start().await;
    let url = pg.url();
    let mut db = PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE orders (id int PRIMARY KEY, note text NOT NULL, total numeric(12,2) NOT NULL, big text, at timestamptz DEFAULT now());
         -- A primary-key change carries unchanged TOASTed values only in a full old row.
         ALTER TABLE orders REPLICA IDENTITY FULL;
         INSERT INTO orders (id, note, total, big) SELECT g, 'seed', g * 0.5, repeat(md5(g::text), 200) FROM generate_series(1, 300) g;
         CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL, n int NOT NULL);
         -- Random text that does not compress below the TOAST threshold: stored out of line.
         INSERT INTO notes SELECT g, (SELECT string_agg(md5(random()::text || x || g), '') FROM generate_series(1, 200) x), 0
           FROM generate_series(0, 39) g;",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let (_dir, log) = open_log().await;
    let offsets = Arc::new(MemoryOffsets::default());
    let job = job(&url);

    // Writers run while the snapshot is taken, and on through two restarts of the source.
    let writers: Vec<_> = (0..3).map(|i| tokio::spawn(write(url.clone(), i, 400))).collect();
    let mut running = start(&job, &log, &offsets);
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        running.cancel.cancel();
        let ended = running.task.await.unwrap();
        assert!(ended.is_ok() || format!("{ended:?}").contains("snapshot"), "{ended:?}");
        running = start(&job, &log, &offsets);
    }
    for w in writers {
        w.await.unwrap();
    }
    wait_caught_up(&url, &running.stats).await;
    running.cancel.cancel();
    running.task.await.unwrap().unwrap();

    let (copy, changes, ids) = folded(&log, TOPIC).await;
    let source = source_rows(
        &url,
        "SELECT id::text AS k, to_jsonb(o) - 'total' || jsonb_build_object('total', total::text) AS doc FROM orders o",
    )
    .await;
    assert!(source.len() > 100, "the writers left rows: {}", source.len());
    let differing: Vec<_> = source.keys().chain(copy.keys()).filter(|k| source.get(*k) != copy.get(*k)).collect();
    assert!(
        differing.is_empty(),
        "{} keys differ, e.g. {:?}: source {:?} copy {:?}",
        differing.len(),
        differing[0],
        source.get(differing[0]),
        copy.get(differing[0])
    );
    // Updates that left the TOASTed body alone carried no body: the copy kept it.
    let (notes_copy, note_changes, _) = folded(&log, NOTES).await;
    let notes = source_rows(&url, "SELECT id::text AS k, to_jsonb(t) AS doc FROM notes t").await;
    assert_eq!(notes_copy, notes, "{note_changes} note changes");
    let mut without_body = 0;
    for p in 0..3 {
        for r in log.read(NOTES, p, 0, 100_000).await.unwrap() {
            let e: Value = serde_json::from_slice(&r.value).unwrap();
            if e["payload"]["op"] == "u" && e["payload"]["after"].get("body").is_none() {
                without_body += 1;
            }
        }
    }
    assert!(without_body > 0, "some updates left the TOASTed body out ({note_changes} note changes)");
    let state = offsets.0.lock().unwrap().get("0193a1b2-src").cloned().unwrap();
    assert!(state.snapshot_lsn.is_some() && state.confirmed_lsn > 0, "{state:?}");
    // Repeats after a restart carry the ids they had, so an id-keyed sink keeps one of each.
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    println!("{changes} changes, {} distinct ids, {} rows", distinct.len(), source.len());
}

#[tokio::test]
async fn a_table_without_a_primary_key_is_refused_a_quiet_slot_advances_and_deleting_drops_slot_and_publication() {
    let pg = LogicalPostgres::start().await;
    let url = pg.url();
    let mut db = PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE orders (id int, note text); CREATE TABLE notes (id int PRIMARY KEY)")
        .execute(&mut db)
        .await
        .unwrap();
    let (_dir, log) = open_log().await;
    let offsets = Arc::new(MemoryOffsets::default());
    let job = job(&url);
    let running = start(&job, &log, &offsets);
    let err = running.task.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("\"public.orders\" has no primary key"), "{err}");

    sqlx::raw_sql("ALTER TABLE orders ADD PRIMARY KEY (id); INSERT INTO orders VALUES (1, 'a')")
        .execute(&mut db)
        .await
        .unwrap();
    let running = start(&job, &log, &offsets);
    for _ in 0..100 {
        if running.stats.snapshot_done.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A quiet database: WAL written elsewhere on its server, none in the captured tables. The
    // heartbeats let the slot's confirmed position follow, so it holds none of that WAL back.
    sqlx::query("CREATE DATABASE elsewhere").execute(&mut db).await.unwrap();
    let other = format!("{}/elsewhere", &url[..url.rfind('/').unwrap()]);
    let mut elsewhere = PgConnection::connect(&other).await.unwrap();
    sqlx::raw_sql("CREATE TABLE filler AS SELECT g FROM generate_series(1, 20000) g")
        .execute(&mut elsewhere)
        .await
        .unwrap();
    let written: i64 =
        sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0')::bigint").fetch_one(&mut db).await.unwrap();
    let mut confirmed = 0i64;
    for _ in 0..200 {
        confirmed = sqlx::query_scalar(
            "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&job.slot)
        .fetch_one(&mut db)
        .await
        .unwrap();
        if confirmed >= written {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        confirmed >= written,
        "the slot stayed at {confirmed}, behind {written} (the job confirmed {})",
        running.stats.confirmed_lsn.load(Ordering::Relaxed)
    );
    running.cancel.cancel();
    running.task.await.unwrap().unwrap();
    let slots: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1")
        .bind(&job.slot)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(slots, 1);
    postgres_cdc::drop_owned(&url, &loopback(), &job.slot, &job.publication).await.unwrap();
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1) + (SELECT count(*) FROM pg_publication WHERE pubname = $1)",
    )
    .bind(&job.slot)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_table_gets_its_new_stream_schema_before_its_changes_and_a_truncate_empties_the_copy() {
    let pg = LogicalPostgres::start().await;
    let url = pg.url();
    let mut db = PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE orders (id int PRIMARY KEY, note text NOT NULL, total numeric(12,2) NOT NULL, big text, at timestamptz DEFAULT now());
         INSERT INTO orders (id, note, total) SELECT g, 'seed', g FROM generate_series(1, 50) g;
         CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL, n int NOT NULL);",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let (_dir, log) = open_log().await;
    let offsets = Arc::new(MemoryOffsets::default());
    offsets.2.set(log.clone()).ok().unwrap();
    let job = job(&url);
    let running = start(&job, &log, &offsets);
    wait_snapshot(&running.stats).await;
    // Both streams were described before their first row (the empty table's too).
    let streams: Vec<String> = offsets.1.lock().unwrap().iter().map(|d| d.stream.clone()).collect();
    assert_eq!(streams, ["alpha/orders", "alpha/notes"]);

    sqlx::raw_sql(
        "INSERT INTO notes VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', 3);
         ALTER TABLE orders ADD COLUMN extra int;
         INSERT INTO orders (id, note, total, extra) VALUES (1000, 'added', 1, 42);
         UPDATE orders SET extra = 7 WHERE id = 1;
         TRUNCATE notes;
         INSERT INTO notes VALUES (5, 'after the truncate', 1);",
    )
    .execute(&mut db)
    .await
    .unwrap();
    wait_caught_up(&url, &running.stats).await;
    running.cancel.cancel();
    running.task.await.unwrap().unwrap();

    let described = offsets.1.lock().unwrap();
    let orders: Vec<&Described> = described.iter().filter(|d| d.stream == "alpha/orders").collect();
    assert_eq!(orders.len(), 2, "one schema from the catalog, one after ADD COLUMN");
    let extra = &orders[1].schema["properties"]["after"]["properties"]["extra"];
    assert_eq!(extra["x-postgres-type"], "integer", "{extra}");
    assert_eq!(orders[1].events_ahead, 0, "no change with the new column was in the log before its schema");
    // Every event of the stream is valid against the schema current when it was appended:
    // here the last, as the table only grew.
    let check = jsonschema::validator_for(&orders[1].schema).unwrap();
    for p in 0..3 {
        for r in log.read(TOPIC, p, 0, 100_000).await.unwrap() {
            let e: Value = serde_json::from_slice(&r.value).unwrap();
            assert!(check.is_valid(&e["payload"]), "{e}");
        }
    }
    let (copy, _, _) = folded(&log, TOPIC).await;
    assert_eq!(copy["1000"]["extra"], 42);
    assert_eq!(copy["1"]["extra"], 7);
    // The truncate is in each partition; folded partition by partition, the rows from before it
    // are gone whatever partition they were in, the row written after it stays.
    let (notes, changes, _) = folded(&log, NOTES).await;
    assert_eq!(notes.keys().collect::<Vec<_>>(), ["5"], "{changes} changes");
    let mut truncates = 0;
    for p in 0..3 {
        for r in log.read(NOTES, p, 0, 100_000).await.unwrap() {
            let e: Value = serde_json::from_slice(&r.value).unwrap();
            truncates += usize::from(e["payload"]["op"] == "t");
        }
    }
    assert_eq!(truncates, 3, "one per partition");
}
