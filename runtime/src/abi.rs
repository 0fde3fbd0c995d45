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

/// Declares a `#[repr(u32)]` enum of ABI words from one list of variants, with `ALL`
/// (every variant, in word order) and `from_word` (its decoder, `None` for a word nobody
/// writes), so the list, the array and the decoder cannot disagree.
macro_rules! word_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident = $word:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$variant_meta])* $variant = $word,)+
        }

        impl $name {
            /// Every variant, in word order.
            pub const ALL: [Self; [$($word),+].len()] = [$(Self::$variant),+];

            /// Decodes a word; `None` for a word that is no variant.
            pub const fn from_word(word: u32) -> Option<Self> {
                match word {
                    $($word => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

word_enum! {
    /// Host-to-kernel lifecycle commands, written into [`ControlBlock::command`].
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
}

word_enum! {
    /// Kernel states, written into [`ControlBlock::state`] by the kernel side.
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

word_enum! {
    /// Where a kernel's output port leads: the `kind` of a port in the CUDA launch
    /// descriptor and in the wgpu descriptor words. Written by the host.
    pub enum PortKind {
        /// The kernel's host outbox (mapped host memory on CUDA).
        Host = 1,
        /// Another kernel's inbox ring (device memory).
        Kernel = 2,
        /// The kernel's dead-letter ring: the port is bound to the dead letters.
        Dead = 3,
    }
}

word_enum! {
    /// Why a device sent a message to the dead letters: [`DeadLetterPrefix::reason`].
    pub enum DeadReason {
        /// The handler returned a nonzero code ([`DeadLetterPrefix::code`]); the message
        /// is the one the kernel received.
        HandlerError = 1,
        /// The handler emitted to a port bound to the dead letters
        /// ([`DeadLetterPrefix::port`]); the message is the one it emitted.
        Port = 2,
        /// The handler emitted to a port whose downstream kernel has stopped; the message
        /// is the one it emitted.
        Stopped = 3,
    }
}

/// Codes a device handler returns, and the errors of the device `gyre_emit`.
///
/// A handler returns [`OK`](status::OK) or any other code of its own: a nonzero return
/// counts an error and sends the message to the dead letters with
/// [`DeadReason::HandlerError`], except [`FAULT_KERNEL`](status::FAULT_KERNEL), which
/// faults the kernel.
/// C sees these as `int` (`GYRE_OK`, `GYRE_ERR_NO_PORT`, ...); WGSL, which returns
/// `u32`, sees their two's-complement bits.
pub mod status {
    /// Success.
    pub const OK: i32 = 0;
    /// `gyre_emit` to a port the kernel does not have.
    pub const ERR_NO_PORT: i32 = -1;
    /// `gyre_emit` of a message larger than the port's slot payload.
    pub const ERR_TOO_LARGE: i32 = -2;
    /// More emits for one message than the kernel's `max_emits`.
    pub const ERR_TOO_MANY: i32 = -3;
    /// The generated dispatch has no handler for the kernel's case.
    pub const ERR_NO_HANDLER: i32 = -4;
    /// Returned by a handler: fault the kernel (the device equivalent of a panicking CPU
    /// handler). The kernel stops in state `Faulted` with fault code
    /// [`fault::HANDLER_PANIC`](super::fault::HANDLER_PANIC); the message it handled, and
    /// every one after it, stay queued (a restart hands them to the restarted group). On
    /// CUDA its emits are discarded; on wgpu, whose handlers emit as they go, the emits
    /// made before returning it are delivered: return it before emitting.
    pub const FAULT_KERNEL: i32 = -5;
    /// A built-in's parameters are out of range (what `Builtin::validate` rejects).
    pub const BUILTIN_ERR_PARAMS: i32 = 1001;
    /// A built-in's inbox slot payload is shorter than the message it reads.
    pub const BUILTIN_ERR_INPUT: i32 = 1002;
    /// A stateful built-in was launched without (enough) state memory.
    pub const BUILTIN_ERR_STATE: i32 = 1003;

    /// Every code the runtime defines, with its device name and what it means.
    pub const ALL: [(i32, &str, &str); 9] = [
        (OK, "GYRE_OK", "success"),
        (
            ERR_NO_PORT,
            "GYRE_ERR_NO_PORT",
            "gyre_emit to a port the kernel does not have",
        ),
        (
            ERR_TOO_LARGE,
            "GYRE_ERR_TOO_LARGE",
            "gyre_emit of a message larger than the port's slot payload",
        ),
        (
            ERR_TOO_MANY,
            "GYRE_ERR_TOO_MANY",
            "more emits for one message than the kernel's max_emits",
        ),
        (
            ERR_NO_HANDLER,
            "GYRE_ERR_NO_HANDLER",
            "the dispatch has no handler for this kernel",
        ),
        (
            FAULT_KERNEL,
            "GYRE_FAULT_KERNEL",
            "the handler faulted its kernel",
        ),
        (
            BUILTIN_ERR_PARAMS,
            "GYRE_BUILTIN_ERR_PARAMS",
            "the built-in's parameters are out of range",
        ),
        (
            BUILTIN_ERR_INPUT,
            "GYRE_BUILTIN_ERR_INPUT",
            "the message is shorter than the built-in reads",
        ),
        (
            BUILTIN_ERR_STATE,
            "GYRE_BUILTIN_ERR_STATE",
            "the built-in has no state memory or too little",
        ),
    ];

    /// The device name and meaning of `code`; `None` for a handler's own code.
    pub fn describe(code: i32) -> Option<(&'static str, &'static str)> {
        ALL.iter()
            .find(|(known, _, _)| *known == code)
            .map(|&(_, name, meaning)| (name, meaning))
    }
}

/// The 16 bytes a device writes at the start of a dead letter's payload; the message
/// follows. The one decoder of dead letters for every GPU backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct DeadLetterPrefix {
    /// A [`DeadReason`] word.
    pub reason: u32,
    /// [`DeadReason::HandlerError`]: the handler's code, an `i32`; otherwise 0.
    pub code: u32,
    /// The port the message was emitted to; 0 for [`DeadReason::HandlerError`].
    pub port: u32,
    /// The message kind of the original slot tag.
    pub kind: u32,
}

impl DeadLetterPrefix {
    /// Bytes of the prefix; the message starts here.
    pub const BYTES: usize = core::mem::size_of::<Self>();

    /// Reads the prefix at the start of a dead-letter slot payload; `None` when the
    /// payload is shorter than [`DeadLetterPrefix::BYTES`].
    pub fn read(payload: &[u8]) -> Option<Self> {
        payload.get(..Self::BYTES).map(bytemuck::pod_read_unaligned)
    }

    /// The decoded reason, or the raw word when no device writes it.
    ///
    /// # Errors
    ///
    /// The reason word, when it is not a [`DeadReason`].
    pub const fn reason(&self) -> Result<DeadReason, u32> {
        match DeadReason::from_word(self.reason) {
            Some(reason) => Ok(reason),
            None => Err(self.reason),
        }
    }

    /// Whether the message is one the kernel received (its handler failed on it) rather
    /// than one it emitted.
    pub const fn is_input(&self) -> bool {
        matches!(self.reason(), Ok(DeadReason::HandlerError))
    }
}

impl core::fmt::Display for DeadLetterPrefix {
    /// Says why the message is a dead letter, in words for the user.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let port = self.port;
        match self.reason() {
            Ok(DeadReason::HandlerError) => {
                let code = self.code.cast_signed();
                write!(f, "handler returned error code {code}")?;
                match status::describe(code) {
                    Some((name, meaning)) => write!(f, " ({name}: {meaning})"),
                    None => Ok(()),
                }
            }
            Ok(DeadReason::Port) => {
                write!(
                    f,
                    "emitted to port {port}, which is bound to the dead letters"
                )
            }
            Ok(DeadReason::Stopped) => {
                write!(f, "emitted to port {port}, whose kernel has stopped")
            }
            Err(word) => write!(
                f,
                "unknown dead-letter reason {word} (the device code and this runtime \
                 disagree on the ABI: rebuild the device code against this version)"
            ),
        }
    }
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
    assert!(size_of::<DeadLetterPrefix>() == 16);
};

/// Bytes of the ring header that precedes the slots.
pub const RING_HEADER_BYTES: u32 = core::mem::size_of::<RingHeader>() as u32;

/// Bytes of one control block.
pub const CONTROL_BLOCK_BYTES: u32 = core::mem::size_of::<ControlBlock>() as u32;

/// Bytes of the [`DeadLetterPrefix`] before the message in a device's dead letter.
pub const DEAD_LETTER_PREFIX_BYTES: u32 = core::mem::size_of::<DeadLetterPrefix>() as u32;

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

#[cfg(test)]
mod tests {
    use super::{status, DeadLetterPrefix, DeadReason, PortKind};

    #[test]
    fn port_kinds_round_trip_through_their_words() {
        for kind in PortKind::ALL {
            assert_eq!(PortKind::from_word(kind as u32), Some(kind));
        }
        let decoded = (0..=u32::from(u16::MAX))
            .filter_map(PortKind::from_word)
            .count();
        assert_eq!(decoded, PortKind::ALL.len());
        assert_eq!(PortKind::from_word(0), None);
    }

    #[test]
    fn dead_reasons_round_trip_through_their_words() {
        for reason in DeadReason::ALL {
            assert_eq!(DeadReason::from_word(reason as u32), Some(reason));
            let prefix = DeadLetterPrefix {
                reason: reason as u32,
                code: 0,
                port: 0,
                kind: 0,
            };
            assert_eq!(prefix.reason(), Ok(reason));
            assert_eq!(prefix.is_input(), reason == DeadReason::HandlerError);
        }
        let decoded = (0..=u32::from(u16::MAX))
            .filter_map(DeadReason::from_word)
            .count();
        assert_eq!(decoded, DeadReason::ALL.len());
    }

    #[test]
    fn status_codes_are_distinct_and_described() {
        for (i, &(code, name, meaning)) in status::ALL.iter().enumerate() {
            assert_eq!(status::describe(code), Some((name, meaning)));
            assert!(status::ALL[..i].iter().all(|&(other, _, _)| other != code));
        }
        assert_eq!(status::describe(7), None);
    }

    fn prefix_bytes(words: [u32; 4]) -> Vec<u8> {
        let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        bytes.extend_from_slice(b"message");
        bytes
    }

    #[test]
    fn dead_letter_prefix_reads_and_describes_every_reason() {
        let code = status::ERR_NO_HANDLER.cast_unsigned();
        let handler = DeadLetterPrefix::read(&prefix_bytes([1, code, 0, 9])).unwrap();
        assert_eq!(
            handler,
            DeadLetterPrefix {
                reason: 1,
                code,
                port: 0,
                kind: 9
            }
        );
        assert_eq!(
            handler.to_string(),
            "handler returned error code -4 (GYRE_ERR_NO_HANDLER: the dispatch has no \
             handler for this kernel)"
        );
        let own = DeadLetterPrefix::read(&prefix_bytes([1, 17, 0, 0])).unwrap();
        assert_eq!(own.to_string(), "handler returned error code 17");
        let port = DeadLetterPrefix::read(&prefix_bytes([2, 0, 3, 0])).unwrap();
        assert_eq!(
            port.to_string(),
            "emitted to port 3, which is bound to the dead letters"
        );
        let stopped = DeadLetterPrefix::read(&prefix_bytes([3, 0, 1, 0])).unwrap();
        assert_eq!(
            stopped.to_string(),
            "emitted to port 1, whose kernel has stopped"
        );
        let unknown = DeadLetterPrefix::read(&prefix_bytes([42, 0, 0, 0])).unwrap();
        assert_eq!(unknown.reason(), Err(42));
        assert!(unknown
            .to_string()
            .starts_with("unknown dead-letter reason 42"));
        assert_eq!(DeadLetterPrefix::read(&[0; 15]), None);
    }
}
