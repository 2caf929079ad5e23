//! Issue 26: tenancy, egress, governance, limits and data safety, each hole with the test that
//! proves it closed.

use super::*;
use std::time::{Duration, Instant};

pub(crate) async fn declare_in(app: &TestApp, token: &str, team: &str, kind: &str, name: &str, spec: Value) {
    let (s, body) = app.post(token, &format!("/api/v1/teams/{team}/{kind}"), json!({"name": name, "spec": spec})).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
}

pub(crate) async fn producer_token_of(app: &TestApp, token: &str, team: &str, stream: &str) -> String {
    let (s, body) = app.post(token, &format!("/api/v1/producer-tokens/{team}/{stream}"), json!({"name": "web"})).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

pub(crate) async fn send(app: &TestApp, producer: &str, stream: &str, ns: std::ops::Range<u64>) {
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

/// The `n`s of every event a file sink wrote under a folder, sorted.
pub(crate) fn ns_under(dir: &std::path::Path) -> Vec<u64> {
    let mut ns: Vec<u64> = events_under(dir).iter().map(|e| e["event"]["n"].as_u64().unwrap()).collect();
    ns.sort();
    ns
}

pub(crate) async fn until(what: &str, mut check: impl FnMut() -> bool) {
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

    // A backfill of the shared path reads alpha's own files: its ten events, into a route of
    // another (empty) stream.
    declare_in(&app, &app.alpha, "alpha", "streams", "quiet", stream(1)).await;
    declare_in(&app, &app.alpha, "alpha", "sinks", "copy", json!({"kind": "file", "settings": {"path": "copy"}})).await;
    let route = json!({"stream": "quiet", "sink": "copy", "max_latency_ms": 20, "delivery_on_redeploy": "no_duplicates",
                       "config": {"job.checkpoint_interval_ms": "100"}});
    declare_in(&app, &app.alpha, "alpha", "routes", "copy", route).await;
    let backfill = "/api/v1/teams/alpha/routes/copy/backfill";
    let (s, b) = app.post(&app.alpha, backfill, json!({"from": "files", "path": "shared/p"})).await;
    assert_eq!((s, &b["end"]), (StatusCode::CREATED, &json!([[0, 10]])), "{b}");
    until("alpha's files imported", || ns_under(&sinks.join("alpha/copy")).len() == 10).await;
    assert_eq!(ns_under(&sinks.join("alpha/copy")), (0..10).collect::<Vec<_>>(), "none of beta's events");
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
    for (sink, path) in [("hook", "x"), ("moved", "moved")] {
        let spec = json!({"kind": "http", "settings": {"url": format!("{local}/{path}")}});
        declare_in(&app, &app.alpha, "alpha", "sinks", sink, spec).await;
    }
    for (name, sink) in [("to-hook", "hook"), ("to-moved", "moved")] {
        let route = json!({"stream": "plays", "sink": sink, "max_latency_ms": 20});
        declare_in(&app, &app.alpha, "alpha", "routes", name, route).await;
    }
    let producer = producer_token_of(&app, &app.alpha, "alpha", "plays").await;
    send(&app, &producer, "plays", 0..1).await;
    async fn job(app: &TestApp, name: &str) -> Value {
        app.get(&app.alpha, &format!("/api/v1/teams/alpha/routes/{name}/job")).await.1
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while job(&app, "to-hook").await["metrics"]["delivered"] != 1
        || job(&app, "to-moved").await["metrics"]["dead_lettered"] != 1
    {
        assert!(Instant::now() < deadline, "{} {}", job(&app, "to-hook").await, job(&app, "to-moved").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The redirect was answered, not followed: one request to /moved, one to /x, nothing more.
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    app.settings.egress = Default::default();
    app.restart(|_| {}).await;
    send(&app, &producer, "plays", 1..2).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = job(&app, "to-hook").await;
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

/// Items 14 and 16: a stream's partitions cannot go down (events in the dropped ones would never
/// be delivered), and routes cannot feed streams round in a cycle, within a team or across two,
/// whether the route or the sink closes it; nothing is written by a refused change.
#[tokio::test]
async fn partitions_never_shrink_and_routes_never_loop() {
    let app = spawn_app(Db::Sqlite).await;
    declare_in(&app, &app.alpha, "alpha", "streams", "a", stream(3)).await;
    let (s, body) = app.put(&app.alpha, "/api/v1/teams/alpha/streams/a", json!({"spec": stream(2)})).await;
    assert_eq!((s, &body["error"]["field"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("partitions")), "{body}");
    assert!(body.to_string().contains("from 3 to 2"), "{body}");
    let (s, body) = app.put(&app.alpha, "/api/v1/teams/alpha/streams/a", json!({"spec": stream(4)})).await;
    assert_eq!(s, StatusCode::OK, "growing is fine: {body}");

    // a -> b -> c within alpha, then c -> a would close the loop.
    for name in ["b", "c"] {
        declare_in(&app, &app.alpha, "alpha", "streams", name, stream(1)).await;
    }
    for (sink, target) in [("into-b", "b"), ("into-c", "c"), ("into-a", "a")] {
        declare_in(&app, &app.alpha, "alpha", "sinks", sink, json!({"kind": "stream", "settings": {"stream": target}}))
            .await;
    }
    declare_in(&app, &app.alpha, "alpha", "routes", "ab", json!({"stream": "a", "sink": "into-b"})).await;
    declare_in(&app, &app.alpha, "alpha", "routes", "bc", json!({"stream": "b", "sink": "into-c"})).await;
    let before = app.revision_count().await;
    let (s, body) = app
        .post(
            &app.alpha,
            "/api/v1/teams/alpha/routes",
            json!({"name": "ca", "spec": {"stream": "c", "sink": "into-a"}}),
        )
        .await;
    assert_eq!((s, &body["error"]["field"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("sink")), "{body}");
    let cycle = "alpha/c -> [alpha/ca] -> alpha/a -> [alpha/ab] -> alpha/b -> [alpha/bc] -> alpha/c";
    assert!(body.to_string().contains(cycle), "the cycle is named: {body}");
    // The same loop closed by re-pointing a sink an existing route uses.
    declare_in(&app, &app.alpha, "alpha", "streams", "d", stream(1)).await;
    declare_in(&app, &app.alpha, "alpha", "sinks", "into-x", json!({"kind": "stream", "settings": {"stream": "d"}}))
        .await;
    declare_in(&app, &app.alpha, "alpha", "routes", "cx", json!({"stream": "c", "sink": "into-x"})).await;
    let change = json!({"spec": {"kind": "stream", "settings": {"stream": "a"}}});
    let (s, body) = app.put(&app.alpha, "/api/v1/teams/alpha/sinks/into-x", change).await;
    assert_eq!((s, &body["error"]["field"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("settings.stream")), "{body}");
    assert!(body.to_string().contains("[alpha/cx]"), "{body}");
    assert_eq!(app.revision_count().await, before + 3, "only the three accepted declarations were written");

    // Across teams: beta's stream feeds alpha's, and alpha's route back would loop. An admin
    // can edit both teams, so the only thing that stops it is the cycle.
    let admin = Principal { user_id: "root".into(), display: "root".into(), role: Role::Admin, teams: vec![] };
    let goal = Goal::new(&app.store, &admin);
    let decl = |kind, spec: Value| Declaration::from_json(kind, spec).unwrap();
    goal.create("beta", "in", decl(Kind::Stream, stream(1)), "").await.unwrap();
    let to_alpha = json!({"kind": "stream", "settings": {"stream": "alpha/a"}});
    goal.create("beta", "to-alpha", decl(Kind::Sink, to_alpha), "").await.unwrap();
    goal.create("beta", "fwd", decl(Kind::Route, json!({"stream": "in", "sink": "to-alpha"})), "").await.unwrap();
    let to_beta = json!({"kind": "stream", "settings": {"stream": "beta/in"}});
    goal.create("alpha", "to-beta", decl(Kind::Sink, to_beta), "").await.unwrap();
    let refused = goal.create("alpha", "back", decl(Kind::Route, json!({"stream": "a", "sink": "to-beta"})), "").await;
    let message = format!("{:?}", refused.unwrap_err());
    assert!(message.contains("alpha/a -> [alpha/back] -> beta/in -> [beta/fwd] -> alpha/a"), "{message}");
    app.teardown().await;
}

/// Items 8 and 9 (ingest): a producer without a token gets the documented 401 JSON error (not
/// the console's cross-origin refusal) before the server reads its body; a request over the
/// events-per-request cap is refused whole; a batch of many bad events lists the first hundred
/// and counts the rest. The console stays behind the origin check even with a bearer header.
#[tokio::test]
async fn ingest_checks_the_token_first_and_bounds_what_a_request_may_hold() {
    let app = spawn_app_with(Db::Sqlite, |s| s.ingest_max_events_per_request = 1_000).await;
    declare_in(&app, &app.alpha, "alpha", "streams", "plays", stream(1)).await;
    let producer = producer_token_of(&app, &app.alpha, "alpha", "plays").await;
    let post = |body: String, token: Option<&str>| {
        let mut req =
            app.http.post(format!("{}/ingest/plays", app.base)).header("content-type", "application/x-ndjson");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.body(body).send()
    };
    // 10 MB without a token: answered 401 at once, as JSON.
    let resp = post("{}\n".repeat(5_000_000), None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthenticated", "{body}");

    let resp = post("{}\n".repeat(1_001), Some(&producer)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(resp.text().await.unwrap().contains("at most 1000 per request"));

    let resp = post("[]\n".repeat(500), Some(&producer)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!((body["rejected"].as_array().unwrap().len(), &body["rejected_total"]), (100, &json!(500)), "{body}");

    let resp = post("{\"n\": 1}\n".into(), Some(&producer)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // A console form with a bearer header but no origin is still refused.
    let resp = app
        .http
        .post(format!("{}/api/login", app.base))
        .bearer_auth(&app.alpha)
        .form(&[("username", "alice"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let headers = app.http.get(format!("{}/login", app.base)).send().await.unwrap().headers().clone();
    assert!(headers["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    assert!(headers.get("strict-transport-security").is_none(), "no HSTS without secure cookies");
    // Scripts: a console page allows only its own response's nonce, which its hydration scripts
    // carry; every response has a new one; other responses allow no script at all.
    let page = || async {
        let resp = app.http.get(format!("{}/login", app.base)).send().await.unwrap();
        let policy = resp.headers()["content-security-policy"].to_str().unwrap().to_owned();
        (policy, resp.text().await.unwrap())
    };
    let nonce_of = |policy: &str| policy.split("'nonce-").nth(1).and_then(|r| r.split('\'').next()).map(str::to_owned);
    let (policy, html) = page().await;
    let nonce = nonce_of(&policy).unwrap_or_else(|| panic!("a nonce in {policy}"));
    assert!(nonce.len() >= 22 && !policy.contains("unsafe-inline"), "{policy}");
    assert!(html.matches("<script").count() >= 1, "{html}");
    for tag in html.split("<script").skip(1) {
        let opening = tag.split('>').next().unwrap();
        assert!(opening.contains(&format!("nonce=\"{nonce}\"")), "every script carries the nonce: {opening}");
    }
    assert_ne!(nonce_of(&page().await.0), Some(nonce), "a fresh nonce per response");
    let api =
        app.http.get(format!("{}/api/v1/teams/alpha/streams", app.base)).bearer_auth(&app.alpha).send().await.unwrap();
    assert!(api.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'none'"));
    app.teardown().await;
}

/// Item 7 (in part): 200 concurrent wrong passwords for one account: the attempt is counted
/// before the password is checked and password checks are bounded, so at most the limit (5) of
/// them are ever verified; the rest are throttled or refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_password_guesses_cannot_pass_the_limit() {
    let app = spawn_app(Db::Sqlite).await;
    let origin = app.base.clone();
    let attempts = (0..200).map(|i| {
        let (http, base, origin) = (app.http.clone(), app.base.clone(), origin.clone());
        async move {
            let form = [("username", "alice".to_owned()), ("password", format!("wrong-guess-{i}"))];
            let resp =
                http.post(format!("{base}/api/login")).header("origin", origin).form(&form).send().await.unwrap();
            (resp.status(), resp.text().await.unwrap())
        }
    });
    let answers = futures_util::future::join_all(attempts).await;
    let verified = answers.iter().filter(|(_, a)| a.contains("Wrong username or password")).count();
    let throttled = answers.iter().filter(|(_, a)| a.contains("Too many")).count();
    assert!(
        answers.iter().filter(|(_, a)| a.contains("Too many")).all(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS),
        "throttled sign-ins answer 429"
    );
    assert!((1..=5).contains(&verified), "{verified} guesses verified");
    assert_eq!(verified + throttled, 200, "every other guess throttled or refused: {:?}", &answers[..3]);
    // The right password is throttled too now: the account is locked for the window.
    let form = [("username", "alice"), ("password", PASSWORD)];
    let resp = app.http.post(format!("{}/api/login", app.base)).header("origin", &origin).form(&form).send().await;
    assert!(resp.unwrap().text().await.unwrap().contains("Too many failed sign-ins"));
    app.teardown().await;
}

/// Item 10: sink secrets are sealed in the database (the current value, every rotation, and a
/// change held back for approval), the server starts on an older database holding them in clear
/// and seals them, and a password written into a sink's URL setting is never shown.
#[tokio::test]
async fn sink_secrets_are_sealed_at_rest_and_url_passwords_never_shown() {
    let mut app = spawn_app(Db::Sqlite).await;
    let secret = "postgres://writer:hunter2-sealed@127.0.0.1:5432/plays";
    let sink = json!({"kind": "postgres", "settings": {"table": "plays"}, "secrets": {"url": secret}});
    declare_in(&app, &app.alpha, "alpha", "sinks", "warehouse", sink).await;
    let sink_id = app.store.get(Kind::Sink, &team_id(&app, "alpha").await, "warehouse").await.unwrap().unwrap().id;
    // Held back for approval: the pending change's declaration holds the new secret.
    let admin = Principal { user_id: "t".into(), display: "t".into(), role: Role::Admin, teams: vec![] };
    let policy =
        keystone_control::approvals::ApprovalPolicy { objects_tagged: vec!["critical".into()], ..Default::default() };
    Goal::new(&app.store, &admin).create("", "approvals", Declaration::Policy(policy), "").await.unwrap();
    let held = json!({"kind": "postgres", "settings": {"table": "plays"}, "tags": ["critical"],
                      "secrets": {"url": "postgres://writer:pending-rotation@127.0.0.1:5432/plays"}});
    let (s, body) = app.post(&app.alpha, "/api/v1/teams/alpha/sinks", json!({"name": "held", "spec": held})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");

    let pool = app.store.pool().clone();
    let raw = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            let rows = sqlx::query(sql).fetch_all(&pool).await.unwrap();
            rows.iter().map(|r| sqlx::Row::try_get::<String, _>(r, 0).unwrap()).collect::<Vec<String>>()
        }
    };
    let stored = raw("SELECT value FROM sink_secrets").await;
    let pending = raw("SELECT declaration FROM change_requests WHERE declaration IS NOT NULL").await;
    assert_eq!((stored.len(), pending.len()), (1, 1));
    for v in stored.iter().chain(&pending) {
        assert!(v.starts_with("enc:v1:") && !v.contains("hunter2") && !v.contains("pending-rotation"), "{v}");
    }
    assert_eq!(app.store.sink_secrets(&sink_id).await.unwrap(), [("url".to_owned(), secret.to_owned())]);

    // An older version's plaintext value is sealed when the server starts.
    sqlx::query("UPDATE sink_secrets SET value = 'postgres://writer:old-plain@127.0.0.1/p'")
        .execute(app.store.pool())
        .await
        .unwrap();
    app.restart(|_| {}).await;
    let stored = raw("SELECT value FROM sink_secrets").await;
    assert!(stored[0].starts_with("enc:v1:") && !stored[0].contains("old-plain"), "{stored:?}");

    // A password in a URL setting is refused at declaration (credentials go in the secrets)...
    let hook = json!({"kind": "http", "settings": {"url": "http://bot:url-secret@127.0.0.1:9/x"}});
    let (s, body) = app.post(&app.alpha, "/api/v1/teams/alpha/sinks", json!({"name": "hook", "spec": hook})).await;
    assert_eq!((s, &body["error"]["field"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("settings.url")), "{body}");
    assert!(!body.to_string().contains("url-secret"), "{body}");
    // (One stored before that rule is shown masked: `egress::tests::passwords_in_urls_are_hidden_for_display`.)
    app.teardown().await;
}

async fn team_id(app: &TestApp, team: &str) -> String {
    app.store.get(Kind::Team, "", team).await.unwrap().unwrap().id
}

/// Item 3: under an approval policy, a tagged sink's URL, secrets and tag, a new stream, and the
/// policy itself wait for an admin; and an admin made after a request cannot approve it (one admin
/// creating a second to approve their own change).
#[tokio::test]
async fn the_approval_policy_cannot_be_bypassed() {
    use keystone_control::goal::GoalError;
    let app = spawn_app(Db::Sqlite).await;
    let sink = json!({"kind": "http", "settings": {"url": "http://127.0.0.1:9/a"}, "tags": ["production"]});
    declare_in(&app, &app.alpha, "alpha", "sinks", "prod", sink).await;
    upsert_user(&app.store, "root", PASSWORD, Role::Admin, &[], false).await.unwrap();
    let as_user = |name: &'static str| {
        let store = app.store.clone();
        async move { keystone_control::auth::authenticate(&store, name, PASSWORD).await.unwrap().unwrap() }
    };
    let admin = as_user("admin").await;
    let policy = keystone_control::approvals::ApprovalPolicy {
        routes_to_sinks_tagged: vec!["production".into()],
        capacity_increases: true,
        ..Default::default()
    };
    Goal::new(&app.store, &admin).create("", "approvals", Declaration::Policy(policy), "").await.unwrap();

    let sink_path = "/api/v1/teams/alpha/sinks/prod";
    for spec in [
        json!({"kind": "http", "settings": {"url": "http://127.0.0.1:9/elsewhere"}, "tags": ["production"]}),
        json!({"kind": "http", "settings": {"url": "http://127.0.0.1:9/a"}}),
        json!({"kind": "http", "settings": {"url": "http://127.0.0.1:9/a"}, "tags": ["production"],
               "secrets": {"authorization": "Bearer new"}}),
    ] {
        let (s, body) = app.put(&app.alpha, sink_path, json!({"spec": spec})).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    }
    let (_, now) = app.get(&app.alpha, sink_path).await;
    assert_eq!((now["version"].as_i64(), &now["spec"]["settings"]["url"]), (Some(1), &json!("http://127.0.0.1:9/a")));
    let (s, body) =
        app.post(&app.alpha, "/api/v1/teams/alpha/streams", json!({"name": "new", "spec": stream(2)})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert!(body.to_string().contains("creating a stream (2 partitions"), "{body}");

    // The policy itself: held back, and not approvable by an admin made afterwards.
    let off = keystone_control::approvals::ApprovalPolicy::default();
    let held = Goal::new(&app.store, &admin).update("", "approvals", Declaration::Policy(off), "", Some(1)).await;
    let request = match held {
        Err(GoalError::ApprovalRequired(r)) => r,
        other => panic!("the policy change was not held back: {other:?}"),
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    upsert_user(&app.store, "sidekick", PASSWORD, Role::Admin, &[], false).await.unwrap();
    let sidekick = as_user("sidekick").await;
    match Goal::new(&app.store, &sidekick).decide(request.id, true, "", |_| false).await {
        Err(GoalError::Refused(why)) => assert!(why.contains("became an admin after"), "{why}"),
        other => panic!("a newer admin approved: {other:?}"),
    }
    let root = as_user("root").await;
    Goal::new(&app.store, &root).decide(request.id, true, "ok", |_| false).await.unwrap();
    let (_, policy) = app.get(&app.alpha, "/api/v1/policies/approvals").await;
    assert_eq!(policy["version"], 2, "{policy}");
    app.teardown().await;
}

/// Item 8: slow clients (slowloris) cannot hold connections, and open connections are capped.
/// Two connections that send half a header fill a cap of two: a third client is not served while
/// they are open, and is once the header deadline has cut them off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_and_connections_are_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(Db::Sqlite, |s| {
        s.max_connections = 2;
        s.header_read_timeout_ms = 1500;
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"GET /login HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(c);
    }
    let raw = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let started = Instant::now();
    let third = tokio::spawn({
        let url = format!("{}/api/v1/openapi.json", app.base);
        async move { (raw.get(url).send().await.map(|r| r.status()), Instant::now()) }
    });
    // The slow clients are closed by the server: their reads end.
    for mut c in slow {
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(20), c.read(&mut buf)).await;
        let closed = matches!(read, Ok(Ok(0)) | Ok(Err(_)));
        assert!(closed, "a half-sent header held its connection: {read:?}");
    }
    let (status, answered_at) = third.await.unwrap();
    assert_eq!(status.unwrap(), StatusCode::OK);
    // Served only once a slot was free: the slow clients held both until their deadline.
    let waited = answered_at - started;
    assert!(waited >= Duration::from_millis(1000), "the third client was served after {waited:?}, slots full");
    app.teardown().await;
}

/// Item 8: console forms are small, a request has a deadline, a body that stops sending is cut
/// off, requests beyond the concurrency limit get 503 at once, and a stream without a quota of
/// its own gets the platform's default one. Each with a real HTTP client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_bounded_in_size_time_and_number() {
    let app = spawn_app_with(Db::Sqlite, |s| {
        s.console_max_body_bytes = 4096;
        s.body_idle_timeout_ms = 300;
        s.max_concurrent_requests = 2;
        s.ingest_default_max_events_per_second = 10;
    })
    .await;
    // Requests the server cuts short get a client of their own: a connection the server closed
    // early must not go back to the shared pool for the next request.
    let raw = || reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    // A console form of 100 KB: refused before any handler reads it.
    let big = format!("username=x&password={}", "p".repeat(100_000));
    let resp = raw()
        .post(format!("{}/api/login", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", &app.base)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Two producers that open a body and then stall hold the two slots: a third request is
    // refused at once with 503, and the stalled bodies are cut off after the idle timeout.
    let producer = {
        declare_in(&app, &app.alpha, "alpha", "streams", "plays", stream(1)).await;
        producer_token_of(&app, &app.alpha, "alpha", "plays").await
    };
    let stalled = |n: u64| {
        let (http, url, producer) = (raw(), format!("{}/ingest/plays", app.base), producer.clone());
        tokio::spawn(async move {
            let first = futures_util::stream::once(async move {
                Ok::<_, std::io::Error>(bytes::Bytes::from(format!("{}\n", json!({"n": n}))))
            });
            let stall = futures_util::stream::once(async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok::<_, std::io::Error>(bytes::Bytes::from_static(b""))
            });
            let body = reqwest::Body::wrap_stream(futures_util::StreamExt::chain(first, stall));
            let started = Instant::now();
            let resp = http.post(url).bearer_auth(producer).body(body).send().await;
            (resp.map(|r| r.status()), started.elapsed())
        })
    };
    let (a, b) = (stalled(1), stalled(2));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = raw().get(format!("{}/api/v1/openapi.json", app.base)).send().await.unwrap();
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(third.headers().get("retry-after").unwrap(), "1");
    for stalled in [a, b] {
        let (status, took) = stalled.await.unwrap();
        assert!(took < Duration::from_secs(10), "a stalled body was held for {took:?}");
        if let Ok(status) = status {
            assert!(status.is_client_error(), "a stalled body was answered {status}");
        }
    }
    // Slots are free again; the default quota (10/s, bursts of 20) throttles a stream without
    // one of its own.
    let mut statuses = Vec::new();
    for chunk in 0..5u64 {
        let body: String = (chunk * 10..chunk * 10 + 10).map(|n| format!("{}\n", json!({ "n": n }))).collect();
        let resp = raw()
            .post(format!("{}/ingest/plays", app.base))
            .bearer_auth(&producer)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status());
    }
    assert_eq!(statuses[0], StatusCode::OK);
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    app.teardown().await;
}

/// Item 4 (in part): an API token acts with the lesser of its own role and what its creator holds
/// now: the creator made a viewer turns their editor token into a viewer's at once.
#[tokio::test]
async fn a_token_never_outlives_its_creators_rights() {
    let app = spawn_app(Db::Sqlite).await;
    let create = |name: &'static str| json!({"name": name, "spec": stream(1)});
    let (s, body) = app.post(&app.alpha, "/api/v1/teams/alpha/streams", create("before")).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    upsert_user(&app.store, "alice", PASSWORD, Role::Viewer, &["alpha".into()], true).await.unwrap();
    let (s, body) = app.post(&app.alpha, "/api/v1/teams/alpha/streams", create("after")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(app.get(&app.alpha, "/api/v1/teams/alpha/streams/before").await.0, StatusCode::OK, "still reads");
    app.teardown().await;
}

/// Item 7: sign-in attempts are counted in the database, so a second server on it refuses an
/// account the first one saw guessed at; and behind a trusted proxy the address is the one the
/// proxy reports, so one client's guesses at many accounts are throttled by that address alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_counters_are_shared_by_servers_and_follow_the_trusted_proxy_header() {
    let app = spawn_app_with(Db::Sqlite, |s| s.trusted_proxy_header = Some("x-forwarded-for".into())).await;
    let second_dir = tempfile::tempdir().unwrap();
    let mut settings = app.settings.clone();
    settings.data_dir = second_dir.path().to_path_buf();
    let (second, _running) = start_server(settings).await;
    let sign_in = |base: String, user: String, password: &'static str, from: &'static str| {
        let http = app.http.clone();
        async move {
            let form = [("username", user.as_str()), ("password", password)];
            let resp = http
                .post(format!("{base}/api/login"))
                .header("origin", &base)
                .header("x-forwarded-for", format!("192.0.2.1, {from}"))
                .form(&form)
                .send()
                .await
                .unwrap();
            (resp.status(), resp.text().await.unwrap())
        }
    };
    for _ in 0..5 {
        let (_, body) = sign_in(app.base.clone(), "alice".into(), "wrong-password-x", "198.51.100.7").await;
        assert!(body.contains("Wrong username or password"), "{body}");
    }
    let (status, body) = sign_in(second.clone(), "alice".into(), PASSWORD, "198.51.100.8").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "the other server counts the same attempts: {body}");

    // Thirty guesses at as many accounts from one address: the address is throttled, another is not.
    for i in 0..30 {
        let (_, body) = sign_in(app.base.clone(), format!("ghost-{i}"), "wrong-password-x", "203.0.113.9").await;
        assert!(body.contains("Wrong username or password"), "{i}: {body}");
    }
    let (status, _) = sign_in(app.base.clone(), "bob".into(), PASSWORD, "203.0.113.9").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, body) = sign_in(second, "bob".into(), PASSWORD, "203.0.113.10").await;
    assert!(status.is_success() || status.is_redirection(), "{status} {body}");
    app.teardown().await;
}

/// Item 4 (in part): a token created with an expiry stops working at it.
#[tokio::test]
async fn an_expired_token_does_nothing() {
    let app = spawn_app(Db::Sqlite).await;
    let alice = keystone_control::auth::authenticate(&app.store, "alice", PASSWORD).await.unwrap().unwrap();
    let team = team_id(&app, "alpha").await;
    let past = keystone_control::store::now_ms() - 1;
    let refused =
        keystone_control::users::create_token(&app.store, &alice, "old", &team, Role::Viewer, Some(past)).await;
    assert!(refused.is_err(), "an expiry in the past is refused");
    let soon = keystone_control::store::now_ms() + 400;
    let (_, token) =
        keystone_control::users::create_token(&app.store, &alice, "brief", &team, Role::Viewer, Some(soon))
            .await
            .unwrap();
    assert_eq!(app.get(&token, "/api/v1/teams/alpha/streams").await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.get(&token, "/api/v1/teams/alpha/streams").await.0, StatusCode::UNAUTHORIZED);
    let listed = keystone_control::auth::list_tokens(&app.store, &alice).await.unwrap();
    assert!(listed.iter().any(|t| t.name == "brief" && t.expired), "{listed:?}");
    app.teardown().await;
}

/// Item 4 (in part): disabling a user ends their console session and stops their API tokens in
/// the same step, and they cannot sign in again; removing a member from a team stops their
/// tokens for it.
#[tokio::test]
async fn a_disabled_user_and_a_removed_member_lose_access_at_once() {
    use keystone_control::users::{remove_membership, set_user_disabled};
    let app = spawn_app(Db::Sqlite).await;
    let alice = console_session(&app, "alice").await;
    let whoami = |client: reqwest::Client| {
        let base = app.base.clone();
        async move {
            let page = client.get(format!("{base}/streams")).header("accept", "text/html").send().await.unwrap();
            page.status()
        }
    };
    assert_eq!(whoami(alice.clone()).await, StatusCode::OK);
    assert_eq!(app.get(&app.alpha, "/api/v1/teams/alpha/streams").await.0, StatusCode::OK);
    let admin = keystone_control::auth::authenticate(&app.store, "admin", PASSWORD).await.unwrap().unwrap();
    assert!(set_user_disabled(&app.store, &admin, "admin", true).await.is_err(), "not oneself");
    assert!(set_user_disabled(&app.store, &admin, "alice", true).await.unwrap());
    assert!(whoami(alice).await.is_redirection(), "the session ended");
    assert_eq!(app.get(&app.alpha, "/api/v1/teams/alpha/streams").await.0, StatusCode::UNAUTHORIZED);
    assert!(keystone_control::auth::authenticate(&app.store, "alice", PASSWORD).await.unwrap().is_none());
    let users = keystone_control::users::list_users(&app.store).await.unwrap();
    assert!(users.iter().any(|u| u.username == "alice" && u.disabled));

    assert_eq!(app.get(&app.beta, "/api/v1/teams/beta/streams").await.0, StatusCode::OK);
    assert!(remove_membership(&app.store, &admin, "bob", "beta").await.unwrap());
    assert_eq!(app.get(&app.beta, "/api/v1/teams/beta/streams").await.0, StatusCode::UNAUTHORIZED);

    // Every step above is in the admins' account log, and a failed sign-in too, never a password.
    let _ = app.form("/api/login", &[("username", "vera"), ("password", "not-her-password")], Some(&app.base)).await;
    let events = app.store.account_events(100).await.unwrap();
    let seen: Vec<(String, String, String)> =
        events.iter().map(|e| (e.actor.clone(), e.action.clone(), e.subject.clone())).collect();
    for want in [
        ("alice", "signed in", "alice"),
        ("admin", "user disabled", "alice"),
        ("admin", "removed from team", "bob"),
        ("vera", "sign-in failed", "vera"),
    ] {
        assert!(seen.iter().any(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()) == want), "{want:?} in {seen:?}");
    }
    assert!(!format!("{events:?}").contains("not-her-password") && !format!("{events:?}").contains(PASSWORD));
    app.teardown().await;
}

/// Item 4: roles per team (an editor of alpha who is a viewer of beta), set by admins in the
/// console; a token follows its creator's role on its team; a deleted user's session and tokens
/// stop in the same step, and the last admin and oneself cannot be deleted.
#[tokio::test]
async fn roles_are_per_team_and_a_deleted_user_loses_everything_at_once() {
    let app = spawn_app(Db::Sqlite).await;
    let admin_session = console_session(&app, "admin").await;
    let (s, body) = console_post(
        &app,
        &admin_session,
        "/api/create_user",
        &[("username", "mixed"), ("password", PASSWORD), ("role", "editor"), ("teams", "alpha, beta:owner")],
    )
    .await;
    assert!(!s.is_success() && body.contains("not viewer or editor"), "a bad team role is named: {s} {body}");
    assert!(keystone_control::users::list_users(&app.store).await.unwrap().iter().all(|u| u.username != "mixed"));
    let (s, body) = console_post(
        &app,
        &admin_session,
        "/api/create_user",
        &[("username", "mixed"), ("password", PASSWORD), ("role", "editor"), ("teams", "alpha, beta:viewer")],
    )
    .await;
    assert!(s.is_success(), "{s} {body}");

    let mixed = keystone_control::auth::authenticate(&app.store, "mixed", PASSWORD).await.unwrap().unwrap();
    let (alpha, beta) = (team_id(&app, "alpha").await, team_id(&app, "beta").await);
    let token = |team: String, role| {
        let (store, who) = (app.store.clone(), mixed.clone());
        async move { keystone_control::users::create_token(&store, &who, "mixed-bot", &team, role, None).await }
    };
    assert!(token(beta.clone(), Role::Editor).await.is_err(), "no more than a viewer on beta");
    let beta_token = token(beta, Role::Viewer).await.unwrap().1;
    let alpha_token = token(alpha, Role::Editor).await.unwrap().1;
    declare_in(&app, &alpha_token, "alpha", "streams", "clicks", json!({"partitions": 1, "retention_hours": 1})).await;
    assert_eq!(app.get(&beta_token, "/api/v1/teams/beta/streams").await.0, StatusCode::OK);
    let x = json!({"name": "x", "spec": {"partitions": 1, "retention_hours": 1}});
    let (s, _) = app.post(&beta_token, "/api/v1/teams/beta/streams", x).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // In the console too: editor of alpha, viewer of beta.
    let session = console_session(&app, "mixed").await;
    let save = |team: &'static str| {
        let session = session.clone();
        let app = &app;
        async move {
            let fields = [
                ("team", team),
                ("name", "views"),
                ("version", ""),
                ("description", ""),
                ("partitions", "1"),
                ("retention_hours", "12"),
                ("retention_bytes", ""),
                ("key_field", ""),
                ("schema", ""),
                ("reason", ""),
            ];
            console_post(app, &session, "/api/save_stream", &fields).await
        }
    };
    let (s, body) = save("alpha").await;
    assert!(s.is_success(), "{s} {body}");
    let (s, body) = save("beta").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let beta_id = team_id(&app, "beta").await;
    assert!(app.store.get(Kind::Stream, &beta_id, "views").await.unwrap().is_none());

    // Demoted on alpha: the same token now only reads there.
    let (s, body) = console_post(
        &app,
        &admin_session,
        "/api/set_team_role",
        &[("username", "mixed"), ("team", "alpha"), ("role", "viewer")],
    )
    .await;
    assert!(s.is_success(), "{s} {body}");
    let y = json!({"name": "y", "spec": {"partitions": 1, "retention_hours": 1}});
    let (s, _) = app.post(&alpha_token, "/api/v1/teams/alpha/streams", y).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "the token follows its creator's role on alpha");
    assert_eq!(app.get(&alpha_token, "/api/v1/teams/alpha/streams").await.0, StatusCode::OK);

    // Deleting: the name typed twice, never oneself, never the last admin.
    let delete = |user: &'static str, confirm: &'static str| {
        let admin_session = admin_session.clone();
        let app = &app;
        async move {
            console_post(app, &admin_session, "/api/delete_user", &[("username", user), ("confirm", confirm)]).await
        }
    };
    let (s, body) = delete("mixed", "mixd").await;
    assert!(!s.is_success() && body.contains("confirm"), "{s} {body}");
    assert_eq!(app.get(&beta_token, "/api/v1/teams/beta/streams").await.0, StatusCode::OK, "nothing deleted");
    let (s, body) = delete("admin", "admin").await;
    assert!(!s.is_success() && body.contains("yourself"), "{s} {body}");
    let sole = keystone_control::users::delete_user(&app.store, &Principal::system("test"), "admin").await;
    assert!(format!("{:?}", sole.unwrap_err()).contains("last admin"));
    let (s, body) = delete("mixed", "mixed").await;
    assert!(s.is_success(), "{s} {body}");
    for t in [&alpha_token, &beta_token] {
        assert_eq!(app.get(t, "/api/v1/teams/alpha/streams").await.0, StatusCode::UNAUTHORIZED);
    }
    let page = session.get(format!("{}/streams", app.base)).header("accept", "text/html").send().await.unwrap();
    assert!(page.status().is_redirection(), "the session ended: {}", page.status());
    assert!(keystone_control::auth::authenticate(&app.store, "mixed", PASSWORD).await.unwrap().is_none());
    let events = app.store.account_events(100).await.unwrap();
    assert!(events.iter().any(|e| e.action == "user deleted" && e.subject == "mixed" && e.actor == "admin"));
    assert!(events.iter().any(|e| e.action == "team role set" && e.detail == "alpha: viewer"), "{events:?}");
    app.teardown().await;
}

/// Item 4 (in part): users change their own password, given the current one; a wrong current one
/// changes nothing and counts against sign-in throttling.
#[tokio::test]
async fn users_change_their_own_password() {
    let app = spawn_app(Db::Sqlite).await;
    let alice = console_session(&app, "alice").await;
    let (s, body) = console_post(
        &app,
        &alice,
        "/api/change_password",
        &[("current_password", "not-the-current-one"), ("new_password", "a brand new passphrase")],
    )
    .await;
    assert!(!s.is_success() && body.contains("current_password"), "{s} {body}");
    let (s, body) = console_post(
        &app,
        &alice,
        "/api/change_password",
        &[("current_password", PASSWORD), ("new_password", "short")],
    )
    .await;
    assert!(!s.is_success() && body.contains("new_password"), "{s} {body}");
    assert!(keystone_control::auth::authenticate(&app.store, "alice", PASSWORD).await.unwrap().is_some());
    let fields = [("current_password", PASSWORD), ("new_password", "a brand new passphrase")];
    let (s, body) = console_post(&app, &alice, "/api/change_password", &fields).await;
    assert!(s.is_success() || s.is_redirection(), "{s} {body}");
    assert!(keystone_control::auth::authenticate(&app.store, "alice", PASSWORD).await.unwrap().is_none());
    assert!(keystone_control::auth::authenticate(&app.store, "alice", "a brand new passphrase")
        .await
        .unwrap()
        .is_some());
    let events = app.store.account_events(50).await.unwrap();
    assert!(events.iter().any(|e| e.action == "password changed" && e.subject == "alice"));
    app.teardown().await;
}
