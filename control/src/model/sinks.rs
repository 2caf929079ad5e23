//! Sinks: the systems a route delivers to, their settings and secrets, and their validation.

use super::*;

/// The systems a route can deliver to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// POSTs batches of events as JSON to an HTTP endpoint.
    Http,
    /// Appends events as NDJSON to files under the data directory.
    File,
    /// Upserts events into a PostgreSQL table, keyed by event id.
    Postgres,
    /// Appends events to another Keystone stream (re-routing, e.g. to feed a downstream team).
    Stream,
    /// Produces events to a topic of a Kafka cluster (any Apache Kafka protocol broker).
    Kafka,
}

/// One setting a sink kind understands.
#[derive(Debug, Clone, Copy)]
pub struct SettingDoc {
    pub key: &'static str,
    pub required: bool,
    pub help: &'static str,
}

impl SinkKind {
    pub const ALL: [SinkKind; 5] =
        [SinkKind::Http, SinkKind::File, SinkKind::Postgres, SinkKind::Stream, SinkKind::Kafka];

    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Http => "http",
            SinkKind::File => "file",
            SinkKind::Postgres => "postgres",
            SinkKind::Stream => "stream",
            SinkKind::Kafka => "kafka",
        }
    }

    pub fn parse(s: &str) -> Option<SinkKind> {
        SinkKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Plain settings, shown back to users.
    pub fn settings(self) -> &'static [SettingDoc] {
        match self {
            SinkKind::Http => &[
                SettingDoc { key: "url", required: true, help: "http:// or https:// endpoint receiving JSON batches" },
                SettingDoc { key: "timeout_ms", required: false, help: "request timeout in milliseconds" },
                SettingDoc {
                    key: "format",
                    required: false,
                    help: "json (a JSON array per batch, the default) or bulk (Elasticsearch/OpenSearch _bulk)",
                },
                SettingDoc { key: "index", required: false, help: "target index of the bulk format" },
            ],
            SinkKind::File => &[
                SettingDoc {
                    key: "path",
                    required: true,
                    help:
                        "relative directory: under the data directory's sinks/ folder, or the key prefix in the bucket",
                },
                SettingDoc { key: "format", required: false, help: "ndjson (the default) or parquet" },
                SettingDoc {
                    key: "roll_bytes",
                    required: false,
                    help: "roll a file at about this many bytes of events (1024 to 268435456); with roll_seconds, \
                           replaces the route's batch size and max latency as the file's bounds",
                },
                SettingDoc {
                    key: "roll_seconds",
                    required: false,
                    help: "roll a file when its first event has waited this long (1 to 3600)",
                },
                SettingDoc {
                    key: "store_url",
                    required: false,
                    help: "s3://bucket of an S3-compatible object store; empty for the data directory",
                },
                SettingDoc {
                    key: "endpoint",
                    required: false,
                    help: "S3 endpoint URL (MinIO, R2, ...); empty for AWS",
                },
                SettingDoc { key: "region", required: false, help: "S3 region" },
                SettingDoc {
                    key: "ambient_credentials",
                    required: false,
                    help: "true: without keys, use the host's own cloud credentials (admins only); by default \
                           a bucket without keys is read and written unsigned",
                },
            ],
            SinkKind::Postgres => &[SettingDoc { key: "table", required: true, help: "target table name" }],
            SinkKind::Stream => &[SettingDoc {
                key: "stream",
                required: true,
                help: "target stream: a name in the same team, or team/name (you must be able to edit that team)",
            }],
            SinkKind::Kafka => &[
                SettingDoc { key: "brokers", required: true, help: "bootstrap servers, host:port[,host:port...]" },
                SettingDoc { key: "topic", required: true, help: "the topic events are produced to (it must exist)" },
                SettingDoc {
                    key: "security_protocol",
                    required: false,
                    help: "plaintext (the default), ssl, sasl_plaintext or sasl_ssl",
                },
                SettingDoc {
                    key: "sasl_mechanism",
                    required: false,
                    help: "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a sasl_ protocol)",
                },
                SettingDoc { key: "sasl_username", required: false, help: "SASL user name" },
            ],
        }
    }

    /// Secret settings: write-only, never echoed back.
    pub fn secrets(self) -> &'static [SettingDoc] {
        match self {
            SinkKind::Http => {
                &[SettingDoc { key: "authorization", required: false, help: "value of the Authorization header" }]
            }
            SinkKind::Stream => &[],
            SinkKind::File => &[
                SettingDoc { key: "access_key_id", required: false, help: "S3 access key id" },
                SettingDoc { key: "secret_access_key", required: false, help: "S3 secret access key" },
            ],
            SinkKind::Postgres => {
                &[SettingDoc { key: "url", required: true, help: "postgres:// connection URL, with password" }]
            }
            SinkKind::Kafka => &[SettingDoc { key: "sasl_password", required: false, help: "SASL password" }],
        }
    }
}

impl fmt::Display for SinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stream named by a stream sink: `name` (the sink's own team) or `team/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRef {
    pub team: String,
    pub stream: String,
}

impl StreamRef {
    /// Parses a target, defaulting the team to `own_team`.
    pub fn parse(target: &str, own_team: &str) -> Result<StreamRef, String> {
        let (team, stream) = match target.split_once('/') {
            Some((t, s)) => (t, s),
            None => (own_team, target),
        };
        for part in [team, stream].into_iter().filter(|p| !p.is_empty()) {
            Name::parse(part).map_err(|e| format!("{part:?}: {e}"))?;
        }
        if stream.is_empty() || (target.contains('/') && team.is_empty()) {
            return Err("must be a stream name or team/stream".into());
        }
        Ok(StreamRef { team: team.to_owned(), stream: stream.to_owned() })
    }
}

/// Where a secret stands, as recorded in revisions: its value lives apart and is never shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// The object version that last set this secret, so history shows rotations.
    pub set_in_version: i64,
}

/// A managed sink as stored in the goal state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    pub kind: SinkKind,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretRef>,
    /// Labels an approval policy can match (e.g. `production`, `critical`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl SinkSpec {
    /// What a job's sink is built from: the spec without what only people and approval
    /// policies read (description, tags). A rotated secret changes its `set_in_version`, so
    /// it counts.
    pub fn job_relevant(&self) -> SinkSpec {
        SinkSpec { description: String::new(), tags: Vec::new(), ..self.clone() }
    }
}

/// A sink as users submit it: secrets carry their values, and an omitted or empty secret keeps
/// the value already stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SinkInput {
    pub kind: SinkKind,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl SinkInput {
    /// Checks keys and values against the kind. `existing_secrets` are the secret keys already
    /// stored (on update), which satisfy a required secret not given again.
    pub fn validate(&self, existing_secrets: &[String]) -> Result<(), ValidationErrors> {
        let mut e = ValidationErrors::default();
        check_description(&mut e, &self.description);
        check_tags(&mut e, "tags", &self.tags);
        let kind = self.kind;
        for key in self.settings.keys() {
            if !kind.settings().iter().any(|d| d.key == key) {
                e.add(format!("settings.{key}"), format!("is not a setting of a {kind} sink"));
            }
        }
        for key in self.secrets.keys() {
            if !kind.secrets().iter().any(|d| d.key == key) {
                e.add(format!("secrets.{key}"), format!("is not a secret of a {kind} sink"));
            }
        }
        for d in kind.settings().iter().filter(|d| d.required) {
            if self.settings.get(d.key).is_none_or(|v| v.trim().is_empty()) {
                e.add(format!("settings.{}", d.key), "is required");
            }
        }
        for d in kind.secrets().iter().filter(|d| d.required) {
            let given = self.secrets.get(d.key).is_some_and(|v| !v.is_empty());
            if !given && !existing_secrets.iter().any(|k| k == d.key) {
                e.add(format!("secrets.{}", d.key), "is required");
            }
        }
        let setting = |k: &str| self.settings.get(k).map(String::as_str).filter(|v| !v.is_empty());
        match kind {
            SinkKind::Http => {
                if let Some(u) = setting("url") {
                    check_http_url(&mut e, "settings.url", u);
                }
                check_number(&mut e, "settings.timeout_ms", setting("timeout_ms"), 1, 300_000);
                match setting("format") {
                    None | Some("json") => {}
                    Some("bulk") => {
                        if setting("index").is_none() {
                            e.add("settings.index", "is required by the bulk format");
                        }
                    }
                    Some(_) => e.add("settings.format", "must be json or bulk"),
                }
            }
            SinkKind::File => {
                if let Some(p) = setting("path") {
                    if !is_relative_path(p) {
                        e.add("settings.path", "must be a relative path without '..' or empty segments");
                    }
                }
                if FileFormat::parse(setting("format")).is_none() {
                    e.add("settings.format", "must be ndjson or parquet");
                }
                check_number(&mut e, "settings.roll_bytes", setting("roll_bytes"), 1024, 268_435_456);
                check_number(&mut e, "settings.roll_seconds", setting("roll_seconds"), 1, 3600);
                match setting("store_url") {
                    None => {
                        for k in ["endpoint", "region", "ambient_credentials"] {
                            if setting(k).is_some() {
                                e.add(format!("settings.{k}"), "applies only with a store_url");
                            }
                        }
                    }
                    Some(u) => {
                        let bucket = u.strip_prefix("s3://").unwrap_or_default();
                        if bucket.is_empty() || bucket.contains('/') {
                            e.add("settings.store_url", "must be s3://bucket (the key prefix goes in path)");
                        }
                        if let Some(ep) = setting("endpoint") {
                            check_http_url(&mut e, "settings.endpoint", ep);
                        }
                        if !matches!(setting("ambient_credentials"), None | Some("true" | "false")) {
                            e.add("settings.ambient_credentials", "must be true or false");
                        }
                    }
                }
            }
            SinkKind::Stream => {
                if let Some(target) = setting("stream") {
                    if let Err(msg) = StreamRef::parse(target, "") {
                        e.add("settings.stream", msg);
                    }
                }
            }
            SinkKind::Kafka => {
                if let Some(b) = setting("brokers") {
                    let ok = b.split(',').all(|hp| {
                        hp.trim().rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                    });
                    if !ok {
                        e.add("settings.brokers", "must be host:port, comma-separated");
                    }
                }
                if let Some(t) = setting("topic") {
                    // Kafka's own rule for topic names.
                    let ok = t.len() <= 249
                        && t != "."
                        && t != ".."
                        && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
                    if !ok {
                        e.add("settings.topic", "must be 1 to 249 of letters, digits, '.', '_' and '-'");
                    }
                }
                let protocol = setting("security_protocol").unwrap_or("plaintext");
                if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&protocol) {
                    e.add("settings.security_protocol", "must be plaintext, ssl, sasl_plaintext or sasl_ssl");
                }
                match setting("sasl_mechanism") {
                    None => {}
                    Some(_) if !protocol.starts_with("sasl_") => {
                        e.add("settings.sasl_mechanism", "applies only with a sasl_ security protocol")
                    }
                    Some(m) if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&m) => {
                        e.add("settings.sasl_mechanism", "must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
                    }
                    Some(_) => {}
                }
            }
            SinkKind::Postgres => {
                if let Some(t) = setting("table") {
                    let ok = t.len() <= 63
                        && t.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                        && t.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                    if !ok {
                        e.add("settings.table", "must be a lowercase SQL identifier (letters, digits, underscores)");
                    }
                }
                if let Some(u) = self.secrets.get("url").filter(|v| !v.is_empty()) {
                    if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                        e.add("secrets.url", "must start with postgres:// or postgresql://");
                    }
                }
            }
        }
        e.into_result(())
    }
}

/// How a file sink encodes its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// One JSON event a line.
    Ndjson,
    /// Columnar, Snappy-compressed; the schema is inferred from each file's events.
    Parquet,
}

impl FileFormat {
    /// The format a `format` setting names; `None` (absent) is NDJSON.
    pub fn parse(setting: Option<&str>) -> Option<FileFormat> {
        match setting {
            None | Some("ndjson") => Some(FileFormat::Ndjson),
            Some("parquet") => Some(FileFormat::Parquet),
            Some(_) => None,
        }
    }

    /// The file name extension, which is how a reader (a backfill) knows the format.
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Ndjson => "ndjson",
            FileFormat::Parquet => "parquet",
        }
    }
}

/// Checks an optional whole-number setting against its range: the number when given and valid;
/// an error on `field` when given and not.
pub(super) fn check_number(
    e: &mut ValidationErrors,
    field: &str,
    value: Option<&str>,
    min: u32,
    max: u32,
) -> Option<u32> {
    let v = value?;
    let n = v.parse::<u32>().ok().filter(|n| (min..=max).contains(n));
    if n.is_none() {
        e.add(field, format!("must be a whole number from {min} to {max}"));
    }
    n
}
