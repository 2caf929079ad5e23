//! Leases in the source of truth: which process holds a role (the reconciler, and with it the
//! route jobs) and until when. Exactly one holder at a time: a holder renews well before expiry;
//! another process takes the lease only once it expired. Each change of holder increments a
//! fencing token, and writes made under the lease check it in their own transaction, so a stale
//! holder (paused, or cut off from the database while another took over) cannot write.
//!
//! Expiry compares the stored deadline with the acquiring process's clock: processes sharing a
//! database need clocks within a fraction of the lease time (NTP keeps them within milliseconds).

use crate::store::{now_ms, Store, StoreError, WriteTx};
use sqlx::Row;

/// A lease this process holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    /// Grows with every change of holder.
    pub token: i64,
    /// Until when it is held unless renewed (ms since the epoch).
    pub expires_at: i64,
}

impl Store {
    /// Takes the lease `name` for `holder` for `ttl_ms`, or renews it if `holder` has it: `Some`
    /// while held, `None` while another holder's lease is live.
    pub async fn acquire_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<Option<Lease>, StoreError> {
        let now = now_ms();
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO leases (name, holder, token, expires_at) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (name) DO UPDATE SET \
               token = CASE WHEN leases.holder = excluded.holder THEN leases.token ELSE leases.token + 1 END, \
               holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(now + ttl_ms)
        .bind(now)
        .execute(tx.conn())
        .await?;
        let row = sqlx::query("SELECT holder, token, expires_at FROM leases WHERE name = $1")
            .bind(name)
            .fetch_one(tx.conn())
            .await?;
        tx.commit().await?;
        let current: String = row.try_get("holder")?;
        Ok((current == holder).then(|| Lease {
            name: name.to_owned(),
            holder: current,
            token: row.try_get("token").unwrap_or_default(),
            expires_at: row.try_get("expires_at").unwrap_or_default(),
        }))
    }

    /// A write transaction that goes through only while `lease` is still held (`None`: not
    /// fenced), for the writes a lease holder makes.
    pub async fn write_fenced(&self, lease: Option<&Lease>) -> Result<WriteTx, StoreError> {
        let mut tx = self.write().await?;
        if let Some(l) = lease {
            tx.check_lease(l).await?;
        }
        Ok(tx)
    }

    /// Gives a lease up (at shutdown), so another process can take it at once.
    pub async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2 AND token = $3")
            .bind(&lease.name)
            .bind(&lease.holder)
            .bind(lease.token)
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }

    /// Who holds a lease, with its token and expiry, if anyone ever took it.
    pub async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query("SELECT holder, token, expires_at FROM leases WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| {
            Ok(Lease {
                name: name.to_owned(),
                holder: r.try_get("holder")?,
                token: r.try_get("token")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .transpose()
    }
}

impl WriteTx {
    /// Fails with [`StoreError::Fenced`] unless `lease` is still the current holding. The check
    /// writes the lease row, which PostgreSQL then keeps locked until this transaction ends, so
    /// no takeover can slip in between the check and the writes it guards (SQLite's write
    /// transactions are serial anyway).
    pub async fn check_lease(&mut self, lease: &Lease) -> Result<(), StoreError> {
        let held = sqlx::query("UPDATE leases SET token = token WHERE name = $1 AND holder = $2 AND token = $3")
            .bind(&lease.name)
            .bind(&lease.holder)
            .bind(lease.token)
            .execute(self.conn())
            .await?
            .rows_affected();
        if held == 1 {
            Ok(())
        } else {
            Err(StoreError::Fenced(lease.name.clone()))
        }
    }
}
