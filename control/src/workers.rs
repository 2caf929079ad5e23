//! Worker registration: every process that runs route jobs (a `keystone worker`, or a server in
//! role `all`) renews a row every few seconds with what it holds, so the console can show which
//! process runs which partitions of which job, and which processes went silent.

use crate::{JobMetrics, JobPhase};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// How often a process renews its row.
pub const HEARTBEAT_EVERY_MS: i64 = 2_000;
/// A row not renewed for this long is a process that died or lost the database.
pub const SILENT_AFTER_MS: i64 = 3 * HEARTBEAT_EVERY_MS;

/// One job a process holds, and the partitions of its stream it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct HeldJob {
    pub route_id: String,
    /// `team/route`.
    pub route: String,
    pub partitions: Vec<u32>,
    /// The route version this process's instance runs, and when it started (ms since the epoch).
    #[serde(default)]
    pub version: i64,
    #[serde(default)]
    pub started_at: i64,
    /// The process's live numbers of its part of the job, so that any process can show a job
    /// that others run. Stored with the beat, never listed: recent errors carry event samples,
    /// and the workers list is open to every signed-in caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "store", schema(ignore))]
    pub metrics: Option<JobMetrics>,
}

/// When the oldest instance of a route's job among `jobs` started (`None` when none runs it):
/// a job changed since then runs everywhere once this is later.
pub fn oldest_start(jobs: &[HeldJob], route_id: &str) -> Option<i64> {
    jobs.iter().filter(|j| j.route_id == route_id).map(|j| j.started_at).min()
}

/// Every job's live numbers, by route id, combined from the shares in `jobs` (see [`combine`]).
pub fn combine_shares<'a>(jobs: impl IntoIterator<Item = &'a HeldJob>) -> HashMap<String, JobMetrics> {
    let mut shares: HashMap<String, Vec<JobMetrics>> = HashMap::new();
    for job in jobs {
        if let Some(m) = &job.metrics {
            shares.entry(job.route_id.clone()).or_default().push(m.clone());
        }
    }
    shares.into_iter().filter_map(|(id, s)| Some((id, combine(s)?))).collect()
}

/// A process's share of a job's live numbers, as it beats: the newest few errors only, so a
/// beat stays small.
pub fn share_of(mut metrics: JobMetrics) -> JobMetrics {
    let keep = metrics.recent_errors.len().saturating_sub(SHARED_ERRORS);
    metrics.recent_errors.drain(..keep);
    metrics
}

/// Recent errors each process beats per job.
const SHARED_ERRORS: usize = 5;

/// One job's live numbers from the shares of the processes that run parts of it: counters
/// summed, each partition once (during a handover two processes may both report one: the
/// further position is the newer), errors merged oldest first.
pub fn combine(shares: impl IntoIterator<Item = JobMetrics>) -> Option<JobMetrics> {
    let mut shares = shares.into_iter();
    let mut sum = shares.next()?;
    for share in shares {
        sum.counters += share.counters;
        sum.partitions.extend(share.partitions);
        sum.recent_errors.extend(share.recent_errors);
    }
    sum.partitions.sort_by(|a, b| a.partition.cmp(&b.partition).then(b.acked.cmp(&a.acked)));
    sum.partitions.dedup_by_key(|p| p.partition);
    sum.lag = sum.partitions.iter().map(|p| p.end.saturating_sub(p.acked)).sum();
    sum.recent_errors.sort_by_key(|e| e.at);
    Some(sum)
}

/// A process running route jobs, as it last reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "store", derive(utoipa::ToSchema))]
pub struct WorkerStatus {
    pub name: String,
    /// `worker`, or `all` for a server that runs jobs itself.
    pub role: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub jobs: Vec<HeldJob>,
    /// Renewed within `SILENT_AFTER_MS`.
    pub alive: bool,
}

/// What a caller may see of the processes running jobs: an admin everything; anyone else only the
/// processes that run jobs of their teams (`teams`: names), only those jobs, and no process
/// details (names carry host names and data directories): each shown as `process N`, by its
/// place in the full list.
pub fn visible_to(workers: Vec<WorkerStatus>, admin: bool, teams: &[&str]) -> Vec<WorkerStatus> {
    if admin {
        return workers;
    }
    let ours = |j: &HeldJob| j.route.split_once('/').is_some_and(|(team, _)| teams.contains(&team));
    workers
        .into_iter()
        .enumerate()
        .filter_map(|(i, mut w)| {
            w.jobs.retain(ours);
            (!w.jobs.is_empty()).then(|| WorkerStatus { name: format!("process {}", i + 1), ..w })
        })
        .collect()
}

/// A shared job's phase from its live parts' phases and errors: the worst part speaks for the
/// job (one part failing makes the job failing), with its error. `None` for no parts.
///
/// [`JobPhase::may_become`] governs one run of a job: each worker's part is such a run, and its
/// supervisor checks every transition it makes. The shared job's phase is derived from whichever
/// parts are alive, so it may move where one run may not: a failed part's worker goes silent and
/// the job is running again without a restart of its own.
pub fn combined_phase(parts: &[(JobPhase, Option<String>)]) -> Option<(JobPhase, Option<String>)> {
    let severity = |p: JobPhase| match p {
        JobPhase::Stopped => 0,
        JobPhase::Paused => 1,
        JobPhase::Running => 2,
        JobPhase::Starting => 3,
        JobPhase::Failing => 4,
        JobPhase::Failed => 5,
    };
    parts.iter().max_by_key(|(p, _)| severity(*p)).cloned()
}

#[cfg(test)]
mod tests {

    #[test]
    fn callers_see_their_teams_jobs_and_no_process_details() {
        let job = |route: &str| HeldJob {
            route_id: route.into(),
            route: route.into(),
            partitions: vec![0],
            version: 1,
            started_at: 0,
            metrics: None,
        };
        let worker = |name: &str, jobs: Vec<HeldJob>| WorkerStatus {
            name: name.into(),
            role: "worker".into(),
            started_at: 0,
            heartbeat_at: 0,
            jobs,
            alive: true,
        };
        let all = vec![
            worker("host-a:/srv/keystone", vec![job("alpha/r1"), job("beta/r2")]),
            worker("host-b:/srv/keystone", vec![job("beta/r3")]),
        ];
        assert_eq!(visible_to(all.clone(), true, &[]), all);
        let alpha = visible_to(all.clone(), false, &["alpha"]);
        assert_eq!(alpha.len(), 1);
        assert_eq!(
            (alpha[0].name.as_str(), alpha[0].jobs.len(), alpha[0].jobs[0].route.as_str()),
            ("process 1", 1, "alpha/r1")
        );
        let beta = visible_to(all, false, &["beta"]);
        assert_eq!(beta.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(), ["process 1", "process 2"]);
        assert!(visible_to(beta, false, &["gamma"]).is_empty());
    }
    use super::*;
    use crate::{JobCounters, PartitionLag, RecentError};

    fn share(partitions: &[(u32, u64, u64)], delivered: u64, errors: &[i64]) -> JobMetrics {
        JobMetrics {
            counters: JobCounters { read: delivered, delivered, ..Default::default() },
            lag: 0,
            partitions: partitions
                .iter()
                .map(|&(partition, acked, end)| PartitionLag { partition, acked, end })
                .collect(),
            recent_errors: errors
                .iter()
                .map(|&at| RecentError { at, message: format!("e{at}"), sample: None })
                .collect(),
        }
    }

    #[test]
    fn shares_combine_into_one_job_with_each_partition_once() {
        let m = combine([
            share(&[(2, 10, 15), (0, 5, 5)], 15, &[30, 10]),
            // Partition 2 moved here: this process is further along it.
            share(&[(1, 7, 9), (2, 12, 15)], 19, &[20]),
        ])
        .unwrap();
        assert_eq!(m.counters.delivered, 34);
        let parts: Vec<(u32, u64)> = m.partitions.iter().map(|p| (p.partition, p.acked)).collect();
        assert_eq!(parts, [(0, 5), (1, 7), (2, 12)]);
        assert_eq!(m.lag, 2 + 3);
        let at: Vec<i64> = m.recent_errors.iter().map(|e| e.at).collect();
        assert_eq!(at, [10, 20, 30]);
        assert!(combine(Vec::new()).is_none());
    }

    #[test]
    fn a_share_keeps_the_newest_errors() {
        let m = share_of(share(&[], 0, &[1, 2, 3, 4, 5, 6, 7]));
        let at: Vec<i64> = m.recent_errors.iter().map(|e| e.at).collect();
        assert_eq!(at, [3, 4, 5, 6, 7]);
    }

    #[test]
    fn the_worst_part_speaks_for_a_shared_job() {
        let part = |p: JobPhase, e: Option<&str>| (p, e.map(str::to_owned));
        let parts =
            [part(JobPhase::Running, None), part(JobPhase::Failing, Some("down")), part(JobPhase::Starting, None)];
        assert_eq!(combined_phase(&parts), Some(part(JobPhase::Failing, Some("down"))));
        let parts = [part(JobPhase::Running, None), part(JobPhase::Starting, None), part(JobPhase::Paused, None)];
        assert_eq!(combined_phase(&parts).unwrap().0, JobPhase::Starting);
        assert_eq!(
            combined_phase(&[part(JobPhase::Failed, Some("x")), part(JobPhase::Failing, Some("y"))]).unwrap().0,
            JobPhase::Failed
        );
        assert_eq!(combined_phase(&[]), None);
    }

    #[test]
    fn a_shared_jobs_phase_is_derived_and_may_move_where_one_run_may_not() {
        let part = |p: JobPhase| (p, None::<String>);
        let before = combined_phase(&[part(JobPhase::Failed), part(JobPhase::Running)]).unwrap().0;
        // The failed part's worker went silent: the live part speaks.
        let after = combined_phase(&[part(JobPhase::Running)]).unwrap().0;
        assert_eq!((before, after), (JobPhase::Failed, JobPhase::Running));
        assert!(!before.may_become(after), "one run never goes from failed to running");
    }
}
