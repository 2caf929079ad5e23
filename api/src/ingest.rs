//! The ingest proxy (`POST /ingest/{stream}`) and producer-token management.
//!
//! A producer token names one stream. Each request's events are parsed, checked, wrapped in
//! envelopes and appended durably; the response is 200 only once every event is on disk. One bad
//! event rejects the batch (400, with every bad event by index); a full disk answers 503 with
//! Retry-After. Nothing is acknowledged that is not fsynced.

use crate::caller::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::ApiState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keystone_control::producers;
use keystone_control::store::now_ms;
use keystone_control::{Object, ProducerTokenInfo, StreamSpec, ValidationErrors};
use keystone_engine::ingest::{parse_body, prepare, BodyFormat, IngestLimits, IngestTarget, Rejection};
use keystone_engine::log::{Log, LogError, Retention};
use keystone_engine::quota::{Quota, Refusal};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};

/// Compiled ingest settings per stream revision: the JSON Schema is compiled once, not per request.
#[derive(Default)]
pub struct IngestCache(Mutex<HashMap<(String, i64), Arc<IngestTarget>>>);

fn topic_of(o: &Object) -> String {
    o.stream_topic()
}

impl IngestCache {
    async fn target(
        &self,
        log: &keystone_engine::log::AnyLog,
        stream: &Object,
        default_quota: u32,
    ) -> Result<Arc<IngestTarget>, Response> {
        let key = (stream.id.clone(), stream.version);
        if let Some(t) = self.0.lock().expect("ingest cache").get(&key) {
            return Ok(t.clone());
        }
        let spec: StreamSpec = stream.spec_as().map_err(|_| internal("stream spec unreadable"))?;
        let schema = match &spec.schema {
            Some(s) => Some(jsonschema::validator_for(s).map_err(|_| internal("stored schema does not compile"))?),
            None => None,
        };
        let topic = topic_of(stream);
        let retention = Retention {
            max_age_ms: i64::from(spec.retention_hours) * 3_600_000,
            max_bytes_per_partition: spec.retention_bytes,
        };
        // Idempotent: makes sure the topic exists with the declared partitions before the first append.
        log.ensure_topic(&topic, spec.partitions, retention).await.map_err(log_error)?;
        let target = Arc::new(IngestTarget {
            topic,
            stream: format!("{}/{}", stream.team, stream.name),
            partitions: spec.partitions,
            key_field: spec.key_field,
            schema,
            round_robin: AtomicU32::new(0),
            // A stream without its own quota gets the platform's default one.
            quota: spec
                .max_events_per_second
                .or(Some(default_quota).filter(|q| *q > 0))
                .map(|q| Quota::per_second(q, std::time::Instant::now())),
        });
        let mut cache = self.0.lock().expect("ingest cache");
        cache.retain(|(id, _), _| id != &stream.id);
        cache.insert(key, target.clone());
        Ok(target)
    }
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    crate::error::respond(status, code, message.into(), Vec::new())
}

fn internal(what: &str) -> Response {
    tracing::error!(problem = what, "Ingest failed.");
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log")
}

fn log_error(e: LogError) -> Response {
    match e {
        LogError::Full => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the log is out of space; nothing was stored, retry later",
            );
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            r
        }
        other => {
            tracing::error!(error = %other, "Log append failed.");
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the log could not store the events; retry later",
            );
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
    }
}

/// Where each accepted event went.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub accepted: usize,
    /// `[partition, offset]` per event, in request order.
    pub offsets: Vec<(u32, u64)>,
}

/// Appends events to a stream. Body: one JSON object, a JSON array of objects, or NDJSON
/// (`Content-Type: application/x-ndjson`). Optional headers: `X-Keystone-Key` (partition key for
/// every event of the request) and `X-Event-<name>` (copied into each envelope's headers).
#[utoipa::path(post, path = "/ingest/{stream}", params(("stream" = String, Path)),
    request_body(content = Object, description = "An event object, an array of them, or NDJSON", content_type = "application/json"),
    responses((status = 200, body = Accepted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn ingest(
    State(s): State<ApiState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let target_stream = match token {
        None => None,
        Some(t) => match producers::stream_for_token(&s.platform.store, t).await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = ?e, "Producer token lookup failed.");
                return internal("token lookup");
            }
        },
    };
    let Some((object, producer)) = target_stream else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send the stream's producer token as 'Authorization: Bearer kp_...'",
        );
    };
    if object.name != stream {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this producer token is for stream {:?}", object.name),
        );
    }
    // Read only now: an unauthenticated request never makes the server read its body.
    let body = match read_body(body, s.max_body_bytes).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let target = match s.ingest.target(&s.platform.log, &object, s.default_max_events_per_second).await {
        Ok(t) => t,
        Err(response) => return response,
    };
    let format = BodyFormat::from_content_type(headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()));
    let events = match parse_body(format, &body) {
        Ok(e) if e.is_empty() => return error(StatusCode::BAD_REQUEST, "invalid", "the body holds no events"),
        Ok(e) if e.len() > s.max_events_per_request => {
            let msg = format!(
                "the request holds {} events; at most {} per request: send smaller batches",
                e.len(),
                s.max_events_per_request
            );
            return error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", msg);
        }
        Ok(e) => e,
        Err(msg) => return error(StatusCode::BAD_REQUEST, "invalid", msg),
    };
    let key = headers.get("x-keystone-key").and_then(|v| v.to_str().ok());
    let event_headers: BTreeMap<String, String> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().strip_prefix("x-event-")?.to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let limits = IngestLimits { max_event_bytes: s.max_event_bytes };
    let records = match prepare(&target, events, key, &event_headers, now_ms(), limits) {
        Ok(r) => r,
        Err(rejected) => {
            s.platform.meter.rejected(&target.topic, rejected.iter().map(|r| r.kind));
            return rejected_response(rejected);
        }
    };
    if let Some(quota) = &target.quota {
        match quota.take(records.len() as u64, std::time::Instant::now()) {
            Ok(()) => {}
            Err(Refusal::TooLarge { burst }) => {
                let msg = format!("the stream's quota allows at most {burst} events per request; send smaller batches");
                return error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", msg);
            }
            Err(Refusal::Wait(wait)) => {
                s.platform.meter.throttled(&target.topic, records.len() as u64);
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                let mut r = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("the stream is over its ingest quota; nothing was stored, retry in {secs} s"),
                );
                r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
                return r;
            }
        }
    }
    match s.platform.log.append(&target.topic, records).await {
        Ok(offsets) => {
            s.platform.meter.accepted(&target.topic, &producer, offsets.len() as u64, body.len() as u64, now_ms());
            Json(Accepted { accepted: offsets.len(), offsets }).into_response()
        }
        Err(e) => log_error(e),
    }
}

/// How many rejected events a response lists; the rest are counted (`rejected_total`).
const REJECTIONS_LISTED: usize = 100;

fn rejected_response(mut rejected: Vec<Rejection>) -> Response {
    let total = rejected.len();
    let message = if total > REJECTIONS_LISTED {
        format!("{total} event(s) rejected, the first {REJECTIONS_LISTED} listed; nothing was stored")
    } else {
        format!("{total} event(s) rejected; nothing was stored")
    };
    rejected.truncate(REJECTIONS_LISTED);
    let body =
        json!({"error": {"code": "rejected", "message": message}, "rejected": rejected, "rejected_total": total});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// The request body, up to `max` bytes (413 beyond).
async fn read_body(body: axum::body::Body, max: usize) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, max).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        let mut too_large = false;
        while let Some(s) = source {
            too_large |= s.to_string().contains("length limit exceeded");
            source = s.source();
        }
        if too_large {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the request body is larger than {max} bytes; send smaller batches"),
            )
        } else {
            error(StatusCode::BAD_REQUEST, "invalid", format!("the request body could not be read: {e}"))
        }
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProducerToken {
    pub name: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedProducerToken {
    /// Shown once; only its hash is stored.
    pub token: String,
    pub info: ProducerTokenInfo,
}

/// Creates a producer token for one stream (editors of its team).
#[utoipa::path(post, path = "/api/v1/producer-tokens/{team}/{stream}", request_body = NewProducerToken,
    params(("team" = String, Path), ("stream" = String, Path)),
    responses((status = 201, body = CreatedProducerToken), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create_token(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, stream)): Path<(String, String)>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let req: NewProducerToken =
        serde_json::from_slice(&body).map_err(|e| ValidationErrors::single("body", e.to_string()))?;
    let (info, token) = producers::create(&s.platform.store, &who, &team, &stream, &req.name).await?;
    Ok((StatusCode::CREATED, Json(CreatedProducerToken { token, info })))
}

/// The producer tokens of one stream (never the secrets).
#[utoipa::path(get, path = "/api/v1/producer-tokens/{team}/{stream}",
    params(("team" = String, Path), ("stream" = String, Path)),
    responses((status = 200, body = [ProducerTokenInfo]), (status = 404, body = ErrorBody)))]
pub async fn list_tokens(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, stream)): Path<(String, String)>,
) -> Result<Json<Vec<ProducerTokenInfo>>, ApiError> {
    Ok(Json(producers::list(&s.platform.store, &who, &team, &stream).await?))
}

/// Revokes a producer token; its producers get 401 from then on.
#[utoipa::path(delete, path = "/api/v1/producer-tokens/{team}/{stream}/{id}",
    params(("team" = String, Path), ("stream" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke_token(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, stream, id)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    producers::revoke(&s.platform.store, &who, &team, &stream, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EventsParams {
    #[serde(default)]
    pub partition: u32,
    /// First offset to read (default: the earliest retained).
    pub from: Option<u64>,
    /// Most events to return (default 50, at most 1000).
    pub limit: Option<usize>,
}

/// One stored event with its position.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StoredEvent {
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
    /// The envelope: id, stream, ingested_at, key, headers, payload.
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
}

/// Reads a stream's stored events, for inspection (viewers and up).
#[utoipa::path(get, path = "/api/v1/events/{team}/{stream}", params(("team" = String, Path), ("stream" = String, Path), EventsParams),
    responses((status = 200, body = [StoredEvent]), (status = 404, body = ErrorBody)))]
pub async fn events(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, stream)): Path<(String, String)>,
    axum::extract::Query(p): axum::extract::Query<EventsParams>,
) -> Result<Response, ApiError> {
    let object = keystone_control::goal::Goal::new(&s.platform.store, &who)
        .get(keystone_control::Kind::Stream, &team, &stream)
        .await?;
    let topic = topic_of(&object);
    let limit = p.limit.unwrap_or(50).clamp(1, 1000);
    let from = match p.from {
        Some(f) => f,
        None => match s.platform.log.resolve(&topic, p.partition, keystone_engine::log::StartAt::Earliest).await {
            Ok(o) => o,
            // Nothing ingested yet: the topic does not exist until the first event.
            Err(LogError::UnknownTopic(_)) => return Ok(Json(Vec::<StoredEvent>::new()).into_response()),
            Err(e) => return Ok(log_error(e)),
        },
    };
    match s.platform.log.read(&topic, p.partition, from, limit).await {
        Ok(records) => Ok(Json(
            records
                .into_iter()
                .map(|r| StoredEvent {
                    partition: p.partition,
                    offset: r.offset,
                    timestamp_ms: r.timestamp_ms,
                    event: serde_json::from_slice(&r.value).unwrap_or(serde_json::Value::Null),
                })
                .collect::<Vec<_>>(),
        )
        .into_response()),
        Err(LogError::UnknownTopic(_)) => Ok(Json(Vec::<StoredEvent>::new()).into_response()),
        Err(LogError::UnknownPartition { .. }) => {
            Err(ValidationErrors::single("partition", "no such partition").into())
        }
        Err(LogError::OffsetOutOfRange { earliest, .. }) => {
            Err(ValidationErrors::single("from", format!("no longer retained; the earliest offset is {earliest}"))
                .into())
        }
        Err(e) => Ok(log_error(e)),
    }
}

/// A stream's ingest figures: what this server's ingest proxy counted since it started, and the
/// log's durable end offset per partition (events ever appended).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StreamIngest {
    pub counted: keystone_control::IngestStats,
    /// Next offset per partition, i.e. events ever appended to it.
    pub log_end_offsets: Vec<u64>,
}

/// Ingest rate and totals of one stream.
#[utoipa::path(get, path = "/api/v1/teams/{team}/streams/{name}/ingest",
    params(("team" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = StreamIngest), (status = 404, body = ErrorBody)))]
pub async fn stream_stats(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((team, stream)): Path<(String, String)>,
) -> Result<Json<StreamIngest>, ApiError> {
    let object = keystone_control::goal::Goal::new(&s.platform.store, &who)
        .get(keystone_control::Kind::Stream, &team, &stream)
        .await?;
    let topic = topic_of(&object);
    Ok(Json(StreamIngest {
        counted: s.platform.meter.stats(&topic, now_ms()),
        log_end_offsets: s.platform.log.end_offsets(&topic),
    }))
}
