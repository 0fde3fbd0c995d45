//! Request/reply over a kernel or a pipeline, matched by correlation id.

use std::collections::HashMap;
use std::future::poll_fn;
use std::marker::PhantomData;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{fence, AtomicBool};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::backing::{read, Backing};
use crate::receiver::RxEnd;
use crate::spec::{join, Message};
use crate::{Error, Kernel, Sender};
use gyre_runtime::routing::DeadLetters;

/// How long a blocking request waits on its output before it looks whether its request
/// went to the dead letters.
const DEAD_LETTER_LOOK: Duration = Duration::from_millis(10);

/// The next request's correlation id, for every requester of the process: a reply that
/// comes after its request timed out (and its requester was dropped) can never be taken
/// for the reply of a request of a later requester on the same output. (Each requester
/// counted from 1, so a new requester got an old one's late reply.)
static NEXT_CORR: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

enum Slot<Out> {
    Waiting(Option<Waker>),
    Ready(Out),
}

struct Shared<Out> {
    output: Backing,
    /// Where a request whose message a handler failed on, or that was routed to or
    /// could not be delivered past the dead letters, is found by its correlation id.
    dead: DeadSink,
    rx: Mutex<Option<RxEnd>>,
    pending: Mutex<HashMap<u64, Slot<Out>>>,
    unmatched: Mutex<Vec<(u64, Out)>>,
    /// Set by a waiter that found another one receiving.
    contended: AtomicBool,
}

/// The dead letters a request's message can end in: the CPU runtime's sink, or the device
/// group's (which gathers what every generation of the group dead-lettered when asked).
enum DeadSink {
    Cpu(Arc<DeadLetters>),
    Device(Arc<crate::backing::DeviceCore>),
}

impl DeadSink {
    fn of(input: &Backing) -> Self {
        match input {
            Backing::Cpu(core) => Self::Cpu(Arc::clone(core.dead_letters())),
            Backing::Device(device) => Self::Device(Arc::clone(&device.group)),
        }
    }

    /// The sink, up to date.
    fn letters(&self) -> &DeadLetters {
        match self {
            Self::Cpu(dead) => dead,
            Self::Device(core) => core.group.gathered_dead_letters(),
        }
    }
}

impl<Out> Drop for Shared<Out> {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.lock().take() {
            rx.give_back(&self.output);
        }
    }
}

/// Sends requests and waits for their replies, many in flight at once, from threads or
/// async tasks. Each request gets a fresh correlation id; the kernel (or the last stage
/// of a pipeline) replies by emitting with the same id, which [`crate::Emit::emit`] does
/// by default. Whoever waits receives for everyone: there is no background task.
///
/// The requester takes the output's receiving end for itself (like
/// [`Kernel::receiver`]). Request-to-reply latency goes into the output kernel's latency
/// histogram (see [`Kernel::latency`]).
///
/// ```
/// use gyre::{KernelSpec, Runtime};
///
/// let runtime = Runtime::builder().build()?;
/// let square = runtime.launch(KernelSpec::<u64, u64>::new("square").cpu(|x, out| Ok(out.emit(x * x)?)))?;
/// square.activate()?;
/// let requester = square.requester()?;
/// assert_eq!(requester.request(12)?, 144);
/// # Ok::<(), gyre::Error>(())
/// ```
pub struct Requester<In, Out> {
    input: Sender<In>,
    shared: Arc<Shared<Out>>,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> Clone for Requester<In, Out> {
    fn clone(&self) -> Self {
        Self {
            input: self.input.clone(),
            shared: self.shared.clone(),
            _types: PhantomData,
        }
    }
}

impl<In, Out> std::fmt::Debug for Requester<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requester")
            .field("output", &self.shared.output.name())
            .finish_non_exhaustive()
    }
}

/// Removes a request's slot when its wait ends or is cancelled.
struct PendingGuard<'a, Out> {
    shared: &'a Shared<Out>,
    corr: u64,
}

impl<Out> Drop for PendingGuard<'_, Out> {
    fn drop(&mut self) {
        self.shared
            .dead
            .letters()
            .stop_watching(crate::spec::split(self.corr));
        if let Some(Slot::Ready(late)) = self.shared.pending.lock().remove(&self.corr) {
            // The reply came while the waiter gave up: keep it.
            self.shared.unmatched.lock().push((self.corr, late));
        }
    }
}

impl<In: Message, Out: Message> Requester<In, Out> {
    pub(crate) fn over(input: Backing, output: Backing) -> Result<Self, Error> {
        let rx = RxEnd::take(&output)?;
        let dead = DeadSink::of(&input);
        Ok(Self {
            input: Sender::over(input),
            shared: Arc::new(Shared {
                output,
                dead,
                rx: Mutex::new(Some(rx)),
                pending: Mutex::new(HashMap::new()),
                unmatched: Mutex::new(Vec::new()),
                contended: AtomicBool::new(false),
            }),
            _types: PhantomData,
        })
    }

    fn begin(&self) -> (u64, PendingGuard<'_, Out>) {
        let corr = NEXT_CORR.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.shared.pending.lock().insert(corr, Slot::Waiting(None));
        (
            corr,
            PendingGuard {
                shared: &self.shared,
                corr,
            },
        )
    }

    /// Takes the reply of `corr` if it arrived, registering `waker` otherwise; then
    /// receives for everyone while the output has something. `Some` ends the wait.
    fn poll_reply(&self, corr: u64, waker: Option<&Waker>) -> Option<Result<Out, Error>> {
        if let Some(reason) = self
            .shared
            .dead
            .letters()
            .take_failure(crate::spec::split(corr))
        {
            // No reply will come; one that does anyway goes to `take_unmatched`.
            self.shared.pending.lock().remove(&corr);
            return Some(Err(Error::DeadLettered { reason }));
        }
        {
            let mut pending = self.shared.pending.lock();
            match pending.get_mut(&corr) {
                Some(Slot::Ready(_)) => {
                    if let Some(Slot::Ready(out)) = pending.remove(&corr) {
                        return Some(Ok(out));
                    }
                }
                Some(Slot::Waiting(registered)) => {
                    if let Some(waker) = waker {
                        if !registered.as_ref().is_some_and(|w| w.will_wake(waker)) {
                            *registered = Some(waker.clone());
                        }
                    }
                }
                None => {}
            }
        }
        let mut guard = if let Some(guard) = self.shared.rx.try_lock() {
            guard
        } else {
            // Another waiter is receiving: it hands our reply over, or, when it leaves
            // with replies still in the ring, sees `contended` and wakes us. Store, fence,
            // try again; it releases, fences, loads (a store-buffering pair: one of us
            // sees the other).
            self.shared.contended.store(true, SeqCst);
            fence(SeqCst);
            self.shared.rx.try_lock()?
        };
        let rx = guard.as_mut()?;
        let output = &self.shared.output;
        let mut handed = false;
        let result = loop {
            match rx.try_recv_with(output, |p, c| (read::<Out>(p), join(c))) {
                Ok(Some((out, c))) if c == corr => break Some(Ok(out)),
                Ok(Some((out, c))) => {
                    let mut pending = self.shared.pending.lock();
                    if let Some(slot) = pending.get_mut(&c) {
                        if let Slot::Waiting(Some(w)) = std::mem::replace(slot, Slot::Ready(out)) {
                            w.wake();
                        }
                        handed = true;
                    } else {
                        self.shared.unmatched.lock().push((c, out));
                    }
                }
                Ok(None) => break None,
                Err(error) => break Some(Err(error)),
            }
        };
        drop(guard);
        fence(SeqCst);
        if handed || self.shared.contended.swap(false, SeqCst) {
            // Blocking waiters wait on the output signal, and waiters that found the
            // receiving end busy may have replies left in the ring.
            output.items().notify();
        }
        if matches!(result, Some(Ok(_))) {
            self.shared.pending.lock().remove(&corr);
        }
        result
    }

    fn finish(&self, started: Instant, result: Result<Out, Error>) -> Result<Out, Error> {
        if result.is_ok() {
            let ns = started.elapsed().as_nanos() as u64;
            match &self.shared.output {
                Backing::Cpu(core) => core.record_latency(ns),
                Backing::Device(d) => d.group.latency[d.k].record(ns),
            }
        }
        result
    }

    /// Sends `request` and waits for its reply.
    ///
    /// # Errors
    /// The send's error (the request is `Copy`: keep it to retry), or the output
    /// kernel's when it stops before replying. After [`Error::Faulted`] the request's
    /// message may still be queued: a restart keeps queued messages and runs it, and its
    /// reply then goes to [`Requester::take_unmatched`] (terminate first to take it back
    /// instead). [`Error::DeadLettered`] when its message went to the dead letters: no
    /// reply comes.
    pub fn request(&self, request: In) -> Result<Out, Error> {
        self.request_within(request, None)
    }

    /// Sends `request` and waits at most `timeout` for its reply. A reply that comes
    /// later is kept in [`Requester::take_unmatched`].
    ///
    /// # Errors
    /// [`Error::Timeout`], or as [`Requester::request`].
    pub fn request_timeout(&self, request: In, timeout: Duration) -> Result<Out, Error> {
        self.request_within(request, Some(timeout))
    }

    fn request_within(&self, request: In, timeout: Option<Duration>) -> Result<Out, Error> {
        let started = Instant::now();
        let (corr, _guard) = self.begin();
        self.input
            .send_with_corr(request, corr)
            .map_err(|e| e.error)?;
        let deadline = timeout.map(|t| started + t);
        let output = &self.shared.output;
        let _watch = output.watch();
        // In slices: a request that went to the dead letters is noticed within one (the
        // dead-letter sink does not notify the output's signal this thread parks on).
        let result = loop {
            let slice = Instant::now() + DEAD_LETTER_LOOK;
            let until = deadline.map_or(slice, |d| d.min(slice));
            if let Some(result) = output
                .items()
                .wait_until(Some(until), || self.poll_reply(corr, None))
            {
                break result;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break Err(Error::Timeout {
                    kernel: output.name().to_owned(),
                    after: timeout.unwrap_or_default(),
                });
            }
        };
        self.finish(started, result)
    }

    /// Sends `request` from async code and waits for its reply without blocking the
    /// executor thread.
    ///
    /// # Cancel safety
    /// If the future is dropped after the request was sent, its reply (when it comes) is
    /// kept in [`Requester::take_unmatched`].
    ///
    /// # Errors
    /// As [`Requester::request`].
    pub async fn request_async(&self, request: In) -> Result<Out, Error> {
        let started = Instant::now();
        let (corr, _guard) = self.begin();
        self.input
            .send_async_with_corr(request, corr)
            .await
            .map_err(|e| e.error)?;
        let output = &self.shared.output;
        let _watch = output.watch();
        let result = poll_fn(|cx| {
            if let Some(done) = self.poll_reply(corr, Some(cx.waker())) {
                return Poll::Ready(done);
            }
            // Woken too when this request's message reaches the dead letters (a device
            // group's are gathered when someone looks, as this does on every wake-up of
            // the output); then asked again, as it may have come in before the
            // registration.
            self.shared
                .dead
                .letters()
                .wake_on_failure(crate::spec::split(corr), cx.waker());
            if let Some(done) = self.poll_reply(corr, None) {
                return Poll::Ready(done);
            }
            output
                .items()
                .poll_until(cx, || self.poll_reply(corr, None))
        })
        .await;
        self.finish(started, result)
    }

    /// Replies nobody waited for any more (their request timed out or was cancelled),
    /// with their correlation ids.
    pub fn take_unmatched(&self) -> Vec<(u64, Out)> {
        std::mem::take(&mut *self.shared.unmatched.lock())
    }
}

impl<In: Message, Out: Message> Kernel<In, Out> {
    /// A [`Requester`] over this kernel: it takes the kernel's host output for itself.
    ///
    /// # Errors
    /// [`Error::NoHostOutput`], or [`Error::ReceiverTaken`] when the output is taken.
    pub fn requester(&self) -> Result<Requester<In, Out>, Error> {
        Requester::over(self.backing.clone(), self.backing.clone())
    }
}
