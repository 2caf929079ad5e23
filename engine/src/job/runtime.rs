//! The threads route jobs run on in a process that also serves ingest: a Tokio runtime of their
//! own, below the priority of the process's main runtime, which answers producers and the console.
//! (A process that only runs jobs keeps them on its main runtime.)
//!
//! Producers wait for ingest's durable acknowledgement; a route job only has to keep up, with the
//! log as its buffer. Sharing one runtime, a job working through a large batch delayed the acks
//! of every request queued behind it (measured: ack p99 several times its median under load).
//! On their own threads, niced, jobs take whatever CPU ingest leaves, and the kernel, not the
//! order of tasks in a queue, decides who runs.

use tokio::runtime::{Builder, Handle, Runtime};

/// How much lower than the rest of the process job threads run (Linux `nice` steps: at 10, a
/// job thread gets about a tenth of a core a busy ingest thread would get, and all of what it
/// leaves).
const JOB_NICE: i32 = 10;

/// The job runtime; dropping it stops whatever still runs on it (jobs are drained before).
pub struct JobRuntime {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl JobRuntime {
    /// A runtime with one worker thread per core.
    pub fn start() -> std::io::Result<JobRuntime> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("keystone-job")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        Ok(JobRuntime { handle: runtime.handle().clone(), runtime: Some(runtime) })
    }

    /// Where jobs are spawned.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }
}

impl Drop for JobRuntime {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which an async caller may not do.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Lowers the calling thread's scheduling priority by `JOB_NICE` (Linux keeps a nice value per
/// thread; a process already niced goes lower still, to 19 at most).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: nice takes and returns a plain integer and touches no memory.
        if unsafe { libc::nice(JOB_NICE) } == -1 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "Job thread keeps the normal priority.");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The calling thread's nice value.
    fn nice() -> i32 {
        // SAFETY: getpriority reads the calling thread's nice value (who = 0 is the caller).
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[test]
    fn jobs_run_on_their_own_lower_priority_threads() {
        let jobs = JobRuntime::start().unwrap();
        let probe = jobs.handle().spawn(async { (std::thread::current().name().map(str::to_owned), nice()) });
        let (name, job_nice) = jobs.handle().block_on(probe).unwrap();
        assert_eq!(name.as_deref(), Some("keystone-job"));
        assert_eq!(job_nice, (nice() + JOB_NICE).min(19));
    }
}
