//! The source-of-truth store: one database (SQLite embedded, PostgreSQL in production) reached
//! through sqlx's `Any` driver, so every query is written once in SQL both understand.
//!
//! Revisions are append-only (triggers refuse UPDATE and DELETE); `objects` indexes each
//! object's head version and is written in the same transaction as the revision it points at.

// Persistence, one file per table group; every query goes through `Store` (or a `WriteTx`).
pub mod account_events;
pub mod accounts;
pub mod alerts;
pub mod approvals;
pub mod backfills;
pub mod config;
pub mod deployments;
pub mod jobs;
pub mod lease;
pub mod operations;
pub mod processors;
pub mod samples;
pub mod savepoints;
pub mod sources;
pub mod tokens;
pub mod workers;

use crate::model::{Kind, Object, Op, Revision};
use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Which database the URL chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn from_url(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl)
        }
    }
}

/// Failures of the store itself (not of the user's request).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL names neither SQLite nor PostgreSQL.
    #[error("database URL must start with sqlite: or postgres:")]
    UnsupportedUrl,
    /// The database refused or failed a query.
    #[error("database error")]
    Db(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row does not decode (a bug or a hand-edited database).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// This process no longer holds the lease the write needs (another process took over).
    #[error("this process no longer holds the {0} lease")]
    Fenced(String),
}

impl StoreError {
    /// True when the database refused a row because a unique index already has its key.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Db(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Which teams a reader may see.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    All,
    Teams(Vec<String>),
}

/// Filters of the audit log; all optional.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub kind: Option<Kind>,
    pub team: Option<String>,
    pub author: Option<String>,
    /// Only revisions older than this sequence number (for paging).
    pub before_seq: Option<i64>,
    pub limit: i64,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite allows one writer at a time; serialising our own write transactions avoids
    /// SQLITE_BUSY on lock upgrades. PostgreSQL relies on its row locks and unique indexes.
    write_lock: Arc<tokio::sync::Mutex<()>>,
    producer_tokens: Arc<TokenCache>,
    /// Where sinks may connect: every declaration and every job of this process checks it, so
    /// it travels with the one handle all of them share.
    egress: Arc<crate::egress::EgressPolicy>,
    /// Seals sink secrets (and pending changes holding them) at rest; `None` stores them as
    /// given (benchmarks only: every server and worker sets one, see `Settings::secret_box`).
    secrets: Option<Arc<crate::secret_box::SecretBox>>,
}

/// How long a producer token's lookup is trusted. Ingest looks up the token of every request,
/// and a query per request put the database (and, on SQLite, a hop to its worker thread) on the
/// path of every append. Writes through this store forget every lookup at once; another
/// process's (a token revoked, a stream changed or deleted there) take effect here within this.
/// Revoking a token is such a write.
pub const PRODUCER_TOKEN_TTL: Duration = Duration::from_secs(1);
/// Most lookups kept: requests with made-up tokens must not grow the cache without bound.
const PRODUCER_TOKENS_KEPT: usize = 10_000;

/// Recent producer-token lookups by token hash, unknown tokens included.
#[derive(Default)]
struct TokenCache(Mutex<Tokens>);

#[derive(Default)]
struct Tokens {
    /// Bumped by every forget: a lookup that began before one is not kept.
    generation: u64,
    found: HashMap<String, (Instant, Option<Arc<Object>>)>,
}

impl TokenCache {
    /// A fresh lookup's answer, or the generation a new lookup begins in.
    fn get(&self, hash: &str, now: Instant) -> Result<Option<Arc<Object>>, u64> {
        let tokens = self.0.lock().expect("token cache");
        match tokens.found.get(hash) {
            Some((at, found)) if now.duration_since(*at) < PRODUCER_TOKEN_TTL => Ok(found.clone()),
            _ => Err(tokens.generation),
        }
    }

    /// Keeps what a lookup begun at `at`, in `generation`, found.
    fn put(&self, hash: &str, generation: u64, at: Instant, found: Option<Arc<Object>>) {
        let mut tokens = self.0.lock().expect("token cache");
        if tokens.generation != generation {
            return;
        }
        if tokens.found.len() >= PRODUCER_TOKENS_KEPT {
            tokens.found.retain(|_, (then, _)| at.duration_since(*then) < PRODUCER_TOKEN_TTL);
            if tokens.found.len() >= PRODUCER_TOKENS_KEPT {
                tokens.found.clear();
            }
        }
        tokens.found.insert(hash.to_owned(), (at, found));
    }

    fn forget(&self) {
        let mut tokens = self.0.lock().expect("token cache");
        tokens.generation += 1;
        tokens.found.clear();
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Store {
    /// Connects (creating a missing SQLite file) and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
            }
            _ => url.to_owned(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await?;
        if backend == Backend::Sqlite {
            // WAL lets readers proceed while a write commits; the setting persists in the file.
            sqlx::query("PRAGMA journal_mode=WAL").execute(&pool).await?;
        }
        let store = Store {
            pool,
            backend,
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            producer_tokens: Arc::default(),
            secrets: None,
            egress: Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// This handle with the process's egress policy (the built-in denials until set).
    pub fn with_egress(mut self, policy: crate::egress::EgressPolicy) -> Store {
        self.egress = Arc::new(policy);
        self
    }

    pub fn egress(&self) -> &Arc<crate::egress::EgressPolicy> {
        &self.egress
    }

    pub fn with_secrets(mut self, key: crate::secret_box::SecretBox) -> Store {
        self.secrets = Some(Arc::new(key));
        self
    }

    /// A stored secret's plain value.
    pub(crate) fn open_secret(&self, stored: String) -> Result<String, StoreError> {
        match &self.secrets {
            Some(b) => b.open(&stored).map_err(|e| StoreError::Corrupt(e.to_string())),
            None => Ok(stored),
        }
    }

    /// Seals every secret still stored in clear (from before secrets were sealed), sink secrets
    /// and pending change requests alike. Returns how many were sealed. Safe to repeat.
    pub async fn seal_plaintext_secrets(&self) -> Result<usize, StoreError> {
        let Some(key) = &self.secrets else { return Ok(0) };
        let mut sealed = 0;
        let rows = sqlx::query("SELECT sink_id, key, version, value FROM sink_secrets WHERE value NOT LIKE 'enc:v1:%'")
            .fetch_all(&self.pool)
            .await?;
        for r in &rows {
            let (sink_id, name, version, value): (String, String, i64, String) =
                (r.try_get("sink_id")?, r.try_get("key")?, r.try_get("version")?, r.try_get("value")?);
            sqlx::query("UPDATE sink_secrets SET value = $1 WHERE sink_id = $2 AND key = $3 AND version = $4")
                .bind(key.seal(&value))
                .bind(sink_id)
                .bind(name)
                .bind(version)
                .execute(&self.pool)
                .await?;
            sealed += 1;
        }
        let rows = sqlx::query(
            "SELECT id, declaration FROM change_requests WHERE declaration IS NOT NULL AND declaration NOT LIKE 'enc:v1:%'",
        )
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            let (id, declaration): (i64, String) = (r.try_get("id")?, r.try_get("declaration")?);
            sqlx::query("UPDATE change_requests SET declaration = $1 WHERE id = $2")
                .bind(key.seal(&declaration))
                .bind(id)
                .execute(&self.pool)
                .await?;
            sealed += 1;
        }
        Ok(sealed)
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Starts a write transaction; changes land together at [`WriteTx::commit`] or not at all.
    /// On SQLite it takes the write lock up front (`BEGIN IMMEDIATE`): a deferred transaction
    /// that reads, then writes after another process committed, fails at once with "database is
    /// locked" instead of waiting its turn (seen with a second process on the same file).
    pub async fn write(&self) -> Result<WriteTx, StoreError> {
        let guard = self.write_lock.clone().lock_owned().await;
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(WriteTx {
            tx,
            backend: self.backend,
            producer_tokens: self.producer_tokens.clone(),
            secrets: self.secrets.clone(),
            _guard: guard,
        })
    }

    /// Live objects of one kind that the scope may see, ordered by team then name.
    pub async fn list(&self, kind: Kind, scope: &Scope) -> Result<Vec<Object>, StoreError> {
        let mut sql = format!("{OBJECT_SELECT} WHERE o.kind = $1 AND o.deleted = 0");
        let mut binds = vec![kind.as_str().to_owned()];
        push_scope(&mut sql, &mut binds, "o.team_id", scope, kind);
        sql.push_str(" ORDER BY team_name, o.name");
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(b);
        }
        q.fetch_all(&self.pool).await?.iter().map(object_from_row).collect()
    }

    /// When a user got their current role (`None` for an unknown user, such as Keystone itself).
    pub async fn role_since(&self, user_id: &str) -> Result<Option<i64>, StoreError> {
        let row =
            sqlx::query("SELECT role_since FROM users WHERE id = $1").bind(user_id).fetch_optional(&self.pool).await?;
        row.map(|r| r.try_get("role_since")).transpose().map_err(StoreError::from)
    }

    /// Every deleted stream with its last spec and when it was deleted: the reconciler removes
    /// their topics once retention has run out.
    pub async fn deleted_streams(&self) -> Result<Vec<(Object, i64)>, StoreError> {
        let sql = format!("{OBJECT_SELECT} WHERE o.kind = 'stream' AND o.deleted = 1");
        let rows =
            sqlx::query(&sql.replace("SELECT ", "SELECT o.updated_at AS deleted_at, ")).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((object_from_row(r)?, r.try_get("deleted_at")?))).collect()
    }

    /// The live object named `name` of `kind` in team `team_id` (`""` for teams).
    pub async fn get(&self, kind: Kind, team_id: &str, name: &str) -> Result<Option<Object>, StoreError> {
        let sql = format!("{OBJECT_SELECT} WHERE o.kind = $1 AND o.team_id = $2 AND o.name = $3 AND o.deleted = 0");
        let row = sqlx::query(&sql).bind(kind.as_str()).bind(team_id).bind(name).fetch_optional(&self.pool).await?;
        row.as_ref().map(object_from_row).transpose()
    }

    /// The live stream a (hashed, unrevoked) producer token writes to, as of at most
    /// [`PRODUCER_TOKEN_TTL`] ago. Shared, not copied: ingest asks on every request.
    pub async fn stream_of_producer_token(&self, token_hash: &str) -> Result<Option<Arc<Object>>, StoreError> {
        let asked = Instant::now();
        let generation = match self.producer_tokens.get(token_hash, asked) {
            Ok(found) => return Ok(found),
            Err(generation) => generation,
        };
        let sql = format!(
            "{OBJECT_SELECT} JOIN producer_tokens p ON p.stream_id = o.id \
             WHERE p.token_hash = $1 AND p.revoked_at IS NULL AND o.deleted = 0"
        );
        let row = sqlx::query(&sql).bind(token_hash).fetch_optional(&self.pool).await?;
        let found = row.as_ref().map(object_from_row).transpose()?.map(Arc::new);
        self.producer_tokens.put(token_hash, generation, asked, found.clone());
        Ok(found)
    }

    /// The owning team id of any object, live or deleted (for authorising history reads).
    pub async fn owner_of(&self, object_id: &str) -> Result<Option<(Kind, String)>, StoreError> {
        let row = sqlx::query("SELECT kind, team_id FROM objects WHERE id = $1")
            .bind(object_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let kind: String = r.try_get("kind")?;
            let team: String = r.try_get("team_id")?;
            let kind = Kind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("kind {kind}")))?;
            Ok((kind, team))
        })
        .transpose()
    }

    /// Every revision of one object, oldest first.
    pub async fn history(&self, object_id: &str) -> Result<Vec<Revision>, StoreError> {
        let sql = format!("{REVISION_SELECT} WHERE object_id = $1 ORDER BY version");
        sqlx::query(&sql).bind(object_id).fetch_all(&self.pool).await?.iter().map(revision_from_row).collect()
    }

    /// The platform-wide revision log, newest first.
    pub async fn audit(&self, scope: &Scope, f: &AuditFilter) -> Result<Vec<Revision>, StoreError> {
        let mut sql = format!("{REVISION_SELECT} WHERE 1 = 1");
        let mut binds: Vec<String> = Vec::new();
        let mut push = |sql: &mut String, cond: &str, v: String| {
            binds.push(v);
            sql.push_str(&format!(" AND {cond} ${}", binds.len()));
        };
        if let Some(k) = f.kind {
            push(&mut sql, "kind =", k.as_str().into());
        }
        if let Some(t) = &f.team {
            push(&mut sql, "team_name =", t.clone());
        }
        if let Some(a) = &f.author {
            push(&mut sql, "author_name =", a.clone());
        }
        push_scope(&mut sql, &mut binds, "team_id", scope, Kind::Route);
        let mut q_sql = sql;
        let before = f.before_seq.unwrap_or(i64::MAX);
        q_sql.push_str(&format!(" AND seq < ${} ORDER BY seq DESC LIMIT ${}", binds.len() + 1, binds.len() + 2));
        let mut q = sqlx::query(&q_sql);
        for b in binds {
            q = q.bind(b);
        }
        q.bind(before).bind(f.limit.clamp(1, 1000)).fetch_all(&self.pool).await?.iter().map(revision_from_row).collect()
    }

    /// The current value of each secret of a sink.
    pub async fn sink_secrets(&self, sink_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.key, s.value FROM sink_secrets s WHERE s.sink_id = $1 AND s.version = \
             (SELECT MAX(version) FROM sink_secrets m WHERE m.sink_id = s.sink_id AND m.key = s.key) ORDER BY s.key",
        )
        .bind(sink_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("key")?, self.open_secret(r.try_get("value")?)?))).collect()
    }
}

/// Appends `AND column IN (...)` for a team-restricted scope. Teams themselves are scoped by
/// their own id, since their `team_id` is empty.
pub(crate) fn push_scope(sql: &mut String, binds: &mut Vec<String>, column: &str, scope: &Scope, kind: Kind) {
    if let Scope::Teams(ids) = scope {
        let column = if kind == Kind::Team { "o.id" } else { column };
        if ids.is_empty() {
            sql.push_str(" AND 1 = 0");
            return;
        }
        let start = binds.len();
        let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${}", start + i)).collect();
        binds.extend(ids.iter().cloned());
        sql.push_str(&format!(" AND {column} IN ({})", marks.join(", ")));
    }
}

const OBJECT_SELECT: &str = "SELECT o.id, o.kind, o.team_id, o.name, o.head_version, o.incarnation, \
     COALESCE(t.name, o.name) AS team_name, r.spec, r.author_name, r.created_at \
     FROM objects o JOIN revisions r ON r.object_id = o.id AND r.version = o.head_version \
     LEFT JOIN objects t ON t.id = o.team_id";

const REVISION_SELECT: &str = "SELECT seq, object_id, kind, team_name, name, version, op, author_name, \
     reason, spec, created_at FROM revisions";

fn parse_json(s: &str) -> Result<Value, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("spec: {e}")))
}

fn object_from_row(r: &AnyRow) -> Result<Object, StoreError> {
    let kind: String = r.try_get("kind")?;
    let spec: String = r.try_get("spec")?;
    Ok(Object {
        id: r.try_get("id")?,
        kind: Kind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("kind {kind}")))?,
        team: r.try_get("team_name")?,
        name: r.try_get("name")?,
        version: r.try_get("head_version")?,
        incarnation: r.try_get("incarnation")?,
        spec: parse_json(&spec)?,
        updated_by: r.try_get("author_name")?,
        updated_at: r.try_get("created_at")?,
    })
}

fn revision_from_row(r: &AnyRow) -> Result<Revision, StoreError> {
    let kind: String = r.try_get("kind")?;
    let op: String = r.try_get("op")?;
    let spec: String = r.try_get("spec")?;
    Ok(Revision {
        seq: r.try_get("seq")?,
        object_id: r.try_get("object_id")?,
        kind: Kind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("kind {kind}")))?,
        team: r.try_get("team_name")?,
        name: r.try_get("name")?,
        version: r.try_get("version")?,
        op: Op::parse(&op).ok_or_else(|| StoreError::Corrupt(format!("op {op}")))?,
        author: r.try_get("author_name")?,
        reason: r.try_get("reason")?,
        spec: parse_json(&spec)?,
        created_at: r.try_get("created_at")?,
    })
}

/// One change to one object, as the goal service prepared it.
pub struct Write<'a> {
    pub kind: Kind,
    /// Existing object id (update, delete) or `None` to create.
    pub object_id: Option<&'a str>,
    pub team_id: &'a str,
    pub team_name: &'a str,
    pub name: &'a str,
    pub op: Op,
    /// The head version the change was based on; a different head means someone else changed
    /// the object in between.
    pub expected_version: i64,
    pub spec: &'a Value,
    pub author_id: &'a str,
    pub author_name: &'a str,
    pub reason: &'a str,
}

/// Outcome of [`WriteTx::append`] when the object moved under the writer.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The object's head is no longer `expected_version`.
    #[error("the object changed since version {expected}")]
    Stale { expected: i64 },
    /// A live object of that kind already has that name in that team.
    #[error("name already taken")]
    NameTaken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A write transaction (see [`Store::write`]).
pub struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
    /// Forgotten on commit: the write may have changed or deleted a token's stream.
    producer_tokens: Arc<TokenCache>,
    secrets: Option<Arc<crate::secret_box::SecretBox>>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl WriteTx {
    pub async fn get(&mut self, kind: Kind, team_id: &str, name: &str) -> Result<Option<Object>, StoreError> {
        let sql = format!("{OBJECT_SELECT} WHERE o.kind = $1 AND o.team_id = $2 AND o.name = $3 AND o.deleted = 0");
        let row = sqlx::query(&sql).bind(kind.as_str()).bind(team_id).bind(name).fetch_optional(&mut *self.tx).await?;
        row.as_ref().map(object_from_row).transpose()
    }

    /// Every live object of one kind, of every team (within this transaction's view).
    pub async fn live(&mut self, kind: Kind) -> Result<Vec<Object>, StoreError> {
        let sql = format!("{OBJECT_SELECT} WHERE o.kind = $1 AND o.deleted = 0");
        let rows = sqlx::query(&sql).bind(kind.as_str()).fetch_all(&mut *self.tx).await?;
        rows.iter().map(object_from_row).collect()
    }

    /// Live routes of a team whose spec names `field` = `value` (e.g. routes reading a stream).
    pub async fn routes_referencing(
        &mut self,
        team_id: &str,
        field: &str,
        value: &str,
    ) -> Result<Vec<String>, StoreError> {
        let sql = format!("{OBJECT_SELECT} WHERE o.kind = 'route' AND o.team_id = $1 AND o.deleted = 0");
        let rows = sqlx::query(&sql).bind(team_id).fetch_all(&mut *self.tx).await?;
        let mut names = Vec::new();
        for r in &rows {
            let o = object_from_row(r)?;
            if o.spec.get(field).and_then(Value::as_str) == Some(value) {
                names.push(o.name);
            }
        }
        Ok(names)
    }

    /// Records a revision and moves the object's head to it. Returns the new revision.
    pub async fn append(&mut self, w: Write<'_>) -> Result<Revision, AppendError> {
        let now = now_ms();
        let version = w.expected_version + 1;
        let object_id = match (w.op, w.object_id) {
            (Op::Create, _) => {
                let id = new_id();
                sqlx::query(
                    "INSERT INTO objects (id, kind, team_id, name, head_version, deleted, created_at, updated_at, \
                     incarnation) VALUES ($1, $2, $3, $4, 1, 0, $5, $5, \
                     (SELECT COUNT(*) FROM objects WHERE kind = $2 AND team_id = $3 AND name = $4))",
                )
                .bind(&id)
                .bind(w.kind.as_str())
                .bind(w.team_id)
                .bind(w.name)
                .bind(now)
                .execute(&mut *self.tx)
                .await
                .map_err(|e| match StoreError::from(e) {
                    e if e.is_unique_violation() => AppendError::NameTaken,
                    e => AppendError::Store(e),
                })?;
                id
            }
            (_, Some(id)) => {
                let deleted = i64::from(w.op == Op::Delete);
                let moved = sqlx::query(
                    "UPDATE objects SET head_version = $1, deleted = $2, updated_at = $3 \
                     WHERE id = $4 AND head_version = $5 AND deleted = 0",
                )
                .bind(version)
                .bind(deleted)
                .bind(now)
                .bind(id)
                .bind(w.expected_version)
                .execute(&mut *self.tx)
                .await
                .map_err(StoreError::from)?;
                if moved.rows_affected() != 1 {
                    return Err(AppendError::Stale { expected: w.expected_version });
                }
                id.to_owned()
            }
            (_, None) => return Err(StoreError::Corrupt("update without an object id".into()).into()),
        };
        let spec = w.spec.to_string();
        // A team's revisions are filed under the team itself, so its members see them in the audit log.
        let revision_team = if w.kind == Kind::Team { object_id.as_str() } else { w.team_id };
        let row = sqlx::query(
            "INSERT INTO revisions (object_id, kind, team_id, team_name, name, version, op, author_id, author_name, \
             reason, spec, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING seq",
        )
        .bind(&object_id)
        .bind(w.kind.as_str())
        .bind(revision_team)
        .bind(w.team_name)
        .bind(w.name)
        .bind(version)
        .bind(w.op.as_str())
        .bind(w.author_id)
        .bind(w.author_name)
        .bind(w.reason)
        .bind(&spec)
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(StoreError::from)?;
        Ok(Revision {
            seq: row.try_get("seq").map_err(StoreError::from)?,
            object_id,
            kind: w.kind,
            team: w.team_name.to_owned(),
            name: w.name.to_owned(),
            version,
            op: w.op,
            author: w.author_name.to_owned(),
            reason: w.reason.to_owned(),
            spec: w.spec.clone(),
            created_at: now,
        })
    }

    /// Stores a new value for one secret of a sink, as of `version`.
    pub async fn put_secret(&mut self, sink_id: &str, key: &str, version: i64, value: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO sink_secrets (sink_id, key, version, value) VALUES ($1, $2, $3, $4)")
            .bind(sink_id)
            .bind(key)
            .bind(version)
            .bind(self.seal(value))
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// `value` as stored at rest: sealed when the store has a key.
    pub(crate) fn seal(&self, value: &str) -> String {
        self.secrets.as_ref().map_or_else(|| value.to_owned(), |b| b.seal(value))
    }

    /// Runs any statement inside the transaction (used by user and token management).
    pub fn conn(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }

    /// Waits until no other transaction holding `key` is open, in any process, and holds it until
    /// this one ends: for a read-then-write that other processes make at the same time (each
    /// worker reporting its part of one shared job). SQLite already runs one writer at a time
    /// across processes (`BEGIN IMMEDIATE`); PostgreSQL at its default isolation lets two such
    /// transactions each read the other's old row and write a result neither would alone.
    pub async fn serialize_on(&mut self, key: &str) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            // The lock function returns `void`, which the Any driver cannot decode: select a constant.
            sqlx::query("SELECT 1 AS locked FROM pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(key)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        self.producer_tokens.forget();
        Ok(())
    }
}
