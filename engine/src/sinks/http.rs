//! HTTP sink, in two wire formats:
//! - `json`: a webhook. Each batch is POSTed as a JSON array of `{id, ingested_at, key, event}`.
//!   2xx accepts the batch; 408, 429, 5xx and network errors are transient; any other 4xx
//!   refuses it, and the batch is then re-sent one event at a time to find which events the
//!   endpoint refuses (those go to the dead-letter queue, the rest are delivered).
//! - `bulk`: the Elasticsearch/OpenSearch `_bulk` API (NDJSON `index` actions, `_id` = event id,
//!   so a retried batch overwrites instead of duplicating). The response is read item by item:
//!   a 429 item makes the batch transient (retried whole, harmless thanks to `_id`), any other
//!   failed item is refused with the server's reason.
//! - `bulk_changes`: change events applied to an index, one document per primary key, versioned
//!   by position (see `bulk_changes`).

use super::{bulk_changes, ConfigError, Sink, SinkError, SinkEvent};
use keystone_control::egress::EgressPolicy;
pub use keystone_control::HttpFormat;
use keystone_control::{HttpSettings, SinkErrorKind};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSinkConfig {
    pub url: String,
    pub timeout: Duration,
    /// Sent as the Authorization header; never logged.
    pub authorization: Option<String>,
    pub format: HttpFormat,
}

impl HttpSinkConfig {
    pub fn new(settings: &HttpSettings, secrets: &BTreeMap<String, String>) -> HttpSinkConfig {
        HttpSinkConfig {
            url: settings.url.clone(),
            timeout: Duration::from_millis(settings.timeout_ms.into()),
            authorization: secrets.get("authorization").filter(|a| !a.is_empty()).cloned(),
            format: settings.format.clone(),
        }
    }
}

pub struct HttpSink {
    config: HttpSinkConfig,
    client: reqwest::Client,
    egress: Arc<EgressPolicy>,
}

/// How the endpoint answered one request.
enum Answer {
    Accepted(Option<Value>),
    Transient(SinkErrorKind, String),
    Refused(String),
}

/// A request error with its cause (reqwest's own text omits it: an egress refusal would read
/// only "error sending request").
fn describe_request_error(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

fn is_transient(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT
}

impl HttpSink {
    pub fn new(config: HttpSinkConfig, egress: &Arc<EgressPolicy>) -> Result<HttpSink, ConfigError> {
        let client = crate::egress::http_client(egress, config.timeout)
            .map_err(|e| ConfigError::new("settings.url", format!("cannot build an HTTP client: {e}")))?;
        Ok(HttpSink { config, client, egress: egress.clone() })
    }

    async fn post(&self, content_type: &str, body: Vec<u8>) -> Answer {
        self.post_to(&self.config.url, content_type, body).await
    }

    async fn post_to(&self, url: &str, content_type: &str, body: Vec<u8>) -> Answer {
        if let Err(denied) = crate::egress::check_url(&self.egress, url) {
            return Answer::Transient(SinkErrorKind::Connection, denied.to_string());
        }
        let mut req = self.client.post(url).header("content-type", content_type).body(body);
        if let Some(auth) = &self.config.authorization {
            req = req.header("authorization", auth);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            // The error text names the URL but never the headers, so no secret leaks here.
            Err(e) => {
                let kind = if e.is_timeout() { SinkErrorKind::Timeout } else { SinkErrorKind::Connection };
                return Answer::Transient(kind, format!("request failed: {}", describe_request_error(&e)));
            }
        };
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let excerpt: String = text.chars().take(300).collect();
        if status.is_success() {
            Answer::Accepted(serde_json::from_str(&text).ok())
        } else if is_transient(status) {
            let kind = match status {
                StatusCode::TOO_MANY_REQUESTS => SinkErrorKind::Throttled,
                StatusCode::REQUEST_TIMEOUT => SinkErrorKind::Timeout,
                _ => SinkErrorKind::Server,
            };
            Answer::Transient(kind, format!("HTTP {status}: {excerpt}"))
        } else {
            Answer::Refused(format!("HTTP {status}: {excerpt}"))
        }
    }

    async fn deliver_json(&self, batch: &[SinkEvent]) -> Result<(), SinkError> {
        let body = |events: &[SinkEvent]| serde_json::to_vec(events).expect("sink events serialise");
        match self.post("application/json", body(batch)).await {
            Answer::Accepted(_) => Ok(()),
            Answer::Transient(kind, why) => Err(SinkError::transient(kind, why)),
            Answer::Refused(why) if batch.len() == 1 => Err(SinkError::Rejected(vec![(0, why)])),
            Answer::Refused(_) => {
                // Find the poison events: one request per event.
                let mut refused = Vec::new();
                for (i, e) in batch.iter().enumerate() {
                    match self.post("application/json", body(std::slice::from_ref(e))).await {
                        Answer::Accepted(_) => {}
                        Answer::Transient(kind, why) => return Err(SinkError::transient(kind, why)),
                        Answer::Refused(why) => refused.push((i, why)),
                    }
                }
                SinkError::refusing(refused)
            }
        }
    }

    async fn deliver_bulk(&self, index: &str, batch: &[SinkEvent]) -> Result<(), SinkError> {
        let mut body = Vec::with_capacity(batch.len() * 300);
        for e in batch {
            serde_json::to_writer(&mut body, &json!({"index": {"_index": index, "_id": e.id}})).expect("json");
            body.push(b'\n');
            serde_json::to_writer(&mut body, &e.event).expect("json");
            body.push(b'\n');
        }
        let events: Vec<usize> = (0..batch.len()).collect();
        let refused = self.bulk(body, &events, |_, status| (200..300).contains(&status)).await?;
        SinkError::refusing(refused)
    }

    /// Applies change events (see `bulk_changes`): bulk requests between truncates, each
    /// truncate a `_delete_by_query`.
    async fn deliver_bulk_changes(&self, index: &str, batch: &[SinkEvent]) -> Result<(), SinkError> {
        let (steps, mut refused) = bulk_changes::plan(index, batch);
        for step in steps {
            match step {
                bulk_changes::Step::Bulk { body, events } => {
                    refused.extend(self.bulk(body, &events, bulk_changes::applied).await?);
                }
                bulk_changes::Step::Truncate { lsn, seq, .. } => {
                    let (url, query) = bulk_changes::truncate_request(&self.config.url, index, lsn, seq);
                    let body = serde_json::to_vec(&query).expect("json");
                    match self.post_to(&url, "application/json", body).await {
                        Answer::Accepted(_) => {}
                        Answer::Transient(kind, why) => return Err(SinkError::transient(kind, why)),
                        // Not the event's fault (the index, the rights): retried, surfaced.
                        Answer::Refused(why) => return Err(SinkError::transient(SinkErrorKind::Server, why)),
                    }
                }
            }
        }
        refused.sort_by_key(|(i, _)| *i);
        SinkError::refusing(refused)
    }

    /// POSTs one `_bulk` request whose action `i` is batch event `events[i]`, and reads its
    /// answer item by item: the events refused (by batch index), or why the whole request is
    /// to be retried. `ok(action, status)` says which item statuses count as applied.
    async fn bulk(
        &self,
        body: Vec<u8>,
        events: &[usize],
        ok: impl Fn(&str, u64) -> bool,
    ) -> Result<Vec<(usize, String)>, SinkError> {
        let answer = match self.post("application/x-ndjson", body).await {
            Answer::Accepted(Some(v)) => v,
            Answer::Accepted(None) => {
                return Err(SinkError::transient(SinkErrorKind::Server, "the bulk response is not JSON"))
            }
            Answer::Transient(kind, why) => return Err(SinkError::transient(kind, why)),
            // The whole request was refused (bad index name, auth): not the events' fault, so
            // retry with backoff and surface the error rather than dead-letter every event.
            Answer::Refused(why) => return Err(SinkError::transient(SinkErrorKind::Server, why)),
        };
        if answer.get("errors").and_then(Value::as_bool) != Some(true) {
            return Ok(Vec::new());
        }
        let items = answer.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
        if items.len() != events.len() {
            return Err(SinkError::transient(
                SinkErrorKind::Server,
                format!("the bulk response lists {} items for {} actions", items.len(), events.len()),
            ));
        }
        let mut refused = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let (action, result) = item
                .as_object()
                .and_then(|o| o.iter().next())
                .map(|(a, r)| (a.as_str(), r.clone()))
                .unwrap_or(("", Value::Null));
            let status = result.get("status").and_then(Value::as_u64).unwrap_or(0);
            if ok(action, status) {
                continue;
            }
            if status == 429 || status >= 500 {
                let kind = if status == 429 { SinkErrorKind::Throttled } else { SinkErrorKind::Server };
                return Err(SinkError::transient(kind, format!("bulk item {i} answered {status}")));
            }
            let reason = result
                .pointer("/error/reason")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("bulk item answered {status}"));
            refused.push((events[i], reason));
        }
        Ok(refused)
    }
}

impl Sink for HttpSink {
    async fn deliver(&self, batch: &[SinkEvent]) -> Result<(), SinkError> {
        match &self.config.format {
            HttpFormat::Json => self.deliver_json(batch).await,
            HttpFormat::Bulk { index } => self.deliver_bulk(index, batch).await,
            HttpFormat::BulkChanges { index } => self.deliver_bulk_changes(index, batch).await,
        }
    }
}
