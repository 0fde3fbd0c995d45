//! The host side of a CPU kernel's rings: sends into its inbox, receives from its outbox.

use std::sync::Arc;

use super::{ExclusiveLane, KernelCore, OutputConsumer, Ring};
use crate::abi::{make_tag, State, KIND_MESSAGE};
use crate::ring::{Claim, ClaimError, SlotRef, Step};
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

impl KernelCore {
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
    pub(super) fn send_through<'a>(
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
    pub(super) fn closed_state(&self) -> State {
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
}
