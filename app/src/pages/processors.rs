//! Processors: a team's streaming SQL queries. The form plans the query as it is typed (output
//! columns and types, the kind of job, the plan's operators, or the error with its line and
//! column) through the same service as the API's `processor-plan`; saving plans it again.

use super::objects::*;
use crate::components::*;
use crate::error::AppError;
#[cfg(feature = "ssr")]
use keystone_control::ProcessorInput;
use keystone_control::{Kind, Object, ProcessorPlan, ProcessorSpec};
use leptos::prelude::*;
use leptos_router::hooks::use_params_map;

/// Plans a query on `team`'s streams without saving it; `event_time` is the column of the
/// stream it reads.
#[server]
pub async fn plan_processor(
    team: String,
    sql: String,
    event_time: String,
    state_ttl_s: Option<u32>,
) -> Result<ProcessorPlan, AppError> {
    let (store, who) = crate::state::caller().await?;
    let input = ProcessorInput {
        event_time: Some(event_time.trim().to_owned()).filter(|t| !t.is_empty()),
        ..Default::default()
    };
    let mut request = keystone_control::ExplainRequest { sql, inputs: Default::default(), state_ttl_s };
    set_input(&request.sql.clone(), &mut request.inputs, input);
    Ok(keystone_control::goal::Goal::new(&store, &who).explain_processor(&team, &request).await?)
}

/// Runs the query as typed over its stream's newest events (see `processor-preview`).
#[server]
pub async fn preview_processor(
    team: String,
    sql: String,
    event_time: String,
    state_ttl_s: Option<u32>,
) -> Result<keystone_control::ProcessorPreview, AppError> {
    let (state, who) = crate::state::signed_in().await?;
    let input = ProcessorInput {
        event_time: Some(event_time.trim().to_owned()).filter(|t| !t.is_empty()),
        ..Default::default()
    };
    let mut request = keystone_control::ProcessorPreviewRequest { sql, state_ttl_s, ..Default::default() };
    set_input(&request.sql.clone(), &mut request.inputs, input);
    Ok(state.platform.ops(&who).preview_processor(&team, &request).await?)
}

/// Gives the stream the query reads first (a processor reads one stream today) the form's time
/// settings, dropping other streams' (and the entry itself when it says only defaults).
#[cfg(feature = "ssr")]
fn set_input(sql: &str, inputs: &mut std::collections::BTreeMap<String, ProcessorInput>, input: ProcessorInput) {
    let Some(stream) = keystone_control::goal::processor_streams(sql).into_iter().next() else { return };
    inputs.retain(|s, _| *s == stream);
    if input == ProcessorInput::default() {
        inputs.remove(&stream);
    } else {
        inputs.insert(stream, input);
    }
}

/// The plan of a stored processor's query, as its detail page shows it.
#[server]
pub async fn stored_plan(team: String, name: String) -> Result<ProcessorPlan, AppError> {
    let (store, who) = crate::state::caller().await?;
    let goal = keystone_control::goal::Goal::new(&store, &who);
    let spec: ProcessorSpec =
        goal.get(Kind::Processor, &team, &name).await?.spec_as().map_err(|_| AppError::Internal)?;
    Ok(goal.explain_processor(&team, &spec.explain_request()).await?)
}

/// The processor's job as last recorded: phase, version, restarts, last error (`None` before
/// the reconciler first started it).
#[server]
pub async fn processor_job(team: String, name: String) -> Result<Option<keystone_control::JobRecord>, AppError> {
    let (store, who) = crate::state::caller().await?;
    let processor = keystone_control::goal::Goal::new(&store, &who).get(Kind::Processor, &team, &name).await?;
    Ok(store.job(&processor.id).await?)
}

/// Creates (empty `version`) or updates a processor. What the form does not show (config,
/// alerts, desired state, other inputs' settings) is kept from the stored version.
#[allow(clippy::too_many_arguments)]
#[server]
pub async fn save_processor(
    team: String,
    name: String,
    version: String,
    description: String,
    sql: String,
    sink: String,
    event_time: String,
    allowed_lateness_ms: String,
    idle_timeout_ms: String,
    state_ttl_s: String,
    tags: Option<String>,
    reason: String,
) -> Result<(), AppError> {
    use keystone_control::goal::{Declaration, Goal};
    use keystone_control::ValidationErrors;
    let (store, who) = crate::state::caller().await?;
    let goal = Goal::new(&store, &who);
    let version = parse_version(&version);
    let mut spec = match version {
        Some(_) => {
            goal.get(Kind::Processor, &team, &name).await?.spec_as::<ProcessorSpec>().map_err(|_| AppError::Internal)?
        }
        None => serde_json::from_value(serde_json::json!({"sql": "", "sink": "x"})).map_err(|_| AppError::Internal)?,
    };
    let mut e = ValidationErrors::default();
    let number = |e: &mut ValidationErrors, field: &str, value: &str| -> Option<u32> {
        let v = value.trim();
        if v.is_empty() {
            return None;
        }
        let n = v.parse().ok();
        if n.is_none() {
            e.add(field, "must be a whole number");
        }
        n
    };
    let lateness = number(&mut e, "allowed_lateness_ms", &allowed_lateness_ms);
    let idle = number(&mut e, "idle_timeout_ms", &idle_timeout_ms);
    spec.state_ttl_s = number(&mut e, "state_ttl_s", &state_ttl_s);
    match keystone_control::Name::parse(sink.trim()) {
        Ok(n) => spec.sink = n,
        Err(err) => e.add("sink", err.to_string()),
    }
    spec.sql = sql.trim().to_owned();
    spec.description = description.trim().to_owned();
    spec.tags = split_list(tags.as_deref().unwrap_or_default());
    let input = ProcessorInput {
        event_time: Some(event_time.trim().to_owned()).filter(|t| !t.is_empty()),
        allowed_lateness_ms: lateness.unwrap_or(0),
        idle_timeout_ms: idle,
    };
    set_input(&spec.sql.clone(), &mut spec.inputs, input);
    if !e.is_empty() {
        return Err(e.into());
    }
    let decl = Declaration::Processor(spec);
    match version {
        None => goal.create(&team, &name, decl, &reason).await?,
        Some(v) => goal.update(&team, &name, decl, &reason, Some(v)).await?,
    };
    leptos_axum::redirect(&format!("/processors/{team}/{name}"));
    Ok(())
}

fn summary(o: &Object) -> Vec<String> {
    match o.spec_as::<ProcessorSpec>() {
        Ok(p) => {
            let sql: String = p.sql.split_whitespace().collect::<Vec<_>>().join(" ");
            let short =
                if sql.chars().count() > 70 { format!("{}…", sql.chars().take(70).collect::<String>()) } else { sql };
            vec![short, p.sink.as_str().to_owned()]
        }
        Err(_) => vec![String::new(); 2],
    }
}

#[component]
pub fn ProcessorsPage() -> impl IntoView {
    view! {
        <ObjectList
            kind=Kind::Processor
            subtitle="Streaming SQL: windows, updating aggregates and deduplication over your streams, results to a sink."
            headers=&["Query", "Sink"]
            summary=summary
        />
    }
}

/// A planned query: its kind, output columns and operators.
#[component]
fn PlanView(plan: ProcessorPlan) -> impl IntoView {
    let mut facts = vec![format!("{} job", plan.kind), format!("reads {}", plan.inputs.join(", "))];
    facts.extend(plan.window.clone());
    if !plan.keys.is_empty() {
        facts.push(format!("keyed by {}", plan.keys.join(", ")));
    }
    facts.extend(plan.keep.as_ref().map(|k| format!("keeps the {k}")));
    view! {
        <div class="space-y-3" data-testid="plan">
            <p class="text-sm text-slate-600" data-testid="plan-kind">{facts.join(" · ")}</p>
            <table class="min-w-full divide-y divide-slate-200 text-sm" data-testid="plan-columns">
                <thead class="bg-slate-50">
                    <tr><th class=TH>"Output column"</th><th class=TH>"Type"</th><th class=TH>"Nullable"</th></tr>
                </thead>
                <tbody class="divide-y divide-slate-100">
                    {plan
                        .output
                        .into_iter()
                        .map(|c| view! {
                            <tr>
                                <td class=format!("{TD} font-mono")>{c.name}</td>
                                <td class=TD>{c.type_name}</td>
                                <td class=TD>{if c.nullable { "yes" } else { "no" }}</td>
                            </tr>
                        })
                        .collect_view()}
                </tbody>
            </table>
            <pre class="rounded-md bg-slate-50 p-3 text-xs font-mono overflow-x-auto" data-testid="plan-operators">
                {plan.operators.join("\n")}
            </pre>
        </div>
    }
}

/// What a preview made of the stream's newest events: the results as a table, the late and
/// unusable events.
#[component]
fn PreviewView(preview: keystone_control::ProcessorPreview) -> impl IntoView {
    let columns: Vec<String> = preview.plan.output.iter().map(|c| c.name.clone()).collect();
    let header = columns.clone();
    let summary = format!(
        "{} events read · {} results · {} late · {} the query cannot use",
        preview.events,
        preview.results.len(),
        preview.late,
        preview.errors.len()
    );
    view! {
        <div class="mt-4 space-y-3" data-testid="preview">
            <p class="text-sm text-slate-600" data-testid="preview-summary">{summary}</p>
            <div class="overflow-x-auto">
                <table class="min-w-full divide-y divide-slate-200 text-sm" data-testid="preview-results">
                    <thead class="bg-slate-50"><tr>{header.into_iter().map(|c| view! { <th class=TH>{c}</th> }).collect_view()}</tr></thead>
                    <tbody class="divide-y divide-slate-100">
                        {preview
                            .results
                            .into_iter()
                            .map(|row| {
                                let cells: Vec<String> = columns
                                    .iter()
                                    .map(|c| match row.get(c) {
                                        Some(serde_json::Value::String(s)) => s.clone(),
                                        Some(v) => v.to_string(),
                                        None => String::new(),
                                    })
                                    .collect();
                                view! { <tr>{cells.into_iter().map(|c| view! { <td class=format!("{TD} font-mono text-xs")>{c}</td> }).collect_view()}</tr> }
                            })
                            .collect_view()}
                    </tbody>
                </table>
            </div>
            {(!preview.errors.is_empty()).then(|| view! {
                <ul class="space-y-1 text-sm text-red-700" data-testid="preview-errors">
                    {preview.errors.into_iter().map(|e| view! { <li>{format!("p{} @{}: {}", e.partition, e.offset, e.reason)}</li> }).collect_view()}
                </ul>
            })}
        </div>
    }
}

/// The plan of the query as typed on `team`'s streams, or why it does not plan; and, on
/// request, its results on the stream's newest events.
#[component]
fn LivePlan(team: String, request: Signal<(String, String, Option<u32>)>) -> impl IntoView {
    let team_for_preview = team.clone();
    let plan = Resource::new(
        move || (team.clone(), request.get()),
        |(team, (sql, time, ttl))| plan_processor(team, sql, time, ttl),
    );
    let preview = ServerAction::<PreviewProcessor>::new();
    let run = move |_| {
        let (sql, event_time, state_ttl_s) = request.get_untracked();
        preview.dispatch(PreviewProcessor { team: team_for_preview.clone(), sql, event_time, state_ttl_s });
    };
    // A preview of an earlier query is not this one's: cleared as the query changes.
    Effect::watch(move || request.get(), move |_, _, _| preview.clear(), false);
    view! {
        <section class=format!("{CARD} p-4 max-w-2xl") data-testid="live-plan">
            <div class="mb-3 flex items-center justify-between">
                <h2 class="font-medium">"Plan (as you type)"</h2>
                <button type="button" class=BUTTON_SECONDARY on:click=run>
                    "Preview on recent events"
                </button>
            </div>
            {move || preview.pending().get().then(|| view! { <p class="text-sm text-slate-500">"Running the query…"</p> })}
            {move || preview.value().get().map(|r| match r {
                Ok(p) => view! { <PreviewView preview=p/> }.into_any(),
                Err(e) => view! { <div data-testid="preview-failed"><LoadError error=e/></div> }.into_any(),
            })}
            <Transition fallback=|| ()>
                {move || Suspend::new(async move {
                    match plan.await {
                        Ok(p) => view! { <PlanView plan=p/> }.into_any(),
                        Err(AppError::Invalid(errors)) => view! {
                            <ul class="space-y-1 text-sm text-red-700" data-testid="plan-errors">
                                {errors
                                    .0
                                    .into_iter()
                                    .map(|f| view! { <li><span class="font-mono">{f.field}</span>": "{f.message}</li> })
                                    .collect_view()}
                            </ul>
                        }
                            .into_any(),
                        Err(e) => view! { <LoadError error=e/> }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}

#[component]
pub fn ProcessorFormPage() -> impl IntoView {
    view! {
        <ObjectForm
            kind=Kind::Processor
            subtitle="One SELECT over your team's streams, in Flink SQL's streaming dialect (docs/processors.md)."
            form=processor_form
        />
    }
}

fn processor_form(t: FormTarget) -> AnyView {
    let save = ServerAction::<SaveProcessor>::new();
    let errors = field_errors(save.value());
    let spec = t.spec::<ProcessorSpec>();
    let team = t.existing.as_ref().map(|o| o.team.clone()).or_else(|| t.teams.first().cloned()).unwrap_or_default();
    let sql = RwSignal::new(spec.as_ref().map(|s| s.sql.clone()).unwrap_or_default());
    let input = spec.as_ref().and_then(|s| s.inputs.values().next().cloned()).unwrap_or_default();
    let event_time = RwSignal::new(input.event_time.clone().unwrap_or_default());
    let ttl = RwSignal::new(spec.as_ref().and_then(|s| s.state_ttl_s).map(|t| t.to_string()).unwrap_or_default());
    // What the planner needs, from the fields as typed.
    let request = Signal::derive(move || (sql.get(), event_time.get(), ttl.get().trim().parse().ok()));
    let tags = spec.as_ref().map(|s| s.tags.join(", ")).unwrap_or_default();
    // The first error of a field or of the fields under it (`inputs.plays.event_time`).
    let error_of = move |key: &'static str| {
        move || {
            errors.with(|e| {
                e.as_ref().and_then(|e| {
                    e.0.iter()
                        .find(|f| f.field == key || f.field.starts_with(&format!("{key}.")))
                        .map(|f| f.message.clone())
                })
            })
        }
    };
    view! {
        <div class="grid gap-6 xl:grid-cols-2">
            <div>
                <FormStatus error=last_error(save.value())/>
                <ActionForm action=save attr:class=FORM>
                    <IdentityFields target=t.clone() errors/>
                    <Field label="Description" name="description" errors
                        value=spec.as_ref().map(|s| s.description.clone()).unwrap_or_default()/>
                    <div>
                        <label for="f-sql" class="block text-sm font-medium text-slate-700">"Query"</label>
                        <textarea id="f-sql" name="sql" rows="10" class=format!("{INPUT} font-mono") spellcheck="false"
                            aria-invalid=move || error_of("sql")().is_some().to_string()
                            on:input=move |ev| sql.set(event_target_value(&ev))
                            prop:value=move || sql.get()>
                            {sql.get_untracked()}
                        </textarea>
                        {move || error_of("sql")().map(|m| view! { <p class="mt-1 text-sm text-red-600" data-testid="error-sql">{m}</p> })}
                    </div>
                    <Field label="Sink" name="sink" errors value=spec.as_ref().map(|s| s.sink.as_str().to_owned()).unwrap_or_default()
                        help="A sink of this team; a sink of kind stream makes the results a stream."/>
                    <div>
                        <label for="f-event_time" class="block text-sm font-medium text-slate-700">"Event-time column"</label>
                        <input id="f-event_time" name="event_time" class=INPUT
                            on:input=move |ev| event_time.set(event_target_value(&ev)) prop:value=move || event_time.get()/>
                        <p class="mt-1 text-xs text-slate-500">"A date-time field of the stream; empty: _ingested_at."</p>
                        {move || error_of("inputs")().map(|m| view! { <p class="mt-1 text-sm text-red-600">{m}</p> })}
                    </div>
                    <div class="grid grid-cols-2 gap-4">
                        <Field label="Allowed lateness (ms)" name="allowed_lateness_ms" errors value=input.allowed_lateness_ms.to_string()/>
                        <Field label="Idle timeout (ms)" name="idle_timeout_ms" errors
                            value=input.idle_timeout_ms.map(|i| i.to_string()).unwrap_or_default() help="Empty: 10000."/>
                    </div>
                    <div>
                        <label for="f-state_ttl_s" class="block text-sm font-medium text-slate-700">"State TTL (s)"</label>
                        <input id="f-state_ttl_s" name="state_ttl_s" class=INPUT
                            on:input=move |ev| ttl.set(event_target_value(&ev)) prop:value=move || ttl.get()/>
                        <p class="mt-1 text-xs text-slate-500">"Required for a GROUP BY without a window and for deduplication."</p>
                        {move || error_of("state_ttl_s")().map(|m| view! { <p class="mt-1 text-sm text-red-600">{m}</p> })}
                    </div>
                    <Field label="Tags" name="tags" errors value=tags help="Optional, comma-separated labels an approval policy can match."/>
                    <Field label="Reason for this change" name="reason" errors/>
                    <button type="submit" class=BUTTON>"Save processor"</button>
                </ActionForm>
            </div>
            <LivePlan team=team request/>
        </div>
    }
    .into_any()
}

#[component]
pub fn ProcessorDetailPage() -> impl IntoView {
    let params = use_params_map();
    let plan = Resource::new(
        move || (params.read().get("team").unwrap_or_default(), params.read().get("name").unwrap_or_default()),
        |(team, name)| stored_plan(team, name),
    );
    let job = Resource::new(
        move || (params.read().get("team").unwrap_or_default(), params.read().get("name").unwrap_or_default()),
        |(team, name)| processor_job(team, name),
    );
    view! {
        <ObjectDetailView kind=Kind::Processor/>
        <section class=format!("mt-8 {CARD} p-4") data-testid="processor-job">
            <h2 class="mb-3 font-medium">"Job"</h2>
            <Suspense fallback=|| ()>
                {move || Suspend::new(async move {
                    match job.await {
                        Ok(Some(j)) => view! {
                            <dl class="grid grid-cols-2 gap-2 text-sm">
                                <dt class="text-slate-500">"Phase"</dt><dd data-testid="job-phase">{j.phase.as_str()}</dd>
                                <dt class="text-slate-500">"Version running"</dt><dd>{format!("v{}", j.version)}</dd>
                                <dt class="text-slate-500">"Restarts"</dt><dd>{j.restarts}</dd>
                                <dt class="text-slate-500">"Last error"</dt><dd class="text-red-700">{j.last_error.unwrap_or_else(|| "none".into())}</dd>
                            </dl>
                        }
                            .into_any(),
                        Ok(None) => view! { <p class="text-sm text-slate-500">"Not started yet."</p> }.into_any(),
                        Err(e) => view! { <LoadError error=e/> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
        <section class=format!("mt-8 {CARD} p-4")>
            <h2 class="mb-3 font-medium">"Plan"</h2>
            <Suspense fallback=|| ()>
                {move || Suspend::new(async move {
                    match plan.await {
                        Ok(p) => view! { <PlanView plan=p/> }.into_any(),
                        Err(e) => view! { <LoadError error=e/> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}
