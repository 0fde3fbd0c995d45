//! The receiving half: an inbox exported under a key expression.
//!
//! Data frames are taken on Zenoh's receiving thread (a subscriber callback), which
//! writes each message into the kernel's inbox exactly once per link and sequence number,
//! as far as the inbox has room. One thread per export does the rest: it answers hellos
//! (type check, where a link stands), retries what waited for room, and acknowledges
//! what was written (*delivered*) and what the kernel took from its inbox (*consumed*),
//! with the credit that goes with it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use zenoh::Wait;

use crate::wire::{self, Ack, Hello, Welcome};
use crate::{random_id, BridgeError, WireType};

/// How long the export thread sleeps when it has nothing else to do (a frame wakes it).
const IDLE_WAIT: Duration = Duration::from_millis(5);
/// How long it waits when messages wait for ring room or for the kernel to take them.
const BUSY_WAIT: Duration = Duration::from_micros(200);
/// How long another export's token must stay visible before a new export of the same
/// key is refused.
const KEY_TAKEN_FOR: Duration = Duration::from_secs(1);
/// An acknowledgement goes out at least this often per link (the link's liveness).
const KEEPALIVE: Duration = Duration::from_millis(50);

/// How an export behaves.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Messages a link may have sent and the kernel not yet taken (its credit window).
    /// `None` (the default): the inbox ring's capacity, shared among the live links, so
    /// that everything in flight fits in the ring. Capped at the ring's capacity.
    pub window: Option<u32>,
    /// The name the type goes by on the wire (default: its Rust type name).
    pub wire_name: Option<String>,
    /// A link not heard from for this long, with nothing of it left in the ring, is
    /// forgotten (its sender is gone). Default 60 s.
    pub forget_after: Duration,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            window: None,
            wire_name: None,
            forget_after: Duration::from_secs(60),
        }
    }
}

/// Counters of an export, since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportMetrics {
    /// Messages received in data frames (first copies).
    pub received: u64,
    /// Messages written into the kernel's inbox.
    pub delivered: u64,
    /// Of those, messages the kernel took from its inbox.
    pub consumed: u64,
    /// Copies dropped because their sequence number was already taken.
    pub duplicates: u64,
    /// Frames refused because they started past the next expected number (re-sent by
    /// the link).
    pub gaps: u64,
    /// Frames that could not be read, or came from a link this export does not know.
    pub unknown_frames: u64,
    /// Hellos refused because the message types differ.
    pub refused_links: u64,
    /// The last refusal, in words (both types).
    pub last_refusal: Option<String>,
    /// Messages received and not yet written into the inbox (waiting for room): never
    /// more than the credit windows.
    pub pending: u64,
    /// The most that were ever pending at once.
    pub pending_high_water: u64,
    /// Why the kernel last refused a message (draining, terminated, faulted), if it did.
    pub kernel_refusal: Option<String>,
}

/// Where one inbound link stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundLink {
    /// The link's id.
    pub id: u64,
    /// Sequence numbers below this were written into the inbox.
    pub delivered: u64,
    /// Sequence numbers below this were taken by the kernel.
    pub consumed: u64,
    /// The link said it is done and everything it sent was taken.
    pub finished: bool,
}

struct Shared {
    stop: AtomicBool,
    metrics: Mutex<ExportMetrics>,
    links: Mutex<Vec<InboundLink>>,
}

/// An exported inbox (see [`crate::Bridge::export`]). Dropping it stops the export:
/// links to it stop being acknowledged, and keep what they sent until it (or its next
/// incarnation) is back.
pub struct Export<In> {
    key: String,
    ty: WireType,
    epoch: u64,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    _types: std::marker::PhantomData<fn(In)>,
}

impl<In> std::fmt::Debug for Export<In> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("key", &self.key)
            .field("type", &self.ty.name)
            .finish_non_exhaustive()
    }
}

impl<In> Export<In> {
    /// The key expression it is exported under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// This incarnation's epoch (random; a restarted process gets another, which tells
    /// links to resend what the previous one had not taken).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Its counters now.
    pub fn metrics(&self) -> ExportMetrics {
        self.shared.metrics.lock().clone()
    }

    /// The links it knows, and where each stands.
    pub fn links(&self) -> Vec<InboundLink> {
        self.shared.links.lock().clone()
    }

    /// Waits until `links` links have finished (each drained: everything it sent was
    /// taken by the kernel); `false` if `timeout` passed first.
    pub fn wait_finished(&self, links: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.links().iter().filter(|l| l.finished).count() >= links {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the export and returns its final counters.
    pub fn close(mut self) -> ExportMetrics {
        self.stop();
        self.metrics()
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<In> Drop for Export<In> {
    fn drop(&mut self) {
        self.stop();
    }
}

#[allow(clippy::needless_pass_by_value)] // options are given by value, like a builder's
pub(crate) fn start<In: gyre::Message>(
    session: &zenoh::Session,
    key: &str,
    sender: gyre::Sender<In>,
    options: ExportOptions,
) -> Result<Export<In>, BridgeError> {
    check_key(key)?;
    let ty = match &options.wire_name {
        Some(name) => WireType::named::<In>(name),
        None => WireType::of::<In>(),
    };
    // One export per key: a second would answer hellos and see the same frames. An
    // export closed a moment ago may still be seen for a few milliseconds (its token's
    // removal travels like any message): the key counts as taken only if it stays so
    // for a while.
    let taken_since = Instant::now();
    loop {
        let replies = session
            .liveliness()
            .get(format!("{key}/export"))
            .timeout(Duration::from_millis(500))
            .wait()
            .map_err(|e| BridgeError::zenoh("look for another export of the key", &e))?;
        if !replies.recv().is_ok_and(|reply| reply.result().is_ok()) {
            break;
        }
        if taken_since.elapsed() > KEY_TAKEN_FOR {
            return Err(BridgeError::KeyTaken {
                key: key.to_owned(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = session
        .liveliness()
        .declare_token(format!("{key}/export"))
        .wait()
        .map_err(|e| BridgeError::zenoh("declare the export's liveliness token", &e))?;
    let hello = session
        .declare_queryable(format!("{key}/hello"))
        .wait()
        .map_err(|e| BridgeError::zenoh("declare the export's hello queryable", &e))?;
    let epoch = random_id();
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        metrics: Mutex::new(ExportMetrics::default()),
        links: Mutex::new(Vec::new()),
    });
    let capacity = sender.inbox_capacity().max(1);
    let inbox = Inbox {
        key: key.to_owned(),
        ty: ty.clone(),
        epoch,
        session: session.clone(),
        sender: sender.backpressure(gyre::Backpressure::Fail),
        window: options.window.unwrap_or(capacity).clamp(1, capacity),
        forget_after: options.forget_after,
        shared: Arc::clone(&shared),
        links: HashMap::new(),
        pending: VecDeque::new(),
        runs: VecDeque::new(),
        resets: Vec::new(),
        written: 0,
        consumed: 0,
        wake: false,
        metrics: ExportMetrics::default(),
    };
    let cell = Arc::new(Cell {
        inbox: Mutex::new(inbox),
        thread: std::sync::OnceLock::new(),
    });
    // Frames are taken on Zenoh's receiving thread, straight into the inbox: no thread
    // hand-off on a message's way. Everything that talks back (acknowledgements, resets,
    // hellos) is the export thread's, which the callback wakes.
    let data = {
        let cell = Arc::clone(&cell);
        session
            .declare_subscriber(format!("{key}/data"))
            .callback(move |sample| cell.take(&sample.payload().to_bytes()))
            .wait()
            .map_err(|e| BridgeError::zenoh("declare the export's data subscriber", &e))?
    };
    let thread = {
        let cell = Arc::clone(&cell);
        std::thread::Builder::new()
            .name(format!("gyre-export-{key}"))
            .spawn(move || {
                let _ = cell.thread.set(std::thread::current());
                cell.run(&hello);
                drop(data);
                drop(token);
            })
            .map_err(|e| BridgeError::zenoh("start the export's thread", &e))?
    };
    tracing::info!(key, epoch, "gyre-zenoh: export started");
    Ok(Export {
        key: key.to_owned(),
        ty,
        epoch,
        shared,
        thread: Some(thread),
        _types: std::marker::PhantomData,
    })
}

/// Refuses keys a bridge cannot build its sub-keys under.
pub(crate) fn check_key(key: &str) -> Result<(), BridgeError> {
    let bad = |reason: &str| {
        Err(BridgeError::InvalidKey {
            key: key.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if key.contains('*') || key.contains('$') {
        return bad("wildcards are not allowed");
    }
    if let Err(e) = zenoh::key_expr::KeyExpr::try_from(format!("{key}/data")) {
        return bad(&e.to_string());
    }
    Ok(())
}

/// One inbound link's state.
struct LinkIn {
    /// The next sequence number to accept (everything below was accepted).
    accepted: u64,
    delivered: u64,
    consumed: u64,
    fin: bool,
    gap: bool,
    dirty: bool,
    heard: Instant,
    acked: Instant,
    /// The credit the link was last told.
    credit_acked: u64,
    /// When `delivered` last moved.
    delivered_at: Instant,
    publisher: Option<zenoh::pubsub::Publisher<'static>>,
}

/// The export thread's state.
struct Inbox<In> {
    key: String,
    ty: WireType,
    epoch: u64,
    session: zenoh::Session,
    sender: gyre::Sender<In>,
    window: u32,
    forget_after: Duration,
    shared: Arc<Shared>,
    links: HashMap<u64, LinkIn>,
    /// Accepted messages waiting for ring room, in order: (link, corr, message).
    pending: VecDeque<(u64, u64, In)>,
    /// Runs written into the ring and not yet known taken: (link, count), in ring order.
    runs: VecDeque<(u64, u64)>,
    /// Links whose frames this export does not know (owed a reset).
    resets: Vec<u64>,
    written: u64,
    consumed: u64,
    /// A frame needs the export thread soon (see [`Cell::take`]).
    wake: bool,
    metrics: ExportMetrics,
}

type HelloQ = zenoh::query::Queryable<zenoh::handlers::FifoChannelHandler<zenoh::query::Query>>;

/// The export's state, shared by Zenoh's receiving thread (frames) and the export thread
/// (everything else).
struct Cell<In> {
    inbox: Mutex<Inbox<In>>,
    thread: std::sync::OnceLock<std::thread::Thread>,
}

impl<In: gyre::Message> Cell<In> {
    /// A data or FIN frame, on Zenoh's receiving thread: into the inbox as far as it has
    /// room. The export thread is woken when the acknowledgement needs haste (messages
    /// wait for room, the link used half its credit, a FIN, a gap, a duplicate, an
    /// unknown link); otherwise it acknowledges at its next round (within
    /// [`IDLE_WAIT`]), so that its wake-up and its acknowledgement do not take a core
    /// from the kernel the frame just fed. The acknowledgement says how long it waited
    /// ([`wire::Ack::delay_us`]), which the link takes off its round trip.
    fn take(&self, bytes: &[u8]) {
        let wake = {
            let mut inbox = self.inbox.lock();
            inbox.frame(bytes);
            std::mem::take(&mut inbox.wake)
        };
        if wake {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }

    fn run(&self, hello: &HelloQ) {
        let stop = Arc::clone(&self.inbox.lock().shared);
        while !stop.stop.load(Ordering::Acquire) {
            let busy = {
                let mut inbox = self.inbox.lock();
                while let Ok(Some(q)) = hello.try_recv() {
                    inbox.hello(&q);
                }
                inbox.deliver();
                inbox.observe_consumption();
                inbox.send_resets();
                inbox.acknowledge();
                inbox.publish();
                !(inbox.pending.is_empty() && inbox.runs.is_empty())
            };
            std::thread::park_timeout(if busy { BUSY_WAIT } else { IDLE_WAIT });
        }
        let mut inbox = self.inbox.lock();
        inbox.acknowledge();
        inbox.publish();
    }
}

impl<In: gyre::Message> Inbox<In> {
    fn hello(&mut self, query: &zenoh::query::Query) {
        let Some(hello) = query.payload().and_then(|p| Hello::decode(&p.to_bytes())) else {
            self.metrics.unknown_frames += 1;
            return;
        };
        let welcome =
            if hello.ty.fingerprint != self.ty.fingerprint || hello.ty.size != self.ty.size {
                let why = format!(
                    "link {:016x} sends {}, this export takes {}",
                    hello.link, hello.ty, self.ty
                );
                tracing::warn!(key = self.key, "gyre-zenoh: refused a link: {why}");
                self.metrics.refused_links += 1;
                self.metrics.last_refusal = Some(why);
                Welcome {
                    status: wire::HELLO_MISMATCH,
                    epoch: self.epoch,
                    delivered: 0,
                    consumed: 0,
                    credit: 0,
                    ty: self.ty.clone(),
                }
            } else {
                let now = Instant::now();
                let key = &self.key;
                let session = &self.session;
                let link = self.links.entry(hello.link).or_insert_with(|| {
                    tracing::info!(key, link = hello.link, "gyre-zenoh: link connected");
                    let publisher = session
                        .declare_publisher(format!("{key}/ack/{:016x}", hello.link))
                        .congestion_control(zenoh::qos::CongestionControl::Block)
                        .express(true)
                        .wait()
                        .ok();
                    LinkIn {
                        accepted: hello.first_unacked,
                        delivered: hello.first_unacked,
                        consumed: hello.first_unacked,
                        fin: false,
                        gap: false,
                        dirty: true,
                        heard: now,
                        acked: now,
                        credit_acked: hello.first_unacked,
                        delivered_at: now,
                        publisher,
                    }
                });
                link.heard = now;
                let window = self.window;
                let live = self.links.len() as u32;
                let link = self.links.get_mut(&hello.link).expect("inserted above");
                link.credit_acked = link.consumed + u64::from((window / live).max(1));
                Welcome {
                    status: wire::HELLO_OK,
                    epoch: self.epoch,
                    delivered: link.delivered,
                    consumed: link.consumed,
                    credit: link.credit_acked,
                    ty: self.ty.clone(),
                }
            };
        self.publish();
        if let Err(e) = query
            .reply(query.key_expr().clone(), welcome.encode())
            .wait()
        {
            tracing::warn!(key = self.key, "gyre-zenoh: could not answer a hello: {e}");
        }
    }

    fn frame(&mut self, bytes: &[u8]) {
        let Some((h, corrs, payloads)) = wire::parse_frame(bytes) else {
            self.metrics.unknown_frames += 1;
            return;
        };
        let known = h.epoch == self.epoch && self.links.contains_key(&h.link);
        if !known || h.size != self.ty.size {
            self.metrics.unknown_frames += 1;
            if !self.resets.contains(&h.link) {
                self.resets.push(h.link);
            }
            self.wake = true;
            return;
        }
        let link = self.links.get_mut(&h.link).expect("checked above");
        link.heard = Instant::now();
        link.dirty = true;
        match h.kind {
            wire::DATA => {
                let count = u64::from(h.count);
                let end = h.seq + count;
                if end <= link.accepted {
                    self.metrics.duplicates += count;
                    self.wake = true;
                    return;
                }
                if h.seq > link.accepted {
                    self.metrics.gaps += 1;
                    link.gap = true;
                    self.wake = true;
                    return;
                }
                let skip = link.accepted - h.seq;
                self.metrics.duplicates += skip;
                let size = h.size as usize;
                for i in skip as usize..h.count as usize {
                    let corr = u64::from_le_bytes(corrs[i * 8..i * 8 + 8].try_into().unwrap());
                    let message: In =
                        bytemuck::pod_read_unaligned(&payloads[i * size..(i + 1) * size]);
                    self.pending.push_back((h.link, corr, message));
                }
                self.metrics.received += count - skip;
                link.accepted = end;
                link.gap = false;
                let pending = self.pending.len() as u64;
                self.metrics.pending_high_water = self.metrics.pending_high_water.max(pending);
                self.deliver();
                // The acknowledgement needs haste when messages wait for room, or when
                // the link has used half the credit it was last told.
                let half = u64::from((self.window / self.links.len().max(1) as u32).max(1)) / 2;
                let l = &self.links[&h.link];
                if !self.pending.is_empty() || l.accepted + half >= l.credit_acked {
                    self.wake = true;
                }
            }
            wire::FIN if h.seq == link.accepted => {
                link.fin = true;
                self.wake = true;
            }
            _ => self.wake = true,
        }
    }

    /// Tells the senders of frames this export does not know their link (a new
    /// incarnation, or a link it forgot): they say hello again.
    fn send_resets(&mut self) {
        for link in std::mem::take(&mut self.resets) {
            self.reset(link);
        }
    }

    fn reset(&self, link: u64) {
        let ack = Ack {
            kind: wire::RESET,
            epoch: self.epoch,
            delivered: 0,
            consumed: 0,
            credit: 0,
            gap: false,
            finished: false,
            delay_us: 0,
        };
        let _ = self
            .session
            .put(format!("{}/ack/{:016x}", self.key, link), ack.encode())
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .wait();
    }

    /// Writes pending messages into the inbox while it has room.
    fn deliver(&mut self) {
        let now = Instant::now();
        while let Some(&(link, corr, message)) = self.pending.front() {
            match self.sender.send_with_corr(message, corr) {
                Ok(()) => {
                    self.pending.pop_front();
                    self.written += 1;
                    match self.runs.back_mut() {
                        Some((l, n)) if *l == link => *n += 1,
                        _ => self.runs.push_back((link, 1)),
                    }
                    if let Some(l) = self.links.get_mut(&link) {
                        l.delivered += 1;
                        l.delivered_at = now;
                        l.dirty = true;
                    }
                    self.metrics.delivered += 1;
                }
                Err(e) => {
                    if !matches!(e.error, gyre::Error::Full { .. }) {
                        let why = e.error.to_string();
                        if self.metrics.kernel_refusal.as_deref() != Some(why.as_str()) {
                            tracing::warn!(
                                key = self.key,
                                "gyre-zenoh: the exported kernel refuses messages: {why}"
                            );
                        }
                        self.metrics.kernel_refusal = Some(why);
                    }
                    break;
                }
            }
        }
        self.metrics.pending = self.pending.len() as u64;
    }

    /// Counts what the kernel took from its inbox since last time: written minus what
    /// the inbox holds (an underestimate when others also feed the inbox, never an
    /// overestimate), attributed to links in ring order.
    fn observe_consumption(&mut self) {
        if self.runs.is_empty() {
            return;
        }
        let held = u64::from(self.sender.inbox_len());
        let taken = self.written.saturating_sub(held);
        let mut fresh = taken.saturating_sub(self.consumed);
        self.consumed += fresh;
        self.metrics.consumed += fresh;
        while fresh > 0 {
            let Some((link, n)) = self.runs.front_mut() else {
                break;
            };
            let k = fresh.min(*n);
            *n -= k;
            fresh -= k;
            if let Some(l) = self.links.get_mut(link) {
                l.consumed += k;
                l.dirty = true;
            }
            if *n == 0 {
                self.runs.pop_front();
            }
        }
    }

    fn acknowledge(&mut self) {
        let now = Instant::now();
        let live = self.links.len().max(1) as u32;
        let window = u64::from((self.window / live).max(1));
        let forget = self.forget_after;
        self.links.retain(|id, l| {
            let idle = now.duration_since(l.heard) > forget && l.consumed == l.accepted;
            if idle {
                tracing::info!(link = id, "gyre-zenoh: forgot an idle link");
            }
            !idle
        });
        for l in self.links.values_mut() {
            if !l.dirty && now.duration_since(l.acked) < KEEPALIVE {
                continue;
            }
            let ack = Ack {
                kind: wire::ACK,
                epoch: self.epoch,
                delivered: l.delivered,
                consumed: l.consumed,
                credit: l.consumed + window,
                gap: l.gap,
                finished: l.fin && l.consumed == l.accepted,
                delay_us: u32::try_from(now.duration_since(l.delivered_at).as_micros())
                    .unwrap_or(u32::MAX),
            };
            l.credit_acked = ack.credit;
            if let Some(p) = &l.publisher {
                let _ = p.put(ack.encode()).wait();
            }
            l.dirty = false;
            l.acked = now;
        }
    }

    fn publish(&self) {
        *self.shared.metrics.lock() = self.metrics.clone();
        let mut links: Vec<InboundLink> = self
            .links
            .iter()
            .map(|(id, l)| InboundLink {
                id: *id,
                delivered: l.delivered,
                consumed: l.consumed,
                finished: l.fin && l.consumed == l.accepted,
            })
            .collect();
        links.sort_by_key(|l| l.id);
        *self.shared.links.lock() = links;
    }
}
