//! Sources: change data capture from PostgreSQL tables into streams. The database URL is a
//! secret, write-only; the detail page shows the source job's phase, its snapshot and the WAL
//! its replication slot holds back on the database.

use super::objects::*;
use crate::components::*;
use crate::error::AppError;
use keystone_control::{Kind, Object, SourceSpec};
use leptos::prelude::*;
use leptos_router::hooks::use_params_map;

/// Creates (empty `version`) or updates a source. A blank URL keeps the stored one. `tables`
/// holds one `schema.table -> stream` per line.
#[server]
pub async fn save_source(
    team: String,
    name: String,
    version: String,
    description: String,
    tables: String,
    secret_url: String,
    reason: String,
) -> Result<(), AppError> {
    use keystone_control::goal::{Declaration, Goal};
    use keystone_control::{DesiredState, Name, SourceInput, SourceKind, SourceTable, ValidationErrors};
    let mut parsed = Vec::new();
    for (i, line) in tables.lines().map(str::trim).filter(|l| !l.is_empty()).enumerate() {
        let Some((table, stream)) = line.split_once("->") else {
            return Err(
                ValidationErrors::single("tables", format!("line {}: write schema.table -> stream", i + 1)).into()
            );
        };
        let stream = Name::parse(stream.trim())
            .map_err(|e| ValidationErrors::single("tables", format!("line {}: {e}", i + 1)))?;
        parsed.push(SourceTable { table: table.trim().to_owned(), stream });
    }
    let input = SourceInput {
        kind: SourceKind::PostgresCdc,
        description: description.trim().to_owned(),
        tables: parsed,
        secrets: [("url".to_owned(), secret_url.trim().to_owned())]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect(),
        state: DesiredState::Running,
        tags: Vec::new(),
    };
    let (store, who) = crate::state::caller().await?;
    let goal = Goal::new(&store, &who);
    let decl = Declaration::Source(input);
    match parse_version(&version) {
        None => goal.create(&team, &name, decl, &reason).await?,
        Some(v) => goal.update(&team, &name, decl, &reason, Some(v)).await?,
    };
    leptos_axum::redirect(&format!("/sources/{team}/{name}"));
    Ok(())
}

/// The source job's last recorded state.
#[server]
pub async fn source_status(team: String, name: String) -> Result<keystone_control::SourceStatus, AppError> {
    let (state, who) = crate::state::signed_in().await?;
    Ok(state.platform.ops(&who).source_status(&team, &name).await?)
}

fn summary(o: &Object) -> Vec<String> {
    match o.spec_as::<SourceSpec>() {
        Ok(s) => vec![
            s.kind.as_str().to_owned(),
            s.tables
                .iter()
                .map(|t| format!("{} → {}", t.qualified(), t.stream.as_str()))
                .collect::<Vec<_>>()
                .join(", "),
        ],
        Err(_) => vec![String::new(); 2],
    }
}

#[component]
pub fn SourcesPage() -> impl IntoView {
    view! {
        <ObjectList
            kind=Kind::Source
            subtitle="Databases whose table changes Keystone captures into streams (change data capture)."
            headers=&["Kind", "Tables → streams"]
            summary=summary
        />
    }
}

/// `1.5 MB` for a byte count.
fn bytes(n: i64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} kB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// `0/16B3748`, as PostgreSQL writes a WAL position.
fn lsn(l: u64) -> String {
    format!("{:X}/{:X}", l >> 32, l & 0xFFFF_FFFF)
}

#[component]
pub fn SourceDetailPage() -> impl IntoView {
    let params = use_params_map();
    let status = Resource::new(
        move || (params.read().get("team").unwrap_or_default(), params.read().get("name").unwrap_or_default()),
        |(team, name)| source_status(team, name),
    );
    view! {
        <ObjectDetailView kind=Kind::Source/>
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                status.await.ok().map(|s| {
                    let snapshot = match s.snapshot_lsn {
                        Some(at) => format!("{} rows, read at {}", s.snapshot_rows, lsn(at)),
                        None => format!("running: {} rows so far", s.snapshot_rows),
                    };
                    let rows = vec![
                        ("Phase", format!("{} ({})", s.phase, s.cause)),
                        ("Initial snapshot", snapshot),
                        ("Confirmed to the database", lsn(s.confirmed_lsn)),
                        ("Changes appended", s.events.to_string()),
                        ("WAL held back by the slot", s.retained_bytes.map_or("not measured yet".into(), bytes)),
                        ("Last error", s.last_error.unwrap_or_else(|| "none".into())),
                    ];
                    view! {
                        <section class=format!("mt-8 {CARD}") id="source-status">
                            <h2 class="px-4 py-3 border-b border-slate-200 font-medium">"Capture"</h2>
                            <dl class="divide-y divide-slate-100">
                                {rows.into_iter().map(|(k, v)| view! {
                                    <div class="px-4 py-2 grid grid-cols-3 gap-4 text-sm">
                                        <dt class="text-slate-500">{k}</dt>
                                        <dd class="col-span-2 break-all">{v}</dd>
                                    </div>
                                }).collect_view()}
                            </dl>
                        </section>
                    }
                })
            })}
        </Suspense>
    }
}

#[component]
pub fn SourceFormPage() -> impl IntoView {
    view! {
        <ObjectForm kind=Kind::Source subtitle="The database URL is stored apart and never shown again." form=source_form/>
    }
}

fn source_form(t: FormTarget) -> AnyView {
    let save = ServerAction::<SaveSource>::new();
    let errors = field_errors(save.value());
    let spec = t.spec::<SourceSpec>();
    let tables = spec
        .as_ref()
        .map(|s| {
            s.tables.iter().map(|t| format!("{} -> {}", t.table, t.stream.as_str())).collect::<Vec<_>>().join("\n")
        })
        .unwrap_or_default();
    let url_help = match spec.as_ref().and_then(|s| s.secrets.get("url")) {
        Some(r) => format!("Set in v{}; leave blank to keep it.", r.set_in_version),
        None => {
            "postgres://user:password@host:5432/database, a user with REPLICATION who may publish the tables.".into()
        }
    };
    view! {
        <FormStatus error=last_error(save.value())/>
        <ActionForm action=save attr:class=FORM>
            <IdentityFields target=t.clone() errors/>
            <Field label="Description" name="description" errors
                value=spec.as_ref().map(|s| s.description.clone()).unwrap_or_default()/>
            <Field label="Tables" name="tables" kind="textarea" errors value=tables
                help="One per line: schema.table -> stream (a stream of this team; every table needs a primary key)."/>
            <Field label="Database URL (secret)" name="secret_url" kind="password" error_key="secrets.url" errors
                help=url_help/>
            <Field label="Reason for this change" name="reason" errors/>
            <button type="submit" class=BUTTON>"Save source"</button>
        </ActionForm>
    }
    .into_any()
}
