//! Change requests: the approval policy in force, the requests a caller may see, and an admin's
//! decision on one.

use super::*;

impl Goal<'_> {
    /// The approval policy in force (the default, which holds nothing back, if none was
    /// declared). Everyone may read it: it tells requesters what will wait for an admin.
    pub async fn approval_policy(&self) -> Result<(ApprovalPolicy, Option<Object>), GoalError> {
        match self.store.get(Kind::Policy, "", POLICY_NAME).await? {
            Some(o) => Ok((o.spec_as().map_err(corrupt)?, Some(o))),
            None => Ok((ApprovalPolicy::default(), None)),
        }
    }

    /// Change requests the caller may see: admins see all, others those of their teams.
    pub async fn change_requests(&self, filter: &RequestFilter) -> Result<Vec<ChangeRequest>, GoalError> {
        Ok(self.store.change_requests(&self.who.scope(), filter).await?)
    }

    pub async fn change_request(&self, id: i64) -> Result<ChangeRequest, GoalError> {
        Ok(self.change_request_and_author(id).await?.0)
    }

    /// A change request, and whether the caller submitted it (and so may not decide it).
    pub async fn change_request_and_author(&self, id: i64) -> Result<(ChangeRequest, bool), GoalError> {
        let stored = self.store.change_request(id).await?.ok_or(GoalError::NotFound)?;
        if !self.who.can_read(&stored.team_id) {
            return Err(GoalError::NotFound);
        }
        Ok((stored.request, stored.requester_id == self.who.user_id))
    }

    /// An admin's decision on a pending change request. Approving applies the change exactly
    /// as submitted (validated again) in the same transaction that marks the request approved;
    /// the revision's author is the requester. The requester may never decide their own
    /// request, and a request whose object moved on since goes stale instead.
    /// `job_held` says whether this process still runs a route's job (a rewind is applied only
    /// to a stopped route).
    pub async fn decide(
        &self,
        id: i64,
        approve: bool,
        comment: &str,
        job_held: impl Fn(&str) -> bool,
    ) -> Result<ChangeRequest, GoalError> {
        if !self.who.is_admin() {
            return Err(GoalError::Refused("only admins decide change requests".into()));
        }
        check_reason(comment)
            .map_err(|_| ValidationErrors::single("comment", format!("must be at most {REASON_MAX} characters")))?;
        if !approve && comment.trim().is_empty() {
            return Err(
                ValidationErrors::single("comment", "say why the change is rejected (the requester reads it)").into()
            );
        }
        let stored = self.store.change_request(id).await?.ok_or(GoalError::NotFound)?;
        let request = &stored.request;
        if request.state != RequestState::Pending {
            return Err(GoalError::Conflict(format!("change request #{id} is already {}", request.state.as_str())));
        }
        if stored.requester_id == self.who.user_id {
            return Err(GoalError::Refused(format!(
                "you submitted change request #{id}; another admin must decide it"
            )));
        }
        // Otherwise one admin could make a second account and approve their own change.
        if approve && self.store.role_since(&self.who.user_id).await?.is_some_and(|since| since > request.created_at) {
            return Err(GoalError::Refused(format!(
                "you became an admin after change request #{id} was made; an admin who was one then must decide it"
            )));
        }
        let comment = comment.trim();
        if !approve {
            let mut tx = self.store.write().await?;
            if !tx.decide_change_request(id, RequestState::Rejected, &self.who.display, comment, None).await? {
                return Err(GoalError::Conflict(format!("change request #{id} was decided meanwhile")));
            }
            let log_on = self.log_object(&stored.team_id, request).await?;
            let detail = format!("#{id} rejected: {} ({comment})", request.summary());
            tx.record_operation(&log_on, &self.who.display, "change request", &detail).await?;
            tx.commit().await?;
            return self.change_request(id).await;
        }
        // A change, or a rewind, was asked of one version of the object: if it moved on since,
        // the request is stale whatever it asks.
        let current = self.store.get(request.kind, &stored.team_id, &request.name).await?;
        let now_at = current.as_ref().map_or(0, |c| c.version);
        if now_at != request.base_version {
            let log_on = current.map_or_else(|| stored.team_id.clone(), |c| c.id);
            let mut tx = self.store.write().await?;
            tx.stale_change_requests(&stored.team_id, request.kind, &request.name).await?;
            let detail = format!("#{id} stale: approval refused, {} {} moved on", request.kind, request.name);
            tx.record_operation(&log_on, &self.who.display, "change request", &detail).await?;
            tx.commit().await?;
            return Err(GoalError::Conflict(format!(
                "change request #{id} is stale: {} {:?} is at version {now_at} but the request was based on \
                 version {}; the requester must submit it again",
                request.kind, request.name, request.base_version
            )));
        }
        match (request.action, &current) {
            (RequestAction::Rewind, Some(route)) => {
                self.approve_rewind(&stored, route, comment, job_held(&route.id)).await?;
                return self.change_request(id).await;
            }
            (RequestAction::Override, Some(route)) => {
                // A stale override is recorded as such before the refusal is returned.
                self.approve_override(&stored, route, comment).await?;
                return self.change_request(id).await;
            }
            (RequestAction::Backfill, Some(route)) => {
                self.approve_backfill(&stored, route, comment).await?;
                return self.change_request(id).await;
            }
            _ => {}
        }
        let via = Via::Approval { request, requester_id: &stored.requester_id, comment };
        if request.op == Op::Delete {
            self.delete_via(request.kind, &request.team, &request.name, &request.reason, Some(now_at), via).await?;
        } else {
            let submitted =
                stored.declaration.clone().ok_or_else(|| corrupt("a pending request without its declaration"))?;
            let decl = Declaration::from_json(request.kind, submitted)?;
            let update = (request.op == Op::Update).then_some(Some(now_at));
            let applied = self.put(&request.team, &request.name, decl, &request.reason, update, via).await?;
            if !applied.changed {
                // The goal already says what the request asked for: nothing to write.
                let mut tx = self.store.write().await?;
                tx.decide_change_request(id, RequestState::Approved, &self.who.display, comment, None).await?;
                tx.commit().await?;
            }
        }
        self.change_request(id).await
    }

    /// The object a request's audit entries are filed under: the object, or its team for a
    /// create.
    async fn log_object(&self, team_id: &str, request: &ChangeRequest) -> Result<String, GoalError> {
        Ok(match self.store.get(request.kind, team_id, &request.name).await? {
            Some(o) => o.id,
            None => team_id.to_owned(),
        })
    }
}
