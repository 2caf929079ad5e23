//! The reconciler's pure decisions: goal state + what the data plane reports -> actions. No I/O
//! here; an executor in the server applies the actions, so the decisions are tested alone.

use crate::DesiredState;

/// A stream's topic as the goal state wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicGoal {
    pub topic: String,
    pub partitions: u32,
    pub max_age_ms: i64,
    pub max_bytes_per_partition: Option<u64>,
}

/// A topic as the log reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedTopic {
    pub topic: String,
    pub partitions: u32,
    pub max_age_ms: i64,
    pub max_bytes_per_partition: Option<u64>,
}

/// What to do about one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicAction {
    /// Missing from the log (new stream, or the data plane was wiped): create it.
    Create(TopicGoal),
    /// Present but with fewer partitions or other retention than declared: bring it in line.
    Update(TopicGoal),
    /// The log has more partitions than declared; partitions never shrink (keyed data would move),
    /// so this is reported, not acted on.
    CannotShrink { topic: String, declared: u32, actual: u32 },
    /// A topic no live stream declares (its stream was deleted): kept until retention empties it.
    Orphan { topic: String },
}

/// Every action needed to make the log match the goal, in topic order. Empty when they agree.
pub fn plan_topics(goal: &[TopicGoal], observed: &[ObservedTopic]) -> Vec<TopicAction> {
    let mut actions = Vec::new();
    for g in goal {
        match observed.iter().find(|o| o.topic == g.topic) {
            None => actions.push(TopicAction::Create(g.clone())),
            Some(o) => {
                if o.partitions > g.partitions {
                    actions.push(TopicAction::CannotShrink {
                        topic: g.topic.clone(),
                        declared: g.partitions,
                        actual: o.partitions,
                    });
                }
                let retention_differs =
                    o.max_age_ms != g.max_age_ms || o.max_bytes_per_partition != g.max_bytes_per_partition;
                if o.partitions < g.partitions || retention_differs {
                    actions.push(TopicAction::Update(g.clone()));
                }
            }
        }
    }
    for o in observed {
        if !goal.iter().any(|g| g.topic == o.topic) {
            actions.push(TopicAction::Orphan { topic: o.topic.clone() });
        }
    }
    actions.sort_by(|a, b| topic_of(a).cmp(topic_of(b)));
    actions
}

/// The topic of a deleted stream: kept for the stream's retention after the deletion (so a
/// mistaken delete can still be read back by an operator), then removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredTopic {
    pub topic: String,
    pub deleted_at: i64,
    pub max_age_ms: i64,
}

/// Which orphan topics to remove now: those of deleted streams whose retention has run out since
/// the deletion. A topic no stream ever declared (another tool's, on a shared cluster) is never
/// removed; neither is one a live stream still declares.
pub fn expired_topics(orphans: &[String], retired: &[RetiredTopic], now_ms: i64) -> Vec<String> {
    let mut out: Vec<String> = orphans
        .iter()
        .filter(|t| {
            let mine = retired.iter().filter(|r| &r.topic == *t);
            let mut any = false;
            // Every deletion of that topic's streams must have expired (the latest rules).
            let all_expired = mine.inspect(|_| any = true).all(|r| now_ms.saturating_sub(r.deleted_at) >= r.max_age_ms);
            any && all_expired
        })
        .cloned()
        .collect();
    out.sort();
    out
}

fn topic_of(a: &TopicAction) -> &str {
    match a {
        TopicAction::Create(g) | TopicAction::Update(g) => &g.topic,
        TopicAction::CannotShrink { topic, .. } | TopicAction::Orphan { topic } => topic,
    }
}

/// A route's job as the goal state wants it running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobGoal {
    pub route_id: String,
    /// Changes whenever anything the job was built from changes (route, sink, or stream
    /// version), so a changed sink secret or a grown stream redeploys the job.
    pub fingerprint: String,
    /// The route asked to drain and checkpoint the old job before the new one starts.
    pub drain_first: bool,
    /// What the route's owners want; a job started for a paused route starts paused.
    pub desired: DesiredState,
}

/// What a route's job is built from, as far as a change to it must replace the job.
#[derive(Debug, Clone, Default)]
pub struct JobInputs<'a> {
    /// The route's job-relevant spec (an alert threshold or a description is not).
    pub route: serde_json::Value,
    /// The stream by version: a grown stream must redeploy.
    pub stream_version: i64,
    /// The sink's job-relevant spec (a rotated secret changes its `set_in_version`).
    pub sink: serde_json::Value,
    /// A running backfill is another source: switching to it and back is a redeploy.
    pub backfill: Option<&'a str>,
    /// A stream sink appends to its target's current topic: a re-created target is a redeploy.
    pub target_topic: Option<&'a str>,
    /// Bumped by each requested restart (0: never).
    pub restart_generation: i64,
}

/// The fingerprint of [`JobGoal`]: equal inputs give equal fingerprints in every process of a
/// build, and any change to them gives another.
pub fn job_fingerprint(i: &JobInputs<'_>) -> String {
    let hash = |v: &serde_json::Value| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        v.to_string().hash(&mut h);
        h.finish()
    };
    let mut fp = format!("route {:016x} stream v{} sink {:016x}", hash(&i.route), i.stream_version, hash(&i.sink));
    if let Some(b) = i.backfill {
        fp.push_str(&format!(" backfill {b}"));
    }
    if let Some(t) = i.target_topic {
        fp.push_str(&format!(" into {t}"));
    }
    // Absent until the first restart, so jobs keep their fingerprints across the upgrade.
    if i.restart_generation > 0 {
        fp.push_str(&format!(" restart {}", i.restart_generation));
    }
    fp
}

/// A job the executor is running (or holding as failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedJob {
    pub route_id: String,
    pub fingerprint: String,
    pub paused: bool,
}

/// What to do about one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobAction {
    /// A new route, or one whose job is not running (e.g. after a restart of the server).
    Start(JobGoal),
    /// The route or something it uses changed: replace the job.
    Redeploy(JobGoal),
    /// Suspend the job in place.
    Pause {
        route_id: String,
    },
    Resume {
        route_id: String,
    },
    /// The route is declared stopped: drain and remove its job.
    Halt {
        route_id: String,
    },
    /// The route was deleted.
    Stop {
        route_id: String,
    },
}

/// Every action needed to make the running jobs match the goal, in route-id order. Idempotent:
/// applying the plan and planning again gives nothing to do.
pub fn plan_jobs(goal: &[JobGoal], observed: &[ObservedJob]) -> Vec<JobAction> {
    let mut actions = Vec::new();
    for g in goal {
        let id = || g.route_id.clone();
        let found = observed.iter().find(|o| o.route_id == g.route_id);
        match (found, g.desired) {
            (None, DesiredState::Stopped) => {}
            (Some(_), DesiredState::Stopped) => actions.push(JobAction::Halt { route_id: id() }),
            (None, _) => actions.push(JobAction::Start(g.clone())),
            (Some(o), _) if o.fingerprint != g.fingerprint => actions.push(JobAction::Redeploy(g.clone())),
            (Some(o), DesiredState::Paused) if !o.paused => actions.push(JobAction::Pause { route_id: id() }),
            (Some(o), DesiredState::Running) if o.paused => actions.push(JobAction::Resume { route_id: id() }),
            (Some(_), _) => {}
        }
    }
    for o in observed {
        if !goal.iter().any(|g| g.route_id == o.route_id) {
            actions.push(JobAction::Stop { route_id: o.route_id.clone() });
        }
    }
    actions.sort_by(|a, b| a.route_id().cmp(b.route_id()));
    actions
}

impl JobAction {
    /// The route whose job the action concerns.
    pub fn route_id(&self) -> &str {
        match self {
            JobAction::Start(g) | JobAction::Redeploy(g) => &g.route_id,
            JobAction::Pause { route_id }
            | JobAction::Resume { route_id }
            | JobAction::Halt { route_id }
            | JobAction::Stop { route_id } => route_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_fingerprint_moves_with_what_it_is_built_from_and_nothing_else() {
        let base = JobInputs {
            route: serde_json::json!({"stream": "plays", "batch_size": 10}),
            stream_version: 3,
            sink: serde_json::json!({"kind": "file"}),
            ..Default::default()
        };
        let fp = job_fingerprint(&base);
        assert_eq!(fp, job_fingerprint(&base.clone()), "deterministic");
        assert!(!fp.contains("restart") && !fp.contains("backfill") && !fp.contains("into"), "{fp}");
        let changed = [
            JobInputs { route: serde_json::json!({"stream": "plays", "batch_size": 11}), ..base.clone() },
            JobInputs { stream_version: 4, ..base.clone() },
            JobInputs { sink: serde_json::json!({"kind": "http"}), ..base.clone() },
            JobInputs { backfill: Some("b1"), ..base.clone() },
            JobInputs { target_topic: Some("alpha.out_2"), ..base.clone() },
            JobInputs { restart_generation: 1, ..base.clone() },
        ];
        let mut seen = std::collections::BTreeSet::from([fp]);
        for c in &changed {
            assert!(seen.insert(job_fingerprint(c)), "{c:?} must change the fingerprint");
        }
        let again = JobInputs { restart_generation: 2, ..base.clone() };
        assert!(seen.insert(job_fingerprint(&again)), "every restart is a new fingerprint");
    }

    #[test]
    fn a_restart_redeploys_a_running_or_failed_job_and_starts_nothing_stopped() {
        let goal =
            |fp: &str, desired| JobGoal { route_id: "r".into(), fingerprint: fp.into(), drain_first: false, desired };
        let held = vec![ObservedJob { route_id: "r".into(), fingerprint: "fp".into(), paused: false }];
        let restarted = goal("fp restart 1", DesiredState::Running);
        assert_eq!(plan_jobs(&[restarted.clone()], &held), vec![JobAction::Redeploy(restarted)]);
        assert_eq!(plan_jobs(&[goal("fp restart 1", DesiredState::Stopped)], &[]), vec![]);
    }

    #[test]
    fn deleted_streams_topics_go_after_their_retention_and_no_other_topic_ever_does() {
        let hour = 3_600_000;
        let retired = |topic: &str, deleted_at: i64| RetiredTopic { topic: topic.into(), deleted_at, max_age_ms: hour };
        let orphans: Vec<String> = ["a.old", "a.young", "foreign", "a.twice"].map(String::from).to_vec();
        let known = [
            retired("a.old", 0),
            retired("a.young", 2 * hour - 1),
            // Deleted long ago, re-created and deleted again recently: kept.
            retired("a.twice", 0),
            retired("a.twice", 2 * hour),
            // A deleted stream whose topic is gone already: nothing to do.
            retired("a.gone", 0),
        ];
        assert_eq!(expired_topics(&orphans, &known, 2 * hour + 10), ["a.old"]);
        assert_eq!(expired_topics(&orphans, &known, 3 * hour), ["a.old", "a.twice", "a.young"]);
        assert!(expired_topics(&orphans, &[], 10 * hour).is_empty(), "an unknown topic is never removed");
    }

    fn goal(topic: &str, partitions: u32) -> TopicGoal {
        TopicGoal { topic: topic.into(), partitions, max_age_ms: 3_600_000, max_bytes_per_partition: None }
    }

    fn seen(topic: &str, partitions: u32) -> ObservedTopic {
        ObservedTopic { topic: topic.into(), partitions, max_age_ms: 3_600_000, max_bytes_per_partition: None }
    }

    #[test]
    fn nothing_to_do_when_log_matches_goal() {
        assert!(plan_topics(&[goal("a.plays", 3)], &[seen("a.plays", 3)]).is_empty());
    }

    #[test]
    fn a_wiped_data_plane_is_rebuilt_from_the_goal() {
        let plan = plan_topics(&[goal("a.plays", 3), goal("b.clicks", 1)], &[]);
        assert_eq!(plan, [TopicAction::Create(goal("a.plays", 3)), TopicAction::Create(goal("b.clicks", 1))]);
    }

    #[test]
    fn growth_and_retention_changes_update_but_shrinking_is_refused() {
        assert_eq!(plan_topics(&[goal("t", 6)], &[seen("t", 3)]), [TopicAction::Update(goal("t", 6))]);
        let mut longer = goal("t", 3);
        longer.max_age_ms *= 2;
        assert_eq!(plan_topics(&[longer.clone()], &[seen("t", 3)]), [TopicAction::Update(longer)]);
        assert_eq!(
            plan_topics(&[goal("t", 2)], &[seen("t", 4)]),
            [TopicAction::CannotShrink { topic: "t".into(), declared: 2, actual: 4 }]
        );
    }

    #[test]
    fn topics_without_a_stream_are_reported_not_deleted() {
        assert_eq!(plan_topics(&[], &[seen("old", 1)]), [TopicAction::Orphan { topic: "old".into() }]);
    }

    fn job(id: &str, fp: &str) -> JobGoal {
        JobGoal { route_id: id.into(), fingerprint: fp.into(), drain_first: false, desired: DesiredState::Running }
    }
    fn running(id: &str, fp: &str) -> ObservedJob {
        ObservedJob { route_id: id.into(), fingerprint: fp.into(), paused: false }
    }
    fn wanting(desired: DesiredState, g: JobGoal) -> JobGoal {
        JobGoal { desired, ..g }
    }

    #[test]
    fn desired_states_pause_resume_and_halt_jobs_once() {
        use DesiredState::*;
        let paused = |id: &str, fp: &str| ObservedJob { paused: true, ..running(id, fp) };
        let goal = [
            wanting(Paused, job("a", "r1")),
            wanting(Running, job("b", "r1")),
            wanting(Stopped, job("c", "r1")),
            wanting(Stopped, job("d", "r1")),
            wanting(Paused, job("e", "r2")),
            wanting(Paused, job("f", "r1")),
        ];
        let observed = [running("a", "r1"), paused("b", "r1"), running("c", "r1"), paused("e", "r1")];
        assert_eq!(
            plan_jobs(&goal, &observed),
            vec![
                JobAction::Pause { route_id: "a".into() },
                JobAction::Resume { route_id: "b".into() },
                JobAction::Halt { route_id: "c".into() },
                // A changed route is redeployed paused; a paused route with no job starts paused.
                JobAction::Redeploy(wanting(Paused, job("e", "r2"))),
                JobAction::Start(wanting(Paused, job("f", "r1"))),
            ]
        );
        // Once applied, nothing is left to do: a stopped route with no job stays without one.
        let applied = [paused("a", "r1"), running("b", "r1"), paused("e", "r2"), paused("f", "r1")];
        assert!(plan_jobs(&goal, &applied).is_empty());
    }

    #[test]
    fn jobs_start_redeploy_and_stop_to_match_the_goal() {
        let goal = [job("a", "r1"), job("b", "r2"), job("c", "r1")];
        let observed = [running("b", "r1"), running("c", "r1"), running("d", "r4")];
        assert_eq!(
            plan_jobs(&goal, &observed),
            vec![
                JobAction::Start(job("a", "r1")),
                JobAction::Redeploy(job("b", "r2")),
                JobAction::Stop { route_id: "d".into() },
            ]
        );
    }

    #[test]
    fn job_plan_is_idempotent_and_rebuilds_everything_from_nothing() {
        let goal = [job("a", "r1"), job("b", "r2")];
        let from_nothing = plan_jobs(&goal, &[]);
        assert_eq!(from_nothing, vec![JobAction::Start(job("a", "r1")), JobAction::Start(job("b", "r2"))]);
        let observed: Vec<ObservedJob> = goal.iter().map(|g| running(&g.route_id, &g.fingerprint)).collect();
        assert!(plan_jobs(&goal, &observed).is_empty());
    }
}
