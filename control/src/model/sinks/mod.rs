//! Sinks: the systems a route delivers to, their settings and secrets, and their validation.

use super::*;

mod file;
mod http;
mod kafka;
mod postgres;
mod stream;

pub use file::{BucketSettings, FileFormat, FileSettings};
pub use http::{HttpFormat, HttpSettings, HTTP_TIMEOUT_MS_DEFAULT};
pub use kafka::KafkaSettings;
pub use postgres::{PostgresMode, PostgresSettings};
pub use stream::{StreamRef, StreamSettings};

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

    /// The kind's plain settings and its secrets, each documented where the kind is typed.
    fn docs(self) -> (&'static [SettingDoc], &'static [SettingDoc]) {
        match self {
            SinkKind::Http => (http::SETTINGS, http::SECRETS),
            SinkKind::File => (file::SETTINGS, file::SECRETS),
            SinkKind::Postgres => (postgres::SETTINGS, postgres::SECRETS),
            SinkKind::Stream => (stream::SETTINGS, stream::SECRETS),
            SinkKind::Kafka => (kafka::SETTINGS, kafka::SECRETS),
        }
    }

    /// Plain settings, shown back to users.
    pub fn settings(self) -> &'static [SettingDoc] {
        self.docs().0
    }

    /// Secret settings: write-only, never echoed back.
    pub fn secrets(self) -> &'static [SettingDoc] {
        self.docs().1
    }
}

impl fmt::Display for SinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
    /// Checks keys and values against the kind, and returns the settings typed.
    /// `existing_secrets` are the secret keys already stored (on update), which satisfy a
    /// required secret not given again.
    pub fn validate(&self, existing_secrets: &[String]) -> Result<SinkSettings, ValidationErrors> {
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
        let typed = SinkSettings::parse(kind, &self.settings).map_err(|errors| e.0.extend(errors.0)).ok();
        if kind == SinkKind::Postgres {
            postgres::PostgresSettings::check_secrets(&self.secrets, &mut e);
        }
        match typed {
            Some(typed) if e.is_empty() => Ok(typed),
            _ => Err(e),
        }
    }
}

/// A sink's settings, typed: what every reader of a declaration (validation, the job that builds
/// the sink, lineage, the egress check, backfills) goes through instead of the string map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSettings {
    Http(HttpSettings),
    File(FileSettings),
    Postgres(PostgresSettings),
    Stream(StreamSettings),
    Kafka(KafkaSettings),
}

impl SinkSettings {
    /// Reads a kind's settings map; every problem is reported, under `settings.<key>`.
    /// Unknown keys are the caller's concern ([`SinkInput::validate`] reports them).
    pub fn parse(kind: SinkKind, settings: &BTreeMap<String, String>) -> Result<SinkSettings, ValidationErrors> {
        let mut r = Reader { settings, errors: ValidationErrors::default() };
        for d in kind.settings().iter().filter(|d| d.required) {
            if settings.get(d.key).is_none_or(|v| v.trim().is_empty()) {
                r.error(d.key, "is required");
            }
        }
        let typed = match kind {
            SinkKind::Http => SinkSettings::Http(HttpSettings::read(&mut r)),
            SinkKind::File => SinkSettings::File(FileSettings::read(&mut r)),
            SinkKind::Postgres => SinkSettings::Postgres(PostgresSettings::read(&mut r)),
            SinkKind::Stream => SinkSettings::Stream(StreamSettings::read(&mut r)),
            SinkKind::Kafka => SinkSettings::Kafka(KafkaSettings::read(&mut r)),
        };
        r.errors.into_result(typed)
    }

    /// Whether the sink may use the host's own cloud credentials (an admin's choice).
    pub fn ambient_credentials(&self) -> bool {
        matches!(self, SinkSettings::File(FileSettings { bucket: Some(b), .. }) if b.ambient_credentials)
    }

    /// The target of a stream sink, as declared (`name` or `team/name`).
    pub fn stream_target(&self) -> Option<&str> {
        match self {
            SinkSettings::Stream(s) => Some(&s.stream),
            _ => None,
        }
    }
}

impl SinkSpec {
    /// The declaration's settings, typed. A stored spec was validated when declared, so an error
    /// here means the rules grew stricter since (the job reports it, nothing else breaks).
    pub fn typed(&self) -> Result<SinkSettings, ValidationErrors> {
        SinkSettings::parse(self.kind, &self.settings)
    }

    /// Whether the sink may use the host's own cloud credentials (an admin's choice).
    pub fn ambient_credentials(&self) -> bool {
        self.typed().is_ok_and(|s| s.ambient_credentials())
    }

    /// The target of a stream sink, as declared (`name` or `team/name`).
    pub fn stream_target(&self) -> Option<&str> {
        (self.kind == SinkKind::Stream).then(|| self.settings.get("stream").map(String::as_str)).flatten()
    }
}

/// Reads one settings map, collecting errors: a required key already missing reads as empty.
pub(crate) struct Reader<'a> {
    settings: &'a BTreeMap<String, String>,
    errors: ValidationErrors,
}

impl<'a> Reader<'a> {
    /// A given, non-empty value.
    fn get(&self, key: &str) -> Option<&'a str> {
        self.settings.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// A required value, or empty (its absence is reported once, by [`SinkSettings::parse`]).
    fn required(&self, key: &str) -> String {
        self.settings.get(key).filter(|v| !v.trim().is_empty()).cloned().unwrap_or_default()
    }

    fn number(&mut self, key: &str, min: u32, max: u32) -> Option<u32> {
        let value = self.get(key);
        check_number(&mut self.errors, &format!("settings.{key}"), value, min, max)
    }

    fn http_url(&mut self, key: &str, url: &str) {
        super::check_http_url(&mut self.errors, &format!("settings.{key}"), url);
    }

    fn error(&mut self, key: &str, message: impl Into<String>) {
        self.errors.add(format!("settings.{key}"), message);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(kind: SinkKind, kv: &[(&str, &str)]) -> Result<SinkSettings, ValidationErrors> {
        SinkSettings::parse(kind, &kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn settings_read_once_come_out_typed_with_their_defaults() {
        let http =
            parse(SinkKind::Http, &[("url", "https://es.example/_bulk"), ("format", "bulk"), ("index", "plays")]);
        assert_eq!(
            http.unwrap(),
            SinkSettings::Http(HttpSettings {
                url: "https://es.example/_bulk".into(),
                timeout_ms: HTTP_TIMEOUT_MS_DEFAULT,
                format: HttpFormat::Bulk { index: "plays".into() },
            })
        );
        let file =
            parse(SinkKind::File, &[("path", "lake/p"), ("store_url", "s3://b"), ("ambient_credentials", "true")]);
        let SinkSettings::File(file) = file.unwrap() else { panic!("a file sink") };
        assert_eq!((file.format, file.roll_bytes, file.roll_seconds), (FileFormat::Ndjson, None, None));
        let bucket = file.bucket.expect("a bucket");
        assert!(bucket.ambient_credentials && bucket.endpoint.is_none() && bucket.url == "s3://b");
        let kafka = parse(SinkKind::Kafka, &[("brokers", "k:9092"), ("topic", "t")]).unwrap();
        let SinkSettings::Kafka(kafka) = kafka else { panic!("a kafka sink") };
        assert_eq!((kafka.security_protocol.as_str(), kafka.sasl_mechanism), ("plaintext", None));
        assert_eq!(parse(SinkKind::Stream, &[("stream", "beta/clicks")]).unwrap().stream_target(), Some("beta/clicks"));
    }

    #[test]
    fn every_problem_is_reported_under_its_setting() {
        let e = parse(SinkKind::Http, &[("timeout_ms", "0"), ("format", "bulk")]).unwrap_err();
        let fields: Vec<&str> = e.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["settings.url", "settings.timeout_ms", "settings.index"]);
        let e = parse(SinkKind::File, &[("path", "../up"), ("endpoint", "http://minio:9000")]).unwrap_err();
        assert_eq!(e.for_field("settings.endpoint"), Some("applies only with a store_url"));
        assert!(e.for_field("settings.path").is_some());
    }
}
