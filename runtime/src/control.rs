//! One kernel's control block: the host's command line and the kernel's status line.
//!
//! Protocol (details and reasons in `runtime/docs/ABI.md`):
//! - the host writes `command`, then `command_epoch + 1` with release;
//! - the kernel loads `command_epoch` with acquire; on a new epoch it reads `command`,
//!   applies it, writes `state`, then `ack_epoch` with release;
//! - the kernel alone writes `state`, `heartbeat`, `error_code` and the counters, with
//!   plain stores of values it keeps locally (no read-modify-write crosses a device
//!   boundary); the host reads them and widens the u32 counters to u64;
//! - one [`HostSide`] and one [`KernelSide`] exist per block at a time: the block's
//!   memory records which sides are handed out ([`Sides`]), and a second
//!   [`HostSide::new`] or [`KernelSide::new`] fails with [`SideTaken`] until the first is
//!   dropped. A device kernel plays the kernel side of a block the host only makes a
//!   `HostSide` for.

#[cfg(not(loom))]
use std::ptr::NonNull;

use crate::abi::{Command, ControlBlock, State};
use crate::sync::{AtomicBool, AtomicU32, Ordering};

/// Which sides of one control block are handed out: at most one [`HostSide`] and one
/// [`KernelSide`] exist per block at a time, and this record is how their constructors
/// know. A block's memory owns one ([`ControlMemory::sides`]).
#[derive(Debug)]
pub struct Sides {
    host: AtomicBool,
    kernel: AtomicBool,
}

impl Sides {
    /// A record with neither side handed out.
    pub fn new() -> Self {
        Self {
            host: AtomicBool::new(false),
            kernel: AtomicBool::new(false),
        }
    }

    /// Marks a side handed out; false when it already was.
    fn take(flag: &AtomicBool) -> bool {
        // ORDERING: Acquire pairs with the Release store in `give_back`: the previous
        // holder's last accesses happen before the new holder's first.
        !flag.swap(true, Ordering::Acquire)
    }

    /// Marks a side free again (its holder is being dropped).
    fn give_back(flag: &AtomicBool) {
        // ORDERING: Release pairs with the Acquire swap in `take`.
        flag.store(false, Ordering::Release);
    }
}

impl Default for Sides {
    fn default() -> Self {
        Self::new()
    }
}

/// Why [`HostSide::new`] or [`KernelSide::new`] refused to make a side of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SideTaken {
    /// The block already has a [`HostSide`].
    #[error(
        "this control block already has a host side: share that one (any thread may use \
         it through `&self`) or drop it before making another"
    )]
    Host,
    /// The block already has a [`KernelSide`].
    #[error(
        "this control block already has a kernel side, and a block has exactly one: move \
         that one to the thread that runs the kernel, or drop it before making another"
    )]
    Kernel,
}

/// Memory holding one control block.
///
/// # Safety
/// `word(offset)` returns, for every 4-aligned `offset` below the size of
/// [`ControlBlock`], a word that is only ever accessed atomically and is distinct from
/// the words at other offsets, for the lifetime of the value.
pub unsafe trait ControlMemory {
    /// The word at `byte_offset` of the control block.
    fn word(&self, byte_offset: usize) -> &AtomicU32;

    /// The record of which sides of this block are handed out. Always the same record
    /// for one value, and shared by every value over the same block that Rust code makes
    /// sides from (a clone through `Arc` forwards to it).
    fn sides(&self) -> &Sides;
}

/// Byte offsets of the control block's words.
mod at {
    use super::ControlBlock;
    use std::mem::offset_of;
    pub const KERNEL_ID: usize = offset_of!(ControlBlock, kernel_id);
    pub const COMMAND: usize = offset_of!(ControlBlock, command);
    pub const COMMAND_EPOCH: usize = offset_of!(ControlBlock, command_epoch);
    pub const STATE: usize = offset_of!(ControlBlock, state);
    pub const ACK_EPOCH: usize = offset_of!(ControlBlock, ack_epoch);
    pub const HEARTBEAT: usize = offset_of!(ControlBlock, heartbeat);
    pub const ERROR_CODE: usize = offset_of!(ControlBlock, error_code);
    pub const RECEIVED: usize = offset_of!(ControlBlock, received);
    pub const PROCESSED: usize = offset_of!(ControlBlock, processed);
    pub const EMITTED: usize = offset_of!(ControlBlock, emitted);
    pub const STALLS: usize = offset_of!(ControlBlock, stalls);
    pub const ERRORS: usize = offset_of!(ControlBlock, errors);
}

/// A control block in host heap memory, aligned to 128 bytes.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct HostControl {
    block: Box<Aligned>,
    sides: Sides,
}

#[cfg(not(loom))]
#[repr(C, align(128))]
#[derive(Debug)]
struct Aligned(std::cell::UnsafeCell<ControlBlock>);

#[cfg(not(loom))]
// SAFETY: every word is accessed only atomically (ControlMemory contract).
unsafe impl Sync for Aligned {}

#[cfg(not(loom))]
impl HostControl {
    /// A fresh control block for kernel `kernel_id`, in state `Launched`.
    pub fn new(kernel_id: u32) -> Self {
        let block = ControlBlock {
            magic: crate::abi::CONTROL_MAGIC,
            abi_version: crate::abi::ABI_VERSION,
            kernel_id,
            state: State::Launched as u32,
            ..bytemuck::Zeroable::zeroed()
        };
        Self {
            block: Box::new(Aligned(std::cell::UnsafeCell::new(block))),
            sides: Sides::new(),
        }
    }

    /// The block's only host side and only kernel side, sharing it through an `Arc`.
    /// Infallible: the block is moved in, so neither side can have been made before.
    pub fn split(
        self,
    ) -> (
        HostSide<std::sync::Arc<Self>>,
        KernelSide<std::sync::Arc<Self>>,
    ) {
        let block = std::sync::Arc::new(self);
        (
            HostSide::new(std::sync::Arc::clone(&block))
                .expect("a block moved in by value has no host side yet"),
            KernelSide::new(block).expect("a block moved in by value has no kernel side yet"),
        )
    }
}

#[cfg(not(loom))]
// SAFETY: offsets below the block's size give distinct, 4-aligned words inside the boxed
// block, which lives as long as `self` and is only accessed through these atomics.
unsafe impl ControlMemory for HostControl {
    fn word(&self, byte_offset: usize) -> &AtomicU32 {
        assert!(byte_offset.is_multiple_of(4) && byte_offset < std::mem::size_of::<ControlBlock>());
        let base: NonNull<u8> = NonNull::from(&self.block.0).cast();
        // SAFETY: in bounds and aligned (asserted above; the block is 128-aligned).
        #[allow(clippy::cast_ptr_alignment)]
        unsafe {
            AtomicU32::from_ptr(base.as_ptr().add(byte_offset).cast::<u32>())
        }
    }

    fn sides(&self) -> &Sides {
        &self.sides
    }
}

/// A control block of loom atomics, for the loom models.
#[cfg(loom)]
#[derive(Debug)]
pub struct LoomControl {
    words: Box<[AtomicU32]>,
    sides: Sides,
}

#[cfg(loom)]
impl LoomControl {
    /// A fresh block in state `Launched`.
    pub fn new(kernel_id: u32) -> Self {
        let words: Box<[AtomicU32]> = (0..std::mem::size_of::<ControlBlock>() / 4)
            .map(|_| AtomicU32::new(0))
            .collect();
        words[at::KERNEL_ID / 4].store(kernel_id, Ordering::Relaxed);
        Self {
            words,
            sides: Sides::new(),
        }
    }
}

#[cfg(loom)]
// SAFETY: one loom atomic per word.
unsafe impl ControlMemory for LoomControl {
    fn word(&self, byte_offset: usize) -> &AtomicU32 {
        &self.words[byte_offset / 4]
    }

    fn sides(&self) -> &Sides {
        &self.sides
    }
}

// SAFETY: forwards to `T`.
unsafe impl<T: ControlMemory + ?Sized> ControlMemory for std::sync::Arc<T> {
    fn word(&self, byte_offset: usize) -> &AtomicU32 {
        (**self).word(byte_offset)
    }

    fn sides(&self) -> &Sides {
        (**self).sides()
    }
}

/// The u32 counters a kernel publishes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters<T> {
    /// Messages taken from the inboxes.
    pub received: T,
    /// Messages whose handler returned.
    pub processed: T,
    /// Messages emitted to output rings.
    pub emitted: T,
    /// Times an output ring was full.
    pub stalls: T,
    /// Messages whose handler reported an error.
    pub errors: T,
}

impl Counters<u32> {
    /// One stall and nothing else.
    pub fn stall() -> Self {
        Self {
            stalls: 1,
            ..Self::default()
        }
    }
}

/// What the host reads of a kernel's status line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// The kernel's state (`None` if the word holds no known state).
    pub state: Option<State>,
    /// The last command epoch the kernel acknowledged.
    pub ack_epoch: u32,
    /// The heartbeat counter.
    pub heartbeat: u32,
    /// The fault code (see [`crate::abi::fault`]).
    pub error_code: u32,
}

/// The host's side of a control block: writes commands, reads status.
///
/// At most one exists per block at a time (see [`HostSide::new`]). Any thread may use
/// it: [`HostSide::issue`] serialises concurrent issuers itself, so each command word
/// goes out with its own epoch.
#[derive(Debug)]
pub struct HostSide<M: ControlMemory> {
    mem: M,
    /// Held while a command and its epoch are written: two issuers must not interleave
    /// (both would write the same epoch, and one command would be lost).
    issuing: parking_lot::Mutex<()>,
    widened: parking_lot::Mutex<Widener>,
}

#[derive(Debug, Default)]
struct Widener {
    last: Counters<u32>,
    total: Counters<u64>,
}

impl<M: ControlMemory> HostSide<M> {
    /// The host side of the block in `mem`: the only one until it is dropped.
    ///
    /// # Errors
    /// [`SideTaken::Host`] while another `HostSide` of the same block exists.
    pub fn new(mem: M) -> Result<Self, SideTaken> {
        if !Sides::take(&mem.sides().host) {
            return Err(SideTaken::Host);
        }
        Ok(Self {
            mem,
            issuing: parking_lot::Mutex::new(()),
            widened: parking_lot::Mutex::new(Widener::default()),
        })
    }

    /// The block's memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Writes `command` with the next epoch and returns that epoch. Callable from any
    /// thread; concurrent calls are serialised, each gets its own epoch.
    pub fn issue(&self, command: Command) -> u32 {
        let _issuing = self.issuing.lock();
        let epoch = self
            .mem
            .word(at::COMMAND_EPOCH)
            .load(Ordering::Relaxed)
            .wrapping_add(1);
        self.mem
            .word(at::COMMAND)
            .store(command as u32, Ordering::Relaxed);
        // ORDERING: Release pairs with the kernel's Acquire load of `command_epoch` in
        // `KernelSide::poll`: the command word written above is visible with the epoch.
        self.mem
            .word(at::COMMAND_EPOCH)
            .store(epoch, Ordering::Release);
        epoch
    }

    /// The last epoch issued.
    pub fn epoch(&self) -> u32 {
        self.mem.word(at::COMMAND_EPOCH).load(Ordering::Relaxed)
    }

    /// The kernel's status line.
    pub fn status(&self) -> Status {
        // ORDERING: Acquire pairs with the kernel's Release store of `ack_epoch` in
        // `KernelSide::set_state`: the state written before it is visible.
        let ack_epoch = self.mem.word(at::ACK_EPOCH).load(Ordering::Acquire);
        Status {
            state: State::from_word(self.mem.word(at::STATE).load(Ordering::Relaxed)),
            ack_epoch,
            heartbeat: self.mem.word(at::HEARTBEAT).load(Ordering::Relaxed),
            error_code: self.mem.word(at::ERROR_CODE).load(Ordering::Relaxed),
        }
    }

    /// The kernel's state alone (one load; an unknown word reads as `Faulted`).
    pub fn state(&self) -> State {
        // Relaxed: an advisory read; callers that act on a state wait for `ack_epoch`.
        State::from_word(self.mem.word(at::STATE).load(Ordering::Relaxed)).unwrap_or(State::Faulted)
    }

    /// The kernel's id, as written at creation.
    pub fn kernel_id(&self) -> u32 {
        self.mem.word(at::KERNEL_ID).load(Ordering::Relaxed)
    }

    /// Whether the kernel acknowledged `epoch` (or a later one).
    pub fn acknowledged(&self, epoch: u32) -> bool {
        let ack = self.status().ack_epoch;
        // Wrapping comparison: `ack` is at or after `epoch`.
        ack.wrapping_sub(epoch) < u32::MAX / 2
    }

    /// The kernel's counters as published now (wrapping u32).
    pub fn raw_counters(&self) -> Counters<u32> {
        let read = |offset| self.mem.word(offset).load(Ordering::Relaxed);
        Counters {
            received: read(at::RECEIVED),
            processed: read(at::PROCESSED),
            emitted: read(at::EMITTED),
            stalls: read(at::STALLS),
            errors: read(at::ERRORS),
        }
    }

    /// The kernel's counters widened to u64 by accumulating wrapping deltas since the
    /// previous call. Call at least once per 2^32 increments of any counter.
    pub fn counters(&self) -> Counters<u64> {
        let mut widened = self.widened.lock();
        let now = self.raw_counters();
        let last = widened.last;
        let total = &mut widened.total;
        total.received += u64::from(now.received.wrapping_sub(last.received));
        total.processed += u64::from(now.processed.wrapping_sub(last.processed));
        total.emitted += u64::from(now.emitted.wrapping_sub(last.emitted));
        total.stalls += u64::from(now.stalls.wrapping_sub(last.stalls));
        total.errors += u64::from(now.errors.wrapping_sub(last.errors));
        let result = *total;
        widened.last = now;
        result
    }
}

/// The kernel's side of a control block: polls commands, publishes status.
///
/// At most one exists per block at a time (see [`KernelSide::new`]), used by whichever
/// thread runs the kernel at the time; its methods take `&mut self`. For a block whose
/// kernel side is a device block, the host makes none.
#[derive(Debug)]
pub struct KernelSide<M: ControlMemory> {
    mem: M,
    seen_epoch: u32,
    heartbeat: u32,
    counters: Counters<u32>,
}

impl<M: ControlMemory> KernelSide<M> {
    /// The kernel side of the block in `mem`: the only one until it is dropped.
    ///
    /// # Errors
    /// [`SideTaken::Kernel`] while another `KernelSide` of the same block exists.
    pub fn new(mem: M) -> Result<Self, SideTaken> {
        if !Sides::take(&mem.sides().kernel) {
            return Err(SideTaken::Kernel);
        }
        let seen_epoch = mem.word(at::ACK_EPOCH).load(Ordering::Relaxed);
        let counters = Counters {
            received: mem.word(at::RECEIVED).load(Ordering::Relaxed),
            processed: mem.word(at::PROCESSED).load(Ordering::Relaxed),
            emitted: mem.word(at::EMITTED).load(Ordering::Relaxed),
            stalls: mem.word(at::STALLS).load(Ordering::Relaxed),
            errors: mem.word(at::ERRORS).load(Ordering::Relaxed),
        };
        let heartbeat = mem.word(at::HEARTBEAT).load(Ordering::Relaxed);
        Ok(Self {
            mem,
            seen_epoch,
            heartbeat,
            counters,
        })
    }

    /// A new command, if the host issued one since the last call: `(command, epoch)`.
    /// `None` inside means the host wrote a word no command has.
    pub fn poll(&mut self) -> Option<(Option<Command>, u32)> {
        // Cheap check first: the epoch line is read-shared until the host writes it.
        if self.mem.word(at::COMMAND_EPOCH).load(Ordering::Relaxed) == self.seen_epoch {
            return None;
        }
        // ORDERING: Acquire pairs with the host's Release store of `command_epoch` in
        // `HostSide::issue`: the command word is at least as new as this epoch.
        let epoch = self.mem.word(at::COMMAND_EPOCH).load(Ordering::Acquire);
        let command = Command::from_word(self.mem.word(at::COMMAND).load(Ordering::Relaxed));
        self.seen_epoch = epoch;
        Some((command, epoch))
    }

    /// The state this side last published.
    pub fn state(&self) -> Option<State> {
        State::from_word(self.mem.word(at::STATE).load(Ordering::Relaxed))
    }

    /// Publishes `state` and acknowledges every command seen so far.
    pub fn set_state(&mut self, state: State) {
        self.mem
            .word(at::STATE)
            .store(state as u32, Ordering::Relaxed);
        // ORDERING: Release pairs with the host's Acquire load of `ack_epoch` in
        // `HostSide::status`: the state above is visible with the acknowledgement.
        self.mem
            .word(at::ACK_EPOCH)
            .store(self.seen_epoch, Ordering::Release);
    }

    /// Publishes a fault code (then call [`KernelSide::set_state`] with `Faulted`).
    pub fn set_error(&mut self, code: u32) {
        self.mem.word(at::ERROR_CODE).store(code, Ordering::Relaxed);
    }

    /// Bumps the heartbeat.
    pub fn beat(&mut self) {
        self.heartbeat = self.heartbeat.wrapping_add(1);
        self.mem
            .word(at::HEARTBEAT)
            .store(self.heartbeat, Ordering::Relaxed);
    }

    /// Adds to the counters and publishes them (plain stores of locally kept values).
    pub fn count(&mut self, add: Counters<u32>) {
        let c = &mut self.counters;
        let publish = |offset: usize, value: &mut u32, delta: u32| {
            if delta != 0 {
                *value = value.wrapping_add(delta);
                self.mem.word(offset).store(*value, Ordering::Relaxed);
            }
        };
        publish(at::RECEIVED, &mut c.received, add.received);
        publish(at::PROCESSED, &mut c.processed, add.processed);
        publish(at::EMITTED, &mut c.emitted, add.emitted);
        publish(at::STALLS, &mut c.stalls, add.stalls);
        publish(at::ERRORS, &mut c.errors, add.errors);
    }
}

impl<M: ControlMemory> Drop for HostSide<M> {
    fn drop(&mut self) {
        Sides::give_back(&self.mem.sides().host);
    }
}

impl<M: ControlMemory> Drop for KernelSide<M> {
    fn drop(&mut self) {
        Sides::give_back(&self.mem.sides().kernel);
    }
}
