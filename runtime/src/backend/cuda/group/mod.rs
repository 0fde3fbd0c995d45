//! The host side of a group on a CUDA device: allocation, launch, sending, receiving,
//! lifecycle commands, drain, terminate and the report.
//!
//! Everything here talks to the device through [`Device`] and to the kernels through the
//! shared memory protocol only (`crate::ring` over mapped memory, `crate::control`), so
//! the same code drives a GPU ([`super::driver::DriverDevice`]) and the emulation
//! ([`super::emulated::EmulatedDevice`]) the conformance tests use.

use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::device::{Device, DeviceError, DeviceMemory, MappedMemory, Running};
use crate::abi::ControlBlock;
use crate::control::{ControlMemory, HostSide, Sides};
use crate::ring::{Consumer, Halves, Producer, RawRing, RingLayout, RingMemory, Step};
use crate::routing::DeadLetter;
use crate::sync::AtomicU32;
use crate::wait::Backoff;

pub use crate::backend::group::{GroupReport, KernelReport, Message, Route, SendError, Target};

mod commands;
mod io;
mod launch;
mod plans;
mod stop;

pub use plans::{CudaKnobs, GroupError, GroupPlan, KernelPlan};

/// A control block in mapped memory.
struct MappedControl {
    memory: MappedMemory,
    sides: Sides,
}

// SAFETY: the mapped block is 256 bytes, 128-aligned, alive as long as `memory`; every
// word is accessed through these atomics on the host (the device uses its own atomics on
// the same words, per the protocol).
unsafe impl ControlMemory for MappedControl {
    fn word(&self, byte_offset: usize) -> &AtomicU32 {
        assert!(byte_offset.is_multiple_of(4) && byte_offset < size_of::<ControlBlock>());
        // SAFETY: in bounds and aligned (asserted), valid while `self.memory` lives.
        #[allow(clippy::cast_ptr_alignment)]
        unsafe {
            AtomicU32::from_ptr(
                self.memory
                    .host_ptr()
                    .as_ptr()
                    .add(byte_offset)
                    .cast::<u32>(),
            )
        }
    }

    fn sides(&self) -> &Sides {
        &self.sides
    }
}

/// A ring in mapped memory and the memory that holds it.
struct MappedRing {
    ring: RawRing,
    _memory: MappedMemory,
}

// SAFETY: forwards to the RawRing, whose memory `_memory` keeps alive.
unsafe impl RingMemory for MappedRing {
    fn halves(&self) -> &Halves {
        self.ring.halves()
    }
    fn capacity(&self) -> u32 {
        self.ring.capacity()
    }
    fn slot_bytes(&self) -> u32 {
        self.ring.slot_bytes()
    }
    fn head(&self) -> &AtomicU32 {
        self.ring.head()
    }
    fn tail(&self) -> &AtomicU32 {
        self.ring.tail()
    }
    fn stamp(&self, index: u32) -> &AtomicU32 {
        self.ring.stamp(index)
    }
    unsafe fn with_body_mut<R>(&self, index: u32, f: impl FnOnce(&mut [u8]) -> R) -> R {
        // SAFETY: forwarded with the caller's guarantee.
        unsafe { self.ring.with_body_mut(index, f) }
    }
    unsafe fn with_body<R>(&self, index: u32, f: impl FnOnce(&[u8]) -> R) -> R {
        // SAFETY: forwarded with the caller's guarantee.
        unsafe { self.ring.with_body(index, f) }
    }
    fn slot_region(&self) -> Option<std::ptr::NonNull<u8>> {
        self.ring.slot_region()
    }
}

fn mapped_ring(
    device: &dyn Device,
    layout: RingLayout,
    origin: u32,
) -> Result<(MappedRing, u64), DeviceError> {
    let memory = device.alloc_mapped(layout.region_bytes())?;
    // SAFETY: fresh, zeroed, 4096-aligned memory of the region's size, not shared yet.
    let ring = unsafe { RawRing::init(memory.host_ptr(), layout, origin) };
    let address = memory.device_ptr();
    Ok((
        MappedRing {
            ring,
            _memory: memory,
        },
        address,
    ))
}

/// Host memory aligned to 128 bytes, for building and reading back device rings.
struct Staging {
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
}

impl Staging {
    fn new(bytes: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(bytes.max(1), 128)
            .expect("ring regions are far below isize::MAX");
        // SAFETY: nonzero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, layout }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: owned allocation of this size.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// A kernel-to-kernel ring in device memory.
struct Edge {
    to: usize,
    memory: DeviceMemory,
    layout: RingLayout,
}

/// A kernel's outputs for the host: its host outbox ring, and the queue the host moves
/// outputs to while it drains, stops or waits on the group. One lock for both, so a
/// receiver never looks between the two while outputs move from one to the other (and
/// an empty pair after the kernel acknowledged its stop means nothing more will come).
struct HostOutputs {
    ring: Consumer<MappedRing>,
    queue: VecDeque<Message>,
}

impl HostOutputs {
    /// Moves every output waiting in the ring to the queue.
    fn pump(&mut self) {
        let queue = &mut self.queue;
        self.ring.consume(u32::MAX, |slot| {
            queue.push_back(Message::of_slot(&slot));
            Step::Next
        });
    }

    /// Outputs not received yet: queued, and published in the ring (moved to the queue).
    fn len(&mut self) -> usize {
        self.pump();
        self.queue.len()
    }
}

struct KernelRt {
    plan: KernelPlan,
    id: u32,
    control: HostSide<MappedControl>,
    inbox: Producer<MappedRing>,
    outputs: Mutex<HostOutputs>,
    dead: Mutex<Consumer<MappedRing>>,
    _state: Option<DeviceMemory>,
    scratch: DeviceMemory,
    record_stride: u32,
    commands: Mutex<()>,
    /// Its throughput and watchdog, measured on the host.
    pub(super) measures: crate::backend::group::HostMeasures,
}

/// What stops have handed back so far, so each message is handed back once, whichever
/// stop or how many: held for the whole of a stop, so concurrent stops serialise.
struct Collected {
    /// Kernel `k`'s host inbox was read back (its kernel had stopped for good).
    inbox: Vec<bool>,
    /// The device memory (kernel-to-kernel rings, unpublished outputs) was read back
    /// (the grid had finished).
    device: bool,
}

/// A group of kernels resident on a CUDA device (or its emulation).
pub struct CudaGroup {
    name: String,
    device: Arc<dyn Device>,
    kernels: Vec<KernelRt>,
    edges: Vec<Edge>,
    order: Vec<usize>,
    descs: Option<DeviceMemory>,
    running: Mutex<Option<Box<dyn Running>>>,
    collected: Mutex<Collected>,
    fault: Mutex<Option<String>>,
    dead_letters: Mutex<Vec<DeadLetter>>,
    command_timeout: Duration,
}

impl std::fmt::Debug for CudaGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaGroup")
            .field("name", &self.name)
            .field("device", &self.device.describe())
            .field(
                "kernels",
                &self
                    .kernels
                    .iter()
                    .map(|k| &k.plan.name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// One step of a host wait loop: spin, then yield, then sleep 50 us at a time (a host
/// waiting on a device has nothing to wake it but polling).
fn pause(backoff: &mut Backoff) {
    if !backoff.snooze() {
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn round16(x: u32) -> u32 {
    x.div_ceil(16) * 16
}
