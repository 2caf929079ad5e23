//! Backfills: a route's job temporarily reads another source — another stream, or NDJSON files a
//! file sink wrote (imported into a scratch topic) — through the route's own filter, projection
//! and sink, up to the end that source had when the backfill started, then switches back to its
//! stream. Its position in the stream is kept: the backfill has positions of its own.

use serde::{Deserialize, Serialize};

/// Where a backfill reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "from")]
pub enum BackfillSource {
    /// A stream of the route's team (`name`) or of another team the caller may read
    /// (`team/name`).
    Stream { stream: String },
    /// The NDJSON and Parquet files under the folder of a file sink the caller can read (its
    /// `path` setting, e.g. `plays/br`, or a folder below it), in file-name order, in the sink's
    /// store (its local folder or its bucket). `sink` (`name` or `team/name`) says which sink's
    /// store when sinks in different stores share the path.
    Files {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sink: Option<String>,
    },
}

impl BackfillSource {
    pub fn describe(&self) -> String {
        match self {
            BackfillSource::Stream { stream } => format!("stream {stream}"),
            BackfillSource::Files { path, sink: None } => format!("files under {path}"),
            BackfillSource::Files { path, sink: Some(sink) } => format!("files under {path} of sink {sink}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BackfillState {
    Running,
    /// Every event up to the recorded end was delivered; the job is back on its stream.
    Done,
    Cancelled,
}

impl BackfillState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackfillState::Running => "running",
            BackfillState::Done => "done",
            BackfillState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<BackfillState> {
        [BackfillState::Running, BackfillState::Done, BackfillState::Cancelled].into_iter().find(|b| b.as_str() == s)
    }
}

/// One backfill of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct Backfill {
    pub id: String,
    pub route_id: String,
    pub source: BackfillSource,
    /// The log topic read (the stream's, or the scratch topic files were imported into).
    pub topic: String,
    pub partitions: u32,
    /// Where each partition ended when the backfill started: (partition, next offset).
    pub end: Vec<(u32, u64)>,
    pub state: BackfillState,
    pub started_by: String,
    pub started_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// How far it got: (partition, next offset to deliver).
    #[serde(default)]
    pub positions: Vec<(u32, u64)>,
}

impl Backfill {
    /// Every partition delivered up to its recorded end.
    pub fn complete(&self) -> bool {
        self.end.iter().all(|(p, end)| *end == 0 || self.positions.iter().any(|(q, at)| q == p && at >= end))
    }

    /// Events still to deliver.
    pub fn remaining(&self) -> u64 {
        self.end
            .iter()
            .map(|(p, end)| {
                let at = self.positions.iter().find(|(q, _)| q == p).map_or(0, |(_, at)| *at);
                end.saturating_sub(at)
            })
            .sum()
    }
}

/// The scratch topic a files backfill is imported into.
pub fn import_topic(team: &str, route: &str, backfill_id: &str) -> String {
    format!("backfill.{team}.{route}.{backfill_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backfill(end: Vec<(u32, u64)>, positions: Vec<(u32, u64)>) -> Backfill {
        Backfill {
            id: "b".into(),
            route_id: "r".into(),
            source: BackfillSource::Stream { stream: "archive".into() },
            topic: "alpha.archive".into(),
            partitions: 2,
            end,
            state: BackfillState::Running,
            started_by: "alice".into(),
            started_at: 0,
            finished_at: None,
            positions,
        }
    }

    #[test]
    fn complete_once_every_partition_reached_its_end() {
        assert!(!backfill(vec![(0, 10), (1, 5)], vec![(0, 10)]).complete());
        assert_eq!(backfill(vec![(0, 10), (1, 5)], vec![(0, 10)]).remaining(), 5);
        assert!(backfill(vec![(0, 10), (1, 5)], vec![(0, 10), (1, 7)]).complete());
        assert!(backfill(vec![(0, 0), (1, 3)], vec![(1, 3)]).complete(), "an empty partition is done");
    }

    #[test]
    fn sources_read_from_json() {
        let s: BackfillSource = serde_json::from_str(r#"{"from": "files", "path": "plays/br"}"#).unwrap();
        assert_eq!(s, BackfillSource::Files { path: "plays/br".into(), sink: None });
        let s: BackfillSource = serde_json::from_str(r#"{"from": "files", "path": "p", "sink": "lake"}"#).unwrap();
        assert_eq!(s.describe(), "files under p of sink lake");
        let s: BackfillSource = serde_json::from_str(r#"{"from": "stream", "stream": "beta/plays"}"#).unwrap();
        assert_eq!(s.describe(), "stream beta/plays");
    }
}
