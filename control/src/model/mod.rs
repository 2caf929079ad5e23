//! The goal-state model: what users declare. Every spec here is stored whole in each Revision.

use crate::name::Name;
use crate::validation::ValidationErrors;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

#[cfg(feature = "store")]
use utoipa::ToSchema;

mod jobs;
mod records;
mod sinks;

pub use jobs::*;
pub use records::*;
use sinks::check_number;
pub use sinks::*;

wire_names!(Role { Viewer => "viewer", Editor => "editor", Admin => "admin" });
wire_names!(Kind { Team => "team", Stream => "stream", Sink => "sink", Route => "route", Policy => "policy" });
wire_names!(Op { Create => "create", Update => "update", Delete => "delete" });
wire_names!(Delivery { NoGap => "no_gap", NoDuplicates => "no_duplicates" });
wire_names!(DesiredState { Running => "running", Paused => "paused", Stopped => "stopped" });
wire_names!(Ordering { Partition => "partition", Unordered => "unordered" });

/// A user's platform-wide role. Team membership decides *which* objects; the role decides
/// *what* they may do with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads their teams' objects.
    Viewer,
    /// Also creates, changes and deletes their teams' objects.
    Editor,
    /// Everything, on every team; manages teams, users and tokens.
    Admin,
}

/// The kinds of goal-state object. Each is versioned through revisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Team,
    Stream,
    Sink,
    Route,
    /// A platform-wide policy (today one: `approvals`), owned by admins like teams are.
    Policy,
}

impl Kind {
    /// The plural used in URLs and navigation.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Team => "teams",
            Kind::Stream => "streams",
            Kind::Sink => "sinks",
            Kind::Route => "routes",
            Kind::Policy => "policies",
        }
    }

    /// Kinds owned by the platform (team id `""`), not by a team: only admins change them.
    pub fn is_platform(self) -> bool {
        matches!(self, Kind::Team | Kind::Policy)
    }
}

/// What a revision did to its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Create,
    Update,
    /// A tombstone: the object leaves the current goal, its history stays.
    Delete,
}

/// A team: the owner of streams, sinks and routes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TeamSpec {
    #[serde(default)]
    pub description: String,
    /// Where the team's alert notifications are POSTed (JSON, see docs/concepts.md); none: recorded
    /// in the console only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_webhook: Option<String>,
}

impl TeamSpec {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = ValidationErrors::default();
        check_description(&mut e, &self.description);
        if let Some(u) = &self.alert_webhook {
            check_http_url(&mut e, "alert_webhook", u);
        }
        e.into_result(())
    }
}

/// An http(s) URL with a host: where Keystone may send requests.
fn check_http_url(e: &mut ValidationErrors, field: &str, u: &str) {
    match url::Url::parse(u) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {}
        Ok(_) => e.add(field, "must be an http:// or https:// URL with a host"),
        Err(err) => e.add(field, format!("is not a valid URL: {err}")),
    }
}

pub const PARTITIONS_MAX: u32 = 256;
pub const RETENTION_HOURS_MAX: u32 = 24 * 365;
pub const RETENTION_BYTES_MIN: u64 = 1 << 20;
pub const DESCRIPTION_MAX: usize = 2000;

/// A stream: one event type, carried by one topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    #[serde(default)]
    pub description: String,
    /// Number of partitions of the stream's topic (1 to 256).
    #[cfg_attr(feature = "store", schema(minimum = 1, maximum = 256))]
    pub partitions: u32,
    /// How long events are kept, in hours (1 to 8760).
    #[cfg_attr(feature = "store", schema(minimum = 1, maximum = 8760))]
    pub retention_hours: u32,
    /// Optional cap on the size kept per partition, in bytes (at least 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "store", schema(minimum = 1048576))]
    pub retention_bytes: Option<u64>,
    /// Optional dotted path of the event field whose value keys the partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_field: Option<String>,
    /// Optional JSON Schema every event must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "store", schema(value_type = Option<Object>))]
    pub schema: Option<serde_json::Value>,
    /// Optional ingest quota: events per second (bursts of two seconds' worth); beyond it
    /// producers get 429 with Retry-After.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "store", schema(minimum = 1, maximum = 10_000_000))]
    pub max_events_per_second: Option<u32>,
    /// Labels an approval policy can match (e.g. `critical`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl StreamSpec {
    /// Structural checks; the JSON Schema itself is compiled by the store-side service.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = ValidationErrors::default();
        check_description(&mut e, &self.description);
        check_range(&mut e, "partitions", self.partitions, PARTITIONS_MAX);
        check_range(&mut e, "retention_hours", self.retention_hours, RETENTION_HOURS_MAX);
        if let Some(b) = self.retention_bytes {
            if b < RETENTION_BYTES_MIN {
                e.add("retention_bytes", format!("must be at least {RETENTION_BYTES_MIN} bytes (1 MiB) (got {b})"));
            }
        }
        if let Some(k) = &self.key_field {
            if let Err(msg) = check_field_path(k) {
                e.add("key_field", msg);
            }
        }
        if let Some(s) = &self.schema {
            if !(s.is_object() || s.is_boolean()) {
                e.add("schema", "must be a JSON object (a JSON Schema)");
            }
        }
        if let Some(q) = self.max_events_per_second {
            check_range(&mut e, "max_events_per_second", q, QUOTA_MAX);
        }
        check_tags(&mut e, "tags", &self.tags);
        e.into_result(())
    }
}

/// The log topic carrying a stream's events.
pub fn stream_topic(team: &str, stream: &str, incarnation: i64) -> String {
    // The first incarnation keeps the name topics have always had.
    if incarnation == 0 {
        format!("{team}.{stream}")
    } else {
        format!("{team}.{stream}_{incarnation}")
    }
}

/// What a route promises when its job is redeployed (the latency vs duplicates trade-off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// The new version starts before the old one stops: no pause, may repeat a bounded window.
    #[default]
    NoGap,
    /// The old version drains and checkpoints first: a short pause, no duplicates.
    NoDuplicates,
}

/// What a route's owners want its job to do; the reconciler makes the job so and reports the
/// observed phase beside it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    #[default]
    Running,
    /// Suspended in place: the job finishes the batch in hand, commits it, then reads nothing
    /// until resumed; it keeps its sink and resumes at once, right after the last delivered
    /// event (no gap, no duplicates).
    Paused,
    /// Shut down: drained, checkpointed and removed, releasing its sink's connections. Started
    /// again it resumes from its checkpoint like a restarted job.
    Stopped,
}

impl DesiredState {
    pub fn is_running(&self) -> bool {
        *self == DesiredState::Running
    }
}

/// Whether a route keeps the per-partition order of events at its sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Events of one partition reach the sink in log order.
    #[default]
    Partition,
    /// Batches may be delivered in parallel and out of order, for throughput.
    Unordered,
}

/// Which fields of an event reach the sink. Paths are dotted (`user.email`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Projection {
    /// Keep only these fields (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep: Vec<String>,
    /// Remove these fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
    /// Rename fields: old path to new path.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
    /// Data hygiene: replace these fields' values with `"****"` (before keep/drop/rename, so
    /// paths name the stream's fields).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mask: Vec<String>,
    /// Data hygiene: replace these fields' values with a pseudonym, the hex SHA-256 of the team
    /// and the value: stable within a team (joins still work), not reversible without guessing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash: Vec<String>,
    /// Data hygiene: remove fields whose value is null, at any depth (last).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop_nulls: bool,
}

impl Projection {
    pub fn is_empty(&self) -> bool {
        self.keep.is_empty()
            && self.drop.is_empty()
            && self.rename.is_empty()
            && self.mask.is_empty()
            && self.hash.is_empty()
            && !self.drop_nulls
    }

    /// Every path the projection reads, with the field name to report it under.
    pub fn paths(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        out.extend(self.keep.iter().enumerate().map(|(i, p)| (format!("projection.keep[{i}]"), p.as_str())));
        out.extend(self.drop.iter().enumerate().map(|(i, p)| (format!("projection.drop[{i}]"), p.as_str())));
        out.extend(self.rename.keys().map(|p| (format!("projection.rename.{p}"), p.as_str())));
        out.extend(self.mask.iter().enumerate().map(|(i, p)| (format!("projection.mask[{i}]"), p.as_str())));
        out.extend(self.hash.iter().enumerate().map(|(i, p)| (format!("projection.hash[{i}]"), p.as_str())));
        out
    }
}

pub const BATCH_SIZE_MAX: u32 = 10_000;
pub const QUOTA_MAX: u32 = 10_000_000;
pub const MAX_LATENCY_MS_MAX: u32 = 600_000;

/// A route: events of one stream, filtered and projected, delivered to one sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    #[serde(default)]
    pub description: String,
    /// Name of the source stream (same team).
    #[cfg_attr(feature = "store", schema(value_type = String))]
    pub stream: Name,
    /// Name of the sink (same team).
    #[cfg_attr(feature = "store", schema(value_type = String))]
    pub sink: Name,
    /// Optional CEL expression over `event`; only events for which it is true are delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Projection::is_empty")]
    pub projection: Projection,
    /// Most events per sink request (1 to 10000).
    #[serde(default = "default_batch_size")]
    #[cfg_attr(feature = "store", schema(minimum = 1, maximum = 10_000))]
    pub batch_size: u32,
    /// Longest an event waits for its batch to fill, in milliseconds (1 to 600000).
    #[serde(default = "default_max_latency_ms")]
    #[cfg_attr(feature = "store", schema(minimum = 1, maximum = 600_000))]
    pub max_latency_ms: u32,
    #[serde(default)]
    pub delivery_on_redeploy: Delivery,
    #[serde(default)]
    pub ordering: Ordering,
    /// Free-form job properties (layered under environment and console overrides).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Alert rules of the route's job; a route that declares none gets the defaults.
    #[serde(default = "crate::alerts::default_alert_rules")]
    pub alerts: Vec<crate::alerts::AlertRule>,
    /// Running (the default, left out of the stored spec), paused or stopped.
    #[serde(default, skip_serializing_if = "DesiredState::is_running")]
    pub state: DesiredState,
    /// Labels an approval policy can match (e.g. `critical`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

pub fn default_batch_size() -> u32 {
    500
}
pub fn default_max_latency_ms() -> u32 {
    1000
}

impl RouteSpec {
    /// What the running job is built from: the spec without what only people, approval
    /// policies and the alert evaluator read (description, tags, alert rules) and without the desired state (pausing is not
    /// a new version of the job), so changing those does not redeploy the job.
    pub fn job_relevant(&self) -> RouteSpec {
        RouteSpec {
            description: String::new(),
            alerts: Vec::new(),
            state: DesiredState::Running,
            tags: Vec::new(),
            ..self.clone()
        }
    }

    /// Structural checks; the filter is compiled and references resolved by the store-side
    /// service.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = ValidationErrors::default();
        check_description(&mut e, &self.description);
        check_tags(&mut e, "tags", &self.tags);
        if let Some(f) = &self.filter {
            if f.trim().is_empty() {
                e.add("filter", "must not be blank (omit it to deliver every event)");
            }
        }
        for (field, path) in self.projection.paths() {
            if let Err(msg) = check_field_path(path) {
                e.add(field, msg);
            }
        }
        for (from, to) in &self.projection.rename {
            if let Err(msg) = check_field_path(to) {
                e.add(format!("projection.rename.{from}"), format!("target {msg}"));
            }
        }
        check_range(&mut e, "batch_size", self.batch_size, BATCH_SIZE_MAX);
        check_range(&mut e, "max_latency_ms", self.max_latency_ms, MAX_LATENCY_MS_MAX);
        crate::alerts::validate_rules(&self.alerts, &mut e);
        for key in self.config.keys() {
            let ok = !key.is_empty()
                && key.len() <= 100
                && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_');
            if !ok {
                e.add(format!("config.{key}"), "keys use lowercase letters, digits, '.' and '_'");
            }
        }
        if let Err(job_errors) = self.job_settings() {
            e.0.extend(job_errors.0);
        }
        e.into_result(())
    }

    /// The job properties Keystone itself reads from `config` (keys under `job.`), with their
    /// defaults. Other keys are free-form.
    /// The worker pool whose workers run this route's job (`job.pool`); `None`: the workers
    /// without a pool. (A process in role `all` runs every route.)
    pub fn pool(&self) -> Option<&str> {
        self.config.get("job.pool").map(String::as_str).filter(|p| !p.is_empty())
    }

    pub fn job_settings(&self) -> Result<JobSettings, ValidationErrors> {
        let mut e = ValidationErrors::default();
        let mut s = JobSettings::default();
        for (key, value) in self.config.iter().filter(|(k, _)| k.starts_with("job.")) {
            let field = format!("config.{key}");
            let number = |lo: u32, hi: u32, e: &mut ValidationErrors| check_number(e, &field, Some(value), lo, hi);
            match key.as_str() {
                "job.checkpoint_interval_ms" => {
                    s.checkpoint_interval_ms = number(10, 600_000, &mut e).unwrap_or(s.checkpoint_interval_ms)
                }
                "job.stall_timeout_s" => s.stall_timeout_s = number(10, 86_400, &mut e).unwrap_or(s.stall_timeout_s),
                "job.stability_s" => s.stability_s = number(0, 3_600, &mut e).unwrap_or(s.stability_s),
                "job.max_error_percent" => s.max_error_percent = number(1, 100, &mut e).unwrap_or(s.max_error_percent),
                // Read by `pool`; checked here with the other job properties.
                "job.pool" => {
                    if let Err(err) = Name::parse(value) {
                        e.add(field, format!("must be a pool name: {err}"));
                    }
                }
                "job.start_at" => match value.as_str() {
                    "earliest" => s.start_at_latest = false,
                    "latest" => s.start_at_latest = true,
                    _ => e.add(field, "must be earliest or latest"),
                },
                _ => e.add(
                    field,
                    "is not a job property (job.checkpoint_interval_ms, job.stall_timeout_s, job.start_at, \
                     job.stability_s, job.max_error_percent, job.pool)",
                ),
            }
        }
        e.into_result(s)
    }
}

/// Job properties a route may set in its `config` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSettings {
    /// How often acknowledged positions are committed: the bound on repeats after a crash.
    pub checkpoint_interval_ms: u32,
    /// A job with waiting events and no progress for this long is restarted.
    pub stall_timeout_s: u32,
    /// Where a new route starts reading: the oldest retained event (default) or new events only.
    pub start_at_latest: bool,
    /// How long a new version must stay healthy after a deployment before it counts as stable
    /// (0: no stability gate).
    pub stability_s: u32,
    /// A new version whose failed events (filter errors, dead letters) exceed this share of the
    /// events it read within its stability window is rolled back.
    pub max_error_percent: u32,
}

impl JobSettings {
    pub fn gate(&self) -> crate::deployments::Gate {
        crate::deployments::Gate { window_s: self.stability_s, max_error_percent: self.max_error_percent }
    }
}

/// The platform defaults of the job properties (the lowest configuration layer).
pub const DEFAULT_JOB_SETTINGS: JobSettings = JobSettings {
    checkpoint_interval_ms: 1000,
    stall_timeout_s: 120,
    start_at_latest: false,
    stability_s: 60,
    max_error_percent: 50,
};

impl Default for JobSettings {
    fn default() -> Self {
        DEFAULT_JOB_SETTINGS
    }
}

/// Every numeric knob runs from 1 to its maximum.
fn check_range(e: &mut ValidationErrors, field: &str, value: u32, max: u32) {
    if !(1..=max).contains(&value) {
        e.add(field, format!("must be between 1 and {max} (got {value})"));
    }
}

/// A folder below the file sinks' root: relative, without `..`, empty segments or NUL.
pub fn is_relative_path(p: &str) -> bool {
    !(p.is_empty()
        || p.starts_with('/')
        || p.split(['/', '\\']).any(|seg| seg == ".." || seg.is_empty())
        || p.contains('\0'))
}

pub const TAGS_MAX: usize = 20;

/// Tags are short lowercase labels (`production`, `pii`, `tier-1`), each given once.
pub(crate) fn check_tags(e: &mut ValidationErrors, field: &str, tags: &[String]) {
    if tags.len() > TAGS_MAX {
        e.add(field, format!("at most {TAGS_MAX} tags"));
    }
    for (i, t) in tags.iter().enumerate() {
        let ok = (1..=40).contains(&t.len())
            && t.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !ok {
            e.add(format!("{field}[{i}]"), "tags are 1 to 40 lowercase letters, digits, '-' or '_'");
        } else if tags[..i].contains(t) {
            e.add(format!("{field}[{i}]"), format!("{t:?} is given twice"));
        }
    }
}

pub(crate) fn check_description(e: &mut ValidationErrors, d: &str) {
    if d.chars().count() > DESCRIPTION_MAX {
        e.add("description", format!("must be at most {DESCRIPTION_MAX} characters"));
    }
}

/// A dotted path into an event: non-empty segments of letters, digits, `_` and `-`.
pub fn check_field_path(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("must not be empty".into());
    }
    for seg in p.split('.') {
        if seg.is_empty() {
            return Err(format!("{p:?} has an empty segment"));
        }
        if let Some(c) = seg.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
            return Err(format!("{p:?} contains {c:?}; use letters, digits, '_' or '-' between dots"));
        }
    }
    Ok(())
}

/// Topic of a route's dead-letter queue: one partition, events a sink permanently refused.
pub fn dead_letter_topic(team: &str, route: &str) -> String {
    format!("{DEAD_LETTER_PREFIX}{team}.{route}")
}

const DEAD_LETTER_PREFIX: &str = "_dlq.";

/// Whether a topic is a route's dead-letter queue (not a stream's topic).
pub fn is_dead_letter_topic(topic: &str) -> bool {
    topic.starts_with(DEAD_LETTER_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_phase_changes_only_along_declared_transitions() {
        use JobPhase::*;
        for p in JobPhase::ALL {
            assert!(p.may_become(Starting) && p.may_become(Stopped) && p.may_become(p), "{p}");
        }
        for (from, to) in [
            (Starting, Running),
            (Running, Failing),
            (Failing, Running),
            (Running, Paused),
            (Paused, Running),
            (Failing, Failed),
            (Starting, Failed),
        ] {
            assert!(from.may_become(to), "{from} -> {to}");
        }
        for (from, to) in [(Failed, Running), (Stopped, Running), (Failed, Paused), (Stopped, Failing)] {
            assert!(!from.may_become(to), "{from} -> {to} must be refused");
        }
    }

    #[test]
    fn wire_names_are_the_serde_names_and_parse_back() {
        fn check<T: Serialize + Copy + PartialEq + std::fmt::Debug>(
            all: &[T],
            name: fn(T) -> &'static str,
            parse: fn(&str) -> Option<T>,
        ) {
            for &v in all {
                assert_eq!(serde_json::to_value(v).unwrap(), name(v), "{v:?}");
                assert_eq!(parse(name(v)), Some(v));
            }
            assert_eq!(parse("no such name"), None);
        }
        check(&Role::ALL, Role::as_str, Role::parse);
        check(&Kind::ALL, Kind::as_str, Kind::parse);
        check(&Op::ALL, Op::as_str, Op::parse);
        check(&Delivery::ALL, Delivery::as_str, Delivery::parse);
        check(&DesiredState::ALL, DesiredState::as_str, DesiredState::parse);
        check(&Ordering::ALL, Ordering::as_str, Ordering::parse);
        check(&JobPhase::ALL, JobPhase::as_str, JobPhase::parse);
    }

    fn stream() -> StreamSpec {
        StreamSpec {
            description: String::new(),
            partitions: 3,
            retention_hours: 24,
            retention_bytes: None,
            key_field: None,
            schema: None,
            max_events_per_second: None,
            tags: Vec::new(),
        }
    }

    fn route() -> RouteSpec {
        RouteSpec {
            description: String::new(),
            stream: Name::parse("plays").unwrap(),
            sink: Name::parse("search").unwrap(),
            filter: None,
            projection: Projection::default(),
            batch_size: 500,
            max_latency_ms: 1000,
            delivery_on_redeploy: Delivery::NoGap,
            ordering: Ordering::Partition,
            config: BTreeMap::new(),
            alerts: crate::alerts::default_alert_rules(),
            state: DesiredState::Running,
            tags: Vec::new(),
        }
    }

    #[test]
    fn alert_rules_description_and_desired_state_do_not_change_what_the_job_runs() {
        let quiet =
            RouteSpec { alerts: Vec::new(), description: "docs".into(), state: DesiredState::Paused, ..route() };
        assert_eq!(quiet.job_relevant(), route().job_relevant());
        // Running is the default and is left out of the stored spec.
        let json = serde_json::to_value(route()).unwrap();
        assert!(json.get("state").is_none(), "{json}");
        let paused = serde_json::to_value(RouteSpec { state: DesiredState::Paused, ..route() }).unwrap();
        assert_eq!(paused["state"], "paused");
        assert_ne!(RouteSpec { batch_size: 7, ..route() }.job_relevant(), route().job_relevant());
    }

    #[test]
    fn stream_limits_name_the_field() {
        assert!(stream().validate().is_ok());
        let e = StreamSpec { partitions: 0, retention_hours: 9000, ..stream() }.validate().unwrap_err();
        assert!(e.for_field("partitions").unwrap().contains("between 1 and 256"));
        assert!(e.for_field("retention_hours").unwrap().contains("8760"));
        let e = StreamSpec { retention_bytes: Some(10), key_field: Some("a..b".into()), ..stream() }
            .validate()
            .unwrap_err();
        assert!(e.for_field("retention_bytes").is_some());
        assert!(e.for_field("key_field").unwrap().contains("empty segment"));
        let e = StreamSpec { schema: Some(serde_json::json!([1])), ..stream() }.validate().unwrap_err();
        assert!(e.for_field("schema").is_some());
    }

    #[test]
    fn stream_spec_rejects_unknown_fields() {
        let err = serde_json::from_str::<StreamSpec>(r#"{"partitions":1,"retention_hours":1,"partitons":2}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("partitons"), "{err}");
    }

    #[test]
    fn sink_settings_are_checked_per_kind() {
        let mut s = SinkInput {
            kind: SinkKind::Http,
            description: String::new(),
            settings: BTreeMap::from([("url".into(), "ftp://x".into()), ("bogus".into(), "1".into())]),
            secrets: BTreeMap::new(),
            tags: Vec::new(),
        };
        let e = s.validate(&[]).unwrap_err();
        assert!(e.for_field("settings.url").unwrap().contains("http"));
        assert!(e.for_field("settings.bogus").unwrap().contains("not a setting"));
        s.settings = BTreeMap::from([("url".into(), "https://search.internal/bulk".into())]);
        assert!(s.validate(&[]).is_ok());

        let pg = SinkInput {
            kind: SinkKind::Postgres,
            description: String::new(),
            settings: BTreeMap::from([("table".into(), "plays".into())]),
            secrets: BTreeMap::new(),
            tags: Vec::new(),
        };
        assert_eq!(pg.validate(&[]).unwrap_err().for_field("secrets.url"), Some("is required"));
        // On update the stored secret satisfies the requirement.
        assert!(pg.validate(&["url".into()]).is_ok());

        let file = SinkInput {
            kind: SinkKind::File,
            description: String::new(),
            settings: BTreeMap::from([("path".into(), "../etc".into())]),
            secrets: BTreeMap::new(),
            tags: Vec::new(),
        };
        assert!(file.validate(&[]).unwrap_err().for_field("settings.path").is_some());
        let file_with = |pairs: &[(&str, &str)]| SinkInput {
            settings: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .chain([("path".into(), "lake".into())])
                .collect(),
            ..file.clone()
        };
        let e = file_with(&[("format", "csv"), ("roll_bytes", "10"), ("roll_seconds", "x"), ("region", "eu")])
            .validate(&[])
            .unwrap_err();
        assert!(e.for_field("settings.format").unwrap().contains("parquet"));
        assert!(e.for_field("settings.roll_bytes").unwrap().contains("1024"));
        assert!(e.for_field("settings.roll_seconds").is_some());
        assert!(e.for_field("settings.region").unwrap().contains("store_url"));
        let e = file_with(&[("store_url", "s3://bucket/prefix")]).validate(&[]).unwrap_err();
        assert!(e.for_field("settings.store_url").unwrap().contains("path"));
        let ok = [("format", "parquet"), ("roll_seconds", "60"), ("store_url", "s3://lake"), ("region", "eu-west-1")];
        assert!(file_with(&ok).validate(&[]).is_ok());
    }

    #[test]
    fn kafka_sink_settings_name_a_cluster_and_a_topic() {
        let kafka = |pairs: &[(&str, &str)]| SinkInput {
            kind: SinkKind::Kafka,
            description: String::new(),
            settings: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            secrets: BTreeMap::new(),
            tags: Vec::new(),
        };
        let e = kafka(&[]).validate(&[]).unwrap_err();
        assert_eq!(
            (e.for_field("settings.brokers"), e.for_field("settings.topic")),
            (Some("is required"), Some("is required"))
        );
        let e = kafka(&[("brokers", "kafka-1"), ("topic", "bad topic"), ("sasl_mechanism", "PLAIN")])
            .validate(&[])
            .unwrap_err();
        assert!(e.for_field("settings.brokers").unwrap().contains("host:port"));
        assert!(e.for_field("settings.topic").unwrap().contains("letters"));
        assert!(e.for_field("settings.sasl_mechanism").unwrap().contains("sasl_"));
        let ok = [
            ("brokers", "kafka-1:9092,kafka-2:9092"),
            ("topic", "plays.mirror"),
            ("security_protocol", "sasl_ssl"),
            ("sasl_mechanism", "SCRAM-SHA-512"),
            ("sasl_username", "keystone"),
        ];
        assert!(kafka(&ok).validate(&[]).is_ok());
    }

    #[test]
    fn route_knobs_and_paths_are_checked() {
        assert!(route().validate().is_ok());
        let mut r = route();
        r.batch_size = 0;
        r.max_latency_ms = 700_000;
        r.filter = Some("  ".into());
        r.projection.keep = vec!["user.email".into(), "bad path".into()];
        r.config.insert("Bad Key".into(), "1".into());
        let e = r.validate().unwrap_err();
        assert!(e.for_field("batch_size").is_some());
        assert!(e.for_field("max_latency_ms").is_some());
        assert!(e.for_field("filter").is_some());
        assert!(e.for_field("projection.keep[1]").unwrap().contains("' '"));
        assert!(e.for_field("projection.keep[0]").is_none());
        assert!(e.for_field("config.Bad Key").is_some());
    }

    #[test]
    fn route_defaults_fill_in_knobs() {
        let r: RouteSpec = serde_json::from_str(r#"{"stream":"plays","sink":"search"}"#).unwrap();
        assert_eq!((r.batch_size, r.max_latency_ms), (500, 1000));
        assert_eq!(r.delivery_on_redeploy, Delivery::NoGap);
        assert_eq!(r.ordering, Ordering::Partition);
        assert!(serde_json::from_str::<RouteSpec>(r#"{"stream":"Plays","sink":"s"}"#).is_err());
    }

    #[test]
    fn job_properties_are_read_from_config_and_checked() {
        let mut r = route();
        assert_eq!(r.job_settings().unwrap(), JobSettings::default());
        r.config.insert("job.checkpoint_interval_ms".into(), "250".into());
        r.config.insert("job.start_at".into(), "latest".into());
        r.config.insert("team.owner".into(), "ana".into());
        let s = r.job_settings().unwrap();
        assert_eq!((s.checkpoint_interval_ms, s.start_at_latest, s.stall_timeout_s), (250, true, 120));
        r.config.insert("job.start_at".into(), "yesterday".into());
        r.config.insert("job.stall_timeout_s".into(), "5".into());
        r.config.insert("job.paralelism".into(), "4".into());
        let e = r.validate().unwrap_err();
        assert!(e.for_field("config.job.start_at").is_some());
        assert!(e.for_field("config.job.stall_timeout_s").unwrap().contains("10 to 86400"));
        assert!(e.for_field("config.job.paralelism").unwrap().contains("not a job property"));
    }

    #[test]
    fn a_route_names_its_worker_pool() {
        let mut r = route();
        assert_eq!(r.pool(), None);
        r.config.insert("job.pool".into(), "search".into());
        assert_eq!(r.pool(), Some("search"));
        assert!(r.validate().is_ok());
        r.config.insert("job.pool".into(), "Search Fleet".into());
        assert!(r.validate().unwrap_err().for_field("config.job.pool").unwrap().contains("pool name"));
    }
}
