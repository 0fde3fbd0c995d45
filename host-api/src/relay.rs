//! Relays: routes between kernels of different backends (or different device groups),
//! carried through the host. A relay thread receives what the upstream kernel emits to
//! the host and sends it into the downstream kernel's inbox with blocking backpressure
//! (a full downstream stalls the relay, whose upstream then stalls on its full host
//! output: nothing is dropped). Correct and slower than a route inside a group, and
//! visible as relayed: `gyre_relay_forwarded_total` in Prometheus.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::backing::{Backing, SendFail};
use crate::receiver::RxEnd;
use crate::report::{KernelShutdown, RawMessage};
use crate::spec::join;
use crate::Error;
use gyre_runtime::wait::Signal;

/// A relay between two kernels, kept by the runtime.
#[derive(Debug)]
pub(crate) struct Relay {
    /// Upstream kernel's name.
    pub(crate) from: String,
    /// Downstream kernel's name.
    pub(crate) to: String,
    /// What the upstream runs on.
    pub(crate) from_backing: Backing,
    /// What the downstream runs on.
    pub(crate) to_backing: Backing,
    /// Size of the message type relayed: slots may be larger on one side.
    bytes: usize,
    forwarded: AtomicU64,
    /// Asks the thread to stop at once (a shutdown whose deadline passed).
    stop: AtomicBool,
    /// Set when the thread has finished: the upstream stopped and everything it emitted
    /// was forwarded or handed back.
    done: AtomicBool,
    finished: Signal,
    /// Messages the downstream refused (it stopped), and what was left when stopped.
    handed_back: Mutex<Vec<RawMessage>>,
}

impl Relay {
    /// Starts relaying everything `from` emits to the host, messages of `bytes` bytes,
    /// into `to`.
    ///
    /// # Errors
    /// `from`'s receiving end cannot be taken (no host output, or taken).
    pub(crate) fn start(from: Backing, to: Backing, bytes: usize) -> Result<Arc<Self>, Error> {
        let rx = RxEnd::take(&from)?;
        let relay = Arc::new(Self {
            from: from.name().to_owned(),
            to: to.name().to_owned(),
            from_backing: from,
            to_backing: to,
            bytes,
            forwarded: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            done: AtomicBool::new(false),
            finished: Signal::new(),
            handed_back: Mutex::new(Vec::new()),
        });
        let thread_relay = relay.clone();
        std::thread::Builder::new()
            .name(format!("gyre-relay-{}", relay.from))
            .spawn(move || thread_relay.run(rx))
            .map_err(|e| Error::Launch(format!("could not start a relay thread: {e}")))?;
        tracing::info!(from = %relay.from, to = %relay.to, "relay started (through the host)");
        Ok(relay)
    }

    /// Messages forwarded so far.
    pub(crate) fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    fn stopping(&self) -> bool {
        // ORDERING: SeqCst pairs with the store in `stop_now`, made before it notifies.
        self.stop.load(Ordering::SeqCst)
    }

    /// The relay loop: receive one, send it on, until the upstream has stopped and
    /// everything it emitted was taken, or a stop.
    fn run(&self, mut rx: RxEnd) {
        let from = &self.from_backing;
        let _watch_from = from.watch();
        let _watch_to = self.to_backing.watch();
        // One buffer for every message: the relay allocates nothing per message.
        let mut message = vec![0u8; self.bytes];
        loop {
            let next = from.items().wait_until(None, || {
                if self.stopping() {
                    return Some(Ok(None));
                }
                rx.try_recv_with(from, |payload, corr| {
                    message.copy_from_slice(&payload[..self.bytes]);
                    corr
                })
                .transpose()
                .map(|r| r.map(Some))
            });
            let Some(Ok(Some(corr))) = next else {
                // Stopped by request, or the upstream stopped with nothing left.
                break;
            };
            self.forward(&message, corr);
        }
        if self.stopping() {
            // Whatever the upstream still holds for the host goes back in the report.
            while let Ok(Some(m)) = rx.try_recv_with(from, |p, corr| RawMessage {
                corr: join(corr),
                bytes: p[..self.bytes].to_vec(),
            }) {
                self.handed_back.lock().push(m);
            }
        }
        rx.give_back(from);
        // ORDERING: SeqCst pairs with the load in `wait_done`, before it parks.
        self.done.store(true, Ordering::SeqCst);
        self.finished.notify();
    }

    /// Sends one message into the downstream, waiting for room (or a stop); a message the
    /// downstream refuses is kept to be handed back.
    fn forward(&self, payload: &[u8], corr: [u32; 2]) {
        let to = &self.to_backing;
        let sent = to
            .space()
            .wait_until(None, || match to.try_send::<u8>(corr, payload) {
                Ok(()) => Some(true),
                Err(SendFail::Full) if !self.stopping() => None,
                Err(_) => Some(false),
            });
        if sent == Some(true) {
            self.forwarded.fetch_add(1, Ordering::Relaxed);
        } else {
            self.handed_back.lock().push(RawMessage {
                corr: join(corr),
                bytes: payload.to_vec(),
            });
        }
    }

    /// Waits until the relay finished (its upstream stopped and everything was
    /// forwarded) or `deadline`; then stops it at once if it had not finished.
    pub(crate) fn finish_by(&self, deadline: Instant) {
        let done = self.finished.wait_until(Some(deadline), || {
            self.done.load(Ordering::SeqCst).then_some(())
        });
        if done.is_none() {
            self.stop_now();
            self.finished
                .wait_until(None, || self.done.load(Ordering::SeqCst).then_some(()));
        }
    }

    /// Stops the relay at once: it hands back what it holds.
    fn stop_now(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.from_backing.items().notify();
        self.to_backing.space().notify();
    }

    /// The relay's entry in a shutdown report, if it handed anything back.
    pub(crate) fn report(&self) -> Option<KernelShutdown> {
        let undelivered = std::mem::take(&mut *self.handed_back.lock());
        if undelivered.is_empty() {
            return None;
        }
        Some(KernelShutdown {
            kernel: format!("relay {} → {}", self.from, self.to),
            processed: self.forwarded(),
            timed_out: false,
            final_state: gyre_runtime::abi::State::Terminated,
            fault: None,
            error: None,
            abandoned: false,
            undelivered,
            undelivered_outputs: Vec::new(),
        })
    }
}
