//! Declarations as code: `keystone apply -f pipeline.yaml`, `keystone diff -f` and `keystone get`
//! read and change a team's streams, sinks, routes and processors through the JSON API, so pipelines can live
//! in git. Applying a file twice changes nothing; every change is shown as a field-level diff
//! first; a bad file is refused whole, with the line of the problem, before anything is sent.
//!
//! ```yaml
//! team: payments
//! streams:
//!   plays: {partitions: 3, retention_hours: 24}
//! sinks:
//!   lake: {kind: file, settings: {path: plays/br}}
//! routes:
//!   br-plays:
//!     stream: plays
//!     sink: lake
//!     filter: event.country == "BR"
//! processors:
//!   plays-per-minute:
//!     sql: SELECT TUMBLE_END(_ingested_at, INTERVAL '1' MINUTE) AS minute, COUNT(*) AS plays
//!          FROM plays GROUP BY TUMBLE(_ingested_at, INTERVAL '1' MINUTE)
//!     sink: lake
//! ```

use keystone_control::diff::{diff, show, Change};
use keystone_control::goal::Declaration;
use keystone_control::{Kind, SinkInput};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The file's shape. Unknown top-level keys are refused (a typo must not silently do nothing).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    team: String,
    #[serde(default)]
    streams: BTreeMap<String, serde_norway::Value>,
    #[serde(default)]
    sinks: BTreeMap<String, serde_norway::Value>,
    #[serde(default)]
    routes: BTreeMap<String, serde_norway::Value>,
    #[serde(default)]
    processors: BTreeMap<String, serde_norway::Value>,
    #[serde(default)]
    sources: BTreeMap<String, serde_norway::Value>,
}

/// One declared object, parsed and checked.
#[derive(Debug, Clone)]
pub struct Declared {
    pub kind: Kind,
    pub name: String,
    /// 1-based line of the object's name in the file.
    pub line: usize,
    /// The spec as sent to the API.
    pub spec: Value,
    /// The spec as the server stores it, for comparing (sink secrets left out: they cannot be
    /// read back).
    pub comparable: Value,
}

/// A parsed file: every object in dependency order (streams, sinks, routes, processors).
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub team: String,
    pub objects: Vec<Declared>,
}

/// Why a file was refused; nothing was sent.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct FileError {
    pub file: String,
    pub message: String,
}

/// Parses and checks a pipeline file without any I/O.
pub fn parse(file: &str, text: &str) -> Result<Pipeline, FileError> {
    let fail = |message: String| FileError { file: file.to_owned(), message };
    let parsed: PipelineFile = serde_norway::from_str(text).map_err(|e| {
        fail(match e.location() {
            Some(l) => format!("line {} column {}: {}", l.line(), l.column(), strip_location(&e.to_string())),
            None => e.to_string(),
        })
    })?;
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    let sections = [
        (Kind::Stream, &parsed.streams),
        (Kind::Source, &parsed.sources),
        (Kind::Sink, &parsed.sinks),
        (Kind::Route, &parsed.routes),
        (Kind::Processor, &parsed.processors),
    ];
    for (kind, section) in sections {
        for (name, yaml) in section {
            let line = line_of(text, kind.plural(), name);
            let spec: Value = match serde_json::to_value(yaml) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("line {line}: {} {name}: {e}", kind.plural()));
                    continue;
                }
            };
            match check(kind, name, &spec) {
                Ok(comparable) => objects.push(Declared { kind, name: name.clone(), line, spec, comparable }),
                Err(errors) => {
                    for e in errors {
                        problems.push(format!("line {line}: {}.{name}{e}", kind.plural()));
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(fail(problems.join("\n")));
    }
    Ok(Pipeline { team: parsed.team, objects })
}

/// serde_norway appends " at line L column C" to messages; the location is reported first.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// Validates one spec as the server would (without the checks that need the database), and
/// returns it as the server stores it. Errors read `.field: why` (or `: why` for the whole
/// spec), to follow the object's name.
fn check(kind: Kind, name: &str, spec: &Value) -> Result<Value, Vec<String>> {
    let errors = |e: keystone_control::ValidationErrors| -> Vec<String> {
        let field = |f: &str| match f.strip_prefix("spec").unwrap_or(f) {
            "" => String::new(),
            rest if rest.starts_with('.') => rest.to_owned(),
            rest => format!(".{rest}"),
        };
        e.0.iter().map(|f| format!("{}: {}", field(&f.field), f.message)).collect()
    };
    let decl = Declaration::from_json(kind, spec.clone()).map_err(errors)?;
    let stored = match decl {
        Declaration::Stream(s) => {
            s.validate().map_err(errors)?;
            serde_json::to_value(s)
        }
        Declaration::Sink(s) => {
            // Required secrets may already be stored; the server checks that part.
            let keys: Vec<String> = s.kind.secrets().iter().map(|d| d.key.to_owned()).collect();
            s.validate(&keys).map_err(errors)?;
            Ok(comparable_sink(&s))
        }
        Declaration::Route(r) => {
            r.validate().map_err(errors)?;
            serde_json::to_value(r)
        }
        // The query is planned by the server, against the streams as they are when it arrives.
        Declaration::Processor(p) => {
            p.validate().map_err(errors)?;
            serde_json::to_value(p)
        }
        Declaration::Source(mut s) => {
            // The URL may already be stored; the server checks that part.
            s.validate(&["url".to_owned()]).map_err(errors)?;
            // A table without a stream goes to the one the server names for it.
            for t in &mut s.tables {
                t.stream = t.stream.take().or_else(|| keystone_control::default_stream_name(name, &t.table));
            }
            serde_json::to_value(s).map(without_secrets)
        }
        Declaration::Team(_) | Declaration::Policy(_) => {
            return Err(vec![format!(
                "a pipeline file declares streams, sources, sinks, routes and processors, not {kind}s"
            )])
        }
    };
    stored.map_err(|e| vec![e.to_string()])
}

/// A stream spec without the schema a source derived for it (see `docs/sources.md`).
fn without_derived_schema(mut spec: Value) -> Value {
    let derived = spec.pointer("/schema/x-keystone-derived-from").is_some();
    if let (true, Some(o)) = (derived, spec.as_object_mut()) {
        o.remove("schema");
    }
    spec
}

/// A spec without its secrets, which are never read back.
fn without_secrets(mut spec: Value) -> Value {
    if let Some(o) = spec.as_object_mut() {
        o.remove("secrets");
    }
    spec
}

fn comparable_sink(s: &SinkInput) -> Value {
    json!({"kind": s.kind, "description": s.description, "settings": s.settings, "tags": s.tags})
}

/// The line declaring `name` under the top-level key `section` (block style, as written by
/// people); the section's line for flow style; 1 if neither is found.
fn line_of(text: &str, section: &str, name: &str) -> usize {
    let mut in_section = false;
    let mut section_line = 1;
    for (i, line) in text.lines().enumerate() {
        let indented = line.starts_with(' ') || line.starts_with('\t');
        if !indented && !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            in_section = line.trim_end().starts_with(&format!("{section}:"));
            if in_section {
                section_line = i + 1;
            }
            continue;
        }
        let key = line.trim_start().trim_start_matches('"').trim_start_matches('\'');
        if in_section
            && key.strip_prefix(name).is_some_and(|rest| rest.trim_start_matches(['"', '\'']).starts_with(':'))
        {
            return i + 1;
        }
    }
    section_line
}

/// What applying would do to one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Create,
    Update { version: i64, changes: Vec<Change> },
    Unchanged,
}

/// What `apply` did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Changes applied at once.
    pub applied: usize,
    /// One line per change held back as a change request.
    pub held: Vec<String>,
}

/// The API, as `apply` uses it.
pub struct Client {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Client {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// The current spec and version of an object, `None` if it does not exist.
    async fn current(&self, team: &str, kind: Kind, name: &str) -> anyhow::Result<Option<(i64, Value)>> {
        let (status, body) =
            self.call(reqwest::Method::GET, &format!("/api/v1/teams/{team}/{}/{name}", kind.plural()), None).await?;
        match status {
            200 => Ok(Some((body["version"].as_i64().unwrap_or(0), body["spec"].clone()))),
            404 => Ok(None),
            _ => anyhow::bail!("reading {} {team}/{name}: {}", kind, api_error(status, &body)),
        }
    }

    /// The plan of every object of the file, in file order.
    pub async fn plan(&self, p: &Pipeline) -> anyhow::Result<Vec<(Declared, Plan)>> {
        let mut out = Vec::new();
        for d in &p.objects {
            let plan = match self.current(&p.team, d.kind, &d.name).await? {
                None => Plan::Create,
                Some((version, current)) => {
                    let current = if d.kind == Kind::Sink {
                        json!({"kind": current["kind"], "description": current["description"],
                               "settings": current["settings"], "tags": current.get("tags").cloned().unwrap_or(json!([]))})
                    } else if d.kind == Kind::Source {
                        without_secrets(current)
                    } else if d.kind == Kind::Stream && d.comparable.get("schema").is_none() {
                        // A schema a source derives is kept when a file leaves it out.
                        without_derived_schema(current)
                    } else {
                        current
                    };
                    let changes = diff(&current, &d.comparable);
                    if changes.is_empty() {
                        Plan::Unchanged
                    } else {
                        Plan::Update { version, changes }
                    }
                }
            };
            out.push((d.clone(), plan));
        }
        Ok(out)
    }

    /// Applies a plan (creates and updates only; objects missing from the file are left alone).
    /// Each update names the version it was planned against, so a change made by someone else
    /// in between is refused rather than overwritten. A change the approval policy holds back
    /// comes back as a change request, listed in the outcome.
    pub async fn apply(&self, team: &str, plan: &[(Declared, Plan)], reason: &str) -> anyhow::Result<Outcome> {
        let mut applied = 0;
        let mut held = Vec::new();
        for (d, p) in plan {
            let collection = format!("/api/v1/teams/{team}/{}", d.kind.plural());
            let (status, body) = match p {
                Plan::Unchanged => continue,
                Plan::Create => {
                    let body = json!({"name": d.name, "spec": d.spec, "reason": reason});
                    self.call(reqwest::Method::POST, &collection, Some(body)).await?
                }
                Plan::Update { version, .. } => {
                    let body = json!({"spec": d.spec, "reason": reason, "expected_version": version});
                    self.call(reqwest::Method::PUT, &format!("{collection}/{}", d.name), Some(body)).await?
                }
            };
            if status == 202 {
                let request = &body["change_request"];
                held.push(format!(
                    "line {}: {} {team}/{} waits for an admin's approval as change request #{} ({})",
                    d.line,
                    d.kind,
                    d.name,
                    request["id"],
                    request["needs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
                continue;
            }
            if !(200..300).contains(&status) {
                anyhow::bail!(
                    "line {}: {} {team}/{} was refused: {} ({applied} earlier change(s) of this file were applied)",
                    d.line,
                    d.kind,
                    d.name,
                    api_error(status, &body)
                );
            }
            applied += 1;
        }
        Ok(Outcome { applied, held })
    }

    /// Every object of a team's kind, as a pipeline file section would declare it.
    pub async fn get(&self, team: &str, kind: Kind) -> anyhow::Result<Vec<(String, Value)>> {
        let (status, body) =
            self.call(reqwest::Method::GET, &format!("/api/v1/teams/{team}/{}", kind.plural()), None).await?;
        if status != 200 {
            anyhow::bail!("listing {} of {team}: {}", kind.plural(), api_error(status, &body));
        }
        Ok(body
            .as_array()
            .map(|objects| {
                objects.iter().filter_map(|o| Some((o["name"].as_str()?.to_owned(), o["spec"].clone()))).collect()
            })
            .unwrap_or_default())
    }
}

fn api_error(status: u16, body: &Value) -> String {
    let e = &body["error"];
    let mut msg = format!("HTTP {status}: {}", e["message"].as_str().unwrap_or("no details"));
    if let Some(fields) = e["fields"].as_array() {
        for f in fields {
            let _ = write!(msg, "; {}: {}", f["field"].as_str().unwrap_or("?"), f["message"].as_str().unwrap_or("?"));
        }
    }
    msg
}

/// The plan as people read it: one line per object, then its changed fields.
pub fn render(team: &str, plan: &[(Declared, Plan)]) -> String {
    let mut out = String::new();
    for (d, p) in plan {
        let what = format!("{} {team}/{}", d.kind, d.name);
        match p {
            Plan::Create => {
                let _ = writeln!(out, "+ create {what}");
            }
            Plan::Unchanged => {
                let _ = writeln!(out, "= unchanged {what}");
            }
            Plan::Update { version, changes } => {
                let _ = writeln!(out, "~ update {what} (v{version} -> v{})", version + 1);
                for c in changes {
                    let _ = writeln!(out, "    {}: {} -> {}", c.path, show(&c.before), show(&c.after));
                }
            }
        }
    }
    out
}

/// A team's objects as a pipeline file (what `keystone get` prints).
pub fn to_yaml(team: &str, sections: &[(Kind, Vec<(String, Value)>)]) -> anyhow::Result<String> {
    let mut root = serde_json::Map::new();
    root.insert("team".into(), Value::String(team.to_owned()));
    for (kind, objects) in sections {
        let mut section = serde_json::Map::new();
        for (name, spec) in objects {
            let mut spec = spec.clone();
            if matches!(kind, Kind::Sink | Kind::Source) {
                // Secrets are never read back; a file declares them only to set them.
                spec = without_secrets(spec);
            }
            section.insert(name.clone(), spec);
        }
        root.insert(kind.plural().to_owned(), Value::Object(section));
    }
    Ok(serde_norway::to_string(&Value::Object(root))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"team: alpha
# The plays pipeline.
streams:
  plays: {partitions: 2, retention_hours: 24}
sinks:
  lake:
    kind: file
    settings: {path: plays}
routes:
  br-plays:
    stream: plays
    sink: lake
    filter: event.country == "BR"
"#;

    #[test]
    fn a_file_parses_into_objects_in_dependency_order_with_their_lines() {
        let p = parse("p.yaml", FILE).unwrap();
        assert_eq!(p.team, "alpha");
        let found: Vec<(Kind, &str, usize)> = p.objects.iter().map(|o| (o.kind, o.name.as_str(), o.line)).collect();
        assert_eq!(found, [(Kind::Stream, "plays", 4), (Kind::Sink, "lake", 6), (Kind::Route, "br-plays", 10)]);
        // Stored form: defaults filled in, so comparing with the server's copy is exact.
        assert_eq!(p.objects[2].comparable["batch_size"], 500);
    }

    #[test]
    fn bad_yaml_and_bad_values_name_their_line_and_nothing_passes() {
        let broken = "team: alpha\nstreams:\n  plays: {partitions: 2\n";
        let e = parse("p.yaml", broken).unwrap_err().to_string();
        assert!(e.starts_with("p.yaml: line 4 column 1:") || e.starts_with("p.yaml: line 3"), "{e}");
        let bad = FILE.replace("filter: event.country == \"BR\"", "batch_size: 0\n    filter: event.country ==");
        let e = parse("p.yaml", &bad).unwrap_err().to_string();
        assert!(e.contains("line 10: routes.br-plays.batch_size: must be between 1 and"), "{e}");
        let typo = FILE.replace("sinks:", "sink:");
        let e = parse("p.yaml", &typo).unwrap_err().to_string();
        assert!(e.contains("unknown field `sink`"), "{e}");
        let wrong_type = FILE.replace("partitions: 2", "partitions: two");
        let e = parse("p.yaml", &wrong_type).unwrap_err().to_string();
        assert!(e.contains("line 4: streams.plays.partitions:"), "{e}");
        let missing = FILE.replace(", retention_hours: 24", "");
        let e = parse("p.yaml", &missing).unwrap_err().to_string();
        assert!(e.contains("line 4: streams.plays: missing field `retention_hours`"), "{e}");
    }

    #[test]
    fn processors_are_declared_after_what_they_read_and_checked_like_the_rest() {
        let file = format!(
            "{FILE}processors:\n  per-minute:\n    sql: SELECT COUNT(*) AS n FROM plays GROUP BY TUMBLE(_ingested_at, INTERVAL '1' MINUTE)\n    sink: lake\n"
        );
        let p = parse("p.yaml", &file).unwrap();
        let last = p.objects.last().unwrap();
        assert_eq!((last.kind, last.name.as_str(), last.line), (Kind::Processor, "per-minute", 15));
        let bad = format!("{file}    state_ttl_s: 0\n");
        let e = parse("p.yaml", &bad).unwrap_err().to_string();
        assert!(e.contains("line 15: processors.per-minute.state_ttl_s: must be between 1 and"), "{e}");
    }

    #[test]
    fn the_plan_reads_like_a_review() {
        let p = parse("p.yaml", FILE).unwrap();
        let change = Change { path: "filter".into(), before: Some(json!("a")), after: Some(json!("b")) };
        let plan = vec![
            (p.objects[0].clone(), Plan::Unchanged),
            (p.objects[1].clone(), Plan::Create),
            (p.objects[2].clone(), Plan::Update { version: 3, changes: vec![change] }),
        ];
        assert_eq!(
            render("alpha", &plan),
            "= unchanged stream alpha/plays\n+ create sink alpha/lake\n~ update route alpha/br-plays (v3 -> v4)\n    filter: \"a\" -> \"b\"\n"
        );
    }
}
