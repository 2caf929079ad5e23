//! The observed state of route jobs: phase, transitions with their causes, and checkpoints.
//! Unlike goal state this is mutable (it says what *is*); the data plane writes it and the
//! console and API read it.

use crate::model::{CheckpointInfo, JobPhase, JobRecord, JobTransition};
use crate::store::{now_ms, Scope, Store, StoreError, WriteTx};
use crate::workers::combined_phase;
use sqlx::any::AnyRow;
use sqlx::Row;

/// Which jobs a listing shows: a team's (by name) or all the caller may see, in one phase or
/// any, one page of them (`limit` `None`: to the end).
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub team: Option<String>,
    pub phase: Option<JobPhase>,
    pub limit: Option<i64>,
    pub offset: i64,
}

/// How many jobs a listing's scope and team hold, in all and by phase.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct JobCounts {
    pub total: i64,
    /// Phase -> jobs in it; phases without jobs are absent.
    pub by_phase: std::collections::BTreeMap<String, i64>,
}

/// A phase change to record.
#[derive(Debug, Clone)]
pub struct PhaseChange<'a> {
    pub route_id: &'a str,
    /// The route version the job runs.
    pub version: i64,
    pub to: JobPhase,
    pub cause: &'a str,
    /// Kept as the job's last error (cleared by `None` only when the job is healthy again).
    pub error: Option<&'a str>,
    /// The job was restarted after a crash or stall (counted).
    pub restart: bool,
    /// The worker reporting the phase of its part of a job shared by several (`None`: the
    /// reporter runs the whole job, or is the control plane).
    pub reporter: Option<&'a str>,
}

/// The WHERE clause (and its bound values) of job listings: live routes the scope may see, of
/// one team by name if given. Queries join `objects o` (the route) and `objects t` (its team).
fn jobs_where(scope: &Scope, team: Option<&str>) -> (String, Vec<String>) {
    let mut sql = String::from(" WHERE o.deleted = 0");
    let mut binds = Vec::new();
    crate::store::push_scope(&mut sql, &mut binds, "o.team_id", scope, crate::model::Kind::Route);
    if let Some(team) = team {
        binds.push(team.to_owned());
        sql.push_str(&format!(" AND t.name = ${}", binds.len()));
    }
    (sql, binds)
}

const JOB_SELECT: &str = "SELECT j.route_id, t.name AS team_name, o.name AS route_name, j.version, j.phase, \
     j.last_error, j.restarts, j.updated_at FROM jobs j JOIN objects o ON o.id = j.route_id \
     LEFT JOIN objects t ON t.id = o.team_id";

fn job_from_row(r: &AnyRow) -> Result<JobRecord, StoreError> {
    let phase: String = r.try_get("phase")?;
    Ok(JobRecord {
        route_id: r.try_get("route_id")?,
        team: r.try_get::<Option<String>, _>("team_name")?.unwrap_or_default(),
        route: r.try_get("route_name")?,
        version: r.try_get("version")?,
        phase: JobPhase::parse(&phase).ok_or_else(|| StoreError::Corrupt(format!("job phase {phase}")))?,
        last_error: r.try_get("last_error")?,
        restarts: r.try_get("restarts")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Store {
    /// The newest revision's sequence number: changes whenever any goal state changes, so the
    /// reconciler can poll it cheaply and react within a second.
    /// Requested restarts count too: their generations only grow and their rows stay.
    pub async fn goal_seq(&self) -> Result<i64, StoreError> {
        let row = sqlx::query(
            // PostgreSQL sums BIGINTs as NUMERIC, which the Any driver cannot decode.
            "SELECT CAST((SELECT COALESCE(MAX(seq), 0) FROM revisions) \
                  + (SELECT COALESCE(SUM(generation), 0) FROM route_restarts) AS BIGINT) AS seq",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get("seq")?)
    }

    /// Asks every process running a route's (or a source's) job to restart it: bumps its restart
    /// generation (part of the job's fingerprint) and logs who asked, in one transaction.
    /// Returns the new generation.
    pub async fn request_restart(&self, route_id: &str, actor: &str, detail: &str) -> Result<i64, StoreError> {
        let mut tx = self.write().await?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO route_restarts (route_id, generation, requested_at) VALUES ($1, 1, $2) \
             ON CONFLICT (route_id) DO UPDATE SET generation = route_restarts.generation + 1, requested_at = $2",
        )
        .bind(route_id)
        .bind(now)
        .execute(tx.conn())
        .await?;
        let generation: i64 = sqlx::query("SELECT generation FROM route_restarts WHERE route_id = $1")
            .bind(route_id)
            .fetch_one(tx.conn())
            .await?
            .try_get("generation")?;
        tx.record_operation(route_id, actor, "restart", &format!("{detail} (generation {generation})")).await?;
        tx.commit().await?;
        Ok(generation)
    }

    /// Every route's and source's restart generation (never restarted: absent, generation 0).
    pub async fn restart_generations(&self) -> Result<std::collections::HashMap<String, i64>, StoreError> {
        let rows = sqlx::query("SELECT route_id, generation FROM route_restarts").fetch_all(self.pool()).await?;
        rows.iter().map(|r| Ok((r.try_get("route_id")?, r.try_get("generation")?))).collect()
    }

    /// Records a job's phase. A transition row is written only when the phase or version
    /// changes, so a job reporting "running" again does not flood the history. A worker's report
    /// of its part of a shared job is kept as that part's phase, and the job's phase is then the
    /// worst of the live workers' parts (see [`combined_phase`](crate::workers::combined_phase)).
    pub async fn record_phase(&self, c: PhaseChange<'_>) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        // Workers report their parts of one job at the same moments (a new version starts on all
        // of them): each must combine the others' latest parts, not the ones before theirs.
        tx.serialize_on(&job_lock(c.route_id)).await?;
        let now = now_ms();
        let current = sqlx::query("SELECT phase, version, last_error FROM jobs WHERE route_id = $1")
            .bind(c.route_id)
            .fetch_optional(tx.conn())
            .await?;
        let (from, same_version, old_error): (Option<JobPhase>, bool, Option<String>) = match &current {
            Some(r) => {
                let p: String = r.try_get("phase")?;
                let v: i64 = r.try_get("version")?;
                (JobPhase::parse(&p), v == c.version, r.try_get("last_error")?)
            }
            None => (None, false, None),
        };
        // A running job clears its error; other phases keep the last one unless given a new one.
        let keep_error = |given: Option<&str>, to: JobPhase, old: Option<String>| match (given, to) {
            (Some(e), _) => Some(e.to_owned()),
            (None, JobPhase::Running | JobPhase::Paused | JobPhase::Stopped) => None,
            (None, _) => old,
        };
        let (to, error, cause) = match c.reporter {
            None => {
                if c.to == JobPhase::Stopped {
                    // Stopped as a whole: no part speaks any more.
                    sqlx::query("DELETE FROM job_phase_shares WHERE route_id = $1")
                        .bind(c.route_id)
                        .execute(tx.conn())
                        .await?;
                }
                (c.to, keep_error(c.error, c.to, old_error), c.cause.to_owned())
            }
            Some(worker) => {
                let old_part = sqlx::query(
                    "SELECT last_error FROM job_phase_shares WHERE route_id = $1 AND worker = $2 AND version = $3",
                )
                .bind(c.route_id)
                .bind(worker)
                .bind(c.version)
                .fetch_optional(tx.conn())
                .await?
                .map(|r| r.try_get::<Option<String>, _>("last_error"))
                .transpose()?
                .flatten();
                sqlx::query(
                    "INSERT INTO job_phase_shares (route_id, worker, version, phase, last_error, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (route_id, worker) DO UPDATE SET \
                     version = excluded.version, phase = excluded.phase, last_error = excluded.last_error, \
                     updated_at = excluded.updated_at",
                )
                .bind(c.route_id)
                .bind(worker)
                .bind(c.version)
                .bind(c.to.as_str())
                .bind(keep_error(c.error, c.to, old_part))
                .bind(now)
                .execute(tx.conn())
                .await?;
                let parts = live_parts(&mut tx, c.route_id, c.version, Some(worker), now).await?;
                let (to, error) = combined_phase(&parts).unwrap_or((c.to, None));
                (to, error, format!("{worker}: {}", c.cause))
            }
        };
        let restart = i64::from(c.restart);
        sqlx::query(
            "INSERT INTO jobs (route_id, version, phase, last_error, restarts, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (route_id) DO UPDATE SET version = excluded.version, \
             phase = excluded.phase, last_error = excluded.last_error, \
             restarts = jobs.restarts + excluded.restarts, updated_at = excluded.updated_at",
        )
        .bind(c.route_id)
        .bind(c.version)
        .bind(to.as_str())
        .bind(error)
        .bind(restart)
        .bind(now)
        .execute(tx.conn())
        .await?;
        if from != Some(to) || !same_version {
            record_transition(&mut tx, c.route_id, now, from, to, &cause).await?;
        }
        tx.commit().await
    }

    /// Forgets the parts of shared jobs whose workers went silent and sets each such job's
    /// phase from its remaining live parts (the control plane's leader, every pass): a dead
    /// worker's failing part no longer holds its job failing after its partitions moved on.
    pub async fn recombine_shared_phases(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let silent_since = now - crate::workers::SILENT_AFTER_MS;
        let gone = sqlx::query(
            "SELECT DISTINCT s.route_id, s.worker FROM job_phase_shares s WHERE NOT EXISTS \
             (SELECT 1 FROM workers w WHERE w.name = s.worker AND w.heartbeat_at >= $1)",
        )
        .bind(silent_since)
        .fetch_all(self.pool())
        .await?;
        if gone.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        for row in gone {
            let (route_id, worker): (String, String) = (row.try_get("route_id")?, row.try_get("worker")?);
            tx.serialize_on(&job_lock(&route_id)).await?;
            sqlx::query("DELETE FROM job_phase_shares WHERE route_id = $1 AND worker = $2")
                .bind(&route_id)
                .bind(&worker)
                .execute(tx.conn())
                .await?;
            let Some(job) = sqlx::query("SELECT phase, version FROM jobs WHERE route_id = $1")
                .bind(&route_id)
                .fetch_optional(tx.conn())
                .await?
            else {
                continue;
            };
            let (phase, version): (String, i64) = (job.try_get("phase")?, job.try_get("version")?);
            let parts = live_parts(&mut tx, &route_id, version, None, now).await?;
            let Some((to, error)) = combined_phase(&parts) else { continue };
            let from = JobPhase::parse(&phase);
            if from != Some(to) {
                sqlx::query("UPDATE jobs SET phase = $1, last_error = $2, updated_at = $3 WHERE route_id = $4")
                    .bind(to.as_str())
                    .bind(error)
                    .bind(now)
                    .bind(&route_id)
                    .execute(tx.conn())
                    .await?;
                let cause = format!("{worker} went silent; the other workers' parts speak");
                record_transition(&mut tx, &route_id, now, from, to, &cause).await?;
            }
        }
        tx.commit().await
    }

    /// One route's job, if it ever ran.
    pub async fn job(&self, route_id: &str) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("{JOB_SELECT} WHERE j.route_id = $1");
        let row = sqlx::query(&sql).bind(route_id).fetch_optional(self.pool()).await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Jobs of live routes the scope may see, by team then route name.
    pub async fn jobs(&self, scope: &Scope) -> Result<Vec<JobRecord>, StoreError> {
        self.jobs_page(scope, &JobFilter::default()).await
    }

    /// One page of the jobs of live routes the scope may see (by team then route name). Filtered
    /// and paged in the database: a listing costs the page, not every job.
    pub async fn jobs_page(&self, scope: &Scope, f: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        let (mut where_sql, mut binds) = jobs_where(scope, f.team.as_deref());
        if let Some(phase) = f.phase {
            binds.push(phase.as_str().to_owned());
            where_sql.push_str(&format!(" AND j.phase = ${}", binds.len()));
        }
        // Numbers, checked by the caller's types: written into the statement.
        let sql = format!(
            "{JOB_SELECT}{where_sql} ORDER BY team_name, route_name LIMIT {} OFFSET {}",
            f.limit.unwrap_or(i64::MAX).max(0),
            f.offset.max(0)
        );
        let mut q = sqlx::query(&sql);
        for b in &binds {
            q = q.bind(b);
        }
        q.fetch_all(self.pool()).await?.iter().map(job_from_row).collect()
    }

    /// How many jobs of live routes the scope may see (of one team, if given), in all and by
    /// phase: what a listing shows beside its page.
    pub async fn job_counts(&self, scope: &Scope, team: Option<&str>) -> Result<JobCounts, StoreError> {
        let (where_sql, binds) = jobs_where(scope, team);
        let sql = format!(
            "SELECT j.phase, COUNT(*) AS n FROM jobs j JOIN objects o ON o.id = j.route_id \
             LEFT JOIN objects t ON t.id = o.team_id{where_sql} GROUP BY j.phase"
        );
        let mut q = sqlx::query(&sql);
        for b in &binds {
            q = q.bind(b);
        }
        let mut counts = JobCounts::default();
        for r in q.fetch_all(self.pool()).await? {
            let (phase, n): (String, i64) = (r.try_get("phase")?, r.try_get("n")?);
            counts.total += n;
            counts.by_phase.insert(phase, n);
        }
        Ok(counts)
    }

    /// A job's most recent transitions, newest first.
    pub async fn transitions(&self, route_id: &str, limit: i64) -> Result<Vec<JobTransition>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, from_phase, to_phase, cause FROM job_transitions WHERE route_id = $1 \
             ORDER BY at DESC LIMIT $2",
        )
        .bind(route_id)
        .bind(limit.clamp(1, 1000))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let from: Option<String> = r.try_get("from_phase")?;
                let to: String = r.try_get("to_phase")?;
                Ok(JobTransition {
                    at: r.try_get("at")?,
                    from: from.as_deref().and_then(JobPhase::parse),
                    to: JobPhase::parse(&to).ok_or_else(|| StoreError::Corrupt(format!("job phase {to}")))?,
                    cause: r.try_get("cause")?,
                })
            })
            .collect()
    }

    /// A route's checkpoints, by partition.
    pub async fn checkpoints(&self, route_id: &str) -> Result<Vec<CheckpointInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT partition_no, next_offset, committed_at FROM checkpoints WHERE route_id = $1 ORDER BY partition_no",
        )
        .bind(route_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let p: i64 = r.try_get("partition_no")?;
                let o: i64 = r.try_get("next_offset")?;
                Ok(CheckpointInfo {
                    partition: p as u32,
                    next_offset: o as u64,
                    committed_at: r.try_get("committed_at")?,
                })
            })
            .collect()
    }

    /// Commits checkpoints of several partitions of one route together, only while `lease` (the reconciler's, under which
    /// the job runs) is still held: a job of a process that lost its lease cannot move them.
    pub async fn commit_checkpoints(
        &self,
        route_id: &str,
        positions: &[(u32, u64)],
        lease: Option<&crate::store::lease::Lease>,
    ) -> Result<(), StoreError> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_fenced(lease).await?;
        tx.put_checkpoints(route_id, positions).await?;
        tx.commit().await
    }

    /// Where a route's dead-letter queue is handled up to (0 before any replay).
    pub async fn dead_letter_cursor(&self, route_id: &str) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT next_offset FROM dead_letter_cursors WHERE route_id = $1")
            .bind(route_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|r| r.try_get::<i64, _>("next_offset")).transpose()?.unwrap_or(0) as u64)
    }

    pub async fn set_dead_letter_cursor(&self, route_id: &str, next_offset: u64) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO dead_letter_cursors (route_id, next_offset, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (route_id) DO UPDATE SET next_offset = excluded.next_offset, updated_at = excluded.updated_at",
        )
        .bind(route_id)
        .bind(next_offset as i64)
        .bind(now_ms())
        .execute(tx.conn())
        .await?;
        tx.commit().await
    }
}

impl WriteTx {
    /// Sets a route's checkpoints inside a goal-state transaction (a rewind, approved or not).
    pub async fn put_checkpoints(&mut self, route_id: &str, positions: &[(u32, u64)]) -> Result<(), StoreError> {
        let now = now_ms();
        for &(partition, next_offset) in positions {
            sqlx::query(
                "INSERT INTO checkpoints (route_id, partition_no, next_offset, committed_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (route_id, partition_no) DO UPDATE SET next_offset = excluded.next_offset, \
                 committed_at = excluded.committed_at",
            )
            .bind(route_id)
            .bind(i64::from(partition))
            .bind(next_offset as i64)
            .bind(now)
            .execute(self.conn())
            .await?;
        }
        Ok(())
    }
}

/// The key serializing writes of one job's phase (see [`WriteTx::serialize_on`]).
fn job_lock(route_id: &str) -> String {
    format!("job-phase:{route_id}")
}

/// The phases and errors of a shared job's parts of `version` run by live workers (and by
/// `reporter`, which may not have beaten yet).
async fn live_parts(
    tx: &mut WriteTx,
    route_id: &str,
    version: i64,
    reporter: Option<&str>,
    now: i64,
) -> Result<Vec<(JobPhase, Option<String>)>, StoreError> {
    let rows = sqlx::query(
        "SELECT s.phase, s.last_error FROM job_phase_shares s WHERE s.route_id = $1 AND s.version = $2 \
         AND (s.worker = $3 OR EXISTS (SELECT 1 FROM workers w WHERE w.name = s.worker AND w.heartbeat_at >= $4)) \
         ORDER BY s.worker",
    )
    .bind(route_id)
    .bind(version)
    .bind(reporter.unwrap_or_default())
    .bind(now - crate::workers::SILENT_AFTER_MS)
    .fetch_all(tx.conn())
    .await?;
    rows.iter()
        .map(|r| {
            let phase: String = r.try_get("phase")?;
            let phase = JobPhase::parse(&phase).ok_or_else(|| StoreError::Corrupt(format!("job phase {phase}")))?;
            Ok((phase, r.try_get("last_error")?))
        })
        .collect()
}

async fn record_transition(
    tx: &mut WriteTx,
    route_id: &str,
    at: i64,
    from: Option<JobPhase>,
    to: JobPhase,
    cause: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO job_transitions (route_id, at, from_phase, to_phase, cause) VALUES ($1, $2, $3, $4, $5)")
        .bind(route_id)
        .bind(at)
        .bind(from.map(JobPhase::as_str))
        .bind(to.as_str())
        .bind(cause)
        .execute(tx.conn())
        .await?;
    Ok(())
}
