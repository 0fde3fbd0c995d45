//! Where the batch line's gap is: its workload (host → echo → host, batches of 64, 512
//! in flight, `gyre-bench`'s `batch_throughput` loop) through six servers, interleaved
//! in one process so that every round sees the same placement of the two vCPUs:
//!
//! - `gyre-batch`: the runtime, as `gyre-bench` runs it (a dedicated kernel with a
//!   `cpu_batch` echo handler, `ExclusiveSender::send_batch`, `Receiver::recv_batch`);
//! - `run-128`: two bare gyre rings and an echo thread, no runtime, batches written with
//!   `Claim::write_run` and read with `Consumer::read_run`: 64-byte messages in 128-byte
//!   slots (16 header bytes + 64, rounded up to a power of two: what a 64-byte message
//!   type gets), two cache lines per message;
//! - `run-64`: the same with 64-byte slots carrying the first 48 bytes of each message:
//!   one cache line per message, what a layout with the headers apart would give;
//! - `raw-64`: `run-64`'s protocol (claim, slot writes, stamps with Release, stamp
//!   checks with Acquire, one `head` store per batch) written with raw pointers, no
//!   `Claim`/`Consumer` layers around it;
//! - `split-64`: the same protocol over the layout `runtime/docs/ABI.md` proposes (§ "A
//!   layout with the headers apart"): each position's 16-byte header (stamp, tag,
//!   correlation id) in one array, four to a cache line, and its payload in another, so
//!   a whole 64-byte message takes one payload line and a quarter of a header line;
//! - `rtrb-chunk`: the baseline, two rtrb rings and their chunk API.
//!
//! ```text
//! cargo run --release -p gyre-bench --example ring_echo [ROUNDS]
//! ```
//!
//! See the README's "Batches, not met" for what it showed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use gyre_bench::{batch_throughput, median, ping_pong, rate, BatchEcho, BatchSubject, Msg, BATCH};
use gyre_runtime::ring::{Claim, Consumer, HostRing, Producer, RingLayout};

/// Messages per measurement.
const MESSAGES: u64 = 1_000_000;
/// Slots per ring.
const CAPACITY: u32 = 1024;
/// Messages in flight at most (as `gyre-bench`'s batch workload).
const WINDOW: u64 = 512;

type Ring = Arc<HostRing>;

/// One ring of [`CAPACITY`] slots of `slot_bytes`, split into its halves.
fn ring(slot_bytes: u32) -> (Producer<Ring>, Consumer<Ring>) {
    let ring = Arc::new(HostRing::new(
        RingLayout::new(CAPACITY, slot_bytes).expect("a valid layout"),
    ));
    (
        Producer::new(ring.clone()).expect("a fresh ring has no producer"),
        Consumer::new(ring).expect("a fresh ring has no consumer"),
    )
}

/// Claims `n` positions of a ring this thread alone produces into, spinning while full.
fn claim(producer: &Producer<Ring>, n: u32) -> Claim<'_, Ring> {
    loop {
        // SAFETY: every caller is the only thread producing into its ring.
        match unsafe { producer.try_claim_exclusive(n) } {
            Ok(claim) => return claim,
            Err(_) => std::hint::spin_loop(),
        }
    }
}

/// Two bare gyre rings and an echo thread that moves each run it finds (up to
/// [`BATCH`]) from one to the other with one claim and one publish, through the run API.
/// Each slot carries the first `BYTES` bytes of a message.
struct RunEcho<const BYTES: usize> {
    tx: Producer<Ring>,
    rx: Consumer<Ring>,
    thread: JoinHandle<()>,
}

/// Writes `messages` (their first `BYTES` bytes each) into `out` with one `write_run`.
fn put<const BYTES: usize>(out: &Claim<'_, Ring>, messages: &[Msg]) {
    let written = out.write_run(0, |i, payload| {
        payload[..BYTES].copy_from_slice(&bytemuck::bytes_of(&messages[i as usize])[..BYTES]);
        Some((0, [0, 0]))
    });
    assert_eq!(
        written as usize,
        messages.len(),
        "the claim is as long as the batch"
    );
}

/// Copies the run `rx.ready_run` found (its first `n` messages) to `f`, with one
/// `read_run`.
fn take<const BYTES: usize>(rx: &Consumer<Ring>, n: u32, mut f: impl FnMut(Msg)) {
    rx.read_run(0, n, |_, slot| {
        let mut msg = Msg::default();
        bytemuck::bytes_of_mut(&mut msg)[..BYTES].copy_from_slice(&slot.payload[..BYTES]);
        f(msg);
    });
}

impl<const BYTES: usize> RunEcho<BYTES> {
    /// Rings of `slot_bytes` slots.
    fn start(slot_bytes: u32) -> Self {
        let (tx, mut echo_rx) = ring(slot_bytes);
        let (echo_tx, rx) = ring(slot_bytes);
        let thread = std::thread::spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let n = echo_rx.ready_run(BATCH as u32);
                if n == 0 {
                    // The host dropped its producer half: everything was sent.
                    if Arc::strong_count(echo_rx.memory()) == 1 {
                        return;
                    }
                    std::hint::spin_loop();
                    continue;
                }
                batch.clear();
                take::<BYTES>(&echo_rx, n, |msg| batch.push(msg));
                let out = claim(&echo_tx, n);
                put::<BYTES>(&out, &batch);
                out.publish();
                echo_rx.release_run(n);
            }
        });
        Self { tx, rx, thread }
    }
}

impl<const BYTES: usize> BatchEcho for RunEcho<BYTES> {
    fn send_batch(&mut self, messages: &[Msg]) {
        let out = claim(&self.tx, messages.len() as u32);
        put::<BYTES>(&out, messages);
        out.publish();
    }

    fn recv_batch(&mut self, buf: &mut Vec<Msg>, max: usize) -> usize {
        let n = loop {
            let n = self.rx.ready_run(max as u32);
            if n > 0 {
                break n;
            }
            std::hint::spin_loop();
        };
        take::<BYTES>(&self.rx, n, |msg| buf.push(msg));
        self.rx.release_run(n);
        n as usize
    }

    fn shutdown(self) {
        let Self { tx, rx, thread } = self;
        drop(tx);
        thread.join().expect("the echo thread exits cleanly");
        assert!(rx.is_empty(), "everything sent was received");
    }
}

/// `run-64`'s protocol through raw pointers: what the ring costs with nothing around it.
// Slots start 16-aligned (a 128-aligned region, a 384-byte header, 64-byte slots): the
// casts below to 4-byte words are aligned.
#[allow(clippy::cast_ptr_alignment)]
mod raw {
    use super::{claim, ring, Arc, JoinHandle, Msg, Ordering, Ring, BATCH, CAPACITY};
    use gyre_runtime::ring::{Consumer, Producer, RingMemory};
    use std::sync::atomic::AtomicU32;

    /// Slot bytes, and message bytes per slot.
    const SLOT: usize = 64;
    const BYTES: usize = 48;

    /// Slot `index`'s stamp word, of the ring whose slot 0 is at `first`.
    ///
    /// # Safety
    /// `first` is slot 0 of a live ring of [`CAPACITY`] slots of [`SLOT`] bytes.
    unsafe fn stamp<'a>(first: *mut u8, position: u32) -> &'a AtomicU32 {
        let index = (position & (CAPACITY - 1)) as usize;
        // SAFETY: inside the region, 4-aligned, only accessed atomically.
        unsafe { AtomicU32::from_ptr(first.add(index * SLOT).cast::<u32>()) }
    }

    /// The first payload byte of slot `position`.
    ///
    /// # Safety
    /// As [`stamp`].
    unsafe fn payload(first: *mut u8, position: u32) -> *mut u8 {
        let index = (position & (CAPACITY - 1)) as usize;
        // SAFETY: inside the region.
        unsafe { first.add(index * SLOT + 16) }
    }

    /// Slot 0 of `mem`'s ring (a `HostRing`: slots at `SLOT`-byte strides, each body 4
    /// bytes after its stamp).
    fn first(mem: &Ring) -> *mut u8 {
        // SAFETY: called before the ring is shared; the body is not touched, only its
        // address taken.
        let body = unsafe { mem.with_body_mut(0, <[u8]>::as_mut_ptr) };
        // SAFETY: the stamp sits 4 bytes before the body, inside the region.
        unsafe { body.sub(4) }
    }

    /// The producing half: claims through the ring (its `tail` and close protocol),
    /// writes tag, correlation id and payload, then the stamps.
    struct Tx {
        producer: Producer<Ring>,
        first: *mut u8,
    }

    // SAFETY: the pointer is into the ring `producer` keeps alive.
    unsafe impl Send for Tx {}

    impl Tx {
        fn send(&self, messages: &[Msg]) {
            let out = claim(&self.producer, messages.len() as u32);
            let start = out.start();
            // Published below, by hand.
            std::mem::forget(out);
            for (i, msg) in messages.iter().enumerate() {
                let position = start.wrapping_add(i as u32);
                // SAFETY: the claim gave us the position; nothing reads it before its
                // stamp.
                unsafe {
                    let at = payload(self.first, position);
                    at.sub(12).cast::<u32>().write(0);
                    at.sub(8).cast::<[u32; 2]>().write([0, 0]);
                    std::ptr::copy_nonoverlapping(bytemuck::bytes_of(msg).as_ptr(), at, BYTES);
                }
            }
            for i in 0..messages.len() as u32 {
                let position = start.wrapping_add(i);
                // SAFETY: as above.
                unsafe { stamp(self.first, position) }
                    .store(position.wrapping_add(1), Ordering::Release);
            }
        }
    }

    /// The consuming half: finds the run by its stamps, reads in place, stores `head`.
    struct Rx {
        consumer: Consumer<Ring>,
        first: *mut u8,
        head: u32,
    }

    // SAFETY: as for `Tx`.
    unsafe impl Send for Rx {}

    impl Rx {
        fn ready(&self, max: u32) -> u32 {
            let mut n = 0;
            while n < max {
                let position = self.head.wrapping_add(n);
                // SAFETY: inside the live ring.
                let seen = unsafe { stamp(self.first, position) }.load(Ordering::Acquire);
                if seen != position.wrapping_add(1) {
                    break;
                }
                n += 1;
            }
            n
        }

        /// Copies message `i` of the run out.
        fn read(&self, i: u32, msg: &mut Msg) {
            // SAFETY: published (seen by `ready`) and not released.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    payload(self.first, self.head.wrapping_add(i)),
                    bytemuck::bytes_of_mut(msg).as_mut_ptr(),
                    BYTES,
                );
            }
        }

        fn release(&mut self, n: u32) {
            self.head = self.head.wrapping_add(n);
            self.consumer
                .memory()
                .head()
                .store(self.head, Ordering::Release);
        }
    }

    /// The server.
    pub struct Echo {
        tx: Tx,
        rx: Rx,
        thread: JoinHandle<()>,
    }

    /// Starts it.
    pub fn start() -> Echo {
        let half = |(producer, consumer): (Producer<Ring>, Consumer<Ring>)| {
            (
                Tx {
                    first: first(producer.memory()),
                    producer,
                },
                Rx {
                    first: first(consumer.memory()),
                    consumer,
                    head: 0,
                },
            )
        };
        let (tx, mut echo_rx) = half(ring(SLOT as u32));
        let (echo_tx, rx) = half(ring(SLOT as u32));
        let thread = std::thread::spawn(move || {
            let mut batch = [Msg::default(); BATCH];
            loop {
                let n = echo_rx.ready(BATCH as u32);
                if n == 0 {
                    if Arc::strong_count(echo_rx.consumer.memory()) == 1 {
                        return;
                    }
                    std::hint::spin_loop();
                    continue;
                }
                for (i, msg) in batch.iter_mut().take(n as usize).enumerate() {
                    echo_rx.read(i as u32, msg);
                }
                echo_tx.send(&batch[..n as usize]);
                echo_rx.release(n);
            }
        });
        Echo { tx, rx, thread }
    }

    impl gyre_bench::BatchEcho for Echo {
        fn send_batch(&mut self, messages: &[Msg]) {
            self.tx.send(messages);
        }

        fn recv_batch(&mut self, buf: &mut Vec<Msg>, max: usize) -> usize {
            let n = loop {
                let n = self.rx.ready(max as u32);
                if n > 0 {
                    break n;
                }
                std::hint::spin_loop();
            };
            for i in 0..n {
                let mut msg = Msg::default();
                self.rx.read(i, &mut msg);
                buf.push(msg);
            }
            self.rx.release(n);
            n as usize
        }

        fn shutdown(self) {
            drop(self.tx);
            self.thread.join().expect("the echo thread exits cleanly");
        }
    }
}

/// `split-64`: the ring protocol over the proposed layout (headers apart from payloads),
/// with raw pointers, as `raw` does for today's layout. A prototype for measuring, not
/// the runtime's ring: its own cursors, no close protocol, one producer and one consumer.
#[allow(clippy::cast_ptr_alignment)]
mod split {
    use super::{Arc, JoinHandle, Msg, Ordering, BATCH, CAPACITY};
    use std::alloc::{alloc_zeroed, dealloc, Layout};
    use std::sync::atomic::AtomicU32;

    const MASK: u32 = CAPACITY - 1;
    /// Header bytes per position: stamp, tag, two correlation words.
    const HEADER: usize = 16;

    /// A cursor alone on its pair of cache lines.
    #[repr(align(128))]
    struct Cursor(AtomicU32);

    /// One ring: `tail` and `head` on lines of their own, the header array, the payload
    /// array (both 128-aligned).
    struct Ring {
        tail: Cursor,
        head: Cursor,
        headers: *mut u8,
        payloads: *mut Msg,
    }

    // SAFETY: the arrays are owned by the ring and accessed under the ring protocol
    // (stamps with Release/Acquire, `head` with Release/Acquire).
    unsafe impl Send for Ring {}
    // SAFETY: as for `Send`.
    unsafe impl Sync for Ring {}

    fn headers_layout() -> Layout {
        Layout::from_size_align(CAPACITY as usize * HEADER, 128).expect("a valid layout")
    }

    fn payloads_layout() -> Layout {
        Layout::array::<Msg>(CAPACITY as usize)
            .and_then(|l| l.align_to(128))
            .expect("a valid layout")
    }

    impl Ring {
        fn new() -> Arc<Self> {
            // SAFETY: both layouts have a non-zero size.
            let (headers, payloads) = unsafe {
                (
                    alloc_zeroed(headers_layout()),
                    alloc_zeroed(payloads_layout()).cast::<Msg>(),
                )
            };
            assert!(!headers.is_null() && !payloads.is_null(), "out of memory");
            let ring = Self {
                tail: Cursor(AtomicU32::new(0)),
                head: Cursor(AtomicU32::new(0)),
                headers,
                payloads,
            };
            // Stamps "full for the previous lap", as ABI.md § 3 says for origin 0.
            for position in 0..CAPACITY {
                ring.stamp(position).store(
                    position.wrapping_sub(CAPACITY).wrapping_add(1),
                    Ordering::Relaxed,
                );
            }
            Arc::new(ring)
        }

        /// The header of `position`.
        fn header(&self, position: u32) -> *mut u32 {
            // SAFETY: a masked index is inside the header array.
            unsafe {
                self.headers
                    .add((position & MASK) as usize * HEADER)
                    .cast::<u32>()
            }
        }

        fn stamp(&self, position: u32) -> &AtomicU32 {
            // SAFETY: the header's first word, 16-aligned, only accessed atomically.
            unsafe { AtomicU32::from_ptr(self.header(position)) }
        }

        fn payload(&self, position: u32) -> *mut Msg {
            // SAFETY: a masked index is inside the payload array.
            unsafe { self.payloads.add((position & MASK) as usize) }
        }
    }

    impl Drop for Ring {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with these layouts.
            unsafe {
                dealloc(self.headers, headers_layout());
                dealloc(self.payloads.cast::<u8>(), payloads_layout());
            }
        }
    }

    /// The producing half: claims by storing `tail` (one producer), writes payloads and
    /// headers, then the stamps.
    struct Tx {
        ring: Arc<Ring>,
        tail: u32,
        cached_head: u32,
    }

    impl Tx {
        fn send(&mut self, messages: &[Msg]) {
            let n = messages.len() as u32;
            while CAPACITY - self.tail.wrapping_sub(self.cached_head) < n {
                self.cached_head = self.ring.head.0.load(Ordering::Acquire);
                std::hint::spin_loop();
            }
            let start = self.tail;
            self.tail = start.wrapping_add(n);
            self.ring.tail.0.store(self.tail, Ordering::Release);
            for (i, msg) in messages.iter().enumerate() {
                let position = start.wrapping_add(i as u32);
                // SAFETY: the position is claimed and unstamped: nobody reads it.
                unsafe {
                    self.ring.payload(position).write(*msg);
                    let header = self.ring.header(position);
                    header.add(1).write(0);
                    header.add(2).write(0);
                    header.add(3).write(0);
                }
            }
            for i in 0..n {
                let position = start.wrapping_add(i);
                self.ring
                    .stamp(position)
                    .store(position.wrapping_add(1), Ordering::Release);
            }
        }
    }

    /// The consuming half: finds the run by its stamps, reads in place, stores `head`.
    struct Rx {
        ring: Arc<Ring>,
        head: u32,
    }

    impl Rx {
        fn ready(&self, max: u32) -> u32 {
            (0..max)
                .take_while(|&n| {
                    let position = self.head.wrapping_add(n);
                    self.ring.stamp(position).load(Ordering::Acquire) == position.wrapping_add(1)
                })
                .count() as u32
        }

        /// Message `i` of the run (its tag read as well, as a consumer must).
        fn read(&self, i: u32) -> Msg {
            let position = self.head.wrapping_add(i);
            // SAFETY: published (seen by `ready`) and not released.
            unsafe {
                std::hint::black_box(self.ring.header(position).add(1).read());
                self.ring.payload(position).read()
            }
        }

        fn release(&mut self, n: u32) {
            self.head = self.head.wrapping_add(n);
            self.ring.head.0.store(self.head, Ordering::Release);
        }
    }

    /// The server.
    pub struct Echo {
        tx: Tx,
        rx: Rx,
        thread: JoinHandle<()>,
    }

    /// Starts it.
    pub fn start() -> Echo {
        let (there, back) = (Ring::new(), Ring::new());
        let tx = Tx {
            ring: there.clone(),
            tail: 0,
            cached_head: 0,
        };
        let rx = Rx {
            ring: back.clone(),
            head: 0,
        };
        let mut echo_rx = Rx {
            ring: there,
            head: 0,
        };
        let mut echo_tx = Tx {
            ring: back,
            tail: 0,
            cached_head: 0,
        };
        let thread = std::thread::spawn(move || {
            let mut batch = [Msg::default(); BATCH];
            loop {
                let n = echo_rx.ready(BATCH as u32);
                if n == 0 {
                    // The host dropped its half: everything was sent.
                    if Arc::strong_count(&echo_rx.ring) == 1 {
                        return;
                    }
                    std::hint::spin_loop();
                    continue;
                }
                for (i, msg) in batch.iter_mut().take(n as usize).enumerate() {
                    *msg = echo_rx.read(i as u32);
                }
                echo_tx.send(&batch[..n as usize]);
                echo_rx.release(n);
            }
        });
        Echo { tx, rx, thread }
    }

    impl gyre_bench::BatchEcho for Echo {
        fn send_batch(&mut self, messages: &[Msg]) {
            self.tx.send(messages);
        }

        fn recv_batch(&mut self, buf: &mut Vec<Msg>, max: usize) -> usize {
            let n = loop {
                let n = self.rx.ready(max as u32);
                if n > 0 {
                    break n;
                }
                std::hint::spin_loop();
            };
            buf.extend((0..n).map(|i| self.rx.read(i)));
            self.rx.release(n);
            n as usize
        }

        fn shutdown(self) {
            drop(self.tx);
            self.thread.join().expect("the echo thread exits cleanly");
        }
    }
}

/// The servers, in interleaving order; the last is the baseline.
const SUBJECTS: [&str; 6] = [
    "gyre-batch",
    "run-128",
    "run-64",
    "raw-64",
    "split-64",
    "rtrb-chunk",
];

/// Warms `server` up, measures it, stops it; M msg/s.
fn measure(mut server: impl BatchEcho) -> f64 {
    batch_throughput(&mut server, MESSAGES / 10, WINDOW);
    let took = batch_throughput(&mut server, MESSAGES, WINDOW);
    server.shutdown();
    rate(MESSAGES, took) / 1e6
}

/// One measurement of subject `which` (an index into [`SUBJECTS`]).
fn run(which: usize) -> f64 {
    match which {
        0 => measure(BatchSubject::GyreBatch.start()),
        1 => measure(RunEcho::<64>::start(128)),
        2 => measure(RunEcho::<48>::start(64)),
        3 => measure(raw::start()),
        4 => measure(split::start()),
        _ => measure(BatchSubject::RtrbChunk.start()),
    }
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(12);
    println!(
        "M msg/s, host -> echo -> host, batches of {BATCH}, {WINDOW} in flight, \
         {MESSAGES} messages per measurement after {} untimed",
        MESSAGES / 10
    );
    let mut ratios = vec![Vec::new(); SUBJECTS.len()];
    let mut pings = Vec::new();
    for round in 1..=rounds {
        let pp = ping_pong(20_000).as_nanos() as f64 / 20_000.0;
        pings.push(pp);
        let rates: Vec<f64> = (0..SUBJECTS.len()).map(run).collect();
        let baseline = rates[SUBJECTS.len() - 1];
        let cells: Vec<String> = SUBJECTS
            .iter()
            .zip(&rates)
            .map(|(name, r)| format!("{name} {r:5.1} ({:.2}x)", r / baseline))
            .collect();
        for (ratio, r) in ratios.iter_mut().zip(&rates) {
            ratio.push(r / baseline);
        }
        println!(
            "round {round:2}: ping-pong {pp:4.0} ns | {}",
            cells.join(" ")
        );
    }
    println!(
        "median ping-pong {:.0} ns; median per-round ratio to rtrb-chunk:",
        median(pings)
    );
    for (name, r) in SUBJECTS.iter().zip(ratios) {
        println!("  {name:<11} {:.2}x", median(r));
    }
}
