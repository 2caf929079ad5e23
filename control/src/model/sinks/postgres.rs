//! A PostgreSQL sink's settings: the table events are written into, keyed by event id, and
//! whether a row seen again is kept (insert) or replaced (upsert, for updating results).

use super::{Reader, SettingDoc};
use crate::validation::ValidationErrors;
use std::collections::BTreeMap;

pub(super) const SETTINGS: &[SettingDoc] = &[
    SettingDoc { key: "table", required: true, help: "target table name" },
    SettingDoc {
        key: "mode",
        required: false,
        help: "insert (the default: a row whose event_id is already there is kept), upsert (it is \
               replaced: a processor's updating results) or apply_changes (a CDC source's changes, \
               applied by primary key; the table needs a bigint _lsn column)",
    },
];

/// What the sink does with a row whose `event_id` the table already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PostgresMode {
    /// Keep the row there (a redelivered event writes nothing twice).
    #[default]
    Insert,
    /// Replace it with the new row (a key's latest result wins).
    Upsert,
    /// The events are a CDC source's changes: insert, update and delete rows by the source's
    /// primary key, never moving a row back to an older change (the `_lsn` column).
    ApplyChanges,
}

pub(super) const SECRETS: &[SettingDoc] =
    &[SettingDoc { key: "url", required: true, help: "postgres:// connection URL, with password" }];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    /// A lowercase SQL identifier of at most 63 characters (no quoting needed, none possible).
    pub table: String,
    pub mode: PostgresMode,
}

impl PostgresSettings {
    pub(super) fn read(r: &mut Reader<'_>) -> PostgresSettings {
        let table = r.required("table");
        let ok = table.len() <= 63
            && table.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && table.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !table.is_empty() && !ok {
            r.error("table", "must be a lowercase SQL identifier (letters, digits, underscores)");
        }
        let mode = match r.get("mode") {
            None | Some("insert") => PostgresMode::Insert,
            Some("upsert") => PostgresMode::Upsert,
            Some("apply_changes") => PostgresMode::ApplyChanges,
            Some(_) => {
                r.error("mode", "must be insert, upsert or apply_changes");
                PostgresMode::Insert
            }
        };
        PostgresSettings { table, mode }
    }

    /// Checks the given secret values (an omitted one keeps the stored value).
    pub(super) fn check_secrets(secrets: &BTreeMap<String, String>, e: &mut ValidationErrors) {
        if let Some(u) = secrets.get("url").filter(|v| !v.is_empty()) {
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                e.add("secrets.url", "must start with postgres:// or postgresql://");
            }
        }
    }
}
