//! One kernel on the CPU backend: its rings, control block, handler and scheduling.
//!
//! The host side (senders, receivers, lifecycle calls) and the kernel side (whichever
//! thread runs the handler) meet only through the ring protocol, the control block and
//! a few host-local flags used to wake each other, exactly as a GPU kernel would.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, MutexGuard};

use super::pool::Pool;
use super::supervisor::{RestartState, Supervisor};
use crate::abi::{fault, make_tag, State, KIND_MESSAGE};
use crate::backend::Placement;
use crate::control::{Counters, HostControl, HostSide, KernelSide};
use crate::lifecycle::{self, Event};
use crate::ring::{Claim, ClaimError, Consumer, HostRing, Producer, RingLayout, SlotRef, Step};
use crate::routing::{DeadLetter, DeadLetters};
use crate::sync::{asym, AtomicBool, AtomicU64, Ordering};
use crate::wait::Signal;

type Ring = Arc<HostRing>;

/// The consumer side of a kernel's host-bound output ring, as a [`KernelCore::take_output`]
/// caller holds it.
pub type OutputConsumer = Consumer<Arc<HostRing>>;

/// Rounds a pool worker keeps polling a kernel that just ran out of work, while no other
/// kernel waits, before letting it go idle (a few microseconds: the next message of a
/// request/response exchange usually arrives within a round trip).
const LINGER_ROUNDS: u32 = 256;

/// How long a closer waits for senders that claimed a slot before the close to finish
/// writing it: as long as it takes. Nothing blocks between a claim and its publish (a
/// copy of the message), and a claim dropped by a panic is published as cancelled, so
/// the wait ends as soon as the sender's thread runs again.
const PUBLISH_SPINS: u32 = u32::MAX;

/// A message as a handler sees it: borrowed from its inbox slot.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    /// Message kind (low 16 bits) and sender id (high 16 bits).
    pub tag: u32,
    /// Correlation id.
    pub corr: [u32; 2],
    /// Payload bytes (the whole slot payload; the message is at its start).
    pub payload: &'a [u8],
}

/// An error a handler reports for one message. The message counts as processed with an
/// error; the kernel keeps running.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

/// The code a kernel runs for each message.
pub trait Handler: Send + 'static {
    /// Handles one message; may emit through `out`.
    ///
    /// # Errors
    /// A [`HandlerError`] is counted in the kernel's `errors` counter.
    fn handle(&mut self, message: Message<'_>, out: &mut Emitter<'_>) -> Result<(), HandlerError>;
}

impl<F> Handler for F
where
    F: FnMut(Message<'_>, &mut Emitter<'_>) -> Result<(), HandlerError> + Send + 'static,
{
    fn handle(&mut self, message: Message<'_>, out: &mut Emitter<'_>) -> Result<(), HandlerError> {
        self(message, out)
    }
}

/// Why an emit was refused. Nothing was written; the handler decides what to do
/// (returning the error sends the input message to the dead-letter sink).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The port is not bound to anything.
    #[error("output port {port} is not bound: give the kernel a host output, or route the port to a kernel or the dead-letter sink")]
    Unbound {
        /// The port.
        port: u32,
    },
    /// The kernel has fewer ports.
    #[error("output port {port} does not exist; the kernel has {ports}: raise KernelSpec::ports")]
    NoSuchPort {
        /// The port asked for.
        port: u32,
        /// How many the kernel has.
        ports: u32,
    },
    /// The payload is larger than the target's slots.
    #[error("emitted {len} bytes into slots of {max} payload bytes: raise the target's slot size")]
    TooLarge {
        /// Bytes emitted.
        len: usize,
        /// Payload bytes per slot.
        max: usize,
    },
    /// A terminate gave up waiting for this handler and handed its message back; what
    /// it emits now is refused so the message is not delivered twice.
    #[error("the kernel was terminated while this handler ran and its message was handed back; the emit is refused")]
    Abandoned,
}

impl From<EmitError> for HandlerError {
    fn from(value: EmitError) -> Self {
        Self(value.to_string())
    }
}

/// What a handler emits through: one call per message, see [`Emitter::emit_to`].
#[derive(Debug)]
pub struct Emitter<'a> {
    core: &'a Arc<KernelCore>,
    ports: &'a mut [ports::Port],
    stash: &'a mut ports::Stash,
    emitted: u32,
    stalls: u32,
    /// An emit was stashed: take no more input this turn.
    stalled: bool,
    /// The correlation id of the message in hand when it is timed: an emit carrying it
    /// stays timed, so the host send time travels to whoever receives the result.
    timed_corr: Option<[u32; 2]>,
}

/// Makes a fresh handler: what a restart runs instead of the old handler value, so a
/// handler whose state a panic left half-updated starts clean.
#[derive(Clone)]
pub struct HandlerFactory(pub Arc<dyn Fn() -> Box<dyn Handler> + Send + Sync>);

impl std::fmt::Debug for HandlerFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandlerFactory")
    }
}

/// Static configuration of a kernel.
#[derive(Clone, Debug)]
pub struct KernelConfig {
    /// Name, for errors, metrics and logs.
    pub name: String,
    /// Inbox layout.
    pub inbox: RingLayout,
    /// Host-bound output layout, if the kernel has one.
    pub outbox: Option<RingLayout>,
    /// Number of output ports (at least 1). Port 0 starts bound to the host output when
    /// there is one; every other port starts unbound.
    pub ports: u32,
    /// Where it runs.
    pub placement: Placement,
    /// Most messages handled per scheduling turn (fairness between pooled kernels).
    pub quantum: u32,
    /// How long lifecycle calls wait for an acknowledgement.
    pub command_timeout: Duration,
    /// What the runtime does when the kernel faults.
    pub fault_policy: crate::health::FaultPolicy,
    /// A background watchdog: the kernel is faulted when its heartbeat stands still
    /// this long while messages wait (then its fault policy applies).
    pub watchdog: Option<Duration>,
    /// Makes the handler a restart installs; without one a restart keeps the handler value
    /// (and whatever state it holds).
    pub handler_factory: Option<HandlerFactory>,
}

/// The kernel side, owned by whichever thread runs the kernel.
struct Exec {
    inbox: Consumer<Ring>,
    /// The single-producer lane's consumer side.
    lane: Consumer<Ring>,
    /// Which ring goes first in the next turn (alternates, for fairness).
    lane_first: bool,
    control: KernelSide<Arc<HostControl>>,
    handler: Box<dyn Handler>,
    state: State,
    ports: Vec<ports::Port>,
    /// Emits waiting for room downstream, in emit order.
    stash: ports::Stash,
    /// The inbox ring holding the message the handler panicked on, once faulted.
    poisoned: Option<u64>,
}

/// One kernel: shared by its host handles, the scheduler and the thread running it.
pub struct KernelCore {
    id: u32,
    config: KernelConfig,
    inbox: Producer<Ring>,
    /// A second inbox ring with a single producer (an [`ExclusiveLane`]), claimed without
    /// a compare-and-swap. Same layout as `inbox`.
    lane: Producer<Ring>,
    lane_taken: AtomicBool,
    outbox: Option<Producer<Ring>>,
    /// Written by receiving host threads on every receive: its own line.
    outbox_rx: CachePadded<Mutex<Option<Consumer<Ring>>>>,
    control: HostSide<Arc<HostControl>>,
    /// Written by the thread running the kernel on every turn: its own line.
    exec: CachePadded<Mutex<Exec>>,
    pool: Arc<Pool>,
    /// Set while the kernel is queued or running on the pool; written by senders and
    /// workers: its own line.
    scheduled: CachePadded<AtomicBool>,
    /// Set by the kernel when it stopped because its output ring was full.
    output_stalled: AtomicBool,
    /// Set by the host before it issues `Terminate`; unblocks a waiting emit.
    terminating: AtomicBool,
    /// Set once the kernel published a stopped state. A host-side copy of that fact,
    /// so polling receivers do not read the control block's status line, which the
    /// kernel rewrites every turn.
    stopped: AtomicBool,
    /// Serialises lifecycle calls from the host; holds the last command issued (its
    /// epoch and the state it leads to) so a call made before the kernel acknowledged
    /// the previous one is checked against where the kernel is going.
    lifecycle: Mutex<Option<(u32, State)>>,
    fault: Mutex<Option<String>>,
    /// What the health watchdog saw last time it looked.
    watchdog: Mutex<Option<crate::health::Watchdog>>,
    /// Notified when inbox slots are freed (blocked senders wait on it).
    pub(crate) inbox_space: Signal,
    /// Notified when messages are emitted (receivers wait on it).
    pub(crate) outbox_items: Signal,
    /// Notified when the kernel publishes a state.
    state_changed: Signal,
    /// Notified when a dedicated kernel has something to do.
    work: Signal,
    /// Where handler failures and undeliverable emits go.
    dead: Arc<DeadLetters>,
    /// Upstream kernels waiting for room in this kernel's inbox.
    space_waiters: Mutex<Vec<Arc<KernelCore>>>,
    has_space_waiters: AtomicBool,
    /// Written by the thread running the kernel around every message: its own line.
    local: CachePadded<KernelLocal>,
    /// Set when a terminate gave up on a handler that did not return and collected the
    /// kernel's rings without it.
    abandoned: AtomicBool,
    /// Whether a dedicated kernel's thread runs (false once it returned).
    thread_alive: AtomicBool,
    /// End-to-end latencies of what came back to the host through this kernel.
    latency: crate::metrics::LatencyRecorder,
    throughput: crate::metrics::ThroughputWindow,
    supervisor: Arc<Supervisor>,
    restart_state: Mutex<RestartState>,
    /// The supervisor's watchdog memory (apart from the one `health` callers use).
    supervisor_watchdog: Mutex<Option<crate::health::Watchdog>>,
    /// Where each port goes (the downstream kernel's id), a host-side copy of the ports'
    /// targets: reading routes never waits for the exec lock, which a handler that
    /// never returns holds for good.
    routes: Mutex<Vec<Option<u32>>>,
    /// Set once the runtime that ran the kernel is gone (shut down or dropped): its
    /// threads are stopped, so the host plays the kernel from now on.
    runtime_gone: AtomicBool,
    /// What the runtime's drop handed back for this kernel, kept for its handles.
    kept: Mutex<control_ops::Kept>,
    /// Set when the host drains or terminates the kernel: that stop is final, so the
    /// fault policy does not restart it behind the host's back.
    stopped_by_host: AtomicBool,
    /// Set when a terminate gave up waiting for the acknowledgement while no handler
    /// ran (the kernel waited for a thread): its `Terminate` stays pending and its rings
    /// uncollected until the next drain or terminate collects them.
    uncollected: AtomicBool,
}

/// Words the thread running a kernel writes as it goes.
#[derive(Debug)]
struct KernelLocal {
    /// The message in the handler's hands now: `ring << 32 | position`, or [`NOT_IN_HAND`].
    in_hand: AtomicU64,
    /// Nanoseconds spent in turns that handled messages.
    busy_ns: AtomicU64,
    /// Emits wait in the stash: work even when the inbox is empty (the kernel's copy of
    /// `!exec.stash.is_empty()`, for `has_work`, which cannot take the exec lock).
    stash_pending: AtomicBool,
}

/// `in_hand` when no handler runs.
const NOT_IN_HAND: u64 = u64::MAX;

impl std::fmt::Debug for KernelCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelCore")
            .field("id", &self.id)
            .field("name", &self.config.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// What `try_send` could not do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendFailure {
    /// The inbox is full.
    Full,
    /// The kernel no longer accepts messages; it is in this state.
    Closed(State),
    /// The payload is larger than an inbox slot.
    TooLarge {
        /// Bytes offered.
        len: usize,
        /// Payload bytes per slot.
        max: usize,
    },
}

/// What `try_recv` could not do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvFailure {
    /// The output ring's consumer is taken out by [`KernelCore::take_output`].
    Taken,
    /// Nothing is waiting now; the kernel may emit more.
    Empty,
    /// Nothing is waiting and the kernel is stopped: nothing more will come.
    Closed(State),
    /// The kernel has no host-bound output.
    NoOutput,
}

impl KernelCore {
    pub(crate) fn new(
        id: u32,
        config: KernelConfig,
        handler: Box<dyn Handler>,
        pool: Arc<Pool>,
        dead: Arc<DeadLetters>,
        supervisor: Arc<Supervisor>,
    ) -> Self {
        let (inbox_tx, inbox_rx) = HostRing::new(config.inbox).split();
        let (lane_tx, lane_rx) = HostRing::new(config.inbox).split();
        let (outbox_tx, outbox_rx) = config
            .outbox
            .map(|layout| HostRing::new(layout).split())
            .unzip();
        let (host_control, kernel_control) = HostControl::new(id).split();
        let port_count = config.ports.max(1) as usize;
        let exec = Exec {
            inbox: inbox_rx,
            lane: lane_rx,
            lane_first: false,
            control: kernel_control,
            handler,
            state: State::Launched,
            ports: (0..config.ports.max(1))
                .map(|port| {
                    ports::Port::new(if port == 0 && outbox_tx.is_some() {
                        PortTarget::Host
                    } else {
                        PortTarget::Unbound
                    })
                })
                .collect(),
            stash: ports::Stash::default(),
            poisoned: None,
        };
        Self {
            id,
            inbox: inbox_tx,
            lane: lane_tx,
            lane_taken: AtomicBool::new(false),
            outbox: outbox_tx,
            outbox_rx: CachePadded::new(Mutex::new(outbox_rx)),
            control: host_control,
            exec: CachePadded::new(Mutex::new(exec)),
            pool,
            config,
            scheduled: CachePadded::new(AtomicBool::new(false)),
            output_stalled: AtomicBool::new(false),
            terminating: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            lifecycle: Mutex::new(None),
            fault: Mutex::new(None),
            watchdog: Mutex::new(None),
            inbox_space: Signal::new(),
            outbox_items: Signal::new(),
            state_changed: Signal::new(),
            work: Signal::new(),
            dead,
            space_waiters: Mutex::new(Vec::new()),
            has_space_waiters: AtomicBool::new(false),
            local: CachePadded::new(KernelLocal {
                in_hand: AtomicU64::new(NOT_IN_HAND),
                busy_ns: AtomicU64::new(0),
                stash_pending: AtomicBool::new(false),
            }),
            abandoned: AtomicBool::new(false),
            thread_alive: AtomicBool::new(false),
            latency: crate::metrics::LatencyRecorder::new(),
            throughput: crate::metrics::ThroughputWindow::new(std::time::Instant::now()),
            supervisor,
            restart_state: Mutex::new(RestartState::default()),
            supervisor_watchdog: Mutex::new(None),
            routes: Mutex::new(vec![None; port_count]),
            runtime_gone: AtomicBool::new(false),
            kept: Mutex::new(control_ops::Kept::default()),
            uncollected: AtomicBool::new(false),
            stopped_by_host: AtomicBool::new(false),
        }
    }

    /// The kernel's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The kernel's configuration.
    pub fn config(&self) -> &KernelConfig {
        &self.config
    }

    /// Bytes of ring memory (headers and slots) a kernel of `config` holds: its inbox,
    /// its single-producer lane (same layout) and its host-bound output.
    pub fn ring_bytes_for(config: &KernelConfig) -> usize {
        2 * config.inbox.region_bytes() + config.outbox.map_or(0, |o| o.region_bytes())
    }

    /// The kernel's numbers now, for metrics.
    pub fn sample(&self) -> crate::metrics::KernelSample {
        let counters = self.counters();
        crate::metrics::KernelSample {
            busy_ns: Some(self.busy_ns()),
            throughput: self
                .throughput
                .rate(std::time::Instant::now(), counters.processed),
            latency: self.latency.summary(),
            name: self.config.name.clone(),
            backend: "cpu",
            id: self.id,
            state: self.state(),
            counters,
            inbox_depth: self.inbox_len(),
            inbox_capacity: self.config.inbox.capacity(),
            inbox_utilisation: f64::from(self.inbox.len().max(self.lane.len()))
                / f64::from(self.config.inbox.capacity()),
            heartbeat: self.heartbeat(),
            ring_bytes: self.ring_bytes(),
        }
    }

    /// The kernel's health under `policy`, judged against what the previous call saw
    /// (the watchdog's memory lives in the kernel).
    pub fn health(&self, policy: &crate::health::HealthPolicy) -> crate::health::Health {
        let mut health = Self::evaluate_with(&self.watchdog, &self.sample(), policy);
        let restarts = self.restart_state.lock();
        if restarts.circuit_open {
            health.status = crate::health::HealthStatus::Unhealthy;
            health.reasons.push(format!(
                "kernel `{}`'s circuit is open: it faulted again after {} restarts in a row; restart it by hand",
                self.config.name, restarts.in_a_row
            ));
        }
        health
    }

    fn evaluate_with(
        memory: &Mutex<Option<crate::health::Watchdog>>,
        sample: &crate::metrics::KernelSample,
        policy: &crate::health::HealthPolicy,
    ) -> crate::health::Health {
        let now = std::time::Instant::now();
        let mut watchdog = memory.lock();
        let watchdog = watchdog.get_or_insert_with(|| crate::health::Watchdog::new(sample, now));
        crate::health::evaluate(sample, policy, watchdog, now)
    }

    /// The health as the supervisor's background watchdog sees it (its own memory).
    pub(crate) fn watchdog_health(
        &self,
        policy: &crate::health::HealthPolicy,
    ) -> crate::health::Health {
        Self::evaluate_with(&self.supervisor_watchdog, &self.sample(), policy)
    }

    /// Records `reason` as the kernel's fault when it has none yet.
    pub(crate) fn note_fault(&self, reason: &str) {
        self.fault.lock().get_or_insert_with(|| reason.to_owned());
    }

    pub(crate) fn restart_state(&self) -> &Mutex<RestartState> {
        &self.restart_state
    }

    /// Asks the supervisor to apply the fault policy (after a watchdog termination).
    pub(crate) fn request_supervised_restart(self: &Arc<Self>) {
        self.supervisor.report_fault(self.clone());
    }

    /// Whether the kernel is faulted and its fault policy will restart it (receivers
    /// keep waiting instead of being told that nothing more will come).
    fn restart_pending(&self) -> bool {
        matches!(
            self.config.fault_policy,
            crate::health::FaultPolicy::Restart(_)
        ) && self.state() == State::Faulted
            && !self.restart_state.lock().circuit_open
    }

    /// Restarts done by the kernel's fault policy over its life.
    pub fn restarts(&self) -> u64 {
        self.restart_state.lock().total
    }

    /// Bytes of ring memory this kernel holds.
    pub fn ring_bytes(&self) -> usize {
        Self::ring_bytes_for(&self.config)
    }

    /// The state the kernel last published.
    ///
    /// A kernel abandoned by a terminate (its handler never returned) reads as
    /// `Terminated`: the host took its rings over without the kernel's acknowledgement.
    pub fn state(&self) -> State {
        if self.abandoned.load(Ordering::Relaxed) {
            return State::Terminated;
        }
        self.control.state()
    }

    /// Records one end-to-end latency (nanoseconds) of something that came back to the
    /// host through this kernel.
    pub fn record_latency(&self, ns: u64) {
        self.latency.record(ns);
    }

    /// The latency histogram's quantiles, if anything was recorded.
    pub fn latency(&self) -> Option<crate::metrics::LatencySummary> {
        self.latency.summary()
    }

    /// Whether a handler is running now (racy).
    pub fn is_busy(&self) -> bool {
        self.local.in_hand.load(Ordering::Relaxed) != NOT_IN_HAND
    }

    /// Whether emits wait in a port's stash for room downstream (racy: a kernel in the
    /// middle of a turn counts as having some).
    pub fn has_stashed(&self) -> bool {
        self.exec
            .try_lock()
            .is_none_or(|exec| !exec.stash.is_empty())
    }

    /// Whether a terminate gave up on this kernel's handler (see [`KernelCore::state`]).
    pub fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Nanoseconds the kernel spent in turns that handled messages (handler calls and
    /// the ring work around them).
    pub fn busy_ns(&self) -> u64 {
        self.local.busy_ns.load(Ordering::Relaxed)
    }

    /// The runtime's dead-letter sink.
    pub fn dead_letters(&self) -> &Arc<DeadLetters> {
        &self.dead
    }

    /// The fault message, if the kernel faulted.
    pub fn fault(&self) -> Option<String> {
        self.fault.lock().clone()
    }

    /// The kernel's counters, widened to u64.
    pub fn counters(&self) -> Counters<u64> {
        self.control.counters()
    }

    /// The heartbeat word.
    pub fn heartbeat(&self) -> u32 {
        self.control.status().heartbeat
    }

    /// Messages waiting in the inbox (racy gauge).
    pub fn inbox_len(&self) -> u32 {
        self.inbox.len() + self.lane.len()
    }

    /// Payload bytes of an inbox slot.
    pub fn inbox_payload_bytes(&self) -> usize {
        self.config.inbox.payload_bytes() as usize
    }

    /// Whether the kernel has a host-bound output.
    pub fn has_output(&self) -> bool {
        self.outbox.is_some()
    }

    // ---- host side: sending -------------------------------------------------------

    /// Writes one message into the inbox in place, without waiting.
    ///
    /// # Errors
    /// [`SendFailure`] when the inbox is full, the kernel no longer accepts messages, or
    /// the payload does not fit a slot. Nothing is written then.
    pub fn try_send(self: &Arc<Self>, corr: [u32; 2], payload: &[u8]) -> Result<(), SendFailure> {
        // No state check here: every state that refuses messages closes the inbox first
        // (drain, terminate, fault), and the closed flag is a read-shared host word, where
        // the state word shares a line with the counters the kernel rewrites every turn.
        self.send_through(corr, payload, || self.inbox.try_claim(1))
    }

    /// Checks the payload size, claims one slot with `claim`, writes the message into it
    /// in place, publishes it and wakes the kernel.
    fn send_through<'a>(
        self: &'a Arc<Self>,
        corr: [u32; 2],
        payload: &[u8],
        claim: impl FnOnce() -> Result<Claim<'a, Ring>, ClaimError>,
    ) -> Result<(), SendFailure> {
        let max = self.inbox_payload_bytes();
        if payload.len() > max {
            return Err(SendFailure::TooLarge {
                len: payload.len(),
                max,
            });
        }
        match claim() {
            Ok(claim) => {
                // Time one message in LATENCY_SAMPLE_EVERY (by position: no shared
                // counter), if it carries no correlation id of the user's.
                let (kind, corr) = if (corr[0] | corr[1]) == 0
                    && claim.start() % crate::metrics::LATENCY_SAMPLE_EVERY
                        == crate::metrics::LATENCY_SAMPLE_EVERY - 1
                {
                    let now = crate::metrics::clock_ns();
                    (crate::abi::KIND_TIMED, [now as u32, (now >> 32) as u32])
                } else {
                    (KIND_MESSAGE, corr)
                };
                let tag = make_tag(kind, crate::abi::HOST_SENDER_ID);
                claim.write(0, tag, corr, |slot| {
                    slot[..payload.len()].copy_from_slice(payload);
                });
                claim.publish();
                self.wake();
                Ok(())
            }
            Err(ClaimError::Full { .. }) => Err(SendFailure::Full),
            Err(ClaimError::Closed) => Err(SendFailure::Closed(self.closed_state())),
            Err(ClaimError::TooMany) => unreachable!("a claim of one always fits"),
        }
    }

    /// The state to report to a sender that found the inbox closed.
    fn closed_state(&self) -> State {
        match self.state() {
            // Closed by a fault, or by a drain or terminate whose command the kernel has
            // not acknowledged yet (the fault is recorded before the inbox closes).
            State::Launched | State::Active | State::Paused => {
                if self.fault.lock().is_some() {
                    State::Faulted
                } else if self.terminating.load(Ordering::Relaxed) {
                    State::Terminated
                } else {
                    State::Draining
                }
            }
            other => other,
        }
    }

    /// Signal notified whenever inbox space frees up or the inbox closes.
    pub fn inbox_space(&self) -> &Signal {
        &self.inbox_space
    }

    // ---- host side: receiving -----------------------------------------------------

    /// Takes the next host-bound message, handing it to `f`, without waiting. Receivers
    /// on several threads take turns (a lock); one receiving thread is faster with the
    /// consumer taken out by [`KernelCore::take_output`].
    ///
    /// # Errors
    /// [`RecvFailure`] when nothing is waiting, the kernel has no output, or its output
    /// consumer is taken.
    pub fn try_recv<R>(
        self: &Arc<Self>,
        f: impl FnOnce(SlotRef<'_>) -> R,
    ) -> Result<R, RecvFailure> {
        let mut guard = self.outbox_rx.lock();
        match guard.as_mut() {
            Some(rx) => self.try_recv_from(rx, f),
            None if self.outbox.is_some() => Err(RecvFailure::Taken),
            None => Err(RecvFailure::NoOutput),
        }
    }

    /// Takes the next host-bound message from `rx`, the consumer returned by
    /// [`KernelCore::take_output`], without waiting and without locking.
    ///
    /// # Errors
    /// [`RecvFailure::Empty`] when nothing is waiting, `Closed` when the kernel stopped
    /// and nothing is left.
    pub fn try_recv_from<R>(
        self: &Arc<Self>,
        rx: &mut OutputConsumer,
        f: impl FnOnce(SlotRef<'_>) -> R,
    ) -> Result<R, RecvFailure> {
        let mut f = Some(f);
        let mut out = None;
        rx.consume(1, |slot| {
            if let Some(f) = f.take() {
                if slot.is_timed() {
                    let sent = u64::from(slot.corr[0]) | (u64::from(slot.corr[1]) << 32);
                    self.latency
                        .record(crate::metrics::clock_ns().saturating_sub(sent));
                }
                out = Some(f(SlotRef {
                    corr: slot.user_corr(),
                    ..slot
                }));
            }
            Step::Last
        });
        if let Some(value) = out {
            self.after_output_consumed();
            return Ok(value);
        }
        // Stopped and empty: nothing more will come. The kernel sets `stopped` after its
        // last emit, so emptiness is re-checked after reading the flag.
        // ORDERING: Acquire pairs with the Release store in `publish_state`.
        if self.stopped.load(Ordering::Acquire) && rx.is_empty() && !self.restart_pending() {
            Err(RecvFailure::Closed(self.state()))
        } else {
            Err(RecvFailure::Empty)
        }
    }

    /// Takes the output ring's consumer out for one receiving thread (no lock per
    /// message). Until it comes back through [`KernelCore::return_output`], `try_recv`
    /// fails with `Taken` and `terminate` leaves the output ring to its holder.
    ///
    /// # Errors
    /// `NoOutput` when the kernel has no host-bound output, `Taken` when it is out already.
    pub fn take_output(&self) -> Result<OutputConsumer, RecvFailure> {
        match self.outbox_rx.lock().take() {
            Some(rx) => Ok(rx),
            None if self.outbox.is_some() => Err(RecvFailure::Taken),
            None => Err(RecvFailure::NoOutput),
        }
    }

    /// Gives back a consumer taken by [`KernelCore::take_output`].
    pub fn return_output(&self, rx: OutputConsumer) {
        *self.outbox_rx.lock() = Some(rx);
        self.outbox_items.notify();
    }

    /// Takes the kernel's single-producer lane, if nobody holds it.
    pub fn take_lane(self: &Arc<Self>) -> Option<ExclusiveLane> {
        // ORDERING: Acquire pairs with the Release store in `ExclusiveLane::drop`: the
        // previous holder's claims happen before ours.
        (!self.lane_taken.swap(true, Ordering::Acquire)).then(|| ExclusiveLane::new(self.clone()))
    }

    fn after_output_consumed(self: &Arc<Self>) {
        // ORDERING: orders our release of the slot before the load below; pairs with the
        // kernel's store of `output_stalled`, heavy fence and re-check of the ring in
        // `request_room` / `flush_ports`.
        asym::light();
        if self.output_stalled.load(Ordering::Relaxed)
            && self.output_stalled.swap(false, Ordering::AcqRel)
        {
            self.wake();
        }
    }

    /// Signal notified whenever the kernel emits or stops.
    pub fn outbox_items(&self) -> &Signal {
        &self.outbox_items
    }

    // ---- scheduling -----------------------------------------------------------------

    /// Tells whoever runs the kernel that it may have work.
    pub(crate) fn wake(self: &Arc<Self>) {
        match self.config.placement {
            Placement::Pool => {
                // ORDERING: light fence orders our publish before the load of
                // `scheduled`; pairs with the worker's heavy fence after
                // `scheduled = false` and the re-check in `recheck_idle` (Dekker: one of
                // us sees the other).
                asym::light();
                if !self.scheduled.load(Ordering::Relaxed) {
                    // A plain store, not a swap: a locked instruction here would wait for
                    // the message just written to drain from the store buffer, on every
                    // send to an idle kernel. Two wakers may both push the kernel; a
                    // duplicate entry is harmless (see `run_scheduled`).
                    self.scheduled.store(true, Ordering::Relaxed);
                    self.pool.push(self.clone());
                }
            }
            Placement::Dedicated => self.work.notify(),
        }
    }

    /// Tells the kernel's thread and its lifecycle waiters that the backend's threads
    /// stopped: a dedicated kernel's thread re-checks the pool's shutdown and returns, and
    /// a terminate waiting for an acknowledgement carries the command out itself.
    pub(crate) fn runner_stopped(&self) {
        self.work.notify();
        self.state_changed.notify();
    }

    /// Whether the kernel side has something to do now.
    fn has_work(&self) -> bool {
        let status = self.control.status();
        if status.ack_epoch != self.control.epoch() {
            return true;
        }
        let state = status.state.unwrap_or(State::Faulted);
        if !lifecycle::processes_messages(state) {
            return false;
        }
        if self.output_stalled.load(Ordering::Relaxed) {
            return false;
        }
        // A stash whose target has room again is work even with an empty inbox.
        self.local.stash_pending.load(Ordering::Relaxed)
            || self.inbox.has_published()
            || self.lane.has_published()
            || state == State::Draining
    }

    /// Runs the kernel on a pool worker: turns while it has work, requeued behind other
    /// waiting kernels after each (fairness); while no other kernel waits it lingers a
    /// little for the next message before going idle.
    pub(crate) fn run_scheduled(self: &Arc<Self>) -> Turn {
        let Some(mut exec) = self.exec.try_lock() else {
            // Another worker runs it (a duplicate queue entry), or the host holds it for a
            // moment (bind, collect): put the entry back so the work is not forgotten. An
            // abandoned kernel's stuck thread never lets go, so drop the entry then.
            if self.is_abandoned() {
                return Turn::Dropped;
            }
            std::thread::yield_now();
            self.pool.push(self.clone());
            return Turn::Requeued;
        };
        'turns: loop {
            self.step(&mut exec);
            let mut lingered = 0;
            while !self.has_work() {
                if lingered == LINGER_ROUNDS || self.pool.has_queued() {
                    break 'turns;
                }
                lingered += 1;
                std::hint::spin_loop();
            }
            if self.pool.has_queued() {
                // Still scheduled: hand the worker to the next kernel, run again later.
                drop(exec);
                self.pool.push(self.clone());
                return Turn::Requeued;
            }
        }
        drop(exec);
        self.scheduled.store(false, Ordering::SeqCst);
        Turn::WentIdle
    }

    /// The second half of going idle, after the worker's heavy fence (one fence for a
    /// batch of kernels that went idle, see [`Pool`]): a message published meanwhile
    /// is never left unscheduled.
    pub(crate) fn recheck_idle(self: &Arc<Self>) {
        if self.has_work() && !self.scheduled.swap(true, Ordering::AcqRel) {
            self.pool.push(self.clone());
        }
    }

    /// The loop of a dedicated kernel's thread; returns when the kernel stops.
    ///
    /// While the kernel has work the thread keeps its exec lock from turn to turn (no
    /// lock traffic per message); it releases the lock while it waits for work, which is
    /// when lifecycle calls collect from the rings.
    pub(crate) fn run_dedicated(self: &Arc<Self>) {
        let mut exec = self.exec.lock();
        loop {
            // A faulted kernel keeps its thread: it must still acknowledge `Terminate`.
            // The flag is cleared under the exec lock, which `restart` takes to decide
            // whether the kernel needs a new thread.
            if (self.step(&mut exec) == State::Terminated && !self.has_work())
                || self.pool.is_shut_down()
            {
                self.thread_alive.store(false, Ordering::Relaxed);
                return;
            }
            if self.has_work() {
                continue;
            }
            MutexGuard::unlocked(&mut exec, || {
                self.work.wait_until(None, || {
                    (self.has_work() || self.pool.is_shut_down()).then_some(())
                });
            });
        }
    }

    /// Applies pending commands, then handles one batch. Returns the state after.
    fn step(self: &Arc<Self>, exec: &mut Exec) -> State {
        self.apply_commands(exec);
        if lifecycle::processes_messages(exec.state) {
            self.run_batch(exec);
            if exec.state == State::Draining
                && exec.inbox.is_empty()
                && exec.lane.is_empty()
                && exec.stash.is_empty()
            {
                self.publish_state(exec, lifecycle::transition(State::Draining, Event::Drained));
            }
        }
        exec.state
    }

    fn apply_commands(&self, exec: &mut Exec) {
        let Some((command, epoch)) = exec.control.poll() else {
            return;
        };
        let next = if let Some(command) = command {
            lifecycle::transition(exec.state, Event::Command(command))
        } else {
            exec.control.set_error(fault::BAD_COMMAND);
            *self.fault.lock() = Some(format!("unknown command word at epoch {epoch}"));
            Ok(State::Faulted)
        };
        // A command the state machine refuses (the host validated against a state the
        // kernel has since left, e.g. it faulted meanwhile) is acknowledged with the
        // unchanged state, which tells the host what happened.
        self.publish_state(exec, Ok(next.unwrap_or(exec.state)));
    }

    fn publish_state(&self, exec: &mut Exec, next: Result<State, lifecycle::LifecycleError>) {
        if let Ok(state) = next {
            if state != exec.state {
                tracing::info!(kernel = %self.config.name, id = self.id, from = ?exec.state, to = ?state, "kernel state");
            }
            exec.state = state;
        }
        exec.control.set_state(exec.state);
        if lifecycle::is_stopped(exec.state) {
            // ORDERING: Release pairs with the Acquire load in `try_recv_from`: a receiver
            // that sees the flag sees every emit published before it.
            self.stopped.store(true, Ordering::Release);
        }
        self.state_changed.notify();
        if lifecycle::is_stopped(exec.state) {
            // Receivers waiting for output learn that no more will come; upstream
            // kernels waiting for room learn that none will (their emits go to the
            // dead-letter sink).
            self.outbox_items.notify();
            self.inbox_space.notify();
            self.wake_space_waiters();
        }
    }

    fn run_batch(self: &Arc<Self>, exec: &mut Exec) {
        let Exec {
            inbox,
            lane,
            lane_first,
            control,
            handler,
            ports,
            stash,
            ..
        } = exec;
        // Deliver what waited for room first; while something still waits, take no input
        // (the target wakes this kernel when it frees room).
        if !stash.is_empty() && !self.flush_stash(ports, stash) {
            control.count(Counters::stall());
            self.notify_ports(ports);
            return;
        }
        self.local.stash_pending.store(false, Ordering::Relaxed);
        let budget = self.config.quantum;
        let started = std::time::Instant::now();
        let mut emitter = Emitter {
            core: self,
            ports,
            stash,
            emitted: 0,
            stalls: 0,
            stalled: false,
            timed_corr: None,
        };
        let mut handled = 0u32;
        let mut errors = 0u32;
        let mut panic: Option<String> = None;
        let in_hand = &self.local.in_hand;
        let mut on_slot = |ring: u64, slot: SlotRef<'_>| {
            if emitter.stalled || panic.is_some() || self.terminating.load(Ordering::Relaxed) {
                return Step::Keep;
            }
            // One beat per message, so a slow but live handler never looks stalled.
            control.beat();
            in_hand.store(ring << 32 | u64::from(slot.position), Ordering::Relaxed);
            emitter.timed_corr = slot.is_timed().then_some(slot.corr);
            let message = Message {
                tag: slot.tag,
                corr: slot.corr,
                payload: slot.payload,
            };
            match catch_unwind(AssertUnwindSafe(|| handler.handle(message, &mut emitter))) {
                Ok(Ok(())) => {
                    handled += 1;
                    Step::Next
                }
                Ok(Err(error)) => {
                    handled += 1;
                    errors += 1;
                    // Per message, so debug: the `errors` counter is the place to watch.
                    tracing::debug!(kernel = %self.config.name, %error, "handler reported an error");
                    self.dead_letter_input(&slot, error.0);
                    Step::Next
                }
                Err(payload) => {
                    panic = Some(panic_message(payload.as_ref()));
                    Step::Keep
                }
            }
        };
        // Both inbox rings share the turn's budget; which goes first alternates.
        *lane_first = !*lane_first;
        let (first, second, first_ring) = if *lane_first {
            (lane, inbox, LANE_RING)
        } else {
            (inbox, lane, INBOX_RING)
        };
        let mut released = first.consume(budget, |s| on_slot(first_ring, s));
        released += second.consume(budget - released.min(budget), |s| {
            on_slot(first_ring ^ 1, s)
        });
        if panic.is_some() {
            exec.poisoned = Some(in_hand.load(Ordering::Relaxed) >> 32);
        }
        in_hand.store(NOT_IN_HAND, Ordering::Relaxed);
        let (emitted, mut stalls, stalled) = (emitter.emitted, emitter.stalls, emitter.stalled);
        if handled > 0 {
            let busy = started.elapsed().as_nanos() as u64;
            self.local.busy_ns.fetch_add(busy, Ordering::Relaxed);
        }
        if stalled && self.flush_stash_after_turn(ports, stash) {
            stalls = stalls.saturating_sub(1);
        }
        control.count(Counters {
            received: handled,
            processed: handled,
            emitted,
            stalls,
            errors,
        });
        control.beat();
        if released > 0 {
            self.inbox_space.notify();
            self.wake_space_waiters();
        }
        self.notify_ports(ports);
        if let Some(reason) = panic {
            self.fault_on_panic(exec, &reason);
        }
    }

    /// Delivers what the turn stashed, and records whether some still waits: before the
    /// kernel can go idle, its idle re-check (after the heavy fence) must see that the
    /// stash is work once the target frees room. Returns whether all was delivered.
    fn flush_stash_after_turn(
        self: &Arc<Self>,
        ports: &mut [ports::Port],
        stash: &mut ports::Stash,
    ) -> bool {
        let delivered = self.flush_stash(ports, stash);
        self.local
            .stash_pending
            .store(!delivered, Ordering::Relaxed);
        delivered
    }

    /// Sends a received message to the dead-letter sink with `reason`.
    fn dead_letter_input(&self, slot: &SlotRef<'_>, reason: String) {
        self.dead_letter(true, reason, slot);
    }

    /// Sends one message this kernel received (`is_input`) or emitted to the dead-letter
    /// sink with `reason`.
    pub(crate) fn dead_letter(&self, is_input: bool, reason: String, slot: &SlotRef<'_>) {
        self.dead.push(DeadLetter {
            kernel: self.config.name.clone(),
            reason,
            is_input,
            tag: slot.tag,
            corr: slot.corr,
            payload: slot.payload.to_vec(),
        });
    }

    /// Terminates the kernel and sends every message it hands back, inputs and outputs,
    /// to the dead-letter sink with `reason` (what fault policies do).
    pub(crate) fn terminate_to_dead_letters(self: &Arc<Self>, reason: &str) {
        if self.is_stopped_by_host() {
            // The host drained or terminated it meanwhile and took its messages.
            return;
        }
        let result = self.stop_for_policy(
            &mut |s| self.dead_letter(true, reason.to_owned(), &s),
            &mut |s| self.dead_letter(false, reason.to_owned(), &s),
        );
        if let Err(e) = result {
            tracing::error!(kernel = %self.config.name, error = %e, "could not terminate the kernel for its fault policy");
        }
    }

    fn fault_on_panic(self: &Arc<Self>, exec: &mut Exec, reason: &str) {
        tracing::error!(kernel = %self.config.name, %reason, "handler panicked; kernel faulted");
        *self.fault.lock() = Some(format!("handler panicked: {reason}"));
        exec.control.set_error(fault::HANDLER_PANIC);
        self.publish_state(exec, lifecycle::transition(exec.state, Event::Fault));
        // Senders now get `Faulted`; messages already queued wait for `terminate`.
        Producer::close_all([&self.inbox, &self.lane]);
        self.supervisor.report_fault(self.clone());
    }
}

impl Drop for KernelCore {
    /// The last reference is gone: whatever the kernel still holds can reach nobody any
    /// more. Never silently: the count is logged as a warning.
    fn drop(&mut self) {
        let kept = self.kept.get_mut().len();
        let queued = self.inbox_len() as usize;
        let unreceived = self.outbox_rx.get_mut().as_mut().map_or(0, |rx| {
            let capacity = rx.capacity();
            rx.consume(capacity, |_| Step::Next) as usize
        });
        if kept + queued + unreceived > 0 {
            tracing::warn!(
                kernel = %self.config.name,
                queued,
                unreceived,
                kept,
                "kernel `{}` dropped with messages nobody took: {queued} queued, {unreceived} \
                 emitted to the host and not received, {kept} handed back by its runtime's \
                 drop and not taken; they are lost (receive, drain or terminate a kernel \
                 before dropping its last handle)",
                self.config.name
            );
        }
    }
}

/// How a pool turn of a kernel ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Turn {
    /// It still has work and went back to the run queue.
    Requeued,
    /// Nothing to do for this entry (an abandoned kernel).
    Dropped,
    /// It ran out of work and cleared its `scheduled` flag; the worker must heavy-fence
    /// and then call [`KernelCore::recheck_idle`].
    WentIdle,
}

/// `in_hand` ring numbers.
const INBOX_RING: u64 = 0;
const LANE_RING: u64 = 1;

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

mod control_ops;
mod lane;
mod ports;

pub use control_ops::{KeptMessage, STOP_GRACE};
pub use lane::ExclusiveLane;
pub use ports::PortTarget;
