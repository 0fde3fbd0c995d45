//! [`Kernel`]: the typed handle to a launched kernel, on any backend.

use std::future::poll_fn;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gyre_runtime::abi::{Command, State};
use gyre_runtime::backend::group::KernelReport;
use gyre_runtime::health::{Health, HealthPolicy};

use crate::backing::{read, Backing, DeviceKernel};
use crate::batch::{self, To, Wait};
use crate::report::Report;
use crate::sender::{send_async, wait_send};
use crate::spec::{join, split, Message};
use crate::{Error, ExclusiveSender, Receiver, SendBatchError, SendError, Sender};

/// A kernel's counters and gauges, read from its control block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelMetrics {
    /// The kernel.
    pub kernel: String,
    /// The backend it runs on: `cpu`, `cuda`, `cuda-emulated` or `wgpu`.
    pub backend: &'static str,
    /// The ordinal of the device it runs on, on a backend that numbers its devices
    /// (CUDA); `None` on the CPU and wgpu.
    pub device: Option<u32>,
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

/// A launched kernel taking `In` messages and emitting `Out` messages to the host, on
/// whichever backend its group runs: the same calls on the CPU, CUDA and wgpu.
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
    pub(crate) backing: Backing,
    pub(crate) _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> Clone for Kernel<In, Out> {
    fn clone(&self) -> Self {
        Self {
            backing: self.backing.clone(),
            _types: PhantomData,
        }
    }
}

impl<In, Out> std::fmt::Debug for Kernel<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("name", &self.name())
            .field("backend", &self.backing.backend())
            .finish_non_exhaustive()
    }
}

impl<In, Out> Kernel<In, Out> {
    pub(crate) fn over(backing: Backing) -> Self {
        Self {
            backing,
            _types: PhantomData,
        }
    }

    /// The kernel's name.
    pub fn name(&self) -> &str {
        self.backing.name()
    }

    /// The backend it runs on: `cpu`, `cuda`, `cuda-emulated` or `wgpu`.
    pub fn backend(&self) -> &'static str {
        self.backing.backend()
    }

    /// The ordinal of the device it runs on, on a backend that numbers its devices
    /// (CUDA: see [`crate::GroupBuilder::device`]); `None` on the CPU and wgpu.
    pub fn device(&self) -> Option<u32> {
        self.backing.device()
    }
}

/// The typed report of one kernel of a device group.
pub(crate) fn device_report<In: Message, Out: Message>(
    d: &DeviceKernel,
    entry: &KernelReport,
    timed_out: bool,
) -> Report<In, Out> {
    Report {
        kernel: entry.name.clone(),
        processed: entry.counters.processed,
        emitted: entry.counters.emitted,
        timed_out,
        final_state: entry.state,
        fault: (entry.state == State::Faulted)
            .then(|| d.group.group.fault())
            .flatten(),
        abandoned: false,
        undelivered: entry.undelivered.iter().map(|m| read(&m.payload)).collect(),
        undelivered_outputs: entry
            .undelivered_outputs
            .iter()
            .map(|(_, m)| read(&m.payload))
            .collect(),
    }
}

impl<In: Message, Out: Message> Kernel<In, Out> {
    /// The kernel's id (the sender id in the tags of what it emits).
    pub fn id(&self) -> u32 {
        match &self.backing {
            Backing::Cpu(core) => core.kernel_id(),
            Backing::Device(d) => d.group.group.kernel_id(d.k),
        }
    }

    /// The state the kernel last published.
    pub fn state(&self) -> State {
        match &self.backing {
            Backing::Cpu(core) => core.state(),
            Backing::Device(d) => d.group.group.state(d.k),
        }
    }

    /// Its fault, if it faulted.
    pub fn fault(&self) -> Option<String> {
        match &self.backing {
            Backing::Cpu(core) => core.fault(),
            Backing::Device(d) => (d.group.group.state(d.k) == State::Faulted)
                .then(|| d.group.group.fault())
                .flatten(),
        }
    }

    /// Counters and gauges from the control block.
    pub fn metrics(&self) -> KernelMetrics {
        let (state, counters, inbox_len, heartbeat) = match &self.backing {
            Backing::Cpu(core) => (
                core.state(),
                core.counters(),
                core.inbox_len(),
                core.heartbeat(),
            ),
            Backing::Device(d) => {
                let s = d.group.group.sample(d.k);
                (s.state, s.counters, s.inbox_depth, s.heartbeat)
            }
        };
        KernelMetrics {
            kernel: self.name().to_owned(),
            backend: self.backend(),
            device: self.device(),
            state,
            received: counters.received,
            processed: counters.processed,
            emitted: counters.emitted,
            stalls: counters.stalls,
            errors: counters.errors,
            inbox_len,
            heartbeat,
        }
    }

    /// Restarts over its life, by hand ([`crate::Runtime::restart`],
    /// [`crate::Group::restart`]) or by its fault policy; on a device backend every
    /// restart of its group.
    pub fn restarts(&self) -> u64 {
        match &self.backing {
            Backing::Cpu(core) => core.restarts(),
            Backing::Device(d) => d.group.group.restarts(),
        }
    }

    /// End-to-end latency quantiles of requests answered through this kernel (see
    /// [`crate::Requester`]), from its HDR histogram; `None` before the first. Measured
    /// on the host on every backend.
    pub fn latency(&self) -> Option<gyre_runtime::metrics::LatencySummary> {
        match &self.backing {
            Backing::Cpu(core) => core.latency(),
            Backing::Device(d) => d.group.latency[d.k].summary(),
        }
    }

    /// The kernel's health under the default [`HealthPolicy`] (watchdog 1 s, inbox 80 %,
    /// error rate 10 %). The watchdog compares the heartbeat with what the previous call
    /// saw, so call it periodically: a kernel with messages waiting whose heartbeat stood
    /// still for longer than the watchdog timeout between two calls is reported unhealthy.
    pub fn health(&self) -> Health {
        self.health_with(&HealthPolicy::default())
    }

    /// The kernel's health under `policy` (see [`Kernel::health`]).
    pub fn health_with(&self, policy: &HealthPolicy) -> Health {
        match &self.backing {
            Backing::Cpu(core) => core.health(policy),
            Backing::Device(d) => d.group.group.health(d.k, policy),
        }
    }

    // ---- lifecycle --------------------------------------------------------------------

    fn command(&self, command: Command) -> Result<(), Error> {
        let result = match &self.backing {
            Backing::Cpu(core) => core.command(command).map(drop),
            Backing::Device(d) => d.group.group.command(d.k, command).map(drop),
        };
        result.map_err(|e| Error::from_command(self.name(), e))
    }

    /// Starts (or resumes) processing. Messages sent before are processed in order.
    ///
    /// # Errors
    /// [`Error::Lifecycle`] if the kernel is draining, terminated or faulted;
    /// [`Error::Unresponsive`] if it does not acknowledge in time.
    pub fn activate(&self) -> Result<(), Error> {
        self.command(Command::Activate)
    }

    /// Stops processing; messages keep queuing (up to the inbox capacity), none lost.
    ///
    /// # Errors
    /// As [`Kernel::activate`].
    pub fn deactivate(&self) -> Result<(), Error> {
        self.command(Command::Pause)
    }

    /// The device kernel of this handle, if stopping it alone is possible: a device group
    /// stops as a unit, so only a group of one kernel can be stopped through a kernel.
    fn device_alone(&self, d: &DeviceKernel, what: &str) -> Result<(), Error> {
        if d.group.names.len() == 1 || d.group.group.capabilities().stop_per_kernel {
            return Ok(());
        }
        Err(Error::Unsupported {
            what: format!("{what} of kernel `{}` alone", self.name()),
            backend: d.group.group.backend(),
            advice: format!(
                "its group `{}` runs as one unit on the device: call `{what}` on the Group \
                 (or Pipeline), which stops its kernels upstream first",
                d.group.name
            ),
        })
    }

    /// A second stop of a device kernel is refused as on the CPU ([`Error::Lifecycle`])
    /// while its runtime lives: its first stop handed back what it held. (It answered a
    /// report of nothing before.)
    fn device_not_stopped(&self, d: &DeviceKernel, command: Command) -> Result<(), Error> {
        let state = d.group.group.state(d.k);
        if state != State::Terminated || d.group.runtime_gone.load(Ordering::Relaxed) {
            return Ok(());
        }
        gyre_runtime::lifecycle::transition(state, gyre_runtime::lifecycle::Event::Command(command))
            .map(drop)
            .map_err(|source| Error::Lifecycle {
                kernel: self.name().to_owned(),
                source,
            })
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
    /// On a device backend a group runs as one unit: a kernel launched alone
    /// ([`crate::Runtime::launch`]) drains like this; a kernel of a larger group answers
    /// [`Error::Unsupported`] (drain the group).
    ///
    /// # Errors
    /// [`Error::Lifecycle`] when draining twice or draining a kernel terminated while
    /// its runtime lives; [`Error::Unresponsive`] when the kernel waited for a worker
    /// thread past the timeout (nothing is lost: the next drain or terminate hands back
    /// what it holds); [`Error::Unsupported`] as said above.
    pub fn drain(&self, timeout: Duration) -> Result<Report<In, Out>, Error> {
        match &self.backing {
            Backing::Cpu(core) => {
                let mut undelivered = Vec::new();
                let mut outputs = Vec::new();
                let summary = core
                    .drain(
                        timeout,
                        &mut |s| undelivered.push(read(s.payload)),
                        &mut |s| outputs.push(read(s.payload)),
                    )
                    .map_err(|e| Error::from_command(self.name(), e))?;
                Ok(self.report(summary, undelivered, outputs))
            }
            Backing::Device(d) => {
                self.device_alone(d, "drain")?;
                self.device_not_stopped(d, Command::Drain)?;
                d.group.stopped.store(true, Ordering::Relaxed);
                let report = d.group.group.drain(timeout);
                Ok(device_report(d, &report.kernels[d.k], report.timed_out))
            }
        }
    }

    /// Stops after the message in hand and hands back every message still in its inbox
    /// and host-bound output. Returns within the command timeout whatever the handler
    /// does: a handler that has not returned by then is abandoned (`abandoned: true`; the
    /// first undelivered message is the one it held). Once the kernel's runtime is gone
    /// (shut down or dropped), the report hands back what the runtime kept for this
    /// kernel's handles (see [`crate::Runtime`]) instead of failing. On a device backend,
    /// as [`Kernel::drain`] says.
    ///
    /// # Errors
    /// [`Error::Lifecycle`] when already terminated while its runtime lives;
    /// [`Error::Unresponsive`] when no handler of it ran within the command timeout (it
    /// waited for a worker thread; nothing is lost: the next drain or terminate hands
    /// back what it holds); [`Error::Unsupported`] for a kernel of a device group of
    /// several kernels.
    pub fn terminate(&self) -> Result<Report<In, Out>, Error> {
        match &self.backing {
            Backing::Cpu(core) => {
                let mut undelivered = Vec::new();
                let mut outputs = Vec::new();
                let summary = core
                    .terminate(&mut |s| undelivered.push(read(s.payload)), &mut |s| {
                        outputs.push(read(s.payload));
                    })
                    .map_err(|e| Error::from_command(self.name(), e))?;
                Ok(self.report(summary, undelivered, outputs))
            }
            Backing::Device(d) => {
                self.device_alone(d, "terminate")?;
                self.device_not_stopped(d, Command::Terminate)?;
                d.group.stopped.store(true, Ordering::Relaxed);
                let mut report = device_report(d, &d.group.group.terminate().kernels[d.k], false);
                // What is still in the host outbox comes back too, as on the CPU, unless a
                // `Receiver` holds the output (it keeps receiving it).
                if !d.group.receiver_taken[d.k].load(Ordering::Relaxed) {
                    while let Ok(Some(out)) = d.try_recv_with(|payload, _| read(payload)) {
                        report.undelivered_outputs.push(out);
                    }
                }
                Ok(report)
            }
        }
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
        Receiver::take(self.backing.clone())
    }

    /// The exclusive single-producer sender of this kernel: it writes into a lane of the
    /// inbox that has no other producer, so a send needs no compare-and-swap (on the CPU;
    /// device backends take it through the shared inbox). Shared senders keep working
    /// beside it; ordering holds per sender. On the CPU the lane is a ring of its own
    /// with the inbox's capacity, so with both in use up to twice `capacity` messages
    /// can wait; on a device backend `capacity` bounds them all.
    ///
    /// # Errors
    /// [`Error::ExclusiveSenderTaken`] when one exists already.
    pub fn exclusive_sender(&self) -> Result<ExclusiveSender<In>, Error> {
        ExclusiveSender::take(self.backing.clone())
    }

    /// A sender with its own backpressure policy.
    pub fn sender(&self) -> Sender<In> {
        Sender::over(self.backing.clone())
    }

    /// Sends, waiting while the inbox is full.
    ///
    /// # Errors
    /// [`SendError`] with the message when the kernel is draining, terminated or faulted.
    pub fn send(&self, message: In) -> Result<(), SendError<In>> {
        self.send_with_corr(message, 0)
    }

    /// Sends with a correlation id, waiting while the inbox is full.
    ///
    /// # Errors
    /// As [`Kernel::send`].
    pub fn send_with_corr(&self, message: In, corr: u64) -> Result<(), SendError<In>> {
        let b = &self.backing;
        wait_send(b, message, corr, None, |c, bytes| {
            b.try_send::<In>(c, bytes)
        })
    }

    /// Sends without waiting.
    ///
    /// # Errors
    /// [`Error::Full`] when the inbox is full, or as [`Kernel::send`]; the message comes back.
    pub fn try_send(&self, message: In) -> Result<(), SendError<In>> {
        crate::sender::try_send(&self.backing, message, 0)
    }

    /// Sends, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// [`Error::Timeout`] when no room freed in time, or as [`Kernel::send`].
    pub fn send_timeout(&self, message: In, timeout: Duration) -> Result<(), SendError<In>> {
        let b = &self.backing;
        let deadline = Some(Instant::now() + timeout);
        wait_send(b, message, 0, deadline, |c, bytes| {
            b.try_send::<In>(c, bytes)
        })
    }

    /// Sends from async code: waits for room without blocking the executor thread.
    ///
    /// # Cancel safety
    /// Cancel-safe: if the future is dropped before it completes, the message was not sent.
    ///
    /// # Errors
    /// As [`Kernel::send`].
    pub async fn send_async(&self, message: In) -> Result<(), SendError<In>> {
        send_async(&self.backing, message, 0).await
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
        self.backing
            .try_recv_with(|payload, _| read::<Out>(payload))
    }

    /// Receives the next message with its correlation id without waiting; `Ok(None)`
    /// when nothing is there yet.
    ///
    /// # Errors
    /// As [`Kernel::recv`].
    pub fn try_recv_with_corr(&self) -> Result<Option<(Out, u64)>, Error> {
        self.backing
            .try_recv_with(|payload, corr| (read::<Out>(payload), join(corr)))
    }

    /// Receives the next message with its correlation id, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] when nothing came in time, or as [`Kernel::recv`].
    pub fn recv_with_corr_timeout(&self, timeout: Duration) -> Result<(Out, u64), Error> {
        self.recv_within(Some(timeout))
    }

    /// Receives, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] when nothing came in time, or as [`Kernel::recv`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Out, Error> {
        self.recv_within(Some(timeout)).map(|(message, _)| message)
    }

    /// Receives from async code without blocking the executor thread (on every backend:
    /// the task waits on a waker, never on a sleep).
    ///
    /// # Cancel safety
    /// Cancel-safe: a message is taken only in the poll that returns it.
    ///
    /// # Errors
    /// As [`Kernel::recv`].
    pub async fn recv_async(&self) -> Result<Out, Error> {
        let b = &self.backing;
        let _watch = b.watch();
        poll_fn(|cx| {
            b.items()
                .poll_until(cx, || b.try_recv_with(|p, _| read::<Out>(p)).transpose())
        })
        .await
    }

    // ---- batches ------------------------------------------------------------------------

    /// Sends every message of `messages`, in order, waiting while the inbox is full. On
    /// the CPU each stretch of room is claimed with one claim on the inbox ring, written
    /// in place, published at once and announced to the kernel with one wake; nothing
    /// is allocated. On a device backend (no run claim on its host rings) it is a loop
    /// over the one-message send. Returns `messages.len()`.
    ///
    /// # Errors
    /// [`SendBatchError`] when the kernel stops accepting messages part-way (draining,
    /// terminated, faulted): its `sent` says how many went through; `&messages[sent..]`
    /// were not sent.
    pub fn send_batch(&self, messages: &[In]) -> Result<usize, SendBatchError<In>> {
        batch::send_slice(To::Shared(&self.backing), messages, Wait::Until(None))
    }

    /// Sends every message of `messages`, in order, waiting at most `timeout` (for the
    /// whole batch) for room.
    ///
    /// # Errors
    /// [`Error::Timeout`] in a [`SendBatchError`] when room did not come in time, or as
    /// [`Kernel::send_batch`]; `&messages[sent..]` were not sent.
    pub fn send_batch_timeout(
        &self,
        messages: &[In],
        timeout: Duration,
    ) -> Result<usize, SendBatchError<In>> {
        batch::send_slice_within(To::Shared(&self.backing), messages, timeout)
    }

    /// Sends as many of `messages`, from the first, as there is room for now, without
    /// waiting. Returns how many were sent: `messages.len()`, fewer when the inbox
    /// filled up, 0 when it was full.
    ///
    /// # Errors
    /// [`SendBatchError`] when the kernel no longer accepts messages (with how many went
    /// through before it stopped), or a message does not fit a slot.
    pub fn try_send_batch(&self, messages: &[In]) -> Result<usize, SendBatchError<In>> {
        batch::try_send_slice(To::Shared(&self.backing), messages)
    }

    /// Sends what `messages` yields, in order, waiting while the inbox is full. Items
    /// are taken from the iterator as they are sent, at most one ahead (handed back in
    /// [`SendBatchError::unsent`] when the send stops), so pass `iter.by_ref()` to keep
    /// the unsent rest when the send fails. Returns how many were sent.
    ///
    /// # Errors
    /// As [`Kernel::send_batch`]; the unsent messages are
    /// [`SendBatchError::unsent`] followed by what the iterator still holds.
    ///
    /// # Panics
    /// When the iterator panics: the panic goes on to the caller, and the messages the
    /// iterator yielded before it are sent (the same holds for every `send_iter`).
    pub fn send_iter<I: IntoIterator<Item = In>>(
        &self,
        messages: I,
    ) -> Result<usize, SendBatchError<In>> {
        batch::send_iter(To::Shared(&self.backing), messages, Wait::Until(None))
    }

    /// Sends every message of `messages` from async code, waiting for room without
    /// blocking the executor thread.
    ///
    /// # Cancel safety
    /// Not cancel-safe as a whole: dropped part-way, the messages sent until then stay
    /// sent (in order, a prefix of the slice), and nothing says how many.
    ///
    /// # Errors
    /// As [`Kernel::send_batch`].
    pub async fn send_batch_async(&self, messages: &[In]) -> Result<usize, SendBatchError<In>> {
        batch::send_slice_async(To::Shared(&self.backing), messages, Wait::Until(None)).await
    }

    /// Receives up to `max` host-bound messages into `buf` (appended, in order),
    /// waiting until at least one is there. On the CPU the batch is taken with one lock,
    /// one consume of the output ring (one release, at most one wake of a kernel stalled
    /// on it); nothing is allocated when `buf` has room for `max` more. On a device
    /// backend it is a loop over the one-message receive. Returns how many it appended
    /// (0 only for `max == 0`).
    ///
    /// # Errors
    /// As [`Kernel::recv`]: [`Error::Terminated`] (or `Faulted`) once the kernel stopped
    /// and everything it emitted was received.
    pub fn recv_batch(&self, buf: &mut Vec<Out>, max: usize) -> Result<usize, Error> {
        let b = &self.backing;
        batch::recv_wait(b, max, None, || batch::try_recv_shared(b, buf, max))
    }

    /// Receives up to `max` messages into `buf`, waiting at most `timeout` for the first.
    ///
    /// # Errors
    /// [`Error::Timeout`] when nothing came in time, or as [`Kernel::recv_batch`].
    pub fn recv_batch_timeout(
        &self,
        buf: &mut Vec<Out>,
        max: usize,
        timeout: Duration,
    ) -> Result<usize, Error> {
        let b = &self.backing;
        batch::recv_wait(b, max, Some(timeout), || {
            batch::try_recv_shared(b, buf, max)
        })
    }

    /// Receives up to `max` messages that are there now into `buf`, without waiting;
    /// `Ok(0)` when none is.
    ///
    /// # Errors
    /// As [`Kernel::recv_batch`].
    pub fn try_recv_batch(&self, buf: &mut Vec<Out>, max: usize) -> Result<usize, Error> {
        batch::try_recv_shared(&self.backing, buf, max)
    }

    /// Receives up to `max` messages into `buf` from async code, waiting for the first
    /// without blocking the executor thread.
    ///
    /// # Cancel safety
    /// Cancel-safe: messages are taken only in the poll that returns them.
    ///
    /// # Errors
    /// As [`Kernel::recv_batch`].
    pub async fn recv_batch_async(&self, buf: &mut Vec<Out>, max: usize) -> Result<usize, Error> {
        let b = &self.backing;
        batch::recv_wait_async(b, max, || batch::try_recv_shared(b, buf, max)).await
    }

    fn recv_within(&self, timeout: Option<Duration>) -> Result<(Out, u64), Error> {
        let b = &self.backing;
        crate::receiver::wait_recv(b, timeout, || {
            b.try_recv_with(|p, corr| (read::<Out>(p), join(corr)))
        })
    }
}

/// The correlation words of `corr`, for senders.
pub(crate) fn corr_words(corr: u64) -> [u32; 2] {
    split(corr)
}
