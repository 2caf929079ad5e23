//! The PostgreSQL sink's `apply_changes` mode: change events (see `sources::change`) applied to
//! a table keyed by the source's primary key, so the table stays equal to the source table.
//!
//! A batch keeps each key's last change (a key's changes arrive in order, in one partition):
//! inserts, updates and snapshot reads become one upsert per set of columns, deletes one delete;
//! all in one transaction. The table's `_lsn` column holds the position of the change a row
//! reflects, and a change older than that is skipped, so a batch delivered again after a restart
//! never moves a row back. A column an update left out (an unchanged TOASTed value) keeps what
//! the row holds.

use super::{SinkError, SinkEvent};
use serde_json::{Map, Value};
use sqlx::postgres::PgPool;
use std::collections::BTreeMap;

/// The column that records which change a row reflects.
pub const LSN_COLUMN: &str = "_lsn";

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

/// Reads a change event; `Err` says why the event is not one.
fn read(at: usize, e: &SinkEvent) -> Result<Applied, String> {
    let v = e.event_value().map_err(|err| format!("the event cannot be read: {err}"))?;
    let op = v.get("op").and_then(Value::as_str);
    let key = v.get("key").and_then(Value::as_object);
    let lsn = v.get("lsn").and_then(Value::as_u64);
    let (Some(op), Some(key), Some(lsn)) = (op, key, lsn) else {
        return Err(
            "not a change event: apply_changes needs op, key and lsn (a CDC source's events, unprojected)".into()
        );
    };
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
    Ok(Applied { at, delete, row, key_columns: key.keys().cloned().collect() })
}

/// Applies a batch of change events to `table` (whose columns are `columns`); events that are
/// not changes, or whose row PostgreSQL refuses, are refused by index.
pub(super) async fn apply_changes(
    pool: &PgPool,
    table: &str,
    columns: &[String],
    batch: &[SinkEvent],
    is_data_error: impl Fn(&sqlx::Error) -> bool,
    transient: impl Fn(&sqlx::Error) -> SinkError,
    describe: impl Fn(&sqlx::Error) -> String,
) -> Result<(), SinkError> {
    if !columns.iter().any(|c| c == LSN_COLUMN) {
        return Err(SinkError::transient(
            keystone_control::SinkErrorKind::Unavailable,
            format!(
                "table {table} has no {LSN_COLUMN} column (bigint): apply_changes records each row's position there"
            ),
        ));
    }
    let mut refused = Vec::new();
    // Each key's last change wins; the earlier ones are superseded within the batch.
    let mut last: BTreeMap<String, Applied> = BTreeMap::new();
    for (at, e) in batch.iter().enumerate() {
        match read(at, e) {
            Ok(mut change) => {
                let key: Map<String, Value> =
                    change.key_columns.iter().map(|k| (k.clone(), change.row[k].clone())).collect();
                let key = Value::Object(key).to_string();
                // An update leaves out what it did not change: the key's earlier row in this
                // batch fills it in (it may be the row's insert, not yet in the table).
                if let Some(earlier) = last.get(&key).filter(|p| !p.delete && !change.delete) {
                    let mut row = earlier.row.clone();
                    row.extend(std::mem::take(&mut change.row));
                    change.row = row;
                }
                last.insert(key, change);
            }
            Err(why) => refused.push((at, why)),
        }
    }
    let changes: Vec<&Applied> = last.values().collect();
    match write(pool, table, columns, &changes).await {
        Ok(()) => {}
        Err(e) if is_data_error(&e) => {
            // One change at a time, to find the rows PostgreSQL refuses.
            for c in &changes {
                match write(pool, table, columns, &[c]).await {
                    Ok(()) => {}
                    Err(e) if is_data_error(&e) => refused.push((c.at, describe(&e))),
                    Err(e) => return Err(transient(&e)),
                }
            }
            refused.sort_by_key(|(i, _)| *i);
        }
        Err(e) => return Err(transient(&e)),
    }
    SinkError::refusing(refused)
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
