//! The one error type of gyre, and the wrapper that hands a message back.

use std::time::Duration;

use gyre_runtime::abi::State;

/// Everything that can go wrong in gyre. Each message says what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message type does not fit the ring's slots. When even the largest slot
    /// ([`gyre_runtime::abi::MAX_SLOT_BYTES`]) is too small, `suggested` is above it and
    /// the message says to split the type instead.
    #[error(
        "message type `{type_name}` is {size} bytes but a slot of {slot_bytes} bytes holds {max} \
         payload bytes: {}",
        too_large_advice(*.size, *.suggested)
    )]
    MessageTooLarge {
        /// The Rust type.
        type_name: &'static str,
        /// Its size.
        size: usize,
        /// The slot size asked for.
        slot_bytes: u32,
        /// Payload bytes per slot.
        max: usize,
        /// The smallest slot size that fits (above the largest slot size when none does).
        suggested: u32,
    },
    /// A message type needs more alignment than a slot payload has.
    #[error(
        "message type `{type_name}` needs {align}-byte alignment but slot payloads are only \
         16-byte aligned: use a type aligned to 16 bytes or less (drop its \
         `#[repr(align({align}))]`, or keep over-aligned fields as byte arrays)"
    )]
    MessageAlignment {
        /// The Rust type.
        type_name: &'static str,
        /// Its alignment.
        align: usize,
    },
    /// A route was refused (unknown kernel, type or slot-size mismatch, a cycle, a
    /// stopped downstream).
    #[error(transparent)]
    Route(#[from] gyre_runtime::routing::RouteError),
    /// A stage (of a group builder: [`crate::Stage`], or a CUDA or wgpu stage) was used
    /// with another builder or group than the one whose `add` returned it.
    #[error(
        "a stage of another group was used with group `{group}`: a stage is valid only with \
         the builder whose `add` returned it and the group that builder launched; use the \
         stages this group's builder returned"
    )]
    ForeignStage {
        /// The group (or group builder) it was used with.
        group: String,
    },
    /// A capacity or slot size is invalid.
    #[error("kernel `{kernel}`: {source}")]
    Layout {
        /// The kernel.
        kernel: String,
        /// What is wrong.
        source: gyre_runtime::ring::LayoutError,
    },
    /// The spec has no implementation for the backend it is launched on.
    #[error("kernel `{kernel}` has no {backend} implementation: {advice}")]
    NoImplementation {
        /// The kernel.
        kernel: String,
        /// The backend.
        backend: &'static str,
        /// What to add to the spec, or where to launch it instead.
        advice: String,
    },
    /// The backend cannot do what was asked; the advice says what to do instead.
    #[error("{what} is not supported on the {backend} backend: {advice}")]
    Unsupported {
        /// What was asked.
        what: String,
        /// The backend.
        backend: &'static str,
        /// What to do instead.
        advice: String,
    },
    /// A backend that was asked for is not available here.
    #[error("backend {backend} is unavailable: {reason}")]
    BackendUnavailable {
        /// The backend.
        backend: &'static str,
        /// Why.
        reason: String,
    },
    /// Kernel source did not compile (a CUDA or WGSL handler, or the group it is part
    /// of). `log` is the compiler's output: it names the file (`FUNCTION.cu` for a handler
    /// given with `gyre::cuda::CudaKernel::source`, `FUNCTION.wgsl` for one given with
    /// `gyre::wgpu::WgpuKernel::source`) and the line of each error.
    #[error("kernel source did not compile ({compiler}); fix the lines the log names:\n{log}")]
    Compile {
        /// Which compiler (`"NVRTC 13.5"`, `"g++ (emulation)"`, `"naga (WGSL)"`).
        compiler: String,
        /// The compiler's log, with file names and line numbers.
        log: String,
    },
    /// The runtime refused a launch.
    #[error("could not launch: {0}")]
    Launch(String),
    /// A launch would exceed the runtime's resource budget; the message says which and
    /// what to do.
    #[error("{0}")]
    OverBudget(String),
    /// The inbox is full (returned by `try_send` and by the `Fail` backpressure policy).
    #[error(
        "kernel `{kernel}`'s inbox is full: retry later, use `send` (it waits for room) or a \
         Sender with `Backpressure::Block`, or raise its capacity"
    )]
    Full {
        /// The kernel.
        kernel: String,
    },
    /// The wait timed out.
    #[error(
        "timed out after {after:?} waiting on kernel `{kernel}`: retry, or wait longer; a kernel \
         that is not active (launched or paused) processes nothing, so activate it"
    )]
    Timeout {
        /// The kernel.
        kernel: String,
        /// How long it waited.
        after: Duration,
    },
    /// The kernel is draining and accepts no more messages.
    #[error(
        "kernel `{kernel}` is draining and accepts no new messages: send to another kernel, or \
         wait for the drain to finish, then restart it (`Runtime::restart(&kernel)`, or \
         `Group::restart` for its group or pipeline) or launch it again"
    )]
    Draining {
        /// The kernel.
        kernel: String,
    },
    /// The kernel is terminated.
    #[error(
        "kernel `{kernel}` is terminated and takes no messages: restart it \
         (`Runtime::restart(&kernel)`, or `Group::restart` for its group or pipeline) or launch \
         it again"
    )]
    Terminated {
        /// The kernel.
        kernel: String,
    },
    /// The kernel faulted.
    #[error(
        "kernel `{kernel}` faulted: {reason}; terminate it to collect its undelivered messages, \
         then restart it (`Runtime::restart(&kernel)`, or `Group::restart` for its group or \
         pipeline) or launch it again"
    )]
    Faulted {
        /// The kernel.
        kernel: String,
        /// The fault.
        reason: String,
    },
    /// `recv` on a kernel whose spec has no host-bound output.
    #[error("kernel `{kernel}` has no host-bound output, so there is nothing to receive: give its spec `.host_output(capacity)`")]
    NoHostOutput {
        /// The kernel.
        kernel: String,
    },
    /// `recv` through the kernel while a [`crate::Receiver`] or [`crate::Requester`]
    /// holds its output.
    #[error(
        "kernel `{kernel}`'s output is held by a Receiver or a Requester: receive through it, or drop it first"
    )]
    ReceiverTaken {
        /// The kernel.
        kernel: String,
    },
    /// A second exclusive sender was asked for.
    #[error("kernel `{kernel}` already has an ExclusiveSender: use it (or a shared Sender), or drop it first")]
    ExclusiveSenderTaken {
        /// The kernel.
        kernel: String,
    },
    /// A lifecycle call the state machine does not allow.
    #[error("kernel `{kernel}`: {source}")]
    Lifecycle {
        /// The kernel.
        kernel: String,
        /// The refused transition.
        source: gyre_runtime::lifecycle::LifecycleError,
    },
    /// The kernel did not acknowledge a command in time.
    #[error(
        "kernel `{kernel}` did not acknowledge within {waited:?}: its handler is busy or stuck. \
         If the kernel runs, terminate it (a terminate abandons a stuck handler and hands its \
         messages back); if it was terminated, retry once the abandoned handler returns; for a \
         handler that is only slow, raise `RuntimeBuilder::command_timeout`"
    )]
    Unresponsive {
        /// The kernel.
        kernel: String,
        /// How long the host waited.
        waited: Duration,
    },
    /// A request's message went to the dead letters (a handler failed on it, or it could
    /// not be delivered downstream): no reply will come.
    #[error("the request went to the dead letters instead of being answered ({reason}); take it back with Runtime::take_dead_letters, fix what the reason says, and send it again")]
    DeadLettered {
        /// The kernel and the dead letter's reason.
        reason: String,
    },
    /// The kernel's runtime was shut down or dropped: the kernel is stopped and takes no
    /// more messages (a refused send hands the message back). What it emitted stays
    /// receivable until this error; `drain` or `terminate` on the handle hands back what
    /// it did not deliver.
    #[error("kernel `{kernel}` is stopped because its runtime was shut down or dropped: nothing more is sent or emitted; drain or terminate this handle to take back what it did not deliver, and launch kernels on a live runtime")]
    RuntimeGone {
        /// The kernel.
        kernel: String,
    },
}

/// The advice of [`Error::MessageTooLarge`]: a slot size that fits, if one does.
fn too_large_advice(size: usize, suggested: u32) -> String {
    use gyre_runtime::abi::{MAX_SLOT_BYTES, SLOT_HEADER_BYTES};
    if suggested <= MAX_SLOT_BYTES {
        format!("raise the slot size with `.slot_bytes({suggested})` or shrink the type")
    } else {
        format!(
            "no slot size fits it (the largest slot, {MAX_SLOT_BYTES} bytes, holds {} payload \
             bytes, {size} needed): split it into several messages, or keep the data in a \
             buffer of your own and send an index or handle into it",
            MAX_SLOT_BYTES - SLOT_HEADER_BYTES
        )
    }
}

impl Error {
    pub(crate) fn stopped(kernel: &str, state: State, fault: Option<String>) -> Self {
        let kernel = kernel.to_owned();
        match state {
            State::Draining => Self::Draining { kernel },
            State::Faulted => Self::Faulted {
                kernel,
                reason: fault.unwrap_or_else(|| "unknown fault".into()),
            },
            _ => Self::Terminated { kernel },
        }
    }

    pub(crate) fn from_command(kernel: &str, error: gyre_runtime::backend::CommandError) -> Self {
        use gyre_runtime::backend::CommandError as C;
        let kernel = kernel.to_owned();
        match error {
            C::Lifecycle(source) => Self::Lifecycle { kernel, source },
            C::Unresponsive { waited, .. } => Self::Unresponsive { kernel, waited },
            C::Faulted { reason, .. } => Self::Faulted { kernel, reason },
        }
    }
}

/// A send that failed, with the message handed back.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct SendError<T> {
    /// What went wrong.
    pub error: Error,
    /// The message that was not sent.
    pub message: T,
}

impl<T> SendError<T> {
    /// The message that was not sent.
    pub fn into_message(self) -> T {
        self.message
    }
}

impl<T> std::fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> From<SendError<T>> for Error {
    fn from(value: SendError<T>) -> Self {
        value.error
    }
}
