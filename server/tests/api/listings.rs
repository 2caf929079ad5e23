//! Issue 22 (a first slice): the jobs listing is filtered and paged in the database, with counts.

use super::delivery::{declare, eventually};
use super::*;

async fn page(app: &TestApp, token: &str, query: &str) -> (StatusCode, Option<u64>, Value) {
    let resp = app.http.get(format!("{}/api/v1/jobs{query}", app.base)).bearer_auth(token).send().await.unwrap();
    let status = resp.status();
    let total = resp.headers().get("x-total-count").and_then(|v| v.to_str().ok()?.parse().ok());
    (status, total, resp.json().await.unwrap())
}

fn routes(list: &Value) -> Vec<&str> {
    list.as_array().unwrap().iter().map(|j| j["route"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn the_jobs_listing_is_paged_filtered_and_counted_per_caller() {
    let app = spawn_app(Db::Sqlite).await;
    declare(&app, "streams", "plays", stream(1)).await;
    declare(&app, "sinks", "lake", json!({"kind": "file", "settings": {"path": "p"}})).await;
    for r in ["r1", "r2", "r3", "r4", "r5"] {
        declare(&app, "routes", r, json!({"stream": "plays", "sink": "lake"})).await;
    }
    security::declare_in(&app, &app.beta, "beta", "streams", "clicks", stream(1)).await;
    let sink = json!({"kind": "file", "settings": {"path": "c"}});
    security::declare_in(&app, &app.beta, "beta", "sinks", "lake", sink).await;
    let route = json!({"stream": "clicks", "sink": "lake"});
    security::declare_in(&app, &app.beta, "beta", "routes", "b1", route).await;
    let counts = |token: String, query: &'static str| {
        let app = &app;
        async move { app.get(&token, &format!("/api/v1/jobs/counts{query}")).await.1 }
    };
    eventually("five running jobs of alpha", || async {
        counts(app.alpha.clone(), "").await["by_phase"]["running"] == 5
    })
    .await;

    // Pages in order, each with the total.
    let (s, total, first) = page(&app, &app.alpha, "?limit=2").await;
    assert_eq!((s, total, routes(&first)), (StatusCode::OK, Some(5), vec!["r1", "r2"]));
    let (_, _, next) = page(&app, &app.alpha, "?limit=2&offset=2").await;
    assert_eq!(routes(&next), ["r3", "r4"]);
    let (_, total, last) = page(&app, &app.alpha, "?limit=2&offset=4").await;
    assert_eq!((total, routes(&last)), (Some(5), vec!["r5"]));

    // A phase filter, and counts by phase that ignore it.
    let paused = json!({"state": "paused", "reason": "listing test"});
    assert_eq!(app.post(&app.alpha, "/api/v1/teams/alpha/routes/r5/state", paused).await.0, StatusCode::OK);
    eventually("r5 paused", || async { counts(app.alpha.clone(), "").await["by_phase"]["paused"] == 1 }).await;
    let (_, total, only) = page(&app, &app.alpha, "?phase=paused").await;
    assert_eq!((total, routes(&only)), (Some(1), vec!["r5"]));
    assert_eq!(counts(app.alpha.clone(), "").await, json!({"total": 5, "by_phase": {"running": 4, "paused": 1}}));

    // Each caller counts and lists only what their teams may read.
    eventually("beta's job", || async { counts(app.beta.clone(), "").await["total"] == 1 }).await;
    let (_, total, theirs) = page(&app, &app.beta, "").await;
    assert_eq!((total, routes(&theirs)), (Some(1), vec!["b1"]));
    let (_, total, none) = page(&app, &app.beta, "?team=alpha").await;
    assert_eq!((total, none), (Some(0), json!([])));
    assert_eq!(counts(app.beta.clone(), "?team=alpha").await, json!({"total": 0, "by_phase": {}}));

    // Bad filters are refused with the field that is wrong.
    for (query, field) in
        [("?phase=sleeping", "phase"), ("?limit=0", "limit"), ("?limit=1001", "limit"), ("?offset=-1", "offset")]
    {
        let (s, _, err) = page(&app, &app.alpha, query).await;
        assert_eq!((s, err["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some(field)), "{query}");
    }
    app.teardown().await;
}
