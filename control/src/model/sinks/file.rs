//! A file sink's settings: NDJSON or Parquet files under the team's folder of the data
//! directory, or under a key prefix of an S3-compatible bucket.

use super::{Reader, SettingDoc};
use crate::model::is_relative_path;

pub(super) const SETTINGS: &[SettingDoc] = &[
    SettingDoc {
        key: "path",
        required: true,
        help: "relative directory: under the data directory's sinks/ folder, or the key prefix in the bucket",
    },
    SettingDoc { key: "format", required: false, help: "ndjson (the default) or parquet" },
    SettingDoc {
        key: "roll_bytes",
        required: false,
        help: "roll a file at about this many bytes of events (1024 to 268435456); with roll_seconds, \
               replaces the route's batch size and max latency as the file's bounds",
    },
    SettingDoc {
        key: "roll_seconds",
        required: false,
        help: "roll a file when its first event has waited this long (1 to 3600)",
    },
    SettingDoc {
        key: "store_url",
        required: false,
        help: "s3://bucket of an S3-compatible object store; empty for the data directory",
    },
    SettingDoc { key: "endpoint", required: false, help: "S3 endpoint URL (MinIO, R2, ...); empty for AWS" },
    SettingDoc { key: "region", required: false, help: "S3 region" },
    SettingDoc {
        key: "ambient_credentials",
        required: false,
        help: "true: without keys, use the host's own cloud credentials (admins only); by default \
               a bucket without keys is read and written unsigned",
    },
];

pub(super) const SECRETS: &[SettingDoc] = &[
    SettingDoc { key: "access_key_id", required: false, help: "S3 access key id" },
    SettingDoc { key: "secret_access_key", required: false, help: "S3 secret access key" },
];

/// How a file sink encodes its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// One JSON event a line.
    Ndjson,
    /// Columnar, Snappy-compressed; the schema is inferred from each file's events.
    Parquet,
}

impl FileFormat {
    /// The format a `format` setting names; `None` (absent) is NDJSON.
    pub fn parse(setting: Option<&str>) -> Option<FileFormat> {
        match setting {
            None | Some("ndjson") => Some(FileFormat::Ndjson),
            Some("parquet") => Some(FileFormat::Parquet),
            Some(_) => None,
        }
    }

    /// The file name extension, which is how a reader (a backfill) knows the format.
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Ndjson => "ndjson",
            FileFormat::Parquet => "parquet",
        }
    }
}

/// An S3-compatible bucket holding a file sink's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSettings {
    /// `s3://bucket`, without a key prefix (that is the sink's `path`).
    pub url: String,
    /// An http(s) endpoint (MinIO, R2, ...); `None` for AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Without keys, use the host's own cloud credentials (an admin's choice per sink).
    pub ambient_credentials: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSettings {
    /// Relative, without `..` or empty segments: below the team's folder, or the key prefix.
    pub path: String,
    pub format: FileFormat,
    /// 1024 to 268,435,456 bytes.
    pub roll_bytes: Option<u32>,
    /// 1 to 3600 s.
    pub roll_seconds: Option<u32>,
    /// `None`: the data directory's `sinks/<team>/` folder.
    pub bucket: Option<BucketSettings>,
}

impl FileSettings {
    pub(super) fn read(r: &mut Reader<'_>) -> FileSettings {
        let path = r.required("path");
        if !path.is_empty() && !is_relative_path(&path) {
            r.error("path", "must be a relative path without '..' or empty segments");
        }
        let format = FileFormat::parse(r.get("format")).unwrap_or_else(|| {
            r.error("format", "must be ndjson or parquet");
            FileFormat::Ndjson
        });
        let roll_bytes = r.number("roll_bytes", 1024, 268_435_456);
        let roll_seconds = r.number("roll_seconds", 1, 3600);
        let bucket = match r.get("store_url") {
            None => {
                for k in ["endpoint", "region", "ambient_credentials"] {
                    if r.get(k).is_some() {
                        r.error(k, "applies only with a store_url");
                    }
                }
                None
            }
            Some(url) => {
                let url = url.to_owned();
                let bucket = url.strip_prefix("s3://").unwrap_or_default();
                if bucket.is_empty() || bucket.contains('/') {
                    r.error("store_url", "must be s3://bucket (the key prefix goes in path)");
                }
                let endpoint = r.get("endpoint").map(str::to_owned);
                if let Some(ep) = &endpoint {
                    r.http_url("endpoint", ep);
                }
                let ambient_credentials = match r.get("ambient_credentials") {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(_) => {
                        r.error("ambient_credentials", "must be true or false");
                        false
                    }
                };
                Some(BucketSettings { url, endpoint, region: r.get("region").map(str::to_owned), ambient_credentials })
            }
        };
        FileSettings { path, format, roll_bytes, roll_seconds, bucket }
    }
}
