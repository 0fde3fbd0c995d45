//! Zero allocation per message, measured: a counting global allocator around
//! `std::alloc::System` counts every allocation on every thread (the caller's, the worker
//! pool's, a dedicated kernel's) while a scenario's measured window is open. Each scenario
//! launches its kernels, warms up (so that lazy, once-only allocations happen first), then
//! moves `MEASURED` messages through a hot path (send, handler or batch handler, emit,
//! kernel-to-kernel delivery, receive; one message at a time, or `BATCH` at a time with
//! `send_batch` and `recv_batch`) and checks what was allocated meanwhile: with dedicated
//! kernels nothing (measured: 0 in nearly every run; a few once-only allocations in parking_lot
//! are tolerated, see `ONCE_ONLY`); with pooled kernels also the pool's run-queue blocks,
//! one per 63 wake-ups (see `allowed`).
//!
//! A single test function runs all scenarios in turn: the counter is process-wide, so no
//! other test of this binary may run beside a measured window.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gyre::{ExclusiveSender, KernelSpec, Placement, Receiver, Runtime};

/// Counts allocations (alloc, alloc_zeroed, realloc) on every thread while `MEASURING` is set.
struct Counting;

static MEASURING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

impl Counting {
    fn count() {
        // Relaxed: `measure` opens and closes the window with SeqCst stores, and every
        // message of a window is received back before it closes, which orders the
        // allocations of the window's work before the closing read of the count.
        if MEASURING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees are this allocator's; counting touches only atomics, never memory
// the allocator hands out, and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::count();
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::count();
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::count();
        // SAFETY: forwarded unchanged; `ptr` came from this allocator, i.e. from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from this allocator, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Messages through each scenario before the window opens.
const WARM_UP: u64 = 1_000;
/// Messages through each scenario inside the window.
const MEASURED: u64 = 10_000;
/// Messages a streaming scenario keeps in flight.
const WINDOW: u64 = 128;
const SECOND: Duration = Duration::from_secs(1);

/// Allocations a window may see that are once-only, not per message, and that the
/// warm-up cannot force to happen first: parking_lot sets up a thread's parking data and
/// grows its global table of parked threads the first time a thread meets a contended
/// lock, which is up to the scheduler (seen: up to 4 in a window, on the wait lists'
/// locks between the host thread and a kernel's thread).
const ONCE_ONLY: u64 = 8;

/// Blocks crossbeam-deque's `Injector` (the pool's run queue) allocates: one per this many
/// pushes, freed once its slots are popped.
const RUN_QUEUE_BLOCK: u64 = 63;

/// The most allocations a scenario may make in its window of `MEASURED` messages.
///
/// Dedicated kernels: nothing but `ONCE_ONLY`. Pooled kernels also: the pool's run queue
/// allocates one block per `RUN_QUEUE_BLOCK` pushes, and a pooled kernel is pushed when a
/// message wakes it from idle (at most once per message per stage) and when it used up
/// its quantum with work left (at most once per message per stage again: a quantum is at
/// least one message). That is amortised per wake-up, not per message: a kernel kept busy
/// is not pushed again. A hot path that allocated once per message would exceed either
/// bound by far (`MEASURED` is 10,000).
fn allowed(placement: Placement, stages: u64) -> u64 {
    match placement {
        Placement::Dedicated => ONCE_ONLY,
        Placement::Pool => ONCE_ONLY + (2 * stages * MEASURED).div_ceil(RUN_QUEUE_BLOCK),
    }
}

/// Runs `work` with the counter open and returns how many allocations every thread of
/// the process made meanwhile. `work` must have received back every message it sent.
fn measure(work: impl FnOnce()) -> u64 {
    // ORDERING: SeqCst, paired with nothing but each other: the window's brackets. The
    // allocator's Relaxed loads of `MEASURING` may see the opening late or the closing
    // early by a few instructions of another thread; that only misses allocations of the
    // set-up, never ones of `work`, whose messages it waits for.
    ALLOCATIONS.store(0, Ordering::SeqCst);
    // ORDERING: see above.
    MEASURING.store(true, Ordering::SeqCst);
    work();
    // ORDERING: see above.
    MEASURING.store(false, Ordering::SeqCst);
    // ORDERING: see above.
    ALLOCATIONS.load(Ordering::SeqCst)
}

/// Makes every thread of a scenario park once before the window: `recv` runs here while
/// `send` runs on another thread 20 ms later, long after the receiver, the kernels and the
/// pool's workers ran out of spinning. A wait list grows (allocates) the first time
/// somebody parks on it and keeps its capacity after, so that happens in the warm-up
/// rather than in the window by chance.
fn park_everyone(send: impl FnOnce() + Send, recv: impl FnOnce()) {
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            send();
        });
        recv();
    });
}

fn stage(name: &str, placement: Placement, f: fn(u64) -> u64) -> KernelSpec<u64, u64> {
    KernelSpec::<u64, u64>::new(name)
        .placement(placement)
        .capacity(256)
        .cpu(move |x, out| Ok(out.emit(f(*x))?))
}

fn echo(name: &str, placement: Placement) -> KernelSpec<u64, u64> {
    stage(name, placement, |x| x + 1)
}

/// `Kernel::send` then `Kernel::recv`, one message at a time.
fn round_trips(placement: Placement) -> u64 {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let k = rt.launch(echo("echo", placement)).unwrap();
    k.activate().unwrap();
    let trip = |n: u64| {
        for i in 0..n {
            k.send(i).unwrap();
            assert_eq!(k.recv_timeout(SECOND * 10).unwrap(), i + 1);
        }
    };
    trip(WARM_UP);
    park_everyone(
        || k.send(7).unwrap(),
        || assert_eq!(k.recv_timeout(SECOND * 10).unwrap(), 8),
    );
    let allocations = measure(|| trip(MEASURED));
    let report = k.drain(SECOND * 5).unwrap();
    assert!(
        report.undelivered.is_empty() && !report.timed_out,
        "{report:?}"
    );
    allocations
}

/// `exclusive_sender` and `receiver`, streaming with `WINDOW` messages in flight.
fn streaming(placement: Placement) -> u64 {
    fn stream(tx: &mut ExclusiveSender<u64>, rx: &mut Receiver<u64>, n: u64) {
        let (mut sent, mut received) = (0, 0);
        while received < n {
            while sent < n && sent - received < WINDOW {
                tx.send(sent).unwrap();
                sent += 1;
            }
            assert_eq!(rx.recv_timeout(SECOND * 10).unwrap(), received + 1);
            received += 1;
        }
    }
    let rt = Runtime::builder().workers(1).build().unwrap();
    let k = rt.launch(echo("stream", placement)).unwrap();
    k.activate().unwrap();
    let mut tx = k.exclusive_sender().unwrap();
    let mut rx = k.receiver().unwrap();
    stream(&mut tx, &mut rx, WARM_UP);
    park_everyone(
        || tx.send(7).unwrap(),
        || assert_eq!(rx.recv_timeout(SECOND * 10).unwrap(), 8),
    );
    let allocations = measure(|| stream(&mut tx, &mut rx, MEASURED));
    drop((tx, rx));
    let report = k.drain(SECOND * 5).unwrap();
    assert!(
        report.undelivered.is_empty() && !report.timed_out,
        "{report:?}"
    );
    allocations
}

/// A 3-stage `Runtime::pipeline` (two kernel-to-kernel deliveries per message), streaming
/// with `WINDOW` messages in flight.
fn pipeline(placement: Placement) -> u64 {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let p = rt
        .pipeline::<u64>("three")
        .stage(stage("a", placement, |x| x + 1))
        .stage(stage("b", placement, |x| x * 2))
        .stage(stage("c", placement, |x| x + 3))
        .launch()
        .unwrap();
    p.activate().unwrap();
    let stream = |n: u64| {
        let (mut sent, mut received) = (0, 0);
        while received < n {
            while sent < n && sent - received < WINDOW {
                p.send(sent).unwrap();
                sent += 1;
            }
            let expected = (received + 1) * 2 + 3;
            assert_eq!(p.recv_timeout(SECOND * 10).unwrap(), expected);
            received += 1;
        }
    };
    stream(WARM_UP);
    park_everyone(
        || p.send(7).unwrap(),
        || assert_eq!(p.recv_timeout(SECOND * 10).unwrap(), 19),
    );
    let allocations = measure(|| stream(MEASURED));
    assert_eq!(p.drain(SECOND * 5).undelivered_count(), 0);
    allocations
}

/// `try_send` and `try_recv`, retried until they succeed.
fn non_blocking(placement: Placement) -> u64 {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let k = rt.launch(echo("try", placement)).unwrap();
    k.activate().unwrap();
    let trip = |n: u64| {
        for i in 0..n {
            let mut message = i;
            while let Err(e) = k.try_send(message) {
                message = e.into_message();
                std::thread::yield_now();
            }
            let got = loop {
                if let Some(got) = k.try_recv().unwrap() {
                    break got;
                }
                std::thread::yield_now();
            };
            assert_eq!(got, i + 1);
        }
    };
    trip(WARM_UP);
    park_everyone(
        || k.send(7).unwrap(),
        || assert_eq!(k.recv_timeout(SECOND * 10).unwrap(), 8),
    );
    let allocations = measure(|| trip(MEASURED));
    let report = k.drain(SECOND * 5).unwrap();
    assert!(
        report.undelivered.is_empty() && !report.timed_out,
        "{report:?}"
    );
    allocations
}

/// `send_async` and `recv_async`, awaited directly in a current-thread tokio runtime's
/// `block_on` (no task spawned: a spawned task is tokio's allocation, not gyre's).
fn asynchronous(placement: Placement) -> u64 {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rt = Runtime::builder().workers(1).build().unwrap();
    let k = rt.launch(echo("async", placement)).unwrap();
    k.activate().unwrap();
    let trip = |n: u64| {
        tokio.block_on(async {
            for i in 0..n {
                k.send_async(i).await.unwrap();
                assert_eq!(k.recv_async().await.unwrap(), i + 1);
            }
        });
    };
    trip(WARM_UP);
    park_everyone(
        || k.send(7).unwrap(),
        || assert_eq!(tokio.block_on(k.recv_async()).unwrap(), 8),
    );
    let allocations = measure(|| trip(MEASURED));
    let report = k.drain(SECOND * 5).unwrap();
    assert!(
        report.undelivered.is_empty() && !report.timed_out,
        "{report:?}"
    );
    allocations
}

/// Messages per batch call in the batch scenarios.
const BATCH: usize = 64;

/// Sends `n` messages (rounded up to whole batches) `BATCH` at a time through `send`
/// and receives each batch back through `recv` into a buffer with room for it; checks
/// that the answer to `x` is `expected(x)`, in order.
fn batch_trips(
    n: u64,
    expected: fn(u64) -> u64,
    mut send: impl FnMut(&[u64]) -> usize,
    mut recv: impl FnMut(&mut Vec<u64>) -> usize,
    buf: &mut Vec<u64>,
) {
    let mut inputs = [0u64; BATCH];
    let mut next = 0;
    while next < n {
        for (i, slot) in inputs.iter_mut().enumerate() {
            *slot = next + i as u64;
        }
        assert_eq!(send(&inputs), BATCH);
        buf.clear();
        while buf.len() < BATCH {
            let took = recv(buf);
            assert!((1..=BATCH).contains(&took));
        }
        for (got, sent) in buf.iter().zip(&inputs) {
            assert_eq!(*got, expected(*sent));
        }
        next += BATCH as u64;
    }
}

/// `ExclusiveSender::send_batch` and `Receiver::recv_batch`, `BATCH` at a time, through
/// the `.cpu` echo (one handler call per message).
fn exclusive_batches(placement: Placement) -> u64 {
    exclusive_batches_through(echo("batches", placement), |x| x + 1)
}

/// A kernel with a batch handler (`cpu_batch`) answering each input with itself through
/// `BatchEmit::emit_all` (one claim, one publish, one wake per run of outputs).
fn batch_echo(name: &str, placement: Placement) -> KernelSpec<u64, u64> {
    KernelSpec::<u64, u64>::new(name)
        .placement(placement)
        .capacity(256)
        .cpu_batch(|inputs, out| Ok(out.emit_all(inputs)?))
}

/// `ExclusiveSender::send_batch` and `Receiver::recv_batch`, `BATCH` at a time, through
/// a batch handler: it is handed each run of inputs ready in its inbox at once, and
/// writes its outputs as one run.
fn batch_handler(placement: Placement) -> u64 {
    exclusive_batches_through(batch_echo("batch-handler", placement), |x| x)
}

/// `ExclusiveSender::send_batch` and `Receiver::recv_batch`, `BATCH` at a time, through
/// the kernel `spec` launches, which answers `x` with `expected(x)`.
fn exclusive_batches_through(spec: KernelSpec<u64, u64>, expected: fn(u64) -> u64) -> u64 {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let k = rt.launch(spec).unwrap();
    k.activate().unwrap();
    let mut tx = k.exclusive_sender().unwrap();
    let mut rx = k.receiver().unwrap();
    let mut buf = Vec::with_capacity(2 * BATCH);
    let mut trips = |tx: &mut ExclusiveSender<u64>, rx: &mut Receiver<u64>, n: u64| {
        batch_trips(
            n,
            expected,
            |m| tx.send_batch(m).unwrap(),
            |b| rx.recv_batch_timeout(b, BATCH, SECOND * 10).unwrap(),
            &mut buf,
        );
    };
    trips(&mut tx, &mut rx, WARM_UP);
    park_everyone(
        || tx.send(7).unwrap(),
        || assert_eq!(rx.recv_timeout(SECOND * 10).unwrap(), expected(7)),
    );
    let allocations = measure(|| trips(&mut tx, &mut rx, MEASURED));
    drop((tx, rx));
    let report = k.drain(SECOND * 5).unwrap();
    assert!(
        report.undelivered.is_empty() && !report.timed_out,
        "{report:?}"
    );
    allocations
}

/// `Kernel::send_batch` and `Kernel::recv_batch` (the shared handle), `BATCH` at a time.
fn shared_batches(placement: Placement) -> u64 {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let k = rt.launch(echo("shared-batches", placement)).unwrap();
    k.activate().unwrap();
    let mut buf = Vec::with_capacity(2 * BATCH);
    let trips = |n: u64, buf: &mut Vec<u64>| {
        batch_trips(
            n,
            |x| x + 1,
            |m| k.send_batch(m).unwrap(),
            |b| k.recv_batch_timeout(b, BATCH, SECOND * 10).unwrap(),
            buf,
        );
    };
    trips(WARM_UP, &mut buf);
    park_everyone(
        || k.send(7).unwrap(),
        || assert_eq!(k.recv_timeout(SECOND * 10).unwrap(), 8),
    );
    let allocations = measure(|| trips(MEASURED, &mut buf));
    let report = k.drain(SECOND * 5).unwrap();
    assert!(
        report.undelivered.is_empty() && !report.timed_out,
        "{report:?}"
    );
    allocations
}

/// A 2-stage `Runtime::pipeline` of batch handlers, `BATCH` at a time through
/// `Pipeline::send_batch` and `Pipeline::recv_batch`: the first stage writes its outputs
/// into the second's inbox as one run (`emit_all`, kernel to kernel), the second answers
/// input by input (`BatchEmit::emit`) into the host output. (Kernel-to-kernel delivery
/// between `.cpu` handlers is the 3-stage `pipeline` scenario.)
fn batch_pipeline(placement: Placement) -> u64 {
    let rt = Runtime::builder().workers(1).build().unwrap();
    let p = rt
        .pipeline::<u64>("batches")
        .stage(batch_echo("runs", placement))
        .stage(
            KernelSpec::<u64, u64>::new("each")
                .placement(placement)
                .capacity(256)
                .cpu_batch(|inputs, out| {
                    for (i, x) in inputs.iter().enumerate() {
                        out.emit(i, x + 1)?;
                    }
                    Ok(())
                }),
        )
        .launch()
        .unwrap();
    p.activate().unwrap();
    let mut buf = Vec::with_capacity(2 * BATCH);
    let trips = |n: u64, buf: &mut Vec<u64>| {
        batch_trips(
            n,
            |x| x + 1,
            |m| p.send_batch(m).unwrap(),
            |b| p.recv_batch_timeout(b, BATCH, SECOND * 10).unwrap(),
            buf,
        );
    };
    trips(WARM_UP, &mut buf);
    park_everyone(
        || p.send(7).unwrap(),
        || assert_eq!(p.recv_timeout(SECOND * 10).unwrap(), 8),
    );
    let allocations = measure(|| trips(MEASURED, &mut buf));
    assert_eq!(p.drain(SECOND * 5).undelivered_count(), 0);
    allocations
}

#[test]
fn the_cpu_hot_paths_allocate_nothing_per_message() {
    // The counter must see something when something allocates, or zero proves nothing.
    let probe = measure(|| drop(std::hint::black_box(vec![0u8; 1])));
    assert!(probe >= 1, "the counting allocator counted nothing");

    let mut results = Vec::new();
    for placement in [Placement::Dedicated, Placement::Pool] {
        results.extend([
            ("send/recv", placement, 1, round_trips(placement)),
            (
                "exclusive_sender/receiver",
                placement,
                1,
                streaming(placement),
            ),
            ("3-stage pipeline", placement, 3, pipeline(placement)),
            ("try_send/try_recv", placement, 1, non_blocking(placement)),
            (
                "send_async/recv_async",
                placement,
                1,
                asynchronous(placement),
            ),
            (
                "ExclusiveSender::send_batch/Receiver::recv_batch",
                placement,
                1,
                exclusive_batches(placement),
            ),
            (
                "Kernel::send_batch/recv_batch",
                placement,
                1,
                shared_batches(placement),
            ),
            (
                "cpu_batch + emit_all, send_batch/recv_batch",
                placement,
                1,
                batch_handler(placement),
            ),
            (
                "2-stage pipeline of cpu_batch, send_batch/recv_batch",
                placement,
                2,
                batch_pipeline(placement),
            ),
        ]);
    }
    for &(scenario, placement, _, allocations) in &results {
        eprintln!("{scenario}, {placement:?}: {allocations} allocations over {MEASURED} messages");
    }
    for (scenario, placement, stages, allocations) in results {
        let allowed = allowed(placement, stages);
        assert!(
            allocations <= allowed,
            "{scenario}, {placement:?}: {allocations} allocations over {MEASURED} messages \
             ({:.4} per message), more than the {allowed} allowed: something on the hot \
             path allocates per message",
            allocations as f64 / MEASURED as f64
        );
    }
}
