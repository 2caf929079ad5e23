//! The PostgreSQL sink's `apply_changes` mode: change events (see `sources::change`) applied to
//! a table keyed by the source's primary key, so the table stays equal to the source table.
//!
//! A batch keeps each key's last change (a key's changes arrive in order, in one partition):
//! inserts, updates and snapshot reads become one upsert per set of columns, deletes one delete;
//! all in one transaction. The table's `_lsn` column holds the position of the change a row
//! reflects, and a change older than that is skipped, so a batch delivered again after a restart
//! never moves a row back. A column an update left out (an unchanged TOASTed value) keeps what
//! the row holds.
//!
//! A truncate (`op` `t`, one in each partition of the stream) removes the rows older than
//! itself: met in any partition first, it may let older changes of other partitions come back
//! for a while, but each partition's own truncate follows them and removes them again, so the
//! table converges on the source's rows. A batch is applied up to a truncate, then the truncate,
//! then the rest. A truncate and rows written in its own transaction share its position: an
//! optional `_seq bigint` column (the change's ordinal) tells which came first.

use super::{SinkError, SinkEvent};
use serde_json::{Map, Value};
use sqlx::postgres::PgPool;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The column that records which change a row reflects.
pub const LSN_COLUMN: &str = "_lsn";
/// The optional column with that change's ordinal in its transaction.
pub const SEQ_COLUMN: &str = "_seq";

/// A change as the applier needs it.
struct Applied {
    /// Index in the batch.
    at: usize,
    delete: bool,
    /// Key columns, then the row's columns (for an upsert), and `_lsn`.
    row: Map<String, Value>,
    key_columns: Vec<String>,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A change event as read: a row's change, or a truncate at a position.
enum Read {
    Row(Applied),
    /// At a position and ordinal in its transaction.
    Truncate(u64, u64),
}

/// Reads a change event; `Err` says why the event is not one.
fn read(at: usize, e: &SinkEvent) -> Result<Read, String> {
    let v = e.event_value().map_err(|err| format!("the event cannot be read: {err}"))?;
    let op = v.get("op").and_then(Value::as_str);
    let key = v.get("key").and_then(Value::as_object);
    let lsn = v.get("lsn").and_then(Value::as_u64);
    let (Some(op), Some(key), Some(lsn)) = (op, key, lsn) else {
        return Err(
            "not a change event: apply_changes needs op, key and lsn (a CDC source's events, unprojected)".into()
        );
    };
    if op == "t" {
        return Ok(Read::Truncate(lsn, v.get("seq").and_then(Value::as_u64).unwrap_or(0)));
    }
    if key.is_empty() {
        return Err("the change has an empty key".into());
    }
    let delete = match op {
        "d" => true,
        "c" | "u" | "r" => false,
        other => return Err(format!("unknown change op {other:?}")),
    };
    let mut row = key.clone();
    if !delete {
        let Some(after) = v.get("after").and_then(Value::as_object) else {
            return Err(format!("a change of op {op:?} needs its row in \"after\""));
        };
        for (k, value) in after {
            row.insert(k.clone(), value.clone());
        }
    }
    row.insert(LSN_COLUMN.into(), Value::from(lsn as i64));
    // Kept where the table has the column: it orders a row against a truncate of the same
    // transaction (one position for both).
    if let Some(seq) = v.get("seq").and_then(Value::as_u64) {
        row.insert(SEQ_COLUMN.into(), Value::from(seq as i64));
    }
    Ok(Read::Row(Applied { at, delete, row, key_columns: key.keys().cloned().collect() }))
}

/// The target table's columns: `stale` asks to read them again (a change carries a column they
/// lack: the table may have been given it since they were read).
pub(super) trait TargetColumns: Sync {
    fn columns(&self, stale: bool) -> impl std::future::Future<Output = Result<Arc<Vec<String>>, SinkError>> + Send;
}

/// Applies a batch of change events to `table`; events that are not changes, or whose row
/// PostgreSQL refuses, are refused by index.
pub(super) async fn apply_changes(
    pool: &PgPool,
    table: &str,
    columns: &impl TargetColumns,
    batch: &[SinkEvent],
    is_data_error: impl Fn(&sqlx::Error) -> bool,
    transient: impl Fn(&sqlx::Error) -> SinkError,
    describe: impl Fn(&sqlx::Error) -> String,
) -> Result<(), SinkError> {
    let mut refused = Vec::new();
    let mut read_all = Vec::with_capacity(batch.len());
    for (at, e) in batch.iter().enumerate() {
        match read(at, e) {
            Ok(r) => read_all.push(r),
            Err(why) => refused.push((at, why)),
        }
    }
    let mut known = columns.columns(false).await?;
    let unknown = |cols: &[String]| {
        read_all.iter().any(|r| matches!(r, Read::Row(c) if c.row.keys().any(|k| k != SEQ_COLUMN && !cols.contains(k))))
    };
    if unknown(&known) {
        known = columns.columns(true).await?;
    }
    let columns = known.as_slice();
    if !columns.iter().any(|c| c == LSN_COLUMN) {
        return Err(SinkError::transient(
            keystone_control::SinkErrorKind::Unavailable,
            format!(
                "table {table} has no {LSN_COLUMN} column (bigint): apply_changes records each row's position there"
            ),
        ));
    }
    let mut rows = Vec::new();
    for r in read_all {
        match r {
            Read::Row(change) => rows.push(change),
            Read::Truncate(lsn, seq) => {
                apply_rows(
                    pool,
                    table,
                    columns,
                    std::mem::take(&mut rows),
                    &mut refused,
                    &is_data_error,
                    &transient,
                    &describe,
                )
                .await?;
                truncate(pool, table, columns, lsn, seq).await.map_err(|e| transient(&e))?;
            }
        }
    }
    apply_rows(pool, table, columns, rows, &mut refused, &is_data_error, &transient, &describe).await?;
    refused.sort_by_key(|(i, _)| *i);
    SinkError::refusing(refused)
}

/// Removes the rows older than a truncate at (`lsn`, `seq`) (and rows of unknown age). A row of
/// the truncate's own transaction is older when its ordinal is lower; without a `_seq` column
/// such rows stay (see `docs/sources.md`).
async fn truncate(pool: &PgPool, table: &str, columns: &[String], lsn: u64, seq: u64) -> Result<(), sqlx::Error> {
    let (t, l) = (quote(table), quote(LSN_COLUMN));
    if columns.iter().any(|c| c == SEQ_COLUMN) {
        let s = quote(SEQ_COLUMN);
        let sql = format!("DELETE FROM {t} WHERE {l} IS NULL OR {l} < $1 OR ({l} = $1 AND ({s} IS NULL OR {s} < $2))");
        sqlx::query(&sql).bind(lsn as i64).bind(seq as i64).execute(pool).await.map(|_| ())
    } else {
        let sql = format!("DELETE FROM {t} WHERE {l} IS NULL OR {l} < $1");
        sqlx::query(&sql).bind(lsn as i64).execute(pool).await.map(|_| ())
    }
}

/// Applies row changes (between truncates): each key's last change, in one transaction; rows
/// PostgreSQL refuses are found one at a time and added to `refused`.
#[allow(clippy::too_many_arguments)]
async fn apply_rows(
    pool: &PgPool,
    table: &str,
    columns: &[String],
    rows: Vec<Applied>,
    refused: &mut Vec<(usize, String)>,
    is_data_error: &impl Fn(&sqlx::Error) -> bool,
    transient: &impl Fn(&sqlx::Error) -> SinkError,
    describe: &impl Fn(&sqlx::Error) -> String,
) -> Result<(), SinkError> {
    if rows.is_empty() {
        return Ok(());
    }
    // Each key's last change wins; the earlier ones are superseded within the batch.
    let mut last: BTreeMap<String, Applied> = BTreeMap::new();
    for mut change in rows {
        let key: Map<String, Value> = change.key_columns.iter().map(|k| (k.clone(), change.row[k].clone())).collect();
        let key = Value::Object(key).to_string();
        // An update leaves out what it did not change: the key's earlier row in this batch
        // fills it in (it may be the row's insert, not yet in the table).
        if let Some(earlier) = last.get(&key).filter(|p| !p.delete && !change.delete) {
            let mut row = earlier.row.clone();
            row.extend(std::mem::take(&mut change.row));
            change.row = row;
        }
        last.insert(key, change);
    }
    let changes: Vec<&Applied> = last.values().collect();
    match write(pool, table, columns, &changes).await {
        Ok(()) => Ok(()),
        Err(e) if is_data_error(&e) => {
            // One change at a time, to find the rows PostgreSQL refuses.
            for c in &changes {
                match write(pool, table, columns, &[c]).await {
                    Ok(()) => {}
                    Err(e) if is_data_error(&e) => refused.push((c.at, describe(&e))),
                    Err(e) => return Err(transient(&e)),
                }
            }
            Ok(())
        }
        Err(e) => Err(transient(&e)),
    }
}

/// Writes changes in one transaction: deletes, then upserts grouped by their columns.
async fn write(pool: &PgPool, table: &str, columns: &[String], changes: &[&Applied]) -> Result<(), sqlx::Error> {
    let t = quote(table);
    let mut tx = pool.begin().await?;
    let mut deletes: BTreeMap<Vec<String>, Vec<&Map<String, Value>>> = BTreeMap::new();
    let mut upserts: BTreeMap<(Vec<String>, Vec<String>), Vec<&Map<String, Value>>> = BTreeMap::new();
    for c in changes {
        if c.delete {
            deletes.entry(c.key_columns.clone()).or_default().push(&c.row);
        } else {
            // Only the table's columns; the others are ignored, as in the other modes.
            let cols: Vec<String> = c.row.keys().filter(|k| columns.contains(k)).cloned().collect();
            upserts.entry((c.key_columns.clone(), cols)).or_default().push(&c.row);
        }
    }
    for (keys, rows) in deletes {
        let matched = keys.iter().map(|k| format!("{t}.{0} = x.{0}", quote(k))).collect::<Vec<_>>().join(" AND ");
        let sql = format!(
            "DELETE FROM {t} USING jsonb_populate_recordset(NULL::{t}, $1::jsonb) AS x \
             WHERE {matched} AND ({t}.{lsn} IS NULL OR {t}.{lsn} <= x.{lsn})",
            lsn = quote(LSN_COLUMN)
        );
        sqlx::query(&sql).bind(serde_json::to_string(&rows).expect("rows serialise")).execute(&mut *tx).await?;
    }
    for ((keys, cols), rows) in upserts {
        let list = cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
        let conflict = keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
        let set = cols
            .iter()
            .filter(|c| !keys.contains(c))
            .map(|c| format!("{0} = EXCLUDED.{0}", quote(c)))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO {t} ({list}) SELECT {list} FROM jsonb_populate_recordset(NULL::{t}, $1::jsonb) \
             ON CONFLICT ({conflict}) DO UPDATE SET {set} WHERE {t}.{lsn} IS NULL OR {t}.{lsn} <= EXCLUDED.{lsn}",
            lsn = quote(LSN_COLUMN)
        );
        sqlx::query(&sql).bind(serde_json::to_string(&rows).expect("rows serialise")).execute(&mut *tx).await?;
    }
    tx.commit().await
}
