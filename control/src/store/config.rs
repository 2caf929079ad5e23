//! Console overrides of route configuration in the store (the use cases are in
//! `goal::config`; the layering in `crate::config`).

use crate::config::ConfigOverride;
use crate::store::{now_ms, Store, StoreError, WriteTx};
use sqlx::Row;
use std::collections::HashMap;

impl Store {
    /// Every route's overrides, by route id (what the reconciler layers onto each route).
    pub async fn all_config_overrides(&self) -> Result<HashMap<String, Vec<ConfigOverride>>, StoreError> {
        self.overrides_where(None).await
    }

    /// One route's overrides.
    pub async fn config_overrides(&self, route_id: &str) -> Result<Vec<ConfigOverride>, StoreError> {
        Ok(self.overrides_where(Some(route_id)).await?.remove(route_id).unwrap_or_default())
    }

    /// Overrides by route id, of one route or all.
    async fn overrides_where(
        &self,
        route_id: Option<&str>,
    ) -> Result<HashMap<String, Vec<ConfigOverride>>, StoreError> {
        const SELECT: &str = "SELECT route_id, key, value, set_by, set_at FROM config_overrides";
        let rows = match route_id {
            Some(id) => {
                let sql = format!("{SELECT} WHERE route_id = $1 ORDER BY key");
                sqlx::query(&sql).bind(id).fetch_all(self.pool()).await?
            }
            None => sqlx::query(&format!("{SELECT} ORDER BY key")).fetch_all(self.pool()).await?,
        };
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
}

impl WriteTx {
    /// Sets (or with `None` clears) one override; true when something changed.
    pub(crate) async fn put_config_override(
        &mut self,
        route_id: &str,
        key: &str,
        value: Option<&str>,
        by: &str,
    ) -> Result<bool, StoreError> {
        let removed = sqlx::query("DELETE FROM config_overrides WHERE route_id = $1 AND key = $2")
            .bind(route_id)
            .bind(key)
            .execute(self.conn())
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
            .execute(self.conn())
            .await?;
        }
        Ok(removed > 0 || value.is_some())
    }
}
