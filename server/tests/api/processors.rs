//! Processors through the real server: declared and planned at every save (errors with the
//! position in the query, unknown fields named, unbounded state refused), run as jobs whose
//! windowed results reach a sink once, with late events dead-lettered; updating results keep
//! each key's latest row in a PostgreSQL table.

use super::delivery::{declare, eventually, ingest, producer_token, sink_lines, SinkDatabase};
use super::*;
use std::collections::BTreeSet;

fn plays_schema() -> Value {
    json!({
        "type": "object",
        "required": ["ts", "country"],
        "properties": {
            "ts": {"type": "string", "format": "date-time"},
            "country": {"type": "string"},
            "user": {"type": "string"},
            "bitrate": {"type": "integer"}
        }
    })
}

const PER_MINUTE: &str = "SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS window_start, country,\n  \
    COUNT(*) AS plays, SUM(bitrate) AS total\nFROM plays\nGROUP BY TUMBLE(ts, INTERVAL '1' MINUTE), country";

#[tokio::test]
async fn a_processor_is_planned_at_declaration_and_bad_queries_are_refused_with_their_place() {
    let app = spawn_app(Db::Sqlite).await;
    declare(&app, "streams", "plays", json!({"partitions": 1, "retention_hours": 24, "schema": plays_schema()})).await;
    declare(&app, "sinks", "minutes", json!({"kind": "file", "settings": {"path": "minutes"}})).await;
    let create = |name: &str, spec: Value| json!({"name": name, "spec": spec});
    let url = "/api/v1/teams/alpha/processors";

    // Planned without saving: inputs, output columns and types, kind, operators.
    let req = json!({"sql": PER_MINUTE, "inputs": {"plays": {"event_time": "ts"}}});
    let (s, plan) = app.post(&app.alpha_viewer, "/api/v1/teams/alpha/processor-plan", req).await;
    assert_eq!(s, StatusCode::OK, "{plan}");
    assert_eq!(plan["inputs"], json!(["plays"]));
    assert_eq!(plan["kind"], "windowed");
    assert_eq!(plan["window"], "tumbling 1m on ts");
    let columns: Vec<(String, String)> = plan["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_owned(), c["type"].as_str().unwrap().to_owned()))
        .collect();
    let expected = [("window_start", "timestamp"), ("country", "string"), ("plays", "bigint"), ("total", "bigint")];
    assert_eq!(columns, expected.map(|(n, t)| (n.to_owned(), t.to_owned())));
    assert!(plan["operators"].as_array().unwrap().iter().any(|o| o.as_str().unwrap().contains("Aggregate")));

    let refused = [
        (
            json!({"sql": "SELECT country\nFROM plays\nWHER country = 'BR'", "sink": "minutes"}),
            "sql",
            "line 3, column 6",
        ),
        (json!({"sql": "SELECT country, bogus FROM plays", "sink": "minutes"}), "sql", "bogus"),
        (
            json!({"sql": "SELECT country, COUNT(*) AS n FROM plays GROUP BY country", "sink": "minutes"}),
            "sql",
            "state_ttl",
        ),
        (
            json!({"sql": "SELECT country, COUNT(*) AS n FROM plays GROUP BY country HAVING COUNT(*) > 1",
                   "sink": "minutes", "state_ttl_s": 60}),
            "sql",
            "HAVING",
        ),
        (json!({"sql": "SELECT user FROM nowhere", "sink": "minutes"}), "sql", "no stream named \"nowhere\""),
        (
            json!({"sql": PER_MINUTE, "sink": "minutes", "inputs": {"plays": {"event_time": "country"}}}),
            "inputs.plays.event_time",
            "date-time",
        ),
        (json!({"sql": PER_MINUTE, "sink": "minutes"}), "sql", "\"_ingested_at\""),
        (json!({"sql": "SELECT country FROM plays", "sink": "nothing"}), "sink", "no sink named"),
    ];
    for (spec, field, says) in refused {
        let (s, body) = app.post(&app.alpha, url, create("bad", spec.clone())).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{spec}: {body}");
        assert!(field_error(&body, field).contains(says), "{spec}: {body}");
    }
    let (_, listed) = app.get(&app.alpha, url).await;
    assert_eq!(listed, json!([]), "nothing refused was stored");

    // A viewer may plan, not declare.
    let good = json!({"sql": PER_MINUTE, "sink": "minutes", "inputs": {"plays": {"event_time": "ts"}}});
    let (s, _) = app.post(&app.alpha_viewer, url, create("per-minute", good.clone())).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, body) = app.post(&app.alpha, url, create("per-minute", good)).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, got) = app.get(&app.alpha_viewer, &format!("{url}/per-minute")).await;
    assert_eq!((s, got["spec"]["sql"].as_str()), (StatusCode::OK, Some(PER_MINUTE)));
    // Team beta sees none of it.
    let (s, _) =
        app.post(&app.beta, "/api/v1/teams/alpha/processor-plan", json!({"sql": "SELECT country FROM plays"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // What the processor reads and writes cannot be deleted under it.
    for (kind, name) in [("streams", "plays"), ("sinks", "minutes")] {
        let (s, body) = app.delete(&app.alpha, &format!("/api/v1/teams/alpha/{kind}/{name}")).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.to_string().contains("processor per-minute"), "{body}");
    }
    let (s, _) = app.delete(&app.alpha, &format!("{url}/per-minute")).await;
    assert!(s.is_success());
    let (s, _) = app.delete(&app.alpha, "/api/v1/teams/alpha/sinks/minutes").await;
    assert!(s.is_success());
    app.teardown().await;
}

/// A flat JSON object as text with its keys sorted, to compare results as sets.
fn canon(v: &Value) -> String {
    let sorted: std::collections::BTreeMap<&String, &Value> = v.as_object().expect("an object").iter().collect();
    serde_json::to_string(&sorted).unwrap()
}

fn at(minute: u32, second: u32) -> String {
    format!("2026-12-07T10:{minute:02}:{second:02}Z")
}

// On both backends: a processor's checkpoint (positions and state in one row) is a BLOB in
// SQLite and a BYTEA in PostgreSQL.
on_both_backends!(windowed_results_reach_the_sink_once_and_late_events_are_dead_lettered);

async fn windowed_results_reach_the_sink_once_and_late_events_are_dead_lettered(db: Db) {
    let app = spawn_app(db).await;
    declare(&app, "streams", "plays", json!({"partitions": 1, "retention_hours": 24, "schema": plays_schema()})).await;
    declare(&app, "sinks", "minutes", json!({"kind": "file", "settings": {"path": "minutes"}})).await;
    let spec = json!({"sql": PER_MINUTE, "sink": "minutes", "inputs": {"plays": {"event_time": "ts"}},
                      "config": {"job.checkpoint_interval_ms": "100"}});
    declare(&app, "processors", "per-minute", spec).await;
    let token = producer_token(&app, "plays").await;

    let play = |minute, second, country: &str, bitrate: i64| json!({"ts": at(minute, second), "country": country, "bitrate": bitrate});
    // Out of order within the minute; the 10:01 event closes 10:00 (no lateness allowed).
    let first = [
        play(0, 30, "BR", 100),
        play(0, 5, "US", 50),
        play(0, 59, "BR", 200),
        play(0, 1, "BR", 1),
        play(1, 10, "BR", 7),
    ];
    ingest(&app, &token, "plays", &first).await;
    let minute_zero: BTreeSet<String> = [
        json!({"window_start": at(0, 0), "country": "BR", "plays": 3, "total": 301}),
        json!({"window_start": at(0, 0), "country": "US", "plays": 1, "total": 50}),
    ]
    .iter()
    .map(canon)
    .collect();
    let results = || sink_lines(&app, "minutes").iter().map(|l| canon(&l["event"])).collect::<Vec<String>>();
    eventually("minute 10:00 delivered", || async { results().len() >= 2 }).await;
    assert_eq!(results().into_iter().collect::<BTreeSet<_>>(), minute_zero);

    // A late event for 10:00 goes to the dead-letter queue, not into a result.
    ingest(&app, &token, "plays", &[play(0, 40, "US", 9999)]).await;
    let letters_url = "/api/v1/teams/alpha/processors/per-minute/dead-letters";
    eventually("the late event dead-lettered", || async {
        app.get(&app.alpha_viewer, letters_url).await.1.as_array().is_some_and(|l| !l.is_empty())
    })
    .await;
    let (_, letters) = app.get(&app.alpha_viewer, letters_url).await;
    assert_eq!(letters[0]["letter"]["reason"], "late", "{letters}");
    assert_eq!(letters[0]["letter"]["envelope"]["payload"]["bitrate"], 9999);

    // 10:03 closes 10:01; every result exactly once, with the ids the processor gave them.
    ingest(&app, &token, "plays", &[play(3, 0, "FR", 1)]).await;
    eventually("minute 10:01 delivered", || async { results().len() >= 3 }).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut expected = minute_zero;
    expected.insert(canon(&json!({"window_start": at(1, 0), "country": "BR", "plays": 1, "total": 7})));
    let got = results();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);
    let ids: BTreeSet<String> =
        sink_lines(&app, "minutes").iter().map(|l| l["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 3);
    app.teardown().await;
}

#[tokio::test]
async fn updating_and_deduplicating_processors_keep_one_row_per_key_in_postgres_tables() {
    let app = spawn_app(Db::Sqlite).await;
    let db = SinkDatabase::with_table(
        "CREATE TABLE totals (event_id text PRIMARY KEY, country text NOT NULL, plays bigint, total bigint); \
         CREATE TABLE firsts (event_id text PRIMARY KEY, \"user\" text NOT NULL, country text, bitrate bigint)",
    )
    .await;
    declare(&app, "streams", "plays", json!({"partitions": 2, "retention_hours": 24, "schema": plays_schema()})).await;
    let sinks = [
        ("inserts", json!({"table": "totals"})),
        ("totals", json!({"table": "totals", "mode": "upsert"})),
        ("firsts", json!({"table": "firsts", "mode": "upsert"})),
    ];
    for (name, settings) in sinks {
        declare(&app, "sinks", name, json!({"kind": "postgres", "settings": settings, "secrets": {"url": db.url}}))
            .await;
    }
    let sql = "SELECT country, COUNT(*) AS plays, SUM(bitrate) AS total FROM plays GROUP BY country";
    let spec = |sink: &str| {
        json!({"sql": sql, "sink": sink, "state_ttl_s": 86_400, "inputs": {"plays": {"event_time": "ts"}},
               "config": {"job.checkpoint_interval_ms": "100"}})
    };
    // A table that only inserts would keep each key's first row: refused, saying what to set.
    let (s, body) =
        app.post(&app.alpha, "/api/v1/teams/alpha/processors", json!({"name": "t", "spec": spec("inserts")})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(field_error(&body, "sink").contains("upsert"), "{body}");
    let (s, plan) = app
        .post(
            &app.alpha_viewer,
            "/api/v1/teams/alpha/processor-plan",
            json!({"sql": sql, "state_ttl_s": 60,
              "inputs": {"plays": {"event_time": "ts"}}}),
        )
        .await;
    assert_eq!((s, plan["kind"].as_str(), &plan["keys"]), (StatusCode::OK, Some("updating"), &json!(["country"])));
    declare(&app, "processors", "totals", spec("totals")).await;
    // Nor can the table be switched back to inserts under it.
    let insert = json!({"spec": {"kind": "postgres", "settings": {"table": "totals", "mode": "insert"}}});
    let (s, body) = app.put(&app.alpha, "/api/v1/teams/alpha/sinks/totals", insert).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(field_error(&body, "settings.mode").contains("processor \"totals\""), "{body}");
    // Each user's first play by event time, whatever order the plays arrive in.
    let first =
        "SELECT user, country, bitrate FROM (\n  SELECT *, ROW_NUMBER() OVER (PARTITION BY user ORDER BY ts) AS rn\n  \
                 FROM plays\n) WHERE rn = 1";
    let dedupe = json!({"sql": first, "sink": "firsts", "state_ttl_s": 86_400, "inputs": {"plays": {"event_time": "ts"}},
                        "config": {"job.checkpoint_interval_ms": "100"}});
    let explain = json!({"sql": first, "state_ttl_s": 86_400, "inputs": {"plays": {"event_time": "ts"}}});
    let (s, plan) = app.post(&app.alpha_viewer, "/api/v1/teams/alpha/processor-plan", explain).await;
    assert_eq!(
        (s, plan["kind"].as_str(), plan["keep"].as_str()),
        (StatusCode::OK, Some("deduplicated"), Some("first by ts"))
    );
    declare(&app, "processors", "firsts", dedupe).await;
    let token = producer_token(&app, "plays").await;

    // Three rounds, each changing every country's totals; the table follows.
    let countries = ["BR", "US", "FR", "DE"];
    let mut model: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    // Per user, the earliest play: (ts, country, bitrate).
    let mut firsts: std::collections::BTreeMap<String, (String, String, i64)> = Default::default();
    for round in 0..3u32 {
        let mut events: Vec<Value> = (0..400u32)
            .map(|i| {
                let country = countries[(i * 7 + round) as usize % 4];
                let bitrate = i64::from((i * 37 + round * 11) % 500);
                let m = model.entry(country.to_owned()).or_default();
                m.0 += 1;
                m.1 += bitrate;
                let (ts, user) = (at(round * 10 + i / 60, i % 60), format!("u{}", (i * 13 + round) % 9));
                let held = firsts.entry(user.clone()).or_insert_with(|| (ts.clone(), country.to_owned(), bitrate));
                if ts < held.0 {
                    *held = (ts.clone(), country.to_owned(), bitrate);
                }
                json!({"ts": ts, "country": country, "bitrate": bitrate, "user": user})
            })
            .collect();
        // Out of order: the round's plays backwards.
        events.reverse();
        ingest(&app, &token, "plays", &events).await;
        let expected: Vec<(String, i64, i64)> = model.iter().map(|(c, (n, t))| (c.clone(), *n, *t)).collect();
        let table = || async {
            let rows: Vec<(String, i64, i64)> =
                sqlx::query_as("SELECT country, plays, total FROM totals ORDER BY country")
                    .fetch_all(&mut db.connect().await)
                    .await
                    .unwrap();
            rows
        };
        eventually(&format!("round {round}'s totals in the table"), || async { table().await == expected }).await;
        let expected: Vec<(String, String, i64)> =
            firsts.iter().map(|(u, (_, c, b))| (u.clone(), c.clone(), *b)).collect();
        let kept = || async {
            let rows: Vec<(String, String, i64)> =
                sqlx::query_as("SELECT \"user\", country, bitrate FROM firsts ORDER BY \"user\"")
                    .fetch_all(&mut db.connect().await)
                    .await
                    .unwrap();
            rows
        };
        eventually(&format!("round {round}'s first plays in the table"), || async { kept().await == expected }).await;
    }
    let ids: i64 = sqlx::query_scalar("SELECT count(DISTINCT event_id) FROM totals")
        .fetch_one(&mut db.connect().await)
        .await
        .unwrap();
    assert_eq!(ids, 4, "one row per country, updated in place");
    app.teardown().await;
    db.remove().await;
}

#[tokio::test]
async fn a_preview_runs_an_unsaved_query_on_the_newest_events_and_closes_every_window() {
    let app = spawn_app(Db::Sqlite).await;
    declare(&app, "streams", "plays", json!({"partitions": 2, "retention_hours": 24, "schema": plays_schema()})).await;
    let url = "/api/v1/teams/alpha/processor-preview";
    let req = json!({"sql": PER_MINUTE, "inputs": {"plays": {"event_time": "ts"}}});
    let (s, _) = app.post(&app.alpha_viewer, url, req.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a preview runs the caller's query: editors only");
    let (s, empty) = app.post(&app.alpha, url, req.clone()).await;
    assert_eq!((s, &empty["events"], &empty["results"]), (StatusCode::OK, &json!(0), &json!([])), "{empty}");

    let token = producer_token(&app, "plays").await;
    // 300 plays over five minutes; the preview reads them all.
    let countries = ["BR", "US", "FR"];
    let plays: Vec<Value> = (0..300u32)
        .map(|i| json!({"ts": at(i / 60, i % 60), "country": countries[i as usize % 3], "bitrate": i}))
        .collect();
    ingest(&app, &token, "plays", &plays).await;
    let revisions = app.revision_count().await;
    let mut req = req;
    req["limit"] = json!(1000);
    let (s, preview) = app.post(&app.alpha, url, req).await;
    assert_eq!(s, StatusCode::OK, "{preview}");
    assert_eq!(preview["events"], 300);
    assert_eq!(preview["plan"]["kind"], "windowed");
    assert_eq!(preview["errors"], json!([]), "{preview}");
    // Every minute and country, all windows closed: the model from the plays themselves.
    let mut model: std::collections::BTreeMap<(u32, &str), (i64, i64)> = Default::default();
    for (i, p) in plays.iter().enumerate() {
        let m = model.entry((i as u32 / 60, p["country"].as_str().unwrap())).or_default();
        m.0 += 1;
        m.1 += p["bitrate"].as_i64().unwrap();
    }
    let expected: BTreeSet<String> = model
        .into_iter()
        .map(|((minute, country), (n, total))| {
            canon(&json!({"window_start": at(minute, 0), "country": country, "plays": n, "total": total}))
        })
        .collect();
    let got: BTreeSet<String> = preview["results"].as_array().unwrap().iter().map(canon).collect();
    // Out-of-order arrival across the two partitions may make a few plays late; none here, as
    // each partition's plays rise in time and both partitions advance together.
    assert_eq!(preview["late"], 0, "{preview}");
    assert_eq!(got, expected);
    assert_eq!(app.revision_count().await, revisions, "a preview saves nothing");

    // A query that does not plan gets the errors a save would.
    let (s, body) = app.post(&app.alpha, url, json!({"sql": "SELECT nope FROM plays"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(field_error(&body, "sql").contains("nope"), "{body}");
    app.teardown().await;
}
