//! Declaring a source: its tables' streams must be the team's, its database a host the egress
//! policy lets Keystone reach, and its secrets stored apart (as a sink's are).

use super::{corrupt, to_json, GoalError};
use crate::model::*;
use crate::store::WriteTx;
use crate::validation::ValidationErrors;
use serde_json::Value;
use std::collections::BTreeMap;

/// The spec to store for `input` and the secret values to store beside it, or the field errors.
pub(super) async fn check_source(
    tx: &mut WriteTx,
    egress: &crate::egress::EgressPolicy,
    team_id: &str,
    team_name: &str,
    current: Option<&Object>,
    input: SourceInput,
    version: i64,
) -> Result<(Value, Vec<(String, String)>), GoalError> {
    let previous: Option<SourceSpec> = current.map(|c| c.spec_as()).transpose().map_err(corrupt)?;
    let kept: BTreeMap<String, SecretRef> = previous.map(|p| p.secrets).unwrap_or_default();
    input.validate(&kept.keys().cloned().collect::<Vec<_>>())?;
    let mut e = ValidationErrors::default();
    let others = sources_by_stream(tx, team_name, current.map(|c| c.name.as_str())).await?;
    for (i, t) in input.tables.iter().enumerate() {
        if tx.get(Kind::Stream, team_id, t.stream.as_str()).await?.is_none() {
            e.add(
                format!("tables[{i}].stream"),
                format!("no stream named {:?} in team {team_name:?}", t.stream.as_str()),
            );
        } else if let Some(other) = others.get(t.stream.as_str()) {
            e.add(
                format!("tables[{i}].stream"),
                format!("source {other:?} already captures into stream {:?}: one source per stream", t.stream.as_str()),
            );
        }
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
        tables: input.tables,
        secrets,
        state: input.state,
        tags: input.tags,
    };
    Ok((to_json(&spec), new_secrets))
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

/// The team's sources capturing into `stream`, by name (a stream they write cannot go).
pub(super) async fn sources_using(tx: &mut WriteTx, team_name: &str, stream: &str) -> Result<Vec<String>, GoalError> {
    let by_stream = sources_by_stream(tx, team_name, None).await?;
    Ok(by_stream.get(stream).cloned().into_iter().collect())
}
