//! The consumer side of a ring: [`Consumer`], and the messages it hands over
//! ([`SlotRef`], [`Step`]).

use super::memory::Half;
use super::{wait_published, HalfTaken, RingMemory};
use crate::abi::{KIND_CANCELLED, TAG_KIND_MASK};
use crate::sync::Ordering;

/// One message as the consumer sees it, borrowed from its slot.
#[derive(Clone, Copy, Debug)]
pub struct SlotRef<'a> {
    /// Position of the slot (wrapping cursor value).
    pub position: u32,
    /// Message kind (low 16 bits) and sender id (high 16 bits).
    pub tag: u32,
    /// Correlation id.
    pub corr: [u32; 2],
    /// Payload bytes, aligned to 16.
    pub payload: &'a [u8],
}

/// What [`Consumer::consume`] does after handing over one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The message was consumed; go on.
    Next,
    /// The message was consumed; stop the batch.
    Last,
    /// The message was not consumed (it stays first in the ring); stop the batch.
    Keep,
}

/// The consumer side of a ring. At most one exists per ring at a time (see
/// [`Consumer::new`]); its methods take `&mut self`.
///
/// ```compile_fail
/// # use gyre_runtime::ring::{Consumer, HostRing, RingLayout};
/// # use std::sync::Arc;
/// // The only way to a second consumer is through the first: it cannot be cloned.
/// let ring = Arc::new(HostRing::new(RingLayout::new(8, 64).unwrap()));
/// let consumer = Consumer::new(ring).unwrap();
/// let second = consumer.clone();
/// ```
#[derive(Debug)]
pub struct Consumer<M: RingMemory> {
    mem: M,
    mask: u32,
    /// Our copy of `head`; we are its only writer.
    head: u32,
    /// Messages at `head..head + run` seen published by [`Consumer::ready_run`] and not
    /// released yet: what [`Consumer::with_run_slot`] may read.
    run: u32,
    /// Where the slots are, when `mem` has them in one region: read once here.
    #[cfg(not(loom))]
    slots: Option<super::memory::Slots>,
}

impl<M: RingMemory> Consumer<M> {
    /// The consumer side of the ring in `mem`: the only one until it is dropped.
    ///
    /// # Errors
    /// [`HalfTaken::Consumer`] while another `Consumer` of the same ring exists.
    pub fn new(mem: M) -> Result<Self, HalfTaken> {
        if !mem.halves().take(Half::Consumer) {
            return Err(HalfTaken::Consumer);
        }
        let mask = mem.capacity() - 1;
        // Relaxed: `take` (Acquire) ordered this after the previous consumer's last
        // store of `head`, and we are the only writer from now on.
        let head = mem.head().load(Ordering::Relaxed);
        Ok(Self {
            #[cfg(not(loom))]
            slots: super::memory::Slots::of(&mem),
            mem,
            mask,
            head,
            run: 0,
        })
    }

    /// The ring's memory.
    #[inline]
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The next position to consume.
    #[inline]
    pub fn head(&self) -> u32 {
        self.head
    }

    #[inline]
    fn is_full(&self, position: u32) -> bool {
        // ORDERING: Acquire pairs with the producer's Release store of the stamp in
        // `Claim::publish` (or its cancel): the body's bytes are visible after it.
        self.mem.stamp(position & self.mask).load(Ordering::Acquire) == position.wrapping_add(1)
    }

    /// Whether the next position holds nothing published yet: [`Consumer::consume`]
    /// would find nothing to do. A cancelled slot at the next position counts as
    /// something (`false`): `consume` releases it, though it hands no message over.
    #[inline]
    pub fn is_empty(&self) -> bool {
        !self.is_full(self.head)
    }

    /// Hands up to `max` published messages, in order, to `f`, then releases the
    /// positions it is done with to producers with one store of `head`.
    ///
    /// Cancelled slots (claims dropped or cancelled unpublished) are skipped and released
    /// on the way; they do not count against `max`, so `consume(1, ..)` hands over the
    /// next message even behind cancelled slots. It stops after `max` messages, at
    /// [`Step::Last`] or [`Step::Keep`], or at the first position not published yet.
    ///
    /// Returns the number of positions released: messages consumed and cancelled slots
    /// skipped (a message answered with [`Step::Keep`] is not released).
    #[inline]
    pub fn consume(&mut self, max: u32, mut f: impl FnMut(SlotRef<'_>) -> Step) -> u32 {
        self.run = 0;
        let mut taken = 0;
        let mut handed = 0;
        while handed < max {
            let position = self.head.wrapping_add(taken);
            if !self.is_full(position) {
                break;
            }
            // SAFETY: the stamp says the slot holds `position`, seen with Acquire, and we
            // have not released it, so the producer does not write it.
            let step = unsafe {
                self.mem.with_body(position & self.mask, |body| {
                    parse_slot(position, body).map(&mut f)
                })
            };
            match step {
                // Cancelled: released, not handed over.
                None => taken += 1,
                Some(Step::Next) => {
                    taken += 1;
                    handed += 1;
                }
                Some(Step::Last) => {
                    taken += 1;
                    break;
                }
                Some(Step::Keep) => break,
            }
        }
        self.release(taken);
        taken
    }

    /// Finds the run of messages published at the next positions, up to `max`, without
    /// consuming them: afterwards [`Consumer::with_run_slot`] reads message `i` of the run in
    /// place for every `i` below the answer, and [`Consumer::release_run`] releases the
    /// first messages of the run once they are handled. The way to hand a handler many
    /// messages at once (a batch) while they stay in the ring until it returns.
    ///
    /// Cancelled slots before the first message are released on the way; the run ends at
    /// the first position not published yet or at a cancelled slot, so its messages sit
    /// at consecutive positions. Returns the run's length (0 when nothing is published).
    #[inline]
    pub fn ready_run(&mut self, max: u32) -> u32 {
        let mut skipped = 0;
        loop {
            let position = self.head.wrapping_add(skipped);
            if !self.is_full(position)
                // SAFETY: read only after `is_full` saw the stamp with Acquire; unreleased.
                || unsafe {
                    self.mem.with_body(position & self.mask, |body| {
                        parse_slot(position, body).is_some()
                    })
                }
            {
                break;
            }
            skipped += 1;
        }
        self.release(skipped);
        let mut run = 0;
        while run < max {
            let position = self.head.wrapping_add(run);
            if !self.is_full(position)
                // SAFETY: as above.
                || unsafe {
                    self.mem.with_body(position & self.mask, |body| {
                        parse_slot(position, body).is_none()
                    })
                }
            {
                break;
            }
            run += 1;
        }
        self.run = run;
        run
    }

    /// Hands message `i` of the run the last [`Consumer::ready_run`] found to `f`, read
    /// in place.
    ///
    /// # Panics
    /// When `i` is not below what is left of that run.
    #[inline]
    pub fn with_run_slot<R>(&self, i: u32, f: impl FnOnce(SlotRef<'_>) -> R) -> R {
        assert!(i < self.run, "message {i} is outside a run of {}", self.run);
        let position = self.head.wrapping_add(i);
        // SAFETY: `ready_run` saw the position published (stamp loaded with Acquire)
        // and not cancelled, and it is not released: the producer does not write it.
        unsafe {
            self.mem.with_body(position & self.mask, |body| {
                match parse_slot(position, body) {
                    Some(slot) => f(slot),
                    None => unreachable!("ready_run stops at cancelled slots"),
                }
            })
        }
    }

    /// Hands messages `from..to` of the run the last [`Consumer::ready_run`] found to
    /// `f`, in order, each read in place as [`Consumer::with_run_slot`] reads one; where
    /// the slots are is read once for the whole run, not once per message.
    ///
    /// # Panics
    /// When `to` is beyond what is left of that run.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn read_run(&self, from: u32, to: u32, mut f: impl FnMut(u32, SlotRef<'_>)) {
        assert!(
            to <= self.run,
            "messages up to {to} are outside a run of {}",
            self.run
        );
        let (head, mask) = (self.head, self.mask);
        #[cfg(not(loom))]
        let slots = self.slots;
        for i in from..to {
            let position = head.wrapping_add(i);
            let index = position & mask;
            // SAFETY: `ready_run` saw the position published (stamp loaded with Acquire)
            // and not cancelled, and it is not released: the producer does not write it.
            unsafe {
                #[cfg(not(loom))]
                if let Some(slots) = slots {
                    let (at, len) = slots.body(index);
                    hand_body(std::slice::from_raw_parts(at, len), position, i, &mut f);
                } else {
                    self.mem
                        .with_body(index, |body| hand_body(body, position, i, &mut f));
                }
                #[cfg(loom)]
                self.mem
                    .with_body(index, |body| hand_body(body, position, i, &mut f));
            }
        }
    }

    /// Releases the first `count` messages of the current run to producers.
    ///
    /// # Panics
    /// When `count` is more than what is left of the run.
    #[inline]
    pub fn release_run(&mut self, count: u32) {
        assert!(
            count <= self.run,
            "released {count} of a run of {}",
            self.run
        );
        self.run -= count;
        self.release(count);
    }

    #[inline]
    fn release(&mut self, count: u32) {
        if count == 0 {
            return;
        }
        self.head = self.head.wrapping_add(count);
        // ORDERING: Release pairs with the producer's Acquire load of `head` in
        // `try_claim`: our reads of the released slots happen before its next writes.
        self.mem.head().store(self.head, Ordering::Release);
    }

    /// Waits until every position before `tail` (a value returned by
    /// [`Producer::close`](super::Producer::close)) is published, spinning at most `spins` rounds.
    ///
    /// Returns whether they all are. After `true`, [`Consumer::consume`] sees every
    /// message the closed producer side will ever send.
    pub fn wait_published(&self, tail: u32, spins: u32) -> bool {
        wait_published(&self.mem, self.head, tail, spins)
    }

    /// Number of slots.
    #[inline]
    pub fn capacity(&self) -> u32 {
        self.mem.capacity()
    }
}

impl<M: RingMemory> Drop for Consumer<M> {
    fn drop(&mut self) {
        self.mem.halves().give_back(Half::Consumer);
    }
}

impl SlotRef<'_> {
    /// Whether the correlation id carries a host send time (see
    /// [`crate::abi::KIND_TIMED`]) rather than one of the user's.
    #[inline]
    pub fn is_timed(&self) -> bool {
        self.tag & TAG_KIND_MASK == crate::abi::KIND_TIMED
    }

    /// The correlation id as the user set it: 0 for a timed message.
    #[inline]
    pub fn user_corr(&self) -> [u32; 2] {
        if self.is_timed() {
            [0, 0]
        } else {
            self.corr
        }
    }
}

/// Message `i` of a [`Consumer::read_run`], at `position`, to `f`.
#[allow(clippy::inline_always)]
#[inline(always)]
fn hand_body(body: &[u8], position: u32, i: u32, f: &mut impl FnMut(u32, SlotRef<'_>)) {
    match parse_slot(position, body) {
        Some(slot) => f(i, slot),
        None => unreachable!("ready_run stops at cancelled slots"),
    }
}

/// The message in a slot body, or `None` for a cancelled slot.
#[inline]
pub(super) fn parse_slot(position: u32, body: &[u8]) -> Option<SlotRef<'_>> {
    let word = |at: usize| u32::from_ne_bytes(body[at..at + 4].try_into().unwrap_or_default());
    let tag = word(0);
    (tag & TAG_KIND_MASK != KIND_CANCELLED).then(|| SlotRef {
        position,
        tag,
        corr: [word(4), word(8)],
        payload: &body[12..],
    })
}
