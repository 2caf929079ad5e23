//! Routes: a stream's events, filtered and projected, delivered to a sink.

use super::objects::*;
use crate::components::*;
use crate::error::AppError;
use keystone_control::{Kind, Object, RouteSpec};
use leptos::prelude::*;

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
    batch_size: String,
    max_latency_ms: String,
    delivery_on_redeploy: String,
    ordering: String,
    config: String,
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
        projection: Projection { keep: split_list(&keep), drop: split_list(&drop), rename },
        batch_size,
        max_latency_ms,
        delivery_on_redeploy: delivery,
        ordering: order,
        config,
    };
    let (store, who) = crate::state::caller().await?;
    let goal = Goal::new(&store, &who);
    let decl = Declaration::Route(spec);
    match parse_version(&version) {
        None => goal.create(&team, &name, decl, &reason).await?,
        Some(v) => goal.update(&team, &name, decl, &reason, Some(v)).await?,
    };
    leptos_axum::redirect(&format!("/routes/{team}/{name}"));
    Ok(())
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
    view! { <ObjectDetailView kind=Kind::Route/> }
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
            <Field label="Reason for this change" name="reason" errors/>
            <button type="submit" class=BUTTON>"Save route"</button>
        </ActionForm>
    }
    .into_any()
}
