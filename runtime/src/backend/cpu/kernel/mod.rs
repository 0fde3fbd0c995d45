//! One kernel on the CPU backend: its rings, control block, handler and scheduling.
//!
//! The host side (senders, receivers, lifecycle calls) and the kernel side (whichever
//! thread runs the handler) meet only through the ring protocol, the control block and
//! a few host-local flags used to wake each other, exactly as a GPU kernel would.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use super::pool::Pool;
use super::sched::{FaultSink, RestartState, Runnable, Turn};
use crate::abi::State;
use crate::backend::Placement;
use crate::control::{HostControl, HostSide, KernelSide};
use crate::ring::{Consumer, HostRing, Producer, RingLayout, Step};
use crate::routing::DeadLetters;
use crate::sync::{AtomicBool, AtomicU64};
use crate::wait::Signal;

mod host_io;
mod status;
mod turn;

pub use crate::handler::{EmitError, Handler, HandlerFactory, Message};
pub use host_io::{RecvFailure, SendFailure};

type Ring = Arc<HostRing>;

/// The consumer side of a kernel's host-bound output ring, as a [`KernelCore::take_output`]
/// caller holds it.
pub type OutputConsumer = Consumer<Arc<HostRing>>;

/// Rounds a pool worker keeps polling a kernel that just ran out of work, while no other
/// kernel waits, before letting it go idle (a few microseconds: the next message of a
/// request/response exchange usually arrives within a round trip).
const LINGER_ROUNDS: u32 = 256;

/// Times a pooled kernel whose last turn took messages stays scheduled, requeued behind
/// the other waiting kernels, when it finds no more input while others wait, before it
/// goes idle. A producer that keeps sending to it then finds it scheduled and pays no
/// queue push (a locked instruction and a line from the worker's core) per turn.
const HOT_REQUEUES: u32 = 2;

/// How long a closer waits for senders that claimed a slot before the close to finish
/// writing it: as long as it takes. Nothing blocks between a claim and its publish (a
/// copy of the message), and a claim dropped by a panic is published as cancelled, so
/// the wait ends as soon as the sender's thread runs again.
const PUBLISH_SPINS: u32 = u32::MAX;

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
    /// The inbox ring holding the messages the handler panicked on (first in it), and
    /// how many: one, or a whole batch.
    poisoned: Option<(u64, u32)>,
    /// Empty requeues left before a pooled kernel goes idle ([`HOT_REQUEUES`] after a
    /// turn that took messages).
    hot: u32,
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
    pool: Arc<Pool<KernelCore>>,
    /// Set while the kernel is queued or running on the pool; written by senders and
    /// workers: its own line.
    scheduled: CachePadded<AtomicBool>,
    /// Set by the kernel when it stopped because its output ring was full.
    output_stalled: AtomicBool,
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
    /// Whether a dedicated kernel's thread runs (false once it returned).
    thread_alive: AtomicBool,
    /// End-to-end latencies of what came back to the host through this kernel.
    latency: crate::metrics::LatencyRecorder,
    throughput: crate::metrics::ThroughputWindow,
    supervisor: Arc<dyn FaultSink<KernelCore>>,
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
    /// Set when the runtime's shutdown begins (see `mark_runtime_stopping`).
    runtime_stopping: AtomicBool,
    /// Host-bound messages (tag, correlation id, payload) emitted after the output ring
    /// filled while `overflowing`; receivers take them once the ring is empty.
    overflow: Mutex<std::collections::VecDeque<Overflowed>>,
    /// `overflow` is not empty (receivers look at it only then).
    overflow_pending: AtomicBool,
    /// What the runtime's drop handed back for this kernel, kept for its handles.
    kept: Mutex<control_ops::Kept>,
    /// Inputs (tag, correlation id, payload) a watchdog's terminate took out of the inbox
    /// under the `Restart` policy, oldest first: the restart puts them back in before
    /// the kernel runs again; a restart that will not come sends them to the dead
    /// letters.
    requeued: Mutex<Vec<Overflowed>>,
    /// Set while a watchdog's terminate under the `Restart` policy waits for its restart
    /// (the kernel reads `Terminated` meanwhile): receivers keep waiting.
    restart_due: AtomicBool,
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
    /// The message in the handler's hands now: `ring << 32 | position`, or [`NOT_IN_HAND`],
    /// or [`TAKEN_IN_HAND`] once a terminate gave up on the handler and handed the
    /// message back. The running thread stores it; the terminate's swap to
    /// `TAKEN_IN_HAND` and the thread's swap back to `NOT_IN_HAND` after a handler that
    /// returned during a terminate decide which of the two owns the message.
    in_hand: AtomicU64,
    /// Nanoseconds spent in turns that handled messages.
    busy_ns: AtomicU64,
    /// Emits wait in the stash: work even when the inbox is empty (the kernel's copy of
    /// `!exec.stash.is_empty()`, for `has_work`, which cannot take the exec lock).
    stash_pending: AtomicBool,
    // The flags below are written by the host, rarely (a stop, a drop), and read by the
    // running thread around every message and emit: here, on the line that thread
    // writes anyway, not on a line of `KernelCore` that host threads write on every
    // send or receive (a load that misses per message cost the pipeline 10-20 %).
    /// Set by the host before it issues `Terminate`; unblocks a waiting emit.
    terminating: AtomicBool,
    /// Set when a terminate gave up on a handler that did not return and collected the
    /// kernel's rings without it.
    abandoned: AtomicBool,
    /// Set when the runtime is dropped (see `overflow_host_output`): host-bound emits
    /// that find the output ring full go to `overflow` instead of waiting for room.
    overflowing: AtomicBool,
}

/// A host-bound message that overflowed the output ring during a drop: tag, correlation
/// id, payload.
type Overflowed = (u32, [u32; 2], Vec<u8>);

/// `in_hand` when no handler runs.
const NOT_IN_HAND: u64 = u64::MAX;
/// `in_hand` after a terminate took the message in hand from a handler that did not
/// return (see `abandon`); never a `ring << 32 | position` (rings are 0 and 1).
const TAKEN_IN_HAND: u64 = u64::MAX - 1;

impl std::fmt::Debug for KernelCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelCore")
            .field("id", &self.id)
            .field("name", &self.config.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl KernelCore {
    pub(crate) fn new(
        id: u32,
        config: KernelConfig,
        handler: Box<dyn Handler>,
        pool: Arc<Pool<KernelCore>>,
        dead: Arc<DeadLetters>,
        supervisor: Arc<dyn FaultSink<KernelCore>>,
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
            hot: 0,
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
                terminating: AtomicBool::new(false),
                abandoned: AtomicBool::new(false),
                overflowing: AtomicBool::new(false),
            }),
            thread_alive: AtomicBool::new(false),
            latency: crate::metrics::LatencyRecorder::new(),
            throughput: crate::metrics::ThroughputWindow::new(std::time::Instant::now()),
            supervisor,
            restart_state: Mutex::new(RestartState::default()),
            supervisor_watchdog: Mutex::new(None),
            routes: Mutex::new(vec![None; port_count]),
            runtime_gone: AtomicBool::new(false),
            runtime_stopping: AtomicBool::new(false),
            overflow: Mutex::new(std::collections::VecDeque::new()),
            overflow_pending: AtomicBool::new(false),
            kept: Mutex::new(control_ops::Kept::default()),
            requeued: Mutex::new(Vec::new()),
            restart_due: AtomicBool::new(false),
            uncollected: AtomicBool::new(false),
            stopped_by_host: AtomicBool::new(false),
        }
    }

    // ---- host side: sending -------------------------------------------------------

    // ---- host side: receiving -----------------------------------------------------

    // ---- scheduling -----------------------------------------------------------------
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

/// `in_hand` ring numbers.
const INBOX_RING: u64 = 0;
const LANE_RING: u64 = 1;

mod control_ops;
mod lane;
mod ports;

pub use control_ops::KeptMessage;
pub use lane::ExclusiveLane;
pub use ports::PortTarget;

impl Runnable for KernelCore {
    fn run_scheduled(self: &Arc<Self>) -> Turn {
        KernelCore::run_scheduled(self)
    }

    fn is_abandoned(&self) -> bool {
        KernelCore::is_abandoned(self)
    }

    fn recheck_idle(self: &Arc<Self>) {
        KernelCore::recheck_idle(self);
    }
}
