//! Admin approvals: the approval policy (goal state of kind `policy`, named `approvals`), the
//! pure rule that decides which changes it holds back, and the change requests those become.
//! The store side is `approval_store`; the goal-state service (`goal`) applies the policy.

use crate::diff::Change;
use crate::model::{Kind, Op};
use crate::validation::ValidationErrors;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The name of the one approval policy object.
pub const POLICY_NAME: &str = "approvals";

/// Which changes need an admin's approval. Every rule is off by default, so a platform without
/// a policy applies every change at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ApprovalPolicy {
    #[serde(default)]
    pub description: String,
    /// Deleting a stream (its events go with it).
    #[serde(default)]
    pub stream_deletes: bool,
    /// Creating or changing a route whose sink carries one of these tags (e.g. `production`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes_to_sinks_tagged: Vec<String>,
    /// Raising a stream's partitions, retention or ingest quota (they cost disk and brokers).
    #[serde(default)]
    pub capacity_increases: bool,
    /// Any change to an object carrying one of these tags, before or after the change
    /// (e.g. `critical`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects_tagged: Vec<String>,
    /// A rewind that would deliver more than this many events again, or a backfill that would
    /// deliver more than this many events from another source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewinds_over_events: Option<u64>,
}

impl ApprovalPolicy {
    /// Whether any rule is on (a policy with none holds nothing back, itself included).
    pub fn has_rules(&self) -> bool {
        let none = ApprovalPolicy { description: self.description.clone(), ..ApprovalPolicy::default() };
        *self != none
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = ValidationErrors::default();
        crate::model::check_description(&mut e, &self.description);
        crate::model::check_tags(&mut e, "routes_to_sinks_tagged", &self.routes_to_sinks_tagged);
        crate::model::check_tags(&mut e, "objects_tagged", &self.objects_tagged);
        e.into_result(())
    }
}

/// A change as the policy sees it: the stored specs before and after (none before a create,
/// none after a delete), and for a route the tags of the sink it delivers to.
#[derive(Debug, Clone, Copy)]
pub struct ProposedChange<'a> {
    pub kind: Kind,
    pub op: Op,
    pub before: Option<&'a Value>,
    pub after: Option<&'a Value>,
    pub sink_tags: &'a [String],
}

/// Why `change` needs approval under `policy`, one reason per matching rule; empty when it may
/// be applied at once.
///
/// Setting a route's desired state (pause, resume, stop) never waits: it is how an on-call
/// engineer contains an incident, and the route's declaration is otherwise unchanged.
///
/// While any rule is on, the policy itself changes only with another admin's approval: otherwise
/// one admin could switch it off, change what it guards, and switch it on again.
pub fn approvals_needed(policy: &ApprovalPolicy, change: &ProposedChange<'_>) -> Vec<String> {
    let mut needs = Vec::new();
    if change.kind == Kind::Policy {
        if policy.has_rules() {
            needs.push("a change to the approval policy".to_owned());
        }
        return needs;
    }
    if change.kind.is_platform() {
        return needs;
    }
    // Routes and processors are the jobs that deliver to sinks.
    let delivers = matches!(change.kind, Kind::Route | Kind::Processor);
    if delivers && only_state_differs(change.before, change.after) {
        return needs;
    }
    if policy.stream_deletes && change.kind == Kind::Stream && change.op == Op::Delete {
        needs.push("deleting a stream".to_owned());
    }
    if delivers && change.op != Op::Delete {
        if let Some(tag) = change.sink_tags.iter().find(|t| policy.routes_to_sinks_tagged.contains(t)) {
            needs.push(format!("a {} to a sink tagged {tag:?}", change.kind));
        }
    }
    let tags = |v: Option<&Value>| -> Vec<String> {
        v.and_then(|v| v.get("tags")).and_then(|t| serde_json::from_value(t.clone()).ok()).unwrap_or_default()
    };
    let mut object_tags = tags(change.before);
    object_tags.extend(tags(change.after));
    // A sink routes need approval to reach: changing where it delivers (its URL, its secrets) or
    // dropping the tag would get around that approval. Creating one is harmless: no route
    // reaches it yet, and each route to it waits.
    if change.kind == Kind::Sink && change.op == Op::Update {
        if let Some(tag) = object_tags.iter().find(|t| policy.routes_to_sinks_tagged.contains(t)) {
            needs.push(format!("a change to a sink tagged {tag:?}, which routes need approval to reach"));
        }
    }
    if policy.capacity_increases && change.kind == Kind::Stream {
        match (change.before, change.after) {
            (Some(before), Some(after)) => needs.extend(capacity_increases(before, after)),
            // A new stream is capacity from nothing.
            (None, Some(after)) => needs.push(format!(
                "creating a stream ({} partitions, {} hours of retention)",
                after.get("partitions").and_then(Value::as_u64).unwrap_or(1),
                after.get("retention_hours").and_then(Value::as_u64).unwrap_or(0)
            )),
            _ => {}
        }
    }
    if let Some(tag) = object_tags.iter().find(|t| policy.objects_tagged.contains(t)) {
        needs.push(format!("a change to a {} tagged {tag:?}", change.kind));
    }
    needs
}

fn only_state_differs(before: Option<&Value>, after: Option<&Value>) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("state");
        }
        v
    };
    match (before, after) {
        (Some(b), Some(a)) => b != a && strip(b) == strip(a),
        _ => false,
    }
}

/// The capacity settings a stream change raises. An absent retention size or quota means
/// unbounded, so removing one is a raise.
fn capacity_increases(before: &Value, after: &Value) -> Vec<String> {
    let number = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64);
    let mut out = Vec::new();
    for key in ["partitions", "retention_hours"] {
        if let (Some(b), Some(a)) = (number(before, key), number(after, key)) {
            if a > b {
                out.push(format!("raising {key} from {b} to {a}"));
            }
        }
    }
    for key in ["retention_bytes", "max_events_per_second"] {
        let raised = match (number(before, key), number(after, key)) {
            (Some(b), Some(a)) => a > b,
            (Some(_), None) => true,
            _ => false,
        };
        if raised {
            let show = |n: Option<u64>| n.map_or("unbounded".to_owned(), |n| n.to_string());
            out.push(format!("raising {key} from {} to {}", show(number(before, key)), show(number(after, key))));
        }
    }
    out
}

/// Why `policy` holds back a rewind that delivers `redelivered` events again, if it does.
pub fn rewind_needs(policy: &ApprovalPolicy, redelivered: u64) -> Option<String> {
    let max = policy.rewinds_over_events?;
    (redelivered > max).then(|| format!("a rewind delivering {redelivered} event(s) again (more than {max})"))
}

/// Why `policy` holds back a backfill of up to `events` events, if it does (the rewind
/// threshold: both deliver old events to the sink again).
pub fn backfill_needs(policy: &ApprovalPolicy, events: u64) -> Option<String> {
    let max = policy.rewinds_over_events?;
    (events > max).then(|| format!("a backfill of up to {events} event(s) (more than {max})"))
}

/// Why `policy` holds back an operation on a route that leaves its declaration as it is (an
/// override of its configuration, a backfill): the rules a change to the route would match,
/// since the operation changes what its job delivers.
pub fn route_operation_needs(policy: &ApprovalPolicy, route_spec: &Value, sink_tags: &[String]) -> Vec<String> {
    let change = ProposedChange {
        kind: Kind::Route,
        op: Op::Update,
        before: Some(route_spec),
        after: Some(route_spec),
        sink_tags,
    };
    approvals_needed(policy, &change)
}

/// What a change request asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RequestAction {
    /// A change of goal state (create, update or delete).
    #[default]
    Change,
    /// A rewind of a stopped route's job to recorded positions.
    Rewind,
    /// A console override of one key of a route's configuration.
    Override,
    /// A backfill of a route from another source.
    Backfill,
}

impl RequestAction {
    pub const ALL: [RequestAction; 4] =
        [RequestAction::Change, RequestAction::Rewind, RequestAction::Override, RequestAction::Backfill];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestAction::Change => "change",
            RequestAction::Rewind => "rewind",
            RequestAction::Override => "override",
            RequestAction::Backfill => "backfill",
        }
    }

    pub fn parse(s: &str) -> Option<RequestAction> {
        RequestAction::ALL.into_iter().find(|a| a.as_str() == s)
    }

    fn is_change(&self) -> bool {
        *self == RequestAction::Change
    }
}

/// Where a change request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    /// Waiting for an admin.
    Pending,
    /// Approved and applied as a revision.
    Approved,
    Rejected,
    /// The object changed after the request was made; the requester must submit it again.
    Stale,
}

impl RequestState {
    pub const ALL: [RequestState; 4] =
        [RequestState::Pending, RequestState::Approved, RequestState::Rejected, RequestState::Stale];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Rejected => "rejected",
            RequestState::Stale => "stale",
        }
    }

    pub fn parse(s: &str) -> Option<RequestState> {
        RequestState::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A change held back by the approval policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct ChangeRequest {
    pub id: i64,
    #[serde(default, skip_serializing_if = "RequestAction::is_change")]
    pub action: RequestAction,
    pub team: String,
    pub kind: Kind,
    pub name: String,
    pub op: Op,
    /// The object's version the change was based on (0 for a create); if the object moves on,
    /// the request goes stale.
    pub base_version: i64,
    /// The spec the change would store (for a delete, the spec being deleted).
    #[cfg_attr(feature = "store", schema(value_type = Object))]
    pub spec: Value,
    /// The change, field by field, against the goal it was based on.
    pub changes: Vec<Change>,
    /// The policy rules that matched.
    pub needs: Vec<String>,
    pub requester: String,
    pub reason: String,
    pub state: RequestState,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<i64>,
    /// The deciding admin's comment.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
    /// The revision an approval wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_seq: Option<i64>,
}

impl ChangeRequest {
    /// "update route plays-to-search" and the like.
    pub fn summary(&self) -> String {
        let verb = match self.action {
            RequestAction::Change => self.op.as_str(),
            RequestAction::Override => "override the configuration of",
            action => action.as_str(),
        };
        format!("{verb} {} {}/{}", self.kind, self.team, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(policy: &ApprovalPolicy, kind: Kind, op: Op, before: Option<Value>, after: Option<Value>) -> Vec<String> {
        approvals_needed(
            policy,
            &ProposedChange { kind, op, before: before.as_ref(), after: after.as_ref(), sink_tags: &[] },
        )
    }

    /// Issue 26 item 3: the ways around the policy that were open.
    #[test]
    fn tagged_sinks_new_streams_and_the_policy_itself_are_held_back() {
        let p = ApprovalPolicy {
            routes_to_sinks_tagged: vec!["production".into()],
            capacity_increases: true,
            ..Default::default()
        };
        let tagged = json!({"kind": "http", "settings": {"url": "https://a"}, "tags": ["production"]});
        let moved = json!({"kind": "http", "settings": {"url": "https://elsewhere"}, "tags": ["production"]});
        let untagged = json!({"kind": "http", "settings": {"url": "https://elsewhere"}});
        let why = ["a change to a sink tagged \"production\", which routes need approval to reach"];
        assert_eq!(check(&p, Kind::Sink, Op::Update, Some(tagged.clone()), Some(moved)), why);
        assert_eq!(check(&p, Kind::Sink, Op::Update, Some(tagged.clone()), Some(untagged.clone())), why);
        assert!(check(&p, Kind::Sink, Op::Create, None, Some(tagged)).is_empty());
        assert!(check(&p, Kind::Sink, Op::Update, Some(untagged.clone()), Some(untagged)).is_empty());
        let stream = json!({"partitions": 4, "retention_hours": 48});
        assert_eq!(
            check(&p, Kind::Stream, Op::Create, None, Some(stream)),
            ["creating a stream (4 partitions, 48 hours of retention)"]
        );
        let off = json!({});
        assert_eq!(
            check(&p, Kind::Policy, Op::Update, Some(json!({"capacity_increases": true})), Some(off.clone())),
            ["a change to the approval policy"]
        );
        // Without rules in force, writing the first policy waits for nobody.
        assert!(check(&ApprovalPolicy::default(), Kind::Policy, Op::Create, None, Some(off)).is_empty());
    }

    #[test]
    fn no_policy_holds_nothing_back() {
        let p = ApprovalPolicy::default();
        let s = json!({"partitions": 3, "retention_hours": 24, "tags": ["critical"]});
        assert!(check(&p, Kind::Stream, Op::Delete, Some(s.clone()), None).is_empty());
        assert!(check(&p, Kind::Stream, Op::Update, Some(s.clone()), Some(json!({"partitions": 9}))).is_empty());
    }

    #[test]
    fn stream_deletes_and_capacity_raises() {
        let p = ApprovalPolicy { stream_deletes: true, capacity_increases: true, ..Default::default() };
        let s = json!({"partitions": 3, "retention_hours": 24, "max_events_per_second": 100});
        assert_eq!(check(&p, Kind::Stream, Op::Delete, Some(s.clone()), None), ["deleting a stream"]);
        assert!(check(&p, Kind::Sink, Op::Delete, Some(json!({})), None).is_empty());
        let raised = json!({"partitions": 6, "retention_hours": 12});
        assert_eq!(
            check(&p, Kind::Stream, Op::Update, Some(s.clone()), Some(raised)),
            ["raising partitions from 3 to 6", "raising max_events_per_second from 100 to unbounded"]
        );
        let lowered = json!({"partitions": 2, "retention_hours": 24, "max_events_per_second": 50});
        assert!(check(&p, Kind::Stream, Op::Update, Some(s.clone()), Some(lowered)).is_empty());
        // A new stream is capacity from nothing (it was let through before issue 26).
        assert_eq!(
            check(&p, Kind::Stream, Op::Create, None, Some(s)),
            ["creating a stream (3 partitions, 24 hours of retention)"]
        );
    }

    #[test]
    fn operations_on_a_route_follow_its_rules_and_backfills_the_rewind_threshold() {
        let p = ApprovalPolicy {
            routes_to_sinks_tagged: vec!["production".into()],
            objects_tagged: vec!["critical".into()],
            rewinds_over_events: Some(100),
            ..Default::default()
        };
        let route = json!({"stream": "plays", "sink": "warehouse"});
        assert!(route_operation_needs(&p, &route, &["staging".to_owned()]).is_empty());
        assert_eq!(
            route_operation_needs(&p, &route, &["production".to_owned()]),
            ["a route to a sink tagged \"production\""]
        );
        let critical = json!({"stream": "plays", "sink": "warehouse", "tags": ["critical"]});
        assert_eq!(route_operation_needs(&p, &critical, &[]), ["a change to a route tagged \"critical\""]);
        assert_eq!(backfill_needs(&p, 100), None);
        assert_eq!(backfill_needs(&p, 101).as_deref(), Some("a backfill of up to 101 event(s) (more than 100)"));
        assert_eq!(backfill_needs(&ApprovalPolicy::default(), 1_000_000), None);
    }

    #[test]
    fn routes_and_processors_to_tagged_sinks_except_desired_state() {
        let p = ApprovalPolicy { routes_to_sinks_tagged: vec!["production".into()], ..Default::default() };
        let route = json!({"stream": "plays", "sink": "warehouse"});
        let tags = ["production".to_owned()];
        let change = |op, before: Option<&Value>, after: Option<&Value>, sink_tags: &[String]| {
            approvals_needed(&p, &ProposedChange { kind: Kind::Route, op, before, after, sink_tags })
        };
        assert_eq!(change(Op::Create, None, Some(&route), &tags), ["a route to a sink tagged \"production\""]);
        assert!(change(Op::Create, None, Some(&route), &["staging".to_owned()]).is_empty());
        let paused = json!({"stream": "plays", "sink": "warehouse", "state": "paused"});
        assert!(change(Op::Update, Some(&route), Some(&paused), &tags).is_empty(), "pausing never waits");
        let filtered = json!({"stream": "plays", "sink": "warehouse", "state": "paused", "filter": "true"});
        assert_eq!(change(Op::Update, Some(&paused), Some(&filtered), &tags).len(), 1);
        assert!(change(Op::Delete, Some(&route), None, &tags).is_empty(), "removing a route is not gated");
        // A processor delivers to its sink like a route: the same rule holds it back.
        let processor = json!({"sql": "SELECT 1 AS x FROM plays", "sink": "warehouse"});
        let needs = approvals_needed(
            &p,
            &ProposedChange {
                kind: Kind::Processor,
                op: Op::Create,
                before: None,
                after: Some(&processor),
                sink_tags: &tags,
            },
        );
        assert_eq!(needs, ["a processor to a sink tagged \"production\""]);
    }

    #[test]
    fn tagged_objects_before_or_after() {
        let p = ApprovalPolicy { objects_tagged: vec!["critical".into()], ..Default::default() };
        let tagged = json!({"kind": "http", "tags": ["critical"]});
        let plain = json!({"kind": "http"});
        let need = ["a change to a sink tagged \"critical\""];
        assert_eq!(check(&p, Kind::Sink, Op::Update, Some(tagged.clone()), Some(plain.clone())), need);
        assert_eq!(check(&p, Kind::Sink, Op::Update, Some(plain.clone()), Some(tagged.clone())), need);
        assert_eq!(check(&p, Kind::Sink, Op::Delete, Some(tagged), None), need);
        assert!(check(&p, Kind::Sink, Op::Update, Some(plain.clone()), Some(plain)).is_empty());
        // The policy is held back by its own rules being on, never by tags.
        assert_eq!(
            check(&p, Kind::Policy, Op::Update, Some(json!({"tags": ["critical"]})), None),
            ["a change to the approval policy"]
        );
    }

    #[test]
    fn change_requests_travel_to_the_browser_and_back() {
        let r = ChangeRequest {
            id: 7,
            action: RequestAction::Change,
            team: "alpha".into(),
            kind: Kind::Route,
            name: "r".into(),
            op: Op::Create,
            base_version: 0,
            spec: json!({"stream": "s", "sink": "k"}),
            changes: crate::diff::diff(&Value::Null, &json!({"stream": "s"})),
            needs: vec!["a route to a sink tagged \"production\"".into()],
            requester: "alice".into(),
            reason: String::new(),
            state: RequestState::Pending,
            created_at: 1,
            decided_by: None,
            decided_at: None,
            comment: String::new(),
            revision_seq: None,
        };
        let back: ChangeRequest = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn large_rewinds_only() {
        let p = ApprovalPolicy { rewinds_over_events: Some(1000), ..Default::default() };
        assert_eq!(rewind_needs(&p, 1000), None);
        assert_eq!(rewind_needs(&p, 1001).unwrap(), "a rewind delivering 1001 event(s) again (more than 1000)");
        assert_eq!(rewind_needs(&ApprovalPolicy::default(), u64::MAX), None);
    }

    #[test]
    fn policies_check_their_tags() {
        let p = ApprovalPolicy { objects_tagged: vec!["Critical".into()], ..Default::default() };
        assert!(p.validate().unwrap_err().for_field("objects_tagged[0]").is_some());
    }
}
