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
/// holds one `schema.table -> stream` per line (`schema.table` alone: a stream the platform
/// creates, `<source>-<table>`).
#[server]
pub async fn save_source(
    team: String,
    name: String,
    version: String,
    description: String,
    tables: String,
    secret_url: String,
    alerts: Option<String>,
    reason: String,
) -> Result<(), AppError> {
    use keystone_control::goal::{Declaration, Goal};
    use keystone_control::{DesiredState, Name, SourceInput, SourceKind, SourceTableInput, ValidationErrors};
    let mut parsed = Vec::new();
    for (i, line) in tables.lines().map(str::trim).filter(|l| !l.is_empty()).enumerate() {
        let (table, stream) = match line.split_once("->") {
            Some((table, stream)) => {
                let stream = Name::parse(stream.trim())
                    .map_err(|e| ValidationErrors::single("tables", format!("line {}: {e}", i + 1)))?;
                (table, Some(stream))
            }
            None => (line, None),
        };
        parsed.push(SourceTableInput { table: table.trim().to_owned(), stream });
    }
    let mut e = ValidationErrors::default();
    let alerts = alerts.map(|text| keystone_control::alerts::parse_rules(&text, &mut e));
    e.into_result(())?;
    let (store, who) = crate::state::caller().await?;
    let goal = Goal::new(&store, &who);
    // An edit keeps what the form does not show (the desired state), and the rules when the
    // form had no rules field.
    let current = match parse_version(&version) {
        Some(_) => {
            Some(goal.get(Kind::Source, &team, &name).await?.spec_as::<SourceSpec>().map_err(|_| AppError::Internal)?)
        }
        None => None,
    };
    let input = SourceInput {
        kind: SourceKind::PostgresCdc,
        description: description.trim().to_owned(),
        tables: parsed,
        secrets: [("url".to_owned(), secret_url.trim().to_owned())]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect(),
        state: current.as_ref().map(|c| c.state).unwrap_or(DesiredState::Running),
        tags: current.as_ref().map(|c| c.tags.clone()).unwrap_or_default(),
        alerts: match (alerts, &current) {
            (Some(rules), _) => rules,
            (None, Some(c)) => c.alerts.clone(),
            (None, None) => keystone_control::alerts::default_source_alert_rules(),
        },
    };
    let decl = Declaration::Source(input);
    match parse_version(&version) {
        None => goal.create(&team, &name, decl, &reason).await?,
        Some(v) => goal.update(&team, &name, decl, &reason, Some(v)).await?,
    };
    leptos_axum::redirect(&format!("/sources/{team}/{name}"));
    Ok(())
}

/// What the source's page shows beside its declaration.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SourceView {
    /// The source job's last recorded state.
    pub status: keystone_control::SourceStatus,
    /// Each table and the stream its changes go to.
    pub tables: Vec<(String, String)>,
    /// Changes per second per table over the last hour (its stream's ingest), as an SVG chart.
    pub chart: String,
}

#[server]
pub async fn source_panel(team: String, name: String) -> Result<SourceView, AppError> {
    use crate::charts::{line_chart, Series, AMBER, BLUE, CYAN, GREEN, RED, VIOLET};
    use keystone_control::goal::Goal;
    let (state, who) = crate::state::signed_in().await?;
    let status = state.platform.ops(&who).source_status(&team, &name).await?;
    let goal = Goal::new(&state.platform.store, &who);
    let spec: SourceSpec = goal.get(Kind::Source, &team, &name).await?.spec_as().map_err(|_| AppError::Internal)?;
    let now = keystone_control::store::now_ms();
    let from = now - keystone_control::telemetry::Window::Hour.ms();
    let mut tables = Vec::new();
    let mut rates = Vec::new();
    for t in &spec.tables {
        tables.push((t.qualified(), t.stream.as_str().to_owned()));
        // A stream a source writes counts its appends as ingest (see `SourceOffsets::appended`).
        let Ok(stream) = goal.get(Kind::Stream, &team, t.stream.as_str()).await else { continue };
        let samples: Vec<keystone_control::StreamSample> = state.platform.store.samples(&stream.id, from, now).await?;
        let gap = samples.first().map_or(10, |s| s.seconds) * 1500;
        let points = samples.iter().map(|s| (s.at, s.accepted as f64 / s.seconds.max(1) as f64)).collect();
        rates.push((t.qualified(), gap, points));
    }
    let palette = [GREEN, BLUE, AMBER, VIOLET, CYAN, RED];
    let series: Vec<Series<'_>> = rates
        .iter()
        .enumerate()
        .map(|(i, (table, _, points)): (usize, &(String, i64, Vec<(i64, f64)>))| Series {
            label: table,
            color: palette[i % palette.len()],
            points: points.clone(),
        })
        .collect();
    let gap = rates.iter().map(|(_, g, _)| *g).max().unwrap_or(15_000);
    let chart = line_chart("Changes per table (last hour)", "rows/s", (from, now), gap, &series, &[]);
    Ok(SourceView { status, tables, chart })
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

/// The source's rules as one line each: `retained_wal_bytes firing (3.2 GiB held back)`.
fn alert_summary(alerts: &[keystone_control::alerts::AlertStatus]) -> String {
    if alerts.is_empty() {
        return "none evaluated yet".into();
    }
    alerts
        .iter()
        .map(|a| format!("{} {} ({} held back)", a.rule.as_str(), a.state.as_str(), bytes(a.value as i64)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Restarts the source's job (it resumes from its slot; see `Goal::restart_source`).
#[server]
pub async fn restart_source(team: String, name: String) -> Result<(), AppError> {
    let (state, who) = crate::state::signed_in().await?;
    state.platform.ops(&who).restart_source(&team, &name, "from the console").await?;
    Ok(())
}

#[component]
pub fn SourceDetailPage() -> impl IntoView {
    let params = use_params_map();
    let team = move || params.read().get("team").unwrap_or_default();
    let name = move || params.read().get("name").unwrap_or_default();
    let restart = ServerAction::<RestartSource>::new();
    let panel =
        Resource::new(move || (team(), name(), restart.version().get()), |(team, name, _)| source_panel(team, name));
    view! {
        <ObjectDetailView kind=Kind::Source/>
        {can_edit().then(|| view! {
            <div class="mt-6 flex gap-2 items-center">
                <ActionForm action=restart>
                    <input type="hidden" name="team" value=team/>
                    <input type="hidden" name="name" value=name/>
                    <button type="submit" class=BUTTON_SECONDARY data-testid="restart-source">"Restart capture"</button>
                </ActionForm>
                {move || restart.value().get().and_then(Result::ok).map(|()| view! {
                    <span class="text-sm text-green-800" data-testid="restart-result">"Restart requested: the capture resumes from its slot."</span>
                })}
            </div>
            <FormStatus error=last_error(restart.value())/>
        })}
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                panel.await.ok().map(|SourceView { status: s, tables, chart }| {
                    let snapshot = match s.snapshot_lsn {
                        Some(at) => format!("{} rows, read at {}", s.snapshot_rows, lsn(at)),
                        None => format!("running: {} rows so far", s.snapshot_rows),
                    };
                    // While the snapshot runs, its progress against the planner's estimate.
                    let progress = s.snapshot_estimate.filter(|e| s.snapshot_lsn.is_none() && *e > 0).map(|estimate| {
                        let percent = (s.snapshot_rows as f64 / estimate as f64 * 100.0).min(100.0);
                        view! {
                            <div class="px-4 py-2 text-sm" id="snapshot-progress">
                                <progress class="w-full" max="100" value=format!("{percent:.0}")></progress>
                                <span class="text-slate-500">{format!("about {percent:.0}% of ~{estimate} rows")}</span>
                            </div>
                        }
                    });
                    let lag = match (s.lag_bytes, s.lag_ms) {
                        (None, _) => "not measured yet".to_owned(),
                        (Some(b), Some(ms)) => format!("{} behind the database's WAL; last change appended {ms} ms after its commit", bytes(b)),
                        (Some(b), None) => format!("{} behind the database's WAL", bytes(b)),
                    };
                    let rows = vec![
                        ("Phase", format!("{} ({})", s.phase, s.cause)),
                        ("Initial snapshot", snapshot),
                        ("Confirmed to the database", lsn(s.confirmed_lsn)),
                        ("Replication lag", lag),
                        ("Changes appended", s.events.to_string()),
                        ("WAL held back by the slot", s.retained_bytes.map_or("not measured yet".into(), bytes)),
                        ("Last error", s.last_error.unwrap_or_else(|| "none".into())),
                        ("Alerts", alert_summary(&s.alerts)),
                    ];
                    view! {
                        <section class=format!("mt-8 {CARD}") id="source-status">
                            <h2 class="px-4 py-3 border-b border-slate-200 font-medium">"Capture"</h2>
                            {progress}
                            <dl class="divide-y divide-slate-100">
                                {rows.into_iter().map(|(k, v)| view! {
                                    <div class="px-4 py-2 grid grid-cols-3 gap-4 text-sm">
                                        <dt class="text-slate-500">{k}</dt>
                                        <dd class="col-span-2 break-all">{v}</dd>
                                    </div>
                                }).collect_view()}
                            </dl>
                        </section>
                        <section class=format!("mt-6 {CARD}") id="source-tables">
                            <h2 class="px-4 py-3 border-b border-slate-200 font-medium">"Tables"</h2>
                            <ul class="divide-y divide-slate-100 text-sm">
                                {tables.into_iter().map(|(table, stream)| view! {
                                    <li class="px-4 py-2">
                                        {table}" → "
                                        <a class="text-blue-700 hover:underline" href=format!("/streams/{}/{stream}", team())>{stream.clone()}</a>
                                    </li>
                                }).collect_view()}
                            </ul>
                            <figure class="p-2 overflow-hidden" data-testid="chart-source-rows" inner_html=chart></figure>
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
    let alerts = keystone_control::alerts::format_rules(
        &spec.as_ref().map_or_else(keystone_control::alerts::default_source_alert_rules, |s| s.alerts.clone()),
    );
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
                help="One per line: schema.table, or schema.table -> stream. Without a stream, Keystone creates <source>-<table>; its schema follows the table's columns. Every table needs a primary key."/>
            <Field label="Database URL (secret)" name="secret_url" kind="password" error_key="secrets.url" errors
                help=url_help/>
            <Field label="Alert rules" name="alerts" kind="textarea" errors value=alerts
                help="One rule per line: retained_wal_bytes <bytes> for <seconds> (the WAL the slot holds back on the database)."/>
            <Field label="Reason for this change" name="reason" errors/>
            <button type="submit" class=BUTTON>"Save source"</button>
        </ActionForm>
    }
    .into_any()
}
