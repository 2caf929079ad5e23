//! The goal-state model: what users declare. Every spec here is stored whole in each Revision.

use crate::name::Name;
use crate::validation::ValidationErrors;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

#[cfg(feature = "store")]
use utoipa::ToSchema;

mod jobs;
mod processor;
mod records;
mod route;
mod sinks;
mod source;
mod stream;

pub use jobs::*;
pub use processor::*;
pub use records::*;
pub use route::*;
use sinks::check_number;
pub use sinks::*;
pub use source::*;
pub use stream::*;

wire_names!(Role { Viewer => "viewer", Editor => "editor", Admin => "admin" });
wire_names!(Kind { Team => "team", Stream => "stream", Sink => "sink", Route => "route", Processor => "processor", Source => "source", Policy => "policy" });
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
    /// A streaming SQL query whose results go to a sink (`ProcessorSpec`).
    Processor,
    /// A system Keystone reads events from into streams, e.g. a database's changes (`SourceSpec`).
    Source,
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
            Kind::Processor => "processors",
            Kind::Source => "sources",
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

pub const DESCRIPTION_MAX: usize = 2000;

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
