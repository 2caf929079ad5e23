//! Console overrides of route configuration in the store, and the goal-state service's
//! operations on them (see `config` for the layering).

use crate::config::{check_value, effective, ConfigEntry, ConfigOverride};
use crate::goal::{Goal, GoalError};
use crate::model::RouteSpec;
use crate::store::{now_ms, Store, StoreError};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};

impl Store {
    /// Every route's overrides, by route id (what the reconciler layers onto each route).
    pub async fn all_config_overrides(&self) -> Result<HashMap<String, Vec<ConfigOverride>>, StoreError> {
        let rows = sqlx::query("SELECT route_id, key, value, set_by, set_at FROM config_overrides ORDER BY key")
            .fetch_all(self.pool())
            .await?;
        let mut out: HashMap<String, Vec<ConfigOverride>> = HashMap::new();
        for r in rows {
            out.entry(r.try_get("route_id")?).or_default().push(ConfigOverride {
                key: r.try_get("key")?,
                value: r.try_get("value")?,
                by: r.try_get("set_by")?,
                at: r.try_get("set_at")?,
            });
        }
        Ok(out)
    }

    pub async fn config_overrides(&self, route_id: &str) -> Result<Vec<ConfigOverride>, StoreError> {
        Ok(self.all_config_overrides().await?.remove(route_id).unwrap_or_default())
    }

    async fn put_config_override(
        &self,
        route_id: &str,
        key: &str,
        value: Option<&str>,
        by: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let removed = sqlx::query("DELETE FROM config_overrides WHERE route_id = $1 AND key = $2")
            .bind(route_id)
            .bind(key)
            .execute(tx.conn())
            .await?
            .rows_affected();
        if let Some(v) = value {
            sqlx::query(
                "INSERT INTO config_overrides (route_id, key, value, set_by, set_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(route_id)
            .bind(key)
            .bind(v)
            .bind(by)
            .bind(now_ms())
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await?;
        Ok(removed > 0 || value.is_some())
    }
}

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
    /// layer, applied by rolling the job with the route's strategy. Needs write access; goes to
    /// the operations log with the reason.
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
        if self.store().put_config_override(&route.id, key, value, &self.who().display).await? {
            let what = match value {
                Some(v) => format!("{key} = {v}"),
                None => format!("{key} back to the layers below"),
            };
            let why = if reason.trim().is_empty() { String::new() } else { format!(": {}", reason.trim()) };
            self.record(&route, "config override", &format!("{what}{why}")).await?;
        }
        Ok(())
    }
}
