//! CUDA groups: kernels resident together on a GPU as one cooperative grid (feature
//! `cuda`).
//!
//! On CUDA the unit of launch is a *group*: every kernel of a group runs in the same
//! cooperative grid (one block per kernel), so that routes between them stay on the
//! device and every kernel is guaranteed to make progress. A CUDA group is therefore
//! declared explicitly, launched as a whole and stopped as a whole:
//!
//! 1. build a [`Runtime`] with [`crate::Backend::Cuda`] (a GPU) or
//!    [`crate::Backend::CudaEmulated`] (the host emulation, for developing handlers
//!    without a GPU);
//! 2. [`Runtime::cuda_group`] → [`CudaGroupBuilder`]: [`add`](CudaGroupBuilder::add)
//!    each [`CudaKernel`] (a CUDA C handler or a [`Builtin`]), getting a typed
//!    [`CudaStage`]; [`route`](CudaGroupBuilder::route) ports to other stages (type
//!    checked at compile time); unrouted ports go to the host output;
//! 3. [`launch`](CudaGroupBuilder::launch): checks, compiles (a compiler error comes back
//!    as [`Error::Compile`] with the log), allocates and starts the grid →
//!    [`CudaGroupHandle`];
//! 4. [`activate`](CudaGroupHandle::activate), [`send`](CudaGroupHandle::send) and
//!    [`recv`](CudaGroupHandle::recv) typed messages per stage;
//! 5. [`drain`](CudaGroupHandle::drain) or [`terminate`](CudaGroupHandle::terminate):
//!    a [`CudaReport`] with everything that was not delivered.
//!
//! The same runtime keeps its CPU worker pool: [`Runtime::launch`] and
//! [`Runtime::group`] kernels run there, next to the CUDA groups.
//! [`Runtime::shutdown`] stops the CPU kernels only; a CUDA group is stopped by its
//! handle (dropping the handle terminates it and discards what it held, with a warning
//! that counts it: see [`CudaGroupHandle`]).
//! Likewise [`Runtime::health`], [`Runtime::prometheus_text`] and
//! [`Runtime::take_dead_letters`] cover the CPU kernels; a CUDA group answers for its own
//! kernels through [`CudaGroupHandle::health`], [`CudaGroupHandle::counters`] and
//! [`CudaGroupHandle::take_dead_letters`].
//!
//! ```
//! use gyre::cuda::{Builtin, CudaKernel, Record};
//! use gyre::{Backend, Runtime};
//! use std::time::Duration;
//!
//! let runtime = match Runtime::builder().backend(Backend::CudaEmulated).build() {
//!     Ok(runtime) => runtime,
//!     Err(e) => {
//!         eprintln!("skipped: {e}");
//!         return Ok(());
//!     }
//! };
//! let mut g = runtime.cuda_group("scale-then-keep")?;
//! let scale = g.add(CudaKernel::<Record, Record>::builtin("scale", Builtin::Affine { a: 2.0, b: 0.0 }));
//! let keep = g.add(CudaKernel::<Record, Record>::builtin("keep", Builtin::Filter { lo: 0.0, hi: 10.0 }));
//! g.route(&scale, 0, &keep);
//! let group = g.launch()?;
//! group.activate()?;
//! for i in 0..8u32 {
//!     group.send(&scale, Record { key: 0, seq: i, value: i as f32, aux: 0 })?;
//! }
//! let report = group.drain(Duration::from_secs(20));
//! assert_eq!(report.undelivered_count(), 0);
//! let mut kept = Vec::new();
//! while let Some(r) = group.try_recv(&keep).ok().flatten() {
//!     kept.push(r.value);
//! }
//! assert_eq!(kept, [0.0, 2.0, 4.0, 6.0, 8.0]);
//! # Ok::<(), gyre::Error>(())
//! ```

mod report;
mod spec;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use gyre_runtime::abi::State;
use gyre_runtime::backend::cuda::{
    CudaGroup, Device, DeviceError, GroupError, GroupPlan, KernelPlan, Route, Target,
};
use gyre_runtime::control::Counters;
use gyre_runtime::health::{Health, HealthPolicy};
use gyre_runtime::routing::DeadLetter;
use gyre_runtime::wait::Backoff;

pub use gyre_runtime::backend::cuda::group::{KernelReport, Message as SlotMessage};
pub use gyre_runtime::backend::cuda::GroupReport;
pub use gyre_runtime::builtins::{Aggregate, Builtin, Histogram, Record};
pub use report::CudaReport;
pub use spec::CudaKernel;

use crate::gpu_common;
use crate::gpu_handle::{self, GroupCore, StageId};
use crate::spec::Message;
use crate::{Error, Runtime, SendError};

/// A kernel of a CUDA group: its index in the group, typed by its messages. Copy it
/// freely; it is only valid with the group it was added to.
pub struct CudaStage<In, Out> {
    id: StageId,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> Clone for CudaStage<In, Out> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<In, Out> Copy for CudaStage<In, Out> {}

impl<In, Out> std::fmt::Debug for CudaStage<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaStage")
            .field("index", &self.id.index)
            .finish_non_exhaustive()
    }
}

impl<In, Out> CudaStage<In, Out> {
    /// The kernel's index in its group (block `index` of the grid runs it).
    pub fn index(&self) -> usize {
        self.id.index
    }
}

impl Runtime {
    /// A builder for a group of CUDA kernels, launched together as one cooperative grid
    /// on the runtime's CUDA device (see [`crate::cuda`]).
    ///
    /// ```
    /// # use gyre::{Backend, Runtime};
    /// # let Ok(runtime) = Runtime::builder().backend(Backend::CudaEmulated).build() else { return Ok(()) };
    /// let g = runtime.cuda_group("pipeline")?;
    /// # Ok::<(), gyre::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::BackendUnavailable`] when the runtime was not built with
    /// [`crate::Backend::Cuda`] or [`crate::Backend::CudaEmulated`].
    pub fn cuda_group(&self, name: impl Into<String>) -> Result<CudaGroupBuilder, Error> {
        let device = self.cuda.clone().ok_or_else(|| Error::BackendUnavailable {
            backend: "cuda",
            reason: format!(
                "this runtime was built with the {} backend, which has no CUDA device: build \
                 it with `.backend(Backend::Cuda)` (a GPU) or `.backend(Backend::CudaEmulated)` \
                 (the host emulation) to launch CUDA groups",
                self.backend_name()
            ),
        })?;
        let threads = if device.is_emulated() { 4 } else { 64 };
        Ok(CudaGroupBuilder {
            device,
            name: name.into(),
            group_id: gpu_common::next_group_id(),
            foreign: false,
            kernels: Vec::new(),
            routes: Vec::new(),
            threads,
            command_timeout: self.command_timeout,
        })
    }
}

/// Builds a CUDA group: add kernels, route their ports, launch (see [`crate::cuda`]).
pub struct CudaGroupBuilder {
    device: Arc<dyn Device>,
    name: String,
    group_id: u64,
    /// Whether a stage of another group was passed in ([`Error::ForeignStage`] at launch).
    foreign: bool,
    /// Each kernel's plan, or why it cannot be planned (reported at launch).
    kernels: Vec<Result<KernelPlan, Error>>,
    routes: Vec<Route>,
    threads: u32,
    command_timeout: Duration,
}

impl std::fmt::Debug for CudaGroupBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaGroupBuilder")
            .field("name", &self.name)
            .field("device", &self.device.describe())
            .field("kernels", &self.kernels.len())
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl CudaGroupBuilder {
    /// Adds a kernel; block `index` of the grid will run it. A kernel whose types or
    /// built-in parameters are invalid makes [`CudaGroupBuilder::launch`] fail.
    ///
    /// ```
    /// # use gyre::cuda::{Builtin, CudaKernel, Record};
    /// # use gyre::{Backend, Runtime};
    /// # let Ok(runtime) = Runtime::builder().backend(Backend::CudaEmulated).build() else { return Ok(()) };
    /// let mut g = runtime.cuda_group("one")?;
    /// let stage = g.add(CudaKernel::<Record, Record>::builtin("pass", Builtin::Gather));
    /// assert_eq!(stage.index(), 0);
    /// # Ok::<(), gyre::Error>(())
    /// ```
    pub fn add<In: Message, Out: Message>(
        &mut self,
        kernel: CudaKernel<In, Out>,
    ) -> CudaStage<In, Out> {
        self.kernels.push(kernel.plan());
        CudaStage {
            id: StageId {
                index: self.kernels.len() - 1,
                group_id: self.group_id,
            },
            _types: PhantomData,
        }
    }

    /// Routes output port `port` of `from` to the inbox of `to`, through a ring in
    /// device memory. `from`'s output type must be `to`'s input type.
    ///
    /// ```
    /// # use gyre::cuda::{Builtin, CudaKernel, Record};
    /// # use gyre::{Backend, Runtime};
    /// # let Ok(runtime) = Runtime::builder().backend(Backend::CudaEmulated).build() else { return Ok(()) };
    /// let mut g = runtime.cuda_group("two")?;
    /// let a = g.add(CudaKernel::<Record, Record>::builtin("a", Builtin::Gather));
    /// let b = g.add(CudaKernel::<Record, Record>::builtin("b", Builtin::Gather));
    /// g.route(&a, 0, &b);
    /// # Ok::<(), gyre::Error>(())
    /// ```
    ///
    /// A stage of another group makes the launch fail with [`Error::ForeignStage`].
    pub fn route<A, B, C>(
        &mut self,
        from: &CudaStage<A, B>,
        port: u32,
        to: &CudaStage<B, C>,
    ) -> &mut Self {
        if !(self.owns(from.id) & self.owns(to.id)) {
            return self;
        }
        self.routes.push(Route {
            from: from.id.index,
            port,
            to: Target::Kernel(to.id.index),
        });
        self
    }

    /// Sends what `stage` emits to port `port` to the dead letters
    /// ([`CudaGroupHandle::take_dead_letters`]).
    ///
    /// ```
    /// # use gyre::cuda::{Builtin, CudaKernel, Record};
    /// # use gyre::{Backend, Runtime};
    /// # let Ok(runtime) = Runtime::builder().backend(Backend::CudaEmulated).build() else { return Ok(()) };
    /// let mut g = runtime.cuda_group("split")?;
    /// let split = g.add(CudaKernel::<Record, Record>::builtin("split", Builtin::Scatter { ports: 2 }));
    /// g.to_dead_letters(&split, 1);
    /// # Ok::<(), gyre::Error>(())
    /// ```
    ///
    /// A stage of another group makes the launch fail with [`Error::ForeignStage`].
    pub fn to_dead_letters<In, Out>(&mut self, stage: &CudaStage<In, Out>, port: u32) -> &mut Self {
        if !self.owns(stage.id) {
            return self;
        }
        self.routes.push(Route {
            from: stage.id.index,
            port,
            to: Target::DeadLetters,
        });
        self
    }

    /// Threads per block, 1 to 256: each kernel handles up to this many messages at
    /// once. Default 64 on a GPU, 4 under emulation (where each thread is a host thread).
    ///
    /// ```
    /// # use gyre::{Backend, Runtime};
    /// # let Ok(runtime) = Runtime::builder().backend(Backend::CudaEmulated).build() else { return Ok(()) };
    /// let mut g = runtime.cuda_group("narrow")?;
    /// g.threads(2);
    /// # Ok::<(), gyre::Error>(())
    /// ```
    pub fn threads(&mut self, threads: u32) -> &mut Self {
        self.threads = threads;
        self
    }

    /// Whether this builder made the stage `id`; remembers it when not, for `launch`.
    fn owns(&mut self, id: StageId) -> bool {
        let own = id.group_id == self.group_id;
        self.foreign |= !own;
        own
    }

    /// Checks the group, compiles its kernels into one module, allocates its rings and
    /// launches the grid. Its kernels start in state `Launched` (resident, queueing
    /// messages, not processing them) until [`CudaGroupHandle::activate`].
    ///
    /// ```
    /// # use gyre::cuda::{Builtin, CudaKernel, Record};
    /// # use gyre::{Backend, Runtime};
    /// # let Ok(runtime) = Runtime::builder().backend(Backend::CudaEmulated).build() else { return Ok(()) };
    /// let mut g = runtime.cuda_group("one")?;
    /// let stage = g.add(CudaKernel::<Record, Record>::builtin("pass", Builtin::Gather));
    /// let group = g.launch()?;
    /// assert_eq!(group.state(&stage), gyre::State::Launched);
    /// # Ok::<(), gyre::Error>(())
    /// ```
    ///
    /// # Errors
    /// - [`Error::ForeignStage`] when a route was given a stage of another group;
    /// - [`Error::Compile`] when a handler does not compile: the message has the
    ///   compiler's log, naming `FUNCTION.cu` and the line;
    /// - [`Error::MessageAlignment`] or [`Error::Launch`] for message types that do not
    ///   fit a slot or a built-in, invalid built-in parameters, or a group that cannot
    ///   work (unknown ports, a cycle, too many kernels for the device, ...): the message
    ///   says what to change;
    /// - [`Error::BackendUnavailable`] when the device went away.
    pub fn launch(self) -> Result<CudaGroupHandle, Error> {
        if self.foreign {
            return Err(Error::ForeignStage { group: self.name });
        }
        let kernels = self.kernels.into_iter().collect::<Result<Vec<_>, _>>()?;
        let names = kernels.iter().map(|k| k.name.clone()).collect();
        let plan = GroupPlan {
            name: self.name.clone(),
            kernels,
            routes: self.routes,
            threads: self.threads,
        };
        let backend = if self.device.is_emulated() {
            "cuda-emulated"
        } else {
            "cuda"
        };
        let group =
            CudaGroup::launch(self.device, plan, self.command_timeout).map_err(|e| match e {
                GroupError::Device(DeviceError::Compile { compiler, log }) => {
                    Error::Compile { compiler, log }
                }
                GroupError::Device(DeviceError::Unavailable(reason)) => {
                    Error::BackendUnavailable { backend, reason }
                }
                invalid @ GroupError::Invalid { .. } => Error::Launch(format!("CUDA {invalid}")),
                other => Error::Launch(format!("CUDA group `{}`: {other}", self.name)),
            })?;
        Ok(CudaGroupHandle {
            core: GroupCore {
                group,
                name: self.name,
                names,
                group_id: self.group_id,
                command_timeout: self.command_timeout,
                terminated: std::sync::atomic::AtomicBool::new(false),
            },
        })
    }
}

/// A launched CUDA group: typed sending and receiving per stage, lifecycle, reports.
///
/// Sends, receives and lifecycle calls take `&self` and may come from several threads.
///
/// # Dropping the handle
///
/// Dropping the handle terminates the group, within the runtime's command timeout (plus
/// the read-back of its rings), like [`CudaGroupHandle::terminate`]. What the group still
/// held is then discarded, never silently: a `tracing` warning counts every message left
/// in its rings (`undelivered`) and every output for the host not yet received
/// (`unreceived`), and the group drops a dead letter nobody took with a warning too. To
/// lose nothing, drain or terminate the group first, keep the [`CudaReport`], and receive
/// its outputs until [`Error::Terminated`].
pub struct CudaGroupHandle {
    core: GroupCore<CudaGroup>,
}

impl Drop for CudaGroupHandle {
    fn drop(&mut self) {
        self.core.stop_on_drop();
    }
}

impl std::fmt::Debug for CudaGroupHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaGroupHandle")
            .field("group", &self.core.group)
            .finish_non_exhaustive()
    }
}

impl CudaGroupHandle {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The device the group runs on (`"emulated (g++)"`, or the GPU's name).
    pub fn device_description(&self) -> String {
        self.core.group.device().describe()
    }

    /// Activates every kernel (downstream first, so none emits to a kernel not yet
    /// processing). Messages sent before are processed in order.
    ///
    /// # Errors
    /// [`Error::Lifecycle`] when a kernel is draining or stopped, [`Error::Unresponsive`]
    /// when one does not acknowledge within the runtime's command timeout,
    /// [`Error::Faulted`] when the group faulted.
    pub fn activate(&self) -> Result<(), Error> {
        self.core.activate()
    }

    /// Sends `message` to the host inbox of `stage`, waiting up to the runtime's command
    /// timeout while it is full.
    ///
    /// # Errors
    /// With the message handed back: [`Error::Timeout`] when no room freed in time;
    /// [`Error::Draining`], [`Error::Terminated`] or [`Error::Faulted`] when the kernel
    /// takes no more messages.
    /// [`Error::ForeignStage`] (the message handed back) for a stage of another group.
    pub fn send<In: Message, Out>(
        &self,
        stage: &CudaStage<In, Out>,
        message: In,
    ) -> Result<(), SendError<In>> {
        self.core
            .send(stage.id, message, Some(self.core.command_timeout))
    }

    /// Sends, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// As [`CudaGroupHandle::send`].
    pub fn send_timeout<In: Message, Out>(
        &self,
        stage: &CudaStage<In, Out>,
        message: In,
        timeout: Duration,
    ) -> Result<(), SendError<In>> {
        self.core.send(stage.id, message, Some(timeout))
    }

    /// Sends without waiting.
    ///
    /// # Errors
    /// [`Error::Full`] when the inbox is full, or as [`CudaGroupHandle::send`]; the
    /// message comes back.
    pub fn try_send<In: Message, Out>(
        &self,
        stage: &CudaStage<In, Out>,
        message: In,
    ) -> Result<(), SendError<In>> {
        self.core.send(stage.id, message, None)
    }

    /// Receives the next output `stage` sent to the host, waiting for one.
    ///
    /// # Errors
    /// [`Error::Terminated`] (or [`Error::Faulted`]) when the kernel stopped and every
    /// output it made was received.
    /// [`Error::ForeignStage`] for a stage of another group.
    pub fn recv<In, Out: Message>(&self, stage: &CudaStage<In, Out>) -> Result<Out, Error> {
        self.core.recv(stage.id, None)
    }

    /// Receives, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] when nothing came in time, or as [`CudaGroupHandle::recv`].
    pub fn recv_timeout<In, Out: Message>(
        &self,
        stage: &CudaStage<In, Out>,
        timeout: Duration,
    ) -> Result<Out, Error> {
        self.core.recv(stage.id, Some(timeout))
    }

    /// Receives without waiting; `Ok(None)` when nothing is there yet.
    ///
    /// # Errors
    /// As [`CudaGroupHandle::recv`].
    pub fn try_recv<In, Out: Message>(
        &self,
        stage: &CudaStage<In, Out>,
    ) -> Result<Option<Out>, Error> {
        self.core.try_recv(stage.id)
    }

    /// Refuses new messages (senders get [`Error::Draining`]), then drains the kernels
    /// upstream first: each processes everything in its inboxes and delivers its
    /// outputs, then terminates. Outputs for the host stay receivable. If `timeout`
    /// passes, the rest is terminated and the report says `timed_out`.
    pub fn drain(&self, timeout: Duration) -> CudaReport {
        CudaReport(self.core.drain(timeout))
    }

    /// Terminates every kernel after the batch in hand; every message still in a ring
    /// comes back in the report. Outputs already in a host output stay receivable.
    pub fn terminate(&self) -> CudaReport {
        CudaReport(self.core.terminate())
    }

    /// The health of the kernel of `stage` under the default [`HealthPolicy`]: faulted,
    /// or its heartbeat standing still while messages wait, is unhealthy. The watchdog
    /// compares heartbeats between calls: call it periodically.
    ///
    /// # Panics
    /// When `stage` belongs to another group.
    pub fn health<In, Out>(&self, stage: &CudaStage<In, Out>) -> Health {
        self.health_with(stage, &HealthPolicy::default())
    }

    /// The health of the kernel of `stage` under `policy` (see
    /// [`CudaGroupHandle::health`]).
    ///
    /// # Panics
    /// When `stage` belongs to another group.
    pub fn health_with<In, Out>(
        &self,
        stage: &CudaStage<In, Out>,
        policy: &HealthPolicy,
    ) -> Health {
        self.core.group.health(self.core.index(stage.id), policy)
    }

    /// The state of the kernel of `stage`, as it last acknowledged it.
    ///
    /// # Panics
    /// When `stage` belongs to another group.
    pub fn state<In, Out>(&self, stage: &CudaStage<In, Out>) -> State {
        self.core.group.state(self.core.index(stage.id))
    }

    /// The counters of the kernel of `stage` (received, processed, emitted, stalls,
    /// errors), read from its control block.
    ///
    /// # Panics
    /// When `stage` belongs to another group.
    pub fn counters<In, Out>(&self, stage: &CudaStage<In, Out>) -> Counters<u64> {
        self.core.group.counters(self.core.index(stage.id))
    }

    /// The device error that ended the group, if one did.
    pub fn fault(&self) -> Option<String> {
        self.core.group.fault()
    }

    /// Takes every dead letter of the group so far: messages a handler returned an
    /// error for (with the code), and messages emitted to a port bound to the dead
    /// letters. Oldest first per kernel.
    pub fn take_dead_letters(&self) -> Vec<DeadLetter> {
        self.core.group.take_dead_letters()
    }
}

gpu_handle::impl_raw_group!(CudaGroup, "CUDA", {
    fn try_recv_with<R>(&self, k: usize, f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>, String> {
        match CudaGroup::try_recv_with(self, k, |_, _, payload| f(payload)) {
            Some(value) => Ok(Some(value)),
            None => self.fault().map_or(Ok(None), Err),
        }
    }

    fn wait_recv(&self, _k: usize, _left: Option<Duration>, backoff: &mut Backoff) {
        // A host waiting on a device has nothing to wake it but polling.
        if !backoff.snooze() {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    const DOUBLE: &str =
        "__device__ int double_u32(gyre_ctx *ctx, const void *msg, gyre_u32 bytes) {\n\
                          \x20   gyre_u32 x = *(const gyre_u32 *)msg * 2u;\n\
                          \x20   return gyre_emit(ctx, 0u, &x, sizeof x);\n}\n";

    /// Dropping a handle that holds 32 messages (outputs not received, inputs left in the
    /// rings) counts all 32 in its warning, and stops the group.
    #[test]
    fn a_dropped_handle_counts_every_message_it_discards() {
        let runtime = match Runtime::builder()
            .backend(crate::Backend::CudaEmulated)
            .workers(1)
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => panic!("the CUDA emulation must run here: {e}"),
        };
        let mut g = runtime.cuda_group("dropped").unwrap();
        let double =
            g.add(CudaKernel::<u32, u32>::source("double", "double_u32", DOUBLE).capacity(16));
        let group = g.launch().unwrap();
        group.activate().unwrap();
        // 16 go through to the host output (never received), then 16 more wait in the
        // inbox while the kernel is paused.
        for i in 0..16u32 {
            group.send(&double, i).unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while group.counters(&double).processed < 16 {
            assert!(
                std::time::Instant::now() < deadline,
                "the kernel made no progress"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        group
            .core
            .group
            .command(0, gyre_runtime::abi::Command::Pause)
            .unwrap();
        for i in 16..32u32 {
            group.send(&double, i).unwrap();
        }
        let (undelivered, unreceived) = group.core.stop_on_drop();
        assert_eq!((undelivered, unreceived), (16, 16));
        assert_eq!(group.state(&double), State::Terminated);
        // Nothing is counted twice: a second drop path finds nothing left.
        assert_eq!(group.core.stop_on_drop(), (0, 0));
    }
}
