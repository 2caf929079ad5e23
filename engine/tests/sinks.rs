//! The sink compliance test: every sink kind, against the real thing where this machine has it
//! (files, PostgreSQL), and the HTTP formats against a local HTTP server started by the test (no
//! search server runs here). Each sink must accept a batch, tolerate the same batch again
//! (at-least-once redelivery), and name exactly the events it refuses.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use keystone_control::{SinkErrorKind, SinkKind, SinkSpec};
use keystone_engine::log::{EmbeddedLog, Log, Retention};
use keystone_engine::sinks::{AnySink, Appender, Sink, SinkError, SinkEvent};
use serde_json::{json, Value};
use sqlx::Connection;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

fn events(n: usize) -> Vec<SinkEvent> {
    (0..n)
        .map(|i| SinkEvent {
            id: format!("0190a0b0-0000-7000-8000-{i:012}"),
            ingested_at: 1_795_669_629_000 + i as i64,
            key: None,
            partition: 0,
            offset: i as u64,
            event: raw(json!({"n": i, "country": "BR", "title": format!("t{i}")})),
        })
        .collect()
}

/// An event's JSON text, as a route job hands it over.
fn raw(event: Value) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(&event).unwrap()
}

fn tree(e: &SinkEvent) -> Value {
    e.event_value().unwrap()
}

fn set_n(e: &mut SinkEvent, n: Value) {
    let mut event = tree(e);
    event["n"] = n;
    e.event = raw(event);
}

/// The sinks under test talk to servers on this machine: the egress policy must allow them.
fn local_endpoints() -> Arc<keystone_control::egress::EgressPolicy> {
    Arc::new(
        keystone_control::egress::EgressPolicy::new(&["127.0.0.0/8".into(), "localhost".into()], &[], false).unwrap(),
    )
}

fn sink(kind: SinkKind, settings: &[(&str, &str)], secrets: &[(&str, &str)], dir: &std::path::Path) -> AnySink {
    let spec = SinkSpec {
        kind,
        description: String::new(),
        settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        secrets: BTreeMap::new(),
        tags: Vec::new(),
    };
    let secrets = secrets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let log: Arc<dyn Appender> = Arc::new(EmbeddedLog::open(dir.join("log"), Default::default()).unwrap());
    AnySink::build(&spec, "alpha", &secrets, dir, &log, &local_endpoints(), None).unwrap()
}

/// The shared part: a batch goes through, and the same batch again goes through too.
async fn accepts_a_batch_and_its_redelivery(sink: &AnySink, batch: &[SinkEvent]) {
    sink.deliver(batch).await.expect("first delivery");
    sink.deliver(batch).await.expect("redelivery of the same batch");
}

#[tokio::test]
async fn file_sink_commits_whole_ndjson_files_in_hive_folders() {
    let dir = tempfile::tempdir().unwrap();
    let s = sink(SinkKind::File, &[("path", "plays/br")], &[], dir.path());
    let batch = events(100);
    accepts_a_batch_and_its_redelivery(&s, &batch).await;
    let folder = dir.path().join("sinks/alpha/plays/br/dt=2026-11-26/hr=05");
    let names: Vec<String> =
        std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let expected = format!("part-0000-00000000000000000000-00000000000000000099-{}.ndjson", batch[0].id);
    assert_eq!(names, [expected], "redelivery overwrote");
    let text = std::fs::read_to_string(folder.join(&names[0])).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 100);
    assert_eq!(lines[7], json!({"id": batch[7].id, "ingested_at": batch[7].ingested_at, "event": tree(&batch[7])}));
}

#[tokio::test]
async fn file_sink_commits_parquet_files_that_read_back_to_the_same_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = sink(SinkKind::File, &[("path", "lake/plays"), ("format", "parquet")], &[], dir.path());
    let batch = events(100);
    accepts_a_batch_and_its_redelivery(&s, &batch).await;
    let folder = dir.path().join("sinks/alpha/lake/plays/dt=2026-11-26/hr=05");
    let names: Vec<String> =
        std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let expected = format!("part-0000-00000000000000000000-00000000000000000099-{}.parquet", batch[0].id);
    assert_eq!(names, [expected], "one committed file, no staging leftovers");
    let back = keystone_engine::sinks::parquet::decode(std::fs::read(folder.join(&names[0])).unwrap().into()).unwrap();
    assert_eq!(back.len(), 100);
    assert_eq!(
        (&back[7].id, back[7].ingested_at, tree(&back[7])),
        (&batch[7].id, batch[7].ingested_at, tree(&batch[7]))
    );
}

#[tokio::test]
async fn file_sink_refuses_only_the_events_that_do_not_fit_a_parquet_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = sink(SinkKind::File, &[("path", "lake"), ("format", "parquet")], &[], dir.path());
    let mut batch = events(10);
    batch[4].event = raw(json!({"n": {"nested": 1}, "country": "BR", "title": "t4"}));
    match s.deliver(&batch).await {
        Err(SinkError::Rejected(refused)) => assert_eq!(refused.iter().map(|r| r.0).collect::<Vec<_>>(), [4]),
        other => panic!("expected event 4 refused, got {other:?}"),
    }
}

#[tokio::test]
async fn file_sink_writes_through_any_object_store() {
    use keystone_engine::sinks::FileSink;
    use object_store::ObjectStoreExt;
    let store = Arc::new(object_store::memory::InMemory::new());
    let s = FileSink::with_store(store.clone(), "bucket/plays".into(), keystone_control::FileFormat::Ndjson, None);
    let batch = events(20);
    s.deliver(&batch).await.unwrap();
    let path = object_store::path::Path::from(format!(
        "bucket/plays/dt=2026-11-26/hr=05/part-0000-00000000000000000000-00000000000000000019-{}.ndjson",
        batch[0].id
    ));
    let body = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count(), 20);
}

/// What the endpoint saw of one request: content type, Authorization header, body.
type Seen = (String, Option<String>, String);

#[derive(Clone, Default)]
struct Endpoint {
    bodies: Arc<Mutex<Vec<Seen>>>,
}

async fn webhook(State(ep): State<Endpoint>, headers: axum::http::HeaderMap, body: String) -> (StatusCode, String) {
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    ep.bodies.lock().unwrap().push((ct.clone(), auth, body.clone()));
    if ct == "application/x-ndjson" {
        // An Elasticsearch-like _bulk answer: documents titled t3 fail mapping, t5 is throttled once.
        let lines: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let throttled_before = ep.bodies.lock().unwrap().len() > 1;
        let items: Vec<Value> = lines
            .chunks(2)
            .map(|pair| match pair[1]["title"].as_str() {
                Some("t3") => json!({"index": {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "failed to parse field [n]"}}}),
                Some("t5") if !throttled_before => json!({"index": {"status": 429, "error": {"reason": "rejected execution"}}}),
                _ => json!({"index": {"_id": pair[0]["index"]["_id"], "status": 201}}),
            })
            .collect();
        let errors = items.iter().any(|i| i["index"]["status"].as_u64() != Some(201));
        return (StatusCode::OK, json!({"took": 1, "errors": errors, "items": items}).to_string());
    }
    let batch: Vec<Value> = serde_json::from_str(&body).unwrap();
    if batch.iter().any(|e| e["event"]["n"] == 2) {
        return (StatusCode::UNPROCESSABLE_ENTITY, "n=2 is not allowed".into());
    }
    if batch.iter().any(|e| e["event"]["n"] == 99) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down".into());
    }
    (StatusCode::OK, "{}".into())
}

async fn serve(ep: Endpoint) -> String {
    let app = axum::Router::new().route("/hook", post(webhook)).with_state(ep);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hook")
}

#[tokio::test]
async fn http_json_sink_posts_batches_and_isolates_refused_events() {
    let ep = Endpoint::default();
    let url = serve(ep.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = sink(SinkKind::Http, &[("url", &url)], &[("authorization", "Bearer s3cret")], dir.path());
    let good = events(2);
    accepts_a_batch_and_its_redelivery(&s, &good).await;
    let (ct, auth, body) = ep.bodies.lock().unwrap()[0].clone();
    assert_eq!((ct.as_str(), auth.as_deref()), ("application/json", Some("Bearer s3cret")));
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()[1]["event"]["n"], 1);

    // A 4xx for the batch: re-sent one by one, and only n=2 is refused.
    ep.bodies.lock().unwrap().clear();
    let err = s.deliver(&events(4)).await.unwrap_err();
    assert_eq!(err, SinkError::Rejected(vec![(2, "HTTP 422 Unprocessable Entity: n=2 is not allowed".into())]));
    assert_eq!(ep.bodies.lock().unwrap().len(), 5, "one batch request, then one per event");
    // A 5xx is transient.
    let err = s.deliver(&events(100)[99..]).await.unwrap_err();
    assert!(
        matches!(err, SinkError::Transient { kind: SinkErrorKind::Server, ref message } if message.contains("503")),
        "{err:?}"
    );
}

#[tokio::test]
async fn http_bulk_sink_speaks_the_bulk_api_and_reads_item_errors() {
    let ep = Endpoint::default();
    let url = serve(ep.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = sink(SinkKind::Http, &[("url", &url), ("format", "bulk"), ("index", "plays")], &[], dir.path());
    let batch = events(6);
    // First answer throttles item 5: the whole batch is retried (ids make that harmless).
    assert!(matches!(s.deliver(&batch).await, Err(SinkError::Transient { kind: SinkErrorKind::Throttled, .. })));
    let err = s.deliver(&batch).await.unwrap_err();
    assert_eq!(err, SinkError::Rejected(vec![(3, "failed to parse field [n]".into())]));
    let (ct, _, body) = ep.bodies.lock().unwrap()[1].clone();
    assert_eq!(ct, "application/x-ndjson");
    let lines: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 12);
    assert_eq!(lines[0], json!({"index": {"_index": "plays", "_id": batch[0].id}}));
    assert_eq!(lines[1], tree(&batch[0]));
}

fn pg_admin_url() -> String {
    std::env::var("KEYSTONE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database: its name, its URL and an admin connection to drop it with.
async fn fresh_database() -> (String, String, sqlx::PgConnection) {
    let name = format!("keystone_sink_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&pg_admin_url()).await.expect("PostgreSQL must be reachable");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let base = pg_admin_url();
    let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
    (name, url, admin)
}

type ItemRow = (i32, Option<String>, Option<i32>, i64);

async fn rows(db: &mut sqlx::PgConnection) -> Vec<ItemRow> {
    sqlx::query_as("SELECT id, name, qty, _lsn FROM items ORDER BY id").fetch_all(db).await.unwrap()
}

/// A change event as a CDC source writes it.
fn change(at: u64, op: &str, id: i64, after: Option<Value>, lsn: u64) -> SinkEvent {
    let payload = json!({"op": op, "table": "public.items", "key": {"id": id}, "before": null, "after": after,
        "lsn": lsn, "seq": 1, "txid": 9, "ts_ms": 1_796_670_688_123i64});
    SinkEvent {
        id: format!("0190a0b0-0000-7000-8000-{at:012}"),
        ingested_at: 1_796_670_688_200,
        key: Some(id.to_string()),
        partition: 0,
        offset: at,
        event: raw(payload),
    }
}

#[tokio::test]
async fn postgres_sink_applies_changes_by_key_and_never_moves_a_row_back() {
    let (name, url, mut admin) = fresh_database().await;
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "CREATE TABLE items (id int PRIMARY KEY, name text, qty int CHECK (qty >= 0), _lsn bigint NOT NULL, _seq bigint)",
    )
        .execute(&mut db)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = sink(SinkKind::Postgres, &[("table", "items"), ("mode", "apply_changes")], &[("url", &url)], dir.path());
    let batch = vec![
        change(0, "r", 1, Some(json!({"id": 1, "name": "a", "qty": 1})), 100),
        change(1, "r", 2, Some(json!({"id": 2, "name": "b", "qty": 2})), 100),
        change(2, "c", 3, Some(json!({"id": 3, "name": "c", "qty": 3})), 110),
        // An update that left `name` out (an unchanged TOASTed value): the earlier row fills it.
        change(3, "u", 3, Some(json!({"id": 3, "qty": 4})), 120),
        change(4, "d", 2, None, 130),
    ];
    accepts_a_batch_and_its_redelivery(&s, &batch).await;
    assert_eq!(rows(&mut db).await, [(1, Some("a".into()), Some(1), 100), (3, Some("c".into()), Some(4), 120)]);
    // A later update that leaves `name` out keeps the stored one.
    s.deliver(&[change(5, "u", 1, Some(json!({"id": 1, "qty": 7})), 140)]).await.unwrap();
    // An older change delivered again (a replay from before a restart) moves nothing back.
    s.deliver(&[change(0, "r", 1, Some(json!({"id": 1, "name": "a", "qty": 1})), 100)]).await.unwrap();
    assert_eq!(rows(&mut db).await[0], (1, Some("a".into()), Some(7), 140));

    // Not a change event, or a row the table refuses: refused alone, the rest applied.
    let mut mixed = vec![
        change(6, "c", 4, Some(json!({"id": 4, "name": "d", "qty": 1})), 150),
        change(7, "u", 1, Some(json!({"id": 1, "name": "a", "qty": -5})), 150),
        change(8, "c", 5, Some(json!({"id": 5, "name": "e", "qty": 1})), 150),
    ];
    mixed[2].event = raw(json!({"n": 1}));
    let SinkError::Rejected(refused) = s.deliver(&mixed).await.unwrap_err() else { panic!("expected refusals") };
    assert_eq!(refused.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2]);
    assert!(refused[0].1.contains("23514"), "{}", refused[0].1);
    assert!(refused[1].1.contains("not a change event"), "{}", refused[1].1);
    assert_eq!(rows(&mut db).await.len(), 3, "{:?}", rows(&mut db).await);

    // A truncate (in every partition) removes the rows older than itself, within a batch too:
    // what the batch wrote before it goes, what it wrote after it stays. Met again after an
    // older change replayed from another partition, it removes that too.
    let mut truncate = change(9, "t", 0, None, 200);
    truncate.event = raw(json!({"op": "t", "table": "public.items", "key": {}, "before": null, "after": null,
        "lsn": 200, "seq": 1, "txid": 10, "ts_ms": 1_796_670_688_123i64}));
    let around = vec![
        change(10, "c", 6, Some(json!({"id": 6, "name": "f", "qty": 1})), 190),
        truncate.clone(),
        change(11, "c", 7, Some(json!({"id": 7, "name": "g", "qty": 1})), 210),
    ];
    s.deliver(&around).await.unwrap();
    assert_eq!(rows(&mut db).await, [(7, Some("g".into()), Some(1), 210)]);
    s.deliver(&[change(12, "u", 4, Some(json!({"id": 4, "qty": 9})), 160)]).await.unwrap();
    assert_eq!(rows(&mut db).await.len(), 2, "an older change of another partition, for a while");
    s.deliver(&[truncate]).await.unwrap();
    assert_eq!(rows(&mut db).await, [(7, Some("g".into()), Some(1), 210)]);
    // A truncate between writes of its own transaction (one position for all): `_seq` orders
    // them, whatever partition the truncate is met in first.
    let in_tx = |at: u64, op: &str, id: i64, seq: u64| {
        let after = (op != "t").then(|| json!({"id": id, "name": "tx", "qty": 1}));
        let key = if op == "t" { json!({}) } else { json!({"id": id}) };
        let mut e = change(at, op, id, after.clone(), 220);
        e.event = raw(json!({"op": op, "table": "public.items", "key": key, "before": null, "after": after,
            "lsn": 220, "seq": seq, "txid": 11, "ts_ms": 1_796_670_688_123i64}));
        e
    };
    s.deliver(&[in_tx(13, "c", 8, 1)]).await.unwrap();
    s.deliver(&[in_tx(14, "t", 0, 2), in_tx(15, "c", 9, 3)]).await.unwrap();
    s.deliver(&[in_tx(14, "t", 0, 2)]).await.unwrap();
    assert_eq!(rows(&mut db).await, [(9, Some("tx".into()), Some(1), 220)]);
    // The source's table grew a column, and so did the target: the sink reads its columns
    // again when a change carries one they lack, so the first such change keeps its value.
    sqlx::query("ALTER TABLE items ADD COLUMN note text").execute(&mut db).await.unwrap();
    s.deliver(&[change(16, "u", 9, Some(json!({"id": 9, "note": "grown"})), 230)]).await.unwrap();
    let note: Option<String> =
        sqlx::query_scalar("SELECT note FROM items WHERE id = 9").fetch_one(&mut db).await.unwrap();
    assert_eq!(note.as_deref(), Some("grown"));

    // A table without `_lsn` is the operator's to fix: transient, never dead-lettered.
    sqlx::query("CREATE TABLE plain (id int PRIMARY KEY)").execute(&mut db).await.unwrap();
    let plain =
        sink(SinkKind::Postgres, &[("table", "plain"), ("mode", "apply_changes")], &[("url", &url)], dir.path());
    assert!(matches!(plain.deliver(&batch).await,
        Err(SinkError::Transient { kind: SinkErrorKind::Unavailable, message }) if message.contains("_lsn")));
    drop((db, s, plain));
    let _ = sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await;
}

#[tokio::test]
async fn postgres_sink_upserts_by_event_id_and_refuses_bad_rows_alone() {
    let (name, url, mut admin) = fresh_database().await;
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "CREATE TABLE plays (event_id uuid PRIMARY KEY, n integer NOT NULL CHECK (n <> 1000), country text, \
         loaded_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = sink(SinkKind::Postgres, &[("table", "plays")], &[("url", &url)], dir.path());
    let batch = events(20);
    accepts_a_batch_and_its_redelivery(&s, &batch).await;
    let (count, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT n) FROM plays").fetch_one(&mut db).await.unwrap();
    assert_eq!((count, distinct), (20, 20), "redelivery wrote nothing twice");
    let country: String = sqlx::query_scalar("SELECT country FROM plays WHERE n = 7").fetch_one(&mut db).await.unwrap();
    assert_eq!(country, "BR", "columns filled by field name; `title` has no column and is ignored");

    // n = 1000 breaks a CHECK, a string n breaks the type: only those two are refused.
    let mut bad = events(25)[20..].to_vec();
    set_n(&mut bad[1], json!(1000));
    set_n(&mut bad[3], json!("many"));
    let SinkError::Rejected(refused) = s.deliver(&bad).await.unwrap_err() else { panic!("expected refusals") };
    assert_eq!(refused.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 3]);
    assert!(refused[0].1.contains("23514"), "{}", refused[0].1);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM plays").fetch_one(&mut db).await.unwrap();
    assert_eq!(count, 23);

    // A missing table is the operator's problem, not the events': transient, never dead-lettered.
    let missing = sink(SinkKind::Postgres, &[("table", "nope")], &[("url", &url)], dir.path());
    assert!(matches!(missing.deliver(&batch).await,
        Err(SinkError::Transient { kind: SinkErrorKind::Unavailable, message }) if message.contains("does not exist")));
    drop(db);
    drop(s);
    drop(missing);
    let _ = sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await;
}

#[tokio::test]
async fn postgres_sink_in_upsert_mode_keeps_each_ids_latest_row() {
    let (name, url, mut admin) = fresh_database().await;
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    for table in ["latest", "first"] {
        let ddl = format!("CREATE TABLE {table} (event_id text PRIMARY KEY, n integer, country text)");
        sqlx::query(&ddl).execute(&mut db).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let upsert = sink(SinkKind::Postgres, &[("table", "latest"), ("mode", "upsert")], &[("url", &url)], dir.path());
    let insert = sink(SinkKind::Postgres, &[("table", "first")], &[("url", &url)], dir.path());
    // Updates of two keys; key `a` three times in one batch (PostgreSQL refuses to update a row
    // twice in one statement: the sink writes only its last).
    let update = |id: &str, n: i64| {
        let mut e = events(1).remove(0);
        e.id = id.into();
        set_n(&mut e, json!(n));
        e
    };
    let batches = [vec![update("a", 1)], vec![update("a", 2), update("b", 1), update("a", 3)], vec![update("b", 2)]];
    for batch in &batches {
        accepts_a_batch_and_its_redelivery(&upsert, batch).await;
        accepts_a_batch_and_its_redelivery(&insert, batch).await;
    }
    let rows = |table: &'static str| format!("SELECT event_id, n FROM {table} ORDER BY event_id");
    let latest: Vec<(String, i32)> = sqlx::query_as(&rows("latest")).fetch_all(&mut db).await.unwrap();
    assert_eq!(latest, [("a".into(), 3), ("b".into(), 2)]);
    let first: Vec<(String, i32)> = sqlx::query_as(&rows("first")).fetch_all(&mut db).await.unwrap();
    assert_eq!(first, [("a".into(), 1), ("b".into(), 1)], "insert mode keeps what was there");
    drop((db, upsert, insert));
    let _ = sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await;
}

#[tokio::test]
async fn stream_sink_re_routes_events_into_another_stream() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(EmbeddedLog::open(dir.path().join("log"), Default::default()).unwrap());
    let spec = SinkSpec {
        kind: SinkKind::Stream,
        description: String::new(),
        settings: BTreeMap::from([("stream".to_owned(), "beta/plays".to_owned())]),
        secrets: BTreeMap::new(),
        tags: Vec::new(),
    };
    let appender: Arc<dyn Appender> = log.clone();
    let s = AnySink::build(&spec, "alpha", &BTreeMap::new(), dir.path(), &appender, &local_endpoints(), None).unwrap();
    let mut batch = events(10);
    batch[3].key = Some("user-7".into());
    // No topic yet: transient (the reconciler creates it), never a refusal.
    assert!(matches!(s.deliver(&batch).await,
        Err(SinkError::Transient { kind: SinkErrorKind::Unavailable, message }) if message.contains("no topic")));
    let keep = Retention { max_age_ms: i64::MAX, max_bytes_per_partition: None };
    log.ensure_topic("beta.plays", 3, keep).await.unwrap();
    accepts_a_batch_and_its_redelivery(&s, &batch).await;
    let mut stored = Vec::new();
    for p in 0..3 {
        for r in log.read("beta.plays", p, 0, 100).await.unwrap() {
            stored.push((p, serde_json::from_slice::<Value>(&r.value).unwrap()));
        }
    }
    assert_eq!(stored.len(), 20, "at-least-once: the redelivered batch is appended again");
    let copies: Vec<&(u32, Value)> = stored.iter().filter(|(_, e)| e["id"] == batch[3].id).collect();
    assert_eq!(copies.len(), 2);
    assert_eq!(copies[0].0, copies[1].0, "a redelivered event lands in the same partition");
    let e = &copies[0].1;
    assert_eq!((e["stream"].as_str(), e["key"].as_str()), (Some("beta/plays"), Some("user-7")));
    assert_eq!(e["payload"], tree(&batch[3]));
}

/// The Kafka sink against librdkafka's mock cluster: every event becomes a record keyed by the
/// event's key (its id when it has none), valued with the event as a file sink writes it, with
/// the id in a header; a record larger than the cluster takes is refused alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_produces_keyed_records_and_refuses_oversized_ones_alone() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    cluster.create_topic("plays.mirror", 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let brokers = cluster.bootstrap_servers();
    let sink = sink(SinkKind::Kafka, &[("brokers", &brokers), ("topic", "plays.mirror")], &[], dir.path());
    let mut batch = events(5);
    batch[1].key = Some("user-7".into());
    accepts_a_batch_and_its_redelivery(&sink, &batch).await;
    let mut huge = events(3);
    huge[1].event = raw(json!({"blob": "x".repeat(2 << 20)}));
    match sink.deliver(&huge).await {
        Err(SinkError::Rejected(refused)) => {
            assert_eq!(refused.len(), 1, "{refused:?}");
            assert_eq!(refused[0].0, 1);
        }
        other => panic!("the oversized event refused alone, got {other:?}"),
    }

    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "sink-test")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("plays.mirror", 0, rdkafka::Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while records.len() < 12 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(std::time::Duration::from_millis(200)) {
            let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
            let value: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let header = m.headers().map(|h| String::from_utf8(h.get(0).value.unwrap().to_vec()).unwrap());
            records.push((key, value, header));
        }
    }
    // Two deliveries of the batch, then the two events that fit of the third.
    assert_eq!(records.len(), 12, "{records:?}");
    let (key, value, header) = &records[1];
    assert_eq!(key, "user-7");
    assert_eq!(value["event"]["n"], 1);
    assert_eq!(value["id"], batch[1].id.as_str());
    assert_eq!(header.as_deref(), Some(batch[1].id.as_str()));
    assert_eq!(records[0].0, batch[0].id, "no key: the event id is the key");
    let last: Vec<u64> = records[10..].iter().map(|r| r.1["event"]["n"].as_u64().unwrap()).collect();
    assert_eq!(last, [0, 2]);
}

/// An Elasticsearch index as far as the `bulk_changes` format relies on it (no search server
/// runs on this machine, and none installs from its registries): `index` and `delete` actions
/// with `version_type=external_gte` answer 409 for a version older than the document's (a
/// delete leaves its version behind as a tombstone), and `_delete_by_query` with a range on
/// `keystone_lsn` removes documents outright.
#[derive(Clone, Default)]
struct SearchIndex {
    docs: Arc<Mutex<BTreeMap<String, (u64, Option<Value>)>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn es_bulk(State(ix): State<SearchIndex>, body: String) -> axum::Json<Value> {
    ix.requests.lock().unwrap().push("_bulk".into());
    let lines: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut docs = ix.docs.lock().unwrap();
    let mut items = Vec::new();
    let mut at = 0;
    while at < lines.len() {
        let (action, meta) = lines[at].as_object().unwrap().iter().next().unwrap();
        assert_eq!((meta["_index"].as_str(), meta["version_type"].as_str()), (Some("items"), Some("external_gte")));
        let id = meta["_id"].as_str().unwrap().to_owned();
        let version = meta["version"].as_u64().unwrap();
        let stale = docs.get(&id).is_some_and(|(v, _)| version < *v);
        let status = match action.as_str() {
            "index" => {
                at += 1;
                if !stale {
                    docs.insert(id.clone(), (version, Some(lines[at].clone())));
                }
                if stale {
                    409
                } else {
                    201
                }
            }
            "delete" => {
                let missing = docs.get(&id).is_none_or(|(_, d)| d.is_none());
                if !stale {
                    docs.insert(id.clone(), (version, None));
                }
                if stale {
                    409
                } else if missing {
                    404
                } else {
                    200
                }
            }
            other => panic!("unexpected action {other}"),
        };
        at += 1;
        items.push(json!({action.clone(): {"_id": id, "status": status}}));
    }
    let errors = items
        .iter()
        .any(|i| !matches!(i.as_object().unwrap().values().next().unwrap()["status"].as_u64(), Some(200 | 201)));
    axum::Json(json!({"errors": errors, "items": items}))
}

async fn es_delete_by_query(
    State(ix): State<SearchIndex>,
    axum::extract::Path(index): axum::extract::Path<String>,
    axum::Json(query): axum::Json<Value>,
) -> axum::Json<Value> {
    assert_eq!(index, "items");
    ix.requests.lock().unwrap().push("_delete_by_query".into());
    // (keystone_lsn < L) or (keystone_lsn = L and keystone_seq < S)
    let should = &query["query"]["bool"]["should"];
    let below = should[0]["range"]["keystone_lsn"]["lt"].as_u64().unwrap();
    let same = &should[1]["bool"]["filter"];
    let (at, seq) =
        (same[0]["term"]["keystone_lsn"].as_u64().unwrap(), same[1]["range"]["keystone_seq"]["lt"].as_u64().unwrap());
    let older = |d: &Value| {
        let (l, s) = (d["keystone_lsn"].as_u64().unwrap(), d["keystone_seq"].as_u64().unwrap());
        l < below || (l == at && s < seq)
    };
    ix.docs.lock().unwrap().retain(|_, (_, d)| !d.as_ref().is_some_and(older));
    axum::Json(json!({"deleted": 0}))
}

#[tokio::test]
async fn http_bulk_changes_keep_an_index_equal_to_the_table_whatever_order_partitions_arrive_in() {
    use rand::{Rng, SeedableRng};
    let ix = SearchIndex::default();
    let app = axum::Router::new()
        .route("/_bulk", post(es_bulk))
        .route("/{index}/_delete_by_query", post(es_delete_by_query))
        .with_state(ix.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/_bulk", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let s = sink(SinkKind::Http, &[("url", &url), ("format", "bulk_changes"), ("index", "items")], &[], dir.path());

    // A table's changes, in three partitions by key, a truncate in each; the model table is
    // the oracle (changes applied in position order).
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let mut partitions: Vec<Vec<SinkEvent>> = vec![Vec::new(); 3];
    let mut table: BTreeMap<String, Value> = BTreeMap::new();
    for lsn in 1..=400u64 {
        if lsn == 250 {
            let mut t = change(lsn, "t", 0, None, lsn);
            t.event = raw(
                json!({"op": "t", "table": "public.items", "key": {}, "before": null, "after": null, "lsn": lsn, "seq": 1}),
            );
            for p in &mut partitions {
                p.push(SinkEvent { key: None, ..t.clone() });
            }
            table.clear();
            continue;
        }
        let id = rng.gen_range(0..30i64);
        let (op, after) = match rng.gen_range(0..10) {
            0..=2 => ("d", None),
            3..=5 => ("c", Some(json!({"id": id, "name": format!("v{lsn}")}))),
            _ => ("u", Some(json!({"id": id, "name": format!("u{lsn}")}))),
        };
        match &after {
            Some(row) => table.insert(id.to_string(), row.clone()),
            None => table.remove(&id.to_string()),
        };
        partitions[(id % 3) as usize].push(change(lsn, op, id, after, lsn));
    }
    // Partitions delivered at different speeds, in batches; some batches delivered twice (a
    // replay after a restart).
    let mut next = [0usize; 3];
    let mut batches = 0;
    while next.iter().zip(&partitions).any(|(n, p)| *n < p.len()) {
        let p = rng.gen_range(0..3);
        if next[p] >= partitions[p].len() {
            continue;
        }
        let end = (next[p] + rng.gen_range(1..8)).min(partitions[p].len());
        let batch = &partitions[p][next[p]..end];
        s.deliver(batch).await.unwrap();
        if rng.gen_bool(0.2) {
            s.deliver(batch).await.unwrap();
        }
        next[p] = end;
        batches += 1;
    }
    let docs: BTreeMap<String, Value> = ix
        .docs
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(id, (_, d))| {
            let mut d = d.clone()?;
            d.as_object_mut().unwrap().remove("keystone_lsn");
            d.as_object_mut().unwrap().remove("keystone_seq");
            Some((id.clone(), d))
        })
        .collect();
    assert_eq!(docs, table, "after {batches} batches");
    assert!(table.len() > 3, "the oracle has rows after the truncate: {}", table.len());
    let truncates = ix.requests.lock().unwrap().iter().filter(|r| *r == "_delete_by_query").count();
    assert!(truncates >= 3, "one delete-by-query per partition's truncate: {truncates}");
    // Not a change event: refused alone.
    let mut odd = events(1);
    odd.extend(partitions[0][..2].iter().cloned());
    let SinkError::Rejected(refused) = s.deliver(&odd).await.unwrap_err() else { panic!("expected a refusal") };
    assert_eq!(refused.iter().map(|r| r.0).collect::<Vec<_>>(), [0]);
}
