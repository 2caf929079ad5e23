//! The route filter: a CEL expression over `event` (the payload), compiled once per job.

use cel::common::traits::Indexer;
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt, Type, MAP_TYPE,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::ExecutionError;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// A compiled filter. Building CEL's root context registers every built-in function (~18 µs), so
/// it is built once here and each event gets a cheap inner scope.
pub struct Filter {
    program: cel::Program,
    root: cel::Context<'static, 'static>,
    /// The top-level fields of `event` the expression reads, when it only ever reads
    /// `event.<field>`: then `event` converts a field only when read (see [`Event`]), and a job
    /// parses only these fields of each payload. `None` when it uses `event` any other way (the
    /// whole payload is converted).
    fields: Option<Vec<String>>,
}

/// Why an event could not be tested (e.g. the field it reads is missing, or the result is not a
/// boolean). The job counts such events apart from those the filter rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

impl Filter {
    pub fn compile(expr: &str) -> Result<Filter, FilterError> {
        let program = cel::Program::compile(expr).map_err(|e| FilterError(e.to_string()))?;
        Ok(Filter { program, root: cel::Context::default(), fields: top_level_fields(expr) })
    }

    /// The top-level fields of `event` the expression reads; `None` when it may read any.
    pub fn fields(&self) -> Option<&[String]> {
        self.fields.as_deref()
    }

    /// True when the event should be delivered.
    pub fn matches(&self, payload: &Value) -> Result<bool, FilterError> {
        // Declared before the scope that borrows it (and so dropped after it).
        let event;
        // The root's `'static` narrows to the payload's borrow: values bound below borrow it.
        let root: &cel::Context<'_, '_> = &self.root;
        let mut scope = root.new_inner_scope();
        match (&self.fields, payload) {
            (Some(_), Value::Object(map)) => {
                event = Event(map);
                scope.set_variable_resolver(&event);
            }
            _ => scope.add_variable_as_val("event", to_cel(payload)),
        }
        match self.program.execute(&scope) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(FilterError(format!("the filter returned {other:?}, not a boolean"))),
            Err(e) => Err(FilterError(e.to_string())),
        }
    }
}

/// `event` for an expression that only reads `event.<field>...`: the payload's object, whose
/// fields become CEL values only when the expression reads them, borrowing the payload's
/// strings. Converting the fields up front into a map the interpreter owns (with its keys, and
/// a scope variable holding it) was most of a filter's cost per event.
#[derive(Debug)]
struct Event<'a>(&'a Map<String, Value>);

impl VariableResolver for Event<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        (variable == "event").then_some(CowVal::Borrowed(self))
    }
}

impl Val for Event<'_> {
    fn get_type(&self) -> &Type {
        &MAP_TYPE
    }

    fn cel_type() -> &'static Type {
        &MAP_TYPE
    }

    fn as_indexer<'b, 'w>(&'b self) -> Option<&'b (dyn Indexer + 'w)>
    where
        Self: 'w,
    {
        Some(self)
    }

    fn clone_as_boxed<'w>(&self) -> Box<dyn Val + 'w>
    where
        Self: 'w,
    {
        Box::new(Event(self.0))
    }
}

impl Indexer for Event<'_> {
    fn get<'b, 'w>(&'b self, field: &dyn Val) -> Result<CowVal<'b, 'w>, ExecutionError>
    where
        Self: 'w,
    {
        let name = field.downcast_ref::<CelString>().map(CelString::inner);
        match name.and_then(|n| self.0.get(n)) {
            Some(value) => Ok(CowVal::Owned(to_cel(value))),
            // What makes `has(event.f)` false, and `event.f` the map's "no such key" error.
            None => Err(ExecutionError::no_such_key(name.unwrap_or_default())),
        }
    }

    fn steal<'w>(self: Box<Self>, field: &dyn Val) -> Result<Box<dyn Val + 'w>, ExecutionError>
    where
        Self: 'w,
    {
        self.get(field).map(CowVal::into_owned)
    }
}

/// The top-level fields `expr` reads as `event.<field>...`, or `None` if it also uses `event`
/// another way.
fn top_level_fields(expr: &str) -> Option<Vec<String>> {
    let refs = keystone_control::filter_fields::event_references(expr);
    if refs.whole_event {
        return None;
    }
    let mut fields: Vec<String> = Vec::new();
    for path in refs.paths {
        let top = path.split('.').next().unwrap_or_default().to_owned();
        if !fields.contains(&top) {
            fields.push(top);
        }
    }
    Some(fields)
}

/// JSON to CEL with whole numbers as `int` (CEL refuses to mix `uint` and `int`, so
/// `event.n % 2 == 0` must see an int), `uint` only past i64, and other numbers as `double`.
/// Built as the interpreter's own values directly, borrowing strings and keys: going through
/// `cel::Value` built and hashed every map twice more.
fn to_cel(v: &Value) -> Box<dyn Val + '_> {
    match v {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Box::new(CelInt::from(i)),
            (None, Some(u)) => Box::new(CelUInt::from(u)),
            _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        Value::String(s) => Box::new(CelString::from(s.as_str())),
        Value::Array(items) => Box::new(CelList::from(items.iter().map(to_cel).collect::<Vec<_>>())),
        Value::Object(map) => Box::new(CelMap::from(
            map.iter().map(|(k, v)| (CelMapKey::from(k.as_str()), to_cel(v))).collect::<HashMap<_, _>>(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selects_events_by_their_fields() {
        let f = Filter::compile(r#"event.country == "BR" && event.bitrate > 3000"#).unwrap();
        assert!(f.matches(&json!({"country": "BR", "bitrate": 3200})).unwrap());
        assert!(!f.matches(&json!({"country": "BR", "bitrate": 800})).unwrap());
        assert!(!f.matches(&json!({"country": "US", "bitrate": 9000})).unwrap());
        let nested = Filter::compile(r#"event.user.tier in ["gold", "platinum"] && size(event.items) > 1"#).unwrap();
        assert!(nested.matches(&json!({"user": {"tier": "gold"}, "items": [1, 2]})).unwrap());
        let nums = Filter::compile("event.ratio > 0.5 && event.big > 0u && event.neg < 0").unwrap();
        assert!(nums.matches(&json!({"ratio": 0.75, "big": u64::MAX, "neg": -3})).unwrap());
    }

    #[test]
    fn missing_fields_and_non_boolean_results_are_errors_not_matches() {
        let f = Filter::compile("event.bitrate > 3000").unwrap();
        assert!(f.matches(&json!({"country": "BR"})).is_err());
        let g = Filter::compile("event.bitrate").unwrap();
        assert!(g.matches(&json!({"bitrate": 1})).unwrap_err().0.contains("not a boolean"));
        assert!(Filter::compile("event.x ==").is_err());
    }

    #[test]
    fn a_filter_can_move_into_a_job_task() {
        fn send_and_sync<T: Send + Sync>() {}
        send_and_sync::<Filter>();
    }

    #[test]
    fn only_the_fields_read_are_converted_and_other_uses_of_event_convert_all() {
        assert_eq!(
            top_level_fields(r#"event.country == "BR" && event.user.tier != 'event.x'"#),
            Some(vec!["country".into(), "user".into()])
        );
        assert_eq!(
            top_level_fields("event.items.exists(i, i > 1) && has(event.n)"),
            Some(vec!["items".into(), "n".into()])
        );
        assert_eq!(top_level_fields("size(event) > 2"), None);
        assert_eq!(top_level_fields(r#"event["country"] == "BR""#), None);
        assert_eq!(top_level_fields("events_seen > 1 || myevent.x"), Some(vec![]));
        // Same answers either way.
        let e = json!({"country": "BR", "n": 3, "user": {"tier": "gold"}, "items": [1, 2], "other": {"deep": [1]}});
        for expr in [
            "event.country == \"BR\" && event.user.tier == \"gold\"",
            "has(event.n) && !has(event.missing)",
            "size(event) == 5",
            "event.items.exists(i, i > 1)",
        ] {
            assert!(Filter::compile(expr).unwrap().matches(&e).unwrap(), "{expr}");
        }
    }

    #[test]
    fn fields_read_on_access_behave_as_the_whole_event_converted() {
        let e = json!({"country": "BR", "n": 3, "user": {"tier": "gold"}, "tags": ["a"], "none": null});
        for expr in [
            "event.user == {'tier': 'gold'}",
            "has(event.user.tier) && !has(event.nope) && has(event.none)",
            "event.tags[0] == 'a' && event.none == null",
            "event.missing == 1",
            "event.n.x == 1",
            "event.user.missing == 1",
        ] {
            let lazy = Filter::compile(expr).unwrap();
            assert!(lazy.fields().is_some(), "{expr}");
            // Reading `size(event)` too makes the filter convert the whole event up front.
            let whole = Filter::compile(&format!("size(event) > 0 && ({expr})")).unwrap();
            assert!(whole.fields().is_none(), "{expr}");
            assert_eq!(lazy.matches(&e), whole.matches(&e), "{expr}");
        }
        let missing = Filter::compile("event.missing == 1").unwrap().matches(&e).unwrap_err();
        assert!(missing.0.contains("missing"), "{missing}");
    }

    #[test]
    fn one_filter_serves_many_events() {
        let f = Filter::compile("event.n % 2 == 0").unwrap();
        let kept = (0..100).filter(|n| f.matches(&json!({ "n": n })).unwrap()).count();
        assert_eq!(kept, 50);
    }
}
