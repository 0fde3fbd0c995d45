//! What every GPU backend's groups share: where ports go, messages read back from rings,
//! why a send failed, and the report of a stopped group. Plain data, no backend code: the
//! CUDA and wgpu backends both use these, and neither depends on the other.

use crate::abi::{State, TAG_KIND_MASK, TAG_SENDER_SHIFT};
use crate::control::Counters;

/// Where a port's messages go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The kernel's host outbox ([`CudaGroup::try_recv`]).
    Host,
    /// Kernel `i` of the group, through a ring in device memory.
    Kernel(usize),
    /// The dead letters ([`CudaGroup::take_dead_letters`]).
    DeadLetters,
}

/// A route from a kernel's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Index of the emitting kernel.
    pub from: usize,
    /// Its port.
    pub port: u32,
    /// Where the port's messages go.
    pub to: Target,
}

/// Why a send did not go through; the message is handed back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The inbox is full.
    #[error("kernel `{kernel}`'s inbox is full: retry, or raise its capacity")]
    Full {
        /// The kernel.
        kernel: String,
    },
    /// The kernel no longer takes messages (draining, terminated or faulted).
    #[error("kernel `{kernel}` takes no more messages: it is draining or stopped")]
    Closed {
        /// The kernel.
        kernel: String,
    },
    /// The message does not fit the inbox slot.
    #[error("a {bytes}-byte message does not fit kernel `{kernel}`'s {room}-byte slot payload: raise its slot size")]
    TooLarge {
        /// The kernel.
        kernel: String,
        /// The message's size.
        bytes: usize,
        /// The slot payload.
        room: u32,
    },
    /// The group faulted.
    #[error("group faulted: {0}")]
    Faulted(String),
}

/// A message read back from a ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Kind (low 16 bits) and sender id (high 16 bits).
    pub tag: u32,
    /// Correlation id.
    pub corr: [u32; 2],
    /// The slot's payload (the message is at its start).
    pub payload: Vec<u8>,
}

impl Message {
    /// The message kind.
    pub fn kind(&self) -> u32 {
        self.tag & TAG_KIND_MASK
    }

    /// The sending kernel's id.
    pub fn sender(&self) -> u32 {
        self.tag >> TAG_SENDER_SHIFT
    }
}

/// What one kernel left when its group stopped.
#[derive(Clone, Debug)]
pub struct KernelReport {
    /// The kernel.
    pub name: String,
    /// Its final state.
    pub state: State,
    /// Its counters, widened.
    pub counters: Counters<u64>,
    /// Messages that reached it and were never handled: its host inbox and every ring
    /// from an upstream kernel, oldest first per ring.
    pub undelivered: Vec<Message>,
    /// Outputs it made but could not deliver (a terminate while it waited for room),
    /// with their port.
    pub undelivered_outputs: Vec<(u32, Message)>,
}

/// What a drain or terminate of a group did.
#[derive(Clone, Debug)]
pub struct GroupReport {
    /// One report per kernel, in plan order.
    pub kernels: Vec<KernelReport>,
    /// Whether a drain ran out of time (the rest was terminated).
    pub timed_out: bool,
    /// The device error that ended the group, if one did.
    pub fault: Option<String>,
}

impl GroupReport {
    /// Every undelivered message and output of every kernel.
    pub fn undelivered_count(&self) -> usize {
        self.kernels
            .iter()
            .map(|k| k.undelivered.len() + k.undelivered_outputs.len())
            .sum()
    }
}
