//! Change requests in the store. Requests are written and decided inside the goal-state write
//! transaction (`WriteTx`), so a change is either applied or held back, never both or neither.

use crate::approvals::{ChangeRequest, RequestAction, RequestState};
use crate::diff::Change;
use crate::model::{Kind, Op};
use crate::store::{now_ms, push_scope, Scope, Store, StoreError, WriteTx};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

/// A change request about to be written.
pub struct NewRequest<'a> {
    pub action: RequestAction,
    pub team_id: &'a str,
    pub team_name: &'a str,
    pub kind: Kind,
    pub name: &'a str,
    pub op: Op,
    pub base_version: i64,
    /// What was submitted (see `goal::Declaration::to_json`); kept until the decision.
    pub declaration: Option<&'a Value>,
    pub spec: &'a Value,
    pub changes: &'a [Change],
    pub needs: &'a [String],
    pub requester_id: &'a str,
    pub requester: &'a str,
    pub reason: &'a str,
}

/// A change request with what only the service reads.
pub struct StoredRequest {
    pub request: ChangeRequest,
    pub team_id: String,
    pub requester_id: String,
    /// What was submitted; gone once the request is decided.
    pub declaration: Option<Value>,
}

/// Filters of the change request list.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    pub state: Option<RequestState>,
    /// Only requests by this user id.
    pub requester_id: Option<String>,
    pub limit: i64,
}

const COLUMNS: &str = "id, action, team_name, kind, name, op, base_version, spec, changes, needs, requester, reason, \
     state, created_at, decided_by, decided_at, comment, revision_seq";

fn json_text<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).expect("change request parts always serialise")
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("change request {what}: {e}"))
}

fn from_row(r: &AnyRow) -> Result<ChangeRequest, StoreError> {
    let text = |c: &str| r.try_get::<String, _>(c);
    let json = |c: &str| -> Result<Value, StoreError> { serde_json::from_str(&text(c)?).map_err(|e| corrupt(c, e)) };
    let kind = text("kind")?;
    let op = text("op")?;
    let state = text("state")?;
    let action = text("action")?;
    Ok(ChangeRequest {
        id: r.try_get("id")?,
        action: RequestAction::parse(&action).ok_or_else(|| corrupt("action", &action))?,
        team: text("team_name")?,
        kind: Kind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?,
        name: text("name")?,
        op: Op::parse(&op).ok_or_else(|| corrupt("op", &op))?,
        base_version: r.try_get("base_version")?,
        spec: json("spec")?,
        changes: serde_json::from_value(json("changes")?).map_err(|e| corrupt("changes", e))?,
        needs: serde_json::from_value(json("needs")?).map_err(|e| corrupt("needs", e))?,
        requester: text("requester")?,
        reason: text("reason")?,
        state: RequestState::parse(&state).ok_or_else(|| corrupt("state", &state))?,
        created_at: r.try_get("created_at")?,
        decided_by: r.try_get("decided_by")?,
        decided_at: r.try_get("decided_at")?,
        comment: text("comment")?,
        revision_seq: r.try_get("revision_seq")?,
    })
}

impl WriteTx {
    pub async fn insert_change_request(&mut self, n: NewRequest<'_>) -> Result<ChangeRequest, StoreError> {
        let row = sqlx::query(
            "INSERT INTO change_requests (team_id, team_name, kind, name, op, base_version, declaration, spec, \
             changes, needs, requester_id, requester, reason, state, created_at, action) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) RETURNING id",
        )
        .bind(n.team_id)
        .bind(n.team_name)
        .bind(n.kind.as_str())
        .bind(n.name)
        .bind(n.op.as_str())
        .bind(n.base_version)
        // The declaration holds the sink's new secrets as submitted: sealed like them.
        .bind(n.declaration.map(|d| self.seal(&d.to_string())))
        .bind(n.spec.to_string())
        .bind(json_text(n.changes))
        .bind(json_text(n.needs))
        .bind(n.requester_id)
        .bind(n.requester)
        .bind(n.reason)
        .bind(RequestState::Pending.as_str())
        .bind(now_ms())
        .bind(n.action.as_str())
        .fetch_one(self.conn())
        .await?;
        let id: i64 = row.try_get("id")?;
        let found = sqlx::query(&format!("SELECT {COLUMNS} FROM change_requests WHERE id = $1"))
            .bind(id)
            .fetch_one(self.conn())
            .await?;
        from_row(&found)
    }

    /// Records the decision on a pending request and forgets what was submitted. False when the
    /// request was no longer pending (another admin decided first).
    pub async fn decide_change_request(
        &mut self,
        id: i64,
        state: RequestState,
        by: &str,
        comment: &str,
        revision_seq: Option<i64>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE change_requests SET state = $1, decided_by = $2, decided_at = $3, comment = $4, \
             revision_seq = $5, declaration = NULL WHERE id = $6 AND state = 'pending'",
        )
        .bind(state.as_str())
        .bind(by)
        .bind(now_ms())
        .bind(comment)
        .bind(revision_seq)
        .bind(id)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks every pending request on one object stale (the object just changed), returning
    /// their ids.
    pub async fn stale_change_requests(
        &mut self,
        team_id: &str,
        kind: Kind,
        name: &str,
    ) -> Result<Vec<i64>, StoreError> {
        let rows = sqlx::query(
            "UPDATE change_requests SET state = 'stale', decided_at = $1, declaration = NULL \
             WHERE team_id = $2 AND kind = $3 AND name = $4 AND state = 'pending' RETURNING id",
        )
        .bind(now_ms())
        .bind(team_id)
        .bind(kind.as_str())
        .bind(name)
        .fetch_all(self.conn())
        .await?;
        rows.iter().map(|r| r.try_get("id").map_err(StoreError::from)).collect()
    }
}

impl Store {
    /// One change request with what only the service reads.
    pub async fn change_request(&self, id: i64) -> Result<Option<StoredRequest>, StoreError> {
        let sql = format!("SELECT {COLUMNS}, team_id, requester_id, declaration FROM change_requests WHERE id = $1");
        let Some(r) = sqlx::query(&sql).bind(id).fetch_optional(self.pool()).await? else { return Ok(None) };
        let declaration: Option<String> = r.try_get("declaration")?;
        let declaration = declaration.map(|d| self.open_secret(d)).transpose()?;
        let declaration = declaration.map(|d| serde_json::from_str(&d).map_err(|e| corrupt("declaration", e)));
        Ok(Some(StoredRequest {
            request: from_row(&r)?,
            team_id: r.try_get("team_id")?,
            requester_id: r.try_get("requester_id")?,
            declaration: declaration.transpose()?,
        }))
    }

    /// Change requests the scope may see, newest first.
    pub async fn change_requests(&self, scope: &Scope, f: &RequestFilter) -> Result<Vec<ChangeRequest>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM change_requests WHERE 1 = 1");
        let mut binds: Vec<String> = Vec::new();
        if let Some(s) = f.state {
            binds.push(s.as_str().to_owned());
            sql.push_str(&format!(" AND state = ${}", binds.len()));
        }
        if let Some(r) = &f.requester_id {
            binds.push(r.clone());
            sql.push_str(&format!(" AND requester_id = ${}", binds.len()));
        }
        push_scope(&mut sql, &mut binds, "team_id", scope, Kind::Route);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", binds.len() + 1));
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(b);
        }
        let limit = if f.limit <= 0 { 100 } else { f.limit.min(1000) };
        q.bind(limit).fetch_all(self.pool()).await?.iter().map(from_row).collect()
    }

    /// How many requests wait for an admin other than `user_id` (the navigation's count).
    pub async fn pending_change_requests_for(&self, user_id: &str) -> Result<i64, StoreError> {
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM change_requests WHERE state = 'pending' AND requester_id <> $1")
                .bind(user_id)
                .fetch_one(self.pool())
                .await?;
        Ok(row.try_get("n")?)
    }
}
