//! Accounts in the store: users, their team memberships, and counted sign-in attempts. The rules
//! (who may sign in, what a role allows, how many attempts) live in `auth` and `users`.

use crate::auth::TeamRef;
use crate::model::Role;
use crate::store::{Backend, Store, StoreError, WriteTx};
use sqlx::Row;

pub(crate) fn parse_role(role: &str) -> Result<Role, StoreError> {
    Role::parse(role).ok_or_else(|| StoreError::Corrupt(format!("role {role}")))
}

impl Store {
    /// A user's id and password hash (PHC string), disabled users included (their sign-in
    /// fails later, after the same password work).
    pub(crate) async fn password_of(&self, username: &str) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query("SELECT id, password_hash FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| Ok((r.try_get("id")?, r.try_get("password_hash")?))).transpose()
    }

    /// An enabled user's name and own role.
    pub(crate) async fn active_user(&self, user_id: &str) -> Result<Option<(String, Role)>, StoreError> {
        let row = sqlx::query("SELECT username, role FROM users WHERE id = $1 AND disabled_at IS NULL")
            .bind(user_id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| Ok((r.try_get("username")?, parse_role(&r.try_get::<String, _>("role")?)?))).transpose()
    }

    /// The live teams a user belongs to, by name, with the role on each when one is set.
    pub(crate) async fn user_teams(&self, user_id: &str) -> Result<Vec<TeamRef>, StoreError> {
        let rows = sqlx::query(
            "SELECT o.id, o.name, m.role FROM memberships m JOIN objects o ON o.id = m.team_id \
             WHERE m.user_id = $1 AND o.deleted = 0 ORDER BY o.name",
        )
        .bind(user_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TeamRef {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    role: r.try_get::<Option<String>, _>("role")?.map(|s| parse_role(&s)).transpose()?,
                })
            })
            .collect()
    }

    /// Number of users, to know whether the first admin still has to be created.
    pub async fn user_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM users").fetch_one(self.pool()).await?.try_get("n")?)
    }

    /// Counts a sign-in attempt under both `keys` (account, address) unless `refuse`, given
    /// each key's attempt times in the window, says how long to wait: `Ok(id of the second
    /// key's row)`, or `Err(wait in ms)` with nothing counted. Attempts older than the window
    /// are forgotten first. One transaction, serialised across servers sharing the database.
    pub(crate) async fn count_sign_in(
        &self,
        keys: [&str; 2],
        now: i64,
        window_ms: i64,
        refuse: impl FnOnce(&[i64], &[i64]) -> Option<i64>,
    ) -> Result<Result<i64, i64>, StoreError> {
        let mut tx = self.write().await?;
        if self.backend() == Backend::Postgres {
            // Servers sharing the database count one at a time (SQLite has one writer anyway).
            sqlx::query("SELECT pg_advisory_xact_lock(7274010001)").execute(tx.conn()).await?;
        }
        sqlx::query("DELETE FROM sign_in_attempts WHERE at <= $1").bind(now - window_ms).execute(tx.conn()).await?;
        let mut load = Vec::new();
        for key in keys {
            let rows =
                sqlx::query("SELECT at FROM sign_in_attempts WHERE key = $1").bind(key).fetch_all(tx.conn()).await?;
            load.push(rows.iter().map(|r| r.try_get::<i64, _>("at")).collect::<Result<Vec<i64>, _>>()?);
        }
        if let Some(wait) = refuse(&load[0], &load[1]) {
            tx.commit().await?;
            return Ok(Err(wait));
        }
        let mut last = 0;
        for key in keys {
            let row = sqlx::query("INSERT INTO sign_in_attempts (key, at) VALUES ($1, $2) RETURNING id")
                .bind(key)
                .bind(now)
                .fetch_one(tx.conn())
                .await?;
            last = row.try_get::<i64, _>("id")?;
        }
        tx.commit().await?;
        Ok(Ok(last))
    }

    /// Forgets every attempt under `key` and the attempt row `id`.
    pub(crate) async fn forget_sign_ins(&self, key: &str, id: i64) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM sign_in_attempts WHERE key = $1 OR id = $2")
            .bind(key)
            .bind(id)
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }
}

/// A user as listed for admins.
pub(crate) struct UserRow {
    pub id: String,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
}

/// A new user's row, or the new password and role of an existing one.
pub(crate) struct UserWrite<'a> {
    pub username: &'a str,
    pub password_hash: &'a str,
    pub role: Role,
}

impl Store {
    pub(crate) async fn users(&self) -> Result<Vec<UserRow>, StoreError> {
        let rows = sqlx::query("SELECT id, username, role, disabled_at FROM users ORDER BY username")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(UserRow {
                    id: r.try_get("id")?,
                    username: r.try_get("username")?,
                    role: parse_role(&r.try_get::<String, _>("role")?)?,
                    disabled: r.try_get::<Option<i64>, _>("disabled_at")?.is_some(),
                })
            })
            .collect()
    }

    /// Disables a user since `at`, or enables them (`None`); false for an unknown user.
    pub(crate) async fn set_disabled(&self, username: &str, at: Option<i64>) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE users SET disabled_at = $1 WHERE username = $2")
            .bind(at)
            .bind(username)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Takes a user out of a live team; false when they were not a member.
    pub(crate) async fn remove_membership(&self, username: &str, team: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "DELETE FROM memberships WHERE user_id = (SELECT id FROM users WHERE username = $1) \
             AND team_id = (SELECT id FROM objects WHERE kind = 'team' AND name = $2 AND deleted = 0)",
        )
        .bind(username)
        .bind(team)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub(crate) async fn set_password(&self, user_id: &str, password_hash: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(password_hash)
            .bind(user_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

impl WriteTx {
    /// A user's id and own role, by name.
    pub(crate) async fn user_by_name(&mut self, username: &str) -> Result<Option<(String, Role)>, StoreError> {
        let row = sqlx::query("SELECT id, role FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(self.conn())
            .await?;
        row.map(|r| Ok((r.try_get("id")?, parse_role(&r.try_get::<String, _>("role")?)?))).transpose()
    }

    /// Admins who can still sign in.
    pub(crate) async fn enabled_admins(&mut self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users WHERE role = 'admin' AND disabled_at IS NULL")
            .fetch_one(self.conn())
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Deletes a user with their memberships and the API tokens they created; the number of
    /// tokens deleted.
    pub(crate) async fn delete_account(&mut self, user_id: &str) -> Result<i64, StoreError> {
        let tokens: i64 = sqlx::query("SELECT COUNT(*) AS n FROM api_tokens WHERE created_by = $1")
            .bind(user_id)
            .fetch_one(self.conn())
            .await?
            .try_get("n")?;
        for sql in [
            "DELETE FROM api_tokens WHERE created_by = $1",
            "DELETE FROM memberships WHERE user_id = $1",
            "DELETE FROM users WHERE id = $1",
        ] {
            sqlx::query(sql).bind(user_id).execute(self.conn()).await?;
        }
        Ok(tokens)
    }

    /// Makes a user a member of a team with `role` there (`None`: their own role).
    pub(crate) async fn grant(&mut self, user_id: &str, team_id: &str, role: Option<Role>) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM memberships WHERE user_id = $1 AND team_id = $2")
            .bind(user_id)
            .bind(team_id)
            .execute(self.conn())
            .await?;
        sqlx::query("INSERT INTO memberships (user_id, team_id, role) VALUES ($1, $2, $3)")
            .bind(user_id)
            .bind(team_id)
            .bind(role.map(Role::as_str))
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Writes a user: a new row with id `id`, or (`existing`) the new password and role, keeping
    /// the time the role was given when it did not change.
    pub(crate) async fn put_user(&mut self, id: &str, existing: bool, u: UserWrite<'_>) -> Result<(), StoreError> {
        let now = crate::store::now_ms();
        let sql = if existing {
            "UPDATE users SET password_hash = $3, role_since = CASE WHEN role = $4 THEN role_since ELSE $5 END, \
             role = $4 WHERE id = $1 AND username = $2"
        } else {
            "INSERT INTO users (id, username, password_hash, role, created_at, role_since) VALUES ($1, $2, $3, $4, $5, $5)"
        };
        sqlx::query(sql)
            .bind(id)
            .bind(u.username)
            .bind(u.password_hash)
            .bind(u.role.as_str())
            .bind(now)
            .execute(self.conn())
            .await?;
        Ok(())
    }
}
