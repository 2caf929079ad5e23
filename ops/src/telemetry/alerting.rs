//! Alerting: every live route's and source's rules evaluated on its recent observations, states stored (so a
//! restart neither re-fires nor forgets), each firing and resolution recorded and notified once.

use super::*;

/// What the alert evaluator remembers between passes.
#[derive(Default)]
pub(super) struct Alerts {
    /// Loaded from the store on the first pass, so a restart neither re-fires nor forgets.
    loaded: bool,
    states: HashMap<(String, AlertKind), RuleStatus>,
    /// Per route: recent observations, oldest first.
    history: HashMap<String, VecDeque<Observation>>,
}

impl Telemetry {
    /// Evaluates every live route's and source's alert rules on its observations, stores the
    /// states, and records and notifies each firing and resolution once.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn evaluate_alerts(
        &self,
        a: &mut Alerts,
        routes: &[Object],
        sources: &[(Object, SourceStatus)],
        levels: &HashMap<String, Level>,
        totals: &HashMap<String, JobCounters>,
        jobs: &[keystone_control::JobRecord],
        now: i64,
    ) -> Result<(), keystone_control::store::StoreError> {
        if !a.loaded {
            a.states = self.store.alert_states().await?.into_iter().map(|(r, k, s)| ((r, k), s)).collect();
            a.loaded = true;
        }
        let teams: HashMap<String, TeamSpec> = self
            .store
            .list(Kind::Team, &Scope::All)
            .await?
            .into_iter()
            .filter_map(|t| Some((t.name.clone(), t.spec_as().ok()?)))
            .collect();
        let jobs: HashMap<&str, &keystone_control::JobRecord> = jobs.iter().map(|j| (j.route_id.as_str(), j)).collect();
        let silences = self.store.active_silences(None, now).await?;
        let mut watched = Vec::with_capacity(routes.len() + sources.len());
        for route in routes {
            let Ok(spec) = route.spec_as::<RouteSpec>() else { continue };
            let job = jobs.get(route.id.as_str());
            let totals = totals.get(&route.id).copied().unwrap_or_default();
            let (lag, lag_seconds) = levels.get(&route.id).copied().unwrap_or_default();
            let seen = Observation {
                at: now,
                delivered: totals.delivered,
                dead_lettered: totals.dead_lettered,
                restarts: job.map_or(0, |j| j.restarts),
                lag,
                lag_seconds,
                phase: job.map(|j| j.phase),
                retained_bytes: 0,
            };
            // A route paused or stopped on purpose waits by design: its rules hold still.
            watched.push((route, spec.alerts, spec.state.is_running(), seen));
        }
        for (source, status) in sources {
            let Ok(spec) = source.spec_as::<SourceSpec>() else { continue };
            let seen = Observation {
                at: now,
                delivered: status.events,
                dead_lettered: 0,
                restarts: 0,
                lag: 0,
                lag_seconds: 0.0,
                phase: None,
                retained_bytes: status.retained_bytes.unwrap_or(0),
            };
            // A paused source's slot keeps the database's WAL: the danger its rule watches.
            watched.push((source, spec.alerts, true, seen));
        }
        let mut states = Vec::new();
        for (object, rules, evaluating, seen) in watched {
            let history = a.history.entry(object.id.clone()).or_default();
            history.push_back(seen);
            let keep_s = rules.iter().map(AlertRule::history_s).fold(60.0, f64::max);
            while history.front().is_some_and(|h| h.at < now - (keep_s * 1000.0) as i64 - 1000) {
                history.pop_front();
            }
            let history = history.make_contiguous();
            for rule in &rules {
                let key = (object.id.clone(), rule.kind);
                let prev = a.states.get(&key).copied().unwrap_or(RuleStatus { state: AlertState::Ok, since: now });
                let (holds, value) = condition(rule, history);
                let next = if evaluating { step(rule, prev, holds, now) } else { prev };
                a.states.insert(key, next);
                states.push((
                    object.id.clone(),
                    AlertStatus { rule: rule.kind, state: next.state, since: next.since, value },
                ));
                if next.state != prev.state && matches!(next.state, AlertState::Firing | AlertState::Resolved) {
                    let silenced = silences.iter().find(|(id, x)| id == &object.id && x.covers(rule.kind, now));
                    let target = match silenced {
                        Some((_, x)) => Err(format!("silenced by {} until {}", x.by, x.until)),
                        None => teams
                            .get(&object.team)
                            .and_then(|t| t.alert_webhook.clone())
                            .ok_or_else(|| "no webhook".to_owned()),
                    };
                    self.notify(object, rule, next, value, target);
                }
            }
        }
        // Rules of deleted routes and sources, or removed from one, are forgotten (what this
        // pass did not evaluate), and so are deleted ones' observations.
        let evaluated: HashSet<(&str, AlertKind)> = states.iter().map(|(id, s)| (id.as_str(), s.rule)).collect();
        a.states.retain(|(id, kind), _| evaluated.contains(&(id.as_str(), *kind)));
        let declared: HashSet<&str> =
            routes.iter().map(|r| r.id.as_str()).chain(sources.iter().map(|(s, _)| s.id.as_str())).collect();
        a.history.retain(|id, _| declared.contains(id.as_str()));
        self.store.put_alert_states(&states).await
    }

    /// Records a firing or resolution and POSTs it to the team's webhook, retrying three times
    /// with backoff; off the telemetry loop, so a slow webhook delays nothing.
    /// `target` is the webhook URL, or why nothing is sent (no webhook, silenced).
    pub(super) fn notify(
        &self,
        object: &Object,
        rule: &AlertRule,
        status: RuleStatus,
        value: f64,
        target: Result<String, String>,
    ) {
        let message = format!(
            "{}/{}: {} ({}, value {value})",
            object.team,
            object.name,
            status.state.as_str(),
            rule.kind.describe(rule.threshold, rule.for_s)
        );
        tracing::warn!(object = %format!("{} {}/{}", object.kind, object.team, object.name), rule = rule.kind.as_str(), state = status.state.as_str(), value, "Alert.");
        let dashboard = match object.kind {
            Kind::Source => format!("/sources/{}/{}", object.team, object.name),
            _ => format!("/routes/{}/{}/dashboard", object.team, object.name),
        };
        let mut payload = serde_json::json!({
            "version": 1,
            "team": object.team,
            "kind": object.kind.as_str(),
            "rule": rule.kind.as_str(),
            "state": status.state.as_str(),
            "value": value,
            "threshold": rule.threshold,
            "for_s": rule.for_s,
            "description": rule.kind.describe(rule.threshold, rule.for_s),
            "at": status.since,
            "dashboard": dashboard,
        });
        // Routes' payloads have always named the route under `route`.
        let field = if object.kind == Kind::Source { "source" } else { "route" };
        payload[field] = serde_json::Value::String(object.name.clone());
        let (store, http, route_id) = (self.store.clone(), self.http.clone(), object.id.clone());
        let event = AlertEvent {
            rule: rule.kind,
            at: status.since,
            state: status.state,
            value,
            message,
            notified: String::new(),
        };
        tokio::spawn(async move {
            let notified = match target {
                Err(why) => why,
                Ok(url) => match keystone_engine::egress::check_url(store.egress(), &url) {
                    Err(denied) => denied.to_string(),
                    Ok(()) => send_with_retry(&http, &url, &payload).await,
                },
            };
            if let Err(e) = store.record_alert_event(&route_id, &AlertEvent { notified, ..event }).await {
                tracing::warn!(error = %e, "Recording an alert event failed.");
            }
        });
    }
}

/// `sent`, or the last failure after four attempts (1 s, 2 s, 4 s apart).
async fn send_with_retry(http: &reqwest::Client, url: &str, payload: &serde_json::Value) -> String {
    let mut last = String::new();
    for attempt in 0..4u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
        }
        match http.post(url).json(payload).send().await {
            Ok(r) if r.status().is_success() => return "sent".to_owned(),
            Ok(r) => last = format!("webhook answered {}", r.status()),
            Err(e) => last = format!("webhook unreachable: {}", e.without_url()),
        }
    }
    last
}
