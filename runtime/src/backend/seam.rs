//! The backend seam: what the backends provide to the host, defined once, so the public
//! API, the runtime-wide services (shutdown, health, Prometheus, dead letters) and the
//! tests are written once for every backend. The public crate sees each backend only
//! through this module.
//!
//! Dispatch is over a closed set of two kinds of backend:
//! - the **CPU** backend runs each kernel as its own actor: kernels of a group are
//!   separate kernels bound to each other's inboxes, each stopped, paused and restarted
//!   on its own. Its side of the seam is [`cpu`], a facade of concrete handles
//!   ([`cpu::CpuBackend`], [`cpu::CpuKernel`], ...) whose methods delegate inline to the
//!   backend, so its hot path (send, receive, emit) pays no indirect call; the
//!   backend's internals are private to this crate. Handlers are written against
//!   [`crate::handler`];
//! - **device** backends (CUDA, driver and emulated; wgpu) run a group as one unit (a
//!   cooperative grid, a tick submission): each implements [`DeviceGroup`], which the
//!   public crate holds as `Arc<dyn DeviceGroup>`.
//!
//! `runtime/docs/BACKENDS.md` says what a new backend implements.

pub mod cpu;

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::thread::Thread;
use std::time::Duration;

use parking_lot::Mutex;

use crate::abi::{Command, State};
use crate::backend::group::{GroupReport, SendError};
use crate::backend::CommandError;
use crate::health::{Health, HealthPolicy};
use crate::metrics::KernelSample;
use crate::routing::DeadLetter;
use crate::wait::{Backoff, Signal};
use std::sync::atomic::Ordering;

/// What a backend can and cannot do; the public API answers what a backend cannot do
/// with an error that says what to do instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // one flag per capability is what this is
pub struct Capabilities {
    /// Routes may form cycles.
    pub cycles: bool,
    /// One kernel can be paused and resumed while the others run.
    pub pause_per_kernel: bool,
    /// One kernel can be drained or terminated while the others run.
    pub stop_per_kernel: bool,
    /// A faulted kernel can be restarted with its queued messages.
    pub restart: bool,
    /// The backend measures the time its handlers take (`busy_ns` in samples).
    pub handler_time: bool,
}

impl Capabilities {
    /// What a group that runs as one unit on a device can do (CUDA, wgpu): pause and
    /// resume per kernel; no cycles, no stopping or restarting one kernel alone, no
    /// handler clocks.
    pub const DEVICE_GROUP: Self = Self {
        cycles: false,
        pause_per_kernel: true,
        stop_per_kernel: false,
        restart: false,
        handler_time: false,
    };
}

/// What [`DeviceGroup::try_recv_with`] hands an output to: its tag, correlation id and
/// payload, in place.
pub type OnOutput<'a> = dyn FnMut(u32, [u32; 2], &[u8]) + 'a;

/// A group of kernels launched on a device as one unit.
///
/// Kernels are numbered in the order they were planned; the caller keeps the group's
/// names and routes (it planned them). Every method takes
/// `&self` and may be called from any thread. What "room" and "output ready" mean is
/// read through [`DeviceGroup::try_send`] and [`DeviceGroup::try_recv_with`]; a waiter
/// waits on [`DeviceGroup::progress`], holding a [`DeviceGroup::watch`] guard so that a
/// device that cannot notify by itself is watched from the host meanwhile.
pub trait DeviceGroup: Send + Sync + std::fmt::Debug {
    /// The backend, as metrics label it: `"cuda"`, `"cuda-emulated"`, `"wgpu"`.
    fn backend(&self) -> &'static str;

    /// The device's ordinal among its backend's devices (label `device`), on a backend
    /// that numbers its devices (CUDA: a GPU, or one of the emulation's devices); `None`
    /// on one that opens a single device (wgpu).
    fn device(&self) -> Option<u32> {
        None
    }

    /// What the backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Kernel `k`'s id: the sender id in the tags of what it emits.
    fn kernel_id(&self, k: usize) -> u32;

    /// Writes one message into kernel `k`'s host inbox with correlation id `corr`,
    /// without waiting.
    ///
    /// # Errors
    /// [`SendError`]: full, closed, too large, or the group faulted.
    fn try_send(&self, k: usize, payload: &[u8], corr: [u32; 2]) -> Result<(), SendError>;

    /// Sends one message to kernel `k`, waiting up to `timeout` for room (on
    /// [`DeviceGroup::progress`], the group watched meanwhile).
    ///
    /// # Errors
    /// As [`DeviceGroup::try_send`]; `Full` once the timeout passed.
    fn send(
        &self,
        k: usize,
        payload: &[u8],
        corr: [u32; 2],
        timeout: Duration,
    ) -> Result<(), SendError> {
        let _watch = self.watch();
        send_within(self.progress(), timeout, || self.try_send(k, payload, corr))
    }

    /// Hands kernel `k`'s next output (tag, correlation id, payload) to `f` in place, if
    /// one is there; returns whether one was. `false` after kernel `k`'s state (read
    /// before the call) says it stopped means nothing more will come.
    fn try_recv_with(&self, k: usize, f: &mut OnOutput<'_>) -> bool;

    /// Notified whenever the group may have made progress: outputs arrived, inbox room
    /// freed, a state changed, a fault. Notified only while a [`Watch`] guard lives on
    /// a backend that has to be watched.
    fn progress(&self) -> &Signal;

    /// Keeps [`DeviceGroup::progress`] notified while the guard lives.
    fn watch(&self) -> Watch<'_>;

    /// Kernel `k`'s state, as it last acknowledged it (`Faulted` once the group faulted).
    fn state(&self, k: usize) -> State;

    /// The device error that ended the group, if one did.
    fn fault(&self) -> Option<String>;

    /// Issues `command` (activate or pause) to kernel `k` and waits for its
    /// acknowledgement.
    ///
    /// # Errors
    /// [`CommandError`].
    fn command(&self, k: usize, command: Command) -> Result<State, CommandError>;

    /// Drains the whole group, upstream first, for at most `timeout`; what is left is
    /// terminated and handed back.
    fn drain(&self, timeout: Duration) -> GroupReport;

    /// Terminates the whole group; everything left comes back. Each message is handed
    /// back once, whichever stop.
    fn terminate(&self) -> GroupReport;

    /// A sample of kernel `k` for metrics and health.
    fn sample(&self, k: usize) -> KernelSample;

    /// Kernel `k`'s health under `policy` (the watchdog compares with the previous call).
    fn health(&self, k: usize, policy: &HealthPolicy) -> Health;

    /// Every dead letter the group kept, oldest first.
    fn take_dead_letters(&self) -> Vec<DeadLetter>;
}

/// A guard that keeps a device group's progress signal notified (see
/// [`DeviceGroup::watch`]).
#[derive(Debug)]
pub struct Watch<'a> {
    watcher: Option<&'a Watcher>,
}

impl Watch<'_> {
    /// A guard for a backend whose progress signal is notified without watching.
    pub fn not_needed() -> Self {
        Self { watcher: None }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.watcher {
            w.interest.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Watches a device that cannot notify the host by itself (a persistent CUDA grid
/// writing mapped memory raises no interrupt): while any [`Watch`] guard lives, a
/// thread of the group polls a cheap fingerprint of the group's host-visible state
/// (ring cursors, states) and notifies the progress signal when it changes; with no
/// guard it parks and costs nothing. Spins, then yields, then naps 20 µs between polls.
///
/// Only the watcher polls: senders and receivers wait on the signal.
#[derive(Debug, Default)]
pub struct Watcher {
    interest: AtomicUsize,
    stop: AtomicBool,
    thread: Mutex<Option<Thread>>,
}

/// How long the watcher naps between polls once spinning and yielding found nothing.
const WATCH_NAP: Duration = Duration::from_micros(20);
/// Naps after which the watcher notifies its waiters although nothing it fingerprints
/// changed (about every 5 ms while someone waits): a waiter whose wake-up was lost, or
/// that waits on something the fingerprint does not cover, looks again within that
/// instead of never. A spurious wake costs a waiter one look.
const NAPS_PER_REFRESH: u32 = 250;

impl Watcher {
    /// A watcher with no thread yet ([`Watcher::run`] on the thread that watches).
    pub fn new() -> Self {
        Self::default()
    }

    /// A guard that keeps the watcher polling while it lives.
    pub fn watch(&self) -> Watch<'_> {
        // ORDERING: SeqCst pairs with the load in `run` before it parks: either the
        // watcher sees the interest, or this unpark comes after its check and its park
        // returns at once (the park token).
        if self.interest.fetch_add(1, Ordering::SeqCst) == 0 {
            if let Some(thread) = self.thread.lock().as_ref() {
                thread.unpark();
            }
        }
        Watch {
            watcher: Some(self),
        }
    }

    /// Asks [`Watcher::run`] to return.
    pub fn stop(&self) {
        // ORDERING: SeqCst pairs with the load at the top of `run`'s loop.
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.lock().as_ref() {
            thread.unpark();
        }
    }

    /// The watching loop, run on the group's watcher thread until [`Watcher::stop`]:
    /// while a guard lives, notifies `progress` whenever `fingerprint` changes.
    pub fn run(&self, progress: &Signal, mut fingerprint: impl FnMut() -> u64) {
        *self.thread.lock() = Some(std::thread::current());
        let mut last = fingerprint();
        let mut backoff = Backoff::new();
        let mut naps = 0;
        // ORDERING: SeqCst pairs with `stop` and `watch`.
        while !self.stop.load(Ordering::SeqCst) {
            if self.interest.load(Ordering::SeqCst) == 0 {
                std::thread::park();
                backoff.reset();
                continue;
            }
            let now = fingerprint();
            if now != last {
                last = now;
                progress.notify();
                backoff.reset();
                naps = 0;
            } else if !backoff.snooze() {
                std::thread::sleep(WATCH_NAP);
                naps += 1;
                if naps == NAPS_PER_REFRESH {
                    naps = 0;
                    progress.notify();
                }
            }
        }
    }
}

/// Sends through `try_send` until it answers something other than full, waiting on
/// `progress` between tries until `timeout` passes (then the last answer, full).
///
/// # Errors
/// What `try_send` answered last.
pub fn send_within(
    progress: &Signal,
    timeout: Duration,
    mut try_send: impl FnMut() -> Result<(), crate::backend::group::SendError>,
) -> Result<(), crate::backend::group::SendError> {
    use crate::backend::group::SendError;
    let mut last = None;
    let deadline = std::time::Instant::now() + timeout;
    progress.wait_until(Some(deadline), || match try_send() {
        Err(SendError::Full { .. }) => None,
        other => {
            last = Some(other);
            Some(())
        }
    });
    last.unwrap_or_else(try_send)
}

/// Folds one word into a fingerprint (FNV-1a step over the word).
pub fn fold(hash: u64, word: u64) -> u64 {
    (hash ^ word).wrapping_mul(0x0100_0000_01b3)
}
