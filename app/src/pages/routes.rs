//! Routes: a stream's events, filtered and projected, delivered to a sink.

use super::objects::*;
use crate::components::*;
use crate::error::AppError;
use keystone_control::{
    CheckpointInfo, DesiredState, JobMetrics, JobPhase, JobRecord, JobTransition, Kind, Object, PreviewRow, RouteSpec,
};
use leptos::prelude::*;
use leptos_router::hooks::use_params_map;
use serde::{Deserialize, Serialize};

/// Creates (empty `version`) or updates a route from the console form.
#[allow(clippy::too_many_arguments)]
#[server]
pub async fn save_route(
    team: String,
    name: String,
    version: String,
    description: String,
    stream: String,
    sink: String,
    filter: String,
    keep: String,
    drop: String,
    rename: String,
    // Optional so that forms and clients from before data hygiene keep working.
    mask: Option<String>,
    hash: Option<String>,
    drop_nulls: Option<String>,
    batch_size: String,
    max_latency_ms: String,
    delivery_on_redeploy: String,
    ordering: String,
    config: String,
    // Optional: forms from before alert rules keep the route's rules (or the defaults).
    alerts: Option<String>,
    tags: Option<String>,
    reason: String,
) -> Result<(), AppError> {
    use keystone_control::goal::{Declaration, Goal};
    use keystone_control::{Delivery, Name, Ordering, Projection};
    let mut e = keystone_control::ValidationErrors::default();
    let stream = Name::parse(stream.trim()).map_err(|err| e.add("stream", err.to_string())).ok();
    let sink = Name::parse(sink.trim()).map_err(|err| e.add("sink", err.to_string())).ok();
    let batch_size = parse_number(&batch_size, "batch_size", &mut e);
    let max_latency_ms = parse_number(&max_latency_ms, "max_latency_ms", &mut e);
    let delivery = Delivery::parse(&delivery_on_redeploy);
    if delivery.is_none() {
        e.add("delivery_on_redeploy", "must be no_gap or no_duplicates");
    }
    let order = Ordering::parse(&ordering);
    if order.is_none() {
        e.add("ordering", "must be partition or unordered");
    }
    let rename = parse_pairs(&rename, "projection.rename", &mut e);
    let config = parse_pairs(&config, "config", &mut e);
    let alerts = alerts.map(|text| keystone_control::alerts::parse_rules(&text, &mut e));
    let (Some(stream), Some(sink), Some(batch_size), Some(max_latency_ms), Some(delivery), Some(order), true) =
        (stream, sink, batch_size, max_latency_ms, delivery, order, e.is_empty())
    else {
        return Err(AppError::Invalid(e));
    };
    let spec = RouteSpec {
        description: description.trim().to_owned(),
        stream,
        sink,
        filter: Some(filter.trim().to_owned()).filter(|f| !f.is_empty()),
        projection: Projection {
            keep: split_list(&keep),
            drop: split_list(&drop),
            rename,
            mask: split_list(mask.as_deref().unwrap_or_default()),
            hash: split_list(hash.as_deref().unwrap_or_default()),
            drop_nulls: drop_nulls.as_deref() == Some("yes"),
        },
        batch_size,
        max_latency_ms,
        delivery_on_redeploy: delivery,
        ordering: order,
        config,
        alerts: Vec::new(),
        state: Default::default(),
        tags: split_list(tags.as_deref().unwrap_or_default()),
    };
    let (store, who) = crate::state::caller().await?;
    let goal = Goal::new(&store, &who);
    // An edit keeps what the form does not show: the desired state, and the alert rules when
    // the form had no rules field (without JavaScript's textarea, say).
    let current = match parse_version(&version) {
        Some(_) => {
            Some(goal.get(Kind::Route, &team, &name).await?.spec_as::<RouteSpec>().map_err(|_| AppError::Internal)?)
        }
        None => None,
    };
    let spec = RouteSpec {
        alerts: match (alerts, &current) {
            (Some(rules), _) => rules,
            (None, Some(c)) => c.alerts.clone(),
            (None, None) => keystone_control::alerts::default_alert_rules(),
        },
        state: current.map(|c| c.state).unwrap_or_default(),
        ..spec
    };
    let decl = Declaration::Route(spec);
    match parse_version(&version) {
        None => goal.create(&team, &name, decl, &reason).await?,
        Some(v) => goal.update(&team, &name, decl, &reason, Some(v)).await?,
    };
    leptos_axum::redirect(&format!("/routes/{team}/{name}"));
    Ok(())
}

/// Runs the route's filter and projection, as typed in the form, against the stream's 100 newest
/// events. Saves nothing.
#[allow(clippy::too_many_arguments)]
#[server]
pub async fn preview_route(
    team: String,
    stream: String,
    filter: String,
    keep: String,
    drop: String,
    rename: String,
    mask: String,
    hash: String,
    drop_nulls: String,
) -> Result<Vec<PreviewRow>, AppError> {
    use keystone_control::Projection;
    let (state, who) = crate::state::signed_in().await?;
    let mut e = keystone_control::ValidationErrors::default();
    let rename = parse_pairs(&rename, "projection.rename", &mut e);
    if !e.is_empty() {
        return Err(AppError::Invalid(e));
    }
    let projection = Projection {
        keep: split_list(&keep),
        drop: split_list(&drop),
        rename,
        mask: split_list(&mask),
        hash: split_list(&hash),
        drop_nulls: drop_nulls == "yes",
    };
    let input = keystone_ops::PreviewInput { stream, filter: Some(filter), projection, limit: 100 };
    Ok(state.platform.ops(&who).preview(&team, &input).await?)
}

fn summary(o: &Object) -> Vec<String> {
    match o.spec_as::<RouteSpec>() {
        Ok(r) => vec![format!("{} → {}", r.stream, r.sink), r.filter.unwrap_or_else(|| "every event".into())],
        Err(_) => vec![String::new(); 2],
    }
}

#[component]
pub fn RoutesPage() -> impl IntoView {
    view! {
        <ObjectList
            kind=Kind::Route
            subtitle="Stream → filter → projection → sink; each route runs as its own job."
            headers=&["Flow", "Filter"]
            summary=summary
        />
    }
}

#[component]
pub fn RouteDetailPage() -> impl IntoView {
    view! {
        <ObjectDetailView kind=Kind::Route/>
        <RouteJob/>
    }
}

/// What the console shows of a route's job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteJobView {
    /// What the route's owners want, beside what the job does (`job.phase`).
    pub desired: DesiredState,
    pub job: Option<JobRecord>,
    pub metrics: Option<JobMetrics>,
    pub checkpoints: Vec<CheckpointInfo>,
    pub transitions: Vec<JobTransition>,
    /// The newest dead letters not yet handled by a retry: (offset, letter).
    pub dead_letters: Vec<(u64, serde_json::Value)>,
    /// Newest first.
    pub deployments: Vec<keystone_control::deployments::Deployment>,
    pub savepoints: Vec<keystone_control::rewind::Savepoint>,
    /// The newest entries of the checkpoint history.
    pub checkpoint_history: Vec<keystone_control::rewind::HistoricCheckpoint>,
    /// The newest backfills.
    pub backfills: Vec<keystone_control::backfill::Backfill>,
}

#[server]
pub async fn route_job(team: String, name: String) -> Result<RouteJobView, AppError> {
    let (state, who) = crate::state::signed_in().await?;
    let store = state.platform.store.clone();
    let j = state.platform.ops(&who).job_state(&team, &name, 10).await?;
    let route = j.route;
    let topic = keystone_control::dead_letter_topic(&team, &name);
    let dead_letters =
        keystone_engine::job::dead_letters::read(state.platform.log.as_ref(), &topic, None, 20).await.map_err(|e| {
            tracing::error!(error = %e, "Reading dead letters failed.");
            AppError::Internal
        })?;
    let handled = store.dead_letter_cursor(&route.id).await?;
    Ok(RouteJobView {
        desired: j.desired,
        job: j.job,
        metrics: j.metrics,
        checkpoints: j.checkpoints,
        transitions: j.transitions,
        dead_letters: dead_letters.into_iter().filter(|(offset, _)| *offset >= handled).collect(),
        deployments: store.deployments(&route.id, 10).await?,
        savepoints: store.savepoints(&route.id).await?,
        checkpoint_history: store.checkpoint_history(&route.id).await?.into_iter().take(5).collect(),
        backfills: store.backfills(&route.id).await?.into_iter().take(3).collect(),
    })
}

/// Restarts the route's job wherever it runs (see `Goal::restart_route`).
#[server]
pub async fn restart_route_job(team: String, name: String) -> Result<(), AppError> {
    let (state, who) = crate::state::signed_in().await?;
    state.platform.ops(&who).restart_route(&team, &name, "from the console").await?;
    Ok(())
}

/// Sets the route's desired state (a new revision of the route; see `Goal::set_route_state`).
#[server]
pub async fn set_route_state(team: String, name: String, state: String, reason: String) -> Result<(), AppError> {
    let (app, who) = crate::state::signed_in().await?;
    let Some(desired) = DesiredState::parse(&state) else {
        return Err(AppError::Invalid(keystone_control::ValidationErrors::single(
            "state",
            "must be running, paused or stopped",
        )));
    };
    app.platform.ops(&who).set_route_state(&team, &name, desired, &reason).await?;
    Ok(())
}

/// Records the route's committed positions under a name.
#[server]
pub async fn take_savepoint(team: String, name: String, label: String) -> Result<(), AppError> {
    use keystone_control::goal::Goal;
    let (app, who) = crate::state::signed_in().await?;
    Goal::new(&app.platform.store, &who).take_savepoint(&team, &name, label.trim()).await?;
    Ok(())
}

/// Estimates (`mode` = `estimate`) or makes a rewind of a stopped route: to the earliest retained
/// event, a UTC time (`at`), a savepoint, or a checkpoint of the history. Says what it did, or
/// would do.
#[server]
pub async fn rewind_route(
    team: String,
    name: String,
    to: String,
    at: String,
    savepoint: String,
    // Optional: forms from before the checkpoint history keep working.
    checkpoint: Option<String>,
    mode: String,
) -> Result<String, AppError> {
    use keystone_control::rewind::RewindTo;
    use keystone_control::ValidationErrors;
    let (app, who) = crate::state::signed_in().await?;
    let target = match to.as_str() {
        "earliest" => RewindTo::Earliest,
        "time" => match parse_utc(&at) {
            Some(timestamp) => RewindTo::Timestamp { timestamp },
            None => return Err(AppError::Invalid(ValidationErrors::single("at", "use YYYY-MM-DD HH:MM (UTC)"))),
        },
        "savepoint" => RewindTo::Savepoint { savepoint: savepoint.trim().to_owned() },
        "checkpoint" => match checkpoint.as_deref().map(|c| c.trim().trim_start_matches('#').parse::<i64>()) {
            Some(Ok(checkpoint)) => RewindTo::Checkpoint { checkpoint },
            _ => return Err(AppError::Invalid(ValidationErrors::single("checkpoint", "give a checkpoint number"))),
        },
        _ => {
            return Err(AppError::Invalid(ValidationErrors::single(
                "to",
                "must be earliest, time, savepoint or checkpoint",
            )))
        }
    };
    let dry_run = mode != "rewind";
    let plan = app.platform.ops(&who).rewind_route(&team, &name, &target, dry_run).await?;
    Ok(if dry_run {
        format!("Estimate: {} event(s) would be delivered again, {} skipped.", plan.redelivered, plan.skipped)
    } else {
        format!(
            "Rewound: {} event(s) will be delivered again, {} skipped, once the route runs.",
            plan.redelivered, plan.skipped
        )
    })
}

/// Starts a backfill (`from`: `stream` or `files`, `source`: the stream, or the file sink's
/// folder), or with `from` = `cancel` cancels the running one.
#[server]
pub async fn backfill_route(team: String, name: String, from: String, source: String) -> Result<String, AppError> {
    use keystone_control::backfill::BackfillSource;
    use keystone_control::ValidationErrors;
    let (app, who) = crate::state::signed_in().await?;
    let ops = app.platform.ops(&who);
    let source = source.trim().to_owned();
    let source = match from.as_str() {
        "stream" => BackfillSource::Stream { stream: source },
        "files" => BackfillSource::Files { path: source, sink: None },
        "cancel" => {
            let b = ops.cancel_backfill(&team, &name).await?;
            return Ok(format!("Backfill from {} cancelled; the job returns to its stream.", b.source.describe()));
        }
        _ => return Err(ValidationErrors::single("from", "must be stream or files").into()),
    };
    let started = ops.start_backfill(&team, &name, source).await?;
    Ok(format!(
        "Backfilling from {}: {} event(s); the job returns to its stream after them.",
        started.source.describe(),
        started.remaining()
    ))
}

/// Sets the route back to an earlier version's declaration (a new revision).
#[server]
pub async fn roll_back_route(team: String, name: String, version: String, why: String) -> Result<(), AppError> {
    let (app, who) = crate::state::signed_in().await?;
    let Some(version) = parse_version(&version) else {
        return Err(AppError::Invalid(keystone_control::ValidationErrors::single(
            "version",
            "must be a version number",
        )));
    };
    app.platform.ops(&who).roll_back_route(&team, &name, version, &why).await?;
    Ok(())
}

/// Re-delivers the route's unhandled dead letters through its current transforms and sink.
#[server]
pub async fn retry_dead_letters(team: String, name: String) -> Result<String, AppError> {
    let (state, who) = crate::state::signed_in().await?;
    let r = state.platform.ops(&who).retry_dead_letters(&team, &name, 500).await?;
    Ok(format!(
        "{} dead letter(s) retried: {} delivered, {} refused again (back in the queue), {} now filtered out.",
        r.letters, r.delivered, r.refused_again, r.filtered_out
    ))
}

fn phase_badge(phase: JobPhase) -> &'static str {
    match phase {
        JobPhase::Running => "rounded-sm bg-green-100 px-2 py-0.5 text-xs font-medium text-green-800",
        JobPhase::Failing | JobPhase::Starting => {
            "rounded-sm bg-amber-100 px-2 py-0.5 text-xs font-medium text-amber-800"
        }
        JobPhase::Failed => "rounded-sm bg-red-100 px-2 py-0.5 text-xs font-medium text-red-800",
        JobPhase::Paused | JobPhase::Stopped => {
            "rounded-sm bg-slate-100 px-2 py-0.5 text-xs font-medium text-slate-700"
        }
    }
}

/// The route's job: phase, lag per partition, checkpoints, errors, transitions, dead letters.
#[component]
fn RouteJob() -> impl IntoView {
    let params = use_params_map();
    let team = move || params.read().get("team").unwrap_or_default();
    let name = move || params.read().get("name").unwrap_or_default();
    let restart = ServerAction::<RestartRouteJob>::new();
    let retry = ServerAction::<RetryDeadLetters>::new();
    let set_state = ServerAction::<SetRouteState>::new();
    let roll_back = ServerAction::<RollBackRoute>::new();
    let savepoint = ServerAction::<TakeSavepoint>::new();
    let rewind = ServerAction::<RewindRoute>::new();
    let backfill = ServerAction::<BackfillRoute>::new();
    let data = Resource::new(
        move || {
            let acted = (restart.version().get(), retry.version().get(), set_state.version().get());
            let moved = (
                roll_back.version().get(),
                savepoint.version().get(),
                rewind.version().get() + backfill.version().get(),
            );
            (team(), name(), acted, moved)
        },
        |(t, n, _, _)| route_job(t, n),
    );
    let savepoint_errors = field_errors(savepoint.value());
    let rewind_errors = field_errors(rewind.value());
    let backfill_errors = field_errors(backfill.value());
    let state_errors = field_errors(set_state.value());
    let roll_back_errors = field_errors(roll_back.value());
    view! {
        <section class="mt-8" data-testid="route-job">
            <div class="mb-3 flex items-center justify-between">
                <h2 class="text-lg font-medium">"Job"</h2>
                <div class="flex gap-2">
                    <a href=move || format!("/routes/{}/{}/dashboard", team(), name()) class=BUTTON_SECONDARY data-testid="open-dashboard">"Dashboard"</a>
                    {can_edit().then(|| view! {
                        <ActionForm action=restart>
                            <input type="hidden" name="team" value=team/>
                            <input type="hidden" name="name" value=name/>
                            <button type="submit" class=BUTTON_SECONDARY>"Restart job"</button>
                        </ActionForm>
                    })}
                </div>
            </div>
            <FormStatus error=last_error(restart.value())/>
            <FormStatus error=last_error(retry.value())/>
            {move || retry.value().get().and_then(Result::ok).map(|msg| view! {
                <p class="mb-4 rounded-md border border-green-200 bg-green-50 px-4 py-3 text-sm text-green-800" data-testid="retry-result">{msg}</p>
            })}
            {can_edit().then(|| view! {
                <ActionForm action=set_state attr:class="mb-4 flex flex-wrap items-end gap-2" attr:data-testid="state-form">
                    <input type="hidden" name="team" value=team/>
                    <input type="hidden" name="name" value=name/>
                    <div class="w-40"><Field label="Desired state" name="state" kind="select:running,paused,stopped" value="paused" errors=state_errors/></div>
                    <div class="flex-1"><Field label="Why" name="reason" errors=state_errors/></div>
                    <button type="submit" class=BUTTON_SECONDARY>"Set state"</button>
                </ActionForm>
                <FormStatus error=last_error(set_state.value())/>
                <ActionForm action=roll_back attr:class="mb-4 flex flex-wrap items-end gap-2" attr:data-testid="rollback-form">
                    <input type="hidden" name="team" value=team/>
                    <input type="hidden" name="name" value=name/>
                    <div class="w-32"><Field label="Roll back to v" name="version" kind="number" errors=roll_back_errors/></div>
                    <div class="flex-1"><Field label="Why roll back" name="why" error_key="reason" errors=roll_back_errors/></div>
                    <button type="submit" class=BUTTON_SECONDARY>"Roll back"</button>
                </ActionForm>
                <FormStatus error=last_error(roll_back.value())/>
                <details class="mb-4 text-sm" data-testid="rewind-section">
                    <summary class="cursor-pointer font-medium">"Savepoints and rewind"</summary>
                    <p class="mt-2 text-slate-600">"A rewind needs the route stopped; an estimate works in any state."</p>
                    <ActionForm action=savepoint attr:class="mt-2 flex flex-wrap items-end gap-2">
                        <input type="hidden" name="team" value=team/>
                        <input type="hidden" name="name" value=name/>
                        <div class="w-56"><Field label="Savepoint name" name="label" error_key="name" errors=savepoint_errors/></div>
                        <button type="submit" class=BUTTON_SECONDARY>"Take savepoint"</button>
                    </ActionForm>
                    <FormStatus error=last_error(savepoint.value())/>
                    <ActionForm action=rewind attr:class="mt-3 flex flex-wrap items-end gap-2">
                        <input type="hidden" name="team" value=team/>
                        <input type="hidden" name="name" value=name/>
                        <div class="w-36"><Field label="Rewind to" name="to" kind="select:earliest,time,savepoint,checkpoint" value="earliest" errors=rewind_errors/></div>
                        <div class="w-52"><Field label="Time (UTC)" name="at" help="YYYY-MM-DD HH:MM" errors=rewind_errors/></div>
                        <div class="w-40"><Field label="Savepoint" name="savepoint" errors=rewind_errors/></div>
                        <div class="w-32"><Field label="Checkpoint #" name="checkpoint" errors=rewind_errors/></div>
                        <div class="w-32"><Field label="Mode" name="mode" kind="select:estimate,rewind" value="estimate" errors=rewind_errors/></div>
                        <button type="submit" class=BUTTON_SECONDARY>"Go"</button>
                    </ActionForm>
                    <FormStatus error=last_error(rewind.value())/>
                    {move || rewind.value().get().and_then(Result::ok).map(|msg| view! {
                        <p class="mt-2 rounded-md border border-green-200 bg-green-50 px-4 py-3 text-green-800" data-testid="rewind-result">{msg}</p>
                    })}
                </details>
                <details class=format!("{CARD} mb-4 p-4 text-sm") data-testid="backfill">
                    <summary class="cursor-pointer font-medium">"Backfill"</summary>
                    <p class="mt-2 text-slate-600">"Run the route's filter, projection and sink over another stream, or over the files a file sink wrote, up to where they end now; then the job returns to its stream where it left off. Cancel to return at once."</p>
                    <ActionForm action=backfill attr:class="mt-3 flex flex-wrap items-end gap-2">
                        <input type="hidden" name="team" value=team/>
                        <input type="hidden" name="name" value=name/>
                        <div class="w-36"><Field label="Backfill from" name="from" kind="select:stream,files,cancel" value="stream" errors=backfill_errors/></div>
                        <div class="w-64"><Field label="Stream or folder" name="source" errors=backfill_errors help="A stream (or team/stream), or a file sink's path."/></div>
                        <button type="submit" class=BUTTON_SECONDARY>"Go"</button>
                    </ActionForm>
                    <FormStatus error=last_error(backfill.value())/>
                    {move || backfill.value().get().and_then(Result::ok).map(|msg| view! {
                        <p class="mt-2 rounded-md border border-green-200 bg-green-50 px-4 py-3 text-green-800" data-testid="backfill-result">{msg}</p>
                    })}
                </details>
            })}
            {can_edit().then(|| view! {
                <ActionForm action=retry attr:class="mb-4">
                    <input type="hidden" name="team" value=team/>
                    <input type="hidden" name="name" value=name/>
                    <button type="submit" class=BUTTON_SECONDARY>"Retry dead letters"</button>
                </ActionForm>
            })}
            <Suspense fallback=|| ()>
                {move || Suspend::new(async move {
                    match data.await {
                        Err(e) => view! { <LoadError error=e/> }.into_any(),
                        Ok(v) => job_view(v).into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}

/// Whether the observed phase is what the desired state leads to (a failing job is running as
/// far as its owners' wish goes: the alerts speak for its health).
fn matches_desired(desired: DesiredState, phase: JobPhase) -> bool {
    match desired {
        DesiredState::Running => matches!(phase, JobPhase::Running | JobPhase::Failing | JobPhase::Failed),
        DesiredState::Paused => phase == JobPhase::Paused,
        DesiredState::Stopped => phase == JobPhase::Stopped,
    }
}

fn stat(label: &'static str, value: String) -> impl IntoView {
    view! {
        <div class="px-4 py-3">
            <div class="text-xs uppercase tracking-wide text-slate-500">{label}</div>
            <div class="text-lg font-semibold tabular-nums" data-testid=format!("job-{}", label.to_lowercase().replace(' ', "-"))>{value}</div>
        </div>
    }
}

fn job_view(v: RouteJobView) -> impl IntoView {
    let Some(job) = v.job.clone() else {
        return view! { <p class="text-sm text-slate-500">"The reconciler has not started this job yet (it reacts within a second)."</p> }.into_any();
    };
    let m = v.metrics.clone();
    let n = move |f: fn(&JobMetrics) -> u64| m.as_ref().map_or("–".to_owned(), |m| f(m).to_string());
    let checkpoint = |p: u32| v.checkpoints.iter().find(|c| c.partition == p).cloned();
    let partitions = v.metrics.as_ref().map(|m| m.partitions.clone()).unwrap_or_default();
    view! {
        <div class=format!("{CARD} mb-4")>
            <div class="flex items-center gap-3 border-b border-slate-200 px-4 py-3">
                <span class=phase_badge(job.phase) data-testid="job-phase">{job.phase.as_str()}</span>
                <span class="text-sm text-slate-600" data-testid="job-desired">{format!("desired: {}", v.desired.as_str())}</span>
                {(!matches_desired(v.desired, job.phase)).then(|| view! {
                    <span class="text-xs text-amber-700">"being applied"</span>
                })}
                <span class="text-sm text-slate-500">{format!("route version {} · {} restart(s) · since {}", job.version, job.restarts, format_time(job.updated_at))}</span>
            </div>
            {job.last_error.clone().map(|e| view! {
                <p class="border-b border-slate-200 bg-red-50 px-4 py-2 text-sm text-red-800" data-testid="job-last-error">{e}</p>
            })}
            <div class="grid grid-cols-2 divide-x divide-slate-100 sm:grid-cols-4 lg:grid-cols-7">
                {stat("Lag", n(|m| m.lag))}
                {stat("Delivered", n(|m| m.counters.delivered))}
                {stat("Filtered out", n(|m| m.counters.filtered_out))}
                {stat("Filter errors", n(|m| m.counters.filter_errors))}
                {stat("Dead letters", n(|m| m.counters.dead_lettered))}
                {stat("Retries", n(|m| m.counters.retries))}
                {stat("Batches", n(|m| m.counters.batches))}
            </div>
        </div>
        <div class="grid gap-6 lg:grid-cols-2">
            <section class=format!("{CARD} overflow-hidden")>
                <h3 class="border-b border-slate-200 px-4 py-3 font-medium">"Partitions"</h3>
                <table class="min-w-full divide-y divide-slate-200" data-testid="job-partitions">
                    <thead class="bg-slate-50"><tr>
                        <th class=TH>"Partition"</th><th class=TH>"Acknowledged"</th><th class=TH>"Log end"</th>
                        <th class=TH>"Lag"</th><th class=TH>"Checkpoint"</th>
                    </tr></thead>
                    <tbody class="divide-y divide-slate-100">
                        {partitions.into_iter().map(|p| {
                            let c = checkpoint(p.partition);
                            view! {
                                <tr>
                                    <td class=TD>{p.partition}</td>
                                    <td class=format!("{TD} tabular-nums")>{p.acked}</td>
                                    <td class=format!("{TD} tabular-nums")>{p.end}</td>
                                    <td class=format!("{TD} tabular-nums")>{p.end.saturating_sub(p.acked)}</td>
                                    <td class=format!("{TD} text-slate-500")>{c.map_or("none yet".to_owned(), |c| format!("{} at {}", c.next_offset, format_time(c.committed_at)))}</td>
                                </tr>
                            }
                        }).collect_view()}
                    </tbody>
                </table>
            </section>
            <section class=format!("{CARD} overflow-hidden")>
                <h3 class="border-b border-slate-200 px-4 py-3 font-medium">"Transitions"</h3>
                <ul class="divide-y divide-slate-100 text-sm" data-testid="job-transitions">
                    {v.transitions.iter().map(|t| view! {
                        <li class="px-4 py-2">
                            <span class="text-slate-500">{format_time(t.at)}</span>" "
                            <span class="font-medium">{format!("{} → {}", t.from.map_or("new", |f| f.as_str()), t.to)}</span>
                            <span class="text-slate-500">{format!(": {}", t.cause)}</span>
                        </li>
                    }).collect_view()}
                </ul>
            </section>
        </div>
        {v.metrics.as_ref().filter(|m| !m.recent_errors.is_empty()).map(|m| view! {
            <h3 class="mt-6 mb-2 font-medium">"Recent errors"</h3>
            <div class=CARD><RecentErrors errors=m.recent_errors.clone()/></div>
        })}
        <h3 class="mt-6 mb-2 font-medium">"Dead-letter queue"</h3>
        <DeadLetterTable letters=v.dead_letters/>
        {(!v.backfills.is_empty()).then(|| view! {
            <p class="mt-4 text-sm text-slate-600" data-testid="backfills">
                "Backfills: "
                {v.backfills.iter().map(|b| format!("from {} {} ({} left, {} by {})", b.source.describe(), b.state.as_str(), b.remaining(), format_time(b.started_at), b.started_by)).collect::<Vec<_>>().join(" · ")}
            </p>
        })}
        {(!v.checkpoint_history.is_empty()).then(|| view! {
            <p class="mt-4 text-sm text-slate-600" data-testid="checkpoint-history">
                "Checkpoint history (newest): "
                {v.checkpoint_history.iter().map(|c| {
                    let at: Vec<String> = c.positions.iter().map(|(p, o)| format!("p{p}@{o}")).collect();
                    format!("#{} {} ({})", c.id, format_time(c.taken_at), at.join(", "))
                }).collect::<Vec<_>>().join(" · ")}
            </p>
        })}
        {(!v.savepoints.is_empty()).then(|| view! {
            <p class="mt-4 text-sm text-slate-600" data-testid="savepoints">
                "Savepoints: "
                {v.savepoints.iter().map(|sp| format!("{} ({} by {})", sp.name, format_time(sp.created_at), sp.created_by)).collect::<Vec<_>>().join(" · ")}
            </p>
        })}
        {(!v.deployments.is_empty()).then(|| view! {
            <h3 class="mt-6 mb-2 font-medium">"Deployments"</h3>
            <div class=format!("{CARD} overflow-hidden")>
                <table class="min-w-full divide-y divide-slate-200" data-testid="deployments">
                    <thead class="bg-slate-50"><tr><th class=TH>"Started"</th><th class=TH>"Change"</th><th class=TH>"Strategy"</th><th class=TH>"State"</th></tr></thead>
                    <tbody class="divide-y divide-slate-100">
                        {v.deployments.iter().map(|d| view! {
                            <tr>
                                <td class=format!("{TD} text-slate-500")>{format_time(d.started_at)}</td>
                                <td class=format!("{TD} text-sm")>{d.detail.clone()}</td>
                                <td class=TD>{d.strategy.as_str()}</td>
                                <td class=TD>{d.state.as_str()}</td>
                            </tr>
                        }).collect_view()}
                    </tbody>
                </table>
            </div>
        })}
    }
    .into_any()
}

fn lines(map: &std::collections::BTreeMap<String, String>) -> String {
    map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\n")
}

#[component]
pub fn RouteFormPage() -> impl IntoView {
    view! { <ObjectForm kind=Kind::Route subtitle="Every save writes a new revision." form=route_form/> }
}

fn route_form(t: FormTarget) -> AnyView {
    let save = ServerAction::<SaveRoute>::new();
    let errors = field_errors(save.value());
    let spec = t.spec::<RouteSpec>();
    let s = spec.clone();
    let get = move |f: fn(&RouteSpec) -> String, default: &str| s.as_ref().map_or(default.to_owned(), f);
    view! {
        <FormStatus error=last_error(save.value())/>
        <ActionForm action=save attr:class=FORM>
            <IdentityFields target=t.clone() errors/>
            <Field label="Description" name="description" errors value=get(|r| r.description.clone(), "")/>
            <div class="grid grid-cols-2 gap-4">
                <Field label="Source stream" name="stream" errors required=true value=get(|r| r.stream.to_string(), "")/>
                <Field label="Sink" name="sink" errors required=true value=get(|r| r.sink.to_string(), "")/>
            </div>
            <Field label="Filter (CEL)" name="filter" errors value=get(|r| r.filter.clone().unwrap_or_default(), "")
                help="For example: event.country == \"BR\" && event.bitrate > 3000. Blank delivers every event."/>
            <div class="grid grid-cols-2 gap-4">
                <Field label="Keep fields" name="keep" error_key="projection.keep" errors
                    value=get(|r| r.projection.keep.join(", "), "") help="Comma-separated dotted paths; blank keeps all."/>
                <Field label="Drop fields" name="drop" error_key="projection.drop" errors
                    value=get(|r| r.projection.drop.join(", "), "")/>
            </div>
            <Field label="Rename fields" name="rename" kind="textarea" error_key="projection.rename" errors
                value=get(|r| lines(&r.projection.rename), "") help="One old.path=new.path per line."/>
            <div class="grid grid-cols-3 gap-4">
                <Field label="Mask fields" name="mask" error_key="projection.mask" errors
                    value=get(|r| r.projection.mask.join(", "), "") help="Values become ****. Stream field paths."/>
                <Field label="Hash fields" name="hash" error_key="projection.hash" errors
                    value=get(|r| r.projection.hash.join(", "), "") help="Values become a SHA-256 pseudonym, stable within the team."/>
                <Field label="Drop null fields" name="drop_nulls" kind="select:no,yes" errors
                    value=get(|r| if r.projection.drop_nulls { "yes".into() } else { "no".into() }, "no")/>
            </div>
            <div class="grid grid-cols-2 gap-4">
                <Field label="Batch size" name="batch_size" kind="number" errors
                    value=get(|r| r.batch_size.to_string(), "500")/>
                <Field label="Max latency (ms)" name="max_latency_ms" kind="number" errors
                    value=get(|r| r.max_latency_ms.to_string(), "1000")/>
                <Field label="Delivery on redeploy" name="delivery_on_redeploy" kind="select:no_gap,no_duplicates" errors
                    value=get(|r| r.delivery_on_redeploy.as_str().to_owned(), "no_gap")/>
                <Field label="Ordering" name="ordering" kind="select:partition,unordered" errors
                    value=get(|r| r.ordering.as_str().to_owned(), "partition")/>
            </div>
            <Field label="Job properties" name="config" kind="textarea" errors value=get(|r| lines(&r.config), "")
                help="One key=value per line."/>
            <Field label="Alert rules" name="alerts" kind="textarea" errors
                value=get(|r| keystone_control::alerts::format_rules(&r.alerts), &keystone_control::alerts::format_rules(&keystone_control::alerts::default_alert_rules()))
                help="One rule per line: kind threshold for seconds. Kinds: lag_seconds, no_delivery, dead_letters (per minute), restarts (within seconds), failed."/>
            <Field label="Tags" name="tags" errors value=get(|r| r.tags.join(", "), "") help="Optional, comma-separated labels an approval policy can match (e.g. critical)."/>
            <Field label="Reason for this change" name="reason" errors/>
            <button type="submit" class=BUTTON>"Save route"</button>
        </ActionForm>
        <RoutePreview/>
    }
    .into_any()
}

/// The current value of the route form's field `name` (in the browser).
fn form_value(name: &str) -> String {
    use leptos::wasm_bindgen::JsValue;
    document()
        .query_selector(&format!("[name=\"{name}\"]"))
        .ok()
        .flatten()
        .and_then(|el| leptos::web_sys::js_sys::Reflect::get(&el, &JsValue::from_str("value")).ok())
        .and_then(|v| v.as_string())
        .unwrap_or_default()
}

/// Tries the filter and projection being edited on the stream's newest events (needs JavaScript:
/// it reads the form as typed, without saving it).
#[component]
fn RoutePreview() -> impl IntoView {
    let preview = ServerAction::<PreviewRoute>::new();
    let errors = field_errors(preview.value());
    let run = move |_| {
        preview.dispatch(PreviewRoute {
            team: form_value("team"),
            stream: form_value("stream"),
            filter: form_value("filter"),
            keep: form_value("keep"),
            drop: form_value("drop"),
            rename: form_value("rename"),
            mask: form_value("mask"),
            hash: form_value("hash"),
            drop_nulls: form_value("drop_nulls"),
        });
    };
    let field_messages = move || {
        errors.get().map(|e| e.0.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; "))
    };
    view! {
        <section class="mt-8" data-testid="route-preview">
            <div class="flex items-center gap-4">
                <button type="button" class=BUTTON_SECONDARY on:click=run>"Preview on recent events"</button>
                <p class="text-sm text-slate-500">"Runs the filter and projection above on the stream's 100 newest events; nothing is saved or delivered."</p>
            </div>
            <FormStatus error=last_error(preview.value())/>
            {move || field_messages().map(|m| view! { <p class="mt-2 text-sm text-red-600" data-testid="preview-error">{m}</p> })}
            {move || preview.value().get().and_then(Result::ok).map(preview_table)}
        </section>
    }
}

fn preview_table(rows: Vec<PreviewRow>) -> AnyView {
    if rows.is_empty() {
        return view! { <p class="mt-3 text-sm text-slate-500">"The stream has no events yet."</p> }.into_any();
    }
    let passed = rows.iter().filter(|r| r.outcome == "delivered").count();
    let failed = rows.iter().filter(|r| r.outcome == "error").count();
    let clip = |text: &str| text.chars().take(160).collect::<String>();
    let json = |v: &serde_json::Value| clip(&v.to_string());
    view! {
        <p class="mt-3 text-sm" data-testid="preview-summary">
            {format!("{passed} of {} events pass; {failed} cannot be evaluated.", rows.len())}
        </p>
        <div class=format!("{CARD} mt-2 overflow-hidden")>
            <table class="min-w-full divide-y divide-slate-200" data-testid="preview-table">
                <thead class="bg-slate-50"><tr>
                    <th class=TH>"Event"</th><th class=TH>"Outcome"</th><th class=TH>"Input"</th><th class=TH>"Sink receives"</th>
                </tr></thead>
                <tbody class="divide-y divide-slate-100">
                    {rows.into_iter().map(|r| {
                        let badge = match r.outcome.as_str() {
                            "delivered" => BADGE_CREATE,
                            "error" => BADGE_DELETE,
                            _ => BADGE_UPDATE,
                        };
                        view! {
                            <tr>
                                <td class=format!("{TD} tabular-nums text-slate-500")>{format!("p{} @{}", r.partition, r.offset)}</td>
                                <td class=TD><span class=badge>{r.outcome.replace('_', " ")}</span></td>
                                <td class=format!("{TD} font-mono text-xs")>{json(&r.input)}</td>
                                <td class=format!("{TD} font-mono text-xs")>
                                    {r.output.as_ref().map(|o| clip(o.get())).or(r.error.clone()).unwrap_or_default()}
                                </td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </div>
    }
    .into_any()
}

/// Dead letters, newest first: when, where from, why, and the event itself.
#[component]
pub fn DeadLetterTable(letters: Vec<(u64, serde_json::Value)>) -> impl IntoView {
    if letters.is_empty() {
        return view! { <p class="text-sm text-slate-500">"No refused event is waiting for a retry."</p> }.into_any();
    }
    view! {
        <div class=format!("{CARD} overflow-hidden")>
            <table class="min-w-full divide-y divide-slate-200" data-testid="dead-letters">
                <thead class="bg-slate-50"><tr>
                    <th class=TH>"Failed at"</th><th class=TH>"Source"</th><th class=TH>"Reason"</th><th class=TH>"Event"</th>
                </tr></thead>
                <tbody class="divide-y divide-slate-100">
                    {letters.iter().rev().map(|(_, l)| view! {
                        <tr>
                            <td class=format!("{TD} text-slate-500")>{format_time(l["failed_at"].as_i64().unwrap_or(0))}</td>
                            <td class=format!("{TD} tabular-nums")>{format!("p{} @{}", l["partition"], l["offset"])}</td>
                            <td class=TD>{l["reason"].as_str().unwrap_or("").to_owned()}</td>
                            <td class=format!("{TD} font-mono text-xs")>{l["envelope"]["payload"].to_string().chars().take(200).collect::<String>()}</td>
                        </tr>
                    }).collect_view()}
                </tbody>
            </table>
        </div>
    }
    .into_any()
}
