//! The batch API on every backend (the CPU, the CUDA emulation with feature `cuda`, wgpu
//! on a software adapter with feature `wgpu`): `send_batch`, `send_iter`,
//! `try_send_batch`, `recv_batch` and their timeout and async forms keep order and
//! deliver exactly once, hand back the unsent rest in order when the kernel stops or the
//! inbox is full, never return more than asked for, and stop waiting when the kernel
//! stops.

use std::time::Duration;

use gyre::builtins::{Builtin, Record};
use gyre::{Backpressure, Error, KernelSpec};

#[path = "support/backends.rs"]
mod backends;
use backends::runtimes;

const TIMEOUT: Duration = Duration::from_secs(30);
/// Inbox and output slots of every kernel here: batches of 200 are larger than a ring.
const CAPACITY: u32 = 64;
/// The batch sizes sent in turn: one, odd, a ring's worth, more than a ring.
const SIZES: [usize; 4] = [1, 7, 64, 200];

fn record(seq: u32) -> Record {
    Record {
        key: seq % 7,
        seq,
        value: seq as f32,
        aux: !seq,
    }
}

fn echo(name: &str) -> KernelSpec<Record, Record> {
    KernelSpec::<Record, Record>::new(name)
        .capacity(CAPACITY)
        .builtin(Builtin::Echo { bytes: 16 })
}

/// Records `0..n`, cut into batches of `SIZES` in turn.
fn batches(n: u32) -> Vec<Vec<Record>> {
    let mut all = Vec::new();
    let mut next = 0;
    for size in SIZES.iter().cycle() {
        if next >= n {
            break;
        }
        let end = (next + *size as u32).min(n);
        all.push((next..end).map(record).collect());
        next = end;
    }
    all
}

fn assert_in_order(name: &str, got: &[Record], n: u32) {
    assert_eq!(got.len(), n as usize, "{name}: exactly once");
    for (i, r) in got.iter().enumerate() {
        assert_eq!(*r, record(i as u32), "{name}: message {i} in order");
    }
}

#[test]
fn batches_of_odd_sizes_go_through_a_two_stage_pipeline_in_order_exactly_once() {
    const N: u32 = 3_000;
    const MAX: usize = 13;
    for (name, runtime) in runtimes() {
        let pipeline = runtime
            .pipeline::<Record>("two")
            .stage(echo("first"))
            .stage(echo("second"))
            .launch()
            .unwrap();
        pipeline.activate().unwrap();
        let sender = pipeline.sender();
        let feed = std::thread::spawn(move || {
            // Slices and iterators in turn.
            for (i, batch) in batches(N).into_iter().enumerate() {
                let sent = if i % 2 == 0 {
                    sender.send_batch(&batch)
                } else {
                    sender.send_iter(batch.iter().copied())
                };
                assert_eq!(sent.unwrap(), batch.len());
            }
        });
        let mut got = Vec::with_capacity(N as usize);
        while got.len() < N as usize {
            let before = got.len();
            let n = pipeline
                .recv_batch_timeout(&mut got, MAX, TIMEOUT)
                .unwrap_or_else(|e| panic!("{name}: after {before} of {N}: {e}"));
            assert!((1..=MAX).contains(&n), "{name}: {n} taken, asked for {MAX}");
            assert_eq!(got.len(), before + n, "{name}: appends what it says");
        }
        feed.join().unwrap();
        assert_in_order(name, &got, N);
        let report = pipeline.drain(TIMEOUT);
        assert_eq!(report.undelivered_count(), 0, "{name}: {report:?}");
    }
}

#[test]
fn exclusive_sender_and_receiver_batches_keep_order_on_every_backend() {
    const N: u32 = 2_000;
    for (name, runtime) in runtimes() {
        let kernel = runtime.launch(echo("echo")).unwrap();
        kernel.activate().unwrap();
        let mut tx = kernel.exclusive_sender().unwrap();
        let mut rx = kernel.receiver().unwrap();
        let feed = std::thread::spawn(move || {
            for batch in batches(N) {
                assert_eq!(tx.send_batch(&batch).unwrap(), batch.len());
            }
            tx
        });
        let mut got = Vec::with_capacity(N as usize);
        let mut round = 0;
        while got.len() < N as usize {
            let max = SIZES[round % SIZES.len()];
            round += 1;
            let before = got.len();
            let n = rx
                .recv_batch_timeout(&mut got, max, TIMEOUT)
                .unwrap_or_else(|e| panic!("{name}: after {before} of {N}: {e}"));
            assert!((1..=max).contains(&n), "{name}: {n} taken, asked for {max}");
            assert_eq!(got.len(), before + n);
        }
        drop(feed.join().unwrap());
        assert_in_order(name, &got, N);
        assert_eq!(rx.try_recv_batch(&mut got, 10).unwrap(), 0, "{name}");
        assert_eq!(rx.recv_batch(&mut got, 0).unwrap(), 0, "{name}: max 0");
        drop(rx);
        let report = kernel.drain(TIMEOUT).unwrap();
        assert!(report.undelivered.is_empty(), "{name}: {report:?}");
    }
}

#[test]
fn send_iter_with_iterators_that_do_not_say_their_length_sends_each_item_once() {
    for (name, runtime) in runtimes() {
        let kernel = runtime.launch(echo("echo")).unwrap();
        kernel.activate().unwrap();
        let mut rx = kernel.receiver().unwrap();
        let expected: Vec<Record> = (0..500).filter(|i| i % 3 != 0).map(record).collect();
        let feed = {
            let kernel = kernel.clone();
            std::thread::spawn(move || {
                // An upper bound only (a claim the filter cannot fill is cancelled), then
                // no bound at all.
                let filtered = (0..250).filter(|i| i % 3 != 0).map(record);
                let mut rest = (250..500).filter(|i| i % 3 != 0).map(record);
                let unbounded = std::iter::from_fn(move || rest.next());
                kernel.send_iter(filtered).unwrap() + kernel.send_iter(unbounded).unwrap()
            })
        };
        let mut got = Vec::new();
        while got.len() < expected.len() {
            rx.recv_batch_timeout(&mut got, 64, TIMEOUT)
                .unwrap_or_else(|e| panic!("{name}: after {}: {e}", got.len()));
        }
        assert_eq!(feed.join().unwrap(), expected.len(), "{name}");
        assert_eq!(got, expected, "{name}: each item once, in order");
        drop(rx);
        let report = kernel.drain(TIMEOUT).unwrap();
        assert!(report.undelivered.is_empty(), "{name}: {report:?}");
        assert_eq!(
            kernel.metrics().received,
            expected.len() as u64,
            "{name}: cancelled slots are not messages"
        );
    }
}

/// Sends `n` records one batch call at a time until all are in, receiving nothing.
fn fill_until(kernel: &gyre::Kernel<Record, Record>, n: u32) {
    let all: Vec<Record> = (0..n).map(record).collect();
    let mut sent = 0;
    while sent < all.len() {
        sent += kernel.try_send_batch(&all[sent..]).unwrap();
    }
}

#[test]
fn recv_batch_never_returns_more_than_max() {
    const N: u32 = 50;
    for (name, runtime) in runtimes() {
        eprintln!("backend {name}");
        let kernel = runtime.launch(echo("echo")).unwrap();
        kernel.activate().unwrap();
        fill_until(&kernel, N);
        let mut got = Vec::new();
        for max in [0, 1, 2, 7].into_iter().cycle() {
            if got.len() == N as usize {
                break;
            }
            let before = got.len();
            let n = if max == 0 {
                kernel.try_recv_batch(&mut got, max).unwrap()
            } else {
                kernel.recv_batch_timeout(&mut got, max, TIMEOUT).unwrap()
            };
            assert!(n <= max, "{name}: {n} taken, asked for {max}");
            assert_eq!(got.len(), before + n, "{name}");
        }
        assert_in_order(name, &got, N);
        let report = kernel.drain(TIMEOUT).unwrap();
        assert!(report.undelivered.is_empty(), "{name}: {report:?}");
    }
}

#[test]
fn a_full_inbox_under_policy_fail_hands_back_the_rest_in_order() {
    for (name, runtime) in runtimes() {
        // Never activated: nothing leaves the inbox.
        let kernel = runtime.launch(echo("idle")).unwrap();
        let all: Vec<Record> = (0..3 * CAPACITY).map(record).collect();
        let sender = kernel.sender().backpressure(Backpressure::Fail);
        let err = sender.send_batch(&all).unwrap_err();
        assert!(
            matches!(err.error, Error::Full { .. }),
            "{name}: {:?}",
            err.error
        );
        assert!(
            err.sent > 0 && err.sent < all.len(),
            "{name}: sent {}",
            err.sent
        );
        assert!(err.unsent.is_none(), "{name}: a slice keeps its own");
        assert_eq!(
            sender.try_send_batch(&all[err.sent..]).unwrap(),
            0,
            "{name}: still full"
        );
        let timed = kernel
            .sender()
            .backpressure(Backpressure::Timeout(Duration::from_millis(20)))
            .send_batch(&all[err.sent..])
            .unwrap_err();
        assert!(
            matches!(timed.error, Error::Timeout { .. }),
            "{name}: {:?}",
            timed.error
        );
        assert_eq!(timed.sent, 0, "{name}");
        let report = kernel.terminate().unwrap();
        assert_eq!(
            report.undelivered,
            all[..err.sent],
            "{name}: the inbox holds the sent prefix, in order"
        );
    }
}

#[test]
fn a_terminate_during_a_blocked_batch_send_hands_back_the_rest_in_order() {
    for (name, runtime) in runtimes() {
        let kernel = runtime.launch(echo("idle")).unwrap();
        let all: Vec<Record> = (0..3 * CAPACITY).map(record).collect();
        // Fill the inbox (never activated, nothing leaves it).
        let first = kernel
            .sender()
            .backpressure(Backpressure::Fail)
            .send_batch(&all)
            .unwrap_err()
            .sent;
        let blocked = {
            let kernel = kernel.clone();
            let rest = all[first..].to_vec();
            std::thread::spawn(move || kernel.send_batch(&rest))
        };
        let iterated = {
            let mut tx = kernel.exclusive_sender().unwrap();
            let rest = all[first..].to_vec();
            std::thread::spawn(move || {
                let mut it = rest.into_iter();
                let err = tx.send_iter(it.by_ref()).unwrap_err();
                let mut unsent: Vec<Record> = err.unsent.into_iter().collect();
                unsent.extend(it);
                (err.error, err.sent, unsent)
            })
        };
        // Both orders are correct (a send after the terminate fails at once); the pause
        // makes the wait inside the sends the likely path.
        std::thread::sleep(Duration::from_millis(50));
        let report = kernel.terminate().unwrap();
        let err = blocked.join().unwrap().unwrap_err();
        let (iter_error, iter_sent, unsent) = iterated.join().unwrap();
        for error in [&err.error, &iter_error] {
            assert!(
                matches!(error, Error::Terminated { .. } | Error::Draining { .. }),
                "{name}: {error:?}"
            );
        }
        // The lane may have had room for a few (it is a second inbox ring on the CPU);
        // whatever went in came back from the terminate, after the shared inbox's.
        let mut handed_back = report.undelivered.clone();
        assert_eq!(handed_back.len(), first + err.sent + iter_sent, "{name}");
        assert_eq!(handed_back[..first], all[..first], "{name}");
        // What each sender sent is its rest's prefix, and what it did not is the rest.
        assert_eq!(err.sent, 0, "{name}: the shared inbox was full");
        assert_eq!(
            unsent,
            all[first + iter_sent..],
            "{name}: the iterator's rest, in order"
        );
        handed_back.drain(..first);
        assert_eq!(handed_back, all[first..first + iter_sent], "{name}");
    }
}

#[test]
fn blocking_and_async_batch_waits_end_when_the_kernel_stops() {
    for (name, runtime) in runtimes() {
        let kernel = runtime.launch(echo("quiet")).unwrap();
        kernel.activate().unwrap();
        let mut rx = kernel.receiver().unwrap();
        let receiving = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let result = rx.recv_batch(&mut buf, 8);
            (result, buf)
        });
        let shared = {
            let kernel = kernel.clone();
            std::thread::spawn(move || {
                let tokio = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let mut buf = Vec::new();
                // The receiver above holds the output: this one sees the taken end or,
                // once it is given back, the stop.
                tokio.block_on(kernel.recv_batch_async(&mut buf, 8))
            })
        };
        // As above: both orders are correct; the pause makes the wait the likely path.
        std::thread::sleep(Duration::from_millis(50));
        kernel.terminate().unwrap();
        let (result, buf) = receiving.join().unwrap();
        assert!(
            matches!(result, Err(Error::Terminated { .. })),
            "{name}: {result:?}"
        );
        assert!(buf.is_empty(), "{name}");
        let result = shared.join().unwrap();
        assert!(
            matches!(
                result,
                Err(Error::Terminated { .. } | Error::ReceiverTaken { .. })
            ),
            "{name}: {result:?}"
        );
    }
}

#[test]
fn async_batch_sends_and_receives_end_when_the_kernel_stops() {
    for (name, runtime) in runtimes() {
        let kernel = runtime.launch(echo("idle")).unwrap();
        let all: Vec<Record> = (0..3 * CAPACITY).map(record).collect();
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Before the stop: an async batch goes in (up to the room there is), and an
        // async receive of an active kernel gets what it emits.
        let sending = {
            let kernel = kernel.clone();
            let all = all.clone();
            std::thread::spawn(move || {
                let tokio = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                tokio.block_on(kernel.send_batch_async(&all))
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        kernel.terminate().unwrap();
        let err = sending.join().unwrap().unwrap_err();
        assert!(
            matches!(err.error, Error::Terminated { .. } | Error::Draining { .. }),
            "{name}: {:?}",
            err.error
        );
        assert!(err.sent < all.len(), "{name}");
        // A stopped kernel's async receive ends at once.
        let mut buf = Vec::new();
        let result = tokio.block_on(kernel.recv_batch_async(&mut buf, 4));
        assert!(
            matches!(result, Err(Error::Terminated { .. })),
            "{name}: {result:?}"
        );
    }
}

/// An async batch round trip on an active kernel, on every backend.
#[test]
fn async_batches_round_trip() {
    for (name, runtime) in runtimes() {
        let kernel = runtime.launch(echo("echo")).unwrap();
        kernel.activate().unwrap();
        let mut tx = kernel.exclusive_sender().unwrap();
        let mut rx = kernel.receiver().unwrap();
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let all: Vec<Record> = (0..40).map(record).collect();
        let got = tokio.block_on(async {
            assert_eq!(tx.send_batch_async(&all).await.unwrap(), all.len());
            let mut got = Vec::new();
            while got.len() < all.len() {
                rx.recv_batch_async(&mut got, 16).await.unwrap();
            }
            got
        });
        assert_eq!(got, all, "{name}");
        drop((tx, rx));
        kernel.drain(TIMEOUT).unwrap();
    }
}

/// An iterator that yields nothing although its size hint allows more (`from_fn`, a
/// filter that matches nothing) sends nothing and takes no room: a full ring's worth
/// goes in right after. (It used to claim room for its hint, cancel it and not wake the
/// idle kernel, which then never skipped the cancelled slots: every later send found
/// the inbox full.)
#[test]
fn an_iterator_that_yields_nothing_takes_no_room() {
    for (name, runtime) in runtimes() {
        let kernel = runtime.launch(echo("echo")).unwrap();
        kernel.activate().unwrap();
        // Let the kernel go idle.
        std::thread::sleep(Duration::from_millis(20));
        let all: Vec<Record> = (0..CAPACITY).map(record).collect();
        // On a thread: with the bug, the second empty `send_iter` waited for room forever.
        let sends = {
            let kernel = kernel.clone();
            let all = all.clone();
            std::thread::spawn(move || {
                assert_eq!(
                    kernel.send_iter(std::iter::from_fn(|| None)).unwrap(),
                    0,
                    "{name}"
                );
                let nothing = (0..100).filter(|_| false).map(record);
                assert_eq!(kernel.send_iter(nothing).unwrap(), 0, "{name}");
                let mut lane = kernel.exclusive_sender().unwrap();
                let nothing = (0..100).filter(|_| false).map(record);
                assert_eq!(lane.send_iter(nothing).unwrap(), 0, "{name}");
                kernel
                    .send_batch_timeout(&all, Duration::from_secs(5))
                    .unwrap_or_else(|e| {
                        panic!("{name}: a ring's worth after the empty sends: {e}")
                    });
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !sends.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: the sends after the empty ones still wait for room after 10 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        sends.join().unwrap();
        let mut got = Vec::new();
        while got.len() < all.len() {
            kernel
                .recv_batch_timeout(&mut got, 64, TIMEOUT)
                .unwrap_or_else(|e| panic!("{name}: after {}: {e}", got.len()));
        }
        assert_eq!(got, all, "{name}");
        kernel.drain(TIMEOUT).unwrap();
    }
}

/// An iterator that panics in the middle of a batch send: what it yielded before the
/// panic is sent, the panic reaches the caller, and the inbox is not left holding the
/// rest of the claim (it used to be: the claim's slots were published as cancelled but
/// the idle kernel was never woken to skip them, so every later send waited for room),
/// for the shared inbox and for the exclusive lane.
#[test]
fn an_iterator_that_panics_leaves_the_inbox_usable() {
    for (name, runtime) in runtimes() {
        for lane in [false, true] {
            let kernel = runtime.launch(echo("echo")).unwrap();
            kernel.activate().unwrap();
            // Let the kernel go idle.
            std::thread::sleep(Duration::from_millis(20));
            let mut exclusive = lane.then(|| kernel.exclusive_sender().unwrap());
            let bursting = (0..CAPACITY).map(|seq| {
                assert!(seq != 3, "the caller's iterator panics");
                record(seq)
            });
            let panicked =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    match exclusive.as_mut() {
                        Some(lane) => lane.send_iter(bursting),
                        None => kernel.send_iter(bursting),
                    }
                }));
            assert!(panicked.is_err(), "{name}, lane {lane}: the panic goes on");
            // A ring's worth must fit again, and come out after what went before the panic.
            let all: Vec<Record> = (100..100 + CAPACITY).map(record).collect();
            let sends = {
                let kernel = kernel.clone();
                let all = all.clone();
                std::thread::spawn(move || {
                    let sent = match exclusive.as_mut() {
                        Some(lane) => lane.send_batch_timeout(&all, Duration::from_secs(5)),
                        None => kernel.send_batch_timeout(&all, Duration::from_secs(5)),
                    };
                    sent.unwrap_or_else(|e| panic!("a ring's worth after the panic: {e}"));
                })
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !sends.is_finished() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name}, lane {lane}: the sends after the panic still wait after 10 s"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            sends
                .join()
                .unwrap_or_else(|_| panic!("{name}, lane {lane}"));
            let expected: Vec<Record> = (0..3).map(record).chain(all).collect();
            let mut got = Vec::new();
            while got.len() < expected.len() {
                kernel
                    .recv_batch_timeout(&mut got, 64, TIMEOUT)
                    .unwrap_or_else(|e| panic!("{name}, lane {lane}: after {}: {e}", got.len()));
            }
            assert_eq!(got, expected, "{name}, lane {lane}");
            kernel.drain(TIMEOUT).unwrap();
        }
    }
}

/// A batch send blocked on a full inbox returns `Faulted` when the handler panics, in
/// every form (blocking, exclusive lane, async on a current-thread runtime). The fault
/// used to wake waiting senders before it closed the inbox: a woken batch send found it
/// still open and full and slept again, until a drain.
#[test]
fn a_batch_send_blocked_on_a_full_inbox_returns_when_the_handler_panics() {
    for form in ["send_batch", "exclusive send_batch", "send_batch_async"] {
        for run in 0..8 {
            let runtime = gyre::Runtime::builder().workers(2).build().unwrap();
            let kernel = runtime
                .launch(
                    KernelSpec::<u64, u64>::new("panics")
                        .capacity(8)
                        .host_output(256)
                        .cpu(|x, out| {
                            std::thread::sleep(Duration::from_millis(1));
                            assert!(*x != 20, "no 20 here");
                            Ok(out.emit(*x)?)
                        }),
                )
                .unwrap();
            kernel.activate().unwrap();
            let sender = {
                let kernel = kernel.clone();
                std::thread::spawn(move || {
                    let all: Vec<u64> = (0..100).collect();
                    match form {
                        "send_batch" => kernel.send_batch(&all),
                        "exclusive send_batch" => {
                            kernel.exclusive_sender().unwrap().send_batch(&all)
                        }
                        _ => tokio::runtime::Builder::new_current_thread()
                            .enable_time()
                            .build()
                            .unwrap()
                            .block_on(kernel.send_batch_async(&all)),
                    }
                })
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !sender.is_finished() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{form}, run {run}: the send was still blocked {:?} after the fault \
                     (state {:?})",
                    Duration::from_secs(10),
                    kernel.state()
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            let error = sender
                .join()
                .unwrap()
                .expect_err("the kernel faulted mid-batch");
            assert!(
                matches!(error.error, Error::Faulted { .. }),
                "{form}, run {run}: {}",
                error.error
            );
            assert!(
                error.sent >= 21 && error.sent < 100,
                "{form}, run {run}: sent {}",
                error.sent
            );
            kernel.terminate().unwrap();
        }
    }
}
