use super::*;
use serde_json::json;
use std::collections::BTreeMap;

fn streams() -> BTreeMap<String, Option<serde_json::Value>> {
    let plays = json!({
        "type": "object",
        "required": ["user", "ts"],
        "properties": {
            "user": {"type": "string"},
            "userId": {"type": "integer"},
            "country": {"type": "string"},
            "bitrate": {"type": "integer"},
            "price": {"type": "number"},
            "ts": {"type": "string", "format": "date-time"},
            "device": {"type": "object", "properties": {"os": {"type": "string"}}}
        }
    });
    BTreeMap::from([("plays".to_owned(), Some(plays)), ("raw".to_owned(), None)])
}

fn ok(sql: &str) -> Query {
    plan(sql, &streams(), false).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn refused(sql: &str) -> SqlError {
    match plan(sql, &streams(), false) {
        Ok(q) => panic!("{sql} was accepted as {:?}", q.shape),
        Err(e) => e,
    }
}

fn columns(q: &Query) -> Vec<(&str, &str)> {
    q.output.iter().map(|c| (c.name.as_str(), c.type_name.as_str())).collect()
}

#[test]
fn projections_filters_and_functions_are_stateless() {
    let q = ok("SELECT user, bitrate * 2 AS doubled, upper(country) AS c, price > 1 AS dear, \
                CASE WHEN bitrate > 1000 THEN 'hd' ELSE 'sd' END AS quality, CAST(bitrate AS DOUBLE) AS b \
                FROM plays WHERE country = 'BR' AND bitrate IS NOT NULL");
    assert_eq!(q.shape, Shape::Stateless);
    assert_eq!(q.inputs, ["plays"]);
    assert_eq!(
        columns(&q),
        [
            ("user", "string"),
            ("doubled", "bigint"),
            ("c", "string"),
            ("dear", "boolean"),
            ("quality", "string"),
            ("b", "double")
        ]
    );
    assert!(q.operators[0].starts_with("Projection"), "{:?}", q.operators);
    assert!(q.operators.iter().any(|o| o.trim_start().starts_with("Filter")), "{:?}", q.operators);
}

#[test]
fn nested_fields_envelope_columns_and_case_sensitive_names_resolve() {
    let q = ok("SELECT device.os AS os, \"userId\", _id, _partition, _offset, _ingested_at FROM plays");
    assert_eq!(
        columns(&q),
        [
            ("os", "string"),
            ("userId", "bigint"),
            ("_id", "string"),
            ("_partition", "int"),
            ("_offset", "bigint"),
            ("_ingested_at", "timestamp")
        ]
    );
    // Unquoted identifiers keep their case too (JSON fields are case-sensitive, as in Flink).
    assert_eq!(columns(&ok("SELECT userId FROM plays")), [("userId", "bigint")]);
}

#[test]
fn group_windows_plan_with_their_keys_and_sizes() {
    let q = ok("SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS window_start, \
                TUMBLE_END(ts, INTERVAL '1' MINUTE) AS window_end, country, COUNT(*) AS plays, \
                COUNT(DISTINCT user) AS users, SUM(bitrate) AS total, AVG(price) AS avg_price, MAX(bitrate) AS top \
                FROM plays GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE), country");
    assert_eq!(
        q.shape,
        Shape::Windowed {
            window: Window::Tumble { size_ms: 60_000 },
            time_column: "ts".into(),
            keys: vec!["country".into()]
        }
    );
    assert_eq!(
        columns(&q),
        [
            ("window_start", "timestamp"),
            ("window_end", "timestamp"),
            ("country", "string"),
            ("plays", "bigint"),
            ("users", "bigint"),
            ("total", "bigint"),
            ("avg_price", "double"),
            ("top", "bigint")
        ]
    );
    let hop = ok("SELECT HOP_END(ts, INTERVAL '10' SECOND, INTERVAL '1' MINUTE) AS w, COUNT(*) AS n FROM plays \
                  GROUP BY HOP(ts, INTERVAL '10' SECOND, INTERVAL '1' MINUTE)");
    assert!(matches!(hop.shape, Shape::Windowed { window: Window::Hop { slide_ms: 10_000, size_ms: 60_000 }, .. }));
    let session = ok("SELECT user, SESSION_START(_ingested_at, INTERVAL '30' MINUTE) AS s, COUNT(*) AS n FROM plays \
                      GROUP BY SESSION(_ingested_at, INTERVAL '30' MINUTE), user");
    assert_eq!(
        session.shape,
        Shape::Windowed {
            window: Window::Session { gap_ms: 1_800_000 },
            time_column: "_ingested_at".into(),
            keys: vec!["user".into()]
        }
    );
}

#[test]
fn syntax_errors_come_back_with_line_and_column() {
    // `WHER` reads as an alias of `plays`, so the parser stops at `country`.
    let e = refused("SELECT user\nFROM plays\nWHER country = 'BR'");
    assert_eq!((e.line, e.column), (Some(3), Some(6)), "{e}");
    let e = refused("SELECT user,, country FROM plays");
    assert_eq!(e.line, Some(1), "{e}");
    assert!(e.to_string().starts_with("line 1, column "), "{e}");
}

#[test]
fn unknown_fields_and_streams_are_named() {
    let e = refused("SELECT user,\n  bogus FROM plays");
    assert!(e.message.contains("bogus"), "{e}");
    assert_eq!((e.line, e.column), (Some(2), Some(3)), "{e}");
    let e = refused("SELECT device.model FROM plays");
    assert!(e.message.contains("model"), "{e}");
    let e = refused("SELECT x FROM nowhere");
    assert!(e.message.contains("no stream named \"nowhere\"") && e.message.contains("plays"), "{e}");
    // A stream without a schema offers only the envelope.
    assert!(refused("SELECT user FROM raw").message.contains("user"));
    assert_eq!(ok("SELECT _key FROM raw").output.len(), 1);
}

#[test]
fn type_errors_are_refused() {
    let e = refused("SELECT user FROM plays WHERE bitrate = 'fast'");
    assert!(!e.message.is_empty());
    let e = refused("SELECT COUNT(*) AS n FROM plays GROUP BY TUMBLE(user, INTERVAL '1' MINUTE)");
    assert!(e.message.contains("timestamp"), "{e}");
    let e = refused("SELECT COUNT(*) AS n FROM plays GROUP BY TUMBLE(ts, INTERVAL '1' MONTH)");
    assert!(e.message.contains("days, hours, minutes"), "{e}");
    let e = refused("SELECT COUNT(*) AS n FROM plays GROUP BY HOP(ts, INTERVAL '7' SECOND, INTERVAL '1' MINUTE)");
    assert!(e.message.contains("multiple of its slide"), "{e}");
}

#[test]
fn unbounded_state_is_refused_with_what_to_add() {
    let sql = "SELECT country, COUNT(*) AS n FROM plays GROUP BY country";
    let e = refused(sql);
    assert!(e.message.contains("GROUP BY TUMBLE") && e.message.contains("state_ttl"), "{e}");
    let with_ttl = plan(sql, &streams(), true).unwrap();
    assert_eq!(with_ttl.shape, Shape::Updating { keys: vec!["country".into()] });
    let having =
        plan("SELECT country, COUNT(*) AS n FROM plays GROUP BY country HAVING COUNT(*) > 2", &streams(), true);
    assert!(having.unwrap_err().message.contains("HAVING"));
    assert!(refused("SELECT DISTINCT user FROM plays").message.contains("window"));
    assert!(refused("SELECT user FROM plays ORDER BY user").message.contains("ORDER BY"));
    assert!(refused("SELECT a.user FROM plays a JOIN plays b ON a.user = b.user").message.contains("join"));
    assert!(refused("SELECT user, ROW_NUMBER() OVER (PARTITION BY user ORDER BY ts) AS r FROM plays")
        .message
        .contains("OVER"));
    let dedupe = |order: &str, filter: &str| {
        format!(
            "SELECT user, country FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY user ORDER BY {order}) AS rn \
             FROM plays) WHERE {filter}"
        )
    };
    let shape = |sql: &str| plan(sql, &streams(), true).map(|q| q.shape);
    let keys = vec!["user".to_owned()];
    let first = Shape::Deduplicated { keys: keys.clone(), time_column: "ts".into(), keep: crate::Keep::First };
    assert_eq!(shape(&dedupe("ts", "rn = 1")), Ok(first.clone()));
    assert_eq!(shape(&dedupe("ts ASC", "1 >= rn")), Ok(first));
    let last = Shape::Deduplicated { keys, time_column: "ts".into(), keep: crate::Keep::Last };
    assert_eq!(shape(&dedupe("ts DESC", "rn < 2")), Ok(last));
    let refusal = |sql: String| shape(&sql).unwrap_err().message;
    assert!(refusal(dedupe("ts", "rn <= 3")).contains("top-3"));
    assert!(refusal(dedupe("ts", "country = 'BR'")).contains("rn = 1"));
    assert!(refusal(dedupe("bitrate + 1", "rn = 1")).contains("time column"));
    assert!(refused(&dedupe("ts", "rn = 1")).message.contains("state_ttl"));
    let rank = "SELECT user FROM (SELECT *, RANK() OVER (PARTITION BY user ORDER BY ts) AS r FROM plays) WHERE r = 1";
    assert!(refusal(rank.into()).contains("RANK is not supported"));
    assert!(refused("SELECT TUMBLE(ts, INTERVAL '1' MINUTE) AS w FROM plays").message.contains("GROUP BY"));
}

#[test]
fn functions_that_could_exhaust_memory_or_differ_on_replay_are_not_offered() {
    for sql in [
        "SELECT repeat(user, 1000000000) AS x FROM plays",
        "SELECT lpad(user, 1000000000) AS x FROM plays",
        "SELECT random() AS x FROM plays",
        "SELECT now() AS x FROM plays",
        "SELECT uuid() AS x FROM plays",
    ] {
        refused(sql);
    }
    assert_eq!(ok("SELECT upper(user) AS x, abs(bitrate) AS b FROM plays").output.len(), 2);
}

#[test]
fn one_select_and_nothing_else() {
    assert!(refused("").message.contains("empty"));
    assert!(refused("SELECT user FROM plays; SELECT user FROM plays").message.contains("2 statements"));
    assert!(refused("DELETE FROM plays").message.contains("SELECT"));
    assert!(refused(&format!("SELECT '{}' AS x FROM plays", "a".repeat(SQL_MAX_BYTES))).message.contains("longer"));
}

#[test]
fn the_streams_a_query_reads_are_found_without_planning() {
    assert_eq!(read_streams("SELECT a.x FROM plays a JOIN clicks c ON a.k = c.k, plays").unwrap(), ["plays", "clicks"]);
    assert_eq!(read_streams("SELECT x FROM \"page-views\"").unwrap(), ["page-views"]);
    assert!(read_streams("SELECT (").is_err());
}
