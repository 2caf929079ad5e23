//! Alert rules: declared with each route (so versioned like the rest of its goal), evaluated
//! continuously against the job's recent numbers, each moving through `ok → pending → firing →
//! resolved`. Pure: the telemetry task feeds it observations and acts on the transitions.

use crate::phase::JobPhase;
use crate::validation::ValidationErrors;
use serde::{Deserialize, Serialize};

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The oldest waiting event is older than `threshold` seconds.
    LagSeconds,
    /// Nothing delivered for `threshold` seconds while events are waiting (freshness).
    NoDelivery,
    /// More than `threshold` events per minute sent to the dead-letter queue.
    DeadLetters,
    /// More than `threshold` restarts within the last `for_s` seconds.
    Restarts,
    /// The job is marked failed (crashed too often).
    Failed,
    /// A source's replication slot holds back more than `threshold` bytes of its database's WAL
    /// (a stuck or paused slot fills the database's disk).
    RetainedWalBytes,
}

impl AlertKind {
    pub const ALL: [AlertKind; 6] = [
        AlertKind::LagSeconds,
        AlertKind::NoDelivery,
        AlertKind::DeadLetters,
        AlertKind::Restarts,
        AlertKind::Failed,
        AlertKind::RetainedWalBytes,
    ];

    /// Whether a route's rules may use it (the others are a source's).
    pub fn for_routes(self) -> bool {
        self != AlertKind::RetainedWalBytes
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::LagSeconds => "lag_seconds",
            AlertKind::NoDelivery => "no_delivery",
            AlertKind::DeadLetters => "dead_letters",
            AlertKind::Restarts => "restarts",
            AlertKind::Failed => "failed",
            AlertKind::RetainedWalBytes => "retained_wal_bytes",
        }
    }

    pub fn parse(s: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// What the threshold means, for forms and messages.
    pub fn describe(self, threshold: f64, for_s: u32) -> String {
        match self {
            AlertKind::LagSeconds => format!("oldest waiting event older than {threshold} s for {for_s} s"),
            AlertKind::NoDelivery => format!("nothing delivered for {threshold} s while events wait"),
            AlertKind::DeadLetters => format!("more than {threshold} dead letters per minute for {for_s} s"),
            AlertKind::Restarts => format!("more than {threshold} restarts within {for_s} s"),
            AlertKind::Failed => "job failed".to_owned(),
            AlertKind::RetainedWalBytes => {
                format!("replication slot holding back more than {threshold} bytes of WAL for {for_s} s")
            }
        }
    }
}

/// One declared rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    pub kind: AlertKind,
    #[serde(default)]
    pub threshold: f64,
    /// How long the condition must hold before the rule fires (for `restarts`: the window).
    #[serde(default)]
    pub for_s: u32,
}

impl AlertRule {
    /// How far back, in seconds, the rule's condition looks at observations.
    pub fn history_s(&self) -> f64 {
        match self.kind {
            // A byte threshold is no time.
            AlertKind::RetainedWalBytes => f64::from(self.for_s),
            // Some thresholds are seconds (`no_delivery`'s idle time).
            _ => self.threshold.max(f64::from(self.for_s)),
        }
    }
}

/// The rules a route gets when it declares none.
pub fn default_alert_rules() -> Vec<AlertRule> {
    vec![
        AlertRule { kind: AlertKind::LagSeconds, threshold: 300.0, for_s: 300 },
        AlertRule { kind: AlertKind::NoDelivery, threshold: 600.0, for_s: 0 },
        AlertRule { kind: AlertKind::DeadLetters, threshold: 10.0, for_s: 300 },
        AlertRule { kind: AlertKind::Restarts, threshold: 3.0, for_s: 900 },
        AlertRule { kind: AlertKind::Failed, threshold: 0.0, for_s: 0 },
    ]
}

/// The rules a source gets when it declares none: its slot holding back more than 1 GiB of WAL
/// for 5 minutes.
pub fn default_source_alert_rules() -> Vec<AlertRule> {
    vec![AlertRule { kind: AlertKind::RetainedWalBytes, threshold: 1_073_741_824.0, for_s: 300 }]
}

/// Longest `for_s` (a day): observations are kept this long.
pub const MAX_FOR_S: u32 = 86_400;

/// Checks a route's rules (`source`: a source's, which watch its slot only).
pub fn validate_rules(rules: &[AlertRule], e: &mut ValidationErrors) {
    validate_rules_of(rules, false, e)
}

pub fn validate_source_rules(rules: &[AlertRule], e: &mut ValidationErrors) {
    validate_rules_of(rules, true, e)
}

fn validate_rules_of(rules: &[AlertRule], source: bool, e: &mut ValidationErrors) {
    for (i, r) in rules.iter().enumerate() {
        if r.kind.for_routes() == source {
            let whose =
                if source { "a source's rules watch its slot: retained_wal_bytes" } else { "is a source's rule" };
            e.add(format!("alerts[{i}].kind"), format!("{}: {whose}", r.kind.as_str()));
        }
        if !(r.threshold.is_finite() && r.threshold >= 0.0) {
            e.add(format!("alerts[{i}].threshold"), "must be a number of at least 0");
        }
        if r.for_s > MAX_FOR_S {
            e.add(format!("alerts[{i}].for_s"), format!("must be at most {MAX_FOR_S} seconds"));
        }
        if rules[..i].iter().any(|o| o.kind == r.kind) {
            e.add(format!("alerts[{i}].kind"), format!("{} is declared twice", r.kind.as_str()));
        }
    }
}

/// Parses the console's one-rule-per-line form: `<kind> <threshold> [for <seconds>]`, e.g.
/// `lag_seconds 300 for 300`. Errors name the line.
pub fn parse_rules(text: &str, e: &mut ValidationErrors) -> Vec<AlertRule> {
    let mut rules = Vec::new();
    for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let kind = AlertKind::parse(words[0]);
        let threshold = words.get(1).map_or(Ok(0.0), |w| w.parse::<f64>());
        let for_s = match (words.get(2), words.get(3)) {
            (None, _) => Ok(0),
            (Some(&"for"), Some(s)) => s.trim_end_matches('s').parse::<u32>().map_err(|_| ()),
            _ => Err(()),
        };
        match (kind, threshold, for_s, words.len() <= 4) {
            (Some(kind), Ok(threshold), Ok(for_s), true) => rules.push(AlertRule { kind, threshold, for_s }),
            (None, ..) => e.add(
                "alerts",
                format!(
                    "line {n}: {:?} is not a rule kind ({})",
                    words[0],
                    AlertKind::ALL.map(AlertKind::as_str).join(", ")
                ),
            ),
            _ => e.add(
                "alerts",
                format!("line {n}: write `<kind> <threshold> for <seconds>`, e.g. `lag_seconds 300 for 300`"),
            ),
        }
    }
    rules
}

/// The rules as the console's text form (what `parse_rules` reads back).
pub fn format_rules(rules: &[AlertRule]) -> String {
    rules.iter().map(|r| format!("{} {} for {}\n", r.kind.as_str(), r.threshold, r.for_s)).collect()
}

/// A rule's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Ok,
    /// The condition holds, not yet for `for_s`.
    Pending,
    Firing,
    /// Was firing; the condition cleared. Shown for a while, then back to ok.
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Ok => "ok",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<AlertState> {
        [AlertState::Ok, AlertState::Pending, AlertState::Firing, AlertState::Resolved]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// A rule's stored state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct AlertStatus {
    pub rule: AlertKind,
    pub state: AlertState,
    pub since: i64,
    pub value: f64,
}

/// One firing or resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct AlertEvent {
    pub rule: AlertKind,
    pub at: i64,
    pub state: AlertState,
    pub value: f64,
    pub message: String,
    /// `sent`, `no webhook`, or why the webhook did not take it.
    pub notified: String,
}

/// A silence: notifications of one rule (or all, `rule: None`) of a route are held back until
/// `until`; states are still evaluated and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct Silence {
    pub rule: Option<AlertKind>,
    pub until: i64,
    pub by: String,
    pub reason: String,
}

impl Silence {
    pub fn covers(&self, rule: AlertKind, at: i64) -> bool {
        at < self.until && self.rule.is_none_or(|r| r == rule)
    }
}

/// Longest silence: a week.
pub const MAX_SILENCE_MINUTES: u32 = 7 * 24 * 60;

/// How long `resolved` is shown before the rule reads `ok` again.
pub const RESOLVED_SHOWN_MS: i64 = 10 * 60_000;

/// One observation of a job, as the telemetry task takes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub at: i64,
    /// Cumulative since the route was first observed (restarts do not reset these).
    pub delivered: u64,
    pub dead_lettered: u64,
    pub restarts: i64,
    pub lag: u64,
    pub lag_seconds: f64,
    pub phase: Option<JobPhase>,
    /// A source's: the WAL its slot holds back, in bytes.
    pub retained_bytes: i64,
}

/// Whether a rule's condition holds on the observations (oldest first), and the value it saw.
pub fn condition(rule: &AlertRule, history: &[Observation]) -> (bool, f64) {
    let Some(now) = history.last() else { return (false, 0.0) };
    // The newest observation at least `seconds` old (or the oldest one kept).
    let back = |seconds: f64| {
        let since = now.at - (seconds * 1000.0) as i64;
        history.iter().rev().find(|o| o.at <= since).unwrap_or(&history[0])
    };
    match rule.kind {
        AlertKind::LagSeconds => (now.lag_seconds > rule.threshold, now.lag_seconds),
        AlertKind::NoDelivery => {
            let then = back(rule.threshold);
            let covered = (now.at - then.at) as f64 >= rule.threshold * 1000.0;
            let idle_s = history
                .iter()
                .rev()
                .find(|o| o.delivered < now.delivered)
                .map_or((now.at - history[0].at) as f64 / 1000.0, |o| (now.at - o.at) as f64 / 1000.0);
            (covered && now.lag > 0 && now.delivered == then.delivered, idle_s)
        }
        AlertKind::DeadLetters => {
            let then = back(60.0);
            let minutes = ((now.at - then.at) as f64 / 60_000.0).max(1.0 / 60.0);
            let rate = (now.dead_lettered - then.dead_lettered.min(now.dead_lettered)) as f64 / minutes;
            (rate > rule.threshold, rate)
        }
        AlertKind::Restarts => {
            let n = (now.restarts - back(f64::from(rule.for_s)).restarts).max(0) as f64;
            (n > rule.threshold, n)
        }
        AlertKind::Failed => {
            (now.phase == Some(JobPhase::Failed), f64::from(u8::from(now.phase == Some(JobPhase::Failed))))
        }
        AlertKind::RetainedWalBytes => (now.retained_bytes as f64 > rule.threshold, now.retained_bytes as f64),
    }
}

/// A rule's state and since when.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleStatus {
    pub state: AlertState,
    pub since: i64,
}

/// The next status of a rule given whether its condition holds now. `restarts` fires at once
/// (its `for_s` is the counting window, not a hold time).
pub fn step(rule: &AlertRule, prev: RuleStatus, holds: bool, now: i64) -> RuleStatus {
    let hold_ms = if rule.kind == AlertKind::Restarts { 0 } else { i64::from(rule.for_s) * 1000 };
    let to = |state| RuleStatus { state, since: now };
    match (prev.state, holds) {
        (AlertState::Ok | AlertState::Resolved, true) if hold_ms == 0 => to(AlertState::Firing),
        (AlertState::Ok | AlertState::Resolved, true) => to(AlertState::Pending),
        (AlertState::Pending, true) if now - prev.since >= hold_ms => to(AlertState::Firing),
        (AlertState::Pending, false) => to(AlertState::Ok),
        (AlertState::Firing, false) => to(AlertState::Resolved),
        (AlertState::Resolved, false) if now - prev.since >= RESOLVED_SHOWN_MS => to(AlertState::Ok),
        _ => prev,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(at_s: i64, delivered: u64, lag: u64) -> Observation {
        Observation {
            at: at_s * 1000,
            delivered,
            dead_lettered: 0,
            restarts: 0,
            lag,
            lag_seconds: 0.0,
            phase: Some(JobPhase::Running),
            retained_bytes: 0,
        }
    }

    #[test]
    fn a_rule_goes_pending_firing_resolved_ok() {
        let rule = AlertRule { kind: AlertKind::LagSeconds, threshold: 10.0, for_s: 30 };
        let mut s = RuleStatus { state: AlertState::Ok, since: 0 };
        s = step(&rule, s, true, 1_000);
        assert_eq!(s, RuleStatus { state: AlertState::Pending, since: 1_000 });
        s = step(&rule, s, true, 20_000);
        assert_eq!(s.state, AlertState::Pending, "not held for 30 s yet");
        s = step(&rule, s, true, 31_000);
        assert_eq!(s, RuleStatus { state: AlertState::Firing, since: 31_000 });
        assert_eq!(step(&rule, s, true, 40_000), s, "firing stays firing: one notification");
        s = step(&rule, s, false, 50_000);
        assert_eq!(s.state, AlertState::Resolved);
        assert_eq!(step(&rule, s, false, 50_000 + RESOLVED_SHOWN_MS).state, AlertState::Ok);
        // A blip shorter than `for_s` never fires.
        let p = step(&rule, RuleStatus { state: AlertState::Ok, since: 0 }, true, 0);
        assert_eq!(step(&rule, p, false, 5_000).state, AlertState::Ok);
    }

    #[test]
    fn conditions_read_the_observations() {
        let no_delivery = AlertRule { kind: AlertKind::NoDelivery, threshold: 20.0, for_s: 0 };
        let stuck = [obs(0, 5, 3), obs(10, 5, 3), obs(20, 5, 4)];
        assert_eq!(condition(&no_delivery, &stuck), (true, 20.0));
        let moving = [obs(0, 5, 3), obs(10, 6, 3), obs(20, 7, 4)];
        assert!(!condition(&no_delivery, &moving).0);
        let idle = [obs(0, 5, 0), obs(10, 5, 0), obs(20, 5, 0)];
        assert!(!condition(&no_delivery, &idle).0, "nothing waiting is not stale");
        assert!(!condition(&no_delivery, &stuck[1..]).0, "not observed for long enough yet");

        let mut dlq = [obs(0, 0, 0), obs(30, 0, 0), obs(60, 0, 0)];
        dlq[2].dead_lettered = 12;
        let rule = AlertRule { kind: AlertKind::DeadLetters, threshold: 10.0, for_s: 0 };
        assert_eq!(condition(&rule, &dlq), (true, 12.0));

        let mut restarts = [obs(0, 0, 0), obs(100, 0, 0), obs(200, 0, 0)];
        restarts[1].restarts = 1;
        restarts[2].restarts = 5;
        let rule = AlertRule { kind: AlertKind::Restarts, threshold: 3.0, for_s: 150 };
        assert_eq!(condition(&rule, &restarts), (true, 5.0));
        // Restarts before the window do not count.
        restarts[0].restarts = 4;
        restarts[1].restarts = 4;
        assert_eq!(condition(&rule, &restarts), (false, 1.0));

        let mut failed = [obs(0, 0, 0)];
        failed[0].phase = Some(JobPhase::Failed);
        assert!(condition(&AlertRule { kind: AlertKind::Failed, threshold: 0.0, for_s: 0 }, &failed).0);
    }

    #[test]
    fn the_text_form_round_trips_and_names_bad_lines() {
        let mut e = ValidationErrors::default();
        let rules = parse_rules(&format_rules(&default_alert_rules()), &mut e);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(rules, default_alert_rules());
        let mut e = ValidationErrors::default();
        parse_rules("lag_seconds 10 for 5\nlatency 3\nfailed x", &mut e);
        let text = format!("{e:?}");
        assert!(text.contains("line 2") && text.contains("latency") && text.contains("is not a rule kind"), "{text}");
        assert!(text.contains("line 3"), "{text}");
        let mut e = ValidationErrors::default();
        validate_rules(&[default_alert_rules()[0], default_alert_rules()[0]], &mut e);
        assert!(format!("{e:?}").contains("declared twice"));
    }
}
