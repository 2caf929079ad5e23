//! What to ask a Kafka cluster when a managed topic's retention differs from the stream's: a
//! pure decision over the topic's described configs, unit-tested without a broker.
//!
//! The cluster's `AlterConfigs` (the only one rdkafka 0.39 offers; `IncrementalAlterConfigs` is
//! not in its API) *replaces* every dynamic config of the topic. So the topic's configs are read
//! first, nothing is sent when they already match, and every other dynamic setting a platform
//! team made (`min.insync.replicas`, which `acks=all` relies on) is carried over unchanged. A
//! secret dynamic setting cannot be read back, so it cannot be carried over: then nothing is
//! changed and the reason is reported.

/// One config entry of a topic as the cluster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub name: String,
    pub value: Option<String>,
    /// Set on this topic (not a broker or default value).
    pub dynamic_topic: bool,
    pub sensitive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    /// The topic already has these values.
    Nothing,
    /// The whole dynamic config to send: the wanted values and every other dynamic one.
    Replace(Vec<(String, String)>),
    /// Changing would lose a setting; nothing is sent.
    Refuse(String),
}

pub fn plan_config_change(described: &[Described], wanted: &[(&str, String)]) -> ConfigChange {
    let current = |name: &str| described.iter().find(|d| d.name == name).and_then(|d| d.value.as_deref());
    if wanted.iter().all(|(k, v)| current(k) == Some(v.as_str())) {
        return ConfigChange::Nothing;
    }
    let mut all: Vec<(String, String)> = Vec::new();
    for d in described.iter().filter(|d| d.dynamic_topic && !wanted.iter().any(|(k, _)| *k == d.name)) {
        match (&d.value, d.sensitive) {
            (Some(v), false) => all.push((d.name.clone(), v.clone())),
            _ => {
                return ConfigChange::Refuse(format!(
                    "the topic has a secret setting {} that changing its retention would erase; set the retention \
                     on the cluster instead",
                    d.name
                ))
            }
        }
    }
    all.extend(wanted.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    all.sort();
    ConfigChange::Replace(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, value: &str, dynamic_topic: bool) -> Described {
        Described { name: name.into(), value: Some(value.into()), dynamic_topic, sensitive: false }
    }

    fn wanted() -> Vec<(&'static str, String)> {
        vec![("retention.ms", "3600000".into()), ("retention.bytes", "-1".into())]
    }

    #[test]
    fn matching_values_send_nothing() {
        let d = [entry("retention.ms", "3600000", true), entry("retention.bytes", "-1", false)];
        assert_eq!(plan_config_change(&d, &wanted()), ConfigChange::Nothing);
    }

    #[test]
    fn other_dynamic_settings_are_carried_over_and_broker_defaults_are_not() {
        let d = [
            entry("retention.ms", "604800000", false),
            entry("min.insync.replicas", "2", true),
            entry("cleanup.policy", "delete", false),
            entry("retention.bytes", "5", true),
        ];
        let ConfigChange::Replace(all) = plan_config_change(&d, &wanted()) else { panic!() };
        assert_eq!(
            all,
            [("min.insync.replicas", "2"), ("retention.bytes", "-1"), ("retention.ms", "3600000")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn a_secret_dynamic_setting_refuses_the_change() {
        let secret = Described { name: "x.secret".into(), value: None, dynamic_topic: true, sensitive: true };
        let d = [entry("retention.ms", "1", true), secret];
        assert!(matches!(plan_config_change(&d, &wanted()), ConfigChange::Refuse(why) if why.contains("x.secret")));
    }
}
