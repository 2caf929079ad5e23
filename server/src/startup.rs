//! Builds the HTTP application: console (Leptos), JSON API, sessions, security layers.

use crate::csrf::{check_origin, OriginPolicy};
use crate::serve::ConnectionLimits;
use crate::sessions::DbSessionStore;
use crate::settings::{ProcessRole, Settings};
use app::state::AppState;
use app::{shell, App, STYLESHEET};
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use keystone_control::auth::LoginLimiter;
use keystone_control::store::Store;
use keystone_engine::job::registry::JobRegistry;
use keystone_engine::job::runtime::JobRuntime;
use keystone_engine::log::embedded::EmbeddedConfig;
use keystone_engine::log::{AnyLog, EmbeddedLog, KafkaLog};
use keystone_engine::meter::IngestMeter;
use keystone_ops::reconciler::{Jobs, Reconciler, ReconcilerHealth, Sources};
use keystone_ops::telemetry::{Exporter, Telemetry};
use leptos::prelude::*;
use leptos_axum::{generate_route_list, LeptosRoutes};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::compression::CompressionLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use tower_sessions::cookie::SameSite;
use tower_sessions::{Expiry, SessionManagerLayer};

/// The running server: bound, not yet serving.
pub struct Application {
    listener: TcpListener,
    router: Router,
    jobs: Arc<Jobs>,
    control: ControlLoop,
    port: u16,
    limits: ConnectionLimits,
}

/// The running reconciler, stopped in order at shutdown.
pub struct ControlLoop {
    reconciler: Arc<Reconciler>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// Renews this process's row of the workers list (processes that run jobs).
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// The threads this process's route jobs run on when it also serves ingest (role `all`);
    /// stopped last.
    runtime: Option<JobRuntime>,
}

impl ControlLoop {
    /// Starts this process's reconciler (what it does follows the settings' role).
    fn start(
        settings: &Settings,
        store: &Store,
        log: &Arc<AnyLog>,
        jobs: &Arc<Jobs>,
        health: &Arc<ReconcilerHealth>,
        meter: Option<&Arc<IngestMeter>>,
    ) -> std::io::Result<ControlLoop> {
        // Only a process that also answers producers needs its jobs below ingest; a worker's jobs
        // are all it runs, so they stay on its main runtime at the normal priority.
        let runtime = (settings.role == ProcessRole::All).then(JobRuntime::start).transpose()?;
        let reconciler = Arc::new(Reconciler {
            instance: instance_name(settings),
            lease_ttl: Duration::from_millis(settings.reconciler_lease_ms.max(2_000)),
            lease: Default::default(),
            store: store.clone(),
            log: log.clone(),
            jobs: jobs.clone(),
            processors: Arc::new(Jobs::new(log.clone())),
            sources: Arc::new(meter.map_or_else(Default::default, |m| Sources::metered(m.clone()))),
            data_dir: settings.data_dir.clone(),
            health: health.clone(),
            job_env: Arc::new(settings.job_env.clone()),
            role: settings.role,
            planned: Default::default(),
            group_session: Duration::from_millis(settings.kafka.as_ref().map_or(10_000, |k| k.session_timeout_ms)),
            pool: settings.pool.clone().filter(|p| !p.is_empty()),
            jobs_on: runtime.as_ref().map_or_else(tokio::runtime::Handle::current, JobRuntime::handle),
        });
        let stop = CancellationToken::new();
        let heartbeat = settings.role.runs_jobs().then(|| spawn_heartbeat(&reconciler, stop.clone()));
        Ok(ControlLoop {
            reconciler: reconciler.clone(),
            stop: stop.clone(),
            task: reconciler.spawn(stop),
            heartbeat,
            runtime,
        })
    }

    /// Stops planning, drains every job (each commits its checkpoint), and only then hands the
    /// reconciler lease over, so the next holder never starts a job this one still runs.
    async fn shut_down(self) {
        self.stop.cancel();
        let _ = self.task.await;
        self.reconciler.jobs.stop_all().await;
        self.reconciler.processors.stop_all().await;
        self.reconciler.sources.stop_all().await;
        // Every job is drained: their threads can go.
        drop(self.runtime);
        self.reconciler.release().await;
        if let Some(heartbeat) = self.heartbeat {
            let _ = heartbeat.await;
            if let Err(e) = self.reconciler.store.forget_worker(&self.reconciler.instance).await {
                tracing::warn!(error = %e, "Could not remove this process from the workers list.");
            }
        }
    }
}

impl Application {
    /// Connects the store (running migrations), builds the router and binds the listener
    /// (port 0 picks a free port, as tests do).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        if settings.metrics_token.as_ref().is_some_and(|t| !t.is_empty() && t.len() < 32) {
            anyhow::bail!("metrics_token (KEYSTONE_METRICS_TOKEN) must be at least 32 characters");
        }
        std::fs::create_dir_all(&settings.data_dir)?;
        let url = settings.database_url();
        let store =
            Store::connect(&url).await?.with_egress(settings.egress_policy()?).with_secrets(settings.secret_box()?);
        tracing::info!(backend = ?store.backend(), "Goal-state store ready.");
        let sealed = store.seal_plaintext_secrets().await?;
        if sealed > 0 {
            tracing::info!(sealed, "Secrets stored in clear by an earlier version are now sealed.");
        }
        if store.user_count().await? == 0 {
            tracing::warn!("No users yet: create the first admin with `keystone admin create-user --role admin`.");
        }
        prepare_sink_folders(&settings, &store).await?;
        let listener = TcpListener::bind(&settings.listen).await?;
        let port = listener.local_addr()?.port();
        let (router, jobs, control) = router(&settings, store, &url).await?;
        let limits = ConnectionLimits {
            max_connections: settings.max_connections,
            header_read_timeout: Duration::from_millis(settings.header_read_timeout_ms),
        };
        Ok(Application { listener, router, jobs, control, port, limits })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The route jobs this server runs.
    pub fn jobs(&self) -> Arc<Jobs> {
        self.jobs.clone()
    }

    /// Serves until Ctrl-C, then lets every job finish its batch and commit its checkpoint.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` resolves, then drains every job.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let served = crate::serve::serve(self.listener, self.router, self.limits, shutdown).await;
        self.control.shut_down().await;
        served
    }
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("Shutting down.");
}

/// The whole application, and the jobs it runs (stopped cleanly at shutdown).
pub async fn router(
    settings: &Settings,
    store: Store,
    database_url: &str,
) -> anyhow::Result<(Router, Arc<Jobs>, ControlLoop)> {
    let leptos_options = LeptosOptions::builder()
        .output_name("keystone")
        .site_root(settings.site_root.to_string_lossy().to_string())
        .site_pkg_dir("pkg")
        .build();
    let log = open_log(settings)?;
    spawn_retention(log.clone());
    let jobs = Arc::new(JobRegistry::new(log.clone()));
    let meter = Arc::new(IngestMeter::default());
    let reconciler_health = Arc::new(ReconcilerHealth::default());
    let job_env = Arc::new(settings.job_env.clone());
    let control = ControlLoop::start(settings, &store, &log, &jobs, &reconciler_health, Some(&meter))?;
    let interval = Duration::from_millis(settings.telemetry_interval_ms.max(100));
    let exporter = Arc::new(Exporter::new((interval * 3).max(Duration::from_secs(60))));
    Telemetry {
        store: store.clone(),
        log: log.clone(),
        jobs: jobs.clone(),
        meter: meter.clone(),
        exporter: exporter.clone(),
        interval,
        // On Kafka, other processes may run shares of the same jobs.
        shared_as: settings.kafka.is_some().then(|| control.reconciler.instance.clone()),
        reconciler: reconciler_health,
        // Alert webhooks are team-declared URLs: the same egress policy as sinks.
        http: keystone_engine::egress::http_client(store.egress(), Duration::from_secs(10))?,
    }
    .spawn();
    // One platform for both edges: the console's server functions and the API's handlers call
    // the same operations on it.
    let platform = keystone_ops::Platform {
        store,
        log,
        jobs: jobs.clone(),
        meter,
        job_env,
        sinks_root: settings.data_dir.join("sinks"),
    };
    let state = AppState {
        leptos_options,
        platform: platform.clone(),
        // Five wrong passwords per account, or thirty per address, in fifteen minutes.
        limiter: Arc::new(LoginLimiter::new(5, 30, Duration::from_secs(15 * 60))),
        client_ip_header: settings.trusted_proxy_header.clone().filter(|h| !h.is_empty()),
        session_absolute_ms: settings.session_absolute_hours * 3_600_000,
    };

    let sessions = DbSessionStore::connect(database_url).await?;
    sessions.spawn_cleanup();
    let session_layer = SessionManagerLayer::new(sessions)
        // `__Host-` binds a secure cookie to this exact origin (no Domain, path /, Secure only).
        .with_name(if settings.secure_cookies { "__Host-keystone_session" } else { "keystone_session" })
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_secure(settings.secure_cookies)
        .with_expiry(Expiry::OnInactivity(tower_sessions::cookie::time::Duration::minutes(
            settings.session_idle_minutes,
        )));

    let routes = generate_route_list(App);
    let context = {
        let state = state.clone();
        move || provide_context(state.clone())
    };
    let console = Router::new()
        .route("/pkg/keystone.css", get(stylesheet))
        .leptos_routes_with_context(&state, routes, context.clone(), {
            let options = state.leptos_options.clone();
            move || shell(options.clone())
        })
        .fallback(leptos_axum::file_and_error_handler_with_context::<AppState, _>(context, shell))
        .with_state(state)
        // Console forms are small; the ingest proxy and the JSON API have limits of their own.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(settings.console_max_body_bytes));

    let api = keystone_api::router(keystone_api::ApiState {
        platform,
        metrics: exporter.handle(),
        metrics_token: settings.metrics_token.clone().filter(|t| !t.is_empty()),
        ingest: Default::default(),
        max_body_bytes: settings.ingest_max_body_bytes,
        max_event_bytes: settings.ingest_max_event_bytes,
        max_events_per_request: settings.ingest_max_events_per_request,
        default_max_events_per_second: settings.ingest_default_max_events_per_second,
    });
    let policy = OriginPolicy { public_origin: settings.public_origin.clone() };
    let router = console
        .merge(api)
        .layer(axum::middleware::from_fn_with_state(policy, check_origin))
        .layer(session_layer)
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::overriding(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .layer(SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("same-origin")))
        // Console pages set their own policy with a per-response script nonce; everything else
        // gets the base one, under which no script runs.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(app::base_policy()),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            // Only when the console is served over HTTPS (secure cookies say so).
            settings.secure_cookies.then(|| HeaderValue::from_static("max-age=31536000; includeSubDomains")),
        ))
        .layer(CompressionLayer::new())
        // A slow client holds neither a connection's body nor a request slot for long.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(Duration::from_millis(settings.body_idle_timeout_ms)))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(settings.request_timeout_ms),
        ))
        // Beyond the limit, answer 503 at once instead of queueing without bound.
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(|_: tower::BoxError| async {
                    let mut r = (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(serde_json::json!({"error": {"code": "overloaded",
                            "message": "the server is at its limit of concurrent requests; retry shortly"}})),
                    )
                        .into_response();
                    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    r
                }))
                .load_shed()
                // One semaphore for the whole server: `Router::layer` wraps each route apart, and
                // a plain concurrency limit would count per route.
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(settings.max_concurrent_requests)),
        )
        .layer(TraceLayer::new_for_http());
    Ok((router, jobs, control))
}

/// Renews this process's row in the workers list with the partitions of each job it holds,
/// until `stop` fires.
fn spawn_heartbeat(reconciler: &Arc<Reconciler>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    use keystone_control::workers::HEARTBEAT_EVERY_MS;
    let reconciler = reconciler.clone();
    let role = match (reconciler.role, &reconciler.pool) {
        (ProcessRole::Worker, Some(pool)) => format!("worker, pool {pool}"),
        (ProcessRole::Worker, None) => "worker".to_owned(),
        _ => "all".to_owned(),
    };
    tokio::spawn(async move {
        let started_at = keystone_control::store::now_ms();
        let mut tick = tokio::time::interval(Duration::from_millis(HEARTBEAT_EVERY_MS as u64));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let held = reconciler.jobs.holdings();
            let beat = reconciler.store.heartbeat_worker(&reconciler.instance, &role, started_at, &held);
            if let Err(e) = beat.await {
                tracing::warn!(error = %e, "Worker heartbeat not recorded.");
            }
        }
    })
}

/// The log: events wait here, durably, for the routes that read them. Processes in roles that
/// share the data plane need it on Kafka.
fn open_log(settings: &Settings) -> anyhow::Result<Arc<AnyLog>> {
    Ok(Arc::new(match &settings.kafka {
        None if settings.role != ProcessRole::All => anyhow::bail!(
            "the {:?} role shares streams with other processes: it needs them on Kafka ([kafka] brokers, or \
             KEYSTONE_KAFKA__BROKERS)",
            settings.role
        ),
        None => AnyLog::Embedded(EmbeddedLog::open(settings.data_dir.join("log"), EmbeddedConfig::default())?),
        Some(kafka) => {
            tracing::info!(brokers = %kafka.brokers, manage_topics = kafka.manage_topics, role = ?settings.role, "Streams live on Kafka.");
            AnyLog::Kafka(KafkaLog::connect(kafka.log_config(settings.role))?)
        }
    }))
}

/// A `keystone worker`: no console, no API; it runs route jobs, each shared with the other
/// workers through the route's Kafka consumer group, from the goal state in the shared
/// database.
pub struct Worker {
    control: ControlLoop,
    telemetry: tokio::task::JoinHandle<()>,
    stop_telemetry: CancellationToken,
}

impl Worker {
    pub async fn build(mut settings: Settings) -> anyhow::Result<Worker> {
        settings.role = ProcessRole::Worker;
        let store = Store::connect(&settings.database_url())
            .await?
            .with_egress(settings.egress_policy()?)
            .with_secrets(settings.secret_box()?);
        if store.backend() != keystone_control::store::Backend::Postgres {
            tracing::warn!("This worker's database is SQLite: only processes on this machine can share it.");
        }
        prepare_sink_folders(&settings, &store).await?;
        let log = open_log(&settings)?;
        let jobs = Arc::new(JobRegistry::new(log.clone()));
        let health = Arc::new(ReconcilerHealth::default());
        let control = ControlLoop::start(&settings, &store, &log, &jobs, &health, None)?;
        let stop_telemetry = CancellationToken::new();
        let telemetry = keystone_ops::telemetry::spawn_shares(
            store,
            jobs,
            control.reconciler.instance.clone(),
            Duration::from_millis(settings.telemetry_interval_ms.max(100)),
            stop_telemetry.clone(),
        );
        Ok(Worker { control, telemetry, stop_telemetry })
    }

    /// The route jobs this worker runs.
    pub fn jobs(&self) -> Arc<Jobs> {
        self.control.reconciler.jobs.clone()
    }

    /// Runs until `shutdown` resolves, then drains every job: each commits and hands its
    /// partitions over to the other workers.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        shutdown.await;
        self.control.shut_down().await;
        self.stop_telemetry.cancel();
        let _ = self.telemetry.await;
    }

    pub async fn run_until_stopped(self) {
        self.run_until(shutdown_signal()).await
    }
}

/// Keeps every team's local file-sink files in the team's own folder, moving those written
/// before that layout (once) before any job starts.
async fn prepare_sink_folders(settings: &Settings, store: &Store) -> anyhow::Result<()> {
    use keystone_control::{store::Scope, FileSettings, Kind, SinkSettings, SinkSpec};
    let sinks: Vec<(String, String)> = store
        .list(Kind::Sink, &Scope::All)
        .await?
        .into_iter()
        .filter_map(|o| match o.spec_as::<SinkSpec>().ok()?.typed().ok()? {
            SinkSettings::File(FileSettings { path, bucket: None, .. }) => Some((o.team, path)),
            _ => None,
        })
        .collect();
    let notes = keystone_engine::sinks::file_layout::migrate_to_team_folders(&settings.data_dir, &sinks)?;
    for note in notes {
        tracing::warn!(note = %note, "File sink folders need an admin.");
    }
    Ok(())
}

/// This process's name among those sharing the database: the configured `instance`, else the
/// host name and the data directory (stable across restarts, so a restarted process renews its
/// own lease at once instead of waiting for it to expire).
fn instance_name(settings: &Settings) -> String {
    if let Some(name) = settings.instance.as_ref().filter(|n| !n.trim().is_empty()) {
        return name.trim().to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    let dir = std::fs::canonicalize(&settings.data_dir).unwrap_or_else(|_| settings.data_dir.clone());
    format!("{host}:{}", dir.display())
}

/// Drops log segments that retention no longer keeps, once a minute.
fn spawn_retention(log: Arc<AnyLog>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            match log.enforce_retention(keystone_control::store::now_ms()) {
                Ok(0) => {}
                Ok(n) => tracing::info!(segments = n, "Retention removed log segments."),
                Err(e) => tracing::warn!(error = %e, "Retention pass failed."),
            }
        }
    });
}

async fn stylesheet() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], STYLESHEET)
}
