//! Workloads shared by the criterion benches (`benches/core.rs`) and the interleaved
//! report (`src/bin/gyre-bench.rs`).
//!
//! Every subject is an *echo server* behind the [`Echo`] trait: the host thread sends a
//! 64-byte [`Msg`] and receives the same message back. Subjects:
//!
//! - [`Subject::GyreDedicated`], [`Subject::GyrePool`]: a gyre kernel whose CPU handler
//!   emits its input unchanged, on its own thread or on a one-worker pool; the host uses
//!   the blocking `send`/`recv` of the single-producer `ExclusiveSender` and the
//!   single-consumer `Receiver`, the same shape as the SPSC baseline. The pool has one worker: the host thread and
//!   the worker then fill the two cores the baselines use. A second worker cannot help
//!   one kernel (a kernel runs on one worker at a time); it only spins, yields and parks
//!   beside the first, which [`Subject::GyrePoolTwoWorkers`] measures.
//! - [`Subject::GyreDedicatedShared`], [`Subject::GyrePoolTwoWorkers`]: diagnostics,
//!   reported apart from the acceptance ratios (the shared `Kernel` handle, which any number
//!   of threads may send and receive through; a pool of two workers).
//! - [`Subject::Rtrb`]: the baseline of the same shape, two `rtrb` rings of the same
//!   capacity with an echo thread that busy-spins on `pop` and pushes back.
//! - [`Subject::Crossbeam`]: two bounded `crossbeam-channel`s of the same capacity with an
//!   echo thread doing blocking `recv`/`send`.
//!
//! A third workload, "echo, batches of 64", moves messages [`BATCH`] at a time through
//! a [`BatchEcho`] ([`batch_throughput`]): [`BatchSubject::GyreBatch`], a dedicated gyre
//! echo kernel fed with `ExclusiveSender::send_batch` and read with
//! `Receiver::recv_batch`, against [`BatchSubject::RtrbChunk`], two rtrb rings with an
//! echo thread, written and read with rtrb's chunk API (`write_chunk_uninit`,
//! `read_chunk`) 64 at a time on both sides.
//!
//! Two measurements run over any of them: [`round_trip`] (one message in flight, each
//! send-to-receive time recorded in an HDR histogram) and [`echo_throughput`] (a window
//! of messages in flight). [`ping_pong`] measures the raw cost of bouncing one cache line
//! between two threads, the floor under every round trip on this machine.
//!
//! The [`workloads`] module holds the two workloads of the pipeline report
//! (`src/bin/gyre-bench-pipeline.rs`): a three-stage pipeline and round-robin actors, with
//! their baselines.
//!
//! The [`device`] module is the harness of the CUDA and wgpu benchmarks
//! (`src/bin/gyre-bench-cuda.rs`, `src/bin/gyre-bench-wgpu.rs`), which drive `gyre`'s
//! public API on a device backend.
//!
//! Every binary writes its report when it ends: the text it printed (through [`say!`]) and
//! an SVG of its per-round values and ratios ([`plot`]), side by side in
//! `target/bench-reports/` ([`report`]); [`progress`] shows how far a run is on a terminal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gyre::{Backend, Kernel, KernelSpec, Placement, Runtime};
use hdrhistogram::Histogram;

pub mod device;
pub mod plot;
pub mod progress;
pub mod report;
pub mod watch;
pub mod workloads;

/// Slots in every ring and channel, in each direction.
pub const CAPACITY: u32 = 1024;
/// Messages kept in flight by [`echo_throughput`]: half the capacity.
pub const WINDOW: u64 = CAPACITY as u64 / 2;
/// How long drains and shutdowns may take before the benchmark calls it a failure.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The message every subject echoes: 64 bytes, plain old data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Msg {
    /// Sequence number, checked on the way back.
    pub seq: u64,
    /// Filler up to 64 bytes.
    pub body: [u64; 7],
}

const _: () = assert!(std::mem::size_of::<Msg>() == 64);

impl Msg {
    /// Message number `seq`.
    pub fn new(seq: u64) -> Self {
        Self {
            seq,
            body: [seq; 7],
        }
    }
}

/// A running echo server seen from the host thread.
pub trait Echo {
    /// Sends one message, waiting while the forward queue is full.
    fn send(&mut self, msg: Msg);
    /// Receives the next echoed message, waiting for it.
    fn recv(&mut self) -> Msg;
    /// Stops the server: everything sent must have been received. Joins its threads.
    fn shutdown(self);
}

/// Which echo server to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// gyre, `Placement::Dedicated`, blocking `send`/`recv`.
    GyreDedicated,
    /// Baseline: two rtrb rings and a spinning echo thread.
    Rtrb,
    /// gyre, `Placement::Pool` on a one-worker runtime, blocking `send`/`recv`.
    GyrePool,
    /// Baseline: two bounded crossbeam channels and a blocking echo thread.
    Crossbeam,
    /// Diagnostic: gyre dedicated through the shared `Kernel` handle (multi-producer
    /// `send`, locked `recv`) instead of the exclusive endpoints.
    GyreDedicatedShared,
    /// Diagnostic: gyre pool on a two-worker runtime, blocking `send`/`recv`.
    GyrePoolTwoWorkers,
}

impl Subject {
    /// The subjects and baselines the acceptance ratios are about, in interleaving order.
    pub const MAIN: [Self; 4] = [
        Self::GyreDedicated,
        Self::Rtrb,
        Self::GyrePool,
        Self::Crossbeam,
    ];
    /// Diagnostic subjects, reported separately.
    pub const DIAGNOSTIC: [Self; 2] = [Self::GyreDedicatedShared, Self::GyrePoolTwoWorkers];

    /// Short name used in tables and criterion ids.
    pub fn name(self) -> &'static str {
        match self {
            Self::GyreDedicated => "gyre-dedicated",
            Self::Rtrb => "rtrb",
            Self::GyrePool => "gyre-pool",
            Self::Crossbeam => "crossbeam",
            Self::GyreDedicatedShared => "gyre-dedicated-shared",
            Self::GyrePoolTwoWorkers => "gyre-pool-2w",
        }
    }

    /// Starts the server.
    pub fn start(self) -> Server {
        match self {
            Self::GyreDedicated => {
                Server::Gyre(GyreEcho::start(Placement::Dedicated, 1, HostWait::Blocking))
            }
            Self::GyrePool => Server::Gyre(GyreEcho::start(Placement::Pool, 1, HostWait::Blocking)),
            Self::GyreDedicatedShared => {
                Server::Gyre(GyreEcho::start(Placement::Dedicated, 1, HostWait::Shared))
            }
            Self::GyrePoolTwoWorkers => {
                Server::Gyre(GyreEcho::start(Placement::Pool, 2, HostWait::Blocking))
            }
            Self::Rtrb => Server::Rtrb(RtrbEcho::start()),
            Self::Crossbeam => Server::Crossbeam(CrossbeamEcho::start()),
        }
    }
}

/// Any running server; forwards to the one inside (one predictable branch per call,
/// the same for every subject).
pub enum Server {
    /// A gyre kernel.
    Gyre(GyreEcho),
    /// The rtrb baseline.
    Rtrb(RtrbEcho),
    /// The crossbeam baseline.
    Crossbeam(CrossbeamEcho),
}

impl Echo for Server {
    #[inline]
    fn send(&mut self, msg: Msg) {
        match self {
            Self::Gyre(e) => e.send(msg),
            Self::Rtrb(e) => e.send(msg),
            Self::Crossbeam(e) => e.send(msg),
        }
    }

    #[inline]
    fn recv(&mut self) -> Msg {
        match self {
            Self::Gyre(e) => e.recv(),
            Self::Rtrb(e) => e.recv(),
            Self::Crossbeam(e) => e.recv(),
        }
    }

    fn shutdown(self) {
        match self {
            Self::Gyre(e) => Echo::shutdown(e),
            Self::Rtrb(e) => e.shutdown(),
            Self::Crossbeam(e) => e.shutdown(),
        }
    }
}

/// Which gyre endpoints the host uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostWait {
    /// The single-producer `ExclusiveSender` and single-consumer `Receiver`, blocking
    /// `send`/`recv` (spin, yield, then park inside gyre): the same shape as the SPSC
    /// rtrb baseline.
    Blocking,
    /// The shared `Kernel` handle's blocking `send`/`recv` (safe from many threads:
    /// a compare-and-swap per send, a lock per receive).
    Shared,
}

/// A gyre echo kernel: `.cpu(|x, out| Ok(out.emit(*x)?))`.
pub struct GyreEcho {
    /// A dashboard watching the runtime (`GYRE_BENCH_DASHBOARD=1`, [`watch`]).
    _watched: Option<Box<watch::Watched>>,
    runtime: Runtime,
    kernel: Kernel<Msg, Msg>,
    tx: Option<gyre::ExclusiveSender<Msg>>,
    rx: Option<gyre::Receiver<Msg>>,
}

impl GyreEcho {
    /// A runtime of `workers` pool threads with one active echo kernel at `placement`,
    /// inbox and host output of [`CAPACITY`] slots.
    ///
    /// # Panics
    /// When the runtime or the kernel fails to start.
    pub fn start(placement: Placement, workers: usize, wait: HostWait) -> Self {
        Self::start_with(placement, workers, wait, false)
    }

    /// Like [`GyreEcho::start`]; with `batches`, the echo kernel's handler is the batch
    /// form (`KernelSpec::cpu_batch`, the batch echoed with one `BatchEmit::emit_all`).
    ///
    /// # Panics
    /// When the runtime or the kernel fails to start.
    pub fn start_with(placement: Placement, workers: usize, wait: HostWait, batches: bool) -> Self {
        let runtime = Runtime::builder()
            .backend(Backend::Cpu)
            .workers(workers)
            .build()
            .expect("the CPU runtime starts");
        let spec = KernelSpec::<Msg, Msg>::new("echo")
            .placement(placement)
            .capacity(CAPACITY)
            .host_output(CAPACITY);
        let spec = if batches {
            spec.cpu_batch(|inputs, out| Ok(out.emit_all(inputs)?))
        } else {
            spec.cpu(|msg, out| Ok(out.emit(*msg)?))
        };
        let kernel = runtime.launch(spec).expect("the echo kernel launches");
        kernel.activate().expect("the echo kernel activates");
        let (tx, rx) = match wait {
            HostWait::Blocking => (
                Some(
                    kernel
                        .exclusive_sender()
                        .expect("a fresh kernel has its lane"),
                ),
                Some(kernel.receiver().expect("a fresh kernel has its output")),
            ),
            HostWait::Shared => (None, None),
        };
        Self {
            _watched: watch::attach(&runtime),
            runtime,
            kernel,
            tx,
            rx,
        }
    }
}

impl Echo for GyreEcho {
    #[inline]
    fn send(&mut self, msg: Msg) {
        match &mut self.tx {
            Some(tx) => tx.send(msg).expect("the echo kernel accepts messages"),
            None => self
                .kernel
                .send(msg)
                .expect("the echo kernel accepts messages"),
        }
    }

    #[inline]
    fn recv(&mut self) -> Msg {
        match &mut self.rx {
            Some(rx) => rx.recv().expect("the echo kernel emits"),
            None => self.kernel.recv().expect("the echo kernel emits"),
        }
    }

    fn shutdown(mut self) {
        // Give the output back to the kernel handle; the lane closes with the drain.
        self.rx = None;
        let report = self
            .kernel
            .drain(STOP_TIMEOUT)
            .expect("the echo kernel drains");
        assert!(!report.timed_out, "the echo kernel did not drain in time");
        assert!(
            report.undelivered.is_empty() && report.undelivered_outputs.is_empty(),
            "the benchmark received every echo before stopping"
        );
        assert!(
            self.kernel.try_recv().is_err(),
            "a drained kernel with nothing left reports it stopped"
        );
        let report = self.runtime.shutdown(STOP_TIMEOUT);
        assert_eq!(
            report.undelivered_count(),
            0,
            "nothing was left in the runtime"
        );
    }
}

/// The rtrb baseline: a ring each way and an echo thread that busy-spins on `pop`.
pub struct RtrbEcho {
    tx: rtrb::Producer<Msg>,
    rx: rtrb::Consumer<Msg>,
    thread: JoinHandle<()>,
}

impl RtrbEcho {
    /// Two rings of [`CAPACITY`] slots and the echo thread.
    ///
    /// # Panics
    /// When the thread cannot be spawned.
    pub fn start() -> Self {
        let (tx, mut echo_rx) = rtrb::RingBuffer::<Msg>::new(CAPACITY as usize);
        let (mut echo_tx, rx) = rtrb::RingBuffer::<Msg>::new(CAPACITY as usize);
        let thread = std::thread::Builder::new()
            .name("rtrb-echo".into())
            .spawn(move || loop {
                if let Ok(mut msg) = echo_rx.pop() {
                    while let Err(rtrb::PushError::Full(back)) = echo_tx.push(msg) {
                        if echo_tx.is_abandoned() {
                            return;
                        }
                        msg = back;
                        std::hint::spin_loop();
                    }
                } else if echo_rx.is_abandoned() && echo_rx.is_empty() {
                    return;
                } else {
                    std::hint::spin_loop();
                }
            })
            .expect("spawning the rtrb echo thread");
        Self { tx, rx, thread }
    }
}

impl Echo for RtrbEcho {
    #[inline]
    fn send(&mut self, msg: Msg) {
        let mut msg = msg;
        while let Err(rtrb::PushError::Full(back)) = self.tx.push(msg) {
            msg = back;
            std::hint::spin_loop();
        }
    }

    #[inline]
    fn recv(&mut self) -> Msg {
        loop {
            if let Ok(msg) = self.rx.pop() {
                return msg;
            }
            std::hint::spin_loop();
        }
    }

    fn shutdown(self) {
        let Self { tx, rx, thread } = self;
        drop(tx);
        thread.join().expect("the rtrb echo thread exits cleanly");
        assert!(
            rx.is_empty(),
            "the benchmark received every echo before stopping"
        );
    }
}

/// The crossbeam baseline: a bounded channel each way and a blocking echo thread.
pub struct CrossbeamEcho {
    tx: crossbeam_channel::Sender<Msg>,
    rx: crossbeam_channel::Receiver<Msg>,
    thread: JoinHandle<()>,
}

impl CrossbeamEcho {
    /// Two channels of [`CAPACITY`] slots and the echo thread.
    ///
    /// # Panics
    /// When the thread cannot be spawned.
    pub fn start() -> Self {
        let (tx, echo_rx) = crossbeam_channel::bounded::<Msg>(CAPACITY as usize);
        let (echo_tx, rx) = crossbeam_channel::bounded::<Msg>(CAPACITY as usize);
        let thread = std::thread::Builder::new()
            .name("crossbeam-echo".into())
            .spawn(move || {
                while let Ok(msg) = echo_rx.recv() {
                    if echo_tx.send(msg).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning the crossbeam echo thread");
        Self { tx, rx, thread }
    }
}

impl Echo for CrossbeamEcho {
    #[inline]
    fn send(&mut self, msg: Msg) {
        self.tx.send(msg).expect("the echo thread is alive");
    }

    #[inline]
    fn recv(&mut self) -> Msg {
        self.rx.recv().expect("the echo thread is alive")
    }

    fn shutdown(self) {
        let Self { tx, rx, thread } = self;
        drop(tx);
        thread
            .join()
            .expect("the crossbeam echo thread exits cleanly");
        assert!(
            rx.is_empty(),
            "the benchmark received every echo before stopping"
        );
    }
}

/// A histogram for round-trip times in nanoseconds (1 ns to 10 s, 3 significant digits).
///
/// # Panics
/// Never: the bounds are valid.
pub fn round_trip_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid histogram bounds")
}

/// `count` round trips, one message in flight: send, wait for the echo, record the time
/// in `histogram` (ns). Returns the total time. Panics if an echo is not the message sent.
pub fn round_trip<E: Echo>(
    echo: &mut E,
    first_seq: u64,
    count: u64,
    histogram: &mut Histogram<u64>,
) -> Duration {
    let mut total = Duration::ZERO;
    for seq in first_seq..first_seq + count {
        let start = Instant::now();
        echo.send(Msg::new(seq));
        let back = echo.recv();
        let took = start.elapsed();
        assert_eq!(back.seq, seq, "the echo is the message sent");
        total += took;
        histogram.saturating_record(took.as_nanos() as u64);
    }
    total
}

/// Echoes `count` messages keeping up to `window` in flight (send while fewer are in
/// flight, else receive one). Returns the time from the first send to the last receive.
/// Panics if echoes come back out of order.
pub fn echo_throughput<E: Echo>(echo: &mut E, count: u64, window: u64) -> Duration {
    let start = Instant::now();
    let (mut sent, mut received) = (0u64, 0u64);
    while received < count {
        if sent < count && sent - received < window {
            echo.send(Msg::new(sent));
            sent += 1;
        } else {
            let back = echo.recv();
            assert_eq!(back.seq, received, "echoes come back in order");
            received += 1;
        }
    }
    start.elapsed()
}

/// Messages per batch call in the batch workload.
pub const BATCH: usize = 64;

/// A running echo server fed and read in batches.
pub trait BatchEcho {
    /// Sends every message of `messages`, in order, waiting while the forward queue is
    /// full.
    fn send_batch(&mut self, messages: &[Msg]);
    /// Appends up to `max` echoed messages to `buf`, waiting for at least one; returns
    /// how many.
    fn recv_batch(&mut self, buf: &mut Vec<Msg>, max: usize) -> usize;
    /// Stops the server: everything sent must have been received. Joins its threads.
    fn shutdown(self);
}

/// Which batch echo server to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BatchSubject {
    /// gyre, `Placement::Dedicated`, `ExclusiveSender::send_batch` and
    /// `Receiver::recv_batch`, [`BATCH`] at a time, into a batch echo handler
    /// (`KernelSpec::cpu_batch` answering with `BatchEmit::emit_all`).
    GyreBatch,
    /// Baseline: two rtrb rings and a spinning echo thread, rtrb's chunk API on both
    /// sides, [`BATCH`] at a time.
    RtrbChunk,
}

impl BatchSubject {
    /// Both, in interleaving order.
    pub const ALL: [Self; 2] = [Self::GyreBatch, Self::RtrbChunk];

    /// Short name used in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::GyreBatch => "gyre-batch",
            Self::RtrbChunk => "rtrb-chunk",
        }
    }

    /// Starts the server.
    pub fn start(self) -> BatchServer {
        match self {
            Self::GyreBatch => BatchServer::Gyre(GyreEcho::start_with(
                Placement::Dedicated,
                1,
                HostWait::Blocking,
                true,
            )),
            Self::RtrbChunk => BatchServer::Rtrb(RtrbChunkEcho::start()),
        }
    }
}

/// Any running batch server.
pub enum BatchServer {
    /// A gyre kernel, through its exclusive endpoints.
    Gyre(GyreEcho),
    /// The rtrb chunk baseline.
    Rtrb(RtrbChunkEcho),
}

impl BatchEcho for BatchServer {
    #[inline]
    fn send_batch(&mut self, messages: &[Msg]) {
        match self {
            Self::Gyre(e) => e.send_batch(messages),
            Self::Rtrb(e) => e.send_batch(messages),
        }
    }

    #[inline]
    fn recv_batch(&mut self, buf: &mut Vec<Msg>, max: usize) -> usize {
        match self {
            Self::Gyre(e) => e.recv_batch(buf, max),
            Self::Rtrb(e) => e.recv_batch(buf, max),
        }
    }

    fn shutdown(self) {
        match self {
            Self::Gyre(e) => Echo::shutdown(e),
            Self::Rtrb(e) => e.shutdown(),
        }
    }
}

impl BatchEcho for GyreEcho {
    #[inline]
    fn send_batch(&mut self, messages: &[Msg]) {
        let sent = match &mut self.tx {
            Some(tx) => tx.send_batch(messages),
            None => self.kernel.send_batch(messages),
        };
        sent.expect("the echo kernel accepts messages");
    }

    #[inline]
    fn recv_batch(&mut self, buf: &mut Vec<Msg>, max: usize) -> usize {
        let taken = match &mut self.rx {
            Some(rx) => rx.recv_batch(buf, max),
            None => self.kernel.recv_batch(buf, max),
        };
        taken.expect("the echo kernel emits")
    }

    fn shutdown(self) {
        Echo::shutdown(self);
    }
}

/// The rtrb chunk baseline: a ring each way and an echo thread that moves whatever is
/// there (up to [`BATCH`]) with one `read_chunk` and one `write_chunk_uninit`.
pub struct RtrbChunkEcho {
    tx: rtrb::Producer<Msg>,
    rx: rtrb::Consumer<Msg>,
    thread: JoinHandle<()>,
}

impl RtrbChunkEcho {
    /// Two rings of [`CAPACITY`] slots and the echo thread.
    ///
    /// # Panics
    /// When the thread cannot be spawned.
    pub fn start() -> Self {
        let (tx, mut echo_rx) = rtrb::RingBuffer::<Msg>::new(CAPACITY as usize);
        let (mut echo_tx, rx) = rtrb::RingBuffer::<Msg>::new(CAPACITY as usize);
        let thread = std::thread::Builder::new()
            .name("rtrb-chunk-echo".into())
            .spawn(move || loop {
                let n = echo_rx.slots().min(BATCH);
                if n == 0 {
                    if echo_rx.is_abandoned() && echo_rx.is_empty() {
                        return;
                    }
                    std::hint::spin_loop();
                    continue;
                }
                while echo_tx.slots() < n {
                    if echo_tx.is_abandoned() {
                        return;
                    }
                    std::hint::spin_loop();
                }
                let chunk = echo_rx.read_chunk(n).expect("n slots are readable");
                let (first, second) = chunk.as_slices();
                let written = echo_tx
                    .write_chunk_uninit(n)
                    .expect("n slots are free")
                    .fill_from_iter(first.iter().chain(second).copied());
                debug_assert_eq!(written, n);
                chunk.commit_all();
            })
            .expect("spawning the rtrb chunk echo thread");
        Self { tx, rx, thread }
    }

    #[inline]
    fn send_batch(&mut self, messages: &[Msg]) {
        while self.tx.slots() < messages.len() {
            std::hint::spin_loop();
        }
        let written = self
            .tx
            .write_chunk_uninit(messages.len())
            .expect("the slots are free")
            .fill_from_iter(messages.iter().copied());
        debug_assert_eq!(written, messages.len());
    }

    #[inline]
    fn recv_batch(&mut self, buf: &mut Vec<Msg>, max: usize) -> usize {
        let n = loop {
            let n = self.rx.slots().min(max);
            if n > 0 {
                break n;
            }
            std::hint::spin_loop();
        };
        let chunk = self.rx.read_chunk(n).expect("n slots are readable");
        let (first, second) = chunk.as_slices();
        buf.extend_from_slice(first);
        buf.extend_from_slice(second);
        chunk.commit_all();
        n
    }

    fn shutdown(self) {
        let Self { tx, rx, thread } = self;
        drop(tx);
        thread
            .join()
            .expect("the rtrb chunk echo thread exits cleanly");
        assert!(
            rx.is_empty(),
            "the benchmark received every echo before stopping"
        );
    }
}

/// Echoes `count` messages (rounded up to whole batches) [`BATCH`] at a time, keeping up
/// to `window` in flight: sends a batch while one more fits the window, else receives
/// up to a batch. Returns the time from the first send to the last receive. Panics if
/// echoes come back out of order.
pub fn batch_throughput<E: BatchEcho>(echo: &mut E, count: u64, window: u64) -> Duration {
    let count = count.div_ceil(BATCH as u64) * BATCH as u64;
    let mut batch = [Msg::default(); BATCH];
    let mut buf = Vec::with_capacity(BATCH);
    let start = Instant::now();
    let (mut sent, mut received) = (0u64, 0u64);
    while received < count {
        if sent < count && sent + BATCH as u64 - received <= window {
            for (i, msg) in batch.iter_mut().enumerate() {
                *msg = Msg::new(sent + i as u64);
            }
            echo.send_batch(&batch);
            sent += BATCH as u64;
        } else {
            buf.clear();
            echo.recv_batch(&mut buf, BATCH);
            for back in &buf {
                assert_eq!(back.seq, received, "echoes come back in order");
                received += 1;
            }
        }
    }
    start.elapsed()
}

/// The median of `values` (the mean of the middle two for an even count; NaN when empty):
/// how every harness here summarises its per-round ratios.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        f64::midpoint(values[n / 2 - 1], values[n / 2])
    }
}

/// Messages per second.
pub fn rate(count: u64, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64()
}

/// Bounces one `AtomicU64` between this thread and a helper `count` times (after a
/// warm-up); returns the total time. One bounce is one cache-line round trip between
/// the two cores: the floor under every cross-thread round trip.
///
/// # Panics
/// When the helper thread cannot be spawned or panics.
pub fn ping_pong(count: u64) -> Duration {
    const WARM_UP: u64 = 1_000;
    let line = Arc::new(AtomicU64::new(0));
    let total = WARM_UP + count;
    let helper = {
        let line = line.clone();
        std::thread::Builder::new()
            .name("ping-pong".into())
            .spawn(move || {
                let mut expect = 1;
                while expect < 2 * total {
                    // Wait for the odd value, answer with the next even one.
                    while line.load(Ordering::Acquire) != expect {
                        std::hint::spin_loop();
                    }
                    line.store(expect + 1, Ordering::Release);
                    expect += 2;
                }
            })
            .expect("spawning the ping-pong thread")
    };
    let bounce = |i: u64| {
        line.store(2 * i + 1, Ordering::Release);
        while line.load(Ordering::Acquire) != 2 * i + 2 {
            std::hint::spin_loop();
        }
    };
    for i in 0..WARM_UP {
        bounce(i);
    }
    let start = Instant::now();
    for i in WARM_UP..total {
        bounce(i);
    }
    let took = start.elapsed();
    helper.join().expect("the ping-pong thread exits cleanly");
    took
}
