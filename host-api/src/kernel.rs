//! [`Kernel`]: the typed handle to a launched kernel, and [`Sender`] with its
//! backpressure policy.

use std::future::poll_fn;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gyre_runtime::abi::State;
use gyre_runtime::backend::cpu::{
    ExclusiveLane, KernelCore, OutputConsumer, RecvFailure, SendFailure,
};
use gyre_runtime::health::{Health, HealthPolicy};
use gyre_runtime::ring::SlotRef;

use crate::report::Report;
use crate::spec::{join, split, Message};
use crate::{Error, SendError};

/// What a [`Sender`] does when the inbox is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backpressure {
    /// Wait until there is room (spin, yield, then park). The default.
    #[default]
    Block,
    /// Fail at once with [`Error::Full`], handing the message back.
    Fail,
    /// Wait up to this long, then fail with [`Error::Timeout`], handing the message back.
    Timeout(Duration),
}

/// A kernel's counters and gauges, read from its control block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelMetrics {
    /// The kernel.
    pub kernel: String,
    /// Its state.
    pub state: State,
    /// Messages taken from its inbox.
    pub received: u64,
    /// Messages its handler finished.
    pub processed: u64,
    /// Messages it emitted.
    pub emitted: u64,
    /// Times its output ring was full.
    pub stalls: u64,
    /// Messages its handler failed.
    pub errors: u64,
    /// Messages waiting in its inbox now.
    pub inbox_len: u32,
    /// Its heartbeat counter.
    pub heartbeat: u32,
}

/// A launched kernel taking `In` messages and emitting `Out` messages to the host.
///
/// Cheap to clone; every clone talks to the same kernel. Sending is safe from many
/// threads at once; receiving too (receivers take turns).
///
/// ```
/// use gyre::{KernelSpec, Runtime};
/// use std::time::Duration;
///
/// let runtime = Runtime::builder().workers(1).build()?;
/// let doubler = runtime.launch(KernelSpec::<u32, u32>::new("double").cpu(|x, out| Ok(out.emit(x * 2)?)))?;
/// doubler.activate()?;
/// doubler.send(21)?;
/// assert_eq!(doubler.recv()?, 42);
/// let report = doubler.drain(Duration::from_secs(5))?;
/// assert_eq!(report.processed, 1);
/// # Ok::<(), gyre::Error>(())
/// ```
pub struct Kernel<In, Out> {
    pub(crate) core: Arc<KernelCore>,
    pub(crate) _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> Clone for Kernel<In, Out> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
            _types: PhantomData,
        }
    }
}

impl<In, Out> std::fmt::Debug for Kernel<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("name", &self.name())
            .field("state", &self.core.state())
            .finish()
    }
}

pub(crate) fn read<T: Message>(slot: SlotRef<'_>) -> T {
    bytemuck::pod_read_unaligned(&slot.payload[..std::mem::size_of::<T>()])
}

impl<In, Out> Kernel<In, Out> {
    /// The kernel's name.
    pub fn name(&self) -> &str {
        &self.core.config().name
    }
}

impl<In: Message, Out: Message> Kernel<In, Out> {
    /// The kernel's id (the sender id in the tags of what it emits).
    pub fn id(&self) -> u32 {
        self.core.id()
    }

    /// The state the kernel last published.
    pub fn state(&self) -> State {
        self.core.state()
    }

    /// Its fault, if it faulted.
    pub fn fault(&self) -> Option<String> {
        self.core.fault()
    }

    /// Counters and gauges from the control block.
    pub fn metrics(&self) -> KernelMetrics {
        let counters = self.core.counters();
        KernelMetrics {
            kernel: self.name().to_owned(),
            state: self.core.state(),
            received: counters.received,
            processed: counters.processed,
            emitted: counters.emitted,
            stalls: counters.stalls,
            errors: counters.errors,
            inbox_len: self.core.inbox_len(),
            heartbeat: self.core.heartbeat(),
        }
    }

    /// Restarts its fault policy made over its life.
    pub fn restarts(&self) -> u64 {
        self.core.restarts()
    }

    /// End-to-end latency quantiles of requests answered through this kernel (see
    /// [`crate::Requester`]), from its HDR histogram; `None` before the first.
    pub fn latency(&self) -> Option<gyre_runtime::metrics::LatencySummary> {
        self.core.latency()
    }

    /// The kernel's health under the default [`HealthPolicy`] (watchdog 1 s, inbox 80 %,
    /// error rate 10 %). The watchdog compares the heartbeat with what the previous call
    /// saw, so call it periodically: a kernel with messages waiting whose heartbeat stood
    /// still for longer than the watchdog timeout between two calls is reported unhealthy.
    pub fn health(&self) -> Health {
        self.core.health(&HealthPolicy::default())
    }

    /// The kernel's health under `policy` (see [`Kernel::health`]).
    pub fn health_with(&self, policy: &HealthPolicy) -> Health {
        self.core.health(policy)
    }

    // ---- lifecycle --------------------------------------------------------------------

    /// Starts (or resumes) processing. Messages sent before are processed in order.
    ///
    /// # Errors
    /// [`Error::Lifecycle`] if the kernel is draining, terminated or faulted;
    /// [`Error::Unresponsive`] if it does not acknowledge in time.
    pub fn activate(&self) -> Result<(), Error> {
        self.core
            .set_active(true)
            .map(drop)
            .map_err(|e| Error::from_command(self.name(), e))
    }

    /// Stops processing; messages keep queuing (up to the inbox capacity), none lost.
    ///
    /// # Errors
    /// As [`Kernel::activate`].
    pub fn deactivate(&self) -> Result<(), Error> {
        self.core
            .set_active(false)
            .map(drop)
            .map_err(|e| Error::from_command(self.name(), e))
    }

    /// Refuses new messages (senders get [`Error::Draining`]), processes everything
    /// queued (a paused kernel resumes for it), then terminates. Outputs stay
    /// receivable. If `timeout` expires first the kernel is terminated and what is left
    /// comes back in the report; the call returns within `timeout` plus about a second
    /// whatever the handler does (a handler still running then is abandoned).
    ///
    /// A faulted kernel (faulted before or during the drain) is terminated: the report
    /// carries its `fault` and hands back its undelivered messages, the one its handler
    /// panicked on first. Once the kernel's runtime is gone (shut down or dropped), the
    /// report hands back what the runtime kept for this kernel's handles (see
    /// [`crate::Runtime`]).
    ///
    /// # Errors
    /// [`Error::Lifecycle`] when draining twice or draining a kernel terminated while
    /// its runtime lives; [`Error::Unresponsive`] when the kernel waited for a worker
    /// thread past the timeout (nothing is lost: the next drain or terminate hands back
    /// what it holds).
    pub fn drain(&self, timeout: Duration) -> Result<Report<In, Out>, Error> {
        let mut undelivered = Vec::new();
        let mut outputs = Vec::new();
        let summary = self
            .core
            .drain(timeout, &mut |s| undelivered.push(read(s)), &mut |s| {
                outputs.push(read(s));
            })
            .map_err(|e| Error::from_command(self.name(), e))?;
        Ok(self.report(summary, undelivered, outputs))
    }

    /// Stops after the message in hand and hands back every message still in its inbox
    /// and host-bound output. Returns within the command timeout whatever the handler
    /// does: a handler that has not returned by then is abandoned (`abandoned: true`; the
    /// first undelivered message is the one it held). Once the kernel's runtime is gone
    /// (shut down or dropped), the report hands back what the runtime kept for this
    /// kernel's handles (see [`crate::Runtime`]) instead of failing.
    ///
    /// # Errors
    /// [`Error::Lifecycle`] when already terminated while its runtime lives;
    /// [`Error::Unresponsive`] when no handler of it ran within the command timeout (it
    /// waited for a worker thread; nothing is lost: the next drain or terminate hands
    /// back what it holds).
    pub fn terminate(&self) -> Result<Report<In, Out>, Error> {
        let mut undelivered = Vec::new();
        let mut outputs = Vec::new();
        let summary = self
            .core
            .terminate(&mut |s| undelivered.push(read(s)), &mut |s| {
                outputs.push(read(s));
            })
            .map_err(|e| Error::from_command(self.name(), e))?;
        Ok(self.report(summary, undelivered, outputs))
    }

    fn report(
        &self,
        summary: gyre_runtime::backend::DrainSummary,
        undelivered: Vec<In>,
        undelivered_outputs: Vec<Out>,
    ) -> Report<In, Out> {
        Report {
            kernel: self.name().to_owned(),
            processed: summary.processed,
            emitted: summary.emitted,
            timed_out: summary.timed_out,
            final_state: summary.final_state.unwrap_or(State::Terminated),
            fault: summary.fault,
            abandoned: summary.abandoned,
            undelivered,
            undelivered_outputs,
        }
    }

    // ---- sending ------------------------------------------------------------------------

    /// The exclusive receiving end of the kernel's host-bound output, for one receiving
    /// thread: it receives without taking a lock per message. While it lives,
    /// [`Kernel::recv`] fails with [`Error::ReceiverTaken`] and `terminate` leaves the
    /// output ring to it; dropping it gives the output back to the kernel handle.
    ///
    /// # Errors
    /// [`Error::NoHostOutput`], or [`Error::ReceiverTaken`] when one exists already.
    pub fn receiver(&self) -> Result<Receiver<Out>, Error> {
        let rx = self.core.take_output().map_err(|f| self.recv_error(f))?;
        Ok(Receiver {
            core: self.core.clone(),
            rx: Some(rx),
            _types: PhantomData,
        })
    }

    /// The exclusive single-producer sender of this kernel: it writes into a lane of the
    /// inbox that has no other producer, so a send needs no compare-and-swap. Shared
    /// senders keep working beside it; ordering holds per sender.
    ///
    /// # Errors
    /// [`Error::ExclusiveSenderTaken`] when one exists already.
    pub fn exclusive_sender(&self) -> Result<ExclusiveSender<In>, Error> {
        let lane = self
            .core
            .take_lane()
            .ok_or_else(|| Error::ExclusiveSenderTaken {
                kernel: self.name().to_owned(),
            })?;
        Ok(ExclusiveSender {
            core: lane.core().clone(),
            lane,
            _types: PhantomData,
        })
    }

    /// A sender with its own backpressure policy.
    pub fn sender(&self) -> Sender<In> {
        Sender {
            core: self.core.clone(),
            policy: Backpressure::Block,
            _types: PhantomData,
        }
    }

    /// Sends, waiting while the inbox is full.
    ///
    /// # Errors
    /// [`SendError`] with the message when the kernel is draining, terminated or faulted.
    pub fn send(&self, message: In) -> Result<(), SendError<In>> {
        send_with(&self.core, message, 0, None)
    }

    /// Sends with a correlation id, waiting while the inbox is full.
    ///
    /// # Errors
    /// As [`Kernel::send`].
    pub fn send_with_corr(&self, message: In, corr: u64) -> Result<(), SendError<In>> {
        send_with(&self.core, message, corr, None)
    }

    /// Sends without waiting.
    ///
    /// # Errors
    /// [`Error::Full`] when the inbox is full, or as [`Kernel::send`]; the message comes back.
    pub fn try_send(&self, message: In) -> Result<(), SendError<In>> {
        try_send(&self.core, message, 0)
    }

    /// Sends, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// [`Error::Timeout`] when no room freed in time, or as [`Kernel::send`].
    pub fn send_timeout(&self, message: In, timeout: Duration) -> Result<(), SendError<In>> {
        send_with(&self.core, message, 0, Some(Instant::now() + timeout))
    }

    /// Sends from async code: waits for room without blocking the executor thread.
    ///
    /// # Cancel safety
    /// Cancel-safe: if the future is dropped before it completes, the message was not sent.
    ///
    /// # Errors
    /// As [`Kernel::send`].
    pub async fn send_async(&self, message: In) -> Result<(), SendError<In>> {
        send_async(&self.core, message, 0).await
    }

    // ---- receiving ----------------------------------------------------------------------

    /// Receives the next host-bound message, waiting for one.
    ///
    /// # Errors
    /// [`Error::NoHostOutput`] when the spec has no host output; [`Error::Terminated`]
    /// (or `Faulted`) when the kernel stopped and everything it emitted was received.
    pub fn recv(&self) -> Result<Out, Error> {
        self.recv_within(None).map(|(message, _)| message)
    }

    /// Receives the next message with its correlation id, waiting for one.
    ///
    /// # Errors
    /// As [`Kernel::recv`].
    pub fn recv_with_corr(&self) -> Result<(Out, u64), Error> {
        self.recv_within(None)
    }

    /// Receives without waiting; `Ok(None)` when nothing is there yet.
    ///
    /// # Errors
    /// As [`Kernel::recv`].
    pub fn try_recv(&self) -> Result<Option<Out>, Error> {
        try_recv_shared(&self.core)
    }

    /// Receives, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] when nothing came in time, or as [`Kernel::recv`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Out, Error> {
        self.recv_within(Some(timeout)).map(|(message, _)| message)
    }

    /// Receives from async code without blocking the executor thread.
    ///
    /// # Cancel safety
    /// Cancel-safe: a message is taken only in the poll that returns it.
    ///
    /// # Errors
    /// As [`Kernel::recv`].
    pub async fn recv_async(&self) -> Result<Out, Error> {
        let core = &self.core;
        let result = poll_fn(|cx| {
            core.outbox_items()
                .poll_until(cx, || match core.try_recv(|s| read::<Out>(s)) {
                    Err(RecvFailure::Empty) => None,
                    other => Some(other),
                })
        })
        .await;
        result.map_err(|failure| self.recv_error(failure))
    }

    fn recv_within(&self, timeout: Option<Duration>) -> Result<(Out, u64), Error> {
        recv_shared(&self.core, timeout)
    }

    fn recv_error(&self, failure: RecvFailure) -> Error {
        recv_error(&self.core, failure)
    }
}

/// A handle that sends to one kernel with its own [`Backpressure`] policy.
pub struct Sender<In> {
    core: Arc<KernelCore>,
    policy: Backpressure,
    _types: PhantomData<fn(In)>,
}

impl<In> Clone for Sender<In> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
            policy: self.policy,
            _types: PhantomData,
        }
    }
}

impl<In> std::fmt::Debug for Sender<In> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("kernel", &self.core.config().name)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<In: Message> Sender<In> {
    pub(crate) fn for_core(core: Arc<KernelCore>) -> Self {
        Self {
            core,
            policy: Backpressure::Block,
            _types: PhantomData,
        }
    }

    pub(crate) fn core(&self) -> &Arc<KernelCore> {
        &self.core
    }

    /// This sender with another policy.
    #[must_use]
    pub fn backpressure(mut self, policy: Backpressure) -> Self {
        self.policy = policy;
        self
    }

    /// The policy.
    pub fn policy(&self) -> Backpressure {
        self.policy
    }

    /// Sends according to the policy.
    ///
    /// # Errors
    /// [`Error::Full`] (policy `Fail`), [`Error::Timeout`] (policy `Timeout`), or the
    /// kernel no longer accepts messages; the message always comes back.
    pub fn send(&self, message: In) -> Result<(), SendError<In>> {
        self.send_with_corr(message, 0)
    }

    /// Sends with a correlation id according to the policy.
    ///
    /// # Errors
    /// As [`Sender::send`].
    pub fn send_with_corr(&self, message: In, corr: u64) -> Result<(), SendError<In>> {
        match self.policy {
            Backpressure::Block => send_with(&self.core, message, corr, None),
            Backpressure::Fail => try_send(&self.core, message, corr),
            Backpressure::Timeout(t) => {
                send_with(&self.core, message, corr, Some(Instant::now() + t))
            }
        }
    }

    /// Sends without waiting, whatever the policy.
    ///
    /// # Errors
    /// As [`Kernel::try_send`].
    pub fn try_send(&self, message: In) -> Result<(), SendError<In>> {
        try_send(&self.core, message, 0)
    }

    /// Sends with a correlation id from async code (see [`Sender::send_async`]).
    ///
    /// # Errors
    /// As [`Sender::send`].
    pub async fn send_async_with_corr(&self, message: In, corr: u64) -> Result<(), SendError<In>> {
        match self.policy {
            Backpressure::Fail => try_send(&self.core, message, corr),
            Backpressure::Block | Backpressure::Timeout(_) => {
                send_async(&self.core, message, corr).await
            }
        }
    }

    /// Sends from async code according to the policy (`Timeout` acts as `Block`; wrap
    /// the future in your runtime's timeout).
    ///
    /// # Errors
    /// As [`Sender::send`].
    pub async fn send_async(&self, message: In) -> Result<(), SendError<In>> {
        match self.policy {
            Backpressure::Fail => try_send(&self.core, message, 0),
            Backpressure::Block | Backpressure::Timeout(_) => {
                send_async(&self.core, message, 0).await
            }
        }
    }
}

fn send_failure<In>(core: &KernelCore, failure: SendFailure, message: In) -> SendError<In> {
    let kernel = core.config().name.clone();
    let error = match failure {
        SendFailure::Full => Error::Full { kernel },
        SendFailure::Closed(_) if core.runtime_gone() => Error::RuntimeGone { kernel },
        SendFailure::Closed(state) => Error::stopped(&kernel, state, core.fault()),
        SendFailure::TooLarge { len, max } => Error::MessageTooLarge {
            type_name: std::any::type_name::<In>(),
            size: len,
            slot_bytes: core.config().inbox.slot_bytes(),
            max,
            suggested: (len as u32 + gyre_runtime::abi::SLOT_HEADER_BYTES).next_power_of_two(),
        },
    };
    SendError { error, message }
}

fn try_send<In: Message>(
    core: &Arc<KernelCore>,
    message: In,
    corr: u64,
) -> Result<(), SendError<In>> {
    core.try_send(split(corr), bytemuck::bytes_of(&message))
        .map_err(|f| send_failure(core, f, message))
}

fn send_with<In: Message>(
    core: &Arc<KernelCore>,
    message: In,
    corr: u64,
    deadline: Option<Instant>,
) -> Result<(), SendError<In>> {
    wait_send(core, message, corr, deadline, |corr, bytes| {
        core.try_send(corr, bytes)
    })
}

/// Tries `attempt` once without reading the clock, then waits on the kernel's inbox
/// space signal (spin, yield, park) while it reports `Full`, until `deadline`.
fn wait_send<In: Message>(
    core: &KernelCore,
    message: In,
    corr: u64,
    deadline: Option<Instant>,
    mut attempt: impl FnMut([u32; 2], &[u8]) -> Result<(), SendFailure>,
) -> Result<(), SendError<In>> {
    let bytes = bytemuck::bytes_of(&message);
    let corr = split(corr);
    match attempt(corr, bytes) {
        Ok(()) => return Ok(()),
        Err(SendFailure::Full) => {}
        Err(failure) => return Err(send_failure(core, failure, message)),
    }
    let start = Instant::now();
    let result = core
        .inbox_space()
        .wait_until(deadline, || match attempt(corr, bytes) {
            Err(SendFailure::Full) => None,
            other => Some(other),
        });
    match result {
        Some(Ok(())) => Ok(()),
        Some(Err(failure)) => Err(send_failure(core, failure, message)),
        None => Err(SendError {
            error: Error::Timeout {
                kernel: core.config().name.clone(),
                after: start.elapsed(),
            },
            message,
        }),
    }
}

async fn send_async<In: Message>(
    core: &Arc<KernelCore>,
    message: In,
    corr: u64,
) -> Result<(), SendError<In>> {
    let bytes = bytemuck::bytes_of(&message);
    let corr_words = split(corr);
    let result = poll_fn(|cx| {
        core.inbox_space()
            .poll_until(cx, || match core.try_send(corr_words, bytes) {
                Err(SendFailure::Full) => None,
                other => Some(other),
            })
    })
    .await;
    result.map_err(|failure| send_failure(core, failure, message))
}

/// Tries `attempt` once without reading the clock, then waits on the kernel's output
/// signal (spin, yield, park) until it yields something other than `Empty` or the
/// timeout passes.
pub(crate) fn wait_recv<T>(
    core: &KernelCore,
    timeout: Option<Duration>,
    mut attempt: impl FnMut() -> Result<T, RecvFailure>,
) -> Result<T, Error> {
    match attempt() {
        Err(RecvFailure::Empty) => {}
        Ok(message) => return Ok(message),
        Err(failure) => return Err(recv_error(core, failure)),
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let result = core
        .outbox_items()
        .wait_until(deadline, || match attempt() {
            Err(RecvFailure::Empty) => None,
            other => Some(other),
        });
    match result {
        Some(Ok(message)) => Ok(message),
        Some(Err(failure)) => Err(recv_error(core, failure)),
        None => Err(Error::Timeout {
            kernel: core.config().name.clone(),
            after: timeout.unwrap_or_default(),
        }),
    }
}

/// Takes the next host-bound message of `core` through its shared receiving end, without
/// waiting: `Ok(None)` when nothing is there yet.
pub(crate) fn try_recv_shared<Out: Message>(core: &Arc<KernelCore>) -> Result<Option<Out>, Error> {
    match core.try_recv(|s| read::<Out>(s)) {
        Ok(message) => Ok(Some(message)),
        Err(RecvFailure::Empty) => Ok(None),
        Err(failure) => Err(recv_error(core, failure)),
    }
}

/// Receives the next host-bound message of `core` with its correlation id through its
/// shared receiving end, waiting at most `timeout` (forever with `None`).
pub(crate) fn recv_shared<Out: Message>(
    core: &Arc<KernelCore>,
    timeout: Option<Duration>,
) -> Result<(Out, u64), Error> {
    wait_recv(core, timeout, || {
        core.try_recv(|s| (read::<Out>(s), join(s.corr)))
    })
}

pub(crate) fn recv_error(core: &KernelCore, failure: RecvFailure) -> Error {
    let kernel = core.config().name.clone();
    match failure {
        RecvFailure::NoOutput => Error::NoHostOutput { kernel },
        RecvFailure::Closed(_) if core.runtime_gone() => Error::RuntimeGone { kernel },
        RecvFailure::Closed(state) => Error::stopped(&kernel, state, core.fault()),
        RecvFailure::Taken => Error::ReceiverTaken { kernel },
        RecvFailure::Empty => unreachable!("empty is handled by the callers"),
    }
}

/// The exclusive receiving end of a kernel's host-bound output (see [`Kernel::receiver`]).
pub struct Receiver<Out> {
    core: Arc<KernelCore>,
    rx: Option<OutputConsumer>,
    _types: PhantomData<fn() -> Out>,
}

impl<Out> std::fmt::Debug for Receiver<Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("kernel", &self.core.config().name)
            .finish_non_exhaustive()
    }
}

impl<Out> Drop for Receiver<Out> {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            self.core.return_output(rx);
        }
    }
}

impl<Out: Message> Receiver<Out> {
    fn within(&mut self, timeout: Option<Duration>) -> Result<(Out, u64), Error> {
        let core = &self.core;
        let rx = self.rx.as_mut().expect("the consumer is held until drop");
        wait_recv(core, timeout, || {
            core.try_recv_from(rx, |s| (read::<Out>(s), join(s.corr)))
        })
    }

    /// Receives the next message, waiting for one.
    ///
    /// # Errors
    /// [`Error::Terminated`] (or `Faulted`) when the kernel stopped and everything it
    /// emitted was received.
    pub fn recv(&mut self) -> Result<Out, Error> {
        self.within(None).map(|(message, _)| message)
    }

    /// Receives the next message with its correlation id, waiting for one.
    ///
    /// # Errors
    /// As [`Receiver::recv`].
    pub fn recv_with_corr(&mut self) -> Result<(Out, u64), Error> {
        self.within(None)
    }

    /// Receives, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`], or as [`Receiver::recv`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Out, Error> {
        self.within(Some(timeout)).map(|(message, _)| message)
    }

    /// Receives without waiting; `Ok(None)` when nothing is there yet.
    ///
    /// # Errors
    /// As [`Receiver::recv`].
    pub fn try_recv(&mut self) -> Result<Option<Out>, Error> {
        let rx = self.rx.as_mut().expect("the consumer is held until drop");
        match self.core.try_recv_from(rx, |s| read::<Out>(s)) {
            Ok(message) => Ok(Some(message)),
            Err(RecvFailure::Empty) => Ok(None),
            Err(failure) => Err(recv_error(&self.core, failure)),
        }
    }

    /// Receives from async code without blocking the executor thread.
    ///
    /// # Cancel safety
    /// Cancel-safe: a message is taken only in the poll that returns it.
    ///
    /// # Errors
    /// As [`Receiver::recv`].
    pub async fn recv_async(&mut self) -> Result<Out, Error> {
        let core = &self.core;
        let rx = self.rx.as_mut().expect("the consumer is held until drop");
        let result = poll_fn(|cx| {
            core.outbox_items().poll_until(cx, || {
                match core.try_recv_from(rx, |s| read::<Out>(s)) {
                    Err(RecvFailure::Empty) => None,
                    other => Some(other),
                }
            })
        })
        .await;
        result.map_err(|failure| recv_error(&self.core, failure))
    }
}

/// The exclusive single-producer sender of a kernel (see [`Kernel::exclusive_sender`]).
/// It waits while the lane is full (spin, yield, park), like [`Kernel::send`].
pub struct ExclusiveSender<In> {
    lane: ExclusiveLane,
    /// The lane's kernel, held apart so it can be borrowed beside `&mut lane`.
    core: Arc<KernelCore>,
    _types: PhantomData<fn(In)>,
}

impl<In> std::fmt::Debug for ExclusiveSender<In> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExclusiveSender")
            .field("kernel", &self.core.config().name)
            .finish_non_exhaustive()
    }
}

impl<In: Message> ExclusiveSender<In> {
    fn send_inner(
        &mut self,
        message: In,
        corr: u64,
        deadline: Option<Instant>,
    ) -> Result<(), SendError<In>> {
        let lane = &mut self.lane;
        wait_send(&self.core, message, corr, deadline, |corr, bytes| {
            lane.try_send(corr, bytes)
        })
    }

    /// Sends, waiting while the lane is full.
    ///
    /// # Errors
    /// [`SendError`] with the message when the kernel is draining, terminated or faulted.
    pub fn send(&mut self, message: In) -> Result<(), SendError<In>> {
        self.send_inner(message, 0, None)
    }

    /// Sends with a correlation id, waiting while the lane is full.
    ///
    /// # Errors
    /// As [`ExclusiveSender::send`].
    pub fn send_with_corr(&mut self, message: In, corr: u64) -> Result<(), SendError<In>> {
        self.send_inner(message, corr, None)
    }

    /// Sends, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// [`Error::Timeout`], or as [`ExclusiveSender::send`].
    pub fn send_timeout(&mut self, message: In, timeout: Duration) -> Result<(), SendError<In>> {
        self.send_inner(message, 0, Some(Instant::now() + timeout))
    }

    /// Sends without waiting.
    ///
    /// # Errors
    /// [`Error::Full`] when the lane is full, or as [`ExclusiveSender::send`].
    pub fn try_send(&mut self, message: In) -> Result<(), SendError<In>> {
        match self.lane.try_send([0, 0], bytemuck::bytes_of(&message)) {
            Ok(()) => Ok(()),
            Err(f) => Err(send_failure(&self.core, f, message)),
        }
    }

    /// Sends from async code: waits for room without blocking the executor thread.
    ///
    /// # Cancel safety
    /// Cancel-safe: if the future is dropped before it completes, the message was not sent.
    ///
    /// # Errors
    /// As [`ExclusiveSender::send`].
    pub async fn send_async(&mut self, message: In) -> Result<(), SendError<In>> {
        let core = &self.core;
        let bytes = bytemuck::bytes_of(&message);
        let lane = &mut self.lane;
        let result = poll_fn(|cx| {
            core.inbox_space()
                .poll_until(cx, || match lane.try_send([0, 0], bytes) {
                    Err(SendFailure::Full) => None,
                    other => Some(other),
                })
        })
        .await;
        result.map_err(|failure| send_failure(core, failure, message))
    }
}
