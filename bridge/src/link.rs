//! The sending half: a host receiver forwarded to a remote export.
//!
//! One thread per link. It reads the receiver only while it has credit, numbers what it
//! reads, keeps every message until the export says the kernel took it, resends from the
//! first unacknowledged message after a gap, a reconnect or a new incarnation of the
//! export, and says how the link is doing.
//!
//! An idle link on a CPU kernel does not wait for its thread to wake: the kernel's emit
//! wakes a waker that sends the message from the emitting thread (see [`Emitted`]),
//! which takes one thread wake-up (tens of microseconds on a small machine) off every
//! message's way. Under load the link thread reads and batches, as before.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use zenoh::Wait;

use crate::wire::{self, Ack, FrameHeader, Hello, Welcome};
use crate::{random_id, BridgeError, WireType};

/// How a link behaves.
#[derive(Clone, Debug)]
pub struct LinkOptions {
    /// How long [`crate::Bridge::link`] waits for the export to answer. Default 5 s.
    pub connect_timeout: Duration,
    /// With no word from the export for this long the link is degraded and says hello
    /// again (then resends what was not acknowledged). Default 1 s.
    pub silence: Duration,
    /// With no word from the export for this long the link gives up: it stops, its
    /// health is [`LinkHealth::Failed`], and [`Link::terminate`] hands back every
    /// unacknowledged message. Default 10 s.
    pub link_timeout: Duration,
    /// The most messages in one frame (at least 1). Default 256.
    pub max_batch: usize,
    /// The name the type goes by on the wire (default: its Rust type name).
    pub wire_name: Option<String>,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            silence: Duration::from_secs(1),
            link_timeout: Duration::from_secs(10),
            max_batch: 256,
            wire_name: None,
        }
    }
}

/// Counters of a link, since it started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkMetrics {
    /// Messages read from the receiver and sent (first sends).
    pub sent: u64,
    /// Messages the export wrote into the remote inbox.
    pub delivered: u64,
    /// Messages the remote kernel took from its inbox: acknowledged, forgotten here.
    pub acknowledged: u64,
    /// Messages sent again (after a gap, a reconnect or a new remote incarnation).
    pub retransmitted: u64,
    /// Frames an idle link sent from the emitting kernel's thread, without waking its
    /// own (CPU kernels only; see [`crate::Bridge::link`]).
    pub inline_frames: u64,
    /// Times the link ran out of credit and stopped reading its receiver (the upstream
    /// kernel then stalls on its full output ring).
    pub credit_stalls: u64,
    /// Messages sent and not yet acknowledged (never more than the credit window).
    pub in_flight: u64,
    /// Times the link said hello again after silence or a reset.
    pub reconnects: u64,
    /// Round trip of the last frame: sent until the export said it was written into the
    /// inbox.
    pub round_trip: Option<Duration>,
    /// Moving average of the round trip (1/8 weight per sample).
    pub round_trip_avg: Option<Duration>,
}

/// How a link is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkHealth {
    /// Acknowledgements arrive.
    Up,
    /// No word from the export for a while, or it restarted: the link is reconnecting
    /// and will resend what was not acknowledged.
    Degraded {
        /// Why.
        reason: String,
    },
    /// The link gave up (no word for longer than the link timeout); terminate it for
    /// the report.
    Failed {
        /// Why.
        reason: String,
    },
    /// Drained: everything it sent was taken by the remote kernel.
    Finished,
}

/// What a link hands back when it stops.
pub struct LinkReport<Out> {
    /// The key it sent to.
    pub key: String,
    /// Every message sent and not acknowledged, in order, with its correlation id.
    pub undelivered: Vec<(Out, u64)>,
    /// The receiver it read from, with whatever the link did not read yet (give it to a
    /// new link, or read it).
    pub receiver: gyre::Receiver<Out>,
    /// Its counters at the end.
    pub metrics: LinkMetrics,
    /// Why it stopped early, if it did (a failure or a drain that timed out).
    pub failure: Option<String>,
    /// The export confirmed the drain: everything sent was taken.
    pub finished: bool,
}

impl<Out> std::fmt::Debug for LinkReport<Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkReport")
            .field("key", &self.key)
            .field("undelivered", &self.undelivered.len())
            .field("metrics", &self.metrics)
            .field("failure", &self.failure)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Run,
    Drain(Instant),
    Terminate,
}

struct Shared {
    command: Mutex<Command>,
    metrics: Mutex<LinkMetrics>,
    health: Mutex<LinkHealth>,
}

/// A receiver forwarded to a remote export (see [`crate::Bridge::link`]). Dropping it
/// terminates it: what was not acknowledged is logged as a warning with its count; call
/// [`Link::terminate`] or [`Link::drain`] to get it back instead.
pub struct Link<Out: gyre::Message> {
    key: String,
    id: u64,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<LinkReport<Out>>>,
}

impl<Out: gyre::Message> std::fmt::Debug for Link<Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("key", &self.key)
            .field("id", &format_args!("{:016x}", self.id))
            .finish_non_exhaustive()
    }
}

impl<Out: gyre::Message> Link<Out> {
    /// The key it sends to.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Its id (what the export's [`crate::InboundLink::id`] shows).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Its counters now.
    pub fn metrics(&self) -> LinkMetrics {
        self.shared.metrics.lock().clone()
    }

    /// How it is doing.
    pub fn health(&self) -> LinkHealth {
        self.shared.health.lock().clone()
    }

    /// Drains the link: forwards what the receiver holds until it is empty (drain the
    /// upstream kernel first, so that nothing more arrives), waits until the remote
    /// kernel took all of it, tells the export the link is done, and returns. Within
    /// `timeout` (plus at most a hello's half second): what was not acknowledged by
    /// then is handed back in the report.
    pub fn drain(mut self, timeout: Duration) -> LinkReport<Out> {
        *self.shared.command.lock() = Command::Drain(Instant::now() + timeout);
        self.join()
    }

    /// Stops the link now and hands back every message not acknowledged.
    pub fn terminate(mut self) -> LinkReport<Out> {
        *self.shared.command.lock() = Command::Terminate;
        self.join()
    }

    fn join(&mut self) -> LinkReport<Out> {
        let thread = self.thread.take().expect("joined once");
        match thread.join() {
            Ok(report) => report,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl<Out: gyre::Message> Drop for Link<Out> {
    fn drop(&mut self) {
        if self.thread.is_some() {
            *self.shared.command.lock() = Command::Terminate;
            let report = self.join();
            if !report.undelivered.is_empty() {
                tracing::warn!(
                    key = self.key,
                    count = report.undelivered.len(),
                    "gyre-zenoh: a link dropped without drain or terminate had unacknowledged messages; they are lost (call Link::terminate to get them back)"
                );
            }
        }
    }
}

/// An acknowledgement's arrival time and bytes.
type Stamped = (Instant, Vec<u8>);

/// The link's acknowledgement subscriber and the queue its callback fills.
struct Acks {
    _sub: zenoh::pubsub::Subscriber<()>,
    rx: std::sync::mpsc::Receiver<Stamped>,
}

impl Acks {
    fn try_recv(&self) -> Option<(Instant, Ack)> {
        let (at, bytes) = self.rx.try_recv().ok()?;
        Some((at, Ack::decode(&bytes)?))
    }

    fn recv_timeout(&self, timeout: Duration) -> Option<(Instant, Ack)> {
        let (at, bytes) = self.rx.recv_timeout(timeout).ok()?;
        Some((at, Ack::decode(&bytes)?))
    }
}

pub(crate) fn start<Out: gyre::Message>(
    session: &zenoh::Session,
    key: &str,
    receiver: gyre::Receiver<Out>,
    options: LinkOptions,
) -> Result<Link<Out>, BridgeError> {
    crate::export::check_key(key)?;
    let mut options = options;
    options.max_batch = options.max_batch.max(1);
    let ty = match &options.wire_name {
        Some(name) => WireType::named::<Out>(name),
        None => WireType::of::<Out>(),
    };
    let id = random_id();
    // Acknowledgements are stamped when they arrive (the round trip must not include
    // the time the link thread spent waiting on its receiver), then queued for the link
    // thread; a full queue blocks Zenoh's reader, like a FIFO handler.
    let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel::<Stamped>(1024);
    let ack_sub = session
        .declare_subscriber(format!("{key}/ack/{id:016x}"))
        .callback(move |s| {
            let _ = ack_tx.send((Instant::now(), s.payload().to_bytes().into_owned()));
        })
        .wait()
        .map_err(|e| BridgeError::zenoh("declare the link's acknowledgement subscriber", &e))?;
    let acks = Acks {
        _sub: ack_sub,
        rx: ack_rx,
    };
    let data = session
        .declare_publisher(format!("{key}/data"))
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .wait()
        .map_err(|e| BridgeError::zenoh("declare the link's data publisher", &e))?;
    let shared = Arc::new(Shared {
        command: Mutex::new(Command::Run),
        metrics: Mutex::new(LinkMetrics::default()),
        health: Mutex::new(LinkHealth::Up),
    });
    let inline = receiver.backend() == "cpu";
    let mut out = Outbound {
        acks,
        inline,
        waker: None,
        key: key.to_owned(),
        id,
        ty,
        session: session.clone(),
        data,
        options,
        shared: Arc::clone(&shared),
        receiver: Some(receiver),
        epoch: None,
        unacked: VecDeque::new(),
        base: 0,
        cursor: 0,
        credit: 0,
        delivered: 0,
        heard: Instant::now(),
        last_hello: None,
        stalled: false,
        drained_input: false,
        fin_sent: false,
        fin_at: None,
        finished: false,
        batch: Vec::new(),
        last_sent: Instant::now(),
        metrics: LinkMetrics::default(),
    };
    let deadline = Instant::now() + out.options.connect_timeout;
    loop {
        match out.hello(deadline)? {
            true => break,
            false if Instant::now() >= deadline => {
                return Err(BridgeError::NoExport {
                    key: key.to_owned(),
                    waited_ms: out.options.connect_timeout.as_millis() as u64,
                })
            }
            false => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let thread = std::thread::Builder::new()
        .name(format!("gyre-link-{key}"))
        .spawn(move || run(out))
        .map_err(|e| BridgeError::zenoh("start the link's thread", &e))?;
    Ok(Link {
        key: key.to_owned(),
        id,
        shared,
        thread: Some(thread),
    })
}

/// Looks this many times for the receiver's next message, yielding the core in between,
/// before the link thread parks.
const YIELDS_BEFORE_PARKING: u32 = 16;

/// How long the link thread parks at most when its receiver is empty (it wakes earlier
/// when the kernel emits and the link cannot send inline).
const PARK: Duration = Duration::from_millis(10);

/// An emit sends inline only while fewer messages than this are in flight, and only
/// when the link sent nothing for [`INLINE_AFTER`]: otherwise the link is streaming and
/// its thread batches (one frame for many messages, not one per emit).
const INLINE_IN_FLIGHT: usize = 64;

/// See [`INLINE_IN_FLIGHT`].
const INLINE_AFTER: Duration = Duration::from_micros(50);

/// Frames one inline wake sends at most before it hands over to the link thread (the
/// emitting thread belongs to a kernel).
const INLINE_ROUNDS: u32 = 4;

/// The receiver's next message after a few looks with the core given away in between;
/// `None` when there was none.
fn look_for_output<Out: gyre::Message>(
    rx: &mut gyre::Receiver<Out>,
) -> Option<Result<(Out, u64), gyre::Error>> {
    for _ in 0..YIELDS_BEFORE_PARKING {
        match rx.try_recv_with_corr() {
            Ok(Some(m)) => return Some(Ok(m)),
            Ok(None) => std::thread::yield_now(),
            Err(e) => return Some(Err(e)),
        }
    }
    None
}

/// Waits up to `timeout` for the receiver's next message: a few looks with the core given
/// away in between, then parked until the kernel emits. No spinning: on a small machine a
/// spinning link thread takes a core from Zenoh's threads on the very path a message
/// travels. `None` when the time ran out. (Links on device kernels: the receive's future
/// keeps the device's watcher polling while it lives.)
fn park_for_output<Out: gyre::Message>(
    rx: &mut gyre::Receiver<Out>,
    timeout: Duration,
) -> Option<Result<(Out, u64), gyre::Error>> {
    struct Unpark(Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    if let Some(first) = look_for_output(rx) {
        return Some(first);
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut next = std::pin::pin!(rx.recv_with_corr_async());
    let deadline = Instant::now() + timeout;
    loop {
        if let Poll::Ready(r) = next.as_mut().poll(&mut cx) {
            return Some(r);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        std::thread::park_timeout(left);
    }
}

/// The waker an inline link registers on its receiver: a CPU kernel's emit wakes it on
/// the emitting thread, which sends the message at once if it can take the link's lock
/// and the link is idle ([`Outbound::send_inline`]), and wakes the link thread otherwise.
/// It never blocks on the lock.
struct Emitted<Out: gyre::Message> {
    link: Weak<Mutex<Outbound<Out>>>,
    thread: Thread,
}

impl<Out: gyre::Message> std::task::Wake for Emitted<Out> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Never on a thread that drives an async runtime (a stop notified from a task,
        // say): Zenoh's blocking calls must not run there, nor a task wait on a `put`.
        if tokio::runtime::Handle::try_current().is_err() {
            if let Some(link) = self.link.upgrade() {
                if let Some(mut out) = link.try_lock() {
                    if out.send_inline() {
                        return;
                    }
                }
            }
        }
        self.thread.unpark();
    }
}

/// The link thread: turns of its loop, parking between them when told, then the report.
fn run<Out: gyre::Message>(out: Outbound<Out>) -> LinkReport<Out> {
    let link = Arc::new(Mutex::new(out));
    {
        let mut out = link.lock();
        if out.inline {
            out.waker = Some(Waker::from(Arc::new(Emitted {
                link: Arc::downgrade(&link),
                thread: std::thread::current(),
            })));
        }
    }
    let failure = loop {
        let turn = link.lock().turn();
        match turn {
            std::ops::ControlFlow::Break(failure) => break failure,
            std::ops::ControlFlow::Continue(Some(park)) => std::thread::park_timeout(park),
            std::ops::ControlFlow::Continue(None) => {}
        }
    };
    let report = link.lock().finish(failure);
    report
}

struct Entry<Out> {
    message: Out,
    corr: u64,
    sent_at: Instant,
}

/// The link thread's state. Sequence numbers: `base` is the first unacknowledged (the
/// front of `unacked`), `next()` the next new one, `cursor` the next to transmit
/// (`< next()` while resending), `credit` the first the export does not allow yet.
#[allow(clippy::struct_excessive_bools)] // independent facts of the link's progress
struct Outbound<Out> {
    acks: Acks,
    /// Whether an emit may send inline ([`Emitted`]): the receiver is a CPU kernel's (a
    /// device's output is noticed by a watcher that polls only while a receive waits).
    inline: bool,
    /// The waker registered on the receiver when the link thread parks (inline links).
    waker: Option<Waker>,
    key: String,
    id: u64,
    ty: WireType,
    session: zenoh::Session,
    data: zenoh::pubsub::Publisher<'static>,
    options: LinkOptions,
    shared: Arc<Shared>,
    receiver: Option<gyre::Receiver<Out>>,
    epoch: Option<u64>,
    unacked: VecDeque<Entry<Out>>,
    base: u64,
    cursor: u64,
    credit: u64,
    delivered: u64,
    heard: Instant,
    last_hello: Option<Instant>,
    stalled: bool,
    drained_input: bool,
    fin_sent: bool,
    fin_at: Option<Instant>,
    finished: bool,
    batch: Vec<(Out, u64)>,
    /// When the last frame of new messages went out.
    last_sent: Instant,
    metrics: LinkMetrics,
}

impl<Out: gyre::Message> Outbound<Out> {
    fn next(&self) -> u64 {
        self.base + self.unacked.len() as u64
    }

    /// Says hello once: `Ok(true)` registered, `Ok(false)` no answer by `deadline` (or
    /// half a second).
    fn hello(&mut self, deadline: Instant) -> Result<bool, BridgeError> {
        self.last_hello = Some(Instant::now());
        let hello = Hello {
            link: self.id,
            first_unacked: self.base,
            ty: self.ty.clone(),
        };
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(10), Duration::from_millis(500));
        let replies = self
            .session
            .get(format!("{}/hello", self.key))
            .payload(hello.encode())
            .timeout(wait)
            .wait()
            .map_err(|e| BridgeError::zenoh("send the link's hello", &e))?;
        while let Ok(reply) = replies.recv() {
            let Ok(sample) = reply.result() else {
                continue;
            };
            let Some(w) = Welcome::decode(&sample.payload().to_bytes()) else {
                return Err(BridgeError::Protocol {
                    key: self.key.clone(),
                });
            };
            if w.status == wire::HELLO_MISMATCH {
                return Err(BridgeError::TypeMismatch {
                    key: self.key.clone(),
                    local: self.ty.clone(),
                    remote: w.ty,
                });
            }
            self.welcome(&w);
            return Ok(true);
        }
        Ok(false)
    }

    fn welcome(&mut self, w: &Welcome) {
        if self.epoch.is_some_and(|e| e != w.epoch) {
            tracing::info!(
                key = self.key,
                "gyre-zenoh: the export restarted; resending what it had not taken"
            );
        }
        self.epoch = Some(w.epoch);
        self.forget_up_to(w.consumed);
        self.delivered = w.delivered.max(self.base);
        // What the export already holds need not travel again; the rest does.
        self.cursor = self.delivered.clamp(self.base, self.next());
        self.credit = w.credit;
        self.heard = Instant::now();
        *self.shared.health.lock() = LinkHealth::Up;
    }

    fn forget_up_to(&mut self, consumed: u64) {
        if consumed <= self.base {
            return;
        }
        let n = (consumed - self.base).min(self.unacked.len() as u64);
        self.unacked.drain(..n as usize);
        self.base += n;
        self.metrics.acknowledged += n;
        self.cursor = self.cursor.max(self.base);
    }

    fn ack(&mut self, at: Instant, a: &Ack) {
        if a.kind == wire::RESET {
            if self.epoch.is_some() {
                self.degrade("the export does not know this link (it restarted)");
            }
            return;
        }
        if Some(a.epoch) != self.epoch {
            return; // from an incarnation this link no longer talks to
        }
        self.heard = Instant::now();
        if a.delivered > self.delivered {
            let last = a.delivered - 1;
            if last >= self.base {
                if let Some(e) = self.unacked.get((last - self.base) as usize) {
                    let rtt = at
                        .saturating_duration_since(e.sent_at)
                        .saturating_sub(Duration::from_micros(u64::from(a.delay_us)));
                    self.metrics.round_trip = Some(rtt);
                    self.metrics.round_trip_avg = Some(match self.metrics.round_trip_avg {
                        Some(avg) => (avg * 7 + rtt) / 8,
                        None => rtt,
                    });
                }
            }
            self.delivered = a.delivered;
        }
        self.forget_up_to(a.consumed);
        if a.gap {
            self.cursor = self.cursor.min(a.delivered).max(self.base);
        }
        self.credit = self.credit.max(a.credit);
        self.finished = a.finished && self.fin_sent && self.unacked.is_empty();
        if matches!(*self.shared.health.lock(), LinkHealth::Degraded { .. }) {
            *self.shared.health.lock() = LinkHealth::Up;
        }
    }

    fn degrade(&mut self, reason: &str) {
        self.epoch = None;
        self.metrics.reconnects += 1;
        *self.shared.health.lock() = LinkHealth::Degraded {
            reason: reason.to_owned(),
        };
        tracing::warn!(key = self.key, "gyre-zenoh: link degraded: {reason}");
    }

    /// Sends `unacked[from - base ..][..n]` as one frame.
    fn transmit(&mut self, from: u64, n: usize, kind: u8) {
        let epoch = self.epoch.unwrap_or(0);
        let size = std::mem::size_of::<Out>();
        let start = (from - self.base) as usize;
        // Zenoh takes the frame's bytes by value: build it in its own buffer, no copy.
        let mut frame = Vec::with_capacity(wire::DATA_HEADER + n * (8 + size));
        wire::start_frame(
            &mut frame,
            &FrameHeader {
                kind,
                link: self.id,
                epoch,
                seq: from,
                count: n as u32,
                size: size as u32,
            },
        );
        let now = Instant::now();
        for e in self.unacked.range_mut(start..start + n) {
            frame.extend_from_slice(&e.corr.to_le_bytes());
            e.sent_at = now;
        }
        for e in self.unacked.range(start..start + n) {
            frame.extend_from_slice(bytemuck::bytes_of(&e.message));
        }
        if let Err(e) = self.data.put(frame).wait() {
            tracing::warn!(key = self.key, "gyre-zenoh: a frame could not be put: {e}");
        }
    }

    /// One turn of the link thread's loop, under the link's lock: `Break` with why the
    /// link stopped early (if it did), or how long to park before the next turn.
    fn turn(&mut self) -> std::ops::ControlFlow<Option<String>, Option<Duration>> {
        use std::ops::ControlFlow::{Break, Continue};
        let command = *self.shared.command.lock();
        if command == Command::Terminate {
            return Break(None);
        }
        let draining = match command {
            Command::Drain(deadline) if Instant::now() >= deadline => {
                return Break(Some(
                    "the drain timed out before the export took everything".into(),
                ))
            }
            Command::Drain(_) => true,
            _ => false,
        };
        self.take_acks();
        if self.finished {
            *self.shared.health.lock() = LinkHealth::Finished;
            return Break(None);
        }
        let silent = self.heard.elapsed();
        if silent > self.options.link_timeout {
            let reason = format!(
                "no word from the export at `{}` for {} ms (link timeout {} ms)",
                self.key,
                silent.as_millis(),
                self.options.link_timeout.as_millis()
            );
            *self.shared.health.lock() = LinkHealth::Failed {
                reason: reason.clone(),
            };
            tracing::error!(key = self.key, "gyre-zenoh: link failed: {reason}");
            return Break(Some(reason));
        }
        if self.epoch.is_some() && silent > self.options.silence {
            self.degrade(&format!(
                "no word from the export for {} ms",
                silent.as_millis()
            ));
        }
        if self.epoch.is_none() {
            self.reconnect(command);
            return Continue(None);
        }
        self.resend();
        let park = if draining {
            self.drain_step();
            None
        } else {
            self.forward()
        };
        *self.shared.metrics.lock() = self.snapshot();
        Continue(park)
    }

    fn take_acks(&mut self) {
        while let Some((at, a)) = self.acks.try_recv() {
            self.ack(at, &a);
        }
    }

    fn reconnect(&mut self, command: Command) {
        let recent = self
            .last_hello
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100));
        if recent {
            std::thread::sleep(Duration::from_millis(5));
            return;
        }
        let deadline = match command {
            Command::Drain(d) => d,
            _ => Instant::now() + Duration::from_millis(500),
        };
        match self.hello(deadline) {
            Ok(_) => {}
            Err(e) => {
                // A type change behind the same key, or an unreadable reply: keep trying
                // until the link timeout, saying why.
                *self.shared.health.lock() = LinkHealth::Degraded {
                    reason: e.to_string(),
                };
            }
        }
    }

    /// Sends what must travel again, within credit.
    fn resend(&mut self) {
        while self.cursor < self.next() && self.cursor < self.credit {
            let n = (self.next().min(self.credit) - self.cursor).min(self.options.max_batch as u64);
            self.transmit(self.cursor, n as usize, wire::DATA);
            self.metrics.retransmitted += n;
            self.cursor += n;
        }
    }

    /// How many new messages credit allows now.
    fn room(&mut self) -> usize {
        if self.cursor < self.next() {
            return 0; // resend first
        }
        let room = self.credit.saturating_sub(self.next()) as usize;
        if room == 0 {
            if !self.stalled {
                self.stalled = true;
                self.metrics.credit_stalls += 1;
            }
        } else {
            self.stalled = false;
        }
        room.min(self.options.max_batch)
    }

    /// Reads what the receiver has (looking a few times for the first) within credit
    /// and sends it as one frame. `Some(timeout)`: the thread should park that long (an
    /// inline link registered its waker, so the kernel's next emit sends by itself).
    fn forward(&mut self) -> Option<Duration> {
        let room = self.room();
        if room == 0 {
            if let Some((at, a)) = self.acks.recv_timeout(Duration::from_millis(1)) {
                self.ack(at, &a);
            }
            return None;
        }
        // An inline send may have taken a message it had no credit left to send.
        if self.batch.is_empty() {
            let rx = self.receiver.as_mut().expect("held until the report");
            let first = if self.inline {
                look_for_output(rx)
            } else {
                park_for_output(rx, PARK)
            };
            let first = match first {
                Some(first) => first,
                None if self.inline => match self.poll_output() {
                    Poll::Pending => return Some(PARK),
                    Poll::Ready(first) => first,
                },
                None => return None,
            };
            let Ok(first) = first else {
                // The upstream kernel stopped and everything it emitted was read.
                self.drained_input = true;
                std::thread::sleep(Duration::from_millis(1));
                return None;
            };
            self.batch.push(first);
        }
        self.fill_and_send(room);
        None
    }

    /// Tops the batch up from the receiver to `room` messages, without waiting, and
    /// sends it (when it holds any).
    fn fill_and_send(&mut self, room: usize) {
        let rx = self.receiver.as_mut().expect("held until the report");
        while self.batch.len() < room {
            match rx.try_recv_with_corr() {
                Ok(Some(m)) => self.batch.push(m),
                _ => break,
            }
        }
        if !self.batch.is_empty() {
            self.send_batch();
        }
    }

    /// Takes the receiver's next message, or registers the link's waker on it for the
    /// kernel's next emit (inline links).
    fn poll_output(&mut self) -> Poll<Result<(Out, u64), gyre::Error>> {
        let waker = self.waker.as_ref().expect("inline links have a waker");
        let mut cx = Context::from_waker(waker);
        let rx = self.receiver.as_mut().expect("held until the report");
        // Dropped after one poll: on the CPU the registration outlives the future.
        std::pin::pin!(rx.recv_with_corr_async()).poll(&mut cx)
    }

    /// On the thread whose emit woke the link's waker: sends what the kernel emitted,
    /// when the link is idle (running, connected, nothing to resend, nothing sent for
    /// [`INLINE_AFTER`], fewer than [`INLINE_IN_FLIGHT`] messages in flight, credit
    /// left), and registers the waker again. `false`: the link thread must take over
    /// (wake it).
    fn send_inline(&mut self) -> bool {
        if !self.inline
            || self.receiver.is_none()
            || self.drained_input
            || self.epoch.is_none()
            || self.last_sent.elapsed() < INLINE_AFTER
            || *self.shared.command.lock() != Command::Run
        {
            return false;
        }
        self.take_acks();
        for _ in 0..INLINE_ROUNDS {
            if self.cursor < self.next() || self.unacked.len() >= INLINE_IN_FLIGHT {
                return false;
            }
            let room = self.room();
            if room == 0 {
                return false;
            }
            let sent = self.metrics.sent;
            self.fill_and_send(room);
            if self.metrics.sent > sent {
                self.metrics.inline_frames += 1;
            }
            match self.poll_output() {
                Poll::Pending => {
                    *self.shared.metrics.lock() = self.snapshot();
                    return true;
                }
                Poll::Ready(Ok(m)) => self.batch.push(m),
                Poll::Ready(Err(_)) => {
                    self.drained_input = true;
                    return false;
                }
            }
        }
        false
    }

    fn send_batch(&mut self) {
        let from = self.next();
        let n = self.batch.len();
        let now = Instant::now();
        self.last_sent = now;
        for (message, corr) in self.batch.drain(..) {
            self.unacked.push_back(Entry {
                message,
                corr,
                sent_at: now,
            });
        }
        self.transmit(from, n, wire::DATA);
        self.cursor = self.next();
        self.metrics.sent += n as u64;
    }

    /// One step of a drain: forward what the receiver still holds, then, once all of it
    /// was taken, say FIN until the export confirms.
    fn drain_step(&mut self) {
        // (A message an inline send took and had no credit for waits in `batch`.)
        if !(self.drained_input && self.batch.is_empty()) {
            let room = self.room();
            let rx = self.receiver.as_mut().expect("held until the report");
            while !self.drained_input && self.batch.len() < room {
                if let Ok(Some(m)) = rx.try_recv_with_corr() {
                    self.batch.push(m);
                } else {
                    self.drained_input = true;
                }
            }
            if room > 0 && !self.batch.is_empty() {
                self.send_batch();
            }
        }
        if self.drained_input
            && self.batch.is_empty()
            && self.unacked.is_empty()
            && self.cursor == self.next()
        {
            let resend_fin = self
                .fin_at
                .is_none_or(|t| t.elapsed() > Duration::from_millis(50));
            if resend_fin {
                self.fin_sent = true;
                self.fin_at = Some(Instant::now());
                self.transmit(self.next(), 0, wire::FIN);
            }
        }
        if let Some((at, a)) = self.acks.recv_timeout(Duration::from_millis(1)) {
            self.ack(at, &a);
        }
    }

    fn snapshot(&self) -> LinkMetrics {
        LinkMetrics {
            in_flight: self.unacked.len() as u64,
            delivered: self.delivered,
            ..self.metrics.clone()
        }
    }

    fn finish(&mut self, failure: Option<String>) -> LinkReport<Out> {
        self.waker = None;
        let metrics = self.snapshot();
        *self.shared.metrics.lock() = metrics.clone();
        if failure.is_some() && !matches!(*self.shared.health.lock(), LinkHealth::Failed { .. }) {
            *self.shared.health.lock() = LinkHealth::Failed {
                reason: failure.clone().unwrap_or_default(),
            };
        }
        LinkReport {
            key: self.key.clone(),
            // Then what an inline send took and had no credit for, in order.
            undelivered: self
                .unacked
                .drain(..)
                .map(|e| (e.message, e.corr))
                .chain(self.batch.drain(..))
                .collect(),
            receiver: self.receiver.take().expect("held until the report"),
            metrics,
            failure,
            finished: self.finished,
        }
    }
}
