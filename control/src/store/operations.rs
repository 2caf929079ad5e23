//! The operations log: what people did to running things (restarting a job, retrying dead
//! letters, silencing an alert), with who and why. Goal changes have their own log
//! (`revisions`); the console's audit page shows both.

use crate::model::Operation;
use crate::store::{now_ms, push_scope, Scope, Store, StoreError, WriteTx};
use crate::Kind;
use sqlx::Row;

impl WriteTx {
    /// Writes to the operations log inside a goal-state transaction, so the entry and the
    /// change it describes land together.
    pub async fn record_operation(
        &mut self,
        object_id: &str,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO operations (id, at, actor, object_id, action, detail) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(now_ms())
        .bind(actor)
        .bind(object_id)
        .bind(action)
        .bind(detail)
        .execute(self.conn())
        .await?;
        Ok(())
    }
}

impl Store {
    pub async fn record_operation(
        &self,
        object_id: &str,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        tx.record_operation(object_id, actor, action, detail).await?;
        tx.commit().await
    }

    /// The newest operations on objects the scope may see (on one object with `object_id`),
    /// newest first.
    pub async fn operations(
        &self,
        scope: &Scope,
        object_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Operation>, StoreError> {
        let mut sql = "SELECT p.at, p.actor, p.action, p.detail, o.kind, o.name, COALESCE(t.name, o.name) AS team_name \
             FROM operations p JOIN objects o ON o.id = p.object_id LEFT JOIN objects t ON t.id = o.team_id WHERE 1 = 1"
            .to_owned();
        let mut binds = Vec::new();
        if let Some(id) = object_id {
            binds.push(id.to_owned());
            sql.push_str(&format!(" AND p.object_id = ${}", binds.len()));
        }
        push_scope(&mut sql, &mut binds, "o.team_id", scope, Kind::Route);
        sql.push_str(&format!(" ORDER BY p.at DESC, p.id DESC LIMIT ${}", binds.len() + 1));
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(b);
        }
        let rows = q.bind(limit.clamp(1, 1000)).fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get("kind")?;
                Ok(Operation {
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    kind: Kind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("kind {kind}")))?,
                    team: r.try_get("team_name")?,
                    name: r.try_get("name")?,
                    action: r.try_get("action")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }
}
