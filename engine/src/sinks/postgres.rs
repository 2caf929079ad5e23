//! PostgreSQL sink: batched, idempotent upserts into a user's table.
//!
//! The column mapping comes from the route's projection: each top-level field of the projected
//! event fills the column of the same name (PostgreSQL's own `jsonb_populate_recordset` does the
//! typing), fields without a column are ignored, and the event id goes to the `event_id` column,
//! which must carry a unique index. A batch is one statement with `ON CONFLICT (event_id) DO
//! NOTHING`, so a redelivered batch writes nothing twice: effectively once. In `upsert` mode
//! the conflict replaces the row instead (`DO UPDATE`), so a processor's updating results leave
//! each key's latest row; within a batch only an id's last row is written (PostgreSQL refuses
//! to update one row twice in a statement).
//!
//! In `apply_changes` mode the events are a CDC source's changes, applied by the source's primary
//! key (`postgres_apply`).
//!
//! A data error (SQLSTATE class 22, or 23 integrity) is the events' fault: the batch is retried
//! row by row and only the rows PostgreSQL refuses go to the dead-letter queue. Everything else
//! (connection lost, table missing, permissions) is transient: the job retries and shows the error.

use super::{required_secret, ConfigError, Sink, SinkError, SinkEvent};
use keystone_control::egress::EgressPolicy;
use keystone_control::{PostgresMode, PostgresSettings, SinkErrorKind};
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Row;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

#[derive(Clone, PartialEq, Eq)]
pub struct PostgresSinkConfig {
    /// Connection URL, with its password: a secret, so no `Debug`.
    pub url: String,
    pub table: String,
    pub mode: PostgresMode,
}

impl PostgresSinkConfig {
    pub fn new(
        settings: &PostgresSettings,
        secrets: &BTreeMap<String, String>,
    ) -> Result<PostgresSinkConfig, ConfigError> {
        Ok(PostgresSinkConfig {
            url: required_secret(secrets, "url")?.to_owned(),
            table: settings.table.clone(),
            mode: settings.mode,
        })
    }
}

pub struct PostgresSink {
    table: String,
    mode: PostgresMode,
    pool: PgPool,
    /// The table's columns, read on first delivery (a job restart re-reads them).
    columns: OnceCell<Vec<String>>,
    /// In `apply_changes` mode: the columns and when they were read, read again when a change
    /// carries a column they lack (a source's table grew one, and so may the target).
    /// With when they were read and whether a column they lacked was why.
    apply_columns: tokio::sync::Mutex<Option<(std::time::Instant, Arc<Vec<String>>, bool)>>,
}

/// How often a target's columns are read again at most, while changes carry a column it lacks.
const COLUMNS_REREAD: Duration = Duration::from_secs(2);

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Whether PostgreSQL refused the rows themselves (bad value, constraint) rather than failed.
fn is_data_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23")))
}

/// A failure that is not the rows' fault, by what went wrong.
fn transient(e: &sqlx::Error) -> SinkError {
    let kind = match e {
        sqlx::Error::PoolTimedOut => SinkErrorKind::Timeout,
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
            SinkErrorKind::Connection
        }
        // 42P01 undefined table, 42703 undefined column: the target is not there (yet).
        sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("42P01" | "42703")) => {
            SinkErrorKind::Unavailable
        }
        _ => SinkErrorKind::Server,
    };
    SinkError::transient(kind, describe(e))
}

fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => format!("{} ({})", d.message(), d.code().unwrap_or_default()),
        other => other.to_string(),
    }
}

impl PostgresSink {
    pub fn new(config: PostgresSinkConfig, egress: &EgressPolicy) -> Result<PostgresSink, ConfigError> {
        let unusable =
            |e: &dyn std::fmt::Display| ConfigError::new("secrets.url", format!("is not a usable connection URL: {e}"));
        let mut options: PgConnectOptions = config.url.parse().map_err(|e| unusable(&e))?;
        // Resolved and checked once, here: the pool then connects to the checked address only,
        // so a name that later resolves elsewhere cannot move the connections.
        let host = options.get_host().to_owned();
        if !host.starts_with('/') {
            let addrs = crate::egress::checked_addrs(egress, &host, options.get_port())
                .map_err(|e| ConfigError::new("secrets.url", e.to_string()))?;
            if let Some(a) = addrs.first() {
                options = options.host(&a.ip().to_string());
            }
        } else {
            return Err(ConfigError::new("secrets.url", "must name a host: a local socket is the platform's own"));
        }
        let pool =
            PgPoolOptions::new().max_connections(2).acquire_timeout(Duration::from_secs(10)).connect_lazy_with(options);
        Ok(PostgresSink {
            table: config.table,
            mode: config.mode,
            pool,
            columns: OnceCell::new(),
            apply_columns: tokio::sync::Mutex::new(None),
        })
    }

    /// The table's columns, which must include `event_id` in the modes keyed by event id.
    async fn columns(&self) -> Result<&[String], SinkError> {
        self.table_columns(Some("event_id")).await
    }

    /// The table's columns as the database has them now.
    async fn read_columns(&self) -> Result<Vec<String>, SinkError> {
        let rows = sqlx::query(
            "SELECT column_name::text AS c FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(&self.table)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| transient(&e))?;
        let cols: Vec<String> = rows.iter().filter_map(|r| r.try_get("c").ok()).collect();
        if cols.is_empty() {
            return Err(SinkError::transient(
                SinkErrorKind::Unavailable,
                format!("table {} does not exist", self.table),
            ));
        }
        Ok(cols)
    }
}

impl super::postgres_apply::TargetColumns for PostgresSink {
    /// The columns `apply_changes` writes: read again when `stale` and last read a while ago.
    async fn columns(&self, stale: bool) -> Result<Arc<Vec<String>>, SinkError> {
        let mut cached = self.apply_columns.lock().await;
        match &*cached {
            // Read again at once the first time; while the table still lacks a column changes
            // carry (left out on purpose), at most every `COLUMNS_REREAD`.
            Some((_, cols, _)) if !stale => Ok(cols.clone()),
            Some((at, cols, true)) if at.elapsed() < COLUMNS_REREAD => Ok(cols.clone()),
            _ => {
                let cols = Arc::new(self.read_columns().await?);
                *cached = Some((std::time::Instant::now(), cols.clone(), stale));
                Ok(cols)
            }
        }
    }
}

impl PostgresSink {
    async fn table_columns(&self, required: Option<&str>) -> Result<&[String], SinkError> {
        let cols = self
            .columns
            .get_or_try_init(|| async {
                let cols = self.read_columns().await?;
                if let Some(required) = required.filter(|r| !cols.iter().any(|c| c == r)) {
                    return Err(SinkError::transient(
                        SinkErrorKind::Unavailable,
                        format!("table {} has no {required} column", self.table),
                    ));
                }
                Ok(cols)
            })
            .await?;
        Ok(cols)
    }

    /// Inserts rows (see [`row`]) in one statement.
    async fn insert(&self, columns: &[String], rows: &[&Value]) -> Result<(), sqlx::Error> {
        // Only columns some event fills, so the others keep their defaults.
        let used: Vec<&String> = columns.iter().filter(|c| rows.iter().any(|r| r.get(c.as_str()).is_some())).collect();
        let list = used.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
        let table = quote(&self.table);
        let replaced: Vec<String> =
            used.iter().filter(|c| c.as_str() != "event_id").map(|c| format!("{0} = EXCLUDED.{0}", quote(c))).collect();
        let on_conflict = match self.mode {
            PostgresMode::Upsert if !replaced.is_empty() => format!("DO UPDATE SET {}", replaced.join(", ")),
            _ => "DO NOTHING".to_owned(),
        };
        let sql = format!(
            "INSERT INTO {table} ({list}) SELECT {list} FROM jsonb_populate_recordset(NULL::{table}, $1::jsonb) \
             ON CONFLICT (event_id) {on_conflict}"
        );
        let rows = serde_json::to_string(rows).expect("rows serialise");
        sqlx::query(&sql).bind(rows).execute(&self.pool).await?;
        Ok(())
    }
}

/// An event as a row: its fields (or `value`, for an event that is not an object) and its id as
/// `event_id`. `Err` for an event with no JSON tree here (a number beyond f64's range): no retry
/// could write it.
fn row(e: &SinkEvent) -> Result<Value, String> {
    let mut row = match e.event_value() {
        Ok(Value::Object(m)) => m,
        Ok(other) => Map::from_iter([("value".to_owned(), other)]),
        Err(err) => return Err(format!("the event cannot be read as a row: {err}")),
    };
    row.insert("event_id".into(), Value::String(e.id.clone()));
    Ok(Value::Object(row))
}

impl Sink for PostgresSink {
    async fn deliver(&self, batch: &[SinkEvent]) -> Result<(), SinkError> {
        if self.mode == PostgresMode::ApplyChanges {
            return super::postgres_apply::apply_changes(
                &self.pool,
                &self.table,
                self,
                batch,
                is_data_error,
                transient,
                describe,
            )
            .await;
        }
        let columns = self.columns().await?;
        let mut refused = Vec::new();
        let mut rows = Vec::with_capacity(batch.len());
        for (i, e) in batch.iter().enumerate() {
            match row(e) {
                Ok(r) => rows.push((i, r)),
                Err(why) => refused.push((i, why)),
            }
        }
        if self.mode == PostgresMode::Upsert {
            // An id's last row wins (the batch is in order); its earlier rows are superseded.
            let mut last: BTreeMap<&str, usize> = BTreeMap::new();
            for (at, e) in batch.iter().enumerate() {
                last.insert(e.id.as_str(), at);
            }
            rows.retain(|(i, _)| last.get(batch[*i].id.as_str()) == Some(i));
        }
        let all: Vec<&Value> = rows.iter().map(|(_, r)| r).collect();
        match self.insert(columns, &all).await {
            Ok(()) => {}
            Err(e) if is_data_error(&e) => {
                for (i, r) in &rows {
                    match self.insert(columns, &[r]).await {
                        Ok(()) => {}
                        Err(e) if is_data_error(&e) => refused.push((*i, describe(&e))),
                        Err(e) => return Err(transient(&e)),
                    }
                }
                refused.sort_by_key(|(i, _)| *i);
            }
            Err(e) => return Err(transient(&e)),
        }
        SinkError::refusing(refused)
    }
}
