//! Sinks: the managed systems routes deliver to. Secret settings are write-only.

use super::objects::*;
use crate::components::*;
use crate::error::AppError;
use keystone_control::{Kind, Object, SinkSpec};
use leptos::prelude::*;

/// Creates (empty `version`) or updates a sink. Blank secrets keep their stored value.
#[allow(clippy::too_many_arguments)]
#[server]
pub async fn save_sink(
    team: String,
    name: String,
    version: String,
    kind: String,
    description: String,
    setting_url: String,
    setting_timeout_ms: String,
    // Optional so that forms and clients from before these settings keep working.
    setting_format: Option<String>,
    setting_index: Option<String>,
    setting_path: String,
    setting_table: String,
    setting_stream: Option<String>,
    setting_file_format: Option<String>,
    setting_roll_bytes: Option<String>,
    setting_roll_seconds: Option<String>,
    setting_store_url: Option<String>,
    setting_endpoint: Option<String>,
    setting_region: Option<String>,
    secret_authorization: String,
    secret_url: String,
    secret_access_key_id: Option<String>,
    secret_secret_access_key: Option<String>,
    setting_brokers: Option<String>,
    setting_topic: Option<String>,
    setting_security_protocol: Option<String>,
    setting_sasl_mechanism: Option<String>,
    setting_sasl_username: Option<String>,
    secret_sasl_password: Option<String>,
    setting_mode: Option<String>,
    tags: Option<String>,
    reason: String,
) -> Result<(), AppError> {
    use keystone_control::goal::{Declaration, Goal};
    use keystone_control::SinkInput;
    let Some(sink_kind) = keystone_control::SinkKind::parse(&kind) else {
        return Err(keystone_control::ValidationErrors::single("kind", format!("unknown sink kind {kind:?}")).into());
    };
    let non_empty = |pairs: &[(&str, String)]| {
        pairs.iter().filter(|(_, v)| !v.trim().is_empty()).map(|(k, v)| (k.to_string(), v.trim().to_owned())).collect()
    };
    let input = SinkInput {
        kind: sink_kind,
        description: description.trim().to_owned(),
        settings: non_empty(&[
            ("url", setting_url),
            ("timeout_ms", setting_timeout_ms),
            // The select always posts a format: keep it only where it says something (json is the
            // default, and other kinds have none), so re-saving a sink does not change its spec.
            (
                "format",
                match (sink_kind, setting_format, setting_file_format) {
                    (keystone_control::SinkKind::Http, Some(f), _) if f != "json" => f,
                    (keystone_control::SinkKind::File, _, Some(f)) if f != "ndjson" => f,
                    _ => String::new(),
                },
            ),
            ("roll_bytes", setting_roll_bytes.unwrap_or_default()),
            ("roll_seconds", setting_roll_seconds.unwrap_or_default()),
            ("store_url", setting_store_url.unwrap_or_default()),
            ("endpoint", setting_endpoint.unwrap_or_default()),
            ("region", setting_region.unwrap_or_default()),
            ("index", setting_index.unwrap_or_default()),
            ("path", setting_path),
            ("table", setting_table),
            // Insert is the default, kept implicit (the select always posts one).
            (
                "mode",
                setting_mode
                    .filter(|m| m != "insert" && sink_kind == keystone_control::SinkKind::Postgres)
                    .unwrap_or_default(),
            ),
            ("stream", setting_stream.unwrap_or_default()),
            ("brokers", setting_brokers.unwrap_or_default()),
            ("topic", setting_topic.unwrap_or_default()),
            // The select always posts a protocol: plaintext is the default, kept implicit.
            ("security_protocol", setting_security_protocol.filter(|p| p != "plaintext").unwrap_or_default()),
            ("sasl_mechanism", setting_sasl_mechanism.unwrap_or_default()),
            ("sasl_username", setting_sasl_username.unwrap_or_default()),
        ]),
        secrets: non_empty(&[
            ("authorization", secret_authorization),
            ("url", secret_url),
            ("access_key_id", secret_access_key_id.unwrap_or_default()),
            ("secret_access_key", secret_secret_access_key.unwrap_or_default()),
            ("sasl_password", secret_sasl_password.unwrap_or_default()),
        ]),
        tags: crate::pages::objects::split_list(tags.as_deref().unwrap_or_default()),
    };
    let (store, who) = crate::state::caller().await?;
    let goal = Goal::new(&store, &who);
    let decl = Declaration::Sink(input);
    match parse_version(&version) {
        None => goal.create(&team, &name, decl, &reason).await?,
        Some(v) => goal.update(&team, &name, decl, &reason, Some(v)).await?,
    };
    leptos_axum::redirect(&format!("/sinks/{team}/{name}"));
    Ok(())
}

fn summary(o: &Object) -> Vec<String> {
    match o.spec_as::<SinkSpec>() {
        Ok(s) => vec![
            s.kind.to_string(),
            s.settings
                .get("url")
                .or(s.settings.get("path"))
                .or(s.settings.get("table"))
                .or(s.settings.get("stream"))
                .or(s.settings.get("topic"))
                .cloned()
                .unwrap_or_default(),
        ],
        Err(_) => vec![String::new(); 2],
    }
}

#[component]
pub fn SinksPage() -> impl IntoView {
    view! {
        <ObjectList
            kind=Kind::Sink
            subtitle="Managed destinations: HTTP endpoints, files, PostgreSQL tables, other streams, Kafka topics."
            headers=&["Kind", "Target"]
            summary=summary
        />
    }
}

#[component]
pub fn SinkDetailPage() -> impl IntoView {
    view! { <ObjectDetailView kind=Kind::Sink/> }
}

#[component]
pub fn SinkFormPage() -> impl IntoView {
    view! { <ObjectForm kind=Kind::Sink subtitle="Secrets are stored apart and never shown again." form=sink_form/> }
}

fn sink_form(t: FormTarget) -> AnyView {
    let save = ServerAction::<SaveSink>::new();
    let errors = field_errors(save.value());
    let spec = t.spec::<SinkSpec>();
    let settings = spec.as_ref().map(|s| s.settings.clone()).unwrap_or_default();
    let setting = move |k: &str| settings.get(k).cloned().unwrap_or_default();
    let secrets = spec.as_ref().map(|s| s.secrets.clone()).unwrap_or_default();
    let secret_help = move |k: &str| match secrets.get(k) {
        Some(r) => format!("Set in v{}; leave blank to keep it.", r.set_in_version),
        None => "Not set.".to_owned(),
    };
    let kind = spec.as_ref().map_or("http", |s| s.kind.as_str()).to_owned();
    let file_format = if kind == "file" && setting("format") == "parquet" { "parquet" } else { "ndjson" }.to_owned();
    let tags = spec.as_ref().map(|s| s.tags.join(", ")).unwrap_or_default();
    view! {
        <FormStatus error=last_error(save.value())/>
        <ActionForm action=save attr:class=FORM>
            <IdentityFields target=t.clone() errors/>
            <Field label="Kind" name="kind" kind="select:http,file,postgres,stream,kafka" value=kind errors/>
            <Field label="Description" name="description" errors
                value=spec.as_ref().map(|s| s.description.clone()).unwrap_or_default()/>
            <fieldset class="rounded-md border border-slate-200 p-4 space-y-4">
                <legend class="px-1 text-sm font-medium text-slate-600">"HTTP"</legend>
                <Field label="URL" name="setting_url" error_key="settings.url" errors value=setting("url")
                    help="http:// or https:// endpoint receiving JSON batches."/>
                <Field label="Timeout (ms)" name="setting_timeout_ms" error_key="settings.timeout_ms" errors value=setting("timeout_ms")/>
                <div class="grid grid-cols-2 gap-4">
                    <Field label="Format" name="setting_format" kind="select:json,bulk" error_key="settings.format" errors
                        value=Some(setting("format")).filter(|f| !f.is_empty()).unwrap_or_else(|| "json".into())
                        help="json: a JSON array per batch. bulk: the Elasticsearch/OpenSearch _bulk API."/>
                    <Field label="Index (bulk)" name="setting_index" error_key="settings.index" errors value=setting("index")/>
                </div>
                <Field label="Authorization header (secret)" name="secret_authorization" kind="password"
                    error_key="secrets.authorization" errors help=secret_help("authorization")/>
            </fieldset>
            <fieldset class="rounded-md border border-slate-200 p-4 space-y-4">
                <legend class="px-1 text-sm font-medium text-slate-600">"File"</legend>
                <Field label="Directory" name="setting_path" error_key="settings.path" errors value=setting("path")
                    help="Relative to the data directory's sinks/ folder, or the key prefix in the bucket."/>
                <div class="grid grid-cols-3 gap-4">
                    <Field label="File format" name="setting_file_format" kind="select:ndjson,parquet"
                        error_key="settings.format" errors
                        value=file_format/>
                    <Field label="Roll at bytes" name="setting_roll_bytes" error_key="settings.roll_bytes" errors
                        value=setting("roll_bytes") help="Optional: files roll by size and age instead of by batch."/>
                    <Field label="Roll after seconds" name="setting_roll_seconds" error_key="settings.roll_seconds" errors
                        value=setting("roll_seconds")/>
                </div>
                <Field label="Object store" name="setting_store_url" error_key="settings.store_url" errors
                    value=setting("store_url") help="Optional s3://bucket of an S3-compatible store; empty for local files."/>
                <div class="grid grid-cols-2 gap-4">
                    <Field label="S3 endpoint" name="setting_endpoint" error_key="settings.endpoint" errors
                        value=setting("endpoint") help="MinIO, R2, ...; empty for AWS."/>
                    <Field label="S3 region" name="setting_region" error_key="settings.region" errors value=setting("region")/>
                    <Field label="Access key id (secret)" name="secret_access_key_id" kind="password"
                        error_key="secrets.access_key_id" errors help=secret_help("access_key_id")/>
                    <Field label="Secret access key (secret)" name="secret_secret_access_key" kind="password"
                        error_key="secrets.secret_access_key" errors help=secret_help("secret_access_key")/>
                </div>
            </fieldset>
            <fieldset class="rounded-md border border-slate-200 p-4 space-y-4">
                <legend class="px-1 text-sm font-medium text-slate-600">"PostgreSQL"</legend>
                <Field label="Table" name="setting_table" error_key="settings.table" errors value=setting("table")/>
                <Field label="How rows are written" name="setting_mode" kind="select:insert,upsert,apply_changes"
                    error_key="settings.mode" errors
                    value=Some(setting("mode")).filter(|m| !m.is_empty()).unwrap_or_else(|| "insert".into())
                    help="insert keeps a row whose event_id is there already (a redelivery writes nothing twice); upsert \
                          replaces it (a processor's updating results); apply_changes applies a CDC source's changes by \
                          primary key (the table needs a bigint _lsn column)."/>
                <Field label="Connection URL (secret)" name="secret_url" kind="password" error_key="secrets.url"
                    errors help=secret_help("url")/>
            </fieldset>
            <fieldset class="rounded-md border border-slate-200 p-4 space-y-4">
                <legend class="px-1 text-sm font-medium text-slate-600">"Stream (re-routing)"</legend>
                <Field label="Target stream" name="setting_stream" error_key="settings.stream" errors value=setting("stream")
                    help="A stream of this team, or team/stream of a team you can edit."/>
            </fieldset>
            <fieldset class="rounded-md border border-slate-200 p-4 space-y-4">
                <legend class="px-1 text-sm font-medium text-slate-600">"Kafka"</legend>
                <div class="grid grid-cols-2 gap-4">
                    <Field label="Brokers" name="setting_brokers" error_key="settings.brokers" errors value=setting("brokers")
                        help="host:port, comma-separated."/>
                    <Field label="Topic" name="setting_topic" error_key="settings.topic" errors value=setting("topic")
                        help="It must exist on that cluster."/>
                    <Field label="Security protocol" name="setting_security_protocol"
                        kind="select:plaintext,ssl,sasl_plaintext,sasl_ssl" error_key="settings.security_protocol" errors
                        value=Some(setting("security_protocol")).filter(|p| !p.is_empty()).unwrap_or_else(|| "plaintext".into())/>
                    <Field label="SASL mechanism" name="setting_sasl_mechanism" error_key="settings.sasl_mechanism" errors
                        value=setting("sasl_mechanism") help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."/>
                    <Field label="SASL user name" name="setting_sasl_username" error_key="settings.sasl_username" errors
                        value=setting("sasl_username")/>
                    <Field label="SASL password (secret)" name="secret_sasl_password" kind="password"
                        error_key="secrets.sasl_password" errors help=secret_help("sasl_password")/>
                </div>
            </fieldset>
            <Field label="Tags" name="tags" errors value=tags
                help="Optional, comma-separated labels an approval policy can match (e.g. production, critical)."/>
            <Field label="Reason for this change" name="reason" errors/>
            <button type="submit" class=BUTTON>"Save sink"</button>
        </ActionForm>
    }
    .into_any()
}
