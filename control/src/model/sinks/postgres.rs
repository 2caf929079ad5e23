//! A PostgreSQL sink's settings: the table events are upserted into, keyed by event id.

use super::{Reader, SettingDoc};
use crate::validation::ValidationErrors;
use std::collections::BTreeMap;

pub(super) const SETTINGS: &[SettingDoc] = &[SettingDoc { key: "table", required: true, help: "target table name" }];

pub(super) const SECRETS: &[SettingDoc] =
    &[SettingDoc { key: "url", required: true, help: "postgres:// connection URL, with password" }];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    /// A lowercase SQL identifier of at most 63 characters (no quoting needed, none possible).
    pub table: String,
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
        PostgresSettings { table }
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
