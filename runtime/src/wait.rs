//! Waiting without burning a core: [`Signal`] and the escalating [`Backoff`].
//!
//! A waiter checks its condition, spins a little, yields a little, then registers on a
//! [`Signal`] and parks (a thread) or returns `Pending` (a task). Whoever makes the
//! condition true calls [`Signal::notify`], which costs one fence and one load when
//! nobody waits. Spinning first matters: waking a parked thread costs tens of
//! microseconds, far more than a message.
//!
//! The lost-wakeup argument is Dekker's: the waiter increments `waiters`, fences, and then
//! re-checks its condition; the notifier makes the condition true, fences, then reads
//! `waiters`. Either the waiter sees the condition or the notifier sees the waiter. The
//! notifier runs on every message and the waiter only before parking, so the fence is
//! asymmetric: a compiler fence for the notifier and a process-wide `membarrier` for the
//! waiter on Linux (full fences on both sides elsewhere; see `sync::asym`).

use std::task::{Context, Poll, Waker};
use std::thread::Thread;
use std::time::Instant;

use parking_lot::Mutex;

use crate::sync::{asym, AtomicUsize, Ordering};

pub use crate::sync::asym::uses_membarrier;

/// Rounds of spinning before a waiter starts yielding. Each round is one `spin_loop`
/// hint followed by a check of the condition: a waiter notices a message within one
/// hint (tens of nanoseconds on recent x86, where `pause` is long), which is what keeps
/// round trips short. Together they last a few tens of microseconds.
const SPIN_ROUNDS: u32 = 1024;
/// Rounds of `yield_now` before a waiter parks.
const YIELD_ROUNDS: u32 = 64;
/// Waiters [`Signal::notify`] takes off the list per lock, to wake outside it.
const NOTIFY_BATCH: usize = 8;

/// Escalating wait: spin, then yield, then report that it is time to park.
#[derive(Debug, Default)]
pub struct Backoff {
    round: u32,
}

impl Backoff {
    /// A fresh backoff.
    pub const fn new() -> Self {
        Self { round: 0 }
    }

    /// Waits a little longer than last time. Returns `false` once spinning and yielding
    /// are used up and the caller should park.
    pub fn snooze(&mut self) -> bool {
        if self.round < SPIN_ROUNDS {
            std::hint::spin_loop();
        } else if self.round < SPIN_ROUNDS + YIELD_ROUNDS {
            std::thread::yield_now();
        } else {
            return false;
        }
        self.round += 1;
        true
    }

    /// Starts over (after progress).
    pub fn reset(&mut self) {
        self.round = 0;
    }
}

#[derive(Debug)]
enum Waiter {
    Thread(Thread),
    Task(Waker),
}

/// A point threads and tasks wait on until someone calls [`Signal::notify`].
#[derive(Debug, Default)]
pub struct Signal {
    waiters: AtomicUsize,
    list: Mutex<Vec<Waiter>>,
}

impl Signal {
    /// A signal nobody waits on.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes every waiter. Call after making a waited-for condition true.
    #[inline]
    pub fn notify(&self) {
        // ORDERING: the light side of an asymmetric fence orders the caller's preceding
        // write of the condition before the load of `waiters`; the waiter's `register`
        // uses the heavy side (module docs).
        asym::light();
        if self.waiters.load(Ordering::Relaxed) != 0 {
            self.wake_registered();
        }
    }

    /// Wakes the waiters registered now (the slow half of [`Signal::notify`]).
    #[cold]
    #[inline(never)]
    fn wake_registered(&self) {
        // Wake outside the lock (a woken thread or waker may register again at once), a
        // few at a time through a buffer on the stack, so that the list keeps its
        // capacity: a waiter that registers once per message must not cost an allocation
        // per message (`host-api/tests/zero_alloc.rs`). Only the waiters registered now
        // are woken; one that registers meanwhile waits for the next notify.
        let mut left = self.list.lock().len();
        while left > 0 {
            let mut batch: [Option<Waiter>; NOTIFY_BATCH] = Default::default();
            let taken = {
                let mut list = self.list.lock();
                let taken = left.min(NOTIFY_BATCH).min(list.len());
                for (slot, waiter) in batch.iter_mut().zip(list.drain(..taken)) {
                    *slot = Some(waiter);
                }
                self.waiters.fetch_sub(taken, Ordering::Relaxed);
                taken
            };
            if taken == 0 {
                break;
            }
            left -= taken;
            for waiter in batch.into_iter().flatten() {
                match waiter {
                    Waiter::Thread(thread) => thread.unpark(),
                    Waiter::Task(waker) => waker.wake(),
                }
            }
        }
    }

    /// Whether anybody is registered (racy; for tests and gauges).
    pub fn has_waiters(&self) -> bool {
        self.waiters.load(Ordering::Relaxed) != 0
    }

    fn register(&self, waiter: Waiter) {
        let mut list = self.list.lock();
        if let Waiter::Task(waker) = &waiter {
            if list
                .iter()
                .any(|w| matches!(w, Waiter::Task(old) if old.will_wake(waker)))
            {
                return;
            }
        }
        list.push(waiter);
        // ORDERING: the increment, then the heavy side of an asymmetric fence before the
        // caller re-checks its condition; pairs with the light side in `notify`.
        self.waiters.fetch_add(1, Ordering::SeqCst);
        asym::heavy();
    }

    /// Blocks the calling thread until `ready` returns `Some`, or `deadline` passes
    /// (then `None`). Spins and yields before parking.
    pub fn wait_until<T>(
        &self,
        deadline: Option<Instant>,
        mut ready: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let mut backoff = Backoff::new();
        loop {
            if let Some(value) = ready() {
                return Some(value);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            if backoff.snooze() {
                continue;
            }
            self.register(Waiter::Thread(std::thread::current()));
            if let Some(value) = ready() {
                return Some(value);
            }
            match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    std::thread::park_timeout(d - now);
                }
                None => std::thread::park(),
            }
        }
    }

    /// The task form of [`Signal::wait_until`]: `Ready` with the value, or `Pending`
    /// after registering the task's waker.
    pub fn poll_until<T>(
        &self,
        cx: &mut Context<'_>,
        mut ready: impl FnMut() -> Option<T>,
    ) -> Poll<T> {
        if let Some(value) = ready() {
            return Poll::Ready(value);
        }
        self.register(Waiter::Task(cx.waker().clone()));
        match ready() {
            Some(value) => Poll::Ready(value),
            None => Poll::Pending,
        }
    }
}
