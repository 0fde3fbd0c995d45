//! Where a ring lives: the [`RingMemory`] trait and its implementations.
//!
//! The protocol in [`super`] only touches memory through this trait, so the same code
//! runs over host heap memory ([`HostRing`]), memory someone else mapped ([`RawRing`],
//! used for pinned host memory shared with a GPU) and, under `--cfg loom`, over loom's
//! model cells ([`LoomMemory`]).

#[cfg(not(loom))]
use std::ptr::NonNull;

#[cfg(not(loom))]
use crate::abi::{RingHeader, ABI_VERSION, LINE_BYTES, RING_HEADER_BYTES, RING_MAGIC};
use crate::abi::{MAX_CAPACITY, MAX_SLOT_BYTES, MIN_SLOT_BYTES, SLOT_HEADER_BYTES};
use crate::sync::{AtomicBool, AtomicU32, Ordering};

/// Capacity and slot size of a ring, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RingLayout {
    capacity: u32,
    slot_bytes: u32,
}

/// Why a [`RingLayout`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The capacity was zero.
    #[error("ring capacity is 0: give a power of two between 1 and 2^30 slots, such as 1024")]
    ZeroCapacity,
    /// The capacity was not a power of two.
    #[error("ring capacity {0} is not a power of two: round it to {up}", up = .0.next_power_of_two())]
    CapacityNotPowerOfTwo(u32),
    /// The capacity exceeded [`MAX_CAPACITY`].
    #[error(
        "ring capacity {0} exceeds the maximum of 2^30 slots: use a power of two up to \
         1073741824"
    )]
    CapacityTooLarge(u32),
    /// The slot size was not a power of two in range.
    #[error(
        "slot size {0} bytes is invalid: use a power of two from 32 to 65536 bytes \
         (16 of them are the slot header)"
    )]
    BadSlotBytes(u32),
    /// The region would not fit in the address space.
    #[error(
        "a ring of {capacity} slots of {slot_bytes} bytes does not fit in memory: lower the \
         capacity or the slot size"
    )]
    TooLarge {
        /// Requested capacity.
        capacity: u32,
        /// Requested slot size.
        slot_bytes: u32,
    },
}

impl RingLayout {
    /// Validates a capacity (slots) and slot size (bytes, header included).
    ///
    /// # Errors
    /// [`LayoutError`] when the capacity is zero, not a power of two or above 2^30, or the
    /// slot size is not a power of two in `32..=65536`.
    pub const fn new(capacity: u32, slot_bytes: u32) -> Result<Self, LayoutError> {
        if capacity == 0 {
            return Err(LayoutError::ZeroCapacity);
        }
        // Too large first: then a capacity that is not a power of two is at most 2^30 and
        // the rounding its message advises neither overflows nor is refused in turn.
        if capacity > MAX_CAPACITY {
            return Err(LayoutError::CapacityTooLarge(capacity));
        }
        if !capacity.is_power_of_two() {
            return Err(LayoutError::CapacityNotPowerOfTwo(capacity));
        }
        if !slot_bytes.is_power_of_two()
            || slot_bytes < MIN_SLOT_BYTES
            || slot_bytes > MAX_SLOT_BYTES
        {
            return Err(LayoutError::BadSlotBytes(slot_bytes));
        }
        if crate::abi::ring_region_bytes(capacity, slot_bytes).is_none() {
            return Err(LayoutError::TooLarge {
                capacity,
                slot_bytes,
            });
        }
        Ok(Self {
            capacity,
            slot_bytes,
        })
    }

    /// Number of slots.
    #[inline]
    pub const fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Bytes per slot, header included.
    #[inline]
    pub const fn slot_bytes(&self) -> u32 {
        self.slot_bytes
    }

    /// Payload bytes per slot.
    #[inline]
    pub const fn payload_bytes(&self) -> u32 {
        self.slot_bytes - SLOT_HEADER_BYTES
    }

    /// Bytes of the whole region: header and slots.
    #[inline]
    pub const fn region_bytes(&self) -> usize {
        match crate::abi::ring_region_bytes(self.capacity, self.slot_bytes) {
            Some(bytes) => bytes,
            // `new` checked it fits.
            None => usize::MAX,
        }
    }
}

/// Which halves of one ring are handed out: at most one [`super::Producer`] and one
/// [`super::Consumer`] exist per ring at a time, and this record is how their
/// constructors know. A ring's memory owns one ([`RingMemory::halves`]).
#[derive(Debug)]
pub struct Halves {
    producer: AtomicBool,
    consumer: AtomicBool,
}

/// One half of a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Half {
    Producer,
    Consumer,
}

impl Halves {
    /// A record with neither half handed out.
    pub fn new() -> Self {
        Self {
            producer: AtomicBool::new(false),
            consumer: AtomicBool::new(false),
        }
    }

    #[inline]
    fn flag(&self, half: Half) -> &AtomicBool {
        match half {
            Half::Producer => &self.producer,
            Half::Consumer => &self.consumer,
        }
    }

    /// Marks `half` handed out; false when it already was.
    #[inline]
    pub(crate) fn take(&self, half: Half) -> bool {
        // ORDERING: Acquire pairs with the Release store in `give_back`: the previous
        // holder's last accesses to the ring happen before the new holder's first.
        !self.flag(half).swap(true, Ordering::Acquire)
    }

    /// Marks `half` free again (its holder is being dropped).
    #[inline]
    pub(crate) fn give_back(&self, half: Half) {
        // ORDERING: Release pairs with the Acquire swap in `take`.
        self.flag(half).store(false, Ordering::Release);
    }
}

impl Default for Halves {
    #[inline]
    fn default() -> Self {
        Self::new()
    }
}

/// Memory holding one ring: the three header words the protocol uses and the slots.
///
/// A slot's *body* is everything after its 4-byte stamp: `tag` (bytes 0..4), `corr`
/// (4..12), then the payload (12..), which starts at offset 16 of the slot.
///
/// # Safety
/// Implementors guarantee that, for the lifetime of the value:
/// - `head`, `tail` and every `stamp(i)` for `i < capacity()` are distinct words that are
///   only ever accessed atomically;
/// - every body is `slot_bytes() - 4` bytes, disjoint from every other body and word;
/// - the payload of a body is aligned to [`crate::abi::PAYLOAD_ALIGN`];
/// - `capacity()` and `slot_bytes()` form a valid [`RingLayout`] and never change;
/// - `halves()` always returns the same record, and it is the only record through which
///   a [`super::Producer`] or [`super::Consumer`] of these slots is made: every other
///   `RingMemory` value over the same words either returns this very record (a clone
///   through `Arc`) or never has the same half taken while this one's is (see
///   [`RawRing::from_raw`]). Code outside Rust that acts on the ring (a device kernel)
///   counts as a holder of the half it plays.
pub unsafe trait RingMemory {
    /// The record of which halves of this ring are handed out.
    fn halves(&self) -> &Halves;
    /// Number of slots.
    fn capacity(&self) -> u32;
    /// Bytes per slot, header included.
    fn slot_bytes(&self) -> u32;
    /// The consumer cursor word.
    fn head(&self) -> &AtomicU32;
    /// The producer cursor word.
    fn tail(&self) -> &AtomicU32;
    /// The sequence stamp of slot `index` (`index < capacity()`).
    fn stamp(&self, index: u32) -> &AtomicU32;
    /// Runs `f` over the body of slot `index`, mutably.
    ///
    /// # Safety
    /// The caller has exclusive use of the body: it holds the claim on a position that
    /// maps to `index` and has not stamped it.
    unsafe fn with_body_mut<R>(&self, index: u32, f: impl FnOnce(&mut [u8]) -> R) -> R;
    /// Runs `f` over the body of slot `index`.
    ///
    /// # Safety
    /// The caller is the consumer, saw the slot's stamp mark it full with an acquire
    /// load, and has not released the position yet.
    unsafe fn with_body<R>(&self, index: u32, f: impl FnOnce(&[u8]) -> R) -> R;
    /// Where slot 0 starts when every slot lies in one plain region at `slot_bytes()`
    /// strides: the stamp of slot `i` at `i * slot_bytes()` bytes from it and its body
    /// right after the stamp, for as long as `self` lives. `None` (the default) when
    /// the slots are reached some other way; then [`RingMemory::stamp`] and the body
    /// accessors are the only way to them.
    ///
    /// The ring's halves read this once, when they are made; their run methods
    /// (`Claim::write_run`, `Consumer::read_run`) reach slots by pointer arithmetic from
    /// it instead of through the accessors for every message of a batch.
    #[cfg(not(loom))]
    #[inline]
    fn slot_region(&self) -> Option<NonNull<u8>> {
        None
    }
}

/// The slots of a ring in one plain region (see [`RingMemory::slot_region`]), kept by a
/// [`super::Producer`] or [`super::Consumer`] so that reaching a slot of a run is one
/// multiply and add on values it holds, not a walk through the memory's accessors.
#[cfg(not(loom))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slots {
    first: NonNull<u8>,
    stride: usize,
}

// SAFETY: a pointer into a ring region, whose words are only accessed atomically and whose
// bodies only under the ring protocol; the halves that hold it are Send and Sync on the
// same terms as the memory they came from.
#[cfg(not(loom))]
unsafe impl Send for Slots {}
// SAFETY: as for `Send`.
#[cfg(not(loom))]
unsafe impl Sync for Slots {}

#[cfg(not(loom))]
impl Slots {
    /// The span of `mem`'s slots, when it has one.
    #[inline]
    pub(crate) fn of<M: RingMemory>(mem: &M) -> Option<Self> {
        mem.slot_region().map(|first| Self {
            first,
            stride: mem.slot_bytes() as usize,
        })
    }

    /// The body of slot `index`: the `stride - 4` bytes after its stamp.
    ///
    /// # Safety
    /// `index < capacity`, and the memory this span came from is alive while the
    /// pointer is used, only as [`RingMemory::with_body`] or
    /// [`RingMemory::with_body_mut`] allows.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub(crate) unsafe fn body(self, index: u32) -> (*mut u8, usize) {
        // SAFETY: inside the region (caller's `index < capacity`).
        let at = unsafe { self.first.as_ptr().add(index as usize * self.stride + 4) };
        (at, self.stride - 4)
    }
}

// SAFETY: forwards to `T`, which upholds the contract.
unsafe impl<T: RingMemory + ?Sized> RingMemory for std::sync::Arc<T> {
    #[inline]
    fn halves(&self) -> &Halves {
        (**self).halves()
    }
    #[inline]
    fn capacity(&self) -> u32 {
        (**self).capacity()
    }
    #[inline]
    fn slot_bytes(&self) -> u32 {
        (**self).slot_bytes()
    }
    #[inline]
    fn head(&self) -> &AtomicU32 {
        (**self).head()
    }
    #[inline]
    fn tail(&self) -> &AtomicU32 {
        (**self).tail()
    }
    #[inline]
    fn stamp(&self, index: u32) -> &AtomicU32 {
        (**self).stamp(index)
    }
    #[inline]
    unsafe fn with_body_mut<R>(&self, index: u32, f: impl FnOnce(&mut [u8]) -> R) -> R {
        // SAFETY: the caller's obligations are passed on unchanged.
        unsafe { (**self).with_body_mut(index, f) }
    }
    #[inline]
    unsafe fn with_body<R>(&self, index: u32, f: impl FnOnce(&[u8]) -> R) -> R {
        // SAFETY: the caller's obligations are passed on unchanged.
        unsafe { (**self).with_body(index, f) }
    }
    #[cfg(not(loom))]
    #[inline]
    fn slot_region(&self) -> Option<NonNull<u8>> {
        (**self).slot_region()
    }
}

/// A ring laid out by the ABI in memory owned by someone else (mapped pinned memory, a
/// buffer shared with another process or device).
#[cfg(not(loom))]
#[derive(Debug)]
pub struct RawRing {
    base: NonNull<u8>,
    layout: RingLayout,
    halves: Halves,
}

// SAFETY: all shared words are accessed atomically and bodies only under the ring
// protocol's exclusivity, so the view may move to and be shared between threads.
#[cfg(not(loom))]
unsafe impl Send for RawRing {}
// SAFETY: as for `Send`.
#[cfg(not(loom))]
unsafe impl Sync for RawRing {}

#[cfg(not(loom))]
impl RawRing {
    /// Writes a fresh ring header and slot stamps at `base`, with both cursors at `origin`.
    ///
    /// # Safety
    /// - `base` is aligned to [`LINE_BYTES`], valid for writes of `layout.region_bytes()`
    ///   bytes, and nobody else accesses the region during the call;
    /// - afterwards, the region stays valid and is accessed only through the ring
    ///   protocol while the view lives, and the halves rule of [`RawRing::from_raw`]
    ///   holds for this view.
    pub unsafe fn init(base: NonNull<u8>, layout: RingLayout, origin: u32) -> Self {
        debug_assert!((base.as_ptr() as usize).is_multiple_of(LINE_BYTES as usize));
        let header = RingHeader {
            magic: RING_MAGIC,
            abi_version: ABI_VERSION,
            capacity: layout.capacity(),
            slot_bytes: layout.slot_bytes(),
            origin,
            tail: origin,
            head: origin,
            ..bytemuck::Zeroable::zeroed()
        };
        // SAFETY: the caller gave exclusive, line-aligned, large-enough memory.
        #[allow(clippy::cast_ptr_alignment)]
        unsafe {
            base.as_ptr().cast::<RingHeader>().write(header);
        }
        let ring = Self {
            base,
            layout,
            halves: Halves::new(),
        };
        for offset in 0..layout.capacity() {
            let position = origin.wrapping_add(offset);
            // Marked full for the previous lap, so empty for this one.
            let stamp = position.wrapping_sub(layout.capacity()).wrapping_add(1);
            ring.stamp(position & (layout.capacity() - 1))
                .store(stamp, crate::sync::Ordering::Relaxed);
            // SAFETY: exclusive access during init (caller's guarantee).
            unsafe {
                ring.with_body_mut(position & (layout.capacity() - 1), |body| body.fill(0));
            }
        }
        ring
    }

    /// Views an initialised ring at `base`, checking its header.
    ///
    /// Each view keeps its own record of the halves it handed out, so views of one region
    /// cannot see each other's: the caller keeps the single-producer, single-consumer
    /// rule across them.
    ///
    /// # Safety
    /// - `base` points to a region initialised by [`RawRing::init`] (here or on another
    ///   side of a device boundary) that stays valid and is accessed only through the
    ///   ring protocol while the view lives;
    /// - while a [`super::Consumer`] made over this view exists, nothing else consumes
    ///   the region: no consumer over another view, no device kernel (the host may still
    ///   read it through [`super::Producer::read_closed`] under that function's
    ///   contract). Likewise, while a [`super::Producer`] made over this view exists, no
    ///   producer over another view claims in the region; a device kernel may produce
    ///   beside it only through the protocol's compare-and-swap on `tail`.
    pub unsafe fn from_raw(base: NonNull<u8>) -> Result<Self, LayoutError> {
        // SAFETY: the header's descriptor line is written once before sharing; the
        // region is line-aligned (caller's guarantee).
        #[allow(clippy::cast_ptr_alignment)]
        let header = unsafe { base.as_ptr().cast::<RingHeader>().read() };
        let layout = RingLayout::new(header.capacity, header.slot_bytes)?;
        Ok(Self {
            base,
            layout,
            halves: Halves::new(),
        })
    }

    /// The ring's layout.
    #[inline]
    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    #[inline]
    fn word(&self, byte_offset: usize) -> &AtomicU32 {
        // SAFETY: offsets come from the ABI and lie inside the region; the word is
        // 4-aligned (header and slots are line- and slot-aligned) and only ever accessed
        // atomically (RingMemory contract).
        #[allow(clippy::cast_ptr_alignment)]
        unsafe {
            AtomicU32::from_ptr(self.base.as_ptr().add(byte_offset).cast::<u32>())
        }
    }

    #[inline]
    fn body_ptr(&self, index: u32) -> *mut u8 {
        debug_assert!(index < self.layout.capacity());
        let offset = RING_HEADER_BYTES as usize
            + index as usize * self.layout.slot_bytes() as usize
            + std::mem::size_of::<u32>();
        // SAFETY: `index < capacity`, so the body lies inside the region.
        unsafe { self.base.as_ptr().add(offset) }
    }
}

#[cfg(not(loom))]
// SAFETY: offsets follow the ABI: head, tail and stamps are distinct aligned words,
// bodies are the disjoint remainders of the slots, payloads sit at slot offset 16 of
// slot-aligned slots in a line-aligned region.
unsafe impl RingMemory for RawRing {
    #[inline]
    fn halves(&self) -> &Halves {
        &self.halves
    }
    #[inline]
    fn capacity(&self) -> u32 {
        self.layout.capacity()
    }
    #[inline]
    fn slot_bytes(&self) -> u32 {
        self.layout.slot_bytes()
    }
    #[inline]
    fn head(&self) -> &AtomicU32 {
        self.word(std::mem::offset_of!(RingHeader, head))
    }
    #[inline]
    fn tail(&self) -> &AtomicU32 {
        self.word(std::mem::offset_of!(RingHeader, tail))
    }
    #[inline]
    fn stamp(&self, index: u32) -> &AtomicU32 {
        assert!(index < self.layout.capacity(), "slot index out of range");
        self.word(RING_HEADER_BYTES as usize + index as usize * self.layout.slot_bytes() as usize)
    }
    #[inline]
    unsafe fn with_body_mut<R>(&self, index: u32, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let len = self.layout.slot_bytes() as usize - 4;
        // SAFETY: the body is inside the region and the caller has exclusive use of it.
        f(unsafe { std::slice::from_raw_parts_mut(self.body_ptr(index), len) })
    }
    #[inline]
    unsafe fn with_body<R>(&self, index: u32, f: impl FnOnce(&[u8]) -> R) -> R {
        let len = self.layout.slot_bytes() as usize - 4;
        // SAFETY: the body is inside the region; the producer does not write it until the
        // consumer releases the position (caller's guarantee).
        f(unsafe { std::slice::from_raw_parts(self.body_ptr(index), len) })
    }
    #[inline]
    fn slot_region(&self) -> Option<NonNull<u8>> {
        // SAFETY: the slots start right after the header, inside the region.
        Some(unsafe { self.base.add(RING_HEADER_BYTES as usize) })
    }
}

/// A ring in host heap memory, aligned to [`LINE_BYTES`] and owned by this value.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct HostRing {
    raw: RawRing,
}

#[cfg(not(loom))]
impl HostRing {
    /// Allocates and initialises a ring with both cursors at 0.
    pub fn new(layout: RingLayout) -> Self {
        Self::with_origin(layout, 0)
    }

    /// Allocates and initialises a ring whose cursors start at `origin` (tests use
    /// origins near `u32::MAX` to cross the wrap).
    pub fn with_origin(layout: RingLayout, origin: u32) -> Self {
        let alloc = Self::alloc_layout(layout);
        // SAFETY: the layout has a non-zero size (the header alone is 384 bytes).
        let base = unsafe { std::alloc::alloc_zeroed(alloc) };
        let Some(base) = NonNull::new(base) else {
            std::alloc::handle_alloc_error(alloc)
        };
        // SAFETY: freshly allocated, line-aligned, `region_bytes` long, not shared yet.
        let raw = unsafe { RawRing::init(base, layout, origin) };
        Self { raw }
    }

    fn alloc_layout(layout: RingLayout) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(layout.region_bytes(), LINE_BYTES as usize)
            .expect("RingLayout::new bounds the region size")
    }

    /// The ring's layout.
    #[inline]
    pub fn layout(&self) -> RingLayout {
        self.raw.layout()
    }

    /// The ring's only producer and only consumer, sharing the ring through an `Arc`.
    /// Infallible: the ring is moved in, so neither half can have been made before.
    pub fn split(
        self,
    ) -> (
        super::Producer<std::sync::Arc<Self>>,
        super::Consumer<std::sync::Arc<Self>>,
    ) {
        let ring = std::sync::Arc::new(self);
        (
            super::Producer::new(std::sync::Arc::clone(&ring))
                .expect("a ring moved in by value has no producer yet"),
            super::Consumer::new(ring).expect("a ring moved in by value has no consumer yet"),
        )
    }
}

#[cfg(not(loom))]
impl Drop for HostRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `with_origin` with this very layout.
        unsafe { std::alloc::dealloc(self.raw.base.as_ptr(), Self::alloc_layout(self.raw.layout)) };
    }
}

#[cfg(not(loom))]
// SAFETY: forwards to the owned `RawRing`, whose memory lives as long as `self`.
unsafe impl RingMemory for HostRing {
    #[inline]
    fn halves(&self) -> &Halves {
        self.raw.halves()
    }
    #[inline]
    fn capacity(&self) -> u32 {
        self.raw.capacity()
    }
    #[inline]
    fn slot_bytes(&self) -> u32 {
        self.raw.slot_bytes()
    }
    #[inline]
    fn head(&self) -> &AtomicU32 {
        self.raw.head()
    }
    #[inline]
    fn tail(&self) -> &AtomicU32 {
        self.raw.tail()
    }
    #[inline]
    fn stamp(&self, index: u32) -> &AtomicU32 {
        self.raw.stamp(index)
    }
    #[inline]
    unsafe fn with_body_mut<R>(&self, index: u32, f: impl FnOnce(&mut [u8]) -> R) -> R {
        // SAFETY: the caller's obligations are passed on unchanged.
        unsafe { self.raw.with_body_mut(index, f) }
    }
    #[inline]
    unsafe fn with_body<R>(&self, index: u32, f: impl FnOnce(&[u8]) -> R) -> R {
        // SAFETY: the caller's obligations are passed on unchanged.
        unsafe { self.raw.with_body(index, f) }
    }
    #[inline]
    fn slot_region(&self) -> Option<NonNull<u8>> {
        self.raw.slot_region()
    }
}

/// A ring made of loom's model cells, so loom can check the protocol in [`super`].
#[cfg(loom)]
#[derive(Debug)]
pub struct LoomMemory {
    layout: RingLayout,
    head: AtomicU32,
    tail: AtomicU32,
    stamps: Box<[AtomicU32]>,
    bodies: Box<[crate::sync::UnsafeCell<Vec<u8>>]>,
    halves: Halves,
}

#[cfg(loom)]
impl LoomMemory {
    /// A ring with both cursors at `origin`, stamps as [`RawRing::init`] writes them.
    pub fn new(layout: RingLayout, origin: u32) -> Self {
        let capacity = layout.capacity();
        let mut stamps = vec![0; capacity as usize];
        for offset in 0..capacity {
            let position = origin.wrapping_add(offset);
            stamps[(position & (capacity - 1)) as usize] =
                position.wrapping_sub(capacity).wrapping_add(1);
        }
        Self {
            layout,
            head: AtomicU32::new(origin),
            tail: AtomicU32::new(origin),
            stamps: stamps.into_iter().map(AtomicU32::new).collect(),
            bodies: (0..capacity)
                .map(|_| crate::sync::UnsafeCell::new(vec![0; layout.slot_bytes() as usize - 4]))
                .collect(),
            halves: Halves::new(),
        }
    }
}

#[cfg(loom)]
// SAFETY: every word is its own loom atomic and every body its own loom cell, which loom
// checks for racing access.
unsafe impl RingMemory for LoomMemory {
    #[inline]
    fn halves(&self) -> &Halves {
        &self.halves
    }
    #[inline]
    fn capacity(&self) -> u32 {
        self.layout.capacity()
    }
    #[inline]
    fn slot_bytes(&self) -> u32 {
        self.layout.slot_bytes()
    }
    #[inline]
    fn head(&self) -> &AtomicU32 {
        &self.head
    }
    #[inline]
    fn tail(&self) -> &AtomicU32 {
        &self.tail
    }
    #[inline]
    fn stamp(&self, index: u32) -> &AtomicU32 {
        &self.stamps[index as usize]
    }
    #[inline]
    unsafe fn with_body_mut<R>(&self, index: u32, f: impl FnOnce(&mut [u8]) -> R) -> R {
        // SAFETY: loom checks the caller's claimed exclusivity.
        self.bodies[index as usize].with_mut(|body| f(unsafe { &mut *body }))
    }
    #[inline]
    unsafe fn with_body<R>(&self, index: u32, f: impl FnOnce(&[u8]) -> R) -> R {
        // SAFETY: loom checks the caller's claimed exclusivity.
        self.bodies[index as usize].with(|body| f(unsafe { &*body }))
    }
}
