//! Approvals: the admins' inbox of change requests, each request with its diff and decision,
//! the requester's view of their own requests, and the approval policy (edited by admins).

use crate::components::*;
use crate::error::AppError;
use keystone_control::approvals::{ApprovalPolicy, ChangeRequest, RequestState};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_params_map;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalsData {
    /// Pending requests the caller may decide (admins; never their own).
    pub inbox: Vec<ChangeRequest>,
    /// The caller's own requests, newest first.
    pub mine: Vec<ChangeRequest>,
    /// Other requests the caller may see, newest first.
    pub others: Vec<ChangeRequest>,
    pub policy: ApprovalPolicy,
    /// The policy's version (0: none declared).
    pub policy_version: i64,
}

#[server]
pub async fn approvals() -> Result<ApprovalsData, AppError> {
    use keystone_control::goal::Goal;
    use keystone_control::store::approvals::RequestFilter;
    let (store, who) = crate::state::caller().await?;
    let goal = Goal::new(&store, &who);
    let mine = goal
        .change_requests(&RequestFilter { requester_id: Some(who.user_id.clone()), limit: 50, ..Default::default() })
        .await?;
    let visible = goal.change_requests(&RequestFilter { limit: 200, ..Default::default() }).await?;
    let (others, _): (Vec<_>, Vec<_>) = visible.into_iter().partition(|r| !mine.iter().any(|m| m.id == r.id));
    let inbox = if who.is_admin() {
        others.iter().filter(|r| r.state == RequestState::Pending).cloned().collect()
    } else {
        Vec::new()
    };
    let others = others.into_iter().filter(|r| !inbox.iter().any(|i: &ChangeRequest| i.id == r.id)).collect();
    let (policy, object) = goal.approval_policy().await?;
    Ok(ApprovalsData { inbox, mine, others, policy, policy_version: object.map_or(0, |o| o.version) })
}

/// A request as its page shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestView {
    pub request: ChangeRequest,
    /// The caller submitted it (and so may not decide it).
    pub own: bool,
    /// The caller may approve or reject it now.
    pub may_decide: bool,
}

#[server]
pub async fn load_change_request(id: i64) -> Result<RequestView, AppError> {
    use keystone_control::goal::Goal;
    let (store, who) = crate::state::caller().await?;
    let (request, own) = Goal::new(&store, &who).change_request_and_author(id).await?;
    let may_decide = who.is_admin() && !own && request.state == RequestState::Pending;
    Ok(RequestView { request, own, may_decide })
}

#[server(endpoint = "decide_request")]
pub async fn decide_request(id: i64, decision: String, comment: String) -> Result<(), AppError> {
    let approve = match decision.as_str() {
        "approve" => true,
        "reject" => false,
        _ => return Err(keystone_control::ValidationErrors::single("decision", "must be approve or reject").into()),
    };
    let (app, who) = crate::state::signed_in().await?;
    app.platform.ops(&who).decide_request(id, approve, &comment).await?;
    leptos_axum::redirect(&format!("/approvals/{id}"));
    Ok(())
}

/// Saves the approval policy. Checkboxes post a value only when ticked.
#[server(endpoint = "save_policy")]
pub async fn save_policy(
    version: String,
    stream_deletes: Option<String>,
    capacity_increases: Option<String>,
    routes_to_sinks_tagged: String,
    objects_tagged: String,
    // Optional: forms from before the rewind rule keep working.
    rewinds_over_events: Option<String>,
    reason: String,
) -> Result<(), AppError> {
    use super::objects::{parse_version, split_list};
    use keystone_control::approvals::POLICY_NAME;
    use keystone_control::goal::{Declaration, Goal};
    let (store, who) = crate::state::caller().await?;
    let goal = Goal::new(&store, &who);
    let rewinds_over_events = match rewinds_over_events.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(n) => Some(n.parse::<u64>().map_err(|_| {
            keystone_control::ValidationErrors::single("rewinds_over_events", "must be a whole number of events")
        })?),
    };
    let policy = ApprovalPolicy {
        rewinds_over_events,
        description: String::new(),
        stream_deletes: stream_deletes.is_some(),
        capacity_increases: capacity_increases.is_some(),
        routes_to_sinks_tagged: split_list(&routes_to_sinks_tagged),
        objects_tagged: split_list(&objects_tagged),
    };
    let decl = Declaration::Policy(policy);
    match parse_version(&version).filter(|v| *v > 0) {
        None => goal.create("", POLICY_NAME, decl, &reason).await?,
        Some(v) => goal.update("", POLICY_NAME, decl, &reason, Some(v)).await?,
    };
    leptos_axum::redirect("/approvals");
    Ok(())
}

fn state_badge(state: RequestState) -> impl IntoView {
    let class = match state {
        RequestState::Pending => "rounded-sm bg-amber-100 px-2 py-0.5 text-xs font-medium text-amber-800",
        RequestState::Approved => BADGE_CREATE,
        RequestState::Rejected => BADGE_DELETE,
        RequestState::Stale => "rounded-sm bg-slate-100 px-2 py-0.5 text-xs font-medium text-slate-700",
    };
    view! { <span class=class data-testid="request-state">{state.as_str()}</span> }
}

#[component]
fn RequestTable(requests: Vec<ChangeRequest>, test_id: &'static str, empty: &'static str) -> impl IntoView {
    if requests.is_empty() {
        return view! { <p class="text-sm text-slate-500" data-testid=test_id>{empty}</p> }.into_any();
    }
    view! {
        <div class=format!("{CARD} overflow-hidden")>
            <table class="min-w-full divide-y divide-slate-200" data-testid=test_id>
                <thead class="bg-slate-50">
                    <tr>
                        <th class=TH>"#"</th>
                        <th class=TH>"Change"</th>
                        <th class=TH>"Needs approval for"</th>
                        <th class=TH>"Requester"</th>
                        <th class=TH>"When"</th>
                        <th class=TH>"State"</th>
                    </tr>
                </thead>
                <tbody class="divide-y divide-slate-100">
                    {requests
                        .into_iter()
                        .map(|r| view! {
                            <tr>
                                <td class=TD><a class="text-indigo-600 hover:underline" href=format!("/approvals/{}", r.id)>{format!("#{}", r.id)}</a></td>
                                <td class=TD>{r.summary()}</td>
                                <td class=TD>{r.needs.join("; ")}</td>
                                <td class=TD>{r.requester.clone()}</td>
                                <td class=TD>{format_time(r.created_at)}</td>
                                <td class=TD>{state_badge(r.state)}</td>
                            </tr>
                        })
                        .collect_view()}
                </tbody>
            </table>
        </div>
    }
    .into_any()
}

#[component]
pub fn ApprovalsPage() -> impl IntoView {
    let save = ServerAction::<SavePolicy>::new();
    let data = Resource::new(move || save.version().get(), |_| approvals());
    let errors = field_errors(save.value());
    let is_admin = use_me().is_some_and(|m| m.role == keystone_control::Role::Admin);
    view! {
        <Title text="Approvals · Keystone"/>
        <PageHeader title="Approvals" subtitle="Changes the approval policy holds back until an admin other than the requester decides.">
            <span></span>
        </PageHeader>
        <Suspense fallback=|| view! { <p class="text-slate-500">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <LoadError error=e/> }.into_any(),
                    Ok(d) => {
                        let p = d.policy.clone();
                        view! {
                            {is_admin.then(|| view! {
                                <h2 class="mb-3 text-lg font-medium">"Inbox"</h2>
                                <RequestTable requests=d.inbox.clone() test_id="approvals-inbox" empty="Nothing waits for you."/>
                            })}
                            <h2 class="mt-8 mb-3 text-lg font-medium">"Your requests"</h2>
                            <RequestTable requests=d.mine.clone() test_id="my-requests" empty="You have no change requests."/>
                            <h2 class="mt-8 mb-3 text-lg font-medium">"Other requests"</h2>
                            <RequestTable requests=d.others.clone() test_id="other-requests" empty="None."/>
                            <h2 class="mt-8 mb-3 text-lg font-medium">"Approval policy"</h2>
                            <FormStatus error=last_error(save.value())/>
                            <ActionForm action=save attr:class=format!("{CARD} p-4 space-y-4 max-w-2xl")>
                                <input type="hidden" name="version" value=d.policy_version.to_string()/>
                                <label class="flex items-center gap-2 text-sm">
                                    <input type="checkbox" name="stream_deletes" value="yes" checked=p.stream_deletes disabled=!is_admin/>
                                    "Deleting a stream"
                                </label>
                                <label class="flex items-center gap-2 text-sm">
                                    <input type="checkbox" name="capacity_increases" value="yes" checked=p.capacity_increases disabled=!is_admin/>
                                    "Raising a stream's partitions, retention or ingest quota"
                                </label>
                                <Field label="Routes to sinks tagged" name="routes_to_sinks_tagged" errors readonly=!is_admin
                                    value=p.routes_to_sinks_tagged.join(", ") help="Comma-separated, e.g. production: creating or changing such a route waits."/>
                                <Field label="Any change to objects tagged" name="objects_tagged" errors readonly=!is_admin
                                    value=p.objects_tagged.join(", ") help="Comma-separated, e.g. critical."/>
                                <Field label="Rewinds or backfills delivering more events than" name="rewinds_over_events" kind="number" errors readonly=!is_admin
                                    value=p.rewinds_over_events.map(|n| n.to_string()).unwrap_or_default() help="Empty: rewinds never wait."/>
                                <p class="text-xs text-slate-500">
                                    "Pausing, resuming or stopping a route never waits: it is how an incident is contained. Keystone's automatic rollbacks do not wait either."
                                </p>
                                {is_admin.then(|| view! {
                                    <Field label="Reason for this change" name="reason" errors/>
                                    <button type="submit" class=BUTTON>"Save policy"</button>
                                })}
                            </ActionForm>
                        }
                        .into_any()
                    }
                }
            })}
        </Suspense>
    }
}

#[component]
pub fn ChangeRequestPage() -> impl IntoView {
    let params = use_params_map();
    let decide = ServerAction::<DecideRequest>::new();
    let id = move || params.with(|p| p.get("id").and_then(|v| v.parse::<i64>().ok()).unwrap_or(0));
    let data = Resource::new(move || (id(), decide.version().get()), |(id, _)| load_change_request(id));
    let errors = field_errors(decide.value());
    view! {
        <Title text="Change request · Keystone"/>
        <Suspense fallback=|| view! { <p class="text-slate-500">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <LoadError error=e/> }.into_any(),
                    Ok(RequestView { request: r, own, may_decide }) => view! {
                        <PageHeader title=format!("Change request #{}", r.id) subtitle=r.summary()>
                            <a href="/approvals" class=BUTTON_SECONDARY>"All requests"</a>
                        </PageHeader>
                        <dl class=format!("{CARD} p-4 grid grid-cols-2 gap-x-6 gap-y-2 text-sm max-w-3xl")>
                            <dt class="text-slate-500">"State"</dt><dd>{state_badge(r.state)}</dd>
                            <dt class="text-slate-500">"Requested by"</dt><dd>{format!("{} at {}", r.requester, format_time(r.created_at))}</dd>
                            <dt class="text-slate-500">"Reason"</dt><dd>{r.reason.clone()}</dd>
                            <dt class="text-slate-500">"Needs approval for"</dt><dd data-testid="request-needs">{r.needs.join("; ")}</dd>
                            <dt class="text-slate-500">"Based on version"</dt><dd>{r.base_version}</dd>
                            {r.decided_by.clone().map(|by| view! {
                                <dt class="text-slate-500">"Decided by"</dt>
                                <dd data-testid="decided-by">{format!("{by} at {}", r.decided_at.map(format_time).unwrap_or_default())}</dd>
                            })}
                            {(!r.comment.is_empty()).then(|| view! {
                                <dt class="text-slate-500">"Comment"</dt><dd>{r.comment.clone()}</dd>
                            })}
                            {r.revision_seq.map(|_| view! {
                                <dt class="text-slate-500">"Applied"</dt>
                                <dd><a class="text-indigo-600 hover:underline" href=format!("/{}/{}/{}", r.kind.plural(), r.team, r.name)>"see the object"</a></dd>
                            })}
                        </dl>
                        <h2 class="mt-6 mb-3 text-lg font-medium">"Changes against the goal"</h2>
                        <div class=format!("{CARD} overflow-hidden max-w-3xl")><DiffTable changes=r.changes.clone()/></div>
                        {(own && r.state == RequestState::Pending).then(|| view! {
                            <p class="mt-6 text-sm text-slate-600" data-testid="own-request">
                                "You submitted this request: another admin must approve or reject it."
                            </p>
                        })}
                        {may_decide.then(|| view! {
                            <h2 class="mt-6 mb-3 text-lg font-medium">"Decide"</h2>
                            <FormStatus error=last_error(decide.value())/>
                            <ActionForm action=decide attr:class=format!("{CARD} p-4 space-y-4 max-w-3xl")>
                                <input type="hidden" name="id" value=r.id.to_string()/>
                                <Field label="Comment" name="comment" errors help="Required to reject; the requester reads it."/>
                                <div class="flex gap-3">
                                    <button type="submit" name="decision" value="approve" class=BUTTON>"Approve and apply"</button>
                                    <button type="submit" name="decision" value="reject" class=BUTTON_DANGER>"Reject"</button>
                                </div>
                            </ActionForm>
                        })}
                    }
                    .into_any(),
                }
            })}
        </Suspense>
    }
}
