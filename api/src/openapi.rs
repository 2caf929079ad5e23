//! The OpenAPI document of `/api/v1`, generated from the handlers' annotations so it cannot drift.

use crate::error::ErrorBody;
use axum::Json;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Keystone API", description = "Declare streams, sinks, routes and processors; read their revisions."),
    paths(crate::handlers::me, crate::handlers::list_teams, crate::handlers::list_objects, crate::handlers::create_object,
          crate::handlers::get_object, crate::handlers::update_object, crate::handlers::delete_object,
          crate::handlers::object_history, crate::handlers::history_by_id, crate::handlers::diff, crate::handlers::audit, crate::ingest::ingest, crate::ingest::create_token, crate::ingest::list_tokens,
          crate::ingest::revoke_token, crate::ingest::events, crate::jobs::job_status, crate::jobs::list_jobs, crate::jobs::job_counts, crate::jobs::workers,
          crate::jobs::restart, crate::jobs::set_state, crate::jobs::deployments, crate::jobs::roll_back, crate::jobs::take_savepoint, crate::jobs::savepoints, crate::jobs::checkpoint_history, crate::backfill::start, crate::backfill::list, crate::backfill::cancel, crate::jobs::rewind, crate::jobs::dead_letters, crate::jobs::preview, crate::ingest::stream_stats, crate::jobs::retry_dead_letters, crate::metrics::samples, crate::metrics::stream_samples, crate::metrics::alerts,
          crate::metrics::silence, crate::metrics::operations, crate::approvals::list, crate::approvals::get_one,
          crate::approvals::get_policy, crate::config::effective, crate::config::set_override,
          crate::config::clear_override, crate::handlers::explain_processor, crate::handlers::preview_processor,
          crate::jobs::processor_dead_letters, crate::jobs::source_status, crate::jobs::restart_source),
    components(schemas(ErrorBody, keystone_control::StreamSpec, keystone_control::SinkInput, keystone_control::SinkSpec,
                       keystone_control::RouteSpec, keystone_control::ProcessorSpec, keystone_control::TeamSpec,
                       keystone_control::SourceInput, keystone_control::SourceSpec)),
    modifiers(&BearerAuth, &PathEnums),
    security(("token" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The values a path parameter takes, listed from where the API checks them: `{kind}` (the kinds
/// in URLs) and a route configuration `{key}` (the layered keys).
struct PathEnums;

impl utoipa::Modify for PathEnums {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let kinds: Vec<&str> = crate::handlers::KIND_SEGMENTS.iter().map(|(s, _)| *s).collect();
        let keys = keystone_control::config::LAYERED_KEYS;
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for op in operations.into_iter().flatten() {
                for p in op.parameters.iter_mut().flatten() {
                    let values: &[&str] = match p.name.as_str() {
                        "kind" => &kinds,
                        "key" if path.contains("/config/") => &keys,
                        _ => continue,
                    };
                    p.schema = Some(
                        ObjectBuilder::new().schema_type(Type::String).enum_values(Some(values.iter().copied())).into(),
                    );
                }
            }
        }
    }
}

/// The OpenAPI document, generated from the handlers above so it cannot drift.
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
