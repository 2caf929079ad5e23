//! The audit log: every revision across the platform the caller may see, filterable.

use crate::components::*;
use crate::error::AppError;
use keystone_control::{Kind, Op, Revision};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;

#[server]
pub async fn audit_log(kind: String, team: String, author: String) -> Result<Vec<Revision>, AppError> {
    use keystone_control::goal::Goal;
    use keystone_control::store::AuditFilter;
    let kind = match kind.as_str() {
        "" => None,
        k => Some(
            Kind::parse(k)
                .ok_or_else(|| keystone_control::ValidationErrors::single("kind", format!("unknown kind {k:?}")))?,
        ),
    };
    let some = |s: String| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let (store, who) = crate::state::caller().await?;
    let filter = AuditFilter { kind, team: some(team), author: some(author), before_seq: None, limit: 200 };
    Ok(Goal::new(&store, &who).audit(&filter).await?)
}

/// Operations on running things (restarts, dead-letter retries, alert silences), newest first.
#[server]
pub async fn operations_log() -> Result<Vec<keystone_control::Operation>, AppError> {
    let (store, who) = crate::state::caller().await?;
    Ok(store.operations(&who.scope(), None, 100).await?)
}

/// Sign-ins and account changes, for admins.
#[server]
pub async fn account_log() -> Result<Vec<keystone_control::AccountEvent>, AppError> {
    let (store, who) = crate::state::caller().await?;
    if !who.is_admin() {
        return Ok(Vec::new());
    }
    Ok(store.account_events(200).await?)
}

/// Revisions, newest first, each linking to its object's history at that version.
#[component]
pub fn RevisionTable(revisions: Vec<Revision>) -> impl IntoView {
    if revisions.is_empty() {
        return view! { <EmptyState title="No changes" body="Nothing matches yet.">""</EmptyState> }.into_any();
    }
    view! {
        <div class=format!("{CARD} overflow-hidden")>
            <table class="min-w-full divide-y divide-slate-200" data-testid="audit-table">
                <thead class="bg-slate-50">
                    <tr>
                        <th class=TH>"When"</th>
                        <th class=TH>"Author"</th>
                        <th class=TH>"Change"</th>
                        <th class=TH>"Object"</th>
                        <th class=TH>"Version"</th>
                        <th class=TH>"Reason"</th>
                    </tr>
                </thead>
                <tbody class="divide-y divide-slate-100">
                    {revisions
                        .into_iter()
                        .map(|r| {
                            let label = format!("{} {}/{}", r.kind, r.team, r.name);
                            let link = (!r.kind.is_platform() && r.op != Op::Delete)
                                .then(|| format!("/{}/{}/{}?to={}", r.kind.plural(), r.team, r.name, r.version));
                            view! {
                                <tr>
                                    <td class=format!("{TD} text-slate-500 whitespace-nowrap")>{format_time(r.created_at)}</td>
                                    <td class=TD>{r.author.clone()}</td>
                                    <td class=TD><OpBadge op=r.op/></td>
                                    <td class=TD>
                                        {match link {
                                            Some(href) => view! { <a href=href class="text-indigo-700 hover:underline">{label}</a> }.into_any(),
                                            None => view! { <span>{label}</span> }.into_any(),
                                        }}
                                    </td>
                                    <td class=TD>{format!("v{}", r.version)}</td>
                                    <td class=format!("{TD} text-slate-600")>{r.reason.clone()}</td>
                                </tr>
                            }
                        })
                        .collect_view()}
                </tbody>
            </table>
        </div>
    }
    .into_any()
}

#[component]
pub fn AuditPage() -> impl IntoView {
    let query = use_query_map();
    let q = move |k: &str| query.read().get(k).unwrap_or_default();
    let data = Resource::new(move || (q("kind"), q("team"), q("author")), |(k, t, a)| audit_log(k, t, a));
    let operations = Resource::new(|| (), |_| operations_log());
    let accounts = Resource::new(|| (), |_| account_log());
    view! {
        <Title text="Audit log · Keystone"/>
        <PageHeader title="Audit log" subtitle="Every revision of every object you may see, and every operation on running jobs, newest first."><span></span></PageHeader>
        <form method="get" class=format!("{CARD} mb-6 flex flex-wrap items-end gap-4 p-4")>
            <div>
                <label for="a-kind" class="block text-sm font-medium text-slate-700">"Kind"</label>
                <select id="a-kind" name="kind" class=INPUT>
                    <option value="">"any"</option>
                    {Kind::ALL.into_iter().map(|k| view! { <option value=k.as_str() selected=move || q("kind") == k.as_str()>{k.as_str()}</option> }).collect_view()}
                </select>
            </div>
            <div>
                <label for="a-team" class="block text-sm font-medium text-slate-700">"Team"</label>
                <input id="a-team" name="team" value=move || q("team") class=INPUT/>
            </div>
            <div>
                <label for="a-author" class="block text-sm font-medium text-slate-700">"Author"</label>
                <input id="a-author" name="author" value=move || q("author") class=INPUT/>
            </div>
            <button type="submit" class=BUTTON_SECONDARY>"Filter"</button>
        </form>
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <LoadError error=e/> }.into_any(),
                    Ok(revisions) => view! { <RevisionTable revisions/> }.into_any(),
                }
            })}
        </Suspense>
        <h2 class="mt-8 mb-3 text-lg font-medium">"Operations"</h2>
        <p class="mb-3 text-sm text-slate-500">"Job restarts, dead-letter retries and alert silences, newest first."</p>
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match operations.await {
                    Err(e) => view! { <LoadError error=e/> }.into_any(),
                    Ok(ops) if ops.is_empty() => view! { <p class="text-sm text-slate-500">"None yet."</p> }.into_any(),
                    Ok(ops) => view! {
                        <div class=format!("{CARD} overflow-hidden")>
                            <table class="min-w-full divide-y divide-slate-200" data-testid="operations-table">
                                <thead class="bg-slate-50"><tr><th class=TH>"When"</th><th class=TH>"Who"</th><th class=TH>"Action"</th><th class=TH>"Object"</th><th class=TH>"Detail"</th></tr></thead>
                                <tbody class="divide-y divide-slate-100">
                                    {ops.into_iter().map(|o| view! {
                                        <tr>
                                            <td class=format!("{TD} text-slate-500 whitespace-nowrap")>{format_time(o.at)}</td>
                                            <td class=TD>{o.actor}</td>
                                            <td class=TD>{o.action}</td>
                                            <td class=TD>{format!("{} {}/{}", o.kind, o.team, o.name)}</td>
                                            <td class=format!("{TD} text-slate-600")>{o.detail}</td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                        </div>
                    }.into_any(),
                }
            })}
        </Suspense>
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match accounts.await {
                    // Only admins get any: others see no section at all.
                    Err(_) => ().into_any(),
                    Ok(events) if events.is_empty() => ().into_any(),
                    Ok(events) => view! {
                        <h2 class="mt-8 mb-3 text-lg font-medium">"Accounts"</h2>
                        <p class="mb-3 text-sm text-slate-500">"Sign-ins and changes to users, memberships and tokens, newest first (admins only)."</p>
                        <div class=format!("{CARD} overflow-hidden")>
                            <table class="min-w-full divide-y divide-slate-200" data-testid="account-events">
                                <thead class="bg-slate-50"><tr><th class=TH>"When"</th><th class=TH>"Who"</th><th class=TH>"Action"</th><th class=TH>"Subject"</th><th class=TH>"Detail"</th></tr></thead>
                                <tbody class="divide-y divide-slate-100">
                                    {events.into_iter().map(|e| view! {
                                        <tr>
                                            <td class=format!("{TD} text-slate-500 whitespace-nowrap")>{format_time(e.at)}</td>
                                            <td class=TD>{e.actor}</td>
                                            <td class=TD>{e.action}</td>
                                            <td class=TD>{e.subject}</td>
                                            <td class=format!("{TD} text-slate-600")>{e.detail}</td>
                                        </tr>
                                    }).collect_view()}
                                </tbody>
                            </table>
                        </div>
                    }.into_any(),
                }
            })}
        </Suspense>
    }
}
