//! Operations on a route that leave its declaration's shape as it is: silencing its alerts,
//! previewing it, restarting it, its desired state, a rollback, savepoints and rewinds (and their
//! approval).

use super::*;

impl Goal<'_> {
    /// Silences a route's alert notifications (one rule, or all with `rule` empty) for
    /// `minutes`; the caller needs write access, and the silence goes to the operations log.
    pub async fn silence_alerts(
        &self,
        team: &str,
        name: &str,
        rule: &str,
        minutes: u32,
        reason: &str,
    ) -> Result<crate::alerts::Silence, GoalError> {
        use crate::alerts::{AlertKind, Silence, MAX_SILENCE_MINUTES};
        let mut e = ValidationErrors::default();
        let kind = match rule.trim() {
            "" => None,
            r => AlertKind::parse(r).or_else(|| {
                e.add("rule", format!("{r:?} is not a rule kind"));
                None
            }),
        };
        if !(1..=MAX_SILENCE_MINUTES).contains(&minutes) {
            e.add("minutes", format!("must be between 1 and {MAX_SILENCE_MINUTES}"));
        }
        if reason.trim().is_empty() {
            e.add("reason", "say why the alerts are silenced (it goes to the audit log)");
        }
        if !e.is_empty() {
            return Err(e.into());
        }
        let route = self.operable_route(team, name).await?;
        let until = crate::store::now_ms() + i64::from(minutes) * 60_000;
        let silence = Silence { rule: kind, until, by: self.who.display.clone(), reason: reason.trim().to_owned() };
        self.store.add_silence(&route.id, &silence).await?;
        let what = kind.map_or("all alerts", AlertKind::as_str);
        self.record(&route, "silence alerts", &format!("{what} for {minutes} min: {}", silence.reason)).await?;
        Ok(silence)
    }

    /// The stream a route preview reads, after checking the transforms as a save would. Editors
    /// only: a preview changes nothing, but it runs the caller's filter on the server.
    pub async fn preview_target(
        &self,
        team: &str,
        stream: &str,
        filter: Option<&str>,
        projection: &crate::model::Projection,
    ) -> Result<(Object, StreamSpec), GoalError> {
        let team_id = self.readable_team(team).await?;
        if !self.who.can_write(Kind::Route, &team_id) {
            return Err(GoalError::Forbidden);
        }
        let mut e = ValidationErrors::default();
        let Some(object) = self.store.get(Kind::Stream, &team_id, stream).await? else {
            return Err(
                ValidationErrors::single("stream", format!("no stream named {stream:?} in team {team:?}")).into()
            );
        };
        let spec: StreamSpec = object.spec_as().map_err(|err| StoreError::Corrupt(err.to_string()))?;
        for (field, path) in projection.paths() {
            if let Err(msg) = crate::model::check_field_path(path) {
                e.add(field, msg);
            }
        }
        check_transforms(&mut e, spec.schema.as_ref(), filter, projection);
        Ok(e.into_result((object, spec))?)
    }

    /// Restarts a route's job wherever it runs (this server or workers): a new restart
    /// generation, which the job's fingerprint includes, so every process holding the job
    /// replaces it (from its last checkpoint) on its next pass. Editors of the route's team.
    pub async fn restart_route(&self, team: &str, name: &str, detail: &str) -> Result<i64, GoalError> {
        let route = self.operable_route(team, name).await?;
        Ok(self.store.request_restart(&route.id, &self.who.display, detail).await?)
    }

    /// Sets a route's desired state (running, paused, stopped). It is part of the route's goal
    /// state, so the change is a new revision, audited and undoable like any other; setting the
    /// state a route already has writes nothing.
    pub async fn set_route_state(
        &self,
        team: &str,
        name: &str,
        state: DesiredState,
        reason: &str,
    ) -> Result<Applied, GoalError> {
        let current = self.get(Kind::Route, team, name).await?;
        let spec: RouteSpec = current.spec_as().map_err(|err| StoreError::Corrupt(err.to_string()))?;
        let decl = Declaration::Route(RouteSpec { state, ..spec });
        self.update(team, name, decl, reason, Some(current.version)).await
    }

    /// Sets a route back to what an earlier version declared, as a new revision (history is
    /// never rewritten). The desired state stays today's: rolling back a paused route leaves it
    /// paused. The old declaration is validated again, so a rollback to a version whose sink
    /// is gone is refused with the reason.
    pub async fn roll_back_route(
        &self,
        team: &str,
        name: &str,
        to_version: i64,
        reason: &str,
    ) -> Result<Applied, GoalError> {
        let current = self.get(Kind::Route, team, name).await?;
        let corrupt = |err: serde_json::Error| StoreError::Corrupt(err.to_string());
        let target = self
            .store
            .history(&current.id)
            .await?
            .into_iter()
            .find(|r| r.version == to_version && r.op != Op::Delete)
            .ok_or_else(|| {
                ValidationErrors::single("version", format!("route {name:?} has no version {to_version}"))
            })?;
        let old: RouteSpec = serde_json::from_value(target.spec).map_err(corrupt)?;
        let now: RouteSpec = current.spec_as().map_err(corrupt)?;
        let decl = Declaration::Route(RouteSpec { state: now.state, ..old });
        self.update(team, name, decl, reason, Some(current.version)).await
    }

    /// Records the route's committed positions under `label`, for a later rewind (write access;
    /// a label already used for the route is refused).
    pub async fn take_savepoint(
        &self,
        team: &str,
        name: &str,
        label: &str,
    ) -> Result<crate::rewind::Savepoint, GoalError> {
        let route = self.operable_route(team, name).await?;
        let label = Name::parse(label).map_err(|e| ValidationErrors::single("name", e.to_string()))?;
        let positions: Vec<(u32, u64)> =
            self.store.checkpoints(&route.id).await?.into_iter().map(|c| (c.partition, c.next_offset)).collect();
        if !self.store.put_savepoint(&route.id, label.as_str(), &positions, &self.who.display).await? {
            return Err(ValidationErrors::single("name", format!("the route has a savepoint named {label:?}")).into());
        }
        self.record(&route, "savepoint", label.as_str()).await?;
        let saved = self.store.savepoints(&route.id).await?.into_iter().find(|sp| sp.name == label.as_str());
        Ok(saved.ok_or_else(|| StoreError::Corrupt("a savepoint vanished after it was written".into()))?)
    }

    /// What a rewind of a route needs from the goal state: the route (the caller must be able to
    /// operate it), its stream's topic and partitions, a savepoint's positions, and the
    /// rewind described for the operations log. The log resolves the rest
    /// (`engine::job::rewind::target_positions`).
    pub async fn rewind_inputs(
        &self,
        team: &str,
        name: &str,
        to: &crate::rewind::RewindTo,
    ) -> Result<crate::rewind::RewindInputs, GoalError> {
        use crate::rewind::RewindTo;
        let route = self.operable_route(team, name).await?;
        let corrupt = |err: serde_json::Error| StoreError::Corrupt(err.to_string());
        let spec: RouteSpec = route.spec_as().map_err(corrupt)?;
        let stream = self.get(Kind::Stream, team, spec.stream.as_str()).await?;
        let partitions = stream.spec_as::<StreamSpec>().map_err(corrupt)?.partitions;
        let (recorded, describe) = match to {
            RewindTo::Earliest => (Vec::new(), "to the earliest retained event".to_owned()),
            RewindTo::Timestamp { timestamp } => (Vec::new(), format!("to the events ingested from {timestamp} (ms)")),
            RewindTo::Savepoint { savepoint } => {
                let found = self.store.savepoints(&route.id).await?.into_iter().find(|sp| &sp.name == savepoint);
                let sp = found
                    .ok_or_else(|| ValidationErrors::single("savepoint", format!("no savepoint {savepoint:?}")))?;
                (sp.positions, format!("to savepoint {savepoint:?}"))
            }
            RewindTo::Checkpoint { checkpoint } => {
                let found = self.store.checkpoint_history(&route.id).await?.into_iter().find(|c| c.id == *checkpoint);
                let c = found.ok_or_else(|| {
                    ValidationErrors::single(
                        "checkpoint",
                        format!("the route has no checkpoint #{checkpoint} in its history"),
                    )
                })?;
                (c.positions, format!("to checkpoint #{checkpoint} (taken at {} ms)", c.taken_at))
            }
        };
        Ok(crate::rewind::RewindInputs { topic: stream.stream_topic(), partitions, recorded, describe, route })
    }

    /// Rewinds a stopped route's job to `target` positions (resolved from the log by the caller),
    /// or only estimates it with `dry_run`. Only a route declared stopped may be rewound, so no
    /// running job can commit over the new positions; `job_held` says whether this process
    /// still holds a job of the route (it is being stopped). The rewind goes to the
    /// operations log with the plan. One that delivers more events again than the approval
    /// policy allows becomes a change request instead (`ApprovalRequired`).
    pub async fn rewind_route(
        &self,
        inputs: &crate::rewind::RewindInputs,
        job_held: bool,
        target: &[(u32, u64)],
        dry_run: bool,
    ) -> Result<crate::rewind::RewindPlan, GoalError> {
        let (route, describe) = (&inputs.route, &inputs.describe);
        let spec: RouteSpec = route.spec_as().map_err(|err| StoreError::Corrupt(err.to_string()))?;
        let committed: Vec<(u32, u64)> =
            self.store.checkpoints(&route.id).await?.into_iter().map(|c| (c.partition, c.next_offset)).collect();
        let plan = crate::rewind::plan_rewind(&committed, target);
        if dry_run {
            return Ok(plan);
        }
        if spec.state != DesiredState::Stopped || job_held {
            return Err(GoalError::Conflict(format!(
                "route {:?} must be stopped before a rewind (set its state to stopped, then rewind, then start it)",
                route.name
            )));
        }
        self.readable_team(&route.team).await?;
        let mut tx = self.store.write().await?;
        if !self.who.is_system() {
            if let Some(need) = rewind_needs(&policy_in(&mut tx).await?, plan.redelivered) {
                let changes: Vec<Change> = plan
                    .partitions
                    .iter()
                    .filter(|p| p.from != p.to)
                    .map(|p| Change {
                        path: format!("partition {}", p.partition),
                        before: Some(Value::from(p.from)),
                        after: Some(Value::from(p.to)),
                    })
                    .collect();
                let positions = serde_json::json!({"positions": target, "describe": describe});
                let shown =
                    serde_json::json!({"rewind": describe, "redelivered": plan.redelivered, "skipped": plan.skipped});
                let held = HeldOperation {
                    action: RequestAction::Rewind,
                    declaration: &positions,
                    shown: &shown,
                    changes: &changes,
                    needs: &[need],
                    reason: describe,
                };
                return Err(self.hold_back_operation(tx, route, held).await?);
            }
        }
        tx.put_checkpoints(&route.id, target).await?;
        let detail = format!("{describe}: {} event(s) to deliver again, {} skipped", plan.redelivered, plan.skipped);
        tx.record_operation(&route.id, &self.who.display, "rewind", &detail).await?;
        tx.commit().await?;
        Ok(plan)
    }

    /// Marks an operation's change request approved inside `tx` (the operation is applied in the
    /// same transaction) and returns what its operations-log entry adds: who asked, who approved.
    pub(crate) async fn approve_operation(
        &self,
        tx: &mut WriteTx,
        request: &ChangeRequest,
        comment: &str,
    ) -> Result<String, GoalError> {
        if !tx.decide_change_request(request.id, RequestState::Approved, &self.who.display, comment, None).await? {
            return Err(GoalError::Conflict(format!("change request #{} was decided meanwhile", request.id)));
        }
        Ok(format!(" (change request #{} by {}, approved by {})", request.id, request.requester, self.who.display))
    }

    /// Applies an approved rewind request to `route` (still at the version it was asked of):
    /// the route must be stopped, with no job held (`job_held`), or the request stays pending.
    pub(super) async fn approve_rewind(
        &self,
        stored: &crate::store::approvals::StoredRequest,
        route: &Object,
        comment: &str,
        job_held: bool,
    ) -> Result<(), GoalError> {
        let request = &stored.request;
        let spec: RouteSpec = route.spec_as().map_err(corrupt)?;
        if spec.state != DesiredState::Stopped || job_held {
            return Err(GoalError::Conflict(format!(
                "route {:?} must be stopped before its rewind is approved; it stays pending",
                request.name
            )));
        }
        let submitted = stored.declaration.as_ref().ok_or_else(|| corrupt("a pending rewind without its positions"))?;
        let positions: Vec<(u32, u64)> = serde_json::from_value(submitted["positions"].clone()).map_err(corrupt)?;
        let describe = submitted["describe"].as_str().unwrap_or("to recorded positions");
        let mut tx = self.store.write().await?;
        let approved = self.approve_operation(&mut tx, request, comment).await?;
        tx.put_checkpoints(&route.id, &positions).await?;
        let detail = format!("{describe}{approved}");
        tx.record_operation(&route.id, &self.who.display, "rewind", &detail).await?;
        tx.commit().await?;
        Ok(())
    }
}
