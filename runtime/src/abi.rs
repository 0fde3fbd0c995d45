//! The memory contract shared by the host, CUDA device code and WGSL shaders.
//!
//! Everything a device reads or writes is defined here, once, as `#[repr(C)]`
//! [`bytemuck::Pod`] types with no atomics. `cargo xtask abi` turns this module into
//! `kernels/include/gyre_abi.h` and `shaders/gyre_abi.wgsl`; tests fail when those
//! checked-in files drift from this one.
//!
//! The protocol over these words (who writes what, with which ordering) is in
//! `runtime/docs/ABI.md`.
//!
//! Rules kept by every type here:
//! - every shared word is a `u32` (WGSL has only 32-bit atomics); the host widens
//!   counters to `u64` by accumulating wrapping deltas;
//! - words written by different sides never share a [`LINE_BYTES`] line;
//! - no word is ever the target of a read-modify-write from both sides of a device
//!   boundary.

use bytemuck::{Pod, Zeroable};

/// Version of this layout. Bumped on any change to a type in this module.
pub const ABI_VERSION: u32 = 1;

/// Magic word at the start of every ring header: ASCII `GYRE` read as little-endian.
pub const RING_MAGIC: u32 = u32::from_le_bytes(*b"GYRE");

/// Magic word at the start of every control block: ASCII `GYCB` read as little-endian.
pub const CONTROL_MAGIC: u32 = u32::from_le_bytes(*b"GYCB");

/// Size of the line that separates words written by different sides.
///
/// 128 bytes covers the 64-byte x86 line with its adjacent-line prefetcher, the 128-byte
/// lines of Apple and POWER cores, and the 128-byte L2 sector group of NVIDIA GPUs.
pub const LINE_BYTES: u32 = 128;

/// Bytes of the header at the start of every slot.
pub const SLOT_HEADER_BYTES: u32 = 16;

/// Smallest slot: the header and 16 bytes of payload.
pub const MIN_SLOT_BYTES: u32 = 32;

/// Default slot size when a kernel does not ask for another.
pub const DEFAULT_SLOT_BYTES: u32 = 64;

/// Largest slot this runtime accepts (64 KiB).
pub const MAX_SLOT_BYTES: u32 = 1 << 16;

/// Largest ring capacity in slots. Keeps wrapping cursor differences unambiguous.
pub const MAX_CAPACITY: u32 = 1 << 30;

/// Alignment guaranteed to the payload of every slot.
pub const PAYLOAD_ALIGN: u32 = 16;

/// Low 16 bits of [`SlotHeader::tag`]: the message kind.
pub const TAG_KIND_MASK: u32 = 0xFFFF;

/// Shift of the sending kernel's id in [`SlotHeader::tag`].
pub const TAG_SENDER_SHIFT: u32 = 16;

/// Message kind of an ordinary message.
pub const KIND_MESSAGE: u32 = 0;

/// Message kind of an ordinary message whose correlation id carries the time the host
/// sent it (nanoseconds since the runtime's clock epoch), for the end-to-end latency
/// histogram. The host samples one message in 64 this way (only messages sent without
/// a correlation id of their own); a kernel that emits with the correlation id of the
/// message it handles keeps the kind, so the time travels through a pipeline, and the
/// host strips it (correlation id 0) when it receives the message.
pub const KIND_TIMED: u32 = 1;

/// Message kind of a slot a producer claimed but gave up (for example because the ring
/// was closed meanwhile). Consumers skip it; it carries no message.
pub const KIND_CANCELLED: u32 = 0xFFFF;

/// Sender id used by the host in [`SlotHeader::tag`].
pub const HOST_SENDER_ID: u32 = 0xFFFF;

/// Header of one ring, followed in memory by `capacity` slots of `slot_bytes` each.
///
/// Three lines: a descriptor written once at creation, the producer's line and the
/// consumer's line. No line holds words of two writers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RingHeader {
    /// [`RING_MAGIC`]. Written once at creation.
    pub magic: u32,
    /// [`ABI_VERSION`]. Written once at creation.
    pub abi_version: u32,
    /// Number of slots, a power of two in `1..=MAX_CAPACITY`. Written once at creation.
    pub capacity: u32,
    /// Bytes per slot including its header, a power of two in
    /// `MIN_SLOT_BYTES..=MAX_SLOT_BYTES`. Written once at creation.
    pub slot_bytes: u32,
    /// Cursor value the ring started at (tests start near `u32::MAX`). Written once.
    pub origin: u32,
    /// Unused, zero.
    pub reserved0: [u32; 27],
    /// Producer cursor: one past the last position claimed by the producer side.
    /// Written only by the producer side. Consumers never need it for correctness (they
    /// read slot stamps); it is read for depth gauges and by the drain sweep.
    pub tail: u32,
    /// Unused, zero.
    pub reserved1: [u32; 31],
    /// Consumer cursor: the next position the consumer will read. Everything before it
    /// has been consumed and its slot may be reused. Written only by the consumer side.
    pub head: u32,
    /// Unused, zero.
    pub reserved2: [u32; 31],
}

/// Header at the start of every slot. The payload follows at offset [`SLOT_HEADER_BYTES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SlotHeader {
    /// Sequence stamp. The slot holds the message of position `p` exactly when
    /// `seq == p.wrapping_add(1)`. Written only by the producer side, last, with release.
    pub seq: u32,
    /// Message kind (low 16 bits) and sending kernel id (high 16 bits).
    pub tag: u32,
    /// Correlation id for request/reply and tracing; zero when unused.
    pub corr: [u32; 2],
}

/// Host-to-kernel lifecycle commands, written into [`ControlBlock::command`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// No command has been issued yet.
    None = 0,
    /// Start (or resume) processing messages.
    Activate = 1,
    /// Stop processing; messages keep queuing.
    Pause = 2,
    /// Process everything in the inboxes, then terminate.
    Drain = 3,
    /// Stop after the message in hand.
    Terminate = 4,
}

/// Kernel states, written into [`ControlBlock::state`] by the kernel side.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Resident, not yet processing.
    Launched = 0,
    /// Processing messages.
    Active = 1,
    /// Resident, not processing; messages queue.
    Paused = 2,
    /// Processing what is left, accepting nothing new.
    Draining = 3,
    /// Stopped for good; what is left in its rings can be collected.
    Terminated = 4,
    /// Stopped by a fault; see [`ControlBlock::error_code`].
    Faulted = 5,
}

impl Command {
    /// Decodes a command word; `None` for a word no host writes.
    pub const fn from_word(word: u32) -> Option<Self> {
        Some(match word {
            0 => Self::None,
            1 => Self::Activate,
            2 => Self::Pause,
            3 => Self::Drain,
            4 => Self::Terminate,
            _ => return None,
        })
    }
}

impl State {
    /// Every state, in word order.
    pub const ALL: [Self; 6] = [
        Self::Launched,
        Self::Active,
        Self::Paused,
        Self::Draining,
        Self::Terminated,
        Self::Faulted,
    ];

    /// Decodes a state word; `None` for a word no kernel writes.
    pub const fn from_word(word: u32) -> Option<Self> {
        Some(match word {
            0 => Self::Launched,
            1 => Self::Active,
            2 => Self::Paused,
            3 => Self::Draining,
            4 => Self::Terminated,
            5 => Self::Faulted,
            _ => return None,
        })
    }
}

/// Error codes written into [`ControlBlock::error_code`] when a kernel faults.
pub mod fault {
    /// No fault.
    pub const NONE: u32 = 0;
    /// A CPU handler panicked.
    pub const HANDLER_PANIC: u32 = 1;
    /// The device reported an error (CUDA error, device lost).
    pub const DEVICE_ERROR: u32 = 2;
    /// The host watchdog saw the heartbeat stop while work was pending.
    pub const WATCHDOG: u32 = 3;
    /// The kernel read a command word it does not know.
    pub const BAD_COMMAND: u32 = 4;
}

/// One kernel's control block: two lines, the host's and the kernel's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ControlBlock {
    /// [`CONTROL_MAGIC`]. Written once at creation.
    pub magic: u32,
    /// [`ABI_VERSION`]. Written once at creation.
    pub abi_version: u32,
    /// The kernel's id (sender id in slot tags). Written once at creation.
    pub kernel_id: u32,
    /// The last [`Command`] issued. Written only by the host, before `command_epoch`.
    pub command: u32,
    /// Incremented by the host with every command, stored with release after `command`.
    pub command_epoch: u32,
    /// Unused, zero.
    pub reserved0: [u32; 27],
    /// The kernel's [`State`]. Written only by the kernel side, before `ack_epoch`.
    pub state: u32,
    /// The last `command_epoch` the kernel acted on, stored with release after `state`.
    pub ack_epoch: u32,
    /// Incremented by the kernel while it runs; the watchdog reads it.
    pub heartbeat: u32,
    /// A [`fault`] code once the kernel faulted; zero otherwise.
    pub error_code: u32,
    /// Messages taken from the inboxes (wrapping).
    pub received: u32,
    /// Messages whose handler returned (wrapping).
    pub processed: u32,
    /// Messages emitted to output rings (wrapping).
    pub emitted: u32,
    /// Times the kernel found an output ring full and had to wait (wrapping).
    pub stalls: u32,
    /// Messages whose handler reported an error (wrapping).
    pub errors: u32,
    /// Unused, zero.
    pub reserved1: [u32; 23],
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<RingHeader>() == 3 * LINE_BYTES as usize);
    assert!(offset_of!(RingHeader, tail) == LINE_BYTES as usize);
    assert!(offset_of!(RingHeader, head) == 2 * LINE_BYTES as usize);
    assert!(size_of::<SlotHeader>() == SLOT_HEADER_BYTES as usize);
    assert!(size_of::<ControlBlock>() == 2 * LINE_BYTES as usize);
    assert!(offset_of!(ControlBlock, state) == LINE_BYTES as usize);
    assert!(offset_of!(ControlBlock, reserved1) == LINE_BYTES as usize + 9 * 4);
};

/// Bytes of the ring header that precedes the slots.
pub const RING_HEADER_BYTES: u32 = core::mem::size_of::<RingHeader>() as u32;

/// Bytes of one control block.
pub const CONTROL_BLOCK_BYTES: u32 = core::mem::size_of::<ControlBlock>() as u32;

/// Total bytes of a ring region (header and slots).
///
/// Returns `None` when the product overflows `usize`.
pub const fn ring_region_bytes(capacity: u32, slot_bytes: u32) -> Option<usize> {
    match (capacity as usize).checked_mul(slot_bytes as usize) {
        Some(slots) => slots.checked_add(RING_HEADER_BYTES as usize),
        None => None,
    }
}

/// Builds a slot tag from a message kind and a sender id.
pub const fn make_tag(kind: u32, sender: u32) -> u32 {
    (kind & TAG_KIND_MASK) | (sender << TAG_SENDER_SHIFT)
}
