//! Deployments in the source-of-truth database: recorded when a new route version starts, judged
//! by the stability gate, finished as stable, rolled back or superseded.

use crate::deployments::*;
use crate::store::{now_ms, Store, StoreError, WriteTx};
use crate::Delivery;
use sqlx::Row;

const SELECT: &str = "SELECT id, route_id, from_version, to_version, strategy, state, started_at, finished_at, \
                      detail, config FROM deployments";

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("deployment {e}"))
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<Deployment, StoreError> {
    let strategy: String = r.try_get("strategy")?;
    let state: String = r.try_get("state")?;
    let config: Option<String> = r.try_get("config")?;
    Ok(Deployment {
        id: r.try_get("id")?,
        route_id: r.try_get("route_id")?,
        from_version: r.try_get("from_version")?,
        to_version: r.try_get("to_version")?,
        strategy: Delivery::parse(&strategy).ok_or_else(|| corrupt(format!("strategy {strategy:?}")))?,
        state: DeploymentState::parse(&state).ok_or_else(|| corrupt(format!("state {state:?}")))?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        detail: r.try_get("detail")?,
        config: config.map(|c| serde_json::from_str(&c)).transpose().map_err(corrupt)?,
    })
}

/// A deployment about to start.
pub struct NewDeployment<'a> {
    pub route_id: &'a str,
    pub from_version: Option<i64>,
    pub to_version: i64,
    pub strategy: Delivery,
    pub detail: &'a str,
    pub config: Option<ConfigChange>,
}

impl WriteTx {
    /// Records a new deployment of a route's job; one still being judged is superseded.
    pub async fn start_deployment(&mut self, n: NewDeployment<'_>) -> Result<Deployment, StoreError> {
        let now = now_ms();
        let d = Deployment {
            id: uuid::Uuid::now_v7().to_string(),
            route_id: n.route_id.to_owned(),
            from_version: n.from_version,
            to_version: n.to_version,
            strategy: n.strategy,
            state: DeploymentState::Deploying,
            started_at: now,
            finished_at: None,
            detail: n.detail.to_owned(),
            config: n.config,
        };
        sqlx::query("UPDATE deployments SET state = $1, finished_at = $2 WHERE route_id = $3 AND state = $4")
            .bind(DeploymentState::Superseded.as_str())
            .bind(now)
            .bind(&d.route_id)
            .bind(DeploymentState::Deploying.as_str())
            .execute(self.conn())
            .await?;
        let config = d.config.as_ref().map(|c| serde_json::to_string(c).expect("a config change serializes"));
        sqlx::query(
            "INSERT INTO deployments (id, route_id, from_version, to_version, strategy, state, started_at, \
             detail, config) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&d.id)
        .bind(&d.route_id)
        .bind(d.from_version)
        .bind(d.to_version)
        .bind(d.strategy.as_str())
        .bind(d.state.as_str())
        .bind(now)
        .bind(&d.detail)
        .bind(config)
        .execute(self.conn())
        .await?;
        Ok(d)
    }
}

impl Store {
    /// Records a new deployment of a route's job; one still being judged is superseded.
    pub async fn start_deployment(&self, n: NewDeployment<'_>) -> Result<Deployment, StoreError> {
        let mut tx = self.write().await?;
        let d = tx.start_deployment(n).await?;
        tx.commit().await?;
        Ok(d)
    }

    /// Ends a deployment being judged (a no-op if it ended already).
    pub async fn finish_deployment(&self, id: &str, state: DeploymentState, detail: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE deployments SET state = $1, finished_at = $2, detail = $3 WHERE id = $4 AND state = $5")
            .bind(state.as_str())
            .bind(now_ms())
            .bind(detail)
            .bind(id)
            .bind(DeploymentState::Deploying.as_str())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// A route's deployments, newest first.
    pub async fn deployments(&self, route_id: &str, limit: i64) -> Result<Vec<Deployment>, StoreError> {
        let sql = format!("{SELECT} WHERE route_id = $1 ORDER BY started_at DESC LIMIT $2");
        let rows = sqlx::query(&sql).bind(route_id).bind(limit).fetch_all(self.pool()).await?;
        rows.iter().map(from_row).collect()
    }

    /// Every deployment still being judged.
    pub async fn deploying(&self) -> Result<Vec<Deployment>, StoreError> {
        let sql = format!("{SELECT} WHERE state = $1 ORDER BY started_at");
        let rows = sqlx::query(&sql).bind(DeploymentState::Deploying.as_str()).fetch_all(self.pool()).await?;
        rows.iter().map(from_row).collect()
    }

    /// The route version of the newest deployment that proved stable.
    pub async fn last_stable_version(&self, route_id: &str) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT to_version FROM deployments WHERE route_id = $1 AND state = $2 ORDER BY started_at DESC LIMIT 1",
        )
        .bind(route_id)
        .bind(DeploymentState::Stable.as_str())
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| r.try_get("to_version")).transpose().map_err(StoreError::from)
    }
}
