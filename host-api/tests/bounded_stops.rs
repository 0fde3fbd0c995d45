//! Stopping never hangs on a handler: with a handler that never returns, `terminate`,
//! `drain(t)`, `Runtime::shutdown(t)` and dropping the runtime each return within their
//! timeout plus [`SLACK`], on both placements, and hand back every message but the ones
//! the handler finished.
//!
//! Each operation runs on its own thread and the test waits for its answer on a channel
//! with a deadline, so a hang fails the test instead of hanging it. The handler's thread
//! leaks by necessity (nothing can make user code return); it sleeps in a loop, so it
//! costs the rest of the test binary nothing.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use gyre::{Kernel, KernelSpec, Placement, Runtime, State};

/// What every bound allows on top of the operation's own timeout.
const SLACK: Duration = Duration::from_secs(3);
/// The runtime's command timeout: how long `terminate` waits for a handler.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
/// The timeout given to `drain` and `shutdown`.
const STOP_TIMEOUT: Duration = Duration::from_millis(500);
/// The message the handler never returns from.
const STUCK_ON: u64 = 1;
/// Messages sent: `0..SENT`.
const SENT: u64 = 6;

/// Runs `op` on a thread; its answer, or `None` when it took longer than `limit` (the
/// thread is then left behind).
fn within<T: Send + 'static>(
    limit: Duration,
    op: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(op());
    });
    rx.recv_timeout(limit).ok()
}

fn runtime() -> Runtime {
    runtime_with(COMMAND_TIMEOUT)
}

fn runtime_with(command_timeout: Duration) -> Runtime {
    Runtime::builder()
        .workers(2)
        .command_timeout(command_timeout)
        .build()
        .unwrap()
}

/// Launches a kernel whose handler never returns from [`STUCK_ON`], sends `0..SENT`,
/// receives 0 and waits until the handler is inside [`STUCK_ON`].
fn stuck_kernel(runtime: &Runtime, placement: Placement) -> Kernel<u64, u64> {
    stuck_kernel_named(runtime, placement, &format!("stuck-{placement:?}"))
}

fn stuck_kernel_named(runtime: &Runtime, placement: Placement, name: &str) -> Kernel<u64, u64> {
    let (entered, inside) = mpsc::channel::<()>();
    let entered = std::sync::Mutex::new(entered);
    let kernel = runtime
        .launch(
            KernelSpec::<u64, u64>::new(name)
                .placement(placement)
                .cpu(move |x, out| {
                    if *x == STUCK_ON {
                        let _ = entered.lock().unwrap().send(());
                        loop {
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                    Ok(out.emit(*x)?)
                }),
        )
        .unwrap();
    kernel.activate().unwrap();
    for i in 0..SENT {
        kernel.send(i).unwrap();
    }
    assert_eq!(kernel.recv_timeout(Duration::from_secs(10)).unwrap(), 0);
    inside
        .recv_timeout(Duration::from_secs(10))
        .expect("the handler reaches the message it never returns from");
    kernel
}

fn handed_back_after_stuck() -> Vec<u64> {
    (STUCK_ON..SENT).collect()
}

const PLACEMENTS: [Placement; 2] = [Placement::Pool, Placement::Dedicated];

#[test]
fn terminate_returns_within_the_command_timeout_and_hands_everything_back() {
    for placement in PLACEMENTS {
        let runtime = runtime();
        let kernel = stuck_kernel(&runtime, placement);
        let k = kernel.clone();
        let started = Instant::now();
        let report = within(COMMAND_TIMEOUT + SLACK, move || k.terminate())
            .unwrap_or_else(|| panic!("{placement:?}: terminate did not return"))
            .unwrap();
        assert!(started.elapsed() < COMMAND_TIMEOUT + SLACK);
        assert!(report.abandoned, "{placement:?}: {report:?}");
        assert_eq!(
            report.undelivered,
            handed_back_after_stuck(),
            "{placement:?}"
        );
        assert_eq!(kernel.state(), State::Terminated);
        // The runtime stops in bounded time afterwards too (the reported hang).
        let report = within(STOP_TIMEOUT + SLACK, move || runtime.shutdown(STOP_TIMEOUT))
            .unwrap_or_else(|| panic!("{placement:?}: shutdown after an abandon hung"));
        assert_eq!(report.undelivered_count(), 0, "{placement:?}: {report:?}");
    }
}

#[test]
fn drain_returns_within_its_timeout_and_hands_everything_back() {
    for placement in PLACEMENTS {
        // A command timeout far beyond the drain's: the drain's bound is its own timeout.
        let runtime = runtime_with(Duration::from_secs(30));
        let kernel = stuck_kernel(&runtime, placement);
        let k = kernel.clone();
        let started = Instant::now();
        let report = within(STOP_TIMEOUT + SLACK, move || k.drain(STOP_TIMEOUT))
            .unwrap_or_else(|| panic!("{placement:?}: drain did not return"))
            .unwrap();
        assert!(started.elapsed() < STOP_TIMEOUT + SLACK);
        assert!(report.timed_out, "{placement:?}: {report:?}");
        assert!(report.abandoned, "{placement:?}: {report:?}");
        assert_eq!(
            report.undelivered,
            handed_back_after_stuck(),
            "{placement:?}"
        );
        within(SLACK, move || drop(runtime))
            .unwrap_or_else(|| panic!("{placement:?}: dropping the runtime after a drain hung"));
    }
}

#[test]
fn shutdown_returns_within_its_timeout_and_reports_everything() {
    for placement in PLACEMENTS {
        // A command timeout far beyond the shutdown's: the shutdown's bound is its own.
        let runtime = runtime_with(Duration::from_secs(30));
        let kernel = stuck_kernel(&runtime, placement);
        let started = Instant::now();
        let report = within(STOP_TIMEOUT + SLACK, move || runtime.shutdown(STOP_TIMEOUT))
            .unwrap_or_else(|| panic!("{placement:?}: shutdown did not return"));
        assert!(started.elapsed() < STOP_TIMEOUT + SLACK);
        let entry = report
            .kernel(kernel.name())
            .expect("the kernel is in the report");
        assert!(entry.abandoned, "{placement:?}: {entry:?}");
        assert!(entry.error.is_none(), "{placement:?}: {entry:?}");
        let handed_back: Vec<u64> = entry
            .undelivered
            .iter()
            .map(gyre::RawMessage::read::<u64>)
            .collect();
        assert_eq!(handed_back, handed_back_after_stuck(), "{placement:?}");
        assert_eq!(kernel.state(), State::Terminated);
    }
}

/// Several stuck kernels do not add up: a shutdown or a drop gives up on all of them
/// within its one bound (each stuck kernel used to add the whole grace after the
/// deadline, about a second, as kernels were stopped one after another), and every
/// kernel hands back what it did not finish.
#[test]
fn several_stuck_kernels_share_one_bound() {
    // One on the pool (a second would hold its other worker), four on threads of their
    // own.
    let placements = [(Placement::Pool, 1), (Placement::Dedicated, 4)];
    for drop_it in [false, true] {
        let runtime = runtime_with(Duration::from_secs(1));
        let kernels: Vec<_> = placements
            .iter()
            .flat_map(|&(p, n)| (0..n).map(move |i| (p, i)))
            .map(|(p, i)| stuck_kernel_named(&runtime, p, &format!("stuck-{p:?}-{i}")))
            .collect();
        let started = Instant::now();
        let report = within(STOP_TIMEOUT + SLACK, move || {
            if drop_it {
                drop(runtime);
                None
            } else {
                Some(runtime.shutdown(STOP_TIMEOUT))
            }
        })
        .unwrap_or_else(|| panic!("drop {drop_it}: the stop did not return"));
        let took = started.elapsed();
        assert!(took < STOP_TIMEOUT + SLACK, "drop {drop_it}: {took:?}");
        for kernel in &kernels {
            let handed_back: Vec<u64> = match &report {
                Some(report) => report
                    .kernel(kernel.name())
                    .expect("every kernel is in the report")
                    .undelivered
                    .iter()
                    .map(gyre::RawMessage::read::<u64>)
                    .collect(),
                None => kernel.terminate().unwrap().undelivered,
            };
            assert_eq!(handed_back, handed_back_after_stuck(), "{}", kernel.name());
        }
    }
}

#[test]
fn dropping_the_runtime_returns_within_the_command_timeout() {
    for placement in PLACEMENTS {
        let runtime = runtime();
        let kernel = stuck_kernel(&runtime, placement);
        let started = Instant::now();
        within(COMMAND_TIMEOUT + SLACK, move || drop(runtime))
            .unwrap_or_else(|| panic!("{placement:?}: dropping the runtime hung"));
        assert!(started.elapsed() < COMMAND_TIMEOUT + SLACK);
        // What the stuck kernel did not finish is kept for its handle.
        let k = kernel.clone();
        let report = within(SLACK, move || k.terminate())
            .unwrap_or_else(|| panic!("{placement:?}: terminate after the drop hung"))
            .unwrap();
        assert_eq!(
            report.undelivered,
            handed_back_after_stuck(),
            "{placement:?}"
        );
        // The drop abandoned the handler; the handle's report of what it hands back
        // says so (its first input is the message that was in hand).
        assert!(report.abandoned, "{placement:?}: {report:?}");
    }
}

#[test]
fn a_terminate_that_gave_up_on_a_waiting_kernel_leaves_nothing_behind() {
    // One worker, taken by a handler that never returns: a second pool kernel cannot
    // run, so its terminate gives up (no handler of it runs, so nothing to abandon).
    let runtime = Runtime::builder()
        .workers(1)
        .command_timeout(COMMAND_TIMEOUT)
        .build()
        .unwrap();
    let stuck = stuck_kernel(&runtime, Placement::Pool);
    let waiting = runtime
        .launch(KernelSpec::<u64, u64>::new("waiting").cpu(|x, out| Ok(out.emit(*x)?)))
        .unwrap();
    for i in 100..110 {
        waiting.send(i).unwrap();
    }
    let w = waiting.clone();
    let first = within(COMMAND_TIMEOUT + SLACK, move || w.terminate())
        .expect("terminate returns in bounded time");
    assert!(
        matches!(first, Err(gyre::Error::Unresponsive { .. })),
        "{first:?}"
    );
    // Abandoning the stuck handler frees the worker; the waiting kernel then
    // acknowledges the terminate that gave up, and a second stop hands everything back.
    let s = stuck.clone();
    within(COMMAND_TIMEOUT + SLACK, move || s.terminate())
        .expect("terminate returns in bounded time")
        .unwrap();
    let w = waiting.clone();
    let report = within(COMMAND_TIMEOUT + SLACK, move || w.terminate())
        .expect("terminate returns in bounded time")
        .expect("the second terminate collects what the first left behind");
    assert_eq!(report.undelivered, (100..110).collect::<Vec<_>>());
    assert_eq!(waiting.state(), State::Terminated);
}

/// A kernel restarted after a terminate gave up on its handler runs only what is sent
/// afterwards: the messages the terminate handed back are not run again (they used to be:
/// the rings still held them), and a pooled kernel comes back scheduled even when a worker
/// dropped its queue entry while it was abandoned (it used to stay unscheduled for good).
/// The stuck handler returns right around the restart, in several rounds, on both
/// placements and with other kernels busy on the pool.
#[test]
fn a_restart_after_an_abandon_runs_only_new_messages() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    for placement in PLACEMENTS {
        for round in 0..4u64 {
            let runtime = runtime();
            let release = Arc::new(AtomicBool::new(false));
            let inside = Arc::new(AtomicBool::new(false));
            let (held, entered) = (Arc::clone(&release), Arc::clone(&inside));
            let kernel = runtime
                .launch(
                    KernelSpec::<u64, u64>::new("held")
                        .placement(placement)
                        .cpu_factory(move || {
                            let (held, entered) = (Arc::clone(&held), Arc::clone(&entered));
                            move |x: &u64, out: &mut gyre::Emit<'_, '_, u64>| {
                                while *x == STUCK_ON && !held.load(Ordering::Relaxed) {
                                    entered.store(true, Ordering::Relaxed);
                                    std::thread::sleep(Duration::from_micros(100));
                                }
                                Ok(out.emit(*x)?)
                            }
                        }),
                )
                .unwrap();
            let busy: Vec<Kernel<u64, u64>> = (0..4)
                .map(|i| {
                    let k = runtime
                        .launch(
                            KernelSpec::<u64, u64>::new(format!("busy{i}"))
                                .cpu(|x, out| Ok(out.emit(*x)?)),
                        )
                        .unwrap();
                    k.activate().unwrap();
                    k
                })
                .collect();
            kernel.activate().unwrap();
            for i in 0..SENT {
                kernel.send(i).unwrap();
            }
            assert_eq!(kernel.recv_timeout(Duration::from_secs(10)).unwrap(), 0);
            // (Its counters are published when the turn ends, which it does not.)
            while !inside.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let report = kernel.terminate().unwrap();
            assert!(report.abandoned, "{placement:?} round {round}: {report:?}");
            assert_eq!(report.undelivered, handed_back_after_stuck());
            // Keep the pool busy, and let the handler return around the restart.
            for (i, k) in busy.iter().enumerate() {
                for x in 0..50 {
                    k.send(x + i as u64).unwrap();
                }
            }
            let releaser = {
                let release = Arc::clone(&release);
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(round * 2));
                    release.store(true, Ordering::Relaxed);
                })
            };
            runtime.restart(&kernel).unwrap();
            releaser.join().unwrap();
            kernel.activate().unwrap_or_else(|e| {
                panic!("{placement:?} round {round}: the restarted kernel does not run: {e}")
            });
            for x in 100..110 {
                kernel.send(x).unwrap();
            }
            let got: Vec<u64> = (100..110)
                .map(|_| {
                    kernel
                        .recv_timeout(Duration::from_secs(10))
                        .unwrap_or_else(|e| panic!("{placement:?} round {round}: {e}"))
                })
                .collect();
            assert_eq!(
                got,
                (100..110).collect::<Vec<u64>>(),
                "{placement:?} round {round}: only what was sent after the restart"
            );
            for k in &busy {
                for _ in 0..50 {
                    k.recv_timeout(Duration::from_secs(10)).unwrap();
                }
            }
            runtime.shutdown(STOP_TIMEOUT);
        }
    }
}
