//! How routes and processors feed streams into streams (through a sink of kind stream), and the cycles
//! that would make events come round forever. Pure: the goal service gathers the feeds.

use std::collections::{BTreeMap, BTreeSet};

/// A route (`team/route`) that delivers what it reads from stream `from` into stream `to`
/// (both `team/stream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feed {
    pub route: String,
    pub from: String,
    pub to: String,
}

/// A cycle through a feed of `route`, if there is one, named stream by stream with the routes
/// between them (`alpha/a -> [alpha/r1] -> alpha/b -> [alpha/r2] -> alpha/a`).
pub fn cycle_through(feeds: &[Feed], route: &str) -> Option<String> {
    let mut out: BTreeMap<&str, Vec<&Feed>> = BTreeMap::new();
    for f in feeds {
        out.entry(f.from.as_str()).or_default().push(f);
    }
    for start in feeds.iter().filter(|f| f.route == route) {
        // Breadth-first from where the route delivers, back to where it reads.
        let mut came_by: BTreeMap<&str, &Feed> = BTreeMap::new();
        let mut seen = BTreeSet::from([start.to.as_str()]);
        let mut queue = std::collections::VecDeque::from([start.to.as_str()]);
        while let Some(at) = queue.pop_front() {
            if at == start.from {
                let mut path = vec![start];
                let mut node = at;
                let mut back = Vec::new();
                while node != start.to {
                    let f = came_by[node];
                    back.push(f);
                    node = f.from.as_str();
                }
                path.extend(back.into_iter().rev());
                let mut text = start.from.clone();
                for f in path {
                    text.push_str(&format!(" -> [{}] -> {}", f.route, f.to));
                }
                return Some(text);
            }
            for f in out.get(at).into_iter().flatten() {
                if seen.insert(f.to.as_str()) {
                    came_by.insert(f.to.as_str(), f);
                    queue.push_back(f.to.as_str());
                }
            }
        }
    }
    None
}

/// What a pending change makes of the feeds: a route's stream and sink, or a sink's target.
#[cfg(feature = "store")]
pub(crate) enum Proposed<'a> {
    /// Route `name` of `team` reads `stream` and delivers to its team's sink `sink`.
    Route { team: &'a str, name: &'a str, stream: &'a str, sink: &'a str },
    /// Sink `name` of `team` delivers into `target` (a stream sink's setting), or nowhere.
    Sink { team: &'a str, name: &'a str, target: Option<&'a str> },
    /// Processor `name` of `team` reads `streams` and delivers to its team's sink `sink`.
    Processor { team: &'a str, name: &'a str, streams: &'a [String], sink: &'a str },
}

/// Every feed of the goal state as it would be with `change`, read inside the write's
/// transaction (so two writes cannot each close half a cycle).
#[cfg(feature = "store")]
pub(crate) async fn feeds_with(
    tx: &mut crate::store::WriteTx,
    change: &Proposed<'_>,
) -> Result<Vec<Feed>, crate::store::StoreError> {
    use crate::model::{Kind, ProcessorSpec, SinkSpec, StreamRef};
    let mut targets: BTreeMap<(String, String), String> = BTreeMap::new();
    for o in tx.live(Kind::Sink).await? {
        let Ok(spec) = o.spec_as::<SinkSpec>() else { continue };
        if let Some(t) = spec.stream_target() {
            if let Ok(r) = StreamRef::parse(t, &o.team) {
                targets.insert((o.team.clone(), o.name.clone()), format!("{}/{}", r.team, r.stream));
            }
        }
    }
    if let Proposed::Sink { team, name, target } = change {
        let key = (team.to_string(), name.to_string());
        match target.and_then(|t| StreamRef::parse(t, team).ok()) {
            Some(r) => targets.insert(key, format!("{}/{}", r.team, r.stream)),
            None => targets.remove(&key),
        };
    }
    // Every job that reads streams and delivers to a sink, by label: a route (`team/name`) reads
    // one stream, a processor (`team/name (processor)`) those its query names.
    let mut readers: BTreeMap<String, (String, Vec<String>, String)> = BTreeMap::new();
    for o in tx.live(Kind::Route).await? {
        let field = |f: &str| o.spec.get(f).and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
        readers.insert(format!("{}/{}", o.team, o.name), (o.team.clone(), vec![field("stream")], field("sink")));
    }
    for o in tx.live(Kind::Processor).await? {
        let Ok(spec) = o.spec_as::<ProcessorSpec>() else { continue };
        let streams = keystone_sql::read_streams(&spec.sql).unwrap_or_default();
        readers.insert(processor_label(&o.team, &o.name), (o.team.clone(), streams, spec.sink.to_string()));
    }
    match change {
        Proposed::Route { team, name, stream, sink } => {
            readers.insert(format!("{team}/{name}"), (team.to_string(), vec![stream.to_string()], sink.to_string()));
        }
        Proposed::Processor { team, name, streams, sink } => {
            readers.insert(processor_label(team, name), (team.to_string(), streams.to_vec(), sink.to_string()));
        }
        Proposed::Sink { .. } => {}
    }
    Ok(readers
        .into_iter()
        .flat_map(|(label, (team, streams, sink))| {
            let to = targets.get(&(team.clone(), sink)).cloned();
            streams.into_iter().filter_map(move |stream| {
                Some(Feed { route: label.clone(), from: format!("{team}/{stream}"), to: to.clone()? })
            })
        })
        .collect())
}

/// How a processor appears in a cycle's description (routes appear as `team/name`).
pub fn processor_label(team: &str, name: &str) -> String {
    format!("{team}/{name} (processor)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(route: &str, from: &str, to: &str) -> Feed {
        Feed { route: route.into(), from: from.into(), to: to.into() }
    }

    #[test]
    fn a_cycle_is_named_stream_by_stream() {
        let feeds = [feed("a/r1", "a/x", "b/y"), feed("b/r2", "b/y", "a/z"), feed("a/r3", "a/z", "a/x")];
        assert_eq!(cycle_through(&feeds, "a/r3").unwrap(), "a/z -> [a/r3] -> a/x -> [a/r1] -> b/y -> [b/r2] -> a/z");
        assert!(cycle_through(&feeds, "a/r1").is_some());
        assert_eq!(cycle_through(&[feed("a/r", "a/x", "a/x")], "a/r").unwrap(), "a/x -> [a/r] -> a/x");
    }

    #[test]
    fn chains_and_diamonds_are_not_cycles() {
        let feeds = [
            feed("a/r1", "a/x", "a/y"),
            feed("a/r2", "a/x", "a/z"),
            feed("a/r3", "a/y", "a/w"),
            feed("a/r4", "a/z", "a/w"),
        ];
        for r in ["a/r1", "a/r2", "a/r3", "a/r4", "a/none"] {
            assert_eq!(cycle_through(&feeds, r), None);
        }
    }
}
