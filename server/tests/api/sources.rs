//! Sources through the real server: a `postgres_cdc` source declared over the API (its URL a
//! secret, never shown), captured from a PostgreSQL with `wal_level=logical` of the test's own,
//! routed into a PostgreSQL sink in `apply_changes` mode; the target table ends equal to the
//! source table, row for row, under concurrent writers; the streams' schemas follow the tables'
//! columns; a paused source's retained WAL fires its alert. Deleting the source drops its slot
//! and publication on the database.

use super::delivery::{declare, eventually, SinkDatabase};
use super::*;

#[path = "../../../engine/tests/pg_logical/mod.rs"]
mod pg_logical;

/// Random inserts, updates and deletes of `items` from one writer.
async fn write(url: String, seed: u64, rounds: u64) {
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    for i in 0..rounds {
        let id = (seed * 7919 + i * 104_729) % 300;
        let sql = match (seed + i) % 5 {
            0 | 1 => "INSERT INTO items (id, name, qty) VALUES ($1, 'n' || $1, 1) ON CONFLICT (id) DO NOTHING",
            2 | 3 => "UPDATE items SET qty = qty + 1, name = name || '+' WHERE id = $1",
            _ => "DELETE FROM items WHERE id = $1",
        };
        sqlx::query(sql).bind(id as i32).execute(&mut db).await.unwrap();
    }
}

async fn rows(db: &mut sqlx::PgConnection, table: &str) -> Vec<(i32, String, i32)> {
    sqlx::query_as(&format!("SELECT id, name, qty FROM {table} ORDER BY id")).fetch_all(db).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cdc_source_keeps_a_postgres_table_equal_to_its_source_and_cleans_up_when_deleted() {
    let source_db = pg_logical::LogicalPostgres::start().await;
    let url = source_db.url();
    let mut src = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL);
         INSERT INTO items SELECT g, 'seed' || g, g FROM generate_series(1, 120) g;
         CREATE TABLE labels (id int PRIMARY KEY, label text);
         -- The planner's row counts: the snapshot's progress is measured against them.
         ANALYZE items; ANALYZE labels;
         CREATE TABLE nokey (a int);",
    )
    .execute(&mut src)
    .await
    .unwrap();
    let target = SinkDatabase::with_table(
        "CREATE TABLE items_copy (id int PRIMARY KEY, name text, qty int, _lsn bigint NOT NULL)",
    )
    .await;
    let app = spawn_app(Db::Sqlite).await;
    declare(&app, "streams", "items", json!({"partitions": 3, "retention_hours": 24})).await;

    // Bad declarations are refused by field, and nothing is stored.
    let bad = json!({"name": "shop", "spec": {"kind": "postgres_cdc",
        "tables": [{"table": "public.items", "stream": "missing"}, {"table": "bad name", "stream": "items"}],
        "secrets": {"url": "mysql://x"}}});
    let (s, body) = app.post(&app.alpha, "/api/v1/teams/alpha/sources", bad).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(field_error(&body, "tables[1].table").contains("schema.table"));
    assert!(field_error(&body, "secrets.url").contains("postgres://"));
    let (s, body) = app
        .post(
            &app.alpha,
            "/api/v1/teams/alpha/sources",
            json!({"name": "shop", "spec": {
        "kind": "postgres_cdc", "tables": [{"table": "items", "stream": "missing"}],
        "secrets": {"url": url}, "alerts": [{"kind": "lag_seconds", "threshold": 1}]}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(field_error(&body, "alerts[0].kind").contains("retained_wal_bytes"));
    // Refused whole: neither the source nor the stream it would have created exists.
    for path in ["/api/v1/teams/alpha/sources/shop", "/api/v1/teams/alpha/streams/missing"] {
        let (s, _) = app.get(&app.alpha_viewer, path).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
    }

    let (s, body) = app
        .post(
            &app.alpha_viewer,
            "/api/v1/teams/alpha/sources",
            json!({"name": "shop", "spec": {
            "kind": "postgres_cdc", "tables": [{"table": "items", "stream": "items"}], "secrets": {"url": url}}}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "viewers declare nothing: {body}");

    // Writers run from before the source exists, through its snapshot, to the end.
    let writers: Vec<_> = (1..=3).map(|i| tokio::spawn(write(url.clone(), i, 300))).collect();
    declare(
        &app,
        "sources",
        "shop",
        json!({"kind": "postgres_cdc",
        "tables": [{"table": "public.items", "stream": "items"}, {"table": "labels"}], "secrets": {"url": url}}),
    )
    .await;
    let (_, shown) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/sources/shop").await;
    assert!(!shown.to_string().contains("postgres://"), "the URL is a secret: {shown}");
    assert_eq!(shown["spec"]["alerts"][0]["kind"], "retained_wal_bytes", "the default rule: {shown}");
    // A table without a stream gets one, created with the source; its schema follows from the
    // table's columns once the capture reads them.
    eventually("the created stream's schema, derived from the table", || async {
        let (s, revs) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/streams/shop-labels/revisions").await;
        assert_eq!(s, StatusCode::OK, "{revs}");
        assert_eq!(revs[0]["reason"], "created for source \"shop\"", "{revs}");
        revs.as_array().unwrap().iter().any(|r| {
            r["reason"] == "public.labels: schema derived from the table's columns: id (integer), label (text)"
                && r["spec"]["schema"]["properties"]["table"]["const"] == "public.labels"
        })
    })
    .await;
    declare(
        &app,
        "sinks",
        "copy",
        json!({"kind": "postgres", "settings": {"table": "items_copy", "mode": "apply_changes"},
        "secrets": {"url": target.url}}),
    )
    .await;
    declare(
        &app,
        "routes",
        "items-copy",
        json!({"stream": "items", "sink": "copy", "batch_size": 100, "max_latency_ms": 100}),
    )
    .await;
    for w in writers {
        w.await.unwrap();
    }
    let mut dst = target.connect().await;
    // Once after the snapshot's writers, once more after changes made while streaming.
    for round in 0..2 {
        if round == 1 {
            let more: Vec<_> = (4..=6).map(|i| tokio::spawn(write(url.clone(), i, 200))).collect();
            for w in more {
                w.await.unwrap();
            }
        }
        let expected = rows(&mut src, "items").await;
        assert!(expected.len() > 50, "{}", expected.len());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let copy = rows(&mut dst, "items_copy").await;
            if copy == expected {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the copy ({} rows) never equalled the source ({})",
                copy.len(),
                expected.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    // The table grows a column: the stream's schema gets a new revision, by Keystone, saying
    // what changed, before the first change that has it; the column flows to the copy.
    sqlx::raw_sql("ALTER TABLE items_copy ADD COLUMN note text").execute(&mut dst).await.unwrap();
    sqlx::raw_sql("ALTER TABLE items ADD COLUMN note text; UPDATE items SET note = 'noted' WHERE id = (SELECT min(id) FROM items)")
        .execute(&mut src)
        .await
        .unwrap();
    eventually("the new column's value in the copy", || async {
        let note: Option<String> =
            sqlx::query_scalar("SELECT note FROM items_copy WHERE id = (SELECT min(id) FROM items_copy)")
                .fetch_one(&mut target.connect().await)
                .await
                .unwrap();
        note.as_deref() == Some("noted")
    })
    .await;
    let (_, revs) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/streams/items/revisions").await;
    let last = revs.as_array().unwrap().last().unwrap();
    assert_eq!(last["reason"], "public.items: columns added: note (text)", "{last}");
    assert_eq!(last["spec"]["schema"]["properties"]["after"]["properties"]["note"]["x-postgres-type"], "text");
    assert_eq!(last["spec"]["partitions"], 3, "the rest of the stream as it was: {last}");
    // A restart (editors only) stops the capture and starts it again from its slot.
    let (s, body) = app.post(&app.alpha_viewer, "/api/v1/teams/alpha/sources/shop/restart", json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, body) = app.post(&app.alpha, "/api/v1/teams/alpha/sources/shop/restart", json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    sqlx::raw_sql("UPDATE items SET note = 'after the restart' WHERE id = (SELECT max(id) FROM items)")
        .execute(&mut src)
        .await
        .unwrap();
    eventually("a change made after the restart in the copy", || async {
        let note: Option<String> =
            sqlx::query_scalar("SELECT note FROM items_copy WHERE id = (SELECT max(id) FROM items_copy)")
                .fetch_one(&mut target.connect().await)
                .await
                .unwrap();
        note.as_deref() == Some("after the restart")
    })
    .await;

    // The schema is the source's: a change that leaves it out keeps it, one that sets another
    // is refused.
    let (s, body) = app
        .put(&app.alpha, "/api/v1/teams/alpha/streams/items", json!({"spec": {"partitions": 3, "retention_hours": 48}}))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (_, items_stream) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/streams/items").await;
    assert_eq!(items_stream["spec"]["schema"], last["spec"]["schema"], "kept");
    let (s, body) = app
        .put(
            &app.alpha,
            "/api/v1/teams/alpha/streams/items",
            json!({"spec": {"partitions": 3, "retention_hours": 48, "schema": {"type": "object"}}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(field_error(&body, "schema").contains("kept by source \"shop\""), "{body}");

    // The status follows: the snapshot, then positions confirmed past it (saved every second).
    eventually("the status to show positions confirmed past the snapshot", || async {
        let (s, status) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/sources/shop/status").await;
        assert_eq!(s, StatusCode::OK, "{status}");
        assert_eq!(status["phase"], "running", "{status}");
        assert!(status["snapshot_rows"].as_u64().unwrap() > 0, "{status}");
        // 120 when analysed at set-up, or what autovacuum counted since (the writers run).
        assert!(status["snapshot_estimate"].as_u64().is_some_and(|n| n > 0), "{status}");
        // The lag is measured every 5 s; its age part once a change was appended since.
        status["lag_bytes"].is_i64()
            && status["lag_ms"].is_i64()
            && status["confirmed_lsn"].as_u64().unwrap() > status["snapshot_lsn"].as_u64().unwrap()
    })
    .await;

    // A captured stream's ingest counters count the changes the source appended (its page
    // charts them as rows per second per table).
    let (_, ingest) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/streams/items/ingest").await;
    let appended: u64 = ingest["log_end_offsets"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).sum();
    assert!(ingest["counted"]["accepted"].as_u64().unwrap() > 0, "{ingest}");
    assert!(ingest["counted"]["accepted"].as_u64().unwrap() <= appended, "{ingest}");

    // `/metrics` has the WAL the slot holds back on the database (the first sign of a stuck
    // slot) and the changes appended.
    eventually("the source's series on /metrics", || async {
        let req = app.http.get(format!("{}/metrics", app.base)).bearer_auth(SCRAPE_TOKEN);
        let text = req.send().await.unwrap().text().await.unwrap();
        let series =
            |name: &str| text.lines().any(|l| l.starts_with(&format!("{name}{{")) && l.contains("source=\"shop\""));
        series("keystone_source_retained_wal_bytes") && series("keystone_source_events")
    })
    .await;

    // Paused, the source reads nothing, its slot stays, the WAL it holds back grows, and its
    // alert fires once that passes the rule's threshold (here: what it held when paused).
    let status = || async {
        let (_, st) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/sources/shop/status").await;
        st
    };
    let items = json!([{"table": "items", "stream": "items"}]);
    let pause = |threshold: i64| {
        json!({"spec": {"kind": "postgres_cdc", "tables": items, "state": "paused",
            "alerts": [{"kind": "retained_wal_bytes", "threshold": threshold, "for_s": 0}]}})
    };
    let (s, body) = app.put(&app.alpha, "/api/v1/teams/alpha/sources/shop", pause(i64::MAX / 2)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    eventually("the source to be paused", || async { status().await["phase"] == "paused" }).await;
    let before = status().await["retained_bytes"].as_i64().unwrap_or(0);
    let (s, body) = app.put(&app.alpha, "/api/v1/teams/alpha/sources/shop", pause(before)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    write(url.clone(), 7, 300).await;
    // Any change to the goal makes the reconciler measure again (so does its 30 s resync).
    declare(&app, "streams", "poke", json!({"partitions": 1, "retention_hours": 1})).await;
    eventually("the retained WAL to grow while paused, and the alert to fire", || async {
        let st = status().await;
        let grown = st["retained_bytes"].as_i64().is_some_and(|b| b > before);
        let alert = &st["alerts"][0];
        grown
            && alert["rule"] == "retained_wal_bytes"
            && alert["state"] == "firing"
            && alert["value"].as_f64().unwrap() > before as f64
    })
    .await;

    // A table without a primary key cannot be keyed: the source says so in its status.
    declare(&app, "streams", "nokey", json!({"partitions": 1, "retention_hours": 24})).await;
    let (s, body) = app
        .put(
            &app.alpha,
            "/api/v1/teams/alpha/sources/shop",
            json!({"spec": {"kind": "postgres_cdc",
            "tables": [{"table": "items", "stream": "items"}, {"table": "nokey", "stream": "nokey"}]}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "the stored URL is kept: {body}");
    eventually("the source to report the table without a key", || async {
        let (_, st) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/sources/shop/status").await;
        st["last_error"].as_str().is_some_and(|e| e.contains("\"public.nokey\" has no primary key"))
    })
    .await;

    // Deleting the source drops what Keystone made on the database (its streams stay).
    let (s, body) = app.delete(&app.alpha, "/api/v1/teams/alpha/sources/shop").await;
    assert!(s.is_success(), "{body}");
    eventually("the slot and publication to be dropped", || async {
        let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        n == 0
    })
    .await;
    target.remove().await;
}
