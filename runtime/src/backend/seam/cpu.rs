//! The CPU side of the seam: what the public crate may do with the CPU backend, as a
//! few opaque handles over its internals.
//!
//! A device backend is reached through [`DeviceGroup`](super::DeviceGroup), a trait
//! object, because a device runs a group as one unit and the call into it is never the
//! hot path. The CPU backend runs each kernel as its own actor and its sends, receives
//! and emits are the hot path, so it is not a trait object: it is this facade, a set of
//! concrete handles whose methods are `#[inline]` delegations to the backend (no
//! indirect call, no extra reference count, no allocation per message). Where a method
//! means what a [`DeviceGroup`](super::DeviceGroup) method means it has that name
//! (`try_send`, `try_recv_with`, `state`, `fault`, `command`, `health`, ...), taking no
//! kernel index: a [`CpuKernel`] is one kernel.
//!
//! Nothing outside `gyre-runtime` sees the CPU backend's internals (its kernel core,
//! ports, rings, pool and supervisor): `backend::cpu` is private to the crate, and this
//! module is all of it that is public. Handlers are written against
//! [`crate::handler`].
//!
//! ```compile_fail
//! // The CPU backend's internals are private to gyre-runtime: this does not compile.
//! use gyre_runtime::backend::cpu::KernelCore;
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::abi::{Command, State};
use crate::backend::cpu as inner;
use crate::backend::{CommandError, DrainSummary};
use crate::control::Counters;
use crate::handler::Handler;
use crate::health::{Health, HealthPolicy};
use crate::metrics::{KernelSample, LatencySummary};
use crate::ring::SlotRef;
use crate::routing::{DeadLetters, RouteError};
use crate::wait::Signal;

pub use inner::{Budget, KeptMessage, KernelConfig, LaunchError, RecvFailure, SendFailure};

/// The CPU backend of a runtime: its worker pool, its dedicated threads and the kernels
/// launched on them. Dropping it stops its threads ([`CpuBackend::stop_threads`]).
#[derive(Debug)]
pub struct CpuBackend(inner::CpuBackend);

impl CpuBackend {
    /// Starts a backend with `workers` pool threads (at least one) and the given
    /// resource budget.
    pub fn with_budget(workers: usize, budget: Budget) -> Self {
        Self(inner::CpuBackend::with_budget(workers, budget))
    }

    /// Number of pool threads.
    #[inline]
    pub fn workers(&self) -> usize {
        self.0.workers()
    }

    /// Share of pool time spent running kernels since start, in `0..=1`.
    #[inline]
    pub fn utilisation(&self) -> f64 {
        self.0.utilisation()
    }

    /// Bytes of ring memory held by the kernels the backend holds (running, or stopped
    /// and still referenced).
    #[inline]
    pub fn ring_bytes_in_use(&self) -> usize {
        self.0.ring_bytes_in_use()
    }

    /// Threads the backend runs: pool workers and the threads of live dedicated kernels.
    #[inline]
    pub fn threads_in_use(&self) -> usize {
        self.0.threads_in_use()
    }

    /// Launches a kernel in state `Launched` (resident, not yet processing).
    ///
    /// # Errors
    /// [`LaunchError`]: too many kernels, over the runtime's budget, or no thread for a
    /// dedicated kernel.
    pub fn launch(
        &self,
        config: KernelConfig,
        handler: Box<dyn Handler>,
    ) -> Result<CpuKernel, LaunchError> {
        self.0.launch(config, handler).map(CpuKernel)
    }

    /// Restarts a terminated or faulted kernel with its configuration, handler and
    /// routes, in state `Launched`; a faulted kernel keeps the messages queued in its
    /// inbox, and the message its handler panicked on goes to the dead letters.
    ///
    /// # Errors
    /// [`CommandError`] when the kernel is not stopped, or it was abandoned with its
    /// handler still running.
    pub fn restart(&self, kernel: &CpuKernel) -> Result<(), CommandError> {
        self.0.restart(&kernel.0)
    }

    /// The runtime's dead-letter sink.
    #[inline]
    pub fn dead_letters(&self) -> &Arc<DeadLetters> {
        self.0.dead_letters()
    }

    /// The Prometheus text exposition of the backend and its kernels, with the samples
    /// of kernels of other backends (device groups of the same runtime) and their dead
    /// letters (`other_dead_letters`, ever kept) added: one exposition for the runtime.
    pub fn prometheus_text_with(
        &self,
        others: Vec<KernelSample>,
        other_dead_letters: u64,
    ) -> String {
        self.0.prometheus_text_with(others, other_dead_letters)
    }

    /// The kernels the metrics cover, in launch order: every kernel a handle still holds
    /// or that is not stopped (the ones [`Self::prometheus_text_with`] samples).
    pub fn held_kernels(&self) -> Vec<CpuKernel> {
        self.0.held_kernels().into_iter().map(CpuKernel).collect()
    }

    /// Every kernel the backend holds, in launch order.
    pub fn kernels(&self) -> Vec<CpuKernel> {
        self.0.kernels().into_iter().map(CpuKernel).collect()
    }

    /// Every kernel the backend holds, upstream before downstream along their routes
    /// (kernels in a cycle in launch order): the order to drain them in.
    pub fn kernels_in_drain_order(&self) -> Vec<CpuKernel> {
        self.0
            .kernels_in_drain_order()
            .into_iter()
            .map(CpuKernel)
            .collect()
    }

    /// Stops the supervisor: fault policies and watchdogs no longer act (a runtime that
    /// shuts down stops it first, so no kernel is restarted behind its back).
    pub fn stop_supervision(&self) {
        self.0.stop_supervision();
    }

    /// Stops the supervisor, the pool and the dedicated threads, and unbinds every
    /// route, in bounded time whatever a handler does (threads stuck in a handler are
    /// left behind after about half a second). From then on a terminate or drain of a
    /// live kernel is carried out by the calling host thread.
    pub fn stop_threads(&self) {
        self.0.stop_threads();
    }
}

/// One kernel of the CPU backend: a cheap handle (cloning it clones a reference), held
/// by every public handle of the kernel, by the backend and by upstream ports routed to
/// it.
#[derive(Clone)]
pub struct CpuKernel(Arc<inner::KernelCore>);

impl std::fmt::Debug for CpuKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a port of a CPU kernel sends what its handler emits there (see
/// [`CpuKernel::bind`]).
#[derive(Clone, Debug)]
pub enum CpuRoute {
    /// The kernel's own host-bound output (what receivers read).
    Host,
    /// The inbox of another CPU kernel.
    Kernel(CpuKernel),
    /// The runtime's dead-letter sink.
    DeadLetters,
}

impl CpuKernel {
    // ---- identity and status ----------------------------------------------------------

    /// The kernel's id: the sender id in the tags of what it emits.
    #[inline]
    pub fn kernel_id(&self) -> u32 {
        self.0.id()
    }

    /// The kernel's name.
    #[inline]
    pub fn name(&self) -> &str {
        &self.0.config().name
    }

    /// Bytes of an inbox slot, header included.
    #[inline]
    pub fn inbox_slot_bytes(&self) -> u32 {
        self.0.config().inbox.slot_bytes()
    }

    /// The state the kernel last published (`Terminated` once a terminate abandoned its
    /// handler).
    #[inline]
    pub fn state(&self) -> State {
        self.0.state()
    }

    /// The fault message, if the kernel faulted.
    #[inline]
    pub fn fault(&self) -> Option<String> {
        self.0.fault()
    }

    /// The kernel's counters, widened to u64.
    #[inline]
    pub fn counters(&self) -> Counters<u64> {
        self.0.counters()
    }

    /// Messages waiting in the inbox (a racy gauge).
    #[inline]
    pub fn inbox_len(&self) -> u32 {
        self.0.inbox_len()
    }

    /// Slots of one inbox ring (the shared ring; the lane has as many).
    #[inline]
    pub fn inbox_capacity(&self) -> u32 {
        self.0.config().inbox.capacity()
    }

    /// The heartbeat word.
    #[inline]
    pub fn heartbeat(&self) -> u32 {
        self.0.heartbeat()
    }

    /// A sample of the kernel for metrics and health.
    #[inline]
    pub fn sample(&self) -> KernelSample {
        self.0.sample()
    }

    /// The kernel's health under `policy`, judged against what the previous call saw.
    #[inline]
    pub fn health(&self, policy: &HealthPolicy) -> Health {
        self.0.health(policy)
    }

    /// Restarts done by the kernel's fault policy over its life.
    #[inline]
    pub fn restarts(&self) -> u64 {
        self.0.restarts()
    }

    /// Records one end-to-end latency (nanoseconds) of something that came back to the
    /// host through this kernel.
    #[inline]
    pub fn record_latency(&self, ns: u64) {
        self.0.record_latency(ns);
    }

    /// The latency histogram's quantiles, if anything was recorded.
    #[inline]
    pub fn latency(&self) -> Option<LatencySummary> {
        self.0.latency()
    }

    /// Whether a handler is running now (racy).
    #[inline]
    pub fn is_busy(&self) -> bool {
        self.0.is_busy()
    }

    /// Whether emits wait for room downstream (racy: a kernel in the middle of a turn
    /// counts as having some).
    #[inline]
    pub fn has_stashed(&self) -> bool {
        self.0.has_stashed()
    }

    /// Whether a terminate gave up on the kernel's handler, which never returned; the
    /// thread running it still holds the kernel.
    #[inline]
    pub fn is_abandoned(&self) -> bool {
        self.0.is_abandoned()
    }

    /// The downstream kernel id of each port, `None` for a port not routed to a kernel.
    #[inline]
    pub fn routes(&self) -> Vec<Option<u32>> {
        self.0.routes()
    }

    /// How many references hold the kernel now: every `CpuKernel` (the backend's list
    /// holds one), each port routed to it, its [`CpuLane`] while taken, and whatever is
    /// running or queueing it (the pool, a dedicated thread, a thread left inside an
    /// abandoned handler). A runtime's shutdown compares it with the references it knows
    /// of to tell whether a user still holds a handle.
    #[inline]
    pub fn handle_count(&self) -> usize {
        Arc::strong_count(&self.0)
    }

    // ---- sending and receiving (the hot path) -----------------------------------------

    /// Writes one message with correlation id `corr` into the inbox in place, without
    /// waiting.
    ///
    /// # Errors
    /// [`SendFailure`] when the inbox is full, the kernel no longer accepts messages, or
    /// the payload does not fit a slot. Nothing is written then.
    #[inline]
    pub fn try_send(&self, payload: &[u8], corr: [u32; 2]) -> Result<(), SendFailure> {
        self.0.try_send(corr, payload)
    }

    /// Writes up to `want` messages of `bytes` bytes each into the inbox with one claim
    /// (as many as there is room for now), one publish and one wake, without waiting.
    /// `fill` writes the next message's payload into the slot it is given and returns
    /// `true`, or `false` when there is no next message (the rest of the claim is
    /// published as cancelled, which the kernel skips). Every message carries
    /// correlation id 0. Returns how many were written.
    ///
    /// # Errors
    /// [`SendFailure`] when the inbox has no room at all, the kernel no longer accepts
    /// messages, or `bytes` does not fit a slot. Nothing is written then.
    #[inline]
    pub fn try_send_batch(
        &self,
        want: u32,
        bytes: usize,
        fill: impl FnMut(&mut [u8]) -> bool,
    ) -> Result<u32, SendFailure> {
        self.0.try_send_batch(want, bytes, fill)
    }

    /// Notified whenever inbox room frees up or the inbox closes (blocked senders wait
    /// on it).
    #[inline]
    pub fn inbox_space(&self) -> &Signal {
        self.0.inbox_space()
    }

    /// Notified whenever the kernel emits to the host or stops (receivers wait on it).
    #[inline]
    pub fn outbox_items(&self) -> &Signal {
        self.0.outbox_items()
    }

    /// Hands the next host-bound message to `f` in place, without waiting, through the
    /// shared receiving end (receivers on several threads take turns at a lock).
    ///
    /// # Errors
    /// [`RecvFailure`] when nothing is waiting (`Empty`), the kernel stopped and nothing
    /// is left (`Closed`), it has no host output, or a [`CpuOutput`] holds the output.
    #[inline]
    pub fn try_recv_with<R>(&self, f: impl FnOnce(SlotRef<'_>) -> R) -> Result<R, RecvFailure> {
        self.0.try_recv(f)
    }

    /// Hands up to `max` host-bound messages, in order, to `f` in place, through the
    /// shared receiving end (one lock, one release of the ring, one wake for the batch),
    /// without waiting. Returns how many.
    ///
    /// # Errors
    /// As [`CpuKernel::try_recv_with`]: `Empty` when nothing is waiting.
    #[inline]
    pub fn try_recv_batch_with(
        &self,
        max: u32,
        f: impl FnMut(SlotRef<'_>),
    ) -> Result<u32, RecvFailure> {
        self.0.try_recv_batch(max, f)
    }

    /// Takes the exclusive receiving end of the host-bound output for one receiving
    /// thread (no lock per message). Until it comes back through
    /// [`CpuKernel::return_output`], [`CpuKernel::try_recv_with`] fails with `Taken` and
    /// a terminate leaves the output to its holder.
    ///
    /// # Errors
    /// `NoOutput` when the kernel has no host-bound output, `Taken` when it is out.
    #[inline]
    pub fn take_output(&self) -> Result<CpuOutput, RecvFailure> {
        self.0.take_output().map(CpuOutput)
    }

    /// Gives back the receiving end [`CpuKernel::take_output`] handed out.
    #[inline]
    pub fn return_output(&self, output: CpuOutput) {
        self.0.return_output(output.0);
    }

    /// Hands the next host-bound message to `f` in place through `output`, the
    /// kernel's exclusive receiving end, without waiting and without locking.
    ///
    /// # Errors
    /// As [`CpuKernel::try_recv_with`], less `Taken` and `NoOutput`.
    #[inline]
    pub fn try_recv_from<R>(
        &self,
        output: &mut CpuOutput,
        f: impl FnOnce(SlotRef<'_>) -> R,
    ) -> Result<R, RecvFailure> {
        self.0.try_recv_from(&mut output.0, f)
    }

    /// Hands up to `max` host-bound messages, in order, to `f` in place through
    /// `output`, with one release of the ring and at most one wake of the kernel,
    /// without waiting and without locking. Returns how many.
    ///
    /// # Errors
    /// As [`CpuKernel::try_recv_from`].
    #[inline]
    pub fn try_recv_batch_from(
        &self,
        output: &mut CpuOutput,
        max: u32,
        f: impl FnMut(SlotRef<'_>),
    ) -> Result<u32, RecvFailure> {
        self.0.try_recv_batch_from(&mut output.0, max, f)
    }

    /// Takes the kernel's single-producer lane, if nobody holds it.
    #[inline]
    pub fn take_lane(&self) -> Option<CpuLane> {
        self.0.take_lane().map(CpuLane)
    }

    // ---- lifecycle and routes ---------------------------------------------------------

    /// Issues `command` (activate or pause) and waits for the kernel's acknowledgement;
    /// returns the state it acknowledged.
    ///
    /// # Errors
    /// [`CommandError`]: the state machine refuses, the kernel does not acknowledge in
    /// time, or it faulted.
    ///
    /// # Panics
    /// On a command other than activate or pause: a drain or terminate hands messages
    /// back, so it is [`CpuKernel::drain`] or [`CpuKernel::terminate`].
    #[inline]
    pub fn command(&self, command: Command) -> Result<State, CommandError> {
        match command {
            Command::Activate => self.0.set_active(true),
            Command::Pause => self.0.set_active(false),
            other => panic!(
                "CpuKernel::command takes activate or pause, not {other:?}: call \
                 CpuKernel::drain or CpuKernel::terminate, which hand messages back"
            ),
        }
    }

    /// Drains: refuses new messages, processes what is queued, then terminates; what is
    /// left when `timeout` expires is terminated and handed to the callbacks (inbox to
    /// `on_input`, host-bound output to `on_output`).
    ///
    /// # Errors
    /// [`CommandError`] when the state machine refuses, or a kernel that does not
    /// acknowledge has no handler running either.
    #[inline]
    pub fn drain(
        &self,
        timeout: Duration,
        on_input: &mut dyn FnMut(SlotRef<'_>),
        on_output: &mut dyn FnMut(SlotRef<'_>),
    ) -> Result<DrainSummary, CommandError> {
        self.0.drain(timeout, on_input, on_output)
    }

    /// [`CpuKernel::drain`] to an absolute deadline shared by kernels stopped one after
    /// another (the grace after it is not paid again for each).
    ///
    /// # Errors
    /// As [`CpuKernel::drain`].
    #[inline]
    pub fn drain_until(
        &self,
        deadline: std::time::Instant,
        on_input: &mut dyn FnMut(SlotRef<'_>),
        on_output: &mut dyn FnMut(SlotRef<'_>),
    ) -> Result<DrainSummary, CommandError> {
        self.0.drain_until(deadline, on_input, on_output)
    }

    /// Terminates: stops after the message in hand and hands every message still in a
    /// ring to the callbacks, within the command timeout whatever the handler does.
    ///
    /// # Errors
    /// [`CommandError`] when the kernel is already terminated (and its runtime lives), or
    /// does not acknowledge while no handler runs.
    #[inline]
    pub fn terminate(
        &self,
        on_input: &mut dyn FnMut(SlotRef<'_>),
        on_output: &mut dyn FnMut(SlotRef<'_>),
    ) -> Result<DrainSummary, CommandError> {
        self.0.terminate(on_input, on_output)
    }

    /// Whether a terminate gave up waiting while no handler ran: the next drain or
    /// terminate hands back what the rings still hold.
    #[inline]
    pub fn is_uncollected(&self) -> bool {
        self.0.is_uncollected()
    }

    /// Binds output port `port` to `route`, for messages of `message_bytes`. With
    /// `exclusive`, a port routed to a kernel takes that kernel's single-producer lane
    /// when it is free (no compare-and-swap per message).
    ///
    /// # Errors
    /// [`RouteError`] when the port does not exist, the target kernel stopped, its slots
    /// are smaller than `message_bytes`, or this kernel's turn does not end within the
    /// command timeout.
    pub fn bind(
        &self,
        port: u32,
        route: CpuRoute,
        message_bytes: usize,
        exclusive: bool,
    ) -> Result<(), RouteError> {
        let target = match route {
            CpuRoute::Host => inner::PortTarget::Host,
            CpuRoute::DeadLetters => inner::PortTarget::DeadLetters,
            CpuRoute::Kernel(to) => inner::PortTarget::Kernel {
                core: to.0,
                exclusive: false,
            },
        };
        self.0.bind(port, target, message_bytes, exclusive)
    }

    // ---- after the runtime -------------------------------------------------------------

    /// Whether the runtime that ran the kernel is gone (shut down or dropped).
    #[inline]
    pub fn runtime_gone(&self) -> bool {
        self.0.runtime_gone()
    }

    /// Marks the kernel as stopping with its runtime (its shutdown or drop has begun):
    /// sends refused from now on report the runtime going (see
    /// [`CpuKernel::runtime_stopping`]).
    pub fn mark_runtime_stopping(&self) {
        self.0.mark_runtime_stopping();
    }

    /// Whether the kernel's runtime is shutting down or gone.
    #[inline]
    pub fn runtime_stopping(&self) -> bool {
        self.0.runtime_stopping()
    }

    /// Marks the kernel as belonging to a gone runtime: sends fail, and a drain or
    /// terminate through a surviving handle hands back what
    /// [`CpuKernel::keep_for_handles`] kept instead of failing.
    pub fn mark_runtime_gone(&self) {
        self.0.mark_runtime_gone();
    }

    /// Keeps messages the stop of a gone runtime handed back for this kernel: the next
    /// drain or terminate through one of its handles hands them back (once).
    pub fn keep_for_handles(&self, inputs: Vec<KeptMessage>, outputs: Vec<KeptMessage>) {
        self.0.keep_for_handles(inputs, outputs);
    }

    /// Hands every message still in the host-bound output to `on_output` (for a stopped
    /// kernel no handle can receive from any more); returns how many, 0 while a
    /// [`CpuOutput`] holds the output.
    pub fn take_unreceived_outputs(&self, on_output: &mut dyn FnMut(SlotRef<'_>)) -> usize {
        self.0.take_unreceived_outputs(on_output)
    }

    /// The runtime's dead-letter sink this kernel sends to.
    pub fn dead_letters(&self) -> &Arc<DeadLetters> {
        self.0.dead_letters()
    }

    /// From now on what the kernel emits to the host while its output ring is full
    /// waits in a queue its receivers read after the ring, instead of holding the kernel
    /// back: what the runtime's drop sets before it drains (see
    /// `KernelCore::overflow_host_output`).
    pub fn overflow_host_output(&self) {
        self.0.overflow_host_output();
    }
}

/// The exclusive receiving end of a CPU kernel's host-bound output (see
/// [`CpuKernel::take_output`]); give it back with [`CpuKernel::return_output`].
#[derive(Debug)]
pub struct CpuOutput(inner::OutputConsumer);

/// The exclusive right to send through a CPU kernel's single-producer lane (see
/// [`CpuKernel::take_lane`]): claims without a compare-and-swap. Dropping it frees the
/// lane.
#[derive(Debug)]
pub struct CpuLane(inner::ExclusiveLane);

impl CpuLane {
    /// Writes one message with correlation id `corr` into the lane in place, without
    /// waiting.
    ///
    /// # Errors
    /// As [`CpuKernel::try_send`].
    #[inline]
    pub fn try_send(&mut self, payload: &[u8], corr: [u32; 2]) -> Result<(), SendFailure> {
        self.0.try_send(corr, payload)
    }

    /// Writes up to `want` messages into the lane with one claim, one publish and one
    /// wake, without waiting.
    ///
    /// # Errors
    /// As [`CpuKernel::try_send_batch`].
    #[inline]
    pub fn try_send_batch(
        &mut self,
        want: u32,
        bytes: usize,
        fill: impl FnMut(&mut [u8]) -> bool,
    ) -> Result<u32, SendFailure> {
        self.0.try_send_batch(want, bytes, fill)
    }
}
