//! Layered job configuration. The effective value of each key a job reads is, lowest first:
//! the platform default, the route's declaration, an environment variable of the process
//! running the job (`KEYSTONE_JOB_<KEY>`, see [`env_var`]), and a console override set on the
//! route by an operator. Each value keeps where it came from, so the console can show it.
//!
//! The job is built from the *effective* route spec ([`effective`]), so a new override or
//! environment value changes the job's fingerprint and the reconciler rolls the job with the
//! route's deployment strategy, like any other change.

use crate::model::{RouteSpec, DEFAULT_JOB_SETTINGS};
use crate::validation::ValidationErrors;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The keys that take part in layering: the route's batching knobs and the job properties.
pub const LAYERED_KEYS: [&str; 7] = [
    "batch_size",
    "max_latency_ms",
    "job.checkpoint_interval_ms",
    "job.stall_timeout_s",
    "job.start_at",
    "job.stability_s",
    "job.max_error_percent",
];

/// The environment variable that sets `key` for every job of a process:
/// `job.stall_timeout_s` -> `KEYSTONE_JOB_STALL_TIMEOUT_S`, `batch_size` ->
/// `KEYSTONE_JOB_BATCH_SIZE`.
pub fn env_var(key: &str) -> String {
    format!("KEYSTONE_JOB_{}", key.trim_start_matches("job.").replace('.', "_").to_ascii_uppercase())
}

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
#[serde(tag = "layer", rename_all = "snake_case")]
pub enum ConfigSource {
    Default,
    Route,
    /// The environment variable of the process running the job.
    Env {
        var: String,
    },
    /// A console (or API) override on the route.
    Override {
        by: String,
        at: i64,
    },
}

impl ConfigSource {
    /// "platform default", "route", "env KEYSTONE_JOB_BATCH_SIZE", "override by alice".
    pub fn describe(&self) -> String {
        match self {
            ConfigSource::Default => "platform default".into(),
            ConfigSource::Route => "route".into(),
            ConfigSource::Env { var } => format!("env {var}"),
            ConfigSource::Override { by, .. } => format!("override by {by}"),
        }
    }
}

/// One key's effective value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct ConfigEntry {
    pub key: String,
    pub value: String,
    pub source: ConfigSource,
}

/// An operator's override of one key of one route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct ConfigOverride {
    pub key: String,
    pub value: String,
    pub by: String,
    pub at: i64,
}

/// The route's own value of `key` (declared, or the platform default), and which it is.
fn declared(spec: &RouteSpec, key: &str) -> (String, ConfigSource) {
    match key {
        // Declared fields with serde defaults: the declaration always says something.
        "batch_size" => (spec.batch_size.to_string(), ConfigSource::Route),
        "max_latency_ms" => (spec.max_latency_ms.to_string(), ConfigSource::Route),
        _ => match spec.config.get(key) {
            Some(v) => (v.clone(), ConfigSource::Route),
            None => (default_of(key), ConfigSource::Default),
        },
    }
}

fn default_of(key: &str) -> String {
    let d = DEFAULT_JOB_SETTINGS;
    match key {
        "job.checkpoint_interval_ms" => d.checkpoint_interval_ms.to_string(),
        "job.stall_timeout_s" => d.stall_timeout_s.to_string(),
        "job.start_at" => if d.start_at_latest { "latest" } else { "earliest" }.into(),
        "job.stability_s" => d.stability_s.to_string(),
        "job.max_error_percent" => d.max_error_percent.to_string(),
        _ => String::new(),
    }
}

/// `spec` with `key` set to `value`.
fn with_value(spec: &mut RouteSpec, key: &str, value: &str, e: &mut ValidationErrors, field: &str) {
    let number = |e: &mut ValidationErrors| match value.trim().parse::<u32>() {
        Ok(n) => Some(n),
        Err(_) => {
            e.add(field, "must be a whole number");
            None
        }
    };
    match key {
        "batch_size" => spec.batch_size = number(e).unwrap_or(spec.batch_size),
        "max_latency_ms" => spec.max_latency_ms = number(e).unwrap_or(spec.max_latency_ms),
        _ => {
            spec.config.insert(key.to_owned(), value.trim().to_owned());
        }
    }
}

/// Checks that `key` is layered and `value` valid for it; errors name `field`.
pub fn check_value(key: &str, value: &str, field: &str) -> Result<(), ValidationErrors> {
    if !LAYERED_KEYS.contains(&key) {
        return Err(ValidationErrors::single(
            field,
            format!("{key:?} is not a configuration key ({})", LAYERED_KEYS.join(", ")),
        ));
    }
    let mut e = ValidationErrors::default();
    let mut spec = probe_route();
    with_value(&mut spec, key, value, &mut e, field);
    if e.is_empty() {
        if let Err(errors) = spec.validate() {
            for err in errors.0 {
                e.add(field, err.message);
            }
        }
    }
    e.into_result(())
}

/// A minimal valid route to check a single value against.
fn probe_route() -> RouteSpec {
    serde_json::from_value(serde_json::json!({"stream": "probe", "sink": "probe"}))
        .expect("a route with a stream and a sink deserialises")
}

/// Reads the layered keys from environment variables (`vars`: name, value pairs, such as
/// `std::env::vars()`), checking each value: a bad one is an error naming the variable.
pub fn env_layer(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, ValidationErrors> {
    let vars: BTreeMap<String, String> = vars.into_iter().collect();
    let mut layer = BTreeMap::new();
    let mut e = ValidationErrors::default();
    for key in LAYERED_KEYS {
        let var = env_var(key);
        if let Some(value) = vars.get(&var) {
            match check_value(key, value, &var) {
                Ok(()) => {
                    layer.insert(key.to_owned(), value.trim().to_owned());
                }
                Err(errors) => e.0.extend(errors.0),
            }
        }
    }
    e.into_result(layer)
}

/// The route as its job runs it, with every layered key's effective value and source. The
/// environment layer and the overrides were checked when they were set; a value that no longer
/// validates (an override from an older release, say) is reported, not applied silently.
pub fn effective(
    spec: &RouteSpec,
    env: &BTreeMap<String, String>,
    overrides: &[ConfigOverride],
) -> Result<(RouteSpec, Vec<ConfigEntry>), ValidationErrors> {
    let mut out = spec.clone();
    let mut entries = Vec::new();
    let mut e = ValidationErrors::default();
    for key in LAYERED_KEYS {
        let (mut value, mut source) = declared(spec, key);
        if let Some(v) = env.get(key) {
            (value, source) = (v.clone(), ConfigSource::Env { var: env_var(key) });
        }
        if let Some(o) = overrides.iter().find(|o| o.key == key) {
            (value, source) = (o.value.clone(), ConfigSource::Override { by: o.by.clone(), at: o.at });
        }
        if source != ConfigSource::Default {
            with_value(&mut out, key, &value, &mut e, key);
        }
        entries.push(ConfigEntry { key: key.to_owned(), value, source });
    }
    if let Err(errors) = out.validate() {
        e.0.extend(errors.0);
    }
    e.into_result((out, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(config: &[(&str, &str)]) -> RouteSpec {
        let mut r = probe_route();
        r.config = config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        r
    }

    fn over(key: &str, value: &str) -> ConfigOverride {
        ConfigOverride { key: key.into(), value: value.into(), by: "alice".into(), at: 1 }
    }

    #[test]
    fn each_layer_wins_over_the_one_below() {
        let spec = route(&[("job.checkpoint_interval_ms", "500"), ("job.stall_timeout_s", "60")]);
        let env =
            BTreeMap::from([("job.stall_timeout_s".to_owned(), "120".to_owned()), ("batch_size".into(), "50".into())]);
        let (eff, entries) = effective(&spec, &env, &[over("batch_size", "7")]).unwrap();
        let source = |k: &str| entries.iter().find(|e| e.key == k).unwrap().source.describe();
        let value = |k: &str| entries.iter().find(|e| e.key == k).unwrap().value.clone();
        assert_eq!((value("job.stability_s"), source("job.stability_s")), ("60".into(), "platform default".into()));
        assert_eq!(
            (value("job.checkpoint_interval_ms"), source("job.checkpoint_interval_ms")),
            ("500".into(), "route".into())
        );
        assert_eq!(
            (value("job.stall_timeout_s"), source("job.stall_timeout_s")),
            ("120".into(), "env KEYSTONE_JOB_STALL_TIMEOUT_S".into())
        );
        assert_eq!((value("batch_size"), source("batch_size")), ("7".into(), "override by alice".into()));
        assert_eq!(eff.batch_size, 7);
        let settings = eff.job_settings().unwrap();
        assert_eq!((settings.stall_timeout_s, settings.checkpoint_interval_ms), (120, 500));
        // Defaults stay out of the effective spec, so the job's fingerprint moves only on a real change.
        assert!(!eff.config.contains_key("job.stability_s"));
        assert_eq!(effective(&spec, &BTreeMap::new(), &[]).unwrap().0, spec);
    }

    #[test]
    fn environment_values_are_checked_by_variable() {
        let vars = [
            ("KEYSTONE_JOB_STALL_TIMEOUT_S".to_owned(), "5".to_owned()),
            ("KEYSTONE_JOB_BATCH_SIZE".into(), "many".into()),
            ("KEYSTONE_JOB_START_AT".into(), "latest".into()),
            ("PATH".into(), "/bin".into()),
        ];
        let e = env_layer(vars.clone()).unwrap_err();
        assert!(e.for_field("KEYSTONE_JOB_STALL_TIMEOUT_S").unwrap().contains("10 to 86400"), "{e:?}");
        assert_eq!(e.for_field("KEYSTONE_JOB_BATCH_SIZE"), Some("must be a whole number"));
        let ok = env_layer([vars[2].clone(), vars[3].clone()]).unwrap();
        assert_eq!(ok, BTreeMap::from([("job.start_at".to_owned(), "latest".to_owned())]));
    }

    #[test]
    fn only_layered_keys_with_valid_values() {
        assert!(check_value("job.max_error_percent", "30", "value").is_ok());
        assert!(check_value("job.max_error_percent", "0", "value").is_err());
        assert!(check_value("batch_size", "0", "value").unwrap_err().for_field("value").unwrap().contains("between"));
        assert!(check_value("filter", "true", "key")
            .unwrap_err()
            .for_field("key")
            .unwrap()
            .contains("not a configuration key"));
        assert_eq!(env_var("job.max_error_percent"), "KEYSTONE_JOB_MAX_ERROR_PERCENT");
    }
}
