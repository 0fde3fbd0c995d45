//! What the typed GPU group handles ([`crate::cuda::CudaGroupHandle`],
//! [`crate::wgpu::WgpuGroupHandle`]) share: stage ids, and the typed sends, receives,
//! commands and reports over a runtime group, written once for any [`RawGroup`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gyre_runtime::abi::State;
use gyre_runtime::backend::group::{GroupReport, SendError as RawSendError};
use gyre_runtime::backend::CommandError;
use gyre_runtime::wait::Backoff;

use crate::gpu_common;
use crate::spec::Message;
use crate::{Error, SendError};

/// Where a stage is: its kernel's index in its group, and the group's id (so a stage is
/// never used on another group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StageId {
    /// The kernel's index in its group.
    pub(crate) index: usize,
    /// The id of the group it was added to ([`gpu_common::next_group_id`]).
    pub(crate) group_id: u64,
}

/// What the typed handles need of a runtime group: the methods `CudaGroup` and
/// `WgpuGroup` both have, with one signature.
pub(crate) trait RawGroup {
    /// The backend as messages name it (`"CUDA"`, `"wgpu"`).
    const LABEL: &'static str;

    /// Sends to kernel `k` without waiting.
    fn try_send(&self, k: usize, payload: &[u8]) -> Result<(), RawSendError>;

    /// Sends to kernel `k`, waiting at most `timeout` for room.
    fn send(&self, k: usize, payload: &[u8], timeout: Duration) -> Result<(), RawSendError>;

    /// Hands one output of kernel `k`'s payload to `f` in place, if one is there (no copy,
    /// no allocation); `Err` with the device error.
    fn try_recv_with<R>(&self, k: usize, f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>, String>;

    /// Waits a while for an output of kernel `k`, at most `left` (`None`: no deadline),
    /// between two tries of [`RawGroup::try_recv_with`]; `backoff` is the receive's own.
    fn wait_recv(&self, k: usize, left: Option<Duration>, backoff: &mut Backoff);

    /// The state of kernel `k`, as it last acknowledged it.
    fn state(&self, k: usize) -> State;

    /// The device error that ended the group, if one did.
    fn fault(&self) -> Option<String>;

    /// Activates every kernel.
    fn activate_all(&self) -> Result<(), CommandError>;

    /// Drains the group, upstream first, for at most `timeout`.
    fn drain(&self, timeout: Duration) -> GroupReport;

    /// Terminates the group.
    fn terminate(&self) -> GroupReport;
}

/// A launched group with its kernels' names: the typed operations of a handle, by
/// [`StageId`].
#[derive(Debug)]
pub(crate) struct GroupCore<G> {
    /// The runtime's group.
    pub(crate) group: G,
    /// The group's name.
    pub(crate) name: String,
    /// Each kernel's name, by index.
    pub(crate) names: Vec<String>,
    /// The id its stages carry.
    pub(crate) group_id: u64,
    /// How long a blocking send waits for room.
    pub(crate) command_timeout: Duration,
    /// Whether the group was terminated through this handle (a refused send then says
    /// the kernel is terminated, even before its kernels acknowledged).
    pub(crate) terminated: AtomicBool,
}

impl<G: RawGroup> GroupCore<G> {
    /// The kernel index of `stage`, checking it belongs to this group.
    ///
    /// # Panics
    /// When `stage` belongs to another group.
    pub(crate) fn index(&self, stage: StageId) -> usize {
        assert_eq!(
            stage.group_id,
            self.group_id,
            "this stage belongs to another {} group than `{}`",
            G::LABEL,
            self.name
        );
        stage.index
    }

    /// The kernel index of `stage`, or [`Error::ForeignStage`] when it belongs to another
    /// group.
    fn checked(&self, stage: StageId) -> Result<usize, Error> {
        if stage.group_id == self.group_id {
            Ok(stage.index)
        } else {
            Err(Error::ForeignStage {
                group: self.name.clone(),
            })
        }
    }

    /// Activates every kernel.
    pub(crate) fn activate(&self) -> Result<(), Error> {
        self.group
            .activate_all()
            .map_err(|e| gpu_common::command_error(&self.name, e))
    }

    /// Sends, waiting at most `timeout` for room (`None`: not at all).
    pub(crate) fn send<In: Message>(
        &self,
        stage: StageId,
        message: In,
        timeout: Option<Duration>,
    ) -> Result<(), SendError<In>> {
        let k = match self.checked(stage) {
            Ok(k) => k,
            Err(error) => return Err(SendError { error, message }),
        };
        let payload = bytemuck::bytes_of(&message);
        let sent = match timeout {
            Some(timeout) => self.group.send(k, payload, timeout),
            None => self.group.try_send(k, payload),
        };
        sent.map_err(|e| SendError {
            error: gpu_common::send_error::<In>(&self.names[k], e, timeout, || self.stopped(k)),
            message,
        })
    }

    /// The error for a kernel that takes or makes no more messages.
    fn stopped(&self, k: usize) -> Error {
        let mut state = self.group.state(k);
        // Relaxed: only chooses the words of an error.
        if self.terminated.load(Ordering::Relaxed) && state != State::Faulted {
            state = State::Terminated;
        }
        gpu_common::stopped(&self.names[k], state, self.group.fault())
    }

    /// Receives without waiting; `Ok(None)` when nothing is there yet.
    pub(crate) fn try_recv<Out: Message>(&self, stage: StageId) -> Result<Option<Out>, Error> {
        let k = self.checked(stage)?;
        // The state first: a kernel that acknowledged its stop had published every output
        // (on wgpu, copied back in the same tick), so an empty outbox after that means
        // nothing more will come.
        let state = self.group.state(k);
        match self.group.try_recv_with(k, gpu_common::read::<Out>) {
            Ok(Some(message)) => Ok(Some(message)),
            Ok(None) if matches!(state, State::Terminated | State::Faulted) => Err(self.stopped(k)),
            Ok(None) => Ok(None),
            Err(reason) => Err(Error::Faulted {
                kernel: self.names[k].clone(),
                reason,
            }),
        }
    }

    /// Receives, waiting at most `timeout` (`None`: until a message or an error).
    pub(crate) fn recv<Out: Message>(
        &self,
        stage: StageId,
        timeout: Option<Duration>,
    ) -> Result<Out, Error> {
        let k = self.checked(stage)?;
        let mut backoff = Backoff::new();
        gpu_common::recv_until(
            &self.names[k],
            timeout,
            || self.try_recv(stage),
            |left| {
                self.group.wait_recv(k, left, &mut backoff);
                None
            },
        )
    }

    /// Drains the group for at most `timeout`: its report.
    pub(crate) fn drain(&self, timeout: Duration) -> GpuReport {
        GpuReport::new::<G>(self.group.drain(timeout), self.group_id)
    }

    /// Terminates the group: its report.
    pub(crate) fn terminate(&self) -> GpuReport {
        // Relaxed: only chooses the words of an error (see `stopped`).
        self.terminated.store(true, Ordering::Relaxed);
        GpuReport::new::<G>(self.group.terminate(), self.group_id)
    }

    /// What dropping a handle does: terminates the group (within the command timeout; a
    /// group already stopped hands nothing back twice), discards every message it still
    /// held, and warns with their numbers: `(undelivered, unreceived)`, messages left in
    /// its rings and outputs for the host never received.
    pub(crate) fn stop_on_drop(&self) -> (usize, usize) {
        let undelivered = self.terminate().report.undelivered_count();
        let mut unreceived = 0;
        for k in 0..self.names.len() {
            while let Ok(Some(())) = self.group.try_recv_with(k, |_| ()) {
                unreceived += 1;
            }
        }
        if undelivered + unreceived > 0 {
            tracing::warn!(
                group = %self.name,
                backend = G::LABEL,
                undelivered,
                unreceived,
                "GPU group handle dropped: its messages left in rings (undelivered) and its \
                 outputs never received (unreceived) are discarded; drain or terminate the \
                 group and receive its outputs before dropping the handle"
            );
        }
        (undelivered, unreceived)
    }
}

/// The runtime's report of a group, with typed reads by [`StageId`]: what `CudaReport`
/// and `WgpuReport` wrap.
#[derive(Clone, Debug)]
pub(crate) struct GpuReport {
    /// The runtime's report.
    pub(crate) report: GroupReport,
    /// The id of the group it reports on.
    group_id: u64,
    /// The backend as messages name it ([`RawGroup::LABEL`]).
    label: &'static str,
}

impl GpuReport {
    /// The report `report` of the group with id `group_id`, on backend `G`.
    fn new<G: RawGroup>(report: GroupReport, group_id: u64) -> Self {
        Self {
            report,
            group_id,
            label: G::LABEL,
        }
    }

    /// Writes the report as the struct `name` with fields `report` and `group_id`, as the
    /// public reports always did.
    pub(crate) fn fmt_as(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(name)
            .field("report", &self.report)
            .field("group_id", &self.group_id)
            .finish()
    }

    /// The report of the kernel of `stage`.
    ///
    /// # Panics
    /// When `stage` belongs to another group.
    pub(crate) fn kernel(&self, stage: StageId) -> &gyre_runtime::backend::group::KernelReport {
        assert_eq!(
            stage.group_id, self.group_id,
            "this stage belongs to another {} group",
            self.label
        );
        &self.report.kernels[stage.index]
    }
}

/// Implements [`RawGroup`] for runtime group `$group`, whose messages name it `$label`:
/// the methods both runtime groups have with the same signature forward to them; the
/// block gives `try_recv` and `wait_recv`, which differ.
macro_rules! impl_raw_group {
    ($group:ty, $label:literal, { $($recv:tt)* }) => {
        impl $crate::gpu_handle::RawGroup for $group {
            const LABEL: &'static str = $label;

            fn try_send(
                &self,
                k: usize,
                payload: &[u8],
            ) -> Result<(), ::gyre_runtime::backend::group::SendError> {
                <$group>::try_send(self, k, payload, [0, 0])
            }

            fn send(
                &self,
                k: usize,
                payload: &[u8],
                timeout: ::std::time::Duration,
            ) -> Result<(), ::gyre_runtime::backend::group::SendError> {
                <$group>::send(self, k, payload, [0, 0], timeout)
            }

            fn state(&self, k: usize) -> ::gyre_runtime::abi::State {
                <$group>::state(self, k)
            }

            fn fault(&self) -> Option<String> {
                <$group>::fault(self)
            }

            fn activate_all(&self) -> Result<(), ::gyre_runtime::backend::CommandError> {
                <$group>::activate_all(self)
            }

            fn drain(
                &self,
                timeout: ::std::time::Duration,
            ) -> ::gyre_runtime::backend::group::GroupReport {
                <$group>::drain(self, timeout)
            }

            fn terminate(&self) -> ::gyre_runtime::backend::group::GroupReport {
                <$group>::terminate(self)
            }

            $($recv)*
        }
    };
}
pub(crate) use impl_raw_group;
