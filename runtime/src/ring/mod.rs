//! The lock-free ring: fixed-size slots with per-slot sequence stamps and u32 wrapping
//! cursors, over any [`RingMemory`].
//!
//! Guarantees:
//! - no allocation after the ring's memory exists; a message is written into its slot in
//!   place and read from it in place;
//! - never overwrites: a full ring is reported to the producer, which decides to wait or
//!   to hand the message back;
//! - one writer per word: stamps and `tail` are written only by the producer side, `head`
//!   only by the consumer side, so the two sides may sit on either end of a device
//!   boundary with plain acquire loads and release stores;
//! - several producers on one side coordinate with a compare-and-swap on `tail`, which
//!   lives in their side's memory; there is exactly one consumer;
//! - one [`Producer`] (shared by reference between producer threads) and one [`Consumer`]
//!   exist per ring at a time: the ring's memory records which halves are handed out
//!   ([`Halves`]), and a second [`Producer::new`] or [`Consumer::new`] on the same ring
//!   fails with [`HalfTaken`] until the first is dropped. Two consumers racing on slot
//!   bodies cannot be made from safe code.
//!
//! The protocol, with the reason for every ordering, is in `runtime/docs/ABI.md`.
//!
//! ```
//! use gyre_runtime::ring::{Consumer, HalfTaken, HostRing, Producer, RingLayout, Step};
//! use std::sync::Arc;
//!
//! let ring = Arc::new(HostRing::new(RingLayout::new(8, 64)?));
//! let producer = Producer::new(ring.clone())?;
//! let mut consumer = Consumer::new(ring.clone())?;
//! // The ring has its consumer: a second one is refused.
//! assert_eq!(Consumer::new(ring).err(), Some(HalfTaken::Consumer));
//!
//! let claim = producer.try_claim(1).expect("an empty ring has room");
//! claim.write(0, 0, [7, 0], |payload| payload[..4].copy_from_slice(&42u32.to_le_bytes()));
//! claim.publish();
//!
//! let mut got = Vec::new();
//! consumer.consume(16, |slot| {
//!     got.push((slot.corr[0], slot.payload[0]));
//!     Step::Next
//! });
//! assert_eq!(got, [(7, 42)]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod memory;

#[cfg(loom)]
pub use memory::LoomMemory;
pub use memory::{Halves, LayoutError, RingLayout, RingMemory};
#[cfg(not(loom))]
pub use memory::{HostRing, RawRing};

use memory::Half;

use crate::abi::KIND_CANCELLED;
use crate::sync::{asym, spin_hint, AtomicBool, AtomicU32, Ordering};

mod consumer;

use consumer::parse_slot;
pub use consumer::{Consumer, SlotRef, Step};

/// Why [`Producer::try_claim`] did not claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// Fewer than the requested slots are free; `free` were at the time of the check.
    #[error(
        "the ring is full ({free} slots free): wait until the consumer frees room and \
         claim again, or hand the message back"
    )]
    Full {
        /// Slots that were free.
        free: u32,
    },
    /// The producer side was closed by [`Producer::close`].
    #[error(
        "the ring is closed: its consumer is stopping and takes no more messages; \
         hand the message back (claims succeed again only after `Producer::reopen`)"
    )]
    Closed,
    /// More slots were asked for than the ring has.
    #[error(
        "more slots were asked for than the ring has: claim at most `capacity()` \
         slots at a time"
    )]
    TooMany,
}

/// Why [`Producer::new`] or [`Consumer::new`] refused to make a half of a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HalfTaken {
    /// The ring already has a [`Producer`].
    #[error(
        "this ring already has a producer: share that one (its claims take `&self`; put \
         it in an `Arc`) or drop it before making another"
    )]
    Producer,
    /// The ring already has a [`Consumer`].
    #[error(
        "this ring already has a consumer, and a ring has exactly one: move that one to \
         where it is needed, or drop it before making another"
    )]
    Consumer,
}

/// The producer side of a ring. Shareable: several threads may claim through `&self`.
///
/// At most one exists per ring at a time (see [`Producer::new`]); dropping it lets
/// another be made.
#[derive(Debug)]
pub struct Producer<M: RingMemory> {
    mem: M,
    mask: u32,
    /// A value recently read from the consumer's `head`. Can be stale (behind the real
    /// head), never ahead of it, and can even move back when two producers refresh it at
    /// once; reloaded only when the ring looks full (or the value makes no sense).
    cached_head: AtomicU32,
    /// Set once by `close`; producers that claim afterwards cancel their claim.
    closed: AtomicBool,
    /// Set once a heavy fence ran after `closed` was set: a later `close` needs none.
    close_fenced: AtomicBool,
    /// Where the slots are, when `mem` has them in one region: read once here.
    #[cfg(not(loom))]
    slots: Option<memory::Slots>,
}

/// What [`Producer::room`] found.
enum Room {
    /// The positions are free.
    Fits,
    /// Only this many slots are free.
    Full(u32),
    /// The consumer has passed the `tail` the caller read (another producer moved it).
    StaleTail,
}

/// Positions claimed by one producer. Write each slot, then [`Claim::publish`].
///
/// Dropping a claim without publishing cancels it: its slots are published as
/// cancelled, which consumers skip, so the ring never stalls on an abandoned claim.
#[must_use = "a claim that is not published is cancelled"]
#[derive(Debug)]
pub struct Claim<'a, M: RingMemory> {
    producer: &'a Producer<M>,
    start: u32,
    len: u32,
}

impl<M: RingMemory> Producer<M> {
    /// The producer side of the ring in `mem`: the only one until it is dropped.
    ///
    /// # Errors
    /// [`HalfTaken::Producer`] while another `Producer` of the same ring exists.
    pub fn new(mem: M) -> Result<Self, HalfTaken> {
        if !mem.halves().take(Half::Producer) {
            return Err(HalfTaken::Producer);
        }
        let mask = mem.capacity() - 1;
        // ORDERING: Acquire pairs with the consumer's Release store of `head`; see
        // `try_claim`.
        let head = mem.head().load(Ordering::Acquire);
        Ok(Self {
            #[cfg(not(loom))]
            slots: memory::Slots::of(&mem),
            mem,
            mask,
            cached_head: AtomicU32::new(head),
            closed: AtomicBool::new(false),
            close_fenced: AtomicBool::new(false),
        })
    }

    /// The ring's memory.
    #[inline]
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Claims `len` consecutive positions, or fails without waiting.
    ///
    /// # Errors
    /// [`ClaimError::Full`] when fewer than `len` slots are free, [`ClaimError::Closed`]
    /// after [`Producer::close`], [`ClaimError::TooMany`] when `len` exceeds the capacity.
    #[inline]
    pub fn try_claim(&self, len: u32) -> Result<Claim<'_, M>, ClaimError> {
        let capacity = self.mem.capacity();
        if len > capacity {
            return Err(ClaimError::TooMany);
        }
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return Err(ClaimError::Closed);
            }
            let tail = self.mem.tail().load(Ordering::Relaxed);
            match self.room(tail, len) {
                Room::Fits => {}
                Room::Full(free) => return Err(ClaimError::Full { free }),
                Room::StaleTail => {
                    // The consumer passed the `tail` we read: it is stale; read again.
                    spin_hint();
                    continue;
                }
            }
            // ORDERING: SeqCst (Acquire would do) pairs with the read-modify-write of
            // `tail` in `close`. Every change of `tail` after init is a read-modify-write,
            // so either our CAS comes first in `tail`'s modification order and `close`
            // reads a tail that includes this claim, or `close`'s RMW comes first, heads
            // the release sequence our CAS reads from, and its store of `closed` happens
            // before our load of `closed` below, which then cancels the claim.
            // Same-side producers only; the other side never writes `tail`.
            if self
                .mem
                .tail()
                .compare_exchange_weak(
                    tail,
                    tail.wrapping_add(len),
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                let claim = Claim {
                    producer: self,
                    start: tail,
                    len,
                };
                // ORDERING: SeqCst, see the compare-and-swap above (ordered after it).
                if self.closed.load(Ordering::SeqCst) {
                    claim.cancel();
                    return Err(ClaimError::Closed);
                }
                return Ok(claim);
            }
            spin_hint();
        }
    }

    /// Claims like [`Producer::try_claim`] without a compare-and-swap, for a producer side
    /// that has a single producer thread (a kernel emitting into its output ring).
    ///
    /// # Errors
    /// As [`Producer::try_claim`].
    ///
    /// # Safety
    /// Nothing else claims in this ring while this call runs or while a claim it returned
    /// is alive: no other thread through this producer (the only one of the ring, see
    /// [`Producer::new`]) and no producer outside Rust (a device kernel).
    /// ([`Producer::close`] may run concurrently.)
    #[inline]
    pub unsafe fn try_claim_exclusive(&self, len: u32) -> Result<Claim<'_, M>, ClaimError> {
        let capacity = self.mem.capacity();
        if len > capacity {
            return Err(ClaimError::TooMany);
        }
        if self.closed.load(Ordering::Relaxed) {
            return Err(ClaimError::Closed);
        }
        // We are the only writer of `tail` (caller's guarantee), so our read is current
        // and never stale.
        let tail = self.mem.tail().load(Ordering::Relaxed);
        match self.room(tail, len) {
            Room::Fits => {}
            Room::Full(free) => return Err(ClaimError::Full { free }),
            Room::StaleTail => unreachable!("a single producer's own tail is never stale"),
        }
        // ORDERING: Release pairs with the Acquire load of `tail` in `Producer::used`: the
        // `head` that `room` checked happens before an observer's later load of `head`,
        // so the observer never pairs this tail with an older head. (Consumers never read
        // `tail` for correctness: they read stamps.)
        self.mem
            .tail()
            .store(tail.wrapping_add(len), Ordering::Release);
        let claim = Claim {
            producer: self,
            start: tail,
            len,
        };
        // ORDERING: light side of an asymmetric fence between our store of `tail` and the
        // load of `closed`; `close` stores `closed`, runs the heavy side, then reads
        // `tail`. Either `close` sees this claim or we see `closed` and cancel it.
        asym::light();
        if self.closed.load(Ordering::Relaxed) {
            claim.cancel();
            return Err(ClaimError::Closed);
        }
        Ok(claim)
    }

    /// Writes one message into the next position and publishes it, like
    /// [`Producer::try_claim_exclusive`]`(1)` followed by [`Claim::write`] and
    /// [`Claim::publish`], with nothing built or moved in between: the path a kernel's
    /// emits take. `payload` is copied to the start of the slot's payload.
    ///
    /// # Errors
    /// [`ClaimError::Full`] when no slot is free, [`ClaimError::Closed`] after
    /// [`Producer::close`] (nothing is written then), [`ClaimError::TooMany`] when
    /// `payload` is longer than a slot's payload.
    ///
    /// # Safety
    /// As [`Producer::try_claim_exclusive`]: nothing else claims in this ring while the
    /// call runs.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub unsafe fn push_exclusive(
        &self,
        tag: u32,
        corr: [u32; 2],
        payload: &[u8],
    ) -> Result<(), ClaimError> {
        // SAFETY: the caller's guarantee, passed on.
        unsafe { self.push_exclusive_at(|_| (tag, corr), payload) }
    }

    /// [`Producer::push_exclusive`] with the tag and correlation id chosen from the
    /// position the message gets (`header(position)`, called once, only when the message
    /// is written): how a sender samples one position in N for latency timing.
    ///
    /// # Errors
    /// As [`Producer::push_exclusive`].
    ///
    /// # Safety
    /// As [`Producer::push_exclusive`].
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub unsafe fn push_exclusive_at(
        &self,
        header: impl FnOnce(u32) -> (u32, [u32; 2]),
        payload: &[u8],
    ) -> Result<(), ClaimError> {
        if payload.len() > (self.mem.slot_bytes() - crate::abi::SLOT_HEADER_BYTES) as usize {
            return Err(ClaimError::TooMany);
        }
        if self.closed.load(Ordering::Relaxed) {
            return Err(ClaimError::Closed);
        }
        // The only writer of `tail` (caller's guarantee): our read is current.
        let tail = self.mem.tail().load(Ordering::Relaxed);
        match self.room(tail, 1) {
            Room::Fits => {}
            Room::Full(free) => return Err(ClaimError::Full { free }),
            Room::StaleTail => unreachable!("a single producer's own tail is never stale"),
        }
        // ORDERING: Release, as in `try_claim_exclusive` (pairs with `used`).
        self.mem
            .tail()
            .store(tail.wrapping_add(1), Ordering::Release);
        // ORDERING: light side of the asymmetric fence with `close`, as in
        // `try_claim_exclusive`: either `close` sees this position or we see `closed`.
        asym::light();
        let index = tail & self.mask;
        if self.closed.load(Ordering::Relaxed) {
            // SAFETY: the position is ours (stored `tail` above) and unstamped.
            unsafe {
                self.mem.with_body_mut(index, |body| {
                    body[0..4].copy_from_slice(&KIND_CANCELLED.to_ne_bytes());
                });
            }
            self.stamp_full(tail);
            return Err(ClaimError::Closed);
        }
        let (tag, corr) = header(tail);
        // SAFETY: as in `Claim::write`: the position is ours alone (single producer, the
        // room check proved the consumer released its previous lap), not stamped yet.
        unsafe {
            self.mem.with_body_mut(index, |body| {
                body[0..4].copy_from_slice(&tag.to_ne_bytes());
                body[4..8].copy_from_slice(&corr[0].to_ne_bytes());
                body[8..12].copy_from_slice(&corr[1].to_ne_bytes());
                body[12..12 + payload.len()].copy_from_slice(payload);
            });
        }
        self.stamp_full(tail);
        Ok(())
    }

    /// Closes the producer side: every later claim fails with [`ClaimError::Closed`].
    ///
    /// Returns the final `tail`: every position before it was claimed before the close
    /// and will be published (as a message or as cancelled); no position at or after it
    /// will ever hold a message. Pair with [`Consumer::wait_published`].
    pub fn close(&self) -> u32 {
        let [tail] = Self::close_all([self]);
        tail
    }

    /// Closes several producer sides at once with one heavy fence (a system call on
    /// Linux) instead of one each; returns their final tails (see [`Producer::close`]).
    pub fn close_all<const N: usize>(producers: [&Self; N]) -> [u32; N] {
        if producers
            .iter()
            .any(|p| !p.close_fenced.load(Ordering::Acquire))
        {
            for producer in producers {
                // ORDERING: SeqCst, pairs with the claim in `try_claim` (see there); the
                // store is sequenced before the release half of the RMW below.
                producer.closed.store(true, Ordering::SeqCst);
            }
            // ORDERING: heavy side of the asymmetric fence that `try_claim_exclusive`
            // pairs with its light side (see there). Once it ran after `closed` was set,
            // every later claim sees `closed` or is seen by a later `close`'s read of
            // `tail`, so closing again needs no fence.
            asym::heavy();
            for producer in producers {
                // ORDERING: Release pairs with the Acquire load above: a closer that skips
                // the fence sees `closed` stored and fenced.
                producer.close_fenced.store(true, Ordering::Release);
            }
        }
        // ORDERING: a read-modify-write, not a load: it reads the latest `tail` in its
        // modification order and (Release) heads the release sequence that later claims
        // read from, so the argument in `try_claim` needs no single total order (loom
        // cannot check one: it treats SeqCst accesses as AcqRel).
        producers.map(|p| p.mem.tail().fetch_add(0, Ordering::SeqCst))
    }

    /// Waits until every position before `tail` (a value returned by
    /// [`Producer::close`]) is published, spinning at most `spins` rounds; the closer's
    /// way to know that no claim made before the close is still being written.
    pub fn wait_published(&self, tail: u32, spins: u32) -> bool {
        // ORDERING: Acquire pairs with the consumer's Release store of `head`; positions
        // before it were published and consumed.
        let head = self.mem.head().load(Ordering::Acquire);
        wait_published(&self.mem, head, tail, spins)
    }

    /// Closes the ring, waits until every claim made before the close is published, and
    /// hands the messages at positions `from` up to the final tail to `f` without
    /// consuming them. Returns how many it handed over.
    ///
    /// This is how a host takes a ring over from a consumer that stopped answering (a
    /// handler that never returns), or reads back what a device consumer left. Positions
    /// the consumer already released are never handed over: when `from` is before the
    /// ring's `head`, the read starts at `head`.
    ///
    /// # Safety
    /// Let *start* be the later of `from` and the ring's `head` when the call begins.
    /// While the call runs, the ring's consumer (in Rust or outside it) releases no
    /// position at or after *start*; it may still read those slots. Once the ring is
    /// closed and published no producer writes a slot it has not been given, so reading
    /// beside such a consumer is sound; a release would let a claim that raced the close
    /// write the slot being read.
    pub unsafe fn read_closed(&self, from: u32, mut f: impl FnMut(SlotRef<'_>)) -> u32 {
        let tail = self.close();
        let published = self.wait_published(tail, u32::MAX);
        debug_assert!(
            published,
            "an unbounded wait returns only when all is published"
        );
        let capacity = self.mem.capacity();
        // ORDERING: Acquire pairs with the consumer's Release store of `head`: positions
        // before it were consumed and released, and are skipped.
        let head = self.mem.head().load(Ordering::Acquire);
        // `from` before `head`: start at `head` (every cursor here is within one lap of
        // `tail`, so the wrapping distances compare).
        let mut position = if tail.wrapping_sub(from) > tail.wrapping_sub(head) {
            head
        } else {
            from
        };
        let mut handed = 0;
        while (1..=capacity).contains(&tail.wrapping_sub(position)) {
            // ORDERING: Acquire pairs with the Release store of the stamp in `publish`.
            if self.mem.stamp(position & self.mask).load(Ordering::Acquire)
                == position.wrapping_add(1)
            {
                // SAFETY: the stamp marks the slot full for `position`, seen with Acquire;
                // the ring is closed and every claim before `tail` is published, and the
                // consumer releases no position at or after the start (caller's
                // guarantee), so no producer is given this slot again while we read it.
                unsafe {
                    self.mem.with_body(position & self.mask, |body| {
                        if let Some(slot) = parse_slot(position, body) {
                            handed += 1;
                            f(slot);
                        }
                    });
                }
            }
            position = position.wrapping_add(1);
        }
        handed
    }

    /// Reopens a ring closed by [`Producer::close`] for a restarted kernel. Call only
    /// once its consumer took (or the host collected) everything up to the final tail.
    pub fn reopen(&self) {
        // ORDERING: Relaxed: the ring is empty and idle, and a claim is correct whether it
        // sees the reopen now or a little later (it fails with `Closed` until then).
        self.close_fenced.store(false, Ordering::Relaxed);
        self.closed.store(false, Ordering::Relaxed);
    }

    /// Whether [`Producer::close`] was called.
    #[inline]
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Positions claimed and not yet released (messages, claims being written, cancelled
    /// slots), for gauges. Callable from any thread.
    ///
    /// Never more than the ring held at the moment this call read `head`: with at most
    /// N positions ever claimed and unreleased at once, it never answers more than N,
    /// whatever the producers and the consumer do meanwhile. It may answer less (down to
    /// what the ring held when the call began, minus what the consumer released during
    /// the call). From the ring's only producing thread, while nothing else claims, it
    /// never answers less than the ring holds when the call returns minus what was
    /// released during the call.
    #[inline]
    pub fn len(&self) -> u32 {
        self.used()
    }

    /// Slots free for claiming, for gauges and for a producer deciding whether to wait.
    /// Callable from any thread. Always `capacity() - len()` for one reading of both
    /// cursors, so it never answers less than was free at the moment this call read
    /// `head` (see [`Producer::len`]).
    ///
    /// From the ring's only producing thread (one thread claims, nothing else does) it
    /// is a lower bound as well: a claim of up to `free()` slots made next by that
    /// thread succeeds unless the ring is closed. With several producing threads others
    /// may claim the room it reports.
    #[inline]
    pub fn free(&self) -> u32 {
        self.mem.capacity() - self.used()
    }

    /// Like [`Producer::free`] but reads the consumer's `head` only when the cached copy
    /// shows fewer than `wanted` free slots, so a hot producer that only needs to know
    /// "at least `wanted`" does not pull the consumer's line every time. Callable from
    /// any thread, with the guarantees of [`Producer::free`]; an answer of `wanted` or
    /// more may rest on the cached `head` and undercount the room.
    #[inline]
    pub fn free_up_to(&self, wanted: u32) -> u32 {
        let capacity = self.mem.capacity();
        // ORDERING: Acquire pairs with the Release half of every change of `tail` (the
        // claims' compare-and-swap, the exclusive claim's store): see `used`.
        let tail = self.mem.tail().load(Ordering::Acquire);
        // ORDERING: Acquire, as in `room`: the caller may claim the slots this head
        // freed. A stale (or moved back) cached head only makes `used` larger: an early
        // answer is at least `wanted` and, from the only producing thread, never more
        // than the room there is.
        let used = tail.wrapping_sub(self.cached_head.load(Ordering::Acquire));
        if used <= capacity && capacity - used >= wanted {
            return capacity - used;
        }
        // ORDERING: Acquire, as in `room`: slots freed by this head may be written.
        let head = self.mem.head().load(Ordering::Acquire);
        // ORDERING: Release, as in `room`.
        self.cached_head.store(head, Ordering::Release);
        capacity - Self::used_between(capacity, tail, head)
    }

    /// `tail - head` for a `tail` loaded (with Acquire) before `head`: 0 when the
    /// consumer passed that `tail` before `head` was loaded.
    #[inline]
    fn used_between(capacity: u32, tail: u32, head: u32) -> u32 {
        let used = tail.wrapping_sub(head);
        // A consumer never passes the `tail` current when it releases, so a `head` past
        // our (older) `tail` shows as a wrapped difference above the capacity: nothing
        // of what we counted is left.
        if used > capacity {
            0
        } else {
            used
        }
    }

    /// One consistent reading of the two cursors: see [`Producer::len`].
    #[inline]
    fn used(&self) -> u32 {
        // ORDERING: `tail` first, then `head`, so the answer can only undercount: the
        // ring's `tail` when `head` is read is at or after the one read here (it only
        // grows), so `tail - head` is at most what the ring holds at that moment; when the
        // consumer passed our `tail` meanwhile the count is 0 (see `used_between`).
        // Acquire pairs with the Release half of the claim that stored this `tail`
        // (compare-and-swap in `try_claim`, store in `try_claim_exclusive`, or the
        // read-modify-write in `close`, which continues that release sequence). That
        // claim checked room against a `head` it loaded with Acquire (directly or through
        // `cached_head`), so that `head` happens before our load below, which reads it or
        // a later one: `tail - head` is never above the capacity because of a stale head.
        let tail = self.mem.tail().load(Ordering::Acquire);
        // Relaxed: only its value is used (coherence orders it after the head above).
        let head = self.mem.head().load(Ordering::Relaxed);
        Self::used_between(self.mem.capacity(), tail, head)
    }

    /// Whether a message (or cancelled slot) is published at the consumer's next
    /// position, for a scheduler deciding whether the consumer has work without owning
    /// it. Callable from any thread. `true` means the position the consumer was at when
    /// this call read `head` was published by the time its stamp was read (the consumer
    /// may have taken it since); `false` means it was not, or the consumer had moved on
    /// and the slot holds a later lap not yet published.
    #[inline]
    pub fn has_published(&self) -> bool {
        // ORDERING: Acquire on `head` pairs with the consumer's Release store, so the
        // stamp we read is at least that lap's.
        let head = self.mem.head().load(Ordering::Acquire);
        // ORDERING: Acquire pairs with the producer's Release store of the stamp.
        self.mem.stamp(head & self.mask).load(Ordering::Acquire) == head.wrapping_add(1)
    }

    /// Whether [`Producer::len`] is 0: no position claimed and unreleased, as far as one
    /// reading of the cursors shows (see there). Callable from any thread; `false` is
    /// never wrong about the moment `head` was read, `true` may miss claims made during
    /// the call.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of slots.
    #[inline]
    pub fn capacity(&self) -> u32 {
        self.mem.capacity()
    }

    /// Whether `len` positions from `tail` are free, reading the consumer's `head` only
    /// when the cached copy says they are not.
    #[inline]
    fn room(&self, tail: u32, len: u32) -> Room {
        let capacity = self.mem.capacity();
        // ORDERING: Acquire pairs with the Release store of `cached_head` below, made by
        // whichever producer of this side loaded that head: the consumer's reads of the
        // slots before it happen before our writes (transitively, through that
        // producer's Acquire load of `head`).
        let used = tail.wrapping_sub(self.cached_head.load(Ordering::Acquire));
        // Another producer may have moved `cached_head` past our `tail` (or back to an
        // older head), so `used` can exceed the capacity; never subtract then.
        if used <= capacity && capacity - used >= len {
            return Room::Fits;
        }
        // ORDERING: Acquire pairs with the consumer's Release store of `head` in
        // `Consumer::release`: its reads of the slots before `head` happen before our
        // writes to them.
        let head = self.mem.head().load(Ordering::Acquire);
        // ORDERING: Release passes the synchronisation above on to producers that use
        // the cached value instead of loading `head` (see the load above).
        self.cached_head.store(head, Ordering::Release);
        let used = tail.wrapping_sub(head);
        if used > capacity {
            Room::StaleTail
        } else if capacity - used < len {
            Room::Full(capacity - used)
        } else {
            Room::Fits
        }
    }

    #[inline]
    fn stamp_full(&self, position: u32) {
        // ORDERING: Release pairs with the consumer's Acquire load of the stamp in
        // `Consumer::consume`: the body written before it happens before its reads.
        self.mem
            .stamp(position & self.mask)
            .store(position.wrapping_add(1), Ordering::Release);
    }
}

impl<M: RingMemory> Drop for Producer<M> {
    fn drop(&mut self) {
        self.mem.halves().give_back(Half::Producer);
    }
}

impl<M: RingMemory> Claim<'_, M> {
    /// First claimed position.
    #[inline]
    pub fn start(&self) -> u32 {
        self.start
    }

    /// Number of claimed positions.
    #[allow(clippy::len_without_is_empty)]
    #[inline]
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Writes slot `i` of the claim: its tag, correlation id and, through `fill`, its
    /// payload (`slot_bytes - 16` bytes, aligned to 16, holding the previous lap's bytes).
    ///
    /// # Panics
    /// When `i >= self.len()`.
    // Always: the batch paths call it once per message in a loop, and out of line it
    // costs a call and a run-time-length copy per message (seen in `perf`).
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn write<R>(
        &self,
        i: u32,
        tag: u32,
        corr: [u32; 2],
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        assert!(i < self.len, "slot {i} is outside a claim of {}", self.len);
        let position = self.start.wrapping_add(i);
        let index = position & self.producer.mask;
        // SAFETY: the claim owns `position` exclusively: the CAS on `tail` gave it to us
        // alone, the free check proved the consumer is done with the slot's previous lap,
        // and we have not stamped it yet.
        unsafe {
            self.producer.mem.with_body_mut(index, |body| {
                body[0..4].copy_from_slice(&tag.to_ne_bytes());
                body[4..8].copy_from_slice(&corr[0].to_ne_bytes());
                body[8..12].copy_from_slice(&corr[1].to_ne_bytes());
                fill(&mut body[12..])
            })
        }
    }

    /// Writes slots `from..len()` of the claim in order, as [`Claim::write`] does one,
    /// until `fill` runs dry: `fill(i, payload)` fills slot `i`'s payload and answers
    /// its tag and correlation id, or `None` when it has no message for the slot (what
    /// it wrote is then ignored). Returns the index of the first slot not written
    /// (`len()` when every one was); the caller writes the rest (as cancelled, say)
    /// before [`Claim::publish`].
    ///
    /// The way to write a batch: where the slots are is read once for the whole run, not
    /// once per message.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn write_run(
        &self,
        from: u32,
        mut fill: impl FnMut(u32, &mut [u8]) -> Option<(u32, [u32; 2])>,
    ) -> u32 {
        let producer = self.producer;
        // Copied out once: the payload writes below cannot change them, but the compiler
        // cannot tell through `&self`, and would reload them for every slot.
        let (start, len, mask) = (self.start, self.len, producer.mask);
        #[cfg(not(loom))]
        let slots = producer.slots;
        let mut i = from;
        while i < len {
            let index = start.wrapping_add(i) & mask;
            // SAFETY: as in `Claim::write`: the claim owns the position exclusively and
            // has not stamped it.
            let wrote = unsafe {
                #[cfg(not(loom))]
                if let Some(slots) = slots {
                    let (at, body_len) = slots.body(index);
                    write_body(std::slice::from_raw_parts_mut(at, body_len), i, &mut fill)
                } else {
                    producer
                        .mem
                        .with_body_mut(index, |body| write_body(body, i, &mut fill))
                }
                #[cfg(loom)]
                producer
                    .mem
                    .with_body_mut(index, |body| write_body(body, i, &mut fill))
            };
            if !wrote {
                break;
            }
            i += 1;
        }
        i
    }

    /// Publishes every claimed slot, in order.
    #[inline]
    pub fn publish(self) {
        for i in 0..self.len {
            self.producer.stamp_full(self.start.wrapping_add(i));
        }
        std::mem::forget(self);
    }

    /// Publishes every claimed slot as cancelled; consumers skip them.
    #[inline]
    pub fn cancel(self) {
        drop(self);
    }
}

impl<M: RingMemory> Drop for Claim<'_, M> {
    fn drop(&mut self) {
        for i in 0..self.len {
            let position = self.start.wrapping_add(i);
            // SAFETY: as in `write`: the claim still owns the unstamped position.
            unsafe {
                self.producer
                    .mem
                    .with_body_mut(position & self.producer.mask, |body| {
                        body[0..4].copy_from_slice(&KIND_CANCELLED.to_ne_bytes());
                    });
            }
            self.producer.stamp_full(position);
        }
    }
}

/// Slot `i` of a [`Claim::write_run`]: `fill` writes the payload, then the header it
/// answers; `false` when it had no message.
#[allow(clippy::inline_always)]
#[inline(always)]
fn write_body(
    body: &mut [u8],
    i: u32,
    fill: &mut impl FnMut(u32, &mut [u8]) -> Option<(u32, [u32; 2])>,
) -> bool {
    let (header, payload) = body.split_at_mut(12);
    let Some((tag, corr)) = fill(i, payload) else {
        return false;
    };
    header[0..4].copy_from_slice(&tag.to_ne_bytes());
    header[4..8].copy_from_slice(&corr[0].to_ne_bytes());
    header[8..12].copy_from_slice(&corr[1].to_ne_bytes());
    true
}

/// Waits until every position in `from..tail` is stamped full, spinning at most `spins`
/// rounds. Sound only once the producer side is closed and `tail` came from
/// [`Producer::close`]: the only later laps are then claims that raced the close, which
/// are cancelled, and a stamp they overwrite reads as "at or after" below.
fn wait_published<M: RingMemory>(mem: &M, from: u32, tail: u32, spins: u32) -> bool {
    let capacity = mem.capacity();
    let mask = capacity - 1;
    let mut position = from;
    let mut budget = spins;
    // Positions before `from` are consumed. `from` may already be past `tail` (the
    // consumer skipped a claim that raced the close and was cancelled), so test the
    // distance rather than `position != tail`.
    while (1..=capacity).contains(&tail.wrapping_sub(position)) {
        // ORDERING: Acquire pairs with the Release store of the stamp in `publish` or in
        // a cancel, so a caller that goes on to read the slot sees its body.
        let stamp = mem.stamp(position & mask).load(Ordering::Acquire);
        // Published for `position`, or already for a later lap: the slot was reused, so
        // `position` was published and consumed (a `from` read from `head` goes stale,
        // and a claim that raced the close may take the freed slot and cancel it). A
        // stamp of an earlier lap is `capacity` or more behind, never in this range.
        if stamp.wrapping_sub(position.wrapping_add(1)) < 1 << 31 {
            position = position.wrapping_add(1);
        } else if budget == 0 {
            return false;
        } else {
            budget -= 1;
            spin_hint();
            #[cfg(not(loom))]
            if budget.is_multiple_of(64) {
                std::thread::yield_now();
            }
        }
    }
    true
}
