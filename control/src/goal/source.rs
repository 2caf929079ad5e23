//! Declaring a source: its tables' streams must be the team's, its database a host the egress
//! policy lets Keystone reach, and its secrets stored apart (as a sink's are).

use super::{append, corrupt, to_json, GoalError};
use crate::model::*;
use crate::name::Name;
use crate::store::{Write, WriteTx};
use crate::validation::ValidationErrors;
use serde_json::Value;
use std::collections::BTreeMap;

/// What declaring a source stores: its spec, the secret values to store beside it, and the
/// streams to create for its tables (those the team does not have yet).
pub(super) struct CheckedSource {
    pub spec: Value,
    pub secrets: Vec<(String, String)>,
    pub new_streams: Vec<(Name, StreamSpec)>,
}

/// Partitions and retention of a stream created for a source's table.
const CREATED_PARTITIONS: u32 = 4;
const CREATED_RETENTION_HOURS: u32 = 7 * 24;

/// The spec to store for `input`, the secrets and the streams to create, or the field errors.
#[allow(clippy::too_many_arguments)]
pub(super) async fn check_source(
    tx: &mut WriteTx,
    egress: &crate::egress::EgressPolicy,
    team_id: &str,
    team_name: &str,
    source_name: &str,
    current: Option<&Object>,
    input: SourceInput,
    version: i64,
) -> Result<CheckedSource, GoalError> {
    let previous: Option<SourceSpec> = current.map(|c| c.spec_as()).transpose().map_err(corrupt)?;
    let kept: BTreeMap<String, SecretRef> = previous.map(|p| p.secrets).unwrap_or_default();
    input.validate(&kept.keys().cloned().collect::<Vec<_>>())?;
    let mut e = ValidationErrors::default();
    let others = sources_by_stream(tx, team_name, current.map(|c| c.name.as_str())).await?;
    let mut tables = Vec::with_capacity(input.tables.len());
    let mut new_streams = Vec::new();
    for (i, t) in input.tables.iter().enumerate() {
        let field = format!("tables[{i}].stream");
        let Some(stream) = t.stream.clone().or_else(|| default_stream_name(source_name, &t.table)) else {
            e.add(field, format!("name the stream for {:?} (no valid default name)", t.table));
            continue;
        };
        if tables.iter().any(|o: &SourceTable| o.stream == stream) {
            e.add(
                field,
                format!("stream {:?} already takes another table's changes: one stream per table", stream.as_str()),
            );
        } else if let Some(other) = others.get(stream.as_str()) {
            e.add(
                field,
                format!("source {other:?} already captures into stream {:?}: one source per stream", stream.as_str()),
            );
        } else if tx.get(Kind::Stream, team_id, stream.as_str()).await?.is_none() {
            let spec = StreamSpec {
                description: format!("Changes of {}, captured by source {source_name}", qualified_table(&t.table)),
                partitions: CREATED_PARTITIONS,
                retention_hours: CREATED_RETENTION_HOURS,
                retention_bytes: None,
                key_field: None,
                // Derived from the table's columns when the capture first reads them.
                schema: None,
                max_events_per_second: None,
                tags: Vec::new(),
            };
            new_streams.push((stream.clone(), spec));
        }
        tables.push(SourceTable { table: t.table.clone(), stream });
    }
    e.into_result(())?;
    if let Some(url) = input.secrets.get("url").filter(|v| !v.is_empty()) {
        let destination = url::Url::parse(url).ok().and_then(|u| {
            let host = u.host_str()?.trim_start_matches('[').trim_end_matches(']').to_owned();
            Some((host, Some(u.port().unwrap_or(5432))))
        });
        crate::egress::check_destinations(egress, &destination.into_iter().collect::<Vec<_>>())
            .await
            .map_err(|err| ValidationErrors::single("secrets.url", err.to_string()))?;
    }
    let mut secrets = kept;
    let mut new_secrets = Vec::new();
    for (k, v) in input.secrets.iter().filter(|(_, v)| !v.is_empty()) {
        secrets.insert(k.clone(), SecretRef { set_in_version: version });
        new_secrets.push((k.clone(), v.clone()));
    }
    let spec = SourceSpec {
        kind: input.kind,
        description: input.description,
        tables,
        secrets,
        state: input.state,
        tags: input.tags,
        alerts: input.alerts,
    };
    Ok(CheckedSource { spec: to_json(&spec), secrets: new_secrets, new_streams })
}

/// Creates the streams a source's tables need, in the source's transaction, by its author.
pub(super) async fn create_streams(
    tx: &mut WriteTx,
    streams: &[(Name, StreamSpec)],
    team_id: &str,
    team_name: &str,
    source_name: &str,
    author: (&str, &str),
) -> Result<(), GoalError> {
    for (name, spec) in streams {
        let spec = to_json(spec);
        let write = Write {
            kind: Kind::Stream,
            object_id: None,
            team_id,
            team_name,
            name: name.as_str(),
            op: Op::Create,
            expected_version: 0,
            spec: &spec,
            author_id: author.0,
            author_name: author.1,
            reason: &format!("created for source {source_name:?}"),
        };
        append(tx, write, name).await?;
    }
    Ok(())
}

/// The team's streams other sources (than `except`) capture into, with the source's name.
async fn sources_by_stream(
    tx: &mut WriteTx,
    team_name: &str,
    except: Option<&str>,
) -> Result<BTreeMap<String, String>, GoalError> {
    let mut by_stream = BTreeMap::new();
    for o in tx.live(Kind::Source).await? {
        if o.team != team_name || Some(o.name.as_str()) == except {
            continue;
        }
        let Ok(spec) = o.spec_as::<SourceSpec>() else { continue };
        for t in spec.tables {
            by_stream.insert(t.stream.as_str().to_owned(), o.name.clone());
        }
    }
    Ok(by_stream)
}

/// A stream a source captures into has the schema the source derives from its table: a change
/// that leaves the schema out keeps it (a pipeline file need not repeat it), one that sets
/// another is refused. Keystone itself (the capture) sets it.
pub(super) async fn keep_derived_schema(
    tx: &mut WriteTx,
    who: &crate::auth::Principal,
    team_name: &str,
    stream: &str,
    before: &StreamSpec,
    submitted: &mut StreamSpec,
) -> Result<(), GoalError> {
    if who.is_system() || submitted.schema == before.schema {
        return Ok(());
    }
    let Some(source) = sources_using(tx, team_name, stream).await?.pop() else { return Ok(()) };
    if submitted.schema.is_none() {
        submitted.schema = before.schema.clone();
        return Ok(());
    }
    Err(ValidationErrors::single(
        "schema",
        format!("is kept by source {source:?}, derived from its table's columns (leave it out to keep it)"),
    )
    .into())
}

/// The team's sources capturing into `stream`, by name (a stream they write cannot go).
pub(super) async fn sources_using(tx: &mut WriteTx, team_name: &str, stream: &str) -> Result<Vec<String>, GoalError> {
    let by_stream = sources_by_stream(tx, team_name, None).await?;
    Ok(by_stream.get(stream).cloned().into_iter().collect())
}

impl super::Goal<'_> {
    /// Restarts a source's job: a new restart generation, part of the job's fingerprint, so the
    /// process running it starts it again (from its slot) on its next pass. Editors of the team.
    pub async fn restart_source(&self, team: &str, name: &str, detail: &str) -> Result<i64, GoalError> {
        let source = self.operable(Kind::Source, team, name).await?;
        Ok(self.store().request_restart(&source.id, &self.who().display, detail).await?)
    }
}
