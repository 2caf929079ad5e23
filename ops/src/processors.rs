//! Operations on processors: the preview of a query as typed on its stream's newest events.

use crate::{Ops, OpsError};
use keystone_control::store::StoreError;
use keystone_control::{PreviewError, ProcessorPreview, ProcessorPreviewRequest, StreamSpec, ValidationErrors};
use keystone_sql::run::Settings;

/// Most events one preview reads.
const PREVIEW_MAX: usize = 5000;
/// Most unusable events a preview lists.
const ERRORS_SHOWN: usize = 20;

impl Ops<'_> {
    /// Runs a processor's query, as typed, over its stream's newest events and closes every
    /// window: the results a sink would hold, the late events and those the query cannot use,
    /// and the plan. Saves and delivers nothing. Editors of the team (the query runs here).
    pub async fn preview_processor(
        &self,
        team: &str,
        req: &ProcessorPreviewRequest,
    ) -> Result<ProcessorPreview, OpsError> {
        let explain = req.explain_request();
        let (query, streams, stream) = self.goal().processor_preview_target(team, &explain).await?;
        let spec: StreamSpec = stream.spec_as().map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let input = explain.inputs.get(&stream.name).cloned().unwrap_or_default();
        let settings = Settings {
            partitions: spec.partitions,
            lateness_ms: i64::from(input.allowed_lateness_ms),
            idle_timeout_ms: i64::from(input.idle_timeout_ms()),
            event_time: input.time_column().to_owned(),
            state_ttl_ms: req.state_ttl_s.map(|s| i64::from(s) * 1000),
            result_prefix: format!("preview/{team}"),
        };
        let limit = req.limit.unwrap_or(500).clamp(1, PREVIEW_MAX);
        let log = self.platform.log.as_ref();
        let topic = stream.stream_topic();
        let run =
            keystone_engine::job::processor::preview(log, &topic, spec.partitions, &query, &streams, settings, limit)
                .await?
                .map_err(|e| ValidationErrors::single("sql", e.to_string()))?;
        let results = run
            .results
            .iter()
            .map(|r| serde_json::from_str(&r.json).unwrap_or_else(|_| serde_json::Value::String(r.json.clone())))
            .collect();
        let errors = run
            .errors
            .into_iter()
            .take(ERRORS_SHOWN)
            .map(|(partition, offset, reason)| PreviewError { partition, offset, reason })
            .collect();
        Ok(ProcessorPreview {
            plan: keystone_control::goal::describe(&query),
            events: run.events,
            results,
            late: run.late,
            errors,
        })
    }
}
