//! [`Sender`] with its [`Backpressure`] policy, and [`ExclusiveSender`]: sending to a
//! kernel on any backend, waiting on wakers (never on a sleep) while its inbox is full.

use std::future::poll_fn;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gyre_runtime::backend::seam::cpu::{CpuLane, SendFailure};

use crate::backing::{cpu_send_error, Backing, SendFail};
use crate::batch::{self, To, Wait};
use crate::kernel::corr_words;
use crate::spec::Message;
use crate::{Error, SendBatchError, SendError};

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

/// Sends once without waiting.
pub(crate) fn try_send<In: Message>(
    backing: &Backing,
    message: In,
    corr: u64,
) -> Result<(), SendError<In>> {
    match backing.try_send::<In>(corr_words(corr), bytemuck::bytes_of(&message)) {
        Ok(()) => Ok(()),
        Err(SendFail::Full) => Err(SendError {
            error: Error::Full {
                kernel: backing.name().to_owned(),
            },
            message,
        }),
        Err(SendFail::Error(error)) => Err(SendError { error, message }),
    }
}

/// Tries `attempt` once without reading the clock, then waits on the kernel's space
/// signal (spin, yield, park; a device is watched meanwhile) while it reports `Full`,
/// until `deadline`.
pub(crate) fn wait_send<In: Message>(
    backing: &Backing,
    message: In,
    corr: u64,
    deadline: Option<Instant>,
    mut attempt: impl FnMut([u32; 2], &[u8]) -> Result<(), SendFail>,
) -> Result<(), SendError<In>> {
    let bytes = bytemuck::bytes_of(&message);
    let corr = corr_words(corr);
    match attempt(corr, bytes) {
        Ok(()) => return Ok(()),
        Err(SendFail::Full) => {}
        Err(SendFail::Error(error)) => return Err(SendError { error, message }),
    }
    let start = Instant::now();
    let _watch = backing.watch();
    let result = backing
        .space()
        .wait_until(deadline, || match attempt(corr, bytes) {
            Err(SendFail::Full) => None,
            Ok(()) => Some(Ok(())),
            Err(SendFail::Error(error)) => Some(Err(error)),
        });
    match result {
        Some(Ok(())) => Ok(()),
        Some(Err(error)) => Err(SendError { error, message }),
        None => Err(SendError {
            error: Error::Timeout {
                kernel: backing.name().to_owned(),
                after: start.elapsed(),
            },
            message,
        }),
    }
}

/// Sends from async code, waiting on the space signal's waker while the inbox is full.
pub(crate) async fn send_async<In: Message>(
    backing: &Backing,
    message: In,
    corr: u64,
) -> Result<(), SendError<In>> {
    let bytes = bytemuck::bytes_of(&message);
    let corr = corr_words(corr);
    let _watch = backing.watch();
    let result = poll_fn(|cx| {
        backing
            .space()
            .poll_until(cx, || match backing.try_send::<In>(corr, bytes) {
                Err(SendFail::Full) => None,
                Ok(()) => Some(Ok(())),
                Err(SendFail::Error(error)) => Some(Err(error)),
            })
    })
    .await;
    result.map_err(|error| SendError { error, message })
}

/// A handle that sends to one kernel with its own [`Backpressure`] policy.
pub struct Sender<In> {
    backing: Backing,
    policy: Backpressure,
    _types: PhantomData<fn(In)>,
}

impl<In> Clone for Sender<In> {
    fn clone(&self) -> Self {
        Self {
            backing: self.backing.clone(),
            policy: self.policy,
            _types: PhantomData,
        }
    }
}

impl<In> std::fmt::Debug for Sender<In> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("kernel", &self.backing.name())
            .field("policy", &self.policy)
            .finish()
    }
}

impl<In: Message> Sender<In> {
    pub(crate) fn over(backing: Backing) -> Self {
        Self {
            backing,
            policy: Backpressure::Block,
            _types: PhantomData,
        }
    }

    pub(crate) fn backing(&self) -> &Backing {
        &self.backing
    }

    /// Messages waiting in the kernel's inbox now (every producer's, the shared ring and
    /// the exclusive lane together): a racy gauge read from the rings' cursors. A message
    /// this sender sent and the inbox no longer holds was taken by the kernel.
    pub fn inbox_len(&self) -> u32 {
        self.backing.inbox().0
    }

    /// Slots of the kernel's inbox ring (what a full inbox holds).
    pub fn inbox_capacity(&self) -> u32 {
        self.backing.inbox().1
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
        let b = &self.backing;
        let deadline = match self.policy {
            Backpressure::Fail => return try_send(b, message, corr),
            Backpressure::Block => None,
            Backpressure::Timeout(t) => Some(Instant::now() + t),
        };
        wait_send(b, message, corr, deadline, |c, bytes| {
            b.try_send::<In>(c, bytes)
        })
    }

    /// Sends without waiting, whatever the policy.
    ///
    /// # Errors
    /// As [`crate::Kernel::try_send`].
    pub fn try_send(&self, message: In) -> Result<(), SendError<In>> {
        try_send(&self.backing, message, 0)
    }

    /// Sends, waiting at most `timeout` for room, whatever the policy.
    pub(crate) fn send_within(&self, message: In, timeout: Duration) -> Result<(), SendError<In>> {
        let b = &self.backing;
        wait_send(b, message, 0, Some(Instant::now() + timeout), |c, bytes| {
            b.try_send::<In>(c, bytes)
        })
    }

    /// Sends every message of `messages`, waiting at most `timeout` (for the whole
    /// batch) for room, whatever the policy.
    pub(crate) fn send_batch_within(
        &self,
        messages: &[In],
        timeout: Duration,
    ) -> Result<usize, SendBatchError<In>> {
        batch::send_slice_within(To::Shared(&self.backing), messages, timeout)
    }

    /// Sends with a correlation id from async code (see [`Sender::send_async`]).
    ///
    /// # Errors
    /// As [`Sender::send`].
    pub async fn send_async_with_corr(&self, message: In, corr: u64) -> Result<(), SendError<In>> {
        match self.policy {
            Backpressure::Fail => try_send(&self.backing, message, corr),
            Backpressure::Block | Backpressure::Timeout(_) => {
                send_async(&self.backing, message, corr).await
            }
        }
    }

    /// How a batch waits under the policy.
    fn batch_wait(&self) -> Wait {
        match self.policy {
            Backpressure::Fail => Wait::Fail,
            Backpressure::Block => Wait::Until(None),
            Backpressure::Timeout(t) => Wait::Until(Some(Instant::now() + t)),
        }
    }

    /// Sends every message of `messages`, in order, according to the policy (a
    /// `Timeout` bounds the whole batch): on the CPU one claim, one publish and one
    /// wake per stretch of room, nothing allocated; on a device backend a loop over the
    /// one-message send. Returns `messages.len()`.
    ///
    /// # Errors
    /// [`SendBatchError`] with [`Error::Full`] (policy `Fail`: the inbox filled up),
    /// [`Error::Timeout`] (policy `Timeout`), or the kernel no longer accepts messages;
    /// its `sent` says how many went through, and `&messages[sent..]` were not sent.
    pub fn send_batch(&self, messages: &[In]) -> Result<usize, SendBatchError<In>> {
        batch::send_slice(To::Shared(&self.backing), messages, self.batch_wait())
    }

    /// Sends as many of `messages`, from the first, as there is room for now, whatever
    /// the policy. Returns how many (0 when the inbox was full).
    ///
    /// # Errors
    /// As [`crate::Kernel::try_send_batch`].
    pub fn try_send_batch(&self, messages: &[In]) -> Result<usize, SendBatchError<In>> {
        batch::try_send_slice(To::Shared(&self.backing), messages)
    }

    /// Sends what `messages` yields, in order, according to the policy. Items are taken
    /// from the iterator as they are sent, at most one ahead (handed back in
    /// [`SendBatchError::unsent`] when the send stops): pass `iter.by_ref()` to keep the
    /// unsent rest. Returns how many were sent.
    ///
    /// # Errors
    /// As [`Sender::send_batch`]; the unsent messages are [`SendBatchError::unsent`]
    /// followed by what the iterator still holds.
    pub fn send_iter<I: IntoIterator<Item = In>>(
        &self,
        messages: I,
    ) -> Result<usize, SendBatchError<In>> {
        batch::send_iter(To::Shared(&self.backing), messages, self.batch_wait())
    }

    /// Sends every message of `messages` from async code according to the policy
    /// (`Timeout` acts as `Block`; wrap the future in your runtime's timeout).
    ///
    /// # Cancel safety
    /// Dropped part-way, the messages sent until then (a prefix) stay sent.
    ///
    /// # Errors
    /// As [`Sender::send_batch`].
    pub async fn send_batch_async(&self, messages: &[In]) -> Result<usize, SendBatchError<In>> {
        let wait = match self.policy {
            Backpressure::Fail => Wait::Fail,
            Backpressure::Block | Backpressure::Timeout(_) => Wait::Until(None),
        };
        batch::send_slice_async(To::Shared(&self.backing), messages, wait).await
    }

    /// Sends from async code according to the policy (`Timeout` acts as `Block`; wrap
    /// the future in your runtime's timeout).
    ///
    /// # Errors
    /// As [`Sender::send`].
    pub async fn send_async(&self, message: In) -> Result<(), SendError<In>> {
        self.send_async_with_corr(message, 0).await
    }
}

/// How an exclusive sender writes: the CPU kernel's single-producer lane, or a device
/// kernel's host inbox (which takes one producer at a time anyway).
enum Lane {
    Cpu(CpuLane),
    Device,
}

/// The exclusive single-producer sender of a kernel (see
/// [`crate::Kernel::exclusive_sender`]). It waits while the lane is full (spin, yield,
/// park), like [`crate::Kernel::send`].
pub struct ExclusiveSender<In> {
    lane: Lane,
    backing: Backing,
    _types: PhantomData<fn(In)>,
}

impl<In> std::fmt::Debug for ExclusiveSender<In> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExclusiveSender")
            .field("kernel", &self.backing.name())
            .finish_non_exhaustive()
    }
}

impl<In> Drop for ExclusiveSender<In> {
    fn drop(&mut self) {
        if let Backing::Device(d) = &self.backing {
            d.group.sender_taken[d.k].store(false, Ordering::Relaxed);
        }
    }
}

/// One try through `lane`.
fn lane_send<In: Message>(
    lane: &mut Lane,
    backing: &Backing,
    corr: [u32; 2],
    bytes: &[u8],
) -> Result<(), SendFail> {
    match lane {
        Lane::Cpu(lane) => lane.try_send(bytes, corr).map_err(|f| match (f, backing) {
            (SendFailure::Full, _) => SendFail::Full,
            (other, Backing::Cpu(core)) => SendFail::Error(cpu_send_error::<In>(core, other)),
            (_, Backing::Device(_)) => {
                unreachable!("a CPU lane is used with the CPU kernel it came from")
            }
        }),
        Lane::Device => backing.try_send::<In>(corr, bytes),
    }
}

impl<In: Message> ExclusiveSender<In> {
    pub(crate) fn take(backing: Backing) -> Result<Self, Error> {
        let taken = || Error::ExclusiveSenderTaken {
            kernel: backing.name().to_owned(),
        };
        let lane = match &backing {
            Backing::Cpu(core) => Lane::Cpu(core.take_lane().ok_or_else(taken)?),
            Backing::Device(d) => {
                if d.group.sender_taken[d.k].swap(true, Ordering::Relaxed) {
                    return Err(taken());
                }
                Lane::Device
            }
        };
        Ok(Self {
            lane,
            backing,
            _types: PhantomData,
        })
    }

    fn send_inner(
        &mut self,
        message: In,
        corr: u64,
        deadline: Option<Instant>,
    ) -> Result<(), SendError<In>> {
        let (lane, backing) = (&mut self.lane, &self.backing);
        wait_send(backing, message, corr, deadline, |corr, bytes| {
            lane_send::<In>(lane, backing, corr, bytes)
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
        let bytes = bytemuck::bytes_of(&message);
        match lane_send::<In>(&mut self.lane, &self.backing, [0, 0], bytes) {
            Ok(()) => Ok(()),
            Err(SendFail::Full) => Err(SendError {
                error: Error::Full {
                    kernel: self.backing.name().to_owned(),
                },
                message,
            }),
            Err(SendFail::Error(error)) => Err(SendError { error, message }),
        }
    }

    /// Where a batch goes: the lane on the CPU, the shared inbox on a device.
    fn to(&mut self) -> To<'_> {
        match &mut self.lane {
            Lane::Cpu(lane) => To::Lane(lane, &self.backing),
            Lane::Device => To::Shared(&self.backing),
        }
    }

    /// Sends every message of `messages`, in order, waiting while the lane is full. On
    /// the CPU each stretch of room is claimed with one claim on the lane (no
    /// compare-and-swap), written in place, published at once and announced with one
    /// wake of the kernel; nothing is allocated. On a device backend (no run claim on
    /// its host rings) it is a loop over the one-message send. Returns
    /// `messages.len()`.
    ///
    /// ```
    /// use gyre::{KernelSpec, Runtime};
    ///
    /// let runtime = Runtime::builder().build()?;
    /// let kernel = runtime.launch(KernelSpec::<u32, u32>::new("double").cpu(|x, out| Ok(out.emit(x * 2)?)))?;
    /// kernel.activate()?;
    /// let mut tx = kernel.exclusive_sender()?;
    /// let mut rx = kernel.receiver()?;
    /// assert_eq!(tx.send_batch(&[1, 2, 3])?, 3);
    /// let mut got = Vec::with_capacity(64);
    /// while got.len() < 3 {
    ///     rx.recv_batch(&mut got, 64)?;
    /// }
    /// assert_eq!(got, [2, 4, 6]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`SendBatchError`] when the kernel stops accepting messages part-way (draining,
    /// terminated, faulted): `sent` says how many went through, and
    /// `&messages[sent..]` were not sent.
    pub fn send_batch(&mut self, messages: &[In]) -> Result<usize, SendBatchError<In>> {
        batch::send_slice(self.to(), messages, Wait::Until(None))
    }

    /// Sends every message of `messages`, in order, waiting at most `timeout` (for the
    /// whole batch) for room.
    ///
    /// # Errors
    /// [`Error::Timeout`] in a [`SendBatchError`], or as [`ExclusiveSender::send_batch`].
    pub fn send_batch_timeout(
        &mut self,
        messages: &[In],
        timeout: Duration,
    ) -> Result<usize, SendBatchError<In>> {
        let deadline = Some(Instant::now() + timeout);
        batch::send_slice(self.to(), messages, Wait::Until(deadline))
    }

    /// Sends as many of `messages`, from the first, as there is room for now, without
    /// waiting. Returns how many (0 when the lane was full).
    ///
    /// # Errors
    /// As [`crate::Kernel::try_send_batch`].
    pub fn try_send_batch(&mut self, messages: &[In]) -> Result<usize, SendBatchError<In>> {
        batch::try_send_slice(self.to(), messages)
    }

    /// Sends what `messages` yields, in order, waiting while the lane is full. Items are
    /// taken from the iterator as they are sent, at most one ahead (handed back in
    /// [`SendBatchError::unsent`] when the send stops): pass `iter.by_ref()` to keep the
    /// unsent rest. Returns how many were sent.
    ///
    /// # Errors
    /// As [`ExclusiveSender::send_batch`]; the unsent messages are
    /// [`SendBatchError::unsent`] followed by what the iterator still holds.
    pub fn send_iter<I: IntoIterator<Item = In>>(
        &mut self,
        messages: I,
    ) -> Result<usize, SendBatchError<In>> {
        batch::send_iter(self.to(), messages, Wait::Until(None))
    }

    /// Sends every message of `messages` from async code, waiting for room without
    /// blocking the executor thread.
    ///
    /// # Cancel safety
    /// Dropped part-way, the messages sent until then (a prefix) stay sent.
    ///
    /// # Errors
    /// As [`ExclusiveSender::send_batch`].
    pub async fn send_batch_async(&mut self, messages: &[In]) -> Result<usize, SendBatchError<In>> {
        batch::send_slice_async(self.to(), messages, Wait::Until(None)).await
    }

    /// Sends from async code: waits for room without blocking the executor thread.
    ///
    /// # Cancel safety
    /// Cancel-safe: if the future is dropped before it completes, the message was not sent.
    ///
    /// # Errors
    /// As [`ExclusiveSender::send`].
    pub async fn send_async(&mut self, message: In) -> Result<(), SendError<In>> {
        let bytes = bytemuck::bytes_of(&message);
        let (lane, backing) = (&mut self.lane, &self.backing);
        let _watch = backing.watch();
        let result = poll_fn(|cx| {
            backing
                .space()
                .poll_until(cx, || match lane_send::<In>(lane, backing, [0, 0], bytes) {
                    Err(SendFail::Full) => None,
                    Ok(()) => Some(Ok(())),
                    Err(SendFail::Error(error)) => Some(Err(error)),
                })
        })
        .await;
        result.map_err(|error| SendError { error, message })
    }
}
