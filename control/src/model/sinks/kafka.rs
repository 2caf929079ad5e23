//! A Kafka sink's settings: a topic of any Kafka-protocol cluster, plain or secured.

use super::{Reader, SettingDoc};

pub(super) const SETTINGS: &[SettingDoc] = &[
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
];

pub(super) const SECRETS: &[SettingDoc] =
    &[SettingDoc { key: "sasl_password", required: false, help: "SASL password" }];

const PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `host:port` pairs, comma-separated.
    pub brokers: String,
    /// A topic name by Kafka's own rule (1 to 249 of letters, digits, `.`, `_`, `-`).
    pub topic: String,
    /// librdkafka's `security.protocol`: plaintext, ssl, sasl_plaintext or sasl_ssl.
    pub security_protocol: String,
    /// librdkafka's `sasl.mechanisms`, only with a `sasl_` protocol.
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
}

impl KafkaSettings {
    pub(super) fn read(r: &mut Reader<'_>) -> KafkaSettings {
        let brokers = r.required("brokers");
        let ok = brokers
            .split(',')
            .all(|hp| hp.trim().rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()));
        if !brokers.is_empty() && !ok {
            r.error("brokers", "must be host:port, comma-separated");
        }
        let topic = r.required("topic");
        let ok = topic.len() <= 249
            && topic != "."
            && topic != ".."
            && topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !topic.is_empty() && !ok {
            r.error("topic", "must be 1 to 249 of letters, digits, '.', '_' and '-'");
        }
        let security_protocol = r.get("security_protocol").unwrap_or("plaintext").to_owned();
        if !PROTOCOLS.contains(&security_protocol.as_str()) {
            r.error("security_protocol", "must be plaintext, ssl, sasl_plaintext or sasl_ssl");
        }
        let sasl_mechanism = r.get("sasl_mechanism").map(str::to_owned);
        match &sasl_mechanism {
            None => {}
            Some(_) if !security_protocol.starts_with("sasl_") => {
                r.error("sasl_mechanism", "applies only with a sasl_ security protocol")
            }
            Some(m) if !MECHANISMS.contains(&m.as_str()) => {
                r.error("sasl_mechanism", "must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
            }
            Some(_) => {}
        }
        let sasl_username = r.get("sasl_username").map(str::to_owned);
        KafkaSettings { brokers, topic, security_protocol, sasl_mechanism, sasl_username }
    }
}
