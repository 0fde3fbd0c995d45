//! The one place that imports atomics, so loom can replace them.
//!
//! Under `--cfg loom` the loom model types are used; otherwise `std`'s.

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};

pub(crate) use std::sync::atomic::Ordering;

/// Spin-loop hint that loom understands as a yield point.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Under loom both sides are plain SeqCst fences (loom has no process-wide barrier).
#[cfg(loom)]
pub(crate) mod asym {
    use loom::sync::atomic::{fence, Ordering};

    /// The hot side of a Dekker pair.
    pub(crate) fn light() {
        fence(Ordering::SeqCst);
    }

    /// The cold side of a Dekker pair.
    pub(crate) fn heavy() {
        fence(Ordering::SeqCst);
    }
}

/// Asymmetric fences: a cheap [`light`](asym::light) fence on hot paths paired with an
/// expensive [`heavy`](asym::heavy) fence on cold ones.
///
/// Waking protocols here are Dekker-shaped: one side stores X then loads Y, the other
/// stores Y then loads X, and at least one must see the other's store. That needs a full
/// fence on both sides, and on the hot side (every send, every receive) a full fence
/// costs a wait for the store buffer to drain, which includes a cache-line transfer to
/// the other core. On Linux, `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` makes every
/// running thread of the process execute a full barrier before it returns, so the cold
/// side (a thread about to park, a worker letting a kernel go idle) can pay for both and
/// the hot side needs only a compiler fence. Where membarrier is unavailable both
/// functions are full fences, which is always correct.
#[cfg(not(loom))]
pub(crate) mod asym {
    use std::sync::atomic::{compiler_fence, fence, AtomicU8, Ordering};

    const UNKNOWN: u8 = 0;
    const MEMBARRIER: u8 = 1;
    const FULL_FENCES: u8 = 2;

    static MODE: AtomicU8 = AtomicU8::new(UNKNOWN);

    /// The mode, decided on first use by any thread: no thread ever picks a fence before
    /// the decision, so a `light` and a `heavy` never disagree about the protocol.
    #[inline]
    fn mode() -> u8 {
        // ORDERING: Acquire pairs with the Release store in `init`.
        let mode = MODE.load(Ordering::Acquire);
        if mode != UNKNOWN {
            return mode;
        }
        init();
        // ORDERING: as above; `init` returned, so the store happened.
        MODE.load(Ordering::Acquire)
    }

    /// Decides the mode once: registers for private expedited membarrier when the kernel
    /// offers it.
    fn init() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let mode = if register_membarrier() {
                MEMBARRIER
            } else {
                FULL_FENCES
            };
            tracing::debug!(membarrier = mode == MEMBARRIER, "asymmetric fences");
            // ORDERING: Release pairs with the Acquire loads below: a thread that sees
            // MEMBARRIER also sees the registration (made before, in this thread).
            MODE.store(mode, Ordering::Release);
        });
    }

    /// The hot side of a Dekker pair: orders the caller's earlier stores before its later
    /// loads, provided the other side uses [`heavy`].
    #[inline]
    pub(crate) fn light() {
        if mode() == MEMBARRIER {
            // ORDERING: the compiler must not move our store after our load; the CPU
            // ordering comes from the other side's membarrier.
            compiler_fence(Ordering::SeqCst);
        } else {
            // ORDERING: full fence; the other side's `heavy` is a full fence too.
            fence(Ordering::SeqCst);
        }
    }

    /// The cold side of a Dekker pair: a full fence in this thread and in every running
    /// thread of the process.
    pub(crate) fn heavy() {
        // ORDERING: a full fence in this thread in every mode.
        fence(Ordering::SeqCst);
        // Threads on the light side only had a compiler fence, so if the call failed
        // nothing would order against them (a lost wakeup). Linux does not fail this
        // command after a successful registration; stop loudly rather than hang.
        assert!(
            mode() != MEMBARRIER || membarrier_all(),
            "membarrier(PRIVATE_EXPEDITED) failed after registration"
        );
        // ORDERING: and once more after the other threads' barriers.
        fence(Ordering::SeqCst);
    }

    #[cfg(target_os = "linux")]
    fn register_membarrier() -> bool {
        const CMD_QUERY: libc::c_long = 0;
        const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
        const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;
        // SAFETY: membarrier takes plain integers and touches no memory of ours.
        let supported = unsafe { libc::syscall(libc::SYS_membarrier, CMD_QUERY, 0, 0) };
        if supported < 0 || supported & CMD_PRIVATE_EXPEDITED == 0 {
            return false;
        }
        // SAFETY: as above.
        let registered =
            unsafe { libc::syscall(libc::SYS_membarrier, CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) };
        registered == 0 && membarrier_all()
    }

    #[cfg(target_os = "linux")]
    fn membarrier_all() -> bool {
        const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
        // SAFETY: membarrier takes plain integers and touches no memory of ours.
        unsafe { libc::syscall(libc::SYS_membarrier, CMD_PRIVATE_EXPEDITED, 0, 0) == 0 }
    }

    #[cfg(not(target_os = "linux"))]
    fn register_membarrier() -> bool {
        false
    }

    #[cfg(not(target_os = "linux"))]
    fn membarrier_all() -> bool {
        false
    }

    /// Whether the cheap path is in use (for logs and benchmark reports).
    pub fn uses_membarrier() -> bool {
        mode() == MEMBARRIER
    }
}
