//! A route job's dashboard: throughput, lag, latency and errors over a chosen window, with the
//! lifecycle (goal changes, phase changes and their causes) on the same time axis, the effective
//! configuration and the latest errors. Charts are SVG rendered on the server; the page refreshes
//! itself every ten seconds once hydrated, and works as plain HTML without JavaScript.

use crate::components::*;
use crate::error::AppError;
use keystone_control::telemetry::Window;
use keystone_control::{JobCounters, JobRecord};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};
use serde::{Deserialize, Serialize};

/// One rendered chart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chart {
    /// Stable name, for tests and anchors (`throughput`, `lag`, ...).
    pub id: String,
    pub svg: String,
}

/// One lifecycle event on the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at: i64,
    /// `goal` (the route was declared or changed) or `job` (the job changed phase).
    pub kind: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DashboardView {
    pub window: Window,
    pub job: Option<JobRecord>,
    /// Totals over the window.
    pub totals: JobCounters,
    /// The newest sample's lag, in events and seconds.
    pub lag: Option<(u64, f64)>,
    pub charts: Vec<Chart>,
    /// Newest first.
    pub timeline: Vec<TimelineEntry>,
    /// (key, value, where it comes from).
    pub config: Vec<(String, String, String)>,
    pub recent_errors: Vec<keystone_control::RecentError>,
    /// The newest refused events with their reasons (the errors' sample events).
    pub dead_letters: Vec<(u64, serde_json::Value)>,
    /// Each declared rule: what it watches, and its state now (`ok` before its first evaluation).
    pub alerts: Vec<AlertRow>,
    /// Latest firings and resolutions, newest first.
    pub alert_events: Vec<keystone_control::alerts::AlertEvent>,
    /// Silences in force.
    pub silences: Vec<keystone_control::alerts::Silence>,
}

/// Silences the route's alert notifications (all rules, or one) for a while.
#[server]
pub async fn silence_alerts(
    team: String,
    name: String,
    rule: String,
    minutes: String,
    reason: String,
) -> Result<(), AppError> {
    let (store, who) = crate::state::caller().await?;
    let minutes: u32 = minutes
        .trim()
        .parse()
        .map_err(|_| keystone_control::ValidationErrors::single("minutes", "must be a whole number of minutes"))?;
    keystone_control::goal::Goal::new(&store, &who).silence_alerts(&team, &name, &rule, minutes, &reason).await?;
    Ok(())
}

/// The override form's key choices (`keystone_control::config::LAYERED_KEYS`).
const OVERRIDE_KEYS: &str = "select:batch_size,max_latency_ms,job.checkpoint_interval_ms,job.stall_timeout_s,job.start_at,job.stability_s,job.max_error_percent";

/// Overrides one configuration key of the route (the top layer), or with an empty value
/// removes the override; the reconciler then rolls the job with the route's strategy.
#[server]
pub async fn override_config(
    team: String,
    name: String,
    config_key: String,
    config_value: String,
    config_reason: String,
) -> Result<(), AppError> {
    let (state, who) = crate::state::signed_in().await?;
    let value = Some(config_value.trim()).filter(|v| !v.is_empty());
    state.platform.ops(&who).set_config_override(&team, &name, &config_key, value, &config_reason).await?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRow {
    pub rule: String,
    pub description: String,
    pub state: String,
    pub since: Option<i64>,
    pub value: Option<f64>,
}

#[server]
pub async fn job_dashboard(team: String, name: String, window: String) -> Result<DashboardView, AppError> {
    use crate::charts::{line_chart, Series, AMBER, BLUE, ERROR_KIND_COLORS, GREEN, RED, SLATE};
    use keystone_control::goal::Goal;
    use keystone_control::{Distribution, JobSample, SinkErrorKind};
    use keystone_control::{Kind, RouteSpec};
    let (state, who) = crate::state::signed_in().await?;
    let store = state.platform.store.clone();
    let window = Window::parse(&window).unwrap_or(Window::Hour);
    let goal = Goal::new(&store, &who);
    let route = goal.get(Kind::Route, &team, &name).await?;
    let spec: RouteSpec = route.spec_as().map_err(|_| AppError::Internal)?;
    let now = keystone_control::store::now_ms();
    let from = now - window.ms();
    let samples: Vec<JobSample> = store.samples(&route.id, from, now).await?;

    let mut totals = JobCounters::default();
    for s in &samples {
        totals += s.counts;
    }
    let mut timeline: Vec<TimelineEntry> = goal
        .history(Kind::Route, &team, &name)
        .await?
        .into_iter()
        .filter(|r| r.created_at >= from)
        .map(|r| TimelineEntry {
            at: r.created_at,
            kind: "goal".into(),
            text: format!(
                "v{} {} by {}{}",
                r.version,
                r.op.as_str(),
                r.author,
                if r.reason.is_empty() { String::new() } else { format!(": {}", r.reason) }
            ),
        })
        .collect();
    timeline.extend(store.transitions(&route.id, 200).await?.into_iter().filter(|t| t.at >= from).map(|t| {
        TimelineEntry {
            at: t.at,
            kind: "job".into(),
            text: format!("{} → {}: {}", t.from.map_or("none", |p| p.as_str()), t.to.as_str(), t.cause),
        }
    }));
    // Restarts, retries, silences, savepoints and rewinds, by whom and why.
    let operations = store.operations(&who.scope(), Some(&route.id), 100).await?;
    timeline.extend(operations.into_iter().filter(|o| o.at >= from).map(|o| TimelineEntry {
        at: o.at,
        kind: "ops".into(),
        text: format!(
            "{} by {}{}",
            o.action,
            o.actor,
            if o.detail.is_empty() { String::new() } else { format!(": {}", o.detail) }
        ),
    }));
    timeline.extend(store.deployments(&route.id, 50).await?.into_iter().filter(|d| d.started_at >= from).map(|d| {
        TimelineEntry {
            at: d.started_at,
            kind: "deploy".into(),
            text: format!("{} ({}): {}", d.detail, d.strategy.as_str(), d.state.as_str()),
        }
    }));
    timeline.sort_by_key(|t| std::cmp::Reverse(t.at));
    let markers: Vec<i64> = timeline.iter().map(|t| t.at).collect();

    // Rates are per second of each sample's own length (10 s or 5 min).
    let rate = |f: fn(&JobCounters) -> u64| -> Vec<(i64, f64)> {
        samples.iter().map(|s| (s.at, f(&s.counts) as f64 / s.seconds.max(1) as f64)).collect()
    };
    let seconds = samples.first().map_or(10, |s| s.seconds);
    let gap = seconds * 1000 * 3 / 2;
    let range = (from, now);
    type Pick = fn(&JobSample) -> Option<&Distribution>;
    let quantile = |of: Pick, f: fn(&Distribution) -> f64| -> Vec<(i64, f64)> {
        samples.iter().filter_map(|s| of(s).map(|d| (s.at, f(d)))).collect()
    };
    let (end_to_end, sink_request, batch_size): (Pick, Pick, Pick) =
        (|s| s.end_to_end.as_ref(), |s| s.sink_request.as_ref(), |s| s.batch_size.as_ref());
    let sink_errors: Vec<Series<'_>> = SinkErrorKind::ALL
        .into_iter()
        .filter(|k| samples.iter().any(|s| s.counts.sink_errors.get(*k) > 0))
        .map(|k| Series {
            label: k.as_str(),
            color: ERROR_KIND_COLORS[k as usize],
            points: samples
                .iter()
                .map(|s| (s.at, s.counts.sink_errors.get(k) as f64 / s.seconds.max(1) as f64))
                .collect(),
        })
        .collect();
    let chart = |id: &str, title: &str, unit: &str, series: &[Series<'_>]| Chart {
        id: id.to_owned(),
        svg: line_chart(title, unit, range, gap, series, &markers),
    };
    let charts = vec![
        chart(
            "throughput",
            "Throughput",
            "events/s",
            &[
                Series { label: "read", color: BLUE, points: rate(|c| c.read) },
                Series { label: "delivered", color: GREEN, points: rate(|c| c.delivered) },
                Series { label: "filtered out", color: SLATE, points: rate(|c| c.filtered_out) },
            ],
        ),
        chart(
            "lag",
            "Lag (events waiting for the sink)",
            "events",
            &[Series { label: "lag", color: AMBER, points: samples.iter().map(|s| (s.at, s.lag as f64)).collect() }],
        ),
        chart(
            "lag-seconds",
            "Lag (age of the oldest waiting event)",
            "seconds",
            &[Series { label: "lag", color: AMBER, points: samples.iter().map(|s| (s.at, s.lag_seconds)).collect() }],
        ),
        chart(
            "latency",
            "End-to-end latency (ingest to sink acknowledgement)",
            "ms",
            &[
                Series { label: "p50", color: BLUE, points: quantile(end_to_end, |d| d.p50) },
                Series { label: "p95", color: AMBER, points: quantile(end_to_end, |d| d.p95) },
                Series { label: "p99", color: RED, points: quantile(end_to_end, |d| d.p99) },
            ],
        ),
        chart(
            "sink-latency",
            "Sink request latency",
            "ms",
            &[
                Series { label: "p50", color: BLUE, points: quantile(sink_request, |d| d.p50) },
                Series { label: "p99", color: RED, points: quantile(sink_request, |d| d.p99) },
            ],
        ),
        chart(
            "batch-size",
            "Batch size (events per sink request)",
            "events",
            &[
                Series { label: "p50", color: BLUE, points: quantile(batch_size, |d| d.p50) },
                Series { label: "max", color: SLATE, points: quantile(batch_size, |d| d.max) },
            ],
        ),
        chart(
            "errors",
            "Errors",
            "events/s",
            &[
                Series { label: "dead-lettered", color: RED, points: rate(|c| c.dead_lettered) },
                Series { label: "filter errors", color: AMBER, points: rate(|c| c.filter_errors) },
                Series { label: "sink retries", color: SLATE, points: rate(|c| c.retries) },
            ],
        ),
        chart("sink-errors", "Failed sink requests by kind", "requests/s", &sink_errors),
    ];

    let mut config: Vec<(String, String, String)> = goal
        .route_config(&team, &name, &state.platform.job_env)
        .await?
        .into_iter()
        .map(|e| (e.key, e.value, e.source.describe()))
        .collect();
    config.push(("ordering".into(), spec.ordering.as_str().into(), "route".into()));
    config.push(("delivery_on_redeploy".into(), spec.delivery_on_redeploy.as_str().into(), "route".into()));
    let states = store.route_alerts(&route.id).await?;
    let topic = keystone_control::dead_letter_topic(&team, &name);
    let dead_letters =
        keystone_engine::job::dead_letters::read(state.platform.log.as_ref(), &topic, None, 5).await.map_err(|e| {
            tracing::error!(error = %e, "Reading dead letters failed.");
            AppError::Internal
        })?;
    let alerts = spec
        .alerts
        .iter()
        .map(|r| {
            let s = states.iter().find(|s| s.rule == r.kind);
            AlertRow {
                rule: r.kind.as_str().to_owned(),
                description: r.kind.describe(r.threshold, r.for_s),
                state: s.map_or("ok", |s| s.state.as_str()).to_owned(),
                since: s.map(|s| s.since),
                value: s.map(|s| s.value),
            }
        })
        .collect();
    Ok(DashboardView {
        dead_letters,
        silences: store.active_silences(Some(&route.id), now).await?.into_iter().map(|(_, x)| x).collect(),
        alerts,
        alert_events: store.alert_events(&route.id, 20).await?,
        window,
        job: store.job(&route.id).await?,
        totals,
        lag: samples.last().map(|s| (s.lag, s.lag_seconds)),
        charts,
        timeline,
        config,
        recent_errors: store
            .live_job_metrics(&route.id, state.platform.jobs.metrics(&route.id))
            .await?
            .map(|m| m.recent_errors)
            .unwrap_or_default(),
    })
}

#[component]
pub fn RouteDashboardPage() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let team = move || params.read().get("team").unwrap_or_default();
    let name = move || params.read().get("name").unwrap_or_default();
    let window = move || query.read().get("window").and_then(|w| Window::parse(&w)).unwrap_or(Window::Hour);
    // Bumped every ten seconds in the browser: the charts follow the job live.
    let tick = RwSignal::new(0u32);
    Effect::new(move |_| {
        let handle = set_interval_with_handle(move || tick.update(|t| *t += 1), std::time::Duration::from_secs(10));
        on_cleanup(move || {
            if let Ok(h) = handle {
                h.clear();
            }
        });
    });
    // Read once, untracked: a signal read here would re-run the page's parent.
    let (title_team, title_name) = {
        let p = params.read_untracked();
        (p.get("team").unwrap_or_default(), p.get("name").unwrap_or_default())
    };
    let silence = ServerAction::<SilenceAlerts>::new();
    let overrides = ServerAction::<OverrideConfig>::new();
    let (form_team, form_name) = (title_team.clone(), title_name.clone());
    let data = Resource::new(
        move || (team(), name(), window(), tick.get(), silence.version().get() + overrides.version().get()),
        |(t, n, w, _, _)| job_dashboard(t, n, w.as_str().to_owned()),
    );
    view! {
        <Title text=format!("{title_name} dashboard · Keystone")/>
        <PageHeader title=format!("{title_name} · dashboard") subtitle=format!("Route job · team {title_team}")>
            <a href=move || format!("/routes/{}/{}", team(), name()) class=BUTTON_SECONDARY>"Route and job"</a>
        </PageHeader>
        <nav class="mb-4 flex gap-2" aria-label="Window" data-testid="windows">
            {Window::ALL.into_iter().map(|w| view! {
                <a
                    href=move || format!("/routes/{}/{}/dashboard?window={}", team(), name(), w.as_str())
                    class=move || if window() == w { "rounded-md bg-indigo-600 px-3 py-1 text-sm font-medium text-white" } else { "rounded-md border border-slate-300 bg-white px-3 py-1 text-sm text-slate-700 hover:bg-slate-50" }
                    aria-current=move || (window() == w).then_some("true")
                >{w.as_str()}</a>
            }).collect_view()}
        </nav>
        <Transition fallback=|| ()>
            {move || {
                let (team, name) = (form_team.clone(), form_name.clone());
                Suspend::new(async move {
                    match data.await {
                        Err(e) => view! { <LoadError error=e/> }.into_any(),
                        Ok(d) => dashboard_view(d, silence, overrides, team, name).into_any(),
                    }
                })
            }}
        </Transition>
    }
}

fn dashboard_view(
    d: DashboardView,
    silence: ServerAction<SilenceAlerts>,
    overrides: ServerAction<OverrideConfig>,
    team: String,
    name: String,
) -> impl IntoView {
    let override_errors = field_errors(overrides.value());
    let (config_team, config_name) = (team.clone(), name.clone());
    let rules: Vec<String> = d.alerts.iter().map(|a| a.rule.clone()).collect();
    let silence_errors = field_errors(silence.value());
    let t = d.totals;
    let phase = d.job.as_ref().map_or("pending".to_owned(), |j| j.phase.as_str().to_owned());
    let (lag, lag_s) = d.lag.unwrap_or((0, 0.0));
    view! {
        <div class=format!("{CARD} mb-6 grid grid-cols-2 divide-x divide-slate-100 sm:grid-cols-6") data-testid="dashboard-totals">
            {figure("Phase", phase, "dash-phase")}
            {figure("Read", t.read.to_string(), "dash-read")}
            {figure("Delivered", t.delivered.to_string(), "dash-delivered")}
            {figure("Filtered out", t.filtered_out.to_string(), "dash-filtered")}
            {figure("Dead-lettered", t.dead_lettered.to_string(), "dash-dead-lettered")}
            {figure("Lag", format!("{lag} ev · {lag_s:.1} s"), "dash-lag")}
        </div>
        <p class="mb-4 text-xs text-slate-500">
            {format!("Totals over the last {}. Grey vertical lines mark the timeline's events. ", d.window.as_str())}
            <span data-testid="dash-sink-errors">{sink_errors_line(&t)}</span>
        </p>
        <div class="grid gap-4 xl:grid-cols-2">
            {d.charts.into_iter().map(|c| view! {
                <figure class=format!("{CARD} overflow-hidden p-2") data-testid=format!("chart-{}", c.id) inner_html=c.svg></figure>
            }).collect_view()}
        </div>
        <div class="mt-8 grid gap-6 lg:grid-cols-2">
            <section class=CARD>
                <h2 class="border-b border-slate-200 px-4 py-3 font-medium">"Timeline"</h2>
                {if d.timeline.is_empty() {
                    view! { <p class="px-4 py-3 text-sm text-slate-500">"Nothing happened in this window."</p> }.into_any()
                } else {
                    view! {
                        <ul class="divide-y divide-slate-100 text-sm" data-testid="timeline">
                            {d.timeline.into_iter().map(|e| view! {
                                <li class="flex gap-3 px-4 py-2">
                                    <span class="shrink-0 tabular-nums text-slate-500">{format_time(e.at)}</span>
                                    <span class=if e.kind == "goal" { "shrink-0 rounded-sm bg-indigo-50 px-1.5 text-xs leading-5 text-indigo-700" } else { "shrink-0 rounded-sm bg-slate-100 px-1.5 text-xs leading-5 text-slate-700" }>{e.kind.clone()}</span>
                                    <span>{e.text}</span>
                                </li>
                            }).collect_view()}
                        </ul>
                    }.into_any()
                }}
            </section>
            <section class=CARD>
                <h2 class="border-b border-slate-200 px-4 py-3 font-medium">"Effective configuration"</h2>
                <table class="min-w-full divide-y divide-slate-100" data-testid="effective-config">
                    <thead class="bg-slate-50"><tr><th class=TH>"Key"</th><th class=TH>"Value"</th><th class=TH>"From"</th></tr></thead>
                    <tbody class="divide-y divide-slate-100">
                        {d.config.into_iter().map(|(k, v, from)| view! {
                            <tr><td class=format!("{TD} font-mono")>{k}</td><td class=format!("{TD} font-mono")>{v}</td><td class=format!("{TD} text-slate-500")>{from}</td></tr>
                        }).collect_view()}
                    </tbody>
                </table>
                {can_edit().then(|| view! {
                    <div class="border-t border-slate-200 px-4 py-3">
                        <FormStatus error=last_error(overrides.value())/>
                        <ActionForm action=overrides attr:class="space-y-3" attr:data-testid="override-form">
                            <input type="hidden" name="team" value=config_team.clone()/>
                            <input type="hidden" name="name" value=config_name.clone()/>
                            <div class="grid grid-cols-2 gap-3">
                                <Field label="Override key" name="config_key" error_key="key" errors=override_errors
                                    kind=OVERRIDE_KEYS/>
                                <Field label="Value" name="config_value" error_key="value" errors=override_errors
                                    help="Empty removes the override."/>
                            </div>
                            <Field label="Why" name="config_reason" errors=override_errors/>
                            <button type="submit" class=BUTTON_SECONDARY>"Set override"</button>
                        </ActionForm>
                    </div>
                })}
            </section>
        </div>
        <section class=format!("{CARD} mt-6")>
            <h2 class="border-b border-slate-200 px-4 py-3 font-medium">"Alerts"</h2>
            <table class="min-w-full divide-y divide-slate-100" data-testid="alerts">
                <thead class="bg-slate-50"><tr><th class=TH>"Rule"</th><th class=TH>"State"</th><th class=TH>"Since"</th><th class=TH>"Value"</th></tr></thead>
                <tbody class="divide-y divide-slate-100">
                    {d.alerts.into_iter().map(|a| view! {
                        <tr>
                            <td class=TD><span class="font-mono">{a.rule.clone()}</span><div class="text-xs text-slate-500">{a.description}</div></td>
                            <td class=TD><span class=alert_badge(&a.state) data-testid=format!("alert-{}", a.rule)>{a.state.clone()}</span></td>
                            <td class=format!("{TD} tabular-nums text-slate-500")>{a.since.map(format_time).unwrap_or_default()}</td>
                            <td class=format!("{TD} tabular-nums")>{a.value.map(|v| format!("{v:.1}")).unwrap_or_default()}</td>
                        </tr>
                    }).collect_view()}
                </tbody>
            </table>
            {(!d.silences.is_empty()).then(|| view! {
                <ul class="border-t border-slate-200 px-4 py-2 text-sm text-amber-800" data-testid="silences">
                    {d.silences.into_iter().map(|x| view! {
                        <li>{format!("Silenced: {} until {} by {}: {}", x.rule.map_or("all rules", |r| r.as_str()), format_time(x.until), x.by, x.reason)}</li>
                    }).collect_view()}
                </ul>
            })}
            {can_edit().then(|| view! {
                <div class="border-t border-slate-200 px-4 py-3">
                    <FormStatus error=last_error(silence.value())/>
                    <ActionForm action=silence attr:class="flex flex-wrap items-end gap-3">
                        <input type="hidden" name="team" value=team.clone()/>
                        <input type="hidden" name="name" value=name.clone()/>
                        <div class="text-sm"><label for="silence-rule">"Silence"</label>
                            <select id="silence-rule" name="rule" class=INPUT>
                                <option value="">"all rules"</option>
                                {rules.into_iter().map(|r| view! { <option value=r.clone()>{r.clone()}</option> }).collect_view()}
                            </select>
                        </div>
                        <div class="w-28"><Field label="Minutes" name="minutes" kind="number" value="60" errors=silence_errors/></div>
                        <div class="flex-1"><Field label="Reason" name="reason" errors=silence_errors/></div>
                        <button type="submit" class=BUTTON_SECONDARY>"Silence"</button>
                    </ActionForm>
                </div>
            })}
            {(!d.alert_events.is_empty()).then(|| view! {
                <h3 class="border-t border-slate-200 px-4 py-2 text-sm font-medium">"History"</h3>
                <ul class="divide-y divide-slate-100 text-sm" data-testid="alert-history">
                    {d.alert_events.into_iter().map(|e| view! {
                        <li class="flex gap-3 px-4 py-2">
                            <span class="shrink-0 tabular-nums text-slate-500">{format_time(e.at)}</span>
                            <span class=alert_badge(e.state.as_str())>{e.state.as_str()}</span>
                            <span>{e.message}</span>
                            <span class="ml-auto shrink-0 text-xs text-slate-500">{e.notified}</span>
                        </li>
                    }).collect_view()}
                </ul>
            })}
        </section>
        <section class=format!("{CARD} mt-6")>
            <h2 class="border-b border-slate-200 px-4 py-3 font-medium">"Latest errors"</h2>
            <RecentErrors errors=d.recent_errors/>
            <h3 class="border-t border-slate-200 px-4 py-2 text-sm font-medium">"Sample refused events"</h3>
            <div class="px-4 pb-4"><super::routes::DeadLetterTable letters=d.dead_letters/></div>
        </section>
    }
}

/// The window's failed sink requests by kind, in words.
fn sink_errors_line(t: &JobCounters) -> String {
    let seen: Vec<String> = t.sink_errors.seen().map(|(k, n)| format!("{} {n}", k.as_str())).collect();
    if seen.is_empty() {
        "No failed sink requests.".to_owned()
    } else {
        format!("Failed sink requests: {}.", seen.join(" · "))
    }
}

fn alert_badge(state: &str) -> &'static str {
    match state {
        "firing" => "rounded-sm bg-red-100 px-2 py-0.5 text-xs font-medium text-red-800",
        "pending" => "rounded-sm bg-amber-100 px-2 py-0.5 text-xs font-medium text-amber-800",
        "resolved" => "rounded-sm bg-green-100 px-2 py-0.5 text-xs font-medium text-green-800",
        _ => "rounded-sm bg-slate-100 px-2 py-0.5 text-xs font-medium text-slate-700",
    }
}

fn figure(label: &'static str, value: String, test_id: &'static str) -> impl IntoView {
    view! {
        <div class="px-4 py-3">
            <div class="text-xs uppercase tracking-wide text-slate-500">{label}</div>
            <div class="text-lg font-semibold tabular-nums" data-testid=test_id>{value}</div>
        </div>
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_override_form_offers_every_layered_key() {
        let offered: Vec<&str> = super::OVERRIDE_KEYS.trim_start_matches("select:").split(',').collect();
        assert_eq!(offered, keystone_control::config::LAYERED_KEYS);
    }
}
