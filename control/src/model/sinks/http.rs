//! An HTTP sink's settings: a webhook receiving JSON batches, or an Elasticsearch/OpenSearch
//! `_bulk` endpoint.

use super::{Reader, SettingDoc};

pub(super) const SETTINGS: &[SettingDoc] = &[
    SettingDoc { key: "url", required: true, help: "http:// or https:// endpoint receiving JSON batches" },
    SettingDoc { key: "timeout_ms", required: false, help: "request timeout in milliseconds" },
    SettingDoc {
        key: "format",
        required: false,
        help: "json (a JSON array per batch, the default), bulk (Elasticsearch/OpenSearch _bulk) or \
               bulk_changes (a CDC stream's changes applied to the index by primary key; the url ends in /_bulk)",
    },
    SettingDoc { key: "index", required: false, help: "target index of the bulk formats" },
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
    /// Change events applied to `index` through `_bulk`: one document per primary key, indexed
    /// or deleted, versioned by the change's position.
    BulkChanges { index: String },
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
            Some(format @ ("bulk" | "bulk_changes")) => match r.get("index").map(str::to_owned) {
                Some(index) if format == "bulk" => HttpFormat::Bulk { index },
                Some(index) => {
                    // A truncate is a `_delete_by_query` beside the `_bulk` endpoint.
                    if !url.split('?').next().unwrap_or_default().trim_end_matches('/').ends_with("/_bulk") {
                        r.error("url", "must be the _bulk endpoint (ending in /_bulk) for the bulk_changes format");
                    }
                    HttpFormat::BulkChanges { index }
                }
                None => {
                    r.error("index", format!("is required by the {format} format"));
                    HttpFormat::Json
                }
            },
            Some(_) => {
                r.error("format", "must be json, bulk or bulk_changes");
                HttpFormat::Json
            }
        };
        HttpSettings { url, timeout_ms, format }
    }
}
