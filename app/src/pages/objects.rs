//! What every kind of goal-state object shares in the console: the list, the detail page with
//! its revision history and diff, and deletion. Kind-specific pages supply the columns and form.

use crate::components::*;
use crate::error::AppError;
use keystone_control::diff::Change;
use keystone_control::{Kind, Object, Revision};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::{use_params_map, use_query_map};
use serde::{Deserialize, Serialize};

#[server]
pub async fn list_objects(kind: Kind) -> Result<Vec<Object>, AppError> {
    let (store, who) = crate::state::caller().await?;
    Ok(keystone_control::goal::Goal::new(&store, &who).list(kind).await?)
}

/// One object with its history and the diff between two of its versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectDetailData {
    pub object: Object,
    pub history: Vec<Revision>,
    pub from: i64,
    pub to: i64,
    pub diff: Vec<Change>,
}

#[server]
pub async fn object_detail(
    kind: Kind,
    team: String,
    name: String,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<ObjectDetailData, AppError> {
    let (store, who) = crate::state::caller().await?;
    let goal = keystone_control::goal::Goal::new(&store, &who);
    let object = goal.get(kind, &team, &name).await?;
    let history = goal.history(kind, &team, &name).await?;
    let to = to.unwrap_or(object.version).clamp(1, object.version);
    let from = from.unwrap_or(to - 1).clamp(1, object.version);
    let diff = if from == to { Vec::new() } else { goal.diff(&object.id, from, to).await? };
    Ok(ObjectDetailData { object, history, from, to, diff })
}

/// Deletes an object (a tombstone revision) and returns to its list.
#[server]
pub async fn delete_object(
    kind: Kind,
    team: String,
    name: String,
    version: i64,
    reason: String,
) -> Result<(), AppError> {
    let (store, who) = crate::state::caller().await?;
    keystone_control::goal::Goal::new(&store, &who).delete(kind, &team, &name, &reason, Some(version)).await?;
    leptos_axum::redirect(&format!("/{}", kind.plural()));
    Ok(())
}

fn title_case(kind: Kind) -> &'static str {
    match kind {
        Kind::Team => "Team",
        Kind::Stream => "Stream",
        Kind::Sink => "Sink",
        Kind::Route => "Route",
        Kind::Processor => "Processor",
        Kind::Source => "Source",
        Kind::Policy => "Policy",
    }
}

/// The list page of one kind. `summary` gives the kind-specific columns.
#[component]
pub fn ObjectList(
    kind: Kind,
    subtitle: &'static str,
    headers: &'static [&'static str],
    summary: fn(&Object) -> Vec<String>,
) -> impl IntoView {
    let plural = kind.plural();
    let data = Resource::new(move || kind, list_objects);
    let new_href = format!("/{plural}/new");
    let title = format!("{}s", title_case(kind));
    view! {
        <Title text=format!("{title} · Keystone")/>
        <PageHeader title=title subtitle=subtitle>
            {can_edit().then(|| view! { <a href=new_href.clone() class=BUTTON>{format!("New {kind}")}</a> })}
        </PageHeader>
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <LoadError error=e/> }.into_any(),
                    Ok(items) if items.is_empty() => view! {
                        <EmptyState title=format!("No {plural} yet") body=format!("Declare the first {kind} of your team.")>
                            {can_edit().then(|| view! { <a href=format!("/{plural}/new") class=BUTTON>{format!("New {kind}")}</a> })}
                        </EmptyState>
                    }
                        .into_any(),
                    Ok(items) => view! {
                        <div class=format!("{CARD} overflow-hidden")>
                            <table class="min-w-full divide-y divide-slate-200" data-testid=format!("{plural}-table")>
                                <thead class="bg-slate-50">
                                    <tr>
                                        <th class=TH>"Name"</th>
                                        <th class=TH>"Team"</th>
                                        {headers.iter().map(|h| view! { <th class=TH>{*h}</th> }).collect_view()}
                                        <th class=TH>"Version"</th>
                                        <th class=TH>"Last change"</th>
                                    </tr>
                                </thead>
                                <tbody class="divide-y divide-slate-100">
                                    {items
                                        .into_iter()
                                        .map(|o| {
                                            let href = format!("/{plural}/{}/{}", o.team, o.name);
                                            view! {
                                                <tr class="hover:bg-slate-50">
                                                    <td class=format!("{TD} font-medium")>
                                                        <a href=href class="text-indigo-700 hover:underline">{o.name.clone()}</a>
                                                    </td>
                                                    <td class=TD>{o.team.clone()}</td>
                                                    {summary(&o).into_iter().map(|c| view! { <td class=TD>{c}</td> }).collect_view()}
                                                    <td class=TD>{format!("v{}", o.version)}</td>
                                                    <td class=format!("{TD} text-slate-500")>
                                                        {format!("{} · {}", o.updated_by, format_time(o.updated_at))}
                                                    </td>
                                                </tr>
                                            }
                                        })
                                        .collect_view()}
                                </tbody>
                            </table>
                        </div>
                    }
                        .into_any(),
                }
            })}
        </Suspense>
    }
}

/// The spec as rows of dotted field and value.
#[component]
fn SpecTable(spec: serde_json::Value) -> impl IntoView {
    // Every leaf of the spec is a change from nothing; the empty root itself is not a field.
    let rows: Vec<_> = keystone_control::diff::diff(&serde_json::json!({}), &spec)
        .into_iter()
        .filter(|c| !c.path.is_empty())
        .collect();
    view! {
        <dl class="divide-y divide-slate-100" data-testid="spec">
            {rows
                .into_iter()
                .map(|c| {
                    view! {
                        <div class="grid grid-cols-3 gap-4 px-4 py-2">
                            <dt class="text-sm font-medium text-slate-500">{c.path.clone()}</dt>
                            <dd class="col-span-2 text-sm font-mono">{keystone_control::diff::show(&c.after)}</dd>
                        </div>
                    }
                })
                .collect_view()}
        </dl>
    }
}

/// The detail page of one object: current spec, history, diff, edit and delete.
#[component]
pub fn ObjectDetailView(kind: Kind) -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let data = Resource::new(
        move || {
            let p = params.read();
            let q = query.read();
            (
                p.get("team").unwrap_or_default(),
                p.get("name").unwrap_or_default(),
                q.get("from").and_then(|v| v.parse().ok()),
                q.get("to").and_then(|v| v.parse().ok()),
            )
        },
        move |(team, name, from, to)| object_detail(kind, team, name, from, to),
    );
    let delete = ServerAction::<DeleteObject>::new();
    view! {
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match data.await {
                    Err(e) => view! { <LoadError error=e/> }.into_any(),
                    Ok(d) => {
                        let o = d.object.clone();
                        let plural = kind.plural();
                        let edit = format!("/{plural}/{}/{}/edit", o.team, o.name);
                        view! {
                            <Title text=format!("{} · Keystone", o.name)/>
                            <PageHeader title=o.name.clone() subtitle=format!("{} · team {} · version {}", title_case(kind), o.team, o.version)>
                                {can_edit().then(|| view! { <a href=edit.clone() class=BUTTON>"Edit"</a> })}
                            </PageHeader>
                            <div class="grid gap-6 lg:grid-cols-2">
                                <section class=CARD>
                                    <h2 class="px-4 py-3 border-b border-slate-200 font-medium">"Current goal"</h2>
                                    <SpecTable spec=o.spec.clone()/>
                                </section>
                                <section class=CARD>
                                    <h2 class="px-4 py-3 border-b border-slate-200 font-medium">
                                        {format!("Changes from v{} to v{}", d.from, d.to)}
                                    </h2>
                                    <DiffTable changes=d.diff.clone()/>
                                </section>
                            </div>
                            <h2 class="mt-8 mb-3 text-lg font-medium">"History"</h2>
                            <History revisions=d.history.clone() from=Some(d.from) to=Some(d.to)/>
                            {can_edit().then(|| view! {
                                <section class="mt-8 rounded-lg border border-red-200 bg-white p-4">
                                    <h2 class="font-medium text-red-700">{format!("Delete this {kind}")}</h2>
                                    <p class="text-sm text-slate-500">"Deleting writes a tombstone revision: the history stays."</p>
                                    <FormStatus error=last_error(delete.value())/>
                                    <ActionForm action=delete attr:class="mt-3 flex items-end gap-3">
                                        <input type="hidden" name="kind" value=kind.as_str()/>
                                        <input type="hidden" name="team" value=o.team.clone()/>
                                        <input type="hidden" name="name" value=o.name.clone()/>
                                        <input type="hidden" name="version" value=o.version/>
                                        <div class="flex-1">
                                            <label for="delete-reason" class="block text-sm font-medium text-slate-700">"Reason"</label>
                                            <input id="delete-reason" name="reason" class=INPUT/>
                                        </div>
                                        <button type="submit" class=BUTTON_DANGER>"Delete"</button>
                                    </ActionForm>
                                </section>
                            })}
                        }
                            .into_any()
                    }
                }
            })}
        </Suspense>
    }
}

/// The object a form edits (`None` on a `/new` page) and the teams the user may write to.
#[derive(Clone)]
pub struct FormTarget {
    pub existing: Option<Object>,
    pub teams: Vec<String>,
}

impl FormTarget {
    /// The current spec, typed, when editing.
    pub fn spec<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        self.existing.as_ref().and_then(|o| o.spec_as().ok())
    }
}

pub const FORM: &str = "rounded-lg border border-slate-200 bg-white shadow-sm p-6 space-y-5 max-w-2xl";

/// The frame of every create/edit page: loads the object named in the URL (if any), titles the
/// page, and renders the kind's `form` for it.
#[component]
pub fn ObjectForm(kind: Kind, subtitle: &'static str, form: fn(FormTarget) -> AnyView) -> impl IntoView {
    let params = use_params_map();
    let current = Resource::new(
        move || (params.read().get("team"), params.read().get("name")),
        move |(team, name)| async move {
            match (team, name) {
                (Some(team), Some(name)) => object_detail(kind, team, name, None, None).await.map(|d| Some(d.object)),
                _ => Ok(None),
            }
        },
    );
    let teams = use_me().map(|m| m.writable_teams).unwrap_or_default();
    view! {
        <Suspense fallback=|| ()>
            {move || {
                let teams = teams.clone();
                Suspend::new(async move {
                    match current.await {
                        Err(e) => view! { <LoadError error=e/> }.into_any(),
                        Ok(existing) => {
                            let title = existing
                                .as_ref()
                                .map_or(format!("New {kind}"), |o| format!("Edit {kind} {}", o.name));
                            view! {
                                <Title text=format!("{title} · Keystone")/>
                                <PageHeader title=title subtitle=subtitle><span></span></PageHeader>
                                {form(FormTarget { existing, teams })}
                            }
                                .into_any()
                        }
                    }
                })
            }}
        </Suspense>
    }
}

/// The fields every form starts with: the version it was loaded at, the team and the name (both
/// fixed when editing).
#[component]
pub fn IdentityFields(target: FormTarget, errors: Signal<Option<keystone_control::ValidationErrors>>) -> impl IntoView {
    let o = target.existing.as_ref();
    let is_edit = o.is_some();
    let version = o.map(|o| o.version.to_string()).unwrap_or_default();
    let team = o.map(|o| o.team.clone()).unwrap_or_default();
    let name = o.map(|o| o.name.clone()).unwrap_or_default();
    let team_field = if is_edit {
        view! {
            <div>
                <input type="hidden" name="team" value=team.clone()/>
                <p class="text-sm text-slate-600">"Team: " <span class="font-medium">{team}</span></p>
            </div>
        }
        .into_any()
    } else {
        let msg = move || errors.with(|e| e.as_ref().and_then(|e| e.for_field("team").map(str::to_owned)));
        view! {
            <div>
                <label for="f-team" class="block text-sm font-medium text-slate-700">"Team"</label>
                <select id="f-team" name="team" class=INPUT>
                    {target.teams.into_iter().map(|t| view! { <option value=t.clone()>{t.clone()}</option> }).collect_view()}
                </select>
                {move || msg().map(|m| view! { <p class="mt-1 text-sm text-red-600" data-testid="error-team">{m}</p> })}
            </div>
        }
        .into_any()
    };
    view! {
        <input type="hidden" name="version" value=version/>
        {team_field}
        <Field label="Name" name="name" value=name errors required=true readonly=is_edit
            help="Lowercase letters, digits and dashes."/>
    }
}

/// Splits a comma- or newline-separated form field into trimmed, non-empty items.
pub fn split_list(s: &str) -> Vec<String> {
    s.split([',', '\n']).map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect()
}

/// Parses `key=value` lines of a form field; `field` names the field in errors.
pub fn parse_pairs(
    s: &str,
    field: &str,
    errors: &mut keystone_control::ValidationErrors,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for (i, line) in s.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match line.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            _ => errors.add(field, format!("line {}: expected key=value", i + 1)),
        }
    }
    out
}

/// Parses a whole-number form field; `field` names it in errors.
pub fn parse_number<T: std::str::FromStr>(
    s: &str,
    field: &str,
    errors: &mut keystone_control::ValidationErrors,
) -> Option<T> {
    match s.trim().parse() {
        Ok(v) => Some(v),
        Err(_) => {
            errors.add(field, format!("must be a whole number (got {:?})", s.trim()));
            None
        }
    }
}

/// The version a form was loaded at: empty for a create.
pub fn parse_version(s: &str) -> Option<i64> {
    s.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_helpers_report_the_line_and_field() {
        assert_eq!(split_list(" a, b\nc,,"), ["a", "b", "c"]);
        let mut e = keystone_control::ValidationErrors::default();
        let pairs = parse_pairs("a = 1\n\nbroken\nb=2", "config", &mut e);
        assert_eq!(pairs.len(), 2);
        assert_eq!(e.for_field("config"), Some("line 3: expected key=value"));
        assert_eq!(parse_number::<u32>("x", "partitions", &mut e), None);
        assert!(e.for_field("partitions").unwrap().contains("whole number"));
    }
}
