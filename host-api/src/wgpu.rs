//! wgpu groups: kernels with resident state on any Vulkan/Metal/DX12 adapter, run in
//! ticks (feature `wgpu`).
//!
//! WebGPU gives no forward-progress guarantee between workgroups and no host access to
//! a buffer the device is using, so a kernel cannot spin on the device the way a CUDA
//! kernel does. A wgpu group keeps its **state resident** (every ring, control block and
//! handler state lives in device memory for the group's whole life) and runs in
//! **ticks**: one submission uploads what the host sent, runs each kernel of the group in
//! topological order (each handles up to its quantum of messages, in order, and writes to
//! downstream rings or its host output), and copies the outputs back. Ticks run back to
//! back while work is pending and stop when the group is idle. So the unit of launch is
//! again a *group*: its kernels share one submission, routes between them stay on the
//! device, and it is launched, drained and terminated as a whole:
//!
//! 1. build a [`Runtime`] with [`crate::Backend::Wgpu`] (a hardware adapter) or
//!    [`crate::Backend::WgpuSoftware`] (also a software adapter such as Mesa's lavapipe,
//!    for developing handlers without a GPU);
//! 2. [`Runtime::wgpu_group`] → [`WgpuGroupBuilder`]: [`add`](WgpuGroupBuilder::add)
//!    each [`WgpuKernel`] (a WGSL handler or a [`Builtin`]), getting a typed
//!    [`WgpuStage`]; [`route`](WgpuGroupBuilder::route) ports to other stages (type
//!    checked at compile time); unrouted ports go to the host output;
//! 3. [`launch`](WgpuGroupBuilder::launch): checks, validates the group's WGSL with naga
//!    (an error comes back as [`Error::Compile`] naming the handler's file and line),
//!    allocates and starts the group's ticker → [`WgpuGroupHandle`];
//! 4. [`activate`](WgpuGroupHandle::activate), [`send`](WgpuGroupHandle::send) and
//!    [`recv`](WgpuGroupHandle::recv) typed messages per stage;
//! 5. [`drain`](WgpuGroupHandle::drain) or [`terminate`](WgpuGroupHandle::terminate):
//!    a [`WgpuReport`] with everything that was not delivered.
//!
//! Routes form no cycle (a tick runs kernels in topological order). The same runtime
//! keeps its CPU worker pool: [`Runtime::launch`] and [`Runtime::group`] kernels run
//! there, next to the wgpu groups. [`Runtime::shutdown`], [`Runtime::health`],
//! [`Runtime::prometheus_text`] and [`Runtime::take_dead_letters`] cover the CPU kernels;
//! a wgpu group is stopped by its handle (dropping the handle terminates it, discarding
//! what it held, with a warning) and answers for its own kernels through
//! [`WgpuGroupHandle::health`], [`WgpuGroupHandle::counters`] and
//! [`WgpuGroupHandle::take_dead_letters`].
//!
//! ```
//! use gyre::wgpu::{Builtin, Record, WgpuKernel};
//! use gyre::{Backend, Runtime};
//! use std::time::Duration;
//!
//! let runtime = match Runtime::builder().backend(Backend::WgpuSoftware).build() {
//!     Ok(runtime) => runtime,
//!     Err(e) => {
//!         eprintln!("skipped: {e}");
//!         return Ok(());
//!     }
//! };
//! let mut g = runtime.wgpu_group("scale-then-keep")?;
//! let scale = g.add(WgpuKernel::<Record, Record>::builtin("scale", Builtin::Affine { a: 2.0, b: 0.0 }));
//! let keep = g.add(WgpuKernel::<Record, Record>::builtin("keep", Builtin::Filter { lo: 0.0, hi: 10.0 }));
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
use gyre_runtime::backend::group::{Route, Target};
use gyre_runtime::backend::wgpu::adapter::GpuContext;
use gyre_runtime::backend::wgpu::group::{WgpuError, WgpuGroup, WgpuGroupPlan, WgpuKernelPlan};
use gyre_runtime::control::Counters;
use gyre_runtime::health::{Health, HealthPolicy};
use gyre_runtime::routing::DeadLetter;
use gyre_runtime::wait::Backoff;

pub use gyre_runtime::backend::group::{GroupReport, KernelReport, Message as SlotMessage};
pub use gyre_runtime::builtins::{Aggregate, Builtin, Histogram, Record};
pub use report::WgpuReport;
pub use spec::WgpuKernel;

use crate::gpu_common;
use crate::gpu_handle::{self, GroupCore, StageId};
use crate::spec::Message;
use crate::{Error, Runtime, SendError};

/// The compiler [`Error::Compile`] names for WGSL that does not validate.
const COMPILER: &str = "naga (WGSL)";

/// Longest a blocking receive waits for a tick before it checks whether the kernel
/// stopped: an idle group runs no ticks, so nothing else would wake it.
const RECV_SLICE: Duration = Duration::from_millis(20);

/// A kernel of a wgpu group: its index in the group, typed by its messages. Copy it
/// freely; it is only valid with the group it was added to.
pub struct WgpuStage<In, Out> {
    id: StageId,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> Clone for WgpuStage<In, Out> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<In, Out> Copy for WgpuStage<In, Out> {}

impl<In, Out> std::fmt::Debug for WgpuStage<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuStage")
            .field("index", &self.id.index)
            .finish_non_exhaustive()
    }
}

impl<In, Out> WgpuStage<In, Out> {
    /// The kernel's index in its group (each tick dispatches the group's kernels in
    /// topological order, not in index order).
    pub fn index(&self) -> usize {
        self.id.index
    }
}

impl Runtime {
    /// A builder for a group of wgpu kernels, launched together with resident state and
    /// run in ticks on the runtime's wgpu adapter (see [`crate::wgpu`]).
    ///
    /// ```
    /// # use gyre::{Backend, Runtime};
    /// # let Ok(runtime) = Runtime::builder().backend(Backend::WgpuSoftware).build() else { return Ok(()) };
    /// let g = runtime.wgpu_group("pipeline")?;
    /// # Ok::<(), gyre::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::BackendUnavailable`] when the runtime was not built with
    /// [`crate::Backend::Wgpu`] or [`crate::Backend::WgpuSoftware`].
    pub fn wgpu_group(&self, name: impl Into<String>) -> Result<WgpuGroupBuilder, Error> {
        let gpu = self.wgpu.clone().ok_or_else(|| Error::BackendUnavailable {
            backend: "wgpu",
            reason: format!(
                "this runtime was built with the {} backend, which has no wgpu adapter: build \
                 it with `.backend(Backend::Wgpu)` (a GPU) or `.backend(Backend::WgpuSoftware)` \
                 (also a software adapter such as lavapipe) to launch wgpu groups",
                self.backend_name()
            ),
        })?;
        Ok(WgpuGroupBuilder {
            gpu,
            backend: self.backend_name(),
            name: name.into(),
            group_id: gpu_common::next_group_id(),
            foreign: false,
            kernels: Vec::new(),
            routes: Vec::new(),
            command_timeout: self.command_timeout,
        })
    }
}

/// Builds a wgpu group: add kernels, route their ports, launch (see [`crate::wgpu`]).
pub struct WgpuGroupBuilder {
    gpu: Arc<GpuContext>,
    backend: &'static str,
    name: String,
    group_id: u64,
    /// Whether a stage of another group was passed in ([`Error::ForeignStage`] at launch).
    foreign: bool,
    /// Each kernel's plan, or why it cannot be planned (reported at launch).
    kernels: Vec<Result<WgpuKernelPlan, Error>>,
    routes: Vec<Route>,
    command_timeout: Duration,
}

impl std::fmt::Debug for WgpuGroupBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuGroupBuilder")
            .field("name", &self.name)
            .field("adapter", &self.gpu.info.name)
            .field("kernels", &self.kernels.len())
            .finish_non_exhaustive()
    }
}

impl WgpuGroupBuilder {
    /// Adds a kernel. A kernel whose types or built-in parameters are invalid makes
    /// [`WgpuGroupBuilder::launch`] fail.
    ///
    /// ```
    /// # use gyre::wgpu::{Builtin, Record, WgpuKernel};
    /// # use gyre::{Backend, Runtime};
    /// # let Ok(runtime) = Runtime::builder().backend(Backend::WgpuSoftware).build() else { return Ok(()) };
    /// let mut g = runtime.wgpu_group("one")?;
    /// let stage = g.add(WgpuKernel::<Record, Record>::builtin("pass", Builtin::Gather));
    /// assert_eq!(stage.index(), 0);
    /// # Ok::<(), gyre::Error>(())
    /// ```
    pub fn add<In: Message, Out: Message>(
        &mut self,
        kernel: WgpuKernel<In, Out>,
    ) -> WgpuStage<In, Out> {
        self.kernels.push(kernel.plan());
        WgpuStage {
            id: StageId {
                index: self.kernels.len() - 1,
                group_id: self.group_id,
            },
            _types: PhantomData,
        }
    }

    /// Routes output port `port` of `from` to the inbox of `to`, through a ring in
    /// device memory. `from`'s output type must be `to`'s input type. Routes must form
    /// no cycle (checked at launch).
    ///
    /// ```
    /// # use gyre::wgpu::{Builtin, Record, WgpuKernel};
    /// # use gyre::{Backend, Runtime};
    /// # let Ok(runtime) = Runtime::builder().backend(Backend::WgpuSoftware).build() else { return Ok(()) };
    /// let mut g = runtime.wgpu_group("two")?;
    /// let a = g.add(WgpuKernel::<Record, Record>::builtin("a", Builtin::Gather));
    /// let b = g.add(WgpuKernel::<Record, Record>::builtin("b", Builtin::Gather));
    /// g.route(&a, 0, &b);
    /// # Ok::<(), gyre::Error>(())
    /// ```
    ///
    /// A stage of another group makes the launch fail with [`Error::ForeignStage`].
    pub fn route<A, B, C>(
        &mut self,
        from: &WgpuStage<A, B>,
        port: u32,
        to: &WgpuStage<B, C>,
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
    /// ([`WgpuGroupHandle::take_dead_letters`]).
    ///
    /// ```
    /// # use gyre::wgpu::{Builtin, Record, WgpuKernel};
    /// # use gyre::{Backend, Runtime};
    /// # let Ok(runtime) = Runtime::builder().backend(Backend::WgpuSoftware).build() else { return Ok(()) };
    /// let mut g = runtime.wgpu_group("split")?;
    /// let split = g.add(WgpuKernel::<Record, Record>::builtin("split", Builtin::Scatter { ports: 2 }));
    /// g.to_dead_letters(&split, 1);
    /// # Ok::<(), gyre::Error>(())
    /// ```
    ///
    /// A stage of another group makes the launch fail with [`Error::ForeignStage`].
    pub fn to_dead_letters<In, Out>(&mut self, stage: &WgpuStage<In, Out>, port: u32) -> &mut Self {
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

    /// Whether this builder made the stage `id`; remembers it when not, for `launch`.
    fn owns(&mut self, id: StageId) -> bool {
        let own = id.group_id == self.group_id;
        self.foreign |= !own;
        own
    }

    /// Checks the group, validates its WGSL (built-ins and handlers, in one module),
    /// allocates its rings and state in device memory and starts its ticker. Its kernels
    /// start in state `Launched` (resident, queueing messages, not processing them) until
    /// [`WgpuGroupHandle::activate`].
    ///
    /// ```
    /// # use gyre::wgpu::{Builtin, Record, WgpuKernel};
    /// # use gyre::{Backend, Runtime};
    /// # let Ok(runtime) = Runtime::builder().backend(Backend::WgpuSoftware).build() else { return Ok(()) };
    /// let mut g = runtime.wgpu_group("one")?;
    /// let stage = g.add(WgpuKernel::<Record, Record>::builtin("pass", Builtin::Gather));
    /// let group = g.launch()?;
    /// assert_eq!(group.state(&stage), gyre::State::Launched);
    /// # Ok::<(), gyre::Error>(())
    /// ```
    ///
    /// # Errors
    /// - [`Error::ForeignStage`] when a route was given a stage of another group;
    /// - [`Error::Compile`] (compiler `"naga (WGSL)"`) when a handler does not validate:
    ///   the message starts with `FUNCTION.wgsl:LINE: ` and has naga's report;
    /// - [`Error::MessageAlignment`] or [`Error::Launch`] for message types that do not
    ///   fit a slot or a built-in, invalid built-in parameters, or a group that cannot
    ///   work (unknown ports, a cycle, more memory than the adapter binds, ...): the
    ///   message says what to change;
    /// - [`Error::BackendUnavailable`] when the device was lost.
    pub fn launch(self) -> Result<WgpuGroupHandle, Error> {
        if self.foreign {
            return Err(Error::ForeignStage { group: self.name });
        }
        let kernels = self.kernels.into_iter().collect::<Result<Vec<_>, _>>()?;
        let names = kernels.iter().map(|k| k.name.clone()).collect();
        let plan = WgpuGroupPlan {
            name: self.name.clone(),
            kernels,
            routes: self.routes,
        };
        let gpu = Arc::clone(&self.gpu);
        let group =
            WgpuGroup::launch(self.gpu, plan, self.command_timeout).map_err(|e| match e {
                WgpuError::Shader(log) => Error::Compile {
                    compiler: COMPILER.to_owned(),
                    log,
                },
                WgpuError::Device(reason) => match gpu.lost() {
                    Some(lost) => Error::BackendUnavailable {
                        backend: self.backend,
                        reason: format!("the wgpu device was lost ({lost}): {reason}"),
                    },
                    None => Error::Launch(format!("wgpu group `{}`: {reason}", self.name)),
                },
                invalid @ WgpuError::Invalid { .. } => Error::Launch(format!("wgpu {invalid}")),
            })?;
        Ok(WgpuGroupHandle {
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

/// A launched wgpu group: typed sending and receiving per stage, lifecycle, reports.
///
/// Sends, receives and lifecycle calls take `&self` and may come from several threads.
/// Each send wakes the group's ticker; commands (activate, drain, terminate) apply at
/// the start of the next tick. Dropping the handle terminates the group within the
/// command timeout; what it still held is discarded with a warning that counts every
/// message left in its rings and every output not yet received: drain or terminate it
/// first to get the [`WgpuReport`], and receive its outputs.
pub struct WgpuGroupHandle {
    core: GroupCore<WgpuGroup>,
}

/// Terminates the group and warns, counting them, about the messages it discards (as
/// for a CUDA group handle).
impl Drop for WgpuGroupHandle {
    fn drop(&mut self) {
        self.core.stop_on_drop();
    }
}

impl std::fmt::Debug for WgpuGroupHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuGroupHandle")
            .field("group", &self.core.group)
            .finish_non_exhaustive()
    }
}

impl WgpuGroupHandle {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The adapter the group runs on (its name, type, API and driver).
    pub fn adapter(&self) -> &str {
        self.core.group.adapter()
    }

    /// Ticks (submissions) run so far: they run only while work is pending.
    pub fn ticks(&self) -> u64 {
        self.core.group.ticks()
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
        stage: &WgpuStage<In, Out>,
        message: In,
    ) -> Result<(), SendError<In>> {
        self.core
            .send(stage.id, message, Some(self.core.command_timeout))
    }

    /// Sends, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// As [`WgpuGroupHandle::send`].
    pub fn send_timeout<In: Message, Out>(
        &self,
        stage: &WgpuStage<In, Out>,
        message: In,
        timeout: Duration,
    ) -> Result<(), SendError<In>> {
        self.core.send(stage.id, message, Some(timeout))
    }

    /// Sends without waiting.
    ///
    /// # Errors
    /// [`Error::Full`] when the inbox is full, or as [`WgpuGroupHandle::send`]; the
    /// message comes back.
    pub fn try_send<In: Message, Out>(
        &self,
        stage: &WgpuStage<In, Out>,
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
    pub fn recv<In, Out: Message>(&self, stage: &WgpuStage<In, Out>) -> Result<Out, Error> {
        self.core.recv(stage.id, None)
    }

    /// Receives, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] when nothing came in time, or as [`WgpuGroupHandle::recv`].
    pub fn recv_timeout<In, Out: Message>(
        &self,
        stage: &WgpuStage<In, Out>,
        timeout: Duration,
    ) -> Result<Out, Error> {
        self.core.recv(stage.id, Some(timeout))
    }

    /// Receives without waiting; `Ok(None)` when nothing is there yet.
    ///
    /// # Errors
    /// As [`WgpuGroupHandle::recv`].
    pub fn try_recv<In, Out: Message>(
        &self,
        stage: &WgpuStage<In, Out>,
    ) -> Result<Option<Out>, Error> {
        self.core.try_recv(stage.id)
    }

    /// Refuses new messages (senders get [`Error::Draining`]), then drains the kernels
    /// upstream first: each processes everything in its inboxes and delivers its
    /// outputs, then terminates. Outputs for the host stay receivable. If `timeout`
    /// passes, the rest is terminated and the report says `timed_out`.
    ///
    /// A message is handed back once, ever: only the first stop of the group (a drain,
    /// a terminate, or dropping the handle) hands back what is undelivered; every later
    /// stop returns the final states and counters with nothing undelivered. Stops from
    /// several threads at once serialise, so each message is in exactly one report.
    pub fn drain(&self, timeout: Duration) -> WgpuReport {
        WgpuReport(self.core.drain(timeout))
    }

    /// Terminates every kernel at the next tick; every message still in a ring comes
    /// back in the report. Outputs already in a host output stay receivable. As with
    /// [`drain`](Self::drain), only the first stop hands messages back; a later one
    /// reports nothing undelivered.
    pub fn terminate(&self) -> WgpuReport {
        WgpuReport(self.core.terminate())
    }

    /// The health of the kernel of `stage` under the default [`HealthPolicy`]: faulted,
    /// or its heartbeat (bumped once per tick) standing still while messages wait, is
    /// unhealthy. The watchdog compares heartbeats between calls: call it periodically.
    ///
    /// # Panics
    /// When `stage` belongs to another group.
    pub fn health<In, Out>(&self, stage: &WgpuStage<In, Out>) -> Health {
        self.health_with(stage, &HealthPolicy::default())
    }

    /// The health of the kernel of `stage` under `policy` (see
    /// [`WgpuGroupHandle::health`]).
    ///
    /// # Panics
    /// When `stage` belongs to another group.
    pub fn health_with<In, Out>(
        &self,
        stage: &WgpuStage<In, Out>,
        policy: &HealthPolicy,
    ) -> Health {
        self.core.group.health(self.core.index(stage.id), policy)
    }

    /// The state of the kernel of `stage`, as the last tick copied it back.
    ///
    /// # Panics
    /// When `stage` belongs to another group.
    pub fn state<In, Out>(&self, stage: &WgpuStage<In, Out>) -> State {
        self.core.group.state(self.core.index(stage.id))
    }

    /// The counters of the kernel of `stage` (received, processed, emitted, stalls,
    /// errors), read from its control block as the last tick copied it back.
    ///
    /// # Panics
    /// When `stage` belongs to another group.
    pub fn counters<In, Out>(&self, stage: &WgpuStage<In, Out>) -> Counters<u64> {
        self.core.group.counters(self.core.index(stage.id))
    }

    /// The device error that ended the group (a lost device, a failed submission), if
    /// one did.
    pub fn fault(&self) -> Option<String> {
        self.core.group.fault()
    }

    /// Takes every dead letter of the group so far: messages a handler returned an
    /// error for (with the code), messages emitted to a port bound to the dead letters,
    /// and emits that found their downstream kernel stopped.
    pub fn take_dead_letters(&self) -> Vec<DeadLetter> {
        self.core.group.take_dead_letters()
    }
}

gpu_handle::impl_raw_group!(WgpuGroup, "wgpu", {
    fn try_recv_with<R>(&self, k: usize, f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>, String> {
        // A fault shows in the kernel's state, which the typed receive checks.
        Ok(WgpuGroup::try_recv_with(self, k, |_, _, payload| {
            f(payload)
        }))
    }

    fn wait_recv(&self, k: usize, left: Option<Duration>, _backoff: &mut Backoff) {
        // Wakes at the next tick that brings an output or a fault; the next try takes it.
        let slice = left.map_or(RECV_SLICE, |left| left.min(RECV_SLICE));
        WgpuGroup::wait_for_output(self, k, slice);
    }
});
