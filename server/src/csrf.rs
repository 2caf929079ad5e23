//! Cross-site request forgery defence for the console: a state-changing request carrying the
//! session cookie must come from the console's own origin. Browsers always send `Origin` on such
//! requests (form posts and fetches), so a strict check needs no token in every form and keeps
//! forms working without JavaScript. The JSON API, ingest and `/metrics` authenticate only with a
//! bearer token (never the session cookie), which a foreign site cannot make a browser send, so
//! those paths are exempt: by path, never because a request carries some `Authorization` header
//! (a console request with a made-up one would otherwise pass). The session cookie is also
//! SameSite=Lax.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

#[derive(Clone)]
pub struct OriginPolicy {
    /// The configured public origin, if a proxy hides the browser's Host.
    pub public_origin: Option<String>,
}

pub async fn check_origin(State(policy): State<OriginPolicy>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) || is_token_only(req.uri().path()) {
        return next.run(req).await;
    }
    match verdict(req.headers(), policy.public_origin.as_deref()) {
        Ok(()) => next.run(req).await,
        Err(origin) => {
            tracing::warn!(method = %req.method(), path = %req.uri().path(), origin = ?origin, "Cross-origin state change refused.");
            (StatusCode::FORBIDDEN, "cross-origin request refused").into_response()
        }
    }
}

/// Paths that never read the session cookie: their callers authenticate with bearer tokens.
fn is_token_only(path: &str) -> bool {
    ["/api/v1", "/ingest", "/metrics"]
        .iter()
        .any(|p| path.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
}

/// `Ok` when the request may change state; otherwise the origin it claimed, for the log.
fn verdict(headers: &HeaderMap, public_origin: Option<&str>) -> Result<(), Option<String>> {
    let get = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    // Fall back to Referer for the rare browser that omits Origin on same-origin posts.
    let origin = get(header::ORIGIN).map(str::to_owned).or_else(|| {
        let (scheme, rest) = get(header::REFERER)?.split_once("://")?;
        Some(format!("{scheme}://{}", rest.split('/').next()?))
    });
    let allowed = match (&origin, public_origin, get(header::HOST)) {
        (Some(o), Some(public), _) => o == public,
        (Some(o), None, Some(host)) => o.split_once("://").is_some_and(|(_, rest)| rest == host),
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_paths_are_exempt() {
        for p in ["/api/v1", "/api/v1/teams/a/streams", "/ingest/plays", "/metrics"] {
            assert!(is_token_only(p), "{p}");
        }
        for p in ["/api/v10", "/ingestion", "/api/login", "/streams/new", "/metricsx"] {
            assert!(!is_token_only(p), "{p}");
        }
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.clone(), HeaderValue::from_str(v).unwrap())).collect()
    }

    #[test]
    fn same_origin_passes_and_foreign_or_missing_origin_fails() {
        let host = (header::HOST, "127.0.0.1:3000");
        assert!(verdict(&headers(&[host.clone(), (header::ORIGIN, "http://127.0.0.1:3000")]), None).is_ok());
        assert!(verdict(&headers(&[host.clone(), (header::ORIGIN, "http://evil.example")]), None).is_err());
        assert!(verdict(&headers(std::slice::from_ref(&host)), None).is_err());
        assert!(
            verdict(&headers(&[host.clone(), (header::REFERER, "http://127.0.0.1:3000/streams/new")]), None).is_ok()
        );
        assert!(
            verdict(&headers(&[host.clone(), (header::AUTHORIZATION, "Bearer ks_x")]), None).is_err(),
            "a console request is not exempt for carrying a bearer header"
        );
        let proxied = [(header::HOST, "10.0.0.5:3000"), (header::ORIGIN, "https://keystone.example.com")];
        assert!(verdict(&headers(&proxied), Some("https://keystone.example.com")).is_ok());
        assert!(verdict(&headers(&proxied), None).is_err());
    }
}
