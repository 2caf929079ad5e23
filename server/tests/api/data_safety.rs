//! Issue 26, data safety: an acknowledged event is never lost, a refused one never half-kept.

use super::security::{declare_in, producer_token_of, send, until};
use super::*;
use std::time::{Duration, Instant};

/// A small tmpfs mounted for the test's lifetime (the test runs as root, as CI does here).
struct Mounted(std::path::PathBuf);
impl Mounted {
    fn tmpfs(at: &std::path::Path, size: &str) -> Mounted {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mounting a tmpfs failed: {}", String::from_utf8_lossy(&out.stderr));
        Mounted(at.to_owned())
    }
}
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Item 11: with the log's filesystem full, ingest answers 503 with Retry-After and keeps nothing
/// of the request; once space is back the same process takes events again, and the route
/// delivers exactly the acknowledged ones.
#[tokio::test]
async fn a_full_disk_answers_503_and_ingest_resumes_alone_once_space_is_back() {
    let mut mount = None;
    let app = spawn_app_with(Db::Sqlite, |s| mount = Some(Mounted::tmpfs(&s.data_dir.join("log"), "1m"))).await;
    let _mount = mount.unwrap();
    declare_in(&app, &app.alpha, "alpha", "streams", "plays", stream(1)).await;
    declare_in(&app, &app.alpha, "alpha", "sinks", "lake", json!({"kind": "file", "settings": {"path": "lake"}})).await;
    declare_in(
        &app,
        &app.alpha,
        "alpha",
        "routes",
        "all",
        json!({"stream": "plays", "sink": "lake", "max_latency_ms": 20}),
    )
    .await;
    let producer = producer_token_of(&app, &app.alpha, "alpha", "plays").await;
    send(&app, &producer, "plays", 0..10).await;

    // Fill the log's filesystem to the last byte.
    let filler = app.settings.data_dir.join("log/filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![7u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    // What is left (less than a page) may still take a request or two: post until refused.
    let mut acked: Vec<u64> = (0..10).collect();
    let mut refused = None;
    for round in 0..50u64 {
        let ns = (100 + round * 20)..(120 + round * 20);
        let body: String = ns.clone().map(|n| format!("{}\n", json!({ "n": n, "pad": "x".repeat(200) }))).collect();
        let resp = app
            .http
            .post(format!("{}/ingest/plays", app.base))
            .bearer_auth(&producer)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::OK {
            acked.extend(ns);
            continue;
        }
        refused = Some(resp);
        break;
    }
    let refused = refused.expect("a full disk never refused an append");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()).as_deref(), Some("5"));
    let error: Value = refused.json().await.unwrap();
    assert!(error.to_string().contains("out of space"), "{error}");

    std::fs::remove_file(&filler).unwrap();
    send(&app, &producer, "plays", 10..20).await;
    acked.extend(10..20);
    acked.sort();
    let sinks = app.settings.data_dir.join("sinks/alpha/lake");
    until("every acknowledged event delivered", || super::security::ns_under(&sinks).len() >= acked.len()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(super::security::ns_under(&sinks), acked, "every acknowledged event and none of the refused request");
    app.teardown().await;
}

/// Item 15: a stream deleted and declared again under the same name starts empty (its events
/// live in a topic of their own), and the deleted stream's topic is removed once its retention
/// has run out since the deletion.
#[tokio::test]
async fn a_re_created_stream_starts_empty_and_the_old_topic_goes_after_its_retention() {
    let app = spawn_app(Db::Sqlite).await;
    let sinks = app.settings.data_dir.join("sinks/alpha");
    declare_in(&app, &app.alpha, "alpha", "streams", "plays", stream(1)).await;
    declare_in(&app, &app.alpha, "alpha", "sinks", "one", json!({"kind": "file", "settings": {"path": "one"}})).await;
    declare_in(
        &app,
        &app.alpha,
        "alpha",
        "routes",
        "all",
        json!({"stream": "plays", "sink": "one", "max_latency_ms": 20}),
    )
    .await;
    let producer = producer_token_of(&app, &app.alpha, "alpha", "plays").await;
    send(&app, &producer, "plays", 0..5).await;
    until("the first stream's events delivered", || super::security::ns_under(&sinks.join("one")).len() >= 5).await;
    for path in ["/api/v1/teams/alpha/routes/all", "/api/v1/teams/alpha/streams/plays"] {
        let (s, body) = app.delete(&app.alpha, path).await;
        assert!(s.is_success(), "{path}: {s} {body}");
    }

    declare_in(&app, &app.alpha, "alpha", "streams", "plays", stream(1)).await;
    declare_in(&app, &app.alpha, "alpha", "sinks", "two", json!({"kind": "file", "settings": {"path": "two"}})).await;
    let route = json!({"stream": "plays", "sink": "two", "max_latency_ms": 20, "config": {"job.start_at": "earliest"}});
    declare_in(&app, &app.alpha, "alpha", "routes", "again", route).await;
    let producer = producer_token_of(&app, &app.alpha, "alpha", "plays").await;
    send(&app, &producer, "plays", 100..103).await;
    until("the new stream's events delivered", || super::security::ns_under(&sinks.join("two")).len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(super::security::ns_under(&sinks.join("two")), [100, 101, 102], "none of the deleted stream's events");

    // The old topic is kept for the deleted stream's retention (24 hours)...
    let log = app.settings.data_dir.join("log");
    assert!(log.join("alpha.plays").is_dir() && log.join("alpha.plays_1").is_dir());
    // ...and removed once that has passed since the deletion (the deletion moved back in time).
    let old = app.store.deleted_streams().await.unwrap();
    assert_eq!(old.len(), 1);
    let day = 24 * 3_600_000i64;
    sqlx::query("UPDATE objects SET updated_at = updated_at - $1 WHERE id = $2")
        .bind(day + 1000)
        .bind(&old[0].0.id)
        .execute(app.store.pool())
        .await
        .unwrap();
    // Any write makes the reconciler look again.
    declare_in(&app, &app.alpha, "alpha", "streams", "nudge", stream(1)).await;
    until("the deleted stream's topic removed", || !log.join("alpha.plays").exists()).await;
    assert!(log.join("alpha.plays_1").is_dir(), "the live stream's topic stays");
    send(&app, &producer, "plays", 103..104).await;
    app.teardown().await;
}

/// Item 18: two `keystone serve` processes on one PostgreSQL and a real Kafka-protocol broker
/// (tansu, whose AlterConfigs answers UnsupportedFeature). The process that did not create the
/// stream's topic must still ingest and reconcile; when the leader is killed with SIGKILL, the
/// other takes the lease and delivers every acknowledged event. The takeover time is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_leader_is_killed_the_other_server_delivers_every_event_on_a_real_broker() {
    use super::delivery::{
        delivered_ns, eventually, free_port, ingest, keystone_process, plays, producer_token, until_listening, Tansu,
    };
    let Some(broker) = Tansu::start().await else { return };
    let kafka = keystone::settings::KafkaSettings {
        brokers: broker.brokers.clone(),
        manage_topics: true,
        replication_factor: 1,
        properties: Default::default(),
        session_timeout_ms: 6_000,
    };
    // This test's own server only ingests (no lease, no jobs): the two processes below compete.
    let app = spawn_app_with(Db::Postgres, |s| {
        s.kafka = Some(kafka);
        s.role = keystone::settings::ProcessRole::Ingest;
    })
    .await;
    declare_in(&app, &app.alpha, "alpha", "streams", "plays", stream(2)).await;
    declare_in(&app, &app.alpha, "alpha", "sinks", "lake", json!({"kind": "file", "settings": {"path": "failover"}}))
        .await;
    let route = json!({"stream": "plays", "sink": "lake", "max_latency_ms": 20, "batch_size": 100});
    declare_in(&app, &app.alpha, "alpha", "routes", "all", route).await;
    let serve = |name: &str| {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let env = [
            ("KEYSTONE_LISTEN", listen.as_str()),
            ("KEYSTONE_KAFKA__MANAGE_TOPICS", "true"),
            ("KEYSTONE_KAFKA__REPLICATION_FACTOR", "1"),
            ("KEYSTONE_RECONCILER_LEASE_MS", "3000"),
            ("KEYSTONE_EGRESS__ALLOW", "127.0.0.0/8"),
        ];
        (keystone_process(&app, &broker.brokers, name, &["serve"], &env), port)
    };
    let holder = || async { app.store.lease("reconciler").await.unwrap().map(|l| l.holder).unwrap_or_default() };
    let (leader, port_a) = serve("serve-a");
    until_listening(port_a, "serve-a").await;
    eventually("serve-a to lead", || async { holder().await.contains("serve-a") }).await;
    let (_standby, port_b) = serve("serve-b");
    until_listening(port_b, "serve-b").await;

    let token = producer_token(&app, "plays").await;
    ingest(&app, &token, "plays", &plays(0..600)).await;
    eventually("the leader delivering", || async { !delivered_ns(&app, "failover").is_empty() }).await;
    drop(leader); // SIGKILL
    let killed = Instant::now();
    ingest(&app, &token, "plays", &plays(600..1200)).await;
    eventually("every acknowledged event delivered after the takeover", || async {
        delivered_ns(&app, "failover").len() == 1200
    })
    .await;
    let takeover = killed.elapsed();
    assert_eq!(delivered_ns(&app, "failover"), (0..1200).collect(), "none lost");
    assert!(holder().await.contains("serve-b"), "serve-b holds the lease: {}", holder().await);
    eprintln!(
        "takeover: every acknowledged event delivered {:.1} s after the leader's SIGKILL",
        takeover.as_secs_f64()
    );
    app.teardown().await;
}
