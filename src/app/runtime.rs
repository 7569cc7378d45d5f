//! The async runtime `gatehouse run` serves on, sized to the CPUs the process may use.

use std::num::NonZeroUsize;

use tokio::runtime::{Builder, Runtime};

/// The runtime for the CPUs this process may use (its CPU affinity and its cgroup's CPU
/// quota, as [`std::thread::available_parallelism`] reads them).
///
/// With one CPU, everything runs on the one thread that starts it (tokio's current-thread
/// scheduler). A multi-thread runtime there would still run a worker thread beside the
/// main one, so a wake-up between them crosses threads, and its scheduler runs a task
/// woken by another at once (its LIFO slot): a call's stream task wakes the connection
/// to the app, which writes that one call's frames before the next stream task runs.
/// Run in turn from one queue, the tasks of every call a read brought in are polled
/// first and each connection then writes all their frames in one system call: under
/// h2load on one pinned core, 0.37 `writev` per call instead of 1.70, and less than
/// half the kernel time per call (`docs/performance.md`, round four).
///
/// With more CPUs, one worker per CPU, as tokio sizes it by default.
pub(super) fn build() -> std::io::Result<Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let mut builder = if cpus == 1 {
        Builder::new_current_thread()
    } else {
        let mut builder = Builder::new_multi_thread();
        builder.worker_threads(cpus);
        builder
    };
    builder.enable_all().build()
}
