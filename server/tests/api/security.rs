//! Issue 26: tenancy, egress, governance, limits and data safety, each hole with the test that
//! proves it closed.

use super::*;
use std::time::{Duration, Instant};

async fn declare_in(app: &TestApp, token: &str, team: &str, kind: &str, name: &str, spec: Value) {
    let (s, body) = app.post(token, &format!("/api/v1/teams/{team}/{kind}"), json!({"name": name, "spec": spec})).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
}

async fn producer_token_of(app: &TestApp, token: &str, team: &str, stream: &str) -> String {
    let (s, body) = app.post(token, &format!("/api/v1/producer-tokens/{team}/{stream}"), json!({"name": "web"})).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn send(app: &TestApp, producer: &str, stream: &str, ns: std::ops::Range<u64>) {
    let body: String = ns.map(|n| format!("{}\n", json!({ "n": n }))).collect();
    let resp = app
        .http
        .post(format!("{}/ingest/{stream}", app.base))
        .bearer_auth(producer)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.text().await.unwrap());
}

/// The `n`s of every event under a folder of NDJSON files.
fn ns_under(dir: &std::path::Path) -> Vec<u64> {
    fn walk(dir: &std::path::Path, out: &mut Vec<u64>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "ndjson") {
                for l in std::fs::read_to_string(&p).unwrap().lines() {
                    out.push(serde_json::from_str::<Value>(l).unwrap()["event"]["n"].as_u64().unwrap());
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Item 1: two teams' file sinks with the same path write to folders of their own, and a files
/// backfill reads only the route's own team's sinks: another team's path answers exactly as a
/// missing one does.
#[tokio::test]
async fn teams_file_sinks_are_kept_apart_on_disk_and_in_backfills() {
    let app = spawn_app(Db::Sqlite).await;
    for (team, token) in [("alpha", &app.alpha), ("beta", &app.beta)] {
        declare_in(&app, token, team, "streams", "plays", stream(1)).await;
        declare_in(&app, token, team, "sinks", "lake", json!({"kind": "file", "settings": {"path": "shared/p"}})).await;
        let route = json!({"stream": "plays", "sink": "lake", "max_latency_ms": 20});
        declare_in(&app, token, team, "routes", "all", route).await;
    }
    declare_in(&app, &app.beta, "beta", "sinks", "only-b", json!({"kind": "file", "settings": {"path": "b-only"}}))
        .await;
    let alpha_producer = producer_token_of(&app, &app.alpha, "alpha", "plays").await;
    let beta_producer = producer_token_of(&app, &app.beta, "beta", "plays").await;
    send(&app, &alpha_producer, "plays", 0..10).await;
    send(&app, &beta_producer, "plays", 1000..1050).await;
    let sinks = app.settings.data_dir.join("sinks");
    until("both teams' events delivered", || {
        ns_under(&sinks.join("alpha/shared/p")).len() == 10 && ns_under(&sinks.join("beta/shared/p")).len() == 50
    })
    .await;
    assert_eq!(ns_under(&sinks.join("alpha")), (0..10).collect::<Vec<_>>(), "alpha's folder holds alpha's only");
    assert_eq!(ns_under(&sinks.join("beta")), (1000..1050).collect::<Vec<_>>());

    // Probing another team's path answers as a path nobody has.
    let backfill = "/api/v1/teams/alpha/routes/all/backfill";
    let (s1, missing) = app.post(&app.alpha, backfill, json!({"from": "files", "path": "nowhere"})).await;
    let (s2, foreign) = app.post(&app.alpha, backfill, json!({"from": "files", "path": "b-only"})).await;
    assert_eq!((s1, s2), (StatusCode::UNPROCESSABLE_ENTITY, StatusCode::UNPROCESSABLE_ENTITY), "{foreign}");
    assert_eq!(missing.to_string().replace("nowhere", "X"), foreign.to_string().replace("b-only", "X"));
    let (s, named) =
        app.post(&app.alpha, backfill, json!({"from": "files", "path": "b-only", "sink": "beta/only-b"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{named}");

    // Alpha's backfill of the shared path reads alpha's own files: its ten events once more.
    let (s, b) = app.post(&app.alpha, backfill, json!({"from": "files", "path": "shared/p"})).await;
    assert_eq!((s, &b["end"]), (StatusCode::CREATED, &json!([[0, 10]])), "{b}");
    until("alpha's files imported", || ns_under(&sinks.join("alpha/shared/p")).len() == 20).await;
    let twice: Vec<u64> = (0..10).flat_map(|n| [n, n]).collect();
    assert_eq!(ns_under(&sinks.join("alpha")), twice, "none of beta's events");
    app.teardown().await;
}

/// A local HTTP endpoint counting the requests it gets; `/moved` answers with a redirect to
/// `/x`.
async fn counting_endpoint() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            if uri.path() == "/moved" {
                (StatusCode::FOUND, [("location", "/x")], "").into_response()
            } else {
                (StatusCode::OK, "{}").into_response()
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://127.0.0.1:{port}"), hits)
}
use axum::response::IntoResponse;

/// Item 2: with the default egress policy a sink cannot be declared towards loopback, the cloud
/// metadata address or a name resolving to loopback; one declared while the policy allowed it is
/// refused at delivery once the policy no longer does (nothing reaches the endpoint); redirects
/// are not followed.
#[tokio::test]
async fn sinks_cannot_reach_loopback_metadata_or_follow_redirects() {
    use std::sync::atomic::Ordering;
    let mut app = spawn_app_with(Db::Sqlite, |s| s.egress = Default::default()).await;
    let (local, hits) = counting_endpoint().await;
    let port = local.rsplit(':').next().unwrap();
    declare_in(&app, &app.alpha, "alpha", "streams", "plays", stream(1)).await;
    for (url, why) in [
        (format!("{local}/x"), "loopback"),
        ("http://169.254.169.254/latest/meta-data/".to_owned(), "link-local"),
        (format!("http://localhost:{port}/x"), "loopback"),
        ("http://[::ffff:127.0.0.1]/x".to_owned(), "loopback"),
        ("http://10.0.0.1/x".to_owned(), "private"),
    ] {
        let spec = json!({"name": "hook", "spec": {"kind": "http", "settings": {"url": url}}});
        let (s, body) = app.post(&app.alpha, "/api/v1/teams/alpha/sinks", spec).await;
        assert_eq!(
            (s, &body["error"]["field"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!("settings.url")),
            "{url}: {body}"
        );
        assert!(body.to_string().contains(why), "{url}: {body}");
    }
    for (kind, settings, secrets) in [
        ("postgres", json!({"table": "t"}), json!({"url": "postgres://u:p@127.0.0.1:5432/db"})),
        ("kafka", json!({"brokers": "localhost:9092", "topic": "t"}), json!({})),
        ("file", json!({"path": "p", "store_url": "s3://b", "endpoint": "http://169.254.169.254"}), json!({})),
    ] {
        let spec = json!({"name": "other", "spec": {"kind": kind, "settings": settings, "secrets": secrets}});
        let (s, body) = app.post(&app.alpha, "/api/v1/teams/alpha/sinks", spec).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{kind}: {body}");
        assert!(body.to_string().contains("not a destination sinks may reach"), "{kind}: {body}");
        assert!(!body.to_string().contains(":p@"), "no password echoed: {body}");
    }
    // Only an admin lets a bucket use the host's own cloud credentials.
    let ambient = json!({"name": "lake", "spec": {"kind": "file", "settings": {"path": "p", "store_url": "s3://b", "ambient_credentials": "true"}}});
    let (s, body) = app.post(&app.alpha, "/api/v1/teams/alpha/sinks", ambient).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");

    // Declared while an admin allowed loopback, then the policy changes: delivery is refused.
    app.settings.egress.allow = vec!["127.0.0.1".into()];
    app.restart(|_| {}).await;
    declare_in(
        &app,
        &app.alpha,
        "alpha",
        "sinks",
        "hook",
        json!({"kind": "http", "settings": {"url": format!("{local}/x")}}),
    )
    .await;
    declare_in(
        &app,
        &app.alpha,
        "alpha",
        "sinks",
        "moved",
        json!({"kind": "http", "settings": {"url": format!("{local}/moved")}}),
    )
    .await;
    for (name, sink) in [("to-hook", "hook"), ("to-moved", "moved")] {
        let route = json!({"stream": "plays", "sink": sink, "max_latency_ms": 20});
        declare_in(&app, &app.alpha, "alpha", "routes", name, route).await;
    }
    let producer = producer_token_of(&app, &app.alpha, "alpha", "plays").await;
    send(&app, &producer, "plays", 0..1).await;
    let job = |name: &'static str| {
        let app = &app;
        async move { app.get(&app.alpha, &format!("/api/v1/teams/alpha/routes/{name}/job")).await.1 }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while job("to-hook").await["metrics"]["delivered"] != 1 || job("to-moved").await["metrics"]["dead_lettered"] != 1 {
        assert!(Instant::now() < deadline, "{} {}", job("to-hook").await, job("to-moved").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The redirect was answered, not followed: one request to /moved, one to /x, nothing more.
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    app.settings.egress = Default::default();
    app.restart(|_| {}).await;
    send(&app, &producer, "plays", 1..2).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = job("to-hook").await;
        if j["job"]["phase"] == "failing" {
            let error = j["job"]["last_error"].as_str().unwrap_or_default();
            assert!(error.contains("not a destination sinks may reach") && error.contains("loopback"), "{j}");
            break;
        }
        assert!(Instant::now() < deadline, "{j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2, "nothing reached the endpoint once refused");
    app.teardown().await;
}
