//! The host side of a CPU kernel's rings: sends into its inbox, receives from its outbox.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::{ExclusiveLane, KernelCore, OutputConsumer, Ring};
use crate::abi::{make_tag, State, KIND_MESSAGE};
use crate::ring::{Claim, ClaimError, Producer, SlotRef, Step};
use crate::sync::{asym, Ordering};
use crate::wait::Signal;

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
    /// The output ring's consumer is taken out (see
    /// [`CpuKernel::take_output`](crate::backend::seam::cpu::CpuKernel::take_output)).
    Taken,
    /// Nothing is waiting now; the kernel may emit more.
    Empty,
    /// Nothing is waiting and the kernel is stopped: nothing more will come.
    Closed(State),
    /// The kernel has no host-bound output.
    NoOutput,
}

/// The tag and correlation id of a host-sent message at `position`: one position in
/// [`crate::metrics::LATENCY_SAMPLE_EVERY`] (by position: no shared counter) is timed —
/// its correlation id carries the send time — if it carries no correlation id of the
/// user's.
#[inline]
pub(super) fn host_header(position: u32, corr: [u32; 2]) -> (u32, [u32; 2]) {
    let every = crate::metrics::LATENCY_SAMPLE_EVERY;
    if (corr[0] | corr[1]) == 0 && position % every == every - 1 {
        let now = crate::metrics::clock_ns();
        (
            make_tag(crate::abi::KIND_TIMED, crate::abi::HOST_SENDER_ID),
            [now as u32, (now >> 32) as u32],
        )
    } else {
        (make_tag(KIND_MESSAGE, crate::abi::HOST_SENDER_ID), corr)
    }
}

impl KernelCore {
    /// Writes one message into the inbox in place, without waiting.
    ///
    /// # Errors
    /// [`SendFailure`] when the inbox is full, the kernel no longer accepts messages, or
    /// the payload does not fit a slot. Nothing is written then.
    #[inline]
    pub fn try_send(self: &Arc<Self>, corr: [u32; 2], payload: &[u8]) -> Result<(), SendFailure> {
        // No state check here: every state that refuses messages closes the inbox first
        // (drain, terminate, fault), and the closed flag is a read-shared host word, where
        // the state word shares a line with the counters the kernel rewrites every turn.
        self.send_through(corr, payload, || self.inbox.try_claim(1))
    }

    /// Checks the payload size, claims one slot with `claim`, writes the message into it
    /// in place, publishes it and wakes the kernel.
    #[inline]
    pub(super) fn send_through<'a>(
        self: &'a Arc<Self>,
        corr: [u32; 2],
        payload: &[u8],
        claim: impl FnOnce() -> Result<Claim<'a, Ring>, ClaimError>,
    ) -> Result<(), SendFailure> {
        // The layout's field, not `inbox_payload_bytes`: no call across crates per send.
        let max = self.config.inbox.payload_bytes() as usize;
        if payload.len() > max {
            return Err(SendFailure::TooLarge {
                len: payload.len(),
                max,
            });
        }
        match claim() {
            Ok(claim) => {
                let (tag, corr) = host_header(claim.start(), corr);
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

    /// Writes up to `want` messages of `bytes` bytes each into the inbox with one claim
    /// (as many as there is room for now, at most the ring's capacity), one publish and
    /// one wake of the kernel, without waiting. `fill` writes the next message's payload
    /// into the slot it is given and returns `true`, or returns `false` when there is no
    /// next message: that slot and the rest of the claim are published as cancelled
    /// (the kernel skips them) and `fill` is not called again. When `fill` panics, the
    /// messages it wrote before are sent, the rest of the claim is cancelled, and the
    /// panic goes on.
    ///
    /// Every message carries correlation id 0 and is timed by position like a message
    /// of [`KernelCore::try_send`].
    ///
    /// Returns how many messages were written (`Ok(0)` when `want` is 0 or `fill` had
    /// none).
    ///
    /// # Errors
    /// [`SendFailure`] when the inbox has no room at all, the kernel no longer accepts
    /// messages, or `bytes` does not fit a slot. Nothing is written then.
    #[inline]
    pub fn try_send_batch(
        self: &Arc<Self>,
        want: u32,
        bytes: usize,
        fill: impl FnMut(&mut [u8]) -> bool,
    ) -> Result<u32, SendFailure> {
        self.send_batch_through(&self.inbox, want, bytes, fill, |n| self.inbox.try_claim(n))
    }

    /// The body of [`KernelCore::try_send_batch`] over `ring`, claiming with `claim`.
    #[inline]
    pub(super) fn send_batch_through<'a>(
        self: &'a Arc<Self>,
        ring: &'a Producer<Ring>,
        want: u32,
        bytes: usize,
        mut fill: impl FnMut(&mut [u8]) -> bool,
        mut claim: impl FnMut(u32) -> Result<Claim<'a, Ring>, ClaimError>,
    ) -> Result<u32, SendFailure> {
        let max = self.config.inbox.payload_bytes() as usize;
        if bytes > max {
            return Err(SendFailure::TooLarge { len: bytes, max });
        }
        if want == 0 {
            return Ok(0);
        }
        // As many as fit now; at least one, so that a full or closed ring says so.
        let mut n = want.min(ring.capacity());
        n = ring.free_up_to(n).min(n).max(1);
        let claim = loop {
            match claim(n) {
                Ok(claim) => break claim,
                // Another producer took some of the room meanwhile: take what is left.
                Err(ClaimError::Full { free }) if free > 0 && free < n => n = free,
                Err(ClaimError::Full { .. }) => return Err(SendFailure::Full),
                Err(ClaimError::Closed) => return Err(SendFailure::Closed(self.closed_state())),
                Err(ClaimError::TooMany) => unreachable!("claims are capped at the capacity"),
            }
        };
        let start = claim.start();
        // Slots written in full so far: what stays sent if `fill` (the caller's source, an
        // iterator) panics.
        let mut written = 0;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            claim.write_run(0, |i, payload| {
                let header = fill(payload).then(|| host_header(start.wrapping_add(i), [0, 0]));
                written = i + u32::from(header.is_some());
                header
            })
        }));
        // The source ran dry (or panicked): the rest of the claim is published as
        // cancelled, and what was written before is sent.
        for i in written..claim.len() {
            claim.write(i, crate::abi::KIND_CANCELLED, [0, 0], |_| ());
        }
        claim.publish();
        // Even when nothing was written: the cancelled slots hold room until the kernel
        // skips them, and an idle kernel only does that once woken (without this, an
        // iterator that came up empty, or panicked, left a full-looking inbox that no
        // send woke).
        self.wake();
        if let Err(panic) = outcome {
            resume_unwind(panic);
        }
        Ok(written)
    }

    /// The state to report to a sender that found the inbox closed.
    pub(super) fn closed_state(&self) -> State {
        match self.state() {
            // Closed by a fault, or by a drain or terminate whose command the kernel has
            // not acknowledged yet (the fault is recorded before the inbox closes).
            State::Launched | State::Active | State::Paused => {
                if self.fault.lock().is_some() {
                    State::Faulted
                } else if self.local.terminating.load(Ordering::Relaxed) {
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

    /// Takes the next host-bound message, handing it to `f`, without waiting. Receivers
    /// on several threads take turns (a lock); one receiving thread is faster with the
    /// consumer taken out by [`KernelCore::take_output`].
    ///
    /// # Errors
    /// [`RecvFailure`] when nothing is waiting, the kernel has no output, or its output
    /// consumer is taken.
    #[inline]
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
    #[inline]
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
        // The ring is empty: what overflowed it while the runtime was dropped comes next.
        if let Some(value) = f.take().and_then(|f| self.take_overflow(f)) {
            return Ok(value);
        }
        // Stopped and empty: nothing more will come. The kernel sets `stopped` after its
        // last emit, so emptiness is re-checked after reading the flag.
        // ORDERING: Acquire pairs with the Release store in `publish_state`.
        if self.stopped.load(Ordering::Acquire)
            && rx.is_empty()
            && !self.overflow_pending()
            && !self.restart_pending()
        {
            Err(RecvFailure::Closed(self.state()))
        } else {
            Err(RecvFailure::Empty)
        }
    }

    /// Takes up to `max` host-bound messages, in order, handing each to `f`, through the
    /// shared receiving end (one lock for the batch), without waiting.
    ///
    /// # Errors
    /// As [`KernelCore::try_recv_batch_from`], and `Taken` / `NoOutput` as
    /// [`KernelCore::try_recv`].
    #[inline]
    pub fn try_recv_batch(
        self: &Arc<Self>,
        max: u32,
        f: impl FnMut(SlotRef<'_>),
    ) -> Result<u32, RecvFailure> {
        let mut guard = self.outbox_rx.lock();
        match guard.as_mut() {
            Some(rx) => self.try_recv_batch_from(rx, max, f),
            None if self.outbox.is_some() => Err(RecvFailure::Taken),
            None => Err(RecvFailure::NoOutput),
        }
    }

    /// Takes up to `max` host-bound messages from `rx` (the consumer returned by
    /// [`KernelCore::take_output`]), in order, handing each to `f`, with one release of
    /// the ring's `head` and at most one wake of a kernel stalled on the output; without
    /// waiting. Returns how many it took: `Ok(0)` only when `max` is 0.
    ///
    /// # Errors
    /// [`RecvFailure::Empty`] when nothing is waiting, `Closed` when the kernel stopped
    /// and nothing is left.
    #[inline]
    pub fn try_recv_batch_from(
        self: &Arc<Self>,
        rx: &mut OutputConsumer,
        max: u32,
        mut f: impl FnMut(SlotRef<'_>),
    ) -> Result<u32, RecvFailure> {
        if max == 0 {
            return Ok(0);
        }
        let before = rx.head();
        let mut handed = 0;
        // Run by run: a run ends at a cancelled slot, which the next `ready_run` skips.
        while handed < max {
            let run = rx.ready_run(max - handed);
            if run == 0 {
                break;
            }
            rx.read_run(0, run, |_, slot| {
                if slot.is_timed() {
                    let sent = u64::from(slot.corr[0]) | (u64::from(slot.corr[1]) << 32);
                    self.latency
                        .record(crate::metrics::clock_ns().saturating_sub(sent));
                }
                f(SlotRef {
                    corr: slot.user_corr(),
                    ..slot
                });
            });
            rx.release_run(run);
            handed += run;
        }
        // Messages taken and cancelled slots skipped.
        if rx.head() != before {
            self.after_output_consumed();
        }
        // The ring is empty: what overflowed it while the runtime was dropped comes next.
        while handed < max && self.take_overflow(&mut f).is_some() {
            handed += 1;
        }
        if handed > 0 {
            return Ok(handed);
        }
        // As in `try_recv_from`: stopped and empty, re-checked after the flag.
        // ORDERING: Acquire pairs with the Release store in `publish_state`.
        if self.stopped.load(Ordering::Acquire)
            && rx.is_empty()
            && !self.overflow_pending()
            && !self.restart_pending()
        {
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

    #[inline]
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
}
