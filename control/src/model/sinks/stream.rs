//! A stream sink's settings: another Keystone stream events are re-routed into.

use super::{Reader, SettingDoc};
use crate::name::Name;

pub(super) const SETTINGS: &[SettingDoc] = &[SettingDoc {
    key: "stream",
    required: true,
    help: "target stream: a name in the same team, or team/name (you must be able to edit that team)",
}];

pub(super) const SECRETS: &[SettingDoc] = &[];

/// A stream named by a stream sink: `name` (the sink's own team) or `team/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRef {
    pub team: String,
    pub stream: String,
}

impl StreamRef {
    /// Parses a target, defaulting the team to `own_team`.
    pub fn parse(target: &str, own_team: &str) -> Result<StreamRef, String> {
        let (team, stream) = match target.split_once('/') {
            Some((t, s)) => (t, s),
            None => (own_team, target),
        };
        for part in [team, stream].into_iter().filter(|p| !p.is_empty()) {
            Name::parse(part).map_err(|e| format!("{part:?}: {e}"))?;
        }
        if stream.is_empty() || (target.contains('/') && team.is_empty()) {
            return Err("must be a stream name or team/stream".into());
        }
        Ok(StreamRef { team: team.to_owned(), stream: stream.to_owned() })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// As declared: `name` or `team/name`; [`StreamSettings::target`] resolves it.
    pub stream: String,
}

impl StreamSettings {
    pub(super) fn read(r: &mut Reader<'_>) -> StreamSettings {
        let stream = r.required("stream");
        if !stream.is_empty() {
            if let Err(msg) = StreamRef::parse(&stream, "") {
                r.error("stream", msg);
            }
        }
        StreamSettings { stream }
    }

    /// The target stream of a sink of team `own_team`.
    pub fn target(&self, own_team: &str) -> Result<StreamRef, String> {
        StreamRef::parse(&self.stream, own_team)
    }
}
