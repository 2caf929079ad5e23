//! Streams: one event type each, carried by one topic.

use super::objects::*;
use crate::components::*;
use crate::error::AppError;
use keystone_control::{Kind, Object, StreamSpec};
use leptos::prelude::*;

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
    let retention_bytes = if retention_bytes.trim().is_empty() {
        None
    } else {
        parse_number(&retention_bytes, "retention_bytes", &mut e)
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
            <Field label="Key field" name="key_field" errors help="Optional dotted path; events with the same key keep their order."
                value=spec.as_ref().and_then(|s| s.key_field.clone()).unwrap_or_default()/>
            <Field label="JSON Schema" name="schema" kind="textarea" errors help="Optional; every event must satisfy it."
                value=spec.as_ref().and_then(|s| s.schema.as_ref()).map(|v| serde_json::to_string_pretty(v).unwrap_or_default()).unwrap_or_default()/>
            <Field label="Reason for this change" name="reason" errors help="Shown in the history and the audit log."/>
            <button type="submit" class=BUTTON>"Save stream"</button>
        </ActionForm>
    }
    .into_any()
}
