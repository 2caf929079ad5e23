//! Stored job samples (see `telemetry`): written every few seconds by the telemetry task, rolled
//! up from 10 s to 5 min, pruned by age, and read by the dashboards.

use crate::store::{Store, StoreError};
use crate::telemetry::{merge, JobSample, Resolution, RESOLUTIONS};
use sqlx::Row;
use std::collections::BTreeMap;

impl Store {
    /// Writes samples of one resolution, replacing any already stored for the same bucket.
    pub async fn put_samples(&self, resolution: Resolution, samples: &[(String, JobSample)]) -> Result<(), StoreError> {
        if samples.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        for (route_id, s) in samples {
            let json = serde_json::to_string(s).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query(
                "INSERT INTO job_samples (route_id, resolution, at, sample) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (route_id, resolution, at) DO UPDATE SET sample = excluded.sample",
            )
            .bind(route_id)
            .bind(resolution.seconds)
            .bind(s.at)
            .bind(json)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await
    }

    /// Rolls the fine samples of `[from, from + coarse)` up into one coarse sample per route.
    /// Idempotent: running it again rewrites the same buckets.
    pub async fn roll_up_samples(&self, from: i64) -> Result<usize, StoreError> {
        let (fine, coarse) = (RESOLUTIONS[0], RESOLUTIONS[1]);
        let from = coarse.bucket(from);
        let rows = self.fetch_samples(None, fine, from, from + coarse.seconds * 1000).await?;
        let mut buckets: BTreeMap<String, JobSample> = BTreeMap::new();
        for (route_id, s) in rows {
            match buckets.get_mut(&route_id) {
                Some(b) => merge(b, &s),
                None => {
                    buckets.insert(route_id, JobSample { at: from, seconds: coarse.seconds, ..s });
                }
            }
        }
        let rolled: Vec<(String, JobSample)> = buckets.into_iter().collect();
        self.put_samples(coarse, &rolled).await?;
        Ok(rolled.len())
    }

    /// Drops samples older than their resolution keeps.
    pub async fn prune_samples(&self, now: i64) -> Result<u64, StoreError> {
        let mut removed = 0;
        for r in RESOLUTIONS {
            let done = sqlx::query("DELETE FROM job_samples WHERE resolution = $1 AND at < $2")
                .bind(r.seconds)
                .bind(now - r.keep_ms)
                .execute(self.pool())
                .await?;
            removed += done.rows_affected();
        }
        Ok(removed)
    }

    /// A route's samples since `since`, oldest first, at the finest resolution that covers the
    /// window. Coarse windows end with the fine samples not rolled up yet, merged, so the last
    /// minutes are never missing.
    pub async fn job_samples(&self, route_id: &str, since: i64, now: i64) -> Result<Vec<JobSample>, StoreError> {
        let resolution = Resolution::for_window(now - since);
        let mut out: Vec<JobSample> =
            self.fetch_samples(Some(route_id), resolution, since, now + 1).await?.into_iter().map(|(_, s)| s).collect();
        if resolution != RESOLUTIONS[0] {
            let open = resolution.bucket(now);
            let recent = self.fetch_samples(Some(route_id), RESOLUTIONS[0], open, now + 1).await?;
            let mut bucket: Option<JobSample> = None;
            for (_, s) in recent {
                match bucket.as_mut() {
                    Some(b) => merge(b, &s),
                    None => bucket = Some(JobSample { at: open, seconds: resolution.seconds, ..s }),
                }
            }
            out.retain(|s| s.at < open);
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
        for (route_id, s) in self.fetch_samples(None, RESOLUTIONS[0], now - within_ms, now + 1).await? {
            out.insert(route_id, s);
        }
        Ok(out)
    }

    async fn fetch_samples(
        &self,
        route_id: Option<&str>,
        resolution: Resolution,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, JobSample)>, StoreError> {
        let rows = sqlx::query(
            "SELECT route_id, sample FROM job_samples WHERE resolution = $1 AND at >= $2 AND at < $3 \
             AND ($4 = '' OR route_id = $4) ORDER BY at",
        )
        .bind(resolution.seconds)
        .bind(from)
        .bind(to)
        .bind(route_id.unwrap_or(""))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let json: String = r.try_get("sample")?;
                let sample =
                    serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("job sample: {e}")))?;
                Ok((r.try_get("route_id")?, sample))
            })
            .collect()
    }
}
