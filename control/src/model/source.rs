//! Sources: systems Keystone reads events from on its own, as opposed to the ingest proxy that
//! producers push to. Today one kind, `postgres_cdc`: the changes of tables of a PostgreSQL
//! database, captured by logical replication into one stream per table.

use super::sinks::SecretRef;
use super::*;

wire_names!(SourceKind { PostgresCdc => "postgres_cdc" });

/// The systems a source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Row changes of PostgreSQL tables, by logical replication (`pgoutput`).
    PostgresCdc,
}

/// One captured table and the stream its changes go to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SourceTable {
    /// `schema.table` (or `table`, in schema `public`); it must have a primary key.
    pub table: String,
    /// The team's stream the changes go to, keyed by the primary key.
    #[cfg_attr(feature = "store", schema(value_type = String))]
    pub stream: Name,
}

impl SourceTable {
    /// `schema.table`, with the default schema filled in.
    pub fn qualified(&self) -> String {
        qualified_table(&self.table)
    }
}

/// `schema.table`, with the default schema (`public`) filled in.
pub fn qualified_table(table: &str) -> String {
    if table.contains('.') {
        table.to_owned()
    } else {
        format!("public.{table}")
    }
}

/// One table to capture, as users declare it: without a stream, its changes go to a stream the
/// platform creates (see [`default_stream_name`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SourceTableInput {
    /// `schema.table` (or `table`, in schema `public`); it must have a primary key.
    pub table: String,
    /// The team's stream the changes go to; created (4 partitions, kept 7 days) if the team has
    /// none of that name. Default: `<source>-<table>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "store", schema(value_type = Option<String>))]
    pub stream: Option<Name>,
}

impl SourceTableInput {
    fn qualified(&self) -> String {
        qualified_table(&self.table)
    }
}

/// The stream a table's changes go to when none is named: `<source>-<table>` (the schema too,
/// when it is not `public`), lowercased, `_` as `-`; `None` if that is not a valid name.
pub fn default_stream_name(source: &str, table: &str) -> Option<Name> {
    let table = table.strip_prefix("public.").unwrap_or(table);
    let raw = format!("{source}-{table}").to_ascii_lowercase().replace(['_', '.', '$'], "-");
    let mut name = String::with_capacity(raw.len());
    for c in raw.chars() {
        if !(c == '-' && name.ends_with('-')) {
            name.push(c);
        }
    }
    let name: String = name.chars().take(crate::name::MAX_NAME_LEN).collect();
    Name::parse(name.trim_end_matches('-')).ok()
}

pub const SOURCE_TABLES_MAX: usize = 50;

/// The secrets a source kind takes.
pub const SOURCE_SECRETS: &[&str] = &["url"];

/// A source as stored in the goal state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub kind: SourceKind,
    #[serde(default)]
    pub description: String,
    pub tables: Vec<SourceTable>,
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretRef>,
    /// Running (the default), paused (reading stops; the slot keeps the source's WAL) or stopped.
    #[serde(default, skip_serializing_if = "DesiredState::is_running")]
    pub state: DesiredState,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Alert rules (`retained_wal_bytes`); by default, more than 1 GiB held back for 5 minutes.
    #[serde(default = "crate::alerts::default_source_alert_rules")]
    pub alerts: Vec<crate::alerts::AlertRule>,
}

impl SourceSpec {
    /// What the running job is built from (a rotated secret changes its `set_in_version`).
    pub fn job_relevant(&self) -> SourceSpec {
        SourceSpec {
            description: String::new(),
            tags: Vec::new(),
            state: DesiredState::Running,
            alerts: Vec::new(),
            ..self.clone()
        }
    }
}

/// A source as users submit it: secrets carry their values; an omitted or empty one keeps the
/// stored value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SourceInput {
    pub kind: SourceKind,
    #[serde(default)]
    pub description: String,
    pub tables: Vec<SourceTableInput>,
    /// `url`: the database's `postgres://` URL, with the password of a user allowed to
    /// replicate (`REPLICATION` attribute) and to create publications on the tables.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "DesiredState::is_running")]
    pub state: DesiredState,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Alert rules: `retained_wal_bytes` (threshold in bytes, `for_s` seconds). Default: more
    /// than 1 GiB held back for 5 minutes; `[]` for none.
    #[serde(default = "crate::alerts::default_source_alert_rules")]
    pub alerts: Vec<crate::alerts::AlertRule>,
}

/// A PostgreSQL identifier as users write it unquoted (Keystone quotes it).
fn is_identifier(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

impl SourceInput {
    /// Structural checks; `existing_secrets` are the secret keys already stored (on update).
    pub fn validate(&self, existing_secrets: &[String]) -> Result<(), ValidationErrors> {
        let mut e = ValidationErrors::default();
        check_description(&mut e, &self.description);
        check_tags(&mut e, "tags", &self.tags);
        crate::alerts::validate_source_rules(&self.alerts, &mut e);
        if self.tables.is_empty() {
            e.add("tables", "name at least one table to capture");
        } else if self.tables.len() > SOURCE_TABLES_MAX {
            e.add("tables", format!("at most {SOURCE_TABLES_MAX} tables"));
        }
        for (i, t) in self.tables.iter().enumerate() {
            let parts: Vec<&str> = t.table.split('.').collect();
            if parts.len() > 2 || !parts.iter().all(|p| is_identifier(p)) {
                e.add(
                    format!("tables[{i}].table"),
                    "must be schema.table or table: letters, digits, '_' or '$', starting with a letter or '_'",
                );
            } else if self.tables[..i].iter().any(|o| o.qualified() == t.qualified()) {
                e.add(format!("tables[{i}].table"), format!("{:?} is captured twice", t.qualified()));
            }
            if t.stream.is_some() && self.tables[..i].iter().any(|o| o.stream == t.stream) {
                e.add(
                    format!("tables[{i}].stream"),
                    format!(
                        "stream {:?} already takes another table's changes: one stream per table",
                        t.stream.as_ref().map_or("", Name::as_str)
                    ),
                );
            }
        }
        for key in self.secrets.keys() {
            if !SOURCE_SECRETS.contains(&key.as_str()) {
                e.add(format!("secrets.{key}"), format!("is not a secret of a {} source", self.kind));
            }
        }
        match self.secrets.get("url").filter(|v| !v.is_empty()) {
            Some(u) if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) => {
                e.add("secrets.url", "must start with postgres:// or postgresql://")
            }
            Some(u) if url::Url::parse(u).map_or(true, |p| p.host_str().is_none_or(str::is_empty)) => {
                e.add("secrets.url", "must be a URL naming the database's host")
            }
            None if !existing_secrets.iter().any(|k| k == "url") => e.add("secrets.url", "is required"),
            _ => {}
        }
        e.into_result(())
    }
}

/// A source's last recorded state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct SourceStatus {
    /// The position the initial snapshot was read at, once it was in the log whole.
    pub snapshot_lsn: Option<u64>,
    /// The last position confirmed to the database: every change before it is in the streams.
    pub confirmed_lsn: u64,
    /// Rows the initial snapshot read (so far, while it runs).
    pub snapshot_rows: u64,
    /// The tables the snapshot read (`schema.table`).
    pub snapshot_tables: Vec<String>,
    /// Changes appended to the streams since the job started.
    pub events: u64,
    /// WAL bytes the source's slot held back when last measured.
    pub retained_bytes: Option<i64>,
    /// `starting`, `running`, `failing`, `paused` or `stopped`.
    pub phase: String,
    pub cause: String,
    pub last_error: Option<String>,
    pub updated_at: i64,
    /// The rows the snapshot expects (the planner's estimate; unknown for tables never analysed).
    #[serde(default)]
    pub snapshot_estimate: Option<u64>,
    /// How far the slot's confirmed position is behind the database's WAL, in bytes.
    #[serde(default)]
    pub lag_bytes: Option<i64>,
    /// How old the last change was (since its commit) when it was appended, in ms.
    #[serde(default)]
    pub lag_ms: Option<i64>,
    /// The source's alert rules' states (`retained_wal_bytes`).
    #[serde(default)]
    pub alerts: Vec<crate::alerts::AlertStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(tables: &[(&str, &str)], url: Option<&str>) -> SourceInput {
        SourceInput {
            kind: SourceKind::PostgresCdc,
            description: String::new(),
            tables: tables
                .iter()
                .map(|(t, s)| SourceTableInput { table: (*t).into(), stream: Name::parse(s).ok() })
                .collect(),
            secrets: url.map(|u| ("url".to_owned(), u.to_owned())).into_iter().collect(),
            state: DesiredState::Running,
            tags: Vec::new(),
            alerts: crate::alerts::default_source_alert_rules(),
        }
    }

    #[test]
    fn tables_streams_and_url_are_checked_by_field() {
        assert!(input(&[("public.orders", "orders"), ("items", "items")], Some("postgres://u:p@db/shop"))
            .validate(&[])
            .is_ok());
        let e = input(&[("a.b.c", "x"), ("orders", "o"), ("public.orders", "o")], None).validate(&[]).unwrap_err();
        assert!(e.for_field("tables[0].table").unwrap().contains("schema.table"));
        assert!(e.for_field("tables[2].table").unwrap().contains("captured twice"));
        assert!(e.for_field("tables[2].stream").unwrap().contains("one stream per table"));
        assert_eq!(e.for_field("secrets.url"), Some("is required"));
        // On update the stored URL satisfies the requirement.
        assert!(input(&[("orders", "o")], None).validate(&["url".into()]).is_ok());
        let e = input(&[("orders", "o")], Some("mysql://db/x")).validate(&[]).unwrap_err();
        assert!(e.for_field("secrets.url").unwrap().contains("postgres://"));
        assert!(input(&[], Some("postgres://db/x")).validate(&[]).unwrap_err().for_field("tables").is_some());
        let spec: Result<SourceInput, _> = serde_json::from_str(r#"{"kind":"mysql_cdc","tables":[]}"#);
        assert!(spec.is_err());
        // A source watches its slot; a route's rules are not a source's.
        let mut lagging = input(&[("orders", "o")], Some("postgres://db/x"));
        lagging.alerts =
            vec![crate::alerts::AlertRule { kind: crate::alerts::AlertKind::LagSeconds, threshold: 1.0, for_s: 0 }];
        assert!(lagging.validate(&[]).unwrap_err().for_field("alerts[0].kind").unwrap().contains("retained_wal_bytes"));
    }

    #[test]
    fn a_table_without_a_stream_gets_a_stream_named_after_the_source_and_table() {
        let name = |s: &str, t: &str| default_stream_name(s, t).map(|n| n.as_str().to_owned());
        assert_eq!(name("shop", "public.order_items").as_deref(), Some("shop-order-items"));
        assert_eq!(name("shop", "orders").as_deref(), Some("shop-orders"));
        assert_eq!(name("shop", "Sales.Q4__totals").as_deref(), Some("shop-sales-q4-totals"));
        assert_eq!(name("shop", "t_").as_deref(), Some("shop-t"));
        assert_eq!(name("shop", &"x".repeat(80)).map(|n| n.len()), Some(63));
        // Two tables left to their default names may not meet in one stream.
        let e = input(&[("orders", "o"), ("public.orders", "o")], Some("postgres://db/x")).validate(&[]).unwrap_err();
        assert!(e.for_field("tables[1].table").is_some());
    }
}
