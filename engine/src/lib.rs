//! Keystone's data plane. It never imports the console or the store: it runs from the specs it
//! is handed (and reports through small traits), so `keystone worker` can run it alone.

pub mod egress;
pub mod envelope;
pub mod ingest;
pub mod job;
pub mod log;
pub mod meter;
pub mod quota;
pub mod sinks;
pub mod sources;
pub mod transforms;

/// Wall-clock time in ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Events a task handles between yields to the runtime. Jobs share a runtime's few threads (with
/// each other, and with ingest where a process runs them on its main runtime), so a job working
/// through a large batch in one go delays the others; a few hundred events is well under a
/// millisecond of work.
pub const YIELD_EVERY: usize = 256;
