//! Integration tests: the real server on port 0, against a fresh SQLite file and a fresh
//! PostgreSQL database (the server on 127.0.0.1:5432; override with KEYSTONE_TEST_POSTGRES).

use keystone::settings::Settings;
use keystone::startup::Application;
use keystone_control::auth::Principal;
use keystone_control::goal::{Declaration, Goal};
use keystone_control::store::Store;
use keystone_control::users::create_token;
use keystone_control::users::upsert_user;
use keystone_control::{Kind, Role, TeamSpec};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;

#[derive(Clone, Copy, Debug)]
enum Db {
    Sqlite,
    Postgres,
}

struct TestApp {
    base: String,
    store: Store,
    http: reqwest::Client,
    /// Editor tokens for teams alpha and beta, and a viewer token for alpha.
    alpha: String,
    beta: String,
    alpha_viewer: String,
    _dir: TempDir,
    pg_db: Option<String>,
    settings: Settings,
    running: Option<Running>,
}

/// A scratch directory removed on drop.
struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pg_admin_url() -> String {
    std::env::var("KEYSTONE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

const PASSWORD: &str = "correct horse battery";
/// The test servers' `/metrics` scrape token.
const SCRAPE_TOKEN: &str = "scrape-token-for-the-whole-platform-0123456789";
/// The test servers' key sealing sink secrets.
const TEST_SECRETS_KEY: &str = "6b657973746f6e652d746573742d6b65792d3332206279746573206c6f6e6721";

async fn spawn_app(db: Db) -> TestApp {
    spawn_app_with(db, |_| {}).await
}

async fn spawn_app_with(db: Db, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let dir = std::env::temp_dir().join(format!("keystone-test-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (database_url, pg_db) = match db {
        Db::Sqlite => (format!("sqlite://{}", dir.join("keystone.db").display()), None),
        Db::Postgres => {
            let name = format!("keystone_test_{id}");
            let mut conn = sqlx::PgConnection::connect(&pg_admin_url())
                .await
                .expect("PostgreSQL must be reachable for the PostgreSQL tests (set KEYSTONE_TEST_POSTGRES)");
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
            let base = pg_admin_url();
            let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
            (url, Some(name))
        }
    };
    let mut settings = Settings {
        database_url: Some(database_url.clone()),
        ingest_max_body_bytes: 64 * 1024,
        ingest_max_event_bytes: 2048,
        // Fast enough that a test sees its samples within a second.
        telemetry_interval_ms: 200,
        metrics_token: Some(SCRAPE_TOKEN.into()),
        // The sinks these tests deliver to run on this machine: allowed explicitly.
        egress: keystone::settings::EgressSettings {
            allow: vec!["127.0.0.0/8".into(), "::1".into(), "localhost".into()],
            ..Default::default()
        },
        // Every process of a test shares the database, so they share the key too.
        secrets_key: Some(TEST_SECRETS_KEY.into()),
        ..Settings::local(&dir)
    };
    tweak(&mut settings);
    let (base, running) = start_server(settings.clone()).await;

    let store = Store::connect(&database_url).await.unwrap().with_secrets(settings.secret_box().unwrap());
    let root = Principal { user_id: "test".into(), display: "test".into(), role: Role::Admin, teams: vec![] };
    for team in ["alpha", "beta"] {
        Goal::new(&store, &root).create("", team, Declaration::Team(TeamSpec::default()), "").await.unwrap();
    }
    upsert_user(&store, "admin", PASSWORD, Role::Admin, &[], false).await.unwrap();
    upsert_user(&store, "alice", PASSWORD, Role::Editor, &["alpha".into()], false).await.unwrap();
    upsert_user(&store, "bob", PASSWORD, Role::Editor, &["beta".into()], false).await.unwrap();
    upsert_user(&store, "vera", PASSWORD, Role::Viewer, &["alpha".into()], false).await.unwrap();
    let token = |user: &'static str, team: &'static str, role: Role| {
        let store = store.clone();
        async move {
            let who = keystone_control::auth::authenticate(&store, user, PASSWORD).await.unwrap().unwrap();
            let team_id = store.get(Kind::Team, "", team).await.unwrap().unwrap().id;
            create_token(&store, &who, &format!("{user}-bot"), &team_id, role, None).await.unwrap().1
        }
    };
    let alpha = token("alice", "alpha", Role::Editor).await;
    let beta = token("bob", "beta", Role::Editor).await;
    let alpha_viewer = token("vera", "alpha", Role::Viewer).await;
    let http =
        reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap();
    TestApp {
        base,
        store,
        http,
        alpha,
        beta,
        alpha_viewer,
        _dir: TempDir(dir),
        pg_db,
        settings,
        running: Some(running),
    }
}

/// A server serving until told to stop.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start_server(settings: Settings) -> (String, Running) {
    let app = Application::build(settings).await.expect("server starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    (base, Running { stop, task })
}

impl TestApp {
    async fn call(&self, method: reqwest::Method, token: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
    async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, token, path, None).await
    }
    async fn post(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, token, path, Some(body)).await
    }
    async fn put(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::PUT, token, path, Some(body)).await
    }
    async fn delete(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::DELETE, token, path, None).await
    }
    async fn revision_count(&self) -> usize {
        let admin = Principal { user_id: "t".into(), display: "t".into(), role: Role::Admin, teams: vec![] };
        let f = keystone_control::store::AuditFilter { limit: 1000, ..Default::default() };
        Goal::new(&self.store, &admin).audit(&f).await.unwrap().len()
    }
    /// Posts a console form (a server function) the way a browser without JavaScript does.
    async fn form(&self, path: &str, fields: &[(&str, &str)], origin: Option<&str>) -> reqwest::Response {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(fields);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send().await.unwrap()
    }
    /// Stops the server the way Ctrl-C does (jobs drain and commit), then starts a new one on the
    /// same database and data directory.
    async fn restart(&mut self, before_start: impl FnOnce(&std::path::Path)) {
        if let Some(r) = self.running.take() {
            let _ = r.stop.send(());
            r.task.await.unwrap().unwrap();
        }
        before_start(&self.settings.data_dir);
        let (base, running) = start_server(self.settings.clone()).await;
        self.base = base;
        self.running = Some(running);
    }

    async fn teardown(self) {
        if let Some(name) = &self.pg_db {
            self.store.pool().close().await;
            let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
        }
    }
}

fn stream(partitions: u32) -> Value {
    json!({"description": "plays", "partitions": partitions, "retention_hours": 24})
}

async fn crud_writes_revisions_and_diffs(db: Db) {
    let app = spawn_app(db).await;
    let (s, body) = app
        .post(&app.alpha, "/api/v1/teams/alpha/streams", json!({"name": "plays", "spec": stream(3), "reason": "new"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["revision"]["version"], 1);
    let object_id = body["revision"]["object_id"].as_str().unwrap().to_owned();

    let (s, body) = app
        .put(
            &app.alpha,
            "/api/v1/teams/alpha/streams/plays",
            json!({"spec": stream(6), "reason": "more", "expected_version": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!((body["revision"]["version"].as_i64(), body["changed"].as_bool()), (Some(2), Some(true)));

    // The same declaration again is a no-op, not a new revision.
    let (_, body) = app.put(&app.alpha, "/api/v1/teams/alpha/streams/plays", json!({"spec": stream(6)})).await;
    assert_eq!((body["revision"]["version"].as_i64(), body["changed"].as_bool()), (Some(2), Some(false)));

    // A change based on a stale version is refused.
    let (s, body) = app
        .put(&app.alpha, "/api/v1/teams/alpha/streams/plays", json!({"spec": stream(9), "expected_version": 1}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "conflict");

    let (s, diff) = app.get(&app.alpha, &format!("/api/v1/objects/{object_id}/diff?from=1&to=2")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(diff, json!([{"path": "partitions", "before": 3, "after": 6}]));

    let (_, obj) = app.get(&app.alpha, "/api/v1/teams/alpha/streams/plays").await;
    assert_eq!((obj["version"].as_i64(), obj["spec"]["partitions"].as_i64()), (Some(2), Some(6)));

    let (s, _) = app.delete(&app.alpha, "/api/v1/teams/alpha/streams/plays?reason=gone").await;
    assert_eq!(s, StatusCode::OK);
    let (_, list) = app.get(&app.alpha, "/api/v1/teams/alpha/streams").await;
    assert_eq!(list, json!([]));
    let (s, _) = app.get(&app.alpha, "/api/v1/teams/alpha/streams/plays").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Nothing is hard-deleted: the history, ending in a tombstone, is still there.
    let (_, history) = app.get(&app.alpha, &format!("/api/v1/objects/{object_id}/revisions")).await;
    let ops: Vec<&str> = history.as_array().unwrap().iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["create", "update", "delete"]);
    // The name is free again, and a new object starts a new history.
    let (s, body) =
        app.post(&app.alpha, "/api/v1/teams/alpha/streams", json!({"name": "plays", "spec": stream(1)})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(body["revision"]["version"], 1);

    // The database itself refuses to rewrite history.
    let tamper = sqlx::query("UPDATE revisions SET reason = 'rewritten'").execute(app.store.pool()).await;
    assert!(tamper.is_err(), "revisions must be immutable");
    let erase = sqlx::query("DELETE FROM revisions").execute(app.store.pool()).await;
    assert!(erase.is_err(), "revisions must not be deletable");

    // The audit log lists every revision, newest first, and filters by kind and author.
    let (_, audit) = app.get(&app.alpha, "/api/v1/revisions?kind=stream").await;
    assert_eq!(audit.as_array().unwrap().len(), 4);
    assert_eq!(audit[0]["op"], "create");
    let (_, by_token) = app.get(&app.alpha, "/api/v1/revisions?author=token:alice-bot").await;
    assert_eq!(by_token.as_array().unwrap().len(), 4);
    app.teardown().await;
}

async fn invalid_requests_change_nothing(db: Db) {
    let app = spawn_app(db).await;
    let before = app.revision_count().await;
    let cases = [
        (json!({"name": "Bad_Name", "spec": stream(3)}), "name"),
        (json!({"name": "ok", "spec": stream(0)}), "partitions"),
        (json!({"name": "ok", "spec": {"partitions": 1, "retention_hours": 99999}}), "retention_hours"),
        (json!({"name": "ok", "spec": {"partitions": "x", "retention_hours": 1}}), "spec.partitions"),
        (
            json!({"name": "ok", "spec": {"partitions": 1, "retention_hours": 1, "schema": {"type": "nonsense"}}}),
            "schema",
        ),
        (json!({"name": "ok", "spec": {"partitions": 1, "retention_hours": 1, "bogus": true}}), "spec.bogus"),
    ];
    for (body, field) in cases {
        let (s, err) = app.post(&app.alpha, "/api/v1/teams/alpha/streams", body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {err}");
        assert_eq!(err["error"]["code"], "invalid");
        assert_eq!(err["error"]["field"], field, "{err}");
        assert!(!err["error"]["message"].as_str().unwrap().is_empty());
    }
    let (s, err) = app.post(&app.alpha, "/api/v1/teams/alpha/streams", Value::String("not json".into())).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{err}");

    // A route must name an existing stream and sink, and a filter that compiles.
    let route = json!({"name": "r", "spec": {"stream": "nope", "sink": "none", "filter": "event.x == "}});
    let (s, err) = app.post(&app.alpha, "/api/v1/teams/alpha/routes", route).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> =
        err["error"]["details"].as_array().unwrap().iter().map(|d| d["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["stream", "sink", "filter"], "{err}");
    assert!(err["error"]["details"][2]["message"].as_str().unwrap().contains("line 1"), "{err}");

    // Duplicate names within a team are refused; the same name in another team is fine.
    assert_eq!(
        app.post(&app.alpha, "/api/v1/teams/alpha/streams", json!({"name": "s", "spec": stream(1)})).await.0,
        StatusCode::CREATED
    );
    let (s, err) = app.post(&app.alpha, "/api/v1/teams/alpha/streams", json!({"name": "s", "spec": stream(1)})).await;
    assert_eq!((s, err["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("name")));
    assert_eq!(
        app.post(&app.beta, "/api/v1/teams/beta/streams", json!({"name": "s", "spec": stream(1)})).await.0,
        StatusCode::CREATED
    );
    assert_eq!(app.revision_count().await, before + 2);

    // A stream used by a route cannot be deleted.
    let sink = json!({"name": "hook", "spec": {"kind": "http", "settings": {"url": "https://example.com/in"}}});
    assert_eq!(app.post(&app.alpha, "/api/v1/teams/alpha/sinks", sink).await.0, StatusCode::CREATED);
    let route = json!({"name": "r", "spec": {"stream": "s", "sink": "hook", "filter": "event.country == 'BR'"}});
    let (s, body) = app.post(&app.alpha, "/api/v1/teams/alpha/routes", route).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, err) = app.delete(&app.alpha, "/api/v1/teams/alpha/streams/s").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(err["error"]["message"].as_str().unwrap().contains("route r"), "{err}");

    // With a schema, a route may only name fields the schema declares.
    let schema = json!({"type": "object", "properties": {"country": {"type": "string"}, "user": {"type": "object", "properties": {"email": {"type": "string"}}}}});
    let typed = json!({"name": "typed", "spec": {"partitions": 1, "retention_hours": 1, "schema": schema}});
    assert_eq!(app.post(&app.alpha, "/api/v1/teams/alpha/streams", typed).await.0, StatusCode::CREATED);
    let route = json!({"name": "typo", "spec": {"stream": "typed", "sink": "hook", "filter": "event.contry == 'BR'",
        "projection": {"keep": ["country", "user.emial"]}}});
    let (s, err) = app.post(&app.alpha, "/api/v1/teams/alpha/routes", route).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> =
        err["error"]["details"].as_array().unwrap().iter().map(|d| d["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["projection.keep[1]", "filter"], "{err}");
    assert!(err["error"]["details"][1]["message"].as_str().unwrap().contains("contry"), "{err}");
    let fixed = json!({"name": "typo", "spec": {"stream": "typed", "sink": "hook", "filter": "event.country == 'BR'",
        "projection": {"keep": ["country", "user.email"]}}});
    assert_eq!(app.post(&app.alpha, "/api/v1/teams/alpha/routes", fixed).await.0, StatusCode::CREATED);
    app.teardown().await;
}

async fn teams_are_isolated_and_roles_enforced(db: Db) {
    let app = spawn_app(db).await;
    let (_, created) =
        app.post(&app.alpha, "/api/v1/teams/alpha/streams", json!({"name": "secret-plays", "spec": stream(1)})).await;
    let object_id = created["revision"]["object_id"].as_str().unwrap().to_owned();
    // Team beta can neither read nor change alpha's objects, by name or by guessed id.
    for path in [
        "/api/v1/teams/alpha/streams".to_owned(),
        "/api/v1/teams/alpha/streams/secret-plays".to_owned(),
        "/api/v1/teams/alpha/streams/secret-plays/revisions".to_owned(),
        format!("/api/v1/objects/{object_id}/revisions"),
        format!("/api/v1/objects/{object_id}/diff?from=1&to=1"),
    ] {
        let (s, body) = app.get(&app.beta, &path).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (s, _) = app.put(&app.beta, "/api/v1/teams/alpha/streams/secret-plays", json!({"spec": stream(2)})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app.delete(&app.beta, "/api/v1/teams/alpha/streams/secret-plays").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app.post(&app.beta, "/api/v1/teams/alpha/streams", json!({"name": "x", "spec": stream(1)})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, audit) = app.get(&app.beta, "/api/v1/revisions").await;
    assert!(audit.as_array().unwrap().iter().all(|r| r["team"] != "alpha"), "{audit}");
    let (_, teams) = app.get(&app.beta, "/api/v1/teams").await;
    assert_eq!(teams.as_array().unwrap().len(), 1);

    // A viewer reads but cannot change.
    let (s, _) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/streams/secret-plays").await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) =
        app.put(&app.alpha_viewer, "/api/v1/teams/alpha/streams/secret-plays", json!({"spec": stream(2)})).await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
    let (s, _) = app.delete(&app.alpha_viewer, "/api/v1/teams/alpha/streams/secret-plays").await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // No or bad token: 401 in the documented shape.
    let (s, body) = app.get("ks_not-a-token", "/api/v1/teams").await;
    assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthenticated")));
    app.teardown().await;
}

async fn sink_secrets_are_never_echoed(db: Db) {
    let app = spawn_app(db).await;
    let secret = "postgres://writer:hunter2-very-secret@db/plays";
    let sink = json!({"name": "warehouse", "spec": {"kind": "postgres", "settings": {"table": "plays"}, "secrets": {"url": secret}}});
    let (s, body) = app.post(&app.alpha, "/api/v1/teams/alpha/sinks", sink).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let object_id = body["revision"]["object_id"].as_str().unwrap().to_owned();
    // Rotating the description only: the secret stays, unchanged.
    let update = json!({"spec": {"kind": "postgres", "description": "dwh", "settings": {"table": "plays"}}});
    assert_eq!(app.put(&app.alpha, "/api/v1/teams/alpha/sinks/warehouse", update).await.0, StatusCode::OK);
    let rotate = json!({"spec": {"kind": "postgres", "description": "dwh", "settings": {"table": "plays"}, "secrets": {"url": "postgres://writer:new@db/plays"}}});
    assert_eq!(app.put(&app.alpha, "/api/v1/teams/alpha/sinks/warehouse", rotate).await.0, StatusCode::OK);
    let mut seen = String::new();
    for path in [
        "/api/v1/teams/alpha/sinks/warehouse".to_owned(),
        "/api/v1/teams/alpha/sinks".to_owned(),
        format!("/api/v1/objects/{object_id}/revisions"),
        format!("/api/v1/objects/{object_id}/diff?from=1&to=3"),
        "/api/v1/revisions".to_owned(),
    ] {
        let (_, body) = app.get(&app.alpha, &path).await;
        seen.push_str(&body.to_string());
    }
    assert!(!seen.contains("hunter2") && !seen.contains("writer:new"), "a secret leaked: {seen}");
    let (_, obj) = app.get(&app.alpha, "/api/v1/teams/alpha/sinks/warehouse").await;
    assert_eq!(obj["spec"]["secrets"]["url"]["set_in_version"], 3);
    let secrets = app.store.sink_secrets(&object_id).await.unwrap();
    assert_eq!(secrets, [("url".to_owned(), "postgres://writer:new@db/plays".to_owned())]);
    app.teardown().await;
}

async fn console_sign_in_sessions_and_csrf(db: Db) {
    let app = spawn_app(db).await;
    let origin = Some(app.base.as_str());
    // Without a session, whoami is empty and pages redirect to the sign-in page.
    let page = app.http.get(format!("{}/streams", app.base)).header("accept", "text/html").send().await.unwrap();
    assert_eq!(page.status(), StatusCode::FOUND);
    assert_eq!(page.headers()["location"], "/login");

    // A cross-site form post is refused before it reaches the server function.
    let forged =
        app.form("/api/login", &[("username", "alice"), ("password", PASSWORD)], Some("http://evil.example")).await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let no_origin = app.form("/api/login", &[("username", "alice"), ("password", PASSWORD)], None).await;
    assert_eq!(no_origin.status(), StatusCode::FORBIDDEN);

    // Wrong password and unknown user fail identically.
    let wrong = app.form("/api/login", &[("username", "alice"), ("password", "nope-nope-nope")], origin).await;
    let unknown = app.form("/api/login", &[("username", "mallory"), ("password", "nope-nope-nope")], origin).await;
    assert_eq!(wrong.status(), unknown.status());
    assert!(!wrong.status().is_success());
    let (a, b) = (wrong.text().await.unwrap(), unknown.text().await.unwrap());
    assert_eq!(a, b);
    assert!(a.contains("Wrong username or password"), "{a}");

    let ok = app.form("/api/login", &[("username", "alice"), ("password", PASSWORD)], origin).await;
    assert!(ok.status().is_success() || ok.status().is_redirection(), "{:?}", ok.status());
    let cookie = ok.headers().get("set-cookie").expect("session cookie").to_str().unwrap().to_owned();
    assert!(cookie.starts_with("keystone_session="), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");
    let me = app.form("/api/whoami", &[], origin).await.text().await.unwrap();
    assert!(me.contains("\"alice\""), "{me}");

    // A form post with the session creates a stream through the same goal-state service.
    let created = app
        .form(
            "/api/save_stream",
            &[
                ("team", "alpha"),
                ("name", "from-console"),
                ("version", ""),
                ("description", ""),
                ("partitions", "2"),
                ("retention_hours", "12"),
                ("retention_bytes", ""),
                ("key_field", ""),
                ("schema", ""),
                ("reason", "console"),
            ],
            origin,
        )
        .await;
    assert!(created.status().is_success() || created.status().is_redirection(), "{:?}", created.text().await);
    let (_, obj) = app.get(&app.alpha, "/api/v1/teams/alpha/streams/from-console").await;
    assert_eq!(obj["updated_by"], "alice");
    let bad = app
        .form(
            "/api/save_stream",
            &[
                ("team", "alpha"),
                ("name", "bad"),
                ("version", ""),
                ("description", ""),
                ("partitions", "lots"),
                ("retention_hours", "12"),
                ("retention_bytes", ""),
                ("key_field", ""),
                ("schema", "{"),
                ("reason", ""),
            ],
            origin,
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(bad.contains("partitions") && bad.contains("schema"), "{bad}");

    // Sign-out ends the session on the server: the old cookie no longer works.
    let stolen = cookie.split(';').next().unwrap().to_owned();
    app.form("/api/logout", &[], origin).await;
    let replay = reqwest::Client::new()
        .post(format!("{}/api/whoami", app.base))
        .header("cookie", &stolen)
        .header("origin", &app.base)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(replay, "null");

    // Repeated failures for one account are throttled, even with the right password after.
    for _ in 0..5 {
        app.form("/api/login", &[("username", "bob"), ("password", "wrong-password")], origin).await;
    }
    let throttled =
        app.form("/api/login", &[("username", "bob"), ("password", PASSWORD)], origin).await.text().await.unwrap();
    assert!(throttled.contains("Too many failed sign-ins"), "{throttled}");
    app.teardown().await;
}

async fn sessions_end_at_the_absolute_timeout(db: Db) {
    // An absolute lifetime of zero hours: the session is over as soon as it is used again.
    let app = spawn_app_with(db, |s| s.session_absolute_hours = 0).await;
    let origin = Some(app.base.as_str());
    let ok = app.form("/api/login", &[("username", "alice"), ("password", PASSWORD)], origin).await;
    assert!(ok.headers().get("set-cookie").is_some());
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let me = app.form("/api/whoami", &[], origin).await.text().await.unwrap();
    assert_eq!(me, "null");
    app.teardown().await;
}

/// A console session of `user` (its own cookie jar), as a browser without JavaScript has.
async fn console_session(app: &TestApp, user: &str) -> reqwest::Client {
    let c = reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = c
        .post(format!("{}/api/login", app.base))
        .header("origin", &app.base)
        .form(&[("username", user), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success() || r.status().is_redirection(), "{user} signs in: {:?}", r.status());
    c
}

/// Posts a console form in `session`; the status and the body (a server function's error is
/// the body's JSON).
async fn console_post(
    app: &TestApp,
    session: &reqwest::Client,
    path: &str,
    fields: &[(&str, &str)],
) -> (StatusCode, String) {
    let r = session.post(format!("{}{path}", app.base)).header("origin", &app.base).form(fields).send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

/// An admin's decision on a change request, as the console posts it.
async fn decide(
    app: &TestApp,
    session: &reqwest::Client,
    id: &str,
    decision: &str,
    comment: &str,
) -> (StatusCode, String) {
    console_post(app, session, "/api/decide_request", &[("id", id), ("decision", decision), ("comment", comment)]).await
}

async fn approvals_hold_back_changes_until_another_admin_decides(db: Db) {
    let app = spawn_app(db).await;
    upsert_user(&app.store, "root", PASSWORD, Role::Admin, &[], false).await.unwrap();
    let admin = console_session(&app, "admin").await;
    let root = console_session(&app, "root").await;
    let alice = console_session(&app, "alice").await;

    // Declared before the policy: under it, new streams and production sinks wait too.
    for (name, partitions) in [("plays", 3), ("old", 1)] {
        let (s, body) = app
            .post(&app.alpha, "/api/v1/teams/alpha/streams", json!({"name": name, "spec": stream(partitions)}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
    }
    let sink = json!({"kind": "file", "settings": {"path": "warehouse"}, "tags": ["production"]});
    let (s, body) = app.post(&app.alpha, "/api/v1/teams/alpha/sinks", json!({"name": "warehouse", "spec": sink})).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    // Without a policy nothing waits; only admins may write one.
    let (_, policy) = app.get(&app.alpha, "/api/v1/policies/approvals").await;
    assert_eq!(policy["version"], 0);
    let fields = [
        ("version", "0"),
        ("stream_deletes", "yes"),
        ("capacity_increases", "yes"),
        ("routes_to_sinks_tagged", "production"),
        ("objects_tagged", "critical"),
        ("reason", "four eyes on production"),
    ];
    let (s, body) = console_post(&app, &alice, "/api/save_policy", &fields).await;
    assert!(!s.is_success() && !s.is_redirection() && body.contains("Forbidden"), "{s} {body}");
    let (s, body) = console_post(&app, &admin, "/api/save_policy", &fields).await;
    assert!(s.is_success() || s.is_redirection(), "{s} {body}");
    let (_, policy) = app.get(&app.alpha, "/api/v1/policies/approvals").await;
    assert_eq!((policy["version"].as_i64(), policy["policy"]["stream_deletes"].as_bool()), (Some(1), Some(true)));

    // An editor's route to a production sink becomes a change request: 202, nothing applied.
    let revisions = app.revision_count().await;
    let route = json!({"stream": "plays", "sink": "warehouse", "filter": "event.n > 1"});
    let (s, body) = app
        .post(
            &app.alpha,
            "/api/v1/teams/alpha/routes",
            json!({"name": "to-warehouse", "spec": route, "reason": "ship it"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let route_request = body["change_request"]["id"].as_i64().unwrap();
    assert_eq!(body["change_request"]["state"], "pending");
    assert_eq!(body["change_request"]["needs"], json!(["a route to a sink tagged \"production\""]));
    assert!(body["change_request"]["changes"].as_array().unwrap().iter().any(|c| c["path"] == "filter"), "{body}");
    assert_eq!(app.get(&app.alpha, "/api/v1/teams/alpha/routes/to-warehouse").await.0, StatusCode::NOT_FOUND);
    assert_eq!(app.revision_count().await, revisions, "a held-back change writes no revision");
    let (_, mine) = app.get(&app.alpha, "/api/v1/change-requests?mine=true&state=pending").await;
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");
    // Other teams do not see alpha's requests.
    let (_, theirs) = app.get(&app.beta, "/api/v1/change-requests").await;
    assert_eq!(theirs, json!([]));
    assert_eq!(app.get(&app.beta, &format!("/api/v1/change-requests/{route_request}")).await.0, StatusCode::NOT_FOUND);

    // An editor cannot decide, and an admin cannot decide a request of their own.
    let id = route_request.to_string();
    let (s, body) = decide(&app, &alice, &id, "approve", "").await;
    assert!(!s.is_success() && body.contains("only admins"), "{s} {body}");
    let raise = [
        ("team", "alpha"),
        ("name", "plays"),
        ("version", "1"),
        ("description", "plays"),
        ("partitions", "6"),
        ("retention_hours", "24"),
        ("retention_bytes", ""),
        ("key_field", ""),
        ("schema", ""),
        ("reason", "more partitions"),
    ];
    let (_, body) = console_post(&app, &admin, "/api/save_stream", &raise).await;
    assert!(body.contains("PendingApproval") && body.contains("raising partitions from 3 to 6"), "{body}");
    let (_, pending) = app.get(&app.alpha, "/api/v1/change-requests?state=pending").await;
    let raise_request = pending[0]["id"].as_i64().unwrap();
    assert_eq!(pending[0]["requester"], "admin");
    let raise_id = raise_request.to_string();
    let (s, body) = decide(&app, &admin, &raise_id, "approve", "").await;
    assert!(!s.is_success() && body.contains("another admin must decide it"), "{s} {body}");
    // The navigation counts what waits for each admin: not their own requests.
    let count = |c: &reqwest::Client| {
        let c = c.clone();
        let url = format!("{}/api/whoami", app.base);
        let origin = app.base.clone();
        async move {
            let me: Value = c.post(url).header("origin", origin).send().await.unwrap().json().await.unwrap();
            me["pending_approvals"].as_i64().unwrap()
        }
    };
    assert_eq!((count(&admin).await, count(&root).await), (1, 2));

    // Another admin approves: the change is applied as the requester's revision.
    let (s, body) = decide(&app, &root, &raise_id, "approve", "").await;
    assert!(s.is_success() || s.is_redirection(), "{s} {body}");
    let (_, plays) = app.get(&app.alpha, "/api/v1/teams/alpha/streams/plays").await;
    assert_eq!((plays["version"].as_i64(), plays["spec"]["partitions"].as_i64()), (Some(2), Some(6)));
    let (s, body) = decide(&app, &admin, &id, "approve", "looks right").await;
    assert!(s.is_success() || s.is_redirection(), "{s} {body}");
    let (s, route_now) = app.get(&app.alpha, "/api/v1/teams/alpha/routes/to-warehouse").await;
    assert_eq!(s, StatusCode::OK, "{route_now}");
    let (_, request) = app.get(&app.alpha, &format!("/api/v1/change-requests/{route_request}")).await;
    assert_eq!((request["state"].as_str(), request["decided_by"].as_str()), (Some("approved"), Some("admin")));
    assert_eq!(request["comment"], "looks right");
    let (_, history) = app.get(&app.alpha, "/api/v1/teams/alpha/routes/to-warehouse/revisions").await;
    assert_eq!(history[0]["author"], "token:alice-bot", "the requester authors the revision");
    let reason = history[0]["reason"].as_str().unwrap();
    assert!(reason.contains("ship it") && reason.contains(&format!("#{route_request} approved by admin")), "{reason}");
    // A decided request cannot be decided again.
    let (s, body) = decide(&app, &root, &id, "approve", "looks right").await;
    assert!(!s.is_success() && body.contains("already approved"), "{s} {body}");

    // Operations on that route wait too: an override of its configuration and a backfill. An
    // approved override applies as the requester's and is deployed; one asked of an override
    // that moved on since is stale.
    let config = "/api/v1/teams/alpha/routes/to-warehouse/config";
    let batch_size = || async {
        let (_, body) = app.get(&app.alpha, config).await;
        let e = body.as_array().unwrap().iter().find(|e| e["key"] == "batch_size").unwrap().clone();
        (e["value"].as_str().unwrap().to_owned(), e["source"]["layer"].as_str().unwrap().to_owned())
    };
    let declared = batch_size().await;
    let mut overrides = Vec::new();
    for value in ["7", "9"] {
        let (s, body) =
            app.put(&app.alpha, &format!("{config}/batch_size"), json!({"value": value, "reason": "files"})).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        let r = &body["change_request"];
        assert_eq!((r["action"].as_str(), r["state"].as_str()), (Some("override"), Some("pending")), "{body}");
        assert_eq!(r["needs"], json!(["a route to a sink tagged \"production\""]), "{body}");
        assert_eq!(
            (r["changes"][0]["path"].as_str(), r["changes"][0]["after"].as_str()),
            (Some("config.batch_size"), Some(value))
        );
        overrides.push(r["id"].as_i64().unwrap().to_string());
    }
    assert_eq!(batch_size().await, declared, "nothing applied while pending");
    let (s, body) = decide(&app, &root, &overrides[0], "approve", "").await;
    assert!(s.is_success() || s.is_redirection(), "{s} {body}");
    assert_eq!(batch_size().await, ("7".to_owned(), "override".to_owned()));
    let (_, deployments) = app.get(&app.alpha, "/api/v1/teams/alpha/routes/to-warehouse/deployments").await;
    assert_eq!(deployments[0]["config"], json!({"key": "batch_size", "before": null, "after": "7"}), "{deployments}");
    let (s, body) = decide(&app, &root, &overrides[1], "approve", "").await;
    assert!(!s.is_success() && body.contains("is stale"), "{s} {body}");
    let (_, request) = app.get(&app.alpha, &format!("/api/v1/change-requests/{}", overrides[1])).await;
    assert_eq!(request["state"], "stale");
    assert_eq!(batch_size().await.0, "7");
    let backfills = || async {
        let (_, body) = app.get(&app.alpha, "/api/v1/teams/alpha/routes/to-warehouse/backfills").await;
        body.as_array().unwrap().clone()
    };
    let (s, body) = app
        .post(
            &app.alpha,
            "/api/v1/teams/alpha/routes/to-warehouse/backfill",
            json!({"from": "stream", "stream": "old"}),
        )
        .await;
    assert_eq!((s, body["change_request"]["action"].as_str()), (StatusCode::ACCEPTED, Some("backfill")), "{body}");
    assert!(backfills().await.is_empty(), "nothing started while pending");
    let backfill_id = body["change_request"]["id"].as_i64().unwrap().to_string();
    let (s, body) = decide(&app, &root, &backfill_id, "approve", "").await;
    assert!(s.is_success() || s.is_redirection(), "{s} {body}");
    let started = backfills().await;
    assert_eq!((started.len(), started[0]["started_by"].as_str()), (1, Some("token:alice-bot")), "{started:?}");

    // A request goes stale when its object changes first; pausing never waits for approval.
    let filtered = json!({"stream": "plays", "sink": "warehouse", "filter": "event.n > 2"});
    let (s, body) = app.put(&app.alpha, "/api/v1/teams/alpha/routes/to-warehouse", json!({"spec": filtered})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let stale_id = body["change_request"]["id"].as_i64().unwrap().to_string();
    let (s, body) = app
        .post(
            &app.alpha,
            "/api/v1/teams/alpha/routes/to-warehouse/state",
            json!({"state": "paused", "reason": "incident"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (_, request) = app.get(&app.alpha, &format!("/api/v1/change-requests/{stale_id}")).await;
    assert_eq!(request["state"], "stale");
    let (s, body) = decide(&app, &admin, &stale_id, "approve", "").await;
    assert!(!s.is_success() && body.contains("already stale"), "{s} {body}");
    let (_, route_now) = app.get(&app.alpha, "/api/v1/teams/alpha/routes/to-warehouse").await;
    assert_eq!(route_now["spec"]["filter"], "event.n > 1", "the stale change was not applied");

    // Deleting a stream waits too; a rejection needs a comment and changes nothing.
    let (s, body) = app.delete(&app.alpha, "/api/v1/teams/alpha/streams/old?reason=unused").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let delete_id = body["change_request"]["id"].as_i64().unwrap().to_string();
    let (s, body) = decide(&app, &admin, &delete_id, "reject", " ").await;
    assert!(!s.is_success() && body.contains("say why"), "{s} {body}");
    let (s, body) = decide(&app, &admin, &delete_id, "reject", "still read by reports").await;
    assert!(s.is_success() || s.is_redirection(), "{s} {body}");
    assert_eq!(app.get(&app.alpha, "/api/v1/teams/alpha/streams/old").await.0, StatusCode::OK);
    let (_, request) = app.get(&app.alpha, &format!("/api/v1/change-requests/{delete_id}")).await;
    assert_eq!(
        (request["state"].as_str(), request["comment"].as_str()),
        (Some("rejected"), Some("still read by reports"))
    );

    // Every step is in the audit log.
    let ops = app.store.operations(&keystone_control::store::Scope::All, None, 100).await.unwrap();
    let steps: Vec<&str> = ops.iter().filter(|o| o.action == "change request").map(|o| o.detail.as_str()).collect();
    for needle in ["submitted", "approved", "stale", "rejected"] {
        assert!(steps.iter().any(|d| d.contains(needle)), "no {needle} step in {steps:?}");
    }
    app.teardown().await;
}

/// The reconciler lease: one holder at a time, a renewal keeps the fencing token, a takeover
/// after expiry raises it and fences the old holder's writes, a release hands over at once.
async fn leases_allow_one_holder_and_fence_a_stale_one(db: Db) {
    use keystone_control::store::lease::Lease;
    use keystone_control::store::StoreError;
    let app = spawn_app(db).await;
    let store = &app.store;
    let take = |holder: &'static str| async move { store.acquire_lease("test-role", holder, 60_000).await.unwrap() };
    let a: Lease = take("a").await.expect("a free lease is taken");
    assert_eq!(take("b").await, None, "held by a");
    assert_eq!(take("a").await.unwrap().token, a.token, "a renewal keeps the token");
    // a's lease runs out (a paused process): b takes over with a higher token.
    sqlx::query("UPDATE leases SET expires_at = 1 WHERE name = 'test-role'").execute(store.pool()).await.unwrap();
    let b = take("b").await.expect("an expired lease is taken");
    assert_eq!(b.token, a.token + 1);
    let mut tx = store.write().await.unwrap();
    assert!(matches!(tx.check_lease(&a).await, Err(StoreError::Fenced(_))), "a's writes are refused");
    tx.check_lease(&b).await.unwrap();
    drop(tx);
    let refused = store.commit_checkpoints("some-route", &[(0, 5)], Some(&a)).await;
    assert!(matches!(refused, Err(StoreError::Fenced(_))), "{refused:?}");
    assert!(store.checkpoints("some-route").await.unwrap().is_empty(), "nothing written under a stale lease");
    assert_eq!(take("a").await, None, "a cannot take it back while b holds it");
    store.release_lease(&b).await.unwrap();
    assert_eq!(take("a").await.expect("a released lease is taken").token, b.token + 1);
    // The server's own reconciler holds its lease.
    assert!(store.lease("reconciler").await.unwrap().is_some_and(|l| l.expires_at > 0));
    app.teardown().await;
}

/// The message of an API error body's error for `field` (the test fails without one).
fn field_error<'a>(body: &'a Value, field: &str) -> &'a str {
    body["error"]["details"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["field"] == field))
        .and_then(|f| f["message"].as_str())
        .unwrap_or_else(|| panic!("no error for {field}: {body}"))
}

#[path = "api/data_safety.rs"]
mod data_safety;
#[path = "api/listings.rs"]
mod listings;
#[path = "api/openapi.rs"]
mod openapi;
use openapi::openapi_document_is_served;
#[path = "api/security.rs"]
mod security;

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::Db::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { super::$name(super::Db::Postgres).await })*
        }
    };
}

on_both_backends!(
    crud_writes_revisions_and_diffs,
    invalid_requests_change_nothing,
    teams_are_isolated_and_roles_enforced,
    sink_secrets_are_never_echoed,
    console_sign_in_sessions_and_csrf,
    sessions_end_at_the_absolute_timeout,
    openapi_document_is_served,
    approvals_hold_back_changes_until_another_admin_decides,
    leases_allow_one_holder_and_fence_a_stale_one,
);

// After the macro: the processor tests run on both backends through it.
#[path = "api/processors.rs"]
mod processors;
#[path = "api/sources.rs"]
mod sources;

/// Every event in the NDJSON and Parquet files under a folder.
fn events_under(dir: &std::path::Path) -> Vec<Value> {
    fn walk(dir: &std::path::Path, out: &mut Vec<Value>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "ndjson") {
                let text = std::fs::read_to_string(&p).unwrap();
                out.extend(text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()));
            } else if p.extension().is_some_and(|x| x == "parquet") {
                let events = keystone_engine::sinks::parquet::decode(std::fs::read(&p).unwrap().into()).unwrap();
                out.extend(events.iter().map(|e| serde_json::to_value(e).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

mod ingest {
    use super::*;

    async fn producer_token(app: &TestApp, stream: &str) -> String {
        let (s, body) =
            app.post(&app.alpha, &format!("/api/v1/producer-tokens/alpha/{stream}"), json!({"name": "web"})).await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    pub(super) async fn send(
        app: &TestApp,
        token: &str,
        stream: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let resp = app
            .http
            .post(format!("{}/ingest/{stream}", app.base))
            .bearer_auth(token)
            .header("content-type", content_type)
            .header("x-event-source", "test")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let retry_after = resp.headers().get("retry-after").is_some();
        let mut v: Value = resp.json().await.unwrap_or(Value::Null);
        if retry_after {
            v["retry_after"] = json!(true);
        }
        (status, v)
    }

    async fn all_events(app: &TestApp, stream: &str, partitions: u32) -> Vec<Value> {
        let mut out = Vec::new();
        for p in 0..partitions {
            let (s, body) =
                app.get(&app.alpha_viewer, &format!("/api/v1/events/alpha/{stream}?partition={p}&limit=1000")).await;
            assert_eq!(s, StatusCode::OK, "{body}");
            out.extend(body.as_array().unwrap().iter().cloned());
        }
        out
    }

    #[tokio::test]
    async fn events_are_validated_enveloped_keyed_and_stored() {
        let app = spawn_app(Db::Sqlite).await;
        let schema = json!({"type": "object", "required": ["user"], "properties": {"user": {"type": "string"}, "bitrate": {"type": "integer"}}});
        let spec = json!({"partitions": 3, "retention_hours": 24, "key_field": "user", "schema": schema});
        assert_eq!(
            app.post(&app.alpha, "/api/v1/teams/alpha/streams", json!({"name": "plays", "spec": spec})).await.0,
            StatusCode::CREATED
        );
        let token = producer_token(&app, "plays").await;
        assert!(token.starts_with("kp_"));

        // One object, an array, NDJSON.
        let (s, body) = send(&app, &token, "plays", "application/json", r#"{"user": "u1", "bitrate": 3000}"#).await;
        assert_eq!((s, body["accepted"].as_u64()), (StatusCode::OK, Some(1)), "{body}");
        let (s, body) = send(&app, &token, "plays", "application/json", r#"[{"user": "u1"}, {"user": "u2"}]"#).await;
        assert_eq!((s, body["accepted"].as_u64()), (StatusCode::OK, Some(2)), "{body}");
        let (s, body) =
            send(&app, &token, "plays", "application/x-ndjson", "{\"user\": \"u3\"}\n{\"user\": \"u1\"}\n").await;
        assert_eq!((s, body["accepted"].as_u64()), (StatusCode::OK, Some(2)), "{body}");

        let events = all_events(&app, "plays", 3).await;
        assert_eq!(events.len(), 5);
        // The same key always lands in the same partition.
        let u1: std::collections::HashSet<u64> =
            events.iter().filter(|e| e["event"]["key"] == "u1").map(|e| e["partition"].as_u64().unwrap()).collect();
        assert_eq!(u1.len(), 1);
        let e = &events.iter().find(|e| e["event"]["payload"]["bitrate"] == 3000).unwrap()["event"];
        assert_eq!(e["stream"], "alpha/plays");
        assert_eq!(e["headers"]["source"], "test");
        assert!(uuid::Uuid::parse_str(e["id"].as_str().unwrap()).is_ok());

        // A batch with bad events is refused whole, each bad event named by index.
        let bad =
            r#"[{"user": "ok"}, {"bitrate": 1}, 42, {"user": "big", "pad": "PAD"}]"#.replace("PAD", &"x".repeat(3000));
        let (s, body) = send(&app, &token, "plays", "application/json", bad).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        let idx: Vec<u64> = body["rejected"].as_array().unwrap().iter().map(|r| r["index"].as_u64().unwrap()).collect();
        assert_eq!(idx, [1, 2, 3], "{body}");
        assert!(body["rejected"][0]["reason"].as_str().unwrap().contains("schema"));
        let kinds: Vec<&str> =
            body["rejected"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["schema", "not_object", "too_large"]);
        let (s, body) = send(&app, &token, "plays", "application/json", "{not json").await;
        assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid")));
        assert_eq!(all_events(&app, "plays", 3).await.len(), 5, "nothing of a refused batch is stored");
        let (s, stats) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/streams/plays/ingest").await;
        assert_eq!(s, StatusCode::OK, "{stats}");
        assert_eq!((stats["counted"]["accepted"].as_u64(), stats["counted"]["rejected"].as_u64()), (Some(5), Some(3)));
        assert_eq!(stats["counted"]["rejected_by_kind"], json!({"schema": 1, "not_object": 1, "too_large": 1}));
        assert_eq!(stats["counted"]["requests"], 3);
        assert!(stats["counted"]["events_per_second"].as_f64().unwrap() > 0.0);
        let in_log: u64 = stats["log_end_offsets"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).sum();
        assert_eq!(in_log, 5);

        // Too large a body: 413 in the JSON error shape.
        let huge = format!("[{}]", vec![r#"{"user":"u"}"#; 8000].join(","));
        let (s, body) = send(&app, &token, "plays", "application/json", huge).await;
        assert_eq!((s, body["error"]["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")), "{body}");

        // Wrong or missing token, or a token for another stream.
        let (s, _) = send(&app, "kp_nope", "plays", "application/json", r#"{"user": "u"}"#).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = send(&app, &app.alpha, "plays", "application/json", r#"{"user": "u"}"#).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "an API token is not a producer token");
        assert_eq!(
            app.post(&app.alpha, "/api/v1/teams/alpha/streams", json!({"name": "other", "spec": stream(1)})).await.0,
            StatusCode::CREATED
        );
        let (s, _) = send(&app, &token, "other", "application/json", r#"{"user": "u"}"#).await;
        assert_eq!(s, StatusCode::FORBIDDEN);

        // Viewers cannot mint producer tokens; other teams cannot see the stream at all.
        let (s, _) = app.post(&app.alpha_viewer, "/api/v1/producer-tokens/alpha/plays", json!({"name": "x"})).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _) = app.get(&app.beta, "/api/v1/events/alpha/plays").await;
        assert_eq!(s, StatusCode::NOT_FOUND);

        // A revoked token stops working at once.
        let (_, list) = app.get(&app.alpha, "/api/v1/producer-tokens/alpha/plays").await;
        let id = list[0]["id"].as_str().unwrap().to_owned();
        assert!(!list.to_string().contains(&token));
        assert_eq!(
            app.delete(&app.alpha, &format!("/api/v1/producer-tokens/alpha/plays/{id}")).await.0,
            StatusCode::NO_CONTENT
        );
        let (s, _) = send(&app, &token, "plays", "application/json", r#"{"user": "u"}"#).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);

        // Ingest keeps a token's lookup for a moment; a token revoked by another process (here
        // the test's own connection to the database) stops working within that moment.
        let token = producer_token(&app, "plays").await;
        let (s, _) = send(&app, &token, "plays", "application/json", r#"{"user": "u"}"#).await;
        assert_eq!(s, StatusCode::OK);
        let (_, list) = app.get(&app.alpha, "/api/v1/producer-tokens/alpha/plays").await;
        let id = list.as_array().unwrap().iter().find(|t| t["revoked"] == false).unwrap()["id"].as_str().unwrap();
        let root = Principal { user_id: "test".into(), display: "test".into(), role: Role::Admin, teams: vec![] };
        keystone_control::producers::revoke(&app.store, &root, "alpha", "plays", id).await.unwrap();
        let revoked = std::time::Instant::now();
        let bound = keystone_control::store::PRODUCER_TOKEN_TTL + std::time::Duration::from_millis(500);
        loop {
            let (s, _) = send(&app, &token, "plays", "application/json", r#"{"user": "u"}"#).await;
            if s == StatusCode::UNAUTHORIZED {
                break;
            }
            assert_eq!(s, StatusCode::OK);
            assert!(revoked.elapsed() < bound, "a revoked token still worked after {:?}", revoked.elapsed());
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        app.teardown().await;
    }

    #[tokio::test]
    async fn a_stream_over_its_quota_answers_429_and_stores_nothing() {
        let app = spawn_app(Db::Sqlite).await;
        let spec = json!({"partitions": 1, "retention_hours": 24, "max_events_per_second": 100});
        assert_eq!(
            app.post(&app.alpha, "/api/v1/teams/alpha/streams", json!({"name": "q", "spec": spec})).await.0,
            StatusCode::CREATED
        );
        let bad = json!({"name": "q2", "spec": {"partitions": 1, "retention_hours": 24, "max_events_per_second": 0}});
        let (s, body) = app.post(&app.alpha, "/api/v1/teams/alpha/streams", bad).await;
        assert_eq!(
            (s, body["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("max_events_per_second"))
        );
        let token = producer_token(&app, "q").await;
        let batch = |n: usize| format!("[{}]", vec![r#"{"a":1}"#; n].join(","));
        // Two seconds' worth passes as a burst, then the bucket is empty.
        let (s, _) = send(&app, &token, "q", "application/json", batch(190)).await;
        assert_eq!(s, StatusCode::OK);
        let (s, body) = send(&app, &token, "q", "application/json", batch(100)).await;
        assert_eq!(
            (s, body["error"]["code"].as_str()),
            (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")),
            "{body}"
        );
        assert_eq!(body["retry_after"], true);
        let (s, body) = send(&app, &token, "q", "application/json", batch(201)).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("at most 200 events per request"));
        assert_eq!(all_events(&app, "q", 1).await.len(), 190, "refused requests stored nothing");
        let (_, stats) = app.get(&app.alpha, "/api/v1/teams/alpha/streams/q/ingest").await;
        assert_eq!(
            (stats["counted"]["accepted"].as_u64(), stats["counted"]["throttled"].as_u64()),
            (Some(190), Some(100))
        );
        // The bucket refills at the declared rate.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let (s, _) = send(&app, &token, "q", "application/json", batch(100)).await;
        assert_eq!(s, StatusCode::OK);
        app.teardown().await;
    }

    #[tokio::test]
    async fn the_reconciler_creates_declared_topics_without_any_ingest() {
        let app = spawn_app(Db::Sqlite).await;
        let spec = json!({"partitions": 3, "retention_hours": 24});
        assert_eq!(
            app.post(&app.alpha, "/api/v1/teams/alpha/streams", json!({"name": "declared", "spec": spec})).await.0,
            StatusCode::CREATED
        );
        let last_partition = app._dir.0.join("log/alpha.declared/2");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while !last_partition.is_dir() {
            assert!(std::time::Instant::now() < deadline, "the reconciler did not create the topic");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(!app._dir.0.join("log/alpha.declared/3").exists());
        app.teardown().await;
    }

    #[tokio::test]
    async fn acknowledged_events_survive_a_restart() {
        let dir_app = spawn_app(Db::Sqlite).await;
        assert_eq!(
            dir_app
                .post(&dir_app.alpha, "/api/v1/teams/alpha/streams", json!({"name": "s", "spec": stream(2)}))
                .await
                .0,
            StatusCode::CREATED
        );
        let token = producer_token(&dir_app, "s").await;
        let batch = format!("[{}]", (0..50).map(|i| format!(r#"{{"n": {i}}}"#)).collect::<Vec<_>>().join(","));
        let (s, _) = send(&dir_app, &token, "s", "application/json", batch).await;
        assert_eq!(s, StatusCode::OK);
        // Reopen the same data directory with a fresh log: every acknowledged event is there.
        let log = keystone_engine::log::EmbeddedLog::open(dir_app._dir.0.join("log"), Default::default()).unwrap();
        let mut n = 0;
        for p in 0..2 {
            n += keystone_engine::log::Log::read(&log, "alpha.s", p, 0, 1000).await.unwrap().len();
        }
        assert_eq!(n, 50);
        dir_app.teardown().await;
    }
}

/// Route jobs end to end: declared over the API, fed through the ingest proxy, delivered by the
/// reconciler's jobs to real sinks.
mod delivery {
    use super::*;
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    /// A throwaway PostgreSQL database with one table, for a postgres sink to write to.
    pub(crate) struct SinkDatabase {
        name: String,
        pub(crate) url: String,
    }

    impl SinkDatabase {
        pub(crate) async fn with_table(create_table: &str) -> SinkDatabase {
            let name = format!("keystone_rows_{}", uuid::Uuid::new_v4().simple());
            let mut admin = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
            let base = pg_admin_url();
            let db = SinkDatabase { url: format!("{}/{name}", &base[..base.rfind('/').unwrap()]), name };
            sqlx::raw_sql(create_table).execute(&mut db.connect().await).await.unwrap();
            db
        }

        pub(crate) async fn connect(&self) -> sqlx::PgConnection {
            sqlx::PgConnection::connect(&self.url).await.unwrap()
        }

        pub(crate) async fn remove(self) {
            let mut admin = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
            let _ = sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name)).execute(&mut admin).await;
        }
    }

    pub(crate) async fn declare(app: &TestApp, kind: &str, name: &str, spec: Value) {
        let (s, body) =
            app.post(&app.alpha, &format!("/api/v1/teams/alpha/{kind}"), json!({"name": name, "spec": spec})).await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
    }

    /// Posts events as NDJSON, in requests under the test server's 64 KiB body limit.
    pub(crate) async fn ingest(app: &TestApp, token: &str, stream: &str, events: &[Value]) {
        for chunk in events.chunks(500) {
            ingest_once(app, token, stream, chunk).await;
        }
    }

    async fn ingest_once(app: &TestApp, token: &str, stream: &str, events: &[Value]) {
        post_events(&app.http, &app.base, token, stream, events).await
    }

    async fn post_events(http: &reqwest::Client, base: &str, token: &str, stream: &str, events: &[Value]) {
        let body: String = events.iter().map(|e| format!("{e}\n")).collect();
        let resp = http
            .post(format!("{base}/ingest/{stream}"))
            .bearer_auth(token)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{}", resp.text().await.unwrap());
    }

    /// A producer in the background: `plays` events of `range` in requests of 100, 50 ms apart,
    /// each acknowledged.
    fn producing(app: &TestApp, token: &str, range: std::ops::Range<u64>) -> tokio::task::JoinHandle<()> {
        let (base, http, token) = (app.base.clone(), app.http.clone(), token.to_owned());
        tokio::spawn(async move {
            for from in range.clone().step_by(100) {
                post_events(&http, &base, &token, "plays", &plays(from..(from + 100).min(range.end))).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    /// The distinct `n`s of the events delivered to a file sink's folder.
    pub(crate) fn delivered_ns(app: &TestApp, path: &str) -> std::collections::BTreeSet<u64> {
        sink_lines(app, path).iter().map(|l| l["event"]["n"].as_u64().unwrap()).collect()
    }

    pub(crate) async fn producer_token(app: &TestApp, stream: &str) -> String {
        let (s, body) =
            app.post(&app.alpha, &format!("/api/v1/producer-tokens/alpha/{stream}"), json!({"name": "web"})).await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// Every event a file sink of team alpha wrote under `sinks/alpha/<path>`, NDJSON and Parquet.
    pub(crate) fn sink_lines(app: &TestApp, path: &str) -> Vec<Value> {
        events_under(&app.settings.data_dir.join("sinks/alpha").join(path))
    }

    async fn job(app: &TestApp, route: &str) -> Value {
        let (s, body) = app.get(&app.alpha_viewer, &format!("/api/v1/teams/alpha/routes/{route}/job")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        body
    }

    pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn plays(range: std::ops::Range<u64>) -> Vec<Value> {
        range
            .map(|n| json!({"n": n, "country": if n % 4 == 0 { "BR" } else { "US" }, "user": {"email": format!("u{n}@x.io")}}))
            .collect()
    }

    /// The same server on a Kafka cluster (librdkafka's mock cluster, in this process) instead of
    /// the embedded log: ingest produces to the stream's topic, the route's job reads it and
    /// delivers every event once, and nothing is written to the embedded log's folder. (The mock
    /// broker has no CreateTopics API: the topics exist first and Keystone does not manage them.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_on_kafka_flow_from_ingest_to_the_sink() {
        let cluster = rdkafka::mocking::MockCluster::new(3).unwrap();
        cluster.create_topic("alpha.plays", 2, 3).unwrap();
        cluster.create_topic("_dlq.alpha.br", 1, 3).unwrap();
        let brokers = cluster.bootstrap_servers();
        let app = spawn_app_with(Db::Sqlite, |s| {
            s.kafka = Some(keystone::settings::KafkaSettings {
                brokers,
                manage_topics: false,
                replication_factor: 3,
                properties: Default::default(),
                session_timeout_ms: 6_000,
            })
        })
        .await;
        declare(&app, "streams", "plays", stream(2)).await;
        declare(&app, "sinks", "lake", json!({"kind": "file", "settings": {"path": "kafka"}})).await;
        let route =
            json!({"stream": "plays", "sink": "lake", "filter": "event.country == \"BR\"", "max_latency_ms": 20});
        declare(&app, "routes", "br", route).await;
        let token = producer_token(&app, "plays").await;
        ingest(&app, &token, "plays", &plays(0..400)).await;
        let ns = || {
            let mut ns: Vec<u64> =
                sink_lines(&app, "kafka").iter().map(|l| l["event"]["n"].as_u64().unwrap()).collect();
            ns.sort();
            ns
        };
        let want: Vec<u64> = (0..400).filter(|n| n % 4 == 0).collect();
        eventually("the BR events delivered from Kafka", || async { ns() == want }).await;
        let job = job(&app, "br").await;
        assert_eq!(job["job"]["phase"], "running", "{job}");
        assert!(!app.settings.data_dir.join("log").join("alpha.plays").exists(), "the embedded log stayed unused");
        app.teardown().await;
    }

    /// A `keystone worker` process of this build, on the test's database and Kafka cluster.
    struct WorkerProcess {
        _process: Spawned,
        name: String,
    }

    impl WorkerProcess {
        fn start(app: &TestApp, brokers: &str, name: &str, pool: Option<&str>) -> WorkerProcess {
            let mut args = vec!["worker"];
            args.extend(pool.iter().flat_map(|p| ["--pool", p]));
            WorkerProcess { _process: keystone_process(app, brokers, name, &args, &[]), name: name.to_owned() }
        }
    }

    /// A `keystone <args>` process of this build named `name`, on the test's database, data
    /// folder and Kafka cluster (topics made by the test), logging to `<name>.log` there.
    pub(crate) fn keystone_process(
        app: &TestApp,
        brokers: &str,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Spawned {
        let log = std::fs::File::create(app.settings.data_dir.join(format!("{name}.log"))).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_keystone"))
            .args(args)
            .env("KEYSTONE_DATABASE_URL", app.settings.database_url.as_deref().unwrap())
            .env("KEYSTONE_DATA_DIR", &app.settings.data_dir)
            .env("KEYSTONE_INSTANCE", name)
            .env("KEYSTONE_KAFKA__BROKERS", brokers)
            .env("KEYSTONE_KAFKA__MANAGE_TOPICS", "false")
            .env("KEYSTONE_KAFKA__SESSION_TIMEOUT_MS", "6000")
            .env("KEYSTONE_TELEMETRY_INTERVAL_MS", "200")
            .env("KEYSTONE_SECRETS_KEY", TEST_SECRETS_KEY)
            .env("RUST_LOG", "info,sqlx=warn,rdkafka=warn")
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Spawned(child)
    }

    /// A control-role server (no jobs of its own) on a fresh PostgreSQL database and the Kafka
    /// cluster at `brokers`, which workers then share; `manage_topics` on a broker that can create
    /// them (one broker: replication factor 1).
    async fn control_plane(brokers: &str, manage_topics: bool) -> TestApp {
        let kafka = keystone::settings::KafkaSettings {
            brokers: brokers.to_owned(),
            manage_topics,
            replication_factor: 1,
            properties: Default::default(),
            session_timeout_ms: 6_000,
        };
        spawn_app_with(Db::Postgres, |s| {
            s.kafka = Some(kafka);
            s.role = keystone::settings::ProcessRole::Control;
        })
        .await
    }

    /// A process a test started, killed (SIGKILL) and reaped when dropped.
    pub(crate) struct Spawned(std::process::Child);

    impl Drop for Spawned {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A loopback port free now, for a server a test starts.
    pub(crate) fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// Waits until something listens on `port` (a server a test started).
    pub(crate) async fn until_listening(port: u16, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "{what} did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Scale-out: the control plane (this server, role `control`: console, API, ingest, no jobs)
    /// and three `keystone worker` processes share PostgreSQL and a Kafka cluster (librdkafka's
    /// mock cluster, which the worker processes reach over TCP). The route's job over a
    /// 12-partition stream is spread over the workers by its consumer group. One worker is killed
    /// with SIGKILL under load: its partitions move to the other two after the session timeout,
    /// and every acknowledged event reaches the sink; repeats are bounded by what the dead worker
    /// had not committed. A fourth worker in pool `isolated` runs the route of that pool, alone,
    /// and no other worker runs it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_workers_share_a_route_job_and_one_killed_loses_nothing() {
        let cluster = rdkafka::mocking::MockCluster::new(3).unwrap();
        cluster.create_topic("alpha.plays", 12, 3).unwrap();
        cluster.create_topic("_dlq.alpha.all", 1, 3).unwrap();
        cluster.create_topic("_dlq.alpha.isolated", 1, 3).unwrap();
        let brokers = cluster.bootstrap_servers();
        let app = control_plane(&brokers, false).await;
        declare(&app, "streams", "plays", stream(12)).await;
        declare(&app, "sinks", "lake", json!({"kind": "file", "settings": {"path": "shared"}})).await;
        let route = json!({"stream": "plays", "sink": "lake", "max_latency_ms": 20, "batch_size": 50,
                           "config": {"job.checkpoint_interval_ms": "200"}});
        declare(&app, "routes", "all", route).await;
        declare(&app, "sinks", "apart", json!({"kind": "file", "settings": {"path": "apart"}})).await;
        let isolated = json!({"stream": "plays", "sink": "apart", "max_latency_ms": 20, "batch_size": 50,
                              "config": {"job.pool": "isolated"}});
        declare(&app, "routes", "isolated", isolated).await;
        let mut workers: Vec<WorkerProcess> =
            (1..=3).map(|i| WorkerProcess::start(&app, &brokers, &format!("worker-{i}"), None)).collect();
        let _apart = WorkerProcess::start(&app, &brokers, "worker-isolated", Some("isolated"));
        // Per live worker, the partitions of `route` it holds (as an admin sees them: by name).
        let app_ref = &app;
        let held = move |route: &'static str| async move {
            let body = serde_json::to_value(app_ref.store.workers().await.unwrap()).unwrap();
            body.as_array()
                .unwrap()
                .iter()
                .filter(|w| w["alive"] == true)
                .filter_map(|w| {
                    let job = w["jobs"].as_array().unwrap().iter().find(|j| j["route"] == route)?;
                    Some((w["name"].as_str().unwrap().to_owned(), job["partitions"].as_array().unwrap().len()))
                })
                .collect::<HashMap<String, usize>>()
        };
        eventually("12 partitions spread over three workers, the pool's route on its own worker", || async {
            let h = held("alpha/all").await;
            let spread = h.len() == 3 && h.values().all(|n| *n > 0) && h.values().sum::<usize>() == 12;
            spread && held("alpha/isolated").await == HashMap::from([("worker-isolated".to_owned(), 12)])
        })
        .await;
        // The control plane runs no job itself.
        assert!(app.store.workers().await.unwrap().iter().all(|w| w.name.starts_with("worker-")));

        let token = producer_token(&app, "plays").await;
        let distinct = || delivered_ns(&app, "shared");
        ingest(&app, &token, "plays", &plays(0..1000)).await;
        eventually("the first 1000 events", || async { distinct().len() == 1000 }).await;
        // The dashboards see the whole job: each worker stores its share of the job's samples and
        // the control plane adds the shares up (no rebalance yet, so nothing was delivered twice).
        eventually("the job's samples add up to what the three workers delivered", || async {
            let (_, samples) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/all/samples?window=15m").await;
            let samples = samples.as_array().unwrap();
            let delivered: u64 = samples.iter().map(|s| s["counts"]["delivered"].as_u64().unwrap()).sum();
            delivered == 1000 && samples.last().is_some_and(|s| s["lag"] == 0)
        })
        .await;
        let sharing: std::collections::BTreeSet<String> = app
            .store
            .sample_shares(0)
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.worker != "worker-isolated" && s.sample.counts.delivered > 0)
            .map(|s| s.worker)
            .collect();
        assert_eq!(sharing.len(), 3, "{sharing:?}");
        // The route's live panel too: the control plane runs no part of the job, and shows the
        // sum of the three workers' beats, each partition once.
        eventually("the job's live numbers add up to what the three workers delivered", || async {
            let (s, job) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/all/job").await;
            assert_eq!(s, StatusCode::OK, "{job}");
            let m = &job["metrics"];
            let partitions: Vec<u64> = m["partitions"].as_array().map_or(Vec::new(), |ps| {
                ps.iter().filter(|p| p["acked"] == p["end"]).map(|p| p["partition"].as_u64().unwrap()).collect()
            });
            m["delivered"] == 1000 && m["lag"] == 0 && partitions == (0..12).collect::<Vec<u64>>()
        })
        .await;
        // `/metrics` of the leading control process carries the job's series, summed too.
        eventually("the job's series on /metrics", || async {
            let req = app.http.get(format!("{}/metrics", app.base)).bearer_auth(SCRAPE_TOKEN);
            let text = req.send().await.unwrap().text().await.unwrap();
            text.lines().any(|l| {
                l.starts_with("keystone_job_events_delivered_total{")
                    && l.contains("route=\"all\"")
                    && l.ends_with(" 1000")
            })
        })
        .await;
        let (_, listed) = app.get(&app.alpha_viewer, "/api/v1/workers").await;
        assert!(
            !listed.to_string().contains("recent_errors"),
            "the open workers list carries no job numbers: {listed}"
        );
        assert!(!listed.to_string().contains("\"worker-"), "a viewer sees no process names: {listed}");

        // Under load, one worker is killed: no drain, no commit, no leaving the group.
        let producer = producing(&app, &token, 1000..3000);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed = workers.remove(1);
        let killed_name = killed.name.clone();
        drop(killed);
        producer.await.unwrap();
        eventually("the two survivors hold all 12 partitions", || async {
            let h = held("alpha/all").await;
            !h.contains_key(&killed_name) && h.values().sum::<usize>() == 12
        })
        .await;
        eventually("every acknowledged event delivered", || async { distinct().len() == 3000 }).await;
        assert_eq!(distinct(), (0..3000).collect(), "none lost");
        let apart = || delivered_ns(&app, "apart");
        eventually("the pool's route delivered everything too", || async { apart().len() == 3000 }).await;
        let delivered = sink_lines(&app, "shared").len();
        assert!(
            delivered - 3000 <= 1000,
            "repeats bounded by the dead worker's uncommitted work: {}",
            delivered - 3000
        );
        let silent = serde_json::to_value(app.store.workers().await.unwrap()).unwrap();
        let dead = silent.as_array().unwrap().iter().find(|w| w["name"] == killed_name.as_str()).cloned();
        assert!(dead.is_none_or(|w| w["alive"] == false), "the killed worker is shown silent: {silent}");

        // The stability gate judges a job only workers run by their beats: a new version whose
        // filter cannot evaluate any event is rolled back by the control plane.
        let broken = json!({"stream": "plays", "sink": "lake", "max_latency_ms": 20, "batch_size": 50,
                            "filter": "event.bitrate > 3000", "config": {"job.checkpoint_interval_ms": "200"}});
        let (s, body) =
            app.put(&app.alpha, "/api/v1/teams/alpha/routes/all", json!({"spec": broken, "reason": "bitrate"})).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let deployments = || async {
            let (_, body) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/all/deployments").await;
            body.as_array().unwrap().clone()
        };
        eventually("v2 deploying", || async { deployments().await.first().is_some_and(|d| d["to_version"] == 2) })
            .await;
        // Each state the job passes through is printed, for when this wait times out under load.
        let seen = std::sync::Mutex::new(String::new());
        eventually("v2's job running on the workers", || async {
            let (_, job) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/all/job").await;
            let state = format!(
                "version {} phase {} error {}",
                job["job"]["version"], job["job"]["phase"], job["job"]["error"]
            );
            let mut last = seen.lock().unwrap();
            if *last != state {
                eprintln!("route all: {state}");
                *last = state;
            }
            job["job"]["version"] == 2 && job["job"]["phase"] == "running"
        })
        .await;
        ingest(&app, &token, "plays", &plays(3000..3100)).await;
        eventually("v2 rolled back on the workers' counts", || async {
            deployments().await.iter().any(|d| d["to_version"] == 2 && d["state"] == "rolled_back")
        })
        .await;
        let ds = deployments().await;
        let detail = ds.iter().find(|d| d["state"] == "rolled_back").unwrap()["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains("events failed"), "{detail}");
        drop(workers);
        app.teardown().await;
    }

    /// A control plane on librdkafka's mock cluster with one route (`alpha/all`, a file sink),
    /// run by no worker yet: for tests that report its parts' phases themselves. The cluster
    /// must live as long as the app.
    async fn control_plane_with_a_route(
    ) -> (rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>, TestApp, String) {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("alpha.plays", 2, 1).unwrap();
        let app = control_plane(&cluster.bootstrap_servers(), false).await;
        declare(&app, "streams", "plays", stream(2)).await;
        declare(&app, "sinks", "lake", json!({"kind": "file", "settings": {"path": "parts"}})).await;
        declare(&app, "routes", "all", json!({"stream": "plays", "sink": "lake"})).await;
        let (_, route) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/all").await;
        let route_id = route["id"].as_str().unwrap().to_owned();
        (cluster, app, route_id)
    }

    /// A restart is goal state (a new restart generation in the job's fingerprint): asked of a
    /// control-role server, which runs no job itself, it reaches the worker that runs the job,
    /// which replaces it from its checkpoint and goes on delivering.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_reaches_the_worker_that_runs_the_job() {
        let (cluster, app, route_id) = control_plane_with_a_route().await;
        cluster.create_topic("_dlq.alpha.all", 1, 1).unwrap();
        let _worker = WorkerProcess::start(&app, &cluster.bootstrap_servers(), "worker-1", None);
        let log = || std::fs::read_to_string(app.settings.data_dir.join("worker-1.log")).unwrap_or_default();
        let starts = |generation: &'static str| {
            log().lines().filter(|l| l.contains("Job started.") && l.contains(generation)).count()
        };
        let token = producer_token(&app, "plays").await;
        ingest(&app, &token, "plays", &plays(0..100)).await;
        eventually("the worker delivers the first 100", || async { delivered_ns(&app, "parts").len() == 100 }).await;
        assert_eq!(starts("restart 1"), 0);

        let (s, _) = app.post(&app.alpha_viewer, "/api/v1/teams/alpha/routes/all/restart", json!({})).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, body) = app.post(&app.alpha, "/api/v1/teams/alpha/routes/all/restart", json!({})).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        eventually("the worker restarted the job", || async { starts("restart 1") == 1 }).await;
        ingest(&app, &token, "plays", &plays(100..200)).await;
        eventually("the restarted job delivers", || async { delivered_ns(&app, "parts").len() == 200 }).await;
        let restarts = app.store.restart_generations().await.unwrap();
        assert_eq!(restarts.get(&route_id), Some(&1));
        let ops = app.store.operations(&keystone_control::store::Scope::All, Some(&route_id), 10).await.unwrap();
        let ops = format!("{ops:?}");
        assert!(ops.contains("restart") && ops.contains("generation 1"), "{ops}");
        app.teardown().await;
    }

    /// A job shared by workers has the phase of its worst live part, not of whichever worker
    /// reported last; when the failing worker goes away, the control plane's leader lets the
    /// others' parts speak again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shared_job_is_as_healthy_as_its_worst_live_part() {
        use keystone_control::store::jobs::PhaseChange;
        use keystone_control::JobPhase;
        let (_cluster, app, route_id) = control_plane_with_a_route().await;
        for w in ["w1", "w2"] {
            app.store.heartbeat_worker(w, "worker", 0, &[]).await.unwrap();
        }
        let report = |worker: &'static str, to: JobPhase, error: Option<&'static str>| {
            let (store, route_id) = (app.store.clone(), route_id.clone());
            async move {
                let cause = format!("{} here", to.as_str());
                let change = PhaseChange {
                    route_id: &route_id,
                    version: 1,
                    to,
                    cause: &cause,
                    error,
                    restart: false,
                    reporter: Some(worker),
                };
                store.record_phase(change).await.unwrap();
            }
        };
        let job = || async {
            let (_, job) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/all/job").await;
            (job["job"]["phase"].as_str().unwrap_or_default().to_owned(), job["job"]["last_error"].clone(), job)
        };
        report("w1", JobPhase::Running, None).await;
        report("w2", JobPhase::Failing, Some("sink down")).await;
        report("w1", JobPhase::Running, None).await;
        let (phase, error, _) = job().await;
        assert_eq!((phase.as_str(), error), ("failing", json!("sink down")), "w2's part still fails");
        // w2 stops (its row goes): the leader's next pass lets w1's part speak.
        app.store.heartbeat_worker("w1", "worker", 0, &[]).await.unwrap();
        app.store.forget_worker("w2").await.unwrap();
        eventually("the job running again without w2", || async { job().await.0 == "running" }).await;
        let (_, _, body) = job().await;
        let causes: Vec<&str> =
            body["transitions"].as_array().unwrap().iter().map(|t| t["cause"].as_str().unwrap()).collect();
        assert!(causes.iter().any(|c| c.starts_with("w2: failing here")), "{causes:?}");
        assert!(causes.iter().any(|c| c.starts_with("w2 went silent")), "{causes:?}");
        assert_eq!(body["job"]["last_error"], Value::Null, "{body}");
        app.teardown().await;
    }

    /// Workers report their parts of a shared job at the same moments (a new version starts on
    /// all of them at once), each from its own process and connections. However their
    /// transactions interleave, once every part said running the job is running: a report must
    /// not combine the others' parts as they were before their own reports landed (the job then
    /// stayed `starting` for good, and a deployment waiting for it never went on).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn simultaneous_reports_of_a_shared_jobs_parts_leave_its_latest_phase() {
        use keystone_control::store::jobs::PhaseChange;
        use keystone_control::JobPhase;
        let (_cluster, app, route_id) = control_plane_with_a_route().await;
        // One store (pool, in-process write lock) per worker, as in separate processes.
        let url = app.settings.database_url.clone().unwrap();
        let mut workers = Vec::new();
        for n in 0..6 {
            let name = format!("w{n}");
            app.store.heartbeat_worker(&name, "worker", 0, &[]).await.unwrap();
            workers.push((name, Store::connect(&url).await.unwrap()));
        }
        for version in 1..=8 {
            for to in [JobPhase::Starting, JobPhase::Running] {
                let cause = format!("{} here", to.as_str());
                let reports = workers.iter().map(|(name, store)| {
                    store.record_phase(PhaseChange {
                        route_id: &route_id,
                        version,
                        to,
                        cause: &cause,
                        error: None,
                        restart: false,
                        reporter: Some(name),
                    })
                });
                for r in futures_util::future::join_all(reports).await {
                    r.unwrap();
                }
                let job = app.store.job(&route_id).await.unwrap().unwrap();
                let tr = app.store.transitions(&route_id, 20).await.unwrap();
                assert_eq!((job.version, job.phase), (version, to), "after every part reported {to:?}: {tr:#?}");
            }
        }
        app.teardown().await;
    }

    /// A real Kafka-protocol broker process for one test: tansu (installed by `cargo xtask test`,
    /// found through `KEYSTONE_TANSU`) with its SQLite storage in a scratch folder, on a free
    /// loopback port; killed on drop. `None` (the test says SKIPPED) when it is not installed.
    pub(crate) struct Tansu {
        _process: Spawned,
        pub(crate) brokers: String,
        _dir: tempfile::TempDir,
    }

    impl Tansu {
        pub(crate) async fn start() -> Option<Tansu> {
            let Some(bin) = std::env::var_os("KEYSTONE_TANSU").filter(|b| std::path::Path::new(b).exists()) else {
                eprintln!("SKIPPED: no tansu broker (KEYSTONE_TANSU); `cargo xtask test` installs it");
                return None;
            };
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let url = format!("tcp://127.0.0.1:{port}");
            let log = std::fs::File::create(dir.path().join("tansu.log")).unwrap();
            // Its SQLite URL takes a path relative to the working folder.
            let child = std::process::Command::new(bin)
                .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
                .args(["--storage-engine", "sqlite://tansu.db"])
                .current_dir(dir.path())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            let tansu = Tansu { _process: Spawned(child), brokers: format!("127.0.0.1:{port}"), _dir: dir };
            until_listening(port, "tansu").await;
            Some(tansu)
        }
    }

    /// The scale-out set-up on a real broker process (tansu) instead of librdkafka's mock: the
    /// control plane creates the stream's and the dead-letter topics on it (the mock cannot),
    /// ingest produces idempotently with acks=all, and two `keystone worker` processes share the
    /// route's job through a consumer group and deliver every event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn workers_on_a_real_kafka_broker_deliver_every_event() {
        let Some(broker) = Tansu::start().await else { return };
        let app = control_plane(&broker.brokers, true).await;
        declare(&app, "streams", "plays", stream(4)).await;
        declare(&app, "sinks", "lake", json!({"kind": "file", "settings": {"path": "tansu"}})).await;
        let route = json!({"stream": "plays", "sink": "lake", "max_latency_ms": 20, "batch_size": 100});
        declare(&app, "routes", "all", route).await;
        let _workers: Vec<WorkerProcess> =
            (1..=2).map(|i| WorkerProcess::start(&app, &broker.brokers, &format!("worker-{i}"), None)).collect();
        eventually("4 partitions spread over two workers", || async {
            let workers = app.store.workers().await.unwrap();
            let held: Vec<usize> =
                workers.iter().filter(|w| w.alive).map(|w| w.jobs.iter().map(|j| j.partitions.len()).sum()).collect();
            held.len() == 2 && held.iter().all(|n| *n > 0) && held.iter().sum::<usize>() == 4
        })
        .await;
        let token = producer_token(&app, "plays").await;
        ingest(&app, &token, "plays", &plays(0..1000)).await;
        let distinct = || delivered_ns(&app, "tansu");
        eventually("every event delivered from the broker", || async { distinct().len() == 1000 }).await;
        assert_eq!(distinct(), (0..1000).collect(), "none lost");
        assert_eq!(sink_lines(&app, "tansu").len(), 1000, "a steady group delivers each event once");
        app.teardown().await;
    }

    /// Two servers on one database and one Kafka cluster: only the holder of the reconciler lease
    /// runs the route's job; when it shuts down (jobs drained, lease released) the other takes
    /// over where it stopped: every event delivered once, by exactly one server at a time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_server_takes_over_the_jobs_when_the_first_stops() {
        let cluster = rdkafka::mocking::MockCluster::new(3).unwrap();
        cluster.create_topic("alpha.plays", 2, 3).unwrap();
        cluster.create_topic("_dlq.alpha.all", 1, 3).unwrap();
        let kafka = keystone::settings::KafkaSettings {
            brokers: cluster.bootstrap_servers(),
            manage_topics: false,
            replication_factor: 3,
            properties: Default::default(),
            session_timeout_ms: 6_000,
        };
        let mut first = spawn_app_with(Db::Sqlite, |s| s.kafka = Some(kafka.clone())).await;
        eventually("the first server leads", || async {
            first.store.lease("reconciler").await.unwrap().is_some_and(|l| l.holder.ends_with(&first_dir(&first)))
        })
        .await;
        let second_dir = tempfile::tempdir().unwrap();
        let mut settings = first.settings.clone();
        settings.data_dir = second_dir.path().to_path_buf();
        let (second_base, second) = start_server(settings).await;

        declare(&first, "streams", "plays", stream(2)).await;
        declare(&first, "sinks", "lake", json!({"kind": "file", "settings": {"path": "all"}})).await;
        declare(&first, "routes", "all", json!({"stream": "plays", "sink": "lake", "max_latency_ms": 20})).await;
        let token = producer_token(&first, "plays").await;
        ingest(&first, &token, "plays", &plays(0..100)).await;
        let ns = |dir: &std::path::Path| {
            let mut ns: Vec<u64> =
                events_under(&dir.join("sinks/alpha/all")).iter().map(|l| l["event"]["n"].as_u64().unwrap()).collect();
            ns.sort();
            ns
        };
        let first_data = first.settings.data_dir.clone();
        eventually("the leader delivered", || async { ns(&first_data) == (0..100).collect::<Vec<_>>() }).await;
        assert!(ns(second_dir.path()).is_empty(), "the follower ran no job");

        // The leader stops the way Ctrl-C stops it; the follower takes over.
        let running = first.running.take().unwrap();
        let _ = running.stop.send(());
        running.task.await.unwrap().unwrap();
        // Events sent to the remaining server (ingest needs no lease).
        let body: String = plays(100..200).iter().map(|e| format!("{e}\n")).collect();
        let resp = first
            .http
            .post(format!("{second_base}/ingest/plays"))
            .bearer_auth(&token)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        eventually("the second server delivered the rest", || async {
            ns(second_dir.path()) == (100..200).collect::<Vec<_>>()
        })
        .await;
        assert_eq!(ns(&first_data), (0..100).collect::<Vec<_>>(), "the stopped server delivered nothing more");
        let lease = first.store.lease("reconciler").await.unwrap().unwrap();
        assert!(lease.holder.ends_with(&second_dir.path().canonicalize().unwrap().display().to_string()), "{lease:?}");
        let _ = second.stop.send(());
        second.task.await.unwrap().unwrap();
        first.teardown().await;
    }

    /// Two servers (role `all`, real processes) on one PostgreSQL database and Kafka cluster:
    /// the lease holder runs the route's job; killed with SIGKILL under load (no drain, no
    /// release), the other takes the lease over once it expires, with a higher fencing token, and
    /// resumes the job from the last checkpoint: every acknowledged event delivered, repeats
    /// bounded by what the dead one had not committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_leader_is_replaced_and_its_jobs_resume_elsewhere() {
        let cluster = rdkafka::mocking::MockCluster::new(3).unwrap();
        cluster.create_topic("alpha.plays", 2, 3).unwrap();
        cluster.create_topic("_dlq.alpha.all", 1, 3).unwrap();
        let brokers = cluster.bootstrap_servers();
        // This test's own server only takes declarations and events (role ingest: no control).
        let kafka = keystone::settings::KafkaSettings {
            brokers: brokers.clone(),
            manage_topics: false,
            replication_factor: 3,
            properties: Default::default(),
            session_timeout_ms: 6_000,
        };
        let app = spawn_app_with(Db::Postgres, |s| {
            s.kafka = Some(kafka);
            s.role = keystone::settings::ProcessRole::Ingest;
        })
        .await;
        let server = |name: &str| {
            let listen = format!("127.0.0.1:{}", free_port());
            let env = [("KEYSTONE_LISTEN", listen.as_str()), ("KEYSTONE_RECONCILER_LEASE_MS", "2000")];
            keystone_process(&app, &brokers, name, &["serve"], &env)
        };
        let holder = || async { app.store.lease("reconciler").await.unwrap().map(|l| (l.holder, l.token)) };
        let first = server("server-a");
        eventually("server-a leads", || async { holder().await.is_some_and(|(h, _)| h == "server-a") }).await;
        let _second = server("server-b");
        declare(&app, "streams", "plays", stream(2)).await;
        declare(&app, "sinks", "lake", json!({"kind": "file", "settings": {"path": "takeover"}})).await;
        let route = json!({"stream": "plays", "sink": "lake", "max_latency_ms": 20, "batch_size": 50,
                           "config": {"job.checkpoint_interval_ms": "200"}});
        declare(&app, "routes", "all", route).await;
        let token = producer_token(&app, "plays").await;
        let distinct = || delivered_ns(&app, "takeover");
        ingest(&app, &token, "plays", &plays(0..500)).await;
        eventually("the leader delivered the first events", || async { distinct().len() == 500 }).await;
        let (_, token_a) = holder().await.unwrap();

        let producer = producing(&app, &token, 500..1500);
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(first);
        producer.await.unwrap();
        eventually("server-b took the lease over", || async { holder().await.is_some_and(|(h, _)| h == "server-b") })
            .await;
        let (_, token_b) = holder().await.unwrap();
        assert!(token_b > token_a, "a takeover raises the fencing token: {token_a} -> {token_b}");
        eventually("every acknowledged event delivered", || async { distinct().len() == 1500 }).await;
        assert_eq!(distinct(), (0..1500).collect(), "none lost");
        let repeated = sink_lines(&app, "takeover").len() - 1500;
        assert!(repeated <= 1000, "repeats bounded by what the killed leader had not committed: {repeated}");
        let (_, job) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/all/job").await;
        assert_eq!(job["job"]["phase"], "running", "{job}");
        app.teardown().await;
    }

    fn first_dir(app: &TestApp) -> String {
        app.settings.data_dir.canonicalize().unwrap().display().to_string()
    }

    async fn route_delivers_filtered_projected_events_and_reports_its_job(db: Db) {
        let app = spawn_app(db).await;
        declare(&app, "streams", "plays", json!({"partitions": 3, "retention_hours": 24})).await;
        declare(&app, "sinks", "lake", json!({"kind": "file", "settings": {"path": "plays/br"}})).await;
        let route = json!({"stream": "plays", "sink": "lake", "filter": "event.country == \"BR\"",
            "projection": {"keep": ["n", "country"], "rename": {"country": "where"}},
            "batch_size": 100, "max_latency_ms": 50, "config": {"job.checkpoint_interval_ms": "100"}});
        declare(&app, "routes", "br", route).await;
        let token = producer_token(&app, "plays").await;
        ingest(&app, &token, "plays", &plays(0..2000)).await;
        eventually("500 BR events in the file sink", || async { sink_lines(&app, "plays/br").len() >= 500 }).await;
        let lines = sink_lines(&app, "plays/br");
        let mut ns: Vec<u64> = lines.iter().map(|l| l["event"]["n"].as_u64().unwrap()).collect();
        ns.sort();
        assert_eq!(ns, (0..2000).filter(|n| n % 4 == 0).collect::<Vec<_>>(), "exactly the filtered events, once");
        assert!(lines.iter().all(|l| l["event"].as_object().unwrap().len() == 2 && l["event"]["where"] == "BR"));
        assert!(lines.iter().all(|l| uuid::Uuid::parse_str(l["id"].as_str().unwrap()).is_ok()));

        eventually("checkpoints past every event", || async {
            let j = job(&app, "br").await;
            j["checkpoints"].as_array().unwrap().iter().map(|c| c["next_offset"].as_u64().unwrap()).sum::<u64>() == 2000
        })
        .await;
        let j = job(&app, "br").await;
        assert_eq!(j["job"]["phase"], "running", "{j}");
        assert_eq!(j["job"]["version"], 1);
        assert_eq!(j["metrics"]["lag"], 0);
        assert_eq!(j["metrics"]["delivered"], 500);
        assert_eq!(j["metrics"]["filtered_out"], 1500);
        let causes: Vec<&str> =
            j["transitions"].as_array().unwrap().iter().map(|t| t["to"].as_str().unwrap()).collect();
        assert_eq!(causes, ["running", "starting"], "newest first");
        // Listed for the team, hidden from other teams.
        let (_, list) = app.get(&app.alpha_viewer, "/api/v1/jobs").await;
        assert_eq!(list.as_array().unwrap().len(), 1);
        assert_eq!(list[0]["route"], "br");
        let (_, other) = app.get(&app.beta, "/api/v1/jobs").await;
        assert_eq!(other, json!([]));
        assert_eq!(app.get(&app.beta, "/api/v1/teams/alpha/routes/br/job").await.0, StatusCode::NOT_FOUND);

        // Changing the route redeploys its job (version 2) and it resumes from its checkpoint.
        let mut changed = json!({"stream": "plays", "sink": "lake", "filter": "event.country == \"US\" && event.n >= 2000",
            "batch_size": 100, "max_latency_ms": 50});
        changed["config"] = json!({"job.checkpoint_interval_ms": "100"});
        assert_eq!(
            app.put(&app.alpha, "/api/v1/teams/alpha/routes/br", json!({"spec": changed})).await.0,
            StatusCode::OK
        );
        eventually("the job on version 2", || async { job(&app, "br").await["job"]["version"] == 2 }).await;
        ingest(&app, &token, "plays", &plays(2000..2010)).await;
        eventually("the new events", || async { sink_lines(&app, "plays/br").len() >= 507 }).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(sink_lines(&app, "plays/br").len(), 507, "old events are not replayed after a redeploy");

        // Deleting the route stops the job.
        assert_eq!(app.delete(&app.alpha, "/api/v1/teams/alpha/routes/br").await.0, StatusCode::OK);
        eventually("the stopped phase", || async {
            app.store.jobs(&keystone_control::store::Scope::All).await.unwrap().is_empty()
        })
        .await;
        app.teardown().await;
    }

    async fn a_dead_sink_fails_its_route_visibly_while_another_route_delivers(db: Db) {
        let app = spawn_app(db).await;
        declare(&app, "streams", "plays", json!({"partitions": 2, "retention_hours": 24})).await;
        // Nothing listens on port 9: connections are refused.
        declare(
            &app,
            "sinks",
            "down",
            json!({"kind": "http", "settings": {"url": "http://127.0.0.1:9/hook", "timeout_ms": "500"}}),
        )
        .await;
        declare(&app, "sinks", "lake", json!({"kind": "file", "settings": {"path": "all"}})).await;
        declare(&app, "routes", "to-down", json!({"stream": "plays", "sink": "down", "max_latency_ms": 20})).await;
        declare(&app, "routes", "to-lake", json!({"stream": "plays", "sink": "lake", "max_latency_ms": 20})).await;
        let token = producer_token(&app, "plays").await;
        ingest(&app, &token, "plays", &plays(0..3000)).await;
        eventually("every event in the healthy sink", || async { sink_lines(&app, "all").len() == 3000 }).await;
        eventually("the failing phase", || async { job(&app, "to-down").await["job"]["phase"] == "failing" }).await;
        let j = job(&app, "to-down").await;
        assert!(j["job"]["last_error"].as_str().unwrap().contains("request failed"), "{j}");
        assert_eq!(j["metrics"]["lag"], 3000, "nothing is acknowledged that the sink did not take");
        assert_eq!(j["metrics"]["delivered"], 0);
        assert!(j["checkpoints"].as_array().unwrap().iter().all(|c| c["next_offset"] == 0));
        // A viewer cannot restart a job; an editor can.
        let (s, _) = app.post(&app.alpha_viewer, "/api/v1/teams/alpha/routes/to-down/restart", json!({})).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _) = app.post(&app.alpha, "/api/v1/teams/alpha/routes/to-down/restart", json!({})).await;
        assert_eq!(s, StatusCode::ACCEPTED);
        eventually("the restarted job", || async {
            let j = job(&app, "to-down").await;
            j["transitions"].as_array().unwrap().iter().filter(|t| t["to"] == "starting").count() >= 2
        })
        .await;
        app.teardown().await;
    }

    #[tokio::test]
    async fn a_stream_sink_feeds_another_teams_stream_and_its_routes() {
        let app = spawn_app(Db::Sqlite).await;
        declare(&app, "streams", "plays", json!({"partitions": 2, "retention_hours": 24})).await;
        let (s, _) = app
            .post(
                &app.beta,
                "/api/v1/teams/beta/streams",
                json!({"name": "br-plays", "spec": {"partitions": 1, "retention_hours": 24}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        // alice is not in team beta: its streams do not exist for her, so the sink is refused.
        let into_beta = json!({"name": "to-beta", "spec": {"kind": "stream", "settings": {"stream": "beta/br-plays"}}});
        let (s, body) = app.post(&app.alpha, "/api/v1/teams/alpha/sinks", into_beta.clone()).await;
        assert_eq!(
            (s, body["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("settings.stream")),
            "{body}"
        );
        assert!(body["error"]["details"][0]["message"].as_str().unwrap().contains("no stream named"), "{body}");
        let (s, body) = app
            .post(
                &app.alpha,
                "/api/v1/teams/alpha/sinks",
                json!({"name": "nowhere", "spec": {"kind": "stream", "settings": {"stream": "missing"}}}),
            )
            .await;
        assert_eq!((s, body["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("settings.stream")));
        // An admin (whose reach covers both teams) may wire alpha's route into beta's stream.
        let root = Principal { user_id: "root".into(), display: "root".into(), role: Role::Admin, teams: vec![] };
        let spec = json!({"kind": "stream", "settings": {"stream": "beta/br-plays"}});
        let decl = Declaration::from_json(Kind::Sink, spec).unwrap();
        Goal::new(&app.store, &root).create("alpha", "to-beta", decl, "share BR plays with beta").await.unwrap();
        // A route may not feed the stream it reads.
        declare(&app, "sinks", "loop", json!({"kind": "stream", "settings": {"stream": "plays"}})).await;
        let (s, body) = app
            .post(
                &app.alpha,
                "/api/v1/teams/alpha/routes",
                json!({"name": "loop", "spec": {"stream": "plays", "sink": "loop"}}),
            )
            .await;
        assert_eq!((s, body["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("sink")), "{body}");
        declare(&app, "routes", "share-br", json!({"stream": "plays", "sink": "to-beta", "filter": "event.country == \"BR\"", "projection": {"keep": ["n"]}, "max_latency_ms": 20})).await;
        let (s, _) = app
            .post(
                &app.beta,
                "/api/v1/teams/beta/sinks",
                json!({"name": "lake", "spec": {"kind": "file", "settings": {"path": "beta"}}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, _) = app
            .post(
                &app.beta,
                "/api/v1/teams/beta/routes",
                json!({"name": "keep", "spec": {"stream": "br-plays", "sink": "lake", "max_latency_ms": 20}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        let token = producer_token(&app, "plays").await;
        ingest(&app, &token, "plays", &plays(0..400)).await;
        // Beta's file sink writes in beta's folder.
        let beta_lines = || events_under(&app.settings.data_dir.join("sinks/beta/beta"));
        eventually("beta's file sink to get alpha's BR events", || async { beta_lines().len() == 100 }).await;
        let mut ns: Vec<u64> = beta_lines().iter().map(|l| l["event"]["n"].as_u64().unwrap()).collect();
        ns.sort();
        assert_eq!(ns, (0..400).filter(|n| n % 4 == 0).collect::<Vec<_>>());
        app.teardown().await;
    }

    #[tokio::test]
    async fn the_preview_runs_unsaved_transforms_on_recent_events() {
        let app = spawn_app(Db::Sqlite).await;
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}, "country": {"type": "string"}, "user": {"type": "object"}}});
        declare(&app, "streams", "plays", json!({"partitions": 2, "retention_hours": 24, "schema": schema})).await;
        let (s, _) = app.post(&app.alpha_viewer, "/api/v1/teams/alpha/route-preview", json!({"stream": "plays"})).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "a preview runs the caller's filter: editors only");
        let (s, rows) = app.post(&app.alpha, "/api/v1/teams/alpha/route-preview", json!({"stream": "plays"})).await;
        assert_eq!((s, rows), (StatusCode::OK, json!([])), "no events yet");
        let token = producer_token(&app, "plays").await;
        ingest(&app, &token, "plays", &plays(0..300)).await;
        let req = json!({"stream": "plays", "filter": "event.country == \"BR\"", "projection": {"keep": ["n"], "rename": {"n": "number"}}});
        let revisions = app.revision_count().await;
        let (s, rows) = app.post(&app.alpha, "/api/v1/teams/alpha/route-preview", req).await;
        assert_eq!(s, StatusCode::OK, "{rows}");
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), 100, "the 100 newest events");
        assert!(rows.iter().all(|r| r["input"]["n"].as_u64().unwrap() >= 200));
        for r in rows {
            let n = r["input"]["n"].as_u64().unwrap();
            if n % 4 == 0 {
                assert_eq!((r["outcome"].as_str(), &r["output"]), (Some("delivered"), &json!({"number": n})));
            } else {
                assert_eq!(r["outcome"], "filtered_out");
            }
        }
        assert_eq!(app.revision_count().await, revisions, "a preview saves nothing");
        // Hygiene: masked and hashed fields, nulls dropped.
        let req = json!({"stream": "plays", "projection": {"keep": ["n", "user", "country"], "mask": ["user.email"], "hash": ["country"], "drop_nulls": true}, "limit": 1});
        let (s, rows) = app.post(&app.alpha, "/api/v1/teams/alpha/route-preview", req).await;
        assert_eq!(s, StatusCode::OK, "{rows}");
        let out = &rows[0]["output"];
        assert_eq!(out["user"]["email"], "****");
        assert_eq!(out["country"].as_str().unwrap().len(), 64, "{out}");
        assert_ne!(out["country"], rows[0]["input"]["country"]);
        // The output is the sink's bytes: a route that copies fields keeps a value's text as sent
        // (digits, nested key order, spacing), as its job does.
        let sent = r#"{"n": 1000, "country": "BR", "user": {"z": 1.50, "a": 2}}"#;
        let (s, body) = super::ingest::send(&app, &token, "plays", "application/json", sent).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let req =
            json!({"stream": "plays", "filter": "event.n == 1000", "projection": {"keep": ["n", "user"]}, "limit": 1});
        let text = app
            .http
            .post(format!("{}/api/v1/teams/alpha/route-preview", app.base))
            .bearer_auth(&app.alpha)
            .json(&req)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains(r#""output":{"n":1000,"user":{"z": 1.50, "a": 2}}"#), "{text}");
        // Bad transforms get the same field errors as a save; other teams see nothing.
        let (s, body) = app
            .post(
                &app.alpha,
                "/api/v1/teams/alpha/route-preview",
                json!({"stream": "plays", "filter": "event.bitrate > 1"}),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(body["error"]["details"][0]["message"].as_str().unwrap().contains("no field \"bitrate\""), "{body}");
        let (s, body) = app
            .post(&app.alpha, "/api/v1/teams/alpha/route-preview", json!({"stream": "plays", "filter": "event.n >"}))
            .await;
        assert_eq!((s, body["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("filter")), "{body}");
        let (s, _) = app.post(&app.beta, "/api/v1/teams/alpha/route-preview", json!({"stream": "plays"})).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        // A filter that cannot read an event says so per event.
        let (_, rows) = app
            .post(
                &app.alpha,
                "/api/v1/teams/alpha/route-preview",
                json!({"stream": "plays", "filter": "event.user.tier == \"gold\"", "limit": 3}),
            )
            .await;
        assert_eq!(rows.as_array().unwrap().len(), 3);
        assert!(
            rows.as_array()
                .unwrap()
                .iter()
                .all(|r| r["outcome"] == "error" && r["error"].as_str().unwrap().contains("tier")),
            "{rows}"
        );
        app.teardown().await;
    }

    /// A known workload (N events, M filtered out, K refused by the sink) gives exactly those
    /// numbers everywhere they are reported: the live job, the stored samples the dashboards plot
    /// (on either database), and `/metrics`, where another team sees none of them.
    async fn job_numbers_are_exact_in_metrics_samples_and_the_live_job(db: Db) {
        const N: u64 = 800;
        const M: u64 = N / 4; // every fourth play is from BR: filtered out
        const K: u64 = 3; // country XX breaks the table's CHECK: dead-lettered
        let app = spawn_app(db).await;
        let sink_db = SinkDatabase::with_table(
            "CREATE TABLE plays (event_id uuid PRIMARY KEY, n integer, country text CHECK (country <> 'XX'))",
        )
        .await;
        let url = sink_db.url.clone();
        declare(&app, "streams", "plays", json!({"partitions": 2, "retention_hours": 24})).await;
        declare(
            &app,
            "sinks",
            "dwh",
            json!({"kind": "postgres", "settings": {"table": "plays"}, "secrets": {"url": url}}),
        )
        .await;
        let route = json!({"stream": "plays", "sink": "dwh", "filter": "event.country != \"BR\"",
            "projection": {"keep": ["n", "country"]}, "max_latency_ms": 20});
        declare(&app, "routes", "rows", route).await;
        // Two producers share the work; a third request is refused whole (not an object).
        let (token, token2) = (producer_token(&app, "plays").await, producer_token(&app, "plays").await);
        let mut events = plays(0..N);
        for e in &mut events[1..=K as usize] {
            e["country"] = json!("XX");
        }
        ingest(&app, &token, "plays", &events[..500]).await;
        ingest(&app, &token2, "plays", &events[500..]).await;
        let refused = app.http.post(format!("{}/ingest/plays", app.base)).bearer_auth(&token2).body("[1]").send().await;
        assert_eq!(refused.unwrap().status(), StatusCode::BAD_REQUEST);

        let metrics = || async { job(&app, "rows").await["metrics"].clone() };
        eventually("every event handled", || async { metrics().await["read"] == N && metrics().await["lag"] == 0 })
            .await;
        let m = metrics().await;
        assert_eq!(
            (&m["read"], &m["filtered_out"], &m["delivered"], &m["dead_lettered"], &m["filter_errors"], &m["lag"]),
            (&json!(N), &json!(M), &json!(N - M - K), &json!(K), &json!(0), &json!(0)),
            "{m}"
        );
        let (_, letters) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/rows/dead-letters").await;
        assert_eq!(letters.as_array().unwrap().len() as u64, K);

        // The stored samples add up to the same totals once the telemetry task has caught up.
        let totals = || async {
            let (s, samples) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/rows/samples?window=15m").await;
            assert_eq!(s, StatusCode::OK, "{samples}");
            let samples = samples.as_array().unwrap().clone();
            let sum = |f: &str| samples.iter().map(|s| s["counts"][f].as_u64().unwrap()).sum::<u64>();
            let measured = |d: &str| samples.iter().filter_map(|s| s[d]["count"].as_u64()).sum::<u64>();
            let last_lag = samples.last().map(|s| s["lag"].clone());
            let refused_requests: u64 = samples.iter().map(|s| s["counts"]["sink_errors"][6].as_u64().unwrap()).sum();
            let requests = (sum("batches"), measured("batch_size"), measured("sink_request"), refused_requests);
            (
                sum("read"),
                sum("filtered_out"),
                sum("delivered"),
                sum("dead_lettered"),
                measured("end_to_end"),
                last_lag,
                requests,
            )
        };
        eventually("samples of every event", || async { totals().await.0 == N && totals().await.5 == Some(json!(0)) })
            .await;
        let t = totals().await;
        assert_eq!((t.0, t.1, t.2, t.3, t.4, t.5), (N, M, N - M - K, K, N - M - K, Some(json!(0))));
        // Every answered sink request has its size and latency measured; the requests that had
        // events refused are counted as such, the same in the live job.
        let (batches, sized, timed, refused_requests) = t.6;
        assert!(batches > 0 && (batches, timed) == (sized, sized), "{:?}", t.6);
        assert!((1..=K).contains(&refused_requests), "{:?}", t.6);
        assert_eq!(metrics().await["sink_errors"][6], refused_requests, "the live job counts the same");

        // The stream's own samples: what was accepted and refused, and by how many producers.
        let stream_totals = || async {
            let (s, samples) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/streams/plays/samples?window=15m").await;
            assert_eq!(s, StatusCode::OK, "{samples}");
            let samples = samples.as_array().unwrap().clone();
            let sum = |f: &str| samples.iter().map(|s| s[f].as_u64().unwrap()).sum::<u64>();
            (sum("accepted"), sum("rejected"), samples.iter().map(|s| s["producers"].as_u64().unwrap()).max())
        };
        eventually("stream samples of every event", || async { stream_totals().await.0 == N }).await;
        let (_, rejected, producers) = stream_totals().await;
        assert_eq!(rejected, 1);
        assert!(matches!(producers, Some(1 | 2)), "{producers:?}");
        let (_, live) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/streams/plays/ingest").await;
        assert_eq!(live["counted"]["producers"], 2, "{live}");
        let (s, body) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/rows/samples?window=2h").await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["field"], "window");

        // Prometheus text: the team's own series, exact; another team's token sees none of them.
        let scrape = |token: String| {
            let req = app.http.get(format!("{}/metrics", app.base)).bearer_auth(token);
            async move { req.send().await.unwrap().text().await.unwrap() }
        };
        let value = |text: &str, name: &str| -> Option<f64> {
            text.lines()
                .find(|l| {
                    l.starts_with(&format!("{name}{{")) && l.contains("team=\"alpha\"") && l.contains("route=\"rows\"")
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
        };
        // Events are counted read before they are delivered: wait for the end of both.
        eventually("exported numbers", || async {
            let text = scrape(app.alpha_viewer.clone()).await;
            value(&text, "keystone_job_events_read_total") == Some(N as f64)
                && value(&text, "keystone_job_events_delivered_total").is_some_and(|d| d >= (N - M - K) as f64)
                && value(&text, "keystone_job_events_dead_lettered_total").is_some_and(|d| d >= K as f64)
        })
        .await;
        let text = scrape(app.alpha_viewer.clone()).await;
        assert_eq!(value(&text, "keystone_job_events_delivered_total"), Some((N - M - K) as f64), "{text}");
        assert_eq!(value(&text, "keystone_job_events_filtered_total"), Some(M as f64));
        assert_eq!(value(&text, "keystone_job_events_dead_lettered_total"), Some(K as f64));
        assert_eq!(value(&text, "keystone_job_lag_events"), Some(0.0));
        // The only failed requests were the ones with refused events.
        assert_eq!(value(&text, "keystone_job_sink_errors_total"), Some(refused_requests as f64), "{text}");
        assert!(text.contains("kind=\"refused\""), "{text}");
        let producers =
            text.lines().find(|l| l.starts_with("keystone_stream_producers{") && l.contains("stream=\"plays\""));
        assert_eq!(producers.and_then(|l| l.rsplit(' ').next()), Some("2"), "{text}");
        eventually("every acknowledged position committed", || async {
            value(&scrape(app.alpha_viewer.clone()).await, "keystone_job_checkpoint_age_seconds") == Some(0.0)
        })
        .await;
        assert!(text.contains("# TYPE keystone_job_events_delivered_total counter"), "{text}");
        let log_bytes = text
            .lines()
            .find(|l| l.starts_with("keystone_stream_log_bytes{") && l.contains("stream=\"plays\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        assert!(log_bytes.is_some_and(|b| b > 0.0), "the stream's log size: {text}");
        assert!(!text.contains("keystone_database_up "), "platform health is for admins: {text}");
        let platform = scrape(SCRAPE_TOKEN.to_owned()).await;
        assert!(platform.contains("keystone_database_up 1"), "{platform}");
        assert!(platform.contains("keystone_reconciler_pass_seconds "), "{platform}");
        // The route's first deployment waits out its 60 s stability window.
        assert!(platform.contains("keystone_reconciler_last_actions "), "{platform}");
        assert!(platform.contains("keystone_deployments_in_progress 1"), "{platform}");
        assert!(platform.contains("keystone_jobs{phase=\"running\"} 1"), "{platform}");
        let other = scrape(app.beta.clone()).await;
        assert!(!other.contains("team=\"alpha\""), "team beta sees alpha's series: {other}");
        let anonymous = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
        assert!(!scrape("not-the-scrape-token".into()).await.contains("keystone_"));

        app.teardown().await;
        sink_db.remove().await;
    }

    /// A route's desired state: paused, its job finishes what it holds and reads nothing more
    /// (events wait), then resumes right after the last delivered event; stopped, the job is
    /// drained and removed, then resumes from its checkpoint. Every event reaches the sink
    /// exactly once, and each change is a revision of the route.
    #[tokio::test]
    async fn a_route_pauses_resumes_and_stops_without_losing_or_repeating_events() {
        let app = spawn_app(Db::Sqlite).await;
        declare(&app, "streams", "plays", json!({"partitions": 2, "retention_hours": 24})).await;
        declare(&app, "sinks", "lake", json!({"kind": "file", "settings": {"path": "life"}})).await;
        declare(&app, "routes", "all", json!({"stream": "plays", "sink": "lake", "max_latency_ms": 20})).await;
        let token = producer_token(&app, "plays").await;
        let owned = app;
        let app = &owned;
        let set = |state: &'static str| {
            let body = json!({"state": state, "reason": format!("test: {state}")});
            async move { app.post(&app.alpha, "/api/v1/teams/alpha/routes/all/state", body).await }
        };
        let delivered = || sink_lines(app, "life").len();
        let phase = || async { job(&app, "all").await["job"]["phase"].clone() };

        ingest(&app, &token, "plays", &plays(0..100)).await;
        eventually("the first events", || async { delivered() == 100 }).await;

        let (s, body) = set("paused").await;
        assert_eq!((s, &body["changed"]), (StatusCode::OK, &json!(true)), "{body}");
        eventually("the job paused", || async { phase().await == "paused" }).await;
        let status = job(&app, "all").await;
        assert_eq!(status["desired"], "paused", "{status}");
        ingest(&app, &token, "plays", &plays(100..150)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(delivered(), 100, "a paused job delivers nothing");
        assert_eq!(job(&app, "all").await["metrics"]["lag"], 50, "the events wait");
        // Setting the state it already has writes nothing.
        let (_, again) = set("paused").await;
        assert_eq!(again["changed"], false, "{again}");

        set("running").await;
        eventually("the waiting events", || async { delivered() == 150 }).await;
        // The phase is reported by the job's supervisor, asynchronously to the delivery.
        eventually("the job running", || async { phase().await == "running" }).await;

        set("stopped").await;
        eventually("the job stopped", || async { phase().await == "stopped" }).await;
        assert_eq!(job(&app, "all").await["metrics"], Value::Null, "a stopped job is not held");
        ingest(&app, &token, "plays", &plays(150..175)).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(delivered(), 150);
        set("running").await;
        eventually("the events sent while stopped", || async { delivered() == 175 }).await;

        let mut ns: Vec<u64> = sink_lines(&app, "life").iter().map(|l| l["event"]["n"].as_u64().unwrap()).collect();
        ns.sort();
        assert_eq!(ns, (0..175).collect::<Vec<_>>(), "every event exactly once");
        let (_, history) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/all/revisions").await;
        let reasons: Vec<&str> = history.as_array().unwrap().iter().filter_map(|r| r["reason"].as_str()).collect();
        for r in ["test: paused", "test: running", "test: stopped"] {
            assert!(reasons.contains(&r), "{r} in {reasons:?}");
        }
        let (_, transitions) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/all/job").await;
        let causes = transitions["transitions"].to_string();
        assert!(causes.contains("stopped as declared") && causes.contains("resumed"), "{causes}");

        // Viewers cannot, and a state must be one of the three.
        let (s, _) = app
            .post(&app.alpha_viewer, "/api/v1/teams/alpha/routes/all/state", json!({"state": "paused", "reason": "x"}))
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _) = app
            .post(&app.alpha, "/api/v1/teams/alpha/routes/all/state", json!({"state": "asleep", "reason": "x"}))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        owned.teardown().await;
    }

    /// The stability gate: a route's first version proves stable; a new version whose filter
    /// cannot evaluate any event fails its gate and the platform sets the route back to the last
    /// stable version, saying why, and the restored version delivers again. A manual rollback
    /// goes through the same path.
    #[tokio::test]
    async fn a_broken_version_is_rolled_back_by_the_stability_gate() {
        let app = spawn_app(Db::Sqlite).await;
        declare(&app, "streams", "plays", json!({"partitions": 1, "retention_hours": 24})).await;
        declare(&app, "sinks", "lake", json!({"kind": "file", "settings": {"path": "gate"}})).await;
        let v1 = json!({"stream": "plays", "sink": "lake", "max_latency_ms": 20, "filter": "event.n >= 0",
            "config": {"job.stability_s": "1"}});
        declare(&app, "routes", "all", v1.clone()).await;
        let token = producer_token(&app, "plays").await;
        let deployments = || async {
            let (s, body) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/all/deployments").await;
            assert_eq!(s, StatusCode::OK, "{body}");
            body.as_array().unwrap().clone()
        };
        eventually("v1 stable", || async { deployments().await.first().is_some_and(|d| d["state"] == "stable") }).await;

        let mut v2 = v1.clone();
        v2["filter"] = json!("event.bitrate > 3000");
        let (s, body) =
            app.put(&app.alpha, "/api/v1/teams/alpha/routes/all", json!({"spec": v2, "reason": "bitrate only"})).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        eventually("v2 deploying", || async { deployments().await[0]["to_version"] == 2 }).await;
        ingest(&app, &token, "plays", &plays(0..20)).await;
        eventually("v2 rolled back", || async { deployments().await.iter().any(|d| d["state"] == "rolled_back") })
            .await;
        let ds = deployments().await;
        let failed = ds.iter().find(|d| d["state"] == "rolled_back").unwrap();
        assert_eq!((&failed["from_version"], &failed["to_version"]), (&json!(1), &json!(2)), "{ds:?}");
        let detail = failed["detail"].as_str().unwrap();
        assert!(detail.contains("rolled back to v1") && detail.contains("20 of 20 events failed"), "{detail}");

        // The route is at v3 = v1's declaration, by the platform, with the reason.
        let (_, route) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/all").await;
        assert_eq!((&route["version"], &route["spec"]["filter"]), (&json!(3), &json!("event.n >= 0")), "{route}");
        let (_, history) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/all/revisions").await;
        let last = history.as_array().unwrap().iter().find(|r| r["version"] == 3).unwrap().clone();
        assert_eq!(last["author"], "keystone (stability gate)");
        assert!(last["reason"].as_str().unwrap().starts_with("automatic rollback of v2"), "{last}");
        eventually("v3 stable", || async {
            deployments().await.iter().any(|d| d["to_version"] == 3 && d["state"] == "stable")
        })
        .await;
        ingest(&app, &token, "plays", &plays(20..30)).await;
        eventually("v3 delivers", || async { sink_lines(&app, "gate").len() >= 10 }).await;

        // By hand: back to v2's declaration is a new revision (v4); an unknown version is refused.
        let (s, body) = app
            .post(&app.alpha, "/api/v1/teams/alpha/routes/all/rollback", json!({"version": 2, "reason": "retry v2"}))
            .await;
        assert_eq!((s, &body["revision"]["version"]), (StatusCode::OK, &json!(4)), "{body}");
        let (s, body) = app
            .post(&app.alpha, "/api/v1/teams/alpha/routes/all/rollback", json!({"version": 99, "reason": "x"}))
            .await;
        assert_eq!((s, &body["error"]["field"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("version")), "{body}");
        app.teardown().await;
    }

    /// A rewind to a time re-delivers exactly the events ingested from then on: estimated first
    /// (dry run, any state), refused while the route runs, applied once it is stopped. A
    /// savepoint taken before brings the job back to where it was.
    #[tokio::test]
    async fn a_rewind_to_a_time_redelivers_exactly_the_events_after_it() {
        let app = spawn_app(Db::Sqlite).await;
        declare(&app, "streams", "plays", json!({"partitions": 2, "retention_hours": 24})).await;
        declare(&app, "sinks", "lake", json!({"kind": "file", "settings": {"path": "rewind"}})).await;
        declare(&app, "routes", "all", json!({"stream": "plays", "sink": "lake", "max_latency_ms": 20})).await;
        let token = producer_token(&app, "plays").await;
        let path = |what: &str| format!("/api/v1/teams/alpha/routes/all/{what}");
        let ns = || {
            let mut ns: Vec<u64> =
                sink_lines(&app, "rewind").iter().map(|l| l["event"]["n"].as_u64().unwrap()).collect();
            ns.sort();
            ns
        };
        ingest(&app, &token, "plays", &plays(0..50)).await;
        eventually("the first events", || async { ns().len() == 50 }).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let from = keystone_control::store::now_ms();
        tokio::time::sleep(Duration::from_millis(30)).await;
        ingest(&app, &token, "plays", &plays(50..80)).await;
        eventually("the later events", || async { ns().len() == 80 }).await;
        eventually("everything committed", || async {
            let c = job(&app, "all").await["checkpoints"].clone();
            c.as_array().unwrap().iter().map(|c| c["next_offset"].as_u64().unwrap()).sum::<u64>() == 80
        })
        .await;
        let (s, sp) = app.post(&app.alpha, &path("savepoints"), json!({"name": "all-80"})).await;
        assert_eq!(s, StatusCode::CREATED, "{sp}");

        let to_time = json!({"to": "timestamp", "timestamp": from});
        let (s, plan) =
            app.post(&app.alpha, &path("rewind"), json!({"to": "timestamp", "timestamp": from, "dry_run": true})).await;
        assert_eq!((s, &plan["redelivered"], &plan["skipped"]), (StatusCode::OK, &json!(30), &json!(0)), "{plan}");
        let (s, body) = app.post(&app.alpha, &path("rewind"), to_time.clone()).await;
        assert_eq!(s, StatusCode::CONFLICT, "a running route is not rewound: {body}");

        app.post(&app.alpha, &path("state"), json!({"state": "stopped", "reason": "rewind"})).await;
        eventually("the job stopped", || async { job(&app, "all").await["job"]["phase"] == "stopped" }).await;
        let (s, plan) = app.post(&app.alpha, &path("rewind"), to_time).await;
        assert_eq!((s, &plan["redelivered"]), (StatusCode::OK, &json!(30)), "{plan}");
        app.post(&app.alpha, &path("state"), json!({"state": "running", "reason": "deliver again"})).await;
        // The restarted job counts from zero: it read and delivered exactly the 30 later events.
        let counts = || async {
            let m = job(&app, "all").await["metrics"].clone();
            (m["read"].clone(), m["delivered"].clone(), m["lag"].clone())
        };
        eventually("the re-delivered events", || async { counts().await == (json!(30), json!(30), json!(0)) }).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(counts().await, (json!(30), json!(30), json!(0)), "exactly the events from the rewind time");
        // The file sink names files by partition and offsets: the repeat replaced its own files.
        assert_eq!(ns(), (0..80).collect::<Vec<_>>());

        // Back to the savepoint: nothing to deliver again from there.
        app.post(&app.alpha, &path("state"), json!({"state": "stopped", "reason": "rewind"})).await;
        eventually("the job stopped", || async { job(&app, "all").await["job"]["phase"] == "stopped" }).await;
        let (s, plan) = app.post(&app.alpha, &path("rewind"), json!({"to": "savepoint", "savepoint": "all-80"})).await;
        assert_eq!((s, &plan["redelivered"], &plan["skipped"]), (StatusCode::OK, &json!(0), &json!(0)), "{plan}");
        // The checkpoint history: each job's first commit (then one a minute) was copied; the
        // oldest entry is a rewind target like a savepoint.
        let (s, history) = app.get(&app.alpha_viewer, &path("checkpoints")).await;
        assert_eq!(s, StatusCode::OK, "{history}");
        let oldest = history.as_array().unwrap().last().unwrap().clone();
        let at: u64 = oldest["positions"].as_array().unwrap().iter().map(|p| p[1].as_u64().unwrap()).sum();
        assert!(at > 0 && at <= 80, "{history}");
        let to_checkpoint = json!({"to": "checkpoint", "checkpoint": oldest["id"], "dry_run": true});
        let (s, plan) = app.post(&app.alpha, &path("rewind"), to_checkpoint).await;
        assert_eq!((s, plan["redelivered"].as_u64()), (StatusCode::OK, Some(80 - at)), "{plan}");
        let (s, body) = app.post(&app.alpha, &path("rewind"), json!({"to": "checkpoint", "checkpoint": -1})).await;
        assert_eq!((s, &body["error"]["field"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("checkpoint")), "{body}");
        let (s, body) = app.post(&app.alpha, &path("rewind"), json!({"to": "savepoint", "savepoint": "nope"})).await;
        assert_eq!((s, &body["error"]["field"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("savepoint")), "{body}");
        let (s, _) = app.post(&app.alpha_viewer, &path("rewind"), json!({"to": "earliest", "dry_run": true})).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (_, ops) = app.get(&app.alpha, "/api/v1/operations").await;
        assert!(ops.to_string().contains("30 event(s) to deliver again"), "{ops}");

        // With a policy, a large rewind waits for an admin; the positions move only on approval.
        let root = Principal { user_id: "root".into(), display: "root".into(), role: Role::Admin, teams: vec![] };
        let policy =
            keystone_control::approvals::ApprovalPolicy { rewinds_over_events: Some(10), ..Default::default() };
        Goal::new(&app.store, &root).create("", "approvals", Declaration::Policy(policy), "").await.unwrap();
        let committed = || async {
            let c = job(&app, "all").await["checkpoints"].clone();
            c.as_array().unwrap().iter().map(|c| c["next_offset"].as_u64().unwrap()).sum::<u64>()
        };
        assert_eq!(committed().await, 80);
        let (s, body) = app.post(&app.alpha, &path("rewind"), json!({"to": "earliest"})).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        let request = &body["change_request"];
        assert_eq!(
            (request["action"].as_str(), request["state"].as_str()),
            (Some("rewind"), Some("pending")),
            "{body}"
        );
        assert!(request["needs"][0].as_str().unwrap().contains("80 event(s) again (more than 10)"), "{body}");
        assert_eq!(committed().await, 80, "nothing moved yet");
        let id = request["id"].as_i64().unwrap().to_string();
        let admin = console_session(&app, "admin").await;
        let (s, body) = decide(&app, &admin, &id, "approve", "replay for the audit").await;
        assert!(s.is_success() || s.is_redirection(), "{s} {body}");
        assert_eq!(committed().await, 0, "the approved rewind moved the positions");
        let (_, ops) = app.get(&app.alpha, "/api/v1/operations").await;
        assert!(ops.to_string().contains("approved by admin"), "{ops}");
        app.teardown().await;
    }

    /// Both deployment strategies under load: while producers keep sending, each of two routes
    /// is redeployed (a new batch size). `no_duplicates` drains and checkpoints the old version
    /// first: every event exactly once. `no_gap` replaces the job at once and the new version
    /// resumes from the last commit: every event at least once, repeats bounded by what the old
    /// version delivered since its last checkpoint.
    #[tokio::test]
    async fn deployment_strategies_under_load_lose_nothing_and_bound_repeats() {
        let app = spawn_app(Db::Sqlite).await;
        declare(&app, "streams", "plays", json!({"partitions": 2, "retention_hours": 24})).await;
        let route = |path: &str, strategy: &str| {
            json!({"stream": "plays", "sink": path, "max_latency_ms": 10, "batch_size": 20,
                   "delivery_on_redeploy": strategy, "config": {"job.checkpoint_interval_ms": "200"}})
        };
        for (sink, strategy) in [("exact", "no_duplicates"), ("fast", "no_gap")] {
            declare(&app, "sinks", sink, json!({"kind": "file", "settings": {"path": sink}})).await;
            declare(&app, "routes", sink, route(sink, strategy)).await;
        }
        let token = producer_token(&app, "plays").await;
        eventually("both jobs running", || async {
            job(&app, "exact").await["job"]["phase"] == "running"
                && job(&app, "fast").await["job"]["phase"] == "running"
        })
        .await;
        const BATCHES: u64 = 40;
        const PER_BATCH: u64 = 25;
        for b in 0..BATCHES {
            ingest(&app, &token, "plays", &plays(b * PER_BATCH..(b + 1) * PER_BATCH)).await;
            if b == BATCHES / 2 {
                for (sink, strategy) in [("exact", "no_duplicates"), ("fast", "no_gap")] {
                    let mut v2 = route(sink, strategy);
                    v2["batch_size"] = json!(7);
                    let body = json!({"spec": v2, "reason": "smaller batches"});
                    let (s, r) = app.put(&app.alpha, &format!("/api/v1/teams/alpha/routes/{sink}"), body).await;
                    assert_eq!(s, StatusCode::OK, "{r}");
                }
                // The rest is sent while the new versions take over (a busy machine may take a
                // while to plan the redeploy: the test waits, so it really happens mid-stream).
                eventually("both redeploys under way", || async {
                    let mut both = true;
                    for sink in ["exact", "fast"] {
                        let path = format!("/api/v1/teams/alpha/routes/{sink}/deployments");
                        both &= app.get(&app.alpha_viewer, &path).await.1[0]["detail"] == "v1 → v2";
                    }
                    both
                })
                .await;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let total = BATCHES * PER_BATCH;
        let counted = |sink: &'static str| {
            let mut seen: HashMap<u64, u64> = HashMap::new();
            for l in sink_lines(&app, sink) {
                *seen.entry(l["event"]["n"].as_u64().unwrap()).or_default() += 1;
            }
            let repeats: u64 = seen.values().map(|c| c - 1).sum();
            (seen.len() as u64, repeats)
        };
        eventually("every event at both sinks", || async { counted("exact").0 == total && counted("fast").0 == total })
            .await;
        // Both versions ran: the redeploy happened mid-stream.
        for sink in ["exact", "fast"] {
            let (_, ds) = app.get(&app.alpha_viewer, &format!("/api/v1/teams/alpha/routes/{sink}/deployments")).await;
            assert_eq!(ds[0]["detail"], "v1 → v2", "{ds}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (exact, fast) = (counted("exact"), counted("fast"));
        eprintln!("strategies under load: no_duplicates {exact:?}, no_gap {fast:?} (distinct, repeated)");
        assert_eq!(exact, (total, 0), "no_duplicates: every event exactly once");
        assert_eq!(fast.0, total, "no_gap: no event missing");
        assert!(fast.1 < total / 2, "no_gap repeats only the window since the last commit: {fast:?}");
        app.teardown().await;
    }

    /// Backfills: the route's job reads another stream, then a file sink's Parquet files, through
    /// its own transforms and sink, and each time returns to its stream where it left off: every
    /// event of the stream and of both backfills reaches the sink, none lost, none twice.
    #[tokio::test]
    async fn backfills_from_a_stream_and_from_files_then_back_lose_nothing() {
        let app = spawn_app(Db::Sqlite).await;
        declare(&app, "streams", "plays", stream(2)).await;
        declare(&app, "streams", "archive", stream(1)).await;
        declare(&app, "streams", "extra", stream(1)).await;
        declare(&app, "sinks", "lake", json!({"kind": "file", "settings": {"path": "backfilled"}})).await;
        // Parquet files, rolled by age rather than by batch.
        let old = json!({"kind": "file", "settings": {"path": "old-output", "format": "parquet", "roll_seconds": "1"}});
        declare(&app, "sinks", "old", old).await;
        let route = |stream: &str, sink: &str| {
            json!({"stream": stream, "sink": sink, "max_latency_ms": 20, "delivery_on_redeploy": "no_duplicates",
                   "config": {"job.checkpoint_interval_ms": "100"}})
        };
        declare(&app, "routes", "all", route("plays", "lake")).await;
        // Another route writes the files the second backfill reads.
        declare(&app, "routes", "old", route("archive", "old")).await;
        let plays_token = producer_token(&app, "plays").await;
        let archive_token = producer_token(&app, "archive").await;
        let extra_token = producer_token(&app, "extra").await;
        let ns = |path: &str| {
            let mut ns: Vec<u64> = sink_lines(&app, path).iter().map(|l| l["event"]["n"].as_u64().unwrap()).collect();
            ns.sort();
            ns
        };
        ingest(&app, &plays_token, "plays", &plays(0..40)).await;
        ingest(&app, &archive_token, "archive", &plays(1000..1030)).await;
        ingest(&app, &extra_token, "extra", &plays(2000..2020)).await;
        eventually("the stream delivered", || async { ns("backfilled").len() == 40 }).await;
        eventually("the archive written to files", || async { ns("old-output").len() == 30 }).await;

        let path = "/api/v1/teams/alpha/routes/all/backfill";
        let state = || async {
            let (_, list) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/all/backfills").await;
            list[0]["state"].as_str().unwrap_or_default().to_owned()
        };
        // From another stream: up to where it ends now.
        let (s, b) = app.post(&app.alpha, path, json!({"from": "stream", "stream": "extra"})).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        assert_eq!((b["end"].clone(), b["state"].clone()), (json!([[0, 20]]), json!("running")));
        let (s, body) = app.post(&app.alpha, path, json!({"from": "stream", "stream": "extra"})).await;
        assert_eq!(s, StatusCode::CONFLICT, "one backfill at a time: {body}");
        ingest(&app, &plays_token, "plays", &plays(40..60)).await;
        eventually("the stream backfill done", || async { state().await == "done" }).await;
        let mut want: Vec<u64> = (0..60).chain(2000..2020).collect();
        eventually("the stream's events after it", || async { ns("backfilled") == want }).await;

        // From the files another route's file sink wrote; bad folders are refused first.
        let (s, body) = app.post(&app.alpha, path, json!({"from": "files", "path": "nowhere"})).await;
        assert_eq!((s, &body["error"]["field"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("path")), "{body}");
        let (s, body) = app.post(&app.alpha, path, json!({"from": "files", "path": "../etc"})).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let (s, b) = app.post(&app.alpha, path, json!({"from": "files", "path": "old-output"})).await;
        assert_eq!((s, &b["end"]), (StatusCode::CREATED, &json!([[0, 30]])), "{b}");
        ingest(&app, &plays_token, "plays", &plays(60..70)).await;
        eventually("the files backfill done", || async { state().await == "done" }).await;
        want = (0..70).chain(1000..1030).chain(2000..2020).collect();
        eventually("the files' events once more, and the stream's", || async { ns("backfilled") == want }).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(ns("backfilled"), want, "nothing more, nothing twice");
        let (_, ops) = app.get(&app.alpha, "/api/v1/operations").await;
        assert!(ops.to_string().contains("from files under old-output done"), "{ops}");

        // A backfill whose route is deleted ends with it.
        app.post(&app.alpha, "/api/v1/teams/alpha/routes/all/state", json!({"state": "paused", "reason": "hold"}))
            .await;
        let (s, b) = app.post(&app.alpha, path, json!({"from": "stream", "stream": "extra"})).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let (s, body) = app.delete(&app.alpha, "/api/v1/teams/alpha/routes/all?reason=gone").await;
        assert_eq!(s, StatusCode::OK, "{body}");
        eventually("the orphaned backfill cancelled", || async {
            app.store.running_backfills().await.unwrap().is_empty()
        })
        .await;
        app.teardown().await;
    }

    /// Effective configuration = platform default < route < environment < console override,
    /// each value with its source; an override rolls the job, which then runs with it.
    #[tokio::test]
    async fn configuration_layers_show_their_source_and_an_override_rolls_the_job() {
        let app = spawn_app_with(Db::Sqlite, |s| {
            s.job_env =
                keystone_control::config::env_layer([("KEYSTONE_JOB_STALL_TIMEOUT_S".into(), "300".into())]).unwrap();
        })
        .await;
        declare(&app, "streams", "plays", stream(1)).await;
        declare(&app, "sinks", "lake", json!({"kind": "file", "settings": {"path": "layers"}})).await;
        // No duplicates on redeploy: the roll drains the old job, so the sink can be counted exactly.
        let route = json!({"stream": "plays", "sink": "lake", "batch_size": 100, "max_latency_ms": 200,
                           "delivery_on_redeploy": "no_duplicates", "config": {"job.checkpoint_interval_ms": "500"}});
        declare(&app, "routes", "all", route).await;
        let config = |body: &Value, key: &str| -> (String, String) {
            let e =
                body.as_array().unwrap().iter().find(|e| e["key"] == key).unwrap_or_else(|| panic!("{key} in {body}"));
            let source = match e["source"]["layer"].as_str().unwrap() {
                "env" => format!("env {}", e["source"]["var"].as_str().unwrap()),
                "override" => format!("override by {}", e["source"]["by"].as_str().unwrap()),
                layer => layer.to_owned(),
            };
            (e["value"].as_str().unwrap().to_owned(), source)
        };
        let (s, body) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/all/config").await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(config(&body, "batch_size"), ("100".into(), "route".into()));
        assert_eq!(config(&body, "job.checkpoint_interval_ms"), ("500".into(), "route".into()));
        assert_eq!(config(&body, "job.stall_timeout_s"), ("300".into(), "env KEYSTONE_JOB_STALL_TIMEOUT_S".into()));
        assert_eq!(config(&body, "job.stability_s"), ("60".into(), "default".into()));

        // Bad overrides are refused with the field, and a viewer may not set one.
        let path = "/api/v1/teams/alpha/routes/all/config";
        let (s, body) = app.put(&app.alpha, &format!("{path}/filter"), json!({"value": "true"})).await;
        assert_eq!((s, body["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("key")), "{body}");
        let (s, body) = app.put(&app.alpha, &format!("{path}/batch_size"), json!({"value": "0"})).await;
        assert_eq!((s, body["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("value")), "{body}");
        let (s, _) = app.put(&app.alpha_viewer, &format!("{path}/batch_size"), json!({"value": "7"})).await;
        assert_eq!(s, StatusCode::FORBIDDEN);

        // The first 40 events go in batches of up to 100; after the override, in batches of 7.
        let token = producer_token(&app, "plays").await;
        ingest(&app, &token, "plays", &plays(0..40)).await;
        eventually("the first 40 events", || async { sink_lines(&app, "layers").len() == 40 }).await;
        let (s, body) =
            app.put(&app.alpha, &format!("{path}/batch_size"), json!({"value": "7", "reason": "smaller files"})).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(config(&body, "batch_size"), ("7".into(), "override by token:alice-bot".into()));
        let before: std::collections::HashSet<std::path::PathBuf> = sink_files(&app, "layers").into_keys().collect();
        // The job rolls within a reconciler pass; events sent after it are delivered 7 at a time.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        ingest(&app, &token, "plays", &plays(40..110)).await;
        eventually("all 110 events", || async { sink_lines(&app, "layers").len() == 110 }).await;
        let after: Vec<usize> =
            sink_files(&app, "layers").into_iter().filter(|(p, _)| !before.contains(p)).map(|(_, n)| n).collect();
        assert_eq!(after.iter().sum::<usize>(), 70, "{after:?}");
        assert!(after.iter().all(|n| *n <= 7), "batches after the override: {after:?}");
        let ops = app.store.operations(&keystone_control::store::Scope::All, None, 50).await.unwrap();
        assert!(
            ops.iter().any(|o| o.action == "config override" && o.detail == "batch_size: the layers below → 7: smaller files"),
            "{ops:?}"
        );

        // Describing or tagging the sink does not restart the job (nothing it runs changed).
        let transitions = || async { job(&app, "all").await["transitions"].as_array().unwrap().len() };
        let before = transitions().await;
        let tagged =
            json!({"spec": {"kind": "file", "settings": {"path": "layers"}, "description": "lake", "tags": ["gold"]}});
        let (s, body) = app.put(&app.alpha, "/api/v1/teams/alpha/sinks/lake", tagged).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(transitions().await, before, "a sink's tags restarted its routes' jobs");

        // Clearing the override brings the route's own value back.
        let (s, body) = app.delete(&app.alpha, &format!("{path}/batch_size?reason=done")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(config(&body, "batch_size"), ("100".into(), "route".into()));
        app.teardown().await;
    }

    /// An S3-compatible server for one test: moto's standalone server (installed on the CI
    /// machine with Python's `moto`), on a free loopback port, stopped on drop. `None` when
    /// `moto_server` is not installed.
    struct S3Server {
        _process: Spawned,
        endpoint: String,
    }

    impl S3Server {
        async fn start() -> Option<S3Server> {
            let port = free_port();
            let child = std::process::Command::new("moto_server")
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            let Ok(child) = child else {
                eprintln!("SKIPPED: moto_server is not installed (pip install 'moto[server]'), so no S3 server runs");
                return None;
            };
            let server = S3Server { _process: Spawned(child), endpoint: format!("http://127.0.0.1:{port}") };
            until_listening(port, "moto_server").await;
            Some(server)
        }

        async fn create_bucket(&self, name: &str) {
            let r = reqwest::Client::new().put(format!("{}/{name}", self.endpoint)).send().await.unwrap();
            assert!(r.status().is_success(), "bucket {name}: {}", r.status());
        }

        /// Every event in the Parquet and NDJSON objects under `prefix` of `bucket`.
        async fn events(&self, bucket: &str, prefix: &str) -> Vec<Value> {
            use futures_util::TryStreamExt;
            use object_store::ObjectStoreExt;
            let bucket = keystone_control::BucketSettings {
                url: format!("s3://{bucket}"),
                endpoint: Some(self.endpoint.clone()),
                region: Some("us-east-1".to_owned()),
                ambient_credentials: false,
            };
            let secrets =
                [("access_key_id".to_owned(), "k".to_owned()), ("secret_access_key".to_owned(), "s".to_owned())];
            let files = keystone_engine::job::backfill::SinkFiles::of_sink(
                prefix,
                "alpha",
                Some(&bucket),
                &secrets.into_iter().collect(),
                std::path::Path::new("/nonexistent"),
                &keystone_control::egress::EgressPolicy::new(&["127.0.0.0/8".into()], &[], false).unwrap(),
            )
            .unwrap();
            let prefix = object_store::path::Path::from(prefix);
            let listed: Vec<_> = files.store.list(Some(&prefix)).try_collect().await.unwrap();
            let mut out = Vec::new();
            for meta in listed {
                let body = files.store.get(&meta.location).await.unwrap().bytes().await.unwrap();
                assert_eq!(meta.location.extension(), Some("parquet"), "{}", meta.location);
                let events = keystone_engine::sinks::parquet::decode(body).unwrap();
                out.extend(events.iter().map(|e| serde_json::to_value(e).unwrap()));
            }
            out
        }
    }

    /// A file sink writes Parquet files into an S3-compatible bucket (a real server speaking the
    /// S3 protocol, with signed requests), and a backfill reads them back from the bucket into
    /// another route's sink.
    #[tokio::test]
    async fn a_file_sink_writes_to_an_s3_bucket_and_a_backfill_reads_it_back() {
        let Some(s3) = S3Server::start().await else { return };
        s3.create_bucket("archive").await;
        let app = spawn_app(Db::Sqlite).await;
        declare(&app, "streams", "plays", stream(2)).await;
        declare(&app, "streams", "quiet", stream(1)).await;
        let bucket = json!({"kind": "file",
            "settings": {"path": "plays", "store_url": "s3://archive", "endpoint": s3.endpoint, "region": "us-east-1",
                         "format": "parquet"},
            "secrets": {"access_key_id": "k", "secret_access_key": "s"}});
        declare(&app, "sinks", "bucket", bucket).await;
        declare(&app, "sinks", "lake", json!({"kind": "file", "settings": {"path": "from-s3"}})).await;
        let route = |stream: &str, sink: &str| json!({"stream": stream, "sink": sink, "max_latency_ms": 20});
        declare(&app, "routes", "archive", route("plays", "bucket")).await;
        declare(&app, "routes", "replay", route("quiet", "lake")).await;
        let token = producer_token(&app, "plays").await;
        ingest(&app, &token, "plays", &plays(0..30)).await;
        let ns = |events: Vec<Value>| {
            let mut ns: Vec<u64> = events.iter().map(|e| e["event"]["n"].as_u64().unwrap()).collect();
            ns.sort();
            ns
        };
        eventually("30 events in the bucket", || async { s3.events("archive", "plays").await.len() >= 30 }).await;
        let in_bucket = s3.events("archive", "plays").await;
        assert_eq!(ns(in_bucket.clone()), (0..30).collect::<Vec<_>>());

        // Back from the bucket: a path no file sink writes is refused, the bucket's files are not.
        let path = "/api/v1/teams/alpha/routes/replay/backfill";
        let (s, body) = app.post(&app.alpha, path, json!({"from": "files", "path": "plays", "sink": "lake"})).await;
        assert_eq!((s, &body["error"]["field"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("sink")), "{body}");
        let (s, b) = app.post(&app.alpha, path, json!({"from": "files", "path": "plays", "sink": "bucket"})).await;
        assert_eq!((s, &b["end"]), (StatusCode::CREATED, &json!([[0, 30]])), "{b}");
        eventually("the bucket's events delivered again", || async {
            ns(sink_lines(&app, "from-s3")) == (0..30).collect::<Vec<_>>()
        })
        .await;
        let ids = |events: &[Value]| {
            let mut ids: Vec<String> = events.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&sink_lines(&app, "from-s3")), ids(&in_bucket), "with their original ids");
        app.teardown().await;
    }

    /// A console override is deployed like a new version: judged by the route's stability gate,
    /// and put back by the platform when the job fails it (here a tighter error budget than the
    /// route's events can meet).
    #[tokio::test]
    async fn an_override_that_fails_the_stability_gate_is_put_back() {
        let app = spawn_app(Db::Sqlite).await;
        declare(&app, "streams", "plays", stream(1)).await;
        declare(&app, "sinks", "lake", json!({"kind": "file", "settings": {"path": "override-gate"}})).await;
        // Events without a bitrate fail the filter, which the route tolerates.
        let route = json!({"stream": "plays", "sink": "lake", "max_latency_ms": 20, "filter": "event.bitrate > 3000",
            "config": {"job.stability_s": "1", "job.max_error_percent": "100"}});
        declare(&app, "routes", "all", route).await;
        let token = producer_token(&app, "plays").await;
        let deployments = || async {
            let (_, body) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/all/deployments").await;
            body.as_array().unwrap().clone()
        };
        eventually("v1 stable", || async { deployments().await.first().is_some_and(|d| d["state"] == "stable") }).await;

        let path = "/api/v1/teams/alpha/routes/all/config/job.max_error_percent";
        let (s, body) = app.put(&app.alpha, path, json!({"value": "10", "reason": "tighter"})).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let ds = deployments().await;
        assert_eq!(
            (&ds[0]["state"], &ds[0]["to_version"], &ds[0]["config"]["after"]),
            (&json!("deploying"), &json!(1), &json!("10"))
        );
        // Events keep coming while the job rolls; the new job's failures count against it.
        let mut n = 0;
        eventually("the override rolled back", || {
            n += 20;
            let (app, token) = (&app, &token);
            async move {
                ingest(app, token, "plays", &plays(n - 20..n)).await;
                let ds = deployments().await;
                ds.iter().any(|d| d["config"]["key"] == "job.max_error_percent" && d["state"] == "rolled_back")
            }
        })
        .await;
        let ds = deployments().await;
        let detail = ds[0]["detail"].as_str().unwrap();
        assert!(detail.contains("rolled back") && detail.contains("over the 10% threshold"), "{detail}");
        let (_, config) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/all/config").await;
        let e = config.as_array().unwrap().iter().find(|e| e["key"] == "job.max_error_percent").unwrap().clone();
        assert_eq!((&e["value"], &e["source"]["layer"]), (&json!("100"), &json!("route")), "{e}");
        let ops = app.store.operations(&keystone_control::store::Scope::All, None, 50).await.unwrap();
        assert!(
            ops.iter().any(|o| o.action == "config override"
                && o.actor == "keystone (stability gate)"
                && o.detail.contains("automatic rollback of the override job.max_error_percent")),
            "{ops:?}"
        );
        // The platform's own rollback is not judged again.
        assert_eq!(deployments().await.len(), ds.len());
        app.teardown().await;
    }

    /// Every NDJSON file under a file sink's folder, with its number of events.
    fn sink_files(app: &TestApp, path: &str) -> std::collections::HashMap<std::path::PathBuf, usize> {
        fn walk(dir: &std::path::Path, out: &mut std::collections::HashMap<std::path::PathBuf, usize>) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "ndjson") {
                    let n = std::fs::read_to_string(&p).unwrap().lines().count();
                    out.insert(p, n);
                }
            }
        }
        let mut out = std::collections::HashMap::new();
        walk(&app.settings.data_dir.join("sinks/alpha").join(path), &mut out);
        out
    }

    #[tokio::test]
    async fn apply_declares_a_pipeline_idempotently_and_shows_changes_first() {
        use keystone::apply::{parse, render, Client, Plan};
        let app = spawn_app(Db::Sqlite).await;
        let client = Client { base: app.base.clone(), token: app.alpha.clone(), http: reqwest::Client::new() };
        let file = "team: alpha\nstreams:\n  plays: {partitions: 2, retention_hours: 24}\nsinks:\n  lake:\n    kind: file\n    \
                    settings: {path: applied}\nroutes:\n  br:\n    stream: plays\n    sink: lake\n    \
                    filter: event.country == \"BR\"\n";
        let pipeline = parse("p.yaml", file).unwrap();
        let plan = client.plan(&pipeline).await.unwrap();
        assert_eq!(
            render("alpha", &plan),
            "+ create stream alpha/plays\n+ create sink alpha/lake\n+ create route alpha/br\n"
        );
        assert_eq!(client.apply("alpha", &plan, "from git").await.unwrap().applied, 3);
        let revisions = app.revision_count().await;

        let again = client.plan(&pipeline).await.unwrap();
        assert!(again.iter().all(|(_, p)| *p == Plan::Unchanged), "{}", render("alpha", &again));
        assert_eq!(client.apply("alpha", &again, "from git").await.unwrap().applied, 0);
        assert_eq!(app.revision_count().await, revisions, "applying the same file twice changes nothing");

        let changed = parse("p.yaml", &file.replace("\"BR\"", "\"AR\"")).unwrap();
        let plan = client.plan(&changed).await.unwrap();
        assert_eq!(
            render("alpha", &plan),
            "= unchanged stream alpha/plays\n= unchanged sink alpha/lake\n~ update route alpha/br (v1 -> v2)\n    \
             filter: \"event.country == \\\"BR\\\"\" -> \"event.country == \\\"AR\\\"\"\n"
        );
        assert_eq!(client.apply("alpha", &plan, "argentina").await.unwrap().applied, 1);
        let (_, route) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/br").await;
        assert_eq!((&route["version"], &route["spec"]["filter"]), (&json!(2), &json!("event.country == \"AR\"")));

        // The server's own checks (a sink that does not exist) come back with the file's line.
        let dangling = parse("p.yaml", &file.replace("sink: lake", "sink: nowhere")).unwrap();
        let plan = client.plan(&dangling).await.unwrap();
        let e = client.apply("alpha", &plan, "x").await.unwrap_err().to_string();
        assert!(e.contains("line 9: route alpha/br was refused: HTTP 422") && e.contains("sink"), "{e}");
        // A viewer's token can diff but not apply.
        let viewer = Client { base: app.base.clone(), token: app.alpha_viewer.clone(), http: reqwest::Client::new() };
        let chile = parse("p.yaml", &file.replace("\"BR\"", "\"CL\"")).unwrap();
        let plan = viewer.plan(&chile).await.unwrap();
        assert!(matches!(plan[2].1, Plan::Update { version: 2, .. }), "{}", render("alpha", &plan));
        let e = viewer.apply("alpha", &plan, "x").await.unwrap_err().to_string();
        assert!(e.contains("line 9: route alpha/br was refused: HTTP 403"), "{e}");

        // A change the approval policy holds back comes back as a change request; the rest of
        // the file is applied.
        let root = Principal { user_id: "root".into(), display: "root".into(), role: Role::Admin, teams: vec![] };
        let policy = keystone_control::approvals::ApprovalPolicy {
            objects_tagged: vec!["critical".into()],
            ..Default::default()
        };
        Goal::new(&app.store, &root).create("", "approvals", Declaration::Policy(policy), "").await.unwrap();
        let tagged = file
            .replace("\"BR\"\n", "\"PE\"\n    tags: [critical]\n")
            .replace("partitions: 2,", "partitions: 2, description: raw,");
        let plan = client.plan(&parse("p.yaml", &tagged).unwrap()).await.unwrap();
        let outcome = client.apply("alpha", &plan, "peru").await.unwrap();
        assert_eq!(outcome.applied, 1, "the stream's description is applied");
        assert_eq!(outcome.held.len(), 1, "{:?}", outcome.held);
        assert!(
            outcome.held[0].starts_with("line 9: route alpha/br waits for an admin's approval as change request #")
                && outcome.held[0].contains("tagged \"critical\""),
            "{:?}",
            outcome.held
        );
        let (_, route) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/br").await;
        assert_eq!(route["spec"]["filter"], "event.country == \"AR\"", "the held-back change is not applied");
        app.teardown().await;
    }

    /// An alert's whole life: a sink that answers 503 leaves events waiting, the route's
    /// `no_delivery` rule goes pending, then firing, and the team's webhook hears about it once;
    /// when the sink recovers the rule resolves and the webhook hears that too.
    #[tokio::test]
    async fn a_stuck_route_fires_its_alert_once_and_resolves_after_recovery() {
        use axum::routing::post;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let app = spawn_app(Db::Sqlite).await;
        let healthy = Arc::new(AtomicBool::new(false));
        let notes: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink_health = healthy.clone();
        let received = notes.clone();
        let routes = axum::Router::new()
            .route(
                "/sink",
                post(move || {
                    let ok = sink_health.load(Ordering::SeqCst);
                    async move {
                        if ok {
                            StatusCode::OK
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        }
                    }
                }),
            )
            .route(
                "/alerts",
                post(move |axum::Json(v): axum::Json<Value>| {
                    received.lock().unwrap().push(v);
                    async { StatusCode::NO_CONTENT }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, routes).await.unwrap() });

        // The team's webhook is set by an admin; a bad URL is refused with its field.
        let admin = Principal { user_id: "t".into(), display: "t".into(), role: Role::Admin, teams: vec![] };
        let goal = Goal::new(&app.store, &admin);
        let bad = TeamSpec { description: String::new(), alert_webhook: Some("ftp://x".into()) };
        let e = goal.update("", "alpha", Declaration::Team(bad), "", None).await.unwrap_err();
        assert!(e.to_string().contains("alert_webhook"), "{e}");
        let team = TeamSpec { description: String::new(), alert_webhook: Some(format!("{local}/alerts")) };
        goal.update("", "alpha", Declaration::Team(team), "alerts to the on-call bot", None).await.unwrap();
        // The URL may carry a credential: members see that it is set, never the URL, anywhere.
        let (_, teams) = app.get(&app.alpha, "/api/v1/teams").await;
        assert_eq!(teams[0]["spec"]["alert_webhook"], keystone_control::goal::WEBHOOK_HIDDEN, "{teams}");
        let (_, audit) = app.get(&app.alpha, "/api/v1/revisions").await;
        assert!(!audit.to_string().contains(&local), "the audit log shows the URL to a member: {audit}");
        assert!(audit.to_string().contains(keystone_control::goal::WEBHOOK_HIDDEN), "{audit}");
        assert_eq!(goal.get(Kind::Team, "", "alpha").await.unwrap().spec["alert_webhook"], format!("{local}/alerts"));

        declare(&app, "streams", "plays", json!({"partitions": 1, "retention_hours": 24})).await;
        declare(&app, "sinks", "hook", json!({"kind": "http", "settings": {"url": format!("{local}/sink")}})).await;
        let route = json!({"stream": "plays", "sink": "hook", "max_latency_ms": 20,
            "alerts": [{"kind": "no_delivery", "threshold": 1, "for_s": 1}, {"kind": "failed"}]});
        declare(&app, "routes", "stuck", route).await;
        let (s, body) = app
            .post(
                &app.alpha,
                "/api/v1/teams/alpha/routes",
                json!({"name": "bad", "spec":
                {"stream": "plays", "sink": "hook", "alerts": [{"kind": "latency", "threshold": 1}]}}),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "an unknown rule kind is refused: {body}");
        let token = producer_token(&app, "plays").await;
        ingest(&app, &token, "plays", &plays(0..10)).await;

        let state = || async {
            let (_, a) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/stuck/alerts").await;
            a["states"].as_array().unwrap().iter().find(|s| s["rule"] == "no_delivery").map(|s| s["state"].clone())
        };
        let mut seen: Vec<Value> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.last() != Some(&json!("firing")) {
            assert!(Instant::now() < deadline, "the alert never fired: {seen:?}");
            if let Some(s) = state().await {
                if seen.last() != Some(&s) {
                    seen.push(s);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // (The first evaluation may already see events waiting: `ok` is not always observed.)
        assert_eq!(
            seen[seen.len() - 2..],
            [json!("pending"), json!("firing")],
            "held for for_s before firing: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        {
            let notes = notes.lock().unwrap();
            assert_eq!(notes.len(), 1, "one notification while firing: {notes:?}");
            assert_eq!(
                (&notes[0]["route"], &notes[0]["rule"], &notes[0]["state"]),
                (&json!("stuck"), &json!("no_delivery"), &json!("firing"))
            );
            assert_eq!(notes[0]["dashboard"], "/routes/alpha/stuck/dashboard");
        }

        healthy.store(true, Ordering::SeqCst);
        eventually("the alert resolved", || async { state().await == Some(json!("resolved")) }).await;
        eventually("the resolve notification", || async { notes.lock().unwrap().len() == 2 }).await;
        assert_eq!(notes.lock().unwrap()[1]["state"], "resolved");
        // An event is recorded once its notification was tried (with the outcome): just after.
        let alerts = || async { app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/stuck/alerts").await.1 };
        eventually("the resolve event recorded", || async { alerts().await["events"].as_array().unwrap().len() == 2 })
            .await;
        let a = alerts().await;
        let events = a["events"].as_array().unwrap();
        assert_eq!(
            events.iter().map(|e| (e["state"].clone(), e["notified"].clone())).collect::<Vec<_>>(),
            [(json!("resolved"), json!("sent")), (json!("firing"), json!("sent"))],
            "{a}"
        );
        assert_eq!(a["rules"].as_array().unwrap().len(), 2, "the declared rules, not the defaults");
        let failed = a["states"].as_array().unwrap().iter().find(|s| s["rule"] == "failed").unwrap().clone();
        assert_eq!(failed["state"], "ok");

        // Silenced by an editor (not a viewer; a reason is required): the rule fires again, but
        // the webhook hears nothing, and the silence is in the audit log's operations.
        let silence = "/api/v1/teams/alpha/routes/stuck/alerts/silence";
        let ask = json!({"rule": "no_delivery", "minutes": 10, "reason": "fix being deployed"});
        assert_eq!(app.post(&app.alpha_viewer, silence, ask.clone()).await.0, StatusCode::FORBIDDEN);
        let (s, body) = app.post(&app.alpha, silence, json!({"rule": "no_delivery", "minutes": 0, "reason": ""})).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["field"], "minutes");
        let (s, body) = app.post(&app.alpha, silence, ask).await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        healthy.store(false, Ordering::SeqCst);
        ingest(&app, &token, "plays", &plays(10..15)).await;
        let fired_again = || async {
            let (_, a) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/stuck/alerts").await;
            a["events"].as_array().unwrap().len() == 3
        };
        eventually("the silenced firing recorded", fired_again).await;
        let (_, a) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/stuck/alerts").await;
        assert_eq!(a["events"][0]["state"], "firing");
        assert!(a["events"][0]["notified"].as_str().unwrap().starts_with("silenced by token:alice-bot"), "{a}");
        assert_eq!(a["silences"][0]["reason"], "fix being deployed");
        assert_eq!(notes.lock().unwrap().len(), 2, "a silenced rule sends nothing");
        let (_, ops) = app.get(&app.alpha_viewer, "/api/v1/operations").await;
        assert!(
            ops.as_array().unwrap().iter().any(|o| o["action"] == "silence alerts"
                && o["name"] == "stuck"
                && o["detail"].as_str().unwrap().contains("fix being deployed")),
            "{ops}"
        );
        let (_, beta_ops) = app.get(&app.beta, "/api/v1/operations").await;
        assert!(beta_ops.as_array().unwrap().is_empty(), "another team's operations stay hidden: {beta_ops}");
        app.teardown().await;
    }

    on_both_backends!(
        route_delivers_filtered_projected_events_and_reports_its_job,
        a_dead_sink_fails_its_route_visibly_while_another_route_delivers,
        job_numbers_are_exact_in_metrics_samples_and_the_live_job,
    );

    #[tokio::test]
    async fn refused_events_land_in_the_dead_letter_queue() {
        let app = spawn_app(Db::Postgres).await;
        let sink_db = SinkDatabase::with_table(
            "CREATE TABLE plays (event_id uuid PRIMARY KEY, n integer NOT NULL, country text)",
        )
        .await;
        let (url, mut db) = (sink_db.url.clone(), sink_db.connect().await);
        declare(&app, "streams", "plays", json!({"partitions": 2, "retention_hours": 24})).await;
        declare(
            &app,
            "sinks",
            "dwh",
            json!({"kind": "postgres", "settings": {"table": "plays"}, "secrets": {"url": url}}),
        )
        .await;
        declare(
            &app,
            "routes",
            "rows",
            json!({"stream": "plays", "sink": "dwh", "projection": {"drop": ["user"]}, "max_latency_ms": 20}),
        )
        .await;
        let token = producer_token(&app, "plays").await;
        let mut events = plays(0..1000);
        events[10]["n"] = json!("ten"); // not an integer: PostgreSQL refuses this row alone
        ingest(&app, &token, "plays", &events).await;
        eventually("999 rows", || {
            let url = url.clone();
            async move {
                let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM plays").fetch_one(&mut c).await.unwrap() == 999
            }
        })
        .await;
        eventually("one dead letter", || async {
            app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/rows/dead-letters")
                .await
                .1
                .as_array()
                .is_some_and(|a| a.len() == 1)
        })
        .await;
        let (_, letters) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/rows/dead-letters").await;
        assert_eq!(letters[0]["letter"]["envelope"]["payload"]["n"], "ten");
        assert!(letters[0]["letter"]["reason"].as_str().unwrap().contains("22P02"), "{letters}");
        eventually("checkpoints past every event", || async {
            job(&app, "rows").await["checkpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["next_offset"].as_u64().unwrap())
                .sum::<u64>()
                == 1000
        })
        .await;
        let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT n) FROM plays").fetch_one(&mut db).await.unwrap();
        assert_eq!(distinct, 999);
        // The job's dashboard (server-rendered HTML, as a browser without JavaScript gets it)
        // shows the refused event and why, beside the latest errors.
        let origin = app.base.clone();
        let ok = app.form("/api/login", &[("username", "alice"), ("password", PASSWORD)], Some(&origin)).await;
        assert!(ok.status().is_success() || ok.status().is_redirection(), "{:?}", ok.status());
        let page = app.http.get(format!("{}/routes/alpha/rows/dashboard", app.base)).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let html = page.text().await.unwrap();
        assert!(html.contains("Sample refused events") && html.contains("22P02"), "{html}");
        assert!(html.contains("&quot;ten&quot;") || html.contains("\"ten\""), "the refused event itself: {html}");

        // Retrying while the table still refuses the row re-queues it with the new reason.
        let retry = "/api/v1/teams/alpha/routes/rows/dead-letters/retry";
        assert_eq!(app.post(&app.alpha_viewer, retry, json!({})).await.0, StatusCode::FORBIDDEN);
        let (s, r) = app.post(&app.alpha, retry, json!({})).await;
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(
            (r["letters"].as_u64(), r["delivered"].as_u64(), r["refused_again"].as_u64()),
            (Some(1), Some(0), Some(1))
        );
        let (_, letters) = app.get(&app.alpha_viewer, "/api/v1/teams/alpha/routes/rows/dead-letters").await;
        assert_eq!(letters.as_array().unwrap().len(), 2, "the letter is back in the queue, nothing vanished");
        // Once the table accepts it, a retry delivers it and the queue is handled.
        sqlx::query("ALTER TABLE plays ALTER COLUMN n TYPE text").execute(&mut db).await.unwrap();
        let (s, r) = app.post(&app.alpha, retry, json!({"limit": 10})).await;
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(
            (r["letters"].as_u64(), r["delivered"].as_u64(), r["refused_again"].as_u64()),
            (Some(1), Some(1), Some(0))
        );
        let ten: String = sqlx::query_scalar("SELECT n FROM plays WHERE n = 'ten'").fetch_one(&mut db).await.unwrap();
        assert_eq!(ten, "ten");
        let (_, r) = app.post(&app.alpha, retry, json!({})).await;
        assert_eq!(r["letters"], 0, "nothing left to retry");
        drop(db);
        app.teardown().await;
        sink_db.remove().await;
    }

    /// The issue's end-to-end check: 100,000 events through the API into PostgreSQL, and exactly
    /// the filtered, projected ones arrive, once each.
    #[tokio::test]
    async fn one_hundred_thousand_events_reach_postgresql_filtered_and_projected() {
        let app = spawn_app_with(Db::Sqlite, |s| s.ingest_max_body_bytes = 8 << 20).await;
        let sink_db = SinkDatabase::with_table(
            "CREATE TABLE plays (event_id uuid PRIMARY KEY, n bigint NOT NULL, market text, email text)",
        )
        .await;
        let (url, mut db) = (sink_db.url.clone(), sink_db.connect().await);
        declare(&app, "streams", "plays", json!({"partitions": 4, "retention_hours": 24})).await;
        declare(
            &app,
            "sinks",
            "dwh",
            json!({"kind": "postgres", "settings": {"table": "plays"}, "secrets": {"url": url}}),
        )
        .await;
        let route = json!({"stream": "plays", "sink": "dwh", "filter": "event.country == \"BR\"",
            "projection": {"keep": ["n", "country", "user.email"], "rename": {"country": "market", "user.email": "email"}, "mask": ["user.email"]},
            "batch_size": 2000, "max_latency_ms": 50});
        declare(&app, "routes", "br-rows", route).await;
        let token = producer_token(&app, "plays").await;
        let events = plays(0..100_000);
        for chunk in events.chunks(10_000) {
            ingest_once(&app, &token, "plays", chunk).await;
        }
        eventually("25,000 rows", || {
            let url = url.clone();
            async move {
                let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM plays").fetch_one(&mut c).await.unwrap() >= 25_000
            }
        })
        .await;
        let (count, distinct, wrong): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT n), count(*) FILTER (WHERE n % 4 <> 0 OR market <> 'BR' OR email <> '****') FROM plays",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert_eq!((count, distinct, wrong), (25_000, 25_000, 0));
        drop(db);
        app.teardown().await;
        sink_db.remove().await;
    }

    #[tokio::test]
    async fn topics_and_jobs_come_back_from_the_database_after_the_data_plane_is_wiped() {
        let mut app = spawn_app(Db::Sqlite).await;
        declare(&app, "streams", "plays", json!({"partitions": 2, "retention_hours": 24})).await;
        declare(&app, "sinks", "lake", json!({"kind": "file", "settings": {"path": "all"}})).await;
        declare(&app, "routes", "all", json!({"stream": "plays", "sink": "lake", "max_latency_ms": 20})).await;
        let token = producer_token(&app, "plays").await;
        ingest(&app, &token, "plays", &plays(0..100)).await;
        eventually("100 events delivered", || async { sink_lines(&app, "all").len() == 100 }).await;
        // A clean stop commits the checkpoints; a restart then delivers nothing twice.
        app.restart(|_| {}).await;
        ingest(&app, &token, "plays", &plays(100..110)).await;
        eventually("110 events delivered", || async { sink_lines(&app, "all").len() == 110 }).await;
        // Wipe the data plane (log and sink output) and start again: the database alone rebuilds it.
        app.restart(|dir| {
            std::fs::remove_dir_all(dir.join("log")).unwrap();
            std::fs::remove_dir_all(dir.join("sinks")).unwrap();
        })
        .await;
        eventually("the topic recreated", || async { app.settings.data_dir.join("log/alpha.plays/1").is_dir() }).await;
        ingest(&app, &token, "plays", &plays(200..205)).await;
        eventually("new events delivered", || async { sink_lines(&app, "all").len() == 5 }).await;
        let j = job(&app, "all").await;
        assert_eq!(j["job"]["phase"], "running");
        app.teardown().await;
    }
}
