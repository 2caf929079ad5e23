//! The goal-state service: the one path by which the console, the JSON API and the CLI read and
//! change declarations. It authorises, validates (including checks that need the database, inside
//! the same transaction as the write), and records every change as a revision.

use crate::approvals::{
    approvals_needed, rewind_needs, route_operation_needs, ApprovalPolicy, ChangeRequest, ProposedChange,
    RequestAction, RequestState, POLICY_NAME,
};
use crate::auth::Principal;
use crate::diff::{diff, Change};
use crate::filter_fields::filter_fields;
use crate::filter_rules::check_filter;
use crate::lineage::{cycle_through, feeds_with, Proposed};
use crate::model::*;
use crate::name::Name;
use crate::store::approvals::{NewRequest, RequestFilter};
use crate::store::{AppendError, AuditFilter, Store, StoreError, Write, WriteTx};
use crate::validation::ValidationErrors;
use serde_json::Value;
use std::collections::BTreeMap;

mod backfill;
mod checks;
mod config;
mod declaration;
mod processor;
mod requests;
mod route_ops;
mod source;

pub use backfill::{BackfillFiles, BackfillPlan};
pub(crate) use checks::check_reason;
pub use checks::{check_transforms, schema_has_path, REASON_MAX};
pub use declaration::Declaration;
pub use processor::{describe, explain, processor_streams};

/// Why a goal-state request did not happen. In every case nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum GoalError {
    /// The request is malformed; each field error says which field and why.
    #[error("invalid request: {0}")]
    Invalid(ValidationErrors),
    /// No such object, or the caller may not see it (the two are indistinguishable on purpose).
    #[error("not found")]
    NotFound,
    /// The caller may see the object but not change it.
    #[error("forbidden: your role does not allow this change")]
    Forbidden,
    /// The object changed since the version the caller based the change on.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The caller's role allows the kind of request, but not this one; the message says why.
    #[error("forbidden: {0}")]
    Refused(String),
    /// The approval policy holds the change back: it waits, as this change request, for an
    /// admin other than the requester. Nothing was applied.
    #[error("change request #{} needs an admin's approval: {}", .0.id, .0.needs.join("; "))]
    ApprovalRequired(Box<ChangeRequest>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ValidationErrors> for GoalError {
    fn from(e: ValidationErrors) -> Self {
        GoalError::Invalid(e)
    }
}

/// What a change did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub revision: Revision,
    /// False when the declaration equalled the current goal and no revision was written.
    pub changed: bool,
}

/// The goal-state service for one caller.
pub struct Goal<'a> {
    store: &'a Store,
    who: &'a Principal,
}

impl<'a> Goal<'a> {
    pub fn new(store: &'a Store, who: &'a Principal) -> Self {
        Goal { store, who }
    }

    pub(crate) fn store(&self) -> &'a Store {
        self.store
    }

    pub(crate) fn who(&self) -> &'a Principal {
        self.who
    }

    /// The team id of `team` if the caller may read it; `NotFound` otherwise.
    async fn readable_team(&self, team: &str) -> Result<String, GoalError> {
        let t = self.store.get(Kind::Team, "", team).await?.ok_or(GoalError::NotFound)?;
        if self.who.can_read(&t.id) {
            Ok(t.id)
        } else {
            Err(GoalError::NotFound)
        }
    }

    /// A team's alert webhook URL often carries a credential (Slack and Teams webhooks do):
    /// only admins, who set it, read it; members see that one is set.
    ///
    /// A sink's settings never show a password written into a URL (`https://user:pw@host`), to
    /// anyone: such credentials belong in the sink's secrets, which are never shown.
    fn redact(&self, kind: Kind, spec: &mut Value) {
        if kind == Kind::Sink {
            if let Some(settings) = spec.get_mut("settings").and_then(Value::as_object_mut) {
                for value in settings.values_mut() {
                    if let Some(hidden) = value.as_str().and_then(crate::egress::without_url_password) {
                        *value = Value::String(hidden);
                    }
                }
            }
        }
        if kind != Kind::Team || self.who.is_admin() {
            return;
        }
        if let Some(url) = spec.get_mut("alert_webhook").filter(|v| !v.is_null()) {
            *url = Value::String(WEBHOOK_HIDDEN.to_owned());
        }
    }

    fn redact_revisions(&self, mut revisions: Vec<Revision>) -> Vec<Revision> {
        for r in &mut revisions {
            self.redact(r.kind, &mut r.spec);
        }
        revisions
    }

    pub async fn list(&self, kind: Kind) -> Result<Vec<Object>, GoalError> {
        let mut objects = self.store.list(kind, &self.who.scope()).await?;
        for o in &mut objects {
            self.redact(kind, &mut o.spec);
        }
        Ok(objects)
    }

    pub async fn get(&self, kind: Kind, team: &str, name: &str) -> Result<Object, GoalError> {
        if kind == Kind::Team {
            self.readable_team(name).await?;
            let mut team = self.store.get(Kind::Team, "", name).await?.ok_or(GoalError::NotFound)?;
            self.redact(kind, &mut team.spec);
            return Ok(team);
        }
        if kind == Kind::Policy {
            return self.store.get(Kind::Policy, "", name).await?.ok_or(GoalError::NotFound);
        }
        let team_id = self.readable_team(team).await?;
        let mut object = self.store.get(kind, &team_id, name).await?.ok_or(GoalError::NotFound)?;
        self.redact(kind, &mut object.spec);
        Ok(object)
    }

    /// Every revision of a live object, oldest first.
    pub async fn history(&self, kind: Kind, team: &str, name: &str) -> Result<Vec<Revision>, GoalError> {
        let o = self.get(kind, team, name).await?;
        Ok(self.redact_revisions(self.store.history(&o.id).await?))
    }

    /// A stream sink's target must exist, and the caller must be allowed to edit its team: a
    /// sink into another team's stream is that team's producer.
    async fn check_stream_target(
        &self,
        tx: &mut WriteTx,
        own_team: &str,
        settings: &StreamSettings,
    ) -> Result<(), GoalError> {
        let target = settings.stream.as_str();
        let t = settings.target(own_team).map_err(|msg| ValidationErrors::single("settings.stream", msg))?;
        let missing = || ValidationErrors::single("settings.stream", format!("no stream named {target:?}"));
        let team =
            tx.get(Kind::Team, "", &t.team).await?.filter(|team| self.who.can_read(&team.id)).ok_or_else(missing)?;
        tx.get(Kind::Stream, &team.id, &t.stream).await?.ok_or_else(missing)?;
        if !self.who.can_write(Kind::Stream, &team.id) {
            return Err(ValidationErrors::single(
                "settings.stream",
                format!("you may not write to team {:?}'s streams", t.team),
            )
            .into());
        }
        Ok(())
    }

    /// A route the caller may operate (restart its job, retry its dead letters): read access to
    /// see it (`NotFound` otherwise), write access to act on it (`Forbidden` otherwise).
    pub async fn operable_route(&self, team: &str, name: &str) -> Result<Object, GoalError> {
        self.operable(Kind::Route, team, name).await
    }

    /// An object of `kind` the caller may operate: `NotFound` unless readable, `Forbidden`
    /// unless the caller may change it.
    pub(crate) async fn operable(&self, kind: Kind, team: &str, name: &str) -> Result<Object, GoalError> {
        let object = self.get(kind, team, name).await?;
        let team_object = self.get(Kind::Team, "", team).await?;
        if !self.who.can_write(kind, &team_object.id) {
            return Err(GoalError::Forbidden);
        }
        Ok(object)
    }

    /// Writes an operation on `object` by the caller to the operations log (see `operations`).
    pub async fn record(&self, object: &Object, action: &str, detail: &str) -> Result<(), GoalError> {
        Ok(self.store.record_operation(&object.id, &self.who.display, action, detail).await?)
    }

    /// Every revision of any object (deleted ones too) by id.
    pub async fn history_by_id(&self, object_id: &str) -> Result<Vec<Revision>, GoalError> {
        let (kind, team_id) = self.store.owner_of(object_id).await?.ok_or(GoalError::NotFound)?;
        let team_id = if kind == Kind::Team { object_id.to_owned() } else { team_id };
        if !self.who.can_read(&team_id) {
            return Err(GoalError::NotFound);
        }
        Ok(self.redact_revisions(self.store.history(object_id).await?))
    }

    /// The field-level changes from version `from` to version `to` of one object.
    pub async fn diff(&self, object_id: &str, from: i64, to: i64) -> Result<Vec<Change>, GoalError> {
        let history = self.history_by_id(object_id).await?;
        let find = |v: i64| history.iter().find(|r| r.version == v).ok_or(GoalError::NotFound);
        Ok(diff(&find(from)?.spec, &find(to)?.spec))
    }

    pub async fn audit(&self, filter: &AuditFilter) -> Result<Vec<Revision>, GoalError> {
        Ok(self.redact_revisions(self.store.audit(&self.who.scope(), filter).await?))
    }

    /// Declares a new object. `team` is ignored for teams.
    pub async fn create(&self, team: &str, name: &str, decl: Declaration, reason: &str) -> Result<Applied, GoalError> {
        self.put(team, name, decl, reason, None, Via::Author).await
    }

    /// Changes an existing object. With `expected_version`, refuses if the object moved since.
    pub async fn update(
        &self,
        team: &str,
        name: &str,
        decl: Declaration,
        reason: &str,
        expected_version: Option<i64>,
    ) -> Result<Applied, GoalError> {
        self.put(team, name, decl, reason, Some(expected_version), Via::Author).await
    }

    /// `update`: `None` to create, `Some(expected)` to update.
    async fn put(
        &self,
        team: &str,
        name: &str,
        decl: Declaration,
        reason: &str,
        update: Option<Option<i64>>,
        via: Via<'_>,
    ) -> Result<Applied, GoalError> {
        let kind = decl.kind();
        let name_checked = Name::parse(name).map_err(|e| ValidationErrors::single("name", e.to_string()));
        check_reason(reason)?;
        if kind == Kind::Policy && name != POLICY_NAME {
            return Err(
                ValidationErrors::single("name", format!("the approval policy is named {POLICY_NAME:?}")).into()
            );
        }
        let submitted = decl.to_json();
        let mut tx = self.store.write().await?;
        let (team_id, team_name) = self.writable_team(&mut tx, kind, team, name, update.is_some()).await?;
        let name = name_checked?;
        let current = tx.get(kind, &team_id, name.as_str()).await?;
        match (&current, update) {
            (Some(_), None) => {
                return Err(ValidationErrors::single(
                    "name",
                    format!("a {kind} named {:?} already exists", name.as_str()),
                )
                .into())
            }
            (None, Some(_)) => return Err(GoalError::NotFound),
            (Some(c), Some(Some(expected))) if c.version != expected => {
                return Err(GoalError::Conflict(format!(
                    "{kind} {name:?} is at version {} but the change was based on version {expected}; reload and retry",
                    c.version
                )))
            }
            _ => {}
        }
        let version = current.as_ref().map_or(1, |c| c.version + 1);
        let mut new_secrets: Vec<(String, String)> = Vec::new();
        let mut sink_tags: Vec<String> = Vec::new();
        let mut new_streams: Vec<(Name, StreamSpec)> = Vec::new();
        let spec: Value = match decl {
            Declaration::Team(s) => {
                s.validate()?;
                to_json(&s)
            }
            Declaration::Policy(p) => {
                p.validate()?;
                to_json(&p)
            }
            Declaration::Stream(mut s) => {
                s.validate()?;
                let before: Option<StreamSpec> = current.as_ref().map(|c| c.spec_as()).transpose().map_err(corrupt)?;
                if let Some(before) = &before {
                    source::keep_derived_schema(&mut tx, self.who, &team_name, name.as_str(), before, &mut s).await?;
                }
                if let Some(before) = before.filter(|b| s.partitions < b.partitions) {
                    // Jobs read the declared partitions only: events in the dropped ones would
                    // never be delivered (Kafka refuses this too).
                    return Err(ValidationErrors::single(
                        "partitions",
                        format!(
                            "cannot go down from {} to {}: events in the dropped partitions would never be delivered; \
                             create a new stream instead",
                            before.partitions, s.partitions
                        ),
                    )
                    .into());
                }
                if let Some(schema) = &s.schema {
                    if let Err(e) = jsonschema::validator_for(schema) {
                        return Err(
                            ValidationErrors::single("schema", format!("is not a valid JSON Schema: {e}")).into()
                        );
                    }
                }
                to_json(&s)
            }
            Declaration::Sink(input) => {
                let previous: Option<SinkSpec> = current.as_ref().map(|c| c.spec_as()).transpose().map_err(corrupt)?;
                let kept: BTreeMap<String, SecretRef> = match &previous {
                    Some(p) if p.kind == input.kind => p.secrets.clone(),
                    _ => BTreeMap::new(),
                };
                let typed = input.validate(&kept.keys().cloned().collect::<Vec<_>>())?;
                // Settings are shown to every reader (with URL passwords masked): a password
                // belongs in the secrets, and a masked one saved back from a form would replace
                // the real one.
                if let Some((key, _)) =
                    input.settings.iter().find(|(_, v)| crate::egress::without_url_password(v).is_some())
                {
                    return Err(ValidationErrors::single(
                        format!("settings.{key}"),
                        "must not carry a password (user:password@); put credentials in the sink's secrets",
                    )
                    .into());
                }
                let had_ambient = previous.as_ref().is_some_and(SinkSpec::ambient_credentials);
                if typed.ambient_credentials() && !had_ambient && self.who.role != Role::Admin {
                    return Err(GoalError::Refused(
                        "only an admin may let a sink use the host's own cloud credentials (ambient_credentials)"
                            .into(),
                    ));
                }
                let destinations = crate::egress::sink_destinations(&typed, &input.secrets);
                crate::egress::check_destinations(self.store.egress(), &destinations).await.map_err(|e| {
                    ValidationErrors::single(crate::egress::destination_field(input.kind), e.to_string())
                })?;
                if let SinkSettings::Stream(s) = &typed {
                    self.check_stream_target(&mut tx, &team_name, s).await?;
                }
                if current.is_some() {
                    let target = typed.stream_target();
                    let change = Proposed::Sink { team: &team_name, name: name.as_str(), target };
                    let feeds = feeds_with(&mut tx, &change).await?;
                    let into = target.and_then(|t| StreamRef::parse(t, &team_name).ok());
                    let into = into.map(|r| format!("{}/{}", r.team, r.stream));
                    // Only a feed into the new target can close a new cycle.
                    let users = feeds.iter().filter(|f| Some(&f.to) == into.as_ref());
                    if let Some(cycle) = users.into_iter().find_map(|f| cycle_through(&feeds, &f.route)) {
                        return Err(ValidationErrors::single(
                            "settings.stream",
                            format!("would make events go round forever: {cycle}"),
                        )
                        .into());
                    }
                    // A table that only inserts would keep the first row of each key of an
                    // updating processor already writing to it: refused as at its declaration.
                    if matches!(&typed, SinkSettings::Postgres(pg) if pg.mode != PostgresMode::Upsert) {
                        let updating = processor::updating_users(&mut tx, &team_name, name.as_str()).await?;
                        if let Some(p) = updating.first() {
                            return Err(ValidationErrors::single(
                                "settings.mode",
                                format!(
                                    "processor {p:?} updates rows in this table: the sink must stay in upsert mode"
                                ),
                            )
                            .into());
                        }
                    }
                }
                let mut secrets = kept;
                for (k, v) in input.secrets.iter().filter(|(_, v)| !v.is_empty()) {
                    secrets.insert(k.clone(), SecretRef { set_in_version: version });
                    new_secrets.push((k.clone(), v.clone()));
                }
                let settings = input.settings.into_iter().filter(|(_, v)| !v.is_empty()).collect();
                to_json(&SinkSpec {
                    kind: input.kind,
                    description: input.description,
                    settings,
                    secrets,
                    tags: input.tags,
                })
            }
            Declaration::Route(r) => {
                r.validate()?;
                let mut e = ValidationErrors::default();
                if tx.get(Kind::Stream, &team_id, r.stream.as_str()).await?.is_none() {
                    e.add("stream", format!("no stream named {:?} in team {team_name:?}", r.stream.as_str()));
                }
                if tx.get(Kind::Sink, &team_id, r.sink.as_str()).await?.is_none() {
                    e.add("sink", format!("no sink named {:?} in team {team_name:?}", r.sink.as_str()));
                }
                // A route must not feed the stream it reads: every event would come round forever.
                let sink =
                    tx.get(Kind::Sink, &team_id, r.sink.as_str()).await?.and_then(|s| s.spec_as::<SinkSpec>().ok());
                sink_tags = sink.as_ref().map(|s| s.tags.clone()).unwrap_or_default();
                if let Some(target) = sink.as_ref().and_then(SinkSpec::stream_target) {
                    if StreamRef::parse(&target, &team_name)
                        .is_ok_and(|t| t.team == team_name && t.stream == r.stream.as_str())
                    {
                        e.add("sink", "delivers into the stream this route reads, which would loop forever");
                    }
                }
                if e.is_empty() {
                    let change = Proposed::Route {
                        team: &team_name,
                        name: name.as_str(),
                        stream: r.stream.as_str(),
                        sink: r.sink.as_str(),
                    };
                    let route = format!("{team_name}/{}", name.as_str());
                    if let Some(cycle) = cycle_through(&feeds_with(&mut tx, &change).await?, &route) {
                        e.add("sink", format!("would make events go round forever: {cycle}"));
                    }
                }
                let stream = tx.get(Kind::Stream, &team_id, r.stream.as_str()).await?;
                let schema = stream.and_then(|s| s.spec_as::<StreamSpec>().ok()).and_then(|s| s.schema);
                check_transforms(&mut e, schema.as_ref(), r.filter.as_deref(), &r.projection);
                e.into_result(())?;
                to_json(&r)
            }
            Declaration::Processor(p) => {
                p.validate()?;
                processor::check_processor(&mut tx, &team_id, &team_name, name.as_str(), &p).await?;
                sink_tags = tx
                    .get(Kind::Sink, &team_id, p.sink.as_str())
                    .await?
                    .and_then(|s| s.spec_as::<SinkSpec>().ok())
                    .map(|s| s.tags)
                    .unwrap_or_default();
                to_json(&p)
            }
            Declaration::Source(input) => {
                let egress = self.store.egress();
                let checked = source::check_source(
                    &mut tx,
                    egress,
                    &team_id,
                    &team_name,
                    name.as_str(),
                    current.as_ref(),
                    input,
                    version,
                )
                .await?;
                new_secrets = checked.secrets;
                new_streams = checked.new_streams;
                checked.spec
            }
        };
        if let Some(c) = &current {
            if c.spec == spec && new_secrets.is_empty() {
                let head = self.store.history(&c.id).await?.pop().ok_or_else(|| corrupt("object without revisions"))?;
                return Ok(Applied { revision: head, changed: false });
            }
        }
        let op = if current.is_some() { Op::Update } else { Op::Create };
        let before = current.as_ref().map(|c| &c.spec);
        let change = ProposedChange { kind, op, before, after: Some(&spec), sink_tags: &sink_tags };
        let mut needs = self.held_back(&mut tx, &via, &change).await?;
        if !new_streams.is_empty() && matches!(via, Via::Author) && !self.who.is_system() {
            // A stream created for a source's table is capacity from nothing, as any new one.
            let created = StreamSpec { tags: Vec::new(), ..new_streams[0].1.clone() };
            let as_stream = ProposedChange {
                kind: Kind::Stream,
                op: Op::Create,
                before: None,
                after: Some(&to_json(&created)),
                sink_tags: &[],
            };
            needs.extend(approvals_needed(&policy_in(&mut tx).await?, &as_stream));
        }
        if !needs.is_empty() {
            let log_on = current.as_ref().map_or(team_id.as_str(), |c| c.id.as_str());
            let request = NewRequest {
                action: RequestAction::Change,
                team_id: &team_id,
                team_name: &team_name,
                kind,
                name: name.as_str(),
                op,
                base_version: version - 1,
                declaration: Some(&submitted),
                spec: &spec,
                changes: &diff(before.unwrap_or(&Value::Null), &spec),
                needs: &needs,
                requester_id: &self.who.user_id,
                requester: &self.who.display,
                reason,
            };
            return Err(self.hold_back(tx, log_on, request).await?);
        }
        let reason = via.reason(reason, self.who);
        let write = Write {
            kind,
            object_id: current.as_ref().map(|c| c.id.as_str()),
            team_id: &team_id,
            team_name: &team_name,
            name: name.as_str(),
            op,
            expected_version: version - 1,
            spec: &spec,
            author_id: via.author_id(self.who),
            author_name: via.author_name(self.who),
            reason: &reason,
        };
        let revision = append(&mut tx, write, &name).await?;
        let author = (via.author_id(self.who), via.author_name(self.who));
        source::create_streams(&mut tx, &new_streams, &team_id, &team_name, name.as_str(), author).await?;
        for (k, v) in &new_secrets {
            tx.put_secret(&revision.object_id, k, version, v).await?;
        }
        self.settle_requests(&mut tx, &via, &revision, &team_id).await?;
        tx.commit().await?;
        Ok(Applied { revision, changed: true })
    }

    /// The policy rules `change` matches; none for a change that already went through
    /// approval, or made by Keystone itself (an automatic rollback returns to an approved
    /// version).
    async fn held_back(
        &self,
        tx: &mut WriteTx,
        via: &Via<'_>,
        change: &ProposedChange<'_>,
    ) -> Result<Vec<String>, GoalError> {
        // Teams are admins' own; the policy is held back by its own rules (see `approvals_needed`).
        if !matches!(via, Via::Author) || self.who.is_system() || change.kind == Kind::Team {
            return Ok(Vec::new());
        }
        Ok(approvals_needed(&policy_in(tx).await?, change))
    }

    /// Stores a held-back change as a pending change request, in the audit log too.
    /// The policy rules an operation on `route` matches that leaves its declaration as it is (an
    /// override, a backfill: see `route_operation_needs`), plus the operation's own rule
    /// (`own`); none for Keystone itself.
    pub(crate) async fn operation_needs(
        &self,
        tx: &mut WriteTx,
        route: &Object,
        own: impl FnOnce(&ApprovalPolicy) -> Option<String>,
    ) -> Result<Vec<String>, GoalError> {
        if self.who.is_system() {
            return Ok(Vec::new());
        }
        let policy = policy_in(tx).await?;
        let spec: RouteSpec = route.spec_as().map_err(corrupt)?;
        let team_id = team_id_in(tx, &route.team).await?;
        let sink = tx.get(Kind::Sink, &team_id, spec.sink.as_str()).await?;
        let sink_tags = sink.and_then(|s| s.spec_as::<SinkSpec>().ok()).map(|s| s.tags).unwrap_or_default();
        let mut needs = route_operation_needs(&policy, &route.spec, &sink_tags);
        needs.extend(own(&policy));
        Ok(needs)
    }

    /// Stores an operation on `route` the policy holds back as a pending change request based
    /// on the route's current version.
    pub(crate) async fn hold_back_operation(
        &self,
        mut tx: WriteTx,
        route: &Object,
        op: HeldOperation<'_>,
    ) -> Result<GoalError, GoalError> {
        let team_id = team_id_in(&mut tx, &route.team).await?;
        let request = NewRequest {
            action: op.action,
            team_id: &team_id,
            team_name: &route.team,
            kind: Kind::Route,
            name: &route.name,
            op: Op::Update,
            base_version: route.version,
            declaration: Some(op.declaration),
            spec: op.shown,
            changes: op.changes,
            needs: op.needs,
            requester_id: &self.who.user_id,
            requester: &self.who.display,
            reason: op.reason,
        };
        self.hold_back(tx, &route.id, request).await
    }

    async fn hold_back(&self, mut tx: WriteTx, log_on: &str, n: NewRequest<'_>) -> Result<GoalError, GoalError> {
        let request = tx.insert_change_request(n).await?;
        let detail =
            format!("#{} submitted: {} (needs approval: {})", request.id, request.summary(), request.needs.join("; "));
        tx.record_operation(log_on, &self.who.display, "change request", &detail).await?;
        tx.commit().await?;
        Ok(GoalError::ApprovalRequired(Box::new(request)))
    }

    /// After a change to an object: an approved request is marked applied, and any other
    /// request pending on the object goes stale (it was based on a version that is gone).
    async fn settle_requests(
        &self,
        tx: &mut WriteTx,
        via: &Via<'_>,
        revision: &Revision,
        team_id: &str,
    ) -> Result<(), GoalError> {
        if let Via::Approval { request, comment, .. } = via {
            if !tx
                .decide_change_request(
                    request.id,
                    RequestState::Approved,
                    &self.who.display,
                    comment,
                    Some(revision.seq),
                )
                .await?
            {
                return Err(GoalError::Conflict(format!("change request #{} was decided meanwhile", request.id)));
            }
            let detail = format!("#{} approved: {}", request.id, request.summary());
            tx.record_operation(&revision.object_id, &self.who.display, "change request", &detail).await?;
        }
        for id in tx.stale_change_requests(team_id, revision.kind, &revision.name).await? {
            let detail =
                format!("#{id} stale: {} {} moved to version {}", revision.kind, revision.name, revision.version);
            tx.record_operation(&revision.object_id, &self.who.display, "change request", &detail).await?;
        }
        Ok(())
    }

    /// Writes a tombstone. Refuses while other live objects depend on this one.
    pub async fn delete(
        &self,
        kind: Kind,
        team: &str,
        name: &str,
        reason: &str,
        expected_version: Option<i64>,
    ) -> Result<Revision, GoalError> {
        self.delete_via(kind, team, name, reason, expected_version, Via::Author).await
    }

    async fn delete_via(
        &self,
        kind: Kind,
        team: &str,
        name: &str,
        reason: &str,
        expected_version: Option<i64>,
        via: Via<'_>,
    ) -> Result<Revision, GoalError> {
        check_reason(reason)?;
        let mut tx = self.store.write().await?;
        let (team_id, team_name) = self.writable_team(&mut tx, kind, team, name, true).await?;
        let current = tx.get(kind, &team_id, name).await?.ok_or(GoalError::NotFound)?;
        if let Some(expected) = expected_version.filter(|v| *v != current.version) {
            return Err(GoalError::Conflict(format!(
                "{kind} {name:?} is at version {} but the delete was based on version {expected}",
                current.version
            )));
        }
        let dependants = match kind {
            Kind::Stream | Kind::Sink => {
                let routes = tx.routes_referencing(&team_id, kind.as_str(), name).await?;
                let processors = processor::processors_using(&mut tx, &team_name, kind, name).await?;
                let sources = if kind == Kind::Stream {
                    source::sources_using(&mut tx, &team_name, name).await?
                } else {
                    Vec::new()
                };
                let routes = routes.into_iter().map(|r| format!("route {r}"));
                let processors = processors.into_iter().map(|p| format!("processor {p}"));
                routes.chain(processors).chain(sources.into_iter().map(|s| format!("source {s}"))).collect()
            }
            Kind::Team => {
                let mut live = Vec::new();
                for k in [Kind::Stream, Kind::Sink, Kind::Route, Kind::Processor, Kind::Source] {
                    live.extend(
                        self.store
                            .list(k, &crate::store::Scope::Teams(vec![current.id.clone()]))
                            .await?
                            .into_iter()
                            .map(|o| format!("{} {}", k, o.name)),
                    );
                }
                live
            }
            Kind::Route | Kind::Processor | Kind::Source | Kind::Policy => Vec::new(),
        };
        if !dependants.is_empty() {
            return Err(ValidationErrors::single(
                "name",
                format!("{name:?} is still used by {}; remove those first", dependants.join(", ")),
            )
            .into());
        }
        let parsed = Name::parse(name).map_err(|e| ValidationErrors::single("name", e.to_string()))?;
        let change = ProposedChange { kind, op: Op::Delete, before: Some(&current.spec), after: None, sink_tags: &[] };
        let needs = self.held_back(&mut tx, &via, &change).await?;
        if !needs.is_empty() {
            let request = NewRequest {
                action: RequestAction::Change,
                team_id: &team_id,
                team_name: &team_name,
                kind,
                name,
                op: Op::Delete,
                base_version: current.version,
                declaration: None,
                spec: &current.spec,
                changes: &diff(&current.spec, &Value::Null),
                needs: &needs,
                requester_id: &self.who.user_id,
                requester: &self.who.display,
                reason,
            };
            return Err(self.hold_back(tx, &current.id, request).await?);
        }
        let reason = via.reason(reason, self.who);
        let write = Write {
            kind,
            object_id: Some(&current.id),
            team_id: &team_id,
            team_name: &team_name,
            name,
            op: Op::Delete,
            expected_version: current.version,
            spec: &current.spec,
            author_id: via.author_id(self.who),
            author_name: via.author_name(self.who),
            reason: &reason,
        };
        let revision = append(&mut tx, write, &parsed).await?;
        self.settle_requests(&mut tx, &via, &revision, &team_id).await?;
        tx.commit().await?;
        Ok(revision)
    }

    /// Resolves the team a write goes to and checks the caller may write there. Teams are owned
    /// by the platform (team id `""`) and need an admin.
    async fn writable_team(
        &self,
        tx: &mut WriteTx,
        kind: Kind,
        team: &str,
        name: &str,
        existing: bool,
    ) -> Result<(String, String), GoalError> {
        if kind == Kind::Policy {
            return if self.who.is_admin() { Ok((String::new(), String::new())) } else { Err(GoalError::Forbidden) };
        }
        if kind == Kind::Team {
            if !self.who.is_admin() {
                // Members may know their team exists; others learn nothing.
                let visible = match tx.get(Kind::Team, "", name).await? {
                    Some(t) => self.who.can_read(&t.id),
                    None => false,
                };
                return Err(if visible || !existing { GoalError::Forbidden } else { GoalError::NotFound });
            }
            return Ok((String::new(), name.to_owned()));
        }
        let Some(t) = tx.get(Kind::Team, "", team).await? else {
            return Err(ValidationErrors::single("team", format!("no team named {team:?}")).into());
        };
        if !self.who.can_read(&t.id) {
            return Err(if existing {
                GoalError::NotFound
            } else {
                ValidationErrors::single("team", format!("no team named {team:?}")).into()
            });
        }
        if !self.who.can_write(kind, &t.id) {
            return Err(GoalError::Forbidden);
        }
        Ok((t.id, t.name))
    }
}

/// The approval policy in force, read in the transaction that applies or holds back a change
/// (none declared: the default, which holds nothing back).
/// The id of a team (a route's, known to exist) inside a write.
async fn team_id_in(tx: &mut WriteTx, team: &str) -> Result<String, GoalError> {
    Ok(tx.get(Kind::Team, "", team).await?.ok_or(GoalError::NotFound)?.id)
}

async fn policy_in(tx: &mut WriteTx) -> Result<ApprovalPolicy, GoalError> {
    match tx.get(Kind::Policy, "", POLICY_NAME).await? {
        Some(p) => Ok(p.spec_as().map_err(corrupt)?),
        None => Ok(ApprovalPolicy::default()),
    }
}

/// An operation on a route held back for approval (see `Goal::hold_back_operation`).
pub(crate) struct HeldOperation<'a> {
    pub action: RequestAction,
    /// What the approval needs to carry the operation out.
    pub declaration: &'a Value,
    /// What the request shows.
    pub shown: &'a Value,
    pub changes: &'a [Change],
    pub needs: &'a [String],
    pub reason: &'a str,
}

/// How a change reaches `put` and `delete`: from its author, or as an approved change request
/// (past the policy already; the requester stays the revision's author).
#[derive(Clone, Copy)]
enum Via<'r> {
    Author,
    Approval { request: &'r ChangeRequest, requester_id: &'r str, comment: &'r str },
}

impl Via<'_> {
    fn author_id<'a>(&'a self, who: &'a Principal) -> &'a str {
        match self {
            Via::Author => &who.user_id,
            Via::Approval { requester_id, .. } => requester_id,
        }
    }

    fn author_name<'a>(&'a self, who: &'a Principal) -> &'a str {
        match self {
            Via::Author => &who.display,
            Via::Approval { request, .. } => &request.requester,
        }
    }

    fn reason(&self, reason: &str, who: &Principal) -> String {
        match self {
            Via::Author => reason.to_owned(),
            Via::Approval { request, .. } => {
                format!("{reason} (change request #{} approved by {})", request.id, who.display)
            }
        }
    }
}

async fn append(tx: &mut WriteTx, w: Write<'_>, name: &Name) -> Result<Revision, GoalError> {
    let kind = w.kind;
    let expected = w.expected_version;
    tx.append(w).await.map_err(|e| match e {
        AppendError::NameTaken => {
            ValidationErrors::single("name", format!("a {kind} named {:?} already exists", name.as_str())).into()
        }
        AppendError::Stale { .. } => {
            GoalError::Conflict(format!("{kind} {name:?} changed after version {expected}; reload and retry"))
        }
        AppendError::Store(s) => GoalError::Store(s),
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("specs always serialise")
}

fn corrupt(e: impl std::fmt::Display) -> GoalError {
    GoalError::Store(StoreError::Corrupt(e.to_string()))
}

/// What members see instead of their team's alert webhook URL.
pub const WEBHOOK_HIDDEN: &str = "(set; only admins can read it)";
