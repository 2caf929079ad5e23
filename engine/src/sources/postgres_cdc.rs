//! PostgreSQL change data capture: a publication and a logical replication slot (`pgoutput`) on
//! the source database, read through `pg_walstream` (pure Rust: pgoutput decoding, the slot's
//! exported snapshot and its hand-over to streaming), each change appended to its table's stream.
//!
//! No loss: the slot's confirmed position moves only after every change up to a commit is durably
//! in the log, so a restart (or kill -9) resumes from the slot and repeats at most what was
//! appended but not yet confirmed; a repeat carries the same id and position (`change`).
//!
//! The initial snapshot reads every table through the snapshot the slot exported when it was
//! created, so streaming starts exactly where the snapshot ends. A snapshot cannot be resumed
//! (a new transaction sees a different point in time): one interrupted before it was recorded
//! complete is started over with a new slot, its rows sent again (with a newer position, so an
//! applier converges on the same rows).

use super::change::{typed_value, Change, Op};
use super::schema::{change_schema, Column};
use super::{SlotMeasures, SourceError, SourceOffsets, SourceState, SourceStats};
use crate::envelope::EnvelopeFrame;
use crate::log::{Log, NewRecord};
use keystone_control::egress::EgressPolicy;
use pg_walstream::{
    ChangeEvent, ColumnValue, EventType, LogicalReplicationStream, ReplicationError, ReplicationStreamConfig, RowData,
    SnapshotOutcome,
};
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One captured table and the stream its changes go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdcTable {
    /// `schema.table`.
    pub table: String,
    /// The stream's topic, `team/name` and partition count.
    pub topic: String,
    pub stream: String,
    pub partitions: u32,
}

/// Everything a PostgreSQL CDC job needs.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresCdcJob {
    pub source_id: String,
    /// `team/name`, for logs.
    pub name: String,
    /// The source database's URL, with its password: a secret, so no `Debug`.
    pub url: String,
    /// The replication slot and publication Keystone owns on the source.
    pub slot: String,
    pub publication: String,
    pub tables: Vec<CdcTable>,
    /// Most changes buffered before they are appended.
    pub batch_max: usize,
    /// Longest a change waits in the buffer.
    pub flush_interval: Duration,
    /// After this long without a change, a heartbeat (a logical message in a transaction of its
    /// own) is written on the source: its commit lets the slot's position advance on a quiet
    /// database, so the slot does not hold back WAL written by other databases of its server.
    pub heartbeat: Duration,
}

/// The slot and publication names Keystone gives a source: lowercase, from its id (63 bytes at
/// most, as PostgreSQL allows).
pub fn owned_names(source_id: &str) -> (String, String) {
    let id: String = source_id.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect();
    let id = &id[..id.len().min(40)];
    (format!("keystone_{id}"), format!("keystone_{id}"))
}

/// Connection settings for the source, the host checked against the egress policy and pinned
/// to the checked address (a name that later resolves elsewhere cannot move the connection).
fn connect_options(url: &str, egress: &EgressPolicy) -> Result<PgConnectOptions, SourceError> {
    let mut options: PgConnectOptions =
        url.parse().map_err(|e| SourceError::Config(format!("secrets.url is not a usable connection URL: {e}")))?;
    let host = options.get_host().to_owned();
    if host.starts_with('/') {
        return Err(SourceError::Config("secrets.url must name a host: a local socket is the platform's own".into()));
    }
    let addrs = crate::egress::checked_addrs(egress, &host, options.get_port())
        .map_err(|e| SourceError::Config(format!("secrets.url: {e}")))?;
    if let Some(a) = addrs.first() {
        options = options.host(&a.ip().to_string());
    }
    Ok(options)
}

/// The replication connection's conninfo (libpq keywords; values quoted).
fn replication_conninfo(o: &PgConnectOptions, password: Option<&str>) -> String {
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut parts = vec![
        format!("host={}", quote(o.get_host())),
        format!("port={}", o.get_port()),
        format!("user={}", quote(o.get_username())),
        format!("dbname={}", quote(o.get_database().unwrap_or(o.get_username()))),
        "replication=database".to_owned(),
        "sslmode=prefer".to_owned(),
        "connect_timeout=10".to_owned(),
    ];
    if let Some(p) = password {
        parts.push(format!("password={}", quote(p)));
    }
    parts.join(" ")
}

fn password_of(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    Some(percent_encoding::percent_decode_str(parsed.password()?).decode_utf8_lossy().into_owned())
}

/// A one-connection pool to the source, for catalog reads and slot management.
async fn admin_pool(options: PgConnectOptions) -> Result<PgPool, SourceError> {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|e| db_error("connecting to the source", e))
}

fn db_error(what: &str, e: sqlx::Error) -> SourceError {
    let detail = match &e {
        sqlx::Error::Database(d) => format!("{} ({})", d.message(), d.code().unwrap_or_default()),
        other => other.to_string(),
    };
    SourceError::Source(format!("{what}: {detail}"))
}

fn repl_error(what: &str, e: ReplicationError) -> SourceError {
    SourceError::Source(format!("{what}: {e}"))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `schema.table` as a quoted SQL name (`public` when no schema is given).
pub fn quoted_table(table: &str) -> String {
    let (schema, name) = table.split_once('.').unwrap_or(("public", table));
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// What the source's catalog says of a captured table: its primary key's columns, and its
/// columns in order.
struct Shape {
    key: Vec<String>,
    columns: Vec<Column>,
}

async fn table_shapes(pool: &PgPool, tables: &[CdcTable]) -> Result<Vec<Shape>, SourceError> {
    let mut shapes = Vec::with_capacity(tables.len());
    for t in tables {
        let (schema, name) = t.table.split_once('.').unwrap_or(("public", &t.table));
        let exists = sqlx::query("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')")
            .bind(schema)
            .bind(name)
            .fetch_optional(pool)
            .await
            .map_err(|e| db_error("reading the source's catalog", e))?;
        if exists.is_none() {
            return Err(SourceError::Config(format!("table {:?} does not exist in the source database", t.table)));
        }
        let relation = format!("{}.{}", quote_ident(schema), quote_ident(name));
        let rows = sqlx::query(
            "SELECT a.attname::text AS name FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
        )
        .bind(&relation)
        .fetch_all(pool)
        .await
        .map_err(|e| db_error("reading the source's primary keys", e))?;
        let key: Vec<String> = rows.iter().filter_map(|r| r.try_get("name").ok()).collect();
        if key.is_empty() {
            return Err(SourceError::Config(format!(
                "table {:?} has no primary key: changes could not be keyed or applied (add one)",
                t.table
            )));
        }
        let rows = sqlx::query(
            "SELECT attname::text AS name, atttypid::oid::bigint AS type_oid FROM pg_attribute \
             WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        )
        .bind(&relation)
        .fetch_all(pool)
        .await
        .map_err(|e| db_error("reading the source's columns", e))?;
        let columns = rows
            .iter()
            .filter_map(|r| {
                let type_oid: i64 = r.try_get("type_oid").ok()?;
                Some(Column { name: r.try_get("name").ok()?, type_oid: type_oid as u32 })
            })
            .collect();
        shapes.push(Shape { key, columns });
    }
    Ok(shapes)
}

/// Creates the publication for exactly the captured tables, or sets its tables.
async fn ensure_publication(pool: &PgPool, job: &PostgresCdcJob) -> Result<(), SourceError> {
    let list = job.tables.iter().map(|t| quoted_table(&t.table)).collect::<Vec<_>>().join(", ");
    let exists = sqlx::query("SELECT 1 FROM pg_publication WHERE pubname = $1")
        .bind(&job.publication)
        .fetch_optional(pool)
        .await
        .map_err(|e| db_error("reading the source's publications", e))?
        .is_some();
    let sql = if exists {
        format!("ALTER PUBLICATION {} SET TABLE {list}", quote_ident(&job.publication))
    } else {
        format!("CREATE PUBLICATION {} FOR TABLE {list}", quote_ident(&job.publication))
    };
    sqlx::raw_sql(&sql).execute(pool).await.map_err(|e| db_error("creating the publication", e))?;
    Ok(())
}

async fn slot_exists(pool: &PgPool, slot: &str) -> Result<bool, SourceError> {
    Ok(sqlx::query("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1")
        .bind(slot)
        .fetch_optional(pool)
        .await
        .map_err(|e| db_error("reading the source's replication slots", e))?
        .is_some())
}

async fn drop_slot(pool: &PgPool, slot: &str) -> Result<(), SourceError> {
    sqlx::query("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1")
        .bind(slot)
        .execute(pool)
        .await
        .map_err(|e| db_error("dropping the replication slot", e))?;
    Ok(())
}

/// Removes what Keystone created on the source (the slot, then the publication): when the
/// source is deleted.
pub async fn drop_owned(url: &str, egress: &EgressPolicy, slot: &str, publication: &str) -> Result<(), SourceError> {
    let pool = admin_pool(connect_options(url, egress)?).await?;
    drop_slot(&pool, slot).await?;
    sqlx::raw_sql(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(publication)))
        .execute(&pool)
        .await
        .map_err(|e| db_error("dropping the publication", e))?;
    Ok(())
}

/// What the slot holds back on the source and how far behind it is (nothing without a slot).
pub async fn measure_slot(url: &str, egress: &EgressPolicy, slot: &str) -> Result<SlotMeasures, SourceError> {
    let pool = admin_pool(connect_options(url, egress)?).await?;
    slot_measures(&pool, slot).await
}

/// How many bytes of WAL the slot holds back on the source (what a stuck slot costs its disk),
/// and how far its confirmed position is behind the WAL.
async fn slot_measures(pool: &PgPool, slot: &str) -> Result<SlotMeasures, SourceError> {
    let row = sqlx::query(
        "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint AS retained, \
         (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint AS behind FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await
    .map_err(|e| db_error("reading the slot's position", e))?;
    let column = |name: &str| row.as_ref().and_then(|r| r.try_get::<Option<i64>, _>(name).ok().flatten());
    Ok(SlotMeasures { retained_bytes: column("retained"), lag_bytes: column("behind"), lag_ms: None })
}

/// The rows the planner expects in the tables (`None` if one was never analysed).
async fn estimate_rows(pool: &PgPool, tables: &[CdcTable]) -> Option<u64> {
    let mut total = 0u64;
    for t in tables {
        let n: f32 = sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE oid = $1::regclass")
            .bind(quoted_table(&t.table))
            .fetch_one(pool)
            .await
            .ok()?;
        if n < 0.0 {
            return None;
        }
        total += n as u64;
    }
    Some(total)
}

/// A captured table as the decoder sees it.
struct Captured {
    /// Index into the job's tables.
    at: usize,
    /// Column types by name.
    types: HashMap<String, u32>,
}

/// Builds typed changes from decoded rows and appends them, per table, in batches.
struct ChangeBuffer<'a, L> {
    job: &'a PostgresCdcJob,
    log: &'a L,
    /// Per table: the envelope text its records share (its stream, the append time), rebuilt
    /// when the millisecond changes.
    frames: Vec<(i64, EnvelopeFrame)>,
    keys: Vec<Vec<String>>,
    by_name: HashMap<String, usize>,
    buffered: Vec<Vec<NewRecord>>,
    count: usize,
    stats: &'a SourceStats,
    /// Per table: the stream schema last made current (see `describe`).
    schemas: Vec<Option<Value>>,
    /// Told of each append: a topic, its events and bytes (see `SourceOffsets::appended`).
    appended: &'a (dyn Fn(&str, u64, u64) + Send + Sync),
}

impl<'a, L: Log> ChangeBuffer<'a, L> {
    fn new(
        job: &'a PostgresCdcJob,
        log: &'a L,
        keys: Vec<Vec<String>>,
        stats: &'a SourceStats,
        appended: &'a (dyn Fn(&str, u64, u64) + Send + Sync),
    ) -> Self {
        let by_name = job.tables.iter().enumerate().map(|(i, t)| (qualified(&t.table), i)).collect();
        ChangeBuffer {
            job,
            log,
            frames: job.tables.iter().map(|t| (0, EnvelopeFrame::new(&t.stream, 0, &BTreeMap::new()))).collect(),
            keys,
            by_name,
            buffered: vec![Vec::new(); job.tables.len()],
            count: 0,
            stats,
            schemas: vec![None; job.tables.len()],
            appended,
        }
    }

    /// Makes table `at`'s stream schema describe `columns` before a change of that shape is
    /// appended; what is buffered (of the shape before) is appended first.
    async fn describe<O: SourceOffsets>(
        &mut self,
        offsets: &O,
        at: usize,
        columns: &[Column],
    ) -> Result<(), SourceError> {
        let t = &self.job.tables[at];
        let schema = change_schema(&t.table, columns, &self.keys[at]);
        if self.schemas[at].as_ref() == Some(&schema) {
            return Ok(());
        }
        self.flush().await?;
        offsets.schema(&self.job.source_id, &t.stream, &t.table, &schema).await?;
        self.schemas[at] = Some(schema);
        Ok(())
    }

    fn table_of(&self, namespace: &str, name: &str) -> Option<usize> {
        self.by_name.get(&format!("{namespace}.{name}")).copied()
    }

    /// A table named `schema.table` (quoted or not) or `table`.
    fn table_of_qualified(&self, name: &str) -> Option<usize> {
        let unquoted: String = name.chars().filter(|c| *c != '"').collect();
        self.by_name.get(&qualified(&unquoted)).copied()
    }

    /// The row's columns as JSON; unchanged TOASTed columns are not in `row`, so not here.
    fn image(&self, types: &HashMap<String, u32>, row: &RowData) -> Map<String, Value> {
        row.iter()
            .map(|(name, v)| {
                let value = match v {
                    ColumnValue::Null => Value::Null,
                    other => match other.as_str() {
                        Some(text) => typed_value(types.get(name.as_ref()).copied().unwrap_or(25), text),
                        None => Value::String(String::from_utf8_lossy(other.as_bytes()).into_owned()),
                    },
                };
                (name.to_string(), value)
            })
            .collect()
    }

    fn key_of(&self, at: usize, image: &Map<String, Value>) -> Map<String, Value> {
        self.keys[at].iter().map(|k| (k.clone(), image.get(k).cloned().unwrap_or(Value::Null))).collect()
    }

    fn push(&mut self, at: usize, change: &Change) {
        let t = &self.job.tables[at];
        let now = crate::now_ms();
        let (at_ms, frame) = &mut self.frames[at];
        if *at_ms != now {
            *frame = EnvelopeFrame::new(&t.stream, now, &BTreeMap::new());
            *at_ms = now;
        }
        if change.op == Op::Truncate {
            // In every partition, after that partition's earlier changes: an applier that
            // meets it in any order still ends with what the table holds.
            let records = change.truncate_records(&self.job.source_id, frame, t.partitions, now);
            self.count += records.len();
            self.buffered[at].extend(records);
            return;
        }
        let record = change.record(&self.job.source_id, frame, t.partitions, now);
        self.buffered[at].push(record);
        self.count += 1;
    }

    /// Buffers one change of the open transaction (none open: a change outside one is ignored).
    fn emit(
        &mut self,
        open: &mut Option<Open>,
        at: usize,
        op: Op,
        key: Map<String, Value>,
        before: Option<Map<String, Value>>,
        after: Option<Map<String, Value>>,
    ) {
        let Some(tx) = open.as_mut() else { return };
        tx.seq += 1;
        let change = Change {
            op,
            table: self.job.tables[at].table.clone(),
            key,
            before,
            after,
            lsn: tx.lsn,
            seq: tx.seq,
            txid: Some(tx.txid),
            ts_ms: tx.ts_ms,
        };
        self.push(at, &change);
    }

    /// Appends every buffered change durably (one append per table).
    async fn flush(&mut self) -> Result<(), SourceError> {
        if self.count == 0 {
            return Ok(());
        }
        for (at, records) in self.buffered.iter_mut().enumerate() {
            if records.is_empty() {
                continue;
            }
            let n = records.len() as u64;
            let bytes = records.iter().map(|r| r.value.len() as u64).sum();
            let batch = std::mem::take(records);
            let topic = &self.job.tables[at].topic;
            self.log.append(topic, batch).await?;
            self.stats.events.fetch_add(n, Ordering::Relaxed);
            (self.appended)(topic, n, bytes);
        }
        self.count = 0;
        Ok(())
    }
}

fn qualified(table: &str) -> String {
    if table.contains('.') {
        table.to_owned()
    } else {
        format!("public.{table}")
    }
}

/// Runs the source until `cancel` fires or it fails (the supervisor restarts it).
pub async fn run<L: Log, O: SourceOffsets>(
    job: Arc<PostgresCdcJob>,
    log: Arc<L>,
    offsets: Arc<O>,
    egress: Arc<EgressPolicy>,
    stats: Arc<SourceStats>,
    cancel: CancellationToken,
) -> Result<(), SourceError> {
    let options = connect_options(&job.url, &egress)?;
    let conninfo = replication_conninfo(&options, password_of(&job.url).as_deref());
    let admin = admin_pool(options.clone()).await?;
    let shapes = table_shapes(&admin, &job.tables).await?;
    ensure_publication(&admin, &job).await?;
    let mut state = offsets.load(&job.source_id).await?.unwrap_or_default();
    let have_slot = slot_exists(&admin, &job.slot).await?;
    let keys = shapes.iter().map(|s| s.key.clone()).collect();
    let appended = |topic: &str, events: u64, bytes: u64| offsets.appended(topic, events, bytes);
    let mut appender = ChangeBuffer::new(&job, log.as_ref(), keys, &stats, &appended);
    let config = || {
        ReplicationStreamConfig::builder(job.slot.clone(), job.publication.clone())
            .with_feedback_interval(Duration::from_secs(1))
            // Heartbeats are logical messages.
            .with_messages(true)
            .with_connection_timeout(Duration::from_secs(10))
    };
    let mut stream = LogicalReplicationStream::new(&conninfo, config())
        .await
        .map_err(|e| repl_error("opening the replication connection", e))?;
    let mut tables: Vec<String> = job.tables.iter().map(|t| qualified(&t.table)).collect();
    tables.sort();
    if state.snapshot_lsn.is_none() || !have_slot || state.snapshot_tables != tables {
        if have_slot {
            // A snapshot that never finished cannot be resumed, and one without a table added
            // since would miss that table's rows: it starts over, with a new slot. Rows sent
            // again come with a newer position, so appliers converge on the same rows.
            drop_slot(&admin, &job.slot).await?;
        }
        state = SourceState::default();
        // Every stream has its table's schema before its first row (an empty table too). When
        // streaming resumes instead, PostgreSQL describes each table before its first change:
        // the catalog's shape now may be newer than the changes still to be read.
        for (at, shape) in shapes.iter().enumerate() {
            appender.describe(offsets.as_ref(), at, &shape.columns).await?;
        }
        state.snapshot_estimate = estimate_rows(&admin, &job.tables).await;
        stream = snapshot(stream, &mut appender, &stats, offsets.as_ref(), state.snapshot_estimate, &cancel).await?;
        let Some(lsn) = stats.snapshot_lsn() else { return Ok(()) };
        state.snapshot_lsn = Some(lsn);
        state.confirmed_lsn = lsn;
        state.snapshot_rows = stats.snapshot_rows.load(Ordering::Relaxed);
        state.snapshot_tables = tables;
        offsets.save(&job.source_id, &state, stats.events.load(Ordering::Relaxed)).await?;
    }
    stats.snapshot_done.store(true, Ordering::Relaxed);
    stats.confirmed_lsn.store(state.confirmed_lsn, Ordering::Relaxed);
    stream.start(None).await.map_err(|e| repl_error("starting replication", e))?;
    let feedback = stream.shared_lsn_feedback.clone();
    let (tx, mut rx) = mpsc::channel::<Result<ChangeEvent, ReplicationError>>(4096);
    let reader_cancel = cancel.child_token();
    let reader = {
        let token = reader_cancel.clone();
        tokio::spawn(async move {
            loop {
                let next = stream.next_event(&token).await;
                let end = next.is_err();
                if tx.send(next).await.is_err() || end {
                    break;
                }
            }
            let _ = stream.stop().await;
        })
    };
    let streaming =
        Streaming { feedback: &feedback, offsets: offsets.as_ref(), stats: &stats, cancel: &cancel, admin: &admin };
    let outcome = streaming.run(&mut appender, &mut rx, &mut state).await;
    reader_cancel.cancel();
    let _ = reader.await;
    drop(admin);
    outcome
}

/// The initial snapshot: every row of every captured table, as `r` changes at the slot's
/// consistent point. Returns the stream, ready to start where the snapshot ends.
async fn snapshot<L: Log, O: SourceOffsets>(
    stream: LogicalReplicationStream,
    appender: &mut ChangeBuffer<'_, L>,
    stats: &SourceStats,
    offsets: &O,
    estimate: Option<u64>,
    cancel: &CancellationToken,
) -> Result<LogicalReplicationStream, SourceError> {
    let snap = match stream.snapshot().await.map_err(|e| repl_error("creating the slot and its snapshot", e))? {
        SnapshotOutcome::Available(s) => s,
        SnapshotOutcome::Unavailable(_) => {
            return Err(SourceError::Source(
                "the replication slot already existed, so it exported no snapshot; it was to be dropped first".into(),
            ))
        }
    };
    let lsn = snap.consistent_point().value();
    let ts_ms = crate::now_ms();
    let mut rows = snap.with_cancellation(cancel.clone()).rows();
    let mut seq = 0u64;
    let mut types: HashMap<u32, Captured> = HashMap::new();
    let mut progress_at = tokio::time::Instant::now();
    while let Some(row) = rows.next_row().await.map_err(|e| repl_error("reading the snapshot", e))? {
        let rel = &row.relation;
        if !types.contains_key(&rel.relation_id) {
            if let Some(at) = appender.table_of(&rel.namespace, &rel.relation_name) {
                let columns = columns_of(rel.columns.iter().map(|c| (c.name.as_ref(), c.type_id)));
                // The table may have changed between the catalog read and the snapshot.
                appender.describe(offsets, at, &columns).await?;
                let t = columns.into_iter().map(|c| (c.name, c.type_oid)).collect();
                types.insert(rel.relation_id, Captured { at, types: t });
            }
        }
        let Some(captured) = types.get(&rel.relation_id) else { continue };
        let after = appender.image(&captured.types, &row.data);
        let at = captured.at;
        let change = Change {
            op: Op::Read,
            table: appender.job.tables[at].table.clone(),
            key: appender.key_of(at, &after),
            before: None,
            after: Some(after),
            lsn,
            seq,
            txid: None,
            ts_ms,
        };
        seq += 1;
        appender.push(at, &change);
        stats.snapshot_rows.fetch_add(1, Ordering::Relaxed);
        if appender.count >= appender.job.batch_max {
            appender.flush().await?;
            // The rows read so far, for the console (the snapshot is not complete yet).
            if progress_at.elapsed() >= Duration::from_secs(1) {
                let progress =
                    SourceState { snapshot_rows: seq, snapshot_estimate: estimate, ..SourceState::default() };
                offsets.save(&appender.job.source_id, &progress, stats.events.load(Ordering::Relaxed)).await?;
                progress_at = tokio::time::Instant::now();
            }
        }
    }
    appender.flush().await?;
    if cancel.is_cancelled() {
        // Not recorded complete: the next run starts it over.
        let _ = rows.abandon().await;
        return Err(SourceError::Source("cancelled during the snapshot".into()));
    }
    let stream = rows.finish().await.map_err(|e| repl_error("handing the snapshot over to streaming", e))?;
    stats.set_snapshot_lsn(lsn);
    Ok(stream)
}

/// The transaction being read.
struct Open {
    txid: u32,
    lsn: u64,
    ts_ms: i64,
    seq: u64,
}

/// What streaming needs besides the appender and the events.
struct Streaming<'a, O> {
    feedback: &'a pg_walstream::SharedLsnFeedback,
    offsets: &'a O,
    stats: &'a SourceStats,
    cancel: &'a CancellationToken,
    /// For heartbeats.
    admin: &'a PgPool,
}

impl<O: SourceOffsets> Streaming<'_, O> {
    async fn run<L: Log>(
        &self,
        appender: &mut ChangeBuffer<'_, L>,
        rx: &mut mpsc::Receiver<Result<ChangeEvent, ReplicationError>>,
        state: &mut SourceState,
    ) -> Result<(), SourceError> {
        let job = appender.job;
        let mut relations: HashMap<u32, Captured> = HashMap::new();
        let mut open: Option<Open> = None;
        // The end of the last transaction read whole: confirmed once what precedes it is appended.
        let mut complete: Option<u64> = None;
        let mut tick = tokio::time::interval(job.flush_interval);
        let mut saved_at = tokio::time::Instant::now();
        let mut heard_at = tokio::time::Instant::now();
        let mut measured_at: Option<tokio::time::Instant> = None;
        // The commit time of the last whole transaction read, and its age when appended.
        let mut committed_ms: Option<i64> = None;
        let mut lag_ms: Option<i64> = None;
        loop {
            let event = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => None,
                _ = tick.tick() => Some(None),
                e = rx.recv() => Some(Some(e)),
            };
            let flush_now = match event {
                None => {
                    self.confirm(appender, complete).await?;
                    self.save_position(job, state).await?;
                    return Ok(());
                }
                Some(None) => true,
                // The reader ends when cancelled too: the next turn takes the cancellation.
                Some(Some(None) | Some(Some(Err(ReplicationError::Cancelled(_))))) if self.cancel.is_cancelled() => {
                    continue
                }
                Some(Some(None)) => return Err(SourceError::Source("the replication stream ended".into())),
                Some(Some(Some(Err(e)))) => return Err(repl_error("replication", e)),
                Some(Some(Some(Ok(ev)))) => {
                    heard_at = tokio::time::Instant::now();
                    if let EventType::Commit { commit_timestamp, .. } = &ev.event_type {
                        committed_ms = Some(commit_timestamp.timestamp_millis());
                    }
                    if let Some((at, columns)) = apply(appender, &mut relations, &mut open, &mut complete, ev) {
                        appender.describe(self.offsets, at, &columns).await?;
                    }
                    appender.count >= job.batch_max
                }
            };
            if flush_now {
                self.confirm(appender, complete).await?;
                if let Some(at) = committed_ms.take() {
                    lag_ms = Some((crate::now_ms() - at).max(0));
                }
                if saved_at.elapsed() >= Duration::from_secs(1) {
                    self.save_position(job, state).await?;
                    saved_at = tokio::time::Instant::now();
                }
            }
            if measured_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(5)) {
                let measures = slot_measures(self.admin, &job.slot).await?;
                self.offsets.measured(&job.source_id, SlotMeasures { lag_ms, ..measures }).await;
                measured_at = Some(tokio::time::Instant::now());
            }
            if heard_at.elapsed() >= job.heartbeat {
                // Its commit arrives like any other and is confirmed like one.
                sqlx::query("SELECT pg_logical_emit_message(true, 'keystone.heartbeat', '')::text AS at")
                    .execute(self.admin)
                    .await
                    .map_err(|e| db_error("writing a heartbeat", e))?;
                heard_at = tokio::time::Instant::now();
            }
        }
    }

    /// Appends what is buffered, then confirms the last whole transaction to the slot.
    async fn confirm<L: Log>(
        &self,
        appender: &mut ChangeBuffer<'_, L>,
        complete: Option<u64>,
    ) -> Result<(), SourceError> {
        appender.flush().await?;
        if let Some(lsn) = complete {
            self.feedback.update_flushed_lsn(lsn);
            self.feedback.update_applied_lsn(lsn);
            self.stats.confirmed_lsn.fetch_max(lsn, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn save_position(&self, job: &PostgresCdcJob, state: &mut SourceState) -> Result<(), SourceError> {
        let lsn = self.stats.confirmed_lsn.load(Ordering::Relaxed);
        if lsn > state.confirmed_lsn {
            state.confirmed_lsn = lsn;
            self.offsets.save(&job.source_id, state, self.stats.events.load(Ordering::Relaxed)).await?;
        }
        Ok(())
    }
}

/// A relation's columns as the decoder describes them (names and type oids).
fn columns_of<'a>(columns: impl IntoIterator<Item = (&'a str, u32)>) -> Vec<Column> {
    columns.into_iter().map(|(name, type_oid)| Column { name: name.to_owned(), type_oid }).collect()
}

/// Turns one decoded message into changes (buffered in `appender`). A table described (anew)
/// is returned with its columns: its stream's schema must follow before its next change.
fn apply<L: Log>(
    appender: &mut ChangeBuffer<'_, L>,
    relations: &mut HashMap<u32, Captured>,
    open: &mut Option<Open>,
    complete: &mut Option<u64>,
    ev: ChangeEvent,
) -> Option<(usize, Vec<Column>)> {
    match ev.event_type {
        EventType::Relation { relation_id, namespace, relation_name, columns, .. } => {
            let at = appender.table_of(&namespace, &relation_name)?;
            let columns = columns_of(columns.iter().map(|c| (c.name.as_ref(), c.type_id)));
            let types = columns.iter().map(|c| (c.name.clone(), c.type_oid)).collect();
            relations.insert(relation_id, Captured { at, types });
            return Some((at, columns));
        }
        EventType::Begin { transaction_id, final_lsn, commit_timestamp } => {
            *open = Some(Open {
                txid: transaction_id,
                lsn: final_lsn.value(),
                ts_ms: commit_timestamp.timestamp_millis(),
                seq: 0,
            });
        }
        EventType::Commit { end_lsn, .. } => {
            *open = None;
            *complete = Some(end_lsn.value());
        }
        EventType::Insert { relation_oid, data, .. } => {
            let rel = relations.get(&relation_oid)?;
            let after = appender.image(&rel.types, &data);
            let key = appender.key_of(rel.at, &after);
            appender.emit(open, rel.at, Op::Insert, key, None, Some(after));
        }
        EventType::Update { relation_oid, old_data, new_data, .. } => {
            let rel = relations.get(&relation_oid)?;
            let mut after = appender.image(&rel.types, &new_data);
            let before = old_data.map(|old| appender.image(&rel.types, &old));
            // An unchanged TOASTed value is left out of the new row; a full old row (replica
            // identity FULL) has it, so the new row is complete. Without one it stays absent
            // (never null): an applier keeps the value it holds.
            for (column, value) in before.iter().flatten() {
                if !after.contains_key(column) {
                    after.insert(column.clone(), value.clone());
                }
            }
            let key = appender.key_of(rel.at, &after);
            let old_key = before.as_ref().map(|b| appender.key_of(rel.at, b));
            match old_key {
                // The primary key changed: the old key's row is gone, the new key's created
                // (each in its key's partition, so each key's changes stay in order).
                Some(old_key) if old_key != key => {
                    appender.emit(open, rel.at, Op::Delete, old_key, before, None);
                    appender.emit(open, rel.at, Op::Insert, key, None, Some(after));
                }
                _ => appender.emit(open, rel.at, Op::Update, key, before, Some(after)),
            }
        }
        EventType::Delete { relation_oid, old_data, .. } => {
            let rel = relations.get(&relation_oid)?;
            let before = appender.image(&rel.types, &old_data);
            let key = appender.key_of(rel.at, &before);
            appender.emit(open, rel.at, Op::Delete, key, Some(before), None);
        }
        EventType::Truncate { tables, .. } => {
            for name in tables.iter() {
                let Some(at) = appender.table_of_qualified(name) else { continue };
                appender.emit(open, at, Op::Truncate, Map::new(), None, None);
            }
        }
        _ => {}
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_names_are_valid_slot_names() {
        let (slot, publication) = owned_names("0193A1B2-7C3D-7E4F-8A9B-0C1D2E3F4A5B");
        assert_eq!(slot, "keystone_0193a1b27c3d7e4f8a9b0c1d2e3f4a5b");
        assert_eq!(slot, publication);
        assert!(slot.len() <= 63);
    }

    #[test]
    fn tables_are_quoted_with_their_schema() {
        assert_eq!(quoted_table("orders"), r#""public"."orders""#);
        assert_eq!(quoted_table(r#"shop.Or"ders"#), r#""shop"."Or""ders""#);
    }

    #[test]
    fn url_passwords_are_decoded() {
        assert_eq!(password_of("postgres://u:p%40ss@h:5432/db").as_deref(), Some("p@ss"));
        assert_eq!(password_of("postgres://u@h/db"), None);
    }
}
