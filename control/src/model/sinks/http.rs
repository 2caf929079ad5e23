//! An HTTP sink's settings: a webhook receiving JSON batches, or an Elasticsearch/OpenSearch
//! `_bulk` endpoint.

use super::{Reader, SettingDoc};

pub(super) const SETTINGS: &[SettingDoc] = &[
    SettingDoc { key: "url", required: true, help: "http:// or https:// endpoint receiving JSON batches" },
    SettingDoc { key: "timeout_ms", required: false, help: "request timeout in milliseconds" },
    SettingDoc {
        key: "format",
        required: false,
        help: "json (a JSON array per batch, the default) or bulk (Elasticsearch/OpenSearch _bulk)",
    },
    SettingDoc { key: "index", required: false, help: "target index of the bulk format" },
];

pub(super) const SECRETS: &[SettingDoc] =
    &[SettingDoc { key: "authorization", required: false, help: "value of the Authorization header" }];

/// The default request timeout.
pub const HTTP_TIMEOUT_MS_DEFAULT: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpFormat {
    /// A JSON array of `{id, ingested_at, key, event}` per batch.
    Json,
    /// Elasticsearch/OpenSearch `_bulk` index actions into `index`, `_id` = event id.
    Bulk { index: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// An http(s) URL with a host.
    pub url: String,
    /// 1 to 300,000 ms.
    pub timeout_ms: u32,
    pub format: HttpFormat,
}

impl HttpSettings {
    pub(super) fn read(r: &mut Reader<'_>) -> HttpSettings {
        let url = r.required("url");
        if !url.is_empty() {
            r.http_url("url", &url);
        }
        let timeout_ms = r.number("timeout_ms", 1, 300_000).unwrap_or(HTTP_TIMEOUT_MS_DEFAULT);
        let format = match r.get("format") {
            None | Some("json") => HttpFormat::Json,
            Some("bulk") => match r.get("index") {
                Some(index) => HttpFormat::Bulk { index: index.to_owned() },
                None => {
                    r.error("index", "is required by the bulk format");
                    HttpFormat::Json
                }
            },
            Some(_) => {
                r.error("format", "must be json or bulk");
                HttpFormat::Json
            }
        };
        HttpSettings { url, timeout_ms, format }
    }
}
