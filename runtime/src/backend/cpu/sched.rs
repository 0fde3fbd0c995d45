//! What the worker pool and the supervisor need from a kernel, apart from the kernel:
//! the pool runs any [`Runnable`], a kernel reports its faults to any [`FaultSink`], and
//! the per-kernel restart bookkeeping ([`RestartState`]) is plain data.
//!
//! This module depends on none of `kernel`, `pool` or `supervisor`, so their imports form
//! a DAG: `pool` -> `sched`; `kernel` -> `pool`, `sched`; `supervisor` -> `kernel`, `pool`,
//! `sched`.

use std::sync::Arc;

/// How a pool turn of a kernel ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Turn {
    /// It still has work and went back to the run queue.
    Requeued,
    /// Nothing to do for this entry (an abandoned kernel).
    Dropped,
    /// It ran out of work and cleared its `scheduled` flag; the worker must heavy-fence
    /// and then call [`Runnable::recheck_idle`].
    WentIdle,
}

/// What a pool worker runs: a kernel's scheduled side.
pub(crate) trait Runnable: Send + Sync + 'static {
    /// Runs one turn (at most a quantum of messages); see `KernelCore::run_scheduled`.
    fn run_scheduled(self: &Arc<Self>) -> Turn;
    /// Whether a terminate abandoned it while its handler was stuck.
    fn is_abandoned(&self) -> bool;
    /// The re-check after the worker's heavy fence, for an entry that went idle; see
    /// `KernelCore::recheck_idle`.
    fn recheck_idle(self: &Arc<Self>);
}

/// Where a kernel reports that it faulted (the supervisor, which applies its fault
/// policy).
pub(crate) trait FaultSink<K>: Send + Sync + std::fmt::Debug {
    /// Called by a kernel that just faulted.
    fn report_fault(&self, kernel: Arc<K>);
}

/// What the supervisor keeps per kernel between faults.
#[derive(Debug, Default)]
pub(crate) struct RestartState {
    /// Restarts in a row and the circuit breaker.
    pub(crate) book: crate::health::RestartBook,
    /// Restarts over the kernel's life.
    pub(crate) total: u64,
}
