//! Routes: a stream's events, filtered and projected, delivered to one sink by a job, with
//! its delivery promise, desired state, ordering and job settings.

use super::*;

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
        check_job_knobs(&mut e, &self.config, &self.alerts);
        e.into_result(())
    }

    /// The worker pool whose workers run this route's job (`job.pool`); `None`: the workers
    /// without a pool. (A process in role `all` runs every route.)
    pub fn pool(&self) -> Option<&str> {
        self.config.get("job.pool").map(String::as_str).filter(|p| !p.is_empty())
    }

    /// The job properties Keystone itself reads from `config` (keys under `job.`), with their
    /// defaults. Other keys are free-form.
    pub fn job_settings(&self) -> Result<JobSettings, ValidationErrors> {
        job_settings_of(&self.config)
    }
}

/// The config keys, alert rules and job properties of a job's spec (a route's or a processor's).
pub(crate) fn check_job_knobs(
    e: &mut ValidationErrors,
    config: &BTreeMap<String, String>,
    alerts: &[crate::alerts::AlertRule],
) {
    crate::alerts::validate_rules(alerts, e);
    for key in config.keys() {
        let ok = !key.is_empty()
            && key.len() <= 100
            && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_');
        if !ok {
            e.add(format!("config.{key}"), "keys use lowercase letters, digits, '.' and '_'");
        }
    }
    if let Err(job_errors) = job_settings_of(config) {
        e.0.extend(job_errors.0);
    }
}

/// The job properties a `config` map sets (keys under `job.`), over their defaults.
pub fn job_settings_of(config: &BTreeMap<String, String>) -> Result<JobSettings, ValidationErrors> {
    let mut e = ValidationErrors::default();
    let mut s = JobSettings::default();
    for (key, value) in config.iter().filter(|(k, _)| k.starts_with("job.")) {
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

/// Topic of a route's dead-letter queue: one partition, events a sink permanently refused.
pub fn dead_letter_topic(team: &str, route: &str) -> String {
    format!("{DEAD_LETTER_PREFIX}{team}.{route}")
}

const DEAD_LETTER_PREFIX: &str = "_dlq.";

/// Whether a topic is a route's dead-letter queue (not a stream's topic).
pub fn is_dead_letter_topic(topic: &str) -> bool {
    topic.starts_with(DEAD_LETTER_PREFIX)
}
