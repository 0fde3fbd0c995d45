//! What dropping a `Runtime` does with what its kernels hold: nothing is lost silently.
//!
//! Dropping a runtime stops it like `Runtime::shutdown` with the command timeout: every
//! kernel drains, upstream first, and one that does not finish in time is terminated.
//! Handles that outlive the runtime keep access to what their kernel had: outputs stay
//! receivable, `drain`/`terminate` hand back what the kernel did not deliver, and sends
//! fail with the message handed back.

use std::time::Duration;

use gyre::{Error, KernelSpec, Placement, Runtime, State};

const COMMAND_TIMEOUT: Duration = Duration::from_millis(300);

fn runtime() -> Runtime {
    Runtime::builder()
        .workers(2)
        .command_timeout(COMMAND_TIMEOUT)
        .build()
        .unwrap()
}

fn echo(name: &str, placement: Placement, output: u32) -> KernelSpec<u64, u64> {
    KernelSpec::new(name)
        .placement(placement)
        .capacity(64)
        .host_output(output)
        .cpu(|x, out| Ok(out.emit(*x)?))
}

#[test]
fn queued_messages_are_processed_and_stay_receivable_after_a_drop() {
    for placement in [Placement::Pool, Placement::Dedicated] {
        let runtime = runtime();
        // Never activated: the drop's drain processes what waits.
        let kernel = runtime.launch(echo("queued", placement, 64)).unwrap();
        for i in 0..10 {
            kernel.send(i).unwrap();
        }
        drop(runtime);
        assert_eq!(kernel.state(), State::Terminated, "{placement:?}");
        let got: Vec<u64> = std::iter::from_fn(|| kernel.try_recv().ok().flatten()).collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>(), "{placement:?}");
        let report = kernel.drain(Duration::from_secs(1)).unwrap();
        assert!(report.undelivered.is_empty() && report.undelivered_outputs.is_empty());
    }
}

#[test]
fn what_a_drop_could_not_deliver_comes_back_from_the_handle() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    for placement in [Placement::Pool, Placement::Dedicated] {
        let runtime = runtime();
        // A handler that does not return from message 3 until the drop is over: the
        // drop's drain times out, its terminate gives up on the handler and keeps the
        // message in hand and those queued behind it for the handles.
        let release = Arc::new(AtomicBool::new(false));
        let held = Arc::clone(&release);
        let kernel = runtime
            .launch(
                KernelSpec::<u64, u64>::new("stuck")
                    .placement(placement)
                    .capacity(64)
                    .host_output(64)
                    .cpu(move |x, out| {
                        while *x == 3 && !held.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Ok(out.emit(*x)?)
                    }),
            )
            .unwrap();
        kernel.activate().unwrap();
        for i in 0..8 {
            kernel.send(i).unwrap();
        }
        drop(runtime);
        release.store(true, Ordering::Relaxed);
        assert_eq!(kernel.state(), State::Terminated, "{placement:?}");
        let received: Vec<u64> = std::iter::from_fn(|| kernel.try_recv().ok().flatten()).collect();
        let report = kernel
            .terminate()
            .expect("terminate on a handle that outlived its runtime hands back, not fails");
        assert_eq!(received, [0, 1, 2], "{placement:?}: {report:?}");
        assert_eq!(
            report.undelivered,
            [3, 4, 5, 6, 7],
            "{placement:?}: {report:?}"
        );
        assert!(report.abandoned, "{placement:?}: {report:?}");
        // Handed back once: a second stop has nothing more.
        let again = kernel.drain(Duration::from_secs(1)).unwrap();
        assert!(again.undelivered.is_empty() && again.undelivered_outputs.is_empty());
    }
}

/// A kernel whose host output nobody reads during the drop (its handle is on the
/// dropping thread) is not held back by it: the drop does not wait for room, and the
/// handle receives everything after it, in order (before, the drain waited the whole
/// command timeout and the inputs came back from a stop of the handle instead).
#[test]
fn a_full_output_does_not_hold_a_drop_back() {
    for placement in [Placement::Pool, Placement::Dedicated] {
        let runtime = runtime();
        let kernel = runtime.launch(echo("stalled", placement, 2)).unwrap();
        kernel.activate().unwrap();
        for i in 0..8 {
            kernel.send(i).unwrap();
        }
        let started = std::time::Instant::now();
        drop(runtime);
        assert!(
            started.elapsed() < COMMAND_TIMEOUT,
            "{placement:?}: the drop took {:?}",
            started.elapsed()
        );
        assert_eq!(kernel.state(), State::Terminated, "{placement:?}");
        let received: Vec<u64> = std::iter::from_fn(|| kernel.try_recv().ok().flatten()).collect();
        assert_eq!(received, (0..8).collect::<Vec<_>>(), "{placement:?}");
        assert!(matches!(kernel.recv(), Err(Error::RuntimeGone { .. })));
        let report = kernel.terminate().unwrap();
        assert!(report.undelivered.is_empty() && report.undelivered_outputs.is_empty());
    }
}

#[test]
fn sends_into_a_dropped_runtime_fail_and_hand_the_message_back() {
    let runtime = runtime();
    let kernel = runtime.launch(echo("gone", Placement::Pool, 64)).unwrap();
    kernel.activate().unwrap();
    let sender = kernel.sender();
    drop(runtime);
    let refused = kernel
        .try_send(7)
        .expect_err("try_send into a dropped runtime");
    assert_eq!(refused.message, 7);
    assert!(
        matches!(refused.error, Error::RuntimeGone { .. }),
        "{:?}",
        refused.error
    );
    assert!(
        refused.error.to_string().contains("dropped"),
        "{}",
        refused.error
    );
    let refused = sender.send(8).expect_err("send into a dropped runtime");
    assert_eq!(refused.message, 8);
    assert!(
        matches!(refused.error, Error::RuntimeGone { .. }),
        "{:?}",
        refused.error
    );
    assert!(matches!(kernel.recv(), Err(Error::RuntimeGone { .. })));
}

#[test]
fn kernels_without_handles_keep_their_messages_until_shutdown() {
    let runtime = runtime();
    let kernel = runtime.launch(echo("orphan", Placement::Pool, 64)).unwrap();
    for i in 0..5 {
        kernel.send(i).unwrap();
    }
    kernel.deactivate().unwrap();
    drop(kernel);
    assert_eq!(
        runtime.kernel_count(),
        1,
        "the runtime keeps a kernel without handles"
    );
    // The shutdown drains it into its host output, which no handle can receive from
    // any more: the report hands those outputs back.
    let report = runtime.shutdown(Duration::from_secs(5));
    let entry = report
        .kernel("orphan")
        .expect("the orphan is in the report");
    let mut all: Vec<u64> = entry
        .undelivered
        .iter()
        .map(gyre::RawMessage::read)
        .collect();
    all.extend(
        entry
            .undelivered_outputs
            .iter()
            .map(gyre::RawMessage::read::<u64>),
    );
    all.sort_unstable();
    assert_eq!(all, (0..5).collect::<Vec<_>>(), "{entry:?}");
}

/// A send waiting for room when the runtime is dropped fails with `RuntimeGone`, not with
/// `Draining` (whose advice, to restart the kernel, cannot work once the runtime goes),
/// and says how much of its batch went in.
#[test]
fn a_send_waiting_for_room_during_a_drop_says_the_runtime_is_gone() {
    let runtime = runtime();
    let kernel = runtime
        .launch(
            KernelSpec::<u64, u64>::new("slow")
                .capacity(8)
                .host_output(1024)
                .cpu(|x, out| {
                    std::thread::sleep(Duration::from_millis(1));
                    Ok(out.emit(*x)?)
                }),
        )
        .unwrap();
    kernel.activate().unwrap();
    let sender = {
        let kernel = kernel.clone();
        std::thread::spawn(move || kernel.send_batch(&(0..10_000).collect::<Vec<u64>>()))
    };
    // Let the sender fill the inbox and wait for room.
    while kernel.sender().inbox_len() < 8 {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(runtime);
    let refused = sender
        .join()
        .unwrap()
        .expect_err("10,000 do not fit before the drop");
    assert!(
        matches!(refused.error, Error::RuntimeGone { .. }),
        "{}",
        refused.error
    );
    assert!(
        refused.sent >= 8 && refused.sent < 10_000,
        "sent {}",
        refused.sent
    );
}
