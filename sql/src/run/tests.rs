//! The operators against models computed independently in the tests: every window and key's
//! aggregates from the events themselves.

use super::*;
use crate::plan::plan;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

fn streams() -> BTreeMap<String, Option<Value>> {
    let plays = json!({
        "type": "object",
        "properties": {
            "user": {"type": "string"},
            "country": {"type": "string"},
            "bitrate": {"type": "integer"},
            "ts": {"type": "string", "format": "date-time"},
            "device": {"type": "object", "properties": {"os": {"type": "string"}}}
        }
    });
    BTreeMap::from([("plays".to_owned(), Some(plays))])
}

fn pipeline(sql: &str, partitions: u32, lateness_ms: i64) -> Pipeline {
    pipeline_with_ttl(sql, partitions, lateness_ms, None)
}

/// A pipeline whose event time is its window's column, or ingest time.
fn pipeline_with_ttl(sql: &str, partitions: u32, lateness_ms: i64, state_ttl_ms: Option<i64>) -> Pipeline {
    let query = plan(sql, &streams(), state_ttl_ms.is_some()).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let event_time = match &query.shape {
        Shape::Windowed { time_column, .. } => time_column.clone(),
        _ => "_ingested_at".to_owned(),
    };
    let settings = Settings {
        partitions,
        lateness_ms,
        idle_timeout_ms: 60_000,
        event_time,
        state_ttl_ms,
        result_prefix: "alpha/p@1".into(),
    };
    Pipeline::new(&query, &streams(), settings).unwrap()
}

/// An event as the test keeps it: id, partition, offset, ingest time (the event time of most
/// tests) and payload.
#[derive(Debug, Clone)]
struct Ev {
    id: String,
    partition: u32,
    offset: u64,
    at: i64,
    payload: String,
}

impl Ev {
    fn input(&self) -> InputEvent<'_> {
        InputEvent {
            id: &self.id,
            key: None,
            ingested_at: self.at,
            partition: self.partition,
            offset: self.offset,
            payload: self.payload.as_bytes(),
        }
    }
}

/// A repeatable pseudo-random sequence (no dependency, same on every machine).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// `n` plays over two partitions, each partition's times mostly rising with some disorder
/// (up to 3 s back), 100 to 400 ms apart.
fn plays(n: usize, seed: u64) -> Vec<Ev> {
    let mut rng = Lcg(seed);
    let mut clock = [1_000_000i64, 1_000_000];
    let countries = ["BR", "US", "FR"];
    (0..n)
        .map(|i| {
            let partition = rng.next(2) as u32;
            clock[partition as usize] += 100 + rng.next(300) as i64;
            let at = clock[partition as usize] - rng.next(3000) as i64;
            let payload = json!({
                "user": format!("u{}", rng.next(7)),
                "country": countries[rng.next(3) as usize],
                "bitrate": 100 * (1 + rng.next(30)),
            });
            Ev { id: format!("e{i:05}"), partition, offset: i as u64, at, payload: payload.to_string() }
        })
        .collect()
}

/// Feeds events in batches of `batch` per partition turn; returns every result and late index.
fn run(p: &mut Pipeline, events: &[Ev], batch: usize) -> (Vec<ResultRow>, Vec<String>) {
    let mut results = Vec::new();
    let mut late = Vec::new();
    for chunk in events.chunks(batch) {
        for partition in 0..2 {
            let part: Vec<&Ev> = chunk.iter().filter(|e| e.partition == partition).collect();
            let inputs: Vec<InputEvent<'_>> = part.iter().map(|e| e.input()).collect();
            let out = p.process(partition, &inputs, 0).unwrap();
            assert!(out.invalid.is_empty(), "{:?}", out.invalid);
            late.extend(out.late.iter().map(|&i| part[i].id.clone()));
            results.extend(out.results);
        }
    }
    (results, late)
}

/// Closes every window: an event far in the future on each partition.
fn flush(p: &mut Pipeline, offset: u64) -> Vec<ResultRow> {
    let mut out = Vec::new();
    for partition in 0..2 {
        let e = Ev {
            id: format!("end{partition}"),
            partition,
            offset,
            at: 1 << 50,
            payload: json!({"user": "end", "country": "ZZ", "bitrate": 0}).to_string(),
        };
        out.extend(p.process(partition, &[e.input()], 0).unwrap().results);
    }
    out.retain(|r| !r.json.contains("\"ZZ\""));
    out
}

/// Results as canonical JSON (keys sorted), to compare with the models'.
fn rows(results: &[ResultRow]) -> BTreeSet<String> {
    results.iter().map(|r| serde_json::from_str::<Value>(&r.json).unwrap().to_string()).collect()
}

/// Whole-second windows of a time in ms, as `TUMBLE_START` prints them.
fn iso(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // January 1970 plus `days`: the times of these tests are minutes after the epoch.
    let millis = ms.rem_euclid(1000);
    let frac = if millis == 0 { String::new() } else { format!(".{millis:03}") };
    format!("1970-01-{:02}T{:02}:{:02}:{:02}{frac}Z", 1 + days, rest / 3600, rest % 3600 / 60, rest % 60)
}

#[test]
fn a_stateless_query_keeps_each_events_id_and_time() {
    let mut p = pipeline("SELECT user, bitrate * 2 AS doubled, device.os AS os FROM plays WHERE country = 'BR'", 1, 0);
    assert!(p.is_stateless());
    let events = [
        Ev {
            id: "a".into(),
            partition: 0,
            offset: 0,
            at: 10,
            payload: r#"{"user":"u1","country":"BR","bitrate":3,"device":{"os":"ios"}}"#.into(),
        },
        Ev {
            id: "b".into(),
            partition: 0,
            offset: 1,
            at: 11,
            payload: r#"{"user":"u2","country":"US","bitrate":4}"#.into(),
        },
        Ev {
            id: "c".into(),
            partition: 0,
            offset: 2,
            at: 12,
            payload: r#"{"user":"u3","country":"BR","extra":[1]}"#.into(),
        },
        Ev {
            id: "d".into(),
            partition: 0,
            offset: 3,
            at: 13,
            payload: r#"{"user":"u4","country":"BR","bitrate":"fast"}"#.into(),
        },
    ];
    let inputs: Vec<InputEvent<'_>> = events.iter().map(Ev::input).collect();
    let out = p.process(0, &inputs, 0).unwrap();
    let got: Vec<(String, String, i64)> =
        out.results.iter().map(|r| (r.id.clone(), r.json.clone(), r.time_ms)).collect();
    assert_eq!(
        got,
        [
            ("a".into(), r#"{"user":"u1","doubled":6,"os":"ios"}"#.into(), 10),
            ("c".into(), r#"{"user":"u3","doubled":null,"os":null}"#.into(), 12),
        ]
    );
    // A value of the wrong type is refused with its reason; the others still run.
    assert_eq!(out.invalid.len(), 1);
    assert_eq!(out.invalid[0].0, 3);
    assert!(!out.invalid[0].1.is_empty());
}

/// The tumbling-window model: per (window, country), count, distinct users, sum and max.
fn tumbling_model(events: &[Ev], size: i64) -> BTreeSet<String> {
    let mut groups: BTreeMap<(i64, String), (i64, BTreeSet<String>, i64, i64)> = BTreeMap::new();
    for e in events {
        let v: Value = serde_json::from_str(&e.payload).unwrap();
        let start = e.at.div_euclid(size) * size;
        let g = groups.entry((start, v["country"].as_str().unwrap().to_owned())).or_default();
        let bitrate = v["bitrate"].as_i64().unwrap();
        g.0 += 1;
        g.1.insert(v["user"].as_str().unwrap().to_owned());
        g.2 += bitrate;
        g.3 = g.3.max(bitrate);
    }
    groups
        .into_iter()
        .map(|((start, country), (n, users, sum, max))| {
            json!({"window_start": iso(start), "window_end": iso(start + size), "country": country,
                   "plays": n, "users": users.len(), "total": sum, "top": max})
            .to_string()
        })
        .collect()
}

const TUMBLING: &str = "SELECT TUMBLE_START(_ingested_at, INTERVAL '5' SECOND) AS window_start, \
    TUMBLE_END(_ingested_at, INTERVAL '5' SECOND) AS window_end, country, COUNT(*) AS plays, \
    COUNT(DISTINCT user) AS users, SUM(bitrate) AS total, MAX(bitrate) AS top \
    FROM plays GROUP BY TUMBLE(_ingested_at, INTERVAL '5' SECOND), country";

#[test]
fn tumbling_windows_equal_the_model_over_out_of_order_events() {
    let events = plays(3000, 7);
    // Lateness above the disorder: nothing is late, everything counts.
    let mut p = pipeline(TUMBLING, 2, 3000);
    let (mut results, late) = run(&mut p, &events, 97);
    assert!(late.is_empty(), "{late:?}");
    assert!(!results.is_empty(), "windows close as the watermark passes them");
    results.extend(flush(&mut p, 10_000));
    assert_eq!(rows(&results), tumbling_model(&events, 5000));
    // Each window and key once, with a deterministic id.
    let ids: BTreeSet<&str> = results.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), results.len());
    assert_eq!(p.state_rows(), 1, "only the flush events' window stays open");
}

#[test]
fn late_events_are_returned_and_not_counted() {
    let events = plays(2000, 11);
    // No lateness: an event behind the watermark whose window closed is late.
    let mut p = pipeline(TUMBLING, 2, 0);
    let (mut results, late) = run(&mut p, &events, 50);
    results.extend(flush(&mut p, 10_000));
    assert!(!late.is_empty(), "this disorder makes some events late");
    let counted: Vec<Ev> = events.iter().filter(|e| !late.contains(&e.id)).cloned().collect();
    assert_eq!(rows(&results), tumbling_model(&counted, 5000));
    // Every late event was indeed behind a closed window: replaying the model's watermark
    // (per partition maxima before its batch), its window ended at or before it.
    let late_set: BTreeSet<&String> = late.iter().collect();
    let mut maxima = [None::<i64>; 2];
    for chunk in events.chunks(50) {
        for partition in 0..2u32 {
            let watermark = maxima.iter().copied().collect::<Option<Vec<i64>>>().map(|m| m.into_iter().min().unwrap());
            for e in chunk.iter().filter(|e| e.partition == partition) {
                let end = e.at.div_euclid(5000) * 5000 + 5000;
                let is_late = watermark.is_some_and(|w| end <= w);
                assert_eq!(late_set.contains(&e.id), is_late, "{e:?} against {watermark:?}");
            }
            if let Some(m) = chunk.iter().filter(|e| e.partition == partition).map(|e| e.at).max() {
                let slot = &mut maxima[partition as usize];
                *slot = Some(slot.map_or(m, |x| x.max(m)));
            }
        }
    }
}

#[test]
fn hopping_windows_count_each_event_in_every_window_it_falls_in() {
    let sql = "SELECT HOP_START(_ingested_at, INTERVAL '2' SECOND, INTERVAL '6' SECOND) AS s, user, COUNT(*) AS n \
               FROM plays GROUP BY HOP(_ingested_at, INTERVAL '2' SECOND, INTERVAL '6' SECOND), user";
    let events = plays(1500, 3);
    let mut p = pipeline(sql, 2, 3000);
    let (mut results, late) = run(&mut p, &events, 64);
    assert!(late.is_empty());
    results.extend(flush(&mut p, 10_000));
    results.retain(|r| !r.json.contains("\"end\""));
    let mut model: BTreeMap<(i64, String), i64> = BTreeMap::new();
    for e in &events {
        let user = serde_json::from_str::<Value>(&e.payload).unwrap()["user"].as_str().unwrap().to_owned();
        let mut start = e.at.div_euclid(2000) * 2000;
        while start > e.at - 6000 {
            *model.entry((start, user.clone())).or_default() += 1;
            start -= 2000;
        }
    }
    let expected: BTreeSet<String> =
        model.into_iter().map(|((s, user), n)| json!({"s": iso(s), "user": user, "n": n}).to_string()).collect();
    assert_eq!(rows(&results), expected);
}

#[test]
fn session_windows_split_on_gaps_and_merge_across_batches() {
    let sql = "SELECT user, SESSION_START(_ingested_at, INTERVAL '1' SECOND) AS s, \
               SESSION_END(_ingested_at, INTERVAL '1' SECOND) AS e, COUNT(*) AS n, SUM(bitrate) AS total \
               FROM plays GROUP BY SESSION(_ingested_at, INTERVAL '1' SECOND), user";
    let events = plays(1200, 5);
    let mut p = pipeline(sql, 2, 3000);
    let (mut results, late) = run(&mut p, &events, 40);
    assert!(late.is_empty());
    results.extend(flush(&mut p, 10_000));
    results.retain(|r| !r.json.contains("\"end\""));
    let mut by_user: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for e in &events {
        let v: Value = serde_json::from_str(&e.payload).unwrap();
        by_user.entry(v["user"].as_str().unwrap().to_owned()).or_default().push((e.at, v["bitrate"].as_i64().unwrap()));
    }
    let mut expected = BTreeSet::new();
    for (user, mut plays) in by_user {
        plays.sort();
        let mut session: Option<(i64, i64, i64, i64)> = None; // start, last, count, total
        for (at, bitrate) in plays {
            session = match session {
                Some((s, last, n, t)) if at < last + 1000 => Some((s, at.max(last), n + 1, t + bitrate)),
                Some((s, last, n, t)) => {
                    expected.insert(
                        json!({"user": user, "s": iso(s), "e": iso(last + 1000), "n": n, "total": t}).to_string(),
                    );
                    Some((at, at, 1, bitrate))
                }
                None => Some((at, at, 1, bitrate)),
            };
        }
        let (s, last, n, t) = session.unwrap();
        expected.insert(json!({"user": user, "s": iso(s), "e": iso(last + 1000), "n": n, "total": t}).to_string());
    }
    assert_eq!(rows(&results), expected);
}

#[test]
fn a_restored_snapshot_gives_the_results_of_an_uninterrupted_run() {
    let session = "SELECT user, SESSION_END(_ingested_at, INTERVAL '1' SECOND) AS e, COUNT(DISTINCT country) AS c, \
                AVG(bitrate) AS a, MIN(bitrate) AS lo FROM plays GROUP BY SESSION(_ingested_at, INTERVAL '1' SECOND), user";
    let updating = "SELECT user, country, COUNT(*) AS n, APPROX_DISTINCT(bitrate) AS rates, AVG(bitrate) AS a \
                    FROM plays GROUP BY user, country";
    for (sql, ttl) in [(TUMBLING, None), (session, None), (updating, Some(2500)), (FIRST_PER_USER, Some(2500))] {
        let pipeline = |sql, partitions, lateness| pipeline_with_ttl(sql, partitions, lateness, ttl);
        let events = plays(2000, 13);
        let mut whole = pipeline(sql, 2, 3000);
        let (mut expected, _) = run(&mut whole, &events, 80);
        expected.extend(flush(&mut whole, 10_000));

        let (first, second) = events.split_at(1040);
        let mut before = pipeline(sql, 2, 3000);
        let (mut got, _) = run(&mut before, first, 80);
        let snapshot = before.snapshot().unwrap();
        // Taking a snapshot leaves the running operator intact.
        let (more, _) = run(&mut before, &second[..80], 80);
        drop(more);
        let mut after = pipeline(sql, 2, 3000);
        after.restore(&snapshot, 0).unwrap();
        assert_eq!(after.state_rows(), {
            let mut fresh = pipeline(sql, 2, 3000);
            run(&mut fresh, first, 80);
            fresh.state_rows()
        });
        let (rest, _) = run(&mut after, second, 80);
        got.extend(rest);
        got.extend(flush(&mut after, 10_000));
        // The last row per id: what a sink upserting by id holds.
        let by_id = |rs: &[ResultRow]| rs.iter().map(|r| (r.id.clone(), r.json.clone())).collect::<BTreeMap<_, _>>();
        assert_eq!(by_id(&got), by_id(&expected), "{sql}");
    }
}

#[test]
fn event_time_from_the_payload_windows_by_the_field() {
    let sql = "SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS m, COUNT(*) AS n FROM plays GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)";
    let mut p = pipeline(sql, 1, 0);
    let payloads = [
        r#"{"ts":"2026-12-07T10:00:05Z"}"#,
        r#"{"ts":"2026-12-07T10:00:59.999Z"}"#,
        r#"{"ts":"2026-12-07T10:01:00Z"}"#,
        r#"{"ts":"2026-12-07T10:03:00Z"}"#,
    ];
    let events: Vec<Ev> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| Ev { id: format!("t{i}"), partition: 0, offset: i as u64, at: 0, payload: (*p).into() })
        .collect();
    let inputs: Vec<InputEvent<'_>> = events.iter().map(Ev::input).collect();
    let out = p.process(0, &inputs, 0).unwrap();
    let got: Vec<&str> = out.results.iter().map(|r| r.json.as_str()).collect();
    assert_eq!(got, [r#"{"m":"2026-12-07T10:00:00Z","n":2}"#, r#"{"m":"2026-12-07T10:01:00Z","n":1}"#]);
}

#[test]
fn an_updating_group_by_upserts_each_key_to_the_models_totals() {
    let sql = "SELECT country, COUNT(*) AS plays, COUNT(DISTINCT user) AS users, SUM(bitrate) AS total, \
               MAX(bitrate) AS top FROM plays GROUP BY country";
    let events = plays(3000, 17);
    // A TTL longer than the run: every key is remembered throughout.
    let mut p = pipeline_with_ttl(sql, 2, 0, Some(86_400_000));
    let (results, late) = run(&mut p, &events, 70);
    assert!(late.is_empty(), "{late:?}");
    // Updates arrive as events do, one row per changed key per batch, not one per event.
    assert!(results.len() > 3 && results.len() < events.len() / 10, "{} results", results.len());
    let mut latest: BTreeMap<String, Value> = BTreeMap::new();
    let mut last_count: BTreeMap<String, i64> = BTreeMap::new();
    for r in &results {
        let row: Value = serde_json::from_str(&r.json).unwrap();
        let key = r.key.clone().expect("an updating result carries its key");
        assert_eq!(key, json!([row["country"]]).to_string().replace(' ', ""));
        // A key's rows all carry one id; its count only grows.
        let before = last_count.insert(r.id.clone(), row["plays"].as_i64().unwrap());
        assert!(before.is_none_or(|b| b < row["plays"].as_i64().unwrap()), "{r:?}");
        latest.insert(r.id.clone(), row);
    }
    assert_eq!(latest.len(), 3, "one id per country");
    let mut model: BTreeMap<String, (i64, BTreeSet<String>, i64, i64)> = BTreeMap::new();
    for e in &events {
        let v: Value = serde_json::from_str(&e.payload).unwrap();
        let g = model.entry(v["country"].as_str().unwrap().to_owned()).or_default();
        let bitrate = v["bitrate"].as_i64().unwrap();
        g.0 += 1;
        g.1.insert(v["user"].as_str().unwrap().to_owned());
        g.2 += bitrate;
        g.3 = g.3.max(bitrate);
    }
    let expected: BTreeSet<String> = model
        .into_iter()
        .map(|(country, (n, users, sum, max))| {
            json!({"country": country, "plays": n, "users": users.len(), "total": sum, "top": max}).to_string()
        })
        .collect();
    let got: BTreeSet<String> = latest.values().map(Value::to_string).collect();
    assert_eq!(got, expected);
    assert_eq!(p.state_rows(), 3);
}

/// One event of `user` at event time `at` on partition 0.
fn at(user: &str, at: i64, offset: u64) -> Ev {
    Ev {
        id: format!("{user}@{at}"),
        partition: 0,
        offset,
        at,
        payload: json!({"user": user, "country": "BR", "bitrate": 100}).to_string(),
    }
}

#[test]
fn keys_unseen_for_the_ttl_are_forgotten_and_events_older_than_it_are_late() {
    let sql = "SELECT user, COUNT(*) AS n FROM plays GROUP BY user";
    let mut p = pipeline_with_ttl(sql, 1, 0, Some(5_000));
    let feed = |p: &mut Pipeline, events: &[Ev]| {
        let inputs: Vec<InputEvent<'_>> = events.iter().map(Ev::input).collect();
        let out = p.process(0, &inputs, 0).unwrap();
        let late: Vec<String> = out.late.iter().map(|&i| events[i].id.clone()).collect();
        let rows: Vec<String> = out.results.iter().map(|r| r.json.clone()).collect();
        (rows, late)
    };
    assert_eq!(
        feed(&mut p, &[at("a", 1_000, 0), at("b", 1_000, 1)]).0,
        [r#"{"user":"a","n":1}"#, r#"{"user":"b","n":1}"#]
    );
    // The watermark reaches 10 s: `a` (last seen at 1 s) is forgotten, `b` seen again is not.
    assert_eq!(feed(&mut p, &[at("b", 10_000, 2)]).0, [r#"{"user":"b","n":2}"#]);
    assert_eq!(p.state_rows(), 1);
    // `a` starts again from nothing; an event 5 s or more behind the watermark is late.
    let (rows, late) = feed(&mut p, &[at("a", 10_500, 3), at("b", 5_000, 4), at("b", 5_001, 5)]);
    assert_eq!(rows, [r#"{"user":"a","n":1}"#, r#"{"user":"b","n":3}"#]);
    assert_eq!(late, ["b@5000"]);
}

#[test]
fn events_without_an_event_time_are_refused_with_why() {
    let sql = "SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS m, COUNT(*) AS n FROM plays GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)";
    let mut p = pipeline(sql, 1, 0);
    let events: Vec<Ev> = [r#"{"ts":"2026-12-07T10:00:05Z"}"#, r#"{"user":"u1"}"#, r#"{"ts":null}"#]
        .iter()
        .enumerate()
        .map(|(i, p)| Ev { id: format!("t{i}"), partition: 0, offset: i as u64, at: 0, payload: (*p).into() })
        .collect();
    let inputs: Vec<InputEvent<'_>> = events.iter().map(Ev::input).collect();
    let out = p.process(0, &inputs, 0).unwrap();
    let invalid: Vec<(usize, &str)> = out.invalid.iter().map(|(i, why)| (*i, why.as_str())).collect();
    let why = "has no event time: \"ts\" is missing or null";
    assert_eq!(invalid, [(1, why), (2, why)]);
    assert_eq!(p.state_rows(), 1, "the timed event is counted");
}

const FIRST_PER_USER: &str = "SELECT _id AS id, user, bitrate FROM (SELECT *, ROW_NUMBER() OVER \
    (PARTITION BY user ORDER BY _ingested_at) AS rn FROM plays) WHERE rn = 1";

#[test]
fn deduplication_keeps_each_keys_first_or_last_row_as_the_model_does() {
    let events = plays(2500, 23);
    for (sql, keep_last) in
        [(FIRST_PER_USER.to_owned(), false), (FIRST_PER_USER.replace("_ingested_at)", "_ingested_at DESC)"), true)]
    {
        let mut p = pipeline_with_ttl(&sql, 2, 0, Some(86_400_000));
        let (results, late) = run(&mut p, &events, 60);
        assert!(late.is_empty(), "{late:?}");
        // The model, in the order the pipeline saw the events (per chunk, partition 0 then 1):
        // a key's row is replaced by a strictly earlier one (first) or an as-late-or-later one
        // (last).
        let mut model: BTreeMap<String, (i64, String)> = BTreeMap::new();
        for chunk in events.chunks(60) {
            for partition in 0..2 {
                for e in chunk.iter().filter(|e| e.partition == partition) {
                    let user = serde_json::from_str::<Value>(&e.payload).unwrap()["user"].as_str().unwrap().to_owned();
                    let held = model.get(&user).map(|h| h.0);
                    let replace = match held {
                        None => true,
                        Some(t) if keep_last => e.at >= t,
                        Some(t) => e.at < t,
                    };
                    if replace {
                        model.insert(user, (e.at, e.id.clone()));
                    }
                }
            }
        }
        let mut latest: BTreeMap<String, Value> = BTreeMap::new();
        for r in &results {
            latest.insert(r.id.clone(), serde_json::from_str(&r.json).unwrap());
        }
        let got: BTreeMap<String, String> = latest
            .values()
            .map(|row| (row["user"].as_str().unwrap().to_owned(), row["id"].as_str().unwrap().to_owned()))
            .collect();
        let expected: BTreeMap<String, String> = model.into_iter().map(|(u, (_, id))| (u, id)).collect();
        assert_eq!(got, expected, "keep last: {keep_last}");
        assert_eq!(latest.len(), 7, "one result id per user");
        assert!(results.len() < events.len() / 4, "a duplicate emits nothing: {} results", results.len());
        if !keep_last {
            // Keeping the first, every row after a key's first is an earlier event replacing it.
            assert!(results.len() >= 7);
        }
    }
}

#[test]
fn drain_closes_every_open_window_as_a_preview_ends() {
    let events = plays(800, 29);
    let mut p = pipeline(TUMBLING, 2, 3000);
    let (mut results, late) = run(&mut p, &events, 90);
    assert!(late.is_empty());
    assert!(p.state_rows() > 0, "windows still open before the drain");
    results.extend(p.drain().unwrap());
    assert_eq!(rows(&results), tumbling_model(&events, 5000));
    assert_eq!(p.state_rows(), 0);
}
