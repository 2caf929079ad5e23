//! The route configuration use cases: the effective configuration with its provenance, and
//! console overrides set, cleared and approved (see `crate::config` for the layering; the
//! overrides' rows are kept by `store::config`).

use crate::approvals::{RequestAction, RequestState};
use crate::config::{check_value, effective, ConfigEntry};
use crate::deployments::ConfigChange;
use crate::diff::Change;
use crate::goal::{Goal, GoalError, HeldOperation};
use crate::model::{DesiredState, Object, RouteSpec};
use crate::store::approvals::StoredRequest;
use crate::store::deployments::NewDeployment;
use crate::store::{StoreError, WriteTx};
use serde_json::Value;
use std::collections::BTreeMap;

impl Goal<'_> {
    /// A route's effective configuration: every layered key with its value and source, given
    /// the environment layer of the process running its job.
    pub async fn route_config(
        &self,
        team: &str,
        name: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<Vec<ConfigEntry>, GoalError> {
        let route = self.get(crate::Kind::Route, team, name).await?;
        let spec: RouteSpec = route.spec_as().map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let overrides = self.store().config_overrides(&route.id).await?;
        Ok(effective(&spec, env, &overrides)?.1)
    }

    /// Sets (or with `None` clears) an override of one key of a route: the top configuration
    /// layer, applied by rolling the job with the route's strategy and judged by its stability
    /// gate like a new version (a running route records a deployment the gate may roll back).
    /// Needs write access; goes to the operations log with the reason. An override the approval
    /// policy holds back (a route to a production sink, a critical route) becomes a change
    /// request instead (`ApprovalRequired`).
    pub async fn set_config_override(
        &self,
        team: &str,
        name: &str,
        key: &str,
        value: Option<&str>,
        reason: &str,
    ) -> Result<(), GoalError> {
        let route = self.operable_route(team, name).await?;
        let key = key.trim();
        let value = value.map(str::trim);
        match value {
            Some(v) => check_value(key, v, "value").map_err(|e| {
                // An unknown key is the key's fault, not the value's.
                if crate::config::LAYERED_KEYS.contains(&key) {
                    e
                } else {
                    crate::ValidationErrors::single("key", e.0[0].message.clone())
                }
            })?,
            None if !crate::config::LAYERED_KEYS.contains(&key) => {
                return Err(crate::ValidationErrors::single("key", format!("{key:?} is not a configuration key")).into())
            }
            None => {}
        }
        crate::goal::check_reason(reason)?;
        let before = self.store().config_overrides(&route.id).await?.into_iter().find(|o| o.key == key);
        let change =
            ConfigChange { key: key.to_owned(), before: before.map(|o| o.value), after: value.map(str::to_owned) };
        if change.before == change.after {
            return Ok(());
        }
        let mut tx = self.store().write().await?;
        let needs = self.operation_needs(&mut tx, &route, |_| None).await?;
        if !needs.is_empty() {
            let declaration = serde_json::to_value(&change).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let shown = serde_json::json!({ "config": { key: value } });
            let changes = [Change {
                path: format!("config.{key}"),
                before: change.before.clone().map(Value::from),
                after: change.after.clone().map(Value::from),
            }];
            let held = HeldOperation {
                action: RequestAction::Override,
                declaration: &declaration,
                shown: &shown,
                changes: &changes,
                needs: &needs,
                reason,
            };
            return Err(self.hold_back_operation(tx, &route, held).await?);
        }
        let detail = if reason.trim().is_empty() { String::new() } else { format!(": {}", reason.trim()) };
        self.apply_override(&mut tx, &route, &change, &self.who().display, &detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes an override (set by `by`), records it, and, unless Keystone itself is putting one
    /// back, deploys it when the route's job runs.
    async fn apply_override(
        &self,
        tx: &mut WriteTx,
        route: &Object,
        change: &ConfigChange,
        by: &str,
        detail: &str,
    ) -> Result<(), GoalError> {
        if !tx.put_config_override(&route.id, &change.key, change.after.as_deref(), by).await? {
            return Ok(());
        }
        let described = change.describe();
        tx.record_operation(&route.id, &self.who().display, "config override", &format!("{described}{detail}")).await?;
        let spec: RouteSpec = route.spec_as().map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // A stopped route has no job to judge: the override applies when it starts.
        if !self.who().is_system() && spec.state != DesiredState::Stopped {
            let deployment = NewDeployment {
                route_id: &route.id,
                from_version: Some(route.version),
                to_version: route.version,
                strategy: spec.delivery_on_redeploy,
                detail: &format!("v{} with the override {described}", route.version),
                config: Some(change.clone()),
            };
            tx.start_deployment(deployment).await?;
        }
        Ok(())
    }

    /// Applies an approved override request to `route` (still at the version it was asked of).
    /// If the override moved on since the request, the request is stale.
    pub(crate) async fn approve_override(
        &self,
        stored: &StoredRequest,
        route: &Object,
        comment: &str,
    ) -> Result<(), GoalError> {
        let request = &stored.request;
        let submitted = stored.declaration.clone().ok_or_else(|| corrupt("a pending override without its value"))?;
        let change: ConfigChange = serde_json::from_value(submitted).map_err(corrupt)?;
        let now = self.store().config_overrides(&route.id).await?.into_iter().find(|o| o.key == change.key);
        let mut tx = self.store().write().await?;
        if now.map(|o| o.value) != change.before {
            tx.decide_change_request(request.id, RequestState::Stale, &self.who().display, comment, None).await?;
            let detail = format!("#{} stale: approval refused, the override of {} moved on", request.id, change.key);
            tx.record_operation(&route.id, &self.who().display, "change request", &detail).await?;
            tx.commit().await?;
            return Err(GoalError::Conflict(format!(
                "change request #{} is stale: the override of {} changed since it was requested; the requester \
                 must submit it again",
                request.id, change.key
            )));
        }
        let detail = self.approve_operation(&mut tx, request, comment).await?;
        self.apply_override(&mut tx, route, &change, &request.requester, &detail).await?;
        tx.commit().await?;
        Ok(())
    }
}

fn corrupt(e: impl std::fmt::Display) -> GoalError {
    StoreError::Corrupt(format!("change request: {e}")).into()
}
