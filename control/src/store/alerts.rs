//! Stored alert state (mutable, like job phases) and the history of firings.

use crate::alerts::{AlertEvent, AlertKind, AlertState, AlertStatus, RuleStatus, Silence};
use crate::store::{Store, StoreError};
use sqlx::Row;

fn rule_of(r: &sqlx::any::AnyRow) -> Result<AlertKind, StoreError> {
    let rule: String = r.try_get("rule")?;
    AlertKind::parse(&rule).ok_or_else(|| StoreError::Corrupt(format!("alert rule {rule}")))
}

fn state_of(r: &sqlx::any::AnyRow) -> Result<AlertState, StoreError> {
    let state: String = r.try_get("state")?;
    AlertState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("alert state {state}")))
}

impl Store {
    /// Every rule state of every route, for the evaluator to resume from after a restart.
    pub async fn alert_states(&self) -> Result<Vec<(String, AlertKind, RuleStatus)>, StoreError> {
        let rows = sqlx::query("SELECT route_id, rule, state, since FROM alert_states").fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("route_id")?,
                    rule_of(r)?,
                    RuleStatus { state: state_of(r)?, since: r.try_get("since")? },
                ))
            })
            .collect()
    }

    /// A route's (or a source's) rule states.
    pub async fn route_alerts(&self, route_id: &str) -> Result<Vec<AlertStatus>, StoreError> {
        let rows = sqlx::query("SELECT rule, state, since, value FROM alert_states WHERE route_id = $1 ORDER BY rule")
            .bind(route_id)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AlertStatus {
                    rule: rule_of(r)?,
                    state: state_of(r)?,
                    since: r.try_get("since")?,
                    value: r.try_get("value")?,
                })
            })
            .collect()
    }

    /// Saves rule states (one evaluation pass).
    pub async fn put_alert_states(&self, states: &[(String, AlertStatus)]) -> Result<(), StoreError> {
        if states.is_empty() {
            return Ok(());
        }
        let now = crate::store::now_ms();
        let mut tx = self.write().await?;
        for (route_id, s) in states {
            sqlx::query(
                "INSERT INTO alert_states (route_id, rule, state, since, value, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (route_id, rule) DO UPDATE SET state = excluded.state, since = excluded.since, \
                 value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(route_id)
            .bind(s.rule.as_str())
            .bind(s.state.as_str())
            .bind(s.since)
            .bind(s.value)
            .bind(now)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await
    }

    /// Records a firing or resolution.
    pub async fn record_alert_event(&self, route_id: &str, e: &AlertEvent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO alert_events (route_id, rule, at, state, value, message, notified) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(route_id)
        .bind(e.rule.as_str())
        .bind(e.at)
        .bind(e.state.as_str())
        .bind(e.value)
        .bind(&e.message)
        .bind(&e.notified)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A route's firings and resolutions, newest first.
    pub async fn alert_events(&self, route_id: &str, limit: i64) -> Result<Vec<AlertEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT rule, at, state, value, message, notified FROM alert_events WHERE route_id = $1 \
             ORDER BY at DESC LIMIT $2",
        )
        .bind(route_id)
        .bind(limit.clamp(1, 1000))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AlertEvent {
                    rule: rule_of(r)?,
                    at: r.try_get("at")?,
                    state: state_of(r)?,
                    value: r.try_get("value")?,
                    message: r.try_get("message")?,
                    notified: r.try_get("notified")?,
                })
            })
            .collect()
    }

    pub async fn add_silence(&self, route_id: &str, s: &Silence) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO alert_silences (id, route_id, rule, until, created_by, reason, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(route_id)
        .bind(s.rule.map(AlertKind::as_str))
        .bind(s.until)
        .bind(&s.by)
        .bind(&s.reason)
        .bind(crate::store::now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Silences still in force, of one route or (`None`) of all: (route id, silence).
    pub async fn active_silences(
        &self,
        route_id: Option<&str>,
        now: i64,
    ) -> Result<Vec<(String, Silence)>, StoreError> {
        let rows = sqlx::query(
            "SELECT route_id, rule, until, created_by, reason FROM alert_silences WHERE until > $1 \
             AND ($2 = '' OR route_id = $2) ORDER BY until DESC",
        )
        .bind(now)
        .bind(route_id.unwrap_or(""))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let rule: Option<String> = r.try_get("rule")?;
                Ok((
                    r.try_get("route_id")?,
                    Silence {
                        rule: rule.as_deref().and_then(AlertKind::parse),
                        until: r.try_get("until")?,
                        by: r.try_get("created_by")?,
                        reason: r.try_get("reason")?,
                    },
                ))
            })
            .collect()
    }
}
