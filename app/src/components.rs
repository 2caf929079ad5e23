//! Building blocks shared by the pages: the signed-in shell, form fields with their errors,
//! revision history with diffs, and small formatting helpers.

use crate::error::AppError;
use crate::session::{whoami, Logout, Me};
use keystone_control::diff::{show, Change};
use keystone_control::{RecentError, Revision, Role, ValidationErrors};
use leptos::prelude::*;
use leptos_router::components::{Outlet, Redirect, A};
use leptos_router::hooks::use_location;

/// The frame of every signed-in page: navigation, the user, and the page in the middle.
/// Anonymous visitors are sent to the sign-in page.
#[component]
pub fn Shell() -> impl IntoView {
    let me = Resource::new(|| (), |_| whoami());
    view! {
        <Suspense fallback=|| view! { <p class="p-8 text-slate-500">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match me.await {
                    Ok(Some(me)) => {
                        provide_context(me.clone());
                        view! {
                            <div class="flex min-h-screen">
                                <Nav me/>
                                <main class="flex-1 min-w-0 px-8 py-6">
                                    <Outlet/>
                                </main>
                            </div>
                        }
                            .into_any()
                    }
                    _ => view! { <Redirect path="/login"/> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn Nav(me: Me) -> impl IntoView {
    let logout = ServerAction::<Logout>::new();
    let path = use_location().pathname;
    let link = move |href: &'static str, label: &'static str| {
        let active = move || {
            let p = path.get();
            if href == "/" {
                p == "/"
            } else {
                p.starts_with(href)
            }
        };
        view! {
            <A
                href=href
                attr:class=move || if active() { NAV_ACTIVE } else { NAV_IDLE }
            >
                {label}
            </A>
        }
    };
    let is_admin = me.role == Role::Admin;
    view! {
        <nav class="w-56 shrink-0 bg-slate-900 text-slate-100 flex flex-col" aria-label="Main">
            <div class="px-5 py-5 border-b border-slate-800">
                <a href="/" class="text-lg font-semibold tracking-tight text-white">"Keystone"</a>
                <p class="text-xs text-slate-400">"stream processing as a service"</p>
            </div>
            <div class="flex-1 px-3 py-4 space-y-1">
                {link("/", "Overview")}
                {link("/streams", "Streams")}
                {link("/sources", "Sources")}
                {link("/sinks", "Sinks")}
                {link("/routes", "Routes")}
                {link("/processors", "Processors")}
                {link("/jobs", "Jobs")}
                {link("/workers", "Workers")}
                {link("/audit", "Audit log")}
                <div class="relative">
                    {link("/approvals", "Approvals")}
                    {(me.pending_approvals > 0).then(|| view! {
                        <span data-testid="approvals-count" class="absolute right-2 top-2 rounded-full bg-amber-500 px-2 text-xs font-semibold text-slate-900">
                            {me.pending_approvals}
                        </span>
                    })}
                </div>
                {link("/tokens", "API tokens")}
                {is_admin.then(|| link("/admin", "Teams & users"))}
            </div>
            <div class="px-5 py-4 border-t border-slate-800 text-sm">
                <p class="font-medium text-white" data-testid="whoami">{me.username.clone()}</p>
                <p class="text-xs text-slate-400">{format!("{} · {}", me.role, me.teams.join(", "))}</p>
                <ActionForm action=logout attr:class="mt-2">
                    <button type="submit" class="text-xs text-slate-300 hover:text-white underline">
                        "Sign out"
                    </button>
                </ActionForm>
            </div>
        </nav>
    }
}

/// The signed-in user, provided by [`Shell`].
pub fn use_me() -> Option<Me> {
    use_context::<Me>()
}

/// True when the signed-in user may change objects of some team (editors there, and admins).
pub fn can_edit() -> bool {
    use_me().is_some_and(|m| !m.writable_teams.is_empty())
}

/// A page title with optional actions on the right.
#[component]
pub fn PageHeader(
    #[prop(into)] title: String,
    #[prop(optional, into)] subtitle: String,
    children: Children,
) -> impl IntoView {
    view! {
        <div class="flex items-start justify-between gap-4 mb-6">
            <div>
                <h1 class="text-2xl font-semibold tracking-tight">{title}</h1>
                {(!subtitle.is_empty()).then(|| view! { <p class="mt-1 text-sm text-slate-500">{subtitle}</p> })}
            </div>
            <div class="flex gap-2">{children()}</div>
        </div>
    }
}

pub const BUTTON: &str = "inline-flex items-center rounded-md bg-indigo-600 px-3 py-2 text-sm font-semibold text-white shadow-sm hover:bg-indigo-500 focus:outline-hidden focus:ring-2 focus:ring-indigo-500 disabled:opacity-50";
pub const BUTTON_SECONDARY: &str = "inline-flex items-center rounded-md bg-white px-3 py-2 text-sm font-semibold text-slate-700 shadow-sm border border-slate-300 hover:bg-slate-50";
pub const BUTTON_DANGER: &str = "inline-flex items-center rounded-md bg-red-600 px-3 py-2 text-sm font-semibold text-white shadow-sm hover:bg-red-500";
pub const INPUT: &str = "mt-1 block w-full rounded-md border border-slate-300 bg-white px-3 py-2 text-sm shadow-sm focus:border-indigo-500 focus:outline-hidden focus:ring-1 focus:ring-indigo-500";
pub const CARD: &str = "rounded-lg border border-slate-200 bg-white shadow-sm";
pub const TH: &str = "px-4 py-2 text-left text-xs font-semibold uppercase tracking-wide text-slate-500";
pub const TD: &str = "px-4 py-2 text-sm";
pub const NAV_ACTIVE: &str = "block rounded-md px-3 py-2 text-sm font-medium bg-slate-800 text-white";
pub const NAV_IDLE: &str =
    "block rounded-md px-3 py-2 text-sm font-medium text-slate-300 hover:bg-slate-800 hover:text-white";
pub const BADGE_CREATE: &str = "rounded-sm bg-green-100 px-2 py-0.5 text-xs font-medium text-green-800";
pub const BADGE_UPDATE: &str = "rounded-sm bg-blue-100 px-2 py-0.5 text-xs font-medium text-blue-800";
pub const BADGE_DELETE: &str = "rounded-sm bg-red-100 px-2 py-0.5 text-xs font-medium text-red-800";

/// The field errors of the last submission of a form, for [`Field`].
pub fn field_errors<T, S>(value: S) -> Signal<Option<ValidationErrors>>
where
    T: 'static,
    S: With<Value = Option<Result<T, AppError>>> + Send + Sync + 'static,
{
    Signal::derive(move || value.with(|v| v.as_ref().and_then(|r| r.as_ref().err()).and_then(|e| e.fields().cloned())))
}

/// The error of the last submission of a form, for [`FormStatus`].
pub fn last_error<T, S>(value: S) -> Signal<Option<AppError>>
where
    T: 'static,
    S: With<Value = Option<Result<T, AppError>>> + Send + Sync + 'static,
{
    Signal::derive(move || value.with(|v| v.as_ref().and_then(|r| r.as_ref().err()).cloned()))
}

/// Messages for `key`, and for nested keys under it (`settings.url`, `keep[2]`).
fn messages_for(errors: &Option<ValidationErrors>, key: &str) -> Vec<String> {
    errors
        .iter()
        .flat_map(|v| v.0.iter())
        .filter(|e| {
            e.field == key || e.field.starts_with(&format!("{key}.")) || e.field.starts_with(&format!("{key}["))
        })
        .map(|e| if e.field == key { e.message.clone() } else { format!("{}: {}", e.field, e.message) })
        .collect()
}

/// A labelled input (or textarea, or select) with its error shown beneath it.
#[component]
pub fn Field(
    label: &'static str,
    name: &'static str,
    #[prop(into, optional)] value: String,
    #[prop(optional, into)] help: String,
    /// The validation field this input reports (defaults to `name`).
    #[prop(optional)]
    error_key: &'static str,
    errors: Signal<Option<ValidationErrors>>,
    /// `text` (default), `number`, `password`, `textarea`, or `select:a,b,c`.
    #[prop(optional)]
    kind: &'static str,
    #[prop(optional)] required: bool,
    #[prop(optional)] readonly: bool,
) -> impl IntoView {
    let key = if error_key.is_empty() { name } else { error_key };
    let msgs = move || errors.with(|e| messages_for(e, key));
    let invalid = move || !msgs().is_empty();
    let id = format!("f-{name}");
    let input = match kind {
        "textarea" => view! {
            <textarea id=id.clone() name=name rows="6" class=format!("{INPUT} font-mono") aria-invalid=move || invalid().to_string() readonly=readonly>
                {value}
            </textarea>
        }
        .into_any(),
        k if k.starts_with("select:") => {
            let options: Vec<&'static str> = k["select:".len()..].split(',').collect();
            view! {
                <select id=id.clone() name=name class=INPUT>
                    {options
                        .into_iter()
                        .map(|o| {
                            let selected = o == value;
                            view! { <option value=o selected=selected>{o}</option> }
                        })
                        .collect_view()}
                </select>
            }
            .into_any()
        }
        k => view! {
            <input
                id=id.clone()
                name=name
                type=if k.is_empty() { "text" } else { k }
                value=value
                class=INPUT
                required=required
                readonly=readonly
                aria-invalid=move || invalid().to_string()
            />
        }
        .into_any(),
    };
    view! {
        <div>
            <label for=id class="block text-sm font-medium text-slate-700">{label}</label>
            {input}
            {(!help.is_empty()).then(|| view! { <p class="mt-1 text-xs text-slate-500">{help}</p> })}
            <For each=msgs key=|m| m.clone() let:m>
                <p class="mt-1 text-sm text-red-600" data-testid=format!("error-{name}")>{m}</p>
            </For>
        </div>
    }
}

/// A banner for the outcome of a submission that is not about one field.
#[component]
pub fn FormStatus(error: Signal<Option<AppError>>) -> impl IntoView {
    move || {
        error.get().map(|e| match e {
            AppError::PendingApproval { id, .. } => view! {
                <div role="status" data-testid="pending-approval" class="mb-4 rounded-md border border-amber-200 bg-amber-50 px-4 py-3 text-sm text-amber-800">
                    {e.to_string()}" "
                    <a class="font-medium underline" href=format!("/approvals/{id}")>"Follow the request"</a>
                </div>
            }
            .into_any(),
            e => view! {
                <div role="alert" class="mb-4 rounded-md border border-red-200 bg-red-50 px-4 py-3 text-sm text-red-700">
                    {e.to_string()}
                </div>
            }
            .into_any(),
        })
    }
}

/// A token just created by `value`'s action, shown once (its hash is all the server keeps).
#[component]
pub fn NewSecret<S>(value: S, test_id: &'static str) -> impl IntoView
where
    S: With<Value = Option<Result<String, AppError>>> + Send + Sync + 'static,
{
    move || {
        value.with(|v| v.as_ref().and_then(|r| r.as_ref().ok()).cloned()).map(|token| {
            view! {
                <div role="status" class="mb-4 rounded-md border border-green-200 bg-green-50 p-4 text-sm">
                    <p class="font-medium text-green-800">"Copy this token now; it will not be shown again."</p>
                    <code class="mt-2 block break-all font-mono text-green-900" data-testid=test_id>{token}</code>
                </div>
            }
        })
    }
}

/// An error from loading a page's data.
#[component]
pub fn LoadError(error: AppError) -> impl IntoView {
    match error {
        AppError::Unauthenticated => view! { <Redirect path="/login"/> }.into_any(),
        e => view! {
            <div role="alert" class="rounded-md border border-red-200 bg-red-50 px-4 py-3 text-sm text-red-700">
                {e.to_string()}
            </div>
        }
        .into_any(),
    }
}

/// A centred message for an empty list, with a call to action.
#[component]
pub fn EmptyState(#[prop(into)] title: String, #[prop(into)] body: String, children: Children) -> impl IntoView {
    view! {
        <div class=format!("{CARD} px-6 py-12 text-center")>
            <p class="text-base font-medium text-slate-800">{title}</p>
            <p class="mt-1 text-sm text-slate-500">{body}</p>
            <div class="mt-4">{children()}</div>
        </div>
    }
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC` (no time zone database needed).
/// A job's latest errors, newest first; an error caused by one event shows that event.
#[component]
pub fn RecentErrors(errors: Vec<RecentError>) -> impl IntoView {
    if errors.is_empty() {
        return view! { <p class="px-4 py-3 text-sm text-slate-500">"No errors since the job started."</p> }.into_any();
    }
    view! {
        <ul class="divide-y divide-slate-100 text-sm" data-testid="job-errors">
            {errors.into_iter().rev().map(|e| view! {
                <li class="px-4 py-2">
                    <div class="flex gap-3">
                        <span class="shrink-0 tabular-nums text-slate-500">{format_time(e.at)}</span>
                        <span class="font-mono text-xs">{e.message}</span>
                    </div>
                    {e.sample.map(|s| view! {
                        <details class="mt-1">
                            <summary class="cursor-pointer text-xs text-slate-500">"The event"</summary>
                            <pre class="mt-1 overflow-x-auto rounded-md bg-slate-50 p-2 font-mono text-xs" data-testid="error-sample">{s}</pre>
                        </details>
                    })}
                </li>
            }).collect_view()}
        </ul>
    }
    .into_any()
}

/// Reads `YYYY-MM-DD HH:MM[:SS]` (or with a `T`), in UTC, as ms since the epoch: the inverse
/// of [`format_time`] (Howard Hinnant's days-from-civil).
pub fn parse_utc(s: &str) -> Option<i64> {
    let s = s.trim().trim_end_matches(" UTC");
    let (date, clock) = s.split_once(['T', ' '])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut c = clock.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, sec) = (c.next()??, c.next()??, c.next().unwrap_or(Some(0))?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec > 59 {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400) + h * 3600 + min * 60 + sec) * 1000)
}

pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = keystone_control::time::civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A coloured badge for a revision's operation.
#[component]
pub fn OpBadge(op: keystone_control::Op) -> impl IntoView {
    let class = match op {
        keystone_control::Op::Create => BADGE_CREATE,
        keystone_control::Op::Update => BADGE_UPDATE,
        keystone_control::Op::Delete => BADGE_DELETE,
    };
    view! { <span class=class>{op.as_str()}</span> }
}

/// A field-level diff as a table.
#[component]
pub fn DiffTable(changes: Vec<Change>) -> impl IntoView {
    if changes.is_empty() {
        return view! { <p class="text-sm text-slate-500">"No differences."</p> }.into_any();
    }
    view! {
        <table class="min-w-full divide-y divide-slate-200" data-testid="diff">
            <thead class="bg-slate-50">
                <tr>
                    <th class=TH>"Field"</th>
                    <th class=TH>"Before"</th>
                    <th class=TH>"After"</th>
                </tr>
            </thead>
            <tbody class="divide-y divide-slate-100 font-mono">
                {changes
                    .into_iter()
                    .map(|c| {
                        view! {
                            <tr>
                                <td class=TD>{c.path.clone()}</td>
                                <td class=format!("{TD} text-red-700 bg-red-50 diff-before")>{show(&c.before)}</td>
                                <td class=format!("{TD} text-green-800 bg-green-50")>{show(&c.after)}</td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
    .into_any()
}

/// An object's revision history with a GET form to compare any two versions (works without
/// JavaScript: the choice travels in the query string).
#[component]
pub fn History(revisions: Vec<Revision>, from: Option<i64>, to: Option<i64>) -> impl IntoView {
    let latest = revisions.last().map_or(1, |r| r.version);
    let to = to.unwrap_or(latest);
    let from = from.unwrap_or((to - 1).max(1));
    view! {
        <form method="get" class=format!("{CARD} overflow-hidden")>
            <table class="min-w-full divide-y divide-slate-200" data-testid="history">
                <thead class="bg-slate-50">
                    <tr>
                        <th class=TH>"From"</th>
                        <th class=TH>"To"</th>
                        <th class=TH>"Version"</th>
                        <th class=TH>"Change"</th>
                        <th class=TH>"Author"</th>
                        <th class=TH>"When"</th>
                        <th class=TH>"Reason"</th>
                    </tr>
                </thead>
                <tbody class="divide-y divide-slate-100">
                    {revisions
                        .into_iter()
                        .rev()
                        .map(|r| {
                            view! {
                                <tr>
                                    <td class=TD><input type="radio" name="from" value=r.version checked=r.version == from/></td>
                                    <td class=TD><input type="radio" name="to" value=r.version checked=r.version == to/></td>
                                    <td class=TD>{format!("v{}", r.version)}</td>
                                    <td class=TD><OpBadge op=r.op/></td>
                                    <td class=TD>{r.author.clone()}</td>
                                    <td class=format!("{TD} text-slate-500 whitespace-nowrap")>{format_time(r.created_at)}</td>
                                    <td class=format!("{TD} text-slate-600")>{r.reason.clone()}</td>
                                </tr>
                            }
                        })
                        .collect_view()}
                </tbody>
            </table>
            <div class="px-4 py-3 bg-slate-50 border-t border-slate-200">
                <button type="submit" class=BUTTON_SECONDARY>"Compare selected versions"</button>
            </div>
        </form>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_epoch_milliseconds_as_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_time(1_795_549_523_999), "2026-11-24 19:45:23 UTC");
    }

    #[test]
    fn utc_times_read_back_what_they_show() {
        for ms in [0, 951_782_400_000, 1_795_549_523_000, 4_102_444_800_000] {
            assert_eq!(parse_utc(&format_time(ms)), Some(ms), "{}", format_time(ms));
        }
        assert_eq!(parse_utc("2026-11-24T19:45"), Some(1_795_549_500_000));
        assert_eq!(parse_utc("2026-13-01 00:00"), None);
        assert_eq!(parse_utc("yesterday"), None);
    }

    #[test]
    fn nested_field_errors_show_under_their_input() {
        let mut v = ValidationErrors::default();
        v.add("settings.url", "is required");
        v.add("partitions", "too many");
        let e = Some(v);
        assert_eq!(messages_for(&e, "settings"), ["settings.url: is required"]);
        assert_eq!(messages_for(&e, "partitions"), ["too many"]);
        assert!(messages_for(&e, "part").is_empty());
    }
}
