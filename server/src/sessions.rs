//! Console sessions, stored in the same database as the goal state.

use async_trait::async_trait;
use keystone_control::store::Backend;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use std::str::FromStr;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, ExpiredDeletion, SessionStore};
use tower_sessions_sqlx_store::{PostgresStore, SqliteStore};

/// The session store for whichever database the URL chose.
#[derive(Debug, Clone)]
pub enum DbSessionStore {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl DbSessionStore {
    /// Connects a small pool of its own and creates the session table if needed.
    pub async fn connect(url: &str) -> anyhow::Result<DbSessionStore> {
        Ok(match Backend::from_url(url)? {
            Backend::Sqlite => {
                let opts = SqliteConnectOptions::from_str(url)?.create_if_missing(true);
                let store = SqliteStore::new(SqlitePoolOptions::new().max_connections(2).connect_with(opts).await?);
                store.migrate().await?;
                DbSessionStore::Sqlite(store)
            }
            Backend::Postgres => {
                let store = PostgresStore::new(PgPoolOptions::new().max_connections(4).connect(url).await?);
                store.migrate().await?;
                DbSessionStore::Postgres(store)
            }
        })
    }

    /// Deletes expired sessions every few minutes, forever.
    pub fn spawn_cleanup(&self) {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(300));
            loop {
                tick.tick().await;
                let result = match &store {
                    DbSessionStore::Sqlite(s) => s.delete_expired().await,
                    DbSessionStore::Postgres(s) => s.delete_expired().await,
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "Expired-session cleanup failed.");
                }
            }
        });
    }
}

#[async_trait]
impl SessionStore for DbSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        match self {
            DbSessionStore::Sqlite(s) => s.create(record).await,
            DbSessionStore::Postgres(s) => s.create(record).await,
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        match self {
            DbSessionStore::Sqlite(s) => s.save(record).await,
            DbSessionStore::Postgres(s) => s.save(record).await,
        }
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        match self {
            DbSessionStore::Sqlite(s) => s.load(id).await,
            DbSessionStore::Postgres(s) => s.load(id).await,
        }
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        match self {
            DbSessionStore::Sqlite(s) => s.delete(id).await,
            DbSessionStore::Postgres(s) => s.delete(id).await,
        }
    }
}
