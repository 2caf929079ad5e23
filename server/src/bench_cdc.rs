//! `keystone bench cdc`: change data capture from a PostgreSQL with `wal_level=logical` (one the
//! bench starts from the installed server binaries, or `--url`). Measures, on the same server:
//! - the physical ceiling: a plain `COPY` of the rows into a table;
//! - capture: writers insert the rows (multi-row INSERTs from two connections) while a source
//!   job streams them into the embedded log; rows/s until every change is confirmed;
//! - apply: the captured changes delivered by the PostgreSQL sink in `apply_changes` mode;
//! - lag at half the capture rate: writers paced at 50%, each change's time from its commit to
//!   its append to the log (p50, p99).

use keystone_control::egress::EgressPolicy;
use keystone_control::PostgresMode;
use keystone_engine::job::CheckpointError;
use keystone_engine::log::{EmbeddedLog, Log, Retention};
use keystone_engine::sinks::postgres::{PostgresSink, PostgresSinkConfig};
use keystone_engine::sinks::{Sink, SinkEvent};
use keystone_engine::sources::postgres_cdc::{self, CdcTable, PostgresCdcJob};
use keystone_engine::sources::{SourceOffsets, SourceState, SourceStats};
use serde_json::value::RawValue;
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[path = "../../engine/tests/pg_logical/mod.rs"]
mod pg_logical;

const TOPIC: &str = "bench.items";
const PARTITIONS: u32 = 4;

struct NoOffsets;

impl SourceOffsets for NoOffsets {
    async fn load(&self, _: &str) -> Result<Option<SourceState>, CheckpointError> {
        Ok(None)
    }
    async fn save(&self, _: &str, _: &SourceState, _: u64) -> Result<(), CheckpointError> {
        Ok(())
    }
    async fn schema(&self, _: &str, _: &str, _: &str, _: &serde_json::Value) -> Result<(), CheckpointError> {
        Ok(())
    }
    async fn measured(&self, _: &str, _: keystone_engine::sources::SlotMeasures) {}
    async fn report(&self, _: &str, _: keystone_control::JobPhase, _: &str, _: Option<&str>) {}
}

/// Inserts rows `from..to` in statements of 1000 rows, at most `per_second` rows a second.
async fn insert(url: String, from: u64, to: u64, per_second: Option<f64>) -> anyhow::Result<()> {
    let mut db = PgConnection::connect(&url).await?;
    let started = Instant::now();
    let mut at = from;
    while at < to {
        let end = (at + 1000).min(to);
        sqlx::query(
            "INSERT INTO bench_items (id, name, qty, note) SELECT g, 'item ' || g, (g % 97)::int, \
             'a note of some forty characters, roughly' FROM generate_series($1::bigint, $2::bigint) g",
        )
        .bind(at as i64)
        .bind(end as i64 - 1)
        .execute(&mut db)
        .await?;
        at = end;
        if let Some(rate) = per_second {
            let due = Duration::from_secs_f64((at - from) as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    Ok(())
}

/// The position after everything written so far (a transaction's commit ends past it).
async fn marker(db: &mut PgConnection) -> anyhow::Result<u64> {
    let mut tx = db.begin().await?;
    sqlx::query("UPDATE bench_items SET qty = qty WHERE id = 0").execute(&mut *tx).await?;
    let at: i64 = sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0')::bigint").fetch_one(&mut *tx).await?;
    tx.commit().await?;
    Ok(at as u64)
}

async fn caught_up(stats: &SourceStats, at: u64) {
    while stats.confirmed_lsn.load(Ordering::Relaxed) < at {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn cdc(dir: &Path, rows: u64, url: Option<String>) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let local = match url {
        Some(_) => None,
        None => Some(pg_logical::LogicalPostgres::start().await),
    };
    let url = url.unwrap_or_else(|| local.as_ref().expect("started").url());
    let mut db = PgConnection::connect(&url).await?;
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_items, bench_ceiling, bench_copy;
         CREATE TABLE bench_items (id bigint PRIMARY KEY, name text NOT NULL, qty int NOT NULL, note text);
         CREATE TABLE bench_ceiling (id bigint PRIMARY KEY, name text NOT NULL, qty int NOT NULL, note text);
         CREATE TABLE bench_copy (id bigint PRIMARY KEY, name text, qty int, note text, _lsn bigint NOT NULL);
         INSERT INTO bench_items VALUES (0, 'marker', 0, NULL);",
    )
    .execute(&mut db)
    .await?;

    // The ceiling: the same rows by COPY, one stream of text.
    let text: String =
        (1..=rows).map(|g| format!("{g}\titem {g}\t{}\ta note of some forty characters, roughly\n", g % 97)).collect();
    let started = Instant::now();
    let mut copy = db.copy_in_raw("COPY bench_ceiling FROM STDIN").await?;
    copy.send(text.as_bytes()).await?;
    copy.finish().await?;
    let ceiling = rows as f64 / started.elapsed().as_secs_f64();

    let log = Arc::new(EmbeddedLog::open(dir.join("log"), Default::default())?);
    log.ensure_topic(TOPIC, PARTITIONS, Retention { max_age_ms: 86_400_000, max_bytes_per_partition: None }).await?;
    let (slot, publication) = postgres_cdc::owned_names("bench");
    let job = PostgresCdcJob {
        source_id: "bench".into(),
        name: "bench/items".into(),
        url: url.clone(),
        slot,
        publication,
        tables: vec![CdcTable {
            table: "bench_items".into(),
            topic: TOPIC.into(),
            stream: "bench/items".into(),
            partitions: PARTITIONS,
        }],
        batch_max: 2000,
        flush_interval: Duration::from_millis(20),
        heartbeat: Duration::from_secs(10),
    };
    let egress =
        Arc::new(EgressPolicy::new(&["127.0.0.0/8".into(), "::1".into()], &[], true).map_err(anyhow::Error::msg)?);
    let stats = Arc::new(SourceStats::default());
    let cancel = CancellationToken::new();
    let source = tokio::spawn(postgres_cdc::run(
        Arc::new(job.clone()),
        log.clone(),
        Arc::new(NoOffsets),
        egress.clone(),
        stats.clone(),
        cancel.clone(),
    ));
    while !stats.snapshot_done.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Capture at full speed: two writers, then every change confirmed.
    let started = Instant::now();
    let half = rows / 2;
    let writers = [
        tokio::spawn(insert(url.clone(), 1, half + 1, None)),
        tokio::spawn(insert(url.clone(), half + 1, rows + 1, None)),
    ];
    for w in writers {
        w.await??;
    }
    let written = started.elapsed();
    caught_up(&stats, marker(&mut db).await?).await;
    let capture = rows as f64 / started.elapsed().as_secs_f64();
    let insert_rate = rows as f64 / written.as_secs_f64();

    // Apply: the captured changes into the copy, 1000 per batch (as a route's batch).
    let sink = PostgresSink::new(
        PostgresSinkConfig { url: url.clone(), table: "bench_copy".into(), mode: PostgresMode::ApplyChanges },
        &egress,
    )?;
    let mut events = Vec::new();
    for p in 0..PARTITIONS {
        let mut from = 0;
        loop {
            let records = log.read(TOPIC, p, from, 5000).await?;
            let Some(last) = records.last() else { break };
            from = last.offset + 1;
            for r in records {
                let envelope: Value = serde_json::from_slice(&r.value)?;
                events.push(SinkEvent {
                    id: envelope["id"].as_str().unwrap_or_default().to_owned(),
                    ingested_at: envelope["ingested_at"].as_i64().unwrap_or_default(),
                    key: envelope["key"].as_str().map(str::to_owned),
                    partition: p,
                    offset: r.offset,
                    event: RawValue::from_string(envelope["payload"].to_string())?,
                });
            }
        }
    }
    let started = Instant::now();
    for batch in events.chunks(1000) {
        sink.deliver(batch).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let apply = events.len() as f64 / started.elapsed().as_secs_f64();
    let copied: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_copy").fetch_one(&mut db).await?;

    // Lag at half the capture rate, for about five seconds.
    let paced = (capture / 2.0).max(1000.0);
    let n = (paced * 5.0) as u64;
    let base = rows + 1;
    let writers = [
        tokio::spawn(insert(url.clone(), base, base + n / 2, Some(paced / 2.0))),
        tokio::spawn(insert(url.clone(), base + n / 2, base + n, Some(paced / 2.0))),
    ];
    for w in writers {
        w.await??;
    }
    caught_up(&stats, marker(&mut db).await?).await;
    let mut lags: Vec<i64> = Vec::new();
    for p in 0..PARTITIONS {
        let ends = log.end_offsets(TOPIC);
        let mut from = log.resolve(TOPIC, p, keystone_engine::log::StartAt::Earliest).await?;
        while from < ends[p as usize] {
            let records = log.read(TOPIC, p, from, 5000).await?;
            let Some(last) = records.last() else { break };
            from = last.offset + 1;
            for r in records {
                let envelope: Value = serde_json::from_slice(&r.value)?;
                let id = envelope["payload"]["after"]["id"].as_u64().unwrap_or(0);
                if id >= base {
                    lags.push(
                        envelope["ingested_at"].as_i64().unwrap_or(0)
                            - envelope["payload"]["ts_ms"].as_i64().unwrap_or(0),
                    );
                }
            }
        }
    }
    lags.sort_unstable();
    let pct =
        |q: f64| lags.get(((lags.len() as f64 * q) as usize).min(lags.len().saturating_sub(1))).copied().unwrap_or(0);
    cancel.cancel();
    let _ = source.await;
    postgres_cdc::drop_owned(&url, &egress, &job.slot, &job.publication).await?;

    println!("keystone bench cdc: {rows} rows, {PARTITIONS} partitions");
    println!("  COPY into a table (the ceiling)           {ceiling:>10.0} rows/s");
    println!("  INSERT by two writers                     {insert_rate:>10.0} rows/s");
    println!("  captured into the log (to confirmed)      {capture:>10.0} rows/s");
    println!("  applied by the apply_changes sink         {apply:>10.0} rows/s ({copied} rows in the copy)");
    println!(
        "  lag, commit to log, at {paced:.0} rows/s    p50 {} ms, p99 {} ms ({} changes)",
        pct(0.5),
        pct(0.99),
        lags.len()
    );
    anyhow::ensure!(copied as u64 == rows + 1, "the copy has {copied} rows, not {}", rows + 1);
    Ok(())
}
