//! The platform overview of jobs: every route's job the caller may see, with a health badge,
//! sparklines of throughput and lag over the last five minutes, filters (team, stream, sink kind,
//! health) and sorting. Filters and sorting are query parameters, so the page works as plain HTML
//! and a filtered view can be bookmarked; rendering stays on the server, fast with thousands of
//! jobs (see the README's figures).

use crate::components::*;
use crate::error::AppError;
use keystone_control::telemetry::Health;
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRow {
    pub route_id: String,
    pub team: String,
    pub route: String,
    pub stream: String,
    pub sink: String,
    pub sink_kind: String,
    pub phase: String,
    pub health: Health,
    pub lag: u64,
    pub lag_seconds: f64,
    /// Delivered events per second in the newest sample.
    pub rate: f64,
    /// Oldest first, one point per sample over the last five minutes.
    pub throughput: Vec<f64>,
    pub lag_series: Vec<f64>,
    /// Alert rules firing now.
    pub firing: Vec<String>,
}

/// Which jobs to show and in which order (all optional: the query string of the page).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobFilter {
    pub team: Option<String>,
    pub stream: Option<String>,
    pub sink_kind: Option<String>,
    pub health: Option<String>,
    /// `health` (worst first, the default), `lag`, `rate` or `name`.
    pub sort: Option<String>,
    /// 1-based, `PAGE_SIZE` jobs a page.
    pub page: Option<usize>,
}

/// Jobs per page: a table a person can read, and a page that stays small with thousands of jobs.
pub const PAGE_SIZE: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobsOverviewData {
    /// One page of the matching jobs.
    pub rows: Vec<JobRow>,
    /// Jobs matching the filters (over all pages).
    pub shown: usize,
    pub page: usize,
    /// Jobs per health, before filtering.
    pub counts: Vec<(Health, usize)>,
    pub teams: Vec<String>,
    pub total: usize,
}

#[server]
pub async fn jobs_overview(
    team: Option<String>,
    stream: Option<String>,
    sink_kind: Option<String>,
    health: Option<String>,
    sort: Option<String>,
    page: Option<usize>,
) -> Result<JobsOverviewData, AppError> {
    use keystone_control::goal::Goal;
    use keystone_control::{Kind, RouteSpec, SinkSpec};
    use std::collections::HashMap;
    let (store, who) = crate::state::caller().await?;
    let goal = Goal::new(&store, &who);
    let now = keystone_control::store::now_ms();
    let routes = goal.list(Kind::Route).await?;
    let sink_kinds: HashMap<(String, String), String> = goal
        .list(Kind::Sink)
        .await?
        .into_iter()
        .filter_map(|o| {
            Some(((o.team.clone(), o.name.clone()), o.spec_as::<SinkSpec>().ok()?.kind.as_str().to_owned()))
        })
        .collect();
    let jobs: HashMap<String, keystone_control::JobRecord> =
        store.jobs(&who.scope()).await?.into_iter().map(|j| (j.route_id.clone(), j)).collect();
    // Health and sorting read each job's newest sample (the telemetry interval is 10 s: 30 s
    // covers a late pass); sparklines are fetched below for the rows shown only.
    let latest = store.latest_samples(30_000, now).await?;
    let mut firing: HashMap<String, Vec<String>> = HashMap::new();
    for (route_id, rule, status) in store.alert_states().await? {
        if status.state == keystone_control::alerts::AlertState::Firing {
            firing.entry(route_id).or_default().push(rule.as_str().to_owned());
        }
    }
    let mut rows: Vec<JobRow> = routes
        .into_iter()
        .filter_map(|o| {
            let spec: RouteSpec = o.spec_as().ok()?;
            let job = jobs.get(&o.id);
            let last = latest.get(&o.id);
            let lag_seconds = last.map_or(0.0, |s| s.lag_seconds);
            let sink = spec.sink.as_str().to_owned();
            Some(JobRow {
                firing: firing.remove(&o.id).unwrap_or_default(),
                sink_kind: sink_kinds.get(&(o.team.clone(), sink.clone())).cloned().unwrap_or_default(),
                team: o.team,
                route: o.name,
                stream: spec.stream.as_str().to_owned(),
                sink,
                phase: job.map_or("pending", |j| j.phase.as_str()).to_owned(),
                health: Health::of(job.map(|j| j.phase), lag_seconds),
                lag: last.map_or(0, |s| s.lag),
                lag_seconds,
                rate: last.map_or(0.0, |s| s.counts.delivered as f64 / s.seconds.max(1) as f64),
                throughput: Vec::new(),
                lag_series: Vec::new(),
                route_id: o.id,
            })
        })
        .collect();
    let counts = Health::ALL.into_iter().map(|h| (h, rows.iter().filter(|r| r.health == h).count())).collect();
    let mut teams: Vec<String> = rows.iter().map(|r| r.team.clone()).collect();
    teams.sort();
    teams.dedup();
    let total = rows.len();
    let wanted = |f: Option<String>| f.filter(|v| !v.is_empty());
    let (team, stream, kind) = (wanted(team), wanted(stream), wanted(sink_kind));
    let health = wanted(health).and_then(|h| Health::parse(&h));
    rows.retain(|r| {
        team.as_ref().is_none_or(|t| &r.team == t)
            && stream.as_ref().is_none_or(|s| r.stream.contains(s.as_str()))
            && kind.as_ref().is_none_or(|k| &r.sink_kind == k)
            && health.is_none_or(|h| r.health == h)
    });
    match sort.as_deref() {
        Some("lag") => rows.sort_by(|a, b| b.lag_seconds.total_cmp(&a.lag_seconds).then(b.lag.cmp(&a.lag))),
        Some("rate") => rows.sort_by(|a, b| b.rate.total_cmp(&a.rate)),
        Some("name") => rows.sort_by(|a, b| (&a.team, &a.route).cmp(&(&b.team, &b.route))),
        _ => rows.sort_by(|a, b| (a.health, &a.team, &a.route).cmp(&(b.health, &b.team, &b.route))),
    }
    let shown = rows.len();
    let page = page.unwrap_or(1).max(1);
    let mut rows: Vec<JobRow> = rows.into_iter().skip((page - 1) * PAGE_SIZE).take(PAGE_SIZE).collect();
    // Sparklines span the newest five minutes of 10-second samples.
    let ids: Vec<&str> = rows.iter().map(|r| r.route_id.as_str()).collect();
    let mut series = store.recent_samples(&ids, now - 5 * 60_000, now).await?;
    for r in &mut rows {
        let s = series.remove(&r.route_id).unwrap_or_default();
        r.throughput = s.iter().map(|s| s.counts.delivered as f64 / s.seconds.max(1) as f64).collect();
        r.lag_series = s.iter().map(|s| s.lag as f64).collect();
    }
    Ok(JobsOverviewData { rows, counts, teams, total, shown, page })
}

fn health_badge(h: Health) -> &'static str {
    match h {
        Health::Healthy => "rounded-sm bg-green-100 px-2 py-0.5 text-xs font-medium text-green-800",
        Health::Lagging => "rounded-sm bg-amber-100 px-2 py-0.5 text-xs font-medium text-amber-800",
        Health::Failing => "rounded-sm bg-red-100 px-2 py-0.5 text-xs font-medium text-red-800",
        Health::Stopped => "rounded-sm bg-slate-100 px-2 py-0.5 text-xs font-medium text-slate-700",
    }
}

/// A tiny inline SVG line (no axes): the shape of a series at a glance.
pub fn sparkline(values: &[f64], stroke: &str) -> String {
    const W: f64 = 96.0;
    const H: f64 = 22.0;
    if values.len() < 2 {
        return r##"<svg width="96" height="22" viewBox="0 0 96 22" aria-hidden="true"><line x1="0" y1="21" x2="96" y2="21" stroke="#e2e8f0"/></svg>"##.to_owned();
    }
    let top = values.iter().copied().fold(0.0_f64, f64::max).max(1e-9);
    let step = W / (values.len() - 1) as f64;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", i as f64 * step, H - 1.0 - (v / top) * (H - 2.0)))
        .collect();
    format!(
        r#"<svg width="96" height="22" viewBox="0 0 96 22" aria-hidden="true"><polyline fill="none" stroke="{stroke}" stroke-width="1.5" points="{}"/></svg>"#,
        points.join(" ")
    )
}

#[component]
pub fn JobsPage() -> impl IntoView {
    let query = use_query_map();
    let filter = move || {
        let q = query.read();
        JobFilter {
            team: q.get("team"),
            stream: q.get("stream"),
            sink_kind: q.get("sink_kind"),
            health: q.get("health"),
            sort: q.get("sort"),
            page: q.get("page").and_then(|p| p.parse().ok()),
        }
    };
    let data = Resource::new(filter, |f| jobs_overview(f.team, f.stream, f.sink_kind, f.health, f.sort, f.page));
    view! {
        <Title text="Jobs · Keystone"/>
        <PageHeader title="Jobs" subtitle="Every route's job, worst first: health, throughput and lag over the last five minutes.">
            <span></span>
        </PageHeader>
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <LoadError error=e/> }.into_any(),
                    Ok(o) => jobs_view(o, filter()).into_any(),
                }
            })}
        </Suspense>
    }
}

fn jobs_view(o: JobsOverviewData, f: JobFilter) -> impl IntoView {
    let selected = |v: &Option<String>, option: &str| v.as_deref() == Some(option);
    view! {
        <div class="mb-4 flex flex-wrap gap-2" data-testid="health-counts">
            {o.counts.iter().map(|(h, n)| view! {
                <a href=format!("/jobs?health={}", h.as_str()) class=health_badge(*h)>{format!("{} {}", n, h.as_str())}</a>
            }).collect_view()}
            <span class="text-xs leading-6 text-slate-500" data-testid="jobs-shown">{format!("{} match of {}", o.shown, o.total)}</span>
        </div>
        <form method="get" action="/jobs" class=format!("{CARD} mb-4 flex flex-wrap items-end gap-4 p-4")>
            <div class="text-sm"><label for="jobs-team">"Team"</label>
                <select id="jobs-team" name="team" class=INPUT>
                    <option value="">"all"</option>
                    {o.teams.iter().map(|t| view! { <option value=t.clone() selected=selected(&f.team, t)>{t.clone()}</option> }).collect_view()}
                </select>
            </div>
            <div class="text-sm"><label for="jobs-stream">"Stream"</label>
                <input id="jobs-stream" name="stream" class=INPUT value=f.stream.clone().unwrap_or_default() placeholder="name contains"/>
            </div>
            <div class="text-sm"><label for="jobs-sink_kind">"Sink kind"</label>
                <select id="jobs-sink_kind" name="sink_kind" class=INPUT>
                    <option value="">"all"</option>
                    {keystone_control::SinkKind::ALL.into_iter().map(|k| view! { <option value=k.as_str() selected=selected(&f.sink_kind, k.as_str())>{k.as_str()}</option> }).collect_view()}
                </select>
            </div>
            <div class="text-sm"><label for="jobs-health">"Health"</label>
                <select id="jobs-health" name="health" class=INPUT>
                    <option value="">"all"</option>
                    {Health::ALL.into_iter().map(|h| view! { <option value=h.as_str() selected=selected(&f.health, h.as_str())>{h.as_str()}</option> }).collect_view()}
                </select>
            </div>
            <div class="text-sm"><label for="jobs-sort">"Sort by"</label>
                <select id="jobs-sort" name="sort" class=INPUT>
                    {[("health", "health (worst first)"), ("lag", "lag"), ("rate", "throughput"), ("name", "name")].into_iter().map(|(v, label)| view! {
                        <option value=v selected=selected(&f.sort, v)>{label}</option>
                    }).collect_view()}
                </select>
            </div>
            <button type="submit" class=BUTTON>"Apply"</button>
        </form>
        {if o.rows.is_empty() {
            view! { <p class="text-sm text-slate-500">"No job matches."</p> }.into_any()
        } else {
            view! {
                <div class=format!("{CARD} overflow-hidden")>
                    <table class="min-w-full divide-y divide-slate-200" data-testid="jobs-table">
                        <thead class="bg-slate-50"><tr>
                            <th class=TH>"Route"</th><th class=TH>"Health"</th><th class=TH>"Stream → sink"</th>
                            <th class=TH>"Delivered/s"</th><th class=TH>"Lag"</th>
                        </tr></thead>
                        <tbody class="divide-y divide-slate-100">
                            {o.rows.into_iter().map(|r| view! {
                                <tr>
                                    <td class=TD><a class="font-medium text-indigo-700 hover:underline" href=format!("/routes/{}/{}/dashboard", r.team, r.route)>{format!("{}/{}", r.team, r.route)}</a></td>
                                    <td class=TD>
                                        <span class=health_badge(r.health)>{r.health.as_str()}</span><span class="ml-2 text-xs text-slate-500">{r.phase.clone()}</span>
                                        {(!r.firing.is_empty()).then(|| view! {
                                            <div class="mt-1 text-xs font-medium text-red-700" data-testid="firing">{format!("firing: {}", r.firing.join(", "))}</div>
                                        })}
                                    </td>
                                    <td class=format!("{TD} text-slate-600")>{format!("{} → {} ({})", r.stream, r.sink, r.sink_kind)}</td>
                                    <td class=TD><div class="flex items-center gap-2"><span inner_html=sparkline(&r.throughput, "#16a34a")></span><span class="tabular-nums">{format!("{:.1}", r.rate)}</span></div></td>
                                    <td class=TD><div class="flex items-center gap-2"><span inner_html=sparkline(&r.lag_series, "#d97706")></span><span class="tabular-nums">{format!("{} · {:.0} s", r.lag, r.lag_seconds)}</span></div></td>
                                </tr>
                            }).collect_view()}
                        </tbody>
                    </table>
                </div>
            }.into_any()
        }}
        {(o.shown > PAGE_SIZE).then(|| {
            let pages = o.shown.div_ceil(PAGE_SIZE);
            let link = |page: usize| {
                let mut q = url::form_urlencoded::Serializer::new(String::new());
                for (k, v) in [("team", &f.team), ("stream", &f.stream), ("sink_kind", &f.sink_kind), ("health", &f.health), ("sort", &f.sort)] {
                    if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                        q.append_pair(k, v);
                    }
                }
                format!("/jobs?{}", q.append_pair("page", &page.to_string()).finish())
            };
            view! {
                <nav class="mt-4 flex items-center gap-4 text-sm" aria-label="Pages" data-testid="pages">
                    {(o.page > 1).then(|| view! { <a class="text-indigo-700 hover:underline" href=link(o.page - 1)>"← Previous"</a> })}
                    <span class="text-slate-500">{format!("page {} of {pages}", o.page)}</span>
                    {(o.page < pages).then(|| view! { <a class="text-indigo-700 hover:underline" href=link(o.page + 1)>"Next →"</a> })}
                </nav>
            }
        })}
    }
}

#[cfg(test)]
mod tests {
    use super::sparkline;

    #[test]
    fn sparklines_scale_to_their_box() {
        let svg = sparkline(&[0.0, 5.0, 10.0], "#000");
        assert!(svg.contains(r#"points="0.0,21.0 48.0,11.0 96.0,1.0""#), "{svg}");
        assert!(sparkline(&[], "#000").contains("<line"), "an empty series is a flat baseline");
    }
}
