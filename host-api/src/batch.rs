//! Batches: many messages through one call, on every backend. [`SendBatchError`], and
//! the attempts and waits every handle's `send_batch`, `send_iter` and `recv_batch`
//! share.
//!
//! On the CPU a batch send claims room for many messages with one claim on the inbox
//! ring, writes them in place, publishes them with one store per slot and wakes the
//! kernel once; a batch receive takes many outputs with one consume (one release of the
//! ring's `head`, at most one wake of a kernel stalled on its output). A device backend
//! (the CUDA emulation, wgpu) has no run claim on its host rings: there a batch is a loop
//! over the per-message send or receive, with the same results and errors.

use std::borrow::Borrow;
use std::future::poll_fn;
use std::time::Instant;

use gyre_runtime::backend::seam::cpu::{CpuLane, RecvFailure, SendFailure};

use crate::backing::{cpu_recv_error, cpu_send_error, read, Backing, SendFail};
use crate::receiver::RxEnd;
use crate::spec::Message;
use crate::Error;

/// Messages one attempt of `send_iter` asks room for when the iterator does not say how
/// many it has left.
const ITER_CHUNK: usize = 64;

/// A batch send that stopped before the end: what went wrong, and how many messages went
/// through before it did. The messages are sent in order, so the ones not sent are the
/// caller's slice from `sent` on (`&messages[err.sent..]`), or, for `send_iter`, what the
/// iterator still holds plus [`SendBatchError::unsent`].
pub struct SendBatchError<In> {
    /// What went wrong: [`Error::Full`] (a non-blocking send or policy),
    /// [`Error::Timeout`], or the kernel no longer accepts messages
    /// ([`Error::Draining`], [`Error::Terminated`], [`Error::Faulted`], ...).
    pub error: Error,
    /// Messages sent before the failure (the first `sent` of the batch, in order).
    pub sent: usize,
    /// `send_iter` only: the item taken from the iterator and not sent, which comes
    /// before everything the iterator still holds. A batch send takes the next item
    /// before it asks for room (so an iterator that yields nothing takes none), so after
    /// a failure this is usually `Some`: resend it first, then the iterator's rest. On a
    /// device backend (one send per message) it is the message whose send failed. Always
    /// `None` for a slice: its unsent messages are `&messages[sent..]`.
    pub unsent: Option<In>,
}

impl<In> std::fmt::Debug for SendBatchError<In> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatchError")
            .field("error", &self.error)
            .field("sent", &self.sent)
            .field("unsent", &self.unsent.is_some())
            .finish()
    }
}

impl<In> std::fmt::Display for SendBatchError<In> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (after {} messages of the batch were sent; the rest were not)",
            self.error, self.sent
        )
    }
}

impl<In> std::error::Error for SendBatchError<In> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl<In> From<SendBatchError<In>> for Error {
    fn from(value: SendBatchError<In>) -> Self {
        value.error
    }
}

/// What a batch sends: an iterator, and the item taken from it and not yet sent.
pub(crate) struct Source<I: Iterator> {
    iter: I,
    held: Option<I::Item>,
    exhausted: bool,
}

impl<I: Iterator> Source<I> {
    pub(crate) fn new(iter: I) -> Self {
        Self {
            iter,
            held: None,
            exhausted: false,
        }
    }

    #[inline]
    fn next(&mut self) -> Option<I::Item> {
        // Test before taking: `take` would move the item through the stack and store
        // `None` on every call.
        if self.held.is_some() {
            return self.held.take();
        }
        let next = self.iter.next();
        self.exhausted = next.is_none();
        next
    }

    /// Whether nothing is left to send.
    #[inline]
    fn is_done(&self) -> bool {
        self.held.is_none() && (self.exhausted || self.iter.size_hint().1 == Some(0))
    }

    /// Slots to ask for: what the iterator says it has left (a chunk when it does not
    /// say), at least one.
    #[inline]
    fn want(&self) -> u32 {
        let (lo, hi) = self.iter.size_hint();
        let rest = hi.unwrap_or(lo.max(ITER_CHUNK)) + usize::from(self.held.is_some());
        rest.clamp(1, u32::MAX as usize) as u32
    }

    /// The item taken and not sent.
    pub(crate) fn into_held(self) -> Option<I::Item> {
        self.held
    }
}

/// Where a batch goes: a kernel's shared inbox, or a CPU kernel's single-producer lane.
pub(crate) enum To<'a> {
    Shared(&'a Backing),
    Lane(&'a mut CpuLane, &'a Backing),
}

impl To<'_> {
    fn backing(&self) -> &Backing {
        match self {
            To::Shared(b) | To::Lane(_, b) => b,
        }
    }
}

/// One attempt without waiting: on the CPU one claim of as many slots as there is room
/// for; on a device, sends one by one until the inbox is full. `Err` only when nothing
/// was sent; an error after some were sent shows on the next attempt.
#[inline]
fn attempt<In: Message, I: Iterator<Item: Borrow<In>>>(
    to: &mut To<'_>,
    src: &mut Source<I>,
) -> Result<usize, SendFail> {
    let size = std::mem::size_of::<In>();
    // Take the first message before claiming: an iterator that yields nothing (its size
    // hint notwithstanding) claims no slot.
    if src.held.is_none() {
        match src.next() {
            Some(first) => src.held = Some(first),
            None => return Ok(0),
        }
    }
    let want = src.want();
    let mut fill = |slot: &mut [u8]| match src.next() {
        Some(message) => {
            slot[..size].copy_from_slice(bytemuck::bytes_of(message.borrow()));
            true
        }
        None => false,
    };
    let cpu = |core, failure| match failure {
        SendFailure::Full => SendFail::Full,
        other => SendFail::Error(cpu_send_error::<In>(core, other)),
    };
    match to {
        To::Lane(lane, Backing::Cpu(core)) => lane
            .try_send_batch(want, size, &mut fill)
            .map(|n| n as usize)
            .map_err(|f| cpu(core, f)),
        To::Shared(Backing::Cpu(core)) => core
            .try_send_batch(want, size, &mut fill)
            .map(|n| n as usize)
            .map_err(|f| cpu(core, f)),
        To::Lane(_, Backing::Device(_)) => {
            unreachable!("a CPU lane is used with the CPU kernel it came from")
        }
        To::Shared(backing @ Backing::Device(_)) => {
            let mut sent = 0;
            while let Some(message) = src.next() {
                match backing.try_send::<In>([0, 0], bytemuck::bytes_of(message.borrow())) {
                    Ok(()) => sent += 1,
                    Err(fail) => {
                        src.held = Some(message);
                        if sent == 0 {
                            return Err(fail);
                        }
                        break;
                    }
                }
            }
            Ok(sent)
        }
    }
}

/// Attempts until everything is sent (`Some(Ok)`), the inbox is full (`None`), or an
/// error (`Some(Err)`), adding what went through to `sent`.
#[inline]
fn step<In: Message, I: Iterator<Item: Borrow<In>>>(
    to: &mut To<'_>,
    src: &mut Source<I>,
    sent: &mut usize,
) -> Option<Result<(), Error>> {
    loop {
        if src.is_done() {
            return Some(Ok(()));
        }
        match attempt(to, src) {
            Ok(n) => *sent += n,
            Err(SendFail::Full) => return None,
            Err(SendFail::Error(error)) => return Some(Err(error)),
        }
    }
}

/// How a blocking batch send waits while the inbox is full.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    /// Not at all: fail with [`Error::Full`].
    Fail,
    /// Until the deadline, or for ever.
    Until(Option<Instant>),
}

/// Sends everything `src` holds through `to`, waiting on the kernel's space signal while
/// the inbox is full (as `wait_send` does for one message). Returns how many were sent.
pub(crate) fn send_all<In: Message, I: Iterator<Item: Borrow<In>>>(
    mut to: To<'_>,
    src: &mut Source<I>,
    wait: Wait,
) -> Result<usize, (Error, usize)> {
    let mut sent = 0;
    let first = step(&mut to, src, &mut sent);
    let result = match (first, wait) {
        (Some(result), _) => result,
        (None, Wait::Fail) => Err(Error::Full {
            kernel: to.backing().name().to_owned(),
        }),
        (None, Wait::Until(deadline)) => {
            let start = Instant::now();
            let backing = to.backing().clone();
            let _watch = backing.watch();
            backing
                .space()
                .wait_until(deadline, || step(&mut to, src, &mut sent))
                .unwrap_or_else(|| {
                    Err(Error::Timeout {
                        kernel: backing.name().to_owned(),
                        after: start.elapsed(),
                    })
                })
        }
    };
    result.map(|()| sent).map_err(|error| (error, sent))
}

/// [`send_all`] from async code, waiting on the space signal's waker (never blocking the
/// executor thread); `Wait::Until` waits for ever (wrap the future in a timeout).
pub(crate) async fn send_all_async<In: Message, I: Iterator<Item: Borrow<In>>>(
    mut to: To<'_>,
    src: &mut Source<I>,
    wait: Wait,
) -> Result<usize, (Error, usize)> {
    let mut sent = 0;
    let result = match wait {
        Wait::Fail => step(&mut to, src, &mut sent).unwrap_or_else(|| {
            Err(Error::Full {
                kernel: to.backing().name().to_owned(),
            })
        }),
        Wait::Until(_) => {
            let backing = to.backing().clone();
            let _watch = backing.watch();
            poll_fn(|cx| {
                backing
                    .space()
                    .poll_until(cx, || step(&mut to, src, &mut sent))
            })
            .await
        }
    };
    result.map(|()| sent).map_err(|error| (error, sent))
}

/// A slice batch's error.
pub(crate) fn slice_error<In>((error, sent): (Error, usize)) -> SendBatchError<In> {
    SendBatchError {
        error,
        sent,
        unsent: None,
    }
}

/// `max` as the runtime's count.
#[inline]
fn clamp(max: usize) -> u32 {
    max.min(u32::MAX as usize) as u32
}

/// Takes up to `max` outputs of `backing`'s kernel through its shared receiving end into
/// `buf`, without waiting; `Ok(0)` when nothing is there yet.
#[inline]
pub(crate) fn try_recv_shared<Out: Message>(
    backing: &Backing,
    buf: &mut Vec<Out>,
    max: usize,
) -> Result<usize, Error> {
    if max == 0 {
        return Ok(0);
    }
    match backing {
        Backing::Cpu(core) => {
            match core.try_recv_batch_with(clamp(max), |s| buf.push(read::<Out>(s.payload))) {
                Ok(n) => Ok(n as usize),
                Err(RecvFailure::Empty) => Ok(0),
                Err(failure) => Err(cpu_recv_error(core, failure)),
            }
        }
        Backing::Device(_) => device_loop(buf, max, || {
            backing.try_recv_with(|payload, _| read::<Out>(payload))
        }),
    }
}

/// Takes up to `max` outputs through the exclusive receiving end `rx` into `buf`,
/// without waiting; `Ok(0)` when nothing is there yet.
#[inline]
pub(crate) fn try_recv_end<Out: Message>(
    rx: &mut RxEnd,
    backing: &Backing,
    buf: &mut Vec<Out>,
    max: usize,
) -> Result<usize, Error> {
    if max == 0 {
        return Ok(0);
    }
    match (rx, backing) {
        (RxEnd::Cpu(output), Backing::Cpu(core)) => {
            match core.try_recv_batch_from(output, clamp(max), |s| {
                buf.push(read::<Out>(s.payload));
            }) {
                Ok(n) => Ok(n as usize),
                Err(RecvFailure::Empty) => Ok(0),
                Err(failure) => Err(cpu_recv_error(core, failure)),
            }
        }
        (rx @ RxEnd::Device, backing @ Backing::Device(_)) => device_loop(buf, max, || {
            rx.try_recv_with(backing, |payload, _| read::<Out>(payload))
        }),
        _ => unreachable!("a receiving end is used with the kernel it came from"),
    }
}

/// A device's batch receive: one receive per message until `max`, nothing left, or an
/// error (reported only when nothing was taken; otherwise the next call reports it).
fn device_loop<Out>(
    buf: &mut Vec<Out>,
    max: usize,
    mut one: impl FnMut() -> Result<Option<Out>, Error>,
) -> Result<usize, Error> {
    let mut taken = 0;
    while taken < max {
        match one() {
            Ok(Some(message)) => {
                buf.push(message);
                taken += 1;
            }
            Err(error) if taken == 0 => return Err(error),
            // Nothing more now; an error after some were taken shows on the next call.
            Ok(None) | Err(_) => break,
        }
    }
    Ok(taken)
}

/// Sends every message of `messages`, in order, waiting as `wait` says.
pub(crate) fn send_slice<In: Message>(
    to: To<'_>,
    messages: &[In],
    wait: Wait,
) -> Result<usize, SendBatchError<In>> {
    send_all::<In, _>(to, &mut Source::new(messages.iter()), wait).map_err(slice_error)
}

/// [`send_slice`] waiting at most `timeout`, for the whole batch, for room.
pub(crate) fn send_slice_within<In: Message>(
    to: To<'_>,
    messages: &[In],
    timeout: std::time::Duration,
) -> Result<usize, SendBatchError<In>> {
    send_slice(to, messages, Wait::Until(Some(Instant::now() + timeout)))
}

/// [`send_slice`] from async code.
pub(crate) async fn send_slice_async<In: Message>(
    to: To<'_>,
    messages: &[In],
    wait: Wait,
) -> Result<usize, SendBatchError<In>> {
    send_all_async::<In, _>(to, &mut Source::new(messages.iter()), wait)
        .await
        .map_err(slice_error)
}

/// Sends what `messages` yields, in order, waiting as `wait` says.
pub(crate) fn send_iter<In: Message, I: IntoIterator<Item = In>>(
    to: To<'_>,
    messages: I,
    wait: Wait,
) -> Result<usize, SendBatchError<In>> {
    let mut src = Source::new(messages.into_iter());
    send_all(to, &mut src, wait).map_err(|(error, sent)| SendBatchError {
        error,
        sent,
        unsent: src.into_held(),
    })
}

/// Sends as many of `messages` as there is room for now, in order, without waiting.
pub(crate) fn try_send_slice<In: Message>(
    mut to: To<'_>,
    messages: &[In],
) -> Result<usize, SendBatchError<In>> {
    let mut sent = 0;
    match step::<In, _>(&mut to, &mut Source::new(messages.iter()), &mut sent) {
        None | Some(Ok(())) => Ok(sent),
        Some(Err(error)) => Err(SendBatchError {
            error,
            sent,
            unsent: None,
        }),
    }
}

/// Runs `attempt` (a batch receive without waiting) until it takes something, waiting
/// on the kernel's output signal meanwhile, at most `timeout`.
pub(crate) fn recv_wait(
    backing: &Backing,
    max: usize,
    timeout: Option<std::time::Duration>,
    mut attempt: impl FnMut() -> Result<usize, Error>,
) -> Result<usize, Error> {
    if max == 0 {
        return Ok(0);
    }
    crate::receiver::wait_recv(backing, timeout, || attempt().map(|n| (n > 0).then_some(n)))
}

/// [`recv_wait`] from async code, waiting on the output signal's waker.
pub(crate) async fn recv_wait_async(
    backing: &Backing,
    max: usize,
    mut attempt: impl FnMut() -> Result<usize, Error>,
) -> Result<usize, Error> {
    if max == 0 {
        return Ok(0);
    }
    let _watch = backing.watch();
    poll_fn(|cx| {
        backing.items().poll_until(cx, || match attempt() {
            Ok(0) => None,
            other => Some(other),
        })
    })
    .await
}
