//! The JSON API under `/api/v1`. Every route authenticates an API token (`Authorization: Bearer
//! ks_...`) and goes through the same goal-state service as the console, so validation and
//! authorisation cannot differ. Errors share one shape: `{"error": {"code", "message", "field"}}`.

mod approvals;
mod backfill;
mod caller;
mod config;
mod error;
mod handlers;
mod ingest;
mod jobs;
mod metrics;
mod openapi;

pub use error::{ApiError, ErrorBody};
pub use openapi::ApiDoc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;
use keystone_ops::Platform;
use std::sync::Arc;

pub use ingest::IngestCache;

/// What the API handlers need: the platform (shared with the console) and the API's own
/// settings.
#[derive(Clone)]
pub struct ApiState {
    pub platform: Platform,
    /// Renders this process's metrics (`/metrics`).
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Bearer token that may scrape every series of `/metrics` (none: API tokens only).
    pub metrics_token: Option<String>,
    /// Streams' compiled ingest settings, per revision.
    pub ingest: Arc<IngestCache>,
    /// Largest request body the ingest proxy accepts (413 beyond).
    pub max_body_bytes: usize,
    /// Largest single event (rejected by index beyond).
    pub max_event_bytes: usize,
    /// Most events one ingest request may hold (413 beyond).
    pub max_events_per_request: usize,
    /// The quota of a stream declaring none (events per second; 0 for none).
    pub default_max_events_per_second: u32,
}

impl axum::extract::FromRef<ApiState> for Platform {
    fn from_ref(state: &ApiState) -> Platform {
        state.platform.clone()
    }
}

/// The `/api/v1` router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi::openapi))
        .route("/api/v1/me", get(handlers::me))
        .route("/api/v1/teams", get(handlers::list_teams))
        .route("/api/v1/teams/{team}/{kind}", get(handlers::list_objects).post(handlers::create_object))
        .route(
            "/api/v1/teams/{team}/{kind}/{name}",
            get(handlers::get_object).put(handlers::update_object).delete(handlers::delete_object),
        )
        .route("/api/v1/teams/{team}/{kind}/{name}/revisions", get(handlers::object_history))
        .route("/api/v1/teams/{team}/routes/{name}/job", get(jobs::job_status))
        .route("/api/v1/teams/{team}/routes/{name}/restart", post(jobs::restart))
        .route("/api/v1/teams/{team}/routes/{name}/state", post(jobs::set_state))
        .route("/api/v1/teams/{team}/routes/{name}/deployments", get(jobs::deployments))
        .route("/api/v1/teams/{team}/routes/{name}/rollback", post(jobs::roll_back))
        .route("/api/v1/teams/{team}/routes/{name}/savepoints", post(jobs::take_savepoint).get(jobs::savepoints))
        .route("/api/v1/teams/{team}/routes/{name}/rewind", post(jobs::rewind))
        .route("/api/v1/teams/{team}/routes/{name}/checkpoints", get(jobs::checkpoint_history))
        .route("/api/v1/teams/{team}/routes/{name}/backfill", post(backfill::start))
        .route("/api/v1/teams/{team}/routes/{name}/backfill/cancel", post(backfill::cancel))
        .route("/api/v1/teams/{team}/routes/{name}/backfills", get(backfill::list))
        .route("/api/v1/teams/{team}/routes/{name}/config", get(config::effective))
        .route(
            "/api/v1/teams/{team}/routes/{name}/config/{key}",
            axum::routing::put(config::set_override).delete(config::clear_override),
        )
        .route("/api/v1/teams/{team}/routes/{name}/dead-letters", get(jobs::dead_letters))
        .route("/api/v1/teams/{team}/routes/{name}/dead-letters/retry", post(jobs::retry_dead_letters))
        .route("/api/v1/teams/{team}/routes/{name}/samples", get(metrics::samples))
        .route("/api/v1/teams/{team}/streams/{name}/samples", get(metrics::stream_samples))
        .route("/api/v1/teams/{team}/routes/{name}/alerts", get(metrics::alerts))
        .route("/api/v1/teams/{team}/routes/{name}/alerts/silence", post(metrics::silence))
        .route("/api/v1/operations", get(metrics::operations))
        .route("/api/v1/jobs", get(jobs::list_jobs))
        .route("/api/v1/jobs/counts", get(jobs::job_counts))
        .route("/api/v1/workers", get(jobs::workers))
        .route("/api/v1/change-requests", get(approvals::list))
        .route("/api/v1/change-requests/{id}", get(approvals::get_one))
        .route("/api/v1/policies/approvals", get(approvals::get_policy))
        .route("/api/v1/teams/{team}/route-preview", post(jobs::preview))
        .route("/api/v1/teams/{team}/processor-plan", post(handlers::explain_processor))
        .route("/api/v1/teams/{team}/processor-preview", post(handlers::preview_processor))
        .route("/api/v1/teams/{team}/processors/{name}/dead-letters", get(jobs::processor_dead_letters))
        .route("/api/v1/teams/{team}/sources/{name}/status", get(jobs::source_status))
        .route("/api/v1/teams/{team}/sources/{name}/restart", post(jobs::restart_source))
        .route("/api/v1/revisions", get(handlers::audit))
        .route("/api/v1/objects/{id}/revisions", get(handlers::history_by_id))
        .route("/api/v1/objects/{id}/diff", get(handlers::diff))
        .route("/api/v1/producer-tokens/{team}/{stream}", get(ingest::list_tokens).post(ingest::create_token))
        .route("/api/v1/producer-tokens/{team}/{stream}/{id}", delete(ingest::revoke_token))
        .route("/api/v1/events/{team}/{stream}", get(ingest::events))
        .route("/api/v1/teams/{team}/streams/{name}/ingest", get(ingest::stream_stats))
        .route("/api/v1/{*rest}", axum::routing::any(handlers::not_found))
        .route("/metrics", get(metrics::metrics))
        .route("/ingest/{stream}", post(ingest::ingest).layer(DefaultBodyLimit::max(state.max_body_bytes)))
        .with_state(state)
}
