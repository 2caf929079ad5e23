//! Processors: one streaming SQL query over a team's streams (windows, aggregates, filters,
//! projections), its results delivered to one of the team's sinks (a sink of kind `stream` makes
//! them a stream other routes and processors read). Run and operated like routes: the same
//! config, alerts, desired state and delivery promise, checked by the same code.

use super::route::check_job_knobs;
use super::*;

/// How a processor reads one of its input streams: which column is event time, and how late
/// an event may be and still count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProcessorInput {
    /// The timestamp column windows are measured in (a `date-time` field of the stream's
    /// schema); none: `_ingested_at`, the time the log took the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    /// How long after a window's end its late events still count, in milliseconds (0 to one
    /// day); later ones go to the dead-letter queue with reason `late`.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[cfg_attr(feature = "store", schema(minimum = 0, maximum = 86_400_000))]
    pub allowed_lateness_ms: u32,
    /// A partition silent this long stops holding the watermark back, in milliseconds (1000 to
    /// one day; default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "store", schema(minimum = 1000, maximum = 86_400_000))]
    pub idle_timeout_ms: Option<u32>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl ProcessorInput {
    /// The column windows over this input are measured in.
    pub fn time_column(&self) -> &str {
        self.event_time.as_deref().unwrap_or(INGEST_TIME_COLUMN)
    }

    pub fn idle_timeout_ms(&self) -> u32 {
        self.idle_timeout_ms.unwrap_or(DEFAULT_IDLE_TIMEOUT_MS)
    }
}

/// The envelope's column holding the time the log took each event.
pub const INGEST_TIME_COLUMN: &str = "_ingested_at";
pub const LATENESS_MAX_MS: u32 = 86_400_000;
pub const DEFAULT_IDLE_TIMEOUT_MS: u32 = 10_000;
/// The longest state TTL: 30 days, in seconds.
pub const STATE_TTL_MAX_S: u32 = 30 * 86_400;

/// A processor: a streaming SQL query whose results go to one sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProcessorSpec {
    #[serde(default)]
    pub description: String,
    /// One SELECT query over the team's streams, in Flink SQL's streaming dialect (see
    /// docs/processors.md): each stream is a table of its schema's fields and the envelope's
    /// `_id`, `_key`, `_ingested_at`, `_partition`, `_offset`.
    pub sql: String,
    /// Per input stream (by name): its event-time column and lateness. Streams the query reads
    /// and that are not listed here use ingest time with no lateness.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, ProcessorInput>,
    /// Name of the sink the results go to (same team).
    #[cfg_attr(feature = "store", schema(value_type = String))]
    pub sink: Name,
    /// For a GROUP BY without a window: a key unseen this long is forgotten, in seconds (1 to
    /// 30 days). Required there, so that state cannot grow without bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "store", schema(minimum = 1, maximum = 2_592_000))]
    pub state_ttl_s: Option<u32>,
    #[serde(default)]
    pub delivery_on_redeploy: Delivery,
    /// Free-form job properties (layered under environment and console overrides), as routes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Alert rules of the processor's job; none declared: the defaults.
    #[serde(default = "crate::alerts::default_alert_rules")]
    pub alerts: Vec<crate::alerts::AlertRule>,
    /// Running (the default, left out of the stored spec), paused or stopped.
    #[serde(default, skip_serializing_if = "DesiredState::is_running")]
    pub state: DesiredState,
    /// Labels an approval policy can match (e.g. `critical`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl ProcessorSpec {
    /// Structural checks; the query is planned against the input streams by the store-side
    /// service.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = ValidationErrors::default();
        check_description(&mut e, &self.description);
        check_tags(&mut e, "tags", &self.tags);
        if self.sql.trim().is_empty() {
            e.add("sql", "must be a SELECT query");
        } else if self.sql.len() > SQL_MAX_BYTES {
            e.add("sql", format!("must be at most {SQL_MAX_BYTES} bytes"));
        }
        if self.inputs.len() > INPUTS_MAX {
            e.add("inputs", format!("at most {INPUTS_MAX} inputs"));
        }
        for (stream, input) in &self.inputs {
            let at = format!("inputs.{stream}");
            if let Err(err) = Name::parse(stream) {
                e.add(&at, format!("must name a stream: {err}"));
            }
            if let Some(col) = &input.event_time {
                if let Err(msg) = check_field_path(col) {
                    e.add(format!("{at}.event_time"), msg);
                }
            }
            if input.allowed_lateness_ms > LATENESS_MAX_MS {
                e.add(format!("{at}.allowed_lateness_ms"), format!("must be at most {LATENESS_MAX_MS} (one day)"));
            }
            if let Some(idle) = input.idle_timeout_ms {
                if !(1000..=LATENESS_MAX_MS).contains(&idle) {
                    e.add(format!("{at}.idle_timeout_ms"), format!("must be between 1000 and {LATENESS_MAX_MS}"));
                }
            }
        }
        if let Some(ttl) = self.state_ttl_s {
            check_range(&mut e, "state_ttl_s", ttl, STATE_TTL_MAX_S);
        }
        check_job_knobs(&mut e, &self.config, &self.alerts);
        e.into_result(())
    }

    /// How the processor reads `stream` (the defaults when the spec does not say).
    pub fn input(&self, stream: &str) -> ProcessorInput {
        self.inputs.get(stream).cloned().unwrap_or_default()
    }

    /// What the running job is built from (see [`RouteSpec::job_relevant`]).
    pub fn job_relevant(&self) -> ProcessorSpec {
        ProcessorSpec {
            description: String::new(),
            alerts: Vec::new(),
            state: DesiredState::Running,
            tags: Vec::new(),
            ..self.clone()
        }
    }

    pub fn job_settings(&self) -> Result<JobSettings, ValidationErrors> {
        job_settings_of(&self.config)
    }
}

/// What the planner needs of a processor to explain it: its query, its inputs' settings and
/// whether state expires (the console's editor sends these as the user types).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    #[cfg_attr(
        feature = "store",
        schema(
            example = "SELECT _key, COUNT(*) AS n FROM clicks GROUP BY TUMBLE(_ingested_at, INTERVAL '1' MINUTE), _key"
        )
    )]
    pub sql: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, ProcessorInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_ttl_s: Option<u32>,
}

impl ProcessorSpec {
    pub fn explain_request(&self) -> ExplainRequest {
        ExplainRequest { sql: self.sql.clone(), inputs: self.inputs.clone(), state_ttl_s: self.state_ttl_s }
    }
}

/// A planned query as its author sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct ProcessorPlan {
    /// The streams the query reads.
    pub inputs: Vec<String>,
    /// The result's columns, in order, with their types.
    pub output: Vec<OutputColumn>,
    /// `stateless` (each event in, at most one row out), `windowed` (a row per window and key
    /// when the window closes), `updating` (a row per key, updated as events arrive) or
    /// `deduplicated` (a row per key: its first or last event).
    pub kind: String,
    /// The window, for a windowed query (`tumbling 1m on ts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// The group keys, besides the window (or the deduplication's keys).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// Which row per key a deduplication keeps (`first by ts`, `last by ts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<String>,
    /// The plan's operators, top first, indented by depth.
    pub operators: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct OutputColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub nullable: bool,
}

/// A processor's query as typed, run on its stream's newest events: nothing is saved or
/// delivered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProcessorPreviewRequest {
    #[cfg_attr(
        feature = "store",
        schema(
            example = "SELECT _key, COUNT(*) AS n FROM clicks GROUP BY TUMBLE(_ingested_at, INTERVAL '1' MINUTE), _key"
        )
    )]
    pub sql: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, ProcessorInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_ttl_s: Option<u32>,
    /// How many of the stream's newest events (default 500, at most 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl ProcessorPreviewRequest {
    pub fn explain_request(&self) -> ExplainRequest {
        ExplainRequest { sql: self.sql.clone(), inputs: self.inputs.clone(), state_ttl_s: self.state_ttl_s }
    }
}

/// What a preview made of the newest events: the results the sink would hold once every window
/// read had closed (an updated key's latest row), the events it could not use, and the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct ProcessorPreview {
    pub plan: ProcessorPlan,
    /// Events read: the stream's newest, oldest first per partition.
    pub events: usize,
    /// Result rows, one per result id, in the order first emitted.
    #[cfg_attr(feature = "store", schema(value_type = Vec<Object>))]
    pub results: Vec<serde_json::Value>,
    /// Events behind the watermark whose windows (or keys) were already done: a running job
    /// dead-letters them with reason `late`.
    pub late: usize,
    /// Events the query cannot use (not fitting the schema, no event time), at most 20.
    pub errors: Vec<PreviewError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(ToSchema))]
pub struct PreviewError {
    pub partition: u32,
    pub offset: u64,
    pub reason: String,
}

/// Topic of a processor's dead-letter queue: late events and results its sink refused. Apart
/// from routes' (a route and a processor may share a name; names hold no dots).
pub fn processor_dead_letter_topic(team: &str, processor: &str) -> String {
    dead_letter_topic(team, &format!("processor.{processor}"))
}

/// The most SQL a processor may hold (the planner's own limit is the same).
pub const SQL_MAX_BYTES: usize = 64 * 1024;
pub const INPUTS_MAX: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ProcessorSpec {
        serde_json::from_value(serde_json::json!({
            "sql": "SELECT user FROM plays",
            "sink": "lake",
        }))
        .unwrap()
    }

    #[test]
    fn a_processor_needs_only_its_query_and_sink() {
        let p = spec();
        assert!(p.validate().is_ok());
        assert_eq!(p.input("plays").time_column(), INGEST_TIME_COLUMN);
        assert_eq!(p.delivery_on_redeploy, Delivery::NoGap);
        // Defaults stay out of the stored spec.
        let stored = serde_json::to_value(&p).unwrap();
        assert!(stored.get("inputs").is_none() && stored.get("state").is_none(), "{stored}");
        let typo = serde_json::from_value::<ProcessorSpec>(serde_json::json!({"sql": "x", "sink": "s", "sqll": 1}));
        assert!(typo.unwrap_err().to_string().contains("sqll"));
    }

    #[test]
    fn processor_limits_name_the_field() {
        let mut p = spec();
        p.sql = " ".into();
        p.state_ttl_s = Some(0);
        p.inputs.insert(
            "plays".into(),
            ProcessorInput {
                event_time: Some("bad path".into()),
                allowed_lateness_ms: LATENESS_MAX_MS + 1,
                idle_timeout_ms: Some(5),
            },
        );
        p.inputs.insert("Bad Name".into(), ProcessorInput::default());
        p.config.insert("job.paralelism".into(), "4".into());
        let e = p.validate().unwrap_err();
        assert!(e.for_field("sql").is_some());
        assert!(e.for_field("state_ttl_s").is_some());
        assert!(e.for_field("inputs.plays.event_time").is_some());
        assert!(e.for_field("inputs.plays.allowed_lateness_ms").unwrap().contains("one day"));
        assert!(e.for_field("inputs.plays.idle_timeout_ms").is_some());
        assert!(e.for_field("inputs.Bad Name").is_some());
        assert!(e.for_field("config.job.paralelism").unwrap().contains("not a job property"));
        p.sql = "x".repeat(SQL_MAX_BYTES + 1);
        assert!(p.validate().unwrap_err().for_field("sql").unwrap().contains("at most"));
    }
}
