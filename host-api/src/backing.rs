//! What a [`crate::Kernel`] handle stands on: a CPU kernel, or kernel `k` of a group on
//! a device backend (the closed set of the backend seam, see
//! `gyre_runtime::backend::seam`). Sends, receives and waits are written once over this
//! enum; the CPU arm calls the CPU side of the seam (`gyre_runtime::backend::seam::cpu`)
//! directly, with no indirect call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gyre_runtime::abi::State;
use gyre_runtime::backend::group::SendError as RawSendError;
use gyre_runtime::backend::seam::cpu::{CpuKernel, RecvFailure, SendFailure};
use gyre_runtime::backend::seam::{DeviceGroup, Watch};
use gyre_runtime::metrics::LatencyRecorder;
use gyre_runtime::wait::Signal;

use crate::spec::Message;
use crate::Error;

/// A launched group on a device backend, with what the host keeps about it: names,
/// routes, which kernels have a host output, and which receiving ends are taken.
#[derive(Debug)]
pub(crate) struct DeviceCore {
    /// The launched group, which a restart replaces (see `device_supervisor`).
    pub(crate) group: crate::device_supervisor::Restartable,
    /// The group's name.
    pub(crate) name: String,
    /// Each kernel's name, by index.
    pub(crate) names: Vec<String>,
    /// Whether each kernel has a host output (`recv` on one without is an error).
    pub(crate) host_output: Vec<bool>,
    /// Kernel-to-kernel routes `(from, to)`.
    pub(crate) edges: Vec<(usize, usize)>,
    /// Kernels, upstream first.
    pub(crate) order: Vec<usize>,
    /// Whether each kernel's exclusive receiving end (a `Receiver` or `Requester`) is out.
    pub(crate) receiver_taken: Vec<AtomicBool>,
    /// Whether each kernel's exclusive sender is out.
    pub(crate) sender_taken: Vec<AtomicBool>,
    /// Request-to-reply latency of requests answered through each kernel, measured on
    /// the host.
    pub(crate) latency: Vec<LatencyRecorder>,
    /// Set once the group was stopped (drained or terminated) through the API or by the
    /// runtime's shutdown.
    pub(crate) stopped: AtomicBool,
    /// Set once the runtime that launched the group was shut down or dropped: sends and
    /// receives past the last output then say so ([`Error::RuntimeGone`]), as on the CPU.
    pub(crate) runtime_gone: AtomicBool,
}

impl DeviceCore {
    /// Whether the group's fault policy will restart it (see
    /// `Restartable::restart_pending`) and neither the host nor the runtime's end stopped
    /// it first.
    pub(crate) fn restart_pending(&self) -> bool {
        // Relaxed: the flags are plain booleans of the group's handles.
        !self.stopped.load(Ordering::Relaxed)
            && !self.runtime_gone.load(Ordering::Relaxed)
            && self.group.restart_pending()
    }

    /// The error for kernel `k`, which takes or makes no more messages.
    pub(crate) fn stopped_error(&self, k: usize) -> Error {
        let state = self.group.state(k);
        let kernel = self.names[k].clone();
        match state {
            // Relaxed: only chooses the words of an error.
            _ if self.runtime_gone.load(Ordering::Relaxed) => Error::RuntimeGone { kernel },
            State::Faulted => Error::Faulted {
                kernel,
                reason: self
                    .group
                    .fault()
                    .unwrap_or_else(|| "the kernel reported a fault".to_owned()),
            },
            // Relaxed: only chooses the words of an error.
            _ if self.stopped.load(Ordering::Relaxed) => Error::Terminated { kernel },
            State::Terminated => Error::Terminated { kernel },
            _ => Error::Draining { kernel },
        }
    }
}

/// Kernel `k` of a device group.
#[derive(Clone, Debug)]
pub(crate) struct DeviceKernel {
    pub(crate) group: Arc<DeviceCore>,
    pub(crate) k: usize,
}

/// What a kernel handle stands on.
#[derive(Clone, Debug)]
pub(crate) enum Backing {
    /// A kernel of the CPU backend.
    Cpu(CpuKernel),
    /// Kernel `k` of a group on a device backend.
    Device(DeviceKernel),
}

/// Why a send did not go through: full (wait and retry), or an error for the caller.
pub(crate) enum SendFail {
    Full,
    Error(Error),
}

impl Backing {
    /// The kernel's name.
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Cpu(core) => core.name(),
            Self::Device(d) => &d.group.names[d.k],
        }
    }

    /// The backend, as metrics label it.
    pub(crate) fn backend(&self) -> &'static str {
        match self {
            Self::Cpu(_) => "cpu",
            Self::Device(d) => d.group.group.backend(),
        }
    }

    /// The device's ordinal, on a backend that numbers its devices (CUDA).
    pub(crate) fn device(&self) -> Option<u32> {
        match self {
            Self::Cpu(_) => None,
            Self::Device(d) => d.group.group.device(),
        }
    }

    /// Sends one message without waiting.
    pub(crate) fn try_send<In: Message>(
        &self,
        corr: [u32; 2],
        bytes: &[u8],
    ) -> Result<(), SendFail> {
        match self {
            Self::Cpu(core) => core.try_send(bytes, corr).map_err(|f| match f {
                SendFailure::Full => SendFail::Full,
                other => SendFail::Error(cpu_send_error::<In>(core, other)),
            }),
            Self::Device(d) => match d.group.group.try_send(d.k, bytes, corr) {
                Ok(()) => Ok(()),
                Err(RawSendError::Full { .. }) => Err(SendFail::Full),
                Err(e) => Err(SendFail::Error(device_send_error::<In>(d, e))),
            },
        }
    }

    /// Messages waiting in the kernel's inbox (every inbox ring together) and the slots
    /// of one inbox ring: racy gauges, read from the rings' cursors.
    pub(crate) fn inbox(&self) -> (u32, u32) {
        match self {
            Self::Cpu(core) => (core.inbox_len(), core.inbox_capacity()),
            Self::Device(d) => {
                let s = d.group.group.sample(d.k);
                (s.inbox_depth, s.inbox_capacity)
            }
        }
    }

    /// The signal a sender waits on for room.
    pub(crate) fn space(&self) -> &Signal {
        match self {
            Self::Cpu(core) => core.inbox_space(),
            Self::Device(d) => d.group.group.progress(),
        }
    }

    /// The signal a receiver waits on for outputs.
    pub(crate) fn items(&self) -> &Signal {
        match self {
            Self::Cpu(core) => core.outbox_items(),
            Self::Device(d) => d.group.group.progress(),
        }
    }

    /// Keeps the signals notified while the guard lives (a device that cannot notify
    /// by itself is watched from the host meanwhile; the CPU needs nothing).
    pub(crate) fn watch(&self) -> Watch<'_> {
        match self {
            Self::Cpu(_) => Watch::not_needed(),
            Self::Device(d) => d.group.group.watch(),
        }
    }

    /// Takes the next host-bound output through the shared receiving end, handing its
    /// payload and correlation id to `f`; `Ok(None)` when nothing is there yet.
    pub(crate) fn try_recv_with<R>(
        &self,
        f: impl FnOnce(&[u8], [u32; 2]) -> R,
    ) -> Result<Option<R>, Error> {
        match self {
            Self::Cpu(core) => match core.try_recv_with(|s| f(s.payload, s.corr)) {
                Ok(r) => Ok(Some(r)),
                Err(RecvFailure::Empty) => Ok(None),
                Err(failure) => Err(cpu_recv_error(core, failure)),
            },
            Self::Device(d) => {
                // Relaxed: a flag read; the receiving end's own lock orders the rings.
                if d.group.receiver_taken[d.k].load(Ordering::Relaxed) {
                    return Err(Error::ReceiverTaken {
                        kernel: d.group.names[d.k].clone(),
                    });
                }
                d.try_recv_with(f)
            }
        }
    }

    /// The receiving end's error when the kernel has no host output.
    pub(crate) fn no_output(&self) -> Error {
        Error::NoHostOutput {
            kernel: self.name().to_owned(),
        }
    }
}

impl DeviceKernel {
    /// Takes kernel `k`'s next output, whoever holds the receiving end.
    pub(crate) fn try_recv_with<R>(
        &self,
        f: impl FnOnce(&[u8], [u32; 2]) -> R,
    ) -> Result<Option<R>, Error> {
        self.group.try_recv_with(self.k, f)
    }
}

impl DeviceCore {
    /// Takes kernel `k`'s next output, whoever holds the receiving end; an error once
    /// the kernel stopped and everything it emitted was taken.
    pub(crate) fn try_recv_with<R>(
        &self,
        k: usize,
        f: impl FnOnce(&[u8], [u32; 2]) -> R,
    ) -> Result<Option<R>, Error> {
        if !self.host_output[k] {
            return Err(Error::NoHostOutput {
                kernel: self.names[k].clone(),
            });
        }
        // The state first: a kernel that acknowledged its stop had published every
        // output, so an empty outbox after that means nothing more will come.
        let state = self.group.state(k);
        let mut f = Some(f);
        let mut out = None;
        self.group.try_recv_with(k, &mut |_tag, corr, payload| {
            if let Some(f) = f.take() {
                out = Some(f(payload, corr));
            }
        });
        match out {
            Some(r) => Ok(Some(r)),
            None if matches!(state, State::Terminated | State::Faulted)
                && !self.restart_pending() =>
            {
                Err(self.stopped_error(k))
            }
            None => Ok(None),
        }
    }
}

/// The error of a CPU send that failed other than by a full inbox.
pub(crate) fn cpu_send_error<In>(core: &CpuKernel, failure: SendFailure) -> Error {
    let kernel = core.name().to_owned();
    match failure {
        SendFailure::Full => Error::Full { kernel },
        // Refused by the drain of a runtime shutting down: its advice (restart) would not
        // work, so say what happened.
        SendFailure::Closed(_) if core.runtime_stopping() => Error::RuntimeGone { kernel },
        SendFailure::Closed(state) => Error::stopped(&kernel, state, core.fault()),
        SendFailure::TooLarge { len, max } => Error::MessageTooLarge {
            type_name: std::any::type_name::<In>(),
            size: len,
            slot_bytes: core.inbox_slot_bytes(),
            max,
            suggested: (len as u32 + gyre_runtime::abi::SLOT_HEADER_BYTES).next_power_of_two(),
        },
    }
}

/// The error of a device send that failed other than by a full inbox.
fn device_send_error<In>(d: &DeviceKernel, error: RawSendError) -> Error {
    use gyre_runtime::abi::SLOT_HEADER_BYTES;
    let kernel = d.group.names[d.k].clone();
    match error {
        RawSendError::Full { .. } => Error::Full { kernel },
        RawSendError::Closed { .. } => d.group.stopped_error(d.k),
        RawSendError::Faulted(reason) => Error::Faulted { kernel, reason },
        RawSendError::TooLarge { bytes, room, .. } => Error::MessageTooLarge {
            type_name: std::any::type_name::<In>(),
            size: bytes,
            slot_bytes: room + SLOT_HEADER_BYTES,
            max: room as usize,
            suggested: (bytes + SLOT_HEADER_BYTES as usize)
                .next_power_of_two()
                .try_into()
                .unwrap_or(u32::MAX),
        },
    }
}

/// The error of a CPU receive that failed other than by an empty output.
pub(crate) fn cpu_recv_error(core: &CpuKernel, failure: RecvFailure) -> Error {
    let kernel = core.name().to_owned();
    match failure {
        RecvFailure::NoOutput => Error::NoHostOutput { kernel },
        // From the start of the runtime's shutdown, as device groups say it: a receive
        // waiting when the shutdown began ended with `Terminated` here and `RuntimeGone`
        // there.
        RecvFailure::Closed(_) if core.runtime_stopping() => Error::RuntimeGone { kernel },
        RecvFailure::Closed(state) => Error::stopped(&kernel, state, core.fault()),
        RecvFailure::Taken => Error::ReceiverTaken { kernel },
        RecvFailure::Empty => unreachable!("empty is handled by the callers"),
    }
}

/// The first `size_of::<T>()` bytes of a slot payload as a `T`.
pub(crate) fn read<T: bytemuck::Pod>(payload: &[u8]) -> T {
    bytemuck::pod_read_unaligned(&payload[..std::mem::size_of::<T>()])
}
