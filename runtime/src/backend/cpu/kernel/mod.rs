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
use crate::abi::{fault, make_tag, State, KIND_MESSAGE};
use crate::backend::Placement;
use crate::control::{Counters, HostControl, HostSide, KernelSide};
use crate::lifecycle::{self, Event};
use crate::ring::{Claim, ClaimError, Consumer, HostRing, Producer, RingLayout, SlotRef, Step};
use crate::sync::{asym, AtomicBool, Ordering};
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

/// Why an emit did not reach the output ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The kernel has no host-bound output.
    #[error("this kernel has no output ring: give its spec a host output to emit")]
    NoOutput,
    /// The payload is larger than the output slot.
    #[error("emitted {len} bytes into an output slot of {max} payload bytes: raise the output slot size")]
    TooLarge {
        /// Bytes emitted.
        len: usize,
        /// Payload bytes per slot.
        max: usize,
    },
    /// The kernel is being terminated while its output ring is full; the message was
    /// kept and comes back in the terminate report.
    #[error("the kernel is terminating and its output ring is full; the message is handed back in the report")]
    Terminating,
}

impl From<EmitError> for HandlerError {
    fn from(value: EmitError) -> Self {
        Self(value.to_string())
    }
}

/// What a handler emits through.
#[derive(Debug)]
pub struct Emitter<'a> {
    core: &'a KernelCore,
    emitted: u32,
    stalls: u32,
    stranded: &'a mut Vec<(u32, [u32; 2], Vec<u8>)>,
}

impl Emitter<'_> {
    /// Emits one message to the host-bound output, writing it into its slot in place.
    /// Waits (spin, yield, park) while the output ring is full, counting a stall.
    ///
    /// # Errors
    /// [`EmitError`] when the kernel has no output, the payload is too large, or the
    /// kernel is terminated while waiting (the message then comes back in the report).
    pub fn emit(&mut self, corr: [u32; 2], payload: &[u8]) -> Result<(), EmitError> {
        let core = self.core;
        let Some(outbox) = &core.outbox else {
            return Err(EmitError::NoOutput);
        };
        let max = outbox.memory().layout().payload_bytes() as usize;
        if payload.len() > max {
            return Err(EmitError::TooLarge {
                len: payload.len(),
                max,
            });
        }
        let tag = make_tag(KIND_MESSAGE, core.id);
        let mut stalled = false;
        loop {
            // SAFETY: the output ring has one producer, the thread running this kernel,
            // which holds the kernel's exec lock for the whole turn; it is never closed.
            match unsafe { outbox.try_claim_exclusive(1) } {
                Ok(claim) => {
                    claim.write(0, tag, corr, |slot| {
                        slot[..payload.len()].copy_from_slice(payload);
                    });
                    claim.publish();
                    self.emitted += 1;
                    return Ok(());
                }
                Err(ClaimError::Full { .. }) => {
                    if !stalled {
                        stalled = true;
                        self.stalls += 1;
                    }
                    let waited = core.outbox_space.wait_until(None, || {
                        if core.terminating.load(Ordering::Acquire) {
                            Some(false)
                        } else {
                            (outbox.free() > 0).then_some(true)
                        }
                    });
                    if waited == Some(false) {
                        self.stranded.push((tag, corr, payload.to_vec()));
                        return Err(EmitError::Terminating);
                    }
                }
                Err(ClaimError::Closed | ClaimError::TooMany) => {
                    unreachable!("the output ring is never closed and a claim of one always fits")
                }
            }
        }
    }

    /// The kernel's id (the sender id in the tags of what it emits).
    pub fn kernel_id(&self) -> u32 {
        self.core.id
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
    /// Where it runs.
    pub placement: Placement,
    /// Most messages handled per scheduling turn (fairness between pooled kernels).
    pub quantum: u32,
    /// How long lifecycle calls wait for an acknowledgement.
    pub command_timeout: Duration,
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
    stranded: Vec<(u32, [u32; 2], Vec<u8>)>,
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
    /// Notified when output slots are freed (a blocked emit waits on it).
    outbox_space: Signal,
    /// Notified when the kernel publishes a state.
    state_changed: Signal,
    /// Notified when a dedicated kernel has something to do.
    work: Signal,
}

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
    ) -> Self {
        let inbox_ring = Arc::new(HostRing::new(config.inbox));
        let lane_ring = Arc::new(HostRing::new(config.inbox));
        let outbox_ring = config.outbox.map(|layout| Arc::new(HostRing::new(layout)));
        let control = Arc::new(HostControl::new(id));
        let exec = Exec {
            inbox: Consumer::new(inbox_ring.clone()),
            lane: Consumer::new(lane_ring.clone()),
            lane_first: false,
            control: KernelSide::new(control.clone()),
            handler,
            state: State::Launched,
            stranded: Vec::new(),
        };
        Self {
            id,
            inbox: Producer::new(inbox_ring),
            lane: Producer::new(lane_ring),
            lane_taken: AtomicBool::new(false),
            outbox: outbox_ring.clone().map(Producer::new),
            outbox_rx: CachePadded::new(Mutex::new(outbox_ring.map(Consumer::new))),
            control: HostSide::new(control),
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
            outbox_space: Signal::new(),
            state_changed: Signal::new(),
            work: Signal::new(),
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
        crate::metrics::KernelSample {
            name: self.config.name.clone(),
            id: self.id,
            state: self.state(),
            counters: self.counters(),
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
        let sample = self.sample();
        let now = std::time::Instant::now();
        let mut watchdog = self.watchdog.lock();
        let watchdog = watchdog.get_or_insert_with(|| crate::health::Watchdog::new(&sample, now));
        crate::health::evaluate(&sample, policy, watchdog, now)
    }

    /// Bytes of ring memory this kernel holds.
    pub fn ring_bytes(&self) -> usize {
        Self::ring_bytes_for(&self.config)
    }

    /// The state the kernel last published.
    pub fn state(&self) -> State {
        self.control.state()
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
                let tag = make_tag(KIND_MESSAGE, crate::abi::HOST_SENDER_ID);
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
                out = Some(f(slot));
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
        if self.stopped.load(Ordering::Acquire) && rx.is_empty() {
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
        self.outbox_space.notify();
        // ORDERING: the light fence inside `notify` above orders our release of the slot
        // before this load; pairs with the kernel's store of `output_stalled`, heavy fence
        // and re-check of free space in `run_batch`.
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
                // `scheduled`; pairs with the heavy fence after `scheduled = false` and
                // the re-check in `run_scheduled` (Dekker: one of us sees the other).
                asym::light();
                if !self.scheduled.load(Ordering::Relaxed)
                    && !self.scheduled.swap(true, Ordering::AcqRel)
                {
                    self.pool.push(self.clone());
                }
            }
            Placement::Dedicated => self.work.notify(),
        }
    }

    /// Wakes a dedicated kernel's thread (it re-checks its work and the pool's shutdown).
    pub(crate) fn wake_thread(&self) {
        self.work.notify();
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
        self.inbox.has_published() || self.lane.has_published() || state == State::Draining
    }

    /// Runs the kernel on a pool worker: turns while it has work, requeued behind other
    /// waiting kernels after each (fairness); while no other kernel waits it lingers a
    /// little for the next message before going idle.
    pub(crate) fn run_scheduled(self: &Arc<Self>) {
        let mut exec = self.exec.lock();
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
                return;
            }
        }
        drop(exec);
        self.scheduled.store(false, Ordering::SeqCst);
        // ORDERING: heavy fence between the store above and the loads in `has_work`;
        // pairs with the light fence in `wake` so a message published meanwhile is never
        // left unscheduled. Paid once per idle transition, not per message.
        asym::heavy();
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
            if self.step(&mut exec) == State::Terminated && !self.has_work() {
                return;
            }
            if self.pool.is_shut_down() {
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
    fn step(&self, exec: &mut Exec) -> State {
        self.apply_commands(exec);
        if lifecycle::processes_messages(exec.state) {
            self.run_batch(exec);
            if exec.state == State::Draining && exec.inbox.is_empty() && exec.lane.is_empty() {
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
            // Receivers waiting for output learn that no more will come.
            self.outbox_items.notify();
            self.inbox_space.notify();
        }
    }

    fn run_batch(&self, exec: &mut Exec) {
        let mut budget = self.config.quantum;
        if let Some(outbox) = &self.outbox {
            let mut free = outbox.free_up_to(self.config.quantum);
            if free == 0 {
                self.output_stalled.store(true, Ordering::SeqCst);
                // ORDERING: store, heavy fence, then the re-check; pairs with the light
                // fence in `after_output_consumed` (Dekker): either the receiver sees the
                // flag or we see the space it freed.
                asym::heavy();
                free = outbox.free();
                if free == 0 {
                    exec.control.count(Counters {
                        stalls: 1,
                        ..Counters::default()
                    });
                    return;
                }
                self.output_stalled.store(false, Ordering::Relaxed);
            }
            budget = budget.min(free);
        }
        let Exec {
            inbox,
            lane,
            lane_first,
            control,
            handler,
            stranded,
            ..
        } = exec;
        let mut emitter = Emitter {
            core: self,
            emitted: 0,
            stalls: 0,
            stranded,
        };
        let mut handled = 0u32;
        let mut errors = 0u32;
        let mut panic: Option<String> = None;
        let mut on_slot = |slot: SlotRef<'_>| {
            if panic.is_some() || self.terminating.load(Ordering::Relaxed) {
                return Step::Keep;
            }
            // One beat per message, so a slow but live handler never looks stalled.
            control.beat();
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
        let (first, second) = if *lane_first {
            (lane, inbox)
        } else {
            (inbox, lane)
        };
        let mut released = first.consume(budget, &mut on_slot);
        released += second.consume(budget - released.min(budget), &mut on_slot);
        let (emitted, stalls) = (emitter.emitted, emitter.stalls);
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
        }
        if emitted > 0 {
            self.outbox_items.notify();
        }
        if let Some(reason) = panic {
            tracing::error!(kernel = %self.config.name, %reason, "handler panicked; kernel faulted");
            *self.fault.lock() = Some(format!("handler panicked: {reason}"));
            exec.control.set_error(fault::HANDLER_PANIC);
            self.publish_state(exec, lifecycle::transition(exec.state, Event::Fault));
            // Senders now get `Faulted`; messages already queued wait for `terminate`.
            self.inbox.close();
            self.lane.close();
        }
    }
}

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

pub use lane::ExclusiveLane;
