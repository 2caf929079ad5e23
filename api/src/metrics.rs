//! `/metrics` in Prometheus text format, and routes' and streams' stored samples as JSON. Admins scrape
//! every series; anyone else sees only the series labelled with one of their teams, so a
//! team's scrape job cannot read another team's routes.

use crate::caller::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::ApiState;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use keystone_control::auth::Principal;
use keystone_control::goal::Goal;
use keystone_control::store::now_ms;
use keystone_control::store::samples::Sampled;
use keystone_control::telemetry::Window;
use keystone_control::{JobSample, Kind, StreamSample, ValidationErrors};
use serde::Deserialize;

/// Every metric of this process the caller may see (Prometheus text exposition format 0.0.4).
/// The platform's scrape token (`metrics_token` setting) sees everything; an API token sees the
/// series of its teams.
pub async fn metrics(State(s): State<ApiState>, headers: axum::http::HeaderMap) -> Result<impl IntoResponse, ApiError> {
    use subtle::ConstantTimeEq;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(ApiError::Unauthenticated)?;
    let text = s.metrics.render();
    let scraper = s.metrics_token.as_deref().is_some_and(|t| bool::from(t.as_bytes().ct_eq(bearer.as_bytes())));
    let body = if scraper {
        text
    } else {
        let who = keystone_control::auth::principal_for_token(&s.platform.store, bearer)
            .await?
            .ok_or(ApiError::Unauthenticated)?;
        if who.is_admin() {
            text
        } else {
            visible_to(&text, &who)
        }
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body))
}

/// The lines of `text` a non-admin may read: series of their teams, and the HELP and TYPE
/// comments of those metrics only.
fn visible_to(text: &str, who: &Principal) -> String {
    let series: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| team_label(l).is_some_and(|team| who.teams.iter().any(|t| t.name == team)))
        .collect();
    let shown = |name: &str| series.iter().any(|l| l.split(['{', ' ']).next() == Some(name));
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let keep = match line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) {
            Some(rest) => shown(rest.split(' ').next().unwrap_or_default()),
            None => series.contains(&line),
        };
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The `team` label of a series line (`name{team="a",route="b"} 1`).
fn team_label(line: &str) -> Option<&str> {
    let labels = &line[line.find('{')? + 1..line.find('}')?];
    labels.split(',').find_map(|l| l.strip_prefix("team=\"")).and_then(|v| v.strip_suffix('"'))
}

#[derive(Debug, Deserialize)]
pub struct WindowQuery {
    /// `15m`, `1h`, `24h` or `7d` (default `1h`).
    pub window: Option<String>,
}

impl WindowQuery {
    fn window(&self) -> Result<Window, ValidationErrors> {
        match self.window.as_deref() {
            None => Ok(Window::Hour),
            Some(w) => Window::parse(w)
                .ok_or_else(|| ValidationErrors::single("window", format!("{w:?} is not one of 15m, 1h, 24h, 7d"))),
        }
    }
}

/// An object's samples over a window, oldest first: 10-second samples up to a day, 5-minute
/// samples beyond. Reading the object checks the caller may see it.
async fn object_samples<T: Sampled>(
    s: &ApiState,
    who: &Principal,
    kind: Kind,
    (team, name): (String, String),
    q: &WindowQuery,
) -> Result<Json<Vec<T>>, ApiError> {
    let window = q.window()?;
    let object = Goal::new(&s.platform.store, who).get(kind, &team, &name).await?;
    let now = keystone_control::store::now_ms();
    Ok(Json(s.platform.store.samples::<T>(&object.id, now - window.ms(), now).await?))
}

/// A route's job samples over a window, oldest first.
#[utoipa::path(get, path = "/api/v1/teams/{team}/routes/{name}/samples",
    params(("team" = String, Path), ("name" = String, Path), ("window" = Option<String>, Query)),
    responses((status = 200, body = [JobSample]), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn samples(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path(path): Path<(String, String)>,
    Query(q): Query<WindowQuery>,
) -> Result<Json<Vec<JobSample>>, ApiError> {
    object_samples(&s, &who, Kind::Route, path, &q).await
}

/// A stream's ingest samples over a window, oldest first.
#[utoipa::path(get, path = "/api/v1/teams/{team}/streams/{name}/samples",
    params(("team" = String, Path), ("name" = String, Path), ("window" = Option<String>, Query)),
    responses((status = 200, body = [StreamSample]), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn stream_samples(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path(path): Path<(String, String)>,
    Query(q): Query<WindowQuery>,
) -> Result<Json<Vec<StreamSample>>, ApiError> {
    object_samples(&s, &who, Kind::Stream, path, &q).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use keystone_control::auth::TeamRef;
    use keystone_control::Role;

    #[test]
    fn non_admins_see_only_their_teams_series() {
        let text = "# HELP keystone_job_lag_events x\n# TYPE keystone_job_lag_events gauge\n# HELP keystone_jobs y\n\
                    keystone_job_lag_events{team=\"a\",route=\"r\"} 3\n\
                    keystone_job_lag_events{team=\"b\",route=\"r\"} 4\n\
                    keystone_jobs{phase=\"running\"} 2\n";
        let who = Principal {
            user_id: "u".into(),
            display: "u".into(),
            role: Role::Editor,
            teams: vec![TeamRef { id: "1".into(), name: "a".into(), role: None }],
        };
        let seen = visible_to(text, &who);
        assert!(seen.contains("team=\"a\""));
        assert!(!seen.contains("team=\"b\""), "another team's series leaked");
        assert!(!seen.contains("keystone_jobs"), "platform series are for admins, even their HELP");
        assert!(seen.contains("# TYPE keystone_job_lag_events gauge"));
        assert_eq!(team_label("x{route=\"r\",team=\"t\"} 1"), Some("t"));
        assert_eq!(team_label("x 1"), None);
    }
}

/// A route's alert rules as declared, their current states, and the latest firings.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RouteAlerts {
    pub rules: Vec<keystone_control::alerts::AlertRule>,
    pub states: Vec<keystone_control::alerts::AlertStatus>,
    /// Newest first.
    pub events: Vec<keystone_control::alerts::AlertEvent>,
    /// Silences still in force.
    pub silences: Vec<keystone_control::alerts::Silence>,
}

#[utoipa::path(get, path = "/api/v1/teams/{team}/routes/{name}/alerts",
    params(("team" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = RouteAlerts), (status = 404, body = ErrorBody)))]
pub async fn alerts(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
) -> Result<Json<RouteAlerts>, ApiError> {
    let route = Goal::new(&s.platform.store, &who).get(Kind::Route, &team, &name).await?;
    let spec: keystone_control::RouteSpec =
        route.spec_as().map_err(|e| keystone_control::store::StoreError::Corrupt(e.to_string()))?;
    Ok(Json(RouteAlerts {
        rules: spec.alerts,
        states: s.platform.store.route_alerts(&route.id).await?,
        events: s.platform.store.alert_events(&route.id, 50).await?,
        silences: s
            .platform
            .store
            .active_silences(Some(&route.id), now_ms())
            .await?
            .into_iter()
            .map(|(_, x)| x)
            .collect(),
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SilenceRequest {
    /// One rule kind (`lag_seconds`, ...); omitted: every rule of the route.
    #[serde(default)]
    pub rule: String,
    /// 1 to 10080 (a week).
    #[schema(minimum = 1, maximum = 10080)]
    pub minutes: u32,
    /// Why; recorded in the audit log.
    pub reason: String,
}

/// Holds back a route's alert notifications for a while (states are still evaluated and shown).
/// Needs write access to the route's team; recorded in the audit log.
#[utoipa::path(post, path = "/api/v1/teams/{team}/routes/{name}/alerts/silence",
    params(("team" = String, Path), ("name" = String, Path)), request_body = SilenceRequest,
    responses((status = 201, body = keystone_control::alerts::Silence), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn silence(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<(axum::http::StatusCode, Json<keystone_control::alerts::Silence>), ApiError> {
    let req: SilenceRequest = serde_json::from_slice(&body)
        .map_err(|e| ValidationErrors::single("body", format!("is not a valid silence request: {e}")))?;
    let silence =
        Goal::new(&s.platform.store, &who).silence_alerts(&team, &name, &req.rule, req.minutes, &req.reason).await?;
    Ok((axum::http::StatusCode::CREATED, Json(silence)))
}

/// Restarts, dead-letter retries and alert silences on objects the caller may see, newest first.
#[utoipa::path(get, path = "/api/v1/operations", responses((status = 200, body = [keystone_control::Operation])))]
pub async fn operations(
    State(s): State<ApiState>,
    Caller(who): Caller,
) -> Result<Json<Vec<keystone_control::Operation>>, ApiError> {
    Ok(Json(s.platform.store.operations(&who.scope(), None, 200).await?))
}
