//! Stored samples (see `telemetry`): jobs' and streams' numbers written every few seconds by the
//! telemetry task, rolled up from 10 s to 5 min, pruned by age, and read by the dashboards. One
//! table per kind of sample, handled by the same code through [`Sampled`].

use crate::store::{Store, StoreError};
use crate::telemetry::{merge, JobSample, Resolution, StreamSample, RESOLUTIONS};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::Row;
use std::collections::BTreeMap;

/// A sample kind and where it is stored: `TABLE (KEY, resolution, at, sample)`.
pub trait Sampled: Serialize + DeserializeOwned + Clone + Send + Sync {
    const TABLE: &'static str;
    /// The column naming what the sample describes (an object id).
    const KEY: &'static str;
    fn at(&self) -> i64;
    /// The same numbers as the first part of the bucket `[at, at + seconds)`.
    fn rebucket(self, at: i64, seconds: i64) -> Self;
    /// Folds a later, finer sample of the same object into this bucket.
    fn fold(&mut self, later: &Self);
}

impl Sampled for JobSample {
    const TABLE: &'static str = "job_samples";
    const KEY: &'static str = "route_id";
    fn at(&self) -> i64 {
        self.at
    }
    fn rebucket(self, at: i64, seconds: i64) -> Self {
        JobSample { at, seconds, ..self }
    }
    fn fold(&mut self, later: &Self) {
        merge(self, later)
    }
}

impl Sampled for StreamSample {
    const TABLE: &'static str = "stream_samples";
    const KEY: &'static str = "stream_id";
    fn at(&self) -> i64 {
        self.at
    }
    fn rebucket(self, at: i64, seconds: i64) -> Self {
        StreamSample { at, seconds, ..self }
    }
    fn fold(&mut self, later: &Self) {
        self.merge(later)
    }
}

/// Folds samples (oldest first) into one bucket starting at `at`.
fn fold_into<T: Sampled>(bucket: &mut Option<T>, s: T, at: i64, seconds: i64) {
    match bucket.as_mut() {
        Some(b) => b.fold(&s),
        None => *bucket = Some(s.rebucket(at, seconds)),
    }
}

/// One process's share of a job's fine sample (the partitions it runs).
#[derive(Debug, Clone, PartialEq)]
pub struct SampleShare {
    pub route_id: String,
    /// The instance name of the process.
    pub worker: String,
    /// When the process last wrote it (ms since the epoch).
    pub written_at: i64,
    pub sample: JobSample,
}

impl Store {
    /// Writes samples of one resolution, replacing any already stored for the same bucket.
    pub async fn put_samples<T: Sampled>(
        &self,
        resolution: Resolution,
        samples: &[(String, T)],
    ) -> Result<(), StoreError> {
        if samples.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO {table} ({key}, resolution, at, sample) VALUES ($1, $2, $3, $4) \
             ON CONFLICT ({key}, resolution, at) DO UPDATE SET sample = excluded.sample",
            table = T::TABLE,
            key = T::KEY
        );
        let mut tx = self.write().await?;
        for (id, s) in samples {
            let json = serde_json::to_string(s).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query(&sql).bind(id).bind(resolution.seconds).bind(s.at()).bind(json).execute(tx.conn()).await?;
        }
        tx.commit().await
    }

    /// Rolls the fine samples of `[from, from + coarse)` up into one coarse sample per object.
    /// Idempotent: running it again rewrites the same buckets.
    pub async fn roll_up_samples<T: Sampled>(&self, from: i64) -> Result<usize, StoreError> {
        let (fine, coarse) = (RESOLUTIONS[0], RESOLUTIONS[1]);
        let from = coarse.bucket(from);
        let rows = self.fetch_samples::<T>(None, fine, from, from + coarse.seconds * 1000).await?;
        let mut buckets: BTreeMap<String, Option<T>> = BTreeMap::new();
        for (id, s) in rows {
            fold_into(buckets.entry(id).or_default(), s, from, coarse.seconds);
        }
        let rolled: Vec<(String, T)> = buckets.into_iter().filter_map(|(id, b)| Some((id, b?))).collect();
        self.put_samples(coarse, &rolled).await?;
        Ok(rolled.len())
    }

    /// Drops samples older than their resolution keeps.
    pub async fn prune_samples<T: Sampled>(&self, now: i64) -> Result<u64, StoreError> {
        let sql = format!("DELETE FROM {} WHERE resolution = $1 AND at < $2", T::TABLE);
        let mut removed = 0;
        for r in RESOLUTIONS {
            let done = sqlx::query(&sql).bind(r.seconds).bind(now - r.keep_ms).execute(self.pool()).await?;
            removed += done.rows_affected();
        }
        Ok(removed)
    }

    /// Stores this process's shares of its jobs' fine samples (`worker` is its instance name),
    /// replacing its share of the same bucket.
    pub async fn put_sample_shares(
        &self,
        worker: &str,
        shares: &[(String, JobSample)],
        now: i64,
    ) -> Result<(), StoreError> {
        if shares.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        for (route_id, s) in shares {
            let json = serde_json::to_string(s).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query(
                "INSERT INTO job_sample_shares (route_id, worker, at, updated_at, sample) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (route_id, worker, at) DO UPDATE SET updated_at = excluded.updated_at, sample = excluded.sample",
            )
            .bind(route_id)
            .bind(worker)
            .bind(s.at)
            .bind(now)
            .bind(json)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await
    }

    /// Every process's shares of the fine buckets from `since` on.
    pub async fn sample_shares(&self, since: i64) -> Result<Vec<SampleShare>, StoreError> {
        let rows = sqlx::query("SELECT route_id, worker, updated_at, sample FROM job_sample_shares WHERE at >= $1")
            .bind(since)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                let json: String = r.try_get("sample")?;
                Ok(SampleShare {
                    route_id: r.try_get("route_id")?,
                    worker: r.try_get("worker")?,
                    written_at: r.try_get("updated_at")?,
                    sample: serde_json::from_str(&json)
                        .map_err(|e| StoreError::Corrupt(format!("job_sample_shares: {e}")))?,
                })
            })
            .collect()
    }

    /// Drops shares of buckets before `before` (their sums are in `job_samples` by then).
    pub async fn prune_sample_shares(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM job_sample_shares WHERE at < $1").bind(before).execute(self.pool()).await?;
        Ok(done.rows_affected())
    }

    /// One object's samples since `since`, oldest first, at the finest resolution that covers
    /// the window. Coarse windows end with the fine samples not rolled up yet, merged, so the
    /// last minutes are never missing.
    pub async fn samples<T: Sampled>(&self, id: &str, since: i64, now: i64) -> Result<Vec<T>, StoreError> {
        let resolution = Resolution::for_window(now - since);
        let mut out: Vec<T> =
            self.fetch_samples::<T>(Some(id), resolution, since, now + 1).await?.into_iter().map(|(_, s)| s).collect();
        if resolution != RESOLUTIONS[0] {
            let open = resolution.bucket(now);
            let mut bucket: Option<T> = None;
            for (_, s) in self.fetch_samples::<T>(Some(id), RESOLUTIONS[0], open, now + 1).await? {
                fold_into(&mut bucket, s, open, resolution.seconds);
            }
            out.retain(|s| s.at() < open);
            out.extend(bucket);
        }
        Ok(out)
    }

    /// The fine samples since `since` of the given routes, oldest first, by route (the
    /// overview's sparklines, fetched for the rows on screen only).
    pub async fn recent_samples(
        &self,
        route_ids: &[&str],
        since: i64,
        now: i64,
    ) -> Result<BTreeMap<String, Vec<JobSample>>, StoreError> {
        let mut out: BTreeMap<String, Vec<JobSample>> = BTreeMap::new();
        if route_ids.is_empty() {
            return Ok(out);
        }
        let marks: Vec<String> = (0..route_ids.len()).map(|i| format!("${}", i + 4)).collect();
        let sql = format!(
            "SELECT route_id, sample FROM job_samples WHERE resolution = $1 AND at >= $2 AND at < $3 \
             AND route_id IN ({}) ORDER BY at",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(RESOLUTIONS[0].seconds).bind(since).bind(now + 1);
        for id in route_ids {
            q = q.bind(*id);
        }
        for r in q.fetch_all(self.pool()).await? {
            let json: String = r.try_get("sample")?;
            let sample = serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("job sample: {e}")))?;
            out.entry(r.try_get("route_id")?).or_default().push(sample);
        }
        Ok(out)
    }

    /// Every route's newest fine sample from the last `within_ms` (what health and sorting read).
    pub async fn latest_samples(&self, within_ms: i64, now: i64) -> Result<BTreeMap<String, JobSample>, StoreError> {
        let mut out = BTreeMap::new();
        // Ordered by time: a later sample of a route replaces an earlier one.
        for (route_id, s) in self.fetch_samples::<JobSample>(None, RESOLUTIONS[0], now - within_ms, now + 1).await? {
            out.insert(route_id, s);
        }
        Ok(out)
    }

    async fn fetch_samples<T: Sampled>(
        &self,
        id: Option<&str>,
        resolution: Resolution,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let sql = format!(
            "SELECT {key} AS id, sample FROM {table} WHERE resolution = $1 AND at >= $2 AND at < $3 \
             AND ($4 = '' OR {key} = $4) ORDER BY at",
            table = T::TABLE,
            key = T::KEY
        );
        let rows = sqlx::query(&sql)
            .bind(resolution.seconds)
            .bind(from)
            .bind(to)
            .bind(id.unwrap_or(""))
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                let json: String = r.try_get("sample")?;
                let sample =
                    serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("{}: {e}", T::TABLE)))?;
                Ok((r.try_get("id")?, sample))
            })
            .collect()
    }
}
