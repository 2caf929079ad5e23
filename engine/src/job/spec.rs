//! What a job runs: its spec compiled from the route, its stream and its sink, and the
//! route's transforms (shared with the preview).

use super::*;

/// Everything a job needs, compiled from the route, its stream and its sink.
pub struct JobSpec {
    pub route_id: String,
    /// `team/route`, for logs and dead letters.
    pub route: String,
    pub topic: String,
    pub partitions: u32,
    pub dead_letter_topic: String,
    pub transforms: Transforms,
    pub batch_size: usize,
    pub max_latency: Duration,
    pub checkpoint_interval: Duration,
    /// Where a partition without a checkpoint starts.
    pub start_at: StartAt,
    /// Per partition, the offset the job reads up to and not beyond (a backfill's end); a
    /// partition not named has no limit.
    pub until: HashMap<u32, u64>,
    /// Batches of one partition delivered at once: 1 keeps the partition's order at the sink;
    /// more (an unordered route) trade order for throughput against a slow sink.
    pub in_flight: usize,
}

/// How long a route's dead letters are kept (its dead-letter topic has one partition).
pub const DEAD_LETTER_RETENTION: Retention =
    Retention { max_age_ms: 7 * 24 * 3_600_000, max_bytes_per_partition: None };

/// Batches in flight per partition of an unordered route.
pub const UNORDERED_IN_FLIGHT: usize = 4;

impl JobSpec {
    /// Compiles a declared route (and the stream it reads, with its current topic) into a job.
    pub fn for_route(
        route_id: &str,
        team: &str,
        route_name: &str,
        route: &RouteSpec,
        (topic, stream): (String, &StreamSpec),
    ) -> Result<JobSpec, String> {
        let settings = route.job_settings().map_err(|e| e.to_string())?;
        let transforms = Transforms::compile(route.filter.as_deref(), &route.projection, team)?;
        Ok(JobSpec {
            route_id: route_id.to_owned(),
            route: format!("{team}/{route_name}"),
            topic,
            partitions: stream.partitions,
            dead_letter_topic: dead_letter_topic(team, route_name),
            transforms,
            batch_size: route.batch_size as usize,
            max_latency: Duration::from_millis(u64::from(route.max_latency_ms)),
            checkpoint_interval: Duration::from_millis(u64::from(settings.checkpoint_interval_ms)),
            start_at: if settings.start_at_latest { StartAt::Latest } else { StartAt::Earliest },
            until: HashMap::new(),
            in_flight: match route.ordering {
                keystone_control::Ordering::Partition => 1,
                keystone_control::Ordering::Unordered => UNORDERED_IN_FLIGHT,
            },
        })
    }
}

/// What a route makes of one payload.
#[derive(Debug, Clone)]
pub enum Transformed {
    /// Passed the filter; this is what the sink receives, as JSON text.
    Deliver(Box<RawValue>),
    FilteredOut,
    /// The filter could not be evaluated (e.g. a field it reads is missing): why.
    FilterError(String),
}

/// A route's compiled transforms, in order: filter, masking and hashing, projection, dropping
/// nulls. Jobs and the preview share them.
pub struct Transforms {
    pub filter: Option<Filter>,
    pub hygiene: Hygiene,
    pub projection: Projection,
    /// The payload's top-level fields the route reads (filter and kept fields), when it keeps
    /// only some: the others need not be parsed. `None`: it reads them all.
    pub(super) reads: Option<Vec<String>>,
    /// Set when the route only tests and picks top-level fields, with no masking, hashing or
    /// dropping of nulls: then a job copies the fields' text from the record instead of building
    /// a tree of the payload ([`Transforms::transform_fields`]).
    copy: Option<FieldCopy>,
}

impl Transforms {
    /// Compiles a declared filter and projection (once per job, not per event). `team` scopes the
    /// pseudonyms of hashed fields.
    pub fn compile(
        filter: Option<&str>,
        projection: &keystone_control::Projection,
        team: &str,
    ) -> Result<Transforms, String> {
        let filter = match filter {
            Some(f) => Some(Filter::compile(f).map_err(|e| format!("filter: {e}"))?),
            None => None,
        };
        let hygiene = Hygiene::new(
            projection.mask.iter().map(String::as_str),
            projection.hash.iter().map(String::as_str),
            projection.drop_nulls,
            team,
        );
        // Masking, hashing, dropping and renaming act on kept fields only: with a keep list, the
        // filter's fields and the kept ones are all the route reads.
        let reads = match filter.as_ref().map(Filter::fields) {
            _ if projection.keep.is_empty() => None,
            Some(None) => None,
            filtered => {
                let mut reads: Vec<String> = Vec::new();
                for field in filtered.flatten().unwrap_or_default().iter().chain(&projection.keep) {
                    let top = field.split('.').next().unwrap_or_default();
                    if !reads.iter().any(|f| f == top) {
                        reads.push(top.to_owned());
                    }
                }
                Some(reads)
            }
        };
        let projection = Projection::new(
            projection.keep.iter().map(String::as_str),
            projection.drop.iter().map(String::as_str),
            projection.rename.iter().map(|(from, to)| (from.as_str(), to.as_str())),
        );
        let copy = (hygiene.is_noop() && filter.as_ref().is_none_or(|f| f.fields().is_some()))
            .then(|| projection.top_level())
            .flatten();
        Ok(Transforms { filter, hygiene, projection, reads, copy })
    }

    /// The payload's top-level fields the route reads, when not all (see `reads`).
    pub fn reads(&self) -> Option<&[String]> {
        self.reads.as_deref()
    }

    /// True when the route's transforms can work on fields as sent (see `copy`).
    pub fn copies_fields(&self) -> bool {
        self.copy.is_some()
    }

    pub fn transform(&self, mut payload: Value) -> Transformed {
        if let Some(filter) = &self.filter {
            match filter.matches(&payload) {
                Ok(true) => {}
                Ok(false) => return Transformed::FilteredOut,
                Err(e) => return Transformed::FilterError(e.to_string()),
            }
        }
        self.hygiene.before(&mut payload);
        let mut out = self.projection.apply(payload);
        self.hygiene.after(&mut out);
        Transformed::Deliver(serde_json::value::to_raw_value(&out).expect("a JSON value serialises"))
    }

    /// The same as [`Transforms::transform`] on a payload's top-level fields as sent (all of
    /// them, or those of [`Transforms::reads`]), for a route whose transforms allow it. `None`
    /// when they do not, or this event needs the tree path: a field the filter reads has no tree
    /// here (a number beyond f64), or a kept value spans lines.
    pub fn transform_fields<'a>(&'a self, fields: RawFields<'a>) -> Option<Transformed> {
        let copy = self.copy.as_ref()?;
        if let Some(filter) = &self.filter {
            // The filter reads only the fields it names: those become a tree, the rest stay text.
            let mut tested = serde_json::Map::new();
            for name in filter.fields().unwrap_or_default() {
                if let Some((_, raw)) = fields.iter().rev().find(|(k, _)| k == name) {
                    tested.insert(name.clone(), serde_json::from_str(raw.get()).ok()?);
                }
            }
            match filter.matches(&Value::Object(tested)) {
                Ok(true) => {}
                Ok(false) => return Some(Transformed::FilteredOut),
                Err(e) => return Some(Transformed::FilterError(e.to_string())),
            }
        }
        copy.apply(fields).map(Transformed::Deliver)
    }
}
