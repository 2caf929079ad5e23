//! Streams: one event type each, carried by one topic.

use super::objects::*;
use crate::components::*;
use crate::error::AppError;
use keystone_control::{Kind, Object, StreamSpec};
use leptos::prelude::*;
use leptos_meta::Title;

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
    reason: String,
) -> Result<(), AppError> {
    use keystone_control::goal::{Declaration, Goal};
    let mut e = keystone_control::ValidationErrors::default();
    let partitions = parse_number(&partitions, "partitions", &mut e);
    let retention_hours = parse_number(&retention_hours, "retention_hours", &mut e);
    let retention_bytes =
        if retention_bytes.trim().is_empty() { None } else { parse_number(&retention_bytes, "retention_bytes", &mut e) };
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
    view! { <ObjectDetailView kind=Kind::Stream/> }
}

#[component]
pub fn StreamFormPage() -> impl IntoView {
    let current = editing(Kind::Stream);
    let save = ServerAction::<SaveStream>::new();
    let errors = field_errors(save.value());
    let teams = use_me().map(|m| m.writable_teams).unwrap_or_default();
    view! {
        <Suspense fallback=|| ()>
            {move || {
                let teams = teams.clone();
                Suspend::new(async move {
                    let existing = match current.await {
                        Err(e) => return view! { <LoadError error=e/> }.into_any(),
                        Ok(o) => o,
                    };
                    let spec = existing.as_ref().and_then(|o| o.spec_as::<StreamSpec>().ok());
                    let title = existing.as_ref().map_or("New stream".to_owned(), |o| format!("Edit stream {}", o.name));
                    let (team, name, version) = existing
                        .as_ref()
                        .map_or((String::new(), String::new(), String::new()), |o| (o.team.clone(), o.name.clone(), o.version.to_string()));
                    let is_edit = existing.is_some();
                    view! {
                        <Title text=format!("{title} · Keystone")/>
                        <PageHeader title=title subtitle="Every save writes a new revision."><span></span></PageHeader>
                        <FormStatus error=last_error(save.value())/>
                        <ActionForm action=save attr:class=format!("{CARD} p-6 space-y-5 max-w-2xl")>
                            <input type="hidden" name="version" value=version/>
                            <TeamField teams=teams.clone() team=team errors is_edit/>
                            <Field label="Name" name="name" value=name errors required=true readonly=is_edit
                                help="Lowercase letters, digits and dashes; it names the topic."/>
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
                            <Field label="Key field" name="key_field" errors help="Optional dotted path; events with the same key keep their order."
                                value=spec.as_ref().and_then(|s| s.key_field.clone()).unwrap_or_default()/>
                            <Field label="JSON Schema" name="schema" kind="textarea" errors help="Optional; every event must satisfy it."
                                value=spec.as_ref().and_then(|s| s.schema.as_ref()).map(|v| serde_json::to_string_pretty(v).unwrap_or_default()).unwrap_or_default()/>
                            <Field label="Reason for this change" name="reason" errors help="Shown in the history and the audit log."/>
                            <button type="submit" class=BUTTON>"Save stream"</button>
                        </ActionForm>
                    }
                        .into_any()
                })
            }}
        </Suspense>
    }
}

/// The owning team: a choice on create, fixed on edit.
#[component]
pub fn TeamField(teams: Vec<String>, team: String, errors: Signal<Option<keystone_control::ValidationErrors>>, is_edit: bool) -> impl IntoView {
    if is_edit {
        return view! {
            <div>
                <input type="hidden" name="team" value=team.clone()/>
                <p class="text-sm text-slate-600">"Team: " <span class="font-medium">{team}</span></p>
            </div>
        }
        .into_any();
    }
    let msgs = move || errors.with(|e| e.as_ref().and_then(|e| e.for_field("team").map(str::to_owned)));
    view! {
        <div>
            <label for="f-team" class="block text-sm font-medium text-slate-700">"Team"</label>
            <select id="f-team" name="team" class=INPUT>
                {teams.into_iter().map(|t| view! { <option value=t.clone()>{t.clone()}</option> }).collect_view()}
            </select>
            {move || msgs().map(|m| view! { <p class="mt-1 text-sm text-red-600" data-testid="error-team">{m}</p> })}
        </div>
    }
    .into_any()
}
