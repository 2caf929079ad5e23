//! Streams: one event type each, carried by one topic.

use super::objects::*;
use crate::components::*;
use crate::error::AppError;
use keystone_control::{IngestStats, Kind, Object, PreviewRow, ProducerTokenInfo, StreamSpec};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

/// Creates (empty `version`) or updates a stream from the console form.
#[allow(clippy::too_many_arguments)]
#[server(endpoint = "save_stream")]
pub async fn save_stream(
    team: String,
    name: String,
    version: String,
    description: String,
    partitions: String,
    retention_hours: String,
    retention_bytes: String,
    key_field: String,
    schema: String,
    // Optional so that forms and clients from before the field existed keep working.
    max_events_per_second: Option<String>,
    tags: Option<String>,
    reason: String,
) -> Result<(), AppError> {
    use keystone_control::goal::{Declaration, Goal};
    let mut e = keystone_control::ValidationErrors::default();
    let partitions = parse_number(&partitions, "partitions", &mut e);
    let retention_hours = parse_number(&retention_hours, "retention_hours", &mut e);
    let retention_bytes = if retention_bytes.trim().is_empty() {
        None
    } else {
        parse_number(&retention_bytes, "retention_bytes", &mut e)
    };
    let max_events_per_second = match max_events_per_second.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(q) => parse_number(q, "max_events_per_second", &mut e),
    };
    let schema = if schema.trim().is_empty() {
        None
    } else {
        match serde_json::from_str(&schema) {
            Ok(v) => Some(v),
            Err(err) => {
                e.add("schema", format!("is not valid JSON: {err}"));
                None
            }
        }
    };
    let (Some(partitions), Some(retention_hours), true) = (partitions, retention_hours, e.is_empty()) else {
        return Err(AppError::Invalid(e));
    };
    let spec = StreamSpec {
        description: description.trim().to_owned(),
        partitions,
        retention_hours,
        retention_bytes,
        key_field: Some(key_field.trim().to_owned()).filter(|k| !k.is_empty()),
        schema,
        max_events_per_second,
        tags: crate::pages::objects::split_list(tags.as_deref().unwrap_or_default()),
    };
    let (store, who) = crate::state::caller().await?;
    let goal = Goal::new(&store, &who);
    let decl = Declaration::Stream(spec);
    match parse_version(&version) {
        None => goal.create(&team, &name, decl, &reason).await?,
        Some(v) => goal.update(&team, &name, decl, &reason, Some(v)).await?,
    };
    leptos_axum::redirect(&format!("/streams/{team}/{name}"));
    Ok(())
}

fn summary(o: &Object) -> Vec<String> {
    match o.spec_as::<StreamSpec>() {
        Ok(s) => vec![
            s.partitions.to_string(),
            format!("{} h", s.retention_hours),
            if s.schema.is_some() { "yes".into() } else { "no".into() },
        ],
        Err(_) => vec![String::new(); 3],
    }
}

#[component]
pub fn StreamsPage() -> impl IntoView {
    view! {
        <ObjectList
            kind=Kind::Stream
            subtitle="Event types producers send to; each is one topic."
            headers=&["Partitions", "Retention", "Schema"]
            summary=summary
        />
    }
}

#[component]
pub fn StreamDetailPage() -> impl IntoView {
    view! {
        <ObjectDetailView kind=Kind::Stream/>
        <StreamActivity/>
        <ProducerTokens/>
    }
}

#[server]
pub async fn list_producer_tokens(team: String, stream: String) -> Result<Vec<ProducerTokenInfo>, AppError> {
    let (store, who) = crate::state::caller().await?;
    Ok(keystone_control::producers::list(&store, &who, &team, &stream).await?)
}

/// Returns the new token; it is never shown again.
#[server]
pub async fn create_producer_token(team: String, stream: String, name: String) -> Result<String, AppError> {
    let (store, who) = crate::state::caller().await?;
    Ok(keystone_control::producers::create(&store, &who, &team, &stream, name.trim()).await?.1)
}

#[server]
pub async fn revoke_producer_token(team: String, stream: String, id: String) -> Result<(), AppError> {
    let (store, who) = crate::state::caller().await?;
    Ok(keystone_control::producers::revoke(&store, &who, &team, &stream, &id).await?)
}

/// What a stream's page shows of its traffic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamActivityView {
    pub counted: IngestStats,
    /// Events ever appended, per partition.
    pub log_end_offsets: Vec<u64>,
    /// Why the platform could not apply the topic's settings on the Kafka cluster, if so.
    pub topic_problem: Option<String>,
    /// The newest events (without transforms).
    pub recent: Vec<PreviewRow>,
    /// The routes reading this stream: (name, job phase, events waiting).
    pub routes: Vec<(String, String, Option<u64>)>,
    /// Ingest over the last hour, as an SVG chart.
    pub chart: String,
}

#[server]
pub async fn stream_activity(team: String, name: String) -> Result<StreamActivityView, AppError> {
    use crate::charts::{line_chart, Series, AMBER, GREEN, RED};
    use keystone_control::goal::Goal;
    use keystone_engine::log::Log;
    let (state, who) = crate::state::signed_in().await?;
    let store = state.platform.store.clone();
    let object = Goal::new(&store, &who).get(Kind::Stream, &team, &name).await?;
    let spec: StreamSpec = object.spec_as().map_err(|_| AppError::Internal)?;
    let topic = object.stream_topic();
    let everything =
        keystone_engine::job::Transforms::compile(None, &Default::default(), &team).map_err(|_| AppError::Internal)?;
    let recent =
        keystone_engine::job::preview::preview(state.platform.log.as_ref(), &topic, spec.partitions, everything, 10)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "Reading recent events failed.");
                AppError::Internal
            })?;
    let log_end_offsets = state.platform.log.end_offsets(&topic);
    let now = keystone_control::store::now_ms();
    let from = now - keystone_control::telemetry::Window::Hour.ms();
    let samples: Vec<keystone_control::StreamSample> = store.samples(&object.id, from, now).await?;
    let rate = |f: fn(&keystone_control::StreamSample) -> u64| -> Vec<(i64, f64)> {
        samples.iter().map(|s| (s.at, f(s) as f64 / s.seconds.max(1) as f64)).collect()
    };
    let chart = line_chart(
        "Ingest (last hour)",
        "events/s",
        (from, now),
        samples.first().map_or(10, |s| s.seconds) * 1500,
        &[
            Series { label: "accepted", color: GREEN, points: rate(|s| s.accepted) },
            Series { label: "rejected", color: RED, points: rate(|s| s.rejected) },
            Series { label: "throttled", color: AMBER, points: rate(|s| s.throttled) },
        ],
        &[],
    );
    let mut routes = Vec::new();
    // Jobs run by workers are in their beats (a server's own are not).
    let mut shared = store.shared_job_metrics().await?;
    for r in Goal::new(&store, &who).list(Kind::Route).await? {
        if r.team != object.team
            || r.spec_as::<keystone_control::RouteSpec>().map_or(true, |s| s.stream.as_str() != name)
        {
            continue;
        }
        let phase = store.job(&r.id).await?.map_or("pending", |j| j.phase.as_str()).to_owned();
        routes.push((
            r.name.clone(),
            phase,
            state.platform.jobs.metrics(&r.id).or_else(|| shared.remove(&r.id)).map(|m| m.lag),
        ));
    }
    let topic_problem = state.platform.log.topic_problem(&topic);
    Ok(StreamActivityView {
        routes,
        counted: state.platform.meter.stats(&topic, now),
        log_end_offsets,
        topic_problem,
        recent,
        chart,
    })
}

/// Ingest rate and totals, and a sample of the newest events.
#[component]
fn StreamActivity() -> impl IntoView {
    let params = leptos_router::hooks::use_params_map();
    let data = Resource::new(
        move || (params.read().get("team").unwrap_or_default(), params.read().get("name").unwrap_or_default()),
        |(team, name)| stream_activity(team, name),
    );
    view! {
        <section class="mt-8" data-testid="stream-activity">
            <h2 class="mb-3 text-lg font-medium">"Activity"</h2>
            <Suspense fallback=|| ()>
                {move || Suspend::new(async move {
                    match data.await {
                        Err(e) => view! { <LoadError error=e/> }.into_any(),
                        Ok(a) => {
                            let in_log: u64 = a.log_end_offsets.iter().sum();
                            let per_partition = a.log_end_offsets.iter().map(u64::to_string).collect::<Vec<_>>().join(" / ");
                            view! {
                                {a.topic_problem.clone().map(|p| view! {
                                    <p class="mb-4 rounded-sm border border-amber-300 bg-amber-50 px-3 py-2 text-sm text-amber-900" data-testid="topic-problem">{p}</p>
                                })}
                                <div class=format!("{CARD} mb-4 grid grid-cols-2 divide-x divide-slate-100 sm:grid-cols-5")>
                                    <div class="px-4 py-3"><div class="text-xs uppercase tracking-wide text-slate-500">"Events/s (last minute)"</div>
                                        <div class="text-lg font-semibold tabular-nums" data-testid="ingest-rate">{format!("{:.1}", a.counted.events_per_second)}</div></div>
                                    <div class="px-4 py-3"><div class="text-xs uppercase tracking-wide text-slate-500">"Accepted since start"</div>
                                        <div class="text-lg font-semibold tabular-nums" data-testid="ingest-accepted">{a.counted.accepted}</div></div>
                                    <div class="px-4 py-3"><div class="text-xs uppercase tracking-wide text-slate-500">"Rejected since start"</div>
                                        <div class="text-lg font-semibold tabular-nums" data-testid="ingest-rejected">{a.counted.rejected}</div>
                                        <div class="text-xs text-slate-500" data-testid="rejected-by-kind">{a.counted.rejected_by_kind.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", ")}</div></div>
                                    <div class="px-4 py-3"><div class="text-xs uppercase tracking-wide text-slate-500">"Events in the log"</div>
                                        <div class="text-lg font-semibold tabular-nums" data-testid="log-events">{in_log}</div>
                                        <div class="text-xs text-slate-500">{format!("per partition: {per_partition}")}</div></div>
                                    <div class="px-4 py-3"><div class="text-xs uppercase tracking-wide text-slate-500">"Producers (5 min)"</div>
                                        <div class="text-lg font-semibold tabular-nums" data-testid="ingest-producers">{a.counted.producers}</div></div>
                                </div>
                                <figure class=format!("{CARD} mb-4 overflow-hidden p-2") data-testid="chart-ingest" inner_html=a.chart></figure>
                                {(!a.routes.is_empty()).then(|| {
                                    let team = params.read_untracked().get("team").unwrap_or_default();
                                    view! {
                                        <div class=format!("{CARD} mb-4 overflow-hidden")>
                                            <table class="min-w-full divide-y divide-slate-200" data-testid="stream-routes">
                                                <thead class="bg-slate-50"><tr><th class=TH>"Route reading this stream"</th><th class=TH>"Job"</th><th class=TH>"Lag (events)"</th></tr></thead>
                                                <tbody class="divide-y divide-slate-100">
                                                    {a.routes.into_iter().map(|(name, phase, lag)| view! {
                                                        <tr>
                                                            <td class=TD><a class="text-indigo-700 hover:underline" href=format!("/routes/{team}/{name}/dashboard")>{name.clone()}</a></td>
                                                            <td class=TD>{phase}</td>
                                                            <td class=format!("{TD} tabular-nums")>{lag.map_or("—".to_owned(), |l| l.to_string())}</td>
                                                        </tr>
                                                    }).collect_view()}
                                                </tbody>
                                            </table>
                                        </div>
                                    }
                                })}
                                {if a.recent.is_empty() {
                                    view! { <p class="text-sm text-slate-500">"No events yet."</p> }.into_any()
                                } else {
                                    view! {
                                        <div class=format!("{CARD} overflow-hidden")>
                                            <table class="min-w-full divide-y divide-slate-200" data-testid="recent-events">
                                                <thead class="bg-slate-50"><tr><th class=TH>"Event"</th><th class=TH>"Ingested"</th><th class=TH>"Payload"</th></tr></thead>
                                                <tbody class="divide-y divide-slate-100">
                                                    {a.recent.into_iter().map(|r| view! {
                                                        <tr>
                                                            <td class=format!("{TD} tabular-nums text-slate-500")>{format!("p{} @{}", r.partition, r.offset)}</td>
                                                            <td class=format!("{TD} text-slate-500")>{format_time(r.ingested_at)}</td>
                                                            <td class=format!("{TD} font-mono text-xs")>{r.input.to_string().chars().take(200).collect::<String>()}</td>
                                                        </tr>
                                                    }).collect_view()}
                                                </tbody>
                                            </table>
                                        </div>
                                    }.into_any()
                                }}
                            }.into_any()
                        }
                    }
                })}
            </Suspense>
        </section>
    }
}

/// The stream's producer tokens: what applications send events with (`POST /ingest/{stream}`).
#[component]
fn ProducerTokens() -> impl IntoView {
    let params = leptos_router::hooks::use_params_map();
    let team = move || params.read().get("team").unwrap_or_default();
    let stream = move || params.read().get("name").unwrap_or_default();
    let create = ServerAction::<CreateProducerToken>::new();
    let revoke = ServerAction::<RevokeProducerToken>::new();
    let tokens = Resource::new(
        move || (team(), stream(), create.version().get(), revoke.version().get()),
        |(team, stream, _, _)| list_producer_tokens(team, stream),
    );
    let errors = field_errors(create.value());
    view! {
        <section class="mt-8">
            <h2 class="mb-1 text-lg font-medium">"Producer tokens"</h2>
            <p class="mb-3 text-sm text-slate-500">
                "Applications send events with "
                <code class="font-mono">{move || format!("POST /ingest/{}", stream())}</code>
                " and one of these as a bearer token."
            </p>
            <NewSecret value=create.value() test_id="new-producer-token"/>
            {can_edit().then(|| view! {
                <ActionForm action=create attr:class=format!("{CARD} mb-4 flex items-end gap-4 p-4")>
                    <input type="hidden" name="team" value=team/>
                    <input type="hidden" name="stream" value=stream/>
                    <div class="flex-1"><Field label="Token name" name="name" errors required=true/></div>
                    <button type="submit" class=BUTTON>"Create producer token"</button>
                </ActionForm>
            })}
            <Suspense fallback=|| ()>
                {move || Suspend::new(async move {
                    match tokens.await {
                        Err(e) => view! { <LoadError error=e/> }.into_any(),
                        Ok(list) if list.is_empty() => view! { <p class="text-sm text-slate-500">"No producer tokens yet."</p> }.into_any(),
                        Ok(list) => view! {
                            <div class=format!("{CARD} overflow-hidden")>
                                <table class="min-w-full divide-y divide-slate-200" data-testid="producer-tokens">
                                    <thead class="bg-slate-50">
                                        <tr><th class=TH>"Name"</th><th class=TH>"Prefix"</th><th class=TH>"Created"</th><th class=TH>"State"</th></tr>
                                    </thead>
                                    <tbody class="divide-y divide-slate-100">
                                        {list.into_iter().map(|t| view! {
                                            <tr>
                                                <td class=TD>{t.name.clone()}</td>
                                                <td class=format!("{TD} font-mono")>{format!("{}…", t.prefix)}</td>
                                                <td class=format!("{TD} text-slate-500")>{format_time(t.created_at)}</td>
                                                <td class=TD>
                                                    {if t.revoked {
                                                        view! { <span class="text-slate-400">"revoked"</span> }.into_any()
                                                    } else if can_edit() {
                                                        view! {
                                                            <ActionForm action=revoke>
                                                                <input type="hidden" name="team" value=team/>
                                                                <input type="hidden" name="stream" value=stream/>
                                                                <input type="hidden" name="id" value=t.id.clone()/>
                                                                <button type="submit" class="text-sm text-red-600 hover:underline">"Revoke"</button>
                                                            </ActionForm>
                                                        }.into_any()
                                                    } else {
                                                        view! { <span>"active"</span> }.into_any()
                                                    }}
                                                </td>
                                            </tr>
                                        }).collect_view()}
                                    </tbody>
                                </table>
                            </div>
                        }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}

#[component]
pub fn StreamFormPage() -> impl IntoView {
    view! { <ObjectForm kind=Kind::Stream subtitle="Every save writes a new revision; the name becomes the topic." form=stream_form/> }
}

fn stream_form(t: FormTarget) -> AnyView {
    let save = ServerAction::<SaveStream>::new();
    let errors = field_errors(save.value());
    let spec = t.spec::<StreamSpec>();
    view! {
        <FormStatus error=last_error(save.value())/>
        <ActionForm action=save attr:class=FORM>
            <IdentityFields target=t.clone() errors/>
            <Field label="Description" name="description" errors
                value=spec.as_ref().map(|s| s.description.clone()).unwrap_or_default()/>
            <div class="grid grid-cols-3 gap-4">
                <Field label="Partitions" name="partitions" kind="number" errors required=true
                    value=spec.as_ref().map_or("3".into(), |s| s.partitions.to_string())/>
                <Field label="Retention (hours)" name="retention_hours" kind="number" errors required=true
                    value=spec.as_ref().map_or("168".into(), |s| s.retention_hours.to_string())/>
                <Field label="Retention (bytes)" name="retention_bytes" kind="number" errors
                    help="Optional, per partition."
                    value=spec.as_ref().and_then(|s| s.retention_bytes).map(|b| b.to_string()).unwrap_or_default()/>
            </div>
            <Field label="Ingest quota (events/s)" name="max_events_per_second" kind="number" errors
                help="Optional. Beyond it (with bursts of two seconds' worth) producers get 429 and Retry-After."
                value=spec.as_ref().and_then(|s| s.max_events_per_second).map(|q| q.to_string()).unwrap_or_default()/>
            <Field label="Key field" name="key_field" errors help="Optional dotted path; events with the same key keep their order."
                value=spec.as_ref().and_then(|s| s.key_field.clone()).unwrap_or_default()/>
            <Field label="JSON Schema" name="schema" kind="textarea" errors help="Optional; every event must satisfy it."
                value=spec.as_ref().and_then(|s| s.schema.as_ref()).map(|v| serde_json::to_string_pretty(v).unwrap_or_default()).unwrap_or_default()/>
            <Field label="Tags" name="tags" errors help="Optional, comma-separated labels an approval policy can match (e.g. critical)."
                value=spec.as_ref().map(|s| s.tags.join(", ")).unwrap_or_default()/>
            <Field label="Reason for this change" name="reason" errors help="Shown in the history and the audit log."/>
            <button type="submit" class=BUTTON>"Save stream"</button>
        </ActionForm>
    }
    .into_any()
}
