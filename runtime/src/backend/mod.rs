//! Backends: where kernels run.
//!
//! The CPU backend is always built and is the reference the GPU backends are checked
//! against. Every backend keeps the same contract: the ring protocol of
//! [`crate::ring`], the control block of [`crate::control`] and the lifecycle of
//! [`crate::lifecycle`]; a backend differs only in who runs the kernel side.

pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device_plan;
pub mod group;
pub mod seam;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use std::time::Duration;

use crate::abi::State;
use crate::lifecycle::LifecycleError;

/// Where a kernel runs on the CPU backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Placement {
    /// Scheduled on the shared worker pool when it has messages (the default). Thousands
    /// of pooled kernels share a few threads; an idle one costs no CPU.
    #[default]
    Pool,
    /// Its own thread polling its inbox: the persistent-loop analogue, lowest latency.
    /// The thread spins, then yields, then parks while the kernel is idle.
    Dedicated,
}

/// Why a lifecycle command did not complete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The state machine does not allow it.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// The kernel did not acknowledge within the time allowed.
    #[error(
        "kernel `{name}` did not acknowledge the command within {waited:?}: its handler is busy \
         or stuck. If the kernel runs, terminate it (a terminate abandons a stuck handler and \
         hands its messages back); if it was terminated, retry once the abandoned handler \
         returns; for a handler that is only slow, raise the command timeout"
    )]
    Unresponsive {
        /// The kernel.
        name: String,
        /// How long the host waited.
        waited: Duration,
    },
    /// The kernel faulted.
    #[error("kernel `{name}` faulted: {reason}; terminate it to collect its undelivered messages")]
    Faulted {
        /// The kernel.
        name: String,
        /// What went wrong.
        reason: String,
    },
}

/// What a drain did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainSummary {
    /// Messages the kernel processed over its life.
    pub processed: u64,
    /// Messages it emitted over its life.
    pub emitted: u64,
    /// Whether the timeout expired before the inbox was empty (the kernel was then
    /// terminated and what was left is handed back).
    pub timed_out: bool,
    /// The state the kernel ended in.
    pub final_state: Option<State>,
    /// The fault, if the kernel faulted.
    pub fault: Option<String>,
    /// Whether the kernel's handler did not return within the command timeout and the
    /// host took its rings over: the first message handed back is the one in hand.
    pub abandoned: bool,
}
